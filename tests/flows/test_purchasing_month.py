"""The scripted month (tests/flows/purchasing_world.py) through every purchasing flow: daily
API orders, settlement in all three modes, the payment run and its confirmation. Effects are
counted at the far end (the ERP sandbox's effect log)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import select

from connectors.pain001 import NAMESPACE, validate
from flows import costing as flows_costing
from flows.api_purchase_orders import api_purchase_orders
from flows.code_ops import return_codes
from flows.costing import costing_daily
from flows.settlement import confirm_payments, payment_run, settle_vendors
from state import code_ops
from state import costing as state_costing
from state import procurement as proc
from state.db import get_engine, session_scope
from state.events import read_events
from state.models import PoolBatch
from state.purchasing_models import CostKind
from tests.flows import purchasing_world as pw

pytestmark = pytest.mark.usefixtures("prefect_harness", "state_url")


def effects(sandboxes, name: str) -> Counter[str]:
    return Counter(sandboxes.erp.effects.keys(name))


def announced(*patterns: str) -> Counter[str]:
    """Events recorded so far, by type and entity (``type entity``)."""
    with session_scope(get_engine()) as s:
        return Counter(f"{e.type} {e.entity_key}" for e in read_events(
            s, after=0, patterns=list(patterns), limit=100_000))


def bills(vendor: str) -> list[tuple[str, int, Decimal, str]]:
    """(po_no, quantity, total, currency) of a vendor's bills, in order."""
    with session_scope(get_engine()) as s:
        v = proc.get_vendor(s, vendor)
        out = []
        for b in s.scalars(select(proc.VendorBill).where(proc.VendorBill.vendor_id == v.id)
                           .order_by(proc.VendorBill.id)):
            qty = sum(ln.quantity for ln in s.scalars(select(proc.VendorBillLine).where(
                proc.VendorBillLine.bill_id == b.id)))
            po = s.get(proc.PurchaseOrder, b.po_id)
            out.append((po.po_no, qty, b.total, b.currency))
        return out


@pytest.mark.seed(16, 0)
def test_a_month_of_purchasing_ends_in_the_bills_and_payments_computed_by_hand(
        sandboxes, monkeypatch):
    monkeypatch.setenv("VOUCHFLOW_PAYER_NAME", "Vouchflow Pte Ltd")
    monkeypatch.setenv("VOUCHFLOW_PAYER_ACCOUNT_SGD", "SG98VFLW00000001")
    monkeypatch.setenv("VOUCHFLOW_PAYER_ACCOUNT", "VF-USD-0001")
    monkeypatch.setenv("VOUCHFLOW_PAYER_BIC", "DBSSSGSG")
    world = pw.build(sandboxes)
    s1, s2 = world.sales_sku, world.write_off_sku

    # daily API orders: sg1 (UTC+8) and th1 (UTC+7), each cut at its own midnight
    for day in (pw.D1, pw.D2):
        summary = asyncio.run(api_purchase_orders(day=day, sites=["sg1", "th1"]))
        assert summary["dead_lettered"] == summary["problems"] == 0, summary
    day_pos = {f"po-sg1-{s1}-20261005": 4, f"po-sg1-{s2}-20261005": 5,
               f"po-th1-{s1}-20261005": 2, f"po-sg1-{s1}-20261006": 3}
    assert effects(sandboxes, "purchaseOrder.created") == Counter(dict.fromkeys(day_pos, 1))
    assert effects(sandboxes, "itemReceipt.transformed") == Counter(
        {f"rcpt-{k.removeprefix('po-')}": 1 for k in day_pos})
    with session_scope(get_engine()) as s:
        sales_batch = s.get(PoolBatch, world.batches["sales"])
        # 100 received, 9 sold and booked: the book holds 91, nothing unposted
        assert (sales_batch.available, sales_batch.remaining, sales_batch.unposted) == (91, 91, 0)

    # subscribers hear of each daily order once
    orders_heard = announced("purchase_order.*")
    assert {k: orders_heard[f"purchase_order.created {k}"] for k in day_pos} == dict.fromkeys(
        day_pos, 1)

    # re-running a day changes nothing; a late sale goes into a correction, not a rewrite
    again = asyncio.run(api_purchase_orders(day=pw.D1, sites=["sg1", "th1"]))
    assert (again["orders"], again["corrections"], again["erp_receipts"]) == (0, 0, 0)
    assert announced("purchase_order.*") == orders_heard  # nor anything to announce
    pw.late_sale(world)
    late = asyncio.run(api_purchase_orders(day=pw.D1, sites=["sg1"]))
    correction = f"po-sg1-{s1}-20261005-c1"
    assert (late["orders"], late["corrections"], late["units"]) == (0, 1, 1)
    assert effects(sandboxes, "purchaseOrder.created")[correction] == 1
    assert sandboxes.erp.effects.count("purchaseOrder.updated") == 0  # no order rewritten
    with session_scope(get_engine()) as s:
        b = s.get(PoolBatch, world.batches["sales"])
        assert (b.available, b.remaining, b.unposted) == (90, 90, 0)

    # settlement of October in all three modes
    first, second = pw.write_off_files(world)
    assert (first.rows_accepted, second.rows_rejected) == (5, 1)
    settled = asyncio.run(settle_vendors(pw.PERIOD, approve_by="cfo"))
    assert settled["erp_bills"] == settled["bills"] == 6 and settled["dead_lettered"] == 0
    assert bills(world.vendors["pool"]) == [(bills(world.vendors["pool"])[0][0], 10,
                                             Decimal("72.50"), "SGD")]
    assert bills(world.vendors["sales"]) == [
        (f"po-sg1-{s1}-20261005", 4, Decimal("12.40"), "SGD"),
        (f"po-th1-{s1}-20261005", 2, Decimal("6.20"), "SGD"),
        (f"po-sg1-{s1}-20261006", 3, Decimal("9.30"), "SGD"),
        (correction, 1, Decimal("3.10"), "SGD")]
    assert bills(world.vendors["write_off"]) == [
        (f"po-sg1-{s2}-20261005", 3, Decimal("6.00"), "USD")]
    reported = {r["vendor"]: r for r in settled["vendors"]}[world.vendors["write_off"]]
    assert (reported["matched"], reported["unknown"], reported["not sold"],
            reported["written off before"]) == (3, 1, 1, 1)
    with session_scope(get_engine()) as s:
        vendor = proc.get_vendor(s, world.vendors["write_off"])
        statement = proc.statement(s, vendor.id)
    assert [d["subject_type"] for d in statement["open_disputes"]] == ["write_off"]
    assert "1 unknown" in statement["open_disputes"][0]["reason"]
    assert world.issued[3][-4:] not in statement["open_disputes"][0]["reason"]
    assert effects(sandboxes, "vendorBill.transformed").total() == 6
    heard = announced("vendor_bill.*")
    assert sorted(heard.values()) == [1] * 12  # each bill created and approved, once
    assert sum(n for k, n in heard.items() if k.startswith("vendor_bill.approved")) == 6
    billed = announced("purchase_order.changed")
    again = asyncio.run(settle_vendors(pw.PERIOD))
    assert again["bills"] == again["erp_bills"] == 0
    assert announced("vendor_bill.*") == heard and announced("purchase_order.changed") == billed

    # payment run: one pain.001.001.09 file, two currencies, validated; then confirmed
    run = asyncio.run(payment_run(created_by="treasurer"))
    assert run["payments"] == 6 and run["totals"] == {"SGD": "103.50", "USD": "6.00"}
    data = Path(run["file"]).read_bytes()
    validate(data)
    doc = etree.fromstring(data)
    ns = {"p": NAMESPACE}
    assert doc.findtext("p:CstmrCdtTrfInitn/p:GrpHdr/p:NbOfTxs", namespaces=ns) == "6"
    assert sorted(doc.xpath("//p:InstdAmt/@Ccy", namespaces=ns)) == ["SGD"] * 5 + ["USD"]
    assert asyncio.run(payment_run())["payments"] == 0  # nothing left to pay
    paid = asyncio.run(confirm_payments(run["run_no"]))
    assert (paid["confirmed"], paid["bills_paid"]) == (6, 6)
    assert effects(sandboxes, "vendorPayment.transformed").total() == 6
    assert asyncio.run(confirm_payments(run["run_no"]))["bills_paid"] == 0
    paid = announced("vendor_bill.paid")
    assert len(paid) == 6 and set(paid.values()) == {1}
    with session_scope(get_engine()) as s:
        assert {b.status for b in s.scalars(select(proc.VendorBill))} == {"paid"}

    # a code in stock goes back to its supplier: a vendor credit made from its bill
    with session_scope(get_engine()) as s:
        (code_id,), missing = code_ops.ids_for_codes(s, world.keyring, [world.pool_codes[-2]])
        assert missing == 0
    returned = asyncio.run(return_codes(code_ids=[code_id], reason="damaged"))
    assert (returned["done"], returned["erp_credits"]) == (1, 1)
    assert effects(sandboxes, "vendorCredit.transformed").total() == 1
    assert asyncio.run(return_codes(code_ids=[code_id]))["skipped"] == 1

    # costing: the month's cost layers to the group finance system, once per document. The
    # sales of the script were recorded today: the clock moves to tomorrow to post today.
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    monkeypatch.setattr(flows_costing, "now_utc", lambda: tomorrow)
    monkeypatch.setattr(state_costing, "now_utc", lambda: tomorrow)
    today = datetime.now(UTC).date()
    posted = asyncio.run(costing_daily(day=date(2026, 10, 1), through=today))
    days = (today - date(2026, 10, 1)).days + 1
    # purchases: Oct 1 SGD and USD (API batches), today SGD (the pool's codes); cost of
    # sales today in both currencies; stock valued every day in both; six invoices
    assert posted["documents"] == posted["booked"] == 3 + 2 + 2 * days + 6, posted
    assert posted["differ"] == []
    finance = sandboxes.finance
    booked = finance.postings()
    assert len(booked) == posted["documents"]
    by_kind: dict[tuple[str, str], Decimal] = {}
    for p in booked:
        key = (p["kind"], p["currency"])
        by_kind[key] = by_kind.get(key, Decimal(0)) + Decimal(p["totalAmount"])
    pool_cost, sales_cost, wo_cost = pw.POOL_COST, pw.SALES_COST, pw.WRITE_OFF_COST
    # purchases less the returned code
    assert by_kind[("PURCHASE_COST", "SGD")] == 9 * pool_cost + 100 * sales_cost == Decimal("375.25")
    assert by_kind[("PURCHASE_COST", "USD")] == 50 * wo_cost
    assert by_kind[("COST_OF_SALES", "SGD")] == 5 * pool_cost + 10 * sales_cost == Decimal("67.25")
    assert by_kind[("COST_OF_SALES", "USD")] == 5 * wo_cost
    assert by_kind[("PROCUREMENT_INVOICE", "SGD")] == Decimal("103.50")
    assert by_kind[("PROCUREMENT_INVOICE", "USD")] == Decimal("6.00")
    last_day = {p["currency"]: Decimal(p["totalAmount"]) for p in booked
                if p["documentId"].startswith(f"invval-{today:%Y%m%d}")}
    assert last_day == {"SGD": 4 * pool_cost + 90 * sales_cost, "USD": 45 * wo_cost}
    with session_scope(get_engine()) as s:
        assert state_costing.totals(s, CostKind.SALE) == {"SGD": Decimal("67.25"),
                                                          "USD": Decimal("10.00")}
    again = asyncio.run(costing_daily(day=date(2026, 10, 1), through=today))
    assert (again["booked"], again["skipped"], again["differ"]) == (0, posted["documents"], [])
    assert len(finance.postings()) == posted["documents"]
