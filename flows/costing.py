"""costing-daily: the cost layers of a day posted to the group finance system, once per
document, and the totals it booked checked against the totals computed.

For each day (UTC) and currency, from the ledger (``state.costing``):

- ``PostPurchaseCost`` ``pcost-{yyyymmdd}-{ccy}``: units into stock per batch at its cost,
  returns to suppliers negative;
- ``PostCostOfSales`` ``cogs-{yyyymmdd}-{ccy}``: units sold per batch at their own batch's
  cost (FIFO across API batches), and expired stock written off (its own account);
- ``PostInventoryValuation`` ``invval-{yyyymmdd}-{ccy}``: each batch's units on hand at the
  end of the day, at its cost;
- ``PostProcurementInvoice`` ``pinv-{bill_no}``: each vendor bill dated that day.

A document id is stable, so posting it again books nothing (the service answers DUPLICATE
with the first reference); documents that sum to zero are not sent. After posting, the
service's own list of the period's postings is read back and every document's booked total
must equal the one computed here; a difference is a dead letter and fails the run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine, select

from canonical import now_utc
from connectors.errors import FatalError
from connectors.finance import FinanceClient
from connectors.finance.records import Posting, PostingKind, PostingLine
from flows.credentials import finance_settings
from flows.runtime import (
    limit_name,
    markdown_artifact,
    run_logger,
    state_engine,
    system_slot,
    table_artifact,
)
from state import costing
from state import procurement as proc
from state.db import session_scope
from state.purchasing_models import CostKind
from state.store import DeadLetterItem, record_dead_letters

FLOW = "costing_daily"
ACCOUNTS = {"inventory": "1400", "cost_of_sales": "5000", "write_off": "5100",
            "payables": "2100"}
"""The group chart of accounts vouchflow posts to."""


class PostedTotalsDiffer(RuntimeError):
    """The finance system booked other totals than the ones computed."""


@dataclass(frozen=True)
class Document:
    posting: Posting
    entry_date: date

    @property
    def total(self) -> Decimal:
        return self.posting.total()


def _lines(layers: list[costing.Layer], account: str, memo: str) -> list[PostingLine]:
    return [PostingLine(account=account, amount=layer.amount, sku=layer.sku,
                        batch_no=layer.batch_no, quantity=Decimal(layer.quantity),
                        memo=f"{memo} {layer.quantity} x {layer.unit_cost}")
            for layer in layers]


def documents_for(engine: Engine, day: date, company_code: str) -> list[Document]:
    """The documents of one day, computed from the ledger (and the day's vendor bills)."""
    period = day.strftime("%Y-%m")
    stamp = day.strftime("%Y%m%d")
    out: list[Document] = []
    with session_scope(engine) as s:
        purchases = costing.entries(s, day, [CostKind.PURCHASE, CostKind.RETURN])
        sales = costing.entries(s, day, [CostKind.SALE])
        write_offs = costing.entries(s, day, [CostKind.WRITE_OFF])
        stock = costing.on_hand(s, day)
        bills = list(s.scalars(select(proc.VendorBill).where(
            proc.VendorBill.bill_date == day,
            proc.VendorBill.status != proc.BillStatus.CANCELLED.value)
            .order_by(proc.VendorBill.id)))
        bill_lines = {b.id: list(s.scalars(select(proc.VendorBillLine).where(
            proc.VendorBillLine.bill_id == b.id).order_by(proc.VendorBillLine.line_no)))
            for b in bills}
        vendors = {v.id: v.external_id for v in s.scalars(select(proc.Vendor))}

    def per_currency(layers: list[costing.Layer]) -> dict[str, list[costing.Layer]]:
        grouped: dict[str, list[costing.Layer]] = defaultdict(list)
        for layer in layers:
            grouped[layer.currency].append(layer)
        return grouped

    def add(kind: PostingKind, doc_id: str, currency: str, lines: list[PostingLine],
            **extra: Any) -> None:
        if lines and sum((ln.amount for ln in lines), Decimal(0)) != 0:
            out.append(Document(Posting(kind=kind, document_id=doc_id, company_code=company_code,
                                        period=period, currency=currency, lines=tuple(lines),
                                        **extra), day))

    for ccy, layers in sorted(per_currency(purchases).items()):
        add(PostingKind.PURCHASE_COST, f"pcost-{stamp}-{ccy}", ccy,
            _lines(layers, ACCOUNTS["inventory"], "into stock"))
    cogs: dict[str, list[PostingLine]] = defaultdict(list)
    for ccy, layers in per_currency(sales).items():
        cogs[ccy].extend(_lines(layers, ACCOUNTS["cost_of_sales"], "sold"))
    for ccy, layers in per_currency(write_offs).items():
        cogs[ccy].extend(_lines(layers, ACCOUNTS["write_off"], "expired, written off"))
    for ccy, lines in sorted(cogs.items()):
        add(PostingKind.COST_OF_SALES, f"cogs-{stamp}-{ccy}", ccy, lines)
    for ccy, layers in sorted(per_currency(stock).items()):
        add(PostingKind.INVENTORY_VALUATION, f"invval-{stamp}-{ccy}", ccy,
            _lines(layers, ACCOUNTS["inventory"], "on hand"))
    for bill in bills:
        add(PostingKind.PROCUREMENT_INVOICE, f"pinv-{bill.bill_no}", bill.currency,
            [PostingLine(account=ACCOUNTS["payables"], amount=ln.amount, sku=ln.sku,
                         quantity=Decimal(ln.quantity), memo=ln.description)
             for ln in bill_lines[bill.id]],  # type: ignore[index]
            vendor_id=vendors[bill.vendor_id], invoice_no=bill.vendor_invoice_ref or bill.bill_no,
            invoice_date=bill.bill_date, tax_amount=Decimal(0))
    return out


@task(name="post-cost-documents", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
async def post_documents(engine: Engine, docs: list[Document]) -> dict[str, int]:
    counts = {"booked": 0, "duplicate": 0, "skipped": 0, "rejected": 0}
    with session_scope(engine) as s:
        done = costing.posted(s, [d.posting.document_id for d in docs])
    client = FinanceClient(await finance_settings())
    try:
        async with system_slot(limit_name("finance")):
            for doc in docs:
                p = doc.posting
                prior = done.get(p.document_id)
                if prior is not None and prior.status in ("BOOKED", "DUPLICATE") \
                        and prior.total == doc.total:
                    counts["skipped"] += 1
                    continue
                try:
                    result = await client.post(p)
                except FatalError as exc:
                    status, ref, message = "REJECTED", None, str(exc)
                else:
                    status, ref, message = result.status.value, result.posting_ref, \
                        result.message
                with session_scope(engine) as s:
                    costing.record_posting(
                        s, document_id=p.document_id, kind=p.kind.value,
                        entry_date=doc.entry_date, period=p.period, currency=p.currency,
                        total=doc.total, line_count=len(p.lines), status=status,
                        posting_ref=ref, message=message)
                    if status == "REJECTED":
                        record_dead_letters(s, [DeadLetterItem(
                            flow=FLOW, source="finance", entity_type=p.kind.value,
                            entity_key=p.document_id,
                            reason=f"{p.document_id} refused: {message}", payload=None)])
                counts[{"BOOKED": "booked", "DUPLICATE": "duplicate"}.get(status, "rejected")] += 1
    finally:
        await client.aclose()
    return counts


async def check_totals(docs: list[Document]) -> list[dict[str, str]]:
    """The finance service's booked totals against the computed ones, per document."""
    wanted = {d.posting.document_id: d for d in docs}
    booked: dict[str, Decimal] = {}
    client = FinanceClient(await finance_settings())
    try:
        for period in sorted({d.posting.period for d in docs}):
            async for page in client.list_postings(period):
                for item in page:
                    if item.document_id in wanted:
                        booked[item.document_id] = item.total_amount
    finally:
        await client.aclose()
    return [{"document": k, "computed": str(d.total), "booked": str(booked.get(k, "missing"))}
            for k, d in sorted(wanted.items()) if booked.get(k) != d.total]


@flow(name="costing-daily", log_prints=False)
async def costing_daily(day: date | None = None, through: date | None = None,
                        settle_seconds: float = costing.SETTLE.total_seconds()
                        ) -> dict[str, Any]:
    """Post the cost documents of ``day`` (default: yesterday, UTC) up to ``through``
    (default: the same day) and check the booked totals."""
    logger = run_logger()
    engine = state_engine()
    today = now_utc().date()
    first = day or today - timedelta(days=1)
    last = through or first
    if last >= today:
        raise ValueError(f"{last} is not over yet (UTC): only finished days are posted")
    with session_scope(engine) as s:
        read = costing.refresh(s, settle=timedelta(seconds=settle_seconds))
    settings = await finance_settings()
    docs: list[Document] = []
    d = first
    while d <= last:
        docs.extend(documents_for(engine, d, settings.company_code))
        d += timedelta(days=1)
    counts = await post_documents(engine, docs) if docs else {
        "booked": 0, "duplicate": 0, "skipped": 0, "rejected": 0}
    differ = await check_totals(docs) if docs else []
    per_kind: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for doc in docs:
        per_kind[doc.posting.kind.value][doc.posting.currency] += doc.total
    rows = [{"kind": k, "currency": c, "total": str(v)}
            for k, by in sorted(per_kind.items()) for c, v in sorted(by.items())]
    await table_artifact("costing-daily", rows, f"Cost documents {first} to {last}")
    await markdown_artifact("costing-daily-summary", (
        f"# Cost documents {first} to {last}\n- {len(docs)} document(s): "
        f"{counts['booked']} booked, {counts['duplicate']} already booked, "
        f"{counts['skipped']} skipped, {counts['rejected']} refused\n"
        f"- booked totals differing from the computed ones: {len(differ)}\n"), "Costing")
    summary = {"from": first.isoformat(), "through": last.isoformat(), "read": read,
               "documents": len(docs), **counts, "differ": differ,
               "totals": {k: {c: str(v) for c, v in by.items()} for k, by in per_kind.items()}}
    logger.info("costing-daily: %s", {k: v for k, v in summary.items() if k != "totals"})
    if differ:
        with session_scope(engine) as s:
            record_dead_letters(s, [DeadLetterItem(
                flow=FLOW, source="finance", entity_type="posting_total",
                entity_key=row["document"],
                reason=(f"{row['document']}: booked {row['booked']}, computed "
                        f"{row['computed']}"), payload=row) for row in differ])
        raise PostedTotalsDiffer(f"{len(differ)} document(s) booked with other totals than "
                                 f"computed: {differ[:5]}")
    return summary


__all__ = ["PostedTotalsDiffer", "costing_daily", "documents_for"]
