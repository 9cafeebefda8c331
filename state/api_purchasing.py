"""API purchasing: a site's API sales of one business day become daily purchase orders.

DESIGN.md section 1: an API batch holds a quantity; each sale reserves units of it (``available``
drops, ``unposted`` rises, ``state.pool.allocate``). Once the site's day is over (cut at its own
midnight), the day's sales are summed per SKU into one purchase order, received at once, that
books them against the batches they were reserved from: when its receipt reaches the ERP, the
units leave ``unposted`` for the book (``remaining`` drops, ``pool.mark_posted``).

Booking a day is idempotent: what each (site, SKU, day, batch) has booked is kept
(``api_day_batch``) and only the difference from the sales as they stand now is booked again.
Re-running a day with nothing new books nothing; a sale that arrives after the day was booked
goes into a correction order (``po-{site}-{sku}-{yyyymmdd}-c{n}``), never into a rewrite of the
day's order; units refunded after the day was booked are booked back into the batch (a
negative booking without an order) and reported.

Codes issued by an API supplier for sales (``record_issued_codes``) are kept as keyed hashes,
for settlement by write-off quantity (``state.settlement``).
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from canonical import now_utc
from state import pool
from state import procurement as proc
from state.crypto import Keyring, last4
from state.models import ApiAllocation, OrderLine, PoolBatch
from state.purchasing_models import (
    ApiDayBatch,
    ApiDayOrder,
    ApiIssuedCode,
    IssuedCodeStatus,
)
from state.store import _insert

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def stable_key(*parts: str, limit: int = 64) -> str:
    """``parts`` joined by ``-``, ``[A-Za-z0-9_-]`` only (a NetSuite external id); past
    ``limit`` characters the tail becomes a short hash of the whole, so keys stay unique."""
    plain = "-".join(_UNSAFE.sub("_", p) for p in parts)
    if len(plain) <= limit:
        return plain
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:10]
    return f"{plain[:limit - 11]}-{digest}"


def day_po_no(site: str, sku: str, day: date, *, vendor_slug: str | None = None,
              correction: int = 0) -> str:
    parts = ["po", site, sku, day.strftime("%Y%m%d")]
    if vendor_slug:
        parts.append(vendor_slug)
    if correction:
        parts.append(f"c{correction}")
    return stable_key(*parts)


def receipt_no_for(po_no: str) -> str:
    return stable_key("rcpt", po_no.removeprefix("po-"))


@dataclass
class DayReport:
    site: str
    business_date: date
    orders: list[str] = field(default_factory=list)
    """Daily orders made this time (``po-...``)."""
    corrections: list[str] = field(default_factory=list)
    units: int = 0
    """Units booked by those orders."""
    refunded_after_close: int = 0
    """Units refunded after their day was booked, booked back into their batches."""
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(key, reason) of sales that could not be booked (e.g. no signed contract)."""

    @property
    def unchanged(self) -> bool:
        return not (self.orders or self.corrections or self.refunded_after_close
                    or self.problems)


def day_sales(session: Session, site: str, start: datetime, end: datetime
              ) -> dict[tuple[str, str], int]:
    """Net API units sold on a site between two instants (by when the order was placed), per
    (SKU, batch): allocated minus refunded."""
    aa, ol = ApiAllocation.__table__, OrderLine.__table__
    rows = session.execute(
        select(aa.c.sku, aa.c.batch_no, func.sum(aa.c.quantity - aa.c.returned))
        .join(ol, (ol.c.site == aa.c.site) & (ol.c.order_id == aa.c.order_id)
              & (ol.c.line_id == aa.c.line_id))
        .where(aa.c.site == site, ol.c.order_created_at >= start, ol.c.order_created_at < end)
        .group_by(aa.c.sku, aa.c.batch_no)).all()
    return {(sku, batch): int(n or 0) for sku, batch, n in rows}


def day_booked(session: Session, site: str, day: date) -> dict[tuple[str, str], int]:
    t = ApiDayBatch.__table__
    rows = session.execute(
        select(t.c.sku, t.c.batch_no, func.sum(t.c.quantity))
        .where(t.c.site == site, t.c.business_date == day)
        .group_by(t.c.sku, t.c.batch_no)).all()
    return {(sku, batch): int(n or 0) for sku, batch, n in rows}


@dataclass(frozen=True)
class _Source:
    """Where an API batch came from: its contract and vendor, and its unit cost."""

    contract: proc.SupplierContract
    vendor: proc.Vendor
    unit_cost: Any


def _sources(session: Session, batch_nos: Iterable[str]) -> dict[str, _Source | str]:
    """Each batch's source, or the reason it has none."""
    out: dict[str, _Source | str] = {}
    for batch_no in sorted(set(batch_nos)):
        batch = session.get(PoolBatch, batch_no)
        if batch is None:
            out[batch_no] = f"batch {batch_no} is not in the pool"
            continue
        order = session.scalar(select(proc.PurchaseOrder).where(
            proc.PurchaseOrder.po_no == batch.purchase_order)) if batch.purchase_order else None
        if order is None:
            out[batch_no] = (f"batch {batch_no} names no purchase order of ours "
                             f"({batch.purchase_order or 'none'}): no contract to buy under")
            continue
        contract = session.get(proc.SupplierContract, order.contract_id)
        vendor = session.get(proc.Vendor, order.vendor_id)
        assert contract is not None and vendor is not None
        out[batch_no] = _Source(contract, vendor, batch.unit_cost)
    return out


def book_day(
    session: Session, *, site: str, business_date: date, start: datetime, end: datetime,
    now: datetime | None = None,
) -> DayReport:
    """Book one site's API sales of one business day (the instants ``[start, end)``): the
    difference between the sales as they stand and what the day booked before becomes one
    daily order per SKU (and vendor), a correction order once the day has one, or negative
    bookings for units refunded since. Refuses a day that is not over."""
    now = now or now_utc()
    if end > now:
        raise proc.Blocked(f"site {site}: business day {business_date} ends at "
                           f"{end.isoformat()}, it is not over yet")
    report = DayReport(site=site, business_date=business_date)
    sales = day_sales(session, site, start, end)
    booked = day_booked(session, site, business_date)
    delta = {k: sales.get(k, 0) - booked.get(k, 0) for k in set(sales) | set(booked)}
    delta = {k: n for k, n in delta.items() if n}
    if not delta:
        return report
    sources = _sources(session, (b for _, b in delta))
    # refunds after the day was booked: the units go back into the book of their batch
    for (sku, batch_no), n in sorted(delta.items()):
        if n >= 0:
            continue
        session.add(ApiDayBatch(site=site, sku=sku, business_date=business_date,
                                batch_no=batch_no, quantity=n, created_at=now))
        pool.mark_posted(session, batch_no, n)
        report.refunded_after_close += -n
    # new sales: one order per SKU and vendor, a line per batch at the batch's cost
    groups: dict[tuple[str, int], list[tuple[str, int, _Source]]] = defaultdict(list)
    for (sku, batch_no), n in sorted(delta.items()):
        if n <= 0:
            continue
        source = sources[batch_no]
        if isinstance(source, str):
            report.problems.append((f"{site}-{sku}-{business_date:%Y%m%d}-{batch_no}", source))
            continue
        groups[(sku, source.vendor.id)].append((batch_no, n, source))  # type: ignore[arg-type]
    for (sku, vendor_id), lines in sorted(groups.items()):
        source = lines[0][2]
        try:
            _order_day(session, site=site, sku=sku, business_date=business_date,
                               start=start, end=end, vendor_id=vendor_id, source=source,
                               lines=[(b, n) for b, n, _ in lines], now=now, report=report)
        except proc.ProcurementError as exc:
            report.problems.append((f"{site}-{sku}-{business_date:%Y%m%d}", str(exc)))
            continue
        report.units += sum(n for _, n, _ in lines)
    session.flush()
    return report


def _order_day(
    session: Session, *, site: str, sku: str, business_date: date, start: datetime,
    end: datetime, vendor_id: int, source: _Source, lines: Sequence[tuple[str, int]],
    now: datetime, report: DayReport,
) -> str:
    t = ApiDayOrder
    existing = list(session.scalars(select(t).where(
        t.site == site, t.sku == sku, t.business_date == business_date)))
    mine = [o for o in existing if o.vendor_id == vendor_id]
    first_vendor = min(existing, key=lambda o: o.po_id).vendor_id if existing else vendor_id
    slug = None if first_vendor == vendor_id else source.vendor.slug
    correction = len(mine)
    po_no = day_po_no(site, sku, business_date, vendor_slug=slug, correction=correction)
    kind = proc.OrderKind.CORRECTION if correction else proc.OrderKind.DAILY_API
    nested = session.begin_nested()
    try:
        order = proc.create_purchase_order(
            session, source.contract.contract_no,
            [proc.LineIn(sku, n, unit_cost=_cost_of(session, b), description=f"batch {b}")
             for b, n in lines],
            tran_date=business_date, po_no=po_no, kind=kind, site=site,
            business_date=business_date,
            memo=(f"API sales of {sku} on {site}, business day {business_date}"
                  + (f" (correction {correction}: sales recorded after the day was booked)"
                     if correction else "")), events=False)
        pol = proc.PurchaseOrderLine
        session.execute(update(pol).where(pol.po_id == order.id)
                        .values(received_quantity=pol.quantity)
                        .execution_options(synchronize_session="fetch"))
        order.status = proc.OrderStatus.RECEIVED
        session.add(t(po_id=order.id, site=site, sku=sku, business_date=business_date,
                      vendor_id=vendor_id, correction=correction, window_start=start,
                      window_end=end, receipt_no=receipt_no_for(po_no), created_at=now))
        for line_no, (batch_no, n) in enumerate(lines, 1):
            session.add(ApiDayBatch(site=site, sku=sku, business_date=business_date,
                                    batch_no=batch_no, quantity=n, po_id=order.id,
                                    line_no=line_no, created_at=now))
        session.flush()
        proc.announce_created(session, order)  # received at once: one event says it all
        nested.commit()
    except BaseException:
        nested.rollback()
        raise
    (report.corrections if correction else report.orders).append(po_no)
    return po_no


def _cost_of(session: Session, batch_no: str) -> Any:
    batch = session.get(PoolBatch, batch_no)
    assert batch is not None
    return batch.unit_cost


# the ERP side ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DayOrderView:
    po_id: int
    po_no: str
    receipt_no: str
    site: str
    sku: str
    business_date: date
    po_erp_id: str | None
    receipt_erp_id: str | None
    posted: bool
    lines: tuple[tuple[int, str, int], ...]
    """(line number, batch number, quantity)."""


def unposted_day_orders(session: Session, *, site: str | None = None,
                        business_date: date | None = None) -> list[DayOrderView]:
    """Daily orders whose receipt has not reached the ERP (or not been booked) yet."""
    query = (select(ApiDayOrder, proc.PurchaseOrder)
             .join(proc.PurchaseOrder, proc.PurchaseOrder.id == ApiDayOrder.po_id)
             .where(ApiDayOrder.posted_at.is_(None))  # type: ignore[union-attr]
             .order_by(ApiDayOrder.po_id))
    if site is not None:
        query = query.where(ApiDayOrder.site == site)
    if business_date is not None:
        query = query.where(ApiDayOrder.business_date == business_date)
    out = []
    for day, order in session.execute(query).all():
        lines = session.execute(
            select(ApiDayBatch.line_no, ApiDayBatch.batch_no, ApiDayBatch.quantity)
            .where(ApiDayBatch.po_id == day.po_id).order_by(ApiDayBatch.line_no)).all()
        out.append(DayOrderView(
            po_id=day.po_id, po_no=order.po_no, receipt_no=day.receipt_no, site=day.site,
            sku=day.sku, business_date=day.business_date, po_erp_id=order.erp_id,
            receipt_erp_id=day.receipt_erp_id, posted=False,
            lines=tuple((int(n), b, int(q)) for n, b, q in lines)))
    return out


def record_day_receipt(session: Session, po_id: int, receipt_erp_id: str) -> bool:
    """The daily order's receipt is in the ERP: its units move from the batches' ``unposted``
    into the book, once (False when it was recorded before)."""
    t = ApiDayOrder.__table__
    changed = session.execute(
        update(t).where(t.c.po_id == po_id, t.c.posted_at.is_(None))
        .values(receipt_erp_id=receipt_erp_id, posted_at=now_utc())).rowcount
    if not changed:
        return False
    for batch_no, n in session.execute(
            select(ApiDayBatch.batch_no, ApiDayBatch.quantity)
            .where(ApiDayBatch.po_id == po_id)).all():
        pool.mark_posted(session, batch_no, int(n))
    return True


# codes issued by an API supplier -------------------------------------------------------------
def record_issued_codes(
    session: Session, keyring: Keyring, *, site: str, order_id: str, line_id: str,
    codes: Sequence[str],
) -> int:
    """The codes an API supplier issued for one allocated order line, in unit order: kept as
    keyed hashes with the batch each unit was reserved from (FIFO, as allocated). Recording
    the same codes again changes nothing. Returns codes newly recorded."""
    line = session.get(OrderLine, (site, order_id, line_id))
    if line is None or line.status != pool.LineStatus.ALLOCATED:
        raise pool.PoolError(f"line {site}/{order_id}/{line_id} is not an allocated line")
    if len(codes) > line.quantity:
        raise pool.PoolError(f"line {site}/{order_id}/{line_id}: {len(codes)} codes for "
                             f"{line.quantity} units")
    aa = ApiAllocation.__table__
    allocations = session.execute(
        select(aa.c.batch_no, aa.c.quantity).join(PoolBatch.__table__,
                                                  PoolBatch.batch_no == aa.c.batch_no)
        .where(aa.c.site == site, aa.c.order_id == order_id, aa.c.line_id == line_id)
        .order_by(PoolBatch.seq)).all()
    units = [b for b, n in allocations for _ in range(n)]
    if len(units) < len(codes):
        raise pool.PoolError(f"line {site}/{order_id}/{line_id} reserved {len(units)} API "
                             f"units, {len(codes)} codes given")
    sources = _sources(session, set(units))
    rows = []
    for code, digest, batch_no in zip(codes, keyring.hash_codes(codes), units, strict=False):
        source = sources[batch_no]
        if isinstance(source, str):
            raise pool.PoolError(source)
        rows.append({"code_hash": digest, "last4": last4(code), "site": site,
                     "order_id": order_id, "line_id": line_id, "sku": line.sku,
                     "batch_no": batch_no, "vendor_id": source.vendor.id,
                     "sold_at": line.order_created_at, "status": IssuedCodeStatus.SOLD.value,
                     "write_off_id": None, "po_id": None})
    if not rows:
        return 0
    t = ApiIssuedCode.__table__
    result = session.execute(_insert(session, t).on_conflict_do_nothing(
        index_elements=["code_hash"]).returning(t.c.id), rows)
    return len(result.all())
