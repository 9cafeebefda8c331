"""confirm-payment-status: a payment run confirmed by the bank's own answer, its pain.002
status report, instead of an operator typing the run number and the rejected payments.

The report names the run (its original message id is the run number, the pain.001's MsgId)
and, per transaction, the end-to-end id (our payment number) or the instruction id, with a
status the bank may also give per payment block or for the whole file. In one transaction the
payments the bank accepted become confirmed and those it rejected rejected
(``state.settlement.confirm_payments``), each rejection's reason a dead letter for the
operator; payments still pending stay sent, for a later report. Then the settlement flow
``confirm-payments`` writes the confirmed payments' vendorPayments to the ERP (looked up
first) and marks their bills paid. Only payments still sent change, so reading the same
report again changes nothing, and a later report that accepts a pending payment confirms it.
A report that contradicts what an earlier one decided (accepted, now rejected) or names an
amount other than the run's is reported and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from prefect import flow
from sqlalchemy import select

from connectors.pain001 import payment_information_id
from connectors.pain002 import Outcome, StatusReport, outcome, read_pain002
from flows.runtime import markdown_artifact, run_logger, state_engine, table_artifact
from flows.settlement import confirm_payments
from state import procurement as proc
from state import settlement as st
from state.db import session_scope
from state.purchasing_models import PaymentRun
from state.store import DeadLetterItem, record_dead_letters

FLOW = "payment-status"


class PaymentStatusError(ValueError):
    """A status report that cannot be applied: it answers no payment run of ours."""


@dataclass(frozen=True)
class Decision:
    """What the report means for one payment of the run."""

    payment_no: str
    bill_no: str
    vendor: str
    amount: Decimal
    currency: str
    was: str
    bank_status: str | None
    result: str
    """``confirmed``, ``rejected``, ``pending``, ``unchanged``, ``conflict`` or
    ``amount differs``."""
    reason: str | None = None

    def row(self) -> dict[str, Any]:
        return {"payment": self.payment_no, "bill": self.bill_no, "vendor": self.vendor,
                "amount": f"{self.amount} {self.currency}", "bank status": self.bank_status or "",
                "result": self.result, "reason": self.reason or ""}


_DONE = {proc.PaymentStatus.CONFIRMED.value: Outcome.ACCEPTED,
         proc.PaymentStatus.REJECTED.value: Outcome.REJECTED}


def decide(report: StatusReport, payments: list[tuple[proc.VendorPayment, str, str]]
           ) -> tuple[list[Decision], list[str]]:
    """Each payment's decision, and the report's transactions that name no payment of the run
    (``payments``: the run's payments with their bill number and vendor name)."""
    by_id = {}
    for p, _bill, _vendor in payments:
        by_id[p.payment_no] = p.payment_no
        if p.end_to_end_id:
            by_id[p.end_to_end_id] = p.payment_no
    listed = {}
    unknown = []
    for tx in report.transactions:
        found = by_id.get(tx.end_to_end_id or "") or by_id.get(tx.instruction_id or "")
        if found is None:
            unknown.append(tx.end_to_end_id or tx.instruction_id or f"line {tx.line}")
        else:
            listed[found] = tx
    block_of = {p.currency: payment_information_id(report.original_message_id, p.currency)
                for p, _b, _v in payments}
    decisions = []
    for p, bill_no, vendor in payments:
        tx = listed.get(p.payment_no)
        status, why = report.status_of(tx, block_of[p.currency])
        said = outcome(status)
        amount = st.payment_amount(p.amount, p.currency)
        reason = why.describe() if why is not None else None
        if said is Outcome.PENDING:
            result = ("pending" if p.status == proc.PaymentStatus.SENT.value else "unchanged")
        elif p.status != proc.PaymentStatus.SENT.value:
            result = "unchanged" if _DONE.get(p.status) is said else "conflict"
        elif tx is not None and tx.amount is not None and (tx.amount, tx.currency) != (
                amount, p.currency):
            result = "amount differs"
            reason = f"the bank reports {tx.amount} {tx.currency}, the run paid {amount} " \
                     f"{p.currency}"
        else:
            result = "confirmed" if said is Outcome.ACCEPTED else "rejected"
        decisions.append(Decision(p.payment_no, bill_no, vendor, amount, p.currency, p.status,
                                  status, result, reason))
    return decisions, unknown


def _run_payments(s: Any, run_no: str) -> list[tuple[proc.VendorPayment, str, str]]:
    vp, vb, v = proc.VendorPayment, proc.VendorBill, proc.Vendor
    return [(p, b, n) for p, b, n in s.execute(
        select(vp, vb.bill_no, v.name).join(vb, vb.id == vp.bill_id)
        .join(v, v.id == vp.vendor_id).where(vp.run_no == run_no).order_by(vp.id)).all()]


def _letters(report: StatusReport, run_no: str, decisions: list[Decision], unknown: list[str]
             ) -> list[DeadLetterItem]:
    """Rejections (their reason), contradictions and transactions of no payment: for the
    operator."""
    items = []
    for d in decisions:
        if d.result == "rejected":
            reason = (f"payment {d.payment_no} of bill {d.bill_no} ({d.vendor}, {d.amount} "
                      f"{d.currency}) rejected by the bank: {d.reason or 'no reason given'}; "
                      "the bill stays approved for the next payment run")
        elif d.result in ("conflict", "amount differs"):
            reason = (f"payment {d.payment_no} of bill {d.bill_no}: status report "
                      f"{report.message_id} says {d.bank_status}"
                      + (f" ({d.reason})" if d.reason else "") + f", the payment is {d.was}; "
                      "nothing changed")
        else:
            continue
        items.append(DeadLetterItem(
            flow=FLOW, source="bank", entity_type="vendorPayment", entity_key=d.payment_no,
            reason=reason, payload={"run_no": run_no, "report": report.message_id,
                                    "file": report.file, "status": d.bank_status,
                                    "result": d.result}))
    items.extend(DeadLetterItem(
        flow=FLOW, source="bank", entity_type="statusTransaction",
        entity_key=f"{report.message_id}-{ref}"[:255],
        reason=f"status report {report.message_id} ({report.file}) names {ref}, no payment of "
               f"run {run_no}", payload={"run_no": run_no, "report": report.message_id})
        for ref in unknown)
    return items


def apply_report(engine: Any, report: StatusReport
                 ) -> tuple[str, list[Decision], list[str], int]:
    """The report's decisions applied in one transaction: confirmations, rejections and their
    dead letters together (their number last)."""
    if not report.original_message_name.lower().startswith("pain.001"):
        raise PaymentStatusError(
            f"{report.file}: the status report answers a {report.original_message_name} "
            f"({report.original_message_id}), not a payment run's pain.001")
    run_no = report.original_message_id
    with session_scope(engine, immediate=True) as s:
        if s.scalar(select(PaymentRun.id).where(PaymentRun.run_no == run_no)) is None:
            raise PaymentStatusError(
                f"{report.file}: the status report {report.message_id} answers message "
                f"{run_no!r}, which is no payment run of vouchflow; nothing was changed")
        decisions, unknown = decide(report, _run_payments(s, run_no))
        accepted = [d.payment_no for d in decisions if d.result == "confirmed"]
        rejected = [d.payment_no for d in decisions if d.result == "rejected"]
        if accepted or rejected:
            st.confirm_payments(s, run_no, accepted=accepted, rejected=rejected,
                                at=report.created_at)
        letters = _letters(report, run_no, decisions, unknown)
        record_dead_letters(s, letters)
    return run_no, decisions, unknown, len(letters)


@flow(name="confirm-payment-status", log_prints=False)
async def confirm_payment_status(path: str) -> dict[str, Any]:
    """The bank's pain.002 status report in ``path`` applied to its payment run: accepted
    payments paid in the ERP, rejected ones back to payable with their reason, pending ones
    left for a later report."""
    logger = run_logger()
    engine = state_engine()
    report = read_pain002(Path(path))
    run_no, decisions, unknown, reported = apply_report(engine, report)
    written = await confirm_payments()
    counts = {k: sum(d.result == k for d in decisions)
              for k in ("confirmed", "rejected", "pending", "unchanged", "conflict",
                        "amount differs")}
    title = (f"Payment run {run_no}: status report {report.message_id} ({report.version}, "
             f"group status {report.group_status or 'none'})")
    await table_artifact("payment-status", [d.row() for d in decisions], title)
    await markdown_artifact("payment-status-summary", f"# {title}\n" + "".join(
        f"- {k}: {n}\n" for k, n in counts.items() if n) + "".join(
        f"- {d.payment_no} (bill {d.bill_no}, {d.vendor}) {d.result}: {d.reason}\n"
        for d in decisions if d.result in ("rejected", "conflict", "amount differs"))
        + "".join(f"- {ref}: no payment of this run\n" for ref in unknown), "Payment status")
    summary = {"file": report.file, "report": report.message_id, "version": report.version,
               "run_no": run_no, "group_status": report.group_status, **counts,
               "unknown": unknown, "bills_paid": written["bills_paid"],
               "dead_lettered": reported + written["dead_lettered"],
               "rejections": {d.payment_no: d.reason for d in decisions
                              if d.result == "rejected"}}
    logger.info("confirm-payment-status: %s", summary)
    return summary


__all__ = ["PaymentStatusError", "apply_report", "confirm_payment_status", "decide"]
