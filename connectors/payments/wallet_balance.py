"""Wallet balance payments (CSV, format in ``docs/payment-formats.md``).

A customer who pays from the balance held on a wallet site pays the site, not us: the site
reports each such payment and refund, and the payouts that move the collected balance to the
business's bank.
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
    parse_amount,
    parse_datetime,
    read_csv_rows,
    require,
)

REQUIRED = ("site", "transaction_id", "type", "order_id", "created_at", "currency", "amount",
            "settlement_id")
OPTIONAL = ("customer_ref",)
TYPES = {"payment": "payment", "refund": "refund", "payout": "payout",
         "adjustment_credit": "adjustment_credit", "adjustment_debit": "adjustment_debit"}


@dataclass(frozen=True, slots=True)
class WalletBalanceRow:
    origin: Origin
    site: str
    transaction_id: str
    type: str
    order_id: str | None
    created_at: datetime
    currency: str
    amount: Decimal
    settlement_id: str | None
    customer_ref: str | None


def parse_row(origin: Origin, row: dict[str, str], *, default_tz: tzinfo = UTC
              ) -> WalletBalanceRow:
    currency = check_currency(require(row, "currency", origin), origin, "currency")
    kind = choice(row, "type", origin, TYPES)
    order_id = optional(row.get("order_id"))
    if kind in {"payment", "refund"} and order_id is None:
        raise origin.error("required", f"a {kind} names its order", "order_id")
    return WalletBalanceRow(
        origin=origin, site=require(row, "site", origin),
        transaction_id=require(row, "transaction_id", origin), type=kind, order_id=order_id,
        created_at=parse_datetime(require(row, "created_at", origin), origin, "created_at",
                                  default_tz=default_tz),
        currency=currency,
        amount=parse_amount(require(row, "amount", origin), currency, origin, "amount"),
        settlement_id=optional(row.get("settlement_id")),
        customer_ref=optional(row.get("customer_ref")),
    )


def read_wallet_balance(path: str | Path, *, default_tz: tzinfo = UTC
                        ) -> Iterator[WalletBalanceRow]:
    for origin, row in read_csv_rows(path, required=REQUIRED, optional_columns=OPTIONAL):
        yield parse_row(origin, row, default_tz=default_tz)
