"""Idempotency keys: stable, derived from what a write represents, valid as external ids.

A key like ``po-sg1-SKU-1-20261122`` names the business fact; the same fact always gives the
same key, so a write repeated after a crash is recognised by the far end (upsert by external
id, idempotency header, document id). Systems that want a UUID get ``uuid5(NAMESPACE, key)``.
"""

from __future__ import annotations

import re
import uuid

KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")

NAMESPACE = uuid.UUID("6f1c3a52-9d0e-5b7a-8c44-7a1f0e2b9d31")
"""vouchflow's own uuid5 namespace; never change it, or repeated writes stop matching."""


class BadKeyError(ValueError):
    pass


def check_key(key: str) -> str:
    if not KEY_RE.fullmatch(key):
        raise BadKeyError(
            f"idempotency key {key!r} must be 1-255 characters of letters, digits, '_' and '-'"
        )
    return key


def key_uuid(key: str) -> uuid.UUID:
    """The UUID a target that wants one (NetSuite's idempotency header) receives for a key."""
    return uuid.uuid5(NAMESPACE, check_key(key))


def make_key(*parts: object) -> str:
    """Join parts into a key, replacing characters an external id may not contain."""
    text = "-".join(str(p) for p in parts)
    return check_key(re.sub(r"[^A-Za-z0-9_-]", "_", text))
