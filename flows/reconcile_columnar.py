"""The daily match on columns: the rules of ``mappings.reconcile`` carried out as DuckDB
queries over a day's files, for days with a million orders (the row-by-row path costs about
100 µs a card row in mapping alone).

Same inputs, same rules, same classes as ``mappings.reconcile.reconcile`` for what this path
reads: orders (CSV), delivery evidence (CSV), card acquirer settlement CSVs and wallet
balance CSVs, payments in the order's currency. Money is exact decimals, never floats: every
amount's text is checked as the row readers check it (a decimal, not negative, no more
non-zero decimals than its currency's minor unit), since a cast alone would round past its
scale. A file that breaks a rule is refused with the file, line, field and rule, as the row
readers say it; the others are read. The rules are checked where the files are read, on
flags the inserts work out anyway; a file flagged is explained by the row engine's own
reader: a payment file's first bad line read again by its row reader (its words, and of a
line's errors the one it comes to first), an export of orders or deliveries read by the row
engine's export reader to its first bad line (pydantic's canonical ``Order`` and
``Delivery``: a field missing, a status, method or quantity they refuse...).

It reads the files it is given and returns counts (and, when asked, each entity's classes);
it writes nothing: storing a day's result stays with ``flows.reconcile``. With ``keep=True``
the result (``ColumnarDay``) also gives the whole result as the row engine builds it: every
discrepancy (its key, trace ids, amounts, detail text and status), every match group and
every order outcome as rows, with the operator's ``accept``, ``adjust`` and ``assign``
corrections applied (what this path does not carry out raises ``ColumnarUnsupported``: the
row engine matches that day).

What it does not carry out as the row engine does it detects once the files are read, and
raises ``ColumnarUnsupported`` with the reason (the flow then matches the day by rows): a
``RefundedReversed`` or ``ChargebackReversed`` row, a trace read twice (the same trace id,
which the row engine counts once), an acquirer time in a named zone (``Asia/Singapore``;
abbreviations and offsets are read) and, with ``keep``, currency conversion (a payment,
refund, fee or payout member in another currency than its order's or payout's; without
``keep`` a payment matches only an order in its currency and the others count 0), and a
currency, time or amount with whitespace around it that the typed read or the cast does not
take (the row readers strip it; every text field this path compares is stripped as they
strip it, an empty one missing), a text the row reader reads and this path's checks do not
(an export's total with an exponent, a wallet type in another spelling than ASCII that
``str.casefold`` makes one of its types), a reference longer than the 200 characters the
row mapping keeps of it (it compares their first 200) and an account or payout id longer
than the canonical models take. CSV files delimited otherwise than by ``,`` are found by
``flows.reconcile.plan_engine`` before.

Where it still differs, by design of its inputs:

- without ``site_zones`` an order's business day is the date of its ``created_at`` as
  written, not on the site's clock;
- of the reference rules, those whose values these files carry are applied
  (``provider_reference->provider_reference``, ``merchant_reference->order_id``,
  ``customer_reference->order_id`` for a wallet row's ``customer_ref``); the words of a
  description, which the acquirer and wallet readers make from a row's type and method, are
  not looked up;
- a percent tolerance is rounded to two decimals (half even or half up); methods whose
  amounts are net raise ``ColumnarUnsupported``.
"""

from __future__ import annotations

import csv
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache
from pathlib import Path
from typing import Any

from iso4217 import Currency

from canonical import (
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Money,
    Order,
    OrderStatus,
    Payment,
    PaymentMethod,
    PaymentTrace,
    Payout,
    TraceKind,
)
from canonical._base import field_bound, prevalidated
from canonical.money import RoundingMode, minor_unit, quantize_exact
from connectors.payments import acquirer as acquirer_reader
from connectors.payments import wallet_balance as wallet_reader
from connectors.payments.acquirer import FEE_COLUMNS as ACQUIRER_FEES
from connectors.payments.acquirer import REQUIRED as ACQUIRER_REQUIRED
from connectors.payments.common import (
    _ABBREVIATIONS,
    Origin,
    PaymentFileError,
    column_key,
    timezone_of,
)
from connectors.payments.wallet_balance import REQUIRED as WALLET_REQUIRED
from connectors.payments.wallet_balance import TYPES as WALLET_TYPES
from flows.heap import collector_off
from mappings.payments import ACQUIRER_KINDS as ROW_ACQUIRER_KINDS
from mappings.payments import MAX_REF
from mappings.reconcile import (
    DELIVERY_EXPORT_COLUMNS,
    DELIVERY_EXPORT_OPTIONAL,
    ORDER_EXPORT_COLUMNS,
    SOURCE_METHODS,
    Correction,
    CorrectionKind,
    Discrepancy,
    DiscrepancyClass,
    GroupKind,
    Rules,
    _key,
    settle,
)


@dataclass
class ColumnarResult:
    day: date
    counts: dict[str, int]
    """``discrepancy:{class}`` and ``group:{kind}`` counts, as ``DayResult.counts``."""
    labels: dict[str, list[str]] = field(default_factory=dict)
    """Entity -> its discrepancy classes (only when asked for: ``site:order`` for orders,
    the provider reference for payments without order, the payout id for payouts)."""
    refused: list[str] = field(default_factory=list)
    traces: int = 0
    orders: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds each phase of the run took (wall clock), in the order they ran: where a large
    day's time goes, for whoever makes it faster."""

    def close(self) -> None:
        """Nothing to close: only a ``ColumnarDay`` (``keep=True``) holds its database."""


def _header(path: Path, required: Sequence[str]) -> list[str]:
    """The file's column names, once the required ones are known to be there."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        names = next(csv.reader([fh.readline()]))
    header = {column_key(h) for h in names}
    missing = [c for c in required if column_key(c) not in header]
    if missing:
        raise PaymentFileError(path.name, "missing_column", "missing column"
                               + ("s " if len(missing) > 1 else " ")
                               + ", ".join(repr(m) for m in missing), line=1)
    return names


def _currencies() -> list[tuple[str, int]]:
    out = []
    for c in Currency:
        if c.exponent is not None:
            out.append((c.code, c.exponent))
    return out


def _zones() -> list[tuple[str, int]]:
    """The time zone abbreviations the acquirer reader knows, as minutes east of UTC (the
    booking date is the UTC date of the row's instant, as ``acquirer_row_records`` takes it)."""
    from datetime import datetime

    out = []
    for name, zone in _ABBREVIATIONS.items():
        offset = zone.utcoffset(datetime(2026, 1, 1))
        if offset is not None:
            out.append((name, int(offset.total_seconds() // 60)))
    return out


def _q(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _ident(name: str) -> str:
    """A column name as an SQL identifier (quoted: the files' names hold spaces)."""
    return '"' + name.replace('"', '""') + '"'


DECIMAL_TEXT = r"[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)"
"""An amount as the row readers take it (``connectors.payments.common``): digits with an
optional decimal point and sign; no exponent, no digit separators."""


def _check(con: Any, table: str, file: str, pairs: Sequence[tuple[str, str]]) -> None:
    """Refuse the file if an amount has no currency or an unknown one, is not a decimal, is
    negative, or has more non-zero decimals than its currency allows, as the row readers
    refuse it (the first offending row named). The text is judged, not a cast of it: a cast
    would round past its scale. One scan for all the table's amount columns; the row's line
    is looked up only when one is bad."""
    conditions = []
    for amount, currency in pairs:
        a, c = f'"{amount}"', f'"{currency}"'
        conditions.append(
            f"({a} IS NOT NULL AND ({c} IS NULL OR {c} NOT IN (SELECT code FROM currencies)"
            f" OR NOT regexp_full_match({a}, '{DECIMAL_TEXT}') OR starts_with({a}, '-')"
            f" OR length(rtrim(split_part({a}, '.', 2), '0')) >"
            f" (SELECT exp FROM currencies WHERE code = {c})))")
    where = " OR ".join(conditions)
    # the table of currencies only for a file being explained (one statement: executemany
    # costs 1 ms a row)
    con.execute("CREATE TABLE IF NOT EXISTS currencies AS SELECT * FROM (VALUES "
                + ", ".join(f"('{c}', {e}, {10 ** e})" for c, e in _currencies())
                + ") v(code, exp, scale)")
    hit = con.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()
    if not hit or not hit[0]:
        return
    row = con.execute(f"""SELECT * FROM (SELECT row_number() OVER () + 1 AS line, *
                          FROM {table}) WHERE {where} ORDER BY line LIMIT 1""")
    names = [d[0] for d in row.description]
    values = dict(zip(names, row.fetchone() or (), strict=False))
    line = values.get("line")
    exps = dict(_currencies())
    for amount, currency in pairs:
        value, cur = values.get(amount), values.get(currency)
        if value is None:
            continue
        if cur is None:
            raise PaymentFileError(file, "currency_missing",
                                   f"an amount in {amount!r} needs a currency", line=line,
                                   field=amount)
        if cur not in exps:
            raise PaymentFileError(file, "currency_unknown",
                                   f"{cur!r} is not an ISO 4217 currency", line=line,
                                   field=currency)
        text = str(value).strip()
        if not re.fullmatch(DECIMAL_TEXT, text):
            raise PaymentFileError(file, "amount_format", f"{value!r} is not a decimal amount",
                                   line=line, field=amount)
        if text.startswith("-"):
            raise PaymentFileError(file, "amount_sign", f"{value!r} is negative; this column "
                                   "takes magnitudes", line=line, field=amount)
        if len(text.partition(".")[2].rstrip("0")) > exps[cur]:
            raise PaymentFileError(file, "amount_decimals", f"{text} has more decimals than "
                                   f"{cur} allows ({exps[cur]})", line=line, field=amount)
    raise PaymentFileError(file, "invalid_amount", "an amount cannot be read", line=line)


RowCheck = tuple[str, str, str, str]
"""A rule a row of a file's text must keep, for the explaining pass: the column named, SQL
that is true for a row breaking it, the rule's name, and its sentence (``{value}`` is the
column's text)."""


def _required(columns: Sequence[str]) -> list[RowCheck]:
    """The row readers' ``require``: each column has a value (an empty one, or one of
    whitespace only, is NULL once read: ``_cell``)."""
    return [(c, f"{_ident(c)} IS NULL", "required", "empty; a value is required")
            for c in columns]


ACQUIRER_READ_FIRST = ("TimeZone", "Creation Date")
"""The acquirer's columns its row reader reads first (the rules of ``acquirer_rows``)."""


def _values(names: Sequence[str]) -> str:
    """SQL: ``names`` as the list of an ``IN (...)``."""
    return ", ".join(map(_literal, names))


REF_MAX = field_bound(Payment, "provider_reference", "max_length")
"""The longest reference an order takes (and the row mapping keeps of a trace's: ``MAX_REF``,
checked equal below)."""
assert REF_MAX == MAX_REF
ORDER_COMPLETE = ("site", "order_id", "day", "currency", "expected", "confirmed", "lag")
"""The columns of ``orders`` an order the row engine reads has (``order_from_export``:
a canonical ``Order``): its site, id, time (its day), currency and total (its expected
amount), and, NULL when the canonical order refuses them, its status (``confirmed``) and
its payment (``lag``)."""
ORDER_LONGEST = {"site": field_bound(Order, "site", "max_length"),
                 "order_id": field_bound(Order, "order_id", "max_length"), "pref": REF_MAX}
"""The longest site, order id and reference (in characters) a canonical order takes."""


def _delivery_refused(quantity: str, optional: Sequence[str] = ()) -> str:
    """SQL: a row of the delivery export (its columns as ``_source`` takes them; its
    quantity ``quantity`` as a number) that the row engine's reader surely refuses
    (``delivery_from_export``: a canonical ``Delivery``), or perhaps refuses: a required
    field missing, a status it does not know, a quantity that is not a whole number in its
    bounds. A quantity other than one digit is judged by its text too: the cast takes
    ``1.5`` (as 2), ``1e2``, ``0x10`` and ``1.``, which pydantic refuses; both take ``+1``,
    ``1_000``, ``1.00`` alike (``QUANTITY_TEXT``); any other, the reader says whether it
    takes it (``_export_refusal``). Of the ``optional`` columns the file has
    (``DELIVERY_EXPORT_OPTIONAL``): a kind the canonical delivery does not know, a time not
    in ``DELIVERED_AT_TEXT`` or not a valid date (any other the reader judges). (A site,
    order id or delivery id longer than the canonical delivery takes is not tested: three
    more tests a row cost half of the whole check.)"""
    tests = [f"site IS NULL OR order_id IS NULL OR status IS NULL"
             f" OR status NOT IN ({_values(tuple(DeliveryStatus))}) OR {quantity} IS NULL"
             f" OR {quantity} < {field_bound(Delivery, 'quantity', 'ge')}"
             f" OR {quantity} > {field_bound(Delivery, 'quantity', 'le')}"
             f" OR (strlen(quantity) <> 1"
             f" AND NOT regexp_full_match({_cell('quantity')}, '{QUANTITY_TEXT}'))"]
    if "kind" in optional:
        tests.append(f"(kind IS NOT NULL AND kind NOT IN ({_values(tuple(DeliveryKind))}))")
    if "delivered_at" in optional:
        tests.append(f"(delivered_at IS NOT NULL AND (NOT regexp_full_match(delivered_at,"
                     f" {_literal(DELIVERED_AT_TEXT)})"
                     " OR TRY_CAST(delivered_at AS TIMESTAMPTZ) IS NULL))")
    return " OR ".join(tests)


QUANTITY_TEXT = r"[+-]?[0-9]+(_[0-9]+)*([.]0+)?"
"""A whole number's text as pydantic's ``int`` and DuckDB's cast to INTEGER take it alike
(a sign, digits in groups joined by ``_``, zeros after a point)."""
DELIVERED_AT_TEXT = (r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}"
                     r"([.][0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):?[0-5][0-9])")
"""A delivery's time as this path takes it from the export (it does not use it; the row
reader's canonical delivery must take it): ISO 8601 with a UTC offset (``Z``, ``+08:00`` or
``+0800``), its date valid (the cast says). Any other is the row reader's to judge: refused
in its words, or the day is the row engine's."""


def _delivered(optional: Sequence[str] = ()) -> str:
    """SQL: a delivery row as most are, delivered, which the row reader reads: a status, a
    site, an order id, a quantity of one digit, not 0 (so 1 to 9), and of the ``optional``
    columns the file has, the kind empty or ``codes`` and no time. One conjunction, where
    the tests of ``_delivery_refused`` are many disjunctions of every row: those only for
    the rows that are not so."""
    test = ("""status = 'delivered' AND strlen(quantity) = 1 AND site IS NOT NULL"""
            """ AND order_id IS NOT NULL AND "quantity:" > 0""")
    if "kind" in optional:
        test += " AND (kind IS NULL OR kind = 'codes')"
    if "delivered_at" in optional:
        test += " AND delivered_at IS NULL"
    return test


ROW_REFUSED = "vouchflow: a row the row reader refuses"
"""What the error a delivery file's query raises at a row ``_delivery_refused`` flags says
(a text of it cast to a boolean): the file is explained by the row reader
(``_export_refusal``)."""

ACQUIRER_KINDS = {name: kind.value for name, kind in ROW_ACQUIRER_KINDS.items()
                  if kind in {TraceKind.PAYMENT, TraceKind.REFUND, TraceKind.CHARGEBACK,
                              TraceKind.PAYOUT}}
"""The row path's acquirer types, for the kinds this path matches (the others are ``other``)."""
ACQUIRER_TYPES = {name: ACQUIRER_KINDS[name.lower()] for name in (
    "Settled", "SettledBulk", "Refunded", "RefundedBulk", "Chargeback", "SecondChargeback",
    "MerchantPayout")}
"""The same types as the settlement reports spell them."""
KINDS = ("payment", "refund", "chargeback", "payout", "other")


def _amount(amount: str) -> str:
    """SQL: the amount column (read as text) as an exact decimal. A text the cast cannot
    take fails the read, and the file is explained by the text path."""
    return f'CAST(r."{amount}" AS {AMOUNT})'


def _invalid(amount: str, value: str | None = None, *, separators: bool = True) -> str:
    """SQL: the amount (its text ``a``, its decimal ``v``) is there and negative, or not
    exactly what its text says. The cast takes an exponent (``1e-7``) and rounds past six
    decimals, where the row readers refuse the text; a text with an exponent, or with a
    seventh decimal that is not a trailing zero, is flagged (the regular expression only for
    the rare text with seven decimals or more). Its currency and its exactness to the
    currency's minor unit are checked once the file is in (one CASE over the few currencies
    it holds, instead of a lookup per row). A digit separator (``1_000``), which the cast
    takes, is flagged too (unless ``separators`` is False: the caller looks for them in all
    of a row's amounts at once, ``_separators``). ``value`` names the decimal when the query
    has it already."""
    a, v = f'r."{amount}"', value or _amount(amount)
    # one pass of the text for an exponent or a separator (three ``contains`` cost more)
    glob = f" OR {a} GLOB '*[eE_]*'" if separators else ""
    return (f"({a} IS NOT NULL AND ({v} < 0{glob}"
            f" OR ({a} LIKE '%._______%' AND NOT regexp_full_match({a},"
            f" '\\s*[+]?[0-9]*[.]{'[0-9]' * 6}0*\\s*'))))")


def _separators(column: str) -> str:
    """SQL: the text ``column`` (a row's amounts written one after the other,
    ``concat`` of them) has an exponent or a digit separator (``e``, ``E``, ``_``), which
    the cast takes and the row readers refuse. For a row of several amounts this costs a
    third of a ``GLOB`` of each: measured on a million acquirer rows of eight amounts, the
    insert's CPU time 0.95 s -> 0.89 s."""
    return f"(contains({column}, 'e') OR contains({column}, 'E') OR contains({column}, '_'))"


def _flag(condition: str) -> str:
    """SQL: ``condition`` as a flag that is never NULL. Evaluated as a CASE, the condition is
    a filter: each OR and AND looks only at the rows still undecided, instead of computing
    every part for every row and combining the columns of results."""
    return f"CASE WHEN {condition} THEN true ELSE false END"


def _columns(names: Sequence[str], typed: dict[str, str]) -> str:
    """A ``columns=`` argument for read_csv: every column text unless typed here (times as
    timestamps, currencies as the ISO 4217 enum; a value that is not one fails the read and
    the file is explained by the text path). Amounts stay text: their text is judged."""
    items = ", ".join("'" + n.replace("'", "''") + "': '" + typed.get(n, "VARCHAR") + "'"
                      for n in names)
    return "{" + items + "}"


AMOUNT = "DECIMAL(18,6)"
ORDERED_BUFFER = 16 << 20
"""The CSV reader's largest buffer for a file inserted in its order. Measured on a
million-row acquirer file (94 MB, 2 cores): with the reader's default buffers the ordered
insert costs a sixth more CPU than an unordered one (its many small batches are merged into
row groups); with 16 MiB buffers, the same as unordered. A smaller file is read in quarters
(at least 4 MiB): its 24 MB of wallet rows in 16 MiB buffers took 0.21 s, in 6 MiB 0.15 s."""
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
"""The acquirer's times as this path reads them (the first of the row reader's formats)."""
ACQ_AMOUNTS = (("Gross Credit (GC)", "Gross Currency"), ("Gross Debit (GC)", "Gross Currency"),
               ("Net Credit (NC)", "Net Currency"), ("Net Debit (NC)", "Net Currency"),
               *((fee, "Net Currency") for fee in ACQUIRER_FEES))
"""The acquirer's amounts: gross and net (the first four), then its fees (every one counts in
a trace's fee, as the row reader sums them)."""
ACQ_OPTIONAL = (*ACQUIRER_FEES, "Modification Reference", "Exchange Rate")
"""Columns the acquirer reader takes when they are there (empty when not)."""


def reconcile_columnar(rules: Rules, day: date, *, orders: Sequence[Path],
                       deliveries: Sequence[Path], acquirer: Sequence[Path] = (),
                       wallet: Sequence[Path] = (), labels: bool = False,
                       threads: int | None = None, keep: bool = False,
                       corrections: Sequence[Correction] = (),
                       site_zones: Mapping[str, str] | None = None,
                       earliest: date | None = None) -> ColumnarResult:
    """Read, check, normalise, match and classify a day's files in DuckDB. Each file is read
    once, its amounts checked in the same pass; a file with a bad row is taken out again and
    explained (file, line, field, rule) by a second look at that file only.

    Orders and traces are named by their row ids once read: after the two joins on text keys
    (payment reference to order, delivery to order) every join and grouping is on integers,
    and an order's site and id are looked up again only for the entities that are reported.

    With ``keep`` the database stays open in the result (a ``ColumnarDay``), which gives the
    whole result as the row engine builds it (groups, discrepancies, order outcomes), each
    worked out when asked for. ``corrections`` are the operator's, as the row engine takes
    them (``accept``, ``adjust``, ``assign``); ``ColumnarUnsupported`` when this path cannot
    give the row engine's result (a trace assigned to an order in another currency, a
    method whose amounts are net).

    ``site_zones`` (site -> IANA time zone, as ``DayInput.site_zones``): an order's business
    day is the date of its instant on its site's clock (UTC for a site not named), as the row
    engine takes it; without it, the date of ``created_at`` as written. ``earliest``: orders
    of business days before it (or after ``day``) are left out, as ``flows.reconcile`` gives
    the row engine only the orders of the day and of the settlement lag before it."""
    import duckdb

    unsupported = _unsupported(rules, corrections)
    if unsupported:
        raise ColumnarUnsupported(unsupported)

    phases: dict[str, float] = {}
    clock = [time.perf_counter()]

    def phase(name: str) -> None:
        now = time.perf_counter()
        phases[name] = round(phases.get(name, 0.0) + now - clock[0], 4)
        clock[0] = now

    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads={int(threads)}")
    con.execute("SET TimeZone='UTC'")
    con.execute("SET enable_progress_bar=false")
    con.execute("SET preserve_insertion_order=false")  # results never depend on row order
    # what is stored of a day's million rows is stored small: currencies and kinds as
    # enums (one byte; a currency that is not ISO 4217 fails the read, and the file is
    # explained), statuses as flags; a stored text costs more than parsing it
    con.execute("CREATE TYPE currency AS ENUM ("
                + ", ".join(f"'{c}'" for c, _ in _currencies()) + ")")
    con.execute("CREATE TYPE kind AS ENUM ("
                + ", ".join(f"'{k}'" for k in KINDS) + ")")
    lags = {name: m.lag_days for name, m in rules.methods.items()}
    # the methods as the rules and the row mapping spell them (taken as they are: ``_source``)
    methods = tuple(sorted({*lags, *SOURCE_METHODS.values()}))
    # an order's settlement lag, by its method; NULL for a payment the canonical order
    # refuses (a reference without method or a method without reference, a method it does
    # not know), which ``post_check`` counts: the common case (a reference and a method
    # of the rules) costs a test of the reference more than the lag alone
    known = [m.value for m in PaymentMethod]
    lag_case = (f"CASE WHEN r.provider_reference IS NULL THEN CASE WHEN r.method IS NULL"
                f" THEN {rules.default_lag_days} END "
                + " ".join(f"WHEN r.method = '{k}' THEN {v}" for k, v in lags.items()
                           if k in known)
                + "".join(f" WHEN r.method IN ({_values(others)}) THEN {rules.default_lag_days}"
                          for others in [[m for m in known if m not in lags]] if others)
                + " END")
    con.execute("""CREATE TABLE orders (file INTEGER, site VARCHAR, order_id VARCHAR,
        cancelled BOOLEAN, confirmed BOOLEAN, currency currency, day DATE, pref VARCHAR,
        expected DECIMAL(18,6), lag INTEGER, bad BOOLEAN, method VARCHAR)""")
    con.execute("""CREATE TABLE traces (file INTEGER, kind kind,
        account VARCHAR, pref VARCHAR, mref VARCHAR, oref VARCHAR, currency currency,
        net_currency currency, amount DECIMAL(18,6), credit BOOLEAN, fee DECIMAL(18,6),
        net DECIMAL(18,6), booking_date DATE,
        batch VARCHAR, bad BOOLEAN, ttype VARCHAR, modref VARCHAR, cref VARCHAR)""")
    refused: list[str] = []
    number = 0
    files: dict[int, Path] = {}

    scales = {c: 10 ** e for c, e in _currencies()}

    def post_check(table: str, pairs: Sequence[tuple[str, str]],
                   complete: Sequence[str] = (), longest: Mapping[str, int] | None = None
                   ) -> bool:
        """True when no row of file ``number`` is flagged bad, every amount has a currency
        and is exact to its minor unit, no column of ``complete`` is NULL and no text of
        ``longest`` has more characters than it says: one scan grouped by the currencies
        the file holds (a handful) counts the flags and the amounts with more than two
        decimals; a second one, exact to each currency, only when a currency of the file
        has fewer than two decimals or an amount more. The NULLs and the texts' lengths
        are asked of the table's statistics first (``_stats``, no scan); only when they say
        there may be some are they counted in the scan (the NULLs, the texts' longest
        length in bytes), and the characters only of a text of more bytes. (The
        currencies are ISO 4217: their type says so.)"""
        longest = longest or {}
        if complete or longest:
            # the table's statistics say no NULL and no text longer than the bytes of
            # ``longest`` (as most days): nothing to count
            known = _stats(con, table, [*complete, *longest])
            if all(known.get(c, {}).get("has_null") is False for c in complete) and all(
                    _fits(known.get(c, {}), most) for c, most in longest.items()):
                complete, longest = (), {}
        keys = ", ".join(f"CASE WHEN {a} IS NOT NULL THEN {c} END" for a, c in pairs)
        cents = " OR ".join(f"{a} * 100 % 1 <> 0" for a, _ in pairs)
        missing = " OR ".join(f"({a} IS NOT NULL AND {c} IS NULL)" for a, c in pairs)
        # NULLs counted from the columns' validity (``count(column)``): no test a row
        extra = "".join(f"count(*) - count({c}), " for c in complete) + "".join(
            f"max(strlen({c})), " for c in longest)
        groups = con.execute(f"SELECT count(*) FILTER (bad OR {missing}), "
                             f"count(*) FILTER ({cents}), {extra}{keys} FROM {table} "
                             "WHERE file = ? GROUP BY ALL", [number]).fetchall()
        if any(any(g[i] for i in [0, *range(2, 2 + len(complete))]) for g in groups):
            return False
        at = 2 + len(complete)
        for i, (column, most) in enumerate(longest.items()):
            if max((g[at + i] or 0 for g in groups), default=0) > most:
                row = con.execute(f"SELECT count(*) FROM {table} WHERE file = ? AND "
                                  f"length({column}) > {most}", [number]).fetchone()
                if row and row[0]:
                    return False
        at += len(longest)
        presents = [sorted({g[at + i] for g in groups} - {None}) for i in range(len(pairs))]
        if not any(g[1] for g in groups) and all(
                scales[c] >= 100 for present in presents for c in present):
            return True
        inexact = []
        for (amount, currency), present in zip(pairs, presents, strict=True):
            if present:
                case = "CASE " + currency + " " + " ".join(
                    f"WHEN '{c}' THEN {scales[c]}" for c in present) + " END"
                inexact.append(f"{amount} * {case} % 1 <> 0")
        if not inexact:
            return True
        row = con.execute(f"SELECT count(*) FROM {table} WHERE file = ? AND "
                          f"({' OR '.join(inexact)})", [number]).fetchone()
        return not (row and row[0])

    def take(table: str, path: Path, required: Sequence[str], insert: str,
             pairs: Sequence[tuple[str, str]], typed: dict[str, str] | None = None,
             stored: Sequence[tuple[str, str]] = (),
             cast: dict[str, str] | None = None,
             timestamp_format: str | None = TIMESTAMP_FORMAT,
             rows: Sequence[RowCheck] = (), optional: Sequence[str] = (),
             ordered: bool = False, reader: RowReader | None = None,
             export: str | None = None, complete: Sequence[str] = (),
             longest: Mapping[str, int] | None = None,
             cells: Mapping[str, Sequence[str]] | None = None) -> None:
        """Read one file into ``table``; ``cast`` names text columns the insert casts (so a
        failed insert is explained by them too); ``optional`` columns the file may leave
        out. ``ordered``: the rows go in in the file's order (their row ids count its
        lines: a trace's line is looked up there, not in the file read again). The insert
        may name ``{customer_ref}``: the column ``customer_ref`` when the file has one of
        that name, else NULL. ``cells``: the text columns the insert takes as the row readers
        take them (``_source``); ``complete`` and ``longest``: for ``post_check``.

        A file the insert fails on or flags is explained: a payment file by the checks of
        ``_guard`` (its first bad line), in the words of its row reader (``reader``, which
        reads that line again, ``_reread``); an export of orders (``export``) by the row
        engine's reader of the whole file (``_export_refusal``), whose checks the insert's
        flag does not all repeat. A file the row reader reads after all is the row
        engine's (``ColumnarUnsupported``)."""
        nonlocal number
        number += 1
        files[number] = path
        failed = False
        try:
            names = _header(path, required)
            src = _source(path, names, typed or {}, timestamp_format, optional, ordered,
                          cells or {})
            if ordered:
                con.execute("SET preserve_insertion_order=true")
            con.execute(insert.format(n=number, src=src, customer_ref="r.customer_ref"
                                      if "customer_ref" in names else "NULL"))
        except PaymentFileError as exc:
            refused.append(str(exc))
            return
        except duckdb.Error:
            failed = True
        finally:
            if ordered:
                con.execute("SET preserve_insertion_order=false")
        if failed or not post_check(table, stored, complete, longest):
            con.execute(f"DELETE FROM {table} WHERE file = ?", [number])
            con.execute("SET preserve_insertion_order=true")  # lines are counted in order
            try:
                # every column as text, in the same dialect as the typed read (a sniffer
                # could read a broken file another way); a file the CSV reader cannot
                # parse at all is refused at the line it names
                con.execute(f"""CREATE OR REPLACE TEMP TABLE explain AS SELECT *
                                FROM {_source(path, names, {}, None, optional)}""")
            except duckdb.Error as exc:
                refused.append(str(_syntax_error(path.name, exc)))
            else:
                refusal = _export_refusal(path, export, day) if export else None
                if refusal is not None:
                    refused.append(refusal)
                    return
                found = _guard(con, "explain", path.name, pairs,
                               {**(typed or {}), **(cast or {})}, timestamp_format, rows,
                               None if export else reader)
                if found is not None and not export:
                    refused.append(str(found))
                    return
                # nothing wrong with the text as the row readers strip it: a column read as
                # written (a currency, a time, an amount) that the typed read or the cast
                # could not take for the whitespace around it is the row engine's
                _padded(con, path, names, cells or {})
                # the row reader reads what this path could not (an export's total with an
                # exponent, an amount too large for the cast...): the row engine's
                found = found or _uncast(con, "explain", path.name, pairs)
                raise _read_by_the_rows(path.name, found, found and _cell_at(
                    con, "explain", found.line or 0, found.field))
            finally:
                con.execute("SET preserve_insertion_order=false")

    phase("connect")
    created, order_day = "TIMESTAMP", "CAST(r.created_at AS DATE)"
    if site_zones is not None:
        # the instant (an offset applied; a time without one is UTC) on the site's clock
        created = "TIMESTAMPTZ"
        order_day = "CAST(timezone(CASE r.site " + " ".join(
            f"WHEN {_literal(site)} THEN {_literal(zone)}"
            for site, zone in sorted(site_zones.items())) + " ELSE 'UTC' END, r.created_at)" \
            " AS DATE)" if site_zones else "CAST(r.created_at AS DATE)"
    # a row the canonical order refuses (a required field missing, a status or a payment
    # it does not know, a text longer than it takes) leaves a NULL in a column stored
    # anyway, or a text too long, which ``post_check`` counts (``ORDER_COMPLETE``,
    # ``ORDER_LONGEST``): its status in ``confirmed`` (NULL unless one of the four), its
    # total in ``expected`` (a cancelled order's too), its payment in ``lag``; the file
    # is then explained by the row engine's reader (``_export_refusal``)
    statuses = " ".join(f"WHEN '{s}' THEN {str(s is OrderStatus.CONFIRMED).lower()}"
                        for s in sorted(OrderStatus, key=lambda s: s is not
                                        OrderStatus.CONFIRMED))
    for path in orders:
        take("orders", path, ORDER_EXPORT_COLUMNS, f"""INSERT INTO orders SELECT {{n}}, r.site,
            r.order_id, r.status = 'cancelled', CASE r.status {statuses} END,
            r.currency, {order_day},
            r.provider_reference,
            CASE WHEN r.status = 'cancelled' AND r.total IS NOT NULL THEN 0
                 ELSE r."total:" END,
            {lag_case}, {_flag(_invalid('total', 'r."total:"'))},
            {"coalesce(r.method, 'unknown')" if keep else 'NULL'}
            FROM (SELECT *, {_amount('total')} AS "total:" FROM {{src}} r) r""",
             [("total", "currency")], {"currency": "currency", "created_at": created},
             [("expected", "currency")], complete=ORDER_COMPLETE, longest=ORDER_LONGEST,
             export="orders",
             cells={"site": (), "order_id": (), "provider_reference": (),
                    "status": tuple(OrderStatus), "method": methods},
             # without zones, the date and time as written there (its offset not applied):
             # its date is the site's business day
             timestamp_format=None)
    if earliest is not None:
        # only the orders of the window, as the flow gives the row engine (an order of the
        # day, or of the days before within the longest settlement lag); the rows left keep
        # their row ids
        con.execute(f"DELETE FROM orders WHERE day < DATE '{earliest.isoformat()}' "
                    f"OR day > DATE '{day.isoformat()}'")
    # delivery evidence is read where it is used, in the verdict (one pass, no table of its
    # own); a file the CSV reader cannot parse is found then and refused
    phase("read_orders")
    delivered_from: dict[Path, str] = {}
    refused_deliveries_at = len(refused)
    delivery_rows: dict[Path, str] = {}
    # the quantity as written first (the cast takes ASCII whitespace around it), stripped as
    # the row reader strips it only when the cast cannot take it
    quantity = ("coalesce(TRY_CAST(quantity AS INTEGER),"
                f" TRY_CAST({_cell('quantity')} AS INTEGER))")
    delivery_optional: dict[Path, list[str]] = {}  # the optional columns a file has
    for path in deliveries:
        try:
            names = _header(path, DELIVERY_EXPORT_COLUMNS)
            source = _source(path, names, cells={
                "site": (), "order_id": (), "status": tuple(DeliveryStatus),
                "kind": tuple(DeliveryKind), "delivered_at": ()})
        except PaymentFileError as exc:
            refused.append(str(exc))
            continue
        have = {column_key(n): n for n in names}
        optional = delivery_optional[path] = [c for c in DELIVERY_EXPORT_OPTIONAL
                                              if column_key(c) in have]
        if any(have[column_key(c)] != c for c in optional):
            # the column as the file spells it (the readers match names spacing and case
            # aside), by the name the tests use
            source = "(SELECT *, " + ", ".join(
                f"{_ident(have[column_key(c)])} AS {_ident(c)}" for c in optional
                if have[column_key(c)] != c) + f" FROM {source})"
        # a row the row reader refuses stops the query (a cast that fails, naming
        # ``ROW_REFUSED``: the file is explained by the row reader, ``explain_deliveries``):
        # one test of each row, where it is read. (Not DuckDB's ``error``: a volatile
        # function, it keeps the optimizer from pushing the projections down, 0.15 s of
        # CPU on a million rows.)
        delivery_rows[path] = f'(SELECT *, {quantity} AS "quantity:" FROM {source})'
        delivered_from[path] = (
            f"SELECT site, order_id FROM {delivery_rows[path]} WHERE CASE"
            f" WHEN {_delivered(optional)} THEN true"
            f""" WHEN {_delivery_refused('"quantity:"', optional)}"""
            f" THEN CAST(concat({_literal(ROW_REFUSED + ': ')}, status) AS BOOLEAN)"
            """ ELSE status = 'delivered' AND "quantity:" > 0 END""")

    def explain_deliveries(path: Path, exc: Exception) -> str:
        """The refusal of a delivery file its query failed on: a row the row reader
        refuses, in its words, or a line the CSV reader cannot parse; a file the row
        reader reads after all is the row engine's."""
        if ROW_REFUSED not in str(exc):
            return str(_syntax_error(path.name, exc))
        refusal = _export_refusal(path, "deliveries", day)
        if refusal is not None:
            return refusal
        con.execute("SET preserve_insertion_order=true")  # lines are counted in order
        try:
            row = con.execute(f"""SELECT line FROM (SELECT row_number() OVER () + 1 AS line,
                * FROM {delivery_rows[path]})
                WHERE {_delivery_refused('"quantity:"', delivery_optional[path])}
                ORDER BY line LIMIT 1""").fetchone()
        finally:
            con.execute("SET preserve_insertion_order=false")
        raise ColumnarUnsupported(f"{path.name}: line {row[0] if row else '?'}: a row this "
                                  "path does not read as the row reader does (the row "
                                  "engine reads it)")
    # the type and the zone as the reports spell them first (one comparison of the text),
    # the row reader's normalised spelling only for the others (the zone is read as
    # written: stripped, ``_cell``, only when it is not an abbreviation as it stands)
    kinds = "CASE \"Type\" " + " ".join(f"WHEN '{k}' THEN '{v}'::kind" for k, v in
                                       ACQUIRER_TYPES.items()) \
        + " ELSE CASE lower(replace(\"Type\", ' ', '')) " + " ".join(
            f"WHEN '{k}' THEN '{v}'::kind" for k, v in ACQUIRER_KINDS.items()) \
        + " ELSE 'other'::kind END END"
    zone = "CASE \"TimeZone\" " + " ".join(
        f"WHEN '{name}' THEN INTERVAL '{minutes} minutes'" for name, minutes in _zones()) \
        + f" ELSE CASE upper({_cell(chr(34) + 'TimeZone' + chr(34))}) " + " ".join(
            f"WHEN '{name}' THEN INTERVAL '{minutes} minutes'" for name, minutes in _zones()) \
        + f" ELSE to_minutes({_offset_minutes('TimeZone', stripped=True)}) END END"
    card_files = []  # the acquirer's (their payouts are checked against their batches)
    # each amount as a decimal, and all of a row's amounts' text one after the other (the
    # missing ones left out) for one search of an exponent or a separator
    amounts = ", ".join(f"{_amount(a)} AS \"{a}:\"" for a, _ in ACQ_AMOUNTS) + \
        ", concat(" + ", ".join(f'r."{a}"' for a, _ in ACQ_AMOUNTS) + ') AS "amounts:"'
    checks = " OR ".join([_separators('r."amounts:"'), *(
        _invalid(a, f'r."{a}:"', separators=False) for a, _ in ACQ_AMOUNTS)])
    # a row the row reader refuses whole: debit and credit both filled, no amount at all,
    # an exchange rate that is not a number
    acquirer_rows: list[RowCheck] = [
        *_required(ACQUIRER_READ_FIRST),
        ("Gross Debit (GC)", '"Gross Debit (GC)" IS NOT NULL AND "Gross Credit (GC)" IS NOT '
         "NULL", "debit_and_credit", "both Gross Debit and Gross Credit are filled"),
        ("Net Debit (NC)", '"Net Debit (NC)" IS NOT NULL AND "Net Credit (NC)" IS NOT NULL',
         "debit_and_credit", "both Net Debit and Net Credit are filled"),
        ("Gross Credit (GC)", " AND ".join(f'"{a}" IS NULL' for a, _ in ACQ_AMOUNTS[:4]),
         "amount_missing", "no gross or net amount"),
        ("Exchange Rate", '"Exchange Rate" IS NOT NULL AND TRY_CAST("Exchange Rate" AS DOUBLE)'
         " IS NULL", "amount_format", "{value!r} is not a number"),
        *_required(("Merchant Account", "Type")),
    ]
    whole = " OR ".join(re.sub(r'"([^"]+)"', r'r."\1"', f"({bad})")
                        for _, bad, _, _ in acquirer_rows)
    # a trace's fee: every fee column, as the row reader sums them
    fees = " + ".join(f'coalesce(r."{fee}:", 0)' for fee in ACQUIRER_FEES)
    for path in acquirer:
        card_files.append(number + 1)
        take("traces", path, ACQUIRER_REQUIRED, f"""INSERT INTO traces SELECT {{n}},
            r.kind, r."Merchant Account",
            CASE WHEN r.kind IN ('payment', 'other') THEN r."Psp Reference"
                 ELSE coalesce(r."Modification Reference", r."Psp Reference") END,
            r."Merchant Reference",
            CASE WHEN r.kind IN ('payment', 'other') THEN NULL ELSE r."Psp Reference" END,
            coalesce(r."Gross Currency", r."Net Currency"), r."Net Currency",
            coalesce(r."Gross Credit (GC):", r."Gross Debit (GC):", r."Net Credit (NC):",
                     r."Net Debit (NC):"),
            r."Gross Credit (GC)" IS NOT NULL OR (r."Gross Debit (GC)" IS NULL
                AND r."Net Credit (NC)" IS NOT NULL),
            {fees},
            coalesce(r."Net Credit (NC):", -r."Net Debit (NC):"),
            CAST(r."Creation Date" - r.zone AS DATE),
            r."Batch Number", {_flag('r.zone IS NULL OR ' + checks + ' OR ' + whole)},
            r."Type", r."Modification Reference", NULL
            FROM (SELECT *, {kinds} AS kind, {zone} AS zone, {amounts}
                  FROM {{src}} r) r""",
             ACQ_AMOUNTS, {"Creation Date": "TIMESTAMP", "Gross Currency": "currency",
                           "Net Currency": "currency"},
             [("amount", "currency"), ("fee", "net_currency"), ("net", "net_currency")],
             rows=acquirer_rows, optional=ACQ_OPTIONAL, ordered=True,
             reader=ACQUIRER_READER, cells={
                 "Merchant Account": (), "Psp Reference": (), "Merchant Reference": (),
                 "Modification Reference": (), "Batch Number": (),
                 "Type": tuple(ACQUIRER_TYPES)})
    phase("read_card")
    # a wallet type is one of the reader's, in any case (as ``choice`` takes it, with
    # ``str.casefold``): ``lower`` is the same in ASCII only (it makes 'İ' an 'i', where
    # ``casefold`` makes it two characters, and leaves the long s U+017F and the ligature
    # st U+FB06, which ``casefold`` makes 's' and 'st'), so a type in any other spelling is
    # flagged and read again by the row reader (``_reread``): refused in its words, or the
    # row engine's
    types = ", ".join(f"'{t}'" for t in WALLET_TYPES)
    wallet_rows: list[RowCheck] = [
        *_required(("currency", "type")),
        ("type", f"type IS NOT NULL AND (strlen(type) <> length(type)"
         f" OR lower(type) NOT IN ({types}))", "enum",
         "{value!r} is not one of " + ", ".join(WALLET_TYPES)),
        *((("order_id", f"lower(type) = '{kind}' AND order_id IS NULL",
            "required", f"a {kind} names its order")) for kind in ("payment", "refund")),
        *_required(("site", "transaction_id", "created_at", "amount")),
    ]
    # an instant's UTC date from its microseconds since the epoch: the same date as a cast
    # in the UTC session, without the time zone library's calendar for each row
    for path in wallet:
        take("traces", path, WALLET_REQUIRED, f"""INSERT INTO traces SELECT {{n}},
            CASE r.t WHEN 'payment' THEN 'payment'::kind WHEN 'refund' THEN 'refund'::kind
                     WHEN 'payout' THEN 'payout'::kind ELSE 'other'::kind END,
            'wallet:' || r.site, r.transaction_id, r.order_id, NULL, r.currency, r.currency,
            {_amount('amount')}, r.t IN ('payment', 'adjustment_credit'), 0, NULL,
            CAST(make_timestamp(epoch_us(r.created_at)) AS DATE), r.settlement_id,
            {_flag(f"r.t IS NULL OR r.t NOT IN ({types}) OR " + _invalid('amount')
                   + " OR (r.t IN ('payment', 'refund') AND r.order_id IS NULL)"
                   " OR r.site IS NULL OR r.transaction_id IS NULL OR r.created_at IS NULL"
                   " OR r.amount IS NULL OR r.currency IS NULL")},
            NULL, NULL, {{customer_ref}}
            FROM (SELECT *, CASE WHEN type IN ({types}) THEN type
                                 WHEN strlen(type) = length(type) THEN lower(type)
                                 END AS t FROM {{src}} r) r""",
             [("amount", "currency")], {"created_at": "TIMESTAMPTZ", "currency": "currency"},
             [("amount", "currency")], rows=wallet_rows, ordered=True,
             reader=WALLET_READER, cells={
                 "site": (), "transaction_id": (), "order_id": (), "settlement_id": (),
                 "customer_ref": (), "type": tuple(WALLET_TYPES)})

    phase("read_wallet")
    _not_as_the_rows(con, card_files, files)
    phase("unsupported")
    d = f"DATE '{day.isoformat()}'"
    window = (f"p.booking_date BETWEEN {{o}}.day - {rules.days_before} AND {{o}}.day + {{o}}.lag"
              " AND p.currency = {o}.currency")
    rules_known = []
    for rule in rules.references:
        key = {("provider_reference", "provider_reference"): ("pref", "pref"),
               ("merchant_reference", "order_id"): ("mref", "order_id"),
               ("customer_reference", "order_id"): ("cref", "order_id")}.get(
                   (rule.trace, rule.order))
        if key is not None:  # references these files do not carry are skipped
            rules_known.append((rule.name, *key))
    # the first rule in one join; each later rule only for the payments still without order
    _, tcol, ocol = rules_known[0] if rules_known else ("", "pref", "pref")
    con.execute(f"""CREATE TABLE pm AS SELECT p.rowid AS tid, p.pref, p.amount,
        p.booking_date, o.rowid AS oid
        FROM traces p LEFT JOIN orders o ON o.{ocol} = p.{tcol} AND {window.format(o="o")}
        WHERE p.kind = 'payment' AND p.credit""")
    rows = con.execute("""SELECT (SELECT count(*) FROM pm), count(*) FROM traces
                          WHERE kind = 'payment' AND credit""").fetchone()
    if rows and rows[0] != rows[1]:
        # an order reference two orders share: the first site wins
        _first_order(con, "pm")
    for _, tcol, ocol in rules_known[1:]:
        con.execute(f"""CREATE OR REPLACE TABLE hit AS SELECT p.tid, o.rowid AS oid
            FROM (SELECT t.rowid AS tid, t.* FROM traces t
                  SEMI JOIN (SELECT tid FROM pm WHERE oid IS NULL) u ON u.tid = t.rowid) p
            JOIN orders o ON o.{ocol} = p.{tcol} AND {window.format(o="o")}""")
        _first_order(con, "hit")
        con.execute("UPDATE pm SET oid = hit.oid FROM hit WHERE pm.tid = hit.tid")
    # the operator's assignments: a trace belongs to the order named, whatever its
    # references and dates say (an order that is not there assigns nothing)
    assigned = _assignments(con, card_files, corrections)
    if assigned:
        con.execute("UPDATE pm SET oid = asg.oid FROM asg WHERE pm.tid = asg.tid")
    phase("match_payments")
    tol = _abs_tol(rules) if not rules.tolerance_percent else (
        f"greatest({_abs_tol(rules)}, {_ROUND[rules.rounding]}(abs(expected)"
        f" * {rules.tolerance_percent} / 100, 2))")
    # the operator's amount adjustments, converted to the order's currency as the row engine
    # converts them (a handful: worked out in Python, one small table)
    adjusted = _adjustments(con, rules, corrections)
    adj = "coalesce(j.amount, 0)" if adjusted else "CAST(0 AS DECIMAL(18,6))"
    adj_join = "LEFT JOIN adj j ON j.oid = o.rowid" if adjusted else ""
    verdict = f"""CREATE OR REPLACE TABLE verdict AS SELECT o.rowid AS oid, o.expected,
        o.cancelled, o.confirmed, coalesce(a.received, 0) + {adj} AS received,
        coalesce(a.n, 0) AS counted, {adj} AS adj, {{delivered}} AS delivered
        FROM orders o LEFT JOIN (SELECT oid, count(*) AS n, sum(amount) AS received FROM pm
                                 WHERE oid IS NOT NULL GROUP BY oid) a ON a.oid = o.rowid
        {adj_join}
        WHERE o.day = {d}"""
    # the payments summed per order in a table indexed by the order's row id (up to 4M
    # orders; the setting is for this grouping of every order only)
    con.execute("SET perfect_ht_threshold=22")
    while True:
        union = " UNION ALL ".join(delivered_from.values())
        try:
            # matched on IS NOT DISTINCT FROM: no site or order id is missing on either
            # side (a file with one is refused), and an equality would let the optimizer
            # take out the rows without one before their test (``_delivery_refused``)
            con.execute(verdict.format(delivered=f"""EXISTS (SELECT 1 FROM ({union}) r
                WHERE r.site IS NOT DISTINCT FROM o.site
                    AND r.order_id IS NOT DISTINCT FROM o.order_id)""" if union else "false"))
            break
        except duckdb.Error:
            unreadable = _unreadable(con, delivered_from, explain_deliveries)
            if not unreadable:
                raise
            refused[refused_deliveries_at:refused_deliveries_at] = unreadable
            refused_deliveries_at += len(unreadable)
    con.execute("RESET perfect_ht_threshold")
    phase("verdict_with_deliveries")
    # several payments for one order, in the row engine's order (booking date, trace id):
    # each one in turn is a repeat when the order is paid already (with the operator's
    # adjustments) and it repeats a payment counted, or when one-to-many is off; counted
    # otherwise. A fold, as a recursive query over the few orders with several payments
    card = _in_list(card_files)
    con.execute(f"""CREATE TABLE seq AS SELECT m.oid, m.tid, m.amount, v.expected, v.adj,
        {tol} AS tol, row_number() OVER (PARTITION BY m.oid
                                         ORDER BY m.booking_date, {_trace_id('t', card)}) AS pos
        FROM pm m JOIN (SELECT oid, expected, adj FROM verdict WHERE counted > 1) v USING (oid)
        JOIN traces t ON t.rowid = m.tid""")
    repeat = (f"((abs(r.running - s.expected) <= s.tol AND len(list_filter(r.amounts, "
              f"lambda c: abs(s.amount - c) <= s.tol)) > 0) OR {not rules.one_to_many})")
    con.execute(f"""CREATE TABLE seqr AS WITH RECURSIVE r AS (
          SELECT oid, pos, tid, amount, false AS dup,
                 CAST(adj + amount AS DECIMAL(38,6)) AS running, [amount] AS amounts
          FROM seq WHERE pos = 1
          UNION ALL
          SELECT s.oid, s.pos, s.tid, s.amount, {repeat},
                 CASE WHEN {repeat} THEN r.running ELSE r.running + s.amount END,
                 CASE WHEN {repeat} THEN r.amounts ELSE list_append(r.amounts, s.amount) END
          FROM r JOIN seq s ON s.oid = r.oid AND s.pos = r.pos + 1)
        SELECT oid, tid, dup FROM r""")
    con.execute("""CREATE TABLE multi AS SELECT q.oid,
        any_value(s.adj) + coalesce(sum(s.amount) FILTER (NOT q.dup), 0) AS received,
        count(*) FILTER (NOT q.dup) AS counted, count(*) FILTER (q.dup) AS dups
        FROM seqr q JOIN seq s ON s.tid = q.tid GROUP BY q.oid""")
    require = "true" if rules.require_delivery else "false"
    # the orders that may be reported: their money with the repeats taken out
    con.execute(f"""CREATE TABLE issues AS SELECT v.oid, v.expected, v.cancelled,
        v.confirmed, v.delivered, v.adj,
        coalesce(mu.received, v.received) AS received,
        coalesce(mu.counted, v.counted) AS counted, coalesce(mu.dups, 0) AS dups
        FROM verdict v LEFT JOIN multi mu USING (oid)
        WHERE v.counted <> 1 OR NOT v.delivered OR abs(v.received - v.expected) > {tol}
        {"OR v.adj <> 0" if adjusted else ""}""")
    # an order's classes name it by its row id (its site and id are looked up for labels
    # only); the other entities by their own names. Paid: a payment counted, or an
    # adjustment
    con.execute(f"""CREATE TABLE found AS
        SELECT oid, NULL::VARCHAR AS entity, 'duplicate_payment' AS cls FROM issues
            WHERE dups > 0
        UNION ALL SELECT oid, NULL, CASE WHEN delivered AND {require}
                THEN 'delivered_not_paid' ELSE 'unpaid_order' END
            FROM issues WHERE counted = 0 AND adj = 0 AND NOT cancelled AND expected <> 0
        UNION ALL SELECT oid, NULL, 'amount_mismatch' FROM issues
            WHERE (counted > 0 OR adj <> 0) AND abs(received - expected) > {tol}
        UNION ALL SELECT oid, NULL, 'paid_not_delivered' FROM issues
            WHERE (counted > 0 OR adj <> 0) AND NOT delivered AND {require} AND confirmed
        UNION ALL SELECT NULL, pref, 'payment_without_order' FROM pm
            WHERE oid IS NULL AND booking_date = {d}""")
    phase("repeats_and_classes")
    # refunds and chargebacks, as the row engine finds their order: the original payment's
    # reference among the payments matched (the last by trace id), else among the orders'
    # payment references (the first order, any date), else the reference rules (in the
    # window, in the currency); the few refunds are taken out first
    con.execute("""CREATE TABLE refunds AS SELECT rowid AS tid, kind, pref, oref, mref, cref,
        currency, amount, credit, booking_date, NULL::BIGINT AS oid, NULL::VARCHAR AS rule
        FROM traces WHERE kind IN ('refund', 'chargeback')""")
    con.execute("""CREATE TABLE rf AS SELECT r.tid, min(m.oid) AS oid,
        count(DISTINCT m.oid) AS n FROM refunds r JOIN pm m ON m.pref = r.oref
        WHERE m.oid IS NOT NULL GROUP BY r.tid""")
    if con.execute("SELECT count(*) FROM rf WHERE n > 1").fetchone()[0]:  # type: ignore[index]
        con.execute(f"""UPDATE rf SET oid = x.oid FROM (
            SELECT r.tid, first(m.oid ORDER BY {_trace_id('t', card)} DESC) AS oid
            FROM rf r JOIN refunds f ON f.tid = r.tid JOIN pm m ON m.pref = f.oref
            JOIN traces t ON t.rowid = m.tid WHERE r.n > 1 AND m.oid IS NOT NULL
            GROUP BY r.tid) x WHERE rf.tid = x.tid""")
    con.execute("""UPDATE refunds SET oid = rf.oid, rule = 'original_reference' FROM rf
        WHERE refunds.tid = rf.tid""")
    def left(also: str = "") -> bool:
        row = con.execute(f"SELECT count(*) FROM refunds WHERE oid IS NULL {also}").fetchone()
        return bool(row and row[0])

    if left("AND oref IS NOT NULL"):
        con.execute("""UPDATE refunds SET oid = x.oid, rule = 'original_reference' FROM (
            SELECT r.tid, first(o.rowid ORDER BY o.site, o.order_id) AS oid FROM refunds r
            JOIN orders o ON o.pref = r.oref WHERE r.oid IS NULL GROUP BY r.tid) x
            WHERE refunds.tid = x.tid""")
    if assigned:
        con.execute("""UPDATE refunds SET oid = asg.oid, rule = 'assigned' FROM asg
            WHERE refunds.tid = asg.tid AND refunds.oid IS NULL""")
    for name, tcol, ocol in rules_known:
        if not left():
            break
        con.execute(f"""UPDATE refunds SET oid = x.oid, rule = '{name}' FROM (
            SELECT p.tid, first(o.rowid ORDER BY o.site, o.order_id) AS oid FROM refunds p
            JOIN orders o ON o.{ocol} = p.{tcol} AND {window.format(o="o")}
            WHERE p.oid IS NULL GROUP BY p.tid) x WHERE refunds.tid = x.tid""")
    con.execute(f"""INSERT INTO found SELECT NULL, pref, 'payment_without_order' FROM refunds
        WHERE oid IS NULL AND booking_date = {d}""")
    phase("refunds")
    # payouts of the day (the acquirer's and the wallets') against the transactions of their
    # batch (N:1), the batches summed first: each net in the payout's currency, else its
    # signed amount; and how many members are in another currency with no net in the
    # payout's (``_beyond_one_currency``)
    ptol = _abs_tol(rules) if not rules.tolerance_percent else (
        f"greatest({_abs_tol(rules)}, {_ROUND[rules.rounding]}(p.amount"
        f" * {rules.tolerance_percent} / 100, 2))")
    con.execute(f"""CREATE TABLE payouts AS SELECT p.prow, p.account, p.payout_id, p.bkey, p.card,
        p.amount, p.currency, {ptol} AS tol,
        coalesce(sum(CASE WHEN NOT t.nonet AND t.net_currency = p.currency THEN t.net
                          WHEN t.currency = p.currency THEN t.signed ELSE 0 END), 0) AS total,
        coalesce(sum(t.members), 0) AS members,
        coalesce(sum(t.members) FILTER (t.currency <> p.currency
            AND NOT (NOT t.nonet AND t.net_currency = p.currency)), 0) AS foreign_members
        FROM (SELECT *, coalesce(batch, payout_id) AS bkey FROM (
              SELECT rowid AS prow, *, file IN ({card}) AS card, CASE WHEN file IN ({card}) THEN
                  CASE WHEN batch IS NOT NULL THEN account || '-batch-' || batch
                  ELSE {_trace_id('traces', card, 'payout')} END
                  ELSE coalesce(batch, pref) END AS payout_id
              FROM traces WHERE kind = 'payout' AND booking_date = {d})) p
        LEFT JOIN (
            SELECT account, batch, net_currency, currency, net IS NULL AS nonet,
                count(*) AS members,
                sum(net) AS net, sum(CASE WHEN credit THEN amount ELSE -amount END) AS signed
            FROM traces WHERE kind <> 'payout' AND batch IS NOT NULL GROUP BY ALL) t
            ON t.account = p.account AND t.batch = p.bkey
        GROUP BY ALL""")
    con.execute("""INSERT INTO found SELECT NULL, payout_id, 'payout_mismatch' FROM payouts
        WHERE members = 0 OR abs(total - amount) > tol""")
    phase("payouts")
    if keep:
        # what the row engine would convert at the rules' rates, this path cannot: a day
        # that has it is the row engine's (the caller falls back) rather than a different
        # answer
        beyond = _beyond_one_currency(con, rules_known)
        if beyond:
            con.close()
            raise ColumnarUnsupported(beyond)
        phase("currencies")
    counts: dict[str, int] = {}
    for cls, n in con.execute("SELECT cls, count(*) FROM found GROUP BY cls").fetchall():
        counts[f"discrepancy:{cls}"] = int(n)
    # 1:1 and 1:N groups: the orders with one payment, and those with several as the
    # repeats left them (every order of ``multi`` had several)
    row = con.execute("""SELECT count(*) FILTER (counted = 1), count(*) FILTER (counted > 1),
        (SELECT count(*) FILTER (counted = 1) FROM multi),
        (SELECT count(*) FILTER (counted > 1) FROM multi), (SELECT count(*) FROM multi)
        FROM verdict""").fetchone() or (0, 0, 0, 0, 0)
    for kind, n in (("one_to_one", row[0] + row[2]), ("one_to_many", row[1] - row[4] + row[3])):
        if n:
            counts[f"group:{kind}"] = int(n)
    # a refund's group whatever the day of its order, as the row engine reports it
    for kind, n in con.execute("""SELECT kind, count(*) FROM refunds WHERE oid IS NOT NULL
                                  GROUP BY ALL""").fetchall():
        counts[f"group:{kind}"] = int(n)
    row = con.execute("""SELECT count(*) FROM payouts WHERE members > 0
                         AND abs(total - amount) <= tol""").fetchone()
    counts["group:payout"] = int(row[0]) if row else 0
    result: ColumnarResult
    if keep:
        result = ColumnarDay(day=day, counts=counts, refused=refused)
    else:
        result = ColumnarResult(day=day, counts=counts, refused=refused)
    row = con.execute("SELECT count(*) FROM traces").fetchone()
    result.traces = int(row[0]) if row else 0
    row = con.execute("SELECT count(*) FROM verdict").fetchone()
    result.orders = int(row[0]) if row else 0
    phase("counts")
    if labels:
        # one (entity, class) row each, in order (DuckDB hands lists to Python slowly); the
        # collector is held off meanwhile: these tens of thousands of new tuples and lists
        # hold no cycles, but would set off a full collection of the caller's whole heap
        with collector_off():
            found = con.execute("""SELECT coalesce(f.entity, o.site || ':' || o.order_id) AS e,
                f.cls FROM found f LEFT JOIN orders o ON o.rowid = f.oid
                ORDER BY e, f.cls""").fetchall()
            for entity, cls in found:
                classes = result.labels.get(entity)
                if classes is None:
                    result.labels[entity] = [cls]
                else:
                    classes.append(cls)
            del found
    phase("labels")
    if isinstance(result, ColumnarDay):
        result._open(con, rules, corrections, tol, card_files, rules_known, files, adjusted)
        result._assigned = assigned
        result.phases = phases
        return result
    con.close()
    phase("close")
    result.phases = phases
    return result

def _source(path: Path, names: Sequence[str], typed: dict[str, str] | None = None,
            timestamp_format: str | None = TIMESTAMP_FORMAT,
            optional: Sequence[str] = (), ordered: bool = False,
            cells: Mapping[str, Sequence[str]] | None = None) -> str:
    """The file as a DuckDB ``read_csv`` of its own column names (text unless typed here);
    its TIMESTAMP columns in ``timestamp_format``, or as ISO 8601 when that is None (the time
    as written: an offset is not applied). A column of ``optional`` the file does not have is
    there, empty (as the row readers take a missing optional column). ``ordered``: for an
    insert that keeps the file's order, read in buffers of a quarter of the file, between
    ``ORDERED_BUFFER`` bytes and a quarter of that.

    The text columns of ``cells`` (every text column when it is None) are as the row readers
    take them (``_cell``: stripped as ``str.strip`` strips, an empty one missing), once,
    here: the queries compare and join them as they are. A column named there with values
    (its clean spellings, such as a status) is taken as it is when it is one of them, which
    costs less than ``_cell``'s test. The others (amounts, rates) are read as written: the
    casts take the ASCII whitespace around a number as the row readers do (spaces, tabs,
    line breaks), and fail on any other, and a file that fails so is the row engine's
    (``_padded``). ``_cell`` costs about 0.03 s of CPU a million texts: stripping every text
    column the inserts use cost 0.57 s on the bench's day of a million orders, the columns
    named by the inserts (the keys, and the statuses, methods and types as spelt) 0.28 s.
    A column the query does not use is not worked out (nor converted by the reader)."""
    fmt = f", timestampformat='{timestamp_format}'" if timestamp_format else ""
    buffer = ""
    if ordered:
        size = path.stat().st_size
        buffer = f", buffer_size={min(ORDERED_BUFFER, max(ORDERED_BUFFER // 4, size // 4))}"
    read = (f"read_csv({_q(path)}, header=true, auto_detect=false{buffer}, "
            f"columns={_columns(names, typed or {})}{fmt})")
    have = {column_key(n) for n in names}
    missing = [c for c in optional if column_key(c) not in have]
    wanted = None if cells is None else {column_key(c): known for c, known in cells.items()}
    out = []
    for name in names:
        quoted = _ident(name)
        if name in (typed or {}) or (wanted is not None and column_key(name) not in wanted):
            out.append(quoted)
        else:
            known = [k for k in (wanted or {}).get(column_key(name), ()) if k and k == k.strip()]
            cell = _cell(quoted)
            if known:
                cell = (f"CASE WHEN {quoted} IN ({', '.join(map(_literal, known))})"
                        f" THEN {quoted} ELSE {cell} END")
            out.append(f"{cell} AS {quoted}")
    out += [f"NULL::VARCHAR AS {_ident(c)}" for c in missing]
    return f"(SELECT {', '.join(out)} FROM {read})"


def _padded(con: Any, path: Path, names: Sequence[str], cells: Mapping[str, Sequence[str]]
            ) -> None:
    """Raise ``ColumnarUnsupported`` at the first line of the file where a column the insert
    reads as written (not one of ``cells``: a currency, a time, an amount) has whitespace
    around its text, which the row readers strip before they read it (the typed read and
    the casts here take the text as it is)."""
    stripped = {column_key(c) for c in cells}
    columns = [n for n in names if column_key(n) not in stripped]
    if not columns:
        return
    quoted = [_ident(n) for n in columns]
    read = (f"read_csv({_q(path)}, header=true, auto_detect=false, "
            f"columns={_columns(names, {})})")
    bad = " OR ".join(f"{c} IS DISTINCT FROM {_cell(c)}" for c in quoted)
    row = con.execute(f"""SELECT line, {', '.join(quoted)} FROM (
        SELECT row_number() OVER () + 1 AS line, * FROM {read}) WHERE {bad}
        ORDER BY line LIMIT 1""").fetchone()
    if row:
        column, value = next((c, v) for c, v in zip(columns, row[1:], strict=True)
                             if v is not None and v != v.strip())
        raise ColumnarUnsupported(f"{path.name}: line {row[0]}: {column}: {value!r} has "
                                  "whitespace around it (the row engine strips it)")


def _unreadable(con: Any, queries: dict[Path, str],
                explain: Callable[[Path, Exception], str]) -> list[str]:
    """The files of ``queries`` whose query fails (a line the CSV reader cannot parse, a row
    the row reader refuses), taken out of it, each as its refusal (``explain``)."""
    import duckdb

    out = []
    for path, query in list(queries.items()):
        try:
            con.execute(f"SELECT count(*) FROM ({query})").fetchone()
        except duckdb.Error as exc:
            out.append(explain(path, exc))
            del queries[path]
    return out


def _syntax_error(file: str, exc: Exception) -> PaymentFileError:
    """The CSV reader's error as a refusal: the line it names and what is wrong there (a row
    with more or fewer fields than the header is ``field_count``, as the row readers say it;
    anything else the reader cannot parse, such as an unterminated quote, ``csv_syntax``)."""
    text = str(exc)
    found = re.search(r"CSV Error on Line: (\d+)", text)
    line = int(found.group(1)) if found else None
    counts = re.search(r"Expected Number of Columns: (\d+) Found: (\d+)", text)
    if counts:
        return PaymentFileError(file, "field_count", f"{counts.group(2)} fields where the "
                                f"header has {counts.group(1)}", line=line)
    # the reader's sentence is the last line before its possible fixes, after the line it
    # quotes (which may run on, cut short, over the lines that follow); a line of data is
    # not repeated as if it were the reason
    lines = [x.strip() for x in text.split("Possible fixes")[0].splitlines() if x.strip()]
    reason = lines[-1] if len(lines) > 2 and lines[-1].endswith(".") else ""
    return PaymentFileError(file, "csv_syntax", reason or "the CSV reader cannot parse this "
                            "line", line=line)


def _first_order(con: Any, table: str) -> None:
    """Keep one order per trace of ``table`` (``tid``, ``oid``) where a reference names
    several: the first by site and order id (as the row engine takes them)."""
    con.execute(f"""CREATE OR REPLACE TABLE {table} AS SELECT t.* FROM {table} t
        LEFT JOIN orders o ON o.rowid = t.oid
        QUALIFY row_number() OVER (PARTITION BY t.tid ORDER BY o.site, o.order_id) = 1""")


def _abs_tol(rules: Rules) -> str:
    """The absolute tolerance as an exact decimal literal."""
    return f"CAST('{rules.tolerance_absolute}' AS DECIMAL(18,6))"


def _guard(con: Any, table: str, file: str, pairs: Sequence[tuple[str, str]],
           typed: dict[str, str] | None = None,
           timestamp_format: str | None = TIMESTAMP_FORMAT,
           rows: Sequence[RowCheck] = (), reader: RowReader | None = None
           ) -> PaymentFileError | None:
    """The file's first bad row, as the row readers refuse it: its amounts, and its dates,
    times, time zones and the rules of ``rows``, whichever is on the earlier line. With
    ``reader`` (the row reader of the file's format), that line is read again by it, and
    the refusal is the reader's: its rule and words, and of the errors of the line the one
    it comes to first (its checks are in its own order, not in this path's); a line it
    reads after all makes the file the row engine's (``ColumnarUnsupported``). None when
    nothing is found."""
    found: list[PaymentFileError] = []
    try:
        _check(con, table, file, pairs)
    except PaymentFileError as exc:
        found.append(exc)
    try:
        _check_times(con, table, file, typed or {}, timestamp_format, rows)
    except PaymentFileError as exc:
        if not found or (exc.line or 0) < (found[0].line or 0):
            found.insert(0, exc)
    except ColumnarUnsupported:
        if not found:
            raise
    if not found or reader is None or found[0].line is None:
        return found[0] if found else None
    first = found[0]
    assert first.line is not None
    error = _reread(con, table, file, first.line, reader)
    if error is None:
        raise _read_by_the_rows(file, first, _cell_at(con, table, first.line, first.field))
    return error


RowReader = tuple[Callable[[Origin, dict[str, str]], object], Sequence[str]]
"""A payment format's row reader (``parse_row``: a row of the file's text, its columns
named as the reader names them, read or refused with ``PaymentFileError``) and the columns
it knows."""
ACQUIRER_READER: RowReader = (acquirer_reader.parse_row, acquirer_reader.COLUMNS)
WALLET_READER: RowReader = (wallet_reader.parse_row,
                            (*wallet_reader.REQUIRED, *wallet_reader.OPTIONAL))


def _row_at(con: Any, table: str, line: int) -> dict[str, Any]:
    """The row of the explaining table (every column text, as ``_source`` takes it) at a
    line of its file (its rows are in the file's order)."""
    cursor = con.execute(f"""SELECT * FROM (SELECT row_number() OVER () + 1 AS "line:", *
                             FROM {table}) WHERE "line:" = ?""", [line])
    names = [d[0] for d in cursor.description]
    return dict(zip(names[1:], (cursor.fetchone() or ())[1:], strict=False))


def _cell_at(con: Any, table: str, line: int, column: str | None) -> Any:
    """The text of one column at a line of the explaining table (None without a column)."""
    return _row_at(con, table, line).get(column) if column else None


def _reread(con: Any, table: str, file: str, line: int, reader: RowReader
            ) -> PaymentFileError | None:
    """The row reader's refusal of the line of the explaining table, or None when it reads
    it. The reader is given the row as ``CsvFile`` gives it: the file's columns by the
    reader's names (matched spacing and case aside), their text (``_source`` stripped it as
    the reader strips it; an empty one is "")."""
    parse, columns = reader
    known = {column_key(c): c for c in columns}
    row = {known[column_key(name)]: "" if value is None else str(value)
           for name, value in _row_at(con, table, line).items() if column_key(name) in known}
    try:
        parse(Origin(file, line), row)
    except PaymentFileError as exc:
        return exc
    return None


def _read_by_the_rows(file: str, found: PaymentFileError | None, value: Any = None
                      ) -> ColumnarUnsupported:
    """Why a file this path would refuse is the row engine's: its row reader reads it
    (``found``: what this path found, at its line and column, ``value`` its text)."""
    if found is None:
        return ColumnarUnsupported(f"{file}: the typed read fails where the row reader reads "
                                   "the file (the row engine reads it)")
    return ColumnarUnsupported(f"{file}: line {found.line}: {found.field}: {value!r} is read "
                               f"by the row reader, not by this path ({found.rule}; the row "
                               "engine reads it)")


def _uncast(con: Any, table: str, file: str, pairs: Sequence[tuple[str, str]]
            ) -> PaymentFileError | None:
    """The first amount of the explaining table the cast cannot take (too many digits for
    ``AMOUNT``), as a finding of ``_guard`` (for ``_read_by_the_rows``)."""
    amounts = [a for a, _ in pairs]
    if not amounts:
        return None
    bad = " OR ".join(f"({_ident(a)} IS NOT NULL AND TRY_CAST({_ident(a)} AS {AMOUNT}) IS NULL)"
                      for a in amounts)
    row = con.execute(f"""SELECT * FROM (SELECT row_number() OVER () + 1 AS "line:",
        {', '.join(map(_ident, amounts))} FROM {table}) WHERE {bad}
        ORDER BY "line:" LIMIT 1""").fetchone()
    if not row:
        return None
    column = next(a for a, v in zip(amounts, row[1:], strict=True)
                  if v is not None and con.execute(
                      f"SELECT TRY_CAST(? AS {AMOUNT}) IS NULL", [v]).fetchone()[0])
    return PaymentFileError(file, "cast", f"{AMOUNT} cannot hold it", line=row[0],
                            field=column)


def _export_refusal(path: Path, kind: str, day: date) -> str | None:
    """The row engine's refusal of an export of orders or deliveries (``kind``), in its
    words, or None when it reads the file. Its own reader (``flows.reconcile.read_export``,
    as ``read_sources`` reads the file) goes through the file to its first bad line:
    pydantic's canonical ``Order`` and ``Delivery`` judge more than this path's checks (a
    pattern, a time zone, every rule of their fields) and name the first error of a line
    in their order. Only for a file this path flags; it costs what the row engine's reading
    costs, about 17 µs a row up to the bad one (17 s of CPU for a million orders refused at
    their last line, 7 s for a million deliveries); the records are not kept."""
    from flows.reconcile import read_export  # the row engine's reader (a flow module)

    name = path.name
    try:
        read_export(path, kind, name, day=day, keep=False)
    except OSError as exc:  # as ``flows.reconcile._read_records`` words it
        return f"{name}: cannot read the file ({exc.strerror}) [unreadable]"
    except (PaymentFileError, UnicodeDecodeError) as exc:
        return str(exc)
    return None


def _check_times(con: Any, table: str, file: str, typed: dict[str, str],
                 timestamp_format: str | None = TIMESTAMP_FORMAT,
                 rows: Sequence[RowCheck] = ()) -> None:
    """Refuse the file at its first date, time or time zone the typed read could not take
    (the row readers' rules: ``date_format``, ``datetime_format``, ``timezone_unknown``),
    or its first row that breaks one of ``rows`` (the first line of them all)."""
    zones = ", ".join(f"'{name}'" for name, _ in _zones())
    names = {d[0] for d in con.execute(f"SELECT * FROM {table} LIMIT 0").description}
    tests: list[tuple[str, str, str, str]] = []
    for column, kind in typed.items():
        c = _ident(column)
        if kind == "DATE":
            tests.append((column, f"TRY_CAST({c} AS DATE) IS NULL", "date_format", "a date"))
        elif kind == "TIMESTAMP":
            bad = (f"TRY_STRPTIME({c}, '{timestamp_format}') IS NULL" if timestamp_format
                   else f"TRY_CAST({c} AS TIMESTAMP) IS NULL")
            tests.append((column, bad, "datetime_format", "a date and time"))
        elif kind == "TIMESTAMPTZ":
            tests.append((column, f"TRY_CAST({c} AS TIMESTAMPTZ) IS NULL", "datetime_format",
                          "a date and time"))
        elif kind == "DOUBLE":
            tests.append((column, f"TRY_CAST({c} AS DOUBLE) IS NULL", "amount_format",
                          "a number"))
    tests = [(c, f'"{c}" IS NOT NULL AND {bad}', rule, f"{{value!r}} is not {what}")
             for c, bad, rule, what in tests]
    if "TimeZone" in names:
        tests.append(("TimeZone", f'"TimeZone" IS NOT NULL AND upper("TimeZone") NOT IN '
                      f"({zones}) AND {_offset_minutes('TimeZone')} IS NULL",
                      "timezone_unknown", "{value!r} is not a time zone"))
    tests.extend(rows)
    first = None
    for column, bad, rule, message in tests:
        c = _ident(column)
        row = con.execute(f"""SELECT line, {c} FROM (SELECT row_number() OVER () + 1 AS line,
            * FROM {table}) WHERE {bad} ORDER BY line LIMIT 1""").fetchone()
        if row and (first is None or row[0] < first[0]):
            first = (row[0], column, row[1], rule, message)
    if first is not None:
        line, column, value, rule, message = first
        if rule == "timezone_unknown" and timezone_of(str(value)) is not None:
            raise ColumnarUnsupported(f"{file}: line {line}: {value!r} is a named time zone "
                                      "(the row engine reads those)")
        raise PaymentFileError(file, rule, message.format(value=value), line=line,
                               field=column)


def _offset_minutes(column: str, *, stripped: bool = False) -> str:
    """SQL: a time zone written as an offset (``+08:00``, ``-0530``, ``GMT+8``, as
    ``parse_timezone`` takes it) in minutes east of UTC; NULL when it is not one.
    ``stripped``: the column as written, stripped here (``_cell``) as the reader strips it."""
    c = _cell(f'"{column}"') if stripped else f'"{column}"'
    # no braces: the expression goes into templates that are formatted
    pattern = "'^(?:UTC|GMT)?([+-])([0-9][0-9]?):?([0-9][0-9])?$'"
    hours = f"CAST(regexp_extract({c}, {pattern}, 2) AS INTEGER)"
    minutes = f"coalesce(TRY_CAST(regexp_extract({c}, {pattern}, 3) AS INTEGER), 0)"
    return (f"CASE WHEN regexp_full_match({c}, {pattern}) AND {hours} < 24 THEN"
            f" (CASE regexp_extract({c}, {pattern}, 1) WHEN '-' THEN -1 ELSE 1 END)"
            f" * ({hours} * 60 + {minutes}) END")


def _beyond_one_currency(con: Any, rules_known: Sequence[tuple[str, str, str]]) -> str:
    """Why the day needs currency conversion, or "": a payment whose reference names an
    order in another currency, a refund or chargeback of an order in another currency, a
    payment's fee in another currency, a payout of transactions in another currency."""
    tests = [(f"a payment names an order in another currency by its {name}",
              f"""SELECT count(*) FROM pm JOIN traces t ON t.rowid = pm.tid
                  JOIN orders o ON o.{ocol} = t.{tcol}
                  WHERE pm.oid IS NULL AND o.currency <> t.currency""")
             for name, tcol, ocol in rules_known]
    tests += [
        ("a refund or chargeback is in another currency than its order",
         """SELECT count(*) FROM refunds r JOIN orders o ON o.rowid = r.oid
            WHERE r.currency <> o.currency"""),
        ("a payment's fee is in another currency than the payment",
         """SELECT count(*) FROM traces WHERE kind = 'payment' AND fee <> 0
            AND net_currency <> currency"""),
        # (counted with the payouts: their members in another currency than the payout's,
        # without a net in the payout's)
        ("a payout pays out transactions in another currency",
         "SELECT count(*) FROM payouts WHERE foreign_members > 0"),
    ]
    for reason, sql in tests:
        row = con.execute(sql).fetchone()
        if row and row[0]:
            return f"{reason} (currency conversion is the row engine's)"
    return ""


REVERSALS = tuple(sorted(t for t, kind in ROW_ACQUIRER_KINDS.items()
                         if kind in (TraceKind.REFUND_REVERSAL, TraceKind.CHARGEBACK_REVERSAL)))
"""The acquirer's types (as the row mapping spells them) that the row engine takes as
refunds and chargebacks reversed."""


def _in_list(numbers: Sequence[int]) -> str:
    """SQL: the file numbers for ``file IN (...)`` (``NULL``, which matches none, for none)."""
    return ", ".join(map(str, numbers)) or "NULL"


def _not_as_the_rows(con: Any, card_files: Sequence[int], files: Mapping[int, Path]) -> None:
    """Raise ``ColumnarUnsupported`` for traces this path would count otherwise than the row
    engine: reversals (here they would be ``other``), a trace read twice (the row engine
    counts a trace id once; here each row counts), and a text longer than the row mapping
    keeps or the canonical trace takes (``_long``). One scan counts the reversals and the
    distinct hashes of the trace id's parts; only when two hashes agree are the parts
    themselves compared (a collision is not a trace read twice). The texts' lengths are
    asked of the table's statistics (no scan); only when a text may be too long are the
    characters counted (``_too_long``)."""
    reversals = ", ".join(f"'{r}'" for r in REVERSALS)
    card = _in_list(card_files)
    # the parts (as ``_record_key`` takes them: an empty one as ""; stripped as the file
    # was read, ``_cell``) of each row, read once (``t``); a row's trace id is made of
    # them. A wallet's part is its site (its account less ``wallet:``)
    parts = ", ".join(f"coalesce({p}, '')" for p in (
        "t.account", "t.psp", "t.ttype", "t.modref", "t.batch")) + ", t.card"
    rows = f"""(SELECT kind, traces.ttype AS type, file IN ({card}) AS card,
        CASE WHEN file IN ({card}) THEN account ELSE substr(account, 8) END AS account,
        {_psp("traces", card)} AS psp, CASE WHEN file IN ({card}) THEN ttype END AS ttype,
        CASE WHEN file IN ({card}) THEN modref END AS modref,
        CASE WHEN file IN ({card}) THEN batch END AS batch FROM traces) t"""
    row = con.execute(f"""SELECT count(*) FILTER (kind = 'other'
            AND lower(replace(type, ' ', '')) IN ({reversals})),
        count(*) - count(DISTINCT hash({parts})) FROM {rows}""").fetchone()
    if row and row[0]:
        raise ColumnarUnsupported(f"{row[0]} RefundedReversed or ChargebackReversed row(s) "
                                  "(reversals are the row engine's)")
    if _long(con):
        _too_long(con, card_files, files)
    if row and row[1]:
        twice = con.execute(f"SELECT count(*) - count(DISTINCT ({parts})) FROM {rows}"
                            ).fetchone()
        if twice and twice[0]:
            raise ColumnarUnsupported(f"{twice[0]} trace(s) read twice (the row engine "
                                      "counts each once)")


ACCOUNT_MAX = field_bound(PaymentTrace, "account", "max_length")
"""The longest account a canonical trace takes (a card row's merchant account; a wallet's,
``wallet:`` and its site)."""
PAYOUT_ID_MAX = field_bound(Payout, "payout_id", "max_length")
"""The longest payout id a canonical payout takes (a card payout's is
``{merchant account}-batch-{batch}``)."""


def _long(con: Any) -> bool:
    """Whether a text of ``traces`` may be longer than the row engine takes it, by the
    table's statistics (``_stats``: the longest text of each column, in bytes, no scan): a
    reference (PSP, modification, merchant, customer reference, batch) of more than the
    200 characters the row mapping keeps of it (``mappings.payments.MAX_REF``: it compares
    the first 200, where this path compares whole texts), an account longer than the
    canonical trace takes, a card payout's id (``{account}-batch-{batch}``) longer than the
    canonical payout takes (the row mapping refuses those). Then ``_too_long`` counts the
    characters."""
    refs = ("pref", "oref", "mref", "modref", "cref", "batch")
    known = _stats(con, "traces", [*refs, "account"])
    longest = {c: known.get(c, {}).get("max_string_length") for c in known}
    if not all(isinstance(longest.get(c), int) for c in (*refs, "account")):
        return True  # statistics this DuckDB does not give: the characters are counted
    return (any(longest[c] > MAX_REF for c in refs) or longest["account"] > ACCOUNT_MAX
            or longest["account"] + len("-batch-") + longest["batch"] > PAYOUT_ID_MAX)


def _stats(con: Any, table: str, columns: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The statistics DuckDB keeps of columns of ``table`` (``stats``, worked out when the
    query is planned: no scan), each a dict with ``has_null`` and, for a text,
    ``max_string_length`` (in bytes). Inserts keep them up to date, deletes do not: they
    may say more than is left (of a file refused and taken out again), never less. A
    column is {} when the table has no row or this DuckDB gives them otherwise (the
    callers then count)."""
    if not columns:
        return {}
    row = con.execute(f"SELECT {', '.join(f'stats({_ident(c)})' for c in columns)} "
                      f"FROM {table} LIMIT 1").fetchone()
    return {c: v if isinstance(v, dict) else {}
            for c, v in zip(columns, row or ((None,) * len(columns)), strict=True)}


def _fits(stats: Mapping[str, Any], most: int) -> bool:
    """Whether a text column's statistics (``_stats``) say no text of it has more than
    ``most`` bytes (so not more characters)."""
    longest = stats.get("max_string_length")
    return isinstance(longest, int) and longest <= most


def _too_long(con: Any, card_files: Sequence[int], files: Mapping[int, Path]) -> None:
    """Raise ``ColumnarUnsupported`` at the first trace (by file, line) with a text of more
    characters than the row engine takes (``_long``), naming its file, line and column;
    nothing when the texts ``_long`` found are of more bytes only."""
    card = _in_list(card_files)
    psp = "CASE WHEN kind IN ('payment', 'other') THEN pref ELSE oref END"
    reference = f"more than the {MAX_REF} the row engine keeps of a reference"
    account = f"the account it makes is {{n}} characters, more than a canonical trace takes " \
        f"({ACCOUNT_MAX})"
    payout = f"the payout id it makes is {{n}} characters, more than a canonical payout " \
        f"takes ({PAYOUT_ID_MAX})"
    columns = [  # (which files, the file's column, its text, the most characters, why)
        (True, "Psp Reference", psp, MAX_REF, reference),
        (True, "Modification Reference", "modref", MAX_REF, reference),
        (True, "Merchant Reference", "mref", MAX_REF, reference),
        (True, "Batch Number", "batch", MAX_REF, reference),
        (True, "Merchant Account", "account", ACCOUNT_MAX, account),
        (True, "Batch Number", "CASE WHEN kind = 'payout' THEN account || '-batch-' || batch"
         " END", PAYOUT_ID_MAX, payout),
        (False, "transaction_id", "pref", MAX_REF, reference),
        (False, "order_id", "mref", MAX_REF, reference),
        (False, "customer_ref", "cref", MAX_REF, reference),
        (False, "settlement_id", "batch", MAX_REF, reference),
        (False, "site", "account", ACCOUNT_MAX, account)]
    # each file's first row id (its rows are in its order: a row's line is counted from it)
    starts = dict(con.execute("SELECT file, min(rowid) FROM traces GROUP BY file").fetchall())
    first: tuple[Any, ...] | None = None
    for of_card, name, text, most, why in columns:
        row = con.execute(f"""SELECT file, rowid, length({text}) FROM traces
            WHERE {'' if of_card else 'NOT '}coalesce(file IN ({card}), false)
                AND length({text}) > {most}
            ORDER BY file, rowid LIMIT 1""").fetchone()
        if row and (first is None or tuple(row[:2]) < first[:2]):
            first = (*row, name, why)
    if first is None:
        return
    number, rowid, length, name, why = first
    line = rowid - starts[number] + 2
    what = why.format(n=length) if "{n}" in why else f"{length} characters, {why}"
    raise ColumnarUnsupported(f"{files[number].name}: line {line}: {name}: {what}")


@cache
def _whitespace() -> str:
    """SQL: the characters Python's ``str.strip()`` takes off (those ``str.isspace`` holds
    true for: the space separators, and tabs, line breaks, the information separators
    \\x1c-\\x1f, the next line \\x85...) as a text literal. Worked out from Python, once
    (a scan of every code point, 60 ms)."""
    return _literal("".join(filter(str.isspace, map(chr, range(sys.maxunicode + 1)))))


def _cell(text: str) -> str:
    """SQL: the text ``text`` as the row readers take a field (``optional`` and ``require`` of
    the payment readers, ``cell`` of the orders and deliveries exports): stripped as
    Python's ``str.strip()`` strips it, and NULL when nothing is left. DuckDB's
    ``trim(text)`` takes off the space separators (Unicode category Zs) only; ``trim`` with
    the characters named is eight times slower than ``trim`` alone (2.2 s against 0.26 s of
    CPU on two million texts), so a text with nothing to strip is kept as it is, which costs
    less than ``trim`` alone. Every whitespace character in ASCII is at most the space
    (0x20); texts compare byte by byte (the empty text is below ``'!'``); and the character
    at the position of the text's byte length is there only when every character is one byte
    (ASCII: any other character is two bytes or more; past the end ``substring`` is empty,
    below the space). So a text whose first byte is above the space and whose character at
    its byte length is too is ASCII, its first and last characters are not whitespace, and
    it is its own strip, and not empty; any other text is stripped. (A test of its length in
    characters as well cost a fifth more.)"""
    return (f"CASE WHEN {text} >= '!' AND substring({text}, strlen({text}), 1) > ' '"
            f" THEN {text} ELSE nullif(trim({text}, {_whitespace()}), '') END")


class ColumnarUnsupported(NotImplementedError):
    """What the columnar path does not carry out (a trace assigned to an order in another
    currency, a method whose amounts are net, and with ``keep`` a day that needs currency
    conversion): the caller matches the day with the row engine instead."""


def _unsupported(rules: Rules, corrections: Sequence[Correction]) -> str:
    net = sorted(name for name, m in rules.methods.items() if m.basis != "gross")
    if net:
        return f"methods with net amounts ({', '.join(net)}) are matched by the row engine only"
    return ""


_ROUND = {RoundingMode.HALF_EVEN: "round_even", RoundingMode.HALF_UP: "round"}
"""A rounding mode as DuckDB's function for it (the others round half up here)."""


def _trace_id(t: str, card: str, prefix: str | None = None) -> str:
    """SQL: the row engine's trace id of the trace row ``t`` (``record_key("card", merchant
    account, psp reference, type, modification reference, batch)`` for the acquirer's rows,
    ``record_key("wallet", site, transaction id)`` for the wallets'); with ``prefix`` the
    acquirer's key parts under that prefix (a payout without batch)."""
    psp = f"CASE WHEN {t}.kind IN ('payment', 'other') THEN {t}.pref ELSE {t}.oref END"
    parts = [f"{t}.account", psp, f"{t}.ttype", f"{t}.modref", f"{t}.batch"]
    card_id = _record_key(prefix or "card", parts)
    if prefix:
        return card_id
    wallet_id = _record_key("wallet", [f"substr({t}.account, 8)", f"{t}.pref"])
    return f"CASE WHEN {t}.file IN ({card}) THEN {card_id} ELSE {wallet_id} END"


def _record_key(prefix: str, parts: Sequence[str]) -> str:
    """SQL: ``mappings.payments.record_key`` of the text columns ``parts`` (as the row
    readers take them: an empty one as ""; the columns are stripped as the files are read,
    ``_cell``)."""
    joined = " || chr(31) || ".join(f"coalesce({p}, '')" for p in parts)
    return f"'{prefix}-' || left(sha256({joined}), 32)"


def _group_key(*parts: str) -> str:
    """SQL: ``mappings.reconcile._key`` of the SQL text expressions ``parts``."""
    return f"left(sha256({' || chr(31) || '.join(parts)}), 24)"


def _adjustments(con: Any, rules: Rules, corrections: Sequence[Correction]
                 ) -> dict[int, Decimal]:
    """The ``adjust`` corrections of orders that are there, by the order's row id, each
    converted to the order's currency as the row engine converts it (nothing added when no
    rate converts it); written to the table ``adj`` when there are any."""
    wanted: dict[tuple[str, str], list[Correction]] = {}
    for c in corrections:
        if c.kind is CorrectionKind.ADJUST and c.amount and c.target.startswith("order:"):
            site, _, order_id = c.target.removeprefix("order:").partition(":")
            wanted.setdefault((site, order_id), []).append(c)
    if not wanted:
        return {}
    keys = ", ".join(f"({_literal(s)}, {_literal(o)})" for s, o in wanted)
    out: dict[int, Decimal] = {}
    for oid, site, order_id, currency in con.execute(
            f"""SELECT rowid, site, order_id, currency::VARCHAR FROM orders
                WHERE (site, order_id) IN ({keys})""").fetchall():
        total = Decimal(0)
        for c in wanted[(site, order_id)]:
            assert c.amount is not None
            total += _convert(rules, c.amount.amount, c.amount.currency, currency) \
                or Decimal(0)
        out[int(oid)] = total
    if out:
        con.execute("CREATE TABLE adj AS SELECT * FROM (VALUES " + ", ".join(
            f"({oid}, CAST('{amount}' AS DECIMAL(18,6)))" for oid, amount in out.items())
            + ") v(oid, amount)")
    return out


def _assignments(con: Any, card_files: Sequence[int], corrections: Sequence[Correction]
                 ) -> bool:
    """The ``assign`` corrections of traces and orders that are there, as the table ``asg``
    (trace row id -> order row id; the last correction of a trace wins, as in the row
    engine). Every trace's id is worked out for it (only on a day with assignments). An
    assigned payment or refund in another currency than its order's is converted by the
    row engine, not here: ``ColumnarUnsupported``."""
    wanted: dict[str, tuple[str, str]] = {}
    for c in corrections:
        if c.kind is CorrectionKind.ASSIGN and c.target.startswith("trace:"):
            site, _, order_id = (c.assign_to or "").removeprefix("order:").partition(":")
            wanted[c.target.removeprefix("trace:")] = (site, order_id)
    if not wanted:
        return False
    card = _in_list(card_files)
    values = ", ".join(f"({_literal(t)}, {_literal(s)}, {_literal(o)})"
                       for t, (s, o) in wanted.items())
    con.execute(f"""CREATE TABLE asg AS SELECT i.tid, min(o.rowid) AS oid
        FROM (VALUES {values}) v(trace_id, site, order_id)
        JOIN orders o ON o.site = v.site AND o.order_id = v.order_id
        JOIN (SELECT rowid AS tid, {_trace_id('t', card)} AS trace_id FROM traces t
              WHERE kind IN ('payment', 'refund', 'chargeback')) i ON i.trace_id = v.trace_id
        GROUP BY i.tid""")
    row = con.execute("""SELECT count(*) FROM asg JOIN traces t ON t.rowid = asg.tid
        JOIN orders o ON o.rowid = asg.oid WHERE t.currency <> o.currency""").fetchone()
    if row and row[0]:
        con.close()
        raise ColumnarUnsupported("a trace assigned to an order in another currency is "
                                  "converted by the row engine only")
    return True


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@cache
def _quantum(currency: str) -> Decimal:
    """The currency's minor unit as a quantum (one per currency: a large day asks 100,000
    times)."""
    return Decimal(1).scaleb(-minor_unit(currency))


def _convert(rules: Rules, amount: Decimal, source: str, target: str) -> Decimal | None:
    """``mappings.reconcile``'s conversion: at the rules' rate, rounded to the target's
    minor unit with their mode; None when no rate converts it."""
    rate = rules.rate(source, target)
    if rate is None:
        return None
    if source == target:
        return amount
    return (amount * rate).quantize(_quantum(target),
                                    rounding=rules.fx_rounding.decimal_mode)


def _tolerance(rules: Rules, expected: Decimal, currency: str) -> Decimal:
    """The row engine's tolerance of an amount (payments in the order's currency)."""
    by_percent = abs(expected) * rules.tolerance_percent / Decimal(100)
    return max(rules.tolerance_absolute, by_percent).quantize(
        _quantum(currency), rounding=rules.rounding.decimal_mode)


_CLASSES = {c.value: c for c in DiscrepancyClass}
"""A class's name -> the class (a dict lookup; the enum's call costs several times more)."""


def _money(amount: Decimal, currency: str) -> Money:
    """Money of an amount already exact to its currency (read from the database, made exact
    by ``_exact``), checked as Money's validator checks it (quantized to the minor unit with
    ``quantize_exact``'s rounding; an inexact one is refused by ``quantize_exact`` itself)
    but built without the validator's other work: a large day makes 85,000 of them."""
    exact = amount.quantize(_quantum(currency), rounding=ROUND_HALF_EVEN)
    if exact != amount:
        quantize_exact(amount, currency)  # raises, with the validator's words
    return _construct(exact, currency)


def _construct_fast(amount: Decimal, currency: str) -> Money:
    """``Money.model_construct(amount=amount, currency=currency)`` without its loop over the
    model's fields and aliases (0.9 µs instead of 2.6; ``_construct`` is this only while they
    come out equal, see below)."""
    return prevalidated(Money, {"amount": amount, "currency": currency})


def _construct_model(amount: Decimal, currency: str) -> Money:
    return Money.model_construct(amount=amount, currency=currency)


def _same_construction() -> bool:
    """True when ``_construct_fast`` builds what ``Money.model_construct`` builds (every slot
    pydantic keeps, and equality both ways), for the pydantic installed."""
    fast, model = _construct_fast(Decimal("1.50"), "EUR"), _construct_model(
        Decimal("1.50"), "EUR")
    slots = ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__",
             "__pydantic_private__")
    return (not Money.__pydantic_post_init__ and type(fast) is type(model)
            and all(getattr(fast, s) == getattr(model, s) for s in slots)
            and fast == model and model == fast and str(fast) == str(model)
            and fast.__getstate__() == model.__getstate__())


_construct: Callable[[Decimal, str], Money] = (
    _construct_fast if _same_construction() else _construct_model)


class _Monies(dict[tuple[Decimal | str, str], Money]):
    """``_money`` of each amount and currency made once (Money is frozen: one object can
    stand for every equal amount of a day's discrepancies). An amount is known by its value
    (``_money`` quantizes it to its currency's minor unit: equal values give equal Money),
    a zero by its sign (``-0.00`` equals ``0.00`` but is written otherwise)."""

    def __call__(self, amount: Decimal, currency: str) -> Money:
        key = (amount, currency) if amount else (
            "-0" if amount.is_signed() else "0", currency)
        money = self.get(key)
        if money is None:
            money = self[key] = _money(amount, currency)
        return money


def _discrepancy_fast(**values: Any) -> Discrepancy:
    """``Discrepancy(**values)`` (every field given) without the frozen dataclass's one
    ``object.__setattr__`` a field (a large day makes 35,000 of them); ``_discrepancy`` is
    this only while it builds the same object (see below)."""
    made = object.__new__(Discrepancy)
    made.__dict__.update(values)
    return made


def _same_discrepancy() -> bool:
    """True when ``_discrepancy_fast`` builds what ``Discrepancy`` builds: the same fields
    (all of them given), the same instance dictionary, equal both ways, no
    ``__post_init__`` and no slots."""
    from dataclasses import fields

    values: dict[str, Any] = {
        "key": "k", "cls": DiscrepancyClass.UNPAID_ORDER, "site": "s", "method": "card",
        "order_id": "o", "trace_ids": ("t",), "expected": None, "actual": None,
        "difference": None, "detail": "d", "payout_id": None, "status": "open"}
    if {f.name for f in fields(Discrepancy)} != set(values) or hasattr(
            Discrepancy, "__post_init__") or hasattr(Discrepancy, "__slots__"):
        return False
    fast, made = _discrepancy_fast(**values), Discrepancy(**values)
    return vars(fast) == vars(made) and fast == made and made == fast and \
        repr(fast) == repr(made) and hash(fast) == hash(made)


_discrepancy: Callable[..., Discrepancy] = (
    _discrepancy_fast if _same_discrepancy() else Discrepancy)


def _exact(value: Decimal | str, currency: str) -> Decimal:
    """An amount of the database (six decimals) as the row engine holds it: Money's,
    exact to its currency's minor unit."""
    return Decimal(value).quantize(_quantum(currency))


def _ref(value: Any) -> str | None:
    """A reference as the row mapping keeps it (trimmed, at most 200 characters)."""
    if value is None:
        return None
    return str(value).strip()[:200] or None


@dataclass
class ColumnarDay(ColumnarResult):
    """A columnar result with its database still open (``keep=True``): the whole day as
    the row engine gives it, each part worked out when asked for. ``close()`` when done."""

    _con: Any = None
    _rules: Rules | None = None
    _accepted: frozenset[str] = frozenset()
    _adjusted: dict[int, Decimal] = field(default_factory=dict)
    _tol: str = ""
    _card: str = "NULL"
    """The acquirer's files, as SQL for ``file IN (...)`` (``_in_list``)."""
    _card_files: frozenset[int] = frozenset()
    _rules_known: list[tuple[str, str, str]] = field(default_factory=list)
    _files: dict[int, Path] = field(default_factory=dict)
    _ready: bool = False
    _assigned: bool = False
    _exps: dict[int, list[str]] = field(default_factory=dict)

    def _open(self, con: Any, rules: Rules, corrections: Sequence[Correction], tol: str,
              card_files: Sequence[int], rules_known: list[tuple[str, str, str]],
              files: dict[int, Path], adjusted: dict[int, Decimal]) -> None:
        self._con, self._rules, self._tol = con, rules, tol
        self._card, self._card_files = _in_list(card_files), frozenset(card_files)
        self._accepted = frozenset(c.target for c in corrections
                                   if c.kind is CorrectionKind.ACCEPT)
        self._rules_known, self._files, self._adjusted = rules_known, files, adjusted

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> ColumnarDay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the tables the parts are read from -------------------------------------------------
    def _prepare(self) -> Any:
        """Every trace's id (``tids``), each matched payment with its fee, rule and whether
        it repeats one (``paid``), each order of the day with its money (``od``) and each
        payout's members (``members``): made once."""
        con = self._con
        if con is None:
            raise ValueError("the columnar result is closed")
        if self._ready:
            return con
        con.execute(f"""CREATE TABLE tids AS SELECT rowid AS tid,
            {_trace_id('t', self._card)} AS trace_id FROM traces t""")
        rule = "CASE " + ("WHEN m.tid IN (SELECT tid FROM asg) THEN 'assigned' "
                          if self._assigned else "") + " ".join(
            f"WHEN o.{ocol} = t.{tcol} THEN '{name}'"
            for name, tcol, ocol in self._rules_known) + " END"
        con.execute(f"""CREATE TABLE paid AS SELECT m.tid, m.oid, m.amount, m.booking_date,
            CASE WHEN t.net_currency = o.currency THEN t.fee ELSE 0 END AS fee,
            i.trace_id, coalesce(q.dup, false) AS dup, {rule} AS rule
            FROM pm m JOIN traces t ON t.rowid = m.tid JOIN orders o ON o.rowid = m.oid
            JOIN tids i ON i.tid = m.tid
            LEFT JOIN seqr q ON q.tid = m.tid WHERE m.oid IS NOT NULL""")
        con.execute(f"""CREATE TABLE od AS SELECT v.oid, o.site, o.order_id, o.method,
            o.currency::VARCHAR AS currency, o.pref AS reference, v.expected,
            v.cancelled, v.confirmed, v.delivered, v.adj,
            coalesce(mu.received, v.received) AS received,
            coalesce(mu.counted, v.counted) AS counted, coalesce(mu.dups, 0) AS dups,
            coalesce(f.fee, 0) AS fee, coalesce(r.refunded, 0) AS refunded, {self._tol} AS tol
            FROM verdict v JOIN orders o ON o.rowid = v.oid LEFT JOIN multi mu USING (oid)
            LEFT JOIN (SELECT oid, sum(fee) AS fee FROM paid WHERE NOT dup GROUP BY oid) f
                USING (oid)
            LEFT JOIN (SELECT r.oid, sum({_REFUNDED}) AS refunded
                       FROM refunds r JOIN orders o ON o.rowid = r.oid GROUP BY r.oid) r
                USING (oid)""")
        con.execute("""CREATE TABLE members AS SELECT p.prow,
            string_agg(i.trace_id, ' ' ORDER BY i.trace_id) AS ids
            FROM payouts p JOIN traces t ON t.account = p.account AND t.batch = p.bkey
            JOIN tids i ON i.tid = t.rowid WHERE t.kind <> 'payout' GROUP BY p.prow""")
        exps: dict[int, list[str]] = {}
        for (code,) in con.execute("""SELECT DISTINCT currency::VARCHAR FROM orders
                UNION SELECT DISTINCT currency::VARCHAR FROM traces
                WHERE currency IS NOT NULL""").fetchall():
            exps.setdefault(minor_unit(code), []).append(code)
        self._exps = exps
        self._ready = True
        return con

    def _text(self, amount: str, currency: str) -> str:
        """SQL: an amount as text exact to its currency's minor unit (DuckDB hands decimals
        to Python several times slower than text)."""
        def fixed(e: int) -> str:
            return f"CAST(CAST({amount} AS DECIMAL(38,{e})) AS VARCHAR)"
        if len(self._exps) <= 1:
            return fixed(next(iter(self._exps), 2))
        return "CASE " + " ".join(
            f"WHEN {currency}::VARCHAR IN ({', '.join(map(_literal, codes))}) THEN {fixed(e)}"
            for e, codes in sorted(self._exps.items())) + f" ELSE {fixed(6)} END"

    # the parts ----------------------------------------------------------------------------
    def full_counts(self) -> dict[str, int]:
        """``DayResult.counts()``: every group kind and class, zeros too."""
        out = {f"group:{k.value}": 0 for k in GroupKind}
        out.update({f"discrepancy:{c.value}": 0 for c in DiscrepancyClass})
        out.update(self.counts)
        return out

    def group_rows(self, size: int = 50_000) -> Iterator[list[dict[str, Any]]]:
        """Every match group as ``state.remittance.group_row`` makes it of the row engine's
        ``MatchGroup``, in its order, ``size`` at a time (trace ids and amounts come out of
        the database as text: lists and decimals cross to Python several times slower)."""
        con = self._prepare()
        t = self._text
        query = f"""
            SELECT {_group_key("'order'", "'order:' || od.site || ':' || od.order_id")}
                AS group_id, CASE WHEN od.counted = 1 THEN 'one_to_one' ELSE 'one_to_many' END
                AS kind, od.site, od.method, od.order_id, NULL AS payout_id, p.ids,
                od.currency, {t('od.expected', 'od.currency')},
                {t('od.received', 'od.currency')}, {t('od.fee', 'od.currency')}, p.rule
            FROM od JOIN (SELECT oid,
                                 string_agg(trace_id, ' ' ORDER BY booking_date, trace_id) AS ids,
                                 string_agg(DISTINCT rule, ',' ORDER BY rule) AS rule
                          FROM paid WHERE NOT dup GROUP BY oid) p USING (oid)
            WHERE od.counted > 0
            UNION ALL
            SELECT {_group_key("'refund'", "i.trace_id")}, r.kind::VARCHAR, o.site, o.method,
                o.order_id, NULL, i.trace_id, o.currency::VARCHAR, NULL,
                {t(_REFUNDED, 'o.currency')}, NULL, r.rule
            FROM refunds r JOIN orders o ON o.rowid = r.oid JOIN tids i ON i.tid = r.tid
            UNION ALL
            SELECT {_group_key("'payout'", "p.account", "p.payout_id")}, 'payout', NULL,
                CASE WHEN p.card THEN 'card' ELSE 'wallet_balance' END, NULL, p.payout_id,
                m.ids, p.currency::VARCHAR, {t('p.amount', 'p.currency')},
                {t('p.total', 'p.currency')}, NULL, 'batch_id'
            FROM payouts p JOIN members m USING (prow)
            WHERE abs(p.total - p.amount) <= p.tol
            ORDER BY kind, coalesce(site, ''), coalesce(order_id, ''), group_id"""
        yield from _chunks(con.execute(query), size, lambda rows: [
            {"group_id": g, "kind": k, "site": s, "method": m, "order_id": o,
             "payout_id": p, "trace_ids": ids.split(" "), "currency": c,
             "expected": None if e is None else Decimal(e), "received": Decimal(r),
             "fee": None if f is None else Decimal(f), "rule": rule}
            for g, k, s, m, o, p, ids, c, e, r, f, rule in rows])

    def outcome_rows(self, size: int = 50_000) -> Iterator[list[dict[str, Any]]]:
        """One row an order of the day, as ``state.remittance.outcome_row`` makes it of the
        row engine's ``OrderOutcome``, by site and order id, ``size`` at a time."""
        con = self._prepare()
        t = self._text
        cursor = con.execute(f"""SELECT site, order_id, method, currency,
            {t('expected', 'currency')}, {t('received', 'currency')}, {t('fee', 'currency')},
            {t('refunded', 'currency')}, reference,
            counted > 0 AND abs(received - expected) <= tol AS matched
            FROM od ORDER BY site, order_id""")
        yield from _chunks(cursor, size, lambda rows: [
            {"site": s, "order_id": o, "method": m, "currency": c, "expected": Decimal(e),
             "received": Decimal(r), "fee": Decimal(f), "refunded": Decimal(x),
             "reference": ref, "matched": k}
            for s, o, m, c, e, r, f, x, ref, k in rows])

    def totals(self) -> dict[tuple[str, str, str], tuple[int, Decimal, Decimal, Decimal, int]]:
        """Per (method, site, currency): orders, expected, received, fees, orders matched."""
        con = self._prepare()
        t = self._text
        rows = con.execute(f"""SELECT method, site, currency, count(*),
            {t('sum(expected)', 'currency')}, {t('sum(received)', 'currency')},
            {t('sum(fee)', 'currency')},
            count(*) FILTER (counted > 0 AND abs(received - expected) <= tol)
            FROM od GROUP BY method, site, currency""").fetchall()
        return {(m, s, c): (int(n), Decimal(e), Decimal(r), Decimal(f), int(k))
                for m, s, c, n, e, r, f, k in rows}

    def discrepancies(self) -> list[Discrepancy]:
        """Every discrepancy of the day as the row engine builds it, in its order. Worked out
        from the reported entities only (a few percent of a day): their orders, the trace ids
        of their payments and of the members of the payouts that do not square, without the
        tables of every group and outcome (``_prepare``). The collector is held off meanwhile
        (as for the labels): the day's tens of thousands of discrepancies and their Money
        hold no cycles, but would set off collections of the caller's whole heap."""
        with collector_off():
            return self._discrepancies()

    def _discrepancies(self) -> list[Discrepancy]:
        con = self._con
        if con is None or self._rules is None:
            raise ValueError("the columnar result is closed")
        # the orders' (amounts as text: DuckDB hands decimals to Python several times
        # slower), each with its key, ``mappings.reconcile._key(cls, order_target(site,
        # order_id), "")`` (a missing site or id as Python writes it)
        key = _group_key("f.cls", "'order:' || coalesce(o.site, 'None') || ':' || "
                         "coalesce(o.order_id, 'None')", "''")
        rows = con.execute(f"""SELECT f.cls, f.oid, o.site, o.order_id, o.method,
            o.currency::VARCHAR, CAST(v.expected AS VARCHAR), v.cancelled, {key} FROM found f
            JOIN verdict v USING (oid) JOIN orders o ON o.rowid = f.oid""").fetchall()
        # the database works out their payments and the rows of the orphans and the payouts
        # meanwhile, on a cursor of its own (its queries leave Python's lock while they run):
        # the discrepancies are made in Python on one core, the database has the other
        with ThreadPoolExecutor(max_workers=1) as pool:
            paid = pool.submit(self._payment_rows)
            side = pool.submit(self._side_rows)  # after the payments (it reads ``ftids``)
            found = self._order_discrepancies(rows, money := _Monies(), paid.result)
            orphan_rows, lines, payout_rows = side.result()
        found.extend(self._orphans(money, orphan_rows, lines))
        found.extend(self._payout_mismatches(money, payout_rows))
        return settle(found, self._accepted)

    def _payment_rows(self) -> dict[int, list[tuple[str, str, bool]]]:
        """Order row id -> its payments (trace id, amount as text, whether it repeats one) in
        the row engine's order, for the orders of ``found``; on a cursor of this result's
        database (for a thread of its own). The trace ids of those payments and of the
        members of the payouts that do not square are kept in ``ftids`` (a table, not a
        temporary one: the cursor of ``_side_rows`` reads it too)."""
        cursor = self._con.cursor()
        payments: dict[int, list[tuple[str, str, bool]]] = {}
        try:
            cursor.execute("SET TimeZone='UTC'")
            cursor.execute(f"""CREATE OR REPLACE TABLE ftids AS SELECT t.rowid AS tid,
                {_trace_id('t', self._card)} AS trace_id FROM traces t SEMI JOIN (
                    SELECT m.tid FROM pm m SEMI JOIN (SELECT oid FROM found
                                                      WHERE oid IS NOT NULL) f
                        ON f.oid = m.oid
                    UNION ALL SELECT t2.rowid FROM traces t2 JOIN payouts p
                        ON t2.account = p.account AND t2.batch = p.bkey
                        WHERE t2.kind <> 'payout'
                          AND (p.members = 0 OR abs(p.total - p.amount) > p.tol)) x
                ON x.tid = t.rowid""")
            for oid, trace_id, amount, dup in cursor.execute("""SELECT m.oid, i.trace_id,
                    CAST(m.amount AS VARCHAR), coalesce(q.dup, false)
                    FROM pm m JOIN ftids i ON i.tid = m.tid
                    LEFT JOIN seqr q ON q.tid = m.tid
                    SEMI JOIN (SELECT oid FROM found WHERE oid IS NOT NULL) f
                        ON f.oid = m.oid
                    ORDER BY m.oid, m.booking_date, i.trace_id""").fetchall():
                payments.setdefault(int(oid), []).append((trace_id, amount, dup))
        finally:
            cursor.close()
        return payments

    def _order_discrepancies(self, rows: list[tuple[Any, ...]],
                             money: Callable[[Decimal, str], Money],
                             paid: Callable[[], dict[int, list[tuple[str, str, bool]]]]
                             ) -> list[Discrepancy]:
        """The discrepancies of the orders of ``rows`` (``found`` with each order's class,
        money and key): first those of the orders without payment, then, once ``paid()``
        gives the payments (``_payment_rows``), the others. The money of an order without
        payment (its expected amount, nothing received, the difference) is made once for
        each total, currency and cancellation (a day's orders share their totals): a
        lookup by the database's text instead of three by decimal value (a decimal's hash
        costs a microsecond)."""
        rules = self._rules
        assert rules is not None
        found: list[Discrepancy] = []
        unpaid = {c.value: c for c in (DiscrepancyClass.UNPAID_ORDER,
                                       DiscrepancyClass.DELIVERED_NOT_PAID)}
        delivered_not_paid = DiscrepancyClass.DELIVERED_NOT_PAID
        others = []
        monies: dict[tuple[str, str, bool], tuple[Decimal, Money, Money, Money]] = {}
        zero = Decimal(0)
        add = found.append
        make = _order_row
        for row in rows:
            cls = unpaid.get(row[0])
            if cls is None:
                others.append(row)
                continue
            _, _, site, order_id, method, currency, total, cancelled, key = row
            made = monies.get((total, currency, cancelled))
            if made is None:
                # as ``_order_discrepancy`` makes them: expected, actual 0, their difference
                expected = Decimal(0) if cancelled else _exact(total, currency)
                made = monies[(total, currency, cancelled)] = (
                    expected, money(expected, currency), money(zero, currency),
                    money(zero - expected, currency))
            expected, expected_money, zero_money, difference = made
            add(make(key, cls, site, method, order_id, (), expected_money, zero_money,
                     difference, f"{method} order of {expected} {currency}: no payment found"
                     + (" although it was delivered" if cls is delivered_not_paid else "")))
        payments = paid() if others else {}
        for cls_, oid, site, order_id, method, currency, total, cancelled, key in others:
            cls = _CLASSES[cls_]
            expected = Decimal(0) if cancelled else _exact(total, currency)
            received = self._adjusted.get(int(oid), Decimal(0))
            counted: list[str] = []
            repeats: list[str] = []
            extra = Decimal(0)
            for trace_id, amount, dup in payments.get(int(oid), []):
                if dup:
                    repeats.append(trace_id)
                    extra += _exact(amount, currency)
                else:
                    counted.append(trace_id)
                    received += _exact(amount, currency)
            args: tuple[tuple[str, ...], Decimal | None, Decimal | None, str]
            if cls is DiscrepancyClass.DUPLICATE_PAYMENT:
                args = (tuple(repeats), Decimal(0), extra,
                        f"{len(repeats)} payment(s) of {extra} {currency} beyond the order's "
                        f"{expected} repeat one already counted")
            elif cls is DiscrepancyClass.AMOUNT_MISMATCH:
                args = (tuple(counted), expected, received,
                        f"received {received} {currency} for an order of {expected} "
                        f"(tolerance {_tolerance(rules, expected, currency)})")
            else:
                args = (tuple(counted), None, received, "paid, but no delivery evidence")
            found.append(_order_discrepancy(money, key, cls, site, order_id, method,
                                            currency, *args))
        return found

    def _side_rows(self) -> tuple[list[tuple[Any, ...]],
                                  dict[tuple[int, str], tuple[int, dict[str, str | None]]],
                                  list[tuple[Any, ...]]]:
        """The rows of the orphans (``_orphan_rows``), their lines and references
        (``_lines``) and the payouts that do not square, on a cursor of this result's
        database (for a thread of its own)."""
        cursor = self._con.cursor()
        try:
            cursor.execute("SET TimeZone='UTC'")
            orphans = self._orphan_rows(cursor)
            lines = _lines(cursor, self._card, self._card_files) if orphans else {}
            payouts = cursor.execute("""SELECT p.account, p.payout_id, p.card, p.amount,
                    p.currency::VARCHAR, p.total, p.members, m.ids
                    FROM payouts p LEFT JOIN (
                        SELECT p2.prow, string_agg(i.trace_id, ' ' ORDER BY i.trace_id) AS ids
                        FROM payouts p2 JOIN traces t ON t.account = p2.account
                            AND t.batch = p2.bkey
                        JOIN ftids i ON i.tid = t.rowid WHERE t.kind <> 'payout'
                        GROUP BY p2.prow) m USING (prow)
                    WHERE p.members = 0 OR abs(p.total - p.amount) > p.tol""").fetchall()
        finally:
            cursor.close()
        return orphans, lines, payouts

    def _orphan_rows(self, con: Any) -> list[tuple[Any, ...]]:
        """The day's payments and refunds that name no order (the table ``orphans`` of the
        connection ``con``): file, trace id, kind, amount (text), currency, credit."""
        day = f"DATE '{self.day.isoformat()}'"
        con.execute(f"""CREATE OR REPLACE TEMP TABLE orphans AS SELECT t.rowid AS tid, t.file,
                {_trace_id('t', self._card)} AS trace_id, t.kind::VARCHAR AS kind,
                CAST(t.amount AS VARCHAR) AS amount, t.currency::VARCHAR AS currency, t.credit,
                {_psp('t', self._card)} AS psp
            FROM traces t SEMI JOIN (
                SELECT tid FROM pm WHERE oid IS NULL AND booking_date = {day}
                UNION ALL SELECT tid FROM refunds WHERE oid IS NULL AND booking_date = {day}
            ) x ON x.tid = t.rowid""")
        return con.execute("""SELECT file, trace_id, kind, amount, currency, credit
                              FROM orphans ORDER BY file""").fetchall()

    def _orphans(self, money: Callable[[Decimal, str], Money], rows: list[tuple[Any, ...]],
                 lines: dict[tuple[int, str], tuple[int, dict[str, str | None]]]
                 ) -> list[Discrepancy]:
        """The discrepancies of the day's payments and refunds that name no order
        (``_orphan_rows``), each with the file and line it came from and its references
        (those of the file's first row with its trace id, as the row reader and mapping take
        them). A trace file is read into ``traces`` in its order, so a row's line is its row
        id counted from the file's first (``_lines``): the file is not read again."""
        card = self._card_files
        out = []
        names = {number: path.name for number, path in self._files.items()}
        for number, trace_id, kind, amount, currency, credit in rows:
            name = names[number]
            line, refs = lines[(number, trace_id)]
            paid = money(_exact(amount, currency), currency)
            # Money's negation, as the row mapping signs a debit
            signed = paid if credit else money(-paid.amount, currency)
            text = ", ".join(f"{k}={v}" for k, v in sorted(refs.items()) if v is not None)
            out.append(_discrepancy(
                key=_key(DiscrepancyClass.PAYMENT_WITHOUT_ORDER, trace_id),
                cls=DiscrepancyClass.PAYMENT_WITHOUT_ORDER, site=None,
                method="card" if number in card else "wallet_balance", order_id=None,
                trace_ids=(trace_id,), expected=None, actual=signed, difference=signed,
                detail=f"{kind} {paid} from {name}:{line} names no order of the "
                       f"window ({text or 'no references'})", payout_id=None, status="open"))
        return out

    def _payout_mismatches(self, money: Callable[[Decimal, str], Money],
                           rows: list[tuple[Any, ...]]) -> list[Discrepancy]:
        """The discrepancies of the payouts that do not square (``_side_rows``)."""
        out = []
        for account, payout_id, card, amount, currency, total, members, ids in rows:
            paid = money(_exact(amount, currency), currency)
            netting = _exact(total, currency) if members else Decimal(0)
            out.append(Discrepancy(
                key=_key(DiscrepancyClass.PAYOUT_MISMATCH, account, payout_id),
                cls=DiscrepancyClass.PAYOUT_MISMATCH, site=None,
                method="card" if card else "wallet_balance", order_id=None,
                trace_ids=tuple(ids.split(" ")) if ids else (), expected=paid,
                actual=money(netting, currency),
                difference=money(netting - paid.amount, currency),
                detail=f"payout {payout_id} of {paid} pays out {members} transaction(s) "
                       f"netting {netting} {currency}", payout_id=payout_id))
        return out


def _chunks(cursor: Any, size: int, make: Callable[[list[tuple[Any, ...]]], list[Any]]
            ) -> Iterator[list[Any]]:
    """The rows of ``cursor``, ``size`` at a time, each chunk made by ``make``, with the
    collector held off while a chunk is made (as for the labels: its many new objects hold
    no cycles, but would set off full collections of the caller's whole heap)."""
    while True:
        with collector_off():
            chunk = make(cursor.fetchmany(size))
        if not chunk:
            return
        yield chunk


_REFUNDED = ("CASE WHEN r.currency <> o.currency THEN 0 WHEN r.credit THEN r.amount"
             " ELSE -r.amount END")
"""SQL: a refund's amount (``r``) for its order (``o``), signed: nothing when its currency is
another (the row engine converts it at the rules' rate)."""


def _order_discrepancy(money: Callable[[Decimal, str], Money], key: str,
                       cls: DiscrepancyClass, site: str, order_id: str, method: str,
                       currency: str, trace_ids: tuple[str, ...], expected: Decimal | None,
                       actual: Decimal | None, detail: str) -> Discrepancy:
    """``mappings.reconcile``'s discrepancy of an order (its key worked out by the
    database, its Money made by ``money``)."""
    diff = None
    if expected is not None and actual is not None:
        diff = money(actual - expected, currency)
    elif expected is not None:
        diff = money(-expected, currency)
    return _order_row(key, cls, site, method, order_id, trace_ids,
                      None if expected is None else money(expected, currency),
                      None if actual is None else money(actual, currency), diff, detail)


def _order_row_fast(key: str, cls: DiscrepancyClass, site: str | None, method: str | None,
                    order_id: str | None, trace_ids: tuple[str, ...], expected: Money | None,
                    actual: Money | None, difference: Money | None, detail: str
                    ) -> Discrepancy:
    """``_discrepancy_fast`` of an open discrepancy without payout, its fields given in
    their order (no keyword arguments gathered into a dictionary and unpacked again: a large
    day makes 30,000 of them)."""
    made = object.__new__(Discrepancy)
    made.__dict__.update({
        "key": key, "cls": cls, "site": site, "method": method, "order_id": order_id,
        "trace_ids": trace_ids, "expected": expected, "actual": actual,
        "difference": difference, "detail": detail, "payout_id": None, "status": "open"})
    return made


def _order_row_model(key: str, cls: DiscrepancyClass, site: str | None, method: str | None,
                     order_id: str | None, trace_ids: tuple[str, ...], expected: Money | None,
                     actual: Money | None, difference: Money | None, detail: str
                     ) -> Discrepancy:
    return Discrepancy(key=key, cls=cls, site=site, method=method, order_id=order_id,
                       trace_ids=trace_ids, expected=expected, actual=actual,
                       difference=difference, detail=detail, payout_id=None, status="open")


_order_row: Callable[..., Discrepancy] = (
    _order_row_fast if _discrepancy is _discrepancy_fast else _order_row_model)
"""An order's discrepancy (``_order_discrepancy``) as ``_discrepancy`` builds it."""


def _psp(t: str, card: str) -> str:
    """SQL: the PSP reference (a wallet's transaction id) of the trace row ``t`` as its file
    spells it."""
    return (f"CASE WHEN {t}.file IN ({card}) AND {t}.kind NOT IN ('payment', 'other')"
            f" THEN {t}.oref ELSE {t}.pref END")


def _lines(con: Any, card_sql: str, card: frozenset[int]
           ) -> dict[tuple[int, str], tuple[int, dict[str, str | None]]]:
    """(file, trace id) -> the line (the first, for a row repeated) and the references of
    the rows of the table ``orphans``, as the row reader and mapping take them. A file's rows
    are in ``traces`` in its order (inserted with the insertion order kept) and nothing
    else: a row's line is its row id less the file's first, plus the header's line. Only the
    rows whose PSP reference (transaction id) is an orphan's are hashed."""
    # the first row's columns one by one (a row of them crosses to Python as a dict)
    first = ", ".join(f"arg_min(c.{column}, c.tid)"
                      for column in ("psp", "modref", "mref", "batch", "ttype", "cref"))
    # the rows sharing an orphan's PSP reference are found on the columns that make it
    # (``x``) first; the columns of those few rows only are read then, by row id (a scan of
    # every column of a million rows cost most of this query)
    rows = con.execute(f"""SELECT c.file, c.k, min(c.tid) - any_value(f.first) + 2, {first}
        FROM (SELECT t.tid, t.file, {_trace_id('t', card_sql)} AS k, t.psp, t.modref,
                     t.mref, t.batch, t.ttype, t.cref
              FROM (SELECT rowid AS tid, *, {_psp('traces', card_sql)} AS psp
                    FROM traces SEMI JOIN (
                        SELECT x.rowid AS tid FROM traces x
                        SEMI JOIN (SELECT DISTINCT file, psp FROM orphans) o
                            ON o.file = x.file
                            AND o.psp IS NOT DISTINCT FROM {_psp('x', card_sql)}) x
                        ON x.tid = traces.rowid) t) c
        SEMI JOIN orphans o ON o.file = c.file AND o.trace_id = c.k
        JOIN (SELECT file, min(rowid) AS first FROM traces
              WHERE file IN (SELECT file FROM orphans) GROUP BY file) f ON f.file = c.file
        GROUP BY c.file, c.k""").fetchall()
    out = {}
    for number, k, line, *values in rows:
        psp, modification, merchant, batch, type_, customer = (_ref(v) for v in values)
        if number in card:
            kind = ROW_ACQUIRER_KINDS.get((type_ or "").replace(" ", "").lower(),
                                          TraceKind.OTHER)
            plain = kind in {TraceKind.PAYMENT, TraceKind.OTHER}
            refs = {"provider_reference": psp if plain else modification or psp,
                    "original_reference": None if plain else psp,
                    "merchant_reference": merchant, "batch_id": batch}
        else:
            refs = {"provider_reference": psp, "merchant_reference": merchant,
                    "customer_reference": customer, "batch_id": batch}
        out[(int(number), k)] = (int(line), refs)
    return out


__all__ = ["ColumnarDay", "ColumnarResult", "ColumnarUnsupported", "reconcile_columnar"]
