"""The deliver-events flow under Prefect (one task per chunk, artifacts by subscriber and
outcome, run twice with the same result), the command line around subscriptions, and secrets
that never reach logs or artifacts."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from flows.cli import app
from flows.deliver import deliver_events
from state.db import get_engine, session_scope
from state.store import list_dead_letters
from tests.flows.subscriber_world import (
    check_delivery,
    emit,
    order_events,
    recorded,
    subscribers,
)

pytestmark = pytest.mark.usefixtures("prefect_harness", "state_url")

TOKEN = "tok-q7w8e9r0t1y2u3"


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"CHUNK_SIZE": "100", "CONCURRENCY": "8", "BACKOFF_BASE_S": "0.02",
                        "BACKOFF_MAX_S": "0.1", "MAX_ATTEMPTS": "2"}.items():
        monkeypatch.setenv(f"VOUCHFLOW_DELIVERY_{name}", value)


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record, Prefect's own loggers included (they do not propagate to the root)."""
    caplog.set_level(logging.DEBUG)
    prefect = logging.getLogger("prefect")
    prefect.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        prefect.removeHandler(caplog.handler)


async def _artifacts(key: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        return await client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key])))


async def _task_names(flow_run_id: Any) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id])))
    return [r.name for r in runs]


def newest_table(key: str) -> list[dict[str, Any]]:
    artifacts = asyncio.run(_artifacts(key))
    newest = max(artifacts, key=lambda a: a.created)
    return newest.data if isinstance(newest.data, list) else json.loads(newest.data)


def test_the_flow_delivers_by_chunks_reports_by_subscriber_and_keeps_secrets(
        engine, fast, all_logs):
    spec = {"bi": ["*"], "crm": ["sales_order.*"]}
    with subscribers(engine, spec) as subs:
        # one subscriber's URL carries a token, the other echoes its secret in a refusal
        with session_scope(engine) as s:
            s.execute(text("UPDATE subscription SET url = url || :q WHERE name = 'crm'"),
                      {"q": f"?token={TOKEN}"})
        subs["crm"].sandbox.throttle(rate=0.3, seed=2)
        emit(engine, order_events(0, 100, per_order=3))
        bad = next(e for e in recorded(engine) if e.entity_key == "sg1:SO-3")
        subs["bi"].sandbox.refuse(event_ids={bad.event_id}, status=500,
                                  body=f"no thanks, secret={subs['bi'].secret}")

        state = asyncio.run(deliver_events(return_state=True))
        summary = state.result()
        rows = {r["subscriber"]: r for r in summary["subscribers"]}
        assert rows["bi"]["delivered"] == 300 - 3  # SO-3's three events wait behind the refusal
        assert rows["bi"]["dead"] == 1 and rows["bi"]["retrying"] == 2
        assert rows["crm"]["delivered"] == 100 and rows["crm"]["rate_limited"] > 0
        assert rows["crm"]["state"] == "caught up" and rows["crm"]["backlog"] == 0
        check_delivery(engine, subs["crm"])
        names = asyncio.run(_task_names(state.state_details.flow_run_id))
        assert set(names) and all(n.startswith("deliver-chunk") for n in names)
        assert 3 <= len(names) <= 20  # chunks of 100 events, never one task per event

        table = {r["subscriber"]: r for r in newest_table("deliver-events-counts")}
        assert table["bi"]["delivered"] == 297 and table["bi"]["dead_lettered"] == 1
        assert table["crm"]["rate_limited"] == rows["crm"]["rate_limited"]

        # run twice, same result: nothing new goes out
        before = {n: sum(s.sandbox.received().values()) for n, s in subs.items()}
        again = asyncio.run(deliver_events())
        assert {r["subscriber"]: r["delivered"] for r in again["subscribers"]} == \
            {"bi": 0, "crm": 0}
        assert {n: sum(s.sandbox.received().values()) for n, s in subs.items()} == before

        # the operator replays from the command line once the subscriber is fixed
        subs["bi"].sandbox.refuse()
        replayed = CliRunner().invoke(app, ["deadletters", "replay", "--all",
                                            "--source", "subscriber:bi"])
        assert replayed.exit_code == 0, replayed.output
        assert "1 went through" in replayed.output
        check_delivery(engine, subs["bi"])

        secrets = [subs["bi"].secret, subs["crm"].secret, TOKEN]
        artifacts = [a for key in ("deliver-events-counts", "deliver-events-summary")
                     for a in asyncio.run(_artifacts(key))]
        with session_scope(engine) as s:
            letters = list_dead_letters(s, status=None)
        kept = json.dumps([a.data for a in artifacts], default=str) + str(
            [(d.reason, d.payload) for d in letters])
        assert "no thanks" in kept  # the refusal was kept ...
        for secret in secrets:  # ... without the secret it echoed, or the URL's token
            assert secret not in kept
            assert secret not in all_logs.text
        assert "/events?token=***" in all_logs.text  # httpx logged the URL, masked


def test_subscription_commands(engine, monkeypatch):
    runner = CliRunner()
    added = runner.invoke(app, ["subscriptions", "add", "crm",
                                f"https://crm.example.com/hooks?token={TOKEN}",
                                "--type", "sales_order.*", "--type", "order_line.delivered"])
    assert added.exit_code == 0, added.output
    assert "signing secret (shown once" in added.output and TOKEN not in added.output
    monkeypatch.setenv("BI_SECRET", "bi-secret-0000000000001")
    assert runner.invoke(app, ["subscriptions", "add", "bi", "https://bi.example.com/e",
                               "--type", "*", "--secret-env", "BI_SECRET",
                               "--from-start"]).exit_code == 0
    refused = runner.invoke(app, ["subscriptions", "add", "x", "https://x.example.com",
                                  "--type", "nope.*"])
    assert refused.exit_code == 1 and "matches no known type" in refused.output
    assert runner.invoke(app, ["subscriptions", "pause", "crm"]).output.strip() == \
        "subscription crm paused"
    emit(get_engine(), order_events(0, 2, per_order=1))
    listed = [json.loads(line) for line in
              runner.invoke(app, ["subscriptions", "list", "--json"]).output.splitlines()]
    assert {(r["name"], r["status"], r["backlog"]) for r in listed} == {
        ("bi", "active", 2), ("crm", "paused", 2)}
    assert all("secret" not in r and TOKEN not in r["url"] for r in listed)
    table = runner.invoke(app, ["subscriptions", "list"])
    assert table.exit_code == 0 and "crm" in table.output and "paused" in table.output
    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0 and "subscribers:" in status.output
    assert "crm" in status.output and "backlog=2" in status.output
    assert runner.invoke(app, ["subscriptions", "resume", "crm"]).exit_code == 0
    assert runner.invoke(app, ["subscriptions", "remove", "crm", "--yes"]).exit_code == 0
    gone = runner.invoke(app, ["subscriptions", "pause", "crm"])
    assert gone.exit_code == 1 and "no subscription named 'crm'" in gone.output
    assert "bi-secret-0000000000001" not in status.output + table.output
