"""One real Prefect server for the tests of this folder, as an operator would run it:
``vouchflow server up --workers 2`` on a fresh PostgreSQL database, the state database in a
fresh PostgreSQL schema, the sandboxes served from this process. Everything started here is
stopped, and the database and schema dropped, at the end (also after a failure)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from sandbox import SandboxSet, serve_all
from tests.conftest import PG_URL, require_postgres

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 2
ERP_LIMIT = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_connect(dbname: str = "postgres") -> Any:
    import psycopg

    url = make_url(PG_URL)
    return psycopg.connect(host=url.host or "127.0.0.1", port=url.port or 5432,
                           user=url.username, password=url.password, dbname=dbname,
                           autocommit=True, connect_timeout=5)


@dataclass
class PrefectServer:
    home: Path
    api_url: str
    ui_url: str
    env: dict[str, str]
    sandboxes: SandboxSet
    state_url: str

    def cli(self, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)

    @asynccontextmanager
    async def client(self) -> AsyncIterator[Any]:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            async with get_client() as client:
                yield client

    def worker_logs(self) -> dict[str, str]:
        return {p.stem: p.read_text(errors="replace")
                for p in (self.home / "server").glob("vouchflow-worker-*.log")}

    async def wait_for_runs(self, ids: list[Any], timeout_s: float,
                            done: frozenset[str] = frozenset(
                                {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}),
                            ) -> dict[Any, Any]:
        """Poll until every run is in one of ``done`` (state types); returns the runs."""
        deadline = time.monotonic() + timeout_s
        async with self.client() as client:
            while True:
                runs = {i: await client.read_flow_run(i) for i in ids}
                pending = [r for r in runs.values()
                           if r.state is None or r.state.type.value not in done]
                if not pending:
                    return runs
                if time.monotonic() > deadline:
                    states = {str(r.id)[:8]: r.state.name if r.state else None
                              for r in runs.values()}
                    raise AssertionError(f"runs not finished in {timeout_s:.0f} s: {states}\n"
                                         + self.tail_logs())
                await asyncio.sleep(0.5)

    def tail_logs(self, chars: int = 3000) -> str:
        out = []
        for path in sorted((self.home / "server").glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[PrefectServer]:
    require_postgres()
    from state.db import make_engine, upgrade

    token = uuid.uuid4().hex[:10]
    database, schema = f"prefect_test_{token}", f"srv_{token}"
    # not under pytest's basetemp: other pytest sessions on the machine prune old ones
    home = Path(tempfile.mkdtemp(prefix="vouchflow-server-"))
    pg = make_url(PG_URL)
    prefect_db = pg.set(drivername="postgresql", database=database).render_as_string(
        hide_password=False)
    state_url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    with _pg_connect(pg.database or "test") as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sandboxes = None
    env: dict[str, str] = {}
    try:
        engine = make_engine(state_url)
        upgrade(engine)  # once, before a dozen flow runs start on it
        engine.dispose()
        sandboxes = serve_all(None, erp_port=0, wallet_port=0, seed_skus=240, invalid=0,
                              seed=11, erp_options={"concurrency_limit": ERP_LIMIT},
                              finance_port=-1)
        port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYTEST_", "PREFECT_"))}
        env.update(sandboxes.env())
        env.update({
            "VOUCHFLOW_HOME": str(home),
            "VOUCHFLOW_PREFECT_DATABASE_URL": prefect_db,
            "VOUCHFLOW_PREFECT_PORT": str(port),
            "VOUCHFLOW_DATABASE_URL": state_url,
            "VOUCHFLOW_ERP_CONCURRENCY": str(ERP_LIMIT),
            # small SuiteQL pages: each run holds its ERP slot for several requests
            "VOUCHFLOW_ERP_PAGE_SIZE": "20",
            "VOUCHFLOW_GLOBAL_LIMITS": "1",
            "VOUCHFLOW_PROJECT_DIR": str(ROOT),
            # runs come from the tests, not from the schedules
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            # a run waiting for a global concurrency slot asks again within a second or so
            # (the server's default lets it wait up to 30 s when slots were held long)
            "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        })
        server = PrefectServer(home=home, api_url=f"http://127.0.0.1:{port}/api",
                               ui_url=f"http://127.0.0.1:{port}", env=env,
                               sandboxes=sandboxes, state_url=state_url)
        started = time.monotonic()
        result = server.cli("server", "up", "--workers", str(WORKERS), "--worker-limit", "6")
        assert result.returncode == 0, result.stdout + result.stderr + server.tail_logs()
        server.up_seconds = time.monotonic() - started  # type: ignore[attr-defined]
        yield server
    finally:
        if env:
            subprocess.run([sys.executable, "-m", "flows.cli", "server", "down"], cwd=ROOT,
                           env=env, capture_output=True, timeout=120, check=False)
            _kill_leftovers(home)
        if sandboxes is not None:
            sandboxes.stop()
        with _pg_connect(pg.database or "test") as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        with _pg_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(home, ignore_errors=True)


def _kill_leftovers(home: Path) -> None:
    """Whatever `server down` did not stop (it should have stopped everything)."""
    from flows.server import ServerState, stop_process

    for proc in ServerState.load(home / "server" / "state.json").processes:
        stop_process(proc, timeout_s=5)
