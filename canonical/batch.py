"""A batch: what one purchase receipt brought into stock, with its two quantities.

``available`` drops at the moment of sale; ``remaining`` (the book quantity) drops when the ERP
transaction posts. Keeping them apart is what lets a sale be exact before the books catch up.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum

from pydantic import Field, model_validator

from canonical._base import BatchNo, CanonicalModel, SiteCode, SkuCode, UtcDatetime
from canonical.money import Money
from canonical.sku import IssuanceMode


class ExpiryType(StrEnum):
    FIXED_DATE = "fixed_date"
    DAYS_AFTER_SALE = "days_after_sale"
    NONE = "none"


class BatchStatus(StrEnum):
    ACTIVE = "active"
    SOLD_OUT = "sold_out"
    EXPIRED = "expired"
    FROZEN = "frozen"
    CLOSED = "closed"


class Batch(CanonicalModel):
    sku: SkuCode
    batch_no: BatchNo
    issuance_mode: IssuanceMode
    quantity: int = Field(ge=0, description="Quantity received.")
    available: int = Field(ge=0, description="What may still be sold.")
    remaining: int = Field(ge=0, description="Book quantity the ERP holds in stock.")
    status: BatchStatus
    unit_cost: Money
    expiry_type: ExpiryType
    expires_on: date | None = None
    expiry_days: int | None = Field(default=None, gt=0)
    purchase_order: str | None = None
    sites: tuple[SiteCode, ...] = ()
    received_at: UtcDatetime

    @model_validator(mode="after")
    def _consistent(self) -> Batch:
        if self.available > self.quantity:
            raise ValueError(f"available ({self.available}) exceeds quantity ({self.quantity})")
        if self.remaining > self.quantity:
            raise ValueError(f"remaining ({self.remaining}) exceeds quantity ({self.quantity})")
        if self.available > self.remaining:
            raise ValueError(
                f"available ({self.available}) exceeds remaining ({self.remaining}): "
                "a unit cannot be sellable once it has left the books"
            )
        if self.expiry_type is ExpiryType.FIXED_DATE and self.expires_on is None:
            raise ValueError("expires_on is required when expiry_type is fixed_date")
        if self.expiry_type is ExpiryType.DAYS_AFTER_SALE and self.expiry_days is None:
            raise ValueError("expiry_days is required when expiry_type is days_after_sale")
        if self.unit_cost.amount < 0:
            raise ValueError(f"unit_cost must not be negative, got {self.unit_cost}")
        return self

    def is_sellable(self, on: date, site: str | None = None) -> bool:
        if self.status is not BatchStatus.ACTIVE or self.available <= 0:
            return False
        if self.expiry_type is ExpiryType.FIXED_DATE and self.expires_on is not None:
            if self.expires_on < on:
                return False
        return site is None or not self.sites or site in self.sites
