"""What every flow needs from its surroundings: a run key, the state engine, artifacts,
global concurrency slots, and loggers that never print secrets."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

from sqlalchemy import Engine

from connectors.redact import install_log_redaction
from state.db import get_engine

T = TypeVar("T")

log = logging.getLogger("vouchflow.flows")


def run_key() -> str:
    """The Prefect flow run id (stable across retries of the same run), else a fresh uuid."""
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        if ctx is not None and ctx.flow_run is not None:
            return str(ctx.flow_run.id)
    except Exception:  # outside Prefect (benchmarks, replay from the command line)
        pass
    return f"local-{uuid.uuid4()}"


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:
        return log


def state_engine() -> Engine:
    install_log_redaction()
    return get_engine()


def in_flow_run() -> bool:
    try:
        from prefect.context import FlowRunContext

        return FlowRunContext.get() is not None
    except Exception:
        return False


async def table_artifact(key: str, rows: Sequence[dict[str, Any]], description: str) -> None:
    """A table for operators in the Prefect UI (only inside a flow run)."""
    if not in_flow_run():
        return
    from prefect.artifacts import acreate_table_artifact

    await acreate_table_artifact(table=list(rows), key=key, description=description)


async def markdown_artifact(key: str, markdown: str, description: str) -> None:
    if not in_flow_run():
        return
    from prefect.artifacts import acreate_markdown_artifact

    await acreate_markdown_artifact(markdown=markdown, key=key, description=description)


class Progress:
    """A progress artifact for a long run (0-100 %), updated as its chunks finish; nothing
    outside a flow run, and a failed update never fails the run."""

    def __init__(self, key: str, description: str, total: int) -> None:
        self.key, self.description, self.total = key, description, max(total, 1)
        self.done = 0
        self._id: Any = None

    async def start(self) -> Progress:
        if in_flow_run():
            try:
                from prefect.artifacts import acreate_progress_artifact

                self._id = await acreate_progress_artifact(
                    progress=0.0, key=self.key, description=self.description)
            except Exception as exc:
                log.debug("no progress artifact: %s", exc.__class__.__name__)
        return self

    async def advance(self, steps: int = 1) -> None:
        self.done += steps
        if self._id is None:
            return
        try:
            from prefect.artifacts import aupdate_progress_artifact

            await aupdate_progress_artifact(self._id, round(100.0 * self.done / self.total, 1))
        except Exception as exc:
            log.debug("progress not updated: %s", exc.__class__.__name__)


def global_limits_enabled() -> bool:
    """Prefect global concurrency limits cost a round trip per slot; use them when a real
    server coordinates several workers (``VOUCHFLOW_GLOBAL_LIMITS=1``, or auto when
    ``PREFECT_API_URL`` points at a server)."""
    setting = os.environ.get("VOUCHFLOW_GLOBAL_LIMITS", "auto").lower()
    if setting in {"1", "true", "yes", "on"}:
        return True
    if setting in {"0", "false", "no", "off"}:
        return False
    return bool(os.environ.get("PREFECT_API_URL"))


@asynccontextmanager
async def system_slot(limit_name: str, occupy: int = 1) -> AsyncIterator[None]:
    """Hold a slot of the Prefect global concurrency limit of an external system for one chunk,
    so several workers together stay within that system's capacity."""
    if not (global_limits_enabled() and in_flow_run()):
        yield
        return
    from prefect.concurrency.asyncio import concurrency

    async with concurrency(limit_name, occupy=occupy, strict=False):
        yield


def limit_name(system: str, account: str = "") -> str:
    """Global concurrency limit names: ``erp-123456-sb1``, ``wallet-sg1``."""
    text = f"{system}-{account}" if account else system
    return text.lower().replace("_", "-")


class Bulk(Generic[T]):
    """A large value (records, writes) handed to or returned from a task without Prefect
    walking into it: Prefect visits every element of task inputs and results looking for
    futures, which costs seconds per hundred thousand records. Inputs are wrapped with
    ``prefect.utilities.annotations.quote`` at the call; results come back in a ``Bulk``."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __repr__(self) -> str:
        size = len(self.value) if hasattr(self.value, "__len__") else "?"
        return f"Bulk({type(self.value).__name__}, {size})"


# Prefect events -----------------------------------------------------------------------------
POSTING_RECORD_TYPES = frozenset({
    "salesOrder", "itemFulfillment", "invoice", "cashSale", "customerPayment", "journalEntry",
    "purchaseRequisition", "purchaseOrder", "itemReceipt", "vendorBill", "vendorCredit",
    "vendorPayment", "vendor", "customrecord_vf_batch", "posting", "remittance",
})
"""Records vouchflow writes to the ERP, group finance or treasury: a dead letter of one of
these is a failed posting."""
POSTING_SYSTEMS = ("erp", "finance", "treasury")


def emit(event: str, *, resource_id: str, payload: dict[str, Any] | None = None,
         resource: dict[str, str] | None = None) -> None:
    """A Prefect event for automations and the UI's event feed, from inside a flow run (the
    run, its flow, deployment and tags are attached as related resources). Never raises.
    Callers keep secrets and voucher codes out of ``payload``."""
    if not in_flow_run():
        return
    try:
        from prefect.events import emit_event

        emit_event(event=event,
                   resource={"prefect.resource.id": resource_id, **(resource or {})},
                   payload=payload or {})
    except Exception as exc:  # events are a courtesy to operators, never a failure
        log.debug("event %s not emitted: %s", event, exc.__class__.__name__)


def is_posting(source: str, entity_type: str) -> bool:
    return entity_type in POSTING_RECORD_TYPES and source.split(":", 1)[0] in POSTING_SYSTEMS


def dead_letter_events(items: Sequence[Any]) -> None:
    """One ``vouchflow.dead-letter.recorded`` event per flow, source and record type of the
    dead letters just committed (counts only: keys may name customers' orders, reasons may
    quote values), plus ``vouchflow.posting.failed`` where the record was a posting."""
    groups: dict[tuple[str, str, str], int] = {}
    for item in items:
        key = (item.flow, item.source, item.entity_type)
        groups[key] = groups.get(key, 0) + 1
    for (flow_name, source, entity_type), count in sorted(groups.items()):
        payload = {"flow": flow_name, "source": source, "record_type": entity_type,
                   "count": count}
        resource = {"prefect.resource.name": f"{flow_name} {source} {entity_type}",
                    "vouchflow.source": source, "vouchflow.record-type": entity_type}
        emit("vouchflow.dead-letter.recorded",
             resource_id=f"vouchflow.dead-letters.{flow_name}.{source}.{entity_type}",
             payload=payload, resource=resource)
        if is_posting(source, entity_type):
            emit("vouchflow.posting.failed",
                 resource_id=f"vouchflow.posting.{source}.{entity_type}",
                 payload=payload, resource=resource)


def posting_failed(system: str, record_type: str, reason_code: str, count: int = 1) -> None:
    """For postings refused without a dead letter (e.g. a REJECTED answer kept for retry):
    a ``vouchflow.posting.failed`` event naming the system, record type and reason code."""
    emit("vouchflow.posting.failed", resource_id=f"vouchflow.posting.{system}.{record_type}",
         payload={"source": system, "record_type": record_type, "reason": reason_code,
                  "count": count},
         resource={"vouchflow.source": system, "vouchflow.record-type": record_type})


def _install_dead_letter_events() -> None:
    from state.store import on_dead_letters

    on_dead_letters(dead_letter_events)


_install_dead_letter_events()
