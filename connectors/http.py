"""The shared HTTP toolkit every connector is built on.

A connector subclasses ``HttpConnector`` and gets: an httpx client with timeouts, its auth
plugged into httpx's auth hook (so every attempt is signed afresh), retries with backoff and
jitter on transport errors, 5xx and 429 (honouring Retry-After), a client-side concurrency
limit, errors mapped to the types in ``connectors.errors`` through a table, and JSON decoded
with Decimal instead of float.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import h11
import httpx
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)

from canonical import now_utc
from canonical.jsontext import json_bytes
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
    for systems that take JSON numbers (NetSuite), numbers written with their exact digits.

    The numbers form is orjson's, each Decimal written as its own digits (``str``): a
    100-record ERP batch takes ~0.03 ms instead of simplejson's ~0.35 ms, spent by the client
    between account slots; non-ASCII text as UTF-8 instead of escapes."""
    if decimal_numbers:
        return orjson.dumps(payload, default=_orjson_default, option=orjson.OPT_NON_STR_KEYS)
    # ``json``'s bytes, made by orjson where it writes the same (a site's batch of 500
    # products: ~2 ms less); times and dataclasses go through ``_default`` as in ``json``
    return json_bytes(payload, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


def _orjson_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))  # the exact digits
    return _default(value)


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


# --------------------------------------------------------------------------------------------
# A lean HTTP/1.1 transport
# --------------------------------------------------------------------------------------------

_Origin = tuple[str, str, int]


class _Connection:
    """One keep-alive connection: an asyncio stream pair and h11's state for it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.h11 = h11.Connection(our_role=h11.CLIENT)
        self.idle_since = 0.0

    def reusable(self, now: float, expiry: float) -> bool:
        # an idle connection the server closed has read its EOF by now (asyncio keeps reading)
        return (self.loop is asyncio.get_running_loop() and not self.writer.is_closing()
                and not self.reader.at_eof() and now - self.idle_since < expiry)

    def close(self) -> None:
        if self.loop.is_closed():
            return  # its loop closed under it: the socket goes with the transport
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.writer.close()
        else:  # a connection left from another event loop (a client used by one loop at a time)
            self.loop.call_soon_threadsafe(self.writer.close)

    async def exchange(self, request: httpx.Request, body: bytes,
                       timeouts: Mapping[str, float | None]) -> httpx.Response:
        """Send the request in one write and read its answer as it arrives."""
        h = self.h11
        events: list[h11.Event] = [h11.Request(method=request.method,
                                               target=request.url.raw_path,
                                               headers=request.headers.raw)]
        if body:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        try:
            data = b"".join(h.send(event) or b"" for event in events)
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from None
        try:
            self.writer.write(data)
            async with asyncio.timeout(timeouts.get("write")):
                await self.writer.drain()  # returns at once unless the socket buffer is full
        except TimeoutError:
            raise httpx.WriteTimeout("timed out writing the request", request=request) from None
        except OSError as exc:
            raise httpx.WriteError(f"{exc.__class__.__name__}: {exc}", request=request) from None
        status, headers, reason, chunks = 0, None, b"", []
        read_timeout = timeouts.get("read")
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc), request=request) from None
            if event is h11.NEED_DATA:
                try:
                    async with asyncio.timeout(read_timeout):
                        chunk = await self.reader.read(65536)
                except TimeoutError:
                    raise httpx.ReadTimeout("timed out reading the answer",
                                            request=request) from None
                except OSError as exc:
                    raise httpx.ReadError(f"{exc.__class__.__name__}: {exc}",
                                          request=request) from None
                h.receive_data(chunk)  # b"" is the end of the stream
            elif isinstance(event, h11.Response):
                status, headers, reason = event.status_code, event.headers, event.reason
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.", request=request)
            # h11.InformationalResponse (1xx): the real answer follows
        return httpx.Response(
            status, headers=list(headers or []), stream=httpx.ByteStream(b"".join(chunks)),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    def next_cycle(self) -> bool:
        """Ready for another request on the same connection (else it must be closed)."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False


class Http1Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive straight on asyncio streams, parsed by h11 (the parser under
    httpx's own transport).

    httpx's default transport goes through httpcore's pool and anyio: each request takes
    several trips round the event loop (a checkpoint at every lock, event and write) and
    about a millisecond of CPU. Against an API whose account allows a handful of requests at
    a time, each of those trips is spent holding one of the slots; measured on the ERP
    batch bench, a result read (half a millisecond of server time) held its slot 6-10 ms and
    a 50 ms write 55-60 ms. Here a request goes out in one write and its answer is read as it
    arrives; nothing else waits for the loop.

    For clients whose slots are scarce (``HttpConnector.lean_transport``). Not here: HTTP/2,
    response streaming (answers are read whole, as ``request`` does anyway). Proxies keep
    working: httpx routes proxied URLs through its own transports.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, max_connections: int = 20,
                 keepalive_expiry: float = 5.0) -> None:
        self._ssl = ssl_context
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}",
                                            request=request)
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        connection = await self._checkout(origin, request, timeouts)
        try:
            response = await connection.exchange(request, body, timeouts)
        except BaseException:
            self._discard(connection)
            raise
        if connection.next_cycle():
            connection.idle_since = time.monotonic()
            self._idle.setdefault(origin, []).append(connection)
            self._wake()
        else:
            self._discard(connection)
        return response

    async def _checkout(self, origin: _Origin, request: httpx.Request,
                        timeouts: Mapping[str, float | None]) -> _Connection:
        while True:
            idle = self._idle.get(origin)
            now = time.monotonic()
            while idle:
                connection = idle.pop()
                if connection.reusable(now, self._expiry):
                    return connection
                self._discard(connection)
            if self._open >= self._max:
                self._evict_one()  # an idle connection to another origin, if any
            if self._open < self._max:
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await waiter
            except TimeoutError:
                raise httpx.PoolTimeout("no connection free in time", request=request) from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._open += 1
        try:
            return await self._connect(origin, request, timeouts)
        except BaseException:
            self._open -= 1
            self._wake()
            raise

    async def _connect(self, origin: _Origin, request: httpx.Request,
                       timeouts: Mapping[str, float | None]) -> _Connection:
        scheme, host, port = origin
        tls = scheme == "https"
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=(self._ssl or ssl.create_default_context()) if tls else None,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}",
                                       request=request) from None
        except OSError as exc:  # ssl.SSLError is an OSError too
            raise httpx.ConnectError(f"{exc.__class__.__name__}: {exc}", request=request) from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._open -= 1
        self._wake()

    def _evict_one(self) -> None:
        for connections in self._idle.values():
            if connections:
                self._discard(connections.pop(0))
                return

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        for connections in self._idle.values():
            while connections:
                self._discard(connections.pop())


ErrorParser = Callable[[httpx.Response, Any], tuple[str | None, str, list[Any]]]


class HttpConnector:
    """Base of every HTTP connector. Subclasses set ``system`` and may override
    ``parse_error`` (vendor envelope -> code, message, details) and ``error_table``."""

    system = "http"
    error_table = ErrorTable()
    decimal_numbers = False
    """Send Decimals as JSON numbers (exact digits) instead of decimal strings."""
    lean_transport = False
    """Send through ``Http1Transport`` rather than httpx's default transport (for systems
    whose concurrency slots are scarce: every trip round the event loop holds one)."""

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
        self._loop_bound: dict[str, tuple[asyncio.AbstractEventLoop, Any]] = {}
        if transport is None and self.lean_transport:
            transport = Http1Transport(ssl_context=shared_ssl_context(),
                                       max_connections=max_connections)
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
            request = self._client.build_request(
                method, url, params=params, content=body, headers=headers, **extra
            )
            if self.limiter is not None:
                response = await self._lanes().send(request)
            else:
                response = await self._client.send(request)
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

    def loop_bound(self, name: str, make: Callable[[asyncio.AbstractEventLoop], T]) -> T:
        """The connector's ``name`` object for the running event loop, made by ``make`` the
        first time that loop asks: queues, futures and semaphores belong to one loop, and a
        client may be used by one loop after another (each ``asyncio.run`` of a flow)."""
        loop = asyncio.get_running_loop()
        bound = self._loop_bound.get(name)
        if bound is None or bound[0] is not loop:
            bound = self._loop_bound[name] = (loop, make(loop))
        return bound[1]  # type: ignore[no-any-return]

    def _lanes(self) -> _Lanes:
        limiter = self.limiter
        assert limiter is not None
        return self.loop_bound("lanes", lambda loop: _Lanes(loop, self._client, limiter))

    async def request_json(self, method: str, url: str, **kwargs: Any) -> Any:
        response = await self.request(method, url, **kwargs)
        if not response.content:
            return None
        return decode_json(response, system=self.system)


@dataclass(eq=False)
class _Queued:
    request: httpx.Request
    answer: asyncio.Future[httpx.Response]
    lane: asyncio.Task[None] | None = None  # the lane sending it, while it does


class _Lanes:
    """A connector's requests under its concurrency limiter, sent by at most ``limit`` lanes.

    A request waiting for a slot waits in this queue rather than in the limiter. When a
    lane's request is answered, the lane releases its slot and, in the same step, takes the
    next queued request and the slot again (at once, unless other clients of the limiter are
    waiting: they come first). Handing a freed slot to a waiting task instead costs trips
    round the event loop (the limiter wakes the waiter's loop, then the waiter runs); under
    an account's concurrency limit that is a slot nobody uses, twice for every request.

    Cancelling a caller cancels its request: dropped from the queue, or aborted in flight
    (the lane is cancelled and replaced), as a request sent directly would be.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient,
                 limiter: ConcurrencyLimiter) -> None:
        self.loop = loop
        self._client = client
        self._limiter = limiter
        self._queue: deque[_Queued] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._fresh: set[asyncio.Task[None]] = set()  # created, not running yet

    async def send(self, request: httpx.Request) -> httpx.Response:
        queued = _Queued(request, self.loop.create_future())
        self._queue.append(queued)
        self._start_lanes()
        try:
            return await queued.answer
        except asyncio.CancelledError:
            if queued.lane is not None:
                queued.lane.cancel()
            raise

    def _start_lanes(self) -> None:
        while len(self._tasks) < self._limiter.limit and len(self._fresh) < len(self._queue):
            task = self.loop.create_task(self._lane())
            self._tasks.add(task)
            self._fresh.add(task)
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._fresh.discard(task)

    async def _lane(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._fresh.discard(me)  # type: ignore[arg-type]
        try:
            while self._queue:
                queued = self._queue.popleft()
                if queued.answer.done():
                    continue  # its caller was cancelled while it waited
                queued.lane = me
                try:
                    async with self._limiter:
                        response = await self._client.send(queued.request)
                except asyncio.CancelledError:
                    queued.answer.cancel()
                    raise
                except Exception as exc:
                    queued.lane = None
                    if not queued.answer.done():
                        queued.answer.set_exception(exc)
                else:
                    queued.lane = None
                    if not queued.answer.done():
                        queued.answer.set_result(response)
        finally:
            self._forget(me)  # type: ignore[arg-type]
            if self._queue:
                self._start_lanes()  # a cancelled lane leaves work behind: replace it


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
