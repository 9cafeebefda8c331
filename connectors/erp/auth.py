"""NetSuite token-based authentication: OAuth 1.0a with HMAC-SHA256, signed by oauthlib.

Plugged into httpx's auth hook, so each attempt (retries included) gets a fresh nonce and
timestamp; a retried request carrying an old nonce would be refused as a replay.
"""

from __future__ import annotations

from collections.abc import Generator

import httpx
from oauthlib.oauth1 import SIGNATURE_HMAC_SHA256, SIGNATURE_TYPE_AUTH_HEADER, Client

from connectors.erp.config import ErpSettings, realm_for


class TokenAuth(httpx.Auth):
    def __init__(self, settings: ErpSettings) -> None:
        self._realm = realm_for(settings.account)
        self._consumer_key = settings.consumer_key.get_secret_value()
        self._consumer_secret = settings.consumer_secret.get_secret_value()
        self._token = settings.token_id.get_secret_value()
        self._token_secret = settings.token_secret.get_secret_value()

    def __repr__(self) -> str:
        return f"TokenAuth(realm={self._realm!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        client = Client(
            self._consumer_key,
            client_secret=self._consumer_secret,
            resource_owner_key=self._token,
            resource_owner_secret=self._token_secret,
            signature_method=SIGNATURE_HMAC_SHA256,
            signature_type=SIGNATURE_TYPE_AUTH_HEADER,
            realm=self._realm,
        )
        # The body is JSON, not form parameters, so it is not part of the signature.
        _, headers, _ = client.sign(str(request.url), http_method=request.method)
        request.headers["Authorization"] = headers["Authorization"]
        yield request
