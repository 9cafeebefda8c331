"""The PayPal-style daily settlement file (CSV): amounts in the provider's minor units, the
direction in separate debit/credit columns (``DR``/``CR``).

PayPal counts HUF, JPY and TWD without decimals where ISO 4217 gives HUF and TWD two: the
exponent of each currency is declared here (``EXPONENTS``), not guessed from ISO.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from pathlib import Path

from connectors.payments.common import (
    Origin,
    check_currency,
    choice,
    optional,
    parse_datetime,
    parse_minor_units,
    read_csv_rows,
    require,
)

EXPONENTS: dict[str, int] = {"HUF": 0, "JPY": 0, "TWD": 0}
"""Currencies PayPal counts with another number of decimals than ISO 4217 (the rest: ISO)."""

REQUIRED = (
    "Transaction ID", "Invoice ID", "PayPal Reference ID", "Transaction Event Code",
    "Transaction Initiation Date", "Transaction Completion Date",
    "Transaction Debit or Credit", "Gross Transaction Amount", "Gross Transaction Currency",
    "Fee Debit or Credit", "Fee Amount", "Fee Currency",
)  # fmt: skip
OPTIONAL = ("Custom Field", "Consumer ID", "Payment Tracking ID", "Store ID", "Account ID")
DATE_FORMATS = ("%Y/%m/%d %H:%M:%S %z", "%Y-%m-%d %H:%M:%S %z")
MARKS = {"CR": True, "DR": False}


@dataclass(frozen=True, slots=True)
class PaypalRow:
    origin: Origin
    transaction_id: str
    invoice_id: str | None
    reference_id: str | None
    event_code: str
    initiated_at: datetime
    completed_at: datetime | None
    credit: bool
    amount: Decimal
    currency: str
    fee_credit: bool | None
    fee: Decimal | None
    fee_currency: str | None
    custom_field: str | None
    consumer_id: str | None
    account_id: str | None


def parse_row(origin: Origin, row: dict[str, str], *, default_tz: tzinfo = UTC) -> PaypalRow:
    currency = check_currency(require(row, "Gross Transaction Currency", origin), origin,
                              "Gross Transaction Currency")
    amount = parse_minor_units(require(row, "Gross Transaction Amount", origin), currency,
                               origin, "Gross Transaction Amount", exponents=EXPONENTS)
    fee_text = optional(row.get("Fee Amount"))
    fee = fee_currency = fee_credit = None
    if fee_text is not None:
        fee_currency = check_currency(require(row, "Fee Currency", origin), origin,
                                      "Fee Currency")
        fee = parse_minor_units(fee_text, fee_currency, origin, "Fee Amount",
                                exponents=EXPONENTS)
        fee_credit = choice(row, "Fee Debit or Credit", origin, MARKS)
    completed = optional(row.get("Transaction Completion Date"))
    return PaypalRow(
        origin=origin,
        transaction_id=require(row, "Transaction ID", origin),
        invoice_id=optional(row.get("Invoice ID")),
        reference_id=optional(row.get("PayPal Reference ID")),
        event_code=require(row, "Transaction Event Code", origin).upper(),
        initiated_at=parse_datetime(require(row, "Transaction Initiation Date", origin), origin,
                                    "Transaction Initiation Date", default_tz=default_tz,
                                    formats=DATE_FORMATS),
        completed_at=parse_datetime(completed, origin, "Transaction Completion Date",
                                    default_tz=default_tz, formats=DATE_FORMATS)
        if completed else None,
        credit=choice(row, "Transaction Debit or Credit", origin, MARKS),
        amount=amount, currency=currency,
        fee_credit=fee_credit, fee=fee, fee_currency=fee_currency,
        custom_field=optional(row.get("Custom Field")),
        consumer_id=optional(row.get("Consumer ID")),
        account_id=optional(row.get("Account ID")),
    )


def read_paypal(path: str | Path, *, default_tz: tzinfo = UTC) -> Iterator[PaypalRow]:
    for origin, row in read_csv_rows(path, required=REQUIRED, optional_columns=OPTIONAL):
        yield parse_row(origin, row, default_tz=default_tz)
