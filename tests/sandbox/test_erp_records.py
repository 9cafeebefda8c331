"""The schema'd record types of docs/erp-records.md ("Other records"): types, references,
sublists, computed totals, exact numbers, seeding."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.erp import ErpSandbox

from .conftest import RECORDS
from .erp_helpers import error_code, error_detail, error_path


def vendor(eid: str = "V-1", **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "externalId": eid,
        "entityId": eid,
        "companyName": f"Supplier {eid}",
        "currency": "SGD",
        "email": "ap@example.com",
        "isInactive": False,
        "custentity_vf_settlement_mode": "sales_quantity",
        "custentity_vf_contract_signed": True,
        "custentity_vf_bank_account": "123-456-789",
        "custentity_vf_bank_bic": "DBSSSGSG",
        "custentity_vf_country": "SG",
    }
    body.update(over)
    return body


def location_id(response: httpx.Response) -> str:
    assert response.status_code == 204, response.text
    return response.headers["Location"].rsplit("/", 1)[1]


@pytest.fixture
def item_id(erp: ErpSandbox) -> str:
    return erp.set_record("inventoryItem", {"itemId": "SKU-1", "externalId": "SKU-1"})


@pytest.fixture
def vendor_id(erp: ErpSandbox, erp_client: httpx.Client) -> str:
    return location_id(erp_client.post(f"{RECORDS}/vendor", json=vendor()))


def test_vendor_round_trip(erp: ErpSandbox, erp_client: httpx.Client, vendor_id: str) -> None:
    rec = erp_client.get(f"{RECORDS}/vendor/{vendor_id}").json()
    assert rec["custentity_vf_settlement_mode"] == "sales_quantity" and rec["currency"] == "SGD"
    assert erp.effects.keys("vendor.created") == {"V-1": 1}


@pytest.mark.parametrize(
    ("rtype", "body", "path", "fragment"),
    [
        ("vendor", vendor(colour="red"), "colour", "Invalid field 'colour'"),
        ("vendor", vendor(isInactive="no"), "isInactive", "a boolean"),
        ("vendor", vendor(currency="sgd"), "currency", "ISO 4217"),
        ("vendor", vendor(custentity_vf_country="SGP"), "custentity_vf_country", "ISO 3166"),
        ("vendor", vendor(custentity_vf_settlement_mode="monthly"), "custentity_vf_settlement_mode",
         "one of purchased_quantity"),
        ("vendor", vendor(email="nobody"), "email", "email"),
        ("customer", {"entityId": "C", "custentity_vf_site": 7}, "custentity_vf_site", "text"),
        ("purchaseOrder", {"tranDate": "11/22/2026"}, "tranDate", "YYYY-MM-DD"),
        ("purchaseOrder", {"tranDate": "2026-02-30"}, "tranDate", "YYYY-MM-DD"),
        ("purchaseOrder", {"entity": "12"}, "entity", "reference"),
        ("purchaseOrder", {"entity": {"id": "abc"}}, "entity.id", "internal id"),
        ("purchaseOrder", {"entity": {"externalId": "V-1"}}, "entity.externalId", "reference"),
        ("purchaseOrder", {"item": [{"quantity": 1}]}, "item", "sublist"),
        ("purchaseOrder", {"item": {"items": [{"quantity": 1}, {"quantity": "2"}]}},
         "item.items[1].quantity", "a number"),
        ("purchaseOrder", {"item": {"items": [{"colour": "red"}]}}, "item.items[0].colour", "colour"),
        ("purchaseOrder", {"item": {"items": [{"line": 1.5}]}}, "item.items[0].line", "an integer"),
        ("purchaseOrder", {"item": {"items": [{"item": {"id": 0}}]}}, "item.items[0].item.id",
         "internal id"),
        ("vendorBill", {"approvalStatus": "maybe"}, "approvalStatus", "pending, approved"),
        ("vendorPayment", {"apply": {"items": [{"doc": {"id": "1"}, "amount": True}]}},
         "apply.items[0].amount", "a number"),
        ("customrecord_vf_batch", {"name": "B", "custrecord_vf_batch_quantity": 2.5},
         "custrecord_vf_batch_quantity", "an integer"),
        ("customrecord_vf_code", {"name": "1234", "custrecord_vf_code_hash": "xyz"},
         "custrecord_vf_code_hash", "hexadecimal"),
    ],
)  # fmt: skip
def test_unknown_fields_and_wrong_types_are_refused(
    erp: ErpSandbox,
    erp_client: httpx.Client,
    rtype: str,
    body: dict[str, Any],
    path: str,
    fragment: str,
) -> None:
    r = erp_client.post(f"{RECORDS}/{rtype}", json=body)
    assert r.status_code == 400, r.text
    assert error_code(r) == "INVALID_PARAMETER"
    assert error_path(r) == path and fragment in error_detail(r)
    assert erp.effects.count() == 0 and erp.count(rtype) == 0


def test_references_must_exist(
    erp: ErpSandbox, erp_client: httpx.Client, vendor_id: str, item_id: str
) -> None:
    url = f"{RECORDS}/purchaseOrder"
    r = erp_client.post(url, json={"entity": {"id": "999"}})
    assert r.status_code == 400 and error_code(r) == "INVALID_KEY_OR_REF"
    assert error_path(r) == "entity" and "999" in error_detail(r)
    lines = {"items": [{"item": {"id": item_id}}, {"item": {"id": "77"}}]}
    r = erp_client.post(url, json={"entity": {"id": vendor_id}, "item": lines})
    assert r.status_code == 400 and error_path(r) == "item.items[1].item"
    # refName (as a GET sends it back) is accepted and not stored
    r = erp_client.post(url, json={"entity": {"id": vendor_id, "refName": "Supplier V-1"}})
    rec = erp.get_record("purchaseOrder", location_id(r))
    assert rec is not None and rec["entity"] == {"id": vendor_id}
    assert erp.effects.count("purchaseOrder.created") == 1
    # checks can be switched off for tests that build partial data
    erp.check_refs = False
    try:
        assert erp_client.post(url, json={"entity": {"id": "999"}}).status_code == 204
    finally:
        erp.check_refs = True


def test_lines_are_numbered_and_total_is_computed(
    erp: ErpSandbox, erp_client: httpx.Client, vendor_id: str, item_id: str
) -> None:
    url = f"{RECORDS}/purchaseOrder"
    body = {
        "externalId": "PO-1",
        "tranId": "PO-1",
        "entity": {"id": vendor_id},
        "tranDate": "2026-11-22",
        "currency": "SGD",
        "total": 1,  # read-only: ignored
        "item": {"items": [
            {"item": {"id": item_id}, "quantity": 3, "rate": 9.7},  # amount = 29.1
            {"item": {"id": item_id}, "quantity": 1, "rate": 0.1, "amount": 0.2},
        ]},
    }  # fmt: skip
    rid = location_id(erp_client.post(url, json=body))
    got = erp_client.get(f"{url}/{rid}")
    rec = got.json()
    assert [line["line"] for line in rec["item"]["items"]] == [1, 2]
    assert b'"amount":29.1' in got.content and b'"total":29.3' in got.content  # exact, no 29.299999
    stored = erp.get_record("purchaseOrder", rid)
    assert stored is not None and stored["total"] == Decimal("29.3")
    # PATCH replaces the sublist; the total follows
    r = erp_client.patch(f"{url}/{rid}", json={"item": {"items": [{"amount": 5}]}})
    assert r.status_code == 204
    assert erp.get_record("purchaseOrder", rid)["total"] == 5  # type: ignore[index]
    # a PUT upsert with the same content is unchanged, total included
    body.pop("externalId")
    assert erp_client.put(f"{url}/eid:PO-2", json=body).status_code == 204
    assert erp_client.put(f"{url}/eid:PO-2", json=body).status_code == 204
    assert erp.effects.count("purchaseOrder.unchanged", "PO-2") == 1


def test_journal_entries_must_balance(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    url = f"{RECORDS}/journalEntry"
    lines = [{"account": {"id": "10"}, "debit": 10.5}, {"account": {"id": "20"}, "credit": 10.4}]
    r = erp_client.post(url, json={"tranDate": "2026-11-22", "line": {"items": lines}})
    assert r.status_code == 400 and error_code(r) == "USER_ERROR" and "balance" in error_detail(r)
    lines[1]["credit"] = 10.5
    r = erp_client.post(url, json={"tranDate": "2026-11-22", "line": {"items": lines}})
    assert r.status_code == 204


def test_transactions_share_one_id_sequence(
    erp: ErpSandbox, erp_client: httpx.Client, vendor_id: str
) -> None:
    po = location_id(erp_client.post(f"{RECORDS}/purchaseOrder", json={"entity": {"id": vendor_id}}))
    bill = location_id(erp_client.post(f"{RECORDS}/vendorBill", json={"entity": {"id": vendor_id}}))
    so = location_id(erp_client.post(f"{RECORDS}/salesOrder", json={"memo": "x"}))
    assert [int(po), int(bill), int(so)] == [1, 2, 3]
    # entities and custom records keep their own
    assert location_id(erp_client.post(f"{RECORDS}/customer", json={"entityId": "C-1"})) == "1"


def test_q_on_date_and_reference_fields(
    erp: ErpSandbox, erp_client: httpx.Client, vendor_id: str
) -> None:
    url = f"{RECORDS}/purchaseOrder"
    for day in ("2026-11-21", "2026-11-22"):
        erp_client.post(url, json={"tranDate": day, "entity": {"id": vendor_id}})
    erp_client.post(url, json={"memo": "no date"})
    page = erp_client.get(url, params={"q": 'tranDate ON "11/22/2026"'}).json()
    assert [i["id"] for i in page["items"]] == ["2"]
    page = erp_client.get(url, params={"q": 'tranDate ON_OR_BEFORE "11/22/2026"'}).json()
    assert [i["id"] for i in page["items"]] == ["1", "2"]
    page = erp_client.get(url, params={"q": "entity EMPTY"}).json()
    assert [i["id"] for i in page["items"]] == ["3"]
    for q, fragment in [('entity IS "1"', "EMPTY"), ('tranDate ON "11/22/2026 10:00 am"', "without a time")]:
        r = erp_client.get(url, params={"q": q})
        assert r.status_code == 400 and fragment in error_detail(r)


def test_numbers_are_kept_exactly(erp: ErpSandbox, erp_client: httpx.Client) -> None:
    url = f"{RECORDS}/customrecord_vf_batch"
    raw = b'{"name": "B-1", "custrecord_vf_batch_unit_cost": 0.10, "custrecord_vf_batch_quantity": 5}'
    rid = location_id(erp_client.post(url, content=raw, headers={"Content-Type": "application/json"}))
    got = erp_client.get(f"{url}/{rid}")
    assert b'"custrecord_vf_batch_unit_cost":0.10' in got.content
    r = erp_client.post(url, content=b'{"name": "B", "custrecord_vf_batch_unit_cost": NaN}',
                        headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and "Invalid JSON" in error_detail(r)


def test_seed_records(erp: ErpSandbox) -> None:
    ids = erp.seed_records("vendor", [vendor(f"V-{i}") for i in range(3)])
    assert ids == ["1", "2", "3"] and erp.effects.count() == 0
    po_ids = erp.seed_records("purchaseOrder", [
        {"externalId": "PO-1", "entity": {"id": "1"}, "item": {"items": [{"amount": 2.5}, {"amount": 1}]}},
        {"id": "50", "memo": "explicit id", "lastModifiedDate": "2026-01-02T03:04:05Z"},
    ], modified_at="2026-11-01T00:00:00Z")  # fmt: skip
    assert po_ids == ["1", "50"]
    po = erp.get_record("purchaseOrder", "1")
    assert po is not None and po["total"] == Decimal("3.5") and po["item"]["items"][1]["line"] == 2
    assert po["lastModifiedDate"] == "2026-11-01T00:00:00Z"
    assert erp.get_record("purchaseOrder", "50")["lastModifiedDate"] == "2026-01-02T03:04:05Z"  # type: ignore[index]
    assert erp.seed_records("salesOrder", [{"memo": "next"}]) == ["51"]  # one transaction sequence
    with pytest.raises(ValueError, match="record 1: Invalid field 'colour'"):
        erp.seed_records("vendor", [vendor("V-9"), vendor("V-10", colour="red")])
    with pytest.raises(ValueError, match="already exists"):
        erp.seed_records("vendor", [vendor("V-1")])
    assert erp.count("vendor") == 3  # nothing added by the refused calls
    # without validation anything goes, as set_record does
    erp.seed_records("vendor", [{"colour": "red", "rate": 0.3}], validate=False)
    assert erp.get_record("vendor", "4")["rate"] == Decimal("0.3")  # type: ignore[index]


def test_snapshot_keeps_decimals(tmp_path: Path) -> None:
    erp = ErpSandbox()
    erp.seed_records("customrecord_vf_batch", [{"name": "B", "custrecord_vf_batch_unit_cost": Decimal("0.10")}])
    erp.set_record("customrecord_other", {"rates": [0.1, {"x": 7.9}]})
    loaded = ErpSandbox.load(erp.save(tmp_path / "erp.json"))
    assert loaded.get_record("customrecord_vf_batch", "1")["custrecord_vf_batch_unit_cost"] == Decimal("0.1")  # type: ignore[index]
    assert loaded.get_record("customrecord_other", "1")["rates"] == [Decimal("0.1"), {"x": Decimal("7.9")}]  # type: ignore[index]
