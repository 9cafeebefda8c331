"""SuiteQL as docs/erp-records.md ("SuiteQL subset") describes it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sandbox.core import ServedSandbox, serve
from sandbox.erp import ERROR_MEDIA_TYPE, ErpSandbox

from .conftest import SITES, NetSuiteAuth
from .erp_helpers import SUITEQL, error_code, error_detail, error_path, rows, suiteql

COLLECTION = "application/vnd.oracle.resource+json; type=collection"


def _items() -> list[dict[str, Any]]:
    def item(rid: str, sku: str, face: Any, currency: str, kind: str, modified: str,
             **over: Any) -> dict[str, Any]:  # fmt: skip
        rec = {
            "id": rid, "externalId": sku, "itemId": sku, "displayName": None,
            "isInactive": False, "custitem_vf_kind": kind, "custitem_vf_face_value": face,
            "custitem_vf_currency": currency, "createdDate": "2026-10-01T00:00:00Z",
            "lastModifiedDate": modified,
        }  # fmt: skip
        rec.update(over)
        return {k: v for k, v in rec.items() if v is not None}

    return [
        item("1", "A-1", 10.00, "SGD", "gift_card", "2026-11-01T10:00:00Z",
             displayName="Alpha", custitem_vf_code_format="^[0-9]{16}$"),
        item("2", "A-2", 12.5, "SGD", "amount_coupon", "2026-11-01T23:30:00Z",
             displayName="Bravo", isInactive=True),
        item("3", "B_3", 0.1, "MYR", "gift_card", "2026-11-02T00:00:00Z", displayName="Charlie"),
        item("9", "C-9", 1000, "MYR", "own_voucher", "2026-11-03T08:15:00Z"),
        item("10", "C-10", 18.155, "VND", "gift_card", "2026-11-05T12:00:00Z",
             displayName="Delta", externalId=None),
    ]  # fmt: skip


def seed_ledger(erp: ErpSandbox) -> None:
    erp.seed_records("inventoryItem", _items())
    erp.seed_records("vendor", [
        {"externalId": "V-1", "companyName": "ACME", "currency": "SGD"},
        {"externalId": "V-2", "companyName": "Beta", "currency": "MYR", "isInactive": True},
    ])  # fmt: skip
    lines = {"items": [{"item": {"id": "1"}, "amount": 10}, {"item": {"id": "1"}, "amount": 20}]}
    stamp = {"lastModifiedDate": "2026-11-04T00:00:00Z"}
    erp.seed_records("purchaseOrder", [{"id": "100", "externalId": "PO-100", "entity": {"id": "1"},
                                        "tranDate": "2026-11-01", "currency": "SGD", "item": lines, **stamp}])
    erp.seed_records("vendorBill", [{"id": "101", "entity": {"id": "1"}, "tranDate": "2026-11-02",
                                     "status": "open", "item": lines, **stamp}])
    erp.seed_records("salesOrder", [{"id": "102", "tranDate": "2026-11-03", "otherRefNum": "SO-9",
                                     "item": {"items": [{"quantity": 2, "rate": 2.75}]}, **stamp}])
    erp.seed_records("customrecord_vf_batch", [
        {"name": "B-1", "custrecord_vf_batch_sku": {"id": "1"}, "custrecord_vf_batch_quantity": 100,
         "custrecord_vf_batch_available": 60, "custrecord_vf_batch_unit_cost": 0.35,
         "custrecord_vf_batch_expires_on": "2027-01-31"},
        {"name": "B-2", "custrecord_vf_batch_sku": {"id": "1"}, "custrecord_vf_batch_quantity": 50,
         "custrecord_vf_batch_available": 50, "custrecord_vf_batch_unit_cost": 0.4},
        {"name": "B-3", "custrecord_vf_batch_sku": {"id": "3"}, "custrecord_vf_batch_quantity": 10,
         "custrecord_vf_batch_available": 0},
    ])  # fmt: skip


@pytest.fixture
def ledger(erp: ErpSandbox) -> ErpSandbox:
    seed_ledger(erp)
    return erp


def ids(client: httpx.Client, q: str) -> list[str]:
    return [r["id"] for r in rows(client, q)]


# ---- WHERE ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("custitem_vf_currency = 'SGD'", ["1", "2"]),
        ("custitem_vf_currency <> 'SGD'", ["3", "9", "10"]),
        ("custitem_vf_currency != 'SGD'", ["3", "9", "10"]),
        ("custitem_vf_face_value < 12.5", ["1", "3"]),
        ("custitem_vf_face_value <= 12.5", ["1", "2", "3"]),
        ("custitem_vf_face_value > 12.5", ["9", "10"]),
        ("custitem_vf_face_value >= '1000'", ["9"]),  # a text literal read as a number
        ("12.5 < custitem_vf_face_value", ["9", "10"]),  # literal first
        ("id > 9", ["10"]),  # a number, not text ("10" < "9")
        ("id > -1 AND id < 3", ["1", "2"]),
        ("id = 3", ["3"]),
        ("id IN (1, '3', 10)", ["1", "3", "10"]),
        ("custitem_vf_kind NOT IN ('gift_card')", ["2", "9"]),
        ("itemid LIKE 'A-%'", ["1", "2"]),
        ("itemid LIKE '_-1%'", ["1", "10"]),
        ("itemid LIKE 'B\\_%' ESCAPE '\\'", ["3"]),
        ("itemid NOT LIKE 'A%'", ["3", "9", "10"]),
        ("itemid = 'a-1'", []),  # case-sensitive, as in Oracle
        ("displayname IS NULL", ["9"]),
        ("externalid IS NOT NULL", ["1", "2", "3", "9"]),
        ("custitem_vf_face_value BETWEEN 1 AND 12.5", ["1", "2"]),
        ("custitem_vf_face_value NOT BETWEEN 1 AND 12.5", ["3", "9", "10"]),
        ("id BETWEEN 2 AND 9", ["2", "3", "9"]),
        ("isinactive = 'T'", ["2"]),
        ("NOT isinactive = 'T'", ["1", "3", "9", "10"]),
        # AND binds tighter than OR
        ("custitem_vf_currency = 'SGD' OR custitem_vf_currency = 'MYR' AND isinactive = 'F'",
         ["1", "2", "3", "9"]),
        ("(custitem_vf_currency = 'SGD' OR custitem_vf_currency = 'MYR') AND isinactive = 'F'",
         ["1", "3", "9"]),
        # three-valued logic: a NULL is neither equal nor unequal
        ("NOT (displayname = 'Alpha')", ["2", "3", "10"]),
        ("displayname = '' OR displayname IS NULL", ["9"]),
        ("lastmodifieddate >= TO_DATE('2026-11-02', 'YYYY-MM-DD')", ["3", "9", "10"]),
        ("lastmodifieddate < TO_TIMESTAMP('2026-11-01 23:30:00', 'YYYY-MM-DD HH24:MI:SS')", ["1"]),
        ("lastmodifieddate BETWEEN TO_DATE('2026-11-01', 'YYYY-MM-DD') "
         "AND TO_DATE('2026-11-02', 'YYYY-MM-DD')", ["1", "2", "3"]),
        ("lastmodifieddate > '11/3/2026'", ["9", "10"]),
        ("lastmodifieddate > '11/3/2026 8:15 am'", ["10"]),
        ("createddate = TO_DATE('10/1/2026')", ["1", "2", "3", "9", "10"]),
        ("i.isinactive = 'T'", ["2"]),
    ],
)  # fmt: skip
def test_where(ledger: ErpSandbox, erp_client: httpx.Client, where: str, expected: list[str]) -> None:
    assert ids(erp_client, f"SELECT i.id FROM item i WHERE {where}") == expected


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("SELECT id FROM transaction WHERE type IN ('PurchOrd', 'VendBill')", ["100", "101"]),
        ("SELECT id FROM transaction WHERE trandate = TO_DATE('2026-11-02', 'YYYY-MM-DD')", ["101"]),
        ("SELECT id FROM transaction WHERE trandate >= '11/2/2026'", ["101", "102"]),
        ("SELECT id FROM transaction WHERE trandate > TO_TIMESTAMP('2026-11-02 10:00:00', "
         "'YYYY-MM-DD HH24:MI:SS')", ["102"]),
        ("SELECT id FROM transaction WHERE entity = 1", ["100", "101"]),
        ("SELECT id FROM transaction WHERE total > 29.99", ["100", "101"]),
        ("SELECT id FROM transaction WHERE recordtype = 'salesorder'", ["102"]),
        ("SELECT id FROM vendor WHERE isinactive = 'F'", ["1"]),
        ("SELECT id FROM customrecord_vf_batch WHERE custrecord_vf_batch_available < "
         "custrecord_vf_batch_quantity", ["1", "3"]),
        ("SELECT id FROM customrecord_vf_batch WHERE custrecord_vf_batch_expires_on IS NULL", ["2", "3"]),
        ("SELECT id FROM customrecord_vf_batch WHERE custrecord_vf_batch_sku = '1'", ["1", "2"]),
        ("select ID from ITEM where CUSTITEM_VF_CURRENCY = 'SGD'", ["1", "2"]),
        ("SELECT id FROM item -- a comment\n WHERE /* another */ id = 1", ["1"]),
    ],
)  # fmt: skip
def test_tables(ledger: ErpSandbox, erp_client: httpx.Client, q: str, expected: list[str]) -> None:
    assert ids(erp_client, q) == expected


# ---- values --------------------------------------------------------------------------------------


def test_values_are_strings_and_nulls_are_left_out(ledger: ErpSandbox, erp_client: httpx.Client) -> None:
    got = {r["id"]: r for r in rows(erp_client, "SELECT * FROM item WHERE id IN (1, 9, 10)")}
    assert got["1"] == {
        "id": "1", "itemtype": "InvtPart", "externalid": "A-1", "itemid": "A-1",
        "displayname": "Alpha", "isinactive": "F", "custitem_vf_kind": "gift_card",
        "custitem_vf_face_value": "10", "custitem_vf_currency": "SGD",
        "custitem_vf_code_format": "^[0-9]{16}$",
        "createddate": "10/1/2026 12:00 am", "lastmodifieddate": "11/1/2026 10:00 am",
    }  # fmt: skip
    assert "displayname" not in got["9"] and got["9"]["custitem_vf_face_value"] == "1000"
    assert "externalid" not in got["10"] and got["10"]["custitem_vf_face_value"] == "18.155"
    assert all(isinstance(v, str) for r in got.values() for v in r.values())

    [po] = rows(erp_client, "SELECT * FROM transaction WHERE id = 100")
    assert po == {
        "id": "100", "type": "PurchOrd", "recordtype": "purchaseorder", "externalid": "PO-100",
        "entity": "1", "trandate": "11/1/2026", "currency": "SGD", "total": "30",
        "createddate": po["createddate"], "lastmodifieddate": "11/4/2026 12:00 am",
    }  # fmt: skip
    [so] = rows(erp_client, "SELECT id, total, otherrefnum FROM transaction WHERE id = 102")
    assert so == {"id": "102", "total": "5.5", "otherrefnum": "SO-9"}
    batches = rows(erp_client, "SELECT name, custrecord_vf_batch_sku AS sku, "
                   "custrecord_vf_batch_unit_cost cost, custrecord_vf_batch_expires_on FROM customrecord_vf_batch")
    assert batches == [
        {"name": "B-1", "sku": "1", "cost": "0.35", "custrecord_vf_batch_expires_on": "1/31/2027"},
        {"name": "B-2", "sku": "1", "cost": "0.4"},
        {"name": "B-3", "sku": "3"},
    ]


def test_numbers_have_no_exponent_or_float_artefacts(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    from decimal import Decimal

    values = [Decimal("1E+3"), Decimal("0.30"), 0.1 + 0.7, Decimal("-0.000001"), 12345678901234567890,
              Decimal("123456789012.345678")]  # fmt: skip
    erp.seed_records("customrecord_vf_batch",
                     [{"name": str(i), "custrecord_vf_batch_unit_cost": v} for i, v in enumerate(values)])  # fmt: skip
    got = [r["c"] for r in rows(erp_client, "SELECT custrecord_vf_batch_unit_cost AS c FROM customrecord_vf_batch")]
    assert got == ["1000", "0.3", "0.7999999999999999", "-0.000001", "12345678901234567890",
                   "123456789012.345678"]  # fmt: skip


def test_to_char_and_aliases(ledger: ErpSandbox, erp_client: httpx.Client) -> None:
    q = (
        "SELECT id, TO_CHAR(lastmodifieddate, 'YYYY-MM-DD\"T\"HH24:MI:SS') AS modified, "
        "TO_CHAR(lastmodifieddate, 'MM/DD/YY HH12:MI AM'), TO_CHAR(custitem_vf_face_value) "
        "FROM item WHERE id = 2"
    )
    assert rows(erp_client, q) == [
        {"id": "2", "modified": "2026-11-01T23:30:00", "expr1": "11/01/26 11:30 PM", "expr2": "12.5"}
    ]


def test_dates_are_in_the_account_time_zone() -> None:
    erp = ErpSandbox(account_timezone="Asia/Singapore")
    seed_ledger(erp)
    _, items = erp.query(
        "SELECT id, lastmodifieddate, TO_CHAR(lastmodifieddate, 'YYYY-MM-DD\"T\"HH24:MI:SS') AS t "
        "FROM item WHERE lastmodifieddate >= TO_DATE('2026-11-02', 'YYYY-MM-DD') AND id < 10"
    )
    # 2026-11-02 00:00 in Singapore is 2026-11-01T16:00Z: item 2 (23:30Z) is on the 2nd there
    assert items == [
        {"links": [], "id": "2", "lastmodifieddate": "11/2/2026 7:30 am", "t": "2026-11-02T07:30:00"},
        {"links": [], "id": "3", "lastmodifieddate": "11/2/2026 8:00 am", "t": "2026-11-02T08:00:00"},
        {"links": [], "id": "9", "lastmodifieddate": "11/3/2026 4:15 pm", "t": "2026-11-03T16:15:00"},
    ]
    stamp = "TO_TIMESTAMP('2026-11-01 18:00:00', 'YYYY-MM-DD HH24:MI:SS')"  # 10:00Z there
    assert erp.query(f"SELECT id FROM item WHERE lastmodifieddate < {stamp}")[1] == []
    assert erp.query(f"SELECT id FROM item WHERE lastmodifieddate <= {stamp}")[1] == [{"links": [], "id": "1"}]


# ---- aggregates ----------------------------------------------------------------------------------


def test_aggregates_with_group_by(ledger: ErpSandbox, erp_client: httpx.Client) -> None:
    q = (
        "SELECT custitem_vf_currency AS cur, COUNT(*) AS n, COUNT(displayname), "
        "SUM(custitem_vf_face_value) AS total, MIN(lastmodifieddate), MAX(custitem_vf_face_value) "
        "FROM item GROUP BY custitem_vf_currency ORDER BY n DESC, cur"
    )
    assert rows(erp_client, q) == [
        {"cur": "MYR", "n": "2", "expr1": "1", "total": "1000.1", "expr2": "11/2/2026 12:00 am",
         "expr3": "1000"},
        {"cur": "SGD", "n": "2", "expr1": "2", "total": "22.5", "expr2": "11/1/2026 10:00 am",
         "expr3": "12.5"},
        {"cur": "VND", "n": "1", "expr1": "1", "total": "18.155", "expr2": "11/5/2026 12:00 pm",
         "expr3": "18.155"},
    ]  # fmt: skip
    q = "SELECT type, COUNT(*) AS n, SUM(total) AS total FROM transaction GROUP BY type ORDER BY type"
    assert rows(erp_client, q) == [
        {"type": "PurchOrd", "n": "1", "total": "30"},
        {"type": "SalesOrd", "n": "1", "total": "5.5"},
        {"type": "VendBill", "n": "1", "total": "30"},
    ]
    q = "SELECT COUNT(*) AS n, SUM(custitem_vf_face_value) AS s, MAX(itemid) AS m FROM item WHERE id > 100"
    assert rows(erp_client, q) == [{"n": "0"}]  # one row over no rows; NULL sum and max left out
    assert rows(erp_client, "SELECT custitem_vf_kind FROM item WHERE id > 100 GROUP BY custitem_vf_kind") == []
    q = ("SELECT TO_CHAR(MAX(lastmodifieddate), 'YYYY-MM-DD\"T\"HH24:MI:SS') AS hw, COUNT(*) "
         "FROM item WHERE isinactive = 'F'")  # fmt: skip
    assert rows(erp_client, q) == [{"hw": "2026-11-05T12:00:00", "expr1": "4"}]
    q = "SELECT custitem_vf_kind, COUNT(*) FROM item GROUP BY custitem_vf_kind ORDER BY COUNT(*) DESC"
    assert rows(erp_client, q)[0] == {"custitem_vf_kind": "gift_card", "expr1": "3"}


# ---- ORDER BY ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("custitem_vf_face_value DESC", ["9", "10", "2", "1", "3"]),
        ("custitem_vf_face_value ASC", ["3", "1", "2", "10", "9"]),
        ("displayname", ["1", "2", "3", "10", "9"]),  # NULLS LAST ascending
        ("displayname DESC", ["9", "10", "3", "2", "1"]),  # NULLS FIRST descending
        ("displayname NULLS FIRST", ["9", "1", "2", "3", "10"]),
        ("displayname DESC NULLS LAST", ["10", "3", "2", "1", "9"]),
        ("custitem_vf_currency, id DESC", ["9", "3", "2", "1", "10"]),
        ("2 DESC", ["9", "10", "3", "2", "1"]),  # position in the select list (itemid)
        ("fv", ["3", "1", "2", "10", "9"]),  # an alias
        ("id DESC", ["10", "9", "3", "2", "1"]),
        ("lastmodifieddate DESC", ["10", "9", "3", "2", "1"]),
    ],
)
def test_order_by(ledger: ErpSandbox, erp_client: httpx.Client, order: str, expected: list[str]) -> None:
    q = f"SELECT id, itemid, custitem_vf_face_value AS fv FROM item ORDER BY {order}"
    assert ids(erp_client, q) == expected


# ---- the protocol -------------------------------------------------------------------------------


def test_paging_envelope(ledger: ErpSandbox, erp_client: httpx.Client) -> None:
    q = "SELECT id FROM item ORDER BY id DESC"
    base = str(erp_client.base_url).rstrip("/") + SUITEQL
    pages = []
    for offset in (0, 2, 4):
        r = suiteql(erp_client, q, limit=2, offset=offset)
        assert r.status_code == 200 and r.headers["content-type"] == COLLECTION
        pages.append(r.json())
    assert [[i["id"] for i in p["items"]] for p in pages] == [["10", "9"], ["3", "2"], ["1"]]
    assert [p["count"] for p in pages] == [2, 2, 1]
    assert [p["hasMore"] for p in pages] == [True, True, False]
    assert {p["totalResults"] for p in pages} == {5}
    assert [p["offset"] for p in pages] == [0, 2, 4]
    assert pages[0]["items"][0] == {"links": [], "id": "10"}
    rels = {link["rel"]: link["href"] for link in pages[1]["links"]}
    assert rels == {
        "previous": f"{base}?limit=2&offset=0", "first": f"{base}?limit=2&offset=0",
        "next": f"{base}?limit=2&offset=4", "last": f"{base}?limit=2&offset=4",
        "self": f"{base}?limit=2&offset=2",
    }  # fmt: skip
    assert suiteql(erp_client, q, offset=10).json()["items"] == []
    # the default page is 1000 rows
    assert suiteql(erp_client, q).json()["count"] == 5


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"headers": {}}, "Prefer: transient"),
        ({"headers": {"Prefer": "respond-async"}}, "Prefer: transient"),
        ({"params": {"limit": 1001}}, "The maximum is 1000"),
        ({"params": {"limit": 0}}, "minimum"),
        ({"params": {"offset": -1}}, "minimum"),
        ({"params": {"offset": 99_001}}, "100000"),
        ({"params": {"offset": 100_000, "limit": 1}}, "100000"),
        ({"json": {"query": "SELECT id FROM item"}}, '{"q"'),
        ({"json": {"q": "SELECT id FROM item", "x": 1}}, "'x'"),
        ({"json": ["SELECT id FROM item"]}, "JSON object"),
    ],
)
def test_refused_requests(
    ledger: ErpSandbox, erp_client: httpx.Client, kwargs: dict[str, Any], fragment: str
) -> None:
    args: dict[str, Any] = {"json": {"q": "SELECT id FROM item"}, "headers": {"Prefer": "transient"}}
    args.update(kwargs)
    r = erp_client.post(SUITEQL, **args)
    assert r.status_code == 400 and r.headers["content-type"] == ERROR_MEDIA_TYPE
    assert error_code(r) == "INVALID_PARAMETER" and fragment in error_detail(r)


def test_prefer_may_carry_several_preferences(ledger: ErpSandbox, erp_client: httpx.Client) -> None:
    r = erp_client.post(SUITEQL, json={"q": "SELECT id FROM item"},
                        headers={"Prefer": "return=minimal, Transient"})  # fmt: skip
    assert r.status_code == 200
    r = suiteql(erp_client, "SELECT id FROM item", offset=99_000, limit=1000)  # exactly at the cap
    assert r.status_code == 200 and r.json()["items"] == []


@pytest.mark.parametrize(
    ("q", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("SELECT id", "expected FROM"),
        ("DELETE FROM item", "expected SELECT"),
        ("SELECT id FROM account", "unknown table 'account'"),
        ("SELECT colour FROM item", "unknown column 'colour'"),
        ("SELECT id FROM item WHERE colour = 'red'", "unknown column 'colour'"),
        ("SELECT x.id FROM item i", "unknown table or alias 'x'"),
        ("SELECT item FROM transaction", "unknown column 'item'"),  # sublists are not columns
        ("SELECT id FROM item JOIN vendor ON 1 = 1", "joins are not supported"),
        ("SELECT id FROM item, vendor", "joins are not supported"),
        ("SELECT id FROM item WHERE id IN (SELECT id FROM vendor)", "subqueries"),
        ("SELECT id FROM (SELECT id FROM item)", "subqueries"),
        ("SELECT DISTINCT id FROM item", "DISTINCT"),
        ("SELECT id FROM item UNION SELECT id FROM vendor", "UNION"),
        ("SELECT id FROM item WHERE itemid = 'open", "unterminated text literal"),
        ("SELECT id FROM item WHERE id > :last", "bind variables"),
        ("SELECT id FROM item WHERE id = 1;", "';'"),
        ("SELECT id FROM item WHERE id = 1 id = 2", "unexpected 'id'"),
        ("SELECT id FROM item WHERE (id = 1", "expected ')'"),
        ("SELECT id FROM item WHERE id = 1)", "unexpected ')'"),
        ("SELECT id FROM item WHERE", "a condition is missing"),
        ("SELECT id FROM item WHERE id", "expected a comparison operator"),
        ("SELECT id FROM item WHERE id = NULL", "IS [NOT] NULL"),
        ("SELECT id + 1 FROM item", "arithmetic"),
        ("SELECT UPPER(itemid) FROM item", "function UPPER is not supported"),
        ("SELECT id FROM item WHERE itemid = 5", "cannot compare itemid (text) with 5"),
        ("SELECT id FROM item WHERE id = 'one'", "'one' is not a number"),
        ("SELECT id FROM item WHERE lastmodifieddate > '2026-11-01'", "M/D/YYYY"),
        ("SELECT id FROM item WHERE lastmodifieddate > 5", "cannot compare"),
        ("SELECT id FROM item WHERE lastmodifieddate > TO_DATE('2026-13-01', 'YYYY-MM-DD')", "not a valid date"),
        ("SELECT id FROM item WHERE lastmodifieddate > TO_DATE('11/01/2026', 'YYYY-MM-DD')", "does not match"),
        ("SELECT id FROM item WHERE lastmodifieddate > TO_DATE('2026-11-01', 'YYYY-MM-QQ')", "date format not recognized"),
        ("SELECT id FROM item WHERE lastmodifieddate > TO_DATE(itemid, 'YYYY')", "TO_DATE takes a text literal"),
        ("SELECT TO_CHAR(itemid, 'YYYY') FROM item", "dates and datetimes only"),
        ("SELECT id FROM item WHERE itemid LIKE displayname", "text literal pattern"),
        ("SELECT id FROM item WHERE id IN (id)", "literals only"),
        ("SELECT SUM(itemid) FROM item", "SUM needs a number"),
        ("SELECT itemid, COUNT(*) FROM item", "not a GROUP BY expression"),
        ("SELECT * FROM item GROUP BY itemid", "SELECT * cannot"),
        ("SELECT COUNT(DISTINCT itemid) FROM item", "DISTINCT inside COUNT"),
        ("SELECT MAX(COUNT(*)) FROM item", "cannot be nested"),
        ("SELECT id FROM item WHERE COUNT(*) > 1", "not allowed here"),
        ("SELECT itemid, COUNT(*) FROM item GROUP BY itemid HAVING COUNT(*) > 1", "HAVING"),
        ("SELECT id FROM item ORDER BY 3", "position 3 is not in the select list"),
        ("SELECT id FROM item ORDER BY id NULLS MIDDLE", "FIRST or LAST"),
        ("SELECT id FROM item FETCH FIRST 10 ROWS ONLY", "FETCH"),
        ("SELECT id FROM item WHERE id ~ 1", "unexpected character '~'"),
    ],
)
def test_malformed_queries(ledger: ErpSandbox, erp_client: httpx.Client, q: str, fragment: str) -> None:
    r = suiteql(erp_client, q)
    assert r.status_code == 400, r.text
    assert error_code(r) == "INVALID_PARAMETER" and error_path(r) == "q"
    assert fragment in error_detail(r)
    assert error_detail(r).startswith("Invalid or unsupported SuiteQL query: ")


def test_results_follow_writes(ledger: ErpSandbox, erp_client: httpx.Client) -> None:
    q = "SELECT id FROM item WHERE custitem_vf_currency = 'VND'"
    assert ids(erp_client, q) == ["10"]
    ledger.touch("inventoryItem", "9", custitem_vf_currency="VND")
    assert ids(erp_client, q) == ["9", "10"]
    ledger.reset()
    assert ids(erp_client, q) == []


# ---- large sets ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big() -> Iterator[ServedSandbox]:
    erp = ErpSandbox(sites=SITES)
    erp.seed_inventory_items(250_000, invalid=7, seed=1)
    with serve(erp) as served:
        yield served


def test_key_range_walk_over_250k(big: ServedSandbox) -> None:
    erp = big.sandbox
    assert isinstance(erp, ErpSandbox)
    seen: list[str] = []
    times: list[float] = []
    with httpx.Client(base_url=big.base_url, auth=NetSuiteAuth(), timeout=30) as c:
        last = 0
        while True:
            started = time.perf_counter()
            page = suiteql(c, f"SELECT id, itemid, lastmodifieddate FROM item WHERE id > {last} ORDER BY id",
                           limit=1000).json()  # fmt: skip
            times.append(time.perf_counter() - started)
            if not page["items"]:
                break
            assert page["totalResults"] == 250_007 - last
            seen.extend(i["id"] for i in page["items"])
            last = int(page["items"][-1]["id"])
        # with a filter too: each key range is a bisection into the filtered ids
        active: list[str] = []
        last = 0
        while True:
            q = f"SELECT id FROM item WHERE isinactive = 'F' AND id > {last} ORDER BY id"
            items = suiteql(c, q, limit=1000).json()["items"]
            if not items:
                break
            active.extend(i["id"] for i in items)
            last = int(items[-1]["id"])
    assert len(seen) == 250_007 and len(set(seen)) == 250_007
    assert seen == [str(i) for i in range(1, 250_008)]
    expected = [rid for rid, rec in erp.records["inventoryItem"].items() if not rec["isInactive"]]
    assert active == sorted(expected, key=int)
    steady = sorted(times[1:])
    assert steady[len(steady) // 2] < 0.05, f"median page took {steady[len(steady) // 2]:.3f} s"
    assert steady[int(len(steady) * 0.95)] < 0.1, f"p95 page took {steady[int(len(steady) * 0.95)]:.3f} s"


def test_the_100k_cap_on_a_large_set(big: ServedSandbox) -> None:
    with httpx.Client(base_url=big.base_url, auth=NetSuiteAuth(), timeout=30) as c:
        first = suiteql(c, "SELECT id FROM item", limit=1000).json()
        assert first["totalResults"] == 250_007 and first["hasMore"]
        at_cap = suiteql(c, "SELECT id FROM item", limit=1000, offset=99_000).json()
        assert at_cap["items"][-1]["id"] == "100000" and at_cap["hasMore"]
        r = suiteql(c, "SELECT id FROM item", limit=1000, offset=99_500)
        assert r.status_code == 400 and error_code(r) == "INVALID_PARAMETER"
        assert "WHERE id > :last" in error_detail(r)
        # the next key range carries on where the cap stopped
        nxt = suiteql(c, "SELECT id FROM item WHERE id > 100000 ORDER BY id", limit=1000).json()
        assert nxt["items"][0]["id"] == "100001" and nxt["totalResults"] == 150_007
