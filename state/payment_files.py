"""The ledger of payment files read: a file seen before (same name, same content hash) is not
read twice, and a changed file under a name already read is flagged, not silently merged
(CONTRACTS.md "Payment files and APIs").

It lives in the fingerprint table (target ``payments:files``, one row per file name, the
SHA-256 of the content as digest), so it needs no table of its own.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from pathlib import Path

from sqlalchemy.orm import Session

from state.store import load_fingerprints, save_fingerprints

TARGET = "payments:files"
ENTITY = "payment_file"
CHUNK = 1 << 20


class FileStatus(StrEnum):
    NEW = "new"
    """Never read under this name."""
    SEEN = "seen"
    """Read before with exactly this content: skip it."""
    CHANGED = "changed"
    """Read before under this name with other content: flag it."""


def content_digest(path: str | Path) -> str:
    """SHA-256 of the file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_status(session: Session, name: str, digest: str) -> FileStatus:
    known = load_fingerprints(session, TARGET, ENTITY, [name]).get(name)
    if known is None:
        return FileStatus.NEW
    return FileStatus.SEEN if known == digest else FileStatus.CHANGED


def record_file(session: Session, name: str, digest: str) -> None:
    """Mark a file as read (call in the transaction that keeps what was read from it)."""
    save_fingerprints(session, TARGET, ENTITY, {name: digest})
