"""The backup image tree that mkbackupdir builds and imsasm reads.

    DIR/<partition>/<group>/<user>/<folder level>/...      (folder mode, the default)
    DIR/<partition>/<group>/<user>                          (-u: one placeholder per user)

Every file is a zero-length placeholder; every directory that holds placeholders has a
``.nsr`` directive sending them to the ASM.  ``DIR/.imsasm-tree`` marks the root and
names the installation.  Names map without loss (see docs/networker.md):

* a user ID or folder level is written as itself, except that ``%``, ``/``, control
  characters and DEL become ``%XX`` (UTF-8 bytes, upper-case hex) and a leading ``.``
  becomes ``%2E`` (so no name is ``.``, ``..``, ``.nsr`` or hidden);
* a folder with subfolders is a directory; the folder's own messages are the
  placeholder ``%self`` inside it (a name the encoding never produces).

Decoding accepts only the canonical encoding, so a placeholder name maps back to
exactly one folder.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from asm.errors import EXIT_USAGE, ImsError

MARKER = ".imsasm-tree"
LOCK = ".imsasm-tree.lock"
DIRECTIVE = ".nsr"
SELF = "%self"
MAX_NAME = 255          # bytes of one file name on the usual filesystems

_HEX = re.compile(r"%([0-9A-F]{2})")


class TreeError(ImsError):
    """A path that is not in a mkbackupdir tree, or a name mkbackupdir never wrote."""

    status = EXIT_USAGE


def _needs_escape(c: str) -> bool:
    return c in "%/" or ord(c) < 32 or ord(c) == 127


def encode(level: str) -> str:
    """One user ID or folder level -> one file name."""
    out = []
    for i, c in enumerate(level):
        if _needs_escape(c) or (i == 0 and c == "."):
            out.append("".join(f"%{b:02X}" for b in c.encode("utf-8")))
        else:
            out.append(c)
    name = "".join(out)
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME:
        raise TreeError(f"name {level!r} is too long for a file name ({MAX_NAME} bytes encoded)")
    return name


def decode(name: str) -> str:
    """The inverse of :func:`encode`; refuses names it would not have written."""
    if name == SELF:
        raise TreeError(f"{name!r} is the folder's own placeholder, not a folder level")
    parts = []
    i = 0
    raw = bytearray()
    while i < len(name):
        c = name[i]
        if c == "%":
            m = _HEX.match(name, i)
            if not m:
                raise TreeError(f"{name!r} is not a name mkbackupdir writes ('%' must be followed by "
                                "two upper-case hex digits)")
            raw.append(int(m.group(1), 16))
            i += 3
            continue
        if raw:
            parts.append(raw.decode("utf-8", "strict"))
            raw = bytearray()
        parts.append(c)
        i += 1
    try:
        if raw:
            parts.append(raw.decode("utf-8", "strict"))
    except UnicodeDecodeError:
        raise TreeError(f"{name!r} escapes bytes that are not UTF-8") from None
    level = "".join(parts)
    if not level or encode(level) != name:
        raise TreeError(f"{name!r} is not the canonical name of a folder (mkbackupdir would write "
                        f"{encode(level)!r})" if level else f"{name!r} names an empty folder level")
    return level


def folder_path(folder: str) -> list[str]:
    """Folder ``Work/2023`` -> its file-name levels."""
    return [encode(level) for level in folder.split("/")]


# -- the root marker ------------------------------------------------------------------

def find_root(path: str) -> str | None:
    """The tree root at or above ``path`` (textually, symlinks not resolved)."""
    d = os.path.abspath(path)
    if not os.path.isdir(d):
        d = os.path.dirname(d)
    while True:
        if os.path.isfile(os.path.join(d, MARKER)):
            return d
        up = os.path.dirname(d)
        if up == d:
            return None
        d = up


def read_marker(root: str) -> dict:
    try:
        with open(os.path.join(root, MARKER), encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise TreeError(f"{root}: cannot read {MARKER} ({exc}); run mkbackupdir -p {root} again") from None
    if not isinstance(doc, dict) or doc.get("format") != "ims-asm-backupdir":
        raise TreeError(f"{root}/{MARKER} is not a mkbackupdir marker")
    return doc


# -- placeholder path -> logical ------------------------------------------------------

@dataclass(frozen=True)
class Place:
    """What one placeholder (or a directory of them) names."""
    partition: str | None = None
    group: str | None = None
    user: str | None = None
    folder: str | None = None       # None: the whole user (or more)
    subtree: bool = True            # a folder directory: the folder and those below

    def logical(self) -> str:
        parts = [p for p in (self.partition, self.group, self.user) if p is not None]
        text = "/" + "/".join(parts)
        if self.folder is not None:
            text += "/" + self.folder
        return text

    def covers(self, partition: str, user: str, group: str | None, folder: str) -> bool:
        if self.partition is not None and partition != self.partition:
            return False
        if self.user is not None and user != self.user:
            return False
        if self.user is None and self.group is not None and group is not None and group != self.group:
            return False
        if self.folder is None:
            return True
        if folder == self.folder:
            return True
        return self.subtree and folder.startswith(self.folder + "/")


def relparts(root: str, path: str) -> list[str]:
    rel = os.path.relpath(os.path.abspath(path), root)
    if rel == ".":
        return []
    parts = rel.split(os.sep)
    if parts[0] == "..":
        raise TreeError(f"{path} is not inside the backup tree {root}")
    return parts


def place_of(parts: list[str], is_dir: bool) -> Place:
    """Map root-relative name parts to what they name (see the module docstring)."""
    if not parts:
        return Place()
    if any(p in (DIRECTIVE, MARKER, LOCK) for p in parts):
        raise TreeError(f"{'/'.join(parts)} is a file mkbackupdir keeps for itself, not a mailbox")
    partition = parts[0]
    if len(parts) == 1:
        return Place(partition)
    group = parts[1]
    if len(parts) == 2:
        return Place(partition, group)
    user = decode(parts[2])
    levels = parts[3:]
    if not levels:
        return Place(partition, group, user)
    if levels[-1] == SELF:
        if len(levels) == 1 or is_dir:
            raise TreeError(f"{'/'.join(parts)}: {SELF} belongs inside a folder directory")
        return Place(partition, group, user, "/".join(decode(x) for x in levels[:-1]), subtree=False)
    folder = "/".join(decode(x) for x in levels)
    return Place(partition, group, user, folder, subtree=is_dir)


def walk_placeholders(top: str):
    """Every placeholder file at or below ``top`` (a file yields itself), sorted."""
    if not os.path.isdir(top):
        yield top
        return
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for fn in sorted(filenames):
            if fn in (DIRECTIVE, MARKER, LOCK) or fn.startswith(".tmp-"):
                continue
            yield os.path.join(dirpath, fn)
