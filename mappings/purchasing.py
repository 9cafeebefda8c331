"""Bodies of the ERP transforms of API purchasing, settlement, payments and returns
(docs/erp-records.md). Pure functions, no I/O.

A transform makes one record from another (DESIGN.md section 5) and is not idempotent: each
body carries the target's stable external id, and callers look that id up before sending.
Lines name the source's line (``line``) and carry quantity, rate and amount, so the made
record's total is exactly what vouchflow computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from mappings.procurement import clean, line_item


@dataclass(frozen=True)
class TransformLine:
    line: int
    """The source record's line number."""
    quantity: int
    rate: Decimal
    batch_no: str | None = None


def _items(lines: Sequence[TransformLine]) -> dict[str, Any]:
    return {"items": [line_item(ln.line, ln.quantity, ln.rate, batch_no=ln.batch_no)
                      for ln in lines]}


def day_receipt(*, receipt_no: str, tran_date: date, lines: Sequence[TransformLine],
                memo: str | None = None) -> dict[str, Any]:
    """purchaseOrder -> itemReceipt: every line of a daily API order, received in full."""
    return clean({"externalId": receipt_no, "tranId": receipt_no,
                   "tranDate": tran_date.isoformat(), "memo": memo, "item": _items(lines)})


def vendor_bill(*, bill_no: str, bill_date: date, due_date: date,
                lines: Sequence[TransformLine], memo: str | None = None,
                vendor_invoice_ref: str | None = None) -> dict[str, Any]:
    """purchaseOrder -> vendorBill: the quantities settled of the order's lines."""
    return clean({"externalId": bill_no, "tranId": vendor_invoice_ref or bill_no,
                   "tranDate": bill_date.isoformat(), "dueDate": due_date.isoformat(),
                   "memo": memo, "approvalStatus": "approved", "item": _items(lines)})


def vendor_payment(*, payment_no: str, paid_on: date, memo: str | None = None
                   ) -> dict[str, Any]:
    """vendorBill -> vendorPayment: the bill paid in full (the ERP applies its total)."""
    return clean({"externalId": payment_no, "tranId": payment_no,
                   "tranDate": paid_on.isoformat(), "memo": memo})


def vendor_credit(*, credit_no: str, credit_date: date, lines: Sequence[TransformLine],
                  memo: str | None = None) -> dict[str, Any]:
    """vendorBill -> vendorCredit: returned units of the bill's lines."""
    return clean({"externalId": credit_no, "tranId": credit_no,
                   "tranDate": credit_date.isoformat(), "memo": memo,
                   "item": _items(lines)})
