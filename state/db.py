"""Engines, transactions and migrations for the state database.

SQLite is the embedded default for one process; PostgreSQL as soon as more than one worker
runs. The same code runs on both; the few differences (how to take a write lock up front) are
handled here and nowhere else.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session

from state.settings import StateSettings

_engines: dict[str, Engine] = {}
_migrated: set[str] = set()
_lock = threading.Lock()


def _sqlite_setup(engine: Engine) -> None:
    # Python's sqlite3 opens transactions lazily and on its own terms; take that over so
    # BEGIN IMMEDIATE (a write lock up front, needed by claims such as code allocation) works.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before it returns. With NORMAL a crash of the machine
        # (not of the process) may take back the last commits, and a flow acts on what it
        # committed at once: an allocation committed, its codes delivered to a site, then
        # rolled back by a power cut would put those codes back on sale. It costs ~0.2 ms a
        # commit here; vouchflow commits per chunk, not per record.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(conn.info.pop("vf_begin", "BEGIN"))


def make_engine(url: str, **kwargs: Any) -> Engine:
    """A new engine for ``url`` (tests use this for isolated databases)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False},
                               **kwargs)
        _sqlite_setup(engine)
    else:
        kwargs.setdefault("pool_pre_ping", True)
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        engine = create_engine(url, **kwargs)
    return engine


def get_engine(url: str | None = None, *, migrate: bool = True) -> Engine:
    """The process-wide engine for the configured (or given) state database, migrated."""
    url = url or StateSettings().resolved_url()
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        if migrate and url not in _migrated:
            upgrade(engine)
            _migrated.add(url)
    return engine


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _migrated.clear()


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("state") / "migrations"))
    if engine is not None:
        # configparser treats % as interpolation; URL-encoded options contain it
        url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
        cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Bring the schema to ``revision`` (alembic), inside one connection. The default is every
    head: features add their tables as branches off the same base, so two of them written
    side by side never fight over one ``down_revision``."""
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revisions(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def head_revisions() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


@contextmanager
def session_scope(engine: Engine | None = None, *, immediate: bool = False) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on any error.

    ``immediate=True`` takes the write lock at the start (SQLite ``BEGIN IMMEDIATE``), so a
    read-then-write claim cannot interleave with another writer; on PostgreSQL row locks
    (``FOR UPDATE SKIP LOCKED``) do that job and the flag changes nothing.
    """
    engine = engine or get_engine()
    with engine.connect() as conn:
        if immediate and engine.dialect.name == "sqlite":
            conn.info["vf_begin"] = "BEGIN IMMEDIATE"
        with Session(bind=conn, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise
