"""The code pool: vouchflow's operational truth for what may be sold and which code went where.

Batches
    ``pool_batch`` carries three quantities:

    - ``available`` (what may still be sold) drops when a sale takes a unit (a code allocated,
      an API unit reserved) and rises when a unit comes back to stock (an undelivered refund),
      when codes are received, or when the ERP's book is re-read (``upsert_batch``);
    - ``remaining`` (the ERP's book quantity) is the ERP's word: it is set from the ERP
      (``upsert_batch(remaining=...)``) and moves when a posting is recorded (``mark_posted``);
    - ``unposted`` is the signed number of units vouchflow moved that the ERP has not booked
      yet: +n at a sale, -n at a refund to stock, back towards 0 at ``mark_posted``.

    Hence ``available <= remaining - unposted`` (nothing is offered that the book does not
    hold), ``available >= 0`` (a CHECK constraint, and every decrement is conditional), and for
    a code-pool batch ``available <= its codes in stock`` (nothing is offered that cannot be
    delivered). Re-reading the book recomputes ``available = clamp(remaining - unposted, 0,
    codes in stock)``; a batch whose ``available`` reaches 0 becomes ``sold_out`` and comes back
    to ``active`` when units return. ``frozen``, ``closed`` and ``expired`` are set from outside
    and stop sales without changing the quantities.

Allocation (``allocate``)
    Pending order lines are claimed in ``order_created_at`` order, one chunk per transaction,
    and each order is filled all or nothing: every code-pool line gets exactly ``quantity``
    codes in allocation order (earliest expiry, then oldest batch, then id), every API line
    its quantity from the SKU's batches first in, first out. What a chunk takes is written in
    the same transaction as its code events, batch quantities and outbox rows (one
    ``order.delivery`` per code-pool line, carrying code ids, never codes). An order that
    cannot be filled takes nothing and is held with the reason; ``allocate(retry_held=True)``
    tries held orders again.

    Two allocators never take the same order line or code: on PostgreSQL lines and codes are
    claimed with ``FOR UPDATE SKIP LOCKED`` (each worker takes rows no one else holds, without
    waiting), batch rows are locked in one order (by batch number) just before commit and
    decremented only where enough is available; on SQLite each chunk is one ``BEGIN
    IMMEDIATE`` transaction, so allocators take turns. The unique ``(line_ref, unit)`` on codes
    and the conditional status changes are the backstop.

Bearer value
    Codes and PINs are stored encrypted (``state.crypto``) with a keyed hash for uniqueness;
    everything this module reports names codes by id or masked (last 4 characters).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from array import array
from bisect import bisect_left
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from itertools import pairwise
from typing import Any

from psycopg.errors import UniqueViolation
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, Engine, bindparam, func, insert, select, text, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause

from canonical import CodeEvent, CodeStatus, mask, now_utc
from canonical.batch import BatchStatus, ExpiryType
from canonical.sku import IssuanceMode
from state.crypto import Keyring, last4, normalize_code
from state.db import session_scope
from state.events import (
    Event,
    emit_events,
    order_line_allocated,
    order_line_delivered,
    prepare_events,
    sales_order_recorded,
)
from state.models import (
    NO_EXPIRY_RANK,
    ApiAllocation,
    InboundEvent,
    LineRefund,
    OrderLine,
    OutboxMessage,
    OutboxStatus,
    PoolBatch,
    PoolCode,
    PoolCodeEvent,
    PoolCodeReceipt,
    SalesOrder,
)
from state.store import OutboxItem, _insert, enqueue, of_keys
from state.types import UTCDateTime

CODE_CHUNK = 5000
"""Codes per transaction when adding codes."""
PIPELINE_DEPTH = 2
"""Chunks of codes prepared (hashed, encrypted) and waiting for the thread that writes them,
at most: enough that it goes from one to the next without waiting, few enough to keep
memory flat."""
ALLOCATION_CHUNK = 2000
"""Order lines claimed per allocation transaction."""
IN_CHUNK = 500

EPOCH = date(1970, 1, 1)
CANCELLED_ORDER_STATUSES = frozenset({"cancelled", "canceled", "refunded", "voided"})
"""Site order statuses that stop lines not yet allocated (allocated lines need a refund)."""

CODE_POOL = IssuanceMode.CODE_POOL.value
API = IssuanceMode.API.value
DELIVERY_OPERATION = "order.delivery"
LINE_ENTITY = "order_line"
OrderKey = tuple[str, str]
_KEY_PART = re.compile(r"^[A-Za-z0-9_]+$")
_KEY_VALUE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SITE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class LineStatus(StrEnum):
    PENDING = "pending"
    ALLOCATED = "allocated"
    HELD = "held"
    CANCELLED = "cancelled"


class PoolError(ValueError):
    """A request the pool refuses; the message names what and why (codes masked)."""


class CodeNotDeliverable(PoolError):
    pass


# small helpers ------------------------------------------------------------------------------
def expiry_rank(expires_on: date | None) -> int:
    """Days since 1970-01-01 of an expiry date; codes that never expire sort last."""
    return NO_EXPIRY_RANK if expires_on is None else (expires_on - EPOCH).days


def rank_to_date(rank: int) -> date | None:
    return None if rank >= NO_EXPIRY_RANK else EPOCH + timedelta(days=rank)


def _ref_part(part: str) -> str:
    return part.replace("%", "%25").replace(":", "%3A") if ":" in part or "%" in part else part


def line_ref(site: str, order_id: str, line_id: str) -> str:
    """How a code names the order line it went to: ``{site}:{order_id}:{line_id}``.

    A ``:`` (or ``%``) inside an id is written ``%3A`` (``%25``), so two lines never share a
    reference (``a:b``/``c`` against ``a``/``b:c``)."""
    return f"{_ref_part(site)}:{_ref_part(order_id)}:{_ref_part(line_id)}"


def delivery_key(site: str, order_id: str, line_id: str) -> str:
    """The idempotency key of a line's code delivery, ``[A-Za-z0-9_-]`` only.

    ``delivery-{site}-{order_id}-{line_id}`` when the ids are plain (letters, digits, ``_``);
    otherwise the unsafe characters become ``_`` and a short hash of the exact ids is appended,
    so two different lines can never share a key (``a-b``/``c`` against ``a``/``b-c``).
    """
    plain = f"delivery-{site}-{order_id}-{line_id}"
    if _KEY_PART.match(order_id) and _KEY_PART.match(line_id) and not _KEY_UNSAFE.search(site):
        return plain[:255]
    digest = hashlib.sha256(f"{site}\x00{order_id}\x00{line_id}".encode()).hexdigest()[:16]
    return f"{_KEY_UNSAFE.sub('_', plain)[:230]}-h{digest}"


def _amount(value: Any, what: str) -> Decimal:
    """A money amount as stored (NUMERIC(18,4)): more decimals are refused, never rounded."""
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    if not amount.is_finite() or amount.quantize(_SCALE) != amount or abs(amount) >= _LIMIT:
        raise PoolError(f"{what}: {value} is not an amount with at most 4 decimals")
    return amount


_SCALE = Decimal("0.0001")
_LIMIT = Decimal("1e14")


def _today() -> date:
    return datetime.now(UTC).date()


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


_TIME_PARAMS = ("now", "at")
_texts: dict[str, TextClause] = {}


def _sql(statement: str) -> TextClause:
    """A cached ``text()`` whose time parameters go through ``UTCDateTime`` (so SQLite gets the
    same naive-UTC form the models write)."""
    clause = _texts.get(statement)
    if clause is None:
        names = set(re.findall(r"(?<![:\w]):(\w+)", statement))
        clause = text(statement).bindparams(
            *(bindparam(n, type_=UTCDateTime()) for n in _TIME_PARAMS if n in names))
        _texts[statement] = clause
    return clause


_pg_texts: dict[tuple[str, tuple[bool, ...]], str] = {}


def _pg(session: Session, statement: str, params: Mapping[str, Any]) -> Any:
    """Run a statement on the session's PostgreSQL connection (same transaction) with lists
    sent as binary arrays: psycopg escapes every element of a text-format array with a regex,
    which costs more than the database work for a 2,000-line chunk. Returns the cursor (rows
    as named tuples)."""
    return _pg_cursor(session.connection().connection.driver_connection, statement, params)


def _pg_cursor(conn: Any, statement: str, params: Mapping[str, Any]) -> Any:
    """``_pg`` on a driver connection."""
    names = tuple(sorted(params))
    shape = tuple(isinstance(params[n], list) for n in names)
    key = (statement, shape)
    query = _pg_texts.get(key)
    if query is None:
        binary = {n for n, is_list in zip(names, shape, strict=True) if is_list}
        query = re.sub(r"(?<![:\w]):(\w+)",
                       lambda m: f"%({m.group(1)})" + ("b" if m.group(1) in binary else "s"),
                       statement.replace("%", "%%"))
        _pg_texts[key] = query
    cursor = conn.cursor(row_factory=namedtuple_row)
    cursor.execute(query, params)
    return cursor


def _custom_plans(session: Session, *, keyed: bool = False) -> None:
    """PostgreSQL: plan this transaction's statements for their actual parameters.

    The driver prepares statements it sees repeatedly, and PostgreSQL may then keep one
    generic plan: made while a table was small (a pool being filled), it can stay a sequential
    scan long after the table has grown. The pool's statements are few and large, so planning
    each costs nothing in comparison.

    ``keyed``: every statement of the transaction looks up a few thousand keys (ids, order
    lines, the allocation order) in large tables, each through an index; sequential and
    bitmap scans are ruled out. Left to itself the planner (whose statistics lag behind
    tables that change this fast) walks or hashes a whole table to join 2,000 keys against
    it, which costs more the bigger the pool. For the same reason joins are nested loops:
    given 2,000 claimed codes (with where their locked rows are), a merge join on the id
    walks the primary key of the whole pool to meet them."""
    if _is_pg(session):
        session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
        if keyed:
            session.execute(text("SET LOCAL enable_seqscan = off; "
                                 "SET LOCAL enable_bitmapscan = off; "
                                 "SET LOCAL enable_mergejoin = off; "
                                 "SET LOCAL enable_hashjoin = off"))


def _events(
    session: Session, rows: Sequence[tuple[int, str | None, str | None, str | None]], *,
    at: datetime, actor: str, system: str, action: str,
) -> None:
    """Append code events: (code_id, from_status, to_status, detail) each."""
    if not rows:
        return
    session.execute(
        _insert(session, PoolCodeEvent.__table__),
        [{"code_id": cid, "at": at, "actor": actor, "system": system, "action": action,
          "from_status": fs, "to_status": ts, "detail": detail}
         for cid, fs, ts, detail in rows])


# batches ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchStock:
    batch_no: str
    sku: str
    issuance_mode: str
    status: str
    quantity: int
    available: int
    remaining: int
    unposted: int
    expires_on: date | None
    sites: tuple[str, ...]
    seq: int
    unit_cost: Decimal
    currency: str

    def sellable(self, on: date, site: str | None = None) -> int:
        if self.status != BatchStatus.ACTIVE:
            return 0
        if self.expires_on is not None and self.expires_on < on:
            return 0
        if site is not None and self.sites and site not in self.sites:
            return 0
        return self.available


@dataclass(frozen=True)
class SkuStock:
    """What a SKU can sell: ``available`` counts active, unexpired batches only."""

    sku: str
    available: int
    remaining: int
    unposted: int
    batches: tuple[BatchStock, ...]

    def available_for(self, site: str, on: date | None = None) -> int:
        """What the SKU can sell on one site (batches restricted to other sites excluded)."""
        on = on or _today()
        return sum(b.sellable(on, site) for b in self.batches)


def _sites(text: str | None) -> tuple[str, ...]:
    """A batch's ``sites`` column (comma-separated, empty for every site) as a tuple."""
    return tuple(s for s in text.split(",") if s) if text else ()


def _batch_stock(row: Any) -> BatchStock:
    return BatchStock(
        batch_no=row.batch_no, sku=row.sku, issuance_mode=row.issuance_mode, status=row.status,
        quantity=row.quantity, available=row.available, remaining=row.remaining,
        unposted=row.unposted, expires_on=row.expires_on,
        sites=_sites(row.sites), seq=row.seq,
        unit_cost=row.unit_cost, currency=row.currency)


_IN_STOCK = text("status = 'in_stock'")
"""The predicate of ``ix_pool_code_in_stock`` spelled as in the index (not a bound parameter),
so that SQLite and PostgreSQL's generic plans can use that partial index."""


def _codes_in_stock(session: Session, sku: str, batch_no: str) -> int:
    return int(session.scalar(
        select(func.count()).select_from(PoolCode).where(
            PoolCode.sku == sku, _IN_STOCK, PoolCode.batch_no == batch_no)) or 0)


def _lock_batch(session: Session, batch_no: str) -> Any:
    query = select(*PoolBatch.__table__.c).where(PoolBatch.batch_no == batch_no)
    if _is_pg(session):
        query = query.with_for_update()
    return session.execute(query).first()


def _settle_status(status: str, available: int) -> str:
    if status in (BatchStatus.ACTIVE, BatchStatus.SOLD_OUT):
        return BatchStatus.SOLD_OUT if available <= 0 else BatchStatus.ACTIVE
    return status


def upsert_batch(
    session: Session,
    *,
    batch_no: str,
    sku: str,
    issuance_mode: str,
    unit_cost: Decimal,
    currency: str,
    status: str | None = None,
    expiry_type: str = ExpiryType.NONE,
    expires_on: date | None = None,
    expiry_days: int | None = None,
    purchase_order: str | None = None,
    sites: Sequence[str] | None = None,
    quantity: int | None = None,
    remaining: int | None = None,
    received_at: datetime | None = None,
    create_only: bool = False,
) -> BatchStock:
    """Create a batch or update it from the ERP's book.

    A new batch gets the next ``seq`` (FIFO order). A code-pool batch's ``quantity`` counts
    the codes received (``add_codes`` raises it), so it is not given here. For an API batch,
    ``quantity`` is the purchased quantity; a change of it moves ``remaining`` by the same
    amount unless ``remaining`` is given. Giving ``remaining`` (the ERP's book) recomputes
    ``available = clamp(remaining - unposted, 0, codes in stock)`` (no cap for API batches).
    """
    mode = IssuanceMode(issuance_mode)
    for name, value in (("batch number", batch_no), ("SKU", sku)):
        if not _KEY_VALUE.match(value or ""):
            raise PoolError(f"{name} {value!r} is not 1-64 of [A-Za-z0-9_-]")
    for site in sites or ():
        if not _SITE.match(site):
            raise PoolError(f"batch {batch_no}: site {site!r} is not a site code")
    if mode is IssuanceMode.CODE_POOL and quantity is not None:
        raise PoolError(f"batch {batch_no}: a code-pool batch's quantity is the number of codes "
                        "added with add_codes, not a value to set")
    if expiry_type == ExpiryType.FIXED_DATE and expires_on is None:
        raise PoolError(f"batch {batch_no}: expires_on is required for a fixed-date expiry")
    if expiry_type == ExpiryType.DAYS_AFTER_SALE and not expiry_days:
        raise PoolError(f"batch {batch_no}: expiry_days is required for days-after-sale expiry")
    unit_cost = _amount(unit_cost, f"batch {batch_no} unit cost")
    for name, value in (("quantity", quantity), ("remaining", remaining)):
        if value is not None and value < 0:
            raise PoolError(f"batch {batch_no}: {name} must not be negative, got {value}")
    now = now_utc()
    table = PoolBatch.__table__
    current = _lock_batch(session, batch_no)
    if current is not None and create_only:
        raise PoolError(f"batch {batch_no} already exists")
    if current is None:
        qty = quantity or 0
        book = qty if remaining is None else remaining
        available = book if mode is IssuanceMode.API else 0
        wanted_status = status or BatchStatus.ACTIVE
        values = {
            "batch_no": batch_no, "sku": sku, "issuance_mode": mode.value, "quantity": qty,
            "available": available, "remaining": book, "unposted": 0,
            "status": _settle_status(wanted_status, available), "unit_cost": unit_cost,
            "currency": currency, "expiry_type": str(expiry_type), "expires_on": expires_on,
            "expiry_days": expiry_days, "purchase_order": purchase_order,
            "sites": ",".join(sites or ()), "received_at": received_at or now,
            "updated_at": now,
        }
        for attempt in range(5):
            nested = session.begin_nested()
            try:
                seq = (session.scalar(select(func.max(table.c.seq))) or 0) + 1
                session.execute(table.insert().values(seq=seq, **values))
                nested.commit()
                break
            except IntegrityError:
                # another writer took the same seq (or created the batch): try again
                nested.rollback()
                if attempt == 4 or _lock_batch(session, batch_no) is not None:
                    raise
        return _batch_stock(_lock_batch(session, batch_no))

    if current.sku != sku or current.issuance_mode != mode.value:
        raise PoolError(f"batch {batch_no} is {current.issuance_mode} for SKU {current.sku}; "
                        f"it cannot become {mode.value} for SKU {sku}")
    values = {"unit_cost": unit_cost, "currency": currency, "expiry_type": str(expiry_type),
              "expires_on": expires_on, "expiry_days": expiry_days, "updated_at": now}
    if purchase_order is not None:
        values["purchase_order"] = purchase_order
    if sites is not None:
        values["sites"] = ",".join(sites)
    book = current.remaining
    if quantity is not None and mode is IssuanceMode.API:
        values["quantity"] = quantity
        if remaining is None:
            book = max(0, current.remaining + quantity - current.quantity)
    if remaining is not None:
        book = remaining
    available = current.available
    if book != current.remaining:
        values["remaining"] = book
        cap = (_codes_in_stock(session, sku, batch_no) if mode is IssuanceMode.CODE_POOL
               else None)
        available = max(0, book - current.unposted)
        if cap is not None:
            available = min(available, cap)
        values["available"] = available
    values["status"] = _settle_status(status or current.status, available)
    session.execute(update(table).where(table.c.batch_no == batch_no).values(**values))
    return _batch_stock(_lock_batch(session, batch_no))


def add_batch(session: Session, **kwargs: Any) -> BatchStock:
    """Create a batch (a purchase receipt); an existing batch number is an error."""
    return upsert_batch(session, create_only=True, **kwargs)


def mark_posted(session: Session, batch_no: str, quantity: int) -> None:
    """The ERP booked ``quantity`` units of this batch's sales (negative: booked a return):
    they move from ``unposted`` into the book (``remaining``); ``available`` is unchanged."""
    table = PoolBatch.__table__
    result = session.execute(
        update(table).where(table.c.batch_no == batch_no)
        .values(unposted=table.c.unposted - quantity, remaining=table.c.remaining - quantity,
                updated_at=now_utc()))
    if not result.rowcount:
        raise PoolError(f"unknown batch {batch_no}")


def expire_codes(
    session: Session, *, today: date | None = None, actor: str = "vouchflow",
    system: str = "vouchflow",
) -> dict[str, int]:
    """Write off codes in stock whose expiry date has passed: status ``expired`` (with events),
    their batches' ``available`` down and ``unposted`` up by as many (the ERP books the
    write-off at the batch cost; ``mark_posted`` records it). Batches past their own expiry
    date become ``expired``. Returns codes expired per batch."""
    today = today or _today()
    now = now_utc()
    pc, bt = PoolCode.__table__, PoolBatch.__table__
    query = (select(pc.c.id, pc.c.batch_no).where(
        pc.c.status == CodeStatus.IN_STOCK.value, pc.c.expiry_rank < expiry_rank(today))
        .order_by(pc.c.id))
    if _is_pg(session):
        query = query.with_for_update(skip_locked=True)  # codes being allocated right now
    per_batch: dict[str, int] = defaultdict(int)
    gone = session.execute(query).all()
    for part in _chunks(gone, IN_CHUNK):
        ids = [r.id for r in part]
        session.execute(update(pc).where(pc.c.id.in_(ids))
                        .values(status=CodeStatus.EXPIRED.value, updated_at=now))
        _events(session, [(cid, CodeStatus.IN_STOCK.value, CodeStatus.EXPIRED.value,
                           "expired in stock") for cid in ids],
                at=now, actor=actor, system=system, action="expire")
        for r in part:
            per_batch[r.batch_no] += 1
    pg = _is_pg(session)
    if per_batch and pg:
        _pg(session, _PG_LOCK_BATCHES, {"b": sorted(per_batch)})
    lower, upper = (func.least, func.greatest) if pg else (func.min, func.max)
    for batch_no in sorted(per_batch):
        n = per_batch[batch_no]
        # what the batch offered drops by what expired (never below 0); only that much is
        # a write-off the book has yet to post
        session.execute(update(bt).where(bt.c.batch_no == batch_no).values(
            available=upper(bt.c.available - n, 0),
            unposted=bt.c.unposted + lower(bt.c.available, n), updated_at=now))
    session.execute(update(bt).where(
        bt.c.expires_on < today,
        bt.c.status.in_([BatchStatus.ACTIVE.value, BatchStatus.SOLD_OUT.value]))
        .values(status=BatchStatus.EXPIRED.value, updated_at=now))
    return dict(per_batch)


_STOCK_COLUMNS = tuple(f.name for f in fields(BatchStock))
"""The columns ``stock`` reads: a ``BatchStock``'s fields, in its order (no timestamps or
order references, which only cost converting)."""


def stock(session: Session, sku: str | None = None, *, on: date | None = None,
          skus: Iterable[str] | None = None) -> list[SkuStock]:
    """Quantities per SKU and per batch (for inventory sync and operators): one SKU, the
    given ``skus``, or all. The rows are read as plain tuples straight into ``BatchStock``
    (the inventory sync reads every batch: named row access cost more than the database)."""
    on = on or _today()
    table = PoolBatch.__table__
    query = (select(*(table.c[name] for name in _STOCK_COLUMNS))
             .order_by(table.c.sku, table.c.seq))
    if sku is not None:
        query = query.where(table.c.sku == sku)
    by_sku: dict[str, list[BatchStock]] = defaultdict(list)
    sites_at = _STOCK_COLUMNS.index("sites")
    for row in session.execute(of_keys(session, query, table.c.sku, skus)).all():
        values = list(row)
        values[sites_at] = _sites(values[sites_at])
        batch = BatchStock(*values)
        by_sku[batch.sku].append(batch)
    return [
        SkuStock(sku=s, available=sum(b.sellable(on) for b in batches),
                 remaining=sum(b.remaining for b in batches),
                 unposted=sum(b.unposted for b in batches), batches=tuple(batches))
        for s, batches in by_sku.items()
    ]


# codes in -----------------------------------------------------------------------------------
class RefusalRule(StrEnum):
    """Why ``add_codes`` refused a code, for callers that explain it in their own words."""

    EMPTY = "empty"
    REPEATED = "repeated"
    """The code repeats an earlier one of the same input (``first_position``)."""
    IN_POOL = "in_pool"
    """The code is already in the pool (``batch_no`` names its batch when known)."""
    OVER_LIMIT = "over_limit"
    """The input holds more new codes than the ``limit`` allowed."""


@dataclass(frozen=True)
class RefusedCode:
    position: int
    """1-based position of the code in the input."""
    masked: str
    reason: str
    rule: RefusalRule = RefusalRule.IN_POOL
    first_position: int | None = None
    """For ``REPEATED``: the position of the earlier occurrence."""
    batch_no: str | None = None
    """For ``IN_POOL``: the batch that holds the code (None when another upload won a race)."""


@dataclass
class AddCodesReport:
    batch_no: str
    received: int = 0
    added: int = 0
    refused: int = 0
    refusals: list[RefusedCode] = field(default_factory=list)
    """The first ``MAX_REFUSALS_LISTED`` refusals; ``refused`` counts them all."""
    on_refused: Callable[[RefusedCode], None] | None = field(default=None, repr=False)
    """Called with every refusal, in the order they are found (not only the listed ones)."""
    latest_rank: int | None = None
    """The latest expiry rank of the codes added (None: none was), so that a caller closing
    the batch need not look for it among all the pool's codes."""

    MAX_REFUSALS_LISTED = 1000

    def note_ranks(self, ranks: Iterable[int]) -> None:
        top = max(ranks, default=None)
        if top is not None and (self.latest_rank is None or top > self.latest_rank):
            self.latest_rank = top

    def refuse(self, position: int, code: str, reason: str,
               rule: RefusalRule = RefusalRule.IN_POOL, *, first_position: int | None = None,
               batch_no: str | None = None) -> None:
        self.refused += 1
        listed = len(self.refusals) < self.MAX_REFUSALS_LISTED
        if not listed and self.on_refused is None:
            return
        refusal = RefusedCode(position, mask(code), reason, rule, first_position, batch_no)
        if listed:
            self.refusals.append(refusal)
        if self.on_refused is not None:
            self.on_refused(refusal)


CodeIn = tuple[str, str | None, date | None]


def add_codes(
    engine: Engine,
    batch_no: str,
    codes: Iterable[CodeIn],
    keyring: Keyring,
    *,
    actor: str,
    system: str,
    chunk_size: int = CODE_CHUNK,
    limit: int | None = None,
    on_refused: Callable[[RefusedCode], None] | None = None,
) -> AddCodesReport:
    """Receive codes into a code-pool batch: ``(code, pin or None, expires_on or None)`` each.

    Streams the input in chunks, one transaction each (a crash keeps whole chunks; running the
    upload again refuses what is already in and adds the rest). A code that repeats an earlier
    one of the same input or is already in the pool is refused with its position; the rest
    are stored encrypted, in stock, with one ``receive`` event each, and the batch's
    quantity, remaining and available rise by what was added.

    ``limit``: add at most this many codes (e.g. what a purchase order line has left to
    receive); new codes past it are refused (``OVER_LIMIT``), so the count is of codes
    actually added, after repeats and codes already in the pool are refused.
    ``on_refused`` sees every refusal as it is found (called from the thread writing the
    chunks, inside a chunk's transaction: it must not touch the database, and what it shares
    with the caller's thread needs a lock).
    """
    if limit is not None and limit < 0:
        raise PoolError(f"batch {batch_no}: limit must not be negative, got {limit}")
    report = AddCodesReport(batch_no=batch_no, on_refused=on_refused)
    with session_scope(engine) as session:
        batch = session.execute(
            select(*PoolBatch.__table__.c).where(PoolBatch.batch_no == batch_no)).first()
    if batch is None:
        raise PoolError(f"unknown batch {batch_no}")
    if batch.issuance_mode != IssuanceMode.CODE_POOL:
        raise PoolError(f"batch {batch_no} is an API batch: it holds a quantity, not codes")
    batch_rank = expiry_rank(batch.expires_on) if batch.expiry_type == ExpiryType.FIXED_DATE \
        else NO_EXPIRY_RANK
    pg = engine.dialect.name == "postgresql"
    ours = _Positions()
    direct = _Direct(engine) if pg else None
    stop = threading.Event()
    """Set when a chunk failed (or the reading did): no chunk after it is written."""

    def write(prepared: _Prepared) -> None:
        if stop.is_set():
            return
        try:
            _write_chunk(engine, batch, prepared, report, ours, actor, system, limit,
                         direct=direct)
        except BaseException:
            stop.set()
            raise

    # Chunks are written in order by one thread while the next ones are read, hashed and
    # encrypted here: the database's work and ours overlap. Up to PIPELINE_DEPTH prepared
    # chunks wait for the writer, so it goes from one chunk to the next without waiting for
    # this thread. Everything that decides what is refused runs in the writer, one chunk after
    # the other, so the outcome is the same as writing them one by one; the report is only
    # changed there. An error in the writer stops the chunks behind it and is raised here.
    with ExitStack() as finally_, ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="add-codes") as writer:
        if direct is not None:
            finally_.callback(direct.close)  # after the writer has stopped (exits unwind)
        pending: deque[Future[None]] = deque()

        def submit(chunk: list[tuple[int, str, str | None, date | None]]) -> None:
            prepared = _prepare_chunk(chunk, keyring, pg=pg, batch_rank=batch_rank)
            while len(pending) >= PIPELINE_DEPTH:
                pending.popleft().result()  # raises the writer's error, if it had one
            pending.append(writer.submit(write, prepared))

        try:
            chunk: list[tuple[int, str, str | None, date | None]] = []
            position = 0
            for item in codes:
                position += 1
                code, pin, expires = item
                code = normalize_code(code or "")
                if not code:
                    chunk.append((position, "", None, None))
                else:
                    chunk.append((position, code, None if pin is None else pin.strip(),
                                  expires))
                if len(chunk) >= chunk_size:
                    submit(chunk)
                    chunk = []
            if chunk:
                submit(chunk)
            while pending:
                pending.popleft().result()
            if direct is not None:
                direct.durable(batch_no)
        except BaseException:
            stop.set()  # what is queued is not written; the chunk being written finishes
            raise
    report.refusals.sort(key=lambda r: r.position)
    return report


class _Direct:
    """The writer's own PostgreSQL connection outside any transaction (each statement commits
    on its own), opened for its first chunk and kept for the next ones: a checkout from the
    pool would ask the server whether the connection is alive every time. Used by one thread
    at a time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.conn: Connection | None = None

    def driver(self) -> Any:
        if self.conn is None:
            self.conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self.conn.connection.driver_connection

    def durable(self, batch_no: str) -> None:
        """Return once every chunk committed here is on disk (they commit without waiting for
        it), so ``add_codes`` returns only what is durable whatever its caller does next: an
        ordinary commit of a transaction that wrote something waits until everything written
        before it is flushed. The write is the batch row rewritten as it is (a transaction
        that only takes an id writes nothing and would not wait)."""
        if self.conn is not None:
            self.conn.connection.driver_connection.execute(
                "UPDATE pool_batch SET updated_at = updated_at WHERE batch_no = %s",
                (batch_no,))

    def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.close()


class _Positions:
    """Which input position each code this upload added has, by id: two flat arrays (16 bytes
    a code, so a million-code upload stays small); ids only grow, so lookups bisect."""

    def __init__(self) -> None:
        self.ids = array("q")
        self.positions = array("q")

    def extend(self, pairs: Sequence[tuple[int, int]]) -> None:
        for code_id, position in pairs:
            self.ids.append(code_id)
            self.positions.append(position)

    def extend_arrays(self, ids: Sequence[int], positions: Sequence[int]) -> None:
        """Ids (ascending, above every id already held) and their positions, side by side."""
        self.ids.extend(ids)
        self.positions.extend(positions)

    def get(self, code_id: int) -> int | None:
        i = bisect_left(self.ids, code_id)
        if i < len(self.ids) and self.ids[i] == code_id:
            return self.positions[i]
        return None


@dataclass
class _Prepared:
    """A chunk read, hashed and encrypted, not yet checked against the pool."""

    chunk: list[tuple[int, str, str | None, date | None]]
    hashes: list[str]
    fresh: dict[str, int]
    """hash -> index in chunk of the first occurrence of each (non-empty) code, in index
    order; the writer takes out the codes it refuses."""
    skipped: list[tuple[int, int | None]]
    """(index, index of the first occurrence; None: the code is empty) of the codes refused
    without asking the pool, in index order."""
    order: list[int]
    """Indexes of the codes first in ``fresh`` (ascending), as prepared."""
    codes_enc: list[str]
    pins_enc: list[str | None]
    """Ciphertexts of the codes and PINs of ``order``, position by position."""
    pg_columns: dict[str, Any] | None = None
    """PostgreSQL: ``order``'s codes as the insert statements take them (``_joined``), made
    by the thread that reads the codes while the writer waits for the database."""
    batch_rank: int = NO_EXPIRY_RANK
    """The expiry rank of a code without its own date."""
    top_rank: int | None = None
    """With ``pg_columns``: the latest expiry rank among them."""
    _slots: dict[int, int] | None = field(default=None, repr=False)

    def rank(self, index: int) -> int:
        expires = self.chunk[index][3]
        return expiry_rank(expires) if expires else self.batch_rank

    def encrypted(self, index: int) -> tuple[str, str | None]:
        """The ciphertexts of the code at ``index`` (one of ``order``)."""
        if self._slots is None:
            self._slots = {i: k for k, i in enumerate(self.order)}
        k = self._slots[index]
        return self.codes_enc[k], self.pins_enc[k]


def _prepare_chunk(chunk: list[tuple[int, str, str | None, date | None]], keyring: Keyring,
                   *, pg: bool = False, batch_rank: int = NO_EXPIRY_RANK) -> _Prepared:
    hashes = keyring.hash_codes(c for _, c, _, _ in chunk)
    fresh: dict[str, int] = {}
    skipped: list[tuple[int, int | None]] = []
    for index, digest in enumerate(hashes):
        if not chunk[index][1]:
            skipped.append((index, None))
            continue
        first = fresh.setdefault(digest, index)
        if first != index:
            skipped.append((index, first))
    order = list(fresh.values())  # ascending: filled in index order
    codes_enc = keyring.encrypt_many(chunk[i][1] for i in order)
    pins_enc = keyring.encrypt_many(chunk[i][2] for i in order)
    prepared = _Prepared(chunk, hashes, fresh, skipped, order, codes_enc,  # type: ignore[arg-type]
                         pins_enc, batch_rank=batch_rank)
    if pg and order:
        columns = _pg_columns(prepared, order)
        prepared.pg_columns = _joined(columns)
        prepared.top_rank = max(columns["r"])
    return prepared


def _write_chunk(
    engine: Engine, batch: Any, prepared: _Prepared,
    report: AddCodesReport, ours: _Positions, actor: str, system: str, limit: int | None,
    *, direct: _Direct | None,
) -> None:
    """Check one prepared chunk against the pool and store what it adds (``add_codes``'s
    writer; ``direct``: its own connection on PostgreSQL, None on SQLite)."""
    chunk, hashes, fresh = prepared.chunk, prepared.hashes, prepared.fresh
    report.received += len(chunk)
    for index, first in prepared.skipped:
        position, code = chunk[index][0], chunk[index][1]
        if first is None:
            report.refuse(position, "", "empty code", RefusalRule.EMPTY)
        else:
            earlier = chunk[first][0]
            report.refuse(position, code, f"repeats position {earlier} of this upload",
                          RefusalRule.REPEATED, first_position=earlier)
    if not fresh:
        return
    now = now_utc()
    fits = limit is None or len(fresh) <= max(0, limit - report.added)
    pg = direct is not None
    if direct is not None and fits:
        # the usual case, every new code fits and none is in the pool yet: one statement,
        # committed on its own (codes, receipt and batch quantities together)
        ids = _insert_new_codes_pg(direct, batch, prepared, now, actor, system)
        if ids is not None:
            ours.extend_arrays(ids, [chunk[i][0] for i in prepared.order])
            report.added += len(ids)
            report.note_ranks([prepared.top_rank] if prepared.top_rank is not None else [])
            return
    with session_scope(engine, immediate=True) as session:
        _custom_plans(session)
        if pg and fits:
            # a code of the chunk is in the pool: the same codes, skipping those
            _insert_fresh_pg(session, batch, prepared, report, ours, now, actor, system)
            return
        _refuse_existing(session, pg, prepared, report, ours, _existing(session, pg, fresh))
        if limit is not None:
            room = max(0, limit - report.added)
            for index in sorted(fresh.values())[room:]:
                del fresh[hashes[index]]
                report.refuse(chunk[index][0], chunk[index][1],
                              f"more than the {limit} codes allowed", RefusalRule.OVER_LIMIT)
        if not fresh:
            return
        indexes = sorted(fresh.values())
        if pg:
            added = _insert_codes_pg(session, batch, now, actor, system,
                                     _joined(_pg_columns(prepared, indexes)))
        else:
            rows = []
            for i in indexes:
                code_enc, pin_enc = prepared.encrypted(i)
                rows.append({
                    "code_hash": hashes[i], "code_enc": code_enc, "pin_enc": pin_enc,
                    "last4": last4(chunk[i][1]), "sku": batch.sku, "batch_no": batch.batch_no,
                    "status": CodeStatus.IN_STOCK.value,
                    "expiry_rank": prepared.rank(i), "batch_seq": batch.seq, "updated_at": now})
            added = _insert_codes_sqlite(session, rows, now, actor, system)
        report.note_ranks(prepared.rank(fresh[digest]) for _, digest in added)
        by_hash = dict(fresh)
        ours.extend(sorted((code_id, chunk[by_hash.pop(digest)][0])
                           for code_id, digest in added))
        for index in by_hash.values():  # lost a race with another upload
            report.refuse(chunk[index][0], chunk[index][1], "already in the pool")
        _received(session, batch, report, len(added), now)


def _existing(session: Session, pg: bool, hashes: Iterable[str]) -> list[Any]:
    """(code_hash, id, batch_no) of the codes with these hashes already in the pool."""
    if pg:
        return _pg(session, "SELECT code_hash, id, batch_no FROM pool_code "
                            "WHERE code_hash = ANY(string_to_array(:h, ','))",
                   {"h": ",".join(hashes)}).fetchall()
    table = PoolCode.__table__
    existing: list[Any] = []
    for part in _chunks(list(hashes), IN_CHUNK):
        existing.extend(session.execute(
            select(table.c.code_hash, table.c.id, table.c.batch_no)
            .where(table.c.code_hash.in_(part))).all())
    return existing


def _refuse_existing(session: Session, pg: bool, prepared: _Prepared, report: AddCodesReport,
                     ours: _Positions, existing: Iterable[Any]) -> None:
    """Refuse the codes found in the pool (taking them out of ``prepared.fresh``): a repeat of
    this upload when it added them, else already in the pool."""
    chunk, fresh = prepared.chunk, prepared.fresh
    for digest, code_id, other in existing:
        index = fresh.pop(digest)
        earlier = ours.get(code_id)
        if earlier is not None:
            report.refuse(chunk[index][0], chunk[index][1],
                          f"repeats position {earlier} of this upload",
                          RefusalRule.REPEATED, first_position=earlier)
        else:
            report.refuse(chunk[index][0], chunk[index][1],
                          f"already in the pool (batch {other})", RefusalRule.IN_POOL,
                          batch_no=other)


def _insert_fresh_pg(
    session: Session, batch: Any, prepared: _Prepared,
    report: AddCodesReport, ours: _Positions, now: datetime, actor: str, system: str,
) -> None:
    """PostgreSQL, when no limit can refuse a code but one of the chunk is in the pool:
    insert every new code of the chunk (a hash already in the pool is skipped by the
    insert), then refuse the skipped ones as found."""
    chunk, fresh = prepared.chunk, prepared.fresh
    added = _insert_codes_pg(session, batch, now, actor, system, prepared.pg_columns
                             or _joined(_pg_columns(prepared, prepared.order)))
    report.note_ranks(prepared.rank(fresh[digest]) for _, digest in added)
    skipped = dict(fresh)
    new_ids = []
    for code_id, digest in added:
        new_ids.append((code_id, chunk[skipped.pop(digest)][0]))
    if skipped:
        # found after the insert, which waited for any upload inserting them meanwhile
        _refuse_existing(session, True, prepared, report, ours,
                         _existing(session, True, skipped))
    ours.extend(sorted(new_ids))
    _received(session, batch, report, len(added), now)


def _pg_columns(prepared: _Prepared, indexes: list[int]) -> dict[str, list[Any]]:
    """The columns ``_insert_codes_pg`` takes, for these codes of the chunk."""
    chunk = prepared.chunk
    if indexes == prepared.order:
        codes_enc, pins_enc = prepared.codes_enc, prepared.pins_enc
    else:
        encrypted = [prepared.encrypted(i) for i in indexes]
        codes_enc, pins_enc = [c for c, _ in encrypted], [p for _, p in encrypted]
    return {"h": [prepared.hashes[i] for i in indexes], "c": codes_enc, "p": pins_enc,
            "l": [last4(chunk[i][1]) for i in indexes],
            "r": [prepared.rank(i) for i in indexes]}


def _joined(columns: dict[str, list[Any]]) -> dict[str, Any]:
    """The columns as the insert statements take them. Hashes, ciphertexts (urlsafe base64)
    and ranks never hold a comma, so they travel as one comma-joined text each (a binary
    array costs the driver a Python call per element); the last four characters of a code
    may be anything and go as an array."""
    return {"h": ",".join(columns["h"]), "c": ",".join(columns["c"]),
            "p": ",".join([p or "" for p in columns["p"]]),
            "r": ",".join(map(str, columns["r"])), "l": columns["l"]}


def _received(session: Session, batch: Any, report: AddCodesReport, n: int, now: datetime
              ) -> None:
    """The batch's quantities rise by the ``n`` codes this chunk added."""
    report.added += n
    if n:
        session.execute(_sql(_BATCH_RECEIVED.format(n=":n")),
                        {"n": n, "now": now, "batch_no": batch.batch_no})


_BATCH_RECEIVED = """
UPDATE pool_batch
SET quantity = quantity + {n}, remaining = remaining + {n}, available = available + {n},
    updated_at = :now, status = COALESCE(NULLIF(status, 'sold_out'), 'active')
WHERE batch_no = :batch_no
"""
"""A batch receiving ``{n}`` codes (a sold-out batch sells again): after a chunk's insert,
and inside the one statement that stores a chunk on PostgreSQL."""


_PG_INSERT_CODES_SQL = """
WITH receipt AS (
    SELECT nextval(pg_get_serial_sequence('code_receipt', 'id')) AS id
), ins AS (
    INSERT INTO pool_code (code_hash, code_enc, pin_enc, last4, sku, batch_no, status,
                           expiry_rank, batch_seq, updated_at, receipt_id)
    SELECT v.h, v.c, NULLIF(v.p, ''), v.l, :sku, :batch_no, 'in_stock', v.r, :seq, :now,
           (SELECT id FROM receipt)
    FROM unnest(string_to_array(:h, ','), string_to_array(:c, ','), string_to_array(:p, ','),
                CAST(:l AS text[]), CAST(string_to_array(:r, ',') AS int[]))
         WITH ORDINALITY AS v(h, c, p, l, r, o)
    ORDER BY v.o
    {on_conflict}
    RETURNING {returning}
), rec AS (
    INSERT INTO code_receipt (id, batch_no, at, actor, system, detail)
    SELECT id, :batch_no, :now, :actor, :system, :detail FROM receipt
    WHERE EXISTS (SELECT 1 FROM ins)
){rest}
"""
"""The chunk's new codes and, if there are any, their receipt (the first entry of each one's
chronology), in one statement."""
_PG_INSERT_CODES = _PG_INSERT_CODES_SQL.format(
    on_conflict="ON CONFLICT (code_hash) DO NOTHING", returning="id, code_hash",
    rest="\nSELECT id, code_hash FROM ins")
_PG_INSERT_NEW_CODES = _PG_INSERT_CODES_SQL.format(on_conflict="", returning="id", rest="""
, added AS (
    SELECT count(*) AS n FROM ins
), batch AS ({batch}
    AND (SELECT n FROM added) > 0
)
SELECT string_agg(id::text, ',') AS ids,
       set_config('synchronous_commit', 'off', true) AS flushed_by_a_later_commit
FROM ins""".replace("{batch}", _BATCH_RECEIVED.format(n="(SELECT n FROM added)").rstrip()))
"""Codes none of which is in the pool (a plain insert probes the hash index once a code; ON
CONFLICT would look each one up first and then insert it; one already there fails the
statement on ``uq_pool_code_hash``), their receipt and the batch's quantities, committed as
one statement. The ids come back in input order (the order of the insert and of RETURNING).

The commit does not wait for the disk (``synchronous_commit`` off for this transaction
only): a database that crashed right after it could lose this chunk, exactly as if the
upload had stopped before it. ``add_codes`` returns only after an ordinary commit on the
same connection (``_Direct.durable``), which writes everything committed before it to disk
first; a vendor upload's batch stays frozen until then, so nothing sells these codes early."""
HASH_UNIQUE = "uq_pool_code_hash"


def _receipt_detail(batch_no: str) -> str:
    return f"batch {batch_no}"


def _insert_codes_pg(
    session: Session, batch: Any, now: datetime, actor: str, system: str,
    columns: dict[str, Any],
) -> list[tuple[int, str]]:
    """``columns``: the codes' hashes (h), ciphertexts (c), PIN ciphertexts (p), last four
    characters (l) and expiry ranks (r), in input order, as ``_joined`` makes them. A code
    already in the pool is left out (``ON CONFLICT DO NOTHING``)."""
    result = _pg(session, _PG_INSERT_CODES, {**columns, **_insert_params(batch, now, actor,
                                                                          system)})
    return [(int(i), h) for i, h in result]


def _insert_params(batch: Any, now: datetime, actor: str, system: str) -> dict[str, Any]:
    return {"sku": batch.sku, "batch_no": batch.batch_no, "seq": batch.seq, "now": now,
            "actor": actor, "system": system, "detail": _receipt_detail(batch.batch_no)}


def _insert_new_codes_pg(direct: _Direct, batch: Any, prepared: _Prepared, now: datetime,
                         actor: str, system: str) -> array[int] | None:
    """Every code of ``prepared.order`` in one statement of its own (``_PG_INSERT_NEW_CODES``:
    one round trip to the database a chunk, with no transaction around it). Returns their
    ids in that order, or None when one is already in the pool (nothing is written)."""
    assert prepared.pg_columns is not None
    driver = direct.driver()
    try:
        # prepared by the driver from its sixth chunk on: planning the statement again for
        # every chunk (it reads no table a plan could get wrong) cost more than its trigger
        row = _pg_cursor(driver, _PG_INSERT_NEW_CODES, {
            **prepared.pg_columns, **_insert_params(batch, now, actor, system)}).fetchone()
    except UniqueViolation as exc:
        if exc.diag.constraint_name != HASH_UNIQUE:
            raise
        return None
    ids = array("q", map(int, row.ids.split(",")))
    if len(ids) != len(prepared.order):
        raise PoolError(f"batch {batch.batch_no}: {len(ids)} codes stored of "
                        f"{len(prepared.order)} sent")
    if all(a < b for a, b in pairwise(ids)):
        return ids
    # not in input order (never seen): place each id by its code's hash
    found = dict(_pg_cursor(driver, "SELECT code_hash, id FROM pool_code WHERE id = ANY(:ids)",
                            {"ids": list(ids)}).fetchall())
    return array("q", [found[prepared.hashes[i]] for i in prepared.order])


def _insert_codes_sqlite(
    session: Session, rows: list[dict[str, Any]], now: datetime, actor: str, system: str,
) -> list[tuple[int, str]]:
    # the chunk runs under BEGIN IMMEDIATE: nobody else writes, so the ids are ours to number
    start = (session.scalar(text("SELECT max(id) FROM pool_code")) or 0) + 1
    receipt = session.execute(
        insert(PoolCodeReceipt.__table__).values(
            batch_no=rows[0]["batch_no"], at=now, actor=actor, system=system,
            detail=_receipt_detail(rows[0]["batch_no"]))).inserted_primary_key[0]
    for n, row in enumerate(rows):
        row["id"] = start + n
        row["receipt_id"] = receipt
    session.execute(_insert(session, PoolCode.__table__), rows)
    return [(r["id"], r["code_hash"]) for r in rows]


def find_code(session: Session, code: str, keyring: Keyring) -> Any | None:
    """The pool row of a code (looked up by its keyed hash), without its ciphertexts."""
    table = PoolCode.__table__
    cols = [c for c in table.c if c.name not in ("code_enc", "pin_enc")]
    return session.execute(
        select(*cols).where(table.c.code_hash == keyring.hash_code(code))).first()


def code_history(session: Session, code_id: int) -> list[CodeEvent]:
    """A code's chronology, oldest first: its receipt (``code_receipt``), then its events."""
    received = session.execute(
        select(PoolCodeReceipt.__table__).join(
            PoolCode.__table__, PoolCode.__table__.c.receipt_id == PoolCodeReceipt.__table__.c.id)
        .where(PoolCode.__table__.c.id == code_id)).first()
    history = [] if received is None else [CodeEvent(
        at=received.at, actor=received.actor, system=received.system, action="receive",
        from_status=None, to_status=CodeStatus.IN_STOCK, detail=received.detail)]
    table = PoolCodeEvent.__table__
    rows = session.execute(select(*table.c).where(table.c.code_id == code_id)
                           .order_by(table.c.id))
    return history + [CodeEvent(at=r.at, actor=r.actor, system=r.system, action=r.action,
                                from_status=r.from_status, to_status=r.to_status,
                                detail=r.detail) for r in rows]


# orders in ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SiteOrderLine:
    line_id: str
    sku: str
    quantity: int
    unit_price: Decimal
    issuance_mode: str | None = None
    """Known from the SKU; when not given, the SKU's active batches decide at allocation."""


@dataclass(frozen=True)
class SiteOrder:
    site: str
    order_id: str
    status: str
    created_at: datetime
    updated_at: datetime
    currency: str
    lines: tuple[SiteOrderLine, ...] = ()
    customer_ref: str | None = None
    payment: Any = None
    total: Decimal | None = None

    @classmethod
    def of(cls, value: SiteOrder | Mapping[str, Any]) -> SiteOrder:
        if isinstance(value, SiteOrder):
            return value
        data = dict(value)
        lines = tuple(
            line if isinstance(line, SiteOrderLine) else SiteOrderLine(
                line_id=str(line["line_id"]), sku=line["sku"], quantity=int(line["quantity"]),
                unit_price=Decimal(str(line["unit_price"])),
                issuance_mode=line.get("issuance_mode"))
            for line in data.pop("lines", ()))
        total = data.pop("total", None)
        return cls(lines=lines, total=None if total is None else Decimal(str(total)), **data)


@dataclass
class RecordOrdersReport:
    received: int = 0
    changed: int = 0
    """Orders inserted or replaced by a newer version."""
    stale: int = 0
    """Versions not newer than the one held (out-of-order or repeated webhooks): ignored."""
    lines_written: int = 0
    lines_cancelled: int = 0


def record_orders(
    session: Session, orders: Iterable[SiteOrder | Mapping[str, Any]],
) -> RecordOrdersReport:
    """Keep the newest version of each site order and its lines.

    A version is applied only if its ``updated_at`` is newer than the one held, so a late
    webhook never rolls an order back. New lines start ``pending``; a line already allocated
    is never changed here. When the order becomes cancelled or refunded its pending and held
    lines become ``cancelled``; allocated lines stay as they are (``refund`` handles them).
    """
    report = RecordOrdersReport()
    newest: dict[tuple[str, str], SiteOrder] = {}
    for raw in orders:
        order = SiteOrder.of(raw)
        report.received += 1
        if order.created_at.tzinfo is None or order.updated_at.tzinfo is None:
            raise PoolError(f"order {order.site}/{order.order_id}: times must be aware")
        for line in order.lines:
            if line.quantity <= 0:
                raise PoolError(f"order {order.site}/{order.order_id} line {line.line_id}: "
                                f"quantity must be positive, got {line.quantity}")
            _amount(line.unit_price, f"order {order.site}/{order.order_id} line "
                                     f"{line.line_id} unit price")
        if order.total is not None:
            _amount(order.total, f"order {order.site}/{order.order_id} total")
        key = (order.site, order.order_id)
        held = newest.get(key)
        if held is None or order.updated_at > held.updated_at:
            newest[key] = order
    report.stale = report.received - len(newest)
    now = now_utc()
    ol = OrderLine.__table__
    pg = _is_pg(session)
    if pg:
        _custom_plans(session)
    recorded: list[Event] = []
    # one lock order for every writer (sorted keys), so concurrent calls cannot deadlock
    for part in _chunks([newest[k] for k in sorted(newest)], 5000 if pg else IN_CHUNK):
        order_rows = [
            {"site": o.site, "order_id": o.order_id, "status": o.status,
             "currency": o.currency, "customer_ref": o.customer_ref,
             "created_at": o.created_at, "site_updated_at": o.updated_at,
             "total": o.total if o.total is not None else sum(
                 (line.unit_price * line.quantity for line in o.lines), Decimal(0)),
             "payment": o.payment, "held_reason": None, "received_at": now,
             "updated_at": now}
            for o in part]
        changed = (_upsert_orders_pg if pg else _upsert_orders)(session, order_rows)
        report.changed += len(changed)
        report.stale += len(part) - len(changed)
        applied = [o for o in part if (o.site, o.order_id) in changed]
        line_rows = [
            {"site": o.site, "order_id": o.order_id, "line_id": line.line_id, "sku": line.sku,
             "quantity": line.quantity, "unit_price": line.unit_price, "currency": o.currency,
             "issuance_mode": line.issuance_mode,
             "status": (LineStatus.CANCELLED if o.status in CANCELLED_ORDER_STATUSES
                        else LineStatus.PENDING).value,
             "held_reason": None, "refunded": 0, "order_created_at": o.created_at,
             "updated_at": now}
            for o in applied
            for line in sorted({ln.line_id: ln for ln in o.lines}.values(),
                               key=lambda x: x.line_id)
        ]
        if line_rows:
            (_upsert_lines_pg if pg else _upsert_lines)(session, line_rows)
            report.lines_written += len(line_rows)
        totals = {(r["site"], r["order_id"]): r["total"] for r in order_rows}
        recorded.extend(sales_order_recorded(
            site=o.site, order_id=o.order_id, status=o.status, currency=o.currency,
            total=totals[(o.site, o.order_id)], created_at=o.created_at,
            updated_at=o.updated_at,
            lines=[(ln.line_id, ln.sku, ln.quantity, ln.unit_price) for ln in o.lines])
            for o in applied)
        stopped = [(o.site, o.order_id) for o in applied
                   if o.status in CANCELLED_ORDER_STATUSES]
        for stop in _chunks(stopped, IN_CHUNK):
            result = session.execute(
                update(ol).where(
                    tuple_(ol.c.site, ol.c.order_id).in_(stop),
                    ol.c.status.in_([LineStatus.PENDING.value, LineStatus.HELD.value]))
                .values(status=LineStatus.CANCELLED.value, updated_at=now))
            report.lines_cancelled += result.rowcount or 0
    # last: on PostgreSQL emitting holds the event lock until commit (no row locks after it)
    emit_events(session, recorded)
    return report


_ORDER_FIELDS = ("status", "currency", "customer_ref", "total", "payment", "site_updated_at",
                 "updated_at")
_LINE_FIELDS = ("sku", "quantity", "unit_price", "currency", "issuance_mode", "updated_at")


def _upsert_orders(session: Session, rows: list[dict[str, Any]]) -> set[OrderKey]:
    """Insert new orders, replace held ones by newer versions; the keys of rows written."""
    so = SalesOrder.__table__
    stmt = _insert(session, so)
    stmt = stmt.on_conflict_do_update(
        index_elements=["site", "order_id"],
        set_={name: stmt.excluded[name] for name in _ORDER_FIELDS},
        where=so.c.site_updated_at < stmt.excluded.site_updated_at,
    ).returning(so.c.site, so.c.order_id)
    return {(r[0], r[1]) for r in session.execute(stmt, rows)}


def _upsert_lines(session: Session, rows: list[dict[str, Any]]) -> None:
    ol = OrderLine.__table__
    stmt = _insert(session, ol)
    stmt = stmt.on_conflict_do_update(
        index_elements=["site", "order_id", "line_id"],
        set_={name: stmt.excluded[name] for name in _LINE_FIELDS},
        where=(ol.c.status == LineStatus.PENDING.value) | (ol.c.status == LineStatus.HELD.value),
    )
    session.execute(stmt, rows)


_PG_UPSERT_ORDERS = """
INSERT INTO sales_order (site, order_id, status, currency, customer_ref, created_at,
                         site_updated_at, total, payment, received_at, updated_at)
SELECT v.*, :now, :now
FROM unnest(CAST(:site AS text[]), CAST(:order_id AS text[]), CAST(:status AS text[]),
            CAST(:currency AS text[]), CAST(:customer_ref AS text[]),
            CAST(:created_at AS timestamptz[]), CAST(:site_updated_at AS timestamptz[]),
            CAST(:total AS numeric[]), CAST(:payment AS text[]))
  AS v(site, order_id, status, currency, customer_ref, created_at, site_updated_at, total,
       payment)
ON CONFLICT (site, order_id) DO UPDATE
SET status = excluded.status, currency = excluded.currency,
    customer_ref = excluded.customer_ref, total = excluded.total, payment = excluded.payment,
    site_updated_at = excluded.site_updated_at, updated_at = excluded.updated_at
WHERE sales_order.site_updated_at < excluded.site_updated_at
RETURNING site, order_id
"""
_PG_UPSERT_LINES = """
INSERT INTO order_line (site, order_id, line_id, sku, quantity, unit_price, currency,
                        issuance_mode, status, refunded, order_created_at, updated_at)
SELECT v.site, v.order_id, v.line_id, v.sku, v.quantity, v.unit_price, v.currency,
       v.issuance_mode, v.status, 0, v.created, :now
FROM unnest(CAST(:site AS text[]), CAST(:order_id AS text[]), CAST(:line_id AS text[]),
            CAST(:sku AS text[]), CAST(:quantity AS int[]), CAST(:unit_price AS numeric[]),
            CAST(:currency AS text[]), CAST(:issuance_mode AS text[]), CAST(:status AS text[]),
            CAST(:order_created_at AS timestamptz[]))
  AS v(site, order_id, line_id, sku, quantity, unit_price, currency, issuance_mode, status,
       created)
ON CONFLICT (site, order_id, line_id) DO UPDATE
SET sku = excluded.sku, quantity = excluded.quantity, unit_price = excluded.unit_price,
    currency = excluded.currency, issuance_mode = excluded.issuance_mode,
    updated_at = excluded.updated_at
WHERE order_line.status IN ('pending', 'held')
"""


def _json_text(value: Any) -> str | None:
    """As ``state.types.JSONText`` stores it."""
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def _upsert_orders_pg(session: Session, rows: list[dict[str, Any]]) -> set[OrderKey]:
    params: dict[str, Any] = {name: [r[name] for r in rows] for name in (
        "site", "order_id", "status", "currency", "customer_ref", "created_at",
        "site_updated_at", "total")}
    params["payment"] = [_json_text(r["payment"]) for r in rows]
    params["now"] = rows[0]["updated_at"]
    return {(r.site, r.order_id) for r in _pg(session, _PG_UPSERT_ORDERS, params)}


def _upsert_lines_pg(session: Session, rows: list[dict[str, Any]]) -> None:
    params: dict[str, Any] = {name: [r[name] for r in rows] for name in (
        "site", "order_id", "line_id", "sku", "quantity", "unit_price", "currency",
        "issuance_mode", "status", "order_created_at")}
    params["now"] = rows[0]["updated_at"]
    _pg(session, _PG_UPSERT_LINES, params)


# allocation ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeldOrder:
    site: str
    order_id: str
    reason: str


@dataclass
class AllocationReport:
    worker: str
    orders_allocated: int = 0
    lines_allocated: int = 0
    codes_allocated: int = 0
    api_units: int = 0
    orders_held: int = 0
    lines_held: int = 0
    orders_deferred: int = 0
    """Orders left pending for a later pass: another worker held part of them or the stock
    they need (counted each time, so one order may count more than once)."""
    chunks: int = 0
    conflicts: int = 0
    """Chunks redone because a batch had less available than planned (another worker sold it)."""
    held: list[HeldOrder] = field(default_factory=list)
    """The first 100 orders held by this call, with their reasons."""

    @property
    def orders_processed(self) -> int:
        return self.orders_allocated + self.orders_held


@dataclass
class _Line:
    site: str
    order_id: str
    line_id: str
    sku: str
    quantity: int
    issuance_mode: str | None
    held_reason: str | None
    tid: str | None = None
    """PostgreSQL: where the row this transaction locked is (its ctid, fixed while locked)."""


@dataclass
class _Group:
    """Codes of one SKU claimed for the lines that can use the same batches."""

    sku: str
    batches: tuple[str, ...]
    demand: int = 0
    codes: list[tuple[int, str]] = field(default_factory=list)
    """(id, batch_no) in allocation order."""
    pos: int = 0


class _BudgetConflict(Exception):
    """A batch had less available at commit time than the chunk planned: redo the chunk."""


def allocate(
    engine: Engine,
    *,
    limit_orders: int | None = None,
    worker: str = "w1",
    retry_held: bool = False,
    chunk_lines: int = ALLOCATION_CHUNK,
    actor: str | None = None,
    system: str = "vouchflow",
    today: date | None = None,
    patience: int = 40,
) -> AllocationReport:
    """Allocate pending orders, oldest first, until none is left (or ``limit_orders``).

    Safe to run in several processes at once (PostgreSQL) and to run again after a crash:
    a chunk commits whole or not at all. ``retry_held`` first puts held orders back in the
    queue, in their original place. ``patience`` bounds the passes that only meet orders
    another worker is busy with before this call returns and leaves them to a later run.
    """
    report = AllocationReport(worker=worker)
    actor = actor or f"allocator:{worker}"
    if retry_held:
        with session_scope(engine) as session:
            ol = OrderLine.__table__
            session.execute(update(ol).where(ol.c.status == LineStatus.HELD.value)
                            .values(status=LineStatus.PENDING.value))
    idle = 0
    conflicts_in_a_row = 0
    while limit_orders is None or report.orders_processed < limit_orders:
        room = None if limit_orders is None else limit_orders - report.orders_processed
        try:
            with session_scope(engine, immediate=True) as session:
                claimed, deferred = _allocate_chunk(
                    session, report, chunk_lines=chunk_lines, max_orders=room,
                    today=today or _today(), actor=actor, system=system)
        except _BudgetConflict:
            report.conflicts += 1
            conflicts_in_a_row += 1
            if conflicts_in_a_row > 50:
                raise
            time.sleep(random.uniform(0.001, 0.01))
            continue
        conflicts_in_a_row = 0
        report.chunks += 1
        if claimed == 0:
            break
        if deferred == claimed:
            idle += 1
            if idle > patience:
                break
            time.sleep(random.uniform(0.005, 0.03))
        else:
            idle = 0
    return report


_PG_CLAIM_LINES = """
SELECT site, order_id, line_id, CAST(ctid AS text) AS tid
FROM order_line
WHERE status = 'pending'
ORDER BY order_created_at, site, order_id
LIMIT :n
FOR UPDATE SKIP LOCKED
"""
_SQLITE_CLAIM_LINES = """
SELECT site, order_id, line_id
FROM order_line
WHERE status = 'pending'
ORDER BY order_created_at, site, order_id
LIMIT :n
"""
# Statements that look up a list of keys in a big table reach each key through its primary
# key: a LATERAL subquery with OFFSET 0 (which the planner may neither flatten nor push
# other conditions into) fixes that plan, whatever the statistics say. Without it, a status
# condition the planner misjudges (a freshly filled table: "12 pending lines" for 30,000)
# turns 2,000 lookups into a scan of the whole queue for each key.
_PG_ORDER_LINES = """
SELECT l.site, l.order_id, l.line_id, l.sku, l.quantity, l.issuance_mode, l.held_reason
FROM unnest(CAST(:sites AS text[]), CAST(:orders AS text[])) AS o(site, order_id)
CROSS JOIN LATERAL (
    SELECT * FROM order_line x WHERE x.site = o.site AND x.order_id = o.order_id OFFSET 0
) l
WHERE l.status = 'pending'
"""
_PG_LOCK_LINES = """
SELECT l.site, l.order_id, l.line_id, CAST(l.tid AS text) AS tid
FROM unnest(CAST(:sites AS text[]), CAST(:orders AS text[]), CAST(:lines AS text[]))
  AS o(site, order_id, line_id)
CROSS JOIN LATERAL (
    SELECT x.site, x.order_id, x.line_id, x.status, x.ctid AS tid FROM order_line x
    WHERE x.site = o.site AND x.order_id = o.order_id AND x.line_id = o.line_id
    OFFSET 0 FOR UPDATE SKIP LOCKED
) l
WHERE l.status = 'pending'
"""
_PG_CLAIM_CODES = """
SELECT w.g, c.id, c.batch_no, c.expiry_rank, c.batch_seq, CAST(c.tid AS text) AS tid
FROM unnest(CAST(:skus AS text[]), CAST(:ns AS int[]), CAST(:batches AS text[]))
  WITH ORDINALITY AS w(sku, n, batches, g)
CROSS JOIN LATERAL (
    SELECT p.id, p.batch_no, p.expiry_rank, p.batch_seq, p.ctid AS tid
    FROM pool_code p
    WHERE p.sku = w.sku AND p.status = 'in_stock' AND p.expiry_rank >= :today
      AND p.batch_no = ANY(string_to_array(w.batches, ','))
      AND p.id <> ALL(CAST(:exclude AS bigint[]))
    ORDER BY p.expiry_rank, p.batch_seq, p.id
    LIMIT w.n
    FOR UPDATE OF p SKIP LOCKED
) c
"""
_SQLITE_CLAIM_CODES = """
SELECT id, batch_no, expiry_rank, batch_seq
FROM pool_code
WHERE sku = :sku AND status = 'in_stock' AND expiry_rank >= :today
  AND batch_no IN (SELECT value FROM json_each(:batches))
  AND id NOT IN (SELECT value FROM json_each(:exclude))
ORDER BY expiry_rank, batch_seq, id
LIMIT :n
"""
_PG_WRITE_ALLOCATIONS = """
WITH lines AS MATERIALIZED (
    SELECT * FROM unnest(CAST(:sites AS text[]), CAST(:orders AS text[]),
                         CAST(:lines AS text[]), CAST(:skus AS text[]),
                         CAST(:modes AS text[]), CAST(:keys AS text[]),
                         CAST(:refs AS text[]), CAST(:line_tids AS tid[]),
                         CAST(:first AS int[]), CAST(:count AS int[]))
      WITH ORDINALITY AS l(site, order_id, line_id, sku, mode, key, ref, tid, first, count, n)
), codes AS (
    -- this transaction holds these rows (claimed FOR UPDATE): their ctid cannot change, so
    -- each is reached directly; its id and status are checked again all the same
    SELECT c.id, c.tid, c.unit, (CAST(:refs AS text[]))[c.n] AS ref
    FROM unnest(CAST(:ids AS bigint[]), CAST(:code_tids AS tid[]), CAST(:code_line AS int[]),
                CAST(:units AS int[])) AS c(id, tid, n, unit)
), upd AS (
    UPDATE pool_code p
    SET status = 'allocated', line_ref = codes.ref, unit = codes.unit,
        allocated_at = :now, updated_at = :now
    FROM codes
    WHERE p.ctid = codes.tid AND p.id = codes.id AND p.status = 'in_stock'
    RETURNING p.id, p.line_ref, p.unit
), ev AS (
    INSERT INTO code_event (code_id, at, actor, system, action, from_status, to_status,
                            detail)
    SELECT id, :now, :actor, :system, 'allocate', 'in_stock', 'allocated',
           line_ref || ' unit ' || unit
    FROM upd
    RETURNING 1
), done AS (
    -- the lines too are held by this transaction (claimed or locked FOR UPDATE)
    UPDATE order_line o
    SET status = 'allocated', allocated_at = :now, updated_at = :now, held_reason = NULL,
        issuance_mode = lines.mode
    FROM lines
    WHERE o.ctid = lines.tid AND o.site = lines.site AND o.order_id = lines.order_id
      AND o.line_id = lines.line_id AND o.status = 'pending'
    RETURNING 1
), sent AS (
    -- the payload as state.types.JSONText writes it: sorted keys, no spaces
    INSERT INTO outbox (target, operation, idempotency_key, entity_type, entity_key, payload,
                        status, attempts, created_at)
    SELECT 'wallet:' || site, :operation, key, :entity_type, ref,
           '{"code_ids":['
             || array_to_string((CAST(:ids AS bigint[]))[first:first + count - 1], ',')
             || '],"line_id":' || to_json(line_id)::text
             || ',"order_id":' || to_json(order_id)::text
             || ',"site":' || to_json(site)::text || ',"sku":' || to_json(sku)::text || '}',
           'pending', 0, :now
    FROM lines
    WHERE mode = 'code_pool'
    ON CONFLICT (target, idempotency_key) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM upd) AS codes, (SELECT count(*) FROM ev) AS events,
       (SELECT count(*) FROM done) AS lines, (SELECT count(*) FROM sent) AS deliveries
"""
_SQLITE_ALLOCATE_CODE = """
UPDATE pool_code
SET status = 'allocated', line_ref = :ref, unit = :unit, allocated_at = :now, updated_at = :now
WHERE id = :id AND status = 'in_stock'
"""
_SQLITE_LINE_ALLOCATED = """
UPDATE order_line
SET status = 'allocated', allocated_at = :now, updated_at = :now, held_reason = NULL,
    issuance_mode = :mode
WHERE site = :site AND order_id = :order_id AND line_id = :line_id AND status = 'pending'
"""
_LINE_HELD = """
UPDATE order_line SET status = 'held', held_reason = :reason, updated_at = :now
WHERE site = :site AND order_id = :order_id AND line_id = :line_id AND status = 'pending'
"""
_ORDER_HELD_REASON = """
UPDATE sales_order SET held_reason = :reason, updated_at = :now
WHERE site = :site AND order_id = :order_id
"""
_PG_LOCK_ORDERS = """
SELECT o.site, o.order_id
FROM unnest(CAST(:sites AS text[]), CAST(:orders AS text[])) AS v(site, order_id)
CROSS JOIN LATERAL (
    SELECT x.site, x.order_id FROM sales_order x
    WHERE x.site = v.site AND x.order_id = v.order_id
    OFFSET 0 FOR UPDATE SKIP LOCKED
) o
"""
_PG_CATALOGUE = """
SELECT batch_no, sku, issuance_mode, available, expires_on, sites
FROM pool_batch
WHERE sku = ANY(CAST(:skus AS text[])) AND status = 'active'
ORDER BY seq
"""
_PG_LOCK_BATCHES = """
SELECT batch_no FROM pool_batch WHERE batch_no = ANY(CAST(:b AS text[]))
ORDER BY batch_no FOR UPDATE
"""
_PG_TAKE_FROM_BATCHES = """
UPDATE pool_batch b
SET available = b.available - v.n, unposted = b.unposted + v.n, updated_at = :now,
    status = CASE WHEN b.status = 'active' AND b.available = v.n THEN 'sold_out'
                  ELSE b.status END
FROM unnest(CAST(:b AS text[]), CAST(:n AS int[])) AS v(batch_no, n)
WHERE b.batch_no = v.batch_no AND b.available >= v.n
"""
_SQLITE_TAKE_FROM_BATCH = """
UPDATE pool_batch
SET available = available - :n, unposted = unposted + :n, updated_at = :now,
    status = CASE WHEN status = 'active' AND available = :n THEN 'sold_out' ELSE status END
WHERE batch_no = :b AND available >= :n
"""


class _Catalogue:
    """The active, unexpired batches of the chunk's SKUs, read once per chunk (no locks):
    which issuance mode a SKU sells by, which batches may sell it on a site, and what each
    batch may still sell (``budget``, its ``available``)."""

    def __init__(self, session: Session, skus: Sequence[str], today: date) -> None:
        self.batches: dict[str, list[Any]] = defaultdict(list)
        if _is_pg(session):
            rows: Iterable[Any] = _pg(session, _PG_CATALOGUE, {"skus": list(skus)})
        else:
            bt = PoolBatch.__table__
            rows = [b for part in _chunks(list(skus), IN_CHUNK) for b in session.execute(
                select(bt.c.batch_no, bt.c.sku, bt.c.issuance_mode, bt.c.available,
                       bt.c.expires_on, bt.c.sites)
                .where(bt.c.sku.in_(part), bt.c.status == BatchStatus.ACTIVE.value)
                .order_by(bt.c.seq))]
        for b in rows:
            if b.expires_on is None or b.expires_on >= today:
                self.batches[b.sku].append(b)
        self.budget: dict[str, int] = {b.batch_no: b.available
                                       for bs in self.batches.values() for b in bs}
        self._modes: dict[str, str | None] = {}
        self._eligible: dict[tuple[str, str, str], tuple[str, ...]] = {}

    def mode(self, line: _Line) -> str | None:
        if line.issuance_mode:
            return line.issuance_mode
        mode = self._modes.get(line.sku, "")
        if mode == "":
            modes = {b.issuance_mode for b in self.batches.get(line.sku, ())}
            mode = (CODE_POOL if CODE_POOL in modes
                    else API if API in modes else None)
            self._modes[line.sku] = mode
        return mode

    def eligible(self, line: _Line, mode: str) -> tuple[str, ...]:
        """The batches (FIFO order) that may sell this line's SKU on its site."""
        key = (line.sku, line.site, mode)
        found = self._eligible.get(key)
        if found is None:
            found = self._eligible[key] = tuple(
                b.batch_no for b in self.batches.get(line.sku, ())
                if b.issuance_mode == mode and b.available > 0
                and (not b.sites or line.site in b.sites.split(",")))
        return found


def _allocate_chunk(
    session: Session, report: AllocationReport, *, chunk_lines: int, max_orders: int | None,
    today: date, actor: str, system: str,
) -> tuple[int, int]:
    """One transaction: claim, plan, write. Returns (orders claimed, orders deferred)."""
    pg = _is_pg(session)
    _custom_plans(session, keyed=True)
    now = now_utc()
    today_rank = expiry_rank(today)

    # 1. whole orders, oldest first, that no other worker holds
    claimed, lines_of, deferred = _claim_orders(session, pg, chunk_lines, max_orders)
    if not claimed:
        return 0, 0
    orders = [k for k in claimed if k not in deferred]
    # an order held before carries its reason on sales_order, which success must clear: on
    # PostgreSQL take that row now, without waiting, or leave the order for a later pass
    was_held = {k for k in orders if any(line.held_reason for line in lines_of[k])}
    if was_held and pg:
        busy = was_held - _lock_orders(session, was_held)
        deferred |= busy
        was_held -= busy
        orders = [k for k in orders if k not in busy]
    if not orders:
        report.orders_deferred += len(deferred)
        return len(claimed), len(deferred)

    # 2. claim the codes the code-pool lines need, per SKU and set of batches that may sell it
    cat = _Catalogue(session, sorted({ln.sku for k in orders for ln in lines_of[k]}), today)
    groups: dict[tuple[str, tuple[str, ...]], _Group] = {}
    group_of: dict[int, _Group] = {}  # id(line) -> group
    for key in orders:
        for line in lines_of[key]:
            if cat.mode(line) != CODE_POOL:
                continue
            usable = cat.eligible(line, CODE_POOL)
            if usable:
                group = groups.get((line.sku, usable))
                if group is None:
                    group = groups[(line.sku, usable)] = _Group(line.sku, usable)
                group.demand += line.quantity
                group_of[id(line)] = group
    tids: dict[int, str] = {}
    if groups:
        tids = _claim_codes(session, pg, list(groups.values()), cat.budget, today_rank)

    # 3. plan each order, all or nothing, oldest first
    budget = cat.budget
    taken: dict[str, int] = defaultdict(int)  # batch -> units this chunk takes
    done_lines: list[tuple[_Line, str, list[int]]] = []  # (line, issuance mode, code ids)
    api_rows: list[tuple[_Line, str, int]] = []  # (line, batch, units)
    holds: dict[OrderKey, list[tuple[_Line, str | None]]] = {}
    ok_orders: list[OrderKey] = []
    counted: dict[str, int] = {}
    for key in orders:
        moved: list[tuple[_Group, int]] = []  # (group, position before)
        spent: list[tuple[str, int]] = []  # (batch, units)
        order_codes: list[tuple[_Line, list[int]]] = []
        order_api: list[tuple[_Line, list[tuple[str, int]]]] = []
        failures: dict[str, str] = {}
        busy = False
        for line in lines_of[key]:
            mode = cat.mode(line)
            if mode == CODE_POOL:
                group = group_of.get(id(line))
                if group is not None:
                    before = group.pos
                    got = _take_codes(group, line.quantity, budget, taken)
                    if got is not None:
                        moved.append((group, before))
                        spent.extend((b, 1) for _, b in got)
                        order_codes.append((line, [cid for cid, _ in got]))
                        continue
                in_stock = _sellable(session, line, group, budget, taken, today_rank, counted)
                if pg and in_stock >= line.quantity:
                    busy = True  # the stock exists, but other workers hold it right now
                failures[line.line_id] = (f"SKU {line.sku}: {line.quantity} wanted, "
                                          f"{in_stock} in stock")
            elif mode == API:
                usable = cat.eligible(line, mode)
                got_api = _take_units(usable, line.quantity, budget, taken)
                if got_api is not None:
                    spent.extend(got_api)
                    order_api.append((line, got_api))
                    continue
                left = sum(max(0, budget[b] - taken[b]) for b in usable)
                failures[line.line_id] = (f"SKU {line.sku}: {line.quantity} wanted, "
                                          f"{left} available")
            else:
                failures[line.line_id] = (f"SKU {line.sku}: {line.quantity} wanted, 0 in stock "
                                          "(no active batch sells it)")
        if failures or busy:
            for group, before in reversed(moved):
                group.pos = before
            for b, n in spent:
                taken[b] -= n
            if busy:
                deferred.add(key)
            else:
                holds[key] = [(ln, failures.get(ln.line_id)) for ln in lines_of[key]]
            continue
        ok_orders.append(key)
        for line, ids in order_codes:
            done_lines.append((line, CODE_POOL, ids))
        for line, got_api in order_api:
            api_rows.extend((line, b, n) for b, n in got_api)
            done_lines.append((line, API, []))

    # 4. a hold writes its reason on sales_order too: that row, or a later pass (PostgreSQL)
    if holds and pg:
        busy = set(holds) - _lock_orders(session, set(holds))
        for key in busy:
            del holds[key]
        deferred |= busy

    # 5. write it all in this transaction: codes with their events, lines, API allocations,
    #    deliveries, holds, batch quantities (last: their row locks are the ones others wait on)
    if done_lines:
        if pg:
            _write_allocations_pg(session, done_lines, now, actor, system, tids)
        else:
            _write_allocations_sqlite(session, done_lines, now, actor, system)
    if api_rows:
        session.execute(_insert(session, ApiAllocation.__table__), [
            {"site": ln.site, "order_id": ln.order_id, "line_id": ln.line_id, "batch_no": b,
             "sku": ln.sku, "quantity": n, "returned": 0, "at": now}
            for ln, b, n in api_rows])
    if holds:
        _write_holds(session, report, holds, now)
    if was_held:
        session.execute(_sql(_ORDER_HELD_REASON), [
            {"site": s, "order_id": o, "reason": None, "now": now} for s, o in sorted(was_held)])
    # the events are made before the batch rows are locked: from there to the commit other
    # workers wait, so only the writes themselves happen in that stretch
    events = prepare_events(session, [order_line_allocated(
        site=ln.site, order_id=ln.order_id, line_id=ln.line_id, sku=ln.sku,
        quantity=ln.quantity, issuance_mode=mode, at=now) for ln, mode, _ in done_lines])
    _take_from_batches(session, pg, {b: n for b, n in taken.items() if n > 0}, now)
    emit_events(session, events)

    report.orders_allocated += len(ok_orders)
    report.lines_allocated += len(done_lines)
    report.codes_allocated += sum(len(ids) for _, _, ids in done_lines)
    report.api_units += sum(n for _, _, n in api_rows)
    report.orders_deferred += len(deferred)
    return len(claimed), len(deferred)


def _claim_orders(
    session: Session, pg: bool, chunk_lines: int, max_orders: int | None,
) -> tuple[list[OrderKey], dict[OrderKey, list[_Line]], set[OrderKey]]:
    """Claim the oldest pending lines, then complete their orders: on PostgreSQL an order
    whose other lines another worker holds is left to a later pass (deferred)."""
    if pg:
        rows = _pg(session, _PG_CLAIM_LINES, {"n": chunk_lines}).fetchall()
    else:
        rows = session.execute(_sql(_SQLITE_CLAIM_LINES), {"n": chunk_lines}).all()
    keys: list[OrderKey] = list(dict.fromkeys((r.site, r.order_id) for r in rows))
    if max_orders is not None:
        keys = keys[:max_orders]
    if not keys:
        return [], {}, set()
    # the lines this transaction holds (PostgreSQL: with where their locked rows are)
    held: dict[tuple[str, str, str], str | None] = {
        (r.site, r.order_id, r.line_id): r.tid if pg else None for r in rows}
    if pg:
        all_rows = _pg(session, _PG_ORDER_LINES, {
            "sites": [k[0] for k in keys], "orders": [k[1] for k in keys]}).fetchall()
    else:
        ol = OrderLine.__table__
        all_rows = []
        for part in _chunks(keys, IN_CHUNK):
            all_rows.extend(session.execute(
                select(ol.c.site, ol.c.order_id, ol.c.line_id, ol.c.sku, ol.c.quantity,
                       ol.c.issuance_mode, ol.c.held_reason)
                .where(tuple_(ol.c.site, ol.c.order_id).in_(part),
                       ol.c.status == LineStatus.PENDING.value)).all())
    missing = [(r.site, r.order_id, r.line_id) for r in all_rows
               if (r.site, r.order_id, r.line_id) not in held]
    if missing and pg:
        # lines past the LIMIT (or added since): take them unless another worker holds them
        got = _pg(session, _PG_LOCK_LINES, {
            "sites": [m[0] for m in missing], "orders": [m[1] for m in missing],
            "lines": [m[2] for m in missing]}).fetchall()
        held.update(((g.site, g.order_id, g.line_id), g.tid) for g in got)
    else:
        held.update((m, None) for m in missing)  # SQLite: this transaction holds the write lock
    lines_of: dict[OrderKey, list[_Line]] = defaultdict(list)
    deferred: set[OrderKey] = set()
    for r in all_rows:
        key = (r.site, r.order_id)
        ident = (r.site, r.order_id, r.line_id)
        if ident not in held:
            deferred.add(key)
        lines_of[key].append(_Line(r.site, r.order_id, r.line_id, r.sku, r.quantity,
                                   r.issuance_mode, r.held_reason, held.get(ident)))
    # an order none of whose lines is still pending (allocated meanwhile) drops out
    keys = [k for k in keys if k in lines_of]
    return keys, lines_of, deferred


def _lock_orders(session: Session, keys: set[OrderKey]) -> set[OrderKey]:
    """Lock these sales orders where no one else holds them; returns the ones locked."""
    ordered = sorted(keys)
    return {(r.site, r.order_id) for r in _pg(session, _PG_LOCK_ORDERS, {
        "sites": [k[0] for k in ordered], "orders": [k[1] for k in ordered]})}


def _claim_codes(
    session: Session, pg: bool, groups: list[_Group], budget: Mapping[str, int],
    today_rank: int,
) -> dict[int, str]:
    """Claim up to each group's demand of in-stock codes, in allocation order.

    Normally one statement for the whole chunk. Where a batch holds more codes than it may
    still sell (its ``available`` is lower, e.g. after the ERP wrote units off), a further
    round claims from the group's other batches. Returns (PostgreSQL) where each claimed
    code's locked row is: code id -> ctid."""
    found: dict[int, list[tuple[int, int, int, str]]] = defaultdict(list)
    tids: dict[int, str] = {}
    requests = [(g, g.batches, g.demand) for g in groups]
    exclude: list[int] = []
    for _round in range(4):
        if not requests:
            break
        before = {id(g): len(found[id(g)]) for g, _, _ in requests}
        if pg:
            result = _pg(session, _PG_CLAIM_CODES, {
                "skus": [g.sku for g, _, _ in requests], "ns": [n for _, _, n in requests],
                "batches": [",".join(bs) for _, bs, _ in requests],
                "exclude": exclude, "today": today_rank})
            for g_index, cid, batch_no, rank, seq, tid in result:
                found[id(requests[g_index - 1][0])].append((rank, seq, cid, batch_no))
                exclude.append(cid)
                tids[cid] = tid
        else:
            for g, bs, n in requests:
                result = session.execute(_sql(_SQLITE_CLAIM_CODES), {
                    "sku": g.sku, "n": n, "batches": json.dumps(list(bs)),
                    "exclude": json.dumps(exclude), "today": today_rank})
                for cid, batch_no, rank, seq in result:
                    found[id(g)].append((rank, seq, cid, batch_no))
                    exclude.append(cid)
        again = []
        for g, _, asked in requests:
            if len(found[id(g)]) - before[id(g)] < asked:
                continue  # that is all there is (that this worker may take)
            per_batch: dict[str, int] = defaultdict(int)
            for _, _, _, b in found[id(g)]:
                per_batch[b] += 1
            usable = sum(min(n, budget.get(b, 0)) for b, n in per_batch.items())
            roomy = tuple(b for b in g.batches if per_batch[b] < budget.get(b, 0))
            if usable < g.demand and roomy:
                again.append((g, roomy, g.demand - usable))
        requests = again
    for g in groups:
        rows = found[id(g)]
        rows.sort()
        g.codes = [(cid, b) for _, _, cid, b in rows]
    return tids


def _take_codes(
    group: _Group, quantity: int, budget: Mapping[str, int], taken: dict[str, int],
) -> list[tuple[int, str]] | None:
    """The next ``quantity`` claimed codes whose batch may still sell, or None."""
    out: list[tuple[int, str]] = []
    pos = group.pos
    codes = group.codes
    while len(out) < quantity and pos < len(codes):
        cid, b = codes[pos]
        pos += 1
        if taken[b] < budget.get(b, 0):
            taken[b] += 1
            out.append((cid, b))
    if len(out) < quantity:
        for _, b in out:
            taken[b] -= 1
        return None
    group.pos = pos
    return out


def _take_units(
    usable: Sequence[str], quantity: int, budget: Mapping[str, int], taken: dict[str, int],
) -> list[tuple[str, int]] | None:
    """``quantity`` API units from the batches in FIFO order, or None if they fall short."""
    out: list[tuple[str, int]] = []
    need = quantity
    for b in usable:
        free = budget[b] - taken[b]
        if free <= 0:
            continue
        n = min(free, need)
        out.append((b, n))
        need -= n
        if not need:
            break
    if need:
        return None
    for b, n in out:
        taken[b] += n
    return out


def _sellable(
    session: Session, line: _Line, group: _Group | None, budget: Mapping[str, int],
    taken: Mapping[str, int], today_rank: int, counted: dict[str, int],
) -> int:
    """How many codes the line's SKU could still sell on its site after this chunk's earlier
    orders, counting codes other workers hold (read without locks, only after a shortfall)."""
    if group is None:
        return 0
    key = f"{line.sku}|{','.join(group.batches)}"
    count = counted.get(key)
    if count is None:
        pc = PoolCode.__table__
        rows = session.execute(
            select(pc.c.batch_no, func.count()).where(
                pc.c.sku == line.sku, _IN_STOCK,
                pc.c.expiry_rank >= today_rank).group_by(pc.c.batch_no)).all()
        per_batch = dict(rows)
        count = counted[key] = sum(min(per_batch.get(b, 0), budget.get(b, 0))
                                   for b in group.batches)
    return max(0, count - sum(taken.get(b, 0) for b in group.batches))


def _write_allocations_pg(
    session: Session, done: list[tuple[_Line, str, list[int]]], now: datetime, actor: str,
    system: str, tids: Mapping[int, str],
) -> None:
    """Codes, their events, lines and deliveries in one statement: the references, event
    details and delivery payloads are put together by the database from the ids. Codes and
    lines are reached by where this transaction locked them (``tids``, ``_Line.tid``)."""
    code_ids: list[int] = []
    code_line: list[int] = []
    units: list[int] = []
    first: list[int] = []
    for n, (_, _, ids) in enumerate(done, start=1):
        first.append(len(code_ids) + 1)
        code_ids.extend(ids)
        code_line.extend([n] * len(ids))
        units.extend(range(1, len(ids) + 1))
    row = _pg(session, _PG_WRITE_ALLOCATIONS, {
        "sites": [ln.site for ln, _, _ in done], "orders": [ln.order_id for ln, _, _ in done],
        "lines": [ln.line_id for ln, _, _ in done], "skus": [ln.sku for ln, _, _ in done],
        "modes": [m for _, m, _ in done],
        "keys": [delivery_key(ln.site, ln.order_id, ln.line_id) for ln, _, _ in done],
        "refs": [line_ref(ln.site, ln.order_id, ln.line_id) for ln, _, _ in done],
        "line_tids": [ln.tid for ln, _, _ in done],
        "first": first, "count": [len(ids) for _, _, ids in done],
        "ids": code_ids, "code_tids": [tids[cid] for cid in code_ids],
        "code_line": code_line, "units": units, "now": now,
        "actor": actor, "system": system, "operation": DELIVERY_OPERATION,
        "entity_type": LINE_ENTITY}).fetchone()
    deliveries = sum(1 for _, m, _ in done if m == CODE_POOL)
    _check_written(len(code_ids), row.codes, len(done), row.lines, deliveries, row.deliveries)


def _check_written(codes: int, codes_done: int, lines: int, lines_done: int, deliveries: int,
                   deliveries_done: int) -> None:
    if codes_done != codes:
        raise RuntimeError(f"allocation claimed {codes} codes but changed {codes_done}: "
                           "the claim is broken; nothing committed")
    if lines_done != lines:
        raise RuntimeError(f"allocation planned {lines} lines but changed {lines_done}: "
                           "nothing committed")
    if deliveries_done != deliveries:
        raise RuntimeError(f"{deliveries - deliveries_done} of {deliveries} deliveries were "
                           "already in the outbox (their lines were allocated before); "
                           "nothing committed")


def _write_allocations_sqlite(
    session: Session, done: list[tuple[_Line, str, list[int]]], now: datetime, actor: str,
    system: str,
) -> None:
    code_rows = [
        {"id": cid, "ref": line_ref(ln.site, ln.order_id, ln.line_id), "unit": unit,
         "now": now}
        for ln, _, ids in done for unit, cid in enumerate(ids, start=1)]
    codes_done = session.execute(_sql(_SQLITE_ALLOCATE_CODE), code_rows).rowcount \
        if code_rows else 0
    _events(session, [(r["id"], CodeStatus.IN_STOCK.value, CodeStatus.ALLOCATED.value,
                       f"{r['ref']} unit {r['unit']}") for r in code_rows],
            at=now, actor=actor, system=system, action="allocate")
    lines_done = session.execute(_sql(_SQLITE_LINE_ALLOCATED), [
        {"site": ln.site, "order_id": ln.order_id, "line_id": ln.line_id, "mode": m,
         "now": now} for ln, m, _ in done]).rowcount
    items = [
        OutboxItem(
            target=f"wallet:{ln.site}", operation=DELIVERY_OPERATION,
            idempotency_key=delivery_key(ln.site, ln.order_id, ln.line_id),
            entity_type=LINE_ENTITY, entity_key=line_ref(ln.site, ln.order_id, ln.line_id),
            payload={"site": ln.site, "order_id": ln.order_id, "line_id": ln.line_id,
                     "sku": ln.sku, "code_ids": ids})
        for ln, m, ids in done if m == CODE_POOL]
    table = OutboxMessage.__table__
    before = session.scalar(select(func.max(table.c.id))) or 0
    if items:
        session.execute(
            _insert(session, table).on_conflict_do_nothing(
                index_elements=["target", "idempotency_key"]),
            [{"target": i.target, "operation": i.operation,
              "idempotency_key": i.idempotency_key, "entity_type": i.entity_type,
              "entity_key": i.entity_key, "payload": i.payload,
              "status": OutboxStatus.PENDING.value, "attempts": 0, "created_at": now}
             for i in items])
    added = session.scalar(select(func.count()).select_from(table)
                           .where(table.c.id > before)) or 0
    _check_written(len(code_rows), codes_done, len(done), lines_done, len(items), added)


def _write_holds(
    session: Session, report: AllocationReport,
    holds: Mapping[OrderKey, list[tuple[_Line, str | None]]], now: datetime,
) -> None:
    line_rows = []
    order_rows = []
    for (site, order_id), items in sorted(holds.items()):
        reason = "; ".join(why for _, why in items if why)
        order_rows.append({"site": site, "order_id": order_id, "reason": reason[:2000],
                           "now": now})
        for ln, why in items:
            line_rows.append({"site": ln.site, "order_id": ln.order_id, "line_id": ln.line_id,
                              "reason": (why or f"held with its order: {reason}")[:1000],
                              "now": now})
        if len(report.held) < 100:
            report.held.append(HeldOrder(site, order_id, reason))
    session.execute(_sql(_LINE_HELD), line_rows)
    session.execute(_sql(_ORDER_HELD_REASON), order_rows)
    report.orders_held += len(order_rows)
    report.lines_held += len(line_rows)


def _take_from_batches(session: Session, pg: bool, taken: Mapping[str, int], now: datetime,
                       ) -> None:
    """Lower ``available`` where the chunk sold, only where enough is left (else redo)."""
    if not taken:
        return
    names = sorted(taken)
    if pg:
        _pg(session, _PG_LOCK_BATCHES, {"b": names})
        changed = _pg(session, _PG_TAKE_FROM_BATCHES, {
            "b": names, "n": [taken[b] for b in names], "now": now}).rowcount
    else:
        changed = session.execute(_sql(_SQLITE_TAKE_FROM_BATCH), [
            {"b": b, "n": taken[b], "now": now} for b in names]).rowcount
    if changed != len(names):
        raise _BudgetConflict(names)


# delivery -----------------------------------------------------------------------------------
def codes_for_delivery(
    session: Session, code_ids: Sequence[int], keyring: Keyring,
) -> list[tuple[str, str | None, date | None]]:
    """The codes to send, decrypted: ``(code, pin, expires_on)`` in the order of ``code_ids``.

    The one place that may see codes in clear. Refuses (``CodeNotDeliverable``) codes that are
    not allocated or sold, so a refunded or replaced code is never sent.
    """
    pc, bt = PoolCode.__table__, PoolBatch.__table__
    found: dict[int, Any] = {}
    for part in _chunks(list(dict.fromkeys(code_ids)), IN_CHUNK):
        for row in session.execute(
                select(pc.c.id, pc.c.code_enc, pc.c.pin_enc, pc.c.status, pc.c.expiry_rank,
                       pc.c.allocated_at, bt.c.expiry_type, bt.c.expiry_days)
                .join(bt, bt.c.batch_no == pc.c.batch_no).where(pc.c.id.in_(part))):
            found[row.id] = row
    wrong = [cid for cid in code_ids if cid not in found
             or found[cid].status not in (CodeStatus.ALLOCATED, CodeStatus.SOLD)]
    if wrong:
        raise CodeNotDeliverable(
            f"codes {wrong[:20]} are not allocated or sold (refunded, replaced or unknown); "
            "nothing decrypted")
    out = []
    for cid in code_ids:
        row = found[cid]
        expires = rank_to_date(row.expiry_rank)
        if (expires is None and row.expiry_type == ExpiryType.DAYS_AFTER_SALE
                and row.expiry_days and row.allocated_at):
            expires = row.allocated_at.date() + timedelta(days=row.expiry_days)
        out.append((keyring.decrypt(row.code_enc),
                    None if row.pin_enc is None else keyring.decrypt(row.pin_enc), expires))
    return out


def mark_delivered(
    session: Session, site: str, order_id: str, line_id: str, code_ids: Sequence[int], *,
    actor: str = "vouchflow", system: str | None = None,
) -> int:
    """The site accepted these codes for this line: allocated -> sold (with events).

    Idempotent: codes already sold are left as they are. Returns codes changed."""
    ref = line_ref(site, order_id, line_id)
    pc = PoolCode.__table__
    now = now_utc()
    changed: list[int] = []
    for part in _chunks(sorted(set(code_ids)), IN_CHUNK):
        result = session.execute(
            update(pc).where(pc.c.id.in_(part), pc.c.line_ref == ref,
                             pc.c.status == CodeStatus.ALLOCATED.value)
            .values(status=CodeStatus.SOLD.value, updated_at=now).returning(pc.c.id))
        changed.extend(r[0] for r in result)
    _events(session, [(cid, CodeStatus.ALLOCATED.value, CodeStatus.SOLD.value, ref)
                      for cid in sorted(changed)],
            at=now, actor=actor, system=system or f"wallet:{site}", action="deliver")
    if changed:
        emit_events(session, [order_line_delivered(site=site, order_id=order_id,
                                                   line_id=line_id, codes=len(changed), at=now)])
    return len(changed)


# refunds ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RefundReport:
    refund_id: str
    applied: bool
    """False when this refund id had been applied before (nothing changed this time)."""
    to_stock: int = 0
    blocked: int = 0
    api_returned: int = 0
    code_ids: tuple[int, ...] = ()


def refund(
    session: Session, site: str, order_id: str, line_id: str, quantity: int, *,
    delivered: bool, refund_id: str, actor: str = "vouchflow", system: str | None = None,
) -> RefundReport:
    """Refund ``quantity`` units of an allocated line, once per ``refund_id``.

    Code-pool lines: codes never delivered to the customer (``delivered=False``) go back to
    stock (line link cleared, the batch's available +n) and a pending delivery of the line is
    replaced by one without them; delivered codes become ``blocked`` (they are bearer value in
    someone's hands; the supplier return is a separate step). The line's highest units go
    first. API lines: the units go back to the batches they came from, newest batch first,
    whether or not the supplier's code was delivered (the supplier bills sales by the daily
    purchase order, which counts the refund out).
    """
    if quantity <= 0:
        raise PoolError(f"refund {refund_id}: quantity must be positive, got {quantity}")
    now = now_utc()
    system = system or f"wallet:{site}"
    lr, ol = LineRefund.__table__, OrderLine.__table__
    inserted = session.execute(
        _insert(session, lr).on_conflict_do_nothing(index_elements=["refund_id"])
        .returning(lr.c.refund_id),
        {"refund_id": refund_id, "site": site, "order_id": order_id, "line_id": line_id,
         "quantity": quantity, "delivered": delivered, "result": None, "at": now}).first()
    if inserted is None:
        prior = session.execute(select(lr).where(lr.c.refund_id == refund_id)).first()
        if (prior.site, prior.order_id, prior.line_id) != (site, order_id, line_id):
            raise PoolError(f"refund {refund_id} was applied to another line "
                            f"({prior.site}/{prior.order_id}/{prior.line_id})")
        res = prior.result or {}
        return RefundReport(refund_id=refund_id, applied=False,
                            to_stock=res.get("to_stock", 0), blocked=res.get("blocked", 0),
                            api_returned=res.get("api_returned", 0),
                            code_ids=tuple(res.get("code_ids", ())))
    query = select(ol).where(ol.c.site == site, ol.c.order_id == order_id,
                             ol.c.line_id == line_id)
    if _is_pg(session):
        query = query.with_for_update()
    line = session.execute(query).first()
    if line is None or line.status != LineStatus.ALLOCATED:
        state = "unknown" if line is None else line.status
        raise PoolError(f"refund {refund_id}: line {site}/{order_id}/{line_id} is {state}, "
                        "only allocated lines are refunded")
    left = line.quantity - line.refunded
    if quantity > left:
        raise PoolError(f"refund {refund_id}: {quantity} units asked but line "
                        f"{site}/{order_id}/{line_id} has {left} not yet refunded")
    ref = line_ref(site, order_id, line_id)
    to_stock = blocked = api_returned = 0
    code_ids: list[int] = []
    back: dict[str, int] = defaultdict(int)  # batch -> units back to available
    if line.issuance_mode == IssuanceMode.API:
        aa, bt = ApiAllocation.__table__, PoolBatch.__table__
        rows = session.execute(
            select(aa.c.batch_no, aa.c.quantity, aa.c.returned)
            .join(bt, bt.c.batch_no == aa.c.batch_no)
            .where(aa.c.site == site, aa.c.order_id == order_id, aa.c.line_id == line_id)
            .order_by(bt.c.seq.desc())).all()
        need = quantity
        for row in rows:
            n = min(need, row.quantity - row.returned)
            if n <= 0:
                continue
            session.execute(update(aa).where(
                aa.c.site == site, aa.c.order_id == order_id, aa.c.line_id == line_id,
                aa.c.batch_no == row.batch_no).values(returned=aa.c.returned + n))
            back[row.batch_no] += n
            need -= n
            if not need:
                break
        api_returned = quantity - need
    else:
        pc = PoolCode.__table__
        query = (select(pc.c.id, pc.c.batch_no, pc.c.status, pc.c.unit)
                 .where(pc.c.line_ref == ref,
                        pc.c.status.in_([CodeStatus.ALLOCATED.value, CodeStatus.SOLD.value]))
                 .order_by(pc.c.unit.desc()).limit(quantity))
        if _is_pg(session):
            query = query.with_for_update()
        codes = session.execute(query).all()
        if len(codes) < quantity:
            raise PoolError(f"refund {refund_id}: line {site}/{order_id}/{line_id} holds "
                            f"{len(codes)} refundable codes, {quantity} asked")
        code_ids = [c.id for c in codes]
        target = CodeStatus.BLOCKED if delivered else CodeStatus.IN_STOCK
        values: dict[str, Any] = {"status": target.value, "updated_at": now}
        if not delivered:
            values.update(line_ref=None, unit=None, allocated_at=None)
        session.execute(update(pc).where(pc.c.id.in_(code_ids)).values(**values))
        _events(session, [(c.id, c.status, target.value, f"refund {refund_id} of {ref}")
                          for c in codes], at=now, actor=actor, system=system, action="refund")
        if delivered:
            blocked = len(codes)
        else:
            to_stock = len(codes)
            for c in codes:
                back[c.batch_no] += 1
            _replace_pending_delivery(session, site, order_id, line_id, ref, refund_id,
                                      set(code_ids))
    if back:
        _return_to_batches(session, back, now)
    session.execute(update(ol).where(
        ol.c.site == site, ol.c.order_id == order_id, ol.c.line_id == line_id)
        .values(refunded=ol.c.refunded + quantity, updated_at=now))
    result = {"to_stock": to_stock, "blocked": blocked, "api_returned": api_returned,
              "code_ids": code_ids}
    session.execute(update(lr).where(lr.c.refund_id == refund_id).values(result=result))
    return RefundReport(refund_id=refund_id, applied=True, to_stock=to_stock, blocked=blocked,
                        api_returned=api_returned, code_ids=tuple(code_ids))


def _return_to_batches(session: Session, back: Mapping[str, int], now: datetime) -> None:
    bt = PoolBatch.__table__
    names = sorted(back)
    if _is_pg(session):
        _pg(session, _PG_LOCK_BATCHES, {"b": names})
    for b in names:  # a handful of batches per refund
        session.execute(update(bt).where(bt.c.batch_no == b).values(
            available=bt.c.available + back[b], unposted=bt.c.unposted - back[b],
            updated_at=now,
            status=func.coalesce(func.nullif(bt.c.status, BatchStatus.SOLD_OUT.value),
                                 BatchStatus.ACTIVE.value)))


def _replace_pending_delivery(
    session: Session, site: str, order_id: str, line_id: str, ref: str, refund_id: str,
    removed: set[int],
) -> None:
    """A delivery of the line not yet sent must not carry codes that went back to stock."""
    ob = OutboxMessage.__table__
    target = f"wallet:{site}"
    pending = session.execute(
        select(ob.c.id, ob.c.payload, ob.c.idempotency_key).where(
            ob.c.target == target, ob.c.entity_type == LINE_ENTITY, ob.c.entity_key == ref,
            ob.c.status == OutboxStatus.PENDING.value)).all()
    if not pending:
        return
    newest = max(pending, key=lambda r: r.id)
    keep = [cid for cid in newest.payload.get("code_ids", []) if cid not in removed]
    if keep:
        suffix = _KEY_UNSAFE.sub("_", refund_id)[:40]
        enqueue(session, [OutboxItem(
            target=target, operation=DELIVERY_OPERATION,
            idempotency_key=f"{newest.idempotency_key[:200]}-r{suffix}",
            entity_type=LINE_ENTITY, entity_key=ref,
            payload={**newest.payload, "code_ids": keep})])
    else:
        session.execute(update(ob).where(ob.c.id.in_([r.id for r in pending]))
                        .values(status=OutboxStatus.SUPERSEDED.value))


# operators ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LineState:
    line_id: str
    sku: str
    quantity: int
    status: str
    issuance_mode: str | None
    held_reason: str | None
    refunded: int


@dataclass(frozen=True)
class OrderState:
    site: str
    order_id: str
    status: str
    created_at: datetime
    held_reason: str | None
    lines: tuple[LineState, ...]


def order_status(
    session: Session, *, site: str | None = None, order_id: str | None = None,
    held_only: bool = False, limit: int = 100,
) -> list[OrderState]:
    """Orders and where their lines stand; ``held_only`` lists orders on hold, oldest first."""
    so, ol = SalesOrder.__table__, OrderLine.__table__
    query = select(so.c.site, so.c.order_id, so.c.status, so.c.created_at, so.c.held_reason)
    if site is not None:
        query = query.where(so.c.site == site)
    if order_id is not None:
        query = query.where(so.c.order_id == order_id)
    if held_only:
        held = select(ol.c.site, ol.c.order_id).where(
            ol.c.status == LineStatus.HELD.value).distinct().subquery()
        query = query.join(held, (held.c.site == so.c.site) & (held.c.order_id == so.c.order_id))
    heads = session.execute(query.order_by(so.c.created_at, so.c.site, so.c.order_id)
                            .limit(limit)).all()
    if not heads:
        return []
    keys = [(h.site, h.order_id) for h in heads]
    lines: dict[tuple[str, str], list[LineState]] = defaultdict(list)
    for part in _chunks(keys, IN_CHUNK):
        for r in session.execute(select(ol).where(tuple_(ol.c.site, ol.c.order_id).in_(part))
                                 .order_by(ol.c.line_id)):
            lines[(r.site, r.order_id)].append(LineState(
                r.line_id, r.sku, r.quantity, r.status, r.issuance_mode, r.held_reason,
                r.refunded))
    return [OrderState(h.site, h.order_id, h.status, h.created_at, h.held_reason,
                       tuple(lines[(h.site, h.order_id)])) for h in heads]


# inbound events -----------------------------------------------------------------------------
def record_inbound(session: Session, events: Iterable[Mapping[str, Any]]) -> int:
    """Keep webhook events by id (``event_id``, ``site``, ``type``, ``created_at``,
    ``payload``); a repeated delivery is dropped. Returns events new to vouchflow."""
    now = now_utc()
    rows = list({e["event_id"]: {**e, "received_at": now, "processed_at": None}
                 for e in events}.values())
    added = 0
    ie = InboundEvent.__table__
    for part in _chunks(rows, IN_CHUNK):
        stmt = _insert(session, ie).on_conflict_do_nothing(index_elements=["event_id"]) \
            .returning(ie.c.event_id)
        added += len(session.execute(stmt, list(part)).all())
    return added


def unprocessed_inbound(session: Session, limit: int = 1000) -> list[Any]:
    """Events not processed yet, in the order the sites created them."""
    ie = InboundEvent.__table__
    return list(session.execute(select(ie).where(ie.c.processed_at.is_(None))
                                .order_by(ie.c.created_at, ie.c.event_id).limit(limit)))


def mark_inbound_processed(session: Session, event_ids: Sequence[str]) -> None:
    ie = InboundEvent.__table__
    now = now_utc()
    for part in _chunks(list(event_ids), IN_CHUNK):
        session.execute(update(ie).where(ie.c.event_id.in_(part)).values(processed_at=now))
