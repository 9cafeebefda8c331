"""The pool's keys: from the environment in production, from 0600 files on a laptop."""

from __future__ import annotations

import base64
import hashlib
import hmac
import stat

import pytest
from cryptography.fernet import Fernet

from state.crypto import Keyring, KeyringError, last4, normalize_code


def test_keys_come_from_the_environment(monkeypatch, vouchflow_home):
    code_key, hash_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("VOUCHFLOW_CODE_KEY", code_key)
    monkeypatch.setenv("VOUCHFLOW_CODE_HASH_KEY", hash_key)
    ring = Keyring.load()
    assert not (vouchflow_home / "keys").exists()
    expected = hmac.new(base64.urlsafe_b64decode(hash_key), b"ABC-123",
                        hashlib.sha256).hexdigest()
    assert ring.hash_code("  ABC-123\n") == expected
    token = ring.encrypt("ABC-123")
    assert Fernet(code_key.encode()).decrypt(token.encode()) == b"ABC-123"
    assert "ABC" not in repr(ring) and code_key not in repr(ring)


def test_without_variables_a_dev_install_creates_private_key_files(vouchflow_home):
    first = Keyring.load()
    code_file = vouchflow_home / "keys" / "code.key"
    hash_file = vouchflow_home / "keys" / "hash.key"
    for path in (code_file, hash_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = Keyring.load()  # the same keys are reused
    token = first.encrypt("VOUCHER-0001")
    assert second.decrypt(token) == "VOUCHER-0001"
    assert first.hash_code("VOUCHER-0001") == second.hash_code("VOUCHER-0001")
    assert code_file.read_text().strip() != hash_file.read_text().strip()


def test_codes_are_case_sensitive_and_only_trimmed():
    ring = Keyring.generate()
    assert normalize_code(" \tAbC-1 \n") == "AbC-1"
    assert ring.hash_code("abc-1") != ring.hash_code("ABC-1")
    assert ring.hash_codes(["x", " x "]) == [ring.hash_code("x")] * 2
    assert last4("ABCDEFGH") == "EFGH" and last4("ABCD") == ""


def test_bad_keys_are_refused_without_showing_them(monkeypatch):
    monkeypatch.setenv("VOUCHFLOW_CODE_KEY", "not-a-key")
    monkeypatch.setenv("VOUCHFLOW_CODE_HASH_KEY", Fernet.generate_key().decode())
    with pytest.raises(KeyringError) as info:
        Keyring.load()
    assert "not-a-key" not in str(info.value) and "base64" in str(info.value)
    short = "c2hvcnQ="  # "short"
    with pytest.raises(KeyringError, match="32 bytes"):
        Keyring(short, Fernet.generate_key().decode())


def test_a_wrong_key_fails_clearly_and_rotation_keeps_old_ciphertexts():
    old = Keyring.generate()
    token = old.encrypt("VOUCHER-0002")
    other = Keyring.generate()
    with pytest.raises(KeyringError, match="cannot be decrypted") as info:
        other.decrypt(token)
    assert "VOUCHER" not in str(info.value)
    hash_key = Fernet.generate_key().decode()
    old_key = Fernet.generate_key().decode()
    before = Keyring(old_key, hash_key)
    rotated = Keyring(Fernet.generate_key().decode(), hash_key, previous_code_keys=[old_key])
    assert rotated.decrypt(before.encrypt("VOUCHER-0003")) == "VOUCHER-0003"
    assert rotated.encrypt_many(["a", None])[1] is None
