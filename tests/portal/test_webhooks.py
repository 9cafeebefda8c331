"""The inbound webhook endpoint: signatures, freshness, storage once, against the wallet
sandbox's own signing and at-least-once delivery."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from portal.app import create_app
from portal.webhooks import sign
from state.db import get_engine, session_scope
from state.inbox import mark_processed, pending_events
from state.models import InboundEvent

SECRET = "whsec-test-0001"

pytestmark = pytest.mark.usefixtures("state_url")


@pytest.fixture
def client(monkeypatch):
    monkeypatch.setenv("VOUCHFLOW_WALLET_SG1_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("VOUCHFLOW_WALLET_SG1_API_KEY", "k")
    return TestClient(create_app())


def event(i: int = 1, type_: str = "order.confirmed", created: str = "2026-11-22T10:00:00+08:00"):
    return {"id": f"ev-{i}", "type": type_, "created_at": created,
            "data": {"order_id": f"sg1-{i:08d}"}}


def post(client, body: bytes, *, t: int | None = None, secret: str = SECRET,
         event_id: str | None = None, site: str = "sg1"):
    t = int(time.time()) if t is None else t
    headers = {"X-Wallet-Signature": sign(secret, t, body), "Content-Type": "application/json"}
    if event_id:
        headers["X-Wallet-Event-Id"] = event_id
    return client.post(f"/wallet/{site}/events", content=body, headers=headers)


def stored() -> int:
    with session_scope(get_engine()) as s:
        return s.scalar(select(func.count()).select_from(InboundEvent))


def test_a_signed_event_is_stored_once(client):
    body = json.dumps(event()).encode()
    first = post(client, body, event_id="ev-1")
    again = post(client, body, event_id="ev-1")
    assert first.status_code == 202 and first.json()["stored"] is True
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert stored() == 1


@pytest.mark.parametrize("case", ["wrong secret", "tampered body", "old timestamp",
                                  "future timestamp", "no signature"])
def test_refused_events_are_not_stored(client, case):
    body = json.dumps(event()).encode()
    if case == "wrong secret":
        r = post(client, body, secret="nope")
    elif case == "tampered body":
        t = int(time.time())
        headers = {"X-Wallet-Signature": sign(SECRET, t, body)}
        r = client.post("/wallet/sg1/events", content=body.replace(b"ev-1", b"ev-2"),
                        headers=headers)
    elif case == "old timestamp":
        r = post(client, body, t=int(time.time()) - 301)
    elif case == "future timestamp":
        r = post(client, body, t=int(time.time()) + 330)  # outside the window even if the check runs late
    else:
        r = client.post("/wallet/sg1/events", content=body)
    assert r.status_code == 401
    assert SECRET not in r.text
    assert stored() == 0


def test_malformed_events_are_refused_with_the_reason(client):
    assert post(client, b"not json").status_code == 400
    bad = event(type_="order.exploded")
    r = post(client, json.dumps(bad).encode())
    assert r.status_code == 400 and "order.exploded" in r.json()["error"]["message"]
    r = post(client, json.dumps(event()).encode(), event_id="another-id")
    assert r.status_code == 400
    assert post(client, json.dumps(event(), ).encode(), site="zz9").status_code == 404
    assert stored() == 0


def test_pending_events_come_out_in_source_order(client):
    for i, created in [(3, "2026-11-22T10:00:03Z"), (1, "2026-11-22T10:00:01Z"),
                       (2, "2026-11-22T10:00:02Z")]:
        assert post(client, json.dumps(event(i, created=created)).encode()).status_code == 202
    with session_scope(get_engine()) as s:
        ids = [e.event_id for e in pending_events(s)]
        mark_processed(s, ids[:2])
    assert ids == ["ev-1", "ev-2", "ev-3"]
    with session_scope(get_engine()) as s:
        assert [e.event_id for e in pending_events(s)] == ["ev-3"]


def test_at_least_once_delivery_from_the_wallet_sandbox(client, monkeypatch):
    """The sandbox's own signer and deliverer (duplicates, shuffle) against the endpoint."""
    from datetime import UTC, datetime, timedelta

    from sandbox.core import serve
    from sandbox.wallet import WalletSandbox

    wallet = WalletSandbox([{"code": "sg1", "currency": "SGD", "timezone": "Asia/Singapore"}],
                           webhook_secrets={"sg1": SECRET})
    wallet.set_product("sg1", {"sku": "A1", "name": "A", "kind": "gift_card",
                               "face_value": {"amount": "10.00", "currency": "SGD"},
                               "status": "normal", "issuance_mode": "code_pool",
                               "write_off_type": "on_delivery"})
    wallet.set_inventory("sg1", {"A1": 1000})
    end = datetime.now(UTC)
    wallet.generate_sales(30, seed=4, start=end - timedelta(hours=1), end=end)
    events = wallet.events("sg1")
    app = create_app()
    with serve(app) as served:
        statuses = wallet.deliver_events(events, served.base_url, shuffle=True,
                                         duplicates=0.5, seed=1)
    assert all(s in (200, 202) for s in statuses)
    assert len(statuses) > len(events)  # duplicates were sent
    assert stored() == len(events)      # ... and stored once each
