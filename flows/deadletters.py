"""Replaying dead letters: send quarantined records through the step that refused them.

Each flow registers a handler for the (flow, source kind, entity type) of the dead letters it
writes. A handler takes the dead-letter rows and returns the ids that went through this time;
the others stay open with their new reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, select

from state.db import session_scope
from state.models import DeadLetter, DeadLetterStatus
from state.store import mark_replayed

Handler = Callable[[Engine, Sequence[DeadLetter]], Awaitable[set[int]]]
_handlers: dict[tuple[str, str, str], Handler] = {}


def source_kind(source: str) -> str:
    """``wallet:sg1`` -> ``wallet``: handlers are registered per kind of source."""
    return source.split(":", 1)[0]


def replay_handler(flow: str, source_kind_: str, entity_type: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _handlers[(flow, source_kind_, entity_type)] = fn
        return fn
    return register


@dataclass
class ReplayReport:
    attempted: int = 0
    succeeded: int = 0
    still_failing: int = 0
    unsupported: list[int] = field(default_factory=list)


def _load_handlers() -> None:
    # importing the flow modules registers their handlers
    import flows.subscribers
    import flows.sync_catalog  # noqa: F401


async def replay(
    engine: Engine, *, ids: Sequence[int] | None = None, source: str | None = None,
    flow: str | None = None, include_replayed: bool = False,
) -> ReplayReport:
    _load_handlers()
    statuses = [DeadLetterStatus.OPEN] + ([DeadLetterStatus.REPLAYED] if include_replayed else [])
    query = select(DeadLetter).order_by(DeadLetter.id)
    if ids:
        query = query.where(DeadLetter.id.in_(list(ids)))
    else:
        query = query.where(DeadLetter.status.in_(statuses))
    if source:
        query = query.where(DeadLetter.source == source)
    if flow:
        query = query.where(DeadLetter.flow == flow)
    with session_scope(engine) as session:
        letters = list(session.scalars(query))
    report = ReplayReport()
    groups: dict[tuple[str, str, str], list[DeadLetter]] = {}
    for letter in letters:
        groups.setdefault((letter.flow, source_kind(letter.source), letter.entity_type),
                          []).append(letter)
    for key, group in groups.items():
        handler = _handlers.get(key)
        if handler is None:
            report.unsupported.extend(d.id for d in group if d.id is not None)
            continue
        report.attempted += len(group)
        succeeded = await handler(engine, group)
        with session_scope(engine) as session:
            mark_replayed(session, [d.id for d in group if d.id is not None],
                          succeeded=sorted(succeeded))
        report.succeeded += len(succeeded)
        report.still_failing += len(group) - len(succeeded)
    return report
