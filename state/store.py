"""Operations on the state tables, shared by every flow.

Everything here takes an open ``Session`` so callers decide what shares a transaction (an
outbox row must commit with the change it announces). Bulk operations work on whole chunks and
use the database's own upsert, never a read-modify-write loop per record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import repeat
from typing import Any

from sqlalchemy import (
    String,
    Text,
    and_,
    any_,
    bindparam,
    delete,
    false,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from canonical import now_utc
from canonical.jsontext import json_bytes
from state.models import (
    DeadLetter,
    DeadLetterStatus,
    Fingerprint,
    LedgerStatus,
    OutboxMessage,
    OutboxStatus,
    RunLedger,
    Watermark,
    Xref,
)

IN_CHUNK = 500
"""Keys per IN (...) query: well under every database's parameter limit."""


def _chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def of_keys(session: Session, query: Any, column: Any, keys: Iterable[str] | None) -> Any:
    """``query`` limited to the rows whose ``column`` is one of ``keys`` (``_in_keys``: every
    key in one bound value, however many), or unlimited when ``keys`` is None. No keys: no
    rows, without the database looking for any."""
    if keys is None:
        return query
    wanted = list(keys)
    return query.where(_in_keys(session, column, wanted) if wanted else false())


def _in_keys(session: Session, column: Any, keys: Sequence[str]) -> Any:
    """``column IN (keys)`` with every key in one bound value: a JSON array that SQLite takes
    apart with ``json_each``, an array on PostgreSQL (``= ANY``). An ``IN`` list of bound
    keys costs SQLAlchemy a parameter of its own per key at every execution (and several
    statements per thousand keys); this is one statement, compiled once, whatever the count."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam("vf_keys", list(keys), unique=True,
                                        type_=postgresql.ARRAY(String())))
    text = json_bytes(list(keys), default=str).decode()
    listed = func.json_each(bindparam("vf_keys", text, type_=Text(), unique=True))
    return column.in_(select(listed.table_valued("value").c.value))


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"state store does not support {dialect}")


def _upsert_many(
    session: Session,
    model: Any,
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    *,
    update: Sequence[str] = (),
    extra_set: Mapping[str, Any] | None = None,
    where: Callable[[Any, Any], Any] | None = None,
    reuse: bool = False,
) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE (or NOTHING) for many rows at once.

    One statement compiled once and sent with executemany parameters: compiling a fresh
    multi-row VALUES clause for every chunk costs more than the database work itself.
    ``reuse``: the statement depends only on the table, ``keys``, ``update`` and ``where``
    (a module-level function, not a lambda made per call, and no ``extra_set``), so it is
    built and compiled once per dialect and kept for every later chunk (a bulk sync makes
    hundreds of these writes).
    """
    if not rows:
        return
    table = model.__table__
    dialect = session.get_bind().dialect
    shape = (type(dialect), dialect.paramstyle, table, tuple(keys), tuple(update),
             where) if reuse else None
    if shape is not None and extra_set:
        raise ValueError("a statement with extra_set expressions cannot be reused")
    stmt = _upserts.get(shape) if shape is not None else None
    if stmt is None:
        stmt = _insert(session, table)
        set_ = {name: stmt.excluded[name] for name in update}
        set_.update(extra_set or {})
        if set_:
            stmt = stmt.on_conflict_do_update(
                index_elements=list(keys), set_=set_,
                where=where(table, stmt.excluded) if where else None,
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
        if shape is not None:
            stmt = _upserts.setdefault(shape, stmt)
    _executemany(session, stmt, rows, shape=shape)


_upserts: dict[tuple[Any, ...], Any] = {}
"""``_upsert_many``'s statements by shape (dialect, table, keys, ...): one per bulk write."""
_compiled: dict[tuple[Any, ...], Any] = {}
"""``_executemany``'s compilations of those statements, by shape and parameter names."""


def _executemany(session: Session, stmt: Any, rows: Sequence[Mapping[str, Any]], *,
                 shape: tuple[Any, ...] | None = None) -> None:
    """``session.execute(stmt, rows)`` for rows that all have the same keys, without
    SQLAlchemy's per-row parameter assembly: the statement is compiled once (for a ``shape``
    of ``_upserts``, once per process and parameter names), every value goes through its
    column type's bind processor (a datetime seen before is converted once: the rows of a
    chunk share their ``now``), and the driver's ``executemany`` gets plain tuples (or
    dicts). Statements this does not cover take the ordinary path."""
    conn = session.connection()
    names = list(rows[0])
    key = None if shape is None else (shape, tuple(names))
    compiled = _compiled.get(key) if key is not None else None
    if compiled is None:
        compiled = stmt.compile(dialect=conn.dialect, column_keys=names)
        if key is not None:
            _compiled[key] = compiled
    processors = getattr(compiled, "_bind_processors", None)
    if (processors is None or compiled.literal_execute_params or compiled.post_compile_params
            or any(len(r) != len(names) for r in rows)):
        session.execute(stmt, [dict(r) for r in rows])
        return
    base = compiled.construct_params(dict(rows[0]))
    order = list(compiled.positiontup or []) if compiled.positional else list(base)
    missing = [n for n in order if n not in base]
    if missing or not set(names) <= set(base):
        session.execute(stmt, [dict(r) for r in rows])
        return
    columns: dict[str, list[Any]] = {}
    for name in names:
        values = [row[name] for row in rows]
        process = processors.get(name)
        if process is not None:
            done: dict[datetime, Any] = {}  # the rows of a chunk share their ``now``
            values = [(done[v] if v in done else done.setdefault(v, process(v)))
                      if isinstance(v, datetime) else process(v) for v in values]
        columns[name] = values
    fixed = {n: processors[n](base[n]) if processors.get(n) is not None else base[n]
             for n in order if n not in columns}
    if compiled.positional:
        params: list[Any] = list(zip(*(columns[n] if n in columns else repeat(fixed[n])
                                       for n in order), strict=False))
    else:
        params = [{**fixed, **dict(zip(names, values, strict=True))}
                  for values in zip(*(columns[n] for n in names), strict=True)]
    conn.exec_driver_sql(compiled.string, params)


def _decimal_only(value: Any) -> str:
    if type(value) is Decimal:
        return str(value)
    raise TypeError(type(value).__name__)


def canonical_json(data: Any) -> str:
    """``data`` exactly as ``state.types.JSONText`` stores it and ``fingerprint``
    hashes it (``json.dumps`` with sorted keys, no spaces, ASCII only, anything else by
    ``str``), for data without floats (a float's text differs in places: ``1e+16``, ``NaN``):
    canonical dumps of models such as a SKU, and payloads built from them.

    Made by orjson at a fraction of the cost, and by ``json.dumps`` itself whenever orjson's
    text could differ: a character outside printable ASCII (``json`` escapes it, orjson
    writes it as UTF-8), a type other than str, int, bool, None, list, tuple, dict and
    Decimal (subclasses included: enums, str subclasses), a key that is not a string, an
    integer beyond 64 bits."""
    return _canonical_bytes(data).decode()  # ASCII either way


def _canonical_bytes(data: Any) -> bytes:
    """``canonical_json``'s text as bytes (what a digest hashes, without decoding orjson's
    bytes and encoding them again)."""
    return json_bytes(data, default=str, sort_keys=True, fast_default=_decimal_only,
                      exact_types=True)


def canonical_fingerprint(payload: Any) -> str:
    """``fingerprint`` of a payload without floats (a canonical dump, or what is built from
    one), from ``canonical_json``'s text: the same digest at a fraction of the cost."""
    return hashlib.sha256(_canonical_bytes(payload)).hexdigest()


def fingerprint(payload: Any) -> str:
    """A stable content hash: canonical JSON (sorted keys, no spaces), SHA-256 hex."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# watermarks ---------------------------------------------------------------------------------
def get_watermark(session: Session, flow: str, source: str, scope: str = "") -> datetime | None:
    row = session.get(Watermark, (flow, source, scope))
    return row.value if row else None


def set_watermark(
    session: Session, flow: str, source: str, value: datetime, scope: str = ""
) -> None:
    """Store a watermark; it never moves backwards (a slow old run cannot undo a newer one)."""
    now = now_utc()
    stmt = _insert(session, Watermark).values(
        flow=flow, source=source, scope=scope, value=value, updated_at=now
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["flow", "source", "scope"],
        set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
        where=Watermark.__table__.c.value < stmt.excluded.value,
    )
    session.execute(stmt)


# cross-reference ----------------------------------------------------------------------------
def upsert_xrefs(
    session: Session, system: str, entity_type: str, pairs: Mapping[str, str]
) -> None:
    """Record external id -> canonical id for many records at once."""
    if not pairs:
        return
    now = now_utc()
    rows = [
        {"system": system, "entity_type": entity_type, "external_id": ext,
         "canonical_id": canon, "updated_at": now}
        for ext, canon in pairs.items()
    ]
    _upsert_many(session, Xref, rows, ["system", "entity_type", "external_id"],
                 update=["canonical_id", "updated_at"], where=_canonical_id_changed, reuse=True)


def _canonical_id_changed(table: Any, excluded: Any) -> Any:
    """Only a cross-reference that now points elsewhere is rewritten (a module function: the
    statement is built once, see ``_upsert_many``)."""
    return table.c.canonical_id != excluded.canonical_id


def _lookup(
    session: Session, key_col: Any, value_col: Any, conditions: Sequence[Any],
    keys: Iterable[str],
) -> dict[str, str]:
    """key -> value for many keys, read at once under the given conditions."""
    query = select(key_col, value_col).where(*conditions)
    rows = session.execute(of_keys(session, query, key_col, dict.fromkeys(keys)))
    return {key: value for key, value in rows}


def canonical_ids(
    session: Session, system: str, entity_type: str, external_ids: Iterable[str]
) -> dict[str, str]:
    return _lookup(session, Xref.external_id, Xref.canonical_id,
                   [Xref.system == system, Xref.entity_type == entity_type], external_ids)


def external_ids(
    session: Session, system: str, entity_type: str, canonical_ids_: Iterable[str]
) -> dict[str, str]:
    return _lookup(session, Xref.canonical_id, Xref.external_id,
                   [Xref.system == system, Xref.entity_type == entity_type], canonical_ids_)


# fingerprints -------------------------------------------------------------------------------
def load_fingerprints(
    session: Session, target: str, entity_type: str, keys: Iterable[str]
) -> dict[str, str]:
    return _lookup(session, Fingerprint.entity_key, Fingerprint.digest,
                   [Fingerprint.target == target, Fingerprint.entity_type == entity_type], keys)


def load_fingerprints_for_targets(
    session: Session, targets: Sequence[str], entity_type: str, keys: Iterable[str] | None
) -> dict[str, dict[str, str]]:
    """Fingerprints of the same keys at several targets, in one query; ``keys`` None: every
    key (one pass over the targets' rows, for a caller about to ask for most of them)."""
    found: dict[str, dict[str, str]] = {t: {} for t in targets}
    if not targets:
        return found
    query = select(Fingerprint.target, Fingerprint.entity_key, Fingerprint.digest).where(
        Fingerprint.target.in_(list(targets)), Fingerprint.entity_type == entity_type)
    wanted = None if keys is None else dict.fromkeys(keys)
    for target, key, digest in session.execute(
            of_keys(session, query, Fingerprint.entity_key, wanted)):
        found[target][key] = digest
    return found


def forget_fingerprints(
    session: Session, target: str, entity_type: str, keys: Iterable[str]
) -> None:
    """Drop fingerprints so the next run sends these records again."""
    for part in _chunks(list(keys)):
        session.execute(
            delete(Fingerprint).where(
                Fingerprint.target == target, Fingerprint.entity_type == entity_type,
                Fingerprint.entity_key.in_(part),
            )
        )


def save_fingerprints(
    session: Session, target: str, entity_type: str, digests: Mapping[str, str]
) -> None:
    if not digests:
        return
    now = now_utc()
    rows = [
        {"target": target, "entity_type": entity_type, "entity_key": key, "digest": digest,
         "updated_at": now}
        for key, digest in digests.items()
    ]
    _upsert_many(session, Fingerprint, rows, ["target", "entity_type", "entity_key"],
                 update=["digest", "updated_at"], reuse=True)


# outbox -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutboxItem:
    target: str
    operation: str
    idempotency_key: str
    entity_type: str
    entity_key: str
    payload: Any


def enqueue(session: Session, items: Sequence[OutboxItem]) -> int:
    """Add writes to the outbox; a key already there is left as it is (so re-running the step
    that produced it is harmless). Older pending writes of the same entity to the same target
    are superseded: only the newest state needs to reach it. Returns rows added."""
    if not items:
        return 0
    now = now_utc()
    added = 0
    for part in _chunks(list(items)):
        existing = {
            (target, key) for target, key in session.execute(
                select(OutboxMessage.target, OutboxMessage.idempotency_key).where(
                    tuple_(OutboxMessage.target, OutboxMessage.idempotency_key).in_(
                        [(i.target, i.idempotency_key) for i in part]
                    )
                )
            )
        }
        fresh = [i for i in part if (i.target, i.idempotency_key) not in existing]
        fresh = list({(i.target, i.idempotency_key): i for i in fresh}.values())
        if not fresh:
            continue
        # supersede older pending rows for the same entities (newest state wins)
        by_target: dict[tuple[str, str], list[str]] = {}
        for i in fresh:
            by_target.setdefault((i.target, i.entity_type), []).append(i.entity_key)
        for (target, entity_type), keys in by_target.items():
            session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.target == target,
                    OutboxMessage.entity_type == entity_type,
                    OutboxMessage.entity_key.in_(keys),
                    OutboxMessage.status == OutboxStatus.PENDING,
                )
                .values(status=OutboxStatus.SUPERSEDED)
            )
        table = OutboxMessage.__table__
        stmt = _insert(session, table).on_conflict_do_nothing(
            index_elements=["target", "idempotency_key"]
        ).returning(table.c.id)
        result = session.execute(stmt, [
            {"target": i.target, "operation": i.operation, "idempotency_key": i.idempotency_key,
             "entity_type": i.entity_type, "entity_key": i.entity_key, "payload": i.payload,
             "status": OutboxStatus.PENDING, "attempts": 0, "created_at": now}
            for i in fresh
        ])
        added += len(result.all())
    return added


def pending_outbox(
    session: Session,
    target: str,
    *,
    operation: str | None = None,
    keys: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[Any]:
    """Pending writes for a target, oldest first (so each entity's writes keep their order).

    Rows come back as light read-only records (attribute access, as on the model) rather than
    ORM objects: delivery reads thousands of them and changes them with bulk updates.
    """
    table = OutboxMessage.__table__
    query = select(*table.c).where(
        table.c.target == target, table.c.status == OutboxStatus.PENDING
    )
    if operation is not None:
        query = query.where(table.c.operation == operation)
    if keys is not None:
        rows: list[Any] = []
        for part in _chunks(list(keys)):
            rows.extend(session.execute(query.where(table.c.idempotency_key.in_(part))))
        rows.sort(key=lambda r: r.id)
        return rows[:limit] if limit else rows
    query = query.order_by(table.c.id)
    if limit:
        query = query.limit(limit)
    return list(session.execute(query))


def mark_sent(
    session: Session, ids: Sequence[int], *, responses: Mapping[int, Any] | None = None
) -> None:
    now = now_utc()
    responses = responses or {}
    plain = [i for i in ids if i not in responses]
    for part in _chunks(plain):
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id.in_(part))
            .values(status=OutboxStatus.SENT, sent_at=now,
                    attempts=OutboxMessage.attempts + 1, last_error=None)
        )
    for msg_id, response in responses.items():
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == msg_id)
            .values(status=OutboxStatus.SENT, sent_at=now, response=response,
                    attempts=OutboxMessage.attempts + 1, last_error=None)
        )


def mark_attempt_failed(
    session: Session, ids: Sequence[int], error: str, *, give_up: bool = False
) -> None:
    for part in _chunks(list(ids)):
        values: dict[str, Any] = {
            "attempts": OutboxMessage.attempts + 1, "last_error": error[:2000],
        }
        if give_up:
            values["status"] = OutboxStatus.FAILED
        session.execute(update(OutboxMessage).where(OutboxMessage.id.in_(part)).values(**values))


def outbox_counts(session: Session, target_prefix: str = "") -> dict[tuple[str, str], int]:
    rows = session.execute(
        select(OutboxMessage.target, OutboxMessage.status, func.count())
        .where(OutboxMessage.target.startswith(target_prefix))
        .group_by(OutboxMessage.target, OutboxMessage.status)
    )
    return {(t, s): n for t, s, n in rows}


# dead letters -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeadLetterItem:
    flow: str
    source: str
    entity_type: str
    entity_key: str
    reason: str
    payload: Any


DeadLetterListener = Callable[[Sequence[DeadLetterItem]], None]
_dead_letter_listeners: list[DeadLetterListener] = []
_PENDING_KEY = "vouchflow.dead_letters"


def on_dead_letters(listener: DeadLetterListener) -> DeadLetterListener:
    """Call ``listener`` with the dead letters of each transaction once it has committed
    (flows emit events from it); a listener's failure is its own and never the caller's."""
    if listener not in _dead_letter_listeners:
        _dead_letter_listeners.append(listener)
    return listener


def _announce_after_commit(session: Session, items: Sequence[DeadLetterItem]) -> None:
    if not _dead_letter_listeners:
        return
    from sqlalchemy import event

    pending = session.info.setdefault(_PENDING_KEY, [])
    if not pending and not event.contains(session, "after_commit", _after_commit):
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_rollback", _after_rollback)
    pending.extend(items)


def _after_commit(session: Session) -> None:
    items = session.info.pop(_PENDING_KEY, None)
    if not items:
        return
    for listener in list(_dead_letter_listeners):
        try:
            listener(items)
        except Exception:  # a listener must not fail the caller's commit
            continue


def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)


def record_dead_letters(session: Session, items: Sequence[DeadLetterItem]) -> None:
    """Quarantine records; the same record seen again updates its row instead of adding one."""
    if not items:
        return
    _announce_after_commit(session, items)
    now = now_utc()
    unique = {(i.flow, i.source, i.entity_type, i.entity_key): i for i in items}
    rows = [
        {"flow": i.flow, "source": i.source, "entity_type": i.entity_type,
         "entity_key": i.entity_key, "reason": i.reason[:4000], "payload": i.payload,
         "status": DeadLetterStatus.OPEN, "first_seen": now, "last_seen": now,
         "occurrences": 1, "replay_count": 0}
        for i in unique.values()
    ]
    table = DeadLetter.__table__
    _upsert_many(session, DeadLetter, rows, ["flow", "source", "entity_type", "entity_key"],
                 update=["reason", "payload", "last_seen"],
                 extra_set={"occurrences": table.c.occurrences + 1,
                            "status": DeadLetterStatus.OPEN})


def resolve_dead_letters(
    session: Session, flow: str, source: str, entity_type: str, keys: Iterable[str]
) -> int:
    """Close open dead letters of records that have now gone through."""
    stmt = (
        update(DeadLetter)
        .where(
            DeadLetter.flow == flow, DeadLetter.source == source,
            DeadLetter.entity_type == entity_type,
            DeadLetter.status != DeadLetterStatus.RESOLVED,
        )
        .values(status=DeadLetterStatus.RESOLVED)
    )
    result = session.execute(of_keys(session, stmt, DeadLetter.entity_key, keys))
    return result.rowcount or 0


def list_dead_letters(
    session: Session, *, status: str | None = DeadLetterStatus.OPEN, source: str | None = None,
    flow: str | None = None, limit: int = 100, offset: int = 0,
) -> list[DeadLetter]:
    query = select(DeadLetter).order_by(DeadLetter.id)
    if status:
        query = query.where(DeadLetter.status == status)
    if source:
        query = query.where(DeadLetter.source == source)
    if flow:
        query = query.where(DeadLetter.flow == flow)
    return list(session.scalars(query.offset(offset).limit(limit)))


def dead_letter_counts(session: Session) -> dict[tuple[str, str, str], int]:
    rows = session.execute(
        select(DeadLetter.flow, DeadLetter.source, DeadLetter.status, func.count())
        .group_by(DeadLetter.flow, DeadLetter.source, DeadLetter.status)
    )
    return {(f, s, st): n for f, s, st, n in rows}


def mark_replayed(session: Session, ids: Sequence[int], *, succeeded: Sequence[int]) -> None:
    now = now_utc()
    ok = set(succeeded)
    for part in _chunks(list(ids)):
        session.execute(
            update(DeadLetter)
            .where(DeadLetter.id.in_(part))
            .values(replay_count=DeadLetter.replay_count + 1, last_replayed_at=now)
        )
    for part in _chunks(sorted(ok)):
        session.execute(
            update(DeadLetter).where(DeadLetter.id.in_(part))
            .values(status=DeadLetterStatus.REPLAYED)
        )


# run ledger ---------------------------------------------------------------------------------
def ledger_start(session: Session, flow: str, run_key: str, step: str) -> None:
    stmt = _insert(session, RunLedger).values(
        flow=flow, run_key=run_key, step=step, status=LedgerStatus.STARTED, started_at=now_utc()
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["flow", "run_key", "step"],
        set_={"status": LedgerStatus.STARTED, "started_at": stmt.excluded.started_at},
        where=RunLedger.__table__.c.status != LedgerStatus.DONE,
    )
    session.execute(stmt)


def ledger_finish(
    session: Session, flow: str, run_key: str, step: str, *, status: LedgerStatus,
    counts: Mapping[str, Any] | None = None, detail: str | None = None,
) -> None:
    ledger_start(session, flow, run_key, step)
    session.execute(
        update(RunLedger)
        .where(RunLedger.flow == flow, RunLedger.run_key == run_key, RunLedger.step == step)
        .values(status=status, counts=dict(counts or {}), detail=detail, finished_at=now_utc())
    )


def ledger_done_steps(session: Session, flow: str, run_key: str) -> dict[str, Any]:
    rows = session.execute(
        select(RunLedger.step, RunLedger.counts).where(
            RunLedger.flow == flow, RunLedger.run_key == run_key,
            RunLedger.status == LedgerStatus.DONE,
        )
    )
    return {step: counts for step, counts in rows}


def last_runs(session: Session, limit: int = 20) -> list[RunLedger]:
    """The newest whole-run entries (step ``run``) of each flow."""
    newest = (
        select(RunLedger.flow, func.max(RunLedger.started_at).label("started"))
        .where(RunLedger.step == "run").group_by(RunLedger.flow).subquery()
    )
    query = select(RunLedger).join(
        newest, and_(RunLedger.flow == newest.c.flow, RunLedger.started_at == newest.c.started)
    ).where(RunLedger.step == "run").order_by(RunLedger.flow).limit(limit)
    return list(session.scalars(query))
