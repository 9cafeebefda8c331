"""NetSuite-style REST client: records, collections with ``q`` filters, paging, upserts.

Reads: a collection lists only ids, so reading fields costs one GET per record; the client
runs those GETs concurrently under the account's limit. Writes: upsert by external id
(``PUT .../eid:X``) is the idempotent write; ``create`` is not and callers that need exactly
once look the record up by external id first.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from connectors.erp.auth import TokenAuth
from connectors.erp.config import ErpSettings, realm_for
from connectors.erp.oauth2 import ClientCredentialsAuth
from connectors.errors import (
    AuthError,
    ConflictError,
    ConnectorError,
    InvalidRecordError,
    MalformedResponseError,
    NotFoundError,
    PaginationError,
    RateLimitedError,
    ServerError,
    TransportError,
)
from connectors.http import (
    DEFAULT_RETRY,
    ErrorTable,
    HttpConnector,
    RetryPolicy,
    Timeouts,
    dumps,
    paginate,
)
from connectors.idempotency import key_uuid
from connectors.limits import ConcurrencyLimiter, shared_limiter
from connectors.paging import OffsetPaginator

RECORD_PATH = "/services/rest/record/v1"
SUITEQL_PATH = "/services/rest/query/v1/suiteql"
JOB_PATH = "/services/rest/async/v1/job"
COLLECTION_TYPE = "application/vnd.oracle.resource+json; type=collection"
SUITEQL_ROW_CAP = 100_000
MAX_BATCH = 100
EXTERNAL_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")

class IdempotencyReplay(ConflictError):
    """NetSuite saw this idempotency key before; ``job_location`` is the first job."""

    @property
    def job_location(self) -> str | None:
        return self.response.headers.get("Location") if self.response is not None else None


ERP_ERRORS = ErrorTable(by_code={
    "IDEMPOTENCY_ERROR": IdempotencyReplay,
    "INVALID_LOGIN": AuthError,
    "INVALID_LOGIN_ATTEMPT": AuthError,
    "INSUFFICIENT_PERMISSION": AuthError,
    "CONCURRENCY_LIMIT_EXCEEDED": RateLimitedError,
    "NONEXISTENT_ID": NotFoundError,
    "RCRD_DSNT_EXIST": NotFoundError,
    "INVALID_PARAMETER": InvalidRecordError,
    "INVALID_KEY_OR_REF": InvalidRecordError,
    "USER_ERROR": InvalidRecordError,
    "DUP_RCRD": ConflictError,
    "SSS_REQUEST_LIMIT_EXCEEDED": RateLimitedError,
    "UNEXPECTED_ERROR": ServerError,
})


def external_id_ref(external_id: str) -> str:
    if not EXTERNAL_ID.fullmatch(external_id):
        raise InvalidRecordError(
            f"external id {external_id!r} may use only letters, digits, '_' and '-'",
            system="erp",
        )
    return f"eid:{external_id}"


def suiteql_time(at: datetime, timezone: str) -> str:
    """A SuiteQL timestamp literal in the account's time zone (seconds, rounded down)."""
    local = at.astimezone(ZoneInfo(timezone))
    return f"TO_TIMESTAMP('{local:%Y-%m-%d %H:%M:%S}', 'YYYY-MM-DD HH24:MI:SS')"


def format_q_date(at: datetime, timezone: str, *, precision: str = "day") -> str:
    """A date (``M/D/YYYY``) or date and time (``M/D/YYYY h:mm am``) in the account's format
    preference and time zone. With minute precision the time is rounded down, so the filter
    never starts after ``at``."""
    local = at.astimezone(ZoneInfo(timezone))
    text = f"{local.month}/{local.day}/{local.year}"
    if precision == "minute":
        hour = local.hour % 12 or 12
        text += f" {hour}:{local.minute:02d} {'am' if local.hour < 12 else 'pm'}"
    return text


def _auth_for(settings: ErpSettings) -> httpx.Auth:
    if settings.auth_method == "oauth2":
        return ClientCredentialsAuth(
            base_url=settings.url(), client_id=settings.client_id.get_secret_value(),
            certificate_id=settings.certificate_id, private_key=settings.key_pem(),
            algorithm=settings.jwt_algorithm,
        )
    return TokenAuth(settings)


@dataclass(frozen=True)
class BatchItemResult:
    """One record of an asynchronous batch: its place in the request and what became of it."""

    index: int
    status: int
    id: str | None = None
    external_id: str | None = None
    error: ConnectorError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300


class ErpClient(HttpConnector):
    system = "erp"
    error_table = ERP_ERRORS
    decimal_numbers = True  # NetSuite amounts are JSON numbers
    lean_transport = True  # one account-wide limit of a few requests: slot time is scarce

    def __init__(
        self,
        settings: ErpSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        limiter: ConcurrencyLimiter | None = None,
    ) -> None:
        settings.check()
        self.settings = settings
        self.account = realm_for(settings.account)
        super().__init__(
            settings.url(),
            auth=_auth_for(settings),
            timeouts=Timeouts(read=settings.read_timeout),
            retry=retry,
            limiter=limiter or shared_limiter(f"erp:{self.account}", settings.concurrency),
            transport=transport,
            max_connections=settings.concurrency * 2,
        )

    def parse_error(self, response: httpx.Response, body: Any) -> tuple[str | None, str, list[Any]]:
        if not isinstance(body, dict):
            return None, response.reason_phrase or "error", []
        details = body.get("o:errorDetails") or []
        first = details[0] if details and isinstance(details[0], dict) else {}
        code = first.get("o:errorCode")
        message = first.get("detail") or body.get("title") or response.reason_phrase
        if code in {"INVALID_LOGIN", "INVALID_LOGIN_ATTEMPT"}:
            message = f"login refused for account {self.account}: {message}"
        return code, str(message), list(details)

    # reads ----------------------------------------------------------------------------------
    async def list_ids(
        self, record_type: str, *, q: str | None = None, page_size: int | None = None
    ) -> AsyncIterator[list[str]]:
        """Yield the internal ids of a collection, a page at a time."""
        paginator = OffsetPaginator(page_size or self.settings.page_size, max_limit=1000)
        params = {"q": q} if q else None
        async for page in paginate(self, "GET", f"{RECORD_PATH}/{record_type}", paginator,
                                   params=params):
            ids = []
            for item in page["items"]:
                if not isinstance(item, dict) or "id" not in item:
                    raise MalformedResponseError("collection item without id", system=self.system)
                ids.append(str(item["id"]))
            yield ids

    async def get(self, record_type: str, record_id: str) -> dict[str, Any]:
        body = await self.request_json("GET", f"{RECORD_PATH}/{record_type}/{record_id}")
        if not isinstance(body, dict) or "id" not in body:
            raise MalformedResponseError(
                f"{record_type} {record_id}: record without id", system=self.system
            )
        return body

    async def get_by_external_id(self, record_type: str, external_id: str) -> dict[str, Any] | None:
        try:
            return await self.get(record_type, external_id_ref(external_id))
        except NotFoundError:
            return None

    async def get_many(
        self, record_type: str, ids: Sequence[str]
    ) -> list[dict[str, Any] | BaseException]:
        """GET many records concurrently (the limiter holds the account's line). A record that
        fails comes back as its exception, in its place, so one bad id does not sink the rest."""
        return await asyncio.gather(
            *(self.get(record_type, record_id) for record_id in ids), return_exceptions=True
        )

    # writes ---------------------------------------------------------------------------------
    @staticmethod
    def _id_from_location(response: httpx.Response) -> str:
        location = response.headers.get("Location", "")
        record_id = location.rstrip("/").rsplit("/", 1)[-1]
        if not record_id:
            raise MalformedResponseError(
                f"{response.request.method} {response.request.url.path}: no Location header",
                system="erp", response=response,
            )
        return record_id

    async def create(self, record_type: str, body: dict[str, Any]) -> str:
        """POST a new record; returns its internal id. Not idempotent on its own."""
        response = await self.request("POST", f"{RECORD_PATH}/{record_type}", json_body=body)
        return self._id_from_location(response)

    async def upsert(self, record_type: str, external_id: str, body: dict[str, Any]) -> str:
        """Create or replace the record with this external id (idempotent)."""
        response = await self.request(
            "PUT", f"{RECORD_PATH}/{record_type}/{external_id_ref(external_id)}", json_body=body
        )
        return self._id_from_location(response)

    async def patch(self, record_type: str, record_id: str, fields: dict[str, Any]) -> None:
        """Change only the fields sent; ``None`` clears a field."""
        await self.request("PATCH", f"{RECORD_PATH}/{record_type}/{record_id}", json_body=fields)

    async def delete(self, record_type: str, record_id: str) -> None:
        await self.request("DELETE", f"{RECORD_PATH}/{record_type}/{record_id}")

    async def transform(
        self, record_type: str, record_id: str, target_type: str, body: dict[str, Any]
    ) -> str:
        """Make a ``target_type`` record from another (purchaseOrder -> itemReceipt, ...);
        returns the new record's internal id. Not idempotent: callers look the target up by
        its external id first (``get_by_external_id``) and record the result before moving
        on. ``record_id`` may be an internal id or ``eid:...``."""
        response = await self.request(
            "POST", f"{RECORD_PATH}/{record_type}/{record_id}/!transform/{target_type}",
            json_body=body,
        )
        return self._id_from_location(response)

    # SuiteQL ---------------------------------------------------------------------------------
    async def suiteql(self, query: str, *, page_size: int = 1000) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield the rows of one query, a page at a time (at most 100,000 rows: NetSuite's cap;
        use ``suiteql_by_key`` for more). Every value is a string; NULL columns are absent."""
        paginator = OffsetPaginator(page_size, max_limit=1000)
        async for page in paginate(self, "POST", SUITEQL_PATH, paginator,
                                   json_body={"q": query}, headers={"Prefer": "transient"}):
            yield [_row(item) for item in page["items"]]

    async def suiteql_by_key(
        self, select: str, table: str, *, where: str | None = None, key: str = "id",
        page_size: int = 1000, row_cap: int = SUITEQL_ROW_CAP,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every row of ``SELECT select FROM table WHERE where``, however many: read in windows
        of at most ``row_cap`` rows ordered by the numeric ``key``, each window starting after
        the last key of the one before. ``select`` must include ``key``."""
        last: int | None = None
        while True:
            conditions = [f"({where})"] if where else []
            if last is not None:
                conditions.append(f"{key} > {last}")
            query = f"SELECT {select} FROM {table}"
            if conditions:
                query += " WHERE " + " AND ".join(conditions)
            query += f" ORDER BY {key}"
            offset = 0
            window_last = last
            while True:
                limit = min(page_size, row_cap - offset)
                if limit <= 0:
                    break  # the window is full: start the next one after its last key
                body = await self.request_json(
                    "POST", SUITEQL_PATH, params={"limit": limit, "offset": offset},
                    json_body={"q": query}, headers={"Prefer": "transient"},
                )
                if not isinstance(body, dict) or "items" not in body or "hasMore" not in body:
                    raise MalformedResponseError("SuiteQL page without items/hasMore",
                                                 system=self.system)
                rows = [_row(item) for item in body["items"]]
                if rows:
                    try:
                        keys = [int(r[key]) for r in rows]
                    except (KeyError, ValueError):
                        raise MalformedResponseError(
                            f"SuiteQL rows without a numeric {key!r}; select it",
                            system=self.system) from None
                    if window_last is not None and keys[0] <= window_last:
                        raise PaginationError(
                            f"SuiteQL went backwards: {key} {keys[0]} after {window_last}",
                            system=self.system)
                    window_last = keys[-1]
                    yield rows
                offset += len(rows)
                if not body["hasMore"]:
                    return
                if not rows:
                    raise PaginationError("SuiteQL said hasMore with an empty page",
                                          system=self.system)
            if window_last == last:
                return
            last = window_last

    # asynchronous batches --------------------------------------------------------------------
    async def submit_batch(
        self, record_type: str, records: Sequence[dict[str, Any]], *, key: str,
        upsert: bool = True,
    ) -> str:
        """Start an asynchronous batch (at most 100 records) and return its job id.

        ``key`` names the batch (e.g. ``items-sg1-7f3a``); it becomes the idempotency key, so
        sending the same batch again, after a crash or a lost answer, finds the first job
        instead of starting a second one. ``upsert`` PUTs by each record's ``externalId``."""
        if not records:
            raise ValueError("an empty batch")
        if len(records) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} records per batch, got {len(records)}")
        if upsert:
            missing = [i for i, r in enumerate(records) if not r.get("externalId")]
            if missing:
                raise InvalidRecordError(
                    f"records {missing[:5]} of the batch have no externalId to upsert by",
                    system=self.system)
            for record in records:
                external_id_ref(str(record["externalId"]))
        headers = {
            "Prefer": "respond-async",
            "Content-Type": COLLECTION_TYPE,
            "X-NetSuite-idempotency-key": str(key_uuid(key)),
        }
        try:
            response = await self.request(
                "PUT" if upsert else "POST", f"{RECORD_PATH}/{record_type}",
                content=_dumps_collection(records), headers=headers,
            )
        except IdempotencyReplay as replay:
            location = replay.job_location
            if not location:
                raise MalformedResponseError("IDEMPOTENCY_ERROR without the job's Location",
                                             system=self.system) from None
            return location.rstrip("/").rsplit("/", 1)[-1]
        if response.status_code != 202:
            raise MalformedResponseError(
                f"asynchronous batch answered {response.status_code}, not 202",
                system=self.system, response=response)
        return self._id_from_location(response)

    async def wait_for_job(self, job_id: str, *, timeout: float = 600.0,
                           first_poll: float = 0.02, max_poll: float = 2.0,
                           first_wait: float = 0.0) -> dict[str, Any]:
        """Poll a job until it is completed or failed (backing off between polls), the first
        poll after ``first_wait`` seconds."""
        deadline = time.monotonic() + timeout
        delay = first_poll
        if first_wait > 0:
            await asyncio.sleep(first_wait)
        while True:
            job = await self.request_json("GET", f"{JOB_PATH}/{job_id}")
            if not isinstance(job, dict):
                raise MalformedResponseError(f"job {job_id}: not an object", system=self.system)
            status = str(job.get("status", "")).lower()
            if job.get("completed") or status in {"completed", "failed"}:
                return job
            if time.monotonic() + delay > deadline:
                raise TransportError(f"job {job_id} still {status or 'pending'} after "
                                     f"{timeout:.0f}s", system=self.system)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_poll)

    async def job_results(self, job_id: str) -> list[BatchItemResult]:
        body = await self.request_json("GET", f"{JOB_PATH}/{job_id}/result")
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise MalformedResponseError(f"job {job_id}: result without items", system=self.system)
        results = []
        for position, item in enumerate(items):
            status = int(item.get("status", 0))
            error = None
            if not 200 <= status < 300:
                details = item.get("o:errorDetails") or []
                first = details[0] if details and isinstance(details[0], dict) else {}
                code = first.get("o:errorCode")
                kind = self.error_table.classify(status, code)
                error = kind(f"job {job_id} item {item.get('index', position)} -> {status}"
                             + (f" {code}" if code else "") + f": {first.get('detail', '')}",
                             system=self.system, code=code, details=list(details))
            results.append(BatchItemResult(
                index=int(item.get("index", position)), status=status,
                id=str(item["id"]) if item.get("id") is not None else None,
                external_id=item.get("externalId"), error=error))
        return results

    async def batch(
        self, record_type: str, records: Sequence[dict[str, Any]], *, key: str,
        upsert: bool = True, timeout: float = 600.0,
    ) -> list[BatchItemResult]:
        """Submit, wait, read the results: one call for one batch of at most 100 records.

        A job of a hundred records is usually done within a few tens of milliseconds, so the
        results are asked for directly after a short wait; only if they are not ready yet
        does the client fall back to polling the job's status. Under the account's limit
        every saved request is a slot for another batch."""
        async with self._submit_window():
            job_id = await self.submit_batch(record_type, records, key=key, upsert=upsert)
        expected = self.expected_job_seconds(len(records))
        await asyncio.sleep(expected)
        try:
            return await self.job_results(job_id)
        except (InvalidRecordError, ConflictError):
            pass  # not completed yet: poll as the protocol says (not at once: it just said no)
        job = await self.wait_for_job(job_id, timeout=timeout, first_wait=expected / 2)
        if str(job.get("status", "")).lower() == "failed" and not job.get("completed", True):
            raise ServerError(f"job {job_id} failed as a whole", system=self.system)
        return await self.job_results(job_id)

    def _submit_window(self) -> asyncio.Semaphore:
        """At most ``concurrency + 1`` of this client's batch submits wait for a slot at once.

        Requests get the account's slots in arrival order. Without a window, a caller that
        starts two hundred batches at once queues two hundred submits, and every result read
        (due ~40 ms after its submit) waits behind all the submits left: the reads then ran
        one after another at the end, with the slots mostly idle (0.1-0.3 s of a 2.5 s run
        with no request in flight, on the erp_upsert bench). With the window a read waits
        behind at most one submit and slips in between the writes; and each batch is
        validated and encoded only when its turn is near, not all of them up front."""
        return self.loop_bound("submit_window",
                               lambda _: asyncio.Semaphore(self.settings.concurrency + 1))

    def expected_job_seconds(self, records: int) -> float:
        """How long a batch job of this size usually takes (a first guess, tuned by setting)."""
        return self.settings.job_seconds_base + self.settings.job_seconds_per_record * records


def _row(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "links"}


def _dumps_collection(records: Sequence[dict[str, Any]]) -> bytes:
    return dumps({"items": list(records)}, decimal_numbers=True)
