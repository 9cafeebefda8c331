"""The state store behaves the same on SQLite and PostgreSQL (every test runs on both)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select
from sqlmodel import SQLModel

from state.db import current_revisions, head_revisions, make_engine, session_scope
from state.models import DeadLetter, LedgerStatus, OutboxMessage, RunLedger
from state.store import (
    DeadLetterItem,
    OutboxItem,
    canonical_ids,
    dead_letter_counts,
    enqueue,
    external_ids,
    fingerprint,
    get_watermark,
    ledger_done_steps,
    ledger_finish,
    ledger_start,
    list_dead_letters,
    load_fingerprints,
    mark_attempt_failed,
    mark_replayed,
    mark_sent,
    pending_outbox,
    record_dead_letters,
    resolve_dead_letters,
    save_fingerprints,
    set_watermark,
    upsert_xrefs,
)

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def test_migrations_match_the_models(engine):
    assert current_revisions(engine) == head_revisions()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


def test_watermark_round_trips_aware_and_never_moves_back(engine):
    with session_scope(engine) as s:
        assert get_watermark(s, "f", "erp", "inventoryItem") is None
        set_watermark(s, "f", "erp", T0, "inventoryItem")
    with session_scope(engine) as s:
        value = get_watermark(s, "f", "erp", "inventoryItem")
        assert value == T0 and value.tzinfo is not None
        set_watermark(s, "f", "erp", T0 - timedelta(hours=1), "inventoryItem")
        set_watermark(s, "f", "erp", T0 + timedelta(minutes=5), "sg1")
    with session_scope(engine) as s:
        assert get_watermark(s, "f", "erp", "inventoryItem") == T0
        assert get_watermark(s, "f", "erp", "sg1") == T0 + timedelta(minutes=5)


def test_xref_both_directions_and_update(engine):
    with session_scope(engine) as s:
        upsert_xrefs(s, "erp", "inventoryItem", {"1": "SKU-1", "2": "SKU-2"})
        upsert_xrefs(s, "erp", "inventoryItem", {"2": "SKU-2b"})
    with session_scope(engine) as s:
        assert canonical_ids(s, "erp", "inventoryItem", ["1", "2", "3"]) == {
            "1": "SKU-1", "2": "SKU-2b"}
        assert external_ids(s, "erp", "inventoryItem", ["SKU-2b"]) == {"SKU-2b": "2"}


def test_fingerprints_many_keys(engine):
    digests = {f"SKU-{i}": fingerprint({"n": i}) for i in range(1200)}
    with session_scope(engine) as s:
        save_fingerprints(s, "wallet:sg1", "product", digests)
        save_fingerprints(s, "wallet:sg1", "product", {"SKU-1": fingerprint({"n": "changed"})})
    with session_scope(engine) as s:
        found = load_fingerprints(s, "wallet:sg1", "product", list(digests))
        other = load_fingerprints(s, "wallet:sg2", "product", list(digests))
    assert len(found) == 1200 and other == {}
    assert found["SKU-1"] == fingerprint({"n": "changed"})
    assert found["SKU-7"] == digests["SKU-7"]


def test_fingerprint_is_stable_and_order_free():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def item(key, entity="SKU-1", target="wallet:sg1", payload=None):
    return OutboxItem(target=target, operation="product.upsert", idempotency_key=key,
                      entity_type="product", entity_key=entity, payload=payload or {"k": key})


def test_outbox_enqueue_is_idempotent_and_supersedes(engine):
    with session_scope(engine) as s:
        assert enqueue(s, [item("k1"), item("k1"), item("k2", "SKU-2")]) == 2
        assert enqueue(s, [item("k1")]) == 0  # a re-run adds nothing
    with session_scope(engine) as s:
        enqueue(s, [item("k1-v2", "SKU-1")])  # newer version of SKU-1 supersedes k1
        pending = pending_outbox(s, "wallet:sg1")
    assert [p.idempotency_key for p in pending] == ["k2", "k1-v2"]
    with session_scope(engine) as s:
        mark_sent(s, [pending[0].id], responses={pending[0].id: {"outcome": "created"}})
        mark_attempt_failed(s, [pending[1].id], "boom")
    with session_scope(engine) as s:
        rows = {r.idempotency_key: r for r in s.scalars(select(OutboxMessage))}
        remaining = pending_outbox(s, "wallet:sg1", keys=["k1-v2", "k2"])
    assert rows["k1"].status == "superseded"
    assert rows["k2"].status == "sent" and rows["k2"].response == {"outcome": "created"}
    assert rows["k2"].sent_at is not None and rows["k2"].attempts == 1
    assert rows["k1-v2"].attempts == 1 and rows["k1-v2"].last_error == "boom"
    assert [r.idempotency_key for r in remaining] == ["k1-v2"]


def test_dead_letters_upsert_instead_of_piling_up(engine):
    letter = DeadLetterItem(flow="sync_catalog", source="erp", entity_type="inventoryItem",
                            entity_key="17", reason="face_value: too many decimals",
                            payload={"id": "17"})
    with session_scope(engine) as s:
        record_dead_letters(s, [letter])
    with session_scope(engine) as s:
        record_dead_letters(s, [letter])
        record_dead_letters(s, [DeadLetterItem(**{**letter.__dict__, "entity_key": "18"})])
    with session_scope(engine) as s:
        rows = list_dead_letters(s)
        assert [(r.entity_key, r.occurrences) for r in rows] == [("17", 2), ("18", 1)]
        assert rows[0].last_seen >= rows[0].first_seen
        assert dead_letter_counts(s) == {("sync_catalog", "erp", "open"): 2}
        assert resolve_dead_letters(s, "sync_catalog", "erp", "inventoryItem", ["17"]) == 1
    with session_scope(engine) as s:
        mark_replayed(s, [rows[1].id], succeeded=[])
    with session_scope(engine) as s:
        by_key = {r.entity_key: r for r in s.scalars(select(DeadLetter))}
    assert by_key["17"].status == "resolved"
    assert by_key["18"].status == "open" and by_key["18"].replay_count == 1


def test_run_ledger_remembers_finished_steps(engine):
    with session_scope(engine) as s:
        ledger_start(s, "sync_catalog", "run-1", "chunk-a")
        ledger_finish(s, "sync_catalog", "run-1", "chunk-a", status=LedgerStatus.DONE,
                      counts={"pushed": 3})
        ledger_start(s, "sync_catalog", "run-1", "chunk-b")
    with session_scope(engine) as s:
        ledger_start(s, "sync_catalog", "run-1", "chunk-a")  # a retry must not undo "done"
        assert ledger_done_steps(s, "sync_catalog", "run-1") == {"chunk-a": {"pushed": 3}}
        assert s.scalar(select(func.count()).select_from(RunLedger)) == 2


def test_a_failed_transaction_leaves_nothing(engine):
    try:
        with session_scope(engine) as s:
            enqueue(s, [item("boom")])
            raise RuntimeError("crash before commit")
    except RuntimeError:
        pass
    with session_scope(engine) as s:
        assert pending_outbox(s, "wallet:sg1") == []


def test_sqlite_commits_are_durable_before_they_return(tmp_path):
    """A flow acts on what it committed (delivers allocated codes, posts a batch): on SQLite
    a commit must survive a crash of the machine, not only of the process."""
    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        engine.dispose()
