"""pain.002 files: the bank's status report on a pain.001, validated against its version's XSD
and read into plain records.

The whole file is parsed once (a status report covers one payment run: hundreds or thousands
of transactions, not millions) with DTDs, entities and the network refused, and validated with
xmlschema so a refusal names the element and the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
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
    file_label,
    parse_datetime,
    safe_parser,
)

NS_PREFIX = "urn:iso:std:iso:20022:tech:xsd:"
VERSIONS = ("pain.002.001.03", "pain.002.001.12", "pain.002.001.14", "pain.002.001.15")
"""The versions whose official XSD ships in ``xsd/`` (see the README there)."""
MAX_BYTES = 64 * 1024 * 1024
"""A status report larger than this is refused before parsing (a run of 100,000 payments
answered transaction by transaction is about 50 MB)."""
_VERSION_RE = re.compile(r"^urn:iso:std:iso:20022:tech:xsd:(pain\.002\.001\.\d{2})$")


class Outcome(StrEnum):
    """What a status means for the payment: the bank will pay it, will not, or has not
    decided yet."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    PENDING = "pending"


ACCEPTED_STATUSES = frozenset({"ACCP", "ACSC", "ACSP", "ACWC", "ACCC", "ACWP"})
"""Accepted for execution (customer profile, settlement in process or completed, with change,
without posting): the payment is confirmed."""
REJECTED_STATUSES = frozenset({"RJCT", "CANC"})
"""Rejected, or cancelled: the payment will not be made and the bill is payable again."""
# every other status (PDNG, ACTC: technically valid only, RCVD, PART, ACFC, ACIS...) decides
# nothing yet: the payment stays pending until a later report


def outcome(status: str | None) -> Outcome:
    if status in ACCEPTED_STATUSES:
        return Outcome.ACCEPTED
    if status in REJECTED_STATUSES:
        return Outcome.REJECTED
    return Outcome.PENDING


REASONS = {
    "AC01": "incorrect account number", "AC02": "invalid debtor account number",
    "AC03": "invalid creditor account number", "AC04": "closed account number",
    "AC06": "blocked account", "AC13": "invalid debtor account type",
    "AG01": "transaction forbidden", "AG02": "invalid bank operation code",
    "AM01": "zero amount", "AM02": "not allowed amount", "AM03": "not allowed currency",
    "AM04": "insufficient funds", "AM05": "duplication", "AM09": "wrong amount",
    "BE04": "missing creditor address", "BE05": "unrecognised initiating party",
    "CNOR": "creditor bank is not registered", "DNOR": "debtor bank is not registered",
    "DUPL": "duplicate payment", "ED05": "settlement failed", "FF01": "invalid file format",
    "MS02": "not specified reason, customer generated",
    "MS03": "not specified reason, agent generated", "NARR": "narrative",
    "RC01": "bank identifier incorrect", "RR04": "regulatory reason", "TM01": "cut-off time",
}  # fmt: skip
"""Common codes of the ISO 20022 external status reason code list, for operators."""


class Pain002Error(PaymentFileError):
    """A status report that cannot be read: the file, the line, the element and the rule."""


@dataclass(frozen=True, slots=True)
class StatusReason:
    code: str | None
    """The ISO external reason code (``AC04``) or the bank's proprietary one."""
    text: str | None
    """The bank's additional information, joined."""

    def describe(self) -> str:
        """``AC04 (closed account number): Account closed``, for operators."""
        name = REASONS.get(self.code or "")
        head = f"{self.code} ({name})" if self.code and name else (self.code or "")
        return ": ".join(part for part in (head, self.text) if part) or "no reason given"


@dataclass(frozen=True, slots=True)
class TransactionStatus:
    """One transaction of the original pain.001, as the bank reports it."""

    end_to_end_id: str | None
    instruction_id: str | None
    status: str | None
    """``TxSts``; None when the report leaves it to the block's or the group's status."""
    reason: StatusReason | None
    payment_information_id: str | None
    amount: Decimal | None = None
    currency: str | None = None
    status_id: str | None = None
    accepted_at: datetime | None = None
    line: int | None = None


@dataclass(frozen=True, slots=True)
class PaymentInformationStatus:
    """The status of one payment information block (``OrgnlPmtInfAndSts``)."""

    payment_information_id: str
    status: str | None
    reason: StatusReason | None


@dataclass(frozen=True, slots=True)
class StatusReport:
    file: str
    version: str
    """e.g. ``pain.002.001.03``."""
    message_id: str
    created_at: datetime
    original_message_id: str
    original_message_name: str
    """``pain.001.001.09`` for our payment runs."""
    group_status: str | None
    group_reason: StatusReason | None
    blocks: tuple[PaymentInformationStatus, ...]
    transactions: tuple[TransactionStatus, ...]

    def status_of(self, tx: TransactionStatus | None, payment_information_id: str | None
                  ) -> tuple[str | None, StatusReason | None]:
        """A transaction's status: its own, else its block's, else the group's (a block or a
        group status that is only partial, ``PART``, says nothing about one transaction).
        ``tx`` None: a transaction the report does not list."""
        if tx is not None and tx.status:
            return tx.status, tx.reason
        block_id = tx.payment_information_id if tx is not None else payment_information_id
        for block in self.blocks:
            if block.payment_information_id == block_id and block.status not in (None, "PART"):
                return block.status, block.reason
        if self.group_status not in (None, "PART"):
            return self.group_status, self.group_reason
        return None, None


@cache
def schema(version: str) -> xmlschema.XMLSchema:
    """The official XSD of one version, loaded once per process."""
    path = resources.files("connectors.pain002") / "xsd" / f"{version}.xsd"
    return xmlschema.XMLSchema(str(path))


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = file_label(path)
        self.ns = ""

    def error(self, rule: str, message: str, *, line: int | None = None,
              element: str | None = None) -> Pain002Error:
        return Pain002Error(self.file, rule, message, line=line, field=element)

    def parse(self) -> Any:
        try:
            size = self.path.stat().st_size
            if size > MAX_BYTES:
                raise self.error("too_large", f"{size} bytes, more than the {MAX_BYTES} a "
                                 "status report may have")
            data = self.path.read_bytes()
        except OSError as exc:
            raise self.error("unreadable", f"cannot read the file ({exc.strerror})") from None
        if not data.strip():
            raise self.error("empty_file", "the file is empty")
        dtd = DTD_RE.search(data)
        if dtd:
            raise self.error("dtd_refused", "DTDs and entity declarations are refused in "
                             "status reports", line=data[: dtd.start()].count(b"\n") + 1)
        try:
            root = etree.fromstring(data, safe_parser())
        except etree.XMLSyntaxError as exc:
            line = exc.lineno if isinstance(exc.lineno, int) and exc.lineno > 0 else None
            raise self.error("xml_syntax", f"not well-formed XML ({exc.msg}); the file may be "
                             "truncated", line=line) from None
        info = root.getroottree().docinfo
        if info.doctype or info.internalDTD is not None:  # pragma: no cover - regex first
            raise self.error("dtd_refused", "DTDs are refused in status reports", line=1)
        return root

    def version(self, root: Any) -> str:
        namespace = etree.QName(root).namespace or ""
        found = _VERSION_RE.match(namespace)
        if not found:
            raise self.error("not_pain002", f"the document element is {{{namespace}}}"
                             f"{etree.QName(root).localname}, not an ISO 20022 pain.002 "
                             "Document", line=root.sourceline)
        version = found.group(1)
        if version not in VERSIONS:
            raise self.error("version_unsupported", f"{version} is not supported (supported: "
                             f"{', '.join(VERSIONS)})", line=root.sourceline)
        self.ns = NS_PREFIX + version
        return version

    def validate(self, root: Any, version: str) -> None:
        error = next(iter(schema(version).iter_errors(root)), None)
        if error is None:
            return
        line = getattr(error, "sourceline", None)
        reason = (error.reason or str(error)).replace(f"{{{self.ns}}}", "")
        path = (getattr(error, "path", None) or "").replace(f"{{{self.ns}}}", "")
        found = error.obj if isinstance(error.obj, str) else getattr(error.obj, "text", None)
        if isinstance(found, str) and found.strip() and len(found) <= 140:
            reason += f" (found {found.strip()!r})"
        raise self.error("xsd", f"not a valid {version}: {reason}",
                         line=line if isinstance(line, int) else None, element=path or None)

    # reading ----------------------------------------------------------------------------------
    def q(self, path: str) -> str:
        return "/".join(f"{{{self.ns}}}{part}" for part in path.split("/"))

    def text(self, elem: Any, path: str) -> str | None:
        found = elem.find(self.q(path))
        if found is None or found.text is None:
            return None
        return found.text.strip() or None

    def reason(self, elem: Any) -> StatusReason | None:
        infos = elem.findall(self.q("StsRsnInf"))
        if not infos:
            return None
        code = None
        texts: list[str] = []
        for info in infos:
            code = code or self.text(info, "Rsn/Cd") or self.text(info, "Rsn/Prtry")
            texts.extend(t.text.strip() for t in info.findall(self.q("AddtlInf"))
                         if t.text and t.text.strip())
        return StatusReason(code=code, text=" ".join(texts) or None)

    def when(self, elem: Any, path: str) -> datetime | None:
        text = self.text(elem, path)
        if text is None:
            return None
        found = elem.find(self.q(path))
        return parse_datetime(text, Origin(self.file, found.sourceline), path, default_tz=UTC)

    def amount(self, tx: Any) -> tuple[Decimal | None, str | None]:
        found = tx.find(self.q("OrgnlTxRef/Amt/InstdAmt"))
        if found is None:
            found = tx.find(self.q("OrgnlTxRef/Amt/EqvtAmt/Amt"))
        if found is None:
            return None, None
        try:
            return Decimal(found.text.strip()), found.get("Ccy")
        except (InvalidOperation, AttributeError):  # pragma: no cover - the XSD checks it
            raise self.error("amount", f"{found.text!r} is not an amount",
                             line=found.sourceline, element="OrgnlTxRef/Amt") from None

    def transaction(self, tx: Any, block_id: str | None) -> TransactionStatus:
        amount, currency = self.amount(tx)
        return TransactionStatus(
            end_to_end_id=self.text(tx, "OrgnlEndToEndId"),
            instruction_id=self.text(tx, "OrgnlInstrId"), status=self.text(tx, "TxSts"),
            reason=self.reason(tx), payment_information_id=block_id, amount=amount,
            currency=currency, status_id=self.text(tx, "StsId"),
            accepted_at=self.when(tx, "AccptncDtTm"), line=tx.sourceline)

    def report(self, root: Any, version: str) -> StatusReport:
        body = root[0]
        group = body.find(self.q("OrgnlGrpInfAndSts"))
        blocks = []
        transactions = []
        for block in body.findall(self.q("OrgnlPmtInfAndSts")):
            block_id = self.text(block, "OrgnlPmtInfId") or ""
            blocks.append(PaymentInformationStatus(
                payment_information_id=block_id, status=self.text(block, "PmtInfSts"),
                reason=self.reason(block)))
            transactions.extend(self.transaction(tx, block_id)
                                for tx in block.findall(self.q("TxInfAndSts")))
        created = self.when(body, "GrpHdr/CreDtTm")
        assert created is not None  # required by every version's XSD
        return StatusReport(
            file=self.file, version=version, message_id=self.text(body, "GrpHdr/MsgId") or "",
            created_at=created, original_message_id=self.text(group, "OrgnlMsgId") or "",
            original_message_name=self.text(group, "OrgnlMsgNmId") or "",
            group_status=self.text(group, "GrpSts"), group_reason=self.reason(group),
            blocks=tuple(blocks), transactions=tuple(transactions))


def read_pain002(path: str | Path, *, validate: bool = True) -> StatusReport:
    """The status report in ``path``: refused (``Pain002Error``) when it declares a DTD or an
    entity, is not well-formed, is not a supported pain.002 version or breaks its XSD."""
    reader = _Reader(Path(path))
    root = reader.parse()
    version = reader.version(root)
    if validate:
        reader.validate(root, version)
    return reader.report(root, version)
