"""The wallet sites sandbox against CONTRACTS.md "Wallet site API" (products)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.core import ServedSandbox
from sandbox.wallet import WalletSandbox

from .conftest import SITES, product


def at(iso: str) -> Any:
    value = datetime.fromisoformat(iso)
    return lambda: value


def put(client: httpx.Client, items: list[dict[str, Any]]) -> httpx.Response:
    return client.put("/products:batch", json={"items": items})


def list_all(client: httpx.Client, **params: Any) -> tuple[list[dict[str, Any]], int]:
    items: list[dict[str, Any]] = []
    pages = 0
    cursor: str | None = None
    while True:
        query = dict(params)
        if cursor:
            query["cursor"] = cursor
        r = client.get("/products", params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        pages += 1
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages


# ---- auth --------------------------------------------------------------------------------------


def test_api_key_and_site(wallet: WalletSandbox, wallet_served: ServedSandbox) -> None:
    base = wallet_served.base_url
    r = httpx.get(f"{base}/sg1/api/v1/products", headers={"X-Api-Key": "key-sg2"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = httpx.get(f"{base}/sg1/api/v1/products")
    assert r.status_code == 401
    r = httpx.get(f"{base}/xx1/api/v1/products", headers={"X-Api-Key": "key-sg1"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(f"{base}/sg2/api/v1/products", headers={"X-Api-Key": "key-sg2"})
    assert r.status_code == 200 and r.json() == {"items": [], "next_cursor": None}
    assert wallet.site_url(base, "vn1") == f"{base}/vn1"


# ---- batch upsert --------------------------------------------------------------------------------


def test_outcomes_created_updated_unchanged(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    wallet.clock = at("2026-11-22T10:00:00+00:00")
    r = put(sg1, [product("A"), product("B")])
    assert r.status_code == 200
    assert r.json() == {"results": [
        {"sku": "A", "outcome": "created"}, {"sku": "B", "outcome": "created"},
    ]}  # fmt: skip
    stored = wallet.get_product("sg1", "A")
    assert stored is not None and stored["updated_at"].startswith("2026-11-22T18:00:00")
    assert stored["updated_at"].endswith("+08:00")  # the site's own timezone

    wallet.clock = at("2026-11-22T11:00:00+00:00")
    r = put(sg1, [product("A", amount="10.0"), product("B", name="Renamed"), product("C")])
    assert [x["outcome"] for x in r.json()["results"]] == ["unchanged", "updated", "created"]
    assert wallet.get_product("sg1", "A")["updated_at"] == stored["updated_at"]  # type: ignore[index]
    assert wallet.get_product("sg1", "B")["name"] == "Renamed"  # type: ignore[index]

    assert wallet.effects.keys("product.created") == {"sg1:A": 1, "sg1:B": 1, "sg1:C": 1}
    assert wallet.effects.keys("product.updated") == {"sg1:B": 1}
    assert wallet.effects.count() == 4  # "unchanged" is not an effect ...
    assert len([e for e in wallet.requests() if e["path"] == "/sg1/api/v1/products:batch"]) == 2
    # ... and sites are separate
    assert wallet.count("sg2") == 0 and wallet.count("sg1") == 3


def test_one_bad_item_rejects_the_whole_batch(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    items = [product("A"), product("B", amount="18.155"), product("C")]
    r = put(sg1, items)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid"
    assert [(d["index"], d["sku"], d["field"]) for d in error["details"]] == [
        (1, "B", "face_value.amount")
    ]
    assert "SGD" in error["details"][0]["message"]
    assert wallet.count("sg1") == 0 and wallet.effects.count() == 0


def test_every_bad_item_is_listed(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    items = [
        product("ok-1"),
        product("n", amount=10.5),  # a JSON number, not a decimal string
        product("c", currency="MYR"),  # not this site's currency
        product("bad sku"),
        product("s", status="paused"),
        product("m", issuance_mode="magic"),
        product("k", kind=""),
        product("x", colour="red"),
        product("z", amount="-5.00"),
        product("e", amount="1e3"),
        product("q", currency="QQQ"),
        product("ok-1"),  # duplicate within the batch
    ]
    r = put(sg1, items)
    assert r.status_code == 422
    found = {(d["index"], d["field"]) for d in r.json()["error"]["details"]}
    assert found == {
        (1, "face_value.amount"), (2, "face_value.currency"), (3, "sku"), (4, "status"),
        (5, "issuance_mode"), (6, "kind"), (7, "colour"), (8, "face_value.amount"),
        (9, "face_value.amount"), (10, "face_value.currency"), (11, "sku"),
    }  # fmt: skip
    assert wallet.count() == 0


def test_minor_units(wallet: WalletSandbox, wallet_served: ServedSandbox) -> None:
    with httpx.Client(
        base_url=f"{wallet_served.base_url}/vn1/api/v1", headers={"X-Api-Key": "key-vn1"}
    ) as vn1:
        assert put(vn1, [product("V1", amount="50000.5", currency="VND")]).status_code == 422
        ok = put(vn1, [product("V1", amount="50000.00", currency="VND")])  # zeros are fine
        assert ok.status_code == 200, ok.text


def test_batch_size_and_body(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    r = put(sg1, [product(f"S{i}") for i in range(501)])
    assert r.status_code == 422 and "500" in r.json()["error"]["message"]
    assert put(sg1, [product(f"S{i}") for i in range(500)]).status_code == 200
    r = sg1.put("/products:batch", content=b"{nope")
    assert r.status_code == 400
    assert sg1.put("/products:batch", json={"things": []}).status_code == 422


# ---- listing -------------------------------------------------------------------------------------


def test_cursor_paging_is_complete_and_ordered(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    for n in range(3):
        wallet.clock = at(f"2026-11-22T1{n}:00:00+00:00")
        assert put(sg1, [product(f"P{n}-{i:03d}") for i in range(400)]).status_code == 200
    items, pages = list_all(sg1, limit=500)
    assert pages == 3 and len(items) == 1200
    assert len({i["sku"] for i in items}) == 1200
    keys = [(datetime.fromisoformat(i["updated_at"]), i["sku"]) for i in items]
    assert keys == sorted(keys)

    since, _ = list_all(sg1, updated_since="2026-11-22T11:00:00Z")
    assert len(since) == 800 and all(i["sku"].startswith(("P1", "P2")) for i in since)
    since, _ = list_all(sg1, updated_since="2026-11-22T19:00:00+08:00", limit=7)
    assert len(since) == 800

    assert sg1.get("/products", params={"limit": 501}).status_code == 400
    assert sg1.get("/products", params={"cursor": "garbage!"}).status_code == 400
    assert sg1.get("/products", params={"updated_since": "yesterday"}).status_code == 400
    assert sg1.get("/products", params={"updated_since": "2026-11-22T11:00:00"}).status_code == 400


def test_change_during_paging_is_not_lost(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    put(sg1, [product(f"P{i:02d}") for i in range(10)])
    first = sg1.get("/products", params={"limit": 5}).json()
    put(sg1, [product("P00", name="changed"), product("P99")])  # P00 moves to the end
    rest, _ = list_all(sg1, limit=5, cursor=first["next_cursor"])
    skus = [i["sku"] for i in first["items"]] + [i["sku"] for i in rest]
    assert set(skus) == {f"P{i:02d}" for i in range(10)} | {"P99"}
    assert skus[-2:] == ["P00", "P99"]


# ---- status --------------------------------------------------------------------------------------


def test_site_status_change(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    wallet.clock = at("2026-11-22T10:00:00+00:00")
    put(sg1, [product("A"), product("B")])
    wallet.clock = at("2026-11-22T12:00:00+00:00")
    r = sg1.patch("/products/A", json={"status": "frozen", "reason": "fraud check"})
    assert r.status_code == 200
    assert r.json()["status"] == "frozen" and r.json()["updated_at"].startswith("2026-11-22T20:00")
    [effect] = wallet.effects.entries("product.status_changed")
    assert effect["key"] == "sg1:A" and effect["reason"] == "fraud check"
    assert effect["previous"] == "normal"
    since, _ = list_all(sg1, updated_since="2026-11-22T11:00:00Z")
    assert [i["sku"] for i in since] == ["A"]

    assert sg1.patch("/products/A", json={"status": "gone"}).status_code == 422
    assert sg1.patch("/products/NOPE", json={"status": "frozen"}).status_code == 404

    wallet.freeze("sg1", "B", "stock mismatch")
    frozen = wallet.get_product("sg1", "B")
    assert frozen is not None and frozen["status"] == "frozen"
    assert frozen["updated_at"] > since[0]["updated_at"]
    assert wallet.effects.count("product.status_changed") == 1  # the helper is not a client


def test_rate_limit_fault_with_retry_after(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    wallet.faults.set(rate_limit_rate=1.0, retry_after=1, count=3, path_prefix="/sg1/")
    responses = [put(sg1, [product("A")]) for _ in range(4)]
    assert [r.status_code for r in responses] == [429, 429, 429, 200]
    assert responses[0].headers["Retry-After"] == "1"
    assert responses[0].json()["error"]["code"] == "rate_limited"
    assert wallet.effects.count("product.created") == 1


def test_drop_after_batch_is_applied(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    wallet.faults.set(drop_rate=1.0, drop_when="after", count=1)
    with pytest.raises(httpx.TransportError):
        put(sg1, [product("A"), product("B")])
    assert wallet.count("sg1") == 2
    r = put(sg1, [product("A"), product("B")])  # the client's retry
    assert [x["outcome"] for x in r.json()["results"]] == ["unchanged", "unchanged"]
    assert wallet.effects.count("product.created") == 2


# ---- persistence ---------------------------------------------------------------------------------


def test_save_and_load(tmp_path: Path) -> None:
    wallet = WalletSandbox(SITES)
    wallet.set_product("sg1", product("A"))
    wallet.set_product("vn1", product("V", amount="50000", currency="VND"))
    wallet.freeze("sg1", "A", "test")
    path = wallet.save(tmp_path / "wallet.json")
    loaded = WalletSandbox.load(path, sites=SITES)
    assert loaded.products("sg1") == wallet.products("sg1")
    assert loaded.products("vn1") == wallet.products("vn1")
    # the order index is rebuilt: a later change still lists last
    loaded.set_product("sg1", product("B"))
    assert [p["sku"] for p in loaded.products("sg1")] == ["A", "B"]
