"""post-procurement against the ERP sandbox: every record once under its external id, a re-run
writes nothing, a lost transform answer and a SIGKILL midway leave one receipt each. Effects
are counted at the far end."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from flows import sync_catalog as sc
from flows.cli import app as cli
from flows.procurement import post_procurement
from state import procurement as proc
from state import vendor_uploads as vu
from state.catalog import load_skus
from state.crypto import Keyring
from state.db import get_engine, session_scope

pytestmark = pytest.mark.usefixtures("prefect_harness", "state_url")


def code_for(fmt: str | None, n: int) -> str:
    """A code matching one of the sandbox's code formats."""
    for candidate in (f"PC{n:010d}", f"{n:016d}", f"PCPC-{n:04d}-ZZZZ"):
        if fmt is None or re.fullmatch(fmt, candidate):
            return candidate
    raise AssertionError(f"no code for {fmt}")


def build(sandboxes, *, receipts: int = 3) -> dict[str, list[str]]:
    """The catalogue from the ERP, then a code-pool vendor (request -> order -> uploads) and
    an API vendor (order -> quantity receipts). Returns the external ids made, by type."""
    asyncio.run(sc.sync_catalog(chunk_size=100))
    engine, ring = get_engine(), Keyring.load()
    with session_scope(engine) as s:
        catalog = load_skus(s)
    normal = sorted((c, k) for c, k in catalog.items() if k.status.value == "normal")
    pool_sku, fmt = next((c, k.code_format) for c, k in normal
                         if k.issuance_mode.value == "code_pool")
    api_sku = next(c for c, k in normal if k.issuance_mode.value == "api")
    with session_scope(engine) as s:
        pooled, _ = proc.add_vendor(s, ring, "Pool Supplier", currency="SGD", country="SG",
                                    bank_account="SG12POOL0001", bank_bic="POOLSGSG")
        ctr = proc.add_contract(s, pooled, issuance_mode="code_pool",
                                settlement_mode="purchased_quantity", currency="SGD",
                                prices={pool_sku: Decimal("7.25")},
                                valid_from=proc._today())
        proc.set_signature(s, ctr.contract_no, "signed", by="ceo")
        request = proc.request_purchase(s, ctr.contract_no,
                                        [proc.LineIn(pool_sku, 10)] * receipts,
                                        requested_by="buyer")
        proc.approve_request(s, request.request_no, by="manager")
        po = proc.order_from_request(s, request.request_no)
        api_vendor, _ = proc.add_vendor(s, ring, "Api Supplier", currency="SGD")
        api_ctr = proc.add_contract(s, api_vendor, issuance_mode="api",
                                    settlement_mode="sales_quantity", currency="SGD",
                                    prices={api_sku: Decimal("3.10")}, valid_from=proc._today())
        proc.set_signature(s, api_ctr.contract_no, "signed")
        api_po = proc.create_purchase_order(s, api_ctr.contract_no,
                                            [proc.LineIn(api_sku, 100)])
        api_receipts = [proc.receive_quantity(s, api_po.po_no, 1, 40).receipt_no,
                        proc.receive_quantity(s, api_po.po_no, 1, 60).receipt_no]
        pooled_id, po_no = pooled.id, po.po_no
    made = []
    for line in range(1, receipts + 1):
        body = "code,pin,expires_at\n" + "".join(
            f"{code_for(fmt, line * 100 + i)},,\n" for i in range(line + 1))
        result = vu.receive_code_file(engine, ring, vendor_id=pooled_id, po_no=po_no,
                                      line_no=line, file_name=f"l{line}.csv",
                                      chunks=[body.encode()])
        assert result.status == "accepted", result
        made.append(result.receipt_no)
    with session_scope(engine) as s:
        batches = [r.batch_no for r in s.scalars(select(proc.Receipt))]
    return {"vendor": ["vendor-pool-supplier", "vendor-api-supplier"],
            "purchaseRequisition": [request.request_no],
            "purchaseOrder": [po_no, api_po.po_no], "itemReceipt": made + api_receipts,
            "customrecord_vf_batch": batches}


def created(sandboxes, record_type: str) -> Counter[str]:
    return Counter(sandboxes.erp.effects.keys(f"{record_type}.created"))


def assert_each_once(sandboxes, made: dict[str, list[str]]) -> None:
    for record_type, keys in made.items():
        assert created(sandboxes, record_type) == Counter(keys), record_type


@pytest.mark.seed(16, 0)
def test_chain_reaches_the_erp_once_and_a_rerun_writes_nothing(sandboxes):
    made = build(sandboxes)
    summary = asyncio.run(post_procurement())
    assert (summary["vendors"], summary["requests"], summary["orders"], summary["receipts"],
            summary["batches"], summary["dead_lettered"]) == (2, 1, 2, 5, 5, 0)
    assert_each_once(sandboxes, made)
    erp = sandboxes.erp
    po = erp.get_record("purchaseOrder", f"eid:{made['purchaseOrder'][0]}")
    vendor = erp.get_record("vendor", "eid:vendor-pool-supplier")
    assert po["entity"] == {"id": vendor["id"]} and len(po["item"]["items"]) == 3
    assert po["total"] == Decimal("217.50")  # 30 x 7.25
    assert vendor["custentity_vf_settlement_mode"] == "purchased_quantity"
    assert vendor["custentity_vf_contract_signed"] is True
    receipt = erp.get_record("itemReceipt", f"eid:{made['itemReceipt'][1]}")
    assert receipt["createdFrom"] == {"id": po["id"]}
    assert [(ln["line"], ln["quantity"]) for ln in receipt["item"]["items"]] == [(2, 3)]
    batch = erp.get_record("customrecord_vf_batch", f"eid:{receipt['item']['items'][0]['custcol_vf_batch_no']}")
    assert (batch["custrecord_vf_batch_quantity"], batch["custrecord_vf_batch_po"]) == (
        3, {"id": po["id"]})
    with session_scope(get_engine()) as s:
        assert all(r.erp_id and r.erp_batch_id for r in s.scalars(select(proc.Receipt)))

    again = asyncio.run(post_procurement())
    assert (again["vendors"], again["orders"], again["receipts"], again["batches"]) == (
        0, 0, 0, 0)
    assert_each_once(sandboxes, made)
    assert erp.effects.count("purchaseOrder.updated") == 0


@pytest.mark.seed(16, 0)
def test_lost_transform_answer_still_one_receipt(sandboxes):
    made = build(sandboxes, receipts=2)
    # every transform is applied, then its answer is lost: the client retries, the ERP
    # refuses the repeated external id, and the lookup finds the receipt the first one made
    sandboxes.erp.faults.set(drop_rate=1.0, drop_when="after", count=4, method="POST",
                             path_prefix="/services/rest/record/v1/purchaseOrder/")
    summary = asyncio.run(post_procurement())
    assert summary["receipts"] == 4 and summary["dead_lettered"] == 0
    assert sandboxes.erp.stats.faults  # the answers were really lost
    assert_each_once(sandboxes, made)


@pytest.mark.seed(16, 0)
def test_sigkill_midway_then_rerun_gives_each_record_once(sandboxes):
    from prefect.settings import PREFECT_API_URL

    made = build(sandboxes, receipts=6)
    sandboxes.erp.faults.set(latency_ms=150)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    proc_ = subprocess.Popen([sys.executable, "-m", "flows.cli", "purchasing", "post"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    try:
        while sum(created(sandboxes, "itemReceipt").values()) < 2:
            assert proc_.poll() is None, proc_.stdout.read().decode() if proc_.stdout else ""
            assert time.monotonic() < deadline, "the run never got to the receipts"
            time.sleep(0.01)
        os.kill(proc_.pid, signal.SIGKILL)
    finally:
        proc_.wait(timeout=30)
    assert proc_.returncode == -signal.SIGKILL
    assert sum(created(sandboxes, "customrecord_vf_batch").values()) < len(
        made["customrecord_vf_batch"]), "the kill came too late to prove anything"
    sandboxes.erp.faults.clear()
    summary = asyncio.run(post_procurement())
    assert summary["dead_lettered"] == 0
    assert_each_once(sandboxes, made)


def test_vendor_commands(state_url):
    runner = CliRunner()
    added = runner.invoke(cli, ["vendors", "add", "Cli Vendor", "--currency", "SGD"])
    assert added.exit_code == 0, added.output
    token = added.output.strip().splitlines()[-1]
    assert token.startswith("vfv_")
    again = runner.invoke(cli, ["vendors", "add", "Cli Vendor"])
    assert again.exit_code == 1 and "exists already" in again.output
    rotated = runner.invoke(cli, ["vendors", "token", "cli-vendor"])
    assert rotated.exit_code == 0
    fresh = rotated.output.strip().splitlines()[-1]
    with session_scope(get_engine()) as s:
        ring = Keyring.load()
        assert proc.vendor_for_token(s, ring, token) is None
        assert proc.vendor_for_token(s, ring, fresh).name == "Cli Vendor"
    listed = runner.invoke(cli, ["vendors", "list", "--json"])
    assert '"slug": "cli-vendor"' in listed.output and token not in listed.output
    refused = runner.invoke(cli, ["purchasing", "order", "ctr-nope-000001", "--line", "X:1"])
    assert refused.exit_code == 1 and "no contract ctr-nope-000001" in refused.output
