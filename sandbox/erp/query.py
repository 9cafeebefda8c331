"""The subset of NetSuite's record-collection ``q`` filter the ERP sandbox understands.

Grammar (operators and ``AND``/``OR`` are upper case, as NetSuite writes them; ``AND`` binds
tighter than ``OR``)::

    expr      := term ("OR" term)*
    term      := factor ("AND" factor)*
    factor    := "(" expr ")" | condition
    condition := FIELD OPERATOR [VALUE]
    VALUE     := "double-quoted string" | number | true | false

Dates follow the account's date format preference ``M/D/YYYY`` (a two-digit year is read as
20YY), optionally with a time ``h:mm am|pm`` (seconds allowed), read in the account time zone
and compared at the granularity given: a date alone is the whole day.

A condition compiles to a predicate over the stored record dict. Stored datetimes are always
``YYYY-MM-DDTHH:MM:SSZ`` (UTC), so date bounds are compared as strings, which keeps a filter
over a quarter of a million records well under a second.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "DATE_OPERATORS",
    "QueryError",
    "compile_query",
    "format_datetime",
    "parse_date_literal",
]

Predicate = Callable[[Mapping[str, Any]], bool]

DATE_OPERATORS = frozenset({"AFTER", "BEFORE", "ON", "ON_OR_AFTER", "ON_OR_BEFORE"})
STRING_OPERATORS = frozenset({"IS", "IS_NOT", "START_WITH", "CONTAIN"})
NUMBER_OPERATORS = frozenset({"EQUAL", "GREATER", "GREATER_OR_EQUAL", "LESS", "LESS_OR_EQUAL"})
EMPTY_OPERATORS = frozenset({"EMPTY", "EMPTY_NOT"})
OPERATORS = DATE_OPERATORS | STRING_OPERATORS | NUMBER_OPERATORS | EMPTY_OPERATORS

DEFAULT_DATE_FIELDS = frozenset({"lastModifiedDate", "createdDate"})

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lparen>\()
      | (?P<rparen>\))
      | "(?P<string>(?:[^"\\]|\\.)*)"
      | (?P<number>-?\d+(?:\.\d+)?(?![A-Za-z0-9_]))
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<bad>\S)
    )""",
    re.VERBOSE,
)

_DATE = re.compile(
    r"^(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4}|\d{2})"
    r"(?:\s+(?P<h>\d{1,2}):(?P<min>\d{2})(?::(?P<s>\d{2}))?\s*(?P<ampm>[aApP][mM]))?$"
)


class QueryError(ValueError):
    """A malformed ``q``; the message names the problem and is shown to the client."""


@dataclass(frozen=True)
class _Tok:
    kind: str
    value: str
    pos: int


def format_datetime(value: datetime) -> str:
    """The one stored form of ERP datetimes: UTC, second precision, ``Z``."""
    if value.tzinfo is None:
        raise ValueError("ERP datetimes must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_date_literal(text: str, tz: tzinfo) -> tuple[datetime, datetime]:
    """Return the half-open interval ``[start, end)`` a date literal denotes."""
    m = _DATE.match(text.strip())
    if not m:
        raise QueryError(
            f'Invalid date value "{text}": expected M/D/YYYY or "M/D/YYYY h:mm am|pm"'
        )
    year = int(m["y"])
    if len(m["y"]) == 2:
        year += 2000
    try:
        if m["h"] is None:
            start = datetime(year, int(m["m"]), int(m["d"]), tzinfo=tz)
            step = timedelta(days=1)
        else:
            hour = int(m["h"])
            if not 1 <= hour <= 12:
                raise QueryError(f'Invalid date value "{text}": hour must be 1-12 with am/pm')
            hour = hour % 12 + (12 if m["ampm"].lower() == "pm" else 0)
            second = int(m["s"]) if m["s"] is not None else 0
            start = datetime(year, int(m["m"]), int(m["d"]), hour, int(m["min"]), second, tzinfo=tz)
            step = timedelta(seconds=1) if m["s"] is not None else timedelta(minutes=1)
    except ValueError as exc:
        if isinstance(exc, QueryError):
            raise
        raise QueryError(f'Invalid date value "{text}": {exc}') from None
    if m["h"] is None:
        # a local day may be 23 or 25 hours long: compute the next local midnight
        nxt = start.date() + timedelta(days=1)
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz)
    else:
        end = start + step
    return start, end


def _tokenize(q: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(q):
        m = _TOKEN.match(q, pos)
        if m is None or m.end() == pos:
            if q[pos:].strip() == "":
                break
            raise QueryError(f"Invalid search query: cannot read {q[pos:]!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind == "bad":
            if m["bad"] == '"':
                raise QueryError(f"Invalid search query: unterminated string at position {m.start('bad')}")
            raise QueryError(
                f"Invalid search query: unexpected character {m['bad']!r} at position {m.start('bad')}"
            )
        value = m[kind]
        if kind == "string":
            value = re.sub(r"\\(.)", r"\1", value)
        tokens.append(_Tok(kind, value, m.start(kind)))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(
        self,
        q: str,
        tz: tzinfo,
        field_types: Mapping[str, str] | None,
    ) -> None:
        self.tokens = _tokenize(q)
        self.i = 0
        self.tz = tz
        self.field_types = field_types

    def peek(self) -> _Tok | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise QueryError("Invalid search query: unexpected end of query")
        self.i += 1
        return tok

    def parse(self) -> Predicate:
        if not self.tokens:
            raise QueryError("Invalid search query: the query is empty")
        pred = self.expr()
        tok = self.peek()
        if tok is not None:
            if tok.kind == "rparen":
                raise QueryError(f"Invalid search query: unbalanced ')' at position {tok.pos}")
            raise QueryError(
                f"Invalid search query: expected AND or OR at position {tok.pos}, got {tok.value!r}"
            )
        return pred

    def expr(self) -> Predicate:
        parts = [self.term()]
        while (tok := self.peek()) is not None and tok.kind == "word" and tok.value == "OR":
            self.i += 1
            parts.append(self.term())
        if len(parts) == 1:
            return parts[0]
        return lambda rec: any(p(rec) for p in parts)

    def term(self) -> Predicate:
        parts = [self.factor()]
        while (tok := self.peek()) is not None and tok.kind == "word" and tok.value == "AND":
            self.i += 1
            parts.append(self.factor())
        if len(parts) == 1:
            return parts[0]
        return lambda rec: all(p(rec) for p in parts)

    def factor(self) -> Predicate:
        tok = self.take()
        if tok.kind == "lparen":
            pred = self.expr()
            close = self.peek()
            if close is None or close.kind != "rparen":
                raise QueryError(f"Invalid search query: missing ')' for '(' at position {tok.pos}")
            self.i += 1
            return pred
        if tok.kind != "word" or tok.value in ("AND", "OR"):
            raise QueryError(
                f"Invalid search query: expected a field name at position {tok.pos}, got {tok.value!r}"
            )
        return self.condition(tok.value, tok.pos)

    def condition(self, field: str, pos: int) -> Predicate:
        field_type = self._field_type(field, pos)
        op_tok = self.peek()
        if op_tok is None:
            raise QueryError(f"Invalid search query: missing operator after field {field!r}")
        if op_tok.kind != "word" or op_tok.value not in OPERATORS:
            raise QueryError(
                f"Invalid search query: unknown operator {op_tok.value!r} at position {op_tok.pos}"
            )
        self.i += 1
        op = op_tok.value
        if op in EMPTY_OPERATORS:
            empty = op == "EMPTY"
            return lambda rec: _is_empty(rec.get(field)) is empty
        if field_type in ("ref", "sublist"):
            what = "a reference" if field_type == "ref" else "a sublist"
            raise QueryError(
                f"Invalid search query: {op} is not supported on {field} ({what} field); "
                f"use EMPTY or EMPTY_NOT"
            )
        val = self.peek()
        if val is None or val.kind not in ("string", "number", "word") or val.value in ("AND", "OR"):
            raise QueryError(f"Invalid search query: missing value after {field} {op}")
        self.i += 1
        if op in DATE_OPERATORS:
            return self._date(field, field_type, op, val)
        if op in NUMBER_OPERATORS:
            return self._number(field, field_type, op, val)
        return self._string_or_bool(field, field_type, op, val)

    def _field_type(self, field: str, pos: int) -> str | None:
        if self.field_types is None:
            return "datetime" if field in DEFAULT_DATE_FIELDS else None
        if field not in self.field_types:
            raise QueryError(f"Invalid search query: unknown field {field!r} at position {pos}")
        return self.field_types[field]

    def _date(self, field: str, field_type: str | None, op: str, val: _Tok) -> Predicate:
        if field_type not in (None, "datetime", "date"):
            raise QueryError(f"Invalid search query: {op} needs a date field, {field} is {field_type}")
        if val.kind != "string":
            raise QueryError(f"Invalid search query: the date after {field} {op} must be quoted")
        start, end = parse_date_literal(val.value, self.tz)
        if field_type == "date":
            # a date field holds a calendar day (YYYY-MM-DD): compare whole days
            if (start.hour, start.minute, start.second) != (0, 0, 0) or end - start < timedelta(hours=23):
                raise QueryError(
                    f"Invalid search query: {field} is a date field; give a date without a time"
                )
            lo, hi = start.date().isoformat(), end.date().isoformat()
        else:
            lo, hi = format_datetime(start), format_datetime(end)

        def get(rec: Mapping[str, Any]) -> str | None:
            v = rec.get(field)
            return v if isinstance(v, str) and v else None

        if op == "ON":
            return lambda rec: (v := get(rec)) is not None and lo <= v < hi
        if op == "AFTER":
            return lambda rec: (v := get(rec)) is not None and v >= hi
        if op == "ON_OR_AFTER":
            return lambda rec: (v := get(rec)) is not None and v >= lo
        if op == "BEFORE":
            return lambda rec: (v := get(rec)) is not None and v < lo
        return lambda rec: (v := get(rec)) is not None and v < hi  # ON_OR_BEFORE

    def _number(self, field: str, field_type: str | None, op: str, val: _Tok) -> Predicate:
        if field_type not in (None, "number"):
            raise QueryError(f"Invalid search query: {op} needs a number field, {field} is {field_type}")
        try:
            target = Decimal(val.value)
        except InvalidOperation:
            raise QueryError(f"Invalid search query: {val.value!r} after {field} {op} is not a number") from None

        def num(rec: Mapping[str, Any]) -> int | float | Decimal | None:
            v = rec.get(field)
            if isinstance(v, bool) or not isinstance(v, int | float | Decimal):
                return None
            return v

        compare: Callable[[Any], bool] = {
            "EQUAL": lambda x: x == target,
            "GREATER": lambda x: x > target,
            "GREATER_OR_EQUAL": lambda x: x >= target,
            "LESS": lambda x: x < target,
            "LESS_OR_EQUAL": lambda x: x <= target,
        }[op]
        return lambda rec: (v := num(rec)) is not None and compare(v)

    def _string_or_bool(self, field: str, field_type: str | None, op: str, val: _Tok) -> Predicate:
        is_bool_value = val.value.lower() in ("true", "false") and val.kind in ("word", "string")
        if field_type == "boolean" or (field_type is None and val.kind == "word" and is_bool_value):
            if op != "IS":
                raise QueryError(f"Invalid search query: {op} is not a boolean operator (use IS)")
            if not is_bool_value:
                raise QueryError(f"Invalid search query: {field} IS needs true or false")
            want = val.value.lower() == "true"
            return lambda rec: bool(rec.get(field)) is want
        if field_type not in (None, "string"):
            raise QueryError(f"Invalid search query: {op} needs a text field, {field} is {field_type}")
        if val.kind == "word":
            raise QueryError(f"Invalid search query: the text after {field} {op} must be quoted")
        target = val.value.lower()

        def text(rec: Mapping[str, Any]) -> str:
            v = rec.get(field)
            return "" if v is None else str(v).lower()

        if op == "IS":
            return lambda rec: text(rec) == target
        if op == "IS_NOT":
            return lambda rec: text(rec) != target
        if op == "START_WITH":
            return lambda rec: text(rec).startswith(target)
        return lambda rec: target in text(rec)  # CONTAIN


def _is_empty(value: Any) -> bool:
    if isinstance(value, dict) and "items" in value:
        return not value["items"]
    return value is None or value == "" or value == []


def compile_query(
    q: str,
    tz: tzinfo,
    field_types: Mapping[str, str] | None = None,
) -> Predicate:
    """Compile ``q``; ``field_types`` (name -> string|boolean|number|date|datetime|ref|sublist)
    makes unknown fields and type mismatches errors, as they are for a record type with a
    known schema. Date fields (``YYYY-MM-DD``) compare whole days."""
    return _Parser(q, tz, field_types).parse()
