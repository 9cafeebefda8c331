"""The CSV sources: card acquirer settlement details, PayPal-style settlement, COD courier
remittances, wallet balance payments and split settlements, read and normalised."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from canonical import (
    Delivery,
    DeliveryStatus,
    Direction,
    Fee,
    FeeKind,
    PaymentTrace,
    Payout,
    TraceKind,
)
from connectors.payments.common import PaymentFileError
from connectors.payments.detect import detect_format
from flows.payments import read_payment_file
from tests.connectors.payments.samples import (
    COD_COLUMNS,
    COD_ROWS,
    PAYPAL_COLUMNS,
    PAYPAL_ROWS,
    SPLIT_COLUMNS,
    WALLET_COLUMNS,
    WALLET_ROWS,
    acquirer_file,
    split_row,
    write_csv,
)


def _of(records: list, cls: type) -> list:
    return [r for r in records if isinstance(r, cls)]


def test_acquirer_settlement_rows_become_traces_fees_and_a_payout(tmp_path: Path) -> None:
    path = acquirer_file(tmp_path / "settlement_detail_report_batch_42.csv")
    assert detect_format(path) == "acquirer"
    records = list(read_payment_file(path))
    settled, refunded, payout_trace = _of(records, PaymentTrace)
    assert settled.kind is TraceKind.PAYMENT and settled.direction is Direction.CREDIT
    assert settled.amount.amount == Decimal("100.00") and settled.amount.currency == "SGD"
    assert settled.fee is not None and settled.fee.amount == Decimal("2.90")
    assert settled.net is not None and settled.net.amount == Decimal("97.10")
    assert settled.references.provider_reference == "PSP0001"
    assert settled.references.merchant_reference == "sg1-O1001"
    assert settled.booked_at == datetime.fromisoformat("2026-11-20T02:15:00+00:00")
    assert settled.booking_date == date(2026, 11, 20)
    assert refunded.kind is TraceKind.REFUND and refunded.direction is Direction.DEBIT
    assert refunded.references.original_reference == "PSP0001"
    assert refunded.references.provider_reference == "MOD0002"
    assert refunded.net is not None and refunded.net.amount == Decimal("-40.20")
    assert payout_trace.kind is TraceKind.PAYOUT and payout_trace.amount.amount == Decimal("56.90")
    (payout,) = _of(records, Payout)
    assert payout.payout_id == "VouchCoSG-batch-42" and payout.amount.amount == Decimal("56.90")
    fees = _of(records, Fee)
    assert {(f.kind, f.amount.amount) for f in fees} == {
        (FeeKind.COMMISSION, Decimal("2.00")), (FeeKind.MARKUP, Decimal("0.50")),
        (FeeKind.SCHEME_FEE, Decimal("0.30")), (FeeKind.INTERCHANGE, Decimal("0.10")),
        (FeeKind.COMMISSION, Decimal("0.20"))}
    # net settled less net refunded is what the batch paid out
    assert settled.net.amount + refunded.net.amount == payout.amount.amount


def test_reading_the_same_file_twice_gives_the_same_ids(tmp_path: Path) -> None:
    path = acquirer_file(tmp_path / "report.csv")
    first = [r.model_dump() for r in read_payment_file(path)]
    assert first == [r.model_dump() for r in read_payment_file(path)]


def test_paypal_minor_units_use_the_providers_exponent(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "STL-20261120.01.009.CSV", PAYPAL_COLUMNS, PAYPAL_ROWS)
    assert detect_format(path) == "paypal"
    records = list(read_payment_file(path, account="paypal-merchant-1"))
    payment, refund = _of(records, PaymentTrace)
    # PayPal counts TWD in whole dollars, ISO 4217 with cents: 1500 is TWD 1500.00
    assert payment.amount.amount == Decimal("1500.00") and payment.amount.currency == "TWD"
    assert payment.fee is not None and payment.fee.amount == Decimal("60")
    assert payment.net is not None and payment.net.amount == Decimal("1440")
    assert payment.references.merchant_reference == "tw1-O77"
    assert payment.account == "paypal-merchant-1"
    assert refund.kind is TraceKind.REFUND and refund.direction is Direction.DEBIT
    assert refund.amount.amount == Decimal("12.50")
    assert refund.references.original_reference == "2AB00000CD1111111"
    assert refund.fee is not None and refund.fee.amount == Decimal("-0.30")  # fee given back


def test_paypal_amounts_must_be_whole_minor_units(tmp_path: Path) -> None:
    rows = [dict(PAYPAL_ROWS[0], **{"Gross Transaction Amount": "15.00"})]
    path = write_csv(tmp_path / "stl.csv", PAYPAL_COLUMNS, rows)
    with pytest.raises(PaymentFileError) as info:
        list(read_payment_file(path))
    assert info.value.rule == "amount_format" and info.value.field == "Gross Transaction Amount"


def test_cod_rows_are_payment_fee_and_delivery_evidence(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "ninjavan_remittance_2026-11-21.csv", COD_COLUMNS, COD_ROWS)
    assert detect_format(path) == "cod"
    records = list(read_payment_file(path))
    (trace,) = _of(records, PaymentTrace)
    assert trace.amount.amount == Decimal("1200.00") and trace.amount.currency == "PHP"
    assert trace.references.merchant_reference == "O500"
    assert trace.references.batch_id == "R-2026-11-21"
    assert trace.net is not None and trace.net.amount == Decimal("1176.00")
    delivered, returned = _of(records, Delivery)
    assert delivered.status is DeliveryStatus.DELIVERED and delivered.quantity == 1
    assert delivered.tracking_number == "NV123" and delivered.site == "ph1"
    assert returned.status is DeliveryStatus.RETURNED and returned.order_id == "O501"
    assert sorted(f.amount.amount for f in _of(records, Fee)) == [Decimal("10.00"),
                                                                   Decimal("24.00")]


def test_cod_remittance_must_add_up(tmp_path: Path) -> None:
    rows = [dict(COD_ROWS[0], remitted_amount="1180.00")]
    path = write_csv(tmp_path / "cod.csv", COD_COLUMNS, rows)
    with pytest.raises(PaymentFileError) as info:
        list(read_payment_file(path, "cod"))
    assert info.value.rule == "remittance_arithmetic" and info.value.line == 2


def test_wallet_balance_payments_and_payouts(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "vn1_wallet_2026-11-20.csv", WALLET_COLUMNS, WALLET_ROWS)
    assert detect_format(path) == "wallet"
    records = list(read_payment_file(path))
    payment, payout_trace = _of(records, PaymentTrace)
    assert payment.amount.amount == Decimal("250000") and payment.amount.currency == "VND"
    assert payment.direction is Direction.CREDIT and payment.references.merchant_reference == "O9"
    assert payout_trace.kind is TraceKind.PAYOUT and payout_trace.direction is Direction.DEBIT
    (payout,) = _of(records, Payout)
    assert payout.payout_id == "S1"


def test_wallet_balance_refuses_decimals_vnd_does_not_have(tmp_path: Path) -> None:
    rows = [dict(WALLET_ROWS[0], amount="250000.5")]
    path = write_csv(tmp_path / "wallet.csv", WALLET_COLUMNS, rows)
    with pytest.raises(PaymentFileError) as info:
        list(read_payment_file(path))
    assert info.value.rule == "amount_decimals" and info.value.field == "amount"


def test_split_settlements_follow_the_money(tmp_path: Path) -> None:
    rows = [split_row("S0", "payment", "merchant-1", "100.00", receiver_type="merchant"),
            split_row("S1", "split", "user-7", "20.00"),
            split_row("S2", "split", "user-8", "10.00"),
            split_row("S3", "release", "merchant-1", "70.00", receiver_type="merchant"),
            split_row("S4", "clawback", "user-7", "20.00")]
    path = write_csv(tmp_path / "split.csv", SPLIT_COLUMNS, rows)
    assert detect_format(path) == "split"
    traces = list(read_payment_file(path))
    assert [t.kind for t in traces] == [TraceKind.PAYMENT, TraceKind.SPLIT, TraceKind.SPLIT,
                                        TraceKind.SPLIT_RELEASE, TraceKind.CLAWBACK]
    assert traces[1].counterparty is not None and traces[1].counterparty.account == "user-7"
    assert sum((t.signed_amount.amount for t in traces[:4]), Decimal(0)) == Decimal("140.00")


@pytest.mark.parametrize(("rows", "rule", "line"), [
    ([split_row("S1", "split", "user-1", "20.00"), split_row("S2", "split", "user-2", "10.01")],
     "split_share", 3),
    ([split_row(f"S{i}", "split", f"user-{i}", "0.01") for i in range(51)],
     "split_receivers", 52),
    ([split_row("S1", "split", "merchant-1", "1.00", receiver_type="merchant")],
     "split_receiver", 2),
    ([split_row("S0", "payment", "merchant-1", "100.00", receiver_type="merchant"),
      split_row("S1", "split", "user-1", "1.00", when="2026-12-21T10:00:00+08:00")],
     "split_late", 3),
])
def test_split_rules_name_the_row_that_breaks_them(
    tmp_path: Path, rows: list[dict[str, str]], rule: str, line: int,
) -> None:
    path = write_csv(tmp_path / "split.csv", SPLIT_COLUMNS, rows)
    with pytest.raises(PaymentFileError) as info:
        list(read_payment_file(path, "split"))
    assert info.value.rule == rule and info.value.line == line


@pytest.mark.parametrize(("text", "minutes"), [
    ("SGT", 480), ("+08:00", 480), ("GMT-5", -300), ("-0530", -330),
    ("Asia/Singapore", None), ("+25:00", "refused"), ("Mars/Olympus", "refused")])
def test_a_time_zone_is_an_abbreviation_an_offset_under_a_day_or_a_name(text, minutes):
    """An offset of a day or more is not a time zone: refused with the rule, as an unknown
    name is (it used to escape as a bare ValueError)."""
    from connectors.payments.common import Origin, parse_timezone, timezone_of

    if minutes == "refused":
        assert timezone_of(text) is None
        with pytest.raises(PaymentFileError, match=r"line 3: TimeZone: .* is not a time zone "
                                                    r"\[timezone_unknown\]"):
            parse_timezone(text, Origin("settlement.csv", 3, 1), "TimeZone")
        return
    zone = parse_timezone(text, Origin("settlement.csv", 3, 1), "TimeZone")
    offset = zone.utcoffset(datetime(2026, 11, 20, 12, 0))
    assert offset is not None
    if minutes is not None:
        assert offset.total_seconds() == minutes * 60
