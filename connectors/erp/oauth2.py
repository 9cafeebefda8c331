"""NetSuite OAuth 2.0 client credentials: a JWT assertion (PS256 or ES256, signed with the
integration's private key, ``kid`` = certificate id) exchanged for a bearer token.

The token is cached until shortly before it expires; a record call answered 401 fetches a
new token once and repeats the call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt

from connectors.errors import AuthError, ConnectorError, RateLimitedError, ServerError
from connectors.http import parse_retry_after

TOKEN_PATH = "/services/rest/auth/oauth2/v1/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def token_error(response: httpx.Response) -> ConnectorError:
    """The error type a failed token request means: refused credentials are fatal, a busy or
    failing token endpoint is worth another try."""
    try:
        body: Any = response.json()
    except ValueError:
        body = {}
    error = body.get("error", "refused") if isinstance(body, dict) else "refused"
    description = body.get("error_description", "") if isinstance(body, dict) else ""
    text = f"OAuth 2.0 token request answered {response.status_code} {error}"
    if description:
        text += f": {description}"
    kwargs: dict[str, Any] = {"system": "erp", "response": response, "code": str(error)}
    if response.status_code == 429:
        return RateLimitedError(text, retry_after=parse_retry_after(
            response.headers.get("Retry-After")), **kwargs)
    if response.status_code >= 500:
        return ServerError(text, **kwargs)
    return AuthError(text, **kwargs)


class ClientCredentialsAuth(httpx.Auth):
    requires_response_body = True

    def __init__(self, *, base_url: str, client_id: str, certificate_id: str, private_key: str,
                 algorithm: str = "PS256", lifetime_s: int = 3000,
                 scope: tuple[str, ...] = ("rest_webservices",)) -> None:
        if algorithm not in {"PS256", "ES256"}:
            raise ValueError("NetSuite accepts PS256 or ES256 assertions")
        if lifetime_s > 3600:
            raise ValueError("a NetSuite assertion may live at most 60 minutes")
        self.token_url = base_url.rstrip("/") + TOKEN_PATH
        self._client_id = client_id
        self._kid = certificate_id
        self._key = private_key
        self._algorithm = algorithm
        self._lifetime = lifetime_s
        self._scope = list(scope)
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return f"ClientCredentialsAuth(kid={self._kid!r}, algorithm={self._algorithm!r})"

    def assertion(self) -> str:
        now = int(time.time())
        claims = {"iss": self._client_id, "scope": self._scope, "aud": self.token_url,
                  "iat": now, "exp": now + self._lifetime}
        return jwt.encode(claims, self._key, algorithm=self._algorithm,
                          headers={"kid": self._kid, "typ": "JWT"})

    def _token_request(self) -> httpx.Request:
        body = urlencode({"grant_type": "client_credentials",
                          "client_assertion_type": ASSERTION_TYPE,
                          "client_assertion": self.assertion()})
        return httpx.Request("POST", self.token_url, content=body.encode(),
                             headers={"Content-Type": "application/x-www-form-urlencoded",
                                      "Accept": "application/json"})

    def _remember(self, response: httpx.Response) -> None:
        if response.status_code != 200:
            raise token_error(response)
        body = response.json()
        with self._lock:
            self._token = str(body["access_token"])
            self._expires = time.monotonic() + float(body.get("expires_in", 3600)) - 60
            self.tokens_fetched += 1

    def _valid_token(self) -> str | None:
        with self._lock:
            if self._token and time.monotonic() < self._expires:
                return self._token
            return None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._valid_token()
        if token is None:
            self._remember((yield self._token_request()))
            token = self._valid_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:  # revoked or expired early: one fresh token, one retry
            with self._lock:
                self._token = None
            self._remember((yield self._token_request()))
            request.headers["Authorization"] = f"Bearer {self._valid_token()}"
            yield request
