"""Remittance batches end to end against the treasury and ERP sandboxes: an operator's
approval given through the Prefect API resumes the paused close and the batches post; a
posting process SIGKILLed after the treasury request left is re-run and leaves one posting in
treasury and one journal entry in the ERP per batch version; the treasury contract itself
(signatures, repeats, 409)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from flows.reconcile import load_rules, match_day, read_sources
from flows.remittance import close_batches, validate_day
from sandbox.core import ServedGroup, serve_many
from sandbox.erp import ErpSandbox
from sandbox.treasury import TreasurySandbox
from state import remittance as remit
from state.crypto import Keyring
from state.db import session_scope
from state.events import read_events
from state.subscriptions import create_subscription
from tests.flows.conftest import BOTH_DATABASES
from tests.flows.reconcile_world import DAY, ZONES, World, build_world

ROOT = Path(__file__).resolve().parents[2]


class Far:
    def __init__(self, treasury: TreasurySandbox, erp: ErpSandbox, group: ServedGroup) -> None:
        self.treasury, self.erp, self.group = treasury, erp, group

    def env(self) -> dict[str, str]:
        creds = self.erp.credentials
        return {
            "VOUCHFLOW_TREASURY_URL": self.group[0].base_url,
            "VOUCHFLOW_TREASURY_TOKEN": self.treasury.token,
            "VOUCHFLOW_TREASURY_SECRET": self.treasury.secret,
            "VOUCHFLOW_ERP_ACCOUNT": creds.account,
            "VOUCHFLOW_ERP_BASE_URL": self.group[1].base_url,
            "VOUCHFLOW_ERP_CONSUMER_KEY": creds.consumer_key,
            "VOUCHFLOW_ERP_CONSUMER_SECRET": creds.consumer_secret,
            "VOUCHFLOW_ERP_TOKEN_ID": creds.token_id,
            "VOUCHFLOW_ERP_TOKEN_SECRET": creds.token_secret,
        }

    def postings(self) -> Counter[str]:
        return self.treasury.effects.keys("remittance.received")

    def journals(self) -> Counter[str]:
        return self.erp.effects.keys("journalEntry.created")


@pytest.fixture
def far(monkeypatch: pytest.MonkeyPatch) -> Iterator[Far]:
    treasury, erp = TreasurySandbox(), ErpSandbox()
    group = serve_many([treasury, erp])
    out = Far(treasury, erp, group)
    for name, value in out.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield out
    finally:
        group.stop()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return build_world(tmp_path / "day", malformed=False)


def _matched(engine, world: World) -> None:
    sources = read_sources(world.payment_files, world.order_files, world.delivery_files)
    match_day(engine, DAY, sources, load_rules(), key="test", zones=ZONES)


def _close_all(engine) -> list[str]:
    heads = validate_day(engine, DAY, load_rules().close_threshold)
    return close_batches(engine, [h.batch_id for h in heads],
                         approval={"approve": True, "approved_by": "ops-anna"})


def test_treasury_checks_signatures_answers_repeats_and_refuses_another_body(far):
    from connectors.signing import sign

    body = {"batch_id": "20261120-sg1-card", "version": 1, "business_date": "2026-11-20",
            "site": "sg1", "payment_method": "card", "currency": "SGD",
            "gross": {"amount": "10.00", "currency": "SGD"},
            "fees": {"amount": "1.00", "currency": "SGD"},
            "net": {"amount": "9.00", "currency": "SGD"}, "count": 1,
            "lines": [{"order_id": "O1", "amount": {"amount": "10.00", "currency": "SGD"},
                       "fee": {"amount": "1.00", "currency": "SGD"}, "reference": "r"}],
            "reverses": None, "approved_by": None}
    raw = json.dumps(body).encode()
    url = far.group[0].base_url + "/v1/remittance-batches"

    def post(data: bytes, *, secret: str = far.treasury.secret) -> httpx.Response:
        return httpx.post(url, content=data, headers={
            "Authorization": f"Bearer {far.treasury.token}",
            "Idempotency-Key": "remit-20261120-sg1-card-v1",
            "X-Signature": sign(secret, int(time.time()), data)})

    assert post(raw, secret="wrong").status_code == 401
    first = post(raw)
    assert first.status_code == 201
    again = post(raw)
    assert again.status_code == 200 and again.json() == first.json()
    other = post(json.dumps({**body, "approved_by": "x"}).encode())
    assert other.status_code == 409
    assert far.postings() == Counter({"remit-20261120-sg1-card-v1": 1})


def test_a_post_killed_after_the_treasury_request_left_posts_once_when_rerun(
        far, world, engine, state_url, prefect_harness):
    _matched(engine, world)
    closed = _close_all(engine)
    assert len(closed) == 6
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, **far.env(), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    command = [sys.executable, "-m", "flows.cli", "remittance", "post", "--day",
               DAY.isoformat()]
    far.treasury.respond_delay_s = 60  # the first batch is booked, its answer never comes
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    try:
        while not far.postings():
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the posting never left"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert sum(far.postings().values()) == 1 and not far.journals()
    with session_scope(engine) as s:
        assert {b.status for b in remit.batches(s, day=DAY)} == {"closed"}

    far.treasury.respond_delay_s = 0
    rerun = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=180)
    assert rerun.returncode == 0, rerun.stdout.decode() + rerun.stderr.decode()
    keys = [remit.remit_key(remit.batch_id_for(DAY, site, method), 1) for site, method in (
        ("my1", "card"), ("my1", "cod"), ("my1", "split"), ("sg1", "card"),
        ("sg1", "paypal"), ("sg1", "wallet_balance"))]
    assert far.postings() == Counter({k: 1 for k in keys})
    assert far.journals() == Counter({f"je-{k}": 1 for k in keys})
    assert far.treasury.effects.count("remittance.repeated") == 1  # the killed one, answered
    with session_scope(engine) as s:
        batches = remit.batches(s, day=DAY)
    assert {b.status for b in batches} == {"posted"}
    assert all(b.treasury_ref and b.erp_id for b in batches)
    # nothing is owed any more: a further run would send nothing
    from flows.remittance import _pending

    assert _pending(engine, DAY) == []


async def _paused_run(name: str, timeout: float = 90) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused"]))))
            for run in runs:
                if run.name and run.state and run.state.is_paused():
                    flow = await client.read_flow(run.flow_id)
                    if flow.name == name:
                        return str(run.id)
            await asyncio.sleep(0.5)
    raise AssertionError(f"no paused {name} run")


def test_an_approval_resumed_through_the_api_closes_the_blocked_batches_and_they_post(
        far, world, engine, state_url, prefect_harness):
    from uuid import UUID

    from prefect.flow_runs import resume_flow_run

    from flows.reconcile import reconcile_day
    from flows.remittance import close_remittance, post_remittance

    async def scenario() -> tuple[dict, dict, dict]:
        summary = await reconcile_day(DAY, [str(p) for p in world.payment_files],
                                      [str(p) for p in world.order_files],
                                      [str(p) for p in world.delivery_files])
        closing = asyncio.create_task(close_remittance(DAY, poll_interval_s=1))
        run_id = await _paused_run("close-remittance")
        await resume_flow_run(UUID(run_id), run_input={
            "decision": "approve", "operator": "ops-anna", "comment": "known differences"})
        closed = await asyncio.wait_for(closing, 120)
        posted = await post_remittance(DAY)
        return summary, closed, posted

    summary, closed, posted = asyncio.run(scenario())
    assert summary["by_class"]["amount_mismatch"] == 1 and summary["rejected"] == 0
    assert Path(summary["csv"]).read_text().startswith("class,status,site")
    assert sorted(closed["closed"]) == sorted(remit.batch_id_for(DAY, s, m) for s, m in (
        ("my1", "card"), ("my1", "cod"), ("my1", "split"), ("sg1", "card"),
        ("sg1", "paypal"), ("sg1", "wallet_balance")))
    assert posted["posted"] == 6 and posted["failed"] == 0
    with session_scope(engine) as s:
        card = remit.current(s, remit.batch_id_for(DAY, "sg1", "card"))
        approvals = remit.approvals(s, card.batch_id)
    assert card.status == "posted" and card.approved_by == "ops-anna"
    assert [(a.approved_by, a.approved, a.comment) for a in approvals] == [
        ("ops-anna", True, "known differences")]
    assert {d["class"] for d in approvals[0].discrepancies} >= {"amount_mismatch"}
    body = far.treasury.batches[next(iter(far.treasury.batches))]["batch"]
    assert set(body) >= {"batch_id", "version", "business_date", "gross", "fees", "net",
                         "count", "lines", "reverses", "approved_by"}
    assert sum(far.postings().values()) == 6 and sum(far.journals().values()) == 6


def _events(engine, *patterns: str) -> list[tuple[str, str, dict]]:
    with session_scope(engine) as s:
        return [(e.type, e.entity_key, json.loads(e.data_json))
                for e in read_events(s, after=0, patterns=list(patterns) or None, limit=10_000)]


@pytest.mark.parametrize("engine", BOTH_DATABASES, indirect=True)
def test_two_matches_of_one_day_at_once_announce_each_discrepancy_once(world, engine):
    sources = read_sources(world.payment_files, world.order_files, world.delivery_files)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def match() -> None:
        try:
            start.wait()
            match_day(engine, DAY, sources, load_rules(), key="twin", zones=ZONES)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    twins = [threading.Thread(target=match) for _ in range(2)]
    for t in twins:
        t.start()
    for t in twins:
        t.join()
    assert not errors
    opened = Counter(k for t, k, _ in _events(engine, "discrepancy.*"))
    with session_scope(engine) as s:
        stored = remit.discrepancies(s, DAY, status="open")
    assert opened == Counter(f"{DAY.isoformat()}:{d.key}" for d in stored)  # once each


@pytest.mark.parametrize("engine", BOTH_DATABASES, indirect=True)
def test_discrepancies_and_batches_are_announced_once_with_their_changes(world, engine):
    _matched(engine, world)
    opened = _events(engine)
    with session_scope(engine) as s:
        stored = remit.discrepancies(s, DAY, status="open")
    assert stored and [(t, k) for t, k, _ in opened] == [
        ("discrepancy.opened", f"{DAY.isoformat()}:{d.key}")
        for d in sorted(stored, key=lambda d: d.key)]
    first = opened[0][2]
    assert set(first) >= {"day", "key", "class", "site", "method", "order_id", "currency",
                          "expected", "actual", "difference", "detail"}
    assert all(isinstance(d["difference"], str | None) for _, _, d in opened)
    _matched(engine, world)  # the same result again: nothing to announce
    assert _events(engine) == opened

    # an operator accepts one: the rematch resolves it, and only it
    target = next(d for d in stored if d.order_id and d.site)
    with session_scope(engine) as s:
        remit.add_correction(s, day=DAY, kind="accept", target=f"order:{target.site}:"
                             f"{target.order_id}", reason="known", created_by="ops-anna")
    _matched(engine, world)
    resolved = _events(engine)[len(opened):]
    accepted = [d for d in stored if (d.site, d.order_id) == (target.site, target.order_id)]
    assert [(t, k, d["resolution"]) for t, k, d in resolved] == [
        ("discrepancy.resolved", f"{DAY.isoformat()}:{d.key}", "accepted")
        for d in sorted(accepted, key=lambda d: d.key)]

    # batches: closed once each, posted once, a reopen is a reversal and a new version
    before = len(_events(engine))
    closed = _close_all(engine)
    assert len(closed) == 6 and _close_all(engine) == []
    got = _events(engine, "remittance_batch.*")
    assert sorted(k for t, k, _ in got if t == "remittance_batch.closed") == sorted(closed)
    assert len(_events(engine)) == before + 6
    card = remit.batch_id_for(DAY, "sg1", "card")
    data = next(d for t, k, d in got if k == card)
    assert (data["version"], data["status"], data["currency"], data["reverses_version"]) == (
        1, "closed", "SGD", None)
    assert data["net"] == remit.exact(data["net"], "SGD") and "lines" not in data
    with session_scope(engine) as s:
        remit.mark_posted(s, card, 1, treasury_ref="TR-1", erp_id=None)
    assert len(_events(engine)) == before + 6  # not posted until the ERP has it too
    for _ in range(2):
        with session_scope(engine) as s:
            remit.mark_posted(s, card, 1, treasury_ref=None, erp_id="JE-1")
    with session_scope(engine) as s:
        remit.reopen_batch(s, card, who="ops-ben", why="late refund")
    got = [(t, d) for t, k, d in _events(engine, "remittance_batch.*") if k == card]
    assert [(t, d["version"]) for t, d in got] == [
        ("remittance_batch.closed", 1), ("remittance_batch.posted", 1),
        ("remittance_batch.closed", 2), ("remittance_batch.reopened", 3)]
    assert (got[1][1]["treasury_ref"], got[1][1]["erp_journal_id"]) == ("TR-1", "JE-1")
    assert (got[2][1]["reverses_version"], got[2][1]["net"]) == (
        1, remit.exact(-Decimal(data["net"]), "SGD"))
    assert (got[3][1]["status"], got[3][1]["reopened_by"], got[3][1]["reversal_version"]) == (
        "open", "ops-ben", 2)

    # a subscriber of remittance batches reads them, and nothing else
    with session_scope(engine) as s:
        sub, _ = create_subscription(s, Keyring.generate(), name="treasury-bi",
                                     url="https://bi.example.com/h",
                                     event_types=["remittance_batch.*"], start="beginning")
        seen = read_events(s, after=sub.settled_seq, patterns=sub.event_types)
    assert {e.type for e in seen} == {"remittance_batch.closed", "remittance_batch.posted",
                                      "remittance_batch.reopened"} and len(seen) == 9


def test_a_discrepancy_gone_from_the_match_is_resolved_as_cleared():
    from datetime import UTC, datetime

    at = datetime(2026, 11, 21, 3, tzinfo=UTC)
    seen = {"day": DAY, "key": "unpaid_order-sg1-U1", "status": "open",
            "difference": Decimal("-70.00"), "currency": "SGD"}
    (cleared,) = remit.discrepancy_changes({"k": seen}, {}, at=at)
    assert (cleared.type, cleared.data["resolution"], cleared.data["status"],
            cleared.data["difference"]) == ("discrepancy.resolved", "cleared", "cleared", "-70.00")
    assert remit.discrepancy_changes({"k": seen}, {"k": seen}, at=at) == []
    (again,) = remit.discrepancy_changes({}, {"k": seen}, at=at)
    assert again.type == "discrepancy.opened" and again.id != cleared.id
