"""Delivering writes to a batch endpoint, exactly once in effect.

The writes are outbox rows (announcing a state change of vouchflow's, delivered later) or
plain in-memory items (pushing the current state of a record that the far end upserts, where
the fingerprint saved on success is all the bookkeeping resuming needs). A batch that the
far end accepts is marked sent (for outbox rows), together with whatever the caller records
on success (fingerprints), in one transaction; for in-memory items the caller may instead
record what the report says was confirmed, many batches in one transaction of its own (a
crash before that sends them again, which the far end's upsert makes harmless). A batch
refused as invalid is split: the items the far end names (or, if it names none, the halves
found by bisection) go to the dead-letter table and the rest are sent again, so one bad
record never holds back its neighbours.
Transient errors propagate: the caller's retry re-sends, and the idempotency keys make that
harmless.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from connectors.errors import ConflictError, InvalidRecordError, NotFoundError
from connectors.redact import scrub
from state.db import session_scope
from state.models import OutboxMessage
from state.store import (
    DeadLetterItem,
    OutboxItem,
    mark_attempt_failed,
    mark_sent,
    record_dead_letters,
)

SendBatch = Callable[[list[Any]], Awaitable[list[Any]]]
Write = OutboxMessage | OutboxItem | Any
"""An outbox row (with ``id``) or an in-memory ``OutboxItem`` (without)."""
OnSent = Callable[[Session, Sequence[Write], Sequence[Any]], None]


@dataclass
class DeliveryReport:
    sent: int = 0
    dead_lettered: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    confirmed: list[Write] = field(default_factory=list)
    """The writes the far end accepted, in the order sent: a caller that records their
    success later (in-memory items, in a transaction of its own for many batches) takes them
    from here."""

    def add(self, other: DeliveryReport) -> None:
        self.sent += other.sent
        self.dead_lettered += other.dead_lettered
        self.outcomes.update(other.outcomes)
        self.confirmed.extend(other.confirmed)


def _bad_indices(error: InvalidRecordError, size: int) -> dict[int, str]:
    bad: dict[int, str] = {}
    for detail in error.details:
        if isinstance(detail, dict) and isinstance(detail.get("index"), int):
            index = detail["index"]
            if 0 <= index < size:
                where = detail.get("field") or "record"
                text = f"{where}: {detail.get('message') or 'invalid'}"
                bad[index] = f"{bad[index]}; {text}" if index in bad else text
    return bad


async def deliver(
    engine: Engine,
    rows: Sequence[Write],
    send: SendBatch,
    *,
    flow: str,
    batch_size: int,
    on_sent: OnSent | None = None,
    outcome_of: Callable[[Any], str] | None = None,
) -> DeliveryReport:
    report = DeliveryReport()
    for start in range(0, len(rows), batch_size):
        report.add(await _deliver_batch(engine, list(rows[start:start + batch_size]), send,
                                        flow=flow, on_sent=on_sent, outcome_of=outcome_of))
    return report


async def _deliver_batch(
    engine: Engine,
    batch: list[Write],
    send: SendBatch,
    *,
    flow: str,
    on_sent: OnSent | None,
    outcome_of: Callable[[Any], str] | None,
) -> DeliveryReport:
    report = DeliveryReport()
    if not batch:
        return report
    try:
        responses = await send([row.payload for row in batch])
    except InvalidRecordError as error:
        bad = _bad_indices(error, len(batch))
        if not bad and len(batch) == 1:
            bad = {0: str(error)}
        if bad:
            _dead_letter(engine, [(batch[i], reason) for i, reason in bad.items()], flow, error)
            report.dead_lettered += len(bad)
            rest = [row for i, row in enumerate(batch) if i not in bad]
            report.add(await _deliver_batch(engine, rest, send, flow=flow, on_sent=on_sent,
                                            outcome_of=outcome_of))
            return report
        middle = len(batch) // 2
        for half in (batch[:middle], batch[middle:]):
            report.add(await _deliver_batch(engine, half, send, flow=flow, on_sent=on_sent,
                                            outcome_of=outcome_of))
        return report

    ids = [i for i in (getattr(row, "id", None) for row in batch) if i is not None]

    def record() -> None:
        with session_scope(engine, immediate=True) as session:
            mark_sent(session, ids)
            if on_sent is not None:
                on_sent(session, batch, responses)

    # in a worker thread: waiting for the database's write lock must not stop the event loop;
    # in-memory items with nothing to remember need no transaction at all
    if ids or on_sent is not None:
        await asyncio.to_thread(record)
    report.sent += len(batch)
    report.confirmed.extend(batch)
    if outcome_of is not None:
        report.outcomes.update(outcome_of(r) for r in responses)
    return report


async def send_line_delivery(
    engine: Engine, wallet: Any, row: Any, codes: list[dict[str, Any]], *, flow: str,
) -> bool:
    """POST one order line's codes to its site (``row``: the line's outbox row, whose key is
    the delivery's ``Idempotency-Key``; a repeat gets the first delivery back). A refusal
    (conflict, invalid, not found) gives the row up into the dead-letter table and returns
    False; transient errors propagate, for the caller's retry. The caller marks the row sent
    with whatever else a delivered line changes."""
    payload = row.payload
    try:
        await wallet.deliver_codes(payload["order_id"], payload["line_id"], codes,
                                   key=row.idempotency_key)
    except (ConflictError, InvalidRecordError, NotFoundError) as exc:
        give_up(engine, row, str(exc), flow=flow, entity_type="delivery",
                payload={"order_id": payload["order_id"], "line_id": payload["line_id"]})
        return False
    return True


def give_up(engine: Engine, row: Any, reason: str, *, flow: str, entity_type: str,
            payload: Mapping[str, Any] | None = None, session: Session | None = None) -> None:
    """An outbox row that will never go through: given up, and a dead letter (keyed by the
    row's idempotency key) says why. In ``session`` when given, else in its own transaction."""
    def write(s: Session) -> None:
        mark_attempt_failed(s, [row.id], reason, give_up=True)
        record_dead_letters(s, [DeadLetterItem(
            flow=flow, source=row.target, entity_type=entity_type,
            entity_key=row.idempotency_key, reason=reason,
            payload={"outbox_id": row.id, **(payload or {})})])

    if session is not None:
        write(session)
        return
    with session_scope(engine) as own:
        write(own)


def _dead_letter(
    engine: Engine, items: list[tuple[Write, str]], flow: str, error: InvalidRecordError
) -> None:
    with session_scope(engine) as session:
        mark_attempt_failed(session, [i for i in (getattr(row, "id", None) for row, _ in items)
                                      if i is not None], str(error), give_up=True)
        record_dead_letters(session, [
            DeadLetterItem(
                flow=flow, source=row.target, entity_type=row.entity_type,
                entity_key=row.entity_key,
                reason=f"{row.target} refused {row.entity_type} {row.entity_key}: {reason}",
                payload={"outbox_id": getattr(row, "id", None),
                         "idempotency_key": row.idempotency_key,
                         "operation": row.operation, "payload": scrub(row.payload)},
            )
            for row, reason in items
        ])
