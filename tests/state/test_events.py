"""Events for subscribers on SQLite and PostgreSQL: written with the change they announce,
stable ids, numbered in commit order, and emitted by the code pool's own writes."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select, text

import state.pool as pool
from canonical import Sku
from state.crypto import Keyring
from state.db import session_scope
from state.events import (
    Event,
    OutboundEvent,
    covers,
    emit_events,
    event_id,
    read_events,
    safe_key,
    sku_events,
    validate_patterns,
)
from tests.conftest import require_postgres

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def ev(key: str, version: str = "", type_: str = "sales_order.recorded", **data: Any) -> Event:
    return Event(type=type_, entity_type="sales_order", entity_key=key, occurred_at=T0,
                 data=data or {"k": key}, version=version)


def all_events(engine: Any) -> list[Any]:
    with session_scope(engine) as s:
        return read_events(s, after=0, limit=100_000)


def test_ids_are_stable_safe_and_never_shared():
    assert event_id("sales_order.recorded", "sg1:SO-1", "v1") == \
        event_id("sales_order.recorded", "sg1:SO-1", "v1")
    ids = {event_id("sales_order.recorded", k, v) for k, v in
           [("a-b", "c"), ("a", "b-c"), ("a:b", "c"), ("a", "b:c"), ("a_b", "c"), ("a", "b_c")]}
    assert len(ids) == 6
    for i in ids:
        assert len(i) <= 255 and all(c.isalnum() or c in "_-" for c in i)
    assert safe_key("x" * 300).endswith(tuple("0123456789abcdef")) and len(safe_key("x" * 300)) < 220


def test_a_repeat_emits_nothing_and_keeps_the_first(engine):
    with session_scope(engine) as s:
        assert emit_events(s, [ev("o1", "v1"), ev("o2", "v1"), ev("o1", "v1")]) == 2
    with session_scope(engine) as s:
        assert emit_events(s, [ev("o1", "v1", k="changed?"), ev("o1", "v2")]) == 1
    got = all_events(engine)
    assert [e.entity_key for e in got] == ["o1", "o2", "o1"]  # numbers grow (with gaps)
    assert [e.seq for e in got] == sorted(e.seq for e in got)
    assert got[0].as_dict()["data"] == {"k": "o1"}  # the first write wins
    body = got[0].as_dict()
    assert set(body) == {"id", "type", "occurred_at", "sequence", "entity", "data"}
    assert body["occurred_at"] == "2026-11-22T10:00:00Z"
    assert body["entity"] == {"type": "sales_order", "key": "o1"}
    assert body["sequence"] == got[0].seq


def test_every_field_is_stored_as_it_was_emitted(engine):
    """The data is stored as compact JSON with sorted keys (what subscribers receive), however
    the events were sent to the database, and so are the times and keys."""
    data = {"z": "Ä \"quoted\" \\ back", "a": [1, {"y": None, "b": True}], "m": Decimal("1.50"),
            "t": T0}
    at = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=8)))
    odd = Event(type="sales_order.recorded", entity_type="sales_order", entity_key="sg1:a,b\tc",
                occurred_at=at, data=data, version="v1")
    with session_scope(engine) as s:
        assert emit_events(s, [odd, ev("o2")]) == 2
    got = all_events(engine)
    assert got[0].data_json == ('{"a":[1,{"b":true,"y":null}],"m":"1.50",'
                                '"t":"2026-11-22 10:00:00+00:00",'
                                '"z":"\\u00c4 \\"quoted\\" \\\\ back"}')
    assert (got[0].event_id, got[0].entity_key, got[0].occurred_at) == (odd.id, odd.entity_key, at)
    assert got[1].as_dict()["data"] == {"k": "o2"}


def test_events_commit_with_the_change_or_not_at_all(engine):
    with pytest.raises(RuntimeError), session_scope(engine) as s:
        emit_events(s, [ev("o1")])
        raise RuntimeError("the change failed")
    assert all_events(engine) == []


def test_reading_by_cursor_and_type_patterns(engine):
    with session_scope(engine) as s:
        emit_events(s, [ev(f"o{i}", type_=t) for i, t in enumerate(
            ["sales_order.recorded", "order_line.allocated", "order_line.delivered",
             "sku.changed", "sales_order.recorded"])])
    with session_scope(engine) as s:  # a fresh table: numbered 1..5
        assert [e.seq for e in read_events(s, after=0, patterns=["order_line.*"])] == [2, 3]
        assert [e.seq for e in read_events(s, after=2, patterns=["*"], limit=2)] == [3, 4]
        assert [e.seq for e in read_events(s, after=0, patterns=["sku.changed",
                                                                 "sales_order.*"])] == [1, 4, 5]
        assert [e.seq for e in read_events(s, after=1, upto=3)] == [2, 3]
    assert covers(["order_line.*"], "order_line.allocated")
    assert not covers(["order_line.*"], "order_lines.x") and not covers(["sku"], "sku.changed")
    with pytest.raises(ValueError, match="matches no known type"):
        validate_patterns(["sales_orders.*"])
    with pytest.raises(ValueError, match="not a type"):
        validate_patterns(["sales order"])
    assert validate_patterns(["*", " sku.changed "]) == ["*", "sku.changed"]


def test_sku_events_change_with_content_and_version():
    base = {"sku": "SKU-1", "name": "Voucher", "kind": "gift_card",
            "face_value": {"amount": "10.00", "currency": "SGD"}, "sales_areas": ["sg1"],
            "issuance_mode": "code_pool", "write_off_type": "on_delivery",
            "status": "normal", "updated_at": T0}
    a = Sku.model_validate(base)
    again = Sku.model_validate(base)
    renamed = Sku.model_validate({**base, "name": "Voucher 2"})
    later = Sku.model_validate({**base, "updated_at": T0 + timedelta(hours=1)})
    ids = [e.id for e in sku_events([a, again, renamed, later])]
    assert ids[0] == ids[1] and len(set(ids)) == 3
    assert sku_events([a])[0].entity_key == "SKU-1"


# wired into the code pool ---------------------------------------------------------------------
def order(order_id: str, *, updated: datetime = T0, status: str = "paid",
          lines: tuple[tuple[str, str, int], ...] = (("1", "SKU1", 1),)) -> dict[str, Any]:
    return {"site": "sg1", "order_id": order_id, "status": status, "created_at": T0,
            "updated_at": updated, "currency": "EUR",
            "lines": [{"line_id": lid, "sku": sku, "quantity": q, "unit_price": "4.95"}
                      for lid, sku, q in lines]}


def types_of(engine: Any) -> list[tuple[str, str]]:
    return [(e.type, e.entity_key) for e in all_events(engine)]


def test_recording_orders_emits_once_per_version(engine):
    with session_scope(engine) as s:
        pool.record_orders(s, [order("SO-1"), order("SO-2")])
    with session_scope(engine) as s:  # the same versions again (a re-run, a repeated webhook)
        pool.record_orders(s, [order("SO-1"), order("SO-2"), order("SO-1", updated=T0 - timedelta(1))])
    assert types_of(engine) == [("sales_order.recorded", "sg1:SO-1"),
                                ("sales_order.recorded", "sg1:SO-2")]
    with session_scope(engine) as s:
        pool.record_orders(s, [order("SO-1", updated=T0 + timedelta(minutes=5),
                                     status="cancelled")])
    got = all_events(engine)
    assert len(got) == 3 and got[2].as_dict()["data"]["status"] == "cancelled"
    assert got[2].event_id != got[0].event_id
    data = got[0].as_dict()["data"]
    assert data["lines"] == [{"line_id": "1", "sku": "SKU1", "quantity": 1,
                              "unit_price": "4.95"}]
    assert data["total"] == "4.95" and data["updated_at"] == "2026-11-22T10:00:00Z"


def test_allocation_and_delivery_emit_per_line_without_codes(engine):
    ring = Keyring.generate()
    with session_scope(engine) as s:
        pool.add_batch(s, batch_no="B1", sku="SKU1", issuance_mode="code_pool",
                       unit_cost=Decimal("1.2500"), currency="EUR")
    pool.add_codes(engine, "B1", [(f"SECRET-CODE-{i:04d}", None, None) for i in range(3)],
                   ring, actor="vendor", system="portal")
    with session_scope(engine) as s:
        pool.record_orders(s, [order("SO-1", lines=(("1", "SKU1", 2), ("2", "SKU1", 1)))])
    report = pool.allocate(engine, today=T0.date())
    assert report.lines_allocated == 2
    assert pool.allocate(engine, today=T0.date()).lines_allocated == 0  # nothing left to do
    with session_scope(engine) as s:
        ids = [r[0] for r in s.execute(text(
            "SELECT id FROM pool_code WHERE line_ref = 'sg1:SO-1:1' ORDER BY unit"))]
        assert pool.mark_delivered(s, "sg1", "SO-1", "1", ids) == 2
    with session_scope(engine) as s:
        assert pool.mark_delivered(s, "sg1", "SO-1", "1", ids) == 0
    got = all_events(engine)
    assert [e.type for e in got] == ["sales_order.recorded", "order_line.allocated",
                                     "order_line.allocated", "order_line.delivered"]
    assert {e.entity_key for e in got} == {"sg1:SO-1"}  # one entity: kept in order
    assert got[1].as_dict()["data"]["quantity"] == 2
    assert got[3].as_dict()["data"] == {"site": "sg1", "order_id": "SO-1", "line_id": "1",
                                        "codes": 2, "delivered_at": got[3].as_dict()["data"][
                                            "delivered_at"]}
    assert "SECRET-CODE" not in str([e.data_json for e in got])


# numbering --------------------------------------------------------------------------------
def test_postgres_numbers_become_visible_in_order(pg_engine):
    """A second emitter waits for the first to commit, so no reader ever sees seq n+1 while
    n may still commit behind it."""
    require_postgres()
    first = pg_engine.connect()
    tx = first.begin()
    from sqlalchemy.orm import Session

    held = Session(bind=first)
    emit_events(held, [ev("early")])
    done: dict[str, Any] = {}

    def second() -> None:
        with session_scope(pg_engine) as s:
            done["pid"] = s.scalar(text("SELECT pg_backend_pid()"))
            emit_events(s, [ev("late")])
        done["at"] = time.monotonic()

    thread = threading.Thread(target=second)
    thread.start()
    deadline = time.monotonic() + 10
    with pg_engine.connect() as watch:  # the second emitter queues on the advisory lock
        while "pid" not in done or not watch.scalar(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND pid = :pid"), {"pid": done["pid"]}):
            assert time.monotonic() < deadline, "the second emitter never waited"
            time.sleep(0.01)
    with session_scope(pg_engine) as s:
        assert s.scalar(select(func.count()).select_from(OutboundEvent)) == 0
    held.flush()
    tx.commit()
    held.close()
    first.close()
    thread.join(10)
    got = all_events(pg_engine)
    assert [e.entity_key for e in got] == ["early", "late"] and got[0].seq < got[1].seq


# the stored text, made once -------------------------------------------------------------------
class _Mode(str, __import__("enum").Enum):
    A = "a"


@pytest.mark.parametrize("data", [
    {"b": 1, "a": [True, False, None, "x"], "c": {"z": "1.50", "y": ()}},
    {"name": "Thé voucher ¥ 日本", "sku": "SKU-1"},  # non-ASCII: json escapes it
    {"s": "tab\there \"q\" back\\ nul\x00 del\x7f bell\x07 /"},
    {"m": Decimal("1.50"), "n": Decimal("-0E-2"), "big": 2 ** 70, "neg": -(2 ** 63)},
    {"enum": _Mode.A, "t": T0, "nested": [{"k": _Mode.A}]},  # by str, as json.dumps does
    {10: "int keys, sorted as numbers", 9: "b"},
    [], {}, "plain", 12,
])
def test_canonical_json_is_exactly_what_json_dumps_writes(data):
    """Fingerprints and stored event data made before keep matching: the same bytes as
    ``json.dumps(sort_keys, no spaces, default=str)`` for every kind of value it is given."""
    from state.events import canonical_json

    assert canonical_json(data) == json.dumps(data, sort_keys=True, separators=(",", ":"),
                                              default=str)


def test_a_sku_event_keeps_its_id_and_stored_text_from_before():
    """The version hashes the same text ``state.store.fingerprint`` hashes, and the text the
    event carries is the one ``JSONText`` would store: ids and data do not move on upgrade."""
    from state.events import version_of
    from state.store import fingerprint

    for name in ("Voucher", "Bon d'achat é 日本"):
        mapped = Sku.model_validate({
            "sku": "SKU-1", "name": name, "kind": "gift_card",
            "face_value": {"amount": "10.00", "currency": "SGD"}, "sales_areas": ["sg1"],
            "issuance_mode": "code_pool", "write_off_type": "on_delivery", "status": "normal",
            "updated_at": T0 + timedelta(microseconds=5)})
        event = sku_events([mapped])[0]
        data = mapped.model_dump(mode="json")
        assert event.data == data
        assert event.version == f"{version_of(mapped.updated_at)}_{fingerprint(data)[:12]}"
        assert event.data_json == json.dumps(data, sort_keys=True, separators=(",", ":"))


def test_events_with_their_text_made_store_that_text(engine):
    """An event built with its data's text (``sku_changed``) stores exactly that text, next to
    events whose data is dumped on the way in; a repeat of either adds nothing."""
    mapped = Sku.model_validate({
        "sku": "SKU-1", "name": "Bon é", "kind": "gift_card",
        "face_value": {"amount": "10.00", "currency": "SGD"}, "sales_areas": ["sg1"],
        "issuance_mode": "code_pool", "write_off_type": "on_delivery", "status": "normal",
        "updated_at": T0})
    first = sku_events([mapped])
    with session_scope(engine) as s:
        assert emit_events(s, [*first, ev("o1")]) == 2
    with session_scope(engine) as s:
        assert emit_events(s, [*sku_events([mapped]), ev("o1"), ev("o2")]) == 1
    got = all_events(engine)
    assert [e.event_id for e in got] == [first[0].id, ev("o1").id, ev("o2").id]
    assert got[0].data_json == first[0].data_json
    assert got[0].as_dict()["data"] == mapped.model_dump(mode="json")
    assert got[0].occurred_at == T0 and got[0].recorded_at.tzinfo is not None
