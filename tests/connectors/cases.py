"""ConnectorCases for the ERP and wallet connectors."""

from __future__ import annotations

from urllib.parse import parse_qs

import httpx
from pydantic import SecretStr

from connectors.erp import ErpClient, ErpSettings
from connectors.finance import FinanceClient, FinanceSettings
from connectors.http import RetryPolicy
from connectors.limits import ConcurrencyLimiter
from connectors.payments.stripe import StripeClient
from connectors.supplier import SupplierClient, SupplierSettings
from connectors.wallet import WalletClient, WalletSiteSettings
from tests.connectors.conformance import ConnectorCase, json_response


def erp_settings(**over) -> ErpSettings:
    data = dict(account="999999_SB1", base_url="http://erp.test",
                consumer_key=SecretStr("ck-conformance"),
                consumer_secret=SecretStr("cs-conformance-secret"),
                token_id=SecretStr("tk-conformance"),
                token_secret=SecretStr("ts-conformance-secret"), concurrency=4)
    data.update(over)
    return ErpSettings(**data)


def build_erp(transport: httpx.MockTransport, retry: RetryPolicy) -> ErpClient:
    return ErpClient(erp_settings(), transport=transport, retry=retry,
                     limiter=ConcurrencyLimiter(4))


def erp_error(status: int, code: str, detail: str) -> httpx.Response:
    return json_response(status, {
        "type": "https://www.rfc-editor.org/rfc/rfc9110.html#section-15",
        "title": "Error", "status": status,
        "o:errorDetails": [{"detail": detail, "o:errorCode": code}],
    })


def erp_page(request: httpx.Request, number: int, size: int, more: bool) -> httpx.Response:
    offset = int(parse_qs(request.url.query.decode()).get("offset", ["0"])[0])
    return json_response(200, {
        "links": [], "count": size, "hasMore": more, "offset": offset, "totalResults": 0,
        "items": [{"id": str(offset + i + 1), "links": []} for i in range(size)],
    })


def erp_repeated(request: httpx.Request, number: int) -> httpx.Response:
    # claims more pages but serves offset 0 again, whatever was asked
    return json_response(200, {"links": [], "count": 2, "hasMore": True, "offset": 0,
                               "totalResults": 10, "items": [{"id": "1"}, {"id": "2"}]})


async def erp_list_all(client: ErpClient) -> list[str]:
    ids: list[str] = []
    async for page in client.list_ids("inventoryItem", page_size=2):
        ids.extend(page)
    return ids


ERP_CASE = ConnectorCase(
    name="erp",
    build=build_erp,
    call=lambda c: c.get("inventoryItem", "1"),
    ok_response=lambda: json_response(200, {"id": "1", "itemId": "SKU-1"}),
    auth_failure=lambda: erp_error(401, "INVALID_LOGIN", "Invalid login attempt."),
    rate_limited=lambda retry_after: erp_error(429, "CONCURRENCY_LIMIT_EXCEEDED",
                                               "Concurrency limit exceeded"),
    page=erp_page,
    repeated_page=erp_repeated,
    list_all=erp_list_all,
    server_error=lambda status: erp_error(status, "UNEXPECTED_ERROR", "An unexpected error"),
    secrets=("cs-conformance-secret", "ts-conformance-secret"),
)


def wallet_site(**over) -> WalletSiteSettings:
    data = dict(code="sg1", name="Singapore A", country="SG", currency="SGD",
                timezone="Asia/Singapore", base_url="http://wallet.test/sg1",
                api_key=SecretStr("wallet-key-conformance"))
    data.update(over)
    return WalletSiteSettings(**data)


def build_wallet(transport: httpx.MockTransport, retry: RetryPolicy) -> WalletClient:
    return WalletClient(wallet_site(), transport=transport, retry=retry,
                        limiter=ConcurrencyLimiter(4))


def wallet_error(status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> httpx.Response:
    return json_response(status, {"error": {"code": code, "message": message, "details": []}},
                         headers)


def wallet_page(request: httpx.Request, number: int, size: int, more: bool) -> httpx.Response:
    return json_response(200, {
        "items": [{"sku": f"SKU-{number}-{i}"} for i in range(size)],
        "next_cursor": f"c{number}" if more else None,
    })


def wallet_repeated(request: httpx.Request, number: int) -> httpx.Response:
    return json_response(200, {"items": [{"sku": "x"}], "next_cursor": "same"})


async def wallet_list_all(client: WalletClient) -> list[str]:
    skus: list[str] = []
    async for page in client.list_products(page_size=2):
        skus.extend(p["sku"] for p in page)
    return skus


WALLET_CASE = ConnectorCase(
    name="wallet",
    build=build_wallet,
    call=lambda c: c.set_product_status("SKU-1", "frozen", "test"),
    ok_response=lambda: json_response(200, {"sku": "SKU-1", "status": "frozen"}),
    auth_failure=lambda: wallet_error(401, "unauthorized", "bad key"),
    rate_limited=lambda retry_after: wallet_error(
        429, "rate_limited", "slow down",
        {"Retry-After": str(int(retry_after))} if retry_after is not None else None),
    page=wallet_page,
    repeated_page=wallet_repeated,
    list_all=wallet_list_all,
    server_error=lambda status: wallet_error(status, "internal", "boom"),
)

def finance_settings(**over) -> FinanceSettings:
    data = dict(url="http://finance.test/soap/groupfinance", username=SecretStr("vf-conf-user"),
                password=SecretStr("vf-conformance-password"))
    data.update(over)
    return FinanceSettings(**data)


def build_finance(transport: httpx.MockTransport, retry: RetryPolicy) -> FinanceClient:
    return FinanceClient(finance_settings(), transport=transport, retry=retry,
                         limiter=ConcurrencyLimiter(4))


def soap(body: str, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    envelope = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:gf="urn:vouchflow:groupfinance:v1"><soap:Body>' + body +
        "</soap:Body></soap:Envelope>"
    )
    return httpx.Response(status, content=envelope.encode(),
                          headers={"Content-Type": "text/xml; charset=utf-8", **(headers or {})})


def soap_fault(code: str, message: str, detail: str = "", *, xmlns: str = "") -> httpx.Response:
    return soap(f"<soap:Fault {xmlns}><faultcode>{code}</faultcode>"
                f"<faultstring>{message}</faultstring>"
                + (f"<detail>{detail}</detail>" if detail else "") + "</soap:Fault>", 500)


WSSE_NS = ('xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/'
           'oasis-200401-wss-wssecurity-secext-1.0.xsd"')


def posting_status_ok() -> httpx.Response:
    return soap("<gf:GetPostingStatusResponse><gf:documentId>DOC-1</gf:documentId>"
                "<gf:status>BOOKED</gf:status><gf:postingRef>GF-2026-11-000001</gf:postingRef>"
                "</gf:GetPostingStatusResponse>")


def finance_page(request: httpx.Request, number: int, size: int, more: bool) -> httpx.Response:
    postings = "".join(
        f"<gf:posting><gf:documentId>DOC-{number}-{i}</gf:documentId>"
        "<gf:kind>COST_OF_SALES</gf:kind><gf:status>BOOKED</gf:status>"
        f"<gf:postingRef>GF-2026-11-{number:03d}{i:03d}</gf:postingRef>"
        "<gf:currency>SGD</gf:currency><gf:totalAmount>12.5000</gf:totalAmount>"
        "<gf:lineCount>1</gf:lineCount><gf:bookedAt>2026-11-22T10:00:00Z</gf:bookedAt>"
        "</gf:posting>" for i in range(size))
    token = f"<gf:nextPageToken>t{number}</gf:nextPageToken>" if more else ""
    return soap(f"<gf:ListPostingsResponse>{postings}{token}</gf:ListPostingsResponse>")


def finance_repeated(request: httpx.Request, number: int) -> httpx.Response:
    return soap("<gf:ListPostingsResponse><gf:nextPageToken>same</gf:nextPageToken>"
                "</gf:ListPostingsResponse>")


async def finance_list_all(client: FinanceClient) -> list[str]:
    ids: list[str] = []
    async for page in client.list_postings("2026-11", page_size=2):
        ids.extend(p.document_id for p in page)
    return ids


def finance_hostile(path: str) -> httpx.Response:
    body = (f'<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file://{path}">]>'
            '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:gf="urn:vouchflow:groupfinance:v1"><soap:Body>'
            "<gf:GetPostingStatusResponse><gf:documentId>DOC-1</gf:documentId>"
            "<gf:status>BOOKED</gf:status><gf:postingRef>&xxe;</gf:postingRef>"
            "</gf:GetPostingStatusResponse></soap:Body></soap:Envelope>")
    return httpx.Response(200, content=body.encode(), headers={"Content-Type": "text/xml"})


FINANCE_CASE = ConnectorCase(
    name="finance",
    build=build_finance,
    call=lambda c: c.posting_status("DOC-1"),
    ok_response=posting_status_ok,
    auth_failure=lambda: soap_fault("wsse:FailedAuthentication",
                                    "The security token could not be authenticated",
                                    xmlns=WSSE_NS),
    rate_limited=lambda retry_after: httpx.Response(
        429, content=b"busy",
        headers={"Retry-After": str(int(retry_after))} if retry_after is not None else {}),
    page=finance_page,
    repeated_page=finance_repeated,
    list_all=finance_list_all,
    server_error=lambda status: soap_fault("soap:Server", "try again later") if status == 500
    else httpx.Response(status, content=b"<html>bad gateway</html>"),
    malformed_words="not XML",
    hostile=finance_hostile,
    auth_status=500,
    secrets=("vf-conformance-password",),
)


def build_stripe(transport: httpx.MockTransport, retry: RetryPolicy) -> StripeClient:
    return StripeClient("http://stripe.test", "sk_conformance_secret", transport=transport,
                        retry=retry, limiter=ConcurrencyLimiter(4))


def stripe_error(status: int, kind: str, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> httpx.Response:
    error = {"type": kind, "message": message, **({"code": code} if code else {})}
    return json_response(status, {"error": error}, headers)


STRIPE_PAYOUT = {"id": "po_1", "object": "payout", "amount": 1000, "currency": "eur",
                 "status": "paid", "created": 1_763_600_000, "arrival_date": 1_763_700_000}


def stripe_page(request: httpx.Request, number: int, size: int, more: bool) -> httpx.Response:
    data = [{**STRIPE_PAYOUT, "id": f"po_{number}_{i}"} for i in range(size)]
    return json_response(200, {"object": "list", "data": data, "has_more": more})


def stripe_repeated(request: httpx.Request, number: int) -> httpx.Response:
    return json_response(200, {"object": "list", "data": [STRIPE_PAYOUT], "has_more": True})


async def stripe_list_all(client: StripeClient) -> list[str]:
    return [p.id async for page in client.payouts(page_size=2) for p in page]


STRIPE_CASE = ConnectorCase(
    name="stripe",
    build=build_stripe,
    call=lambda c: c.payout("po_1"),
    ok_response=lambda: json_response(200, STRIPE_PAYOUT),
    auth_failure=lambda: stripe_error(401, "authentication_error", "Invalid API Key provided"),
    rate_limited=lambda retry_after: stripe_error(
        429, "rate_limit_error", "Too many requests", "rate_limit",
        {"Retry-After": str(int(retry_after))} if retry_after is not None else None),
    page=stripe_page,
    repeated_page=stripe_repeated,
    list_all=stripe_list_all,
    server_error=lambda status: stripe_error(status, "api_error", "boom"),
    secrets=("sk_conformance_secret",),
)

def build_supplier(transport: httpx.MockTransport, retry: RetryPolicy) -> SupplierClient:
    settings = SupplierSettings(slug="acme", base_url="http://supplier.test",
                                token=SecretStr("supplier-token-conformance"))
    return SupplierClient(settings, transport=transport, retry=retry,
                          limiter=ConcurrencyLimiter(4))


def supplier_page(request: httpx.Request, number: int, size: int, more: bool) -> httpx.Response:
    return json_response(200, {
        "items": [{"code": f"CODE-{number}-{i}", "redeemed_at": "2026-11-22T10:00:00Z"}
                  for i in range(size)],
        "next_cursor": f"c{number}" if more else None,
    })


async def supplier_list_all(client: SupplierClient) -> list[str]:
    return [r.code.get_secret_value() async for page in client.list_redemptions(page_size=2)
            for r in page]


SUPPLIER_CASE = ConnectorCase(
    name="supplier",
    build=build_supplier,
    call=lambda c: c.statement("2026-11"),
    ok_response=lambda: json_response(200, {
        "issued": 3, "redeemed": 1, "amount_due": {"amount": "28.50", "currency": "EUR"}}),
    auth_failure=lambda: wallet_error(401, "unauthorized", "missing or wrong bearer token"),
    rate_limited=WALLET_CASE.rate_limited,
    page=supplier_page,
    repeated_page=lambda request, number: json_response(200, {
        "items": [{"code": "x", "redeemed_at": "2026-11-22T10:00:00Z"}], "next_cursor": "same"}),
    list_all=supplier_list_all,
    server_error=WALLET_CASE.server_error,
    secrets=("supplier-token-conformance",),
)

CASES = [ERP_CASE, WALLET_CASE, FINANCE_CASE, STRIPE_CASE, SUPPLIER_CASE]
