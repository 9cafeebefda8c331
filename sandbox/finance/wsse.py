"""WS-Security UsernameToken (OASIS UsernameToken Profile 1.0) as the finance system checks it.

``PasswordDigest``: ``Base64(SHA-1(nonce_bytes + created + password))`` where the nonce is the
decoded ``wsse:Nonce`` and ``created`` the ``wsu:Created`` text as sent; Nonce and Created are
required, Created must be within the window (300 s either way) of the server's clock, and a
nonce is accepted once while its Created is still in the window. ``PasswordText`` (the
password in clear, the profile's default when ``Type`` is absent) is accepted too unless
switched off; its Nonce and Created are optional but checked the same way when present.

The client is only told ``wsse:FailedAuthentication``; why is kept for the sandbox's own
diagnostics.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from lxml import etree

from sandbox.finance.soap import WSSE_NS, WSU_NS

__all__ = [
    "BASE64_BINARY",
    "PASSWORD_DIGEST",
    "PASSWORD_TEXT",
    "UsernameTokenVerifier",
    "password_digest",
]

_UT_PROFILE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
_MESSAGE_SECURITY = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0"
)
PASSWORD_DIGEST = _UT_PROFILE + "#PasswordDigest"
PASSWORD_TEXT = _UT_PROFILE + "#PasswordText"
BASE64_BINARY = _MESSAGE_SECURITY + "#Base64Binary"


def password_digest(nonce: bytes, created: str, password: str) -> str:
    return base64.b64encode(
        hashlib.sha1(nonce + created.encode("utf-8") + password.encode("utf-8")).digest()
    ).decode("ascii")


def _wsse(tag: str) -> str:
    return f"{{{WSSE_NS}}}{tag}"


class UsernameTokenVerifier:
    """Checks the ``wsse:Security`` header of a request; remembers nonces within the window."""

    def __init__(
        self,
        username: str,
        password: str,
        *,
        window_s: float = 300,
        accept_password_text: bool = True,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.username = username
        self.password = password
        self.window = timedelta(seconds=window_s)
        self.accept_password_text = accept_password_text
        self.now: Callable[[], datetime] = now or (lambda: datetime.now(UTC))
        #: decoded nonce -> the Created it came with
        self._nonces: dict[bytes, datetime] = {}
        self._last_purge: datetime | None = None

    def reset(self) -> None:
        self._nonces.clear()
        self._last_purge = None

    def verify(self, header: etree._Element | None) -> str | None:
        """``None`` when the request is authentic, else the reason."""
        if header is None:
            return "no soap:Header"
        securities = header.findall(_wsse("Security"))
        if not securities:
            return "no wsse:Security header"
        if len(securities) > 1:
            return "more than one wsse:Security header"
        tokens = securities[0].findall(_wsse("UsernameToken"))
        if len(tokens) != 1:
            return "wsse:Security must hold exactly one wsse:UsernameToken"
        token = tokens[0]
        username = (token.findtext(_wsse("Username")) or "").strip()
        if not username:
            return "no wsse:Username"
        if not hmac.compare_digest(username.encode(), self.username.encode()):
            return f"unknown user {username!r}"
        password_el = token.find(_wsse("Password"))
        if password_el is None:
            return "no wsse:Password"
        password = (password_el.text or "").strip()
        ptype = password_el.get("Type", PASSWORD_TEXT)

        nonce: bytes | None = None
        nonce_el = token.find(_wsse("Nonce"))
        if nonce_el is not None:
            encoding = nonce_el.get("EncodingType", BASE64_BINARY)
            if encoding != BASE64_BINARY:
                return f"wsse:Nonce EncodingType {encoding!r} is not Base64Binary"
            try:
                nonce = base64.b64decode((nonce_el.text or "").strip(), validate=True)
            except (binascii.Error, ValueError):
                return "wsse:Nonce is not valid base64"
            if not nonce:
                return "wsse:Nonce is empty"
        created_text = token.findtext(f"{{{WSU_NS}}}Created")
        created: datetime | None = None
        if created_text is not None:
            created_text = created_text.strip()
            try:
                created = datetime.fromisoformat(created_text)
            except ValueError:
                return f"wsu:Created {created_text!r} is not an xsd:dateTime"
            if created.tzinfo is None:
                created = created.replace(tzinfo=UTC)

        if ptype == PASSWORD_DIGEST:
            if nonce is None or created is None or created_text is None:
                return "PasswordDigest needs wsse:Nonce and wsu:Created"
            expected = password_digest(nonce, created_text, self.password)
            ok = hmac.compare_digest(expected.encode(), password.encode())
        elif ptype == PASSWORD_TEXT:
            if not self.accept_password_text:
                return "PasswordText is not accepted"
            ok = hmac.compare_digest((password_el.text or "").encode(), self.password.encode())
        else:
            return f"unsupported password type {ptype!r}"

        now = self.now()
        if created is not None and abs(now - created) > self.window:
            away = int((now - created).total_seconds())
            return f"wsu:Created {created_text} is {away} s away from the server's clock"
        if not ok:
            return "wrong password"
        if nonce is not None:
            self._purge(now)
            if nonce in self._nonces:
                return "nonce already used"
            self._nonces[nonce] = created or now
        return None

    def _purge(self, now: datetime) -> None:
        """Forget nonces whose Created has left the window: a replay of one fails the
        freshness check anyway (the digest binds the nonce to its Created)."""
        last = self._last_purge
        if last is not None and abs(now - last) < timedelta(seconds=10):
            return
        self._last_purge = now
        horizon = now - self.window
        self._nonces = {n: c for n, c in self._nonces.items() if c >= horizon}
