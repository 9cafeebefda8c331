"""sync_catalog end to end against the sandboxes, counting effects where they land."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from flows import sync_catalog as sc
from sandbox import SandboxSet
from state.db import get_engine, session_scope
from state.events import read_events
from state.models import DeadLetter
from tests.flows.conftest import BOTH_DATABASES

pytestmark = pytest.mark.usefixtures("prefect_harness", "state_url")


def run(**kw):
    kw.setdefault("chunk_size", 50)
    return asyncio.run(sc.sync_catalog(**kw))


def expected_listings(sandboxes: SandboxSet) -> Counter[str]:
    """What the sites should hold: every valid item on each of its sales areas' sites."""
    bad = set(sandboxes.erp.invalid_seeds())
    want: Counter[str] = Counter()
    for record in sandboxes.erp.store.table("inventoryItem").records.values():
        if record["id"] in bad:
            continue
        for site in filter(None, record["custitem_vf_sales_areas"].split(",")):
            want[f"{site}:{record['itemId']}"] += 1
    return want


def created(sandboxes: SandboxSet) -> Counter[str]:
    return sandboxes.wallet.effects.keys("product.created")


def open_dead_letters() -> list[DeadLetter]:
    with session_scope(get_engine()) as s:
        return list(s.scalars(select(DeadLetter).where(DeadLetter.status == "open")
                              .order_by(DeadLetter.entity_key)))


@pytest.mark.parametrize("engine", BOTH_DATABASES, indirect=True)
def test_first_run_pushes_everything_once_and_quarantines_the_invalid(sandboxes, engine):
    summary = run()
    want = expected_listings(sandboxes)
    assert created(sandboxes) == want  # every listing created exactly once
    assert sandboxes.wallet.effects.count("product.updated") == 0
    assert summary["pushed"] == sum(want.values())
    assert summary["read"] == 246 and summary["mapped"] == 240

    letters = open_dead_letters()
    assert {d.entity_key for d in letters} == set(sandboxes.erp.invalid_seeds())
    for letter in letters:
        assert letter.source == "erp" and letter.flow == "sync_catalog"
        assert letter.reason.startswith(f"inventoryItem {letter.entity_key}")
        assert letter.payload["id"] == letter.entity_key
    # cross-reference: every valid ERP item is known by its SKU code
    with session_scope(get_engine()) as s:
        from state.store import canonical_ids

        refs = canonical_ids(s, "erp", "inventoryItem", [str(i) for i in range(1, 300)])
    assert len(refs) == 240


@pytest.mark.parametrize("engine", BOTH_DATABASES, indirect=True)
def test_second_run_pushes_nothing_and_does_not_double_dead_letters(sandboxes):
    first = run()

    def writes() -> int:
        return sum(1 for r in sandboxes.wallet.request_log if r["method"] != "GET")

    writes_after_first = writes()
    second = run()
    assert second["pushed"] == 0 and second["changed"] == 0
    assert second["dead_lettered"] == 0
    assert writes() == writes_after_first  # not one write to any site
    assert len(open_dead_letters()) == first["dead_lettered"] == 6
    assert all(d.occurrences == 1 for d in open_dead_letters())


def sku_events_by_key() -> Counter[str]:
    with session_scope(get_engine()) as s:
        return Counter(e.entity_key for e in read_events(s, after=0, patterns=["sku.*"],
                                                         limit=100_000))


def test_subscribers_get_one_sku_event_per_version(sandboxes):
    first = run()
    events = sku_events_by_key()
    assert len(events) == first["mapped"] and set(events.values()) == {1}
    run()
    run(full=True)  # every item read again
    assert sku_events_by_key() == events  # re-reads of the same versions emit nothing
    table = sandboxes.erp.store.table("inventoryItem")
    victim = next(r for r in table.records.values()
                  if r["id"] not in sandboxes.erp.invalid_seeds())
    sandboxes.erp.touch("inventoryItem", victim["id"], displayName="Renamed voucher")
    run()
    assert sku_events_by_key() - events == Counter({victim["itemId"]: 1})
    with session_scope(get_engine()) as s:
        last = read_events(s, after=0, patterns=["sku.changed"], limit=100_000)[-1]
    assert last.entity_key == victim["itemId"]
    assert json.loads(last.data_json)["name"] == "Renamed voucher"


def test_only_changed_items_are_pushed_again(sandboxes):
    run()
    table = sandboxes.erp.store.table("inventoryItem")
    victim = next(r for r in table.records.values()
                  if r["id"] not in sandboxes.erp.invalid_seeds())
    sandboxes.erp.touch("inventoryItem", victim["id"], displayName="Renamed voucher")
    summary = run()
    sites = [s for s in victim["custitem_vf_sales_areas"].split(",") if s]
    assert summary["pushed"] == len(sites)
    assert sandboxes.wallet.effects.keys("product.updated") == Counter(
        {f"{s}:{victim['itemId']}": 1 for s in sites})
    for site in sites:
        assert sandboxes.wallet.get_product(site, victim["itemId"])["name"] == "Renamed voucher"


def test_a_site_dropped_from_the_sales_areas_gets_the_sku_inactive(sandboxes):
    run()
    table = sandboxes.erp.store.table("inventoryItem")
    victim = next(r for r in table.records.values()
                  if r["id"] not in sandboxes.erp.invalid_seeds()
                  and len(r["custitem_vf_sales_areas"].split(",")) == 2)
    keep, drop = victim["custitem_vf_sales_areas"].split(",")
    sandboxes.erp.touch("inventoryItem", victim["id"], custitem_vf_sales_areas=keep)
    run()
    assert sandboxes.wallet.get_product(drop, victim["itemId"])["status"] == "inactive"
    assert sandboxes.wallet.get_product(keep, victim["itemId"])["status"] == victim[
        "custitem_vf_status"]


@pytest.mark.parametrize("engine", BOTH_DATABASES, indirect=True)
def test_crash_midway_then_rerun_gives_every_listing_exactly_once(sandboxes, monkeypatch):
    calls = {"n": 0}

    def crash_after_two(index, counts):
        calls["n"] += 1
        if calls["n"] >= 2:  # like a dead process: every later chunk dies too
            raise RuntimeError("injected crash after a chunk was pushed")

    monkeypatch.setattr(sc, "after_chunk_hook", crash_after_two)
    monkeypatch.setattr(sc, "sync_catalog_chunk", sc.sync_catalog_chunk.with_options(retries=0))
    with pytest.raises(Exception, match="injected crash"):
        run(chunk_concurrency=1)
    pushed_before = sum(created(sandboxes).values())
    assert 0 < pushed_before < sum(expected_listings(sandboxes).values())

    monkeypatch.setattr(sc, "after_chunk_hook", lambda index, counts: None)
    run()
    assert created(sandboxes) == expected_listings(sandboxes)
    assert sandboxes.wallet.effects.count("product.updated") == 0
    assert len(open_dead_letters()) == 6


def test_a_chunk_that_fails_once_is_retried_by_prefect(sandboxes, monkeypatch):
    calls = {"n": 0}

    def crash_once(index, counts):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("transient crash")

    monkeypatch.setattr(sc, "after_chunk_hook", crash_once)
    monkeypatch.setattr(sc, "sync_catalog_chunk",
                        sc.sync_catalog_chunk.with_options(retry_delay_seconds=0))
    run()
    assert created(sandboxes) == expected_listings(sandboxes)
    assert sandboxes.wallet.effects.count("product.updated") == 0


def test_wallet_503_and_429_for_a_while_still_complete_without_duplicates(sandboxes):
    sandboxes.wallet.faults.set(error_rate=1.0, error_status=503, count=4)
    sandboxes.wallet.faults.add(rate_limit_rate=1.0, retry_after=1, count=3)
    sandboxes.wallet.faults.add(rate_limit_rate=1.0, retry_after=None, count=2)
    run()
    assert created(sandboxes) == expected_listings(sandboxes)
    statuses = Counter(r["status"] for r in sandboxes.wallet.request_log)
    assert statuses[503] == 4 and statuses[429] == 5


def test_answer_lost_after_the_site_applied_it_is_not_a_duplicate(sandboxes):
    # the site applies the batch, then the connection drops before the answer arrives
    sandboxes.wallet.faults.set(drop_rate=1.0, drop_when="after", count=3,
                                path_prefix="/sg1/")
    run()
    assert created(sandboxes) == expected_listings(sandboxes)
    assert sandboxes.wallet.effects.count("product.updated") == 0


def test_erp_faults_are_retried(sandboxes):
    sandboxes.erp.faults.set(error_rate=0.2, error_status=503, seed=3, count=30)
    sandboxes.erp.faults.add(drop_rate=1.0, drop_when="before", count=3)
    run()
    assert created(sandboxes) == expected_listings(sandboxes)


@pytest.mark.seed(40, 0)
def test_a_listing_the_site_refuses_is_dead_lettered_and_its_batch_goes_on(sandboxes):
    table = sandboxes.erp.store.table("inventoryItem")
    victim = next(r for r in table.records.values() if "sg1" in r["custitem_vf_sales_areas"])
    # an SGD voucher listed on a Malaysian site: our model allows it, the site refuses it
    sandboxes.erp.touch("inventoryItem", victim["id"],
                        custitem_vf_sales_areas=victim["custitem_vf_sales_areas"] + ",my1")
    summary = run()
    assert summary["rejected"] == 1
    letters = open_dead_letters()
    assert [(d.source, d.entity_key) for d in letters] == [("wallet:my1", victim["itemId"])]
    assert "my1" in letters[0].reason and "currency" in letters[0].reason
    want = expected_listings(sandboxes)
    del want[f"my1:{victim['itemId']}"]
    assert created(sandboxes) == want
    assert letters[0].payload["payload"]["sku"] == victim["itemId"]
    # replayed while the data is still wrong: sent again, refused again, still open
    from flows.deadletters import replay

    before = len(sandboxes.wallet.request_log)
    report = asyncio.run(replay(get_engine(), ids=[letters[0].id]))
    assert report.still_failing == 1 and len(sandboxes.wallet.request_log) > before
    assert open_dead_letters()[0].replay_count == 1


def test_replay_after_the_item_is_fixed_in_the_erp(sandboxes):
    from flows.deadletters import replay

    run()
    bad = sandboxes.erp.invalid_seeds()
    fix_id = next(i for i, why in bad.items() if "kind" in why)
    sandboxes.erp.touch("inventoryItem", fix_id, custitem_vf_kind="gift_card")
    letter = next(d for d in open_dead_letters() if d.entity_key == fix_id)
    report = asyncio.run(replay(get_engine(), ids=[letter.id]))
    assert report.succeeded == 1 and report.still_failing == 0
    item = sandboxes.erp.get_record("inventoryItem", fix_id)
    for site in item["custitem_vf_sales_areas"].split(","):
        assert sandboxes.wallet.get_product(site, item["itemId"])["kind"] == "gift_card"
    assert fix_id not in {d.entity_key for d in open_dead_letters()}
    # replaying one still broken keeps it open and counts the attempt
    other = next(d for d in open_dead_letters())
    report = asyncio.run(replay(get_engine(), ids=[other.id]))
    assert report.still_failing == 1
    again = next(d for d in open_dead_letters() if d.id == other.id)
    assert again.replay_count == 1


def test_artifacts_show_the_counts(sandboxes):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    summary = run()

    async def fetch():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["sync-catalog-counts"])))

    artifacts = asyncio.run(fetch())
    assert artifacts, "no counts artifact"
    newest = max(artifacts, key=lambda a: a.created)
    table = newest.data if isinstance(newest.data, list) else __import__("json").loads(newest.data)
    by_measure = {row["measure"]: row["count"] for row in table}
    assert by_measure["pushed"] == summary["pushed"]
    assert by_measure["dead-lettered"] == 6


@pytest.mark.parametrize("mode", ["suiteql", "records"])
def test_both_read_paths_give_the_same_listings(sandboxes, monkeypatch, mode):
    monkeypatch.setenv("VOUCHFLOW_ERP_CATALOG_READ", mode)
    summary = run()
    assert created(sandboxes) == expected_listings(sandboxes)
    paths = {r["path"] for r in sandboxes.erp.request_log}
    uses_suiteql = any("suiteql" in p for p in paths)
    assert uses_suiteql == (mode == "suiteql")
    assert summary["dead_lettered"] == 6


def multi_site_item(sandboxes, *, then_wait: bool = True):
    """An item on two sites or more. ``then_wait``: return only once the clock has left the
    second of the item's last ERP change, since the ERP keeps whole seconds and within the
    same second the master wins (a site change made at once would lose on a fast machine)."""
    table = sandboxes.erp.store.table("inventoryItem")
    item = next(r for r in table.records.values()
                if r["id"] not in sandboxes.erp.invalid_seeds()
                and r["custitem_vf_status"] == "normal" and not r["isInactive"]
                and len(r["custitem_vf_sales_areas"].split(",")) >= 2)
    if then_wait:
        modified = datetime.fromisoformat(item["lastModifiedDate"].replace("Z", "+00:00"))
        wait = (modified + timedelta(seconds=1) - datetime.now(UTC)).total_seconds()
        if wait > 0:
            time.sleep(wait + 0.01)
    return item


def test_a_sites_freeze_flows_back_to_the_erp_and_on_to_the_other_sites(sandboxes):
    run()
    item = multi_site_item(sandboxes)
    origin, *others = item["custitem_vf_sales_areas"].split(",")
    sandboxes.wallet.freeze(origin, item["itemId"], "fraud suspected")
    summary = run(poll_sites=True)
    assert summary["flowed_back"] == 1
    assert sandboxes.erp.get_record("inventoryItem", item["id"])["custitem_vf_status"] == "frozen"
    for site in others:
        assert sandboxes.wallet.get_product(site, item["itemId"])["status"] == "frozen"
    assert sandboxes.wallet.get_product(origin, item["itemId"])["status"] == "frozen"
    again = run(poll_sites=True)  # settled: nothing flows back twice
    assert again["flowed_back"] == 0 and again["pushed"] == 0


def test_an_erp_change_after_the_sites_freeze_wins(sandboxes):
    run()
    item = multi_site_item(sandboxes)
    origin = item["custitem_vf_sales_areas"].split(",")[0]
    sandboxes.wallet.freeze(origin, item["itemId"], "local")
    time.sleep(0.01)
    sandboxes.erp.touch("inventoryItem", item["id"], displayName="Renamed after the freeze")
    summary = run(poll_sites=True)
    assert summary["flowed_back"] == 0 and summary["site_changes_overruled"] == 1
    assert sandboxes.erp.get_record("inventoryItem", item["id"])["custitem_vf_status"] == "normal"
    product = sandboxes.wallet.get_product(origin, item["itemId"])
    assert product["status"] == "normal" and product["name"] == "Renamed after the freeze"


def test_a_freeze_arriving_as_a_webhook_flows_back_without_polling(sandboxes):
    from portal.app import create_app
    from sandbox.core import serve

    run()
    item = multi_site_item(sandboxes)
    origin, *others = item["custitem_vf_sales_areas"].split(",")
    sandboxes.wallet.freeze(origin, item["itemId"], "stock problem")
    events = [e for e in sandboxes.wallet.events(origin)
              if e["type"] == "product.status_changed"]
    with serve(create_app()) as portal:
        assert sandboxes.wallet.deliver_events(events, portal.base_url) == [202]
    summary = run()  # no polling: the webhook is enough
    assert summary["flowed_back"] == 1
    assert sandboxes.erp.get_record("inventoryItem", item["id"])["custitem_vf_status"] == "frozen"
    for site in others:
        assert sandboxes.wallet.get_product(site, item["itemId"])["status"] == "frozen"


def test_an_items_source_digest_follows_its_content_and_not_its_volatile_fields():
    from decimal import Decimal

    item = {"id": "7", "itemId": "SKU-7", "custitem_vf_face_value": Decimal("10.00"),
            "lastModifiedDate": "2026-11-23T10:00:00Z", "links": [{"rel": "self"}]}
    digest = sc.source_digest(item)
    assert digest == sc.source_digest({**item, "lastModifiedDate": "2026-11-24T10:00:00Z",
                                       "links": []})
    assert digest == sc.source_digest(dict(reversed(list(item.items()))))
    # the ERP's digits count: 10.00 is not 10.0
    assert digest != sc.source_digest({**item, "custitem_vf_face_value": Decimal("10.0")})
    assert digest != sc.source_digest({**item, "itemId": "SKU-8"})
    # what orjson cannot write still gets a digest of its own
    huge = sc.source_digest({**item, "custitem_vf_kind": 2**70})
    assert huge == sc.source_digest({**item, "custitem_vf_kind": 2**70}) != digest


def test_a_product_digest_is_the_fingerprint_it_always_was():
    """Products confirmed by the sites before the digest was made by orjson are not sent
    again: the same text, so the same digest, also for names json escapes."""
    from canonical import Sku
    from mappings.catalog import sku_to_wallet_product
    from state.store import fingerprint

    for name in ("Voucher", "Bon d'achat é 日本 \"q\""):
        mapped = Sku.model_validate({
            "sku": "SKU-1", "name": name, "kind": "gift_card",
            "face_value": {"amount": "10.00", "currency": "SGD"}, "sales_areas": ["sg1"],
            "issuance_mode": "code_pool", "write_off_type": "on_delivery", "status": "normal",
            "updated_at": datetime(2026, 11, 22, tzinfo=UTC)})
        for listed in (True, False):
            product = sku_to_wallet_product(mapped, listed=listed)
            assert sc.product_digest(product) == fingerprint(product)


@pytest.mark.parametrize("engine", BOTH_DATABASES, indirect=True)
def test_products_are_planned_for_listing_sites_and_sites_that_once_had_them(engine):
    """Every (site, SKU) pair the rule names, compared with the rule written out plainly:
    a listed site gets the product unless it confirmed that version, a site that once
    received a SKU no longer listed there gets it inactive, any other site nothing."""
    import random

    from canonical import Sku
    from mappings.catalog import sku_to_wallet_product
    from state.store import fingerprint, save_fingerprints

    sites = ["hk1", "my1", "sg1", "sg2", "tw1"]
    rng = random.Random(7)
    skus = [Sku.model_validate({
        "sku": f"SKU-{i}", "name": f"Voucher {i}", "kind": "gift_card",
        "face_value": {"amount": "10.00", "currency": "SGD"},
        "sales_areas": sorted(rng.sample([*sites, "th1"], rng.randint(0, 3))),
        "issuance_mode": "code_pool", "write_off_type": "on_delivery", "status": "normal",
        "updated_at": datetime(2026, 11, 22, tzinfo=UTC)}) for i in range(60)]
    confirmed: dict[str, dict[str, str]] = {site: {} for site in sites}
    for k in skus:
        for site in rng.sample(sites, 2):  # confirmed: the current version, or another one
            listed = site in k.sales_areas
            product = sku_to_wallet_product(k, listed=listed)
            confirmed[site][k.sku] = (fingerprint(product) if rng.random() < 0.5
                                      else fingerprint({**product, "name": "old"}))
    with session_scope(engine) as s:
        for site, digests in confirmed.items():
            save_fingerprints(s, sc.site_target(site), sc.ENTITY, digests)
    with session_scope(engine) as s:
        planned = sc.plan_products(s, skus, sites[:4])

    expected: dict[str, list[tuple[str, str]]] = {}
    unchanged = 0
    for site in sites[:4]:
        for k in skus:
            listed = site in k.sales_areas
            if not listed and k.sku not in confirmed[site]:
                continue
            product = sku_to_wallet_product(k, listed=listed)
            if confirmed[site].get(k.sku) == fingerprint(product):
                unchanged += 1
                continue
            expected.setdefault(site, []).append((k.sku, product["status"]))
    got = {site: [(w.entity_key, w.payload["status"]) for w in writes]
           for site, writes in planned.writes.items()}
    assert got == expected and list(got) == list(expected)
    assert planned.unchanged == unchanged
    for site, writes in planned.writes.items():
        for w in writes:
            assert planned.digests[site][w.entity_key] == fingerprint(w.payload)
            assert w.idempotency_key == sc.product_key(site, w.entity_key,
                                                       fingerprint(w.payload))
