"""Fixtures: one served ERP and one served wallet per module, reset before every test.

Serving once per module keeps the suite fast; resetting before each test (data, effects,
faults, stats, nonces) keeps tests independent. A session-level check makes sure no sandbox
server thread outlives the suite.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from typing import Any

import httpx
import pytest
from oauthlib.oauth1 import SIGNATURE_HMAC_SHA256, Client

from sandbox.core import ServedSandbox, serve, utcnow
from sandbox.erp import DEFAULT_CREDENTIALS, Credentials, ErpSandbox
from sandbox.wallet import WalletSandbox

RECORDS = "/services/rest/record/v1"

SITES: list[dict[str, str]] = [
    {"code": "sg1", "api_key": "key-sg1", "currency": "SGD", "timezone": "Asia/Singapore"},
    {"code": "sg2", "api_key": "key-sg2", "currency": "SGD", "timezone": "Asia/Singapore"},
    {"code": "vn1", "api_key": "key-vn1", "currency": "VND", "timezone": "Asia/Ho_Chi_Minh"},
    {"code": "id1", "api_key": "key-id1", "currency": "IDR", "timezone": "Asia/Jakarta"},
]


class NetSuiteAuth(httpx.Auth):
    """OAuth 1.0a TBA signing as a client would do it (oauthlib, HMAC-SHA256, realm)."""

    def __init__(
        self,
        creds: Credentials = DEFAULT_CREDENTIALS,
        *,
        realm: str | None = None,
        consumer_secret: str | None = None,
        timestamp: str | None = None,
        nonce: str | None = None,
        signature_method: str = SIGNATURE_HMAC_SHA256,
    ) -> None:
        self.creds = creds
        self.realm = creds.account if realm is None else realm
        self.consumer_secret = consumer_secret or creds.consumer_secret
        self.timestamp = timestamp
        self.nonce = nonce
        self.signature_method = signature_method

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        client = Client(
            self.creds.consumer_key,
            client_secret=self.consumer_secret,
            resource_owner_key=self.creds.token_id,
            resource_owner_secret=self.creds.token_secret,
            signature_method=self.signature_method,
            realm=self.realm,
            timestamp=self.timestamp,
            nonce=self.nonce,
        )
        # JSON bodies are not part of the OAuth 1.0a base string
        _, headers, _ = client.sign(str(request.url), request.method)
        request.headers["Authorization"] = headers["Authorization"]
        yield request


def no_sandbox_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sandbox-")]


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_servers() -> Iterator[None]:
    yield
    leftover = no_sandbox_threads()
    assert not leftover, f"sandbox server threads still running: {leftover}"


@pytest.fixture(scope="module")
def erp_served() -> Iterator[ServedSandbox]:
    with serve(ErpSandbox()) as served:
        yield served


@pytest.fixture
def erp(erp_served: ServedSandbox) -> ErpSandbox:
    sandbox = erp_served.sandbox
    assert isinstance(sandbox, ErpSandbox)
    sandbox.reset()
    sandbox.concurrency_limit = 5
    sandbox.clock = utcnow
    return sandbox


@pytest.fixture
def erp_client(erp: ErpSandbox, erp_served: ServedSandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=erp_served.base_url, auth=NetSuiteAuth(), timeout=10) as client:
        yield client


@pytest.fixture
def admin(erp_served: ServedSandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=erp_served.base_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def wallet_served() -> Iterator[ServedSandbox]:
    with serve(WalletSandbox(SITES)) as served:
        yield served


@pytest.fixture
def wallet(wallet_served: ServedSandbox) -> WalletSandbox:
    sandbox = wallet_served.sandbox
    assert isinstance(sandbox, WalletSandbox)
    sandbox.reset()
    sandbox.clock = utcnow
    return sandbox


@pytest.fixture
def sg1(wallet: WalletSandbox, wallet_served: ServedSandbox) -> Iterator[httpx.Client]:
    """A client of site sg1, as the connector would build it."""
    with httpx.Client(
        base_url=f"{wallet_served.base_url}/sg1/api/v1",
        headers={"X-Api-Key": "key-sg1"},
        timeout=10,
    ) as client:
        yield client


def product(sku: str, amount: str = "10.00", currency: str = "SGD", **over: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "sku": sku,
        "name": f"Voucher {sku}",
        "kind": "amount_coupon",
        "face_value": {"amount": amount, "currency": currency},
        "status": "normal",
        "issuance_mode": "code_pool",
        "write_off_type": "on_redemption",
    }
    item.update(over)
    return item
