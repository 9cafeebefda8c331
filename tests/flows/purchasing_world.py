"""A scripted month of purchasing (October 2026): three suppliers, both purchasing modes and
all three settlement modes, sales on two sites in two time zones, a late sale, a refund, an
upload of codes and a write-off file. The expectations in the tests are computed by hand
from the numbers here."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import Engine

from flows import sync_catalog as sc
from state import api_purchasing as api
from state import pool
from state import procurement as proc
from state import vendor_uploads as vu
from state.catalog import load_skus
from state.crypto import Keyring
from state.db import get_engine, session_scope

SGT = timezone(timedelta(hours=8))  # sg1: Asia/Singapore
ICT = timezone(timedelta(hours=7))  # th1: Asia/Bangkok
D1, D2 = date(2026, 10, 5), date(2026, 10, 6)
PERIOD = "2026-10"
POOL_COST, SALES_COST, WRITE_OFF_COST = Decimal("7.25"), Decimal("3.10"), Decimal("2.00")


def code_for(fmt: str | None, n: int) -> str:
    for candidate in (f"PC{n:010d}", f"{n:016d}", f"PCPC-{n:04d}-ZZZZ"):
        if fmt is None or re.fullmatch(fmt, candidate):
            return candidate
    raise AssertionError(f"no code for {fmt}")


@dataclass
class World:
    engine: Engine
    keyring: Keyring
    pool_sku: str
    sales_sku: str
    write_off_sku: str
    vendors: dict[str, str] = field(default_factory=dict)
    """role (pool, sales, write_off) -> slug."""
    pool_codes: list[str] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    batches: dict[str, str] = field(default_factory=dict)


def order(site: str, order_id: str, at: datetime, lines: list[tuple[str, int, str]]
          ) -> pool.SiteOrder:
    return pool.SiteOrder(
        site=site, order_id=order_id, status="confirmed", created_at=at, updated_at=at,
        currency="SGD" if site == "sg1" else "THB",
        lines=tuple(pool.SiteOrderLine(line_id=str(n), sku=sku, quantity=q,
                                       unit_price=Decimal(price))
                    for n, (sku, q, price) in enumerate(lines, 1)))


def sell(world: World, orders: list[pool.SiteOrder]) -> None:
    with session_scope(world.engine) as s:
        pool.record_orders(s, orders)
    report = pool.allocate(world.engine, today=date(2026, 10, 1))
    assert not report.held, report.held


def build(sandboxes) -> World:
    asyncio.run(sc.sync_catalog(chunk_size=100))
    engine, ring = get_engine(), Keyring.load()
    with session_scope(engine) as s:
        catalog = load_skus(s)
    normal = sorted((c, k) for c, k in catalog.items() if k.status.value == "normal")
    pool_sku, fmt = next((c, k.code_format) for c, k in normal
                         if k.issuance_mode.value == "code_pool")
    api_skus = [c for c, k in normal if k.issuance_mode.value == "api"]
    world = World(engine, ring, pool_sku, api_skus[0], api_skus[1])
    start = date(2026, 9, 1)
    with session_scope(engine) as s:
        p, _ = proc.add_vendor(s, ring, "Pool Supplier", currency="SGD", country="SG",
                               bank_account="SG12POOL0001", bank_bic="POOLSGSG")
        sv, _ = proc.add_vendor(s, ring, "Sales Supplier", currency="SGD", country="SG",
                                bank_account="0011223344", bank_bic="SALESGSG")
        w, _ = proc.add_vendor(s, ring, "Writeoff Supplier", currency="USD", country="US",
                               bank_account="US-998877", bank_bic="CHASUS33")
        world.vendors = {"pool": p.slug, "sales": sv.slug, "write_off": w.slug}
        contracts = {}
        for role, vendor, mode, settle, cur, sku, cost in (
                ("pool", p, "code_pool", "purchased_quantity", "SGD", pool_sku, POOL_COST),
                ("sales", sv, "api", "sales_quantity", "SGD", world.sales_sku, SALES_COST),
                ("write_off", w, "api", "write_off_quantity", "USD", world.write_off_sku,
                 WRITE_OFF_COST)):
            c = proc.add_contract(s, vendor, issuance_mode=mode, settlement_mode=settle,
                                  currency=cur, prices={sku: cost}, valid_from=start,
                                  allows_returns=True)
            proc.set_signature(s, c.contract_no, "signed", by="ceo")
            contracts[role] = c.contract_no
        pool_po = proc.create_purchase_order(s, contracts["pool"], [proc.LineIn(pool_sku, 10)],
                                             tran_date=date(2026, 10, 1))
        received = datetime(2026, 10, 1, 9, tzinfo=UTC)
        for role, sku, qty in (("sales", world.sales_sku, 100),
                               ("write_off", world.write_off_sku, 50)):
            po = proc.create_purchase_order(s, contracts[role], [proc.LineIn(sku, qty)],
                                            tran_date=date(2026, 10, 1))
            world.batches[role] = proc.receive_quantity(s, po.po_no, 1, qty,
                                                        received_at=received).batch_no
        p_id, pool_po_no = p.id, pool_po.po_no
    world.pool_codes = [code_for(fmt, 7000 + i) for i in range(10)]
    result = vu.receive_code_file(
        engine, ring, vendor_id=p_id, po_no=pool_po_no, line_no=1, file_name="codes.csv",
        chunks=[("code,pin,expires_at\n" + "".join(f"{c},,\n" for c in world.pool_codes))
                .encode()], today=date(2026, 10, 1))
    assert result.status == "accepted", result
    world.batches["pool"] = result.batch_no  # type: ignore[assignment]

    s1, s2 = world.sales_sku, world.write_off_sku
    sell(world, [
        order("sg1", "o1", datetime(2026, 10, 5, 10, tzinfo=SGT),
              [(s1, 4, "5.00"), (pool_sku, 2, "10.00")]),
        # 00:10 on the 6th in Singapore is still the 5th in UTC: it belongs to the 6th
        order("sg1", "o3", datetime(2026, 10, 6, 0, 10, tzinfo=SGT), [(s1, 3, "5.00")]),
        order("th1", "o4", datetime(2026, 10, 5, 12, tzinfo=ICT), [(s1, 2, "120.00")]),
        order("sg1", "o5", datetime(2026, 10, 5, 11, tzinfo=SGT), [(s2, 5, "4.00")]),
        order("sg1", "o6", datetime(2026, 10, 7, 9, tzinfo=SGT), [(pool_sku, 4, "10.00")]),
    ])
    world.issued = [f"WOCODE{i:06d}" for i in range(1, 6)]
    with session_scope(engine) as s:
        api.record_issued_codes(s, ring, site="sg1", order_id="o5", line_id="1",
                                codes=world.issued)
        pool.refund(s, "sg1", "o6", "1", 1, delivered=False, refund_id="rf-o6")
    return world


def late_sale(world: World) -> None:
    """A sale of the 5th in Singapore recorded after that day was booked."""
    sell(world, [order("sg1", "o7", datetime(2026, 10, 5, 20, tzinfo=SGT),
                       [(world.sales_sku, 1, "5.00")])])


def write_off_files(world: World) -> tuple[vu.UploadResult, vu.UploadResult]:
    """Supplier W reports three of its codes redeemed, plus a code nobody issued and one of
    the pool's codes still in stock; a second file repeats one code."""
    with session_scope(world.engine) as s:
        vendor_id = proc.get_vendor(s, world.vendors["write_off"]).id
    at = "2026-10-20T08:00:00+08:00"
    rows = [*world.issued[:3], "UNKNOWN00001", world.pool_codes[-1]]
    first = vu.receive_write_off_file(
        world.engine, world.keyring, vendor_id=vendor_id, file_name="wo-1.csv",
        chunks=[("code,redeemed_at\n" + "".join(f"{c},{at}\n" for c in rows)).encode()])
    second = vu.receive_write_off_file(
        world.engine, world.keyring, vendor_id=vendor_id, file_name="wo-2.csv",
        chunks=[f"code,redeemed_at\n{world.issued[0]},{at}\n".encode()])
    return first, second
