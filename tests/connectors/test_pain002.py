"""pain.002 status reports: built here with lxml from a real pain.001 payment run file (so the
ids match), read back in every shipped version, and refusals that name the file and element."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree

from connectors.pain001 import NAMESPACE as PAIN001
from connectors.pain001 import Creditor, Debtor, Transfer, build_pain001
from connectors.pain002 import (
    VERSIONS,
    Outcome,
    Pain002Error,
    StatusReason,
    outcome,
    read_pain002,
)

Status = tuple[str, str | None, str | None]
"""(TxSts, reason code, additional information)."""


def status_report(pain001: bytes, statuses: Mapping[str, Status], *,
                  version: str = "pain.002.001.03", message_id: str = "STS-0001",
                  group_status: str | None = None, block_status: Mapping[str, str] | None = None,
                  created_at: str = "2026-11-24T09:30:00+08:00") -> bytes:
    """The bank's answer to ``pain001``: one ``TxInfAndSts`` per end-to-end id in
    ``statuses`` (the others left to the block's or group's status), in the schema's order."""
    ns1 = {"p": PAIN001}
    src = etree.fromstring(pain001)
    ns = f"urn:iso:std:iso:20022:tech:xsd:{version}"

    def el(parent: etree._Element, tag: str, text: str | None = None, **attrs: str
           ) -> etree._Element:
        e = etree.SubElement(parent, f"{{{ns}}}{tag}", attrs)
        if text is not None:
            e.text = text
        return e

    def reason(parent: etree._Element, code: str | None, info: str | None) -> None:
        if code or info:
            r = el(parent, "StsRsnInf")
            if code:
                el(el(r, "Rsn"), "Cd", code)
            if info:
                el(r, "AddtlInf", info)

    root = etree.Element(f"{{{ns}}}Document", nsmap={None: ns})
    body = el(root, "CstmrPmtStsRpt")
    header = el(body, "GrpHdr")
    el(header, "MsgId", message_id)
    el(header, "CreDtTm", created_at)
    el(el(header, "InitgPty"), "Nm", "DBS Bank Ltd")
    group = el(body, "OrgnlGrpInfAndSts")
    el(group, "OrgnlMsgId", src.findtext("p:CstmrCdtTrfInitn/p:GrpHdr/p:MsgId", namespaces=ns1))
    el(group, "OrgnlMsgNmId", "pain.001.001.09")
    el(group, "OrgnlNbOfTxs",
       src.findtext("p:CstmrCdtTrfInitn/p:GrpHdr/p:NbOfTxs", namespaces=ns1))
    if group_status:
        el(group, "GrpSts", group_status)
    for block in src.findall("p:CstmrCdtTrfInitn/p:PmtInf", ns1):
        txs = [tx for tx in block.findall("p:CdtTrfTxInf", ns1)
               if tx.findtext("p:PmtId/p:EndToEndId", namespaces=ns1) in statuses]
        block_id = block.findtext("p:PmtInfId", namespaces=ns1)
        if not txs and block_id not in (block_status or {}):
            continue
        out = el(body, "OrgnlPmtInfAndSts")
        el(out, "OrgnlPmtInfId", block_id)
        if block_id in (block_status or {}):
            el(out, "PmtInfSts", (block_status or {})[block_id])
        for n, tx in enumerate(txs, 1):
            e2e = tx.findtext("p:PmtId/p:EndToEndId", namespaces=ns1)
            status, code, info = statuses[e2e]
            item = el(out, "TxInfAndSts")
            el(item, "StsId", f"{message_id}-{n}")
            el(item, "OrgnlInstrId", tx.findtext("p:PmtId/p:InstrId", namespaces=ns1))
            el(item, "OrgnlEndToEndId", e2e)
            el(item, "TxSts", status)
            reason(item, code, info)
            if status != "RJCT":
                el(item, "AccptncDtTm", created_at)
            amount = tx.find("p:Amt/p:InstdAmt", ns1)
            el(el(el(item, "OrgnlTxRef"), "Amt"), "InstdAmt", amount.text, Ccy=amount.get("Ccy"))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


DEBTOR = Debtor(name="Vouchflow Pte Ltd", accounts={"SGD": "SG98VFLW00000001", "*": "VF-0001"},
                bic="DBSSSGSG", country="SG")
RUN = "PRUN-20261123-000001"


def run_file() -> bytes:
    creditor = Creditor("Pool Supplier", "SG12POOL0001", "POOLSGSG", "SG")
    return build_pain001(
        message_id=RUN, created_at=datetime(2026, 11, 23, 4, 5, 6, tzinfo=UTC),
        execution_date=date(2026, 11, 30), debtor=DEBTOR, transfers=[
            Transfer("pay-a-1", Decimal("72.50"), "SGD", creditor, "bill 1"),
            Transfer("pay-a-2", Decimal("31.00"), "SGD", creditor, "bill 2"),
            Transfer("pay-b-3", Decimal("6.00"), "USD", creditor, "bill 3"),
            Transfer("pay-b-4", Decimal("9.10"), "USD", creditor, "bill 4")])


def write(tmp_path: Path, data: bytes, name: str = "status.xml") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


MIXED: dict[str, Status] = {
    "pay-a-1": ("ACSC", None, None), "pay-b-3": ("ACCP", None, None),
    "pay-a-2": ("RJCT", "AC04", "Account closed on 2026-11-01"),
    "pay-b-4": ("PDNG", None, "Compliance check")}


@pytest.mark.parametrize("version", VERSIONS)
def test_a_report_of_every_shipped_version_reads_back_with_the_run_s_ids(tmp_path, version):
    path = write(tmp_path, status_report(run_file(), MIXED, version=version,
                                         group_status="PART"))
    report = read_pain002(path)
    assert (report.version, report.file, report.message_id) == (version, "status.xml",
                                                                 "STS-0001")
    assert report.created_at == datetime(2026, 11, 24, 1, 30, tzinfo=UTC)
    assert (report.original_message_id, report.original_message_name) == (RUN, "pain.001.001.09")
    assert report.group_status == "PART" and report.group_reason is None
    got = {t.end_to_end_id: t for t in report.transactions}
    assert sorted(got) == sorted(MIXED)
    assert {e: (t.status, t.instruction_id, t.amount, t.currency) for e, t in got.items()} == {
        "pay-a-1": ("ACSC", "pay-a-1", Decimal("72.50"), "SGD"),
        "pay-a-2": ("RJCT", "pay-a-2", Decimal("31.00"), "SGD"),
        "pay-b-3": ("ACCP", "pay-b-3", Decimal("6.00"), "USD"),
        "pay-b-4": ("PDNG", "pay-b-4", Decimal("9.10"), "USD")}
    rejected = got["pay-a-2"]
    assert rejected.reason == StatusReason("AC04", "Account closed on 2026-11-01")
    assert rejected.reason.describe() == ("AC04 (closed account number): Account closed on "
                                          "2026-11-01")
    assert rejected.payment_information_id == f"{RUN}-SGD" and rejected.line
    assert got["pay-a-1"].accepted_at == report.created_at
    assert {e: outcome(report.status_of(t, None)[0]) for e, t in got.items()} == {
        "pay-a-1": Outcome.ACCEPTED, "pay-b-3": Outcome.ACCEPTED,
        "pay-a-2": Outcome.REJECTED, "pay-b-4": Outcome.PENDING}


def test_unlisted_transactions_take_their_block_s_or_the_group_s_status(tmp_path):
    accepted_group = read_pain002(write(tmp_path, status_report(run_file(), {},
                                                                group_status="ACSC")))
    assert accepted_group.transactions == ()
    assert accepted_group.status_of(None, f"{RUN}-SGD") == ("ACSC", None)
    part = read_pain002(write(tmp_path, status_report(
        run_file(), {"pay-b-3": ("ACSC", None, None)}, group_status="PART",
        block_status={f"{RUN}-SGD": "RJCT"}, version="pain.002.001.12")))
    # the SGD block was refused whole; the USD block only names one transaction
    assert part.status_of(None, f"{RUN}-SGD") == ("RJCT", None)
    assert part.status_of(None, f"{RUN}-USD") == (None, None)
    assert outcome(None) == Outcome.PENDING and outcome("ACTC") == Outcome.PENDING


def test_a_hostile_file_with_an_external_entity_is_refused_and_reads_nothing(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    good = status_report(run_file(), MIXED).decode()
    hostile = good.replace("<?xml version='1.0' encoding='UTF-8'?>",
                           "<?xml version='1.0' encoding='UTF-8'?>\n"
                           f'<!DOCTYPE Document [<!ENTITY xxe SYSTEM "file://{secret}">]>')
    hostile = hostile.replace("Compliance check", "&xxe;")
    assert "<!DOCTYPE" in hostile
    with pytest.raises(Pain002Error) as caught:
        read_pain002(write(tmp_path, hostile.encode(), "hostile.xml"))
    error = caught.value
    assert error.rule == "dtd_refused" and error.line == 2
    assert "hostile.xml" in str(error) and "TOP-SECRET-VALUE" not in str(error)


def test_an_invalid_report_names_the_file_the_element_and_the_rule(tmp_path):
    bad = status_report(run_file(), MIXED).replace(b"<TxSts>PDNG</TxSts>",
                                                   b"<TxSts>MAYBE</TxSts>")
    with pytest.raises(Pain002Error) as caught:
        read_pain002(write(tmp_path, bad, "bank-answer.xml"))
    error = caught.value
    assert error.rule == "xsd" and error.file == "bank-answer.xml"
    assert error.field is not None and error.field.endswith("TxSts")
    assert error.line is not None and "MAYBE" in str(error)
    missing = status_report(run_file(), MIXED, version="pain.002.001.15").replace(
        b"<OrgnlMsgNmId>pain.001.001.09</OrgnlMsgNmId>", b"")
    with pytest.raises(Pain002Error) as caught:
        read_pain002(write(tmp_path, missing))
    assert caught.value.rule == "xsd" and "OrgnlGrpInfAndSts" in (caught.value.field or "")


@pytest.mark.parametrize(("data", "rule"), [
    (b"", "empty_file"),
    (status_report(run_file(), MIXED)[:-40], "xml_syntax"),
    (run_file(), "not_pain002"),
    (status_report(run_file(), MIXED).replace(b"pain.002.001.03", b"pain.002.001.10"),
     "version_unsupported"),
])
def test_files_that_are_not_a_readable_pain002_are_refused_by_rule(tmp_path, data, rule):
    with pytest.raises(Pain002Error) as caught:
        read_pain002(write(tmp_path, data, "answer.xml"))
    assert caught.value.rule == rule and str(caught.value).startswith("answer.xml")
