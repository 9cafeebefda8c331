"""The wallet sandbox against CONTRACTS.md "Wallet site API": orders, code deliveries,
refunds, the sales generator and persistence of all of it."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.core import ServedSandbox, serve
from sandbox.wallet import ORDER_STATUSES, PAYMENT_METHODS, WalletSandbox

from .conftest import SITES, product

START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 11, 8, tzinfo=UTC)


def stock(wallet: WalletSandbox, code: str, available: dict[str, int], **over: Any) -> None:
    """Products on a site, shown these numbers (a number < 0: never shown one)."""
    for sku in available:
        if code == "vn1":
            wallet.set_product(code, product(sku, amount="50000", currency="VND", **over))
        else:
            wallet.set_product(code, product(sku, amount="12.5", **over))
    wallet.set_inventory(code, {sku: n for sku, n in available.items() if n >= 0},
                         as_of=START - timedelta(days=1))


def list_all(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        r = client.get(path, params=query)
        assert r.status_code == 200, r.text
        items.extend(r.json()["items"])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


def deliver(client: httpx.Client, order_id: str, line_id: str, codes: list[str],
            key: str | None) -> httpx.Response:  # fmt: skip
    headers = {"Idempotency-Key": key} if key is not None else {}
    body = {"line_id": line_id, "codes": [{"code": c} for c in codes]}
    return client.post(f"/orders/{order_id}/deliveries", json=body, headers=headers)


def sold(orders: list[dict[str, Any]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for order in orders:
        for line in order["lines"]:
            out[line["sku"]] += line["quantity"]
    return out


# ---- the generator -------------------------------------------------------------------------------


def test_generator_is_deterministic() -> None:
    def run(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        wallet = WalletSandbox(SITES)
        stock(wallet, "sg1", {f"A{i}": 50 for i in range(10)})
        stock(wallet, "vn1", {f"V{i}": 50 for i in range(5)})
        orders = wallet.generate_sales(80, seed=seed, start=START, end=END, refund_rate=0.2,
                                       cancel_rate=0.05)
        return orders, wallet.refunds("sg1") + wallet.refunds("vn1")

    first, second, other = run(7), run(7), run(8)
    assert first == second
    assert first[0] != other[0] and first != other
    assert len(first[0]) == 80
    statuses = Counter(o["status"] for o in first[0])
    assert set(statuses) <= set(ORDER_STATUSES) and statuses["confirmed"] > 40
    assert statuses["refunded"] + statuses["partially_refunded"] > 0
    assert len(first[1]) > 0


def test_generated_orders_follow_the_contract() -> None:
    wallet = WalletSandbox(SITES)
    stock(wallet, "sg1", {f"A{i}": 100 for i in range(20)})
    stock(wallet, "vn1", {f"V{i}": 100 for i in range(5)})
    orders = wallet.generate_sales(300, seed=3, start=START, end=END, refund_rate=0.1)
    assert len(orders) == 300
    by_site = Counter(o["site"] for o in orders)
    assert set(by_site) == {"sg1", "vn1"}  # sg2 and id1 have nothing to sell
    methods = Counter(o["payment"]["method"] for o in orders)
    assert set(methods) == set(PAYMENT_METHODS)
    quantities = Counter(line["quantity"] for o in orders for line in o["lines"])
    assert quantities[1] > quantities[2] > quantities[3] > 0 and max(quantities) > 3
    for order in orders:
        assert set(order) == {"order_id", "site", "status", "created_at", "updated_at",
                              "currency", "customer_ref", "lines", "payment"}
        created = datetime.fromisoformat(order["created_at"])
        assert START <= created <= END
        assert datetime.fromisoformat(order["updated_at"]) >= created
        offset = "+07:00" if order["site"] == "vn1" else "+08:00"  # the site's own time zone
        assert order["created_at"].endswith(offset)
        currency = wallet.site_currency(order["site"])
        assert order["currency"] == currency == order["payment"]["amount"]["currency"]
        decimals = 0 if currency == "VND" else 2
        total = Decimal(0)
        for line in order["lines"]:
            price = line["unit_price"]
            assert price["currency"] == currency
            assert price["amount"] == ("50000" if decimals == 0 else "12.50")
            total += Decimal(price["amount"]) * line["quantity"]
        amount = order["payment"]["amount"]["amount"]
        assert Decimal(amount) == total
        assert len(amount.partition(".")[2]) == decimals
        assert order["payment"]["provider"] and order["payment"]["provider_reference"]
        assert [x["line_id"] for x in order["lines"]] == [f"L{n + 1}" for n in range(len(order["lines"]))]
        assert len({x["sku"] for x in order["lines"]}) == len(order["lines"])
    for code in ("sg1", "vn1"):
        for refund in wallet.refunds(code):
            order = wallet.get_order(code, refund["order_id"])
            assert order is not None and order["status"] in ("refunded", "partially_refunded")
            line = next(x for x in order["lines"] if x["line_id"] == refund["line_id"])
            assert Decimal(refund["amount"]["amount"]) == (
                Decimal(line["unit_price"]["amount"]) * refund["quantity"]
            )
            assert refund["delivered"] is False  # nothing was delivered yet
            assert order["updated_at"] >= refund["created_at"] >= order["created_at"]
            assert datetime.fromisoformat(refund["created_at"]) <= END


def test_generator_never_sells_more_than_shown() -> None:
    wallet = WalletSandbox(SITES)
    stock(wallet, "sg1", {"A": 5, "B": 3, "C": 0, "D": -1})  # D: never shown a number
    stock(wallet, "sg1", {"F": 40}, status="frozen")
    orders = wallet.generate_sales(100, seed=1, start=START, end=END, refund_rate=0.0)
    assert 0 < len(orders) < 100  # it ran out
    assert sold(orders) == {"A": 5, "B": 3}
    assert wallet.inventory("sg1")["A"] == {"available": 0, "shown": 5,
                                            "as_of": (START - timedelta(days=1)).isoformat()}
    assert wallet.generate_sales(10, seed=2, start=START, end=END) == []
    assert wallet.oversold("sg1") == {}

    # a new number shown: sold from again
    wallet.set_inventory("sg1", {"A": 2})
    assert sold(wallet.generate_sales(10, seed=3, start=START, end=END)) == {"A": 2}

    # overselling on purpose
    more = wallet.generate_sales(30, seed=4, start=START, end=END, respect_availability=False)
    assert len(more) == 30
    over = sold(more)
    assert set(over) <= {"A", "B", "C", "D"} and "D" in over  # frozen F still never sold
    assert wallet.oversold("sg1") == dict(over)


def test_background_sales_and_refunds(wallet: WalletSandbox) -> None:
    stock(wallet, "sg1", {f"A{i}": 1000 for i in range(5)})
    wallet.start_sales(400, seed=5, refund_rate=0.5, refund_delay_s=(0.01, 0.05))
    with pytest.raises(RuntimeError):
        wallet.start_sales(1)
    deadline = time.monotonic() + 5
    while (len(wallet.refunds("sg1")) < 3 or wallet.order_count("sg1") < 20) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.02)
    made = wallet.stop_sales()
    assert not wallet.sales_running
    assert not [t for t in threading.enumerate() if t.name == "sandbox-wallet-sales"]
    assert made == wallet.order_count("sg1") >= 20
    assert len(wallet.refunds("sg1")) >= 3
    types = Counter(e["type"] for e in wallet.events("sg1"))
    assert types["order.confirmed"] == made
    assert types["refund.created"] == len(wallet.refunds("sg1"))


def test_generate_refunds_says_what_was_delivered(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    stock(wallet, "sg1", {"A": 100})
    orders = wallet.generate_sales(10, seed=1, start=START, end=END, refund_rate=0.0)
    for n, order in enumerate(orders[:5]):
        line = order["lines"][0]
        codes = [f"CODE-{n}-{i}-XYZ" for i in range(line["quantity"])]
        assert deliver(sg1, order["order_id"], "L1", codes, f"k-{n}").status_code == 201
    refunds = wallet.generate_refunds(10, seed=2)
    assert len({r["order_id"] for r in refunds}) == 10
    delivered_orders = {o["order_id"] for o in orders[:5]}
    for refund in refunds:
        assert refund["delivered"] == (refund["order_id"] in delivered_orders)


# ---- listing -------------------------------------------------------------------------------------


def test_list_orders(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    stock(wallet, "sg1", {f"A{i}": 100 for i in range(10)})
    stock(wallet, "sg2", {"B": 100})
    orders = wallet.generate_sales(150, seed=9, start=START, end=END, refund_rate=0.2)
    mine = [o for o in orders if o["site"] == "sg1"]
    listed = list_all(sg1, "/orders", limit=7)
    assert sorted(o["order_id"] for o in listed) == sorted(o["order_id"] for o in mine)
    keys = [(datetime.fromisoformat(o["updated_at"]), o["order_id"]) for o in listed]
    assert keys == sorted(keys)
    assert listed == wallet.orders("sg1")

    refunded = list_all(sg1, "/orders", status="refunded", limit=3)
    assert refunded and all(o["status"] == "refunded" for o in refunded)
    assert len(refunded) == sum(1 for o in mine if o["status"] == "refunded")
    page = sg1.get("/orders", params={"status": "cancelled"}).json()
    assert page == {"items": [], "next_cursor": None}

    middle = START + timedelta(days=3)
    since = list_all(sg1, "/orders", updated_since=middle.isoformat())
    assert since and {o["order_id"] for o in since} == {
        o["order_id"] for o in mine if datetime.fromisoformat(o["updated_at"]) >= middle
    }

    one = mine[0]
    assert sg1.get(f"/orders/{one['order_id']}").json() == wallet.get_order("sg1", one["order_id"])
    r = sg1.get("/orders/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    # another site's order is not this site's
    other = next(o for o in orders if o["site"] == "sg2")
    assert sg1.get(f"/orders/{other['order_id']}").status_code == 404

    for params in ({"limit": 0}, {"limit": 501}, {"status": "lost"}, {"cursor": "garbage!"},
                   {"updated_since": "2026-11-01"}, {"updated_since": "2026-11-01T00:00:00"}):
        r = sg1.get("/orders", params=params)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", params


def test_refunds_update_orders(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    wallet.clock = lambda: datetime(2026, 11, 10, tzinfo=UTC)
    stock(wallet, "sg1", {"A": 10, "B": 10})
    order = wallet.create_order("sg1", [("A", 3), ("B", 1)], method="paypal",
                                at=datetime(2026, 11, 9, tzinfo=UTC))
    oid = order["order_id"]
    assert order["payment"]["amount"] == {"amount": "50.00", "currency": "SGD"}
    assert order["payment"]["provider"] == "paypal"
    assert deliver(sg1, oid, "L1", ["AAAA-0001-XYZ"], "d1").status_code == 201

    watermark = datetime(2026, 11, 9, 12, tzinfo=UTC)
    wallet.clock = lambda: datetime(2026, 11, 10, tzinfo=UTC)
    refunds = wallet.refund("sg1", oid, "L1", 3)  # 2 undelivered first, then the delivered one
    assert [(r["quantity"], r["delivered"]) for r in refunds] == [(2, False), (1, True)]
    assert [r["amount"] for r in refunds] == [{"amount": "25.00", "currency": "SGD"},
                                              {"amount": "12.50", "currency": "SGD"}]
    after = wallet.get_order("sg1", oid)
    assert after is not None and after["status"] == "partially_refunded"
    assert after["updated_at"] == "2026-11-10T08:00:00.000000+08:00"
    assert after["created_at"] == order["created_at"]
    changed = list_all(sg1, "/orders", updated_since=watermark.isoformat())
    assert [o["order_id"] for o in changed] == [oid]
    assert wallet.line_state("sg1", oid, "L1") == {
        "quantity": 3, "delivered": 1, "refunded_delivered": 1, "refunded_undelivered": 2,
        "undelivered": 0,
    }
    r = deliver(sg1, oid, "L1", ["AAAA-0002-XYZ"], "d2")  # nothing left to deliver
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"

    with pytest.raises(ValueError):
        wallet.refund("sg1", oid, "L1", 1)  # all three are refunded already
    with pytest.raises(ValueError):
        wallet.refund("sg1", oid, "L9", 1)
    wallet.clock = lambda: datetime(2026, 11, 11, tzinfo=UTC)
    [last] = wallet.refund("sg1", oid, "L2", 1)
    assert last["delivered"] is False
    final = wallet.get_order("sg1", oid)
    assert final is not None and final["status"] == "refunded"

    listed = list_all(sg1, "/refunds", limit=2)
    assert listed == wallet.refunds("sg1") and len(listed) == 3
    assert set(listed[0]) == {"refund_id", "order_id", "line_id", "quantity", "amount",
                              "delivered", "created_at"}
    recent = list_all(sg1, "/refunds", updated_since="2026-11-10T12:00:00Z")
    assert [r["refund_id"] for r in recent] == [last["refund_id"]]
    assert sg1.get("/refunds", params={"updated_since": "soon"}).status_code == 400
    types = [e["type"] for e in wallet.events("sg1")]
    assert types == ["order.confirmed", "refund.created", "refund.created", "order.updated",
                     "refund.created", "order.updated"]


def test_cancel(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    stock(wallet, "sg1", {"A": 10})
    first = wallet.create_order("sg1", [("A", 1)])
    second = wallet.create_order("sg1", [("A", 2)])
    assert deliver(sg1, second["order_id"], "L1", ["CODE-0000-1"], "k").status_code == 201
    with pytest.raises(ValueError):
        wallet.cancel("sg1", second["order_id"])  # delivered: refund it instead
    cancelled = wallet.cancel("sg1", first["order_id"])
    assert cancelled["status"] == "cancelled"
    assert [o["order_id"] for o in list_all(sg1, "/orders", status="cancelled")] == [
        first["order_id"]
    ]
    r = deliver(sg1, first["order_id"], "L1", ["CODE-0000-2"], "k2")
    assert r.status_code == 409
    with pytest.raises(ValueError):
        wallet.refund("sg1", first["order_id"], "L1", 1)


# ---- deliveries ----------------------------------------------------------------------------------


def test_delivery_and_its_idempotency(
    wallet: WalletSandbox, sg1: httpx.Client, wallet_served: ServedSandbox
) -> None:
    wallet.clock = lambda: datetime(2026, 11, 22, 2, tzinfo=UTC)
    stock(wallet, "sg1", {"A": 10})
    order = wallet.create_order("sg1", [("A", 2)])
    oid = order["order_id"]
    body = {"line_id": "L1", "codes": [
        {"code": "GIFT-AAAA-BBBB-1234", "pin": "9876", "expires_at": "2027-12-31T23:59:59+08:00"},
    ]}  # fmt: skip
    r = sg1.post(f"/orders/{oid}/deliveries", json=body, headers={"Idempotency-Key": "dk-1"})
    assert r.status_code == 201, r.text
    first = r.json()
    assert first == {
        "delivery_id": first["delivery_id"], "order_id": oid, "line_id": "L1",
        "codes": [{"code": "****1234", "pin": "****", "expires_at": "2027-12-31T23:59:59+08:00"}],
        "delivered_at": "2026-11-22T10:00:00.000000+08:00",
    }
    # a repeat (say the answer was lost): the first Delivery, nothing applied
    for _ in range(2):
        r = sg1.post(f"/orders/{oid}/deliveries", json=body, headers={"Idempotency-Key": "dk-1"})
        assert r.status_code == 200 and r.json() == first
    assert wallet.effects.keys("delivery.created") == {f"sg1:{oid}:L1": 1}
    [effect] = wallet.effects.entries("delivery.created")
    assert effect["count"] == 1
    assert wallet.delivered_codes("sg1", oid, "L1") == [{
        "code": "GIFT-AAAA-BBBB-1234", "pin": "9876", "expires_at": "2027-12-31T23:59:59+08:00",
        "delivery_id": first["delivery_id"],
    }]  # fmt: skip

    # the second unit with another key; then the line is fully delivered
    r = deliver(sg1, oid, "L1", ["GIFT-CCCC-DDDD-5678"], "dk-2")
    assert r.status_code == 201 and r.json()["codes"] == [{"code": "****5678"}]
    r = deliver(sg1, oid, "L1", ["GIFT-EEEE-FFFF-0000"], "dk-3")
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
    assert wallet.effects.count("delivery.created") == 2
    assert [c["code"] for c in wallet.delivered_codes("sg1", oid, "L1")] == [
        "GIFT-AAAA-BBBB-1234", "GIFT-CCCC-DDDD-5678"
    ]
    assert wallet.deliveries("sg1")[0] == first
    # the first key still answers the first Delivery
    r = sg1.post(f"/orders/{oid}/deliveries", json=body, headers={"Idempotency-Key": "dk-1"})
    assert r.status_code == 200 and r.json() == first
    # ... but not for another order
    other = wallet.create_order("sg1", [("A", 1)])
    r = deliver(sg1, other["order_id"], "L1", ["GIFT-X-0001"], "dk-1")
    assert r.status_code == 409
    # keys are per site: sg2 knows nothing of sg1's
    stock(wallet, "sg2", {"S": 1})
    sg2_order = wallet.create_order("sg2", [("S", 1)])
    with httpx.Client(base_url=f"{wallet_served.base_url}/sg2/api/v1",
                      headers={"X-Api-Key": "key-sg2"}) as sg2:  # fmt: skip
        r = deliver(sg2, sg2_order["order_id"], "L1", ["GIFT-SG2-0001"], "dk-1")
        assert r.status_code == 201
    assert wallet.effects.count("delivery.created") == 3


def test_delivery_errors(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    stock(wallet, "sg1", {"A": 10})
    oid = wallet.create_order("sg1", [("A", 2)])["order_id"]
    r = deliver(sg1, oid, "L1", ["C-00001"], None)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    assert "Idempotency-Key" in r.json()["error"]["message"]
    r = deliver(sg1, oid, "L1", ["C-00001", "C-00002", "C-00003"], "k")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid"
    assert deliver(sg1, "nope", "L1", ["C-00001"], "k").status_code == 404
    r = deliver(sg1, oid, "L7", ["C-00001"], "k")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = deliver(sg1, oid, "L1", ["C-00001", "C-00001"], "k")
    assert r.status_code == 422
    assert [d["field"] for d in r.json()["error"]["details"]] == ["codes[1].code"]
    bad_bodies = [
        {"line_id": "L1", "codes": []},
        {"line_id": "L1"},
        {"codes": [{"code": "C-1"}]},
        {"line_id": "L1", "codes": [{"code": ""}]},
        {"line_id": "L1", "codes": [{"code": "C-1", "colour": "red"}]},
        {"line_id": "L1", "codes": [{"code": "C-1", "expires_at": "2027-01-01"}]},
        {"line_id": "L1", "codes": [{"code": "C-1", "pin": 1234}]},
        {"line_id": "L1", "codes": ["C-1"]},
        ["L1"],
    ]
    for body in bad_bodies:
        r = sg1.post(f"/orders/{oid}/deliveries", json=body, headers={"Idempotency-Key": "k"})
        assert r.status_code == 422, body
    r = sg1.post(f"/orders/{oid}/deliveries", content=b"{", headers={"Idempotency-Key": "k"})
    assert r.status_code == 400
    assert wallet.effects.count() == 0 and wallet.deliveries("sg1") == []

    # a code delivered once is never accepted again on this site
    assert deliver(sg1, oid, "L1", ["C-00001"], "k").status_code == 201
    oid2 = wallet.create_order("sg1", [("A", 1)])["order_id"]
    r = deliver(sg1, oid2, "L1", ["C-00001"], "k-other")
    assert r.status_code == 422 and "****0001" in r.json()["error"]["details"][0]["message"]


def test_lost_answer_then_retry(wallet: WalletSandbox, sg1: httpx.Client) -> None:
    stock(wallet, "sg1", {"A": 10})
    oid = wallet.create_order("sg1", [("A", 1)])["order_id"]
    wallet.faults.set(drop_rate=1.0, drop_when="after", count=1, method="POST")
    with pytest.raises(httpx.TransportError):
        deliver(sg1, oid, "L1", ["LOST-ANSWER-0001"], "key-1")
    r = deliver(sg1, oid, "L1", ["LOST-ANSWER-0001"], "key-1")
    assert r.status_code == 200 and r.json()["codes"] == [{"code": "****0001"}]
    assert wallet.effects.count("delivery.created") == 1
    assert len(wallet.delivered_codes("sg1", oid, "L1")) == 1


def test_no_code_value_leaves_the_site(wallet: WalletSandbox, sg1: httpx.Client,
                                       wallet_served: ServedSandbox) -> None:  # fmt: skip
    stock(wallet, "sg1", {"A": 10})
    oid = wallet.create_order("sg1", [("A", 3)])["order_id"]
    secrets = ["SECRET-CODE-VALUE-0001", "SECRET-CODE-VALUE-0002", "PIN-SECRET-77"]
    body = {"line_id": "L1", "codes": [{"code": secrets[0], "pin": secrets[2]},
                                       {"code": secrets[1]}]}  # fmt: skip
    answers = [
        sg1.post(f"/orders/{oid}/deliveries", json=body, headers={"Idempotency-Key": "s1"}),
        sg1.post(f"/orders/{oid}/deliveries", json=body, headers={"Idempotency-Key": "s1"}),
        deliver(sg1, oid, "L1", [secrets[0]], "s2"),  # refused: already delivered
        sg1.post(f"/orders/{oid}/deliveries?code={secrets[1][:6]}", json=body),  # no key
    ]
    assert [a.status_code for a in answers] == [201, 200, 422, 400]
    with httpx.Client(base_url=wallet_served.base_url) as admin:
        seen = [
            json.dumps(wallet.requests()),
            json.dumps(wallet.effects.entries(), default=str),
            json.dumps([{k: v for k, v in e.items() if k != "body"} for e in wallet.events()]),
            admin.get("/_sandbox/requests").text,
            admin.get("/_sandbox/effects").text,
            *(a.text for a in answers),
        ]
    for text in seen:
        for value in secrets:
            assert value not in text
    assert [c["code"] for c in wallet.delivered_codes("sg1", oid, "L1")] == secrets[:2]


# ---- helpers and persistence ---------------------------------------------------------------------


def test_site_timezone_and_currency(wallet: WalletSandbox) -> None:
    assert wallet.site_timezone("vn1").key == "Asia/Ho_Chi_Minh"
    assert wallet.site_currency("id1") == "IDR" and wallet.site_currency("sg2") == "SGD"
    assert wallet.webhook_secret("sg1") == "sandbox-webhook-secret-sg1"


def test_save_and_load_everything(tmp_path: Path) -> None:
    wallet = WalletSandbox(SITES)
    stock(wallet, "sg1", {f"A{i}": 30 for i in range(5)})
    stock(wallet, "vn1", {"V": 30})
    wallet.generate_sales(40, seed=1, start=START, end=END, refund_rate=0.2)
    wallet.freeze("sg1", "A4", "audit")
    order = next(o for o in wallet.orders("sg1") if o["status"] == "confirmed")
    line = order["lines"][0]
    served = serve(wallet)
    try:
        with httpx.Client(base_url=f"{served.base_url}/sg1/api/v1",
                          headers={"X-Api-Key": "key-sg1"}) as sg1:  # fmt: skip
            r = sg1.put("/batches:batch", json={"items": [
                {"sku": "A0", "batch_no": "B1", "available": 5, "status": "active"}]})
            assert r.status_code == 200
            codes = [f"PERSIST-{i:04d}" for i in range(line["quantity"])]
            first = deliver(sg1, order["order_id"], line["line_id"], codes, "persist-1")
            assert first.status_code == 201
    finally:
        served.stop()
    path = wallet.save(tmp_path / "wallet.json")

    loaded = WalletSandbox.load(path, sites=SITES)
    for code in ("sg1", "vn1"):
        assert loaded.products(code) == wallet.products(code)
        assert loaded.orders(code) == wallet.orders(code)
        assert loaded.refunds(code) == wallet.refunds(code)
        assert loaded.deliveries(code) == wallet.deliveries(code)
        assert loaded.inventory(code) == wallet.inventory(code)
        assert loaded.batches(code) == wallet.batches(code)
    assert loaded.delivered_codes("sg1", order["order_id"], line["line_id"]) == (
        wallet.delivered_codes("sg1", order["order_id"], line["line_id"])
    )
    assert [(e["id"], e["body"]) for e in loaded.events()] == [
        (e["id"], e["body"]) for e in wallet.events()
    ]
    # ids continue where they stopped, and the generator sells from what is left
    more = loaded.generate_sales(5, seed=2, start=END, end=END + timedelta(days=1))
    ids = {o["order_id"] for o in wallet.orders("sg1") + wallet.orders("vn1")}
    assert more and not ids & {o["order_id"] for o in more}
    assert loaded.events()[-1]["seq"] > wallet.events()[-1]["seq"]
    # the loaded site still knows the keys and the codes it received
    with serve(loaded) as again, httpx.Client(
        base_url=f"{again.base_url}/sg1/api/v1", headers={"X-Api-Key": "key-sg1"}
    ) as sg1:
        r = deliver(sg1, order["order_id"], line["line_id"], ["ANY-0000"], "persist-1")
        assert r.status_code == 200 and r.json() == first.json()
        other = loaded.create_order("sg1", [("A0", 1)])
        r = deliver(sg1, other["order_id"], "L1", ["PERSIST-0000"], "persist-2")
        assert r.status_code == 422  # already delivered before the restart
