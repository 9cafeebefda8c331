"""``vouchflow purchasing api-pos|settle|approve|payment-run|confirm-payments|payment-status``,
``vouchflow codes downgrade|replace|repromote|return`` and ``vouchflow costing post``: the
operator's side of daily API orders, settlement, payment runs, code operations and costing.
The purchasing commands join ``flows.procurement_cli``'s group; all are hooked into
``flows.cli``."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.procurement_cli import purchasing_app

codes_app = typer.Typer(help="Operations on codes in the pool: downgrade, replace, re-promote, "
                        "return to supplier.", no_args_is_help=True)
costing_app = typer.Typer(help="Cost layers posted to the group finance system.",
                          no_args_is_help=True)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _run(verbose: bool, make: Any) -> None:
    """Run a flow coroutine quietly and print its summary as JSON; refusals become one line."""
    from flows.cli import quiet_prefect

    quiet_prefect(verbose)
    from state.procurement import ProcurementError

    try:
        result = asyncio.run(make())
    except (ProcurementError, ValueError) as exc:
        _fail(str(exc))
        return
    typer.echo(json.dumps(result, indent=2, default=str))


Verbose = Annotated[bool, typer.Option("--verbose", "-v")]


# purchasing -------------------------------------------------------------------------------------
@purchasing_app.command("api-pos")
def api_pos(
    day: Annotated[str | None, typer.Option(help="Business day YYYY-MM-DD (default: each "
                                            "site's last complete day).")] = None,
    site: Annotated[list[str] | None, typer.Option(help="Site code (repeat); default all.")] = None,
    verbose: Verbose = False,
) -> None:
    """Book each site's API sales of a day as daily purchase orders and receipts."""
    from flows.api_purchase_orders import api_purchase_orders

    _run(verbose, lambda: api_purchase_orders(
        day=date.fromisoformat(day) if day else None, sites=site or None))


@purchasing_app.command("settle")
def settle(
    period: Annotated[str, typer.Option(help="Settlement period YYYY-MM.")],
    vendor: Annotated[list[str] | None, typer.Option(help="Vendor slug (repeat); default "
                                                     "every vendor with a signed contract.")] = None,
    approve_by: Annotated[str | None, typer.Option(help="Approve the bills at once, as this "
                                                   "operator.")] = None,
    verbose: Verbose = False,
) -> None:
    """Make the period's vendor bills (purchased, sales or write-off quantity) in the ERP."""
    from flows.settlement import settle_vendors

    _run(verbose, lambda: settle_vendors(period, vendors=vendor or None, approve_by=approve_by))


@purchasing_app.command("approve")
def approve(
    bill: Annotated[list[str] | None, typer.Argument(help="Bill numbers; none: every draft.")] = None,
    by: Annotated[str, typer.Option(help="The approving operator.")] = "operator",
) -> None:
    """Approve draft vendor bills for payment."""
    from state import settlement
    from state.db import get_engine, session_scope

    with session_scope(get_engine()) as s:
        done = settlement.approve_bills(s, bill or None, by=by)
    typer.echo(json.dumps({"approved": done}, indent=2))


@purchasing_app.command("payment-run")
def payment_run_cmd(
    execution_date: Annotated[str | None, typer.Option(help="Requested execution date "
                                                       "YYYY-MM-DD (default today).")] = None,
    bill: Annotated[list[str] | None, typer.Option(help="Only these bills (repeat).")] = None,
    by: Annotated[str, typer.Option(help="The operator making the run.")] = "operator",
    verbose: Verbose = False,
) -> None:
    """Approved bills as one pain.001.001.09 file (validated against the XSD)."""
    from flows.settlement import payment_run

    _run(verbose, lambda: payment_run(
        execution_date=date.fromisoformat(execution_date) if execution_date else None,
        bills=bill or None, created_by=by))


@purchasing_app.command("confirm-payments")
def confirm_payments_cmd(
    run_no: Annotated[str | None, typer.Argument(help="The run the bank executed (none: only "
                                                 "write what an earlier call left).")] = None,
    rejected: Annotated[list[str] | None, typer.Option(help="End-to-end id the bank "
                                                       "rejected (repeat).")] = None,
    verbose: Verbose = False,
) -> None:
    """Mark a run's payments confirmed, write the vendorPayments and mark the bills paid."""
    from flows.settlement import confirm_payments

    _run(verbose, lambda: confirm_payments(run_no, rejected=rejected or None))


@purchasing_app.command("payment-status")
def payment_status_cmd(
    path: Annotated[Path, typer.Argument(help="The bank's pain.002 status report of a run.")],
    verbose: Verbose = False,
) -> None:
    """Confirm a run from the bank's pain.002: accepted payments paid, rejected ones payable
    again with their reason, pending ones left for a later report."""
    from connectors.pain002 import Pain002Error, read_pain002
    from flows.payment_status import confirm_payment_status

    try:
        read_pain002(path)  # a file that is no valid report is refused before Prefect starts
    except Pain002Error as exc:
        _fail(str(exc))
    _run(verbose, lambda: confirm_payment_status(str(path)))


# codes -----------------------------------------------------------------------------------------
def _code_ids(code_id: list[int] | None, codes_file: Path | None) -> list[int] | None:
    """Ids given, plus those of a file of codes (one a line), looked up by keyed hash here:
    codes in clear never become flow parameters."""
    ids = list(code_id or [])
    if codes_file is not None:
        from state import code_ops
        from state.crypto import Keyring
        from state.db import get_engine, session_scope

        codes = [ln.strip() for ln in codes_file.read_text(encoding="utf-8-sig").splitlines()
                 if ln.strip()]
        with session_scope(get_engine()) as s:
            found, missing = code_ops.ids_for_codes(s, Keyring.load(), codes)
        if missing:
            typer.secho(f"{missing} code(s) of {codes_file.name} are not in the pool",
                        fg=typer.colors.YELLOW, err=True)
        ids.extend(found)
    return ids or None


CodeId = Annotated[list[int] | None, typer.Option("--code-id", help="Code id (repeat).")]
CodesFile = Annotated[Path | None, typer.Option(help="File of codes, one a line.")]
BatchNo = Annotated[str | None, typer.Option("--batch", help="Every matching code of a batch.")]
Limit = Annotated[int | None, typer.Option(help="At most this many codes of the selection.")]
Actor = Annotated[str, typer.Option(help="Who does it (the codes' chronology).")]
Reason = Annotated[str, typer.Option(help="Why (the codes' chronology).")]


@codes_app.command("downgrade")
def codes_downgrade(to_sku: Annotated[str, typer.Option(help="The lower-value SKU.")],
                    code_id: CodeId = None, codes_file: CodesFile = None, batch: BatchNo = None,
                    sku: Annotated[str | None, typer.Option()] = None, limit: Limit = None,
                    actor: Actor = "operator", reason: Reason = "",
                    verbose: Verbose = False) -> None:
    """Move codes in stock to a lower-value SKU."""
    from flows.code_ops import downgrade_codes

    ids = _code_ids(code_id, codes_file)
    _run(verbose, lambda: downgrade_codes(to_sku, code_ids=ids, batch_no=batch, sku=sku,
                                          limit=limit, actor=actor, reason=reason))


@codes_app.command("repromote")
def codes_repromote(to_sku: Annotated[str | None, typer.Option(help="Another SKU.")] = None,
                    campaign: Annotated[str | None, typer.Option(help="A campaign.")] = None,
                    site: Annotated[list[str] | None, typer.Option(help="Sell only here.")] = None,
                    code_id: CodeId = None, codes_file: CodesFile = None, batch: BatchNo = None,
                    sku: Annotated[str | None, typer.Option()] = None, limit: Limit = None,
                    actor: Actor = "operator", reason: Reason = "",
                    verbose: Verbose = False) -> None:
    """Put codes in stock back on sale under another SKU or a campaign."""
    from flows.code_ops import repromote_codes

    ids = _code_ids(code_id, codes_file)
    _run(verbose, lambda: repromote_codes(to_sku=to_sku, campaign=campaign, sites=site or None,
                                          code_ids=ids, batch_no=batch, sku=sku, limit=limit,
                                          actor=actor, reason=reason))


@codes_app.command("replace")
def codes_replace(code_id: CodeId = None, codes_file: CodesFile = None, batch: BatchNo = None,
                  limit: Limit = None, actor: Actor = "operator", reason: Reason = "",
                  verbose: Verbose = False) -> None:
    """Swap faulty sold codes for fresh ones on the same order lines."""
    from flows.code_ops import replace_codes

    ids = _code_ids(code_id, codes_file)
    _run(verbose, lambda: replace_codes(code_ids=ids, batch_no=batch,
                                        status="sold" if batch else None, limit=limit,
                                        actor=actor, reason=reason))


@codes_app.command("return")
def codes_return(code_id: CodeId = None, codes_file: CodesFile = None, batch: BatchNo = None,
                 status: Annotated[str | None, typer.Option(help="in_stock, blocked or "
                                                            "replaced (with --batch).")] = None,
                 limit: Limit = None, actor: Actor = "operator", reason: Reason = "",
                 verbose: Verbose = False) -> None:
    """Return codes to their supplier, with vendor credits in the ERP."""
    from flows.code_ops import return_codes

    ids = _code_ids(code_id, codes_file)
    _run(verbose, lambda: return_codes(code_ids=ids, batch_no=batch, status=status,
                                       limit=limit, actor=actor, reason=reason))


# costing ----------------------------------------------------------------------------------------
@costing_app.command("post")
def costing_post(
    day: Annotated[str | None, typer.Option(help="Day YYYY-MM-DD (UTC; default yesterday).")] = None,
    through: Annotated[str | None, typer.Option(help="Last day of a range.")] = None,
    verbose: Verbose = False,
) -> None:
    """Post purchase cost, cost of sales, inventory valuation and procurement invoices."""
    from flows.costing import costing_daily

    _run(verbose, lambda: costing_daily(
        day=date.fromisoformat(day) if day else None,
        through=date.fromisoformat(through) if through else None))
