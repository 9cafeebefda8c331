"""The Stripe-style sandbox on its own: the protocol as DESIGN.md describes it."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sandbox.stripe import DEFAULT_API_KEY, StripeSandbox


@pytest.fixture
def client() -> httpx.AsyncClient:
    sandbox = StripeSandbox()
    sandbox.seed(30, per_payout=10)
    transport = httpx.ASGITransport(app=sandbox)
    return httpx.AsyncClient(transport=transport, base_url="http://stripe",
                             headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"})


async def _get(client: httpx.AsyncClient, path: str, **params: object) -> httpx.Response:
    async with client:
        return await client.get(path, params=params)


@pytest.mark.parametrize(("params", "status", "code"), [
    ({"limit": 0}, 400, "parameter_invalid_integer"),
    ({"limit": 101}, 400, "parameter_invalid_integer"),
    ({"starting_after": "txn_nope"}, 400, "resource_missing"),
    ({"payout": "po_nope"}, 400, "resource_missing"),
])
def test_bad_list_parameters_are_refused(client, params, status, code) -> None:
    response = asyncio.run(_get(client, "/v1/balance_transactions", **params))
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_lists_are_newest_first_with_has_more(client) -> None:
    body = asyncio.run(_get(client, "/v1/balance_transactions", limit=5)).json()
    created = [t["created"] for t in body["data"]]
    assert created == sorted(created, reverse=True) and body["has_more"] is True
    assert all(isinstance(t["amount"], int) for t in body["data"])
    assert all(t["net"] == t["amount"] - t["fee"] for t in body["data"])


def test_no_key_no_data() -> None:
    sandbox = StripeSandbox()

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox),
                                     base_url="http://stripe") as c:
            return await c.get("/v1/payouts")
    response = asyncio.run(main())
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_the_sandbox_imports_nothing_of_the_client() -> None:
    import ast
    from pathlib import Path

    import sandbox.stripe.app as module

    tree = ast.parse(Path(module.__file__).read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(n.split(".")[0] in {"connectors", "mappings", "flows", "state", "canonical"}
                   for n in names)
