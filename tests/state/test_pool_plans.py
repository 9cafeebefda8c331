"""The allocation path's statements reach codes through the one partial index on in-stock codes.

``pool_code`` keeps as few indexes as it can: every allocation changes a code's status, so the
update writes a new entry into each of them. Queries on codes in stock spell the partial
index's predicate literally (a bound parameter would hide it from SQLite's planner and from
PostgreSQL's generic plans) and so never need an index of their own.
"""

from __future__ import annotations

from sqlalchemy import inspect

from state.models import PoolCode
from state.pool import _IN_STOCK, _SQLITE_CLAIM_CODES


def test_pool_code_has_one_index_on_status_the_partial_in_stock_one(engine):
    indexes = {ix["name"]: ix for ix in inspect(engine).get_indexes(PoolCode.__tablename__)}
    assert "ix_pool_code_alloc" not in indexes
    assert indexes["ix_pool_code_in_stock"]["column_names"] == [
        "sku", "expiry_rank", "batch_seq", "id"]
    with_status = [name for name, ix in indexes.items() if "status" in ix["column_names"]]
    assert with_status == []


def test_in_stock_queries_use_the_partial_index_on_sqlite(tmp_path):
    from state.db import make_engine, upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'plans.db'}")
    upgrade(engine)
    claim = _SQLITE_CLAIM_CODES.replace(":sku", "?").replace(":today", "?") \
        .replace(":batches", "?").replace(":exclude", "?").replace(":n", "?")
    with engine.connect() as conn:
        claim_plan = " | ".join(str(tuple(r)[-1]) for r in conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + claim, ("SKU1", 0, '["B1"]', "[]", 10)))
        count_plan = " | ".join(str(tuple(r)[-1]) for r in conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT count(*) FROM pool_code WHERE sku = ? AND "
            f"{_IN_STOCK.text} AND batch_no = ?", ("SKU1", "B1")))
    engine.dispose()
    assert "USING INDEX ix_pool_code_in_stock" in claim_plan
    assert "USING INDEX ix_pool_code_in_stock" in count_plan
