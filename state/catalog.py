"""The catalogue as vouchflow last mapped it from the ERP: what every flow needs to know
about a SKU without asking the ERP again (its sales areas, issuance mode, status)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Index,
    String,
    Text,
    bindparam,
    case,
    cast,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from canonical import Sku, now_utc
from canonical.jsontext import json_bytes
from state.models import PoolBatch
from state.store import _executemany, _insert, of_keys
from state.types import JSONText, UTCDateTime


class CatalogSku(SQLModel, table=True):
    __tablename__ = "catalog_sku"
    __table_args__ = (Index("ix_catalog_sku_updated", "updated_at"),)

    sku: str = Field(primary_key=True, max_length=64)
    erp_id: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    issuance_mode: str = Field(max_length=16)
    status: str = Field(max_length=16)
    sales_areas: str = Field(sa_column=Column(String(1000), nullable=False, default=""))
    data: Any = Field(sa_column=Column(JSONText(), nullable=False))
    erp_modified_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    """When the entry was added or last changed in what can move its stock's quotas (status,
    sales areas, issuance mode): the inventory sync plans again the SKUs stamped since its
    last run, and a renamed SKU's quotas stay as they were."""
    quota_read: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    """``updated_at`` (as text) as the last inventory plan that succeeded read it: a row
    stamped within the settling time and still as read is not planned again."""


def remember_skus(session: Session, skus: Sequence[tuple[Sku, str | None]],
                  dumped: Sequence[Mapping[str, Any] | str] | None = None) -> None:
    """Keep the canonical SKUs just mapped (with their ERP internal ids). ``dumped``: each
    SKU's ``model_dump(mode="json")`` when the caller already made it (its ``sku.changed``
    event carries the same), or that dump's stored text (``state.store.canonical_json``),
    in the same order."""
    from state.store import canonical_json

    now = now_utc()
    data = dumped if dumped is not None else [s.model_dump(mode="json") for s, _ in skus]
    if len(data) != len(skus):
        raise ValueError(f"{len(data)} dumped SKU(s) for {len(skus)} SKU(s)")
    if not skus:
        return
    # the data column's text made here (once, and as its JSON type would write it), bound as
    # plain text
    rows = [{"sku": s.sku, "erp_id": erp_id, "issuance_mode": s.issuance_mode.value,
             "status": s.status.value, "sales_areas": ",".join(s.sales_areas),
             "data": d if isinstance(d, str) else canonical_json(d),
             "erp_modified_at": s.updated_at, "updated_at": now}
            for (s, erp_id), d in zip(skus, data, strict=True)]
    table = CatalogSku.__table__
    stmt = _insert(session, table).values(data=bindparam("data", type_=Text()))
    listing = ("status", "sales_areas", "issuance_mode")
    moved = or_(*(table.c[name].is_distinct_from(stmt.excluded[name]) for name in listing))
    set_ = {name: stmt.excluded[name] for name in ("erp_id", "issuance_mode", "status",
                                                   "sales_areas", "data", "erp_modified_at")}
    set_["updated_at"] = case((moved, stmt.excluded.updated_at), else_=table.c.updated_at)
    _executemany(session, stmt.on_conflict_do_update(index_elements=["sku"], set_=set_), rows)


def load_skus(session: Session, skus: Iterable[str] | None = None) -> dict[str, Sku]:
    table = CatalogSku.__table__
    found: dict[str, Sku] = {}
    query = select(table.c.sku, table.c.data)
    for row in session.execute(of_keys(session, query, table.c.sku, skus)):
        found[row.sku] = Sku.model_validate(row.data)
    return found


def load_listings(session: Session, skus: Iterable[str] | None = None
                  ) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Status and sales areas of every SKU (or of ``skus``), from their own columns: what the
    inventory sync needs of the catalogue, without building each SKU's model."""
    table = CatalogSku.__table__
    query = select(table.c.sku, table.c.status, table.c.sales_areas)
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for sku, status, areas in session.execute(of_keys(session, query, table.c.sku, skus)):
        found[sku] = (status, tuple(a for a in (areas or "").split(",") if a))
    return found


# what the inventory sync's plans read ----------------------------------------------------------
def _stamp(column: Any) -> Any:
    """A stamp as the database writes it out as text (no conversion to a datetime): only ever
    compared with itself."""
    return cast(column, String())


@dataclass
class InputStamps:
    """The stamps a quota plan read of its SKUs' inputs: catalogue entries by SKU, batches by
    batch number."""

    catalog: dict[str, str] = field(default_factory=dict)
    batches: dict[str, str] = field(default_factory=dict)

    def update(self, other: InputStamps) -> None:
        self.catalog.update(other.catalog)
        self.batches.update(other.batches)


def quota_inputs(session: Session, since: datetime, skus: Iterable[str] | None = None
                 ) -> InputStamps:
    """The stamps of every catalogue entry and batch stamped at ``since`` or later (every
    change that can move a quota stamps one of them: a sale, a refund, a receipt, an ERP
    correction, a catalogue change), of every SKU or of ``skus``."""
    cat, pb = CatalogSku.__table__, PoolBatch.__table__
    of_catalog = select(cat.c.sku, _stamp(cat.c.updated_at)).where(cat.c.updated_at >= since)
    of_batches = (select(pb.c.batch_no, _stamp(pb.c.updated_at))
                  .where(pb.c.updated_at >= since))
    read = InputStamps()
    for sku, at in session.execute(of_keys(session, of_catalog, cat.c.sku, skus)):
        read.catalog[sku] = at
    for batch_no, at in session.execute(of_keys(session, of_batches, pb.c.sku, skus)):
        read.batches[batch_no] = at
    return read


def mark_quota_read(session: Session, read: InputStamps) -> None:
    """Remember on each row what a plan read of it (once its run succeeded: see
    ``quota_unread``). A row already marked so is not written, so not locked (on PostgreSQL an
    allocation taking from the batch does not wait for it); rows go in key order, the order
    in which allocations lock batches."""
    sqlite = session.get_bind().dialect.name == "sqlite"
    for table, key, stamps in ((CatalogSku.__table__, "sku", read.catalog),
                               (PoolBatch.__table__, "batch_no", read.batches)):
        if not stamps:
            continue
        if sqlite:  # one writer at a time: every row in one statement, the pairs as JSON
            session.connection().exec_driver_sql(
                f"UPDATE {table.name} SET quota_read = j.value ->> 1 FROM json_each(?) j "
                f"WHERE {table.name}.{key} = j.value ->> 0 "
                f"AND {table.name}.quota_read IS NOT j.value ->> 1",
                (json_bytes(sorted(stamps.items()), default=str).decode(),))
            continue
        stmt = (update(table)
                .where(table.c[key] == bindparam("k"),
                       table.c.quota_read.is_distinct_from(bindparam("at")))
                .values(quota_read=bindparam("at")))
        _executemany(session, stmt, [{"k": k, "at": stamps[k]} for k in sorted(stamps)])


def quota_unread(session: Session, since: datetime) -> set[str]:
    """SKUs with a catalogue entry or batch stamped since ``since`` (the last rebalance less
    the settling time) that is not as the last plan of the SKU read it: what that plan already
    took into account is not planned again, and a change committed after it read (however
    early it was stamped) is. One query over the rows stamped since then, each against the
    stamp last read of it (``quota_read``, on the row)."""
    def changed(table: Any) -> Any:
        return select(table.c.sku).where(
            table.c.updated_at >= since,
            table.c.quota_read.is_distinct_from(_stamp(table.c.updated_at)))

    return set(session.scalars(union(changed(CatalogSku.__table__),
                                     changed(PoolBatch.__table__))))
