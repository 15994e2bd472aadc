"""Reading an object: seekable through ranged GETs.  A read streams one open-ended
ranged GET (``Range: bytes=POS-``) for as long as the reads are in sequence; a seek
elsewhere (a partial restore skipping data, a link's first copy) starts a new one.
A GET that breaks off is resumed at the byte where it stopped (``s3.retries`` times).

Every GET must answer from the version of the object that was opened: it is sent with
``If-Match`` the ETag the object had then, and its answer's ETag and size are checked
too (a server may ignore If-Match: ``rclone serve s3`` does).  An object replaced while
it is read (tonight's backup to the same key) is :class:`S3ObjectChanged`, exit 3, and
no byte of the new object is ever returned spliced into the old one's."""
from __future__ import annotations

import io
import time

from plugins.s3 import retry
from plugins.s3.errors import S3Error, S3LinkLost, S3NotFound, S3ObjectChanged, code_of, is_transient, translate
from plugins.s3.settings import Settings
from plugins.s3.spec import S3Spec

SKIP_AHEAD = 1 << 20          # a forward seek this short reads on instead of a new GET


class S3Reader(io.RawIOBase):
    def __init__(self, s3, settings: Settings, spec: S3Spec):
        super().__init__()
        self.s3 = s3
        self.settings = settings
        self.spec = spec
        try:
            h = retry.call(settings, "opening", spec.url, s3.head_object, Bucket=spec.bucket, Key=spec.key)
        except S3Error as exc:
            # (by its class: the text names the endpoint, bucket and key, and a port 40473
            # or a name holding "404" is not a missing object)
            if isinstance(exc, S3NotFound):
                raise S3NotFound(f"{spec.url} does not exist at {settings.endpoint_shown() or 'AWS'}: check the "
                                 f"bucket and key (-f argument)") from None
            raise
        self.size = h["ContentLength"]
        self.etag = h.get("ETag")
        self.metadata = h.get("Metadata") or {}
        self._pos = 0
        self._body = None
        self._body_pos = 0
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        pos = {io.SEEK_SET: offset, io.SEEK_CUR: self._pos + offset, io.SEEK_END: self.size + offset}[whence]
        if pos < 0:
            raise OSError(22, "negative seek position")
        self._pos = pos
        return pos

    def _drop(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:
                pass
            self._body = None

    def _open(self) -> None:
        self._drop()
        args = {"Bucket": self.spec.bucket, "Key": self.spec.key, "Range": f"bytes={self._pos}-"}
        if self.etag:
            args["IfMatch"] = self.etag
        try:
            r = self.s3.get_object(**args)
        except Exception as exc:
            code, status, _ = code_of(exc)
            if status == 412 or code == "PreconditionFailed":
                raise self._changed(f"the server refused a GET of the version opened, ETag {self.etag}") from None
            raise
        self.requests += 1
        etag, total = r.get("ETag"), _total(r.get("ContentRange"))
        if self.etag and etag and _tag(etag) != _tag(self.etag):
            r["Body"].close()
            raise self._changed(f"its ETag is now {etag}, it was {self.etag} when opened")
        if total is not None and total != self.size:
            r["Body"].close()
            raise self._changed(f"it is now {total} bytes, it was {self.size} when opened")
        if not self.etag and etag:
            self.etag = etag             # a HEAD without an ETag: pin the first GET's
        self._body = r["Body"]
        self._body_pos = self._pos

    def _changed(self, how: str) -> S3ObjectChanged:
        return S3ObjectChanged(f"{self.spec.url} changed while it was read ({how}; at byte {self._pos} of "
                               f"{self.size}): it was replaced, e.g. by a newer backup to the same key; nothing "
                               f"of the new object was used: run again to read the object as it is now")

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._pos
        n = min(n, self.size - self._pos)
        if n <= 0:
            return b""
        if self._body is not None and self._pos != self._body_pos:
            ahead = self._pos - self._body_pos
            if 0 < ahead <= SKIP_AHEAD:
                want, self._pos = self._pos, self._body_pos
                while self._pos < want:
                    if not self.read(min(want - self._pos, 1 << 16)):
                        break
            else:
                self._drop()
        attempt = 0
        while True:
            try:
                if self._body is None:
                    self._open()
                data = self._body.read(n)
                if not data:
                    raise S3LinkLost(f"{self.spec.url} ended at byte {self._pos} of {self.size}")
                self._pos += len(data)
                self._body_pos = self._pos
                return data
            except Exception as exc:
                self._drop()
                if attempt >= self.settings.retries or not (is_transient(exc) or isinstance(exc, S3LinkLost)):
                    if isinstance(exc, S3Error):
                        raise
                    raise translate(exc, f"reading (at byte {self._pos} of {self.size})", self.spec.url,
                                    self.settings.endpoint_shown()) from None
                time.sleep(min(10.0, 0.5 * (2 ** attempt)))
                attempt += 1

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._drop()
        super().close()


def _tag(etag: str) -> str:
    """An ETag as compared: a HEAD and a GET may quote it differently."""
    return etag.strip().removeprefix("W/").strip('"')


def _total(content_range: str | None) -> int | None:
    """The object's size from a ranged GET's ``Content-Range: bytes A-B/TOTAL``."""
    tail = (content_range or "").rpartition("/")[2].strip()
    return int(tail) if tail.isdigit() else None
