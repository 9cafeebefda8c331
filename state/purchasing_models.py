"""Tables of purchasing in API mode, settlement, payment runs, code operations and costing.

They complete the procure-to-pay chain of ``state.procurement`` (whose tables they refer to):

- ``api_day_order`` / ``api_day_batch``: the daily purchase orders that book a site's API
  sales of one SKU on one business day, and the units each booked against each batch;
- ``api_issued_code``: codes an API supplier issued for sales (bearer value: hash and last 4
  only), what settlement by write-off quantity compares the supplier's redeemed codes with;
- ``vendor_credit``: codes returned to the supplier, credited in the ERP;
- ``payment_run``: one pain.001 file of approved vendor bills;
- ``cost_entry`` / ``cost_source``: the cost layers, a ledger per day, kind and batch, filled
  incrementally from append-only sources;
- ``finance_posting``: what was posted to the group finance system, once per document id.

Ids of ``state.procurement`` rows (``po_id``, ``vendor_id``, ``bill_id``) carry no foreign key:
these tables are a migration branch of their own (0008, off 0003), independent of the order in
which alembic applies the procurement branch.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    Index,
    Integer,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

from state.procurement import _int, _money, _text, _ts
from state.types import JSONText


def _day(nullable: bool = False) -> Any:
    return Field(default=None, sa_column=Column(Date, nullable=nullable))


def _bigint_pk() -> Any:
    return Field(default=None, sa_column=Column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True))


class ApiDayOrder(SQLModel, table=True):
    """A daily API purchase order (``po-{site}-{sku}-{yyyymmdd}``, corrections ``-c{n}``):
    the day it books, the instants that day spans, and its receipt in the ERP."""

    __tablename__ = "api_day_order"
    __table_args__ = (
        UniqueConstraint("site", "sku", "business_date", "vendor_id", "correction",
                         name="uq_api_day_order"),
    )

    po_id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    site: str = Field(max_length=32)
    sku: str = Field(max_length=64)
    business_date: date = _day()
    vendor_id: int = Field(sa_column=Column(Integer, nullable=False))
    correction: int = _int()
    """0 for the day's order, n for its n-th correction."""
    window_start: datetime = _ts()
    window_end: datetime = _ts()
    receipt_no: str = Field(max_length=64, unique=True)
    receipt_erp_id: str | None = _text(64)
    posted_at: datetime | None = _ts(nullable=True)
    """When its units left the batches' ``unposted`` for the book (``pool.mark_posted``)."""
    created_at: datetime = _ts()


class ApiDayBatch(SQLModel, table=True):
    """Units of one site's API sales of one SKU on one day booked against one batch: a line of
    a daily (or correction) order, or, negative, units refunded after the day was booked."""

    __tablename__ = "api_day_batch"
    __table_args__ = (Index("ix_api_day_batch_day", "site", "sku", "business_date"),)

    id: int | None = Field(default=None, primary_key=True)
    site: str = Field(max_length=32)
    sku: str = Field(max_length=64)
    business_date: date = _day()
    batch_no: str = Field(max_length=64)
    quantity: int = _int()
    po_id: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    line_no: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    created_at: datetime = _ts()


class IssuedCodeStatus(StrEnum):
    SOLD = "sold"
    WRITTEN_OFF = "written_off"
    """Matched with a code the supplier reported redeemed (and billed)."""
    REFUNDED = "refunded"


class ApiIssuedCode(SQLModel, table=True):
    """A code an API supplier issued for a sale (kept as a keyed hash and last 4 only)."""

    __tablename__ = "api_issued_code"
    __table_args__ = (
        UniqueConstraint("code_hash", name="uq_api_issued_code_hash"),
        Index("ix_api_issued_code_line", "site", "order_id", "line_id"),
    )

    id: int | None = _bigint_pk()
    code_hash: str = Field(max_length=64)
    last4: str = Field(max_length=4)
    site: str = Field(max_length=32)
    order_id: str = Field(max_length=128)
    line_id: str = Field(max_length=64)
    sku: str = Field(max_length=64)
    batch_no: str = Field(max_length=64)
    vendor_id: int = Field(sa_column=Column(Integer, nullable=False))
    sold_at: datetime = _ts()
    status: str = Field(default=IssuedCodeStatus.SOLD, max_length=16)
    write_off_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    po_id: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    """The daily order whose bill covers it (write-off settlement)."""


class VendorCredit(SQLModel, table=True):
    """Codes returned to the supplier: a vendorCredit made from the bill that paid for them."""

    __tablename__ = "vendor_credit"

    id: int | None = Field(default=None, primary_key=True)
    credit_no: str = Field(max_length=64, unique=True)
    vendor_id: int = Field(sa_column=Column(Integer, nullable=False))
    bill_id: int = Field(sa_column=Column(Integer, nullable=False))
    batch_no: str = Field(max_length=64)
    sku: str = Field(max_length=64)
    quantity: int = _int()
    unit_cost: Decimal = _money()
    amount: Decimal = _money()
    currency: str = Field(max_length=3)
    reason: str | None = _text(500)
    code_ids: Any = Field(default=None, sa_column=Column(JSONText(), nullable=True))
    erp_id: str | None = _text(64)
    created_at: datetime = _ts()


class PaymentRunStatus(StrEnum):
    GENERATED = "generated"
    CONFIRMED = "confirmed"
    """Every payment of the run confirmed (or rejected) by the bank."""


class PaymentRun(SQLModel, table=True):
    """One pain.001.001.09 file: the approved bills it pays, as ``vendor_payment`` rows."""

    __tablename__ = "payment_run"

    id: int | None = Field(default=None, primary_key=True)
    run_no: str = Field(max_length=35, unique=True)
    """The file's MsgId."""
    execution_date: date = _day()
    status: str = Field(default=PaymentRunStatus.GENERATED, max_length=16)
    file_name: str = Field(max_length=255)
    sha256: str = Field(max_length=64)
    payments: int = _int()
    totals: Any = Field(default=None, sa_column=Column(JSONText(), nullable=True))
    """Control sums per currency (decimal strings)."""
    created_by: str = Field(max_length=128)
    created_at: datetime = _ts()


class CostKind(StrEnum):
    PURCHASE = "purchase"
    """Units into stock at the batch's cost (a receipt)."""
    SALE = "sale"
    """Cost of sales: units sold at their own batch's cost (negative: back to stock)."""
    WRITE_OFF = "write_off"
    """Expired stock written off at its batch's cost."""
    RETURN = "return"
    """Units returned to the supplier (credited)."""
    TRANSFER = "transfer"
    """Units moved between batches (downgrade, re-promote): +n in, -n out, same cost."""


class CostEntry(SQLModel, table=True):
    """The cost layers: units and value per day, kind and batch. A row only grows while its
    day is open; ``amount = quantity x unit_cost`` exactly."""

    __tablename__ = "cost_entry"
    __table_args__ = (
        UniqueConstraint("entry_date", "kind", "batch_no", name="uq_cost_entry"),
        Index("ix_cost_entry_batch", "batch_no", "entry_date"),
    )

    id: int | None = Field(default=None, primary_key=True)
    entry_date: date = _day()
    kind: str = Field(max_length=16)
    batch_no: str = Field(max_length=64)
    sku: str = Field(max_length=64)
    currency: str = Field(max_length=3)
    unit_cost: Decimal = _money()
    quantity: int = _int()
    amount: Decimal = _money()


class CostSource(SQLModel, table=True):
    """How far each append-only source has been read into ``cost_entry`` (by its ids)."""

    __tablename__ = "cost_source"

    source: str = Field(primary_key=True, max_length=32)
    last_id: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    updated_at: datetime = _ts()


class FinancePosting(SQLModel, table=True):
    """A document posted to the group finance system: what we computed and what it answered."""

    __tablename__ = "finance_posting"
    __table_args__ = (Index("ix_finance_posting_day", "entry_date", "kind"),)

    document_id: str = Field(primary_key=True, max_length=100)
    kind: str = Field(max_length=32)
    entry_date: date = _day()
    period: str = Field(max_length=7)
    currency: str = Field(max_length=3)
    total: Decimal = _money()
    line_count: int = _int()
    status: str = Field(max_length=16)
    posting_ref: str | None = _text(64)
    message: str | None = _text(2000)
    posted_at: datetime = _ts()


PURCHASING_TABLES = [ApiDayOrder, ApiDayBatch, ApiIssuedCode, VendorCredit, PaymentRun,
                     CostEntry, CostSource, FinancePosting]
