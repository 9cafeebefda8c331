"""JSON Schema of every canonical model, and validation of inbound payloads against it.

The schemas are the contract other systems (and the operator API) see; validating a payload
with jsonschema before building the model gives every structural error at once, each with the
path of the field and the rule it broke, in words that do not depend on Python.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from canonical.batch import Batch
from canonical.money import Money
from canonical.order import Order, Refund
from canonical.payments import Delivery, Fee, PaymentTrace, Payout
from canonical.site import Site
from canonical.sku import Sku
from canonical.voucher import CodeEvent, VoucherCode

SCHEMA_BASE_URI = "https://vouchflow.example/schemas/"

MODELS: dict[str, type[BaseModel]] = {
    "Money": Money,
    "Site": Site,
    "Sku": Sku,
    "Batch": Batch,
    "VoucherCode": VoucherCode,
    "CodeEvent": CodeEvent,
    "Order": Order,
    "Refund": Refund,
    "PaymentTrace": PaymentTrace,
    "Payout": Payout,
    "Fee": Fee,
    "Delivery": Delivery,
}


@dataclass(frozen=True)
class Violation:
    """One broken rule: where (a dotted path, ``$`` for the whole record), which rule, why."""

    path: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} ({self.rule})"


class SchemaValidationError(ValueError):
    def __init__(self, model: str, violations: list[Violation]) -> None:
        self.model = model
        self.violations = violations
        super().__init__(f"{model}: " + "; ".join(str(v) for v in violations))


def json_schema(name: str) -> dict[str, Any]:
    return _schema(name)


@cache
def _schema(name: str) -> dict[str, Any]:
    model = MODELS[name]
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"{SCHEMA_BASE_URI}{name}.schema.json"
    return schema


@cache
def _validator(name: str) -> Draft202012Validator:
    schema = _schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@cache
def _gate(name: str) -> Any:
    # A compiled validator answers "valid?" in microseconds; the full jsonschema validator
    # runs only when it says no, to list every violation with its path. It is given a copy:
    # compiling resolves references inside the dict it is given, and the schema published by
    # ``json_schema`` must stay the model's.
    return fastjsonschema.compile(copy.deepcopy(_schema(name)))


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "$"


def violations(name: str, payload: Any) -> list[Violation]:
    """Every structural violation of the model's schema, sorted by path."""
    found = [
        Violation(path=_path(err.absolute_path), rule=str(err.validator), message=err.message)
        for err in _validator(name).iter_errors(payload)
    ]
    return sorted(found, key=lambda v: (v.path, v.rule))


def validate(name: str, payload: Any) -> BaseModel:
    """Validate a payload against the schema, then build the model (which checks the rules a
    schema cannot say, such as an amount's decimals for its currency)."""
    try:
        _gate(name)(payload)
    except fastjsonschema.JsonSchemaException:
        problems = violations(name, payload)
        if problems:
            # also report the rules only the model knows, for fields the schema passed
            seen = {p.path.split(".")[0].split("[")[0] for p in problems}
            try:
                MODELS[name].model_validate(payload)
            except ValidationError as exc:
                for err in exc.errors(include_url=False):
                    path = ".".join(str(p) for p in err["loc"]) or "$"
                    if path.split(".")[0] not in seen:
                        problems.append(Violation(path=path, rule=err["type"],
                                                  message=err["msg"].removeprefix("Value error, ")))
            raise SchemaValidationError(name, problems) from None
    return MODELS[name].model_validate(payload)


def export(directory: Path) -> list[Path]:
    """Write ``{Model}.schema.json`` for every canonical model; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in MODELS:
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(_schema(name), indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
