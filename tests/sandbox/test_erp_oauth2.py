"""OAuth 2.0 client credentials with a JWT assertion (docs/erp-records.md, "Authentication")."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import httpx
import pytest

from sandbox.core import ServedSandbox, serve, utcnow
from sandbox.erp import ASSERTION_TYPE, ErpSandbox, KeyPair, client_assertion, generate_key_pair

from .conftest import RECORDS
from .erp_helpers import TOKEN, error_code, rows

CLIENT = "vf-integration-client"
RSA, EC = generate_key_pair("PS256"), generate_key_pair("ES256")
OTHER_RSA = generate_key_pair("PS256")


@pytest.fixture
def oauth2(erp: ErpSandbox) -> ErpSandbox:
    erp.register_oauth2_client(CLIENT, "cert-rsa", RSA.public_pem)
    erp.register_oauth2_client(CLIENT, "cert-ec", EC)
    return erp


@pytest.fixture
def plain(erp_served: ServedSandbox) -> Any:
    with httpx.Client(base_url=erp_served.base_url, timeout=10) as client:
        yield client


def audience(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/") + TOKEN


def assertion(client: httpx.Client, keys: KeyPair = RSA, kid: str = "cert-rsa", **kwargs: Any) -> str:
    kwargs.setdefault("client_id", CLIENT)
    kwargs.setdefault("audience", audience(client))
    return client_assertion(keys, kid=kid, **kwargs)


def exchange(client: httpx.Client, jwt: str, **form: str) -> httpx.Response:
    data = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": jwt, **form}  # fmt: skip
    return client.post(TOKEN, data=data)


@pytest.mark.parametrize(("keys", "kid"), [(RSA, "cert-rsa"), (EC, "cert-ec")])
def test_token_then_record_calls(
    oauth2: ErpSandbox, plain: httpx.Client, keys: KeyPair, kid: str
) -> None:
    oauth2.set_record("inventoryItem", {"itemId": "SKU-1"})
    r = exchange(plain, assertion(plain, keys, kid))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["token_type"] == "bearer" and answer["expires_in"] == 3600
    assert r.headers["Cache-Control"] == "no-store"
    bearer = {"Authorization": f"Bearer {answer['access_token']}"}
    assert plain.get(f"{RECORDS}/inventoryItem/1", headers=bearer).json()["itemId"] == "SKU-1"
    with httpx.Client(base_url=plain.base_url, headers=bearer) as c:
        assert rows(c, "SELECT itemid FROM item") == [{"itemid": "SKU-1"}]
    # the token endpoint is a request like any other
    assert oauth2.requests()[0]["path"] == TOKEN and oauth2.stats.requests == 3


@pytest.mark.parametrize(
    ("make", "error", "reason"),
    [
        (lambda c: assertion(c, OTHER_RSA), "invalid_client", "signature"),
        (lambda c: assertion(c, kid="cert-unknown"), "invalid_client", "no certificate 'cert-unknown'"),
        (lambda c: assertion(c, EC, kid="cert-rsa"), "invalid_client", "not a ES256 key"),
        (lambda c: assertion(c, client_id="someone-else"), "invalid_client", "unknown client id"),
        (lambda c: assertion(c, alg="RS256"), "invalid_client", "alg 'RS256'"),
        (lambda c: assertion(c, headers={"typ": "JOSE"}), "invalid_client", "typ JWT"),
        (lambda c: "not.a.jwt", "invalid_client", "not a JWT"),
        (lambda c: assertion(c, audience="https://123456-sb1.suitetalk.api.netsuite.com" + TOKEN),
         "invalid_grant", "is not the token endpoint"),
        (lambda c: assertion(c, lifetime_s=3601), "invalid_grant", "at most 60 minutes"),
        (lambda c: assertion(c, iat=time.time() - 7200), "invalid_grant", "expired"),
        (lambda c: assertion(c, iat=time.time() + 600), "invalid_grant", "future"),
        (lambda c: assertion(c, scope=("restlets",)), "invalid_grant", "rest_webservices"),
    ],
)  # fmt: skip
def test_refused_assertions(
    oauth2: ErpSandbox, plain: httpx.Client, make: Any, error: str, reason: str
) -> None:
    r = exchange(plain, make(plain))
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == error and reason in body["error_description"]
    assert reason in oauth2.auth_failures[-1]


def test_scope_as_a_string_and_a_list_of_audiences(oauth2: ErpSandbox, plain: httpx.Client) -> None:
    jwt = assertion(plain, scope="rest_webservices restlets")
    assert exchange(plain, jwt).status_code == 200
    jwt = assertion(plain, audience=["https://elsewhere.example/token", audience(plain)])
    assert exchange(plain, jwt).status_code == 200


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "password"}, "unsupported_grant_type"),
        ({"client_assertion_type": "urn:other"}, "invalid_request"),
        ({"client_assertion": ""}, "invalid_request"),
    ],
)
def test_malformed_token_requests(
    oauth2: ErpSandbox, plain: httpx.Client, form: dict[str, str], error: str
) -> None:
    r = exchange(plain, assertion(plain), **form)
    assert r.status_code == 400 and r.json()["error"] == error
    r = plain.post(TOKEN, json={"grant_type": "client_credentials"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_expired_or_unknown_access_token(oauth2: ErpSandbox, plain: httpx.Client) -> None:
    token = exchange(plain, assertion(plain)).json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert plain.get(f"{RECORDS}/vendor", headers=bearer).status_code == 200
    later = utcnow() + timedelta(seconds=3601)
    oauth2.clock = lambda: later
    r = plain.get(f"{RECORDS}/vendor", headers=bearer)
    assert r.status_code == 401 and error_code(r) == "INVALID_LOGIN"
    assert oauth2.auth_failures[-1] == "access token expired"
    r = plain.get(f"{RECORDS}/vendor", headers={"Authorization": "Bearer made-up"})
    assert r.status_code == 401 and oauth2.auth_failures[-1] == "unknown access token"
    # an assertion is checked against the sandbox's clock too
    r = exchange(plain, assertion(plain))
    assert r.status_code == 400 and "expired" in r.json()["error_description"]


def test_configured_clients_and_token_lifetime() -> None:
    erp = ErpSandbox(oauth2_clients={CLIENT: {"k1": EC.public_pem}}, oauth2_token_ttl_s=60)
    with serve(erp) as served, httpx.Client(base_url=served.base_url) as c:
        jwt = client_assertion(EC, client_id=CLIENT, kid="k1", audience=audience(c))
        answer = exchange(c, jwt).json()
        assert answer["expires_in"] == 60
        r = c.get(f"{RECORDS}/vendor", headers={"Authorization": f"Bearer {answer['access_token']}"})
        assert r.status_code == 200
    with pytest.raises(ValueError, match="P-256"):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP384R1()).public_key()
        erp.register_oauth2_client(CLIENT, "k2", key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
