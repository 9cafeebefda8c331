"""The operator API: token required, subscriptions created (secret shown once), listed with
their lag, paused, resumed and removed, and events pulled by cursor."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from portal.app import create_app
from state.db import get_engine, session_scope
from state.events import Event, emit_events

TOKEN = "op-token-1234567890abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.usefixtures("state_url")


@pytest.fixture
def engine(tmp_path):
    """SQLite only: the queries behind these routes run on both databases in tests/state."""
    from tests.conftest import _sqlite_engine

    yield from _sqlite_engine(tmp_path)


@pytest.fixture
def client(monkeypatch):
    monkeypatch.setenv("VOUCHFLOW_OPERATOR_TOKEN", TOKEN)
    return TestClient(create_app())


def emit(n: int, type_: str = "sales_order.recorded", first: int = 0) -> None:
    at = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    with session_scope(get_engine()) as s:
        emit_events(s, [Event(type_, "sales_order", f"sg1:SO-{i}", at, {"i": i}, version="1")
                        for i in range(first, first + n)])


def test_without_the_token_nothing_answers(client, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    assert client.get("/operator/subscriptions").status_code == 401
    wrong = client.get("/operator/subscriptions", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/operator/events", headers={"Authorization": TOKEN}).status_code == 401
    monkeypatch.delenv("VOUCHFLOW_OPERATOR_TOKEN")
    disabled = TestClient(create_app()).get("/operator/subscriptions", headers=AUTH)
    assert disabled.status_code == 503 and "VOUCHFLOW_OPERATOR_TOKEN" in disabled.text
    assert TOKEN not in caplog.text


def test_subscriptions_lifecycle(client, caplog):
    caplog.set_level(logging.DEBUG)
    created = client.post("/operator/subscriptions", headers=AUTH, json={
        "name": "crm", "url": "https://crm.example.com/hook?key=k-9988776655",
        "event_types": ["sales_order.*"], "start": "beginning"})
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    assert secret.startswith("whsec_") and created.json()["url"].endswith("?key=***")
    emit(3)  # before "bi" exists: it starts after them, "crm" (from the beginning) has them
    given = client.post("/operator/subscriptions", headers=AUTH, json={
        "name": "bi", "url": "https://bi.example.com/e", "event_types": ["*"],
        "secret": "bi-secret-given-0000001"})
    assert given.json()["secret"] == "bi-secret-given-0000001"
    again = client.post("/operator/subscriptions", headers=AUTH, json={
        "name": "crm", "url": "https://x.example.com", "event_types": ["*"]})
    assert again.status_code == 409
    bad = client.post("/operator/subscriptions", headers=AUTH, json={
        "name": "x", "url": "https://x.example.com", "event_types": ["typo.*"]})
    assert bad.status_code == 422 and "matches no known type" in bad.text

    listed = client.get("/operator/subscriptions", headers=AUTH).json()["subscriptions"]
    assert {(s["name"], s["backlog"]) for s in listed} == {("crm", 3), ("bi", 0)}
    assert secret not in str(listed) and "bi-secret-given" not in str(listed)
    assert client.post("/operator/subscriptions/crm/pause", headers=AUTH).json()["status"] \
        == "paused"
    one = client.get("/operator/subscriptions/crm", headers=AUTH).json()
    assert one["status"] == "paused" and one["backlog"] == 3
    assert client.post("/operator/subscriptions/crm/resume", headers=AUTH).json()["status"] \
        == "active"
    assert client.delete("/operator/subscriptions/crm", headers=AUTH).json() == \
        {"removed": "crm"}
    assert client.get("/operator/subscriptions/crm", headers=AUTH).status_code == 404
    assert client.post("/operator/subscriptions/crm/pause", headers=AUTH).status_code == 404
    assert client.delete("/operator/subscriptions/crm", headers=AUTH).status_code == 404
    for hidden in (secret, "bi-secret-given-0000001", "k-9988776655", TOKEN):
        assert hidden not in caplog.text


def test_a_subscriber_pulls_what_it_missed_by_cursor(client):
    client.post("/operator/subscriptions", headers=AUTH, json={
        "name": "lines", "url": "https://l.example.com/e", "event_types": ["order_line.*"]})
    emit(3, "order_line.allocated")
    emit(2, "sku.changed", first=10)
    emit(4, "order_line.delivered", first=20)
    seen: list[dict] = []
    after = 0
    while True:
        page = client.get("/operator/subscriptions/lines/events",
                          params={"after": after, "limit": 3}, headers=AUTH).json()
        seen.extend(page["events"])
        after = page["next_after"]
        if not page["has_more"]:
            break
    assert [e["type"] for e in seen] == ["order_line.allocated"] * 3 + \
        ["order_line.delivered"] * 4
    assert [e["sequence"] for e in seen] == sorted(e["sequence"] for e in seen)
    assert set(seen[0]) == {"id", "type", "occurred_at", "sequence", "entity", "data"}
    # nothing after the last one (and the cursor stays put)
    tail = client.get("/operator/subscriptions/lines/events", params={"after": after},
                      headers=AUTH).json()
    assert tail == {"events": [], "next_after": after, "has_more": False}
    every = client.get("/operator/events", params={"type": "sku.changed"}, headers=AUTH).json()
    assert [e["entity"]["key"] for e in every["events"]] == ["sg1:SO-10", "sg1:SO-11"]
    assert client.get("/operator/events", params={"limit": 5000},
                      headers=AUTH).status_code == 422
    assert client.get("/operator/subscriptions/nope/events", headers=AUTH).status_code == 404
