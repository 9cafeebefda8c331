"""Wallet site client (CONTRACTS.md "Wallet site API"): one client per site."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import httpx

from connectors.errors import (
    AuthError,
    ConfigurationError,
    ConflictError,
    InvalidRecordError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
)
from connectors.http import DEFAULT_RETRY, ErrorTable, HttpConnector, RetryPolicy, paginate
from connectors.limits import ConcurrencyLimiter, shared_limiter
from connectors.paging import CursorPaginator
from connectors.wallet.config import WalletSiteSettings

API = "/api/v1"
MAX_BATCH = 500

WALLET_ERRORS = ErrorTable(by_code={
    "unauthorized": AuthError,
    "forbidden": AuthError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "invalid": InvalidRecordError,
    "rate_limited": RateLimitedError,
})


class WalletClient(HttpConnector):
    system = "wallet"
    error_table = WALLET_ERRORS

    def __init__(
        self,
        site: WalletSiteSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        limiter: ConcurrencyLimiter | None = None,
    ) -> None:
        if not site.api_key.get_secret_value():
            raise ConfigurationError(
                f"no API key for site {site.code}: set VOUCHFLOW_WALLET_{site.code.upper()}_API_KEY",
                system=f"wallet:{site.code}",
            )
        self.site = site
        self.system = f"wallet:{site.code}"
        super().__init__(
            site.base_url + API,
            headers={"X-Api-Key": site.api_key.get_secret_value()},
            retry=retry,
            limiter=limiter or shared_limiter(f"wallet:{site.code}", site.concurrency),
            transport=transport,
            max_connections=site.concurrency * 2,
        )

    def parse_error(self, response: httpx.Response, body: Any) -> tuple[str | None, str, list[Any]]:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return None, response.reason_phrase or "error", []
        details = error.get("details") or []
        return error.get("code"), str(error.get("message") or error.get("code")), list(details)

    async def upsert_products(self, products: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Bulk upsert (by sku) of at most 500 products; one result per product, in order.

        The site applies all or nothing: an invalid item fails the whole request with an
        ``InvalidRecordError`` whose ``details`` name the bad items by index.
        """
        if len(products) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} products per request, got {len(products)}")
        body = await self.request_json("PUT", "/products:batch", json_body={"items": list(products)})
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list) or len(results) != len(products):
            raise MalformedResponseError(
                f"products:batch answered {len(results) if isinstance(results, list) else 'no'} "
                f"results for {len(products)} products", system=self.system,
            )
        return results

    async def list_products(
        self, *, updated_since: datetime | None = None, page_size: int = 500
    ) -> AsyncIterator[list[dict[str, Any]]]:
        params = {"updated_since": updated_since.isoformat()} if updated_since else None
        async for page in paginate(self, "GET", "/products", CursorPaginator(page_size),
                                   params=params):
            yield page["items"]

    async def set_product_status(self, sku: str, status: str, reason: str) -> dict[str, Any]:
        return await self.request_json("PATCH", f"/products/{sku}",
                                       json_body={"status": status, "reason": reason})
