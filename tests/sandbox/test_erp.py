"""The ERP sandbox against the NetSuite REST behaviour in DESIGN.md and docs/erp-records.md."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from oauthlib.oauth1 import SIGNATURE_HMAC_SHA1

from sandbox.core import serve
from sandbox.erp import (
    DEFAULT_CREDENTIALS,
    ERROR_MEDIA_TYPE,
    INVALID_REASONS,
    Credentials,
    ErpSandbox,
    QueryError,
    compile_query,
)
from sandbox.money import MINOR_UNITS
from sandbox.sites import load_sites

from .conftest import RECORDS, SITES, NetSuiteAuth

ITEMS = f"{RECORDS}/inventoryItem"


def item(sku: str, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "externalId": sku,
        "itemId": sku,
        "displayName": f"Grab SGD 10 voucher {sku}",
        "isInactive": False,
        "custitem_vf_kind": "amount_coupon",
        "custitem_vf_face_value": 10.0,
        "custitem_vf_currency": "SGD",
        "custitem_vf_sales_areas": "sg1,sg2",
        "custitem_vf_issuance_mode": "code_pool",
        "custitem_vf_write_off_type": "on_redemption",
        "custitem_vf_status": "normal",
    }
    body.update(over)
    return body


def error_code(response: httpx.Response) -> str:
    return response.json()["o:errorDetails"][0]["o:errorCode"]


def error_detail(response: httpx.Response) -> str:
    return response.json()["o:errorDetails"][0]["detail"]


def list_all(client: httpx.Client, url: str, **params: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Follow ``next`` links to the end: (ids, pages)."""
    ids: list[str] = []
    pages: list[dict[str, Any]] = []
    response = client.get(url, params=params)
    while True:
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page)
        ids.extend(i["id"] for i in page["items"])
        nxt = [link["href"] for link in page["links"] if link["rel"] == "next"]
        if not nxt:
            return ids, pages
        response = client.get(nxt[0])


def fixed_clock(iso: str) -> Any:
    value = datetime.fromisoformat(iso)
    return lambda: value


# ---- create / read / update / delete ----------------------------------------------------------


def test_create_answers_204_with_location(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    erp.clock = fixed_clock("2026-11-20T08:15:00+00:00")
    r = erp_client.post(ITEMS, json=item("SKU-1"))
    assert r.status_code == 204 and r.content == b""
    location = r.headers["Location"]
    assert location.startswith(str(erp_client.base_url).rstrip("/") + ITEMS + "/")
    rid = location.rsplit("/", 1)[1]
    got = erp_client.get(location)
    assert got.status_code == 200
    rec = got.json()
    assert rec["id"] == rid and rec["externalId"] == "SKU-1" and rec["itemId"] == "SKU-1"
    assert rec["links"] == [{"rel": "self", "href": location}]
    assert rec["createdDate"] == rec["lastModifiedDate"] == "2026-11-20T08:15:00Z"
    assert erp.effects.keys("inventoryItem.created") == {"SKU-1": 1}


def test_create_refuses_duplicate_external_id(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    assert erp_client.post(ITEMS, json=item("SKU-1")).status_code == 204
    r = erp_client.post(ITEMS, json=item("SKU-1"))
    assert r.status_code == 400
    assert r.headers["content-type"] == ERROR_MEDIA_TYPE
    body = r.json()
    assert body["status"] == 400 and body["title"] == "Bad Request"
    assert body["type"] == "https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.1"
    assert error_code(r) == "USER_ERROR" and "SKU-1" in error_detail(r)
    assert erp.count("inventoryItem") == 1 and erp.effects.count("inventoryItem.created") == 1


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ({"externalId": "X-1"}, "USER_ERROR", "itemId"),
        ({"itemId": "X", "colour": "red"}, "INVALID_PARAMETER", "colour"),
        ({"itemId": "X", "isInactive": "no"}, "INVALID_PARAMETER", "isInactive"),
        ({"itemId": "X", "custitem_vf_face_value": "10"}, "INVALID_PARAMETER", "face_value"),
        ({"itemId": "X", "externalId": "has space"}, "INVALID_PARAMETER", "externalId"),
    ],
)
def test_create_validation(
    erp: ErpSandbox, erp_client: httpx.Client, body: dict[str, Any], code: str, fragment: str
) -> None:
    r = erp_client.post(ITEMS, json=body)
    assert r.status_code == 400 and error_code(r) == code and fragment in error_detail(r)
    assert erp.effects.count() == 0


def test_types_without_a_schema_are_stored_as_sent(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    url = f"{RECORDS}/customrecord_other"
    r = erp_client.post(url, json={"custrecord_anything": 5, "name": "B-1", "rate": 0.1})
    assert r.status_code == 204
    rid = r.headers["Location"].rsplit("/", 1)[1]
    assert erp.effects.keys("customrecord_other.created") == {rid: 1}
    got = erp_client.get(f"{url}/{rid}")
    assert got.json()["custrecord_anything"] == 5
    assert b'"rate":0.1' in got.content  # numbers come back exactly as sent
    assert erp.get_record("customrecord_other", rid)["rate"] == Decimal("0.1")  # type: ignore[index]
    assert erp_client.get(url).json()["totalResults"] == 1
    assert erp_client.get(f"{RECORDS}/vendor").json()["totalResults"] == 0


def test_get_by_internal_and_external_id(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    rid = erp.set_record("inventoryItem", item("SKU-9"))
    assert erp_client.get(f"{ITEMS}/{rid}").json()["itemId"] == "SKU-9"
    assert erp_client.get(f"{ITEMS}/eid:SKU-9").json()["id"] == rid
    for ref in ("999", "eid:NOPE"):
        r = erp_client.get(f"{ITEMS}/{ref}")
        assert r.status_code == 404 and error_code(r) == "NONEXISTENT_ID"
    assert erp_client.get(f"{ITEMS}/abc").status_code == 400


def test_patch_changes_only_sent_fields_and_null_clears(
    erp: ErpSandbox, erp_client: httpx.Client
) -> None:
    erp.clock = fixed_clock("2026-11-01T00:00:00+00:00")
    rid = erp.set_record("inventoryItem", item("SKU-1", custitem_vf_code_format="^[0-9]{16}$"))
    erp.clock = fixed_clock("2026-11-02T03:04:05+00:00")
    r = erp_client.patch(
        f"{ITEMS}/eid:SKU-1", json={"displayName": "New name", "custitem_vf_code_format": None}
    )
    assert r.status_code == 204
    rec = erp.get_record("inventoryItem", rid)
    assert rec is not None
    assert rec["displayName"] == "New name"
    assert "custitem_vf_code_format" not in rec
    assert rec["custitem_vf_face_value"] == 10.0 and rec["itemId"] == "SKU-1"
    assert rec["lastModifiedDate"] == "2026-11-02T03:04:05Z"
    assert rec["createdDate"] == "2026-11-01T00:00:00Z"
    [effect] = erp.effects.entries("inventoryItem.updated")
    assert effect["key"] == "SKU-1" and effect["fields"] == ["custitem_vf_code_format", "displayName"]

    # a PATCH that changes nothing is an "unchanged" effect and keeps lastModifiedDate
    erp.clock = fixed_clock("2026-11-03T00:00:00+00:00")
    assert erp_client.patch(f"{ITEMS}/{rid}", json={"displayName": "New name"}).status_code == 204
    assert erp.effects.count("inventoryItem.unchanged", "SKU-1") == 1
    assert erp.get_record("inventoryItem", rid)["lastModifiedDate"] == "2026-11-02T03:04:05Z"  # type: ignore[index]

    assert erp_client.patch(f"{ITEMS}/777", json={"displayName": "x"}).status_code == 404


def test_put_on_external_id_is_an_upsert(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    url = f"{ITEMS}/eid:SKU-7"
    body = item("SKU-7", custitem_vf_code_format="^[A-Z]{4}$")
    body.pop("externalId")
    r = erp_client.put(url, json=body)
    assert r.status_code == 204
    rid = r.headers["Location"].rsplit("/", 1)[1]
    assert erp_client.put(url, json=body).status_code == 204  # same content
    replacement = {**body, "displayName": "Replaced"}
    del replacement["custitem_vf_code_format"]
    r = erp_client.put(url, json=replacement)
    assert r.status_code == 204 and r.headers["Location"].endswith(f"/{rid}")
    rec = erp.get_record("inventoryItem", "eid:SKU-7")
    assert rec is not None and rec["id"] == rid and rec["externalId"] == "SKU-7"
    assert rec["displayName"] == "Replaced" and "custitem_vf_code_format" not in rec
    assert [e["kind"] for e in erp.effects.entries(key="SKU-7")] == [
        "inventoryItem.created", "inventoryItem.unchanged", "inventoryItem.updated",
    ]  # fmt: skip
    assert erp.count("inventoryItem") == 1


def test_put_needs_an_external_id(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    rid = erp.set_record("inventoryItem", item("SKU-1"))
    r = erp_client.put(f"{ITEMS}/{rid}", json=item("SKU-1"))
    assert r.status_code == 400 and error_code(r) == "INVALID_PARAMETER"
    r = erp_client.put(f"{ITEMS}/eid:SKU-1", json=item("OTHER"))
    assert r.status_code == 400 and error_code(r) == "INVALID_PARAMETER"
    assert erp.effects.count() == 0


def test_delete(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    rid = erp.set_record("inventoryItem", item("SKU-1"))
    assert erp_client.delete(f"{ITEMS}/eid:SKU-1").status_code == 204
    assert erp_client.get(f"{ITEMS}/{rid}").status_code == 404
    assert erp.effects.keys("inventoryItem.deleted") == {"SKU-1": 1}
    assert erp_client.delete(f"{ITEMS}/{rid}").status_code == 404
    # the external id is free again
    assert erp_client.post(ITEMS, json=item("SKU-1")).status_code == 204


# ---- collections ------------------------------------------------------------------------------


def test_paging_is_complete_ordered_and_linked(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    erp.seed_inventory_items(2340, invalid=5, seed=3)
    ids, pages = list_all(erp_client, ITEMS)
    assert len(ids) == 2345 and len(set(ids)) == 2345
    assert ids == sorted(ids, key=int)
    assert [p["count"] for p in pages] == [1000, 1000, 345]
    assert [p["offset"] for p in pages] == [0, 1000, 2000]
    assert [p["hasMore"] for p in pages] == [True, True, False]
    assert {p["totalResults"] for p in pages} == {2345}
    base = str(erp_client.base_url).rstrip("/") + ITEMS

    def rels(page: dict[str, Any]) -> dict[str, str]:
        return {link["rel"]: link["href"] for link in page["links"]}

    first, middle, last = (rels(p) for p in pages)
    assert first == {
        "next": f"{base}?limit=1000&offset=1000",
        "last": f"{base}?limit=1000&offset=2000",
        "self": f"{base}?limit=1000&offset=0",
    }
    assert set(middle) == {"previous", "first", "next", "last", "self"}
    assert middle["previous"] == f"{base}?limit=1000&offset=0"
    assert set(last) == {"previous", "first", "self"}
    item0 = pages[0]["items"][0]
    assert item0 == {"links": [{"rel": "self", "href": f"{base}/{item0['id']}"}], "id": item0["id"]}


def test_paging_limits(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    for i in (10, 9, 100, 2):
        erp.set_record("inventoryItem", {"id": str(i), "itemId": f"S{i}"})
    page = erp_client.get(ITEMS, params={"limit": 3}).json()
    assert [x["id"] for x in page["items"]] == ["2", "9", "10"] and page["hasMore"]
    page = erp_client.get(ITEMS, params={"limit": 3, "offset": 3}).json()
    assert [x["id"] for x in page["items"]] == ["100"] and not page["hasMore"]
    page = erp_client.get(ITEMS, params={"offset": 50}).json()
    assert page["items"] == [] and page["count"] == 0 and page["totalResults"] == 4
    for params in ({"limit": 1001}, {"limit": 0}, {"offset": -1}, {"limit": "ten"}):
        r = erp_client.get(ITEMS, params=params)
        assert r.status_code == 400 and error_code(r) == "INVALID_PARAMETER", params
    assert "1000" in error_detail(erp_client.get(ITEMS, params={"limit": 1001}))


# ---- q ------------------------------------------------------------------------------------------

STAMPS = {
    "1": "2026-11-21T23:59:59Z",
    "2": "2026-11-22T00:00:00Z",
    "3": "2026-11-22T22:15:30Z",
    "4": "2026-11-22T22:16:00Z",
    "5": "2026-11-23T00:00:00Z",
}


@pytest.fixture
def stamped(erp: ErpSandbox) -> ErpSandbox:
    kinds = {"1": "gift_card", "2": "amount_coupon", "3": "gift_card", "4": "own_voucher", "5": "gift_card"}
    for rid, stamp in STAMPS.items():
        erp.set_record(
            "inventoryItem",
            item(
                f"SKU-{rid}", id=rid, lastModifiedDate=stamp, createdDate="2026-01-01T00:00:00Z",
                custitem_vf_kind=kinds[rid], custitem_vf_face_value=float(rid) * 10,
                isInactive=rid == "4",
                custitem_vf_code_format="^[0-9]{16}$" if rid in ("1", "2") else None,
            ),
        )  # fmt: skip
    return erp


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ('lastModifiedDate ON "11/22/2026"', ["2", "3", "4"]),
        ('lastModifiedDate AFTER "11/22/2026"', ["5"]),
        ('lastModifiedDate BEFORE "11/22/2026"', ["1"]),
        ('lastModifiedDate ON_OR_AFTER "11/22/2026"', ["2", "3", "4", "5"]),
        ('lastModifiedDate ON_OR_BEFORE "11/22/26"', ["1", "2", "3", "4"]),
        ('lastModifiedDate ON "11/22/2026 10:15 pm"', ["3"]),
        ('lastModifiedDate AFTER "11/22/2026 10:15 pm"', ["4", "5"]),
        ('lastModifiedDate ON_OR_AFTER "11/22/2026 10:15 PM"', ["3", "4", "5"]),
        ('lastModifiedDate BEFORE "11/22/2026 12:00 am"', ["1"]),
        ('createdDate ON "1/1/2026"', ["1", "2", "3", "4", "5"]),
        ('custitem_vf_kind IS "GIFT_CARD"', ["1", "3", "5"]),
        ('custitem_vf_kind IS_NOT "gift_card"', ["2", "4"]),
        ('itemId START_WITH "sku-"', ["1", "2", "3", "4", "5"]),
        ('displayName CONTAIN "SKU-3"', ["3"]),
        ("isInactive IS true", ["4"]),
        ('isInactive IS "false"', ["1", "2", "3", "5"]),
        ("custitem_vf_face_value GREATER 30", ["4", "5"]),
        ("custitem_vf_face_value GREATER_OR_EQUAL 30", ["3", "4", "5"]),
        ("custitem_vf_face_value LESS 20.5", ["1", "2"]),
        ("custitem_vf_face_value LESS_OR_EQUAL 10", ["1"]),
        ("custitem_vf_face_value EQUAL 50", ["5"]),
        ("custitem_vf_code_format EMPTY", ["3", "4", "5"]),
        ("custitem_vf_code_format EMPTY_NOT", ["1", "2"]),
        ('custitem_vf_kind IS "gift_card" AND lastModifiedDate ON "11/22/2026"', ["3"]),
        ('custitem_vf_kind IS "own_voucher" OR lastModifiedDate BEFORE "11/22/2026"', ["1", "4"]),
        # AND binds tighter than OR
        ('isInactive IS true OR custitem_vf_kind IS "gift_card" AND custitem_vf_face_value LESS 20',
         ["1", "4"]),
        ('(isInactive IS true OR custitem_vf_kind IS "gift_card") AND custitem_vf_face_value LESS 20',
         ["1"]),
    ],
)  # fmt: skip
def test_q_filters(stamped: ErpSandbox, erp_client: httpx.Client, q: str, expected: list[str]) -> None:
    r = erp_client.get(ITEMS, params={"q": q})
    assert r.status_code == 200, r.text
    page = r.json()
    assert [i["id"] for i in page["items"]] == expected
    assert page["totalResults"] == len(expected)


@pytest.mark.parametrize(
    ("q", "fragment"),
    [
        ('lastModifiedDate SOMEDAY "11/22/2026"', "unknown operator 'SOMEDAY'"),
        ("lastModifiedDate ON", "missing value"),
        ('lastModifiedDate ON "22/11/2026"', "Invalid date value"),
        ('lastModifiedDate ON "11/22/2026 13:15 pm"', "hour must be 1-12"),
        ('lastModifiedDate ON "2026-11-22"', "expected M/D/YYYY"),
        ("lastModifiedDate ON 11/22/2026", "unexpected character"),
        ('(custitem_vf_kind IS "gift_card"', "missing ')'"),
        ('custitem_vf_kind IS "gift_card")', "unbalanced ')'"),
        ('custitem_vf_kind IS "gift_card', "unterminated string"),
        ('custitem_vf_kind IS "a" custitem_vf_kind IS "b"', "expected AND or OR"),
        ('colour IS "red"', "unknown field 'colour'"),
        ('custitem_vf_kind GREATER 3', "needs a number field"),
        ('custitem_vf_face_value ON "11/22/2026"', "needs a date field"),
        ("isInactive IS maybe", "true or false"),
        ("AND", "expected a field name"),
        ('custitem_vf_kind IS "a" AND', "unexpected end"),
    ],
)
def test_malformed_q_is_invalid_parameter(
    stamped: ErpSandbox, erp_client: httpx.Client, q: str, fragment: str
) -> None:
    r = erp_client.get(ITEMS, params={"q": q})
    assert r.status_code == 400
    assert error_code(r) == "INVALID_PARAMETER"
    assert fragment in error_detail(r)


def test_q_dates_are_read_in_the_account_time_zone() -> None:
    singapore = compile_query('lastModifiedDate ON "11/22/2026"', ZoneInfo("Asia/Singapore"))
    assert singapore({"lastModifiedDate": "2026-11-21T16:00:00Z"})
    assert singapore({"lastModifiedDate": "2026-11-22T15:59:59Z"})
    assert not singapore({"lastModifiedDate": "2026-11-22T16:00:00Z"})
    assert not singapore({"lastModifiedDate": "2026-11-21T15:59:59Z"})
    # a day with a DST change is 23 hours long
    paris = compile_query('lastModifiedDate ON "3/29/2026"', ZoneInfo("Europe/Paris"))
    assert paris({"lastModifiedDate": "2026-03-29T21:59:59Z"})
    assert not paris({"lastModifiedDate": "2026-03-29T22:00:00Z"})
    with pytest.raises(QueryError):
        compile_query("", ZoneInfo("UTC"))


def test_q_paging_keeps_the_filter(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    erp.seed_inventory_items(3000, seed=5)
    q = 'custitem_vf_currency IS "SGD" OR custitem_vf_currency IS "VND"'
    ids, pages = list_all(erp_client, ITEMS, q=q, limit=400)
    expected = [
        rid for rid, rec in erp.records["inventoryItem"].items()
        if rec["custitem_vf_currency"] in ("SGD", "VND")
    ]  # fmt: skip
    assert sorted(ids, key=int) == sorted(expected, key=int) and len(set(ids)) == len(ids)
    assert all("q=" in link["href"] for p in pages for link in p["links"])


def test_touch_shows_up_in_an_incremental_filter(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    erp.seed_inventory_items(50, modified_at="2026-10-01T00:00:00Z")
    q = 'lastModifiedDate ON_OR_AFTER "11/1/2026"'
    assert erp_client.get(ITEMS, params={"q": q}).json()["totalResults"] == 0
    erp.clock = fixed_clock("2026-11-05T10:00:00+00:00")
    rec = erp.touch("inventoryItem", "7", custitem_vf_status="frozen")
    assert rec["lastModifiedDate"] == "2026-11-05T10:00:00Z"
    page = erp_client.get(ITEMS, params={"q": q}).json()
    assert [i["id"] for i in page["items"]] == ["7"]
    assert erp.effects.count() == 0  # the ERP's own change is not a client effect


# ---- auth ---------------------------------------------------------------------------------------


def _get(erp_client: httpx.Client, auth: httpx.Auth | None) -> httpx.Response:
    return erp_client.get(ITEMS, params={"limit": 5}, auth=auth)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make_auth", "reason"),
    [
        (lambda: NetSuiteAuth(consumer_secret="wrong"), "signature does not match"),
        (lambda: NetSuiteAuth(realm="123456-sb1"), "realm"),
        (lambda: NetSuiteAuth(realm="123456_sb1"), "realm"),
        (lambda: NetSuiteAuth(timestamp=str(int(time.time()) - 600)), "timestamp"),
        (lambda: NetSuiteAuth(timestamp=str(int(time.time()) + 600)), "timestamp"),
        (lambda: NetSuiteAuth(signature_method=SIGNATURE_HMAC_SHA1), "signature method"),
        (lambda: NetSuiteAuth(Credentials("123456_SB1", "other", "s", DEFAULT_CREDENTIALS.token_id, "t")),
         "unknown consumer key"),
        (lambda: NetSuiteAuth(Credentials("123456_SB1", DEFAULT_CREDENTIALS.consumer_key, "s", "other", "t")),
         "unknown token"),
    ],
)  # fmt: skip
def test_oauth_failures(
    erp: ErpSandbox, erp_client: httpx.Client, make_auth: Any, reason: str
) -> None:
    # built when the test runs: a timestamp taken at collection ages with the suite
    r = _get(erp_client, make_auth())
    assert r.status_code == 401 and error_code(r) == "INVALID_LOGIN"
    assert r.json()["title"] == "Unauthorized"
    assert reason in erp.auth_failures[-1]


def test_missing_or_garbled_header(erp: ErpSandbox, erp_served: Any) -> None:
    with httpx.Client(base_url=erp_served.base_url) as plain:
        assert error_code(plain.get(ITEMS)) == "INVALID_LOGIN"
        r = plain.get(ITEMS, headers={"Authorization": "Bearer abc"})
        assert r.status_code == 401
        r = plain.get(ITEMS, headers={"Authorization": 'OAuth realm="123456_SB1", oauth_nonce'})
        assert r.status_code == 401


def test_reused_nonce_is_refused(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    auth = NetSuiteAuth(nonce="fixed-nonce-1", timestamp=str(int(time.time())))
    assert _get(erp_client, auth).status_code == 200
    r = _get(erp_client, auth)
    assert r.status_code == 401 and "nonce" in erp.auth_failures[-1]


def test_query_parameters_are_signed(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    class SignWithoutQuery(NetSuiteAuth):
        def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:  # type: ignore[override]
            signed = httpx.Request(request.method, request.url.copy_with(query=None))
            for r in super().auth_flow(signed):
                request.headers["Authorization"] = r.headers["Authorization"]
            yield request

    r = _get(erp_client, SignWithoutQuery())
    assert r.status_code == 401 and "signature" in erp.auth_failures[-1]


def test_writes_are_signed_too(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    r = erp_client.post(ITEMS, json=item("SKU-1"), auth=NetSuiteAuth(consumer_secret="x"))
    assert r.status_code == 401 and erp.count("inventoryItem") == 0


# ---- governance and faults ---------------------------------------------------------------------


def test_concurrency_limit(erp: ErpSandbox, erp_served: Any) -> None:
    erp.seed_inventory_items(5)
    erp.faults.set(latency_ms=400)
    n = 10
    barrier = threading.Barrier(n)
    responses: list[httpx.Response] = []
    lock = threading.Lock()

    def hit() -> None:
        with httpx.Client(base_url=erp_served.base_url, auth=NetSuiteAuth(), timeout=10) as c:
            barrier.wait()
            r = c.get(f"{ITEMS}/1")
            with lock:
                responses.append(r)

    threads = [threading.Thread(target=hit) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in responses if r.status_code == 200]
    rejected = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(rejected) == n
    assert len(ok) >= 5 and rejected
    for r in rejected:
        assert error_code(r) == "CONCURRENCY_LIMIT_EXCEEDED"
        assert "Retry-After" not in r.headers
    stats = erp.stats.snapshot()
    assert stats["max_admitted"] == 5  # the far end never exceeded the limit
    assert stats["max_in_flight"] > 5  # and it really was pushed past it
    assert stats["rejected_concurrency"] == len(rejected)
    assert stats["in_flight"] == 0 and stats["admitted"] == 0
    assert sum(1 for e in erp.requests() if e.get("rejected") == "concurrency_limit") == len(rejected)


def test_faults_use_the_netsuite_envelope(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    erp.faults.set(error_rate=1.0, count=1)
    r = erp_client.get(ITEMS)
    assert r.status_code == 503 and error_code(r) == "UNEXPECTED_ERROR"
    erp.faults.set(rate_limit_rate=1.0, count=1)
    r = erp_client.get(ITEMS)
    assert r.status_code == 429 and error_code(r) == "CONCURRENCY_LIMIT_EXCEEDED"
    assert "Retry-After" not in r.headers
    assert erp_client.get(ITEMS).status_code == 200


def test_drop_after_create_applies_it(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    erp.faults.set(drop_rate=1.0, drop_when="after", count=1, path_prefix=ITEMS)
    with pytest.raises(httpx.TransportError):
        erp_client.put(f"{ITEMS}/eid:SKU-1", json=item("SKU-1"))
    assert erp.effects.count("inventoryItem.created", "SKU-1") == 1
    # the client's retry is the upsert it should be: no second record
    assert erp_client.put(f"{ITEMS}/eid:SKU-1", json=item("SKU-1")).status_code == 204
    assert erp.count("inventoryItem") == 1
    assert erp.effects.count("inventoryItem.unchanged", "SKU-1") == 1


def test_unknown_route_and_method(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    r = erp_client.get("/services/rest/nothing")
    assert r.status_code == 404 and r.headers["content-type"] == ERROR_MEDIA_TYPE
    r = erp_client.post(f"{ITEMS}/1", json={})
    assert r.status_code == 405 and error_code(r) == "INVALID_PARAMETER"


# ---- seeding ------------------------------------------------------------------------------------


def test_seeded_skus_are_realistic_and_invalid_ones_counted() -> None:
    sites = load_sites()
    erp = ErpSandbox(sites=sites)
    report = erp.seed_inventory_items(3000, invalid=13, seed=11)
    assert len(report.ids) == 3013 and len(report.invalid) == 13
    reasons = list(INVALID_REASONS)
    assert sorted(report.invalid.values()) == sorted(reasons[i % 6] for i in range(13))
    assert erp.invalid_seeds() == report.invalid
    site_currency = {s.code: s.currency for s in sites}
    records = erp.records["inventoryItem"]
    valid = [records[i] for i in report.valid_ids]
    for rec in valid:
        cur = rec["custitem_vf_currency"]
        areas = rec["custitem_vf_sales_areas"].split(",")
        assert areas and all(site_currency[a] == cur for a in areas)
        face = rec["custitem_vf_face_value"]
        assert isinstance(face, Decimal)
        assert face > 0
        if cur in ("VND", "IDR", "TWD"):
            assert face == face.to_integral_value()
        else:
            assert -face.normalize().as_tuple().exponent <= MINOR_UNITS[cur]  # type: ignore[operator]
        assert rec["itemId"] == rec["externalId"] and 1 <= len(rec["itemId"]) <= 64
    assert {r["custitem_vf_kind"] for r in valid} == {
        "in_vitro_coupon", "amount_coupon", "redemption_coupon", "gift_card", "own_voucher",
    }  # fmt: skip
    assert {r["custitem_vf_issuance_mode"] for r in valid} == {"api", "code_pool"}
    assert 0 < sum(r["custitem_vf_status"] == "frozen" for r in valid) < 300
    assert 0 < sum(r["isInactive"] for r in valid) < 300
    assert {r["custitem_vf_currency"] for r in valid} == set(site_currency.values())

    for rid, reason in report.invalid.items():
        rec = records[rid]
        if reason == "face_value_precision":
            face = rec["custitem_vf_face_value"]
            assert -face.as_tuple().exponent > MINOR_UNITS[rec["custitem_vf_currency"]]  # type: ignore[operator]
        elif reason == "unknown_currency":
            assert rec["custitem_vf_currency"] not in MINOR_UNITS
        elif reason == "unknown_kind":
            assert rec["custitem_vf_kind"] == "mystery_box"
        elif reason == "unknown_site":
            assert any(a not in site_currency for a in rec["custitem_vf_sales_areas"].split(","))
        elif reason == "empty_item_id":
            assert rec["itemId"] == "" and "externalId" not in rec
        else:
            assert rec["custitem_vf_face_value"] < 0
    # deterministic
    again = ErpSandbox(sites=sites)
    again.seed_inventory_items(3000, invalid=13, seed=11, modified_at=records["1"]["lastModifiedDate"])
    assert again.records["inventoryItem"] == records


def test_seed_sites_from_the_caller() -> None:
    erp = ErpSandbox(sites=SITES)
    erp.seed_inventory_items(200, seed=1)
    currencies = {r["custitem_vf_currency"] for r in erp.records["inventoryItem"].values()}
    assert currencies == {"SGD", "VND", "IDR"}


def test_seeding_250k_and_serving_them() -> None:
    erp = ErpSandbox(sites=SITES)
    report = erp.seed_inventory_items(250_000, invalid=7, seed=1)
    assert erp.count("inventoryItem") == 250_007 and len(report.invalid) == 7
    with serve(erp) as served, httpx.Client(
        base_url=served.base_url, auth=NetSuiteAuth(), timeout=30
    ) as c:
        page = c.get(ITEMS, params={"offset": 250_000}).json()
        assert page["count"] == 7 and page["totalResults"] == 250_007 and not page["hasMore"]
        q = 'custitem_vf_currency IS "VND" AND isInactive IS false'
        first = c.get(ITEMS, params={"q": q}).json()
        assert 0 < first["totalResults"] < 250_007
        nxt = next(link["href"] for link in first["links"] if link["rel"] == "next")
        assert c.get(nxt).json()["offset"] == 1000


# ---- persistence --------------------------------------------------------------------------------


def test_save_and_load(tmp_path: Path) -> None:
    erp = ErpSandbox(sites=SITES)
    report = erp.seed_inventory_items(100, invalid=6, seed=2)
    erp.set_record("customrecord_vf_batch", {"name": "B-1", "externalId": "batch-1"})
    erp.faults.set(error_rate=1.0)
    path = erp.save(tmp_path / "erp.json")
    loaded = ErpSandbox.load(path, sites=SITES)
    assert loaded.records == erp.records
    assert loaded.invalid_seeds() == report.invalid
    assert loaded.get_record("customrecord_vf_batch", "eid:batch-1") is not None
    assert loaded.faults.rules == []
    # new ids continue after the loaded ones
    loaded.set_record("inventoryItem", {"itemId": "NEW"})
    assert max(int(i) for i in loaded.records["inventoryItem"]) == 107
    assert datetime.fromisoformat(loaded.records["inventoryItem"]["1"]["createdDate"]).tzinfo == UTC
