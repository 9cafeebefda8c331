"""api-purchase-orders: each site's API sales of a business day become daily purchase orders
and receipts in the ERP, and leave the batches' unposted quantity for the book.

Per site (its day cut at its own midnight, in its own time zone), one task books the day in
vouchflow's state (``state.api_purchasing.book_day``: one order per SKU, a correction order
for sales recorded after the day was booked, nothing at all when nothing changed), in one
transaction. Then, in chunks, every daily order of the site not yet in the ERP is written:
the order upserted by its external id ``po-{site}-{sku}-{yyyymmdd}``, its receipt made by the
purchaseOrder -> itemReceipt transform under ``rcpt-...`` (looked up first), and, in the
transaction that records the receipt, its units booked out of the batches (``remaining`` and
``unposted`` drop). Killed anywhere and run again, the ERP holds one order and one receipt
per SKU and day, and each unit is booked once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine

from canonical import Site, now_utc
from connectors.erp import ErpClient
from connectors.errors import FatalError
from connectors.wallet import load_sites
from flows.credentials import erp_settings
from flows.purchasing_erp import ensure_orders, posting, transform_once
from flows.runtime import (
    limit_name,
    markdown_artifact,
    run_logger,
    state_engine,
    system_slot,
    table_artifact,
)
from mappings.purchasing import TransformLine, day_receipt
from state import api_purchasing as api
from state import procurement as proc
from state.db import session_scope
from state.store import DeadLetterItem, record_dead_letters, resolve_dead_letters

FLOW = "api_purchase_orders"
CHUNK = 50
"""Daily orders written to the ERP per task."""


def site_of(code: str) -> Site:
    settings = load_sites().get(code)
    if settings is None:
        raise ValueError(f"unknown site {code!r}")
    return Site(code=settings.code, name=settings.name, country=settings.country,
                currency=settings.currency, timezone=settings.timezone)


def previous_day(site: Site, at: datetime | None = None) -> date:
    """The site's last complete business day."""
    return site.business_date(at or now_utc()) - timedelta(days=1)


@dataclass
class SiteDay:
    site: str
    business_date: date
    orders: int = 0
    corrections: int = 0
    units: int = 0
    refunded_after_close: int = 0
    problems: int = 0
    erp_orders: int = 0
    erp_receipts: int = 0
    booked: int = 0
    dead_lettered: int = 0


@task(name="book-site-day", retries=1, retry_delay_seconds=[2], cache_policy=NO_CACHE)
def book_site_day(engine: Engine, site_code: str, day: date) -> SiteDay:
    site = site_of(site_code)
    start, end = site.day_bounds(day)
    with session_scope(engine, immediate=True) as s:
        report = api.book_day(s, site=site_code, business_date=day, start=start, end=end)
    if report.problems:
        with session_scope(engine) as s:
            record_dead_letters(s, [DeadLetterItem(
                flow=FLOW, source="vouchflow", entity_type="api_sales_day", entity_key=key,
                reason=f"API sales {key} not booked: {reason}", payload=None)
                for key, reason in report.problems])
    return SiteDay(site=site_code, business_date=day, orders=len(report.orders),
                   corrections=len(report.corrections), units=report.units,
                   refunded_after_close=report.refunded_after_close,
                   problems=len(report.problems))


async def write_day_orders(engine: Engine, erp: ErpClient, views: list[api.DayOrderView]
                           ) -> dict[str, int]:
    """Orders, receipts and the bookings they release, for one chunk of daily orders."""
    run = posting(engine, erp)
    counts = {"erp_orders": 0, "erp_receipts": 0, "booked": 0, "dead_lettered": 0}
    async with system_slot(limit_name("erp", erp.account)):
        po_erp = await ensure_orders(run, [v.po_id for v in views])
        counts["erp_orders"] = run.counts.orders

        async def one(view: api.DayOrderView) -> None:
            erp_po = po_erp.get(view.po_id)
            if erp_po is None:
                return  # its vendor or items are not in the ERP yet (a dead letter says why)
            body = day_receipt(
                receipt_no=view.receipt_no, tran_date=view.business_date,
                lines=[TransformLine(line=n, quantity=q, rate=_rate(engine, view.po_id, n),
                                     batch_no=b) for n, b, q in view.lines],
                memo=f"API sales of {view.sku} on {view.site}, {view.business_date}")
            try:
                rid = await transform_once(erp, "purchaseOrder", erp_po, "itemReceipt",
                                           view.receipt_no, body)
            except FatalError as exc:
                run.refused("itemReceipt", view.receipt_no, exc)
                return
            with session_scope(engine) as s:
                if api.record_day_receipt(s, view.po_id, rid):
                    counts["booked"] += 1
                resolve_dead_letters(s, "post_procurement", "erp", "itemReceipt",
                                     [view.receipt_no])
            counts["erp_receipts"] += 1

        await asyncio.gather(*(one(v) for v in views))
    counts["dead_lettered"] = run.counts.dead_lettered
    return counts


def _rate(engine: Engine, po_id: int, line_no: int) -> Any:
    with session_scope(engine) as s:
        for line in proc.order_lines(s, po_id):
            if line.line_no == line_no:
                return line.unit_cost
    raise LookupError(f"purchase order {po_id} has no line {line_no}")


@task(name="write-day-orders", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
async def write_day_orders_task(engine: Engine, views: list[api.DayOrderView]) -> dict[str, int]:
    erp = ErpClient(await erp_settings())
    try:
        return await write_day_orders(engine, erp, views)
    finally:
        await erp.aclose()


@flow(name="api-purchase-orders", log_prints=False)
async def api_purchase_orders(day: date | None = None, sites: list[str] | None = None,
                              chunk_size: int = CHUNK) -> dict[str, Any]:
    """Book each site's API sales of ``day`` (default: the site's last complete business day)
    as daily purchase orders and receipts, in vouchflow and in the ERP."""
    logger = run_logger()
    engine = state_engine()
    codes = sites or sorted(load_sites())
    results: list[SiteDay] = []
    for code in codes:
        site = site_of(code)
        business_date = day or previous_day(site)
        booked = book_site_day(engine, code, business_date)
        with session_scope(engine) as s:
            # this day's orders and any earlier one a previous run left unwritten
            views = api.unposted_day_orders(s, site=code)
        for start in range(0, len(views), chunk_size):
            got = await write_day_orders_task(engine, views[start:start + chunk_size])
            booked.erp_orders += got["erp_orders"]
            booked.erp_receipts += got["erp_receipts"]
            booked.booked += got["booked"]
            booked.dead_lettered += got["dead_lettered"]
        results.append(booked)
    rows = [{"site": r.site, "day": r.business_date.isoformat(), "orders": r.orders,
             "corrections": r.corrections, "units": r.units,
             "refunded after close": r.refunded_after_close, "ERP orders": r.erp_orders,
             "ERP receipts": r.erp_receipts, "booked": r.booked, "problems": r.problems,
             "dead-lettered": r.dead_lettered} for r in results]
    await table_artifact("api-purchase-orders", rows, "Daily API purchase orders per site")
    await markdown_artifact(
        "api-purchase-orders-summary",
        "# Daily API purchase orders\n" + "".join(
            f"- {r['site']} {r['day']}: {r['orders']} order(s), {r['corrections']} "
            f"correction(s), {r['units']} unit(s); {r['ERP receipts']} receipt(s) in the ERP\n"
            for r in rows), "Daily API purchase orders")
    summary = {
        "sites": len(results),
        "orders": sum(r.orders for r in results),
        "corrections": sum(r.corrections for r in results),
        "units": sum(r.units for r in results),
        "refunded_after_close": sum(r.refunded_after_close for r in results),
        "erp_orders": sum(r.erp_orders for r in results),
        "erp_receipts": sum(r.erp_receipts for r in results),
        "booked": sum(r.booked for r in results),
        "problems": sum(r.problems for r in results),
        "dead_lettered": sum(r.dead_lettered for r in results),
        "days": {r.site: r.business_date.isoformat() for r in results},
    }
    logger.info("api-purchase-orders: %s", summary)
    return summary


__all__ = ["api_purchase_orders", "previous_day", "site_of"]
