"""The catalogue mapping's plain path (``mappings.catalog._plain_sku``) against the validating
path: whatever the plain path builds, the validating path builds the same; whatever it is
unsure of goes the validating way, so the errors stay the validating path's."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from canonical import Sku
from mappings.catalog import (
    _plain_sku,
    _validated_sku,
    inventory_item_to_sku,
    plain_path_current,
)
from mappings.errors import MappingError

GOLDEN = Path(__file__).parent / "golden"
SITES = {"sg1", "sg2", "my1", "vn1", "hk1"}


def erp_items() -> list[dict[str, Any]]:
    return json.loads((GOLDEN / "erp_inventory_items.json").read_text(), parse_float=Decimal)


def suiteql_shaped() -> dict[str, Any]:
    """As ``connectors.erp.records.suiteql_row_to_record`` makes them."""
    return {"links": [], "id": "7", "externalId": "IKEA-TWD150-000007",
            "itemId": "IKEA-TWD150-000007", "displayName": "IKEA TWD 150 voucher",
            "isInactive": False, "createdDate": "2026-11-22T21:56:15+00:00",
            "lastModifiedDate": "2026-11-22T21:56:15+00:00",
            "custitem_vf_kind": "amount_coupon", "custitem_vf_face_value": Decimal("150"),
            "custitem_vf_currency": "TWD", "custitem_vf_sales_areas": "hk1",
            "custitem_vf_issuance_mode": "code_pool",
            "custitem_vf_write_off_type": "supplier_report", "custitem_vf_status": "normal",
            "custitem_vf_code_format": "^[0-9]{16}$"}


VARIANTS: dict[str, list[Any]] = {
    "id": ["1042", 1042, None, "", " 7 "],
    "externalId": [None, 5, "X"],
    "links": [[], None, "x", [{"rel": "self"}], [{"rel": 1}], [{1: "x"}], ["x"], ()],
    "itemId": ["SKU-1", "", " SKU-1", "SKU-1\n", "s" * 64, "s" * 65, "SKU.1", None, 7,
               "SKÜ-1"],
    "displayName": ["A", "", " ", "n" * 300, "n" * 301, None, 3, "Café 10 €"],
    "isInactive": [False, True, None, "T", "true", 1, 0],
    "createdDate": [None, "2026-10-01T02:00:00Z", "2026-10-01T02:00:00", "2026-10-01",
                    "yesterday", 5, "2026-02-30T00:00:00Z", "2026-10-01 02:00:00Z"],
    "lastModifiedDate": ["2026-11-20T08:15:00Z", "2026-11-20T08:15:00.5+07:00",
                         "2026-11-20T08:15:00.123456-03:30", "2026-11-20T08:15:00.1234567Z",
                         "2026-11-20T08:15:00", "2026-11-20T08:15:00+0700",
                         "2026-11-20 08:15:00Z", "2026-11-20t08:15:00z",
                         "2026-13-20T08:15:00Z", "2026-11-31T08:15:00Z",
                         "2026-11-20T24:00:00Z", "2026-11-20T23:59:60Z",
                         "2026-11-20T08:15:00+24:00", "0000-01-01T00:00:00Z",
                         "2026-11-20T08:15:00Z\n", "yesterday", "", None, 1763626500,
                         "2026-11-20T08:15:00,5Z"],
    "custitem_vf_kind": ["amount_coupon", "gift_card", "toaster", "", None, "GIFT_CARD"],
    "custitem_vf_face_value": [Decimal("10"), Decimal("10.0"), Decimal("10.000"),
                               Decimal("10.005"), Decimal("1E+2"), Decimal("1E-2"),
                               Decimal("0"), Decimal("-5"), Decimal("NaN"),
                               Decimal("Infinity"), Decimal("0.01"), 10, 0, -3, True, 10.5,
                               "10", " 10.50 ", "10.501", "1e3", "abc", "", "nan", None,
                               Decimal("123456789012345678901234567890")],
    "custitem_vf_currency": ["SGD", "VND", "BHD", "JPY", "ZZZ", "XXX", "sgd", "SG", "SGDD",
                             "", None, 5],
    "custitem_vf_sales_areas": ["sg1", "sg2,sg1", " sg1 , vn1 ", "sg1,,", "", None,
                                "sg1,sg1", "mars1", "SG1", "sg1,mars1", "-sg"],
    "custitem_vf_issuance_mode": ["code_pool", "api", "pool", None],
    "custitem_vf_write_off_type": ["on_delivery", "on_redemption", "supplier_report", "x",
                                   None],
    "custitem_vf_status": ["normal", "frozen", "inactive", "paused", None, ""],
    "custitem_vf_code_format": [None, "", "^[0-9]{16}$", "([", "[a-z]+", 5],
    # the record model's own field names (``populate_by_name``) and unknown fields
    "item_id": ["OTHER-1"],
    "created": ["2026-10-01T02:00:00Z"],
    "custbody_whatever": [1, None],
}


def outcome(raw: dict[str, Any]) -> Sku | str:
    """The validating path's SKU, or its error as text (a MappingError, or whatever else it
    lets through: an amount too long to quantize raises decimal's InvalidOperation)."""
    try:
        return _validated_sku(raw, known_sites=SITES)
    except Exception as exc:  # compared as text with the other path's
        return f"{type(exc).__name__}: {exc}"


def assert_same(plain: Sku, validated: Sku | str) -> None:
    assert isinstance(validated, Sku), validated
    assert plain == validated
    assert plain.model_dump(mode="json") == validated.model_dump(mode="json")
    assert repr(plain) == repr(validated)
    assert plain.model_fields_set == validated.model_fields_set
    assert str(plain.face_value.amount) == str(validated.face_value.amount)
    assert plain.updated_at.tzinfo is validated.updated_at.tzinfo
    assert hash(plain) == hash(validated)


def test_the_plain_path_is_written_against_the_models_as_they_are():
    # if this fails, a model changed: check ``_plain_sku`` against it, then update
    # ``_PLAIN_MODELS`` to ``_models_fingerprint()``
    assert plain_path_current()


@pytest.mark.parametrize("raw", [*erp_items(), suiteql_shaped()], ids=lambda r: r["id"])
def test_valid_items_take_the_plain_path_and_map_alike(raw):
    plain = _plain_sku(raw, SITES)
    assert plain is not None
    assert_same(plain, outcome(raw))
    assert inventory_item_to_sku(raw, known_sites=SITES) == plain


@pytest.mark.parametrize("field", sorted(VARIANTS))
def test_one_field_changed_maps_as_the_validating_path_says(field):
    for base in [*erp_items(), suiteql_shaped()]:
        for value in VARIANTS[field]:
            raw = {**base, field: value}
            plain = _plain_sku(raw, SITES)
            validated = outcome(raw)
            if plain is not None:
                assert_same(plain, validated)
            mapped: Sku | str
            try:
                mapped = inventory_item_to_sku(raw, known_sites=SITES)
            except Exception as exc:
                mapped = f"{type(exc).__name__}: {exc}"
            assert mapped == validated, (field, value)
        absent = {k: v for k, v in base.items() if k != field}
        plain = _plain_sku(absent, SITES)
        if plain is not None:
            assert_same(plain, outcome(absent))


@pytest.mark.parametrize("extra", [{5: "x"}, {None: "x"}, {("a",): 1}, {"item_id": "X"},
                                   {"is_inactive": True}, {"face_value": Decimal("1")}])
def test_odd_keys_map_as_the_validating_path_says(extra):
    raw = {**suiteql_shaped(), **extra}
    plain = _plain_sku(raw, SITES)
    validated = outcome(raw)
    if plain is not None:
        assert_same(plain, validated)
    else:
        mapped: Sku | str
        try:
            mapped = inventory_item_to_sku(raw, known_sites=SITES)
        except Exception as exc:
            mapped = f"{type(exc).__name__}: {exc}"
        assert mapped == validated


def test_pairs_of_changes_map_as_the_validating_path_says():
    base = suiteql_shaped()
    fields = ["isInactive", "custitem_vf_face_value", "custitem_vf_currency",
              "custitem_vf_status", "custitem_vf_sales_areas", "lastModifiedDate"]
    for first, second in itertools.combinations(fields, 2):
        for a, b in itertools.product(VARIANTS[first], VARIANTS[second]):
            raw = {**base, first: a, second: b}
            plain = _plain_sku(raw, SITES)
            if plain is not None:
                assert_same(plain, outcome(raw))


def test_the_plain_path_leaves_every_error_to_the_validating_path():
    raw = {**suiteql_shaped(), "custitem_vf_face_value": Decimal("150.005")}
    assert _plain_sku(raw, SITES) is None
    with pytest.raises(MappingError) as info:
        inventory_item_to_sku(raw, known_sites=SITES)
    assert f"MappingError: {info.value}" == outcome(raw)
    assert "has more decimals than TWD allows" in str(info.value)
