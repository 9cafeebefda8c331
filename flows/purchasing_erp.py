"""ERP steps shared by the purchasing flows (daily API orders, settlement, payments, returns).

Transforms are not idempotent (DESIGN.md section 5): ``transform_once`` looks the target up by
its external id before making it, and again after a refused attempt (a retry whose first
attempt landed meets "duplicate external id"). Purchase orders are upserted through
``flows.procurement``'s posting step, under the same fingerprints, so the post-procurement
flow and these flows never write the same order twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, select

from connectors.erp import ErpClient
from connectors.errors import InvalidRecordError
from flows.procurement import _lines, _Posting, _set_erp_id, item_ids, post_vendors
from mappings.procurement import purchase_order
from state import procurement as proc
from state.db import session_scope


async def transform_once(erp: ErpClient, source_type: str, source_id: str, target_type: str,
                         external_id: str, body: dict[str, Any]) -> str:
    """The ``target_type`` record made from a source under ``external_id``, made at most once.
    Returns its internal id."""
    found = await erp.get_by_external_id(target_type, external_id)
    if found is not None:
        return str(found["id"])
    try:
        return await erp.transform(source_type, source_id, target_type, body)
    except InvalidRecordError:
        found = await erp.get_by_external_id(target_type, external_id)
        if found is not None:  # an earlier attempt of this very call made it
            return str(found["id"])
        raise


async def ensure_orders(run: _Posting, po_ids: Sequence[int]) -> dict[int, str]:
    """Vendors and the given purchase orders in the ERP (upserted by external id where their
    content changed); returns the ERP id of every order that is there."""
    if not po_ids:
        return {}
    await post_vendors(run)
    with session_scope(run.engine) as s:
        vendor_ids = {v.id: v.erp_id for v in s.scalars(select(proc.Vendor))}
        orders = list(s.scalars(select(proc.PurchaseOrder).where(
            proc.PurchaseOrder.id.in_(sorted(set(po_ids))))))  # type: ignore[union-attr]
        lines = {o.id: proc.order_lines(s, o.id) for o in orders}  # type: ignore[arg-type]
    items = await item_ids(run.engine, run.erp, {ln.sku for ls in lines.values() for ln in ls})
    bodies: dict[str, dict[str, Any]] = {}
    for o in orders:
        vendor = vendor_ids.get(o.vendor_id)
        if vendor is None:
            run.counts.waiting += 1
            continue
        try:
            bodies[o.po_no] = purchase_order(
                po_no=o.po_no, vendor_id=vendor, tran_date=o.tran_date, currency=o.currency,
                memo=o.memo, status=o.status, site=o.site, business_date=o.business_date,
                lines=_lines(lines[o.id], items, o.po_no))  # type: ignore[index]
        except Exception as exc:  # a SKU without an ERP item: the order waits as a dead letter
            run.refused("purchaseOrder", o.po_no, exc)
    await run.upsert_changed("purchaseOrder", bodies,
                             _set_erp_id(proc.PurchaseOrder, proc.PurchaseOrder.po_no), "orders")
    with session_scope(run.engine) as s:
        return {o.id: o.erp_id for o in s.scalars(select(proc.PurchaseOrder).where(
            proc.PurchaseOrder.id.in_(sorted(set(po_ids)))))  # type: ignore[union-attr]
            if o.erp_id}  # type: ignore[misc]


def posting(engine: Engine, erp: ErpClient) -> _Posting:
    return _Posting(engine, erp)
