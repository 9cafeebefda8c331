"""API-mode sales: the supplier issues the codes at the moment of sale, vouchflow delivers them.

An API line is allocated like any other (units reserved from the SKU's API batches, FIFO,
``state.pool.allocate``). Then, for each allocated API line not delivered yet:

1. **Queue**: the line gets an outbox row (target ``wallet:{site}``, operation
   ``order.api_delivery``, key ``delivery-{site}-{order}-{line}``, the site's delivery key) with
   the quantity to deliver frozen in it. Lines allocated since the step's watermark (with a
   look-back) are queued; the outbox keeps a key once, so queuing again changes nothing.
2. **Supplier**: the vendor whose signed API contract the line's batches were bought under
   (batch -> purchase order -> contract -> vendor); its base URL and token come from a Prefect
   block or the environment (``flows.credentials.supplier_settings``). A line without a signed
   contract, or whose supplier is not configured, is **held**: the row stays pending with the
   reason (``last_error``, the run's ``held`` list) and is tried again next run.
3. **Issue**: ``POST /codes:issue`` with ``Idempotency-Key: issue-{site}-{order}-{line}``.
4. **Record** the codes as keyed hashes (``state.api_purchasing.record_issued_codes``, for
   settlement by write-off quantity); a code already recorded for another line stops the line
   (dead letter) instead of reaching a second customer.
5. **Deliver** to the site with the line's delivery key (``flows.delivery.send_line_delivery``,
   the code-pool path's own), then mark the row sent with the line's ``order_line.delivered``
   event in one transaction.

vouchflow never stores a plaintext code: the supplier's idempotency is the store. A crash
anywhere between 3 and 5 leaves the row pending; the re-run asks the supplier again with the
same key and gets the same codes (nothing new issued), records nothing new, and the site
answers the repeated delivery key with the first delivery.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prefect import flow
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from canonical import now_utc
from connectors.errors import (
    ConfigurationError,
    ConflictError,
    ConnectorError,
    InvalidRecordError,
    NotFoundError,
)
from connectors.supplier import Issue, SupplierClient, SupplierSettings
from flows.credentials import supplier_settings
from flows.delivery import give_up, send_line_delivery
from flows.runtime import limit_name, run_logger, state_engine, system_slot, table_artifact
from state import pool
from state import procurement as proc
from state.api_purchasing import record_issued_codes
from state.crypto import Keyring, last4
from state.db import session_scope
from state.events import emit_events, order_line_delivered
from state.models import ApiAllocation, OrderLine, PoolBatch
from state.purchasing_models import ApiIssuedCode
from state.store import (
    OutboxItem,
    enqueue,
    get_watermark,
    mark_attempt_failed,
    mark_sent,
    pending_outbox,
    set_watermark,
)
from state.vendor_uploads import receive_write_off_file

FLOW = "ingest_sales"
API_DELIVERY_OPERATION = "order.api_delivery"
WATERMARK_SCOPE = "api_lines"
LOOKBACK = timedelta(minutes=10)

SettingsFor = Callable[[str], Awaitable[SupplierSettings]]


class Hold(Exception):
    """The line cannot be issued yet; the message says why (no codes were issued)."""


def issue_key(site: str, order_id: str, line_id: str) -> str:
    """``issue-{site}-{order}-{line}``: the supplier's Idempotency-Key for a line, made safe
    exactly as the line's delivery key is (``[A-Za-z0-9_-]``, a hash when ids are not plain)."""
    return "issue-" + pool.delivery_key(site, order_id, line_id).removeprefix("delivery-")


@dataclass
class SupplierCounts:
    """What the step did; ``deliver_api_lines`` adds these to any object with the same
    counters (the sales run's ``SalesCounts``)."""

    queued: int = 0
    delivered_lines: int = 0
    api_codes_issued: int = 0
    dead_lettered: int = 0
    held: list[dict[str, str]] = field(default_factory=list)


# 1. queue -------------------------------------------------------------------------------------
def queue_api_lines(session: Session, sites: list[str], *, since: datetime | None) -> int:
    """An outbox row for each allocated API line (allocated since ``since``) of these sites;
    rows already there are left as they are. Returns rows added.

    Lines are found through ``api_allocation`` (API sales only, keyed by site first) rather
    than ``order_line``, whose allocated lines no index holds."""
    ol, aa = OrderLine.__table__, ApiAllocation.__table__
    reserved = select(aa.c.site, aa.c.order_id, aa.c.line_id).where(aa.c.site.in_(sites))
    if since is not None:
        reserved = reserved.where(aa.c.at >= since)
    found = reserved.distinct().subquery()
    query = (select(ol.c.site, ol.c.order_id, ol.c.line_id, ol.c.sku, ol.c.quantity,
                    ol.c.refunded)
             .join_from(ol, found, (found.c.site == ol.c.site)
                        & (found.c.order_id == ol.c.order_id)
                        & (found.c.line_id == ol.c.line_id))
             .where(ol.c.status == pool.LineStatus.ALLOCATED.value,
                    ol.c.issuance_mode == pool.API))
    items = []
    for r in session.execute(query.order_by(ol.c.allocated_at)):
        quantity = r.quantity - (r.refunded or 0)
        if quantity <= 0:
            continue  # refunded before anything was issued
        items.append(OutboxItem(
            target=f"wallet:{r.site}", operation=API_DELIVERY_OPERATION,
            idempotency_key=pool.delivery_key(r.site, r.order_id, r.line_id),
            entity_type=pool.LINE_ENTITY,
            entity_key=pool.line_ref(r.site, r.order_id, r.line_id),
            payload={"site": r.site, "order_id": r.order_id, "line_id": r.line_id,
                     "sku": r.sku, "quantity": quantity}))
    return enqueue(session, items)


# 2. which supplier ----------------------------------------------------------------------------
def supplier_of(session: Session, site: str, order_id: str, line_id: str) -> str:
    """The slug of the vendor whose signed API contract the line's units were bought under;
    ``Hold`` says why there is none."""
    aa, bt = ApiAllocation.__table__, PoolBatch.__table__
    po, ct, vd = proc.PurchaseOrder, proc.SupplierContract, proc.Vendor
    rows = session.execute(
        select(aa.c.batch_no, bt.c.purchase_order, ct.contract_no, ct.signature_status,
               ct.issuance_mode, vd.slug)
        .join(bt, bt.c.batch_no == aa.c.batch_no)
        .outerjoin(po, po.po_no == bt.c.purchase_order)
        .outerjoin(ct, ct.id == po.contract_id)
        .outerjoin(vd, vd.id == po.vendor_id)
        .where(aa.c.site == site, aa.c.order_id == order_id, aa.c.line_id == line_id)).all()
    if not rows:
        raise Hold("no API units are reserved for the line")
    slugs = set()
    for r in rows:
        if r.slug is None:
            raise Hold(f"batch {r.batch_no} names no purchase order of ours "
                       f"({r.purchase_order or 'none'}): no supplier contract to issue under")
        if r.signature_status != proc.SignatureStatus.SIGNED:
            raise Hold(f"contract {r.contract_no} of supplier {r.slug} is "
                       f"{r.signature_status}, not signed")
        if r.issuance_mode != pool.API:
            raise Hold(f"contract {r.contract_no} of supplier {r.slug} is not an API contract")
        slugs.add(r.slug)
    if len(slugs) > 1:
        raise Hold(f"units reserved from batches of several suppliers ({', '.join(sorted(slugs))})")
    return slugs.pop()


class Suppliers:
    """One client per supplier for the step, built on first use."""

    def __init__(self, settings_for: SettingsFor) -> None:
        self.settings_for = settings_for
        self._clients: dict[str, SupplierClient | Hold] = {}
        self._lock = asyncio.Lock()

    async def client(self, slug: str) -> SupplierClient:
        async with self._lock:
            if slug not in self._clients:
                try:
                    self._clients[slug] = SupplierClient(await self.settings_for(slug))
                except ConfigurationError as exc:
                    self._clients[slug] = Hold(f"supplier {slug} is not configured: {exc}")
            found = self._clients[slug]
        if isinstance(found, Hold):
            raise found
        return found

    async def aclose(self) -> None:
        for found in self._clients.values():
            if isinstance(found, SupplierClient):
                await found.aclose()


# 3-5. issue, record, deliver ------------------------------------------------------------------
def _other_lines(session: Session, keyring: Keyring, codes: list[str], site: str,
                 order_id: str, line_id: str) -> list[str]:
    """Codes (masked) that vouchflow recorded for another line: never deliver those."""
    t = ApiIssuedCode.__table__
    hashes = keyring.hash_codes(codes)
    rows = session.execute(select(t.c.last4, t.c.site, t.c.order_id, t.c.line_id)
                           .where(t.c.code_hash.in_(hashes))).all()
    return [f"...{r.last4} ({r.site}/{r.order_id}/{r.line_id})" for r in rows
            if (r.site, r.order_id, r.line_id) != (site, order_id, line_id)]


def _give_up(engine: Engine, row: Any, reason: str, payload: Mapping[str, Any] | None = None
             ) -> None:
    give_up(engine, row, reason, flow=FLOW, entity_type="api_delivery", payload=payload)


async def deliver_line(engine: Engine, wallet: Any, keyring: Keyring, suppliers: Suppliers,
                       row: Any, counts: Any) -> None:
    p = row.payload
    site, order_id, line_id = p["site"], p["order_id"], p["line_id"]
    where = f"{site}/{order_id}/{line_id}"
    with session_scope(engine) as session:
        line = session.get(OrderLine, (site, order_id, line_id))
    if line is None or line.status != pool.LineStatus.ALLOCATED or \
            line.quantity - (line.refunded or 0) <= 0:
        state = "gone" if line is None else (
            line.status if line.status != pool.LineStatus.ALLOCATED else "refunded in full")
        _give_up(engine, row, f"line {where} is {state}: no codes issued for it",
                 {"order_id": order_id, "line_id": line_id})
        counts.dead_lettered += 1
        return
    try:
        with session_scope(engine) as session:
            slug = supplier_of(session, site, order_id, line_id)
        client = await suppliers.client(slug)
        issue: Issue = await client.issue_codes(
            p["sku"], p["quantity"], pool.line_ref(site, order_id, line_id),
            key=issue_key(site, order_id, line_id))
    except (ConflictError, InvalidRecordError, NotFoundError) as exc:
        _give_up(engine, row, f"the supplier refused to issue codes for {where}: {exc}",
                 {"order_id": order_id, "line_id": line_id, "sku": p["sku"]})
        counts.dead_lettered += 1
        return
    except (Hold, ConnectorError) as exc:
        # down, throttled, locked out or answering nonsense: this line waits for the next
        # run (the key gets the same codes then); the other lines go on
        reason = f"API codes for {where} not issued yet: {exc}"
        with session_scope(engine) as session:
            mark_attempt_failed(session, [row.id], reason)
        counts.held.append({"site": site, "order_id": order_id, "reason": reason})
        return
    codes = [c.code.get_secret_value() for c in issue.codes]
    masked = [f"...{last4(c)}" for c in codes]
    with session_scope(engine) as session:
        try:
            new = record_issued_codes(session, keyring, site=site, order_id=order_id,
                                      line_id=line_id, codes=codes)
            clash = _other_lines(session, keyring, codes, site, order_id, line_id)
        except pool.PoolError as exc:
            clash, new = [f"not recordable: {exc}"], 0
    if clash:
        _give_up(engine, row, f"codes issued for {where} (issue {issue.issue_id}) were not "
                 f"delivered: {'; '.join(clash[:10])}",
                 {"order_id": order_id, "line_id": line_id, "codes": masked})
        counts.dead_lettered += 1
        return
    if not await send_line_delivery(engine, wallet, row, [c.wire() for c in issue.codes],
                                    flow=FLOW):
        counts.dead_lettered += 1
        return
    with session_scope(engine) as session:
        mark_sent(session, [row.id])
        emit_events(session, [order_line_delivered(site=site, order_id=order_id,
                                                   line_id=line_id, codes=len(codes),
                                                   at=now_utc())])
    counts.delivered_lines += 1
    counts.api_codes_issued += new


async def deliver_api_lines(
    engine: Engine, wallets: Mapping[str, Any], keyring: Keyring, counts: Any | None = None,
    *, settings_for: SettingsFor = supplier_settings,
) -> Any:
    """Queue the API lines allocated since the last run, then issue and deliver every pending
    one of these sites (``wallets``: site code -> wallet client). Adds to ``counts``."""
    counts = counts if counts is not None else SupplierCounts()
    sites = sorted(wallets)
    high = now_utc()
    added = 0
    for site in sites:  # a watermark per site: a run may cover only some of them
        with session_scope(engine) as session:
            since = get_watermark(session, FLOW, f"wallet:{site}", WATERMARK_SCOPE)
            added += queue_api_lines(session, [site],
                                     since=since - LOOKBACK if since else None)
            set_watermark(session, FLOW, f"wallet:{site}", high, WATERMARK_SCOPE)
    if isinstance(counts, SupplierCounts):
        counts.queued += added
    suppliers = Suppliers(settings_for)
    try:
        for site in sites:
            with session_scope(engine) as session:
                rows = pending_outbox(session, f"wallet:{site}",
                                      operation=API_DELIVERY_OPERATION)
            if not rows:
                continue
            async with system_slot(limit_name("wallet", site)):
                await asyncio.gather(*(deliver_line(engine, wallets[site], keyring, suppliers,
                                                    row, counts) for row in rows))
    finally:
        await suppliers.aclose()
    return counts


# redemptions -> write-offs ----------------------------------------------------------------------
REDEMPTIONS_FLOW = "supplier_redemptions"


@dataclass
class RedemptionImport:
    vendor: str
    read: int = 0
    """Redemptions the supplier listed since the vendor's watermark."""
    new: int = 0
    """Of those, codes not written off for this vendor before (handed to the upload)."""
    upload_no: str | None = None
    accepted: int = 0
    refused: int = 0
    held: str | None = None


def write_off_vendors(session: Session, only: list[str] | None = None) -> list[tuple[int, str]]:
    """(id, slug) of vendors with a signed API contract settled by write-off quantity."""
    ct, vd = proc.SupplierContract, proc.Vendor
    query = (select(vd.id, vd.slug).join(ct, ct.vendor_id == vd.id)
             .where(ct.issuance_mode == pool.API,
                    ct.settlement_mode == proc.SettlementMode.WRITE_OFF_QUANTITY.value,
                    ct.signature_status == proc.SignatureStatus.SIGNED.value).distinct())
    if only:
        query = query.where(vd.slug.in_(only))
    return [(int(i), slug) for i, slug in session.execute(query.order_by(vd.slug))]


def _csv(rows: list[tuple[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["code", "redeemed_at"])
    writer.writerows(rows)
    return out.getvalue().encode()


async def import_redemptions(
    engine: Engine, keyring: Keyring, *, vendors: list[str] | None = None,
    settings_for: SettingsFor = supplier_settings,
) -> list[RedemptionImport]:
    """Codes each write-off vendor's API reports redeemed (``GET /redemptions`` since the
    vendor's watermark) become write-offs, through the same path as a vendor's write-off
    upload (``state.vendor_uploads.receive_write_off_file``), for settlement by write-off
    quantity. Codes already written off for the vendor are left out before the upload (the
    watermark is inclusive, and a crash may come between the upload and the watermark), so
    reading again never reports a code twice. A supplier that is not configured is skipped
    with the reason."""
    with session_scope(engine) as session:
        chosen = write_off_vendors(session, vendors)
    out = []
    for vendor_id, slug in chosen:
        report = RedemptionImport(slug)
        out.append(report)
        suppliers = Suppliers(settings_for)
        try:
            client = await suppliers.client(slug)
            with session_scope(engine) as session:
                since = get_watermark(session, REDEMPTIONS_FLOW, f"supplier:{slug}",
                                      "redemptions")
            latest = since
            rows: list[tuple[str, str]] = []
            async for page in client.list_redemptions(since=since):
                report.read += len(page)
                codes = [r.code.get_secret_value() for r in page]
                hashes = keyring.hash_codes(codes)
                with session_scope(engine) as session:
                    known = set(session.scalars(select(proc.WriteOff.code_hash).where(
                        proc.WriteOff.vendor_id == vendor_id,
                        proc.WriteOff.code_hash.in_(hashes))))
                for r, code, digest in zip(page, codes, hashes, strict=True):
                    latest = r.redeemed_at if latest is None else max(latest, r.redeemed_at)
                    if digest not in known:
                        rows.append((code, r.redeemed_at.isoformat()))
        except (Hold, ConnectorError) as exc:
            report.held = str(exc)
            continue
        finally:
            await suppliers.aclose()
        report.new = len(rows)
        if rows:
            stamp = (latest or now_utc()).strftime("%Y%m%dT%H%M%S")
            result = await asyncio.to_thread(
                receive_write_off_file, engine, keyring, vendor_id=vendor_id,
                file_name=f"api-redemptions-{slug}-{stamp}.csv", chunks=[_csv(rows)])
            report.upload_no = result.upload_no
            report.accepted, report.refused = result.rows_accepted, result.rows_rejected
        if latest is not None:
            with session_scope(engine) as session:
                set_watermark(session, REDEMPTIONS_FLOW, f"supplier:{slug}", latest,
                              "redemptions")
    return out


@flow(name="supplier-redemptions", log_prints=False)
async def supplier_redemptions(vendors: list[str] | None = None) -> list[dict[str, Any]]:
    """Read what the API suppliers settled by write-off quantity report redeemed into the
    write-offs that ``settle-vendors`` bills."""
    reports = await import_redemptions(state_engine(), Keyring.load(), vendors=vendors)
    rows = [asdict(r) for r in reports]
    await table_artifact("supplier-redemptions", rows,
                         "Redemptions read from API suppliers, as write-offs")
    run_logger().info("supplier-redemptions: %s", rows)
    return rows


__all__ = ["API_DELIVERY_OPERATION", "RedemptionImport", "SupplierCounts", "deliver_api_lines",
           "import_redemptions", "issue_key", "queue_api_lines", "supplier_of",
           "supplier_redemptions"]
