"""Events for operators: dead letters and failed postings announced after their transaction
commits, with counts and names only (no keys, reasons, codes or secrets)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from flows import runtime
from flows.approvals import describe
from state.db import session_scope
from state.store import DeadLetterItem, on_dead_letters, record_dead_letters


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    from tests.conftest import _sqlite_engine

    yield from _sqlite_engine(tmp_path)


@pytest.fixture
def emitted(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(runtime, "in_flow_run", lambda: True)

    def fake_emit_event(**kwargs: Any) -> None:
        seen.append(kwargs)

    import prefect.events

    monkeypatch.setattr(prefect.events, "emit_event", fake_emit_event)
    return seen


def letter(flow: str, source: str, entity_type: str, key: str) -> DeadLetterItem:
    return DeadLetterItem(flow=flow, source=source, entity_type=entity_type, entity_key=key,
                          reason=f"code ABCD-1234-SECRET-{key} refused",
                          payload={"code": "ABCD-1234-SECRET", "pin": "9999"})


def test_dead_letters_are_announced_once_committed_without_keys_or_payloads(
        sqlite_engine: Engine, emitted: list[dict[str, Any]]) -> None:
    with session_scope(sqlite_engine) as session:
        record_dead_letters(session, [
            letter("sync_catalog", "erp", "inventoryItem", "101"),
            letter("sync_catalog", "erp", "inventoryItem", "102"),
            letter("ingest_sales", "erp", "salesOrder", "so-sg1-77"),
        ])
        assert emitted == []  # not before the commit
    names = [e["event"] for e in emitted]
    assert names.count("vouchflow.dead-letter.recorded") == 2
    assert names.count("vouchflow.posting.failed") == 1  # the sales order was a posting
    catalog = next(e for e in emitted if e["payload"].get("record_type") == "inventoryItem")
    assert catalog["payload"] == {"flow": "sync_catalog", "source": "erp",
                                  "record_type": "inventoryItem", "count": 2}
    text = json.dumps(emitted)
    for secret in ("ABCD", "9999", "so-sg1-77", "101", "refused"):
        assert secret not in text


def test_a_rolled_back_transaction_announces_nothing(
        sqlite_engine: Engine, emitted: list[dict[str, Any]]) -> None:
    with pytest.raises(RuntimeError), session_scope(sqlite_engine) as session:
        record_dead_letters(session, [letter("sync_catalog", "erp", "inventoryItem", "1")])
        raise RuntimeError("boom")
    assert emitted == []
    with session_scope(sqlite_engine) as session:  # the next one is announced as usual
        record_dead_letters(session, [letter("sync_catalog", "erp", "inventoryItem", "2")])
    assert [e["payload"]["count"] for e in emitted] == [1]


def test_a_failing_listener_does_not_fail_the_commit(sqlite_engine: Engine) -> None:
    def broken(_: Any) -> None:
        raise ValueError("listener bug")

    on_dead_letters(broken)
    try:
        with session_scope(sqlite_engine) as session:
            record_dead_letters(session, [letter("f", "erp", "inventoryItem", "3")])
    finally:
        from state import store

        store._dead_letter_listeners.remove(broken)


def test_outside_a_flow_run_nothing_is_emitted(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.events

    monkeypatch.setattr(prefect.events, "emit_event",
                        lambda **_: pytest.fail("emitted outside a flow run"))
    runtime.emit("vouchflow.test", resource_id="vouchflow.test")


def test_the_approval_form_says_what_is_approved() -> None:
    text = describe("remittance batch remit-20261101-card-sg1-v2",
                    {"net": "1,234.50 EUR", "open discrepancies": 3})
    assert "remittance batch remit-20261101-card-sg1-v2" in text
    assert "| net | 1,234.50 EUR |" in text and "approve" in text and "reject" in text
