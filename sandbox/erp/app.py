"""The ERP sandbox: NetSuite-style REST record service (DESIGN.md section 5, "ERP").

Behaviour the connector must cope with is reproduced on purpose: create answers 204 with only
a ``Location`` header, collections list ids and links but no fields, PUT is an upsert only
on ``eid:``, over-limit requests get 429 without ``Retry-After``, and every error uses
NetSuite's envelope. SuiteQL (``sandbox.erp.suiteql``), asynchronous batch jobs with
idempotency keys (``sandbox.erp.jobs``) and OAuth 2.0 client credentials
(``sandbox.erp.oauth2``) are served here too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox.core import Sandbox, json_response
from sandbox.erp.auth import DEFAULT_CREDENTIALS, Credentials, OAuthVerifier
from sandbox.erp.jobs import MAX_BATCH_ITEMS, UUID_RE, Job, JobBook
from sandbox.erp.oauth2 import OAuth2Clients, OAuth2Refusal
from sandbox.erp.query import QueryError, compile_query, format_datetime
from sandbox.erp.schema import (
    EXTERNAL_ID_RE,
    INTERNAL_ID_RE,
    RECORD_SCHEMAS,
    REQUIRED_ON_CREATE,
    TYPE_RE,
    SchemaError,
    check_fields,
    check_refs,
    erp_dumps,
    erp_loads,
    finalize,
    normalize_value,
    q_field_types,
    to_snapshot,
)
from sandbox.erp.seed import SeedReport, generate_inventory_items
from sandbox.erp.store import RecordStore
from sandbox.erp.suiteql import MAX_RESULT_ROWS, SuiteQLEngine
from sandbox.sites import Site, normalize_sites

log = logging.getLogger("sandbox")

__all__ = [
    "ASYNC_JOB_PREFIX",
    "DEFAULT_CONCURRENCY_LIMIT",
    "ERROR_MEDIA_TYPE",
    "SUITEQL_PATH",
    "TOKEN_PATH",
    "ErpError",
    "ErpSandbox",
]

RECORD_PREFIX = "/services/rest/record/v1"
SUITEQL_PATH = "/services/rest/query/v1/suiteql"
ASYNC_JOB_PREFIX = "/services/rest/async/v1/job"
TOKEN_PATH = "/services/rest/auth/oauth2/v1/token"
DEFAULT_CONCURRENCY_LIMIT = 5
#: source type -> the record types a transform may make from it (DESIGN.md section 5)
TRANSFORMS: dict[str, tuple[str, ...]] = {
    "purchaseOrder": ("itemReceipt", "vendorBill"),
    "salesOrder": ("itemFulfillment", "invoice", "cashSale"),
    "vendorBill": ("vendorPayment", "vendorCredit"),
}
MAX_PAGE = 1000
ERROR_MEDIA_TYPE = "application/vnd.oracle.resource+json; type=error"
SINGULAR_MEDIA_TYPE = "application/vnd.oracle.resource+json; type=singular-resource"
COLLECTION_MEDIA_TYPE = "application/vnd.oracle.resource+json; type=collection"

_STATUS_INFO: dict[int, tuple[str, str]] = {
    400: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.1", "Bad Request"),
    401: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.2", "Unauthorized"),
    403: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.4", "Forbidden"),
    404: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.5", "Not Found"),
    405: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.6", "Method Not Allowed"),
    409: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.10", "Conflict"),
    429: ("https://www.rfc-editor.org/rfc/rfc6585.html#section-4", "Too Many Requests"),
    500: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.6.1", "Internal Server Error"),
    502: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.6.3", "Bad Gateway"),
    503: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.6.4", "Service Unavailable"),
    504: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.6.5", "Gateway Timeout"),
}

#: core's generic error codes -> NetSuite's
_GENERIC_CODES = {
    "not_found": "NONEXISTENT_ID",
    "method_not_allowed": "INVALID_PARAMETER",
    "bad_request": "INVALID_PARAMETER",
    "unavailable": "UNEXPECTED_ERROR",
    "internal": "UNEXPECTED_ERROR",
    "rate_limited": "CONCURRENCY_LIMIT_EXCEEDED",
    "concurrency_limit_exceeded": "CONCURRENCY_LIMIT_EXCEEDED",
}

_LOGIN_DETAIL = (
    "Invalid login attempt. For more details, see the Login Audit Trail in the NetSuite UI "
    "at Setup > Users/Roles > User Management > View Login Audit Trail."
)


class ErpError(Exception):
    """Raised inside handlers; becomes a NetSuite error envelope."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        path: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.path = status, code, detail, path
        self.headers = headers

    @classmethod
    def of(cls, exc: SchemaError) -> ErpError:
        return cls(400, exc.code, exc.detail, exc.path)

    def details(self) -> list[dict[str, Any]]:
        detail: dict[str, Any] = {"detail": self.detail, "o:errorCode": self.code}
        if self.path:
            detail["o:errorPath"] = self.path
        return [detail]


class ErpSandbox(Sandbox):
    """A NetSuite-style account: generic record store, SuiteQL, async batch jobs, OAuth 1.0a
    TBA and OAuth 2.0 client credentials, account governance."""

    name = "erp"

    def __init__(
        self,
        *,
        credentials: Credentials = DEFAULT_CREDENTIALS,
        concurrency_limit: int | None = DEFAULT_CONCURRENCY_LIMIT,
        account_timezone: str = "UTC",
        sites: Iterable[Site | Mapping[str, Any]] | None = None,
        verify_auth: bool = True,
        timestamp_window_s: int = 300,
        oauth2_clients: Mapping[str, Mapping[str, Any]] | None = None,
        oauth2_token_ttl_s: int = 3600,
        job_delay_s: float = 0.01,
        check_refs: bool = True,
        clock: Callable[[], datetime] | None = None,
        state_path: Path | str | None = None,
        request_log_size: int = 10_000,
    ) -> None:
        super().__init__(clock=clock, state_path=state_path, request_log_size=request_log_size)
        self.credentials = credentials
        self.concurrency_limit = concurrency_limit
        self.account_timezone = ZoneInfo(account_timezone)
        self._sites = list(sites) if sites is not None else None
        self.verify_auth = verify_auth
        self.oauth = OAuthVerifier(credentials, window_s=timestamp_window_s)
        self.oauth2 = OAuth2Clients(oauth2_clients, token_ttl_s=oauth2_token_ttl_s)
        #: seconds a batch job waits after its 202 before it starts
        self.job_delay_s = job_delay_s
        #: refuse references to records that do not exist (INVALID_KEY_OR_REF)
        self.check_refs = check_refs
        self.store = RecordStore()
        self.jobs = JobBook()
        self.seed_reports: list[SeedReport] = []
        #: why the last refused logins were refused (the client only sees INVALID_LOGIN)
        self.auth_failures: list[str] = []
        self._suiteql: SuiteQLEngine | None = None
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._now_text: tuple[int | None, str] = (None, "")
        self._resume_jobs = False

    # ---- data helpers (tests and the demo) --------------------------------------------------

    @property
    def records(self) -> dict[str, dict[str, dict[str, Any]]]:
        return self.store.records

    @property
    def suiteql(self) -> SuiteQLEngine:
        """The SuiteQL engine (rebuilt when ``account_timezone`` is changed)."""
        engine = self._suiteql
        if engine is None or engine.tz is not self.account_timezone:
            engine = self._suiteql = SuiteQLEngine(self.store, self.account_timezone)
        return engine

    def now_str(self) -> str:
        """The clock as stored in records (UTC, whole seconds). Formatted once per second: a
        batch job stamps every record it writes, and the formatting was most of a stamp."""
        now = self.clock()
        if now.tzinfo is None:
            return format_datetime(now)  # refuses it, as it should
        second = math.floor(now.timestamp())
        cached = self._now_text
        if cached[0] != second:
            cached = self._now_text = (second, format_datetime(now))
        return cached[1]

    def get_record(self, record_type: str, ref: str) -> dict[str, Any] | None:
        with self.lock:
            rec = self.store.get(record_type, ref)
            return dict(rec) if rec is not None else None

    def count(self, record_type: str) -> int:
        with self.lock:
            table = self.store.tables.get(record_type)
            return len(table) if table else 0

    def set_record(self, record_type: str, record: Mapping[str, Any]) -> str:
        """Insert or replace a record as-is (no validation, no effect); returns its id.
        Datetimes may be ``datetime`` objects or ISO strings and are stored normalised;
        floats are stored as ``Decimal``."""
        with self.lock:
            table = self.store.table(record_type)
            rec = {k: normalize_value(v) for k, v in record.items() if v is not None and k != "links"}
            rid = str(rec.get("id") or table.allocate_id())
            rec["id"] = rid
            eid = rec.get("externalId")
            if eid and table.by_eid.get(eid, rid) != rid:
                raise ValueError(f"externalId {eid!r} already used by {table.by_eid[eid]}")
            now = self.now_str()
            for f in ("createdDate", "lastModifiedDate"):
                rec[f] = _normalize_dt(rec[f]) if f in rec else now
            table.put(rec)
            return rid

    def seed_records(
        self,
        record_type: str,
        records: Iterable[Mapping[str, Any]],
        *,
        validate: bool = True,
        modified_at: datetime | str | None = None,
    ) -> list[str]:
        """Add records in bulk as the ERP's own data (no effects); returns their ids in order.

        Ids are allocated unless a record has one; ``createdDate``/``lastModifiedDate`` are
        ``modified_at`` (default now) unless given. With ``validate`` (default) each record
        is checked and normalised as a client write would be (schema, line numbers, computed
        ``total``) but references are not checked, so records may be seeded in any order.
        Nothing is added when one record is refused (``ValueError`` naming it)."""
        stamp = _normalize_dt(modified_at) if modified_at is not None else self.now_str()
        with self.lock:
            table = self.store.table(record_type)
            prepared: list[dict[str, Any]] = []
            seen: set[str] = set()
            for n, raw in enumerate(records):
                if validate:
                    try:
                        rec = {k: v for k, v in check_fields(record_type, raw).items() if v is not None}
                        finalize(record_type, rec)
                    except SchemaError as exc:
                        raise ValueError(f"record {n}: {exc.detail}") from None
                else:
                    rec = {k: normalize_value(v) for k, v in raw.items() if v is not None}
                rec.pop("links", None)
                if raw.get("id") is not None:
                    rec["id"] = str(raw["id"])
                for f in ("createdDate", "lastModifiedDate"):
                    rec[f] = _normalize_dt(raw[f]) if raw.get(f) is not None else stamp
                eid = rec.get("externalId")
                if eid is not None:
                    if eid in seen or eid in table.by_eid:
                        raise ValueError(f"record {n}: externalId {eid!r} already exists")
                    seen.add(eid)
                prepared.append(rec)
            ids: list[str] = []
            for rec in prepared:
                if "id" not in rec:
                    rec = {"id": table.allocate_id(), **rec}
                elif rec["id"] in table.records:
                    raise ValueError(f"{record_type} {rec['id']} already exists")
                table.put(rec)
                ids.append(rec["id"])
            return ids

    def touch(self, record_type: str, ref: str, **changes: Any) -> dict[str, Any]:
        """Change fields as an ERP user would (``None`` clears) and bump ``lastModifiedDate``
        (unless given explicitly). No effect is recorded: this is the far end's own change."""
        with self.lock:
            table = self.store.table(record_type)
            rid = self.store.resolve(record_type, ref)
            if rid is None:
                raise KeyError(f"{record_type} {ref} does not exist")
            rec = dict(table.records[rid])
            for k, v in changes.items():
                if v is None:
                    rec.pop(k, None)
                else:
                    rec[k] = normalize_value(v)
            rec["lastModifiedDate"] = _normalize_dt(changes.get("lastModifiedDate") or self.clock())
            eid = rec.get("externalId")
            if eid and table.by_eid.get(eid, rid) != rid:
                raise ValueError(f"externalId {eid!r} already used by {table.by_eid[eid]}")
            table.put(rec)
            return dict(rec)

    def seed_inventory_items(
        self,
        n: int,
        invalid: int = 0,
        *,
        seed: int = 0,
        start_id: int | None = None,
        modified_at: datetime | str | None = None,
        sites: Iterable[Site | Mapping[str, Any]] | None = None,
    ) -> SeedReport:
        """Add ``n`` valid and ``invalid`` invalid voucher SKUs (see ``sandbox.erp.seed``)."""
        site_list = normalize_sites(sites if sites is not None else self._sites)
        timestamp = _normalize_dt(modified_at) if modified_at is not None else self.now_str()
        with self.lock:
            table = self.store.table("inventoryItem")
            first = start_id if start_id is not None else table.next_id
            if any(str(i) in table.records for i in (first, first + n + invalid - 1)):
                raise ValueError(f"ids from {first} collide with existing records")
            records, bad = generate_inventory_items(
                n, invalid=invalid, seed=seed, sites=site_list, start_id=first, timestamp=timestamp
            )
            for rec in records:
                eid = rec.get("externalId")
                if eid and eid in table.by_eid:
                    raise ValueError(f"externalId {eid!r} already exists")
            for rec in records:
                table.put(rec)
            report = SeedReport("inventoryItem", [r["id"] for r in records], bad)
            self.seed_reports.append(report)
            return report

    def invalid_seeds(self, record_type: str = "inventoryItem") -> dict[str, str]:
        """Internal id -> reason for every invalid record seeded (and still present)."""
        with self.lock:
            table = self.store.tables.get(record_type)
            present = table.records if table else {}
            return {
                rid: reason
                for rep in self.seed_reports
                if rep.record_type == record_type
                for rid, reason in rep.invalid.items()
                if rid in present
            }

    def register_oauth2_client(self, client_id: str, kid: str, public_key: Any) -> None:
        """Register a certificate (a public key, PEM or ``KeyPair``) for a client id."""
        self.oauth2.register(client_id, kid, public_key)

    def job(self, job_id: str) -> dict[str, Any] | None:
        """A job as stored: ``id, record_type, method, status, results, ...``."""
        with self.lock:
            job = self.jobs.jobs.get(str(job_id))
            return None if job is None else job.as_dict()

    def query(self, q: str, offset: int = 0, limit: int = 1000) -> tuple[int, list[dict[str, Any]]]:
        """Run SuiteQL from Python: (total rows, items). Raises ``QueryError``."""
        with self.lock:
            return self.suiteql.execute(q, offset, limit)

    # ---- Sandbox hooks ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "tables": self.store.snapshot(),
            "seed_reports": [r.as_dict() for r in self.seed_reports],
            "jobs": self.jobs.snapshot(),
        }

    def restore(self, data: dict[str, Any]) -> None:
        self.store.restore(data.get("tables", {}))
        self.seed_reports = [SeedReport.from_dict(r) for r in data.get("seed_reports", [])]
        self.jobs.restore(data.get("jobs", {}))
        # unfinished jobs resume (from their next item) when the sandbox next handles a request
        self._resume_jobs = bool(self.jobs.unfinished())

    def reset_data(self) -> None:
        self.store.clear()
        self.jobs.clear()  # running job tasks see their job gone and stop
        self.seed_reports = []
        self.oauth.reset()
        self.oauth2.reset()
        self.auth_failures = []
        self._suiteql = None
        self._resume_jobs = False

    def error_response(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        code = _GENERIC_CODES.get(code, code)
        detail: dict[str, Any] = {"detail": message, "o:errorCode": code}
        if details:
            detail["o:errorPath"] = details[0]
        return _error_body(status, [detail], headers)

    async def authenticate(self, request: Request) -> Response | None:
        if not self.verify_auth:
            return None
        scope = request.scope
        if scope["path"] == TOKEN_PATH:
            return None  # the client authenticates with its assertion there
        header = request.headers.get("authorization")
        host = request.headers.get("host")
        if header and header[:7].lower() == "bearer ":
            reason = self.oauth2.verify_token(header[7:].strip(), self.clock().timestamp())
        elif not host:
            reason = "missing Host header"
        else:
            raw_path = scope.get("raw_path") or scope["path"].encode()
            uri = f"{scope['scheme']}://{host}{raw_path.decode('latin-1')}"
            reason = self.oauth.verify(
                scope["method"], uri, scope.get("query_string", b"").decode("latin-1"), header
            )
        if reason is None:
            return None
        self.auth_failures.append(reason)
        del self.auth_failures[:-100]
        return self.error_response(401, "INVALID_LOGIN", _LOGIN_DETAIL)

    def routes(self) -> list[BaseRoute]:
        return [
            Route(RECORD_PREFIX + "/{rtype}", self._collection, methods=["GET", "POST", "PUT"]),
            Route(
                RECORD_PREFIX + "/{rtype}/{ref}",
                self._record,
                methods=["GET", "PATCH", "PUT", "DELETE"],
            ),
            Route(
                RECORD_PREFIX + "/{rtype}/{ref}/!transform/{target}",
                self._transform,
                methods=["POST"],
            ),
            Route(SUITEQL_PATH, self._suiteql_handler, methods=["POST"]),
            Route(ASYNC_JOB_PREFIX + "/{job_id}", self._job_status, methods=["GET"]),
            Route(ASYNC_JOB_PREFIX + "/{job_id}/result", self._job_result, methods=["GET"]),
            Route(TOKEN_PATH, self._token, methods=["POST"]),
        ]

    def admin_routes(self) -> list[BaseRoute]:
        return [
            Route("/erp/seed", self._admin_seed, methods=["POST"]),
            Route("/erp/seed", self._admin_seed_report, methods=["GET"]),
            Route("/erp/touch/{rtype}/{ref}", self._admin_touch, methods=["POST"]),
            Route("/erp/auth-failures", self._admin_auth_failures, methods=["GET"]),
            Route("/erp/jobs", self._admin_jobs, methods=["GET"]),
        ]

    # ---- record handlers ---------------------------------------------------------------------

    async def _collection(self, request: Request) -> Response:
        self._wake_jobs()
        try:
            rtype = _record_type(request.path_params["rtype"])
            method = request.method
            if method == "GET":
                return self._list(request, rtype)
            prefer = _prefer(request)
            batch = _is_collection_body(request)
            if "respond-async" in prefer or batch or method == "PUT":
                return await self._batch(request, rtype, prefer, batch)
            return self._create(request, rtype, await _json_object(request))
        except ErpError as exc:
            return self._erp_error(exc)

    async def _record(self, request: Request) -> Response:
        self._wake_jobs()
        try:
            rtype = _record_type(request.path_params["rtype"])
            ref = _record_ref(request.path_params["ref"])
            method = request.method
            if method == "GET":
                return self._get(request, rtype, ref)
            if method == "DELETE":
                return self._delete(rtype, ref)
            body = await _json_object(request)
            if method == "PATCH":
                return self._patch(request, rtype, ref, body)
            return self._upsert(request, rtype, ref, body)
        except ErpError as exc:
            return self._erp_error(exc)

    def _erp_error(self, exc: ErpError) -> Response:
        return _error_body(exc.status, exc.details(), exc.headers)

    def _list(self, request: Request, rtype: str) -> Response:
        params = request.query_params
        limit, offset = _paging(params)
        q = params.get("q")
        with self.lock:
            table = self.store.table(rtype)
            if q is not None and q.strip():
                try:
                    predicate = compile_query(q, self.account_timezone, q_field_types(rtype))
                except QueryError as exc:
                    raise ErpError(400, "INVALID_PARAMETER", str(exc), "q") from None
                ids = table.matching(q, predicate)
                page = ids[offset : offset + limit]
                total = len(ids)
            else:
                q = None
                total = len(table.order)
                page = [str(i) for i in table.order[offset : offset + limit]]
        coll = f"{_base_url(request)}{RECORD_PREFIX}/{rtype}"
        extra = {"q": q} if q is not None else {}
        items = [{"links": [{"rel": "self", "href": f"{coll}/{rid}"}], "id": rid} for rid in page]
        body = _page(coll, limit, offset, total, items, extra)
        return _json(body, media_type=COLLECTION_MEDIA_TYPE)

    def _get(self, request: Request, rtype: str, ref: str) -> Response:
        with self.lock:
            rec = self.store.get(rtype, ref)
            if rec is None:
                raise _nonexistent(rtype, ref)
            href = f"{_base_url(request)}{RECORD_PREFIX}/{rtype}/{rec['id']}"
            body = {"links": [{"rel": "self", "href": href}], **rec}
            payload = erp_dumps(body)
        return Response(payload, media_type=SINGULAR_MEDIA_TYPE)

    def _create(self, request: Request, rtype: str, body: dict[str, Any]) -> Response:
        with self.lock:
            rid = self._apply_create(rtype, body)
        return self._located(request, rtype, rid)

    def _patch(self, request: Request, rtype: str, ref: str, body: dict[str, Any]) -> Response:
        with self.lock:
            rid = self._apply_patch(rtype, ref, body)
        return self._located(request, rtype, rid)

    def _upsert(self, request: Request, rtype: str, ref: str, body: dict[str, Any]) -> Response:
        if not ref.startswith("eid:"):
            raise ErpError(
                400, "INVALID_PARAMETER",
                "PUT is only supported with an external id (eid:...) as an upsert.",
            )  # fmt: skip
        with self.lock:
            rid = self._apply_upsert(rtype, ref[4:], body)
        return self._located(request, rtype, rid)

    # The three writes, shared by the single-record endpoints and the batch jobs. Each runs
    # under ``self.lock`` and either applies completely (with its effect) or raises ErpError.

    def _checked(self, rtype: str, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            fields = check_fields(rtype, body)
            if self.check_refs:
                check_refs(rtype, fields, self.store.exists)
        except SchemaError as exc:
            raise ErpError.of(exc) from None
        return fields

    def _apply_create(self, rtype: str, body: Mapping[str, Any]) -> str:
        fields = self._checked(rtype, body)
        table = self.store.table(rtype)
        rec = {k: v for k, v in fields.items() if v is not None}
        _require_on_create(rtype, rec)
        eid = rec.get("externalId")
        if eid is not None and eid in table.by_eid:
            raise _duplicate_eid(rtype, eid)
        _finalize(rtype, rec)
        rid = table.allocate_id()
        now = self.now_str()
        table.put({"id": rid, **rec, "createdDate": now, "lastModifiedDate": now})
        self.effects.record(f"{rtype}.created", eid or rid, type=rtype, id=rid, externalId=eid)
        return rid

    def _apply_patch(self, rtype: str, ref: str, body: Mapping[str, Any]) -> str:
        fields = self._checked(rtype, body)
        table = self.store.table(rtype)
        rid = self.store.resolve(rtype, ref)
        if rid is None:
            raise _nonexistent(rtype, ref)
        old = table.records[rid]
        new = dict(old)
        for k, v in fields.items():
            if v is None:
                new.pop(k, None)
            else:
                new[k] = v
        eid = new.get("externalId")
        if eid and table.by_eid.get(eid, rid) != rid:
            raise _duplicate_eid(rtype, eid)
        _finalize(rtype, new)
        self._apply_update(table, rtype, old, new)
        return rid

    def _apply_upsert(self, rtype: str, eid: str, body: Mapping[str, Any]) -> str:
        fields = self._checked(rtype, body)
        if fields.get("externalId") not in (None, eid):
            raise ErpError(
                400, "INVALID_PARAMETER",
                f"externalId {fields['externalId']!r} in the body differs from {eid!r} in the URL.",
                "externalId",
            )  # fmt: skip
        content = {k: v for k, v in fields.items() if v is not None}
        content["externalId"] = eid
        table = self.store.table(rtype)
        rid = table.by_eid.get(eid)
        if rid is None:
            _require_on_create(rtype, content)
            _finalize(rtype, content)
            rid = table.allocate_id()
            now = self.now_str()
            table.put({"id": rid, **content, "createdDate": now, "lastModifiedDate": now})
            self.effects.record(f"{rtype}.created", eid, type=rtype, id=rid, externalId=eid)
        else:
            old = table.records[rid]
            new = {k: old[k] for k in ("id", "createdDate", "lastModifiedDate") if k in old}
            new.update(content)
            _finalize(rtype, new)
            self._apply_update(table, rtype, old, new)
        return rid

    def _apply_update(
        self, table: Any, rtype: str, old: dict[str, Any], new: dict[str, Any]
    ) -> None:
        rid = old["id"]
        changed = sorted(
            k for k in set(old) | set(new)
            if k not in ("lastModifiedDate",) and old.get(k, _MISSING) != new.get(k, _MISSING)
        )  # fmt: skip
        key = new.get("externalId") or old.get("externalId") or rid
        if not changed:
            self.effects.record(f"{rtype}.unchanged", key, type=rtype, id=rid)
            return
        new["lastModifiedDate"] = self.now_str()
        table.put(new)
        self.effects.record(f"{rtype}.updated", key, type=rtype, id=rid, fields=changed)

    def _delete(self, rtype: str, ref: str) -> Response:
        with self.lock:
            table = self.store.table(rtype)
            rid = self.store.resolve(rtype, ref)
            if rid is None:
                raise _nonexistent(rtype, ref)
            rec = table.remove(rid)
            assert rec is not None
            self.effects.record(
                f"{rtype}.deleted", rec.get("externalId") or rid, type=rtype, id=rid,
                externalId=rec.get("externalId"),
            )  # fmt: skip
        return Response(status_code=204)

    # ---- transforms --------------------------------------------------------------------------

    async def _transform(self, request: Request) -> Response:
        """``POST .../{type}/{id}/!transform/{target}``: a new record made from another.

        Not idempotent, as in NetSuite: every call creates a record (a repeated
        ``externalId`` is refused as a duplicate), so clients look the target up first."""
        self._wake_jobs()
        try:
            rtype = _record_type(request.path_params["rtype"])
            ref = _record_ref(request.path_params["ref"])
            target = _record_type(request.path_params["target"])
            if target not in TRANSFORMS.get(rtype, ()):
                raise ErpError(
                    400, "INVALID_PARAMETER",
                    f"Transformation of {rtype} into {target} is not supported.",
                )  # fmt: skip
            body = await _json_object(request)
            with self.lock:
                rid = self._apply_transform(rtype, ref, target, body)
            return self._located(request, target, rid)
        except ErpError as exc:
            return self._erp_error(exc)

    def _apply_transform(
        self, rtype: str, ref: str, target: str, body: Mapping[str, Any]
    ) -> str:
        sid = self.store.resolve(rtype, ref)
        if sid is None:
            raise _nonexistent(rtype, ref)
        source = self.store.table(rtype).records[sid]
        schema = RECORD_SCHEMAS.get(target, {})
        record: dict[str, Any] = {
            k: source[k] for k in ("entity", "currency") if k in source and k in schema
        }
        if "createdFrom" in schema:
            record["createdFrom"] = {"id": sid}
        record["tranDate"] = self.clock().date().isoformat()
        if target == "vendorPayment":
            amount = source.get("total") or 0
            record["apply"] = {"items": [{"doc": {"id": sid}, "amount": amount}]}
            record["total"] = amount
        elif "item" in schema:
            record["item"] = {"items": self._transform_lines(rtype, sid, source, target, body)}
        extra = {k: v for k, v in body.items() if k != "item"}
        record.update(extra)
        rid = self._apply_create(target, record)
        self.effects.record(
            f"{target}.transformed", record.get("externalId") or rid, type=target, id=rid,
            source=f"{rtype}:{sid}",
        )  # fmt: skip
        return rid

    def _transform_lines(
        self, rtype: str, sid: str, source: Mapping[str, Any], target: str,
        body: Mapping[str, Any],
    ) -> list[dict[str, Any]]:
        """The source's lines, or those the body names by ``line`` with its changes; a
        quantity may not exceed what the source line has left for this target type."""
        lines = {
            line["line"]: {k: v for k, v in line.items() if k != "amount"}
            for line in (source.get("item") or {}).get("items") or []
        }
        wanted = (body.get("item") or {}).get("items") if isinstance(body.get("item"), dict) \
            else None
        if wanted is None:
            chosen = [dict(line) for line in lines.values()]
        else:
            chosen = []
            for i, change in enumerate(wanted):
                number = change.get("line") if isinstance(change, dict) else None
                if number not in lines:
                    raise ErpError(
                        400, "INVALID_PARAMETER",
                        f"Line {number!r} is not a line of {rtype} {sid}.",
                        f"item.items[{i}].line",
                    )  # fmt: skip
                chosen.append({**lines[number], **change})
        done: dict[Any, Any] = {}
        for rec in self.store.table(target).records.values():
            if (rec.get("createdFrom") or {}).get("id") == sid:
                for line in (rec.get("item") or {}).get("items") or []:
                    done[line.get("line")] = done.get(line.get("line"), 0) + (
                        line.get("quantity") or 0)
        for i, line in enumerate(chosen):
            ordered = lines[line["line"]].get("quantity") or 0
            left = ordered - done.get(line["line"], 0)
            if (line.get("quantity") or 0) > left:
                raise ErpError(
                    400, "USER_ERROR",
                    f"You cannot transform more than {left} of line {line['line']} of "
                    f"{rtype} {sid} into {target}.",
                    f"item.items[{i}].quantity",
                )  # fmt: skip
        return chosen

    def _located(self, request: Request, rtype: str, rid: str) -> Response:
        location = f"{_base_url(request)}{RECORD_PREFIX}/{rtype}/{rid}"
        return Response(status_code=204, headers={"Location": location})

    # ---- SuiteQL -------------------------------------------------------------------------------

    async def _suiteql_handler(self, request: Request) -> Response:
        self._wake_jobs()
        try:
            if "transient" not in _prefer(request):
                raise ErpError(
                    400, "INVALID_PARAMETER",
                    "SuiteQL requests need the header 'Prefer: transient'.", "Prefer",
                )  # fmt: skip
            limit, offset = _paging(request.query_params)
            if offset + limit > MAX_RESULT_ROWS:
                raise ErpError(
                    400, "INVALID_PARAMETER",
                    f"Invalid value for query parameters offset and limit: offset + limit "
                    f"({offset} + {limit}) exceeds {MAX_RESULT_ROWS}, the most rows a SuiteQL "
                    f"query returns. Read larger results in key ranges "
                    f"(WHERE id > :last ORDER BY id).",
                    "offset",
                )  # fmt: skip
            body = await _json_object(request)
            q = body.get("q")
            if not isinstance(q, str):
                raise ErpError(400, "INVALID_PARAMETER", 'The body must be {"q": "<SuiteQL>"}.', "q")
            unknown = sorted(set(body) - {"q"})
            if unknown:
                raise ErpError(400, "INVALID_PARAMETER", f"Invalid field {unknown[0]!r} in the body.", unknown[0])
            with self.lock:
                try:
                    total, items = self.suiteql.execute(q, offset, limit)
                except QueryError as exc:
                    raise ErpError(400, "INVALID_PARAMETER", str(exc), "q") from None
        except ErpError as exc:
            return self._erp_error(exc)
        url = f"{_base_url(request)}{SUITEQL_PATH}"
        return _json(_page(url, limit, offset, total, items), media_type=COLLECTION_MEDIA_TYPE)

    # ---- asynchronous batches -------------------------------------------------------------------

    async def _batch(
        self, request: Request, rtype: str, prefer: set[str], collection_body: bool
    ) -> Response:
        method = request.method
        if "respond-async" not in prefer:
            what = "PUT on a collection" if method == "PUT" else "A collection body"
            raise ErpError(
                400, "INVALID_PARAMETER",
                f"{what} is an asynchronous batch: send 'Prefer: respond-async'.", "Prefer",
            )  # fmt: skip
        if not collection_body:
            raise ErpError(
                400, "INVALID_PARAMETER",
                f"Batch requests need 'Content-Type: {COLLECTION_MEDIA_TYPE}'.", "Content-Type",
            )  # fmt: skip
        key = request.headers.get("x-netsuite-idempotency-key")
        if key is not None and not UUID_RE.match(key.strip()):
            raise ErpError(
                400, "INVALID_PARAMETER",
                f"Invalid idempotency key {key!r}: it must be a UUID.",
                "X-NetSuite-idempotency-key",
            )  # fmt: skip
        raw = await request.body()  # read before the check below, which must not await
        base = _base_url(request)
        with self.lock:
            if key is not None:
                first = self.jobs.by_key(key.strip())
                if first is not None:
                    raise ErpError(
                        400, "IDEMPOTENCY_ERROR",
                        f"The idempotency key {key} was already used (job {first.id}); "
                        f"nothing was applied again.",
                        "X-NetSuite-idempotency-key",
                        headers={"Location": f"{base}{ASYNC_JOB_PREFIX}/{first.id}"},
                    )  # fmt: skip
            items = _batch_items(raw)
            job = self.jobs.create(rtype, method, items, key.strip() if key else None, self.now_str())
        self._start_job(job)
        return Response(status_code=202, headers={"Location": f"{base}{ASYNC_JOB_PREFIX}/{job.id}"})

    def _start_job(self, job: Job) -> None:
        task = asyncio.get_running_loop().create_task(self._run_job(job))
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)

    def _wake_jobs(self) -> None:
        """Resume jobs a restored snapshot left unfinished (needs the server's event loop)."""
        if self._resume_jobs:
            self._resume_jobs = False
            with self.lock:
                unfinished = self.jobs.unfinished()
            for job in unfinished:
                self._start_job(job)

    async def _run_job(self, job: Job) -> None:
        try:
            if self.job_delay_s > 0:
                await asyncio.sleep(self.job_delay_s)
            while True:
                with self.lock:
                    if self.jobs.jobs.get(job.id) is not job:
                        return  # the sandbox was reset
                    job.status = "running"
                    # a slice of items at a time: requests get in between slices, and the
                    # per-item cost is not dominated by trips round the event loop
                    for _ in range(JOB_SLICE):
                        index = len(job.results)
                        if index >= len(job.items):
                            job.status = "completed"
                            job.finished = self.now_str()
                            job.items = []
                            return
                        job.results.append(self._job_item(job, index, job.items[index]))
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: batch job %s failed", self.name, job.id)
            with self.lock:
                job.status = "failed"
                job.finished = self.now_str()

    def _job_item(self, job: Job, index: int, body: Any) -> dict[str, Any]:
        eid = body.get("externalId") if isinstance(body, dict) else None
        eid = eid if isinstance(eid, str) else None
        result: dict[str, Any] = {"index": index}
        try:
            if not isinstance(body, dict):
                raise ErpError(400, "INVALID_PARAMETER", f"Item {index} is not a JSON object.")
            if job.method == "PUT":
                if not eid:
                    raise ErpError(
                        400, "INVALID_PARAMETER",
                        "An upsert (PUT) item needs its externalId.", "externalId",
                    )  # fmt: skip
                _record_ref("eid:" + eid)
                rid = self._apply_upsert(job.record_type, eid, body)
            else:
                rid = self._apply_create(job.record_type, body)
        except ErpError as exc:
            result["status"] = exc.status
            if eid:
                result["externalId"] = eid
            result["o:errorDetails"] = exc.details()
            return result
        result["status"] = 204
        result["id"] = rid
        if eid:
            result["externalId"] = eid
        return result

    async def _job_status(self, request: Request) -> Response:
        self._wake_jobs()
        try:
            job_id = _job_id(request)
            with self.lock:
                job = self._find_job(job_id)
                url = f"{_base_url(request)}{ASYNC_JOB_PREFIX}/{job.id}"
                links = [{"rel": "self", "href": url}]
                if job.done:
                    links.append({"rel": "result", "href": f"{url}/result"})
                body = {"links": links, "id": job.id, "status": job.status, "completed": job.done}
        except ErpError as exc:
            return self._erp_error(exc)
        return _json(body)

    async def _job_result(self, request: Request) -> Response:
        self._wake_jobs()
        try:
            job_id = _job_id(request)
            with self.lock:
                job = self._find_job(job_id)
                if not job.done:
                    raise ErpError(
                        400, "INVALID_PARAMETER",
                        f"Job {job.id} has not completed (status {job.status}); poll "
                        f"{ASYNC_JOB_PREFIX}/{job.id} until completed is true.",
                    )  # fmt: skip
                payload = erp_dumps({"items": job.results})
        except ErpError as exc:
            return self._erp_error(exc)
        return Response(payload, media_type="application/json")

    def _find_job(self, job_id: str) -> Job:
        job = self.jobs.jobs.get(job_id)
        if job is None:
            raise ErpError(404, "NONEXISTENT_ID", f"The job {job_id} does not exist.")
        return job

    # ---- OAuth 2.0 ---------------------------------------------------------------------------------

    async def _token(self, request: Request) -> Response:
        headers = {"Cache-Control": "no-store"}
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return json_response(
                {"error": "invalid_request",
                 "error_description": "the body must be application/x-www-form-urlencoded"},
                status=400, headers=headers,
            )  # fmt: skip
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        audience = f"{request.url.scheme}://{request.headers.get('host') or request.url.netloc}{TOKEN_PATH}"
        try:
            with self.lock:
                answer = self.oauth2.exchange(form, audience, self.clock().timestamp())
        except OAuth2Refusal as exc:
            self.auth_failures.append(f"oauth2: {exc.description}")
            del self.auth_failures[:-100]
            return json_response(
                {"error": exc.error, "error_description": exc.description},
                status=400, headers=headers,
            )  # fmt: skip
        return json_response(answer, headers=headers)

    # ---- admin handlers -----------------------------------------------------------------------

    async def _admin_seed(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            report = self.seed_inventory_items(
                int(body.get("n", 0)),
                int(body.get("invalid", 0)),
                seed=int(body.get("seed", 0)),
                start_id=body.get("start_id"),
                modified_at=body.get("modified_at"),
            )
        except (ValueError, TypeError) as exc:
            return json_response({"error": {"code": "invalid", "message": str(exc)}}, status=400)
        return json_response({"count": len(report.ids), "invalid": report.invalid})

    async def _admin_seed_report(self, request: Request) -> Response:
        invalid = self.invalid_seeds()
        return json_response({"invalid": invalid, "count": len(invalid)})

    async def _admin_touch(self, request: Request) -> Response:
        try:
            changes = erp_loads(await request.body() or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("body must be a JSON object")
            rec = self.touch(request.path_params["rtype"], request.path_params["ref"], **changes)
        except KeyError as exc:
            return json_response({"error": {"code": "not_found", "message": str(exc)}}, status=404)
        except (ValueError, TypeError) as exc:
            return json_response({"error": {"code": "invalid", "message": str(exc)}}, status=400)
        return _json(rec)

    async def _admin_auth_failures(self, request: Request) -> Response:
        return json_response({"failures": list(self.auth_failures)})

    async def _admin_jobs(self, request: Request) -> Response:
        with self.lock:
            jobs = [to_snapshot(j.as_dict()) for j in self.jobs.jobs.values()]
        return _json({"jobs": jobs, "count": len(jobs)})


_MISSING = object()
JOB_SLICE = 25


def _json(
    data: Any, status: int = 200, media_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    return Response(erp_dumps(data), status_code=status, headers=headers, media_type=media_type)


def _error_body(status: int, details: list[dict[str, Any]], headers: dict[str, str] | None) -> Response:
    type_uri, title = _STATUS_INFO.get(
        status, (f"https://www.rfc-editor.org/rfc/rfc9110.html#status.{status}", "Error")
    )
    body = {"type": type_uri, "title": title, "status": status, "o:errorDetails": details}
    return _json(body, status=status, media_type=ERROR_MEDIA_TYPE, headers=headers)


def _page(
    url: str,
    limit: int,
    offset: int,
    total: int,
    items: list[dict[str, Any]],
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The paging envelope of collections and SuiteQL."""

    def link(rel: str, off: int) -> dict[str, str]:
        query = {"limit": str(limit), "offset": str(off), **(extra or {})}
        return {"rel": rel, "href": f"{url}?{urlencode(query, quote_via=quote)}"}

    links: list[dict[str, str]] = []
    last_offset = max(0, ((total - 1) // limit) * limit) if total else 0
    if offset > 0:
        links.append(link("previous", max(0, offset - limit)))
        links.append(link("first", 0))
    has_more = offset + len(items) < total
    if has_more:
        links.append(link("next", offset + limit))
        links.append(link("last", last_offset))
    links.append(link("self", offset))
    return {
        "links": links,
        "count": len(items),
        "hasMore": has_more,
        "items": items,
        "offset": offset,
        "totalResults": total,
    }


def _paging(params: Mapping[str, str]) -> tuple[int, int]:
    limit = _int_param(params.get("limit"), "limit", MAX_PAGE, minimum=1)
    if limit > MAX_PAGE:
        raise ErpError(
            400, "INVALID_PARAMETER",
            f"Invalid value for query parameter limit: {limit}. The maximum is {MAX_PAGE}.",
            "limit",
        )  # fmt: skip
    offset = _int_param(params.get("offset"), "offset", 0, minimum=0)
    return limit, offset


def _prefer(request: Request) -> set[str]:
    """The preferences of the ``Prefer`` header(s), lower case, without parameters."""
    out: set[str] = set()
    for value in request.headers.getlist("prefer"):
        for part in value.split(","):
            token = part.split(";")[0].split("=")[0].strip().lower()
            if token:
                out.add(token)
    return out


def _is_collection_body(request: Request) -> bool:
    parts = [p.strip().lower() for p in request.headers.get("content-type", "").split(";")]
    if parts[0] != "application/vnd.oracle.resource+json":
        return False
    return any(p.replace(" ", "") == "type=collection" for p in parts[1:])


def _batch_items(raw: bytes) -> list[Any]:
    try:
        body = erp_loads(raw) if raw else None
    except ValueError as exc:
        raise ErpError(400, "INVALID_PARAMETER", f"Invalid JSON in request body: {exc}.") from None
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise ErpError(400, "INVALID_PARAMETER", 'A batch body is {"items": [record, ...]}.', "items")
    unknown = sorted(set(body) - {"items"})
    if unknown:
        raise ErpError(400, "INVALID_PARAMETER", f"Invalid field {unknown[0]!r} in a batch body.", unknown[0])
    items = body["items"]
    if not items:
        raise ErpError(400, "INVALID_PARAMETER", "A batch needs at least one item.", "items")
    if len(items) > MAX_BATCH_ITEMS:
        raise ErpError(
            400, "INVALID_PARAMETER",
            f"A batch holds at most {MAX_BATCH_ITEMS} items, got {len(items)}.", "items",
        )  # fmt: skip
    return items


def _job_id(request: Request) -> str:
    job_id = request.path_params["job_id"]
    if not INTERNAL_ID_RE.match(job_id):
        raise ErpError(404, "NONEXISTENT_ID", f"The job {job_id} does not exist.")
    return job_id


def _normalize_dt(value: datetime | str) -> str:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return format_datetime(value)


def _base_url(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host') or request.url.netloc}"


def _record_type(rtype: str) -> str:
    if not TYPE_RE.match(rtype):
        raise ErpError(400, "INVALID_PARAMETER", f"Invalid record type {rtype!r}.")
    return rtype


def _record_ref(ref: str) -> str:
    if ref.startswith("eid:"):
        if not EXTERNAL_ID_RE.match(ref[4:]):
            raise ErpError(
                400, "INVALID_PARAMETER",
                f"Invalid external id {ref[4:]!r}: use letters, digits, '_' and '-'.",
                "externalId",
            )  # fmt: skip
        return ref
    if not INTERNAL_ID_RE.match(ref):
        raise ErpError(400, "INVALID_PARAMETER", f"Invalid record id {ref!r}.")
    return ref


def _int_param(raw: str | None, name: str, default: int, minimum: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ErpError(
            400, "INVALID_PARAMETER", f"Invalid value for query parameter {name}: {raw!r}.", name
        ) from None
    if value < minimum:
        raise ErpError(
            400, "INVALID_PARAMETER",
            f"Invalid value for query parameter {name}: {value}. The minimum is {minimum}.", name,
        )  # fmt: skip
    return value


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = erp_loads(raw) if raw else None
    except ValueError as exc:
        raise ErpError(400, "INVALID_PARAMETER", f"Invalid JSON in request body: {exc}.") from None
    if not isinstance(body, dict):
        raise ErpError(400, "INVALID_PARAMETER", "The request body must be a JSON object.")
    return body


def _finalize(rtype: str, rec: dict[str, Any]) -> None:
    try:
        finalize(rtype, rec)
    except SchemaError as exc:
        raise ErpError.of(exc) from None


def _require_on_create(rtype: str, rec: Mapping[str, Any]) -> None:
    missing = [f for f in REQUIRED_ON_CREATE.get(rtype, ()) if rec.get(f) in (None, "")]
    if missing:
        raise ErpError(
            400, "USER_ERROR", f"Please enter value(s) for: {', '.join(missing)}", missing[0]
        )


def _nonexistent(rtype: str, ref: str) -> ErpError:
    return ErpError(
        404, "NONEXISTENT_ID",
        f"The record instance does not exist. Provide a valid record instance ID "
        f"({rtype} {ref}).",
    )  # fmt: skip


def _duplicate_eid(rtype: str, eid: str) -> ErpError:
    return ErpError(
        400, "USER_ERROR",
        f"A record of type {rtype} with external ID {eid} already exists "
        f"(duplicate external id).",
        "externalId",
    )  # fmt: skip
