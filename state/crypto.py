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
import struct
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
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


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def hmac_sha256_many(key: bytes, messages: Iterable[bytes]) -> list[bytes]:
    """HMAC-SHA256 (RFC 2104) of many messages under one key: the same bytes as
    ``hmac.digest(key, m, "sha256")`` for each.

    The one-shot ``hmac.digest`` sets OpenSSL's HMAC up again for every message (about 3 µs
    here, most of a voucher code's hashing). The key's inner and outer SHA-256 states are the
    same for every message, so they are computed once and copied, as the standard library's
    own pure-Python HMAC does: about 1 µs a message."""
    block = hashlib.sha256().block_size
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\0")
    inner, outer = hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))
    inner_copy, outer_copy = inner.copy, outer.copy
    out: list[bytes] = []
    add = out.append
    for message in messages:
        i = inner_copy()
        i.update(message)
        o = outer_copy()
        o.update(i.digest())
        add(o.digest())
    return out


BATCH_ENCRYPT_FROM = 16
"""From this many values, ``encrypt_many`` builds the tokens a batch at a time."""


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def fernet_tokens(signing_key: bytes, encryption_key: bytes, values: Sequence[bytes], *,
                  now: int | None = None) -> list[str]:
    """Fernet tokens (the format ``Fernet.decrypt`` reads: version 0x80, timestamp, a random
    IV per token, AES-128-CBC with PKCS7 padding, HMAC-SHA256, urlsafe base64) for many values.

    ``Fernet.encrypt`` builds a cipher, a padder and an HMAC object for every value, which
    costs more than the cryptography itself for a voucher code. Here CBC runs one block
    position at a time across all values (AES on each block through one ECB context, the
    chaining XOR as one big-integer operation), so the per-value work is slicing and one
    HMAC. The result is bit-for-bit what Fernet would make with the same IVs and time."""
    n = len(values)
    if n == 0:
        return []
    ivs = os.urandom(16 * n)
    head = b"\x80" + struct.pack(">Q", int(time.time()) if now is None else now)
    ecb = Cipher(algorithms.AES(encryption_key), modes.ECB()).encryptor()
    padded = [v + bytes((16 - len(v) % 16,)) * (16 - len(v) % 16) for v in values]
    out = ecb.update(_xor(b"".join([p[:16] for p in padded]), ivs))
    cts = [out[16 * i:16 * i + 16] for i in range(n)]
    todo = [i for i in range(n) if len(padded[i]) > 16]
    start = 16
    while todo:  # values longer than one block: the next block, chained to the last one
        chain = b"".join([cts[i][-16:] for i in todo])
        out = ecb.update(_xor(b"".join([padded[i][start:start + 16] for i in todo]), chain))
        for j, i in enumerate(todo):
            cts[i] += out[16 * j:16 * j + 16]
        start += 16
        todo = [i for i in todo if len(padded[i]) > start]
    enc = base64.urlsafe_b64encode
    bodies = [head + ivs[16 * i:16 * i + 16] + cts[i] for i in range(n)]
    macs = hmac_sha256_many(signing_key, bodies)
    return [enc(b + m).decode("ascii") for b, m in zip(bodies, macs, strict=True)]


class Keyring:
    """The two pool keys. Build it once per process (``Keyring.load()``) and pass it around."""

    __slots__ = ("_fernet", "_hash_key", "_token_keys")

    def __init__(
        self, code_key: SecretStr | str, hash_key: SecretStr | str, *,
        previous_code_keys: Sequence[SecretStr | str] = (),
    ) -> None:
        def plain(value: SecretStr | str) -> str:
            return value.get_secret_value() if isinstance(value, SecretStr) else value

        _decode_key(plain(code_key), "the code key")
        self._hash_key = _decode_key(plain(hash_key), "the code hash key")
        fernets = [Fernet(plain(k).encode("ascii")) for k in (code_key, *previous_code_keys)]
        raw = base64.urlsafe_b64decode(plain(code_key).encode("ascii"))
        self._token_keys = (raw[:16], raw[16:])  # Fernet's signing key, encryption key
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
        return [d.hex() for d in hmac_sha256_many(
            self._hash_key, (normalize_code(c).encode("utf-8") for c in codes))]

    # encryption -----------------------------------------------------------------------------
    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode("utf-8")).decode("ascii")

    def encrypt_many(self, values: Iterable[str | None]) -> list[str | None]:
        """Many values at once (None stays None): the same Fernet tokens ``encrypt`` makes,
        built a batch at a time (``fernet_tokens``), several times faster for a chunk of
        codes than one ``Fernet.encrypt`` call each."""
        values = list(values)
        present = [v.encode("utf-8") for v in values if v is not None]
        if len(present) >= BATCH_ENCRYPT_FROM:
            made = iter(fernet_tokens(*self._token_keys, present))
            return [None if v is None else next(made) for v in values]
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
