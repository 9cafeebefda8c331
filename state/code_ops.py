"""Operations on codes in the pool: downgrade, re-promote, replace, return to the supplier.

Each works on a list of code ids (one, or a chunk of thousands: callers chunk larger
selections, one transaction per chunk), changes each code with a conditional update (a code
another operation took meanwhile is skipped and reported, never changed twice), and appends
to every code's chronology (``code_event``) who did what, when, from which system:

- **downgrade**: codes in stock move to a lower-value SKU (same currency), into a batch of
  their own beside the one they came from (``{batch}-dg-{sku}``), at the same unit cost and
  expiry: the original batch's quantities drop by what moved and the new batch's rise;
- **re-promote**: codes in stock go back on sale under another SKU or a campaign
  (``{batch}-rp-{sku or campaign}``, optionally restricted to some sites), the same way;
- **replace**: a faulty sold (or allocated) code becomes ``replaced`` and a fresh code of
  the same SKU, taken in allocation order from a batch that may sell on the line's site,
  takes its place on the customer's order line (same line, same unit); its delivery is
  queued in the outbox in the same transaction;
- **return**: codes in stock, blocked (refunded after delivery) or replaced go back to the
  supplier, if the contract allows returns: ``returned``, and per batch a vendor credit
  against the bill that paid for them (made in the ERP by vendorBill -> vendorCredit). Units
  returned from stock leave ``available`` at once and the book when the credit is in the ERP.

Moves between batches are ``transfer`` events that the cost ledger (``state.costing``) reads
as units out of one batch and into the other at the same cost.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from canonical import CodeStatus, now_utc
from canonical.batch import BatchStatus
from state import pool
from state import procurement as proc
from state.api_purchasing import stable_key
from state.catalog import load_skus
from state.costing import transfer_detail
from state.events import announce, vendor_bill_credited
from state.models import PoolBatch, PoolCode
from state.purchasing_models import VendorCredit
from state.store import OutboxItem, enqueue

CHUNK = 2000
"""Codes per transaction in the flows."""


class CodeOpError(ValueError):
    """An operation the rules refuse as a whole (unknown SKU, returns not allowed...)."""


@dataclass
class OpReport:
    operation: str
    done: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    """(code id, why): codes not in a state the operation applies to."""
    batches: dict[str, int] = field(default_factory=dict)
    """Target batch (or credit) -> codes."""
    credits: list[str] = field(default_factory=list)

    def add(self, other: OpReport) -> None:
        self.done.extend(other.done)
        self.skipped.extend(other.skipped)
        for k, v in other.batches.items():
            self.batches[k] = self.batches.get(k, 0) + v
        self.credits.extend(other.credits)


def _codes(session: Session, code_ids: Sequence[int]) -> dict[int, PoolCode]:
    found: dict[int, PoolCode] = {}
    ids = sorted(set(code_ids))
    for start in range(0, len(ids), pool.IN_CHUNK):
        for code in session.scalars(select(PoolCode).where(
                PoolCode.id.in_(ids[start:start + pool.IN_CHUNK]))  # type: ignore[union-attr]
                .execution_options(populate_existing=True)):
            found[code.id] = code  # type: ignore[index]
    return found


def _event(session: Session, rows: list[tuple[int, str | None, str | None, str | None]],
           *, actor: str, system: str, action: str) -> None:
    pool._events(session, rows, at=now_utc(), actor=actor, system=system, action=action)


def _derived_batch(session: Session, src: PoolBatch, sku: str, tag: str,
                   sites: Sequence[str] | None) -> PoolBatch:
    batch_no = stable_key(src.batch_no, tag)
    existing = session.get(PoolBatch, batch_no)
    if existing is None:
        pool.upsert_batch(
            session, batch_no=batch_no, sku=sku, issuance_mode=src.issuance_mode,
            unit_cost=src.unit_cost, currency=src.currency, expiry_type=src.expiry_type,
            expires_on=src.expires_on, expiry_days=src.expiry_days,
            purchase_order=src.purchase_order,
            sites=list(sites) if sites is not None else [s for s in src.sites.split(",") if s],
            received_at=src.received_at)
        existing = session.get(PoolBatch, batch_no)
    assert existing is not None
    if existing.sku != sku:
        raise CodeOpError(f"batch {batch_no} sells {existing.sku}, not {sku}")
    return existing


def _move(session: Session, code_ids: Sequence[int], *, operation: str, to_sku: str | None,
          tag: str, why: str, actor: str, system: str, sites: Sequence[str] | None = None,
          check: Any = None) -> OpReport:
    report = OpReport(operation)
    codes = _codes(session, code_ids)
    report.skipped.extend((cid, "unknown code") for cid in sorted(set(code_ids) - set(codes)))
    by_batch: dict[str, list[PoolCode]] = defaultdict(list)
    for code in codes.values():
        if code.status != CodeStatus.IN_STOCK:
            report.skipped.append((code.id, f"{code.status}, not in stock"))  # type: ignore[arg-type]
            continue
        problem = check(code) if check else None
        if problem:
            report.skipped.append((code.id, problem))  # type: ignore[arg-type]
            continue
        by_batch[code.batch_no].append(code)
    pc, bt = PoolCode.__table__, PoolBatch.__table__
    now = now_utc()
    for batch_no in sorted(by_batch):
        src = session.get(PoolBatch, batch_no)
        assert src is not None
        dst = _derived_batch(session, src, to_sku or src.sku, tag, sites)
        ids = [c.id for c in by_batch[batch_no]]
        moved: list[int] = []
        for start in range(0, len(ids), pool.IN_CHUNK):
            part = ids[start:start + pool.IN_CHUNK]
            moved.extend(r[0] for r in session.execute(
                update(pc).where(pc.c.id.in_(part), pc.c.status == CodeStatus.IN_STOCK.value,
                                 pc.c.batch_no == batch_no)
                .values(batch_no=dst.batch_no, sku=dst.sku, batch_seq=dst.seq,
                        updated_at=now).returning(pc.c.id)))
        if not moved:
            continue
        n = len(moved)
        offered = min(n, src.available)
        session.execute(update(bt).where(bt.c.batch_no == batch_no).values(
            quantity=bt.c.quantity - n, remaining=bt.c.remaining - n,
            available=bt.c.available - offered, updated_at=now))
        session.execute(update(bt).where(bt.c.batch_no == dst.batch_no).values(
            quantity=bt.c.quantity + n, remaining=bt.c.remaining + n,
            available=bt.c.available + offered, updated_at=now,
            status=func.coalesce(func.nullif(bt.c.status, BatchStatus.SOLD_OUT.value),
                                 BatchStatus.ACTIVE.value)))
        _event(session, [(cid, CodeStatus.IN_STOCK.value, CodeStatus.IN_STOCK.value,
                          transfer_detail(batch_no, dst.batch_no, why)) for cid in moved],
               actor=actor, system=system, action="transfer")
        report.done.extend(moved)
        report.batches[dst.batch_no] = report.batches.get(dst.batch_no, 0) + n
        gone = set(ids) - set(moved)
        report.skipped.extend((cid, "changed meanwhile") for cid in sorted(gone))
    session.flush()
    return report


def downgrade(session: Session, code_ids: Sequence[int], *, to_sku: str,
              actor: str, system: str = "vouchflow", reason: str = "") -> OpReport:
    """Move codes in stock to a lower-value SKU of the same currency."""
    catalog = load_skus(session)
    target = catalog.get(to_sku)
    if target is None:
        raise CodeOpError(f"SKU {to_sku} is not in the catalogue")

    def check(code: PoolCode) -> str | None:
        current = catalog.get(code.sku)
        if current is None:
            return f"its SKU {code.sku} is not in the catalogue"
        if current.face_value.currency != target.face_value.currency:
            return (f"{code.sku} is in {current.face_value.currency}, {to_sku} in "
                    f"{target.face_value.currency}")
        if target.face_value.amount >= current.face_value.amount:
            return (f"{to_sku} ({target.face_value.amount}) is not worth less than "
                    f"{code.sku} ({current.face_value.amount})")
        return None

    return _move(session, code_ids, operation="downgrade", to_sku=to_sku,
                 tag=f"dg-{to_sku}", why=f"downgrade to {to_sku}. {reason}".strip(),
                 actor=actor, system=system, check=check)


def repromote(session: Session, code_ids: Sequence[int], *, to_sku: str | None = None,
              campaign: str | None = None, sites: Sequence[str] | None = None,
              actor: str, system: str = "vouchflow", reason: str = "") -> OpReport:
    """Put codes in stock back on sale under another SKU and/or a campaign (a batch of their
    own, optionally sold on some sites only)."""
    if not to_sku and not campaign:
        raise CodeOpError("re-promote needs another SKU or a campaign")
    if to_sku and to_sku not in load_skus(session, [to_sku]):
        raise CodeOpError(f"SKU {to_sku} is not in the catalogue")
    tag = "rp-" + "-".join(p for p in (to_sku, campaign) if p)
    return _move(session, code_ids, operation="repromote", to_sku=to_sku, tag=tag,
                 why=(f"re-promoted{' as ' + to_sku if to_sku else ''}"
                      f"{' in campaign ' + campaign if campaign else ''}. {reason}").strip(),
                 actor=actor, system=system, sites=sites)


def _parse_ref(ref: str) -> tuple[str, str, str]:
    parts = [p.replace("%3A", ":").replace("%25", "%") for p in ref.split(":")]
    if len(parts) != 3:
        raise CodeOpError(f"line reference {ref!r} is not site:order:line")
    return parts[0], parts[1], parts[2]


def replace(session: Session, code_ids: Sequence[int], *, actor: str,
            system: str = "vouchflow", reason: str = "") -> OpReport:
    """Swap each faulty sold or allocated code for a fresh one of its SKU on the same order
    line and unit; the fresh code's delivery is queued."""
    report = OpReport("replace")
    codes = _codes(session, code_ids)
    report.skipped.extend((cid, "unknown code") for cid in sorted(set(code_ids) - set(codes)))
    pc, bt = PoolCode.__table__, PoolBatch.__table__
    today = pool._today()
    for cid in sorted(codes):
        old = codes[cid]
        if old.status not in (CodeStatus.SOLD, CodeStatus.ALLOCATED) or not old.line_ref:
            report.skipped.append((cid, f"{old.status}, not a sold code"))
            continue
        site, order_id, line_id = _parse_ref(old.line_ref)
        fresh = session.execute(
            select(pc.c.id, pc.c.batch_no).join(bt, bt.c.batch_no == pc.c.batch_no)
            .where(pc.c.sku == old.sku, pc.c.status == CodeStatus.IN_STOCK.value,
                   pc.c.expiry_rank >= pool.expiry_rank(today), bt.c.available > 0,
                   bt.c.status == BatchStatus.ACTIVE.value,
                   (bt.c.sites == "") | (func.instr("," + bt.c.sites + ",", f",{site},") > 0)
                   if session.get_bind().dialect.name == "sqlite" else
                   (bt.c.sites == "") | (func.strpos("," + bt.c.sites + ",", f",{site},") > 0))
            .order_by(pc.c.expiry_rank, pc.c.batch_seq, pc.c.id).limit(1)).first()
        if fresh is None:
            report.skipped.append((cid, f"no code of {old.sku} in stock for {site}"))
            continue
        now = now_utc()
        ref, unit, was = old.line_ref, old.unit, old.status
        gone = session.execute(update(pc).where(pc.c.id == cid, pc.c.status == was)
                               .values(status=CodeStatus.REPLACED.value, line_ref=None,
                                       unit=None, updated_at=now)).rowcount
        if not gone:
            report.skipped.append((cid, "changed meanwhile"))
            continue
        took = session.execute(update(pc).where(
            pc.c.id == fresh.id, pc.c.status == CodeStatus.IN_STOCK.value).values(
            status=CodeStatus.ALLOCATED.value, line_ref=ref, unit=unit, allocated_at=now,
            updated_at=now)).rowcount
        taken = session.execute(update(bt).where(
            bt.c.batch_no == fresh.batch_no, bt.c.available > 0).values(
            available=bt.c.available - 1, unposted=bt.c.unposted + 1, updated_at=now)).rowcount
        if not (took and taken):
            raise pool.PoolError(f"code {cid}: changed while being replaced; nothing done")
        detail = f"{ref} unit {unit}: {reason}".strip(": ")
        _event(session, [(cid, was, CodeStatus.REPLACED.value,
                          f"replaced by code {fresh.id} on {detail}")],
               actor=actor, system=system, action="replace")
        _event(session, [(fresh.id, CodeStatus.IN_STOCK.value, CodeStatus.ALLOCATED.value,
                          f"replaces code {cid} on {detail}")],
               actor=actor, system=system, action="replace")
        enqueue(session, [OutboxItem(
            target=f"wallet:{site}", operation=pool.DELIVERY_OPERATION,
            idempotency_key=f"{pool.delivery_key(site, order_id, line_id)[:200]}-rpl{cid}",
            entity_type=pool.LINE_ENTITY, entity_key=ref,  # type: ignore[arg-type]
            payload={"site": site, "order_id": order_id, "line_id": line_id, "sku": old.sku,
                     "code_ids": [fresh.id], "replaces": [cid]})])
        report.done.append(cid)
        report.batches[fresh.batch_no] = report.batches.get(fresh.batch_no, 0) + 1
    session.flush()
    return report


RETURNABLE = (CodeStatus.IN_STOCK.value, CodeStatus.BLOCKED.value, CodeStatus.REPLACED.value)


def return_to_supplier(session: Session, code_ids: Sequence[int], *, actor: str,
                       system: str = "vouchflow", reason: str = "") -> OpReport:
    """Codes back to their supplier: ``returned``, and a vendor credit per batch against the
    bill that paid for it. Refused per batch when the contract does not allow returns or no
    bill covers the batch yet."""
    report = OpReport("return")
    codes = _codes(session, code_ids)
    report.skipped.extend((cid, "unknown code") for cid in sorted(set(code_ids) - set(codes)))
    by_batch: dict[str, list[PoolCode]] = defaultdict(list)
    for code in codes.values():
        if code.status not in RETURNABLE:
            report.skipped.append((code.id, f"{code.status}: not returnable"))  # type: ignore[arg-type]
        else:
            by_batch[code.batch_no].append(code)
    pc, bt = PoolCode.__table__, PoolBatch.__table__
    for batch_no in sorted(by_batch):
        group = by_batch[batch_no]
        found = _bill_for(session, batch_no)
        if isinstance(found, str):
            report.skipped.extend((c.id, found) for c in group)  # type: ignore[misc]
            continue
        bill, vendor, batch = found
        now = now_utc()
        changed: list[tuple[int, str]] = []
        for code in group:
            if session.execute(update(pc).where(pc.c.id == code.id, pc.c.status == code.status)
                               .values(status=CodeStatus.RETURNED.value, updated_at=now)
                               ).rowcount:
                changed.append((code.id, code.status))  # type: ignore[arg-type]
        if not changed:
            continue
        from_stock = sum(1 for _, s in changed if s == CodeStatus.IN_STOCK.value)
        if from_stock:
            offered = min(from_stock, batch.available)
            session.execute(update(bt).where(bt.c.batch_no == batch_no).values(
                available=bt.c.available - offered, unposted=bt.c.unposted + from_stock,
                updated_at=now))
        quantity = len(changed)
        credit = proc._numbered(session, VendorCredit(
            vendor_id=vendor.id, bill_id=bill.id, batch_no=batch_no, sku=batch.sku,
            quantity=quantity, unit_cost=batch.unit_cost, amount=batch.unit_cost * quantity,
            currency=batch.currency, reason=reason[:500] or None,
            code_ids={"ids": [c for c, _ in changed], "from_stock": from_stock},
            created_at=now), "credit_no", "vcr", vendor.slug)
        _event(session, [(cid, s, CodeStatus.RETURNED.value,
                          f"returned to {vendor.slug}, credit {credit.credit_no}. {reason}".strip())
                         for cid, s in changed], actor=actor, system=system, action="return")
        announce(session, [vendor_bill_credited(
            bill_no=bill.bill_no, credit_no=credit.credit_no, vendor=vendor.slug,
            batch_no=batch_no, sku=batch.sku, quantity=quantity, unit_cost=batch.unit_cost,
            amount=credit.amount, currency=batch.currency, reason=credit.reason, at=now)])
        report.done.extend(c for c, _ in changed)
        report.batches[credit.credit_no] = quantity
        report.credits.append(credit.credit_no)
    session.flush()
    return report


def receipt_of(session: Session, batch_no: str) -> proc.Receipt | None:
    """The receipt a batch came from: its own, or for a batch made by a downgrade or a
    re-promotion (``{batch}-dg-...``, ``{batch}-rp-...``), the one of the batch it was cut from
    (the same purchase order; the longest receipt batch number it starts with)."""
    own = session.scalar(select(proc.Receipt).where(proc.Receipt.batch_no == batch_no))
    if own is not None:
        return own
    batch = session.get(PoolBatch, batch_no)
    if batch is None or not batch.purchase_order:
        return None
    candidates = [r for r in session.scalars(select(proc.Receipt).join(
        proc.PurchaseOrder, proc.PurchaseOrder.id == proc.Receipt.po_id)
        .where(proc.PurchaseOrder.po_no == batch.purchase_order))
        if batch_no.startswith(r.batch_no + "-")]
    return max(candidates, key=lambda r: len(r.batch_no)) if candidates else None


def _bill_for(session: Session, batch_no: str
              ) -> tuple[proc.VendorBill, proc.Vendor, PoolBatch] | str:
    batch = session.get(PoolBatch, batch_no)
    receipt = receipt_of(session, batch_no)
    if batch is None or receipt is None:
        return f"batch {batch_no} came from no receipt of ours"
    contract = session.scalar(select(proc.SupplierContract).join(
        proc.PurchaseOrder, proc.PurchaseOrder.contract_id == proc.SupplierContract.id)
        .where(proc.PurchaseOrder.id == receipt.po_id))
    vendor = session.get(proc.Vendor, receipt.vendor_id)
    assert vendor is not None
    if contract is None or not contract.allows_returns:
        return f"the contract of batch {batch_no} does not allow returns"
    bill = session.scalar(select(proc.VendorBill).join(
        proc.VendorBillLine, proc.VendorBillLine.bill_id == proc.VendorBill.id)
        .where(proc.VendorBillLine.po_line_id == receipt.po_line_id,
               proc.VendorBill.status != proc.BillStatus.CANCELLED.value)
        .order_by(proc.VendorBill.id))
    if bill is None:
        return f"no vendor bill covers batch {batch_no} yet: settle it first"
    return bill, vendor, batch


def credits_to_write(session: Session) -> list[tuple[VendorCredit, proc.VendorBill, int]]:
    """Credits not in the ERP yet, with their bill and the bill's line of the batch's PO line
    (its number on the bill, as the ERP made the bill from the order: the order's line)."""
    out = []
    for credit in session.scalars(select(VendorCredit).where(
            VendorCredit.erp_id.is_(None)).order_by(VendorCredit.id)):  # type: ignore[union-attr]
        bill = session.get(proc.VendorBill, credit.bill_id)
        receipt = receipt_of(session, credit.batch_no)
        assert bill is not None and receipt is not None
        line = session.get(proc.PurchaseOrderLine, receipt.po_line_id)
        assert line is not None
        out.append((credit, bill, line.line_no))
    return out


def record_credit(session: Session, credit_id: int, erp_id: str) -> None:
    """The credit is in the ERP: recorded, and units returned from stock leave the book."""
    credit = session.get(VendorCredit, credit_id)
    assert credit is not None
    if credit.erp_id:
        return
    credit.erp_id = erp_id
    from_stock = int((credit.code_ids or {}).get("from_stock", 0))
    if from_stock:
        pool.mark_posted(session, credit.batch_no, from_stock)
    session.flush()


def select_codes(session: Session, *, batch_no: str | None = None, sku: str | None = None,
                 status: str | None = None, limit: int | None = None) -> list[int]:
    """Code ids of a selection (operators name a batch, a SKU, a status)."""
    query = select(PoolCode.id).order_by(PoolCode.id)
    if batch_no:
        query = query.where(PoolCode.batch_no == batch_no)
    if sku:
        query = query.where(PoolCode.sku == sku)
    if status:
        query = query.where(PoolCode.status == status)
    if limit:
        query = query.limit(limit)
    return [int(i) for i in session.scalars(query)]


def amount_of(report: OpReport, session: Session) -> Decimal:
    total = Decimal(0)
    for credit_no in report.credits:
        credit = session.scalar(select(VendorCredit).where(VendorCredit.credit_no == credit_no))
        if credit is not None:
            total += credit.amount
    return total


def ids_for_codes(session: Session, keyring: Any, codes: Sequence[str]) -> tuple[list[int], int]:
    """Code ids of codes given in clear (an operator's file), by their keyed hashes; and how
    many of them the pool does not hold. The codes themselves go no further than here."""
    hashes = keyring.hash_codes(codes)
    found: list[int] = []
    for start in range(0, len(hashes), pool.IN_CHUNK):
        found.extend(int(i) for i in session.scalars(select(PoolCode.id).where(
            PoolCode.code_hash.in_(hashes[start:start + pool.IN_CHUNK]))))  # type: ignore[attr-defined]
    return sorted(found), len(set(hashes)) - len(found)
