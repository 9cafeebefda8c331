"""The supplier sandbox: issues codes once per Idempotency-Key, repeats the first answer,
refuses a reused key with another body, lists redemptions by cursor and makes statements."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from sandbox.core import ServedSandbox, serve
from sandbox.supplier import DEFAULT_TOKEN, SupplierSandbox
from tests.conftest import fresh_supplier

AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}


@pytest.fixture
def served(supplier_served: ServedSandbox) -> ServedSandbox:
    return supplier_served


@pytest.fixture
def sup(supplier_served: ServedSandbox) -> SupplierSandbox:
    return fresh_supplier(supplier_served, pattern="GC10-XXXX-9999")


@pytest.fixture
def client(served: ServedSandbox, sup: SupplierSandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.base_url, headers=AUTH, timeout=10) as c:
        yield c


def issue(client: httpx.Client, key: str, sku: str = "GC-10", quantity: int = 2,
          order_ref: str = "sg1:O1:L1") -> httpx.Response:
    return client.post("/v1/codes:issue", headers={"Idempotency-Key": key},
                       json={"sku": sku, "quantity": quantity, "order_ref": order_ref})


def test_issue_makes_codes_in_the_skus_format(client, sup):
    answer = issue(client, "issue-sg1-O1-L1", quantity=3)
    assert answer.status_code == 201
    body = answer.json()
    assert body["issue_id"] and len(body["codes"]) == 3
    for code in body["codes"]:
        assert re.fullmatch(r"GC10-[A-Z0-9]{4}-\d{4}", code["code"])
        assert re.fullmatch(r"\d{4}", code["pin"])
        assert code["expires_at"].endswith("T23:59:59Z")
    assert len({c["code"] for c in body["codes"]}) == 3
    assert sup.effects.count("codes.issued", "issue-sg1-O1-L1") == 1
    assert sup.issued("GC-10") == [c["code"] for c in body["codes"]]


def test_same_key_same_body_gives_the_same_codes_and_issues_nothing(client, sup):
    first = issue(client, "issue-sg1-O1-L1")
    again = issue(client, "issue-sg1-O1-L1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert sup.effects.count("codes.issued") == 1
    assert sup.effects.count("codes.repeated", "issue-sg1-O1-L1") == 1
    assert len(sup.issued()) == 2


def test_same_key_other_body_is_a_conflict(client, sup):
    assert issue(client, "issue-sg1-O1-L1").status_code == 201
    other = issue(client, "issue-sg1-O1-L1", quantity=3)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "conflict"
    assert sup.effects.count("codes.issued") == 1 and len(sup.issued()) == 2


def test_other_keys_issue_other_codes(client, sup):
    a = issue(client, "issue-sg1-O1-L1").json()["codes"]
    b = issue(client, "issue-sg1-O2-L1").json()["codes"]
    assert not {c["code"] for c in a} & {c["code"] for c in b}
    assert sup.effects.keys("codes.issued") == {"issue-sg1-O1-L1": 1, "issue-sg1-O2-L1": 1}


@pytest.mark.parametrize("headers,status,code", [
    ({}, 401, "unauthorized"),
    ({"Authorization": "Bearer wrong"}, 401, "unauthorized"),
])
def test_auth_is_required(served, sup, headers, status, code):
    with httpx.Client(base_url=served.base_url, timeout=10) as c:
        answer = c.post("/v1/codes:issue", headers={"Idempotency-Key": "k1", **headers},
                        json={"sku": "GC-10", "quantity": 1, "order_ref": "x"})
    assert answer.status_code == status and answer.json()["error"]["code"] == code
    assert sup.effects.count() == 0


@pytest.mark.parametrize("key,body,status", [
    ("", {"sku": "GC-10", "quantity": 1, "order_ref": "x"}, 400),
    ("bad key!", {"sku": "GC-10", "quantity": 1, "order_ref": "x"}, 400),
    ("k1", {"sku": "GC-10", "quantity": 0, "order_ref": "x"}, 422),
    ("k1", {"sku": "GC-10", "quantity": True, "order_ref": "x"}, 422),
    ("k1", {"sku": "GC-10", "quantity": 1}, 422),
    ("k1", {"quantity": 1, "order_ref": "x"}, 422),
])
def test_bad_requests_are_refused_in_the_wallet_envelope(client, sup, key, body, status):
    answer = client.post("/v1/codes:issue", headers={"Idempotency-Key": key} if key else {},
                         json=body)
    assert answer.status_code == status
    assert set(answer.json()["error"]) == {"code", "message", "details"}
    assert sup.effects.count() == 0


def test_strict_supplier_refuses_an_unknown_sku(served, client, sup):
    sup.strict_skus = True
    try:
        answer = issue(client, "k-unknown", sku="NOPE")
    finally:
        sup.strict_skus = False
    assert answer.status_code == 422 and "NOPE" in answer.json()["error"]["message"]


def test_fault_switch_answers_503_and_issues_nothing(client, sup):
    sup.faults.set(error_rate=1.0, count=1, path_prefix="/v1/codes")
    assert issue(client, "k-fault").status_code == 503
    assert issue(client, "k-fault").status_code == 201
    assert sup.effects.count("codes.issued") == 1


def test_redemptions_page_by_cursor_from_since(client, sup):
    codes = [c["code"] for c in issue(client, "k-r", quantity=5).json()["codes"]]
    sup.redeem(codes[:2], at=datetime(2026, 11, 1, 10, tzinfo=UTC), location="store 1")
    sup.redeem(codes[2:], at=datetime(2026, 11, 2, 10, tzinfo=UTC))
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = client.get("/v1/redemptions", params=params).json()
        seen.extend(body["items"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and sorted(i["code"] for i in seen) == sorted(codes)
    assert seen[0]["location"] == "store 1" and "location" not in seen[-1]
    later = client.get("/v1/redemptions", params={"since": "2026-11-02T00:00:00Z"}).json()
    assert sorted(i["code"] for i in later["items"]) == sorted(codes[2:])
    assert client.get("/v1/redemptions", params={"since": "yesterday"}).status_code == 400
    assert client.get("/v1/redemptions", params={"cursor": "!!"}).status_code == 400


def test_statement_counts_the_month(client, sup):
    codes = [c["code"] for c in issue(client, "k-s", quantity=4).json()["codes"]]
    sup.redeem(codes[:1])
    month = datetime.now(UTC).strftime("%Y-%m")
    body = client.get(f"/v1/statements/{month}").json()
    assert body == {"issued": 4, "redeemed": 1,
                    "amount_due": {"amount": "38.00", "currency": "EUR"}}
    assert client.get("/v1/statements/2001-01").json()["issued"] == 0
    assert client.get("/v1/statements/2026-13").status_code == 400


def test_issued_codes_survive_a_restart(tmp_path: Path):
    path = tmp_path / "supplier.json"
    first = SupplierSandbox(state_path=path)
    with serve(first) as s, httpx.Client(base_url=s.base_url, headers=AUTH) as c:
        codes = issue(c, "k-p").json()
    first.save()
    second = SupplierSandbox.load(path)
    with serve(second) as s, httpx.Client(base_url=s.base_url, headers=AUTH) as c:
        again = issue(c, "k-p")
        other = issue(c, "k-q").json()
    assert again.status_code == 200 and again.json() == codes
    assert not {x["code"] for x in other["codes"]} & {x["code"] for x in codes["codes"]}
