"""A small framework for simulated external systems served as ASGI apps on loopback.

A sandbox stands in for a real system (the ERP, the wallet sites, ...) in the demo and in
integration tests. Beyond answering its protocol it has to let a test make the far end
misbehave (the fault switch), count what the far end actually did (the effect log) rather than
trusting the client's own report, and observe load (in-flight accounting). Those three concerns
are the same for every system, so they live here; a subclass only builds its routes and its
data.

Everything a subclass handler does to its data happens synchronously inside one ``async``
handler on the server's event loop, so a request's effect is atomic with respect to other
requests. Python helpers called from a test thread take ``Sandbox.lock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import socket
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

try:  # orjson is much faster for the ERP's 1000-item pages; the stdlib is the fallback.
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

__all__ = [
    "ADMIN_PREFIX",
    "EffectLog",
    "FaultDecision",
    "FaultRule",
    "FaultSwitch",
    "Sandbox",
    "SandboxStats",
    "ServedGroup",
    "ServedSandbox",
    "dumps",
    "json_response",
    "run_until",
    "serve",
    "serve_many",
    "stop_signal",
    "utcnow",
]

log = logging.getLogger("sandbox")

ADMIN_PREFIX = "/_sandbox"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def utcnow() -> datetime:
    return datetime.now(UTC)


def dumps(data: Any) -> bytes:
    """Encode JSON; never emits NaN/Infinity, which no real system sends either."""
    if _orjson is not None:
        return _orjson.dumps(data)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def json_response(
    data: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
    media_type: str = "application/json",
) -> Response:
    return Response(content=dumps(data), status_code=status, headers=headers, media_type=media_type)


# --------------------------------------------------------------------------------------------
# Effect log
# --------------------------------------------------------------------------------------------


class EffectLog:
    """Append-only record of what a sandbox did, so tests count effects at the far end.

    Kept separate from the request log on purpose: a request that changed nothing (an
    "unchanged" upsert, a rejected batch, a dropped-before request) is not an effect.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []
        self._by_kind: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def record(self, kind: str, key: str, **details: Any) -> dict[str, Any]:
        with self._lock:
            entry = {"seq": len(self._entries) + 1, "t": time.time(), "kind": kind, "key": key}
            entry.update(details)
            self._entries.append(entry)
            self._by_kind[kind][key] += 1
            return entry

    def entries(self, kind: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                dict(e)
                for e in self._entries
                if (kind is None or e["kind"] == kind) and (key is None or e["key"] == key)
            ]

    def count(self, kind: str | None = None, key: str | None = None) -> int:
        with self._lock:
            if kind is None and key is None:
                return len(self._entries)
            if kind is None:
                return sum(c[key] for c in self._by_kind.values())
            counter = self._by_kind.get(kind)
            if counter is None:
                return 0
            return counter[key] if key is not None else sum(counter.values())

    def keys(self, kind: str) -> Counter[str]:
        with self._lock:
            return Counter(self._by_kind.get(kind, Counter()))

    def kinds(self) -> Counter[str]:
        with self._lock:
            return Counter({k: sum(c.values()) for k, c in self._by_kind.items()})

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_kind.clear()

    def __len__(self) -> int:
        return self.count()


# --------------------------------------------------------------------------------------------
# Fault switch
# --------------------------------------------------------------------------------------------

FaultAction = Literal["error", "rate_limit", "drop_before", "drop_after"]


@dataclass
class FaultRule:
    """One set of fault settings; see ``FaultSwitch.set``.

    ``count`` and ``duration_s`` bound a rule so a test can say "the next five requests fail"
    without having to clear the switch at exactly the right moment.
    """

    error_rate: float = 0.0
    error_status: int = 503
    rate_limit_rate: float = 0.0
    retry_after: float | None = None
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    drop_rate: float = 0.0
    drop_when: Literal["before", "after"] = "before"
    path_prefix: str | None = None
    method: str | None = None
    count: int | None = None
    duration_s: float | None = None
    seed: int | None = None
    # runtime state, not settings
    remaining: int | None = field(default=None, repr=False)
    expires_at: float | None = field(default=None, repr=False)
    matched: int = field(default=0, repr=False)
    fired: int = field(default=0, repr=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    SETTINGS = (
        "error_rate",
        "error_status",
        "rate_limit_rate",
        "retry_after",
        "latency_ms",
        "latency_jitter_ms",
        "drop_rate",
        "drop_when",
        "path_prefix",
        "method",
        "count",
        "duration_s",
        "seed",
    )

    @classmethod
    def from_settings(cls, **settings: Any) -> FaultRule:
        unknown = set(settings) - set(cls.SETTINGS)
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        rule = cls(**{k: v for k, v in settings.items() if v is not None or k == "retry_after"})
        rule._validate()
        rule.remaining = rule.count
        if rule.duration_s is not None:
            rule.expires_at = time.monotonic() + float(rule.duration_s)
        rule._rng = random.Random(rule.seed)
        if rule.method is not None:
            rule.method = rule.method.upper()
        return rule

    def _validate(self) -> None:
        for name in ("error_rate", "rate_limit_rate", "drop_rate"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}")
        for name in ("latency_ms", "latency_jitter_ms"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if not isinstance(self.error_status, int) or not 400 <= self.error_status <= 599:
            raise ValueError(f"error_status must be an HTTP error status, got {self.error_status!r}")
        if self.drop_when not in ("before", "after"):
            raise ValueError(f"drop_when must be 'before' or 'after', got {self.drop_when!r}")
        if self.retry_after is not None and (
            not isinstance(self.retry_after, int | float) or self.retry_after < 0
        ):
            raise ValueError(f"retry_after must be seconds >= 0 or null, got {self.retry_after!r}")
        if self.count is not None and (not isinstance(self.count, int) or self.count < 0):
            raise ValueError(f"count must be a non-negative integer, got {self.count!r}")
        if self.duration_s is not None and (
            not isinstance(self.duration_s, int | float) or self.duration_s <= 0
        ):
            raise ValueError(f"duration_s must be a positive number, got {self.duration_s!r}")

    def settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.SETTINGS}

    def describe(self) -> dict[str, Any]:
        out = self.settings()
        out["remaining"] = self.remaining
        out["expires_in_s"] = (
            None if self.expires_at is None else max(0.0, self.expires_at - time.monotonic())
        )
        out["matched"] = self.matched
        out["fired"] = self.fired
        out["active"] = self.active()
        return out

    def active(self) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        return not (self.expires_at is not None and time.monotonic() >= self.expires_at)

    def matches(self, method: str, path: str) -> bool:
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        return self.method is None or self.method == method.upper()


@dataclass
class FaultDecision:
    """What the middleware must do to one request."""

    latency_s: float = 0.0
    action: FaultAction | None = None
    status: int = 503
    retry_after: float | None = None

    @property
    def label(self) -> str | None:
        if self.action is not None:
            return self.action
        return "latency" if self.latency_s > 0 else None


class FaultSwitch:
    """Makes a sandbox misbehave on purpose.

    ``set`` replaces all rules with one; ``add`` stacks another (e.g. latency everywhere plus
    errors on one path). When several rules match a request their latencies add up and the
    first rule whose dice fire decides the outcome; a rule that did not get to act on a request
    (an earlier one decided it) does not use up its ``count`` on it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []

    def set(self, **settings: Any) -> FaultRule:
        rule = FaultRule.from_settings(**settings)
        with self._lock:
            self._rules = [rule]
        return rule

    def add(self, **settings: Any) -> FaultRule:
        rule = FaultRule.from_settings(**settings)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules = []

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.describe() for r in self._rules]

    def apply_json(self, body: Any) -> list[FaultRule]:
        """Admin-route form: one settings object, or ``{"rules": [...], "mode": "add"}``."""
        if not isinstance(body, dict):
            raise ValueError("fault settings must be a JSON object")
        if "rules" in body:
            mode = body.get("mode", "replace")
            if mode not in ("replace", "add"):
                raise ValueError("mode must be 'replace' or 'add'")
            if not isinstance(body["rules"], list):
                raise ValueError("rules must be a list")
            new = [FaultRule.from_settings(**r) for r in body["rules"]]
        else:
            mode = body.pop("mode", "replace") if "mode" in body else "replace"
            new = [FaultRule.from_settings(**body)]
        with self._lock:
            self._rules = (self._rules + new) if mode == "add" else new
        return new

    def decide(self, method: str, path: str) -> FaultDecision:
        decision = FaultDecision()
        with self._lock:
            if not self._rules:
                return decision
            for rule in self._rules:
                if not rule.active() or not rule.matches(method, path):
                    continue
                if decision.action is not None and not (rule.latency_ms or rule.latency_jitter_ms):
                    # an earlier rule already decided this request: this one keeps its count
                    # for later requests, so stacked rules act one after the other
                    continue
                rule.matched += 1
                if rule.remaining is not None:
                    rule.remaining -= 1
                rng = rule._rng
                if rule.latency_ms or rule.latency_jitter_ms:
                    jitter = rng.uniform(0, rule.latency_jitter_ms) if rule.latency_jitter_ms else 0
                    decision.latency_s += (rule.latency_ms + jitter) / 1000.0
                if decision.action is not None:
                    continue
                if rule.error_rate and rng.random() < rule.error_rate:
                    decision.action, decision.status = "error", rule.error_status
                elif rule.rate_limit_rate and rng.random() < rule.rate_limit_rate:
                    decision.action, decision.status = "rate_limit", 429
                    decision.retry_after = rule.retry_after
                elif rule.drop_rate and rng.random() < rule.drop_rate:
                    decision.action = "drop_before" if rule.drop_when == "before" else "drop_after"
                if decision.action is not None or rule.latency_ms or rule.latency_jitter_ms:
                    rule.fired += 1
            self._rules = [r for r in self._rules if r.active()]
        return decision


# --------------------------------------------------------------------------------------------
# Stats
# --------------------------------------------------------------------------------------------


@dataclass
class SandboxStats:
    """Load seen at the far end, so a concurrency limit can be checked from the server side.

    ``in_flight`` counts every non-admin request from arrival to answer, including arrivals the
    sandbox then rejects for being over its concurrency limit; ``admitted`` only those let in.
    """

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    admitted: int = 0
    max_admitted: int = 0
    rejected_concurrency: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    errors: int = 0

    def reset(self) -> None:
        in_flight, admitted = self.in_flight, self.admitted
        fresh = SandboxStats()
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))
        # requests still running keep being counted correctly after a reset
        self.in_flight = self.max_in_flight = in_flight
        self.admitted = self.max_admitted = admitted

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "admitted": self.admitted,
            "max_admitted": self.max_admitted,
            "rejected_concurrency": self.rejected_concurrency,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "faults": dict(self.faults),
            "errors": self.errors,
        }


# --------------------------------------------------------------------------------------------
# The base class
# --------------------------------------------------------------------------------------------

_IDEMPOTENCY_HEADERS = (b"x-netsuite-idempotency-key", b"idempotency-key")


class Sandbox:
    """Base class of every simulated system.

    Subclasses implement ``routes()`` and, as needed, ``authenticate``, ``error_response``,
    ``snapshot``/``restore`` and ``reset_data``. The instance itself is an ASGI app, so it
    can also be used in-process with ``httpx.ASGITransport(app=sandbox)``.
    """

    name: str = "sandbox"
    #: Answer 429 when this many requests are already admitted; ``None`` means unlimited.
    concurrency_limit: int | None = None

    def __init__(
        self,
        *,
        name: str | None = None,
        clock: Callable[[], datetime] | None = None,
        request_log_size: int = 10_000,
        state_path: Path | str | None = None,
    ) -> None:
        if name is not None:
            self.name = name
        self.clock: Callable[[], datetime] = clock or utcnow
        self.lock = threading.RLock()
        self.faults = FaultSwitch()
        self.effects = EffectLog()
        self.stats = SandboxStats()
        self.request_log: deque[dict[str, Any]] = deque(maxlen=request_log_size)
        self.state_path: Path | None = Path(state_path) if state_path is not None else None
        self._app: Starlette | None = None

    # ---- to be provided by subclasses -------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return []

    def admin_routes(self) -> list[BaseRoute]:
        """Extra routes under ``/_sandbox/`` (never faulted, authenticated or counted)."""
        return []

    async def authenticate(self, request: Request) -> Response | None:
        """Return an error response to refuse the request, ``None`` to let it through."""
        return None

    def error_response(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """The system's own error envelope. ``code`` is a generic code from this module
        (``unavailable``, ``rate_limited``, ``not_found``, ``method_not_allowed``,
        ``concurrency_limit_exceeded``, ``internal``) or a system-specific one."""
        body = {"error": {"code": code, "message": message, "details": details or []}}
        return json_response(body, status=status, headers=headers)

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, data: dict[str, Any]) -> None:
        return None

    def reset_data(self) -> None:
        return None

    # ---- ASGI ---------------------------------------------------------------------------------

    @property
    def app(self) -> Starlette:
        if self._app is None:
            self._app = self._build_app()
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def _build_app(self) -> Starlette:
        admin = [
            Route("/effects", self._admin_effects, methods=["GET"]),
            Route("/requests", self._admin_requests, methods=["GET"]),
            Route("/stats", self._admin_stats, methods=["GET"]),
            Route("/faults", self._admin_faults_get, methods=["GET"]),
            Route("/faults", self._admin_faults_set, methods=["POST"]),
            Route("/faults", self._admin_faults_clear, methods=["DELETE"]),
            Route("/reset", self._admin_reset, methods=["POST"]),
            Route("/save", self._admin_save, methods=["POST"]),
            *self.admin_routes(),
        ]
        return Starlette(
            routes=[Mount(ADMIN_PREFIX, routes=admin), *self.routes()],
            middleware=[Middleware(_SandboxMiddleware, sandbox=self)],
            exception_handlers={HTTPException: self._on_http_exception, Exception: self._on_crash},
        )

    async def _on_http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        headers = dict(exc.headers) if exc.headers else None
        return self.error_response(exc.status_code, code, str(exc.detail), headers=headers)

    async def _on_crash(self, request: Request, exc: Exception) -> Response:
        # uvicorn's own error logging is silenced (dropped connections would be noise), so a
        # bug in a sandbox handler is reported here, where pytest's log capture shows it.
        self.stats.errors += 1
        log.error("%s: unhandled error in %s %s", self.name, request.method, request.url.path,
                  exc_info=exc)
        return self.error_response(500, "internal", f"sandbox error: {type(exc).__name__}")

    def fault_response(self, decision: FaultDecision) -> Response:
        if decision.action == "rate_limit":
            headers = None
            if decision.retry_after is not None:
                headers = {"Retry-After": str(math.ceil(decision.retry_after))}
            return self.error_response(429, "rate_limited", "Too many requests (fault switch).",
                                       headers=headers)
        return self.error_response(decision.status, "unavailable",
                                   "Service unavailable (fault switch).")

    def concurrency_response(self) -> Response:
        return self.error_response(429, "concurrency_limit_exceeded",
                                   "Concurrency limit exceeded.")

    # ---- admin routes -------------------------------------------------------------------------

    async def _admin_effects(self, request: Request) -> Response:
        kind = request.query_params.get("kind") or None
        key = request.query_params.get("key") or None
        effects = self.effects.entries(kind=kind, key=key)
        return json_response({"effects": effects, "count": len(effects)})

    async def _admin_requests(self, request: Request) -> Response:
        entries = list(self.request_log)
        return json_response({"requests": entries, "count": len(entries)})

    async def _admin_stats(self, request: Request) -> Response:
        return json_response(self.stats.snapshot())

    async def _admin_faults_get(self, request: Request) -> Response:
        return json_response({"rules": self.faults.describe()})

    async def _admin_faults_set(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            self.faults.apply_json(body)
        except (ValueError, TypeError) as exc:
            return json_response({"error": {"code": "invalid", "message": str(exc)}}, status=400)
        return json_response({"rules": self.faults.describe()})

    async def _admin_faults_clear(self, request: Request) -> Response:
        self.faults.clear()
        return json_response({"rules": []})

    async def _admin_reset(self, request: Request) -> Response:
        self.reset()
        return json_response({"reset": True})

    async def _admin_save(self, request: Request) -> Response:
        if self.state_path is None:
            return json_response(
                {"error": {"code": "invalid", "message": "sandbox has no state_path"}}, status=400
            )
        self.save()
        return json_response({"saved": str(self.state_path)})

    # ---- Python helpers -----------------------------------------------------------------------

    def requests(self) -> list[dict[str, Any]]:
        """A copy of the request log, safe to iterate while the server keeps appending."""
        return list(self.request_log)

    def reset(self) -> None:
        """Clear data, effects, faults and stats (requests still running finish normally)."""
        with self.lock:
            self.reset_data()
        self.effects.clear()
        self.faults.clear()
        self.stats.reset()
        self.request_log.clear()

    def save(self, path: Path | str | None = None) -> Path:
        """Write a JSON snapshot of the data (never faults or effects), atomically."""
        target = Path(path) if path is not None else self.state_path
        if target is None:
            raise ValueError("no path given and the sandbox has no state_path")
        with self.lock:
            data = {"sandbox": self.name, "format": 1, "data": self.snapshot()}
            payload = dumps(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return target

    def load_state(self, path: Path | str) -> bool:
        """Replace the data with a saved snapshot; ``False`` when there is no snapshot."""
        source = Path(path)
        if not source.exists():
            return False
        raw = json.loads(source.read_bytes())
        if raw.get("sandbox") != self.name:
            raise ValueError(f"{source} holds a {raw.get('sandbox')!r} snapshot, not {self.name!r}")
        with self.lock:
            self.reset_data()
            self.restore(raw["data"])
        return True

    @classmethod
    def load(cls, path: Path | str, **kwargs: Any) -> Self:
        sandbox = cls(**kwargs)
        sandbox.load_state(path)
        return sandbox


# --------------------------------------------------------------------------------------------
# Middleware: accounting, faults, auth, drop
# --------------------------------------------------------------------------------------------


class _SandboxMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it is slow and cannot abort mid-body)."""

    def __init__(self, app: ASGIApp, sandbox: Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        sb = self.sandbox
        stats = sb.stats
        method: str = scope["method"]
        started = time.perf_counter()
        entry: dict[str, Any] = {
            "t": time.time(),
            "method": method,
            "path": path,
            "query": scope.get("query_string", b"").decode("latin-1"),
            "status": None,
            "fault": None,
            "idempotency_key": _idempotency_key(scope),
        }
        # Logged on arrival and accounted for before the last byte leaves: a test that reads
        # the log or the stats right after its response arrived must see this request done.
        sb.request_log.append(entry)
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        admitted = False
        done = False

        def finish() -> None:
            nonlocal done
            if done:
                return
            done = True
            if admitted:
                stats.admitted -= 1
            stats.in_flight -= 1
            if entry["status"] is not None:
                stats.statuses[entry["status"]] += 1
            entry["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
                # an answer without a body is complete once its headers leave: account for it
                # now, or a client reading the stats right after a 204 could still see it
                if message["status"] in (204, 304) or any(
                    bytes(k).lower() == b"content-length" and bytes(v).strip() == b"0"
                    for k, v in message.get("headers", ())
                ):
                    finish()
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finish()
            await send(message)

        async def drop(status: int, headers: list[Any], body: bytes) -> None:
            finish()
            await _send_broken(send, status, headers, body)

        try:
            limit = sb.concurrency_limit
            if limit is not None and stats.admitted >= limit:
                stats.rejected_concurrency += 1
                entry["rejected"] = "concurrency_limit"
                await sb.concurrency_response()(scope, receive, tracked_send)
                return
            admitted = True
            stats.admitted += 1
            stats.max_admitted = max(stats.max_admitted, stats.admitted)

            decision = sb.faults.decide(method, path)
            label = decision.label
            if label is not None:
                entry["fault"] = label
                stats.faults[label] += 1
            if decision.latency_s > 0:
                entry["latency_ms"] = round(decision.latency_s * 1000, 3)
                await asyncio.sleep(decision.latency_s)
            if decision.action == "drop_before":
                await drop(200, [], b"")
                return
            if decision.action in ("error", "rate_limit"):
                await sb.fault_response(decision)(scope, receive, tracked_send)
                return

            refusal = await sb.authenticate(Request(scope))
            if refusal is not None:
                entry["rejected"] = "auth"
                await refusal(scope, receive, tracked_send)
                return

            if decision.action == "drop_after":
                status, headers, body = await _capture(self.app, scope, receive)
                entry["status"] = status
                await drop(status, headers, body)
                return

            await self.app(scope, receive, tracked_send)
        finally:
            finish()


def _idempotency_key(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name in _IDEMPOTENCY_HEADERS:
            return bytes(value).decode("latin-1")
    return None


async def _capture(app: ASGIApp, scope: Scope, receive: Receive) -> tuple[int, list[Any], bytes]:
    """Run the handler to completion (its effect is applied) but keep its answer."""
    status = 500
    headers: list[Any] = []
    chunks: list[bytes] = []

    async def capture(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, capture)
    return status, headers, b"".join(chunks)


async def _send_broken(send: Send, status: int, headers: list[Any], body: bytes) -> None:
    """Announce a full body, send half of it, then return without finishing.

    The server then closes the connection (uvicorn does so when an app returns mid-body), so
    the client sees a broken response rather than a clean error status. A body-less answer
    (204) cannot be cut short, so it is replaced by a 200 with a filler body.
    """
    if len(body) < 2 or status in (204, 304) or status < 200:
        status, body = 200, b'{"sandbox":"connection dropped","filler":"' + b"x" * 48 + b'"}'
        headers = [(b"content-type", b"application/json")]
    headers = [(k, v) for k, v in headers if bytes(k).lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})


# --------------------------------------------------------------------------------------------
# Serving on loopback
# --------------------------------------------------------------------------------------------


class ServedSandbox:
    """A sandbox (or any ASGI app) served by uvicorn in a background thread."""

    def __init__(self, app: Any, sandbox: Sandbox | None, host: str, port: int) -> None:
        import uvicorn  # imported here so importing the sandbox package stays light

        self.sandbox = sandbox
        self.host = host
        # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets
        # whose proto says TCP, and without it small answers wait ~40 ms for delayed ACKs.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
            self._sock.listen(2048)
        except OSError:
            self._sock.close()
            raise
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            # httptools parses HTTP several times faster than h11; the event loop stays the
            # standard one (uvloop would be installed process-wide, under the tests' feet)
            http="httptools",
            loop="asyncio",
            lifespan="off",
            access_log=False,
            log_config=None,
            log_level="critical",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=5,
        )
        self._server = uvicorn.Server(config)
        self._error: BaseException | None = None
        name = f"sandbox-{sandbox.name if sandbox else 'app'}-{self.port}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str = "") -> str:
        return self.base_url + (path if path.startswith("/") or not path else "/" + path)

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # surfaced by start()
            self._error = exc

    def start(self, timeout: float = 5.0) -> ServedSandbox:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"sandbox server failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("sandbox server did not start in time")
            time.sleep(0.002)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        with contextlib.suppress(OSError):
            self._sock.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ServedSandbox {self.sandbox.name if self.sandbox else 'app'} {self.base_url}>"


def serve(sandbox_or_app: Sandbox | Any, host: str = "127.0.0.1", port: int = 0) -> ServedSandbox:
    """Serve on loopback in a background thread; ``port=0`` picks a free port."""
    sandbox = sandbox_or_app if isinstance(sandbox_or_app, Sandbox) else None
    app = sandbox.app if sandbox is not None else sandbox_or_app
    return ServedSandbox(app, sandbox, host, port).start()


class ServedGroup:
    """Several served sandboxes stopped together."""

    def __init__(self, served: Iterable[ServedSandbox]) -> None:
        self.served = list(served)

    def __iter__(self) -> Iterator[ServedSandbox]:
        return iter(self.served)

    def __getitem__(self, index: int) -> ServedSandbox:
        return self.served[index]

    def __len__(self) -> int:
        return len(self.served)

    def stop(self) -> None:
        for s in reversed(self.served):
            s.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_signal() -> threading.Event:
    """An event set by SIGINT or SIGTERM (for ``python -m sandbox...`` in the foreground); call
    it from the main thread before serving."""
    import signal

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def run_until(stop: threading.Event, group: ServedGroup | Any) -> None:
    """Print the stop hint, block until ``stop`` is set, then stop ``group``."""
    print("Ctrl-C to stop.", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        group.stop()


def serve_many(
    items: Iterable[Sandbox | Any | tuple[Sandbox | Any, int]], host: str = "127.0.0.1"
) -> ServedGroup:
    """Serve several; an item may be ``(sandbox, port)`` to pin its port."""
    served: list[ServedSandbox] = []
    try:
        for item in items:
            target, port = item if isinstance(item, tuple) else (item, 0)
            served.append(serve(target, host=host, port=port))
    except BaseException:
        for s in served:
            s.stop()
        raise
    return ServedGroup(served)
