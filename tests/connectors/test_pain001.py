"""pain.001.001.09 files: generic (IBAN or other account ids, several currencies), valid
against the official XSD, and refusals that say what is wrong."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from lxml import etree

from connectors.pain001 import (
    NAMESPACE,
    Creditor,
    Debtor,
    Pain001Error,
    Transfer,
    build_pain001,
    validate,
)

DEBTOR = Debtor(name="Vouchflow Pte Ltd", accounts={"SGD": "SG98VFLW00000001", "*": "VF-0001"},
                bic="DBSSSGSG", country="SG")
NS = {"p": NAMESPACE}


def transfer(e2e: str, amount: str, currency: str, account: str | None = "SG12POOL0001",
             bic: str | None = "POOLSGSG") -> Transfer:
    return Transfer(e2e, Decimal(amount), currency,
                    Creditor("Pool Supplier", account, bic, "SG"), f"bill {e2e}")


def build(*transfers: Transfer) -> bytes:
    return build_pain001(message_id="PRUN-20261123-000001",
                         created_at=datetime(2026, 11, 23, 4, 5, 6, 789, tzinfo=UTC),
                         execution_date=date(2026, 11, 30), debtor=DEBTOR,
                         transfers=list(transfers))


def test_one_block_per_currency_with_control_sums():
    data = build(transfer("pay-a-1", "72.50", "SGD"), transfer("pay-a-2", "31.00", "SGD"),
                 transfer("pay-b-3", "6.00", "USD", account="998877", bic=None),
                 transfer("pay-c-4", "1500", "JPY", account="JP-123"))
    validate(data)
    doc = etree.fromstring(data)
    assert doc.findtext("p:CstmrCdtTrfInitn/p:GrpHdr/p:CtrlSum", namespaces=NS) == "1609.50"
    blocks = doc.findall("p:CstmrCdtTrfInitn/p:PmtInf", NS)
    assert [(b.findtext("p:PmtInfId", namespaces=NS), b.findtext("p:NbOfTxs", namespaces=NS),
             b.findtext("p:CtrlSum", namespaces=NS)) for b in blocks] == [
        ("PRUN-20261123-000001-JPY", "1", "1500"), ("PRUN-20261123-000001-SGD", "2", "103.50"),
        ("PRUN-20261123-000001-USD", "1", "6.00")]
    sgd = blocks[1]
    assert sgd.findtext("p:DbtrAcct/p:Id/p:IBAN", namespaces=NS) == "SG98VFLW00000001"
    assert blocks[2].findtext("p:DbtrAcct/p:Id/p:Othr/p:Id", namespaces=NS) == "VF-0001"
    usd_tx = blocks[2].find("p:CdtTrfTxInf", NS)
    assert usd_tx.findtext("p:PmtId/p:EndToEndId", namespaces=NS) == "pay-b-3"
    assert usd_tx.findtext("p:CdtrAcct/p:Id/p:Othr/p:Id", namespaces=NS) == "998877"
    assert usd_tx.findtext("p:CdtrAgt/p:FinInstnId/p:Othr/p:Id", namespaces=NS) == "NOTPROVIDED"


def test_refusals_name_the_problem():
    with pytest.raises(Pain001Error, match="no bank account"):
        build(transfer("pay-1", "1.00", "SGD", account=None))
    with pytest.raises(Pain001Error, match="is not a BIC"):
        build(transfer("pay-1", "1.00", "SGD", bic="not-a-bic"))
    with pytest.raises(Pain001Error, match="not positive"):
        build(transfer("pay-1", "0", "SGD"))
    data = build(transfer("pay-1", "1.00", "SGD")).replace(b"<PmtMtd>TRF<", b"<PmtMtd>XXX<")
    with pytest.raises(Pain001Error, match="PmtMtd"):
        validate(data)
