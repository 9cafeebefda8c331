"""Split (profit-sharing) settlements (CSV, format in ``docs/payment-formats.md``).

One payment is divided among up to 50 receivers (provider balances of merchants or users, not
bank accounts); at most 30% of the order may go to receivers other than the merchant. Funds
stay frozen until divided, and what is not divided within 30 days is released to the
merchant. A refund after a split claws the shares back. The file is checked against those
rules as it streams: the row that breaks one is named.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from pathlib import Path

from connectors.payments.common import (
    Origin,
    check_currency,
    choice,
    parse_amount,
    parse_datetime,
    read_csv_rows,
    require,
)

MAX_RECEIVERS = 50
MAX_SHARE = Decimal("0.30")
RELEASE_AFTER = timedelta(days=30)

REQUIRED = ("split_id", "payment_id", "order_id", "site", "type", "receiver_id",
            "receiver_type", "currency", "amount", "order_amount", "created_at")
TYPES = {"payment": "payment", "split": "split", "release": "release",
         "clawback": "clawback", "refund": "refund"}
RECEIVER_TYPES = {"merchant": "merchant", "user": "user"}


@dataclass(frozen=True, slots=True)
class SplitRow:
    origin: Origin
    split_id: str
    payment_id: str
    order_id: str
    site: str
    type: str
    receiver_id: str
    receiver_type: str
    currency: str
    amount: Decimal
    order_amount: Decimal
    created_at: datetime


@dataclass
class _Payment:
    order_amount: Decimal
    currency: str
    paid_at: datetime | None = None
    receivers: set[str] = field(default_factory=set)
    split: Decimal = Decimal(0)


def parse_row(origin: Origin, row: dict[str, str], *, default_tz: tzinfo = UTC) -> SplitRow:
    currency = check_currency(require(row, "currency", origin), origin, "currency")
    return SplitRow(
        origin=origin, split_id=require(row, "split_id", origin),
        payment_id=require(row, "payment_id", origin),
        order_id=require(row, "order_id", origin), site=require(row, "site", origin),
        type=choice(row, "type", origin, TYPES),
        receiver_id=require(row, "receiver_id", origin),
        receiver_type=choice(row, "receiver_type", origin, RECEIVER_TYPES),
        currency=currency,
        amount=parse_amount(require(row, "amount", origin), currency, origin, "amount"),
        order_amount=parse_amount(require(row, "order_amount", origin), currency, origin,
                                  "order_amount"),
        created_at=parse_datetime(require(row, "created_at", origin), origin, "created_at",
                                  default_tz=default_tz),
    )


class SplitRules:
    """The provider's rules, checked row by row over one file."""

    def __init__(self) -> None:
        self.payments: dict[str, _Payment] = {}

    def check(self, row: SplitRow) -> None:
        origin = row.origin
        state = self.payments.get(row.payment_id)
        if state is None:
            state = self.payments[row.payment_id] = _Payment(row.order_amount, row.currency)
        if state.order_amount != row.order_amount or state.currency != row.currency:
            raise origin.error("split_consistency", f"payment {row.payment_id} was "
                               f"{state.order_amount} {state.currency} on an earlier row",
                               "order_amount")
        if row.type == "payment":
            state.paid_at = row.created_at
        if row.type != "split":
            return
        if row.receiver_type == "merchant":
            raise origin.error("split_receiver", "a split moves money away from the merchant; "
                               "the merchant cannot be its receiver", "receiver_type")
        state.receivers.add(row.receiver_id)
        if len(state.receivers) > MAX_RECEIVERS:
            raise origin.error("split_receivers", f"payment {row.payment_id} is split among "
                               f"more than {MAX_RECEIVERS} receivers", "receiver_id")
        state.split += row.amount
        if state.split > state.order_amount * MAX_SHARE:
            raise origin.error(
                "split_share", f"payment {row.payment_id} splits {state.split} of "
                f"{state.order_amount} away from the merchant, more than "
                f"{int(MAX_SHARE * 100)}%", "amount")
        if state.paid_at is not None and row.created_at - state.paid_at > RELEASE_AFTER:
            raise origin.error("split_late", f"payment {row.payment_id} was released to the "
                               "merchant after 30 days and can no longer be split",
                               "created_at")


def read_split(path: str | Path, *, default_tz: tzinfo = UTC) -> Iterator[SplitRow]:
    rules = SplitRules()
    for origin, row in read_csv_rows(path, required=REQUIRED):
        parsed = parse_row(origin, row, default_tz=default_tz)
        rules.check(parsed)
        yield parsed

