"""The vouchflow HTTP API (FastAPI). ``vouchflow portal serve`` runs it with uvicorn.

Today: the inbound endpoint for the wallet sites' webhooks and the operator API
(``portal.operator``: subscriptions and events by cursor). The vendor portal joins this app.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from canonical import now_utc
from connectors.wallet import WalletSiteSettings, load_sites
from portal.operator import operator_router
from portal.webhooks import WebhookRefused, verify
from state.db import get_engine, session_scope
from state.inbox import store_inbound

log = logging.getLogger("vouchflow.portal")

MAX_WEBHOOK_BYTES = 1024 * 1024


def create_app(
    *,
    engine: Callable[[], Engine] = get_engine,
    sites: Callable[[], dict[str, WalletSiteSettings]] = load_sites,
) -> FastAPI:
    app = FastAPI(title="vouchflow", version="0.1.0",
                  description="Inbound webhooks, vendor portal and operator API of vouchflow.")
    site_settings = sites()

    app.include_router(operator_router(engine))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/wallet/{site}/events", status_code=202)
    async def wallet_event(site: str, request: Request) -> JSONResponse:
        settings = site_settings.get(site)
        if settings is None:
            return _error(404, "not_found", f"unknown site {site!r}")
        body = await _limited_body(request)
        if body is None:
            return _error(413, "too_large", f"webhook bodies are limited to {MAX_WEBHOOK_BYTES} "
                          "bytes")
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            event = verify(site, settings.webhook_secret.get_secret_value(), headers, body)
        except WebhookRefused as refused:
            log.warning("webhook from %s refused: %s", site, refused)
            return _error(refused.status, "unauthorized" if refused.status == 401 else
                          "invalid", str(refused))
        try:
            created = datetime.fromisoformat(event.created_at.replace("Z", "+00:00"))
        except ValueError:
            return _error(400, "invalid", "created_at is not an RFC 3339 time")
        if created.tzinfo is None:
            return _error(400, "invalid", "created_at has no offset")
        with session_scope(engine()) as session:
            fresh = store_inbound(session, event_id=event.event_id, site=site, type=event.type,
                                  created_at=created, received_at=now_utc(),
                                  payload=event.payload)
        return JSONResponse({"id": event.event_id, "stored": fresh, "duplicate": not fresh},
                            status_code=202 if fresh else 200)

    from portal.vendor import vendor_router  # the vendor portal: uploads and statements

    app.include_router(vendor_router(engine))
    return app


async def _limited_body(request: Request) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_WEBHOOK_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
