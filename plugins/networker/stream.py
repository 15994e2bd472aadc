"""The imsasm save stream: a sequence of save records, each one imsbackup archive.

Modelled on NetWorker's savefile2 (nsr_data(5)): a bucketless succession of
self-describing sections, each a type, a length and bytes, XDR style::

    section := type:uint32-BE  length:uint32-BE  bytes[length]  zero pad to 4
    input   := stream+                  (streams piped one after the other: a chain)
    stream  := STREAM  record*  [END]
    record  := BEGIN  DATA*  FINISH

STREAM, BEGIN and FINISH carry UTF-8 JSON; the DATA sections of one record,
concatenated, are exactly one imsbackup archive (readable by ``imsrestore -f -``).
END (type 0, length 0) closes the stream; ``imsasm -s -e`` leaves it out.  Streams
with or without END can be chained: the reader goes on with a STREAM section after
END, and refuses anything else there.  docs/networker.md documents every field.
"""
from __future__ import annotations

import hashlib
import io
import json
import struct

from asm.archive.names import dump_json
from asm.errors import EXIT_INCOMPLETE, EXIT_NOT_ARCHIVE, ImsError

END, STREAM, BEGIN, DATA, FINISH = 0, 1, 2, 3, 4
NAMES = {END: "END", STREAM: "STREAM", BEGIN: "BEGIN", DATA: "DATA", FINISH: "FINISH"}
FORMAT = "imsasm-stream"
VERSION = 1
MAX_SECTION = 1 << 20           # a DATA section holds at most this many bytes
FLUSH_AT = 256 * 1024           # the writer gathers archive bytes up to this size
_HDR = struct.Struct(">II")


class StreamError(ImsError):
    """Not a save stream, or a damaged one."""

    status = EXIT_INCOMPLETE


class NotAStream(StreamError):
    """The input does not start with a STREAM section."""

    status = EXIT_NOT_ARCHIVE


class TruncatedStream(StreamError):
    """The stream ends inside a section or before its END."""

    status = EXIT_INCOMPLETE


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


class StreamWriter:
    """Writes sections to ``out`` (a binary file); holds at most FLUSH_AT bytes."""

    def __init__(self, out):
        self.out = out
        self.bytes = 0

    def section(self, kind: int, data: bytes = b"") -> None:
        if len(data) > MAX_SECTION:
            raise ValueError("section too large")
        blob = _HDR.pack(kind, len(data)) + data + _pad(len(data))
        self.out.write(blob)
        self.bytes += len(blob)

    def json(self, kind: int, obj: dict) -> None:
        self.section(kind, dump_json(obj, sort_keys=True))

    def start(self, info: dict) -> None:
        self.json(STREAM, {"format": FORMAT, "version": VERSION, **info})

    def record(self, info: dict) -> "RecordSink":
        self.json(BEGIN, info)
        return RecordSink(self)

    def end(self) -> None:
        self.section(END)
        self.out.flush()


class RecordSink(io.RawIOBase):
    """File-like target for one record's archive: writes become DATA sections."""

    def __init__(self, sw: StreamWriter):
        self.sw = sw
        self.buf = bytearray()
        self.size = 0
        self.sha = hashlib.sha256()

    def writable(self):
        return True

    def write(self, b) -> int:
        self.buf += b
        n = len(b)
        self.size += n
        self.sha.update(b)
        if len(self.buf) >= FLUSH_AT:
            self._flush()
        return n

    def _flush(self):
        while self.buf:
            chunk = bytes(self.buf[:MAX_SECTION])
            del self.buf[:MAX_SECTION]
            self.sw.section(DATA, chunk)

    def flush(self):
        self._flush()

    def finish(self, info: dict) -> None:
        self._flush()
        self.sw.json(FINISH, {"bytes": self.size, "sha256": self.sha.hexdigest(), **info})
        self.sw.out.flush()


class StreamReader:
    """Reads a save stream from ``raw`` in one pass (a pipe is fine)."""

    def __init__(self, raw):
        self.raw = raw
        self.offset = 0
        self.ended = False
        kind, data = self._section(first=True)
        if kind != STREAM:
            raise NotAStream("it does not start with an imsasm STREAM section")
        self.info = self._header(data, NotAStream)
        self._peeked = None

    def _header(self, data: bytes, error=StreamError) -> dict:
        """The JSON of a STREAM section, checked (``error`` when it is not ours)."""
        info = self._json(data, "STREAM")
        if info.get("format") != FORMAT:
            raise error("its STREAM section is not an imsasm stream header")
        if info.get("version") != VERSION:
            raise error(f"stream version {info.get('version')!r} is not {VERSION}")
        return info

    def _read(self, n: int) -> bytes:
        parts = []
        want = n
        while want:
            b = self.raw.read(want)
            if not b:
                break
            parts.append(b)
            want -= len(b)
        data = b"".join(parts)
        self.offset += len(data)
        return data

    def _section(self, first: bool = False):
        at = self.offset
        hdr = self._read(8)
        if not hdr and not first:
            return None, b""
        if len(hdr) < 8:
            if first:
                raise NotAStream("it is empty" if not hdr else "it is shorter than one section header")
            raise TruncatedStream(f"the stream is cut inside a section header at byte {at}")
        kind, length = _HDR.unpack(hdr)
        if kind not in NAMES or length > MAX_SECTION:
            if first:
                raise NotAStream("it does not start with an imsasm section header")
            raise StreamError(f"damaged section header at byte {at} (type {kind}, length {length})")
        data = self._read(length + (-length % 4))
        if len(data) < length + (-length % 4):
            raise TruncatedStream(f"the stream is cut inside a {NAMES[kind]} section at byte {at}")
        return kind, data[:length]

    @staticmethod
    def _json(data: bytes, what: str) -> dict:
        try:
            obj = json.loads(data.decode("utf-8"))
        except ValueError:
            raise StreamError(f"a {what} section is not JSON") from None
        if not isinstance(obj, dict):
            raise StreamError(f"a {what} section is not a JSON object")
        return obj

    def records(self):
        """Yield :class:`Record` objects; the caller reads (or not) each one's data
        before asking for the next (the reader drains what is left)."""
        rec = None
        while True:
            if rec is not None:
                rec.drain()
            kind, data = self._section()
            if kind is None:
                if self.info.get("end") is True:
                    # its header says an END follows its records (not written with -e)
                    raise TruncatedStream(f"the stream ends at byte {self.offset} without its END section: "
                                          "it was cut after a whole record")
                return                      # no END: a stream written with -e
            if kind == END:
                # streams piped one after the other (recover of a full and its
                # incrementals) each end in END: what follows is EOF or the next stream
                at = self.offset
                try:
                    kind, data = self._section()
                except StreamError:
                    kind = -1
                if kind is None:
                    self.ended = True
                    return
                if kind != STREAM:
                    raise StreamError(f"the bytes after its END section (byte {at}) are not another save "
                                      "stream; pipe in save streams only")
                self.info = self._header(data)
                continue
            if kind == STREAM:              # streams chained after -e
                self.info = self._header(data)
                continue
            if kind != BEGIN:
                raise StreamError(f"expected a BEGIN section at byte {self.offset}, found {NAMES[kind]}")
            rec = Record(self, self._json(data, "BEGIN"))
            yield rec


class Record(io.RawIOBase):
    """One save record; read() returns its archive bytes, then EOF at FINISH."""

    def __init__(self, reader: StreamReader, info: dict):
        self.reader = reader
        self.info = info
        self.finish: dict | None = None
        self.buf = b""
        self.pos = 0
        self.size = 0
        self.sha = hashlib.sha256()

    @property
    def name(self) -> str:
        return self.info.get("name", "?")

    def readable(self):
        return True

    def _more(self) -> bool:
        if self.finish is not None:
            return False
        kind, data = self.reader._section()
        if kind is None:
            raise TruncatedStream(f"the stream ends inside save record {self.name}")
        if kind == DATA:
            self.buf, self.pos = data, 0
            self.size += len(data)
            self.sha.update(data)
            return True
        if kind == FINISH:
            self.finish = self.reader._json(data, "FINISH")
            if self.finish.get("bytes") != self.size or self.finish.get("sha256") != self.sha.hexdigest():
                raise StreamError(f"save record {self.name}: its archive bytes do not match the "
                                  "length and SHA-256 in its FINISH section (damaged save set)")
            return False
        raise StreamError(f"save record {self.name}: unexpected {NAMES[kind]} section inside the record")

    def readinto(self, b) -> int:
        while self.pos >= len(self.buf):
            if not self._more():
                return 0
        n = min(len(b), len(self.buf) - self.pos)
        b[:n] = self.buf[self.pos:self.pos + n]
        self.pos += n
        return n

    def drain(self) -> None:
        while self._more():
            pass
        self.buf, self.pos = b"", 0
