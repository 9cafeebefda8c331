"""Events for downstream subscribers: what vouchflow learned, announced once.

A flow that changes something a subscriber may want calls ``emit_events`` with the same
session as the change, so the event commits with it or not at all (the subscribers' outbox).
Every event has a stable id derived from what it represents (type, entity, version): emitting
it again is an insert-or-ignore on that id, so a re-run that changes nothing adds nothing and a
re-run that repeats a change repeats the same id.

Events are numbered by ``seq``, which only grows and is visible in the order it was given out:
on SQLite writers take turns anyway; on PostgreSQL every transaction that emits takes one
transaction-scoped advisory lock before numbering its events and keeps it until it commits.
So a reader that has seen ``seq = n`` will never later find a smaller number committing
behind it, and ``seq`` works as a cursor, both for the delivery worker and for a subscriber
pulling what it missed. Call ``emit_events`` last in a transaction: on PostgreSQL concurrent
emitters wait for each other from that point until they commit, so a transaction must not
take row locks after it that another emitter may be holding (that would be a deadlock).

The body a subscriber receives (webhook or pull) is::

    {"id", "type", "occurred_at", "sequence", "entity": {"type", "key"}, "data"}

``data`` never carries bearer value (codes, PINs) or secrets: events leave vouchflow.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    func,
    or_,
    select,
    text,
    type_coerce,
)
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from state.store import canonical_json
from state.types import JSONText, UTCDateTime

if TYPE_CHECKING:
    from canonical import Sku

EVENT_TYPES: dict[str, str] = {
    "sales_order.recorded": "a site's sales order as vouchflow now holds it (new, or a newer "
                            "version from the site); entity sales_order {site}:{order_id}",
    "order_line.allocated": "an order line took its codes (code pool) or units (API batches); "
                            "entity sales_order",
    "order_line.delivered": "a line's codes (from the pool or issued by its API supplier) were "
                            "accepted by the site; entity sales_order",
    "sku.changed": "a voucher SKU as mapped from the ERP changed; entity sku {sku}",
    "purchase_order.created": "a purchase order was made (by an operator, from a request, or "
                              "as a daily API order or its correction); entity purchase_order "
                              "{po_no}",
    "purchase_order.received": "goods were received against a purchase order line (a receipt "
                               "into a batch); entity purchase_order",
    "purchase_order.changed": "a purchase order as it stands after a receipt or a bill changed "
                              "it; entity purchase_order",
    "vendor_bill.created": "a vendor bill was made from a purchase order; entity vendor_bill "
                           "{bill_no}",
    "vendor_bill.approved": "a vendor bill was approved for payment; entity vendor_bill",
    "vendor_bill.paid": "a vendor bill was paid (its payment confirmed by the bank and in the "
                        "ERP); entity vendor_bill",
    "vendor_bill.payment_rejected": "the bank rejected a vendor bill's payment; entity "
                                    "vendor_bill",
    "vendor_bill.credited": "codes paid by a vendor bill were returned to the supplier: a "
                            "vendor credit against the bill; entity vendor_bill",
    "remittance_batch.closed": "a remittance batch version was closed (a reversal is closed "
                               "when made); entity remittance_batch {batch_id}",
    "remittance_batch.posted": "a closed remittance batch version reached treasury and the "
                               "ERP; entity remittance_batch",
    "remittance_batch.reopened": "a closed or posted batch was reopened: a reversal version "
                                 "and a new open version; entity remittance_batch",
    "discrepancy.opened": "a day's matching found an open discrepancy; entity discrepancy "
                          "{day}:{key}",
    "discrepancy.resolved": "an open discrepancy was accepted by a correction or no longer "
                            "found by the day's matching; entity discrepancy",
}
"""Every event type vouchflow emits, with what it means. Subscriptions name these (or
``prefix.*``, or ``*``)."""

ADVISORY_LOCK = 0x7666
"""PostgreSQL advisory lock (with the schema's hash as second key, so several deployments or
test schemas in one database do not wait for each other) taken by every transaction that
emits events (see the module doc)."""
_PG_LOCK = text("SELECT pg_advisory_xact_lock(:k, hashtext(current_schema()))")
_PG_EMIT = """
INSERT INTO outbound_event (event_id, type, entity_type, entity_key, occurred_at, data,
                            recorded_at)
SELECT v.i, v.t, v.et, v.ek, v.o, CAST(v.d AS text), %(now)s
FROM ROWS FROM (json_to_recordset(CAST(%(rows)s AS json))
                AS (i text, t text, et text, ek text, o timestamptz, d json))
  WITH ORDINALITY AS v(i, t, et, ek, o, d, n)
ORDER BY v.n
ON CONFLICT (event_id) DO NOTHING
RETURNING seq
"""
_PG_PART = 5000

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_SAFE = re.compile(r"[A-Za-z0-9_-]*")
_PATTERN = re.compile(r"^(\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?)$")


class OutboundEvent(SQLModel, table=True):
    """One event for subscribers, numbered in commit order (``seq``)."""

    __tablename__ = "outbound_event"
    __table_args__ = (
        UniqueConstraint("event_id", name="uq_outbound_event_id"),
        Index("ix_outbound_event_type", "type", "seq"),
        {"sqlite_autoincrement": True},
    )

    seq: int | None = Field(default=None, sa_column=Column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True))
    event_id: str = Field(max_length=255)
    type: str = Field(max_length=64)
    entity_type: str = Field(max_length=64)
    entity_key: str = Field(max_length=255)
    occurred_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    data: Any = Field(sa_column=Column(JSONText(), nullable=False))
    recorded_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


# ids ----------------------------------------------------------------------------------------
def safe_key(*parts: str) -> str:
    """``part-part-...`` in ``[A-Za-z0-9_-]`` (an external id anywhere), at most 200 characters.

    Unsafe characters become ``_`` and a short hash of the exact parts is appended, so two
    different inputs never share a key (``a-b``/``c`` against ``a``/``b-c``)."""
    plain = "-".join(parts)
    # no part holds a "-" (the joins are the only ones) and every character is safe
    if (len(plain) <= 200 and plain.count("-") == max(len(parts) - 1, 0)
            and _SAFE.fullmatch(plain) is not None):
        return plain
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]
    return f"{_UNSAFE.sub('_', plain)[:180]}-h{digest}"


def event_id(type_: str, entity_key: str, version: str = "") -> str:
    """The stable id of an event: what it announces about which entity, in which version."""
    parts = [type_.replace(".", "_"), entity_key] + ([version] if version else [])
    return safe_key(*parts)


def version_of(moment: datetime) -> str:
    """A timestamp as a compact version string: ``20261122T100000123456Z``."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")


@lru_cache(maxsize=1024)
def _version(moment: datetime) -> str:
    """``version_of``, remembered: the SKUs of a read share few modification times."""
    return version_of(moment)


def ref(*parts: str) -> str:
    """An entity key from parts joined with ``:`` (a ``:`` or ``%`` inside a part is escaped,
    so ``a:b``/``c`` and ``a``/``b:c`` stay apart)."""
    return ":".join(p.replace("%", "%25").replace(":", "%3A") for p in parts)


@lru_cache(maxsize=1024)
def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with ``Z`` (remembered: a chunk's events share their time)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    """An event to emit. ``version`` tells occurrences of the same type for the same entity
    apart (a timestamp or content hash); leave it empty for what happens once per entity."""

    type: str
    entity_type: str
    entity_key: str
    occurred_at: datetime
    data: Mapping[str, Any]
    version: str = ""
    data_json: str | None = field(default=None, compare=False, repr=False)
    """``data`` already rendered as it is stored (``canonical_json``), when the builder made
    that text anyway (``sku_changed`` hashes it): written as it is instead of dumped again."""

    @property
    def id(self) -> str:
        return event_id(self.type, self.entity_key, self.version)

    def stored_data(self) -> str:
        """``data`` as the ``data`` column keeps it (canonical JSON)."""
        return self.data_json if self.data_json is not None else _json(self.data)


# writing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreparedEvents:
    """Events made ready to write (ids checked, duplicates dropped, PostgreSQL's rows rendered
    as JSON), so a transaction can do that work before it takes locks others wait for."""

    events: list[tuple[str, Event]]
    """(id, event), the first of each id, in input order."""
    pg_parts: list[str]
    """PostgreSQL: the same events as JSON arrays of objects (id ``i``, type ``t``, entity
    type ``et`` and key ``ek``, occurred_at ``o``, data ``d``), ``_PG_PART`` a piece."""

    def __len__(self) -> int:
        return len(self.events)


def prepare_events(session: Session, events: Iterable[Event]) -> PreparedEvents:
    """Check events and render them for writing to the session's database; ``emit_events``
    takes the result."""
    from state.store import _chunks

    unique: dict[str, Event] = {}
    for event in events:
        if event.occurred_at.tzinfo is None:
            raise ValueError(f"event {event.id}: occurred_at must be aware")
        unique.setdefault(event.id, event)
    items = list(unique.items())
    if session.get_bind().dialect.name != "postgresql":
        return PreparedEvents(items, [])
    # each element written out here, its data as the text the column keeps (PostgreSQL's json
    # keeps an element's text as it was sent), so nothing is dumped twice
    dumps = json.dumps
    times: dict[datetime, str] = {}

    def at(moment: datetime) -> str:
        if moment not in times:
            times[moment] = dumps(moment.isoformat())
        return times[moment]

    parts = ["[" + ",".join(
        f'{{"d":{e.stored_data()},"ek":{dumps(e.entity_key)},"et":{dumps(e.entity_type)},'
        f'"i":{dumps(key)},"o":{at(e.occurred_at)},"t":{dumps(e.type)}}}'
        for key, e in part) + "]"
        for part in _chunks(items, _PG_PART)]
    return PreparedEvents(items, parts)


def emit_events(session: Session, events: Iterable[Event] | PreparedEvents) -> int:
    """Write events in the caller's transaction; an id already there is left as it is.
    Returns how many were new. ``events`` may come from ``prepare_events`` (made earlier in
    the transaction, outside its locks)."""
    from canonical import now_utc

    ready = events if isinstance(events, PreparedEvents) else prepare_events(session, events)
    if not ready:
        return 0
    now = now_utc()
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_PG_LOCK, {"k": ADVISORY_LOCK})
        return _emit_pg(session, ready, now)
    return _emit_sqlite(session, ready, now)


_SQLITE_EMIT = (
    "INSERT INTO outbound_event (event_id, type, entity_type, entity_key, occurred_at, data, "
    "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING")


def _emit_sqlite(session: Session, ready: PreparedEvents, now: datetime) -> int:
    """One ``executemany`` of plain tuples: the data as the text the column keeps, each
    distinct time converted once by the column's own type (the rows of a chunk share theirs).
    The driver sums the rows each insert added: an id already there adds none."""
    from state.store import _chunks

    conn = session.connection()
    stamp = OutboundEvent.__table__.c.occurred_at.type.bind_processor(conn.dialect)
    times: dict[datetime, Any] = {}

    def at(moment: datetime) -> Any:
        if moment not in times:
            times[moment] = stamp(moment) if stamp is not None else moment
        return times[moment]

    recorded = at(now)
    added = 0
    for part in _chunks(ready.events, 5000):
        result = conn.exec_driver_sql(_SQLITE_EMIT, [
            (key, e.type, e.entity_type, e.entity_key, at(e.occurred_at), e.stored_data(),
             recorded)
            for key, e in part])
        added += max(result.rowcount, 0)
    return added


def _emit_pg(session: Session, ready: PreparedEvents, now: datetime) -> int:
    """One statement a part, on the session's own connection (same transaction), with the
    rows as one JSON text that the database takes apart: under the event lock the driver has
    nothing left to convert (arrays of thousands of values cost it more than the insert)."""
    conn = session.connection().connection.driver_connection
    added = 0
    with conn.cursor() as cursor:
        for part in ready.pg_parts:
            cursor.execute(_PG_EMIT, {"rows": part, "now": now})
            added += len(cursor.fetchall())
    return added


def _json(data: Mapping[str, Any]) -> str:
    """As ``state.types.JSONText`` stores it."""
    return json.dumps(dict(data), sort_keys=True, default=str, separators=(",", ":"))


# builders: the events of the flows we have --------------------------------------------------
def sales_order_ref(site: str, order_id: str) -> str:
    return ref(site, order_id)


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def sales_order_recorded(
    *, site: str, order_id: str, status: str, currency: str, total: Decimal | None,
    created_at: datetime, updated_at: datetime,
    lines: Sequence[tuple[str, str, int, Decimal]],
) -> Event:
    """A version of a site order, kept because it was new or newer (the site's updated_at is
    the version). ``lines`` are ``(line_id, sku, quantity, unit_price)``."""
    return Event(
        type="sales_order.recorded", entity_type="sales_order",
        entity_key=sales_order_ref(site, order_id), occurred_at=updated_at,
        version=version_of(updated_at),
        data={"site": site, "order_id": order_id, "status": status, "currency": currency,
              "total": _money(total), "created_at": format_time(created_at),
              "updated_at": format_time(updated_at),
              "lines": [{"line_id": lid, "sku": sku, "quantity": qty,
                         "unit_price": _money(price)} for lid, sku, qty, price in lines]})


def _line_event(type_: str, *, site: str, order_id: str, line_id: str, at: datetime,
                data: Mapping[str, Any]) -> Event:
    """An event about one line of a sales order, once per line (the line id is the version)."""
    return Event(
        type=type_, entity_type="sales_order", entity_key=sales_order_ref(site, order_id),
        occurred_at=at, version=line_id,
        data={"site": site, "order_id": order_id, "line_id": line_id, **data})


def order_line_allocated(
    *, site: str, order_id: str, line_id: str, sku: str, quantity: int, issuance_mode: str,
    at: datetime,
) -> Event:
    """A line took what it sells (once per line): never the codes themselves."""
    return _line_event("order_line.allocated", site=site, order_id=order_id, line_id=line_id,
                       at=at, data={"sku": sku, "quantity": quantity,
                                    "issuance_mode": issuance_mode,
                                    "allocated_at": format_time(at)})


def order_line_delivered(
    *, site: str, order_id: str, line_id: str, codes: int, at: datetime,
) -> Event:
    """A line's codes were accepted by the site (once per line): how many, never which."""
    return _line_event("order_line.delivered", site=site, order_id=order_id, line_id=line_id,
                       at=at, data={"codes": codes, "delivered_at": format_time(at)})


def sku_changed(sku: Sku) -> Event:
    """A SKU as mapped from the ERP. The version is the ERP's modification time and a hash of
    the content, so the same version seen again (a re-run, a forced re-read) has the same id,
    and a change back to an earlier content is still a new event."""
    data = sku.model_dump(mode="json")
    text = canonical_json(data)  # what state.store.fingerprint hashes, and what is stored
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Event(type="sku.changed", entity_type="sku", entity_key=sku.sku,
                 occurred_at=sku.updated_at,
                 version=f"{_version(sku.updated_at)}_{digest[:12]}", data=data, data_json=text)


def sku_events(skus: Iterable[Sku]) -> list[Event]:
    """``sku.changed`` for SKUs just mapped: ``emit_events(session, sku_events(skus))`` in the
    transaction that remembers them (``state.catalog.remember_skus``)."""
    return [sku_changed(s) for s in skus]


# announcing with the change: events emitted when the transaction commits ---------------------
_ANNOUNCED = "vf_announced_events"


def announce(session: Session, events: Iterable[Event]) -> None:
    """Emit ``events`` with ``emit_events`` when this session's transaction commits, after its
    last flush: in the same transaction as the change and last in it, as ``emit_events`` asks,
    even when the caller writes more after the state function that made the change. Events
    announced inside a savepoint that rolls back (or a transaction that does) are dropped."""
    found = list(events)
    if found:
        tx = session.get_nested_transaction() or session.get_transaction()
        session.info.setdefault(_ANNOUNCED, []).append((tx, found))


@sa_event.listens_for(Session, "before_commit")
def _emit_announced(session: Session) -> None:
    if not session.info.get(_ANNOUNCED) or session.in_nested_transaction():
        return  # nothing announced, or a savepoint: its events wait for the transaction
    pending = session.info.pop(_ANNOUNCED)
    session.flush()  # every row lock before the event lock (PostgreSQL)
    emit_events(session, [e for _, events in pending for e in events])


@sa_event.listens_for(Session, "after_soft_rollback")
def _drop_announced(session: Session, previous: Any) -> None:
    pending = session.info.get(_ANNOUNCED)
    if not pending:
        return

    def inside(tx: Any) -> bool:
        while tx is not None:
            if tx is previous:
                return True
            tx = tx.parent
        return False

    kept = [(tx, events) for tx, events in pending if not inside(tx)]
    if kept:
        session.info[_ANNOUNCED] = kept
    else:
        session.info.pop(_ANNOUNCED, None)


# builders: procurement, settlement, remittance ------------------------------------------------


def plain(value: Any) -> Any:
    """Event data as JSON: money (Decimal) as a string with every digit kept, days as ISO
    dates, instants as RFC 3339 in UTC; containers converted throughout."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def purchase_order_created(order: Mapping[str, Any], *, at: datetime) -> Event:
    """Once per order: ``order`` is its business fields and lines
    (``state.procurement.order_view``)."""
    return Event(type="purchase_order.created", entity_type="purchase_order",
                 entity_key=order["po_no"], occurred_at=at, data=plain(order))


def purchase_order_received(receipt: Mapping[str, Any], *, order_status: str,
                            line_received: int, at: datetime) -> Event:
    """Once per receipt (its number is the version): what came in, into which batch."""
    return Event(type="purchase_order.received", entity_type="purchase_order",
                 entity_key=receipt["po_no"], occurred_at=at, version=receipt["receipt_no"],
                 data=plain({**receipt, "order_status": order_status,
                             "line_received_quantity": line_received}))


def purchase_order_changed(order: Mapping[str, Any], *, cause: str, ref: str,
                           at: datetime) -> Event:
    """The order after a change, once per change: ``cause`` (``receipt``, ``bill``) and the
    number of the receipt or bill that made it are the version."""
    return Event(type="purchase_order.changed", entity_type="purchase_order",
                 entity_key=order["po_no"], occurred_at=at, version=f"{cause}-{ref}",
                 data=plain({**order, "change": {"cause": cause, "ref": ref}}))


def _bill_event(type_: str, bill_no: str, at: datetime, data: Mapping[str, Any],
                version: str = "") -> Event:
    return Event(type=type_, entity_type="vendor_bill", entity_key=bill_no, occurred_at=at,
                 version=version, data=plain({"bill_no": bill_no, **data}))


def vendor_bill_created(bill: Mapping[str, Any], *, at: datetime) -> Event:
    """Once per bill: ``bill`` is its business fields and lines (``state.procurement``)."""
    return _bill_event("vendor_bill.created", bill["bill_no"], at, bill)


def vendor_bill_approved(*, bill_no: str, total: Decimal, currency: str, approved_by: str,
                         at: datetime) -> Event:
    return _bill_event("vendor_bill.approved", bill_no, at, {
        "total": total, "currency": currency, "approved_by": approved_by, "approved_at": at})


def vendor_bill_payment(type_: str, *, bill_no: str, payment_no: str, run_no: str | None,
                        amount: Decimal, currency: str, at: datetime) -> Event:
    """``vendor_bill.paid`` or ``vendor_bill.payment_rejected``, once per payment."""
    return _bill_event(type_, bill_no, at, {
        "payment_no": payment_no, "run_no": run_no, "amount": amount, "currency": currency,
        "at": at}, version=payment_no)


def vendor_bill_credited(*, bill_no: str, credit_no: str, vendor: str, batch_no: str,
                         sku: str, quantity: int, unit_cost: Decimal, amount: Decimal,
                         currency: str, reason: str | None, at: datetime) -> Event:
    """Once per vendor credit (its number is the version): how many codes went back, never
    which."""
    return _bill_event("vendor_bill.credited", bill_no, at, {
        "credit_no": credit_no, "vendor": vendor, "batch_no": batch_no, "sku": sku,
        "quantity": quantity, "unit_cost": unit_cost, "amount": amount, "currency": currency,
        "reason": reason, "at": at}, version=credit_no)


def remittance_batch_event(type_: str, batch: Mapping[str, Any], *, at: datetime,
                           version: int | None = None, **extra: Any) -> Event:
    """An event about one batch version (``closed``, ``posted``) or a reopen (the new
    version's number): ``batch`` is the version's business fields
    (``state.remittance.batch_view``)."""
    return Event(type=type_, entity_type="remittance_batch", entity_key=batch["batch_id"],
                 occurred_at=at, version=f"v{version or batch['version']}",
                 data=plain({**batch, **extra}))


def discrepancy_event(type_: str, found: Mapping[str, Any], *, at: datetime,
                      **extra: Any) -> Event:
    """``discrepancy.opened`` or ``.resolved``: the matching of the day that saw the change
    (its time) is the version, so a re-run that finds the same discrepancies emits nothing
    (only changes are announced) and a discrepancy that opens again later is a new event."""
    return Event(type=type_, entity_type="discrepancy",
                 entity_key=ref(str(found["day"]), found["key"]), occurred_at=at,
                 version=version_of(at), data=plain({**found, **extra}))


# reading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredEvent:
    seq: int
    event_id: str
    type: str
    entity_type: str
    entity_key: str
    occurred_at: datetime
    data_json: str
    """``data`` exactly as stored (canonical JSON), so every delivery of an event is the same
    bytes."""
    recorded_at: datetime

    @property
    def entity(self) -> str:
        return f"{self.entity_type}:{self.entity_key}"

    def body(self) -> bytes:
        dumps = json.dumps
        return (
            f'{{"id":{dumps(self.event_id)},"type":{dumps(self.type)},'
            f'"occurred_at":{dumps(format_time(self.occurred_at))},"sequence":{self.seq},'
            f'"entity":{{"type":{dumps(self.entity_type)},"key":{dumps(self.entity_key)}}},'
            f'"data":{self.data_json}}}'
        ).encode()

    def as_dict(self) -> dict[str, Any]:
        return json.loads(self.body())


def _columns() -> list[Any]:
    t = OutboundEvent.__table__
    return [t.c.seq, t.c.event_id, t.c.type, t.c.entity_type, t.c.entity_key, t.c.occurred_at,
            type_coerce(t.c.data, Text).label("data_json"), t.c.recorded_at]


def latest_seq(session: Session) -> int:
    return int(session.scalar(select(func.max(OutboundEvent.__table__.c.seq))) or 0)


def validate_patterns(patterns: Iterable[str]) -> list[str]:
    """Subscription event types: known types, ``prefix.*`` or ``*``; each must cover at least
    one known type (a typo would otherwise subscribe to nothing, silently)."""
    cleaned = sorted({p.strip() for p in patterns if p and p.strip()})
    if not cleaned:
        raise ValueError("name at least one event type (or '*'); known types: "
                         + ", ".join(sorted(EVENT_TYPES)))
    for pattern in cleaned:
        if not _PATTERN.match(pattern):
            raise ValueError(f"event type {pattern!r} is not a type, 'prefix.*' or '*'")
        if not any(covers([pattern], known) for known in EVENT_TYPES):
            raise ValueError(f"event type {pattern!r} matches no known type; known types: "
                             + ", ".join(sorted(EVENT_TYPES)))
    return cleaned


def covers(patterns: Iterable[str], type_: str) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == type_:
            return True
        if pattern.endswith(".*") and type_.startswith(pattern[:-1]):
            return True
    return False


def type_filter(patterns: Sequence[str]) -> Any:
    """A WHERE clause for the event types ``patterns`` cover (None: every type)."""
    if not patterns or "*" in patterns:
        return None
    column = OutboundEvent.__table__.c.type
    exact = [p for p in patterns if not p.endswith(".*")]
    clauses = [column.like(p[:-1].replace("_", r"\_") + "%", escape="\\")
               for p in patterns if p.endswith(".*")]
    if exact:
        clauses.append(column.in_(exact))
    return or_(*clauses)


def read_events(
    session: Session, *, after: int, patterns: Sequence[str] | None = None,
    upto: int | None = None, limit: int = 1000,
) -> list[StoredEvent]:
    """Events with ``after < seq <= upto`` of the covered types, in ``seq`` order."""
    t = OutboundEvent.__table__
    query = select(*_columns()).where(t.c.seq > after)
    if upto is not None:
        query = query.where(t.c.seq <= upto)
    clause = type_filter(patterns or ())
    if clause is not None:
        query = query.where(clause)
    query = query.order_by(t.c.seq).limit(limit)
    return [StoredEvent(*row) for row in session.execute(query)]


def events_by_seq(session: Session, seqs: Iterable[int]) -> dict[int, StoredEvent]:
    from state.store import _chunks

    t = OutboundEvent.__table__
    found: dict[int, StoredEvent] = {}
    for part in _chunks(sorted(set(seqs))):
        for row in session.execute(select(*_columns()).where(t.c.seq.in_(part))):
            found[row.seq] = StoredEvent(*row)
    return found


def seqs_of(session: Session, event_ids: Iterable[str]) -> dict[str, int]:
    from state.store import _chunks

    t = OutboundEvent.__table__
    found: dict[str, int] = {}
    for part in _chunks(sorted(set(event_ids))):
        found.update({r.event_id: r.seq for r in session.execute(
            select(t.c.event_id, t.c.seq).where(t.c.event_id.in_(part)))})
    return found


def pending_summary(
    session: Session, *, after: int, patterns: Sequence[str] | None = None,
) -> tuple[int, datetime | None]:
    """How many covered events come after ``after``, and when the oldest was recorded."""
    t = OutboundEvent.__table__
    query = select(func.count(), func.min(t.c.recorded_at)).where(t.c.seq > after)
    clause = type_filter(patterns or ())
    if clause is not None:
        query = query.where(clause)
    count, oldest = session.execute(query).one()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return int(count or 0), oldest
