"""Cash-on-delivery courier remittance (CSV, format in ``docs/payment-formats.md``).

A courier collects cash at the door, keeps its fee and remits the rest in batches; each row is
one shipment of a remittance batch. A delivered row is both payment and delivery evidence; a
returned or failed row is evidence that nothing was collected.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from pathlib import Path

from connectors.payments.common import (
    Origin,
    check_currency,
    choice,
    optional,
    parse_amount,
    parse_date,
    parse_datetime,
    read_csv_rows,
    require,
)

REQUIRED = (
    "remittance_id", "courier", "shipment_id", "site", "order_id", "status", "delivered_at",
    "currency", "cod_amount", "cod_fee", "remitted_amount", "remitted_on",
)  # fmt: skip
OPTIONAL = ("tracking_number",)
STATUSES = {"delivered": "delivered", "returned": "returned", "failed": "failed"}


@dataclass(frozen=True, slots=True)
class CodRow:
    origin: Origin
    remittance_id: str
    courier: str
    shipment_id: str
    tracking_number: str | None
    site: str
    order_id: str
    status: str
    delivered_at: datetime
    currency: str
    cod_amount: Decimal
    cod_fee: Decimal
    remitted_amount: Decimal
    remitted_on: date


def parse_row(origin: Origin, row: dict[str, str], *, default_tz: tzinfo = UTC) -> CodRow:
    currency = check_currency(require(row, "currency", origin), origin, "currency")
    cod_amount = parse_amount(require(row, "cod_amount", origin), currency, origin, "cod_amount")
    cod_fee = parse_amount(require(row, "cod_fee", origin), currency, origin, "cod_fee")
    remitted = parse_amount(require(row, "remitted_amount", origin), currency, origin,
                            "remitted_amount", signed=True)
    status = choice(row, "status", origin, STATUSES)
    if status != "delivered" and cod_amount != 0:
        raise origin.error("cod_not_collected", f"a {status} shipment collected nothing, "
                           f"but cod_amount is {cod_amount}", "cod_amount")
    if remitted != cod_amount - cod_fee:
        raise origin.error("remittance_arithmetic", f"{remitted} is not cod_amount "
                           f"{cod_amount} less cod_fee {cod_fee}", "remitted_amount")
    return CodRow(
        origin=origin,
        remittance_id=require(row, "remittance_id", origin),
        courier=require(row, "courier", origin),
        shipment_id=require(row, "shipment_id", origin),
        tracking_number=optional(row.get("tracking_number")),
        site=require(row, "site", origin),
        order_id=require(row, "order_id", origin),
        status=status,
        delivered_at=parse_datetime(require(row, "delivered_at", origin), origin,
                                    "delivered_at", default_tz=default_tz),
        currency=currency, cod_amount=cod_amount, cod_fee=cod_fee, remitted_amount=remitted,
        remitted_on=parse_date(require(row, "remitted_on", origin), origin, "remitted_on"),
    )


def read_cod(path: str | Path, *, default_tz: tzinfo = UTC) -> Iterator[CodRow]:
    for origin, row in read_csv_rows(path, required=REQUIRED, optional_columns=OPTIONAL):
        yield parse_row(origin, row, default_tz=default_tz)
