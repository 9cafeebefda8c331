"""OAuth 2.0 client credentials with a JWT assertion, as NetSuite checks it.

``POST /services/rest/auth/oauth2/v1/token`` with ``grant_type=client_credentials``,
``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` and
``client_assertion=<JWT>``. The JWT is verified with PyJWT against the public key registered
for its ``kid`` under the client id in ``iss``: ``alg`` PS256 (RSA key) or ES256 (P-256 key),
``typ`` JWT, ``aud`` the token endpoint URL as the client addressed it, ``scope`` containing
``rest_webservices``, ``iat``/``exp`` numbers with ``exp`` in the future and at most 60 minutes
after ``iat``. Time comes from the sandbox's clock, so a test can let tokens expire.

A refused assertion is 400 ``{"error": "invalid_client" | "invalid_grant", ...}``: the
client's identity (unknown ``iss`` or ``kid``, a bad signature, an algorithm that is not
accepted) is ``invalid_client``; the claims (audience, times, scope) ``invalid_grant``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = [
    "ALGORITHMS",
    "ASSERTION_TYPE",
    "KeyPair",
    "OAuth2Clients",
    "OAuth2Refusal",
    "client_assertion",
    "generate_key_pair",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("PS256", "ES256")
SCOPE = "rest_webservices"
MAX_ASSERTION_LIFETIME_S = 3600

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class KeyPair:
    """A key pair for tests and the demo: ``public_pem`` is registered with the sandbox,
    ``private_pem`` signs the client's assertions."""

    alg: str
    private_pem: str
    public_pem: str


def generate_key_pair(alg: str = "PS256") -> KeyPair:
    """RSA 2048 for PS256, P-256 for ES256."""
    if alg == "PS256":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"alg must be one of {ALGORITHMS}, got {alg!r}")
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return KeyPair(alg, private_pem, public_pem)


def client_assertion(
    keys: KeyPair,
    *,
    client_id: str,
    kid: str,
    audience: str,
    iat: float | None = None,
    lifetime_s: float = 3600,
    scope: Any = (SCOPE,),
    alg: str | None = None,
    headers: Mapping[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A signed client assertion as a NetSuite client builds it (for tests)."""
    issued = int(time.time() if iat is None else iat)
    payload: dict[str, Any] = {
        "iss": client_id,
        "scope": list(scope) if isinstance(scope, tuple | list) else scope,
        "aud": audience,
        "iat": issued,
        "exp": int(issued + lifetime_s),
    }
    payload.update(claims)
    header = {"typ": "JWT", "kid": kid, **(headers or {})}
    return jwt.encode(payload, keys.private_pem, algorithm=alg or keys.alg, headers=header)


class OAuth2Refusal(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error, self.description = error, description


def _load_key(key: Any) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return key
    if isinstance(key, KeyPair):
        key = key.public_pem
    if isinstance(key, str):
        key = key.encode()
    loaded = serialization.load_pem_public_key(key)
    if not isinstance(loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("OAuth 2.0 keys must be RSA (PS256) or EC P-256 (ES256) public keys")
    if isinstance(loaded, ec.EllipticCurvePublicKey) and not isinstance(loaded.curve, ec.SECP256R1):
        raise ValueError("ES256 keys must use the P-256 curve")
    return loaded


def _alg_of(key: PublicKey) -> str:
    return "PS256" if isinstance(key, rsa.RSAPublicKey) else "ES256"


class OAuth2Clients:
    """Registered clients (client id -> kid -> public key) and the access tokens issued."""

    def __init__(
        self,
        clients: Mapping[str, Mapping[str, Any]] | None = None,
        token_ttl_s: int = 3600,
        leeway_s: float = 5.0,
    ) -> None:
        self.keys: dict[str, dict[str, PublicKey]] = {}
        self.token_ttl_s = token_ttl_s
        self.leeway_s = leeway_s
        self.tokens: dict[str, tuple[str, float]] = {}
        for client_id, kids in (clients or {}).items():
            for kid, key in kids.items():
                self.register(client_id, kid, key)

    def register(self, client_id: str, kid: str, public_key: Any) -> None:
        """Register a certificate (public key: PEM text/bytes, key object or ``KeyPair``)."""
        self.keys.setdefault(client_id, {})[kid] = _load_key(public_key)

    def reset(self) -> None:
        self.tokens.clear()

    def exchange(self, form: Mapping[str, str], audience: str, now: float) -> dict[str, Any]:
        """The token answer, or ``OAuth2Refusal``."""
        grant_type = form.get("grant_type")
        if grant_type != "client_credentials":
            raise OAuth2Refusal(
                "unsupported_grant_type", f"grant_type must be client_credentials, got {grant_type!r}"
            )
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuth2Refusal("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = form.get("client_assertion")
        if not assertion:
            raise OAuth2Refusal("invalid_request", "client_assertion is missing")
        client_id = self._verify(assertion, audience, now)
        token = secrets.token_urlsafe(32)
        self._purge(now)
        self.tokens[token] = (client_id, now + self.token_ttl_s)
        return {"access_token": token, "token_type": "bearer", "expires_in": self.token_ttl_s}

    def _verify(self, assertion: str, audience: str, now: float) -> str:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise OAuth2Refusal("invalid_client", f"the assertion is not a JWT: {exc}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise OAuth2Refusal("invalid_client", f"alg {alg!r} is not accepted (PS256 or ES256)")
        if str(header.get("typ", "")).upper() != "JWT":
            raise OAuth2Refusal("invalid_client", "the JWT header must have typ JWT")
        kid = header.get("kid")
        if not kid:
            raise OAuth2Refusal("invalid_client", "the JWT header has no kid")
        iss = unverified.get("iss")
        kids = self.keys.get(iss) if isinstance(iss, str) else None
        if kids is None:
            raise OAuth2Refusal("invalid_client", f"unknown client id (iss) {iss!r}")
        key = kids.get(kid)
        if key is None:
            raise OAuth2Refusal("invalid_client", f"no certificate {kid!r} registered for {iss}")
        if _alg_of(key) != alg:
            raise OAuth2Refusal("invalid_client", f"certificate {kid!r} is not a {alg} key")
        try:
            claims = jwt.decode(
                assertion,
                key,
                algorithms=[alg],
                audience=audience,
                issuer=iss,
                options={
                    "require": ["iss", "aud", "iat", "exp"],
                    "verify_exp": False,  # checked below against the sandbox's clock
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise OAuth2Refusal("invalid_client", "the assertion's signature does not verify") from None
        except jwt.InvalidAudienceError:
            raise OAuth2Refusal(
                "invalid_grant", f"aud {unverified.get('aud')!r} is not the token endpoint {audience}"
            ) from None
        except jwt.PyJWTError as exc:
            raise OAuth2Refusal("invalid_grant", f"the assertion is refused: {exc}") from None
        iat, exp = claims.get("iat"), claims.get("exp")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (iat, exp)):
            raise OAuth2Refusal("invalid_grant", "iat and exp must be numbers")
        if exp <= now:
            raise OAuth2Refusal("invalid_grant", "the assertion has expired (exp)")
        if iat > now + self.leeway_s:
            raise OAuth2Refusal("invalid_grant", "the assertion is issued in the future (iat)")
        if exp <= iat or exp - iat > MAX_ASSERTION_LIFETIME_S:
            raise OAuth2Refusal("invalid_grant", "exp must be after iat and at most 60 minutes later")
        scope = claims.get("scope")
        scopes = scope.split() if isinstance(scope, str) else scope if isinstance(scope, list) else []
        if SCOPE not in scopes:
            raise OAuth2Refusal("invalid_grant", f"scope must include {SCOPE}")
        return iss

    def verify_token(self, token: str, now: float) -> str | None:
        """``None`` for a valid access token, else why not."""
        entry = self.tokens.get(token)
        if entry is None:
            return "unknown access token"
        if entry[1] <= now:
            return "access token expired"
        return None

    def _purge(self, now: float) -> None:
        if len(self.tokens) > 1000:
            self.tokens = {t: e for t, e in self.tokens.items() if e[1] > now}
