"""The wallet sandbox against CONTRACTS.md "Wallet site API": inventory and batches."""

from __future__ import annotations

from typing import Any

import httpx

from sandbox.core import ServedSandbox
from sandbox.wallet import WalletSandbox

from .conftest import product


def put_inventory(client: httpx.Client, items: list[dict[str, Any]]) -> httpx.Response:
    return client.put("/inventory:batch", json={"items": items})


def put_batches(client: httpx.Client, items: list[dict[str, Any]]) -> httpx.Response:
    return client.put("/batches:batch", json={"items": items})


def inv(sku: str, available: Any, as_of: Any = "2026-11-22T10:00:00Z", **over: Any) -> dict[str, Any]:
    return {"sku": sku, "available": available, "as_of": as_of, **over}


def batch(sku: str, batch_no: str = "B1", available: int = 10, **over: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"sku": sku, "batch_no": batch_no, "available": available,
                            "expires_at": "2027-06-30T23:59:59+08:00", "status": "active"}
    item.update(over)
    return item


def outcomes(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [x["outcome"] for x in r.json()["results"]]


def test_inventory_outcomes_and_stale_as_of(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    for sku in ("A", "B", "C"):
        wallet.set_product("sg1", product(sku))
    r = put_inventory(sg1, [inv("A", 10), inv("B", 0)])
    assert r.json() == {"results": [{"sku": "A", "outcome": "updated"},
                                    {"sku": "B", "outcome": "updated"}]}
    assert wallet.available("sg1", "A") == 10 and wallet.available("sg1", "B") == 0
    assert wallet.available("sg1", "C") is None  # never shown a number

    # a retry of the same push changes nothing; a newer push of the same number neither
    assert outcomes(put_inventory(sg1, [inv("A", 10), inv("B", 0)])) == ["unchanged"] * 2
    assert outcomes(put_inventory(sg1, [inv("A", 10, "2026-11-22T11:00:00Z")])) == ["unchanged"]
    # newer: applied; a late retry of an older push cannot roll it back
    assert outcomes(put_inventory(sg1, [inv("A", 7, "2026-11-22T19:30:00+08:00")])) == ["updated"]
    assert outcomes(put_inventory(sg1, [inv("A", 10, "2026-11-22T11:00:00Z")])) == ["stale"]
    assert wallet.available("sg1", "A") == 7
    assert wallet.inventory("sg1")["A"] == {"available": 7, "shown": 7,
                                            "as_of": "2026-11-22T19:30:00+08:00"}
    # the same as_of with another number is not older: applied
    assert outcomes(put_inventory(sg1, [inv("A", 8, "2026-11-22T11:30:00Z")])) == ["updated"]

    assert wallet.effects.keys("inventory.updated") == {"sg1:A": 3, "sg1:B": 1}
    [first] = wallet.effects.entries("inventory.updated", "sg1:B")
    assert first["available"] == 0
    assert wallet.inventory("sg2") == {}  # sites are separate


def test_inventory_refuses_bad_items_and_names_unknown_skus(
    wallet: WalletSandbox, sg1: httpx.Client
) -> None:
    wallet.set_product("sg1", product("A"))
    r = put_inventory(sg1, [inv("A", 5), inv("NOPE", 1)])
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid" and "NOPE" in error["message"]
    assert error["details"] == [{"index": 1, "sku": "NOPE", "field": "sku",
                                 "message": "no product NOPE on site sg1"}]
    assert wallet.available("sg1", "A") is None and wallet.effects.count() == 0  # all or nothing

    for n in range(8):
        wallet.set_product("sg1", product(f"S{n}"))
    bad = [
        inv("S0", -1), inv("S1", 1.0), inv("S2", True), inv("S3", "3"), inv("S4", 1, as_of=None),
        inv("S5", 1, as_of="2026-11-22T10:00:00"), inv("S6", 1, as_of="yesterday"),
        inv("S7", 1, colour="red"), "not an object", inv("bad sku", 1),
    ]
    r = put_inventory(sg1, bad)
    assert r.status_code == 422
    found = {(d["index"], d["field"]) for d in r.json()["error"]["details"]}
    assert found == {
        (0, "available"), (1, "available"), (2, "available"), (3, "available"), (4, "as_of"),
        (5, "as_of"), (6, "as_of"), (7, "colour"), (8, ""), (9, "sku"),
    }
    r = put_inventory(sg1, [inv("A", 1), inv("A", 2)])
    assert r.status_code == 422 and r.json()["error"]["details"][0]["index"] == 1

    assert put_inventory(sg1, [inv("A", 1)] * 501).status_code == 422
    assert sg1.put("/inventory:batch", content=b"{nope").status_code == 400
    assert sg1.put("/inventory:batch", json={"skus": []}).status_code == 422
    assert wallet.effects.count() == 0


def test_inventory_auth_and_rate_limit(
    wallet: WalletSandbox, wallet_served: ServedSandbox, sg1: httpx.Client
) -> None:
    wallet.set_product("sg1", product("A"))
    url = f"{wallet_served.base_url}/sg1/api/v1/inventory:batch"
    r = httpx.put(url, json={"items": [inv("A", 1)]}, headers={"X-Api-Key": "key-sg2"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    wallet.faults.set(rate_limit_rate=1.0, retry_after=2, count=2,
                      path_prefix="/sg1/api/v1/inventory")
    responses = [put_inventory(sg1, [inv("A", 1)]) for _ in range(3)]
    assert [r.status_code for r in responses] == [429, 429, 200]
    assert responses[0].headers["Retry-After"] == "2"
    assert responses[0].json()["error"]["code"] == "rate_limited"
    assert wallet.effects.count("inventory.updated") == 1


def test_batches_upsert(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    wallet.set_product("sg1", product("A"))
    wallet.set_product("sg1", product("B"))
    r = put_batches(sg1, [batch("A", "B1"), batch("A", "B2", expires_at=None), batch("B", "B1")])
    assert r.json() == {"results": [
        {"sku": "A", "batch_no": "B1", "outcome": "created"},
        {"sku": "A", "batch_no": "B2", "outcome": "created"},
        {"sku": "B", "batch_no": "B1", "outcome": "created"},
    ]}  # fmt: skip
    again = [
        batch("A", "B1", expires_at="2027-06-30T15:59:59Z"),  # the same instant
        batch("A", "B2", available=4, expires_at=None),
        batch("B", "B1", status="frozen"),
    ]
    assert outcomes(put_batches(sg1, again)) == ["unchanged", "updated", "updated"]
    assert wallet.effects.keys("batch.created") == {"sg1:A:B1": 1, "sg1:A:B2": 1, "sg1:B:B1": 1}
    assert wallet.effects.keys("batch.updated") == {"sg1:A:B2": 1, "sg1:B:B1": 1}
    stored = {(b["sku"], b["batch_no"]): b for b in wallet.batches("sg1")}
    assert stored[("A", "B2")]["available"] == 4 and stored[("B", "B1")]["status"] == "frozen"
    assert stored[("A", "B2")]["expires_at"] is None

    bad = [
        batch("ZZ"), batch("A", ""), batch("A", available=-3), batch("A", "B9", status=""),
        batch("A", "B8", expires_at="2027-06-30"), batch("A", "B7", extra=1),
        batch("B", "B1"), batch("B", "B1"),
    ]
    r = put_batches(sg1, bad)
    assert r.status_code == 422 and "ZZ" in r.json()["error"]["message"]
    found = {(d["index"], d["field"]) for d in r.json()["error"]["details"]}
    assert found == {(0, "sku"), (1, "batch_no"), (2, "available"), (3, "status"),
                     (4, "expires_at"), (5, "extra"), (7, "batch_no")}
    assert put_batches(sg1, [batch("A", f"N{i}") for i in range(501)]).status_code == 422
    assert len(wallet.batches("sg1")) == 3
    # expires_at may be left out altogether
    item = batch("A", "B3")
    del item["expires_at"]
    assert outcomes(put_batches(sg1, [item])) == ["created"]
