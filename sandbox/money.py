"""ISO 4217 minor units, as the sandboxes apply them.

Written here rather than shared with the connectors on purpose (see DESIGN.md section 2).
The wallet sites follow ISO 4217 (IDR and TWD have two decimals there even if some payment
providers treat them as whole units); a site that differs can be given overrides.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["MINOR_UNITS", "decimals_of", "parse_amount"]

MINOR_UNITS: dict[str, int] = {
    # the business's currencies
    "SGD": 2, "MYR": 2, "THB": 2, "IDR": 2, "PHP": 2, "VND": 0, "TWD": 2, "HKD": 2,
    # others a test may use
    "EUR": 2, "USD": 2, "GBP": 2, "CNY": 2, "AUD": 2, "CHF": 2, "INR": 2, "CAD": 2,
    "JPY": 0, "KRW": 0, "HUF": 2, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "JOD": 3,
    "OMR": 3, "TND": 3,
}  # fmt: skip

_DECIMAL_STRING = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?$")


def parse_amount(text: str) -> Decimal:
    """A strict decimal string (``"12.50"``): no exponent, sign only ``-``, no spaces."""
    if not isinstance(text, str) or not _DECIMAL_STRING.match(text):
        raise ValueError(f"{text!r} is not a decimal string")
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the regex already guarantees it
        raise ValueError(f"{text!r} is not a decimal string") from None


def decimals_of(amount: Decimal) -> int:
    """Significant decimals: trailing zeros do not count (``18.150`` has 2)."""
    normalized = amount.normalize()
    exponent = normalized.as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)
