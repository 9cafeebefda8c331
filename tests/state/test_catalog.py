"""state.catalog: the SKUs remembered are the SKUs mapped, whether the caller dumped them
already (as their sku.changed events carry them) or not."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select, text

from state.catalog import load_listings, load_skus, remember_skus
from state.db import session_scope
from state.events import sku_events
from tests.state.procurement_world import sku


@pytest.mark.parametrize("form", ["dumps", "texts", "none"])
def test_a_sku_remembered_from_its_event_data_loads_as_the_sku_mapped(engine, form):
    """From the event's data, from the text the event stores, or dumped here: the same row,
    its data the canonical JSON of the SKU (not a JSON string of it)."""
    mapped = [sku("SKU-A"), sku("SKU-API", "api", None)]
    events = sku_events(mapped)
    dumped = {"dumps": [e.data for e in events], "texts": [e.stored_data() for e in events],
              "none": None}[form]
    with session_scope(engine) as s:
        remember_skus(s, [(mapped[0], "101"), (mapped[1], None)], dumped=dumped)
    with session_scope(engine) as s:
        loaded = load_skus(s)
        listings = load_listings(s)
        stored = dict(s.execute(text("SELECT sku, data FROM catalog_sku")).all())
    assert loaded == {k.sku: k for k in mapped}
    assert stored == {e.entity_key: e.data_json for e in events}
    assert listings == {"SKU-A": ("normal", ("sg1",)), "SKU-API": ("normal", ("sg1",))}


def test_dumped_skus_that_do_not_match_the_skus_are_refused(engine):
    mapped = [sku("SKU-A"), sku("SKU-B")]
    with session_scope(engine) as s, pytest.raises(ValueError, match="1 dumped SKU"):
        remember_skus(s, [(k, None) for k in mapped], dumped=[mapped[0].model_dump(mode="json")])


def _with(base, **change):
    from canonical import Sku

    return Sku.model_validate({**base.model_dump(mode="json"), **change})


def _stamp(engine, code: str):
    from state.catalog import CatalogSku

    with session_scope(engine) as s:
        return s.get(CatalogSku, code).updated_at


def test_the_stamp_moves_only_when_what_can_move_quotas_changes(engine):
    import time

    first = sku("SKU-A")
    with session_scope(engine) as s:
        remember_skus(s, [(first, "101")])
    stamped = _stamp(engine, "SKU-A")
    time.sleep(0.01)
    renamed = _with(first, name="Voucher A, renamed")
    with session_scope(engine) as s:
        remember_skus(s, [(renamed, "101")])
    with session_scope(engine) as s:
        assert load_skus(s)["SKU-A"].name == "Voucher A, renamed"  # kept, not stamped
    assert _stamp(engine, "SKU-A") == stamped
    for change in ({"status": "frozen"}, {"sales_areas": ["my1", "sg1"]},
                   {"issuance_mode": "api", "code_format": None}):
        time.sleep(0.01)
        renamed = _with(renamed, **change)
        with session_scope(engine) as s:
            remember_skus(s, [(renamed, "101")])
        assert _stamp(engine, "SKU-A") > stamped, change
        stamped = _stamp(engine, "SKU-A")


def _alembic(engine, step: str, revision: str) -> None:
    from alembic import command

    from state.db import alembic_config

    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, step)(cfg, revision)


def test_quota_stamps_kept_as_fingerprints_move_onto_their_rows_and_back(engine):
    """Migration 0014: what the last quota plan read of each catalogue entry and batch, kept
    until then as fingerprints of target ``pool``, lands on the rows themselves (other
    fingerprints stay); a downgrade puts it back."""
    from state.models import Fingerprint, PoolBatch
    from state.pool import upsert_batch

    with session_scope(engine) as s:
        remember_skus(s, [(sku("SKU-A"), "101"), (sku("SKU-B"), "102")])
        upsert_batch(s, batch_no="B-A", sku="SKU-A", issuance_mode="api",
                     unit_cost=Decimal("1.00"), currency="EUR", quantity=5)
    _alembic(engine, "downgrade", "0013_code_receipt")
    fp = Fingerprint.__table__
    rows = [("pool", "quota-input:catalog", "SKU-A", "stamp-a"),
            ("pool", "quota-input:batch", "B-A", "stamp-b"),
            ("wallet:sg1", "quota", "SKU-A", "digest-kept")]
    with engine.begin() as conn:
        conn.execute(fp.insert(), [
            {"target": t, "entity_type": k, "entity_key": e, "digest": d,
             "updated_at": datetime(2026, 11, 24, tzinfo=UTC)} for t, k, e, d in rows])
    _alembic(engine, "upgrade", "heads")
    with session_scope(engine) as s:
        assert dict(s.execute(text("SELECT sku, quota_read FROM catalog_sku")).all()) == {
            "SKU-A": "stamp-a", "SKU-B": None}
        assert s.execute(select(PoolBatch.__table__.c.quota_read)).scalar_one() == "stamp-b"
        assert s.execute(select(fp.c.target, fp.c.entity_type, fp.c.entity_key,
                                fp.c.digest)).all() == [rows[2]]
    _alembic(engine, "downgrade", "0013_code_receipt")
    with engine.connect() as conn:
        assert sorted(conn.execute(select(fp.c.target, fp.c.entity_type, fp.c.entity_key,
                                          fp.c.digest)).all()) == sorted(rows)
    _alembic(engine, "upgrade", "heads")
