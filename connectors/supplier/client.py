"""API supplier client (CONTRACTS.md "Supplier API"): codes issued on demand, redemptions,
monthly statements. One client per supplier.

Codes are bearer value: they come back as ``BearerValue`` (masked to the last 4 characters
in every repr, str or log line) and only ``reveal()`` / ``get_secret_value()`` hands them on.
``issue_codes`` is safe to retry and to repeat after a crash: the supplier answers a repeated
``Idempotency-Key`` with the codes it issued the first time, so it is the store of the
plaintext codes, not vouchflow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from canonical import BearerValue
from connectors.errors import MalformedResponseError
from connectors.http import DEFAULT_RETRY, HttpConnector, RetryPolicy, decode_json, paginate
from connectors.idempotency import check_key
from connectors.limits import ConcurrencyLimiter, shared_limiter
from connectors.paging import CursorPaginator
from connectors.supplier.config import SupplierSettings
from connectors.wallet.client import WALLET_ERRORS, WalletClient

API = "/v1"
MAX_PAGE = 500


@dataclass(frozen=True)
class IssuedCode:
    code: BearerValue
    pin: BearerValue | None = None
    expires_at: datetime | None = None

    def wire(self) -> dict[str, Any]:
        """As a wallet delivery wants it (the one place the code leaves in clear)."""
        out: dict[str, Any] = {"code": self.code.get_secret_value()}
        if self.pin is not None:
            out["pin"] = self.pin.get_secret_value()
        if self.expires_at is not None:
            out["expires_at"] = self.expires_at.isoformat().replace("+00:00", "Z")
        return out


@dataclass(frozen=True)
class Issue:
    issue_id: str
    codes: tuple[IssuedCode, ...]
    repeated: bool
    """The supplier answered 200: these codes were issued by an earlier request of the key."""


@dataclass(frozen=True)
class Redemption:
    code: BearerValue
    redeemed_at: datetime
    location: str | None = None


@dataclass(frozen=True)
class Statement:
    month: str
    issued: int
    redeemed: int
    amount_due: Decimal
    currency: str


def _time(value: Any, what: str, system: str) -> datetime:
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise MalformedResponseError(f"{what} is not an RFC 3339 time", system=system) from None
    if when.tzinfo is None:
        raise MalformedResponseError(f"{what} has no offset", system=system)
    return when


class SupplierClient(HttpConnector):
    system = "supplier"
    error_table = WALLET_ERRORS
    parse_error = WalletClient.parse_error
    """Errors as the wallet's: ``{"error": {"code", "message", "details"}}``."""

    def __init__(
        self,
        settings: SupplierSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        limiter: ConcurrencyLimiter | None = None,
    ) -> None:
        settings.check()
        self.settings = settings
        self.system = f"supplier:{settings.slug}"
        super().__init__(
            settings.base_url + API,
            headers={"Authorization": f"Bearer {settings.token.get_secret_value()}"},
            retry=retry,
            limiter=limiter or shared_limiter(self.system, settings.concurrency),
            transport=transport,
            max_connections=settings.concurrency * 2,
        )

    async def issue_codes(self, sku: str, quantity: int, order_ref: str, *, key: str) -> Issue:
        """Issue ``quantity`` codes of ``sku`` for one sale. ``key`` (``issue-{site}-{order}-
        {line}``) makes it exactly once: a repeat gets the first codes back."""
        response = await self.request(
            "POST", "/codes:issue",
            json_body={"sku": sku, "quantity": quantity, "order_ref": order_ref},
            headers={"Idempotency-Key": check_key(key)})
        body = decode_json(response, system=self.system)
        raw = body.get("codes") if isinstance(body, dict) else None
        issue_id = body.get("issue_id") if isinstance(body, dict) else None
        if not isinstance(raw, list) or not isinstance(issue_id, str) or not issue_id:
            raise MalformedResponseError(f"{key}: answer without issue_id and codes",
                                         system=self.system, response=response)
        if len(raw) != quantity:
            raise MalformedResponseError(f"{key}: {len(raw)} codes for {quantity} asked",
                                         system=self.system, response=response)
        codes = []
        for i, item in enumerate(raw):
            code = item.get("code") if isinstance(item, dict) else None
            if not isinstance(code, str) or not code:
                raise MalformedResponseError(f"{key}: codes[{i}] has no code",
                                             system=self.system, response=response)
            pin = item.get("pin")
            expires = item.get("expires_at")
            codes.append(IssuedCode(
                BearerValue(code), BearerValue(str(pin)) if pin else None,
                _time(expires, f"{key}: codes[{i}].expires_at", self.system)
                if expires else None))
        if len({c.code.get_secret_value() for c in codes}) != len(codes):
            raise MalformedResponseError(f"{key}: the same code twice in one issue",
                                         system=self.system, response=response)
        return Issue(issue_id, tuple(codes), repeated=response.status_code == 200)

    async def list_redemptions(
        self, *, since: datetime | None = None, page_size: int = MAX_PAGE,
    ) -> AsyncIterator[list[Redemption]]:
        """Codes redeemed at or after ``since``, oldest first, a page at a time."""
        params = {"since": since.isoformat()} if since is not None else None
        async for page in paginate(self, "GET", "/redemptions", CursorPaginator(page_size),
                                   params=params):
            out = []
            for item in page["items"]:
                if not isinstance(item, dict) or not isinstance(item.get("code"), str):
                    raise MalformedResponseError("a redemption without a code",
                                                 system=self.system)
                out.append(Redemption(
                    BearerValue(item["code"]),
                    _time(item.get("redeemed_at"), "redeemed_at", self.system),
                    item.get("location") or None))
            yield out

    async def statement(self, month: str) -> Statement:
        """The supplier's statement of a month (``yyyy-mm``)."""
        body = await self.request_json("GET", f"/statements/{month}")
        try:
            due = body["amount_due"]
            return Statement(month, int(body["issued"]), int(body["redeemed"]),
                             Decimal(str(due["amount"])), str(due["currency"]))
        except (KeyError, TypeError, ValueError, InvalidOperation):
            raise MalformedResponseError(f"statement {month}: not issued/redeemed/amount_due",
                                         system=self.system) from None


__all__ = ["Issue", "IssuedCode", "Redemption", "Statement", "SupplierClient"]
