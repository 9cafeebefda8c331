"""A voucher SKU: a sellable voucher product. The ERP is its master."""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import Field, field_validator

from canonical._base import CanonicalModel, SiteCode, SkuCode, UtcDatetime
from canonical.money import Money


class SkuKind(StrEnum):
    IN_VITRO_COUPON = "in_vitro_coupon"
    AMOUNT_COUPON = "amount_coupon"
    REDEMPTION_COUPON = "redemption_coupon"
    GIFT_CARD = "gift_card"
    OWN_VOUCHER = "own_voucher"
    """Issued by the business itself: a liability until redeemed or expired."""


class IssuanceMode(StrEnum):
    CODE_POOL = "code_pool"
    """Codes bought in advance and held in stock."""
    API = "api"
    """Codes issued by the supplier's API at the moment of sale."""


class WriteOffType(StrEnum):
    """How redemption of a sold code is confirmed."""

    ON_DELIVERY = "on_delivery"
    ON_REDEMPTION = "on_redemption"
    SUPPLIER_REPORT = "supplier_report"


class SkuStatus(StrEnum):
    INACTIVE = "inactive"
    NORMAL = "normal"
    FROZEN = "frozen"


class Sku(CanonicalModel):
    sku: SkuCode
    name: str = Field(min_length=1, max_length=300)
    kind: SkuKind
    face_value: Money
    sales_areas: tuple[SiteCode, ...] = Field(
        default=(), description="Codes of the sites that may sell this SKU, sorted, unique."
    )
    issuance_mode: IssuanceMode
    write_off_type: WriteOffType
    status: SkuStatus
    code_format: str | None = Field(
        default=None, description="Regular expression every voucher code of this SKU matches."
    )
    updated_at: UtcDatetime

    @field_validator("sales_areas")
    @classmethod
    def _unique_sorted(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            dupes = sorted({v for v in value if value.count(v) > 1})
            raise ValueError(f"sales area listed twice: {', '.join(dupes)}")
        return tuple(sorted(value))

    @field_validator("code_format")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("face_value")
    @classmethod
    def _positive_face_value(cls, value: Money) -> Money:
        if value.amount <= 0:
            raise ValueError(f"face_value must be positive, got {value}")
        return value

    def matches_code_format(self, code: str) -> bool:
        return self.code_format is None or re.fullmatch(self.code_format, code) is not None
