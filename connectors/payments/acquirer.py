"""The card acquirer's settlement details report (CSV with Adyen-like columns).

One row per booking on the merchant account: ``Settled`` payments, ``Refunded`` and
``Chargeback`` debits, ``Fee`` rows, and the ``MerchantPayout`` row that closes a batch and
pays its net out to the bank. Gross amounts are in the payment's currency, net amounts and
fees in the settlement currency; both are decimals in major units, exact to the currency.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from connectors.payments.common import (
    Origin,
    check_currency,
    optional,
    parse_amount,
    parse_datetime,
    parse_timezone,
    read_csv_rows,
    require,
)

COLUMNS = (
    "Company Account", "Merchant Account", "Psp Reference", "Merchant Reference",
    "Payment Method", "Creation Date", "TimeZone", "Type", "Modification Reference",
    "Gross Currency", "Gross Debit (GC)", "Gross Credit (GC)", "Exchange Rate", "Net Currency",
    "Net Debit (NC)", "Net Credit (NC)", "Commission (NC)", "Markup (NC)", "Scheme Fees (NC)",
    "Interchange (NC)", "Payment Method Variant", "Batch Number",
)  # fmt: skip
REQUIRED = (
    "Merchant Account", "Psp Reference", "Merchant Reference", "Creation Date", "TimeZone",
    "Type", "Gross Currency", "Gross Debit (GC)", "Gross Credit (GC)", "Net Currency",
    "Net Debit (NC)", "Net Credit (NC)", "Batch Number",
)  # fmt: skip
FEE_COLUMNS = ("Commission (NC)", "Markup (NC)", "Scheme Fees (NC)", "Interchange (NC)")
DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%d-%m-%Y %H:%M:%S")


@dataclass(frozen=True, slots=True)
class AcquirerRow:
    origin: Origin
    company_account: str | None
    merchant_account: str
    psp_reference: str | None
    merchant_reference: str | None
    payment_method: str | None
    created_at: datetime
    type: str
    modification_reference: str | None
    gross_currency: str | None
    gross_debit: Decimal | None
    gross_credit: Decimal | None
    exchange_rate: Decimal | None
    net_currency: str | None
    net_debit: Decimal | None
    net_credit: Decimal | None
    commission: Decimal | None
    markup: Decimal | None
    scheme_fees: Decimal | None
    interchange: Decimal | None
    payment_method_variant: str | None
    batch_number: str | None

    @property
    def fees(self) -> dict[str, Decimal]:
        found = {"commission": self.commission, "markup": self.markup,
                 "scheme_fee": self.scheme_fees, "interchange": self.interchange}
        return {k: v for k, v in found.items() if v is not None}


def _amount(row: dict[str, str], column: str, currency: str | None, origin: Origin
            ) -> Decimal | None:
    text = optional(row.get(column))
    if text is None:
        return None
    if currency is None:
        raise origin.error("currency_missing", f"an amount in {column!r} needs a currency",
                           column)
    return parse_amount(text, currency, origin, column)


def _currency(row: dict[str, str], column: str, origin: Origin) -> str | None:
    text = optional(row.get(column))
    return check_currency(text, origin, column) if text is not None else None


def parse_row(origin: Origin, row: dict[str, str]) -> AcquirerRow:
    zone = parse_timezone(require(row, "TimeZone", origin), origin, "TimeZone")
    created = parse_datetime(require(row, "Creation Date", origin), origin, "Creation Date",
                             default_tz=zone, formats=DATE_FORMATS)
    gross_currency = _currency(row, "Gross Currency", origin)
    net_currency = _currency(row, "Net Currency", origin)
    rate_text = optional(row.get("Exchange Rate"))
    rate = None
    if rate_text is not None:
        try:
            rate = Decimal(rate_text)
        except ArithmeticError:
            raise origin.error("amount_format", f"{rate_text!r} is not a number",
                               "Exchange Rate") from None
    parsed = AcquirerRow(
        origin=origin,
        company_account=optional(row.get("Company Account")),
        merchant_account=require(row, "Merchant Account", origin),
        psp_reference=optional(row.get("Psp Reference")),
        merchant_reference=optional(row.get("Merchant Reference")),
        payment_method=optional(row.get("Payment Method")),
        created_at=created,
        type=require(row, "Type", origin),
        modification_reference=optional(row.get("Modification Reference")),
        gross_currency=gross_currency,
        gross_debit=_amount(row, "Gross Debit (GC)", gross_currency, origin),
        gross_credit=_amount(row, "Gross Credit (GC)", gross_currency, origin),
        exchange_rate=rate,
        net_currency=net_currency,
        net_debit=_amount(row, "Net Debit (NC)", net_currency, origin),
        net_credit=_amount(row, "Net Credit (NC)", net_currency, origin),
        commission=_amount(row, "Commission (NC)", net_currency, origin),
        markup=_amount(row, "Markup (NC)", net_currency, origin),
        scheme_fees=_amount(row, "Scheme Fees (NC)", net_currency, origin),
        interchange=_amount(row, "Interchange (NC)", net_currency, origin),
        payment_method_variant=optional(row.get("Payment Method Variant")),
        batch_number=optional(row.get("Batch Number")),
    )
    if parsed.gross_debit is not None and parsed.gross_credit is not None:
        raise origin.error("debit_and_credit", "both Gross Debit and Gross Credit are filled",
                           "Gross Debit (GC)")
    if parsed.net_debit is not None and parsed.net_credit is not None:
        raise origin.error("debit_and_credit", "both Net Debit and Net Credit are filled",
                           "Net Debit (NC)")
    if all(v is None for v in (parsed.gross_debit, parsed.gross_credit, parsed.net_debit,
                               parsed.net_credit)):
        raise origin.error("amount_missing", "no gross or net amount", "Gross Credit (GC)")
    return parsed


def read_acquirer(path: str | Path) -> Iterator[AcquirerRow]:
    """Every row of a settlement details report, streamed."""
    rows = read_csv_rows(path, required=REQUIRED,
                         optional_columns=[c for c in COLUMNS if c not in REQUIRED])
    for origin, row in rows:
        yield parse_row(origin, row)
