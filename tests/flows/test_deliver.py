"""Delivering events to subscribers, counted at the subscribers' end: at least once, in order
per entity, retries and dead letters, 429s honoured, a failing subscriber isolated, pause,
resume and removal, and secrets that stay out of logs."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import Counter
from typing import Any

from sqlalchemy import Engine

from flows.deadletters import replay
from flows.subscribers import DeliverySettings, claim, drain, release_all, worker_id
from state.db import session_scope
from state.events import covers
from state.store import list_dead_letters
from state.subscriptions import (
    SubscriptionStatus,
    remove_subscription,
    set_status,
    subscription_lags,
)
from tests.flows.subscriber_world import (
    FAST,
    check_delivery,
    covered,
    emit,
    order_events,
    recorded,
    run_worker_until,
    subscribers,
)


async def deliver_all(engine: Engine, settings: DeliverySettings = FAST,
                      names: list[str] | None = None) -> dict[str, str]:
    """One pass, as the flow does it (without Prefect): lease, chunks until caught up."""
    taken, _ = await asyncio.to_thread(claim, engine, worker_id("test"), settings, names=names)
    try:
        return await drain(taken, max_seconds=60)
    finally:
        await release_all(taken)


def test_events_reach_the_subscribers_that_cover_them_in_order(engine):
    with subscribers(engine, {"all": ["*"], "lines": ["order_line.*"]}) as subs:
        emit(engine, order_events(0, 60, per_order=4))
        states = asyncio.run(deliver_all(engine))
        assert states == {"all": "caught up", "lines": "caught up"}
        for sub in subs.values():
            check_delivery(engine, sub)
            assert max(sub.sandbox.received().values()) == 1  # no crash, no repeat
        assert len(subs["all"].sandbox.received()) == 240
        assert len(subs["lines"].sandbox.received()) == 120
        # an entity's events arrived in the order they were recorded
        seqs = [e.seq for e in recorded(engine) if e.entity_key == "sg1:SO-7"]
        assert subs["all"].sandbox.entity_order("sales_order:sg1:SO-7") == seqs
        # a second pass has nothing to send
        assert asyncio.run(deliver_all(engine)) == {"all": "caught up", "lines": "caught up"}
        assert sum(subs["all"].sandbox.received().values()) == 240
        with session_scope(engine) as s:
            assert all(lag.backlog == 0 and lag.lag_s == 0 for lag in subscription_lags(s))


def test_a_refused_event_holds_back_its_entity_becomes_a_dead_letter_and_replays(
        engine, caplog):
    caplog.set_level(logging.DEBUG)
    settings = FAST.model_copy(update={"max_attempts": 3, "trip_after": 100})
    with subscribers(engine, {"erp": ["*"]}) as subs:
        sub = subs["erp"]
        emit(engine, order_events(0, 20, per_order=3))
        bad = next(e for e in recorded(engine) if e.entity_key == "sg1:SO-5")
        # the subscriber refuses one event, and echoes its own secret while doing so
        sub.sandbox.refuse(event_ids={bad.event_id}, status=500,
                           body=f"cannot take it (secret={sub.secret})")
        while asyncio.run(deliver_all(engine, settings))["erp"] == "caught up" and \
                not _dead(engine):
            pass  # each pass retries what is due; the third failure gives up
        later = [e.event_id for e in recorded(engine) if e.entity_key == "sg1:SO-5"][1:]
        got = sub.sandbox.received()
        assert bad.event_id not in got and not set(later) & set(got)  # held back, in order
        assert len(got) == 60 - 3  # every other entity went through
        [letter] = _dead(engine)
        assert letter.entity_key == bad.event_id and letter.source == "subscriber:erp"
        assert "after 3 attempts" in letter.reason and "500" in letter.reason
        assert letter.payload["last_response"]["status"] == 500
        assert letter.payload["event_seq"] == bad.seq
        # the secret the subscriber echoed is masked wherever the answer was kept or logged
        assert sub.secret not in letter.reason + str(letter.payload)
        assert "cannot take it" in letter.reason
        with session_scope(engine) as s:
            [lag] = subscription_lags(s)
        assert (lag.dead, lag.retrying) == (1, 2)

        sub.sandbox.refuse()  # fixed on their side: the operator replays
        report = asyncio.run(replay(engine, ids=[letter.id]))
        assert (report.attempted, report.succeeded) == (1, 1)
        check_delivery(engine, sub)
        assert sub.sandbox.entity_order("sales_order:sg1:SO-5") == [
            e.seq for e in recorded(engine) if e.entity_key == "sg1:SO-5"]
        with session_scope(engine) as s:
            assert list_dead_letters(s, status="open") == []
            assert [d.status for d in list_dead_letters(s, status=None)] == ["replayed"]
            [lag] = subscription_lags(s)
        assert (lag.dead, lag.retrying, lag.backlog) == (0, 0, 0)
    assert sub.secret not in caplog.text


def _dead(engine: Engine) -> list[Any]:
    with session_scope(engine) as s:
        return list_dead_letters(s, status="open")


def test_429_waits_for_retry_after_and_is_not_a_failure(engine):
    with subscribers(engine, {"bi": ["*"]}) as subs:
        sub = subs["bi"]
        emit(engine, order_events(0, 10, per_order=1))
        sub.sandbox.throttle(retry_after=1, count=1)
        asyncio.run(deliver_all(engine, FAST.model_copy(update={"concurrency": 1})))
        check_delivery(engine, sub)
        log = [r for r in sub.sandbox.requests() if r["path"] == "/events"]
        limited = [i for i, r in enumerate(log) if r["status"] == 429]
        assert len(limited) == 1
        # nothing went to this subscriber until Retry-After had passed
        assert log[limited[0] + 1]["t"] - log[limited[0]]["t"] >= 0.95
        with session_scope(engine) as s:
            [lag] = subscription_lags(s)
        assert lag.retrying == 0 and lag.dead == 0 and lag.failing_since is None


def test_a_down_subscriber_gets_probes_only_and_catches_up_in_order(engine):
    settings = FAST.model_copy(update={"trip_after": 3, "backoff_base_s": 0.05})
    with subscribers(engine, {"up": ["*"], "down": ["*"]}) as subs:
        down = subs["down"].sandbox
        down.fail()  # 503 to everything, until cleared
        emit(engine, order_events(0, 80, per_order=3))
        states = asyncio.run(deliver_all(engine, settings))
        assert states == {"up": "caught up", "down": "down"}
        check_delivery(engine, subs["up"])
        hits = down.stats.faults["error"]
        # what was in flight, or started before the third failure came back, when it tripped
        assert 3 <= hits <= settings.concurrency + settings.trip_after
        with session_scope(engine) as s:
            lags = {lag.name: lag for lag in subscription_lags(s)}
        assert lags["down"].failing_since is not None and lags["down"].backlog > 200
        assert "503" in (lags["down"].last_error or "")
        assert lags["up"].backlog == 0 and lags["up"].failing_since is None
        # while it is down, a pass sends it one probe at most
        before = down.stats.requests
        asyncio.run(deliver_all(engine, settings, names=["down"]))
        assert down.stats.requests - before <= 1
        down.faults.clear()
        for _ in range(20):
            if asyncio.run(deliver_all(engine, settings))["down"] == "caught up":
                break
            time.sleep(settings.backoff_max_s)
        check_delivery(engine, subs["down"])
        with session_scope(engine) as s:
            lag = {lag.name: lag for lag in subscription_lags(s)}["down"]
        assert lag.failing_since is None and (lag.backlog, lag.retrying, lag.dead) == (0, 0, 0)


def test_pausing_keeps_the_backlog_and_removing_stops_delivery(engine):
    with subscribers(engine, {"crm": ["*"], "old": ["*"]}) as subs:
        with session_scope(engine) as s:
            set_status(s, "crm", SubscriptionStatus.PAUSED)
        emit(engine, order_events(0, 30, per_order=2))
        assert asyncio.run(deliver_all(engine)) == {"old": "caught up"}
        assert subs["crm"].sandbox.received() == Counter()
        with session_scope(engine) as s:
            assert {lag.name: lag.backlog for lag in subscription_lags(s)} == {"crm": 60,
                                                                              "old": 0}
            set_status(s, "crm", SubscriptionStatus.ACTIVE)
            remove_subscription(s, "old")
        emit(engine, order_events(30, 10, per_order=2))
        asyncio.run(deliver_all(engine))
        check_delivery(engine, subs["crm"])
        assert len(subs["crm"].sandbox.received()) == 80
        assert len(subs["old"].sandbox.received()) == 60  # nothing after its removal


def test_a_sandbox_day_with_one_subscriber_down_and_one_throttled(engine):
    """Three subscribers over a compressed day of sales: ``bi`` is healthy, ``crm`` is down
    for the middle third of the day, ``ledger`` answers 429 half the time. Every event reaches
    every subscriber that covers it, in order per entity; the healthy one's lag stays low."""
    day_s, batches = 4.5, 30
    spec = {"bi": ["*"], "crm": ["sales_order.*"],
            "ledger": ["order_line.*", "sales_order.recorded"]}
    with subscribers(engine, spec) as subs:
        subs["ledger"].sandbox.throttle(rate=0.5, seed=3)
        emitted: dict[str, tuple[float, str]] = {}  # event id -> (when, type)
        at_recovery: dict[str, float] = {}

        def waited(name: str, now: float) -> float:
            """How long the oldest covered event not yet at the subscriber has waited."""
            got = subs[name].sandbox.received()
            times = [t for i, (t, type_) in emitted.items()
                     if covers(subs[name].types, type_) and i not in got]
            return now - min(times) if times else 0.0

        async def day() -> None:
            start = time.monotonic()
            for batch in range(batches):
                if batch == batches // 3:
                    subs["crm"].sandbox.fail(for_s=day_s / 3)
                if batch == 2 * batches // 3:  # the outage ends: how long has each waited?
                    now = time.time()
                    at_recovery.update({n: waited(n, now) for n in subs})
                events = order_events(batch * 2, 2, per_order=3)
                await asyncio.to_thread(emit, engine, events)
                emitted.update({e.id: (time.time(), e.type) for e in events})
                await asyncio.sleep(max(0.0, start + (batch + 1) * day_s / batches
                                        - time.monotonic()))

        expected: dict[str, int] = {}

        def caught_up() -> bool:  # cheap: it runs in the worker's event loop
            if not expected:
                if len(emitted) < batches * 6:
                    return False
                expected.update({n: len(covered(engine, s)) for n, s in subs.items()})
            return all(len(s.sandbox.received()) >= expected[n] for n, s in subs.items())

        worker = asyncio.run(run_worker_until(engine, caught_up, timeout=90, during=day))
    for sub in subs.values():
        check_delivery(engine, sub)
    assert subs["crm"].sandbox.stats.faults["error"] > 0  # it really was down ...
    assert worker.totals["crm"].failed_attempts > 0
    throttled = subs["ledger"].sandbox.stats.faults["rate_limit"]  # ... and throttled
    assert throttled > len(subs["ledger"].sandbox.received()) / 4
    assert worker.totals["ledger"].rate_limited == throttled
    assert all(c.dead_lettered == 0 for c in worker.totals.values())
    # while crm was down the healthy subscriber did not wait with it: when the outage ended,
    # crm's oldest event had waited about as long as the outage, bi's far less (compared at
    # their ends, in the same run, so a busy machine slows both alike)
    outage = day_s / 3
    assert at_recovery["crm"] > outage * 0.6, at_recovery
    assert at_recovery["bi"] < at_recovery["crm"] - outage / 2, at_recovery
    # and over the day, at bi's end: first arrival - time recorded
    events = {e.event_id: e for e in recorded(engine)}
    first = subs["bi"].sandbox.first_arrivals()
    lags = sorted(first[i]["t"] - events[i].recorded_at.timestamp() for i in first)
    assert statistics.median(lags) < 1.5, lags[len(lags) // 2:][:5]
