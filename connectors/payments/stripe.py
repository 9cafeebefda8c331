"""Stripe-style API: balance transactions and payouts (DESIGN.md section 5).

Lists are cursor-paged with ``starting_after`` (the id of the last item seen) and
``has_more``; the transactions a payout paid out are listed with ``?payout=po_...``. Amounts are
integers in Stripe's own minor units, which follow ISO 4217 except where ``EXPONENTS`` says
otherwise. The same records can be read from a JSON export (a list object, or one object per
line) with ``read_stripe_file``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from canonical.money import minor_unit
from connectors.errors import (
    AuthError,
    ConfigurationError,
    InvalidRecordError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    ServerError,
)
from connectors.http import DEFAULT_RETRY, ErrorTable, HttpConnector, RetryPolicy, paginate
from connectors.limits import ConcurrencyLimiter
from connectors.paging import StartingAfterPaginator
from connectors.payments.common import Origin, PaymentFileError, check_currency, file_label

ZERO_DECIMAL = ("BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX",
                "VND", "VUV", "XAF", "XOF", "XPF")
THREE_DECIMAL = ("BHD", "JOD", "KWD", "OMR", "TND")
EXPONENTS: dict[str, int] = {**{c: 0 for c in ZERO_DECIMAL}, **{c: 3 for c in THREE_DECIMAL},
                             "ISK": 2}
"""Stripe's minor units where they are not ISO 4217's (ISK: ISO 0, Stripe 2), and the ones
Stripe documents explicitly."""

STRIPE_ERRORS = ErrorTable(by_code={
    "authentication_error": AuthError,
    "invalid_request_error": InvalidRecordError,
    "resource_missing": NotFoundError,
    "rate_limit_error": RateLimitedError,
    "rate_limit": RateLimitedError,
    "api_error": ServerError,
})


@dataclass(frozen=True, slots=True)
class BalanceTransaction:
    origin: Origin
    id: str
    amount: Decimal
    """Signed, in major units: negative for money leaving the balance."""
    fee: Decimal
    net: Decimal
    currency: str
    type: str
    reporting_category: str | None
    source: str | None
    created: datetime
    available_on: date | None
    status: str | None
    description: str | None
    payout: str | None = None
    """The payout that paid this transaction out, when it was listed by payout."""


@dataclass(frozen=True, slots=True)
class StripePayout:
    origin: Origin
    id: str
    amount: Decimal
    currency: str
    status: str
    created: datetime
    arrival_date: date | None
    destination: str | None
    description: str | None
    balance_transaction: str | None


def _minor(value: Any, currency: str, origin: Origin, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int):
        raise origin.error("amount_format", f"{value!r} is not an integer of minor units", name)
    places = EXPONENTS.get(currency, minor_unit(currency))
    return Decimal(value).scaleb(-places)


def _time(value: Any, origin: Origin, name: str) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int):
        raise origin.error("datetime_format", f"{value!r} is not a Unix timestamp", name)
    return datetime.fromtimestamp(value, UTC)


def _str(obj: Mapping[str, Any], name: str, origin: Origin, *, required: bool = False
         ) -> str | None:
    value = obj.get(name)
    if value is None or value == "":
        if required:
            raise origin.error("required", "missing", name)
        return None
    if isinstance(value, dict):  # an expanded object: its id
        value = value.get("id")
    if not isinstance(value, str):
        raise origin.error("type", f"{value!r} is not a string", name)
    return value


def _currency(obj: Mapping[str, Any], origin: Origin) -> str:
    return check_currency(str(obj.get("currency") or "").upper(), origin, "currency")


def parse_balance_transaction(obj: Any, origin: Origin, *, payout: str | None = None
                              ) -> BalanceTransaction:
    if not isinstance(obj, dict):
        raise origin.error("type", "a balance transaction is a JSON object")
    currency = _currency(obj, origin)
    amount = _minor(obj.get("amount"), currency, origin, "amount")
    fee = _minor(obj.get("fee", 0), currency, origin, "fee")
    net = _minor(obj.get("net"), currency, origin, "net")
    if net != amount - fee:
        raise origin.error("net_arithmetic", f"net {net} is not amount {amount} less fee {fee}",
                           "net")
    available = obj.get("available_on")
    return BalanceTransaction(
        origin=origin, id=_str(obj, "id", origin, required=True) or "", amount=amount, fee=fee,
        net=net, currency=currency, type=_str(obj, "type", origin, required=True) or "",
        reporting_category=_str(obj, "reporting_category", origin),
        source=_str(obj, "source", origin),
        created=_time(obj.get("created"), origin, "created"),
        available_on=_time(available, origin, "available_on").date()
        if available is not None else None,
        status=_str(obj, "status", origin), description=_str(obj, "description", origin),
        payout=payout,
    )


def parse_payout(obj: Any, origin: Origin) -> StripePayout:
    if not isinstance(obj, dict):
        raise origin.error("type", "a payout is a JSON object")
    currency = _currency(obj, origin)
    arrival = obj.get("arrival_date")
    return StripePayout(
        origin=origin, id=_str(obj, "id", origin, required=True) or "",
        amount=_minor(obj.get("amount"), currency, origin, "amount"), currency=currency,
        status=_str(obj, "status", origin) or "pending",
        created=_time(obj.get("created"), origin, "created"),
        arrival_date=_time(arrival, origin, "arrival_date").date()
        if arrival is not None else None,
        destination=_str(obj, "destination", origin),
        description=_str(obj, "description", origin),
        balance_transaction=_str(obj, "balance_transaction", origin),
    )


StripeRecord = BalanceTransaction | StripePayout


def parse_object(obj: Any, origin: Origin) -> StripeRecord:
    kind = obj.get("object") if isinstance(obj, dict) else None
    if kind == "payout":
        return parse_payout(obj, origin)
    if kind in {"balance_transaction", None}:
        return parse_balance_transaction(obj, origin)
    raise origin.error("object", f"{kind!r} is not a balance_transaction or payout", "object")


def read_stripe_file(path: str | Path) -> Iterator[StripeRecord]:
    """Balance transactions and payouts from a JSON export: a list object
    (``{"object": "list", "data": [...]}``), a JSON array, or JSON lines."""
    file = file_label(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PaymentFileError(file, "unreadable", f"cannot read the file ({exc})") from None
    stripped = text.lstrip()
    if stripped.startswith("{") and "\n{" not in stripped.strip():
        items = [_load(stripped, file, 1)]
    elif stripped.startswith("["):
        items = _load(stripped, file, 1)
    else:
        items = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                items.append((number, _load(line, file, number)))
        for index, (number, obj) in enumerate(items):
            yield parse_object(obj, Origin(file, number, index))
        return
    if isinstance(items, list) and len(items) == 1 and isinstance(items[0], dict) \
            and items[0].get("object") == "list":
        items = items[0].get("data") or []
    if not isinstance(items, list):
        raise PaymentFileError(file, "type", "expected a list of objects", line=1)
    for index, obj in enumerate(items):
        yield parse_object(obj, Origin(file, None, index))


def _load(text: str, file: str, line: int) -> Any:
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError as exc:
        raise PaymentFileError(file, "json_syntax", f"not JSON ({exc})", line=line) from None


class StripeClient(HttpConnector):
    """Balance transactions and payouts of one Stripe-style account."""

    system = "stripe"
    error_table = STRIPE_ERRORS

    def __init__(
        self, base_url: str, api_key: str, *, account: str = "stripe",
        transport: httpx.AsyncBaseTransport | None = None, retry: RetryPolicy = DEFAULT_RETRY,
        limiter: ConcurrencyLimiter | None = None,
    ) -> None:
        if not api_key:
            raise ConfigurationError("no API key for the Stripe-style API", system=self.system)
        self.account = account
        super().__init__(base_url, headers={"Authorization": f"Bearer {api_key}"},
                         transport=transport, retry=retry, limiter=limiter)

    def parse_error(self, response: httpx.Response, body: Any) -> tuple[str | None, str, list[Any]]:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return None, response.reason_phrase or "error", []
        code = error.get("code") if error.get("code") in STRIPE_ERRORS.by_code else None
        details = [error["param"]] if error.get("param") else []
        return code or error.get("type"), str(error.get("message") or error.get("type")), details

    def _origin(self, path: str, index: int) -> Origin:
        return Origin(f"api:{self.system}{path}", None, index)

    async def balance_transactions(
        self, *, payout: str | None = None, created_gte: datetime | None = None,
        created_lt: datetime | None = None, type: str | None = None, page_size: int = 100,
    ) -> AsyncIterator[list[BalanceTransaction]]:
        """Pages of balance transactions, newest first; with ``payout`` only those it paid."""
        params: dict[str, Any] = {}
        if payout is not None:
            params["payout"] = payout
        if created_gte is not None:
            params["created[gte]"] = int(created_gte.timestamp())
        if created_lt is not None:
            params["created[lt]"] = int(created_lt.timestamp())
        if type is not None:
            params["type"] = type
        async for items in self._pages("/v1/balance_transactions", params, page_size,
                                       parse_balance_transaction, payout=payout):
            yield items

    async def payouts(
        self, *, created_gte: datetime | None = None, status: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[list[StripePayout]]:
        params: dict[str, Any] = {}
        if created_gte is not None:
            params["created[gte]"] = int(created_gte.timestamp())
        if status is not None:
            params["status"] = status
        async for items in self._pages("/v1/payouts", params, page_size, parse_payout):
            yield items

    async def payout(self, payout_id: str) -> StripePayout:
        body = await self.request_json("GET", f"/v1/payouts/{payout_id}")
        return self._parse(parse_payout, body, 0)

    async def _pages(self, path: str, params: dict[str, Any], page_size: int, parser: Any,
                     **kwargs: Any) -> AsyncIterator[list[Any]]:
        """Pages of a cursor-paged list, each object parsed (numbered across pages)."""
        index = 0
        async for page in paginate(self, "GET", path, StartingAfterPaginator(page_size),
                                   params=params or None):
            items = [self._parse(parser, obj, index + i, **kwargs)
                     for i, obj in enumerate(page["data"])]
            index += len(items)
            yield items

    def _parse(self, parser: Any, obj: Any, index: int, **kwargs: Any) -> Any:
        try:
            return parser(obj, self._origin("", index), **kwargs)
        except PaymentFileError as exc:
            raise MalformedResponseError(f"{exc.field or 'record'}: {exc.reason} [{exc.rule}]",
                                         system=self.system) from None
