"""Putting layers together: recognise them by their magic bytes and peel them off for
reading; stack them for writing; a device whose file goes through them."""
from __future__ import annotations

import io

from asm.devices import Device
from asm.layers.base import Source, StreamLayer
from asm.layers.errors import LayerDamaged, LayerUnsupported

MAX_LAYERS = 4

#: what each layer's magic bytes look like, for :func:`sniff`
KINDS = ("age", "zstd", "gzip", "xz", "bzip2")


# age (cryptography) and zstd (zstandard) are imported only when a layer needs them:
# a plain backup starts without them (asm.layers.age.ARMOR, asm.layers.zstd.MAGIC)
_AGE_ARMOR = b"-----BEGIN AGE ENCRYPTED FILE-----"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def sniff(head: bytes) -> str | None:
    """The layer the bytes ``head`` (at least 6 of the start) begin, or None (no layer
    ims-asm knows: a plain archive, or something else).  ``age-armor`` is age's
    ASCII armor, recognised to say what to do with it."""
    if head.startswith(b"age-encryption.org/"):
        return "age"
    if head.startswith(_AGE_ARMOR):
        return "age-armor"
    if head[:4] == _ZSTD_MAGIC or (len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18"
                                   and head[0] & 0xF0 == 0x50):
        return "zstd"                   # a frame, or a skippable frame (0x184D2A5?)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return "bzip2"
    return None


class _Plain(StreamLayer):
    """A Source as a readable stream (what is left after the last layer, one pass)."""

    def __init__(self, src: Source):
        super().__init__()
        self.src = src

    def _next(self):
        d = self.src.read_some(1 << 16)
        return d or None


class _StdlibStream(StreamLayer):
    """gzip, xz, bzip2 through the standard library, one pass; a stream cut short or
    corrupt is LayerDamaged, raised only after every byte decoded before it was handed
    on (a copy missing only gzip's CRC and length still holds the whole archive)."""

    def __init__(self, kind: str, src: Source):
        # imported here: only reading such an archive needs them (startup time)
        import bz2
        import gzip
        import lzma
        import zlib
        super().__init__()
        self.layer = kind
        self._errors = (EOFError, OSError, zlib.error, lzma.LZMAError)
        if kind == "gzip":
            self._f = gzip.GzipFile(fileobj=src, mode="rb")
        else:
            self._f = (lzma.LZMAFile if kind == "xz" else bz2.BZ2File)(src, mode="rb")
        self._failed = None

    def _next(self):
        # read1: one decompression step each, whose output is ours before the next step
        # can fail (read(n) loses what it decoded when a later step of the same call raises)
        if self._failed is not None:
            raise self._failed
        parts, got = [], 0
        while got < 1 << 16:
            try:
                d = self._f.read1(1 << 16)
            except self._errors as exc:
                self._failed = LayerDamaged(f"{self.layer}: the stream is cut short or corrupt ({exc})")
                if not parts:
                    raise self._failed from None
                break
            if not d:
                break
            parts.append(d)
            got += len(d)
        return b"".join(parts) or None


def _seekable_size(raw) -> int | None:
    """The size of a raw stream we may seek in from its start, else None."""
    try:
        if not raw.seekable() or raw.tell() != 0:
            return None
        size = raw.seek(0, io.SEEK_END)
        raw.seek(0)
        return size
    except (AttributeError, OSError, ValueError):
        return None


def _read_head(raw, n: int = 64) -> bytes:
    raw.seek(0)
    parts, got = [], 0
    while got < n:
        d = raw.read(n - got)
        if not d:
            break
        parts.append(d)
        got += len(d)
    raw.seek(0)
    return b"".join(parts)


def open_read(raw, identities=(), record_size: int = 10240):
    """Peel the layers off ``raw`` (outermost first): returns (stream, [layer names]).

    ``stream`` is seekable when ``raw`` is and every layer allows it (age always;
    zstd when its seek table is there); otherwise it is read in one pass.
    ``identities`` is a list of :class:`asm.layers.age.Identity` or a callable giving
    one, called only when an age layer is found (so an identity file that is missing
    or unreadable matters only for encrypted archives).  Raises IdentityNeeded,
    KeyProblem, LayerUnsupported or LayerDamaged (all OSErrors and DeviceErrors).

    A layer's module (and cryptography or zstandard under it) is imported only when that
    layer is found: a plain archive's restore starts without them."""
    names: list[str] = []
    stack: list = []
    cur = raw
    size = _seekable_size(raw)
    src = None
    for _ in range(MAX_LAYERS + 1):
        if size is not None:
            head = _read_head(cur)
        else:
            if src is None:
                src = Source(cur, record_size if cur is raw else 1 << 16)
            head = src.peek(64)
        kind = sniff(head)
        if kind is None:
            break
        if len(names) == MAX_LAYERS:
            raise LayerUnsupported(f"more than {MAX_LAYERS} layers ({', '.join(names)}, {kind}, ...): "
                                   f"this is no archive ims-asm wrote")
        if kind == "age-armor":
            raise LayerUnsupported("the archive is age-encrypted in ASCII armor (age -a), which ims-asm does not "
                                   "read: run 'age -d -i KEY FILE | imsrestore -f - ...'")
        names.append(kind)
        if kind == "age":
            from asm.layers import age
            ids = identities() if callable(identities) else list(identities)
            if size is not None:
                cur = age.AgeSeekable(cur, size, ids, record_size if cur is raw else 1 << 16)
                size = cur.size
            else:
                cur, src = age.AgeStream(src, ids), None
            stack.append(cur)
            continue
        if kind == "zstd":
            from asm.layers import zstd
            index = zstd.read_seek_table(cur, size) if size is not None else None
            if index is not None:
                cur = zstd.ZstdSeekable(cur, index)
                size = cur.size
                stack.append(cur)
                continue
            if size is not None:
                cur.seek(0)
                src = Source(cur, record_size if cur is raw else 1 << 16)
                size = None
            cur, src = zstd.ZstdStream(src), None
            stack.append(cur)
            continue
        if size is not None:
            cur.seek(0)
            src = Source(cur, record_size if cur is raw else 1 << 16)
            size = None
        cur, src = _StdlibStream(kind, src), None
        stack.append(cur)
    if size is not None:
        cur.seek(0)
    elif src is not None:           # the last bytes peeked are still in the source
        cur = _Plain(src)
    if stack:
        cur.layer_stack = stack
    return cur, names


def read_to_end(stream) -> list[str]:
    """Read what :func:`open_read` gave to the end of its layers (after the archive's own
    end: a check of the whole file); returns the damage its layers read around (see
    ``read_around``), raises the LayerError of damage they could not."""
    while stream.read(1 << 20):
        pass
    return [note for layer in getattr(stream, "layer_stack", ()) for note in layer.read_around]


# ------------------------------------------------------------------------------ writing

class _Reblock:
    """The bottom of the stack: what the layers write goes to the device in whole
    records (one write() each, as a tape needs); the last one may be short."""

    def __init__(self, raw, record_size: int):
        self.raw = raw
        self.rs = record_size
        self._buf = bytearray()
        self.written = 0

    def _emit(self, rec) -> None:
        n = self.raw.write(rec)
        if n is not None and n < len(rec):
            mv = memoryview(rec)
            while n < len(rec):
                k = self.raw.write(mv[n:].tobytes())
                if not k:
                    raise OSError("device accepted no more bytes (short write)")
                n += k
        self.written += len(rec)

    def write(self, data) -> int:
        buf = self._buf
        buf += data
        if len(buf) >= self.rs:
            mv = memoryview(buf)
            k = 0
            while len(buf) - k >= self.rs:
                self._emit(mv[k:k + self.rs].tobytes())
                k += self.rs
            mv.release()
            del buf[:k]
        return len(data)

    def flush(self) -> None:
        f = getattr(self.raw, "flush", None)
        if f:
            f()

    def close(self) -> None:
        if self._buf:
            self._emit(bytes(self._buf))
            self._buf.clear()
        self.flush()


class LayeredWriter:
    """archive bytes -> [zstd] -> [age] -> whole records -> ``raw``.  ``close()``
    finishes every layer (the last frame and seek table, the last sealed chunk);
    ``abandon()`` stops them after a failure."""

    def __init__(self, raw, compress_level: int | None, recipients: list, threads: int = 0,
                 record_size: int = 10240):
        self._sink = _Reblock(raw, record_size)
        self._stages: list = [self._sink]
        top = self._sink
        self.names: list[str] = []
        if recipients:
            from asm.layers import age
            top = age.AgeWriter(top, recipients)
            self._stages.insert(0, top)
            self.names.insert(0, "age")
        if compress_level is not None:
            from asm.layers import zstd
            top = zstd.ZstdWriter(top, compress_level, threads)
            self._stages.insert(0, top)
            self.names.insert(0, f"zstd:{compress_level}")
        self._top = top
        self.bytes_in = 0

    def write(self, data) -> int:
        self.bytes_in += len(data)
        return self._top.write(data)

    def flush(self) -> None:
        self._sink.flush()

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        for s in self._stages:
            s.close()

    def abandon(self) -> None:
        for s in self._stages:
            ab = getattr(s, "abandon", None)
            if ab:
                ab()

    @property
    def bytes_out(self) -> int:
        return self._sink.written


class LayeredDevice(Device):
    """A device whose ``file`` goes through layers; ``close(ok)`` finishes them before
    the device commits (a failure there abandons the device: no half archive)."""

    def __init__(self, inner: Device, file, names: list[str], writing: bool):
        super().__init__(inner.spec, file, seekable=bool(getattr(file, "seekable", lambda: False)()),
                         kind=inner.kind)
        self.inner = inner
        self.layers = names
        self.writing = writing
        self._finished = False      # the layers' last frames written (prepare)
        self._gone = False          # abandoned by a failed prepare: closed already

    @property
    def puts_in_place(self) -> bool:
        return self.inner.puts_in_place

    def prepare(self) -> None:
        """The layers finished (their last frames written), then the device prepared; a
        failure abandons the device (no half archive)."""
        if self.writing and not self._finished:
            try:
                self.file.close()
                self._finished = True
                self.inner.prepare()
            except BaseException:
                self._gone = True
                self.file.abandon()
                self.inner.close(ok=False)
                raise

    def close(self, ok: bool = True) -> None:
        if self._gone:
            return
        if self.writing and not self._finished:
            if ok:
                self.prepare()              # (a failure there has abandoned the device)
            else:
                try:
                    self.file.abandon()
                except BaseException:
                    self.inner.close(ok=False)
                    raise
        self.inner.close(ok=ok)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def layered_write(device: Device, compress_level: int | None, recipients: list, threads: int = 0,
                  record_size: int = 10240) -> Device:
    """A LayeredDevice writing through zstd (``compress_level``) and/or age
    (``recipients``) to ``device`` (asm.layers.wrap_write: only when there is a layer)."""
    try:
        w = LayeredWriter(device.file, compress_level, recipients, threads, record_size)
    except BaseException:
        device.close(ok=False)
        raise
    return LayeredDevice(device, w, w.names, writing=True)


def wrap_read(device: Device, identities=(), record_size: int = 10240) -> Device:
    """``device`` with its layers peeled off (a LayeredDevice; ``layers`` names them,
    empty for a plain archive).  Closes the device when that fails."""
    try:
        f, names = open_read(device.file, identities, record_size)
    except BaseException:
        device.close(ok=False)
        raise
    if not names and f is device.file:
        device.layers = []
        return device
    return LayeredDevice(device, f, names, writing=False)
