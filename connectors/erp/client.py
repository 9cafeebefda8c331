"""NetSuite-style REST client: records, collections with ``q`` filters, paging, upserts.

Reads: a collection lists only ids, so reading fields costs one GET per record; the client
runs those GETs concurrently under the account's limit. Writes: upsert by external id
(``PUT .../eid:X``) is the idempotent write; ``create`` is not and callers that need exactly
once look the record up by external id first.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from connectors.erp.auth import TokenAuth
from connectors.erp.config import ErpSettings, realm_for
from connectors.errors import (
    AuthError,
    ConflictError,
    InvalidRecordError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    ServerError,
)
from connectors.http import (
    DEFAULT_RETRY,
    ErrorTable,
    HttpConnector,
    RetryPolicy,
    Timeouts,
    paginate,
)
from connectors.limits import ConcurrencyLimiter, shared_limiter
from connectors.paging import OffsetPaginator

RECORD_PATH = "/services/rest/record/v1"
EXTERNAL_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")

ERP_ERRORS = ErrorTable(by_code={
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


class ErpClient(HttpConnector):
    system = "erp"
    error_table = ERP_ERRORS

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
            auth=TokenAuth(settings),
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
