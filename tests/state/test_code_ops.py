"""Code operations on SQLite and PostgreSQL: downgrade and re-promote move codes in stock to
batches of their own (quantities and the cost ledger follow), replace keeps the customer's
line, return needs a contract that allows it; every code's chronology says what happened."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from canonical import Sku
from state import code_ops as ops
from state import costing, pool
from state import procurement as proc
from state import vendor_uploads as vu
from state.catalog import remember_skus
from state.crypto import Keyring
from state.db import session_scope
from state.events import read_events
from state.models import OutboxMessage, PoolBatch, PoolCode
from state.purchasing_models import CostKind
from tests.state.procurement_world import TODAY, codes_csv, seed_catalog, sku, vendor_with_po


def cheap_sku() -> Sku:
    low = sku("SKU-LOW").model_dump(mode="json")
    low["face_value"] = {"amount": "5.00", "currency": "SGD"}
    return Sku.model_validate(low)


@pytest.fixture
def world(engine):
    seed_catalog(engine)
    with session_scope(engine) as s:
        remember_skus(s, [(cheap_sku(), "104")])
    ring = Keyring.generate()
    party = vendor_with_po(engine, ring, "Ops Supplier", quantity=8)
    codes = [f"OPSCODE{i:05d}" for i in range(8)]
    result = vu.receive_code_file(engine, ring, vendor_id=party.vendor_id, po_no=party.po_no,
                                  line_no=1, file_name="c.csv",
                                  chunks=[codes_csv([f"{c},," for c in codes])], today=TODAY)
    assert result.status == "accepted"
    with session_scope(engine) as s:
        ids = [c.id for c in s.scalars(select(PoolCode).order_by(PoolCode.id))]
    return engine, ring, party, result.batch_no, ids


def history(engine, code_id: int) -> list[tuple[str, str | None, str | None]]:
    with session_scope(engine) as s:
        return [(e.action, e.from_status, e.to_status) for e in pool.code_history(s, code_id)]


def batch(engine, batch_no: str) -> tuple[int, int, int, int]:
    with session_scope(engine) as s:
        b = s.get(PoolBatch, batch_no)
        return b.quantity, b.available, b.remaining, b.unposted


def test_downgrade_and_repromote_move_codes_to_batches_of_their_own(world):
    engine, _, _, batch_no, ids = world
    with session_scope(engine) as s:
        with pytest.raises(ops.CodeOpError, match="not in the catalogue"):
            ops.downgrade(s, ids[:1], to_sku="NOPE", actor="ops")
        report = ops.downgrade(s, ids[:3], to_sku="SKU-LOW", actor="ops", reason="slow seller")
        again = ops.downgrade(s, ids[:3], to_sku="SKU-B", actor="ops")  # SKU-B: same value
    assert len(report.done) == 3 and report.batches == {f"{batch_no}-dg-SKU-LOW": 3}
    # already moved: the three now are SKU-LOW codes, and SKU-B is worth more
    assert {w for _, w in again.skipped} == {"SKU-B (10.00) is not worth less than SKU-LOW "
                                            "(5.00)"}
    assert batch(engine, batch_no) == (5, 5, 5, 0)
    assert batch(engine, f"{batch_no}-dg-SKU-LOW") == (3, 3, 3, 0)
    assert history(engine, ids[0])[-1] == ("transfer", "in_stock", "in_stock")
    with session_scope(engine) as s:
        rp = ops.repromote(s, ids[3:5], campaign="xmas26", sites=["sg1"], actor="ops")
        assert s.get(PoolCode, ids[3]).batch_no == f"{batch_no}-rp-xmas26"
        assert s.get(PoolBatch, f"{batch_no}-rp-xmas26").sites == "sg1"
        with pytest.raises(ops.CodeOpError, match="another SKU or a campaign"):
            ops.repromote(s, ids[5:6], actor="ops")
    assert len(rp.done) == 2 and batch(engine, batch_no) == (3, 3, 3, 0)
    # the cost ledger sees transfers: out of the batch and into the new ones, same cost
    with session_scope(engine) as s:
        costing.refresh(s, settle=timedelta(0))
        stock = {layer.batch_no: layer.quantity
                 for layer in costing.on_hand(s, datetime.now(UTC).date())}
    assert stock == {batch_no: 3, f"{batch_no}-dg-SKU-LOW": 3, f"{batch_no}-rp-xmas26": 2}
    # sold from the downgraded batch under its new SKU
    with session_scope(engine) as s:
        pool.record_orders(s, [pool.SiteOrder(
            site="sg1", order_id="d1", status="confirmed", created_at=datetime.now(UTC),
            updated_at=datetime.now(UTC), currency="SGD",
            lines=(pool.SiteOrderLine("1", "SKU-LOW", 2, Decimal("5.00")),))])
    assert pool.allocate(engine).codes_allocated == 2
    assert batch(engine, f"{batch_no}-dg-SKU-LOW") == (3, 1, 3, 2)


def test_replace_keeps_the_customers_line_and_queues_the_new_code(world):
    engine, _, _, batch_no, ids = world
    now = datetime.now(UTC)
    with session_scope(engine) as s:
        pool.record_orders(s, [pool.SiteOrder(
            site="sg1", order_id="r1", status="confirmed", created_at=now, updated_at=now,
            currency="SGD", lines=(pool.SiteOrderLine("1", "SKU-A", 2, Decimal("10.00")),))])
    pool.allocate(engine)
    with session_scope(engine) as s:
        sold = [c for c in s.scalars(select(PoolCode).where(PoolCode.line_ref.is_not(None))
                                     .order_by(PoolCode.unit))]
        pool.mark_delivered(s, "sg1", "r1", "1", [c.id for c in sold])
        faulty = sold[0]
        report = ops.replace(s, [faulty.id, ids[-1]], actor="support", reason="code rejected")
    assert report.done == [faulty.id] and report.skipped == [(ids[-1], "in_stock, not a sold code")]
    with session_scope(engine) as s:
        old = s.get(PoolCode, faulty.id)
        fresh = s.scalar(select(PoolCode).where(PoolCode.line_ref == faulty.line_ref,
                                                PoolCode.unit == faulty.unit))
        assert old.status == "replaced" and old.line_ref is None
        assert fresh.status == "allocated" and fresh.id != faulty.id
        queued = s.scalar(select(OutboxMessage).where(
            OutboxMessage.idempotency_key.like("%-rpl%")))
        assert queued.payload["code_ids"] == [fresh.id] and queued.payload["line_id"] == "1"
    assert history(engine, faulty.id)[-1] == ("replace", "sold", "replaced")
    assert history(engine, fresh.id)[-1] == ("replace", "in_stock", "allocated")
    assert batch(engine, batch_no) == (8, 5, 8, 3)


def test_return_needs_a_contract_that_allows_it_and_a_bill(world):
    engine, _, party, batch_no, ids = world
    with session_scope(engine) as s:
        report = ops.return_to_supplier(s, ids[:2], actor="ops")
    # the test world's contract does not allow returns
    assert report.done == [] and Counter(w for _, w in report.skipped) == {
        f"the contract of batch {batch_no} does not allow returns": 2}
    with session_scope(engine) as s:
        contract = proc.get_contract(s, party.contract_no)
        contract.allows_returns = True
        s.flush()
        assert "settle it first" in ops.return_to_supplier(s, ids[:1], actor="ops").skipped[0][1]
        proc.bill_received(s, party.po_no, bill_date=date(2026, 11, 30))
        done = ops.return_to_supplier(s, ids[:2], actor="ops", reason="expired soon")
    assert len(done.done) == 2 and len(done.credits) == 1
    assert batch(engine, batch_no) == (8, 6, 8, 2)  # off sale now, off the book with the credit
    with session_scope(engine) as s:
        (credit, _, line), = ops.credits_to_write(s)
        assert (credit.quantity, credit.amount, line) == (2, Decimal("15.0000"), 1)
        ops.record_credit(s, credit.id, "900")
        costing.refresh(s, settle=timedelta(0))
        assert costing.totals(s, CostKind.RETURN) == {"SGD": Decimal("15.0000")}
    assert batch(engine, batch_no) == (8, 6, 6, 0)
    assert history(engine, ids[0])[-1] == ("return", "in_stock", "returned")
    with session_scope(engine) as s:
        again = ops.return_to_supplier(s, ids[:2], actor="ops")  # already returned
        bill_no = s.get(proc.VendorBill, credit.bill_id).bill_no
        credited = read_events(s, after=0, patterns=["vendor_bill.credited"])
    assert again.done == [] and again.credits == []
    assert len(credited) == 1 and credited[0].entity_key == bill_no  # subscribers hear once
    data = json.loads(credited[0].data_json)
    assert (data["credit_no"], data["quantity"], data["amount"], data["currency"]) == (
        credit.credit_no, 2, "15.0000", "SGD")
    assert "code" not in {k.lower() for k in data} and data["reason"] == "expired soon"

