"""close-remittance and post-remittance: the day's remittance batches validated, closed (on
their own, or after an operator's approval given in the Prefect UI), and posted to treasury
and the ERP exactly once.

Closing a batch writes its two postings to the outbox in the same transaction
(``state.remittance.close_batch``): the treasury batch under
``Idempotency-Key: remit-{batch}-v{n}`` and the ERP journal entry under the external id
``je-remit-{batch}-v{n}``. ``post_remittance`` delivers what the outbox still owes, oldest
first (a reversal after the version it reverses), and marks a row sent in the transaction that
records the answer. Killed after a request left and before its answer was recorded, the next
run sends the same bytes with the same key: treasury answers the first answer, the ERP
upserts the same external id. Either way one posting and one journal entry exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from prefect import flow
from sqlalchemy import Engine, select

from connectors.erp import ErpClient
from connectors.errors import FatalError
from connectors.treasury import TreasuryClient, TreasurySettings
from connectors.treasury.client import canonical_body
from flows.credentials import erp_settings
from flows.reconcile import load_rules
from flows.runtime import run_key, run_logger, state_engine, table_artifact
from state import remittance as remit
from state.db import session_scope
from state.models import OutboxMessage, OutboxStatus
from state.store import (
    DeadLetterItem,
    mark_attempt_failed,
    mark_sent,
    record_dead_letters,
    resolve_dead_letters,
)

FLOW_CLOSE = "close_remittance"
FLOW_POST = "post_remittance"
APPROVAL_TIMEOUT_S = 24 * 3600
"""Approvals may wait overnight (``pause_flow_run`` gives up after one hour by default)."""


def approval_form_markdown(blocked: Sequence[remit.RemittanceBatch]) -> str:
    lines = ["# Remittance batches waiting for approval", "",
             "These batches have open discrepancies above the closing threshold. Approve to "
             "close them as they are (the discrepancies stay open for correction), or leave "
             "`approve` unticked to keep them open.", ""]
    for batch in blocked:
        lines.append(f"## {batch.batch_id} v{batch.version}: {batch.count} line(s), net "
                     f"{batch.net} {batch.currency}")
        lines += ["", "| class | order | difference | detail |", "|---|---|---:|---|"]
        for d in batch.blocking or []:
            lines.append(f"| {d['class']} | {d.get('order_id') or d.get('payout_id') or '-'} "
                         f"| {d.get('difference') or '-'} {d.get('currency') or ''} | "
                         f"{d['detail']} |")
        lines.append("")
    return "\n".join(lines)


async def request_approval(blocked: Sequence[remit.RemittanceBatch], *, timeout_s: int,
                           poll_interval_s: int) -> dict[str, Any] | None:
    """Pause the flow run with a form that shows the discrepancies and wait for an operator
    (Prefect UI, or ``resume_flow_run(id, run_input={"decision": "approve", "operator":
    ..., "comment": ...})``), through the shared approval step (``flows.approvals``)."""
    from flows.approvals import request_approval as approval_step

    day = blocked[0].day if blocked else None
    approval = await approval_step(
        f"remittance batches of {day}: " + ", ".join(b.batch_id for b in blocked),
        approval_form_markdown(blocked), key=f"remittance-{day}", timeout_s=timeout_s,
        poll_interval_s=poll_interval_s)
    return {"approved_by": approval.operator, "approve": approval.approved,
            "comment": approval.comment, "batches": None}


def validate_day(engine: Engine, day: date, threshold: Decimal,
                 only: Sequence[str] | None = None) -> list[remit.RemittanceBatch]:
    """Refresh the day's batches from its stored result and validate those still open."""
    with session_scope(engine, immediate=True) as session:
        heads = remit.refresh_batches(session, day)
        out = []
        for head in heads:
            if only and head.batch_id not in only:
                continue
            if head.status in {remit.BatchStatus.OPEN, remit.BatchStatus.VALIDATED}:
                head = remit.validate_batch(session, head.batch_id, threshold=threshold)
            out.append(head)
        return out


def close_batches(engine: Engine, batch_ids: Sequence[str], *,
                  approval: dict[str, Any] | None = None, flow_run_id: str | None = None
                  ) -> list[str]:
    """Close validated batches; with ``approval`` also those it approves. Returns the ids
    closed."""
    closed = []
    with session_scope(engine, immediate=True) as session:
        for batch_id in batch_ids:
            batch = remit.current(session, batch_id)
            if batch.status != remit.BatchStatus.VALIDATED:
                continue
            record = None
            if batch.blocking:
                if approval is None:
                    continue
                wanted = approval.get("batches") or None
                approved = bool(approval.get("approve")) and (wanted is None
                                                              or batch_id in wanted)
                record = remit.record_approval(
                    session, batch_id, approved=approved,
                    approved_by=str(approval.get("approved_by") or "unknown"),
                    comment=approval.get("comment") or None, flow_run_id=flow_run_id)
                if not approved:
                    continue
            remit.close_batch(session, batch_id, approval=record)
            closed.append(batch_id)
    return closed


@flow(name="close-remittance", log_prints=False)
async def close_remittance(day: date, batches: list[str] | None = None,
                           wait_for_approval: bool = True,
                           approval_timeout_s: int = APPROVAL_TIMEOUT_S,
                           poll_interval_s: int = 5) -> dict[str, Any]:
    """Validate the day's batches and close them: those without open discrepancies above the
    threshold at once, the others after an operator approves them in the paused run."""
    logger = run_logger()
    engine = state_engine()
    threshold = load_rules().close_threshold
    heads = validate_day(engine, day, threshold, batches)
    ready = [b.batch_id for b in heads if b.status == remit.BatchStatus.VALIDATED
             and not b.blocking]
    blocked = [b for b in heads if b.status == remit.BatchStatus.VALIDATED and b.blocking]
    closed = close_batches(engine, ready)
    approval = None
    if blocked and wait_for_approval:
        approval = await request_approval(blocked, timeout_s=approval_timeout_s,
                                          poll_interval_s=poll_interval_s)
        if approval is not None:
            closed += close_batches(engine, [b.batch_id for b in blocked], approval=approval,
                                    flow_run_id=run_key())
    with session_scope(engine) as session:
        rows = remit.summarize(remit.batches(session, day=day))
    await table_artifact(f"remittance-{day:%Y%m%d}-batches", rows,
                         f"Remittance batches of {day}")
    summary = {"day": day.isoformat(), "closed": closed,
               "waiting": [b.batch_id for b in blocked if b.batch_id not in closed],
               "approval": approval, "batches": rows}
    logger.info("close-remittance %s: closed %d, waiting %d", day, len(closed),
                len(summary["waiting"]))
    return summary


# posting ------------------------------------------------------------------------------------
def _pending(engine: Engine, day: date | None) -> list[Any]:
    with session_scope(engine) as session:
        rows = list(session.execute(
            select(OutboxMessage.id, OutboxMessage.target, OutboxMessage.idempotency_key,
                   OutboxMessage.entity_key, OutboxMessage.payload)
            .where(OutboxMessage.entity_type == remit.ENTITY,
                   OutboxMessage.status == OutboxStatus.PENDING,
                   OutboxMessage.target.in_([remit.TREASURY, remit.ERP]))  # type: ignore[attr-defined]
            .order_by(OutboxMessage.id)))
    if day is None:
        return rows
    stamp = f"{day:%Y%m%d}-"
    return [r for r in rows if r.entity_key.startswith(stamp)]


def _journal_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The stored journal entry with its amounts as Decimals (the ERP takes JSON numbers)."""
    body = dict(payload)
    items = []
    for line in payload["line"]["items"]:
        items.append({k: Decimal(v) if k in {"debit", "credit"} else v
                      for k, v in line.items()})
    body["line"] = {"items": items}
    return body


async def deliver_postings(engine: Engine, treasury: TreasuryClient, erp: ErpClient,
                           day: date | None = None) -> dict[str, int]:
    counts = {"treasury": 0, "erp": 0, "failed": 0, "posted": 0}
    for row in _pending(engine, day):
        batch_id, version = remit.entity_version(row.entity_key)
        try:
            if row.target == remit.TREASURY:
                answer = await treasury.post_batch(row.idempotency_key,
                                                   canonical_body(row.payload))
                refs = {"treasury_ref": str(answer["treasury_ref"]), "erp_id": None}
            else:
                erp_id = await erp.upsert("journalEntry", row.idempotency_key,
                                          _journal_payload(row.payload))
                answer = {"erp_id": erp_id}
                refs = {"treasury_ref": None, "erp_id": erp_id}
        except FatalError as exc:
            counts["failed"] += 1
            with session_scope(engine) as session:
                mark_attempt_failed(session, [row.id], str(exc))
                record_dead_letters(session, [DeadLetterItem(
                    flow=FLOW_POST, source=row.target, entity_type=remit.ENTITY,
                    entity_key=f"{row.target}:{row.entity_key}", reason=str(exc)[:4000],
                    payload={"idempotency_key": row.idempotency_key})])
            continue
        with session_scope(engine, immediate=True) as session:
            mark_sent(session, [row.id], responses={row.id: answer})
            remit.mark_posted(session, batch_id, version, **refs)
            resolve_dead_letters(session, FLOW_POST, row.target, remit.ENTITY,
                                 [f"{row.target}:{row.entity_key}"])
            posted = [b for b in remit.versions(session, batch_id)
                      if b.version == version and b.status == remit.BatchStatus.POSTED]
        counts[row.target] += 1
        counts["posted"] += len(posted)
    return counts


@flow(name="post-remittance", log_prints=False)
async def post_remittance(day: date | None = None) -> dict[str, Any]:
    """Send every closed batch's owed postings (treasury, ERP journal entry)."""
    logger = run_logger()
    engine = state_engine()
    treasury = TreasuryClient(TreasurySettings())
    erp = ErpClient(await erp_settings())
    try:
        counts = await deliver_postings(engine, treasury, erp, day)
    finally:
        await treasury.aclose()
        await erp.aclose()
    with session_scope(engine) as session:
        rows = remit.summarize(remit.batches(session, day=day))
    if day is not None:
        await table_artifact(f"remittance-{day:%Y%m%d}-posted", rows,
                             f"Remittance batches of {day} after posting")
    logger.info("post-remittance: %s", counts)
    return {"day": day.isoformat() if day else None, **counts, "batches": rows}


__all__ = ["close_remittance", "deliver_postings", "post_remittance", "request_approval"]
