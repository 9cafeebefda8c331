"""The wallet sites sandbox (CONTRACTS.md "Wallet site API"): products, for now.

One ASGI app hosts every site: site ``{code}`` answers under ``/{code}/api/v1``. Each site
keeps its own products, API key, currency, timezone and clock-stamped ``updated_at``, so a
client that mixes up sites, keys or currencies fails here as it would against the real ones.
"""

from __future__ import annotations

import base64
import bisect
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox.core import Sandbox, json_response
from sandbox.money import MINOR_UNITS, decimals_of, parse_amount
from sandbox.sites import Site, normalize_sites

__all__ = [
    "MAX_BATCH",
    "MAX_PAGE",
    "PRODUCT_FIELDS",
    "SiteState",
    "WalletError",
    "WalletSandbox",
    "validate_product",
]

API_PREFIX = "/api/v1"
MAX_BATCH = 500
MAX_PAGE = 500
STATUSES = ("normal", "frozen", "inactive")
ISSUANCE_MODES = ("code_pool", "api")
PRODUCT_FIELDS = (
    "sku", "name", "kind", "face_value", "status", "issuance_mode", "write_off_type", "updated_at",
)  # fmt: skip
_SKU_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")


class WalletError(Exception):
    def __init__(
        self, status: int, code: str, message: str, details: list[Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


@dataclass
class SiteState:
    site: Site
    tz: ZoneInfo
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: (updated_at in microseconds since the epoch, sku), sorted: the list order
    index: list[tuple[int, str]] = field(default_factory=list)
    stamps: dict[str, int] = field(default_factory=dict)
    last_stamp: int = 0

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


def validate_product(
    item: Any, site_currency: str, minor_units: Mapping[str, int]
) -> list[tuple[str, str]]:
    """Problems of one Product as ``(field, message)``; empty when valid."""
    if not isinstance(item, dict):
        return [("", "a product must be a JSON object")]
    problems: list[tuple[str, str]] = []
    for name in sorted(set(item) - set(PRODUCT_FIELDS)):
        problems.append((name, "unknown field"))
    sku = item.get("sku")
    if not isinstance(sku, str) or not _SKU_RE.match(sku):
        problems.append(("sku", "must match [A-Za-z0-9_-]{1,64}"))
    for name in ("name", "kind", "write_off_type"):
        value = item.get(name)
        if not isinstance(value, str) or not value.strip():
            problems.append((name, "must be a non-empty string"))
    status = item.get("status")
    if status not in STATUSES:
        problems.append(("status", f"must be one of {', '.join(STATUSES)}"))
    mode = item.get("issuance_mode")
    if mode not in ISSUANCE_MODES:
        problems.append(("issuance_mode", f"must be one of {', '.join(ISSUANCE_MODES)}"))
    updated_at = item.get("updated_at")
    if updated_at is not None and not isinstance(updated_at, str):
        problems.append(("updated_at", "must be an RFC 3339 string (the site sets it)"))
    problems.extend(_validate_money(item.get("face_value"), site_currency, minor_units))
    return problems


def _validate_money(
    money: Any, site_currency: str, minor_units: Mapping[str, int]
) -> list[tuple[str, str]]:
    if not isinstance(money, dict):
        return [("face_value", 'must be {"amount": "<decimal string>", "currency": "XXX"}')]
    problems: list[tuple[str, str]] = []
    for name in sorted(set(money) - {"amount", "currency"}):
        problems.append((f"face_value.{name}", "unknown field"))
    currency = money.get("currency")
    known = False
    if not isinstance(currency, str) or not _CURRENCY_RE.match(currency):
        problems.append(("face_value.currency", "must be a 3-letter upper-case ISO 4217 code"))
    elif currency not in minor_units:
        problems.append(("face_value.currency", f"unknown currency {currency}"))
    elif currency != site_currency:
        problems.append(
            ("face_value.currency", f"this site sells in {site_currency}, not {currency}")
        )
    else:
        known = True
    amount = money.get("amount")
    if not isinstance(amount, str):
        problems.append(("face_value.amount", "must be a decimal string, e.g. \"12.50\""))
        return problems
    try:
        value = parse_amount(amount)
    except ValueError:
        problems.append(("face_value.amount", f"{amount!r} is not a decimal string"))
        return problems
    if value <= 0:
        problems.append(("face_value.amount", "must be greater than zero"))
    if known and decimals_of(value) > minor_units[currency]:
        problems.append(
            (
                "face_value.amount",
                f"{amount} has more decimals than {currency} allows ({minor_units[currency]})",
            )
        )
    return problems


def _content_key(product: Mapping[str, Any]) -> tuple[Any, ...]:
    """What "unchanged" compares: everything but updated_at, amounts by value."""
    fv = product["face_value"]
    return (
        product["name"], product["kind"], Decimal(fv["amount"]), fv["currency"],
        product["status"], product["issuance_mode"], product["write_off_type"],
    )  # fmt: skip


def _encode_cursor(stamp: int, sku: str) -> str:
    raw = json.dumps([stamp, sku], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, sku = json.loads(raw)
        if not isinstance(stamp, int) or not isinstance(sku, str):
            raise ValueError
        return stamp, sku
    except (ValueError, TypeError):
        raise WalletError(400, "bad_request", "cursor is not valid") from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class WalletSandbox(Sandbox):
    """All wallet sites in one app, each under ``/{code}``."""

    name = "wallet"

    def __init__(
        self,
        sites: Iterable[Site | Mapping[str, Any]] | None = None,
        *,
        minor_units: Mapping[str, int] | None = None,
        clock: Callable[[], datetime] | None = None,
        state_path: Path | str | None = None,
        request_log_size: int = 10_000,
    ) -> None:
        super().__init__(clock=clock, state_path=state_path, request_log_size=request_log_size)
        self.sites: dict[str, SiteState] = {
            s.code: SiteState(s, ZoneInfo(s.timezone)) for s in normalize_sites(sites)
        }
        self.minor_units = {**MINOR_UNITS, **(minor_units or {})}

    # ---- helpers (tests and the demo) ---------------------------------------------------------

    def site_url(self, server_base_url: str, code: str) -> str:
        """The site's base URL (the connector appends ``/api/v1/...``)."""
        self._site(code)
        return f"{server_base_url.rstrip('/')}/{code}"

    def api_key(self, code: str) -> str:
        return self._site(code).site.api_key

    def products(self, code: str) -> list[dict[str, Any]]:
        """The site's products in list order (updated_at, sku)."""
        with self.lock:
            state = self._site(code)
            return [dict(state.products[sku]) for _, sku in state.index]

    def get_product(self, code: str, sku: str) -> dict[str, Any] | None:
        with self.lock:
            product = self._site(code).products.get(sku)
            return dict(product) if product is not None else None

    def count(self, code: str | None = None) -> int:
        with self.lock:
            if code is not None:
                return len(self._site(code).products)
            return sum(len(s.products) for s in self.sites.values())

    def set_product(self, code: str, product: Mapping[str, Any]) -> dict[str, Any]:
        """Put a product on a site directly (validated; no effect recorded)."""
        with self.lock:
            state = self._site(code)
            problems = validate_product(dict(product), state.site.currency, self.minor_units)
            if problems:
                raise ValueError(f"invalid product: {problems}")
            stored = {k: product[k] for k in PRODUCT_FIELDS if k != "updated_at"}
            stored["face_value"] = dict(product["face_value"])
            stamp = self._stamp(state)
            stored["updated_at"] = self._format(state, stamp)
            state.put(stored, stamp)
            return dict(stored)

    def freeze(self, code: str, sku: str, reason: str) -> dict[str, Any]:
        """The site freezes a SKU on its own (the change vouchflow must pick up). Like the
        ERP's ``touch``, the far end's own change is not recorded as an effect: effects count
        what clients did."""
        return self.set_status(code, sku, "frozen", reason)

    def set_status(
        self, code: str, sku: str, status: str, reason: str | None = None
    ) -> dict[str, Any]:
        with self.lock:
            return self._set_status(self._site(code), sku, status, reason, record=False)

    # ---- Sandbox hooks ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "sites": {
                code: {"products": [state.products[sku] for _, sku in state.index]}
                for code, state in self.sites.items()
            }
        }

    def restore(self, data: dict[str, Any]) -> None:
        for code, saved in data.get("sites", {}).items():
            state = self.sites.get(code)
            if state is None:
                continue  # a site no longer configured
            for product in saved["products"]:
                stamp = _micros(datetime.fromisoformat(product["updated_at"]))
                state.put(dict(product), stamp)

    def reset_data(self) -> None:
        for code, state in list(self.sites.items()):
            self.sites[code] = SiteState(state.site, state.tz)

    async def authenticate(self, request: Request) -> Response | None:
        parts = request.url.path.split("/", 2)
        code = parts[1] if len(parts) > 1 else ""
        state = self.sites.get(code)
        if state is None:
            return self.error_response(404, "not_found", f"no site {code!r}")
        if request.headers.get("x-api-key") != state.site.api_key:
            return self.error_response(401, "unauthorized", "missing or wrong X-Api-Key")
        return None

    def routes(self) -> list[BaseRoute]:
        base = "/{site}" + API_PREFIX
        return [
            Route(base + "/products:batch", self._put_batch, methods=["PUT"]),
            Route(base + "/products", self._list, methods=["GET"]),
            Route(base + "/products/{sku}", self._patch, methods=["PATCH"]),
        ]

    def admin_routes(self) -> list[BaseRoute]:
        return [
            Route("/wallet/{site}/products", self._admin_products, methods=["GET"]),
            Route("/wallet/{site}/status/{sku}", self._admin_status, methods=["POST"]),
        ]

    # ---- handlers ----------------------------------------------------------------------------

    async def _put_batch(self, request: Request) -> Response:
        try:
            state = self._site(request.path_params["site"])
            body = await _json_body(request)
            items = body.get("items") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise WalletError(422, "invalid", 'body must be {"items": [Product, ...]}')
            if len(items) > MAX_BATCH:
                raise WalletError(
                    422, "invalid", f"at most {MAX_BATCH} items per batch, got {len(items)}"
                )
            details: list[dict[str, Any]] = []
            seen: dict[str, int] = {}
            for i, item in enumerate(items):
                sku = item.get("sku") if isinstance(item, dict) else None
                for fld, message in validate_product(item, state.site.currency, self.minor_units):
                    details.append({"index": i, "sku": sku, "field": fld, "message": message})
                if isinstance(sku, str):
                    if sku in seen:
                        details.append({
                            "index": i, "sku": sku, "field": "sku",
                            "message": f"duplicate of item {seen[sku]} in the same batch",
                        })  # fmt: skip
                    seen.setdefault(sku, i)
            if details:
                bad = len({d["index"] for d in details})
                raise WalletError(
                    422, "invalid", f"{bad} of {len(items)} items are invalid; nothing was applied",
                    details,
                )  # fmt: skip
            with self.lock:
                results = [self._upsert(state, item) for item in items]
            return json_response({"results": results})
        except WalletError as exc:
            return self._error(exc)

    def _upsert(self, state: SiteState, item: Mapping[str, Any]) -> dict[str, str]:
        sku = item["sku"]
        new = {k: item[k] for k in PRODUCT_FIELDS if k != "updated_at"}
        new["face_value"] = {"amount": item["face_value"]["amount"],
                             "currency": item["face_value"]["currency"]}
        old = state.products.get(sku)
        key = f"{state.site.code}:{sku}"
        if old is not None and _content_key(old) == _content_key(new):
            return {"sku": sku, "outcome": "unchanged"}
        stamp = self._stamp(state)
        new["updated_at"] = self._format(state, stamp)
        state.put(new, stamp)
        outcome = "created" if old is None else "updated"
        self.effects.record(f"product.{outcome}", key, site=state.site.code, sku=sku)
        return {"sku": sku, "outcome": outcome}

    async def _list(self, request: Request) -> Response:
        try:
            state = self._site(request.path_params["site"])
            params = request.query_params
            limit = _limit(params.get("limit"))
            start = 0
            with self.lock:
                since = params.get("updated_since")
                if since:
                    start = bisect.bisect_left(state.index, (_parse_since(since), ""))
                cursor = params.get("cursor")
                if cursor:
                    start = max(start, bisect.bisect_right(state.index, _decode_cursor(cursor)))
                page = state.index[start : start + limit]
                items = [dict(state.products[sku]) for _, sku in page]
                more = start + limit < len(state.index)
            next_cursor = _encode_cursor(*page[-1]) if page and more else None
            return json_response({"items": items, "next_cursor": next_cursor})
        except WalletError as exc:
            return self._error(exc)

    async def _patch(self, request: Request) -> Response:
        try:
            state = self._site(request.path_params["site"])
            body = await _json_body(request)
            if not isinstance(body, dict):
                raise WalletError(422, "invalid", "body must be a JSON object")
            details = []
            for name in sorted(set(body) - {"status", "reason"}):
                details.append({"field": name, "message": "unknown field"})
            status = body.get("status")
            if status not in STATUSES:
                details.append({"field": "status", "message": f"must be one of {', '.join(STATUSES)}"})
            reason = body.get("reason")
            if reason is not None and not isinstance(reason, str):
                details.append({"field": "reason", "message": "must be a string"})
            if details:
                raise WalletError(422, "invalid", "invalid status change", details)
            with self.lock:
                product = self._set_status(state, request.path_params["sku"], status, reason)
            return json_response(product)
        except WalletError as exc:
            return self._error(exc)

    async def _admin_products(self, request: Request) -> Response:
        try:
            items = self.products(request.path_params["site"])
        except WalletError as exc:
            return self._error(exc)
        return json_response({"items": items, "count": len(items)})

    async def _admin_status(self, request: Request) -> Response:
        try:
            body = await _json_body(request)
            product = self.set_status(
                request.path_params["site"], request.path_params["sku"],
                str(body.get("status", "frozen")), body.get("reason"),
            )  # fmt: skip
        except WalletError as exc:
            return self._error(exc)
        return json_response(product)

    # ---- internals ----------------------------------------------------------------------------

    def _site(self, code: str) -> SiteState:
        state = self.sites.get(code)
        if state is None:
            raise WalletError(404, "not_found", f"no site {code!r}")
        return state

    def _set_status(
        self, state: SiteState, sku: str, status: str, reason: str | None, record: bool = True
    ) -> dict[str, Any]:
        if status not in STATUSES:
            raise WalletError(422, "invalid", f"status must be one of {', '.join(STATUSES)}")
        product = state.products.get(sku)
        if product is None:
            raise WalletError(404, "not_found", f"no product {sku!r} on site {state.site.code}")
        if product["status"] == status:
            return dict(product)
        new = {**product, "status": status}
        stamp = self._stamp(state)
        new["updated_at"] = self._format(state, stamp)
        state.put(new, stamp)
        if not record:
            return dict(new)
        self.effects.record(
            "product.status_changed", f"{state.site.code}:{sku}", site=state.site.code, sku=sku,
            status=status, previous=product["status"], reason=reason,
        )  # fmt: skip
        return dict(new)

    def _stamp(self, state: SiteState) -> int:
        """The site's clock in microseconds, strictly increasing per site so that a later
        change always lists after an earlier one."""
        return max(_micros(self.clock()), state.last_stamp + 1)

    @staticmethod
    def _format(state: SiteState, stamp: int) -> str:
        dt = datetime.fromtimestamp(stamp // 1_000_000, tz=state.tz).replace(
            microsecond=stamp % 1_000_000
        )
        return dt.isoformat(timespec="microseconds")

    def _error(self, exc: WalletError) -> Response:
        return self.error_response(exc.status, exc.code, exc.message, details=exc.details)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw) if raw else {}
    except ValueError as exc:
        raise WalletError(400, "bad_request", f"body is not valid JSON: {exc}") from None


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return MAX_PAGE
    try:
        value = int(raw)
    except ValueError:
        raise WalletError(400, "bad_request", f"limit must be an integer, got {raw!r}") from None
    if not 1 <= value <= MAX_PAGE:
        raise WalletError(400, "bad_request", f"limit must be between 1 and {MAX_PAGE}")
    return value


def _parse_since(raw: str) -> int:
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise WalletError(
            400, "bad_request", f"updated_since must be RFC 3339, got {raw!r}"
        ) from None
    if dt.tzinfo is None:
        raise WalletError(400, "bad_request", "updated_since must carry a UTC offset")
    return _micros(dt)
