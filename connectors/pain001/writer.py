"""pain.001.001.09 files: one payment information block per currency (each debited from the
account held in that currency), one credit transfer per payment, validated against the XSD."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

import xmlschema
from lxml import etree

NAMESPACE = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09"
_IBAN = re.compile(r"^[A-Z]{2}[0-9]{2}[A-Za-z0-9]{1,30}$")
_BIC = re.compile(r"^[A-Z0-9]{4}[A-Z]{2}[A-Z0-9]{2}([A-Z0-9]{3})?$")


class Pain001Error(ValueError):
    """A payment that cannot be written, or a file the schema refuses (path and reason)."""


@dataclass(frozen=True)
class Debtor:
    """The company paying: its name and, per currency, the account debited and its bank."""

    name: str
    accounts: Mapping[str, str]
    """Currency -> account (IBAN or other identifier); ``*`` for every other currency."""
    bic: str | None = None
    country: str | None = None

    def account(self, currency: str) -> str:
        found = self.accounts.get(currency) or self.accounts.get("*")
        if not found:
            raise Pain001Error(f"no debtor account for {currency}: set one for it or '*'")
        return found


@dataclass(frozen=True)
class Creditor:
    name: str
    account: str | None
    bic: str | None = None
    country: str | None = None


@dataclass(frozen=True)
class Transfer:
    end_to_end_id: str
    amount: Decimal
    currency: str
    creditor: Creditor
    remittance: str


@cache
def schema() -> xmlschema.XMLSchema:
    path = resources.files("connectors.pain001") / "xsd" / "pain.001.001.09.xsd"
    return xmlschema.XMLSchema(str(path))


def _el(parent: etree._Element, tag: str, text: str | None = None, **attrs: str
        ) -> etree._Element:
    el = etree.SubElement(parent, f"{{{NAMESPACE}}}{tag}", attrs)
    if text is not None:
        el.text = text
    return el


def _amount(value: Decimal) -> str:
    if value <= 0:
        raise Pain001Error(f"amount {value} is not positive")
    return format(value, "f")


def _text(value: str, limit: int) -> str:
    return " ".join(value.split())[:limit]


def _account(parent: etree._Element, tag: str, account: str, currency: str | None = None
             ) -> None:
    acct = _el(parent, tag)
    ident = _el(acct, "Id")
    compact = account.replace(" ", "")
    if _IBAN.match(compact):
        _el(ident, "IBAN", compact)
    else:
        _el(_el(ident, "Othr"), "Id", _text(account, 34))
    if currency:
        _el(acct, "Ccy", currency)


def _agent(parent: etree._Element, tag: str, bic: str | None) -> None:
    fin = _el(_el(parent, tag), "FinInstnId")
    if bic:
        if not _BIC.match(bic):
            raise Pain001Error(f"{bic!r} is not a BIC")
        _el(fin, "BICFI", bic)
    else:
        _el(_el(fin, "Othr"), "Id", "NOTPROVIDED")


def _party(parent: etree._Element, tag: str, name: str, country: str | None) -> None:
    party = _el(parent, tag)
    _el(party, "Nm", _text(name, 140))
    if country:
        _el(_el(party, "PstlAdr"), "Ctry", country)


def payment_information_id(message_id: str, currency: str) -> str:
    """The id of a run's payment block in one currency (``PmtInfId``, at most 35 characters):
    a bank's status report names the block by it."""
    return f"{message_id[:30]}-{currency}"


def build_pain001(
    *, message_id: str, created_at: datetime, execution_date: date, debtor: Debtor,
    transfers: Sequence[Transfer], initiating_party: str | None = None,
) -> bytes:
    """The file's bytes (UTF-8, with an XML declaration), validated against the XSD."""
    if not transfers:
        raise Pain001Error("a payment run needs at least one transfer")
    by_currency: dict[str, list[Transfer]] = defaultdict(list)
    for t in transfers:
        if not t.creditor.account:
            raise Pain001Error(f"payment {t.end_to_end_id}: vendor {t.creditor.name} has no "
                               "bank account")
        by_currency[t.currency].append(t)
    root = etree.Element(f"{{{NAMESPACE}}}Document", nsmap={None: NAMESPACE})
    body = _el(root, "CstmrCdtTrfInitn")
    header = _el(body, "GrpHdr")
    _el(header, "MsgId", message_id[:35])
    _el(header, "CreDtTm", created_at.replace(microsecond=0).isoformat())
    _el(header, "NbOfTxs", str(len(transfers)))
    _el(header, "CtrlSum", _amount(sum((t.amount for t in transfers), Decimal(0))))
    _el(_el(header, "InitgPty"), "Nm", _text(initiating_party or debtor.name, 140))
    for currency in sorted(by_currency):
        items = by_currency[currency]
        info = _el(body, "PmtInf")
        _el(info, "PmtInfId", payment_information_id(message_id, currency))
        _el(info, "PmtMtd", "TRF")
        _el(info, "BtchBookg", "false")
        _el(info, "NbOfTxs", str(len(items)))
        _el(info, "CtrlSum", _amount(sum((t.amount for t in items), Decimal(0))))
        _el(_el(info, "ReqdExctnDt"), "Dt", execution_date.isoformat())
        _party(info, "Dbtr", debtor.name, debtor.country)
        _account(info, "DbtrAcct", debtor.account(currency), currency)
        _agent(info, "DbtrAgt", debtor.bic)
        _el(info, "ChrgBr", "SHAR")
        for t in items:
            tx = _el(info, "CdtTrfTxInf")
            pid = _el(tx, "PmtId")
            _el(pid, "InstrId", t.end_to_end_id[:35])
            _el(pid, "EndToEndId", t.end_to_end_id[:35])
            _el(_el(tx, "Amt"), "InstdAmt", _amount(t.amount), Ccy=t.currency)
            _agent(tx, "CdtrAgt", t.creditor.bic)
            _party(tx, "Cdtr", t.creditor.name, t.creditor.country)
            _account(tx, "CdtrAcct", t.creditor.account or "")
            _el(_el(tx, "RmtInf"), "Ustrd", _text(t.remittance, 140))
    data = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    validate(data)
    return data


def validate(data: bytes) -> None:
    """Raise ``Pain001Error`` naming the element and the rule when the schema refuses it."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        doc = etree.fromstring(data, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise Pain001Error(f"not XML: {exc}") from None
    errors: list[Any] = list(schema().iter_errors(doc))
    if errors:
        first = errors[0]
        raise Pain001Error(f"pain.001.001.09 schema: {first.path}: {first.reason} "
                           f"({len(errors)} error(s))")
