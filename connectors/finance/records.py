"""The group finance service's documents, as its WSDL defines them."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

Code = Annotated[str, Field(min_length=1, max_length=64)]


class PostingKind(StrEnum):
    PURCHASE_COST = "PURCHASE_COST"
    INVENTORY_VALUATION = "INVENTORY_VALUATION"
    COST_OF_SALES = "COST_OF_SALES"
    PROCUREMENT_INVOICE = "PROCUREMENT_INVOICE"


OPERATIONS = {
    PostingKind.PURCHASE_COST: "PostPurchaseCost",
    PostingKind.INVENTORY_VALUATION: "PostInventoryValuation",
    PostingKind.COST_OF_SALES: "PostCostOfSales",
    PostingKind.PROCUREMENT_INVOICE: "PostProcurementInvoice",
}


class PostingStatus(StrEnum):
    BOOKED = "BOOKED"
    REJECTED = "REJECTED"
    DUPLICATE = "DUPLICATE"
    UNKNOWN = "UNKNOWN"


def _four_decimals(value: Decimal) -> Decimal:
    if value != value.quantize(Decimal("0.0001")):
        raise ValueError(f"{value} has more than 4 decimals (the service's Amount type)")
    return value


class PostingLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    account: Code
    amount: Decimal
    cost_center: Code | None = None
    sku: Code | None = None
    batch_no: Code | None = None
    quantity: Decimal | None = None
    memo: str | None = Field(default=None, max_length=500)

    _amount = field_validator("amount")(_four_decimals)


class Posting(BaseModel):
    """One document: a documentId that never repeats for another posting."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: PostingKind
    document_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,100}$")
    company_code: Code
    period: str = Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    lines: tuple[PostingLine, ...] = Field(min_length=1)
    vendor_id: Code | None = None
    invoice_no: Code | None = None
    invoice_date: date | None = None
    tax_amount: Decimal | None = None

    @field_validator("tax_amount")
    @classmethod
    def _tax(cls, value: Decimal | None) -> Decimal | None:
        return None if value is None else _four_decimals(value)

    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal(0))

    def body(self) -> dict[str, object]:
        """The request element's content, in the WSDL's names."""
        lines = []
        for line in self.lines:
            entry: dict[str, object] = {"account": line.account}
            for attr, name in (("cost_center", "costCenter"), ("sku", "sku"),
                               ("batch_no", "batchNo"), ("quantity", "quantity")):
                value = getattr(line, attr)
                if value is not None:
                    entry[name] = value
            entry["amount"] = line.amount
            if line.memo is not None:
                entry["memo"] = line.memo
            lines.append(entry)
        body: dict[str, object] = {
            "documentId": self.document_id, "companyCode": self.company_code,
            "period": self.period, "currency": self.currency, "lines": {"line": lines},
        }
        if self.kind is PostingKind.PROCUREMENT_INVOICE:
            missing = [n for n in ("vendor_id", "invoice_no", "invoice_date", "tax_amount")
                       if getattr(self, n) is None]
            if missing:
                raise ValueError(f"a procurement invoice needs {', '.join(missing)}")
            body.update(vendorId=self.vendor_id, invoiceNo=self.invoice_no,
                        invoiceDate=self.invoice_date, taxAmount=self.tax_amount)
        return body


class PostingResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    document_id: str
    status: PostingStatus
    posting_ref: str | None = None
    message: str | None = None

    @property
    def booked(self) -> bool:
        """Booked now or before (a DUPLICATE answer carries the first booking's reference)."""
        return self.status in {PostingStatus.BOOKED, PostingStatus.DUPLICATE}


class PostingSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    document_id: str
    kind: PostingKind
    status: PostingStatus
    posting_ref: str
    currency: str
    total_amount: Decimal
    line_count: int
    booked_at: datetime
