"""The code upload benchmark is not a test, but a tiny run keeps it working: through the real
portal endpoint in its own process, on both databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(*args: str) -> dict:
    from tests.conftest import PG_URL

    out = subprocess.run(
        [sys.executable, "-m", "bench", "code_upload", "--codes", "2000", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "VOUCHFLOW_BENCH_POSTGRES_URL": PG_URL},
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_code_upload_bench_prints_its_json_line_on_sqlite():
    result = run_bench("--database", "sqlite", "--pins")
    assert result["bench"] == "code_upload" and result["ok"] is True
    assert result["rows_accepted"] == result["codes_in_pool"] == 2000
    assert {"vouchflow_s", "baseline_s", "ratio", "codes_per_s", "peak_rss_mb", "baseline",
            "scale", "portal_cpu_s", "postgres_backend_cpu_s"} <= set(result)
    assert result["postgres_backend_cpu_s"] is None  # no PostgreSQL here
    assert 0 < result["peak_rss_mb"] < 300


@pytest.mark.postgres
def test_code_upload_bench_on_postgresql_through_the_function():
    from tests.conftest import require_postgres

    require_postgres()
    result = run_bench("--database", "postgresql", "--via", "function")
    assert result["ok"] is True and result["database"] == "postgresql"
