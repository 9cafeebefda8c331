"""Benchmark: delivering recorded events to subscribers as signed webhooks.

The subscriber sandboxes run in their own process (``python -m sandbox.subscriber``), each
verifying every signature. ``--events`` events of sales orders (three per order: recorded,
allocated, delivered) are recorded in the state database, then:

1. **Throughput.** The delivery worker (``flows.subscribers.DeliveryWorker``, as ``vouchflow
   deliver`` runs it) delivers the backlog to ``--subscribers`` subscriptions: reading the
   event log by cursor, lanes per entity, signing, settling progress per chunk.
   ``events_per_s`` = events / time until every subscriber has every event.
2. **Baseline.** The same signed bodies, already in memory, POSTed with plain
   ``httpx.AsyncClient`` at the same concurrency per subscriber: no event log, no state, no
   order per entity, no retries. ``ratio`` = ``events_per_s / baseline_events_per_s``
   (target: at least 0.5). The events go in ``--rounds`` rounds, each delivered by vouchflow
   and then by the baseline, so that a change in a shared machine's load weighs on both.
3. **Lag.** With the worker running idle (default settings, so its poll interval counts),
   ``--lag-events`` events are recorded in small transactions at a quarter of the rate just
   measured (at most ``--lag-rate``); lag = first arrival at the subscriber - time the event
   was recorded, over every delivery: ``lag_p50_s``, ``lag_p99_s``.

Every count is taken at the subscribers' end (the sandboxes' own receipts).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import admin, emit, peak_rss_mb, serving_process

BASELINE = ("plain httpx.AsyncClient per subscriber posting the same signed bodies (already in "
            "memory) with the same headers and concurrency: no event log, no state, no order "
            "per entity, no retries (a request is sent again only when its connection broke)")


@contextmanager
def subscriber_process(count: int) -> Iterator[list[tuple[str, str, str]]]:
    """Serve ``count`` subscribers in another process; yields (name, url, secret)."""
    cmd = [sys.executable, "-m", "sandbox.subscriber", "--count", str(count)]
    with serving_process(cmd) as lines:
        subs = [(name, url, secret) for _, name, url, secret in
                (line.split() for line in lines if line.startswith("subscriber "))]
        if len(subs) != count:
            raise RuntimeError("the subscriber sandboxes did not start")
        yield subs


def _admin(url: str, path: str, body: Any = None) -> Any:
    """An admin route of the subscriber sandbox serving ``url``."""
    return admin(url.rsplit("/", 1)[0], path, body)


def orders(first: int, count: int) -> list[Any]:
    from state.events import Event

    at = datetime.now(UTC)
    out = []
    for step, type_ in enumerate(("sales_order.recorded", "order_line.allocated",
                                  "order_line.delivered")):
        for n in range(first, first + count):
            out.append(Event(type=type_, entity_type="sales_order", entity_key=f"sg1:SO-{n:07d}",
                             occurred_at=at, version="1" if step else f"v{n}",
                             data={"site": "sg1", "order_id": f"SO-{n:07d}", "line_id": "1",
                                   "sku": "SKU-1", "quantity": 1, "status": "paid"}))
    return out


def record(engine: Any, events: list[Any], size: int) -> None:
    from state.db import session_scope
    from state.events import emit_events

    for start in range(0, len(events), size):
        with session_scope(engine) as s:
            emit_events(s, events[start:start + size])


async def run_worker(engine: Any, settings: Any, names: list[str], want: int,
                     during: Any = None) -> Any:
    from flows.subscribers import DeliveryWorker

    worker = DeliveryWorker(engine, settings=settings, names=names)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    side = asyncio.create_task(asyncio.to_thread(during)) if during else None
    while any(worker.totals.get(n) is None or worker.totals[n].delivered < want
              for n in names):
        if task.done():
            await task
            raise RuntimeError("the worker stopped")
        await asyncio.sleep(0.05)
    if side is not None:
        await side
    stop.set()
    await task
    return worker


async def baseline(subs: list[tuple[str, str, str]], bodies: list[tuple[str, str, bytes]],
                   concurrency: int) -> tuple[float, int]:
    """Seconds to post every body to every subscriber, and how many requests were sent again
    because their connection broke (the only retry: the work must be done)."""
    from connectors.signing import sign
    from connectors.subscriber import EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER

    resent = 0

    async def one_subscriber(url: str, secret: str) -> None:
        nonlocal resent
        queue = iter(bodies)
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency)) as client:
            async def pump() -> None:
                nonlocal resent
                for event_id, type_, body in queue:
                    while True:
                        headers = {"Content-Type": "application/json",
                                   SIGNATURE_HEADER: sign(secret, int(time.time()), body),
                                   EVENT_ID_HEADER: event_id, EVENT_TYPE_HEADER: type_}
                        try:
                            response = await client.post(url, content=body, headers=headers)
                        except httpx.TransportError:
                            resent += 1
                            continue
                        response.raise_for_status()
                        break

            await asyncio.gather(*(pump() for _ in range(concurrency)))

    started = time.perf_counter()
    await asyncio.gather(*(one_subscriber(url, secret) for _, url, secret in subs))
    return time.perf_counter() - started, resent


def received(subs: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    return [_admin(url, "/_sandbox/subscriber/received") for _, url, _ in subs]


def reset(subs: list[tuple[str, str, str]]) -> None:
    for _, url, _ in subs:
        _admin(url, "/_sandbox/reset", {})


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench deliver", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--subscribers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16,
                        help="requests in flight per subscriber (both sides)")
    parser.add_argument("--chunk-size", type=int, default=2000)
    parser.add_argument("--emit-batch", type=int, default=1000,
                        help="events recorded per transaction for the backlog")
    parser.add_argument("--lag-events", type=int, default=3000)
    parser.add_argument("--lag-rate", type=float, default=500.0,
                        help="at most this many events recorded per second in the lag phase "
                             "(and at most a quarter of the measured rate)")
    parser.add_argument("--rounds", type=int, default=40,
                        help="rounds alternating vouchflow and the baseline")
    parser.add_argument("--database-url", default=None,
                        help="state database (default: SQLite in a temporary directory)")
    args = parser.parse_args(argv)
    # a SIGTERM unwinds (so the subscriber process is stopped too) instead of killing outright
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    n_orders = max(1, args.events // 3)
    events_n = n_orders * 3
    lag_orders = max(1, args.lag_events // 3)
    with tempfile.TemporaryDirectory(prefix="vf-bench-deliver-") as tmp:
        os.environ["VOUCHFLOW_HOME"] = tmp
        os.environ.setdefault("VOUCHFLOW_DELIVERY_LEASE_S", "120")
        from flows.subscribers import DeliverySettings
        from state.crypto import Keyring
        from state.db import make_engine, session_scope, upgrade
        from state.events import latest_seq, read_events
        from state.subscriptions import create_subscription

        engine = make_engine(args.database_url or f"sqlite:///{Path(tmp) / 'state.db'}")
        upgrade(engine)
        ring = Keyring.load()
        with subscriber_process(args.subscribers) as subs:
            names = [name for name, _, _ in subs]
            with session_scope(engine) as s:
                for name, url, secret in subs:
                    create_subscription(s, ring, name=name, url=url, event_types=["*"],
                                        secret=secret, start="now")
            settings = DeliverySettings(concurrency=args.concurrency,
                                        chunk_size=args.chunk_size)
            # 1 and 2, in rounds that alternate vouchflow and the baseline, so that a change
            # in the machine's load (it is shared) weighs on both alike
            emit_s = vouchflow_s = baseline_s = 0.0
            missing = base_missing = base_resent = repeats = out_of_order = rejected = 0
            failed = 0
            per_round = max(1, min(n_orders, -(-n_orders // args.rounds)))
            for first in range(0, n_orders, per_round):
                count = min(per_round, n_orders - first)
                with session_scope(engine) as s:
                    before = latest_seq(s)
                started = time.perf_counter()
                record(engine, orders(first, count), args.emit_batch)
                emit_s += time.perf_counter() - started
                want = count * 3
                started = time.perf_counter()
                worker = asyncio.run(run_worker(engine, settings, names, want))
                vouchflow_s += time.perf_counter() - started
                failed += sum(c.failed_attempts for c in worker.totals.values())
                got = received(subs)
                missing += sum(want - len(r["received"]) for r in got)
                repeats += sum(sum(r["received"].values()) - len(r["received"]) for r in got)
                out_of_order += sum(len(r["out_of_order"]) for r in got)
                rejected += sum(r["rejections"] for r in got)
                reset(subs)
                with session_scope(engine) as s:
                    bodies = [(e.event_id, e.type, e.body())
                              for e in read_events(s, after=before, limit=want + 10)]
                seconds, resent = asyncio.run(baseline(subs, bodies, args.concurrency))
                baseline_s += seconds
                base_resent += resent
                base_missing += sum(want - len(r["received"]) for r in received(subs))
                reset(subs)
                print(f"round {first // per_round + 1}: {want} events, vouchflow "
                      f"{vouchflow_s:.1f} s, baseline {baseline_s:.1f} s (cumulated)",
                      flush=True)
            # 3. lag: the worker as deployed (default poll interval), events trickling in at
            #    a quarter of the rate it was just measured to sustain
            lag_rate = min(args.lag_rate, 0.25 * events_n / vouchflow_s)
            with session_scope(engine) as s:
                lag_from = latest_seq(s)
            trickle = orders(n_orders, lag_orders)
            step = 5

            def produce() -> None:
                start = time.perf_counter()
                for i in range(0, len(trickle), step):
                    record(engine, trickle[i:i + step], step)
                    pause = start + (i + step) / lag_rate - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)

            started = time.perf_counter()
            asyncio.run(run_worker(engine, DeliverySettings(concurrency=args.concurrency),
                                   names, len(trickle), during=produce))
            print(f"lag: {len(trickle)} events at {lag_rate:.1f}/s in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
            with session_scope(engine) as s:
                recorded_at = {e.event_id: e.recorded_at.timestamp()
                               for e in read_events(s, after=lag_from, limit=len(trickle) + 10)}
            lags = sorted(t - recorded_at[i] for r in received(subs)
                          for i, t in r["first"].items() if i in recorded_at)
    rate = events_n / vouchflow_s
    base_rate = events_n / baseline_s
    emit({
        "bench": "deliver",
        "scale": {"events": events_n, "subscribers": args.subscribers,
                  "deliveries": events_n * args.subscribers, "concurrency": args.concurrency,
                  "chunk_size": args.chunk_size, "rounds": -(-n_orders // per_round),
                  "lag_deliveries": len(lags), "lag_events_per_s": round(lag_rate, 1),
                  "database": "postgresql" if args.database_url else "sqlite"},
        "events_per_s": round(rate, 1),
        "deliveries_per_s": round(rate * args.subscribers, 1),
        "baseline_events_per_s": round(base_rate, 1),
        "ratio": round(rate / base_rate, 3),
        "ratio_is": "events_per_s / baseline_events_per_s (target >= 0.5)",
        "lag_p50_s": round(statistics.median(lags), 3) if lags else None,
        "lag_p99_s": round(lags[max(0, int(len(lags) * 0.99) - 1)], 3) if lags else None,
        "vouchflow_s": round(vouchflow_s, 3),
        "baseline_s": round(baseline_s, 3),
        "emit_events_per_s": round(events_n / emit_s, 1),
        "missing": missing,
        "baseline_missing": base_missing,
        "baseline_resent": base_resent,
        "repeats": repeats,
        "out_of_order": out_of_order,
        "rejected": rejected,
        "failed_attempts": failed,
        "peak_rss_mb": peak_rss_mb(),
        "baseline": BASELINE,
    })
    return 0
