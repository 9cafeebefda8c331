"""Typed ERP records as the ERP sends them (docs/erp-records.md). Not canonical: mappings turn
them into canonical models."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from canonical.money import parse_decimal


def _exact_number(value: Any) -> Any:
    # numbers arrive as Decimal (the client decodes JSON so); a float here means someone
    # decoded the body the lossy way, and its digits can no longer be trusted
    return None if value is None else parse_decimal(value, field="number")


ExactNumber = Annotated[Decimal | None, BeforeValidator(_exact_number)]


class ErpRecord(BaseModel):
    """Common shape: internal id, optional external id, links. Unknown fields are kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str
    external_id: str | None = Field(default=None, alias="externalId")
    links: list[dict[str, Any]] = Field(default_factory=list)


class InventoryItem(ErpRecord):
    item_id: str | None = Field(default=None, alias="itemId")
    display_name: str | None = Field(default=None, alias="displayName")
    is_inactive: bool = Field(default=False, alias="isInactive")
    last_modified: datetime | None = Field(default=None, alias="lastModifiedDate")
    created: datetime | None = Field(default=None, alias="createdDate")
    kind: str | None = Field(default=None, alias="custitem_vf_kind")
    face_value: ExactNumber = Field(default=None, alias="custitem_vf_face_value")
    currency: str | None = Field(default=None, alias="custitem_vf_currency")
    sales_areas: str | None = Field(default=None, alias="custitem_vf_sales_areas")
    issuance_mode: str | None = Field(default=None, alias="custitem_vf_issuance_mode")
    write_off_type: str | None = Field(default=None, alias="custitem_vf_write_off_type")
    status: str | None = Field(default=None, alias="custitem_vf_status")
    code_format: str | None = Field(default=None, alias="custitem_vf_code_format")


class Ref(BaseModel):
    """A reference to another record: ``{"id": "812"}`` (``refName`` is informative only)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    id: str
    ref_name: str | None = Field(default=None, alias="refName")


class Line(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    line: int | None = None
    item: Ref | None = None
    quantity: ExactNumber = None
    rate: ExactNumber = None
    amount: ExactNumber = None
    description: str | None = None
    batch_no: str | None = Field(default=None, alias="custcol_vf_batch_no")
    line_id: str | None = Field(default=None, alias="custcol_vf_line_id")
    site: str | None = Field(default=None, alias="custcol_vf_site")


class Lines(BaseModel):
    model_config = ConfigDict(extra="allow")

    items: list[Line] = Field(default_factory=list)


class JournalLine(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    line: int | None = None
    account: Ref
    debit: ExactNumber = None
    credit: ExactNumber = None
    memo: str | None = None


class JournalLines(BaseModel):
    model_config = ConfigDict(extra="allow")

    items: list[JournalLine] = Field(default_factory=list)


class Vendor(ErpRecord):
    entity_id: str | None = Field(default=None, alias="entityId")
    company_name: str | None = Field(default=None, alias="companyName")
    currency: str | None = None
    email: str | None = None
    is_inactive: bool = Field(default=False, alias="isInactive")
    settlement_mode: str | None = Field(default=None, alias="custentity_vf_settlement_mode")
    contract_signed: bool = Field(default=False, alias="custentity_vf_contract_signed")
    bank_account: str | None = Field(default=None, alias="custentity_vf_bank_account")
    bank_bic: str | None = Field(default=None, alias="custentity_vf_bank_bic")
    country: str | None = Field(default=None, alias="custentity_vf_country")


class Customer(ErpRecord):
    entity_id: str | None = Field(default=None, alias="entityId")
    company_name: str | None = Field(default=None, alias="companyName")
    currency: str | None = None
    site: str | None = Field(default=None, alias="custentity_vf_site")


class Transaction(ErpRecord):
    """Fields every transaction shares."""

    tran_id: str | None = Field(default=None, alias="tranId")
    tran_date: date | None = Field(default=None, alias="tranDate")
    entity: Ref | None = None
    currency: str | None = None
    memo: str | None = None
    created_from: Ref | None = Field(default=None, alias="createdFrom")
    total: ExactNumber = None
    status: str | None = None


class PurchaseRequisition(Transaction):
    item: Lines = Field(default_factory=Lines)


class PurchaseOrder(Transaction):
    site: str | None = Field(default=None, alias="custbody_vf_site")
    business_date: date | None = Field(default=None, alias="custbody_vf_business_date")
    item: Lines = Field(default_factory=Lines)


class ItemReceipt(Transaction):
    item: Lines = Field(default_factory=Lines)


class VendorBill(Transaction):
    due_date: date | None = Field(default=None, alias="dueDate")
    approval_status: str | None = Field(default=None, alias="approvalStatus")
    item: Lines = Field(default_factory=Lines)


class VendorCredit(Transaction):
    item: Lines = Field(default_factory=Lines)


class SalesOrder(Transaction):
    other_ref_num: str | None = Field(default=None, alias="otherRefNum")
    site: str | None = Field(default=None, alias="custbody_vf_site")
    item: Lines = Field(default_factory=Lines)


class JournalEntry(Transaction):
    site: str | None = Field(default=None, alias="custbody_vf_site")
    line: JournalLines = Field(default_factory=JournalLines)


class BatchRecord(ErpRecord):
    """``customrecord_vf_batch``: the book's copy of a batch."""

    name: str | None = None
    sku: Ref | None = Field(default=None, alias="custrecord_vf_batch_sku")
    quantity: int | None = Field(default=None, alias="custrecord_vf_batch_quantity")
    available: int | None = Field(default=None, alias="custrecord_vf_batch_available")
    remaining: int | None = Field(default=None, alias="custrecord_vf_batch_remaining")
    status: str | None = Field(default=None, alias="custrecord_vf_batch_status")
    unit_cost: ExactNumber = Field(default=None, alias="custrecord_vf_batch_unit_cost")
    currency: str | None = Field(default=None, alias="custrecord_vf_batch_currency")
    expiry_type: str | None = Field(default=None, alias="custrecord_vf_batch_expiry_type")
    expires_on: date | None = Field(default=None, alias="custrecord_vf_batch_expires_on")
    purchase_order: Ref | None = Field(default=None, alias="custrecord_vf_batch_po")
    sites: str | None = Field(default=None, alias="custrecord_vf_batch_sites")


class CodeRecord(ErpRecord):
    """``customrecord_vf_code``: a code as the book knows it (masked, hashed; never the code)."""

    name: str | None = None
    code_hash: str | None = Field(default=None, alias="custrecord_vf_code_hash")
    batch: Ref | None = Field(default=None, alias="custrecord_vf_code_batch")
    status: str | None = Field(default=None, alias="custrecord_vf_code_status")
    order: Ref | None = Field(default=None, alias="custrecord_vf_code_order")


RECORD_TYPES: dict[str, type[ErpRecord]] = {
    "inventoryItem": InventoryItem,
    "vendor": Vendor,
    "customer": Customer,
    "purchaseRequisition": PurchaseRequisition,
    "purchaseOrder": PurchaseOrder,
    "itemReceipt": ItemReceipt,
    "vendorBill": VendorBill,
    "vendorCredit": VendorCredit,
    "salesOrder": SalesOrder,
    "journalEntry": JournalEntry,
    "customrecord_vf_batch": BatchRecord,
    "customrecord_vf_code": CodeRecord,
}


def parse_record(record_type: str, raw: dict[str, Any]) -> ErpRecord:
    """A raw record as its typed model (unknown types as the generic ErpRecord)."""
    return RECORD_TYPES.get(record_type, ErpRecord).model_validate(raw)


# SuiteQL ------------------------------------------------------------------------------------
# SuiteQL answers every value as a string (numbers as decimal text, checkboxes T/F) and uses
# lower-case column names; these tables turn a row back into the REST record's shape so one
# mapping serves both read paths.
SUITEQL_TIME_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS'

INVENTORY_ITEM_COLUMNS: dict[str, tuple[str, str]] = {
    # column -> (REST field, kind)
    "id": ("id", "text"),
    "externalid": ("externalId", "text"),
    "itemid": ("itemId", "text"),
    "displayname": ("displayName", "text"),
    "isinactive": ("isInactive", "bool"),
    "created": ("createdDate", "time"),
    "modified": ("lastModifiedDate", "time"),
    "custitem_vf_kind": ("custitem_vf_kind", "text"),
    "custitem_vf_face_value": ("custitem_vf_face_value", "number"),
    "custitem_vf_currency": ("custitem_vf_currency", "text"),
    "custitem_vf_sales_areas": ("custitem_vf_sales_areas", "text"),
    "custitem_vf_issuance_mode": ("custitem_vf_issuance_mode", "text"),
    "custitem_vf_write_off_type": ("custitem_vf_write_off_type", "text"),
    "custitem_vf_status": ("custitem_vf_status", "text"),
    "custitem_vf_code_format": ("custitem_vf_code_format", "text"),
}


def inventory_item_select() -> str:
    """The SELECT list that reads inventory items with every field the mappings use."""
    parts = []
    for column in INVENTORY_ITEM_COLUMNS:
        if column == "created":
            parts.append(f"TO_CHAR(createddate, '{SUITEQL_TIME_FORMAT}') AS created")
        elif column == "modified":
            parts.append(f"TO_CHAR(lastmodifieddate, '{SUITEQL_TIME_FORMAT}') AS modified")
        else:
            parts.append(column)
    return ", ".join(parts)


def suiteql_row_to_record(row: dict[str, Any], columns: dict[str, tuple[str, str]],
                          timezone: str) -> dict[str, Any]:
    """A SuiteQL row in the REST record's shape: numbers as Decimal, checkboxes as bool,
    local times (the account's zone) as aware ISO timestamps. Absent columns were NULL."""
    return suiteql_rows_to_records([row], columns, timezone)[0]


def suiteql_rows_to_records(rows: Iterable[dict[str, Any]], columns: dict[str, tuple[str, str]],
                            timezone: str) -> list[dict[str, Any]]:
    """``suiteql_row_to_record`` of every row of a page, the column table read once per page
    (a full catalogue read is 100,000 rows of which only four columns need converting)."""
    zone = ZoneInfo(timezone)
    renamed = {column: field for column, (field, _) in columns.items()}
    converted = [(column, field, kind) for column, (field, kind) in columns.items()
                 if kind != "text"]
    # renaming every column, then converting the few that need it, gives what converting
    # column by column gives unless two columns of a row end up as one field (the later
    # wins): two columns of the table for one field, or a column outside the table named
    # like a converted field; such rows go column by column
    one_to_one = len(set(renamed.values())) == len(renamed)
    shadowing = {field for column, field, _ in converted if field != column}
    flags = [field for field, kind in columns.values() if kind == "bool"]
    records: list[dict[str, Any]] = []
    for row in rows:
        if one_to_one and shadowing.isdisjoint(row):
            record = {renamed.get(column, column): value for column, value in row.items()}
            for column, field, kind in converted:
                if column in row:
                    record[field] = _suiteql_value(row[column], kind, zone)
        else:
            record = {}
            for column, value in row.items():
                field, kind = columns.get(column, (column, "text"))
                record[field] = _suiteql_value(value, kind, zone)
        for field in flags:
            if field not in record:
                record[field] = False
        records.append(record)
    return records


def _suiteql_value(value: Any, kind: str, zone: ZoneInfo) -> Any:
    if kind == "bool":
        return value == "T"
    if kind == "number":
        try:
            return Decimal(value)
        except (ArithmeticError, ValueError, TypeError):
            return value  # let validation name it
    if kind == "time":
        return _suiteql_time(value, zone)
    return value


@lru_cache(maxsize=4096)
def _local_time(value: str, zone: ZoneInfo) -> str:
    return datetime.fromisoformat(value).replace(tzinfo=zone).isoformat()


def _suiteql_time(value: Any, zone: ZoneInfo) -> Any:
    """A local time as an aware ISO timestamp (the items of a read share few times)."""
    try:
        return _local_time(value, zone)
    except (ValueError, TypeError):
        return value
