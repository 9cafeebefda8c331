"""A Stripe-style payments API (DESIGN.md section 5): balance transactions and payouts.

Written from the description, not from the client: ``GET /v1/balance_transactions`` and
``GET /v1/payouts`` list newest first with ``limit`` (1..100), ``starting_after`` (the id of the
last object of the previous page) and ``has_more``; ``?payout=po_...`` lists the transactions a
payout paid out; ``GET /v1/payouts/{id}`` reads one. Amounts are integers in minor units.
Requests need ``Authorization: Bearer {key}``. Errors use Stripe's envelope
``{"error": {"type", "code"?, "message", "param"?}}``.

``seed()`` makes a deterministic ledger: charges with fees, some refunds and a dispute, and a
payout every ``per_payout`` transactions that pays out their net.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox.core import Sandbox, json_response

DEFAULT_API_KEY = "sk_test_sandbox"
MAX_LIMIT = 100


class StripeSandbox(Sandbox):
    name = "stripe"

    def __init__(self, *, api_key: str = DEFAULT_API_KEY, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.api_key = api_key
        self.transactions: list[dict[str, Any]] = []
        """Newest first, as the API lists them."""
        self.payouts: list[dict[str, Any]] = []
        self.payout_of: dict[str, str] = {}
        """balance transaction id -> the payout that paid it out."""

    # data -------------------------------------------------------------------------------------
    def seed(self, charges: int = 50, *, currency: str = "eur", per_payout: int = 20,
             seed: int = 0, start: datetime | None = None) -> None:
        rng = random.Random(seed)
        when = start or datetime(2026, 11, 1, tzinfo=UTC)
        ledger: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = []
        number = 0

        def add(kind: str, category: str, amount: int, fee: int, source: str) -> dict[str, Any]:
            nonlocal number, when
            number += 1
            when += timedelta(minutes=rng.randint(1, 90))
            txn = {
                "id": f"txn_{number:06d}", "object": "balance_transaction", "amount": amount,
                "fee": fee, "net": amount - fee, "currency": currency, "type": kind,
                "reporting_category": category, "source": source,
                "created": int(when.timestamp()),
                "available_on": int((when + timedelta(days=2)).timestamp()),
                "status": "available", "description": None,
            }
            ledger.append(txn)
            pending.append(txn)
            return txn

        for i in range(1, charges + 1):
            amount = rng.randint(500, 20_000)
            fee = amount * 29 // 1000 + 30
            add("charge", "charge", amount, fee, f"ch_{i:06d}")
            if i % 10 == 0:
                add("refund", "refund", -(amount // 2), 0, f"re_{i:06d}")
            if i % 25 == 0:
                add("adjustment", "dispute", -amount, 1500, f"dp_{i:06d}")
            if len(pending) >= per_payout:
                self._pay_out(pending, add, currency, when)
                pending.clear()
        self.transactions = list(reversed(ledger))

    def _pay_out(self, pending: list[dict[str, Any]], add: Any, currency: str,
                 when: datetime) -> None:
        total = sum(t["net"] for t in pending)
        payout_id = f"po_{len(self.payouts) + 1:06d}"
        paid = list(pending)
        txn = add("payout", "payout", -total, 0, payout_id)
        for t in paid:
            self.payout_of[t["id"]] = payout_id
        self.payout_of[txn["id"]] = payout_id
        self.payouts.insert(0, {
            "id": payout_id, "object": "payout", "amount": total, "currency": currency,
            "status": "paid", "created": txn["created"],
            "arrival_date": int((when + timedelta(days=1)).timestamp()),
            "destination": "ba_sandbox", "description": "STRIPE PAYOUT",
            "balance_transaction": txn["id"], "method": "standard",
        })

    def snapshot(self) -> dict[str, Any]:
        return {"transactions": self.transactions, "payouts": self.payouts,
                "payout_of": self.payout_of}

    def restore(self, data: dict[str, Any]) -> None:
        self.transactions = list(data.get("transactions") or [])
        self.payouts = list(data.get("payouts") or [])
        self.payout_of = dict(data.get("payout_of") or {})

    def reset_data(self) -> None:
        self.transactions, self.payouts, self.payout_of = [], [], {}

    # protocol ---------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/balance_transactions", self._list_transactions, methods=["GET"]),
            Route("/v1/payouts", self._list_payouts, methods=["GET"]),
            Route("/v1/payouts/{payout_id}", self._get_payout, methods=["GET"]),
        ]

    async def authenticate(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        if header != f"Bearer {self.api_key}":
            return self.stripe_error(401, "authentication_error", "Invalid API Key provided.")
        return None

    def error_response(self, status: int, code: str, message: str, *,
                       details: list[Any] | None = None,
                       headers: dict[str, str] | None = None) -> Response:
        kind = {429: "rate_limit_error", 401: "authentication_error"}.get(
            status, "api_error" if status >= 500 else "invalid_request_error")
        return json_response({"error": {"type": kind, "code": code, "message": message}},
                             status=status, headers=headers)

    def stripe_error(self, status: int, kind: str, message: str, *, code: str | None = None,
                     param: str | None = None) -> Response:
        error: dict[str, Any] = {"type": kind, "message": message}
        if code:
            error["code"] = code
        if param:
            error["param"] = param
        return json_response({"error": error}, status=status)

    def _page(self, request: Request, items: list[dict[str, Any]], url: str) -> Response:
        query = request.query_params
        try:
            limit = int(query.get("limit", "10"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            return self.stripe_error(400, "invalid_request_error",
                                     f"limit must be between 1 and {MAX_LIMIT}",
                                     code="parameter_invalid_integer", param="limit")
        for name, test in (("created[gte]", lambda v, t: t >= v),
                           ("created[lt]", lambda v, t: t < v)):
            if name in query:
                try:
                    bound = int(query[name])
                except ValueError:
                    return self.stripe_error(400, "invalid_request_error", f"bad {name}",
                                             code="parameter_invalid_integer", param=name)
                items = [i for i in items if test(bound, i["created"])]
        if "type" in query:
            items = [i for i in items if i.get("type") == query["type"]]
        if "status" in query:
            items = [i for i in items if i.get("status") == query["status"]]
        start = 0
        after = query.get("starting_after")
        if after:
            ids = [i["id"] for i in items]
            if after not in ids:
                return self.stripe_error(400, "invalid_request_error",
                                         f"No such object: '{after}'",
                                         code="resource_missing", param="starting_after")
            start = ids.index(after) + 1
        page = items[start:start + limit]
        self.effects.record("list", url, count=len(page))
        return json_response({"object": "list", "url": url, "data": page,
                              "has_more": start + limit < len(items)})

    async def _list_transactions(self, request: Request) -> Response:
        items = self.transactions
        payout = request.query_params.get("payout")
        if payout is not None:
            if not any(p["id"] == payout for p in self.payouts):
                return self.stripe_error(400, "invalid_request_error",
                                         f"No such payout: '{payout}'",
                                         code="resource_missing", param="payout")
            items = [t for t in items if self.payout_of.get(t["id"]) == payout]
        return self._page(request, items, "/v1/balance_transactions")

    async def _list_payouts(self, request: Request) -> Response:
        return self._page(request, self.payouts, "/v1/payouts")

    async def _get_payout(self, request: Request) -> Response:
        payout_id = request.path_params["payout_id"]
        for payout in self.payouts:
            if payout["id"] == payout_id:
                return json_response(payout)
        return self.stripe_error(404, "invalid_request_error",
                                 f"No such payout: '{payout_id}'", code="resource_missing",
                                 param="id")
