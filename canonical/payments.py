"""Payment evidence in the canonical model: traces of money, payouts, fees, and deliveries.

Every payment method the business takes (card acquirer, Stripe-style API, PayPal-style files,
bank statements, cash on delivery, wallet balance, split settlements) leaves traces in its own
format; its connector reads them and a mapping turns them into these records, so matching an
order against its money speaks one language whatever the source.

Amounts are magnitudes with a direction (credit: money in to the account, debit: money out),
the way bank statements state them, so a refund is a debit of 10.00 and not a payment of
-10.00. Dates that a source gives as business days (booking and value dates) stay dates;
instants are aware and in UTC.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum

from pydantic import Field, model_validator

from canonical._base import KEY_PATTERN, CanonicalModel, SiteCode, UtcDatetime
from canonical.money import Money


class PaymentSource(StrEnum):
    """The format a trace was read from (a bank may send several)."""

    CAMT053 = "camt053"
    CAMT052 = "camt052"
    CAMT054 = "camt054"
    MT940 = "mt940"
    MT942 = "mt942"
    CARD_ACQUIRER = "card_acquirer"
    STRIPE = "stripe"
    PAYPAL = "paypal"
    COD = "cod"
    WALLET = "wallet"
    SPLIT = "split"


class Direction(StrEnum):
    CREDIT = "credit"
    """Money into the account the source describes."""
    DEBIT = "debit"
    """Money out of it."""


class TraceStatus(StrEnum):
    BOOKED = "booked"
    """On the statement of record (camt.053, MT940, a provider's settlement)."""
    PROVISIONAL = "provisional"
    """Intraday or advice evidence (camt.052/054, MT942, pending entries), superseded by the
    booked entry when it arrives."""


class TraceKind(StrEnum):
    PAYMENT = "payment"
    REFUND = "refund"
    REFUND_REVERSAL = "refund_reversal"
    CHARGEBACK = "chargeback"
    CHARGEBACK_REVERSAL = "chargeback_reversal"
    FEE = "fee"
    PAYOUT = "payout"
    PAYOUT_REVERSAL = "payout_reversal"
    SPLIT = "split"
    """A share of a payment moved to another receiver (profit sharing)."""
    SPLIT_RELEASE = "split_release"
    """Undivided split funds released to the merchant."""
    CLAWBACK = "clawback"
    """A receiver's share taken back after a refund of a split payment."""
    TRANSFER = "transfer"
    ADJUSTMENT = "adjustment"
    OTHER = "other"


_Ref = Field(default=None, min_length=1, max_length=200)


class TraceReferences(CanonicalModel):
    """Every identifier a source gives a trace; matching picks the ones it trusts."""

    account_servicer_reference: str | None = _Ref
    """The bank's own reference of the entry (camt ``AcctSvcrRef``, MT940 bank reference)."""
    entry_reference: str | None = _Ref
    end_to_end_id: str | None = _Ref
    instruction_id: str | None = _Ref
    transaction_id: str | None = _Ref
    uetr: str | None = _Ref
    provider_reference: str | None = _Ref
    """The provider's id of the payment (PSP reference, charge id, transaction id)."""
    original_reference: str | None = _Ref
    """For refunds, chargebacks and fees: the provider reference of the payment they concern."""
    merchant_reference: str | None = _Ref
    """What the merchant sent with the payment, usually the order id."""
    customer_reference: str | None = _Ref
    batch_id: str | None = _Ref
    payout_id: str | None = _Ref


class Counterparty(CanonicalModel):
    name: str | None = Field(default=None, max_length=200)
    account: str | None = Field(default=None, max_length=100)
    """IBAN or other account identification."""
    agent: str | None = Field(default=None, max_length=100)
    """The counterparty's bank (BIC) or provider."""
    identifier: str | None = Field(default=None, max_length=200)


class SourceRef(CanonicalModel):
    """Where a record came from, so a question about it can be answered from the file."""

    file: str = Field(min_length=1, max_length=500)
    """A file name, or ``api:{system}`` for records read from an API."""
    line: int | None = Field(default=None, ge=1)
    """The line (XML, MT940) or row (CSV, counting the header as line 1) it started on."""
    index: int | None = Field(default=None, ge=0)
    """Its position among the records the file holds."""

    def __str__(self) -> str:
        return self.file + (f":{self.line}" if self.line is not None else "")


class PaymentTrace(CanonicalModel):
    """One movement of money as one source reports it."""

    trace_id: str = Field(min_length=1, max_length=128, pattern=KEY_PATTERN)
    """Stable key derived from the source's own identifiers (the same entry read again gets
    the same id)."""
    source: PaymentSource
    provider: str = Field(min_length=1, max_length=100)
    account: str = Field(min_length=1, max_length=100)
    """The account the source describes: an IBAN, a merchant account, a provider balance."""
    amount: Money
    """Magnitude (never negative); ``direction`` says which way it went."""
    direction: Direction
    status: TraceStatus
    kind: TraceKind
    booking_date: date
    value_date: date | None = None
    booked_at: UtcDatetime | None = None
    """The instant of booking, where the source gives a time with the date."""
    references: TraceReferences = TraceReferences()
    counterparty: Counterparty | None = None
    fee: Money | None = None
    """Fees the provider deducted for this trace (negative: fees given back)."""
    net: Money | None = None
    """What reached the account after fees, signed from the account's view (positive:
    credit), in the settlement currency (which may differ from ``amount``'s)."""
    description: str | None = Field(default=None, max_length=2000)
    """Remittance information and the source's free text."""
    bank_transaction_code: str | None = Field(default=None, max_length=100)
    reversal: bool = False
    """The source marks this entry as a reversal of an earlier one."""
    origin: SourceRef

    @model_validator(mode="after")
    def _magnitude(self) -> PaymentTrace:
        if self.amount.amount < 0:
            raise ValueError("amount is a magnitude and cannot be negative; use direction")
        return self

    @property
    def signed_amount(self) -> Money:
        return self.amount if self.direction is Direction.CREDIT else -self.amount


class PayoutStatus(StrEnum):
    PENDING = "pending"
    IN_TRANSIT = "in_transit"
    PAID = "paid"
    FAILED = "failed"
    CANCELED = "canceled"


class Payout(CanonicalModel):
    """Money a provider sends from its balance to the merchant's bank: one bank credit that
    pays out many transactions."""

    payout_id: str = Field(min_length=1, max_length=200)
    source: PaymentSource
    provider: str = Field(min_length=1, max_length=100)
    account: str = Field(min_length=1, max_length=100)
    amount: Money
    status: PayoutStatus
    created_at: UtcDatetime | None = None
    arrival_date: date | None = None
    destination: str | None = Field(default=None, max_length=200)
    batch_id: str | None = _Ref
    description: str | None = Field(default=None, max_length=2000)
    origin: SourceRef


class FeeKind(StrEnum):
    COMMISSION = "commission"
    MARKUP = "markup"
    SCHEME_FEE = "scheme_fee"
    INTERCHANGE = "interchange"
    PROCESSING = "processing"
    PAYOUT_FEE = "payout_fee"
    COD_FEE = "cod_fee"
    """The courier's fee for collecting cash on delivery."""
    OTHER = "other"


class Fee(CanonicalModel):
    """A cost a provider charged (positive) or gave back (negative)."""

    fee_id: str = Field(min_length=1, max_length=128, pattern=KEY_PATTERN)
    source: PaymentSource
    provider: str = Field(min_length=1, max_length=100)
    account: str = Field(min_length=1, max_length=100)
    amount: Money
    kind: FeeKind
    booking_date: date
    references: TraceReferences = TraceReferences()
    origin: SourceRef


class DeliveryKind(StrEnum):
    CODES = "codes"
    SHIPMENT = "shipment"


class DeliveryStatus(StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"
    RETURNED = "returned"


class Delivery(CanonicalModel):
    """Evidence that an order (line) reached the customer: codes delivered on the site, or a
    shipment handed over by a courier. Codes themselves never appear here (bearer value)."""

    delivery_id: str = Field(min_length=1, max_length=128, pattern=KEY_PATTERN)
    site: SiteCode
    order_id: str = Field(min_length=1, max_length=100, pattern=KEY_PATTERN)
    line_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=KEY_PATTERN)
    kind: DeliveryKind
    status: DeliveryStatus = DeliveryStatus.DELIVERED
    quantity: int = Field(ge=0, le=10_000)
    delivered_at: UtcDatetime
    carrier: str | None = Field(default=None, max_length=100)
    tracking_number: str | None = Field(default=None, max_length=100)
    source: str = Field(min_length=1, max_length=100)
    """Which system gave the evidence (``wallet:sg1``, ``courier:ninjavan``)."""
