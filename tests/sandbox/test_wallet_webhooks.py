"""Webhooks from the wallet sandbox's sites (CONTRACTS.md "Webhooks from a site to
vouchflow"), received by a small Starlette app that checks signatures on its own."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.core import serve
from sandbox.wallet import WalletSandbox

from .conftest import SITES, product

START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 11, 2, tzinfo=UTC)


def secret(site: str) -> bytes:
    return f"sandbox-webhook-secret-{site}".encode()  # the documented default


def verify(site: str, body: bytes, header: str, now: float | None = None) -> bool:
    """The receiver's check, written from the contract (not with the sandbox's code)."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    t = int(fields["t"])
    expected = hmac.new(secret(site), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    fresh = abs((time.time() if now is None else now) - t) <= 300
    return hmac.compare_digest(expected, fields["v1"]) and fresh


class Receiver:
    """vouchflow's inbound endpoint, as small as possible: verifies, counts, can fail."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[dict[str, Any]] = []  # accepted, in arrival order
        self.rejected = 0
        self.fail_next = 0  # answer 500 to that many (valid) requests
        self.url = ""
        self.app = Starlette(routes=[Route("/wallet/{site}/events", self.handle,
                                           methods=["POST"])])  # fmt: skip

    async def handle(self, request: Request) -> Response:
        site = request.path_params["site"]
        body = await request.body()
        header = request.headers.get("x-wallet-signature", "")
        if not header or not verify(site, body, header):
            with self.lock:
                self.rejected += 1
            return Response(status_code=401)
        event = json.loads(body)
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return Response(status_code=500)
            self.received.append({
                "site": site, "id": event["id"], "event": event, "body": body,
                "header_id": request.headers.get("x-wallet-event-id"),
                "content_type": request.headers.get("content-type"),
            })  # fmt: skip
        return Response(status_code=204)

    def ids(self) -> list[str]:
        with self.lock:
            return [r["id"] for r in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    with serve(r.app) as served:
        r.url = served.base_url
        yield r


@pytest.fixture
def make_wallet() -> Iterator[Any]:
    made: list[WalletSandbox] = []

    def make(**kwargs: Any) -> WalletSandbox:
        kwargs.setdefault("webhook_backoff_s", (0.01, 0.05))
        wallet = WalletSandbox(SITES, **kwargs)
        made.append(wallet)
        return wallet

    yield make
    for wallet in made:
        wallet.close()
    workers = ("sandbox-wallet-webhooks", "sandbox-wallet-sales")
    assert not [t for t in threading.enumerate() if t.name in workers]


def stock(wallet: WalletSandbox, n: int = 5) -> None:
    for i in range(n):
        wallet.set_product("sg1", product(f"A{i}"))
        wallet.set_product("vn1", product(f"V{i}", amount="20000", currency="VND"))
    wallet.set_inventory("sg1", {f"A{i}": 500 for i in range(n)}, as_of=START)
    wallet.set_inventory("vn1", {f"V{i}": 500 for i in range(n)}, as_of=START)


def test_events_are_signed_and_shaped_per_contract(make_wallet: Any, receiver: Receiver) -> None:
    wallet = make_wallet(webhook_url=receiver.url, duplicate_rate=0.0)
    stock(wallet)
    order = wallet.create_order("sg1", [("A1", 2)], at=START)
    wallet.freeze("sg1", "A2", "fraud check")
    [refund] = wallet.refund("sg1", order["order_id"], "L1", 1, at=START + timedelta(hours=1))
    assert wallet.flush_webhooks(5)
    assert receiver.rejected == 0

    events = wallet.events()
    assert [e["type"] for e in events] == [
        "order.confirmed", "product.status_changed", "refund.created", "order.updated",
    ]
    by_id = {r["id"]: r for r in receiver.received}
    for e in events:
        got = by_id[e["id"]]
        assert got["body"] == e["body"]  # byte for byte
        assert got["header_id"] == e["id"] and got["content_type"] == "application/json"
        # the signature as first sent, checked independently and with the helper
        header = e["headers"]["X-Wallet-Signature"]
        assert verify("sg1", e["body"], header)
        t = int(header.split(",")[0].removeprefix("t="))
        assert wallet.sign("sg1", e["body"], t) == header
        assert e["headers"]["X-Wallet-Event-Id"] == e["id"]
        assert e["delivered"] and e["attempts"] == 1 and e["last_status"] == 204
        assert set(e["event"]) == {"id", "type", "created_at", "data"}
        assert e["event"]["created_at"].endswith("+08:00")
    confirmed, status, refunded, updated = (e["event"] for e in events)
    assert confirmed["data"] == order
    assert confirmed["created_at"] == order["created_at"]
    assert status["data"] == {"sku": "A2", "status": "frozen", "reason": "fraud check"}
    assert refunded["data"] == refund
    assert updated["data"] == wallet.get_order("sg1", order["order_id"])
    assert updated["data"]["status"] == "partially_refunded"
    # another site's secret does not verify
    assert not hmac.compare_digest(
        wallet.sign("sg2", events[0]["body"], 1), wallet.sign("sg1", events[0]["body"], 1)
    )
    custom = make_wallet(webhook_secrets={"sg1": "s3cret"})
    expected = hmac.new(b"s3cret", b"7.{}", hashlib.sha256).hexdigest()
    assert custom.sign("sg1", b"{}", 7) == f"t=7,v1={expected}"


def test_at_least_once_with_duplicates_and_out_of_order(
    make_wallet: Any, receiver: Receiver
) -> None:
    wallet = make_wallet(duplicate_rate=0.3, shuffle_window=5, webhook_seed=4)
    stock(wallet)
    wallet.generate_sales(60, seed=1, start=START, end=END, refund_rate=0.2)
    created = [e["id"] for e in wallet.events()]
    assert len(created) > 60
    wallet.webhook_url = receiver.url  # a backlog: shuffling has room
    assert wallet.flush_webhooks(10)
    arrived = receiver.ids()
    assert set(arrived) == set(created)  # every event, at least once
    counts = Counter(arrived)
    duplicated = [i for i, n in counts.items() if n > 1]
    assert duplicated  # some more than once
    stats = wallet.webhook_stats()
    assert stats["duplicates_sent"] == len(arrived) - len(created)
    assert stats["successes"] == len(created) and stats["failures"] == 0
    assert stats["attempts"] == len(arrived) and stats["pending"] == 0
    first_arrival = list(dict.fromkeys(arrived))
    assert first_arrival != created  # out of order
    # ... but only by a few places: the deliverer picks among the first 5 pending events
    position = {event_id: n for n, event_id in enumerate(created)}
    late = [position[i] - n for n, i in enumerate(first_arrival)]
    assert max(late) > 0 and sum(abs(x) for x in late) / len(late) < 10
    # a duplicate is the very same event: same id, same body
    dup = next(r for r in receiver.received if r["id"] == duplicated[0])
    assert all(r["body"] == dup["body"] for r in receiver.received if r["id"] == dup["id"])
    assert receiver.rejected == 0


def test_retries_until_the_receiver_recovers(make_wallet: Any, receiver: Receiver) -> None:
    # nobody listening at first: connection errors
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    wallet = make_wallet(webhook_url=dead, duplicate_rate=0.0)
    stock(wallet)
    for n in range(5):
        wallet.create_order("sg1", [(f"A{n}", 1)], at=START)
    deadline = time.monotonic() + 5
    while not all(e["attempts"] for e in wallet.events()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(e["attempts"] and not e["delivered"] for e in wallet.events())
    assert wallet.webhook_stats()["failures"] >= 5 and receiver.ids() == []

    # then a receiver that answers 500 for a while
    receiver.fail_next = 8
    wallet.webhook_url = receiver.url
    assert wallet.flush_webhooks(10)
    events = wallet.events()
    assert sorted(receiver.ids()) == sorted(e["id"] for e in events)
    stats = wallet.webhook_stats()
    assert stats["statuses"]["500"] == 8 and stats["statuses"]["204"] == 5
    assert stats["successes"] == 5 and stats["pending"] == 0
    assert all(e["delivered"] and e["attempts"] > 1 for e in events)
    assert sum(e["attempts"] for e in events) == stats["attempts"]


def test_replay_of_the_event_log(make_wallet: Any, receiver: Receiver) -> None:
    wallet = make_wallet()  # no URL: nothing is sent, everything stays pending
    stock(wallet)
    wallet.generate_sales(20, seed=2, start=START, end=END, refund_rate=0.2)
    events = wallet.events()
    assert all(e["headers"] is None and not e["delivered"] for e in events)
    assert wallet.webhook_stats()["pending"] == len(events)
    assert not wallet.flush_webhooks(0.1)

    statuses = wallet.deliver_events(events, receiver.url, shuffle=True, duplicates=0.5, seed=1)
    assert statuses == [204] * len(statuses) and len(statuses) > len(events)
    arrived = receiver.ids()
    assert set(arrived) == {e["id"] for e in events}
    assert list(dict.fromkeys(arrived)) != [e["id"] for e in events]
    assert {r["id"]: r["body"] for r in receiver.received} == {e["id"]: e["body"] for e in events}
    assert receiver.rejected == 0
    assert wallet.webhook_stats()["pending"] == len(events)  # a replay is not the outbox

    # an old timestamp is refused by the receiver (the 5-minute window)
    old = int(time.time()) - 600
    assert wallet.deliver_events(events[:3], receiver.url, t=old) == [401] * 3
    assert receiver.rejected == 3
    # the same seed replays the same way
    again = Receiver()
    with serve(again.app) as served:
        wallet.deliver_events(events, served.base_url, shuffle=True, duplicates=0.5, seed=1)
    assert again.ids() == arrived


def test_status_events_only_for_the_sites_own_changes(
    wallet: WalletSandbox, sg1: httpx.Client
) -> None:
    wallet.set_product("sg1", product("A"))
    wallet.set_product("sg1", product("B"))
    before = wallet.get_product("sg1", "A")
    assert sg1.patch("/products/A", json={"status": "frozen", "reason": "erp"}).status_code == 200
    assert wallet.events() == []  # vouchflow's own change is not echoed back
    wallet.freeze("sg1", "B", "stock check")
    wallet.freeze("sg1", "B", "again")  # no change, no event
    wallet.deactivate("sg1", "A", "delisted")
    assert [e["event"]["data"] for e in wallet.events("sg1")] == [
        {"sku": "B", "status": "frozen", "reason": "stock check"},
        {"sku": "A", "status": "inactive", "reason": "delisted"},
    ]
    after = wallet.get_product("sg1", "A")
    assert before is not None and after is not None and after["updated_at"] > before["updated_at"]
    assert wallet.effects.count("product.status_changed") == 1  # only the client's PATCH


def test_pending_events_survive_a_restart(
    make_wallet: Any, receiver: Receiver, tmp_path: Path
) -> None:
    wallet = make_wallet(duplicate_rate=0.0)
    stock(wallet)
    wallet.generate_sales(10, seed=3, start=START, end=END)
    path = wallet.save(tmp_path / "wallet.json")
    loaded = make_wallet(duplicate_rate=0.0)
    assert loaded.load_state(path)
    assert [e["body"] for e in loaded.events()] == [e["body"] for e in wallet.events()]
    loaded.webhook_url = receiver.url
    assert loaded.flush_webhooks(5)
    assert sorted(receiver.ids()) == sorted(e["id"] for e in wallet.events())
    loaded.save(path)
    delivered = make_wallet(webhook_url=receiver.url)
    delivered.load_state(path)
    assert delivered.webhook_stats()["pending"] == 0  # delivered ones are not sent again
    # with nothing to do the deliverer ends on its own
    deadline = time.monotonic() + 3
    while loaded.webhook_stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not loaded.webhook_stats()["running"]
