"""settle-vendors, payment-run, confirm-payments: vendor bills from a period's purchases, the
pain.001 file that pays approved bills, and the ERP's payments once the bank confirmed them.

- ``settle_vendors``: per vendor, the period's bills by its contract's settlement mode
  (``state.settlement``), each then made in the ERP from its purchase order by the
  purchaseOrder -> vendorBill transform under the bill's number (looked up first, the ERP's id
  recorded at once). Write-offs that could not be billed are reported: a table artifact and a
  dead letter for the operator, a dispute on the vendor's statement.
- ``payment_run``: approved bills in the ERP become one pain.001.001.09 file (generic,
  multi-currency: one payment information block per currency), validated against the
  official XSD before it is written under ``$VOUCHFLOW_HOME/payment-runs/``. Writing the file
  again (after a crash) gives the same bytes: it is built from the run's stored rows only.
- ``confirm_payments``: the bank executed the run; each confirmed payment becomes a
  vendorPayment made from its bill (vendorBill -> vendorPayment, looked up first) and the
  bill is paid, in the transaction that records the ERP's id.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from datetime import date
from pathlib import Path
from typing import Any

from prefect import flow
from sqlalchemy import select, update

from canonical import now_utc
from connectors.erp import ErpClient
from connectors.errors import FatalError
from connectors.pain001 import Creditor, Debtor, Transfer, build_pain001
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
from mappings.purchasing import TransformLine, vendor_bill, vendor_payment
from state import procurement as proc
from state import settlement as st
from state.db import session_scope
from state.settings import StateSettings
from state.store import DeadLetterItem, record_dead_letters, resolve_dead_letters

FLOW = "settlement"


def debtor_from_env() -> Debtor:
    """The paying company: ``VOUCHFLOW_PAYER_NAME``, ``_COUNTRY``, ``_BIC``, ``_ACCOUNT``
    (any currency) and ``VOUCHFLOW_PAYER_ACCOUNT_<CCY>`` (one currency)."""
    accounts = {key.removeprefix("VOUCHFLOW_PAYER_ACCOUNT_"): value
                for key, value in os.environ.items()
                if key.startswith("VOUCHFLOW_PAYER_ACCOUNT_") and value}
    if os.environ.get("VOUCHFLOW_PAYER_ACCOUNT"):
        accounts["*"] = os.environ["VOUCHFLOW_PAYER_ACCOUNT"]
    return Debtor(name=os.environ.get("VOUCHFLOW_PAYER_NAME", "vouchflow"), accounts=accounts,
                  bic=os.environ.get("VOUCHFLOW_PAYER_BIC") or None,
                  country=os.environ.get("VOUCHFLOW_PAYER_COUNTRY") or None)


async def write_bills(erp: ErpClient) -> dict[str, int]:
    """Every bill not yet in the ERP, made from its purchase order, once."""
    engine = state_engine()
    run = posting(engine, erp)
    counts = {"erp_bills": 0, "dead_lettered": 0}
    with session_scope(engine) as s:
        todo = [(b.id, b.bill_no, b.bill_date, b.due_date, b.vendor_invoice_ref, o.id, o.po_no,
                 lines) for b, o, lines in st.bills_to_write(s)]
    if not todo:
        return counts
    async with system_slot(limit_name("erp", erp.account)):
        po_erp = await ensure_orders(run, [t[5] for t in todo])

        async def one(bill_id: int, bill_no: str, bill_date: date, due: date, ref: str | None,
                      po_id: int, po_no: str, lines: list[tuple[int, int, Any]]) -> None:
            source = po_erp.get(po_id)
            if source is None:
                return
            body = vendor_bill(bill_no=bill_no, bill_date=bill_date, due_date=due,
                               vendor_invoice_ref=ref, memo=f"{po_no}: settled",
                               lines=[TransformLine(line=n, quantity=q, rate=r)
                                      for n, q, r in lines])
            try:
                rid = await transform_once(erp, "purchaseOrder", source, "vendorBill", bill_no,
                                           body)
            except FatalError as exc:
                run.refused("vendorBill", bill_no, exc)
                return
            with session_scope(engine) as s:
                s.execute(update(proc.VendorBill).where(proc.VendorBill.id == bill_id)
                          .values(erp_id=rid))
                resolve_dead_letters(s, "post_procurement", "erp", "vendorBill", [bill_no])
            counts["erp_bills"] += 1

        await asyncio.gather(*(one(*t) for t in todo))
    counts["dead_lettered"] = run.counts.dead_lettered
    return counts


@flow(name="settle-vendors", log_prints=False)
async def settle_vendors(period: str, vendors: list[str] | None = None,
                         approve_by: str | None = None) -> dict[str, Any]:
    """The period's vendor bills (``YYYY-MM``) of the given vendors (default: every vendor with
    a signed contract), in vouchflow and in the ERP. ``approve_by`` approves them at once."""
    logger = run_logger()
    engine = state_engine()
    with session_scope(engine) as s:
        slugs = vendors or [v.slug for v in s.scalars(
            select(proc.Vendor).where(proc.Vendor.id.in_(select(  # type: ignore[union-attr]
                proc.SupplierContract.vendor_id).where(
                    proc.SupplierContract.signature_status == proc.SignatureStatus.SIGNED)))
            .order_by(proc.Vendor.id))]
    reports: list[st.SettlementReport] = []
    for slug in slugs:
        with session_scope(engine, immediate=True) as s:
            report = st.settle_vendor(s, slug, period)
            if approve_by:
                st.approve_bills(s, [b.bill_no for b in report.bills], by=approve_by)
            if report.reported or report.already_written_off:
                record_dead_letters(s, [DeadLetterItem(
                    flow=FLOW, source="vendor", entity_type="write_off",
                    entity_key=f"{slug}-{period}",
                    reason=(f"vendor {slug}, {period}: write-offs not billed: "
                            + ", ".join(f"{n} {k}" for k, n in sorted(report.write_offs.items())
                                        if k != st.WriteOffResult.MATCHED)
                            + (f", {report.already_written_off} refused in the upload as "
                               "written off before" if report.already_written_off else "")
                            + f" (dispute {report.dispute_no})"),
                    payload={"codes": [{"code": c, "result": r} for c, r in report.reported]})])
        reports.append(report)
    erp = ErpClient(await erp_settings())
    try:
        written = await write_bills(erp)
    finally:
        await erp.aclose()
    rows = [{"vendor": r.vendor, "mode": r.mode, "bills": len(r.bills), "quantity": r.quantity,
             "totals": ", ".join(f"{v} {c}" for c, v in sorted(r.totals().items())),
             "matched": r.write_offs.get(st.WriteOffResult.MATCHED, 0),
             "unknown": r.write_offs.get(st.WriteOffResult.UNKNOWN, 0),
             "not sold": r.write_offs.get(st.WriteOffResult.NOT_SOLD, 0),
             "written off before": (r.write_offs.get(st.WriteOffResult.WRITTEN_OFF, 0)
                                    + r.already_written_off),
             "waiting": r.waiting, "dispute": r.dispute_no or ""} for r in reports]
    await table_artifact("settle-vendors", rows, f"Vendor bills of {period}")
    await markdown_artifact("settle-vendors-summary", f"# Vendor bills of {period}\n" + "".join(
        f"- {r['vendor']} ({r['mode']}): {r['bills']} bill(s), {r['quantity']} unit(s), "
        f"{r['totals'] or 'nothing'}\n" for r in rows), "Settlement")
    summary = {"period": period, "vendors": rows, "bills": sum(len(r.bills) for r in reports),
               **written}
    logger.info("settle-vendors: %s", summary)
    return summary


def run_file(view: st.RunView, debtor: Debtor) -> bytes:
    transfers = [Transfer(
        end_to_end_id=p.payment_no, amount=p.amount, currency=p.currency,
        creditor=Creditor(name=p.vendor_name, account=p.bank_account, bic=p.bank_bic,
                          country=p.vendor_country),
        remittance=f"{p.vendor_invoice_ref or p.bill_no}") for p in view.payments]
    return build_pain001(message_id=view.run_no, created_at=view.created_at,
                         execution_date=view.execution_date, debtor=debtor,
                         transfers=transfers)


def runs_dir() -> Path:
    return StateSettings().resolved_home() / "payment-runs"


def _write_run(engine: Any, view: st.RunView, data: bytes) -> str:
    Path(view.file_name).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    with session_scope(engine) as s:
        st.record_run_file(s, view.run_no, digest)
    return digest


def _finish_unwritten_runs(engine: Any, debtor: Debtor) -> None:
    """Runs committed by a process that died before writing their file: the same bytes again
    (the file is built from the run's stored rows only)."""
    with session_scope(engine) as s:
        views = [st.run_view(s, r) for r in st.unwritten_runs(s)]
    for view in views:
        _write_run(engine, view, run_file(view, debtor))


@flow(name="payment-run", log_prints=False)
async def payment_run(execution_date: date | None = None, bills: list[str] | None = None,
                      created_by: str = "vouchflow") -> dict[str, Any]:
    """Approved bills (in the ERP, not paid) as one pain.001.001.09 file."""
    engine = state_engine()
    directory = runs_dir()
    directory.mkdir(parents=True, exist_ok=True)
    debtor = debtor_from_env()
    _finish_unwritten_runs(engine, debtor)
    with session_scope(engine, immediate=True) as s:
        view = st.create_payment_run(s, execution_date=execution_date or now_utc().date(),
                                     created_by=created_by, bill_nos=bills,
                                     file_dir=str(directory))
        # built (and validated) before the run commits: a file the schema refuses leaves
        # no run behind, and the bills stay payable
        data = run_file(view, debtor) if view is not None else b""
    if view is None:
        return {"run_no": None, "payments": 0}
    digest = _write_run(engine, view, data)
    totals: dict[str, Any] = {}
    for p in view.payments:
        totals[p.currency] = totals.get(p.currency, 0) + p.amount
    await markdown_artifact("payment-run", f"# Payment run {view.run_no}\n" + "".join(
        f"- {c}: {v}\n" for c, v in sorted(totals.items())), "Payment run")
    return {"run_no": view.run_no, "file": view.file_name, "sha256": digest,
            "payments": len(view.payments),
            "totals": {c: str(v) for c, v in sorted(totals.items())}}


@flow(name="confirm-payments", log_prints=False)
async def confirm_payments(run_no: str | None = None, rejected: list[str] | None = None
                           ) -> dict[str, Any]:
    """The bank executed a run (``run_no``; its ``rejected`` end-to-end ids were refused):
    vendorPayments in the ERP and bills paid. Without ``run_no`` only what an earlier call
    left unwritten is written."""
    engine = state_engine()
    confirmed: list[str] = []
    if run_no:
        with session_scope(engine) as s:
            confirmed = st.confirm_payments(s, run_no, rejected=rejected or ())
    with session_scope(engine) as s:
        todo = st.confirmed_unrecorded(s)
    erp = ErpClient(await erp_settings())
    paid = 0
    failed = 0
    try:
        async with system_slot(limit_name("erp", erp.account)):
            for item in todo:
                body = vendor_payment(payment_no=item.payment_no, paid_on=item.paid_on,
                                      memo=f"{item.bill_no}: paid")
                try:
                    rid = await transform_once(erp, "vendorBill", item.bill_erp_id,
                                               "vendorPayment", item.payment_no, body)
                except FatalError as exc:
                    with session_scope(engine) as s:
                        record_dead_letters(s, [DeadLetterItem(
                            flow=FLOW, source="erp", entity_type="vendorPayment",
                            entity_key=item.payment_no, reason=f"{item.payment_no}: {exc}",
                            payload=None)])
                    failed += 1
                    continue
                with session_scope(engine) as s:
                    st.mark_bill_paid(s, item.payment_id, rid)
                paid += 1
    finally:
        await erp.aclose()
    return {"run_no": run_no, "confirmed": len(confirmed), "bills_paid": paid,
            "dead_lettered": failed}


__all__ = ["confirm_payments", "debtor_from_env", "payment_run", "run_file", "settle_vendors"]
