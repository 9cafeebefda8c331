"""Signed webhooks from the wallet sites: verify, store, answer.

A site signs ``"{t}.{raw_body}"`` with HMAC-SHA256 and its webhook secret and sends
``X-Wallet-Signature: t={unix},v1={hex}``. The receiver refuses a bad signature or a ``t``
more than five minutes away (401), stores the event in the inbox keyed by its id (a duplicate
changes nothing) and only then answers 2xx; the flows process the inbox later, in the order
the events happened, not the order they arrived.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from connectors.signing import SignatureError, check_signature, sign

SIGNATURE_HEADER = "x-wallet-signature"
EVENT_ID_HEADER = "x-wallet-event-id"
EVENT_TYPES = frozenset({"order.confirmed", "order.updated", "refund.created",
                         "product.status_changed"})


class WebhookRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


__all__ = ["EVENT_TYPES", "VerifiedEvent", "WebhookRefused", "sign", "verify"]


@dataclass(frozen=True)
class VerifiedEvent:
    event_id: str
    site: str
    type: str
    created_at: str
    payload: dict[str, Any]


def verify(site: str, secret: str, headers: dict[str, str], body: bytes,
           *, now: float | None = None) -> VerifiedEvent:
    """Check signature and freshness, then the body's shape; raise WebhookRefused."""
    if not secret:
        raise WebhookRefused(401, f"no webhook secret configured for site {site}")
    try:
        check_signature(secret, headers.get(SIGNATURE_HEADER, ""), body, now=now)
    except SignatureError as exc:
        raise WebhookRefused(401, str(exc)) from None
    try:
        event = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookRefused(400, "body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookRefused(400, "body is not a JSON object")
    missing = [k for k in ("id", "type", "created_at", "data") if k not in event]
    if missing:
        raise WebhookRefused(400, f"event without {', '.join(missing)}")
    if event["type"] not in EVENT_TYPES:
        raise WebhookRefused(400, f"unknown event type {event['type']!r}")
    header_id = headers.get(EVENT_ID_HEADER)
    if header_id and header_id != str(event["id"]):
        raise WebhookRefused(400, "X-Wallet-Event-Id differs from the body's id")
    if not isinstance(event["data"], dict):
        raise WebhookRefused(400, "event data is not an object")
    return VerifiedEvent(event_id=str(event["id"]), site=site, type=str(event["type"]),
                         created_at=str(event["created_at"]), payload=event)
