"""The supplier client against the supplier sandbox: exactly-once issues through retries and
lost answers, codes masked everywhere, redemptions and statements, settings from the
environment."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from connectors.errors import AuthError, ConfigurationError, ConflictError, InvalidRecordError
from connectors.http import RetryPolicy
from connectors.supplier import SupplierClient, SupplierSettings, supplier_settings
from sandbox.core import ServedSandbox
from sandbox.supplier import DEFAULT_TOKEN, SupplierSandbox
from tests.conftest import fresh_supplier

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, jitter=False)


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def served(supplier_served: ServedSandbox) -> ServedSandbox:
    return supplier_served


@pytest.fixture
def sup(supplier_served: ServedSandbox) -> SupplierSandbox:
    return fresh_supplier(supplier_served, pattern="GC10-XXXX-XXXX")


def client_for(served: ServedSandbox, token: str = DEFAULT_TOKEN) -> SupplierClient:
    return SupplierClient(SupplierSettings(slug="acme", base_url=served.base_url,
                                           token=SecretStr(token)), retry=FAST)


async def test_issue_and_repeat_give_the_same_codes(served, sup):
    async with client_for(served) as client:
        first = await client.issue_codes("GC-10", 3, "sg1:O1:L1", key="issue-sg1-O1-L1")
        again = await client.issue_codes("GC-10", 3, "sg1:O1:L1", key="issue-sg1-O1-L1")
    assert not first.repeated and again.repeated
    assert [c.code.get_secret_value() for c in first.codes] == \
        [c.code.get_secret_value() for c in again.codes] == sup.issued()
    assert all(c.pin is not None and c.expires_at is not None for c in first.codes)
    assert sup.effects.count("codes.issued") == 1


async def test_a_lost_answer_is_retried_and_issues_once(served, sup):
    sup.faults.set(drop_rate=1.0, drop_when="after", count=1, path_prefix="/v1/codes")
    async with client_for(served) as client:
        issue = await client.issue_codes("GC-10", 2, "sg1:O2:L1", key="issue-sg1-O2-L1")
    assert issue.repeated  # the first answer was lost; the retry got the same codes
    assert sup.effects.count("codes.issued", "issue-sg1-O2-L1") == 1
    assert [c.code.get_secret_value() for c in issue.codes] == sup.issued()


async def test_server_errors_are_retried_and_issue_once(served, sup):
    sup.faults.set(error_rate=1.0, count=2, path_prefix="/v1/codes")
    async with client_for(served) as client:
        issue = await client.issue_codes("GC-10", 1, "sg1:O3:L1", key="issue-sg1-O3-L1")
    assert not issue.repeated and len(sup.issued()) == 1
    assert sup.effects.count("codes.issued") == 1


async def test_codes_never_show_in_reprs_or_logs(served, sup, caplog):
    caplog.set_level(logging.DEBUG)
    sup.faults.set(error_rate=1.0, count=1, path_prefix="/v1/codes")
    async with client_for(served) as client:
        issue = await client.issue_codes("GC-10", 2, "sg1:O4:L1", key="issue-sg1-O4-L1")
        logging.getLogger("vouchflow.test").info("issued %s", issue)
    text = repr(issue) + str(issue) + caplog.text
    for code in sup.issued():
        assert code not in text
        assert code[-4:] in repr(issue)  # masked to the last 4, still tell-apart-able
    assert DEFAULT_TOKEN not in caplog.text


async def test_reused_key_with_another_body_is_a_conflict(served, sup):
    async with client_for(served) as client:
        await client.issue_codes("GC-10", 1, "sg1:O5:L1", key="issue-sg1-O5-L1")
        with pytest.raises(ConflictError):
            await client.issue_codes("GC-10", 2, "sg1:O5:L1", key="issue-sg1-O5-L1")
    assert sup.effects.count("codes.issued") == 1


async def test_refusals_are_typed_and_not_retried(served, sup):
    sup.strict_skus = True
    try:
        async with client_for(served) as client:
            with pytest.raises(InvalidRecordError):
                await client.issue_codes("NOPE", 1, "x", key="k-nope")
        async with client_for(served, token="wrong-token-1234") as client:
            with pytest.raises(AuthError) as info:
                await client.statement("2026-11")
    finally:
        sup.strict_skus = False
    assert "wrong-token-1234" not in str(info.value)
    assert sup.stats.statuses.get(422) == 1 and sup.stats.statuses.get(401) == 1


async def test_redemptions_and_statement(served, sup):
    async with client_for(served) as client:
        issue = await client.issue_codes("GC-10", 5, "sg1:O6:L1", key="issue-sg1-O6-L1")
        codes = [c.code.get_secret_value() for c in issue.codes]
        sup.redeem(codes[:3], at=datetime(2026, 11, 20, 8, tzinfo=UTC), location="shop 7")
        pages = [page async for page in client.list_redemptions(page_size=2)]
        since = [r async for page in client.list_redemptions(
            since=datetime(2026, 11, 21, tzinfo=UTC)) for r in page]
        month = datetime.now(UTC).strftime("%Y-%m")
        statement = await client.statement(month)
    assert [len(p) for p in pages] == [2, 1]
    assert sorted(r.code.get_secret_value() for p in pages for r in p) == sorted(codes[:3])
    assert pages[0][0].location == "shop 7"
    assert pages[0][0].redeemed_at == datetime(2026, 11, 20, 8, tzinfo=UTC)
    assert since == []
    assert (statement.issued, statement.redeemed, str(statement.amount_due),
            statement.currency) == (5, 3 if month == "2026-11" else 0, "47.50", "EUR")


def test_settings_from_the_environment(monkeypatch):
    for name in ("VOUCHFLOW_SUPPLIER_URL", "VOUCHFLOW_SUPPLIER_TOKEN",
                 "VOUCHFLOW_SUPPLIER_ACME_GIFTS_URL", "VOUCHFLOW_SUPPLIER_ACME_GIFTS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="VOUCHFLOW_SUPPLIER_ACME_GIFTS_URL"):
        supplier_settings("acme-gifts").check()
    monkeypatch.setenv("VOUCHFLOW_SUPPLIER_URL", "http://shared.test/")
    monkeypatch.setenv("VOUCHFLOW_SUPPLIER_TOKEN", "shared-token-0001")
    shared = supplier_settings("acme-gifts").check()
    assert (shared.base_url, shared.token.get_secret_value()) == \
        ("http://shared.test", "shared-token-0001")
    # a vendor's own URL never borrows the shared token
    monkeypatch.setenv("VOUCHFLOW_SUPPLIER_ACME_GIFTS_URL", "https://api.acme.test")
    with pytest.raises(ConfigurationError, match="ACME_GIFTS_TOKEN"):
        supplier_settings("acme-gifts").check()
    monkeypatch.setenv("VOUCHFLOW_SUPPLIER_ACME_GIFTS_TOKEN", "acme-token-0001")
    own = supplier_settings("acme-gifts").check()
    assert (own.base_url, own.token.get_secret_value()) == ("https://api.acme.test",
                                                            "acme-token-0001")
    assert "acme-token-0001" not in repr(own)
