"""Pieces every part of the wallet sandbox shares: the per-site state, errors, times, cursors,
money and the keyset index behind the cursor lists."""

from __future__ import annotations

import base64
import bisect
import itertools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request

from sandbox.sites import Site

__all__ = [
    "API_PREFIX",
    "MAX_BATCH",
    "MAX_PAGE",
    "KeysetIndex",
    "LineState",
    "SiteState",
    "WalletError",
    "decode_cursor",
    "encode_cursor",
    "format_money",
    "format_stamp",
    "json_body",
    "mask_code",
    "micros",
    "page_limit",
    "parse_since",
    "parse_time",
]

API_PREFIX = "/api/v1"
MAX_BATCH = 500
MAX_PAGE = 500
SKU_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class WalletError(Exception):
    def __init__(
        self, status: int, code: str, message: str, details: list[Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


# ---- times ------------------------------------------------------------------------------------


def micros(dt: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact, no float)."""
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def format_stamp(stamp: int, tz: ZoneInfo) -> str:
    """RFC 3339 in the site's own timezone, with microseconds."""
    dt = datetime.fromtimestamp(stamp // 1_000_000, tz=tz).replace(microsecond=stamp % 1_000_000)
    return dt.isoformat(timespec="microseconds")


def parse_time(raw: Any, name: str) -> datetime:
    """An RFC 3339 string with an offset; ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(raw, str):
        raise ValueError(f"{name} must be an RFC 3339 string with a UTC offset")
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{name} must be RFC 3339, got {raw!r}") from None
    if dt.tzinfo is None or "T" not in raw.upper():
        raise ValueError(f"{name} must be RFC 3339 with a UTC offset, got {raw!r}")
    return dt


def parse_since(raw: str, name: str = "updated_since") -> int:
    try:
        return micros(parse_time(raw, name))
    except ValueError as exc:
        raise WalletError(400, "bad_request", str(exc)) from None


# ---- requests ---------------------------------------------------------------------------------


async def json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw) if raw else {}
    except ValueError as exc:
        raise WalletError(400, "bad_request", f"body is not valid JSON: {exc}") from None


def page_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return MAX_PAGE
    try:
        value = int(raw)
    except ValueError:
        raise WalletError(400, "bad_request", f"limit must be an integer, got {raw!r}") from None
    if not 1 <= value <= MAX_PAGE:
        raise WalletError(400, "bad_request", f"limit must be between 1 and {MAX_PAGE}")
    return value


def encode_cursor(stamp: int, key: str) -> str:
    raw = json.dumps([stamp, key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, key = json.loads(raw)
        if not isinstance(stamp, int) or not isinstance(key, str):
            raise ValueError
        return stamp, key
    except (ValueError, TypeError):
        raise WalletError(400, "bad_request", "cursor is not valid") from None


# ---- money and codes --------------------------------------------------------------------------


def format_money(amount: Decimal, currency: str, minor_units: Mapping[str, int]) -> dict[str, str]:
    """``{"amount": "12.50", "currency": "SGD"}``: exactly the currency's minor unit."""
    exponent = Decimal(1).scaleb(-minor_units[currency])
    return {"amount": f"{amount.quantize(exponent):f}", "currency": currency}


def mask_code(code: str) -> str:
    """A code as it may be shown: its last 4 characters (nothing of a code of 4 or fewer)."""
    return "****" + code[-4:] if len(code) > 4 else "****"


# ---- keyset index -----------------------------------------------------------------------------


class KeysetIndex:
    """``(stamp, key)`` pairs kept sorted: the order of a cursor list. A key appears once; a
    new stamp moves it (a change lists after what was read before it)."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, str]] = []
        self.stamps: dict[str, int] = {}

    def put(self, key: str, stamp: int) -> None:
        old = self.stamps.get(key)
        if old is not None:
            i = bisect.bisect_left(self.entries, (old, key))
            if i < len(self.entries) and self.entries[i] == (old, key):
                del self.entries[i]
        entry = (stamp, key)
        if not self.entries or entry > self.entries[-1]:
            self.entries.append(entry)
        else:
            bisect.insort(self.entries, entry)
        self.stamps[key] = stamp

    def __len__(self) -> int:
        return len(self.entries)

    def page(
        self,
        *,
        since: int | None,
        cursor: str | None,
        limit: int,
        keep: Callable[[str], bool] | None = None,
    ) -> tuple[list[str], str | None]:
        """Keys of one page and the next cursor (``None`` when nothing more matches)."""
        start = 0
        if since is not None:
            start = bisect.bisect_left(self.entries, (since, ""))
        if cursor:
            start = max(start, bisect.bisect_right(self.entries, decode_cursor(cursor)))
        if keep is None:
            page = self.entries[start : start + limit]
            more = start + limit < len(self.entries)
        else:
            page, more = [], False
            for entry in itertools.islice(self.entries, start, None):
                if keep(entry[1]):
                    if len(page) == limit:
                        more = True
                        break
                    page.append(entry)
        next_cursor = encode_cursor(*page[-1]) if page and more else None
        return [key for _, key in page], next_cursor


# ---- per-site state ---------------------------------------------------------------------------


@dataclass
class LineState:
    """What the site knows of one order line beyond the Order itself."""

    quantity: int
    delivered: int = 0
    refunded_delivered: int = 0
    refunded_undelivered: int = 0
    #: the codes received, in full (the site's own record; never logged)
    codes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def undelivered(self) -> int:
        """Units still to be delivered: neither delivered nor refunded before delivery."""
        return self.quantity - self.delivered - self.refunded_undelivered

    @property
    def refundable(self) -> int:
        return self.quantity - self.refunded_delivered - self.refunded_undelivered

    def as_dict(self) -> dict[str, Any]:
        return {
            "quantity": self.quantity, "delivered": self.delivered,
            "refunded_delivered": self.refunded_delivered,
            "refunded_undelivered": self.refunded_undelivered,
            "codes": [dict(c) for c in self.codes],
        }  # fmt: skip


@dataclass
class SiteState:
    site: Site
    tz: ZoneInfo
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: (updated_at in microseconds since the epoch, sku), sorted: the list order
    index: list[tuple[int, str]] = field(default_factory=list)
    stamps: dict[str, int] = field(default_factory=dict)
    last_stamp: int = 0
    #: sku -> {"available": shown now (after sales), "shown": last pushed, "as_of", "as_of_us"}
    inventory: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: (sku, batch_no) -> batch as sent
    batches: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    order_index: KeysetIndex = field(default_factory=KeysetIndex)
    lines: dict[tuple[str, str], LineState] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    refund_index: KeysetIndex = field(default_factory=KeysetIndex)
    #: delivery_id -> {"delivery": Delivery (masked), "key": Idempotency-Key}
    deliveries: dict[str, dict[str, Any]] = field(default_factory=dict)
    idempotency: dict[str, str] = field(default_factory=dict)
    delivered_codes: set[str] = field(default_factory=set)
    #: sequence numbers of the ids the site hands out
    counters: dict[str, int] = field(
        default_factory=lambda: {"order": 0, "refund": 0, "delivery": 0}
    )
    #: units sold beyond what was shown (only with respect_availability=False)
    oversold: dict[str, int] = field(default_factory=dict)

    def put(self, product: dict[str, Any], stamp: int) -> None:
        sku = product["sku"]
        old = self.stamps.get(sku)
        if old is not None:
            i = bisect.bisect_left(self.index, (old, sku))
            if i < len(self.index) and self.index[i] == (old, sku):
                del self.index[i]
        entry = (stamp, sku)
        if not self.index or entry > self.index[-1]:
            self.index.append(entry)
        else:
            bisect.insort(self.index, entry)
        self.stamps[sku] = stamp
        self.products[sku] = product
        self.last_stamp = max(self.last_stamp, stamp)

    def next_id(self, kind: str) -> int:
        self.counters[kind] = self.counters.get(kind, 0) + 1
        return self.counters[kind]
