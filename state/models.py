"""The state tables. Each says what part of "resume without duplicates" it carries."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, Index, Integer, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from state.types import JSONText, UTCDateTime


def _ts(**kw: Any) -> Any:
    return Field(sa_column=Column(UTCDateTime(), **kw))


class Watermark(SQLModel, table=True):
    """How far a flow has read a source, per scope (a site, a record type, or '')."""

    __tablename__ = "watermark"

    flow: str = Field(primary_key=True, max_length=64)
    source: str = Field(primary_key=True, max_length=64)
    scope: str = Field(primary_key=True, max_length=128, default="")
    value: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class Xref(SQLModel, table=True):
    """Which record of an external system is which canonical entity."""

    __tablename__ = "xref"
    __table_args__ = (
        UniqueConstraint("system", "entity_type", "external_id", name="uq_xref_external"),
        Index("ix_xref_canonical", "system", "entity_type", "canonical_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    system: str = Field(max_length=64)
    entity_type: str = Field(max_length=64)
    external_id: str = Field(max_length=255)
    canonical_id: str = Field(max_length=255)
    updated_at: datetime = _ts(nullable=False)


class Fingerprint(SQLModel, table=True):
    """The content hash of what a target last confirmed, so unchanged records are skipped."""

    __tablename__ = "fingerprint"

    target: str = Field(primary_key=True, max_length=128)
    entity_type: str = Field(primary_key=True, max_length=64)
    entity_key: str = Field(primary_key=True, max_length=255)
    digest: str = Field(max_length=64)
    updated_at: datetime = _ts(nullable=False)


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    SUPERSEDED = "superseded"
    FAILED = "failed"
    """Gave up after the bounded attempts; a dead letter holds the reason."""


class OutboxMessage(SQLModel, table=True):
    """A write owed to another system, keyed by the idempotency key the target will see.

    Written in the same transaction as the state change it announces; delivery marks it sent.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("target", "idempotency_key", name="uq_outbox_key"),
        Index("ix_outbox_pending", "target", "status", "id"),
        Index("ix_outbox_entity", "target", "entity_type", "entity_key", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    target: str = Field(max_length=128)
    operation: str = Field(max_length=64)
    idempotency_key: str = Field(max_length=255)
    entity_type: str = Field(max_length=64)
    entity_key: str = Field(max_length=255)
    payload: Any = Field(sa_column=Column(JSONText(), nullable=False))
    status: str = Field(default=OutboxStatus.PENDING, max_length=16)
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    last_error: str | None = Field(default=None, sa_column=Column(String(2000)))
    response: Any = Field(default=None, sa_column=Column(JSONText(), nullable=True))
    created_at: datetime = _ts(nullable=False)
    sent_at: datetime | None = _ts(nullable=True)


class DeadLetterStatus(StrEnum):
    OPEN = "open"
    REPLAYED = "replayed"
    RESOLVED = "resolved"


class DeadLetter(SQLModel, table=True):
    """A record that could not be processed, kept with its reason until someone acts.

    One row per (flow, source, entity): seeing the same bad record again bumps ``occurrences``
    and ``last_seen`` instead of adding a row, so re-runs do not inflate the count.
    """

    __tablename__ = "dead_letter"
    __table_args__ = (
        UniqueConstraint("flow", "source", "entity_type", "entity_key", name="uq_dead_letter"),
        Index("ix_dead_letter_status", "status", "source"),
    )

    id: int | None = Field(default=None, primary_key=True)
    flow: str = Field(max_length=64)
    source: str = Field(max_length=64)
    entity_type: str = Field(max_length=64)
    entity_key: str = Field(max_length=255)
    reason: str = Field(sa_column=Column(String(4000), nullable=False))
    payload: Any = Field(sa_column=Column(JSONText(), nullable=True))
    status: str = Field(default=DeadLetterStatus.OPEN, max_length=16)
    first_seen: datetime = _ts(nullable=False)
    last_seen: datetime = _ts(nullable=False)
    occurrences: int = Field(default=1, sa_column=Column(Integer, nullable=False, default=1))
    replay_count: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    last_replayed_at: datetime | None = _ts(nullable=True)


class LedgerStatus(StrEnum):
    STARTED = "started"
    DONE = "done"
    FAILED = "failed"


class RunLedger(SQLModel, table=True):
    """What each run did, step by step: the record a retry reads to skip finished work."""

    __tablename__ = "run_ledger"
    __table_args__ = (
        UniqueConstraint("flow", "run_key", "step", name="uq_run_ledger_step"),
        Index("ix_run_ledger_flow", "flow", "started_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    flow: str = Field(max_length=64)
    run_key: str = Field(max_length=128)
    step: str = Field(max_length=255)
    status: str = Field(default=LedgerStatus.STARTED, max_length=16)
    counts: Any = Field(default=None, sa_column=Column(JSONText(), nullable=True))
    detail: str | None = Field(default=None, sa_column=Column(String(4000)))
    started_at: datetime = _ts(nullable=False)
    finished_at: datetime | None = _ts(nullable=True)


ALL_TABLES = [Watermark, Xref, Fingerprint, OutboxMessage, DeadLetter, RunLedger]
