"""The wallet sites sandbox (CONTRACTS.md "Wallet site API"): products, inventory, batches,
orders, code deliveries, refunds, webhooks to vouchflow, and a sales generator.

One ASGI app hosts every site: site ``{code}`` answers under ``/{code}/api/v1``. Each site
keeps its own products, API key, currency, timezone and clock-stamped ``updated_at``, so a
client that mixes up sites, keys or currencies fails here as it would against the real ones.
The parts live in their own modules (``inventory``, ``orders``, ``sales``, ``webhooks``);
this one adds the products and puts the routes and the snapshot together.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox.core import json_response
from sandbox.money import decimals_of, parse_amount
from sandbox.wallet.common import (
    API_PREFIX,
    MAX_BATCH,
    MAX_PAGE,
    LineState,
    SiteState,
    WalletError,
    decode_cursor,
    encode_cursor,
    json_body,
    micros,
    page_limit,
    parse_since,
    parse_time,
)
from sandbox.wallet.inventory import InventoryMixin
from sandbox.wallet.sales import SalesMixin

__all__ = [
    "API_PREFIX",
    "MAX_BATCH",
    "MAX_PAGE",
    "PRODUCT_FIELDS",
    "SiteState",
    "WalletError",
    "WalletSandbox",
    "validate_product",
]

STATUSES = ("normal", "frozen", "inactive")
ISSUANCE_MODES = ("code_pool", "api")
PRODUCT_FIELDS = (
    "sku", "name", "kind", "face_value", "status", "issuance_mode", "write_off_type", "updated_at",
)  # fmt: skip
_SKU_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")


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


class WalletSandbox(SalesMixin, InventoryMixin):
    """All wallet sites in one app, each under ``/{code}``.

    ``WalletSandbox(sites=None, *, minor_units=None, clock=None, state_path=None,
    request_log_size=10_000, webhook_url=None, webhook_secrets=None, duplicate_rate=0.1,
    shuffle_window=5, webhook_seed=None, webhook_backoff_s=(0.05, 5.0),
    webhook_max_attempts=None, webhook_timeout_s=5.0)``; see ``sandbox/README.md``.
    """

    # ---- products (tests and the demo) --------------------------------------------------------

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
        """Products on a site (or on all)."""
        with self.lock:
            if code is not None:
                return len(self._site(code).products)
            return sum(len(s.products) for s in self.sites.values())

    def set_product(self, code: str, product: Mapping[str, Any]) -> dict[str, Any]:
        """Put a product on a site directly (validated; no effect, no event)."""
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
        """The site freezes a SKU on its own (the change vouchflow must pick up): bumps
        ``updated_at`` and creates ``product.status_changed``. Like the ERP's ``touch``, the
        far end's own change is not recorded as an effect: effects count what clients did."""
        return self.set_status(code, sku, "frozen", reason)

    def deactivate(self, code: str, sku: str, reason: str) -> dict[str, Any]:
        """The site deactivates a SKU on its own (``inactive``); as ``freeze``."""
        return self.set_status(code, sku, "inactive", reason)

    def set_status(
        self, code: str, sku: str, status: str, reason: str | None = None
    ) -> dict[str, Any]:
        """A local status change: ``product.status_changed`` event, no effect."""
        with self.lock:
            return self._set_status(self._site(code), sku, status, reason, local=True)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the background sales and the webhook deliverer (data is kept)."""
        self.stop_sales(timeout)
        self.stop_webhooks(timeout)

    # ---- Sandbox hooks ----------------------------------------------------------------------

    def reset(self) -> None:
        self.stop_sales()
        super().reset()

    def snapshot(self) -> dict[str, Any]:
        return {
            "sites": {code: _site_snapshot(state) for code, state in self.sites.items()},
            "webhooks": self.outbox.snapshot(),
        }

    def restore(self, data: dict[str, Any]) -> None:
        for code, saved in data.get("sites", {}).items():
            state = self.sites.get(code)
            if state is None:
                continue  # a site no longer configured
            _site_restore(state, saved)
        webhooks = data.get("webhooks")
        if webhooks is not None:
            configured = set(self.sites)
            self.outbox.restore({
                "seq": webhooks.get("seq", 0),
                "events": [e for e in webhooks.get("events", []) if e["site"] in configured],
            })  # fmt: skip

    def reset_data(self) -> None:
        for code, state in list(self.sites.items()):
            self.sites[code] = SiteState(state.site, state.tz)
        self.outbox.clear()

    def routes(self) -> list[BaseRoute]:
        base = "/{site}" + API_PREFIX
        return [
            Route(base + "/products:batch", self._put_batch, methods=["PUT"]),
            Route(base + "/products", self._list, methods=["GET"]),
            Route(base + "/products/{sku}", self._patch, methods=["PATCH"]),
            Route(base + "/inventory:batch", self._put_inventory, methods=["PUT"]),
            Route(base + "/batches:batch", self._put_batches, methods=["PUT"]),
            Route(base + "/orders", self._list_orders, methods=["GET"]),
            Route(base + "/orders/{order_id}", self._get_order, methods=["GET"]),
            Route(base + "/orders/{order_id}/deliveries", self._post_delivery, methods=["POST"]),
            Route(base + "/refunds", self._list_refunds, methods=["GET"]),
        ]

    def admin_routes(self) -> list[BaseRoute]:
        return [
            Route("/wallet/{site}/products", self._admin_products, methods=["GET"]),
            Route("/wallet/{site}/status/{sku}", self._admin_status, methods=["POST"]),
            Route("/wallet/{site}/inventory", self._admin_inventory, methods=["GET"]),
            Route("/wallet/{site}/orders", self._admin_orders, methods=["GET"]),
            Route("/wallet/{site}/refunds", self._admin_refund, methods=["POST"]),
            Route("/wallet/sales", self._admin_sales, methods=["POST"]),
            Route("/wallet/events", self._admin_events, methods=["GET"]),
            Route("/wallet/webhooks", self._admin_webhooks, methods=["GET"]),
        ]

    # ---- product handlers ---------------------------------------------------------------------

    async def _put_batch(self, request: Request) -> Response:
        try:
            state = self._site(request.path_params["site"])
            body = await json_body(request)
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
            limit = page_limit(params.get("limit"))
            since = parse_since(params["updated_since"]) if params.get("updated_since") else None
            with self.lock:
                start = 0
                if since is not None:
                    start = bisect.bisect_left(state.index, (since, ""))
                cursor = params.get("cursor")
                if cursor:
                    start = max(start, bisect.bisect_right(state.index, decode_cursor(cursor)))
                page = state.index[start : start + limit]
                items = [dict(state.products[sku]) for _, sku in page]
                more = start + limit < len(state.index)
            next_cursor = encode_cursor(*page[-1]) if page and more else None
            return json_response({"items": items, "next_cursor": next_cursor})
        except WalletError as exc:
            return self._error(exc)

    async def _patch(self, request: Request) -> Response:
        try:
            state = self._site(request.path_params["site"])
            body = await json_body(request)
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

    # ---- admin routes -------------------------------------------------------------------------

    async def _admin_products(self, request: Request) -> Response:
        try:
            items = self.products(request.path_params["site"])
        except WalletError as exc:
            return self._error(exc)
        return json_response({"items": items, "count": len(items)})

    async def _admin_status(self, request: Request) -> Response:
        try:
            body = await json_body(request)
            product = self.set_status(
                request.path_params["site"], request.path_params["sku"],
                str(body.get("status", "frozen")), body.get("reason"),
            )  # fmt: skip
        except WalletError as exc:
            return self._error(exc)
        return json_response(product)

    async def _admin_inventory(self, request: Request) -> Response:
        try:
            code = request.path_params["site"]
            return json_response({"inventory": self.inventory(code),
                                  "batches": self.batches(code),
                                  "oversold": self.oversold(code)})  # fmt: skip
        except WalletError as exc:
            return self._error(exc)

    async def _admin_orders(self, request: Request) -> Response:
        try:
            code = request.path_params["site"]
            orders, refunds = self.orders(code), self.refunds(code)
        except WalletError as exc:
            return self._error(exc)
        return json_response({"orders": orders, "refunds": refunds, "count": len(orders)})

    async def _admin_refund(self, request: Request) -> Response:
        """``{order_id, line_id, quantity}``: the customer is refunded."""
        try:
            body = await json_body(request)
            refunds = self.refund(request.path_params["site"], str(body.get("order_id")),
                                  str(body.get("line_id")), body.get("quantity", 1))
        except WalletError as exc:
            return self._error(exc)
        except (ValueError, AttributeError) as exc:
            return self.error_response(422, "invalid", str(exc))
        return json_response({"refunds": refunds}, status=201)

    async def _admin_sales(self, request: Request) -> Response:
        """``{n, seed, start, end, sites?, refund_rate?, cancel_rate?, respect_availability?}``
        (times RFC 3339): ``generate_sales``."""
        try:
            body = await json_body(request)
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            orders = self.generate_sales(
                int(body.get("n", 10)), seed=int(body.get("seed", 0)),
                start=parse_time(body.get("start"), "start"),
                end=parse_time(body.get("end"), "end"), sites=body.get("sites"),
                refund_rate=float(body.get("refund_rate", 0.05)),
                cancel_rate=float(body.get("cancel_rate", 0.0)),
                respect_availability=bool(body.get("respect_availability", True)),
            )  # fmt: skip
        except WalletError as exc:
            return self._error(exc)
        except (ValueError, TypeError) as exc:
            return self.error_response(422, "invalid", str(exc))
        return json_response({"orders": len(orders),
                              "order_ids": [o["order_id"] for o in orders]})  # fmt: skip

    async def _admin_events(self, request: Request) -> Response:
        site = request.query_params.get("site") or None
        events = [
            {k: v for k, v in e.items() if k != "body"} for e in self.events(site)
        ]
        return json_response({"events": events, "count": len(events)})

    async def _admin_webhooks(self, request: Request) -> Response:
        return json_response(self.webhook_stats())

    # ---- internals ----------------------------------------------------------------------------

    def _set_status(
        self, state: SiteState, sku: str, status: str, reason: str | None, local: bool = False
    ) -> dict[str, Any]:
        """``local``: the site's own change (an event, no effect); else a client's PATCH (an
        effect, no event: vouchflow knows what it asked for)."""
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
        if local:
            self._emit(state, "product.status_changed",
                       {"sku": sku, "status": status, "reason": reason}, stamp)  # fmt: skip
            return dict(new)
        self.effects.record(
            "product.status_changed", f"{state.site.code}:{sku}", site=state.site.code, sku=sku,
            status=status, previous=product["status"], reason=reason,
        )  # fmt: skip
        return dict(new)


# ---- snapshot -----------------------------------------------------------------------------------


def _site_snapshot(state: SiteState) -> dict[str, Any]:
    return {
        "products": [state.products[sku] for _, sku in state.index],
        "inventory": state.inventory,
        "batches": [state.batches[k] for k in sorted(state.batches)],
        "orders": [state.orders[k] for _, k in state.order_index.entries],
        "lines": [
            {"order_id": order_id, "line_id": line_id, **line.as_dict()}
            for (order_id, line_id), line in state.lines.items()
        ],
        "refunds": [state.refunds[k] for _, k in state.refund_index.entries],
        "deliveries": list(state.deliveries.values()),
        "counters": dict(state.counters),
        "oversold": dict(state.oversold),
    }


def _site_restore(state: SiteState, saved: Mapping[str, Any]) -> None:
    for product in saved.get("products", []):
        state.put(dict(product), micros(datetime.fromisoformat(product["updated_at"])))
    state.inventory = {sku: dict(e) for sku, e in saved.get("inventory", {}).items()}
    state.batches = {(b["sku"], b["batch_no"]): dict(b) for b in saved.get("batches", [])}
    for order in saved.get("orders", []):
        state.orders[order["order_id"]] = order
        state.order_index.put(order["order_id"],
                              micros(datetime.fromisoformat(order["updated_at"])))
    for line in saved.get("lines", []):
        ls = LineState(line["quantity"], line["delivered"], line["refunded_delivered"],
                       line["refunded_undelivered"], [dict(c) for c in line["codes"]])
        state.lines[(line["order_id"], line["line_id"])] = ls
        state.delivered_codes.update(c["code"] for c in ls.codes)
    for refund in saved.get("refunds", []):
        state.refunds[refund["refund_id"]] = refund
        state.refund_index.put(refund["refund_id"],
                               micros(datetime.fromisoformat(refund["created_at"])))
    for entry in saved.get("deliveries", []):
        delivery_id = entry["delivery"]["delivery_id"]
        state.deliveries[delivery_id] = {"delivery": entry["delivery"], "key": entry["key"]}
        state.idempotency[entry["key"]] = delivery_id
    state.counters.update(saved.get("counters", {}))
    state.oversold = dict(saved.get("oversold", {}))
