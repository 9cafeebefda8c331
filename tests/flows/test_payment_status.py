"""A payment run confirmed by the bank's pain.002 status report: settle -> payment run ->
the bank's answer built from the run's own pain.001 -> vendorPayments counted at the far end
(the ERP sandbox's effect log), bills paid or payable again, the rejection's reason for the
operator, the same report twice changing nothing, and a later report confirming what was
pending."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from sqlalchemy import select
from typer.testing import CliRunner

from connectors.pain001 import NAMESPACE
from connectors.pain002 import StatusReason, StatusReport, TransactionStatus
from flows.api_purchase_orders import api_purchase_orders
from flows.cli import app
from flows.payment_status import PaymentStatusError, confirm_payment_status, decide
from flows.settlement import payment_run, settle_vendors
from state import procurement as proc
from state.db import get_engine, session_scope
from state.events import read_events
from state.models import DeadLetter
from state.purchasing_models import PaymentRun
from tests.connectors.test_pain002 import status_report
from tests.flows import purchasing_world as pw

pytestmark = pytest.mark.usefixtures("prefect_harness", "state_url")


def erp_payments(sandboxes) -> Counter[str]:
    return Counter(sandboxes.erp.effects.keys("vendorPayment.transformed"))


def payments() -> dict[str, tuple[str, str]]:
    """payment number -> (payment status, its bill's status)."""
    with session_scope(get_engine()) as s:
        return {p.payment_no: (p.status, b.status) for p, b in s.execute(
            select(proc.VendorPayment, proc.VendorBill).join(
                proc.VendorBill, proc.VendorBill.id == proc.VendorPayment.bill_id))}


async def _artifacts(key: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        return await client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key])))


def newest_artifact(key: str) -> Any:
    data = max(asyncio.run(_artifacts(key)), key=lambda a: a.created).data
    return json.loads(data) if isinstance(data, str) and key == "payment-status" else data


def state_of_the_books(sandboxes) -> tuple[Counter[str], dict, list, Counter[str]]:
    with session_scope(get_engine()) as s:
        letters = [(d.entity_key, d.occurrences, d.reason) for d in s.scalars(
            select(DeadLetter).where(DeadLetter.flow == "payment-status"))]
        events = Counter(e.type for e in read_events(s, after=0, patterns=["vendor_bill.*"],
                                                     limit=10_000))
    return erp_payments(sandboxes), payments(), letters, events


def cli(*args: str):
    """``vouchflow purchasing ...``; the Prefect defaults the command line sets for itself are
    taken back after it (the session's harness stays as it was)."""
    before = set(os.environ)
    try:
        return CliRunner().invoke(app, ["purchasing", *args])
    finally:
        for name in set(os.environ) - before:
            del os.environ[name]


@pytest.mark.seed(16, 0)
def test_a_status_report_pays_the_accepted_keeps_the_pending_and_names_the_rejected(
        sandboxes, monkeypatch, tmp_path):
    monkeypatch.setenv("VOUCHFLOW_PAYER_NAME", "Vouchflow Pte Ltd")
    monkeypatch.setenv("VOUCHFLOW_PAYER_ACCOUNT", "SG98VFLW00000001")
    pw.build(sandboxes)
    for day in (pw.D1, pw.D2):
        asyncio.run(api_purchase_orders(day=day, sites=["sg1", "th1"]))
    settled = asyncio.run(settle_vendors(pw.PERIOD, approve_by="cfo"))
    # the pool supplier's bill and the sales supplier's three daily bills (no write-offs)
    assert settled["bills"] == settled["erp_bills"] == 4
    run = asyncio.run(payment_run(created_by="treasurer"))
    assert run["payments"] == 4
    pain001 = Path(run["file"]).read_bytes()
    e2e = etree.fromstring(pain001).xpath("//p:EndToEndId/text()", namespaces={"p": NAMESPACE})
    assert len(e2e) == 4
    paid_a, paid_b, closed, waiting = e2e

    # the bank's first answer (pain.002.001.03): two accepted, one account closed, one pending
    first = tmp_path / "pain002-1.xml"
    first.write_bytes(status_report(pain001, {
        paid_a: ("ACSC", None, None), paid_b: ("ACCP", None, None),
        closed: ("RJCT", "AC04", "Creditor account closed"),
        waiting: ("PDNG", None, "Sanctions screening")}, group_status="PART"))
    result = asyncio.run(confirm_payment_status(str(first)))
    assert (result["run_no"], result["version"]) == (run["run_no"], "pain.002.001.03")
    assert (result["confirmed"], result["rejected"], result["pending"], result["bills_paid"]) == (
        2, 1, 1, 2)
    assert result["rejections"] == {closed: "AC04 (closed account number): Creditor account "
                                            "closed"}
    assert erp_payments(sandboxes) == Counter({paid_a: 1, paid_b: 1})
    assert payments() == {paid_a: ("confirmed", "paid"), paid_b: ("confirmed", "paid"),
                          closed: ("rejected", "approved"), waiting: ("sent", "approved")}
    books = state_of_the_books(sandboxes)
    _, _, letters, events = books
    (key, occurrences, reason), = letters
    assert key == closed and occurrences == 1
    assert "AC04 (closed account number): Creditor account closed" in reason
    assert events["vendor_bill.paid"] == 2 and events["vendor_bill.payment_rejected"] == 1
    # the operator reads the reason in the run's artifacts
    table = {row["payment"]: row for row in newest_artifact("payment-status")}
    assert {p: row["result"] for p, row in table.items()} == {
        paid_a: "confirmed", paid_b: "confirmed", closed: "rejected", waiting: "pending"}
    assert table[closed]["reason"] == result["rejections"][closed]
    summary = newest_artifact("payment-status-summary")
    assert f"{closed} (bill " in summary and "AC04 (closed account number)" in summary
    with session_scope(get_engine()) as s:
        assert s.scalar(select(PaymentRun.status).where(
            PaymentRun.run_no == run["run_no"])) == "generated"  # one payment still open

    # the same file again changes nothing, at the far end or here
    again = asyncio.run(confirm_payment_status(str(first)))
    assert (again["confirmed"], again["rejected"], again["unchanged"], again["pending"],
            again["bills_paid"]) == (0, 0, 3, 1, 0)
    assert state_of_the_books(sandboxes) == books

    # a report for a run we never made is refused and changes nothing
    stranger = tmp_path / "other-bank.xml"
    stranger.write_bytes(status_report(pain001, {waiting: ("ACSC", None, None)}).replace(
        run["run_no"].encode(), b"PRUN-19990101-000001"))
    with pytest.raises(PaymentStatusError, match=r"PRUN-19990101-000001.*no payment run"):
        asyncio.run(confirm_payment_status(str(stranger)))
    assert state_of_the_books(sandboxes) == books
    refused = cli("payment-status", str(stranger))
    assert refused.exit_code == 1 and refused.stdout == ""
    assert "other-bank.xml" in refused.stderr and "no payment run" in refused.stderr

    # a later answer (pain.002.001.12) accepts the pending payment: paid, the run complete
    second = tmp_path / "pain002-2.xml"
    second.write_bytes(status_report(pain001, {waiting: ("ACSC", None, None)},
                                     version="pain.002.001.12", message_id="STS-0002"))
    answered = cli("payment-status", str(second))
    assert answered.exit_code == 0, answered.output
    later = json.loads(answered.stdout)
    assert (later["confirmed"], later["bills_paid"], later["pending"]) == (1, 1, 0)
    assert erp_payments(sandboxes) == Counter({paid_a: 1, paid_b: 1, waiting: 1})
    assert payments()[waiting] == ("confirmed", "paid")
    with session_scope(get_engine()) as s:
        assert s.scalar(select(PaymentRun.status).where(
            PaymentRun.run_no == run["run_no"])) == "confirmed"

    # the rejected bill is payable again: the next run pays it, and only it
    rerun = asyncio.run(payment_run(created_by="treasurer"))
    assert rerun["payments"] == 1
    with session_scope(get_engine()) as s:
        bill_of = dict(s.execute(select(proc.VendorPayment.payment_no, proc.VendorBill.bill_no)
                                 .join(proc.VendorBill,
                                       proc.VendorBill.id == proc.VendorPayment.bill_id)).all())
        (new,) = s.scalars(select(proc.VendorPayment.payment_no).where(
            proc.VendorPayment.run_no == rerun["run_no"]))
    assert bill_of[new] == bill_of[closed]


def test_a_report_that_contradicts_the_run_changes_nothing_and_says_why():
    """Decisions alone (no database): a rejection after a confirmation is a conflict, an
    amount other than the run's is not confirmed, a transaction of no payment is named, and a
    group rejection reaches the payments the report does not list."""
    def payment(no: str, status: str, amount: str = "10.00") -> proc.VendorPayment:
        return proc.VendorPayment(payment_no=no, end_to_end_id=no, vendor_id=1, bill_id=1,
                                  run_no="RUN-1", amount=Decimal(amount), currency="SGD",
                                  status=status)

    def tx(ref: str | None, status: str | None, amount: str | None = None, *,
           instruction: str | None = None) -> TransactionStatus:
        return TransactionStatus(end_to_end_id=ref, instruction_id=instruction or ref,
                                 status=status, reason=None, payment_information_id="RUN-1-SGD",
                                 amount=Decimal(amount) if amount else None,
                                 currency="SGD" if amount else None)

    report = StatusReport(
        file="answer.xml", version="pain.002.001.03", message_id="STS-9",
        created_at=datetime(2026, 11, 24, tzinfo=UTC), original_message_id="RUN-1",
        original_message_name="pain.001.001.09", group_status="RJCT",
        group_reason=StatusReason("FF01", None), blocks=(),
        transactions=(tx("p-confirmed", "RJCT"), tx("p-amount", "ACSC", "10.01"),
                      tx(None, "ACSC", "10.00", instruction="p-by-instruction"),
                      tx("p-stranger", "ACSC")))
    rows = [(payment("p-confirmed", "confirmed"), "b1", "V"),
            (payment("p-amount", "sent"), "b2", "V"),
            (payment("p-by-instruction", "sent"), "b3", "V"),
            (payment("p-unlisted", "sent"), "b4", "V")]
    decisions, unknown = decide(report, rows)
    assert [(d.payment_no, d.result, d.reason) for d in decisions] == [
        ("p-confirmed", "conflict", None),
        ("p-amount", "amount differs", "the bank reports 10.01 SGD, the run paid 10.00 SGD"),
        ("p-by-instruction", "confirmed", None),
        ("p-unlisted", "rejected", "FF01 (invalid file format)")]
    assert unknown == ["p-stranger"]


def test_the_command_refuses_a_hostile_report_in_one_line_before_any_run(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    hostile = tmp_path / "bank-answer.xml"
    hostile.write_text('<?xml version="1.0"?>\n'
                       f'<!DOCTYPE Document [<!ENTITY xxe SYSTEM "file://{secret}">]>\n'
                       "<Document>&xxe;</Document>\n")
    refused = cli("payment-status", str(hostile))
    assert refused.exit_code == 1 and refused.stdout == ""
    (line,) = refused.stderr.splitlines()
    assert line.startswith("error: bank-answer.xml: line 2:") and "[dtd_refused]" in line
    assert "TOP-SECRET-VALUE" not in refused.output
