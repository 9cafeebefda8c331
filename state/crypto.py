"""Keys for the code pool: voucher codes and PINs are bearer value, like cash.

The pool never stores a code in clear. Each code is kept twice:

- encrypted with Fernet (AES-128-CBC + HMAC-SHA256, a fresh IV per value), so the one place
  that delivers codes can read them back;
- as a keyed hash (HMAC-SHA256 of the normalized code), so uniqueness and lookups work without
  decrypting anything, and a stolen table cannot be checked against guessed codes without the
  key.

Production sets both keys in the environment (or a secret store feeding it):
``VOUCHFLOW_CODE_KEY`` (the Fernet key) and ``VOUCHFLOW_CODE_HASH_KEY`` (the HMAC key), each
32 random bytes in urlsafe base64 (``python -c "from cryptography.fernet import Fernet;
print(Fernet.generate_key().decode())"``). Without them, a development install creates
``$VOUCHFLOW_HOME/keys/code.key`` and ``hash.key`` (mode 0600) on first use and reuses them,
so a laptop works without setup; those files are as secret as the codes themselves.

The hash key can never change without rehashing the pool (lookups and uniqueness depend on
it); the Fernet key can be rotated with ``cryptography.fernet.MultiFernet`` (pass the old keys
as ``previous_code_keys`` to keep reading old ciphertexts).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from state.settings import StateSettings

KEY_BYTES = 32


class KeyringError(ValueError):
    """A key is missing, malformed or cannot be read (the message never contains the key)."""


class KeySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOUCHFLOW_", extra="ignore")

    code_key: SecretStr | None = Field(
        default=None, description="Fernet key for codes and PINs (urlsafe base64, 32 bytes).")
    code_hash_key: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key for code hashes (urlsafe base64, 32 bytes).")


def _decode_key(value: str, name: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(value.strip().encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise KeyringError(f"{name} is not urlsafe base64") from None
    if len(raw) != KEY_BYTES:
        raise KeyringError(f"{name} must decode to {KEY_BYTES} bytes, got {len(raw)}")
    return raw


def _key_file(path: Path) -> str:
    """The key stored at ``path``, created (0600, exclusively) if it does not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(Fernet.generate_key().decode("ascii") + "\n")
    return path.read_text().strip()


def normalize_code(code: str) -> str:
    """The form a code is hashed and stored in: surrounding whitespace removed, nothing else
    (codes are case-sensitive)."""
    return code.strip()


def last4(code: str) -> str:
    """The last four characters kept for support lookups; nothing for a code that short."""
    return code[-4:] if len(code) > 4 else ""


class Keyring:
    """The two pool keys. Build it once per process (``Keyring.load()``) and pass it around."""

    __slots__ = ("_fernet", "_hash_key")

    def __init__(
        self, code_key: SecretStr | str, hash_key: SecretStr | str, *,
        previous_code_keys: Sequence[SecretStr | str] = (),
    ) -> None:
        def plain(value: SecretStr | str) -> str:
            return value.get_secret_value() if isinstance(value, SecretStr) else value

        _decode_key(plain(code_key), "the code key")
        self._hash_key = _decode_key(plain(hash_key), "the code hash key")
        fernets = [Fernet(plain(k).encode("ascii")) for k in (code_key, *previous_code_keys)]
        self._fernet: Fernet | MultiFernet = (
            fernets[0] if len(fernets) == 1 else MultiFernet(fernets))

    def __repr__(self) -> str:
        return "Keyring(<hidden>)"

    @classmethod
    def load(cls, home: Path | None = None) -> Keyring:
        """Keys from ``VOUCHFLOW_CODE_KEY``/``VOUCHFLOW_CODE_HASH_KEY``, else (development) from
        ``$VOUCHFLOW_HOME/keys``, created on first use."""
        settings = KeySettings()
        keys_dir = (home or StateSettings().resolved_home()) / "keys"
        code_key = (settings.code_key.get_secret_value() if settings.code_key
                    else _key_file(keys_dir / "code.key"))
        hash_key = (settings.code_hash_key.get_secret_value() if settings.code_hash_key
                    else _key_file(keys_dir / "hash.key"))
        return cls(code_key, hash_key)

    @classmethod
    def generate(cls) -> Keyring:
        """Fresh random keys (tests, benchmarks)."""
        return cls(Fernet.generate_key().decode(), Fernet.generate_key().decode())

    # hashing --------------------------------------------------------------------------------
    def hash_code(self, code: str) -> str:
        """HMAC-SHA256 (hex, 64 characters) of the normalized code."""
        return hmac.new(self._hash_key, normalize_code(code).encode("utf-8"),
                        hashlib.sha256).hexdigest()

    def hash_codes(self, codes: Iterable[str]) -> list[str]:
        key, sha = self._hash_key, hashlib.sha256
        return [hmac.new(key, normalize_code(c).encode("utf-8"), sha).hexdigest() for c in codes]

    # encryption -----------------------------------------------------------------------------
    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode("utf-8")).decode("ascii")

    def encrypt_many(self, values: Iterable[str | None]) -> list[str | None]:
        enc = self._fernet.encrypt
        return [None if v is None else enc(v.encode("utf-8")).decode("ascii") for v in values]

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise KeyringError("a stored code cannot be decrypted with the configured code key "
                            "(wrong VOUCHFLOW_CODE_KEY?)") from None

    def decrypt_many(self, tokens: Iterable[str | None]) -> list[str | None]:
        return [None if t is None else self.decrypt(t) for t in tokens]
