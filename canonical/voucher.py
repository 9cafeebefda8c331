"""Voucher codes: bearer value, with a status and an append-only chronology.

The status set is the general one the pool uses; the retail point-of-sale programme's names
(Generated, Handed over, Active, Used, Blocked) map onto it through ``RETAIL_STATUS``, and
partial spending is carried by ``spent``.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum

from pydantic import Field, field_serializer, model_validator

from canonical._base import (
    BatchNo,
    BearerValue,
    CanonicalModel,
    SkuCode,
    UtcDatetime,
)
from canonical.money import Money


class CodeStatus(StrEnum):
    IN_STOCK = "in_stock"
    ALLOCATED = "allocated"
    SOLD = "sold"
    REDEEMED = "redeemed"
    BLOCKED = "blocked"
    RETURNED = "returned"
    REPLACED = "replaced"
    EXPIRED = "expired"


CODE_TRANSITIONS: dict[CodeStatus, frozenset[CodeStatus]] = {
    CodeStatus.IN_STOCK: frozenset(
        {CodeStatus.ALLOCATED, CodeStatus.BLOCKED, CodeStatus.RETURNED, CodeStatus.EXPIRED}
    ),
    CodeStatus.ALLOCATED: frozenset(
        {CodeStatus.SOLD, CodeStatus.IN_STOCK, CodeStatus.BLOCKED, CodeStatus.REPLACED}
    ),
    CodeStatus.SOLD: frozenset(
        {CodeStatus.REDEEMED, CodeStatus.BLOCKED, CodeStatus.REPLACED, CodeStatus.EXPIRED,
         CodeStatus.IN_STOCK}
    ),
    CodeStatus.REDEEMED: frozenset(),
    CodeStatus.BLOCKED: frozenset({CodeStatus.RETURNED, CodeStatus.IN_STOCK}),
    CodeStatus.RETURNED: frozenset(),
    CodeStatus.REPLACED: frozenset({CodeStatus.RETURNED, CodeStatus.BLOCKED}),
    CodeStatus.EXPIRED: frozenset(),
}
"""Which status may follow which. SOLD -> IN_STOCK exists only for a refund of a code that was
never delivered; the rule that checks delivery lives with the refund, not here."""

RETAIL_STATUS: dict[str, CodeStatus] = {
    "Generated": CodeStatus.IN_STOCK,
    "Handed over": CodeStatus.ALLOCATED,
    "Active": CodeStatus.SOLD,
    "Used": CodeStatus.REDEEMED,
    "Blocked": CodeStatus.BLOCKED,
}


class CodeEvent(CanonicalModel):
    """One entry of a code's chronology: who did what, when, from which system."""

    at: UtcDatetime
    actor: str = Field(min_length=1)
    system: str = Field(min_length=1)
    action: str = Field(min_length=1)
    from_status: CodeStatus | None = None
    to_status: CodeStatus | None = None
    detail: str | None = None


class InvalidTransition(ValueError):
    pass


class VoucherCode(CanonicalModel):
    code: BearerValue
    pin: BearerValue | None = None
    sku: SkuCode
    batch_no: BatchNo
    status: CodeStatus = CodeStatus.IN_STOCK
    expires_on: date | None = None
    spent: Money | None = Field(default=None, description="Amount spent so far (partial use).")
    bound_to: str | None = Field(default=None, description="Loyalty card the code is bound to.")
    events: tuple[CodeEvent, ...] = ()

    @field_serializer("code", "pin", when_used="json")
    def _masked(self, value: BearerValue | None) -> str | None:
        return None if value is None else str(value)

    @model_validator(mode="after")
    def _spent_not_negative(self) -> VoucherCode:
        if self.spent is not None and self.spent.amount < 0:
            raise ValueError("spent must not be negative")
        return self

    def transition(
        self, to: CodeStatus, *, at: UtcDatetime, actor: str, system: str, action: str,
        detail: str | None = None,
    ) -> VoucherCode:
        """A new VoucherCode in status ``to`` with the event appended; the old one is unchanged."""
        if to not in CODE_TRANSITIONS[self.status]:
            raise InvalidTransition(
                f"code {self.code} cannot go from {self.status} to {to} ({action})"
            )
        event = CodeEvent(
            at=at, actor=actor, system=system, action=action, from_status=self.status,
            to_status=to, detail=detail,
        )
        return self.model_copy(update={"status": to, "events": (*self.events, event)})
