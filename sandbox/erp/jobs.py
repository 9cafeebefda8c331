"""Asynchronous batch jobs (docs/erp-records.md, "Asynchronous batches").

A job holds the items of one ``Prefer: respond-async`` request and, once run, one result per
item in request order. Jobs and the idempotency keys that created them are part of the
sandbox's saved data, so a restarted sandbox still answers a job's result and still refuses a
repeated key. Running them is the ERP sandbox's business (it applies each item as the
single-record endpoints would); this module only keeps the book.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sandbox.erp.schema import from_snapshot, to_snapshot

__all__ = ["MAX_BATCH_ITEMS", "UUID_RE", "Job", "JobBook"]

MAX_BATCH_ITEMS = 100
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

PENDING, RUNNING, COMPLETED, FAILED = "pending", "running", "completed", "failed"


@dataclass
class Job:
    id: str
    record_type: str
    method: str  # POST (create each) or PUT (upsert each by externalId)
    items: list[Any]
    idempotency_key: str | None = None
    status: str = PENDING
    results: list[dict[str, Any]] = field(default_factory=list)
    created: str = ""
    finished: str | None = None

    @property
    def done(self) -> bool:
        return self.status in (COMPLETED, FAILED)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "record_type": self.record_type,
            "method": self.method,
            # a finished job's items are not needed any more; a running one resumes from them
            "items": [] if self.done else to_snapshot(self.items),
            "idempotency_key": self.idempotency_key,
            "status": self.status,
            "results": to_snapshot(self.results),
            "created": self.created,
            "finished": self.finished,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        job = cls(
            id=str(data["id"]),
            record_type=data["record_type"],
            method=data["method"],
            items=from_snapshot(data.get("items") or []),
            idempotency_key=data.get("idempotency_key"),
            status=data.get("status", PENDING),
            results=from_snapshot(data.get("results") or []),
            created=data.get("created", ""),
            finished=data.get("finished"),
        )
        if not job.done:
            job.status = PENDING  # resumed from the next item without a result
        return job


class JobBook:
    """Jobs by id and the idempotency keys that created them (lower-case UUIDs)."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.keys: dict[str, str] = {}
        self.next_id = 1

    def create(
        self, record_type: str, method: str, items: list[Any], key: str | None, created: str
    ) -> Job:
        job = Job(str(self.next_id), record_type, method, items, key, created=created)
        self.next_id += 1
        self.jobs[job.id] = job
        if key is not None:
            self.keys[key.lower()] = job.id
        return job

    def by_key(self, key: str) -> Job | None:
        job_id = self.keys.get(key.lower())
        return None if job_id is None else self.jobs.get(job_id)

    def unfinished(self) -> list[Job]:
        return [j for j in self.jobs.values() if not j.done]

    def clear(self) -> None:
        self.jobs.clear()
        self.keys.clear()
        self.next_id = 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "next_id": self.next_id,
            "jobs": [j.as_dict() for j in self.jobs.values()],
            "keys": dict(self.keys),
        }

    def restore(self, data: dict[str, Any]) -> None:
        self.clear()
        for raw in data.get("jobs", []):
            job = Job.from_dict(raw)
            self.jobs[job.id] = job
        self.keys = {str(k).lower(): str(v) for k, v in data.get("keys", {}).items()}
        self.next_id = max([int(data.get("next_id", 1))] + [int(j) + 1 for j in self.jobs])
