"""Daily API purchase orders in the state, on SQLite and PostgreSQL: the day cut at the site's
own midnight, one order per SKU, nothing new on a re-run, a correction for a late sale,
refunds after the day booked back, units leaving ``unposted`` once the receipt is recorded;
codes an API supplier issued kept as hashes."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import select

from state import api_purchasing as api
from state import pool
from state import procurement as proc
from state.crypto import Keyring
from state.db import session_scope
from state.models import PoolBatch
from state.purchasing_models import ApiIssuedCode
from tests.state.procurement_world import events, seed_catalog, vendor_with_po

SGT = timezone(timedelta(hours=8))
DAY = date(2026, 11, 2)
START = datetime(2026, 11, 2, tzinfo=SGT)
END = START + timedelta(days=1)


@pytest.fixture
def world(engine):
    seed_catalog(engine)
    ring = Keyring.generate()
    party = vendor_with_po(engine, ring, "Api Supplier", quantity=50, sku_code="SKU-API",
                           unit_cost="1.2500", mode="api", settlement="sales_quantity")
    with session_scope(engine) as s:
        batch_no = proc.receive_quantity(s, party.po_no, 1, 50).batch_no
    return engine, ring, batch_no


def sell(engine, order_id: str, at: datetime, quantity: int) -> None:
    with session_scope(engine) as s:
        pool.record_orders(s, [pool.SiteOrder(
            site="sg1", order_id=order_id, status="confirmed", created_at=at, updated_at=at,
            currency="SGD", lines=(pool.SiteOrderLine("1", "SKU-API", quantity,
                                                      Decimal("2.00")),))])
    pool.allocate(engine, today=DAY)


def book(engine) -> api.DayReport:
    with session_scope(engine) as s:
        return api.book_day(s, site="sg1", business_date=DAY, start=START, end=END)


def quantities(engine, batch_no: str) -> tuple[int, int, int]:
    with session_scope(engine) as s:
        b = s.get(PoolBatch, batch_no)
        return b.available, b.remaining, b.unposted


def test_a_day_is_booked_once_and_late_sales_become_corrections(world):
    engine, _, batch_no = world
    sell(engine, "a", datetime(2026, 11, 2, 9, tzinfo=SGT), 3)
    sell(engine, "b", datetime(2026, 11, 2, 23, 59, tzinfo=SGT), 2)
    sell(engine, "next-day", datetime(2026, 11, 3, 0, 1, tzinfo=SGT), 4)  # the 3rd in SG
    with session_scope(engine) as s, pytest.raises(proc.Blocked, match="not over"):
        api.book_day(s, site="sg1", business_date=DAY, start=START, end=END,
                     now=END - timedelta(seconds=1))
    first = book(engine)
    assert (first.orders, first.units) == (["po-sg1-SKU-API-20261102"], 5)
    assert book(engine).unchanged
    with session_scope(engine) as s:
        (view,) = api.unposted_day_orders(s)
        assert view.receipt_no == "rcpt-sg1-SKU-API-20261102" and view.lines == (
            (1, batch_no, 5),)
        order = proc.get_order(s, view.po_no)
        assert (order.kind, order.status, order.site, order.business_date) == (
            "daily_api", "received", "sg1", DAY)
    assert quantities(engine, batch_no) == (41, 50, 9)
    with session_scope(engine) as s:
        assert api.record_day_receipt(s, view.po_id, "777")
        assert not api.record_day_receipt(s, view.po_id, "777")  # once
    assert quantities(engine, batch_no) == (41, 45, 4)

    sell(engine, "late", datetime(2026, 11, 2, 12, tzinfo=SGT), 1)
    late = book(engine)
    assert (late.orders, late.corrections, late.units) == ([], ["po-sg1-SKU-API-20261102-c1"], 1)
    with session_scope(engine) as s:
        pool.refund(s, "sg1", "a", "1", 2, delivered=True, refund_id="r-a")
    refunded = book(engine)
    assert (refunded.refunded_after_close, refunded.orders, refunded.corrections) == (2, [], [])
    assert quantities(engine, batch_no) == (42, 47, 5)  # the 2 units are back in the book
    assert book(engine).unchanged


def test_codes_issued_for_a_sale_are_kept_as_hashes(world):
    engine, ring, batch_no = world
    sell(engine, "a", datetime(2026, 11, 2, 9, tzinfo=SGT), 2)
    with session_scope(engine) as s:
        assert api.record_issued_codes(s, ring, site="sg1", order_id="a", line_id="1",
                                       codes=["ISSUED-0001", "ISSUED-0002"]) == 2
        assert api.record_issued_codes(s, ring, site="sg1", order_id="a", line_id="1",
                                       codes=["ISSUED-0001"]) == 0
        with pytest.raises(pool.PoolError, match="3 codes for 2 units"):
            api.record_issued_codes(s, ring, site="sg1", order_id="a", line_id="1",
                                    codes=["X1", "X2", "X3"])
        rows = list(s.scalars(select(ApiIssuedCode).order_by(ApiIssuedCode.id)))
    assert [(r.last4, r.batch_no, r.status) for r in rows] == [
        ("0001", batch_no, "sold"), ("0002", batch_no, "sold")]
    assert all("ISSUED" not in r.code_hash for r in rows)


def test_a_daily_order_is_announced_once_and_a_correction_apart(world):
    engine, _, batch_no = world
    before = len(events(engine))
    sell(engine, "a", datetime(2026, 11, 2, 9, tzinfo=SGT), 3)
    sell(engine, "b", datetime(2026, 11, 2, 20, tzinfo=SGT), 2)
    allocated = len(events(engine))  # the sales' own events
    book(engine)
    got = events(engine)[allocated:]
    assert [(t, k) for t, k, _ in got] == [("purchase_order.created", "po-sg1-SKU-API-20261102")]
    data = got[0][2]
    assert (data["kind"], data["status"], data["site"], data["business_date"], data["total"]) == (
        "daily_api", "received", "sg1", "2026-11-02", "6.2500")
    assert [(ln["quantity"], ln["received_quantity"], ln["description"])
            for ln in data["lines"]] == [(5, 5, f"batch {batch_no}")]
    assert book(engine).unchanged and len(events(engine)) == allocated + 1  # a re-run: none
    sell(engine, "late", datetime(2026, 11, 2, 12, tzinfo=SGT), 1)
    late = len(events(engine))
    book(engine)
    got = events(engine)[late:]
    assert [(t, k, d["kind"]) for t, k, d in got] == [
        ("purchase_order.created", "po-sg1-SKU-API-20261102-c1", "correction")]
    with session_scope(engine) as s:
        pool.refund(s, "sg1", "a", "1", 2, delivered=True, refund_id="r-a")
    refunds = len(events(engine))
    assert book(engine).refunded_after_close == 2
    assert len(events(engine, "purchase_order.*")) == 3 + 2 and len(events(engine)) == refunds
    assert before == 3  # the fixture's API order: created, received, changed
