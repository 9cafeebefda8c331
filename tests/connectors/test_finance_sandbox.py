"""The group finance client against the finance sandbox: what lands is counted there."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import pytest
from pydantic import SecretStr

from connectors.errors import AuthError, InvalidRecordError
from connectors.finance import (
    FinanceClient,
    FinanceSettings,
    Posting,
    PostingKind,
    PostingLine,
    PostingStatus,
)
from connectors.http import RetryPolicy
from sandbox.core import serve
from sandbox.finance import DEFAULT_PASSWORD, DEFAULT_USERNAME, FinanceSandbox

FAST = RetryPolicy(max_attempts=5, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def finance():
    sandbox = FinanceSandbox()
    with serve(sandbox) as served:
        yield sandbox, sandbox.endpoint_url(served.base_url)


def client(url: str, **over) -> FinanceClient:
    data = dict(url=url, username=SecretStr(DEFAULT_USERNAME),
                password=SecretStr(DEFAULT_PASSWORD))
    data.update(over)
    return FinanceClient(FinanceSettings(**data), retry=FAST)


def posting(doc: str, kind: PostingKind = PostingKind.COST_OF_SALES, **over) -> Posting:
    data = dict(kind=kind, document_id=doc, company_code="VF01", period="2026-11",
                currency="SGD", lines=(
                    PostingLine(account="5000", amount=Decimal("12.5000"), sku="SKU-1",
                                batch_no="B-1", quantity=Decimal("2")),
                    PostingLine(account="1400", amount=Decimal("-2.50"), memo="adjust")))
    data.update(over)
    return Posting(**data)


def run(coro):
    return asyncio.run(coro)


def test_posting_the_same_document_twice_books_it_once(finance):
    sandbox, url = finance

    async def go():
        async with client(url) as c:
            first = await c.post(posting("cos-sg1-20261122"))
            second = await c.post(posting("cos-sg1-20261122"))
            status = await c.posting_status("cos-sg1-20261122")
            return first, second, status

    first, second, status = run(go())
    assert first.status is PostingStatus.BOOKED and first.posting_ref
    assert second.status is PostingStatus.DUPLICATE and second.posting_ref == first.posting_ref
    assert status.status is PostingStatus.BOOKED
    assert sandbox.effects.count("posting.booked", "cos-sg1-20261122") == 1


def test_every_kind_books_and_lists_with_totals(finance):
    _sandbox, url = finance
    invoice = posting("inv-V1-0042", PostingKind.PROCUREMENT_INVOICE, vendor_id="V1",
                      invoice_no="0042", invoice_date="2026-11-20",
                      tax_amount=Decimal("0.70"))

    async def go():
        async with client(url) as c:
            for i, kind in enumerate([PostingKind.PURCHASE_COST,
                                      PostingKind.INVENTORY_VALUATION,
                                      PostingKind.COST_OF_SALES]):
                assert (await c.post(posting(f"doc-{i}", kind))).booked
            assert (await c.post(invoice)).booked
            seen = []
            async for page in c.list_postings("2026-11", page_size=2):
                seen.extend(page)
            return seen

    seen = run(go())
    assert [s.document_id for s in seen] == ["doc-0", "doc-1", "doc-2", "inv-V1-0042"]
    assert all(s.total_amount == Decimal("10.0000") for s in seen)
    assert {s.kind for s in seen} == set(PostingKind)


def test_server_faults_are_retried_with_a_fresh_security_token(finance):
    sandbox, url = finance
    sandbox.server_faults(2)

    async def go():
        async with client(url) as c:
            return await c.post(posting("retry-me"))

    assert run(go()).status is PostingStatus.BOOKED
    assert sandbox.effects.count("posting.booked", "retry-me") == 1
    assert not sandbox.auth_failures  # no nonce was reused by the retries


def test_answer_lost_after_booking_then_retry_is_a_duplicate_not_a_second_booking(finance):
    sandbox, url = finance
    sandbox.server_faults(1, when="after")

    async def go():
        async with client(url) as c:
            return await c.post(posting("lost-answer"))

    result = run(go())
    assert result.booked and result.status is PostingStatus.DUPLICATE
    assert sandbox.effects.count("posting.booked", "lost-answer") == 1


def test_a_field_the_service_refuses_is_named(finance):
    _sandbox, url = finance

    async def go():
        async with client(url) as c:
            # the model keeps us from sending bad amounts, so go around it
            return await c._call("PostCostOfSales", documentId="bad-1", companyCode="VF01",
                                 period="2026-11", currency="SGD",
                                 lines={"line": [{"account": "5000"}]})

    with pytest.raises(InvalidRecordError) as info:
        run(go())
    assert "amount" in str(info.value)


def test_wrong_password_is_an_auth_error_once(finance):
    sandbox, url = finance

    async def go():
        async with client(url, password=SecretStr("not-the-password")) as c:
            await c.posting_status("x")

    with pytest.raises(AuthError):
        run(go())
    assert len(sandbox.auth_failures) == 1


def test_a_request_with_a_dtd_or_entity_is_refused(finance, tmp_path):
    sandbox, url = finance
    secret = tmp_path / "secret.txt"
    secret.write_text("FINANCE-SECRET")
    body = (f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file://{secret}">]>'
            '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:gf="urn:vouchflow:groupfinance:v1"><soap:Body><gf:GetPostingStatus>'
            "<gf:documentId>&e;</gf:documentId></gf:GetPostingStatus></soap:Body>"
            "</soap:Envelope>")
    answer = httpx.post(url, content=body.encode(), headers={
        "Content-Type": "text/xml; charset=utf-8",
        "SOAPAction": '"urn:vouchflow:groupfinance:v1#GetPostingStatus"'})
    assert answer.status_code == 500
    assert b"soap:Client" in answer.content and b"DTD" in answer.content
    assert b"FINANCE-SECRET" not in answer.content
    assert sandbox.count() == 0


def test_the_sandbox_set_points_the_settings_at_its_finance_service(monkeypatch):
    from sandbox import serve_all

    with serve_all(None, erp_port=0, wallet_port=0, seed_skus=0, invalid=0) as group:
        for name, value in group.env().items():
            monkeypatch.setenv(name, value)

        async def go():
            async with FinanceClient(FinanceSettings(), retry=FAST) as c:
                return await c.post(posting("env-1"))

        assert run(go()).status is PostingStatus.BOOKED
        assert group.finance is not None
        assert group.finance.effects.count("posting.booked", "env-1") == 1
