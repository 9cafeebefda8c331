"""Reconciliation results per day, operators' corrections, and remittance batches.

- A day's match result (groups, discrepancies, each order's outcome) is stored whole and
  replaced whole: re-running a day deletes what the last run said about it in the same
  transaction that writes the new answer, so a day never holds two results.
- Corrections are adjustments (who, when, why, amount, link); source data is never edited.
  They are kept for ever and fed to every later match of their day.
- A remittance batch (one per day x payment method x site) moves
  ``open -> validated -> closed -> posted`` in versions. A closed version is immutable:
  reopening adds a reversal version (the closed one negated, ``reverses`` = it) and a new
  open version. Closing writes the batch's two outbox rows (treasury, ERP journal entry) in
  the same transaction, so posting is owed exactly once from that moment on.
- Approvals (who, when, which discrepancies they saw) are kept with the batch.

Everything takes an open ``Session``: callers decide what shares a transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Column,
    Date,
    Index,
    Integer,
    String,
    UniqueConstraint,
    delete,
    insert,
    select,
    text,
)
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from canonical import now_utc
from canonical.money import minor_unit
from state.events import Event, announce, discrepancy_event, remittance_batch_event
from state.models import ExactDecimal
from state.store import OutboxItem, _executemany, enqueue
from state.types import JSONText, UTCDateTime

TREASURY = "treasury"
ERP = "erp"
ENTITY = "remittance_batch"


class RemittanceError(ValueError):
    """A request the batch rules refuse; the message says why."""


class BatchStatus(StrEnum):
    OPEN = "open"
    VALIDATED = "validated"
    CLOSED = "closed"
    POSTED = "posted"
    SUPERSEDED = "superseded"
    """An open or validated version replaced by a newer one after a reopen."""


def _ts(nullable: bool) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable))


def _money(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(ExactDecimal(), nullable=nullable))


class ReconDay(SQLModel, table=True):
    """The newest match of one business day (replaced by the next run of the day)."""

    __tablename__ = "recon_day"

    day: date = Field(sa_column=Column(Date, primary_key=True))
    run_key: str = Field(max_length=128)
    rules_digest: str = Field(max_length=64)
    counts: Any = Field(default=None, sa_column=Column(JSONText(), nullable=True))
    sources: Any = Field(default=None, sa_column=Column(JSONText(), nullable=True))
    matched_at: datetime = _ts(False)


class ReconGroup(SQLModel, table=True):
    __tablename__ = "recon_group"
    __table_args__ = (UniqueConstraint("day", "group_id", name="uq_recon_group"),)

    id: int | None = Field(default=None, primary_key=True)
    day: date = Field(sa_column=Column(Date, nullable=False))
    group_id: str = Field(max_length=64)
    kind: str = Field(max_length=32)
    site: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    method: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    order_id: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    payout_id: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    trace_ids: Any = Field(default=None, sa_column=Column(JSONText(), nullable=True))
    currency: str | None = Field(default=None, sa_column=Column(String(3), nullable=True))
    expected: Decimal | None = _money()
    received: Decimal | None = _money()
    fee: Decimal | None = _money()
    rule: str = Field(max_length=200)


class ReconDiscrepancy(SQLModel, table=True):
    __tablename__ = "recon_discrepancy"
    __table_args__ = (
        UniqueConstraint("day", "key", name="uq_recon_discrepancy"),
        Index("ix_recon_discrepancy_class", "day", "category"),
    )

    id: int | None = Field(default=None, primary_key=True)
    day: date = Field(sa_column=Column(Date, nullable=False))
    key: str = Field(max_length=64)
    category: str = Field(max_length=32)
    """The discrepancy class (``mappings.reconcile.DiscrepancyClass``)."""
    status: str = Field(max_length=16)
    site: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    method: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    order_id: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    payout_id: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    trace_ids: Any = Field(default=None, sa_column=Column(JSONText(), nullable=True))
    currency: str | None = Field(default=None, sa_column=Column(String(3), nullable=True))
    expected: Decimal | None = _money()
    actual: Decimal | None = _money()
    difference: Decimal | None = _money()
    detail: str = Field(sa_column=Column(String(2000), nullable=False))


class ReconOutcome(SQLModel, table=True):
    """What each order of the day came to; remittance lines are made of these."""

    __tablename__ = "recon_outcome"

    day: date = Field(sa_column=Column(Date, primary_key=True))
    site: str = Field(primary_key=True, max_length=32)
    order_id: str = Field(primary_key=True, max_length=128)
    method: str = Field(max_length=32)
    currency: str = Field(max_length=3)
    expected: Decimal = _money(False)
    received: Decimal = _money(False)
    fee: Decimal = _money(False)
    refunded: Decimal = _money(False)
    reference: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    matched: bool = Field(default=False)


class ReconCorrection(SQLModel, table=True):
    """An operator's adjustment; kept for ever, an input to every later match of the day."""

    __tablename__ = "recon_correction"
    __table_args__ = (Index("ix_recon_correction_day", "day"),)

    id: int | None = Field(default=None, primary_key=True)
    day: date = Field(sa_column=Column(Date, nullable=False))
    kind: str = Field(max_length=16)
    target: str = Field(max_length=255)
    assign_to: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    amount: Decimal | None = _money()
    currency: str | None = Field(default=None, sa_column=Column(String(3), nullable=True))
    reason: str = Field(sa_column=Column(String(2000), nullable=False))
    created_by: str = Field(max_length=128)
    created_at: datetime = _ts(False)


class RemittanceBatch(SQLModel, table=True):
    """One version of a day x payment method x site batch."""

    __tablename__ = "remittance_batch"
    __table_args__ = (
        UniqueConstraint("batch_id", "version", name="uq_remittance_batch_version"),
        Index("ix_remittance_batch_day", "day", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    batch_id: str = Field(max_length=128)
    version: int = Field(sa_column=Column(Integer, nullable=False))
    day: date = Field(sa_column=Column(Date, nullable=False))
    site: str = Field(max_length=32)
    method: str = Field(max_length=32)
    currency: str = Field(max_length=3)
    status: str = Field(max_length=16)
    gross: Decimal = _money(False)
    fees: Decimal = _money(False)
    net: Decimal = _money(False)
    count: int = Field(sa_column=Column(Integer, nullable=False))
    lines: Any = Field(default=None, sa_column=Column(JSONText(), nullable=False))
    reverses_version: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    blocking: Any = Field(default=None, sa_column=Column(JSONText(), nullable=True))
    """The discrepancies that stood in the way of closing when it was last validated."""
    approved_by: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    treasury_ref: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    erp_id: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    note: str | None = Field(default=None, sa_column=Column(String(2000), nullable=True))
    created_at: datetime = _ts(False)
    validated_at: datetime | None = _ts(True)
    closed_at: datetime | None = _ts(True)
    posted_at: datetime | None = _ts(True)


class RemittanceApproval(SQLModel, table=True):
    """An operator's decision on a batch that could not close on its own."""

    __tablename__ = "remittance_approval"
    __table_args__ = (Index("ix_remittance_approval_batch", "batch_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    batch_id: str = Field(max_length=128)
    version: int = Field(sa_column=Column(Integer, nullable=False))
    approved: bool = Field(default=False)
    approved_by: str = Field(max_length=128)
    comment: str | None = Field(default=None, sa_column=Column(String(2000), nullable=True))
    flow_run_id: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    discrepancies: Any = Field(default=None, sa_column=Column(JSONText(), nullable=True))
    at: datetime = _ts(False)


TABLES = [ReconDay, ReconGroup, ReconDiscrepancy, ReconOutcome, ReconCorrection,
          RemittanceBatch, RemittanceApproval]


# the day's result -----------------------------------------------------------------------------
def _amount(money: Any) -> Decimal | None:
    return None if money is None else money.amount


_DAY_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(current_schema() || :name))")


def group_row(g: Any) -> dict[str, Any]:
    """A ``MatchGroup`` as the row ``store_day_rows`` takes."""
    money = g.expected or g.received
    return {"group_id": g.group_id, "kind": g.kind.value, "site": g.site, "method": g.method,
            "order_id": g.order_id, "payout_id": g.payout_id, "trace_ids": list(g.trace_ids),
            "currency": money.currency if money else None, "expected": _amount(g.expected),
            "received": _amount(g.received), "fee": _amount(g.fee), "rule": g.rule}


def outcome_row(o: Any) -> dict[str, Any]:
    """An ``OrderOutcome`` as the row ``store_day_rows`` takes."""
    return {"site": o.site, "order_id": o.order_id, "method": o.method, "currency": o.currency,
            "expected": o.expected, "received": o.received, "fee": o.fee,
            "refunded": o.refunded, "reference": o.reference, "matched": o.matched}


def store_day_result(session: Session, result: Any, *, run_key: str,
                     sources: Sequence[Mapping[str, Any]] = ()) -> None:
    """Replace the day's stored result with ``result`` (a ``mappings.reconcile.DayResult``)."""
    store_day_rows(session, day=result.day, rules_digest=result.rules_digest,
                   counts=result.counts(), found=result.discrepancies,
                   groups=[[group_row(g) for g in result.groups]],
                   outcomes=[[outcome_row(o) for o in result.outcomes]], run_key=run_key,
                   sources=sources)


def store_day_rows(session: Session, *, day: date, rules_digest: str, counts: Mapping[str, int],
                   found: Sequence[Any], groups: Iterable[Sequence[Mapping[str, Any]]],
                   outcomes: Iterable[Sequence[Mapping[str, Any]]], run_key: str,
                   sources: Sequence[Mapping[str, Any]] = ()) -> None:
    """Replace the day's stored result: its discrepancies (``found``, each a
    ``mappings.reconcile.Discrepancy``)
    and its groups and order outcomes as chunks of rows (``group_row``, ``outcome_row``), so
    a day of a million orders is written in bulk statements, a chunk at a time, without a
    million objects at once.

    Two matches of one day at once take turns (a lock on the day, PostgreSQL; SQLite's write
    lock does it there): the second compares with what the first stored, so each change of a
    discrepancy is announced once."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_DAY_LOCK, {"name": f"/recon-day/{day.isoformat()}"})
    before = {d.key: _discrepancy_view(d) for d in discrepancies(session, day)}
    for model in (ReconGroup, ReconDiscrepancy, ReconOutcome):
        session.execute(delete(model).where(model.day == day))  # type: ignore[attr-defined]
    session.execute(delete(ReconDay).where(ReconDay.day == day))  # type: ignore[arg-type]
    matched_at = now_utc()
    session.add(ReconDay(day=day, run_key=run_key, rules_digest=rules_digest,
                         counts=dict(counts), sources=list(sources), matched_at=matched_at))
    session.flush()
    for chunk in groups:
        if chunk:
            _executemany(session, insert(ReconGroup.__table__),  # type: ignore[attr-defined]
                         [{**g, "day": day, "rule": g["rule"][:200]} for g in chunk])
    rows = [{
        "day": day, "key": d.key, "category": d.cls.value, "status": d.status, "site": d.site,
        "method": d.method, "order_id": d.order_id, "payout_id": d.payout_id,
        "trace_ids": list(d.trace_ids),
        "currency": next((m.currency for m in (d.difference, d.expected, d.actual) if m), None),
        "expected": _amount(d.expected), "actual": _amount(d.actual),
        "difference": _amount(d.difference), "detail": d.detail[:2000]}
        for d in found]
    if rows:
        _executemany(session, insert(ReconDiscrepancy.__table__), rows)  # type: ignore[attr-defined]
    for chunk in outcomes:
        if chunk:
            _executemany(session, insert(ReconOutcome.__table__),  # type: ignore[attr-defined]
                         [{**o, "day": day} for o in chunk])
    after = {d.key: _discrepancy_view(d) for d in discrepancies(session, day)}
    announce(session, discrepancy_changes(before, after, at=matched_at))


def _discrepancy_view(d: ReconDiscrepancy) -> dict[str, Any]:
    return {"day": d.day, "key": d.key, "class": d.category, "status": d.status,
            "site": d.site, "method": d.method, "order_id": d.order_id,
            "payout_id": d.payout_id, "trace_ids": list(d.trace_ids or []),
            "currency": d.currency, "expected": d.expected, "actual": d.actual,
            "difference": d.difference, "detail": d.detail}


def discrepancy_changes(before: Mapping[str, Mapping[str, Any]],
                        after: Mapping[str, Mapping[str, Any]], *, at: datetime
                        ) -> list[Event]:
    """What a new match of a day changed for subscribers: discrepancies open now that were
    not (``discrepancy.opened``), and those open before that are accepted now or gone
    (``discrepancy.resolved``, with how). The same result again changes nothing."""
    events = []
    for key in sorted(set(before) | set(after)):
        was, now = before.get(key), after.get(key)
        was_open = was is not None and was["status"] == "open"
        is_open = now is not None and now["status"] == "open"
        if is_open and not was_open:
            events.append(discrepancy_event("discrepancy.opened", now or {}, at=at))
        elif was_open and not is_open:
            how = "cleared" if now is None else str(now["status"])
            events.append(discrepancy_event("discrepancy.resolved",
                                            {**(now or was or {}), "status": how}, at=at,
                                            resolution=how))
    return events


def discrepancies(session: Session, day: date, *, status: str | None = None
                  ) -> list[ReconDiscrepancy]:
    query = select(ReconDiscrepancy).where(ReconDiscrepancy.day == day)  # type: ignore[arg-type]
    if status:
        query = query.where(ReconDiscrepancy.status == status)
    return list(session.scalars(query.order_by(ReconDiscrepancy.category, ReconDiscrepancy.site,
                                               ReconDiscrepancy.order_id, ReconDiscrepancy.key)))


# corrections --------------------------------------------------------------------------------
def add_correction(session: Session, *, day: date, kind: str, target: str, reason: str,
                   created_by: str, amount: Decimal | None = None, currency: str | None = None,
                   assign_to: str | None = None) -> ReconCorrection:
    if kind not in {"adjust", "accept", "assign"}:
        raise RemittanceError(f"correction kind {kind!r}: use adjust, accept or assign")
    if not target.startswith(("order:", "trace:", "payout:")):
        raise RemittanceError(f"target {target!r}: use order:SITE:ORDER, trace:ID or "
                              "payout:ID")
    if kind == "adjust" and (amount is None or not currency or
                             not target.startswith("order:")):
        raise RemittanceError("an adjustment needs an order target, an amount and a currency")
    if kind == "assign" and (not target.startswith("trace:") or not assign_to
                             or not assign_to.startswith("order:")):
        raise RemittanceError("assign links a trace:ID to an order:SITE:ORDER")
    if not reason.strip() or not created_by.strip():
        raise RemittanceError("a correction says who made it and why")
    row = ReconCorrection(day=day, kind=kind, target=target, assign_to=assign_to,
                          amount=amount, currency=currency, reason=reason.strip(),
                          created_by=created_by.strip(), created_at=now_utc())
    session.add(row)
    session.flush()
    return row


def corrections(session: Session, day: date) -> list[ReconCorrection]:
    return list(session.scalars(select(ReconCorrection).where(
        ReconCorrection.day == day).order_by(ReconCorrection.id)))  # type: ignore[arg-type]


# batches ------------------------------------------------------------------------------------
def exact(value: Decimal | str, currency: str) -> str:
    """An amount as the contracts write money: a decimal string with the currency's minor
    unit (the store keeps four decimals; the value never has more than its currency)."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-minor_unit(currency))))


def batch_id_for(day: date, site: str, method: str) -> str:
    return f"{day:%Y%m%d}-{site}-{method}"


def remit_key(batch_id: str, version: int) -> str:
    """The treasury Idempotency-Key (CONTRACTS.md): ``remit-{batch}-v{n}``."""
    return f"remit-{batch_id}-v{version}"


def journal_key(batch_id: str, version: int) -> str:
    """The ERP journal entry's external id."""
    return f"je-remit-{batch_id}-v{version}"


def versions(session: Session, batch_id: str) -> list[RemittanceBatch]:
    return list(session.scalars(select(RemittanceBatch).where(
        RemittanceBatch.batch_id == batch_id).order_by(RemittanceBatch.version)))


def latest(session: Session, batch_id: str) -> RemittanceBatch | None:
    found = versions(session, batch_id)
    return found[-1] if found else None


def current(session: Session, batch_id: str) -> RemittanceBatch:
    """The version that can still change (open or validated), else the newest."""
    found = [b for b in versions(session, batch_id) if b.status != BatchStatus.SUPERSEDED]
    if not found:
        raise RemittanceError(f"no remittance batch {batch_id}")
    return found[-1]


def batches(session: Session, *, day: date | None = None, status: str | None = None
            ) -> list[RemittanceBatch]:
    query = select(RemittanceBatch)
    if day is not None:
        query = query.where(RemittanceBatch.day == day)  # type: ignore[arg-type]
    if status is not None:
        query = query.where(RemittanceBatch.status == status)
    return list(session.scalars(query.order_by(RemittanceBatch.day, RemittanceBatch.batch_id,
                                               RemittanceBatch.version)))


@dataclass(frozen=True)
class BatchContent:
    day: date
    site: str
    method: str
    currency: str
    lines: list[dict[str, Any]]
    gross: Decimal
    fees: Decimal

    @property
    def net(self) -> Decimal:
        return self.gross - self.fees


def batch_contents(session: Session, day: date) -> list[BatchContent]:
    """Per site and method: one line per order that received money (net of its refunds)."""
    c = ReconOutcome.__table__.c  # type: ignore[attr-defined]
    # plain rows, not ORM objects: a large day has a million of them
    rows = session.execute(select(c.site, c.method, c.currency, c.order_id, c.received,
                                  c.refunded, c.fee, c.reference).where(c.day == day)
                           .order_by(c.site, c.method, c.order_id))
    grouped: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    for row in rows:
        grouped[(row.site, row.method, row.currency)].append(row)
    out = []
    for (site, method, currency), items in sorted(grouped.items()):
        lines = []
        for o in items:
            amount = o.received + o.refunded
            if amount == 0 and o.fee == 0:
                continue
            lines.append({"order_id": o.order_id, "amount": exact(amount, currency),
                          "fee": exact(o.fee, currency), "reference": o.reference})
        gross = sum((Decimal(line["amount"]) for line in lines), Decimal(0))
        fees = sum((Decimal(line["fee"]) for line in lines), Decimal(0))
        out.append(BatchContent(day, site, method, currency, lines, gross, fees))
    return out


def _blocking_for(session: Session, batch: RemittanceBatch, threshold: Decimal
                  ) -> list[dict[str, Any]]:
    """Open discrepancies of the batch's day, site and method (and those of the method that
    name no site, such as payments without order) above the threshold."""
    found = []
    for d in discrepancies(session, batch.day, status="open"):
        if d.method != batch.method or d.site not in {batch.site, None}:
            continue
        if d.difference is not None and abs(d.difference) <= threshold:
            continue
        found.append({"key": d.key, "class": d.category, "site": d.site, "order_id": d.order_id,
                      "payout_id": d.payout_id, "currency": d.currency,
                      "difference": None if d.difference is None else str(d.difference),
                      "detail": d.detail})
    return found


def refresh_batches(session: Session, day: date) -> list[RemittanceBatch]:
    """Make or refresh the day's batches from its stored result: an open or validated
    version takes the new lines (and goes back to open if they changed); a closed or posted
    one is left as it is (immutable)."""
    now = now_utc()
    touched = []
    for content in batch_contents(session, day):
        batch_id = batch_id_for(day, content.site, content.method)
        found = [b for b in versions(session, batch_id) if b.status != BatchStatus.SUPERSEDED]
        head = found[-1] if found else None
        if head is not None and head.status in {BatchStatus.CLOSED, BatchStatus.POSTED}:
            touched.append(head)
            continue
        if head is None:
            head = RemittanceBatch(batch_id=batch_id, version=1, day=day, site=content.site,
                                   method=content.method, currency=content.currency,
                                   status=BatchStatus.OPEN, gross=content.gross,
                                   fees=content.fees, net=content.net,
                                   count=len(content.lines), lines=content.lines,
                                   created_at=now)
            session.add(head)
        elif head.lines != content.lines:
            head.lines, head.gross, head.fees = content.lines, content.gross, content.fees
            head.net, head.count = content.net, len(content.lines)
            head.status, head.validated_at, head.blocking = BatchStatus.OPEN, None, None
        touched.append(head)
    session.flush()
    return touched


def validate_batch(session: Session, batch_id: str, *, threshold: Decimal
                   ) -> RemittanceBatch:
    """open -> validated: the lines add up, and the discrepancies that block closing are
    recorded with the batch (the approval form shows them)."""
    batch = current(session, batch_id)
    if batch.status not in {BatchStatus.OPEN, BatchStatus.VALIDATED}:
        raise RemittanceError(f"{batch_id} v{batch.version} is {batch.status}; only an open "
                              "batch is validated")
    gross = sum((Decimal(line["amount"]) for line in batch.lines), Decimal(0))
    fees = sum((Decimal(line["fee"]) for line in batch.lines), Decimal(0))
    if gross != batch.gross or fees != batch.fees or gross - fees != batch.net \
            or len(batch.lines) != batch.count:
        raise RemittanceError(f"{batch_id} v{batch.version}: totals do not add up")
    batch.blocking = _blocking_for(session, batch, threshold)
    batch.status = BatchStatus.VALIDATED
    batch.validated_at = now_utc()
    session.flush()
    return batch


def treasury_body(batch: RemittanceBatch) -> dict[str, Any]:
    """RemittanceBatch as CONTRACTS.md gives it (money as decimal strings)."""
    def money(value: Decimal | str) -> dict[str, str]:
        return {"amount": exact(value, batch.currency), "currency": batch.currency}

    return {
        "batch_id": batch.batch_id, "version": batch.version,
        "business_date": batch.day.isoformat(), "site": batch.site,
        "payment_method": batch.method, "currency": batch.currency,
        "gross": money(batch.gross), "fees": money(batch.fees), "net": money(batch.net),
        "count": batch.count,
        "lines": [{"order_id": line["order_id"], "amount": money(line["amount"]),
                   "fee": money(line["fee"]), "reference": line.get("reference")}
                  for line in batch.lines],
        "reverses": None if batch.reverses_version is None else {
            "batch_id": batch.batch_id, "version": batch.reverses_version},
        "approved_by": batch.approved_by,
    }


@dataclass(frozen=True)
class JournalAccounts:
    clearing: str = "1150"
    """Cash in transit from the provider (debit: the net it owes us)."""
    fees: str = "6150"
    """Payment fees (debit)."""
    receivables: str = "1200"
    """Customer receivables the orders created (credit: the gross collected)."""


def journal_body(batch: RemittanceBatch, accounts: JournalAccounts) -> dict[str, Any]:
    """A balanced journal entry: debit clearing (net) and fees, credit receivables (gross);
    a reversal (negative amounts) swaps the sides."""
    lines: list[dict[str, Any]] = []

    def add(account: str, amount: Decimal, debit: bool, memo: str) -> None:
        if amount == 0:
            return
        side = "debit" if (amount > 0) == debit else "credit"
        lines.append({"line": len(lines) + 1, "account": {"id": account},
                      side: Decimal(exact(abs(amount), batch.currency)), "memo": memo})

    add(accounts.clearing, batch.net, True, "net collected")
    add(accounts.fees, batch.fees, True, "payment fees")
    add(accounts.receivables, batch.gross, False, "orders collected")
    what = "reversal of " if batch.reverses_version is not None else ""
    return {
        "externalId": journal_key(batch.batch_id, batch.version), "tranDate": batch.day,
        "currency": batch.currency, "custbody_vf_site": batch.site,
        "memo": f"remittance {what}{batch.batch_id} v{batch.reverses_version or batch.version}"
                f" ({batch.method})",
        "line": {"items": lines},
    }


def _enqueue_posting(session: Session, batch: RemittanceBatch, accounts: JournalAccounts
                     ) -> None:
    entity = f"{batch.batch_id}-v{batch.version}"
    body = journal_body(batch, accounts)
    body["tranDate"] = batch.day.isoformat()
    body["line"]["items"] = [{k: (str(v) if isinstance(v, Decimal) else v)
                              for k, v in line.items()} for line in body["line"]["items"]]
    enqueue(session, [
        OutboxItem(TREASURY, "post_remittance", remit_key(batch.batch_id, batch.version),
                   ENTITY, entity, treasury_body(batch)),
        OutboxItem(ERP, "upsert_journal_entry", journal_key(batch.batch_id, batch.version),
                   ENTITY, entity, body),
    ])


def close_batch(session: Session, batch_id: str, *, approval: RemittanceApproval | None = None,
                accounts: JournalAccounts | None = None) -> RemittanceBatch:
    """validated -> closed, and the posting owed (outbox rows in this transaction). Needs
    no blocking discrepancy, or an approval."""
    batch = current(session, batch_id)
    if batch.status != BatchStatus.VALIDATED:
        raise RemittanceError(f"{batch_id} v{batch.version} is {batch.status}; validate it "
                              "before closing")
    if batch.blocking and (approval is None or not approval.approved):
        raise RemittanceError(f"{batch_id} v{batch.version}: {len(batch.blocking)} open "
                              "discrepancy(ies) above the threshold; closing needs an "
                              "operator's approval")
    if approval is not None:
        approval.batch_id, approval.version = batch.batch_id, batch.version
        session.add(approval)
        batch.approved_by = approval.approved_by if approval.approved else None
    batch.status = BatchStatus.CLOSED
    batch.closed_at = now_utc()
    _enqueue_posting(session, batch, accounts or JournalAccounts())
    session.flush()
    announce(session, [remittance_batch_event("remittance_batch.closed", batch_view(batch),
                                              at=batch.closed_at)])
    return batch


def batch_view(batch: RemittanceBatch) -> dict[str, Any]:
    """A batch version's business fields, as subscribers see them (the lines stay out: a
    batch may hold thousands; ``count`` and the totals say what it holds)."""
    return {"batch_id": batch.batch_id, "version": batch.version,
            "business_date": batch.day, "site": batch.site, "payment_method": batch.method,
            "currency": batch.currency, "status": batch.status,
            "gross": exact(batch.gross, batch.currency),
            "fees": exact(batch.fees, batch.currency), "net": exact(batch.net, batch.currency),
            "count": batch.count, "reverses_version": batch.reverses_version,
            "approved_by": batch.approved_by, "closed_at": batch.closed_at,
            "posted_at": batch.posted_at, "treasury_ref": batch.treasury_ref,
            "erp_journal_id": batch.erp_id}


def record_approval(session: Session, batch_id: str, *, approved: bool, approved_by: str,
                    comment: str | None, flow_run_id: str | None) -> RemittanceApproval:
    batch = current(session, batch_id)
    row = RemittanceApproval(batch_id=batch_id, version=batch.version, approved=approved,
                             approved_by=approved_by, comment=comment,
                             flow_run_id=flow_run_id, discrepancies=batch.blocking,
                             at=now_utc())
    if not approved:
        session.add(row)
        session.flush()
    return row


def reopen_batch(session: Session, batch_id: str, *, who: str, why: str,
                 accounts: JournalAccounts | None = None) -> tuple[RemittanceBatch,
                                                                   RemittanceBatch]:
    """A closed or posted version stays as it was: a reversal version (negated, closed, its
    posting owed) and a new open version are added. Returns (reversal, new)."""
    head = latest(session, batch_id)
    if head is None:
        raise RemittanceError(f"no remittance batch {batch_id}")
    if head.status not in {BatchStatus.CLOSED, BatchStatus.POSTED} \
            or head.reverses_version is not None:
        raise RemittanceError(f"{batch_id} v{head.version} is {head.status}; only a closed "
                              "or posted batch is reopened")
    now = now_utc()
    reversal = RemittanceBatch(
        batch_id=batch_id, version=head.version + 1, day=head.day, site=head.site,
        method=head.method, currency=head.currency, status=BatchStatus.CLOSED,
        gross=-head.gross, fees=-head.fees, net=-head.net, count=head.count,
        lines=[{**line, "amount": exact(-Decimal(line["amount"]), head.currency),
                "fee": exact(-Decimal(line["fee"]), head.currency)} for line in head.lines],
        reverses_version=head.version, approved_by=who, note=why[:2000], created_at=now,
        closed_at=now)
    session.add(reversal)
    session.flush()
    _enqueue_posting(session, reversal, accounts or JournalAccounts())
    fresh = RemittanceBatch(
        batch_id=batch_id, version=head.version + 2, day=head.day, site=head.site,
        method=head.method, currency=head.currency, status=BatchStatus.OPEN, gross=head.gross,
        fees=head.fees, net=head.net, count=head.count, lines=list(head.lines),
        note=f"reopened by {who}: {why}"[:2000], created_at=now)
    session.add(fresh)
    session.flush()
    announce(session, [
        remittance_batch_event("remittance_batch.closed", batch_view(reversal), at=now),
        remittance_batch_event("remittance_batch.reopened", batch_view(fresh), at=now,
                               reopened_version=head.version,
                               reversal_version=reversal.version, reopened_by=who,
                               reason=why[:2000])])
    return reversal, fresh


def mark_posted(session: Session, batch_id: str, version: int, *, treasury_ref: str | None,
                erp_id: str | None) -> None:
    for batch in versions(session, batch_id):
        if batch.version == version:
            batch.treasury_ref = treasury_ref or batch.treasury_ref
            batch.erp_id = erp_id or batch.erp_id
            if batch.status == BatchStatus.CLOSED and batch.treasury_ref and batch.erp_id:
                batch.status = BatchStatus.POSTED
                batch.posted_at = now_utc()
                announce(session, [remittance_batch_event(
                    "remittance_batch.posted", batch_view(batch), at=batch.posted_at)])
    session.flush()


def approvals(session: Session, batch_id: str) -> list[RemittanceApproval]:
    return list(session.scalars(select(RemittanceApproval).where(
        RemittanceApproval.batch_id == batch_id).order_by(RemittanceApproval.id)))


def entity_version(entity_key: str) -> tuple[str, int]:
    batch_id, _, version = entity_key.rpartition("-v")
    return batch_id, int(version)


def summarize(items: Iterable[RemittanceBatch]) -> list[dict[str, Any]]:
    return [{"batch_id": b.batch_id, "version": b.version, "day": b.day.isoformat(),
             "site": b.site, "method": b.method, "currency": b.currency, "status": b.status,
             "gross": exact(b.gross, b.currency), "fees": exact(b.fees, b.currency),
             "net": exact(b.net, b.currency), "count": b.count,
             "reverses": b.reverses_version, "approved_by": b.approved_by,
             "blocking": len(b.blocking or []), "treasury_ref": b.treasury_ref,
             "erp_id": b.erp_id} for b in items]
