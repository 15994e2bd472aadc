"""S3 device strings: ``s3://bucket/key`` (an archive) and ``s3://bucket/prefix/`` (a
directory for staged dumps)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from plugins.s3.errors import S3ConfigError

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Spec:
    """A parsed s3://bucket/key device."""

    bucket: str
    key: str
    text: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def child(self, name: str) -> "S3Spec":
        prefix = self.key if not self.key or self.key.endswith("/") else self.key + "/"
        return S3Spec(self.bucket, prefix + name, f"s3://{self.bucket}/{prefix}{name}")


def is_s3(spec: str) -> bool:
    return spec.startswith("s3://")


def parse(spec: str, directory: bool = False) -> S3Spec:
    """Split ``s3://bucket/key``; S3ConfigError (one line) when malformed.  An archive
    needs a key; a ``directory`` may be the whole bucket or a prefix."""
    if not is_s3(spec):
        raise S3ConfigError(f"{spec!r} is not an S3 device: write s3://bucket/key")
    rest = spec[5:]
    bucket, _, key = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise S3ConfigError(f"bad bucket name {bucket!r} in {spec!r}: 3-63 lower-case letters, digits, '.' or '-'")
    if not directory and (not key or key.endswith("/")):
        raise S3ConfigError(f"S3 device {spec!r} names no object: add a key, e.g. s3://{bucket}/mail/full.ims")
    if len(key.encode("utf-8", "surrogateescape")) > 1024:
        raise S3ConfigError(f"the key of {spec!r} is longer than S3's 1024 bytes")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        # (an S3 key is UTF-8: it failed after the whole backup, with Python's words)
        raise S3ConfigError(f"the key of {ascii(spec)} holds bytes that are not UTF-8, which no S3 key can: "
                            f"name the object in UTF-8") from None
    levels = key.rstrip("/").split("/") if key else []
    if any(level in ("", ".", "..") for level in levels):
        # s3://bkt/d//x.ims: one server stored it as d/x.ims (over an archive of that name),
        # another refused it after the whole backup
        raise S3ConfigError(f"the key of {spec!r} has an empty, '.' or '..' level, which S3 servers store "
                            f"under other names or refuse: write each level once, e.g. s3://{bucket}/mail/full.ims")
    return S3Spec(bucket, key, spec)
