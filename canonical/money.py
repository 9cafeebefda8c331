"""Money: a Decimal amount in an ISO 4217 currency, exact to the currency's minor unit.

Binary floats are refused at the door because a float that looks like ``0.1`` is not 0.1, and a
ledger that reconciles to the cent cannot start from a number it does not know exactly.
"""

from __future__ import annotations

import decimal
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any

from iso4217 import Currency
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    WithJsonSchema,
    model_validator,
)

DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"


class RoundingMode(StrEnum):
    """Named rounding modes, so every rounding in the code says which one it means."""

    HALF_EVEN = "half_even"
    HALF_UP = "half_up"
    HALF_DOWN = "half_down"
    UP = "up"
    DOWN = "down"
    CEILING = "ceiling"
    FLOOR = "floor"

    @property
    def decimal_mode(self) -> str:
        return _DECIMAL_MODES[self]


_DECIMAL_MODES = {
    RoundingMode.HALF_EVEN: decimal.ROUND_HALF_EVEN,
    RoundingMode.HALF_UP: decimal.ROUND_HALF_UP,
    RoundingMode.HALF_DOWN: decimal.ROUND_HALF_DOWN,
    RoundingMode.UP: decimal.ROUND_UP,
    RoundingMode.DOWN: decimal.ROUND_DOWN,
    RoundingMode.CEILING: decimal.ROUND_CEILING,
    RoundingMode.FLOOR: decimal.ROUND_FLOOR,
}


class MoneyError(ValueError):
    """An amount or currency that cannot be money."""


@lru_cache(maxsize=512)
def minor_unit(currency: str) -> int:
    """The number of decimals ISO 4217 gives the currency (2 for EUR, 0 for VND, 3 for BHD)."""
    try:
        exponent = Currency(currency).exponent
    except ValueError:
        raise MoneyError(f"unknown currency {currency!r}: not an ISO 4217 code") from None
    if exponent is None:
        raise MoneyError(f"currency {currency!r} has no minor unit in ISO 4217 and cannot be money")
    return exponent


@lru_cache(maxsize=512)
def _quantum(places: int) -> Decimal:
    return Decimal(1).scaleb(-places)


def parse_decimal(value: Any, *, field: str = "amount") -> Decimal:
    """Turn str/int/Decimal into a finite Decimal; refuse floats and booleans by name."""
    if isinstance(value, bool):
        raise MoneyError(f"{field}: a boolean is not an amount")
    if isinstance(value, float):
        raise MoneyError(
            f"{field}: binary floats are not accepted for money ({value!r}); send a decimal string"
        )
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            result = Decimal(text)
        except decimal.InvalidOperation:
            raise MoneyError(f"{field}: {value!r} is not a decimal number") from None
        if not text or text.lower().lstrip("+-") in {"nan", "snan", "inf", "infinity"}:
            raise MoneyError(f"{field}: {value!r} is not a finite decimal number")
    else:
        raise MoneyError(f"{field}: {type(value).__name__} is not an amount")
    if not result.is_finite():
        raise MoneyError(f"{field}: {value!r} is not a finite decimal number")
    return result


def quantize_exact(amount: Decimal, currency: str, *, places: int | None = None) -> Decimal:
    """Quantize to the minor unit, accepting extra digits only when they are zeros.

    ``18.150 EUR`` is 18.15; ``18.155 EUR`` is refused: silently rounding an amount someone
    sent would hide a broken upstream system.
    """
    places = minor_unit(currency) if places is None else places
    quantum = _quantum(places)
    try:
        quantized = amount.quantize(quantum, rounding=decimal.ROUND_HALF_EVEN)
    except decimal.InvalidOperation:  # more digits than the context's precision holds
        raise MoneyError(
            f"amount {amount} has more digits than an amount may have "
            f"({decimal.getcontext().prec} significant digits)"
        ) from None
    if quantized != amount:
        raise MoneyError(
            f"amount {amount} has more decimals than {currency} allows ({places}); "
            "only trailing zeros may exceed the minor unit"
        )
    return quantized


def _reject_float(value: Any) -> Any:
    if isinstance(value, float | bool):
        return parse_decimal(value)  # raises with the reason
    return value


AmountField = Annotated[
    Decimal,
    BeforeValidator(_reject_float),
    WithJsonSchema({"type": "string", "pattern": DECIMAL_PATTERN, "description": "decimal string"}),
]
CurrencyCode = Annotated[
    str,
    WithJsonSchema({"type": "string", "pattern": CURRENCY_PATTERN, "description": "ISO 4217 code"}),
]


class Money(BaseModel):
    """An exact amount in one currency; arithmetic refuses to mix currencies."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount: AmountField
    currency: CurrencyCode

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        if isinstance(data, dict):
            currency = data.get("currency")
            if not isinstance(currency, str) or len(currency) != 3 or not currency.isupper():
                raise MoneyError(f"currency: {currency!r} is not a three-letter ISO 4217 code")
            amount = parse_decimal(data.get("amount"))
            return {"amount": quantize_exact(amount, currency), "currency": currency}
        return data

    # construction helpers ------------------------------------------------------------------
    @classmethod
    def of(
        cls,
        amount: Decimal | int | str,
        currency: str,
        *,
        rounding: RoundingMode | None = None,
    ) -> Money:
        """Build Money; with ``rounding`` the amount is rounded to the minor unit first."""
        value = parse_decimal(amount)
        if rounding is not None:
            value = value.quantize(_quantum(minor_unit(currency)), rounding=rounding.decimal_mode)
        return cls(amount=value, currency=currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(amount=Decimal(0), currency=currency)

    @classmethod
    def from_minor_units(cls, units: int, currency: str, *, exponent: int | None = None) -> Money:
        """Read an integer count of minor units; ``exponent`` is the provider's own (some
        providers count IDR, HUF or TWD with 0 decimals where ISO 4217 says 2)."""
        if isinstance(units, bool) or not isinstance(units, int):
            raise MoneyError(f"minor units must be an integer, not {units!r}")
        places = minor_unit(currency) if exponent is None else exponent
        return cls(amount=Decimal(units).scaleb(-places), currency=currency)

    def to_minor_units(self, *, exponent: int | None = None) -> int:
        places = minor_unit(self.currency) if exponent is None else exponent
        scaled = self.amount.scaleb(places)
        if scaled != scaled.to_integral_value():
            raise MoneyError(
                f"{self} cannot be expressed in whole units with {places} decimals"
            )
        return int(scaled)

    # arithmetic ----------------------------------------------------------------------------
    def _same(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise MoneyError(f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(amount=self.amount + other.amount, currency=self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(amount=self.amount - other.amount, currency=self.currency)

    def __neg__(self) -> Money:
        return Money(amount=-self.amount, currency=self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount <= other.amount

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount > other.amount

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.amount >= other.amount

    def times(self, factor: Decimal | int | str, *, rounding: RoundingMode) -> Money:
        """Multiply and round to the minor unit with the named rounding mode."""
        return Money.of(self.amount * parse_decimal(factor, field="factor"), self.currency,
                        rounding=rounding)

    def is_zero(self) -> bool:
        return self.amount == 0

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"

    def to_wire(self) -> dict[str, str]:
        """The wire form every contract uses: ``{"amount": "12.50", "currency": "EUR"}``."""
        return {"amount": str(self.amount), "currency": self.currency}
