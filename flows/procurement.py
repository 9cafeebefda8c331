"""post-procurement: vendors, purchase requests, purchase orders, receipts and their batches
reach the ERP, each exactly once under vouchflow's external id.

vouchflow keeps the procurement chain (``state.procurement``) and the ERP is its book. Each run
writes what is new or changed since the ERP last confirmed it, in dependency order (a purchase
order needs its vendor, a receipt its purchase order):

- vendors, approved purchase requests and purchase orders are upserted by external id
  (``PUT .../eid:po-acme-000012``); a fingerprint of what the ERP confirmed skips unchanged
  ones, so a re-run sends nothing;
- a receipt is an ``itemReceipt`` made from its purchase order by a transform, which is not
  idempotent: the receipt is looked up by its external id first, and the ERP's id is
  recorded as soon as it is known. A crash after the transform and before the record finds the
  receipt on the next run; a retry whose first attempt did land meets "duplicate external id",
  and the lookup settles it too;
- the receipt's batch (``customrecord_vf_batch``) is upserted by its batch number.

A record the ERP refuses becomes a dead letter (source ``erp``) and the rest go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from connectors.erp import ErpClient
from connectors.errors import FatalError, InvalidRecordError
from flows.credentials import erp_settings
from flows.runtime import (
    limit_name,
    markdown_artifact,
    run_logger,
    state_engine,
    system_slot,
    table_artifact,
)
from mappings.procurement import (
    ErpLine,
    batch_record,
    item_receipt,
    purchase_order,
    purchase_requisition,
    vendor_record,
)
from state import procurement as proc
from state.catalog import CatalogSku
from state.db import session_scope
from state.models import PoolBatch
from state.store import (
    DeadLetterItem,
    fingerprint,
    load_fingerprints,
    record_dead_letters,
    resolve_dead_letters,
    save_fingerprints,
)
from state.vendor_uploads import recover_stale_uploads

FLOW = "post_procurement"
ERP = "erp"
BATCH_TYPE = "customrecord_vf_batch"


@dataclass
class ProcurementCounts:
    vendors: int = 0
    requests: int = 0
    orders: int = 0
    receipts: int = 0
    batches: int = 0
    unchanged: int = 0
    waiting: int = 0
    """Records whose parent is not in the ERP yet (written by a later run)."""
    dead_lettered: int = 0
    recovered_uploads: int = 0

    def add(self, other: ProcurementCounts) -> None:
        for name, value in other.__dict__.items():
            setattr(self, name, getattr(self, name) + value)


class _Missing(Exception):
    pass


async def item_ids(engine: Engine, erp: ErpClient, skus: set[str]) -> dict[str, str]:
    """ERP inventoryItem internal ids of SKUs: from the catalogue as last synced, else asked
    of the ERP by item id."""
    with session_scope(engine) as s:
        found = {sku: erp_id for sku, erp_id in s.execute(
            select(CatalogSku.sku, CatalogSku.erp_id).where(
                CatalogSku.sku.in_(sorted(skus)), CatalogSku.erp_id.is_not(None)))}  # type: ignore[attr-defined, union-attr]
    missing = sorted(skus - set(found))
    for start in range(0, len(missing), 500):
        quoted = ", ".join("'" + s.replace("'", "''") + "'" for s in missing[start:start + 500])
        async for rows in erp.suiteql(f"SELECT id, itemid FROM item WHERE itemid IN ({quoted})"):
            found.update({r["itemid"]: r["id"] for r in rows})
    return found


class _Posting:
    """One run's shared pieces: state, ERP client, the counts, refusals as dead letters."""

    def __init__(self, engine: Engine, erp: ErpClient) -> None:
        self.engine = engine
        self.erp = erp
        self.counts = ProcurementCounts()

    def refused(self, record_type: str, key: str, exc: Exception) -> None:
        with session_scope(self.engine) as s:
            record_dead_letters(s, [DeadLetterItem(
                flow=FLOW, source=ERP, entity_type=record_type, entity_key=key,
                reason=f"{record_type} {key}: {exc}", payload=None)])
        self.counts.dead_lettered += 1

    async def upsert_changed(
        self, record_type: str, bodies: dict[str, dict[str, Any]],
        done: Callable[[Session, str, str], None], counter: str,
    ) -> None:
        """Upsert the records whose content differs from what the ERP last confirmed;
        ``done(session, key, erp_id)`` records the ERP's id in the same transaction as the
        fingerprint."""
        with session_scope(self.engine) as s:
            known = load_fingerprints(s, ERP, record_type, list(bodies))
        changed = {k: b for k, b in bodies.items() if known.get(k) != fingerprint(b)}
        self.counts.unchanged += len(bodies) - len(changed)

        async def one(key: str, body: dict[str, Any]) -> None:
            try:
                erp_id = await self.erp.upsert(record_type, key, body)
            except FatalError as exc:
                self.refused(record_type, key, exc)
                return
            with session_scope(self.engine) as s:
                done(s, key, erp_id)
                save_fingerprints(s, ERP, record_type, {key: fingerprint(body)})
                resolve_dead_letters(s, FLOW, ERP, record_type, [key])
            setattr(self.counts, counter, getattr(self.counts, counter) + 1)

        await _gather(one(k, b) for k, b in sorted(changed.items()))


async def _gather(jobs: Any) -> None:
    await asyncio.gather(*jobs)


def _set_erp_id(model: Any, column: Any) -> Callable[[Session, str, str], None]:
    def done(session: Session, key: str, erp_id: str) -> None:
        session.execute(update(model).where(column == key).values(erp_id=erp_id))
    return done


async def post_vendors(run: _Posting) -> None:
    with session_scope(run.engine) as s:
        vendors = list(s.scalars(select(proc.Vendor).order_by(proc.Vendor.id)))
        contracts: dict[int, proc.SupplierContract] = {}
        for c in s.scalars(select(proc.SupplierContract).where(
                proc.SupplierContract.signature_status == proc.SignatureStatus.SIGNED)
                .order_by(proc.SupplierContract.id)):
            contracts[c.vendor_id] = c  # the newest signed contract
    bodies = {v.external_id: vendor_record(
        external_id=v.external_id, name=v.name, currency=v.currency, email=v.email,
        country=v.country, bank_account=v.bank_account, bank_bic=v.bank_bic,
        settlement_mode=contracts[v.id].settlement_mode if v.id in contracts else None,
        contract_signed=v.id in contracts, inactive=v.status != proc.VendorStatus.ACTIVE)
        for v in vendors}
    await run.upsert_changed("vendor", bodies,
                             _set_erp_id(proc.Vendor, proc.Vendor.external_id), "vendors")


def _lines(rows: Sequence[Any], items: dict[str, str], key: str) -> list[ErpLine]:
    missing = sorted({r.sku for r in rows} - set(items))
    if missing:
        raise _Missing(f"{key}: no ERP item for {', '.join(missing)} (run the catalogue sync)")
    return [ErpLine(line=r.line_no, item_id=items[r.sku], quantity=r.quantity, rate=r.unit_cost,
                    description=getattr(r, "description", None)) for r in rows]


async def post_documents(run: _Posting) -> None:
    """Approved purchase requests, then purchase orders, whose vendor is in the ERP."""
    with session_scope(run.engine) as s:
        vendor_ids = {v.id: v.erp_id for v in s.scalars(select(proc.Vendor))}
        requests = list(s.scalars(select(proc.PurchaseRequest).where(
            proc.PurchaseRequest.status.in_([proc.RequestStatus.APPROVED,  # type: ignore[attr-defined]
                                             proc.RequestStatus.ORDERED]))))
        request_lines = {r.id: list(s.scalars(select(proc.PurchaseRequestLine).where(
            proc.PurchaseRequestLine.request_id == r.id).order_by(
                proc.PurchaseRequestLine.line_no))) for r in requests}
        orders = list(s.scalars(select(proc.PurchaseOrder).order_by(proc.PurchaseOrder.id)))
        order_lines = {o.id: proc.order_lines(s, o.id) for o in orders}  # type: ignore[arg-type]
    skus = {ln.sku for lines in (*request_lines.values(), *order_lines.values()) for ln in lines}
    items = await item_ids(run.engine, run.erp, skus)

    def ready(record_type: str, key: str, vendor_id: int,
              build: Callable[[str], dict[str, Any]], into: dict[str, dict[str, Any]]) -> None:
        erp_vendor = vendor_ids.get(vendor_id)
        if erp_vendor is None:
            run.counts.waiting += 1
            return
        try:
            into[key] = build(erp_vendor)
        except _Missing as exc:
            run.refused(record_type, key, exc)

    prs: dict[str, dict[str, Any]] = {}
    for r in requests:
        ready("purchaseRequisition", r.request_no, r.vendor_id, lambda v, r=r: purchase_requisition(
            request_no=r.request_no, vendor_id=v, tran_date=r.created_at.date(),
            currency=r.currency, memo=r.memo,
            lines=_lines(request_lines[r.id], items, r.request_no)), prs)
    pos: dict[str, dict[str, Any]] = {}
    for o in orders:
        ready("purchaseOrder", o.po_no, o.vendor_id, lambda v, o=o: purchase_order(
            po_no=o.po_no, vendor_id=v, tran_date=o.tran_date, currency=o.currency,
            memo=o.memo, status=o.status, site=o.site, business_date=o.business_date,
            lines=_lines(order_lines[o.id], items, o.po_no)), pos)  # type: ignore[index]
    await run.upsert_changed(
        "purchaseRequisition", prs,
        _set_erp_id(proc.PurchaseRequest, proc.PurchaseRequest.request_no), "requests")
    await run.upsert_changed("purchaseOrder", pos,
                             _set_erp_id(proc.PurchaseOrder, proc.PurchaseOrder.po_no), "orders")


@dataclass(frozen=True)
class _ReceiptRow:
    id: int
    receipt_no: str
    po_erp_id: str | None
    line_no: int
    quantity: int
    batch_no: str
    sku: str
    tran_date: Any
    erp_id: str | None
    erp_batch_id: str | None


def _receipts(engine: Engine) -> list[_ReceiptRow]:
    r, o, ln = proc.Receipt, proc.PurchaseOrder, proc.PurchaseOrderLine
    with session_scope(engine) as s:
        rows = s.execute(
            select(r.id, r.receipt_no, o.erp_id.label("po_erp_id"), ln.line_no, r.quantity,  # type: ignore[union-attr]
                   r.batch_no, r.sku, r.received_at, r.erp_id, r.erp_batch_id)
            .join(o, o.id == r.po_id).join(ln, ln.id == r.po_line_id)
            .where((r.erp_id.is_(None)) | (r.erp_batch_id.is_(None)))  # type: ignore[union-attr]
            .order_by(r.id)).all()
    return [_ReceiptRow(row.id, row.receipt_no, row.po_erp_id, row.line_no, row.quantity,
                        row.batch_no, row.sku, row.received_at.date(), row.erp_id,
                        row.erp_batch_id) for row in rows]


async def receive_in_erp(run: _Posting, row: _ReceiptRow) -> str | None:
    """The receipt's itemReceipt, made once: looked up by external id before the transform
    (and after one that failed, in case its first attempt landed)."""
    found = await run.erp.get_by_external_id("itemReceipt", row.receipt_no)
    if found is not None:
        return str(found["id"])
    body = item_receipt(receipt_no=row.receipt_no, tran_date=row.tran_date, line=row.line_no,
                        quantity=row.quantity, batch_no=row.batch_no)
    try:
        return await run.erp.transform("purchaseOrder", str(row.po_erp_id), "itemReceipt", body)
    except InvalidRecordError as exc:
        found = await run.erp.get_by_external_id("itemReceipt", row.receipt_no)
        if found is not None:  # an earlier attempt of this very call made it
            return str(found["id"])
        run.refused("itemReceipt", row.receipt_no, exc)
        return None


async def post_receipts(run: _Posting) -> None:
    rows = _receipts(run.engine)
    waiting = [r for r in rows if r.po_erp_id is None]
    run.counts.waiting += len(waiting)
    rows = [r for r in rows if r.po_erp_id is not None]

    async def receipt(row: _ReceiptRow) -> None:
        try:
            erp_id = await receive_in_erp(run, row)
        except FatalError as exc:
            run.refused("itemReceipt", row.receipt_no, exc)
            return
        if erp_id is None:
            return
        with session_scope(run.engine) as s:
            s.execute(update(proc.Receipt).where(proc.Receipt.id == row.id)
                      .values(erp_id=erp_id))
            resolve_dead_letters(s, FLOW, ERP, "itemReceipt", [row.receipt_no])
        run.counts.receipts += 1

    await _gather(receipt(r) for r in rows if r.erp_id is None)
    await post_batches(run, [r for r in rows if r.erp_batch_id is None])


async def post_batches(run: _Posting, rows: list[_ReceiptRow]) -> None:
    """The receipts' batches as the ERP's batch records (upsert by batch number)."""
    if not rows:
        return
    items = await item_ids(run.engine, run.erp, {r.sku for r in rows})
    with session_scope(run.engine) as s:
        batches = {b.batch_no: b for b in s.scalars(select(PoolBatch).where(
            PoolBatch.batch_no.in_([r.batch_no for r in rows])))}  # type: ignore[attr-defined]

    async def one(row: _ReceiptRow) -> None:
        batch = batches.get(row.batch_no)
        if batch is None or row.sku not in items:
            run.refused(BATCH_TYPE, row.batch_no, _Missing(
                "no such batch in the pool" if batch is None else f"no ERP item for {row.sku}"))
            return
        body = batch_record(
            batch_no=batch.batch_no, item_id=items[row.sku], quantity=batch.quantity,
            available=batch.available, remaining=batch.remaining, status=batch.status,
            unit_cost=batch.unit_cost, currency=batch.currency, expiry_type=batch.expiry_type,
            expires_on=batch.expires_on, po_id=row.po_erp_id,
            sites=[s for s in batch.sites.split(",") if s])
        try:
            erp_id = await run.erp.upsert(BATCH_TYPE, batch.batch_no, body)
        except FatalError as exc:
            run.refused(BATCH_TYPE, batch.batch_no, exc)
            return
        with session_scope(run.engine) as s:
            s.execute(update(proc.Receipt).where(proc.Receipt.id == row.id)
                      .values(erp_batch_id=erp_id))
            resolve_dead_letters(s, FLOW, ERP, BATCH_TYPE, [batch.batch_no])
        run.counts.batches += 1

    await _gather(one(r) for r in rows)


async def _step(engine: Engine, erp: ErpClient,
                steps: Sequence[Callable[[_Posting], Awaitable[None]]]) -> ProcurementCounts:
    run = _Posting(engine, erp)
    async with system_slot(limit_name("erp", erp.account)):
        for step in steps:
            await step(run)
    return run.counts


@task(name="post-vendors", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
async def vendors_task(engine: Engine, erp: ErpClient) -> ProcurementCounts:
    return await _step(engine, erp, [post_vendors])


@task(name="post-requests-and-orders", retries=2, retry_delay_seconds=[2, 10],
      cache_policy=NO_CACHE)
async def documents_task(engine: Engine, erp: ErpClient) -> ProcurementCounts:
    return await _step(engine, erp, [post_documents])


@task(name="post-receipts-and-batches", retries=2, retry_delay_seconds=[2, 10],
      cache_policy=NO_CACHE)
async def receipts_task(engine: Engine, erp: ErpClient) -> ProcurementCounts:
    return await _step(engine, erp, [post_receipts])


@flow(name="post-procurement", log_prints=False)
async def post_procurement() -> dict[str, Any]:
    """Write vendors, purchase requests, purchase orders, receipts and batches to the ERP."""
    logger = run_logger()
    engine = state_engine()
    totals = ProcurementCounts()
    totals.recovered_uploads = len(await asyncio.to_thread(recover_stale_uploads, engine))
    erp = ErpClient(await erp_settings())
    try:
        for step in (vendors_task, documents_task, receipts_task):
            totals.add(await step(engine, erp))
    finally:
        await erp.aclose()
    summary = dict(totals.__dict__)
    await table_artifact("post-procurement-counts",
                         [{"measure": k.replace("_", " "), "count": v} for k, v in summary.items()],
                         "Procurement to the ERP: counts of this run")
    await markdown_artifact(
        "post-procurement-summary",
        f"# Procurement to the ERP\n- {summary['vendors']} vendor(s), {summary['requests']} "
        f"purchase request(s), {summary['orders']} purchase order(s) written\n"
        f"- {summary['receipts']} receipt(s) and {summary['batches']} batch record(s) made\n"
        f"- {summary['unchanged']} unchanged, {summary['waiting']} waiting for their parent, "
        f"{summary['dead_lettered']} dead-lettered\n", "Procurement to the ERP")
    logger.info("post-procurement: %s", summary)
    return summary


__all__ = ["post_procurement"]
