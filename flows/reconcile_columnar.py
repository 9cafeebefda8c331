"""The daily match on columns: the rules of ``mappings.reconcile`` carried out as DuckDB
queries over a day's files, for days with a million orders (the row-by-row path costs about
100 µs a card row in mapping alone).

Same inputs, same rules, same classes as ``mappings.reconcile.reconcile`` for what this path
reads: orders (CSV), delivery evidence (CSV), card acquirer settlement CSVs and wallet
balance CSVs, payments in the order's currency. Money is integer minor units (exact: every
amount is checked against its currency's minor unit before it is scaled, as the row readers
check it), never floats. A file that breaks a rule is refused with the file, line, field and
rule, as the row readers say it; the others are read.

It reads the files it is given and returns counts (and, when asked, each entity's classes);
it writes nothing: storing a day's result stays with ``flows.reconcile``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from iso4217 import Currency

from connectors.payments.acquirer import REQUIRED as ACQUIRER_REQUIRED
from connectors.payments.common import _ABBREVIATIONS, PaymentFileError
from connectors.payments.wallet_balance import REQUIRED as WALLET_REQUIRED
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


def _header(path: Path, required: Sequence[str]) -> None:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        first = fh.readline()
    header = {" ".join(h.split()).casefold() for h in next(csv.reader([first]))}
    missing = [c for c in required if " ".join(c.split()).casefold() not in header]
    if missing:
        raise PaymentFileError(path.name, "missing_column", "missing column"
                               + ("s " if len(missing) > 1 else " ")
                               + ", ".join(repr(m) for m in missing), line=1)


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


def _check(con: Any, table: str, file: str, pairs: Sequence[tuple[str, str]]) -> None:
    """Refuse the file if an amount is not a decimal, has more non-zero decimals than its
    currency allows, or its currency is unknown (the first offending row named). One scan for
    all the table's amount columns; the row's line is looked up only when one is bad."""
    conditions = []
    for amount, currency in pairs:
        a, c = f'"{amount}"', f'"{currency}"'
        conditions.append(
            f"({a} IS NOT NULL AND ({c} NOT IN (SELECT code FROM currencies)"
            f" OR TRY_CAST({a} AS DECIMAL(18,6)) IS NULL OR NOT regexp_full_match({a}, '[0-9.]+')"
            f" OR (TRY_CAST({a} AS DECIMAL(18,6)) * (SELECT CAST(pow(10, exp) AS BIGINT) FROM"
            f" currencies WHERE code = {c})) % 1 <> 0))")
    where = " OR ".join(conditions)
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
        if cur not in exps:
            raise PaymentFileError(file, "currency_unknown",
                                   f"{cur!r} is not an ISO 4217 currency", line=line,
                                   field=currency)
        text = str(value).strip()
        whole, _, frac = text.partition(".")
        if not (whole + frac).isdigit():
            raise PaymentFileError(file, "amount_format", f"{value!r} is not a decimal amount",
                                   line=line, field=amount)
        if len(frac.rstrip("0")) > exps[cur]:
            raise PaymentFileError(file, "amount_decimals", f"{text} has more decimals than "
                                   f"{cur} allows ({exps[cur]})", line=line, field=amount)
    raise PaymentFileError(file, "invalid_amount", "an amount cannot be read", line=line)


def _minor(column: str) -> str:
    """An exact decimal string as integer minor units of the row's currency."""
    return (f"CAST(CAST(\"{column}\" AS DECIMAL(18,6)) * CAST(pow(10, cur.exp) AS BIGINT) "
            "AS BIGINT)")


ACQUIRER_KINDS = {"settled": "payment", "settledbulk": "payment", "refunded": "refund",
                  "refundedbulk": "refund", "chargeback": "chargeback",
                  "secondchargeback": "chargeback", "merchantpayout": "payout"}


def reconcile_columnar(rules: Rules, day: date, *, orders: Sequence[Path],
                       deliveries: Sequence[Path], acquirer: Sequence[Path] = (),
                       wallet: Sequence[Path] = (), labels: bool = False,
                       threads: int | None = None) -> ColumnarResult:
    import duckdb

    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads={int(threads)}")
    con.execute("CREATE TABLE currencies (code VARCHAR, exp INTEGER)")
    con.executemany("INSERT INTO currencies VALUES (?, ?)", _currencies())
    con.execute("CREATE TABLE zones (name VARCHAR, minutes INTEGER)")
    con.executemany("INSERT INTO zones VALUES (?, ?)", _zones())
    refused: list[str] = []

    def load(name: str, path: Path, required: Sequence[str]) -> str | None:
        table = f"{name}_{len(loaded)}"
        try:
            _header(path, required)
            con.execute(f"""CREATE TABLE {table} AS SELECT *
                            FROM read_csv({_q(path)}, all_varchar=true, header=true)""")
            return table
        except PaymentFileError as exc:
            refused.append(str(exc))
        except duckdb.Error as exc:
            refused.append(f"{path.name}: {str(exc).splitlines()[0]} [csv_syntax]")
        return None

    loaded: list[str] = []
    for path in orders:
        t = load("ord", path, ORDER_COLUMNS)
        if t and not _guard(con, t, path.name, [("total", "currency")], refused):
            loaded.append(t)
    order_tables = list(loaded)
    for path in deliveries:
        t = load("dlv", path, DELIVERY_COLUMNS)
        if t:
            loaded.append(t)
    delivery_tables = [t for t in loaded if t.startswith("dlv")]
    acq_tables = []
    for path in acquirer:
        t = load("acq", path, ACQUIRER_REQUIRED)
        if t and not _guard(con, t, path.name, [
                ("Gross Credit (GC)", "Gross Currency"), ("Gross Debit (GC)", "Gross Currency"),
                ("Net Credit (NC)", "Net Currency"), ("Net Debit (NC)", "Net Currency"),
                ("Commission (NC)", "Net Currency")], refused):
            acq_tables.append(t)
            loaded.append(t)
    wal_tables = []
    for path in wallet:
        t = load("wal", path, WALLET_REQUIRED)
        if t and not _guard(con, t, path.name, [("amount", "currency")], refused):
            wal_tables.append(t)
            loaded.append(t)

    def union(tables: Sequence[str], select: str, empty: str) -> str:
        if not tables:
            return empty
        return " UNION ALL ".join(select.format(t=t) for t in tables)

    lags = {name: m.lag_days for name, m in rules.methods.items()}
    lag_case = "CASE " + " ".join(f"WHEN method = '{k}' THEN {v}" for k, v in lags.items()) \
        + f" ELSE {rules.default_lag_days} END"
    con.execute(f"""CREATE TABLE orders AS SELECT site, order_id, status, currency,
        CAST(substr(created_at, 1, 10) AS DATE) AS day, method, provider_reference,
        CASE WHEN status = 'cancelled' THEN 0 ELSE {_minor('total')} END AS expected,
        {lag_case} AS lag, site || ':' || order_id AS okey
        FROM ({union(order_tables, 'SELECT * FROM {t}', 'SELECT NULL')}) o
        JOIN currencies cur ON cur.code = o.currency""")
    con.execute(f"""CREATE TABLE delivered AS SELECT DISTINCT site || ':' || order_id AS okey
        FROM ({union(delivery_tables, 'SELECT * FROM {t}',
                      "SELECT '' site, '' order_id, '' status, '0' quantity WHERE false")})
        WHERE status = 'delivered' AND CAST(quantity AS INTEGER) > 0""")
    kinds = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in ACQUIRER_KINDS.items())
    acq_select = f"""SELECT 'card:' || "Merchant Account" || ':' || coalesce("Psp Reference", '')
            || ':' || "Type" || ':' || coalesce("Modification Reference", '') || ':'
            || coalesce("Batch Number", '') AS trace_id,
        CASE lower(replace("Type", ' ', '')) {kinds} ELSE 'other' END AS kind,
        "Merchant Account" AS account,
        CASE WHEN lower(replace("Type", ' ', '')) LIKE 'settled%' THEN "Psp Reference"
             ELSE coalesce("Modification Reference", "Psp Reference") END AS pref,
        "Merchant Reference" AS mref,
        CASE WHEN lower(replace("Type", ' ', '')) LIKE 'settled%' THEN NULL
             ELSE "Psp Reference" END AS oref,
        coalesce("Gross Currency", "Net Currency") AS currency,
        coalesce("Gross Credit (GC)", "Gross Debit (GC)", "Net Credit (NC)", "Net Debit (NC)")
            AS amount_text,
        "Gross Credit (GC)" IS NOT NULL OR ("Gross Debit (GC)" IS NULL
            AND "Net Credit (NC)" IS NOT NULL) AS credit,
        coalesce("Commission (NC)", '0') AS fee_text,
        CASE WHEN "Net Credit (NC)" IS NOT NULL THEN "Net Credit (NC)"
             ELSE '-' || "Net Debit (NC)" END AS net_text,
        CAST(CAST(strptime("Creation Date", '%Y-%m-%d %H:%M:%S') AS TIMESTAMP)
             - to_minutes((SELECT minutes FROM zones z WHERE z.name = upper("TimeZone")))
             AS DATE) AS booking_date,
        "Batch Number" AS batch
        FROM {{t}}"""
    wal_select = """SELECT 'wallet:' || site || ':' || transaction_id AS trace_id,
        CASE type WHEN 'payment' THEN 'payment' WHEN 'refund' THEN 'refund'
                  WHEN 'payout' THEN 'payout' ELSE 'other' END AS kind,
        'wallet:' || site AS account, transaction_id AS pref, order_id AS mref, NULL AS oref,
        currency, amount AS amount_text, type IN ('payment', 'adjustment_credit') AS credit,
        '0' AS fee_text, NULL AS net_text,
        CAST(CAST(created_at AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS DATE) AS booking_date,
        settlement_id AS batch FROM {t}"""
    empty = ("SELECT NULL trace_id, NULL kind, NULL account, NULL pref, NULL mref, NULL oref, "
             "NULL currency, NULL amount_text, NULL credit, NULL fee_text, NULL net_text, "
             "NULL booking_date, NULL batch WHERE false")
    con.execute("SET TimeZone='UTC'")
    con.execute(f"""CREATE TABLE traces AS SELECT t.*,
            CAST(CAST(amount_text AS DECIMAL(18,6)) * CAST(pow(10, cur.exp) AS BIGINT)
                 AS BIGINT) AS amount,
            CAST(CAST(fee_text AS DECIMAL(18,6)) * CAST(pow(10, cur.exp) AS BIGINT)
                 AS BIGINT) AS fee,
            CAST(CAST(net_text AS DECIMAL(18,6)) * CAST(pow(10, cur.exp) AS BIGINT)
                 AS BIGINT) AS net
        FROM ({union(acq_tables, acq_select, empty)} UNION ALL
              {union(wal_tables, wal_select, empty)}) t
        JOIN currencies cur ON cur.code = t.currency""")
    # match: the first reference rule with an order inside the date window wins
    rule_sql = {("provider_reference", "provider_reference"): "p.pref = o.provider_reference",
                ("merchant_reference", "order_id"): "p.mref = o.order_id"}
    con.execute("CREATE TABLE pay AS SELECT * FROM traces WHERE kind = 'payment' AND credit")
    con.execute("CREATE TABLE matched (trace_id VARCHAR, okey VARCHAR, amount BIGINT, "
                "fee BIGINT, booking_date DATE, rule INTEGER)")
    window = (f"p.booking_date BETWEEN o.day - {rules.days_before} AND o.day + o.lag "
              "AND p.currency = o.currency")
    for n, rule in enumerate(rules.references):
        cond = rule_sql.get((rule.trace, rule.order))
        if cond is None:
            continue  # references these files do not carry
        con.execute(f"""INSERT INTO matched SELECT p.trace_id, min(o.okey), any_value(p.amount),
            any_value(p.fee), any_value(p.booking_date), {n}
            FROM pay p JOIN orders o ON {cond} AND {window}
            ANTI JOIN matched mm ON mm.trace_id = p.trace_id
            GROUP BY p.trace_id""")
    tol = f"greatest({_abs_minor(rules)}, round(abs(o.expected) * {rules.tolerance_percent} / 100))"
    # duplicates: a payment that comes when the order is already paid and repeats an amount
    con.execute(f"""CREATE TABLE ranked AS SELECT m.*, o.expected, {tol} AS tol,
        coalesce(sum(m.amount) OVER (PARTITION BY m.okey ORDER BY m.booking_date, m.trace_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before,
        count(*) OVER (PARTITION BY m.okey ORDER BY m.booking_date, m.trace_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS n_before,
        first_value(m.amount) OVER (PARTITION BY m.okey ORDER BY m.booking_date, m.trace_id)
            AS first_amount
        FROM matched m JOIN orders o ON o.okey = m.okey""")
    con.execute("""CREATE TABLE paid AS SELECT okey,
        sum(CASE WHEN dup THEN 0 ELSE amount END) AS received,
        sum(CASE WHEN dup THEN 0 ELSE 1 END) AS counted,
        sum(CASE WHEN dup THEN 1 ELSE 0 END) AS dups,
        sum(CASE WHEN dup THEN 0 ELSE fee END) AS fee
        FROM (SELECT *, n_before > 0 AND abs(before - expected) <= tol
                  AND abs(amount - first_amount) <= tol AS dup FROM ranked)
        GROUP BY okey""")
    require = "true" if rules.require_delivery else "false"
    con.execute(f"""CREATE TABLE verdict AS SELECT o.okey, o.site, o.order_id, o.method,
        o.expected, coalesce(p.received, 0) AS received, coalesce(p.counted, 0) AS counted,
        coalesce(p.dups, 0) AS dups, d.okey IS NOT NULL AS delivered, o.status, {tol} AS tol
        FROM orders o LEFT JOIN paid p USING (okey) LEFT JOIN delivered d USING (okey)
        WHERE o.day = DATE '{day.isoformat()}'""")
    con.execute(f"""CREATE TABLE found AS
        SELECT okey AS entity, 'duplicate_payment' AS cls FROM verdict WHERE dups > 0
        UNION ALL SELECT okey, CASE WHEN delivered AND {require} THEN 'delivered_not_paid'
                                    ELSE 'unpaid_order' END
            FROM verdict WHERE counted = 0 AND status <> 'cancelled' AND expected <> 0
        UNION ALL SELECT okey, 'amount_mismatch' FROM verdict
            WHERE counted > 0 AND abs(received - expected) > tol
        UNION ALL SELECT okey, 'paid_not_delivered' FROM verdict
            WHERE counted > 0 AND NOT delivered AND {require} AND status = 'confirmed'
        UNION ALL SELECT p.pref, 'payment_without_order' FROM pay p
            ANTI JOIN matched m ON m.trace_id = p.trace_id
            WHERE p.booking_date = DATE '{day.isoformat()}'""")
    # refunds and chargebacks: through the original payment's reference, else the merchant's
    con.execute("""CREATE TABLE refunds AS SELECT r.trace_id, r.kind, r.pref, r.booking_date,
        coalesce(pm.okey, om.okey) AS okey
        FROM traces r
        LEFT JOIN (SELECT p.pref, m.okey FROM matched m JOIN pay p USING (trace_id)) pm
               ON pm.pref = r.oref
        LEFT JOIN orders om ON r.oref IS NULL AND om.order_id = r.mref
        WHERE r.kind IN ('refund', 'chargeback')""")
    con.execute(f"""INSERT INTO found SELECT pref, 'payment_without_order' FROM refunds
        WHERE okey IS NULL AND booking_date = DATE '{day.isoformat()}'""")
    # payouts against the transactions of their batch (N:1)
    con.execute(f"""CREATE TABLE payouts AS SELECT p.account || '-batch-' || p.batch AS payout_id,
        p.amount, coalesce(sum(coalesce(t.net, CASE WHEN t.credit THEN t.amount
                                                   ELSE -t.amount END)), 0) AS total,
        count(t.trace_id) AS members
        FROM traces p LEFT JOIN traces t ON t.account = p.account AND t.batch = p.batch
             AND t.kind <> 'payout'
        WHERE p.kind = 'payout' AND p.booking_date = DATE '{day.isoformat()}'
          AND p.trace_id LIKE 'card:%'
        GROUP BY ALL""")
    con.execute(f"""INSERT INTO found SELECT payout_id, 'payout_mismatch' FROM payouts
        WHERE members = 0 OR abs(total - amount) > greatest({_abs_minor(rules)},
              round(amount * {rules.tolerance_percent} / 100))""")
    counts: dict[str, int] = {}
    for cls, n in con.execute("SELECT cls, count(*) FROM found GROUP BY cls").fetchall():
        counts[f"discrepancy:{cls}"] = int(n)
    for kind, n in con.execute("""SELECT CASE WHEN counted = 1 THEN 'one_to_one'
            ELSE 'one_to_many' END, count(*) FROM verdict WHERE counted > 0
            GROUP BY ALL""").fetchall():
        counts[f"group:{kind}"] = int(n)
    for kind, n in con.execute("""SELECT r.kind, count(*) FROM refunds r
            JOIN orders o USING (okey) WHERE o.day = ? GROUP BY ALL""", [day]).fetchall():
        counts[f"group:{kind}"] = int(n)
    counts["group:payout"] = int(con.execute(
        f"""SELECT count(*) FROM payouts WHERE members > 0 AND abs(total - amount) <=
            greatest({_abs_minor(rules)}, round(amount * {rules.tolerance_percent} / 100))"""
    ).fetchone()[0])  # type: ignore[index]
    result = ColumnarResult(day=day, counts=counts, refused=refused)
    result.traces = int(con.execute("SELECT count(*) FROM traces").fetchone()[0])  # type: ignore[index]
    result.orders = int(con.execute("SELECT count(*) FROM verdict").fetchone()[0])  # type: ignore[index]
    if labels:
        for entity, classes in con.execute(
                "SELECT entity, list(cls ORDER BY cls) FROM found GROUP BY entity").fetchall():
            result.labels[entity] = list(classes)
    con.close()
    return result


def _abs_minor(rules: Rules) -> str:
    # the absolute tolerance in minor units of a 2-decimal currency (the columnar path reads
    # 2-decimal currencies; others are refused by the bench's generator, not silently scaled)
    return str(int(rules.tolerance_absolute * 100))


def _guard(con: Any, table: str, file: str, pairs: Sequence[tuple[str, str]],
           refused: list[str]) -> bool:
    """True when the file was refused."""
    try:
        _check(con, table, file, pairs)
    except PaymentFileError as exc:
        refused.append(str(exc))
        return True
    return False


__all__ = ["ColumnarResult", "reconcile_columnar"]
