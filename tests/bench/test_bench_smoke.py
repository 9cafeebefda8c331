"""Benchmarks are not tests, but a tiny run keeps them working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bench_result(args: list[str], *, timeout: float) -> dict:
    """Run ``python -m bench ARGS``; it must succeed, and its last line is the JSON result."""
    out = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sync_catalog_bench_prints_its_json_line(tmp_path):
    result = bench_result(["sync_catalog", "--skus", "60", "--chunk-size", "25"], timeout=300)
    assert result["bench"] == "sync_catalog"
    assert {"vouchflow_s", "baseline_s", "ratio", "rerun_s", "baseline"} <= set(result)
    assert result["rerun_pushed"] == 0
    assert result["scale"]["skus"] == 60 and result["scale"]["listings"] > 60


def test_sync_full_bench_prints_its_json_line():
    result = bench_result(["sync_full", "--skus", "200", "--sites", "3", "--changed", "0.05"],
                          timeout=600)
    assert result["bench"] == "sync_full"
    assert {"vouchflow_s", "baseline_s", "ratio", "incremental_s", "incremental_fraction",
            "vouchflow_cpu_s", "baseline_cpu_s", "incremental_cpu_s", "load_1m",
            "baseline"} <= set(result)
    assert 0 < result["vouchflow_cpu_s"] and 0 < result["incremental_cpu_s"]
    # the sandboxes served both sides from a process of their own: its CPU is counted
    assert result["vouchflow_helpers_cpu_s"] > 0 and result["baseline_helpers_cpu_s"] > 0
    scale = result["scale"]
    assert scale["skus"] == 200 and scale["sites"] == 3 and scale["changed"] == 10
    # the baseline made as many product PUTs as there were listings to send, 500 a request
    assert scale["calls"]["products:batch"] >= scale["listings"] / 500 > 0
    # the changed items went out again, and only they (on the sites that sell them)
    assert 0 < result["incremental_pushed"] <= 10 * 3


def test_unknown_benchmark_is_a_clear_error():
    out = subprocess.run([sys.executable, "-m", "bench", "nope"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "sync_catalog" in out.stderr and "unknown benchmark" in out.stderr


def test_erp_upsert_bench_prints_its_json_line():
    result = bench_result(["erp_upsert", "--records", "300", "--latency-ms", "5",
                           "--single-records", "20"], timeout=300)
    assert {"single_records_per_s", "batch_records_per_s", "ceiling_records_per_s",
            "ceiling_fraction"} <= set(result)
    assert result["failed"] == 0 and result["sandbox_max_in_flight"] <= 5


def test_deliver_bench_prints_its_json_line():
    result = bench_result(["deliver", "--events", "120", "--subscribers", "2",
                           "--rounds", "2", "--lag-events", "15", "--concurrency", "4"],
                          timeout=300)
    assert result["bench"] == "deliver"
    assert {"events_per_s", "baseline_events_per_s", "ratio", "lag_p50_s", "lag_p99_s",
            "baseline"} <= set(result)
    assert result["scale"]["events"] == 120 and result["scale"]["deliveries"] == 240
    # counted at the subscribers: everything arrived, in order, for both sides
    assert (result["missing"], result["baseline_missing"], result["out_of_order"],
            result["rejected"]) == (0, 0, 0, 0)
    assert result["lag_p50_s"] is not None and result["scale"]["lag_deliveries"] == 30
