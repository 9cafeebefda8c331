"""Benchmark: the catalogue sync, vouchflow against a bare baseline, side by side.

Both read the same N inventory items from the ERP sandbox (the collection pages, then one GET
per item at the account's concurrency) and upsert the products on the twelve wallet sites in
batches of 500. The baseline does exactly those HTTP calls with plain httpx and nothing else:
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

BASELINE = ("plain httpx.AsyncClient: GET the inventoryItem collection pages, GET every item "
            "with the same concurrency limit, PUT /products:batch (500 per request) to each "
            "item's sales-area sites; same OAuth signing; no validation, mapping, state or "
            "Prefect")


async def baseline(env: dict[str, str], concurrency: int) -> dict[str, Any]:
    from connectors.erp.auth import TokenAuth
    from connectors.erp.config import ErpSettings

    auth = TokenAuth(ErpSettings())  # the signing is part of the essential work
    erp_url = env["VOUCHFLOW_ERP_BASE_URL"]
    wallet_url = env["VOUCHFLOW_WALLET_BASE_URL"]
    limits = httpx.Limits(max_connections=concurrency * 2)
    calls = 0
    async with httpx.AsyncClient(base_url=erp_url, auth=auth, limits=limits,
                                 timeout=60) as erp:
        ids: list[str] = []
        offset = 0
        while True:
            page = (await erp.get("/services/rest/record/v1/inventoryItem",
                                  params={"limit": 1000, "offset": offset})).json()
            calls += 1
            ids.extend(item["id"] for item in page["items"])
            if not page["hasMore"]:
                break
            offset += page["count"]
        gate = asyncio.Semaphore(concurrency)

        async def fetch(record_id: str) -> dict[str, Any]:
            async with gate:
                response = await erp.get(f"/services/rest/record/v1/inventoryItem/{record_id}")
                response.raise_for_status()
                return response.json()

        records = await asyncio.gather(*(fetch(i) for i in ids))
        calls += len(ids)
    by_site: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        product = {
            "sku": r["itemId"], "name": r["displayName"], "kind": r["custitem_vf_kind"],
            "face_value": {"amount": str(r["custitem_vf_face_value"]),
                           "currency": r["custitem_vf_currency"]},
            "status": "inactive" if r["isInactive"] else r["custitem_vf_status"],
            "issuance_mode": r["custitem_vf_issuance_mode"],
            "write_off_type": r["custitem_vf_write_off_type"],
        }
        for site in filter(None, r["custitem_vf_sales_areas"].split(",")):
            by_site[site].append(product)

    async def push(site: str, products: list[dict[str, Any]]) -> int:
        key = env[f"VOUCHFLOW_WALLET_{site.upper()}_API_KEY"]
        sent = 0
        async with httpx.AsyncClient(base_url=f"{wallet_url}/{site}/api/v1", timeout=60,
                                     headers={"X-Api-Key": key}) as wallet:
            for start in range(0, len(products), 500):
                response = await wallet.put("/products:batch",
                                            json={"items": products[start:start + 500]})
                response.raise_for_status()
                sent += 1
        return sent

    pushes = await asyncio.gather(*(push(s, p) for s, p in by_site.items()))
    return {"erp_calls": calls, "wallet_calls": sum(pushes),
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
        concurrency = int(os.environ.get("VOUCHFLOW_ERP_CONCURRENCY", "5"))

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
            base = asyncio.run(baseline(env, concurrency))
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
