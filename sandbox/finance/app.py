"""The group finance sandbox: a SOAP 1.1 document/literal posting service (DESIGN.md section 5,
"Group finance system: SOAP"; CONTRACTS.md "Group finance system"; the WSDL in
``connectors/finance/groupfinance.wsdl``, read as a data file).

One endpoint, ``/soap/groupfinance``: ``GET ?wsdl`` serves the WSDL with its address rewritten
to the address the client used; ``POST`` (``text/xml; charset=utf-8`` and a ``SOAPAction``)
runs an operation. A request goes through, in order: content type, ``SOAPAction`` present,
size, XML safety (no DTD, no entities), SOAP 1.1 envelope, ``mustUnderstand`` headers,
WS-Security UsernameToken, the operation (the body element) and its ``SOAPAction``, the
schema from the WSDL, the server-fault switch, then the business rules.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from lxml import etree
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sandbox.core import Sandbox, json_response
from sandbox.finance.soap import (
    FAULT_CLIENT,
    FAULT_FAILED_AUTHENTICATION,
    FAULT_MUST_UNDERSTAND,
    FAULT_SERVER,
    FAULT_VERSION_MISMATCH,
    GF_NS,
    SOAP12_ENV_NS,
    SOAP_ENV_NS,
    WSSE_NS,
    XML_CONTENT_TYPE,
    FieldError,
    SoapFault,
    parse_xml,
    xml_response,
)
from sandbox.finance.wsdl import Operation, ServiceDescription, load_service
from sandbox.finance.wsse import UsernameTokenVerifier
from sandbox.money import MINOR_UNITS

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_PASSWORD",
    "DEFAULT_USERNAME",
    "MAX_BODY_BYTES",
    "POSTING_KINDS",
    "POSTING_OPERATIONS",
    "SERVER_FAULT_MESSAGE",
    "URL_PATH",
    "FinanceSandbox",
]

URL_PATH = "/soap/groupfinance"
#: Sandbox-only credentials; nothing real is protected by these.
DEFAULT_USERNAME = "vf-finance-sandbox"
DEFAULT_PASSWORD = "vf-finance-sandbox-password-0001"
MAX_BODY_BYTES = 5 * 1024 * 1024
DEFAULT_PAGE_SIZE = 100
AUTH_FAILED_MESSAGE = "The security token could not be authenticated or authorized"
SERVER_FAULT_MESSAGE = "The group finance system is temporarily unavailable; try again later"

POSTING_KINDS: dict[str, str] = {
    "PostPurchaseCost": "PURCHASE_COST",
    "PostInventoryValuation": "INVENTORY_VALUATION",
    "PostCostOfSales": "COST_OF_SALES",
    "PostProcurementInvoice": "PROCUREMENT_INVOICE",
}
POSTING_OPERATIONS = frozenset(POSTING_KINDS)

_LINE_FIELDS = ("account", "costCenter", "sku", "batchNo", "quantity", "amount", "memo")
_INVOICE_FIELDS = ("vendorId", "invoiceNo", "invoiceDate", "taxAmount")
_DATE_RE = re.compile(r"^(-?\d{4,})-(\d{2})-(\d{2})")


def _gf(tag: str) -> str:
    return f"{{{GF_NS}}}{tag}"


def _text(parent: etree._Element, tag: str) -> str | None:
    el = parent.find(_gf(tag))
    return None if el is None else (el.text or "")


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text.strip())
    except InvalidOperation:  # pragma: no cover - the schema already guarantees it
        raise SoapFault(FAULT_CLIENT, f"{text!r} is not an xsd:decimal") from None


def _decimal_text(value: Decimal) -> str:
    return format(value, "f")


def _stamp(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FinanceSandbox(Sandbox):
    """The group finance posting service (one SOAP endpoint, WS-Security UsernameToken)."""

    name = "finance"
    url_path = URL_PATH

    def __init__(
        self,
        *,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        wsdl_path: Path | str | None = None,
        closed_periods: Iterable[str] = (),
        verify_auth: bool = True,
        accept_password_text: bool = True,
        timestamp_window_s: float = 300,
        max_body_bytes: int = MAX_BODY_BYTES,
        concurrency_limit: int | None = None,
        clock: Callable[[], datetime] | None = None,
        state_path: Path | str | None = None,
        request_log_size: int = 10_000,
    ) -> None:
        super().__init__(clock=clock, state_path=state_path, request_log_size=request_log_size)
        self.service: ServiceDescription = load_service(wsdl_path)
        self.username = username
        self.password = password
        self.verify_auth = verify_auth
        self.max_body_bytes = max_body_bytes
        self.concurrency_limit = concurrency_limit
        self.wsse = UsernameTokenVerifier(
            username,
            password,
            window_s=timestamp_window_s,
            accept_password_text=accept_password_text,
            now=lambda: self.clock(),
        )
        self._default_closed = frozenset(_check_period(p) for p in closed_periods)
        self._handlers: dict[str, Callable[[Operation, etree._Element], etree._Element]] = {
            **{op: self._post for op in POSTING_KINDS},
            "GetPostingStatus": self._get_status,
            "ListPostings": self._list,
        }
        #: why the last refused requests were refused (the client only sees the fault code)
        self.auth_failures: list[str] = []
        self._init_data()

    def _init_data(self) -> None:
        #: documentId -> the booked posting, in booking order
        self.booked: dict[str, dict[str, Any]] = {}
        #: documentId -> the last rejection of a document that is not booked
        self.rejected: dict[str, dict[str, Any]] = {}
        #: period -> last sequence number used in postingRefs of that period
        self.sequences: dict[str, int] = {}
        self.closed_periods: set[str] = set(self._default_closed)
        self._by_company_period: dict[tuple[str, str], list[str]] = {}
        self._server_faults: dict[str, Any] = {
            "remaining": 0,
            "when": "before",
            "operations": POSTING_OPERATIONS,
        }

    # ---- helpers (tests and the demo) ---------------------------------------------------------

    def endpoint_url(self, base_url: str) -> str:
        return base_url.rstrip("/") + self.url_path

    def wsdl_url(self, base_url: str) -> str:
        return self.endpoint_url(base_url) + "?wsdl"

    def postings(
        self, company_code: str | None = None, period: str | None = None
    ) -> list[dict[str, Any]]:
        """Booked postings in booking order, optionally of one company and/or period."""
        with self.lock:
            return [
                _copy(p)
                for p in self.booked.values()
                if (company_code is None or p["companyCode"] == company_code)
                and (period is None or p["period"] == period)
            ]

    def get_posting(self, document_id: str) -> dict[str, Any] | None:
        with self.lock:
            p = self.booked.get(document_id)
            return _copy(p) if p is not None else None

    def rejection(self, document_id: str) -> dict[str, Any] | None:
        with self.lock:
            r = self.rejected.get(document_id)
            return dict(r) if r is not None else None

    def count(self) -> int:
        with self.lock:
            return len(self.booked)

    def close_period(self, *periods: str) -> None:
        with self.lock:
            self.closed_periods.update(_check_period(p) for p in periods)

    def open_period(self, *periods: str) -> None:
        with self.lock:
            self.closed_periods.difference_update(periods)

    def server_faults(
        self,
        n: int,
        *,
        when: Literal["before", "after"] = "before",
        operations: Iterable[str] = POSTING_OPERATIONS,
    ) -> None:
        """Answer ``soap:Server`` ("try again later", HTTP 500) to the next ``n`` requests
        of ``operations`` that pass authentication and the schema. ``when="before"``: nothing
        is done; ``"after"``: the request is carried out (a posting is booked), then the
        fault is answered instead of the result. ``n=0`` switches it off."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        if when not in ("before", "after"):
            raise ValueError(f"when must be 'before' or 'after', got {when!r}")
        ops = frozenset(operations)
        unknown = ops - set(self._handlers)
        if unknown:
            raise ValueError(f"unknown operation(s): {', '.join(sorted(unknown))}")
        with self.lock:
            self._server_faults = {"remaining": n, "when": when, "operations": ops}

    def server_faults_state(self) -> dict[str, Any]:
        with self.lock:
            state = dict(self._server_faults)
        state["operations"] = sorted(state["operations"])
        return state

    # ---- Sandbox hooks ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "booked": [_copy(p) for p in self.booked.values()],
            "rejected": [dict(r) for r in self.rejected.values()],
            "sequences": dict(self.sequences),
            "closed_periods": sorted(self.closed_periods),
        }

    def restore(self, data: dict[str, Any]) -> None:
        for posting in data.get("booked", []):
            self._store_booked(_copy(posting))
        for rejection in data.get("rejected", []):
            self.rejected[rejection["documentId"]] = dict(rejection)
        self.sequences.update({str(k): int(v) for k, v in data.get("sequences", {}).items()})
        for posting in self.booked.values():  # never hand out a postingRef twice
            period, _, number = posting["postingRef"].removeprefix("GF-").rpartition("-")
            if number.isdigit():
                self.sequences[period] = max(self.sequences.get(period, 0), int(number))
        if "closed_periods" in data:
            self.closed_periods = set(data["closed_periods"])

    def reset_data(self) -> None:
        self._init_data()
        self.wsse.reset()
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
        """The framework's errors (fault switch, routing, crashes) as SOAP faults, keeping
        their HTTP status: ``soap:Server`` for 5xx and 429, ``soap:Client`` otherwise."""
        server = status >= 500 or status == 429
        return SoapFault(
            FAULT_SERVER if server else FAULT_CLIENT, message, status=status, headers=headers
        ).response()

    def routes(self) -> list[BaseRoute]:
        return [Route(self.url_path, self._endpoint, methods=["GET", "POST"])]

    def admin_routes(self) -> list[BaseRoute]:
        return [
            Route("/finance/postings", self._admin_postings, methods=["GET"]),
            Route("/finance/rejections", self._admin_rejections, methods=["GET"]),
            Route("/finance/server-faults", self._admin_server_faults, methods=["GET", "POST"]),
            Route("/finance/periods", self._admin_periods, methods=["GET", "POST"]),
            Route("/finance/auth-failures", self._admin_auth_failures, methods=["GET"]),
        ]

    # ---- the endpoint ---------------------------------------------------------------------------

    async def _endpoint(self, request: Request) -> Response:
        try:
            if request.method == "GET":
                return self._wsdl(request)
            return await self._soap(request)
        except SoapFault as fault:
            return fault.response()

    def _wsdl(self, request: Request) -> Response:
        if not any(k.lower() == "wsdl" for k in request.query_params):
            raise SoapFault(FAULT_CLIENT, f"GET {self.url_path} serves the WSDL only: add ?wsdl",
                            status=400)  # fmt: skip
        host = request.headers.get("host")
        if not host:
            server = request.scope.get("server") or ("127.0.0.1", 80)
            host = f"{server[0]}:{server[1]}"
        location = f"{request.url.scheme}://{host}{self.url_path}"
        return Response(self.service.wsdl_for(location), media_type=XML_CONTENT_TYPE)

    async def _soap(self, request: Request) -> Response:
        _check_content_type(request.headers.get("content-type"))
        raw_action = request.headers.get("soapaction")
        if raw_action is None:
            raise SoapFault(FAULT_CLIENT, "the SOAPAction header is required")
        action = raw_action.strip()
        if len(action) >= 2 and action[0] == action[-1] == '"':
            action = action[1:-1]
        body = await self._read_body(request)
        root = parse_xml(body)
        header, payload = self._open_envelope(root)
        if self.verify_auth:
            reason = self.wsse.verify(header)
            if reason is not None:
                with self.lock:
                    self.auth_failures.append(reason)
                    del self.auth_failures[:-100]
                raise SoapFault(FAULT_FAILED_AUTHENTICATION, AUTH_FAILED_MESSAGE)
        op = self.service.by_element.get(payload.tag)
        handler = self._handlers.get(op.name) if op is not None else None
        if op is None or handler is None:
            raise SoapFault(FAULT_CLIENT, f"unknown operation: no operation takes {payload.tag}")
        if action != op.soap_action:
            raise SoapFault(
                FAULT_CLIENT,
                f"SOAPAction {raw_action!r} does not match the body's operation {op.name} "
                f"(expected {op.soap_action!r})",
            )
        errors = self.service.validate(payload)
        if errors:
            first = errors[0]
            raise SoapFault(
                FAULT_CLIENT,
                f"the request does not match the schema: {first.field}: {first.message}"
                + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
                field_errors=errors,
            )
        with self.lock:
            when = self._take_server_fault(op.name)
            if when == "before":
                raise SoapFault(FAULT_SERVER, SERVER_FAULT_MESSAGE)
            answer = handler(op, payload)
            if when == "after":
                raise SoapFault(FAULT_SERVER, SERVER_FAULT_MESSAGE)
        return xml_response(answer)

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        too_large = SoapFault(
            FAULT_CLIENT, f"the request is larger than {self.max_body_bytes} bytes", status=413
        )
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def _open_envelope(self, root: etree._Element) -> tuple[etree._Element | None, etree._Element]:
        qname = etree.QName(root)
        if qname.localname == "Envelope" and qname.namespace == SOAP12_ENV_NS:
            raise SoapFault(FAULT_VERSION_MISMATCH,
                            "SOAP 1.2 is not supported: send a SOAP 1.1 envelope")  # fmt: skip
        if root.tag != f"{{{SOAP_ENV_NS}}}Envelope":
            if qname.localname == "Envelope":
                raise SoapFault(FAULT_VERSION_MISMATCH,
                                f"unknown envelope namespace {qname.namespace!r}")  # fmt: skip
            raise SoapFault(FAULT_CLIENT, "the request is not a SOAP envelope")
        header = root.find(f"{{{SOAP_ENV_NS}}}Header")
        body = root.find(f"{{{SOAP_ENV_NS}}}Body")
        if body is None:
            raise SoapFault(FAULT_CLIENT, "the envelope has no soap:Body")
        if header is not None:
            for entry in header:
                if not isinstance(entry.tag, str) or entry.tag == f"{{{WSSE_NS}}}Security":
                    continue
                if entry.get(f"{{{SOAP_ENV_NS}}}mustUnderstand") in ("1", "true"):
                    raise SoapFault(FAULT_MUST_UNDERSTAND,
                                    f"header {entry.tag} is not understood")  # fmt: skip
        children = [c for c in body if isinstance(c.tag, str)]
        if len(children) != 1:
            raise SoapFault(
                FAULT_CLIENT, f"soap:Body must hold exactly one element, not {len(children)}"
            )
        return header, children[0]

    def _take_server_fault(self, operation: str) -> str | None:
        state = self._server_faults
        if state["remaining"] <= 0 or operation not in state["operations"]:
            return None
        state["remaining"] -= 1
        self.stats.faults["soap_server"] += 1
        return str(state["when"])

    # ---- operations (called with the lock held) ---------------------------------------------

    def _post(self, op: Operation, el: etree._Element) -> etree._Element:
        kind = POSTING_KINDS[op.name]
        doc = _read_posting(el, with_invoice=kind == "PROCUREMENT_INVOICE")
        doc_id = doc["documentId"]
        first = self.booked.get(doc_id)
        if first is not None:
            self.effects.record(
                "posting.duplicate", doc_id, posting_kind=kind, operation=op.name,
                posting_ref=first["postingRef"], first_kind=first["kind"],
            )  # fmt: skip
            return _result(
                "PostingResponse", doc_id, "DUPLICATE", first["postingRef"],
                f"documentId {doc_id} was already booked as {first['postingRef']} "
                f"on {first['bookedAt']}; nothing was booked",
            )  # fmt: skip

        now = _stamp(self.clock())
        problems = self._business_problems(doc)
        if problems:
            message = "; ".join(problems)
            previous = self.rejected.get(doc_id)
            self.rejected[doc_id] = {
                "documentId": doc_id, "kind": kind, "companyCode": doc["companyCode"],
                "period": doc["period"], "currency": doc["currency"], "status": "REJECTED",
                "message": message, "rejectedAt": now,
                "attempts": (previous["attempts"] if previous else 0) + 1,
            }  # fmt: skip
            self.effects.record(
                "posting.rejected", doc_id, posting_kind=kind, operation=op.name, message=message
            )
            return _result("PostingResponse", doc_id, "REJECTED", None, message)

        period = doc["period"]
        sequence = self.sequences.get(period, 0) + 1
        self.sequences[period] = sequence
        posting = {
            **doc,
            "kind": kind,
            "status": "BOOKED",
            "postingRef": f"GF-{period}-{sequence:06d}",
            "totalAmount": _decimal_text(sum((Decimal(ln["amount"]) for ln in doc["lines"]),
                                             Decimal(0))),
            "lineCount": len(doc["lines"]),
            "bookedAt": now,
        }  # fmt: skip
        self._store_booked(posting)
        self.rejected.pop(doc_id, None)
        self.effects.record(
            "posting.booked", doc_id, posting_kind=kind, operation=op.name,
            currency=posting["currency"], total=posting["totalAmount"],
            line_count=posting["lineCount"], company_code=posting["companyCode"],
            period=period, posting_ref=posting["postingRef"],
        )  # fmt: skip
        return _result("PostingResponse", doc_id, "BOOKED", posting["postingRef"], None)

    def _business_problems(self, doc: dict[str, Any]) -> list[str]:
        problems: list[str] = []
        currency = doc["currency"]
        if currency not in MINOR_UNITS:
            problems.append(f"currency {currency} is not an ISO 4217 currency code")
        if doc["period"] in self.closed_periods:
            problems.append(f"period {doc['period']} is closed")
        total = sum((Decimal(ln["amount"]) for ln in doc["lines"]), Decimal(0))
        if total == 0:
            problems.append("the lines sum to zero")
        invoice_date = doc.get("invoiceDate")
        if invoice_date is not None:
            m = _DATE_RE.match(invoice_date)
            if m is None or f"{m.group(1)}-{m.group(2)}" != doc["period"]:
                problems.append(f"invoiceDate {invoice_date} is not in period {doc['period']}")
        return problems

    def _get_status(self, op: Operation, el: etree._Element) -> etree._Element:
        doc_id = (_text(el, "documentId") or "").strip()
        booked = self.booked.get(doc_id)
        if booked is not None:
            return _result("GetPostingStatusResponse", doc_id, "BOOKED", booked["postingRef"],
                           f"booked on {booked['bookedAt']}")  # fmt: skip
        rejected = self.rejected.get(doc_id)
        if rejected is not None:
            return _result("GetPostingStatusResponse", doc_id, "REJECTED", None,
                           rejected["message"])  # fmt: skip
        return _result("GetPostingStatusResponse", doc_id, "UNKNOWN", None,
                       f"no posting with documentId {doc_id}")  # fmt: skip

    def _list(self, op: Operation, el: etree._Element) -> etree._Element:
        company = _text(el, "companyCode") or ""
        period = (_text(el, "period") or "").strip()
        size_text = _text(el, "pageSize")
        page_size = int(size_text.strip()) if size_text is not None else DEFAULT_PAGE_SIZE
        token = _text(el, "pageToken")
        offset = 0 if token is None or not token.strip() else _decode_token(token, company, period)
        ids = self._by_company_period.get((company, period), [])
        page = ids[offset : offset + page_size]
        out = etree.Element(_gf("ListPostingsResponse"), nsmap={"gf": GF_NS})
        for doc_id in page:
            p = self.booked[doc_id]
            summary = etree.SubElement(out, _gf("posting"))
            for name in ("documentId", "kind", "status", "postingRef", "currency",
                         "totalAmount", "lineCount", "bookedAt"):  # fmt: skip
                etree.SubElement(summary, _gf(name)).text = str(p[name])
        if offset + page_size < len(ids):
            etree.SubElement(out, _gf("nextPageToken")).text = _encode_token(
                company, period, offset + page_size
            )
        return out

    # ---- internals ----------------------------------------------------------------------------

    def _store_booked(self, posting: dict[str, Any]) -> None:
        doc_id = posting["documentId"]
        self.booked[doc_id] = posting
        key = (posting["companyCode"], posting["period"])
        self._by_company_period.setdefault(key, []).append(doc_id)

    # ---- admin routes -------------------------------------------------------------------------

    async def _admin_postings(self, request: Request) -> Response:
        params = request.query_params
        items = self.postings(params.get("companyCode") or None, params.get("period") or None)
        return json_response({"postings": items, "count": len(items)})

    async def _admin_rejections(self, request: Request) -> Response:
        with self.lock:
            items = [dict(r) for r in self.rejected.values()]
        return json_response({"rejections": items, "count": len(items)})

    async def _admin_server_faults(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                body = json.loads(await request.body() or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
                kwargs: dict[str, Any] = {"when": body.get("when", "before")}
                if "operations" in body:
                    kwargs["operations"] = body["operations"]
                self.server_faults(body.get("count", 0), **kwargs)
            except (ValueError, TypeError) as exc:
                return json_response({"error": {"code": "invalid", "message": str(exc)}},
                                     status=400)  # fmt: skip
        return json_response(self.server_faults_state())

    async def _admin_periods(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                body = json.loads(await request.body() or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
                self.close_period(*body.get("close", []))
                self.open_period(*body.get("open", []))
            except (ValueError, TypeError) as exc:
                return json_response({"error": {"code": "invalid", "message": str(exc)}},
                                     status=400)  # fmt: skip
        with self.lock:
            closed = sorted(self.closed_periods)
        return json_response({"closed": closed})

    async def _admin_auth_failures(self, request: Request) -> Response:
        with self.lock:
            failures = list(self.auth_failures)
        return json_response({"auth_failures": failures, "count": len(failures)})


# ---- module helpers ---------------------------------------------------------------------------

_PERIOD_RE = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")


def _check_period(period: str) -> str:
    if not isinstance(period, str) or not _PERIOD_RE.match(period):
        raise ValueError(f"a period is YYYY-MM, got {period!r}")
    return period


def _check_content_type(value: str | None) -> None:
    media, _, params = (value or "").partition(";")
    if media.strip().lower() != "text/xml":
        raise SoapFault(
            FAULT_CLIENT,
            f"Content-Type must be {XML_CONTENT_TYPE} (SOAP 1.1), got {value or 'none'!r}",
            status=415,
        )
    for param in params.split(";"):
        name, _, val = param.partition("=")
        if name.strip().lower() == "charset" and val.strip().strip('"').lower() not in (
            "utf-8", "utf8",
        ):  # fmt: skip
            raise SoapFault(FAULT_CLIENT, f"charset must be utf-8, got {val.strip()!r}", status=415)


def _read_posting(el: etree._Element, *, with_invoice: bool) -> dict[str, Any]:
    """The posting's values as text (the schema has validated them). Amounts are kept as
    canonical decimal text (``+1.50`` -> ``1.50``); xsd:string values (``companyCode``, codes,
    ``memo``) exactly as sent, since their whitespace is significant."""
    doc: dict[str, Any] = {
        name: (_text(el, name) or "").strip() for name in ("documentId", "period", "currency")
    }
    doc["companyCode"] = _text(el, "companyCode") or ""
    lines: list[dict[str, str]] = []
    lines_el = el.find(_gf("lines"))
    for line_el in lines_el.iterfind(_gf("line")) if lines_el is not None else ():
        line: dict[str, str] = {}
        for name in _LINE_FIELDS:
            value = _text(line_el, name)
            if value is not None:
                line[name] = value.strip() if name == "quantity" else value
        line["amount"] = _decimal_text(_decimal(line["amount"]))
        lines.append(line)
    doc["lines"] = lines
    if with_invoice:
        for name in _INVOICE_FIELDS:
            doc[name] = _text(el, name) or ""
        doc["invoiceDate"] = doc["invoiceDate"].strip()
        doc["taxAmount"] = _decimal_text(_decimal(doc["taxAmount"]))
    return doc


def _result(
    tag: str, doc_id: str, status: str, posting_ref: str | None, message: str | None
) -> etree._Element:
    out = etree.Element(_gf(tag), nsmap={"gf": GF_NS})
    etree.SubElement(out, _gf("documentId")).text = doc_id
    etree.SubElement(out, _gf("status")).text = status
    if posting_ref is not None:
        etree.SubElement(out, _gf("postingRef")).text = posting_ref
    if message is not None:
        etree.SubElement(out, _gf("message")).text = message
    return out


def _encode_token(company: str, period: str, offset: int) -> str:
    raw = json.dumps([company, period, offset], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, company: str, period: str) -> int:
    bad = SoapFault(
        FAULT_CLIENT,
        "pageToken is not valid for this query",
        field_errors=[FieldError("pageToken", "not a pageToken of this companyCode and period")],
    )
    try:
        text = token.strip()
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        t_company, t_period, offset = json.loads(raw)
    except (ValueError, TypeError):
        raise bad from None
    if t_company != company or t_period != period or not isinstance(offset, int) or offset < 0:
        raise bad
    return offset


def _copy(posting: dict[str, Any]) -> dict[str, Any]:
    out = dict(posting)
    out["lines"] = [dict(line) for line in posting.get("lines", [])]
    return out
