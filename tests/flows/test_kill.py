"""A real crash: the sync runs in its own process and is killed with SIGKILL midway, between
any request leaving and its answer being recorded; the re-run completes the work exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.flows.test_sync_catalog import created, expected_listings

pytestmark = pytest.mark.usefixtures("prefect_harness", "state_url")


def start_sync(extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, **extra_env, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "sync", "catalog", "--chunk-size", "20"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


@pytest.mark.seed(300, 4)
def test_sigkill_midway_then_rerun_gives_every_listing_exactly_once(sandboxes):
    # slow the ERP down so the kill lands while chunks are in flight
    sandboxes.erp.faults.set(latency_ms=4)
    proc = start_sync({})
    deadline = time.monotonic() + 120
    try:
        while sum(created(sandboxes).values()) < 60:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the sync never got going"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    partial = sum(created(sandboxes).values())
    want = expected_listings(sandboxes)
    assert partial < sum(want.values()), "the kill came too late to prove anything"

    sandboxes.erp.faults.clear()
    rerun = start_sync({})
    out, _ = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, out.decode()
    assert created(sandboxes) == want  # each listing created exactly once, none missing
    updates = Counter(sandboxes.wallet.effects.keys("product.updated"))
    assert updates == Counter(), f"listings rewritten: {updates.most_common(3)}"
