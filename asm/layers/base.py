"""What every layer's reading side shares: a source that reads its lower layer in whole
records and can peek, and the two shapes of a decoded stream (one pass, or seekable
over chunks whose plaintext offsets are known)."""
from __future__ import annotations

import io

from asm.layers.errors import LayerDamaged


class Source:
    """The lower layer, read in multiples of ``record_size`` (a tape gives whole blocks
    only), with ``peek`` for magic bytes and for age's look-ahead at the last chunk."""

    def __init__(self, raw, record_size: int = 10240):
        self.raw = raw
        self.record_size = record_size
        self._buf = bytearray()
        self._eof = False
        self.consumed = 0                 # bytes handed out so far

    def _more(self, want: int) -> bool:
        if self._eof:
            return False
        rs = self.record_size
        n = max(rs, (want + rs - 1) // rs * rs)
        data = self.raw.read(n)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def peek(self, n: int) -> bytes:
        while len(self._buf) < n and self._more(n - len(self._buf)):
            pass
        return bytes(self._buf[:n])

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, fewer only at the end of the data."""
        while len(self._buf) < n and self._more(n - len(self._buf)):
            pass
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self.consumed += len(out)
        return out

    def read_some(self, n: int) -> bytes:
        """What is buffered (or one more read), at most ``n`` bytes; b'' at the end."""
        if not self._buf:
            self._more(n)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self.consumed += len(out)
        return out

    def unread(self, data: bytes) -> None:
        """Give back bytes read too far (a decompressor's input past its frame)."""
        self._buf[:0] = data
        self.consumed -= len(data)

    def readline(self, limit: int) -> bytes:
        """A line with its b'\\n', or what is there (at most ``limit`` bytes)."""
        start = 0
        while True:
            i = self._buf.find(b"\n", start)
            if i >= 0:
                return self.read(i + 1)
            if len(self._buf) >= limit:
                return self.read(limit)
            start = len(self._buf)
            if not self._more(1):
                return self.read(len(self._buf))

    def at_end(self) -> bool:
        return not self.peek(1)


class _Layer(io.RawIOBase):
    """Common surface: a readable binary stream with ``layer`` (its name) and
    ``read_around``: damage the layer found and read around without losing a byte of what
    it decodes (a zstd seek table that proved wrong), one line each.  A restore is whole
    all the same; a check of the file must still say it is damaged."""

    layer = ""
    read_around: list = []          # (an instance that finds some sets its own list)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        parts = []
        while True:
            d = self.read(1 << 20)
            if not d:
                return b"".join(parts)
            parts.append(d)


class StreamLayer(_Layer):
    """One pass: ``_next()`` gives the next piece of plaintext, None at the end."""

    def __init__(self):
        super().__init__()
        self._buf = b""
        self._off = 0
        self._done = False
        self._pos = 0
        self._error = None

    def _next(self) -> bytes | None:
        raise NotImplementedError

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return self.readall()
        parts = []
        want = n
        while want > 0:
            avail = len(self._buf) - self._off
            if avail:
                take = self._buf[self._off:self._off + want]
                self._off += len(take)
                want -= len(take)
                parts.append(take)
                continue
            if self._done:
                break
            if self._error is not None:
                raise self._error
            try:
                nxt = self._next()
            except Exception as exc:
                if not parts:
                    raise
                self._error = exc          # what checked out is released; the error comes next
                break
            if nxt is None:
                self._done = True
                break
            self._buf, self._off = nxt, 0
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self._pos += len(out)
        return out


class SeekableLayer(_Layer):
    """Random access over chunks: ``_locate(pos)`` names the chunk holding plaintext
    offset ``pos`` and where it starts, ``_load(i)`` decodes it (one chunk cached)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self._pos = 0
        self._chunk = None
        self._cstart = 0
        self._cdata = b""

    def _locate(self, pos: int) -> tuple[int, int]:
        raise NotImplementedError

    def _load(self, i: int) -> bytes:
        raise NotImplementedError

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if pos < 0:
            raise OSError(22, "negative seek position")
        self._pos = pos
        return pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self.size - self._pos)
        parts = []
        while n > 0 and self._pos < self.size:
            if self._chunk is None or not self._cstart <= self._pos < self._cstart + len(self._cdata):
                i, start = self._locate(self._pos)
                try:
                    data = self._load(i)
                except Exception:
                    if parts:              # released now; the error comes with the next read
                        break
                    raise
                if not data:
                    raise LayerDamaged(f"{self.layer}: chunk {i} holds no data where the index says it does")
                self._chunk, self._cstart, self._cdata = i, start, data
            k = self._pos - self._cstart
            take = self._cdata[k:k + n]
            parts.append(take)
            self._pos += len(take)
            n -= len(take)
        return parts[0] if len(parts) == 1 else b"".join(parts)
