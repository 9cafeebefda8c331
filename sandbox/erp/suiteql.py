"""The subset of SuiteQL the ERP sandbox understands (docs/erp-records.md, "SuiteQL subset").

::

    SELECT * | item [, item ...]          item := expr [[AS] alias]
    FROM table [alias]                    item, transaction, vendor, customer,
                                          customrecord_vf_batch, customrecord_vf_code
    [WHERE condition]                     AND OR NOT ( ), = <> != < <= > >=, [NOT] IN (...),
                                          [NOT] LIKE '...' [ESCAPE 'x'], IS [NOT] NULL,
                                          [NOT] BETWEEN a AND b
    [GROUP BY expr [, expr ...]]
    [ORDER BY expr|alias|position [ASC|DESC] [NULLS FIRST|LAST] [, ...]]

    expr := column | table.column | 'text' | number | TO_DATE('..', 'fmt') |
            TO_TIMESTAMP('..', 'fmt') | TO_CHAR(expr [, 'fmt']) |
            COUNT(*) | COUNT(expr) | SUM(expr) | MIN(expr) | MAX(expr)

Keywords and identifiers are case-insensitive; columns are the record's body fields in lower
case (references hold the referenced internal id, ``id`` is a number, checkboxes are ``T`` /
``F``), sublists are not columns. Values are compared as Oracle does, case-sensitively, with
SQL's three-valued logic (a comparison with NULL is neither true nor false; ``''`` is NULL).
A text literal compared with a number column is read as a number; with a date column as
``M/D/YYYY`` (optionally ``h:mm am``) in the account's time zone, as are ``TO_DATE`` and
``TO_TIMESTAMP`` literals.

Results are strings: numbers as decimal text (no exponent, no float artefacts), dates
``M/D/YYYY``, datetimes ``M/D/YYYY h:mm am`` in the account's time zone (``TO_CHAR`` formats
them otherwise), NULLs left out. An expression without an alias is named ``expr1``,
``expr2``... as NetSuite does.

Speed: a query text is compiled once; each table's rows are kept in id order per store
version; ``id`` bounds at the top level of ``WHERE`` (``id > :last``) are found by bisection;
the rest of the condition is evaluated once per (condition, store version) and sorted or
grouped results once per (query, store version). Walking 250,000 records by key range costs
a bisection and the projection of one page per request.
"""

from __future__ import annotations

import bisect
import operator
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any

from sandbox.erp.query import QueryError, format_datetime
from sandbox.erp.schema import RECORD_SCHEMAS, TRANSACTION_TYPES, Field, decimal_text
from sandbox.erp.store import RecordStore

__all__ = ["MAX_RESULT_ROWS", "SUITEQL_TABLES", "SuiteQLEngine", "SuiteQLError"]

#: A query's result can be paged up to this row; larger sets are read in key ranges.
MAX_RESULT_ROWS = 100_000
#: key ranges up to this many rows (or a tenth of the table) are filtered without caching
_SMALL_RANGE = 5_000

#: SuiteQL table -> the record types it shows.
SUITEQL_TABLES: dict[str, tuple[str, ...]] = {
    "item": ("inventoryItem",),
    "transaction": tuple(TRANSACTION_TYPES),
    "vendor": ("vendor",),
    "customer": ("customer",),
    "customrecord_vf_batch": ("customrecord_vf_batch",),
    "customrecord_vf_code": ("customrecord_vf_code",),
}

Row = tuple[int, dict[str, Any], str]  # (internal id, record, record type)
RowFn = Callable[[Row], Any]
Pred = Callable[[Row], bool | None]
GroupFn = Callable[[list[Row], tuple[Any, ...]], Any]


class SuiteQLError(QueryError):
    """A query outside the subset, or malformed; the message names the problem."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"Invalid or unsupported SuiteQL query: {problem}")


# ---- tokens -------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
      (?P<ws>\s+|--[^\n]*|/\*.*?\*/)
    | '(?P<str>(?:[^']|'')*)'
    | "(?P<qid>[^"]*)"
    | (?P<num>\d+(?:\.\d*)?|\.\d+)
    | (?P<id>[A-Za-z_][A-Za-z0-9_$\#]*)
    | (?P<op><>|!=|<=|>=|\|\||[=<>(),.*;:+\-/])
    | (?P<bad>.)
    """,
    re.VERBOSE | re.DOTALL,
)

RESERVED = frozenset(
    """SELECT FROM WHERE AND OR NOT IN LIKE IS NULL BETWEEN GROUP BY ORDER ASC DESC AS HAVING
    DISTINCT JOIN INNER LEFT RIGHT FULL OUTER CROSS ON UNION INTERSECT MINUS EXCEPT ESCAPE
    NULLS FETCH OFFSET LIMIT CASE WHEN THEN ELSE END ALL ANY EXISTS UNIQUE WITH""".split()
)


@dataclass(frozen=True)
class Tok:
    kind: str  # str qid num id op end
    value: str
    pos: int

    @property
    def upper(self) -> str:
        return self.value.upper() if self.kind == "id" else ""


def tokenize(q: str) -> list[Tok]:
    tokens: list[Tok] = []
    for m in _TOKEN.finditer(q):
        kind = m.lastgroup
        assert kind is not None
        if kind == "ws":
            continue
        if kind == "bad":
            if m.group() == "'":
                raise SuiteQLError(f"unterminated text literal at position {m.start()}")
            raise SuiteQLError(f"unexpected character {m.group()!r} at position {m.start()}")
        value = m.group(kind)
        if kind == "str":
            value = value.replace("''", "'")
        if kind == "op" and value == "/" and q.startswith("/*", m.start()):
            raise SuiteQLError(f"unterminated comment at position {m.start()}")
        tokens.append(Tok(kind, value, m.start(kind)))
    tokens.append(Tok("end", "", len(q)))
    return tokens


# ---- syntax tree --------------------------------------------------------------------------------
# Expressions: ("col", qualifier, name, pos) ("str", text) ("num", value) ("star",)
#              ("func", NAME, [args], pos)
# Conditions:  ("and", [c]) ("or", [c]) ("not", c) ("cmp", op, a, b) ("in", a, [b], negated)
#              ("like", a, pattern, escape, negated) ("null", a, negated)
#              ("between", a, lo, hi, negated)

_FUNCTIONS = frozenset({"TO_DATE", "TO_TIMESTAMP", "TO_CHAR", "COUNT", "SUM", "MIN", "MAX"})
AGGREGATES = frozenset({"COUNT", "SUM", "MIN", "MAX"})
_COMPARISONS = frozenset({"=", "<>", "!=", "<", "<=", ">", ">="})


@dataclass
class Ast:
    star: bool
    items: list[tuple[tuple[Any, ...], str | None]]
    table: str
    alias: str | None
    where: tuple[Any, ...] | None
    group_by: list[tuple[Any, ...]]
    order_by: list[tuple[tuple[Any, ...], bool, bool | None]]  # (expr, desc, nulls_first)


class Parser:
    def __init__(self, q: str) -> None:
        self.tokens = tokenize(q)
        self.i = 0

    # -- token helpers
    def peek(self, ahead: int = 0) -> Tok:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def next(self) -> Tok:
        tok = self.peek()
        if tok.kind != "end":
            self.i += 1
        return tok

    def at_kw(self, *words: str) -> bool:
        return self.peek().upper in words

    def accept_kw(self, word: str) -> bool:
        if self.peek().upper == word:
            self.i += 1
            return True
        return False

    def expect_kw(self, word: str, context: str) -> None:
        if not self.accept_kw(word):
            raise SuiteQLError(f"expected {word} {context}, found {self.describe(self.peek())}")

    def accept_op(self, op: str) -> bool:
        tok = self.peek()
        if tok.kind == "op" and tok.value == op:
            self.i += 1
            return True
        return False

    def expect_op(self, op: str, context: str) -> None:
        if not self.accept_op(op):
            raise SuiteQLError(f"expected '{op}' {context}, found {self.describe(self.peek())}")

    @staticmethod
    def describe(tok: Tok) -> str:
        if tok.kind == "end":
            return "the end of the query"
        if tok.kind == "str":
            return f"'{tok.value}' at position {tok.pos}"
        return f"{tok.value!r} at position {tok.pos}"

    def unsupported_keyword(self, tok: Tok) -> SuiteQLError | None:
        word = tok.upper
        if word == "DISTINCT":
            return SuiteQLError("DISTINCT is not supported")
        if word in ("JOIN", "INNER", "LEFT", "RIGHT", "FULL", "CROSS", "OUTER"):
            return SuiteQLError(f"joins are not supported ({word} at position {tok.pos}): one table per query")
        if word in ("UNION", "INTERSECT", "MINUS", "EXCEPT"):
            return SuiteQLError(f"{word} is not supported")
        if word == "HAVING":
            return SuiteQLError("HAVING is not supported")
        if word in ("FETCH", "OFFSET", "LIMIT"):
            return SuiteQLError(f"{word} is not supported: page with the limit and offset parameters")
        if word in ("CASE", "EXISTS", "WITH"):
            return SuiteQLError(f"{word} is not supported")
        return None

    # -- statement
    def parse(self) -> Ast:
        if self.peek().kind == "end":
            raise SuiteQLError("the query is empty")
        self.expect_kw("SELECT", "at the start of the query")
        bad = self.unsupported_keyword(self.peek())
        if bad is not None:
            raise bad
        star = False
        items: list[tuple[tuple[Any, ...], str | None]] = []
        if self.accept_op("*"):
            star = True
        else:
            while True:
                expr = self.expr()
                alias: str | None = None
                if self.accept_kw("AS"):
                    alias = self.alias_name("after AS")
                elif self.peek().kind in ("id", "qid") and self.peek().upper not in RESERVED:
                    alias = self.alias_name("")
                items.append((expr, alias))
                if not self.accept_op(","):
                    break
        self.expect_kw("FROM", "after the select list")
        tok = self.next()
        if tok.kind == "op" and tok.value == "(":
            raise SuiteQLError("subqueries are not supported")
        if tok.kind != "id" or tok.upper in RESERVED:
            raise SuiteQLError(f"expected a table name after FROM, found {self.describe(tok)}")
        table = tok.value.lower()
        alias_tok = self.peek()
        table_alias: str | None = None
        if alias_tok.kind == "id" and alias_tok.upper not in RESERVED:
            table_alias = self.next().value.lower()
        tok = self.peek()
        if tok.kind == "op" and tok.value == ",":
            raise SuiteQLError("joins are not supported: one table per query")
        where = None
        group_by: list[tuple[Any, ...]] = []
        order_by: list[tuple[tuple[Any, ...], bool, bool | None]] = []
        if self.accept_kw("WHERE"):
            where = self.condition()
        if self.accept_kw("GROUP"):
            self.expect_kw("BY", "after GROUP")
            group_by.append(self.expr())
            while self.accept_op(","):
                group_by.append(self.expr())
        if self.accept_kw("ORDER"):
            self.expect_kw("BY", "after ORDER")
            while True:
                expr = self.expr()
                desc = False
                if self.accept_kw("DESC"):
                    desc = True
                else:
                    self.accept_kw("ASC")
                nulls_first: bool | None = None
                if self.accept_kw("NULLS"):
                    word = self.next()
                    if word.upper not in ("FIRST", "LAST"):
                        raise SuiteQLError(f"expected FIRST or LAST after NULLS, found {self.describe(word)}")
                    nulls_first = word.upper == "FIRST"
                order_by.append((expr, desc, nulls_first))
                if not self.accept_op(","):
                    break
        tok = self.peek()
        if tok.kind != "end":
            bad = self.unsupported_keyword(tok)
            if bad is not None:
                raise bad
            if tok.kind == "op" and tok.value == ";":
                raise SuiteQLError(f"unexpected ';' at position {tok.pos}: send one statement without ';'")
            raise SuiteQLError(f"unexpected {self.describe(tok)}")
        return Ast(star, items, table, table_alias, where, group_by, order_by)

    def alias_name(self, context: str) -> str:
        tok = self.next()
        if tok.kind == "qid" and tok.value:
            return tok.value.lower()
        if tok.kind == "id" and tok.upper not in RESERVED:
            return tok.value.lower()
        raise SuiteQLError(f"expected an alias {context}, found {self.describe(tok)}".replace("  ", " "))

    # -- conditions
    def condition(self) -> tuple[Any, ...]:
        parts = [self.conjunction()]
        while self.accept_kw("OR"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else ("or", parts)

    def conjunction(self) -> tuple[Any, ...]:
        parts = [self.negation()]
        while self.accept_kw("AND"):
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else ("and", parts)

    def negation(self) -> tuple[Any, ...]:
        if self.accept_kw("NOT"):
            return ("not", self.negation())
        return self.predicate()

    def predicate(self) -> tuple[Any, ...]:
        tok = self.peek()
        if tok.kind == "op" and tok.value == "(":
            if self.peek(1).upper == "SELECT":
                raise SuiteQLError("subqueries are not supported")
            self.i += 1
            cond = self.condition()
            self.expect_op(")", f"to close the '(' at position {tok.pos}")
            return cond
        if tok.kind == "end":
            raise SuiteQLError("unexpected end of the query: a condition is missing")
        left = self.expr()
        tok = self.peek()
        if tok.kind == "op" and tok.value in _COMPARISONS:
            self.i += 1
            return ("cmp", "<>" if tok.value == "!=" else tok.value, left, self.expr())
        if self.accept_kw("IS"):
            negated = self.accept_kw("NOT")
            self.expect_kw("NULL", "after IS" + (" NOT" if negated else ""))
            return ("null", left, negated)
        negated = self.accept_kw("NOT")
        if self.accept_kw("IN"):
            self.expect_op("(", "after IN")
            if self.peek().upper == "SELECT":
                raise SuiteQLError("subqueries are not supported")
            values = [self.expr()]
            while self.accept_op(","):
                values.append(self.expr())
            self.expect_op(")", "to close the IN list")
            return ("in", left, values, negated)
        if self.accept_kw("LIKE"):
            pattern = self.expr()
            escape = None
            if self.accept_kw("ESCAPE"):
                esc = self.next()
                if esc.kind != "str" or len(esc.value) != 1:
                    raise SuiteQLError("ESCAPE needs a one-character text literal")
                escape = esc.value
            return ("like", left, pattern, escape, negated)
        if self.accept_kw("BETWEEN"):
            lo = self.expr()
            self.expect_kw("AND", "in BETWEEN ... AND ...")
            hi = self.expr()
            return ("between", left, lo, hi, negated)
        found = self.peek()
        if found.kind == "op" and found.value == "||":
            raise SuiteQLError("the || operator is not supported")
        raise SuiteQLError(
            f"expected a comparison operator, IN, LIKE, BETWEEN or IS NULL, found {self.describe(found)}"
        )

    # -- expressions
    def expr(self) -> tuple[Any, ...]:
        tok = self.next()
        if tok.kind == "op" and tok.value == "-" and self.peek().kind == "num":
            return ("num", -_number(self.next().value))
        if tok.kind == "num":
            result: tuple[Any, ...] = ("num", _number(tok.value))
        elif tok.kind == "str":
            result = ("str", tok.value)
        elif tok.kind == "id" and tok.upper == "NULL":
            raise SuiteQLError(f"NULL at position {tok.pos} is not supported here: use IS [NOT] NULL")
        elif tok.kind == "id" and tok.upper not in RESERVED:
            nxt = self.peek()
            if nxt.kind == "op" and nxt.value == "(":
                result = self.function(tok)
            elif nxt.kind == "op" and nxt.value == ".":
                self.i += 1
                col = self.next()
                if col.kind != "id":
                    raise SuiteQLError(f"expected a column name after '{tok.value}.', found {self.describe(col)}")
                result = ("col", tok.value.lower(), col.value.lower(), col.pos)
            else:
                result = ("col", None, tok.value.lower(), tok.pos)
        elif tok.kind == "op" and tok.value == ":":
            raise SuiteQLError(f"bind variables are not supported (':' at position {tok.pos})")
        elif tok.kind == "op" and tok.value == "(":
            raise SuiteQLError(f"parenthesised expressions are not supported (position {tok.pos})")
        else:
            bad = self.unsupported_keyword(tok)
            if bad is not None:
                raise bad
            raise SuiteQLError(f"expected a column, literal or function, found {self.describe(tok)}")
        nxt = self.peek()
        if nxt.kind == "op" and nxt.value in ("+", "-", "*", "/", "||"):
            raise SuiteQLError(f"arithmetic and '{nxt.value}' are not supported (position {nxt.pos})")
        return result

    def function(self, name_tok: Tok) -> tuple[Any, ...]:
        name = name_tok.upper
        if name not in _FUNCTIONS:
            raise SuiteQLError(f"function {name_tok.value.upper()} is not supported (position {name_tok.pos})")
        self.expect_op("(", f"after {name}")
        args: list[tuple[Any, ...]] = []
        if name == "COUNT" and self.accept_op("*"):
            args.append(("star",))
        else:
            if self.at_kw("DISTINCT", "ALL"):
                raise SuiteQLError(f"{self.peek().upper} inside {name}() is not supported")
            if not (self.peek().kind == "op" and self.peek().value == ")"):
                args.append(self.expr())
                while self.accept_op(","):
                    args.append(self.expr())
        self.expect_op(")", f"to close {name}(")
        return ("func", name, args, name_tok.pos)


def _number(text: str) -> int | Decimal:
    if "." in text:
        return Decimal(text)
    return int(text)


def parse(q: str) -> Ast:
    return Parser(q).parse()


# ---- Oracle date formats ---------------------------------------------------------------------------

_FORMAT_TOKEN = re.compile(
    r'"(?P<lit>[^"]*)"|(?P<el>YYYY|YY|MM|DD|HH24|HH12|HH|MI|SS|AM|PM|A\.M\.|P\.M\.)|(?P<punct>[-/,.;: ])',
    re.IGNORECASE,
)


def parse_format(fmt: str) -> list[tuple[str, str]]:
    """An Oracle datetime format model as (kind, text) parts: ``el`` elements, ``lit`` text."""
    parts: list[tuple[str, str]] = []
    pos = 0
    while pos < len(fmt):
        m = _FORMAT_TOKEN.match(fmt, pos)
        if m is None:
            raise SuiteQLError(f"date format not recognized: {fmt!r} (at {fmt[pos:]!r})")
        if m["lit"] is not None:
            parts.append(("lit", m["lit"]))
        elif m["punct"] is not None:
            parts.append(("lit", m["punct"]))
        else:
            parts.append(("el", m["el"]))
        pos = m.end()
    if not parts:
        raise SuiteQLError("empty date format")
    return parts


def render_format(parts: list[tuple[str, str]], value: datetime) -> str:
    out: list[str] = []
    for kind, text in parts:
        if kind == "lit":
            out.append(text)
            continue
        el = text.upper()
        if el == "YYYY":
            out.append(f"{value.year:04d}")
        elif el == "YY":
            out.append(f"{value.year % 100:02d}")
        elif el == "MM":
            out.append(f"{value.month:02d}")
        elif el == "DD":
            out.append(f"{value.day:02d}")
        elif el == "HH24":
            out.append(f"{value.hour:02d}")
        elif el in ("HH", "HH12"):
            out.append(f"{(value.hour % 12) or 12:02d}")
        elif el == "MI":
            out.append(f"{value.minute:02d}")
        elif el == "SS":
            out.append(f"{value.second:02d}")
        else:  # AM PM A.M. P.M.
            mer = "AM" if value.hour < 12 else "PM"
            if "." in el:
                mer = f"{mer[0]}.{mer[1]}."
            out.append(mer.lower() if text[0].islower() else mer)
    return "".join(out)


def parse_with_format(text: str, fmt: str, func: str) -> datetime:
    """``TO_DATE``/``TO_TIMESTAMP``: a naive local datetime."""
    parts = parse_format(fmt)
    groups: dict[str, str] = {}
    regex = []
    for kind, part in parts:
        if kind == "lit":
            regex.append(re.escape(part))
            continue
        el = part.upper()
        name = {"YYYY": "y", "YY": "yy", "MM": "m", "DD": "d", "HH24": "H", "HH": "h", "HH12": "h",
                "MI": "mi", "SS": "s"}.get(el, "mer")  # fmt: skip
        if name in groups:
            raise SuiteQLError(f"{func}: format {fmt!r} gives {el} twice")
        groups[name] = el
        width = r"\d{4}" if name == "y" else r"\d{2}" if name == "yy" else r"\d{1,2}"
        regex.append(f"(?P<{name}>[AaPp]\\.?[Mm]\\.?)" if name == "mer" else f"(?P<{name}>{width})")
    m = re.fullmatch(r"\s*" + "".join(regex) + r"\s*", text)
    if m is None:
        raise SuiteQLError(f"{func}: {text!r} does not match the format {fmt!r}")
    found = m.groupdict()
    year = int(found["y"]) if found.get("y") else 2000 + int(found["yy"]) if found.get("yy") else None
    if year is None or not found.get("m") or not found.get("d"):
        raise SuiteQLError(f"{func}: the format {fmt!r} must give the year, month and day")
    if found.get("h") is not None:
        if not found.get("mer"):
            raise SuiteQLError(f"{func}: HH/HH12 needs AM or PM in the format (or use HH24)")
        hour = int(found["h"])
        if not 1 <= hour <= 12:
            raise SuiteQLError(f"{func}: hour {hour} is not 1-12")
        hour = hour % 12 + (12 if found["mer"][0].lower() == "p" else 0)
    else:
        hour = int(found.get("H") or 0)
    try:
        return datetime(year, int(found["m"]), int(found["d"]), hour,
                        int(found.get("mi") or 0), int(found.get("s") or 0))  # fmt: skip
    except ValueError as exc:
        raise SuiteQLError(f"{func}: {text!r} is not a valid date ({exc})") from None


_ACCOUNT_DATE = re.compile(
    r"^\s*(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4})"
    r"(?:\s+(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?\s*(?P<mer>[AaPp][Mm]))?\s*$"
)


def parse_account_date(text: str) -> datetime | None:
    """``M/D/YYYY`` or ``M/D/YYYY h:mm am`` (the account's format) as a naive local datetime."""
    m = _ACCOUNT_DATE.match(text)
    if m is None:
        return None
    hour = 0
    if m["h"] is not None:
        hour = int(m["h"])
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if m["mer"][0].lower() == "p" else 0)
    try:
        return datetime(int(m["y"]), int(m["m"]), int(m["d"]), hour,
                        int(m["mi"] or 0), int(m["s"] or 0))  # fmt: skip
    except ValueError:
        return None


# ---- compiled expressions -------------------------------------------------------------------------
# kinds: text, number, date ('YYYY-MM-DD'), datetime ('YYYY-MM-DDTHH:MM:SSZ', UTC),
#        ts (a constant naive local datetime from TO_DATE/TO_TIMESTAMP)


@dataclass
class CExpr:
    kind: str
    sql: str
    fn: RowFn
    const: bool = False
    value: Any = None
    is_id: bool = False
    column: str | None = None


@dataclass
class Column:
    name: str
    kind: str
    fn: RowFn


def _text_getter(name: str) -> RowFn:
    def get(row: Row) -> Any:
        v = row[1].get(name)
        if v.__class__ is str:
            return v or None
        return None if v is None else str(v)

    return get


def _bool_getter(name: str) -> RowFn:
    return lambda row: "T" if row[1].get(name) else "F"


def _number_getter(name: str) -> RowFn:
    def get(row: Row) -> Any:
        v = row[1].get(name)
        cls = v.__class__
        if cls is int or cls is Decimal:
            return v
        if cls is float:
            return Decimal(repr(v))
        return None

    return get


def _ref_getter(name: str) -> RowFn:
    def get(row: Row) -> Any:
        v = row[1].get(name)
        if v.__class__ is dict:
            rid = v.get("id")
            if isinstance(rid, str) and rid.isdigit():
                return int(rid)
        return None

    return get


_KIND_OF_FIELD = {
    "string": ("text", _text_getter),
    "boolean": ("text", _bool_getter),
    "number": ("number", _number_getter),
    "integer": ("number", _number_getter),
    "date": ("date", _text_getter),
    "datetime": ("datetime", _text_getter),
    "ref": ("number", _ref_getter),
}


def table_columns(table: str) -> dict[str, Column]:
    types = SUITEQL_TABLES[table]
    cols: dict[str, Column] = {"id": Column("id", "number", lambda row: row[0])}
    if table == "transaction":
        cols["type"] = Column("type", "text", lambda row: TRANSACTION_TYPES[row[2]])
        cols["recordtype"] = Column("recordtype", "text", lambda row: row[2].lower())
    if table == "item":
        cols["itemtype"] = Column("itemtype", "text", lambda row: "InvtPart")
    for rtype in types:
        spec: Field
        for fname, spec in RECORD_SCHEMAS[rtype].items():
            lname = fname.lower()
            if lname in cols or spec.kind == "sublist":
                continue
            kind, getter = _KIND_OF_FIELD[spec.kind]
            cols[lname] = Column(lname, kind, getter(fname))
    return cols


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "<>": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge,
}  # fmt: skip
_FLIP = {"=": "=", "<>": "<>", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


@dataclass
class Bound:
    op: str  # > >= < <= =
    value: int | Decimal


@dataclass
class CompiledQuery:
    text: str
    table: str
    types: tuple[str, ...]
    bounds: list[Bound]
    residual: Pred | None
    residual_key: str
    aggregate: bool
    # non-aggregate
    columns: list[tuple[str, RowFn, Callable[[Any], str]]] = field(default_factory=list)
    natural: int | None = 1  # 1: id ascending, -1: id descending, None: sort
    row_order: list[tuple[RowFn, bool, bool]] = field(default_factory=list)
    # aggregate
    group_fns: list[RowFn] = field(default_factory=list)
    outputs: list[tuple[str, GroupFn, Callable[[Any], str]]] = field(default_factory=list)
    group_order: list[tuple[GroupFn, bool, bool]] = field(default_factory=list)


class Compiler:
    def __init__(self, ast: Ast, tz: tzinfo, formatters: Formatters) -> None:
        if ast.table not in SUITEQL_TABLES:
            known = ", ".join(SUITEQL_TABLES)
            raise SuiteQLError(f"unknown table {ast.table!r} (known: {known})")
        self.ast = ast
        self.tz = tz
        self.fmt = formatters
        self.columns = table_columns(ast.table)
        self.group_sql: list[str] = []

    # -- columns and expressions (row mode)
    def column(self, node: tuple[Any, ...]) -> CExpr:
        _, qualifier, name, pos = node
        if qualifier is not None and qualifier not in (self.ast.table, self.ast.alias):
            raise SuiteQLError(f"unknown table or alias {qualifier!r} in {qualifier}.{name} (position {pos})")
        col = self.columns.get(name)
        if col is None:
            raise SuiteQLError(f"unknown column {name!r} in table {self.ast.table} (position {pos})")
        return CExpr(col.kind, name, col.fn, is_id=name == "id", column=name)

    def expr(self, node: tuple[Any, ...]) -> CExpr:
        tag = node[0]
        if tag == "col":
            return self.column(node)
        if tag == "str":
            value = node[1] or None  # '' is NULL, as in Oracle
            sql = "'" + node[1].replace("'", "''") + "'"
            return CExpr("text", sql, lambda row: value, const=True, value=value)
        if tag == "num":
            value = node[1]
            return CExpr("number", decimal_text(value), lambda row: value, const=True, value=value)
        if tag == "star":
            raise SuiteQLError("'*' is only allowed as SELECT * or COUNT(*)")
        name, args, pos = node[1], node[2], node[3]
        if name in AGGREGATES:
            raise SuiteQLError(f"{name}() is not allowed here (position {pos})")
        if name in ("TO_DATE", "TO_TIMESTAMP"):
            return self.to_date(name, args)
        return self.to_char(args, lambda a: self.expr(a))

    def to_date(self, name: str, args: list[tuple[Any, ...]]) -> CExpr:
        if not 1 <= len(args) <= 2 or any(a[0] != "str" for a in args):
            raise SuiteQLError(f"{name} takes a text literal and a format literal, e.g. "
                               f"{name}('2026-11-01', 'YYYY-MM-DD')")  # fmt: skip
        text = args[0][1]
        if len(args) == 2:
            value = parse_with_format(text, args[1][1], name)
        else:
            parsed = parse_account_date(text)
            if parsed is None:
                raise SuiteQLError(f"{name}: {text!r} is not M/D/YYYY; give a format")
            value = parsed
        sql = f"{name}({', '.join(repr(a[1]) for a in args)})"
        return CExpr("ts", sql, lambda row: value, const=True, value=value)

    def to_char(self, args: list[tuple[Any, ...]], inner_of: Callable[[tuple[Any, ...]], Any]) -> Any:
        if not 1 <= len(args) <= 2 or (len(args) == 2 and args[1][0] != "str"):
            raise SuiteQLError("TO_CHAR takes an expression and optionally a format literal")
        inner = inner_of(args[0])
        kind = inner.kind if isinstance(inner, CExpr) else inner[0]
        render = self.fmt.text_of(kind)
        if len(args) == 2:
            if kind not in ("date", "datetime", "ts"):
                raise SuiteQLError("TO_CHAR with a format is supported for dates and datetimes only")
            parts = parse_format(args[1][1])
            render = self.fmt.formatted(kind, parts)
        if isinstance(inner, CExpr):
            f = inner.fn
            sql = f"TO_CHAR({inner.sql}{', ' + repr(args[1][1]) if len(args) == 2 else ''})"

            def fn(row: Row) -> Any:
                v = f(row)
                return None if v is None else render(v)

            return CExpr("text", sql, fn, const=inner.const,
                         value=None if inner.value is None else render(inner.value))  # fmt: skip
        _, gfn = inner

        def gfn2(rows: list[Row], key: tuple[Any, ...]) -> Any:
            v = gfn(rows, key)
            return None if v is None else render(v)

        return ("text", gfn2)

    # -- conditions
    def condition(self, node: tuple[Any, ...]) -> tuple[Pred, str]:
        tag = node[0]
        if tag in ("and", "or"):
            compiled = [self.condition(c) for c in node[1]]
            preds = [c[0] for c in compiled]
            sql = "(" + f" {tag.upper()} ".join(c[1] for c in compiled) + ")"
            return (_and(preds) if tag == "and" else _or(preds)), sql
        if tag == "not":
            pred, sql = self.condition(node[1])
            return (lambda row: None if (v := pred(row)) is None else not v), f"NOT {sql}"
        if tag == "cmp":
            return self.compare(node[1], self.expr(node[2]), self.expr(node[3]))
        if tag == "null":
            e = self.expr(node[1])
            f = e.fn
            if node[2]:
                return (lambda row: f(row) is not None), f"{e.sql} IS NOT NULL"
            return (lambda row: f(row) is None), f"{e.sql} IS NULL"
        if tag == "in":
            return self.in_list(self.expr(node[1]), [self.expr(v) for v in node[2]], node[3])
        if tag == "like":
            return self.like(self.expr(node[1]), self.expr(node[2]), node[3], node[4])
        if tag == "between":
            e = self.expr(node[1])
            lo, hi = self.unify(e, self.expr(node[2])), self.unify(e, self.expr(node[3]))
            if lo.const and hi.const:
                f, a, b = e.fn, lo.value, hi.value
                if a is None or b is None:
                    pred: Pred = lambda row: None  # noqa: E731
                else:
                    pred = lambda row: None if (v := f(row)) is None else a <= v <= b  # noqa: E731
            else:
                f, fl, fh = e.fn, lo.fn, hi.fn

                def pred(row: Row) -> bool | None:
                    v, a, b = f(row), fl(row), fh(row)
                    if v is None or a is None or b is None:
                        return None
                    return a <= v <= b

            sql = f"{e.sql} BETWEEN {lo.sql} AND {hi.sql}"
            if node[4]:
                return (lambda row: None if (r := pred(row)) is None else not r), f"NOT ({sql})"
            return pred, sql
        raise AssertionError(tag)  # pragma: no cover

    def unify(self, target: CExpr, other: CExpr) -> CExpr:
        """``other`` converted to ``target``'s kind for a comparison, or an error."""
        if other.kind == target.kind and target.kind != "ts":
            return other
        tk, ok = target.kind, other.kind
        if target.const and not other.const:
            raise AssertionError("unify with the column as target")  # pragma: no cover
        if other.const:
            if ok == "text" and other.value is None:
                return CExpr(tk, other.sql, lambda row: None, const=True, value=None)
            if tk == "number" and ok == "text":
                try:
                    value: Any = _number(other.value.strip()) if re.fullmatch(
                        r"\s*-?(\d+(\.\d*)?|\.\d+)\s*", other.value) else None  # fmt: skip
                except InvalidOperation:  # pragma: no cover
                    value = None
                if value is None:
                    raise SuiteQLError(f"{other.sql} is not a number (compared with {target.sql})")
                return CExpr("number", other.sql, lambda row: value, const=True, value=value)
            if tk in ("date", "datetime", "ts") and ok in ("text", "ts"):
                local = other.value if ok == "ts" else parse_account_date(other.value)
                if local is None:
                    raise SuiteQLError(
                        f"{other.sql} is not a date in the account's format M/D/YYYY "
                        f"(compared with {target.sql}); use TO_DATE('2026-11-01', 'YYYY-MM-DD')"
                    )
                value = self.local_as(tk, local)
                return CExpr(tk, other.sql, lambda row: value, const=True, value=value)
        raise SuiteQLError(f"cannot compare {target.sql} ({_KIND_NAMES[tk]}) with {other.sql} "
                           f"({_KIND_NAMES[ok]})")  # fmt: skip

    def local_as(self, kind: str, local: datetime) -> Any:
        """A naive local datetime in a column's representation (strings compare in order)."""
        if kind == "datetime":
            return format_datetime(local.replace(tzinfo=self.tz))
        if kind == "date":
            if local.time() == time(0):
                return local.date().isoformat()
            return local.strftime("%Y-%m-%dT%H:%M:%S")  # after that day's midnight
        return local

    def compare(self, op: str, a: CExpr, b: CExpr) -> tuple[Pred, str]:
        if a.const and not b.const:
            a, b, op = b, a, _FLIP[op]
        b = self.unify(a, b)
        opf = _OPS[op]
        sql = f"{a.sql} {op} {b.sql}"
        fa = a.fn
        if b.const:
            c = b.value
            if a.const:
                value = None if a.value is None or c is None else opf(a.value, c)
                return (lambda row: value), sql
            if c is None:
                return (lambda row: None), sql
            return (lambda row: None if (v := fa(row)) is None else opf(v, c)), sql
        fb = b.fn

        def pred(row: Row) -> bool | None:
            v, w = fa(row), fb(row)
            return None if v is None or w is None else opf(v, w)

        return pred, sql

    def in_list(self, e: CExpr, values: list[CExpr], negated: bool) -> tuple[Pred, str]:
        converted = [self.unify(e, v) for v in values]
        if not all(v.const for v in converted):
            raise SuiteQLError("IN (...) takes literals only")
        wanted = frozenset(v.value for v in converted if v.value is not None)
        f = e.fn
        sql = f"{e.sql} {'NOT ' if negated else ''}IN ({', '.join(v.sql for v in converted)})"
        if negated:
            has_null = any(v.value is None for v in converted)
            if has_null:
                return (lambda row: None), sql
            return (lambda row: None if (v := f(row)) is None else v not in wanted), sql
        return (lambda row: None if (v := f(row)) is None else v in wanted), sql

    def like(self, e: CExpr, pattern: CExpr, escape: str | None, negated: bool) -> tuple[Pred, str]:
        if not pattern.const or pattern.kind != "text":
            raise SuiteQLError("LIKE needs a text literal pattern")
        regex = _like_regex(pattern.value or "", escape)
        as_text = self.fmt.text_of(e.kind)
        f = e.fn
        match = regex.fullmatch

        def pred(row: Row) -> bool | None:
            v = f(row)
            if v is None:
                return None
            return match(v if v.__class__ is str and e.kind == "text" else as_text(v)) is not None

        sql = f"{e.sql} {'NOT ' if negated else ''}LIKE {pattern.sql}" + (
            f" ESCAPE '{escape}'" if escape else ""
        )
        if negated:
            return (lambda row: None if (r := pred(row)) is None else not r), sql
        return pred, sql

    # -- the statement
    def compile(self, text: str) -> CompiledQuery:
        ast = self.ast
        bounds: list[Bound] = []
        residual: Pred | None = None
        residual_key = ""
        if ast.where is not None:
            conjuncts = list(ast.where[1]) if ast.where[0] == "and" else [ast.where]
            rest: list[tuple[Pred, str]] = []
            for node in conjuncts:
                bound = self.id_bounds(node)
                if bound is not None:
                    bounds.extend(bound)
                else:
                    rest.append(self.condition(node))
            if rest:
                residual = rest[0][0] if len(rest) == 1 else _and([r[0] for r in rest])
                residual_key = " AND ".join(r[1] for r in rest)
        aggregate = bool(ast.group_by) or any(_has_aggregate(e) for e, _ in ast.items)
        cq = CompiledQuery(text, ast.table, SUITEQL_TABLES[ast.table], bounds, residual,
                           residual_key, aggregate)  # fmt: skip
        if aggregate:
            self.compile_aggregate(cq)
        else:
            self.compile_rows(cq)
        return cq

    def id_bounds(self, node: tuple[Any, ...]) -> list[Bound] | None:
        """``id <op> number`` (either way round) or ``id BETWEEN a AND b`` as bounds."""
        if node[0] == "cmp" and node[1] != "<>":
            a, b, op = self.expr(node[2]), self.expr(node[3]), node[1]
            if a.const and b.is_id:
                a, b, op = b, a, _FLIP[op]
            if a.is_id and b.const:
                b = self.unify(a, b)
                if b.value is None:
                    return None
                if op == "=":
                    return [Bound(">=", b.value), Bound("<=", b.value)]
                return [Bound(op, b.value)]
        if node[0] == "between" and not node[4]:
            e = self.expr(node[1])
            if e.is_id:
                lo, hi = self.unify(e, self.expr(node[2])), self.unify(e, self.expr(node[3]))
                if lo.const and hi.const and lo.value is not None and hi.value is not None:
                    return [Bound(">=", lo.value), Bound("<=", hi.value)]
        return None

    def select_columns(self) -> list[tuple[str, tuple[Any, ...]]]:
        """(output name, expression) per select item; ``*`` expands to every column."""
        if self.ast.star:
            return [(name, ("col", None, name, 0)) for name in self.columns]
        out: list[tuple[str, tuple[Any, ...]]] = []
        n = 0
        for expr, alias in self.ast.items:
            if alias is not None:
                out.append((alias, expr))
            elif expr[0] == "col":
                out.append((expr[2], expr))
            else:
                n += 1
                out.append((f"expr{n}", expr))
        return out

    def order_target(self, node: tuple[Any, ...], names: list[str]) -> int | None:
        """Index of the select item an ORDER BY term names (alias or position), if any."""
        if node[0] == "num":
            pos = node[1]
            if not isinstance(pos, int) or not 1 <= pos <= len(names):
                raise SuiteQLError(f"ORDER BY position {node[1]} is not in the select list")
            return pos - 1
        if node[0] == "col" and node[1] is None and node[2] in names and (
            node[2] not in self.columns or not self.ast.star
        ):
            return names.index(node[2])
        return None

    def compile_rows(self, cq: CompiledQuery) -> None:
        selected = self.select_columns()
        exprs = [self.expr(e) for _, e in selected]
        cq.columns = [(name, e.fn, self.fmt.text_of(e.kind)) for (name, _), e in zip(selected, exprs, strict=True)]
        names = [name for name, _ in selected]
        order: list[tuple[CExpr, bool, bool | None]] = []
        for node, desc, nulls_first in self.ast.order_by:
            idx = self.order_target(node, names)
            e = exprs[idx] if idx is not None else self.expr(node)
            if e.const:
                continue
            order.append((e, desc, nulls_first))
        if not order:
            cq.natural = 1
        elif len(order) == 1 and order[0][0].is_id:
            cq.natural = -1 if order[0][1] else 1
        else:
            cq.natural = None
        cq.row_order = [(e.fn, desc, _nulls_first(desc, nf)) for e, desc, nf in order]

    def compile_aggregate(self, cq: CompiledQuery) -> None:
        if self.ast.star:
            raise SuiteQLError("SELECT * cannot be used with GROUP BY or aggregates")
        group = [self.expr(g) for g in self.ast.group_by]
        self.group_sql = [g.sql for g in group]
        cq.group_fns = [g.fn for g in group]
        selected = self.select_columns()
        names = [name for name, _ in selected]
        outputs: list[tuple[str, GroupFn, Callable[[Any], str]]] = []
        for name, node in selected:
            kind, gfn = self.group_expr(node)
            outputs.append((name, gfn, self.fmt.text_of(kind)))
        cq.outputs = outputs
        order: list[tuple[GroupFn, bool, bool]] = []
        for node, desc, nulls_first in self.ast.order_by:
            idx = self.order_target(node, names)
            gfn = outputs[idx][1] if idx is not None else self.group_expr(node)[1]
            order.append((gfn, desc, _nulls_first(desc, nulls_first)))
        cq.group_order = order

    def group_expr(self, node: tuple[Any, ...]) -> tuple[str, GroupFn]:
        """An expression evaluated once per group: aggregates, GROUP BY expressions, constants
        and TO_CHAR of those."""
        if node[0] == "func" and node[1] in AGGREGATES:
            return self.aggregate(node)
        if not _has_aggregate(node):
            e = self.expr(node)
            if e.sql in self.group_sql:
                i = self.group_sql.index(e.sql)
                return e.kind, lambda rows, key: key[i]
            if e.const:
                v = e.value
                return e.kind, lambda rows, key: v
        if node[0] == "func" and node[1] == "TO_CHAR":
            kind, gfn = self.to_char(node[2], self.group_expr)
            return kind, gfn
        shown = self.expr(node).sql if not _has_aggregate(node) else node[1]
        raise SuiteQLError(f"{shown} is not a GROUP BY expression: group by it or aggregate it")

    def aggregate(self, node: tuple[Any, ...]) -> tuple[str, GroupFn]:
        name, args = node[1], node[2]
        if len(args) != 1:
            raise SuiteQLError(f"{name} takes one argument")
        if args[0][0] == "star":
            if name != "COUNT":
                raise SuiteQLError(f"{name}(*) is not supported; only COUNT(*)")
            return "number", lambda rows, key: len(rows)
        if _has_aggregate(args[0]):
            raise SuiteQLError(f"aggregates cannot be nested ({name})")
        e = self.expr(args[0])
        f = e.fn
        if name == "COUNT":
            return "number", lambda rows, key: sum(1 for r in rows if f(r) is not None)
        if name == "SUM":
            if e.kind != "number":
                raise SuiteQLError(f"SUM needs a number, {e.sql} is {_KIND_NAMES[e.kind]}")

            def total(rows: list[Row], key: tuple[Any, ...]) -> Any:
                values = [v for r in rows if (v := f(r)) is not None]
                return sum(values, 0) if values else None

            return "number", total
        pick = min if name == "MIN" else max

        def extreme(rows: list[Row], key: tuple[Any, ...]) -> Any:
            values = [v for r in rows if (v := f(r)) is not None]
            return pick(values) if values else None

        return e.kind, extreme


_KIND_NAMES = {"text": "text", "number": "a number", "date": "a date", "datetime": "a datetime",
               "ts": "a date"}  # fmt: skip


def _nulls_first(desc: bool, explicit: bool | None) -> bool:
    # Oracle: NULLS LAST for ascending, NULLS FIRST for descending
    return desc if explicit is None else explicit


def _has_aggregate(node: tuple[Any, ...]) -> bool:
    if node[0] != "func":
        return False
    return node[1] in AGGREGATES or any(_has_aggregate(a) for a in node[2])


def _and(preds: list[Pred]) -> Pred:
    def pred(row: Row) -> bool | None:
        unknown = False
        for p in preds:
            v = p(row)
            if v is False:
                return False
            if v is None:
                unknown = True
        return None if unknown else True

    return pred


def _or(preds: list[Pred]) -> Pred:
    def pred(row: Row) -> bool | None:
        unknown = False
        for p in preds:
            v = p(row)
            if v is True:
                return True
            if v is None:
                unknown = True
        return None if unknown else False

    return pred


def _like_regex(pattern: str, escape: str | None) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if escape is not None and ch == escape:
            if i + 1 >= len(pattern):
                raise SuiteQLError("LIKE pattern ends with the escape character")
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _sort(items: list[Any], keys: Iterable[tuple[Callable[[Any], Any], bool, bool]]) -> None:
    """Stable multi-key sort, one pass per key from the last; NULLs placed as asked."""
    for fn, desc, nulls_first in reversed(list(keys)):
        null_rank = 1 if nulls_first == desc else 0  # reverse=True flips the ranks

        def key(item: Any, fn: Callable[[Any], Any] = fn, null_rank: int = null_rank) -> Any:
            v = fn(item)
            return (null_rank, 0) if v is None else (1 - null_rank, v)

        items.sort(key=key, reverse=desc)


# ---- output formatting ------------------------------------------------------------------------------


class Formatters:
    """Value -> result string per kind, in the account's time zone."""

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self._datetimes: dict[str, str] = {}

    def text_of(self, kind: str) -> Callable[[Any], str]:
        if kind == "number":
            return decimal_text
        if kind == "date":
            return _date_text
        if kind == "datetime":
            return self.datetime_text
        if kind == "ts":
            return _ts_text
        return str

    def datetime_text(self, value: str) -> str:
        cached = self._datetimes.get(value)
        if cached is None:
            local = self.local(value)
            if local is None:
                return value
            cached = f"{_date_part(local)} {_clock(local)}"
            if len(self._datetimes) > 50_000:
                self._datetimes.clear()
            self._datetimes[value] = cached
        return cached

    def local(self, value: str) -> datetime | None:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(self.tz)

    def formatted(self, kind: str, parts: list[tuple[str, str]]) -> Callable[[Any], str]:
        if kind == "datetime":

            def render(value: str) -> str:
                local = self.local(value)
                return value if local is None else render_format(parts, local)

            return render
        if kind == "date":
            return lambda value: render_format(parts, datetime.fromisoformat(value[:10]))
        return lambda value: render_format(parts, value)


def _date_part(value: datetime) -> str:
    return f"{value.month}/{value.day}/{value.year}"


def _clock(value: datetime) -> str:
    return f"{(value.hour % 12) or 12}:{value.minute:02d} {'am' if value.hour < 12 else 'pm'}"


def _date_text(value: str) -> str:
    try:
        return f"{int(value[5:7])}/{int(value[8:10])}/{int(value[0:4])}"
    except ValueError:
        return value


def _ts_text(value: datetime) -> str:
    if value.time() == time(0):
        return _date_part(value)
    return f"{_date_part(value)} {_clock(value)}"


# ---- the engine ---------------------------------------------------------------------------------------


class _Lru(OrderedDict[Any, Any]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_fresh(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> Any:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
        return value


class SuiteQLEngine:
    """Runs SuiteQL over a ``RecordStore``; call under the sandbox's lock."""

    def __init__(self, store: RecordStore, tz: tzinfo) -> None:
        self.store = store
        self.tz = tz
        self.formatters = Formatters(tz)
        self._compiled = _Lru(512)
        self._sources = _Lru(16)
        self._filtered = _Lru(16)
        self._results = _Lru(16)

    def clear(self) -> None:
        self._compiled.clear()
        self._sources.clear()
        self._filtered.clear()
        self._results.clear()

    def compile(self, q: str) -> CompiledQuery:
        cq = self._compiled.get_fresh(q)
        if cq is None:
            if not isinstance(q, str) or not q.strip():
                raise SuiteQLError("the query is empty")
            cq = Compiler(parse(q), self.tz, self.formatters).compile(q)
            self._compiled.put(q, cq)
        return cq

    def _version(self, types: tuple[str, ...]) -> tuple[int, ...]:
        tables = self.store.tables
        return tuple(t.version if (t := tables.get(rt)) is not None else 0 for rt in types)

    def _rows(self, types: tuple[str, ...], version: tuple[int, ...]) -> tuple[list[int], list[Row]]:
        key = (types, version)
        cached = self._sources.get_fresh(key)
        if cached is not None:
            return cached
        rows: list[Row] = []
        for rtype in types:
            table = self.store.tables.get(rtype)
            if table is None:
                continue
            records = table.records
            rows.extend([(i, records[str(i)], rtype) for i in table.order])
        if len(types) > 1:
            rows.sort(key=lambda r: r[0])
        ids = [r[0] for r in rows]
        return self._sources.put(key, (ids, rows))

    def execute(self, q: str, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """(total rows, the page's items)."""
        cq = self.compile(q)
        version = self._version(cq.types)
        ids, rows = self._rows(cq.types, version)
        if cq.residual is not None:
            key = (cq.types, cq.residual_key, version)
            cached = self._filtered.get_fresh(key)
            if cached is None:
                residual = cq.residual
                start, end = _bounds(ids, cq.bounds)
                if end - start <= max(_SMALL_RANGE, len(rows) // 10):
                    # a narrow key range: filter just that slice, nothing worth keeping
                    kept = [r for r in rows[start:end] if residual(r) is True]
                    cached = ([r[0] for r in kept], kept)
                else:
                    # filter the whole table once per store version: the next key range of a
                    # walk (WHERE id > :last AND ...) then costs a bisection, not a scan
                    kept = [r for r in rows if residual(r) is True]
                    cached = self._filtered.put(key, ([r[0] for r in kept], kept))
            ids, rows = cached
        start, end = _bounds(ids, cq.bounds)
        if cq.aggregate:
            results = self._results.get_fresh((q, version))
            if results is None:
                results = self._results.put((q, version), _aggregate(cq, rows[start:end]))
            page = results[offset : offset + limit]
            return len(results), [_item_of_group(cq, g) for g in page]
        total = end - start
        if cq.natural == 1:
            page = rows[start + offset : min(end, start + offset + limit)]
        elif cq.natural == -1:
            hi = end - offset
            page = rows[max(start, hi - limit) : hi][::-1] if hi > start else []
        else:
            ordered = self._results.get_fresh((q, version))
            if ordered is None:
                ordered = rows[start:end]
                _sort(ordered, cq.row_order)
                self._results.put((q, version), ordered)
            page = ordered[offset : offset + limit]
        columns = cq.columns
        items: list[dict[str, Any]] = []
        for row in page:
            item: dict[str, Any] = {"links": []}
            for name, fn, fmt in columns:
                v = fn(row)
                if v is not None:
                    item[name] = fmt(v)
            items.append(item)
        return total, items


def _bounds(ids: list[int], bounds: list[Bound]) -> tuple[int, int]:
    start, end = 0, len(ids)
    for b in bounds:
        if b.op == ">":
            start = max(start, bisect.bisect_right(ids, b.value))
        elif b.op == ">=":
            start = max(start, bisect.bisect_left(ids, b.value))
        elif b.op == "<":
            end = min(end, bisect.bisect_left(ids, b.value))
        else:  # <=
            end = min(end, bisect.bisect_right(ids, b.value))
    return start, max(start, end)


def _aggregate(cq: CompiledQuery, rows: list[Row]) -> list[tuple[Any, ...]]:
    """One tuple per group: the select items' values, then the ORDER BY keys."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    fns = cq.group_fns
    if fns:
        for row in rows:
            groups.setdefault(tuple(f(row) for f in fns), []).append(row)
    else:
        groups[()] = rows  # aggregates over everything: one row, even for no rows
    n = len(cq.outputs)
    results = [
        tuple(g(members, key) for _, g, _ in cq.outputs)
        + tuple(g(members, key) for g, _, _ in cq.group_order)
        for key, members in groups.items()
    ]
    _sort(results, [((lambda t, i=n + j: t[i]), desc, nf)
                    for j, (_, desc, nf) in enumerate(cq.group_order)])  # fmt: skip
    return results


def _item_of_group(cq: CompiledQuery, values: tuple[Any, ...]) -> dict[str, Any]:
    item: dict[str, Any] = {"links": []}
    for (name, _, fmt), v in zip(cq.outputs, values, strict=False):
        if v is not None:
            item[name] = fmt(v)
    return item
