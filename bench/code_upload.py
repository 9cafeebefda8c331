"""Benchmark: a vendor's codes file streamed into the pool, against a plain load script.

A file of ``--codes`` codes (``code,pin,expires_at``; a PIN on every code with ``--pins``) is
written to disk (not timed). vouchflow: the portal runs in its own process (uvicorn, the real
app) and the file is streamed to ``POST /vendor/purchase-orders/{po}/lines/1/codes`` in 64 KB
pieces; the time is from the first byte sent to the answer, which comes after every row is
checked, every accepted code is hashed, encrypted and stored (with its chunk's receipt), and
the purchase order's receipt is recorded. ``peak_rss_mb`` is the portal process's peak
resident memory (``VmHWM``), which stays flat however large the file; ``portal_cpu_s`` and
``postgres_backend_cpu_s`` are the CPU seconds the portal process and the PostgreSQL backends
serving it used meanwhile (on a shared machine the wall clock also measures the neighbours).
With ``--via function`` the same streaming function runs in this process instead. The
baseline reads the same file with ``csv``, hashes (HMAC-SHA256) and encrypts
(``Fernet.encrypt``) each code and loads them into a bare table with a primary key on the hash
(PostgreSQL ``COPY``; SQLite ``executemany``): the same essential work without checks, events,
batches or receipts.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import hmac
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.allocate import fresh_database
from bench.common import cpu_s, emit, free_port, peak_rss_mb

READ = 64 * 1024
CPU: dict[str, float | None] = {}
"""CPU seconds the receiving side used during the upload (the machine may be shared)."""
SKU = "BENCH-SKU"
CODE_FORMAT = r"^[A-Z0-9]{14}$"
BASELINE = {
    "postgresql": "csv.reader over the same file; per code HMAC-SHA256 and Fernet.encrypt "
                  "(code, PIN); COPY into a table (code_hash primary key, code_enc, pin_enc, "
                  "expires_on); one transaction; no row checks, events, batch or receipt",
    "sqlite": "csv.reader over the same file; per code HMAC-SHA256 and Fernet.encrypt (code, "
              "PIN); executemany INSERT into a table (code_hash primary key, code_enc, "
              "pin_enc, expires_on), a commit per 5,000 rows; no row checks, events, batch "
              "or receipt",
}


def log(message: str) -> None:
    print(f"[code_upload] {message}", file=sys.stderr, flush=True)


def write_file(path: Path, codes: int, pins: bool, seed: int = 3) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("code,pin,expires_at\n")
        for i in range(codes):
            pin = f"{rng.randrange(10**6):06d}" if pins else ""
            out.write(f"VB{i:08d}{rng.getrandbits(16):04X},{pin},2027-12-31\n")


def seed(url: str, codes: int) -> dict[str, Any]:
    """A SKU, a vendor with a signed contract, and a purchase order line for every code."""
    from canonical import Sku
    from state import procurement as proc
    from state.catalog import remember_skus
    from state.crypto import Keyring
    from state.db import make_engine, session_scope

    engine = make_engine(url)
    sku = Sku.model_validate({
        "sku": SKU, "name": "Bench voucher", "kind": "gift_card",
        "face_value": {"amount": "10.00", "currency": "EUR"}, "sales_areas": [],
        "issuance_mode": "code_pool", "write_off_type": "on_delivery", "status": "normal",
        "code_format": CODE_FORMAT, "updated_at": "2026-11-01T00:00:00Z"})
    with session_scope(engine) as s:
        remember_skus(s, [(sku, None)])
        vendor, token = proc.add_vendor(s, Keyring.load(), "Bench Supplier", currency="EUR")
        contract = proc.add_contract(s, vendor, issuance_mode="code_pool",
                                     settlement_mode="purchased_quantity", currency="EUR",
                                     prices={SKU: Decimal("6.5")}, valid_from=date(2026, 1, 1))
        proc.set_signature(s, contract.contract_no, "signed")
        po = proc.create_purchase_order(s, contract.contract_no, [proc.LineIn(SKU, codes)])
        found = {"vendor_id": vendor.id, "token": token, "po_no": po.po_no}
    engine.dispose()
    return found


def chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(READ):
            yield block


# vouchflow ------------------------------------------------------------------------------------
def serve(port: int) -> None:
    """The portal in this process (``--serve``): the parent streams the file to it."""
    import uvicorn

    from portal.app import create_app

    uvicorn.run(create_app(sites=dict), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


PORTAL_APP = "vf-bench-portal"
"""The portal process's PostgreSQL sessions go by this application name, so that the CPU of
the database backends serving the upload can be told from the rest of the server's."""


def backend_cpu(url: str) -> dict[int, float]:
    """CPU seconds used so far by each PostgreSQL backend serving the portal (Linux, local
    server)."""
    from sqlalchemy import text

    from state.db import make_engine

    engine = make_engine(url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            pids = list(conn.execute(text("SELECT pid FROM pg_stat_activity "
                                          "WHERE application_name = :app"),
                                     {"app": PORTAL_APP}).scalars())
    finally:
        engine.dispose()
    return {pid: used for pid in pids if (used := cpu_s(pid)) is not None}


def via_http(url: str, path: Path, found: dict[str, Any]) -> tuple[float, dict[str, Any], float]:
    import httpx

    port = free_port()
    pg = not url.startswith("sqlite")
    portal_url = url + ("&" if "?" in url else "?") + f"application_name={PORTAL_APP}" \
        if pg else url
    server = subprocess.Popen([sys.executable, "-m", "bench.code_upload", "--serve",
                               str(port)], env={**os.environ, "VOUCHFLOW_DATABASE_URL": portal_url})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the portal did not start")
            time.sleep(0.1)
        backends_before = backend_cpu(url) if pg else {}
        cpu_before = cpu_s(server.pid) or 0.0
        started = time.perf_counter()
        with httpx.Client(timeout=None) as client:
            response = client.post(
                f"{base}/vendor/purchase-orders/{found['po_no']}/lines/1/codes",
                params={"file_name": path.name}, content=chunks(path),
                headers={"Authorization": f"Bearer {found['token']}",
                         "Content-Type": "text/csv"})
        elapsed = time.perf_counter() - started
        if response.status_code != 201:
            raise RuntimeError(f"upload answered {response.status_code}: {response.text[:500]}")
        peak = vm_hwm_mb(server.pid) or 0.0
        used = cpu_s(server.pid)
        CPU["portal"] = round(used - cpu_before, 2) if used is not None else None
        if pg:
            after = backend_cpu(url)
            CPU["postgres_backends"] = round(sum(
                cpu - backends_before.get(pid, 0.0) for pid, cpu in after.items()), 2)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return elapsed, response.json(), peak


def via_function(url: str, path: Path, found: dict[str, Any]
                 ) -> tuple[float, dict[str, Any], float]:
    from state.crypto import Keyring
    from state.db import make_engine
    from state.vendor_uploads import receive_code_file

    engine = make_engine(url)
    ring = Keyring.load()
    cpu_before = time.process_time()
    started = time.perf_counter()
    result = receive_code_file(engine, ring, vendor_id=found["vendor_id"], po_no=found["po_no"],
                               line_no=1, file_name=path.name, chunks=chunks(path))
    elapsed = time.perf_counter() - started
    CPU["portal"] = round(time.process_time() - cpu_before, 2)
    engine.dispose()
    return elapsed, result.as_dict(), peak_rss_mb()


def codes_in_pool(url: str) -> int:
    from sqlalchemy import text

    from state.db import make_engine

    engine = make_engine(url)
    with engine.connect() as conn:
        count = int(conn.execute(text("SELECT count(*) FROM pool_code")).scalar() or 0)
    engine.dispose()
    return count


# baseline -------------------------------------------------------------------------------------
def baseline(kind: str, url: str, path: Path) -> float:
    from cryptography.fernet import Fernet
    from sqlalchemy import text

    from state.db import make_engine

    fernet = Fernet(os.environ["VOUCHFLOW_CODE_KEY"].encode())
    key = os.environ["VOUCHFLOW_CODE_HASH_KEY"].encode()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE baseline_code (code_hash varchar(64) PRIMARY KEY, "
                          "code_enc text NOT NULL, pin_enc text, expires_on date)"))

    def rows() -> Iterator[tuple[Any, ...]]:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            next(reader)
            for code, pin, expires in reader:
                yield (hmac.new(key, code.encode(), hashlib.sha256).hexdigest(),
                       fernet.encrypt(code.encode()).decode(),
                       fernet.encrypt(pin.encode()).decode() if pin else None,
                       date.fromisoformat(expires) if expires else None)

    started = time.perf_counter()
    if kind == "postgresql":
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            with cursor.copy("COPY baseline_code (code_hash, code_enc, pin_enc, expires_on) "
                             "FROM STDIN") as copy:
                for row in rows():
                    copy.write_row(row)
            raw.commit()
        finally:
            raw.close()
    else:
        batch: list[tuple[Any, ...]] = []
        with engine.connect() as conn:
            sqlite = conn.connection.driver_connection
            for row in rows():
                batch.append((row[0], row[1], row[2], row[3].isoformat() if row[3] else None))
                if len(batch) >= 5000:
                    sqlite.execute("BEGIN")
                    sqlite.executemany("INSERT INTO baseline_code VALUES (?, ?, ?, ?)", batch)
                    sqlite.execute("COMMIT")
                    batch = []
            if batch:
                sqlite.execute("BEGIN")
                sqlite.executemany("INSERT INTO baseline_code VALUES (?, ?, ?, ?)", batch)
                sqlite.execute("COMMIT")
    elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed


def main(argv: list[str]) -> int:
    if argv[:1] == ["--serve"]:
        serve(int(argv[1]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench code_upload", description=__doc__)
    parser.add_argument("--codes", type=int, default=1_000_000)
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--via", choices=["http", "function"], default="http",
                        help="the real portal endpoint (another process) or the function")
    parser.add_argument("--pins", action="store_true", help="a PIN on every code")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args(argv)
    kind = args.database
    from cryptography.fernet import Fernet

    with tempfile.TemporaryDirectory(prefix="vf-bench-upload-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["VOUCHFLOW_HOME"] = str(tmp / "home")
        os.environ.setdefault("VOUCHFLOW_CODE_KEY", Fernet.generate_key().decode())
        os.environ.setdefault("VOUCHFLOW_CODE_HASH_KEY", Fernet.generate_key().decode())
        path = tmp / "codes.csv"
        write_file(path, args.codes, args.pins)
        file_mb = round(path.stat().st_size / 1e6, 1)
        log(f"{args.codes} codes, {file_mb} MB ({kind}, via {args.via})")
        with fresh_database(kind, tmp, "vf") as url, fresh_database(kind, tmp, "base") as burl:
            found = seed(url, args.codes)
            load_before = os.getloadavg()[0]
            run = via_http if args.via == "http" else via_function
            vouchflow_s, result, peak = run(url, path, found)
            log(f"vouchflow: {vouchflow_s:.1f}s, {result['status']}, "
                f"{result['rows_accepted']} accepted; peak {peak} MB")
            stored = codes_in_pool(url)
            baseline_s = None if args.no_baseline else baseline(kind, burl, path)
            if baseline_s is not None:
                log(f"baseline: {baseline_s:.1f}s")
    ok = result["rows_accepted"] == args.codes == stored and result["rows_rejected"] == 0
    emit({
        "bench": "code_upload",
        "scale": {"codes": args.codes, "pins": args.pins, "file_mb": file_mb},
        "database": kind,
        "via": args.via,
        "vouchflow_s": round(vouchflow_s, 3),
        "baseline_s": round(baseline_s, 3) if baseline_s is not None else None,
        "ratio": round(vouchflow_s / baseline_s, 3) if baseline_s else None,
        "codes_per_s": round(args.codes / vouchflow_s),
        "peak_rss_mb": peak,
        "portal_cpu_s": CPU.get("portal"),
        "postgres_backend_cpu_s": CPU.get("postgres_backends"),
        "codes_per_portal_cpu_s": round(args.codes / CPU["portal"]) if CPU.get("portal")
        else None,
        "status": result["status"],
        "rows_accepted": result["rows_accepted"],
        "codes_in_pool": stored,
        "ok": ok,
        "load_avg_at_start": round(load_before, 2),
        "baseline": BASELINE[kind],
        "targets": {"codes_per_s": 50_000, "peak_rss_mb": 300},
    })
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
