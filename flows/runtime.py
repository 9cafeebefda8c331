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
