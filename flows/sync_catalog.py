"""sync_catalog: voucher SKUs from the ERP (their master) to the wallet sites that sell them.

Incremental: reads items modified since the stored watermark (minus a small look-back), the
watermark frozen at run start and advanced only when the whole run succeeded. Each chunk of
items is mapped, compared with the fingerprint of what each site last confirmed, and only
changes are written to the outbox and pushed, by upsert keyed on the SKU code, so a re-run or
a retry after a crash pushes nothing twice and loses nothing. Records that cannot be mapped
go to the dead-letter table with the reason; the rest of their chunk goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from canonical import Sku, now_utc
from connectors.erp import ErpClient, format_q_date, suiteql_time
from connectors.erp.records import (
    INVENTORY_ITEM_COLUMNS,
    inventory_item_select,
    suiteql_rows_to_records,
)
from connectors.errors import FatalError, NotFoundError
from connectors.redact import scrub
from connectors.wallet import WalletClient, WalletSiteSettings, load_sites
from flows.credentials import erp_settings
from flows.deadletters import replay_handler
from flows.delivery import DeliveryReport, deliver
from flows.heap import held_heap, hold
from flows.runtime import (
    Bulk,
    Progress,
    limit_name,
    markdown_artifact,
    run_key,
    run_logger,
    state_engine,
    system_slot,
    table_artifact,
)
from mappings.catalog import inventory_item_to_sku, sku_to_wallet_product
from mappings.errors import MappingError
from state.catalog import load_skus, remember_skus
from state.db import session_scope
from state.events import emit_events, prepare_events, sku_events
from state.inbox import mark_processed, pending_events
from state.models import DeadLetter, DeadLetterStatus, LedgerStatus
from state.store import (
    DeadLetterItem,
    OutboxItem,
    canonical_fingerprint,
    external_ids,
    fingerprint,
    forget_fingerprints,
    get_watermark,
    ledger_done_steps,
    ledger_finish,
    ledger_start,
    load_fingerprints,
    load_fingerprints_for_targets,
    record_dead_letters,
    resolve_dead_letters,
    save_fingerprints,
    set_watermark,
    upsert_xrefs,
)

FLOW = "sync_catalog"
SOURCE = "erp"
RECORD_TYPE = "inventoryItem"
ENTITY = "product"
OPERATION = "product.upsert"


def site_target(site: str) -> str:
    return f"wallet:{site}"


def product_digest(product: dict[str, Any]) -> str:
    """``state.store.fingerprint`` of a product built by ``sku_to_wallet_product`` (strings
    only, so ``canonical_fingerprint`` gives the same digest)."""
    return canonical_fingerprint(product)


def product_key(site: str, sku: str, digest: str) -> str:
    """Idempotency key of one product version on one site: ``product-sg1-SKU-1-<digest16>``."""
    return f"product-{site}-{sku}-{digest[:16]}"


@dataclass
class CatalogCounts:
    read: int = 0
    not_modified: int = 0
    gone: int = 0
    mapped: int = 0
    dead_lettered: int = 0
    changed: int = 0
    skipped: int = 0
    pushed: int = 0
    rejected: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def _numbers(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "outcomes"]

    def add(self, other: CatalogCounts) -> None:
        for name in self._numbers():
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.outcomes.update(other.outcomes)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in self._numbers()}
        data["outcomes"] = dict(self.outcomes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CatalogCounts:
        counts = cls(**{k: v for k, v in data.items() if k not in {"outcomes", "resumed"}})
        counts.outcomes = Counter(data.get("outcomes") or {})
        return counts


@dataclass
class CatalogRun:
    """Everything a chunk needs; built once per flow run (clients are not task parameters)."""

    engine: Engine
    erp: ErpClient
    sites: dict[str, WalletSiteSettings]
    wallets: dict[str, WalletClient]
    since: datetime | None
    run_key: str
    force: bool = False
    extra_ids: list[str] = field(default_factory=list)
    since_override: set[str] = field(default_factory=set)
    """Items to process in this run whatever their modification time (the ERP's version must
    go back to a site that changed it locally)."""
    subset: bool = False
    """Only some of the sites: such a run keeps its own watermarks per site and never saves
    the ERP items' fingerprints, which say "every site has this version"."""
    confirmed: dict[str, dict[str, str]] | None = None
    """What each site last confirmed of every product (by site target, then SKU), read once
    by a run that reads every item (``remember_confirmed``) and kept up to date with what its
    chunks push; None: each chunk reads what it needs."""

    def remember_confirmed(self, session: Session) -> None:
        """Read what every site of the run confirmed, once: a run that reads every item
        would otherwise look each SKU up at every site (most have none), chunk by chunk."""
        self.confirmed = load_fingerprints_for_targets(
            session, [site_target(site) for site in self.wallets], ENTITY, None)

    @classmethod
    async def open(cls, *, site_codes: Sequence[str] | None, since: datetime | None,
                   key: str, force: bool = False) -> CatalogRun:
        all_sites = load_sites()
        unknown = sorted(set(site_codes or ()) - set(all_sites))
        if unknown:
            raise ValueError(f"unknown site(s): {', '.join(unknown)}")
        chosen = {c: s for c, s in all_sites.items() if not site_codes or c in site_codes}
        return cls(
            subset=set(chosen) != set(all_sites),
            engine=state_engine(),
            erp=ErpClient(await erp_settings()),
            sites=all_sites,
            wallets={code: WalletClient(site) for code, site in chosen.items()},
            since=since,
            run_key=key,
            force=force,
        )

    async def aclose(self) -> None:
        await self.erp.aclose()
        for wallet in self.wallets.values():
            await wallet.aclose()


# the steps --------------------------------------------------------------------------------
async def list_changed_ids(erp: ErpClient, since: datetime | None) -> list[str]:
    """Internal ids of items modified since ``since`` (all items when None), from the record
    collection. The ERP filters in its own time zone, to the minute (or the day, by setting);
    the exact cut happens on ``lastModifiedDate`` after the read.
    """
    q = None
    if since is not None:
        stamp = format_q_date(since, erp.settings.timezone,
                              precision=erp.settings.q_time_precision)
        q = f'lastModifiedDate ON_OR_AFTER "{stamp}"'
    ids: list[str] = []
    async for page in erp.list_ids(RECORD_TYPE, q=q):
        ids.extend(page)
    return list(dict.fromkeys(ids))


async def read_changed_items(erp: ErpClient, since: datetime | None) -> list[dict[str, Any]]:
    """Items modified since ``since`` with all their fields, in one SuiteQL query read in key
    ranges (no GET per item), as REST-shaped records."""
    where = "itemtype = 'InvtPart'"
    if since is not None:
        where += f" AND lastmodifieddate >= {suiteql_time(since, erp.settings.timezone)}"
    items: list[dict[str, Any]] = []
    async for rows in erp.suiteql_by_key(inventory_item_select(), "item", where=where):
        items.extend(suiteql_rows_to_records(rows, INVENTORY_ITEM_COLUMNS,
                                             erp.settings.timezone))
    return items


def _modified_since(raw: dict[str, Any], since: datetime | None,
                    always: set[str] | frozenset[str] = frozenset()) -> bool:
    if since is None or str(raw.get("id")) in always:
        return True
    stamp = raw.get("lastModifiedDate")
    try:
        modified = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return True  # let the mapping report the bad timestamp
    if modified.tzinfo is None:
        return True
    return modified >= since


@dataclass
class PlannedProducts:
    """The product writes of a chunk by site, with each product's fingerprint (saved when the
    site confirms it, so it is computed once)."""

    writes: dict[str, list[OutboxItem]] = field(default_factory=dict)
    digests: dict[str, dict[str, str]] = field(default_factory=dict)
    unchanged: int = 0


def plan_products(session: Session, skus: Sequence[Sku], wallets: Sequence[str],
                  confirmed: dict[str, dict[str, str]] | None = None) -> PlannedProducts:
    """The product writes every site needs: each (site, SKU) whose product differs from what
    the site last confirmed (``confirmed``: all of that by site target, when the caller holds
    it; else read for these SKUs). A site that is no longer in a SKU's sales areas but once
    received it gets the SKU as inactive, so it stops selling it."""
    planned = PlannedProducts()
    targets = {site: site_target(site) for site in wallets}
    codes = [s.sku for s in skus]
    if confirmed is None:
        known = load_fingerprints_for_targets(session, list(targets.values()), ENTITY, codes)
    else:  # looked up by these SKUs' codes only, so the whole of it serves as it is
        known = {target: confirmed[target] for target in targets.values()}
    # one pass over the SKUs, each looking only at the sites it is listed on and the sites
    # that once received it (not every SKU against every site); a SKU's sites that once
    # received it are in the order of the sites given
    received: dict[str, list[str]] = {}
    holding = [(site, known[target]) for site, target in targets.items() if known[target]]
    if holding:
        for code in dict.fromkeys(codes):
            found = [site for site, digests in holding if code in digests]
            if found:
                received[code] = found
    writes: dict[str, list[OutboxItem]] = {site: [] for site in targets}
    digests: dict[str, dict[str, str]] = {site: {} for site in targets}
    unchanged = 0
    for sku in skus:
        code = sku.sku
        areas = sku.sales_areas
        chosen = [(site, True) for site in areas if site in targets]
        was = received.get(code)
        if was:
            chosen.extend((site, False) for site in was if site not in areas)
        # a SKU's product is the same on every site that lists it (and on every site that no
        # longer does): built and fingerprinted once each
        versions: dict[bool, tuple[dict[str, Any], str]] = {}
        for site, listed in chosen:
            version = versions.get(listed)
            if version is None:
                product = sku_to_wallet_product(sku, listed=listed)
                version = versions[listed] = (product, product_digest(product))
            product, digest = version
            target = targets[site]
            if known[target].get(code) == digest:
                unchanged += 1
                continue
            digests[site][code] = digest
            writes[site].append(OutboxItem(
                target=target, operation=OPERATION,
                idempotency_key=product_key(site, code, digest), entity_type=ENTITY,
                entity_key=code, payload=product,
            ))
    planned.unchanged = unchanged
    for site in targets:  # in the order of the sites given, as before
        if writes[site]:
            planned.writes[site] = writes[site]
            planned.digests[site] = digests[site]
    return planned


async def push_site_products(
    run: CatalogRun, site: str, writes: Sequence[OutboxItem],
    digests: dict[str, str] | None = None, *, remember: bool = True,
) -> DeliveryReport:
    """Upsert products on one site; what it confirms becomes its fingerprint (``digests``:
    the products' fingerprints by SKU, when the plan already computed them), saved batch by
    batch, or by the caller from the report's ``confirmed`` when not ``remember``. The upsert
    is by SKU and the site answers a repeat of the same content as unchanged, so pushing again
    after a crash (before the fingerprints were saved) does no harm: no outbox is needed."""
    if not writes:
        return DeliveryReport()
    wallet = run.wallets[site]
    target = site_target(site)

    def save(session: Session, sent: Sequence[Any], _: Sequence[Any]) -> None:
        save_fingerprints(session, target, ENTITY, confirmed_digests(sent, digests))

    async with system_slot(limit_name("wallet", site)):
        return await deliver(
            run.engine, writes, wallet.upsert_products, flow=FLOW,
            batch_size=wallet.site.batch_size, on_sent=save if remember else None,
            outcome_of=lambda r: str(r.get("outcome", "unknown")) if isinstance(r, dict)
            else "unknown",
        )


def confirmed_digests(sent: Sequence[Any], digests: dict[str, str] | None) -> dict[str, str]:
    """The fingerprints of the products a site confirmed, by SKU (from the plan's
    ``digests`` where it has them)."""
    known = digests or {}
    return {row.entity_key: known.get(row.entity_key) or fingerprint(row.payload)
            for row in sent}


def process_records(
    run: CatalogRun, raws: Sequence[dict[str, Any]], counts: CatalogCounts
) -> PlannedProducts:
    """Map, quarantine and plan one chunk's records; returns the product writes by site.
    Plain CPU and database work: ``sync_chunk`` runs it in a worker thread, so the event loop
    keeps the other chunks' requests moving meanwhile."""
    skus: list[Sku] = []
    xrefs: dict[str, str] = {}
    dead: list[DeadLetterItem] = []
    for raw in raws:
        try:
            sku = inventory_item_to_sku(raw, known_sites=run.sites.keys())
        except MappingError as exc:
            dead.append(DeadLetterItem(
                flow=FLOW, source=SOURCE, entity_type=RECORD_TYPE,
                entity_key=str(raw.get("id", "?")), reason=str(exc), payload=scrub(raw),
            ))
            continue
        skus.append(sku)
        xrefs[str(raw["id"])] = sku.sku
    counts.mapped += len(skus)
    counts.dead_lettered += len(dead)
    # two ERP items claiming the same SKU code: neither may overwrite the other on the sites
    seen: Counter[str] = Counter(s.sku for s in skus)
    clashes = {code for code, n in seen.items() if n > 1}
    if clashes:
        for raw_id, code in list(xrefs.items()):
            if code in clashes:
                dead.append(DeadLetterItem(
                    flow=FLOW, source=SOURCE, entity_type=RECORD_TYPE, entity_key=raw_id,
                    reason=f"inventoryItem {raw_id}: itemId {code!r} is used by another item "
                    "in the same read (unique)", payload=None,
                ))
                del xrefs[raw_id]
        counts.dead_lettered += sum(seen[c] for c in clashes)
        counts.mapped -= sum(seen[c] for c in clashes)
        skus = [s for s in skus if s.sku not in clashes]

    # the CPU work before the write transaction: SQLite has one writer at a time, and the
    # other chunks' confirmations wait for it
    events = sku_events(skus)  # same id for a version seen again; in the order of skus
    with session_scope(run.engine) as session:  # reads what the sites confirmed before
        planned = plan_products(session, skus, list(run.wallets), run.confirmed)
        ready = prepare_events(session, events)
    erp_ids = {code: raw_id for raw_id, code in xrefs.items()}
    with session_scope(run.engine, immediate=True) as session:
        record_dead_letters(session, dead)
        resolve_dead_letters(session, FLOW, SOURCE, RECORD_TYPE, xrefs.keys())
        upsert_xrefs(session, SOURCE, RECORD_TYPE, xrefs)
        # each event's data is the SKU as remembered: dumped and rendered once for both
        remember_skus(session, [(s, erp_ids.get(s.sku)) for s in skus],
                      dumped=[e.stored_data() for e in events])
        emit_events(session, ready)
    counts.changed += sum(len(w) for w in planned.writes.values())
    counts.skipped += planned.unchanged
    return planned


SOURCE_TARGET = "source:erp"
"""Fingerprints of the ERP items as last processed (as opposed to what each site holds)."""

VOLATILE_FIELDS = frozenset({"links", "lastModifiedDate"})


def source_digest(raw: dict[str, Any]) -> str:
    """The content of an ERP item as read (less its volatile fields): canonical JSON (sorted
    keys, Decimals as their text) made by orjson, SHA-256. Only ever compared with digests
    made here, so not ``state.store.fingerprint``, whose encoder cost four times as much per
    item; what orjson cannot write (an integer beyond 64 bits) goes through that one."""
    content = dict(raw)  # less the volatile fields (the keys are sorted when written)
    for name in VOLATILE_FIELDS:
        content.pop(name, None)
    try:
        text = orjson.dumps(content, default=_decimal_text,
                            option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return fingerprint(content)
    return hashlib.sha256(text).hexdigest()


def _decimal_text(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} in an ERP item")


async def sync_chunk(
    run: CatalogRun, work: Sequence[str] | Sequence[dict[str, Any]], *, force: bool = False,
) -> CatalogCounts:
    """Map, plan and push one chunk of items (``work`` is records already read, or ids to
    GET). Items whose content is the same as when they were last processed are skipped before
    mapping (unless ``force``); their fingerprints are saved only after the chunk's pushes, so
    a crash before that re-processes them."""
    counts = CatalogCounts()
    candidates: list[dict[str, Any]] = []
    failures: list[DeadLetterItem] = []
    if work and isinstance(work[0], dict):
        for raw in work:
            assert isinstance(raw, dict)
            if _modified_since(raw, run.since, run.since_override):
                candidates.append(raw)
            else:
                counts.not_modified += 1
    else:
        ids = [str(i) for i in work]
        async with system_slot(limit_name("erp", run.erp.account)):
            fetched = await run.erp.get_many(RECORD_TYPE, ids)
        for record_id, result in zip(ids, fetched, strict=True):
            if isinstance(result, NotFoundError):
                counts.gone += 1  # deleted between the listing and the read
            elif isinstance(result, FatalError):
                failures.append(DeadLetterItem(
                    flow=FLOW, source=SOURCE, entity_type=RECORD_TYPE, entity_key=record_id,
                    reason=f"inventoryItem {record_id}: {result}", payload=None,
                ))
            elif isinstance(result, BaseException):
                raise result  # transient after all retries: fail the chunk, the retry resumes
            elif _modified_since(result, run.since, run.since_override):
                candidates.append(result)
            else:
                counts.not_modified += 1
    counts.read = len(candidates) + counts.not_modified
    raws, digests, planned = await asyncio.to_thread(
        _changed_and_planned, run, candidates, failures, counts, force)
    sites = list(planned.writes)
    results = await asyncio.gather(*(
        push_site_products(run, site, planned.writes[site], planned.digests.get(site),
                           remember=False)
        for site in sites
    ), return_exceptions=True)
    # what the sites confirmed, and (once every site has its products) the items' own
    # fingerprints: one transaction for the chunk, not one per batch
    confirmed: dict[str, dict[str, str]] = {}
    failed: BaseException | None = None
    for site, result in zip(sites, results, strict=True):
        if isinstance(result, BaseException):
            failed = failed or result
            continue
        counts.pushed += result.sent
        counts.rejected += result.dead_lettered
        counts.outcomes.update(result.outcomes)
        if result.confirmed:
            confirmed[site_target(site)] = confirmed_digests(result.confirmed,
                                                             planned.digests.get(site))
    source = ({} if run.subset or failed is not None
              else {str(raw["id"]): digests[str(raw["id"])] for raw in raws})
    if confirmed or source:
        await asyncio.to_thread(_remember_chunk, run.engine, confirmed, source)
    if run.confirmed is not None:
        for target, found in confirmed.items():
            run.confirmed[target].update(found)
    if failed is not None:
        raise failed
    return counts


def _remember_chunk(engine: Engine, confirmed: dict[str, dict[str, str]],
                    source: dict[str, str]) -> None:
    """The fingerprints of a chunk's pushes (by site target) and of its ERP items, in one
    transaction (in a worker thread: waiting for the write lock must not stop the loop)."""
    with session_scope(engine, immediate=True) as session:
        for target, found in confirmed.items():
            save_fingerprints(session, target, ENTITY, found)
        save_fingerprints(session, SOURCE_TARGET, RECORD_TYPE, source)


def _changed_and_planned(
    run: CatalogRun, candidates: list[dict[str, Any]], failures: list[DeadLetterItem],
    counts: CatalogCounts, force: bool,
) -> tuple[list[dict[str, Any]], dict[str, str], PlannedProducts]:
    """The CPU and database part of a chunk before its pushes (in a worker thread): drop the
    items whose content is unchanged since they were last processed (unless ``force``),
    record the read failures, then map and plan the rest."""
    digests = {str(raw["id"]): source_digest(raw) for raw in candidates}
    if not force and digests:
        with session_scope(run.engine) as session:
            known = load_fingerprints(session, SOURCE_TARGET, RECORD_TYPE, list(digests))
        raws = [raw for raw in candidates if known.get(str(raw["id"])) != digests[str(raw["id"])]]
        counts.not_modified += len(candidates) - len(raws)
    else:
        raws = candidates
    if failures:
        with session_scope(run.engine) as session:
            record_dead_letters(session, failures)
        counts.dead_lettered += len(failures)
    return raws, digests, process_records(run, raws, counts)


def site_scope(site: str) -> str:
    """The watermark of runs for some sites only, per site (``inventoryItem:sg1``)."""
    return f"{RECORD_TYPE}:{site}"


def subset_sites(sites: Sequence[str] | None) -> list[str]:
    """The sites of a run that covers only some of them (empty: a run for every site)."""
    if not sites:
        return []
    chosen = sorted(set(sites))
    return [] if set(chosen) == set(load_sites()) else chosen


def sites_watermark(session: Session, overall: datetime | None,
                    sites: Sequence[str]) -> datetime | None:
    """Where a run for some sites starts reading: the oldest of their watermarks, each the
    newer of the all-sites watermark and the site's own (None while a site has neither)."""
    marks: list[datetime] = []
    for site in sites:
        known = [m for m in (overall, get_watermark(session, FLOW, SOURCE, site_scope(site)))
                 if m is not None]
        if not known:
            return None
        marks.append(max(known))
    return min(marks) if marks else overall


def _step(work: Sequence[str] | Sequence[dict[str, Any]]) -> str:
    ids = [str(w["id"]) if isinstance(w, dict) else str(w) for w in work]
    digest = hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]
    return f"chunk-{digest}"


# the site's own changes, back to the ERP -----------------------------------------------------
PRODUCT_FIELDS = ("sku", "name", "kind", "face_value", "status", "issuance_mode",
                  "write_off_type")
LOCAL_STATUSES = {"frozen", "inactive", "normal"}


@dataclass
class FlowBack:
    written_back: int = 0
    erp_won: int = 0
    checked: int = 0


@dataclass(frozen=True)
class LocalChange:
    site: str
    sku: str
    status: str
    at: datetime


async def _polled_changes(run: CatalogRun, lookback: timedelta) -> list[LocalChange]:
    """Products each site changed itself since its watermark (what differs from what we
    pushed). Costs a read of every product the site touched, ours included: a periodic
    reconciliation next to the webhooks, not the main path."""
    changes: list[LocalChange] = []
    for site, wallet in run.wallets.items():
        target = site_target(site)
        with session_scope(run.engine) as session:
            since = get_watermark(session, FLOW, target, "product")
        high = now_utc()
        seen: list[dict[str, Any]] = []
        async for page in wallet.list_products(
                updated_since=since - lookback if since else None):
            seen.extend(page)
        with session_scope(run.engine) as session:
            pushed = load_fingerprints(session, target, ENTITY, [p["sku"] for p in seen])
        for product in seen:
            digest = pushed.get(product["sku"])
            if digest is None:
                continue  # never ours
            current = {k: product.get(k) for k in PRODUCT_FIELDS}
            if fingerprint(current) != digest and product.get("status") in LOCAL_STATUSES:
                changes.append(LocalChange(site, product["sku"], product["status"],
                                           _parse_time(product.get("updated_at"))))
        with session_scope(run.engine) as session:
            set_watermark(session, FLOW, target, high, "product")
    return changes


def _parse_time(value: Any) -> datetime:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


async def flow_back_site_changes(run: CatalogRun, lookback: timedelta, *,
                                 poll: bool) -> FlowBack:
    """A site may freeze or deactivate a SKU (or lift its own freeze); it says so with a
    ``product.status_changed`` webhook (and a periodic poll catches any that went astray).
    The rule: the ERP is master, so such a change is written to the ERP when it is newer than
    the ERP's last change to the item, and then reaches every site of the SKU through the
    normal sync; when the ERP changed the item after the site did, the ERP's version is pushed
    back to the site."""
    report = FlowBack()
    changes: list[LocalChange] = []
    with session_scope(run.engine) as session:
        events = [e for e in pending_events(session, types=["product.status_changed"])
                  if e.site in run.wallets]
    for ev in events:
        data = ev.payload.get("data", {})
        if data.get("sku") and data.get("status") in LOCAL_STATUSES:
            changes.append(LocalChange(ev.site, data["sku"], data["status"], ev.created_at))
    if poll:
        changes.extend(await _polled_changes(run, lookback))
    report.checked = len(changes)
    latest: dict[tuple[str, str], LocalChange] = {}
    for change in sorted(changes, key=lambda c: c.at):
        latest[(change.site, change.sku)] = change
    with session_scope(run.engine) as session:
        erp_ids = external_ids(session, SOURCE, RECORD_TYPE, {c.sku for c in latest.values()})
    repush: dict[str, list[str]] = {}
    for change in latest.values():
        erp_id = erp_ids.get(change.sku)
        if erp_id is None:
            continue
        item = await run.erp.get(RECORD_TYPE, erp_id)
        erp_modified = _parse_time(item.get("lastModifiedDate"))
        erp_status = "inactive" if item.get("isInactive") else item.get("custitem_vf_status")
        if change.status == erp_status:
            continue
        # the ERP keeps whole seconds: within the same second the master wins
        if change.at.replace(microsecond=0) > erp_modified:
            await run.erp.patch(RECORD_TYPE, erp_id, {"custitem_vf_status": change.status})
            report.written_back += 1
        else:
            repush.setdefault(change.site, []).append(change.sku)
    for site, skus in repush.items():
        # forget what the site was sent: this run sends it the ERP's version again
        with session_scope(run.engine) as session:
            forget_fingerprints(session, site_target(site), ENTITY, skus)
            forget_fingerprints(session, SOURCE_TARGET, RECORD_TYPE,
                                [erp_ids[s] for s in skus])
        report.erp_won += len(skus)
        run.extra_ids.extend(erp_ids[s] for s in skus)
    if events:
        with session_scope(run.engine) as session:
            mark_processed(session, [e.event_id for e in events])
    return report


@task(name="flow-back-site-changes", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
async def flow_back(run: CatalogRun, lookback_minutes: float, poll: bool) -> dict[str, int]:
    report = await flow_back_site_changes(run, timedelta(minutes=lookback_minutes), poll=poll)
    return {"written_back": report.written_back, "erp_won": report.erp_won,
            "checked": report.checked}


# Prefect tasks and flow ---------------------------------------------------------------------
@task(name="list-changed-items", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
async def list_changed_items(run: CatalogRun) -> Bulk[list[Any]]:
    """What changed: whole records (SuiteQL) or ids to read (record collection)."""
    async with system_slot(limit_name("erp", run.erp.account)):
        if run.erp.settings.catalog_read == "suiteql":
            return Bulk(await read_changed_items(run.erp, run.since))
        return Bulk(await list_changed_ids(run.erp, run.since))


@task(name="sync-catalog-chunk", retries=2, retry_delay_seconds=[2, 10],
      cache_policy=NO_CACHE)
async def sync_catalog_chunk(run: CatalogRun, ids: list[Any], index: int) -> dict[str, Any]:
    step = _step(ids)
    # read, then write: the write lock up front (the other chunks write meanwhile)
    with session_scope(run.engine, immediate=True) as session:
        done = ledger_done_steps(session, FLOW, run.run_key)
        if step in done:  # a retry of this run: this chunk already finished
            return {**done[step], "resumed": True}
        ledger_start(session, FLOW, run.run_key, step)
    counts = await sync_chunk(run, ids, force=run.force)
    after_chunk_hook(index, counts)
    with session_scope(run.engine) as session:
        ledger_finish(session, FLOW, run.run_key, step, status=LedgerStatus.DONE,
                      counts=counts.as_dict())
    return counts.as_dict()


def after_chunk_hook(index: int, counts: CatalogCounts) -> None:
    """Called after each chunk is pushed; tests replace it to crash a run midway."""


@flow(name="sync-catalog", log_prints=False)
async def sync_catalog(
    sites: list[str] | None = None,
    chunk_size: int = 500,
    chunk_concurrency: int = 2,
    lookback_minutes: float = 10.0,
    full: bool = False,
    poll_sites: bool = False,
) -> dict[str, Any]:
    """Push changed voucher SKUs from the ERP to the wallet sites, after taking the sites' own
    status changes back to the ERP (from their webhooks; ``poll_sites`` also reads every
    product the sites changed, as a periodic reconciliation).

    ``sites`` limits the push to some sites; ``full`` re-reads every item (fingerprints still
    skip what the sites already have).
    """
    logger = run_logger()
    key = run_key()
    engine = state_engine()
    subset = subset_sites(sites)
    with session_scope(engine) as session:
        started = ledger_done_steps(session, FLOW, key).get("frozen")
        watermark = get_watermark(session, FLOW, SOURCE, RECORD_TYPE)
        if subset:  # a run for some sites must not move the others' watermark
            watermark = sites_watermark(session, watermark, subset)
        if started is None:
            high = now_utc()  # frozen for this run, and for its retries
            ledger_finish(session, FLOW, key, "frozen", status=LedgerStatus.DONE,
                          counts={"high": high.isoformat()})
        else:
            high = datetime.fromisoformat(started["high"])
        ledger_start(session, FLOW, key, "run")
    since = None if full or watermark is None else watermark - timedelta(minutes=lookback_minutes)
    run = await CatalogRun.open(site_codes=sites, since=since, key=key, force=full)
    totals = CatalogCounts()
    with held_heap():  # see flows.heap: the records read stay to the end of the run
        try:
            back = await flow_back(quote(run), lookback_minutes, poll_sites)
            if since is None:  # every item is read: what the sites hold, read once
                with session_scope(engine) as session:
                    run.remember_confirmed(session)
            ids: list[Any] = list((await list_changed_items(quote(run))).value)
            hold()
            if run.extra_ids:
                present = {str(i["id"]) if isinstance(i, dict) else str(i) for i in ids}
                extra = [i for i in dict.fromkeys(run.extra_ids) if i not in present]
                if extra:  # read these by id; they may be older than the watermark
                    run.since_override.update(extra)
                    chunks_extra = [extra[i:i + chunk_size] for i in range(0, len(extra),
                                                                          chunk_size)]
                else:
                    chunks_extra = []
            else:
                chunks_extra = []
            chunks = ([ids[i:i + chunk_size] for i in range(0, len(ids), chunk_size)]
                      + chunks_extra)
            logger.info("sync-catalog: %d item(s) changed since %s in %d chunk(s)", len(ids),
                        since.isoformat() if since else "the beginning", len(chunks))
            gate = asyncio.Semaphore(max(chunk_concurrency, 1))
            progress = await Progress("sync-catalog-progress", "Catalogue sync: chunks done",
                                      len(chunks)).start()

            async def one(index: int, chunk: list[Any]) -> dict[str, Any]:
                async with gate:
                    result = await sync_catalog_chunk(quote(run), quote(chunk), index)
                await progress.advance()
                return result

            results = await asyncio.gather(*(one(i, c) for i, c in enumerate(chunks)))
            for result in results:
                totals.add(CatalogCounts.from_dict(result))
        except BaseException as exc:
            with session_scope(engine) as session:
                ledger_finish(session, FLOW, key, "run", status=LedgerStatus.FAILED,
                              counts=totals.as_dict(), detail=str(exc)[:4000])
            raise
        finally:
            await run.aclose()

    with session_scope(engine) as session:
        for scope in [site_scope(site) for site in subset] or [RECORD_TYPE]:
            set_watermark(session, FLOW, SOURCE, high, scope)
        ledger_finish(session, FLOW, key, "run", status=LedgerStatus.DONE,
                      counts=totals.as_dict())
    summary = totals.as_dict()
    summary["watermark"] = high.isoformat()
    summary["flowed_back"] = back["written_back"]
    summary["site_changes_overruled"] = back["erp_won"]
    await publish_artifacts(summary)
    logger.info("sync-catalog: %s", {k: v for k, v in summary.items() if k != "outcomes"})
    return summary


async def publish_artifacts(summary: dict[str, Any]) -> None:
    rows = [
        {"measure": "read from ERP", "count": summary["read"]},
        {"measure": "not modified since watermark", "count": summary["not_modified"]},
        {"measure": "mapped", "count": summary["mapped"]},
        {"measure": "dead-lettered", "count": summary["dead_lettered"]},
        {"measure": "changed (to push)", "count": summary["changed"]},
        {"measure": "skipped (unchanged on site)", "count": summary["skipped"]},
        {"measure": "pushed", "count": summary["pushed"]},
        {"measure": "refused by site", "count": summary["rejected"]},
    ]
    rows.extend({"measure": f"site outcome: {k}", "count": v}
                for k, v in sorted(summary["outcomes"].items()))
    await table_artifact("sync-catalog-counts", rows, "Catalogue sync: counts of this run")
    await markdown_artifact(
        "sync-catalog-summary",
        "\n".join([
            "# Catalogue sync",
            f"- read **{summary['read']}** item(s) from the ERP, "
            f"**{summary['dead_lettered']}** dead-lettered",
            f"- pushed **{summary['pushed']}** product upsert(s), "
            f"skipped **{summary['skipped']}** unchanged",
            f"- watermark now {summary['watermark']}",
        ]),
        "Catalogue sync summary",
    )


# dead-letter replay -------------------------------------------------------------------------
@replay_handler(FLOW, "erp", RECORD_TYPE)
async def replay_items(engine: Engine, letters: Sequence[DeadLetter]) -> set[int]:
    """Read the items again from the ERP (an operator may have fixed them there) and run them
    through mapping and push; an item that maps now resolves its dead letter."""
    run = await CatalogRun.open(site_codes=None, since=None, key=run_key())
    try:
        ids = [d.entity_key for d in letters]
        await sync_chunk(run, ids, force=True)
    finally:
        await run.aclose()
    with session_scope(engine) as session:
        return set(session.scalars(
            select(DeadLetter.id).where(
                DeadLetter.id.in_([d.id for d in letters]),
                DeadLetter.status == DeadLetterStatus.RESOLVED,
            )
        ))


@replay_handler(FLOW, "wallet", ENTITY)
async def replay_products(engine: Engine, letters: Sequence[DeadLetter]) -> set[int]:
    """Send refused product upserts again (after the site or the data was fixed): the listing
    as the catalogue has it now, or the stored one if the SKU is no longer known."""
    by_site: dict[str, list[tuple[int, OutboxItem]]] = {}
    with session_scope(engine) as session:
        catalog = load_skus(session, [d.entity_key for d in letters])
    for d in letters:
        site = d.source.removeprefix("wallet:")
        sku = catalog.get(d.entity_key)
        stored = (d.payload or {}).get("payload")
        if sku is not None:
            product = sku_to_wallet_product(sku, listed=site in sku.sales_areas)
        elif isinstance(stored, dict):
            product = stored
        else:
            continue
        digest = fingerprint(product)
        by_site.setdefault(site, []).append((d.id or 0, OutboxItem(
            target=site_target(site), operation=OPERATION,
            idempotency_key=product_key(site, d.entity_key, digest), entity_type=ENTITY,
            entity_key=d.entity_key, payload=product)))
    run = await CatalogRun.open(site_codes=sorted(by_site), since=None, key=run_key())
    succeeded: set[int] = set()
    try:
        for site, items in by_site.items():
            await push_site_products(run, site, [item for _, item in items])
            with session_scope(engine) as session:
                done = load_fingerprints(session, site_target(site), ENTITY,
                                         [i.entity_key for _, i in items])
            succeeded.update(letter_id for letter_id, item in items
                             if done.get(item.entity_key) == fingerprint(item.payload))
    finally:
        await run.aclose()
    return succeeded
