"""Shared fixtures: isolated state databases on SQLite and PostgreSQL, one Prefect test
harness per session, and an isolated VOUCHFLOW_HOME for every test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

PG_URL = os.environ.get(
    "VOUCHFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# keep Prefect quiet and local for the whole session (set before prefect is imported)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("VOUCHFLOW_GLOBAL_LIMITS", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def postgres_reachable() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    try:
        import psycopg

        with psycopg.connect(PG_URL.replace("postgresql+psycopg", "postgresql"),
                             connect_timeout=3) as conn:
            conn.execute("select 1")
        return None
    except Exception as exc:  # any failure to connect is the reason
        return f"PostgreSQL at {PG_URL} unreachable: {exc.__class__.__name__}: {exc}"


def require_postgres() -> None:
    reason = postgres_reachable()
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def vouchflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "vfhome"
    monkeypatch.setenv("VOUCHFLOW_HOME", str(home))
    monkeypatch.delenv("VOUCHFLOW_DATABASE_URL", raising=False)
    return home


def _sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    from state.db import make_engine, upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def _postgres_engine() -> Iterator[Engine]:
    from state.db import make_engine, upgrade

    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_URL, pool_size=1, max_overflow=0)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(f"{PG_URL}?options=-csearch_path%3D{schema}")
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty state database; every test using it runs on both databases."""
    if request.param == "sqlite":
        yield from _sqlite_engine(tmp_path)
    else:
        yield from _postgres_engine()


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    yield from _postgres_engine()


@pytest.fixture
def state_url(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point vouchflow's own engine lookup at the test database."""
    from state import db

    url = engine.url.render_as_string(hide_password=False)
    monkeypatch.setenv("VOUCHFLOW_DATABASE_URL", url)
    yield url
    stale = db._engines.pop(url, None)
    if stale is not None:
        stale.dispose()
    db._migrated.discard(url)


@pytest.fixture(scope="module")
def supplier_served() -> Iterator[Any]:
    """The supplier sandbox served on a loopback port for a test module."""
    from sandbox.core import serve
    from sandbox.supplier import SupplierSandbox

    with serve(SupplierSandbox()) as served:
        yield served


def fresh_supplier(served: Any, *, pattern: str) -> Any:
    """The served supplier sandbox emptied, selling ``GC-10`` in codes of ``pattern``."""
    from sandbox.supplier import SupplierSandbox

    sandbox = served.sandbox
    assert isinstance(sandbox, SupplierSandbox)
    sandbox.reset()
    sandbox.add_sku("GC-10", pattern=pattern, pin_digits=4, unit_price="9.50")
    return sandbox


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test harness (a temporary API on SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """With CI=true nothing may skip: a test that cannot run there (no PostgreSQL, no shared
    test data, no browser) fails with its reason instead of turning green by omission."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"CI=true and this test would have been skipped: {reason}"


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Modules with slow tests run first. ``make test`` spreads whole modules over several
    processes (pytest-xdist, ``--dist loadfile``); a slow module handed out last would keep
    one process busy long after the others ran out of work."""
    slow_modules = {item.module.__name__ for item in items
                    if item.get_closest_marker("slow") is not None and item.module is not None}
    items.sort(key=lambda item: item.module is None or item.module.__name__ not in slow_modules)
