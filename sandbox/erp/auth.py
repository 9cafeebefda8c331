"""OAuth 1.0a token-based authentication as NetSuite checks it (HMAC-SHA256 only).

The verification uses oauthlib's RFC 5849 primitives rather than hand-rolled hashing, but the
policy (realm = account id, HMAC-SHA256 only, 300 s timestamp window, no nonce reuse) is
NetSuite's and is written out here, because a client that gets any of it wrong must fail
against the sandbox the way it would fail against the real account.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from oauthlib.common import Request as OAuthRequest
from oauthlib.oauth1.rfc5849 import signature, utils

__all__ = ["DEFAULT_CREDENTIALS", "Credentials", "OAuthVerifier"]


@dataclass(frozen=True)
class Credentials:
    """One integration record plus one access token of one account."""

    account: str
    consumer_key: str
    consumer_secret: str
    token_id: str
    token_secret: str

    @property
    def host_prefix(self) -> str:
        """The account id as it appears in the host name (``123456-sb1``)."""
        return self.account.lower().replace("_", "-")


#: Sandbox-only credentials; nothing real is protected by these.
DEFAULT_CREDENTIALS = Credentials(
    account="123456_SB1",
    consumer_key="vf-sandbox-consumer-key-0001",
    consumer_secret="vf-sandbox-consumer-secret-0001",
    token_id="vf-sandbox-token-id-0001",
    token_secret="vf-sandbox-token-secret-0001",
)

_REQUIRED = (
    "oauth_consumer_key",
    "oauth_token",
    "oauth_nonce",
    "oauth_timestamp",
    "oauth_signature_method",
    "oauth_signature",
)


class OAuthVerifier:
    """Checks ``Authorization: OAuth ...`` headers; keeps the nonces seen in the window."""

    def __init__(
        self,
        credentials: Credentials,
        window_s: int = 300,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.credentials = credentials
        self.window_s = window_s
        self.now = now
        self._nonces: dict[tuple[str, str, str], int] = {}
        self._last_purge = 0.0

    def verify(self, method: str, uri: str, query: str, header: str | None) -> str | None:
        """``None`` when the request is authentic, else the reason (for the sandbox's own
        diagnostics; the client is only told ``INVALID_LOGIN``, as NetSuite does).

        ``uri`` is the absolute URL as the client addressed it (scheme, Host header, path)."""
        if not header:
            return "missing Authorization header"
        if not header[:6].lower() == "oauth ":
            return "Authorization header is not an OAuth header"
        try:
            header_params = {
                k: utils.unescape(v) for k, v in utils.parse_authorization_header(header)
            }
        except Exception:
            return "garbled OAuth header"
        missing = [p for p in _REQUIRED if not header_params.get(p)]
        if missing:
            return f"OAuth header lacks {', '.join(missing)}"
        creds = self.credentials
        if header_params.get("realm") != creds.account:
            return f"realm {header_params.get('realm')!r} is not the account id {creds.account!r}"
        if header_params["oauth_signature_method"] != "HMAC-SHA256":
            return f"signature method {header_params['oauth_signature_method']!r} not accepted"
        version = header_params.get("oauth_version")
        if version is not None and version != "1.0":
            return f"oauth_version {version!r} not supported"
        if header_params["oauth_consumer_key"] != creds.consumer_key:
            return "unknown consumer key"
        if header_params["oauth_token"] != creds.token_id:
            return "unknown token"
        try:
            timestamp = int(header_params["oauth_timestamp"])
        except ValueError:
            return "oauth_timestamp is not an integer"
        now = self.now()
        if abs(now - timestamp) > self.window_s:
            return f"oauth_timestamp is {int(now - timestamp)} s away from the server's clock"
        try:
            params = signature.collect_parameters(
                uri_query=query,
                headers={"Authorization": header},
                exclude_oauth_signature=True,
                with_realm=False,
            )
            request = OAuthRequest(uri, http_method=method)
            request.params = params
            request.signature = header_params["oauth_signature"]
            ok = signature.verify_hmac_sha256(
                request, creds.consumer_secret, creds.token_secret
            )
        except ValueError as exc:
            return f"cannot build the signature base string: {exc}"
        if not ok:
            return "signature does not match"
        key = (creds.consumer_key, creds.token_id, header_params["oauth_nonce"])
        self._purge(now)
        if key in self._nonces:
            return "nonce already used"
        self._nonces[key] = timestamp
        return None

    def _purge(self, now: float) -> None:
        if now - self._last_purge < 10:
            return
        self._last_purge = now
        horizon = now - 2 * self.window_s
        self._nonces = {k: t for k, t in self._nonces.items() if t >= horizon}

    def reset(self) -> None:
        self._nonces.clear()
