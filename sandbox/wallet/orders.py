"""Orders, code deliveries and refunds of the wallet sites.

Orders are made by the sites' customers (here: the sales generator, or ``create_order``);
vouchflow lists them, delivers codes for their lines and lists refunds. Every order change
creates a webhook event with the full order.

Per line the site counts what was delivered and what was refunded. A refund takes the line's
undelivered units first (``delivered: false``: vouchflow may put those codes back in stock)
and then delivered ones (``delivered: true``: those codes reached the customer); a refund that
needs both is recorded as two refunds, so each one's ``delivered`` is exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sandbox.core import json_response
from sandbox.wallet.base import WalletBase
from sandbox.wallet.common import (
    LineState,
    SiteState,
    WalletError,
    format_money,
    json_body,
    mask_code,
    micros,
    page_limit,
    parse_since,
    parse_time,
)

__all__ = ["ORDER_STATUSES", "PAYMENT_METHODS", "PROVIDERS", "OrdersMixin", "provider_for"]

ORDER_STATUSES = ("confirmed", "cancelled", "refunded", "partially_refunded")
PAYMENT_METHODS = ("card", "paypal", "bank_transfer", "cod", "wallet_balance", "split")
#: the provider each payment method goes through on the sandbox sites
PROVIDERS = {
    "card": "adyen", "paypal": "paypal", "bank_transfer": "bank", "cod": "courier",
    "wallet_balance": "wallet", "split": "stripe",
}  # fmt: skip
CODE_FIELDS = ("code", "pin", "expires_at")
_MAX_KEY = 255
_MAX_CODE = 256


def provider_for(method: str) -> str:
    return PROVIDERS[method]


class OrdersMixin(WalletBase):
    # ---- helpers (tests and the demo) ---------------------------------------------------------

    def orders(self, code: str) -> list[dict[str, Any]]:
        """The site's orders in list order (updated_at, order_id)."""
        with self.lock:
            state = self._site(code)
            return [_copy_order(state.orders[k]) for _, k in state.order_index.entries]

    def get_order(self, code: str, order_id: str) -> dict[str, Any] | None:
        with self.lock:
            order = self._site(code).orders.get(order_id)
            return None if order is None else _copy_order(order)

    def refunds(self, code: str) -> list[dict[str, Any]]:
        with self.lock:
            state = self._site(code)
            return [dict(state.refunds[k]) for _, k in state.refund_index.entries]

    def deliveries(self, code: str) -> list[dict[str, Any]]:
        """The Deliveries as answered (codes masked), oldest first."""
        with self.lock:
            return [_copy_delivery(d["delivery"]) for d in self._site(code).deliveries.values()]

    def delivered_codes(self, code: str, order_id: str, line_id: str) -> list[dict[str, Any]]:
        """The codes a line received, in full, in the order received (for tests only)."""
        with self.lock:
            line = self._site(code).lines.get((order_id, line_id))
            return [] if line is None else [dict(c) for c in line.codes]

    def line_state(self, code: str, order_id: str, line_id: str) -> dict[str, Any] | None:
        """``quantity, delivered, refunded_delivered, refunded_undelivered, undelivered``."""
        with self.lock:
            line = self._site(code).lines.get((order_id, line_id))
            if line is None:
                return None
            out = line.as_dict()
            del out["codes"]
            out["undelivered"] = line.undelivered
            return out

    def order_count(self, code: str | None = None) -> int:
        with self.lock:
            if code is not None:
                return len(self._site(code).orders)
            return sum(len(s.orders) for s in self.sites.values())

    def create_order(
        self,
        code: str,
        lines: Sequence[tuple[str, int]],
        *,
        method: str = "card",
        provider: str | None = None,
        provider_reference: str | None = None,
        customer_ref: str = "cust-000001",
        at: datetime | None = None,
    ) -> dict[str, Any]:
        """A customer buys ``[(sku, quantity), ...]`` (at the product's face value); ignores
        the shown availability. Creates ``order.confirmed``."""
        if method not in PAYMENT_METHODS:
            raise ValueError(f"method must be one of {', '.join(PAYMENT_METHODS)}")
        with self.lock:
            state = self._site(code)
            for sku, quantity in lines:
                if sku not in state.products:
                    raise ValueError(f"no product {sku!r} on site {code}")
                if not isinstance(quantity, int) or quantity < 1:
                    raise ValueError("quantities must be integers >= 1")
            stamp = micros(at) if at is not None else self._now()
            ref = provider_reference or f"ref-{code}-{state.counters.get('order', 0) + 1:08d}"
            order = self._new_order(
                state, stamp, list(lines), customer_ref,
                {"method": method, "provider": provider or provider_for(method),
                 "provider_reference": ref},
            )  # fmt: skip
            return _copy_order(order)

    def refund(
        self, code: str, order_id: str, line_id: str, quantity: int, *, at: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The customer is refunded ``quantity`` units of a line: one Refund, or two when the
        units are partly undelivered and partly delivered (undelivered ones go first).
        Updates the order (``refunded``/``partially_refunded``); creates ``refund.created`` and
        ``order.updated``. ``ValueError`` for an unknown order/line or too many units."""
        with self.lock:
            state = self._site(code)
            stamp = micros(at) if at is not None else self._now()
            return [dict(r) for r in self._refund(state, order_id, line_id, quantity, stamp)]

    def cancel(self, code: str, order_id: str, *, at: datetime | None = None) -> dict[str, Any]:
        """The site cancels an order nothing of which was delivered; ``order.updated``."""
        with self.lock:
            state = self._site(code)
            stamp = micros(at) if at is not None else self._now()
            return _copy_order(self._cancel(state, order_id, stamp))

    # ---- internals shared with the generator --------------------------------------------------

    def _new_order(
        self,
        state: SiteState,
        stamp: int,
        lines: Sequence[tuple[str, int]],
        customer_ref: str,
        payment: Mapping[str, str],
    ) -> dict[str, Any]:
        """Create a confirmed order at ``stamp`` (the caller holds the lock and checked the
        SKUs); unit prices are the products' face values."""
        code, currency = state.site.code, state.site.currency
        order_id = f"{code}-{state.next_id('order'):08d}"
        at = self._format(state, stamp)
        total = Decimal(0)
        out_lines = []
        for n, (sku, quantity) in enumerate(lines, start=1):
            price = Decimal(state.products[sku]["face_value"]["amount"])
            total += price * quantity
            line_id = f"L{n}"
            out_lines.append({"line_id": line_id, "sku": sku, "quantity": quantity,
                              "unit_price": self._money(price, currency)})  # fmt: skip
            state.lines[(order_id, line_id)] = LineState(quantity)
        order = {
            "order_id": order_id, "site": code, "status": "confirmed",
            "created_at": at, "updated_at": at, "currency": currency,
            "customer_ref": customer_ref, "lines": out_lines,
            "payment": {**payment, "amount": self._money(total, currency)},
        }  # fmt: skip
        state.orders[order_id] = order
        state.order_index.put(order_id, stamp)
        self._emit(state, "order.confirmed", order, stamp)
        return order

    def _refund(
        self, state: SiteState, order_id: str, line_id: str, quantity: int, stamp: int
    ) -> list[dict[str, Any]]:
        order = state.orders.get(order_id)
        if order is None:
            raise ValueError(f"no order {order_id!r} on site {state.site.code}")
        line = state.lines.get((order_id, line_id))
        if line is None:
            raise ValueError(f"no line {line_id!r} in order {order_id}")
        if order["status"] == "cancelled":
            raise ValueError(f"order {order_id} is cancelled")
        if not isinstance(quantity, int) or not 1 <= quantity <= line.refundable:
            raise ValueError(
                f"line {line_id} of {order_id} has {line.refundable} refundable units, "
                f"not {quantity}"
            )
        stamp = max(stamp, state.order_index.stamps[order_id] + 1)
        price = Decimal(next(x for x in order["lines"] if x["line_id"] == line_id)
                        ["unit_price"]["amount"])  # fmt: skip
        undelivered = min(quantity, line.undelivered)
        parts = [(undelivered, False), (quantity - undelivered, True)]
        created = []
        for units, delivered in parts:
            if units == 0:
                continue
            if delivered:
                line.refunded_delivered += units
            else:
                line.refunded_undelivered += units
            refund_id = f"{state.site.code}-R{state.next_id('refund'):08d}"
            refund = {
                "refund_id": refund_id, "order_id": order_id, "line_id": line_id,
                "quantity": units, "amount": self._money(price * units, order["currency"]),
                "delivered": delivered, "created_at": self._format(state, stamp),
            }  # fmt: skip
            state.refunds[refund_id] = refund
            state.refund_index.put(refund_id, stamp)
            created.append(refund)
        full = all(
            state.lines[(order_id, x["line_id"])].refundable == 0 for x in order["lines"]
        )
        new = {**order, "status": "refunded" if full else "partially_refunded",
               "updated_at": self._format(state, stamp)}  # fmt: skip
        state.orders[order_id] = new
        state.order_index.put(order_id, stamp)
        for refund in created:
            self._emit(state, "refund.created", refund, stamp)
        self._emit(state, "order.updated", new, stamp)
        return created

    def _cancel(self, state: SiteState, order_id: str, stamp: int) -> dict[str, Any]:
        order = state.orders.get(order_id)
        if order is None:
            raise ValueError(f"no order {order_id!r} on site {state.site.code}")
        if order["status"] != "confirmed":
            raise ValueError(f"order {order_id} is {order['status']}, not confirmed")
        if any(state.lines[(order_id, x["line_id"])].delivered for x in order["lines"]):
            raise ValueError(f"order {order_id} has delivered codes: refund it instead")
        stamp = max(stamp, state.order_index.stamps[order_id] + 1)
        new = {**order, "status": "cancelled", "updated_at": self._format(state, stamp)}
        state.orders[order_id] = new
        state.order_index.put(order_id, stamp)
        self._emit(state, "order.updated", new, stamp)
        return new

    def _money(self, amount: Decimal, currency: str) -> dict[str, str]:
        return format_money(amount, currency, self.minor_units)

    # ---- GET /orders, GET /orders/{id}, GET /refunds ------------------------------------------

    async def _list_orders(self, request: Request) -> Response:
        try:
            state = self._site(request.path_params["site"])
            params = request.query_params
            limit = page_limit(params.get("limit"))
            since = parse_since(params["updated_since"]) if params.get("updated_since") else None
            status = params.get("status") or None
            if status is not None and status not in ORDER_STATUSES:
                raise WalletError(400, "bad_request",
                                  f"status must be one of {', '.join(ORDER_STATUSES)}")
            with self.lock:
                keep = None
                if status is not None:
                    orders = state.orders

                    def keep(order_id: str) -> bool:
                        return orders[order_id]["status"] == status

                keys, next_cursor = state.order_index.page(
                    since=since, cursor=params.get("cursor"), limit=limit, keep=keep
                )
                items = [state.orders[k] for k in keys]
                return json_response({"items": items, "next_cursor": next_cursor})
        except WalletError as exc:
            return self._error(exc)

    async def _get_order(self, request: Request) -> Response:
        try:
            state = self._site(request.path_params["site"])
            order_id = request.path_params["order_id"]
            with self.lock:
                order = state.orders.get(order_id)
                if order is None:
                    raise WalletError(404, "not_found", f"no order {order_id!r}")
                return json_response(order)
        except WalletError as exc:
            return self._error(exc)

    async def _list_refunds(self, request: Request) -> Response:
        try:
            state = self._site(request.path_params["site"])
            params = request.query_params
            limit = page_limit(params.get("limit"))
            since = parse_since(params["updated_since"]) if params.get("updated_since") else None
            with self.lock:
                keys, next_cursor = state.refund_index.page(
                    since=since, cursor=params.get("cursor"), limit=limit
                )
                items = [state.refunds[k] for k in keys]
                return json_response({"items": items, "next_cursor": next_cursor})
        except WalletError as exc:
            return self._error(exc)

    # ---- POST /orders/{id}/deliveries ---------------------------------------------------------

    async def _post_delivery(self, request: Request) -> Response:
        try:
            state = self._site(request.path_params["site"])
            order_id = request.path_params["order_id"]
            key = request.headers.get("idempotency-key", "").strip()
            if not key:
                raise WalletError(400, "bad_request", "the Idempotency-Key header is required")
            if len(key) > _MAX_KEY:
                raise WalletError(400, "bad_request",
                                  f"Idempotency-Key is longer than {_MAX_KEY} characters")
            body = await json_body(request)
            with self.lock:
                first = state.idempotency.get(key)
                if first is not None:
                    return self._repeat(state, first, order_id, body)
                order = state.orders.get(order_id)
                if order is None:
                    raise WalletError(404, "not_found", f"no order {order_id!r}")
                line_id, codes = _check_delivery(body)
                line = state.lines.get((order_id, line_id))
                if line is None:
                    raise WalletError(404, "not_found",
                                      f"no line {line_id!r} in order {order_id}")
                if order["status"] == "cancelled":
                    raise WalletError(409, "conflict", f"order {order_id} is cancelled")
                if line.undelivered == 0:
                    why = "it is fully delivered" if line.delivered else "it was refunded"
                    raise WalletError(409, "conflict", f"line {line_id} of order {order_id} "
                                      f"has nothing left to deliver: {why}")
                if len(codes) > line.undelivered:
                    raise WalletError(
                        422, "invalid",
                        f"{len(codes)} codes for line {line_id}, which has {line.undelivered} "
                        "undelivered units",
                        [{"field": "codes", "message": f"at most {line.undelivered} codes"}],
                    )  # fmt: skip
                _check_unique(state, codes)
                delivery = self._deliver(state, key, order_id, line_id, line, codes)
                return json_response(delivery, status=201)
        except WalletError as exc:
            return self._error(exc)

    def _repeat(self, state: SiteState, delivery_id: str, order_id: str, body: Any) -> Response:
        """The same Idempotency-Key again: the first Delivery, nothing applied. A key used for
        another order or line is a client bug: 409."""
        delivery = state.deliveries[delivery_id]["delivery"]
        line_id = body.get("line_id") if isinstance(body, dict) else None
        if delivery["order_id"] != order_id or (
            line_id is not None and line_id != delivery["line_id"]
        ):
            raise WalletError(
                409, "conflict",
                f"this Idempotency-Key was used for order {delivery['order_id']} line "
                f"{delivery['line_id']}",
            )  # fmt: skip
        return json_response(delivery, status=200)

    def _deliver(
        self, state: SiteState, key: str, order_id: str, line_id: str, line: LineState,
        codes: list[dict[str, Any]],
    ) -> dict[str, Any]:  # fmt: skip
        delivery_id = f"{state.site.code}-D{state.next_id('delivery'):08d}"
        stamp = self._now()
        masked = []
        for c in codes:
            shown: dict[str, Any] = {"code": mask_code(c["code"])}
            if c.get("pin") is not None:
                shown["pin"] = "****"
            if c.get("expires_at") is not None:
                shown["expires_at"] = c["expires_at"]
            masked.append(shown)
            line.codes.append({"code": c["code"], "pin": c.get("pin"),
                               "expires_at": c.get("expires_at"), "delivery_id": delivery_id})
            state.delivered_codes.add(c["code"])
        line.delivered += len(codes)
        delivery = {"delivery_id": delivery_id, "order_id": order_id, "line_id": line_id,
                    "codes": masked, "delivered_at": self._format(state, stamp)}  # fmt: skip
        state.deliveries[delivery_id] = {"delivery": delivery, "key": key}
        state.idempotency[key] = delivery_id
        self.effects.record(
            "delivery.created", f"{state.site.code}:{order_id}:{line_id}", site=state.site.code,
            delivery_id=delivery_id, count=len(codes),
        )  # fmt: skip
        return delivery


def _check_delivery(body: Any) -> tuple[str, list[dict[str, Any]]]:
    if not isinstance(body, dict):
        raise WalletError(422, "invalid", 'body must be {"line_id", "codes": [...]}')
    details: list[dict[str, Any]] = []
    for name in sorted(set(body) - {"line_id", "codes"}):
        details.append({"field": name, "message": "unknown field"})
    line_id = body.get("line_id")
    if not isinstance(line_id, str) or not line_id:
        details.append({"field": "line_id", "message": "must be a non-empty string"})
    codes = body.get("codes")
    if not isinstance(codes, list) or not codes:
        details.append({"field": "codes", "message": "must be a non-empty list"})
        codes = []
    for i, c in enumerate(codes):
        where = f"codes[{i}]"
        if not isinstance(c, dict):
            details.append({"field": where, "message": "must be a JSON object"})
            continue
        for name in sorted(set(c) - set(CODE_FIELDS)):
            details.append({"field": f"{where}.{name}", "message": "unknown field"})
        value = c.get("code")
        if not isinstance(value, str) or not value.strip() or len(value) > _MAX_CODE:
            details.append({"field": f"{where}.code",
                            "message": f"must be a non-empty string of at most {_MAX_CODE}"})
        pin = c.get("pin")
        if pin is not None and (not isinstance(pin, str) or len(pin) > _MAX_CODE):
            details.append({"field": f"{where}.pin", "message": "must be a string or null"})
        if c.get("expires_at") is not None:
            try:
                parse_time(c["expires_at"], "expires_at")
            except ValueError as exc:
                details.append({"field": f"{where}.expires_at", "message": str(exc)})
    if details:
        raise WalletError(422, "invalid", "invalid delivery", details)
    assert isinstance(line_id, str)
    return line_id, codes


def _check_unique(state: SiteState, codes: list[dict[str, Any]]) -> None:
    """A code reaches one customer once: repeated in the request, or delivered before on
    this site, is refused (named by position and masked, never in full)."""
    details = []
    seen: dict[str, int] = {}
    for i, c in enumerate(codes):
        value = c["code"]
        if value in seen:
            details.append({"field": f"codes[{i}].code",
                            "message": f"{mask_code(value)} repeats codes[{seen[value]}]"})
        elif value in state.delivered_codes:
            details.append({"field": f"codes[{i}].code",
                            "message": f"{mask_code(value)} was already delivered on this site"})
        seen.setdefault(value, i)
    if details:
        raise WalletError(422, "invalid", "codes already used", details)


def _copy_order(order: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(order)
    out["lines"] = [{**x, "unit_price": dict(x["unit_price"])} for x in order["lines"]]
    out["payment"] = {**order["payment"], "amount": dict(order["payment"]["amount"])}
    return out


def _copy_delivery(delivery: Mapping[str, Any]) -> dict[str, Any]:
    return {**delivery, "codes": [dict(c) for c in delivery["codes"]]}
