"""reconcile-day: one business day's orders, delivery evidence and payment traces, matched and
classified, stored (replacing the day's earlier result), and shown to operators.

Sources of a day:

- payment files of every supported format (``flows.payments.read_payment_file``), each read
  on its own: a file that cannot be read (truncated camt, an external entity, a missing
  column, three decimals in EUR, an unknown currency...) is refused with its reason, kept as
  a dead letter, listed in the artifacts, and the other files of the day go on;
- orders as canonical ``Order`` JSON lines (an export of the sites' confirmed orders);
- delivery evidence as canonical ``Delivery`` JSON lines, plus the shipments the COD files
  prove.

Then ``mappings.reconcile.reconcile`` with the rules of ``config/reconcile.yaml`` (or
``VOUCHFLOW_RECONCILE_CONFIG``) and the day's corrections; the result replaces the day's
stored one and refreshes its open remittance batches, in one transaction. Artifacts: a table
of discrepancies by class, a markdown summary with totals per method and site, and a CSV
export of the discrepancies (written under ``$VOUCHFLOW_HOME/reconcile/``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import ValidationError
from sqlalchemy import Engine

from canonical import Delivery, Fee, Money, Order, PaymentTrace, Payout
from canonical._base import field_bound
from connectors.payments.common import (
    Origin,
    PaymentFileError,
    check_currency,
    csv_delimiter,
    file_label,
    optional,
    parse_amount,
    parse_datetime,
    read_csv_rows,
)
from connectors.payments.detect import detect_format
from connectors.wallet.config import load_sites
from flows.payments import read_payment_file
from flows.runtime import markdown_artifact, run_key, run_logger, state_engine, table_artifact
from mappings.errors import MappingError
from mappings.reconcile import (
    DELIVERY_EXPORT_COLUMNS,
    DELIVERY_EXPORT_OPTIONAL,
    ORDER_EXPORT_COLUMNS,
    Correction,
    CorrectionKind,
    DayInput,
    DayResult,
    Discrepancy,
    DiscrepancyClass,
    Rules,
    Totals,
    delivery_from_export,
    order_day,
    order_from_export,
    reconcile,
    rules_from_mapping,
)
from state import remittance as remit
from state.db import session_scope
from state.settings import StateSettings
from state.store import DeadLetterItem, record_dead_letters, resolve_dead_letters

FLOW = "reconcile_day"
DEFAULT_RULES = Path(__file__).resolve().parents[1] / "config" / "reconcile.yaml"


def rules_path() -> Path:
    return Path(os.environ.get("VOUCHFLOW_RECONCILE_CONFIG") or DEFAULT_RULES)


def load_rules(path: str | Path | None = None) -> Rules:
    """The operator's rule file, parsed with a safe loader; its digest is recorded with each
    day's result."""
    source = Path(path) if path else rules_path()
    raw = source.read_bytes()
    return rules_from_mapping(yaml.safe_load(raw) or {},
                              digest=hashlib.sha256(raw).hexdigest()[:16])


@dataclass
class SourceOutcome:
    file: str
    kind: str
    path: str = ""
    status: str = "read"
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "kind": self.kind, "status": self.status,
                               "path": self.path}
        if self.error:
            out["error"] = self.error
        out.update(self.counts)
        return out


@dataclass
class DaySources:
    orders: list[Order] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    traces: list[PaymentTrace] = field(default_factory=list)
    payouts: list[Payout] = field(default_factory=list)
    fees: list[Fee] = field(default_factory=list)
    outcomes: list[SourceOutcome] = field(default_factory=list)

    @property
    def rejected(self) -> list[SourceOutcome]:
        return [o for o in self.outcomes if o.status == "rejected"]


EXPORT_FIELDS = {"lines": "total", "payment.amount": "total", "payment.method": "method",
                 "payment.provider_reference": "provider_reference",
                 "payment.provider": "method", "updated_at": "created_at"}
"""A canonical field -> the export column it comes from (an error names the column)."""


def _export_field(loc: Sequence[Any]) -> str:
    path = ".".join(str(p) for p in loc)
    for prefix, column in EXPORT_FIELDS.items():
        if path == prefix or path.startswith(prefix + "."):
            return column
    return path


def read_export(path: Path, kind: str, file: str, *, day: date, keep: bool = True
                ) -> list[Any]:
    """The records of a CSV export of ``orders`` or ``deliveries`` (read as the payment
    readers read CSV: header, field count and syntax checked by ``read_csv_rows``), or a
    PaymentFileError naming the first bad line, its column and the rule. An order's
    currency, total and time are held to the payment readers' rules first (an ISO 4217 code;
    a plain magnitude exact to the currency, so not ``1E2``, ``1_0.00`` or ``-5.00``, which
    the canonical model alone would take; an instant with its offset), then the canonical
    model judges the rest. A delivery without ``delivered_at`` is delivered at the start of
    ``day`` (UTC). Both engines refuse a file with these words (the columnar one has this
    reader explain the files it flags); ``keep=False`` keeps no records. A delivery's
    ``source`` is ``export:{file}``; a name too long for the canonical delivery's source is
    cut and ends with a digest of the whole name (the same on every read, apart from another
    file of the same beginning): a file's name does not make its rows invalid."""
    if kind == "orders":
        columns, optional_columns = ORDER_EXPORT_COLUMNS, ()
        build: Any = order_from_export
        check: Any = _check_order_cells
    else:
        columns, optional_columns = DELIVERY_EXPORT_COLUMNS, DELIVERY_EXPORT_OPTIONAL
        check = None
        source = f"export:{file}"
        most = field_bound(Delivery, "source", "max_length")
        if len(source) > most:
            digest = hashlib.sha256(file.encode("utf-8", "surrogatepass")).hexdigest()[:16]
            source = f"{source[:most - len(digest) - 1]}~{digest}"

        def build(row: Any) -> Delivery:
            return delivery_from_export(row, day=day, source=source)
    items = []
    for origin, row in read_csv_rows(path, required=columns,
                                      optional_columns=optional_columns):
        try:
            if check is not None:
                check(row, origin)
            item = build(row)
        except ValidationError as exc:
            first = exc.errors()[0]
            message = first["msg"].removeprefix("Value error, ")
            # a price's currency is the export's currency column
            where = "currency" if "ISO 4217" in message else _export_field(first["loc"])
            raise PaymentFileError(file, "invalid_record", message, line=origin.line,
                                   field=where) from None
        if keep:
            items.append(item)
    return items


def _check_order_cells(row: Any, origin: Origin) -> None:
    """An order row's currency, total and created_at by the payment readers' rules (an empty
    one is left to the model, which says it is required)."""
    currency = optional(row.get("currency"))
    code = check_currency(currency, origin, "currency") if currency else None
    total = optional(row.get("total"))
    if total and code is not None:
        parse_amount(total, code, origin, "total")
    created = optional(row.get("created_at"))
    if created:
        parse_datetime(created, origin, "created_at")


def _read_records(path: Path, model: type[Any], kind: str, day: date | None = None
                  ) -> tuple[list[Any], SourceOutcome]:
    """A file of orders or deliveries: canonical JSON lines, or the CSV export (``.csv``).
    A bad line refuses the file (with its line, field and rule); the day's other files go
    on."""
    outcome = SourceOutcome(file=file_label(path), kind=kind, path=str(path.resolve()))
    items: list[Any] = []
    try:
        if path.suffix.lower() == ".csv":
            items = read_export(path, "orders" if model is Order else "deliveries",
                                outcome.file, day=day or date.today())
        else:
            with path.open(encoding="utf-8") as fh:
                for number, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        items.append(model.model_validate_json(line))
                    except ValidationError as exc:
                        first = exc.errors()[0]
                        where = ".".join(str(p) for p in first["loc"])
                        raise PaymentFileError(outcome.file, "invalid_record",
                                               f"{where}: {first['msg']}",
                                               line=number) from None
    except OSError as exc:
        outcome.status, outcome.error = "rejected", \
            f"{outcome.file}: cannot read the file ({exc.strerror}) [unreadable]"
        return [], outcome
    except (PaymentFileError, UnicodeDecodeError) as exc:
        outcome.status, outcome.error = "rejected", str(exc)
        return [], outcome
    outcome.counts = {kind: len(items)}
    return items, outcome


_RECORD_LISTS = {PaymentTrace: "traces", Payout: "payouts", Fee: "fees",
                 Delivery: "deliveries"}
"""Each canonical payment record type -> the ``DaySources`` list (and count) it goes to."""


def read_sources(payment_files: Iterable[str | Path], order_files: Iterable[str | Path] = (),
                 delivery_files: Iterable[str | Path] = (), *, day: date | None = None
                 ) -> DaySources:
    """Every source of the day, each on its own: one that cannot be read is refused whole
    (with its reason) and the others are read."""
    out = DaySources()
    for raw in order_files:
        items, outcome = _read_records(Path(raw), Order, "orders", day)
        out.orders.extend(items)
        out.outcomes.append(outcome)
    for raw in delivery_files:
        items, outcome = _read_records(Path(raw), Delivery, "deliveries", day)
        out.deliveries.extend(items)
        out.outcomes.append(outcome)
    for raw in payment_files:
        path = Path(raw)
        outcome = SourceOutcome(file=file_label(path), kind="payments",
                                path=str(path.resolve()))
        try:
            records = list(read_payment_file(path))
        except (PaymentFileError, MappingError, ValueError, OSError) as exc:
            outcome.status, outcome.error = "rejected", str(exc).splitlines()[0]
            out.outcomes.append(outcome)
            continue
        counts: dict[str, int] = defaultdict(int)
        for record in records:
            name = _RECORD_LISTS[type(record)]
            getattr(out, name).append(record)
            counts[name] += 1
        outcome.counts = dict(counts)
        out.outcomes.append(outcome)
    return out


def site_zones() -> dict[str, str]:
    try:
        return {code: site.timezone for code, site in load_sites().items()}
    except Exception:  # no site file: every day is a UTC day
        return {}


def _corrections(rows: Sequence[remit.ReconCorrection]) -> list[Correction]:
    out = []
    for row in rows:
        amount = None
        if row.amount is not None and row.currency:
            amount = Money(amount=row.amount, currency=row.currency)
        out.append(Correction(kind=CorrectionKind(row.kind), target=row.target, amount=amount,
                              assign_to=row.assign_to, correction_id=row.id or 0))
    return out


def match_day(engine: Engine, day: date, sources: DaySources, rules: Rules, *,
              key: str, zones: dict[str, str] | None = None) -> DayResult:
    """Match, classify, and replace the day's stored result (and refresh its open batches)
    in one transaction: the row-by-row engine (``mappings.reconcile``)."""
    zones = site_zones() if zones is None else zones
    earliest = day - timedelta(days=rules.max_lag())
    orders = [o for o in sources.orders if earliest <= order_day(o, zones) <= day]
    result = reconcile(rules, DayInput(
        day=day, orders=orders, traces=sources.traces, deliveries=sources.deliveries,
        payouts=sources.payouts, corrections=day_corrections(engine, day), site_zones=zones))
    with session_scope(engine, immediate=True) as session:
        remit.store_day_result(session, result, run_key=key,
                               sources=[o.as_dict() for o in sources.outcomes])
        _settle_sources(session, day, sources.outcomes)
    return result


def day_corrections(engine: Engine, day: date) -> list[Correction]:
    with session_scope(engine) as session:
        return _corrections(remit.corrections(session, day))


def _settle_sources(session: Any, day: date, outcomes: Sequence[SourceOutcome]) -> None:
    """With the day's new result: its open batches refreshed, each refused file kept as a
    dead letter, and the dead letters of files read cleanly this time resolved."""
    remit.refresh_batches(session, day)
    rejected = [o for o in outcomes if o.status == "rejected"]
    record_dead_letters(session, [DeadLetterItem(
        flow=FLOW, source="payments", entity_type=f"{o.kind}_file",
        entity_key=o.file[:255], reason=o.error or "", payload={"day": day.isoformat()})
        for o in rejected])
    for kind in ("payments", "orders", "deliveries"):
        resolve_dead_letters(session, FLOW, "payments", f"{kind}_file",
                             [o.file for o in outcomes if o.kind == kind and o.status == "read"])


# the columnar engine, for large days ----------------------------------------------------------
COLUMNAR_FORMATS = {"acquirer", "wallet"}
"""The payment formats the columnar engine reads (``flows.reconcile_columnar``)."""
ENGINES = ("auto", "rows", "columns")


def columnar_min_orders() -> int:
    """From how many orders a day goes to the columnar engine when it can (``auto``)."""
    return int(os.environ.get("VOUCHFLOW_RECONCILE_COLUMNAR_MIN_ORDERS", "200000"))


@dataclass
class EnginePlan:
    engine: str
    """``rows`` or ``columns``."""
    reason: str
    payments: dict[str, list[Path]] = field(default_factory=dict)
    """For ``columns``: the payment files by format (``acquirer``, ``wallet``)."""
    refused: list[SourceOutcome] = field(default_factory=list)
    """For ``columns``: payment files whose format cannot even be told (refused as the row
    path refuses them)."""


def _data_lines(path: Path) -> int:
    """The lines of a file after its header (a newline count, no parsing)."""
    count = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            count += chunk.count(b"\n")
    return max(count - 1, 0)


def _not_comma(path: str | Path) -> EnginePlan | None:
    """The row engine's plan for a CSV file delimited by something else than ``,`` (which
    the row readers take and the columnar engine does not)."""
    try:
        delimiter = csv_delimiter(path)
    except (OSError, UnicodeDecodeError):
        return None  # the engine that reads it says what is wrong
    if delimiter == ",":
        return None
    return EnginePlan("rows", f"{file_label(path)} is delimited by {delimiter!r}, which only "
                      "the row engine reads")


def plan_engine(choice: str, payment_files: Sequence[str | Path],
                order_files: Sequence[str | Path], delivery_files: Sequence[str | Path]
                ) -> EnginePlan:
    """Which engine matches the day. ``rows`` always can; ``columns`` reads orders and
    deliveries as CSV exports and the acquirer and wallet formats, and with ``auto`` takes
    days of at least ``columnar_min_orders()`` orders (the row engine costs about 100 µs a
    trace; the columnar one about 1.5 µs)."""
    if choice not in ENGINES:
        raise ValueError(f"engine {choice!r}: one of {', '.join(ENGINES)}")
    if choice == "rows":
        return EnginePlan("rows", "asked for")
    for raw in [*order_files, *delivery_files]:
        if Path(raw).suffix.lower() != ".csv":
            return EnginePlan("rows", f"{file_label(raw)} is not a CSV export")
        if (unread := _not_comma(raw)) is not None:
            return unread
    plan = EnginePlan("columns", "asked for" if choice == "columns" else "")
    for raw in payment_files:
        path = Path(raw)
        try:
            fmt = detect_format(path)
        except PaymentFileError as exc:
            plan.refused.append(SourceOutcome(file=file_label(path), kind="payments",
                                              path=str(path.resolve()), status="rejected",
                                              error=str(exc)))
            continue
        if fmt not in COLUMNAR_FORMATS:
            return EnginePlan("rows", f"{file_label(path)} is {fmt}, which only the row "
                              "engine reads")
        if (unread := _not_comma(path)) is not None:
            return unread
        plan.payments.setdefault(fmt, []).append(path)
    if choice == "auto":
        try:
            orders = sum(_data_lines(Path(p)) for p in order_files)
        except OSError:
            return EnginePlan("rows", "an order file cannot be read")
        threshold = columnar_min_orders()
        if orders < threshold:
            return EnginePlan("rows", f"{orders} order(s), under {threshold}")
        plan.reason = f"{orders} order(s), at least {threshold}"
    return plan


def match_day_columnar(engine: Engine, day: date, plan: EnginePlan, rules: Rules, *,
                       order_files: Sequence[str | Path], delivery_files: Sequence[str | Path],
                       key: str, zones: dict[str, str] | None = None) -> DayView | str:
    """Match the day with the columnar engine and replace its stored result, streaming the
    groups and outcomes into the state database in chunks. When the day needs what only the
    row engine does (an operator's correction it does not carry out), nothing is stored and
    the reason is returned."""
    from flows.reconcile_columnar import ColumnarUnsupported, reconcile_columnar

    try:
        result = reconcile_columnar(
            rules, day, orders=[Path(p) for p in order_files],
            deliveries=[Path(p) for p in delivery_files],
            acquirer=plan.payments.get("acquirer", []), wallet=plan.payments.get("wallet", []),
            corrections=day_corrections(engine, day), keep=True,
            site_zones=site_zones() if zones is None else zones,
            earliest=day - timedelta(days=rules.max_lag()))
    except ColumnarUnsupported as exc:
        return str(exc)
    try:
        outcomes = list(plan.refused)
        for kind, paths in (("orders", order_files), ("deliveries", delivery_files),
                            ("payments", [p for ps in plan.payments.values() for p in ps])):
            for raw in paths:
                name = file_label(raw)
                error = next((r for r in result.refused if r.startswith(name + ":")), None)
                outcomes.append(SourceOutcome(file=name, kind=kind,
                                              path=str(Path(raw).resolve()),
                                              status="rejected" if error else "read",
                                              error=error))
        found = tuple(result.discrepancies())
        counts = result.full_counts()
        with session_scope(engine, immediate=True) as session:
            remit.store_day_rows(session, day=day, rules_digest=rules.digest, counts=counts,
                                 found=found, groups=result.group_rows(),
                                 outcomes=result.outcome_rows(), run_key=key,
                                 sources=[o.as_dict() for o in outcomes])
            _settle_sources(session, day, outcomes)
        return DayView(day=day, rules_digest=rules.digest, discrepancies=found,
                       counts=counts, totals=result.totals(), orders=result.orders,
                       groups=sum(v for k, v in counts.items() if k.startswith("group:")),
                       superseded=0, engine="columns", outcomes=outcomes)
    finally:
        result.close()


@dataclass(frozen=True)
class DayView:
    """What operators are shown of a day's result, from either engine."""

    day: date
    rules_digest: str
    discrepancies: tuple[Discrepancy, ...]
    counts: dict[str, int]
    totals: Totals
    orders: int
    groups: int
    superseded: int
    engine: str
    outcomes: list[SourceOutcome] = field(default_factory=list)
    """The day's sources as read (or refused)."""

    @classmethod
    def of(cls, result: DayResult, sources: DaySources) -> DayView:
        return cls(day=result.day, rules_digest=result.rules_digest,
                   discrepancies=result.discrepancies, counts=result.counts(),
                   totals=result.totals(),
                   orders=len(result.outcomes), groups=len(result.groups),
                   superseded=result.superseded, engine="rows", outcomes=sources.outcomes)

    @property
    def rejected(self) -> list[SourceOutcome]:
        return [o for o in self.outcomes if o.status == "rejected"]

    def by_class(self) -> dict[DiscrepancyClass, list[Discrepancy]]:
        out: dict[DiscrepancyClass, list[Discrepancy]] = {c: [] for c in DiscrepancyClass}
        for d in self.discrepancies:
            out[d.cls].append(d)
        return out


# what operators see ---------------------------------------------------------------------------
CSV_COLUMNS = ("class", "status", "site", "method", "order_id", "payout_id", "currency",
               "expected", "actual", "difference", "traces", "detail")


def discrepancy_rows(result: DayView) -> list[dict[str, str]]:
    rows = []
    for d in result.discrepancies:
        money = d.difference or d.expected or d.actual
        rows.append({
            "class": d.cls.value, "status": d.status, "site": d.site or "",
            "method": d.method or "", "order_id": d.order_id or "",
            "payout_id": d.payout_id or "", "currency": money.currency if money else "",
            "expected": str(d.expected.amount) if d.expected else "",
            "actual": str(d.actual.amount) if d.actual else "",
            "difference": str(d.difference.amount) if d.difference else "",
            "traces": " ".join(d.trace_ids), "detail": d.detail})
    return rows


def discrepancies_csv(result: DayView) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(discrepancy_rows(result))
    return buffer.getvalue()


def class_table(result: DayView) -> list[dict[str, Any]]:
    out = []
    for cls, items in result.by_class().items():
        by_currency: dict[str, Decimal] = defaultdict(Decimal)
        for d in items:
            if d.difference is not None:
                by_currency[d.difference.currency] += d.difference.amount
        out.append({"class": cls.value, "open": sum(1 for d in items if d.status == "open"),
                    "accepted": sum(1 for d in items if d.status != "open"),
                    "difference": ", ".join(f"{v} {k}" for k, v in sorted(by_currency.items()))
                    or "-"})
    return out


def summary_markdown(result: DayView, csv_path: Path | None) -> str:
    lines = [f"# Reconciliation {result.day.isoformat()}", "",
             f"rules `{result.rules_digest}`, {result.orders} order(s), "
             f"{result.groups} match group(s), {len(result.discrepancies)} "
             f"discrepancy(ies), {result.superseded} provisional trace(s) superseded "
             f"({result.engine} engine)", "",
             "| method | site | currency | orders | matched | expected | received | fees |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for (method, site, currency), (n, expected, received, fee, matched) in sorted(
            result.totals.items()):
        lines.append(f"| {method} | {site} | {currency} | {n} | {matched} | {expected} | "
                     f"{received} | {fee} |")
    lines += ["", "| discrepancy class | open | accepted | difference |", "|---|---:|---:|---|"]
    for row in class_table(result):
        lines.append(f"| {row['class']} | {row['open']} | {row['accepted']} | "
                     f"{row['difference']} |")
    rejected = result.rejected
    if rejected:
        lines += ["", "## Refused sources", ""]
        lines += [f"- `{o.file}`: {o.error}" for o in rejected]
    if csv_path is not None:
        lines += ["", f"CSV export: `{csv_path}`"]
    return "\n".join(lines) + "\n"


def export_csv(result: DayView, directory: Path | None = None) -> Path:
    folder = directory or StateSettings().resolved_home() / "reconcile"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"discrepancies-{result.day.isoformat()}.csv"
    path.write_text(discrepancies_csv(result), encoding="utf-8")
    return path


async def publish(result: DayView) -> Path:
    path = export_csv(result)
    stamp = result.day.strftime("%Y%m%d")
    await table_artifact(f"reconcile-{stamp}-classes", class_table(result),
                         f"Discrepancies of {result.day} by class")
    rows = discrepancy_rows(result)
    await table_artifact(f"reconcile-{stamp}-discrepancies", rows[:500],
                         f"Discrepancies of {result.day} (first 500 of {len(rows)})")
    await markdown_artifact(f"reconcile-{stamp}-summary",
                            summary_markdown(result, path),
                            f"Reconciliation of {result.day}: totals per method and site")
    csv_text = discrepancies_csv(result)
    clipped = "\n".join(csv_text.splitlines()[:200])
    await markdown_artifact(f"reconcile-{stamp}-csv",
                            f"```csv\n{clipped}\n```\n\nfull file: `{path}`\n",
                            f"Discrepancies of {result.day} as CSV")
    return path


def result_summary(result: DayView, csv_path: Path | None, reason: str = "") -> dict[str, Any]:
    counts = {k: v for k, v in result.counts.items() if v}
    return {"day": result.day.isoformat(), "orders": result.orders,
            "groups": result.groups, "discrepancies": len(result.discrepancies),
            "by_class": {c.value: len(v) for c, v in result.by_class().items() if v},
            "counts": counts, "sources": [o.as_dict() for o in result.outcomes],
            "rejected": len(result.rejected), "csv": str(csv_path) if csv_path else None,
            "engine": result.engine, "engine_reason": reason}


@task(name="read-day-sources", cache_policy=NO_CACHE)
def read_sources_task(payment_files: list[str], order_files: list[str],
                      delivery_files: list[str], day: date) -> DaySources:
    return read_sources(payment_files, order_files, delivery_files, day=day)


@task(name="match-day", cache_policy=NO_CACHE)
def match_task(engine: Engine, day: date, sources: DaySources, rules: Rules, key: str
               ) -> DayView:
    return DayView.of(match_day(engine, day, sources, rules, key=key), sources)


@task(name="match-day-columnar", cache_policy=NO_CACHE)
def match_columnar_task(engine: Engine, day: date, plan: EnginePlan, rules: Rules,
                        order_files: list[str], delivery_files: list[str], key: str
                        ) -> DayView | str:
    return match_day_columnar(engine, day, plan, rules, order_files=order_files,
                              delivery_files=delivery_files, key=key)


@flow(name="reconcile-day", log_prints=False)
async def reconcile_day(day: date, payment_files: list[str], order_files: list[str] | None = None,
                        delivery_files: list[str] | None = None,
                        rules_file: str | None = None, engine: str = "auto") -> dict[str, Any]:
    """Match one business day; re-running it replaces its result. ``engine``: ``rows`` (the
    row-by-row engine, every source format), ``columns`` (DuckDB over CSV exports, acquirer
    and wallet files) or ``auto`` (columns for a large day it can read, else rows)."""
    from prefect.utilities.annotations import quote

    logger = run_logger()
    state = state_engine()
    rules = load_rules(rules_file)
    payments, orders, deliveries = (list(payment_files), list(order_files or []),
                                    list(delivery_files or []))
    plan = plan_engine(engine, payments, orders, deliveries)
    view: DayView | str | None = None
    if plan.engine == "columns":
        view = match_columnar_task(state, day, quote(plan), rules, orders, deliveries,
                                   run_key())
        if isinstance(view, str):
            plan = EnginePlan("rows", view)
    if not isinstance(view, DayView):
        if engine == "columns":
            logger.warning("the columnar engine cannot match %s: %s; the row engine does",
                           day, plan.reason)
        sources = read_sources_task(payments, orders, deliveries, day)
        view = match_task(state, day, quote(sources), rules, run_key())
    path = await publish(view)
    summary = result_summary(view, path, plan.reason)
    for o in view.rejected:
        logger.warning("refused %s: %s", o.file, o.error)
    logger.info("reconcile-day %s (%s engine: %s): %s", day, view.engine, plan.reason,
                summary["by_class"])
    return summary


def dump(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, default=str)


__all__ = ["DiscrepancyClass", "load_rules", "match_day", "read_sources", "reconcile_day"]
