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
from connectors.payments.common import PaymentFileError, file_label
from connectors.wallet.config import load_sites
from flows.payments import read_payment_file
from flows.runtime import markdown_artifact, run_key, run_logger, state_engine, table_artifact
from mappings.errors import MappingError
from mappings.reconcile import (
    Correction,
    CorrectionKind,
    DayInput,
    DayResult,
    DiscrepancyClass,
    Rules,
    order_day,
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


def _jsonl(path: Path, model: type[Any], kind: str) -> tuple[list[Any], SourceOutcome]:
    outcome = SourceOutcome(file=file_label(path), kind=kind, path=str(path.resolve()))
    items: list[Any] = []
    try:
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
                                           f"{where}: {first['msg']}", line=number) from None
    except OSError as exc:
        outcome.status, outcome.error = "rejected", \
            f"{outcome.file}: cannot read the file ({exc.strerror}) [unreadable]"
        return [], outcome
    except PaymentFileError as exc:
        outcome.status, outcome.error = "rejected", str(exc)
        return [], outcome
    outcome.counts = {kind: len(items)}
    return items, outcome


_RECORD_LISTS = {PaymentTrace: "traces", Payout: "payouts", Fee: "fees",
                 Delivery: "deliveries"}
"""Each canonical payment record type -> the ``DaySources`` list (and count) it goes to."""


def read_sources(payment_files: Iterable[str | Path], order_files: Iterable[str | Path] = (),
                 delivery_files: Iterable[str | Path] = ()) -> DaySources:
    """Every source of the day, each on its own: one that cannot be read is refused whole
    (with its reason) and the others are read."""
    out = DaySources()
    for raw in order_files:
        items, outcome = _jsonl(Path(raw), Order, "orders")
        out.orders.extend(items)
        out.outcomes.append(outcome)
    for raw in delivery_files:
        items, outcome = _jsonl(Path(raw), Delivery, "deliveries")
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
    in one transaction."""
    zones = site_zones() if zones is None else zones
    with session_scope(engine) as session:
        corrections = _corrections(remit.corrections(session, day))
    earliest = day - timedelta(days=rules.max_lag())
    orders = [o for o in sources.orders if earliest <= order_day(o, zones) <= day]
    result = reconcile(rules, DayInput(
        day=day, orders=orders, traces=sources.traces, deliveries=sources.deliveries,
        payouts=sources.payouts, corrections=corrections, site_zones=zones))
    with session_scope(engine, immediate=True) as session:
        remit.store_day_result(session, result, run_key=key,
                               sources=[o.as_dict() for o in sources.outcomes])
        remit.refresh_batches(session, day)
        rejected = [o for o in sources.outcomes if o.status == "rejected"]
        record_dead_letters(session, [DeadLetterItem(
            flow=FLOW, source="payments", entity_type=f"{o.kind}_file",
            entity_key=o.file[:255], reason=o.error or "", payload={"day": day.isoformat()})
            for o in rejected])
        for kind in ("payments", "orders", "deliveries"):
            resolve_dead_letters(session, FLOW, "payments", f"{kind}_file",
                                 [o.file for o in sources.outcomes
                                  if o.kind == kind and o.status == "read"])
    return result


# what operators see ---------------------------------------------------------------------------
CSV_COLUMNS = ("class", "status", "site", "method", "order_id", "payout_id", "currency",
               "expected", "actual", "difference", "traces", "detail")


def discrepancy_rows(result: DayResult) -> list[dict[str, str]]:
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


def discrepancies_csv(result: DayResult) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(discrepancy_rows(result))
    return buffer.getvalue()


def class_table(result: DayResult) -> list[dict[str, Any]]:
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


def summary_markdown(result: DayResult, sources: DaySources, csv_path: Path | None) -> str:
    totals: dict[tuple[str, str, str], list[Decimal]] = defaultdict(
        lambda: [Decimal(0), Decimal(0), Decimal(0), Decimal(0), Decimal(0)])
    for o in result.outcomes:
        row = totals[(o.method, o.site, o.currency)]
        row[0] += 1
        row[1] += o.expected
        row[2] += o.received
        row[3] += o.fee
        row[4] += 1 if o.matched else 0
    lines = [f"# Reconciliation {result.day.isoformat()}", "",
             f"rules `{result.rules_digest}`, {len(result.outcomes)} order(s), "
             f"{len(result.groups)} match group(s), {len(result.discrepancies)} "
             f"discrepancy(ies), {result.superseded} provisional trace(s) superseded", "",
             "| method | site | currency | orders | matched | expected | received | fees |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for (method, site, currency), (n, expected, received, fee, matched) in sorted(
            totals.items()):
        lines.append(f"| {method} | {site} | {currency} | {n} | {matched} | {expected} | "
                     f"{received} | {fee} |")
    lines += ["", "| discrepancy class | open | accepted | difference |", "|---|---:|---:|---|"]
    for row in class_table(result):
        lines.append(f"| {row['class']} | {row['open']} | {row['accepted']} | "
                     f"{row['difference']} |")
    rejected = sources.rejected
    if rejected:
        lines += ["", "## Refused sources", ""]
        lines += [f"- `{o.file}`: {o.error}" for o in rejected]
    if csv_path is not None:
        lines += ["", f"CSV export: `{csv_path}`"]
    return "\n".join(lines) + "\n"


def export_csv(result: DayResult, directory: Path | None = None) -> Path:
    folder = directory or StateSettings().resolved_home() / "reconcile"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"discrepancies-{result.day.isoformat()}.csv"
    path.write_text(discrepancies_csv(result), encoding="utf-8")
    return path


async def publish(result: DayResult, sources: DaySources) -> Path:
    path = export_csv(result)
    stamp = result.day.strftime("%Y%m%d")
    await table_artifact(f"reconcile-{stamp}-classes", class_table(result),
                         f"Discrepancies of {result.day} by class")
    rows = discrepancy_rows(result)
    await table_artifact(f"reconcile-{stamp}-discrepancies", rows[:500],
                         f"Discrepancies of {result.day} (first 500 of {len(rows)})")
    await markdown_artifact(f"reconcile-{stamp}-summary",
                            summary_markdown(result, sources, path),
                            f"Reconciliation of {result.day}: totals per method and site")
    csv_text = discrepancies_csv(result)
    clipped = "\n".join(csv_text.splitlines()[:200])
    await markdown_artifact(f"reconcile-{stamp}-csv",
                            f"```csv\n{clipped}\n```\n\nfull file: `{path}`\n",
                            f"Discrepancies of {result.day} as CSV")
    return path


def result_summary(result: DayResult, sources: DaySources, csv_path: Path | None
                   ) -> dict[str, Any]:
    counts = {k: v for k, v in result.counts().items() if v}
    return {"day": result.day.isoformat(), "orders": len(result.outcomes),
            "groups": len(result.groups), "discrepancies": len(result.discrepancies),
            "by_class": {c.value: len(v) for c, v in result.by_class().items() if v},
            "counts": counts, "sources": [o.as_dict() for o in sources.outcomes],
            "rejected": len(sources.rejected), "csv": str(csv_path) if csv_path else None}


@task(name="read-day-sources", cache_policy=NO_CACHE)
def read_sources_task(payment_files: list[str], order_files: list[str],
                      delivery_files: list[str]) -> DaySources:
    return read_sources(payment_files, order_files, delivery_files)


@task(name="match-day", cache_policy=NO_CACHE)
def match_task(engine: Engine, day: date, sources: DaySources, rules: Rules, key: str
               ) -> DayResult:
    return match_day(engine, day, sources, rules, key=key)


@flow(name="reconcile-day", log_prints=False)
async def reconcile_day(day: date, payment_files: list[str], order_files: list[str] | None = None,
                        delivery_files: list[str] | None = None,
                        rules_file: str | None = None) -> dict[str, Any]:
    """Match one business day; re-running it replaces its result."""
    from prefect.utilities.annotations import quote

    logger = run_logger()
    engine = state_engine()
    rules = load_rules(rules_file)
    sources = read_sources_task(list(payment_files), list(order_files or []),
                                list(delivery_files or []))
    result = match_task(engine, day, quote(sources), rules, run_key())
    path = await publish(result, sources)
    summary = result_summary(result, sources, path)
    for o in sources.rejected:
        logger.warning("refused %s: %s", o.file, o.error)
    logger.info("reconcile-day %s: %s", day, summary["by_class"])
    return summary


def dump(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, default=str)


__all__ = ["DiscrepancyClass", "load_rules", "match_day", "read_sources", "reconcile_day"]
