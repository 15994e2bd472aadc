"""ArchiveReader: ims-asm pax archive -> members (see docs/format.md).

Reads from a pipe in one pass, or from a seekable file (skips data by seek,
re-reads hard-link targets, indexes). Every check a reader must make is here:
header checksums, pax records, names, member types, link targets, digests.
"""
import hashlib
import io
import json
import re

from . import names, pax
from .errors import (ArchiveError, CorruptMember, DigestMismatch, HostileMember,
                     IncompleteArchive, LinkTargetUnavailable, NotAnArchive)
from .records import RecordReader

FORMAT = "ims-asm"
VERSION = 1
MAX_PAX = 64 << 20       # largest pax header / JSON member accepted
_TIME = re.compile(r"-?[0-9]+(\.[0-9]+)?\Z")
_INT = re.compile(r"[0-9]+\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_UIDS = re.compile(r"([0-9]+(:[0-9]+)?(,[0-9]+(:[0-9]+)?)*)?\Z")


def parse_uid_ranges(text):
    """'1:3,5' -> [1, 2, 3, 5]. ValueError if malformed."""
    if not _UIDS.match(text):
        raise ValueError(f"bad UID list {text[:40]!r}")
    out = []
    if not text:
        return out
    for part in text.split(","):
        a, _, b = part.partition(":")
        a = int(a)
        if b:
            b = int(b)
            if b < a:
                raise ValueError(f"bad UID range {part!r}")
            out.extend(range(a, b + 1))
        else:
            out.append(a)
    return out


class Member:
    """One user, folder, message or link member, with its decoded records."""

    __slots__ = ("kind", "name", "partition", "user", "folder", "uid", "flags", "keywords",
                 "internaldate", "stored", "nlink", "sha256", "size", "linkname", "group",
                 "uidvalidity", "uidnext", "subscribed", "uids", "offset", "header_offset",
                 "mtime", "records", "_reader")

    def __init__(self, reader, kind, name):
        self._reader = reader
        self.kind = kind
        self.name = name
        self.partition = self.user = self.folder = self.uid = None
        self.flags = frozenset()
        self.keywords = ()
        self.internaldate = self.stored = self.sha256 = self.linkname = self.group = None
        self.nlink = 1
        self.size = 0
        self.uidvalidity = self.uidnext = None
        self.subscribed = False
        self.uids = []
        self.offset = self.header_offset = None
        self.mtime = 0
        self.records = {}

    def open(self):
        """Readable stream of the message bytes; the read that reaches the end
        checks the SHA-256 and raises DigestMismatch instead of returning it."""
        return self._reader._open(self)

    def __repr__(self):
        return f"<Member {self.kind} {self.name!r}>"


class MemberStream(io.RawIOBase):
    """Bytes of one member at a fixed archive offset, hashed as they are read."""

    def __init__(self, reader, name, offset, size, sha256):
        super().__init__()
        self._reader = reader
        self.name = name
        self._pos = offset
        self._left = size
        self._expected = sha256
        self._hash = hashlib.sha256()
        self._bad = None

    def readable(self):
        return True

    def _verify(self):
        actual = self._hash.hexdigest()
        if actual != self._expected:
            self._bad = DigestMismatch(self.name, self._expected, actual)
            self._reader._note_error(self._bad)
        self._hash = None

    def read(self, n=-1):
        if self._left == 0:
            if self._hash is not None:
                self._verify()
            if self._bad:
                raise self._bad
            return b""
        if n is None or n < 0 or n > self._left:
            n = self._left
        rr = self._reader._rr
        here = rr.tell()
        if here == self._pos:
            data = rr.read(n)
        elif rr.seekable:
            rr.seek(self._pos)
            data = rr.read(n)
            rr.seek(here)
        else:
            raise ArchiveError(f"member {self.name} is no longer current: read its data "
                               "before asking for the next member (the archive is a stream)")
        if len(data) < n:
            self._left = 0
            raise IncompleteArchive(self.name, self._pos + len(data), "cut inside this member's data")
        self._pos += n
        self._left -= n
        self._hash.update(data)
        if self._left == 0:
            self._verify()
            if self._bad:
                raise self._bad
        return data

    def readall(self):
        return self.read(-1)

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class _Entry:
    __slots__ = ("header_offset", "data_offset", "name", "typeflag", "size", "mtime",
                 "linkname", "records", "next_offset")


class _Corrupt(Exception):
    def __init__(self, offset, why):
        self.offset = offset
        self.why = why


class _End(Exception):
    """End-of-archive zero block."""


class MemberIterator:
    """Iterator over members. After it raises CorruptMember or HostileMember,
    calling next() again goes on with the following member."""

    def __init__(self, reader, on_error=None):
        self.r = reader
        self.on_error = on_error
        self.targets = {}            # message name -> (data offset, size)
        self.digest = hashlib.sha256()
        self.counts = {"users": 0, "folders": 0, "messages": 0, "links": 0, "bytes": 0}
        self.next_offset = reader._first_offset
        self.last_complete = names.HEADER_NAME
        self.current = None
        self.done = False
        self.errors = 0
        self.resync_from = None

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            try:
                return self._step()
            except (CorruptMember, HostileMember) as e:
                self.errors += 1
                self.r._note_error(e)
                if self.on_error is None:
                    raise
                self.on_error(e)

    def _step(self):
        if self.done:
            raise StopIteration
        rr = self.r._rr
        try:
            if self.resync_from is not None:
                start, self.resync_from = self.resync_from, None
                self._resync(start)
            else:
                here = rr.tell()
                if self.next_offset > here:
                    want = self.next_offset - here
                    if rr.skip(want) < want or rr.tell() < self.next_offset:
                        raise IncompleteArchive(self.last_complete, rr.tell(),
                                                f"cut inside the data of {self.current}")
                elif self.next_offset < here:
                    rr.seek(self.next_offset)
            if self.current is not None:
                self.last_complete = self.current
                self.current = None
            e = self.r._read_entry(self.last_complete)
        except _Corrupt as c:
            self.resync_from = c.offset + pax.BLOCK
            raise CorruptMember(c.offset, c.why) from None
        except _End:
            self.done = True
            raise IncompleteArchive(self.last_complete, rr.tell(),
                                    "end-of-archive blocks without a trailer") from None
        except IncompleteArchive:
            self.done = True
            raise
        self.next_offset = e.next_offset
        self.current = e.name
        if e.name == names.TRAILER_NAME and e.typeflag in (pax.REGTYPE, pax.AREGTYPE):
            return self._trailer(e)
        m = self.r._member(e, self.targets)   # may raise HostileMember/CorruptMember
        if m.kind == "message":
            self.targets[m.name] = (m.offset, m.size)
            self.counts["messages"] += 1
            self.counts["bytes"] += m.size
            self.digest.update(b"%s %s\n" % (m.sha256.encode(), m.name.encode("utf-8", "surrogateescape")))
        elif m.kind == "link":
            self.counts["links"] += 1
            self.digest.update(b"%s %s\n" % (m.sha256.encode(), m.name.encode("utf-8", "surrogateescape")))
        else:
            self.counts[m.kind + "s"] += 1
        return m

    def _trailer(self, e):
        self.done = True
        data = self.r._read_json_data(e, self.last_complete)
        try:
            t = json.loads(data)
            if not isinstance(t, dict) or t.get("complete") is not True:
                raise ValueError("not a complete trailer")
        except ValueError as ex:
            raise CorruptMember(e.header_offset, f"trailer is not valid JSON ({ex})",
                                names.TRAILER_NAME) from None
        self.r.trailer = t
        problems = []
        if t.get("digest") != self.digest.hexdigest():
            problems.append("digest")
        if t.get("counts") != self.counts:
            problems.append("counts")
        if t.get("archive_id", self.r.header.get("archive_id")) != self.r.header.get("archive_id"):
            problems.append("archive_id")
        self.r.verified = not problems
        if problems and not self.errors:
            raise CorruptMember(e.header_offset, "the trailer's " + " and ".join(problems)
                                + " do not match the members read", names.TRAILER_NAME)
        raise StopIteration

    def _resync(self, start):
        """Scan forward from start for the next valid pax ('x') header."""
        rr = self.r._rr
        if rr.tell() < start:
            rr.skip(start - rr.tell())
        elif rr.tell() > start and rr.seekable:
            rr.seek(start)      # on a stream, what was read past start held no header
        while True:
            off = rr.tell()
            b = rr.read(pax.BLOCK)
            if len(b) < pax.BLOCK:
                raise IncompleteArchive(self.last_complete, off,
                                        "no valid header after a corrupt one")
            if b[156:157] == pax.XHDTYPE and b[257:262] == b"ustar":
                try:
                    pax.parse_block(b)
                except pax.HeaderError:
                    continue
                if rr.seekable:
                    rr.seek(off)
                else:
                    self.r._pushback = (off, b)
                return


class ArchiveReader:
    """Reads one archive from raw (a pipe, or a seekable file)."""

    def __init__(self, raw, blocking_factor=20):
        self._rr = RecordReader(raw, blocking_factor)
        self.seekable = self._rr.seekable
        self.trailer = None
        self.verified = None         # trailer digest and counts matched (after iteration)
        self.errors = []             # every error reported so far
        self._pushback = None        # (offset, block) re-read after a resync on a stream
        self._iter = None
        self.header, first = self._read_archive_header()
        self._first_offset = first.next_offset

    @property
    def complete(self):
        return self.trailer is not None

    def _note_error(self, e):
        self.errors.append(e)

    # ------------------------------------------------------------ headers
    def _read_archive_header(self):
        try:
            e = self._read_entry(None)
        except IncompleteArchive:
            if self._rr.tell() == 0:
                raise NotAnArchive("it is empty") from None
            raise NotAnArchive("it is shorter than one tar header") from None
        except _Corrupt as c:
            raise NotAnArchive(f"no valid tar header at the start ({c.why})") from None
        except _End:
            raise NotAnArchive("it is an empty tar archive") from None
        if e.name != names.HEADER_NAME or e.typeflag not in (pax.REGTYPE, pax.AREGTYPE):
            raise NotAnArchive(f"the first member is {e.name!r}, not {names.HEADER_NAME}")
        data = self._read_json_data(e, None)      # IncompleteArchive if cut: it is ours
        try:
            hdr = json.loads(data)
        except ValueError as ex:
            raise NotAnArchive(f"its header member is not JSON ({ex})") from None
        if not isinstance(hdr, dict) or hdr.get("format") != FORMAT:
            raise NotAnArchive("its header member does not say format ims-asm")
        if hdr.get("version") != VERSION:
            raise NotAnArchive(f"format version {hdr.get('version')!r} is not {VERSION}, "
                               "the version this ims-asm reads; use a matching ims-asm")
        return hdr, e

    def _read_json_data(self, e, last):
        if e.size > MAX_PAX:
            if last is None:
                raise NotAnArchive(f"its header member is too large ({e.size} bytes)")
            raise CorruptMember(e.header_offset, f"too large ({e.size} bytes)", e.name)
        data = self._rr.read(e.size)
        if len(data) < e.size:
            raise IncompleteArchive(last, self._rr.tell(), f"cut inside {e.name}")
        return data

    def _read_block(self, last):
        if self._pushback is not None:
            off, b = self._pushback
            self._pushback = None
            return off, b
        off = self._rr.tell()
        b = self._rr.read(pax.BLOCK)
        if len(b) < pax.BLOCK:
            raise IncompleteArchive(last, off, "end of data" if not b else "cut inside a header")
        return off, b

    def _read_entry(self, last):
        """Read the next member's headers (pax, GNU long names, ustar). Leaves the
        position at the member's data. Raises _Corrupt, _End, IncompleteArchive."""
        rr = self._rr
        records = {}
        longname = longlink = None
        first = None
        while True:
            off, b = self._read_block(last)
            if first is None:
                first = off
            if b == pax.ZERO_BLOCK:
                raise _End
            try:
                h = pax.parse_block(b)
            except pax.HeaderError as ex:
                raise _Corrupt(off, str(ex)) from None
            t = h["typeflag"]
            if t in (pax.XHDTYPE, pax.XGLTYPE, pax.GNU_LONGNAME, pax.GNU_LONGLINK):
                size = h["size"]
                if size > MAX_PAX:
                    raise _Corrupt(off, f"extended header of {size} bytes is too large")
                data = rr.read(size + (-size % pax.BLOCK))
                if len(data) < size + (-size % pax.BLOCK):
                    raise IncompleteArchive(last, rr.tell(), "cut inside an extended header")
                data = data[:size]
                if t == pax.XHDTYPE:
                    try:
                        records.update(pax.parse_records(data))
                    except pax.HeaderError as ex:
                        raise _Corrupt(off, str(ex)) from None
                elif t == pax.GNU_LONGNAME:
                    longname = data.split(b"\x00", 1)[0]
                elif t == pax.GNU_LONGLINK:
                    longlink = data.split(b"\x00", 1)[0]
                continue        # global headers carry nothing ims-asm uses
            break
        e = _Entry()
        e.header_offset = first
        e.data_offset = rr.tell()
        e.records = records
        e.typeflag = t
        if "path" in records:
            e.name = records["path"]
        else:
            e.name = (longname or h["name"]).decode("utf-8", "surrogateescape")
        if "linkpath" in records:
            e.linkname = records["linkpath"]
        else:
            e.linkname = (longlink or h["linkname"]).decode("utf-8", "surrogateescape")
        size = h["size"]
        if "size" in records:
            if not _INT.match(records["size"]):
                raise _Corrupt(off, f"pax size record {records['size'][:30]!r} is not a number")
            size = int(records["size"])
        e.size = size
        e.mtime = h["mtime"]
        if "mtime" in records:
            if not _TIME.match(records["mtime"]):
                raise _Corrupt(off, "pax mtime record is not a number")
            e.mtime = float(records["mtime"])
        datasize = 0 if t in (pax.LNKTYPE, pax.SYMTYPE, pax.CHRTYPE, pax.BLKTYPE,
                              pax.DIRTYPE, pax.FIFOTYPE) and size == 0 else size
        e.next_offset = e.data_offset + datasize + (-datasize % pax.BLOCK)
        return e

    # ------------------------------------------------------------ members
    def _member(self, e, targets):
        """Check an entry and turn it into a Member (HostileMember / CorruptMember)."""
        name, t, recs, off = e.name, e.typeflag, e.records, e.header_offset

        def hostile(why):
            return HostileMember(name, why, off)

        def corrupt(why):
            return CorruptMember(off, why, name)

        if t == pax.SYMTYPE:
            raise hostile(f"symbolic link to {e.linkname!r}")
        if t in (pax.CHRTYPE, pax.BLKTYPE, pax.FIFOTYPE):
            raise hostile("device or FIFO member")
        for n, what in ((name, "name"), (e.linkname, "link target")):
            if n.startswith("/"):
                raise hostile(f"absolute {what}")
            if ".." in n.replace("\\", "/").split("/"):
                raise hostile(f"{what} with '..'")
            if "\x00" in n:
                raise hostile(f"{what} with a NUL byte")
        if t not in (pax.REGTYPE, pax.AREGTYPE, pax.CONTTYPE, pax.LNKTYPE, pax.DIRTYPE):
            raise hostile(f"member type {t!r} that ims-asm never writes")
        if t in (pax.LNKTYPE, pax.DIRTYPE) and e.size != 0:
            raise hostile(f"{'hard link' if t == pax.LNKTYPE else 'directory'} claims "
                          f"{e.size} bytes of data")
        if name in (names.HEADER_NAME, names.TRAILER_NAME):
            raise hostile("a second archive header or a misplaced trailer")
        kind = recs.get("IMSASM.kind")
        if kind is None:
            raise hostile("member without ims-asm records")
        try:
            partition, user, folder, uid = names.parse(name)
        except ValueError as ex:
            raise hostile(f"name is not in the ims-asm layout ({ex})") from None
        if t == pax.DIRTYPE:
            want = "user" if folder is None else "folder"
            if kind != want or user is None or uid is not None:
                raise hostile(f"directory member of kind {kind!r} where a {want} was expected")
        elif t == pax.LNKTYPE:
            if kind not in ("link", "message") or uid is None:
                raise hostile("hard link that is not a message")
            kind = "link"
        else:
            if kind != "message" or uid is None:
                raise hostile(f"regular file of kind {kind!r} that is not a message")
        m = Member(self, kind, name)
        m.partition, m.user, m.folder, m.uid = partition, user, folder, uid
        m.header_offset = off
        m.offset = e.data_offset
        m.size = e.size
        m.mtime = e.mtime
        m.records = recs
        for k, v in (("partition", partition), ("user", user), ("folder", folder)):
            rv = recs.get("IMSASM." + k)
            if rv is not None and rv != v:
                raise corrupt(f"IMSASM.{k} {rv!r} does not match the member name")
        try:
            if kind == "user":
                m.group = recs.get("IMSASM.group", "")
            elif kind == "folder":
                m.uidvalidity = _int(recs, "uidvalidity", None)
                m.uidnext = _int(recs, "uidnext", None)
                m.subscribed = recs.get("IMSASM.subscribed", "0") == "1"
                m.uids = parse_uid_ranges(recs.get("IMSASM.uids", ""))
                count = _int(recs, "count", len(m.uids))
                if count != len(m.uids):
                    raise ValueError(f"IMSASM.count {count} but {len(m.uids)} UIDs listed")
            else:
                ruid = _int(recs, "uid", None)
                if ruid != uid:
                    raise ValueError(f"IMSASM.uid {recs.get('IMSASM.uid')!r} does not match "
                                     "the member name")
                m.flags = frozenset(recs.get("IMSASM.flags", "").split())
                m.keywords = tuple(recs.get("IMSASM.keywords", "").split())
                m.internaldate = _time(recs, "internaldate", e.mtime)
                m.stored = _time(recs, "stored", m.internaldate)
                m.nlink = _int(recs, "nlink", 1)
                m.sha256 = recs.get("IMSASM.sha256", "")
                if not _HEX64.match(m.sha256):
                    raise ValueError("IMSASM.sha256 is missing or not 64 hex digits")
        except ValueError as ex:
            raise corrupt(str(ex)) from None
        if kind == "link":
            m.linkname = e.linkname
            target = targets.get(e.linkname)
            if target is None:
                raise hostile(f"hard link to {e.linkname!r}, which is not an earlier "
                              "message in this archive")
            m.offset, m.size = target
        return m

    # ------------------------------------------------------------ iteration
    def members(self, on_error=None):
        """Iterate over members. Errors a member can have (CorruptMember,
        HostileMember) go to on_error(exc) when given, else they are raised and
        the next next() goes on. On a seekable archive each call starts over; on
        a stream it continues where the previous iteration stopped."""
        if self._iter is not None and not self.seekable:
            self._iter.on_error = on_error
            return self._iter
        if self._iter is not None:
            self._rr.seek(self._first_offset)
        self._pushback = None
        self._iter = MemberIterator(self, on_error)
        return self._iter

    def __iter__(self):
        return self.members()

    def index(self, on_error=None):
        """Seekable archives only: every member, data skipped by seek."""
        if not self.seekable:
            raise ArchiveError("index() needs a seekable archive (a file, not a pipe)")
        saved_iter, here = self._iter, self._rr.tell()
        self._iter = None
        try:
            self._rr.seek(self._first_offset)
            self._iter = MemberIterator(self, on_error)
            out = list(self._iter)
        finally:
            self._iter = saved_iter
            self._rr.seek(here)
        return out

    def read_member_at(self, member):
        """Seekable archives only: a stream of an earlier member's bytes (or a
        link's target bytes), checked against the member's SHA-256."""
        if not self.seekable:
            raise LinkTargetUnavailable(member.name, member.linkname or member.name)
        if member.kind not in ("message", "link"):
            raise ArchiveError(f"member {member.name} has no data")
        return MemberStream(self, member.name, member.offset, member.size, member.sha256)

    def _open(self, member):
        if member.kind not in ("message", "link"):
            raise ArchiveError(f"member {member.name} is a {member.kind}; it has no data")
        if member.kind == "link" and not self.seekable:
            raise LinkTargetUnavailable(member.name, member.linkname)
        return MemberStream(self, member.name, member.offset, member.size, member.sha256)


def _int(recs, key, default):
    v = recs.get("IMSASM." + key)
    if v is None:
        if default is None:
            raise ValueError(f"IMSASM.{key} is missing")
        return default
    if not _INT.match(v):
        raise ValueError(f"IMSASM.{key} {v[:30]!r} is not a number")
    return int(v)


def _time(recs, key, default):
    v = recs.get("IMSASM." + key)
    if v is None:
        return default
    if not _TIME.match(v):
        raise ValueError(f"IMSASM.{key} {v[:30]!r} is not a time")
    return float(v) if "." in v else int(v)
