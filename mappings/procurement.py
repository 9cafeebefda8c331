"""vouchflow's procurement records -> ERP records (docs/erp-records.md). Pure functions, no I/O.

Every record carries the stable external id vouchflow gave it (``vendor-acme``,
``pr-acme-000003``, ``po-acme-000012``, ``rcpt-acme-000031``, the batch number), so writing it
again is an upsert of the same record, never a second one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class ErpLine:
    line: int
    item_id: str
    """The ERP's inventoryItem internal id."""
    quantity: int
    rate: Decimal
    description: str | None = None
    batch_no: str | None = None


def line_item(line: int, quantity: int, rate: Decimal, *, item_id: str | None = None,
              description: str | None = None, batch_no: str | None = None) -> dict[str, Any]:
    """One line of an ERP transaction body; the amount is exactly ``rate * quantity``."""
    item: dict[str, Any] = {"line": line}
    if item_id is not None:
        item["item"] = {"id": item_id}
    item.update(quantity=quantity, rate=rate, amount=rate * quantity)
    if description:
        item["description"] = description
    if batch_no:
        item["custcol_vf_batch_no"] = batch_no
    return item


def _lines(lines: Sequence[ErpLine]) -> dict[str, Any]:
    return {"items": [line_item(ln.line, ln.quantity, ln.rate, item_id=ln.item_id,
                                description=ln.description, batch_no=ln.batch_no)
                      for ln in lines]}


def clean(record: dict[str, Any]) -> dict[str, Any]:
    """Fields without a value are left out (an upsert replaces the record: absent = empty)."""
    return {k: v for k, v in record.items() if v is not None}


def vendor_record(
    *, external_id: str, name: str, currency: str | None, email: str | None,
    country: str | None, bank_account: str | None, bank_bic: str | None,
    settlement_mode: str | None, contract_signed: bool, inactive: bool,
) -> dict[str, Any]:
    return clean({
        "externalId": external_id, "entityId": external_id, "companyName": name,
        "currency": currency, "email": email, "isInactive": inactive,
        "custentity_vf_settlement_mode": settlement_mode,
        "custentity_vf_contract_signed": contract_signed,
        "custentity_vf_bank_account": bank_account, "custentity_vf_bank_bic": bank_bic,
        "custentity_vf_country": country,
    })


def purchase_requisition(
    *, request_no: str, vendor_id: str, tran_date: date, currency: str, memo: str | None,
    lines: Sequence[ErpLine],
) -> dict[str, Any]:
    return clean({
        "externalId": request_no, "entity": {"id": vendor_id},
        "tranDate": tran_date.isoformat(), "currency": currency, "memo": memo,
        "item": _lines(lines),
    })


def purchase_order(
    *, po_no: str, vendor_id: str, tran_date: date, currency: str, memo: str | None,
    status: str, site: str | None, business_date: date | None, lines: Sequence[ErpLine],
) -> dict[str, Any]:
    return clean({
        "externalId": po_no, "tranId": po_no, "entity": {"id": vendor_id},
        "tranDate": tran_date.isoformat(), "currency": currency, "memo": memo,
        "status": status, "custbody_vf_site": site,
        "custbody_vf_business_date": business_date.isoformat() if business_date else None,
        "item": _lines(lines),
    })


def item_receipt(*, receipt_no: str, tran_date: date, line: int, quantity: int,
                 batch_no: str, memo: str | None = None) -> dict[str, Any]:
    """The body of the purchaseOrder -> itemReceipt transform: the one PO line received, with
    the batch it became."""
    return clean({
        "externalId": receipt_no, "tranId": receipt_no, "tranDate": tran_date.isoformat(),
        "memo": memo,
        "item": {"items": [{"line": line, "quantity": quantity,
                            "custcol_vf_batch_no": batch_no}]},
    })


def batch_record(
    *, batch_no: str, item_id: str, quantity: int, available: int, remaining: int,
    status: str, unit_cost: Decimal, currency: str, expiry_type: str,
    expires_on: date | None, po_id: str | None, sites: Sequence[str],
) -> dict[str, Any]:
    return clean({
        "externalId": batch_no, "name": batch_no,
        "custrecord_vf_batch_sku": {"id": item_id},
        "custrecord_vf_batch_quantity": quantity,
        "custrecord_vf_batch_available": available,
        "custrecord_vf_batch_remaining": remaining,
        "custrecord_vf_batch_status": status,
        "custrecord_vf_batch_unit_cost": unit_cost,
        "custrecord_vf_batch_currency": currency,
        "custrecord_vf_batch_expiry_type": expiry_type,
        "custrecord_vf_batch_expires_on": expires_on.isoformat() if expires_on else None,
        "custrecord_vf_batch_po": {"id": po_id} if po_id else None,
        "custrecord_vf_batch_sites": ",".join(sites) if sites else None,
    })
