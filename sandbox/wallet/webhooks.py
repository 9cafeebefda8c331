"""Webhooks from the wallet sites to vouchflow (CONTRACTS.md "Webhooks from a site to
vouchflow"), delivered at least once, with duplicates and out of order on purpose.

Every event a site creates is kept in the outbox with its exact body bytes. A background
thread (``sandbox-wallet-webhooks``) POSTs pending events to
``{webhook_url}/wallet/{site}/events`` with a synchronous httpx client, one at a time:

* it picks the next event at random among the first ``shuffle_window`` pending ones, so
  events arrive out of order (but never later than ``shuffle_window - 1`` places);
* an event answered 2xx is done; after a 2xx, with probability ``duplicate_rate`` the same
  event (same id, same body) is queued once more among the next few, so it arrives twice;
* a non-2xx answer or a connection error is retried with exponential backoff and jitter
  (``backoff_s = (initial, max)``; a ``Retry-After`` of a 429/503 is honoured, up to 60 s),
  forever unless ``max_attempts`` is set;
* each attempt is signed afresh (``t`` = now), so a retry is never refused for an old ``t``;
  the event log keeps the headers of the first attempt.

The thread starts when there is something to send and a URL, and ends after half a second
with nothing to do; ``stop()`` ends it at once. It never takes the sandbox lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = [
    "EVENT_TYPES",
    "WebhookOutbox",
    "event_url",
    "replay",
    "signature_header",
]

EVENT_TYPES = ("order.confirmed", "order.updated", "refund.created", "product.status_changed")
_MAX_RETRY_AFTER_S = 60.0


def signature_header(secret: str, body: bytes, t: int) -> str:
    """``t={t},v1={hex}``: hex = HMAC-SHA256(secret, ``"{t}.{raw_body}"``)."""
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event_url(base: str, site: str) -> str:
    return f"{base.rstrip('/')}/wallet/{site}/events"


def _headers(event: Mapping[str, Any], secret: str, t: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Wallet-Event-Id": event["id"],
        "X-Wallet-Signature": signature_header(secret, event["body"], t),
    }


@dataclass
class _Item:
    seq: int
    epoch: int
    duplicate: bool = False
    attempts: int = 0
    due: float = 0.0  # time.monotonic() before which it is not sent again


class WebhookOutbox:
    """The events of all sites, and their delivery."""

    def __init__(
        self,
        secret: Callable[[str], str],
        *,
        url: str | None = None,
        duplicate_rate: float = 0.1,
        shuffle_window: int = 5,
        seed: int | None = None,
        backoff_s: tuple[float, float] = (0.05, 5.0),
        max_attempts: int | None = None,
        timeout_s: float = 5.0,
        idle_exit_s: float = 0.5,
    ) -> None:
        self._secret = secret
        self._url = url
        self.duplicate_rate = duplicate_rate
        self.shuffle_window = shuffle_window
        self.backoff_s = backoff_s
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.idle_exit_s = idle_exit_s
        self._cond = threading.Condition()
        self._rng = random.Random(seed)
        self._events: list[dict[str, Any]] = []
        self._by_seq: dict[int, dict[str, Any]] = {}
        self._queue: deque[_Item] = deque()  # ready to send, in creation order (roughly)
        self._waiting: list[_Item] = []  # backing off
        self._inflight = 0
        self._epoch = 0
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stats: Counter[str] = Counter()
        self._statuses: Counter[int] = Counter()

    # ---- the event log ------------------------------------------------------------------------

    def add(self, site: str, event: Mapping[str, Any], body: bytes) -> dict[str, Any]:
        with self._cond:
            self._seq += 1
            record = {
                "seq": self._seq, "id": event["id"], "site": site, "type": event["type"],
                "created_at": event["created_at"], "body": body, "headers": None,
                "attempts": 0, "delivered": False, "last_status": None,
            }  # fmt: skip
            self._events.append(record)
            self._by_seq[record["seq"]] = record
            self._queue.append(_Item(record["seq"], self._epoch))
            self._kick()
            return dict(record)

    def events(self, site: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            out = []
            for record in self._events:
                if site is None or record["site"] == site:
                    copy = dict(record)
                    copy["event"] = json.loads(record["body"])
                    if copy["headers"] is not None:
                        copy["headers"] = dict(copy["headers"])
                    out.append(copy)
            return out

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._waiting) + self._inflight

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "events": len(self._events),
                "delivered": sum(1 for e in self._events if e["delivered"]),
                "pending": len(self._queue) + len(self._waiting) + self._inflight,
                "attempts": self._stats["attempts"],
                "successes": self._stats["successes"],
                "failures": self._stats["failures"],
                "duplicates_sent": self._stats["duplicates_sent"],
                "gave_up": self._stats["gave_up"],
                "statuses": {str(k): v for k, v in sorted(self._statuses.items())},
                "running": self._thread is not None and self._thread.is_alive(),
            }

    def clear(self) -> None:
        with self._cond:
            self._epoch += 1
            self._events.clear()
            self._by_seq.clear()
            self._queue.clear()
            self._waiting.clear()
            self._seq = 0
            self._stats.clear()
            self._statuses.clear()
            self._cond.notify_all()

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return {
                "seq": self._seq,
                "events": [
                    {**{k: v for k, v in e.items() if k != "body"}, "body": e["body"].decode()}
                    for e in self._events
                ],
            }

    def restore(self, data: Mapping[str, Any]) -> None:
        with self._cond:
            self._epoch += 1
            self._events = []
            self._by_seq = {}
            self._queue.clear()
            self._waiting.clear()
            for saved in data.get("events", []):
                record = {**saved, "body": saved["body"].encode()}
                self._events.append(record)
                self._by_seq[record["seq"]] = record
                if not record["delivered"]:
                    self._queue.append(_Item(record["seq"], self._epoch))
            self._seq = int(data.get("seq", len(self._events)))
            self._kick()

    # ---- the deliverer ------------------------------------------------------------------------

    @property
    def url(self) -> str | None:
        return self._url

    @url.setter
    def url(self, value: str | None) -> None:
        with self._cond:
            self._url = value
            self._kick()
            self._cond.notify_all()

    def start(self) -> None:
        with self._cond:
            self._kick()

    def stop(self, timeout: float = 5.0) -> None:
        """End the deliverer thread now (pending events stay pending)."""
        with self._cond:
            thread = self._thread
            self._stopping = True
            self._cond.notify_all()
        try:
            if thread is not None:
                thread.join(timeout)
        finally:
            with self._cond:
                self._stopping = False

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event (and every duplicate queued) was sent; ``False`` on timeout
        or when there is nowhere to send them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._waiting or self._inflight:
                remaining = deadline - time.monotonic()
                if self._url is None or remaining <= 0:
                    return False
                self._kick()
                self._cond.wait(min(remaining, 0.05))
            return True

    def _kick(self) -> None:
        """Start the thread if there is work and a URL (holding the condition)."""
        if self._url is None or self._stopping:
            return
        if not (self._queue or self._waiting):
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="sandbox-wallet-webhooks", daemon=True
            )
            self._thread.start()
        self._cond.notify_all()

    def _next(self) -> tuple[_Item, dict[str, Any], str] | None:
        """Wait for the next item to send (holding the condition); ``None``: end the thread."""
        idle_since: float | None = None
        while True:
            if self._stopping or self._url is None:
                return self._retire()
            now = time.monotonic()
            if self._waiting:
                due = [i for i in self._waiting if i.due <= now]
                if due:
                    self._waiting = [i for i in self._waiting if i.due > now]
                    # retried events go first: they are the oldest
                    for item in sorted(due, key=lambda i: i.seq, reverse=True):
                        self._queue.appendleft(item)
            while self._queue:
                window = min(max(1, self.shuffle_window), len(self._queue))
                j = self._rng.randrange(window)
                item = self._queue[j]
                del self._queue[j]
                record = self._by_seq.get(item.seq)
                if item.epoch != self._epoch or record is None:
                    continue
                self._inflight += 1
                return item, record, self._url
            if self._waiting:
                wait = max(0.0, min(i.due for i in self._waiting) - now)
                idle_since = None
            else:
                if idle_since is None:
                    idle_since = now
                elif now - idle_since >= self.idle_exit_s:
                    return self._retire()
                wait = self.idle_exit_s
            self._cond.wait(wait)

    def _retire(self) -> None:
        """The thread is ending (holding the condition): a later ``_kick`` starts a new one."""
        if self._thread is threading.current_thread():
            self._thread = None
        return None

    def _run(self) -> None:
        me = threading.current_thread()
        with httpx.Client(timeout=self.timeout_s) as client:
            try:
                while True:
                    with self._cond:
                        nxt = self._next()
                        if nxt is None:
                            return
                        item, record, base = nxt
                        t = int(time.time())
                        headers = _headers(record, self._secret(record["site"]), t)
                        body = record["body"]
                    status: int | None = None
                    retry_after: float | None = None
                    try:
                        response = client.post(event_url(base, record["site"]),
                                               content=body, headers=headers)
                        status = response.status_code
                        retry_after = _retry_after(response)
                    except httpx.HTTPError:
                        status = None
                    with self._cond:
                        self._inflight -= 1
                        self._done(item, record, headers, status, retry_after)
                        self._cond.notify_all()
            finally:
                with self._cond:
                    if self._thread is me:
                        self._thread = None
                    self._cond.notify_all()

    def _done(
        self, item: _Item, record: dict[str, Any], headers: dict[str, str],
        status: int | None, retry_after: float | None,
    ) -> None:  # fmt: skip
        stats = self._stats
        stats["attempts"] += 1
        if status is not None:
            self._statuses[status] += 1
        if item.epoch != self._epoch:
            return  # cleared meanwhile
        record["attempts"] += 1
        if record["headers"] is None:
            record["headers"] = headers
        record["last_status"] = status
        ok = status is not None and 200 <= status < 300
        if item.duplicate:
            stats["duplicates_sent"] += 1
            if not ok:
                stats["failures"] += 1  # a duplicate is not retried: the event arrived already
            return
        if ok:
            stats["successes"] += 1
            record["delivered"] = True
            if self.duplicate_rate and self._rng.random() < self.duplicate_rate:
                position = self._rng.randrange(min(max(1, self.shuffle_window), len(self._queue)) + 1)
                self._queue.insert(position, _Item(item.seq, item.epoch, duplicate=True))
            return
        stats["failures"] += 1
        item.attempts += 1
        if self.max_attempts is not None and item.attempts >= self.max_attempts:
            stats["gave_up"] += 1
            return
        initial, ceiling = self.backoff_s
        delay = min(ceiling, initial * 2 ** (item.attempts - 1)) * (0.5 + self._rng.random() / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, _MAX_RETRY_AFTER_S))
        item.due = time.monotonic() + delay
        self._waiting.append(item)


def _retry_after(response: httpx.Response) -> float | None:
    if response.status_code not in (429, 503):
        return None
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(raw))
    return None


def replay(
    events: Iterable[Mapping[str, Any]],
    url: str,
    secret: Callable[[str], str],
    *,
    shuffle: bool = False,
    duplicates: float = 0.0,
    seed: int = 0,
    t: int | None = None,
    timeout_s: float = 10.0,
) -> list[int]:
    """POST events (their exact bodies) once each, synchronously, signed with a fresh ``t``
    (or the ``t`` given); ``duplicates``: the chance that each is also sent a second time,
    somewhere later. Returns the HTTP statuses in the order sent."""
    rng = random.Random(seed)
    order = list(events)
    if shuffle:
        rng.shuffle(order)
    if duplicates:
        for event in list(order):
            if rng.random() < duplicates:
                order.insert(rng.randrange(order.index(event) + 1, len(order) + 1), event)
    statuses: list[int] = []
    with httpx.Client(timeout=timeout_s) as client:
        for event in order:
            stamp = int(time.time()) if t is None else t
            headers = _headers(event, secret(event["site"]), stamp)
            response = client.post(event_url(url, event["site"]), content=event["body"],
                                   headers=headers)
            statuses.append(response.status_code)
    return statuses
