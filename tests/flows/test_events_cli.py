"""``vouchflow events prune`` on SQLite and PostgreSQL: old events no subscription needs are
deleted, those a subscription still has to deliver are kept."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from flows.cli import app as cli
from state.db import get_engine, session_scope
from state.events import Event, emit_events, read_events
from tests.flows.conftest import BOTH_DATABASES

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.mark.parametrize("engine", BOTH_DATABASES, indirect=True)
def test_prune_command_keeps_what_a_subscriber_still_needs(engine, state_url):
    runner = CliRunner()
    added = runner.invoke(cli, ["subscriptions", "add", "erp-mirror", "https://m.example/h",
                                "--type", "purchase_order.*"])
    assert added.exit_code == 0, added.output
    with session_scope(get_engine()) as s:
        emit_events(s, [Event("purchase_order.created", "purchase_order", f"po-{i}", T0, {})
                        for i in range(3)])
        emit_events(s, [Event("sku.changed", "sku", f"S{i}", T0, {}) for i in range(2)])
        s.execute(text("UPDATE outbound_event SET recorded_at = :t"),
                  {"t": datetime.now(UTC) - timedelta(days=10)})
    refused = runner.invoke(cli, ["events", "prune"])
    assert refused.exit_code != 0  # the age is required
    pruned = runner.invoke(cli, ["events", "prune", "--older-than-days", "7"])
    assert pruned.exit_code == 0, pruned.output
    report = json.loads(pruned.output.strip().splitlines()[-1])
    # nobody covers the SKU events; the mirror has not received the orders yet
    assert (report["deleted"], report["by_type"], report["kept"]) == (
        2, {"sku.changed": 2}, 3)
    with session_scope(get_engine()) as s:
        assert [e.type for e in read_events(s, after=0)] == ["purchase_order.created"] * 3
    again = runner.invoke(cli, ["events", "prune", "--older-than-days", "7"])
    assert json.loads(again.output.strip().splitlines()[-1])["deleted"] == 0


def test_the_prune_flow_deletes_only_what_is_old_enough(engine, state_url, prefect_harness):
    from flows.deliver import deliver_events, prune_old_events

    with session_scope(get_engine()) as s:
        emit_events(s, [Event("sku.changed", "sku", f"S{i}", T0, {}) for i in range(3)])
        s.execute(text("UPDATE outbound_event SET recorded_at = :t WHERE entity_key <> 'S2'"),
                  {"t": datetime.now(UTC) - timedelta(days=10)})
    asyncio.run(deliver_events())  # delivery runs leave retention to the prune flow
    with session_scope(get_engine()) as s:
        assert len(read_events(s, after=0)) == 3
    assert asyncio.run(prune_old_events(older_than_days=30))["deleted"] == 0
    report = asyncio.run(prune_old_events(older_than_days=7))
    assert (report["deleted"], report["kept"]) == (2, 0)
    with session_scope(get_engine()) as s:
        assert [e.entity_key for e in read_events(s, after=0)] == ["S2"]
