"""deliver-events: push the recorded events to every active subscription, chunk by chunk.

The flow takes the lease of each active subscription that no worker is delivering (a running
``vouchflow deliver`` worker keeps its own), then drives them side by side: one Prefect task
per chunk of up to ``chunk_size`` events (``VOUCHFLOW_DELIVERY_CHUNK_SIZE``), never one per
event. A subscription's run ends when it has caught up, when its subscriber is down (its
backlog waits for the next run, or the worker), or when ``max_seconds`` are spent. The engine
and its guarantees are in ``flows.subscribers``; this module is the orchestration, the run
ledger and the artifacts (counts by subscriber and outcome, lag).

Scheduled as a deployment it is the fallback when no worker runs; for low latency run the
worker (``vouchflow deliver``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.runtime import markdown_artifact, run_key, run_logger, state_engine, table_artifact
from flows.subscribers import (
    FLOW,
    ChunkReport,
    DeliveryCounts,
    DeliverySettings,
    SubscriberDelivery,
    claim,
    drain,
    lag_summary,
    release_all,
    worker_id,
)
from state.db import session_scope
from state.models import LedgerStatus
from state.store import ledger_finish, ledger_start


@task(name="deliver-chunk", cache_policy=NO_CACHE)
async def deliver_chunk(delivery: SubscriberDelivery) -> ChunkReport:
    """One chunk for one subscription: read, send (concurrently across entities), settle."""
    return await delivery.run_chunk()


@flow(name="deliver-events", log_prints=False)
async def deliver_events(
    subscriptions: list[str] | None = None,
    max_seconds: float = 240.0,
) -> dict[str, Any]:
    """Deliver recorded events to the active subscriptions (all, or those named) until they
    have caught up, their subscriber is down, or ``max_seconds`` are spent. (Retention is
    the ``prune-events`` flow's, on its own schedule.)"""
    logger = run_logger()
    key = run_key()
    engine = state_engine()
    settings = DeliverySettings()
    with session_scope(engine) as session:
        ledger_start(session, FLOW, key, "run")
    deliveries, busy = await asyncio.to_thread(claim, engine, worker_id("flow"), settings,
                                               names=subscriptions)
    states: dict[str, str] = {b.name: f"delivered by {b.lease_owner}" for b in busy}
    try:
        states.update(await drain(deliveries, step=deliver_chunk, max_seconds=max_seconds))
    finally:
        await release_all([d for d in deliveries if d.status != "lost"])
    totals = {d.name: d.totals for d in deliveries}
    failed = sorted(name for name, state in states.items() if state.startswith("failed"))
    lags = {row["name"]: row for row in await asyncio.to_thread(
        lag_summary, engine, sorted(states))}
    rows = [{"subscriber": name, **totals.get(name, DeliveryCounts()).as_dict(),
             "backlog": lags.get(name, {}).get("backlog", 0),
             "retrying": lags.get(name, {}).get("retrying", 0),
             "dead": lags.get(name, {}).get("dead", 0),
             "lag_s": lags.get(name, {}).get("lag_s", 0.0), "state": state}
            for name, state in sorted(states.items())]
    total = DeliveryCounts()
    for counts in totals.values():
        total.add(counts)
    summary = {"subscribers": rows, **total.as_dict()}
    with session_scope(engine) as session:
        ledger_finish(session, FLOW, key, "run",
                      status=LedgerStatus.FAILED if failed else LedgerStatus.DONE,
                      counts={"pushed": total.delivered, "dead_lettered": total.dead_lettered,
                              "failed_attempts": total.failed_attempts,
                              "rate_limited": total.rate_limited})
    await publish_artifacts(rows, total)
    logger.info("deliver-events: %s", total.as_dict())
    if failed:
        raise RuntimeError(f"delivery failed for {', '.join(failed)}: "
                           + "; ".join(states[name] for name in failed))
    return summary


@flow(name="prune-events", log_prints=False)
async def prune_old_events(older_than_days: float = 30.0) -> dict[str, Any]:
    """Retention of the event log, on its own schedule (a daily sweep, not every minute's
    delivery run): events older than ``older_than_days`` that no subscription needs any more
    are deleted (``state.subscriptions.prune_events``)."""
    report = await asyncio.to_thread(_prune, state_engine(), older_than_days)
    await table_artifact("prune-events", [{"type": t, "deleted": n}
                                           for t, n in sorted(report["by_type"].items())],
                         f"Events older than {older_than_days:g} days pruned; "
                         f"{report['kept']} older ones still needed")
    return report


def _prune(engine: Any, days: float) -> dict[str, Any]:
    from datetime import timedelta

    from state.subscriptions import prune_events

    with session_scope(engine, immediate=True) as session:
        return prune_events(session, older_than=timedelta(days=days)).as_dict()


async def publish_artifacts(rows: list[dict[str, Any]], total: DeliveryCounts) -> None:
    await table_artifact("deliver-events-counts", rows,
                         "Events delivered this run, by subscriber and outcome")
    lines = ["# Event delivery",
             f"- delivered **{total.delivered}** event(s); {total.failed_attempts} failed "
             f"attempt(s), {total.rate_limited} rate-limited answer(s), "
             f"**{total.dead_lettered}** dead-lettered, {total.held} held behind an earlier "
             "event of their entity"]
    for row in rows:
        lines.append(f"- `{row['subscriber']}`: {row['delivered']} delivered, backlog "
                     f"{row['backlog']}, retrying {row['retrying']}, dead {row['dead']}, "
                     f"lag {row['lag_s']} s ({row['state']})")
    await markdown_artifact("deliver-events-summary", "\n".join(lines), "Event delivery summary")


__all__ = ["deliver_chunk", "deliver_events", "prune_old_events"]
