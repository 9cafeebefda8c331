"""The inbox of events pushed to vouchflow (webhooks): stored once, processed in order.

Sites deliver at least once, in any order; the inbox keeps one row per event id, and the
flows read unprocessed events ordered by when they happened at the source.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from canonical import now_utc
from state.models import InboundEvent
from state.store import _insert


def store_inbound(session: Session, *, event_id: str, site: str, type: str,
                  created_at: datetime, received_at: datetime, payload: Any) -> bool:
    """Keep an event; False when its id was seen before (a duplicate changes nothing)."""
    table = InboundEvent.__table__
    stmt = _insert(session, table).values(
        event_id=event_id, site=site, type=type, created_at=created_at,
        received_at=received_at, payload=payload, processed_at=None,
    ).on_conflict_do_nothing(index_elements=["event_id"]).returning(table.c.event_id)
    return session.execute(stmt).first() is not None


def pending_events(session: Session, *, types: Sequence[str] | None = None,
                   site: str | None = None, limit: int = 10_000) -> list[Any]:
    """Unprocessed events, oldest (at the source) first."""
    table = InboundEvent.__table__
    query = select(*table.c).where(table.c.processed_at.is_(None))
    if types:
        query = query.where(table.c.type.in_(list(types)))
    if site:
        query = query.where(table.c.site == site)
    query = query.order_by(table.c.created_at, table.c.event_id).limit(limit)
    return list(session.execute(query))


def mark_processed(session: Session, event_ids: Sequence[str]) -> None:
    table = InboundEvent.__table__
    now = now_utc()
    for start in range(0, len(event_ids), 500):
        session.execute(update(table).where(table.c.event_id.in_(event_ids[start:start + 500]))
                        .values(processed_at=now))
