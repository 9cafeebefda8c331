"""A supplier's code API (CONTRACTS.md "Supplier API"): brand owners selling codes on demand.

Written from the contract, not from the client. Every request needs
``Authorization: Bearer {token}``; errors use the wallet's envelope
``{"error": {"code", "message", "details"}}``.

- ``POST /v1/codes:issue`` with ``Idempotency-Key`` (``[A-Za-z0-9_-]``, 1-255) and
  ``{"sku", "quantity", "order_ref"}``: the first request of a key issues ``quantity`` new
  codes (201 ``{"issue_id", "codes": [{"code", "pin"?, "expires_at"?}]}``, one
  ``codes.issued`` effect); the same key with the same body answers 200 with the same codes
  and issues nothing (``codes.repeated``); the same key with another body is 409 ``conflict``.
  An unknown SKU (when ``strict_skus``) or a quantity outside 1..1000 is 422 ``invalid``.
- ``GET /v1/redemptions?since=&cursor=&limit=``: codes redeemed at or after ``since``, oldest
  first, ``{"items": [{"code", "redeemed_at", "location"?}], "next_cursor"}``.
- ``GET /v1/statements/{yyyy-mm}``: ``{"issued", "redeemed", "amount_due"}`` for that month;
  ``amount_due`` is the unit price of every code issued in the month (``bill_on="issued"``,
  settlement by sales quantity) or redeemed in it (``bill_on="redeemed"``).

Codes follow a per-SKU format (``add_sku(sku, pattern=...)``): ``X`` is a random letter or
digit, ``9`` a random digit, anything else is kept; a seeded generator makes them
deterministic. ``redeem()`` (and ``POST /_sandbox/supplier/redeem``) plays customers redeeming
codes; ``respond_delay_s`` holds an issue's answer back after the codes are issued, so a test
can kill the client between the supplier's issue and its answer being recorded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox.core import Sandbox, json_response
from sandbox.money import MINOR_UNITS

DEFAULT_TOKEN = "supplier-sandbox-token-0001"
DEFAULT_PATTERN = "XXXX-XXXX-XXXX-XXXX"
KEY = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
MAX_QUANTITY = 1000
MAX_PAGE = 500
_ALNUM = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


@dataclass
class SkuFormat:
    pattern: str = DEFAULT_PATTERN
    pin_digits: int = 0
    valid_days: int | None = 365
    unit_price: str = "0.00"


class SupplierError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class SupplierSandbox(Sandbox):
    name = "supplier"

    def __init__(self, *, token: str = DEFAULT_TOKEN, currency: str = "EUR",
                 strict_skus: bool = False, bill_on: str = "issued", seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if bill_on not in ("issued", "redeemed"):
            raise ValueError("bill_on is 'issued' or 'redeemed'")
        self.token = token
        self.currency = currency
        self.strict_skus = strict_skus
        self.bill_on = bill_on
        self.seed = seed
        self.respond_delay_s = 0.0
        self._rng = random.Random(seed)
        self.formats: dict[str, SkuFormat] = {}
        self.by_key: dict[str, dict[str, Any]] = {}
        """Idempotency key -> {request, answer, issued_at}."""
        self.codes: dict[str, dict[str, Any]] = {}
        """code -> {issue_id, sku, pin, expires_at, issued_at, redeemed_at, location}."""

    # data -------------------------------------------------------------------------------------
    def add_sku(self, sku: str, *, pattern: str = DEFAULT_PATTERN, pin_digits: int = 0,
                valid_days: int | None = 365, unit_price: str | Decimal = "0.00") -> None:
        """Sell ``sku`` with codes of this format (admin: no effect)."""
        if not any(c in "X9" for c in pattern):
            raise ValueError("a pattern needs at least one X or 9")
        with self.lock:
            self.formats[sku] = SkuFormat(pattern, pin_digits, valid_days, str(unit_price))

    def issued(self, sku: str | None = None) -> list[str]:
        """Every code issued so far (optionally of one SKU), in issue order."""
        with self.lock:
            return [c for c, v in self.codes.items() if sku is None or v["sku"] == sku]

    def redeem(self, codes: list[str], *, at: datetime | None = None,
               location: str | None = None) -> int:
        """Customers redeem these codes (admin: no effect). Returns codes newly redeemed;
        unknown or already redeemed codes are skipped."""
        when = at or self.clock()
        done = 0
        with self.lock:
            for code in codes:
                entry = self.codes.get(code)
                if entry is None or entry["redeemed_at"]:
                    continue
                entry["redeemed_at"] = _stamp(when)
                entry["location"] = location
                done += 1
        return done

    def _format(self, sku: str) -> SkuFormat:
        found = self.formats.get(sku)
        if found is None:
            if self.strict_skus:
                raise SupplierError(422, "invalid", f"sku {sku!r} is not sold by this supplier")
            return SkuFormat()
        return found

    def _new_code(self, fmt: SkuFormat) -> str:
        for _ in range(1000):
            code = "".join(self._rng.choice(_ALNUM) if c == "X"
                           else str(self._rng.randrange(10)) if c == "9" else c
                           for c in fmt.pattern)
            if code not in self.codes:
                return code
        raise SupplierError(503, "unavailable", "the code format is exhausted")

    # persistence ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {"by_key": self.by_key, "codes": self.codes,
                "formats": {k: asdict(v) for k, v in self.formats.items()},
                "rng": len(self.codes)}

    def restore(self, data: dict[str, Any]) -> None:
        self.by_key = dict(data.get("by_key") or {})
        self.codes = dict(data.get("codes") or {})
        self.formats = {k: SkuFormat(**v) for k, v in (data.get("formats") or {}).items()}
        self._rng = random.Random(f"{self.seed}-{len(self.codes)}")

    def reset_data(self) -> None:
        self.by_key, self.codes, self.formats = {}, {}, {}
        self._rng = random.Random(self.seed)

    # protocol ---------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/codes:issue", self._issue, methods=["POST"]),
            Route("/v1/redemptions", self._redemptions, methods=["GET"]),
            Route("/v1/statements/{month}", self._statement, methods=["GET"]),
        ]

    def admin_routes(self) -> list[BaseRoute]:
        return [
            Route("/supplier/redeem", self._admin_redeem, methods=["POST"]),
            Route("/supplier/skus", self._admin_sku, methods=["POST"]),
            Route("/supplier/codes", self._admin_codes, methods=["GET"]),
        ]

    async def authenticate(self, request: Request) -> Response | None:
        if request.headers.get("authorization", "") != f"Bearer {self.token}":
            return self.error_response(401, "unauthorized", "missing or wrong bearer token")
        return None

    def _fail(self, exc: SupplierError) -> Response:
        return self.error_response(exc.status, exc.code, exc.message)

    @staticmethod
    def _issue_request(body: bytes) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except ValueError:
            raise SupplierError(400, "invalid", "the body is not JSON") from None
        if not isinstance(data, dict):
            raise SupplierError(400, "invalid", "the body must be a JSON object")
        sku, quantity, order_ref = data.get("sku"), data.get("quantity"), data.get("order_ref")
        if not isinstance(sku, str) or not sku:
            raise SupplierError(422, "invalid", "sku is required")
        if not isinstance(order_ref, str) or not order_ref:
            raise SupplierError(422, "invalid", "order_ref is required")
        if isinstance(quantity, bool) or not isinstance(quantity, int) \
                or not 1 <= quantity <= MAX_QUANTITY:
            raise SupplierError(422, "invalid",
                                f"quantity must be an integer from 1 to {MAX_QUANTITY}")
        return {"sku": sku, "quantity": quantity, "order_ref": order_ref}

    async def _issue(self, request: Request) -> Response:
        key = request.headers.get("idempotency-key", "")
        if not KEY.match(key):
            return self.error_response(400, "invalid",
                                       "Idempotency-Key is required: 1-255 of [A-Za-z0-9_-]")
        try:
            wanted = self._issue_request(await request.body())
            with self.lock:
                seen = self.by_key.get(key)
                if seen is not None:
                    if seen["request"] != wanted:
                        raise SupplierError(409, "conflict",
                                            f"{key} was used with another body")
                    self.effects.record("codes.repeated", key, issue_id=seen["answer"]["issue_id"])
                    return json_response(seen["answer"], status=200)
                fmt = self._format(wanted["sku"])
                now = self.clock()
                issue_id = f"ISS-{len(self.by_key) + 1:08d}"
                codes = []
                for _ in range(wanted["quantity"]):
                    code: dict[str, Any] = {"code": self._new_code(fmt)}
                    if fmt.pin_digits:
                        code["pin"] = "".join(str(self._rng.randrange(10))
                                              for _ in range(fmt.pin_digits))
                    if fmt.valid_days is not None:
                        code["expires_at"] = (now + timedelta(days=fmt.valid_days)).strftime(
                            "%Y-%m-%dT23:59:59Z")
                    self.codes[code["code"]] = {
                        "issue_id": issue_id, "sku": wanted["sku"], "pin": code.get("pin"),
                        "expires_at": code.get("expires_at"), "issued_at": _stamp(now),
                        "redeemed_at": None, "location": None, "unit_price": fmt.unit_price}
                    codes.append(code)
                answer = {"issue_id": issue_id, "codes": codes}
                self.by_key[key] = {"request": wanted, "answer": answer}
                self.effects.record("codes.issued", key, issue_id=issue_id, sku=wanted["sku"],
                                    quantity=wanted["quantity"], order_ref=wanted["order_ref"])
        except SupplierError as exc:
            return self._fail(exc)
        if self.respond_delay_s:
            await asyncio.sleep(self.respond_delay_s)
        return json_response(answer, status=201)

    async def _redemptions(self, request: Request) -> Response:
        params = request.query_params
        try:
            limit = _limit(params.get("limit"))
            since = _since(params.get("since"))
            after = _cursor(params.get("cursor")) if params.get("cursor") else None
        except SupplierError as exc:
            return self._fail(exc)
        with self.lock:
            rows = sorted((v["redeemed_at"], c) for c, v in self.codes.items()
                          if v["redeemed_at"] and (since is None or v["redeemed_at"] >= since))
            if after is not None:
                rows = [r for r in rows if r > after]
            page = rows[:limit]
            items = []
            for stamp, code in page:
                item = {"code": code, "redeemed_at": stamp}
                if self.codes[code]["location"]:
                    item["location"] = self.codes[code]["location"]
                items.append(item)
        more = len(rows) > limit
        next_cursor = _encode(page[-1]) if page and more else None
        return json_response({"items": items, "next_cursor": next_cursor})

    async def _statement(self, request: Request) -> Response:
        month = request.path_params["month"]
        if not MONTH.match(month):
            return self.error_response(400, "invalid", "the month is yyyy-mm")
        with self.lock:
            issued = [v for v in self.codes.values() if v["issued_at"].startswith(month)]
            redeemed = [v for v in self.codes.values()
                        if v["redeemed_at"] and v["redeemed_at"].startswith(month)]
        billed = issued if self.bill_on == "issued" else redeemed
        exponent = MINOR_UNITS.get(self.currency, 2)
        total = sum((Decimal(v["unit_price"]) for v in billed), Decimal(0))
        amount = total.quantize(Decimal(1).scaleb(-exponent))
        return json_response({"issued": len(issued), "redeemed": len(redeemed),
                              "amount_due": {"amount": str(amount), "currency": self.currency}})

    # admin ------------------------------------------------------------------------------------
    async def _admin_redeem(self, request: Request) -> Response:
        data = json.loads(await request.body() or b"{}")
        codes = list(data.get("codes") or [])
        if not codes and data.get("count"):
            with self.lock:
                codes = [c for c, v in self.codes.items() if not v["redeemed_at"]][
                    : int(data["count"])]
        at = datetime.fromisoformat(data["at"]) if data.get("at") else None
        return json_response({"redeemed": self.redeem(codes, at=at,
                                                      location=data.get("location"))})

    async def _admin_sku(self, request: Request) -> Response:
        data = json.loads(await request.body() or b"{}")
        try:
            self.add_sku(data.pop("sku"), **data)
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            return self.error_response(400, "invalid", str(exc))
        return json_response({"skus": sorted(self.formats)})

    async def _admin_codes(self, request: Request) -> Response:
        sku = request.query_params.get("sku") or None
        codes = self.issued(sku)
        return json_response({"codes": codes, "count": len(codes)})


def _limit(raw: str | None) -> int:
    if not raw:
        return MAX_PAGE
    try:
        value = int(raw)
    except ValueError:
        raise SupplierError(400, "invalid", f"limit must be an integer, got {raw!r}") from None
    if not 1 <= value <= MAX_PAGE:
        raise SupplierError(400, "invalid", f"limit must be between 1 and {MAX_PAGE}")
    return value


def _since(raw: str | None) -> str | None:
    if not raw:
        return None
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise SupplierError(400, "invalid", f"since is not an RFC 3339 time: {raw!r}") from None
    if when.tzinfo is None:
        raise SupplierError(400, "invalid", "since needs an offset")
    return _stamp(when)


def _encode(position: tuple[str, str]) -> str:
    raw = json.dumps(list(position), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor(cursor: str) -> tuple[str, str]:
    try:
        stamp, code = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(stamp, str) or not isinstance(code, str):
            raise ValueError
        return stamp, code
    except (ValueError, TypeError):
        raise SupplierError(400, "invalid", "cursor is not valid") from None
