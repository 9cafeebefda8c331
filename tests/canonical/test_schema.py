from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from canonical import Sku
from canonical.schema import (
    MODELS,
    SchemaValidationError,
    export,
    json_schema,
    validate,
    violations,
)

GOOD = {
    "sku": "SKU-1", "name": "Voucher", "kind": "gift_card",
    "face_value": {"amount": "10.00", "currency": "SGD"}, "sales_areas": ["sg1"],
    "issuance_mode": "api", "write_off_type": "on_delivery", "status": "normal",
    "updated_at": "2026-11-20T08:15:00Z",
}


def test_export_writes_a_valid_schema_per_model(tmp_path):
    written = export(tmp_path)
    assert {p.name for p in written} == {f"{name}.schema.json" for name in MODELS}
    for path in written:
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        assert schema["$id"].endswith(path.name)


def test_a_good_payload_validates_into_the_model():
    assert isinstance(validate("Sku", GOOD), Sku)


def test_every_violation_is_reported_with_path_and_rule():
    bad = dict(GOOD, sku="no spaces allowed", face_value={"amount": 10.5, "currency": "SGD"},
               colour="red")
    del bad["status"]
    with pytest.raises(SchemaValidationError) as info:
        validate("Sku", bad)
    found = {(v.path, v.rule) for v in info.value.violations}
    assert ("sku", "pattern") in found
    assert ("face_value.amount", "type") in found
    assert ("$", "required") in found
    assert ("$", "additionalProperties") in found


def test_rules_the_schema_cannot_express_are_still_enforced():
    # the schema accepts any decimal string; the model knows EUR has two decimals
    bad = dict(GOOD, face_value={"amount": "18.155", "currency": "EUR"})
    assert violations("Sku", bad) == []
    with pytest.raises(ValueError, match="more decimals than EUR"):
        validate("Sku", bad)


def test_schema_and_model_agree_on_a_combined_failure():
    bad = dict(GOOD, kind="toaster", face_value={"amount": "1.5", "currency": "VND"})
    with pytest.raises(SchemaValidationError) as info:
        validate("Sku", bad)
    text = str(info.value)
    assert "kind" in text and "toaster" in text
    assert "VND allows (0)" in text


def test_validating_leaves_the_published_schema_as_the_model_makes_it():
    """The fast validator is compiled from a copy: compiling resolves references in place,
    and what json_schema publishes (and what fingerprints of it see) must not depend on
    whether a payload was validated before."""
    before = json.dumps(json_schema("Sku"), sort_keys=True)
    with pytest.raises(SchemaValidationError):
        validate("Sku", {"sku": ""})
    assert json.dumps(json_schema("Sku"), sort_keys=True) == before
    assert json_schema("Sku")["properties"] == Sku.model_json_schema(mode="validation")[
        "properties"]
