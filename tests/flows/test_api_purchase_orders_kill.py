"""api-purchase-orders killed midway (SIGKILL of a real process) and run again: one purchase
order and one receipt per site, SKU and day in the ERP sandbox's effect log, and every unit
booked out of its batch once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from flows import sync_catalog as sc
from flows.api_purchase_orders import api_purchase_orders
from state import pool
from state import procurement as proc
from state.catalog import load_skus
from state.crypto import Keyring
from state.db import get_engine, session_scope
from state.events import read_events
from state.models import PoolBatch

pytestmark = pytest.mark.usefixtures("prefect_harness", "state_url")

DAY = date(2026, 10, 5)
SITES = {"sg1": "Asia/Singapore", "th1": "Asia/Bangkok", "id1": "Asia/Jakarta",
         "ph1": "Asia/Manila", "tw1": "Asia/Taipei"}


def build() -> tuple[dict[str, int], list[str]]:
    """API sales of every API SKU on five sites on one day; returns units sold per SKU and
    the batches."""
    asyncio.run(sc.sync_catalog(chunk_size=100))
    engine = get_engine()
    with session_scope(engine) as s:
        catalog = load_skus(s)
        skus = sorted(c for c, k in catalog.items()
                      if k.status.value == "normal" and k.issuance_mode.value == "api")[:4]
        vendor, _ = proc.add_vendor(s, Keyring.load(), "Kill Supplier", currency="SGD")
        contract = proc.add_contract(s, vendor, issuance_mode="api",
                                     settlement_mode="sales_quantity", currency="SGD",
                                     prices=dict.fromkeys(skus, Decimal("1.50")),
                                     valid_from=date(2026, 9, 1))
        proc.set_signature(s, contract.contract_no, "signed")
        po = proc.create_purchase_order(s, contract.contract_no,
                                        [proc.LineIn(sku, 100) for sku in skus],
                                        tran_date=date(2026, 10, 1))
        batches = [proc.receive_quantity(s, po.po_no, n, 100).batch_no
                   for n in range(1, len(skus) + 1)]
        orders = []
        sold: Counter[str] = Counter()
        for i, (site, zone) in enumerate(SITES.items()):
            at = datetime(2026, 10, 5, 12, tzinfo=ZoneInfo(zone))
            lines = tuple(pool.SiteOrderLine(str(n), sku, 1 + (i + n) % 3, Decimal("2.00"))
                          for n, sku in enumerate(skus, 1))
            for line in lines:
                sold[line.sku] += line.quantity
            orders.append(pool.SiteOrder(site=site, order_id=f"k{i}", status="confirmed",
                                         created_at=at, updated_at=at, currency="SGD",
                                         lines=lines))
        pool.record_orders(s, orders)
    assert pool.allocate(engine, today=date(2026, 10, 1)).orders_allocated == len(SITES)
    return dict(sold), batches


@pytest.mark.seed(16, 0)
def test_sigkill_midway_then_rerun_gives_one_po_per_sku_per_day(sandboxes):
    from prefect.settings import PREFECT_API_URL

    sold, batches = build()
    expected = [f"po-{site}-{sku}-20261005" for site in SITES for sku in sold]
    sandboxes.erp.faults.set(latency_ms=120)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    args = [sys.executable, "-m", "flows.cli", "purchasing", "api-pos", "--day", DAY.isoformat(),
            *[a for site in SITES for a in ("--site", site)]]
    child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    try:
        while sum(Counter(sandboxes.erp.effects.keys("itemReceipt.transformed")).values()) < 2:
            assert child.poll() is None, child.stdout.read().decode() if child.stdout else ""
            assert time.monotonic() < deadline, "the run never got to the receipts"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    receipts = Counter(sandboxes.erp.effects.keys("itemReceipt.transformed"))
    assert sum(receipts.values()) < len(expected), "the kill came too late to prove anything"
    sandboxes.erp.faults.clear()

    summary = asyncio.run(api_purchase_orders(day=DAY, sites=list(SITES)))
    assert summary["dead_lettered"] == summary["problems"] == 0, summary
    again = asyncio.run(api_purchase_orders(day=DAY, sites=list(SITES)))
    assert (again["orders"], again["erp_receipts"], again["booked"]) == (0, 0, 0)

    created = Counter(sandboxes.erp.effects.keys("purchaseOrder.created"))
    assert created == Counter(dict.fromkeys(expected, 1))
    assert Counter(sandboxes.erp.effects.keys("itemReceipt.transformed")) == Counter(
        {f"rcpt-{k.removeprefix('po-')}": 1 for k in expected})
    with session_scope(get_engine()) as s:
        books = {b.sku: (b.available, b.remaining, b.unposted) for b in s.scalars(
            select(PoolBatch).where(PoolBatch.batch_no.in_(batches)))}  # type: ignore[attr-defined]
        assert books == {sku: (100 - n, 100 - n, 0) for sku, n in sold.items()}
        orders = s.scalars(select(proc.PurchaseOrder.po_no).where(
            proc.PurchaseOrder.kind == "daily_api")).all()
        assert sorted(orders) == sorted(expected)
        # subscribers hear of each daily order once, killed run and re-runs included
        announced = Counter(e.entity_key for e in read_events(
            s, after=0, patterns=["purchase_order.created"], limit=10_000)
            if e.entity_key.endswith("-20261005"))
        assert announced == Counter(dict.fromkeys(expected, 1))
