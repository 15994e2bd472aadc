"""ArchiveWriter: logical store content -> ims-asm pax archive (see docs/format.md)."""
import base64
import functools
import hashlib
import json
import os
import stat
import time

from . import fileid, names, pax, spec
from .errors import ArchiveError, CorruptSource, UnarchivableValue, UnreadableSource
from .records import RecordWriter
from . import values
from .values import UidSet

SMALL = 1 << 20          # messages up to this size are read into one buffer
CHUNK = 1 << 20

_K = {k: pax.key(spec.wire(k)) for k in (
    spec.KIND, spec.VERSION_KEY, spec.PARTITION, spec.USER, spec.GROUP, spec.FOLDER,
    spec.UIDVALIDITY, spec.UIDNEXT, spec.SUBSCRIBED, spec.UIDS, spec.COUNT, spec.UID,
    spec.FLAGS, spec.KEYWORDS, spec.INTERNALDATE, spec.STORED, spec.NLINK, spec.SHA256,
    spec.STATE, spec.GUID, spec.BASENAME, spec.POP3_UIDL, spec.POP3_ORDER, spec.MAILBOX_GUID,
    spec.SUBSCRIPTIONS,
    spec.ACL, spec.STATE_IDS, spec.STATE_POP3)}
_R = pax.record
_KIND_USER = _R(_K[spec.KIND], spec.K_USER.encode())
_KIND_FOLDER = _R(_K[spec.KIND], spec.K_FOLDER.encode())
_KIND_MESSAGE = _R(_K[spec.KIND], spec.K_MESSAGE.encode())
_KIND_LINK = _R(_K[spec.KIND], spec.K_LINK.encode())
_KIND_HEADER = _R(_K[spec.KIND], spec.K_HEADER.encode()) + _R(_K[spec.VERSION_KEY], b"%d" % spec.VERSION)
_KIND_TRAILER = _R(_K[spec.KIND], spec.K_TRAILER.encode())


def uuid4():
    """A random UUID (version 4) as text, as str(uuid.uuid4()) gives it (without importing
    uuid, and socket with it, at every start)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _tool_version():
    try:
        from asm import __version__
        return __version__
    except Exception:  # pragma: no cover - archive package used on its own
        return "unknown"


def _encode_ids(ids: list) -> bytes:
    import struct
    return base64.b64encode(struct.pack(f">{len(ids)}I", *ids))


def _checked_state(state, uid_set):
    """(IMSASM.state as its JSON object, {flags-and-keywords: ranges} sorted by key; the
    UidSets of its entries in that order; how many UIDs they name) of ``state``
    ({flags-and-keywords: UidSet or UIDs}), checked as values.FolderState.from_obj
    checks that object against the folder's ``uid_set`` (ValueError with its words),
    without writing each UID set out and parsing it back: a flag list the reader takes,
    UIDs it takes (values.check_uid_set), all in the folder's, none given two states."""
    if type(state) is values.CheckedState and state.folder is uid_set:
        # the reader's own check was made of it against this very UID set (a folder
        # written from an incremental's base record): not made again
        obj = {words: str(uids) for words, uids in sorted(state.items())}
        return obj, list(state.values()), len(uid_set)
    obj, sets, starts, ends = {}, [], [], []
    for words, v in sorted(state.items()):
        uids = v if isinstance(v, UidSet) else UidSet.of(v)
        obj[words] = str(uids)
        values.state_words(words)
        values.check_uid_set(uids, spec.STATE)
        if not uids.issubset(uid_set):
            raise ValueError(f"{spec.STATE} names UIDs that {spec.UIDS} does not list")
        sets.append(uids)
        starts += uids._starts
        ends += uids._ends
    if len(sets) > 1 and not values.ranges_disjoint(starts, ends):
        raise ValueError(f"{spec.STATE} gives one UID two states")
    return obj, sets, sum(len(u) for u in sets)


class _Named:
    """The UIDs an IMSASM.state names (its UidSets), as values.state_pop3 asks them."""

    def __init__(self, sets):
        self.sets = sets

    def get(self, uid):
        return True if any(uid in s for s in self.sets) else None


def uid_ranges(uids):
    """[1,2,3,5,7,8] -> '1:3,5,7:8' (sorted, duplicates dropped)."""
    return str(uids if isinstance(uids, UidSet) else UidSet.of(uids))


def _state_json(obj, _text=json.encoder.encode_basestring):
    """json.dumps(obj, ensure_ascii=False, separators=(",", ":")) of a {str: str} object,
    its strings written by the function json's own encoder uses for them, without
    making that encoder again for every folder (a quarter of an unchanged folder's
    member)."""
    return "{" + ",".join([f"{_text(k)}:{_text(v)}" for k, v in obj.items()]) + "}"


def _words(items, what):
    items = list(items)
    for w in items:
        if not isinstance(w, str) or not w or any(c.isspace() for c in w):
            raise ValueError(f"{what} {values._short(w)} is not a word without spaces")
    return " ".join(items)


@functools.lru_cache(maxsize=1024)
def _flags_rec(flags):
    text = _words(sorted(flags), spec.FLAGS)
    values.flags(text)               # what the reader accepts (ValueError: its reason)
    return _R(_K[spec.FLAGS], text.encode("ascii"))


@functools.lru_cache(maxsize=1024)
def _keywords_rec(keywords):
    # a keyword holding bytes that are not UTF-8 (a client's Latin-1) is kept as those
    # bytes, as names are; the reader gives them back (surrogateescape)
    text = _words(keywords, spec.KEYWORDS)
    values.keywords(text)            # each once, at most MAX_WORD, no '\\' first, ...
    return _R(_K[spec.KEYWORDS], _enc(text))


@functools.lru_cache(maxsize=1024)
def _fk_rec(flags, keywords):
    """The flags and keywords records of a message, together (few distinct values);
    ValueError when the reader would refuse them."""
    return _flags_rec(flags) + _keywords_rec(keywords)


def _check_time(t, what):
    """ValueError unless the reader takes ``t`` back (values.epoch: years 1..9999)."""
    if type(t) not in (int, float) or not spec.TIME_MIN <= t <= spec.TIME_MAX:
        values.json_time(t, what)    # the reader's range and reason (NaN fails the test above)


_K_UID = _K[spec.UID]
_K_UID_LEN = len(_K_UID) + 3          # 'LEN' (two digits: a UID has at most 10) + '\n'
assert len(_K_UID) + 10 + 3 < 100
_K_INTERNALDATE = _K[spec.INTERNALDATE]
_K_STORED = _K[spec.STORED]
_K_GUID = _K[spec.GUID]


@functools.lru_cache(maxsize=64)
def _nlink_rec(nlink):
    return _R(_K[spec.NLINK], b"%d" % nlink)


def _time_rec(k, t):
    tt = type(t)
    if tt is int:
        return _R(k, b"%d" % t)
    if tt is float and 1e-4 <= t < 1e15:
        # pax.fmt_time's answer without its checks: in this range repr() has no exponent
        return _R(k, b"%d" % t if t.is_integer() else repr(t).encode("ascii"))
    return _R(k, pax.fmt_time(t).encode("ascii"))


_SHA_PREFIX = _R(_K[spec.SHA256], b"0" * 64)[:-65]     # b'<len> IMSASM.sha256='


def _enc(s):
    return s.encode("utf-8", "surrogateescape")


class ArchiveWriter:
    """Writes one archive to raw (anything with write(bytes)).

    Call write_header() first, then add_user/add_folder/add_message in store
    order, then close(). The archive is only complete after close().
    """

    def __init__(self, raw, blocking_factor=spec.DEFAULT_BLOCKING_FACTOR):
        self._rw = RecordWriter(raw, blocking_factor)
        self.blocking_factor = blocking_factor
        self.header = None
        self.trailer = None
        self._links = {}             # link_key -> (member name, sha256 hex, ustar name field or
                                     # None, fileid.identity or None) of the last message
                                     # member written under it
        self._sequence = hashlib.sha256()    # the trailer's digest: every member's digest
        self._mtime = 0
        self._folder = None          # ((partition, user, folder), UidSet, member name
                                     # prefix, its ASCII bytes or None) being written
        self._guid = None            # the GUID of the message being added
        self._more = b""             # its IMSASM.basename/pop3_uidl/pop3_order records
        self.counts = {"users": 0, "folders": 0, "messages": 0, "links": 0, "bytes": 0}

    @property
    def links_written(self):
        """The link keys of the messages written so far (``key in writer.links_written``)."""
        return self._links.keys()

    @property
    def offset(self):
        """Archive bytes produced so far (including what is still buffered)."""
        return self._rw.offset

    def _check_open(self):
        if self.header is None:
            raise ArchiveError("write_header() must be called before adding members")
        if self.trailer is not None:
            raise ArchiveError("archive is already closed")

    def _member(self, name, typeflag, mode_b, size, mtime, records, linkname="", name_f=None,
                link_f=b""):
        """The headers of one member (bytes), its digest counted in the trailer's.
        name_f/link_f: the ustar name and link fields when known to need no pax record
        (ASCII, at most 100 bytes): the common case, built without re-encoding."""
        if name_f is not None and link_f is not None:
            hdr, digest = pax.member_plain(name_f, typeflag, mode_b, size, mtime, records, link_f)
        else:
            hdr, digest = pax.member(name, typeflag, mode_b, size, mtime, records, linkname)
        self._sequence.update(b"%s\n" % digest.encode("ascii"))
        return hdr

    def _json_member(self, name, obj, kind_rec):
        data = names.dump_json(obj, sort_keys=True, indent=1) + b"\n"
        recs = kind_rec + _R(_K[spec.SHA256], hashlib.sha256(data).hexdigest().encode("ascii"))
        hdr, digest = pax.member(name, pax.REGTYPE, pax.MODE_0644, len(data), self._mtime, recs)
        self._rw.write(b"".join((hdr, data, pax._pad(len(data)))))
        return digest

    def write_header(self, info=None):
        """Write the ims-asm.header member; returns the full header dict."""
        if self.header is not None:
            raise ArchiveError("write_header() called twice")
        hdr = {
            "format": spec.FORMAT, "version": spec.VERSION, "tool_version": _tool_version(),
            "archive_id": uuid4(), "host": os.uname().nodename,
            "created": time.time(), "driver": None, "scope": [], "since": None,
            "options": {},
        }
        hdr.update(info or {})
        hdr["format"], hdr["version"] = spec.FORMAT, spec.VERSION
        hdr["blocking_factor"] = self.blocking_factor
        self._mtime = int(hdr["created"]) if isinstance(hdr["created"], (int, float)) else 0
        digest = self._json_member(spec.HEADER_NAME, hdr, _KIND_HEADER)
        self._sequence.update(b"%s\n" % digest.encode("ascii"))
        self.header = hdr
        return hdr

    def add_user(self, partition, user, group, subscriptions=None):
        """``subscriptions``: the user's subscribed names that are no folder of it (an
        IMAP client's subscription Dovecot kept after a DELETE or RENAME, a parent that
        only holds folders), [] for none; None: not recorded (a backup of some of its
        folders).  ValueError for a list a reader would refuse."""
        self._check_open()
        self._folder = None
        name = names.user_dir(partition, user)
        recs = b"".join((_KIND_USER, _R(_K[spec.PARTITION], _enc(partition)),
                         _R(_K[spec.USER], _enc(user)), _R(_K[spec.GROUP], _enc(group or ""))))
        if subscriptions is not None:
            text = json.dumps(list(subscriptions))      # (ASCII, one line: \uXXXX for the rest)
            values.subscriptions(text)
            recs += _R(_K[spec.SUBSCRIPTIONS], text.encode("ascii"))
        self._rw.write(self._member(name, pax.DIRTYPE, pax.MODE_0700, 0, self._mtime, recs))
        self.counts["users"] += 1

    def add_folder(self, partition, user, folder, *, uidvalidity, uidnext, subscribed, uids,
                   state=None, mailbox_guid=None, acl=None, state_ids=None, state_pop3=None):
        """``uids``: every UID of the folder; the folder's messages are added next.
        ``state`` (incremental archives): {flags-and-keywords string: [uid, ...]} for
        the messages listed in ``uids`` whose bytes this archive does not carry, so a
        restore of the chain can set their flags as they were at this backup.
        ``mailbox_guid``: the folder's mailbox GUID (32 lowercase hex digits), or
        None/"" when the store has none; ValueError for one a reader would refuse.
        ``acl``: the folder's access control list as its store keeps it (Dovecot's
        dovecot-acl text, "" for a folder without one), or None when the store does
        not say (no record is written).  ``state_ids``: {UID: identity} (asm.backupstate.
        identity) of the messages ``state`` names, so that an incremental taking this
        archive as its base (--base ARCHIVE) knows what is under each UID it lists, as
        its state file does (IMSASM.state_ids; not written when none is known), or
        those identities packed already as the record holds them (bytes: 4 a UID of
        ``state``, in ascending UID order).  ``state``'s UID lists may be UidSets.
        ``state_pop3``: {UID: (POP3 UIDL or "", POP3 order or 0)} of the messages
        ``state`` names that have either (Dovecot's uidlist P and O fields: saved by
        pop3_save_uidl when a POP3 client logged in, after the backup that carried the
        message), so a chain restore gives them back (IMSASM.state_pop3)."""
        self._check_open()
        name = names.folder_dir(partition, user, folder)
        uid_set = uids if isinstance(uids, UidSet) else UidSet.of(uids)
        extra = b""
        try:
            # the reader's checks, so no folder member is written that it would refuse
            # (with it every message of the folder)
            values.decimal(str(uidvalidity), spec.UIDVALIDITY_MIN, spec.UIDVALIDITY_MAX,
                           spec.UIDVALIDITY)
            values.decimal(str(uidnext), spec.UIDNEXT_MIN, spec.UIDNEXT_MAX, spec.UIDNEXT)
            values.check_uid_set(uid_set)
            if mailbox_guid:
                values.mailbox_guid(mailbox_guid)
            if acl is not None:
                values.acl(acl)
            if state:
                obj, sets, n = _checked_state(state, uid_set)
                extra = _R(_K[spec.STATE], _enc(_state_json(obj)))
                if type(state_ids) is bytes:
                    # packed already (4 bytes a UID, in ascending UID order): an
                    # incremental's folder taken from its base's record
                    if len(state_ids) != 4 * n:
                        raise ArchiveError(f"folder {name}: state_ids holds {len(state_ids)} bytes "
                                           f"for {n} UIDs")
                    if any(state_ids):
                        extra += _R(_K[spec.STATE_IDS], base64.b64encode(state_ids))
                elif state_ids:
                    # the state's UIDs ascending (values.FolderState.uids()): the folder's
                    # own when the state names every one of them
                    order = uid_set if n == len(uid_set) else sorted(u for s in sets for u in s)
                    ids = [state_ids.get(u, 0) for u in order]
                    if any(ids):
                        extra += _R(_K[spec.STATE_IDS], _encode_ids(ids))
                if state_pop3:
                    text = values.state_pop3_text(state_pop3)
                    values.state_pop3(text, _Named(sets))     # the reader's check
                    extra += _R(_K[spec.STATE_POP3], text.encode("ascii"))
        except ValueError as exc:
            raise UnarchivableValue(f"folder {name}", str(exc)) from None
        recs = b"".join((
            extra, _KIND_FOLDER, _R(_K[spec.PARTITION], _enc(partition)),
            _R(_K[spec.USER], _enc(user)), _R(_K[spec.FOLDER], _enc(folder)),
            _R(_K[spec.UIDVALIDITY], b"%d" % uidvalidity), _R(_K[spec.UIDNEXT], b"%d" % uidnext),
            _R(_K[spec.SUBSCRIBED], b"1" if subscribed else b"0"),
            _R(_K[spec.UIDS], str(uid_set).encode("ascii")),
            _R(_K[spec.COUNT], b"%d" % len(uid_set)),
            _R(_K[spec.MAILBOX_GUID], mailbox_guid.encode("ascii")) if mailbox_guid else b"",
            _R(_K[spec.ACL], acl.encode("utf-8")) if acl is not None else b""))
        name_b = name.encode("ascii") if name.isascii() else None
        self._rw.write(self._member(name, pax.DIRTYPE, pax.MODE_0700, 0, self._mtime, recs,
                                    name_f=name_b if name_b is not None and len(name_b) <= 100 else None))
        self._folder = ((partition, user, folder), uid_set, name, name_b)
        self.counts["folders"] += 1

    def _message_records(self, kind_rec, uid, flags, keywords, internaldate, stored, nlink, sha):
        guid = self._guid
        fk = _fk_rec(flags if type(flags) is frozenset else frozenset(flags),
                     keywords if type(keywords) is tuple else tuple(keywords))
        u = b"%d" % uid
        return b"".join((
            kind_rec, b"%d%s%s\n" % (len(u) + _K_UID_LEN, _K_UID, u), fk,
            _time_rec(_K_INTERNALDATE, internaldate), _time_rec(_K_STORED, stored),
            _nlink_rec(nlink), _R(_K_GUID, guid.encode("ascii")) if guid else b"", self._more,
            _SHA_PREFIX, sha.encode("ascii"), b"\n"))

    def _message_name(self, partition, user, folder, uid):
        """The member name of a message (str) and its ustar name field (bytes, or None
        when the name needs a pax path record), from the folder's cached prefix."""
        fk = (partition, user, folder)
        cur = self._folder
        if cur is None or cur[0] != fk:
            raise ArchiveError(f"message {names.message_name(partition, user, folder, uid)} added "
                               "after another member than its folder's: add_folder() first, then "
                               "that folder's messages")
        if type(uid) is not int or uid < 0:
            names.message_name(partition, user, folder, uid)     # raises the ValueError
        if uid not in cur[1]:
            raise ArchiveError(f"message {names.message_name(partition, user, folder, uid)}: "
                               f"UID {uid} is not in its folder's UID list")
        prefix, prefix_b = cur[2], cur[3]
        name = f"{prefix}{uid}.eml"
        if prefix_b is not None:
            name_b = b"%s%d.eml" % (prefix_b, uid)
            if len(name_b) <= 100:
                return name, name_b
        return name, None

    def add_message(self, partition, user, folder, *, uid, flags, keywords, internaldate,
                    stored, nlink=1, src_path=None, src_file=None, size=None, link_key=None,
                    guid=None, src_data=None, basename=None, pop3_uidl=None, pop3_order=None):
        """Add one message; returns its member name.

        The bytes come from src_path (opened here; FileNotFoundError propagates)
        or src_file (must be seekable if bigger than 1 MiB). size is only a hint.
        src_data: (bytes, sha256 hex[, identity]) of src_path read already (by a
        reader thread, :mod:`asm.backupread`: :func:`read_small`), at most SMALL bytes;
        used instead of reading src_path, to write the member or to compare it with a
        copy written before.  identity is :func:`fileid.identity` of the file the bytes
        were read from (or None).
        If link_key (e.g. (st_dev, st_ino)) was already written, a hard-link member
        naming the first copy is written when this copy is proven the same: the file
        opened (or read ahead) has the identity the first copy's file had (the same
        inode, generation, size and mtime), or, where the filesystem gives no
        generation numbers or the identities differ, its bytes have the first copy's
        SHA-256.  Other bytes (the inode number reused by another message once the
        first copy's file was gone) are written in full, and the key names this member
        from then on (docs/format.md §2.6).
        CorruptSource: a big file changed between hashing and writing; its
        member is in the archive and will fail its digest on restore.
        """
        self._check_open()
        name, name_f = self._message_name(partition, user, folder, uid)
        try:
            # the reader's checks (values.py), so no member is written that it would
            # refuse: flags and keywords once per distinct set (cached), times by range
            _fk_rec(flags if type(flags) is frozenset else frozenset(flags),
                    keywords if type(keywords) is tuple else tuple(keywords))
            _check_time(internaldate, spec.INTERNALDATE)
            _check_time(stored, spec.STORED)
            if type(nlink) is not int or not spec.NLINK_MIN <= nlink <= spec.NLINK_MAX:
                values.decimal(str(nlink), spec.NLINK_MIN, spec.NLINK_MAX, spec.NLINK)
        except ValueError as exc:
            raise UnarchivableValue(f"message {name}", str(exc)) from None
        mtime = internaldate if isinstance(internaldate, int) else float(internaldate)
        if type(mtime) is float and mtime.is_integer() and 0 <= mtime < pax.MAX_OCTAL:
            mtime = int(mtime)           # the same header, built on the quick path
        # the store's GUID of the message (IMSASM.guid), when it is one a record can hold
        self._guid = guid if guid and values.GUID_RE.match(guid) else None
        # what POP3 clients know the message by (docs/format.md §2.5), when given
        self._more = b"" if not (basename or pop3_uidl or pop3_order) else b"".join((
            _R(_K[spec.BASENAME], basename.encode("ascii"))
            if basename and values.BASENAME_RE.match(basename) else b"",
            _R(_K[spec.POP3_UIDL], pop3_uidl.encode("ascii"))
            if pop3_uidl and values.POP3_UIDL_RE.match(pop3_uidl) else b"",
            _R(_K[spec.POP3_ORDER], b"%d" % pop3_order)
            if type(pop3_order) is int and spec.POP3_ORDER_MIN <= pop3_order <= spec.POP3_ORDER_MAX else b""))
        opened = None                # the file opened here, to prove and to write
        ident = None                 # fileid.identity of the file the bytes come from
        try:
            if link_key is not None:
                if src_data is not None:
                    ident = src_data[2] if len(src_data) > 2 else None
                elif src_file is None and src_path is not None:
                    opened = _FdFile.open_message(src_path, name)
                    ident = fileid.identity(opened.fd, opened.st)
                hit = self._links.get(link_key)
                if hit is not None:
                    # the key says "the same file", but an inode number is reused once
                    # its file is gone (expunged during this run): a link only for the
                    # same inode (identity) or, short of that proof, the same bytes
                    target, sha, target_f, known = hit
                    same = ident is not None and ident == known
                    if not same:
                        src_data, same = self._compare(name, sha, src_data, opened or src_file,
                                                       src_path if src_file is None else
                                                       getattr(src_file, "name", None))
                    if same:
                        if ident is not None and ident != known:
                            # proven by its bytes: its own other copies are proven by
                            # their identity from now on (they have those bytes too)
                            self._links[link_key] = (target, sha, target_f, ident)
                        recs = self._message_records(_KIND_LINK, uid, flags, keywords, internaldate,
                                                     stored, nlink, sha)
                        self._rw.write(self._member(name, pax.LNKTYPE, pax.MODE_0600, 0, mtime, recs,
                                                    linkname=target, name_f=name_f, link_f=target_f))
                        self.counts["links"] += 1
                        return name
            if src_data is not None:
                data, sha = src_data[0], src_data[1]
                n = len(data)
                if n > SMALL:
                    raise ValueError("src_data is for messages up to SMALL bytes")
                recs = self._message_records(_KIND_MESSAGE, uid, flags, keywords, internaldate,
                                             stored, nlink, sha)
                self._rw.write(b"".join((self._member(name, pax.REGTYPE, pax.MODE_0600, n, mtime,
                                                      recs, name_f=name_f),
                                         data, pax._pad(n))))
                self._count_message(n)
            elif src_path is not None:
                if opened is None:
                    opened = _FdFile.open_message(src_path, name)  # os.open: cheaper than open()
                sha, n = self._write_data(name, opened, src_path, flags, keywords, uid,
                                          internaldate, stored, nlink, mtime, name_f)
            elif src_file is not None:
                sha, n = self._write_data(name, src_file, getattr(src_file, "name", None), flags,
                                          keywords, uid, internaldate, stored, nlink, mtime, name_f)
            else:
                raise ValueError("add_message needs src_path or src_file")
        finally:
            if opened is not None:
                opened.close()
        if link_key is not None:
            self._links[link_key] = (name, sha, name_f, ident)
        return name

    def _compare(self, name, sha, src_data, f, src):
        """(src_data, same): whether the message's bytes have the SHA-256 ``sha`` of the
        member a link would name.  They are src_data's when given, else read from the
        open file ``f`` (``src`` names it in errors).  src_data comes back as (bytes,
        sha256 hex) when the bytes were read here and fit one buffer (the member is then
        written from them, so what was compared is what is written), else as given; f
        read to its end is put back at its start."""
        if src_data is not None:
            return src_data, src_data[1] == sha
        if f is None:
            return None, False       # add_message says what is missing
        try:
            data = _read_start(f)
            if len(data) <= SMALL:
                got = (data, hashlib.sha256(data).hexdigest())
                return got, got[1] == sha
            h = hashlib.sha256(data)
            del data
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                h.update(chunk)
        except OSError as exc:
            raise UnreadableSource(name, src, f"reading it failed: {exc.strerror or exc}") from None
        try:
            f.seek(0)
        except (AttributeError, OSError) as e:
            raise ArchiveError(f"message {name} is bigger than 1 MiB and its source "
                               f"cannot be re-read ({e}); pass src_path or a seekable file") from e
        return None, h.hexdigest() == sha

    def _write_data(self, name, f, src, flags, keywords, uid, internaldate, stored, nlink, mtime,
                    name_f=None):
        try:
            first = _read_start(f)
        except OSError as exc:
            raise UnreadableSource(name, src, f"reading it failed: {exc.strerror or exc}") from None
        rw = self._rw
        if len(first) <= SMALL:
            sha = hashlib.sha256(first).hexdigest()
            n = len(first)
            recs = self._message_records(_KIND_MESSAGE, uid, flags, keywords, internaldate,
                                         stored, nlink, sha)
            rw.write(b"".join((self._member(name, pax.REGTYPE, pax.MODE_0600, n, mtime, recs,
                                            name_f=name_f),
                               first, pax._pad(n))))
            self._count_message(n)
            return sha, n
        # Big message: pass 1 hashes (bounded memory), pass 2 streams.
        h = hashlib.sha256(first)
        n = len(first)
        del first
        while True:
            try:
                chunk = f.read(CHUNK)
            except OSError as exc:
                raise UnreadableSource(name, src, f"reading it failed: {exc.strerror or exc}") from None
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        sha = h.hexdigest()
        try:
            f.seek(0)
        except (AttributeError, OSError) as e:
            raise ArchiveError(f"message {name} is bigger than 1 MiB and its source "
                               f"cannot be re-read ({e}); pass src_path or a seekable file") from e
        recs = self._message_records(_KIND_MESSAGE, uid, flags, keywords, internaldate,
                                     stored, nlink, sha)
        rw.write(self._member(name, pax.REGTYPE, pax.MODE_0600, n, mtime, recs, name_f=name_f))
        h2 = hashlib.sha256()
        left = n
        failed = None
        while left:
            try:
                chunk = f.read(min(CHUNK, left))
            except OSError as exc:
                failed = exc
                break
            if not chunk:
                break
            h2.update(chunk)
            rw.write(chunk)
            left -= len(chunk)
        grew = False
        if failed is None:
            try:
                grew = f.read(1) != b""
            except OSError:
                pass                 # every byte was read: the member is whole
        changed = bool(left) or grew or h2.hexdigest() != sha
        if left:             # file shrank or could not be read: keep the archive well-formed
            zeros = bytes(min(CHUNK, left))
            while left:
                k = min(left, len(zeros))
                rw.write(zeros[:k])
                left -= k
        rw.pad_block()
        self._count_message(n)
        if failed is not None:
            raise UnreadableSource(name, src, f"reading it failed: {failed.strerror or failed}", written=True)
        if changed:
            if grew and not left and h2.hexdigest() == sha:
                raise CorruptSource(name, src, f"it grew past the {n} bytes read (a message file "
                                               f"is never written in place); the archive holds those "
                                               f"{n} bytes")
            raise CorruptSource(name, src)
        return sha, n

    def _count_message(self, n):
        self.counts["messages"] += 1
        self.counts["bytes"] += n

    def close(self, errors=()):
        """Write the trailer, the two end blocks and the last record; returns the trailer."""
        if self.trailer is not None:
            return self.trailer
        if self.header is None:
            raise ArchiveError("write_header() must be called before close()")
        errs = []
        for e in errors:
            if isinstance(e, dict):
                errs.append({"mailbox": e.get("mailbox"), "error": str(e.get("error"))})
            else:
                mailbox, err = e
                errs.append({"mailbox": mailbox, "error": str(err)})
        trailer = {"complete": True, "archive_id": self.header["archive_id"],
                   "counts": dict(self.counts), "errors": errs,
                   "digest": self._sequence.hexdigest()}
        self._json_member(spec.TRAILER_NAME, trailer, _KIND_TRAILER)
        self._rw.write(spec.ZERO_BLOCK * 2)
        self._rw.close()
        self.trailer = trailer
        return trailer


def read_small(path, ident=False):
    """(bytes, sha256 hex, identity) of the message file ``path`` when it is a regular
    file of at most SMALL bytes, else None; any error propagates.  identity is
    :func:`fileid.identity` of the file read when ``ident`` (a copy add_message may make
    a link, or the first of them), else None.  For reader threads: the checks are those
    of add_message(src_path=...), which says what is wrong when this fails."""
    f = _FdFile.open_message(path, path)
    try:
        who = fileid.identity(f.fd, f.st) if ident else None
        data = _read_start(f)
    finally:
        f.close()
    if len(data) > SMALL:
        return None
    return data, hashlib.sha256(data).hexdigest(), who


def _first_read(f):
    """How much to ask for first: the file's size and one byte more (a file that grew
    is seen), at most SMALL + 1.  A buffer of SMALL + 1 bytes allocated for every
    small message cost more than reading it (bench/RESULTS.md, issue 17)."""
    size = getattr(f, "size", None)
    if size is None or size >= SMALL:
        return SMALL + 1
    return size + 1


def _read_start(f):
    """The first SMALL + 1 bytes of f at most (all of a small message), read in one
    system call of the right size when f knows its size."""
    n = _first_read(f)
    data = _read_upto(f, n)
    if len(data) == n and n <= SMALL:    # more than fstat said (it grows): read on
        data += _read_upto(f, SMALL + 1 - n)
    return data


def _read_upto(f, n):
    """Read up to n bytes (looping over short reads of unbuffered files)."""
    data = f.read(n)
    if data is None:
        data = b""
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        d = f.read(n - got)
        if not d:
            break
        parts.append(d)
        got += len(d)
    return b"".join(parts)


_KIND = {stat.S_IFIFO: "a FIFO", stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device",
         stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))


def _not_a_message(st):
    """Why a file with this stat is no message file, or None for a regular file."""
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link, not a message file (links are never followed)"
    return f"it is {_KIND.get(stat.S_IFMT(st.st_mode), 'not a regular file')}, not a message file"


class _FdFile:
    """Minimal unbuffered file over os.open (read, seek, close); ``size`` is the
    file's size when it was opened (fstat), a hint for the first read; ``st`` that
    fstat (None when opened by path alone)."""

    __slots__ = ("fd", "size", "st")

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.size = None
        self.st = None

    @classmethod
    def open_message(cls, path, name):
        """Open a message file without ever blocking or following a link: a FIFO would
        hang the backup, a link could name any file on the system.  FileNotFoundError
        propagates (the message was expunged or renamed); anything else that is not a
        regular file is UnreadableSource.  The open itself refuses a link (O_NOFOLLOW)
        and never blocks (O_NONBLOCK); fstat then says what was opened, so the common
        case costs one open and one fstat (lstat only explains a refusal)."""
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            raise
        except OSError as exc:      # ELOOP: a link; ENXIO: a socket; ...
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise
            except OSError:
                st = None
            why = _not_a_message(st) if st is not None else None
            if why is None:
                why = f"it cannot be opened: {exc.strerror}"
            elif stat.S_ISLNK(st.st_mode) and not os.path.exists(path):
                why = "it is a symbolic link to a missing file, not a message file"
            raise UnreadableSource(name, path, why) from None
        try:
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise UnreadableSource(name, path, f"it cannot be read: {exc.strerror}") from None
        why = _not_a_message(st)
        if why is None:
            f = cls.__new__(cls)
            f.fd = fd
            f.size = st.st_size
            f.st = st
            return f
        os.close(fd)
        raise UnreadableSource(name, path, why)

    def read(self, n):
        return os.read(self.fd, n)

    def seek(self, pos):
        return os.lseek(self.fd, pos, os.SEEK_SET)

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
