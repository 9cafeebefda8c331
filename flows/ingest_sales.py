"""ingest_sales: site orders become ERP sales orders, take their codes exactly once, and the
codes reach the site.

Orders come two ways: pulled by cursor from each site (since a watermark) and pushed as signed
webhooks into the inbox. Both feed one step that keeps the newest version of each order, so
duplicates and out-of-order arrivals change nothing. Allocation takes codes from the pool
(earliest expiry, then oldest batch) order by order, all or nothing, in the order the orders
were placed, with the delivery to the site written to the outbox in the same transaction.
Deliveries carry an idempotency key per line; a delivered code-pool line also queues its
item fulfillment for the ERP, whose posting moves the units from vouchflow's ``unposted``
into the book's ``remaining`` exactly once. Sales orders are upserted in the ERP by
``so-{site}-{order}`` whenever their content changed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from canonical import Order, Site, now_utc
from connectors.erp import ErpClient
from connectors.redact import scrub
from connectors.wallet import WalletClient, WalletSiteSettings, load_sites
from flows import supplier_codes
from flows.credentials import erp_settings
from flows.delivery import give_up, send_line_delivery
from flows.runtime import (
    limit_name,
    markdown_artifact,
    run_key,
    run_logger,
    state_engine,
    system_slot,
    table_artifact,
)
from mappings.errors import MappingError
from mappings.sales import (
    customer_key,
    fulfillment,
    order_to_sales_order,
    sales_order_key,
    wallet_order_to_order,
    wallet_refund_to_refund,
)
from state import pool
from state.crypto import Keyring
from state.db import session_scope
from state.inbox import mark_processed, pending_events
from state.models import OrderLine, PoolCode, SalesOrder
from state.store import (
    DeadLetterItem,
    OutboxItem,
    canonical_ids,
    enqueue,
    external_ids,
    fingerprint,
    get_watermark,
    load_fingerprints,
    mark_sent,
    pending_outbox,
    record_dead_letters,
    save_fingerprints,
    set_watermark,
    upsert_xrefs,
)

FLOW = "ingest_sales"
ERP_TARGET = "erp"
FULFILLMENT_OP = "itemFulfillment.upsert"
ORDER_EVENTS = ("order.confirmed", "order.updated")
REFUND_EVENTS = ("refund.created",)


@dataclass
class SalesCounts:
    orders_seen: int = 0
    orders_changed: int = 0
    stale_versions: int = 0
    dead_lettered: int = 0
    events: int = 0
    allocated_orders: int = 0
    codes_allocated: int = 0
    api_units: int = 0
    held_orders: int = 0
    refunds_applied: int = 0
    delivered_lines: int = 0
    api_codes_issued: int = 0
    erp_orders: int = 0
    erp_fulfillments: int = 0
    held: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SalesRun:
    engine: Engine
    erp: ErpClient
    sites: dict[str, WalletSiteSettings]
    wallets: dict[str, WalletClient]
    keyring: Keyring
    run_key: str
    high: datetime

    @classmethod
    async def open(cls, site_codes: Sequence[str] | None, key: str, high: datetime) -> SalesRun:
        all_sites = load_sites()
        unknown = sorted(set(site_codes or ()) - set(all_sites))
        if unknown:
            raise ValueError(f"unknown site(s): {', '.join(unknown)}")
        chosen = {c: s for c, s in all_sites.items() if not site_codes or c in site_codes}
        return cls(engine=state_engine(), erp=ErpClient(await erp_settings()), sites=chosen,
                   wallets={c: WalletClient(s) for c, s in chosen.items()},
                   keyring=Keyring.load(), run_key=key, high=high)

    def site(self, code: str) -> Site:
        s = self.sites[code]
        return Site(code=s.code, name=s.name, country=s.country, currency=s.currency,
                    timezone=s.timezone)

    async def aclose(self) -> None:
        await self.erp.aclose()
        for wallet in self.wallets.values():
            await wallet.aclose()


def _site_order(order: Order) -> pool.SiteOrder:
    return pool.SiteOrder(
        site=order.site, order_id=order.order_id, status=order.status.value,
        created_at=order.created_at, updated_at=order.updated_at, currency=order.currency,
        customer_ref=order.customer_ref,
        payment=order.payment.model_dump(mode="json") if order.payment else None,
        total=order.total().amount,
        lines=tuple(pool.SiteOrderLine(line_id=line.line_id, sku=line.sku,
                                       quantity=line.quantity,
                                       unit_price=line.unit_price.amount)
                    for line in order.lines))


def _map_orders(raws: Sequence[dict[str, Any]], site: str
                ) -> tuple[list[Order], list[DeadLetterItem]]:
    orders, dead = [], []
    for raw in raws:
        try:
            orders.append(wallet_order_to_order(raw, site=site))
        except MappingError as exc:
            dead.append(DeadLetterItem(flow=FLOW, source=f"wallet:{site}", entity_type="order",
                                       entity_key=str(raw.get("order_id", "?")),
                                       reason=str(exc), payload=scrub(raw)))
    return orders, dead


def record(session: Session, orders: Sequence[Order], counts: SalesCounts) -> None:
    report = pool.record_orders(session, [_site_order(o) for o in orders])
    counts.orders_seen += report.received
    counts.orders_changed += report.changed
    counts.stale_versions += report.stale


# steps --------------------------------------------------------------------------------------
async def pull_site(run: SalesRun, site: str, lookback: timedelta, counts: SalesCounts
                    ) -> list[tuple[str, Any]]:
    """Orders and refunds of one site changed since its watermark; returns refunds to apply."""
    wallet = run.wallets[site]
    target = f"wallet:{site}"
    with session_scope(run.engine) as session:
        since = get_watermark(session, FLOW, target, "orders")
    since = since - lookback if since else None
    async with system_slot(limit_name("wallet", site)):
        async for page in wallet.list_orders(updated_since=since):
            orders, dead = _map_orders(page, site)
            with session_scope(run.engine) as session:
                record(session, orders, counts)
                record_dead_letters(session, dead)
            counts.dead_lettered += len(dead)
        refunds: list[tuple[str, Any]] = []
        async for page in wallet.list_refunds(updated_since=since):
            for raw in page:
                try:
                    refunds.append((site, wallet_refund_to_refund(raw, site=site)))
                except MappingError as exc:
                    with session_scope(run.engine) as session:
                        record_dead_letters(session, [DeadLetterItem(
                            flow=FLOW, source=target, entity_type="refund",
                            entity_key=str(raw.get("refund_id", "?")), reason=str(exc),
                            payload=scrub(raw))])
                    counts.dead_lettered += 1
    return refunds


def drain_inbox(run: SalesRun, counts: SalesCounts) -> list[tuple[str, Any]]:
    """Order events into the pool (newest version wins), in the order they happened; refund
    events are returned to apply after allocation. Events are marked processed in the same
    transaction as their effect."""
    refunds: list[tuple[str, Any]] = []
    while True:
        with session_scope(run.engine) as session:
            events = pending_events(session, types=ORDER_EVENTS + REFUND_EVENTS, limit=2000)
            events = [e for e in events if e.site in run.sites]
            if not events:
                return refunds
            by_site: dict[str, list[dict[str, Any]]] = {}
            for ev in events:
                if ev.type in ORDER_EVENTS:
                    by_site.setdefault(ev.site, []).append(ev.payload["data"])
                else:
                    try:
                        refunds.append((ev.site, wallet_refund_to_refund(ev.payload["data"],
                                                                         site=ev.site)))
                    except MappingError as exc:
                        record_dead_letters(session, [DeadLetterItem(
                            flow=FLOW, source=f"wallet:{ev.site}", entity_type="refund",
                            entity_key=ev.event_id, reason=str(exc),
                            payload=scrub(ev.payload))])
                        counts.dead_lettered += 1
            for site, raws in by_site.items():
                orders, dead = _map_orders(raws, site)
                record(session, orders, counts)
                record_dead_letters(session, dead)
                counts.dead_lettered += len(dead)
            mark_processed(session, [e.event_id for e in events])
            counts.events += len(events)


def apply_refunds(run: SalesRun, refunds: Sequence[tuple[str, Any]], counts: SalesCounts) -> None:
    for site, refund in sorted(refunds, key=lambda r: (r[1].created_at, r[1].refund_id)):
        with session_scope(run.engine) as session:
            try:
                report = pool.refund(session, site, refund.order_id, refund.line_id,
                                     refund.quantity, delivered=refund.delivered,
                                     refund_id=refund.refund_id, system=f"wallet:{site}")
            except pool.PoolError as exc:
                record_dead_letters(session, [DeadLetterItem(
                    flow=FLOW, source=f"wallet:{site}", entity_type="refund",
                    entity_key=refund.refund_id, reason=f"refund {refund.refund_id}: {exc}",
                    payload=refund.model_dump(mode="json"))])
                counts.dead_lettered += 1
                continue
        counts.refunds_applied += int(report.applied)


async def deliver_site(run: SalesRun, site: str, counts: SalesCounts) -> None:
    """Send each allocated line's codes to the site (idempotency key per line). The codes are
    decrypted only here; the delivered line queues its ERP fulfillment in the same
    transaction that marks the codes sold."""
    target = f"wallet:{site}"
    wallet = run.wallets[site]
    with session_scope(run.engine) as session:
        rows = pending_outbox(session, target, operation=pool.DELIVERY_OPERATION)
    if not rows:
        return

    async def one(row: Any) -> None:
        payload = row.payload
        with session_scope(run.engine) as session:
            try:
                codes = pool.codes_for_delivery(session, payload["code_ids"], run.keyring)
            except pool.CodeNotDeliverable as exc:
                give_up(run.engine, row, str(exc), flow=FLOW, entity_type="delivery",
                        session=session)
                counts.dead_lettered += 1
                return
        body = [{"code": code, **({"pin": pin} if pin else {}),
                 **({"expires_at": f"{expires}T23:59:59Z"} if expires else {})}
                for code, pin, expires in codes]
        if not await send_line_delivery(run.engine, wallet, row, body, flow=FLOW):
            counts.dead_lettered += 1
            return
        with session_scope(run.engine) as session:
            pool.mark_delivered(session, site, payload["order_id"], payload["line_id"],
                                payload["code_ids"], system=target)
            mark_sent(session, [row.id])
            enqueue(session, [OutboxItem(
                target=ERP_TARGET, operation=FULFILLMENT_OP,
                idempotency_key=f"if-{site}-{payload['order_id']}-{payload['line_id']}",
                entity_type="itemFulfillment",
                entity_key=f"{site}:{payload['order_id']}:{payload['line_id']}",
                payload={"site": site, "order_id": payload["order_id"],
                         "line_id": payload["line_id"], "code_ids": payload["code_ids"]})])
        counts.delivered_lines += 1

    async with system_slot(limit_name("wallet", site)):
        await asyncio.gather(*(one(row) for row in rows))


# ERP ------------------------------------------------------------------------------------------
def _orders_from_pool(session: Session, keys: Sequence[tuple[str, str]]) -> list[Order]:
    so, ol = SalesOrder.__table__, OrderLine.__table__
    orders: list[Order] = []
    for start in range(0, len(keys), 500):
        part = keys[start:start + 500]
        heads = {(r.site, r.order_id): r for r in session.execute(
            select(*so.c).where(so.c.site.in_({k[0] for k in part}),
                                so.c.order_id.in_({k[1] for k in part})))}
        lines: dict[tuple[str, str], list[Any]] = {}
        for r in session.execute(select(*ol.c).where(ol.c.site.in_({k[0] for k in part}),
                                                     ol.c.order_id.in_({k[1] for k in part}))
                                 .order_by(ol.c.site, ol.c.order_id, ol.c.line_id)):
            lines.setdefault((r.site, r.order_id), []).append(r)
        for key in part:
            head = heads.get(key)
            if head is None or not lines.get(key):
                continue
            orders.append(Order.model_validate({
                "site": head.site, "order_id": head.order_id, "status": head.status,
                "created_at": head.created_at, "updated_at": head.site_updated_at,
                "currency": head.currency, "customer_ref": head.customer_ref,
                "payment": head.payment,
                "lines": [{"line_id": r.line_id, "sku": r.sku, "quantity": r.quantity,
                           "unit_price": {"amount": str(r.unit_price),
                                          "currency": r.currency}}
                          for r in lines[key]],
            }))
    return orders


async def _item_ids(run: SalesRun, skus: set[str]) -> dict[str, str]:
    with session_scope(run.engine) as session:
        known = external_ids(session, "erp", "inventoryItem", skus)
    missing = sorted(skus - set(known))
    if missing:  # not seen by the catalogue sync yet: ask the ERP
        quoted = ", ".join("'" + s.replace("'", "''") + "'" for s in missing)
        found: dict[str, str] = {}
        async for rows in run.erp.suiteql(f"SELECT id, itemid FROM item WHERE itemid IN ({quoted})"):
            found.update({r["itemid"]: r["id"] for r in rows})
        if found:
            with session_scope(run.engine) as session:
                upsert_xrefs(session, "erp", "inventoryItem", {v: k for k, v in found.items()})
        known.update(found)
    return known


async def _customer_id(run: SalesRun, site: str) -> str:
    key = customer_key(site)
    with session_scope(run.engine) as session:
        known = canonical_ids(session, "erp", "customer", [key])
    if key in known:
        return known[key]
    s = run.sites[site]
    customer_id = await run.erp.upsert("customer", key, {
        "externalId": key, "entityId": key, "companyName": f"{s.name} customers",
        "currency": s.currency, "custentity_vf_site": site})
    with session_scope(run.engine) as session:
        upsert_xrefs(session, "erp", "customer", {key: customer_id})
    return customer_id


async def post_sales_orders(run: SalesRun, since: datetime | None, counts: SalesCounts) -> None:
    """Upsert into the ERP every sales order whose content changed (fingerprint per order)."""
    so = SalesOrder.__table__
    with session_scope(run.engine) as session:
        query = select(so.c.site, so.c.order_id).where(so.c.site.in_(list(run.sites)))
        if since is not None:
            query = query.where(so.c.updated_at >= since)
        keys = [(r.site, r.order_id) for r in session.execute(query.order_by(so.c.created_at))]
        orders = _orders_from_pool(session, keys)
    if not orders:
        return
    item_ids = await _item_ids(run, {line.sku for o in orders for line in o.lines})
    bodies: dict[str, dict[str, Any]] = {}
    dead: list[DeadLetterItem] = []
    for order in orders:
        try:
            body = order_to_sales_order(order, site=run.site(order.site),
                                        customer_id=await _customer_id(run, order.site),
                                        item_ids=item_ids)
        except MappingError as exc:
            dead.append(DeadLetterItem(flow=FLOW, source=ERP_TARGET, entity_type="salesOrder",
                                       entity_key=sales_order_key(order.site, order.order_id),
                                       reason=str(exc), payload=None))
            continue
        bodies[body["externalId"]] = body
    with session_scope(run.engine) as session:
        record_dead_letters(session, dead)
        done = load_fingerprints(session, ERP_TARGET, "salesOrder", list(bodies))
    counts.dead_lettered += len(dead)
    changed = {k: b for k, b in bodies.items() if done.get(k) != fingerprint(b)}
    keys = sorted(changed)
    for start in range(0, len(keys), 100):
        part = [changed[k] for k in keys[start:start + 100]]
        digest = fingerprint([fingerprint(b) for b in part])[:16]
        async with system_slot(limit_name("erp", run.erp.account)):
            results = await run.erp.batch("salesOrder", part, key=f"so-batch-{digest}")
        ok = {r.external_id: r.id for r in results if r.ok and r.external_id}
        failed = [r for r in results if not r.ok]
        with session_scope(run.engine) as session:
            save_fingerprints(session, ERP_TARGET, "salesOrder",
                              {k: fingerprint(changed[k]) for k in ok})
            upsert_xrefs(session, "erp", "salesOrder", {v: k for k, v in ok.items() if v})
            record_dead_letters(session, [DeadLetterItem(
                flow=FLOW, source=ERP_TARGET, entity_type="salesOrder",
                entity_key=str(r.external_id), reason=str(r.error), payload=None)
                for r in failed])
        counts.erp_orders += len(ok)
        counts.dead_lettered += len(failed)


async def post_fulfillments(run: SalesRun, counts: SalesCounts) -> None:
    """Each delivered code-pool line as an ERP item fulfillment (upsert by external id); in the
    same transaction as the outbox row is marked sent, its units move from vouchflow's
    ``unposted`` into the book's ``remaining``: once, whatever crashes when."""
    with session_scope(run.engine) as session:
        rows = pending_outbox(session, ERP_TARGET, operation=FULFILLMENT_OP)
    if not rows:
        return
    pc = PoolCode.__table__
    with session_scope(run.engine) as session:
        orders = {(o.site, o.order_id): o for o in _orders_from_pool(
            session, sorted({(r.payload["site"], r.payload["order_id"]) for r in rows}))}
        so_ids = external_ids(session, "erp", "salesOrder",
                              [sales_order_key(s, o) for s, o in orders])
    item_ids = await _item_ids(run, {line.sku for o in orders.values() for line in o.lines})
    for row in rows:
        p = row.payload
        order = orders.get((p["site"], p["order_id"]))
        so_id = so_ids.get(sales_order_key(p["site"], p["order_id"]))
        if order is None or so_id is None:
            continue  # its sales order is not in the ERP yet: next run
        with session_scope(run.engine) as session:
            batches = Counter(session.scalars(
                select(pc.c.batch_no).where(pc.c.id.in_(p["code_ids"]))))
        body = fulfillment(order, p["line_id"], site=run.site(p["site"]),
                           sales_order_id=so_id, item_ids=item_ids,
                           batches=sorted(batches.items()),
                           on=run.site(p["site"]).business_date(now_utc()))
        async with system_slot(limit_name("erp", run.erp.account)):
            await run.erp.upsert("itemFulfillment", body["externalId"], body)
        with session_scope(run.engine) as session:
            for batch_no, quantity in batches.items():
                pool.mark_posted(session, batch_no, quantity)
            mark_sent(session, [row.id])
        counts.erp_fulfillments += 1


# Prefect --------------------------------------------------------------------------------------
@task(name="collect-orders", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
async def collect_orders(run: SalesRun, poll: bool, lookback_minutes: float) -> dict[str, Any]:
    counts = SalesCounts()
    refunds: list[tuple[str, Any]] = []
    if poll:
        pulled = await asyncio.gather(*(
            pull_site(run, site, timedelta(minutes=lookback_minutes), counts)
            for site in run.wallets))
        for part in pulled:
            refunds.extend(part)
    refunds.extend(drain_inbox(run, counts))
    return {"counts": counts, "refunds": refunds}


@task(name="allocate-codes", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
async def allocate_codes(run: SalesRun) -> pool.AllocationReport:
    # the allocator is synchronous database work: keep it off the event loop
    return await asyncio.to_thread(pool.allocate, run.engine, retry_held=True,
                                   worker=run.run_key[:32])


@task(name="deliver-codes", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
async def deliver_codes(run: SalesRun) -> SalesCounts:
    counts = SalesCounts()
    await asyncio.gather(*(deliver_site(run, site, counts) for site in run.wallets))
    # API lines: codes issued by the supplier now, then delivered the same way
    await supplier_codes.deliver_api_lines(run.engine, run.wallets, run.keyring, counts)
    return counts


@task(name="post-to-erp", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
async def post_to_erp(run: SalesRun, since: datetime | None) -> SalesCounts:
    counts = SalesCounts()
    await post_sales_orders(run, since, counts)
    await post_fulfillments(run, counts)
    return counts


@flow(name="ingest-sales", log_prints=False)
async def ingest_sales(
    sites: list[str] | None = None,
    poll: bool = True,
    deliver: bool = True,
    post: bool = True,
    lookback_minutes: float = 10.0,
) -> dict[str, Any]:
    """Bring site orders in (by cursor and from the webhook inbox), allocate their codes,
    deliver them, and post sales orders and fulfillments to the ERP."""
    logger = run_logger()
    key = run_key()
    high = now_utc()
    run = await SalesRun.open(sites, key, high)
    totals = SalesCounts()
    try:
        with session_scope(run.engine) as session:
            erp_since = get_watermark(session, FLOW, ERP_TARGET, "salesOrder")
        collected = await collect_orders(run, poll, lookback_minutes)
        _add(totals, collected["counts"])
        report = await allocate_codes(run)
        totals.allocated_orders = report.orders_allocated
        totals.codes_allocated = report.codes_allocated
        totals.api_units = report.api_units
        totals.held_orders = report.orders_held
        totals.held = [{"site": h.site, "order_id": h.order_id, "reason": h.reason}
                       for h in report.held]
        refund_counts = SalesCounts()
        apply_refunds(run, collected["refunds"], refund_counts)
        _add(totals, refund_counts)
        if deliver:
            _add(totals, await deliver_codes(run))
        if post:
            since = erp_since - timedelta(minutes=lookback_minutes) if erp_since else None
            _add(totals, await post_to_erp(run, since))
        with session_scope(run.engine) as session:
            if poll:
                for site in run.wallets:
                    set_watermark(session, FLOW, f"wallet:{site}", high, "orders")
            if post:
                set_watermark(session, FLOW, ERP_TARGET, high, "salesOrder")
    finally:
        await run.aclose()
    summary = totals.as_dict()
    await publish_artifacts(summary)
    logger.info("ingest-sales: %s", {k: v for k, v in summary.items() if k != "held"})
    return summary


def _add(total: SalesCounts, part: SalesCounts) -> None:
    for name, value in part.__dict__.items():
        if isinstance(value, int):
            setattr(total, name, getattr(total, name) + value)
        elif isinstance(value, list):
            getattr(total, name).extend(value)


async def publish_artifacts(summary: dict[str, Any]) -> None:
    rows = [{"measure": k.replace("_", " "), "count": v} for k, v in summary.items()
            if isinstance(v, int)]
    await table_artifact("ingest-sales-counts", rows, "Sales ingest: counts of this run")
    if summary["held"]:
        await table_artifact("ingest-sales-held-orders", summary["held"][:200],
                             "Orders held (not allocated, or API codes not issued yet) and why")
    await markdown_artifact(
        "ingest-sales-summary",
        "\n".join([
            "# Sales ingest",
            f"- orders seen **{summary['orders_seen']}**, changed {summary['orders_changed']}, "
            f"stale versions ignored {summary['stale_versions']}",
            f"- allocated **{summary['allocated_orders']}** order(s): "
            f"{summary['codes_allocated']} code(s), {summary['api_units']} API unit(s)",
            f"- held **{summary['held_orders']}** order(s) for lack of stock",
            f"- delivered {summary['delivered_lines']} line(s) ({summary['api_codes_issued']} "
            "code(s) issued by API suppliers); ERP: {summary['erp_orders']} "
            f"sales order(s), {summary['erp_fulfillments']} fulfillment(s)",
            f"- dead-lettered {summary['dead_lettered']}",
        ]),
        "Sales ingest summary",
    )


__all__ = ["ingest_sales"]
