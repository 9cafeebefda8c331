"""Helpers for delivery tests: subscribers served on loopback, events of sales orders (several
per order, so the order per entity matters), and checks made at the subscribers' end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from flows.subscribers import DeliverySettings, DeliveryWorker
from sandbox.core import ServedSandbox, serve
from sandbox.subscriber import SubscriberSandbox
from state.crypto import Keyring
from state.db import session_scope
from state.events import Event, covers, emit_events, read_events
from state.subscriptions import create_subscription

TYPES = ("sales_order.recorded", "order_line.allocated", "order_line.delivered")

FAST = DeliverySettings(concurrency=8, chunk_size=500, backoff_base_s=0.02,
                        backoff_max_s=0.2, max_attempts=50, poll_interval_s=0.02,
                        refresh_s=0.2, lease_s=30)


@dataclass
class Subscriber:
    name: str
    sandbox: SubscriberSandbox
    served: ServedSandbox
    types: tuple[str, ...]
    secret: str


@contextmanager
def subscribers(engine: Engine, spec: dict[str, Sequence[str]], *, start: Any = "now"
                ) -> Iterator[dict[str, Subscriber]]:
    """Serve one sandbox per name and register its subscription (``name -> types``)."""
    ring = Keyring.load()
    made: dict[str, Subscriber] = {}
    try:
        for name, types in spec.items():
            secret = f"whsec-{name}-secret-000000001"
            sandbox = SubscriberSandbox(secret, name=name)
            served = serve(sandbox)
            made[name] = Subscriber(name, sandbox, served, tuple(types), secret)
            with session_scope(engine) as s:
                create_subscription(s, ring, name=name, url=served.url("/events"),
                                    event_types=types, secret=secret, start=start)
        yield made
    finally:
        for sub in made.values():
            sub.served.stop()


def order_events(first: int, count: int, per_order: int = 3, *, at: datetime | None = None
                 ) -> list[Event]:
    """``per_order`` events of each of ``count`` orders, interleaved across orders the way
    flows emit them (recorded, allocated, delivered...)."""
    at = at or datetime.now(UTC)
    out = []
    for step in range(per_order):
        type_ = TYPES[step % len(TYPES)]
        for n in range(first, first + count):
            out.append(Event(type=type_, entity_type="sales_order", entity_key=f"sg1:SO-{n}",
                             occurred_at=at, data={"order_id": f"SO-{n}", "step": step},
                             version=f"s{step}"))
    return out


def emit(engine: Engine, events: Sequence[Event]) -> int:
    with session_scope(engine) as s:
        return emit_events(s, events)


def recorded(engine: Engine) -> list[Any]:
    with session_scope(engine) as s:
        return read_events(s, after=0, limit=1_000_000)


def covered(engine: Engine, sub: Subscriber) -> dict[str, Any]:
    return {e.event_id: e for e in recorded(engine) if covers(sub.types, e.type)}


def check_delivery(engine: Engine, sub: Subscriber) -> None:
    """Every covered event arrived at least once, nothing else did, none out of order, and a
    repeat is the same bytes under the same id."""
    want = covered(engine, sub)
    got = sub.sandbox.received()
    missing = set(want) - set(got)
    assert not missing, f"{sub.name}: {len(missing)} events never arrived, e.g. {sorted(missing)[:3]}"
    assert set(got) <= set(want), f"{sub.name}: received events it does not cover"
    assert sub.sandbox.out_of_order() == [], f"{sub.name}: {sub.sandbox.out_of_order()[:3]}"
    assert sub.sandbox.mismatched_repeats() == []
    assert sub.sandbox.rejections() == []


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


async def run_worker_until(engine: Engine, condition: Callable[[], bool], *, timeout: float,
                           settings: DeliverySettings = FAST,
                           during: Callable[[], Any] | None = None) -> DeliveryWorker:
    """Run a worker in this event loop until ``condition`` holds (``during``: a coroutine
    function run beside it, e.g. a producer)."""
    worker = DeliveryWorker(engine, settings=settings)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    side = asyncio.create_task(during()) if during else None
    deadline = time.monotonic() + timeout
    try:
        while not condition() or (side is not None and not side.done()):
            assert time.monotonic() < deadline, "the worker did not get there in time"
            assert not task.done(), f"the worker stopped: {task}"
            await asyncio.sleep(0.05)
        if side is not None:
            await side
    finally:
        stop.set()
        await task
    return worker
