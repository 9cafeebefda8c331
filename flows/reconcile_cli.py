"""``vouchflow reconcile`` and ``vouchflow remittance``: match a day, correct it, and move its
remittance batches through validate, close (with an operator's approval where needed),
reopen and post. Added to the main command line in ``flows/cli.py``."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import typer

reconcile_app = typer.Typer(help="Daily collections reconciliation: run, correct, inspect.",
                            no_args_is_help=True)
remittance_app = typer.Typer(help="Remittance batches: list, close, reopen, post.",
                             no_args_is_help=True)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _quiet() -> None:
    from flows.cli import quiet_prefect

    quiet_prefect()


@reconcile_app.command("run")
def reconcile_run(
    day: Annotated[str, typer.Option("--day", help="Business day, YYYY-MM-DD.")],
    files: Annotated[list[Path] | None, typer.Argument(help="The day's payment files.")] = None,
    orders: Annotated[list[Path] | None, typer.Option(
        help="Orders as canonical Order JSON lines, or the orders export as .csv "
             "(repeatable).")] = None,
    deliveries: Annotated[list[Path] | None, typer.Option(
        help="Delivery evidence as canonical Delivery JSON lines, or the delivery export "
             "as .csv (repeatable).")] = None,
    rules: Annotated[Path | None, typer.Option(
        help="Rule file (default VOUCHFLOW_RECONCILE_CONFIG or config/reconcile.yaml).")]
    = None,
    engine: Annotated[str, typer.Option(
        help="auto (columnar for a large day of CSV exports, acquirer and wallet files), "
             "rows or columns.")] = "auto",
) -> None:
    """Match DAY (replacing its earlier result); prints a JSON summary. Exits 1 when a
    source was refused (after matching the others)."""
    _quiet()
    from flows.reconcile import dump, reconcile_day

    summary = asyncio.run(reconcile_day(
        _day(day), [str(f) for f in files or []], [str(f) for f in orders or []],
        [str(f) for f in deliveries or []], str(rules) if rules else None, engine))
    typer.echo(dump(summary))
    for source in summary["sources"]:
        if source["status"] == "rejected":
            typer.secho(f"error: {source['error']}", fg=typer.colors.RED, err=True)
    if summary["rejected"]:
        raise typer.Exit(code=1)


@reconcile_app.command("discrepancies")
def reconcile_discrepancies(
    day: Annotated[str, typer.Option("--day", help="Business day, YYYY-MM-DD.")],
    status: Annotated[str | None, typer.Option(help="open or accepted.")] = None,
) -> None:
    """The day's stored discrepancies as JSON lines."""
    from state import remittance as remit
    from state.db import get_engine, session_scope

    with session_scope(get_engine()) as session:
        for d in remit.discrepancies(session, _day(day), status=status):
            typer.echo(json.dumps({
                "class": d.category, "status": d.status, "site": d.site, "method": d.method,
                "order_id": d.order_id, "payout_id": d.payout_id, "currency": d.currency,
                "difference": None if d.difference is None else str(d.difference),
                "traces": d.trace_ids, "detail": d.detail}))


@reconcile_app.command("correct")
def reconcile_correct(
    day: Annotated[str, typer.Option("--day", help="Business day, YYYY-MM-DD.")],
    kind: Annotated[str, typer.Option(help="adjust, accept or assign.")],
    target: Annotated[str, typer.Option(
        help="order:SITE:ORDER, trace:TRACE_ID or payout:PAYOUT_ID.")],
    reason: Annotated[str, typer.Option(help="Why (kept with the correction).")],
    by: Annotated[str, typer.Option("--by", help="Who makes the correction.")],
    amount: Annotated[str | None, typer.Option(help="For adjust: a signed decimal.")] = None,
    currency: Annotated[str | None, typer.Option(help="For adjust: ISO 4217 code.")] = None,
    assign_to: Annotated[str | None, typer.Option(help="For assign: order:SITE:ORDER.")]
    = None,
    rematch: Annotated[bool, typer.Option(
        help="Re-match the day from its stored sources now.")] = True,
) -> None:
    """Record a correction (source data is never edited); the day re-matches after it."""
    from state import remittance as remit
    from state.db import get_engine, session_scope

    value = None
    if amount is not None:
        try:
            value = Decimal(amount)
        except InvalidOperation:
            _fail(f"amount {amount!r} is not a decimal")
    business_day = _day(day)
    try:
        with session_scope(get_engine()) as session:
            row = remit.add_correction(session, day=business_day, kind=kind, target=target,
                                       reason=reason, created_by=by, amount=value,
                                       currency=currency, assign_to=assign_to)
            sources = _stored_sources(session, business_day)
    except remit.RemittanceError as exc:
        _fail(str(exc))
    typer.echo(json.dumps({"correction": row.id, "kind": kind, "target": target}))
    if rematch and sources is not None:
        _quiet()
        from flows.reconcile import dump, reconcile_day

        summary = asyncio.run(reconcile_day(business_day, *sources))
        typer.echo(dump({k: summary[k] for k in ("day", "orders", "by_class")}))


def _stored_sources(session: Any, day: date) -> tuple[list[str], list[str], list[str]] | None:
    """The files the day's last run read (kept with its result), to match it again."""
    from state.remittance import ReconDay

    row = session.get(ReconDay, day)
    if row is None:
        return None
    paths: dict[str, list[str]] = {"payments": [], "orders": [], "deliveries": []}
    for source in row.sources or []:
        if source.get("path"):
            paths[source["kind"]].append(source["path"])
    return paths["payments"], paths["orders"], paths["deliveries"]


# remittance ---------------------------------------------------------------------------------
@remittance_app.command("list")
def remittance_list(
    day: Annotated[str | None, typer.Option("--day", help="Business day, YYYY-MM-DD.")] = None,
    status: Annotated[str | None, typer.Option(help="open, validated, closed, posted.")]
    = None,
) -> None:
    """Batches (every version) as JSON lines."""
    from state import remittance as remit
    from state.db import get_engine, session_scope

    with session_scope(get_engine()) as session:
        rows = remit.summarize(remit.batches(session, day=_day(day) if day else None,
                                             status=status))
    for row in rows:
        typer.echo(json.dumps(row))


@remittance_app.command("close")
def remittance_close(
    day: Annotated[str, typer.Option("--day", help="Business day, YYYY-MM-DD.")],
    batch: Annotated[list[str] | None, typer.Option(help="Only these batch ids.")] = None,
    approve_as: Annotated[str | None, typer.Option(
        help="Approve blocked batches as this operator (instead of pausing for the UI).")]
    = None,
    comment: Annotated[str, typer.Option(help="The approval's comment.")] = "",
    wait: Annotated[bool, typer.Option(
        help="Pause for an approval in the Prefect UI when a batch is blocked.")] = False,
) -> None:
    """Validate and close the day's batches; blocked ones need --approve-as (or --wait for an
    approval given in the Prefect UI)."""
    business_day = _day(day)
    if approve_as:
        from flows.reconcile import load_rules
        from flows.remittance import close_batches, validate_day
        from state.db import get_engine

        engine = get_engine()
        heads = validate_day(engine, business_day, load_rules().close_threshold, batch)
        ids = [h.batch_id for h in heads]
        closed = close_batches(engine, ids, approval={
            "approve": True, "approved_by": approve_as, "comment": comment or None})
        typer.echo(json.dumps({"day": day, "closed": closed}))
        return
    _quiet()
    from flows.remittance import close_remittance

    summary = asyncio.run(close_remittance(business_day, batch, wait_for_approval=wait))
    typer.echo(json.dumps({k: summary[k] for k in ("day", "closed", "waiting")}))


@remittance_app.command("reopen")
def remittance_reopen(
    batch_id: Annotated[str, typer.Argument(help="e.g. 20261122-sg1-card")],
    by: Annotated[str, typer.Option("--by", help="Who reopens it.")],
    reason: Annotated[str, typer.Option(help="Why.")],
) -> None:
    """Reverse a closed or posted batch and open a new version of it."""
    from state import remittance as remit
    from state.db import get_engine, session_scope

    try:
        with session_scope(get_engine(), immediate=True) as session:
            reversal, fresh = remit.reopen_batch(session, batch_id, who=by, why=reason)
            out = {"reversal": reversal.version, "new_version": fresh.version}
    except remit.RemittanceError as exc:
        _fail(str(exc))
    typer.echo(json.dumps({"batch_id": batch_id, **out}))


@remittance_app.command("post")
def remittance_post(
    day: Annotated[str | None, typer.Option("--day", help="Only this business day.")] = None,
) -> None:
    """Send the closed batches' postings to treasury and the ERP (each exactly once)."""
    _quiet()
    from flows.remittance import post_remittance

    summary = asyncio.run(post_remittance(_day(day) if day else None))
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "batches"}))
    if summary["failed"]:
        raise typer.Exit(code=1)
