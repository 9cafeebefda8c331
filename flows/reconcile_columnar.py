"""The daily match on columns: the rules of ``mappings.reconcile`` carried out as DuckDB
queries over a day's files, for days with a million orders (the row-by-row path costs about
100 µs a card row in mapping alone).

Same inputs, same rules, same classes as ``mappings.reconcile.reconcile`` for what this path
reads: orders (CSV), delivery evidence (CSV), card acquirer settlement CSVs and wallet
balance CSVs, payments in the order's currency. Money is exact decimals, never floats: every
amount's text is checked as the row readers check it (a decimal, not negative, no more
non-zero decimals than its currency's minor unit), since a cast alone would round past its
scale. A file that breaks a rule is refused with the file, line, field and rule, as the row
readers say it; the others are read.

It reads the files it is given and returns counts (and, when asked, each entity's classes);
it writes nothing: storing a day's result stays with ``flows.reconcile``.
"""

from __future__ import annotations

import csv
import gc
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from iso4217 import Currency

from canonical import TraceKind
from connectors.payments.acquirer import REQUIRED as ACQUIRER_REQUIRED
from connectors.payments.common import _ABBREVIATIONS, PaymentFileError
from connectors.payments.wallet_balance import REQUIRED as WALLET_REQUIRED
from connectors.payments.wallet_balance import TYPES as WALLET_TYPES
from mappings.payments import ACQUIRER_KINDS as ROW_ACQUIRER_KINDS
from mappings.reconcile import Rules

ORDER_COLUMNS = ("site", "order_id", "status", "created_at", "currency", "total", "method",
                 "provider_reference")
DELIVERY_COLUMNS = ("site", "order_id", "status", "quantity")


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


def _header(path: Path, required: Sequence[str]) -> list[str]:
    """The file's column names, once the required ones are known to be there."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        names = next(csv.reader([fh.readline()]))
    header = {" ".join(h.split()).casefold() for h in names}
    missing = [c for c in required if " ".join(c.split()).casefold() not in header]
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
        a, c = f'trim("{amount}")', f'"{currency}"'
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


def _invalid(amount: str, value: str | None = None) -> str:
    """SQL: the amount (its text ``a``, its decimal ``v``) is there and negative, or not
    exactly what its text says. The cast takes an exponent (``1e-7``) and rounds past six
    decimals, where the row readers refuse the text; a text with an exponent, or with a
    seventh decimal that is not a trailing zero, is flagged (the regular expression only for
    the rare text with seven decimals or more). Its currency and its exactness to the
    currency's minor unit are checked once the file is in (one CASE over the few currencies
    it holds, instead of a lookup per row). A digit separator (``1_000``), which the cast
    takes, is flagged too. ``value`` names the decimal when the query has it already."""
    a, v = f'r."{amount}"', value or _amount(amount)
    # one pass of the text for an exponent or a separator (three ``contains`` cost more)
    return (f"({a} IS NOT NULL AND ({v} < 0 OR {a} GLOB '*[eE_]*'"
            f" OR ({a} LIKE '%._______%' AND NOT regexp_full_match({a},"
            f" '\\s*[+]?[0-9]*[.]{'[0-9]' * 6}0*\\s*'))))")


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
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
"""The acquirer's times as this path reads them (the first of the row reader's formats)."""
ACQ_AMOUNTS = (("Gross Credit (GC)", "Gross Currency"), ("Gross Debit (GC)", "Gross Currency"),
               ("Net Credit (NC)", "Net Currency"), ("Net Debit (NC)", "Net Currency"),
               ("Commission (NC)", "Net Currency"))


def reconcile_columnar(rules: Rules, day: date, *, orders: Sequence[Path],
                       deliveries: Sequence[Path], acquirer: Sequence[Path] = (),
                       wallet: Sequence[Path] = (), labels: bool = False,
                       threads: int | None = None) -> ColumnarResult:
    """Read, check, normalise, match and classify a day's files in DuckDB. Each file is read
    once, its amounts checked in the same pass; a file with a bad row is taken out again and
    explained (file, line, field, rule) by a second look at that file only.

    Orders and traces are named by their row ids once read: after the two joins on text keys
    (payment reference to order, delivery to order) every join and grouping is on integers,
    and an order's site and id are looked up again only for the entities that are reported."""
    import duckdb

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
    lag_case = "CASE " + " ".join(f"WHEN r.method = '{k}' THEN {v}" for k, v in lags.items()) \
        + f" ELSE {rules.default_lag_days} END"
    con.execute("""CREATE TABLE orders (file INTEGER, site VARCHAR, order_id VARCHAR,
        cancelled BOOLEAN, confirmed BOOLEAN, currency currency, day DATE, pref VARCHAR,
        expected DECIMAL(18,6), lag INTEGER, bad BOOLEAN)""")
    con.execute("""CREATE TABLE traces (file INTEGER, kind kind,
        account VARCHAR, pref VARCHAR, mref VARCHAR, oref VARCHAR, currency currency,
        net_currency currency, amount DECIMAL(18,6), credit BOOLEAN, fee DECIMAL(18,6),
        net DECIMAL(18,6), booking_date DATE,
        batch VARCHAR, bad BOOLEAN)""")
    refused: list[str] = []
    number = 0

    scales = {c: 10 ** e for c, e in _currencies()}

    def post_check(table: str, pairs: Sequence[tuple[str, str]]) -> bool:
        """True when no row of file ``number`` is flagged bad and every amount has a
        currency and is exact to its minor unit: one scan grouped by the currencies the file
        holds (a handful) counts the flags and the amounts with more than two decimals; a
        second one, exact to each currency, only when a currency of the file has fewer than
        two decimals or an amount more. (The currencies are ISO 4217: their type says so.)"""
        keys = ", ".join(f"CASE WHEN {a} IS NOT NULL THEN {c} END" for a, c in pairs)
        cents = " OR ".join(f"{a} * 100 % 1 <> 0" for a, _ in pairs)
        missing = " OR ".join(f"({a} IS NOT NULL AND {c} IS NULL)" for a, c in pairs)
        groups = con.execute(f"SELECT count(*) FILTER (bad OR {missing}), "
                             f"count(*) FILTER ({cents}), {keys} FROM {table} WHERE file = ? "
                             "GROUP BY ALL", [number]).fetchall()
        if any(g[0] for g in groups):
            return False
        presents = [sorted({g[2 + i] for g in groups} - {None}) for i in range(len(pairs))]
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
             rows: Sequence[RowCheck] = ()) -> None:
        """Read one file into ``table``; ``cast`` names text columns the insert casts (so a
        failed insert is explained by them too)."""
        nonlocal number
        number += 1
        failed = False
        try:
            names = _header(path, required)
            src = _source(path, names, typed or {}, timestamp_format)
            con.execute(insert.format(n=number, src=src))
        except PaymentFileError as exc:
            refused.append(str(exc))
            return
        except duckdb.Error:
            failed = True
        if failed or not post_check(table, stored):
            con.execute(f"DELETE FROM {table} WHERE file = ?", [number])
            con.execute("SET preserve_insertion_order=true")  # lines are counted in order
            try:
                # every column as text, in the same dialect as the typed read (a sniffer
                # could read a broken file another way); a file the CSV reader cannot
                # parse at all is refused at the line it names
                con.execute(f"""CREATE OR REPLACE TEMP TABLE explain AS SELECT *
                                FROM {_source(path, names, {}, None)}""")
            except duckdb.Error as exc:
                refused.append(str(_syntax_error(path.name, exc)))
            else:
                if not _guard(con, "explain", path.name, pairs, refused,
                              {**(typed or {}), **(cast or {})}, timestamp_format, rows):
                    refused.append(f"{path.name}: an amount cannot be read [invalid_amount]")
            finally:
                con.execute("SET preserve_insertion_order=false")

    phase("connect")
    for path in orders:
        take("orders", path, ORDER_COLUMNS, f"""INSERT INTO orders SELECT {{n}}, r.site,
            r.order_id, r.status = 'cancelled', r.status = 'confirmed',
            r.currency, CAST(r.created_at AS DATE),
            r.provider_reference,
            CASE WHEN r.status = 'cancelled' THEN 0 ELSE r."total:" END,
            {lag_case}, {_flag(_invalid('total', 'r."total:"'))}
            FROM (SELECT *, {_amount('total')} AS "total:" FROM {{src}} r) r""",
             [("total", "currency")], {"currency": "currency", "created_at": "TIMESTAMP"},
             [("expected", "currency")],
             # the date and time as written there (its offset not applied): its date is the
             # site's business day
             timestamp_format=None)
    # delivery evidence is read where it is used, in the verdict (one pass, no table of its
    # own); a file the CSV reader cannot parse is found then and refused
    phase("read_orders")
    delivered_from: dict[Path, str] = {}
    refused_deliveries_at = len(refused)
    for path in deliveries:
        try:
            delivered_from[path] = (
                f"SELECT site, order_id FROM {_source(path, _header(path, DELIVERY_COLUMNS))}"
                " WHERE status = 'delivered' AND TRY_CAST(quantity AS INTEGER) > 0")
        except PaymentFileError as exc:
            refused.append(str(exc))
    # the type and the zone as the reports spell them first (one comparison of the text),
    # the row reader's normalised spelling only for the others
    kinds = "CASE \"Type\" " + " ".join(f"WHEN '{k}' THEN '{v}'::kind" for k, v in
                                       ACQUIRER_TYPES.items()) \
        + " ELSE CASE lower(replace(\"Type\", ' ', '')) " + " ".join(
            f"WHEN '{k}' THEN '{v}'::kind" for k, v in ACQUIRER_KINDS.items()) \
        + " ELSE 'other'::kind END END"
    zone = "CASE \"TimeZone\" " + " ".join(
        f"WHEN '{name}' THEN INTERVAL '{minutes} minutes'" for name, minutes in _zones()) \
        + " ELSE CASE upper(trim(\"TimeZone\")) " + " ".join(
            f"WHEN '{name}' THEN INTERVAL '{minutes} minutes'" for name, minutes in _zones()) \
        + f" ELSE to_minutes({_offset_minutes('TimeZone')}) END END"
    card_files = []  # the acquirer's (their payouts are checked against their batches)
    amounts = ", ".join(f"{_amount(a)} AS \"{a}:\"" for a, _ in ACQ_AMOUNTS)
    checks = " OR ".join(_invalid(a, f'r."{a}:"') for a, _ in ACQ_AMOUNTS)
    # a row the row reader refuses whole: debit and credit both filled, no amount at all,
    # an exchange rate that is not a number
    acquirer_rows: list[RowCheck] = [
        ("Gross Debit (GC)", '"Gross Debit (GC)" IS NOT NULL AND "Gross Credit (GC)" IS NOT '
         "NULL", "debit_and_credit", "both Gross Debit and Gross Credit are filled"),
        ("Net Debit (NC)", '"Net Debit (NC)" IS NOT NULL AND "Net Credit (NC)" IS NOT NULL',
         "debit_and_credit", "both Net Debit and Net Credit are filled"),
        ("Gross Credit (GC)", " AND ".join(f'"{a}" IS NULL' for a, _ in ACQ_AMOUNTS[:4]),
         "amount_missing", "no gross or net amount"),
        ("Exchange Rate", '"Exchange Rate" IS NOT NULL AND TRY_CAST("Exchange Rate" AS DOUBLE)'
         " IS NULL", "amount_format", "{value!r} is not a number"),
    ]
    whole = " OR ".join(re.sub(r'"([^"]+)"', r'r."\1"', f"({bad})")
                        for _, bad, _, _ in acquirer_rows)
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
            coalesce(r."Commission (NC):", 0),
            coalesce(r."Net Credit (NC):", -r."Net Debit (NC):"),
            CAST(r."Creation Date" - r.zone AS DATE),
            r."Batch Number", {_flag('r.zone IS NULL OR ' + checks + ' OR ' + whole)}
            FROM (SELECT *, {kinds} AS kind, {zone} AS zone, {amounts}
                  FROM {{src}} r) r""",
             ACQ_AMOUNTS, {"Creation Date": "TIMESTAMP", "Gross Currency": "currency",
                           "Net Currency": "currency"},
             [("amount", "currency"), ("fee", "net_currency"), ("net", "net_currency")],
             rows=acquirer_rows)
    phase("read_card")
    # a wallet type is one of the reader's, in any case (as ``choice`` takes it)
    types = ", ".join(f"'{t}'" for t in WALLET_TYPES)
    wallet_rows: list[RowCheck] = [
        ("type", "type IS NULL", "required", "empty; a value is required"),
        ("type", f"type IS NOT NULL AND lower(trim(type)) NOT IN ({types})", "enum",
         "{value!r} is not one of " + ", ".join(WALLET_TYPES)),
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
            {_flag(f"r.t IS NULL OR r.t NOT IN ({types}) OR " + _invalid('amount'))}
            FROM (SELECT *, CASE WHEN type IN ({types}) THEN type
                                 ELSE lower(trim(type)) END AS t FROM {{src}} r) r""",
             [("amount", "currency")], {"created_at": "TIMESTAMPTZ", "currency": "currency"},
             [("amount", "currency")], rows=wallet_rows)

    phase("read_wallet")
    d = f"DATE '{day.isoformat()}'"
    window = (f"p.booking_date BETWEEN {{o}}.day - {rules.days_before} AND {{o}}.day + {{o}}.lag"
              " AND p.currency = {o}.currency")
    rules_known = []
    for rule in rules.references:
        key = {("provider_reference", "provider_reference"): ("pref", "pref"),
               ("merchant_reference", "order_id"): ("mref", "order_id")}.get(
                   (rule.trace, rule.order))
        if key is not None:  # references these files do not carry are skipped
            rules_known.append(key)
    # the first rule in one join; each later rule only for the payments still without order
    tcol, ocol = rules_known[0] if rules_known else ("pref", "pref")
    con.execute(f"""CREATE TABLE pm AS SELECT p.rowid AS tid, p.pref, p.amount,
        p.booking_date, o.rowid AS oid
        FROM traces p LEFT JOIN orders o ON o.{ocol} = p.{tcol} AND {window.format(o="o")}
        WHERE p.kind = 'payment' AND p.credit""")
    rows = con.execute("""SELECT (SELECT count(*) FROM pm), count(*) FROM traces
                          WHERE kind = 'payment' AND credit""").fetchone()
    if rows and rows[0] != rows[1]:
        # an order reference two orders share: the first site wins
        _first_order(con, "pm")
    for tcol, ocol in rules_known[1:]:
        con.execute(f"""CREATE OR REPLACE TABLE hit AS SELECT p.tid, o.rowid AS oid
            FROM (SELECT t.rowid AS tid, t.* FROM traces t
                  SEMI JOIN (SELECT tid FROM pm WHERE oid IS NULL) u ON u.tid = t.rowid) p
            JOIN orders o ON o.{ocol} = p.{tcol} AND {window.format(o="o")}""")
        _first_order(con, "hit")
        con.execute("UPDATE pm SET oid = hit.oid FROM hit WHERE pm.tid = hit.tid")
    phase("match_payments")
    tol = _abs_tol(rules) if not rules.tolerance_percent else (
        f"greatest({_abs_tol(rules)}, round(abs(expected) * {rules.tolerance_percent}"
        " / 100, 2))")
    verdict = f"""CREATE OR REPLACE TABLE verdict AS SELECT o.rowid AS oid, o.expected,
        o.cancelled, o.confirmed, coalesce(a.received, 0) AS received, coalesce(a.n, 0) AS counted,
        {{delivered}} AS delivered
        FROM orders o LEFT JOIN (SELECT oid, count(*) AS n, sum(amount) AS received FROM pm
                                 WHERE oid IS NOT NULL GROUP BY oid) a ON a.oid = o.rowid
        WHERE o.day = {d}"""
    # the payments summed per order in a table indexed by the order's row id (up to 4M
    # orders; the setting is for this grouping of every order only)
    con.execute("SET perfect_ht_threshold=22")
    while True:
        union = " UNION ALL ".join(delivered_from.values())
        try:
            con.execute(verdict.format(delivered=f"""EXISTS (SELECT 1 FROM ({union}) r
                WHERE r.site = o.site AND r.order_id = o.order_id)""" if union else "false"))
            break
        except duckdb.Error:
            unreadable = _unreadable(con, delivered_from)
            if not unreadable:
                raise
            refused[refused_deliveries_at:refused_deliveries_at] = unreadable
            refused_deliveries_at += len(unreadable)
    con.execute("RESET perfect_ht_threshold")
    phase("verdict_with_deliveries")
    # several payments for one order: which of them repeat a payment once the order was paid
    con.execute(f"""CREATE TABLE multi AS SELECT oid,
        sum(CASE WHEN dup THEN 0 ELSE amount END) AS received,
        sum(CASE WHEN dup THEN 0 ELSE 1 END) AS counted, sum(CASE WHEN dup THEN 1 ELSE 0 END)
        AS dups FROM (
          SELECT *, n_before > 0 AND abs(before - expected) <= tol
                 AND abs(amount - first_amount) <= tol AS dup FROM (
            SELECT m.oid, m.amount, v.expected, {tol} AS tol,
              coalesce(sum(m.amount) OVER w, 0) AS before, count(*) OVER w AS n_before,
              first_value(m.amount) OVER (PARTITION BY m.oid
                                          ORDER BY m.booking_date, m.pref) AS first_amount
            FROM pm m JOIN (SELECT oid, expected FROM verdict WHERE counted > 1) v
                USING (oid)
            WINDOW w AS (PARTITION BY m.oid ORDER BY m.booking_date, m.pref
                         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)))
        GROUP BY oid""")
    require = "true" if rules.require_delivery else "false"
    # the orders that may be reported: their money with the repeats taken out
    con.execute(f"""CREATE TABLE issues AS SELECT v.oid, v.expected, v.cancelled,
        v.confirmed, v.delivered,
        coalesce(mu.received, v.received) AS received,
        coalesce(mu.counted, v.counted) AS counted, coalesce(mu.dups, 0) AS dups
        FROM verdict v LEFT JOIN multi mu USING (oid)
        WHERE v.counted <> 1 OR NOT v.delivered OR abs(v.received - v.expected) > {tol}""")
    # an order's classes name it by its row id (its site and id are looked up for labels
    # only); the other entities by their own names
    con.execute(f"""CREATE TABLE found AS
        SELECT oid, NULL::VARCHAR AS entity, 'duplicate_payment' AS cls FROM issues
            WHERE dups > 0
        UNION ALL SELECT oid, NULL, CASE WHEN delivered AND {require}
                THEN 'delivered_not_paid' ELSE 'unpaid_order' END
            FROM issues WHERE counted = 0 AND NOT cancelled AND expected <> 0
        UNION ALL SELECT oid, NULL, 'amount_mismatch' FROM issues
            WHERE counted > 0 AND abs(received - expected) > {tol}
        UNION ALL SELECT oid, NULL, 'paid_not_delivered' FROM issues
            WHERE counted > 0 AND NOT delivered AND {require} AND confirmed
        UNION ALL SELECT NULL, pref, 'payment_without_order' FROM pm
            WHERE oid IS NULL AND booking_date = {d}""")
    phase("repeats_and_classes")
    # refunds and chargebacks: through the original payment's reference, else the merchant's
    # (the few refunds taken out first: the joins then hash them, not the payments)
    con.execute("""CREATE TABLE refunded AS SELECT kind, pref, oref, mref, booking_date
        FROM traces WHERE kind IN ('refund', 'chargeback')""")
    con.execute("""CREATE TABLE refunds AS SELECT r.kind, r.pref, r.booking_date,
        coalesce(pm.oid, om.rowid) AS oid
        FROM refunded r
        LEFT JOIN pm ON r.oref IS NOT NULL AND pm.pref = r.oref AND pm.oid IS NOT NULL
        LEFT JOIN orders om ON r.oref IS NULL AND om.order_id = r.mref""")
    con.execute(f"""INSERT INTO found SELECT NULL, pref, 'payment_without_order' FROM refunds
        WHERE oid IS NULL AND booking_date = {d}""")
    phase("refunds")
    # payouts against the transactions of their batch (N:1), the batches summed first
    ptol = _abs_tol(rules) if not rules.tolerance_percent else (
        f"greatest({_abs_tol(rules)}, round(p.amount * {rules.tolerance_percent} / 100, 2))")
    card = ", ".join(map(str, card_files)) or "NULL"
    con.execute(f"""CREATE TABLE payouts AS SELECT p.account || '-batch-' || p.batch
            AS payout_id, any_value(p.amount) AS amount, any_value({ptol}) AS tol,
        coalesce(sum(t.total), 0) AS total, coalesce(sum(t.members), 0) AS members
        FROM traces p LEFT JOIN (
            SELECT account, batch, count(*) AS members,
                sum(coalesce(net, CASE WHEN credit THEN amount ELSE -amount END)) AS total
            FROM traces WHERE kind <> 'payout' GROUP BY account, batch) t
            ON t.account = p.account AND t.batch = p.batch
        WHERE p.kind = 'payout' AND p.booking_date = {d} AND p.file IN ({card})
        GROUP BY p.account, p.batch""")
    con.execute("""INSERT INTO found SELECT NULL, payout_id, 'payout_mismatch' FROM payouts
        WHERE members = 0 OR abs(total - amount) > tol""")
    phase("payouts")
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
    for kind, n in con.execute(f"""SELECT r.kind, count(*) FROM refunds r
            JOIN orders o ON o.rowid = r.oid WHERE o.day = {d} GROUP BY ALL""").fetchall():
        counts[f"group:{kind}"] = int(n)
    row = con.execute("""SELECT count(*) FROM payouts WHERE members > 0
                         AND abs(total - amount) <= tol""").fetchone()
    counts["group:payout"] = int(row[0]) if row else 0
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
        collecting = gc.isenabled()
        gc.disable()
        try:
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
        finally:
            if collecting:
                gc.enable()
    phase("labels")
    con.close()
    phase("close")
    result.phases = phases
    return result


def _source(path: Path, names: Sequence[str], typed: dict[str, str] | None = None,
            timestamp_format: str | None = TIMESTAMP_FORMAT) -> str:
    """The file as a DuckDB ``read_csv`` of its own column names (text unless typed here);
    its TIMESTAMP columns in ``timestamp_format``, or as ISO 8601 when that is None (the time
    as written: an offset is not applied)."""
    fmt = f", timestampformat='{timestamp_format}'" if timestamp_format else ""
    return (f"read_csv({_q(path)}, header=true, auto_detect=false, "
            f"columns={_columns(names, typed or {})}{fmt})")


def _unreadable(con: Any, queries: dict[Path, str]) -> list[str]:
    """The files of ``queries`` the CSV reader cannot parse, taken out of it, each as its
    refusal (the reader's first line of error)."""
    import duckdb

    out = []
    for path, query in list(queries.items()):
        try:
            con.execute(f"SELECT count(*) FROM ({query})").fetchone()
        except duckdb.Error as exc:
            out.append(str(_syntax_error(path.name, exc)))
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
           refused: list[str], typed: dict[str, str] | None = None,
           timestamp_format: str | None = TIMESTAMP_FORMAT,
           rows: Sequence[RowCheck] = ()) -> bool:
    """True when the file was refused: its amounts, then its dates, times, time zones and
    the rules of ``rows``."""
    try:
        _check(con, table, file, pairs)
        _check_times(con, table, file, typed or {}, timestamp_format, rows)
    except PaymentFileError as exc:
        refused.append(str(exc))
        return True
    return False


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
        c = '"' + column.replace('"', '""') + '"'
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
        tests.append(("TimeZone", f'"TimeZone" IS NOT NULL AND upper(trim("TimeZone")) NOT IN '
                      f"({zones}) AND {_offset_minutes('TimeZone')} IS NULL",
                      "timezone_unknown", "{value!r} is not a time zone"))
    tests.extend(rows)
    first = None
    for column, bad, rule, message in tests:
        c = '"' + column.replace('"', '""') + '"'
        row = con.execute(f"""SELECT line, {c} FROM (SELECT row_number() OVER () + 1 AS line,
            * FROM {table}) WHERE {bad} ORDER BY line LIMIT 1""").fetchone()
        if row and (first is None or row[0] < first[0]):
            first = (row[0], column, row[1], rule, message)
    if first is not None:
        line, column, value, rule, message = first
        raise PaymentFileError(file, rule, message.format(value=value), line=line,
                               field=column)


def _offset_minutes(column: str) -> str:
    """SQL: a time zone written as an offset (``+08:00``, ``-0530``, ``GMT+8``, as
    ``parse_timezone`` takes it) in minutes east of UTC; NULL when it is not one."""
    c = f'trim("{column}")'
    # no braces: the expression goes into templates that are formatted
    pattern = "'^(?:UTC|GMT)?([+-])([0-9][0-9]?):?([0-9][0-9])?$'"
    hours = f"CAST(regexp_extract({c}, {pattern}, 2) AS INTEGER)"
    minutes = f"coalesce(TRY_CAST(regexp_extract({c}, {pattern}, 3) AS INTEGER), 0)"
    return (f"CASE WHEN regexp_full_match({c}, {pattern}) AND {hours} < 24 THEN"
            f" (CASE regexp_extract({c}, {pattern}, 1) WHEN '-' THEN -1 ELSE 1 END)"
            f" * ({hours} * 60 + {minutes}) END")


__all__ = ["ColumnarResult", "reconcile_columnar"]
