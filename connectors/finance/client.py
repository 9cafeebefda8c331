"""Group finance client: SOAP 1.1 document/literal over zeep, on the shared HTTP toolkit.

zeep builds and reads the envelopes (from the WSDL shipped with vouchflow, never fetched);
the bytes travel through ``HttpConnector`` so the concurrency limit and error mapping are
the same as every other connector's. Retries wrap the whole operation, so each attempt gets
a fresh envelope and a fresh WS-Security nonce. XML from the server is parsed with DTDs,
entities and external references refused: a hostile server cannot make the client read a
local file or expand a billion laughs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import zeep
import zeep.exceptions
from lxml import etree
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport
from zeep.wsse.username import UsernameToken

from connectors.errors import (
    AuthError,
    ConfigurationError,
    ConnectorError,
    InvalidRecordError,
    MalformedResponseError,
    PaginationError,
    ServerError,
)
from connectors.finance.config import FinanceSettings
from connectors.finance.records import (
    OPERATIONS,
    Posting,
    PostingKind,
    PostingResult,
    PostingStatus,
    PostingSummary,
)
from connectors.http import (
    DEFAULT_RETRY,
    NO_RETRY,
    ErrorTable,
    HttpConnector,
    RetryPolicy,
    Timeouts,
)
from connectors.limits import ConcurrencyLimiter, shared_limiter

NS = "urn:vouchflow:groupfinance:v1"
BINDING = f"{{{NS}}}GroupFinanceBinding"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"

XML_SETTINGS = zeep.Settings(
    strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=True,
    xml_huge_tree=False, raw_response=False,
)

FAULT_CODES: dict[tuple[str, str], type[ConnectorError]] = {
    (SOAP_ENV, "Client"): InvalidRecordError,
    (SOAP_ENV, "Server"): ServerError,
    (WSSE, "FailedAuthentication"): AuthError,
    (WSSE, "InvalidSecurity"): AuthError,
    (WSSE, "InvalidSecurityToken"): AuthError,
    (WSSE, "FailedCheck"): AuthError,
}


def safe_parse(content: bytes) -> etree._Element:
    """Parse XML from a server, refusing DTDs and entities outright."""
    head = content[:4096].lstrip()
    if b"<!DOCTYPE" in head.upper() or b"<!ENTITY" in head.upper():
        raise ValueError("the document carries a DTD or entity declarations")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             huge_tree=False, dtd_validation=False)
    root = etree.fromstring(content, parser=parser)
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise ValueError("the document carries a DTD")
    return root


def _qname(text: str, element: etree._Element) -> tuple[str, str]:
    prefix, _, local = text.strip().rpartition(":")
    return element.nsmap.get(prefix or None, SOAP_ENV if not prefix else ""), local


class _Transport(AsyncTransport):
    """zeep's async transport, but every POST goes through the connector; the WSDL is read
    from disk only (remote loading is refused)."""

    def __init__(self, connector: FinanceClient) -> None:  # no super(): no httpx clients
        self._close_session = False
        self.cache = None
        self.connector = connector
        self.logger = logging.getLogger("zeep.transports")
        self.client = None
        self.wsdl_client = None

    def _load_remote_data(self, url: str) -> bytes:
        raise ConfigurationError(f"refusing to fetch {url}: the WSDL must be a local file",
                                 system="finance")

    async def post(self, address: str, message: bytes, headers: dict[str, str]) -> httpx.Response:
        return await self.connector.request("POST", address, content=message,
                                            headers=headers, retry=NO_RETRY)

    async def aclose(self) -> None:
        return None


class FinanceClient(HttpConnector):
    system = "finance"
    error_table = ErrorTable()

    def __init__(
        self,
        settings: FinanceSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        limiter: ConcurrencyLimiter | None = None,
    ) -> None:
        settings.check()
        self.settings = settings
        super().__init__(
            settings.url,
            headers={"Accept": "text/xml"},
            timeouts=Timeouts(read=settings.timeout),
            retry=retry,
            limiter=limiter or shared_limiter("finance", settings.concurrency),
            transport=transport,
            max_connections=settings.concurrency * 2,
        )
        try:
            self._zeep = zeep.AsyncClient(
                settings.wsdl, transport=_Transport(self), settings=XML_SETTINGS,
                wsse=UsernameToken(settings.username.get_secret_value(),
                                   settings.password.get_secret_value(), use_digest=True),
            )
        except (OSError, zeep.exceptions.Error) as exc:
            raise ConfigurationError(f"cannot load the WSDL {settings.wsdl}: {exc}",
                                     system=self.system) from None
        # zeep's AsyncClient.create_service hands back a synchronous proxy; build the async one
        self._service = AsyncServiceProxy(self._zeep, self._zeep.wsdl.bindings[BINDING],
                                          address=settings.url)

    # errors -------------------------------------------------------------------------------
    def error_for(self, response: httpx.Response) -> ConnectorError:
        """SOAP 1.1 faults come with HTTP 500: the faultcode, not the status, says what they
        mean (soap:Client is our mistake, soap:Server is worth another try)."""
        fault = None
        if response.content and b"Fault" in response.content:
            try:
                root = safe_parse(response.content)
                fault = root.find(f".//{{{SOAP_ENV}}}Fault")
            except (ValueError, etree.XMLSyntaxError):
                fault = None
        if fault is None:
            return super().error_for(response)
        code_el = fault.find("faultcode")
        text_el = fault.find("faultstring")
        code = (code_el.text or "").strip() if code_el is not None else ""
        message = (text_el.text or "").strip() if text_el is not None else "SOAP fault"
        details = [
            {"field": (fe.findtext(f"{{{NS}}}field") or "").strip(),
             "message": (fe.findtext(f"{{{NS}}}message") or "").strip()}
            for fe in fault.iter(f"{{{NS}}}fieldError")
        ]
        kind = FAULT_CODES.get(_qname(code, code_el), ServerError) if code_el is not None \
            else ServerError
        where = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        text = f"SOAP fault {code}: {message}" + (f" ({where})" if where else "")
        return kind(text, system=self.system, request=response.request, response=response,
                    code=code, details=details)

    async def _call(self, operation: str, **body: Any) -> Any:
        async def attempt() -> Any:
            try:
                return await getattr(self._service, operation)(**body)
            except (zeep.exceptions.DTDForbidden, zeep.exceptions.EntitiesForbidden,
                    zeep.exceptions.ExternalReferenceForbidden) as exc:
                raise MalformedResponseError(
                    f"{operation}: refused the answer: {exc.__class__.__name__} (DTDs and "
                    "entities are not accepted)", system=self.system) from None
            except zeep.exceptions.Fault as fault:
                raise InvalidRecordError(f"{operation}: SOAP fault {fault.code}: "
                                         f"{fault.message}", system=self.system) from None
            except zeep.exceptions.ValidationError as exc:
                raise InvalidRecordError(f"{operation}: request does not fit the WSDL: {exc}",
                                         system=self.system) from None
            except (zeep.exceptions.XMLSyntaxError, zeep.exceptions.XMLParseError,
                    zeep.exceptions.TransportError, etree.XMLSyntaxError):
                # the body is left out of the message: it may carry what it should not
                raise MalformedResponseError(f"{operation}: the answer is not XML",
                                             system=self.system) from None
            except zeep.exceptions.Error as exc:
                raise MalformedResponseError(f"{operation}: cannot read the answer: {exc}",
                                             system=self.system) from None

        return await self.with_retries(attempt, what=operation)

    # operations ---------------------------------------------------------------------------
    async def post(self, posting: Posting) -> PostingResult:
        """Book one document. A repeat of its documentId books nothing new and answers
        DUPLICATE with the first posting's reference."""
        answer = await self._call(OPERATIONS[posting.kind], **posting.body())
        return _result(answer)

    async def posting_status(self, document_id: str) -> PostingResult:
        return _result(await self._call("GetPostingStatus", documentId=document_id))

    async def list_postings(self, period: str, *, company_code: str | None = None,
                            page_size: int = 500) -> AsyncIterator[list[PostingSummary]]:
        token: str | None = None
        seen: set[str] = set()
        while True:
            body: dict[str, Any] = {"companyCode": company_code or self.settings.company_code,
                                    "period": period, "pageSize": page_size}
            if token:
                body["pageToken"] = token
            answer = await self._call("ListPostings", **body)
            yield [_summary(p) for p in (answer.posting or [])]
            token = answer.nextPageToken
            if not token:
                return
            if token in seen:
                raise PaginationError(f"ListPostings returned page token {token[:40]!r} twice",
                                      system=self.system)
            seen.add(token)


def _result(answer: Any) -> PostingResult:
    try:
        return PostingResult(document_id=answer.documentId, status=PostingStatus(answer.status),
                             posting_ref=answer.postingRef, message=answer.message)
    except (AttributeError, ValueError) as exc:
        raise MalformedResponseError(f"posting result unreadable: {exc}",
                                     system="finance") from None


def _summary(item: Any) -> PostingSummary:
    return PostingSummary(
        document_id=item.documentId, kind=PostingKind(item.kind),
        status=PostingStatus(item.status), posting_ref=item.postingRef, currency=item.currency,
        total_amount=item.totalAmount, line_count=item.lineCount, booked_at=item.bookedAt,
    )
