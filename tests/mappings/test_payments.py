"""Payment mappings: provisional bank evidence superseded by the booked entry, never counted
twice; traces are magnitudes with a direction and Decimal money."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from canonical import (
    Direction,
    Money,
    PaymentSource,
    PaymentTrace,
    SourceRef,
    TraceKind,
    TraceReferences,
    TraceStatus,
)
from canonical.schema import validate
from mappings.payments import record_key, supersede_provisional


def trace(name: str, *, status: TraceStatus = TraceStatus.BOOKED,
          source: PaymentSource = PaymentSource.CAMT053, amount: str = "10.00",
          account: str = "NL26VAYB8060476890", day: date = date(2026, 11, 20),
          **refs: Any) -> PaymentTrace:
    return PaymentTrace(
        trace_id=record_key("t", name), source=source, provider="bank", account=account,
        amount=Money.of(amount, "EUR"), direction=Direction.CREDIT, status=status,
        kind=TraceKind.PAYMENT, booking_date=day, value_date=day,
        references=TraceReferences(**refs), origin=SourceRef(file=f"{name}.xml", line=1),
    )


def test_a_provisional_entry_gives_way_to_the_booked_one_by_servicer_reference() -> None:
    intraday = trace("052", status=TraceStatus.PROVISIONAL, source=PaymentSource.CAMT052,
                     account_servicer_reference="ASR-1")
    notice = trace("054", status=TraceStatus.PROVISIONAL, source=PaymentSource.CAMT054,
                   account_servicer_reference="ASR-1")
    booked = trace("053", account_servicer_reference="ASR-1")
    result = supersede_provisional([intraday, notice, booked])
    assert result.traces == [booked]
    assert [(s.trace, s.by, s.rule) for s in result.superseded] == [
        (intraday, booked, "account_servicer_reference"),
        (notice, booked, "account_servicer_reference")]


def test_without_servicer_reference_end_to_end_id_amount_and_date_decide() -> None:
    interim = trace("942", status=TraceStatus.PROVISIONAL, source=PaymentSource.MT942,
                    account="nl26 vayb 8060 4768 90", end_to_end_id="E2E-1")
    booked = trace("940", source=PaymentSource.MT940, end_to_end_id="E2E-1")
    other_amount = trace("942b", status=TraceStatus.PROVISIONAL, amount="10.01",
                         end_to_end_id="E2E-1")
    other_day = trace("942c", status=TraceStatus.PROVISIONAL, day=date(2026, 11, 21),
                      end_to_end_id="E2E-1")
    result = supersede_provisional([interim, other_amount, booked, other_day])
    assert result.traces == [other_amount, booked, other_day]
    assert result.superseded[0].rule == "end_to_end_id"


def test_provisional_evidence_without_a_booking_counts_once() -> None:
    intraday = trace("052", status=TraceStatus.PROVISIONAL, account_servicer_reference="A")
    notice = trace("054", status=TraceStatus.PROVISIONAL, account_servicer_reference="A")
    result = supersede_provisional([intraday, notice])
    assert result.traces == [intraday]
    assert result.superseded[0].by is intraday


def test_the_same_trace_read_twice_counts_once_and_booked_entries_never_merge() -> None:
    one = trace("053", account_servicer_reference="A")
    two = trace("053-other", account_servicer_reference="A")  # two bookings, same reference
    result = supersede_provisional([one, one, two])
    assert result.traces == [one, two]
    assert result.superseded[0].rule == "same_trace"


def test_different_accounts_are_different_money() -> None:
    provisional = trace("052", status=TraceStatus.PROVISIONAL, account="CH93",
                        account_servicer_reference="A")
    booked = trace("053", account_servicer_reference="A")
    assert supersede_provisional([provisional, booked]).traces == [provisional, booked]


def test_dedupe_is_order_independent_in_what_it_keeps() -> None:
    items = [trace("052", status=TraceStatus.PROVISIONAL, account_servicer_reference="A"),
             trace("053", account_servicer_reference="A"),
             trace("054", status=TraceStatus.PROVISIONAL, account_servicer_reference="B")]
    forward = {t.trace_id for t in supersede_provisional(items).traces}
    backward = {t.trace_id for t in supersede_provisional(list(reversed(items))).traces}
    assert forward == backward


def test_a_trace_is_a_magnitude_and_never_a_float() -> None:
    with pytest.raises(ValidationError, match="magnitude"):
        trace("neg", amount="-1.00")
    good = trace("ok").model_dump(mode="json")
    assert good["amount"] == {"amount": "10.00", "currency": "EUR"}
    with pytest.raises(ValueError, match=r"amount\.amount: 10\.0 is not of type .string."):
        validate("PaymentTrace", {**good, "amount": {"amount": 10.0, "currency": "EUR"}})
    assert isinstance(validate("PaymentTrace", good), PaymentTrace)
    with pytest.raises(ValidationError, match="float"):
        Money(amount=10.0, currency="EUR")  # type: ignore[arg-type]


def test_signed_amount_follows_the_direction() -> None:
    credit = trace("c")
    debit = credit.model_copy(update={"direction": Direction.DEBIT})
    assert credit.signed_amount.amount == Decimal("10.00")
    assert debit.signed_amount.amount == Decimal("-10.00")


def test_record_keys_are_stable_and_external_id_safe() -> None:
    key = record_key("camt053", "NL26", None, 1, Decimal("8.85"))
    assert key == record_key("camt053", "NL26", None, 1, Decimal("8.85"))
    assert key != record_key("camt053", "NL26", None, 2, Decimal("8.85"))
    assert key.replace("-", "").replace("_", "").isalnum() and len(key) <= 128


def test_a_wallet_delivery_is_evidence_without_its_codes() -> None:
    from canonical import DeliveryKind
    from mappings.errors import MappingError
    from mappings.payments import wallet_delivery_to_delivery

    raw = {"delivery_id": "sg1-D00000001", "order_id": "O1", "line_id": "L1",
           "codes": [{"code": "********WXYZ"}, {"code": "********ABCD", "pin": "****"}],
           "delivered_at": "2026-11-20T10:00:00+08:00"}
    delivery = wallet_delivery_to_delivery(raw, site="sg1", order_id="O1")
    assert delivery.kind is DeliveryKind.CODES and delivery.quantity == 2
    assert delivery.delivered_at.isoformat() == "2026-11-20T02:00:00+00:00"
    assert "WXYZ" not in delivery.model_dump_json()
    with pytest.raises(MappingError, match="delivered_at"):
        wallet_delivery_to_delivery({**raw, "delivered_at": "2026-11-20T10:00:00"},
                                    site="sg1", order_id="O1")
