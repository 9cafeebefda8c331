"""Webhook signatures: HMAC-SHA256 over ``"{timestamp}.{raw body}"``.

One scheme both ways: the wallet sites sign the webhooks they send vouchflow with it, and
vouchflow signs the events it pushes to downstream subscribers the same way. The header value
is ``t={unix seconds},v1={hex}`` (several ``v1`` are accepted while a secret rotates). A
receiver refuses a signature that does not match the exact bytes it got, or a ``t`` more than
``TOLERANCE_S`` away from its clock (a replayed old request).
"""

from __future__ import annotations

import hashlib
import hmac
import time

TOLERANCE_S = 300


class SignatureError(ValueError):
    """The signature is missing, malformed, wrong or too old (the message names which)."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"{timestamp}.{body}"``."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value: ``t={timestamp},v1={hex}``."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def parse_signature(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("signature timestamp is not a number") from None
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureError("signature header without t= and v1=")
    return timestamp, signatures


def check_signature(secret: str, header: str, body: bytes, *, now: float | None = None,
                    tolerance_s: float = TOLERANCE_S) -> int:
    """Raise ``SignatureError`` unless ``header`` signs ``body`` with ``secret`` recently
    enough; returns the signed timestamp."""
    timestamp, signatures = parse_signature(header)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(f"signature timestamp outside the {tolerance_s / 60:g}-minute "
                             "window")
    expected = signature(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise SignatureError("signature does not match")
    return timestamp
