"""Subscriptions of downstream systems, and how far each has got.

A subscription names event types, a URL and a secret (kept encrypted with the pool's
``Keyring``; shown once, when created). Its progress is a cursor plus a few rows:

- ``settled_seq``: every covered event with ``seq <= settled_seq`` is settled for this
  subscription: delivered, or tracked by a row of ``subscription_delivery``. A worker reads
  from it and moves it forward when a chunk is settled; after a crash the next worker starts
  there again, so an event is sent at least once (a repeat carries the same event id).
- ``subscription_delivery`` rows exist only for events that did not go through at once: a
  failed attempt waiting for its retry (``pending`` with ``next_attempt_at``), an event held
  behind an earlier undelivered event of the same entity (``pending``, no time: it goes when
  its turn comes), or one given up after the bounded attempts (``dead``, with a dead letter,
  holding back the later events of its entity until it is replayed). Rows are kept as
  ``delivered`` once they go through.

Pausing stops delivery and keeps the cursor: the backlog waits. Removing deletes the
subscription with its rows (and resolves its dead letters): nothing more is sent to it.
Only the holder of a subscription's lease delivers it, so two workers (the ``vouchflow
deliver`` worker, a ``deliver-events`` flow run) never send one subscription's events side by
side, which would break the order per entity.
Retention (``prune_events``): an old event is deleted only once every subscription covering
its type has its cursor past it and tracks no row for it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr
from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    case,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from canonical import now_utc
from state.crypto import Keyring
from state.events import (
    OutboundEvent,
    covers,
    latest_seq,
    pending_summary,
    validate_patterns,
)
from state.models import DeadLetter, DeadLetterStatus
from state.store import _chunks, _upsert_many
from state.types import UTCDateTime

DEAD_LETTER_FLOW = "deliver_events"
DEAD_LETTER_ENTITY = "event"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MIN_SECRET_LENGTH = 16


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DEAD = "dead"
    DELIVERED = "delivered"


class Subscription(SQLModel, table=True):
    __tablename__ = "subscription"
    __table_args__ = (UniqueConstraint("name", name="uq_subscription_name"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    url: str = Field(sa_column=Column(String(2000), nullable=False))
    event_types: str = Field(sa_column=Column(String(1000), nullable=False))
    secret_enc: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(max_length=16)
    settled_seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    lease_owner: str | None = Field(default=None, sa_column=Column(String(128), nullable=True))
    lease_until: datetime | None = Field(default=None,
                                         sa_column=Column(UTCDateTime(), nullable=True))
    failing_since: datetime | None = Field(default=None,
                                           sa_column=Column(UTCDateTime(), nullable=True))
    last_error: str | None = Field(default=None, sa_column=Column(String(1000), nullable=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class SubscriptionDelivery(SQLModel, table=True):
    """An event that did not reach a subscriber at the first try (see the module doc)."""

    __tablename__ = "subscription_delivery"
    __table_args__ = (
        Index("ix_subscription_delivery_open", "subscription_id", "status", "event_seq"),
    )

    subscription_id: int = Field(sa_column=Column(
        Integer, ForeignKey("subscription.id", ondelete="CASCADE"), primary_key=True))
    event_seq: int = Field(sa_column=Column(BigInteger, primary_key=True))
    entity: str = Field(sa_column=Column(String(330), nullable=False))
    status: str = Field(max_length=16)
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    next_attempt_at: datetime | None = Field(default=None,
                                             sa_column=Column(UTCDateTime(), nullable=True))
    last_status: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    last_error: str | None = Field(default=None, sa_column=Column(String(2000), nullable=True))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    delivered_at: datetime | None = Field(default=None,
                                          sa_column=Column(UTCDateTime(), nullable=True))


class SubscriptionError(ValueError):
    """A request about subscriptions that cannot be done; the message says why."""


class SubscriptionNotFound(SubscriptionError):
    pass


def display_url(url: str) -> str:
    """A URL fit for logs and tables: no user info, query values hidden (they may be tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = "&".join(f"{kv.partition('=')[0]}=***" for kv in parts.query.split("&") if kv)
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


@dataclass(frozen=True)
class SubscriptionInfo:
    """A subscription without its secret."""

    id: int
    name: str
    url: str
    event_types: tuple[str, ...]
    status: str
    settled_seq: int
    lease_owner: str | None
    lease_until: datetime | None
    failing_since: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def display_url(self) -> str:
        return display_url(self.url)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.display_url,
                "event_types": list(self.event_types), "status": self.status,
                "settled_seq": self.settled_seq, "failing_since": self.failing_since,
                "last_error": self.last_error, "created_at": self.created_at,
                "updated_at": self.updated_at}


def _info(row: Any) -> SubscriptionInfo:
    return SubscriptionInfo(
        id=row.id, name=row.name, url=row.url,
        event_types=tuple(t for t in row.event_types.split(",") if t), status=row.status,
        settled_seq=row.settled_seq, lease_owner=row.lease_owner, lease_until=row.lease_until,
        failing_since=row.failing_since, last_error=row.last_error, created_at=row.created_at,
        updated_at=row.updated_at)


def _check_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SubscriptionError(f"the URL must be http(s)://host/...: {display_url(url)!r}")
    if len(url) > 2000:
        raise SubscriptionError("the URL is longer than 2000 characters")
    return url.strip()


Start = Literal["now", "beginning"] | int


def create_subscription(
    session: Session, keyring: Keyring, *, name: str, url: str, event_types: Iterable[str],
    secret: str | SecretStr | None = None, start: Start = "now",
) -> tuple[SubscriptionInfo, SecretStr]:
    """Register a subscriber; returns it with its secret (generated unless given), which is
    stored encrypted and never shown again. ``start``: deliver events recorded from now on
    (default), from the beginning of the event log, or after a given sequence number."""
    if not _NAME.match(name or ""):
        raise SubscriptionError(f"name {name!r} must match [a-z0-9][a-z0-9_-]{{0,63}}")
    try:
        types = validate_patterns(event_types)
    except ValueError as exc:
        raise SubscriptionError(str(exc)) from None
    plain = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if plain is None:
        plain = "whsec_" + secrets.token_urlsafe(32)
    elif len(plain) < MIN_SECRET_LENGTH:
        raise SubscriptionError(f"the secret must have at least {MIN_SECRET_LENGTH} characters")
    table = Subscription.__table__
    if session.execute(select(table.c.id).where(table.c.name == name)).first() is not None:
        raise SubscriptionError(f"a subscription named {name!r} exists already")
    if start == "now":
        settled = latest_seq(session)
    elif start == "beginning":
        settled = 0
    elif isinstance(start, int) and start >= 0:
        settled = start
    else:
        raise SubscriptionError(f"start must be 'now', 'beginning' or a sequence number, "
                                f"not {start!r}")
    now = now_utc()
    session.execute(table.insert().values(
        name=name, url=_check_url(url), event_types=",".join(types),
        secret_enc=keyring.encrypt(plain), status=SubscriptionStatus.ACTIVE.value,
        settled_seq=settled, created_at=now, updated_at=now))
    return get_subscription(session, name), SecretStr(plain)


def get_subscription(session: Session, name: str) -> SubscriptionInfo:
    table = Subscription.__table__
    row = session.execute(select(*table.c).where(table.c.name == name)).first()
    if row is None:
        raise SubscriptionNotFound(f"no subscription named {name!r}")
    return _info(row)


def list_subscriptions(
    session: Session, *, status: str | None = None, names: Sequence[str] | None = None,
) -> list[SubscriptionInfo]:
    table = Subscription.__table__
    query = select(*table.c).order_by(table.c.name)
    if status:
        query = query.where(table.c.status == status)
    if names:
        query = query.where(table.c.name.in_(list(names)))
    return [_info(r) for r in session.execute(query)]


def load_secret(session: Session, keyring: Keyring, subscription_id: int) -> SecretStr:
    table = Subscription.__table__
    token = session.scalar(select(table.c.secret_enc).where(table.c.id == subscription_id))
    if token is None:
        raise SubscriptionNotFound(f"no subscription with id {subscription_id}")
    return SecretStr(keyring.decrypt(token))


def set_status(session: Session, name: str, status: SubscriptionStatus) -> SubscriptionInfo:
    """Pause (the backlog waits; the worker stops at its next chunk) or resume."""
    table = Subscription.__table__
    result = session.execute(update(table).where(table.c.name == name)
                             .values(status=status.value, updated_at=now_utc()))
    if not result.rowcount:
        raise SubscriptionNotFound(f"no subscription named {name!r}")
    return get_subscription(session, name)


def dead_letter_source(name: str) -> str:
    return f"subscriber:{name}"


def remove_subscription(session: Session, name: str) -> None:
    """Delete a subscription with its delivery rows; its open dead letters are resolved (there
    is no one left to send them to)."""
    table = Subscription.__table__
    sub = get_subscription(session, name)
    session.execute(delete(SubscriptionDelivery.__table__)
                    .where(SubscriptionDelivery.__table__.c.subscription_id == sub.id))
    session.execute(delete(table).where(table.c.id == sub.id))
    session.execute(update(DeadLetter).where(
        DeadLetter.flow == DEAD_LETTER_FLOW, DeadLetter.source == dead_letter_source(name),
        DeadLetter.status != DeadLetterStatus.RESOLVED).values(status=DeadLetterStatus.RESOLVED))


# leases -------------------------------------------------------------------------------------
def acquire_lease(session: Session, subscription_id: int, owner: str, ttl_s: float) -> bool:
    """Take (or renew) the right to deliver an active subscription; False when another owner
    holds an unexpired lease or the subscription is paused or gone."""
    table = Subscription.__table__
    now = now_utc()
    result = session.execute(update(table).where(
        table.c.id == subscription_id, table.c.status == SubscriptionStatus.ACTIVE.value,
        or_(table.c.lease_owner.is_(None), table.c.lease_owner == owner,
            table.c.lease_until < now),
    ).values(lease_owner=owner, lease_until=now + timedelta(seconds=ttl_s)))
    return bool(result.rowcount)


def release_lease(session: Session, subscription_id: int, owner: str) -> None:
    table = Subscription.__table__
    session.execute(update(table).where(table.c.id == subscription_id,
                                       table.c.lease_owner == owner)
                    .values(lease_owner=None, lease_until=None))


# progress -----------------------------------------------------------------------------------
@dataclass
class DeliveryRow:
    event_seq: int
    entity: str
    status: str = DeliveryStatus.PENDING.value
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None

    @property
    def open(self) -> bool:
        return self.status != DeliveryStatus.DELIVERED.value


_ROW_FIELDS = ("event_seq", "entity", "status", "attempts", "next_attempt_at", "last_status",
               "last_error", "delivered_at")


def open_deliveries(session: Session, subscription_id: int) -> list[DeliveryRow]:
    """Pending and dead rows of a subscription, oldest event first."""
    t = SubscriptionDelivery.__table__
    rows = session.execute(
        select(*(t.c[name] for name in _ROW_FIELDS)).where(
            t.c.subscription_id == subscription_id,
            t.c.status.in_([DeliveryStatus.PENDING.value, DeliveryStatus.DEAD.value]))
        .order_by(t.c.event_seq))
    return [DeliveryRow(*r) for r in rows]


def tracked_seqs(session: Session, subscription_id: int, lo: int, hi: int) -> set[int]:
    """Events in ``lo..hi`` that already have a row (whatever its status)."""
    t = SubscriptionDelivery.__table__
    return set(session.scalars(select(t.c.event_seq).where(
        t.c.subscription_id == subscription_id, t.c.event_seq >= lo, t.c.event_seq <= hi)))


def delivery_rows(session: Session, subscription_id: int, seqs: Iterable[int]
                  ) -> dict[int, DeliveryRow]:
    t = SubscriptionDelivery.__table__
    found: dict[int, DeliveryRow] = {}
    for part in _chunks(sorted(set(seqs))):
        for r in session.execute(select(*(t.c[name] for name in _ROW_FIELDS)).where(
                t.c.subscription_id == subscription_id, t.c.event_seq.in_(part))):
            found[r.event_seq] = DeliveryRow(*r)
    return found


ProgressResult = Literal["ok", "paused", "lost"]


def save_progress(
    session: Session, subscription_id: int, owner: str, *, settled_seq: int,
    rows: Sequence[DeliveryRow], failing_since: datetime | None, last_error: str | None,
    lease_ttl_s: float,
) -> ProgressResult:
    """Record a settled chunk: the cursor (never moved back), the rows it touched, the
    subscriber's health, and a renewed lease. ``lost`` (nothing written) when this owner no
    longer holds the lease or the subscription is gone; ``paused`` when an operator paused it
    meanwhile (the progress is kept; the caller stops)."""
    table = Subscription.__table__
    now = now_utc()
    status = session.scalar(select(table.c.status).where(
        table.c.id == subscription_id, table.c.lease_owner == owner))
    if status is None:
        return "lost"
    session.execute(update(table).where(table.c.id == subscription_id).values(
        settled_seq=case((table.c.settled_seq < settled_seq, settled_seq),
                         else_=table.c.settled_seq),
        failing_since=failing_since, last_error=None if last_error is None else last_error[:1000],
        lease_until=now + timedelta(seconds=lease_ttl_s)))
    if rows:
        _upsert_many(session, SubscriptionDelivery, [
            {"subscription_id": subscription_id, "event_seq": r.event_seq, "entity": r.entity,
             "status": r.status, "attempts": r.attempts, "next_attempt_at": r.next_attempt_at,
             "last_status": r.last_status,
             "last_error": None if r.last_error is None else r.last_error[:2000],
             "updated_at": now, "delivered_at": r.delivered_at}
            for r in rows], ["subscription_id", "event_seq"],
            update=["status", "attempts", "next_attempt_at", "last_status", "last_error",
                    "updated_at", "delivered_at"])
    return "paused" if status != SubscriptionStatus.ACTIVE.value else "ok"


def requeue(session: Session, subscription_id: int, seqs: Iterable[int]) -> int:
    """Dead rows back to pending with a fresh attempt budget, due now (dead-letter replay)."""
    t = SubscriptionDelivery.__table__
    done = 0
    now = now_utc()
    for part in _chunks(sorted(set(seqs))):
        result = session.execute(update(t).where(
            t.c.subscription_id == subscription_id, t.c.event_seq.in_(part),
            t.c.status == DeliveryStatus.DEAD.value,
        ).values(status=DeliveryStatus.PENDING.value, attempts=0, next_attempt_at=now,
                 updated_at=now))
        done += result.rowcount or 0
    return done


# what operators see -------------------------------------------------------------------------
@dataclass(frozen=True)
class SubscriptionLag:
    name: str
    status: str
    url: str
    event_types: tuple[str, ...]
    settled_seq: int
    backlog: int
    """Covered events after the cursor (not tried yet)."""
    retrying: int
    """Events waiting for a retry, or behind an earlier undelivered event of their entity."""
    dead: int
    oldest_undelivered_at: datetime | None
    lag_s: float
    """How long the oldest undelivered covered event has waited (0 when none waits)."""
    failing_since: datetime | None
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "url": self.url,
                "event_types": list(self.event_types), "settled_seq": self.settled_seq,
                "backlog": self.backlog, "retrying": self.retrying, "dead": self.dead,
                "oldest_undelivered_at": self.oldest_undelivered_at,
                "lag_s": round(self.lag_s, 3), "failing_since": self.failing_since,
                "last_error": self.last_error}


def subscription_lags(session: Session, names: Sequence[str] | None = None
                      ) -> list[SubscriptionLag]:
    d, e = SubscriptionDelivery.__table__, OutboundEvent.__table__
    now = now_utc()
    out: list[SubscriptionLag] = []
    for sub in list_subscriptions(session, names=names):
        backlog, oldest = pending_summary(session, after=sub.settled_seq,
                                          patterns=sub.event_types)
        counts = dict(session.execute(
            select(d.c.status, func.count()).where(
                d.c.subscription_id == sub.id, d.c.status != DeliveryStatus.DELIVERED.value)
            .group_by(d.c.status)).all())
        row_oldest = session.scalar(
            select(func.min(e.c.recorded_at)).select_from(d.join(e, e.c.seq == d.c.event_seq))
            .where(d.c.subscription_id == sub.id,
                   d.c.status != DeliveryStatus.DELIVERED.value))
        times = [t for t in (oldest, row_oldest) if t is not None]
        first = min(times) if times else None
        out.append(SubscriptionLag(
            name=sub.name, status=sub.status, url=sub.display_url, event_types=sub.event_types,
            settled_seq=sub.settled_seq, backlog=backlog,
            retrying=int(counts.get(DeliveryStatus.PENDING.value, 0)),
            dead=int(counts.get(DeliveryStatus.DEAD.value, 0)), oldest_undelivered_at=first,
            lag_s=max(0.0, (now - first).total_seconds()) if first else 0.0,
            failing_since=sub.failing_since, last_error=sub.last_error))
    return out


# retention ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PruneReport:
    cutoff: datetime
    deleted: dict[str, int]
    """Events deleted, by type."""
    kept: int
    """Events older than the cutoff kept because a subscription still needs them."""

    @property
    def total(self) -> int:
        return sum(self.deleted.values())

    def as_dict(self) -> dict[str, Any]:
        return {"cutoff": self.cutoff, "deleted": self.total, "by_type": dict(self.deleted),
                "kept": self.kept}


def prune_events(session: Session, *, older_than: timedelta,
                 now: datetime | None = None) -> PruneReport:
    """Delete events recorded before ``now - older_than`` that no subscription needs any
    more: for each type, only events at or below the cursor (``settled_seq``) of every
    subscription covering it, active or paused, and none that a subscription still tracks
    (a delivery waiting for its retry, held behind its entity, or dead and replayable). A
    type no subscription covers is kept ``older_than`` only. Cursors only move forward, so a
    cursor read here that has moved on meanwhile deletes less, never more. Delivered rows of
    the deleted events go with them. Sequence numbers are never given out again."""
    if older_than < timedelta(0):
        raise SubscriptionError("older_than must not be negative")
    cutoff = (now or now_utc()) - older_than
    e, d = OutboundEvent.__table__, SubscriptionDelivery.__table__
    subs = list_subscriptions(session)
    tracked = (select(d.c.event_seq).where(
        d.c.event_seq == e.c.seq,
        d.c.status.in_([DeliveryStatus.PENDING.value, DeliveryStatus.DEAD.value]))
        .exists())
    types = sorted(session.scalars(select(e.c.type).where(e.c.recorded_at < cutoff)
                                   .distinct()))
    deleted: dict[str, int] = {}
    for type_ in types:
        bounds = [s.settled_seq for s in subs if covers(s.event_types, type_)]
        query = delete(e).where(e.c.type == type_, e.c.recorded_at < cutoff, ~tracked)
        if bounds:
            query = query.where(e.c.seq <= min(bounds))
        gone = session.execute(query).rowcount or 0
        if gone:
            deleted[type_] = gone
    if deleted:
        session.execute(delete(d).where(
            d.c.status == DeliveryStatus.DELIVERED.value,
            ~select(e.c.seq).where(e.c.seq == d.c.event_seq).exists()))
    kept = int(session.scalar(select(func.count()).select_from(e)
                              .where(e.c.recorded_at < cutoff)) or 0)
    return PruneReport(cutoff=cutoff, deleted=deleted, kept=kept)
