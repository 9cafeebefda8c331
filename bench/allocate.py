"""Benchmark: code allocation, vouchflow's ``allocate`` against a bare claim loop.

A fresh pool of ``--codes`` codes (a few hundred SKUs, three batches each with different
expiries) and ``--orders`` order lines of quantity 1 (orders of one to three lines on twelve
sites, as many lines per SKU as it has codes) are seeded through the real entry points
(``add_codes``: hashing and Fernet encryption; ``record_orders``), which is not timed. A copy of
the same data is made for the baseline. Then ``--workers`` processes, each with its own
engine, run ``allocate`` until nothing is pending, and the same number of processes run the
baseline on the copy. Afterwards SQL counts what went wrong: ``duplicates`` (a code allocated
twice, or named in two deliveries) and ``lost`` (a code neither in stock nor on an allocated
line, or a line without exactly its quantity of codes), both must be 0.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import random
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.common import cpu_s, emit

PG_URL = os.environ.get("VOUCHFLOW_BENCH_POSTGRES_URL",
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SITES = [f"s{n:02d}" for n in range(1, 13)]

BASELINE = {
    "postgresql": (
        "per chunk of N pending lines, one SQL statement: lock the oldest pending lines "
        "(FOR UPDATE SKIP LOCKED), claim as many in-stock codes per SKU in allocation order "
        "(LATERAL ... ORDER BY expiry_rank, batch_seq, id LIMIT n FOR UPDATE SKIP LOCKED), "
        "pair them by row_number() per SKU and UPDATE pool_code ... FROM the pairs and "
        "UPDATE order_line; autocommit per chunk, same workers and chunk size; no orders "
        "all-or-nothing, no code events, no outbox, no batch quantities"),
    "sqlite": (
        "per chunk of N pending lines, one BEGIN IMMEDIATE transaction: SELECT the oldest "
        "pending lines, SELECT as many in-stock codes per SKU in allocation order, UPDATE "
        "pool_code and order_line by executemany; same workers and chunk size; no orders "
        "all-or-nothing, no code events, no outbox, no batch quantities"),
}


def log(message: str) -> None:
    print(f"[allocate] {message}", file=sys.stderr, flush=True)


# database ------------------------------------------------------------------------------------
@contextmanager
def fresh_database(kind: str, tmp: Path, name: str) -> Iterator[str]:
    """A migrated empty state database; dropped afterwards (PostgreSQL: its own schema)."""
    from sqlalchemy import text

    from state.db import make_engine, upgrade

    if kind == "sqlite":
        url = f"sqlite:///{tmp / (name + '.db')}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
        return
    schema = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    admin = make_engine(PG_URL, pool_size=1, max_overflow=0)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def seed(url: str, *, codes: int, lines: int, skus: int, seed_value: int = 7) -> dict[str, Any]:
    """Batches and codes through ``add_codes``, orders through ``record_orders``."""
    from state.crypto import Keyring
    from state.db import make_engine, session_scope
    from state.pool import add_batch, add_codes, record_orders

    rng = random.Random(seed_value)
    engine = make_engine(url)
    keyring = Keyring.generate()
    sku_names = [f"SKU{n:04d}" for n in range(skus)]
    per_sku = [codes // skus + (1 if n < codes % skus else 0) for n in range(skus)]
    today = datetime.now(UTC).date()
    serial = 0
    with session_scope(engine) as session:
        for sku in sku_names:
            for b in range(3):
                add_batch(session, batch_no=f"{sku}-B{b}", sku=sku, issuance_mode="code_pool",
                          unit_cost=Decimal("1.2500"), currency="EUR")
    for n, sku in enumerate(sku_names):
        for b in range(3):
            count = per_sku[n] // 3 + (1 if b < per_sku[n] % 3 else 0)
            # the newest batch expires first, one batch never: allocation order is not seq order
            expiry = [today + timedelta(days=400), today + timedelta(days=200), None][b]

            def batch_codes(count: int = count, expiry: date | None = expiry) -> Iterator[Any]:
                nonlocal serial
                for _ in range(count):
                    serial += 1
                    yield (f"VF{serial:09d}{rng.getrandbits(40):010x}", None, expiry)

            add_codes(engine, f"{sku}-B{b}", batch_codes(), keyring, actor="bench",
                      system="bench")
    # order lines: as many per SKU as it has codes (scaled to `lines`), shuffled into orders
    wanted = [round(lines * c / codes) for c in per_sku]
    wanted[-1] += lines - sum(wanted)
    line_skus = [sku for sku, k in zip(sku_names, wanted, strict=True) for _ in range(k)]
    rng.shuffle(line_skus)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    orders: list[dict[str, Any]] = []
    i = order_no = 0
    while i < len(line_skus):
        size = min(rng.choice((1, 1, 2, 3)), len(line_skus) - i)
        order_no += 1
        at = start + timedelta(milliseconds=order_no)
        orders.append({
            "site": SITES[order_no % len(SITES)], "order_id": f"O{order_no:09d}",
            "status": "paid", "created_at": at, "updated_at": at, "currency": "EUR",
            "lines": [{"line_id": str(k + 1), "sku": line_skus[i + k], "quantity": 1,
                       "unit_price": "9.90"} for k in range(size)]})
        i += size
        if len(orders) >= 5000:
            with session_scope(engine) as session:
                record_orders(session, orders)
            orders = []
    if orders:
        with session_scope(engine) as session:
            record_orders(session, orders)
    engine.dispose()
    return {"orders": order_no, "lines": len(line_skus)}


def copy_data(kind: str, source_url: str, target_url: str) -> None:
    """The baseline's own copy of the seeded pool and orders."""
    from sqlalchemy import text

    from state.db import make_engine

    if kind == "sqlite":
        shutil.copyfile(source_url.removeprefix("sqlite:///"),
                        target_url.removeprefix("sqlite:///"))
        return
    source_schema = source_url.rsplit("%3D", 1)[1]
    engine = make_engine(target_url)
    with engine.begin() as conn:
        for table in ("pool_batch", "pool_code", "sales_order", "order_line"):
            conn.execute(text(f'INSERT INTO {table} SELECT * FROM "{source_schema}".{table}'))
        conn.execute(text("SELECT setval('pool_code_id_seq', (SELECT max(id) FROM pool_code))"))
    engine.dispose()


def prepare(kind: str, url: str) -> None:
    """Fresh statistics (and on PostgreSQL a vacuumed table and a checkpoint), so both sides
    start from the same state."""
    from sqlalchemy import text

    from state.db import make_engine

    engine = make_engine(url)
    if kind == "postgresql":
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            # this run's own tables only: a bare VACUUM walks every schema in the database
            for table in ("pool_batch", "pool_code", "sales_order", "order_line"):
                conn.execute(text(f"VACUUM ANALYZE {table}"))
            conn.execute(text("CHECKPOINT"))
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()


# workers -------------------------------------------------------------------------------------
def _connected(url: str, name: str, ready: Any, go: Any) -> Any:
    """A worker's engine, connected before it reports ready; returns on the go signal."""
    from state.db import make_engine

    engine = make_engine(url, pool_size=1, max_overflow=0)
    if engine.dialect.name == "postgresql":
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _backend(dbapi_conn: Any, _record: Any) -> None:
            with dbapi_conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                _WORKER["backends"].add(cur.fetchone()[0])

    with engine.connect():
        pass
    ready.put(name)
    go.wait()
    _WORKER["cpu_start"] = _cpu()
    return engine


_WORKER: dict[str, Any] = {"backends": set(), "cpu_start": (0.0, 0.0)}
"""This worker process's database backend pids and its CPU counters at the go signal."""


def _cpu() -> tuple[float, float]:
    """CPU seconds so far of this process and of its database backends (PostgreSQL on this
    machine: read from /proc; 0 where that is not possible): where a worker's time goes."""
    backend = sum(cpu_s(pid) or 0.0 for pid in _WORKER["backends"])
    return time.process_time(), backend


def _cpu_used() -> dict[str, float]:
    """This worker's CPU seconds since the go signal: its own and its backends'."""
    (own0, db0), (own1, db1) = _WORKER["cpu_start"], _cpu()
    return {"cpu_s": own1 - own0, "db_cpu_s": db1 - db0}


def _vouchflow_worker(url: str, name: str, chunk: int, ready: Any, go: Any, out: Any) -> None:
    from state.pool import allocate

    engine = _connected(url, name, ready, go)
    started = time.perf_counter()
    report = allocate(engine, worker=name, chunk_lines=chunk)
    out.put({"worker": name, "seconds": time.perf_counter() - started,
             "codes": report.codes_allocated, "orders": report.orders_allocated,
             "held": report.orders_held, "deferred": report.orders_deferred,
             "conflicts": report.conflicts, "chunks": report.chunks, **_cpu_used()})
    engine.dispose()


_PG_BASELINE = """
WITH lines AS (
    SELECT site, order_id, line_id, sku FROM order_line
    WHERE status = 'pending' ORDER BY order_created_at, site, order_id
    LIMIT :n FOR UPDATE SKIP LOCKED
), numbered AS (
    SELECT site, order_id, line_id, sku,
           row_number() OVER (PARTITION BY sku ORDER BY site, order_id, line_id) AS k
    FROM lines
), demand AS (
    SELECT sku, count(*) AS n FROM lines GROUP BY sku
), claimed AS (
    SELECT c.id, d.sku,
           row_number() OVER (PARTITION BY d.sku ORDER BY c.expiry_rank, c.batch_seq, c.id) AS k
    FROM demand d CROSS JOIN LATERAL (
        SELECT p.id, p.expiry_rank, p.batch_seq FROM pool_code p
        WHERE p.sku = d.sku AND p.status = 'in_stock'
        ORDER BY p.expiry_rank, p.batch_seq, p.id LIMIT d.n FOR UPDATE SKIP LOCKED
    ) c
), pairs AS (
    SELECT c.id, n.site, n.order_id, n.line_id FROM numbered n
    JOIN claimed c ON c.sku = n.sku AND c.k = n.k
), codes AS (
    UPDATE pool_code p SET status = 'allocated',
           line_ref = pairs.site || ':' || pairs.order_id || ':' || pairs.line_id, unit = 1
    FROM pairs WHERE p.id = pairs.id
    RETURNING p.id
), done AS (
    UPDATE order_line o SET status = 'allocated'
    FROM pairs WHERE o.site = pairs.site AND o.order_id = pairs.order_id
      AND o.line_id = pairs.line_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM lines), (SELECT count(*) FROM codes)
"""


def _baseline_worker(url: str, name: str, chunk: int, ready: Any, go: Any, out: Any) -> None:
    from sqlalchemy import text

    engine = _connected(url, name, ready, go)
    started = time.perf_counter()
    codes = 0
    idle = 0
    while True:
        if engine.dialect.name == "postgresql":
            with engine.begin() as conn:
                lines, got = conn.execute(text(_PG_BASELINE), {"n": chunk}).one()
        else:
            lines, got = _sqlite_baseline_chunk(engine, chunk)
        codes += got
        if lines == 0:
            break
        idle = idle + 1 if got == 0 else 0
        if idle > 50:
            break
        if got == 0:
            time.sleep(0.01)
    out.put({"worker": name, "seconds": time.perf_counter() - started, "codes": codes,
             **_cpu_used()})
    engine.dispose()


def _sqlite_baseline_chunk(engine: Any, chunk: int) -> tuple[int, int]:
    from collections import defaultdict

    with engine.connect() as conn:
        conn.info["vf_begin"] = "BEGIN IMMEDIATE"
        with conn.begin():
            lines = conn.exec_driver_sql(
                "SELECT site, order_id, line_id, sku FROM order_line WHERE status = 'pending' "
                "ORDER BY order_created_at, site, order_id LIMIT ?", (chunk,)).all()
            by_sku: dict[str, list[Any]] = defaultdict(list)
            for line in lines:
                by_sku[line.sku].append(line)
            code_rows, line_rows = [], []
            for sku, sku_lines in by_sku.items():
                ids = conn.exec_driver_sql(
                    "SELECT id FROM pool_code WHERE sku = ? AND status = 'in_stock' "
                    "ORDER BY expiry_rank, batch_seq, id LIMIT ?", (sku, len(sku_lines))).all()
                for (cid,), line in zip(ids, sku_lines, strict=False):
                    code_rows.append((f"{line.site}:{line.order_id}:{line.line_id}", cid))
                    line_rows.append((line.site, line.order_id, line.line_id))
            if code_rows:
                conn.exec_driver_sql("UPDATE pool_code SET status = 'allocated', line_ref = ?, "
                                     "unit = 1 WHERE id = ?", code_rows)
                conn.exec_driver_sql("UPDATE order_line SET status = 'allocated' WHERE "
                                     "site = ? AND order_id = ? AND line_id = ?", line_rows)
        conn.info.pop("vf_begin", None)
    return len(lines), len(code_rows)


def run_workers(target: Any, url: str, workers: int, chunk: int) -> tuple[float, list[dict]]:
    """Start the workers, wait until each has its engine, then time them from one go signal."""
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=target, args=(url, f"w{n + 1}", chunk, ready, go, out))
             for n in range(workers)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=120)
    started = time.perf_counter()
    go.set()
    results = []
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=1))
        except queue.Empty:
            # a worker that died sends nothing: fail instead of waiting for it forever
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                for proc in procs:
                    proc.kill()
                raise SystemExit(f"a worker failed with exit code {dead[0]}") from None
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.join()
        if proc.exitcode:
            raise SystemExit(f"a worker failed with exit code {proc.exitcode}")
    return elapsed, results


def children_peak_rss_mb() -> float:
    """The largest resident set of any worker process waited for so far (Linux: KiB)."""
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


# checks --------------------------------------------------------------------------------------
def check(url: str, *, full: bool) -> dict[str, int]:
    """Count in SQL what must never happen. ``full`` also checks events and deliveries (the
    baseline writes neither)."""
    from sqlalchemy import text

    from state.db import make_engine

    engine = make_engine(url)
    pg = engine.dialect.name == "postgresql"
    out: dict[str, int] = {}
    with engine.connect() as conn:
        for table in ("pool_code", "order_line", "outbox", "code_event"):
            conn.execute(text(f"ANALYZE {table}"))  # the planner must know they changed
        def one(sql: str) -> int:
            return int(conn.execute(text(sql)).scalar() or 0)

        out["codes_allocated"] = one("SELECT count(*) FROM pool_code WHERE status = 'allocated'")
        out["codes_in_stock"] = one("SELECT count(*) FROM pool_code WHERE status = 'in_stock'")
        # a code is accounted for when it is in stock unlinked, or allocated to an allocated
        # line within that line's quantity (joined on the line's reference, by hash)
        lines = ("SELECT site || ':' || order_id || ':' || line_id AS ref, quantity, status, "
                 "issuance_mode FROM order_line")
        accounted = one("SELECT count(*) FROM pool_code WHERE status = 'in_stock' "
                        "AND line_ref IS NULL") + one(f"""
            SELECT count(*) FROM pool_code c JOIN ({lines}) l ON l.ref = c.line_ref
            WHERE c.status = 'allocated' AND l.status = 'allocated'
              AND c.unit BETWEEN 1 AND l.quantity""")
        total = one("SELECT count(*) FROM pool_code")
        unfilled = one(f"""
            SELECT count(*) FROM ({lines}) l
            LEFT JOIN (SELECT line_ref, count(*) AS n FROM pool_code
                       WHERE line_ref IS NOT NULL GROUP BY line_ref) c ON c.line_ref = l.ref
            WHERE l.status = 'allocated' AND COALESCE(l.issuance_mode, 'code_pool') = 'code_pool'
              AND COALESCE(c.n, 0) <> l.quantity""")
        out["lines_pending"] = one(
            "SELECT count(*) FROM order_line WHERE status IN ('pending', 'held')")
        out["lost"] = (total - accounted) + unfilled
        duplicates = 0
        if full:
            duplicates += one("""SELECT count(*) FROM (SELECT code_id FROM code_event
                                 WHERE action = 'allocate' GROUP BY code_id
                                 HAVING count(*) > 1) d""")
            elements = ("jsonb_array_elements_text((payload::jsonb)->'code_ids')" if pg
                        else "json_each(outbox.payload, '$.code_ids')")
            value = "value" if pg else "json_each.value"
            duplicates += one(f"""SELECT count(*) FROM (
                SELECT {value} FROM outbox, {elements} AS value
                WHERE operation = 'order.delivery' GROUP BY {value} HAVING count(*) > 1) d"""
                              if pg else f"""SELECT count(*) FROM (
                SELECT {value} FROM outbox, {elements}
                WHERE operation = 'order.delivery' GROUP BY {value} HAVING count(*) > 1) d""")
            out["deliveries"] = one("SELECT count(*) FROM outbox "
                                    "WHERE operation = 'order.delivery'")
            out["events"] = one("SELECT count(*) FROM code_event WHERE action = 'allocate'")
            out["batch_available"] = one("SELECT COALESCE(sum(available), 0) FROM pool_batch")
        out["duplicates"] = duplicates
    engine.dispose()
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench allocate", description=__doc__)
    parser.add_argument("--codes", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=None,
                        help="order lines (quantity 1); default: as many as codes")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--skus", type=int, default=300)
    parser.add_argument("--chunk", type=int, default=2000, help="order lines per transaction")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args(argv)
    lines = args.orders if args.orders is not None else args.codes
    kind = args.database

    with tempfile.TemporaryDirectory(prefix="vf-bench-alloc-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["VOUCHFLOW_HOME"] = str(tmp / "home")
        with fresh_database(kind, tmp, "vf") as url, fresh_database(kind, tmp, "base") as burl:
            started = time.perf_counter()
            log(f"seeding {args.codes} codes and {lines} order lines ({kind})")
            scale = seed(url, codes=args.codes, lines=lines, skus=min(args.skus, args.codes))
            if not args.no_baseline:
                copy_data(kind, url, burl)
                prepare(kind, burl)
            prepare(kind, url)
            seed_s = time.perf_counter() - started
            log(f"seeded in {seed_s:.1f}s; allocating with {args.workers} workers")

            vouchflow_s, results = run_workers(_vouchflow_worker, url, args.workers, args.chunk)
            peak = children_peak_rss_mb()
            log(f"vouchflow: {vouchflow_s:.1f}s; checking")
            checked = check(url, full=True)
            baseline_s = base_checked = None
            base_results: list[dict] = []
            if not args.no_baseline:
                log("baseline")
                baseline_s, base_results = run_workers(_baseline_worker, burl, args.workers,
                                                       args.chunk)
                base_checked = check(burl, full=False)

    codes = checked["codes_allocated"]
    result: dict[str, Any] = {
        "bench": "allocate",
        "database": kind,
        "workers": args.workers,
        "scale": {"codes": args.codes, **scale, "skus": min(args.skus, args.codes),
                  "sites": len(SITES), "chunk_lines": args.chunk},
        "seconds": round(vouchflow_s, 3),
        "vouchflow_s": round(vouchflow_s, 3),
        "codes_per_s": round(codes / vouchflow_s, 1),
        "duplicates": checked["duplicates"],
        "lost": checked["lost"],
        "codes_allocated": codes,
        "lines_left": checked["lines_pending"],
        "deliveries": checked["deliveries"],
        "peak_rss_mb": peak,
        "seed_s": round(seed_s, 1),
        "per_worker": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}
                       for r in sorted(results, key=lambda r: r["worker"])],
        # CPU seconds of the workers' own processes and of their database backends (summed):
        # with two cores, whichever side is larger bounds the codes per second
        "vouchflow_worker_cpu_s": round(sum(r["cpu_s"] for r in results), 2),
        "vouchflow_db_cpu_s": round(sum(r["db_cpu_s"] for r in results), 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if baseline_s is not None and base_checked is not None:
        result.update({
            "baseline_s": round(baseline_s, 3),
            "baseline_codes_per_s": round(base_checked["codes_allocated"] / baseline_s, 1),
            "ratio": round(vouchflow_s / baseline_s, 3),
            "baseline_lost": base_checked["lost"],
            "baseline_worker_cpu_s": round(sum(r["cpu_s"] for r in base_results), 2),
            "baseline_db_cpu_s": round(sum(r["db_cpu_s"] for r in base_results), 2),
            "baseline": BASELINE[kind],
        })
    emit(result)
    return 0 if checked["duplicates"] == 0 and checked["lost"] == 0 else 1
