from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest
from oauthlib.common import Request as OAuthRequest
from oauthlib.oauth1 import SIGNATURE_HMAC_SHA256, SIGNATURE_TYPE_AUTH_HEADER, Client
from oauthlib.oauth1.rfc5849 import signature, utils

from connectors.erp import ErpClient, format_q_date, host_for, realm_for
from connectors.erp.auth import TokenAuth
from connectors.errors import ConfigurationError, InvalidRecordError, NotFoundError
from tests.connectors.cases import build_erp, erp_error, erp_settings
from tests.connectors.conformance import FAST_RETRY, FakeServer, json_response

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_account_spellings():
    assert realm_for("123456-sb1") == "123456_SB1"
    assert host_for("123456_SB1") == "123456-sb1"
    assert erp_settings(base_url=None, account="123456_SB1").url() == \
        "https://123456-sb1.suitetalk.api.netsuite.com"


def test_missing_credentials_are_named():
    with pytest.raises(ConfigurationError, match="VOUCHFLOW_ERP_TOKEN_SECRET"):
        ErpClient(erp_settings(token_secret=""))


async def test_requests_carry_a_valid_hmac_sha256_signature():
    def handler(req: httpx.Request, n: int) -> httpx.Response:
        if req.url.path.endswith("/7"):
            return json_response(200, {"id": "7"})
        return json_response(200, {"links": [], "count": 0, "hasMore": False, "offset": 0,
                                   "totalResults": 0, "items": []})

    server = FakeServer(handler)
    async with build_erp(server.transport(), FAST_RETRY) as client:
        await client.get("inventoryItem", "7")
        async for _ in client.list_ids("inventoryItem",
                                       q='lastModifiedDate ON_OR_AFTER "1/2/2026"'):
            pass
    server.expect_calls(2)
    assert "q=" in str(server.requests[1].url)
    for sent in server.requests:
        header = sent.headers["Authorization"]
        assert header.startswith('OAuth realm="999999_SB1"')
        params = dict(utils.parse_authorization_header(header))
        assert params["oauth_signature_method"] == "HMAC-SHA256"
        oauth_request = OAuthRequest(str(sent.url), sent.method, headers=dict(sent.headers))
        oauth_request.params = [(k, v) for k, v in signature.collect_parameters(
            uri_query=sent.url.query.decode(), headers=dict(sent.headers), exclude_oauth_signature=True,
            with_realm=False)]
        oauth_request.signature = utils.unescape(params["oauth_signature"])
        assert signature.verify_hmac_sha256(oauth_request, "cs-conformance-secret",
                                            "ts-conformance-secret")
        assert not signature.verify_hmac_sha256(oauth_request, "wrong", "ts-conformance-secret")


@pytest.mark.parametrize("method, url", [
    ("GET", "https://999999-sb1.suitetalk.api.netsuite.com/services/rest/record/v1/inventoryItem/7"),
    ("PUT", "https://999999-sb1.suitetalk.api.netsuite.com/services/rest/record/v1/inventoryItem/"
            "eid:SKU-1_a"),
    ("GET", "https://999999-sb1.suitetalk.api.netsuite.com/services/rest/record/v1/inventoryItem"
            "?q=lastModifiedDate%20ON_OR_AFTER%20%221%2F2%2F2026%2010%3A05%20am%22&limit=1000&offset=0"),
    ("POST", "http://127.0.0.1:8701/services/rest/query/v1/suiteql?limit=10&offset=20"),
    ("get", "http://127.0.0.1:8701/services/rest/async/v1/job/12/result?a=%7E~%20+&a=2&b="),
])
def test_the_header_is_the_one_oauthlib_client_would_sign(method, url):
    """TokenAuth skips oauthlib.Client.sign's render-parse-render round trip; the header it
    builds from the same nonce and timestamp must be byte for byte the same."""
    settings = erp_settings()
    client = Client(settings.consumer_key.get_secret_value(),
                    client_secret=settings.consumer_secret.get_secret_value(),
                    resource_owner_key=settings.token_id.get_secret_value(),
                    resource_owner_secret=settings.token_secret.get_secret_value(),
                    signature_method=SIGNATURE_HMAC_SHA256,
                    signature_type=SIGNATURE_TYPE_AUTH_HEADER, realm="999999_SB1",
                    nonce="61825915034327563941700000000", timestamp="1700000000")
    expected = client.sign(url, http_method=method.upper())[1]["Authorization"]
    assert TokenAuth(settings).authorization(
        method, url, nonce="61825915034327563941700000000", timestamp="1700000000") == expected


async def test_each_retry_is_signed_afresh():
    server = FakeServer(lambda req, n: erp_error(429, "CONCURRENCY_LIMIT_EXCEEDED", "busy")
                        if n == 1 else json_response(200, {"id": "1"}))
    async with build_erp(server.transport(), FAST_RETRY) as client:
        await client.get("inventoryItem", "1")
    nonces = {dict(utils.parse_authorization_header(r.headers["Authorization"]))["oauth_nonce"]
              for r in server.requests}
    assert len(nonces) == 2


async def test_numbers_are_decoded_as_decimal():
    server = FakeServer(lambda req, n: httpx.Response(
        200, content=b'{"id": "1", "custitem_vf_face_value": 10.10, "qty": 3}'))
    async with build_erp(server.transport(), FAST_RETRY) as client:
        record = await client.get("inventoryItem", "1")
    assert record["custitem_vf_face_value"] == Decimal("10.10")
    assert isinstance(record["qty"], int)


async def test_batch_bodies_carry_exact_decimal_numbers():
    """Amounts go out as JSON numbers with their exact digits (written by orjson: the same
    document as simplejson's ``use_decimal``, the reference here)."""
    from datetime import date

    import simplejson

    from connectors.http import _default, dumps

    seen: list[bytes] = []

    def handler(req: httpx.Request, n: int) -> httpx.Response:
        seen.append(req.content)
        return httpx.Response(202, headers={"Location": "https://x/services/rest/async/v1/job/9"})

    records = [{"externalId": "SKU-1", "custitem_vf_face_value": Decimal("10.50"),
                "rate": Decimal("1E+2"), "displayName": "Café voucher", "isInactive": False,
                "custitem_vf_expiry": date(2026, 1, 2), "memo": None}]
    server = FakeServer(handler)
    async with build_erp(server.transport(), FAST_RETRY) as client:
        assert await client.submit_batch("inventoryItem", records, key="exact-1") == "9"
    assert b'"custitem_vf_face_value":10.50' in seen[0] and b'"rate":1E+2' in seen[0]
    plain = simplejson.dumps({"items": records}, use_decimal=True, default=_default)
    assert json.loads(seen[0], parse_float=Decimal) == json.loads(plain, parse_float=Decimal)
    assert dumps({"k": Decimal("0.10")}, decimal_numbers=True) == b'{"k":0.10}'


async def test_upsert_uses_the_external_id_and_reads_location():
    def handler(req: httpx.Request, n: int) -> httpx.Response:
        assert req.method == "PUT"
        assert req.url.path == "/services/rest/record/v1/inventoryItem/eid:SKU-1"
        # NetSuite takes amounts as JSON numbers: exact digits, never a float's approximation
        assert req.content == b'{"itemId":"SKU-1","custitem_vf_face_value":10.00}'
        assert json.loads(req.content, parse_float=Decimal)["custitem_vf_face_value"] == \
            Decimal("10.00")
        return httpx.Response(204, headers={
            "Location": "http://erp.test/services/rest/record/v1/inventoryItem/812"})

    server = FakeServer(handler)
    async with build_erp(server.transport(), FAST_RETRY) as client:
        assert await client.upsert("inventoryItem", "SKU-1",
                                   {"itemId": "SKU-1", "custitem_vf_face_value": Decimal("10.00")}) == "812"
        with pytest.raises(InvalidRecordError, match="letters, digits"):
            await client.upsert("inventoryItem", "bad id!", {})
    server.expect_calls(1)


async def test_vendor_codes_map_through_the_table():
    answers = {
        "/services/rest/record/v1/inventoryItem/404": erp_error(404, "NONEXISTENT_ID", "gone"),
        "/services/rest/record/v1/inventoryItem/400": erp_error(400, "INVALID_KEY_OR_REF",
                                                                "bad ref"),
        "/services/rest/record/v1/inventoryItem/eid:nope": erp_error(404, "NONEXISTENT_ID",
                                                                     "no such external id"),
    }
    server = FakeServer(lambda req, n: answers[req.url.path])
    async with build_erp(server.transport(), FAST_RETRY) as client:
        with pytest.raises(NotFoundError, match="NONEXISTENT_ID"):
            await client.get("inventoryItem", "404")
        with pytest.raises(InvalidRecordError, match="INVALID_KEY_OR_REF: bad ref"):
            await client.get("inventoryItem", "400")
        assert await client.get_by_external_id("inventoryItem", "nope") is None
    # errors were not retried
    assert [r.url.path.rsplit("/", 1)[-1] for r in server.requests[:2]] == ["404", "400"]


async def test_invalid_login_names_the_account():
    server = FakeServer(lambda req, n: erp_error(401, "INVALID_LOGIN", "Invalid login attempt."))
    async with build_erp(server.transport(), FAST_RETRY) as client:
        with pytest.raises(Exception, match="999999_SB1"):
            await client.get("inventoryItem", "1")
    server.expect_calls(1)


async def test_get_many_keeps_failures_in_place():
    def handler(req: httpx.Request, n: int) -> httpx.Response:
        record_id = req.url.path.rsplit("/", 1)[-1]
        if record_id == "2":
            return erp_error(404, "NONEXISTENT_ID", "gone")
        return json_response(200, {"id": record_id})

    server = FakeServer(handler)
    async with build_erp(server.transport(), FAST_RETRY) as client:
        results = await client.get_many("inventoryItem", ["1", "2", "3"])
    assert results[0] == {"id": "1"} and results[2] == {"id": "3"}
    assert isinstance(results[1], NotFoundError)


def test_q_dates_follow_the_account_preference():
    from datetime import UTC, datetime

    at = datetime(2026, 2, 14, 23, 30, tzinfo=UTC)
    assert format_q_date(at, "UTC") == "2/14/2026"
    assert format_q_date(at, "Asia/Singapore") == "2/15/2026"


def test_q_times_are_rounded_down_to_the_minute():
    from datetime import UTC, datetime

    assert format_q_date(datetime(2026, 2, 14, 0, 5, 59, tzinfo=UTC), "UTC",
                         precision="minute") == "2/14/2026 12:05 am"
    assert format_q_date(datetime(2026, 2, 14, 13, 0, tzinfo=UTC), "UTC",
                         precision="minute") == "2/14/2026 1:00 pm"
    assert format_q_date(datetime(2026, 2, 14, 12, 30, tzinfo=UTC), "Asia/Singapore",
                         precision="minute") == "2/14/2026 8:30 pm"
