"""The subscriber sandbox: it tells a genuine event from a tampered or replayed one, counts
what it accepted per event id, keeps the order per entity, and misbehaves when told to."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sandbox.core import ServedSandbox, serve
from sandbox.subscriber import SubscriberSandbox, signature_header

SECRET = "sandbox-subscriber-secret-0001"


@pytest.fixture(scope="module")
def served() -> Iterator[ServedSandbox]:
    with serve(SubscriberSandbox(SECRET)) as s:
        yield s


@pytest.fixture
def sub(served: ServedSandbox) -> SubscriberSandbox:
    sandbox = served.sandbox
    assert isinstance(sandbox, SubscriberSandbox)
    sandbox.reset()
    return sandbox


@pytest.fixture
def client(served: ServedSandbox, sub: SubscriberSandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.base_url, timeout=10) as c:
        yield c


def event(seq: int, key: str = "sg1:SO-1", event_id: str | None = None) -> dict[str, Any]:
    return {"id": event_id or f"ev-{seq}", "type": "sales_order.recorded",
            "occurred_at": "2026-11-22T10:00:00Z", "sequence": seq,
            "entity": {"type": "sales_order", "key": key}, "data": {"n": seq}}


def post(client: httpx.Client, doc: dict[str, Any], *, t: int | None = None,
         secret: str = SECRET, body: bytes | None = None,
         event_id: str | None = None) -> httpx.Response:
    raw = json.dumps(doc).encode()
    t = int(time.time()) if t is None else t
    headers = {"Content-Type": "application/json",
               "X-Vouchflow-Signature": signature_header(secret, raw, t),
               "X-Vouchflow-Event-Id": event_id or doc["id"],
               "X-Vouchflow-Event-Type": doc["type"]}
    return client.post("/events", content=raw if body is None else body, headers=headers)


def test_a_signed_event_is_counted_and_a_repeat_is_recognised(client, sub):
    assert post(client, event(1)).json() == {"received": "ev-1", "duplicate": False}
    assert post(client, event(1)).json() == {"received": "ev-1", "duplicate": True}
    assert sub.received() == {"ev-1": 2}
    assert sub.effects.count("event.received", "ev-1") == 2
    assert list(sub.first_arrivals()) == ["ev-1"] and sub.mismatched_repeats() == []


@pytest.mark.parametrize("case", ["tampered body", "old timestamp", "future timestamp",
                                  "wrong secret", "no signature"])
def test_tampered_or_replayed_requests_are_refused_and_not_counted(client, sub, case):
    doc = event(1)
    if case == "tampered body":
        tampered = json.dumps({**doc, "data": {"n": 999}}).encode()
        r = post(client, doc, body=tampered)
    elif case == "old timestamp":
        r = post(client, doc, t=int(time.time()) - 301)
    elif case == "future timestamp":
        r = post(client, doc, t=int(time.time()) + 330)  # outside the window even if the check runs late
    elif case == "wrong secret":
        r = post(client, doc, secret="not-the-secret-000")
    else:
        r = client.post("/events", json=doc)
    assert r.status_code == 401
    assert sub.received() == {} and sub.effects.count() == 0
    [rejection] = sub.rejections()
    assert rejection["status"] == 401
    assert {"tampered body": "does not match", "old timestamp": "window",
            "future timestamp": "window", "wrong secret": "does not match",
            "no signature": "missing"}[case] in rejection["reason"]


def test_malformed_events_and_mismatched_headers_are_refused(client, sub):
    doc = event(1)
    assert post(client, {k: v for k, v in doc.items() if k != "data"}).status_code == 400
    assert post(client, doc, event_id="ev-other").status_code == 400
    assert sub.received() == {}


def test_order_per_entity_counts_first_arrivals_only(client, sub):
    for seq, key in [(1, "a"), (3, "a"), (2, "b"), (1, "a"), (5, "b"), (4, "b")]:
        assert post(client, event(seq, key, event_id=f"{key}-{seq}")).status_code == 200
    assert sub.entity_order("sales_order:a") == [1, 3]  # the repeat of 1 is not an arrival
    assert sub.entity_order("sales_order:b") == [2, 5, 4]
    assert sub.out_of_order() == [{"id": "b-4", "entity": "sales_order:b", "sequence": 4,
                                   "after": 5}]


def test_it_fails_slows_down_and_throttles_when_told(client, sub):
    sub.fail(count=2)
    assert [post(client, event(1)).status_code for _ in range(3)] == [503, 503, 200]
    sub.faults.clear()
    sub.throttle(retry_after=7, count=1)
    r = post(client, event(2))
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    sub.faults.clear()
    sub.refuse(event_ids={"ev-9"}, status=500, body="we do not like ev-9")
    r = post(client, event(9))
    assert r.status_code == 500 and "ev-9" in r.text
    sub.refuse()
    assert post(client, event(9)).status_code == 200
    sub.slow(30)
    started = time.monotonic()
    assert post(client, event(3)).status_code == 200
    assert time.monotonic() - started >= 0.03
    assert set(sub.received()) == {"ev-1", "ev-9", "ev-3"}  # a faulted request has no effect
    assert sub.stats.faults["error"] == 2 and sub.stats.faults["rate_limit"] == 1


def test_admin_route_reports_what_arrived(client, sub):
    post(client, event(1))
    data = client.get("/_sandbox/subscriber/received").json()
    assert data["received"] == {"ev-1": 1} and "ev-1" in data["first"]
    assert data["out_of_order"] == [] and data["rejections"] == 0
