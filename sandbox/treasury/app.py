"""Treasury (CONTRACTS.md): ``POST /v1/remittance-batches`` and
``GET /v1/remittance-batches/{treasury_ref}``.

Written from the contract, not from the client: every request needs
``Authorization: Bearer {token}``; a POST needs ``X-Signature: t={unix},v1={hex}`` where
``hex`` is HMAC-SHA256 of ``"{t}.{raw body}"`` with the shared secret (refused when it does
not match or ``t`` is more than 300 s away) and ``Idempotency-Key: remit-{batch}-v{n}``.
The first request of a key books the batch (201 ``{treasury_ref, received_at}``, one
``remittance.received`` effect); the same key with the same body answers 200 with the first
answer and books nothing; the same key with another body is 409. A body whose totals do not
add up (gross = sum of the lines, net = gross - fees, count = lines) is 422.

``respond_delay_s`` holds the answer back after the batch is booked, so a test can kill the
client between the request leaving and its answer arriving.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox.core import Sandbox, json_response

DEFAULT_TOKEN = "treasury-sandbox-token"
DEFAULT_SECRET = "treasury-sandbox-signing-secret"
KEY = re.compile(r"^remit-[A-Za-z0-9_-]+-v[0-9]+$")
WINDOW_S = 300


class TreasurySandbox(Sandbox):
    name = "treasury"

    def __init__(self, *, token: str = DEFAULT_TOKEN, secret: str = DEFAULT_SECRET,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.token = token
        self.secret = secret
        self.respond_delay_s = 0.0
        self.by_key: dict[str, dict[str, Any]] = {}
        """Idempotency key -> {digest, answer, batch}."""
        self.batches: dict[str, dict[str, Any]] = {}
        """treasury_ref -> {status, batch, key}."""

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/remittance-batches", self._post, methods=["POST"]),
            Route("/v1/remittance-batches/{ref}", self._get, methods=["GET"]),
        ]

    async def authenticate(self, request: Request) -> Response | None:
        if request.headers.get("authorization", "") != f"Bearer {self.token}":
            return self.error_response(401, "unauthorized", "missing or wrong bearer token")
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"by_key": self.by_key, "batches": self.batches}

    def restore(self, data: dict[str, Any]) -> None:
        self.by_key = dict(data.get("by_key") or {})
        self.batches = dict(data.get("batches") or {})

    def reset_data(self) -> None:
        self.by_key, self.batches = {}, {}

    # protocol ---------------------------------------------------------------------------------
    def _signature_problem(self, header: str, body: bytes) -> str | None:
        parts = dict(p.strip().partition("=")[::2] for p in header.split(",") if "=" in p)
        try:
            stamp = int(parts.get("t", ""))
        except ValueError:
            return "X-Signature without a numeric t="
        if abs(time.time() - stamp) > WINDOW_S:
            return "X-Signature timestamp outside the 5-minute window"
        expected = hmac.new(self.secret.encode(), f"{stamp}.".encode() + body,
                            hashlib.sha256).hexdigest()
        given = [v for k, v in (p.strip().partition("=")[::2] for p in header.split(","))
                 if k == "v1"]
        if not any(hmac.compare_digest(expected, g) for g in given):
            return "X-Signature does not match the body"
        return None

    @staticmethod
    def _totals_problem(batch: Any) -> str | None:
        try:
            lines = batch["lines"]
            currency = batch["currency"]
            money = [batch["gross"], batch["fees"], batch["net"]] + \
                [m for line in lines for m in (line["amount"], line["fee"])]
            if any(m["currency"] != currency for m in money):
                return "every amount must be in the batch's currency"
            gross = sum((Decimal(line["amount"]["amount"]) for line in lines), Decimal(0))
            fees = sum((Decimal(line["fee"]["amount"]) for line in lines), Decimal(0))
            if Decimal(batch["gross"]["amount"]) != gross:
                return f"gross {batch['gross']['amount']} is not the sum of the lines ({gross})"
            if Decimal(batch["fees"]["amount"]) != fees:
                return f"fees {batch['fees']['amount']} are not the sum of the lines ({fees})"
            if Decimal(batch["net"]["amount"]) != gross - fees:
                return "net is not gross - fees"
            if batch["count"] != len(lines):
                return "count is not the number of lines"
            for name in ("batch_id", "version", "business_date", "site", "payment_method"):
                if batch.get(name) in (None, ""):
                    return f"{name} is required"
        except (KeyError, TypeError, InvalidOperation, AttributeError) as exc:
            return f"not a RemittanceBatch ({type(exc).__name__}: {exc})"
        return None

    async def _post(self, request: Request) -> Response:
        body = await request.body()
        problem = self._signature_problem(request.headers.get("x-signature", ""), body)
        if problem:
            return self.error_response(401, "unauthorized", problem)
        key = request.headers.get("idempotency-key", "")
        if not KEY.match(key):
            return self.error_response(400, "invalid",
                                       "Idempotency-Key must be remit-{batch}-v{n}")
        digest = hashlib.sha256(body).hexdigest()
        with self.lock:
            seen = self.by_key.get(key)
            if seen is not None:
                if seen["digest"] != digest:
                    return self.error_response(409, "conflict", f"{key} was used with another "
                                               "body")
                self.effects.record("remittance.repeated", key)
                return json_response(seen["answer"], status=200)
            try:
                batch = json.loads(body)
            except ValueError:
                return self.error_response(400, "invalid", "the body is not JSON")
            problem = self._totals_problem(batch)
            if problem:
                return self.error_response(422, "invalid", problem)
            if key != f"remit-{batch['batch_id']}-v{batch['version']}":
                return self.error_response(422, "invalid", "Idempotency-Key does not name the "
                                           "batch and version of the body")
            ref = f"TR-{len(self.batches) + 1:08d}"
            answer = {"treasury_ref": ref, "received_at": self.clock().isoformat()}
            self.by_key[key] = {"digest": digest, "answer": answer}
            self.batches[ref] = {"status": "received", "key": key, "batch": batch}
            self.effects.record("remittance.received", key, treasury_ref=ref,
                                batch_id=batch["batch_id"], version=batch["version"],
                                net=batch["net"]["amount"])
        if self.respond_delay_s:
            await asyncio.sleep(self.respond_delay_s)
        return json_response(answer, status=201)

    async def _get(self, request: Request) -> Response:
        ref = request.path_params["ref"]
        found = self.batches.get(ref)
        if found is None:
            return self.error_response(404, "not_found", f"no remittance batch {ref}")
        return json_response({"status": found["status"]})
