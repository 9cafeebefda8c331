"""The ERP sandbox: NetSuite-style REST record service (DESIGN.md section 5, "ERP").

Behaviour the connector must cope with is reproduced on purpose: create answers 204 with only
a ``Location`` header, collections list ids and links but no fields, PUT is an upsert only
on ``eid:``, over-limit requests get 429 without ``Retry-After``, and every error uses
NetSuite's envelope.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox.core import Sandbox, dumps, json_response
from sandbox.erp.auth import DEFAULT_CREDENTIALS, Credentials, OAuthVerifier
from sandbox.erp.query import QueryError, compile_query, format_datetime
from sandbox.erp.seed import SeedReport, generate_inventory_items
from sandbox.erp.store import (
    EXTERNAL_ID_RE,
    INTERNAL_ID_RE,
    READ_ONLY_FIELDS,
    RECORD_SCHEMAS,
    REQUIRED_ON_CREATE,
    TYPE_RE,
    RecordStore,
)
from sandbox.sites import Site, normalize_sites

__all__ = ["DEFAULT_CONCURRENCY_LIMIT", "ERROR_MEDIA_TYPE", "ErpError", "ErpSandbox"]

RECORD_PREFIX = "/services/rest/record/v1"
DEFAULT_CONCURRENCY_LIMIT = 5
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

    def __init__(self, status: int, code: str, detail: str, path: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.path = status, code, detail, path


class ErpSandbox(Sandbox):
    """A NetSuite-style account: generic record store, OAuth 1.0a TBA, account governance."""

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
        self.store = RecordStore()
        self.seed_reports: list[SeedReport] = []
        #: why the last refused logins were refused (the client only sees INVALID_LOGIN)
        self.auth_failures: list[str] = []

    # ---- data helpers (tests and the demo) --------------------------------------------------

    @property
    def records(self) -> dict[str, dict[str, dict[str, Any]]]:
        return self.store.records

    def now_str(self) -> str:
        return format_datetime(self.clock())

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
        Datetimes may be ``datetime`` objects or ISO strings and are stored normalised."""
        with self.lock:
            table = self.store.table(record_type)
            rec = {k: v for k, v in record.items() if v is not None and k != "links"}
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
                    rec[k] = v
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

    # ---- Sandbox hooks ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "tables": self.store.snapshot(),
            "seed_reports": [r.as_dict() for r in self.seed_reports],
        }

    def restore(self, data: dict[str, Any]) -> None:
        self.store.restore(data.get("tables", {}))
        self.seed_reports = [SeedReport.from_dict(r) for r in data.get("seed_reports", [])]

    def reset_data(self) -> None:
        self.store.clear()
        self.seed_reports = []
        self.oauth.reset()
        self.auth_failures = []

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
        type_uri, title = _STATUS_INFO.get(
            status, (f"https://www.rfc-editor.org/rfc/rfc9110.html#status.{status}", "Error")
        )
        detail: dict[str, Any] = {"detail": message, "o:errorCode": code}
        if details:
            detail["o:errorPath"] = details[0]
        body = {"type": type_uri, "title": title, "status": status, "o:errorDetails": [detail]}
        return Response(dumps(body), status_code=status, headers=headers, media_type=ERROR_MEDIA_TYPE)

    async def authenticate(self, request: Request) -> Response | None:
        if not self.verify_auth:
            return None
        scope = request.scope
        host = request.headers.get("host")
        if not host:
            reason: str | None = "missing Host header"
        else:
            raw_path = scope.get("raw_path") or scope["path"].encode()
            uri = f"{scope['scheme']}://{host}{raw_path.decode('latin-1')}"
            reason = self.oauth.verify(
                scope["method"],
                uri,
                scope.get("query_string", b"").decode("latin-1"),
                request.headers.get("authorization"),
            )
        if reason is None:
            return None
        self.auth_failures.append(reason)
        del self.auth_failures[:-100]
        return self.error_response(401, "INVALID_LOGIN", _LOGIN_DETAIL)

    def routes(self) -> list[BaseRoute]:
        return [
            Route(RECORD_PREFIX + "/{rtype}", self._collection, methods=["GET", "POST"]),
            Route(
                RECORD_PREFIX + "/{rtype}/{ref}",
                self._record,
                methods=["GET", "PATCH", "PUT", "DELETE"],
            ),
        ]

    def admin_routes(self) -> list[BaseRoute]:
        return [
            Route("/erp/seed", self._admin_seed, methods=["POST"]),
            Route("/erp/seed", self._admin_seed_report, methods=["GET"]),
            Route("/erp/touch/{rtype}/{ref}", self._admin_touch, methods=["POST"]),
            Route("/erp/auth-failures", self._admin_auth_failures, methods=["GET"]),
        ]

    # ---- handlers ----------------------------------------------------------------------------

    async def _collection(self, request: Request) -> Response:
        try:
            rtype = _record_type(request.path_params["rtype"])
            if request.method == "GET":
                return self._list(request, rtype)
            return self._create(request, rtype, await _json_object(request))
        except ErpError as exc:
            return self._erp_error(exc)

    async def _record(self, request: Request) -> Response:
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
        return self.error_response(
            exc.status, exc.code, exc.detail, details=[exc.path] if exc.path else None
        )

    def _list(self, request: Request, rtype: str) -> Response:
        params = request.query_params
        limit = _int_param(params.get("limit"), "limit", MAX_PAGE, minimum=1)
        if limit > MAX_PAGE:
            raise ErpError(
                400, "INVALID_PARAMETER",
                f"Invalid value for query parameter limit: {limit}. The maximum is {MAX_PAGE}.",
                "limit",
            )  # fmt: skip
        offset = _int_param(params.get("offset"), "offset", 0, minimum=0)
        q = params.get("q")
        with self.lock:
            table = self.store.table(rtype)
            if q is not None and q.strip():
                try:
                    predicate = compile_query(q, self.account_timezone, RECORD_SCHEMAS.get(rtype))
                except QueryError as exc:
                    raise ErpError(400, "INVALID_PARAMETER", str(exc), "q") from None
                ids = table.matching(q, predicate)
                page = ids[offset : offset + limit]
                total = len(ids)
            else:
                q = None
                total = len(table.order)
                page = [str(i) for i in table.order[offset : offset + limit]]
        base = _base_url(request)
        coll = f"{base}{RECORD_PREFIX}/{rtype}"

        def link(rel: str, off: int) -> dict[str, str]:
            query = {"limit": str(limit), "offset": str(off)}
            if q is not None:
                query["q"] = q
            return {"rel": rel, "href": f"{coll}?{urlencode(query, quote_via=quote)}"}

        links: list[dict[str, str]] = []
        last_offset = max(0, ((total - 1) // limit) * limit) if total else 0
        if offset > 0:
            links.append(link("previous", max(0, offset - limit)))
            links.append(link("first", 0))
        has_more = offset + len(page) < total
        if has_more:
            links.append(link("next", offset + limit))
            links.append(link("last", last_offset))
        links.append(link("self", offset))
        items = [{"links": [{"rel": "self", "href": f"{coll}/{rid}"}], "id": rid} for rid in page]
        body = {
            "links": links,
            "count": len(page),
            "hasMore": has_more,
            "items": items,
            "offset": offset,
            "totalResults": total,
        }
        return json_response(body, media_type=COLLECTION_MEDIA_TYPE)

    def _get(self, request: Request, rtype: str, ref: str) -> Response:
        with self.lock:
            rec = self.store.get(rtype, ref)
            if rec is None:
                raise _nonexistent(rtype, ref)
            href = f"{_base_url(request)}{RECORD_PREFIX}/{rtype}/{rec['id']}"
            body = {"links": [{"rel": "self", "href": href}], **rec}
        return json_response(body, media_type=SINGULAR_MEDIA_TYPE)

    def _create(self, request: Request, rtype: str, body: dict[str, Any]) -> Response:
        fields = _writable(rtype, body)
        with self.lock:
            table = self.store.table(rtype)
            rec = {k: v for k, v in fields.items() if v is not None}
            _require_on_create(rtype, rec)
            eid = rec.get("externalId")
            if eid is not None and eid in table.by_eid:
                raise _duplicate_eid(rtype, eid)
            rid = table.allocate_id()
            now = self.now_str()
            table.put({"id": rid, **rec, "createdDate": now, "lastModifiedDate": now})
            self.effects.record(f"{rtype}.created", eid or rid, type=rtype, id=rid, externalId=eid)
        return self._located(request, rtype, rid)

    def _patch(self, request: Request, rtype: str, ref: str, body: dict[str, Any]) -> Response:
        fields = _writable(rtype, body)
        with self.lock:
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
            self._apply_update(table, rtype, old, new)
        return self._located(request, rtype, rid)

    def _upsert(self, request: Request, rtype: str, ref: str, body: dict[str, Any]) -> Response:
        if not ref.startswith("eid:"):
            raise ErpError(
                400, "INVALID_PARAMETER",
                "PUT is only supported with an external id (eid:...) as an upsert.",
            )  # fmt: skip
        eid = ref[4:]
        fields = _writable(rtype, body)
        if fields.get("externalId") not in (None, eid):
            raise ErpError(
                400, "INVALID_PARAMETER",
                f"externalId {fields['externalId']!r} in the body differs from {eid!r} in the URL.",
                "externalId",
            )  # fmt: skip
        content = {k: v for k, v in fields.items() if v is not None}
        content["externalId"] = eid
        with self.lock:
            table = self.store.table(rtype)
            rid = table.by_eid.get(eid)
            if rid is None:
                _require_on_create(rtype, content)
                rid = table.allocate_id()
                now = self.now_str()
                table.put({"id": rid, **content, "createdDate": now, "lastModifiedDate": now})
                self.effects.record(f"{rtype}.created", eid, type=rtype, id=rid, externalId=eid)
            else:
                old = table.records[rid]
                new = {k: old[k] for k in ("id", "createdDate", "lastModifiedDate") if k in old}
                new.update(content)
                self._apply_update(table, rtype, old, new)
        return self._located(request, rtype, rid)

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

    def _located(self, request: Request, rtype: str, rid: str) -> Response:
        location = f"{_base_url(request)}{RECORD_PREFIX}/{rtype}/{rid}"
        return Response(status_code=204, headers={"Location": location})

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
            changes = json.loads(await request.body() or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("body must be a JSON object")
            rec = self.touch(request.path_params["rtype"], request.path_params["ref"], **changes)
        except KeyError as exc:
            return json_response({"error": {"code": "not_found", "message": str(exc)}}, status=404)
        except (ValueError, TypeError) as exc:
            return json_response({"error": {"code": "invalid", "message": str(exc)}}, status=400)
        return json_response(rec)

    async def _admin_auth_failures(self, request: Request) -> Response:
        return json_response({"failures": list(self.auth_failures)})


_MISSING = object()


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
        body = json.loads(raw) if raw else None
    except ValueError as exc:
        raise ErpError(400, "INVALID_PARAMETER", f"Invalid JSON in request body: {exc}.") from None
    if not isinstance(body, dict):
        raise ErpError(400, "INVALID_PARAMETER", "The request body must be a JSON object.")
    return body


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "datetime": lambda v: isinstance(v, str),
}


def _writable(rtype: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a client may set; for a type with a schema, checked against it."""
    fields = {k: v for k, v in body.items() if k not in READ_ONLY_FIELDS}
    schema = RECORD_SCHEMAS.get(rtype)
    for name, value in fields.items():
        if schema is not None:
            if name not in schema:
                raise ErpError(
                    400, "INVALID_PARAMETER", f"Invalid field {name!r} for record type {rtype}.",
                    name,
                )  # fmt: skip
            if value is not None and not _TYPE_CHECKS[schema[name]](value):
                raise ErpError(
                    400, "INVALID_PARAMETER",
                    f"Invalid value for field {name}: expected {schema[name]}, got {value!r}.",
                    name,
                )  # fmt: skip
    eid = fields.get("externalId")
    if eid is not None and (not isinstance(eid, str) or not EXTERNAL_ID_RE.match(eid)):
        raise ErpError(
            400, "INVALID_PARAMETER",
            f"Invalid externalId {eid!r}: use letters, digits, '_' and '-'.", "externalId",
        )  # fmt: skip
    return fields


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
