"""Maildir names: folder directories (Maildir++ ``.Level.Level`` in modified UTF-7),
message file names (``<base>:2,<flags>``, the stored date in the base) and the flag
letters, keywords included (``dovecot-keywords`` maps letters a..z to keywords)."""
from __future__ import annotations

import functools
import os
import re
from typing import Iterable

from asm.store import utf7
from asm.store.base import BadName, StoreError, check_folder_name, is_inbox, split_flags

KEYWORDS = "dovecot-keywords"
FLAG_LETTER = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
LETTER_FLAG = {v: k for k, v in FLAG_LETTER.items()}
MAX_KEYWORDS = 26

_TIME_RE = re.compile(r"^([0-9]+)(?:\.M([0-9]+)P)?")
SIZE_RE = re.compile(r",S=(\d+)")


def level_to_disk(level: str) -> str:
    """One folder level as Maildir++ writes it: modified UTF-7, except a level holding
    bytes that are not UTF-8 (made by another tool), which no UTF-7 can carry: it stays
    those bytes, so the directory it came from is found again."""
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in level):
        return level
    return utf7.encode(level)


#: Where Dovecot's IMAP DELETE renames a folder before removing it: ``..DOVECOT-TRASHED``
#: in a Maildir++ root (mailbox-list-maildir.h), ``..DOVECOT-TrasH`` in an fs one
#: (mailbox-list-fs.h).  No folder level starts with '..' in either (a user's folder
#: named DOVECOT-TRASHED is .DOVECOT-TRASHED, or DOVECOT-TRASHED: read as any other).
TRASH_DIRS = ("..DOVECOT-TRASHED", "..DOVECOT-TrasH")


def dovecot_trashed(name: str) -> bool:
    """Whether a directory is one Dovecot's DELETE is removing (:data:`TRASH_DIRS`):
    mail being deleted, which Dovecot's own listing leaves out, and so does a backup."""
    return name in TRASH_DIRS


def host() -> str:
    """This host's name as Dovecot puts it in file names and lock files."""
    return os.uname().nodename.replace("/", r"\057").replace(":", r"\072")


@functools.lru_cache(maxsize=4096)
def folder_dirname(folder: str) -> str:
    """Logical folder name -> its Maildir++ directory name ('' for INBOX)."""
    folder = check_folder_name(folder)
    if folder == "INBOX":
        return ""
    levels = folder.split("/")
    for level in levels:
        if "." in level:
            raise BadName(f"folder {folder!r}: Maildir++ uses '.' as its hierarchy "
                          f"separator, so a level may not contain '.' ({level!r})")
    return "." + ".".join(level_to_disk(level) for level in levels)


@functools.lru_cache(maxsize=4096)
def folder_from_dirname(name: str) -> str | None:
    """Maildir++ directory name -> logical folder name (None when it is not one).
    (Cached: every user's scan meets the same few names, each costing a UTF-7 decode
    per level.)"""
    if not name.startswith(".") or name in (".", ".."):
        return None
    levels = name[1:].split(".")
    if any(not level for level in levels):
        return None
    out = []
    for level in levels:
        try:
            out.append(utf7.decode(level))
        except ValueError:
            out.append(level)           # raw (e.g. UTF-8) name written by another tool
    if is_inbox(out[0]):
        if len(out) == 1:
            return None
        out[0] = "INBOX"
    folder = "/".join(out)
    try:
        canonical = folder_dirname(folder)
    except BadName:
        return None
    if canonical != name and (name.isascii() or name != "." + folder.replace("/", ".")):
        # not the directory the name is written to (.a&b, .&AOk-&AOk- for .&AOkA6Q-,
        # .&AGE- for .a): reading it as that folder would restore its mail elsewhere, or
        # merge two directories into one folder.  Only a whole name in raw UTF-8 (.Privé)
        # is read where it is, and only while .Priv&AOk- does not exist (_folder_dir).
        return None
    return folder


#: The last second a name's leading number can be a delivery time at: 9999-12-31
#: 23:59:59 UTC, the last an IMAP date (and an archive) holds.  A larger number is no
#: Unix time but a millisecond timestamp (``1700000000123.M1P1.host``) or a date
#: (``20231103123045.4711.host``) another MDA or a migration script put there.
LATEST_STORED = 253402300799


def stored_from_name(base: str) -> float | None:
    """The delivery time Dovecot encoded at the start of a base name, or None (then
    the driver takes the file's ctime, as for a name without a number): a leading
    number after :data:`LATEST_STORED` is no time."""
    m = _TIME_RE.match(base)
    if not m or len(m.group(1)) > 12:
        return None
    secs = int(m.group(1))
    if secs > LATEST_STORED:
        return None
    if m.group(2):
        usecs = int(m.group(2))
        if usecs < 1_000_000:
            return secs + usecs / 1e6
    return float(secs)


def split_name(fname: str) -> tuple[str, str]:
    """``base:2,FLAGS`` -> (base, flag letters); names without ``:2,`` have no flags."""
    base, sep, info = fname.partition(":")
    if sep and info.startswith("2,"):
        return base, info[2:]
    return base, ""


# -- flags and keywords ---------------------------------------------------------------

def read_keywords(folder_dir: str) -> list:
    """The folder's keyword table: index -> keyword ('' for an unused letter).  As
    Dovecot reads it (maildir-keywords.c): a keyword named again at a later index is
    skipped there, so that letter names no keyword and a message never has one keyword
    twice."""
    kws: list = []
    try:
        with open(os.path.join(folder_dir, KEYWORDS), encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                idx, _, name = line.rstrip("\n").partition(" ")
                if idx.isdigit() and idx.isascii() and name and int(idx) < MAX_KEYWORDS \
                        and name not in kws:
                    i = int(idx)
                    kws.extend([""] * (i + 1 - len(kws)))
                    kws[i] = name
    except (FileNotFoundError, IsADirectoryError):
        pass            # (a LAYOUT=fs folder of that name in INBOX's place: Dovecot reads no table either)
    return kws


def render_keywords(table: list) -> bytes:
    return "".join(f"{i} {k}\n" for i, k in enumerate(table) if k).encode("utf-8", "surrogateescape")


def decode_letters(letters: str, table: list | None) -> tuple[frozenset, tuple]:
    """Flag letters of a file name -> (system flags, keywords); ``table`` is needed
    only when there are keyword letters."""
    flags = frozenset(LETTER_FLAG[c] for c in letters if c in LETTER_FLAG)
    kw: tuple = ()
    if table is not None and any("a" <= c <= "z" for c in letters):
        kw = tuple(table[ord(c) - 97] for c in sorted(set(letters))
                   if "a" <= c <= "z" and ord(c) - 97 < len(table) and table[ord(c) - 97])
    return flags, kw


def has_keyword_letters(letters: str) -> bool:
    return any("a" <= c <= "z" for c in letters)


def encode_letters(flags: Iterable[str], keywords: Iterable[str], table: list | None,
                   keep: str = "", where: str = "", overflow: list | None = None) -> tuple[str, bool]:
    """(flag letters, whether ``table`` gained a keyword).  ``table`` (the folder's
    keyword table, changed in place) is needed only when there are keywords; ``keep``
    holds letters of the old name that are not flags (e.g. P, passed).  Keywords
    beyond the 26 letters go to ``overflow`` when it is given, else raise."""
    system, kws = split_flags(list(flags) + list(keywords))
    letters = {FLAG_LETTER[f] for f in system}
    letters.update(c for c in keep if c.isupper() and c not in LETTER_FLAG)
    grew = False
    for k in kws:
        if any(c in k for c in " \t\n\r()"):
            raise BadName(f"bad keyword {k!r}")
        if k in table:
            i = table.index(k)
        else:
            i = table.index("") if "" in table else len(table)
            if i >= MAX_KEYWORDS and overflow is not None:
                overflow.append(k)
                continue
            if i >= MAX_KEYWORDS:
                raise StoreError(f"{where}: Maildir file names hold at most "
                                 f"{MAX_KEYWORDS} keywords; cannot add {k!r}")
            if i == len(table):
                table.append(k)
            else:
                table[i] = k
            grew = True
        letters.add(chr(97 + i))
    return "".join(sorted(letters)), grew
