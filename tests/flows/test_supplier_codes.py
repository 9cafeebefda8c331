"""API-mode lines end to end: allocated from an API batch bought under a signed contract, codes
issued by the supplier sandbox with one Idempotency-Key per line, recorded as hashes, delivered
to the wallet site once, whatever crashes when. Counted at the far ends (the supplier's and the
site's effect logs) and in the state database."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, update

from connectors.errors import MalformedResponseError
from connectors.supplier import SupplierClient
from connectors.wallet import WalletClient, load_sites
from flows import ingest_sales as ing
from flows import supplier_codes as sc
from sandbox import SandboxSet
from state import procurement as proc
from state import settlement as st
from state.crypto import Keyring
from state.db import get_engine, session_scope
from state.events import read_events
from state.models import OutboxMessage, PoolBatch
from state.purchasing_models import ApiIssuedCode
from tests.flows.conftest import BOTH_DATABASES
from tests.state.procurement_world import seed_catalog, vendor_with_po

pytestmark = [pytest.mark.usefixtures("prefect_harness", "state_url"), pytest.mark.seed(0, 0)]

SKU = "SKU-API"
SITE = "sg1"


@dataclass
class World:
    sandboxes: SandboxSet
    orders: list[dict]
    slug: str

    @property
    def lines(self) -> dict[tuple[str, str], int]:
        return {(o["order_id"], ln["line_id"]): ln["quantity"]
                for o in self.orders for ln in o["lines"]}


def make_world(sandboxes: SandboxSet, *, orders: int = 4) -> World:
    engine = get_engine()
    seed_catalog(engine)
    party = vendor_with_po(engine, Keyring.load(), "Acme Gifts", quantity=50, sku_code=SKU,
                           unit_cost="6.0000", mode="api", settlement="write_off_quantity")
    with session_scope(engine) as s:
        proc.receive_quantity(s, party.po_no, 1, 50)
    sandboxes.wallet.set_product(SITE, {
        "sku": SKU, "name": "Voucher SKU-API", "kind": "amount_coupon",
        "face_value": {"amount": "10.00", "currency": "SGD"}, "status": "normal",
        "issuance_mode": "api", "write_off_type": "on_redemption"})
    assert sandboxes.supplier is not None
    sandboxes.supplier.add_sku(SKU, pattern="ACME-XXXX-XXXX-9999", pin_digits=4)
    made = [sandboxes.wallet.create_order(SITE, [(SKU, 1 + n % 3)]) for n in range(orders)]
    return World(sandboxes, made, party.slug)


def run(**kw):
    return asyncio.run(ing.ingest_sales(sites=[SITE], post=False, **kw))


def assert_delivered_once(world: World) -> None:
    """Every line delivered once with exactly the codes the supplier issued for its key (one
    issue per line), no code twice, every code recorded as a hash under its line."""
    supplier, wallet = world.sandboxes.supplier, world.sandboxes.wallet
    assert supplier is not None
    issued = supplier.effects.keys("codes.issued")
    assert issued == Counter({sc.issue_key(SITE, o, ln): 1 for o, ln in world.lines}), issued
    deliveries = wallet.effects.keys("delivery.created")
    assert deliveries == Counter({f"{SITE}:{o}:{ln}": 1 for o, ln in world.lines}), deliveries
    everywhere: Counter[str] = Counter()
    for (order_id, line_id), quantity in world.lines.items():
        got = [c["code"] for c in wallet.delivered_codes(SITE, order_id, line_id)]
        answer = supplier.by_key[sc.issue_key(SITE, order_id, line_id)]["answer"]
        assert got == [c["code"] for c in answer["codes"]] and len(got) == quantity
        everywhere.update(got)
    assert everywhere and max(everywhere.values()) == 1
    keyring = Keyring.load()
    with session_scope(get_engine()) as s:
        recorded = {r.code_hash: (r.order_id, r.line_id, r.status) for r in
                    s.scalars(select(ApiIssuedCode))}
        pending = s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.operation == sc.API_DELIVERY_OPERATION,
            OutboxMessage.status != "sent"))
        delivered_events = [e for e in read_events(s, after=0, patterns=["order_line.delivered"],
                                                   limit=1000)]
    assert len(recorded) == sum(world.lines.values())
    for (order_id, line_id), _ in world.lines.items():
        for c in wallet.delivered_codes(SITE, order_id, line_id):
            assert recorded[keyring.hash_code(c["code"])] == (order_id, line_id, "sold")
    assert pending == 0
    assert len(delivered_events) == len(world.lines)


@pytest.mark.parametrize("engine", BOTH_DATABASES, indirect=True)
def test_api_lines_get_supplier_codes_once_and_a_rerun_does_nothing(sandboxes):
    world = make_world(sandboxes)
    summary = run()
    assert summary["held_orders"] == 0 and summary["held"] == [], summary["held"]
    assert summary["delivered_lines"] == len(world.lines)
    assert summary["api_codes_issued"] == sum(world.lines.values())
    assert_delivered_once(world)
    requests = len(sandboxes.supplier.requests())
    again = run()
    assert again["delivered_lines"] == 0 and again["api_codes_issued"] == 0
    assert len(sandboxes.supplier.requests()) == requests  # nothing asked again
    assert_delivered_once(world)


def test_a_missing_supplier_config_holds_the_line_with_the_reason(sandboxes, monkeypatch):
    world = make_world(sandboxes, orders=2)
    monkeypatch.delenv("VOUCHFLOW_SUPPLIER_URL")
    summary = run()
    reasons = [h["reason"] for h in summary["held"]]
    assert len(reasons) == len(world.lines), reasons
    assert all("not configured" in r and "VOUCHFLOW_SUPPLIER_ACME_GIFTS_URL" in r
               for r in reasons), reasons
    assert sandboxes.supplier.effects.count() == 0
    assert sandboxes.wallet.effects.count("delivery.created") == 0
    with session_scope(get_engine()) as s:
        errors = list(s.scalars(select(OutboxMessage.last_error).where(
            OutboxMessage.operation == sc.API_DELIVERY_OPERATION)))
    assert len(errors) == len(world.lines) and all("not configured" in e for e in errors)
    monkeypatch.setenv("VOUCHFLOW_SUPPLIER_URL", sandboxes.supplier_url)
    summary = run()
    assert summary["held"] == [] and summary["delivered_lines"] == len(world.lines)
    assert_delivered_once(world)


def test_a_supplier_that_is_down_holds_the_lines_until_it_is_back(sandboxes):
    world = make_world(sandboxes, orders=2)
    sandboxes.supplier.faults.set(error_rate=1.0, path_prefix="/v1/codes")
    summary = run()
    assert len(summary["held"]) == len(world.lines)
    assert all("503" in h["reason"] for h in summary["held"])
    assert sandboxes.wallet.effects.count("delivery.created") == 0
    sandboxes.supplier.faults.clear()
    assert run()["delivered_lines"] == len(world.lines)
    assert_delivered_once(world)


def test_a_nonsense_answer_for_one_line_holds_that_line_and_the_others_go_on(
        sandboxes, monkeypatch):
    world = make_world(sandboxes, orders=3)
    (odd_order, odd_line), *_ = sorted(world.lines)
    odd = sc.issue_key(SITE, odd_order, odd_line)
    real = SupplierClient.issue_codes

    async def answer(self, sku, quantity, order_ref, *, key):
        if key == odd:
            raise MalformedResponseError(f"{key}: answer without issue_id and codes",
                                         system=self.system)
        return await real(self, sku, quantity, order_ref, key=key)

    monkeypatch.setattr(SupplierClient, "issue_codes", answer)
    summary = run()
    assert [h["order_id"] for h in summary["held"]] == [odd_order]
    assert "without issue_id" in summary["held"][0]["reason"]
    assert summary["delivered_lines"] == len(world.lines) - 1
    monkeypatch.setattr(SupplierClient, "issue_codes", real)
    assert run()["delivered_lines"] == 1  # the held line goes through next run
    assert_delivered_once(world)


@pytest.mark.parametrize("engine", BOTH_DATABASES, indirect=True)
def test_crash_between_the_suppliers_answer_and_the_record(sandboxes, monkeypatch):
    """The step dies after the supplier issued the codes and before vouchflow recorded them
    (so before the site got them): the re-run gets the same codes back for the same key and
    delivers each line once."""
    world = make_world(sandboxes)
    run(deliver=False)  # orders in and allocated; nothing issued yet
    assert sandboxes.supplier.effects.count() == 0

    def crash(*args, **kwargs):
        raise RuntimeError("killed between the supplier's answer and the record")

    record = sc.record_issued_codes
    monkeypatch.setattr(sc, "record_issued_codes", crash)
    engine, keyring = get_engine(), Keyring.load()

    async def step() -> sc.SupplierCounts:
        wallets = {SITE: WalletClient(load_sites()[SITE])}
        try:
            return await sc.deliver_api_lines(engine, wallets, keyring)
        finally:
            await wallets[SITE].aclose()

    with pytest.raises(RuntimeError, match="killed"):
        asyncio.run(step())
    issued_before = sandboxes.supplier.effects.count("codes.issued")
    assert issued_before >= 1  # the supplier did issue
    assert sandboxes.wallet.effects.count("delivery.created") == 0
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(ApiIssuedCode)) == 0

    monkeypatch.setattr(sc, "record_issued_codes", record)
    counts = asyncio.run(step())
    assert counts.delivered_lines == len(world.lines) and counts.held == []
    # the lines the supplier had issued before the crash were asked again and answered with
    # their first codes (other lines' requests may still have been in flight at the crash)
    repeated = sandboxes.supplier.effects.keys("codes.repeated")
    assert 1 <= len(repeated) <= len(world.lines) and set(repeated.values()) == {1}
    assert_delivered_once(world)


def test_a_lost_delivery_answer_is_repeated_by_the_site_not_applied_twice(sandboxes):
    """The site applied each delivery but its answer was lost: the retry carries the same
    delivery key and the site answers with the first delivery."""
    world = make_world(sandboxes, orders=2)
    sandboxes.wallet.faults.set(drop_rate=1.0, drop_when="after", count=len(world.lines),
                                path_prefix=f"/{SITE}/api/v1/orders/", method="POST")
    summary = run()
    assert summary["delivered_lines"] == len(world.lines)
    posts = [r for r in sandboxes.wallet.requests()
             if r["method"] == "POST" and "/deliveries" in r["path"]]
    assert len(posts) == 2 * len(world.lines)
    assert_delivered_once(world)


def test_a_revoked_contract_or_a_batch_of_no_contract_holds_the_line(sandboxes):
    world = make_world(sandboxes, orders=1)
    with session_scope(get_engine()) as s:
        (contract_no,) = s.scalars(select(proc.SupplierContract.contract_no))
        proc.set_signature(s, contract_no, "revoked")
    summary = run()
    assert [h["reason"] for h in summary["held"]] == [
        f"API codes for {SITE}/{o}/{ln} not issued yet: contract {contract_no} of supplier "
        f"{world.slug} is revoked, not signed" for o, ln in world.lines]
    assert sandboxes.supplier.effects.count() == 0
    # units from a batch vouchflow did not buy (no purchase order of ours): no supplier
    with session_scope(get_engine()) as s:
        proc.set_signature(s, contract_no, "signed")
        s.execute(update(PoolBatch).values(purchase_order=None))
    summary = run()
    assert len(summary["held"]) == 1 and "names no purchase order" in summary["held"][0]["reason"]
    assert sandboxes.supplier.effects.count() == 0


def test_issue_keys_are_safe_and_distinct():
    assert sc.issue_key("sg1", "O-1", "L1") != sc.issue_key("sg1", "O", "1-L1")
    for args in [("sg1", "O1", "L1"), ("sg1", "a:b/c", "L 1"), ("sg1", "x" * 200, "y" * 60)]:
        key = sc.issue_key(*args)
        assert key.startswith("issue-sg1-") and len(key) <= 255
        assert all(c.isalnum() or c in "_-" for c in key)


def test_sigkill_after_the_supplier_issued_then_rerun_delivers_each_line_once(sandboxes):
    """A real crash: ``vouchflow sync sales`` in its own process, killed with SIGKILL while
    the supplier holds back its answer to codes it has already issued (so nothing was
    recorded or delivered); the re-run completes every line exactly once."""
    from prefect.settings import PREFECT_API_URL

    world = make_world(sandboxes)
    supplier = sandboxes.supplier
    supplier.respond_delay_s = 60
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    child = subprocess.Popen([sys.executable, "-m", "flows.cli", "sync", "sales", "--site", SITE],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    try:
        while supplier.effects.count("codes.issued") < len(world.lines):
            assert child.poll() is None, child.stdout.read().decode() if child.stdout else ""
            assert time.monotonic() < deadline, "the run never got to the supplier"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert sandboxes.wallet.effects.count("delivery.created") == 0
    with session_scope(get_engine()) as s:
        assert s.scalar(select(func.count()).select_from(ApiIssuedCode)) == 0
    supplier.respond_delay_s = 0

    summary = run()
    assert summary["delivered_lines"] == len(world.lines) and summary["held"] == []
    assert supplier.effects.count("codes.repeated") == len(world.lines)
    assert_delivered_once(world)


def test_redemptions_become_write_offs_once_and_settle_against_the_issued_codes(sandboxes):
    world = make_world(sandboxes)
    run()
    supplier, engine, keyring = sandboxes.supplier, get_engine(), Keyring.load()
    codes = supplier.issued(SKU)
    supplier.redeem(codes[:3], location="store 12")

    def read() -> sc.RedemptionImport:
        (report,) = asyncio.run(sc.import_redemptions(engine, keyring))
        return report

    first = read()
    assert (first.vendor, first.read, first.new, first.accepted, first.refused) == \
        (world.slug, 3, 3, 3, 0)
    again = read()  # the watermark is inclusive: the last one is read again, not re-reported
    assert (again.new, again.upload_no) == (0, None) and again.read >= 1
    supplier.redeem(codes[3:4])
    later = read()
    assert (later.new, later.accepted, later.refused) == (1, 1, 0)
    with session_scope(engine) as s:
        written_off = {w.code_hash for w in s.scalars(select(proc.WriteOff))}
        assert written_off == set(keyring.hash_codes(codes[:4]))
        report = st.settle_vendor(s, world.slug, datetime.now(UTC).strftime("%Y-%m"))
    # every write-off is one of the codes issued for our sales: matched, waiting only for
    # the daily purchase order that books its sale (none has been made in this test)
    assert report.waiting == 4 and not report.write_offs and report.dispute_no is None
    # the same as a Prefect flow: nothing new to read
    assert [(r["vendor"], r["new"]) for r in asyncio.run(sc.supplier_redemptions())] == \
        [(world.slug, 0)]


def test_redemptions_of_an_unconfigured_supplier_are_held(sandboxes, monkeypatch):
    make_world(sandboxes, orders=1)
    run()
    monkeypatch.delenv("VOUCHFLOW_SUPPLIER_URL")
    (report,) = asyncio.run(sc.import_redemptions(get_engine(), Keyring.load()))
    assert report.held and "VOUCHFLOW_SUPPLIER_ACME_GIFTS_URL" in report.held
    assert sandboxes.supplier.requests() == [r for r in sandboxes.supplier.requests()
                                             if r["path"] != "/v1/redemptions"]


def test_a_line_refunded_before_its_codes_were_issued_gets_none(sandboxes):
    world = make_world(sandboxes, orders=3)
    (order_id, line_id), quantity = next(iter(world.lines.items()))
    (other_order, other_line), other_quantity = list(world.lines.items())[1]
    # refunded before the step ever saw it: never queued
    run(deliver=False)
    sandboxes.wallet.refund(SITE, order_id, line_id, quantity)
    # queued while the supplier is down, then refunded: given up, nothing issued
    sandboxes.supplier.faults.set(error_rate=1.0, path_prefix="/v1/codes")
    assert len(run()["held"]) == len(world.lines) - 1
    sandboxes.wallet.refund(SITE, other_order, other_line, other_quantity)
    sandboxes.supplier.faults.clear()
    summary = run()
    assert summary["refunds_applied"] == 1 and summary["dead_lettered"] == 1
    assert summary["delivered_lines"] == len(world.lines) - 2
    issued = sandboxes.supplier.effects.keys("codes.issued")
    assert sc.issue_key(SITE, order_id, line_id) not in issued
    assert sc.issue_key(SITE, other_order, other_line) not in issued
    with session_scope(get_engine()) as s:
        (reason,) = s.scalars(select(OutboxMessage.last_error).where(
            OutboxMessage.status == "failed"))
    assert "refunded in full" in reason and other_order in reason
