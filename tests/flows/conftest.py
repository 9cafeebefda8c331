"""Flow tests: the sandboxes served on loopback, vouchflow pointed at them by environment,
one Prefect harness for the session, the state database on SQLite (and PostgreSQL where a
test asks for it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox import SandboxSet, serve_all


@pytest.fixture
def sandboxes(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
              ) -> Iterator[SandboxSet]:
    marker = request.node.get_closest_marker("seed")
    skus, invalid = marker.args if marker else (240, 6)
    group = serve_all(None, erp_port=0, wallet_port=0, seed_skus=skus, invalid=invalid, seed=7)
    try:
        for name, value in group.env().items():
            monkeypatch.setenv(name, value)
        yield group
    finally:
        group.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "seed(skus, invalid): how the ERP sandbox is seeded")


@pytest.fixture(params=["sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path):
    """Flow tests run on SQLite unless they ask for both databases with
    ``@pytest.mark.parametrize("engine", BOTH_DATABASES, indirect=True)``."""
    from tests.conftest import _postgres_engine, _sqlite_engine

    if request.param == "sqlite":
        yield from _sqlite_engine(tmp_path)
    else:
        yield from _postgres_engine()


BOTH_DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
