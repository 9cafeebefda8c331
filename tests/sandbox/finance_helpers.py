"""Hand-written SOAP 1.1 for testing the group finance sandbox (no zeep: the sandbox must be
checked by something other than the client's own machinery).

Envelopes are built as text, WS-Security UsernameTokens are computed here from the OASIS
profile, and answers are read with lxml and checked against the WSDL's schema with xmlschema.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import httpx
import xmlschema
from lxml import etree

WSDL_PATH = Path(__file__).resolve().parents[2] / "connectors" / "finance" / "groupfinance.wsdl"
ENDPOINT = "/soap/groupfinance"

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
GF = "urn:vouchflow:groupfinance:v1"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
UT_PROFILE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
BASE64_BINARY = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
)

USERNAME = "vf-finance-sandbox"
PASSWORD = "vf-finance-sandbox-password-0001"


def soap_action(operation: str) -> str:
    return f'"urn:vouchflow:groupfinance:v1#{operation}"'


def created_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def username_token(
    username: str = USERNAME,
    password: str = PASSWORD,
    *,
    digest: bool = True,
    nonce: bytes | None = None,
    created: str | None = None,
    digest_password: str | None = None,
) -> str:
    """A ``wsse:Security`` header. Digest: ``Base64(SHA-1(nonce + created + password))``;
    ``digest_password`` signs with another password than the one claimed."""
    if not digest:
        extra = ""
        if created is not None:
            extra += f"<wsu:Created>{created}</wsu:Created>"
        if nonce is not None:
            extra = (
                f'<wsse:Nonce EncodingType="{BASE64_BINARY}">'
                f"{base64.b64encode(nonce).decode()}</wsse:Nonce>" + extra
            )
        password_el = (
            f'<wsse:Password Type="{UT_PROFILE}#PasswordText">{escape(password)}</wsse:Password>'
        )
    else:
        nonce = os.urandom(16) if nonce is None else nonce
        created = created_now() if created is None else created
        secret = password if digest_password is None else digest_password
        value = base64.b64encode(
            hashlib.sha1(nonce + created.encode() + secret.encode()).digest()
        ).decode()
        password_el = f'<wsse:Password Type="{UT_PROFILE}#PasswordDigest">{value}</wsse:Password>'
        extra = (
            f'<wsse:Nonce EncodingType="{BASE64_BINARY}">{base64.b64encode(nonce).decode()}'
            f"</wsse:Nonce><wsu:Created>{created}</wsu:Created>"
        )
    return (
        f'<wsse:Security xmlns:wsse="{WSSE}" xmlns:wsu="{WSU}" soap:mustUnderstand="1">'
        f"<wsse:UsernameToken><wsse:Username>{escape(username)}</wsse:Username>"
        f"{password_el}{extra}</wsse:UsernameToken></wsse:Security>"
    )


def envelope(body: str, security: str | None = "auto", prolog: str = "") -> bytes:
    """A SOAP 1.1 envelope around ``body`` (elements with the ``gf`` prefix). ``security``:
    ``"auto"`` a fresh digest token, ``None`` no header, else the header text."""
    header = ""
    if security == "auto":
        security = username_token()
    if security is not None:
        header = f"<soap:Header>{security}</soap:Header>"
    return (
        f'<?xml version="1.0" encoding="utf-8"?>{prolog}'
        f'<soap:Envelope xmlns:soap="{SOAP}" xmlns:gf="{GF}">'
        f"{header}<soap:Body>{body}</soap:Body></soap:Envelope>"
    ).encode()


def line(account: str = "6000", amount: str = "10.00", **optional: str) -> dict[str, str]:
    return {"account": account, "amount": amount, **optional}


_LINE_ORDER = ("account", "costCenter", "sku", "batchNo", "quantity", "amount", "memo")


def lines_xml(lines: list[dict[str, str]]) -> str:
    out = []
    for ln in lines:
        fields = "".join(
            f"<gf:{name}>{escape(ln[name])}</gf:{name}>" for name in _LINE_ORDER if name in ln
        )
        out.append(f"<gf:line>{fields}</gf:line>")
    return f"<gf:lines>{''.join(out)}</gf:lines>"


def posting_xml(
    operation: str,
    document_id: str,
    *,
    company: str = "C100",
    period: str = "2026-11",
    currency: str = "EUR",
    lines: list[dict[str, str]] | None = None,
    invoice: dict[str, str] | None = None,
) -> str:
    lines = lines if lines is not None else [line("6000", "10.00"), line("6010", "2.50")]
    extra = ""
    if operation == "PostProcurementInvoice":
        inv = {
            "vendorId": "V-1",
            "invoiceNo": "INV-1",
            "invoiceDate": f"{period}-15",
            "taxAmount": "1.25",
            **(invoice or {}),
        }
        extra = "".join(f"<gf:{k}>{escape(v)}</gf:{k}>" for k, v in inv.items())
    return (
        f"<gf:{operation}><gf:documentId>{escape(document_id)}</gf:documentId>"
        f"<gf:companyCode>{escape(company)}</gf:companyCode><gf:period>{period}</gf:period>"
        f"<gf:currency>{currency}</gf:currency>{lines_xml(lines)}{extra}</gf:{operation}>"
    )


def call(
    client: httpx.Client,
    operation: str,
    body: str | bytes,
    *,
    security: str | None = "auto",
    action: str | None = None,
    content_type: str = "text/xml; charset=utf-8",
) -> httpx.Response:
    content = body if isinstance(body, bytes) else envelope(body, security)
    headers = {"Content-Type": content_type, "SOAPAction": action or soap_action(operation)}
    return client.post(ENDPOINT, content=content, headers=headers)


# ---- reading answers ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def schema() -> xmlschema.XMLSchema:
    root = etree.parse(str(WSDL_PATH)).getroot()
    el = root.find(
        "{http://schemas.xmlsoap.org/wsdl/}types/{http://www.w3.org/2001/XMLSchema}schema"
    )
    assert el is not None
    return xmlschema.XMLSchema(etree.tostring(el, encoding="unicode"))


def _safe_parse(content: bytes) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    root = etree.fromstring(content, parser)
    assert root.getroottree().docinfo.doctype == ""
    return root


def payload(response: httpx.Response) -> etree._Element:
    """The body element of a successful answer, checked against the WSDL's schema."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/xml; charset=utf-8"
    root = _safe_parse(response.content)
    assert root.tag == f"{{{SOAP}}}Envelope"
    body = root.find(f"{{{SOAP}}}Body")
    assert body is not None and len(body) == 1
    el = body[0]
    schema().validate(el)
    return el


def result(response: httpx.Response) -> dict[str, str]:
    """A PostingResult as ``{documentId, status, postingRef?, message?}``."""
    el = payload(response)
    return {etree.QName(c).localname: c.text or "" for c in el}


@dataclass
class Fault:
    status: int
    code: str  # as sent, e.g. "soap:Client"
    code_ns: str  # the namespace its prefix resolves to
    code_local: str
    string: str
    field_errors: list[tuple[str, str]]
    raw: str


def fault(response: httpx.Response) -> Fault:
    assert response.headers["content-type"] == "text/xml; charset=utf-8", response.text
    root = _safe_parse(response.content)
    f = root.find(f"{{{SOAP}}}Body/{{{SOAP}}}Fault")
    assert f is not None, response.text
    code_el = f.find("faultcode")
    assert code_el is not None and code_el.text
    prefix, _, local = code_el.text.partition(":")
    errors = [
        (fe.findtext(f"{{{GF}}}field") or "", fe.findtext(f"{{{GF}}}message") or "")
        for fe in f.iterfind(f"detail/{{{GF}}}fieldError")
    ]
    return Fault(
        status=response.status_code,
        code=code_el.text,
        code_ns=code_el.nsmap.get(prefix, ""),
        code_local=local,
        string=f.findtext("faultstring") or "",
        field_errors=errors,
        raw=response.text,
    )


def list_postings(
    client: httpx.Client,
    company: str,
    period: str,
    page_size: int | None = None,
    token: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    body = f"<gf:ListPostings><gf:companyCode>{company}</gf:companyCode><gf:period>{period}</gf:period>"
    if page_size is not None:
        body += f"<gf:pageSize>{page_size}</gf:pageSize>"
    if token is not None:
        body += f"<gf:pageToken>{token}</gf:pageToken>"
    body += "</gf:ListPostings>"
    el = payload(call(client, "ListPostings", body))
    items = [{etree.QName(c).localname: c.text for c in p} for p in el.iterfind(f"{{{GF}}}posting")]
    return items, el.findtext(f"{{{GF}}}nextPageToken")
