"""Batch-built Fernet tokens are the tokens Fernet itself makes, and the keyring's batch paths
give the same values as its one-at-a-time ones."""

from __future__ import annotations

import base64
import os
import random

from cryptography.fernet import Fernet

from state.crypto import Keyring, fernet_tokens


def test_batch_tokens_are_fernet_tokens_bit_for_bit(monkeypatch):
    key = Fernet.generate_key()
    raw = base64.urlsafe_b64decode(key)
    rng = random.Random(5)
    values = [bytes(rng.getrandbits(8) for _ in range(n % 53)) for n in range(400)]
    ivs = os.urandom(16 * len(values))
    monkeypatch.setattr("state.crypto.os.urandom", lambda size: ivs[:size])
    made = fernet_tokens(raw[:16], raw[16:], values, now=1_790_000_000)
    fernet = Fernet(key)
    for i, (value, token) in enumerate(zip(values, made, strict=True)):
        expected = fernet._encrypt_from_parts(value, 1_790_000_000, ivs[16 * i:16 * i + 16])
        assert token.encode() == expected
        assert fernet.decrypt(token.encode()) == value


def test_keyring_batches_agree_with_single_calls():
    ring = Keyring.generate()
    codes = [f"CODE-{i:05d}-{'x' * (i % 30)}" for i in range(100)] + ["ü-codé €"]
    assert ring.hash_codes(codes) == [ring.hash_code(c) for c in codes]
    values = [None if i % 7 == 0 else c for i, c in enumerate(codes)]
    tokens = ring.encrypt_many(values)
    assert [None if t is None else ring.decrypt(t) for t in tokens] == values
    assert len(set(t for t in tokens if t)) == len([v for v in values if v])  # fresh IVs
    assert ring.encrypt_many(["short", None])[1] is None


def test_hmac_many_is_hmac_for_any_key_and_message():
    import hmac

    from state.crypto import hmac_sha256_many

    rng = random.Random(9)
    messages = [bytes(rng.getrandbits(8) for _ in range(n)) for n in range(0, 300, 7)]
    for key in (b"", b"k", os.urandom(32), os.urandom(64), os.urandom(65), os.urandom(200)):
        assert hmac_sha256_many(key, messages) == [
            hmac.digest(key, m, "sha256") for m in messages]
    assert hmac_sha256_many(b"k", []) == []
