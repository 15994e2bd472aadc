"""Which archive files to restore, in which order, after a disaster.

Archives kept as plain files (``imsbackup -f /backup/...``, a staging directory, files
an engine put back) say in their header when they were taken (``created``), what
they cover (``scope``) and whether they are incremental (``base``: the archive they
follow; ``since``: an incremental by date).  For each scope,
the chain is the newest full archive and, after it, every incremental taken later that
continues it, oldest first: by base whatever its scope (one user's incremental between
two of the whole store is a link of the whole store's chain, as imsrestore takes it),
by date of its scope or one covering it.  An incremental whose base is not the archive
before it, or (by date) whose ``since`` is after the archive before it was taken, leaves
a gap (mail changed in between is in no archive): the chain stops there and the gap is
named.
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
    """One chain per newest complete full archive of a scope, chains in the order of
    their full archive; then one (with no archive) per scope whose archives follow none.

    An archive belongs to a chain as imsrestore follows one: an incremental by base to
    the chain of the archive its base is, whatever its own scope (the chain "full of /,
    then --base of one user, then --base of / again" is one chain); an incremental by
    date, or one whose base is not here, to the chain of its scope, else to the newest
    one taken before it whose scope covers its own.  In the chain each must follow the
    archive before it, as imsrestore -f ... -f ... checks: else the chain stops there."""
    from asm.verify.chain import covers
    # one archive (one id) seen twice -- a 'latest.ims' symlink, the same files in two
    # directories named -- is one archive: the copy checked complete, a file rather than a
    # symlink, else the one found first
    best: dict = {}
    for n, a in enumerate(files):
        key = (a.complete is False, os.path.islink(a.path), n)
        if not a.archive_id or a.archive_id not in best or key < best[a.archive_id][0]:
            best[a.archive_id or id(a)] = (key, a)
    items = sorted((a for _k, a in best.values()), key=lambda a: (a.created, a.path))
    roots: dict = {}
    for a in items:
        if a.full and a.complete is not False:
            roots[a.scope] = a                      # the newest wins
    by_id = {a.archive_id: a for a in items if a.archive_id}

    def by_scope(a):
        if a.scope in roots:
            return roots[a.scope] if roots[a.scope].created < a.created else None
        over = [r for r in roots.values() if r.created < a.created and covers(r.scope, a.scope)]
        return max(over, key=lambda r: (r.created, r.path)) if over else None

    def root_of(a):
        x, seen = a, set()
        while x.base is not None and x.base in by_id and x.archive_id not in seen:
            seen.add(x.archive_id)
            x = by_id[x.base]
        if x.full:
            # an older full's incremental taken after the newest full: a gap of that chain
            return roots.get(x.scope)
        return by_scope(x)

    members: dict = {id(r): [] for r in roots.values()}
    lost: dict = {}
    for a in items:
        if a.full and roots.get(a.scope) is a:
            continue
        r = root_of(a) if not a.full else None
        if r is not None:
            if a.created > r.created:
                members[id(r)].append(a)
        elif a.scope not in roots:
            lost.setdefault(a.scope, []).append(a)
    out = []
    for root in roots.values():
        c = Chain(root.scope, [root])
        for a in members[id(root)]:
            if c.gap is not None:
                c.dropped.append(a)
                continue
            prev = c.archives[-1]
            ref = [b for b in c.archives if b.scope == a.scope] or \
                [b for b in c.archives if covers(b.scope, a.scope)] or [prev]
            if a.complete is False:
                c.gap = f"{a.path} is incomplete (no trailer)"
            elif a.base is not None and a.base != prev.archive_id:
                c.gap = (f"{a.path} is an incremental of archive {a.base}, but the archive before it "
                         f"({prev.path}) is {prev.archive_id}: the archive in between is not here")
            elif a.base is None and a.since > ref[-1].created:
                c.gap = (f"{a.path} holds mail stored since {_fmt(a.since)}, but the archive before it "
                         f"({ref[-1].path}) was taken at {_fmt(ref[-1].created)}: mail stored in between is in "
                         f"no archive here")
            if c.gap is not None:
                c.dropped.append(a)
            else:
                c.archives.append(a)
        out.append(c)
    for scope, dropped in lost.items():
        out.append(Chain(scope, [], "no complete full archive", dropped))
    out.sort(key=lambda c: (c.archives[0].created if c.archives else 0, c.scope))
    return out


def _fmt(t) -> str:
    import time
    return time.strftime("%Y%m%d:%H%M%S", time.localtime(t)) if t else "?"
