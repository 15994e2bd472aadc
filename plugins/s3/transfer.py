"""Whole-file transfer for the staging area: push a finished dump to
``s3://bucket/prefix/``, fetch it back for a restore, remove it when retention says so.

    from plugins.s3 import transfer
    r = transfer.push("/staging/g.ims", "s3://backups/mail/", config, sha256=catalog_digest)
    transfer.fetch(r.remote_path, "/staging/g.ims", config, sha256=r.sha256)

The object appears only complete and checked (:mod:`plugins.s3.upload`), carries the
file's SHA-256 as its ``sha256`` metadata, and with ``s3.lockdays`` is under object lock
until then (``remove`` refuses it before: :class:`S3Locked`)."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
from dataclasses import dataclass

from plugins.s3 import retry
from plugins.s3.download import S3Reader
from plugins.s3.errors import S3AuthFailed, S3Error, S3Locked, S3NotFound, S3VerifyFailed, code_of
from plugins.s3.settings import Settings, client
from plugins.s3.spec import parse
from plugins.s3.upload import S3Writer

CHUNK = 1 << 20


@dataclass
class PushResult:
    """A file sent to S3: where it is, its size and its SHA-256."""

    remote_path: str          # s3://bucket/key
    size: int
    sha256: str
    verified: str             # "etag": the server's MD5s checked (per part and assembled)
    lock_until: float | None = None


@dataclass
class FetchResult:
    """A file fetched from S3: where it was written, its size and its SHA-256."""

    local_path: str
    size: int
    sha256: str
    verified: str


def push(local_path: str, remote_spec: str, config=None, sha256: str | None = None) -> PushResult:
    """Send ``local_path`` to the prefix ``remote_spec`` (its base name appended)."""
    settings = Settings.from_config(config)
    target = parse(remote_spec, directory=True).child(os.path.basename(local_path))
    s3 = client(settings)
    try:
        src = open(local_path, "rb")
    except OSError as exc:
        raise S3Error(f"cannot read {local_path}: {exc.strerror}") from None
    with src:
        w = S3Writer(s3, settings, target, metadata={"sha256": sha256} if sha256 else None, sha256=True)
        try:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                w.write(chunk)
        except BaseException:
            w.abort()
            raise
        w.close()
    digest = w.sha256.hexdigest()
    if sha256 and digest != sha256:
        _delete(s3, settings, target, w.version)
        raise S3VerifyFailed(f"{local_path} changed while it was sent (sha256 {digest[:12]}... instead of "
                             f"{sha256[:12]}...): {target.url} was removed")
    until = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=settings.lockdays)).timestamp() \
        if settings.lockdays else None
    return PushResult(target.url, w.size, digest, "etag", until)


def fetch(remote_spec: str, local_path: str, config=None, sha256: str | None = None) -> FetchResult:
    """Copy the object to ``local_path`` (a temporary name, renamed when complete and its
    SHA-256 equal to ``sha256``, else to the object's ``sha256`` metadata)."""
    settings = Settings.from_config(config)
    spec = parse(remote_spec)
    s3 = client(settings)
    r = S3Reader(s3, settings, spec)
    local_path = os.path.abspath(local_path)
    d = os.path.dirname(local_path)
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(local_path) + ".", suffix=".partial", dir=d)
    except OSError as exc:
        raise S3Error(f"cannot write {local_path}: {exc.strerror} ({d})") from None
    try:
        h = hashlib.sha256()
        n = 0
        with os.fdopen(fd, "wb") as out:
            while n < r.size:
                data = r.read(min(CHUNK * 8, r.size - n))
                h.update(data)
                out.write(data)
                n += len(data)
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        expected = sha256 or r.metadata.get("sha256")
        if expected and digest != expected:
            raise S3VerifyFailed(f"SHA-256 of {spec.url} is {digest}, expected {expected}: the copy was not kept")
        os.replace(tmp, local_path)
        tmp = None
        return FetchResult(local_path, n, digest, "sha256" if expected else "size")
    finally:
        r.close()
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def _delete(s3, settings, spec, version=None) -> None:
    retry.call(settings, "removing", spec.url, s3.delete_object, Bucket=spec.bucket, Key=spec.key,
               **({"VersionId": version} if version else {}))


def remove(remote_spec: str, config=None) -> bool:
    """Remove the object for good (on a versioned bucket its current version, not just a
    delete marker); False if it was not there; S3Locked while object lock holds it."""
    settings = Settings.from_config(config)
    spec = parse(remote_spec)
    s3 = client(settings)
    try:
        h = retry.call(settings, "examining", spec.url, s3.head_object, Bucket=spec.bucket, Key=spec.key)
    except S3Error as exc:
        if isinstance(exc, S3NotFound):       # (by its class, never "404" in a text naming the endpoint)
            return False
        raise
    until = h.get("ObjectLockRetainUntilDate")
    if until is not None and until > dt.datetime.now(dt.timezone.utc):
        raise S3Locked(f"{spec.url} is under object lock ({h.get('ObjectLockMode', '').lower()}) until "
                       f"{until.strftime('%Y-%m-%d %H:%M:%S %Z')}: it is kept until then")
    try:
        _delete(s3, settings, spec, h.get("VersionId"))
    except S3Error as exc:
        # (by the server's answer: the message also names the bucket and the key)
        denied = exc.code == "AccessDenied"
        if denied and not _may_be_locked(s3, spec, h):
            # no retention, no legal hold, a bucket without object lock: the credentials
            # may not delete, and retention will never run until they may
            raise S3AuthFailed(f"no permission to delete {spec.url} (AccessDenied; the object is under no object "
                               f"lock): give these credentials s3:DeleteObject and s3:DeleteObjectVersion on "
                               f"bucket {spec.bucket}; nothing was removed") from None
        if denied or "locked" in f"{exc.code} {exc.server_message}".lower():
            raise S3Locked(f"{spec.url} cannot be removed yet ({exc}): the bucket's retention keeps it") from None
        raise
    return True


def _may_be_locked(s3, spec, head: dict) -> bool:
    """Whether object lock can be what refused a delete: the object's HEAD shows a mode or a
    legal hold, or (HEAD shows lock headers only to those who may read them) the bucket has
    object lock enabled."""
    if head.get("ObjectLockMode") or head.get("ObjectLockLegalHoldStatus") == "ON":
        return True
    try:
        cfg = s3.get_object_lock_configuration(Bucket=spec.bucket)
    except Exception:
        return False
    return (cfg.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled") == "Enabled"


def lock_supported(config, remote_spec: str) -> bool:
    settings = Settings.from_config(config)
    spec = parse(remote_spec, directory=True)
    try:
        cfg = client(settings).get_object_lock_configuration(Bucket=spec.bucket)
    except Exception as exc:
        if code_of(exc)[0]:
            return False
        raise
    return (cfg.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled") == "Enabled"
