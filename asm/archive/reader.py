"""ArchiveReader: ims-asm pax archive -> members (see docs/format.md).

Reads from a pipe in one pass, or from a seekable file (skips data by seek,
re-reads hard-link targets, indexes). Every check a reader must make is here:
header checksums, record digests (version 2), pax records and the range of every
value, names, member types, the order of members, link targets, data digests, the
trailer's digest over the whole sequence, and the zeros after it.
"""
import hashlib
import io
import json
import os
import re
import stat
import struct

from . import names, pax, spec, values
from .errors import (ArchiveError, CorruptHeader, CorruptMember, DigestMismatch, HostileMember,
                     IncompleteArchive, JoinedArchives, LinkTargetUnavailable, NotAnArchive, TrailingData)
from .records import RecordReader
from .values import FolderState, UidSet

# Each message's place, kept for the links that may follow: one bytes object (offset and
# size packed, then the SHA-256 as written) -- 113 bytes where a tuple of two ints and a
# string took about 240, a tenth of a restore's peak memory at 100,000 messages.
_PLACE = struct.Struct("<QQ")


def _target(m) -> bytes:
    return _PLACE.pack(m.offset, m.size) + m.sha256.encode("utf-8", "surrogateescape")


class Member:
    """One user, folder, message or link member, with its decoded records."""

    __slots__ = ("kind", "name", "partition", "user", "folder", "uid", "flags", "keywords",
                 "internaldate", "stored", "nlink", "sha256", "size", "linkname", "group",
                 "uidvalidity", "uidnext", "subscribed", "uids", "state", "offset",
                 "header_offset", "mtime", "records", "digest", "guid", "basename", "pop3_uidl",
                 "pop3_order", "mailbox_guid", "acl", "state_ids", "state_pop3", "subscriptions", "_reader")

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
        self.uids = UidSet()             # folder: every UID it held at backup time
        self.state = FolderState()       # folder of an incremental: flags of the UIDs not carried
        self.offset = self.header_offset = None
        self.mtime = 0
        self.records = {}
        self.digest = None               # version 2: the member's record digest
        self.guid = None                 # message, link: the store's GUID (IMSASM.guid)
        self.basename = None             # message, link: its Maildir file base name
        self.pop3_uidl = None            # message, link: its own POP3 UIDL
        self.pop3_order = None           # message, link: its POP3 order number
        self.mailbox_guid = None         # folder: its mailbox GUID (IMSASM.mailbox_guid), if archived
        self.acl = None                  # folder: its ACL file's text (IMSASM.acl, "" for none), if archived
        self.state_ids = None            # folder of an incremental: identities of the state's UIDs (bytes)
        self.state_pop3 = None           # ... and their POP3 UIDLs and orders: {uid: (uidl, order)}
        self.subscriptions = None        # user: its subscribed names that are no folder (None:
                                         # the archive does not say: older, or some folders only)

    def open(self):
        """Readable stream of the message bytes; the read that reaches the end
        checks the SHA-256 and raises DigestMismatch instead of returning it."""
        return self._reader._open(self)

    def check(self):
        """Read the message's bytes to the end and throw them away: DigestMismatch when
        they are damaged, IncompleteArchive when they are cut."""
        with self.open() as f:
            while f.read(1 << 20):
                pass

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
                 "linkname", "records", "next_offset", "block", "pax", "last_record",
                 "last_key", "extended", "datasize")


class _Corrupt(Exception):
    def __init__(self, offset, why):
        self.offset = offset
        self.why = why


class _End(Exception):
    """End-of-archive zero block."""


class _Folder:
    """The folder whose messages may come next, and the last UID read in it."""

    __slots__ = ("key", "uids", "last")

    def __init__(self, key, uids):
        self.key = key
        self.uids = uids
        self.last = 0


def _on_tape(raw) -> bool:
    """True when raw reads a character device (a tape) itself."""
    try:
        return stat.S_ISCHR(os.fstat(raw.fileno()).st_mode)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


# an archive header's pax record, as written and in the spelling readers accept too
_HEADER_KINDS = tuple(f" {k}={spec.K_HEADER}\n".encode() for k in (spec.wire(spec.KIND), spec.KIND))
_SKIP = object()        # a member named already (one error for a run of them): not returned


class MemberIterator:
    """Iterator over members. After it raises CorruptMember or HostileMember,
    calling next() again goes on with the following member."""

    def __init__(self, reader, on_error=None):
        self.r = reader
        self.on_error = on_error
        self.targets = {}            # message name -> _target(data offset, size, sha256)
        self.digest = hashlib.sha256()       # version 1 trailer digest (message lines)
        self.sequence = hashlib.sha256()     # version 2 trailer digest (member digests)
        if reader.header_digest:
            self.sequence.update(b"%s\n" % reader.header_digest.encode("ascii"))
        self.counts = {"users": 0, "folders": 0, "messages": 0, "links": 0, "bytes": 0}
        self.next_offset = reader._first_offset
        self.last_complete = spec.HEADER_NAME
        self.current = None
        self.done = False
        self.errors = 0
        self.resync_from = None
        self.pad_check = None        # (name, header offset, padding start, end) of the last member
        self.users_seen = set()
        self.folders_seen = set()
        self.folder = None           # _Folder whose messages may follow
        self.orphans = None          # folder key of messages already named as misplaced

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

    def _check_padding(self):
        """The zeros between the end of the last member's data and the next header."""
        name, header_offset, start, end = self.pad_check
        self.pad_check = None
        rr = self.r._rr
        here = rr.tell()
        if here > start or end <= start:
            return
        if here < start and rr.skip(start - here) < start - here:
            return                  # cut: the next read says so
        pad = rr.read(end - start)
        if len(pad) == end - start and pad.count(0) != len(pad):
            raise CorruptMember(header_offset, "the padding after its data is not zeros", name)

    def _step(self):
        while True:
            if self.done:
                raise StopIteration
            rr = self.r._rr
            try:
                if self.resync_from is not None:
                    start, self.resync_from = self.resync_from, None
                    self._resync(start)
                else:
                    if self.pad_check is not None:
                        self._check_padding()
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
                self.resync_from = c.offset + spec.BLOCK
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
            if e.name == spec.TRAILER_NAME and e.typeflag in (pax.REGTYPE, pax.AREGTYPE):
                return self._trailer(e)
            try:
                m = self.r._member(e, self)   # may raise HostileMember/CorruptMember
            except CorruptMember:
                if "size" in e.records and self.r.version >= 2:
                    self.resync_from = e.data_offset   # its size may be the damage: scan
                raise
            if m is _SKIP:
                continue
            if e.datasize:
                self.pad_check = (m.name, e.header_offset, e.data_offset + e.datasize, e.next_offset)
            return m

    def _trailer(self, e):
        self.done = True
        r = self.r
        recs = e.records
        if r.version >= 2:
            try:
                r._check_digest(e)
            except ValueError as ex:
                r.verified = False
                raise CorruptMember(e.header_offset, str(ex), spec.TRAILER_NAME) from None
        data = r._read_json_data(e, self.last_complete)
        if r.version >= 2 and recs.get(spec.SHA256) != hashlib.sha256(data).hexdigest():
            r.verified = False
            raise CorruptMember(e.header_offset, "its JSON does not match its SHA-256 record",
                                spec.TRAILER_NAME)
        try:
            t = json.loads(data)
            _check_trailer(t)
        except (ValueError, RecursionError) as ex:
            r.verified = False
            raise CorruptMember(e.header_offset, f"the trailer is not valid ({ex})",
                                spec.TRAILER_NAME) from None
        r.trailer = t
        problems = []
        want = self.sequence if r.version >= 2 else self.digest
        if t.get("digest") != want.hexdigest():
            problems.append("digest")
        if t.get("counts") != self.counts:
            problems.append("counts")
        if t.get("archive_id") != r.header.get("archive_id"):
            problems.append("archive_id")
        r.verified = not problems
        if problems and not self.errors:
            raise CorruptMember(e.header_offset, "the trailer's " + " and ".join(problems)
                                + " do not match the members read", spec.TRAILER_NAME)
        why = r._check_end(e)
        if why:
            # (no member damaged, a message's bytes included, and the trailer matched)
            whole, r.verified = r.verified and not r.errors, False
            if whole and r.joined_at is not None:
                raise JoinedArchives(e.header_offset, why, spec.TRAILER_NAME)
            raise (TrailingData if whole else CorruptMember)(e.header_offset, why, spec.TRAILER_NAME)
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
            b = rr.read(spec.BLOCK)
            if len(b) < spec.BLOCK:
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

    def __init__(self, raw, blocking_factor=spec.DEFAULT_BLOCKING_FACTOR):
        stack = getattr(raw, "layer_stack", None)          # (asm.layers.stack.open_read's stream)
        self._layer = "+".join(x.layer for x in stack if getattr(x, "layer", "")) if stack else ""
        self._raw = raw
        self._rr = RecordReader(raw, blocking_factor)
        self.seekable = self._rr.seekable
        self.trailer = None
        self.verified = None         # trailer digest and counts matched (after iteration)
        self.errors = []             # every error reported so far
        self._pushback = None        # (offset, block) re-read after a resync on a stream
        self.joined_at = None        # where another archive begins after this one's end
        self._iter = None
        self.version = None
        self.header_digest = None
        self._head = bytearray()     # what the header member's reading saw (to tell damage)
        self.header, first = self._read_archive_header()
        self._head = None
        self._first_offset = first.next_offset

    @property
    def complete(self):
        return self.trailer is not None

    def _note_error(self, e):
        self.errors.append(e)

    # ------------------------------------------------------------ headers
    def _layer_damage(self, offset, why) -> None:
        """Before "not an archive" of what a compression layer decoded: more of that
        layer read (16 MiB at most), and its own damage (a bzip2 block's CRC, checked after the block was
        decoded, garbled, into the archive header) makes it damage, not a wrong name."""
        if not self._layer:
            return
        from asm.errors import EXIT_INCOMPLETE
        try:
            # (16 MiB: past a bzip2 block, 900 kB, whose CRC is what tells; a large file
            # given by mistake is not decoded to its end before "not an archive")
            for _ in range(16):
                if not self._raw.read(1 << 20):
                    break
        except (ArchiveError, OSError, EOFError, ValueError) as exc:
            if getattr(exc, "status", None) == EXIT_INCOMPLETE:       # (asm.layers' LayerDamaged)
                raise CorruptHeader(offset, f"{why}, and the {self._layer} layer it was decoded from is "
                                            f"damaged ({exc})") from None

    def _read_archive_header(self):
        try:
            e = self._read_entry(None)
        except IncompleteArchive:
            if self._looks_ours():
                raise IncompleteArchive(None, self._rr.tell(), "cut inside its header") from None
            if self._rr.tell() == 0:
                raise NotAnArchive("it is empty") from None
            raise NotAnArchive("it is shorter than one tar header") from None
        except _Corrupt as c:
            if self._looks_ours():
                raise CorruptHeader(c.offset, c.why) from None
            self._layer_damage(c.offset, c.why)
            raise NotAnArchive(f"no valid tar header at the start ({c.why})") from None
        except _End:
            raise NotAnArchive("it is an empty tar archive") from None
        if e.name != spec.HEADER_NAME or e.typeflag not in (pax.REGTYPE, pax.AREGTYPE):
            if any(k.startswith(spec.LOGICAL_PREFIX) for k in e.records):
                raise CorruptHeader(e.header_offset, f"the archive starts with member {e.name[:80]!r}, "
                                                     f"not its header ({spec.HEADER_NAME})")
            raise NotAnArchive(f"the first member is {e.name[:80]!r}, not {spec.HEADER_NAME}")
        recs = e.records
        ours = recs.get(spec.KIND) == spec.K_HEADER     # an ims-asm header member: damage is corruption
        v2 = spec.DIGEST in recs or spec.VERSION_KEY in recs or spec.SHA256 in recs
        if v2:
            try:
                self._check_digest(e)
            except ValueError as ex:
                raise CorruptHeader(e.header_offset, str(ex)) from None
            self.header_digest = recs[spec.DIGEST]
        if e.size > spec.MAX_JSON:
            if ours or v2:
                raise CorruptHeader(e.header_offset, f"its JSON claims {e.size} bytes")
            raise NotAnArchive(f"its header member is too large ({e.size} bytes)")
        data = self._read_json_data(e, None)      # IncompleteArchive if cut: it is ours
        if v2 and recs.get(spec.SHA256) != hashlib.sha256(data).hexdigest():
            raise CorruptHeader(e.header_offset, "its JSON does not match its SHA-256 record")
        try:
            hdr = json.loads(data)
        except (ValueError, RecursionError) as ex:
            if ours or v2:
                raise CorruptHeader(e.header_offset, f"it is not JSON ({ex})") from None
            raise NotAnArchive(f"its header member is not JSON ({ex})") from None
        if not isinstance(hdr, dict) or hdr.get("format") != spec.FORMAT:
            if v2:
                raise CorruptHeader(e.header_offset, "it does not say format ims-asm")
            raise NotAnArchive("its header member does not say format ims-asm")
        version = hdr.get("version")
        if type(version) is not int:
            raise CorruptHeader(e.header_offset, f"version {str(version)[:20]!r} is not a number")
        if version not in spec.READABLE_VERSIONS:
            if version > max(spec.READABLE_VERSIONS):
                raise NotAnArchive(f"format version {version} is newer than the versions this "
                                   f"ims-asm reads ({', '.join(map(str, spec.READABLE_VERSIONS))}); "
                                   "use a newer ims-asm")
            raise CorruptHeader(e.header_offset, f"format version {version} does not exist")
        if v2 != (version >= 2) or (v2 and recs.get(spec.VERSION_KEY) != str(version)):
            raise CorruptHeader(e.header_offset, f"its records do not match format version {version}")
        try:
            _check_header(hdr)
        except ValueError as ex:
            raise CorruptHeader(e.header_offset, str(ex)) from None
        why = self._check_json_padding(e)
        if why:
            raise CorruptHeader(e.header_offset, why)
        self.version = version
        return hdr, e

    def _looks_ours(self):
        """After a damaged or cut first header: do its bytes still hold ims-asm records or
        the header member's name (then the archive is damaged, not something else)?"""
        head = bytes(self._head or b"")
        try:
            head += self._rr.read(4 * spec.BLOCK)      # its records follow a damaged first block
        except OSError:
            pass
        return spec.WIRE_PREFIX.encode() in head or spec.HEADER_NAME.encode() in head

    def _read_json_data(self, e, last):
        if e.size > spec.MAX_JSON:
            raise CorruptMember(e.header_offset, f"too large ({e.size} bytes)", e.name)
        data = self._rr.read(e.size)
        if len(data) < e.size:
            raise IncompleteArchive(last, self._rr.tell(), f"cut inside {e.name}")
        return data

    def _check_json_padding(self, e):
        pad = self._rr.read(e.next_offset - e.data_offset - e.size)
        if pad.count(0) != len(pad):
            return "the padding after its JSON is not zeros"
        return None

    def _check_end(self, trailer):
        """After the trailer's JSON: zeros (its padding, the two end blocks, the rest of
        the writer's last record).  What is missing of them is not an error (a copy may
        drop the padding); anything else there is.  Returns why not, or None."""
        why = self._check_json_padding(trailer)
        if why:
            return why
        rs = spec.BLOCK * self.header.get("blocking_factor", spec.DEFAULT_BLOCKING_FACTOR)
        here = self._rr.tell()
        end = here + 2 * spec.BLOCK
        end += -end % rs
        while here < end:
            b = self._rr.read(min(end - here, 1 << 20))
            if not b:
                return None
            if b.count(0) != len(b):
                return "the bytes after the trailer are not zeros"
            here += len(b)
        # Past the writer's record, to the end of the data: zeros (a copy's padding) or
        # nothing.  Anything else was joined to the archive: `cat FULL INCR | imsrestore
        # -f -` restored the full alone and said nothing of the incremental.  Not on a
        # tape (a character device): the next archive there is the next tape file, and a
        # read past this one's end would pass its file mark (`mt fsf` then skips one too many).
        if _on_tape(self._raw):
            return None
        try:
            while True:
                b = self._rr.read(1 << 20)
                if not b:
                    return None
                if b.count(0) != len(b):
                    break
                here += len(b)
        except OSError:
            # a layer's damage past the archive (a zstd seek table, gzip's CRC cut off):
            # the archive was read whole, to its verified trailer; imsverify, which reads
            # the layers to their end, names it (docs/offsite.md)
            return None
        skip = len(b) - len(b.lstrip(b"\0"))
        start = here + skip - (here + skip) % spec.BLOCK
        head = b[start - here:]
        if len(head) < 8 * spec.BLOCK:
            try:
                head += self._rr.read(8 * spec.BLOCK)
            except OSError:
                pass                    # (as above: the layer's damage, past the archive)
        if any(k in head[:8 * spec.BLOCK] for k in _HEADER_KINDS):
            self.joined_at = start
            return f"another ims-asm archive begins at byte {start}, after this one's end"
        return f"bytes that are not zeros follow the end of the archive's last record (at byte {start})"

    def _read_block(self, last):
        if self._pushback is not None:
            off, b = self._pushback
            self._pushback = None
            return off, b
        off = self._rr.tell()
        b = self._rr.read(spec.BLOCK)
        if self._head is not None and len(self._head) < 8 * spec.BLOCK:
            self._head += b
        if len(b) < spec.BLOCK:
            raise IncompleteArchive(last, off, "end of data" if not b else "cut inside a header")
        return off, b

    def _read_entry(self, last):
        """Read the next member's headers (pax, GNU long names, ustar). Leaves the
        position at the member's data. Raises _Corrupt, _End, IncompleteArchive."""
        rr = self._rr
        records = {}
        longname = longlink = None
        first = None
        extended = ext_bytes = 0
        pax_data = None
        last_record = 0
        last_key = None
        while True:
            off, b = self._read_block(last)
            if first is None:
                first = off
            if b == spec.ZERO_BLOCK:
                raise _End
            try:
                h = pax.parse_block(b)
            except pax.HeaderError as ex:
                raise _Corrupt(off, str(ex)) from None
            t = h["typeflag"]
            if t in (pax.XHDTYPE, pax.XGLTYPE, pax.GNU_LONGNAME, pax.GNU_LONGLINK):
                extended += 1
                size = h["size"]
                ext_bytes += size
                if size > spec.MAX_PAX or ext_bytes > spec.MAX_PAX:
                    # (all of a member's extended headers together: memory stays bounded
                    # whatever an archive says)
                    raise _Corrupt(off, f"extended header of {size} bytes is too large"
                                   + (f" ({ext_bytes} in this member's)" if size != ext_bytes else ""))
                padded = size + (-size % spec.BLOCK)
                data = rr.read(padded)
                if self._head is not None and len(self._head) < 8 * spec.BLOCK:
                    self._head += data[:8 * spec.BLOCK]
                if len(data) < padded:
                    raise IncompleteArchive(last, rr.tell(), "cut inside an extended header")
                if data.count(0, size) != padded - size:
                    raise _Corrupt(off, "the padding after an extended header is not zeros")
                data = data[:size]
                if t == pax.XHDTYPE:
                    try:
                        recs, last_record = pax.parse_records(data)
                    except pax.HeaderError as ex:
                        raise _Corrupt(off, str(ex)) from None
                    records.update(recs)
                    pax_data = data
                    last_key = _key_at(data, last_record)
                elif t == pax.GNU_LONGNAME:
                    longname = data.split(b"\x00", 1)[0]
                elif t == pax.GNU_LONGLINK:
                    longlink = data.split(b"\x00", 1)[0]
                if extended > 8:
                    raise _Corrupt(off, "more extended headers than a member can have")
                continue        # global headers carry nothing ims-asm uses
            break
        e = _Entry()
        e.header_offset = first
        e.data_offset = rr.tell()
        e.records = records
        e.typeflag = t
        e.block = b
        e.pax = pax_data
        e.last_record = last_record
        e.last_key = last_key
        e.extended = extended
        if "path" in records:
            e.name = records["path"]
        else:
            e.name = (longname or h["name"]).decode("utf-8", "surrogateescape")
        if "linkpath" in records:
            e.linkname = records["linkpath"]
        else:
            e.linkname = (longlink or h["linkname"]).decode("utf-8", "surrogateescape")
        size = h["size"]
        try:
            if "size" in records:
                size = values.decimal(records["size"], 0, spec.SIZE_MAX, "pax size record")
            elif size > spec.SIZE_MAX:
                raise ValueError(f"size field {size} is too large")
            e.mtime = h["mtime"]
            if "mtime" in records:
                e.mtime = values.epoch(records["mtime"], "pax mtime record")
        except ValueError as ex:
            raise _Corrupt(off, str(ex)) from None
        e.size = size
        datasize = 0 if t in (pax.LNKTYPE, pax.SYMTYPE, pax.CHRTYPE, pax.BLKTYPE,
                              pax.DIRTYPE, pax.FIFOTYPE) and size == 0 else size
        e.datasize = datasize
        e.next_offset = e.data_offset + datasize + (-datasize % spec.BLOCK)
        return e

    def _check_digest(self, e):
        """Version 2: the member's IMSASM.digest record is its last and matches the
        records before it and its ustar header block. ValueError if not."""
        if e.extended != 1 or e.pax is None:
            raise ValueError("its headers are not one extended header and a ustar header "
                             "as ims-asm writes them")
        d = e.records.get(spec.DIGEST)
        if d is None or e.last_key != spec.DIGEST:
            raise ValueError("its last record is not IMSASM.digest")
        if hashlib.sha256(e.pax[:e.last_record] + e.block).hexdigest() != d:
            raise ValueError("its records or header do not match their digest (IMSASM.digest)")

    # ------------------------------------------------------------ members
    def _member(self, e, it):
        """Check an entry and turn it into a Member (HostileMember / CorruptMember), or
        _SKIP for a misplaced message of a run already named."""
        name, t, recs, off = e.name, e.typeflag, e.records, e.header_offset

        def hostile(why):
            return HostileMember(name, why, off)

        def corrupt(why):
            return CorruptMember(off, why, name)

        if self.version >= 2:
            try:
                self._check_digest(e)
            except ValueError as ex:
                raise corrupt(str(ex)) from None
            it.sequence.update(b"%s\n" % recs[spec.DIGEST].encode("ascii"))
        # hostile: what would reach outside the store or is a kind of file never written
        if t == pax.SYMTYPE:
            raise hostile(f"symbolic link to {e.linkname[:200]!r}")
        if t in (pax.CHRTYPE, pax.BLKTYPE, pax.FIFOTYPE):
            raise hostile("device or FIFO member")
        for n, what in ((name, "name"), (e.linkname, "link target")):
            if n.startswith("/"):
                raise hostile(f"absolute {what}")
            if ".." in n.replace("\\", "/").split("/"):
                raise hostile(f"{what} with '..'")
        if t not in (pax.REGTYPE, pax.AREGTYPE, pax.CONTTYPE, pax.LNKTYPE, pax.DIRTYPE):
            raise hostile(f"member type {t!r} that ims-asm never writes")
        if t in (pax.LNKTYPE, pax.DIRTYPE) and e.size != 0:
            raise hostile(f"{'hard link' if t == pax.LNKTYPE else 'directory'} claims "
                          f"{e.size} bytes of data")
        for n, what in ((name, "name"), (e.linkname, "link target")):
            if "\x00" in n:
                raise corrupt(f"{what} with a NUL byte")
        if name in spec.RESERVED_NAMES:
            raise corrupt("a second archive header or a misplaced trailer")
        kind = recs.get(spec.KIND)
        if kind is None:
            raise corrupt("member without ims-asm records")
        try:
            partition, user, folder, uid = names.parse(name)
        except ValueError as ex:
            raise corrupt(f"name is not in the ims-asm layout ({ex})") from None
        for level in (partition, user, *(folder.split("/") if folder else ())):
            if level in (".", ".."):
                raise hostile(f"a name level {level!r} (escaped in the member name), which would "
                              "name another place than the store")
        for level, what in ((partition, "partition"), (user, "user")):
            if level is not None and "/" in level:
                raise hostile(f"a {what} name with a '/' (escaped in the member name), which would "
                              "name another place than the store")
        if folder is not None:
            # a folder's levels are the member's directories, each encoded on its own: a
            # level whose escapes decode to hold '/' (%2F) is never written, and would give
            # the folder other levels, or empty ones ('Trash%2F' -> 'Trash/')
            raw = name[:-1] if name.endswith("/") else name[:name.rindex("/")]
            if raw.count("/") - 2 != folder.count("/"):
                raise corrupt("a folder level whose escapes decode to hold '/' (%2F), which ims-asm "
                              "never writes")
        if t == pax.DIRTYPE:
            want = spec.K_USER if folder is None else spec.K_FOLDER
            if kind != want or user is None or uid is not None:
                raise corrupt(f"directory member of kind {kind[:20]!r} where a {want} was expected")
        elif t == pax.LNKTYPE:
            if kind not in (spec.K_LINK, spec.K_MESSAGE) or uid is None:
                raise corrupt("hard link that is not a message")
            kind = spec.K_LINK
        else:
            if kind != spec.K_MESSAGE or uid is None:
                raise corrupt(f"regular file of kind {kind[:20]!r} that is not a message")
        m = Member(self, kind, name)
        m.partition, m.user, m.folder, m.uid = partition, user, folder, uid
        m.header_offset = off
        m.offset = e.data_offset
        m.size = e.size
        m.mtime = e.mtime
        m.records = recs
        m.digest = recs.get(spec.DIGEST)
        for k, v in ((spec.PARTITION, partition), (spec.USER, user), (spec.FOLDER, folder)):
            rv = recs.get(k)
            if rv is not None and rv != v:
                raise corrupt(f"{k} {rv[:60]!r} does not match the member name")
        if folder is not None:
            first, sep, rest = folder.partition("/")
            if first != "INBOX" and len(first) == 5 and first.isascii() and first.upper() == "INBOX":
                # IMAP's INBOX whatever its ASCII case (RFC 3501 5.1), as every store names
                # it: 'inbox/' is the INBOX, and after 'INBOX/' a folder twice (writers
                # write 'INBOX'; a store given 'inbox' kept it apart from its INBOX)
                m.folder = "INBOX" + sep + rest
        try:
            _decode(m, recs, e)
        except ValueError as ex:
            raise corrupt(str(ex)) from None
        if kind == spec.K_LINK:
            m.linkname = e.linkname
            target = it.targets.get(e.linkname)
            if target is None:
                try:
                    in_layout = names.parse(e.linkname)[3] is not None
                except ValueError:
                    in_layout = False
                if in_layout:       # a name of the archive: resolved from it, never as a path
                    raise corrupt(f"hard link to {e.linkname[:200]!r}, which is not an earlier "
                                  "message in this archive (missing, damaged or out of order)")
                raise hostile(f"hard link to {e.linkname[:200]!r}, which is not a message of "
                              "this archive")
            if target[_PLACE.size:] != m.sha256.encode("utf-8", "surrogateescape"):
                raise corrupt(f"hard link to {e.linkname[:200]!r}, whose SHA-256 is not the "
                              "link's: the link or its target was changed")
            m.offset, m.size = _PLACE.unpack_from(target)
        return self._place(m, it, corrupt)

    def _place(self, m, it, corrupt):
        """The order of members (docs/format.md §2): each user and folder once, each
        folder's messages right after it in ascending UID order, each listed by its folder."""
        if m.kind == spec.K_USER:
            it.folder = it.orphans = None
            key = (m.partition, m.user)
            if key in it.users_seen:
                raise corrupt("this user's member appears twice in the archive")
            it.users_seen.add(key)
            it.counts["users"] += 1
            return m
        key = (m.partition, m.user, m.folder)
        if m.kind == spec.K_FOLDER:
            it.folder = it.orphans = None
            if key in it.folders_seen:
                raise corrupt("this folder's member appears twice in the archive")
            it.folders_seen.add(key)
            it.folder = _Folder(key, m.uids)
            it.counts["folders"] += 1
            return m
        f = it.folder
        if f is None or f.key != key:
            if it.orphans == key:
                return _SKIP
            it.orphans = key
            raise corrupt(f"the messages of folder /{m.partition}/{m.user}/{m.folder} from UID "
                          f"{m.uid} on do not follow their folder's member (it is missing, damaged "
                          "or elsewhere in the archive): they are not read")
        if m.uid not in f.uids:
            raise corrupt(f"UID {m.uid} is not in its folder's UID list")
        if m.uid == f.last:
            raise corrupt(f"UID {m.uid} appears twice in the archive")
        if m.uid < f.last:
            raise corrupt(f"UID {m.uid} comes after UID {f.last} of its folder (a folder's messages "
                          "are in ascending UID order): members out of order or present twice")
        f.last = m.uid
        it.orphans = None
        line = b"%s %s\n" % (m.sha256.encode(), m.name.encode("utf-8", "surrogateescape"))
        if m.kind == spec.K_MESSAGE:
            it.targets[m.name] = _target(m)
            it.counts["messages"] += 1
            it.counts["bytes"] += m.size
        else:
            it.counts["links"] += 1
        it.digest.update(line)
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
        if member.kind not in (spec.K_MESSAGE, spec.K_LINK):
            raise ArchiveError(f"member {member.name} has no data")
        return MemberStream(self, member.name, member.offset, member.size, member.sha256)

    def _open(self, member):
        if member.kind not in (spec.K_MESSAGE, spec.K_LINK):
            raise ArchiveError(f"member {member.name} is a {member.kind}; it has no data")
        if member.kind == spec.K_LINK and not self.seekable:
            raise LinkTargetUnavailable(member.name, member.linkname)
        return MemberStream(self, member.name, member.offset, member.size, member.sha256)


def _key_at(data, pos):
    """The (logical) key of the pax record starting at pos of data."""
    sp = data.find(b" ", pos)
    eq = data.find(b"=", sp)
    k = data[sp + 1:eq].decode("utf-8", "replace")
    if k.startswith(spec.WIRE_PREFIX):
        k = spec.LOGICAL_PREFIX + k[len(spec.WIRE_PREFIX):]
    return k


def _decode(m, recs, e):
    """The records of a user, folder, message or link member, each value checked for
    its form and range (ValueError names the first one that is not right)."""
    get = recs.get
    if m.kind == spec.K_USER:
        m.group = get(spec.GROUP, "")
        m.subscriptions = values.subscriptions(get(spec.SUBSCRIPTIONS))
        return
    if m.kind == spec.K_FOLDER:
        m.uidvalidity = values.decimal(_need(recs, spec.UIDVALIDITY), spec.UIDVALIDITY_MIN,
                                       spec.UIDVALIDITY_MAX, spec.UIDVALIDITY)
        m.uidnext = values.decimal(_need(recs, spec.UIDNEXT), spec.UIDNEXT_MIN, spec.UIDNEXT_MAX,
                                   spec.UIDNEXT)
        sub = get(spec.SUBSCRIBED, "0")
        if sub not in ("0", "1"):
            raise ValueError(f"{spec.SUBSCRIBED} is {sub[:20]!r}, not 0 or 1")
        m.subscribed = sub == "1"
        m.uids = UidSet.parse(get(spec.UIDS, ""))
        count = get(spec.COUNT)
        if count is not None and values.decimal(count, 0, spec.COUNT_MAX, spec.COUNT) != len(m.uids):
            raise ValueError(f"{spec.COUNT} {count} but {len(m.uids)} UIDs listed")
        state = get(spec.STATE)
        if state:
            m.state = FolderState.parse(state, m.uids)
        m.state_ids = values.state_ids(get(spec.STATE_IDS), m.state)
        m.state_pop3 = values.state_pop3(get(spec.STATE_POP3), m.state)
        m.mailbox_guid = values.mailbox_guid(get(spec.MAILBOX_GUID))
        m.acl = values.acl(get(spec.ACL))
        return
    uid = values.decimal(_need(recs, spec.UID), spec.UID_MIN, spec.UID_MAX, spec.UID)
    if uid != m.uid:
        raise ValueError(f"{spec.UID} {uid} does not match the member name")
    m.flags = values.flags(get(spec.FLAGS, ""))
    m.keywords = values.keywords(get(spec.KEYWORDS, ""))
    if spec.INTERNALDATE in recs:
        m.internaldate = values.epoch(recs[spec.INTERNALDATE], spec.INTERNALDATE)
    else:
        if not spec.TIME_MIN <= e.mtime <= spec.TIME_MAX:
            raise ValueError(f"mtime {e.mtime} is out of range")
        m.internaldate = e.mtime
    m.stored = values.epoch(recs[spec.STORED], spec.STORED) if spec.STORED in recs else m.internaldate
    m.nlink = values.decimal(get(spec.NLINK, "1"), spec.NLINK_MIN, spec.NLINK_MAX, spec.NLINK)
    m.sha256 = values.sha256(get(spec.SHA256))
    m.guid = values.guid(get(spec.GUID))
    m.basename = values.basename(get(spec.BASENAME))
    m.pop3_uidl = values.pop3_uidl(get(spec.POP3_UIDL))
    order = get(spec.POP3_ORDER)
    if order is not None:
        m.pop3_order = values.decimal(order, spec.POP3_ORDER_MIN, spec.POP3_ORDER_MAX, spec.POP3_ORDER)


def _need(recs, key):
    v = recs.get(key)
    if v is None:
        raise ValueError(f"{key} is missing")
    return v


# a UUID as str(uuid.UUID(x)) writes it (checked so, without importing uuid and platform
# with it at every start)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def _check_header(h):
    """Every field of the header's JSON that a reader uses, by type and range
    (ValueError names the first wrong one).  Unknown keys are left alone."""
    aid = h.get("archive_id")
    if not (isinstance(aid, str) and _UUID.match(aid)):
        raise ValueError(f"archive_id {str(aid)[:60]!r} is not a UUID")
    values.json_time(h.get("created"), "created")
    values.json_time(h.get("since"), "since", optional=True)
    for k in ("tool_version", "host", "driver", "installation"):
        v = h.get(k)
        if v is not None and (not isinstance(v, str) or len(v) > 1000):
            raise ValueError(f"{k} is not a short string")
    scope = h.get("scope", [])
    if not isinstance(scope, list) or not all(isinstance(s, str) for s in scope):
        raise ValueError("scope is not a list of strings")
    if not isinstance(h.get("options", {}), dict):
        raise ValueError("options is not an object")
    bf = h.get("blocking_factor", spec.DEFAULT_BLOCKING_FACTOR)
    if type(bf) is not int or not 1 <= bf <= spec.MAX_BLOCKING_FACTOR:
        raise ValueError(f"blocking_factor {str(bf)[:20]!r} is not 1..{spec.MAX_BLOCKING_FACTOR}")


def _check_trailer(t):
    if not isinstance(t, dict) or t.get("complete") is not True:
        raise ValueError("not a complete trailer")
    if not isinstance(t.get("archive_id"), str):
        raise ValueError("archive_id is not a string")
    counts = t.get("counts")
    if not isinstance(counts, dict) or not all(type(v) is int for v in counts.values()):
        raise ValueError("counts is not an object of numbers")
    errors = t.get("errors", [])
    if not isinstance(errors, list) or not all(
            isinstance(x, dict) and isinstance(x.get("mailbox"), str) and isinstance(x.get("error"), str)
            for x in errors):
        raise ValueError("errors is not a list of {mailbox, error}")
    values.sha256(t.get("digest"), "digest")
