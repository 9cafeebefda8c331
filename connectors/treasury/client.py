"""The treasury client: ``POST /v1/remittance-batches`` with a bearer token, an HMAC-signed
body (``X-Signature: t=..,v1=..``, the shared signing helper) and
``Idempotency-Key: remit-{batch}-v{n}``.

The body is handed in as the exact bytes to send: the outbox keeps the batch as it was when
it closed, and a repeat after a crash must be byte-identical, or treasury answers 409 instead
of the first answer. Each attempt is signed afresh (a new ``t``), the body never changes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from connectors.errors import ConfigurationError, MalformedResponseError
from connectors.http import DEFAULT_RETRY, HttpConnector, RetryPolicy
from connectors.idempotency import check_key
from connectors.redact import register_secret
from connectors.signing import sign

SIGNATURE_HEADER = "X-Signature"


class TreasurySettings(BaseSettings):
    """``VOUCHFLOW_TREASURY_URL`` (the base, without ``/v1``), ``VOUCHFLOW_TREASURY_TOKEN``,
    ``VOUCHFLOW_TREASURY_SECRET`` (the body signing secret)."""

    model_config = SettingsConfigDict(env_prefix="VOUCHFLOW_TREASURY_", extra="ignore")

    url: str = ""
    token: SecretStr = SecretStr("")
    secret: SecretStr = SecretStr("")

    def check(self) -> None:
        missing = [n for n, v in (("URL", self.url), ("TOKEN", self.token.get_secret_value()),
                                  ("SECRET", self.secret.get_secret_value())) if not v]
        if missing:
            raise ConfigurationError("treasury: set " + ", ".join(
                f"VOUCHFLOW_TREASURY_{m}" for m in missing), system="treasury")


class _BearerAuth(httpx.Auth):
    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        yield request


def canonical_body(batch: dict[str, Any]) -> bytes:
    """The bytes a batch is sent as: JSON with sorted keys, so the same batch is always the
    same body."""
    return json.dumps(batch, sort_keys=True, separators=(",", ":"), default=str).encode()


class TreasuryClient(HttpConnector):
    system = "treasury"

    def __init__(self, settings: TreasurySettings, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 retry: RetryPolicy = DEFAULT_RETRY) -> None:
        settings.check()
        register_secret(settings.token)
        register_secret(settings.secret)
        self._secret = settings.secret
        super().__init__(settings.url.rstrip("/") + "/v1", auth=_BearerAuth(settings.token),
                         retry=retry, transport=transport)

    def parse_error(self, response: httpx.Response, body: Any) -> tuple[str | None, str, list[Any]]:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return None, response.reason_phrase or "error", []
        return error.get("code"), str(error.get("message") or ""), list(error.get("details")
                                                                          or [])

    async def post_batch(self, key: str, body: bytes) -> dict[str, Any]:
        """Send one batch version; returns ``{treasury_ref, received_at}`` (the first answer
        when the key was sent before)."""
        check_key(key)

        async def attempt() -> httpx.Response:
            headers = {"Idempotency-Key": key, "Content-Type": "application/json",
                       SIGNATURE_HEADER: sign(self._secret.get_secret_value(),
                                              int(time.time()), body)}
            return await self._send_once("POST", "/remittance-batches", None, body, headers,
                                         None)

        response = await self.with_retries(attempt, what=f"POST remittance-batches {key}")
        answer = response.json()
        if not isinstance(answer, dict) or not answer.get("treasury_ref"):
            raise MalformedResponseError(f"{key}: answer without treasury_ref",
                                         system=self.system, response=response)
        return answer

    async def batch_status(self, treasury_ref: str) -> dict[str, Any]:
        return await self.request_json("GET", f"/remittance-batches/{treasury_ref}")


__all__ = ["TreasuryClient", "TreasurySettings", "canonical_body"]
