"""The allocation benchmark is not a test, but a tiny run keeps it working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(database: str) -> dict:
    from tests.conftest import PG_URL

    out = subprocess.run(
        [sys.executable, "-m", "bench", "allocate", "--codes", "3000", "--workers", "2",
         "--database", database, "--skus", "20", "--chunk", "200"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "VOUCHFLOW_BENCH_POSTGRES_URL": PG_URL},
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_allocate_bench_prints_its_json_line_on_sqlite():
    result = run_bench("sqlite")
    assert result["bench"] == "allocate" and result["database"] == "sqlite"
    assert result["duplicates"] == 0 and result["lost"] == 0
    assert result["codes_allocated"] == 3000 and result["lines_left"] == 0
    assert {"codes_per_s", "peak_rss_mb", "seconds", "workers", "baseline_s", "ratio",
            "baseline"} <= set(result)


@pytest.mark.postgres
@pytest.mark.slow
def test_allocate_bench_prints_its_json_line_on_postgresql():
    from tests.conftest import require_postgres

    require_postgres()
    result = run_bench("postgresql")
    assert result["duplicates"] == 0 and result["lost"] == 0 and result["baseline_lost"] == 0
    assert result["codes_allocated"] == 3000 and result["deliveries"] == result["scale"]["lines"]
