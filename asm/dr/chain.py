"""Which archive files to restore, in which order, after a disaster.

Archives kept as plain files (``imsbackup -f /backup/...``, a staging directory, files
an engine put back) say in their header when they were taken (``created``), what
they cover (``scope``) and whether they are incremental (``base``: the archive they
follow; ``since``: an incremental by date).  For each scope,
the chain is the newest full archive and, after it, every incremental taken later,
oldest first.  An incremental whose base is not the archive before it, or (by date)
whose ``since`` is after the archive before it was taken, leaves a gap (mail changed
in between is in no archive): the chain stops there and the gap is named.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from asm.archive.errors import ArchiveError
from asm.archive.reader import ArchiveReader


@dataclass
class ArchiveFile:
    path: str
    created: float
    since: float | None
    scope: tuple
    archive_id: str
    driver: str = ""
    complete: bool | None = None          # None: not checked (--verify reads to the trailer)
    base: str | None = None               # an incremental by base: its base's archive id

    @property
    def full(self) -> bool:
        return self.since is None and self.base is None


@dataclass
class Chain:
    scope: tuple
    archives: list = field(default_factory=list)
    gap: str | None = None                # why the chain stops early
    dropped: list = field(default_factory=list)   # incrementals after the gap


class Unreadable(Exception):
    """A file that may be an archive but cannot be read: encrypted with no identity
    that opens it, or a damaged compression or encryption layer."""


def read_header(path: str, verify: bool = False, identities=()) -> ArchiveFile | None:
    """The archive's header, read through its compression and encryption layers as
    imsrestore reads it (None when the file is no ims-asm archive; Unreadable when it
    may be one but cannot be read)."""
    from asm.layers import open_read
    from asm.layers.errors import LayerError
    try:
        with open(path, "rb") as raw:
            try:
                f, layers = open_read(raw, identities)
            except LayerError as exc:
                raise Unreadable(f"{path}: {exc.strerror or exc}") from None
            try:
                r = ArchiveReader(f)
                h = r.header
            except ArchiveError:
                if layers:
                    raise Unreadable(f"{path}: its {'+'.join(layers)} layer holds no readable ims-asm "
                                     f"archive") from None
                return None
            info = ArchiveFile(path, float(h.get("created") or 0.0), h.get("since"),
                               tuple(h.get("scope") or ["/"]), str(h.get("archive_id", "")),
                               str(h.get("driver", "")),
                               base=h.get("base") if isinstance(h.get("base"), str) else None)
            if verify:
                try:
                    for _ in r.members(on_error=lambda e: None):
                        pass
                except (ArchiveError, LayerError):
                    pass
                info.complete = r.complete and not r.errors
            return info
    except OSError:
        return None


def archive_files(paths: list[str], verify: bool = False, identities=()) -> tuple[list, list, list, list]:
    """Every archive among ``paths`` (files, and the files of directories); the
    files that are not archives; those that may be but cannot be read (why: no
    identity, a damaged layer); and those that should be and are not (why): a file
    named, or a file of a directory that is one of the backups by its name or the
    state file beside it (backupstate.named_as_archive), that holds no archive (0
    bytes, zeros: its bytes were lost).  Another file of a directory (a README, a
    catalog) is not an archive."""
    from asm.backupstate import named_as_archive
    found, others, unreadable, lost = [], [], [], []
    for p in paths:
        if os.path.isdir(p):
            names = sorted(os.path.join(p, n) for n in os.listdir(p)
                           if not n.startswith(".") and os.path.isfile(os.path.join(p, n)))
        else:
            names = [p]
        for n in names:
            try:
                info = read_header(n, verify, identities)
            except Unreadable as exc:
                unreadable.append(str(exc))
                continue
            if info is not None:
                found.append(info)
            elif n == p or named_as_archive(n):
                lost.append(f"{n}: {'its name or the state file beside it says it is a backup, but ' if n != p else ''}"
                            f"it holds no readable ims-asm archive (its bytes were lost?)")
            else:
                others.append(n)
    return found, others, unreadable, lost


def chains(files: list[ArchiveFile]) -> list[Chain]:
    """One chain per scope, scopes in the order of their full archive."""
    by_scope: dict = {}
    for a in files:
        by_scope.setdefault(a.scope, []).append(a)
    out = []
    for scope, items in by_scope.items():
        items.sort(key=lambda a: (a.created, a.path))
        fulls = [a for a in items if a.full and a.complete is not False]
        c = Chain(scope)
        if not fulls:
            c.gap = "no complete full archive"
            c.dropped = items
            out.append(c)
            continue
        full = fulls[-1]
        c.archives.append(full)
        for a in items:
            if a.created <= full.created or a.full:
                continue
            if c.gap is not None:
                c.dropped.append(a)
                continue
            prev = c.archives[-1]
            if a.complete is False:
                c.gap = f"{a.path} is incomplete (no trailer)"
                c.dropped.append(a)
            elif a.base is not None and a.base != prev.archive_id:
                c.gap = (f"{a.path} is an incremental of archive {a.base}, but the archive before it "
                         f"({prev.path}) is {prev.archive_id}: the archive in between is not here")
                c.dropped.append(a)
            elif a.base is None and a.since > prev.created:
                c.gap = (f"{a.path} holds mail stored since {_fmt(a.since)}, but the archive before it "
                         f"({prev.path}) was taken at {_fmt(prev.created)}: mail stored in between is in no "
                         f"archive here")
                c.dropped.append(a)
            else:
                c.archives.append(a)
        out.append(c)
    out.sort(key=lambda c: (c.archives[0].created if c.archives else 0, c.scope))
    return out


def _fmt(t) -> str:
    import time
    return time.strftime("%Y%m%d:%H%M%S", time.localtime(t)) if t else "?"
