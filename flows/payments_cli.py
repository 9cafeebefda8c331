"""``vouchflow payments``: look inside payment files, and take a day's files in through the
file ledger. Added to the main command line in ``flows/cli.py``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

payments_app = typer.Typer(help="Payment files: parse and inspect, ingest through the ledger.",
                           no_args_is_help=True)

RECORD_TYPES = ("trace", "fee", "payout", "delivery")
FORMAT_HELP = ("auto, camt053, camt052, camt054, mt940, mt942, acquirer (adyen), stripe, "
               "paypal, cod, wallet, split")


def record_json(record: Any) -> dict[str, Any]:
    """One canonical record as a flat JSON object: money as a decimal string beside its
    currency, empty references left out."""
    from canonical import Delivery, Fee, PaymentTrace, Payout

    data = record.model_dump(mode="json", exclude_none=True)
    kind = {PaymentTrace: "trace", Fee: "fee", Payout: "payout", Delivery: "delivery"}[
        type(record)]
    out: dict[str, Any] = {"record": kind}
    for key, value in data.items():
        if key == "amount" and isinstance(value, dict):
            out["amount"] = value["amount"]
            out["currency"] = value["currency"]
        elif key in {"fee", "net"} and isinstance(value, dict):
            out[key] = value["amount"]
            out[f"{key}_currency"] = value["currency"]
        elif key == "origin" and isinstance(value, dict):
            out["origin"] = value["file"] + (f":{value['line']}" if "line" in value else "")
        elif key == "references":
            out["references"] = value
        else:
            out[key] = value
    return out


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(f"{name!r} is not a time zone") from None


def _error_line(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)


@payments_app.command("parse")
def payments_parse(
    file: Annotated[Path, typer.Argument(help="The payment file to read.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP)] = "auto",
    records: Annotated[str, typer.Option(
        help="Which records to print, comma-separated: trace, fee, payout, delivery, all.")]
    = "trace",
    account: Annotated[str | None, typer.Option(
        help="The account, for files that do not name it (stripe, paypal).")] = None,
    timezone: Annotated[str, typer.Option(
        help="Zone of date-times the file gives without an offset.")] = "UTC",
) -> None:
    """Print the normalised records of FILE as JSON lines (one per record)."""
    from connectors.payments.common import PaymentFileError
    from flows.payments import read_payment_file
    from mappings.errors import MappingError

    wanted = set(RECORD_TYPES) if records.strip() == "all" else {
        r.strip() for r in records.split(",") if r.strip()}
    unknown = wanted - set(RECORD_TYPES)
    if unknown:
        _error_line(f"unknown record type {', '.join(sorted(unknown))}; "
                    f"use {', '.join(RECORD_TYPES)} or all")
        raise typer.Exit(code=2)
    if not file.is_file():
        _error_line(f"{file}: no such file [unreadable]")
        raise typer.Exit(code=1)
    out = sys.stdout
    try:
        for record in read_payment_file(file, fmt, account=account, default_tz=_zone(timezone)):
            line = record_json(record)
            if line["record"] in wanted:
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
    except (PaymentFileError, MappingError, ValueError) as exc:
        out.flush()
        _error_line(str(exc).splitlines()[0])
        raise typer.Exit(code=1) from None


@payments_app.command("ingest")
def payments_ingest(
    files: Annotated[list[Path], typer.Argument(help="The day's payment files.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP)] = "auto",
    accept_changed: Annotated[bool, typer.Option(
        help="Read a file whose name was read before with other content.")] = False,
    account: Annotated[str | None, typer.Option(help="The account, where files omit it.")]
    = None,
) -> None:
    """Read files not read before (same name, same content: skipped; same name, other
    content: flagged). Prints one JSON line per file; exits 1 if any was rejected or
    flagged, after reading all the others."""
    from flows.payments import ingest_payment_files
    from state.db import get_engine

    outcomes = ingest_payment_files(files, get_engine(), fmt=fmt,
                                    accept_changed=accept_changed, account=account)
    for outcome in outcomes:
        typer.echo(json.dumps(outcome.summary(), ensure_ascii=False))
        if outcome.error:
            _error_line(outcome.error.splitlines()[0])
    if any(o.status in {"rejected", "changed"} for o in outcomes):
        raise typer.Exit(code=1)
