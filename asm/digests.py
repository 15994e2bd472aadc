"""The SHA-256 of a file on disk, read in 1 MiB pieces (memory stays bounded): the one
place every part of ims-asm (restore, reconstruct, imsverify, imsdr) digests a file."""
from __future__ import annotations

import hashlib
import os

CHUNK = 1 << 20


def file_sha256(path: str, fsync: bool = False) -> tuple[str, int]:
    """(hex digest, size in bytes) of the file at ``path`` (``fsync``: and the file is
    on disk when this returns); OSError propagates."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
            n += len(chunk)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest(), n


def file_sha256_or_none(path: str, missing=OSError) -> str | None:
    """The hex digest, or None when the file cannot be read (``missing``: which errors
    mean "not there"; any other OSError propagates)."""
    try:
        return file_sha256(path)[0]
    except missing:
        return None
