"""zstd compression in independent frames with a seek table (the zstd "seekable
format", contrib/seekable_format in the zstd sources), on the zstandard library.

Written: the archive is cut into frames of :data:`FRAME` bytes, each compressed on its
own (with its content size and checksum) by a pool of threads (zstandard releases the
GIL), written in order; the last thing in the file is a skippable frame holding the
table of (compressed, decompressed) sizes and the seekable-format footer.  The
standard ``zstd -d`` reads the file as it reads any multi-frame file (skippable
frames are skipped), and ``zstd`` output of any kind is read here.

Read: with the seek table and a seekable lower layer (a file, an S3 object, a
seekable age layer), :class:`ZstdSeekable` decompresses only the frames a read
touches; without it (a pipe, ``zstd`` output, which has no table) :class:`ZstdStream`
decompresses in one pass.  Memory: a frame at a time when seeking; in one pass the
input is fed in small pieces, so even a crafted stream of extreme ratio stays within
tens of MiB.  A stream cut inside a frame, a frame whose checksum fails, or bytes that
are not a frame are :class:`~asm.layers.errors.LayerDamaged`.
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import struct
import threading
from array import array
from bisect import bisect_right

import zstandard

from asm.layers.base import SeekableLayer, Source, StreamLayer
from asm.layers.errors import LayerDamaged

MAGIC = b"\x28\xb5\x2f\xfd"
SKIPPABLE = 0x184D2A50            # ... 0x184D2A5F
SEEKTABLE_MAGIC = 0x184D2A5E
SEEKABLE_FOOTER = 0x8F92EAB1
FRAME = 1 << 20                   # bytes of archive per frame (see bench/RESULTS.md for the choice)
DEFAULT_LEVEL = 3
FEED = 64 * 1024                  # compressed bytes given to the decompressor at once
FEED_SMALL = 1024                 # ... after an extreme expansion
BIG_OUTPUT = 8 << 20


def is_zstd(head: bytes) -> bool:
    if head[:4] == MAGIC:
        return True
    return len(head) >= 4 and (struct.unpack("<I", head[:4])[0] & 0xFFFFFFF0) == SKIPPABLE


class ZstdWriter:
    """Compresses what is written to ``out`` in independent frames, ``threads`` at once
    (1: in the calling thread); ``close()`` writes the last frame and the seek table."""

    layer = "zstd"

    def __init__(self, out, level: int = DEFAULT_LEVEL, threads: int = 0, frame: int = FRAME):
        self.out = out
        self.level = level
        self.frame = frame
        self.threads = threads or os.cpu_count() or 1
        self._buf = bytearray()
        self._table = array("I")
        self._local = threading.local()
        self._pool = None
        self._pending: collections.deque = collections.deque()
        if self.threads > 1:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="zstd")
        self.closed = False
        self.bytes_in = 0
        self.bytes_out = 0

    def _compress(self, data: bytes) -> tuple[bytes, int]:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.level, write_checksum=True,
                                                         write_content_size=True)
        return c.compress(data), len(data)

    def _emit(self, result: tuple[bytes, int]) -> None:
        comp, n = result
        self.out.write(comp)
        self._table.append(len(comp))
        self._table.append(n)
        self.bytes_out += len(comp)

    def _submit(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self._pool is None:
            self._emit(self._compress(data))
            return
        self._pending.append(self._pool.submit(self._compress, data))
        # bounded: at most threads+1 frames in flight (memory ~ 2 x frame each)
        while len(self._pending) > self.threads:
            self._emit(self._pending.popleft().result())

    def write(self, data) -> int:
        buf = self._buf
        buf += data
        if len(buf) >= self.frame:
            mv = memoryview(buf)
            k = 0
            while len(buf) - k >= self.frame:
                self._submit(mv[k:k + self.frame].tobytes())
                k += self.frame
            mv.release()
            del buf[:k]
        return len(data)

    def flush(self) -> None:
        f = getattr(self.out, "flush", None)
        if f:
            f()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self._buf or not self._table and not self._pending:
                self._submit(bytes(self._buf))
                self._buf.clear()
            while self._pending:
                self._emit(self._pending.popleft().result())
            self.out.write(seek_table(self._table))
            self.flush()
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Stop the threads (after a failure: what is pending is dropped)."""
        if self._pool is not None:
            for f in self._pending:
                f.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=True)
            self._pool = None


def seek_table(table) -> bytes:
    """The skippable frame of the seekable format: entries without checksums (every
    frame carries its own), then the footer."""
    n = len(table) // 2
    body = struct.pack(f"<{len(table)}I", *table) + struct.pack("<IBI", n, 0, SEEKABLE_FOOTER)
    return struct.pack("<II", SEEKTABLE_MAGIC, len(body)) + body


def read_seek_table(raw, size: int):
    """(compressed offsets, decompressed offsets) of every frame, each with one entry
    more than there are frames, from the seek table at the end; None when there is no
    valid table (the file is then read in one pass)."""
    if size < 17:
        return None
    raw.seek(size - 9)
    foot = raw.read(9)
    if len(foot) != 9:
        return None
    n, desc, magic = struct.unpack("<IBI", foot)
    if magic != SEEKABLE_FOOTER or desc & 0x7F:         # reserved and unused bits: written 0
        return None
    esize = 12 if desc & 0x80 else 8
    tsize = n * esize + 9
    start = size - 8 - tsize
    if start < 0 or n == 0:
        return None
    raw.seek(start)
    hdr = raw.read(8)
    if len(hdr) != 8 or struct.unpack("<II", hdr) != (SEEKTABLE_MAGIC, tsize):
        return None
    entries = raw.read(n * esize)
    if len(entries) != n * esize:
        return None
    coff = array("Q", [0])
    doff = array("Q", [0])
    for i in range(n):
        c, d = struct.unpack_from("<II", entries, i * esize)
        coff.append(coff[-1] + c)
        doff.append(doff[-1] + d)
    if coff[-1] != start:
        return None
    return coff, doff


class _TableWrong(LayerDamaged):
    """A frame decompressed to another size than the seek table says."""


class ZstdSeekable(SeekableLayer):
    """Random access through the seek table: a read decompresses only its frames.  A
    seek table whose sizes prove wrong (a damaged entry: its frame decompresses to
    another size) is replaced by the frames' own, found in one pass over the file; a
    frame that is itself damaged is damage (LayerDamaged)."""

    layer = "zstd"

    def __init__(self, raw, index):
        self.raw = raw
        self._coff, self._doff = index
        self._d = zstandard.ZstdDecompressor()
        self._rebuilt = False
        self._checked = 0                  # frames whose table sizes were checked: 0 .. _checked - 1
        super().__init__(self._doff[-1])

    def read(self, n: int = -1) -> bytes:
        at = self._pos
        try:
            out = super().read(n)
            if (n is None or n < 0 or len(out) < n) and not self._rebuilt and \
                    self._checked < len(self._coff) - 1:
                # an end of the data the table's total says: trusted only once the size of
                # every frame was checked (a total too small would end reads early)
                self._check_before(len(self._coff) - 1)
            return out
        except _TableWrong as exc:
            if self._rebuilt:
                raise
            self._rebuild()
            # the frames are whole (the pass read them all): the table was wrong
            self.read_around = [f"zstd: the seek table is damaged ({exc}); the frames' own sizes were used"]
            self._pos = at
            return super().read(n)

    def _rebuild(self) -> None:
        """The offsets of every frame, from the frames themselves: one pass of
        :class:`ZstdStream`, which says where each frame ends (LayerDamaged when a
        frame is damaged)."""
        coff, doff = array("Q", [0]), array("Q", [0])

        def frame_end(compressed: int, out: int) -> None:
            coff.append(compressed)
            doff.append(doff[-1] + out)

        self.raw.seek(0)
        stream = ZstdStream(Source(self.raw), on_frame=frame_end)
        while stream._next() is not None:
            pass
        self._coff, self._doff = coff, doff
        self.size = doff[-1]
        self._chunk = None
        self._rebuilt = True
        self._checked = len(coff) - 1

    def _locate(self, pos: int) -> tuple[int, int]:
        i = bisect_right(self._doff, pos) - 1
        while self._doff[i + 1] == self._doff[i]:      # an empty frame: take the next
            i += 1
        return i, self._doff[i]

    def _read_at(self, off: int, n: int, i: int) -> bytes:
        self.raw.seek(off)
        out = b""
        while len(out) < n:
            d = self.raw.read(n - len(out))
            if not d:
                raise LayerDamaged(f"zstd: frame {i} is cut short (the file shrank while it was read)")
            out += d
        return out

    def _check_before(self, i: int) -> None:
        """The table's sizes of the frames before ``i`` place frame ``i``: each is checked
        against its frame header's content size (read once) before ``i`` is trusted.
        Frames read in order cost nothing more; a frame skipped costs its header."""
        for j in range(self._checked, i):
            want = self._doff[j + 1] - self._doff[j]
            head = self._read_at(self._coff[j], min(18, self._coff[j + 1] - self._coff[j]), j)
            try:
                got = zstandard.get_frame_parameters(head).content_size
            except zstandard.ZstdError:
                got = None
            if got is None or got >= zstandard.CONTENTSIZE_ERROR:
                got = len(self._decode(j))          # no size in its header: decompressed
            if got != want:
                raise _TableWrong(f"zstd: frame {j} holds {got} bytes, its seek table says {want}")
        self._checked = max(self._checked, i)

    def _decode(self, i: int) -> bytes:
        comp = self._read_at(self._coff[i], self._coff[i + 1] - self._coff[i], i)
        obj = self._d.decompressobj()
        try:
            data = obj.decompress(comp)
        except zstandard.ZstdError as exc:
            # the frame, or the table's offsets of it (the one pass of _rebuild tells which)
            raise _TableWrong(f"zstd: frame {i} (at {self._doff[i]} bytes of the archive) is corrupt: {exc}") \
                from None
        if not obj.eof or obj.unused_data:
            raise _TableWrong(f"zstd: frame {i} does not end where its seek table says")
        return data

    def _load(self, i: int) -> bytes:
        self._check_before(i)
        data = self._decode(i)
        size = self._doff[i + 1] - self._doff[i]
        if len(data) != size:
            raise _TableWrong(f"zstd: frame {i} holds {len(data)} bytes, its seek table says {size}")
        self._checked = max(self._checked, i + 1)
        return data


class ZstdStream(StreamLayer):
    """One pass over any zstd stream: frames and skippable frames in sequence; the end
    of the input must be the end of a frame.  ``on_frame(end, size)``, when given, is
    told where each frame ends in the input and how many bytes it held.  A seek table
    (the skippable frame of the seekable format) is checked against the frames read
    since the previous one: one that does not describe them is ``read_around`` (it
    holds nothing of the plaintext)."""

    layer = "zstd"

    def __init__(self, src: Source, on_frame=None):
        super().__init__()
        self.src = src
        self._d = zstandard.ZstdDecompressor()
        self._obj = None
        self._started = False
        self._feed = FEED
        self._on_frame = on_frame
        self._frame_out = 0
        self.frames = 0
        self._frame_start = 0
        self._skippable = False
        self._sizes = array("Q")        # (compressed, decompressed) of each frame since the last table
        self.read_around = []

    def _table(self) -> bool:
        """At the start of a frame: a seek table, taken here (checked against the frames
        before it) when its size is one such a table of them can have; else False."""
        head = self.src.peek(8)
        if len(head) < 8:
            return False
        magic, size = struct.unpack("<II", head)
        if magic & 0xFFFFFFF0 != SKIPPABLE:
            return False
        self._skippable = True
        n = len(self._sizes) // 2
        if magic != SEEKTABLE_MAGIC:
            # another skippable frame, or our table with its magic damaged (one bit makes
            # it another skippable magic, which zstd skips unread): a frame of a table's
            # size that ends with the table's footer is the latter
            if size in (n * 8 + 9, n * 12 + 9):
                data = self.src.peek(8 + size)
                if len(data) == 8 + size and struct.unpack_from("<I", data, len(data) - 4)[0] == SEEKABLE_FOOTER:
                    self.read_around.append(f"zstd: the seek table after frame {self.frames} is damaged (its "
                                            f"frame magic is 0x{magic:08x}, not 0x{SEEKTABLE_MAGIC:08x})")
            return False
        if size not in (n * 8 + 9, n * 12 + 9):
            self.read_around.append(f"zstd: the seek table after frame {self.frames} is damaged: it is "
                                    f"{size} bytes long, a table of {n} frames is {n * 8 + 9}")
            return False                # skipped as any skippable frame is (a cut one is damage)
        data = self.src.read(8 + size)
        if len(data) < 8 + size:
            raise LayerDamaged(f"zstd: the stream is cut short inside frame {self.frames} (the seek table, "
                               f"after {self.src.consumed} compressed bytes)")
        count, desc, footer = struct.unpack_from("<IBI", data, len(data) - 9)
        esize = 12 if desc & 0x80 else 8
        got = array("Q")
        if size == n * esize + 9:
            for i in range(n):
                got.extend(struct.unpack_from("<II", data, 8 + i * esize))
        if footer != SEEKABLE_FOOTER:
            what = "its footer magic is wrong"
        elif desc & 0x7F or size != n * esize + 9:
            what = f"its descriptor 0x{desc:02x} is wrong"
        elif count != n:
            what = f"it counts {count} frames, {n} were read"
        elif got != self._sizes:
            i = next(i for i in range(len(got)) if got[i] != self._sizes[i])
            what = (f"it gives frame {i // 2} {got[i]} {('compressed', 'decompressed')[i % 2]} bytes, "
                    f"the frame has {self._sizes[i]}")
        else:
            what = None
        if what:
            self.read_around.append(f"zstd: the seek table after frame {self.frames} is damaged ({what})")
        self._sizes = array("Q")
        self.frames += 1
        self._skippable = False
        if self._on_frame is not None:
            self._on_frame(self.src.consumed, 0)
        return True

    def _padding(self) -> bool:
        """Zeros from here (no frame starts with them) to the end of the input: a tape's
        or dd's padding after the last frame, read as the end of the stream."""
        at = self.src.consumed
        while True:
            data = self.src.read_some(1 << 20)
            if not data:
                return True
            if data.count(0) != len(data):
                raise LayerDamaged(f"zstd: the bytes after frame {self.frames} (at {at} compressed bytes) "
                                   "are zeros, then not zeros: not zstd")

    def _next(self) -> bytes | None:
        while True:
            if self._obj is None:
                if self.src.at_end():
                    return None
                self._skippable = False
                if self._table():
                    continue
                if self.src.peek(4) == b"\0\0\0\0" and self._padding():
                    return None
                self._obj = self._d.decompressobj()
                self._started = False
                self._frame_start = self.src.consumed
            data = self.src.read_some(self._feed)
            if not data:
                raise LayerDamaged(f"zstd: the stream is cut short inside frame {self.frames} (after "
                                   f"{self.src.consumed} compressed bytes)")
            try:
                out = self._obj.decompress(data)
            except zstandard.ZstdError as exc:
                raise LayerDamaged(f"zstd: frame {self.frames} (at {self.src.consumed - len(data)} compressed "
                                   f"bytes) is corrupt or not zstd: {exc}") from None
            self._started = True
            self._frame_out += len(out)
            if len(out) > BIG_OUTPUT:
                self._feed = FEED_SMALL
            if self._obj.eof:
                rest = self._obj.unused_data
                if rest:
                    self.src.unread(rest)
                self._obj = None
                self.frames += 1
                if not self._skippable:
                    self._sizes.extend((self.src.consumed - self._frame_start, self._frame_out))
                if self._on_frame is not None:
                    self._on_frame(self.src.consumed, self._frame_out)
                self._frame_out = 0
            if out:
                return out
