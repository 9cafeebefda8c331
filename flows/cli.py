"""The ``vouchflow`` command line: run flows, serve sandboxes, inspect and replay dead letters.

Prefect is imported lazily (it takes a second or two), and its settings are given defaults
here before that import, so a plain command line run is quiet and keeps its files under
``VOUCHFLOW_HOME``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="vouchflow: integration flows between the ERP, wallet sites, suppliers, "
                  "finance and treasury.", no_args_is_help=True, add_completion=False)
schema_app = typer.Typer(help="Canonical data model schemas.", no_args_is_help=True)
sandbox_app = typer.Typer(help="Simulated external systems on loopback.", no_args_is_help=True)
dead_app = typer.Typer(help="Quarantined records: list, inspect, replay.", no_args_is_help=True)
sync_app = typer.Typer(help="Run sync flows now (through Prefect).", no_args_is_help=True)
db_app = typer.Typer(help="The state database.", no_args_is_help=True)
portal_app = typer.Typer(help="vouchflow's HTTP API (webhooks, vendor portal).",
                         no_args_is_help=True)
app.add_typer(schema_app, name="schema")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(dead_app, name="deadletters")
app.add_typer(sync_app, name="sync")
app.add_typer(db_app, name="db")
app.add_typer(portal_app, name="portal")

# payments: parse and ingest payment files (flows/payments_cli.py) ---------------------------
from flows.payments_cli import payments_app  # noqa: E402

app.add_typer(payments_app, name="payments")

# procurement: vendors and their portal tokens, contracts, orders (flows/procurement_cli.py) --
from flows.procurement_cli import purchasing_app, vendors_app  # noqa: E402

app.add_typer(vendors_app, name="vendors")
app.add_typer(purchasing_app, name="purchasing")

# daily API orders, settlement, payment runs, code operations, costing (flows/purchasing_cli.py)
from flows.purchasing_cli import codes_app, costing_app  # noqa: E402

app.add_typer(codes_app, name="codes")
app.add_typer(costing_app, name="costing")

# reconciliation and remittance batches (flows/reconcile_cli.py) -----------------------------
from flows.reconcile_cli import reconcile_app, remittance_app  # noqa: E402

app.add_typer(reconcile_app, name="reconcile")
app.add_typer(remittance_app, name="remittance")

# server: a Prefect server, work pool, limits, deployments and workers (flows/server.py) -----
from flows.server import server_app  # noqa: E402

app.add_typer(server_app, name="server")


@portal_app.command("serve")
def portal_serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8700,
) -> None:
    """Serve the HTTP API: wallet webhooks at /wallet/{site}/events (and the vendor portal)."""
    import uvicorn

    from connectors.redact import install_log_redaction
    from portal.app import create_app

    install_log_redaction()
    uvicorn.run(create_app(), host=host, port=port, log_level="warning", access_log=False)


def home() -> Path:
    path = Path(os.environ.get("VOUCHFLOW_HOME", "~/.vouchflow")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def quiet_prefect(verbose: bool = False) -> None:
    """Defaults for Prefect that make a command line run clean; explicit settings win."""
    os.environ.setdefault("PREFECT_HOME", str(home() / "prefect"))
    level = "INFO" if verbose else "WARNING"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", level)
    # the ephemeral API logs harmless errors while shutting down; operators need not see them
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")
    # the local API starts and migrates its database first: on a busy machine that takes
    # longer than Prefect's default wait
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


# schema -------------------------------------------------------------------------------------
@schema_app.command("export")
def schema_export(directory: Annotated[Path, typer.Argument(help="Where to write the files.")]
                  ) -> None:
    """Write the JSON Schema of every canonical model as DIR/{Model}.schema.json."""
    from canonical.schema import export

    for path in export(directory):
        typer.echo(str(path))


# database -----------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the state database to the newest schema."""
    from state.db import current_revisions, get_engine
    from state.settings import StateSettings

    engine = get_engine()
    typer.echo(f"{_safe_url(StateSettings().resolved_url())} at revision "
               f"{', '.join(sorted(current_revisions(engine)))}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# sandboxes ----------------------------------------------------------------------------------
@sandbox_app.command("up")
def sandbox_up(
    erp_port: Annotated[int, typer.Option(help="ERP sandbox port.")] = 8701,
    wallet_port: Annotated[int, typer.Option(help="Wallet sandbox port.")] = 8702,
    skus: Annotated[int, typer.Option(help="Valid SKUs to seed into an empty ERP.")] = 1000,
    invalid: Annotated[int, typer.Option(help="Deliberately invalid SKUs to seed.")] = 7,
) -> None:
    """Serve the ERP and wallet sandboxes on loopback until Ctrl-C; data persists under
    VOUCHFLOW_HOME/sandbox. Prints the environment to point vouchflow at them."""
    from sandbox.__main__ import main as sandbox_main

    raise typer.Exit(sandbox_main([
        "--home", str(home()), "--erp-port", str(erp_port), "--wallet-port", str(wallet_port),
        "--seed-skus", str(skus), "--invalid", str(invalid), "--print-env",
    ]))


# sync flows ---------------------------------------------------------------------------------
@sync_app.command("catalog")
def sync_catalog_cmd(
    site: Annotated[list[str] | None, typer.Option(help="Only these sites (repeatable).")] = None,
    full: Annotated[bool, typer.Option(help="Re-read every ERP item.")] = False,
    chunk_size: Annotated[int, typer.Option(help="Items per chunk (task).")] = 500,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the catalogue sync (ERP -> wallet sites) once, through Prefect."""
    quiet_prefect(verbose)
    from flows.sync_catalog import sync_catalog

    result = asyncio.run(sync_catalog(sites=site or None, full=full, chunk_size=chunk_size))
    typer.echo(json.dumps(result, indent=2, default=str))


@sync_app.command("inventory")
def sync_inventory_cmd(
    site: Annotated[list[str] | None, typer.Option(help="Only these sites (repeatable).")] = None,
    full: Annotated[bool, typer.Option(help="Re-read every ERP batch and rebalance every "
                                            "SKU.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the inventory sync (ERP batches -> pool -> site quotas) once, through Prefect."""
    quiet_prefect(verbose)
    from flows.sync_inventory import sync_inventory

    result = asyncio.run(sync_inventory(sites=site or None, full=full))
    typer.echo(json.dumps(result, indent=2, default=str))


@sync_app.command("sales")
def sync_sales_cmd(
    site: Annotated[list[str] | None, typer.Option(help="Only these sites (repeatable).")] = None,
    poll: Annotated[bool, typer.Option(help="Also read orders by cursor (besides the "
                                            "webhook inbox).")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the sales ingest (orders -> code allocation -> deliveries -> ERP) once."""
    quiet_prefect(verbose)
    from flows.ingest_sales import ingest_sales

    result = asyncio.run(ingest_sales(sites=site or None, poll=poll))
    typer.echo(json.dumps(result, indent=2, default=str))


# dead letters -------------------------------------------------------------------------------
@dead_app.command("list")
def dead_list(
    status: Annotated[str, typer.Option(help="open, replayed, resolved or all.")] = "open",
    source: Annotated[str | None, typer.Option(help="Only this source (erp, wallet:sg1...).")]
    = None,
    limit: Annotated[int, typer.Option()] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")]
    = False,
) -> None:
    """List dead letters (newest reason, how often seen, replays)."""
    from state.db import get_engine, session_scope
    from state.store import list_dead_letters

    with session_scope(get_engine()) as session:
        rows = list_dead_letters(session, status=None if status == "all" else status,
                                 source=source, limit=limit)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(_letter(row, payload=False), default=str))
        return
    if not rows:
        typer.echo(f"no {status} dead letters")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dead letters ({status})")
    for column in ("id", "flow", "source", "record", "seen", "replays", "status", "reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(str(row.id), row.flow, row.source, f"{row.entity_type} {row.entity_key}",
                      str(row.occurrences), str(row.replay_count), row.status, row.reason)
    Console(width=160).print(table)


def _letter(row: Any, *, payload: bool = True) -> dict[str, Any]:
    data = {
        "id": row.id, "flow": row.flow, "source": row.source, "entity_type": row.entity_type,
        "entity_key": row.entity_key, "status": row.status, "reason": row.reason,
        "first_seen": row.first_seen, "last_seen": row.last_seen,
        "occurrences": row.occurrences, "replay_count": row.replay_count,
        "last_replayed_at": row.last_replayed_at,
    }
    if payload:
        data["payload"] = row.payload
    return data


@dead_app.command("show")
def dead_show(letter_id: Annotated[int, typer.Argument(help="Dead letter id.")]) -> None:
    """Everything about one dead letter, including the (masked) payload."""
    from state.db import get_engine, session_scope
    from state.models import DeadLetter

    with session_scope(get_engine()) as session:
        row = session.get(DeadLetter, letter_id)
        if row is None:
            _fail(f"no dead letter {letter_id}")
        typer.echo(json.dumps(_letter(row), indent=2, default=str))


@dead_app.command("replay")
def dead_replay(
    ids: Annotated[list[int] | None, typer.Argument(help="Dead letter ids (none: use --all).")]
    = None,
    all_open: Annotated[bool, typer.Option("--all", help="Every open dead letter.")] = False,
    source: Annotated[str | None, typer.Option(help="With --all: only this source.")] = None,
) -> None:
    """Send dead letters through the step that refused them, again."""
    if not ids and not all_open:
        _fail("name dead letter ids, or use --all")
    from flows.deadletters import replay
    from state.db import get_engine

    report = asyncio.run(replay(get_engine(), ids=ids or None, source=source))
    typer.echo(f"replayed {report.attempted}: {report.succeeded} went through, "
               f"{report.still_failing} still failing"
               + (f", {len(report.unsupported)} with no replay handler" if report.unsupported
                  else ""))
    if report.still_failing:
        raise typer.Exit(code=2)


# status -------------------------------------------------------------------------------------
@app.command("status")
def status() -> None:
    """Last run of each flow, dead letters by source, pending outbox writes, subscribers'
    lag, held orders, open discrepancies, batches waiting for approval, and the last run of
    each deployment (from the Prefect API in PREFECT_API_URL)."""
    from state.db import get_engine, session_scope
    from state.store import dead_letter_counts, last_runs, outbox_counts
    from state.subscriptions import subscription_lags

    with session_scope(get_engine()) as session:
        runs = last_runs(session)
        dead = dead_letter_counts(session)
        outbox = outbox_counts(session)
        lags = subscription_lags(session)
    typer.echo("last runs:")
    for run in runs:
        counts = run.counts or {}
        typer.echo(f"  {run.flow:<16} {run.status:<8} started {run.started_at:%Y-%m-%d %H:%M:%S}"
                   f"  pushed={counts.get('pushed', '-')} "
                   f"dead_lettered={counts.get('dead_lettered', '-')}")
    if not runs:
        typer.echo("  (none yet)")
    typer.echo("dead letters:")
    for (flow, source, state), n in sorted(dead.items()):
        typer.echo(f"  {flow:<16} {source:<12} {state:<9} {n}")
    if not dead:
        typer.echo("  (none)")
    pending = {k: v for k, v in outbox.items() if k[1] == "pending"}
    typer.echo(f"outbox pending: {sum(pending.values())}")
    typer.echo("subscribers:")
    for lag in lags:
        failing = f"  failing since {lag.failing_since:%H:%M:%S}" if lag.failing_since else ""
        typer.echo(f"  {lag.name:<16} {lag.status:<7} backlog={lag.backlog} "
                   f"retrying={lag.retrying} dead={lag.dead} lag={lag.lag_s:.1f}s{failing}")
    if not lags:
        typer.echo("  (none)")
    # held orders, discrepancies, approvals; each deployment's last run (flows/server.py)
    from flows.server import deployment_status_lines, state_status_lines

    with session_scope(get_engine()) as session:
        lines = state_status_lines(session)
    if os.environ.get("PREFECT_API_URL"):
        quiet_prefect()
    lines += asyncio.run(deployment_status_lines())
    for line in lines:
        typer.echo(line)


# subscriptions and delivery ----------------------------------------------------------------
subs_app = typer.Typer(help="Downstream subscribers: who receives which events.",
                       no_args_is_help=True)
app.add_typer(subs_app, name="subscriptions")


@subs_app.command("add")
def subscriptions_add(
    name: Annotated[str, typer.Argument(help="Subscriber name ([a-z0-9_-]).")],
    url: Annotated[str, typer.Argument(help="Where events are POSTed (http/https).")],
    event_type: Annotated[list[str], typer.Option(
        "--type", "-t", help="Event type, 'prefix.*' or '*' (repeatable).")],
    secret_env: Annotated[str | None, typer.Option(
        help="Read the signing secret from this environment variable (default: generate "
             "one and print it once).")] = None,
    from_start: Annotated[bool, typer.Option(
        "--from-start", help="Deliver every recorded event, not only those from now on.")]
    = False,
) -> None:
    """Register a subscriber; its secret is stored encrypted and shown only now."""
    from state.crypto import Keyring
    from state.db import get_engine, session_scope
    from state.subscriptions import SubscriptionError, create_subscription

    secret = None
    if secret_env:
        secret = os.environ.get(secret_env)
        if not secret:
            _fail(f"environment variable {secret_env} is not set")
    try:
        with session_scope(get_engine(), immediate=True) as session:
            sub, plain = create_subscription(
                session, Keyring.load(), name=name, url=url, event_types=event_type,
                secret=secret, start="beginning" if from_start else "now")
    except SubscriptionError as exc:
        _fail(str(exc))
    typer.echo(f"subscription {sub.name} -> {sub.display_url} ({', '.join(sub.event_types)}),"
               f" from event {sub.settled_seq + 1}")
    if not secret_env:
        typer.echo(f"signing secret (shown once, store it now): {plain.get_secret_value()}")


@subs_app.command("list")
def subscriptions_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")]
    = False,
) -> None:
    """Subscriptions with their backlog, retries, dead letters and lag."""
    from state.db import get_engine, session_scope
    from state.subscriptions import subscription_lags

    with session_scope(get_engine()) as session:
        lags = subscription_lags(session)
    if as_json:
        for lag in lags:
            typer.echo(json.dumps(lag.as_dict(), default=str))
        return
    if not lags:
        typer.echo("no subscriptions")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="subscriptions")
    for column in ("name", "status", "url", "types", "backlog", "retrying", "dead", "lag s",
                   "failing since"):
        table.add_column(column, overflow="fold")
    for lag in lags:
        table.add_row(lag.name, lag.status, lag.url, ",".join(lag.event_types), str(lag.backlog),
                      str(lag.retrying), str(lag.dead), f"{lag.lag_s:.1f}",
                      f"{lag.failing_since:%Y-%m-%d %H:%M:%S}" if lag.failing_since else "")
    Console(width=160).print(table)


def _subscription_status(name: str, paused: bool) -> None:
    from state.db import get_engine, session_scope
    from state.subscriptions import SubscriptionNotFound, SubscriptionStatus, set_status

    try:
        with session_scope(get_engine()) as session:
            sub = set_status(session, name, SubscriptionStatus.PAUSED if paused
                             else SubscriptionStatus.ACTIVE)
    except SubscriptionNotFound as exc:
        _fail(str(exc))
    typer.echo(f"subscription {sub.name} {sub.status}")


@subs_app.command("pause")
def subscriptions_pause(name: Annotated[str, typer.Argument()]) -> None:
    """Stop delivering to a subscriber; its backlog waits (nothing is lost)."""
    _subscription_status(name, paused=True)


@subs_app.command("resume")
def subscriptions_resume(name: Annotated[str, typer.Argument()]) -> None:
    """Deliver again, starting with what waited."""
    _subscription_status(name, paused=False)


@subs_app.command("remove")
def subscriptions_remove(
    name: Annotated[str, typer.Argument()],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Delete a subscription: nothing more is sent to it, its dead letters are resolved."""
    from state.db import get_engine, session_scope
    from state.subscriptions import SubscriptionNotFound, remove_subscription

    if not yes:
        typer.confirm(f"remove subscription {name} and stop delivering to it?", abort=True)
    try:
        with session_scope(get_engine(), immediate=True) as session:
            remove_subscription(session, name)
    except SubscriptionNotFound as exc:
        _fail(str(exc))
    typer.echo(f"subscription {name} removed")


events_app = typer.Typer(help="The event log subscribers read from.", no_args_is_help=True)
app.add_typer(events_app, name="events")


@events_app.command("prune")
def events_prune(
    older_than_days: Annotated[float, typer.Option(
        "--older-than-days", min=0, help="Delete events recorded more than this many days "
        "ago, once every subscription covering them is past them.")],
) -> None:
    """Delete old events no subscriber needs any more (never one a subscription still has
    to deliver, retry or replay)."""
    from datetime import timedelta

    from state.db import get_engine, session_scope
    from state.subscriptions import prune_events

    with session_scope(get_engine(), immediate=True) as session:
        report = prune_events(session, older_than=timedelta(days=older_than_days))
    typer.echo(json.dumps(report.as_dict(), default=str))


@app.command("deliver")
def deliver(
    subscription: Annotated[list[str] | None, typer.Option(
        help="Only these subscriptions (repeatable).")] = None,
    once: Annotated[bool, typer.Option(
        "--once", help="Run the deliver-events flow once (through Prefect) and exit.")]
    = False,
    concurrency: Annotated[int | None, typer.Option(
        help="Requests in flight per subscriber.")] = None,
    poll_interval: Annotated[float | None, typer.Option(
        help="Seconds between looks for new events when idle.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Deliver recorded events to subscribers: a long-running worker (until Ctrl-C or
    SIGTERM), or with --once the deliver-events flow."""
    overrides: dict[str, Any] = {}
    if concurrency is not None:
        overrides["concurrency"] = concurrency
    if poll_interval is not None:
        overrides["poll_interval_s"] = poll_interval
    if once:
        quiet_prefect(verbose)
        from flows.deliver import deliver_events

        for name, value in overrides.items():
            os.environ[f"VOUCHFLOW_DELIVERY_{name.upper()}"] = str(value)
        result = asyncio.run(deliver_events(subscriptions=subscription or None))
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    raise typer.Exit(_run_worker(subscription or None, overrides, verbose))


def _run_worker(names: list[str] | None, overrides: dict[str, Any], verbose: bool) -> int:
    import logging
    import signal

    from connectors.redact import install_log_redaction
    from flows.subscribers import DeliverySettings, DeliveryWorker
    from state.db import get_engine

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    worker = DeliveryWorker(get_engine(), settings=DeliverySettings(**overrides), names=names)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await worker.run(stop)

    typer.echo(f"delivery worker {worker.owner}: Ctrl-C or SIGTERM to stop", err=True)
    asyncio.run(main())
    for name, counts in sorted(worker.totals.items()):
        typer.echo(f"{name}: {counts.as_dict()}", err=True)
    return 0


# demo ---------------------------------------------------------------------------------------
@app.command("demo")
def demo(
    skus: Annotated[int, typer.Option(help="Valid SKUs to seed into the ERP sandbox.")] = 1000,
    invalid: Annotated[int, typer.Option(help="Deliberately invalid SKUs to seed.")] = 7,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Start the sandboxes, run the catalogue sync through Prefect, print a summary."""
    quiet_prefect(verbose)
    from flows.demo import run_demo

    raise typer.Exit(run_demo(home(), skus=skus, invalid=invalid))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
