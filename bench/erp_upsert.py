"""Benchmark: writing records to the ERP, one request per record and in asynchronous batches.

The ERP sandbox runs in its own process with the account's concurrency limit (5) and a fixed
time per record write (``--latency-ms``). The ceiling that limit sets is
``limit x batch size / latency`` records per second; the batch figure should come close to it.
Single-record upserts are timed on at most ``--single-records`` records (at 5 x 1/latency per
second, the full set would take minutes and prove nothing more). The baseline sends the same
batches with plain httpx (same signing, same polling), no retries, limits or result mapping.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import emit, peak_rss_mb, sandbox_process

BASELINE = ("plain httpx.AsyncClient with the same OAuth signing: the same batch PUTs (100 "
            "records, Prefer: respond-async, idempotency key), job polls and result reads, "
            "5 at a time; no retries, limiter, error mapping or result types")


def records(start: int, n: int, tag: str) -> list[dict[str, Any]]:
    return [{"externalId": f"BENCH-{tag}-{i:07d}", "itemId": f"BENCH-{tag}-{i:07d}",
             "displayName": f"Bench voucher {i}", "isInactive": False,
             "custitem_vf_kind": "gift_card", "custitem_vf_currency": "SGD",
             "custitem_vf_sales_areas": "sg1", "custitem_vf_issuance_mode": "api",
             "custitem_vf_write_off_type": "on_delivery", "custitem_vf_status": "normal"}
            for i in range(start, start + n)]


async def singles(n: int) -> float:
    from connectors.erp import ErpClient, ErpSettings

    async with ErpClient(ErpSettings()) as erp:
        started = time.perf_counter()
        await asyncio.gather(*(erp.upsert("inventoryItem", r["externalId"], r)
                               for r in records(0, n, "S")))
        return time.perf_counter() - started


async def batches(n: int, size: int) -> tuple[float, int]:
    from connectors.erp import ErpClient, ErpSettings

    data = records(0, n, "B")
    async with ErpClient(ErpSettings()) as erp:
        started = time.perf_counter()
        results = await asyncio.gather(*(
            erp.batch("inventoryItem", data[i:i + size], key=f"bench-b-{i}")
            for i in range(0, n, size)))
        elapsed = time.perf_counter() - started
    failed = sum(1 for batch in results for r in batch if not r.ok)
    return elapsed, failed


async def baseline(n: int, size: int, concurrency: int) -> float:
    from connectors.erp.auth import TokenAuth
    from connectors.erp.config import ErpSettings
    from connectors.idempotency import key_uuid

    settings = ErpSettings()
    data = records(0, n, "R")
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=settings.url(), auth=TokenAuth(settings),
                                 timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency * 2)) as c:
        async def one(i: int) -> None:
            async with gate:
                r = await c.put("/services/rest/record/v1/inventoryItem",
                                json={"items": data[i:i + size]},
                                headers={"Prefer": "respond-async",
                                         "Content-Type": "application/vnd.oracle.resource+json;"
                                                         " type=collection",
                                         "X-NetSuite-idempotency-key": str(key_uuid(f"r-{i}"))})
            job = r.headers["Location"].rsplit("/", 1)[-1]
            delay = 0.02
            while True:
                await asyncio.sleep(delay)
                async with gate:
                    status = (await c.get(f"/services/rest/async/v1/job/{job}")).json()
                if status.get("completed"):
                    break
                delay = min(delay * 2, 2.0)
            async with gate:
                (await c.get(f"/services/rest/async/v1/job/{job}/result")).raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(0, n, size)))
        return time.perf_counter() - started


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench erp_upsert", description=__doc__)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--limit", type=int, default=5, help="the account's concurrency limit")
    parser.add_argument("--single-records", type=int, default=1000)
    args = parser.parse_args(argv)
    size = 100
    with tempfile.TemporaryDirectory(prefix="vf-bench-") as tmp:
        extra = ["--erp-concurrency", str(args.limit),
                 "--erp-write-latency-ms", str(args.latency_ms)]
        with sandbox_process(Path(tmp), skus=0, invalid=0, extra=extra) as env:
            os.environ.update(env)
            os.environ["VOUCHFLOW_ERP_CONCURRENCY"] = str(args.limit)
            n_single = min(args.single_records, args.records)
            load_before = os.getloadavg()[0]
            single_s = asyncio.run(singles(n_single))
            cpu = time.process_time()
            batch_s, failed = asyncio.run(batches(args.records, size))
            batch_cpu = time.process_time() - cpu
            cpu = time.process_time()
            base_s = asyncio.run(baseline(args.records, size, args.limit))
            base_cpu = time.process_time() - cpu
            load_after = os.getloadavg()[0]
            stats = httpx.get(env["VOUCHFLOW_ERP_BASE_URL"] + "/_sandbox/stats").json()
    ceiling = args.limit * size / (args.latency_ms / 1000)
    batch_rate = args.records / batch_s
    emit({
        "bench": "erp_upsert",
        "scale": {"records": args.records, "single_records": n_single, "batch_size": size,
                  "limit": args.limit, "latency_ms": args.latency_ms},
        "single_records_per_s": round(n_single / single_s, 1),
        "batch_records_per_s": round(batch_rate, 1),
        "ceiling_records_per_s": round(ceiling, 1),
        "ceiling_fraction": round(batch_rate / ceiling, 3),
        "single_ceiling_fraction": round(n_single / single_s / (args.limit / (args.latency_ms / 1000)), 3),
        "failed": failed,
        "vouchflow_s": round(batch_s, 3),
        "baseline_s": round(base_s, 3),
        "ratio": round(batch_s / base_s, 3),
        "sandbox_max_in_flight": stats.get("max_in_flight"),
        "sandbox_rejected_over_limit": stats.get("rejected_concurrency"),
        # diagnostics: the client's CPU in each phase (the sandbox runs in its own process), and
        # the machine's load, which moves these figures more than anything on a shared box
        "vouchflow_client_cpu_s": round(batch_cpu, 3),
        "baseline_client_cpu_s": round(base_cpu, 3),
        "load_avg_1m": [round(load_before, 2), round(load_after, 2)],
        "peak_rss_mb": peak_rss_mb(),
        "baseline": BASELINE,
    })
    return 0
