"""Procurement state on SQLite and PostgreSQL: vendors and tokens, contracts that gate
purchasing, the request -> order -> receipt -> bill chain, and vendor uploads checked row by
row (the issue's upload check)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text

from state import pool
from state import procurement as proc
from state import vendor_uploads as vu
from state.crypto import Keyring
from state.db import session_scope
from state.events import read_events
from state.models import DeadLetter, PoolBatch, PoolCode, PoolCodeEvent, PoolCodeReceipt
from state.subscriptions import create_subscription
from tests.state.procurement_world import (
    TODAY,
    codes_csv,
    events,
    seed_catalog,
    vendor_with_po,
)

FUTURE = "2027-12-31"


@pytest.fixture
def ring() -> Keyring:
    return Keyring.generate()


@pytest.fixture
def world(engine):
    seed_catalog(engine)
    return engine


def upload(engine, ring, party, data: bytes, *, line_no: int = 1, name: str = "codes.csv",
           chunk: int = 64 * 1024, **kw) -> vu.UploadResult:
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    return vu.receive_code_file(engine, ring, vendor_id=party.vendor_id, po_no=party.po_no,
                                line_no=line_no, file_name=name, chunks=chunks, today=TODAY,
                                **kw)


def refused(engine, upload_no: str) -> dict[int, tuple[str, str]]:
    with session_scope(engine) as s:
        up = s.scalar(select(proc.VendorUpload).where(proc.VendorUpload.upload_no == upload_no))
        return {r.row_no: (r.rule, r.message) for r in vu.upload_rows(s, up.id)}


# vendors and tokens ---------------------------------------------------------------------------
def test_vendor_token_is_kept_only_as_a_keyed_hash_and_rotates(engine, ring):
    with session_scope(engine) as s:
        vendor, token = proc.add_vendor(s, ring, "Acme Gift Cards Ltd.", currency="SGD")
        assert vendor.slug == "acme-gift-cards-ltd" and vendor.external_id == "vendor-acme-gift-cards-ltd"
        with pytest.raises(proc.ProcurementError, match="exists already"):
            proc.add_vendor(s, ring, "Acme Gift Cards Ltd.")
        twin, _ = proc.add_vendor(s, ring, "ACME gift cards ltd")
        assert twin.slug != vendor.slug
    with engine.connect() as conn:
        dump = json.dumps([list(r) for r in conn.execute(text("SELECT * FROM vendor"))],
                          default=str)
    assert token not in dump and token[8:20] not in dump
    with session_scope(engine) as s:
        assert proc.vendor_for_token(s, ring, token).name == "Acme Gift Cards Ltd."
        assert proc.vendor_for_token(s, ring, token + "x") is None
        assert proc.vendor_for_token(s, Keyring.generate(), token) is None  # keyed
        fresh = proc.rotate_token(s, ring, "acme-gift-cards-ltd")
    with session_scope(engine) as s:
        assert proc.vendor_for_token(s, ring, token) is None
        assert proc.vendor_for_token(s, ring, fresh).slug == "acme-gift-cards-ltd"


# contracts gate purchasing ----------------------------------------------------------------------
def test_unsigned_contract_blocks_requests_orders_and_receipts(world, ring):
    party = vendor_with_po(world, ring, "Unsigned", signed=False)
    with session_scope(world) as s:
        with pytest.raises(proc.Blocked, match="draft, not signed"):
            proc.request_purchase(s, party.contract_no, [proc.LineIn("SKU-A", 5)],
                                  requested_by="ops", on=TODAY)
        with pytest.raises(proc.Blocked, match="not signed"):
            proc.create_purchase_order(s, party.contract_no, [proc.LineIn("SKU-A", 5)],
                                       tran_date=TODAY)
        proc.set_signature(s, party.contract_no, "signed", by="ceo@acme")
        po = proc.create_purchase_order(s, party.contract_no, [proc.LineIn("SKU-A", 5)],
                                        tran_date=TODAY)
        proc.set_signature(s, party.contract_no, "revoked")
        po_no = po.po_no
    party.po_no = po_no
    with pytest.raises(proc.Blocked, match="revoked, not signed"):
        upload(world, ring, party, codes_csv(["ABCDEFGH0001,,"]))


def test_contract_rules(world, ring):
    with session_scope(world) as s:
        vendor, _ = proc.add_vendor(s, ring, "Rules")
        kw = dict(currency="SGD", valid_from=date(2026, 1, 1))
        with pytest.raises(proc.ProcurementError, match="settles by purchased_quantity"):
            proc.add_contract(s, vendor, issuance_mode="code_pool",
                              settlement_mode="sales_quantity", prices={}, **kw)
        with pytest.raises(proc.ProcurementError, match="not in the catalogue"):
            proc.add_contract(s, vendor, issuance_mode="code_pool",
                              settlement_mode="purchased_quantity", prices={"NOPE": "1"}, **kw)
        with pytest.raises(proc.ProcurementError, match="not issued by code_pool"):
            proc.add_contract(s, vendor, issuance_mode="code_pool",
                              settlement_mode="purchased_quantity", prices={"SKU-API": "1"},
                              **kw)
        with pytest.raises(proc.ProcurementError, match="at most 4 decimals"):
            proc.add_contract(s, vendor, issuance_mode="code_pool",
                              settlement_mode="purchased_quantity", prices={"SKU-A": "1.00001"},
                              **kw)
        contract = proc.add_contract(s, vendor, issuance_mode="code_pool",
                                     settlement_mode="purchased_quantity",
                                     prices={"SKU-A": "2.5"}, valid_to=date(2026, 6, 30), **kw)
        proc.set_signature(s, contract.contract_no, "signed")
        with pytest.raises(proc.Blocked, match="not on 2026-11-24"):
            proc.create_purchase_order(s, contract.contract_no, [proc.LineIn("SKU-A", 1)],
                                       tran_date=TODAY)
        with pytest.raises(proc.ProcurementError, match="positive whole number"):
            proc.create_purchase_order(s, contract.contract_no, [proc.LineIn("SKU-A", 0)],
                                       tran_date=date(2026, 3, 1))
        with pytest.raises(proc.ProcurementError, match="no price in contract"):
            proc.create_purchase_order(s, contract.contract_no, [proc.LineIn("SKU-B", 1)],
                                       tran_date=date(2026, 3, 1))


def test_request_approved_becomes_an_order_at_contract_prices(world, ring):
    party = vendor_with_po(world, ring, "Chain Co")
    with session_scope(world) as s:
        request = proc.request_purchase(s, party.contract_no, [proc.LineIn("SKU-A", 40)],
                                        requested_by="buyer", memo="December stock", on=TODAY)
        assert request.request_no == f"pr-chain-co-{request.id:06d}"
        with pytest.raises(proc.Blocked, match="not approved"):
            proc.order_from_request(s, request.request_no)
        proc.approve_request(s, request.request_no, by="manager")
        order = proc.order_from_request(s, request.request_no, tran_date=TODAY)
        lines = proc.order_lines(s, order.id)
        assert order.po_no == f"po-chain-co-{order.id:06d}" and order.request_id == request.id
        assert [(ln.sku, ln.quantity, ln.unit_cost) for ln in lines] == [
            ("SKU-A", 40, Decimal("7.5000"))]
        assert s.get(proc.PurchaseRequest, request.id).status == "ordered"
        with pytest.raises(proc.Blocked, match="exists already"):
            proc.create_purchase_order(s, party.contract_no, [proc.LineIn("SKU-A", 1)],
                                       po_no=order.po_no, tran_date=TODAY)
    (heard,) = [d for t, k, d in events(world) if k == order.po_no]
    assert (heard["request_no"], heard["memo"], heard["total"]) == (
        request.request_no, "December stock", "300.0000")


# the upload check of the issue --------------------------------------------------------------------
def test_upload_rejects_bad_rows_row_by_row_and_accepts_the_rest(world, ring):
    other = vendor_with_po(world, ring, "Other Vendor", quantity=5)
    first = upload(world, ring, other, codes_csv(["POOLCODE0001,,", "POOLCODE0002,,"]))
    assert first.status == "accepted" and first.rows_accepted == 2
    party = vendor_with_po(world, ring, "Acme", quantity=6)
    earlier = upload(world, ring, party, codes_csv(["ACMEOLD00001,,"]))
    assert earlier.status == "accepted"

    rows = [
        "GOODCODE0001,1234,2027-06-30",    # row 2: accepted
        "GOODCODE0002,,",                  # row 3: accepted (no pin, no expiry)
        "GOODCODE0001,9999,",              # row 4: repeats row 2
        "POOLCODE0002,,",                  # row 5: another vendor's code, already in the pool
        "ACMEOLD00001,,",                  # row 6: this vendor's earlier upload
        "bad-format!,,",                   # row 7: wrong format for SKU-A
        "GOODCODE0003,,2026-13-45",        # row 8: not a date
        "GOODCODE0004,,2020-01-01",        # row 9: expired
        'GOODCODE0005,"12,34',             # row 10: broken CSV (quote never closed)
        "GOODCODE0006,only-two",           # row 11: wrong number of fields
        "GOODCODE0007,,2027-01-01T00:00:00+08:00",  # row 12: accepted (time with offset)
        "",                                # row 13: blank, skipped
        "GOODCODE0008,,",                  # row 14: accepted
        "GOODCODE0009,,",                  # row 15: accepted (the 5th: 6 ordered, 1 before)
        "GOODCODE0010,,",                  # row 16: over the PO line's quantity
    ]
    data = codes_csv(rows)[:-1] + b"\r\n\xff\xfe,,\r\n"  # row 17: not UTF-8
    result = upload(world, ring, party, b"\xef\xbb\xbf" + data, name="december.csv", chunk=7)
    got = refused(world, result.upload_no)
    assert {row: rule for row, (rule, _) in got.items()} == {
        4: "duplicate_in_file", 5: "already_in_pool", 6: "already_uploaded",
        7: "code_format", 8: "expiry_invalid", 9: "expiry_past", 10: "csv_syntax",
        11: "field_count", 16: "over_quantity", 17: "encoding"}
    for row, (rule, message) in got.items():
        assert message.startswith(f"december.csv: row {row}") and f"(rule {rule})" in message
    assert "repeats row 2" in got[4][1]
    assert "already in the code pool" in got[5][1] and "Other" not in got[5][1]
    assert "other-vendor" not in got[5][1] and "batch" not in got[5][1]
    assert earlier.upload_no in got[6][1]
    assert "^[A-Z0-9]{12}$" in got[7][1] and "SKU-A" in got[7][1]
    assert "had 5 of 6 codes left" in got[16][1]
    every_message = json.dumps(got)
    for clear in ("GOODCODE0001", "POOLCODE0002", "ACMEOLD00001", "GOODCODE0010"):
        assert clear not in every_message
    assert "********0001" in got[4][1]

    assert (result.status, result.rows_total, result.rows_accepted, result.rows_rejected) == (
        "partially_accepted", 15, 5, 10)
    assert result.receipt_no and result.batch_no
    with session_scope(world) as s:
        _, line = proc.get_order_line(s, party.po_no, 1)
        assert line.received_quantity == 6 and s.get(proc.PurchaseOrder, line.po_id).status \
            == "received"
        receipt = s.scalar(select(proc.Receipt).where(
            proc.Receipt.receipt_no == result.receipt_no))
        assert (receipt.quantity, receipt.unit_cost, receipt.batch_no) == (
            5, Decimal("7.5000"), result.batch_no)
        batch = s.get(PoolBatch, result.batch_no)
        assert (batch.status, batch.quantity, batch.available, batch.unit_cost) == (
            "active", 5, 5, Decimal("7.5000"))
        assert batch.purchase_order == party.po_no and batch.expiry_type == "none"
        codes = {pool.find_code(s, c, ring).status for c in (
            "GOODCODE0001", "GOODCODE0002", "GOODCODE0007", "GOODCODE0009")}
        assert codes == {"in_stock"}
        assert pool.find_code(s, "GOODCODE0010", ring) is None
        stored = s.execute(select(PoolCode.code_enc, PoolCode.pin_enc)
                           .where(PoolCode.batch_no == result.batch_no)).all()
        assert all("GOODCODE" not in enc for enc, _ in stored)
        # every accepted code carries its receipt (the first entry of its chronology)
        received = s.execute(select(PoolCodeReceipt.actor, func.count()).join(
            PoolCode, PoolCode.receipt_id == PoolCodeReceipt.id).group_by(PoolCodeReceipt.actor)
        ).all()
        assert sum(n for _, n in received) == 2 + 1 + 5
        assert s.scalar(select(func.count()).select_from(PoolCodeEvent)) == 0
        letter = s.scalar(select(DeadLetter).where(DeadLetter.entity_key == result.upload_no))
    assert letter.flow == "vendor_upload" and letter.source == "vendor:acme"
    assert "GOODCODE0001" not in json.dumps(letter.payload)
    assert letter.payload["rows_rejected"] == 10


def test_count_is_of_codes_added_after_repeats_and_pool_codes(world, ring):
    party = vendor_with_po(world, ring, "Tight", quantity=3)
    result = upload(world, ring, party, codes_csv([
        "TIGHTCODE001,,", "TIGHTCODE001,,", "TIGHTCODE002,,", "TIGHTCODE003,,",
        "TIGHTCODE004,,"]), chunk_size=2)
    assert result.rows_accepted == 3
    assert {r: rule for r, (rule, _) in refused(world, result.upload_no).items()} == {
        3: "duplicate_in_file", 6: "over_quantity"}
    with pytest.raises(proc.Blocked, match="the order is received"):
        upload(world, ring, party, codes_csv(["TIGHTCODE009,,"]))


def test_expiry_of_the_batch_follows_its_codes(world, ring):
    party = vendor_with_po(world, ring, "Dated", quantity=3)
    result = upload(world, ring, party, codes_csv([
        f"DATEDCODE001,,{FUTURE}", "DATEDCODE002,,2027-03-01T23:00:00-05:00"]))
    with session_scope(world) as s:
        batch = s.get(PoolBatch, result.batch_no)
        assert (batch.expiry_type, batch.expires_on) == ("fixed_date", date(2027, 12, 31))
        code = pool.find_code(s, "DATEDCODE002", ring)
        assert pool.rank_to_date(code.expiry_rank) == date(2027, 3, 1)


@pytest.mark.parametrize(("data", "rule"), [
    (b"", "empty_file"),
    (b"\n\n", "empty_file"),
    (b"ABCDEFGH0001,,\n", "header"),
    (b"code,pin,expires_at,colour\nABCDEFGH0001,,,red\n", "header"),
    (b"code,code\nABCDEFGH0001,ABCDEFGH0002\n", "header"),
])
def test_file_without_a_proper_header_is_refused_whole(world, ring, data, rule):
    party = vendor_with_po(world, ring, "Headless")
    result = upload(world, ring, party, data)
    assert result.status == "rejected" and result.rows_accepted == 0
    assert f"(rule {rule})" in result.message and result.message.startswith("codes.csv:")
    with session_scope(world) as s:
        assert s.scalar(select(func.count()).select_from(PoolBatch)) == 0


def test_header_may_leave_out_optional_columns_and_reorder(world, ring):
    party = vendor_with_po(world, ring, "Columns")
    result = upload(world, ring, party, b"expires_at, CODE\n2027-01-01,COLUMNCODE01\n")
    assert result.status == "accepted" and result.rows_accepted == 1


def test_long_line_is_one_refused_row(world, ring):
    party = vendor_with_po(world, ring, "Long")
    data = b"code,pin,expires_at\nLONGLINECODE,," + b"x" * 10_000 + b"\nLONGCODE0002,,\n"
    result = upload(world, ring, party, data, chunk=1000)
    assert result.rows_accepted == 1
    assert {r: rule for r, (rule, _) in refused(world, result.upload_no).items()} == {
        2: "line_too_long"}


def test_broken_off_body_keeps_what_was_read(world, ring):
    party = vendor_with_po(world, ring, "Broken", quantity=10)

    def body():
        yield b"code,pin,expires_at\nBROKENCODE01,,\nBROKENCODE02,,\n"
        raise ConnectionResetError("peer gone")

    result = vu.receive_code_file(world, ring, vendor_id=party.vendor_id, po_no=party.po_no,
                                  line_no=1, file_name="b.csv", chunks=body(), today=TODAY)
    assert result.status == "interrupted" and result.rows_accepted == 2
    assert "ConnectionResetError" in result.message and result.receipt_no


def test_body_over_the_limit_stops_and_says_so(world, ring):
    party = vendor_with_po(world, ring, "Big", quantity=100)
    data = codes_csv([f"BIGCODE{i:05d},," for i in range(50)])
    result = upload(world, ring, party, data, chunk=100, max_bytes=300)
    assert result.status == "interrupted" and 0 < result.rows_accepted < 50
    assert "larger than the 300 bytes" in result.message


def test_error_midway_finishes_the_upload_with_what_was_stored(world, ring, monkeypatch):
    party = vendor_with_po(world, ring, "Flaky", quantity=10)
    real, calls = pool._write_chunk, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("database went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(pool, "_write_chunk", flaky)
    result = upload(world, ring, party, codes_csv([f"FLAKYCODE{i:03d},," for i in range(5)]),
                    chunk_size=2)
    assert result.status == "interrupted" and result.rows_accepted == 2
    assert "ConnectionError" in result.message and result.receipt_no
    with session_scope(world) as s:
        _, line = proc.get_order_line(s, party.po_no, 1)
        assert line.received_quantity == 2


def test_one_upload_per_line_and_a_dead_one_is_recovered(world, ring):
    party = vendor_with_po(world, ring, "Busy", quantity=10)
    stuck: list[vu.UploadResult] = []

    def body():
        yield b"code,pin,expires_at\nBUSYCODE0001,,\n"
        # a second upload of the same line while this one runs
        with pytest.raises(proc.Blocked, match="another upload for this line is running"):
            upload(world, ring, party, codes_csv(["BUSYCODE0009,,"]))
        yield b"BUSYCODE0002,,\n"

    stuck.append(vu.receive_code_file(world, ring, vendor_id=party.vendor_id,
                                      po_no=party.po_no, line_no=1, file_name="a.csv",
                                      chunks=body(), today=TODAY))
    assert stuck[0].rows_accepted == 2

    # a process that died midway: its upload stays "receiving" with codes in a frozen batch
    with session_scope(world) as s:
        _, line = proc.get_order_line(s, party.po_no, 1)
        dead = vu._new_upload(s, s.get(proc.Vendor, party.vendor_id), "codes", "dead.csv",
                              line.id)
        dead.updated_at = datetime.now(UTC) - timedelta(hours=1)
        dead.rows_total = 1
        pool.add_batch(s, batch_no=dead.batch_no, sku="SKU-A", issuance_mode="code_pool",
                       unit_cost=Decimal("7.5"), currency="SGD", status="frozen")
    pool.add_codes(world, dead.batch_no, [("DEADCODE0001", None, None)], ring, actor="t",
                   system="t")
    result = upload(world, ring, party, codes_csv(["NEXTCODE0001,,"]))
    assert result.status == "accepted"
    with session_scope(world) as s:
        dead = s.get(proc.VendorUpload, dead.id)
        assert dead.status == "interrupted" and dead.rows_accepted == 1
        assert "stopped after row 1" in dead.message
        assert s.get(PoolBatch, dead.batch_no).status == "active"
        _, line = proc.get_order_line(s, party.po_no, 1)
        assert line.received_quantity == 4


def test_write_off_file_rows_checked_and_each_code_once(world, ring):
    party = vendor_with_po(world, ring, "Writer", mode="api", sku_code="SKU-API",
                           settlement="write_off_quantity")
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    def send(data: bytes) -> vu.UploadResult:
        return vu.receive_write_off_file(world, ring, vendor_id=party.vendor_id,
                                         file_name="redeemed.csv", chunks=[data], now=now,
                                         chunk_size=2)

    first = send(b"code,redeemed_at\nREDEEMED0001,2026-11-20T08:15:00+08:00\n")
    assert first.status == "accepted"
    second = send(b"\n".join([
        b"code,redeemed_at",
        b"REDEEMED0002,2026-11-21T10:00:00Z",       # 2 accepted
        b"REDEEMED0001,2026-11-21T10:00:00Z",       # 3 written off before
        b"REDEEMED0002,2026-11-21T11:00:00Z",       # 4 repeats row 2
        b"REDEEMED0003,2026-11-21",                 # 5 no time
        b"REDEEMED0004,2026-12-24T00:00:00Z",       # 6 in the future
        b",2026-11-21T10:00:00Z",                   # 7 no code
        b"REDEEMED0005,2026-11-22T09:00:00+07:00",  # 8 accepted
    ]) + b"\n")
    got = refused(world, second.upload_no)
    assert {r: rule for r, (rule, _) in got.items()} == {
        3: "already_written_off", 4: "duplicate_in_file", 5: "redeemed_at_invalid",
        6: "redeemed_at_future", 7: "code_missing"}
    assert first.upload_no in got[3][1] and "row 1" not in got[3][1]
    assert "repeats row 2" in got[4][1]
    assert (second.status, second.rows_accepted, second.rows_rejected) == (
        "partially_accepted", 2, 5)
    with session_scope(world) as s:
        rows = s.scalars(select(proc.WriteOff).where(proc.WriteOff.vendor_id == party.vendor_id)
                         .order_by(proc.WriteOff.id)).all()
        assert [(r.last4, r.status) for r in rows] == [
            ("0001", "pending"), ("0002", "pending"), ("0005", "pending")]
        assert rows[2].redeemed_at == datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
        assert rows[0].code_hash == ring.hash_code("REDEEMED0001")


# the rest of the chain ----------------------------------------------------------------------------
def test_api_receipt_and_purchased_quantity_bill(world, ring):
    api = vendor_with_po(world, ring, "Api Co", quantity=100, mode="api", sku_code="SKU-API",
                         settlement="sales_quantity")
    with session_scope(world) as s:
        receipt = proc.receive_quantity(s, api.po_no, 1, 60)
        batch = s.get(PoolBatch, receipt.batch_no)
        assert (batch.issuance_mode, batch.quantity, batch.available, batch.unit_cost) == (
            "api", 60, 60, Decimal("7.5000"))
        assert receipt.batch_no == f"b-api-co-r{receipt.id:06d}"
        with pytest.raises(proc.ProcurementError, match="1 to 40"):
            proc.receive_quantity(s, api.po_no, 1, 41)
        with pytest.raises(proc.Blocked, match="settles by sales_quantity"):
            proc.bill_received(s, api.po_no)

    party = vendor_with_po(world, ring, "Billed", quantity=4)
    upload(world, ring, party, codes_csv(["BILLEDCODE01,,", "BILLEDCODE02,,", "BILLEDCODE03,,"]))
    with session_scope(world) as s:
        bill = proc.bill_received(s, party.po_no, bill_date=TODAY)
        assert (bill.total, bill.due_date, bill.status) == (
            Decimal("22.5000"), TODAY + timedelta(days=30), "draft")
        assert proc.bill_received(s, party.po_no) is None  # nothing more received
        proc.open_dispute(s, party.vendor_id, subject_type="bill", subject_ref=bill.bill_no,
                          reason="we delivered 4", raised_by="vendor")
        data = proc.statement(s, party.vendor_id)
    assert [o["po_no"] for o in data["purchase_orders"]] == [party.po_no]
    assert data["purchase_orders"][0]["lines"][0]["received_quantity"] == 3
    assert data["purchase_orders"][0]["lines"][0]["billed_quantity"] == 3
    assert [b["total"] for b in data["bills"]] == ["22.5000"]
    assert len(data["receipts"]) == 1 and len(data["open_disputes"]) == 1
    assert all(r["po_no"] == party.po_no for r in data["receipts"])  # only its own
    rows = list(proc.statement_rows(data))
    assert {r["section"] for r in rows} == {"purchase_order", "receipt", "bill", "dispute"}


def test_add_codes_limit_and_every_refusal_seen(engine, ring):
    with session_scope(engine) as s:
        pool.add_batch(s, batch_no="LIM", sku="SKU-L", issuance_mode="code_pool",
                       unit_cost=Decimal("1"), currency="EUR")
    seen: list[pool.RefusedCode] = []
    report = pool.add_codes(engine, "LIM", [(f"L{i:04d}X", None, None) for i in range(6)]
                            + [("L0000X", None, None)], ring, actor="t", system="t",
                            limit=4, chunk_size=3, on_refused=seen.append)
    assert report.added == 4
    assert [(r.position, r.rule) for r in seen] == [
        (5, pool.RefusalRule.OVER_LIMIT), (6, pool.RefusalRule.OVER_LIMIT),
        (7, pool.RefusalRule.REPEATED)]
    assert seen[2].first_position == 1


# events for subscribers -----------------------------------------------------------------------
def test_orders_receipts_and_bills_are_announced_once_with_the_change(world, ring):
    party = vendor_with_po(world, ring, "Evented", quantity=4)
    assert [(t, k) for t, k, _ in events(world)] == [("purchase_order.created", party.po_no)]
    created = events(world)[0][2]
    assert (created["status"], created["currency"], created["total"], created["vendor"]) == (
        "open", "SGD", "30.0000", "vendor-evented")
    assert created["lines"] == [{"line_no": 1, "sku": "SKU-A", "quantity": 4,
                                 "unit_cost": "7.5000", "received_quantity": 0,
                                 "billed_quantity": 0, "description": None}]

    # a receipt (codes uploaded): the receipt, and the order after it; never the codes
    result = upload(world, ring, party, codes_csv(["EVENTCODE001,PIN1,", "EVENTCODE002,,",
                                                   "EVENTCODE003,,"]))
    got = events(world)[1:]
    assert [(t, k) for t, k, _ in got] == [("purchase_order.received", party.po_no),
                                           ("purchase_order.changed", party.po_no)]
    received, changed = got[0][2], got[1][2]
    assert (received["receipt_no"], received["quantity"], received["batch_no"],
            received["order_status"], received["line_received_quantity"]) == (
        result.receipt_no, 3, result.batch_no, "open", 3)
    assert changed["change"] == {"cause": "receipt", "ref": result.receipt_no}
    assert changed["lines"][0]["received_quantity"] == 3
    assert "EVENTCODE" not in json.dumps(got) and "PIN1" not in json.dumps(got)

    # a bill, and the order it billed; nothing when there is nothing to bill
    with session_scope(world) as s:
        bill = proc.bill_received(s, party.po_no, bill_date=TODAY)
    got = events(world)[3:]
    assert [(t, k) for t, k, _ in got] == [("vendor_bill.created", bill.bill_no),
                                           ("purchase_order.changed", party.po_no)]
    assert (got[0][2]["total"], got[0][2]["currency"], got[0][2]["po_no"],
            got[0][2]["due_date"]) == ("22.5000", "SGD", party.po_no,
                                       (TODAY + timedelta(days=30)).isoformat())
    assert got[0][2]["lines"] == [{"line_no": 1, "po_line_no": 1, "sku": "SKU-A",
                                   "quantity": 3, "unit_cost": "7.5000", "amount": "22.5000"}]
    assert got[1][2]["change"] == {"cause": "bill", "ref": bill.bill_no}
    with session_scope(world) as s:
        assert proc.bill_received(s, party.po_no) is None
    assert len(events(world)) == 5

    # a change that rolls back announces nothing, in a savepoint or the whole transaction
    with session_scope(world) as s:
        nested = s.begin_nested()
        proc.create_purchase_order(s, party.contract_no, [proc.LineIn("SKU-A", 1)],
                                   tran_date=TODAY)
        nested.rollback()
    with pytest.raises(RuntimeError), session_scope(world) as s:
        proc.create_purchase_order(s, party.contract_no, [proc.LineIn("SKU-A", 1)],
                                   tran_date=TODAY)
        raise RuntimeError("changed my mind")
    with pytest.raises(RuntimeError), session_scope(world) as s:
        with s.begin_nested():  # a savepoint kept, in a transaction that is not
            proc.create_purchase_order(s, party.contract_no, [proc.LineIn("SKU-A", 1)],
                                       tran_date=TODAY)
        raise RuntimeError("changed my mind again")
    assert len(events(world)) == 5

    # an API receipt (a quantity): its batch number, not a placeholder
    api = vendor_with_po(world, ring, "Api Evented", quantity=10, mode="api",
                         sku_code="SKU-API", settlement="sales_quantity")
    with session_scope(world) as s:
        receipt = proc.receive_quantity(s, api.po_no, 1, 10)
    got = events(world, "purchase_order.*")[-3:]
    assert [(t, k) for t, k, _ in got] == [("purchase_order.created", api.po_no),
                                           ("purchase_order.received", api.po_no),
                                           ("purchase_order.changed", api.po_no)]
    assert got[1][2]["batch_no"] == receipt.batch_no and got[1][2]["order_status"] == "received"
    assert got[2][2]["status"] == "received"

    # codes that complete an order (a plan made before the upload): the order is received
    full = vendor_with_po(world, ring, "Full Co", quantity=2)
    upload(world, ring, full, codes_csv(["FULLCODE0001,,", "FULLCODE0002,,"]))
    got = events(world, "purchase_order.*")[-2:]
    assert (got[0][2]["order_status"], got[1][2]["status"]) == ("received", "received")

    # a subscription covering the types reads them, and only them
    with session_scope(world) as s:
        sub, _ = create_subscription(s, ring, name="ap", url="https://ap.example.com/hook",
                                     event_types=["vendor_bill.*"], start="beginning")
        seen = read_events(s, after=sub.settled_seq, patterns=sub.event_types)
    assert [(e.type, e.entity_key) for e in seen] == [("vendor_bill.created", bill.bill_no)]


def test_bill_approval_payment_and_rejection_are_announced_once(world, ring):
    from state import settlement as st

    party = vendor_with_po(world, ring, "Paid Co", quantity=2)
    upload(world, ring, party, codes_csv(["PAIDCODE0001,,", "PAIDCODE0002,,"]))
    with session_scope(world) as s:
        bill = proc.bill_received(s, party.po_no, bill_date=TODAY)
        bill.erp_id = "501"
    start = len(events(world))
    with session_scope(world) as s:
        assert st.approve_bills(s, None, by="cfo") == [bill.bill_no]
        assert st.approve_bills(s, None, by="cfo") == []  # approved once
        run = st.create_payment_run(s, execution_date=TODAY, created_by="treasurer")
        (payment,) = run.payments
        st.confirm_payments(s, run.run_no, rejected=[payment.payment_no])
    with session_scope(world) as s:
        again = st.create_payment_run(s, execution_date=TODAY, created_by="treasurer")
        (second,) = again.payments
        assert st.confirm_payments(s, again.run_no) == [second.payment_no]
        (todo,) = st.confirmed_unrecorded(s)
        st.mark_bill_paid(s, todo.payment_id, "801")
    got = events(world, "vendor_bill.*")
    assert len(events(world)) == start + 3
    assert [(t, k) for t, k, _ in got] == [
        ("vendor_bill.created", bill.bill_no), ("vendor_bill.approved", bill.bill_no),
        ("vendor_bill.payment_rejected", bill.bill_no), ("vendor_bill.paid", bill.bill_no)]
    assert (got[1][2]["approved_by"], got[1][2]["total"]) == ("cfo", "15.0000")
    assert (got[2][2]["payment_no"], got[3][2]["payment_no"]) == (payment.payment_no,
                                                                  second.payment_no)
    assert (got[3][2]["amount"], got[3][2]["currency"], got[3][2]["run_no"]) == (
        "15.00", "SGD", again.run_no)
    assert "bank" not in json.dumps(got).lower()  # the vendor's account stays out
    with session_scope(world) as s:
        assert st.confirmed_unrecorded(s) == []
        assert st.confirm_payments(s, again.run_no) == []
    assert len(events(world)) == start + 3
