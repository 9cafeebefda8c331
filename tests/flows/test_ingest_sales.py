"""ingest_sales end to end: orders in, codes allocated once, delivered, posted to the ERP."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from sqlalchemy import func, select

from flows import ingest_sales as ing
from state.db import get_engine, session_scope
from state.models import OrderLine, PoolCode
from tests.flows.sales_world import build_world

pytestmark = pytest.mark.usefixtures("prefect_harness", "state_url")


def run(**kw):
    return asyncio.run(ing.ingest_sales(**kw))


@pytest.mark.seed(30, 0)
def test_orders_are_allocated_delivered_and_posted_once(sandboxes):
    orders = build_world(sandboxes)
    assert orders, "the generator made no orders"
    summary = run()
    assert summary["held_orders"] == 0, summary["held"]
    wallet = sandboxes.wallet
    engine = get_engine()
    with session_scope(engine) as s:
        modes = dict(s.execute(select(OrderLine.sku, OrderLine.issuance_mode)).all())
    refunded: Counter[tuple[str, str, str]] = Counter()
    for site in {o["site"] for o in orders}:
        for r in wallet.refunds(site):
            refunded[(site, r["order_id"], r["line_id"])] += r["quantity"]
    delivered: Counter[str] = Counter()
    code_pool_lines = 0
    for order in orders:
        for line in order["lines"]:
            got = wallet.delivered_codes(order["site"], order["order_id"], line["line_id"])
            if modes.get(line["sku"]) == "code_pool":
                code_pool_lines += 1
                # refunded before delivery: those units never reach the site
                want = line["quantity"] - refunded[(order["site"], order["order_id"],
                                                    line["line_id"])]
                assert len(got) == want, (order["order_id"], line["line_id"])
                delivered.update(c["code"] for c in got)
            else:
                assert got == []  # API lines are not delivered from the pool
    assert code_pool_lines > 0
    assert delivered and max(delivered.values()) == 1  # no code reached two lines
    # every code the sites hold is sold in the pool, under the line that got it
    with session_scope(engine) as s:
        sold = s.scalar(select(func.count()).select_from(PoolCode)
                        .where(PoolCode.status == "sold"))
    assert sold == sum(delivered.values())
    # the ERP has one sales order per site order, and a fulfillment per delivered line
    erp = sandboxes.erp
    so = {r["externalId"] for r in erp.store.table("salesOrder").records.values()}
    assert so == {f"so-{o['site']}-{o['order_id']}" for o in orders}
    fulfilled = erp.store.table("itemFulfillment").records
    assert len(fulfilled) == summary["erp_fulfillments"] > 0

    effects_before = (wallet.effects.count("delivery.created"),
                      erp.effects.count("salesOrder.created"),
                      erp.effects.count("itemFulfillment.created"))
    again = run()
    assert again["delivered_lines"] == 0 and again["erp_orders"] == 0
    assert (wallet.effects.count("delivery.created"), erp.effects.count("salesOrder.created"),
            erp.effects.count("itemFulfillment.created")) == effects_before


def _world(tmp_path, monkeypatch, name: str, *, shuffle: bool, duplicates: float):
    """One complete world (state database, sandboxes, a day of sales); the day's webhooks
    delivered to vouchflow's endpoint as asked, then ingested from the inbox only."""
    from portal.app import create_app
    from sandbox import serve_all
    from sandbox.core import serve

    monkeypatch.setenv("VOUCHFLOW_DATABASE_URL", f"sqlite:///{tmp_path / name}.db")
    monkeypatch.setenv("VOUCHFLOW_HOME", str(tmp_path / name))
    group = serve_all(None, erp_port=0, wallet_port=0, seed_skus=30, invalid=0, seed=7)
    try:
        for key, value in group.env().items():
            monkeypatch.setenv(key, value)
        orders = build_world(group, orders=60, seed=11)
        events = group.wallet.events()
        with serve(create_app()) as portal:
            statuses = group.wallet.deliver_events(events, portal.base_url, shuffle=shuffle,
                                                   duplicates=duplicates, seed=5)
            if duplicates:  # "every webhook twice": a second full pass, shuffled again
                statuses += group.wallet.deliver_events(events, portal.base_url,
                                                        shuffle=shuffle, seed=6)
        assert set(statuses) <= {200, 202}
        summary = run(poll=False)
        return snapshot(group, orders), summary, len(statuses), len(events)
    finally:
        group.stop()


def snapshot(group, orders):
    from state import pool
    from state.db import get_engine, session_scope

    erp = group.erp
    items = {r["id"]: r["itemId"] for r in erp.store.table("inventoryItem").records.values()}
    sales = {}
    for r in erp.store.table("salesOrder").records.values():
        sales[r["externalId"]] = (r["tranDate"], r["currency"], r.get("memo"), tuple(
            (items[ln["item"]["id"]], str(ln["quantity"]), str(ln["rate"]), str(ln["amount"]),
             ln["custcol_vf_line_id"]) for ln in r["item"]["items"]))
    fulfillments = {r["externalId"]: tuple(sorted(
        (ln["custcol_vf_batch_no"], str(ln["quantity"])) for ln in r["item"]["items"]))
        for r in erp.store.table("itemFulfillment").records.values()}
    codes = {(o["site"], o["order_id"], ln["line_id"]): tuple(
        c["code"] for c in group.wallet.delivered_codes(o["site"], o["order_id"],
                                                        ln["line_id"]))
        for o in orders for ln in o["lines"]}
    with session_scope(get_engine()) as s:
        batches = {b.batch_no: (b.available, b.remaining, b.unposted, b.status)
                   for sku in pool.stock(s) for b in sku.batches}
    return {"sales": sales, "fulfillments": fulfillments, "codes": codes, "batches": batches}


def test_every_webhook_twice_shuffled_ends_as_one_ordered_delivery(tmp_path, monkeypatch):
    ordered, summary_a, _, events_a = _world(tmp_path, monkeypatch, "ordered",
                                                  shuffle=False, duplicates=0.0)
    shuffled, summary_b, sent_b, events_b = _world(tmp_path, monkeypatch, "shuffled",
                                                   shuffle=True, duplicates=0.5)
    assert events_a == events_b and sent_b > 2 * events_b  # really every event twice, and more
    assert summary_a["events"] == summary_b["events"] == events_a  # each stored once
    assert ordered["sales"] and ordered["fulfillments"]
    assert shuffled["sales"] == ordered["sales"]
    assert shuffled["fulfillments"] == ordered["fulfillments"]
    assert shuffled["codes"] == ordered["codes"]
    assert shuffled["batches"] == ordered["batches"]


@pytest.mark.seed(30, 0)
def test_an_order_for_more_than_in_stock_is_held_whole_with_the_reason(sandboxes):
    from datetime import timedelta

    from tests.flows.sales_world import DAY_START

    build_world(sandboxes, orders=10)
    with session_scope(get_engine()) as s:
        sku = s.scalars(select(OrderLine.sku).where(OrderLine.issuance_mode == "code_pool")
                        .limit(1)).first() or _any_code_pool_sku(s)
    site = _site_selling(sandboxes, sku)
    other = _another_sku_on(sandboxes, site, sku)
    big = sandboxes.wallet.create_order(site, [(other, 1), (sku, 500)],
                                        at=DAY_START + timedelta(hours=23, minutes=30))
    summary = run()
    held = [h for h in summary["held"] if h["order_id"] == big["order_id"]]
    assert held and sku in held[0]["reason"] and "500" in held[0]["reason"]
    with session_scope(get_engine()) as s:
        lines = s.execute(select(OrderLine.line_id, OrderLine.status).where(
            OrderLine.order_id == big["order_id"])).all()
    assert {status for _, status in lines} == {"held"}  # not half-allocated
    for line in big["lines"]:
        assert sandboxes.wallet.delivered_codes(site, big["order_id"], line["line_id"]) == []


def _any_code_pool_sku(session):
    from state.catalog import CatalogSku

    return session.scalars(select(CatalogSku.sku).where(
        CatalogSku.issuance_mode == "code_pool")).first()


def _site_selling(sandboxes, sku):
    for site in sandboxes.wallet.sites:
        if sandboxes.wallet.get_product(site, sku):
            return site
    raise AssertionError(f"no site sells {sku}")


def _another_sku_on(sandboxes, site, not_this):
    for product in sandboxes.wallet.products(site):
        if product["sku"] != not_this and product["status"] == "normal":
            return product["sku"]
    raise AssertionError("no other product")
