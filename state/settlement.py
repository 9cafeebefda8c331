"""Settlement: vendor bills by purchased, sales or write-off quantity; payment runs.

A bill is always made from one purchase order (the ERP makes it with the purchaseOrder ->
vendorBill transform), its lines naming the order's lines, and never bills more of a line than
the line received (``billed_quantity <= received_quantity``, changed conditionally):

- purchased quantity (code pool): what the order's lines received and were not billed;
- sales quantity (API): what the daily API orders of the period purchased in (their
  received quantity) and were not billed;
- write-off quantity (API): the codes the supplier reported redeemed (``write_off``) are
  compared with the codes it issued for our sales (``api_issued_code``). Matched codes are
  billed on the daily order that booked their sale; unknown codes, codes already written off
  and codes we never sold are reported: to the operator (the report, a dead letter) and to
  the vendor (a dispute, on its statement).

Approved bills are paid by payment runs: one ``vendor_payment`` per bill (its ``payment_no``
is the end-to-end id of the pain.001 transaction), confirmed later by the bank's answer.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from canonical import CodeStatus, now_utc
from canonical.money import minor_unit
from state import procurement as proc
from state.events import announce, vendor_bill_approved, vendor_bill_payment
from state.models import PoolCode
from state.purchasing_models import (
    ApiDayOrder,
    ApiIssuedCode,
    IssuedCodeStatus,
    PaymentRun,
    PaymentRunStatus,
)

PAYMENT_ROUNDING = ROUND_HALF_EVEN
"""A bill total with more decimals than its currency has is paid rounded half-even."""


class WriteOffResult:
    MATCHED = proc.WriteOffStatus.MATCHED.value
    UNKNOWN = proc.WriteOffStatus.UNKNOWN.value
    NOT_SOLD = proc.WriteOffStatus.NOT_SOLD.value
    WRITTEN_OFF = "written_off"
    """Written off before (a code the pool or an earlier settlement already wrote off)."""


@dataclass(frozen=True)
class BillView:
    bill_no: str
    po_no: str
    settlement_mode: str
    currency: str
    quantity: int
    total: Decimal


@dataclass
class SettlementReport:
    vendor: str
    period: str
    mode: str
    bills: list[BillView] = field(default_factory=list)
    write_offs: Counter[str] = field(default_factory=Counter)
    """Write-off rows settled this time, by result."""
    waiting: int = 0
    """Matched codes whose sale no daily order has booked yet (billed by a later run)."""
    already_written_off: int = 0
    """Rows of this period's write-off files refused as written off before."""
    reported: list[tuple[str, str]] = field(default_factory=list)
    """(masked code, result) of every write-off reported to the operator and the vendor."""
    dispute_no: str | None = None

    @property
    def quantity(self) -> int:
        return sum(b.quantity for b in self.bills)

    def totals(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = defaultdict(Decimal)
        for b in self.bills:
            out[b.currency] += b.total
        return dict(out)


def period_bounds(period: str) -> tuple[date, date]:
    """``YYYY-MM`` -> [first day, first day of the next month)."""
    try:
        first = date(int(period[:4]), int(period[5:7]), 1)
    except (ValueError, IndexError):
        raise proc.ProcurementError(f"period {period!r} is not YYYY-MM") from None
    if len(period) != 7 or period[4] != "-":
        raise proc.ProcurementError(f"period {period!r} is not YYYY-MM")
    nxt = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first, nxt


def _vendor_contract_mode(session: Session, vendor: proc.Vendor) -> str:
    contract = session.scalar(select(proc.SupplierContract).where(
        proc.SupplierContract.vendor_id == vendor.id,
        proc.SupplierContract.signature_status == proc.SignatureStatus.SIGNED)
        .order_by(proc.SupplierContract.id.desc()))  # type: ignore[union-attr]
    if contract is None:
        raise proc.Blocked(f"vendor {vendor.name} has no signed contract to settle under")
    return contract.settlement_mode


def _view(session: Session, bill: proc.VendorBill, po_no: str) -> BillView:
    quantity = session.scalar(select(func.sum(proc.VendorBillLine.quantity)).where(
        proc.VendorBillLine.bill_id == bill.id)) or 0
    return BillView(bill.bill_no, po_no, bill.settlement_mode, bill.currency, int(quantity),
                    bill.total)


def settle_vendor(session: Session, vendor_ref: str, period: str, *,
                  bill_date: date | None = None) -> SettlementReport:
    """Make the period's vendor bills of one vendor by its contract's settlement mode."""
    vendor = proc.get_vendor(session, vendor_ref)
    mode = _vendor_contract_mode(session, vendor)
    first, nxt = period_bounds(period)
    bill_date = bill_date or min(nxt - timedelta(days=1), datetime.now(UTC).date())
    report = SettlementReport(vendor=vendor.slug, period=period, mode=mode)
    if mode == proc.SettlementMode.PURCHASED_QUANTITY:
        _settle_received(session, vendor, report, first, nxt, bill_date)
    elif mode == proc.SettlementMode.SALES_QUANTITY:
        _settle_sales(session, vendor, report, first, nxt, bill_date)
    else:
        _settle_write_offs(session, vendor, report, first, nxt, bill_date)
    session.flush()
    return report


def _settle_received(session: Session, vendor: proc.Vendor, report: SettlementReport,
                     first: date, nxt: date, bill_date: date) -> None:
    """Code pool: every order's received units not billed yet (whenever received: a receipt
    is billed by the first settlement after it)."""
    po_ids = sorted(set(session.scalars(select(proc.Receipt.po_id).where(
        proc.Receipt.vendor_id == vendor.id))))
    orders = [session.get(proc.PurchaseOrder, po_id) for po_id in po_ids]
    _bill_open(session, [o for o in orders if o is not None], report, bill_date)


def _bill_open(session: Session, orders: Sequence[proc.PurchaseOrder],
               report: SettlementReport, bill_date: date) -> None:
    """A bill per order of what its lines received and were not billed."""
    for order in orders:
        lines = proc.unbilled_lines(session, order)
        if lines:
            bill = proc.bill_lines(session, order, lines, mode=report.mode,
                                   period=report.period, bill_date=bill_date)
            report.bills.append(_view(session, bill, order.po_no))


def _settle_sales(session: Session, vendor: proc.Vendor, report: SettlementReport,
                  first: date, nxt: date, bill_date: date) -> None:
    """API by sales quantity: the daily (and correction) orders of the period."""
    po = proc.PurchaseOrder
    orders = list(session.scalars(select(po).where(
        po.vendor_id == vendor.id,
        po.kind.in_([proc.OrderKind.DAILY_API.value, proc.OrderKind.CORRECTION.value]),  # type: ignore[attr-defined]
        po.business_date >= first, po.business_date < nxt).order_by(po.id)))
    _bill_open(session, orders, report, bill_date)


def _settle_write_offs(session: Session, vendor: proc.Vendor, report: SettlementReport,
                       first: date, nxt: date, bill_date: date) -> None:
    """API by write-off quantity: the vendor's pending write-offs against the codes it issued
    for our sales; matched codes billed per daily order line."""
    wo = proc.WriteOff
    pending = list(session.scalars(select(wo).where(
        wo.vendor_id == vendor.id, wo.status == proc.WriteOffStatus.PENDING.value)
        .order_by(wo.id)))
    hashes = [w.code_hash for w in pending]
    issued = {c.code_hash: c for part in _parts(hashes) for c in session.scalars(
        select(ApiIssuedCode).where(ApiIssuedCode.code_hash.in_(part)))}  # type: ignore[attr-defined]
    pooled = {h: s for part in _parts(hashes) for h, s in session.execute(
        select(PoolCode.code_hash, PoolCode.status).where(PoolCode.code_hash.in_(part)))}  # type: ignore[attr-defined]
    capacity = _DayCapacity(session, vendor.id)
    to_bill: dict[int, Counter[int]] = defaultdict(Counter)  # po_id -> po line id -> units
    billed_codes: dict[int, list[tuple[proc.WriteOff, ApiIssuedCode, int]]] = defaultdict(list)
    for w in pending:
        code = issued.get(w.code_hash)
        result: str
        if code is not None and code.vendor_id == vendor.id:
            if code.status == IssuedCodeStatus.SOLD:
                place = capacity.take(code)
                if place is None:
                    report.waiting += 1
                    continue
                po_id, line_id = place
                to_bill[po_id][line_id] += 1
                billed_codes[po_id].append((w, code, line_id))
                continue
            result = (WriteOffResult.WRITTEN_OFF if code.status == IssuedCodeStatus.WRITTEN_OFF
                      else WriteOffResult.NOT_SOLD)
        elif w.code_hash in pooled:
            status = pooled[w.code_hash]
            result = (WriteOffResult.WRITTEN_OFF if status in (
                CodeStatus.REDEEMED, CodeStatus.EXPIRED, CodeStatus.RETURNED)
                else WriteOffResult.NOT_SOLD if status in (
                    CodeStatus.IN_STOCK, CodeStatus.ALLOCATED, CodeStatus.BLOCKED)
                else WriteOffResult.UNKNOWN)
        else:
            result = WriteOffResult.UNKNOWN
        w.status = result
        report.write_offs[result] += 1
        report.reported.append(("*" * 4 + w.last4, result))
    for po_id in sorted(to_bill):
        order = session.get(proc.PurchaseOrder, po_id)
        assert order is not None
        lines = {ln.id: ln for ln in proc.order_lines(session, po_id)}
        bill = proc.bill_lines(session, order, [(lines[i], n) for i, n in sorted(to_bill[po_id].items())],
                               mode=report.mode, period=report.period, bill_date=bill_date,
                               memo=f"{order.po_no}: codes reported redeemed")
        for w, code, _ in billed_codes[po_id]:
            w.status = WriteOffResult.MATCHED
            w.bill_id = bill.id
            code.status = IssuedCodeStatus.WRITTEN_OFF.value
            code.write_off_id = w.id
            code.po_id = po_id
            report.write_offs[WriteOffResult.MATCHED] += 1
        report.bills.append(_view(session, bill, order.po_no))
    report.already_written_off = _refused_as_written_off(session, vendor.id)
    if report.reported or report.already_written_off:
        counts = Counter(r for _, r in report.reported)
        parts = [f"{n} {what.replace('_', ' ')}" for what, n in sorted(counts.items())]
        if report.already_written_off:
            parts.append(f"{report.already_written_off} refused in the upload as written off "
                         "before")
        sample = ", ".join(f"{c} ({r})" for c, r in report.reported[:20])
        dispute = proc.open_dispute(
            session, vendor.id, subject_type="write_off",
            subject_ref=f"settlement-{report.period}",
            reason=(f"Write-offs of {report.period} not billed: {'; '.join(parts)}"
                    + (f". Codes: {sample}" if sample else "")),
            raised_by="vouchflow settlement")
        report.dispute_no = dispute.dispute_no
    session.flush()


def _parts(items: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _refused_as_written_off(session: Session, vendor_id: int) -> int:
    """Rows of the vendor's write-off files refused as written off before, since the last
    settlement that reported to it (so each is reported once)."""
    last = session.scalar(select(func.max(proc.VendorDispute.created_at)).where(
        proc.VendorDispute.vendor_id == vendor_id,
        proc.VendorDispute.subject_ref.like("settlement-%")))  # type: ignore[attr-defined]
    query = (select(func.count()).select_from(proc.UploadRow)
             .join(proc.VendorUpload, proc.VendorUpload.id == proc.UploadRow.upload_id)
             .where(proc.VendorUpload.vendor_id == vendor_id,
                    proc.VendorUpload.kind == proc.UploadKind.WRITE_OFF.value,
                    proc.UploadRow.rule == "already_written_off"))
    if last is not None:
        query = query.where(proc.VendorUpload.created_at > last)
    return int(session.scalar(query) or 0)


class _DayCapacity:
    """Which daily order line booked an issued code's sale, and how much of it is left to bill
    (its received quantity less what was billed, less what this run assigned)."""

    def __init__(self, session: Session, vendor_id: int) -> None:
        self.session = session
        self.vendor_id = vendor_id
        self.used: Counter[int] = Counter()
        self._days: dict[tuple[str, str, datetime], list[tuple[int, proc.PurchaseOrderLine, str]]] = {}

    def take(self, code: ApiIssuedCode) -> tuple[int, int] | None:
        d = ApiDayOrder
        orders = list(self.session.scalars(select(d).where(
            d.site == code.site, d.sku == code.sku, d.vendor_id == self.vendor_id,
            d.window_start <= code.sold_at, d.window_end > code.sold_at)
            .order_by(d.correction)))
        for day in orders:
            for line in proc.order_lines(self.session, day.po_id):
                if (line.description or "") != f"batch {code.batch_no}":
                    continue
                left = line.received_quantity - line.billed_quantity - self.used[line.id]  # type: ignore[index]
                if left > 0:
                    self.used[line.id] += 1  # type: ignore[index]
                    return day.po_id, line.id  # type: ignore[return-value]
        return None


def approve_bills(session: Session, bill_nos: Sequence[str] | None, *, by: str) -> list[str]:
    """Approve draft bills (all drafts when ``bill_nos`` is None)."""
    vb = proc.VendorBill
    query = select(vb).where(vb.status == proc.BillStatus.DRAFT.value)
    if bill_nos is not None:
        query = query.where(vb.bill_no.in_(list(bill_nos)))  # type: ignore[attr-defined]
    done = []
    for bill in session.scalars(query.order_by(vb.id)):
        bill.status = proc.BillStatus.APPROVED
        bill.approved_by = by
        bill.approved_at = now_utc()
        bill.updated_at = bill.approved_at
        done.append(bill.bill_no)
        announce(session, [vendor_bill_approved(
            bill_no=bill.bill_no, total=bill.total, currency=bill.currency, approved_by=by,
            at=bill.approved_at)])
    session.flush()
    return done


# payment runs ---------------------------------------------------------------------------------
def payment_amount(total: Decimal, currency: str) -> Decimal:
    exp = Decimal(1).scaleb(-minor_unit(currency))
    return total.quantize(exp, rounding=PAYMENT_ROUNDING)


@dataclass(frozen=True)
class PaymentLine:
    payment_no: str
    bill_no: str
    vendor_invoice_ref: str | None
    amount: Decimal
    currency: str
    vendor_name: str
    vendor_country: str | None
    bank_account: str | None
    bank_bic: str | None


@dataclass(frozen=True)
class RunView:
    run_no: str
    execution_date: date
    created_at: datetime
    status: str
    file_name: str
    payments: tuple[PaymentLine, ...]


def create_payment_run(session: Session, *, execution_date: date, created_by: str,
                       bill_nos: Sequence[str] | None = None, file_dir: str = "") -> RunView | None:
    """A payment run of approved bills that are in the ERP and not paid or in a run yet: one
    payment per bill. None when there is nothing to pay."""
    vb, vp = proc.VendorBill, proc.VendorPayment
    busy = select(vp.bill_id).where(vp.status.in_([  # type: ignore[attr-defined]
        proc.PaymentStatus.PENDING.value, proc.PaymentStatus.SENT.value,
        proc.PaymentStatus.CONFIRMED.value]))
    query = select(vb).where(vb.status == proc.BillStatus.APPROVED.value,
                             vb.erp_id.is_not(None), vb.id.not_in(busy))  # type: ignore[union-attr]
    if bill_nos is not None:
        query = query.where(vb.bill_no.in_(list(bill_nos)))  # type: ignore[attr-defined]
    bills = list(session.scalars(query.order_by(vb.id)))
    if not bills:
        return None
    now = now_utc()
    run = PaymentRun(run_no=proc._placeholder()[:35], execution_date=execution_date,
                     file_name="", sha256="", payments=len(bills), created_by=created_by,
                     created_at=now)
    session.add(run)
    session.flush()
    run.run_no = f"PRUN-{now:%Y%m%d}-{run.id:06d}"
    run.file_name = f"{file_dir.rstrip('/') + '/' if file_dir else ''}{run.run_no}.xml"
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for bill in bills:
        amount = payment_amount(bill.total, bill.currency)
        vendor = session.get(proc.Vendor, bill.vendor_id)
        assert vendor is not None
        payment = proc._numbered(session, proc.VendorPayment(
            vendor_id=bill.vendor_id, bill_id=bill.id, run_no=run.run_no, amount=amount,
            currency=bill.currency, status=proc.PaymentStatus.SENT,
            requested_on=execution_date, created_at=now, updated_at=now),
            "payment_no", "pay", vendor.slug)
        payment.end_to_end_id = payment.payment_no[:35]
        totals[bill.currency] += amount
    run.totals = {c: str(v) for c, v in sorted(totals.items())}
    session.flush()
    return run_view(session, run.run_no)


def run_view(session: Session, run_no: str) -> RunView:
    run = session.scalar(select(PaymentRun).where(PaymentRun.run_no == run_no))
    if run is None:
        raise proc.NotFound(f"no payment run {run_no}")
    vb, vp, v = proc.VendorBill, proc.VendorPayment, proc.Vendor
    rows = session.execute(select(vp, vb, v).join(vb, vb.id == vp.bill_id)
                           .join(v, v.id == vp.vendor_id).where(vp.run_no == run_no)
                           .order_by(vp.id)).all()
    return RunView(
        run_no=run.run_no, execution_date=run.execution_date, created_at=run.created_at,
        status=run.status, file_name=run.file_name,
        payments=tuple(PaymentLine(
            payment_no=p.payment_no, bill_no=b.bill_no, vendor_invoice_ref=b.vendor_invoice_ref,
            amount=payment_amount(p.amount, p.currency), currency=p.currency,
            vendor_name=ven.name,
            vendor_country=ven.country, bank_account=ven.bank_account, bank_bic=ven.bank_bic)
            for p, b, ven in rows))


def unwritten_runs(session: Session) -> list[str]:
    return list(session.scalars(select(PaymentRun.run_no).where(PaymentRun.sha256 == "")))


def record_run_file(session: Session, run_no: str, sha256: str) -> None:
    session.execute(update(PaymentRun).where(PaymentRun.run_no == run_no)
                    .values(sha256=sha256))


def confirm_payments(session: Session, run_no: str, *, rejected: Sequence[str] = (),
                     accepted: Sequence[str] | None = None, at: datetime | None = None
                     ) -> list[str]:
    """The bank executed the run's payments (except the ``rejected`` end-to-end ids; given
    ``accepted``, only those, the others stay sent): they become confirmed; the bills are
    marked paid when their vendorPayment is in the ERP (``mark_bill_paid``). Returns the
    payments confirmed now."""
    at = at or now_utc()
    vp, vb = proc.VendorPayment, proc.VendorBill
    refused = set(rejected)
    taken = set(accepted) if accepted is not None else None
    done = []
    for p, bill_no in session.execute(
            select(vp, vb.bill_no).join(vb, vb.id == vp.bill_id)
            .where(vp.run_no == run_no, vp.status == proc.PaymentStatus.SENT.value)).all():
        if p.end_to_end_id in refused or p.payment_no in refused:
            p.status = proc.PaymentStatus.REJECTED
            _announce_payment(session, "vendor_bill.payment_rejected", p, at, bill_no)
        elif taken is not None and not {p.end_to_end_id, p.payment_no} & taken:
            continue  # still pending at the bank
        else:
            p.status = proc.PaymentStatus.CONFIRMED
            p.confirmed_at = at
            done.append(p.payment_no)
        p.updated_at = at
    left = session.scalar(select(func.count()).select_from(vp).where(
        vp.run_no == run_no, vp.status == proc.PaymentStatus.SENT.value))
    if not left:
        session.execute(update(PaymentRun).where(PaymentRun.run_no == run_no)
                        .values(status=PaymentRunStatus.CONFIRMED.value))
    session.flush()
    return done


@dataclass(frozen=True)
class ToRecord:
    payment_no: str
    payment_id: int
    bill_no: str
    bill_erp_id: str
    paid_on: date


def confirmed_unrecorded(session: Session) -> list[ToRecord]:
    """Confirmed payments whose vendorPayment is not in the ERP yet."""
    vp, vb = proc.VendorPayment, proc.VendorBill
    return [ToRecord(p.payment_no, p.id, b.bill_no, b.erp_id,  # type: ignore[arg-type]
                     (p.confirmed_at or now_utc()).date())
            for p, b in session.execute(select(vp, vb).join(vb, vb.id == vp.bill_id).where(
                vp.status == proc.PaymentStatus.CONFIRMED.value, vp.erp_id.is_(None),  # type: ignore[union-attr]
                vb.erp_id.is_not(None)).order_by(vp.id)).all()]  # type: ignore[union-attr]


def mark_bill_paid(session: Session, payment_id: int, erp_id: str) -> None:
    """The payment is in the ERP: recorded, and its bill paid (one transaction)."""
    payment = session.get(proc.VendorPayment, payment_id)
    assert payment is not None
    payment.erp_id = erp_id
    payment.updated_at = now_utc()
    session.execute(update(proc.VendorBill).where(proc.VendorBill.id == payment.bill_id)
                    .values(status=proc.BillStatus.PAID.value, updated_at=payment.updated_at))
    _announce_payment(session, "vendor_bill.paid", payment,
                      payment.confirmed_at or payment.updated_at)
    session.flush()


def _announce_payment(session: Session, type_: str, payment: proc.VendorPayment,
                      at: datetime, bill_no: str | None = None) -> None:
    if bill_no is None:
        bill_no = session.scalar(select(proc.VendorBill.bill_no).where(
            proc.VendorBill.id == payment.bill_id))
    assert bill_no is not None
    announce(session, [vendor_bill_payment(
        type_, bill_no=bill_no, payment_no=payment.payment_no, run_no=payment.run_no,
        amount=payment_amount(payment.amount, payment.currency), currency=payment.currency,
        at=at)])


def bills_to_write(session: Session) -> list[tuple[proc.VendorBill, proc.PurchaseOrder,
                                                    list[tuple[int, int, Decimal]]]]:
    """Bills not in the ERP yet, with their order and (order line number, quantity, rate)."""
    vb = proc.VendorBill
    out = []
    for bill in session.scalars(select(vb).where(vb.erp_id.is_(None), vb.po_id.is_not(None),  # type: ignore[union-attr]
                                                 vb.status != proc.BillStatus.CANCELLED.value)
                                .order_by(vb.id)):
        order = session.get(proc.PurchaseOrder, bill.po_id)
        assert order is not None
        line_nos = {ln.id: ln.line_no for ln in proc.order_lines(session, order.id)}  # type: ignore[arg-type]
        lines = [(line_nos[bl.po_line_id], bl.quantity, bl.unit_cost)  # type: ignore[index]
                 for bl in session.scalars(select(proc.VendorBillLine).where(
                     proc.VendorBillLine.bill_id == bill.id).order_by(proc.VendorBillLine.line_no))]
        out.append((bill, order, lines))
    return out


def summary_of(session: Session, vendor_id: int | None = None) -> list[dict[str, Any]]:
    """Bills per vendor and status: count, quantity and total per currency (operators)."""
    vb, vbl, v = proc.VendorBill, proc.VendorBillLine, proc.Vendor
    query = (select(v.slug, vb.status, vb.currency, vb.settlement_mode,
                    func.count(func.distinct(vb.id)), func.sum(vbl.quantity))
             .join(vb, vb.vendor_id == v.id).join(vbl, vbl.bill_id == vb.id)
             .group_by(v.slug, vb.status, vb.currency, vb.settlement_mode))
    if vendor_id is not None:
        query = query.where(v.id == vendor_id)
    return [{"vendor": s, "status": st, "currency": c, "mode": m, "bills": int(n),
             "quantity": int(q or 0)} for s, st, c, m, n, q in session.execute(query)]
