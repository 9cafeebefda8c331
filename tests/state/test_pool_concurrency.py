"""Several allocator processes on one pool, and one killed mid-chunk: never a code twice,
never a line twice, nothing lost. Counted in SQL afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from state.crypto import Keyring
from state.db import make_engine, session_scope, upgrade
from state.pool import add_batch, add_codes, allocate, record_orders

ROOT = Path(__file__).resolve().parents[2]
SITES = [f"s{n:02d}" for n in range(1, 13)]
WORKER = """
import json, sys
from state.db import make_engine
from state.pool import allocate
import time
url, name, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
turn = int(sys.argv[4]) if len(sys.argv) > 4 else None
engine = make_engine(url, pool_size=1, max_overflow=0)
engine.connect().close()
print("ready", flush=True)
sys.stdin.readline()  # start together: a slow start must not leave one worker no work
total = {"worker": name, "codes": 0, "orders": 0, "held": 0, "deferred": 0}
while True:
    # with a turn: that many orders, then a pause longer than SQLite's busy handler sleeps
    # between its tries (100 ms at most), so a worker waiting for the write lock gets it
    report = allocate(engine, worker=name, chunk_lines=chunk, limit_orders=turn)
    total["codes"] += report.codes_allocated
    total["orders"] += report.orders_allocated
    total["held"] += report.orders_held
    total["deferred"] += report.orders_deferred
    if turn is None or not report.orders_processed:
        break
    time.sleep(0.15)
print(json.dumps(total))
"""


def seed(engine: Engine, *, codes: int, skus: int) -> int:
    """``codes`` codes over ``skus`` SKUs (two batches each), and exactly as many order lines
    of quantity 1 per SKU, in orders of one to three lines. Returns the order lines."""
    ring = Keyring.generate()
    names = [f"SKU{n:03d}" for n in range(skus)]
    with session_scope(engine) as s:
        for sku in names:
            for b in (1, 2):
                add_batch(s, batch_no=f"{sku}-{b}", sku=sku, issuance_mode="code_pool",
                          unit_cost=Decimal("2.5"), currency="EUR")
    line_skus: list[str] = []
    for n, sku in enumerate(names):
        count = codes // skus + (1 if n < codes % skus else 0)
        for b in (1, 2):
            part = count // 2 + (count % 2 if b == 1 else 0)
            add_codes(engine, f"{sku}-{b}",
                      ((f"{sku}-{b}-{i:07d}-X", None, None) for i in range(part)),
                      ring, actor="test", system="test")
        line_skus.extend([sku] * count)
    # interleave the SKUs so every chunk touches many of them
    line_skus.sort(key=lambda s: (hash(s) * 7919) % 1000)
    line_skus = line_skus[::2] + line_skus[1::2]
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    orders, i, n = [], 0, 0
    while i < len(line_skus):
        size = min((1, 2, 3, 1)[n % 4], len(line_skus) - i)
        n += 1
        at = t0 + timedelta(milliseconds=n)
        orders.append({"site": SITES[n % 12], "order_id": f"O{n:08d}", "status": "paid",
                       "created_at": at, "updated_at": at, "currency": "EUR",
                       "lines": [{"line_id": str(k + 1), "sku": line_skus[i + k],
                                  "quantity": 1, "unit_price": "5"} for k in range(size)]})
        i += size
        if len(orders) == 5000:
            with session_scope(engine) as s:
                record_orders(s, orders)
            orders = []
    if orders:
        with session_scope(engine) as s:
            record_orders(s, orders)
    return len(line_skus)


def start_allocators(url: str, names: list[str], chunk: int, turn: int | None = None
                     ) -> list[subprocess.Popen[str]]:
    """One allocator process per name, released together once every one has imported and
    connected (on a busy machine one interpreter can start seconds after another). With
    ``turn``, each allocates that many orders at a time, with a pause between (``WORKER``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    extra = [] if turn is None else [str(turn)]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, name, str(chunk), *extra],
                              cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in names]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", \
            proc.stderr.read() if proc.stderr else ""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    return procs


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def counts(engine: Engine) -> dict[str, int]:
    """What must hold after any number of allocators, crashes included, counted in SQL."""
    ref = "l.site || ':' || l.order_id || ':' || l.line_id"
    queries = {
        "codes": "SELECT count(*) FROM pool_code",
        "lines": "SELECT count(*) FROM order_line",
        "lines_allocated": "SELECT count(*) FROM order_line WHERE status = 'allocated'",
        # every allocated line has exactly its quantity of codes
        "lines_wrong": f"""SELECT count(*) FROM order_line l WHERE l.status = 'allocated'
            AND l.quantity <> (SELECT count(*) FROM pool_code c WHERE c.line_ref = {ref})""",
        # no line has codes unless it is allocated
        "codes_on_open_lines": f"""SELECT count(*) FROM order_line l
            WHERE l.status <> 'allocated'
              AND EXISTS (SELECT 1 FROM pool_code c WHERE c.line_ref = {ref})""",
        # no code given twice: one allocation event per code, one delivery naming it
        "allocated_twice": """SELECT count(*) FROM (SELECT code_id FROM code_event
            WHERE action = 'allocate' GROUP BY code_id HAVING count(*) > 1) d""",
        "codes_allocated": "SELECT count(*) FROM pool_code WHERE status = 'allocated'",
        "allocate_events": "SELECT count(*) FROM code_event WHERE action = 'allocate'",
        # none lost: every code is in stock unlinked, or allocated and linked
        "codes_lost": """SELECT count(*) FROM pool_code
            WHERE NOT ((status = 'in_stock' AND line_ref IS NULL AND unit IS NULL)
                    OR (status = 'allocated' AND line_ref IS NOT NULL AND unit >= 1))""",
        "deliveries": "SELECT count(*) FROM outbox WHERE operation = 'order.delivery'",
        "available": "SELECT sum(available) FROM pool_batch",
        "in_stock": "SELECT count(*) FROM pool_code WHERE status = 'in_stock'",
    }
    with engine.connect() as conn:
        out = {name: int(conn.execute(text(sql)).scalar() or 0) for name, sql in queries.items()}
        payloads = conn.execute(text("SELECT payload FROM outbox "
                                     "WHERE operation = 'order.delivery'")).scalars()
        named = [cid for p in payloads for cid in json.loads(p)["code_ids"]]
    out["named_twice"] = len(named) - len(set(named))
    return out


def assert_consistent(c: dict[str, int], *, all_done: bool) -> None:
    assert c["lines_wrong"] == 0 and c["codes_on_open_lines"] == 0
    assert c["allocated_twice"] == 0 and c["named_twice"] == 0 and c["codes_lost"] == 0
    assert c["allocate_events"] == c["codes_allocated"]
    assert c["deliveries"] == c["lines_allocated"]
    assert c["available"] == c["in_stock"]  # the batches agree with the codes
    if all_done:
        assert c["lines_allocated"] == c["lines"] and c["codes_allocated"] == c["codes"]


@pytest.mark.postgres
@pytest.mark.slow
def test_four_allocator_processes_share_one_pool(pg_engine):
    """Acceptance: 200,000 codes, 200,000 order lines, four processes."""
    lines = seed(pg_engine, codes=200_000, skus=100)
    assert lines == 200_000
    with pg_engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    started = time.monotonic()
    procs = start_allocators(url_of(pg_engine), [f"w{n}" for n in range(1, 5)], 2000)
    reports = [finish(p) for p in procs]
    elapsed = time.monotonic() - started
    assert sum(r["codes"] for r in reports) == 200_000
    assert all(r["codes"] > 0 for r in reports), reports  # all four took part
    assert all(r["held"] == 0 for r in reports)
    assert_consistent(counts(pg_engine), all_done=True)
    print(f"4 allocators: 200,000 codes in {elapsed:.1f}s")


@pytest.mark.slow
def test_two_allocator_processes_on_a_sqlite_file(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'pool.db'}")
    upgrade(engine)
    lines = seed(engine, codes=20_000, skus=40)
    # SQLite hands its write lock to no one in particular: a worker that takes it again
    # right after its commit can keep a waiting one out for the whole run (it did, once in
    # 200 chunks of 100 lines on a loaded machine), which would make this a test of one
    # allocator. So each works in turns of 1,000 orders (ten chunks), with a pause between
    # in which the other one gets the lock; they still wait for each other's chunks
    procs = start_allocators(url_of(engine), ["w1", "w2"], 100, turn=1000)
    reports = [finish(p) for p in procs]
    assert sum(r["codes"] for r in reports) == lines
    assert all(r["codes"] > 0 for r in reports), reports
    assert_consistent(counts(engine), all_done=True)
    engine.dispose()


@pytest.mark.slow
def test_an_allocator_killed_mid_chunk_leaves_nothing_half_done(engine):
    lines = seed(engine, codes=30_000, skus=30)
    [proc] = start_allocators(url_of(engine), ["doomed"], 300)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            done = conn.execute(text("SELECT count(*) FROM pool_code "
                                     "WHERE status = 'allocated'")).scalar()
        if done and done > 3000:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # most likely inside a chunk's transaction
    proc.wait()
    after_kill = counts(engine)
    assert 0 < after_kill["codes_allocated"] < lines
    assert_consistent(after_kill, all_done=False)
    report = allocate(engine, worker="survivor", chunk_lines=2000)
    assert report.codes_allocated == lines - after_kill["codes_allocated"]
    assert_consistent(counts(engine), all_done=True)
