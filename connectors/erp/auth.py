"""NetSuite token-based authentication: OAuth 1.0a with HMAC-SHA256, signed by oauthlib.

Plugged into httpx's auth hook, so each attempt (retries included) gets a fresh nonce and
timestamp; a retried request carrying an old nonce would be refused as a replay.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import NamedTuple

import httpx
from oauthlib.common import generate_nonce, generate_timestamp
from oauthlib.oauth1.rfc5849 import parameters, signature

from connectors.erp.config import ErpSettings, realm_for


class _Secrets(NamedTuple):
    """What oauthlib's ``sign_hmac_sha256_with_client`` reads from a client."""

    client_secret: str
    resource_owner_secret: str


class TokenAuth(httpx.Auth):
    """Signs with oauthlib's RFC 5849 functions, in the steps ``oauthlib.oauth1.Client.sign``
    takes, minus its round trip: ``Client.sign`` renders the Authorization header, parses it
    back to collect the parameters, then renders it again (some forty escapes a request,
    ~0.25 ms; this is ~0.15 ms, and the header is the same, tested). Under the account's
    concurrency limit the signing is done while holding a slot."""

    def __init__(self, settings: ErpSettings) -> None:
        self._realm = realm_for(settings.account)
        self._consumer_key = settings.consumer_key.get_secret_value()
        self._token = settings.token_id.get_secret_value()
        self._secrets = _Secrets(settings.consumer_secret.get_secret_value(),
                                 settings.token_secret.get_secret_value())

    def __repr__(self) -> str:
        return f"TokenAuth(realm={self._realm!r})"

    def authorization(self, method: str, url: str, *, nonce: str | None = None,
                      timestamp: str | None = None) -> str:
        """The ``Authorization`` header for one request (fresh nonce and timestamp unless
        given). The body is JSON, not form parameters, so it is not part of the signature;
        the query is, and the realm is not."""
        oauth_params = [
            ("oauth_nonce", nonce or generate_nonce()),
            ("oauth_timestamp", timestamp or generate_timestamp()),
            ("oauth_version", "1.0"),
            ("oauth_signature_method", "HMAC-SHA256"),
            ("oauth_consumer_key", self._consumer_key),
            ("oauth_token", self._token),
        ]
        query = httpx.URL(url).query.decode("ascii")
        collected = signature.collect_parameters(uri_query=query) + oauth_params
        base_string = signature.signature_base_string(
            method.upper(), signature.base_string_uri(url),
            signature.normalize_parameters(collected))
        oauth_params.append(("oauth_signature", signature.sign_hmac_sha256_with_client(
            base_string, self._secrets)))
        header: str = parameters.prepare_headers(oauth_params, realm=self._realm)["Authorization"]
        return header

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self.authorization(request.method, str(request.url))
        yield request
