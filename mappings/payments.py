"""Payment sources' records -> canonical PaymentTrace, Payout, Fee and Delivery. Pure
functions, no I/O.

Each ``*_records`` function takes one record of a source and returns the canonical records it
stands for (a settled card payment is a trace and its fees; a COD shipment is a trace, a fee
and a delivery). ``supersede_provisional`` then makes sure the same money is never counted
twice when a bank reports it provisionally (camt.052/054, MT942) and then books it
(camt.053, MT940).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from canonical import (
    Counterparty,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Direction,
    Fee,
    FeeKind,
    Money,
    PaymentSource,
    PaymentTrace,
    Payout,
    PayoutStatus,
    SourceRef,
    TraceKind,
    TraceReferences,
    TraceStatus,
)
from canonical.schema import Violation
from mappings.errors import MappingError, violations_from

PaymentRecord = PaymentTrace | Payout | Fee | Delivery

MAX_REF = 200


def record_key(prefix: str, *parts: object) -> str:
    """A stable key of ``[A-Za-z0-9_-]``: the prefix and a hash of the identifying parts."""
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def _ref(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value[:MAX_REF] or None


def _refs(**values: str | None) -> TraceReferences:
    return TraceReferences(**{k: _ref(v) for k, v in values.items() if _ref(v) is not None})


def _source_ref(origin: Any) -> SourceRef:
    return SourceRef(file=origin.file, line=origin.line, index=origin.index)


def _build(cls: type[Any], label: str, **fields: Any) -> Any:
    try:
        return cls(**fields)
    except ValidationError as exc:
        raise MappingError(label, violations_from(exc)) from None


def _label(origin: Any, what: str) -> str:
    return f"{origin.file}" + (f": line {origin.line}" if origin.line else "") + f": {what}"


def _text(*parts: str | None, limit: int = 2000) -> str | None:
    joined = " | ".join(p for p in parts if p)
    return joined[:limit] or None


def _normal_account(value: str) -> str:
    return "".join(value.split()).upper()


# bank statements ----------------------------------------------------------------------------
CAMT_SOURCES = {"camt.053": PaymentSource.CAMT053, "camt.052": PaymentSource.CAMT052,
                "camt.054": PaymentSource.CAMT054}


def _bank_kind(credit: bool, bank_code: str | None) -> TraceKind:
    code = (bank_code or "").upper()
    if "CHRG" in code or code.endswith("-FEES") or "-COMM" in code:
        return TraceKind.FEE
    return TraceKind.PAYMENT if credit else TraceKind.TRANSFER


def camt_entry_records(entry: Any, *, provider: str | None = None) -> list[PaymentRecord]:
    """One camt entry (``connectors.payments.camt.CamtEntry``) as one trace. A batch entry
    keeps the bank's amount; its transactions' references are kept only when it has one."""
    statement = entry.statement
    source = CAMT_SOURCES[statement.message]
    label = _label(entry.origin, f"{statement.message} entry")
    credit = entry.credit_debit == "CRDT"
    if entry.credit_debit not in {"CRDT", "DBIT"}:
        raise MappingError(label, [Violation("CdtDbtInd", "enum",
                                             f"{entry.credit_debit!r} is not CRDT or DBIT")])
    booked = source is PaymentSource.CAMT053 and entry.status == "BOOK"
    booking = entry.booking_date or entry.value_date or (
        statement.created_at.date() if statement.created_at else None)
    if booking is None:
        raise MappingError(label, [Violation("BookgDt", "required",
                                             "no booking date, value date or statement date")])
    account = statement.account.identification or statement.statement_id or "unknown"
    single = entry.transactions[0] if len(entry.transactions) == 1 else None
    counterparty = None
    if single is not None:
        party = single.debtor if credit else single.creditor
        if party is not None:
            counterparty = Counterparty(name=party.name, account=party.account,
                                        agent=party.agent, identifier=party.identifier)
    amount = entry.amount
    if single is not None and single.amount is not None and single.currency == entry.currency \
            and entry.amount == 0:
        amount = single.amount
    references = _refs(
        account_servicer_reference=entry.account_servicer_reference
        or (single.account_servicer_reference if single else None),
        entry_reference=entry.entry_reference,
        end_to_end_id=single.end_to_end_id if single else None,
        instruction_id=single.instruction_id if single else None,
        transaction_id=single.transaction_id if single else None,
        uetr=single.uetr if single else None,
        customer_reference=single.creditor_reference if single else None,
        batch_id=entry.batch_payment_information_id or entry.batch_message_id
        or (single.payment_information_id if single else None),
    )
    description = _text(*(single.remittance if single else ()),
                        single.additional_info if single else None, entry.additional_info)
    trace = _build(
        PaymentTrace, label,
        trace_id=record_key(source.value, account, entry.account_servicer_reference
                            or entry.entry_reference, statement.statement_id,
                            entry.origin.index, entry.amount, entry.currency,
                            entry.credit_debit, booking),
        source=source, provider=provider or statement.account.servicer_bic or "bank",
        account=account, amount=Money(amount=amount, currency=entry.currency),
        direction=Direction.CREDIT if credit else Direction.DEBIT,
        status=TraceStatus.BOOKED if booked else TraceStatus.PROVISIONAL,
        kind=_bank_kind(credit, entry.bank_transaction_code),
        booking_date=booking, value_date=entry.value_date, booked_at=entry.booked_at,
        references=references, counterparty=counterparty, description=description,
        bank_transaction_code=entry.bank_transaction_code, reversal=entry.reversal,
        origin=_source_ref(entry.origin),
    )
    return [trace]


def mt940_line_records(line: Any, *, provider: str = "bank") -> list[PaymentRecord]:
    """One MT940/MT942 statement line (``connectors.payments.mt94x.Mt940Line``)."""
    statement = line.statement
    mt942 = statement.message == "MT942"
    source = PaymentSource.MT942 if mt942 else PaymentSource.MT940
    label = _label(line.origin, f"{statement.message} :61:")
    account = statement.account or "unknown"
    counterparty = None
    if line.applicant_name or line.applicant_iban:
        counterparty = Counterparty(name=line.applicant_name, account=line.applicant_iban,
                                    agent=line.applicant_bin)
    booking = line.entry_date or line.value_date
    trace = _build(
        PaymentTrace, label,
        trace_id=record_key(source.value, account, line.bank_reference,
                            statement.transaction_reference, statement.statement_number,
                            line.origin.index, line.amount, line.currency, line.mark,
                            line.value_date),
        source=source, provider=provider, account=account,
        amount=Money(amount=line.amount, currency=line.currency),
        direction=Direction.CREDIT if line.credit else Direction.DEBIT,
        status=TraceStatus.PROVISIONAL if mt942 else TraceStatus.BOOKED,
        kind=_bank_kind(line.credit, line.type_code),
        booking_date=booking, value_date=line.value_date,
        references=_refs(account_servicer_reference=line.bank_reference,
                         customer_reference=line.customer_reference,
                         end_to_end_id=line.end_to_end_reference),
        counterparty=counterparty,
        description=_text(line.purpose or line.details, line.extra_details),
        bank_transaction_code=line.type_code, reversal=line.reversal,
        origin=_source_ref(line.origin),
    )
    return [trace]


# the card acquirer --------------------------------------------------------------------------
ACQUIRER_KINDS: dict[str, TraceKind] = {
    "settled": TraceKind.PAYMENT,
    "settledbulk": TraceKind.PAYMENT,
    "refunded": TraceKind.REFUND,
    "refundedbulk": TraceKind.REFUND,
    "refundedreversed": TraceKind.REFUND_REVERSAL,
    "chargeback": TraceKind.CHARGEBACK,
    "secondchargeback": TraceKind.CHARGEBACK,
    "chargebackreversed": TraceKind.CHARGEBACK_REVERSAL,
    "fee": TraceKind.FEE,
    "paymentcost": TraceKind.FEE,
    "invoicededuction": TraceKind.FEE,
    "merchantpayout": TraceKind.PAYOUT,
    "depositcorrection": TraceKind.ADJUSTMENT,
    "balancetransfer": TraceKind.TRANSFER,
}
ACQUIRER_FEES = {"commission": FeeKind.COMMISSION, "markup": FeeKind.MARKUP,
                 "scheme_fee": FeeKind.SCHEME_FEE, "interchange": FeeKind.INTERCHANGE}


def acquirer_row_records(row: Any, *, provider: str = "card_acquirer") -> list[PaymentRecord]:
    """A settlement details row: a trace, the fees it was charged, and for a
    ``MerchantPayout`` row the payout itself."""
    label = _label(row.origin, f"{row.type} {row.psp_reference or ''}".strip())
    kind = ACQUIRER_KINDS.get(row.type.replace(" ", "").lower(), TraceKind.OTHER)
    local_day = row.created_at.date()
    gross_credit = row.gross_credit is not None
    gross = row.gross_credit if gross_credit else row.gross_debit
    if gross is not None:
        amount = Money(amount=gross, currency=row.gross_currency)
        credit = gross_credit
    else:  # payouts and fee rows carry only net amounts
        net_value = row.net_credit if row.net_credit is not None else row.net_debit
        amount = Money(amount=net_value, currency=row.net_currency)
        credit = row.net_credit is not None
    net = None
    if row.net_currency and (row.net_credit is not None or row.net_debit is not None):
        signed = row.net_credit if row.net_credit is not None else -row.net_debit
        net = Money(amount=signed, currency=row.net_currency)
    fees = row.fees
    fee_total = sum(fees.values(), Decimal(0)) if fees else None
    payout_id = f"{row.merchant_account}-batch-{row.batch_number}" if row.batch_number else None
    key_parts = (row.merchant_account, row.psp_reference, row.type,
                 row.modification_reference, row.batch_number)
    references = _refs(
        provider_reference=row.psp_reference if kind in {TraceKind.PAYMENT, TraceKind.OTHER}
        else row.modification_reference or row.psp_reference,
        original_reference=row.psp_reference if kind not in {TraceKind.PAYMENT,
                                                              TraceKind.OTHER} else None,
        merchant_reference=row.merchant_reference, batch_id=row.batch_number,
        payout_id=payout_id if kind is TraceKind.PAYOUT else None,
    )
    records: list[PaymentRecord] = [_build(
        PaymentTrace, label,
        trace_id=record_key("card", *key_parts),
        source=PaymentSource.CARD_ACQUIRER, provider=provider, account=row.merchant_account,
        amount=amount, direction=Direction.CREDIT if credit else Direction.DEBIT,
        status=TraceStatus.BOOKED, kind=kind, booking_date=local_day,
        booked_at=row.created_at, references=references,
        counterparty=Counterparty(name=row.payment_method_variant or row.payment_method)
        if row.payment_method else None,
        fee=Money(amount=fee_total, currency=row.net_currency)
        if fee_total is not None and row.net_currency else None,
        net=net, description=f"{row.type} {row.payment_method or ''}".strip(),
        origin=_source_ref(row.origin),
    )]
    for name, value in fees.items():
        if value == 0:
            continue
        records.append(_build(
            Fee, label, fee_id=record_key("fee", *key_parts, name), source=PaymentSource.CARD_ACQUIRER,
            provider=provider, account=row.merchant_account,
            amount=Money(amount=value, currency=row.net_currency), kind=ACQUIRER_FEES[name],
            booking_date=local_day, references=_refs(provider_reference=row.psp_reference,
                                                     batch_id=row.batch_number),
            origin=_source_ref(row.origin),
        ))
    if kind is TraceKind.FEE and not fees and net is not None:
        records.append(_build(
            Fee, label, fee_id=record_key("fee", *key_parts), source=PaymentSource.CARD_ACQUIRER,
            provider=provider, account=row.merchant_account,
            amount=Money(amount=-net.amount, currency=net.currency), kind=FeeKind.PROCESSING,
            booking_date=local_day, references=references, origin=_source_ref(row.origin),
        ))
    if kind is TraceKind.PAYOUT:
        records.append(_build(
            Payout, label, payout_id=payout_id or record_key("payout", *key_parts),
            source=PaymentSource.CARD_ACQUIRER, provider=provider, account=row.merchant_account,
            amount=Money(amount=amount.amount, currency=amount.currency),
            status=PayoutStatus.PAID, created_at=row.created_at, batch_id=row.batch_number,
            description=row.modification_reference, origin=_source_ref(row.origin),
        ))
    return records


# PayPal-style settlement --------------------------------------------------------------------
def paypal_kind(event_code: str) -> TraceKind:
    """PayPal transaction event codes by group (T00xx payments, T01xx fees, T04xx
    withdrawals, T11xx reversals and refunds, T12xx adjustments and chargebacks)."""
    exact = {"T1107": TraceKind.REFUND, "T1106": TraceKind.CHARGEBACK,
             "T1201": TraceKind.CHARGEBACK, "T1202": TraceKind.CHARGEBACK_REVERSAL,
             "T1108": TraceKind.FEE, "T0403": TraceKind.PAYOUT_REVERSAL}
    if event_code in exact:
        return exact[event_code]
    group = event_code[:3]
    return {"T00": TraceKind.PAYMENT, "T01": TraceKind.FEE, "T04": TraceKind.PAYOUT,
            "T11": TraceKind.REFUND, "T12": TraceKind.ADJUSTMENT,
            "T03": TraceKind.TRANSFER}.get(group, TraceKind.OTHER)


def paypal_row_records(row: Any, *, provider: str = "paypal", account: str | None = None
                       ) -> list[PaymentRecord]:
    label = _label(row.origin, f"PayPal {row.event_code} {row.transaction_id}")
    kind = paypal_kind(row.event_code)
    account = row.account_id or account or "paypal"
    when = row.completed_at or row.initiated_at
    fee = None
    if row.fee is not None and row.fee_currency:
        # a debited fee is a cost (positive), a credited one is given back (negative)
        fee = Money(amount=row.fee if not row.fee_credit else -row.fee,
                    currency=row.fee_currency)
    net = None
    if fee is not None and fee.currency == row.currency:
        signed = row.amount if row.credit else -row.amount
        net = Money(amount=signed - fee.amount, currency=row.currency)
    original = row.reference_id if kind is not TraceKind.PAYMENT else None
    records: list[PaymentRecord] = [_build(
        PaymentTrace, label, trace_id=record_key("paypal", account, row.transaction_id),
        source=PaymentSource.PAYPAL, provider=provider, account=account,
        amount=Money(amount=row.amount, currency=row.currency),
        direction=Direction.CREDIT if row.credit else Direction.DEBIT,
        status=TraceStatus.BOOKED, kind=kind, booking_date=when.date(), booked_at=when,
        references=_refs(provider_reference=row.transaction_id, original_reference=original,
                         merchant_reference=row.invoice_id or row.custom_field,
                         payout_id=row.transaction_id if kind is TraceKind.PAYOUT else None),
        counterparty=Counterparty(identifier=row.consumer_id) if row.consumer_id else None,
        fee=fee, net=net, description=f"PayPal {row.event_code}",
        origin=_source_ref(row.origin),
    )]
    if fee is not None and fee.amount != 0:
        records.append(_build(
            Fee, label, fee_id=record_key("fee", "paypal", account, row.transaction_id),
            source=PaymentSource.PAYPAL, provider=provider, account=account, amount=fee,
            kind=FeeKind.PROCESSING, booking_date=when.date(),
            references=_refs(provider_reference=row.transaction_id),
            origin=_source_ref(row.origin),
        ))
    if kind is TraceKind.PAYOUT:
        records.append(_build(
            Payout, label, payout_id=row.transaction_id, source=PaymentSource.PAYPAL,
            provider=provider, account=account,
            amount=Money(amount=row.amount, currency=row.currency), status=PayoutStatus.PAID,
            created_at=row.initiated_at, arrival_date=when.date(),
            origin=_source_ref(row.origin),
        ))
    return records


# cash on delivery ---------------------------------------------------------------------------
def cod_row_records(row: Any) -> list[PaymentRecord]:
    """A courier's remittance row: the cash collected (a trace), the courier's fee, and the
    delivery (or failed delivery) it proves."""
    label = _label(row.origin, f"COD shipment {row.shipment_id}")
    account = f"cod:{row.courier}"
    records: list[PaymentRecord] = []
    if row.status == "delivered":
        records.append(_build(
            PaymentTrace, label, trace_id=record_key("cod", row.courier, row.shipment_id),
            source=PaymentSource.COD, provider=row.courier, account=account,
            amount=Money(amount=row.cod_amount, currency=row.currency),
            direction=Direction.CREDIT, status=TraceStatus.BOOKED, kind=TraceKind.PAYMENT,
            booking_date=row.remitted_on, value_date=row.remitted_on,
            booked_at=row.delivered_at,
            references=_refs(provider_reference=row.shipment_id, merchant_reference=row.order_id,
                             batch_id=row.remittance_id, payout_id=row.remittance_id),
            fee=Money(amount=row.cod_fee, currency=row.currency),
            net=Money(amount=row.remitted_amount, currency=row.currency),
            description=f"COD {row.site} {row.order_id}", origin=_source_ref(row.origin),
        ))
    if row.cod_fee != 0:
        records.append(_build(
            Fee, label, fee_id=record_key("fee", "cod", row.courier, row.shipment_id),
            source=PaymentSource.COD, provider=row.courier, account=account,
            amount=Money(amount=row.cod_fee, currency=row.currency), kind=FeeKind.COD_FEE,
            booking_date=row.remitted_on,
            references=_refs(provider_reference=row.shipment_id, merchant_reference=row.order_id,
                             batch_id=row.remittance_id),
            origin=_source_ref(row.origin),
        ))
    records.append(_build(
        Delivery, label, delivery_id=record_key("ship", row.courier, row.shipment_id),
        site=row.site, order_id=row.order_id, kind=DeliveryKind.SHIPMENT,
        status=DeliveryStatus(row.status), quantity=1 if row.status == "delivered" else 0,
        delivered_at=row.delivered_at, carrier=row.courier, tracking_number=row.tracking_number,
        source=f"courier:{row.courier}",
    ))
    return records


# wallet balance -----------------------------------------------------------------------------
WALLET_KINDS = {
    "payment": (TraceKind.PAYMENT, Direction.CREDIT),
    "refund": (TraceKind.REFUND, Direction.DEBIT),
    "payout": (TraceKind.PAYOUT, Direction.DEBIT),
    "adjustment_credit": (TraceKind.ADJUSTMENT, Direction.CREDIT),
    "adjustment_debit": (TraceKind.ADJUSTMENT, Direction.DEBIT),
}


def wallet_balance_records(row: Any) -> list[PaymentRecord]:
    label = _label(row.origin, f"wallet {row.site} {row.transaction_id}")
    kind, direction = WALLET_KINDS[row.type]
    account = f"wallet:{row.site}"
    money = Money(amount=row.amount, currency=row.currency)
    records: list[PaymentRecord] = [_build(
        PaymentTrace, label, trace_id=record_key("wallet", row.site, row.transaction_id),
        source=PaymentSource.WALLET, provider=f"wallet:{row.site}", account=account,
        amount=money, direction=direction, status=TraceStatus.BOOKED, kind=kind,
        booking_date=row.created_at.date(), booked_at=row.created_at,
        references=_refs(provider_reference=row.transaction_id, merchant_reference=row.order_id,
                         customer_reference=row.customer_ref, batch_id=row.settlement_id,
                         payout_id=row.settlement_id if kind is TraceKind.PAYOUT else None),
        description=f"wallet balance {row.type}", origin=_source_ref(row.origin),
    )]
    if kind is TraceKind.PAYOUT:
        records.append(_build(
            Payout, label, payout_id=row.settlement_id or row.transaction_id,
            source=PaymentSource.WALLET, provider=f"wallet:{row.site}", account=account,
            amount=money, status=PayoutStatus.PAID, created_at=row.created_at,
            origin=_source_ref(row.origin),
        ))
    return records


# split settlements --------------------------------------------------------------------------
SPLIT_KINDS = {
    "payment": (TraceKind.PAYMENT, Direction.CREDIT),
    "split": (TraceKind.SPLIT, Direction.DEBIT),
    "release": (TraceKind.SPLIT_RELEASE, Direction.CREDIT),
    "clawback": (TraceKind.CLAWBACK, Direction.CREDIT),
    "refund": (TraceKind.REFUND, Direction.DEBIT),
}


def split_row_records(row: Any, *, provider: str = "split") -> list[PaymentRecord]:
    """A split settlement row, from the merchant's frozen split balance's point of view: the
    payment comes in, shares go out to receivers, the rest is released, clawbacks come back."""
    label = _label(row.origin, f"split {row.split_id}")
    kind, direction = SPLIT_KINDS[row.type]
    account = f"split:{row.site}"
    counterparty = None
    if row.type in {"split", "clawback"}:
        counterparty = Counterparty(account=row.receiver_id, identifier=row.receiver_type)
    return [_build(
        PaymentTrace, label, trace_id=record_key("split", row.site, row.split_id),
        source=PaymentSource.SPLIT, provider=provider, account=account,
        amount=Money(amount=row.amount, currency=row.currency), direction=direction,
        status=TraceStatus.BOOKED, kind=kind, booking_date=row.created_at.date(),
        booked_at=row.created_at,
        references=_refs(provider_reference=row.split_id, original_reference=row.payment_id,
                         merchant_reference=row.order_id),
        counterparty=counterparty, description=f"split {row.type}",
        origin=_source_ref(row.origin),
    )]


# Stripe-style balance transactions and payouts ----------------------------------------------
STRIPE_KINDS = {
    "charge": TraceKind.PAYMENT, "payment": TraceKind.PAYMENT,
    "refund": TraceKind.REFUND, "payment_refund": TraceKind.REFUND,
    "refund_failure": TraceKind.REFUND_REVERSAL,
    "dispute": TraceKind.CHARGEBACK, "dispute_reversal": TraceKind.CHARGEBACK_REVERSAL,
    "adjustment": TraceKind.ADJUSTMENT, "fee": TraceKind.FEE, "stripe_fee": TraceKind.FEE,
    "payout": TraceKind.PAYOUT, "payout_reversal": TraceKind.PAYOUT_REVERSAL,
    "payout_cancel": TraceKind.PAYOUT_REVERSAL, "payout_failure": TraceKind.PAYOUT_REVERSAL,
    "transfer": TraceKind.TRANSFER, "other_adjustment": TraceKind.ADJUSTMENT,
}


def stripe_transaction_records(txn: Any, *, account: str, provider: str = "stripe"
                               ) -> list[PaymentRecord]:
    """A balance transaction (``connectors.payments.stripe.BalanceTransaction``): a trace on
    the Stripe balance, and its fee."""
    label = _label(txn.origin, f"balance transaction {txn.id}")
    kind = STRIPE_KINDS.get(txn.reporting_category or "", None) \
        or STRIPE_KINDS.get(txn.type, TraceKind.OTHER)
    credit = txn.amount >= 0
    fee = Money(amount=txn.fee, currency=txn.currency)
    records: list[PaymentRecord] = [_build(
        PaymentTrace, label, trace_id=record_key("stripe", account, txn.id),
        source=PaymentSource.STRIPE, provider=provider, account=account,
        amount=Money(amount=abs(txn.amount), currency=txn.currency),
        direction=Direction.CREDIT if credit else Direction.DEBIT,
        status=TraceStatus.BOOKED if txn.status == "available" else TraceStatus.PROVISIONAL,
        kind=kind, booking_date=txn.created.date(), value_date=txn.available_on,
        booked_at=txn.created,
        references=_refs(transaction_id=txn.id, provider_reference=txn.source,
                         payout_id=txn.payout or (txn.source if kind is TraceKind.PAYOUT
                                                  else None)),
        fee=fee, net=Money(amount=txn.net, currency=txn.currency),
        description=txn.description, origin=_source_ref(txn.origin),
    )]
    if txn.fee != 0:
        records.append(_build(
            Fee, label, fee_id=record_key("fee", "stripe", account, txn.id),
            source=PaymentSource.STRIPE, provider=provider, account=account, amount=fee,
            kind=FeeKind.PROCESSING, booking_date=txn.created.date(),
            references=_refs(transaction_id=txn.id, provider_reference=txn.source,
                             payout_id=txn.payout),
            origin=_source_ref(txn.origin),
        ))
    return records


STRIPE_PAYOUT_STATUS = {"paid": PayoutStatus.PAID, "pending": PayoutStatus.PENDING,
                        "in_transit": PayoutStatus.IN_TRANSIT, "failed": PayoutStatus.FAILED,
                        "canceled": PayoutStatus.CANCELED}


def stripe_payout_record(payout: Any, *, account: str, provider: str = "stripe") -> Payout:
    label = _label(payout.origin, f"payout {payout.id}")
    return _build(
        Payout, label, payout_id=payout.id, source=PaymentSource.STRIPE, provider=provider,
        account=account, amount=Money(amount=payout.amount, currency=payout.currency),
        status=STRIPE_PAYOUT_STATUS.get(payout.status, PayoutStatus.PENDING),
        created_at=payout.created, arrival_date=payout.arrival_date,
        destination=payout.destination, description=payout.description,
        origin=_source_ref(payout.origin),
    )


# deliveries from the wallet sites -----------------------------------------------------------
def wallet_delivery_to_delivery(raw: dict[str, Any], *, site: str, order_id: str) -> Delivery:
    """A site's Delivery answer (codes delivered on an order line) as delivery evidence; the
    codes themselves are counted, never copied."""
    label = f"delivery {raw.get('delivery_id', '?')} of order {order_id} on site {site}"
    delivered_at = raw.get("delivered_at") or raw.get("created_at")
    return _build(
        Delivery, label, delivery_id=str(raw.get("delivery_id") or ""), site=site,
        order_id=order_id, line_id=raw.get("line_id"), kind=DeliveryKind.CODES,
        quantity=len(raw.get("codes") or ()), delivered_at=delivered_at,
        source=f"wallet:{site}",
    )


# provisional evidence superseded by the booked entry ----------------------------------------
@dataclass(frozen=True)
class Superseded:
    trace: PaymentTrace
    by: PaymentTrace
    rule: str
    """``account_servicer_reference``, ``end_to_end_id`` or ``same_trace``."""


@dataclass(frozen=True)
class Deduplicated:
    traces: list[PaymentTrace]
    """Every trace to count, each once."""
    superseded: list[Superseded]


def _day(trace: PaymentTrace) -> date:
    return trace.value_date or trace.booking_date


def _keys(trace: PaymentTrace) -> list[tuple[str, tuple[Any, ...]]]:
    account = _normal_account(trace.account)
    keys: list[tuple[str, tuple[Any, ...]]] = []
    refs = trace.references
    if refs.account_servicer_reference:
        keys.append(("account_servicer_reference",
                     (account, refs.account_servicer_reference)))
    if refs.end_to_end_id:
        keys.append(("end_to_end_id", (account, refs.end_to_end_id, trace.amount.amount,
                                       trace.amount.currency, trace.direction, _day(trace))))
    return keys


def supersede_provisional(traces: Iterable[PaymentTrace]) -> Deduplicated:
    """Count every movement once. A provisional trace (camt.052/054, MT942, a pending
    provider entry) is dropped when a booked trace of the same account has the same account
    servicer reference, or the same end-to-end id, amount, direction and date. Provisional
    traces that match each other (an intraday report and a notification of the same entry)
    count once until the booked one arrives; a trace read twice (same ``trace_id``) counts
    once. The order of the input is kept."""
    items = list(traces)
    booked: dict[tuple[str, tuple[Any, ...]], PaymentTrace] = {}
    for trace in items:
        if trace.status is TraceStatus.BOOKED:
            for key in _keys(trace):
                booked.setdefault(key, trace)
    kept: list[PaymentTrace] = []
    superseded: list[Superseded] = []
    seen_ids: dict[str, PaymentTrace] = {}
    provisional: dict[tuple[str, tuple[Any, ...]], PaymentTrace] = {}
    for trace in items:
        first = seen_ids.get(trace.trace_id)
        if first is not None:
            superseded.append(Superseded(trace, first, "same_trace"))
            continue
        seen_ids[trace.trace_id] = trace
        if trace.status is TraceStatus.PROVISIONAL:
            keys = _keys(trace)
            winner = next(((rule, booked[(rule, k)]) for rule, k in keys
                           if (rule, k) in booked), None)
            if winner is None:
                winner = next(((rule, provisional[(rule, k)]) for rule, k in keys
                               if (rule, k) in provisional), None)
            if winner is not None:
                superseded.append(Superseded(trace, winner[1], winner[0]))
                continue
            for key in keys:
                provisional.setdefault(key, trace)
        kept.append(trace)
    return Deduplicated(traces=kept, superseded=superseded)


__all__ = [
    "Deduplicated",
    "PaymentRecord",
    "Superseded",
    "acquirer_row_records",
    "camt_entry_records",
    "cod_row_records",
    "mt940_line_records",
    "paypal_row_records",
    "record_key",
    "split_row_records",
    "stripe_payout_record",
    "stripe_transaction_records",
    "supersede_provisional",
    "wallet_balance_records",
    "wallet_delivery_to_delivery",
]
