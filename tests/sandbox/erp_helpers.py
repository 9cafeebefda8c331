"""Helpers shared by the ERP sandbox tests (SuiteQL, batch jobs, OAuth 2.0, record types)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

from .conftest import RECORDS

SUITEQL = "/services/rest/query/v1/suiteql"
COLLECTION = "application/vnd.oracle.resource+json; type=collection"
TOKEN = "/services/rest/auth/oauth2/v1/token"


def error_code(response: httpx.Response) -> str:
    return response.json()["o:errorDetails"][0]["o:errorCode"]


def error_detail(response: httpx.Response) -> str:
    return response.json()["o:errorDetails"][0]["detail"]


def error_path(response: httpx.Response) -> str | None:
    return response.json()["o:errorDetails"][0].get("o:errorPath")


def suiteql(client: httpx.Client, q: str, **params: Any) -> httpx.Response:
    return client.post(SUITEQL, params=params, json={"q": q}, headers={"Prefer": "transient"})


def rows(client: httpx.Client, q: str, **params: Any) -> list[dict[str, Any]]:
    """A query's items without their (empty) links."""
    r = suiteql(client, q, **params)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert all(item.pop("links") == [] for item in items)
    return items


def batch(
    client: httpx.Client,
    record_type: str,
    items: list[Any],
    *,
    method: str = "POST",
    key: str | None = None,
) -> httpx.Response:
    headers = {"Prefer": "respond-async", "Content-Type": COLLECTION}
    if key is not None:
        headers["X-NetSuite-idempotency-key"] = key
    return client.request(
        method, f"{RECORDS}/{record_type}", json={"items": items}, headers=headers
    )


def new_key() -> str:
    return str(uuid.uuid4())


def wait_job(client: httpx.Client, location: str, timeout: float = 5.0) -> dict[str, Any]:
    """Poll a job until it is completed; returns the last status."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(location)
        assert r.status_code == 200, r.text
        status = r.json()
        if status["completed"]:
            return status
        assert time.monotonic() < deadline, f"job not completed in {timeout} s: {status}"
        time.sleep(0.005)


def job_result(client: httpx.Client, location: str) -> list[dict[str, Any]]:
    wait_job(client, location)
    r = client.get(f"{location}/result")
    assert r.status_code == 200, r.text
    return r.json()["items"]
