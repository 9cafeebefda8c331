"""What every payment file reader shares: errors that say where, strict amounts and currencies,
dates and times, and a streaming CSV reader that checks its header.

A reader never guesses: an amount with more decimals than its currency has, a currency ISO 4217
does not know, a missing column or a date in the wrong shape is an error naming the file, the
line, the field and the rule, so an operator can find it in the file.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lxml import etree

from canonical.money import MoneyError, minor_unit, quantize_exact
from connectors.errors import InvalidRecordError

MAX_FIELD = 100_000
"""Longest CSV field accepted (the csv module's default limit, stated)."""


DTD_RE = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)
"""A DTD or an entity declaration: refused in every XML file read here, before parsing."""


def safe_parser() -> etree.XMLParser:
    """lxml's parser for files from outside: no entities resolved, no DTD loaded, no network,
    no huge trees."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True)


class PaymentFileError(InvalidRecordError):
    """A payment file (or one record of it) that cannot be read as what it claims to be.

    ``rule`` is a short name of the broken rule (``missing_column``, ``amount_decimals``,
    ``xsd``, ``dtd_refused``...), so tests and dead letters can tell failures apart without
    parsing the sentence.
    """

    def __init__(
        self, file: str, rule: str, message: str, *, line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = file
        self.rule = rule
        self.line = line
        self.field = field
        self.reason = message
        where = file + (f": line {line}" if line is not None else "")
        what = f"{field}: " if field else ""
        super().__init__(f"{where}: {what}{message} [{rule}]")
        self.system = "payments"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record starts: the file (its name, not its path) and the line."""

    file: str
    line: int | None = None
    index: int | None = None

    def error(self, rule: str, message: str, field: str | None = None) -> PaymentFileError:
        return PaymentFileError(self.file, rule, message, line=self.line, field=field)


def file_label(source: str | Path) -> str:
    return Path(source).name


# currencies and amounts ---------------------------------------------------------------------
_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_INTEGER = re.compile(r"^[+-]?\d+$")


def check_currency(code: str, origin: Origin, field: str) -> str:
    code = code.strip()
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise origin.error("currency_format", f"{code!r} is not a three-letter currency code",
                           field)
    try:
        minor_unit(code)
    except MoneyError:
        raise origin.error("currency_unknown", f"{code!r} is not an ISO 4217 currency",
                           field) from None
    return code


def parse_amount(
    text: str, currency: str, origin: Origin, field: str, *, exponent: int | None = None,
    decimal_comma: bool = False, signed: bool = False,
) -> Decimal:
    """A decimal amount in major units, exact to the currency's minor unit (``exponent``
    overrides ISO 4217 for providers that count some currencies differently)."""
    raw = text.strip()
    if decimal_comma:
        raw = raw.replace(",", ".")
    if not _DECIMAL.match(raw):
        raise origin.error("amount_format", f"{text!r} is not a decimal amount", field)
    if not signed and raw.startswith("-"):
        raise origin.error("amount_sign", f"{text!r} is negative; this column takes magnitudes",
                           field)
    try:
        value = Decimal(raw)
    except InvalidOperation:  # pragma: no cover - the pattern guarantees it
        raise origin.error("amount_format", f"{text!r} is not a decimal amount", field) from None
    return exact(value, currency, origin, field, exponent=exponent)


def exact(value: Decimal, currency: str, origin: Origin, field: str, *,
          exponent: int | None = None) -> Decimal:
    try:
        return quantize_exact(value, currency, places=exponent)
    except MoneyError:
        places = minor_unit(currency) if exponent is None else exponent
        raise origin.error(
            "amount_decimals",
            f"{value} has more decimals than {currency} allows ({places})", field,
        ) from None


def parse_minor_units(
    text: str, currency: str, origin: Origin, field: str, *,
    exponents: Mapping[str, int] | None = None,
) -> Decimal:
    """An integer count of the provider's minor units, as a Decimal in major units."""
    raw = text.strip()
    if not _INTEGER.match(raw):
        raise origin.error("amount_format", f"{text!r} is not a whole number of minor units",
                           field)
    if raw.startswith("-"):
        raise origin.error("amount_sign", f"{text!r} is negative; the debit/credit column "
                           "gives the direction", field)
    places = (exponents or {}).get(currency)
    if places is None:
        places = minor_unit(currency)
    return Decimal(int(raw)).scaleb(-places)


# dates and times ----------------------------------------------------------------------------
def parse_date(text: str, origin: Origin, field: str, *, formats: Sequence[str] = ("%Y-%m-%d",)
               ) -> date:
    raw = text.strip()
    for fmt in formats:
        try:
            return datetime.strptime(raw, fmt).date()
        except ValueError:
            continue
    raise origin.error("date_format", f"{text!r} is not a date ({' or '.join(formats)})", field)


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_datetime(
    text: str, origin: Origin, field: str, *, default_tz: tzinfo | None = None,
    formats: Sequence[str] = (),
) -> datetime:
    """An ISO 8601 (or one of ``formats``) instant; without an offset it is read in
    ``default_tz``, and without one of those it is an error (times are always aware)."""
    raw = text.strip()
    value: datetime | None = None
    candidate = _FRACTION.sub(r"\1", raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    try:
        value = datetime.fromisoformat(candidate)
    except ValueError:
        for fmt in formats:
            try:
                value = datetime.strptime(raw, fmt)
                break
            except ValueError:
                continue
    if value is None:
        raise origin.error("datetime_format", f"{text!r} is not a date and time", field)
    if value.tzinfo is None:
        if default_tz is None:
            raise origin.error("datetime_naive", f"{text!r} has no UTC offset", field)
        value = value.replace(tzinfo=default_tz)
    return value.astimezone(UTC)


_ABBREVIATIONS: dict[str, tzinfo] = {
    "UTC": UTC, "GMT": UTC, "Z": UTC,
    "CET": timezone(timedelta(hours=1)), "CEST": timezone(timedelta(hours=2)),
    "WET": UTC, "WEST": timezone(timedelta(hours=1)),
    "EET": timezone(timedelta(hours=2)), "EEST": timezone(timedelta(hours=3)),
    "PST": timezone(timedelta(hours=-8)), "PDT": timezone(timedelta(hours=-7)),
    "EST": timezone(timedelta(hours=-5)), "EDT": timezone(timedelta(hours=-4)),
    "SGT": timezone(timedelta(hours=8)), "HKT": timezone(timedelta(hours=8)),
    "JST": timezone(timedelta(hours=9)), "ICT": timezone(timedelta(hours=7)),
    "WIB": timezone(timedelta(hours=7)), "PHT": timezone(timedelta(hours=8)),
    "MYT": timezone(timedelta(hours=8)), "AEST": timezone(timedelta(hours=10)),
}  # fmt: skip
_OFFSET = re.compile(r"^(?:UTC|GMT)?([+-])(\d{1,2}):?(\d{2})?$")


def parse_timezone(text: str, origin: Origin, field: str) -> tzinfo:
    """A zone name (``Europe/Amsterdam``), an abbreviation a report uses (``CET``), or an
    offset (``+08:00``, ``GMT+8``)."""
    zone = timezone_of(text)
    if zone is None:
        raise origin.error("timezone_unknown", f"{text!r} is not a time zone", field)
    return zone


def timezone_of(text: str) -> tzinfo | None:
    """``parse_timezone``'s zone, or None for a text it refuses."""
    raw = text.strip()
    if raw.upper() in _ABBREVIATIONS:
        return _ABBREVIATIONS[raw.upper()]
    match = _OFFSET.match(raw)
    if match:
        sign = -1 if match.group(1) == "-" else 1
        delta = timedelta(hours=int(match.group(2)), minutes=int(match.group(3) or 0))
        return timezone(sign * delta) if delta < timedelta(hours=24) else None
    try:
        return ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def optional(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    return text or None


# CSV ----------------------------------------------------------------------------------------
def column_key(name: str) -> str:
    """A column name as the readers match it: spacing, case and a byte-order mark aside."""
    return " ".join(name.replace("\ufeff", "").split()).casefold()


class CsvFile:
    """A CSV file read row by row: the header is checked for the required columns first, then
    each row comes with the line it started on, keyed by the canonical column names."""

    def __init__(
        self, stream: IO[str], *, file: str, required: Sequence[str],
        optional_columns: Sequence[str] = (), delimiter: str | None = None,
    ) -> None:
        self.file = file
        self._stream = stream
        first = stream.readline()
        if not first.strip():
            raise PaymentFileError(file, "empty_file", "no header line", line=1)
        self.delimiter = delimiter or _sniff_delimiter(first)
        header = next(csv.reader(io.StringIO(first), delimiter=self.delimiter))
        known = {column_key(name): name for name in (*required, *optional_columns)}
        self.columns: list[str | None] = [known.get(column_key(h)) for h in header]
        present = {c for c in self.columns if c}
        missing = [name for name in required if name not in present]
        if missing:
            raise PaymentFileError(
                file, "missing_column",
                "missing column" + ("s " if len(missing) > 1 else " ")
                + ", ".join(repr(m) for m in missing), line=1,
            )
        seen: set[str] = set()
        for column in self.columns:
            if column and column in seen:
                raise PaymentFileError(file, "duplicate_column", f"column {column!r} twice",
                                       line=1)
            if column:
                seen.add(column)
        self.width = len(header)

    def rows(self) -> Iterator[tuple[Origin, dict[str, str]]]:
        reader = csv.reader(self._stream, delimiter=self.delimiter, strict=True)
        line = 2  # the header was line 1
        index = 0
        while True:
            start = line
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise PaymentFileError(self.file, "csv_syntax", str(exc), line=start) from None
            line = reader.line_num + 2
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != self.width:
                raise PaymentFileError(
                    self.file, "field_count",
                    f"{len(values)} fields where the header has {self.width}", line=start,
                )
            row = {col: value for col, value in zip(self.columns, values, strict=True) if col}
            yield Origin(self.file, start, index), row
            index += 1


def _sniff_delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def csv_delimiter(path: str | Path) -> str:
    """The delimiter ``CsvFile`` reads the file with, judged from its header line as it
    judges it (``,`` for a file without one)."""
    with open_text(path) as fh:
        return _sniff_delimiter(fh.readline())


def open_text(path: str | Path) -> IO[str]:
    """Text with a BOM dropped and lines kept as they are (the csv module wants that)."""
    return open(path, encoding="utf-8-sig", newline="")


def require(row: Mapping[str, str], column: str, origin: Origin) -> str:
    value = (row.get(column) or "").strip()
    if not value:
        raise origin.error("required", "empty; a value is required", column)
    return value


def choice(row: Mapping[str, str], column: str, origin: Origin, allowed: Mapping[str, Any]
           ) -> Any:
    value = require(row, column, origin)
    key = value.casefold()
    for name, result in allowed.items():
        if name.casefold() == key:
            return result
    raise origin.error("enum", f"{value!r} is not one of {', '.join(allowed)}", column)


def read_csv_rows(
    path: str | Path, *, required: Sequence[str], optional_columns: Sequence[str] = (),
) -> Iterator[tuple[Origin, dict[str, str]]]:
    """Rows of a CSV payment file, streamed, after the header has been checked."""
    file = file_label(path)
    try:
        handle = open_text(path)
    except OSError as exc:
        raise PaymentFileError(file, "unreadable", f"cannot read the file ({exc.strerror})"
                               ) from None
    with handle:
        table = CsvFile(handle, file=file, required=required,
                        optional_columns=optional_columns)
        yield from table.rows()
