"""One POST of one event to one subscriber, signed, and what came of it.

The body is the event as stored (``state.events.StoredEvent.body``): the same bytes on every
attempt, so a subscriber can drop a repeat by its id. Each attempt is signed afresh
(``X-Vouchflow-Signature: t={now},v1={HMAC-SHA256("{t}.{body}")}``) and names the event in
``X-Vouchflow-Event-Id`` and ``X-Vouchflow-Event-Type``.

Retrying is not done here: whether and when to try again (backoff, ``Retry-After``, attempts
left, the subscriber's health, the order per entity) is the delivery engine's decision, made
with what it keeps in the state database. So the client sends once and reports an ``Attempt``
instead of raising. Descriptions never carry the URL's path or query (a subscriber URL may
hold a token) and response excerpts go through the log redaction (a subscriber echoing its
secret does not put it in a log or a dead letter).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from connectors.errors import ConnectorError, RateLimitedError
from connectors.http import NO_RETRY, HttpConnector, Timeouts, parse_retry_after
from connectors.redact import redact, register_secret
from connectors.signing import sign

SIGNATURE_HEADER = "X-Vouchflow-Signature"
EVENT_ID_HEADER = "X-Vouchflow-Event-Id"
EVENT_TYPE_HEADER = "X-Vouchflow-Event-Type"
EXCERPT_CHARS = 300
TOKEN_CHARS = 8
DEFAULT_TIMEOUTS = Timeouts(connect=5.0, read=10.0, write=10.0, pool=60.0)


@dataclass(frozen=True)
class Attempt:
    """The outcome of one POST."""

    ok: bool
    status: int | None
    """The HTTP status; None when no answer came (connect error, timeout, dropped)."""
    rate_limited: bool = False
    """429: the subscriber asks to slow down (not a failure of this event)."""
    retry_after: float | None = None
    """Seconds from ``Retry-After`` (429 and 503)."""
    error: str | None = None
    """Why it failed, without URL, headers or secrets."""
    excerpt: str | None = None
    """The start of the answer's body (redacted), for the dead letter."""


def _excerpt(response: httpx.Response | None) -> str | None:
    if response is None or not response.content:
        return None
    return redact(response.content[:EXCERPT_CHARS].decode("utf-8", "replace"))


class SubscriberClient(HttpConnector):
    system = "subscriber"

    def __init__(
        self,
        url: str,
        secret: SecretStr,
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        max_connections: int = 32,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        parts = urlsplit(url)
        # the exact path (no trailing slash added by httpx's base_url joining), with its query
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        super().__init__(f"{parts.scheme}://{parts.netloc}", timeouts=timeouts, retry=NO_RETRY,
                         transport=transport, max_connections=max_connections,
                         headers={"User-Agent": "vouchflow-webhooks/1"})
        register_secret(secret)
        # a URL may carry a token (user info, a query value): httpx logs URLs, so mask them
        # (values long enough to be tokens: masking "json" would garble every log line)
        for value in [parts.password, *(p.partition("=")[2] for p in parts.query.split("&"))]:
            if value and len(value) >= TOKEN_CHARS:
                register_secret(value)
        self._secret = secret

    async def post_event(self, body: bytes, *, event_id: str, event_type: str,
                         timestamp: int | None = None) -> Attempt:
        t = int(time.time()) if timestamp is None else timestamp
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADER: sign(self._secret.get_secret_value(), t, body),
                   EVENT_ID_HEADER: event_id, EVENT_TYPE_HEADER: event_type}
        try:
            response = await self.request("POST", self._target, content=body, headers=headers)
        except RateLimitedError as exc:
            return Attempt(ok=False, status=429, rate_limited=True, retry_after=exc.retry_after,
                           error="429 rate limited", excerpt=_excerpt(exc.response))
        except ConnectorError as exc:
            status = exc.status_code
            if status is None:
                return Attempt(ok=False, status=None,
                               error=f"no answer ({_transport_reason(exc)})")
            response = exc.response
            assert response is not None
            retry_after = (parse_retry_after(response.headers.get("Retry-After"))
                           if status == 503 else None)
            return Attempt(ok=False, status=status, retry_after=retry_after,
                           error=f"{status} {response.reason_phrase}".strip(),
                           excerpt=_excerpt(response))
        if not 200 <= response.status_code < 300:  # a redirect is not followed, nor accepted
            return Attempt(ok=False, status=response.status_code,
                           error=f"{response.status_code} (redirects are not followed)",
                           excerpt=_excerpt(response))
        return Attempt(ok=True, status=response.status_code)


def _transport_reason(exc: ConnectorError) -> str:
    text = str(exc)
    if "timed out" in text:
        return "timed out"
    # "subscriber: POST /path?q: ConnectError: ..." -> the exception class only
    for part in text.split(": "):
        if part.endswith(("Error", "Timeout")) and " " not in part:
            return part
    return "transport error"
