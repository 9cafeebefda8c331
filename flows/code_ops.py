"""Code operations as flows: downgrade, replace, re-promote, return to supplier.

Each flow takes code ids or a selection (a batch, a SKU, a status; never codes in clear: flow
parameters are stored by Prefect, so the command line turns an operator's file of codes into
ids first) and works through them in chunks, one task and one transaction per chunk
(``state.code_ops``), every code's chronology written as it changes. Run again on the same
selection, codes already changed are skipped (their status no longer fits) and reported.
Returns make vendor credits, written to the ERP by the vendorBill -> vendorCredit transform
(looked up first) once their bill is there; the units returned from stock then leave the book.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine

from connectors.erp import ErpClient
from connectors.errors import FatalError
from flows.credentials import erp_settings
from flows.purchasing_erp import transform_once
from flows.runtime import (
    limit_name,
    markdown_artifact,
    run_logger,
    state_engine,
    system_slot,
    table_artifact,
)
from mappings.purchasing import TransformLine, vendor_credit
from state import code_ops as ops
from state.db import session_scope
from state.store import DeadLetterItem, record_dead_letters

FLOW = "code_ops"


@task(name="code-operation-chunk", retries=1, retry_delay_seconds=[2], cache_policy=NO_CACHE)
def _chunk(engine: Engine, operation: str, ids: list[int], params: dict[str, Any]) -> ops.OpReport:
    fn: Callable[..., ops.OpReport] = {
        "downgrade": ops.downgrade, "repromote": ops.repromote, "replace": ops.replace,
        "return": ops.return_to_supplier}[operation]
    with session_scope(engine, immediate=True) as s:
        return fn(s, ids, **params)


async def _run(operation: str, code_ids: list[int] | None, batch_no: str | None,
               sku: str | None, status: str | None, limit: int | None, chunk_size: int,
               params: dict[str, Any]) -> tuple[ops.OpReport, dict[str, Any]]:
    engine = state_engine()
    ids = list(code_ids or [])
    if batch_no or sku or status:
        with session_scope(engine) as s:
            ids.extend(ops.select_codes(s, batch_no=batch_no, sku=sku, status=status,
                                        limit=limit))
    ids = sorted(set(ids))
    total = ops.OpReport(operation)
    for start in range(0, len(ids), chunk_size):
        total.add(_chunk(engine, operation, ids[start:start + chunk_size], params))
    summary = {"operation": operation, "selected": len(ids), "done": len(total.done),
               "skipped": len(total.skipped), "targets": total.batches,
               "credits": total.credits,
               "skipped_sample": [{"code_id": c, "why": w} for c, w in total.skipped[:20]]}
    await table_artifact(f"codes-{operation}", [
        {"target": k, "codes": v} for k, v in sorted(total.batches.items())]
        or [{"target": "-", "codes": 0}], f"Codes: {operation}")
    await markdown_artifact(f"codes-{operation}-summary", (
        f"# Codes: {operation}\n- {len(ids)} selected, {len(total.done)} done, "
        f"{len(total.skipped)} skipped\n" + "".join(
            f"- code {c}: {w}\n" for c, w in total.skipped[:20])), f"Codes: {operation}")
    run_logger().info("codes %s: %s", operation, {k: v for k, v in summary.items()
                                                  if k != "skipped_sample"})
    return total, summary


@flow(name="codes-downgrade", log_prints=False)
async def downgrade_codes(to_sku: str, code_ids: list[int] | None = None,
                          batch_no: str | None = None, sku: str | None = None,
                          limit: int | None = None, actor: str = "operator", reason: str = "",
                          chunk_size: int = ops.CHUNK) -> dict[str, Any]:
    """Move codes in stock to a lower-value SKU."""
    return (await _run("downgrade", code_ids, batch_no, sku, "in_stock" if (batch_no or sku)
                       else None, limit, chunk_size,
                       {"to_sku": to_sku, "actor": actor, "reason": reason}))[1]


@flow(name="codes-repromote", log_prints=False)
async def repromote_codes(to_sku: str | None = None, campaign: str | None = None,
                          sites: list[str] | None = None, code_ids: list[int] | None = None,
                          batch_no: str | None = None, sku: str | None = None,
                          limit: int | None = None, actor: str = "operator", reason: str = "",
                          chunk_size: int = ops.CHUNK) -> dict[str, Any]:
    """Put codes in stock back on sale under another SKU or a campaign."""
    return (await _run("repromote", code_ids, batch_no, sku, "in_stock" if (batch_no or sku)
                       else None, limit, chunk_size,
                       {"to_sku": to_sku, "campaign": campaign, "sites": sites,
                        "actor": actor, "reason": reason}))[1]


@flow(name="codes-replace", log_prints=False)
async def replace_codes(code_ids: list[int] | None = None, batch_no: str | None = None,
                        status: str | None = None, limit: int | None = None,
                        actor: str = "operator", reason: str = "",
                        chunk_size: int = ops.CHUNK) -> dict[str, Any]:
    """Swap faulty sold codes for fresh ones on the same order lines."""
    return (await _run("replace", code_ids, batch_no, None, status, limit, chunk_size,
                       {"actor": actor, "reason": reason}))[1]


async def write_credits() -> dict[str, int]:
    """Vendor credits not in the ERP yet, each made from its bill once."""
    engine = state_engine()
    with session_scope(engine) as s:
        todo = [(c.id, c.credit_no, c.created_at.date(), c.quantity, c.unit_cost, c.batch_no,
                 b.erp_id, line) for c, b, line in ops.credits_to_write(s)]
    counts = {"erp_credits": 0, "waiting": 0, "dead_lettered": 0}
    if not todo:
        return counts
    erp = ErpClient(await erp_settings())
    try:
        async with system_slot(limit_name("erp", erp.account)):
            for cid, credit_no, day, qty, cost, batch_no, bill_erp, line in todo:
                if bill_erp is None:
                    counts["waiting"] += 1  # its bill reaches the ERP with the next settlement
                    continue
                body = vendor_credit(credit_no=credit_no, credit_date=day,
                                     memo=f"codes returned from batch {batch_no}",
                                     lines=[TransformLine(line=line, quantity=qty, rate=cost,
                                                          batch_no=batch_no)])
                try:
                    rid = await transform_once(erp, "vendorBill", bill_erp, "vendorCredit",
                                               credit_no, body)
                except FatalError as exc:
                    with session_scope(engine) as s:
                        record_dead_letters(s, [DeadLetterItem(
                            flow=FLOW, source="erp", entity_type="vendorCredit",
                            entity_key=credit_no, reason=f"{credit_no}: {exc}", payload=None)])
                    counts["dead_lettered"] += 1
                    continue
                with session_scope(engine) as s:
                    ops.record_credit(s, cid, rid)
                counts["erp_credits"] += 1
    finally:
        await erp.aclose()
    return counts


@flow(name="codes-return", log_prints=False)
async def return_codes(code_ids: list[int] | None = None, batch_no: str | None = None,
                       status: str | None = None, limit: int | None = None,
                       actor: str = "operator", reason: str = "",
                       chunk_size: int = ops.CHUNK) -> dict[str, Any]:
    """Return codes to their supplier, with vendor credits in the ERP."""
    _, summary = await _run("return", code_ids, batch_no, None, status, limit, chunk_size,
                            {"actor": actor, "reason": reason})
    summary.update(await write_credits())
    return summary


__all__ = ["downgrade_codes", "replace_codes", "repromote_codes", "return_codes",
           "write_credits"]
