"""Costing: cost layers per batch, kept as a ledger (``cost_entry``) of units and value per
day, kind and batch, and the documents the group finance system is sent from it.

The ledger is filled incrementally from append-only facts, each read once by its id
(``cost_source`` keeps how far):

- receipts (``purchase_receipt``): units into stock at the batch's cost (purchases);
- the codes' chronology (``code_event``): a code allocated (sold) is cost of sales at its own
  batch's cost, one back in stock reverses it; a code that expired in stock is a write-off; a
  code returned to the supplier from stock leaves it (return); a code moved to another batch
  (downgrade, re-promote) is a transfer, out of one batch and into the other at the same cost;
- the daily API orders' bookings (``api_day_batch``): API units sold, at the cost of the batch
  each unit was reserved from (first in, first out, as allocated); negative for refunds after
  the day was booked.

A day's entries are those recorded that day (UTC), so a posted day never changes: a late fact
lands on the day it is recorded. A batch's units on hand at the end of a day are the sum of
its entries up to that day (purchases and transfers in, less sales, write-offs, returns and
transfers out); its inventory value is that times its cost. ``amount`` is always
``quantity x unit_cost`` exactly (4 decimals, never rounded).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from canonical import CodeStatus, now_utc
from state import procurement as proc
from state.models import PoolBatch, PoolCode, PoolCodeEvent
from state.purchasing_models import ApiDayBatch, CostEntry, CostKind, CostSource, FinancePosting
from state.store import _insert

READ_CHUNK = 5000
SETTLE = timedelta(seconds=5)
"""Facts younger than this are left for the next refresh: a transaction that started earlier
may still commit rows with lower ids (PostgreSQL hands out ids before commit)."""
TRANSFER_DETAIL = re.compile(r"batch (?P<src>[A-Za-z0-9_-]+) -> (?P<dst>[A-Za-z0-9_-]+)")

IN, OUT = CodeStatus.IN_STOCK.value, (CodeStatus.ALLOCATED.value, CodeStatus.SOLD.value)


def transfer_detail(src: str, dst: str, why: str) -> str:
    """The chronology detail of a code moved between batches (read back by the ledger)."""
    return f"batch {src} -> {dst}: {why}"[:1000]


@dataclass(frozen=True)
class _Batch:
    sku: str
    currency: str
    unit_cost: Decimal


class _Ledger:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.batches: dict[str, _Batch] = {}
        self.add: dict[tuple[date, str, str], int] = defaultdict(int)

    def batch(self, batch_no: str) -> _Batch | None:
        found = self.batches.get(batch_no)
        if found is None:
            row = self.session.get(PoolBatch, batch_no)
            if row is None:
                return None
            found = self.batches[batch_no] = _Batch(row.sku, row.currency, row.unit_cost)
        return found

    def entry(self, day: date, kind: CostKind, batch_no: str, quantity: int) -> None:
        if quantity:
            self.add[(day, kind.value, batch_no)] += quantity

    def write(self) -> int:
        table = CostEntry.__table__
        for (day, kind, batch_no), n in sorted(self.add.items()):
            b = self.batch(batch_no)
            if b is None or not n:
                continue
            row = self.session.execute(select(table.c.id, table.c.quantity).where(
                table.c.entry_date == day, table.c.kind == kind,
                table.c.batch_no == batch_no)).first()
            if row is None:
                self.session.execute(table.insert().values(
                    entry_date=day, kind=kind, batch_no=batch_no, sku=b.sku,
                    currency=b.currency, unit_cost=b.unit_cost, quantity=n,
                    amount=b.unit_cost * n))
            else:
                q = row.quantity + n
                self.session.execute(table.update().where(table.c.id == row.id).values(
                    quantity=q, amount=b.unit_cost * q))
        return len(self.add)


def _watermark(session: Session, source: str) -> int:
    row = session.get(CostSource, source)
    return row.last_id if row is not None else 0


def _advance(session: Session, source: str, last_id: int) -> None:
    t = CostSource.__table__
    stmt = _insert(session, t).values(source=source, last_id=last_id, updated_at=now_utc())
    session.execute(stmt.on_conflict_do_update(
        index_elements=["source"], set_={"last_id": last_id, "updated_at": now_utc()}))


def refresh(session: Session, *, settle: timedelta = SETTLE, now: datetime | None = None
            ) -> dict[str, int]:
    """Read the facts recorded since the last refresh into the ledger (one transaction:
    entries and watermarks move together). Returns facts read per source."""
    cutoff = (now or now_utc()) - settle
    ledger = _Ledger(session)
    read = {"receipts": _receipts(session, ledger, cutoff),
            "code_events": _code_events(session, ledger, cutoff),
            "api_bookings": _api_bookings(session, ledger, cutoff)}
    ledger.write()
    return read


def _receipts(session: Session, ledger: _Ledger, cutoff: datetime) -> int:
    last = _watermark(session, "receipt")
    r = proc.Receipt
    rows = session.execute(select(r.id, r.batch_no, r.quantity, r.received_at)
                           .where(r.id > last).order_by(r.id)).all()
    done = last
    for row in rows:
        ledger.entry(row.received_at.date(), CostKind.PURCHASE, row.batch_no, row.quantity)
        done = row.id
    if done != last:
        _advance(session, "receipt", done)
    return len(rows)


def _code_events(session: Session, ledger: _Ledger, cutoff: datetime) -> int:
    last = _watermark(session, "code_event")
    ev, pc = PoolCodeEvent.__table__, PoolCode.__table__
    count = 0
    while True:
        rows = session.execute(
            select(ev.c.id, ev.c.at, ev.c.action, ev.c.from_status, ev.c.to_status,
                   ev.c.detail, pc.c.batch_no)
            .join(pc, pc.c.id == ev.c.code_id)
            .where(ev.c.id > last).order_by(ev.c.id).limit(READ_CHUNK)).all()
        stop = False
        for row in rows:
            if row.at >= cutoff:
                stop = True
                break
            _code_event(ledger, row)
            last = row.id
            count += 1
        if stop or len(rows) < READ_CHUNK:
            break
    if count:
        _advance(session, "code_event", last)
    return count


def _code_event(ledger: _Ledger, row: Any) -> None:
    day = row.at.date()
    fs, ts = row.from_status, row.to_status
    if row.action == "transfer":
        m = TRANSFER_DETAIL.match(row.detail or "")
        if m:
            ledger.entry(day, CostKind.TRANSFER, m["src"], -1)
            ledger.entry(day, CostKind.TRANSFER, m["dst"], 1)
        return
    if fs == IN and ts in OUT:
        ledger.entry(day, CostKind.SALE, row.batch_no, 1)
    elif fs in OUT and ts == IN:
        ledger.entry(day, CostKind.SALE, row.batch_no, -1)
    elif fs == IN and ts == CodeStatus.EXPIRED.value:
        ledger.entry(day, CostKind.WRITE_OFF, row.batch_no, 1)
    elif fs == IN and ts == CodeStatus.RETURNED.value:
        ledger.entry(day, CostKind.RETURN, row.batch_no, 1)


def _api_bookings(session: Session, ledger: _Ledger, cutoff: datetime) -> int:
    last = _watermark(session, "api_day_batch")
    t = ApiDayBatch
    rows = session.execute(select(t.id, t.batch_no, t.quantity, t.created_at)
                           .where(t.id > last).order_by(t.id)).all()
    done, count = last, 0
    for row in rows:
        if row.created_at >= cutoff:
            break
        ledger.entry(row.created_at.date(), CostKind.SALE, row.batch_no, row.quantity)
        done = row.id
        count += 1
    if done != last:
        _advance(session, "api_day_batch", done)
    return count


# reading the layers ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    batch_no: str
    sku: str
    currency: str
    unit_cost: Decimal
    quantity: int
    amount: Decimal


def entries(session: Session, day: date, kinds: Iterable[CostKind]) -> list[Layer]:
    """One day's entries of the given kinds, per batch (a batch's kinds summed, signed:
    returns and transfers out count negative)."""
    sign = {CostKind.PURCHASE.value: 1, CostKind.SALE.value: 1, CostKind.WRITE_OFF.value: 1,
            CostKind.RETURN.value: -1, CostKind.TRANSFER.value: 1}
    t = CostEntry
    wanted = [k.value for k in kinds]
    per: dict[str, list[Any]] = defaultdict(list)
    for row in session.scalars(select(t).where(t.entry_date == day, t.kind.in_(wanted))  # type: ignore[attr-defined]
                               .order_by(t.batch_no)):
        per[row.batch_no].append(row)
    out = []
    for batch_no, rows in per.items():
        q = sum(sign[r.kind] * r.quantity for r in rows)
        if q:
            r0 = rows[0]
            out.append(Layer(batch_no, r0.sku, r0.currency, r0.unit_cost, q, r0.unit_cost * q))
    return out


def on_hand(session: Session, day: date) -> list[Layer]:
    """Units and value of every batch at the end of ``day`` (batches holding none left out)."""
    t = CostEntry
    sign = {CostKind.PURCHASE.value: 1, CostKind.TRANSFER.value: 1, CostKind.SALE.value: -1,
            CostKind.WRITE_OFF.value: -1, CostKind.RETURN.value: -1}
    rows = session.execute(select(t.batch_no, t.kind, t.sku, t.currency, t.unit_cost,
                                  func.sum(t.quantity))
                           .where(t.entry_date <= day)
                           .group_by(t.batch_no, t.kind, t.sku, t.currency, t.unit_cost)).all()
    units: dict[str, int] = defaultdict(int)
    info: dict[str, tuple[str, str, Decimal]] = {}
    for batch_no, kind, sku, currency, cost, n in rows:
        units[batch_no] += sign[kind] * int(n or 0)
        info[batch_no] = (sku, currency, cost)
    return [Layer(b, info[b][0], info[b][1], info[b][2], q, info[b][2] * q)
            for b, q in sorted(units.items()) if q]


def days_with_entries(session: Session) -> list[date]:
    return list(session.scalars(select(CostEntry.entry_date).distinct()
                                .order_by(CostEntry.entry_date)))


def totals(session: Session, kind: CostKind, *, through: date | None = None
           ) -> dict[str, Decimal]:
    """Sum of one kind's amounts per currency (operators, tests)."""
    t = CostEntry
    query = select(t.currency, t.amount).where(t.kind == kind.value)
    if through is not None:
        query = query.where(t.entry_date <= through)
    out: dict[str, Decimal] = defaultdict(Decimal)
    for currency, amount in session.execute(query):
        out[currency] += amount
    return dict(out)


# postings -------------------------------------------------------------------------------------
def posted(session: Session, document_ids: Iterable[str]) -> dict[str, FinancePosting]:
    ids = list(document_ids)
    return {p.document_id: p for p in session.scalars(select(FinancePosting).where(
        FinancePosting.document_id.in_(ids)))} if ids else {}  # type: ignore[attr-defined]


def record_posting(session: Session, *, document_id: str, kind: str, entry_date: date,
                   period: str, currency: str, total: Decimal, line_count: int, status: str,
                   posting_ref: str | None, message: str | None) -> None:
    row = session.get(FinancePosting, document_id)
    now = now_utc()
    if row is None:
        session.add(FinancePosting(
            document_id=document_id, kind=kind, entry_date=entry_date, period=period,
            currency=currency, total=total, line_count=line_count, status=status,
            posting_ref=posting_ref, message=(message or "")[:2000] or None, posted_at=now))
    else:
        row.status, row.posting_ref, row.posted_at = status, posting_ref, now
        row.total, row.line_count = total, line_count
        row.message = (message or "")[:2000] or None
    session.flush()
