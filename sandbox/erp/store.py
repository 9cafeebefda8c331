"""Generic NetSuite-style record store: every record type in one structure.

``records[type][internal_id] -> dict`` plus, per type, an external-id index and the internal
ids in numeric order (collections page in that order). Nothing here knows about HTTP; the
ERP sandbox puts protocol behaviour on top, and later work (SuiteQL, async jobs) reads the
same tables.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sandbox.erp.schema import (
    EXTERNAL_ID_RE,
    READ_ONLY_FIELDS,
    RECORD_SCHEMAS,
    TRANSACTION_TYPES,
    from_snapshot,
    to_snapshot,
)

__all__ = [
    "EXTERNAL_ID_RE",
    "READ_ONLY_FIELDS",
    "RECORD_SCHEMAS",
    "IdSequence",
    "RecordStore",
    "RecordTable",
]

#: Every change of any table takes a new number from here, so a (table, version) pair never
#: comes back after a reset: caches keyed on versions cannot serve stale results.
_VERSIONS = itertools.count(1)


@dataclass
class IdSequence:
    """Internal ids of one or more record types (NetSuite's transactions share one)."""

    next_id: int = 1


_FILTER_CACHE_SIZE = 32


@dataclass
class RecordTable:
    """One record type."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    by_eid: dict[str, str] = field(default_factory=dict)
    sequence: IdSequence = field(default_factory=IdSequence)
    version: int = 0
    _filters: dict[str, tuple[int, list[str]]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def next_id(self) -> int:
        return self.sequence.next_id

    @next_id.setter
    def next_id(self, value: int) -> None:
        self.sequence.next_id = value

    def put(self, record: dict[str, Any]) -> None:
        """Insert or replace by ``record["id"]``, keeping the indexes right."""
        rid = record["id"]
        old = self.records.get(rid)
        if old is not None:
            old_eid = old.get("externalId")
            if old_eid and self.by_eid.get(old_eid) == rid:
                del self.by_eid[old_eid]
        else:
            num = int(rid)
            if not self.order or num > self.order[-1]:
                self.order.append(num)
            else:
                bisect.insort(self.order, num)
            if num >= self.sequence.next_id:
                self.sequence.next_id = num + 1
        self.records[rid] = record
        eid = record.get("externalId")
        if eid:
            self.by_eid[eid] = rid
        self.version = next(_VERSIONS)

    def remove(self, rid: str) -> dict[str, Any] | None:
        record = self.records.pop(rid, None)
        if record is None:
            return None
        num = int(rid)
        i = bisect.bisect_left(self.order, num)
        if i < len(self.order) and self.order[i] == num:
            del self.order[i]
        eid = record.get("externalId")
        if eid and self.by_eid.get(eid) == rid:
            del self.by_eid[eid]
        self.version = next(_VERSIONS)
        return record

    def allocate_id(self) -> str:
        rid = str(self.sequence.next_id)
        self.sequence.next_id += 1
        return rid

    def ids(self) -> list[str]:
        return [str(i) for i in self.order]

    def matching(self, q: str, predicate: Callable[[Mapping[str, Any]], bool]) -> list[str]:
        """Ids matching a compiled ``q`` in id order, cached until the table changes, so paging
        through a filtered collection does not rescan every record for every page."""
        cached = self._filters.get(q)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        records = self.records
        result = [rid for rid in (str(i) for i in self.order) if predicate(records[rid])]
        if len(self._filters) >= _FILTER_CACHE_SIZE:
            self._filters.pop(next(iter(self._filters)))
        self._filters[q] = (self.version, result)
        return result


class RecordStore:
    def __init__(self) -> None:
        self.tables: dict[str, RecordTable] = {}
        #: one id sequence for every transaction type, as in NetSuite
        self.transaction_ids = IdSequence()

    def table(self, record_type: str) -> RecordTable:
        table = self.tables.get(record_type)
        if table is None:
            if record_type in TRANSACTION_TYPES:
                table = RecordTable(sequence=self.transaction_ids)
            else:
                table = RecordTable()
            self.tables[record_type] = table
        return table

    def exists(self, record_type: str, rid: str) -> bool:
        table = self.tables.get(record_type)
        return table is not None and rid in table.records

    @property
    def records(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {t: table.records for t, table in self.tables.items()}

    def resolve(self, record_type: str, ref: str) -> str | None:
        """Internal id for ``ref`` (an internal id or ``eid:{externalId}``), if it exists."""
        table = self.tables.get(record_type)
        if table is None:
            return None
        if ref.startswith("eid:"):
            return table.by_eid.get(ref[4:])
        return ref if ref in table.records else None

    def get(self, record_type: str, ref: str) -> dict[str, Any] | None:
        rid = self.resolve(record_type, ref)
        return None if rid is None else self.tables[record_type].records[rid]

    def clear(self) -> None:
        self.tables.clear()
        self.transaction_ids = IdSequence()

    def __iter__(self) -> Iterator[str]:
        return iter(self.tables)

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready (``Decimal`` numbers as raw JSON numbers for core's ``dumps``)."""
        return {
            t: {
                "next_id": table.next_id,
                "records": [to_snapshot(table.records[str(i)]) for i in table.order],
            }
            for t, table in self.tables.items()
        }

    def restore(self, data: Mapping[str, Any]) -> None:
        self.clear()
        for record_type, saved in data.items():
            table = self.table(record_type)
            for record in saved["records"]:
                table.put(from_snapshot(record))
            table.next_id = max(table.next_id, int(saved.get("next_id", 1)))
