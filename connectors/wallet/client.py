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
from connectors.idempotency import check_key
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

    async def _bulk_put(self, path: str, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """PUT a batch (at most 500) and return one result per item, in order. The site
        applies all or nothing: an invalid item fails the whole request with an
        ``InvalidRecordError`` whose ``details`` name the bad items by index."""
        if len(items) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} items per request, got {len(items)}")
        body = await self.request_json("PUT", path, json_body={"items": list(items)})
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list) or len(results) != len(items):
            raise MalformedResponseError(
                f"{path} answered {len(results) if isinstance(results, list) else 'no'} "
                f"results for {len(items)} items", system=self.system,
            )
        return results

    async def upsert_products(self, products: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Bulk upsert of products by sku (outcomes created/updated/unchanged)."""
        return await self._bulk_put("/products:batch", products)

    async def put_inventory(self, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Set the availability the site shows per SKU (``{"sku", "available", "as_of"}``)."""
        return await self._bulk_put("/inventory:batch", items)

    async def put_batches(self, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Batch information per SKU (``{"sku", "batch_no", "available", "expires_at"?,
        "status"}``)."""
        return await self._bulk_put("/batches:batch", items)

    async def list_orders(
        self, *, updated_since: datetime | None = None, status: str | None = None,
        page_size: int = 500,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        params: dict[str, Any] = {}
        if updated_since is not None:
            params["updated_since"] = updated_since.isoformat()
        if status is not None:
            params["status"] = status
        async for page in paginate(self, "GET", "/orders", CursorPaginator(page_size),
                                   params=params or None):
            yield page["items"]

    async def get_order(self, order_id: str) -> dict[str, Any]:
        return await self.request_json("GET", f"/orders/{order_id}")

    async def list_refunds(
        self, *, updated_since: datetime | None = None, page_size: int = 500,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        params = {"updated_since": updated_since.isoformat()} if updated_since else None
        async for page in paginate(self, "GET", "/refunds", CursorPaginator(page_size),
                                   params=params):
            yield page["items"]

    async def deliver_codes(
        self, order_id: str, line_id: str, codes: Sequence[dict[str, Any]], *, key: str,
    ) -> dict[str, Any]:
        """Deliver a line's codes. ``key`` (e.g. ``delivery-sg1-O1-L1``) is the idempotency
        key: sending the same delivery again, after a lost answer, gets the first Delivery
        back instead of delivering twice."""
        return await self.request_json(
            "POST", f"/orders/{order_id}/deliveries",
            json_body={"line_id": line_id, "codes": list(codes)},
            headers={"Idempotency-Key": check_key(key)},
        )

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
