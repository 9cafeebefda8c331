"""The connector conformance suite: one set of behaviours every connector must show.

Each connector supplies a ``ConnectorCase`` (how to build it over a fake transport, how its
far end says "page", "auth refused" and so on); ``test_conformance.py`` runs every check for
every case. Later connectors join by adding a case.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from connectors.http import HttpConnector, RetryPolicy

FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, max_total=30)


class FakeServer:
    """A callable transport handler: answers from a script and records every request.

    ``expect_calls`` makes a test fail when an expected call never happened.
    """

    def __init__(self, handler: Callable[[httpx.Request, int], httpx.Response]) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request, len(self.requests))

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def expect_calls(self, n: int) -> None:
        assert len(self.requests) == n, (
            f"expected {n} request(s), saw {len(self.requests)}: "
            + ", ".join(f"{r.method} {r.url.path}" for r in self.requests)
        )


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, content=json.dumps(body).encode(),
                          headers={"Content-Type": "application/json", **(headers or {})})


@dataclass
class ConnectorCase:
    name: str
    build: Callable[[httpx.MockTransport, RetryPolicy], HttpConnector]
    call: Callable[[HttpConnector], Awaitable[Any]]
    """A simple read whose success answer is ``ok_response``."""
    ok_response: Callable[[], httpx.Response]
    auth_failure: Callable[[], httpx.Response]
    rate_limited: Callable[[float | None], httpx.Response]
    page: Callable[[httpx.Request, int, int, bool], httpx.Response]
    """(request, page number, items on page, more pages after it) -> a page answer."""
    repeated_page: Callable[[httpx.Request, int], httpx.Response]
    """A page answer that points back at an earlier position (a looping far end)."""
    list_all: Callable[[HttpConnector], Awaitable[list[Any]]]
    server_error: Callable[[int], httpx.Response] = lambda status: json_response(
        status, {"error": "boom"})
    auth_status: int = 401
    """The HTTP status an auth failure comes with (SOAP 1.1 faults come with 500)."""
    secrets: tuple[str, ...] = ()
    """Credential values the connector holds that must never show in an error."""
    malformed_words: str = "not JSON"
    """What the error for an unreadable body says."""
    hostile: Callable[[str], httpx.Response] | None = None
    """For connectors that read XML: an answer carrying a DTD/entity that points at a file."""
