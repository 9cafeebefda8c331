"""Catalogue mappings against golden files (set UPDATE_GOLDEN=1 to rewrite them after a
deliberate change, then review the diff)."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path

import pytest

from mappings.catalog import inventory_item_to_sku, sku_to_wallet_product
from mappings.errors import MappingError

GOLDEN = Path(__file__).parent / "golden"
SITES = {"sg1", "sg2", "my1", "vn1", "hk1"}


def erp_items() -> list[dict]:
    # as the connector decodes them: numbers with a fraction become Decimal
    return json.loads((GOLDEN / "erp_inventory_items.json").read_text(), parse_float=Decimal)


def test_inventory_items_map_to_golden_skus_and_products():
    produced = []
    for raw in erp_items():
        sku = inventory_item_to_sku(raw, known_sites=SITES)
        produced.append({
            "sku": sku.model_dump(mode="json"),
            "products": {site: sku_to_wallet_product(sku) for site in sku.sales_areas},
            "delisted": sku_to_wallet_product(sku, listed=False),
        })
    expected_path = GOLDEN / "canonical_skus.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected_path.write_text(json.dumps(produced, indent=2, sort_keys=True) + "\n")
    expected = json.loads(expected_path.read_text())
    assert json.loads(json.dumps(produced, sort_keys=True)) == expected


def good() -> dict:
    return dict(erp_items()[0])


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"custitem_vf_face_value": Decimal("18.155"), "custitem_vf_currency": "EUR"},
         "face_value (custitem_vf_face_value/custitem_vf_currency): amount 18.155 has more "
         "decimals than EUR allows (2)"),
        ({"custitem_vf_currency": "ZZZ"}, "unknown currency 'ZZZ'"),
        ({"custitem_vf_kind": "toaster"}, "kind (custitem_vf_kind): 'toaster' is not one of"),
        ({"custitem_vf_sales_areas": "sg1,mars1"}, "'mars1' is not a configured site"),
        ({"itemId": ""}, "sku (itemId)"),
        ({"custitem_vf_face_value": Decimal("-5")}, "face_value must be positive"),
        ({"lastModifiedDate": "yesterday"}, "lastModifiedDate"),
        ({"custitem_vf_face_value": 10.5}, "binary floats are not accepted"),
        ({"custitem_vf_face_value": "1" + "0" * 40},
         "face_value (custitem_vf_face_value/custitem_vf_currency): amount 1" + "0" * 40
         + " has more digits than an amount may have (28 significant digits)"),
    ],
)
def test_bad_items_name_record_field_and_rule(change, words):
    raw = {**good(), **change}
    with pytest.raises(MappingError) as info:
        inventory_item_to_sku(raw, known_sites=SITES)
    message = str(info.value)
    assert message.startswith("inventoryItem 1042")
    assert words in message


def test_every_problem_of_one_record_is_reported_at_once():
    raw = {**good(), "custitem_vf_kind": "toaster", "custitem_vf_currency": "ZZZ",
           "custitem_vf_sales_areas": "nowhere"}
    with pytest.raises(MappingError) as info:
        inventory_item_to_sku(raw, known_sites=SITES)
    paths = {v.path.split(" ")[0] for v in info.value.violations}
    assert {"kind", "face_value", "sales_areas"} <= paths
