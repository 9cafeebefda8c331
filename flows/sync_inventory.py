"""sync_inventory: batches and available quantities reach each wallet site.

The ERP is the book: batch records changed there (received, corrected, closed) are read into
vouchflow's pool, whose ``available`` is the operational truth (it drops at the moment of
sale). Each SKU's sellable units (active, unexpired batches) are then split among the sites
that may sell them by the quota policy (``mappings.inventory``), so the sites together never
show more than can be delivered; only quotas that changed since a site last confirmed them
are sent.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote
from sqlalchemy import Engine, func, select

from canonical import now_utc
from connectors.erp import ErpClient, suiteql_time
from connectors.wallet import WalletClient, WalletSiteSettings, load_sites
from flows.credentials import erp_settings
from flows.delivery import deliver
from flows.heap import held_heap, hold
from flows.runtime import (
    Bulk,
    limit_name,
    markdown_artifact,
    run_logger,
    state_engine,
    system_slot,
    table_artifact,
)
from mappings.inventory import batch_item, inventory_item, site_quotas
from state import pool
from state.catalog import (
    InputStamps,
    load_listings,
    load_skus,
    mark_quota_read,
    quota_inputs,
    quota_unread,
)
from state.db import session_scope
from state.models import OrderLine
from state.procurement import po_numbers_by_erp_id
from state.store import (
    DeadLetterItem,
    OutboxItem,
    canonical_fingerprint,
    canonical_ids,
    get_watermark,
    load_fingerprints_for_targets,
    of_keys,
    record_dead_letters,
    save_fingerprints,
    set_watermark,
)

FLOW = "sync_inventory"
BATCH_TYPE = "customrecord_vf_batch"
INVENTORY_OP = "inventory.set"
BATCHES_OP = "batches.set"

BATCH_SELECT = ", ".join([
    "id", "name", "custrecord_vf_batch_sku", "custrecord_vf_batch_quantity",
    "custrecord_vf_batch_remaining", "custrecord_vf_batch_status",
    "custrecord_vf_batch_unit_cost", "custrecord_vf_batch_currency",
    "custrecord_vf_batch_expiry_type",
    "TO_CHAR(custrecord_vf_batch_expires_on, 'YYYY-MM-DD') AS expires_on",
    "custrecord_vf_batch_po", "custrecord_vf_batch_sites",
])


@dataclass
class InventoryCounts:
    erp_batches: int = 0
    dead_lettered: int = 0
    skus: int = 0
    quotas_changed: int = 0
    batches_changed: int = 0
    pushed: int = 0
    rejected: int = 0
    by_site: Counter[str] = field(default_factory=Counter)


async def import_erp_batches(engine: Engine, erp: ErpClient, since: datetime | None,
                             counts: InventoryCounts) -> None:
    """Batch records changed in the ERP (the book) into the pool."""
    where = f"lastmodifieddate >= {suiteql_time(since, erp.settings.timezone)}" if since else None
    rows: list[dict[str, Any]] = []
    async for page in erp.suiteql_by_key(BATCH_SELECT, BATCH_TYPE, where=where):
        rows.extend(page)
    if not rows:
        return
    dead: list[DeadLetterItem] = []
    with session_scope(engine) as session:  # one transaction; a savepoint per record
        skus = canonical_ids(session, "erp", "inventoryItem",
                             [r["custrecord_vf_batch_sku"] for r in rows
                              if r.get("custrecord_vf_batch_sku")])
        catalog = load_skus(session, skus.values())
        orders = po_numbers_by_erp_id(session, [r["custrecord_vf_batch_po"] for r in rows
                                      if r.get("custrecord_vf_batch_po")])
        for row in rows:
            _import_batch_row(session, row, skus, catalog, orders, counts, dead)
        record_dead_letters(session, dead)
    counts.dead_lettered += len(dead)


def _import_batch_row(session: Any, row: dict[str, Any], skus: dict[str, str],
                      catalog: dict[str, Any], orders: dict[str, str], counts: InventoryCounts,
                      dead: list[DeadLetterItem]) -> None:
    """One ERP batch record into the pool, or a dead letter: a bad record rolls back only
    its own savepoint, the rest of the read goes on. An order the ERP refers to that
    vouchflow did not place leaves the batch's order as it is."""
    label = f"{BATCH_TYPE} {row.get('id')} ({row.get('name', '?')})"
    sku = skus.get(row.get("custrecord_vf_batch_sku", ""))
    entry = catalog.get(sku) if sku else None
    try:
        if entry is None:
            raise ValueError("custrecord_vf_batch_sku: the item is not in the catalogue "
                             "(run sync-catalog first)")
        mode = entry.issuance_mode.value
        expires = row.get("expires_on")
        with session.begin_nested():
            pool.upsert_batch(
                session, batch_no=row["name"], sku=sku, issuance_mode=mode,
                unit_cost=Decimal(row.get("custrecord_vf_batch_unit_cost", "0")),
                currency=row.get("custrecord_vf_batch_currency") or entry.face_value.currency,
                status=row.get("custrecord_vf_batch_status") or None,
                expiry_type=row.get("custrecord_vf_batch_expiry_type") or "none",
                expires_on=date.fromisoformat(expires) if expires else None,
                purchase_order=orders.get(row.get("custrecord_vf_batch_po", "")),
                sites=[s for s in (row.get("custrecord_vf_batch_sites") or "").split(",") if s],
                quantity=(int(row["custrecord_vf_batch_quantity"])
                          if mode == "api" and row.get("custrecord_vf_batch_quantity")
                          else None),
                remaining=(int(row["custrecord_vf_batch_remaining"])
                           if row.get("custrecord_vf_batch_remaining") else None),
            )
        counts.erp_batches += 1
    except (ValueError, InvalidOperation, KeyError, pool.PoolError) as exc:
        dead.append(DeadLetterItem(flow=FLOW, source="erp", entity_type=BATCH_TYPE,
                                   entity_key=str(row.get("id", "?")),
                                   reason=f"{label}: {exc}", payload=row))


def recent_sales(engine: Engine, days: int, only: set[str] | None = None
                 ) -> dict[str, dict[str, float]]:
    """Units sold per SKU per site over the last ``days`` (the quota policy's weights), for
    every SKU or ``only`` these."""
    ol = OrderLine.__table__
    since = now_utc() - timedelta(days=days)
    query = (select(ol.c.sku, ol.c.site, func.sum(ol.c.quantity))
             .where(ol.c.order_created_at >= since, ol.c.status == "allocated")
             .group_by(ol.c.sku, ol.c.site))
    out: dict[str, dict[str, float]] = {}
    with session_scope(engine) as session:
        for sku, site, units in session.execute(of_keys(session, query, ol.c.sku, only)):
            out.setdefault(sku, {})[site] = float(units or 0)
    return out


def unplanned(engine: Engine, since: datetime) -> set[str]:
    """``state.catalog.quota_unread`` in a session of its own."""
    with session_scope(engine) as session:
        return quota_unread(session, since)


@dataclass
class SiteWrites:
    inventory: list[OutboxItem] = field(default_factory=list)
    batches: list[OutboxItem] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    """The fingerprint of each SKU's quota in ``inventory`` (saved once the site confirms it),
    kept beside the items so that what is sent is the items as they are."""


def plan(engine: Engine, sites: dict[str, WalletSiteSettings], as_of: datetime,
         weights_days: int, counts: InventoryCounts, only: set[str] | None = None,
         inputs: InputStamps | None = None, settle_seconds: float = 30.0,
         ) -> dict[str, SiteWrites]:
    """Quota per (site, SKU) and per (site, batch), and the writes for what changed since the
    site last confirmed it; for every SKU (a full rebalance) or ``only`` these. Quotas are the
    current state the site upserts (a repeat is harmless), so no outbox: the fingerprint saved
    on confirmation is the bookkeeping. ``inputs`` receives what the plan read of the SKUs the
    next run will look at again (stamped from ``as_of`` less ``settle_seconds`` on; with
    ``only``, of those), for the run to save once it succeeds (see ``unplanned``)."""
    on = as_of.date()
    stamp = as_of.isoformat()
    weights = recent_sales(engine, weights_days, only)
    targets = {site: f"wallet:{site}" for site in sites}
    with session_scope(engine) as session:
        # the stamps before the data: a change committed in between is planned again
        seen = quota_inputs(session, as_of - timedelta(seconds=settle_seconds), only)
        catalog = load_listings(session, only)
        stock = {s.sku: s for s in pool.stock(session, on=on, skus=only)}
        # what each site confirmed: also which SKUs it was ever shown
        known = load_fingerprints_for_targets(session, list(targets.values()), "quota", only)
    per_site: dict[str, dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]] = {
        s: {} for s in sites}
    no_weights: dict[str, float] = {}
    for code, (status, areas) in catalog.items():
        selling = [s for s in areas if s in sites] if status == "normal" else []
        if not selling:
            continue
        batches = stock[code].batches if code in stock else ()
        quotas = site_quotas(batches, sites=selling, weights=weights.get(code, no_weights),
                             on=on)
        for site in selling:
            shares = quotas[site]
            per_site[site][code] = (inventory_item(code, shares, stamp),
                                    [batch_item(code, share) for share in shares])
    counts.skus = len(catalog)
    if inputs is not None:
        inputs.update(seen)
    writes: dict[str, SiteWrites] = {}
    for site, target in targets.items():
        wanted = per_site[site]
        confirmed = known[target]
        for code in confirmed.keys() - wanted.keys():
            # no longer sold there (area, status, stock gone): show zero
            wanted[code] = ({"sku": code, "available": 0, "as_of": stamp}, [])
        site_writes = SiteWrites()
        inventory, batch_writes, digests = (site_writes.inventory, site_writes.batches,
                                            site_writes.digests)
        for code, (item, batch_items) in wanted.items():
            digest = quota_digest(item["available"], batch_items)
            if confirmed.get(code) == digest:
                continue
            digests[code] = digest
            version = digest[:12]
            inventory.append(OutboxItem(
                target=target, operation=INVENTORY_OP,
                idempotency_key=f"inv-{site}-{code}-{version}", entity_type="quota",
                entity_key=code, payload=item))
            for b in batch_items:
                batch_no = b["batch_no"]
                batch_writes.append(OutboxItem(
                    target=target, operation=BATCHES_OP,
                    idempotency_key=f"bat-{site}-{code}-{batch_no}-{version}",
                    entity_type="batch", entity_key=f"{code}:{batch_no}", payload=b))
        counts.quotas_changed += len(inventory)
        counts.batches_changed += len(batch_writes)
        if inventory:
            writes[site] = site_writes
    return writes


def quota_digest(available: int, batch_items: list[dict[str, Any]]) -> str:
    """``state.store.fingerprint`` of a quota and its batch shares (whole numbers and strings
    only, so ``canonical_fingerprint`` gives the same digest)."""
    return canonical_fingerprint({"available": available, "batches": batch_items})


REMEMBER_EVERY = 10
"""Batches of quotas whose fingerprints are saved in one transaction: a commit per ten
batches instead of one per batch; a crash sends at most that many again (harmless)."""


async def push_site(engine: Engine, wallet: WalletClient, site: str, writes: SiteWrites,
                    counts: InventoryCounts) -> None:
    """Batch shares first, then the SKU quotas; a SKU's quota is remembered (fingerprinted)
    only once its quota is confirmed, so a crash in between sends both again."""
    target = f"wallet:{site}"
    size = wallet.site.batch_size
    async with system_slot(limit_name("wallet", site)):
        if writes.batches:
            report = await deliver(engine, writes.batches, wallet.put_batches, flow=FLOW,
                                   batch_size=size)
            counts.rejected += report.dead_lettered
        step = size * REMEMBER_EVERY
        for start in range(0, len(writes.inventory), step):
            report = await deliver(engine, writes.inventory[start:start + step],
                                   wallet.put_inventory, flow=FLOW, batch_size=size)
            if report.confirmed:
                digests = writes.digests
                await asyncio.to_thread(_remember_quotas, engine, target, {
                    r.entity_key: digests[r.entity_key] for r in report.confirmed})
            counts.pushed += report.sent
            counts.rejected += report.dead_lettered
            counts.by_site[site] += report.sent


def _remember_quotas(engine: Engine, target: str, digests: dict[str, str]) -> None:
    """The quotas a site confirmed, by SKU (in a worker thread: waiting for the write lock
    must not stop the event loop)."""
    with session_scope(engine, immediate=True) as session:
        save_fingerprints(session, target, "quota", digests)


@task(name="import-erp-batches", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
async def import_batches_task(engine: Engine, erp: ErpClient, since: datetime | None
                              ) -> InventoryCounts:
    counts = InventoryCounts()
    async with system_slot(limit_name("erp", erp.account)):
        await import_erp_batches(engine, erp, since, counts)
    return counts


@task(name="plan-and-push-quotas", retries=2, retry_delay_seconds=[2, 10],
      cache_policy=NO_CACHE)
async def quotas_task(engine: Engine, sites: dict[str, WalletSiteSettings],
                      wallets: dict[str, WalletClient], as_of: datetime,
                      weights_days: int, only: set[str] | None, settle_seconds: float,
                      ) -> tuple[InventoryCounts, Bulk[InputStamps]]:
    counts = InventoryCounts()
    inputs = InputStamps()
    writes = await asyncio.to_thread(plan, engine, sites, as_of, weights_days, counts, only,
                                     inputs, settle_seconds)
    hold()  # the writes stay until every site has them: not walked by each collection
    await asyncio.gather(*(push_site(engine, wallets[s], s, w, counts)
                           for s, w in writes.items()))
    return counts, Bulk(inputs)


@flow(name="sync-inventory", log_prints=False)
async def sync_inventory(
    sites: list[str] | None = None,
    lookback_minutes: float = 10.0,
    weights_days: int = 7,
    full: bool = False,
    settle_seconds: float = 30.0,
) -> dict[str, Any]:
    """Read changed ERP batch records into the pool, then show each site its quota of every
    SKU (and of every batch) it sells.

    Quotas are rebalanced for the SKUs whose catalogue entry or batches changed since the last
    run began, less ``settle_seconds`` (a change stamped just before that but committed after
    the last run read would otherwise be missed: vouchflow's own transactions are short); the
    first run of each (UTC) day, a run with ``full`` or the first run ever rebalances every
    SKU, since expiries and the sales weights move with the calendar too.
    ``lookback_minutes`` is the look-back for the ERP's batch records."""
    logger = run_logger()
    engine = state_engine()
    all_sites = load_sites()
    chosen = {c: s for c, s in all_sites.items() if not sites or c in sites}
    high = now_utc()
    with session_scope(engine) as session:
        wm = get_watermark(session, FLOW, "erp", BATCH_TYPE)
        rebalanced = get_watermark(session, FLOW, "pool", "quota")
    since = None if full or wm is None else wm - timedelta(minutes=lookback_minutes)
    whole = full or rebalanced is None or rebalanced.date() != high.date()
    erp = ErpClient(await erp_settings())
    wallets = {c: WalletClient(s) for c, s in chosen.items()}
    totals = InventoryCounts()
    with held_heap():  # see flows.heap
        try:
            imported = await import_batches_task(engine, quote(erp), since)
            totals.erp_batches = imported.erp_batches
            totals.dead_lettered = imported.dead_lettered
            only = (None if whole else await asyncio.to_thread(
                unplanned, engine, rebalanced - timedelta(seconds=settle_seconds)))
            done, inputs = await quotas_task(engine, quote(chosen), quote(wallets), high,
                                             weights_days, quote(only), settle_seconds)
            totals.skus, totals.quotas_changed, totals.batches_changed = (
                done.skus, done.quotas_changed, done.batches_changed)
            totals.pushed, totals.rejected, totals.by_site = (done.pushed, done.rejected,
                                                              done.by_site)
            with session_scope(engine) as session:
                set_watermark(session, FLOW, "erp", high, BATCH_TYPE)
                # when quotas were last computed: the next run rebalances what changed since
                # (and everything, once the date has moved on)
                set_watermark(session, FLOW, "pool", high, "quota")
                mark_quota_read(session, inputs.value)
        finally:
            await erp.aclose()
            for w in wallets.values():
                await w.aclose()
    summary = {k: v for k, v in totals.__dict__.items() if k != "by_site"}
    summary["pushed_by_site"] = dict(totals.by_site)
    await table_artifact("sync-inventory-counts",
                         [{"measure": k.replace("_", " "), "count": v}
                          for k, v in summary.items() if isinstance(v, int)],
                         "Inventory sync: counts of this run")
    await markdown_artifact(
        "sync-inventory-summary",
        f"# Inventory sync\n- {summary['erp_batches']} batch record(s) read from the ERP\n"
        f"- {summary['quotas_changed']} SKU quota(s) and {summary['batches_changed']} batch "
        f"share(s) changed; {summary['pushed']} sent, {summary['rejected']} refused\n",
        "Inventory sync summary")
    logger.info("sync-inventory: %s", summary)
    return summary
