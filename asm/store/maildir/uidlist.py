"""``dovecot-uidlist``: the file that gives a Maildir folder's messages their UIDs.

Version 3, as Dovecot 2.3 writes it: a header line ``3 V<uidvalidity> N<uidnext>
G<guid> ...``, then one line per message, ``<uid> [<ext fields>] :<base name>``.
Dovecot appends lines for new messages without rewriting the header, so UIDNEXT is
the larger of the header's and the last line's UID + 1.
"""
from __future__ import annotations

import os

from asm.store.base import StoreError, write_all

UIDLIST = "dovecot-uidlist"

# the ranges Dovecot reads (maildir-uidlist.c): a UIDVALIDITY of 0 or above 2^32-1 is a
# "broken header", a UID of 0 "invalid data"; Dovecot then deletes the file and
# rebuilds it, numbering the messages again.  (UIDNEXT may be 2^32, one past the last
# UID, which this driver writes after a message with UID 2^32-1.)
_UID_MAX = 2 ** 32 - 1
_REPAIR = ("Dovecot would delete and rebuild this file, numbering the folder's messages "
           "again; run reconstruct on the folder (docs/maildir.md, \"Reconstruct\")")


def _number(text: str, lo: int, hi: int, what: str, path: str) -> int:
    """A header number as Dovecot reads it (ASCII digits, lo..hi), else StoreError."""
    if not (text.isdigit() and text.isascii() and len(text) <= 10 and lo <= int(text) <= hi):
        raise StoreError(f"{path}: damaged header: {what} {text[:20]!r} is not a number in "
                         f"{lo}..{hi}; {_REPAIR}")
    return int(text)


class Uidlist:
    """A parsed ``dovecot-uidlist``: header fields and ``uid -> (ext fields, base)``.
    (A plain class, not a dataclass: a dataclass execs its generated methods at import,
    at every start of a command on a Maildir store.)"""

    def __init__(self, uidvalidity: int = 0, uidnext: int = 1, extra: list | None = None,
                 records: dict | None = None, header_uidnext: int = 1, torn: bool = False):
        self.uidvalidity = uidvalidity
        self.uidnext = uidnext
        self.extra = [] if extra is None else extra         # other header fields, e.g. G<guid>
        self.records = {} if records is None else records   # uid -> (ext, base)
        self.header_uidnext = header_uidnext                # N of the header line alone
        self.torn = torn                                    # the file's last line has no newline

    @classmethod
    def parse(cls, text: str, path: str = UIDLIST) -> "Uidlist":
        lines = text.split("\n")
        head = lines[0].split()
        if not head:
            raise StoreError(f"{path}: empty header")
        ul = cls()
        uv = nx = None
        if head[0] == "3":
            for f in head[1:]:
                if f[:1] == "V":
                    uv = f[1:]
                elif f[:1] == "N":
                    nx = f[1:]
                else:
                    ul.extra.append(f)
        elif head[0] == "1" and len(head) >= 3:
            uv, nx = head[1], head[2]
        else:
            raise StoreError(f"{path}: unsupported dovecot-uidlist version {head[0]!r}")
        ul.uidvalidity = _number(uv or "", 1, _UID_MAX, "UIDVALIDITY", path)
        ul.uidnext = _number(nx or "", 1, _UID_MAX + 1, "UIDNEXT", path)
        ul.header_uidnext = ul.uidnext
        records = ul.records
        last = 0
        # a last line without its newline is a record whose writer was cut off: it is
        # kept when it reads as a whole record, and the file is rewritten before any
        # line is appended to it
        ul.torn = len(lines) > 1 and lines[-1] != ""
        for n, line in enumerate(lines[1:], 2):
            if not line:
                continue
            uid_s, _, rest = line.partition(" ")
            try:
                if not (rest and uid_s.isdigit() and uid_s.isascii() and len(uid_s) <= 10):
                    raise ValueError(line)
                uid = int(uid_s)
            except ValueError:
                if ul.torn and n == len(lines):
                    continue
                raise StoreError(f"{path}: bad line {line!r}") from None
            if not 1 <= uid <= _UID_MAX:
                raise StoreError(f"{path}: damaged line {line[:80]!r}: UID {uid} is not in "
                                 f"1..{_UID_MAX}; {_REPAIR}")
            if rest[:1] == ":":
                ext, name = "", rest[1:]
            else:
                i = rest.find(" :")
                if i < 0:
                    if head[0] == "1":
                        ext, name = "", rest
                    elif ul.torn and n == len(lines):
                        continue
                    else:
                        raise StoreError(f"{path}: bad line {line!r}")
                else:
                    ext, name = rest[:i], rest[i + 2:]
            records[uid] = (ext, name.partition(":")[0])
            last = max(last, uid)
        if ul.uidnext <= last:              # Dovecot appends lines without a new header
            ul.uidnext = last + 1
        return ul

    @staticmethod
    def can_hold(base: str) -> bool:
        """Whether a record can name ``base``: not with a line break in it (a record is
        one line; Dovecot's reader also takes a '\r' before the '\n' off its end)."""
        return "\n" not in base and "\r" not in base

    @staticmethod
    def record_line(uid: int, ext: str, base: str) -> str:
        return f"{uid} {ext} :{base}\n" if ext else f"{uid} :{base}\n"

    def render(self) -> str:
        head = " ".join(["3", f"V{self.uidvalidity}", f"N{self.uidnext}", *self.extra])
        out = [head]
        for uid in sorted(self.records):
            ext, base = self.records[uid]
            out.append(f"{uid} {ext} :{base}" if ext else f"{uid} :{base}")
        return "\n".join(out) + "\n"

    def by_base(self) -> dict:
        return {base: uid for uid, (_, base) in self.records.items()}


def open_uidlist(path: str):
    """The file as text in lines ended by '\n' alone (Dovecot's): a '\r' is part of a
    record's name, never the end of a line (no universal newlines)."""
    return open(path, encoding="utf-8", errors="surrogateescape", newline="\n", opener=_nofollow)


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)      # a link there is never read through


def read_uidlist(folder_dir: str) -> Uidlist | None:
    path = os.path.join(folder_dir, UIDLIST)
    try:
        with open_uidlist(path) as f:
            return Uidlist.parse(f.read(), path)
    except FileNotFoundError:
        return None


def read_uidlist_header(folder_dir: str) -> Uidlist | None:
    """Only the header line (cheap); uidnext may be low if lines were appended."""
    path = os.path.join(folder_dir, UIDLIST)
    try:
        with open_uidlist(path) as f:
            first = f.readline()
            rest = f.read()
    except FileNotFoundError:
        return None
    ul = Uidlist.parse(first, path)
    # a file appended to after its header was written: take the last line's UID too
    tail = rest.rstrip("\n").rpartition("\n")[2]
    if tail:
        try:
            ul.uidnext = max(ul.uidnext, int(tail.partition(" ")[0]) + 1)
        except ValueError:
            pass
    return ul



def mailbox_guid(extra: list) -> str:
    """The folder's mailbox GUID of a header's other fields (``G<32 hex digits>``, as
    Dovecot writes it), in lower case; "" when it has none of that form."""
    for f in extra:
        if f[:1] == "G":
            g = f[1:].lower()
            return g if len(g) == 32 and all(c in "0123456789abcdef" for c in g) else ""
    return ""


def with_mailbox_guid(extra: list, guid: str = "") -> list:
    """``extra`` with its ``G`` field set to ``guid`` (a new random one when "")."""
    return [f"G{guid or os.urandom(16).hex()}", *(f for f in extra if f[:1] != "G")]


def guid_of(ext: str, base: str) -> str:
    """A message's X-GUID as Dovecot gives it: the record's ``G`` field, else the base
    name (docs/dovecot.md, "Message GUIDs")."""
    for f in ext.split():
        if f[:1] == "G" and len(f) > 1:
            return f[1:]
    return base


def pop3_of(ext: str, base: str) -> tuple[str, int]:
    """(POP3 UIDL, POP3 order) of a record's ``P`` and ``O`` fields, as Dovecot's POP3
    server gives them: a ``P`` without a value means the base name; ("", 0) for none."""
    uidl, order = "", 0
    for f in ext.split():
        if f[:1] == "P":
            uidl = f[1:] or base
        elif f[:1] == "O" and f[1:].isdigit() and f[1:].isascii():
            order = int(f[1:])
    return uidl, order


def append_record(folder_dir: str, uid: int, base: str, ext: str = "") -> int:
    """Append one record line to the folder's ``dovecot-uidlist`` (as Dovecot does for a
    new message, header untouched); returns the file's size before, for
    :func:`undo_append`.  A line that could not be written whole is cut off again."""
    path = os.path.join(folder_dir, UIDLIST)
    data = Uidlist.record_line(uid, ext, base).encode("utf-8", "surrogateescape")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)   # (never through a link)
    try:
        before = os.fstat(fd).st_size
        try:
            write_all(fd, data)
        except BaseException:
            os.ftruncate(fd, before)
            raise
    finally:
        os.close(fd)
    return before


def undo_append(folder_dir: str, size: int) -> None:
    """Cut the file back to ``size`` (the last appended record never took effect)."""
    fd = os.open(os.path.join(folder_dir, UIDLIST), os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
