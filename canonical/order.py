"""Sales orders as the wallet sites report them, in the canonical model.

An order is identified by (site, order_id); versions of the same order are told apart by the
site's ``updated_at``, so an older version that arrives late (webhooks come out of order) can
be recognised and ignored.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from canonical._base import KEY_PATTERN, CanonicalModel, SiteCode, SkuCode, UtcDatetime
from canonical.money import Money


class OrderStatus(StrEnum):
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"


class PaymentMethod(StrEnum):
    CARD = "card"
    PAYPAL = "paypal"
    BANK_TRANSFER = "bank_transfer"
    COD = "cod"
    WALLET_BALANCE = "wallet_balance"
    SPLIT = "split"


class Payment(CanonicalModel):
    method: PaymentMethod
    provider: str = Field(min_length=1, max_length=100)
    provider_reference: str = Field(min_length=1, max_length=200)
    amount: Money


class OrderLine(CanonicalModel):
    line_id: str = Field(min_length=1, max_length=64, pattern=KEY_PATTERN)
    sku: SkuCode
    quantity: int = Field(gt=0, le=10_000)
    unit_price: Money

    def total(self) -> Money:
        return Money(amount=self.unit_price.amount * self.quantity,
                     currency=self.unit_price.currency)


class Order(CanonicalModel):
    site: SiteCode
    order_id: str = Field(min_length=1, max_length=100, pattern=KEY_PATTERN)
    status: OrderStatus
    created_at: UtcDatetime
    updated_at: UtcDatetime
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    customer_ref: str | None = Field(default=None, max_length=200)
    lines: tuple[OrderLine, ...] = Field(min_length=1)
    payment: Payment | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Order:
        ids = [line.line_id for line in self.lines]
        if len(set(ids)) != len(ids):
            raise ValueError("line_id repeated within the order")
        for line in self.lines:
            if line.unit_price.currency != self.currency:
                raise ValueError(
                    f"line {line.line_id}: price in {line.unit_price.currency}, order in "
                    f"{self.currency}")
        if self.payment is not None and self.payment.amount.currency != self.currency:
            raise ValueError("payment currency differs from the order's")
        if self.updated_at < self.created_at:
            raise ValueError("updated_at is before created_at")
        return self

    def total(self) -> Money:
        total = Money.zero(self.currency)
        for line in self.lines:
            total = total + line.total()
        return total


class Refund(CanonicalModel):
    site: SiteCode
    refund_id: str = Field(min_length=1, max_length=100, pattern=KEY_PATTERN)
    order_id: str = Field(min_length=1, max_length=100, pattern=KEY_PATTERN)
    line_id: str = Field(min_length=1, max_length=64, pattern=KEY_PATTERN)
    quantity: int = Field(gt=0)
    amount: Money
    delivered: bool
    """Whether the line's codes had reached the customer: a delivered code cannot go back on
    sale and is blocked instead."""
    created_at: UtcDatetime
