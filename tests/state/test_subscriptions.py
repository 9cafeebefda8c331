"""Subscriptions on SQLite and PostgreSQL: secrets kept encrypted, pause/resume/remove, leases
that one worker holds at a time, progress that never moves back, lag for operators."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from canonical import now_utc
from state.crypto import Keyring
from state.db import session_scope
from state.events import Event, emit_events, read_events
from state.store import DeadLetterItem, list_dead_letters, record_dead_letters
from state.subscriptions import (
    DeliveryRow,
    SubscriptionError,
    SubscriptionNotFound,
    SubscriptionStatus,
    acquire_lease,
    create_subscription,
    dead_letter_source,
    display_url,
    get_subscription,
    list_subscriptions,
    load_secret,
    open_deliveries,
    prune_events,
    release_lease,
    remove_subscription,
    requeue,
    save_progress,
    set_status,
    subscription_lags,
    tracked_seqs,
)

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
SECRET = "whsec-test-subscriber-0001"


@pytest.fixture
def ring() -> Keyring:
    return Keyring.generate()


def add(engine: Any, ring: Keyring, name: str = "crm", **kw: Any) -> Any:
    kw.setdefault("url", "https://crm.example.com/hooks/vouchflow?token=abc123")
    kw.setdefault("event_types", ["sales_order.*"])
    with session_scope(engine) as s:
        return create_subscription(s, ring, name=name, **kw)


def emit(engine: Any, n: int, type_: str = "sales_order.recorded") -> None:
    with session_scope(engine) as s:
        emit_events(s, [Event(type_, "sales_order", f"o{i}", T0, {"i": i}, version=type_)
                        for i in range(n)])


def test_a_secret_is_stored_encrypted_and_given_back_once(engine, ring):
    sub, secret = add(engine, ring, secret=SECRET)
    assert secret.get_secret_value() == SECRET
    with engine.connect() as conn:
        dump = str(list(conn.execute(text("SELECT * FROM subscription"))))
    assert SECRET not in dump
    with session_scope(engine) as s:
        assert load_secret(s, ring, sub.id).get_secret_value() == SECRET
    _, plain = add(engine, ring, "bi")
    assert plain.get_secret_value().startswith("whsec_") and len(plain.get_secret_value()) > 30
    assert "abc123" not in sub.display_url and sub.display_url.endswith("?token=***")
    assert SECRET not in repr(sub) and "secret" not in sub.as_dict()
    assert display_url("https://u:pw@h.example:8443/p?a=1&b") == "https://h.example:8443/p?a=***&b=***"


BAD = [
    ({"name": "Bad Name"}, "must match"),
    ({"url": "ftp://x/y"}, "http"),
    ({"event_types": ["sales_orders.*"]}, "matches no known type"),
    ({"event_types": []}, "at least one event type"),
    ({"secret": "short"}, "at least 16"),
    ({"start": -1}, "start must be"),
]


def test_bad_subscriptions_are_refused_with_the_reason(engine, ring):
    for kw, message in BAD:
        with pytest.raises(SubscriptionError, match=message):
            add(engine, ring, **kw)
    with session_scope(engine) as s:
        assert list_subscriptions(s) == []


def test_names_are_unique_and_start_positions(engine, ring):
    emit(engine, 3)
    now_sub, _ = add(engine, ring, "now")
    first, _ = add(engine, ring, "first", start="beginning")
    assert now_sub.settled_seq == 3 and first.settled_seq == 0
    with pytest.raises(SubscriptionError, match="exists already"):
        add(engine, ring, "now")


def test_pause_resume_and_remove(engine, ring):
    sub, _ = add(engine, ring)
    with session_scope(engine) as s:
        assert set_status(s, "crm", SubscriptionStatus.PAUSED).status == "paused"
        assert not acquire_lease(s, sub.id, "w1", 60)  # paused: nobody delivers it
        assert [x.name for x in list_subscriptions(s, status="active")] == []
        set_status(s, "crm", SubscriptionStatus.ACTIVE)
        assert acquire_lease(s, sub.id, "w1", 60)
        save_progress(s, sub.id, "w1", settled_seq=0,
                      rows=[DeliveryRow(event_seq=1, entity="sales_order:o1", status="dead",
                                        attempts=8)],
                      failing_since=None, last_error=None, lease_ttl_s=60)
        record_dead_letters(s, [DeadLetterItem(
            flow="deliver_events", source=dead_letter_source("crm"), entity_type="event",
            entity_key="e1", reason="refused", payload=None)])
    with session_scope(engine) as s:
        remove_subscription(s, "crm")
    with session_scope(engine) as s:
        with pytest.raises(SubscriptionNotFound):
            get_subscription(s, "crm")
        assert s.execute(text("SELECT count(*) FROM subscription_delivery")).scalar() == 0
        assert list_dead_letters(s) == []  # resolved: nobody left to send it to
        with pytest.raises(SubscriptionNotFound):
            set_status(s, "crm", SubscriptionStatus.PAUSED)


def test_one_lease_holder_at_a_time_until_it_expires(engine, ring):
    sub, _ = add(engine, ring)
    with session_scope(engine) as s:
        assert acquire_lease(s, sub.id, "w1", 60)
        assert acquire_lease(s, sub.id, "w1", 60)  # renewal
        assert not acquire_lease(s, sub.id, "w2", 60)
        # w2 cannot write progress for a subscription it does not hold
        assert save_progress(s, sub.id, "w2", settled_seq=5, rows=[], failing_since=None,
                             last_error=None, lease_ttl_s=60) == "lost"
        release_lease(s, sub.id, "w1")
        assert acquire_lease(s, sub.id, "w2", -1)  # an expired lease ...
        assert acquire_lease(s, sub.id, "w3", 60)  # ... is taken over
        assert get_subscription(s, "crm").settled_seq == 0


def test_progress_never_moves_back_and_rows_round_trip(engine, ring):
    sub, _ = add(engine, ring)
    later = T0 + timedelta(minutes=1)
    with session_scope(engine) as s:
        assert acquire_lease(s, sub.id, "w1", 60)
        rows = [DeliveryRow(event_seq=4, entity="sales_order:o1", attempts=2,
                            next_attempt_at=later, last_status=503, last_error="503"),
                DeliveryRow(event_seq=6, entity="sales_order:o1"),
                DeliveryRow(event_seq=7, entity="sales_order:o2", status="dead", attempts=8)]
        assert save_progress(s, sub.id, "w1", settled_seq=10, rows=rows, failing_since=T0,
                             last_error="503 Service Unavailable", lease_ttl_s=60) == "ok"
        assert save_progress(s, sub.id, "w1", settled_seq=3, rows=[], failing_since=T0,
                             last_error=None, lease_ttl_s=60) == "ok"
        set_status(s, "crm", SubscriptionStatus.PAUSED)
        assert save_progress(s, sub.id, "w1", settled_seq=11, rows=[], failing_since=None,
                             last_error=None, lease_ttl_s=60) == "paused"
    with session_scope(engine) as s:
        assert get_subscription(s, "crm").settled_seq == 11
        assert open_deliveries(s, sub.id) == rows
        assert tracked_seqs(s, sub.id, 5, 7) == {6, 7}
        assert requeue(s, sub.id, [4, 7]) == 1  # only dead rows come back
        again = {r.event_seq: r for r in open_deliveries(s, sub.id)}
    assert again[7].status == "pending" and again[7].attempts == 0
    assert again[7].next_attempt_at is not None


def test_lag_counts_what_waits(engine, ring):
    sub, _ = add(engine, ring, event_types=["order_line.*"])
    emit(engine, 4, "order_line.allocated")
    emit(engine, 2, "sku.changed")  # not covered
    with session_scope(engine) as s:
        [lag] = subscription_lags(s)
        assert (lag.backlog, lag.retrying, lag.dead) == (4, 0, 0)
        assert lag.lag_s >= 0 and lag.oldest_undelivered_at is not None
        assert acquire_lease(s, sub.id, "w1", 60)
        save_progress(s, sub.id, "w1", settled_seq=6,
                      rows=[DeliveryRow(event_seq=2, entity="sales_order:o1", attempts=1)],
                      failing_since=T0, last_error="no answer", lease_ttl_s=60)
    with session_scope(engine) as s:
        [lag] = subscription_lags(s)
        assert (lag.backlog, lag.retrying, lag.dead) == (0, 1, 0)
        assert lag.failing_since == T0 and lag.as_dict()["url"] == sub.display_url


def _age(engine: Any, seqs: range, days: int) -> None:
    with session_scope(engine) as s:
        s.execute(text("UPDATE outbound_event SET recorded_at = :t WHERE seq BETWEEN :a AND :b"),
                  {"t": now_utc() - timedelta(days=days), "a": seqs.start, "b": seqs.stop - 1})


def _seqs(engine: Any) -> list[int]:
    with session_scope(engine) as s:
        return [e.seq for e in read_events(s, after=0, limit=1000)]


def test_prune_deletes_only_old_events_no_subscription_still_needs(engine, ring):
    crm, _ = add(engine, ring, "crm", event_types=["sales_order.*"], start="beginning")
    bi, _ = add(engine, ring, "bi", event_types=["sku.changed"], start="beginning")
    add(engine, ring, "every", event_types=["*"], start="beginning")
    emit(engine, 4)  # 1-4
    emit(engine, 3, "sku.changed")  # 5-7
    emit(engine, 2, "vendor_bill.created")  # 8-9: nobody covers them once "every" is gone
    emit(engine, 1, "purchase_order.created")  # 10: recent
    _age(engine, range(1, 10), days=40)
    with session_scope(engine) as s:
        assert acquire_lease(s, crm.id, "w1", 60) and acquire_lease(s, bi.id, "w1", 60)
        save_progress(s, crm.id, "w1", settled_seq=3, rows=[
            DeliveryRow(event_seq=1, entity="sales_order:o0", status="delivered", attempts=2),
            DeliveryRow(event_seq=2, entity="sales_order:o1", status="dead", attempts=8)],
            failing_since=None, last_error=None, lease_ttl_s=60)
        save_progress(s, bi.id, "w1", settled_seq=5, rows=[], failing_since=None,
                      last_error=None, lease_ttl_s=60)
        set_status(s, "bi", SubscriptionStatus.PAUSED)  # paused: its cursor still counts
        set_status(s, "every", SubscriptionStatus.PAUSED)
    with session_scope(engine) as s:  # "every" has read nothing: nothing may go
        report = prune_events(s, older_than=timedelta(days=30))
    assert (report.total, report.kept) == (0, 9) and _seqs(engine) == list(range(1, 11))
    with session_scope(engine) as s:
        remove_subscription(s, "every")
    with session_scope(engine) as s:
        report = prune_events(s, older_than=timedelta(days=30))
    assert report.deleted == {"sales_order.recorded": 2, "sku.changed": 1,
                              "vendor_bill.created": 2}
    assert report.kept == 4  # 2 (dead for crm), 4 (after crm's cursor), 6-7 (after bi's)
    assert _seqs(engine) == [2, 4, 6, 7, 10]
    with session_scope(engine) as s:
        assert open_deliveries(s, crm.id)[0].event_seq == 2  # still replayable
        assert s.execute(text("SELECT count(*) FROM subscription_delivery "
                              "WHERE status = 'delivered'")).scalar() == 0
        assert prune_events(s, older_than=timedelta(days=30)).total == 0  # again: nothing
        # what each subscription still has to deliver is all there
        assert [e.seq for e in read_events(s, after=1, patterns=["sales_order.*"])] == [2, 4]
        assert [e.seq for e in read_events(s, after=5, patterns=["sku.changed"])] == [6, 7]
    emit(engine, 1, "sku.changed")
    assert _seqs(engine)[-1] == 11  # numbers are never given out again
    with session_scope(engine) as s:
        assert prune_events(s, older_than=timedelta(0)).deleted == {"purchase_order.created": 1}
