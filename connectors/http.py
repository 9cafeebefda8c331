"""The shared HTTP toolkit every connector is built on.

A connector subclasses ``HttpConnector`` and gets: an httpx client with timeouts, its auth
plugged into httpx's auth hook (so every attempt is signed afresh), retries with backoff and
jitter on transport errors, 5xx and 429 (honouring Retry-After), a client-side concurrency
limit, errors mapped to the types in ``connectors.errors`` through a table, and JSON decoded
with Decimal instead of float.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
import simplejson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)

from canonical import now_utc
from connectors.errors import (
    AuthError,
    ConflictError,
    ConnectorError,
    FatalError,
    InvalidRecordError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    RetriableError,
    ServerError,
    TransportError,
)
from connectors.limits import ConcurrencyLimiter

log = logging.getLogger("vouchflow.connectors")
T = TypeVar("T")


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 30.0
    write: float = 30.0
    pool: float = 60.0

    def httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write,
                             pool=self.pool)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: exponential backoff with full jitter, or the server's Retry-After."""

    max_attempts: int = 6
    base_delay: float = 0.25
    max_delay: float = 20.0
    max_retry_after: float = 120.0
    max_total: float = 300.0
    jitter: bool = True

    def delay(self, attempt: int, error: BaseException | None) -> float:
        if isinstance(error, RateLimitedError) and error.retry_after is not None:
            return min(max(error.retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(attempt - 1, 0)))
        return random.uniform(0, ceiling) if self.jitter else ceiling


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)
DEFAULT_TIMEOUTS = Timeouts()


@dataclass(frozen=True)
class ErrorRule:
    error: type[ConnectorError]
    message: str | None = None


@dataclass
class ErrorTable:
    """HTTP status and vendor error code -> error type. Vendor codes win over statuses."""

    by_code: dict[str, type[ConnectorError]] = field(default_factory=dict)
    by_status: dict[int, type[ConnectorError]] = field(default_factory=lambda: {
        400: InvalidRecordError,
        401: AuthError,
        403: AuthError,
        404: NotFoundError,
        409: ConflictError,
        410: NotFoundError,
        413: InvalidRecordError,
        422: InvalidRecordError,
        429: RateLimitedError,
    })

    def classify(self, status: int, code: str | None) -> type[ConnectorError]:
        if code and code in self.by_code:
            return self.by_code[code]
        if status in self.by_status:
            return self.by_status[status]
        if status >= 500:
            return ServerError
        return FatalError


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds, from either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - now_utc()).total_seconds(), 0.0)


def decode_json(response: httpx.Response, *, system: str) -> Any:
    """Decode a JSON body with Decimal for every non-integer number."""
    try:
        return json.loads(response.content, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedResponseError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code} with a body that is not JSON ({exc.__class__.__name__}: "
            f"{str(exc)[:120]})",
            system=system, request=response.request, response=response,
        ) from None


def dumps(payload: Any, *, decimal_numbers: bool = False) -> bytes:
    """JSON for the wire. Decimals become decimal strings (the contracts' money form), or,
    for systems that take JSON numbers (NetSuite), numbers written with their exact digits."""
    if decimal_numbers:
        return simplejson.dumps(payload, use_decimal=True, default=_default,
                                separators=(",", ":")).encode()
    return json.dumps(payload, default=_default, separators=(",", ":")).encode()


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


_ssl_context: ssl.SSLContext | None = None
_ssl_lock = threading.Lock()


def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context for every client: loading the CA bundle costs tens of milliseconds, and a
    flow run opens a client per site."""
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            import certifi

            _ssl_context = ssl.create_default_context(cafile=certifi.where())
        return _ssl_context


ErrorParser = Callable[[httpx.Response, Any], tuple[str | None, str, list[Any]]]


class HttpConnector:
    """Base of every HTTP connector. Subclasses set ``system`` and may override
    ``parse_error`` (vendor envelope -> code, message, details) and ``error_table``."""

    system = "http"
    error_table = ErrorTable()
    decimal_numbers = False
    """Send Decimals as JSON numbers (exact digits) instead of decimal strings."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: httpx.Auth | None = None,
        headers: Mapping[str, str] | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        retry: RetryPolicy = DEFAULT_RETRY,
        limiter: ConcurrencyLimiter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 20,
    ) -> None:
        if not base_url:
            raise ConnectorError("no base URL configured", system=self.system)
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self.limiter = limiter
        self.attempts = 0  # every HTTP attempt, retries included
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            auth=auth,
            headers={"Accept": "application/json", **(headers or {})},
            timeout=timeouts.httpx(),
            transport=transport,
            verify=shared_ssl_context(),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
            follow_redirects=False,
        )

    async def __aenter__(self) -> HttpConnector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # errors -------------------------------------------------------------------------------
    def parse_error(self, response: httpx.Response, body: Any) -> tuple[str | None, str, list[Any]]:
        """(vendor code, message, details) from an error body; the default reads nothing."""
        return None, response.reason_phrase or "error", []

    def error_for(self, response: httpx.Response) -> ConnectorError:
        body: Any = None
        try:
            body = json.loads(response.content, parse_float=Decimal) if response.content else None
        except (ValueError, UnicodeDecodeError):
            body = None
        try:
            code, message, details = self.parse_error(response, body)
        except Exception:  # a malformed error envelope must not hide the status
            code, message, details = None, response.reason_phrase or "error", []
        kind = self.error_table.classify(response.status_code, code)
        where = f"{response.request.method} {response.request.url.path}"
        text = f"{where} -> {response.status_code}" + (f" {code}" if code else "") + f": {message}"
        kwargs: dict[str, Any] = dict(system=self.system, request=response.request,
                                      response=response, code=code, details=details)
        if issubclass(kind, RateLimitedError):
            return kind(text, retry_after=parse_retry_after(response.headers.get("Retry-After")),
                        **kwargs)
        return kind(text, **kwargs)

    # the one way requests are sent ------------------------------------------------------------
    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send with retries; return the 2xx/3xx response or raise a ConnectorError."""
        policy = retry or self.retry
        body = (dumps(json_body, decimal_numbers=self.decimal_numbers)
                if json_body is not None else content)
        send_headers = dict(headers or {})
        if json_body is not None:
            send_headers.setdefault("Content-Type", "application/json")

        return await self.with_retries(
            lambda: self._send_once(method, url, params, body, send_headers, timeout),
            policy=policy, what=f"{method} {url}",
        )

    async def with_retries(
        self, attempt: Callable[[], Awaitable[T]], *, policy: RetryPolicy | None = None,
        what: str = "call",
    ) -> T:
        """Run ``attempt`` until it succeeds, fails for good, or the policy gives up.

        Retries happen only on ``RetriableError``. Each attempt is built afresh by ``attempt``,
        so whatever must change between tries (a signature's nonce, a SOAP envelope's
        WS-Security timestamp) does.
        """
        policy = policy or self.retry
        try:  # the common case costs no retry machinery at all
            return await attempt()
        except RetriableError as error:
            if policy.max_attempts <= 1:
                raise
            first_error = error

        def wait(state: RetryCallState) -> float:
            # attempt 1 ran above; tenacity numbers its own attempts from 1 again
            number = state.attempt_number
            error = first_error if number == 1 else (
                state.outcome.exception() if state.outcome else None)
            delay = policy.delay(number, error)
            log.info("%s %s: attempt %d failed (%s), retrying in %.2fs", self.system, what,
                     number, error, delay)
            return delay

        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.max_attempts) | stop_after_delay(policy.max_total),
            wait=wait,
            retry=retry_if_exception_type(RetriableError),
            reraise=True,
        )
        first = True
        async for try_ in retrying:
            with try_:
                if first:  # replay the first failure so tenacity waits and counts it
                    first = False
                    raise first_error
                return await attempt()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send_once(
        self, method: str, url: str, params: Mapping[str, Any] | None, body: bytes | None,
        headers: Mapping[str, str], timeout: float | None,
    ) -> httpx.Response:
        self.attempts += 1
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = timeout
        try:
            if self.limiter is not None:
                async with self.limiter:
                    response = await self._client.request(
                        method, url, params=params, content=body, headers=headers, **extra
                    )
            else:
                response = await self._client.request(
                    method, url, params=params, content=body, headers=headers, **extra
                )
        except httpx.TimeoutException as exc:
            raise TransportError(
                f"{method} {url}: timed out ({exc.__class__.__name__})", system=self.system,
                request=getattr(exc, "request", None),
            ) from None
        except httpx.TransportError as exc:
            raise TransportError(
                f"{method} {url}: {exc.__class__.__name__}: {str(exc)[:200]}",
                system=self.system, request=getattr(exc, "request", None),
            ) from None
        if response.status_code >= 400:
            raise self.error_for(response)
        return response

    async def request_json(self, method: str, url: str, **kwargs: Any) -> Any:
        response = await self.request(method, url, **kwargs)
        if not response.content:
            return None
        return decode_json(response, system=self.system)


async def paginate(
    connector: HttpConnector,
    method: str,
    url: str,
    paginator: Any,
    *,
    params: Mapping[str, Any] | None = None,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """Yield each decoded page until the paginator says there is no next page."""
    paginator.system = connector.system
    while paginator.has_next_page:
        page_params = {**(params or {}), **paginator.next_params()}
        body = await connector.request_json(method, url, params=page_params,
                                            json_body=json_body, headers=headers)
        paginator.update_state(body)
        yield body
