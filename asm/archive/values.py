"""Record values: parsing with the ranges of docs/format.md, and the UID sets and folder
states they describe.

Every parser raises ValueError with a short reason for anything out of range or badly
formed; nothing here ever turns a number of unbounded length into an int, or a UID
range into a list: a :class:`UidSet` is a handful of (start, end) pairs however many
UIDs it spans, so a 21-byte record `1:4294967295` costs two integers.
"""
from __future__ import annotations

import bisect
import functools
import itertools
import json
import math
import operator
import re

from . import spec

_DEC = re.compile(r"(0|[1-9][0-9]{0,19})\Z")          # canonical decimal, at most 20 digits
_TIME = re.compile(r"-?(0|[1-9][0-9]{0,11})(\.[0-9]{1,20})?\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_RANGE = re.compile(r"([1-9][0-9]{0,9})(?::([1-9][0-9]{0,9}))?\Z")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


GUID_RE = re.compile(r"[\x21-\x39\x3b-\x7e]{1,255}\Z")   # printable ASCII, no space or ':'


def _field(text, pattern, key, what):
    """``text`` when ``pattern`` matches it all (None stays None), else ValueError naming ``key``."""
    if text is None:
        return None
    if not pattern.match(text):
        raise ValueError(f"{key} {_short(text)} is not 1..255 printable ASCII characters {what}")
    return text


def guid(text):
    return _field(text, GUID_RE, spec.GUID, "without space or ':'")


# a folder's mailbox GUID (Dovecot's, 128 bits): 32 lowercase hex digits
MAILBOX_GUID_RE = re.compile(r"[0-9a-f]{32}\Z")


def mailbox_guid(text):
    """IMSASM.mailbox_guid: None when absent, else 32 lowercase hex digits."""
    if text is None:
        return None
    if not MAILBOX_GUID_RE.match(text):
        raise ValueError(f"{spec.MAILBOX_GUID} {_short(text)} is not 32 lowercase hex digits")
    return text


# a folder's access control list as Dovecot's acl plugin keeps it in a vfile
# (dovecot-acl): lines "[-]IDENTIFIER RIGHTS", where RIGHTS are IMAP ACL letters
# (RFC 4314, and the obsolete c and d) and/or ":named" rights; blank lines and "#"
# comments are allowed (Dovecot skips them)
_ACL_ID = re.compile(r"-?(anyone|authenticated|owner|(user|group|group-override)=[^\s\x00-\x1f\x7f\"]{1,255})\Z")
_ACL_RIGHT = re.compile(r"([lrwstipekxacd]+|:[A-Za-z0-9_.$-]{1,64})\Z")
_ACL_COMMENT = re.compile(r"#[^\x00-\x08\x0a-\x1f\x7f]*\Z")


def subscriptions(text):
    """IMSASM.subscriptions: None when absent, else a JSON array of the names (one record
    line, whatever the names hold: a pax header counts lines), each a folder name
    (docs/format.md 4.2: levels separated by single '/', no control characters, no '.'
    or '..' level), none twice, at most SUBSCRIPTIONS_MAX."""
    if text is None:
        return None
    what = spec.SUBSCRIPTIONS
    if len(text) > spec.SUBSCRIPTIONS_MAX * 1024:
        raise ValueError(f"{what} has {len(text)} characters, more than {spec.SUBSCRIPTIONS_MAX * 1024}")
    try:
        names = json.loads(text)
    except ValueError:
        raise ValueError(f"{what} is not a JSON array of names") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{what} is not a JSON array of names")
    if len(names) > spec.SUBSCRIPTIONS_MAX:
        raise ValueError(f"{what} has {len(names)} names, more than {spec.SUBSCRIPTIONS_MAX}")
    for name in names:
        if (not name or name[0] == "/" or name[-1] == "/" or "//" in name
                or any(ord(c) < 32 for c in name)
                or any(level in (".", "..") for level in name.split("/"))):
            raise ValueError(f"{what} holds {_short(name)}, which is no folder name (levels separated "
                             f"by single '/', no control character, no '.' or '..' level)")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names a folder twice")
    return names


def acl(text):
    """IMSASM.acl: None when absent, else the text of a Dovecot ACL file ("" for a
    folder without one), each line "[-]identifier rights" (docs/format.md 4.2)."""
    if text is None:
        return None
    what = spec.ACL
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not UTF-8 text") from None
    if size > spec.ACL_MAX_BYTES:
        raise ValueError(f"{what} has {size} bytes, more than {spec.ACL_MAX_BYTES}")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()                      # the file's last newline
    if len(lines) > spec.ACL_MAX_LINES:
        raise ValueError(f"{what} has {len(lines)} lines, more than {spec.ACL_MAX_LINES}")
    for n, line in enumerate(lines, 1):
        if line == "" or _ACL_COMMENT.match(line):
            continue
        ident, _, rights = line.partition(" ")
        if not _ACL_ID.match(ident):
            raise ValueError(f"{what} line {n} {_short(line)} does not start with an ACL identifier "
                             f"(anyone, authenticated, owner, user=NAME, group=NAME, group-override=NAME)")
        words = rights.split(" ")
        if not rights or not all(_ACL_RIGHT.match(w) for w in words):
            raise ValueError(f"{what} line {n} {_short(line)} does not give rights as IMAP ACL "
                             f"letters (lrwstipekxa) or :named rights")
    return text


# a Maildir file's base name: what GUID_RE allows but '/', and no leading '.'
BASENAME_RE = re.compile(r"[\x21-\x2d\x30-\x39\x3b-\x7e][\x21-\x2e\x30-\x39\x3b-\x7e]{0,254}\Z")
POP3_UIDL_RE = re.compile(r"[\x21-\x7e]{1,255}\Z")     # printable ASCII, no space


def basename(text):
    return _field(text, BASENAME_RE, spec.BASENAME, "without space, '/' or ':' that do not start with '.'")


def pop3_uidl(text):
    return _field(text, POP3_UIDL_RE, spec.POP3_UIDL, "without space")


def decimal(text, lo, hi, what):
    """A canonical decimal (no sign, no leading zero) in lo..hi."""
    if not isinstance(text, str) or not _DEC.match(text):
        raise ValueError(f"{what} {_short(text)} is not a number")
    n = int(text)
    if not lo <= n <= hi:
        raise ValueError(f"{what} {n} is out of range ({lo}..{hi})")
    return n


def epoch(text, what):
    """A decimal epoch time (int, or float with a fraction) in TIME_MIN..TIME_MAX."""
    if not isinstance(text, str) or not _TIME.match(text):
        raise ValueError(f"{what} {_short(text)} is not a time")
    t = float(text) if "." in text else int(text)
    if not spec.TIME_MIN <= t <= spec.TIME_MAX:
        raise ValueError(f"{what} {_short(text)} is out of range (years 1..9999)")
    return t


def json_time(v, what, optional=False):
    """A time in a JSON member: a finite int or float in range (None if optional)."""
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{what} is not a time ({type(v).__name__})")
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{what} {v} is not a finite time")
    if not spec.TIME_MIN <= v <= spec.TIME_MAX:
        raise ValueError(f"{what} {_short(str(v))} is out of range (years 1..9999)")
    return v


def sha256(text, what=spec.SHA256):
    if not isinstance(text, str) or not _HEX64.match(text):
        raise ValueError(f"{what} is missing or not 64 lowercase hex digits")
    return text


def flags(text):
    """IMSASM.flags: system flags, space-separated, each once."""
    out = text.split(" ") if text else []
    if len(set(out)) != len(out):
        raise ValueError(f"{spec.FLAGS} lists a flag twice")
    for f in out:
        if f not in spec.SYSTEM_FLAGS:
            raise ValueError(f"{spec.FLAGS} holds {_short(f)}, not an IMAP system flag")
    return frozenset(out)


def keywords(text):
    """IMSASM.keywords: words without spaces or control characters, not starting with '\\'."""
    out = tuple(text.split(" ")) if text else ()
    if len(set(out)) != len(out):
        raise ValueError(f"{spec.KEYWORDS} lists a keyword twice")
    for k in out:
        _keyword(k, spec.KEYWORDS)
    return out


def _keyword(k, what):
    if not k or len(k) > spec.MAX_WORD or k[0] == "\\" or _CONTROL.search(k):
        raise ValueError(f"{what} holds {_short(k)}, which is not a keyword")
    return k


def _short(v):
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


# ----------------------------------------------------------------------------- UID sets

class UidSet:
    """A set of UIDs as sorted, disjoint ranges: membership (bisect), length (arithmetic)
    and iteration (lazy) without ever holding one int per UID."""

    __slots__ = ("_starts", "_ends", "_len", "_text")

    def __init__(self, ranges=()):
        """``ranges``: (start, end) pairs, inclusive, ascending and disjoint."""
        starts, ends = [], []
        for a, b in ranges:
            if starts and a <= ends[-1] + 1:        # adjacent or overlapping: merge
                if a <= ends[-1]:
                    raise ValueError("UID ranges overlap or are not in ascending order")
                ends[-1] = b
            else:
                starts.append(a)
                ends.append(b)
        self._starts, self._ends = starts, ends
        self._len = sum(b - a + 1 for a, b in zip(starts, ends))
        self._text = None                           # str(self), once asked for (never changes)

    @classmethod
    def of(cls, uids):
        """The set of the ints ``uids`` (any order, duplicates dropped)."""
        out = []
        for u in sorted(set(uids)):
            if out and u == out[-1][1] + 1:
                out[-1][1] = u
            else:
                out.append([u, u])
        return cls(out)

    @classmethod
    def parse(cls, text, what=spec.UIDS):
        """'1:3,5,7:9' (ascending, disjoint, each UID in 1..2^32-1) -> UidSet."""
        if not isinstance(text, str):
            raise ValueError(f"{what} is not text")
        if not text:
            return cls()
        # one match for the whole text's form, then plain splits: a state file or an
        # archive holds thousands of these (anything odd: _bad_ranges says what)
        if _ranges_match(text) is None:
            _bad_ranges(text, what)
        starts, ends = [], []
        prev, top = 0, spec.UID_MAX
        canonical = True                # as str() writes it: no 'a:a', no adjacent ranges
        for part in text.split(","):
            a, colon, b = part.partition(":")
            a = int(a)
            b = int(b) if colon else a
            if b < a or a <= prev or b > top:
                _bad_ranges(text, what)
            if a == b and colon:
                canonical = False       # 'a:a'
            if a == prev + 1 and ends:  # adjacent: one range, as __init__ merges them
                ends[-1] = b
                canonical = False
            else:
                starts.append(a)
                ends.append(b)
            prev = b
        out = cls.__new__(cls)
        out._starts, out._ends = starts, ends
        out._len = sum(ends) - sum(starts) + len(starts)
        out._text = text if canonical else None
        return out

    def __contains__(self, uid):
        i = bisect.bisect_right(self._starts, uid) - 1
        return i >= 0 and uid <= self._ends[i]

    def __len__(self):
        return self._len

    def __bool__(self):
        return self._len > 0

    def __iter__(self):
        for a, b in zip(self._starts, self._ends):
            yield from range(a, b + 1)

    def __eq__(self, other):
        if isinstance(other, UidSet):
            return self._starts == other._starts and self._ends == other._ends
        return NotImplemented

    __hash__ = None

    def ranges(self):
        return list(zip(self._starts, self._ends))

    def __str__(self):
        text = self._text
        if text is None:
            text = self._text = ",".join(str(a) if a == b else f"{a}:{b}"
                                         for a, b in zip(self._starts, self._ends))
        return text

    def __repr__(self):
        s = str(self)
        return f"UidSet({s if len(s) < 60 else s[:57] + '...'!r})"

    def max(self):
        return self._ends[-1] if self._ends else None

    def issubset(self, other):
        """Every UID of self is in other (a UidSet): one pass over both range lists."""
        j = 0
        os_, oe = other._starts, other._ends
        for a, b in zip(self._starts, self._ends):
            while j < len(os_) and oe[j] < a:
                j += 1
            if j == len(os_) or os_[j] > a or oe[j] < b:
                return False
        return True

    def count_common(self, other):
        """How many UIDs self and the UidSet ``other`` share (over their ranges)."""
        n = j = 0
        os_, oe = other._starts, other._ends
        for a, b in zip(self._starts, self._ends):
            while j < len(os_) and oe[j] < a:
                j += 1
            k = j
            while k < len(os_) and os_[k] <= b:
                n += min(b, oe[k]) - max(a, os_[k]) + 1
                k += 1
        return n

    def first_not_in(self, present):
        """The lowest UID of self that is not in the container ``present``, or None.
        Looks at no more than len(present) + 1 UIDs, however large self is."""
        for uid in self:
            if uid not in present:
                return uid
        return None


def check_uid_set(uids, what=spec.UIDS):
    """``uids`` (a UidSet) when UidSet.parse would read str(uids) back, else the ValueError
    it raises: every UID in 1..UID_MAX (the writer's check, two comparisons)."""
    s, e = uids._starts, uids._ends
    if s and not (type(s[0]) is int and s[0] >= spec.UID_MIN and e[-1] <= spec.UID_MAX):
        UidSet.parse(str(uids), what)                   # raises with the reader's words
        raise ValueError(f"{what} is not a UID set")    # (never: parse found it wrong)
    return uids


def _ranges_match(text):
    """Whether ``text`` has the form of a UID set ('1:3,5'), as a re match: the pattern
    is compiled at the first call, not at every command's start (~0.3 ms)."""
    global _ranges_match
    _ranges_match = re.compile(
        r"[1-9][0-9]{0,9}(?::[1-9][0-9]{0,9})?(?:,[1-9][0-9]{0,9}(?::[1-9][0-9]{0,9})?)*\Z").match
    return _ranges_match(text)


def _bad_ranges(text, what):
    """Raise the ValueError that says what is wrong with the UID set ``text`` (which
    UidSet.parse found wrong), range by range."""
    prev = 0
    for part in text.split(","):
        m = _RANGE.match(part)
        if not m:
            raise ValueError(f"{what} has a bad range {_short(part)}")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) else a
        if b < a:
            raise ValueError(f"{what} has a descending range {_short(part)}")
        if b > spec.UID_MAX:
            raise ValueError(f"{what} holds a UID above {spec.UID_MAX}")
        if a <= prev:
            raise ValueError(f"{what} is not in ascending order or repeats a UID")
        prev = b
    raise ValueError(f"{what} is not a UID set")


def ranges_disjoint(starts: list, ends: list) -> bool:
    """Whether the ranges of the UID sets whose range starts and ends are ``starts`` and
    ``ends`` (concatenated, each sorted here in place) share no UID: exactly when,
    starts and ends sorted each on their own, every start comes after the end before
    it (then both orders are the ranges')."""
    starts.sort()
    ends.sort()
    return all(map(operator.gt, itertools.islice(starts, 1, None), ends))


@functools.lru_cache(maxsize=1024)
def state_words(words):
    """(flags, keywords) of a folder state's key ("\\Seen $Label1"); ValueError for
    anything that is not distinct system flags and keywords.  (Cached: a folder state
    has a few keys, the same in every folder.)"""
    parts = words.split(" ") if words else []
    fl = frozenset(p for p in parts if p.startswith("\\"))
    kw = tuple(p for p in parts if not p.startswith("\\"))
    if len(fl) + len(kw) != len(parts):
        raise ValueError(f"{spec.STATE} lists a flag twice")
    for f in fl:
        if f not in spec.SYSTEM_FLAGS:
            raise ValueError(f"{spec.STATE} holds {_short(f)}, not an IMAP system flag")
    for k in kw:
        _keyword(k, spec.STATE)
    return fl, kw


def state_ids(text, state) -> bytes | None:
    """IMSASM.state_ids: None when absent, else the identities (4 bytes each, big-endian)
    of the UIDs ``state`` (a FolderState) names, in ascending UID order: base64 of
    exactly 4 bytes per UID."""
    if text is None:
        return None
    import base64
    import binascii
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise ValueError(f"{spec.STATE_IDS} {_short(text)} is not base64") from None
    if len(raw) != 4 * len(state):
        raise ValueError(f"{spec.STATE_IDS} holds {len(raw)} bytes, not 4 for each of the "
                         f"{len(state)} UIDs of {spec.STATE}")
    return raw


def state_pop3_text(pop3: dict) -> str:
    """IMSASM.state_pop3 as written: a JSON object {"UID": [UIDL, order]}, ascending UID,
    UIDL "" for none and order 0 for none (a UID with neither is left out)."""
    return json.dumps({str(uid): [uidl or "", order or 0] for uid, (uidl, order) in sorted(pop3.items())
                       if uidl or order}, separators=(",", ":"))


def state_pop3(text, state) -> dict | None:
    """IMSASM.state_pop3: None when absent, else {uid: (uidl, order)}: each UID one that
    ``state`` (a FolderState) names, each UIDL as IMSASM.pop3_uidl ("" for none), each
    order as IMSASM.pop3_order (0 for none)."""
    if text is None:
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError(f"{spec.STATE_POP3} is not JSON") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{spec.STATE_POP3} is not a JSON object")
    out = {}
    for key, val in obj.items():
        uid = decimal(key, spec.UID_MIN, spec.UID_MAX, spec.STATE_POP3)
        if state is None or state.get(uid) is None:
            raise ValueError(f"{spec.STATE_POP3} names UID {uid}, which {spec.STATE} does not")
        if not (isinstance(val, list) and len(val) == 2 and isinstance(val[0], str)
                and type(val[1]) is int):
            raise ValueError(f"{spec.STATE_POP3} gives UID {uid} {_short(str(val))}, not [UIDL, order]")
        uidl, order = val
        if uidl:
            pop3_uidl(uidl)
        if order and not spec.POP3_ORDER_MIN <= order <= spec.POP3_ORDER_MAX:
            raise ValueError(f"{spec.STATE_POP3} gives UID {uid} the order {order}, out of range")
        if not (uidl or order):
            raise ValueError(f"{spec.STATE_POP3} gives UID {uid} neither a UIDL nor an order")
        out[uid] = (uidl, order)
    return out


class CheckedState(dict):
    """{flags-and-keywords: UidSet}: an IMSASM.state that FolderState.from_obj took, as
    text, naming every UID of the UidSet ``folder`` (each once): the writer takes it
    for that folder without checking it again (asm.backupstate: a state file's record
    of a folder an incremental writes unread)."""

    __slots__ = ("folder",)

    def __init__(self, entries, folder):
        super().__init__(entries)
        self.folder = folder


class FolderState:
    """IMSASM.state: the flags and keywords of the messages an incremental archive lists
    but does not carry, as a few (flags, keywords, UidSet) entries."""

    __slots__ = ("entries", "_len")

    def __init__(self, entries=()):
        self.entries = list(entries)
        self._len = sum(len(u) for _, _, u in self.entries)

    @classmethod
    def parse(cls, text, folder_uids):
        """The record's JSON ({"\\\\Seen $Label1": "1:4,7", ...}); every UID must be listed
        by the folder (``folder_uids``) and have one state only."""
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            raise ValueError(f"{spec.STATE} is not JSON") from None
        return cls.from_obj(obj, folder_uids)

    @classmethod
    def from_obj(cls, obj, folder_uids):
        """parse() of the record's JSON already decoded; ``entries`` keep its order."""
        if not isinstance(obj, dict):
            raise ValueError(f"{spec.STATE} is not a JSON object")
        entries, starts, ends = [], [], []
        for words, ranges in obj.items():
            if not isinstance(ranges, str):
                raise ValueError(f"{spec.STATE} maps a flag list to something that is not a UID list")
            fl, kw = state_words(words)
            uids = UidSet.parse(ranges, spec.STATE)
            if not uids.issubset(folder_uids):
                raise ValueError(f"{spec.STATE} names UIDs that {spec.UIDS} does not list")
            entries.append((fl, kw, uids))
            starts += uids._starts
            ends += uids._ends
        if len(entries) > 1 and not ranges_disjoint(starts, ends):
            raise ValueError(f"{spec.STATE} gives one UID two states")
        return cls(entries)

    def uids(self) -> list:
        """Every UID listed here, ascending (the order of IMSASM.state_ids)."""
        return sorted(u for _, _, s in self.entries for u in s)

    def get(self, uid):
        """(flags, keywords) recorded for uid, or None."""
        for fl, kw, uids in self.entries:
            if uid in uids:
                return fl, kw
        return None

    def __len__(self):
        return self._len

    def __bool__(self):
        return self._len > 0

    def first_not_in(self, present):
        """The lowest UID listed here that is not in ``present`` (bounded, see UidSet)."""
        found = [u for u in (s.first_not_in(present) for _, _, s in self.entries) if u is not None]
        return min(found) if found else None

    def count_common(self, other):
        """How many UIDs listed here the UidSet ``other`` holds too."""
        return sum(u.count_common(other) for _, _, u in self.entries)

    def count_in(self, uids):
        """How many of ``uids`` (an iterable of ints) have a state here."""
        return sum(1 for u in uids if self.get(u) is not None)
