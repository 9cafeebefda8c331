"""Benchmark: the catalogue sync, vouchflow against a bare baseline, side by side.

Both read the same N inventory items from the ERP sandbox with the same SuiteQL pages (the
flow's default read, ``catalog_read=suiteql``) and upsert the products on the twelve wallet
sites in batches of 500. The baseline does exactly those HTTP calls with plain httpx and nothing else:
no validation, mapping to the canonical model, state, outbox, fingerprints or Prefect.
vouchflow runs the real ``sync-catalog`` flow through Prefect (a local API started before the
clock starts). The wallet is emptied before each side, so both create every listing. A second
vouchflow run with nothing changed measures the incremental path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.common import emit, peak_rss_mb, quiet_prefect, reset_wallet, sandbox_process

BASELINE = ("plain httpx.AsyncClient: the same SuiteQL item pages vouchflow reads (1000 rows, "
            "key ranges of 100,000), PUT /products:batch (500 per request) to each item's "
            "sales-area sites; same OAuth signing; no validation, mapping, state or Prefect")


async def suiteql_items(erp: httpx.AsyncClient) -> tuple[list[dict[str, Any]], int]:
    """Every inventory item as SuiteQL rows, read as vouchflow reads them (pages of 1000 in
    key ranges below the 100,000-row cap); returns the rows and the number of requests."""
    from connectors.erp.records import inventory_item_select

    rows: list[dict[str, Any]] = []
    calls = 0
    last = None
    while True:
        where = "itemtype = 'InvtPart'" + (f" AND id > {last}" if last else "")
        offset = 0
        while offset < 100_000:
            r = await erp.post("/services/rest/query/v1/suiteql",
                               params={"limit": 1000, "offset": offset},
                               json={"q": f"SELECT {inventory_item_select()} FROM item "
                                          f"WHERE {where} ORDER BY id"},
                               headers={"Prefer": "transient"})
            r.raise_for_status()
            calls += 1
            page = r.json()
            rows.extend(page["items"])
            if page["items"]:
                last = page["items"][-1]["id"]
            offset += page["count"]
            if not page["hasMore"]:
                break
        if not page["hasMore"]:
            return rows, calls


async def push_site(env: dict[str, str], site: str, batches: dict[str, list[Any]]
                    ) -> dict[str, int]:
    """PUT each path's items to one wallet site, 500 a request, with plain httpx; returns
    the requests sent per path."""
    key = env[f"VOUCHFLOW_WALLET_{site.upper()}_API_KEY"]
    calls = dict.fromkeys(batches, 0)
    async with httpx.AsyncClient(base_url=f"{env['VOUCHFLOW_WALLET_BASE_URL']}/{site}/api/v1",
                                 headers={"X-Api-Key": key}, timeout=120) as wallet:
        for path, items in batches.items():
            for start in range(0, len(items), 500):
                r = await wallet.put(f"/{path}", json={"items": items[start:start + 500]})
                r.raise_for_status()
                calls[path] += 1
    return calls


async def baseline(env: dict[str, str]) -> dict[str, Any]:
    from connectors.erp.auth import TokenAuth
    from connectors.erp.config import ErpSettings

    settings = ErpSettings()
    async with httpx.AsyncClient(base_url=settings.url(), auth=TokenAuth(settings),
                                 timeout=120) as erp:  # the signing is essential work
        rows, calls = await suiteql_items(erp)
    by_site: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        product = {
            "sku": r["itemid"], "name": r.get("displayname", ""), "kind": r["custitem_vf_kind"],
            "face_value": {"amount": r["custitem_vf_face_value"],
                           "currency": r["custitem_vf_currency"]},
            "status": "inactive" if r.get("isinactive") == "T" else r["custitem_vf_status"],
            "issuance_mode": r["custitem_vf_issuance_mode"],
            "write_off_type": r["custitem_vf_write_off_type"],
        }
        for site in filter(None, r["custitem_vf_sales_areas"].split(",")):
            by_site[site].append(product)

    pushes = await asyncio.gather(*(push_site(env, s, {"products:batch": p})
                                    for s, p in by_site.items()))
    return {"erp_calls": calls, "wallet_calls": sum(sum(n.values()) for n in pushes),
            "listings": sum(len(p) for p in by_site.values())}


@contextmanager
def catalog_sandbox(skus: int) -> Iterator[tuple[Path, dict[str, str]]]:
    """A scratch home and state database (SQLite, no Prefect global limits) and the sandboxes
    seeded with ``skus`` valid items last changed yesterday (so a second run reads only what
    changed since the first), in their own process; this process's environment points at
    them. Yields (home, the sandboxes' environment)."""
    quiet_prefect()
    with tempfile.TemporaryDirectory(prefix="vf-bench-") as tmp:
        home = Path(tmp)
        os.environ.update({"VOUCHFLOW_HOME": str(home / "vouchflow"),
                           "VOUCHFLOW_DATABASE_URL": f"sqlite:///{home / 'state.db'}",
                           "VOUCHFLOW_GLOBAL_LIMITS": "0"})
        yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        with sandbox_process(home, skus=skus, invalid=0,
                             extra=["--modified-at", yesterday]) as env:
            os.environ.update(env)
            yield home, env


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench sync_catalog", description=__doc__)
    parser.add_argument("--skus", type=int, default=20000)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--chunk-concurrency", type=int, default=2)
    args = parser.parse_args(argv)
    with catalog_sandbox(args.skus) as (home, env):
        from prefect.testing.utilities import prefect_test_harness

        from flows.sync_catalog import sync_catalog

        with prefect_test_harness(server_startup_timeout=120):
            # warm up Prefect (first flow run registers the flow) on an empty read
            asyncio.run(sync_catalog(sites=["sg1"], chunk_size=args.chunk_size,
                                     lookback_minutes=0))
            os.environ["VOUCHFLOW_DATABASE_URL"] = f"sqlite:///{home / 'state2.db'}"
            from state.db import dispose_engines

            dispose_engines()
            reset_wallet(env)

            started = time.perf_counter()
            base = asyncio.run(baseline(env))
            baseline_s = time.perf_counter() - started

            reset_wallet(env)
            started = time.perf_counter()
            summary = asyncio.run(sync_catalog(chunk_size=args.chunk_size,
                                               chunk_concurrency=args.chunk_concurrency,
                                               full=True))
            vouchflow_s = time.perf_counter() - started

            started = time.perf_counter()
            again = asyncio.run(sync_catalog(chunk_size=args.chunk_size,
                                             chunk_concurrency=args.chunk_concurrency))
            rerun_s = time.perf_counter() - started

    if summary["pushed"] != base["listings"]:
        raise SystemExit(f"vouchflow pushed {summary['pushed']} listings, the baseline "
                         f"{base['listings']}: the comparison is void")
    emit({
        "bench": "sync_catalog",
        "scale": {"skus": args.skus, "sites": 12, "listings": base["listings"],
                  "erp_calls": base["erp_calls"], "wallet_calls": base["wallet_calls"]},
        "vouchflow_s": round(vouchflow_s, 3),
        "baseline_s": round(baseline_s, 3),
        "ratio": round(vouchflow_s / baseline_s, 3),
        "rerun_s": round(rerun_s, 3),
        "rerun_pushed": again["pushed"],
        "vouchflow_records_per_s": round(args.skus / vouchflow_s, 1),
        "peak_rss_mb": peak_rss_mb(),
        "baseline": BASELINE,
    })
    return 0
