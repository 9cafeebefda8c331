"""sync_inventory: quotas never promise more than can be delivered, only changes are sent."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from flows import sync_catalog as sc
from flows import sync_inventory as si
from state import pool
from state.catalog import load_skus
from state.crypto import Keyring
from state.db import get_engine, session_scope
from state.models import PoolBatch
from tests.flows.conftest import BOTH_DATABASES
from tests.flows.sales_world import stock_the_pool

pytestmark = pytest.mark.usefixtures("prefect_harness", "state_url")


def run(**kw):
    return asyncio.run(si.sync_inventory(**kw))


def shown(sandboxes) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for site in sandboxes.wallet.sites:
        for sku, v in sandboxes.wallet.inventory(site).items():
            out[sku][site] = v["shown"]
    return out


@pytest.mark.seed(40, 0)
def test_sites_together_never_show_more_than_the_pool_holds(sandboxes):
    asyncio.run(sc.sync_catalog())
    stock_the_pool(codes_per_sku=7, api_units=11)
    summary = run()
    assert summary["pushed"] > 0
    with session_scope(get_engine()) as s:
        catalog = load_skus(s)
        stock = {x.sku: x for x in pool.stock(s)}
    seen = shown(sandboxes)
    for code, sku in catalog.items():
        total = sum(seen.get(code, {}).values())
        sellable = stock[code].available if code in stock else 0
        assert total <= sellable, code
        if sku.status.value == "normal" and sellable and any(
                s in sandboxes.wallet.sites for s in sku.sales_areas):
            assert total == sellable, code  # and nothing is hidden either
        else:
            assert total == 0, code
    again = run()
    assert again["pushed"] == 0 and again["quotas_changed"] == 0


@pytest.mark.seed(20, 0)
def test_a_batch_restricted_to_one_site_is_shown_only_there(sandboxes):
    asyncio.run(sc.sync_catalog())
    with session_scope(get_engine()) as s:
        catalog = load_skus(s)
    code, sku = next((c, k) for c, k in catalog.items()
                     if len(k.sales_areas) >= 2 and k.status.value == "normal"
                     and k.issuance_mode.value == "code_pool")
    only = sku.sales_areas[0]
    with session_scope(get_engine()) as s:
        pool.upsert_batch(s, batch_no="B-ONLY", sku=code, issuance_mode="code_pool",
                          unit_cost=Decimal("1"), currency=sku.face_value.currency,
                          sites=[only], expiry_type="fixed_date",
                          expires_on=date(2027, 12, 31))
    pool.add_codes(get_engine(), "B-ONLY", [(f"ONLY-{i:03d}", None, None) for i in range(9)],
                   Keyring.load(), actor="test", system="test")
    run()
    seen = shown(sandboxes)[code]
    assert seen[only] == 9
    assert all(n == 0 for site, n in seen.items() if site != only)
    batches = [b for b in sandboxes.wallet.batches(only) if b["batch_no"] == "B-ONLY"]
    assert batches and batches[0]["available"] == 9


@pytest.mark.seed(20, 0)
def test_a_frozen_sku_is_shown_as_zero(sandboxes):
    asyncio.run(sc.sync_catalog())
    stock_the_pool(codes_per_sku=5, api_units=5)
    run()
    with session_scope(get_engine()) as s:
        catalog = load_skus(s)
    code, _ = next((c, k) for c, k in catalog.items() if k.status.value == "normal"
                     and sum(shown(sandboxes).get(c, {}).values()) > 0)
    erp_id = next(r["id"] for r in sandboxes.erp.store.table("inventoryItem").records.values()
                  if r["itemId"] == code)
    sandboxes.erp.touch("inventoryItem", erp_id, custitem_vf_status="frozen")
    asyncio.run(sc.sync_catalog())
    summary = run()
    assert summary["quotas_changed"] >= 1
    assert sum(shown(sandboxes)[code].values()) == 0


@pytest.mark.seed(30, 0)
def test_later_runs_rebalance_only_the_skus_that_changed(sandboxes):
    asyncio.run(sc.sync_catalog())
    stock_the_pool(codes_per_sku=5, api_units=8)
    first = run()
    with session_scope(get_engine()) as s:
        catalog = load_skus(s)
    assert first["skus"] == len(catalog)  # the first run of the day: every SKU
    code, sku = next((c, k) for c, k in sorted(catalog.items())
                     if k.status.value == "normal" and k.issuance_mode.value == "api"
                     and sum(shown(sandboxes).get(c, {}).values()) == 8)
    # the ERP books part of the batch away: only this SKU's quotas move
    with session_scope(get_engine()) as s:
        _api_batch(s, code, sku, "1", quantity=8, remaining=3)
    second = run(settle_seconds=0)
    assert second["skus"] == 1 and second["quotas_changed"] >= 1
    assert sum(shown(sandboxes)[code].values()) == 3
    quiet = run(settle_seconds=0)
    assert quiet["skus"] == 0 and quiet["pushed"] == 0
    # a full run looks at everything again and finds nothing else to send
    whole = run(full=True)
    assert whole["skus"] == len(catalog) and whole["pushed"] == 0


@pytest.mark.seed(20, 0)
def test_a_renamed_sku_is_not_planned_again(sandboxes):
    asyncio.run(sc.sync_catalog())
    stock_the_pool(codes_per_sku=5, api_units=5)
    run()
    erp_id = next(iter(sandboxes.erp.store.table("inventoryItem").records))
    sandboxes.erp.touch("inventoryItem", erp_id, displayName="Renamed")
    assert asyncio.run(sc.sync_catalog())["pushed"] >= 1  # the sites get the new name
    assert run()["skus"] == 0  # and the quotas stay as they were


def _api_sku_shown_whole(sandboxes, units: int):
    with session_scope(get_engine()) as s:
        catalog = load_skus(s)
    return next((c, k) for c, k in sorted(catalog.items())
                if k.status.value == "normal" and k.issuance_mode.value == "api"
                and sum(shown(sandboxes).get(c, {}).values()) == units)


def _planned_once(sandboxes):
    """Catalogue synced, pool stocked, quotas planned once: an API SKU shown whole (8 units)."""
    asyncio.run(sc.sync_catalog())
    stock_the_pool(codes_per_sku=5, api_units=8)
    run()
    return _api_sku_shown_whole(sandboxes, 8)


def _api_batch_stamped_before(code: str, sku, suffix: str, seconds: float,
                              **quantities: int) -> None:
    """``_api_batch`` stamped ``seconds`` before the last rebalance began."""
    with session_scope(get_engine()) as s:
        rebalanced = si.get_watermark(s, si.FLOW, "pool", "quota")
        _api_batch(s, code, sku, suffix, **quantities)
        s.execute(PoolBatch.__table__.update().where(PoolBatch.batch_no == f"B-{code}-{suffix}")
                  .values(updated_at=rebalanced - timedelta(seconds=seconds)))


def _api_batch(s, code: str, sku, suffix: str, **quantities: int) -> None:
    """The SKU's API batch ``B-{code}-{suffix}`` as the ERP books it."""
    pool.upsert_batch(s, batch_no=f"B-{code}-{suffix}", sku=code, issuance_mode="api",
                      unit_cost=Decimal("1.2500"), currency=sku.face_value.currency,
                      expiry_type="fixed_date", expires_on=date(2027, 6, 30), **quantities)


@pytest.mark.seed(30, 0)
@pytest.mark.parametrize("engine", BOTH_DATABASES, indirect=True)
def test_right_after_a_run_only_what_changed_since_is_planned_again(sandboxes):
    # everything was stamped moments ago (within the settling time): what the last run
    # planned from is not planned again, only the batch that changed after it
    code, sku = _planned_once(sandboxes)
    with session_scope(get_engine()) as s:
        _api_batch(s, code, sku, "1", quantity=8, remaining=5)
    second = run()
    assert second["skus"] == 1 and sum(shown(sandboxes)[code].values()) == 5
    assert run()["skus"] == 0


@pytest.mark.seed(30, 0)
@pytest.mark.parametrize("engine", BOTH_DATABASES, indirect=True)
def test_a_change_committed_after_the_last_plan_read_is_planned_though_stamped_before(
        sandboxes):
    code, sku = _planned_once(sandboxes)
    # as if this transaction had stamped the batch before the last run began and committed
    # only after that run had read the pool
    _api_batch_stamped_before(code, sku, "1", 5, quantity=8, remaining=2)
    summary = run()
    assert summary["skus"] == 1 and sum(shown(sandboxes)[code].values()) == 2


@pytest.mark.seed(30, 0)
@pytest.mark.parametrize("engine", BOTH_DATABASES, indirect=True)
def test_a_new_batch_committed_after_the_last_plan_read_is_planned_though_stamped_before(
        sandboxes):
    # a batch the last plan never saw (no stamp of it was read), stamped within the settling
    # time before that plan began
    code, sku = _planned_once(sandboxes)
    _api_batch_stamped_before(code, sku, "LATE", 20, quantity=4)
    summary = run()
    assert summary["skus"] == 1 and sum(shown(sandboxes)[code].values()) == 12
    assert run()["skus"] == 0


@pytest.mark.seed(30, 0)
@pytest.mark.parametrize("engine", BOTH_DATABASES, indirect=True)
def test_a_catalogue_change_committed_after_the_last_plan_read_is_planned_though_stamped_before(
        sandboxes):
    from state.catalog import CatalogSku

    code, _ = _planned_once(sandboxes)
    with session_scope(get_engine()) as s:
        rebalanced = si.get_watermark(s, si.FLOW, "pool", "quota")
        s.execute(CatalogSku.__table__.update().where(CatalogSku.sku == code)
                  .values(status="frozen", updated_at=rebalanced - timedelta(seconds=5)))
    summary = run()
    assert summary["skus"] == 1 and sum(shown(sandboxes)[code].values()) == 0
    assert run()["skus"] == 0


@pytest.mark.seed(20, 0)
def test_erp_batch_records_reach_the_pool_and_a_bad_one_does_not_stop_the_rest(sandboxes):
    asyncio.run(sc.sync_catalog())
    items = [r for r in sandboxes.erp.store.table("inventoryItem").records.values()
             if r["custitem_vf_issuance_mode"] == "api"]
    good, other = items[0], items[1]
    base = {"custrecord_vf_batch_quantity": 30, "custrecord_vf_batch_remaining": 30,
            "custrecord_vf_batch_status": "active", "custrecord_vf_batch_expiry_type": "none"}
    sandboxes.erp.set_record("customrecord_vf_batch", {
        **base, "name": "ERP-B1", "custrecord_vf_batch_sku": {"id": good["id"]},
        "custrecord_vf_batch_unit_cost": Decimal("1.25"),
        "custrecord_vf_batch_currency": good["custitem_vf_currency"]})
    sandboxes.erp.set_record("customrecord_vf_batch", {  # more decimals than the pool keeps
        **base, "name": "ERP-B2", "custrecord_vf_batch_sku": {"id": other["id"]},
        "custrecord_vf_batch_unit_cost": Decimal("1.234567"),
        "custrecord_vf_batch_currency": other["custitem_vf_currency"]})
    sandboxes.erp.set_record("customrecord_vf_batch", {  # an item vouchflow does not know
        **base, "name": "ERP-B3", "custrecord_vf_batch_sku": {"id": "99999"},
        "custrecord_vf_batch_unit_cost": Decimal("1.00"), "custrecord_vf_batch_currency": "SGD"})
    sandboxes.erp.set_record("customrecord_vf_batch", {
        **base, "name": "ERP-B4", "custrecord_vf_batch_sku": {"id": other["id"]},
        "custrecord_vf_batch_unit_cost": Decimal("2.00"),
        "custrecord_vf_batch_currency": other["custitem_vf_currency"]})
    summary = run()
    assert summary["erp_batches"] == 2 and summary["dead_lettered"] == 2, _reasons()
    with session_scope(get_engine()) as s:
        held = {b.batch_no for x in pool.stock(s) for b in x.batches}
    assert {"ERP-B1", "ERP-B4"} <= held and not {"ERP-B2", "ERP-B3"} & held
    reasons = " | ".join(_reasons("customrecord_vf_batch"))
    assert "ERP-B2" in reasons and "at most 4 decimals" in reasons
    assert "ERP-B3" in reasons and "not in the catalogue" in reasons


@pytest.mark.seed(16, 0)
def test_batches_read_back_from_the_erp_keep_vouchflows_purchase_order(sandboxes):
    from flows.procurement import post_procurement
    from tests.flows.test_procurement import build

    made = build(sandboxes)
    asyncio.run(post_procurement())
    with session_scope(get_engine()) as s:
        before = {b.batch_no: b.purchase_order for b in s.scalars(select(PoolBatch))}
    assert set(made["purchaseOrder"]) >= set(before.values()) - {None}
    summary = run(full=True)
    assert summary["erp_batches"] == len(made["customrecord_vf_batch"]), _reasons()
    with session_scope(get_engine()) as s:
        after = {b.batch_no: b.purchase_order for b in s.scalars(select(PoolBatch))}
    assert after == before and set(after.values()) <= set(made["purchaseOrder"])


def _reasons(entity_type: str | None = None) -> list[str]:
    from sqlalchemy import select

    from state.models import DeadLetter

    query = select(DeadLetter)
    if entity_type:
        query = query.where(DeadLetter.entity_type == entity_type)
    with session_scope(get_engine()) as s:
        return [d.reason for d in s.scalars(query)]


def test_a_quota_digest_is_the_fingerprint_it_always_was():
    """Quotas confirmed before the digest was made by orjson are not sent again."""
    from state.store import fingerprint

    batches = [{"sku": "SKU-1", "batch_no": "B-1", "available": 3, "status": "active",
                "expires_at": "2026-12-31T23:59:59Z"},
               {"sku": "SKU-1", "batch_no": "B-2", "available": 0, "status": "sold_out"}]
    for available, shares in [(3, batches), (0, []), (2 ** 40, batches[:1])]:
        assert si.quota_digest(available, shares) == fingerprint(
            {"available": available, "batches": shares})
