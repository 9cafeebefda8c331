"""Benchmark: the full catalogue and inventory sync to twelve sites, then a 1% change.

vouchflow runs ``sync-catalog`` and ``sync-inventory`` through Prefect against sandboxes in a
separate process: the ERP's items read by SuiteQL, mapped and validated, products pushed to
the sites of their sales areas, every SKU's stock split into site quotas and sent with its
batch shares. The baseline makes the same HTTP calls with plain httpx: the same SuiteQL pages,
the same number of product, inventory and batch PUTs with the same items (the quotas it
sends are the ones vouchflow computed, read back from the sandbox, so only the calls are
timed, not the policy). Then 1% of the SKUs change in the ERP and vouchflow runs again.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import random
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx

from bench.common import emit, helpers_cpu_s, peak_rss_mb, reset_wallet
from bench.sync_catalog import catalog_sandbox, push_site, suiteql_items

BASELINE = ("plain httpx.AsyncClient with the same OAuth signing: the SuiteQL item pages, "
            "then per site PUT /products:batch, /inventory:batch and /batches:batch with "
            "500 items each, the same items vouchflow sent; no mapping, validation, state, "
            "quota policy or Prefect")


def stock_pool(skus: list[tuple[str, str, str]]) -> None:
    """One API batch per SKU in vouchflow's pool (seeding, not timed)."""
    from state import pool
    from state.db import get_engine, session_scope

    engine = get_engine()
    with session_scope(engine) as session:
        for sku, _mode, currency in skus:
            pool.upsert_batch(session, batch_no=f"B-{sku}", sku=sku, issuance_mode="api",
                              unit_cost=Decimal("1"), currency=currency, quantity=100)


async def baseline(env: dict[str, str], sent: dict[str, dict[str, list[Any]]]) -> dict[str, int]:
    from connectors.erp.auth import TokenAuth
    from connectors.erp.config import ErpSettings

    settings = ErpSettings()
    calls: dict[str, int] = defaultdict(int)
    async with httpx.AsyncClient(base_url=settings.url(), auth=TokenAuth(settings),
                                 timeout=120) as erp:
        _, calls["suiteql"] = await suiteql_items(erp)

    paths = ("products:batch", "inventory:batch", "batches:batch")
    for done in await asyncio.gather(*(
            push_site(env, site, {p: sent.get(site, {}).get(p, []) for p in paths})
            for site in sent)):
        for path, n in done.items():
            calls[path] += n
    return dict(calls)


@contextmanager
def profiled(path: str) -> Iterator[None]:
    """cProfile of the timed vouchflow side in every thread it starts (the flows plan in
    worker threads), merged into one pstats file at ``path``. Each thread is timed by its own
    CPU clock (``time.thread_time``), so waiting (locks, sockets, queues) does not count, as
    in ``vouchflow_cpu_s``. Measurement only: the profiler slows the run it watches."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_in_thread(*_: object) -> None:
        profile = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(profile)
        profile.enable()  # replaces this bootstrap hook for the rest of the thread

    main_profile = cProfile.Profile(time.thread_time)
    threading.setprofile(start_in_thread)
    main_profile.enable()
    try:
        yield
    finally:
        main_profile.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        stats = pstats.Stats(main_profile)
        with lock:
            for profile in profiles:
                # read as it stands: ``disable`` from this thread would close the other
                # thread's open calls with this thread's clock
                profile.snapshot_stats()
                if profile.stats:  # type: ignore[attr-defined]
                    stats.add(_Snapshot(profile.stats))  # type: ignore[attr-defined]
        stats.dump_stats(path)


class _Snapshot:
    """Profile data as ``pstats.Stats.add`` takes it (``stats`` and ``create_stats``)."""

    def __init__(self, stats: dict[Any, Any]) -> None:
        self.stats = stats

    def create_stats(self) -> None:
        pass


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sync_full", description=__doc__)
    parser.add_argument("--skus", type=int, default=100_000)
    parser.add_argument("--sites", type=int, default=12)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--profile", metavar="PATH", default=None,
                        help="write a cProfile (pstats) of the timed vouchflow side, all "
                             "threads, to PATH (measurement only: it slows that side)")
    args = parser.parse_args(argv)
    with catalog_sandbox(args.skus) as (home, env):
        from prefect.testing.utilities import prefect_test_harness

        from flows.sync_catalog import sync_catalog
        from flows.sync_inventory import sync_inventory
        from state.catalog import load_skus
        from state.db import dispose_engines, get_engine, session_scope

        sites = sorted(s for s in ("sg1", "sg2", "my1", "my2", "th1", "th2", "id1", "id2",
                                   "ph1", "vn1", "tw1", "hk1"))[:args.sites]
        with prefect_test_harness(server_startup_timeout=120):
            # warm-up: register the flows and read the catalogue once into a scratch DB
            asyncio.run(sync_catalog(sites=sites[:1], chunk_size=1000, lookback_minutes=0))
            with session_scope(get_engine()) as s:
                catalog = load_skus(s)
            os.environ["VOUCHFLOW_DATABASE_URL"] = f"sqlite:///{home / 'run.db'}"
            dispose_engines()
            stock_pool([(c, k.issuance_mode.value, k.face_value.currency)
                        for c, k in catalog.items()])
            reset_wallet(env)

            load_before = os.getloadavg()[0]
            helpers = helpers_cpu_s()
            started, cpu = time.perf_counter(), time.process_time()
            with profiled(args.profile) if args.profile else nullcontext():
                catalog_summary = asyncio.run(sync_catalog(sites=sites, chunk_size=2000))
                inventory_summary = asyncio.run(sync_inventory(sites=sites))
            vouchflow_s = time.perf_counter() - started
            vouchflow_cpu_s = time.process_time() - cpu
            vouchflow_helpers_cpu_s = helpers_cpu_s() - helpers

            # what vouchflow sent, read back from the sites: the baseline sends the same
            sent = read_sent(env, sites)
            reset_wallet(env)
            helpers = helpers_cpu_s()
            started, cpu = time.perf_counter(), time.process_time()
            calls = asyncio.run(baseline(env, sent))
            baseline_s = time.perf_counter() - started
            baseline_cpu_s = time.process_time() - cpu
            baseline_helpers_cpu_s = helpers_cpu_s() - helpers

            # 1% of the SKUs change in the ERP, then vouchflow again (incremental)
            rng = random.Random(1)
            ids = rng.sample(range(1, args.skus + 1), max(1, int(args.skus * args.changed)))
            with httpx.Client(timeout=120) as c:
                for i in ids:
                    c.post(f"{env['VOUCHFLOW_ERP_BASE_URL']}/_sandbox/erp/touch/"
                           f"inventoryItem/{i}",
                           json={"displayName": f"Changed {i}"}).raise_for_status()
            started, cpu = time.perf_counter(), time.process_time()
            again = asyncio.run(sync_catalog(sites=sites, chunk_size=2000))
            asyncio.run(sync_inventory(sites=sites))
            incremental_s = time.perf_counter() - started
            incremental_cpu_s = time.process_time() - cpu
            load_after = os.getloadavg()[0]
    emit({
        "bench": "sync_full",
        "scale": {"skus": args.skus, "sites": len(sites),
                  "listings": catalog_summary["pushed"],
                  "quotas": inventory_summary["quotas_changed"],
                  "changed": len(ids), "calls": calls},
        "vouchflow_s": round(vouchflow_s, 3),
        "baseline_s": round(baseline_s, 3),
        "ratio": round(vouchflow_s / baseline_s, 3),
        "incremental_s": round(incremental_s, 3),
        "incremental_fraction": round(incremental_s / vouchflow_s, 4),
        "incremental_pushed": again["pushed"],
        # this process's CPU in each timed part (the sandboxes' own process is not counted,
        # on either side): on a shared machine the wall clock also measures the neighbours
        "vouchflow_cpu_s": round(vouchflow_cpu_s, 3),
        "baseline_cpu_s": round(baseline_cpu_s, 3),
        "incremental_cpu_s": round(incremental_cpu_s, 3),
        # the sandboxes' and the Prefect test server's CPU meanwhile (processes of their
        # own): they share the two cores with the side measured
        "vouchflow_helpers_cpu_s": round(vouchflow_helpers_cpu_s, 2),
        "baseline_helpers_cpu_s": round(baseline_helpers_cpu_s, 2),
        "load_1m": [round(load_before, 2), round(load_after, 2)],
        "peak_rss_mb": peak_rss_mb(),
        "baseline": BASELINE,
    })
    return 0


def read_sent(env: dict[str, str], sites: list[str]) -> dict[str, dict[str, list[Any]]]:
    """The products, quotas and batch shares the sites now hold, as the items of the PUTs."""
    out: dict[str, dict[str, list[Any]]] = {}
    with httpx.Client(timeout=300) as c:
        for site in sites:
            key = env[f"VOUCHFLOW_WALLET_{site.upper()}_API_KEY"]
            products: list[Any] = []
            cursor = None
            while True:
                params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
                page = c.get(f"{env['VOUCHFLOW_WALLET_BASE_URL']}/{site}/api/v1/products",
                             params=params, headers={"X-Api-Key": key}).json()
                products.extend({k: v for k, v in p.items() if k != "updated_at"}
                                for p in page["items"])
                cursor = page.get("next_cursor")
                if not cursor:
                    break
            admin = c.get(f"{env['VOUCHFLOW_WALLET_BASE_URL']}/_sandbox/wallet/{site}/inventory"
                          ).json()
            stamp = datetime.now(UTC).isoformat()
            inventory = [{"sku": sku, "available": v["shown"], "as_of": stamp}
                         for sku, v in admin.get("inventory", {}).items()]
            batches = [{k: v for k, v in b.items() if k in {"sku", "batch_no", "available",
                                                             "expires_at", "status"}}
                       for b in admin.get("batches", [])]
            out[site] = {"products:batch": products, "inventory:batch": inventory,
                         "batches:batch": batches}
    return out
