"""A small procurement world for tests: SKUs in the catalogue, two vendors with signed
contracts, purchase orders to receive against."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from canonical import Sku
from state import procurement as proc
from state.catalog import remember_skus
from state.crypto import Keyring
from state.db import session_scope
from state.events import read_events

TODAY = date(2026, 11, 24)
CODE_FORMAT = r"^[A-Z0-9]{12}$"


def sku(code: str, mode: str = "code_pool", code_format: str | None = CODE_FORMAT) -> Sku:
    return Sku.model_validate({
        "sku": code, "name": f"Voucher {code}", "kind": "amount_coupon",
        "face_value": {"amount": "10.00", "currency": "SGD"}, "sales_areas": ["sg1"],
        "issuance_mode": mode, "write_off_type": "on_redemption", "status": "normal",
        "code_format": code_format, "updated_at": datetime(2026, 11, 1, tzinfo=UTC)})


@dataclass
class Party:
    vendor_id: int
    name: str
    slug: str
    token: str
    contract_no: str
    po_no: str


def seed_catalog(engine: Engine) -> None:
    with session_scope(engine) as s:
        remember_skus(s, [(sku("SKU-A"), "101"), (sku("SKU-B", code_format=None), "102"),
                          (sku("SKU-API", "api", None), "103")])


def vendor_with_po(engine: Engine, keyring: Keyring, name: str, *, quantity: int = 10,
                   sku_code: str = "SKU-A", unit_cost: str = "7.5000", signed: bool = True,
                   mode: str = "code_pool", settlement: str = "purchased_quantity",
                   **vendor: Any) -> Party:
    with session_scope(engine) as s:
        v, token = proc.add_vendor(s, keyring, name, currency="SGD", **vendor)
        contract = proc.add_contract(
            s, v, issuance_mode=mode, settlement_mode=settlement, currency="SGD",
            prices={sku_code: Decimal(unit_cost)}, valid_from=date(2026, 1, 1))
        if signed:
            proc.set_signature(s, contract.contract_no, "signed", by="ops@vf", ref="env-1")
            po = proc.create_purchase_order(s, contract.contract_no,
                                            [proc.LineIn(sku_code, quantity)], tran_date=TODAY)
            po_no = po.po_no
        else:
            po_no = ""
        return Party(v.id, v.name, v.slug, token, contract.contract_no, po_no)  # type: ignore[arg-type]


def codes_csv(rows: list[str], header: str = "code,pin,expires_at") -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


def events(engine: Engine, *patterns: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(type, entity key, data) of the recorded events of these types, oldest first."""
    with session_scope(engine) as s:
        return [(e.type, e.entity_key, json.loads(e.data_json)) for e in read_events(
            s, after=0, patterns=list(patterns) or None, limit=100_000)]
