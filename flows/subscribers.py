"""Delivering events to downstream subscribers: the engine the ``deliver-events`` flow and the
``vouchflow deliver`` worker share (no Prefect here, so the worker starts in a blink).

For one subscription at a time (its lease held), a **chunk** is: read up to ``chunk_size``
covered events after the subscription's cursor, plus the retries that are due; send them
concurrently across entities (``concurrency`` requests in flight) and one after the other
within an entity; then record, in one transaction, the new cursor and the rows of whatever
did not go through. Nothing is written for an event delivered at the first try, which is why
the worker keeps up with a plain HTTP client.

- **Order per entity.** An entity's events travel in one lane, each sent only after the
  previous one was accepted. When one fails, it and every later event of its entity become
  rows, and they leave together, in order, when the retry is due. A dead letter holds its
  entity back the same way until it is replayed: a later event for the same sales order never
  overtakes an earlier one.
- **At least once.** The cursor moves only over events that are delivered or have a row, in
  the transaction that writes those rows. A crash resends from the cursor (same ids, same
  bytes): a subscriber drops repeats by ``id``.
- **Retries.** A failed attempt (5xx, other 4xx, no answer) waits ``backoff_base_s x
  2^(attempt-1)`` (with jitter, at most ``backoff_max_s``, at least a 503's Retry-After);
  after ``max_attempts`` the event becomes a dead letter with the last response. A 429 is the
  subscriber asking to slow down, not a failure of the event: every lane of that subscriber
  waits for ``Retry-After`` (or a growing backoff), and the event is sent again.
- **A subscriber that is down** (``trip_after`` failures in a row) gets no more traffic than
  one probe at a time, spaced by the same backoff, until one goes through; its backlog waits
  behind the cursor. Subscribers are independent: each has its own lanes, connections and
  gate, so one failing never slows the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, Literal, overload

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Engine

from canonical import now_utc
from connectors.http import Timeouts
from connectors.subscriber import Attempt, SubscriberClient
from flows.deadletters import replay_handler
from state.crypto import Keyring
from state.db import session_scope
from state.events import StoredEvent, events_by_seq, latest_seq, read_events, seqs_of
from state.models import DeadLetter
from state.store import DeadLetterItem, record_dead_letters, resolve_dead_letters
from state.subscriptions import (
    DEAD_LETTER_ENTITY,
    DEAD_LETTER_FLOW,
    DeliveryRow,
    DeliveryStatus,
    SubscriptionInfo,
    SubscriptionNotFound,
    SubscriptionStatus,
    acquire_lease,
    dead_letter_source,
    delivery_rows,
    get_subscription,
    list_subscriptions,
    load_secret,
    open_deliveries,
    release_lease,
    requeue,
    save_progress,
    tracked_seqs,
)

log = logging.getLogger("vouchflow.deliver")

FLOW = DEAD_LETTER_FLOW


class DeliverySettings(BaseSettings):
    """``VOUCHFLOW_DELIVERY_*``: how events are pushed to subscribers."""

    model_config = SettingsConfigDict(env_prefix="VOUCHFLOW_DELIVERY_", extra="ignore")

    concurrency: int = Field(default=16, ge=1)
    """Requests in flight per subscriber (distinct entities)."""
    chunk_size: int = Field(default=2000, ge=1)
    """Events read per chunk (one Prefect task in the flow)."""
    max_attempts: int = Field(default=8, ge=1)
    """Failed attempts of one event before it becomes a dead letter."""
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    trip_after: int = Field(default=5, ge=1)
    """Failures in a row after which a subscriber counts as down (one probe at a time)."""
    max_inline_wait_s: float = Field(default=30.0, ge=0)
    """The longest 429/Retry-After pause a chunk waits out; a longer one parks the events as
    rows due when the pause ends."""
    max_rate_limited: int = Field(default=20, ge=1)
    """429s in a row for one event before its lane is parked for later."""
    timeout_s: float = Field(default=10.0, gt=0)
    lease_s: float = Field(default=60.0, gt=0)
    """How long a worker's claim on a subscription lasts without renewal (a killed worker's
    subscriptions are taken over after this)."""
    poll_interval_s: float = Field(default=0.25, gt=0)
    """How often an idle worker looks for new events."""
    refresh_s: float = Field(default=2.0, gt=0)
    """How often the worker re-reads the subscription list (new, paused, removed)."""
    replay_wait_s: float = Field(default=30.0, ge=0)
    """How long ``deadletters replay`` waits for a worker that holds the subscription."""


@dataclass
class DeliveryCounts:
    """What happened to events for one subscriber, by outcome."""

    delivered: int = 0
    """Events the subscriber accepted (first try or retry)."""
    failed_attempts: int = 0
    """Attempts that failed and will be tried again (or were the last)."""
    rate_limited: int = 0
    """429 answers (the event was sent again after the pause)."""
    dead_lettered: int = 0
    held: int = 0
    """Events queued behind an earlier undelivered event of their entity."""
    max_lag_s: float = 0.0
    """The longest time an event delivered here had waited since it was recorded."""

    def add(self, other: DeliveryCounts) -> None:
        for f in fields(self):
            if f.name == "max_lag_s":
                self.max_lag_s = max(self.max_lag_s, other.max_lag_s)
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["max_lag_s"] = round(self.max_lag_s, 3)
        return data


@dataclass
class ChunkReport:
    worked: bool
    """Something was sent or settled: worth running the next chunk at once."""
    counts: DeliveryCounts = field(default_factory=DeliveryCounts)
    status: str = "ok"
    """``ok``, ``paused`` (an operator paused the subscription), ``down`` (the subscriber is
    failing; probing), ``lost`` (another worker took the lease)."""


class LeaseLost(RuntimeError):
    """Another worker took over this subscription (this one was too slow to renew)."""


@dataclass
class _Item:
    event: StoredEvent
    row: DeliveryRow | None = None
    settled: bool = False
    _body: bytes | None = None

    @property
    def body(self) -> bytes:
        if self._body is None:
            self._body = self.event.body()
        return self._body


@dataclass
class _Plan:
    fresh: list[StoredEvent]
    scan_upto: int
    rows: dict[str, list[DeliveryRow]]
    due: list[str]
    row_events: dict[int, StoredEvent]


_Outcome = Attempt | Literal["parked", "halted"]


def worker_id(prefix: str = "worker") -> str:
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class SubscriberDelivery:
    """Delivery to one subscription, by chunks, while this owner holds its lease."""

    def __init__(
        self, engine: Engine, sub: SubscriptionInfo, secret: SecretStr, *, owner: str,
        settings: DeliverySettings, client: SubscriberClient | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.engine = engine
        self.sub = sub
        self.owner = owner
        self.settings = settings
        timeout = settings.timeout_s
        self.client = client or SubscriberClient(
            sub.url, secret, max_connections=settings.concurrency,
            timeouts=Timeouts(connect=min(5.0, timeout), read=timeout, write=timeout,
                              pool=max(60.0, timeout)))
        self.settled_seq = sub.settled_seq
        self.failing_since: datetime | None = sub.failing_since
        self.last_error: str | None = sub.last_error
        self.status = "ok"
        self.totals = DeliveryCounts()
        self._rng = rng or random.Random()
        self._failures_in_row = 0
        # a subscriber that was failing when the last worker stopped gets a probe first
        self._down = sub.failing_since is not None
        self._probe_at = 0.0
        self._probe_failures = 0
        self._gate = 0.0
        self._rate_streak = 0
        self._halt = False
        self._last_saved = time.monotonic()
        self._planned_at = 0.0
        self._rows_due_at: datetime | None = None
        """When the earliest waiting retry is due (None: none waits); a chunk that did
        something sets it to now, so the next call plans afresh."""
        self._counts = DeliveryCounts()
        self._dirty: dict[int, DeliveryRow] = {}
        self._dead: list[tuple[StoredEvent, DeliveryRow, Attempt]] = []
        self._resolved: list[str] = []

    @property
    def name(self) -> str:
        return self.sub.name

    @property
    def down(self) -> bool:
        return self._down

    async def aclose(self) -> None:
        await self.client.aclose()

    # one chunk ------------------------------------------------------------------------------
    async def run_chunk(self, latest: int | None = None) -> ChunkReport:
        """Read, send and settle one chunk; a no-op (``worked=False``) when nothing is due.

        ``latest``: the newest event number, when the caller polls it for several
        subscriptions; with nothing new and no retry due, the call then costs no query (a
        full look is still taken every ``refresh_s``, for rows an operator requeued)."""
        now_m = time.monotonic()
        if self._down and now_m < self._probe_at:
            return ChunkReport(worked=False, status="down")
        if self._gate - now_m > self.settings.max_inline_wait_s:
            return ChunkReport(worked=False, status=self.status)
        if (latest is not None and latest <= self.settled_seq and not self._down
                and now_m - self._planned_at < self.settings.refresh_s
                and (self._rows_due_at is None or now_utc() < self._rows_due_at)):
            return ChunkReport(worked=False, status=self.status)
        probe = self._down
        self._planned_at = now_m
        plan = await asyncio.to_thread(self._plan, probe)
        self._counts = DeliveryCounts()
        self._dirty, self._dead, self._resolved = {}, [], []
        self._halt = False
        lanes, fresh_items = self._lanes(plan, probe)
        if not lanes and not self._dirty and plan.scan_upto <= self.settled_seq:
            return ChunkReport(worked=False, status="down" if self._down else self.status)
        if lanes:
            await self._run_lanes(lanes)
        unsettled = [i.event.seq for i in fresh_items if not i.settled]
        cursor = min(unsettled) - 1 if unsettled else plan.scan_upto
        await asyncio.to_thread(self._flush, max(cursor, self.settled_seq))
        self._rows_due_at = now_utc()
        counts = self._counts
        self.totals.add(counts)
        status = "down" if self._down else self.status
        return ChunkReport(worked=True, counts=counts, status=status)

    def _plan(self, probe: bool) -> _Plan:
        limit = 1 if probe else self.settings.chunk_size
        with session_scope(self.engine) as s:
            rows = open_deliveries(s, self.sub.id)
            hi = latest_seq(s)
            fresh = (read_events(s, after=self.settled_seq, patterns=self.sub.event_types,
                                 upto=hi, limit=limit) if hi > self.settled_seq else [])
            scan_upto = fresh[-1].seq if len(fresh) == limit else hi
            if fresh:
                tracked = tracked_seqs(s, self.sub.id, fresh[0].seq, fresh[-1].seq)
                fresh = [e for e in fresh if e.seq not in tracked]
            by_entity: dict[str, list[DeliveryRow]] = {}
            for row in rows:
                by_entity.setdefault(row.entity, []).append(row)
            now = now_utc()
            heads = [q[0] for q in by_entity.values()
                     if q[0].status == DeliveryStatus.PENDING.value]
            due = [h.entity for h in heads
                   if h.next_attempt_at is None or h.next_attempt_at <= now]
            later = [h.next_attempt_at for h in heads
                     if h.next_attempt_at is not None and h.next_attempt_at > now]
            self._rows_due_at = min(later) if later else None
            wanted = [r.event_seq for e in due for r in by_entity[e]]
            row_events = events_by_seq(s, wanted) if wanted else {}
        return _Plan(fresh=fresh, scan_upto=scan_upto, rows=by_entity, due=due,
                     row_events=row_events)

    def _lanes(self, plan: _Plan, probe: bool) -> tuple[list[list[_Item]], list[_Item]]:
        fresh_lanes: dict[str, list[_Item]] = {}
        fresh_items: list[_Item] = []
        for event in plan.fresh:
            entity = event.entity
            queue = plan.rows.get(entity)
            if queue is not None:  # its entity waits for an earlier event: it queues as a row
                row = DeliveryRow(event_seq=event.seq, entity=entity)
                queue.append(row)
                self._dirty[event.seq] = row
                plan.row_events[event.seq] = event
                self._counts.held += 1
                continue
            item = _Item(event)
            fresh_items.append(item)
            fresh_lanes.setdefault(entity, []).append(item)
        lanes: list[list[_Item]] = []
        for entity in plan.due:
            lane: list[_Item] = []
            for row in plan.rows[entity]:
                if row.status != DeliveryStatus.PENDING.value:
                    break
                event = plan.row_events.get(row.event_seq)
                if event is None:  # the event is gone (never deleted today): nothing to send
                    break
                lane.append(_Item(event, row=row, settled=True))
            if lane:
                lanes.append(lane)
        lanes.extend(fresh_lanes.values())
        lanes.sort(key=lambda lane: lane[0].event.seq)
        if probe and lanes:
            return [lanes[0][:1]], fresh_items
        return lanes, fresh_items

    async def _run_lanes(self, lanes: list[list[_Item]]) -> None:
        queue = iter(lanes)

        async def pump() -> None:
            for lane in queue:
                if self._halt:
                    return
                await self._run_lane(lane)

        workers = min(self.settings.concurrency, len(lanes))
        await asyncio.gather(*(pump() for _ in range(workers)))

    async def _run_lane(self, lane: list[_Item]) -> None:
        for index, item in enumerate(lane):
            if self._halt:
                return
            outcome = await self._send(item)
            if outcome == "halted":
                return
            if outcome == "parked":
                self._park(lane[index:], until=self._gate)
                return
            assert isinstance(outcome, Attempt)
            if outcome.ok:
                self._delivered(item)
                continue
            self._failed(item, outcome)
            self._park(lane[index + 1:], until=None)
            return

    async def _send(self, item: _Item) -> _Outcome:
        limited = 0
        while True:
            wait = self._gate - time.monotonic()
            if wait > 0:
                if wait > self.settings.max_inline_wait_s:
                    return "parked"
                await asyncio.sleep(wait)
                if self._halt:
                    return "halted"
            attempt = await self.client.post_event(item.body, event_id=item.event.event_id,
                                                   event_type=item.event.type)
            if not attempt.rate_limited:
                self._rate_streak = 0
                return attempt
            self._counts.rate_limited += 1
            self._rate_streak += 1
            limited += 1
            delay = (attempt.retry_after if attempt.retry_after is not None
                     else self._backoff(self._rate_streak))
            self._gate = max(self._gate, time.monotonic() + delay)
            if limited >= self.settings.max_rate_limited:
                return "parked"

    # outcomes -------------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        s = self.settings
        ceiling = min(s.backoff_max_s, s.backoff_base_s * (2 ** max(attempt - 1, 0)))
        return ceiling * self._rng.uniform(0.5, 1.0)

    def _row(self, item: _Item) -> DeliveryRow:
        if item.row is None:
            item.row = DeliveryRow(event_seq=item.event.seq, entity=item.event.entity)
        item.settled = True
        self._dirty[item.row.event_seq] = item.row
        return item.row

    def _delivered(self, item: _Item) -> None:
        now = now_utc()
        item.settled = True
        if item.row is not None:
            row = self._row(item)
            row.status = DeliveryStatus.DELIVERED.value
            row.delivered_at = now
            row.next_attempt_at = None
            self._resolved.append(item.event.event_id)
        self._counts.delivered += 1
        self._counts.max_lag_s = max(self._counts.max_lag_s,
                                     (now - item.event.recorded_at).total_seconds())
        self._failures_in_row = 0
        if self._down:
            self._down = False
            self._probe_failures = 0
            log.info("subscriber %s answers again (failing since %s)", self.name,
                     self.failing_since)
        self.failing_since = None
        self.last_error = None

    def _failed(self, item: _Item, attempt: Attempt) -> None:
        row = self._row(item)
        row.attempts += 1
        row.last_status = attempt.status
        row.last_error = attempt.error
        self.last_error = attempt.error
        self._counts.failed_attempts += 1
        if row.attempts >= self.settings.max_attempts:
            row.status = DeliveryStatus.DEAD.value
            row.next_attempt_at = None
            self._dead.append((item.event, row, attempt))
            self._counts.dead_lettered += 1
        else:
            delay = self._backoff(row.attempts)
            if attempt.retry_after is not None:
                delay = max(delay, attempt.retry_after)
                self._gate = max(self._gate, time.monotonic() + attempt.retry_after)
            row.next_attempt_at = now_utc() + timedelta(seconds=delay)
        self._failures_in_row += 1
        if self._down:  # a probe failed: wait longer before the next one
            self._probe_failures += 1
            self._probe_at = time.monotonic() + self._backoff(self._probe_failures + 1)
        elif self._failures_in_row >= self.settings.trip_after:
            self._down = True
            self._halt = True
            self._probe_failures = 0
            self._probe_at = time.monotonic() + self._backoff(1)
            self.failing_since = self.failing_since or now_utc()
            log.warning("subscriber %s is failing (%s); probing it with one request at a "
                        "time", self.name, attempt.error)

    def _park(self, items: Sequence[_Item], *, until: float | None) -> None:
        """Later events of a lane that cannot go now: rows, due when their turn comes (None)
        or when the subscriber's pause ends."""
        due = None if until is None else now_utc() + timedelta(
            seconds=max(0.0, until - time.monotonic()))
        for item in items:
            fresh = item.row is None
            row = self._row(item)
            if fresh:
                self._counts.held += 1
            if due is not None and row.status == DeliveryStatus.PENDING.value:
                row.next_attempt_at = due

    # persistence ----------------------------------------------------------------------------
    def _flush(self, cursor: int) -> None:
        name = self.name
        with session_scope(self.engine, immediate=True) as s:
            result = save_progress(
                s, self.sub.id, self.owner, settled_seq=cursor, rows=list(self._dirty.values()),
                failing_since=self.failing_since, last_error=self.last_error,
                lease_ttl_s=self.settings.lease_s)
            if result == "lost":
                self.status = "lost"
                raise LeaseLost(f"subscription {name}: lease lost to another worker")
            if self._dead:
                record_dead_letters(s, [self._dead_letter(e, r, a) for e, r, a in self._dead])
            if self._resolved:
                resolve_dead_letters(s, FLOW, dead_letter_source(name), DEAD_LETTER_ENTITY,
                                     self._resolved)
        for event, row, _ in self._dead:
            log.warning("subscriber %s: %s %s is a dead letter after %d attempts (%s)", name,
                        event.type, event.event_id, row.attempts, row.last_error)
        self.settled_seq = max(self.settled_seq, cursor)
        self.status = result
        self._last_saved = time.monotonic()

    def _dead_letter(self, event: StoredEvent, row: DeliveryRow, attempt: Attempt
                     ) -> DeadLetterItem:
        last = attempt.error or "failed"
        if attempt.excerpt:
            last += f": {attempt.excerpt[:200]}"
        return DeadLetterItem(
            flow=FLOW, source=dead_letter_source(self.name), entity_type=DEAD_LETTER_ENTITY,
            entity_key=event.event_id,
            reason=(f"subscriber {self.name} did not accept {event.type} {event.event_id} "
                    f"({event.entity}) after {row.attempts} attempts; last answer: {last}"),
            payload={"subscription": self.name, "event_seq": event.seq,
                     "event_id": event.event_id, "type": event.type, "entity": event.entity,
                     "attempts": row.attempts,
                     "last_response": {"status": attempt.status, "error": attempt.error,
                                       "body": attempt.excerpt}})

    async def keep_lease(self) -> None:
        """Renew the lease while idle (a chunk renews it anyway)."""
        if time.monotonic() - self._last_saved < self.settings.lease_s / 3:
            return
        self._dirty, self._dead, self._resolved = {}, [], []
        await asyncio.to_thread(self._flush, self.settled_seq)

    def release(self) -> None:
        with session_scope(self.engine) as s:
            release_lease(s, self.sub.id, self.owner)


# several subscriptions ----------------------------------------------------------------------
@overload
def claim(
    engine: Engine, owner: str, settings: DeliverySettings, *,
    names: Sequence[str] | None = ..., keyring: Keyring | None = ..., skip: Sequence[int] = ...,
    with_active: Literal[False] = ...,
) -> tuple[list[SubscriberDelivery], list[SubscriptionInfo]]: ...


@overload
def claim(
    engine: Engine, owner: str, settings: DeliverySettings, *,
    names: Sequence[str] | None = ..., keyring: Keyring | None = ..., skip: Sequence[int] = ...,
    with_active: Literal[True],
) -> tuple[list[SubscriberDelivery], list[SubscriptionInfo], set[int]]: ...


def claim(
    engine: Engine, owner: str, settings: DeliverySettings, *, names: Sequence[str] | None = None,
    keyring: Keyring | None = None, skip: Sequence[int] = (), with_active: bool = False,
) -> Any:
    """Lease the active subscriptions (of ``names``) that nobody else delivers; returns the
    deliveries set up for them and the subscriptions another owner holds (and, with
    ``with_active``, the ids of every active subscription, skipped ones included)."""
    keyring = keyring or Keyring.load()
    taken: list[SubscriberDelivery] = []
    busy: list[SubscriptionInfo] = []
    with session_scope(engine) as s:
        subs = list_subscriptions(s, status=SubscriptionStatus.ACTIVE.value, names=names)
    for sub in subs:
        if sub.id in skip:
            continue
        with session_scope(engine, immediate=True) as s:
            if not acquire_lease(s, sub.id, owner, settings.lease_s):
                busy.append(sub)
                continue
            fresh = get_subscription(s, sub.name)
            secret = load_secret(s, keyring, sub.id)
        taken.append(SubscriberDelivery(engine, fresh, secret, owner=owner, settings=settings))
    if with_active:
        return taken, busy, {sub.id for sub in subs}
    return taken, busy


Step = Callable[[SubscriberDelivery], Awaitable[ChunkReport]]


async def _run_chunk(delivery: SubscriberDelivery) -> ChunkReport:
    return await delivery.run_chunk()


async def drain(
    deliveries: Sequence[SubscriberDelivery], *, step: Step = _run_chunk,
    max_seconds: float | None = None,
) -> dict[str, str]:
    """Run chunks for each delivery, side by side, until it has caught up, its subscriber is
    down, it was paused or lost, or ``max_seconds`` are spent; returns how each ended.
    ``step`` runs one chunk (the flow passes its Prefect task)."""
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    states: dict[str, str] = {}

    async def drive(delivery: SubscriberDelivery) -> None:
        states[delivery.name] = "caught up"
        while deadline is None or time.monotonic() < deadline:
            report = await step(delivery)
            if report.status != "ok":
                states[delivery.name] = report.status
            if not report.worked or report.status != "ok":
                return
        states[delivery.name] = "time budget spent"

    outcomes = await asyncio.gather(*(drive(d) for d in deliveries), return_exceptions=True)
    for delivery, outcome in zip(deliveries, outcomes, strict=True):
        if isinstance(outcome, LeaseLost):
            states[delivery.name] = "lease lost"
        elif isinstance(outcome, BaseException):
            states[delivery.name] = f"failed: {type(outcome).__name__}: {outcome}"
            log.error("delivery to %s failed", delivery.name, exc_info=outcome)
    return states


async def release_all(deliveries: Sequence[SubscriberDelivery]) -> None:
    for delivery in deliveries:
        try:
            await asyncio.to_thread(delivery.release)
        finally:
            await delivery.aclose()


class DeliveryWorker:
    """The long-running worker: every active subscription it can lease, each in its own loop,
    until ``stop`` is set. New subscriptions are picked up, paused and removed ones dropped,
    and a dead worker's subscriptions taken over once its lease runs out."""

    def __init__(self, engine: Engine, *, settings: DeliverySettings | None = None,
                 names: Sequence[str] | None = None, owner: str | None = None,
                 keyring: Keyring | None = None) -> None:
        self.engine = engine
        self.settings = settings or DeliverySettings()
        self.names = list(names) if names else None
        self.owner = owner or worker_id()
        self.keyring = keyring or Keyring.load()
        self.totals: dict[str, DeliveryCounts] = {}
        self.latest: int | None = None
        self._news = asyncio.Event()
        self._runners: dict[int, tuple[SubscriberDelivery, asyncio.Task[None], asyncio.Event]] = {}

    async def run(self, stop: asyncio.Event) -> dict[str, DeliveryCounts]:
        log.info("delivery worker %s started", self.owner)
        poller = asyncio.create_task(self._poll(stop))
        try:
            while not stop.is_set():
                await self._refresh()
                try:
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.refresh_s)
                except TimeoutError:
                    pass
        finally:
            for _, _, halt in self._runners.values():
                halt.set()
            await asyncio.gather(poller, *(task for _, task, _ in self._runners.values()),
                                 return_exceptions=True)
            self._runners.clear()
            log.info("delivery worker %s stopped", self.owner)
        return self.totals

    def _read_latest(self) -> int:
        with session_scope(self.engine) as s:
            return latest_seq(s)

    async def _poll(self, stop: asyncio.Event) -> None:
        """One query per ``poll_interval_s`` for all subscriptions: the newest event number;
        when it moves, every idle runner wakes."""
        while not stop.is_set():
            latest = await asyncio.to_thread(self._read_latest)
            if latest != self.latest:
                self.latest = latest
                news, self._news = self._news, asyncio.Event()
                news.set()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.settings.poll_interval_s)
            except TimeoutError:
                pass

    async def _refresh(self) -> None:
        for sub_id, (delivery, task, _) in list(self._runners.items()):
            if task.done():
                del self._runners[sub_id]
                error = task.exception() if not task.cancelled() else None
                if error is not None and not isinstance(error, LeaseLost):
                    log.error("delivery to %s stopped: %s", delivery.name, error)
        taken, _, active = await asyncio.to_thread(
            claim, self.engine, self.owner, self.settings, names=self.names,
            keyring=self.keyring, skip=list(self._runners), with_active=True)
        for sub_id, (_, _, halt) in self._runners.items():
            if sub_id not in active:  # paused or removed meanwhile
                halt.set()
        for delivery in taken:
            halt = asyncio.Event()
            task = asyncio.create_task(self._drive(delivery, halt))
            self._runners[delivery.sub.id] = (delivery, task, halt)

    async def _drive(self, delivery: SubscriberDelivery, halt: asyncio.Event) -> None:
        counts = self.totals.setdefault(delivery.name, DeliveryCounts())
        try:
            while not halt.is_set():
                report = await delivery.run_chunk(latest=self.latest)
                counts.add(report.counts)
                if report.status in ("paused", "lost"):
                    break
                if report.worked:
                    await asyncio.sleep(0)
                    continue
                await delivery.keep_lease()
                waits = [asyncio.ensure_future(halt.wait()),
                         asyncio.ensure_future(self._news.wait())]
                await asyncio.wait(waits, timeout=self.settings.poll_interval_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                for waiting in waits:
                    waiting.cancel()
        finally:
            if delivery.status != "lost":
                await asyncio.to_thread(delivery.release)
            await delivery.aclose()


# dead-letter replay ---------------------------------------------------------------------------
@replay_handler(FLOW, "subscriber", DEAD_LETTER_ENTITY)
async def replay_deliveries(engine: Engine, letters: Sequence[DeadLetter]) -> set[int]:
    """Send dead-lettered events again: each gets a fresh attempt budget and goes first in its
    entity's queue (the later events of that entity follow it, in order). When no worker
    holds the subscription, this delivers it now; otherwise the worker does, and this waits
    (``replay_wait_s``) to report what went through."""
    settings = DeliverySettings()
    by_name: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        by_name.setdefault(letter.source.split(":", 1)[1], []).append(letter)
    succeeded: set[int] = set()
    for name, group in by_name.items():
        with session_scope(engine, immediate=True) as s:
            try:
                sub = get_subscription(s, name)
            except SubscriptionNotFound:
                continue
            known = seqs_of(s, [d.entity_key for d in group])
            seqs = {d.id: known[d.entity_key] for d in group
                    if d.id is not None and d.entity_key in known}
            requeue(s, sub.id, seqs.values())
        if sub.status != SubscriptionStatus.ACTIVE.value:
            continue  # paused: they go when it is resumed
        taken, _ = await asyncio.to_thread(claim, engine, worker_id("replay"), settings,
                                           names=[name])
        if taken:  # nobody delivers it now: do it here (the replayed events go first)
            try:
                await drain(taken, max_seconds=settings.replay_wait_s)
            finally:
                await release_all(taken)
        else:  # a worker holds it: it picks them up at its next chunk
            deadline = time.monotonic() + settings.replay_wait_s
            while time.monotonic() < deadline:
                with session_scope(engine) as s:
                    rows = delivery_rows(s, sub.id, seqs.values())
                if all(r.status != DeliveryStatus.PENDING.value for r in rows.values()):
                    break
                await asyncio.sleep(0.2)
        with session_scope(engine) as s:
            rows = delivery_rows(s, sub.id, seqs.values())
        succeeded.update(letter_id for letter_id, seq in seqs.items()
                         if seq in rows and rows[seq].status == DeliveryStatus.DELIVERED.value)
    return succeeded


def lag_summary(engine: Engine, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    from state.subscriptions import subscription_lags

    with session_scope(engine) as s:
        return [lag.as_dict() for lag in subscription_lags(s, names)]


__all__ = ["ChunkReport", "DeliveryCounts", "DeliverySettings", "DeliveryWorker", "LeaseLost",
           "SubscriberDelivery", "claim", "drain", "lag_summary", "release_all",
           "replay_deliveries", "worker_id"]
