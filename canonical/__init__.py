"""The canonical data model: the common language every connector maps to and from.

Imports nothing of vouchflow's own; everything else may import it.
"""

from canonical._base import BearerValue, CanonicalModel, mask, now_utc
from canonical.batch import Batch, BatchStatus, ExpiryType
from canonical.money import Money, MoneyError, RoundingMode, minor_unit
from canonical.order import Order, OrderLine, OrderStatus, Payment, PaymentMethod, Refund
from canonical.payments import (
    Counterparty,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Direction,
    Fee,
    FeeKind,
    PaymentSource,
    PaymentTrace,
    Payout,
    PayoutStatus,
    SourceRef,
    TraceKind,
    TraceReferences,
    TraceStatus,
)
from canonical.site import Site
from canonical.sku import IssuanceMode, Sku, SkuKind, SkuStatus, WriteOffType
from canonical.voucher import CodeEvent, CodeStatus, InvalidTransition, VoucherCode

__all__ = [
    "Batch",
    "BatchStatus",
    "BearerValue",
    "CanonicalModel",
    "CodeEvent",
    "CodeStatus",
    "Counterparty",
    "Delivery",
    "DeliveryKind",
    "DeliveryStatus",
    "Direction",
    "ExpiryType",
    "Fee",
    "FeeKind",
    "InvalidTransition",
    "IssuanceMode",
    "Money",
    "MoneyError",
    "Order",
    "OrderLine",
    "OrderStatus",
    "Payment",
    "PaymentMethod",
    "PaymentSource",
    "PaymentTrace",
    "Payout",
    "PayoutStatus",
    "Refund",
    "RoundingMode",
    "Site",
    "Sku",
    "SkuKind",
    "SkuStatus",
    "SourceRef",
    "TraceKind",
    "TraceReferences",
    "TraceStatus",
    "VoucherCode",
    "WriteOffType",
    "mask",
    "minor_unit",
    "now_utc",
]
