"""The state tables. Each says what part of "resume without duplicates" it carries."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from state.types import JSONText, UTCDateTime


def _ts(**kw: Any) -> Any:
    return Field(sa_column=Column(UTCDateTime(), **kw))


class Watermark(SQLModel, table=True):
    """How far a flow has read a source, per scope (a site, a record type, or '')."""

    __tablename__ = "watermark"

    flow: str = Field(primary_key=True, max_length=64)
    source: str = Field(primary_key=True, max_length=64)
    scope: str = Field(primary_key=True, max_length=128, default="")
    value: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class Xref(SQLModel, table=True):
    """Which record of an external system is which canonical entity."""

    __tablename__ = "xref"
    __table_args__ = (
        UniqueConstraint("system", "entity_type", "external_id", name="uq_xref_external"),
        Index("ix_xref_canonical", "system", "entity_type", "canonical_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    system: str = Field(max_length=64)
    entity_type: str = Field(max_length=64)
    external_id: str = Field(max_length=255)
    canonical_id: str = Field(max_length=255)
    updated_at: datetime = _ts(nullable=False)


class Fingerprint(SQLModel, table=True):
    """The content hash of what a target last confirmed, so unchanged records are skipped."""

    __tablename__ = "fingerprint"

    target: str = Field(primary_key=True, max_length=128)
    entity_type: str = Field(primary_key=True, max_length=64)
    entity_key: str = Field(primary_key=True, max_length=255)
    digest: str = Field(max_length=64)
    updated_at: datetime = _ts(nullable=False)


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    SUPERSEDED = "superseded"
    FAILED = "failed"
    """Gave up after the bounded attempts; a dead letter holds the reason."""


class OutboxMessage(SQLModel, table=True):
    """A write owed to another system, keyed by the idempotency key the target will see.

    Written in the same transaction as the state change it announces; delivery marks it sent.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("target", "idempotency_key", name="uq_outbox_key"),
        Index("ix_outbox_pending", "target", "status", "id"),
        Index("ix_outbox_entity", "target", "entity_type", "entity_key", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    target: str = Field(max_length=128)
    operation: str = Field(max_length=64)
    idempotency_key: str = Field(max_length=255)
    entity_type: str = Field(max_length=64)
    entity_key: str = Field(max_length=255)
    payload: Any = Field(sa_column=Column(JSONText(), nullable=False))
    status: str = Field(default=OutboxStatus.PENDING, max_length=16)
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    last_error: str | None = Field(default=None, sa_column=Column(String(2000)))
    response: Any = Field(default=None, sa_column=Column(JSONText(), nullable=True))
    created_at: datetime = _ts(nullable=False)
    sent_at: datetime | None = _ts(nullable=True)


class DeadLetterStatus(StrEnum):
    OPEN = "open"
    REPLAYED = "replayed"
    RESOLVED = "resolved"


class DeadLetter(SQLModel, table=True):
    """A record that could not be processed, kept with its reason until someone acts.

    One row per (flow, source, entity): seeing the same bad record again bumps ``occurrences``
    and ``last_seen`` instead of adding a row, so re-runs do not inflate the count.
    """

    __tablename__ = "dead_letter"
    __table_args__ = (
        UniqueConstraint("flow", "source", "entity_type", "entity_key", name="uq_dead_letter"),
        Index("ix_dead_letter_status", "status", "source"),
    )

    id: int | None = Field(default=None, primary_key=True)
    flow: str = Field(max_length=64)
    source: str = Field(max_length=64)
    entity_type: str = Field(max_length=64)
    entity_key: str = Field(max_length=255)
    reason: str = Field(sa_column=Column(String(4000), nullable=False))
    payload: Any = Field(sa_column=Column(JSONText(), nullable=True))
    status: str = Field(default=DeadLetterStatus.OPEN, max_length=16)
    first_seen: datetime = _ts(nullable=False)
    last_seen: datetime = _ts(nullable=False)
    occurrences: int = Field(default=1, sa_column=Column(Integer, nullable=False, default=1))
    replay_count: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    last_replayed_at: datetime | None = _ts(nullable=True)


class LedgerStatus(StrEnum):
    STARTED = "started"
    DONE = "done"
    FAILED = "failed"


class RunLedger(SQLModel, table=True):
    """What each run did, step by step: the record a retry reads to skip finished work."""

    __tablename__ = "run_ledger"
    __table_args__ = (
        UniqueConstraint("flow", "run_key", "step", name="uq_run_ledger_step"),
        Index("ix_run_ledger_flow", "flow", "started_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    flow: str = Field(max_length=64)
    run_key: str = Field(max_length=128)
    step: str = Field(max_length=255)
    status: str = Field(default=LedgerStatus.STARTED, max_length=16)
    counts: Any = Field(default=None, sa_column=Column(JSONText(), nullable=True))
    detail: str | None = Field(default=None, sa_column=Column(String(4000)))
    started_at: datetime = _ts(nullable=False)
    finished_at: datetime | None = _ts(nullable=True)


ALL_TABLES = [Watermark, Xref, Fingerprint, OutboxMessage, DeadLetter, RunLedger]


# code pool ----------------------------------------------------------------------------------
# vouchflow is the operational truth for what may be sold (``available``) and for which code
# went where. The functions that keep these tables consistent live in ``state.pool``.

_SCALE = Decimal("0.0001")
NO_EXPIRY_RANK = 2147483647
"""``pool_code.expiry_rank`` of a code that never expires: it sorts after every real date."""


class ExactDecimal(TypeDecorator[Decimal]):
    """Money and unit costs: NUMERIC(18,4) on PostgreSQL, exact text on SQLite.

    SQLite's NUMERIC affinity would store a Decimal as a binary float; text keeps every digit
    (the amounts are only compared and summed in Python, never in SQL, on SQLite). A value
    with more than four decimals is refused rather than rounded, on both databases.
    """

    impl = Numeric(18, 4)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(18, 4))

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        value = value if isinstance(value, Decimal) else Decimal(str(value))
        exact = value.quantize(_SCALE)
        if exact != value:
            raise ValueError(f"{value} has more than 4 decimals")
        return str(exact) if dialect.name == "sqlite" else exact

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))


def _bigint_pk() -> Any:
    # SQLite only auto-numbers an INTEGER PRIMARY KEY (the rowid); BIGINT elsewhere.
    return Field(default=None, sa_column=Column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True))


class PoolBatch(SQLModel, table=True):
    """One purchase receipt's batch, with the quantities that say what may still be sold.

    ``available`` (what may still be sold) drops at the moment of sale and rises only when a
    sold unit comes back to stock. ``remaining`` is the ERP's book quantity. ``unposted`` is
    the signed number of units vouchflow has moved that the ERP has not booked yet (sales +n,
    refunds to stock -n), so ``0 <= available <= remaining - unposted`` holds at all times and,
    for a code-pool batch, ``available`` never exceeds its codes in stock.
    """

    __tablename__ = "pool_batch"
    __table_args__ = (
        Index("ix_pool_batch_sku", "sku", "status"),
        UniqueConstraint("seq", name="uq_pool_batch_seq"),
        CheckConstraint("available >= 0", name="ck_pool_batch_available"),
    )

    batch_no: str = Field(primary_key=True, max_length=64)
    sku: str = Field(max_length=64)
    issuance_mode: str = Field(max_length=16)
    quantity: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    available: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    remaining: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    unposted: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    status: str = Field(max_length=16)
    unit_cost: Decimal = Field(sa_column=Column(ExactDecimal(), nullable=False))
    currency: str = Field(max_length=3)
    expiry_type: str = Field(max_length=16)
    expires_on: date | None = Field(default=None, sa_column=Column(Date, nullable=True))
    expiry_days: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    purchase_order: str | None = Field(default=None, sa_column=Column(String(64)))
    sites: str = Field(default="", max_length=1000)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    received_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)
    quota_read: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    """``updated_at`` (as text) as the last inventory plan that succeeded read it (see
    ``state.catalog.quota_unread``)."""


class PoolCode(SQLModel, table=True):
    """One voucher code: bearer value, so only its keyed hash, ciphertext and last 4 are kept.

    ``expiry_rank`` and ``batch_seq`` are copies that let one index serve the allocation order
    (earliest expiry, then oldest batch, then id) without a join. ``(line_ref, unit)`` names the
    order line and unit a code went to; its uniqueness is the backstop against a double sale.
    """

    __tablename__ = "pool_code"
    __table_args__ = (
        UniqueConstraint("code_hash", name="uq_pool_code_hash"),
        Index("uq_pool_code_line_unit", "line_ref", "unit", unique=True,
              postgresql_where=text("line_ref IS NOT NULL"),
              sqlite_where=text("line_ref IS NOT NULL")),
        Index("ix_pool_code_in_stock", "sku", "expiry_rank", "batch_seq", "id",
              postgresql_where=text("status = 'in_stock'"),
              sqlite_where=text("status = 'in_stock'")),
    )

    id: int | None = _bigint_pk()
    code_hash: str = Field(max_length=64)
    code_enc: str = Field(sa_column=Column(Text, nullable=False))
    pin_enc: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    last4: str = Field(max_length=4)
    sku: str = Field(max_length=64)
    batch_no: str = Field(sa_column=Column(String(64), nullable=False))
    """The batch (``pool_batch``): checked by triggers once per statement, not by a foreign
    key that PostgreSQL checks with a query per row (migration 0009)."""
    status: str = Field(max_length=16)
    expiry_rank: int = Field(sa_column=Column(Integer, nullable=False))
    batch_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    line_ref: str | None = Field(default=None, sa_column=Column(String(200), nullable=True))
    unit: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    allocated_at: datetime | None = _ts(nullable=True)
    updated_at: datetime = _ts(nullable=False)
    receipt_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    """How the code came in (``code_receipt``): the first entry of its chronology. Codes
    received before migration 0013 have none; their ``receive`` is in ``code_event``."""


class PoolCodeReceipt(SQLModel, table=True):
    """Codes received together (one chunk of an upload, one transaction): who, when, from which
    system, into which batch. It is the ``receive`` entry of each of those codes' chronology,
    kept once for the chunk and named by each code (``pool_code.receipt_id``) instead of one
    ``code_event`` row a code: a million-code upload wrote a million events saying the same
    thing, a fifth of the database's work. Never changed once written."""

    __tablename__ = "code_receipt"

    id: int | None = _bigint_pk()
    batch_no: str = Field(max_length=64)
    at: datetime = _ts(nullable=False)
    actor: str = Field(max_length=128)
    system: str = Field(max_length=64)
    detail: str | None = Field(default=None, sa_column=Column(String(1000), nullable=True))


class PoolCodeEvent(SQLModel, table=True):
    """A code's append-only chronology: who did what, when, from which system (its receipt is
    in ``code_receipt``).

    No foreign key to ``pool_code``: the log is written in bulk beside every status change and
    must never block or be blocked by it.
    """

    __tablename__ = "code_event"
    __table_args__ = (Index("ix_code_event_code", "code_id", "id"),)

    id: int | None = _bigint_pk()
    code_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    at: datetime = _ts(nullable=False)
    actor: str = Field(max_length=128)
    system: str = Field(max_length=64)
    action: str = Field(max_length=64)
    from_status: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))
    to_status: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))
    detail: str | None = Field(default=None, sa_column=Column(String(1000), nullable=True))


class SalesOrder(SQLModel, table=True):
    """The newest version of a site's order that vouchflow has seen (by the site's updated_at)."""

    __tablename__ = "sales_order"

    site: str = Field(primary_key=True, max_length=32)
    order_id: str = Field(primary_key=True, max_length=128)
    status: str = Field(max_length=32)
    currency: str = Field(max_length=3)
    customer_ref: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    created_at: datetime = _ts(nullable=False)
    site_updated_at: datetime = _ts(nullable=False)
    total: Decimal = Field(sa_column=Column(ExactDecimal(), nullable=False))
    payment: Any = Field(default=None, sa_column=Column(JSONText(), nullable=True))
    held_reason: str | None = Field(default=None, sa_column=Column(String(2000), nullable=True))
    erp_id: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    received_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class OrderLine(SQLModel, table=True):
    """One line of a sales order and where it stands: pending, allocated, held or cancelled."""

    __tablename__ = "order_line"
    __table_args__ = (
        Index("ix_order_line_queue", "status", "order_created_at", "site", "order_id",
              postgresql_where=text("status IN ('pending', 'held')")),
    )

    site: str = Field(primary_key=True, max_length=32)
    order_id: str = Field(primary_key=True, max_length=128)
    line_id: str = Field(primary_key=True, max_length=64)
    sku: str = Field(max_length=64)
    quantity: int = Field(sa_column=Column(Integer, nullable=False))
    unit_price: Decimal = Field(sa_column=Column(ExactDecimal(), nullable=False))
    currency: str = Field(max_length=3)
    issuance_mode: str | None = Field(default=None, sa_column=Column(String(16), nullable=True))
    status: str = Field(max_length=16)
    held_reason: str | None = Field(default=None, sa_column=Column(String(1000), nullable=True))
    refunded: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    order_created_at: datetime = _ts(nullable=False)
    allocated_at: datetime | None = _ts(nullable=True)
    updated_at: datetime = _ts(nullable=False)


class ApiAllocation(SQLModel, table=True):
    """What an API-issued sale took from which batch (FIFO), and how much came back."""

    __tablename__ = "api_allocation"
    __table_args__ = (Index("ix_api_allocation_site_at", "site", "at"),)

    site: str = Field(primary_key=True, max_length=32)
    order_id: str = Field(primary_key=True, max_length=128)
    line_id: str = Field(primary_key=True, max_length=64)
    batch_no: str = Field(primary_key=True, max_length=64)
    sku: str = Field(max_length=64)
    quantity: int = Field(sa_column=Column(Integer, nullable=False))
    returned: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    at: datetime = _ts(nullable=False)


class LineRefund(SQLModel, table=True):
    """A refund applied to an order line, kept by its id so applying it again changes nothing."""

    __tablename__ = "line_refund"

    refund_id: str = Field(primary_key=True, max_length=128)
    site: str = Field(max_length=32)
    order_id: str = Field(max_length=128)
    line_id: str = Field(max_length=64)
    quantity: int = Field(sa_column=Column(Integer, nullable=False))
    delivered: bool = Field(sa_column=Column(Boolean, nullable=False))
    result: Any = Field(default=None, sa_column=Column(JSONText(), nullable=True))
    at: datetime = _ts(nullable=False)


class InboundEvent(SQLModel, table=True):
    """A webhook received from a site, kept by its event id: duplicates are dropped on arrival,
    and events are processed in the order the site created them."""

    __tablename__ = "inbound_event"
    __table_args__ = (Index("ix_inbound_event_queue", "processed_at", "created_at"),)

    event_id: str = Field(primary_key=True, max_length=128)
    site: str = Field(max_length=32)
    type: str = Field(max_length=64)
    created_at: datetime = _ts(nullable=False)
    received_at: datetime = _ts(nullable=False)
    payload: Any = Field(sa_column=Column(JSONText(), nullable=False))
    processed_at: datetime | None = _ts(nullable=True)


POOL_TABLES = [PoolBatch, PoolCode, PoolCodeReceipt, PoolCodeEvent, SalesOrder, OrderLine,
               ApiAllocation, LineRefund, InboundEvent]
