"""SWIFT MT940 (customer statement) and MT942 (interim transaction report), parsed with the
``mt-940`` library.

The file is streamed one statement at a time: a new statement starts at every ``:20:`` line,
and each block goes through ``mt940.parse`` on its own, so a year of statements in one file
never sits in memory as one parse. The library's own parsing stays as it is (its defaults,
which the shared test corpus was written against); what it cannot tell (a currency ISO 4217
does not know, an amount with more decimals than its currency has, a block it cannot parse) is
an error here naming the file, the line and the field.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import mt940

from connectors.payments.common import (
    Origin,
    PaymentFileError,
    check_currency,
    exact,
    file_label,
)

_STATEMENT_START = re.compile(r"^:20:")
_TRANSACTION_LINE = re.compile(r"^:61:")
_TAG = re.compile(r"^:(\d\d[A-Z]?|NS):")
_MT942_MARKERS = re.compile(r"^(:13D?:|:34F:|:90[CD]:)|\{2:[IO]942", re.MULTILINE)

CREDIT_MARKS = {"C": (True, False), "RD": (True, True), "D": (False, False),
                "RC": (False, True)}
"""Mark -> (credit, reversal): a reversal of a debit puts money back, of a credit takes it."""


@dataclass(frozen=True, slots=True)
class Mt940Statement:
    message: str
    """``MT940`` or ``MT942``."""
    transaction_reference: str | None
    account: str | None
    statement_number: str | None
    sequence_number: str | None
    currency: str | None
    created_at: datetime | None
    """``:13D:`` of an MT942, aware."""


@dataclass(frozen=True, slots=True)
class Mt940Line:
    """One ``:61:`` statement line with its ``:86:`` details."""

    statement: Mt940Statement
    origin: Origin
    amount: Decimal
    """Magnitude."""
    currency: str
    mark: str
    """``C``, ``D``, ``RC`` or ``RD``."""
    credit: bool
    reversal: bool
    value_date: date
    entry_date: date | None
    type_code: str | None
    customer_reference: str | None
    bank_reference: str | None
    extra_details: str | None
    details: str | None
    end_to_end_reference: str | None = None
    purpose: str | None = None
    applicant_name: str | None = None
    applicant_iban: str | None = None
    applicant_bin: str | None = None


@contextmanager
def _quiet_library() -> Iterator[None]:
    """The library logs each pattern it fails to match at ERROR; the error raised here says
    it once, with the file and line."""
    logger = logging.getLogger("mt940")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _blocks(path: Path, file: str) -> Iterator[tuple[int, list[str]]]:
    """(first line number, lines) of each statement block, read line by line."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise PaymentFileError(file, "unreadable", f"cannot read the file ({exc.strerror})"
                               ) from None
    with handle:
        start = 1
        lines: list[str] = []
        for number, raw in enumerate(handle, start=1):
            text = _decode(raw)
            if _STATEMENT_START.match(text) and any(_TAG.match(line) for line in lines):
                yield start, lines
                start, lines = number, []
            lines.append(text)
        if any(line.strip() for line in lines):
            yield start, lines


def _decode(raw: bytes) -> str:
    for encoding in ("utf-8", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")  # pragma: no cover - cp1252 leaves only 5 bytes undefined


class Mt940Reader:
    """Reads one MT940 or MT942 file. ``expect`` (``MT940``/``MT942``) is what the caller
    says it is; without it, an MT942 is told by its ``:13D:``/``:34F:``/``:90x:`` fields."""

    def __init__(self, path: str | Path, *, expect: str | None = None) -> None:
        self.path = Path(path)
        self.file = file_label(path)
        self.expect = expect
        self.statements: list[Mt940Statement] = []

    def lines(self) -> Iterator[Mt940Line]:
        index = 0
        seen_any = False
        for start, block in _blocks(self.path, self.file):
            text = "".join(block)
            seen_any = True
            try:
                with _quiet_library():
                    parsed = mt940.parse(text)
            except Exception as exc:  # the library raises RuntimeError, ValueError, KeyError
                tag, line = _failed_tag(exc, block, start)
                raise PaymentFileError(
                    self.file, "mt940_syntax",
                    f"cannot be parsed as {self.expect or 'MT940'}" + (
                        f" ({_reason(exc)})" if tag is None else ""),
                    line=line, field=tag,
                ) from None
            statement = self._statement(parsed, text)
            self.statements.append(statement)
            starts = [start + i for i, line in enumerate(block) if _TRANSACTION_LINE.match(line)]
            for position, transaction in enumerate(parsed):
                line = starts[position] if position < len(starts) else start
                yield self._line(statement, transaction.data, Origin(self.file, line, index))
                index += 1
        if not seen_any:
            raise PaymentFileError(self.file, "empty_file", "no statement in the file")

    def _statement(self, parsed: Any, text: str) -> Mt940Statement:
        data = parsed.data
        detected = "MT942" if _MT942_MARKERS.search(text) else "MT940"
        if self.expect == "MT940" and detected == "MT942":
            # interim evidence read as a statement of record would count as booked money
            raise PaymentFileError(self.file, "format_mismatch", "the statement carries MT942 "
                                   "fields (:13D:, :34F:, :90C:/:90D:); read it as mt942")
        message = self.expect or detected
        created = data.get("date")
        created_at = None
        if isinstance(created, datetime):
            created_at = (created if created.tzinfo else created.replace(tzinfo=UTC)
                          ).astimezone(UTC)
        currency = None
        for key in ("final_opening_balance", "opening_balance", "intermediate_opening_balance",
                    "final_closing_balance", "closing_balance", "d_floor_limit",
                    "c_floor_limit", "floor_limit"):
            value = data.get(key)
            amount = getattr(value, "amount", value)
            currency = getattr(amount, "currency", None)
            if currency:
                break
        return Mt940Statement(
            message=message,
            transaction_reference=_clean(data.get("transaction_reference")),
            account=_clean(data.get("account_identification")),
            statement_number=_clean(data.get("statement_number")),
            sequence_number=_clean(data.get("sequence_number")),
            currency=currency or parsed.currency,
            created_at=created_at,
        )

    def _line(self, statement: Mt940Statement, data: dict[str, Any], origin: Origin
              ) -> Mt940Line:
        amount = data.get("amount")
        currency = getattr(amount, "currency", None) or data.get("currency") or statement.currency
        if not currency:
            raise origin.error("currency_missing", "no currency: the statement has no balance "
                               "or floor limit that names one", ":61:")
        currency = check_currency(str(currency), origin, ":60F:/:61: currency")
        mark = str(data.get("status") or "").upper()
        if mark not in CREDIT_MARKS:
            raise origin.error("mark", f"debit/credit mark {mark!r} is not C, D, RC or RD",
                               ":61:")
        credit, reversal = CREDIT_MARKS[mark]
        value = abs(Decimal(getattr(amount, "amount", amount)))
        value = exact(value, currency, origin, ":61: amount")
        value_date = data.get("date")
        if not isinstance(value_date, date):
            raise origin.error("date_format", "no value date", ":61:")
        entry = data.get("guessed_entry_date") or data.get("entry_date")
        return Mt940Line(
            statement=statement, origin=origin, amount=value, currency=currency, mark=mark,
            credit=credit, reversal=reversal,
            value_date=_plain_date(value_date),
            entry_date=_plain_date(entry) if isinstance(entry, date) else None,
            type_code=_clean(data.get("id")),
            customer_reference=_reference(data.get("customer_reference")),
            bank_reference=_reference(data.get("bank_reference")),
            extra_details=_clean(data.get("extra_details")),
            details=_clean(data.get("transaction_details")),
            end_to_end_reference=_reference(data.get("end_to_end_reference")),
            purpose=_clean(data.get("purpose")),
            applicant_name=_clean(data.get("applicant_name")),
            applicant_iban=_clean(data.get("applicant_iban")),
            applicant_bin=_clean(data.get("applicant_bin")),
        )


def _plain_date(value: date) -> date:
    if isinstance(value, datetime):
        return value.date()
    return date(value.year, value.month, value.day)


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _reference(value: Any) -> str | None:
    """A reference field; ``NONREF`` means there is none."""
    text = _clean(value)
    if text is None or text.upper() == "NONREF":
        return None
    return text


def _reason(exc: Exception) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    text = re.sub(r"<mt940\.tags\.(\w+) object at 0x[0-9a-f]+>", r"\1", text)
    return text.splitlines()[0][:160]


def _failed_tag(exc: Exception, block: list[str], start: int) -> tuple[str | None, int]:
    """The field the library choked on (``:61:``) and its line, when the error says."""
    tag = next((a for a in exc.args if isinstance(a, mt940.tags.Tag)), None)
    data = next((a for a in exc.args[1:] if isinstance(a, str)), None)
    if tag is None:
        return None, start
    name = f":{tag.id}:"
    first = (data or "").splitlines()[0] if data else ""
    for offset, line in enumerate(block):
        if line.startswith(":") and first and first in line:
            return name, start + offset
    return name, start


def read_mt940(path: str | Path, *, expect: str | None = None) -> Iterator[Mt940Line]:
    return Mt940Reader(path, expect=expect).lines()
