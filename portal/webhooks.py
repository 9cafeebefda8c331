"""Signed webhooks from the wallet sites: verify, store, answer.

A site signs ``"{t}.{raw_body}"`` with HMAC-SHA256 and its webhook secret and sends
``X-Wallet-Signature: t={unix},v1={hex}``. The receiver refuses a bad signature or a ``t``
more than five minutes away (401), stores the event in the inbox keyed by its id (a duplicate
changes nothing) and only then answers 2xx; the flows process the inbox later, in the order
the events happened, not the order they arrived.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

SIGNATURE_HEADER = "x-wallet-signature"
EVENT_ID_HEADER = "x-wallet-event-id"
TOLERANCE_S = 300
EVENT_TYPES = frozenset({"order.confirmed", "order.updated", "refund.created",
                         "product.status_changed"})


class WebhookRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class VerifiedEvent:
    event_id: str
    site: str
    type: str
    created_at: str
    payload: dict[str, Any]


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _parse_signature(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise WebhookRefused(401, "signature timestamp is not a number") from None
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookRefused(401, "signature header without t= and v1=")
    return timestamp, signatures


def verify(site: str, secret: str, headers: dict[str, str], body: bytes,
           *, now: float | None = None) -> VerifiedEvent:
    """Check signature and freshness, then the body's shape; raise WebhookRefused."""
    if not secret:
        raise WebhookRefused(401, f"no webhook secret configured for site {site}")
    header = headers.get(SIGNATURE_HEADER, "")
    timestamp, signatures = _parse_signature(header)
    current = time.time() if now is None else now
    if abs(current - timestamp) > TOLERANCE_S:
        raise WebhookRefused(401, "signature timestamp outside the 5-minute window")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body,
                        hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise WebhookRefused(401, "signature does not match")
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
