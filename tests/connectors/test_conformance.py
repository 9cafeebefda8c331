"""Every connector: auth failure not retried, 5xx retried, 429 honoured, paging complete and
loop-safe, timeouts retried then reported, malformed bodies reported clearly."""

from __future__ import annotations

import time

import httpx
import pytest

from connectors.errors import (
    AuthError,
    MalformedResponseError,
    PaginationError,
    RateLimitedError,
    ServerError,
    TransportError,
)
from tests.connectors.cases import CASES
from tests.connectors.conformance import FAST_RETRY, ConnectorCase, FakeServer

pytestmark = pytest.mark.anyio

ids = [c.name for c in CASES]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.parametrize("case", CASES, ids=ids)
async def test_auth_failure_is_not_retried(case: ConnectorCase):
    server = FakeServer(lambda req, n: case.auth_failure())
    async with case.build(server.transport(), FAST_RETRY) as client:
        with pytest.raises(AuthError) as info:
            await case.call(client)
    server.expect_calls(1)
    assert info.value.status_code == case.auth_status


@pytest.mark.parametrize("case", CASES, ids=ids)
@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_retried_then_succeed(case: ConnectorCase, status: int):
    server = FakeServer(lambda req, n: case.server_error(status) if n <= 2 else case.ok_response())
    async with case.build(server.transport(), FAST_RETRY) as client:
        await case.call(client)
    server.expect_calls(3)


@pytest.mark.parametrize("case", CASES, ids=ids)
async def test_server_errors_give_up_after_the_bound(case: ConnectorCase):
    server = FakeServer(lambda req, n: case.server_error(503))
    async with case.build(server.transport(), FAST_RETRY) as client:
        with pytest.raises(ServerError):
            await case.call(client)
    server.expect_calls(FAST_RETRY.max_attempts)


@pytest.mark.parametrize("case", CASES, ids=ids)
async def test_rate_limit_is_honoured(case: ConnectorCase):
    server = FakeServer(lambda req, n: case.rate_limited(1) if n == 1 else case.ok_response())
    async with case.build(server.transport(), FAST_RETRY) as client:
        started = time.monotonic()
        await case.call(client)
        waited = time.monotonic() - started
    server.expect_calls(2)
    retry_after = case.rate_limited(1).headers.get("Retry-After")
    if retry_after is not None:  # the far end said how long: we waited that long
        assert waited >= float(retry_after) * 0.95
    else:  # no Retry-After (NetSuite's 429): backoff, and the error type says "slow down"
        assert waited < 1.0


@pytest.mark.parametrize("case", CASES, ids=ids)
async def test_rate_limit_without_end_becomes_rate_limited_error(case: ConnectorCase):
    server = FakeServer(lambda req, n: case.rate_limited(None))
    async with case.build(server.transport(), FAST_RETRY) as client:
        with pytest.raises(RateLimitedError):
            await case.call(client)
    server.expect_calls(FAST_RETRY.max_attempts)


@pytest.mark.parametrize("case", CASES, ids=ids)
async def test_pagination_is_complete(case: ConnectorCase):
    server = FakeServer(lambda req, n: case.page(req, n, 2 if n < 3 else 1, n < 3))
    async with case.build(server.transport(), FAST_RETRY) as client:
        items = await case.list_all(client)
    server.expect_calls(3)
    assert len(items) == 5 and len(set(items)) == 5


@pytest.mark.parametrize("case", CASES, ids=ids)
async def test_pagination_refuses_to_loop(case: ConnectorCase):
    server = FakeServer(lambda req, n: case.repeated_page(req, n))
    async with case.build(server.transport(), FAST_RETRY) as client:
        with pytest.raises(PaginationError):
            await case.list_all(client)
    assert len(server.requests) <= 3


@pytest.mark.parametrize("case", CASES, ids=ids)
async def test_timeouts_are_retried_then_reported(case: ConnectorCase):
    def handler(request: httpx.Request, n: int) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    server = FakeServer(handler)
    async with case.build(server.transport(), FAST_RETRY) as client:
        with pytest.raises(TransportError, match="timed out"):
            await case.call(client)
    server.expect_calls(FAST_RETRY.max_attempts)


@pytest.mark.parametrize("case", CASES, ids=ids)
async def test_timeout_then_success(case: ConnectorCase):
    def handler(request: httpx.Request, n: int) -> httpx.Response:
        if n == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return case.ok_response()

    server = FakeServer(handler)
    async with case.build(server.transport(), FAST_RETRY) as client:
        await case.call(client)
    server.expect_calls(2)


@pytest.mark.parametrize("case", CASES, ids=ids)
@pytest.mark.parametrize("body", [b"<html>oops</html>", b'{"truncated": ', b"\xff\xfe"])
async def test_malformed_body_is_a_clear_error(case: ConnectorCase, body: bytes):
    server = FakeServer(lambda req, n: httpx.Response(
        200, content=body, headers={"Content-Type": "application/json"}))
    async with case.build(server.transport(), FAST_RETRY) as client:
        with pytest.raises(MalformedResponseError) as info:
            await case.call(client)
    assert case.malformed_words in str(info.value) and case.name in str(info.value)
    server.expect_calls(1)


XML_CASES = [c for c in CASES if c.hostile is not None]


@pytest.mark.parametrize("case", XML_CASES, ids=[c.name for c in XML_CASES])
async def test_hostile_xml_is_refused_and_reads_nothing(case: ConnectorCase, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    assert case.hostile is not None
    server = FakeServer(lambda req, n: case.hostile(str(secret)))
    async with case.build(server.transport(), FAST_RETRY) as client:
        with pytest.raises(MalformedResponseError) as info:
            await case.call(client)
    assert "TOP-SECRET" not in str(info.value)
    server.expect_calls(1)


@pytest.mark.parametrize("case", CASES, ids=ids)
async def test_secrets_never_appear_in_errors(case: ConnectorCase):
    server = FakeServer(lambda req, n: case.auth_failure())
    async with case.build(server.transport(), FAST_RETRY) as client:
        with pytest.raises(AuthError) as info:
            await case.call(client)
    sent = server.requests[0]
    secret_values = [v for k, v in sent.headers.items()
                     if k.lower() in {"authorization", "x-api-key"}]
    if b"wsse:Security" in sent.content:  # SOAP: the credentials travel in the envelope
        secret_values += [el.split(b"<", 1)[0].decode() for el in
                          sent.content.split(b"PasswordDigest\">")[1:]]
    assert secret_values, "the connector sent no credentials at all"
    text = str(info.value) + repr(info.value)
    for value in [*secret_values, *case.secrets]:
        assert value not in text
    for word in ("wallet-key-conformance", "tk-conformance"):
        assert word not in text
