"""Procure-to-pay state: vendors, supplier contracts, purchase requests, purchase orders,
receipts, vendor uploads, vendor bills, payments and disputes.

The chain (DESIGN.md section 1): a signed supplier contract -> purchase request -> purchase
order -> receipt (a batch in the pool: codes for a code-pool PO line, a quantity for an API
one) -> vendor bill -> payment. vouchflow keeps each step here first, under a stable external
id (``po-acme-000012``, ``rcpt-acme-000031``, ``bill-acme-000007``: ``[A-Za-z0-9_-]``, valid
as a NetSuite external id), and the flows write them to the ERP by those ids
(``flows.procurement``); the ``erp_id`` columns record what the ERP answered.

Rules kept here, for every caller (operators, the vendor portal, the daily API flow):

- a contract that is not signed (or is outside its validity) blocks purchasing: no purchase
  request, no purchase order, no receipt against it;
- quantities are positive, unit costs exact (at most 4 decimals, never rounded), SKUs known to
  the catalogue with the contract's issuance mode;
- a PO line never receives more than it ordered (``received_quantity <= quantity``), and is
  never billed for more than it received (purchased-quantity settlement);
- a vendor's API token is kept only as a keyed hash (``state.crypto.Keyring``); the token is
  shown once, when it is made.

Everything takes an open ``Session``: callers decide what shares a transaction.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    func,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from canonical import now_utc
from canonical.batch import ExpiryType
from canonical.sku import IssuanceMode
from state import pool
from state.catalog import load_skus
from state.crypto import Keyring
from state.events import (
    announce,
    purchase_order_changed,
    purchase_order_created,
    purchase_order_received,
    vendor_bill_created,
)
from state.models import ExactDecimal
from state.store import _chunks
from state.types import JSONText, UTCDateTime


class ProcurementError(ValueError):
    """A request the procurement rules refuse; the message says what and why."""


class NotFound(ProcurementError):
    """No such record (or not this vendor's: a vendor never learns of another's records)."""


class Blocked(ProcurementError):
    """The request is valid but the state forbids it now (unsigned contract, busy line...)."""


class SettlementMode(StrEnum):
    PURCHASED_QUANTITY = "purchased_quantity"
    """Code pool: the vendor bill follows the received quantity."""
    SALES_QUANTITY = "sales_quantity"
    """API: the vendor bill follows the purchased-in (daily PO) quantity."""
    WRITE_OFF_QUANTITY = "write_off_quantity"
    """API: the vendor bill covers the codes the supplier reports redeemed that were sold."""


SETTLEMENT_MODES_BY_ISSUANCE: dict[str, frozenset[str]] = {
    IssuanceMode.CODE_POOL.value: frozenset({SettlementMode.PURCHASED_QUANTITY.value}),
    IssuanceMode.API.value: frozenset({SettlementMode.SALES_QUANTITY.value,
                                       SettlementMode.WRITE_OFF_QUANTITY.value}),
}


class SignatureStatus(StrEnum):
    DRAFT = "draft"
    SENT = "sent"
    """Out for e-signature."""
    SIGNED = "signed"
    DECLINED = "declined"
    REVOKED = "revoked"


class VendorStatus(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class RequestStatus(StrEnum):
    DRAFT = "draft"
    APPROVED = "approved"
    ORDERED = "ordered"
    CANCELLED = "cancelled"


class OrderStatus(StrEnum):
    OPEN = "open"
    RECEIVED = "received"
    """Every line fully received."""
    CLOSED = "closed"
    CANCELLED = "cancelled"


class OrderKind(StrEnum):
    STANDARD = "standard"
    DAILY_API = "daily_api"
    """One site's API sales of one SKU on one business day (``api_purchase_orders``)."""
    CORRECTION = "correction"
    """Late sales of a closed day: never a rewrite of the day's PO."""


class UploadKind(StrEnum):
    CODES = "codes"
    WRITE_OFF = "write_off"


class UploadStatus(StrEnum):
    RECEIVING = "receiving"
    ACCEPTED = "accepted"
    """Every row accepted."""
    PARTIAL = "partially_accepted"
    REJECTED = "rejected"
    """No row accepted (or the file itself refused: header, encoding, size)."""
    INTERRUPTED = "interrupted"
    """The upload stopped midway (connection or process lost, body too large): the rows
    read up to then are kept (and received), the rest were never read."""


class BillStatus(StrEnum):
    DRAFT = "draft"
    APPROVED = "approved"
    PAID = "paid"
    CANCELLED = "cancelled"


class PaymentStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"


class DisputeStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    REJECTED = "rejected"


class WriteOffStatus(StrEnum):
    PENDING = "pending"
    """Not settled yet; settlement sets matched, unknown, not_sold (and the bill)."""
    MATCHED = "matched"
    UNKNOWN = "unknown"
    NOT_SOLD = "not_sold"


# tables --------------------------------------------------------------------------------------
def _ts(nullable: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable))


def _money(nullable: bool = False) -> Any:
    return Field(default=None, sa_column=Column(ExactDecimal(), nullable=nullable))


def _int(default: int = 0) -> Any:
    return Field(default=default, sa_column=Column(Integer, nullable=False, default=default))


def _text(length: int, nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(String(length), nullable=nullable))


def _fk(target: str, nullable: bool = False) -> Any:
    return Field(default=None, sa_column=Column(Integer, ForeignKey(target), nullable=nullable))


class Vendor(SQLModel, table=True):
    """A supplier. Its portal token is kept only as a keyed hash."""

    __tablename__ = "vendor"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128, unique=True)
    slug: str = Field(max_length=32, unique=True)
    """The vendor's part of every external id (``po-{slug}-...``)."""
    external_id: str = Field(max_length=64, unique=True)
    status: str = Field(default=VendorStatus.ACTIVE, max_length=16)
    currency: str | None = _text(3)
    email: str | None = _text(255)
    country: str | None = _text(2)
    bank_account: str | None = _text(64)
    bank_bic: str | None = _text(11)
    token_hash: str | None = Field(default=None, sa_column=Column(String(64), nullable=True,
                                                                  unique=True))
    token_hint: str | None = _text(16)
    """The token's first characters, to tell tokens apart without revealing them."""
    token_rotated_at: datetime | None = _ts(nullable=True)
    erp_id: str | None = _text(64)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class SupplierContract(SQLModel, table=True):
    """Terms agreed with a vendor: issuance and settlement mode, currency, prices per SKU,
    payment terms, and the e-signature status that gates purchasing."""

    __tablename__ = "supplier_contract"
    __table_args__ = (Index("ix_supplier_contract_vendor", "vendor_id", "signature_status"),)

    id: int | None = Field(default=None, primary_key=True)
    contract_no: str = Field(max_length=64, unique=True)
    vendor_id: int = _fk("vendor.id")
    issuance_mode: str = Field(max_length=16)
    settlement_mode: str = Field(max_length=32)
    currency: str = Field(max_length=3)
    payment_terms_days: int = _int(30)
    valid_from: date = Field(sa_column=Column(Date, nullable=False))
    valid_to: date | None = Field(default=None, sa_column=Column(Date, nullable=True))
    allows_returns: bool = Field(default=False, sa_column=Column(Boolean, nullable=False,
                                                                 default=False))
    terms: Any = Field(default=None, sa_column=Column(JSONText(), nullable=True))
    signature_status: str = Field(default=SignatureStatus.DRAFT, max_length=16)
    signature_ref: str | None = _text(128)
    """The e-signature service's envelope id."""
    signed_by: str | None = _text(255)
    signed_at: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class ContractItem(SQLModel, table=True):
    """A contract's price of one SKU (the unit cost of its purchase orders)."""

    __tablename__ = "contract_item"

    contract_id: int = Field(sa_column=Column(Integer, ForeignKey("supplier_contract.id"),
                                              primary_key=True))
    sku: str = Field(primary_key=True, max_length=64)
    unit_cost: Decimal = _money()


class PurchaseRequest(SQLModel, table=True):
    __tablename__ = "purchase_request"

    id: int | None = Field(default=None, primary_key=True)
    request_no: str = Field(max_length=64, unique=True)
    vendor_id: int = _fk("vendor.id")
    contract_id: int = _fk("supplier_contract.id")
    currency: str = Field(max_length=3)
    status: str = Field(default=RequestStatus.DRAFT, max_length=16)
    requested_by: str = Field(max_length=128)
    approved_by: str | None = _text(128)
    memo: str | None = _text(1000)
    erp_id: str | None = _text(64)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class PurchaseRequestLine(SQLModel, table=True):
    __tablename__ = "purchase_request_line"

    request_id: int = Field(sa_column=Column(Integer, ForeignKey("purchase_request.id"),
                                             primary_key=True))
    line_no: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    sku: str = Field(max_length=64)
    quantity: int = _int()
    unit_cost: Decimal = _money()


class PurchaseOrder(SQLModel, table=True):
    """A purchase order. ``site``/``business_date``/``kind`` carry the daily API purchase
    orders (one per site, SKU and day, corrections apart)."""

    __tablename__ = "purchase_order"
    __table_args__ = (Index("ix_purchase_order_vendor", "vendor_id", "status"),
                      Index("ix_purchase_order_day", "site", "business_date"))

    id: int | None = Field(default=None, primary_key=True)
    po_no: str = Field(max_length=64, unique=True)
    vendor_id: int = _fk("vendor.id")
    contract_id: int = _fk("supplier_contract.id")
    request_id: int | None = _fk("purchase_request.id", nullable=True)
    issuance_mode: str = Field(max_length=16)
    kind: str = Field(default=OrderKind.STANDARD, max_length=16)
    currency: str = Field(max_length=3)
    status: str = Field(default=OrderStatus.OPEN, max_length=16)
    tran_date: date = Field(sa_column=Column(Date, nullable=False))
    site: str | None = _text(32)
    business_date: date | None = Field(default=None, sa_column=Column(Date, nullable=True))
    memo: str | None = _text(1000)
    erp_id: str | None = _text(64)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class PurchaseOrderLine(SQLModel, table=True):
    __tablename__ = "purchase_order_line"
    __table_args__ = (UniqueConstraint("po_id", "line_no", name="uq_purchase_order_line"),)

    id: int | None = Field(default=None, primary_key=True)
    po_id: int = _fk("purchase_order.id")
    line_no: int = _int()
    sku: str = Field(max_length=64)
    quantity: int = _int()
    unit_cost: Decimal = _money()
    received_quantity: int = _int()
    billed_quantity: int = _int()
    description: str | None = _text(255)


class Receipt(SQLModel, table=True):
    """Goods received against a PO line: one batch in the pool (codes or a quantity)."""

    __tablename__ = "purchase_receipt"
    __table_args__ = (Index("ix_purchase_receipt_po", "po_id"),)

    id: int | None = Field(default=None, primary_key=True)
    receipt_no: str = Field(max_length=64, unique=True)
    vendor_id: int = _fk("vendor.id")
    po_id: int = _fk("purchase_order.id")
    po_line_id: int = _fk("purchase_order_line.id")
    upload_id: int | None = _fk("vendor_upload.id", nullable=True)
    batch_no: str = Field(max_length=64, unique=True)
    sku: str = Field(max_length=64)
    quantity: int = _int()
    unit_cost: Decimal = _money()
    currency: str = Field(max_length=3)
    received_at: datetime = _ts()
    erp_id: str | None = _text(64)
    """The ERP's itemReceipt."""
    erp_batch_id: str | None = _text(64)
    """The ERP's customrecord_vf_batch."""


class VendorUpload(SQLModel, table=True):
    """A file a vendor uploaded (codes for a PO line, or codes it reports redeemed).

    One code upload at a time per PO line (a partial unique index), so two uploads cannot
    both fill what the line has left. ``updated_at`` is the heartbeat of a running upload."""

    __tablename__ = "vendor_upload"
    __table_args__ = (
        Index("ix_vendor_upload_vendor", "vendor_id", "id"),
        Index("ix_vendor_upload_receiving", "po_line_id", unique=True,
              postgresql_where=text("status = 'receiving'"),
              sqlite_where=text("status = 'receiving'")),
    )

    id: int | None = Field(default=None, primary_key=True)
    upload_no: str = Field(max_length=64, unique=True)
    vendor_id: int = _fk("vendor.id")
    kind: str = Field(max_length=16)
    file_name: str = Field(max_length=255)
    content_hash: str | None = _text(64)
    """SHA-256 of the bytes received."""
    size_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    po_line_id: int | None = _fk("purchase_order_line.id", nullable=True)
    batch_no: str | None = _text(64)
    status: str = Field(default=UploadStatus.RECEIVING, max_length=24)
    rows_total: int = _int()
    rows_accepted: int = _int()
    rows_rejected: int = _int()
    message: str | None = _text(2000)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    finished_at: datetime | None = _ts(nullable=True)


class UploadRow(SQLModel, table=True):
    """A refused row of an upload: which rule it broke and why (values masked). Rows not
    listed were accepted."""

    __tablename__ = "upload_row"

    upload_id: int = Field(sa_column=Column(Integer, ForeignKey("vendor_upload.id"),
                                            primary_key=True))
    row_no: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    rule: str = Field(max_length=32)
    field: str | None = _text(32)
    value: str | None = _text(64)
    """Masked (a code or PIN shows its last four characters only)."""
    message: str = Field(sa_column=Column(String(1000), nullable=False))


class WriteOff(SQLModel, table=True):
    """A code the vendor reports redeemed (write-off file), kept for settlement by write-off
    quantity. Each code once per vendor: a repeat is refused at upload."""

    __tablename__ = "write_off"
    __table_args__ = (UniqueConstraint("vendor_id", "code_hash", name="uq_write_off_code"),
                      Index("ix_write_off_status", "vendor_id", "status"))

    id: int | None = Field(default=None, sa_column=Column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True))
    vendor_id: int = _fk("vendor.id")
    upload_id: int = _fk("vendor_upload.id")
    row_no: int = _int()
    code_hash: str = Field(max_length=64)
    last4: str = Field(max_length=4)
    redeemed_at: datetime = _ts()
    status: str = Field(default=WriteOffStatus.PENDING, max_length=16)
    bill_id: int | None = _fk("vendor_bill.id", nullable=True)


class VendorBill(SQLModel, table=True):
    __tablename__ = "vendor_bill"
    __table_args__ = (Index("ix_vendor_bill_vendor", "vendor_id", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    bill_no: str = Field(max_length=64, unique=True)
    vendor_id: int = _fk("vendor.id")
    po_id: int | None = _fk("purchase_order.id", nullable=True)
    settlement_mode: str = Field(max_length=32)
    currency: str = Field(max_length=3)
    period: str | None = _text(7)
    """``YYYY-MM`` for bills settled per period (sales or write-off quantity)."""
    vendor_invoice_ref: str | None = _text(64)
    bill_date: date = Field(sa_column=Column(Date, nullable=False))
    due_date: date = Field(sa_column=Column(Date, nullable=False))
    status: str = Field(default=BillStatus.DRAFT, max_length=16)
    total: Decimal = _money()
    approved_by: str | None = _text(128)
    approved_at: datetime | None = _ts(nullable=True)
    erp_id: str | None = _text(64)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class VendorBillLine(SQLModel, table=True):
    __tablename__ = "vendor_bill_line"

    bill_id: int = Field(sa_column=Column(Integer, ForeignKey("vendor_bill.id"),
                                          primary_key=True))
    line_no: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    po_line_id: int | None = _fk("purchase_order_line.id", nullable=True)
    sku: str = Field(max_length=64)
    quantity: int = _int()
    unit_cost: Decimal = _money()
    amount: Decimal = _money()
    description: str | None = _text(255)


class VendorPayment(SQLModel, table=True):
    """One bill's payment in a payment run (pain.001): ``end_to_end_id`` ties the bank's
    confirmation back to it."""

    __tablename__ = "vendor_payment"
    __table_args__ = (Index("ix_vendor_payment_vendor", "vendor_id", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    payment_no: str = Field(max_length=64, unique=True)
    vendor_id: int = _fk("vendor.id")
    bill_id: int = _fk("vendor_bill.id")
    run_no: str | None = _text(64)
    amount: Decimal = _money()
    currency: str = Field(max_length=3)
    status: str = Field(default=PaymentStatus.PENDING, max_length=16)
    end_to_end_id: str | None = _text(35)
    requested_on: date | None = Field(default=None, sa_column=Column(Date, nullable=True))
    confirmed_at: datetime | None = _ts(nullable=True)
    erp_id: str | None = _text(64)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class VendorDispute(SQLModel, table=True):
    """A disagreement about a bill, an upload or write-offs, raised by the vendor or an
    operator, open until resolved."""

    __tablename__ = "vendor_dispute"
    __table_args__ = (Index("ix_vendor_dispute_vendor", "vendor_id", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    dispute_no: str = Field(max_length=64, unique=True)
    vendor_id: int = _fk("vendor.id")
    subject_type: str = Field(max_length=32)
    subject_ref: str = Field(max_length=64)
    reason: str = Field(sa_column=Column(String(2000), nullable=False))
    amount: Decimal | None = _money(nullable=True)
    currency: str | None = _text(3)
    status: str = Field(default=DisputeStatus.OPEN, max_length=16)
    raised_by: str = Field(max_length=128)
    resolution: str | None = _text(2000)
    created_at: datetime = _ts()
    resolved_at: datetime | None = _ts(nullable=True)


PROCUREMENT_TABLES = [Vendor, SupplierContract, ContractItem, PurchaseRequest,
                      PurchaseRequestLine, PurchaseOrder, PurchaseOrderLine, Receipt,
                      VendorUpload, UploadRow, WriteOff, VendorBill, VendorBillLine,
                      VendorPayment, VendorDispute]


# identifiers ---------------------------------------------------------------------------------
_SLUG_UNSAFE = re.compile(r"[^a-z0-9]+")
TOKEN_PREFIX = "vfv_"


def slugify(name: str) -> str:
    """The part of a vendor's name used in external ids: ``Acme Gift Cards Ltd.`` ->
    ``acme-gift-cards-ltd`` (at most 24 characters)."""
    slug = _SLUG_UNSAFE.sub("-", name.lower()).strip("-")[:24].strip("-")
    return slug or "vendor"


def _number(prefix: str, slug: str, row_id: int, tag: str = "") -> str:
    return f"{prefix}-{slug}-{tag}{row_id:06d}"


def _placeholder() -> str:
    return f"tmp-{uuid.uuid4().hex}"


def _numbered(session: Session, row: Any, attr: str, prefix: str, slug: str,
              tag: str = "") -> Any:
    """Insert ``row`` and give it its external id from its own primary key (unique without
    any counter to race on)."""
    setattr(row, attr, _placeholder())
    session.add(row)
    session.flush()
    setattr(row, attr, _number(prefix, slug, row.id, tag))
    session.flush()
    return row


def token_hash(keyring: Keyring, token: str) -> str:
    """The keyed hash a vendor token is kept (and looked up) as: HMAC-SHA256 with the pool's
    hash key, in its own domain (the prefix keeps it apart from code hashes)."""
    return keyring.hash_code(f"vendor-api-token\x00{token}")


def _now() -> datetime:
    return now_utc()


def _today() -> date:
    return datetime.now(UTC).date()


def _amount(value: Any, what: str) -> Decimal:
    try:
        amount = pool._amount(value, what)
    except pool.PoolError as exc:
        raise ProcurementError(str(exc)) from None
    if amount < 0:
        raise ProcurementError(f"{what}: {value} is negative")
    return amount


# vendors -------------------------------------------------------------------------------------
def _new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def add_vendor(
    session: Session, keyring: Keyring, name: str, *, currency: str | None = None,
    email: str | None = None, country: str | None = None, bank_account: str | None = None,
    bank_bic: str | None = None,
) -> tuple[Vendor, str]:
    """A new vendor and its first portal token (returned once, kept only as a hash)."""
    name = name.strip()
    if not name or len(name) > 128:
        raise ProcurementError("a vendor name is 1 to 128 characters")
    if session.scalar(select(Vendor.id).where(Vendor.name == name)) is not None:
        raise ProcurementError(f"vendor {name!r} exists already (rotate its token instead)")
    for what, value, pattern in (("currency", currency, r"[A-Z]{3}"),
                                 ("country", country, r"[A-Z]{2}")):
        if value is not None and not re.fullmatch(pattern, value):
            raise ProcurementError(f"vendor {name}: {what} {value!r} is not an ISO code")
    base = slugify(name)
    slug, n = base, 1
    while session.scalar(select(Vendor.id).where(Vendor.slug == slug)) is not None:
        n += 1
        slug = f"{base[:20]}-{n}"
    token = _new_token()
    now = _now()
    vendor = Vendor(name=name, slug=slug, external_id=f"vendor-{slug}", currency=currency,
                    email=email, country=country, bank_account=bank_account, bank_bic=bank_bic,
                    token_hash=token_hash(keyring, token), token_hint=token[:8],
                    token_rotated_at=now, created_at=now, updated_at=now)
    session.add(vendor)
    session.flush()
    return vendor, token


def get_vendor(session: Session, name_or_slug: str) -> Vendor:
    vendor = session.scalar(select(Vendor).where(
        (Vendor.name == name_or_slug) | (Vendor.slug == name_or_slug)))
    if vendor is None:
        raise NotFound(f"no vendor {name_or_slug!r}")
    return vendor


def rotate_token(session: Session, keyring: Keyring, name_or_slug: str) -> str:
    """A new portal token for the vendor; the old one stops working at once."""
    vendor = get_vendor(session, name_or_slug)
    token = _new_token()
    now = _now()
    vendor.token_hash = token_hash(keyring, token)
    vendor.token_hint = token[:8]
    vendor.token_rotated_at = now
    vendor.updated_at = now
    session.flush()
    return token


def vendor_for_token(session: Session, keyring: Keyring, token: str) -> Vendor | None:
    """The active vendor holding this token, else None (unknown, rotated or inactive)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        return None
    vendor = session.scalar(select(Vendor).where(Vendor.token_hash == token_hash(keyring, token)))
    if vendor is None or vendor.status != VendorStatus.ACTIVE:
        return None
    return vendor


# contracts -----------------------------------------------------------------------------------
def add_contract(
    session: Session, vendor: Vendor, *, issuance_mode: str, settlement_mode: str,
    currency: str, prices: Mapping[str, Decimal | str], valid_from: date,
    valid_to: date | None = None, payment_terms_days: int = 30, allows_returns: bool = False,
    terms: Any = None,
) -> SupplierContract:
    """A draft contract with its prices per SKU. It must be signed before purchasing."""
    mode = _choice(IssuanceMode, issuance_mode, "issuance mode")
    settlement = _choice(SettlementMode, settlement_mode, "settlement mode")
    if settlement not in SETTLEMENT_MODES_BY_ISSUANCE[mode]:
        allowed = ", ".join(sorted(SETTLEMENT_MODES_BY_ISSUANCE[mode]))
        raise ProcurementError(f"a {mode} contract settles by {allowed}, not {settlement}")
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise ProcurementError(f"currency {currency!r} is not an ISO 4217 code")
    if valid_to is not None and valid_to < valid_from:
        raise ProcurementError(f"the contract ends ({valid_to}) before it starts ({valid_from})")
    if payment_terms_days < 0:
        raise ProcurementError("payment terms must not be negative")
    _known_skus(session, prices, mode)
    now = _now()
    contract = _numbered(session, SupplierContract(
        vendor_id=vendor.id, issuance_mode=mode, settlement_mode=settlement, currency=currency,
        payment_terms_days=payment_terms_days, valid_from=valid_from, valid_to=valid_to,
        allows_returns=allows_returns, terms=terms, created_at=now, updated_at=now),
        "contract_no", "ctr", vendor.slug)
    for sku, cost in sorted(prices.items()):
        session.add(ContractItem(contract_id=contract.id, sku=sku,
                                 unit_cost=_amount(cost, f"contract price of {sku}")))
    session.flush()
    return contract


def _choice(kind: type[StrEnum], value: str, what: str) -> str:
    try:
        return kind(value).value
    except ValueError:
        allowed = ", ".join(m.value for m in kind)  # type: ignore[attr-defined]
        raise ProcurementError(f"{what} {value!r} is not one of {allowed}") from None


def _known_skus(session: Session, skus: Iterable[str], mode: str) -> None:
    wanted = sorted(set(skus))
    catalog = load_skus(session, wanted)
    unknown = [s for s in wanted if s not in catalog]
    if unknown:
        raise ProcurementError(f"SKU(s) not in the catalogue: {', '.join(unknown[:10])} "
                               "(run the catalogue sync first)")
    wrong = [s for s in wanted if catalog[s].issuance_mode.value != mode]
    if wrong:
        raise ProcurementError(f"SKU(s) {', '.join(wrong[:10])} are not issued by {mode}")


def get_contract(session: Session, contract_no: str, vendor_id: int | None = None
                 ) -> SupplierContract:
    query = select(SupplierContract).where(SupplierContract.contract_no == contract_no)
    if vendor_id is not None:
        query = query.where(SupplierContract.vendor_id == vendor_id)
    contract = session.scalar(query)
    if contract is None:
        raise NotFound(f"no contract {contract_no}")
    return contract


def set_signature(
    session: Session, contract_no: str, status: str, *, by: str | None = None,
    ref: str | None = None, at: datetime | None = None,
) -> SupplierContract:
    """Record the e-signature status the signing service reports (signed, declined...)."""
    contract = get_contract(session, contract_no)
    contract.signature_status = _choice(SignatureStatus, status, "signature status")
    contract.signature_ref = ref or contract.signature_ref
    if contract.signature_status == SignatureStatus.SIGNED:
        contract.signed_by = by
        contract.signed_at = at or _now()
    contract.updated_at = _now()
    session.flush()
    return contract


def check_purchasing(contract: SupplierContract, on: date) -> None:
    """Raise ``Blocked`` unless the contract allows purchasing on this day."""
    if contract.signature_status != SignatureStatus.SIGNED:
        raise Blocked(f"contract {contract.contract_no} is {contract.signature_status}, not "
                      "signed: purchasing against it is blocked until it is signed")
    if on < contract.valid_from or (contract.valid_to is not None and on > contract.valid_to):
        raise Blocked(f"contract {contract.contract_no} is valid {contract.valid_from} to "
                      f"{contract.valid_to or 'open end'}, not on {on}")


def contract_prices(session: Session, contract_id: int) -> dict[str, Decimal]:
    return {r.sku: r.unit_cost for r in session.scalars(
        select(ContractItem).where(ContractItem.contract_id == contract_id))}


# purchase requests and orders ------------------------------------------------------------------
@dataclass(frozen=True)
class LineIn:
    sku: str
    quantity: int
    unit_cost: Decimal | str | None = None
    """None: the contract's price."""
    description: str | None = None


def _priced_lines(session: Session, contract: SupplierContract, lines: Sequence[LineIn],
                  what: str) -> list[tuple[str, int, Decimal, str | None]]:
    if not lines:
        raise ProcurementError(f"{what}: no lines")
    prices = contract_prices(session, contract.id)  # type: ignore[arg-type]
    out = []
    for n, line in enumerate(lines, 1):
        if not isinstance(line.quantity, int) or isinstance(line.quantity, bool) \
                or line.quantity <= 0:
            raise ProcurementError(f"{what} line {n} ({line.sku}): quantity must be a positive "
                                   f"whole number, got {line.quantity!r}")
        cost = line.unit_cost if line.unit_cost is not None else prices.get(line.sku)
        if cost is None:
            raise ProcurementError(f"{what} line {n}: SKU {line.sku} has no price in contract "
                                   f"{contract.contract_no}; give a unit cost")
        out.append((line.sku, line.quantity, _amount(cost, f"{what} line {n} unit cost"),
                    line.description))
    _known_skus(session, [sku for sku, *_ in out], contract.issuance_mode)
    return out


def request_purchase(
    session: Session, contract_no: str, lines: Sequence[LineIn], *, requested_by: str,
    memo: str | None = None, on: date | None = None,
) -> PurchaseRequest:
    contract = get_contract(session, contract_no)
    check_purchasing(contract, on or _today())
    vendor = session.get(Vendor, contract.vendor_id)
    assert vendor is not None
    priced = _priced_lines(session, contract, lines, "purchase request")
    now = _now()
    request = _numbered(session, PurchaseRequest(
        vendor_id=vendor.id, contract_id=contract.id, currency=contract.currency,
        requested_by=requested_by, memo=memo, created_at=now, updated_at=now),
        "request_no", "pr", vendor.slug)
    for n, (sku, quantity, cost, _) in enumerate(priced, 1):
        session.add(PurchaseRequestLine(request_id=request.id, line_no=n, sku=sku,
                                        quantity=quantity, unit_cost=cost))
    session.flush()
    return request


def approve_request(session: Session, request_no: str, *, by: str) -> PurchaseRequest:
    request = _get(session, PurchaseRequest, PurchaseRequest.request_no, request_no)
    if request.status not in (RequestStatus.DRAFT, RequestStatus.APPROVED):
        raise Blocked(f"purchase request {request_no} is {request.status}")
    request.status = RequestStatus.APPROVED
    request.approved_by = by
    request.updated_at = _now()
    session.flush()
    return request


def _get(session: Session, model: Any, column: Any, value: str,
         vendor_id: int | None = None) -> Any:
    query = select(model).where(column == value)
    if vendor_id is not None:
        query = query.where(model.vendor_id == vendor_id)
    row = session.scalar(query)
    if row is None:
        raise NotFound(f"no {model.__tablename__.replace('_', ' ')} {value}")
    return row


def order_from_request(session: Session, request_no: str, *, tran_date: date | None = None
                       ) -> PurchaseOrder:
    """The purchase order of an approved request (its lines and prices)."""
    request = _get(session, PurchaseRequest, PurchaseRequest.request_no, request_no)
    if request.status != RequestStatus.APPROVED:
        raise Blocked(f"purchase request {request_no} is {request.status}, not approved")
    lines = session.scalars(select(PurchaseRequestLine).where(
        PurchaseRequestLine.request_id == request.id).order_by(PurchaseRequestLine.line_no))
    contract = session.get(SupplierContract, request.contract_id)
    assert contract is not None
    order = create_purchase_order(
        session, contract.contract_no,
        [LineIn(r.sku, r.quantity, r.unit_cost) for r in lines], tran_date=tran_date,
        request_id=request.id, memo=request.memo)
    request.status = RequestStatus.ORDERED
    request.updated_at = _now()
    session.flush()
    return order


def create_purchase_order(
    session: Session, contract_no: str, lines: Sequence[LineIn], *,
    tran_date: date | None = None, po_no: str | None = None, kind: str = OrderKind.STANDARD,
    site: str | None = None, business_date: date | None = None, request_id: int | None = None,
    memo: str | None = None, events: bool = True,
) -> PurchaseOrder:
    """A purchase order under a signed contract. ``po_no`` defaults to ``po-{vendor}-{n}``;
    the daily API flow passes its own (e.g. ``po-{site}-{sku}-{yyyymmdd}``) and gets an error,
    not a second order, when it exists already. ``purchase_order.created`` is announced with
    it (``events=False``: the caller announces it once the order is complete)."""
    contract = get_contract(session, contract_no)
    tran_date = tran_date or _today()
    check_purchasing(contract, tran_date)
    vendor = session.get(Vendor, contract.vendor_id)
    assert vendor is not None
    if vendor.status != VendorStatus.ACTIVE:
        raise Blocked(f"vendor {vendor.name} is {vendor.status}")
    kind = _choice(OrderKind, kind, "order kind")
    priced = _priced_lines(session, contract, lines, "purchase order")
    if po_no is not None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", po_no):
            raise ProcurementError(f"purchase order number {po_no!r} is not 1-64 of "
                                   "[A-Za-z0-9_-]")
        if session.scalar(select(PurchaseOrder.id).where(PurchaseOrder.po_no == po_no)):
            raise Blocked(f"purchase order {po_no} exists already")
    now = _now()
    order = PurchaseOrder(
        vendor_id=vendor.id, contract_id=contract.id, request_id=request_id,
        issuance_mode=contract.issuance_mode, kind=kind, currency=contract.currency,
        tran_date=tran_date, site=site, business_date=business_date, memo=memo,
        created_at=now, updated_at=now)
    if po_no is None:
        _numbered(session, order, "po_no", "po", vendor.slug)
    else:
        order.po_no = po_no
        session.add(order)
        session.flush()
    for n, (sku, quantity, cost, description) in enumerate(priced, 1):
        session.add(PurchaseOrderLine(po_id=order.id, line_no=n, sku=sku, quantity=quantity,
                                      unit_cost=cost, description=description))
    session.flush()
    if events:
        announce_created(session, order)
    return order


def order_view(session: Session, order: PurchaseOrder) -> dict[str, Any]:
    """A purchase order's business fields and lines, as subscribers see it (read in this
    session: ``order`` may come from an earlier one, as a receiving plan's does)."""
    order = session.get(PurchaseOrder, order.id) or order
    vendor = session.get(Vendor, order.vendor_id)
    contract = session.get(SupplierContract, order.contract_id)
    request = session.get(PurchaseRequest, order.request_id) if order.request_id else None
    assert vendor is not None and contract is not None
    lines = order_lines(session, order.id)  # type: ignore[arg-type]
    return {
        "po_no": order.po_no, "kind": order.kind, "status": order.status,
        "vendor": vendor.external_id, "vendor_name": vendor.name,
        "contract_no": contract.contract_no, "request_no": request.request_no if request else None,
        "issuance_mode": order.issuance_mode, "currency": order.currency,
        "tran_date": order.tran_date, "site": order.site, "business_date": order.business_date,
        "memo": order.memo,
        "total": sum((ln.unit_cost * ln.quantity for ln in lines), Decimal(0)),
        "lines": [{"line_no": ln.line_no, "sku": ln.sku, "quantity": ln.quantity,
                   "unit_cost": ln.unit_cost, "received_quantity": ln.received_quantity,
                   "billed_quantity": ln.billed_quantity, "description": ln.description}
                  for ln in lines],
    }


def announce_created(session: Session, order: PurchaseOrder) -> None:
    """``purchase_order.created``, with the order as it stands now, when the transaction
    commits."""
    announce(session, [purchase_order_created(order_view(session, order), at=order.created_at)])


def get_order(session: Session, po_no: str, vendor_id: int | None = None) -> PurchaseOrder:
    return _get(session, PurchaseOrder, PurchaseOrder.po_no, po_no, vendor_id)


def order_lines(session: Session, po_id: int) -> list[PurchaseOrderLine]:
    return list(session.scalars(select(PurchaseOrderLine).where(
        PurchaseOrderLine.po_id == po_id).order_by(PurchaseOrderLine.line_no)))


def po_numbers_by_erp_id(session: Session, erp_ids: Iterable[str]) -> dict[str, str]:
    """vouchflow's purchase order numbers by the ERP's internal ids (an ERP record refers to
    an order by internal id; vouchflow's own records keep its number). Ids of orders
    vouchflow did not place are left out."""
    t = PurchaseOrder.__table__
    found: dict[str, str] = {}
    for part in _chunks(list(dict.fromkeys(erp_ids))):
        found.update((erp_id, po_no) for erp_id, po_no in session.execute(
            select(t.c.erp_id, t.c.po_no).where(t.c.erp_id.in_(part))))
    return found


def get_order_line(session: Session, po_no: str, line_no: int, vendor_id: int | None = None
                   ) -> tuple[PurchaseOrder, PurchaseOrderLine]:
    order = get_order(session, po_no, vendor_id)
    line = session.scalar(select(PurchaseOrderLine).where(
        PurchaseOrderLine.po_id == order.id, PurchaseOrderLine.line_no == line_no))
    if line is None:
        raise NotFound(f"purchase order {po_no} has no line {line_no}")
    return order, line


@dataclass(frozen=True)
class ReceivingPlan:
    """What a receipt against one PO line may take, checked when it starts."""

    vendor: Vendor
    order: PurchaseOrder
    line: PurchaseOrderLine
    contract: SupplierContract
    open_quantity: int
    code_format: str | None


def plan_receipt(session: Session, po_line_id: int, *, vendor_id: int | None = None,
                 mode: str | None = None, on: date | None = None) -> ReceivingPlan:
    """The checks before receiving against a PO line: it exists (and is this vendor's), the
    order is open and of the expected issuance mode, the contract allows purchasing, and
    something is left to receive."""
    line = session.get(PurchaseOrderLine, po_line_id)
    order = session.get(PurchaseOrder, line.po_id) if line is not None else None
    if line is None or order is None or (vendor_id is not None and order.vendor_id != vendor_id):
        raise NotFound(f"no purchase order line {po_line_id}")
    where = f"purchase order {order.po_no} line {line.line_no}"
    if order.status != OrderStatus.OPEN:
        raise Blocked(f"{where}: the order is {order.status}")
    if mode is not None and order.issuance_mode != mode:
        raise Blocked(f"{where}: the order is {order.issuance_mode}, not {mode}")
    contract = session.get(SupplierContract, order.contract_id)
    vendor = session.get(Vendor, order.vendor_id)
    assert contract is not None and vendor is not None
    check_purchasing(contract, on or _today())
    left = line.quantity - line.received_quantity
    if left <= 0:
        raise Blocked(f"{where}: all {line.quantity} received already")
    sku = load_skus(session, [line.sku]).get(line.sku)
    return ReceivingPlan(vendor=vendor, order=order, line=line, contract=contract,
                         open_quantity=left, code_format=sku.code_format if sku else None)


def record_receipt(
    session: Session, plan: ReceivingPlan, *, batch_no: str, quantity: int,
    upload_id: int | None = None, received_at: datetime | None = None, events: bool = True,
) -> Receipt:
    """The receipt of ``quantity`` units on the plan's line (into ``batch_no``, which exists
    in the pool): the line's received quantity rises, the order is received when every line
    is. The line is re-read under lock: the receipt never takes it past its quantity.
    ``purchase_order.received`` and ``.changed`` are announced (``events=False``: the caller
    announces them with ``announce_receipt`` once the receipt is complete)."""
    line = PurchaseOrderLine
    result = session.execute(
        update(line).where(line.id == plan.line.id,
                           line.received_quantity + quantity <= line.quantity)
        .values(received_quantity=line.received_quantity + quantity)
        .execution_options(synchronize_session="fetch"))
    if result.rowcount != 1:
        raise Blocked(f"purchase order {plan.order.po_no} line {plan.line.line_no}: receiving "
                      f"{quantity} would exceed the {plan.line.quantity} ordered")
    receipt = _numbered(session, Receipt(
        vendor_id=plan.vendor.id, po_id=plan.order.id, po_line_id=plan.line.id,
        upload_id=upload_id, batch_no=batch_no, sku=plan.line.sku, quantity=quantity,
        unit_cost=plan.line.unit_cost, currency=plan.order.currency,
        received_at=received_at or _now()), "receipt_no", "rcpt", plan.vendor.slug)
    left = session.scalar(select(func.count()).select_from(line).where(
        line.po_id == plan.order.id, line.received_quantity < line.quantity))
    if not left:
        session.execute(update(PurchaseOrder).where(PurchaseOrder.id == plan.order.id)
                        .values(status=OrderStatus.RECEIVED.value, updated_at=_now())
                        .execution_options(synchronize_session="fetch"))
    session.flush()
    if events:
        announce_receipt(session, plan.order, receipt)
    return receipt


def announce_receipt(session: Session, order: PurchaseOrder, receipt: Receipt) -> None:
    """``purchase_order.received`` (the receipt) and ``purchase_order.changed`` (the order
    after it), when the transaction commits."""
    view = order_view(session, order)
    line = session.get(PurchaseOrderLine, receipt.po_line_id)
    assert line is not None
    announce(session, [
        purchase_order_received(
            {"po_no": order.po_no, "receipt_no": receipt.receipt_no, "line_no": line.line_no,
             "sku": receipt.sku, "quantity": receipt.quantity, "unit_cost": receipt.unit_cost,
             "currency": receipt.currency, "batch_no": receipt.batch_no,
             "received_at": receipt.received_at},
            order_status=view["status"], line_received=line.received_quantity,
            at=receipt.received_at),
        purchase_order_changed(view, cause="receipt", ref=receipt.receipt_no,
                               at=receipt.received_at)])


def receive_quantity(
    session: Session, po_no: str, line_no: int, quantity: int, *,
    received_at: datetime | None = None, expires_on: date | None = None,
    sites: Sequence[str] | None = None,
) -> Receipt:
    """API purchasing: receive a quantity (no codes) into a new API batch at the line's cost."""
    order, line = get_order_line(session, po_no, line_no)
    plan = plan_receipt(session, line.id, mode=IssuanceMode.API.value)  # type: ignore[arg-type]
    if quantity <= 0 or quantity > plan.open_quantity:
        raise ProcurementError(f"purchase order {po_no} line {line_no}: quantity must be 1 to "
                               f"{plan.open_quantity}, got {quantity}")
    receipt = record_receipt(session, plan, batch_no=_placeholder(), quantity=quantity,
                             received_at=received_at, events=False)
    receipt.batch_no = _number("b", plan.vendor.slug, receipt.id, "r")  # type: ignore[arg-type]
    pool.add_batch(session, batch_no=receipt.batch_no, sku=line.sku,
                   issuance_mode=IssuanceMode.API.value, unit_cost=line.unit_cost,
                   currency=order.currency, quantity=quantity,
                   expiry_type=ExpiryType.FIXED_DATE if expires_on else ExpiryType.NONE,
                   expires_on=expires_on, purchase_order=order.po_no, sites=sites,
                   received_at=receipt.received_at)
    session.flush()
    announce_receipt(session, order, receipt)
    return receipt


# bills, payments, disputes -------------------------------------------------------------------
def bill_received(
    session: Session, po_no: str, *, bill_date: date | None = None,
    vendor_invoice_ref: str | None = None,
) -> VendorBill | None:
    """Settlement by purchased quantity: a vendor bill for what the order's lines received
    and were not billed yet (None when there is nothing to bill)."""
    order = get_order(session, po_no)
    contract = session.get(SupplierContract, order.contract_id)
    assert contract is not None
    if contract.settlement_mode != SettlementMode.PURCHASED_QUANTITY:
        raise Blocked(f"contract {contract.contract_no} settles by {contract.settlement_mode}, "
                      "not by the received quantity")
    lines = unbilled_lines(session, order)
    if not lines:
        return None
    return bill_lines(session, order, lines, mode=contract.settlement_mode,
                      bill_date=bill_date or _today(), vendor_invoice_ref=vendor_invoice_ref)


def unbilled_lines(session: Session, order: PurchaseOrder
                   ) -> list[tuple[PurchaseOrderLine, int]]:
    """(line, units received and not billed yet) of the order's lines that have any."""
    lines = [(ln, ln.received_quantity - ln.billed_quantity)
             for ln in order_lines(session, order.id)]  # type: ignore[arg-type]
    return [(ln, n) for ln, n in lines if n > 0]


def bill_lines(
    session: Session, order: PurchaseOrder, lines: Sequence[tuple[PurchaseOrderLine, int]],
    *, mode: str, bill_date: date, period: str | None = None, memo: str | None = None,
    vendor_invoice_ref: str | None = None,
) -> VendorBill:
    """A vendor bill of ``quantity`` units of each given line of one order; each line's billed
    quantity rises in the same transaction, never past what it received."""
    contract = session.get(SupplierContract, order.contract_id)
    vendor = session.get(Vendor, order.vendor_id)
    assert contract is not None and vendor is not None
    now = _now()
    total = sum((ln.unit_cost * n for ln, n in lines), Decimal(0))
    bill = _numbered(session, VendorBill(
        vendor_id=vendor.id, po_id=order.id, settlement_mode=mode, currency=order.currency,
        vendor_invoice_ref=vendor_invoice_ref, period=period, bill_date=bill_date,
        due_date=bill_date + timedelta(days=contract.payment_terms_days), total=total,
        created_at=now, updated_at=now), "bill_no", "bill", vendor.slug)
    pol = PurchaseOrderLine
    for n, (line, quantity) in enumerate(lines, 1):
        changed = session.execute(
            update(pol).where(pol.id == line.id,
                              pol.billed_quantity + quantity <= pol.received_quantity)
            .values(billed_quantity=pol.billed_quantity + quantity)
            .execution_options(synchronize_session="fetch")).rowcount
        if changed != 1:
            raise Blocked(f"purchase order {order.po_no} line {line.line_no}: billing "
                          f"{quantity} would pass what it received")
        session.add(VendorBillLine(
            bill_id=bill.id, line_no=n, po_line_id=line.id, sku=line.sku, quantity=quantity,
            unit_cost=line.unit_cost, amount=line.unit_cost * quantity,
            description=memo or f"{order.po_no} line {line.line_no}"))
    session.flush()
    view = {"bill_no": bill.bill_no, "vendor": vendor.external_id, "vendor_name": vendor.name,
            "po_no": order.po_no, "settlement_mode": bill.settlement_mode,
            "currency": bill.currency, "period": bill.period, "bill_date": bill.bill_date,
            "due_date": bill.due_date, "status": bill.status, "total": bill.total,
            "vendor_invoice_ref": bill.vendor_invoice_ref,
            "lines": [{"line_no": n, "po_line_no": line.line_no, "sku": line.sku,
                       "quantity": quantity, "unit_cost": line.unit_cost,
                       "amount": line.unit_cost * quantity}
                      for n, (line, quantity) in enumerate(lines, 1)]}
    announce(session, [vendor_bill_created(view, at=bill.created_at),
                       purchase_order_changed(order_view(session, order), cause="bill",
                                              ref=bill.bill_no, at=bill.created_at)])
    return bill


def open_dispute(
    session: Session, vendor_id: int, *, subject_type: str, subject_ref: str, reason: str,
    raised_by: str, amount: Decimal | None = None, currency: str | None = None,
) -> VendorDispute:
    if subject_type not in {"bill", "upload", "write_off", "purchase_order", "payment"}:
        raise ProcurementError(f"a dispute is about a bill, upload, write_off, purchase_order "
                               f"or payment, not {subject_type!r}")
    vendor = session.get(Vendor, vendor_id)
    if vendor is None:
        raise NotFound(f"no vendor {vendor_id}")
    return _numbered(session, VendorDispute(
        vendor_id=vendor_id, subject_type=subject_type, subject_ref=subject_ref[:64],
        reason=reason[:2000], amount=None if amount is None else _amount(amount, "dispute"),
        currency=currency, raised_by=raised_by, created_at=_now()),
        "dispute_no", "dsp", vendor.slug)


# the vendor's statement ------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _row(obj: Any, fields: Sequence[str]) -> dict[str, Any]:
    return {f: _plain(getattr(obj, f)) for f in fields}


ORDER_FIELDS = ("po_no", "kind", "status", "currency", "tran_date", "site", "business_date")
LINE_FIELDS = ("line_no", "sku", "quantity", "unit_cost", "received_quantity",
               "billed_quantity")
RECEIPT_FIELDS = ("receipt_no", "sku", "quantity", "unit_cost", "currency", "batch_no",
                  "received_at")
BILL_FIELDS = ("bill_no", "status", "settlement_mode", "currency", "total", "bill_date",
               "due_date", "period", "vendor_invoice_ref")
PAYMENT_FIELDS = ("payment_no", "status", "amount", "currency", "requested_on",
                  "confirmed_at", "end_to_end_id")
DISPUTE_FIELDS = ("dispute_no", "status", "subject_type", "subject_ref", "reason", "amount",
                  "currency", "created_at")


def statement(session: Session, vendor_id: int) -> dict[str, Any]:
    """Everything a vendor may see of its own business with us: purchase orders (with lines),
    receipts, bills, payments and open disputes. Only this vendor's rows, by construction."""
    orders = list(session.scalars(select(PurchaseOrder).where(
        PurchaseOrder.vendor_id == vendor_id).order_by(PurchaseOrder.id)))
    lines: dict[int, list[dict[str, Any]]] = {}
    if orders:
        for line in session.scalars(select(PurchaseOrderLine).where(
                PurchaseOrderLine.po_id.in_([o.id for o in orders]))  # type: ignore[union-attr]
                .order_by(PurchaseOrderLine.po_id, PurchaseOrderLine.line_no)):
            lines.setdefault(line.po_id, []).append(_row(line, LINE_FIELDS))
    po_no = {o.id: o.po_no for o in orders}
    receipts = [{**_row(r, RECEIPT_FIELDS), "po_no": po_no.get(r.po_id)}
                for r in session.scalars(select(Receipt).where(Receipt.vendor_id == vendor_id)
                                         .order_by(Receipt.id))]
    bills = list(session.scalars(select(VendorBill).where(VendorBill.vendor_id == vendor_id)
                                 .order_by(VendorBill.id)))
    bill_no = {b.id: b.bill_no for b in bills}
    payments = [{**_row(p, PAYMENT_FIELDS), "bill_no": bill_no.get(p.bill_id)}
                for p in session.scalars(select(VendorPayment).where(
                    VendorPayment.vendor_id == vendor_id).order_by(VendorPayment.id))]
    disputes = [_row(d, DISPUTE_FIELDS) for d in session.scalars(
        select(VendorDispute).where(VendorDispute.vendor_id == vendor_id,
                                    VendorDispute.status == DisputeStatus.OPEN)
        .order_by(VendorDispute.id))]
    return {
        "purchase_orders": [{**_row(o, ORDER_FIELDS), "lines": lines.get(o.id, [])}  # type: ignore[arg-type]
                            for o in orders],
        "receipts": receipts,
        "bills": [{**_row(b, BILL_FIELDS), "po_no": po_no.get(b.po_id)} for b in bills],  # type: ignore[arg-type]
        "payments": payments,
        "open_disputes": disputes,
    }


STATEMENT_CSV_COLUMNS = ("section", "ref", "line", "sku", "quantity", "received", "billed",
                         "unit_cost", "amount", "currency", "status", "date", "detail")


def statement_rows(data: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    """The statement flattened to one CSV row per PO line, receipt, bill, payment, dispute."""
    for o in data["purchase_orders"]:
        for line in o["lines"]:
            yield {"section": "purchase_order", "ref": o["po_no"], "line": line["line_no"],
                   "sku": line["sku"], "quantity": line["quantity"],
                   "received": line["received_quantity"], "billed": line["billed_quantity"],
                   "unit_cost": line["unit_cost"], "currency": o["currency"],
                   "status": o["status"], "date": o["tran_date"]}
    for r in data["receipts"]:
        yield {"section": "receipt", "ref": r["receipt_no"], "sku": r["sku"],
               "quantity": r["quantity"], "unit_cost": r["unit_cost"],
               "currency": r["currency"], "date": r["received_at"], "detail": r["po_no"]}
    for b in data["bills"]:
        yield {"section": "bill", "ref": b["bill_no"], "amount": b["total"],
               "currency": b["currency"], "status": b["status"], "date": b["bill_date"],
               "detail": b["po_no"] or b["period"]}
    for p in data["payments"]:
        yield {"section": "payment", "ref": p["payment_no"], "amount": p["amount"],
               "currency": p["currency"], "status": p["status"], "date": p["requested_on"],
               "detail": p["bill_no"]}
    for d in data["open_disputes"]:
        yield {"section": "dispute", "ref": d["dispute_no"], "amount": d["amount"],
               "currency": d["currency"], "status": d["status"], "date": d["created_at"],
               "detail": f"{d['subject_type']} {d['subject_ref']}: {d['reason']}"}
