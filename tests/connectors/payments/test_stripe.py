"""The Stripe-style client against its sandbox (in process, through ASGITransport): complete
and loop-safe paging, transactions by payout, errors mapped, amounts in minor units."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from canonical import Fee, PaymentTrace, TraceKind
from connectors.errors import AuthError, MalformedResponseError, NotFoundError, PaginationError
from connectors.http import NO_RETRY, RetryPolicy
from connectors.payments.stripe import StripeClient
from flows.payments import read_payment_file
from mappings.payments import stripe_payout_record, stripe_transaction_records
from sandbox.stripe import DEFAULT_API_KEY, StripeSandbox


@pytest.fixture
def sandbox() -> StripeSandbox:
    sb = StripeSandbox()
    sb.seed(60, per_payout=20)
    return sb


def _client(app: Any, *, key: str = DEFAULT_API_KEY, retry: RetryPolicy = NO_RETRY
            ) -> StripeClient:
    return StripeClient("http://stripe.test", key, account="acct_test",
                        transport=httpx.ASGITransport(app=app), retry=retry)


async def _all(client: StripeClient, **kwargs: Any) -> list[Any]:
    return [t async for page in client.balance_transactions(**kwargs) for t in page]


def test_paging_reads_every_transaction_once(sandbox: StripeSandbox) -> None:
    async def main() -> list[Any]:
        async with _client(sandbox) as client:
            return await _all(client, page_size=7)
    found = asyncio.run(main())
    assert [t.id for t in found] == [t["id"] for t in sandbox.transactions]
    assert len({t.id for t in found}) == len(found) > 60
    pages = sandbox.effects.count("list")
    assert pages == -(-len(found) // 7)


def test_a_payouts_transactions_add_up_to_it(sandbox: StripeSandbox) -> None:
    async def main() -> tuple[list[Any], dict[str, list[Any]]]:
        async with _client(sandbox) as client:
            payouts = [p async for page in client.payouts(page_size=2) for p in page]
            paid = {p.id: await _all(client, payout=p.id, page_size=5) for p in payouts}
            return payouts, paid
    payouts, paid = asyncio.run(main())
    assert len(payouts) == 3
    for payout in payouts:
        charges = [t for t in paid[payout.id] if t.type != "payout"]
        assert sum((t.net for t in charges), Decimal(0)) == payout.amount
        assert all(t.payout == payout.id for t in paid[payout.id])
        record = stripe_payout_record(payout, account="acct_test")
        assert record.amount.amount == payout.amount and record.amount.currency == "EUR"


def test_transactions_map_to_traces_and_fees(sandbox: StripeSandbox) -> None:
    async def main() -> list[Any]:
        async with _client(sandbox) as client:
            return await _all(client, page_size=100)
    found = asyncio.run(main())
    charge = next(t for t in found if t.type == "charge")
    trace, fee = stripe_transaction_records(charge, account="acct_test")
    assert isinstance(trace, PaymentTrace) and isinstance(fee, Fee)
    assert trace.amount.amount == charge.amount and trace.kind is TraceKind.PAYMENT
    assert trace.references.provider_reference == charge.source
    assert fee.amount.amount == charge.fee > 0
    dispute = next(t for t in found if t.reporting_category == "dispute")
    assert stripe_transaction_records(dispute, account="a")[0].kind is TraceKind.CHARGEBACK


def test_a_wrong_key_is_an_auth_error(sandbox: StripeSandbox) -> None:
    async def main() -> None:
        async with _client(sandbox, key="sk_wrong") as client:
            await _all(client)
    with pytest.raises(AuthError):
        asyncio.run(main())


def test_an_unknown_payout_is_not_found(sandbox: StripeSandbox) -> None:
    async def main() -> None:
        async with _client(sandbox) as client:
            await client.payout("po_missing")
    with pytest.raises(NotFoundError):
        asyncio.run(main())


def test_rate_limits_and_server_errors_are_retried(sandbox: StripeSandbox) -> None:
    sandbox.faults.set(rate_limit_rate=1.0, retry_after=0, count=2)
    async def main() -> list[Any]:
        retry = RetryPolicy(max_attempts=4, base_delay=0.001, jitter=False)
        async with _client(sandbox, retry=retry) as client:
            return await _all(client, page_size=100)
    assert len(asyncio.run(main())) == len(sandbox.transactions)


def _mock(pages: list[dict[str, Any]]) -> httpx.MockTransport:
    calls = iter(pages)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=next(calls))
    return httpx.MockTransport(handler)


TXN = {"id": "txn_1", "object": "balance_transaction", "amount": 1000, "fee": 59, "net": 941,
       "currency": "sgd", "type": "charge", "reporting_category": "charge",
       "source": "ch_1", "created": 1_763_600_000, "available_on": 1_763_800_000,
       "status": "available"}


def test_a_repeated_cursor_stops_instead_of_looping() -> None:
    page = {"object": "list", "data": [TXN], "has_more": True}
    async def main() -> None:
        async with StripeClient("http://x", "k", transport=_mock([page, page, page]),
                                retry=NO_RETRY) as client:
            await _all(client)
    with pytest.raises(PaginationError):
        asyncio.run(main())


@pytest.mark.parametrize(("change", "field"), [
    ({"amount": 10.5}, "amount"), ({"net": 900}, "net"), ({"currency": "xyz"}, "currency"),
])
def test_malformed_amounts_are_refused(change: dict[str, Any], field: str) -> None:
    page = {"object": "list", "data": [{**TXN, **change}], "has_more": False}
    async def main() -> None:
        async with StripeClient("http://x", "k", transport=_mock([page]),
                                retry=NO_RETRY) as client:
            await _all(client)
    with pytest.raises(MalformedResponseError, match=field):
        asyncio.run(main())


def test_zero_decimal_currencies_use_stripes_exponent() -> None:
    page = {"object": "list", "data": [{**TXN, "currency": "jpy", "amount": 1200, "fee": 40,
                                        "net": 1160}], "has_more": False}
    async def main() -> list[Any]:
        async with StripeClient("http://x", "k", transport=_mock([page]),
                                retry=NO_RETRY) as client:
            return await _all(client)
    (txn,) = asyncio.run(main())
    assert txn.amount == Decimal(1200) and txn.currency == "JPY"


def test_an_export_file_reads_like_the_api(tmp_path: Path, sandbox: StripeSandbox) -> None:
    path = tmp_path / "balance_transactions.json"
    path.write_text(json.dumps({"object": "list", "data": sandbox.transactions[:5],
                                "has_more": False}))
    traces = [r for r in read_payment_file(path, account="acct_test")
              if isinstance(r, PaymentTrace)]
    assert [t.references.transaction_id for t in traces] == [
        t["id"] for t in sandbox.transactions[:5]]
    lines = tmp_path / "payouts.jsonl"
    lines.write_text("\n".join(json.dumps(p) for p in sandbox.payouts))
    assert len(list(read_payment_file(lines, "stripe"))) == len(sandbox.payouts)
