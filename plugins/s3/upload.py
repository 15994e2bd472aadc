"""Writing an object as a stream, memory bounded: the bytes are cut into parts of
``s3.partsize`` (doubling every 2,000 parts), up to ``s3.concurrency`` parts are
uploaded at once by threads, each part retried on its own (:mod:`plugins.s3.retry`).
The object appears only when complete (CompleteMultipartUpload; an archive smaller
than one part is a single PutObject, atomic as well); a failed or abandoned upload is
aborted, and one that could not be (the run was killed) is aborted by the next run
(:mod:`plugins.s3.journal`).

What is checked against the server: every part goes with its Content-MD5, which the
server verifies before it stores the part (a damaged part is refused and sent again);
the ETag it answers must be that MD5; the completed object's ETag must be the MD5 of
the parts' MD5s with their count (``...-N``), the multipart ETag every S3
implementation computes; and its size must be the bytes sent.  The SHA-256 of the
whole object (the staging catalog's digest of an archive) goes with it as the user
metadata ``sha256`` when it is known beforehand, and is checked when it is fetched.

Two writers of one key (two hosts backing up to the same name, a cron job started
twice): the object at the key when the writer starts is noted (its ETag, or none), and
the upload is completed on that condition (``If-Match`` that ETag, ``If-None-Match: *``
when there was none), so a server that supports conditional writes (AWS, SeaweedFS)
refuses to replace an object another writer completed meanwhile.  Whatever the server,
the object at the key after completion must then be this writer's: its ``ims-writer``
metadata (a token of this writer) or, on a server that keeps no metadata, its ETag.
Either failure is :class:`S3Replaced` (exit 6), never success.  One installation's own
runs are kept apart earlier, by a lock on the name (:func:`lock_path`).
"""
from __future__ import annotations

import base64
import collections
import concurrent.futures
import datetime as dt
import hashlib
import os
import re
import secrets
import socket

from asm.interrupts import interrupts_deferred
from plugins.s3 import journal, retry
from plugins.s3.errors import (S3ConfigError, S3Error, S3NotFound, S3Replaced, S3VerifyFailed, code_of,
                               translate)
from plugins.s3.settings import Settings
from plugins.s3.spec import S3Spec

_MD5 = re.compile(r"^[0-9a-f]{32}$")
WRITER = "ims-writer"          # user metadata: the token of the writer that made the object

#: a hook for the tests only: called as ``hook(writer, stage)`` with stage "completing"
#: (just before the object is completed) and "completed" (just after, before the check),
#: to play another writer at a moment no real race can be made to hit on purpose
test_hook = None


def lock_path(settings: Settings, spec: S3Spec) -> str | None:
    """The installation's lock file for the object ``spec`` on this endpoint, under
    ``$IMS_HOME/data/s3-locks/`` (None without an installation): one run at a time of
    the installation writes one key."""
    if not settings.home:
        return None
    name = "\0".join((settings.endpoint_shown() or "aws", spec.bucket, spec.key))
    return os.path.join(settings.home, "data", "s3-locks",
                        hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:32] + ".lock")


def _metadata(h: dict) -> dict:
    """A HEAD's user metadata with lower-case keys (rclone capitalises them)."""
    return {str(k).lower(): v for k, v in (h.get("Metadata") or {}).items()}


class _Refused(S3Error):
    """The server answered 412 PreconditionFailed to a conditional completion."""


def _etag_is_md5(r: dict) -> bool:
    """Whether the server's ETag is the MD5 of the bytes: not with SSE-KMS or SSE-C
    encryption (AWS documents those ETags as something else); Content-MD5 is still
    checked by the server then."""
    return r.get("ServerSideEncryption") not in ("aws:kms", "aws:kms:dsse") and not r.get("SSECustomerAlgorithm")


def check_bucket(s3, settings: Settings, spec: S3Spec) -> None:
    """The bucket exists (a typo must not create one on servers that would), and has
    object lock when s3.lockdays asks for it."""
    try:
        retry.call(settings, "checking the bucket of", spec.url, s3.head_bucket, Bucket=spec.bucket)
    except S3NotFound:
        raise S3NotFound(f"bucket {spec.bucket!r} does not exist at {settings.endpoint_shown() or 'AWS'}: create "
                         f"it first (or check the name in {spec.text})") from None
    # (any other S3Error is what it says: its text names the endpoint, the bucket and the
    # key, so "404" in it was an endpoint on port 40473 or a bucket "t404", and wrong
    # credentials were reported as a missing bucket)
    if settings.lockdays:
        enabled = False
        try:
            cfg = s3.get_object_lock_configuration(Bucket=spec.bucket)
            enabled = (cfg.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled") == "Enabled"
        except Exception as exc:      # not configured, or a server without object lock
            if not code_of(exc)[0]:
                raise translate(exc, "checking object lock of", spec.url, settings.endpoint_shown()) from None
        if not enabled:
            raise S3ConfigError(f"s3.lockdays is {settings.lockdays} but bucket {spec.bucket!r} has no object lock "
                                f"(the server does not support it, or the bucket was created without it): "
                                f"create the bucket with object lock enabled, or msconfig unset s3.lockdays")


def lock_args(settings: Settings) -> dict:
    if not settings.lockdays:
        return {}
    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=settings.lockdays)
    return {"ObjectLockMode": settings.lockmode, "ObjectLockRetainUntilDate": until}


class S3Writer:
    """A writable stream whose bytes become the object ``spec`` on ``close()``;
    ``abort()`` drops everything (nothing becomes visible)."""

    def __init__(self, s3, settings: Settings, spec: S3Spec, metadata: dict | None = None,
                 sha256: bool = False):
        self.s3 = s3
        self.settings = settings
        self.spec = spec
        self.metadata = dict(metadata or {})
        self._buf = bytearray()
        self._number = 0
        self._upload_id: str | None = None
        self._journal: str | None = None
        self._parts: dict[int, tuple[str, bytes]] = {}
        self._pending: collections.deque = collections.deque()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.sha256 = hashlib.sha256() if sha256 else None    # of the whole object, when wanted
        self.size = 0
        self.etag: str | None = None
        self.version: str | None = None
        self.closed = False
        self._prepared = False
        self.lock = lock_args(settings)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"
        self.metadata[WRITER] = self.token
        check_bucket(s3, settings, spec)
        clean_stale(s3, settings)
        self._before: str | None = None      # the ETag of the object at the key now, if any
        self.note_before()

    def note_before(self) -> None:
        """Note the object now at the key (its ETag, or that there is none): the upload
        completes only if it is still that one (where the server checks conditions)."""
        h = self._head_now("examining")
        self._before = (h.get("ETag") or None) if h is not None else None

    def _condition(self) -> dict:
        return {"IfMatch": self._before} if self._before else {"IfNoneMatch": "*"}

    def _conditional(self, doing: str, fn, midway: bool = False, **kw):
        """``fn(**kw)`` on the condition that the key still holds what it held at the start;
        a server that does not implement conditions is asked again without them (the
        check after completion still applies)."""
        cond = self._condition()

        def attempt():
            try:
                return fn(**kw, **cond)
            except Exception as exc:
                code, status, _ = code_of(exc)
                if code in ("PreconditionFailed", "412") or status == 412:
                    raise _Refused(f"{code or status}") from None
                if cond and (code == "NotImplemented" or status == 501):
                    cond.clear()
                    return fn(**kw)
                raise
        try:
            return retry.call(self.settings, doing, self.spec.url, attempt, midway=midway)
        except _Refused:
            # a completion tried again after a reply that was lost may find our own object
            h = self._head_now()
            if h is not None and self._mine(h, strict=True):
                return {"ETag": h.get("ETag", ""), "VersionId": h.get("VersionId")}
            raise S3Replaced(f"{self.spec.url} was written by another writer while this run uploaded it (the "
                             f"server refused to replace that object: PreconditionFailed): this run's object was "
                             f"not stored, the other one is kept; two runs write the same name (another host, or "
                             f"a cron job started twice?): give each its own name, or run again") from None

    def _head_now(self, doing: str = "checking") -> dict | None:
        """HEAD of the object now at the key; None when there is none."""
        try:
            return retry.call(self.settings, doing, self.spec.url, self.s3.head_object,
                              Bucket=self.spec.bucket, Key=self.spec.key)
        except S3Error as exc:
            if isinstance(exc, S3NotFound):    # (by its class: the text names endpoint and key)
                return None
            raise

    def _mine(self, h: dict, strict: bool = False) -> bool:
        """Whether the object HEAD ``h`` describes is the one this writer made: its writer
        token when the server keeps metadata, else its version, else its ETag.  (rclone
        answers a HEAD of a multipart object with the MD5 of the whole, which this writer
        does not compute: with no token either, that ETag proves nothing and is let pass
        unless ``strict``.)"""
        meta = _metadata(h)
        if WRITER in meta:
            return meta[WRITER] == self.token
        if self.version and h.get("VersionId"):
            return h["VersionId"] == self.version
        etag = (h.get("ETag") or "").strip('"')
        if self.etag and etag:
            if etag == self.etag:
                return True
            if "-" in self.etag and "-" not in etag:
                return not strict
            return False
        return not strict

    # -- the stream ------------------------------------------------------------------
    def write(self, data) -> int:
        if self.closed:
            raise ValueError("write to a closed S3 object")
        self._buf += data
        if self.sha256 is not None:
            self.sha256.update(data)
        self.size += len(data)
        while len(self._buf) >= self.settings.part_size(self._number + 1) + 1:
            n = self.settings.part_size(self._number + 1)
            chunk = bytes(self._buf[:n])
            del self._buf[:n]
            self._submit(chunk)
        return len(data)

    def flush(self) -> None:
        pass

    def seekable(self) -> bool:
        return False

    # -- parts -------------------------------------------------------------------------
    def _start(self) -> None:
        # (signals wait: an upload the server made is known, to be aborted, and journalled)
        with interrupts_deferred():
            r = retry.call(self.settings, "starting the upload of", self.spec.url, self.s3.create_multipart_upload,
                           Bucket=self.spec.bucket, Key=self.spec.key, Metadata=self.metadata, **self.lock)
            self._upload_id = r["UploadId"]
            self._journal = journal.record(self.settings.home, self.settings.endpoint_shown(), self.spec.bucket,
                                           self.spec.key, self._upload_id)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="s3-part")

    def _submit(self, chunk: bytes) -> None:
        if self._upload_id is None:
            self._start()
        self._number += 1
        self._pending.append(self._pool.submit(self._put_part, self._number, chunk))
        while len(self._pending) >= self.settings.concurrency:
            self._collect(self._pending.popleft())

    def _collect(self, fut) -> None:
        n, etag, md5 = fut.result()
        self._parts[n] = (etag, md5)

    def _put_part(self, n: int, chunk: bytes):
        md5 = hashlib.md5(chunk).digest()
        where = f"part {n} of {self.spec.url}"
        r = retry.call(self.settings, "uploading", where, self.s3.upload_part, Bucket=self.spec.bucket,
                       Key=self.spec.key, UploadId=self._upload_id, PartNumber=n, Body=chunk,
                       ContentMD5=base64.b64encode(md5).decode(), midway=True)
        etag = r.get("ETag", "").strip('"')
        if _MD5.match(etag) and _etag_is_md5(r) and etag != md5.hex():
            raise S3VerifyFailed(f"the server stored {where} with MD5 {etag}, but {md5.hex()} was sent")
        return n, r.get("ETag", ""), md5

    # -- the end -----------------------------------------------------------------------
    def prepare(self) -> None:
        """A multipart upload: the last part sent and every part answered -- all but the
        completion, which makes the object visible.  (An archive smaller than a part
        goes in one PutObject, at close: that is its completion.)  A failure, or a
        signal, leaves it to :meth:`abort`."""
        if self._prepared or self._upload_id is None:
            return
        if self._buf or not self._number:
            self._submit(bytes(self._buf))
            self._buf.clear()
        while self._pending:
            self._collect(self._pending.popleft())
        self._pool.shutdown(wait=True)
        self._prepared = True

    def close(self) -> None:
        """Complete the object and check it; on any failure it is not left visible."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._upload_id is None:
                self._put_whole()
            else:
                self._complete()
        except BaseException:
            self._abort()
            raise

    def _put_whole(self) -> None:
        body = bytes(self._buf)
        md5 = hashlib.md5(body).digest()
        if test_hook is not None:
            test_hook(self, "completing")
        r = self._conditional("writing", self.s3.put_object, Bucket=self.spec.bucket,
                              Key=self.spec.key, Body=body, ContentMD5=base64.b64encode(md5).decode(),
                              Metadata=self.metadata, **self.lock)
        if test_hook is not None:
            test_hook(self, "completed")
        self.etag = r.get("ETag", "").strip('"')
        self.version = r.get("VersionId")
        if _MD5.match(self.etag) and _etag_is_md5(r) and self.etag != md5.hex():
            self._remove_bad()
            raise S3VerifyFailed(f"the server stored {self.spec.url} with MD5 {self.etag}, but {md5.hex()} was "
                                 f"sent: the object was removed")
        self._check_size()

    def _complete(self) -> None:
        self.prepare()
        parts = [{"PartNumber": n, "ETag": self._parts[n][0]} for n in sorted(self._parts)]
        if test_hook is not None:
            test_hook(self, "completing")
        r = self._conditional("completing", self.s3.complete_multipart_upload,
                              Bucket=self.spec.bucket, Key=self.spec.key, UploadId=self._upload_id,
                              MultipartUpload={"Parts": parts}, midway=True)
        if test_hook is not None:
            test_hook(self, "completed")
        journal.forget(self._journal)
        self._upload_id_done = self._upload_id
        self.etag = r.get("ETag", "").strip('"')
        self.version = r.get("VersionId")
        want = hashlib.md5(b"".join(self._parts[n][1] for n in sorted(self._parts))).hexdigest() + f"-{len(parts)}"
        if re.match(r"^[0-9a-f]{32}-\d+$", self.etag) and _etag_is_md5(r) and self.etag != want:
            self._remove_bad()
            raise S3VerifyFailed(f"the server assembled {self.spec.url} with ETag {self.etag}, but the parts sent "
                                 f"make {want}: the object was removed")
        try:
            self._check_size()
        except (S3VerifyFailed, S3Replaced):
            raise                # (another writer's object is not ours to remove)
        except S3Error as exc:
            # completed, then the link failed: the object is there, whole by its ETag but not
            # checked; removed if the server can still be reached, else said so
            gone = self._remove_bad()
            said = type(exc)(f"{exc}; the object had been completed on the server" + (
                ", and was removed" if gone else
                f" and could not be removed: it may be left there unchecked (imsverify -f {self.spec.url} "
                f"checks it; remove it if it is not wanted)"))
            said.outcome_said = True
            raise said from None

    def _check_size(self) -> None:
        # the object now at the key (no VersionId: the current one), which must be ours:
        # another writer's, completed after ours, is neither checked nor removed
        h = self._head_now()
        if h is None or not self._mine(h):
            if h is None:
                what = "no object is there any more"
            else:
                meta = _metadata(h)
                what = f"the object there has ETag {(h.get('ETag') or '?').strip(chr(34))}" + (
                    f" and was written by {meta[WRITER]}" if WRITER in meta else "") + \
                    f"; this run's had {self.etag}"
            raise S3Replaced(f"{self.spec.url} was replaced by another writer after this run uploaded it ({what}): "
                             f"this run's object is not at that name, so it is not a backup; two runs write the "
                             f"same name (another host, or a cron job started twice?): give each its own name, "
                             f"and run again")
        if h.get("ContentLength") != self.size:
            self._remove_bad()
            raise S3VerifyFailed(f"{self.spec.url} holds {h.get('ContentLength')} bytes on the server, {self.size} "
                                 f"were sent: the object was removed")

    def _remove_bad(self) -> bool:
        """Remove the object just written; False when the server could not be asked."""
        try:
            self.s3.delete_object(Bucket=self.spec.bucket, Key=self.spec.key,
                                  **({"VersionId": self.version} if self.version else {}))
        except Exception:      # the error that matters is raised by the caller
            return False
        return True

    def abort(self) -> None:
        """Drop the object: pending parts are cancelled and the upload aborted."""
        self.closed = True
        self._abort()

    def _abort(self) -> None:
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._upload_id is not None and getattr(self, "_upload_id_done", None) != self._upload_id:
            try:
                self.s3.abort_multipart_upload(Bucket=self.spec.bucket, Key=self.spec.key, UploadId=self._upload_id)
                journal.forget(self._journal)
            except Exception:
                pass            # the journal keeps it: the next run aborts it


def clean_stale(s3, settings: Settings) -> list[str]:
    """Abort the journalled uploads of runs that died on this host; their keys."""
    done = []
    for path, e in journal.stale(settings.home, settings.endpoint_shown()):
        try:
            s3.abort_multipart_upload(Bucket=e["bucket"], Key=e["key"], UploadId=e["upload_id"])
        except Exception as exc:
            code = code_of(exc)[0]
            if code not in ("NoSuchUpload", "404", "NoSuchKey", "NoSuchBucket"):
                continue          # try again next time
        journal.forget(path)
        done.append(e["key"])
    return done
