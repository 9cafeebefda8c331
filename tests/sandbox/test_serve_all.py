"""``serve_all``: what ``vouchflow demo`` and ``python -m sandbox`` run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sandbox import serve_all, state_dir
from sandbox.erp import DEFAULT_CREDENTIALS
from sandbox.sites import load_sites

from .conftest import RECORDS, SITES, NetSuiteAuth, product


def test_two_runs_see_the_same_data(tmp_path: Path) -> None:
    with serve_all(tmp_path, erp_port=0, wallet_port=0, seed_skus=40, invalid=7, sites=SITES) as run:
        assert run.erp.count("inventoryItem") == 47
        invalid = run.erp.invalid_seeds()
        assert len(invalid) == 7
        with httpx.Client(base_url=run.erp_url, auth=NetSuiteAuth()) as erp:
            r = erp.patch(f"{RECORDS}/inventoryItem/1", json={"displayName": "Edited"})
            assert r.status_code == 204
        sg1 = run.site_urls()["sg1"]
        r = httpx.put(f"{sg1}/api/v1/products:batch", json={"items": [product("A")]},
                      headers={"X-Api-Key": "key-sg1"})  # fmt: skip
        assert r.status_code == 200
        first_records = run.erp.records["inventoryItem"]
    assert (state_dir(tmp_path) / "erp.json").exists()

    with serve_all(tmp_path, erp_port=0, wallet_port=0, seed_skus=40, invalid=7, sites=SITES) as again:
        assert again.erp.records["inventoryItem"] == first_records  # loaded, not re-seeded
        assert again.erp.invalid_seeds() == invalid
        assert [p["sku"] for p in again.wallet.products("sg1")] == ["A"]
        with httpx.Client(base_url=again.erp_url, auth=NetSuiteAuth()) as erp:
            assert erp.get(f"{RECORDS}/inventoryItem/1").json()["displayName"] == "Edited"


def test_without_home_nothing_is_written(tmp_path: Path) -> None:
    with serve_all(None, erp_port=0, wallet_port=0, seed_skus=5, invalid=0) as run:
        # the default sites come from connectors/wallet/sites.default.toml, read as data
        assert sorted(run.wallet.sites) == sorted(s.code for s in load_sites())
        assert run.erp.count("inventoryItem") == 5
    assert list(tmp_path.iterdir()) == []


def test_python_m_sandbox_runs_until_interrupted(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--home", str(tmp_path), "--erp-port", "0",
         "--wallet-port", "0", "--seed-skus", "20", "--invalid", "2", "--print-env"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("ERP ") and "22 inventory items" in first
        erp_url = first.split()[1]
        deadline = time.monotonic() + 10
        env: dict[str, str] = {}
        while "Ctrl-C" not in (line := proc.stdout.readline()):
            if line.startswith("export "):
                key, _, value = line[7:].strip().partition("=")
                env[key] = value
            assert time.monotonic() < deadline
        assert env["VOUCHFLOW_ERP_BASE_URL"] == erp_url
        assert env["VOUCHFLOW_ERP_ACCOUNT"] == DEFAULT_CREDENTIALS.account
        assert env["VOUCHFLOW_WALLET_SG1_API_KEY"] == "sandbox-key-sg1"
        supplier = httpx.post(f"{env['VOUCHFLOW_SUPPLIER_URL']}/v1/codes:issue",
                              headers={"Authorization": f"Bearer {env['VOUCHFLOW_SUPPLIER_TOKEN']}",
                                       "Idempotency-Key": "k-cli"},
                              json={"sku": "GC", "quantity": 1, "order_ref": "cli"})
        assert supplier.status_code == 201
        r = httpx.get(f"{erp_url}{RECORDS}/inventoryItem", auth=NetSuiteAuth())
        assert r.json()["totalResults"] == 22
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (state_dir(tmp_path) / "erp.json").exists()
    assert (state_dir(tmp_path) / "wallet.json").exists()
