"""The sandbox framework itself, on a minimal sandbox so failures point at core, not at a
system's protocol."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox.core import (
    EffectLog,
    FaultSwitch,
    Sandbox,
    ServedSandbox,
    json_response,
    serve,
    serve_many,
)


class ItemsSandbox(Sandbox):
    """POST /items creates an item (an effect); GET /items/{key} reads it."""

    name = "items"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.items: dict[str, dict[str, Any]] = {}

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/items", self._create, methods=["POST"]),
            Route("/items/{key}", self._get, methods=["GET"]),
        ]

    async def _create(self, request: Request) -> Response:
        body = await request.json()
        with self.lock:
            self.items[body["key"]] = body
            self.effects.record("item.created", body["key"], size=len(body))
        return json_response(body, status=201)

    async def _get(self, request: Request) -> Response:
        item = self.items.get(request.path_params["key"])
        if item is None:
            return self.error_response(404, "not_found", "no such item")
        return json_response(item)

    def snapshot(self) -> dict[str, Any]:
        return {"items": self.items}

    def restore(self, data: dict[str, Any]) -> None:
        self.items = dict(data["items"])

    def reset_data(self) -> None:
        self.items = {}


@pytest.fixture(scope="module")
def served() -> Iterator[ServedSandbox]:
    with serve(ItemsSandbox()) as s:
        yield s


@pytest.fixture
def sb(served: ServedSandbox) -> ItemsSandbox:
    assert isinstance(served.sandbox, ItemsSandbox)
    served.sandbox.reset()
    return served.sandbox


@pytest.fixture
def client(sb: ItemsSandbox, served: ServedSandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.base_url, timeout=10) as c:
        yield c


# ---- EffectLog --------------------------------------------------------------------------------


def test_effect_log_counts_by_kind_and_key() -> None:
    log = EffectLog()
    log.record("product.created", "sg1:A", sku="A")
    log.record("product.created", "sg1:B")
    log.record("product.updated", "sg1:A")
    log.record("product.created", "sg1:A")
    assert log.count() == 4
    assert log.count("product.created") == 3
    assert log.count("product.created", "sg1:A") == 2
    assert log.count(key="sg1:A") == 3
    assert log.count("nothing") == 0
    assert log.keys("product.created") == {"sg1:A": 2, "sg1:B": 1}
    first = log.entries("product.created", "sg1:A")[0]
    assert first["sku"] == "A" and first["seq"] == 1
    assert [e["kind"] for e in log.entries(key="sg1:A")] == [
        "product.created", "product.updated", "product.created",
    ]  # fmt: skip


def test_effect_log_is_thread_safe() -> None:
    log = EffectLog()

    def work(n: int) -> None:
        for i in range(500):
            log.record("k", f"key-{i % 10}", worker=n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.count("k") == 4000
    assert sum(log.keys("k").values()) == 4000
    assert sorted(e["seq"] for e in log.entries()) == list(range(1, 4001))


# ---- FaultSwitch ------------------------------------------------------------------------------


def test_fault_switch_count_then_stops() -> None:
    switch = FaultSwitch()
    switch.set(error_rate=1.0, count=5)
    actions = [switch.decide("GET", "/x").action for _ in range(7)]
    assert actions == ["error"] * 5 + [None, None]
    assert switch.rules == []  # used-up rules are dropped


def test_fault_switch_path_prefix_method_and_duration() -> None:
    switch = FaultSwitch()
    switch.set(error_rate=1.0, path_prefix="/a", method="put")
    assert switch.decide("PUT", "/b").action is None
    assert switch.decide("GET", "/a/1").action is None
    assert switch.decide("PUT", "/a/1").action == "error"
    switch.set(rate_limit_rate=1.0, duration_s=0.05)
    assert switch.decide("GET", "/").action == "rate_limit"
    time.sleep(0.08)
    assert switch.decide("GET", "/").action is None


def test_fault_switch_seed_is_deterministic() -> None:
    def run() -> list[str | None]:
        switch = FaultSwitch()
        switch.set(error_rate=0.3, drop_rate=0.3, seed=42)
        return [switch.decide("GET", "/").action for _ in range(50)]

    first = run()
    assert first == run()
    assert {"error", "drop_before", None} <= set(first)


def test_fault_switch_stacks_rules_and_validates() -> None:
    switch = FaultSwitch()
    switch.set(latency_ms=10)
    switch.add(latency_ms=5, error_rate=1.0, error_status=502, count=1)
    d = switch.decide("GET", "/")
    assert d.action == "error" and d.status == 502 and d.latency_s == pytest.approx(0.015)
    d = switch.decide("GET", "/")
    assert d.action is None and d.latency_s == pytest.approx(0.010)
    for bad in ({"error_rate": 2}, {"drop_when": "later"}, {"bogus": 1}, {"count": -1}):
        with pytest.raises(ValueError):
            switch.set(**bad)


# ---- served faults ----------------------------------------------------------------------------


def test_503_for_the_next_five_requests(sb: ItemsSandbox, client: httpx.Client) -> None:
    sb.faults.set(error_rate=1.0, count=5)
    statuses = [client.get("/items/x").status_code for _ in range(6)]
    assert statuses == [503] * 5 + [404]
    body = client.get("/items/x").json()
    assert body["error"]["code"] == "not_found"
    log = client.get("/_sandbox/requests").json()["requests"]
    assert [e["fault"] for e in log[:5]] == ["error"] * 5
    assert log[5]["fault"] is None and log[5]["status"] == 404
    assert sb.stats.faults["error"] == 5


def test_429_with_and_without_retry_after(sb: ItemsSandbox, client: httpx.Client) -> None:
    sb.faults.set(rate_limit_rate=1.0, retry_after=1, count=3)
    responses = [client.get("/items/x") for _ in range(4)]
    assert [r.status_code for r in responses] == [429, 429, 429, 404]
    assert all(r.headers["Retry-After"] == "1" for r in responses[:3])
    assert responses[0].json()["error"]["code"] == "rate_limited"
    sb.faults.set(rate_limit_rate=1.0, count=1)
    r = client.get("/items/x")
    assert r.status_code == 429 and "Retry-After" not in r.headers


def test_latency_is_added(sb: ItemsSandbox, client: httpx.Client) -> None:
    sb.faults.set(latency_ms=150, count=1)
    started = time.perf_counter()
    client.get("/items/x")
    assert time.perf_counter() - started >= 0.15
    entry = sb.request_log[-1]
    assert entry["fault"] == "latency" and entry["latency_ms"] >= 150


def test_drop_before_applies_nothing(sb: ItemsSandbox, client: httpx.Client) -> None:
    sb.faults.set(drop_rate=1.0, drop_when="before", count=1)
    with pytest.raises(httpx.TransportError):
        client.post("/items", json={"key": "a"})
    assert sb.effects.count("item.created") == 0
    assert sb.items == {}
    assert sb.request_log[-1]["fault"] == "drop_before"
    # the connection is gone but the server is fine
    assert client.post("/items", json={"key": "a"}).status_code == 201


def test_drop_after_applies_the_effect_and_loses_the_answer(
    sb: ItemsSandbox, client: httpx.Client
) -> None:
    sb.faults.set(drop_rate=1.0, drop_when="after", count=1, path_prefix="/items")
    with pytest.raises(httpx.TransportError):
        client.post("/items", json={"key": "a", "pad": "x" * 100})
    assert sb.effects.count("item.created", "a") == 1
    assert "a" in sb.items
    entry = sb.request_log[-1]
    assert entry["fault"] == "drop_after" and entry["status"] == 201
    assert client.get("/items/a").status_code == 200


def test_drop_of_a_bodyless_answer_still_breaks_the_response(
    sb: ItemsSandbox, client: httpx.Client
) -> None:
    sb.faults.set(drop_rate=1.0, drop_when="before", count=1)
    with pytest.raises(httpx.TransportError):
        client.get("/items/zzz")


# ---- admin routes -----------------------------------------------------------------------------


def test_admin_routes(sb: ItemsSandbox, client: httpx.Client) -> None:
    r = client.post("/_sandbox/faults", json={"error_rate": 1.0, "error_status": 500, "count": 2})
    assert r.status_code == 200 and r.json()["rules"][0]["remaining"] == 2
    # admin routes are never faulted or counted
    assert client.get("/_sandbox/stats").status_code == 200
    assert client.get("/items/x").status_code == 500
    assert client.delete("/_sandbox/faults").json() == {"rules": []}
    assert client.get("/items/x").status_code == 404
    assert client.post("/_sandbox/faults", json={"error_rate": 5}).status_code == 400

    client.post("/items", json={"key": "a"})
    client.post("/items", json={"key": "b"})
    client.post("/items", json={"key": "a"})
    effects = client.get("/_sandbox/effects", params={"kind": "item.created", "key": "a"}).json()
    assert effects["count"] == 2 and {e["key"] for e in effects["effects"]} == {"a"}
    assert client.get("/_sandbox/effects").json()["count"] == 3

    stats = client.get("/_sandbox/stats").json()
    assert stats["requests"] == 5 and stats["statuses"]["201"] == 3 and stats["in_flight"] == 0

    reqs = client.get("/_sandbox/requests").json()
    assert reqs["count"] == 5
    assert not any(e["path"].startswith("/_sandbox") for e in reqs["requests"])

    assert client.post("/_sandbox/reset").status_code == 200
    assert sb.items == {} and sb.effects.count() == 0 and sb.stats.requests == 0
    assert client.get("/_sandbox/requests").json()["count"] == 0


def test_admin_faults_with_several_rules(sb: ItemsSandbox, client: httpx.Client) -> None:
    body = {"rules": [{"latency_ms": 1}, {"error_rate": 1.0, "path_prefix": "/items/b"}]}
    assert client.post("/_sandbox/faults", json=body).status_code == 200
    assert client.get("/items/a").status_code == 404
    assert client.get("/items/b").status_code == 503
    client.post("/_sandbox/faults", json={"mode": "add", "rate_limit_rate": 1.0, "count": 1})
    assert len(sb.faults.rules) == 3


def test_idempotency_key_is_logged(sb: ItemsSandbox, client: httpx.Client) -> None:
    client.post("/items", json={"key": "a"}, headers={"Idempotency-Key": "k-1"})
    client.post("/items", json={"key": "b"}, headers={"X-NetSuite-idempotency-key": "uuid-2"})
    assert [e["idempotency_key"] for e in sb.request_log] == ["k-1", "uuid-2"]


def test_in_flight_is_counted(sb: ItemsSandbox, served: ServedSandbox) -> None:
    sb.faults.set(latency_ms=200)
    barrier = threading.Barrier(6)

    def hit() -> None:
        with httpx.Client(base_url=served.base_url, timeout=10) as c:
            barrier.wait()
            c.get("/items/x")

    threads = [threading.Thread(target=hit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sb.stats.max_in_flight == 6 and sb.stats.max_admitted == 6
    assert sb.stats.in_flight == 0


# ---- persistence ------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    sb = ItemsSandbox()
    sb.items = {"a": {"key": "a", "n": 1}}
    sb.faults.set(error_rate=1.0)
    target = sb.save(tmp_path / "deep" / "items.json")
    assert sorted(p.name for p in target.parent.iterdir()) == ["items.json"]  # no tmp left
    assert json.loads(target.read_text())["data"] == {"items": {"a": {"key": "a", "n": 1}}}
    again = ItemsSandbox.load(target)
    assert again.items == sb.items and again.faults.rules == []
    assert ItemsSandbox().load_state(tmp_path / "missing.json") is False


def test_state_path_and_admin_save(tmp_path: Path) -> None:
    sb = ItemsSandbox(state_path=tmp_path / "items.json")
    with serve(sb) as s, httpx.Client(base_url=s.base_url) as c:
        c.post("/items", json={"key": "z"})
        assert c.post("/_sandbox/save").status_code == 200
    assert ItemsSandbox.load(tmp_path / "items.json").items == {"z": {"key": "z"}}


# ---- serving ----------------------------------------------------------------------------------


def test_serve_is_quick_and_stops_cleanly() -> None:
    started = time.perf_counter()
    s = serve(ItemsSandbox())
    assert time.perf_counter() - started < 2.0
    assert s.port > 0 and s.base_url == f"http://127.0.0.1:{s.port}"
    assert httpx.get(s.url("/items/x")).status_code == 404
    s.stop()
    assert not s.running
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", s.port), timeout=1):
        pass


def test_serve_many_and_plain_apps() -> None:
    async def plain(scope: Any, receive: Any, send: Any) -> None:
        await Response("hi")(scope, receive, send)

    with serve_many([ItemsSandbox(), plain]) as group:
        a, b = group
        assert a.sandbox is not None and b.sandbox is None
        assert httpx.get(a.url("/items/x")).status_code == 404
        assert httpx.get(b.url("/")).text == "hi"
    assert not a.running and not b.running


def test_handler_crash_is_an_error_envelope_and_logged(
    sb: ItemsSandbox, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    r = client.post("/items", content=b"not json")
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal"
    assert sb.stats.errors == 1
    assert any("unhandled error" in rec.message for rec in caplog.records)
