"""The cost ledger on SQLite and PostgreSQL: purchases at the batch cost, sales at the sold
code's own batch cost (reversed when a code goes back to stock), expired stock written off,
units on hand per batch; read incrementally, each fact once."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from state import costing, pool
from state import vendor_uploads as vu
from state.crypto import Keyring
from state.db import session_scope
from state.purchasing_models import CostKind
from tests.state.procurement_world import TODAY, codes_csv, seed_catalog, vendor_with_po


def test_cost_layers_from_receipts_sales_and_expiry(engine):
    seed_catalog(engine)
    ring = Keyring.generate()
    cheap = vendor_with_po(engine, ring, "Cheap", quantity=4, unit_cost="2.5000")
    dear = vendor_with_po(engine, ring, "Dear", quantity=4, unit_cost="3.1250")
    for party, prefix, expiry in ((cheap, "CHEAPCODE", "2026-12-01"),
                                  (dear, "DEARCODEXX", "2027-06-30")):
        rows = [f"{prefix}{i:02d}{'X' * (12 - len(prefix) - 2)},,{expiry}" for i in range(4)]
        result = vu.receive_code_file(engine, ring, vendor_id=party.vendor_id,
                                      po_no=party.po_no, line_no=1, file_name="c.csv",
                                      chunks=[codes_csv(rows)], today=TODAY)
        assert result.status == "accepted", result
    now = datetime.now(UTC)
    with session_scope(engine) as s:
        pool.record_orders(s, [pool.SiteOrder(
            site="sg1", order_id="o1", status="confirmed", created_at=now, updated_at=now,
            currency="SGD", lines=(pool.SiteOrderLine("1", "SKU-A", 6, Decimal("10.00")),))])
    assert pool.allocate(engine, today=TODAY).codes_allocated == 6  # 4 cheap (earlier expiry), 2 dear
    with session_scope(engine) as s:
        pool.refund(s, "sg1", "o1", "1", 1, delivered=False, refund_id="r1")  # a dear one back
        first = costing.refresh(s, settle=timedelta(0))
        assert costing.refresh(s, settle=timedelta(0)) == {
            "receipts": 0, "code_events": 0, "api_bookings": 0}  # each fact once
    assert first["receipts"] == 2
    today = datetime.now(UTC).date()
    with session_scope(engine) as s:
        assert costing.totals(s, CostKind.PURCHASE) == {"SGD": Decimal("22.5000")}
        assert costing.totals(s, CostKind.SALE) == {"SGD": Decimal("13.1250")}  # 4 x 2.50 + 3.125
        sold = {layer.batch_no[-7:]: layer.quantity
                for layer in costing.entries(s, today, [CostKind.SALE])}
        assert sorted(sold.values()) == [1, 4]
        assert sum(layer.amount for layer in costing.on_hand(s, today)) == Decimal("9.3750")
    with session_scope(engine) as s:
        # the dear batch's codes expire in stock: written off at their batch cost
        assert sum(pool.expire_codes(s, today=date(2027, 7, 1)).values()) == 3
        costing.refresh(s, settle=timedelta(0))
        assert costing.totals(s, CostKind.WRITE_OFF) == {"SGD": Decimal("9.3750")}
        assert costing.on_hand(s, today) == []
