"""Record blocking: the archive moves in records of 512 x blocking_factor bytes.

The writer hands the device exactly one record per write() (what tar does, and
what tape drives need: one write is one tape block). The reader asks for whole
records and tolerates short reads (pipes, tapes in variable-block mode).
"""
import io

from .spec import BLOCK, MAX_BLOCKING_FACTOR


def _check_bf(blocking_factor):
    if not isinstance(blocking_factor, int) or not 1 <= blocking_factor <= MAX_BLOCKING_FACTOR:
        raise ValueError(f"blocking factor must be an integer 1..{MAX_BLOCKING_FACTOR}, not {blocking_factor!r}")
    return BLOCK * blocking_factor


class RecordWriter:
    """Buffers archive bytes and writes them to raw one whole record at a time."""

    def __init__(self, raw, blocking_factor=20):
        self.raw = raw
        self.record_size = _check_bf(blocking_factor)
        self._buf = bytearray()
        self.offset = 0          # archive offset of the next byte written
        self.closed = False

    def _emit(self, rec):
        raw = self.raw
        n = raw.write(rec)
        if n is not None and n < len(rec):     # short write on a raw device or pipe
            mv = memoryview(rec)
            while n < len(rec):
                k = raw.write(mv[n:].tobytes())
                if not k:
                    raise OSError("device accepted no more bytes (short write)")
                n += k

    def write(self, data):
        if self.closed:
            raise ValueError("write to a closed RecordWriter")
        n = len(data)
        self.offset += n
        buf = self._buf
        rs = self.record_size
        if len(buf) + n < rs:
            buf += data
            return
        mv = memoryview(data)
        i = 0
        if buf:
            i = rs - len(buf)
            buf += mv[:i]
            self._emit(bytes(buf))
            buf.clear()
        end = n - rs
        while i <= end:
            self._emit(mv[i:i + rs].tobytes())
            i += rs
        if i < n:
            buf += mv[i:]

    def pad_block(self):
        """Zero-fill up to the next 512-byte boundary."""
        r = -self.offset % BLOCK
        if r:
            self.write(bytes(r))

    def tell(self):
        return self.offset

    def flush(self):
        """Flush raw; a partial record stays buffered (it is only written at close)."""
        f = getattr(self.raw, "flush", None)
        if f is not None:
            f()

    def close(self):
        """Zero-pad and write the last record, flush raw (raw itself stays open)."""
        if self.closed:
            return
        if self._buf:
            self._buf += bytes(self.record_size - len(self._buf))
            self._emit(bytes(self._buf))
            self._buf.clear()
        self.flush()
        self.closed = True


class RecordReader:
    """Reads archive bytes from raw in whole records; seek() when raw can."""

    def __init__(self, raw, blocking_factor=20):
        self.raw = raw
        self.record_size = _check_bf(blocking_factor)
        self._buf = b""
        self._pos = 0            # read position inside _buf
        self._base = 0           # archive offset of _buf[0]
        self.eof = False
        try:
            self.seekable = bool(raw.seekable())
        except (AttributeError, OSError, ValueError):
            self.seekable = False
        self._start = 0
        self.size = None         # archive size, for a seekable raw
        if self.seekable:
            try:
                self._start = raw.tell()
                self.size = raw.seek(0, io.SEEK_END) - self._start
                raw.seek(self._start)
            except OSError:
                self.seekable = False
                self.size = None

    def _fill(self, n):
        """Read n bytes from raw, looping over short reads; fewer only at EOF."""
        raw = self.raw
        data = raw.read(n)
        if data is None:
            data = b""
        if len(data) == n or not data:
            if not data:
                self.eof = True
            return data
        parts = [data]
        got = len(data)
        while got < n:
            d = raw.read(n - got)
            if not d:
                self.eof = True
                break
            parts.append(d)
            got += len(d)
        return b"".join(parts)

    def tell(self):
        return self._base + self._pos

    def read(self, n):
        """Up to n bytes; fewer only at end of data."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if n <= avail:
            self._pos = pos + n
            return buf[pos:pos + n]
        parts = [buf[pos:]] if avail else []
        need = n - avail
        self._base += len(buf)
        self._buf, self._pos = b"", 0
        rs = self.record_size
        if need >= rs:
            k = need - need % rs
            data = self._fill(k)
            parts.append(data)
            self._base += len(data)
            need -= len(data)
            if len(data) < k:
                return b"".join(parts)
        if need:
            rec = self._fill(rs)
            self._buf = rec
            take = rec[:need]
            self._pos = len(take)
            parts.append(take)
        return b"".join(parts) if len(parts) != 1 else parts[0]

    def skip(self, n):
        """Move n bytes forward (seek when possible). Returns the bytes skipped,
        fewer than n only at end of data."""
        avail = len(self._buf) - self._pos
        if n <= avail:
            self._pos += n
            return n
        if self.seekable:
            target = self.tell() + n
            self.seek(target)
            return self.tell() - (target - n)
        done = 0
        while done < n:
            d = self.read(min(n - done, 1 << 20))
            if not d:
                break
            done += len(d)
        return done

    def seek(self, offset):
        """Go to an archive offset (seekable raw only). Past the end, reads return b''."""
        if not self.seekable:
            raise io.UnsupportedOperation("archive stream is not seekable")
        if self.size is not None and offset > self.size:
            offset = self.size      # past the end: tell() says where the data ends
        if self._base <= offset <= self._base + len(self._buf):
            self._pos = offset - self._base
            return
        rs = self.record_size
        start = offset - offset % rs
        self.raw.seek(self._start + start)
        self.eof = False
        self._base = start
        self._buf = self._fill(rs)
        self._pos = min(offset - start, len(self._buf))
        # a short final record past EOF: tell() reports where data really ends
