"""ISO 20022 bank-to-customer cash management: camt.053 statements, camt.052 intraday reports
and camt.054 debit/credit notifications, every version from .001.01 to .001.14.

A file is first checked against the official XSD of its own message version (shipped in
``xsd/``, see the README there), then read entry by entry with ``lxml.iterparse`` so a
statement of a hundred thousand entries does not sit in memory. DTDs and entities are
refused before anything else: a statement that declares an entity is not a statement, and an
external entity must never make us read a local file.

The records here are the bank's own (``CamtEntry`` with its ``CamtTransaction`` details);
``mappings.payments`` turns them into canonical traces.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import xmlschema
from lxml import etree

from connectors.payments.common import (
    DTD_RE,
    Origin,
    PaymentFileError,
    check_currency,
    exact,
    file_label,
    parse_datetime,
    safe_parser,
)

NS_PREFIX = "urn:iso:std:iso:20022:tech:xsd:"
_NS_RE = re.compile(rb"urn:iso:std:iso:20022:tech:xsd:(camt\.05[234]\.001\.\d{2})")
HEAD_BYTES = 65_536
EXPLAIN_LIMIT = 16 * 1024 * 1024
"""An invalid file up to this size is validated again with xmlschema, whose error names the
element path and line; a larger one is reported with libxml2's own message."""

MESSAGES = {
    "camt.053": ("BkToCstmrStmt", "Stmt"),
    "camt.052": ("BkToCstmrAcctRpt", "Rpt"),
    "camt.054": ("BkToCstmrDbtCdtNtfctn", "Ntfctn"),
}
FORMATS = {"camt053": "camt.053", "camt052": "camt.052", "camt054": "camt.054"}


@dataclass(frozen=True, slots=True)
class CamtAccount:
    iban: str | None = None
    other_id: str | None = None
    currency: str | None = None
    name: str | None = None
    owner: str | None = None
    servicer_bic: str | None = None

    @property
    def identification(self) -> str | None:
        return self.iban or self.other_id


@dataclass(frozen=True, slots=True)
class CamtStatement:
    """The statement (053), report (052) or notification (054) an entry belongs to."""

    message: str
    """``camt.053``, ``camt.052`` or ``camt.054``."""
    version: str
    """The full message version, e.g. ``camt.053.001.02``."""
    message_id: str | None
    statement_id: str | None
    created_at: datetime | None
    account: CamtAccount
    electronic_sequence: str | None = None
    legal_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class CamtParty:
    name: str | None = None
    account: str | None = None
    agent: str | None = None
    identifier: str | None = None


@dataclass(frozen=True, slots=True)
class CamtTransaction:
    """One ``TxDtls`` of an entry (a batch entry has many)."""

    message_id: str | None = None
    account_servicer_reference: str | None = None
    payment_information_id: str | None = None
    instruction_id: str | None = None
    end_to_end_id: str | None = None
    transaction_id: str | None = None
    uetr: str | None = None
    mandate_id: str | None = None
    proprietary_references: tuple[tuple[str, str], ...] = ()
    amount: Decimal | None = None
    currency: str | None = None
    credit_debit: str | None = None
    debtor: CamtParty | None = None
    creditor: CamtParty | None = None
    ultimate_debtor: str | None = None
    ultimate_creditor: str | None = None
    remittance: tuple[str, ...] = ()
    creditor_reference: str | None = None
    additional_info: str | None = None
    return_reason: str | None = None


@dataclass(frozen=True, slots=True)
class CamtEntry:
    statement: CamtStatement
    origin: Origin
    amount: Decimal
    currency: str
    credit_debit: str
    """``CRDT`` or ``DBIT``, from the account owner's view."""
    status: str
    """``BOOK``, ``PDNG``, ``INFO`` (or ``FUTR`` in newer versions)."""
    reversal: bool = False
    entry_reference: str | None = None
    booking_date: date | None = None
    booked_at: datetime | None = None
    value_date: date | None = None
    account_servicer_reference: str | None = None
    bank_transaction_code: str | None = None
    batch_message_id: str | None = None
    batch_payment_information_id: str | None = None
    batch_transactions: int | None = None
    additional_info: str | None = None
    transactions: tuple[CamtTransaction, ...] = field(default=())


# schemas ------------------------------------------------------------------------------------
def xsd_path(version: str) -> Path:
    return Path(str(resources.files("connectors.payments.xsd") / f"{version}.xsd"))


@cache
def schema(version: str) -> xmlschema.XMLSchema:
    """The official XSD of one message version, loaded once per process."""
    path = xsd_path(version)
    if not path.is_file():
        raise FileNotFoundError(version)
    return xmlschema.XMLSchema(str(path))


@cache
def libxml_schema(version: str) -> etree.XMLSchema:
    """The same XSD compiled by libxml2: it validates while streaming, in C (xmlschema takes
    about a second per megabyte and holds the tree)."""
    path = xsd_path(version)
    if not path.is_file():
        raise FileNotFoundError(version)
    return etree.XMLSchema(etree.parse(str(path), safe_parser()))


class Node:
    """An element read once into plain Python (local names, text, the currency attribute), so
    the dozens of lookups an entry needs cost dictionary hits instead of lxml path searches."""

    __slots__ = ("children", "currency", "sourceline", "text")

    def __init__(self, text: str | None, currency: str | None, sourceline: int | None) -> None:
        self.text = text
        self.currency = currency
        self.sourceline = sourceline
        self.children: dict[str, list[Node]] = {}

    @classmethod
    def of(cls, elem: Any, skip: int) -> Node:
        node = cls(elem.text, elem.get("Ccy"), elem.sourceline)
        _fill(node, elem, skip)
        return node

    def get(self, name: str) -> str | None:
        return self.currency if name == "Ccy" else None

    def find(self, path: str) -> Node | None:
        node: Node | None = self
        for part in path.split("/"):
            found = node.children.get(part) if node is not None else None
            if not found:
                return None
            node = found[0]
        return node

    def findall(self, path: str) -> list[Node]:
        head, _, rest = path.partition("/")
        found = self.children.get(head, [])
        if not rest:
            return list(found)
        return [deeper for node in found for deeper in node.findall(rest)]


def _fill(node: Node, elem: Any, skip: int) -> None:
    children = node.children
    for child in elem:
        tag = child.tag
        if type(tag) is not str:
            continue
        sub = Node(child.text, child.get("Ccy"), None)
        if len(child):
            _fill(sub, child, skip)
        found = children.get(tag[skip:])
        if found is None:
            children[tag[skip:]] = [sub]
        else:
            found.append(sub)


# the reader ---------------------------------------------------------------------------------
class CamtReader:
    """Reads one camt file: ``statements`` after ``entries()`` has run holds what it saw.

    ``expect`` (``camt.053``...) refuses a file of another message type. ``default_tz`` is
    the zone of date-times the bank wrote without an offset (ISO 20022 allows local times).
    """

    def __init__(self, path: str | Path, *, expect: str | None = None,
                 default_tz: tzinfo = UTC, validate: bool = True) -> None:
        self.path = Path(path)
        self.file = file_label(path)
        self.expect = expect
        self.default_tz = default_tz
        self.validate = validate
        self.version = ""
        self.message = ""
        self.ns = ""
        self.statements: list[CamtStatement] = []

    def error(self, rule: str, message: str, *, line: int | None = None,
              field_name: str | None = None) -> PaymentFileError:
        return PaymentFileError(self.file, rule, message, line=line, field=field_name)

    # step 1: what is it, and is it safe to parse ----------------------------------------------
    def sniff(self) -> str:
        try:
            with self.path.open("rb") as fh:
                head = fh.read(HEAD_BYTES)
        except OSError as exc:
            raise self.error("unreadable", f"cannot read the file ({exc.strerror})") from None
        if not head.strip():
            raise self.error("empty_file", "the file is empty")
        dtd = DTD_RE.search(head)
        if dtd:
            line = head[: dtd.start()].count(b"\n") + 1
            raise self.error("dtd_refused", "DTDs and entity declarations are refused in "
                             "statements", line=line)
        found = _NS_RE.search(head)
        version = found.group(1).decode() if found else self._root_version()
        if version is None:
            raise self.error("not_camt", "no ISO 20022 camt.052/053/054 namespace in the "
                             "document element")
        self.version = version
        self.message = self.version[:8]
        self.ns = NS_PREFIX + self.version
        if self.expect and self.message != self.expect:
            raise self.error("format_mismatch",
                             f"the file is a {self.version}, not a {self.expect}")
        return self.version

    def _root_version(self) -> str | None:
        """The document element's namespace when a long prolog hides it from the head."""
        context = etree.iterparse(str(self.path), events=("start",), resolve_entities=False,
                                  no_network=True, load_dtd=False, huge_tree=False)
        try:
            for _event, elem in context:
                self._refuse_dtd(elem.getroottree())
                match = _NS_RE.search(str(elem.tag).encode())
                return match.group(1).decode() if match else None
        except etree.XMLSyntaxError as exc:
            raise self._syntax(exc) from None
        return None

    # step 2: the XSD ----------------------------------------------------------------------------
    def check_schema(self) -> None:
        """Validate the whole file against its version's XSD before reading any entry:
        streamed through libxml2, and on failure explained by xmlschema (path and line)."""
        try:
            xsd = libxml_schema(self.version)
        except FileNotFoundError:
            raise self.error("xsd_unknown", f"no schema for {self.version}") from None
        root_tag = f"{{{self.ns}}}Document"
        context = etree.iterparse(
            str(self.path), events=("start", "end"), tag=(root_tag, f"{{{self.ns}}}Ntry"),
            schema=xsd, resolve_entities=False, no_network=True, load_dtd=False,
            huge_tree=False, remove_comments=True,
        )
        try:
            for event, elem in context:
                if event == "start":
                    if elem.tag == root_tag:
                        self._refuse_dtd(elem.getroottree())
                    continue
                elem.clear()
                parent = elem.getparent()
                while elem.getprevious() is not None and parent is not None:
                    del parent[0]
        except etree.XMLSyntaxError as exc:
            if self.path.stat().st_size <= EXPLAIN_LIMIT:
                raise self._explain() from None
            line = exc.lineno if isinstance(exc.lineno, int) and exc.lineno > 0 else None
            if line is not None:
                raise self._syntax(exc) from None
            reason = str(exc.msg if hasattr(exc, "msg") else exc).replace(f"{{{self.ns}}}", "")
            raise self.error("xsd", f"not a valid {self.version}: {reason}") from None

    def _explain(self) -> PaymentFileError:
        try:
            tree = etree.parse(str(self.path), safe_parser())
        except etree.XMLSyntaxError as exc:
            return self._syntax(exc)
        self._refuse_dtd(tree)
        error = next(iter(schema(self.version).iter_errors(tree)), None)
        if error is None:  # pragma: no cover - libxml2 and xmlschema agree on the corpus
            return self.error("xsd", f"not a valid {self.version}")
        line = getattr(error, "sourceline", None)
        path = getattr(error, "path", None) or ""
        reason = (error.reason or str(error)).replace(f"{{{self.ns}}}", "")
        return self.error("xsd", f"not a valid {self.version}: {reason}",
                          line=line if isinstance(line, int) else None,
                          field_name=_strip_ns(path, self.ns) or None)

    def _syntax(self, exc: etree.XMLSyntaxError) -> PaymentFileError:
        line = exc.lineno if isinstance(exc.lineno, int) and exc.lineno > 0 else None
        message = exc.msg if hasattr(exc, "msg") else str(exc)
        if "entity" in str(message).lower():
            return self.error("dtd_refused", f"entities are refused ({message})", line=line)
        return self.error("xml_syntax", f"not well-formed XML ({message}); the file may be "
                          "truncated", line=line)

    def _refuse_dtd(self, tree: Any) -> None:
        info = tree.docinfo
        if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
            raise self.error("dtd_refused", "DTDs and entity declarations are refused in "
                             "statements", line=1)

    # step 3: the entries, streamed --------------------------------------------------------------
    def entries(self) -> Iterator[CamtEntry]:
        if not self.version:
            self.sniff()
        if self.validate:
            self.check_schema()
        _document, block = MESSAGES[self.message]
        ns = self.ns
        tag_block = f"{{{ns}}}{block}"
        tag_entry = f"{{{ns}}}Ntry"
        tag_acct = f"{{{ns}}}Acct"
        tag_grp = f"{{{ns}}}GrpHdr"
        message_id: str | None = None
        statement: CamtStatement | None = None
        index = 0
        skip = len(ns) + 2
        context = etree.iterparse(
            str(self.path), events=("start", "end"),
            tag=(tag_block, tag_grp, tag_acct, tag_entry), resolve_entities=False,
            no_network=True, load_dtd=False, huge_tree=False, remove_comments=True,
        )
        first = True
        try:
            for event, elem in context:
                if first:
                    first = False
                    self._refuse_dtd(elem.getroottree())
                if event == "start":
                    if elem.tag == tag_block:
                        statement = None
                    continue
                tag = elem.tag
                if tag == tag_entry:
                    if statement is None:  # an XSD-valid file always has Acct before Ntry
                        raise self.error("structure", "entry before its account",
                                         line=elem.sourceline)
                    yield self._entry(Node.of(elem, skip), statement, index)
                    index += 1
                    elem.clear()
                    parent = elem.getparent()
                    while elem.getprevious() is not None and parent is not None:
                        del parent[0]
                elif tag == tag_grp:
                    message_id = self._text(Node.of(elem, skip), "MsgId")
                elif tag == tag_acct and elem.getparent() is not None \
                        and elem.getparent().tag == tag_block:
                    statement = self._statement(Node.of(elem.getparent(), skip),
                                                Node.of(elem, skip), message_id)
                    self.statements.append(statement)
        except etree.XMLSyntaxError as exc:
            raise self._syntax(exc) from None

    # element helpers ----------------------------------------------------------------------------
    def _find(self, elem: Node, path: str) -> Node | None:
        return elem.find(path)

    def _text(self, elem: Any, path: str) -> str | None:
        found = self._find(elem, path)
        if found is None or found.text is None:
            return None
        text = found.text.strip()
        return text or None

    def _first(self, elem: Any, *paths: str) -> str | None:
        for path in paths:
            value = self._text(elem, path)
            if value is not None:
                return value
        return None

    def _statement(self, block: Any, acct: Any, message_id: str | None) -> CamtStatement:
        created = self._text(block, "CreDtTm")
        origin = Origin(self.file, block.sourceline)
        account = CamtAccount(
            iban=self._text(acct, "Id/IBAN"),
            other_id=self._first(acct, "Id/Othr/Id", "Id/PrtryAcct/Id", "Id/BBAN", "Id/UPIC"),
            currency=self._text(acct, "Ccy"),
            name=self._text(acct, "Nm"),
            owner=self._first(acct, "Ownr/Nm", "Ownr/Pty/Nm"),
            servicer_bic=self._first(acct, "Svcr/FinInstnId/BIC", "Svcr/FinInstnId/BICFI"),
        )
        return CamtStatement(
            message=self.message, version=self.version, message_id=message_id,
            statement_id=self._text(block, "Id"),
            created_at=parse_datetime(created, origin, "CreDtTm", default_tz=self.default_tz)
            if created else None,
            account=account,
            electronic_sequence=self._text(block, "ElctrncSeqNb"),
            legal_sequence=self._text(block, "LglSeqNb"),
        )

    def _amount(self, elem: Any, origin: Origin, where: str) -> tuple[Decimal, str]:
        currency = check_currency(elem.get("Ccy") or "", origin, f"{where}/@Ccy")
        try:
            value = Decimal((elem.text or "").strip())
        except InvalidOperation:
            raise origin.error("amount_format", f"{elem.text!r} is not an amount",
                               where) from None
        return exact(value, currency, origin, where), currency

    def _when(self, elem: Any, path: str, origin: Origin) -> tuple[date | None, datetime | None]:
        day = self._text(elem, f"{path}/Dt")
        if day is not None:
            try:
                return date.fromisoformat(day[:10]), None
            except ValueError:
                raise origin.error("date_format", f"{day!r} is not a date",
                                   f"{path}/Dt") from None
        moment = self._text(elem, f"{path}/DtTm")
        if moment is None:
            return None, None
        # the business day is the bank's own: the date as written, before any conversion
        instant = parse_datetime(moment, origin, f"{path}/DtTm", default_tz=self.default_tz)
        return date.fromisoformat(moment[:10]), instant

    def _entry(self, elem: Any, statement: CamtStatement, index: int) -> CamtEntry:
        origin = Origin(self.file, elem.sourceline, index)
        amt = self._find(elem, "Amt")
        amount, currency = self._amount(amt, origin, "Ntry/Amt")
        booking_date, booked_at = self._when(elem, "BookgDt", origin)
        value_date, _valued_at = self._when(elem, "ValDt", origin)
        status = self._first(elem, "Sts/Cd", "Sts/Prtry", "Sts") or ""
        reversal = (self._text(elem, "RvslInd") or "").lower() in {"true", "1"}
        btc = self._bank_code(elem)
        batch = self._find(elem, "NtryDtls/Btch")
        if batch is None:
            batch = self._find(elem, "Btch")
        transactions = tuple(
            self._transaction(tx, origin) for tx in elem.findall("NtryDtls/TxDtls"))
        count = self._text(batch, "NbOfTxs") if batch is not None else None
        return CamtEntry(
            statement=statement, origin=origin, amount=amount, currency=currency,
            credit_debit=self._text(elem, "CdtDbtInd") or "", status=status, reversal=reversal,
            entry_reference=self._text(elem, "NtryRef"),
            booking_date=booking_date, booked_at=booked_at, value_date=value_date,
            account_servicer_reference=self._text(elem, "AcctSvcrRef"),
            bank_transaction_code=btc,
            batch_message_id=self._text(batch, "MsgId") if batch is not None else None,
            batch_payment_information_id=self._text(batch, "PmtInfId")
            if batch is not None else None,
            batch_transactions=int(count) if count and count.isdigit() else None,
            additional_info=self._text(elem, "AddtlNtryInf"),
            transactions=transactions,
        )

    def _bank_code(self, elem: Any) -> str | None:
        domain = self._text(elem, "BkTxCd/Domn/Cd")
        if domain:
            family = self._text(elem, "BkTxCd/Domn/Fmly/Cd") or ""
            sub = self._text(elem, "BkTxCd/Domn/Fmly/SubFmlyCd") or ""
            return "-".join(p for p in (domain, family, sub) if p)
        return self._text(elem, "BkTxCd/Prtry/Cd")

    def _party(self, tx: Any, role: str) -> CamtParty | None:
        name = self._first(tx, f"RltdPties/{role}/Nm", f"RltdPties/{role}/Pty/Nm")
        account = self._first(tx, f"RltdPties/{role}Acct/Id/IBAN",
                              f"RltdPties/{role}Acct/Id/Othr/Id")
        agent = self._first(tx, f"RltdAgts/{role}Agt/FinInstnId/BIC",
                            f"RltdAgts/{role}Agt/FinInstnId/BICFI")
        identifier = self._first(
            tx, f"RltdPties/{role}/Id/OrgId/Othr/Id", f"RltdPties/{role}/Pty/Id/OrgId/Othr/Id",
            f"RltdPties/{role}/Id/OrgId/BICOrBEI", f"RltdPties/{role}/Id/OrgId/AnyBIC",
            f"RltdPties/{role}/Id/PrvtId/Othr/Id", f"RltdPties/{role}/Pty/Id/PrvtId/Othr/Id",
        )
        if not any((name, account, agent, identifier)):
            return None
        return CamtParty(name=name, account=account, agent=agent, identifier=identifier)

    def _transaction(self, tx: Any, origin: Origin) -> CamtTransaction:
        amount: Decimal | None = None
        currency: str | None = None
        for path in ("Amt", "AmtDtls/TxAmt/Amt", "AmtDtls/InstdAmt/Amt"):
            found = self._find(tx, path)
            if found is not None:
                amount, currency = self._amount(found, origin, f"TxDtls/{path}")
                break
        proprietary = tuple(
            (self._text(p, "Tp") or "", self._text(p, "Ref") or "")
            for p in tx.findall("Refs/Prtry")
        )
        remittance = tuple(
            u.text.strip() for u in tx.findall("RmtInf/Ustrd")
            if u.text and u.text.strip()
        )
        return CamtTransaction(
            message_id=self._text(tx, "Refs/MsgId"),
            account_servicer_reference=self._text(tx, "Refs/AcctSvcrRef"),
            payment_information_id=self._text(tx, "Refs/PmtInfId"),
            instruction_id=self._text(tx, "Refs/InstrId"),
            end_to_end_id=self._text(tx, "Refs/EndToEndId"),
            transaction_id=self._text(tx, "Refs/TxId"),
            uetr=self._text(tx, "Refs/UETR"),
            mandate_id=self._text(tx, "Refs/MndtId"),
            proprietary_references=proprietary,
            amount=amount, currency=currency,
            credit_debit=self._text(tx, "CdtDbtInd"),
            debtor=self._party(tx, "Dbtr"),
            creditor=self._party(tx, "Cdtr"),
            ultimate_debtor=self._first(tx, "RltdPties/UltmtDbtr/Nm",
                                        "RltdPties/UltmtDbtr/Pty/Nm"),
            ultimate_creditor=self._first(tx, "RltdPties/UltmtCdtr/Nm",
                                          "RltdPties/UltmtCdtr/Pty/Nm"),
            remittance=remittance,
            creditor_reference=self._text(tx, "RmtInf/Strd/CdtrRefInf/Ref"),
            additional_info=self._text(tx, "AddtlTxInf"),
            return_reason=self._first(tx, "RtrInf/Rsn/Cd", "RtrInf/Rsn/Prtry"),
        )


def _strip_ns(path: str, ns: str) -> str:
    return path.replace(f"{{{ns}}}", "").replace("ns:", "")


def read_camt(path: str | Path, *, expect: str | None = None,
              default_tz: tzinfo = UTC) -> Iterator[CamtEntry]:
    """Every entry of a camt.052/053/054 file, after checking it against its XSD."""
    return CamtReader(path, expect=expect, default_tz=default_tz).entries()
