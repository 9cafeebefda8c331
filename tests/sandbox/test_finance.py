"""The group finance sandbox against the WSDL (connectors/finance/groupfinance.wsdl) and
CONTRACTS.md "Group finance system", with plain httpx and hand-written SOAP."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from lxml import etree

from sandbox.core import ServedSandbox, serve, utcnow
from sandbox.finance import MAX_BODY_BYTES, FinanceSandbox

from .finance_helpers import (
    ENDPOINT,
    GF,
    SOAP,
    WSSE,
    call,
    envelope,
    fault,
    line,
    list_postings,
    payload,
    posting_xml,
    result,
    username_token,
)

POSTING_OPS = ["PostPurchaseCost", "PostInventoryValuation", "PostCostOfSales",
               "PostProcurementInvoice"]  # fmt: skip
KINDS = dict(zip(POSTING_OPS, ["PURCHASE_COST", "INVENTORY_VALUATION", "COST_OF_SALES",
                               "PROCUREMENT_INVOICE"], strict=True))  # fmt: skip
REF_RE = re.compile(r"^GF-2026-11-\d{6}$")


@pytest.fixture(scope="module")
def finance_served() -> Iterator[ServedSandbox]:
    with serve(FinanceSandbox()) as served:
        yield served


@pytest.fixture
def finance(finance_served: ServedSandbox) -> FinanceSandbox:
    sandbox = finance_served.sandbox
    assert isinstance(sandbox, FinanceSandbox)
    sandbox.reset()
    sandbox.clock = utcnow
    sandbox.max_body_bytes = MAX_BODY_BYTES
    return sandbox


@pytest.fixture
def client(finance: FinanceSandbox, finance_served: ServedSandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=finance_served.base_url, timeout=10) as c:
        yield c


def post(client: httpx.Client, op: str, doc_id: str, **kw: object) -> httpx.Response:
    return call(client, op, posting_xml(op, doc_id, **kw))  # type: ignore[arg-type]


def status_of(client: httpx.Client, doc_id: str) -> dict[str, str]:
    body = f"<gf:GetPostingStatus><gf:documentId>{doc_id}</gf:documentId></gf:GetPostingStatus>"
    return result(call(client, "GetPostingStatus", body))


# ---- WSDL ----------------------------------------------------------------------------------------


def test_wsdl_is_served_with_the_address_the_client_used(
    client: httpx.Client, finance_served: ServedSandbox
) -> None:
    r = client.get(ENDPOINT, params={"wsdl": ""})
    assert r.status_code == 200 and r.headers["content-type"] == "text/xml; charset=utf-8"
    root = etree.fromstring(r.content, etree.XMLParser(resolve_entities=False, no_network=True))
    soap_ns = "http://schemas.xmlsoap.org/wsdl/soap/"
    [address] = root.iter(f"{{{soap_ns}}}address")
    assert address.get("location") == finance_served.url(ENDPOINT)
    ops = root.findall(
        "{http://schemas.xmlsoap.org/wsdl/}portType/{http://schemas.xmlsoap.org/wsdl/}operation"
    )
    assert {o.get("name") for o in ops} == {*POSTING_OPS, "GetPostingStatus", "ListPostings"}
    assert b"DUPLICATE" in r.content and b"finance.example.invalid" not in r.content

    r = client.get(f"{ENDPOINT}?WSDL", headers={"Host": "finance.test:8443"})
    [address] = etree.fromstring(r.content).iter(f"{{{soap_ns}}}address")
    assert address.get("location") == "http://finance.test:8443/soap/groupfinance"

    f = fault(client.get(ENDPOINT))
    assert f.status == 400 and f.code == "soap:Client" and "?wsdl" in f.string


# ---- posting -------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", POSTING_OPS)
def test_each_posting_operation_books(
    finance: FinanceSandbox, client: httpx.Client, op: str
) -> None:
    lines = [line("6000", "10.00", costCenter="CC1", sku="SKU-1", batchNo="B1", quantity="2",
                  memo="two vouchers"), line("6010", "-2.5"), line("6020", "+0.0001")]  # fmt: skip
    r = post(client, op, f"DOC-{op}", lines=lines)
    res = result(r)
    assert res["documentId"] == f"DOC-{op}" and res["status"] == "BOOKED"
    assert REF_RE.match(res["postingRef"]) and "message" not in res
    assert payload(r).tag == f"{{{GF}}}PostingResponse"

    [effect] = finance.effects.entries("posting.booked")
    assert effect["key"] == f"DOC-{op}" and effect["posting_kind"] == KINDS[op]
    assert effect["currency"] == "EUR" and effect["total"] == "7.5001"
    assert effect["line_count"] == 3 and effect["posting_ref"] == res["postingRef"]
    booked = finance.get_posting(f"DOC-{op}")
    assert booked is not None and booked["kind"] == KINDS[op] and booked["companyCode"] == "C100"
    assert booked["lines"][0] == {"account": "6000", "costCenter": "CC1", "sku": "SKU-1",
                                  "batchNo": "B1", "quantity": "2", "amount": "10.00",
                                  "memo": "two vouchers"}  # fmt: skip
    assert booked["lines"][2]["amount"] == "0.0001"
    if op == "PostProcurementInvoice":
        assert booked["invoiceDate"] == "2026-11-15" and booked["taxAmount"] == "1.25"


def test_posting_refs_count_per_period(client: httpx.Client) -> None:
    refs = [result(post(client, "PostCostOfSales", f"D{i}", period=p))["postingRef"]
            for i, p in enumerate(["2026-11", "2026-11", "2026-12", "2026-11"])]  # fmt: skip
    assert refs == ["GF-2026-11-000001", "GF-2026-11-000002", "GF-2026-12-000001",
                    "GF-2026-11-000003"]  # fmt: skip


def test_a_document_id_is_booked_once(finance: FinanceSandbox, client: httpx.Client) -> None:
    first = result(post(client, "PostPurchaseCost", "DOC-1"))
    assert first["status"] == "BOOKED"
    # the same documentId, whatever the body and operation: DUPLICATE with the first ref
    again = [
        result(post(client, "PostPurchaseCost", "DOC-1")),
        result(post(client, "PostCostOfSales", "DOC-1", currency="QQQ", period="2026-12")),
        result(post(client, "PostProcurementInvoice", "DOC-1")),
    ]
    for res in again:
        assert res["status"] == "DUPLICATE" and res["postingRef"] == first["postingRef"]
        assert "already booked" in res["message"]
    assert finance.effects.count("posting.booked", "DOC-1") == 1
    assert finance.effects.count("posting.duplicate", "DOC-1") == 3
    assert finance.count() == 1


def test_concurrent_repeats_book_once(
    finance: FinanceSandbox, finance_served: ServedSandbox
) -> None:
    statuses: list[str] = []

    def worker() -> None:
        with httpx.Client(base_url=finance_served.base_url, timeout=10) as c:
            statuses.append(result(post(c, "PostPurchaseCost", "DOC-RACE"))["status"])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == ["BOOKED"] + ["DUPLICATE"] * 7
    assert finance.effects.count("posting.booked") == 1


def test_get_posting_status(client: httpx.Client) -> None:
    ref = result(post(client, "PostInventoryValuation", "DOC-7"))["postingRef"]
    known = status_of(client, "DOC-7")
    assert known["status"] == "BOOKED" and known["postingRef"] == ref
    unknown = status_of(client, "NOPE")
    assert unknown["documentId"] == "NOPE" and unknown["status"] == "UNKNOWN"
    assert "postingRef" not in unknown
    post(client, "PostCostOfSales", "DOC-8", currency="QQQ")
    rejected = status_of(client, "DOC-8")
    assert rejected["status"] == "REJECTED" and "QQQ" in rejected["message"]


def test_list_postings_pages_through_everything_once(client: httpx.Client) -> None:
    expected = []
    for i in range(23):
        amount = f"{i + 1}.5"
        ref = result(post(client, POSTING_OPS[i % 4], f"L{i:03d}",
                          lines=[line("6000", amount), line("6001", "1")]))["postingRef"]  # fmt: skip
        expected.append((f"L{i:03d}", ref, str(i + 2) + ".5"))
        post(client, "PostCostOfSales", f"OTHER-CO-{i}", company="C200")  # not listed
        if i % 5 == 0:
            post(client, "PostCostOfSales", f"OTHER-P-{i}", period="2026-12")  # not listed
    seen: list[dict[str, object]] = []
    token: str | None = None
    pages = 0
    while True:
        items, token = list_postings(client, "C100", "2026-11", page_size=7, token=token)
        pages += 1
        seen.extend(items)
        if token is None:
            break
        assert len(items) == 7
    assert pages == 4
    assert [(p["documentId"], p["postingRef"], p["totalAmount"]) for p in seen] == expected
    assert all(p["status"] == "BOOKED" and p["lineCount"] == "2" for p in seen)
    assert [p["kind"] for p in seen[:4]] == [KINDS[op] for op in POSTING_OPS]

    everything, token = list_postings(client, "C100", "2026-11")  # default page size
    assert token is None and len(everything) == 23
    assert list_postings(client, "C999", "2026-11") == ([], None)

    _, token = list_postings(client, "C100", "2026-11", page_size=5)
    assert token is not None
    for body_token, company in ((token, "C200"), ("garbage!", "C100")):
        body = (f"<gf:ListPostings><gf:companyCode>{company}</gf:companyCode>"
                f"<gf:period>2026-11</gf:period><gf:pageToken>{body_token}</gf:pageToken>"
                "</gf:ListPostings>")  # fmt: skip
        f = fault(call(client, "ListPostings", body))
        assert f.code == "soap:Client" and f.field_errors[0][0] == "pageToken"


# ---- schema ----------------------------------------------------------------------------------------

_OK = line("6000", "10.00")


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"lines": [_OK, {"account": "6010"}]}, "lines/line[2]/amount", "missing"),
        ({"period": "2026-13"}, "period", "pattern"),
        ({"lines": [_OK, line("6010", "1.12345")]}, "lines/line[2]/amount", "fraction digits"),
        ({"lines": [line("6010", "12,50")]}, "lines/line[1]/amount", "decimal"),
        ({"lines": [line("6010", "1e3")]}, "lines/line[1]/amount", "decimal"),
        ({"currency": "eur"}, "currency", "pattern"),
        ({"document_id": "has space"}, "documentId", "pattern"),
        ({"lines": []}, "lines/line", "missing"),
        ({"company": ""}, "companyCode", "length"),
        ({"invoice": {"invoiceDate": "15.11.2026"}}, "invoiceDate", "date"),
    ],
)
def test_schema_violations_name_the_field(
    finance: FinanceSandbox, client: httpx.Client, kwargs: dict, field: str, message: str
) -> None:
    doc_id = kwargs.pop("document_id", "DOC-BAD")
    r = post(client, "PostProcurementInvoice", doc_id, **kwargs)
    f = fault(r)
    assert f.status == 500 and f.code == "soap:Client" and f.code_ns == SOAP
    assert f.field_errors and f.field_errors[0][0] == field, f.field_errors
    assert message in f.field_errors[0][1].lower(), f.field_errors
    assert field in f.string
    assert finance.count() == 0 and finance.effects.count() == 0


def test_missing_and_unexpected_elements(client: httpx.Client) -> None:
    body = posting_xml("PostPurchaseCost", "DOC-1").replace(
        "<gf:companyCode>C100</gf:companyCode>", ""
    )
    assert fault(call(client, "PostPurchaseCost", body)).field_errors[0][0] == "companyCode"
    body = posting_xml("PostPurchaseCost", "DOC-1").replace(
        "<gf:amount>2.50</gf:amount>", "<gf:amount>2.50</gf:amount><gf:colour>red</gf:colour>"
    )
    f = fault(call(client, "PostPurchaseCost", body))
    assert f.field_errors[0][0] == "lines/line[2]/colour"
    body = posting_xml("PostPurchaseCost", "DOC-1").replace(
        "<gf:period>", "<gf:documentId>DOC-2</gf:documentId><gf:period>"
    )
    assert fault(call(client, "PostPurchaseCost", body)).field_errors[0][0] == "documentId[2]"
    # several problems: each one named
    bad = posting_xml("PostPurchaseCost", "DOC-1", period="26-11",
                      lines=[line("6000", "x"), line("6001", "1.000001")])  # fmt: skip
    fields = [fe[0] for fe in fault(call(client, "PostPurchaseCost", bad)).field_errors]
    assert fields == ["period", "lines/line[1]/amount", "lines/line[2]/amount"]
    # pageSize bounds come from the schema too
    body = ("<gf:ListPostings><gf:companyCode>C</gf:companyCode><gf:period>2026-11</gf:period>"
            "<gf:pageSize>1001</gf:pageSize></gf:ListPostings>")  # fmt: skip
    assert fault(call(client, "ListPostings", body)).field_errors[0][0] == "pageSize"


# ---- protocol ---------------------------------------------------------------------------------------


def test_protocol_errors(client: httpx.Client) -> None:
    body = posting_xml("PostPurchaseCost", "DOC-1")
    f = fault(call(client, "PostPurchaseCost", body, content_type="application/soap+xml"))
    assert f.status == 415 and f.code == "soap:Client"
    r = client.post(ENDPOINT, content=envelope(body), headers={"Content-Type": "text/xml"})
    f = fault(r)
    assert f.status == 500 and f.code == "soap:Client" and "SOAPAction" in f.string
    f = fault(
        call(
            client,
            "PostPurchaseCost",
            body,
            action='"urn:vouchflow:groupfinance:v1#PostCostOfSales"',
        )
    )
    assert f.code == "soap:Client" and "does not match" in f.string
    f = fault(call(client, "Nope", "<gf:Nope><gf:documentId>x</gf:documentId></gf:Nope>"))
    assert f.code == "soap:Client" and "unknown operation" in f.string
    f = fault(call(client, "PostPurchaseCost", b"<not-xml"))
    assert f.code == "soap:Client" and "well-formed" in f.string
    f = fault(call(client, "PostPurchaseCost", b"<a/>"))
    assert f.code == "soap:Client" and "not a SOAP envelope" in f.string
    soap12 = envelope(body).replace(SOAP.encode(), b"http://www.w3.org/2003/05/soap-envelope")
    assert fault(call(client, "PostPurchaseCost", soap12)).code == "soap:VersionMismatch"
    must = envelope(body, username_token() + '<x:Tx xmlns:x="urn:x" soap:mustUnderstand="1"/>')
    assert fault(call(client, "PostPurchaseCost", must)).code == "soap:MustUnderstand"
    # unquoted SOAPAction is fine too
    r = call(
        client, "PostPurchaseCost", body, action="urn:vouchflow:groupfinance:v1#PostPurchaseCost"
    )
    assert result(r)["status"] == "BOOKED"


def test_body_size_limit(finance: FinanceSandbox, client: httpx.Client) -> None:
    finance.max_body_bytes = 4000
    many = [line(f"6{i:03d}", "1.00") for i in range(200)]
    f = fault(post(client, "PostPurchaseCost", "DOC-BIG", lines=many))
    assert f.status == 413 and f.code == "soap:Client"
    assert finance.count() == 0


# ---- XML safety ------------------------------------------------------------------------------------

BILLION_LAUGHS = (
    '<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
        for i in range(1, 10)
    )
    + "]>"
)


@pytest.mark.parametrize("where", ["body", "header"])
@pytest.mark.parametrize("kind", ["doctype", "billion_laughs", "external", "after_comment"])
def test_dtds_and_entities_are_refused(
    finance: FinanceSandbox, client: httpx.Client, tmp_path: Path, kind: str, where: str
) -> None:
    secret = "TOP-SECRET-" + os.urandom(8).hex()
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(secret)
    ref = "DOC-1"
    if kind == "doctype":
        prolog = "<!DOCTYPE soap:Envelope>"
    elif kind == "billion_laughs":
        prolog, ref = BILLION_LAUGHS, "&lol9;"
    elif kind == "external":
        prolog, ref = f'<!DOCTYPE x [<!ENTITY xxe SYSTEM "file://{secret_file}">]>', "&xxe;"
    else:
        prolog, ref = (
            f'<!-- hi --><?pi x?>\n<!DOCTYPE x [<!ENTITY xxe SYSTEM "{secret_file}">]>',
            "&xxe;",
        )
    if where == "body":
        content = envelope(posting_xml("PostPurchaseCost", "DOC-1").replace(
            "<gf:documentId>DOC-1<", f"<gf:documentId>{ref}<"), prolog=prolog)  # fmt: skip
    else:
        content = envelope(posting_xml("PostPurchaseCost", "DOC-1"),
                           username_token(username=ref), prolog=prolog)  # fmt: skip
    started = time.perf_counter()
    r = call(client, "PostPurchaseCost", content)
    assert time.perf_counter() - started < 2
    f = fault(r)
    assert f.status == 500 and f.code == "soap:Client"
    assert f.string == "DTD and entities are not allowed"
    assert secret not in r.text and "lollol" not in r.text
    assert finance.count() == 0 and finance.effects.count() == 0


def test_the_parser_alone_never_expands_entities(tmp_path: Path) -> None:
    """Second line of defence, should the prolog check ever be bypassed."""
    from sandbox.finance.soap import _parser

    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("TOP-SECRET")
    for prolog, ref in (
        (f'<!DOCTYPE x [<!ENTITY xxe SYSTEM "file://{secret_file}">]>', "&xxe;"),
        (BILLION_LAUGHS, "&lol9;"),
    ):
        try:
            root = etree.fromstring(f"{prolog}<x>{ref}</x>".encode(), _parser())
        except etree.XMLSyntaxError as exc:  # libxml2's own amplification guard
            assert "amplification" in str(exc)
            continue
        text = etree.tostring(root)
        assert b"TOP-SECRET" not in text and b"lollol" not in text


def test_an_undeclared_entity_is_not_well_formed(client: httpx.Client) -> None:
    body = posting_xml("PostPurchaseCost", "DOC-1").replace("DOC-1", "&xxe;")
    f = fault(call(client, "PostPurchaseCost", body))
    assert f.code == "soap:Client" and "well-formed" in f.string


# ---- WS-Security --------------------------------------------------------------------------------------


def _stamp(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_password_digest_and_text_are_accepted(
    finance: FinanceSandbox, client: httpx.Client
) -> None:
    body = posting_xml("PostPurchaseCost", "DOC-1")
    assert result(call(client, "PostPurchaseCost", body))["status"] == "BOOKED"
    text = username_token(digest=False)
    assert result(call(client, "PostPurchaseCost", body, security=text))["status"] == "DUPLICATE"
    # zeep's default Created format carries +00:00 rather than Z
    created = datetime.now(UTC).replace(microsecond=0).isoformat()
    token = username_token(created=created)
    assert result(call(client, "PostPurchaseCost", body, security=token))["status"] == "DUPLICATE"
    assert finance.auth_failures == []


@pytest.mark.parametrize(
    "case",
    ["missing_header", "missing_security", "wrong_password", "wrong_user", "stale_created",
     "future_created", "text_wrong_password", "digest_without_nonce", "bad_type",
     "stale_text_created"],
)  # fmt: skip
def test_authentication_failures(finance: FinanceSandbox, client: httpx.Client, case: str) -> None:
    old = _stamp(datetime.now(UTC) - timedelta(minutes=6))
    security: str | None = {
        "missing_header": None,
        "missing_security": '<x:Other xmlns:x="urn:x"/>',
        "wrong_password": username_token(digest_password="guess"),
        "wrong_user": username_token(username="someone"),
        "stale_created": username_token(created=old),
        "future_created": username_token(created=_stamp(datetime.now(UTC) + timedelta(minutes=6))),
        "text_wrong_password": username_token(password="guess", digest=False),
        "digest_without_nonce": username_token()
        .replace("<wsse:Nonce", "<wsse:NotNonce")
        .replace("</wsse:Nonce>", "</wsse:NotNonce>"),
        "bad_type": username_token(digest=False).replace("#PasswordText", "#Plain"),
        "stale_text_created": username_token(digest=False, created=old),
    }[case]
    r = call(
        client, "PostPurchaseCost", posting_xml("PostPurchaseCost", "DOC-1"), security=security
    )
    f = fault(r)
    assert f.status == 500 and f.code == "wsse:FailedAuthentication"
    assert f.code_ns == WSSE and f.code_local == "FailedAuthentication"
    assert not f.field_errors and "guess" not in r.text
    assert finance.count() == 0 and len(finance.auth_failures) == 1


def test_a_nonce_is_used_once(finance: FinanceSandbox, client: httpx.Client) -> None:
    nonce = os.urandom(16)
    token = username_token(nonce=nonce)
    body = posting_xml("PostPurchaseCost", "DOC-1")
    assert result(call(client, "PostPurchaseCost", body, security=token))["status"] == "BOOKED"
    f = fault(call(client, "PostPurchaseCost", body, security=token))
    assert f.code == "wsse:FailedAuthentication"
    assert finance.auth_failures == ["nonce already used"]
    # same nonce, new Created: still refused within the window
    later = _stamp(datetime.now(UTC) + timedelta(seconds=2))
    f = fault(
        call(client, "PostPurchaseCost", body, security=username_token(nonce=nonce, created=later))
    )
    assert f.code == "wsse:FailedAuthentication"


def test_created_is_checked_against_the_sandbox_clock(
    finance: FinanceSandbox, client: httpx.Client
) -> None:
    finance.clock = lambda: datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    ok = username_token(created="2026-11-22T11:56:00Z")
    body = posting_xml("PostPurchaseCost", "DOC-1")
    assert result(call(client, "PostPurchaseCost", body, security=ok))["status"] == "BOOKED"
    assert finance.get_posting("DOC-1")["bookedAt"] == "2026-11-22T12:00:00Z"  # type: ignore[index]
    stale = username_token(created="2026-11-22T11:54:59Z")
    assert (
        fault(call(client, "PostPurchaseCost", body, security=stale)).code
        == "wsse:FailedAuthentication"
    )


# ---- business rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "kwargs", "message"),
    [
        ("PostPurchaseCost", {"lines": [line("6000", "5.00"), line("6010", "-5.0")]}, "sum to zero"),
        ("PostCostOfSales", {"lines": [line("6000", "0")]}, "sum to zero"),
        ("PostInventoryValuation", {"currency": "QQQ"}, "QQQ is not an ISO 4217"),
        ("PostProcurementInvoice", {"invoice": {"invoiceDate": "2026-10-31"}},
         "invoiceDate 2026-10-31 is not in period 2026-11"),
        ("PostPurchaseCost", {"period": "2026-10"}, "period 2026-10 is closed"),
    ],
)  # fmt: skip
def test_business_rejections(
    finance: FinanceSandbox, client: httpx.Client, op: str, kwargs: dict, message: str
) -> None:
    finance.close_period("2026-10")
    res = result(post(client, op, "DOC-R", **kwargs))
    assert res["status"] == "REJECTED" and message in res["message"] and "postingRef" not in res
    assert finance.count() == 0 and finance.effects.count("posting.booked") == 0
    assert finance.effects.count("posting.rejected", "DOC-R") == 1
    assert status_of(client, "DOC-R")["status"] == "REJECTED"
    assert finance.rejection("DOC-R")["attempts"] == 1  # type: ignore[index]


def test_a_rejected_document_is_evaluated_again(
    finance: FinanceSandbox, client: httpx.Client
) -> None:
    finance.close_period("2026-11")
    first = result(post(client, "PostPurchaseCost", "DOC-R"))
    assert first["status"] == "REJECTED"
    assert result(post(client, "PostPurchaseCost", "DOC-R"))["status"] == "REJECTED"
    assert finance.rejection("DOC-R")["attempts"] == 2  # type: ignore[index]
    finance.open_period("2026-11")
    booked = result(post(client, "PostPurchaseCost", "DOC-R"))
    assert booked["status"] == "BOOKED" and booked["postingRef"] == "GF-2026-11-000001"
    assert status_of(client, "DOC-R")["status"] == "BOOKED" and finance.rejection("DOC-R") is None
    assert result(post(client, "PostPurchaseCost", "DOC-R"))["status"] == "DUPLICATE"


def test_invoice_date_with_a_timezone(client: httpx.Client) -> None:
    r = post(
        client, "PostProcurementInvoice", "DOC-TZ", invoice={"invoiceDate": "2026-11-30+08:00"}
    )
    assert result(r)["status"] == "BOOKED"


# ---- faults ----------------------------------------------------------------------------------------------


def test_server_faults(finance: FinanceSandbox, client: httpx.Client) -> None:
    finance.server_faults(2)
    for _ in range(2):
        f = fault(post(client, "PostPurchaseCost", "DOC-1"))
        assert f.status == 500 and f.code == "soap:Server" and "try again later" in f.string
        assert status_of(client, "DOC-1")["status"] == "UNKNOWN"  # reads are not affected
    assert finance.count() == 0 and finance.effects.count() == 0
    assert result(post(client, "PostPurchaseCost", "DOC-1"))["status"] == "BOOKED"
    assert finance.stats.faults["soap_server"] == 2

    # "after": booked, but the answer is a fault; the retry sees DUPLICATE
    finance.server_faults(1, when="after")
    assert fault(post(client, "PostCostOfSales", "DOC-2")).code == "soap:Server"
    again = result(post(client, "PostCostOfSales", "DOC-2"))
    assert again["status"] == "DUPLICATE" and again["postingRef"] == "GF-2026-11-000002"
    assert finance.effects.count("posting.booked", "DOC-2") == 1


def test_server_faults_from_the_admin_route(finance: FinanceSandbox, client: httpx.Client) -> None:
    r = client.post(
        "/_sandbox/finance/server-faults", json={"count": 1, "operations": ["ListPostings"]}
    )
    assert r.status_code == 200 and r.json()["remaining"] == 1
    assert result(post(client, "PostPurchaseCost", "DOC-1"))["status"] == "BOOKED"
    body = "<gf:ListPostings><gf:companyCode>C100</gf:companyCode><gf:period>2026-11</gf:period></gf:ListPostings>"
    assert fault(call(client, "ListPostings", body)).code == "soap:Server"
    assert client.get("/_sandbox/finance/server-faults").json()["remaining"] == 0
    assert client.get("/_sandbox/finance/postings").json()["count"] == 1
    r = client.post("/_sandbox/finance/periods", json={"close": ["2026-12"]})
    assert r.json() == {"closed": ["2026-12"]}
    assert client.post("/_sandbox/finance/server-faults", json={"count": -1}).status_code == 400


def test_fault_switch_answers_soap_faults(finance: FinanceSandbox, client: httpx.Client) -> None:
    finance.faults.set(error_rate=1.0, count=1)
    f = fault(post(client, "PostPurchaseCost", "DOC-1"))
    assert f.status == 503 and f.code == "soap:Server"
    finance.faults.set(rate_limit_rate=1.0, retry_after=2, count=1)
    r = post(client, "PostPurchaseCost", "DOC-1")
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert fault(r).code == "soap:Server"
    assert finance.count() == 0
    f = fault(client.put(ENDPOINT))
    assert f.status == 405 and f.code == "soap:Client"


def test_a_lost_answer_is_retried_into_duplicate(
    finance: FinanceSandbox, client: httpx.Client
) -> None:
    finance.faults.set(drop_rate=1.0, drop_when="after", count=1, method="POST")
    with pytest.raises(httpx.TransportError):
        post(client, "PostPurchaseCost", "DOC-1")
    res = result(post(client, "PostPurchaseCost", "DOC-1"))
    assert res["status"] == "DUPLICATE" and res["postingRef"] == "GF-2026-11-000001"
    assert finance.effects.count("posting.booked") == 1


# ---- persistence ----------------------------------------------------------------------------------------


def test_save_and_load(finance: FinanceSandbox, client: httpx.Client, tmp_path: Path) -> None:
    for i in range(3):
        post(client, "PostPurchaseCost", f"DOC-{i}")
    post(client, "PostProcurementInvoice", "INV-1")
    finance.close_period("2026-09")
    post(client, "PostPurchaseCost", "DOC-R", period="2026-09")
    path = finance.save(tmp_path / "finance.json")

    loaded = FinanceSandbox.load(path)
    assert loaded.postings() == finance.postings() and loaded.count() == 4
    assert loaded.closed_periods == {"2026-09"}
    assert loaded.rejection("DOC-R") == finance.rejection("DOC-R")
    assert loaded.effects.count() == 0  # effects are not data
    with serve(loaded) as served, httpx.Client(base_url=served.base_url, timeout=10) as c2:
        assert result(post(c2, "PostPurchaseCost", "DOC-1"))["status"] == "DUPLICATE"
        assert result(post(c2, "PostPurchaseCost", "DOC-9"))["postingRef"] == "GF-2026-11-000005"
        assert status_of(c2, "DOC-R")["status"] == "REJECTED"
        items, _ = list_postings(c2, "C100", "2026-11")
        assert [p["documentId"] for p in items] == ["DOC-0", "DOC-1", "DOC-2", "INV-1", "DOC-9"]
    assert not FinanceSandbox().load_state(tmp_path / "missing.json")


def test_the_wsdl_path_can_be_given(tmp_path: Path) -> None:
    from .finance_helpers import WSDL_PATH

    copy = tmp_path / "gf.wsdl"
    copy.write_bytes(WSDL_PATH.read_bytes().replace(b"#PostPurchaseCost", b"#PostPurchaseCostV2"))
    sandbox = FinanceSandbox(wsdl_path=copy)
    assert sandbox.service.operations["PostPurchaseCost"].soap_action.endswith(
        "#PostPurchaseCostV2"
    )
    assert FinanceSandbox.url_path == "/soap/groupfinance"
    assert sandbox.wsdl_url("http://h:1/") == "http://h:1/soap/groupfinance?wsdl"
