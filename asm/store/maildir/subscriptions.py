"""The ``subscriptions`` file of a Maildir: ``V\\t2``, an empty line, then one
subscribed folder per line with TAB between its levels (modified UTF-7); version 1
files hold Maildir++ names (``Work.2023``).  Changed under ``subscriptions.lock``."""
from __future__ import annotations

import os
import stat

from asm.store import utf7
from asm.store.base import BadName, check_folder_name, nofollow_opener
from asm.store.maildir.names import level_to_disk

SUBSCRIPTIONS = "subscriptions"


def parse(lines: list, utf8: bool = False) -> list:
    """The folder names of a subscriptions file's lines, in order (``utf8``: a location
    with Dovecot's UTF-8 option keeps them in UTF-8, not modified UTF-7)."""
    if lines and lines[0].startswith("V\t"):
        sep, body = "\t", lines[1:]
    else:
        sep, body = ".", lines          # version 1: Maildir++ storage names
    out = []
    for line in body:
        if not line:
            continue
        levels = []
        for level in line.split(sep):
            if utf8:
                levels.append(level)
                continue
            try:
                levels.append(utf7.decode(level))
            except ValueError:
                levels.append(level)
        name = "/".join(levels)
        try:
            out.append(check_folder_name(name))
        except BadName:
            continue
    return out


def render(names: list, utf8: bool = False) -> bytes:
    enc = (lambda level: level) if utf8 else level_to_disk
    text = "V\t2\n\n" + "".join("\t".join(enc(level) for level in n.split("/")) + "\n" for n in names)
    return text.encode("utf-8", "surrogateescape")


def _open(path: str):
    """The file as text, never through a symbolic link (:class:`LinkInStore`: one in a
    Maildir could name any file on the system)."""
    return open(path, encoding="utf-8", errors="surrogateescape", opener=nofollow_opener)


def read(root: str, utf8: bool = False) -> list:
    """The names in ``root``'s subscriptions file ([] when there is none, or when a
    folder of LAYOUT=fs named ``subscriptions`` has its place: Dovecot then keeps no
    subscription for the user, its SUBSCRIBE and LSUB fail)."""
    try:
        with _open(os.path.join(root, SUBSCRIPTIONS)) as f:
            return parse(f.read().split("\n"), utf8)
    except (FileNotFoundError, IsADirectoryError):
        return []


def apply(names: list, changes: dict) -> list:
    """``names`` (a file's, in order) with ``changes`` ({name: subscribed}) made: a name
    unsubscribed goes, one subscribed and not there is added at the end, in the order
    of ``changes``; the others keep their places."""
    out = [n for n in names if changes.get(n, True)]
    have = set(out)
    return out + [n for n, on in changes.items() if on and n not in have]


class Cache:
    """Subscribed names per Maildir root, re-read only when the file changed, with the
    changes not written yet (``pending``: root -> {name: subscribed}, in order) on top."""

    def __init__(self, utf8: bool = False):
        self._cache: dict[str, tuple] = {}     # Maildir root -> (stat key, names)
        self.utf8 = utf8
        self.pending: dict[str, dict] = {}

    def get(self, root: str) -> set:
        names = self._read(root)
        changes = self.pending.get(root)
        if changes:
            names = (names - {n for n, on in changes.items() if not on}) | {n for n, on in changes.items() if on}
        return names

    def _read(self, root: str) -> set:
        path = os.path.join(root, SUBSCRIPTIONS)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return set()
        if stat.S_ISDIR(st.st_mode):         # a LAYOUT=fs folder named so: none (read())
            return set()
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = self._cache.get(root)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            with _open(path) as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            return set()
        names = set(parse(lines, self.utf8))
        self._cache[root] = (key, names)
        return names

    def put(self, root: str, names) -> None:
        """``names`` were just written to ``root``'s file, under its lock (no other writer
        can have replaced it since): kept, so the next :meth:`get` does not read it back."""
        try:
            st = os.lstat(os.path.join(root, SUBSCRIPTIONS))
        except FileNotFoundError:
            self._cache.pop(root, None)
            return
        self._cache[root] = ((st.st_ino, st.st_mtime_ns, st.st_size), set(names))
