"""SOAP 1.1 plumbing for the group finance sandbox: safe parsing, envelopes and faults.

Written with lxml on purpose, not zeep: zeep is the client's library, and a sandbox that
shared the client's machinery would only confirm itself.

Request bodies are untrusted. A document with a DTD (``<!DOCTYPE``) or entity declarations is
refused before the parser sees it, and the parser itself never resolves entities, never loads
a DTD and never touches the network, so neither a billion-laughs body nor an external entity
(``SYSTEM "file:///etc/passwd"``) is ever expanded or read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from lxml import etree
from starlette.responses import Response

__all__ = [
    "DTD_REFUSED",
    "FAULT_CLIENT",
    "FAULT_FAILED_AUTHENTICATION",
    "FAULT_MUST_UNDERSTAND",
    "FAULT_SERVER",
    "FAULT_VERSION_MISMATCH",
    "GF_NS",
    "SOAP12_ENV_NS",
    "SOAP_ENV_NS",
    "WSSE_NS",
    "WSU_NS",
    "XML_CONTENT_TYPE",
    "FieldError",
    "SoapFault",
    "check_prolog",
    "envelope_bytes",
    "fault_bytes",
    "parse_xml",
    "xml_response",
]

SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV_NS = "http://www.w3.org/2003/05/soap-envelope"
GF_NS = "urn:vouchflow:groupfinance:v1"
WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
XML_CONTENT_TYPE = "text/xml; charset=utf-8"

FAULT_CLIENT = "soap:Client"
FAULT_SERVER = "soap:Server"
FAULT_VERSION_MISMATCH = "soap:VersionMismatch"
FAULT_MUST_UNDERSTAND = "soap:MustUnderstand"
FAULT_FAILED_AUTHENTICATION = "wsse:FailedAuthentication"

DTD_REFUSED = "DTD and entities are not allowed"

_WHITESPACE = b" \t\r\n"


@dataclass(frozen=True)
class FieldError:
    """One problem of a request, named by a path relative to the operation element
    (``lines/line[2]/amount``)."""

    field: str
    message: str


class SoapFault(Exception):
    """Raised inside the handler; answered as a SOAP 1.1 ``soap:Fault``.

    ``code`` is the ``faultcode`` QName as sent (``soap:Client``, ``soap:Server``,
    ``wsse:FailedAuthentication``, ...); faults are HTTP 500 unless ``status`` says otherwise
    (413 body too large, 415 wrong content type, the fault switch's 503/429).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        field_errors: Iterable[FieldError] = (),
        status: int = 500,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field_errors = list(field_errors)
        self.status = status
        self.headers = dict(headers or {})

    def response(self) -> Response:
        return Response(
            fault_bytes(self.code, self.message, self.field_errors),
            status_code=self.status,
            headers=self.headers or None,
            media_type=XML_CONTENT_TYPE,
        )


# --------------------------------------------------------------------------------------------
# Parsing untrusted requests
# --------------------------------------------------------------------------------------------


def check_prolog(body: bytes) -> None:
    """Refuse a document whose prolog holds anything but the XML declaration, processing
    instructions, comments and whitespace: a ``<!DOCTYPE`` (and with it any ``<!ENTITY``) is
    refused before any parser sees it. Only UTF-8 (or ASCII-compatible) bodies are accepted,
    so the byte scan cannot be dodged with UTF-16."""
    if body.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in body[:4]:
        raise SoapFault(FAULT_CLIENT, "the request must be encoded in UTF-8")
    i = 3 if body.startswith(b"\xef\xbb\xbf") else 0
    n = len(body)
    while i < n:
        if body[i] in _WHITESPACE:
            i += 1
        elif body.startswith(b"<?", i):
            end = body.find(b"?>", i + 2)
            if end < 0:
                return  # not well-formed: the parser says so
            i = end + 2
        elif body.startswith(b"<!--", i):
            end = body.find(b"-->", i + 4)
            if end < 0:
                return
            i = end + 3
        elif body.startswith(b"<!", i):
            raise SoapFault(FAULT_CLIENT, DTD_REFUSED)
        else:
            return  # the root element (or junk the parser refuses)
    # belt and braces: an entity declaration can only live in a DTD, which is refused above,
    # but a body that hides one anywhere is refused without parsing too
    if b"<!ENTITY" in body:
        raise SoapFault(FAULT_CLIENT, DTD_REFUSED)


def _parser() -> etree.XMLParser:
    # a new parser per request: lxml parsers must not be shared between threads
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        collect_ids=False,
        remove_comments=False,
    )


def parse_xml(body: bytes) -> etree._Element:
    """Parse an untrusted request body; ``SoapFault`` (``soap:Client``) when it has a DTD or
    entities, or is not well-formed."""
    if not body.strip():
        raise SoapFault(FAULT_CLIENT, "the request body is empty")
    check_prolog(body)
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        raise SoapFault(FAULT_CLIENT, f"the request is not well-formed XML: {exc}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise SoapFault(FAULT_CLIENT, DTD_REFUSED)
    for _ in root.iter(etree.Entity):
        raise SoapFault(FAULT_CLIENT, DTD_REFUSED)
    return root


# --------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------


def _soap(tag: str) -> str:
    return f"{{{SOAP_ENV_NS}}}{tag}"


def _gf(tag: str) -> str:
    return f"{{{GF_NS}}}{tag}"


def envelope_bytes(payload: etree._Element) -> bytes:
    """``payload`` (an element in the service namespace) wrapped in a SOAP 1.1 envelope."""
    env = etree.Element(_soap("Envelope"), nsmap={"soap": SOAP_ENV_NS, "gf": GF_NS})
    etree.SubElement(env, _soap("Body")).append(payload)
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")


def fault_bytes(code: str, message: str, field_errors: Iterable[FieldError] = ()) -> bytes:
    """A SOAP 1.1 fault: unqualified ``faultcode`` (a QName whose prefix is declared on the
    envelope), ``faultstring`` and, for field errors, ``detail`` with one ``gf:fieldError``
    each."""
    nsmap = {"soap": SOAP_ENV_NS}
    if code.startswith("wsse:"):
        nsmap["wsse"] = WSSE_NS
    env = etree.Element(_soap("Envelope"), nsmap=nsmap)
    fault = etree.SubElement(etree.SubElement(env, _soap("Body")), _soap("Fault"))
    etree.SubElement(fault, "faultcode").text = code
    etree.SubElement(fault, "faultstring").text = message
    errors = list(field_errors)
    if errors:
        detail = etree.SubElement(fault, "detail", nsmap={"gf": GF_NS})
        for err in errors:
            fe = etree.SubElement(detail, _gf("fieldError"))
            etree.SubElement(fe, _gf("field")).text = err.field
            etree.SubElement(fe, _gf("message")).text = err.message
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")


def xml_response(payload: etree._Element, status: int = 200) -> Response:
    return Response(envelope_bytes(payload), status_code=status, media_type=XML_CONTENT_TYPE)
