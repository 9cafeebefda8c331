"""Transforms (purchaseOrder -> itemReceipt, ...) through the ERP client against the sandbox:
the target copies the source, takes the lines the body names, refuses over-receiving and a
repeated external id (a transform is not idempotent)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from connectors.erp import ErpClient
from connectors.errors import InvalidRecordError
from sandbox.core import serve
from sandbox.erp import ErpSandbox
from tests.connectors.test_erp_sandbox import FAST, settings


@pytest.fixture
def erp():
    sandbox = ErpSandbox(concurrency_limit=5)
    with serve(sandbox) as served:
        yield sandbox, served.base_url


def test_purchase_order_becomes_receipt_and_bill(erp):
    sandbox, base = erp
    vendor = sandbox.set_record("vendor", {"externalId": "vendor-acme", "entityId": "ACME",
                                           "companyName": "Acme", "currency": "EUR"})
    item = sandbox.set_record("inventoryItem", {"externalId": "SKU-1", "itemId": "SKU-1"})

    async def go() -> tuple[str, str, str]:
        async with ErpClient(settings(base), retry=FAST) as client:
            po = await client.upsert("purchaseOrder", "po-acme-1", {
                "externalId": "po-acme-1", "entity": {"id": vendor}, "currency": "EUR",
                "tranDate": "2026-11-20",
                "item": {"items": [
                    {"line": 1, "item": {"id": item}, "quantity": 10, "rate": Decimal("1.25")},
                    {"line": 2, "item": {"id": item}, "quantity": 5, "rate": Decimal("2")}]}})
            receipt = await client.transform("purchaseOrder", "eid:po-acme-1", "itemReceipt", {
                "externalId": "rcpt-1", "item": {"items": [{"line": 1, "quantity": 4}]}})
            with pytest.raises(InvalidRecordError, match="cannot transform more than 6"):
                await client.transform("purchaseOrder", po, "itemReceipt", {
                    "externalId": "rcpt-2", "item": {"items": [{"line": 1, "quantity": 7}]}})
            with pytest.raises(InvalidRecordError, match="duplicate external id"):
                await client.transform("purchaseOrder", po, "itemReceipt", {
                    "externalId": "rcpt-1", "item": {"items": [{"line": 1, "quantity": 1}]}})
            bill = await client.transform("purchaseOrder", po, "vendorBill",
                                          {"externalId": "bill-1"})
            return po, receipt, bill

    po, receipt, bill = asyncio.run(go())
    rec = sandbox.get_record("itemReceipt", receipt)
    assert rec["createdFrom"] == {"id": po} and rec["entity"] == {"id": vendor}
    assert rec["currency"] == "EUR" and rec["externalId"] == "rcpt-1"
    assert [(line["line"], line["quantity"], line["amount"]) for line in rec["item"]["items"]] \
        == [(1, 4, Decimal("5.00"))]
    assert sandbox.get_record("vendorBill", bill)["total"] == Decimal("22.50")
    assert sandbox.effects.count("itemReceipt.created", "rcpt-1") == 1
    assert sandbox.effects.count("itemReceipt.transformed") == 1
    assert sandbox.effects.count("itemReceipt.created", "rcpt-2") == 0


def test_unsupported_transform_is_refused(erp):
    sandbox, base = erp
    sandbox.set_record("vendor", {"externalId": "v", "entityId": "V", "companyName": "V"})

    async def go() -> None:
        async with ErpClient(settings(base), retry=FAST) as client:
            with pytest.raises(InvalidRecordError, match="not supported"):
                await client.transform("vendor", "eid:v", "itemReceipt", {})

    asyncio.run(go())
