from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from canonical import Money, MoneyError, RoundingMode, minor_unit


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("18.150", "EUR", Decimal("18.15")),
        ("18.1", "EUR", Decimal("18.10")),
        ("10000", "VND", Decimal("10000")),
        ("10000.000", "VND", Decimal("10000")),
        ("1.234", "BHD", Decimal("1.234")),
        (5, "SGD", Decimal("5.00")),
        (Decimal("-3.5"), "USD", Decimal("-3.50")),
    ],
)
def test_amount_is_quantised_to_the_minor_unit(amount, currency, expected):
    money = Money.model_validate({"amount": amount, "currency": currency})
    assert money.amount == expected
    assert money.amount.as_tuple().exponent == -minor_unit(currency)


@pytest.mark.parametrize(
    ("amount", "currency", "words"),
    [
        ("18.155", "EUR", "more decimals than EUR allows (2)"),
        ("1.5", "VND", "more decimals than VND allows (0)"),
        (18.15, "EUR", "binary floats are not accepted"),
        (True, "EUR", "boolean"),
        ("abc", "EUR", "not a decimal number"),
        ("NaN", "EUR", "not a finite"),
        ("Infinity", "EUR", "not a finite"),
        ("1", "QQQ", "unknown currency 'QQQ'"),
        ("1", "XAU", "no minor unit"),
        ("9" * 30, "EUR", "more digits than an amount may have (28 significant digits)"),
        ("1", "eur", "three-letter ISO 4217 code"),
    ],
)
def test_bad_amounts_are_refused_with_the_rule(amount, currency, words):
    with pytest.raises(ValidationError) as info:
        Money.model_validate({"amount": amount, "currency": currency})
    assert words in str(info.value)


def test_arithmetic_stays_in_one_currency():
    a = Money.of("10.10", "SGD")
    b = Money.of("0.95", "SGD")
    assert (a + b).amount == Decimal("11.05")
    assert (a - b).amount == Decimal("9.15")
    assert (-a).amount == Decimal("-10.10")
    assert a > b
    with pytest.raises(MoneyError, match="cannot combine SGD with EUR"):
        a + Money.of("1", "EUR")


def test_rounding_is_named_and_explicit():
    price = Money.of("10.00", "EUR")
    assert price.times("0.125", rounding=RoundingMode.HALF_EVEN).amount == Decimal("1.25")
    assert Money.of("0.125", "EUR", rounding=RoundingMode.HALF_EVEN).amount == Decimal("0.12")
    assert Money.of("0.125", "EUR", rounding=RoundingMode.HALF_UP).amount == Decimal("0.13")
    assert Money.of("0.121", "EUR", rounding=RoundingMode.CEILING).amount == Decimal("0.13")
    with pytest.raises(ValidationError):
        Money.of("0.125", "EUR")  # without a rounding mode, extra digits are an error


def test_minor_units_with_a_provider_exponent():
    # ISO 4217 gives IDR two decimals; some providers count it in whole rupiah
    assert Money.from_minor_units(1500000, "IDR", exponent=0).amount == Decimal("1500000.00")
    assert Money.from_minor_units(1250, "EUR").amount == Decimal("12.50")
    assert Money.of("12.50", "EUR").to_minor_units() == 1250
    assert Money.of("15000", "IDR").to_minor_units(exponent=0) == 15000
    with pytest.raises(MoneyError):
        Money.of("0.50", "IDR").to_minor_units(exponent=0)


def test_wire_form_is_a_decimal_string():
    assert Money.of("7", "HKD").to_wire() == {"amount": "7.00", "currency": "HKD"}
    assert Money.of("7", "HKD").model_dump(mode="json") == {"amount": "7.00", "currency": "HKD"}
