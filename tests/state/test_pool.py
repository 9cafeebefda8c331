"""The code pool on SQLite and PostgreSQL: what is sold, in which order, and what comes back.

Every test runs on both databases (the ``engine`` fixture); the multi-process tests live in
``test_pool_concurrency.py``.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

import state.pool as pool
from canonical import CodeStatus
from state.crypto import Keyring
from state.db import session_scope
from state.pool import (
    CodeNotDeliverable,
    PoolError,
    add_batch,
    add_codes,
    allocate,
    code_history,
    codes_for_delivery,
    delivery_key,
    expire_codes,
    find_code,
    line_ref,
    mark_delivered,
    mark_inbound_processed,
    mark_posted,
    order_status,
    record_inbound,
    record_orders,
    refund,
    stock,
    unprocessed_inbound,
    upsert_batch,
)

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
TODAY = date(2026, 11, 22)


@pytest.fixture
def ring() -> Keyring:
    return Keyring.generate()


def batch(engine: Any, batch_no: str, sku: str, mode: str = "code_pool", **kw: Any) -> None:
    with session_scope(engine) as s:
        add_batch(s, batch_no=batch_no, sku=sku, issuance_mode=mode,
                  unit_cost=kw.pop("unit_cost", Decimal("1.2500")), currency="EUR", **kw)


def codes(engine: Any, ring: Keyring, batch_no: str, values: list[Any], **kw: Any) -> Any:
    items = [v if isinstance(v, tuple) else (v, None, None) for v in values]
    return add_codes(engine, batch_no, items, ring, actor="vendor:acme", system="portal", **kw)


def order(site: str, order_id: str, lines: list[tuple[str, str, int]], *, at: datetime = T0,
          updated: datetime | None = None, status: str = "paid") -> dict[str, Any]:
    return {"site": site, "order_id": order_id, "status": status, "created_at": at,
            "updated_at": updated or at, "currency": "EUR", "customer_ref": "c-1",
            "payment": {"method": "card", "amount": "10.00"},
            "lines": [{"line_id": lid, "sku": sku, "quantity": q, "unit_price": "4.95"}
                      for lid, sku, q in lines]}


def record(engine: Any, *orders: dict[str, Any]) -> Any:
    with session_scope(engine) as s:
        return record_orders(s, orders)


def run(engine: Any, **kw: Any) -> pool.AllocationReport:
    kw.setdefault("today", TODAY)
    return allocate(engine, **kw)


def rows(engine: Any, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params))


def codes_of(engine: Any, ref: str) -> list[int]:
    return [r[0] for r in rows(engine, "SELECT id FROM pool_code WHERE line_ref = :r ORDER BY unit",
                               r=ref)]


def batch_row(engine: Any, batch_no: str) -> Any:
    return rows(engine, "SELECT * FROM pool_batch WHERE batch_no = :b", b=batch_no)[0]


def line_row(engine: Any, site: str, order_id: str, line_id: str) -> Any:
    return rows(engine, "SELECT * FROM order_line WHERE site = :s AND order_id = :o "
                        "AND line_id = :l", s=site, o=order_id, l=line_id)[0]


def deliveries(engine: Any) -> list[Any]:
    return rows(engine, "SELECT * FROM outbox WHERE operation = 'order.delivery' ORDER BY id")


# codes in ------------------------------------------------------------------------------------
def test_codes_and_pins_are_never_stored_in_clear(engine, ring):
    batch(engine, "B1", "SKU1")
    values = [("GIFT-AAAA-0001", "9911", None), ("GIFT-AAAA-0002", None, date(2027, 1, 31))]
    report = codes(engine, ring, "B1", values)
    assert report.added == 2 and report.refused == 0
    raw = rows(engine, "SELECT * FROM pool_code ORDER BY id")
    dump = json.dumps([list(r) for r in raw], default=str)
    assert "GIFT-AAAA" not in dump and "9911" not in dump
    assert [r.code_hash for r in raw] == [ring.hash_code(c) for c, _, _ in values]
    assert [r.last4 for r in raw] == ["0001", "0002"]
    assert raw[0].pin_enc is not None and raw[1].pin_enc is None
    assert ring.decrypt(raw[0].code_enc) == "GIFT-AAAA-0001"
    assert rows(engine, "SELECT count(*) FROM code_event WHERE detail LIKE '%GIFT%'")[0][0] == 0
    with session_scope(engine) as s:
        found = find_code(s, " GIFT-AAAA-0002 ", ring)
        assert found.id == raw[1].id and found.status == "in_stock"
        assert not hasattr(found, "code_enc")
        assert find_code(s, "gift-aaaa-0002", ring) is None  # codes are case-sensitive


def test_duplicate_codes_are_refused_with_their_positions(engine, ring):
    batch(engine, "B1", "SKU1")
    batch(engine, "B2", "SKU1")
    report = codes(engine, ring, "B1", ["CODE-000001", "CODE-000002", "CODE-000001", "",
                                        "CODE-000003", " CODE-000002 ", "CODE-000004"],
                   chunk_size=2)
    assert (report.received, report.added, report.refused) == (7, 4, 3)
    assert [(r.position, r.masked, r.reason) for r in report.refusals] == [
        (3, "*******0001", "repeats position 1 of this upload"),
        (4, "", "empty code"),
        (6, "*******0002", "repeats position 2 of this upload"),
    ]
    again = codes(engine, ring, "B2", ["CODE-000004", "CODE-000005", "CODE-000005"])
    assert again.added == 1
    assert [(r.position, r.reason) for r in again.refusals] == [
        (1, "already in the pool (batch B1)"), (3, "repeats position 2 of this upload")]
    assert "CODE-0000" not in repr(report) + repr(again)
    assert rows(engine, "SELECT count(*) FROM pool_code")[0][0] == 5


def test_receiving_codes_raises_the_batch_and_logs_each_code(engine, ring):
    batch(engine, "B1", "SKU1")
    codes(engine, ring, "B1", [f"RCV-{i:04d}" for i in range(7)], chunk_size=3)
    b = batch_row(engine, "B1")
    assert (b.quantity, b.remaining, b.available, b.unposted, b.status) == (7, 7, 7, 0, "active")
    # one receipt a chunk (3 + 3 + 1 codes), named by each code: the first entry of its
    # chronology, with no event row a code
    receipts = rows(engine, "SELECT r.id, r.batch_no, r.actor, r.system, count(c.id) "
                            "FROM code_receipt r JOIN pool_code c ON c.receipt_id = r.id "
                            "GROUP BY r.id, r.batch_no, r.actor, r.system ORDER BY r.id")
    assert [tuple(r)[1:] for r in receipts] == [("B1", "vendor:acme", "portal", 3)] * 2 + [
        ("B1", "vendor:acme", "portal", 1)]
    assert rows(engine, "SELECT count(*) FROM code_event")[0][0] == 0
    with session_scope(engine) as s:
        for (code_id,) in rows(engine, "SELECT id FROM pool_code"):
            assert [(e.action, e.from_status, e.to_status, e.actor, e.system, e.detail)
                    for e in code_history(s, code_id)] == [
                ("receive", None, CodeStatus.IN_STOCK, "vendor:acme", "portal", "batch B1")]
    again = codes(engine, ring, "B1", ["RCV-0001", "RCV-0002"])  # nothing new: no receipt
    assert (again.added, again.refused) == (0, 2)
    assert rows(engine, "SELECT count(*) FROM code_receipt")[0][0] == 3
    with pytest.raises(PoolError, match="unknown batch NOPE"):
        codes(engine, ring, "NOPE", ["X-1"])
    batch(engine, "A1", "API1", mode="api", quantity=10)
    with pytest.raises(PoolError, match="API batch"):
        codes(engine, ring, "A1", ["X-1"])



def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("add-codes")]


def test_an_error_in_the_writer_stops_the_chunks_behind_it(engine, ring, monkeypatch):
    """Chunks are written by one thread while the next ones are prepared; when one fails, the
    chunks queued behind it are not written, the error reaches the caller, no thread is left."""
    batch(engine, "B1", "SKU1")
    real, written = pool._write_chunk, []
    third_queued = threading.Event()

    def flaky(*args: Any, **kwargs: Any) -> None:
        written.append(args[2].chunk[0][0])  # the chunk's first position
        if len(written) == 2:
            assert third_queued.wait(10)
            raise ConnectionError("database went away")
        real(*args, **kwargs)

    def items() -> Any:
        for i in range(1, 11):
            if i == 7:  # chunks of two: the third was handed to the writer before this
                third_queued.set()
            yield (f"PIPE-{i:04d}", None, None)

    monkeypatch.setattr(pool, "_write_chunk", flaky)
    with pytest.raises(ConnectionError, match="database went away"):
        add_codes(engine, "B1", items(), ring, actor="t", system="t", chunk_size=2)
    assert written == [1, 3]  # the third chunk (positions 5-6) was queued, never written
    assert not _writer_threads()
    assert rows(engine, "SELECT count(*) FROM pool_code")[0][0] == 2
    assert batch_row(engine, "B1").quantity == 2


def test_an_error_reading_the_codes_keeps_whole_chunks(engine, ring):
    """The input breaking off midway: the chunks handed over are whole in the pool (codes,
    receipts and quantities agree), the error reaches the caller, no thread is left."""
    batch(engine, "B1", "SKU1")

    def items() -> Any:
        for i in range(1, 10):
            yield (f"READ-{i:04d}", None, None)
        raise OSError("the file went away")

    with pytest.raises(OSError, match="went away"):
        add_codes(engine, "B1", items(), ring, actor="t", system="t", chunk_size=2)
    assert not _writer_threads()
    stored = rows(engine, "SELECT count(*) FROM pool_code")[0][0]
    receipts = rows(engine, "SELECT count(*) FROM code_receipt")[0][0]
    assert stored % 2 == 0 and stored == 2 * receipts and stored <= 8
    assert batch_row(engine, "B1").quantity == stored


def test_codes_sent_in_one_statement_leave_the_connections_as_they_were(pg_engine, ring,
                                                                        monkeypatch):
    """PostgreSQL writes a chunk as one statement outside a transaction, committed without
    waiting for the disk: neither setting outlives it on the pooled connection."""
    batch(pg_engine, "B1", "SKU1")
    used: list[Any] = []
    real_close = pool._Direct.close

    def close(direct: pool._Direct) -> None:
        if direct.conn is not None:
            used.append(direct.conn.connection.driver_connection)
        real_close(direct)

    monkeypatch.setattr(pool._Direct, "close", close)
    report = codes(pg_engine, ring, "B1", [f"CONN-{i:04d}" for i in range(5)], chunk_size=2)
    assert report.added == 5 and len(used) == 1
    writer = used[0]  # the writer's connection, back in the pool
    assert writer.autocommit is False
    assert writer.execute("SHOW synchronous_commit").fetchone()[0] == "on"
    writer.rollback()
    with pg_engine.connect() as conn:
        assert conn.execute(text("SHOW synchronous_commit")).scalar() == "on"


def test_codes_committed_without_waiting_for_the_disk_are_on_it_when_add_codes_returns(
        pg_engine, ring, monkeypatch):
    """The chunks commit without waiting for the disk; before add_codes returns, one ordinary
    commit on the same connection flushes the log past every one of them."""
    batch(pg_engine, "B1", "SKU1")
    flushes: list[tuple[bool, int]] = []
    real_durable = pool._Direct.durable

    def durable(direct: pool._Direct, batch_no: str) -> None:
        assert direct.conn is not None
        driver = direct.conn.connection.driver_connection
        written = driver.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
        real_durable(direct, batch_no)
        flushed = driver.execute("SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), %s) >= 0",
                                 (written,)).fetchone()[0]
        stored = driver.execute("SELECT count(*) FROM pool_code").fetchone()[0]
        flushes.append((flushed, stored))

    monkeypatch.setattr(pool._Direct, "durable", durable)
    report = codes(pg_engine, ring, "B1", [f"DISK-{i:04d}" for i in range(7)], chunk_size=2)
    assert report.added == 7
    assert flushes == [(True, 7)]  # once, after the last chunk, and the log was on disk


def test_ids_come_back_to_their_codes_in_any_order(pg_engine, ring, monkeypatch):
    """Should the database hand a chunk's ids back out of input order, each is placed by its
    code's hash: a later repeat still names the right first position."""
    batch(pg_engine, "B1", "SKU1")
    monkeypatch.setattr(pool, "_PG_INSERT_NEW_CODES", pool._PG_INSERT_NEW_CODES.replace(
        "string_agg(id::text, ',')", "string_agg(id::text, ',' ORDER BY id DESC)"))
    report = codes(pg_engine, ring, "B1", ["ORD-0001", "ORD-0002", "ORD-0003", "ORD-0004",
                                           "ORD-0003", "ORD-0001"], chunk_size=4)
    assert report.added == 4
    assert [(r.position, r.reason) for r in report.refusals] == [
        (5, "repeats position 3 of this upload"), (6, "repeats position 1 of this upload")]
    stored = rows(pg_engine, "SELECT code_hash FROM pool_code ORDER BY id")
    assert [r.code_hash for r in stored] == [ring.hash_code(f"ORD-000{i}") for i in range(1, 5)]


def test_the_report_knows_the_latest_expiry_it_added(engine, ring):
    """However a chunk is stored (one statement, around a code already in the pool, under a
    limit), the report's latest expiry rank is the latest of the codes added: what closing
    an upload's batch would otherwise look for among all the pool's codes."""
    for name in ("B0", "B1", "B2", "B3"):
        batch(engine, name, "SKU1")
    codes(engine, ring, "B0", [("OLD-0001", None, date(2031, 1, 1))])

    def latest_stored(batch_no: str) -> int:
        return rows(engine, "SELECT max(expiry_rank) FROM pool_code WHERE batch_no = :b",
                    b=batch_no)[0][0]

    report = codes(engine, ring, "B1", [
        ("NEW-0001", None, date(2027, 1, 1)), ("NEW-0002", None, date(2028, 2, 2)),
        ("OLD-0001", None, date(2031, 1, 1)), ("NEW-0003", None, date(2027, 3, 3))],
        chunk_size=2)
    assert report.added == 3
    assert report.latest_rank == pool.expiry_rank(date(2028, 2, 2)) == latest_stored("B1")
    limited = codes(engine, ring, "B2", [
        ("LIM-0001", None, date(2027, 1, 1)), ("LIM-0002", None, date(2029, 9, 9)),
        ("LIM-0003", None, date(2030, 1, 1))], limit=2)
    assert limited.added == 2
    assert limited.latest_rank == pool.expiry_rank(date(2029, 9, 9)) == latest_stored("B2")
    undated = codes(engine, ring, "B3", [("UND-0001", None, date(2027, 1, 1)),
                                         ("UND-0002", None, None)])
    assert undated.latest_rank == pool.NO_EXPIRY_RANK == latest_stored("B3")
    assert codes(engine, ring, "B3", ["UND-0001"]).latest_rank is None  # nothing added


def test_a_code_always_names_a_batch_that_exists(engine, ring):
    """The database keeps codes and batches together (triggers, checked per statement)."""
    batch(engine, "B1", "SKU1")
    batch(engine, "B2", "SKU1")
    batch(engine, "EMPTY", "SKU1")
    codes(engine, ring, "B1", ["REF-1", "REF-2"])
    columns = ("code_hash, code_enc, last4, sku, batch_no, status, expiry_rank, batch_seq, "
               "updated_at")
    values = "'h{n}', 'x', '0001', 'SKU1', '{b}', 'in_stock', 1, 1, CURRENT_TIMESTAMP"
    broken = [
        f"INSERT INTO pool_code ({columns}) VALUES ({values.format(n=1, b='B1')}), "
        f"({values.format(n=2, b='NOPE')})",
        "UPDATE pool_code SET batch_no = 'NOPE' WHERE last4 = 'EF-1'",
        "DELETE FROM pool_batch WHERE batch_no = 'B1'",
        "UPDATE pool_batch SET batch_no = 'B9' WHERE batch_no = 'B1'",
    ]
    for statement in broken:
        with pytest.raises(IntegrityError), session_scope(engine) as s:
            s.execute(text(statement))
    with session_scope(engine) as s:  # what keeps the rule goes through
        s.execute(text("UPDATE pool_code SET batch_no = 'B2' WHERE last4 = 'EF-1'"))
        s.execute(text("UPDATE pool_batch SET batch_no = 'GONE' WHERE batch_no = 'EMPTY'"))
        s.execute(text("DELETE FROM pool_batch WHERE batch_no = 'GONE'"))
    assert rows(engine, "SELECT batch_no, count(*) FROM pool_code GROUP BY batch_no "
                        "ORDER BY batch_no") == [("B1", 1), ("B2", 1)]

# allocation ----------------------------------------------------------------------------------
def test_allocation_order_is_earliest_expiry_then_oldest_batch_then_id(engine, ring):
    batch(engine, "OLD", "SKU1")  # received first, never expires
    batch(engine, "MID", "SKU1", expiry_type="fixed_date", expires_on=date(2027, 6, 30))
    batch(engine, "NEW", "SKU1")  # received last, never expires
    codes(engine, ring, "NEW", ["N-0001", "N-0002"])
    codes(engine, ring, "OLD", ["O-0001", "O-0002"])
    codes(engine, ring, "MID", ["M-0001", ("M-0002", None, date(2027, 3, 1))])
    record(engine, order("sg1", "o1", [("1", "SKU1", 6)]))
    report = run(engine)
    assert report.codes_allocated == 6 and report.orders_allocated == 1
    with session_scope(engine) as s:
        ids = codes_of(engine, "sg1:o1:1")
        got = [c for c, _, _ in codes_for_delivery(s, ids, ring)]
    assert got == ["M-0002", "M-0001", "O-0001", "O-0002", "N-0001", "N-0002"]
    units = rows(engine, "SELECT unit FROM pool_code WHERE line_ref = 'sg1:o1:1' ORDER BY unit")
    assert [u for (u,) in units] == [1, 2, 3, 4, 5, 6]


def test_orders_are_served_oldest_first(engine, ring):
    batch(engine, "B1", "SKU1")
    codes(engine, ring, "B1", ["F-0001", "F-0002"])
    record(engine, order("sg1", "late", [("1", "SKU1", 1)], at=T0 + timedelta(minutes=5)),
           order("my1", "early", [("1", "SKU1", 1)], at=T0))
    run(engine, chunk_lines=1)
    assert codes_of(engine, "my1:early:1") < codes_of(engine, "sg1:late:1")


def test_an_order_is_filled_all_or_nothing_and_held_with_the_reason(engine, ring):
    batch(engine, "B1", "SKU1")
    batch(engine, "B2", "SKU2")
    codes(engine, ring, "B1", [f"A-{i:04d}" for i in range(5)])
    codes(engine, ring, "B2", ["B-0001"])
    record(engine, order("sg1", "o1", [("1", "SKU1", 2), ("2", "SKU2", 3), ("3", "NOSKU", 1)]),
           order("sg1", "o2", [("1", "SKU1", 4)], at=T0 + timedelta(seconds=1)))
    report = run(engine)
    assert (report.orders_allocated, report.orders_held, report.codes_allocated) == (1, 1, 4)
    reason = ("SKU SKU2: 3 wanted, 1 in stock; "
              "SKU NOSKU: 1 wanted, 0 in stock (no active batch sells it)")
    assert report.held == [pool.HeldOrder("sg1", "o1", reason)]
    # nothing of o1 was taken: its SKU1 units went to the next order
    assert codes_of(engine, "sg1:o1:1") == [] and len(codes_of(engine, "sg1:o2:1")) == 4
    lines = {r.line_id: r for r in rows(engine, "SELECT * FROM order_line WHERE order_id = 'o1'")}
    assert {k: (v.status, v.held_reason) for k, v in lines.items()} == {
        "1": ("held", f"held with its order: {reason}"),
        "2": ("held", "SKU SKU2: 3 wanted, 1 in stock"),
        "3": ("held", "SKU NOSKU: 1 wanted, 0 in stock (no active batch sells it)"),
    }
    assert rows(engine, "SELECT held_reason FROM sales_order WHERE order_id = 'o1'")[0][0] == reason
    assert batch_row(engine, "B2").available == 1
    assert len(deliveries(engine)) == 1
    with session_scope(engine) as s:
        held = order_status(s, held_only=True)
    assert [(o.order_id, o.held_reason) for o in held] == [("o1", reason)]
    assert {ln.line_id: ln.status for ln in held[0].lines} == {"1": "held", "2": "held",
                                                              "3": "held"}


def test_held_orders_are_retried_after_new_stock(engine, ring):
    batch(engine, "B1", "SKU1")
    codes(engine, ring, "B1", ["H-0001"])
    record(engine, order("sg1", "o1", [("1", "SKU1", 3)]))
    assert run(engine).orders_held == 1
    assert run(engine).orders_processed == 0  # held orders wait for retry_held
    codes(engine, ring, "B1", ["H-0002"])
    assert run(engine, retry_held=True).orders_held == 1  # still short: held again
    assert "3 wanted, 2 in stock" in line_row(engine, "sg1", "o1", "1").held_reason
    batch(engine, "B9", "SKU1")
    codes(engine, ring, "B9", ["H-0003"])
    report = run(engine, retry_held=True)
    assert report.orders_allocated == 1 and report.codes_allocated == 3
    line = line_row(engine, "sg1", "o1", "1")
    assert (line.status, line.held_reason) == ("allocated", None)
    assert rows(engine, "SELECT held_reason FROM sales_order")[0][0] is None


def test_api_lines_take_from_batches_first_in_first_out(engine):
    batch(engine, "A1", "API1", mode="api", quantity=3)
    batch(engine, "A2", "API1", mode="api", quantity=5)
    batch(engine, "A3", "API1", mode="api", quantity=5)
    record(engine, order("sg1", "o1", [("1", "API1", 2)]),
           order("sg1", "o2", [("1", "API1", 4)], at=T0 + timedelta(seconds=1)),
           order("sg1", "o3", [("1", "API1", 9)], at=T0 + timedelta(seconds=2)))
    report = run(engine)
    assert (report.orders_allocated, report.api_units, report.orders_held) == (2, 6, 1)
    taken = rows(engine, "SELECT order_id, batch_no, quantity FROM api_allocation "
                         "ORDER BY order_id, batch_no")
    assert [tuple(r) for r in taken] == [("o1", "A1", 2), ("o2", "A1", 1), ("o2", "A2", 3)]
    a1, a2 = batch_row(engine, "A1"), batch_row(engine, "A2")
    assert (a1.available, a1.unposted, a1.status) == (0, 3, "sold_out")
    assert (a2.available, a2.unposted, a2.status) == (2, 3, "active")
    assert "SKU API1: 9 wanted, 7 available" in report.held[0].reason
    assert deliveries(engine) == []  # API codes come from the supplier at sale, not the pool
    assert line_row(engine, "sg1", "o1", "1").issuance_mode == "api"


def test_a_code_pool_batch_sells_out(engine, ring):
    batch(engine, "B1", "SKU1")
    batch(engine, "B2", "SKU1")
    codes(engine, ring, "B1", ["S-0001", "S-0002"])
    codes(engine, ring, "B2", ["S-0003", "S-0004"])
    record(engine, order("sg1", "o1", [("1", "SKU1", 3)]))
    run(engine)
    b1, b2 = batch_row(engine, "B1"), batch_row(engine, "B2")
    assert (b1.available, b1.status, b2.available, b2.status) == (0, "sold_out", 1, "active")
    with session_scope(engine) as s:
        (sku,) = stock(s, "SKU1", on=TODAY)
    assert (sku.available, sku.remaining, sku.unposted) == (1, 4, 3)


def test_the_same_order_twice_is_allocated_once(engine, ring):
    batch(engine, "B1", "SKU1")
    codes(engine, ring, "B1", [f"T-{i:04d}" for i in range(10)])
    first = order("sg1", "o1", [("1", "SKU1", 2), ("2", "SKU1", 1)])
    assert record(engine, first).changed == 1
    assert run(engine).codes_allocated == 3
    again = record(engine, first, first)  # the webhook delivered twice more
    assert (again.changed, again.stale) == (0, 2)
    assert run(engine).codes_allocated == 0
    assert rows(engine, "SELECT count(*) FROM pool_code WHERE status = 'allocated'")[0][0] == 3
    assert len(deliveries(engine)) == 2
    assert batch_row(engine, "B1").available == 7


def test_an_older_version_never_rolls_an_order_back(engine, ring):
    batch(engine, "B1", "SKU1")
    codes(engine, ring, "B1", [f"V-{i:04d}" for i in range(10)])
    v2 = order("sg1", "o1", [("1", "SKU1", 3)], updated=T0 + timedelta(minutes=2))
    v1 = order("sg1", "o1", [("1", "SKU1", 1)], updated=T0 + timedelta(minutes=1),
               status="pending")
    assert record(engine, v2).changed == 1
    assert record(engine, v1).stale == 1  # arrived late: ignored
    bad = order("sg1", "o3", [("1", "SKU1", 1)])
    bad["lines"][0]["unit_price"] = "4.99999"
    with pytest.raises(PoolError, match=r"o3 line 1 unit price: 4\.99999"):
        record(engine, bad)
    assert line_row(engine, "sg1", "o1", "1").quantity == 3
    assert rows(engine, "SELECT status FROM sales_order")[0][0] == "paid"
    # a cancellation stops lines not yet allocated...
    record(engine, order("sg1", "o2", [("1", "SKU1", 1)]))
    record(engine, order("sg1", "o2", [("1", "SKU1", 1)], status="cancelled",
                         updated=T0 + timedelta(minutes=3)))
    assert line_row(engine, "sg1", "o2", "1").status == "cancelled"
    run(engine)
    assert codes_of(engine, "sg1:o2:1") == []
    # ...but never touches an allocation (that is a refund's job)
    record(engine, order("sg1", "o1", [("1", "SKU1", 3)], status="refunded",
                         updated=T0 + timedelta(minutes=4)))
    assert line_row(engine, "sg1", "o1", "1").status == "allocated"
    assert len(codes_of(engine, "sg1:o1:1")) == 3


# delivery and refunds ------------------------------------------------------------------------
def test_deliveries_are_outbox_rows_with_code_ids_only(engine, ring):
    batch(engine, "B1", "SKU1")
    codes(engine, ring, "B1", ["D-0001", "D-0002", "D-0003"])
    record(engine, order("sg1", "o1", [("1", "SKU1", 2)]),
           order("my1", "ord/7:x", [("a b", "SKU1", 1)], at=T0 + timedelta(seconds=1)))
    run(engine)
    out = deliveries(engine)
    assert out[1].entity_key == "my1:ord/7%3Ax:a b"
    assert len(codes_of(engine, "my1:ord/7%3Ax:a b")) == 1
    first = out[0]
    assert (first.target, first.idempotency_key, first.entity_type, first.entity_key,
            first.status) == ("wallet:sg1", "delivery-sg1-o1-1", "order_line", "sg1:o1:1",
                              "pending")
    assert json.loads(out[0].payload) == {"site": "sg1", "order_id": "o1", "line_id": "1",
                                          "sku": "SKU1", "code_ids": codes_of(engine, "sg1:o1:1")}
    assert out[1].idempotency_key.startswith("delivery-my1-ord_7_x-a_b-h")
    assert "D-000" not in json.dumps([list(r) for r in out], default=str)
    with session_scope(engine) as s:
        sent = codes_for_delivery(s, json.loads(out[0].payload)["code_ids"], ring)
        assert sent == [("D-0001", None, None), ("D-0002", None, None)]
        assert mark_delivered(s, "sg1", "o1", "1", json.loads(out[0].payload)["code_ids"]) == 2
        assert mark_delivered(s, "sg1", "o1", "1", json.loads(out[0].payload)["code_ids"]) == 0
    assert {r.status for r in rows(engine, "SELECT status FROM pool_code "
                                           "WHERE line_ref = 'sg1:o1:1'")} == {"sold"}


def test_line_references_and_delivery_keys_are_never_shared():
    assert line_ref("sg1", "O1", "1") == "sg1:O1:1"
    assert line_ref("sg1", "a:b", "c") != line_ref("sg1", "a", "b:c")
    assert line_ref("sg1", "50%:x", "1") == "sg1:50%25%3Ax:1"


def test_delivery_keys_are_safe_and_never_shared():
    assert delivery_key("sg1", "O123", "1") == "delivery-sg1-O123-1"
    a, b = delivery_key("sg1", "a-b", "c"), delivery_key("sg1", "a", "b-c")
    assert a != b
    for key in (a, b, delivery_key("sg1", "x" * 300, "é/1")):
        assert len(key) <= 255 and all(ch.isalnum() or ch in "_-" for ch in key)
        assert key.isascii()


def test_days_after_sale_expiry_starts_at_allocation(engine, ring):
    batch(engine, "B1", "SKU1", expiry_type="days_after_sale", expiry_days=30)
    codes(engine, ring, "B1", ["E-0001"])
    record(engine, order("sg1", "o1", [("1", "SKU1", 1)]))
    run(engine)
    allocated_at = rows(engine, "SELECT allocated_at FROM pool_code")[0][0]
    allocated_on = (allocated_at if isinstance(allocated_at, datetime)
                    else datetime.fromisoformat(str(allocated_at))).date()
    with session_scope(engine) as s:
        ((_, _, expires),) = codes_for_delivery(s, codes_of(engine, "sg1:o1:1"), ring)
    assert expires == allocated_on + timedelta(days=30)


def test_refund_of_undelivered_codes_puts_them_back_in_stock(engine, ring):
    batch(engine, "B1", "SKU1")
    codes(engine, ring, "B1", [f"R-{i:04d}" for i in range(5)])
    record(engine, order("sg1", "o1", [("1", "SKU1", 3)]))
    run(engine)
    ids = codes_of(engine, "sg1:o1:1")
    with session_scope(engine) as s:
        result = refund(s, "sg1", "o1", "1", 2, delivered=False, refund_id="rf-1")
    assert (result.applied, result.to_stock, result.blocked) == (True, 2, 0)
    assert set(result.code_ids) == set(ids[1:])  # the highest units go first
    back = rows(engine, "SELECT status, line_ref, unit FROM pool_code WHERE id IN (:a, :b)",
                a=ids[1], b=ids[2])
    assert {tuple(r) for r in back} == {("in_stock", None, None)}
    b = batch_row(engine, "B1")
    assert (b.available, b.unposted) == (4, 1)
    assert line_row(engine, "sg1", "o1", "1").refunded == 2
    # the pending delivery no longer carries the refunded codes
    pending = [r for r in deliveries(engine) if r.status == "pending"]
    assert len(pending) == 1 and json.loads(pending[0].payload)["code_ids"] == ids[:1]
    with session_scope(engine) as s:
        with pytest.raises(CodeNotDeliverable):
            codes_for_delivery(s, ids, ring)
        again = refund(s, "sg1", "o1", "1", 2, delivered=False, refund_id="rf-1")
    assert (again.applied, again.to_stock) == (False, 2)
    assert batch_row(engine, "B1").available == 4  # applied once only
    with session_scope(engine) as s, pytest.raises(PoolError, match="1 not yet refunded"):
        refund(s, "sg1", "o1", "1", 2, delivered=False, refund_id="rf-2")
    # the codes back in stock sell again
    record(engine, order("sg1", "o2", [("1", "SKU1", 4)], at=T0 + timedelta(hours=1)))
    assert run(engine).codes_allocated == 4


def test_refund_of_delivered_codes_blocks_them(engine, ring):
    batch(engine, "B1", "SKU1")
    codes(engine, ring, "B1", [f"K-{i:04d}" for i in range(3)])
    record(engine, order("sg1", "o1", [("1", "SKU1", 2)]))
    run(engine)
    ids = codes_of(engine, "sg1:o1:1")
    with session_scope(engine) as s:
        mark_delivered(s, "sg1", "o1", "1", ids)
        result = refund(s, "sg1", "o1", "1", 2, delivered=True, refund_id="rf-9")
    assert (result.to_stock, result.blocked) == (0, 2)
    blocked = rows(engine, "SELECT status, line_ref FROM pool_code WHERE line_ref IS NOT NULL")
    assert {tuple(r) for r in blocked} == {("blocked", "sg1:o1:1")}
    b = batch_row(engine, "B1")
    assert (b.available, b.unposted) == (1, 2)  # the sale stands; nothing back on sale
    with session_scope(engine) as s, pytest.raises(PoolError, match="applied to another line"):
        refund(s, "sg1", "o9", "1", 1, delivered=True, refund_id="rf-9")


def test_refund_of_an_api_line_returns_units_to_their_batches(engine):
    batch(engine, "A1", "API1", mode="api", quantity=2)
    batch(engine, "A2", "API1", mode="api", quantity=5)
    record(engine, order("sg1", "o1", [("1", "API1", 4)]))
    run(engine)
    with session_scope(engine) as s:
        first = refund(s, "sg1", "o1", "1", 3, delivered=True, refund_id="api-1")
        second = refund(s, "sg1", "o1", "1", 1, delivered=False, refund_id="api-2")
    assert first.api_returned == 3 and second.api_returned == 1
    a1, a2 = batch_row(engine, "A1"), batch_row(engine, "A2")
    # the newest batch gets its units back first
    assert (a1.available, a1.unposted, a1.status) == (2, 0, "active")
    assert (a2.available, a2.unposted) == (5, 0)
    returned = rows(engine, "SELECT batch_no, quantity, returned FROM api_allocation "
                            "ORDER BY batch_no")
    assert [tuple(r) for r in returned] == [("A1", 2, 2), ("A2", 2, 2)]


def test_each_code_keeps_its_chronology(engine, ring):
    batch(engine, "B1", "SKU1")
    codes(engine, ring, "B1", ["C-0001", "C-0002"])
    record(engine, order("sg1", "o1", [("1", "SKU1", 1)]))
    run(engine, worker="w7")
    (cid,) = codes_of(engine, "sg1:o1:1")
    with session_scope(engine) as s:
        mark_delivered(s, "sg1", "o1", "1", [cid])
        refund(s, "sg1", "o1", "1", 1, delivered=False, refund_id="rf-c")
        history = code_history(s, cid)
    assert [(e.action, e.from_status, e.to_status) for e in history] == [
        ("receive", None, CodeStatus.IN_STOCK),
        ("allocate", CodeStatus.IN_STOCK, CodeStatus.ALLOCATED),
        ("deliver", CodeStatus.ALLOCATED, CodeStatus.SOLD),
        ("refund", CodeStatus.SOLD, CodeStatus.IN_STOCK),
    ]
    assert [e.actor for e in history][:2] == ["vendor:acme", "allocator:w7"]
    assert history[1].detail == "sg1:o1:1 unit 1" and history[2].system == "wallet:sg1"
    assert all(e.at.tzinfo is not None for e in history)
    assert history == sorted(history, key=lambda e: e.at)


# the transaction -----------------------------------------------------------------------------
def test_outbox_rows_commit_with_the_allocation_or_not_at_all(engine, ring, monkeypatch):
    batch(engine, "B1", "SKU1")
    codes(engine, ring, "B1", ["X-0001", "X-0002"])
    record(engine, order("sg1", "o1", [("1", "SKU1", 2)]))
    real = pool._take_from_batches

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("power cut after the outbox rows were written")

    monkeypatch.setattr(pool, "_take_from_batches", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        run(engine)
    assert deliveries(engine) == []
    assert rows(engine, "SELECT DISTINCT status FROM pool_code")[0][0] == "in_stock"
    assert line_row(engine, "sg1", "o1", "1").status == "pending"
    assert rows(engine, "SELECT count(*) FROM code_event WHERE action = 'allocate'")[0][0] == 0
    assert batch_row(engine, "B1").available == 2
    monkeypatch.setattr(pool, "_take_from_batches", real)
    assert run(engine).codes_allocated == 2
    assert len(deliveries(engine)) == 1


def test_a_batch_sold_by_someone_else_meanwhile_redoes_the_chunk(engine, monkeypatch):
    batch(engine, "A1", "API1", mode="api", quantity=5)
    batch(engine, "A2", "API1", mode="api", quantity=5)
    with session_scope(engine) as s:  # another sale took 4 of A1 after our snapshot
        upsert_batch(s, batch_no="A1", sku="API1", issuance_mode="api",
                     unit_cost=Decimal("1"), currency="EUR", remaining=1)
    record(engine, order("sg1", "o1", [("1", "API1", 4)]))
    original = pool._Catalogue.__init__
    calls = {"n": 0}

    def stale_snapshot(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            self.budget["A1"] = 5  # what A1 had when this worker looked

    monkeypatch.setattr(pool._Catalogue, "__init__", stale_snapshot)
    report = run(engine)
    assert report.conflicts == 1 and report.api_units == 4
    taken = rows(engine, "SELECT batch_no, quantity FROM api_allocation ORDER BY batch_no")
    assert [tuple(r) for r in taken] == [("A1", 1), ("A2", 3)]
    assert batch_row(engine, "A1").available == 0


# availability --------------------------------------------------------------------------------
def test_available_follows_the_book_and_never_exceeds_what_can_be_delivered(engine, ring):
    batch(engine, "B1", "SKU1")
    codes(engine, ring, "B1", [f"Q-{i:04d}" for i in range(10)])
    record(engine, order("sg1", "o1", [("1", "SKU1", 3)]))
    run(engine)
    b = batch_row(engine, "B1")
    assert (b.quantity, b.remaining, b.unposted, b.available) == (10, 10, 3, 7)
    with session_scope(engine) as s:
        mark_posted(s, "B1", 3)  # the item fulfilment posted in the ERP
    b = batch_row(engine, "B1")
    assert (b.remaining, b.unposted, b.available) == (7, 0, 7)
    with session_scope(engine) as s:  # the ERP wrote 2 units off
        upsert_batch(s, batch_no="B1", sku="SKU1", issuance_mode="code_pool",
                     unit_cost=Decimal("1.25"), currency="EUR", remaining=5)
    assert batch_row(engine, "B1").available == 5
    with session_scope(engine) as s:  # a book higher than the codes held cannot be sold
        upsert_batch(s, batch_no="B1", sku="SKU1", issuance_mode="code_pool",
                     unit_cost=Decimal("1.25"), currency="EUR", remaining=50)
    assert batch_row(engine, "B1").available == 7
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        s.execute(text("UPDATE pool_batch SET available = -1 WHERE batch_no = 'B1'"))
    with session_scope(engine) as s, pytest.raises(PoolError, match="cannot become api"):
        upsert_batch(s, batch_no="B1", sku="SKU1", issuance_mode="api",
                     unit_cost=Decimal("1.25"), currency="EUR")
    with session_scope(engine) as s, pytest.raises(PoolError, match="already exists"):
        add_batch(s, batch_no="B1", sku="SKU1", issuance_mode="code_pool",
                  unit_cost=Decimal("1.25"), currency="EUR")
    with session_scope(engine) as s, pytest.raises(PoolError, match="batch number 'B,2'"):
        add_batch(s, batch_no="B,2", sku="SKU1", issuance_mode="code_pool",
                  unit_cost=Decimal("1.25"), currency="EUR")
    with session_scope(engine) as s, pytest.raises(PoolError, match="at most 4 decimals"):
        add_batch(s, batch_no="B3", sku="SKU1", issuance_mode="code_pool",
                  unit_cost=Decimal("1.23456"), currency="EUR")
    assert Decimal(str(batch_row(engine, "B1").unit_cost)) == Decimal("1.25")
    with session_scope(engine) as s:
        assert stock(s, "SKU1")[0].batches[0].unit_cost == Decimal("1.2500")


def test_a_batch_never_sells_more_than_its_available_even_with_codes_left(engine, ring):
    batch(engine, "EARLY", "SKU1", expiry_type="fixed_date", expires_on=date(2027, 1, 1))
    batch(engine, "LATER", "SKU1")
    codes(engine, ring, "EARLY", [f"E-{i:04d}" for i in range(5)])
    codes(engine, ring, "LATER", [f"L-{i:04d}" for i in range(5)])
    with session_scope(engine) as s:  # the book says only 2 of the early batch remain
        upsert_batch(s, batch_no="EARLY", sku="SKU1", issuance_mode="code_pool",
                     unit_cost=Decimal("1"), currency="EUR", expiry_type="fixed_date",
                     expires_on=date(2027, 1, 1), remaining=2)
    record(engine, order("sg1", "o1", [("1", "SKU1", 4)]))
    assert run(engine).codes_allocated == 4
    got = rows(engine, "SELECT batch_no, count(*) FROM pool_code WHERE line_ref IS NOT NULL "
                       "GROUP BY batch_no ORDER BY batch_no")
    assert [tuple(r) for r in got] == [("EARLY", 2), ("LATER", 2)]
    assert (batch_row(engine, "EARLY").available, batch_row(engine, "EARLY").status) == \
        (0, "sold_out")


def test_expired_frozen_and_other_sites_batches_are_not_sold(engine, ring):
    batch(engine, "GONE", "SKU1", expiry_type="fixed_date", expires_on=TODAY - timedelta(days=1))
    batch(engine, "ICE", "SKU1", status="frozen")
    batch(engine, "MYONLY", "SKU1", sites=["my1"])
    batch(engine, "OPEN", "SKU1")
    codes(engine, ring, "GONE", ["G-0001"])
    codes(engine, ring, "ICE", ["I-0001"])
    codes(engine, ring, "MYONLY", ["M-0001"])
    codes(engine, ring, "OPEN", ["P-0001", ("P-0002", None, TODAY - timedelta(days=2))])
    record(engine, order("sg1", "o1", [("1", "SKU1", 2)]),
           order("my1", "o2", [("1", "SKU1", 1)], at=T0 + timedelta(seconds=1)))
    report = run(engine)
    assert report.held[0] == pool.HeldOrder("sg1", "o1", "SKU SKU1: 2 wanted, 1 in stock")
    assert [r[0] for r in rows(engine, "SELECT batch_no FROM pool_code "
                                       "WHERE line_ref = 'my1:o2:1'")] == ["MYONLY"]
    with session_scope(engine) as s:
        (sku,) = stock(s, "SKU1", on=TODAY)
    # OPEN's expired code is never allocated, but counts until it is written off
    assert sku.available == 2 and sku.available_for("my1", TODAY) == 2
    with session_scope(engine) as s:
        assert expire_codes(s, today=TODAY, actor="ops:ana") == {"GONE": 1, "OPEN": 1}
        (sku,) = stock(s, "SKU1", on=TODAY)
    assert sku.available == 1
    assert [(b.batch_no, b.status, b.available, b.unposted) for b in sku.batches] == [
        ("GONE", "expired", 0, 1), ("ICE", "frozen", 1, 0), ("MYONLY", "sold_out", 0, 1),
        ("OPEN", "active", 1, 1)]
    expired = rows(engine, "SELECT count(*) FROM code_event WHERE action = 'expire' "
                           "AND to_status = 'expired' AND actor = 'ops:ana'")
    assert expired[0][0] == 2


def test_limit_orders_and_chunks(engine, ring):
    batch(engine, "B1", "SKU1")
    codes(engine, ring, "B1", [f"Z-{i:04d}" for i in range(20)])
    record(engine, *[order("sg1", f"o{i:02d}", [("1", "SKU1", 1), ("2", "SKU1", 1)],
                           at=T0 + timedelta(seconds=i)) for i in range(10)])
    report = run(engine, limit_orders=3, chunk_lines=3)
    assert report.orders_allocated == 3 and report.codes_allocated == 6
    assert [r[0] for r in rows(engine, "SELECT DISTINCT order_id FROM order_line "
                                       "WHERE status = 'allocated' ORDER BY 1")] == \
        ["o00", "o01", "o02"]
    assert run(engine, chunk_lines=3).orders_allocated == 7


# operators and webhooks ----------------------------------------------------------------------
def test_stock_and_order_status_for_operators(engine, ring):
    batch(engine, "B1", "SKU1")
    batch(engine, "A1", "API1", mode="api", quantity=4)
    codes(engine, ring, "B1", ["S-0001", "S-0002"])
    record(engine, order("sg1", "o1", [("1", "SKU1", 1), ("2", "API1", 2)]))
    run(engine)
    with session_scope(engine) as s:
        by_sku = {x.sku: x for x in stock(s, on=TODAY)}
        status = order_status(s, site="sg1", order_id="o1")
    assert (by_sku["SKU1"].available, by_sku["API1"].available) == (1, 2)
    assert [b.batch_no for b in by_sku["SKU1"].batches] == ["B1"]
    (o1,) = status
    assert o1.held_reason is None and o1.status == "paid"
    assert [(ln.line_id, ln.status, ln.issuance_mode) for ln in o1.lines] == [
        ("1", "allocated", "code_pool"), ("2", "allocated", "api")]
    totals = rows(engine, "SELECT total, payment FROM sales_order")[0]
    assert Decimal(str(totals.total)) == Decimal("14.85")
    assert json.loads(totals.payment) == {"amount": "10.00", "method": "card"}


def test_inbound_events_are_kept_once_and_processed_in_order(engine):
    events = [{"event_id": f"ev-{n}", "site": "sg1", "type": "order.created",
               "created_at": T0 + timedelta(seconds=10 - n), "payload": {"n": n}}
              for n in range(3)]
    with session_scope(engine) as s:
        assert record_inbound(s, events) == 3
        assert record_inbound(s, events[:2]) == 0  # delivered again
        todo = unprocessed_inbound(s)
        assert [e.event_id for e in todo] == ["ev-2", "ev-1", "ev-0"]
        mark_inbound_processed(s, ["ev-2"])
        assert [e.event_id for e in unprocessed_inbound(s)] == ["ev-1", "ev-0"]

