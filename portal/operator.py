"""The operator API: subscriptions of downstream systems, and their events by cursor.

Every route takes ``Authorization: Bearer <token>`` with the operator token from
``VOUCHFLOW_OPERATOR_TOKEN`` (compared in constant time, registered with the log redaction);
without a configured token the routes answer 503. A subscription's secret is returned once,
by the call that creates it, and never listed.

A subscriber that was down reads what it missed with ``GET
/operator/subscriptions/{name}/events?after={sequence}``: the events its subscription covers,
in order, each exactly as a webhook would carry it, with ``next_after`` to continue from.
Sequence numbers become visible in order (see ``state.events``), so reading on from the last
``sequence`` seen never skips one.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine

from connectors.redact import register_secret
from state.crypto import Keyring
from state.db import session_scope
from state.events import read_events
from state.subscriptions import (
    SubscriptionError,
    SubscriptionNotFound,
    SubscriptionStatus,
    create_subscription,
    get_subscription,
    remove_subscription,
    set_status,
    subscription_lags,
)

log = logging.getLogger("vouchflow.portal.operator")

MAX_PAGE = 1000


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOUCHFLOW_", extra="ignore")

    operator_token: SecretStr | None = Field(
        default=None, description="Bearer token of the operator API (unset: API disabled).")


class SubscriptionIn(BaseModel):
    name: str
    url: str
    event_types: list[str]
    secret: SecretStr | None = Field(
        default=None, description="At least 16 characters; generated when not given.")
    start: Literal["now", "beginning"] | int = "now"


def operator_router(
    engine: Callable[[], Engine],
    *,
    keyring: Callable[[], Keyring] = Keyring.load,
    settings: Callable[[], OperatorSettings] = OperatorSettings,
) -> APIRouter:
    token = settings().operator_token
    if token is not None:
        register_secret(token)
    keys: list[Keyring] = []

    def ring() -> Keyring:
        if not keys:
            keys.append(keyring())
        return keys[0]

    def operator(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None or not token.get_secret_value():
            raise HTTPException(503, "the operator API is disabled: set VOUCHFLOW_OPERATOR_TOKEN")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), token.get_secret_value().encode()):
            log.warning("operator API: refused a request without the operator token")
            raise HTTPException(401, "operator token required (Authorization: Bearer ...)",
                                headers={"WWW-Authenticate": "Bearer"})

    router = APIRouter(prefix="/operator", dependencies=[Depends(operator)],
                       tags=["operator"])

    def lag_of(name: str) -> dict[str, Any]:
        with session_scope(engine()) as s:
            lags = subscription_lags(s, [name])
        if not lags:
            raise HTTPException(404, f"no subscription named {name!r}")
        return lags[0].as_dict()

    @router.post("/subscriptions", status_code=201)
    def create(body: SubscriptionIn) -> dict[str, Any]:
        try:
            with session_scope(engine(), immediate=True) as s:
                sub, secret = create_subscription(
                    s, ring(), name=body.name, url=body.url, event_types=body.event_types,
                    secret=body.secret, start=body.start)
        except SubscriptionError as exc:
            raise HTTPException(409 if "exists already" in str(exc) else 422, str(exc)) from None
        register_secret(secret)
        log.info("operator API: subscription %s created for %s", sub.name, sub.display_url)
        return {**sub.as_dict(), "secret": secret.get_secret_value()}

    @router.get("/subscriptions")
    def list_all() -> dict[str, Any]:
        with session_scope(engine()) as s:
            return {"subscriptions": [lag.as_dict() for lag in subscription_lags(s)]}

    @router.get("/subscriptions/{name}")
    def one(name: str) -> dict[str, Any]:
        return lag_of(name)

    def change(name: str, status: SubscriptionStatus) -> dict[str, Any]:
        try:
            with session_scope(engine()) as s:
                set_status(s, name, status)
        except SubscriptionNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        log.info("operator API: subscription %s %s", name, status.value)
        return lag_of(name)

    @router.post("/subscriptions/{name}/pause")
    def pause(name: str) -> dict[str, Any]:
        return change(name, SubscriptionStatus.PAUSED)

    @router.post("/subscriptions/{name}/resume")
    def resume(name: str) -> dict[str, Any]:
        return change(name, SubscriptionStatus.ACTIVE)

    @router.delete("/subscriptions/{name}")
    def remove(name: str) -> dict[str, Any]:
        try:
            with session_scope(engine(), immediate=True) as s:
                remove_subscription(s, name)
        except SubscriptionNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        log.info("operator API: subscription %s removed", name)
        return {"removed": name}

    def page(after: int, limit: int, patterns: list[str] | None) -> dict[str, Any]:
        with session_scope(engine()) as s:
            events = read_events(s, after=after, patterns=patterns, limit=limit + 1)
        more = len(events) > limit
        events = events[:limit]
        return {"events": [e.as_dict() for e in events],
                "next_after": events[-1].seq if events else after, "has_more": more}

    @router.get("/events")
    def events(
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 500,
        type_: Annotated[list[str] | None, Query(alias="type")] = None,
    ) -> dict[str, Any]:
        """Every event after a sequence number (optionally of some types), oldest first."""
        return page(after, limit, type_)

    @router.get("/subscriptions/{name}/events")
    def subscription_events(
        name: str,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 500,
    ) -> dict[str, Any]:
        """The events a subscription covers after a sequence number, oldest first."""
        try:
            with session_scope(engine()) as s:
                sub = get_subscription(s, name)
        except SubscriptionNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        return page(after, limit, list(sub.event_types))

    return router
