"""Deterministic, realistic voucher SKUs (inventoryItem records) for the ERP sandbox.

Valid SKUs follow docs/erp-records.md: a currency sold by the sites of their sales areas,
face values the currency can express, a mix of kinds and issuance modes, a few frozen and a
few inactive ones. Invalid SKUs are each wrong in exactly one way, so a test can assert the
exact number of dead letters per reason.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sandbox.money import MINOR_UNITS
from sandbox.sites import Site

__all__ = ["INVALID_REASONS", "SeedReport", "generate_inventory_items"]

#: Invalid seeds cycle through these, in this order.
INVALID_REASONS: dict[str, str] = {
    "face_value_precision": "face value has more decimals than its currency allows",
    "unknown_currency": "currency is not an ISO 4217 code",
    "unknown_kind": "kind is not one of the known voucher kinds",
    "unknown_site": "sales areas name a site that does not exist",
    "empty_item_id": "itemId (the SKU code) is empty",
    "negative_face_value": "face value is negative",
}

KINDS = ("in_vitro_coupon", "amount_coupon", "redemption_coupon", "gift_card", "own_voucher")
_KIND_WEIGHTS = (10, 40, 15, 30, 5)
_KIND_LABEL = {
    "in_vitro_coupon": "in-store coupon",
    "amount_coupon": "voucher",
    "redemption_coupon": "redemption coupon",
    "gift_card": "gift card",
    "own_voucher": "house voucher",
}
WRITE_OFF_TYPES = ("on_delivery", "on_redemption", "supplier_report")

BRANDS: tuple[tuple[str, str], ...] = (
    ("GRAB", "Grab"), ("SBUX", "Starbucks"), ("SHOPEE", "Shopee"), ("LAZADA", "Lazada"),
    ("FPANDA", "foodpanda"), ("NFLX", "Netflix"), ("STEAM", "Steam"), ("GPLAY", "Google Play"),
    ("APPLE", "Apple"), ("SPOTIFY", "Spotify"), ("RAZER", "Razer Gold"), ("GARENA", "Garena"),
    ("7ELEVEN", "7-Eleven"), ("MCD", "McDonald's"), ("KFC", "KFC"), ("AGODA", "Agoda"),
    ("KLOOK", "Klook"), ("UNIQLO", "Uniqlo"), ("IKEA", "IKEA"), ("WATSONS", "Watsons"),
    ("JOLLIBEE", "Jollibee"), ("TOKOPEDIA", "Tokopedia"), ("GOJEK", "Gojek"), ("VF", "Vouchflow"),
)  # fmt: skip

#: Face values per currency, as shoppers see them on the sites.
FACE_VALUES: dict[str, tuple[float, ...]] = {
    "SGD": (5.0, 10.0, 12.5, 20.0, 25.0, 50.0, 100.0),
    "MYR": (10.0, 20.0, 30.0, 50.0, 100.0, 7.9),
    "THB": (100.0, 150.0, 200.0, 300.0, 500.0, 1000.0),
    "IDR": (10000.0, 25000.0, 50000.0, 100000.0, 150000.0, 250000.0),
    "PHP": (100.0, 250.0, 500.0, 1000.0, 99.5),
    "VND": (50000.0, 100000.0, 200000.0, 500000.0),
    "TWD": (100.0, 150.0, 300.0, 500.0, 1000.0),
    "HKD": (50.0, 100.0, 200.0, 300.0, 500.0, 38.8),
}
#: Currencies priced in whole units on the sites even where ISO 4217 has decimals.
WHOLE_UNIT_CURRENCIES = frozenset({"IDR", "VND", "TWD", "JPY", "KRW", "HUF", "CLP", "ISK"})
CODE_FORMATS = ("^[A-Z0-9]{12}$", "^[0-9]{16}$", "^[A-Z]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}$")
UNKNOWN_CURRENCY = "QQQ"
UNKNOWN_KIND = "mystery_box"
UNKNOWN_SITE = "zz9"


@dataclass
class SeedReport:
    """What one seeding call created; ``invalid`` maps internal id -> reason code."""

    record_type: str
    ids: list[str] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)

    @property
    def valid_ids(self) -> list[str]:
        return [i for i in self.ids if i not in self.invalid]

    def invalid_by_reason(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for rid, reason in self.invalid.items():
            out.setdefault(reason, []).append(rid)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"record_type": self.record_type, "ids": self.ids, "invalid": self.invalid}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeedReport:
        return cls(data["record_type"], list(data["ids"]), dict(data["invalid"]))


def _face_values(currency: str) -> tuple[float, ...]:
    if currency in FACE_VALUES:
        return FACE_VALUES[currency]
    if currency in WHOLE_UNIT_CURRENCIES or MINOR_UNITS.get(currency, 2) == 0:
        return (1000.0, 5000.0, 10000.0)
    return (5.0, 10.0, 20.0, 50.0, 100.0)


def _face_label(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.2f}".replace(".", "_")


def _face_display(value: float, currency: str) -> str:
    if value == int(value):
        return f"{int(value):,}" if value >= 10000 else str(int(value))
    return f"{value:.2f}"


def generate_inventory_items(
    n: int,
    *,
    invalid: int = 0,
    seed: int = 0,
    sites: Sequence[Site],
    start_id: int,
    timestamp: str,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``n`` valid plus ``invalid`` invalid records with ids from ``start_id``; the invalid
    ones are spread evenly through the id range. Returns (records, {id: reason})."""
    if n < 0 or invalid < 0:
        raise ValueError("n and invalid must be >= 0")
    if not sites:
        raise ValueError("seeding needs at least one site")
    rng = random.Random(seed)
    by_currency: dict[str, list[str]] = {}
    for s in sites:
        by_currency.setdefault(s.currency, []).append(s.code)
    currencies = list(by_currency)
    # more sites -> more SKUs in that currency
    currency_weights = [len(by_currency[c]) for c in currencies]
    total = n + invalid
    bad_positions: dict[int, str] = {}
    reasons = list(INVALID_REASONS)
    for j in range(invalid):
        pos = min(total - 1, (j * total) // invalid + total // (2 * invalid))
        while pos in bad_positions:
            pos = (pos + 1) % total
        bad_positions[pos] = reasons[j % len(reasons)]

    # Lists expanded by weight and picked with one random() each: rng.choice/choices cost
    # several times more and seeding 250k records must take seconds, not tens of seconds.
    currency_pool = [c for c, w in zip(currencies, currency_weights, strict=True) for _ in range(w)]
    kind_pool = [k for k, w in zip(KINDS, _KIND_WEIGHTS, strict=True) for _ in range(w)]
    # face values are stored as Decimal, as the ERP keeps every number (exact, no float)
    faces = {
        c: [(Decimal(repr(f)), _face_label(f), _face_display(f, c)) for f in _face_values(c)]
        for c in currencies
    }
    two_decimal = [c for c in currencies if MINOR_UNITS.get(c, 2) >= 2] or currencies
    records: list[dict[str, Any]] = []
    invalid_ids: dict[str, str] = {}
    random_ = rng.random

    def pick(seq: Sequence[Any]) -> Any:
        return seq[int(random_() * len(seq))]

    for pos in range(total):
        rid = start_id + pos
        sid = str(rid)
        reason = bad_positions.get(pos)
        currency = pick(two_decimal if reason == "face_value_precision" else currency_pool)
        code_sites = by_currency[currency]
        if len(code_sites) == 1:
            areas = code_sites
        else:
            areas = [c for c in code_sites if random_() < 0.7] or [pick(code_sites)]
        brand_code, brand = pick(BRANDS)
        kind = pick(kind_pool)
        face, face_label, face_display = pick(faces[currency])
        sku = f"{brand_code}-{currency}{face_label}-{rid:06d}"
        r = random_()
        record: dict[str, Any] = {
            "id": sid,
            "externalId": sku,
            "itemId": sku,
            "displayName": f"{brand} {currency} {face_display} {_KIND_LABEL[kind]}",
            "isInactive": r < 0.03,
            "createdDate": timestamp,
            "lastModifiedDate": timestamp,
            "custitem_vf_kind": kind,
            "custitem_vf_face_value": face,
            "custitem_vf_currency": currency,
            "custitem_vf_sales_areas": ",".join(areas),
            "custitem_vf_issuance_mode": "api" if random_() < 0.4 else "code_pool",
            "custitem_vf_write_off_type": pick(WRITE_OFF_TYPES),
            "custitem_vf_status": "frozen" if 0.03 <= r < 0.06 else "normal",
        }
        if random_() < 0.5:
            record["custitem_vf_code_format"] = pick(CODE_FORMATS)
        if reason is not None:
            _spoil(record, reason, face, currency)
            invalid_ids[sid] = reason
        records.append(record)
    return records, invalid_ids


def _spoil(record: dict[str, Any], reason: str, face: Decimal, currency: str) -> None:
    """Make a valid record invalid in exactly one way (and keep it otherwise sellable)."""
    record["isInactive"] = False
    record["custitem_vf_status"] = "normal"
    if reason == "face_value_precision":
        # one digit past the minor unit, not zero: 18.155 for a two-decimal currency
        digits = MINOR_UNITS.get(currency, 2) + 1
        record["custitem_vf_face_value"] = face + Decimal(5).scaleb(-digits)
    elif reason == "unknown_currency":
        record["custitem_vf_currency"] = UNKNOWN_CURRENCY
    elif reason == "unknown_kind":
        record["custitem_vf_kind"] = UNKNOWN_KIND
    elif reason == "unknown_site":
        record["custitem_vf_sales_areas"] = record["custitem_vf_sales_areas"] + "," + UNKNOWN_SITE
    elif reason == "empty_item_id":
        record["itemId"] = ""
        del record["externalId"]
    elif reason == "negative_face_value":
        record["custitem_vf_face_value"] = -face
    else:  # pragma: no cover - guarded by INVALID_REASONS
        raise ValueError(reason)
