"""Request bodies in the decimal-string form (``connectors.http.dumps``): orjson's bytes where
they are ``json.dumps``'s, ``json.dumps`` itself everywhere else."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from canonical import SkuStatus
from connectors.http import _default, dumps


def plain(payload: Any) -> bytes:
    return json.dumps(payload, default=_default, separators=(",", ":")).encode()


@dataclass
class Listing:
    sku: str


@pytest.mark.parametrize("payload", [
    {"items": [{"sku": "A-1", "face_value": {"amount": "10.50", "currency": "SGD"},
                "status": "normal", "available": 3, "expires_at": None}]},
    {"text": "".join(chr(i) for i in range(160))},  # controls, DEL, Latin-1: escaped
    {"name": "Café 10 €", "emoji": "\U0001f381", "sep": "\u2028"},
    {"amount": Decimal("18.150"), "rate": Decimal("1E+2")},
    {"at": datetime(2026, 11, 22, 8, 15, 0, 123, tzinfo=UTC), "naive": datetime(2026, 1, 2),
     "day": date(2026, 1, 2)},
    {"status": SkuStatus.NORMAL, "tuple": (1, "a"), "nested": [[], {}, [None, True, False]]},
    {"big": 2**70, "small": -(2**63), "float": 1.5, "exp": 1e16},
    {1: "int key", "b": 2},
    [], {}, "text", 5, None,
])
def test_bodies_are_the_bytes_json_dumps_writes(payload):
    assert dumps(payload) == plain(payload)


@pytest.mark.parametrize("payload", [{"listing": Listing("A-1")}, {"set": {1, 2}}])
def test_what_json_refuses_is_refused_alike(payload):
    with pytest.raises(TypeError) as ours:
        dumps(payload)
    with pytest.raises(TypeError) as theirs:
        plain(payload)
    assert str(ours.value) == str(theirs.value)
