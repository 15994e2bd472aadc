"""Which archive files to restore, in which order, after a disaster.

Archives kept as plain files (``imsbackup -f /backup/...``, a staging directory, files
an engine put back) say in their header when they were taken (``created``), what
they cover (``scope``) and whether they are incremental (``base``: the archive they
follow; ``since``: an incremental by date).  For each scope,
the chain is the one ending in its newest archive, full first: each incremental follows
its base by archive id whatever its scope (one user's incremental between two of the
whole store is a link of the whole store's chain, as imsrestore takes it), by date the
archives of its scope or one covering it.  Two archives may continue the same one (a
fork: a backup that exited 1 was not made the next night's base); the newest archive's
chain is the restore and the branch left out is named.  An archive taken after the
chain's end whose base is not here, that is incomplete or (by date) whose ``since`` is
after the archive before it was taken, leaves a gap (mail changed in between is in no
archive): the chain stops there and the gap is named.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field

from asm.archive.errors import ArchiveError
from asm.archive.reader import ArchiveReader
from asm.backupstate import header_chain


@dataclass
class ArchiveFile:
    """One archive file of a disaster-recovery chain: where it is, when it was taken, its -d date."""

    path: str
    created: float
    since: float | None
    scope: tuple
    archive_id: str
    driver: str = ""
    complete: bool | None = None          # None: not checked (--verify reads to the trailer)
    base: str | None = None               # an incremental by base: its base's archive id
    chain: tuple = ()                     # ... the ids of the archives it continues, full first
    base_recorded: dict = field(default_factory=dict)   # ... what its header records of its
                                          # base: created, device, scope, named (the --base)
    installation: str | None = None       # the installation identity its header names

    @property
    def full(self) -> bool:
        return self.since is None and self.base is None


@dataclass
class Chain:
    """The archives that restore one scope, full first, and why the chain stops early (if it does)."""

    scope: tuple
    archives: list = field(default_factory=list)
    gap: str | None = None                # why the chain stops early
    dropped: list = field(default_factory=list)   # incrementals after the gap
    left_out: list = field(default_factory=list)  # branches a later archive of the chain holds again
    unsettled: list = field(default_factory=list)  # branches whose mail the chain does not hold


class Unreadable(Exception):
    """A file that may be an archive but cannot be read: encrypted with no identity
    that opens it, or a damaged compression or encryption layer."""


def _recorded(doc) -> dict:
    """The header's ``base_recorded``, each field checked (a forged header names nothing
    it should not): created a time, device and named strings, scope a list of strings."""
    import math
    out: dict = {}
    if not isinstance(doc, dict):
        return out
    t = doc.get("created")
    if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0 < t < 253402300799:
        out["created"] = float(t)
    for k in ("device", "named"):
        if isinstance(doc.get(k), str) and 0 < len(doc[k]) <= 4096:
            out[k] = doc[k]
    if isinstance(doc.get("scope"), list) and all(isinstance(x, str) for x in doc["scope"]):
        out["scope"] = list(doc["scope"])
    return out


def describe_base(a: "ArchiveFile") -> str:
    """The base of the incremental ``a`` as a user can look for it (besides its id, which
    imsrestore -h -f ARCHIVE shows): when it was taken, of what, to which device (or
    engine label), the state file named as its --base.  For an archive written before
    incrementals recorded these: when ``a`` was taken, which it was before."""
    r = a.base_recorded
    what = "the full backup" if a.chain[:1] == (a.base,) else "the backup"
    parts = []
    if "created" in r:
        parts.append(f"taken {_when(r['created'])}")
    if "scope" in r:
        parts.append(f"of {' '.join(r['scope']) or '/'}")
    if "device" in r:
        parts.append(f"written to {r['device']}")
    if "named" in r and r["named"] not in (r.get("device"), f"{r.get('device')}.state"):
        parts.append(f"whose state file was {r['named']}")
    if not parts:
        parts.append(f"taken before {_when(a.created)}")
    return f"{what} {', '.join(parts)}"


def _missing_base(a: "ArchiveFile") -> str:
    return (f"{a.path} is an incremental of archive {a.base} ({describe_base(a)}), which is not among "
            f"these archives: find that archive (another copy, the backup engine's restore of it) and "
            f"name it too")


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
                               base=h.get("base") if isinstance(h.get("base"), str) else None,
                               chain=tuple(header_chain(h)), base_recorded=_recorded(h.get("base_recorded")),
                               installation=h["installation"] if isinstance(h.get("installation"), str)
                               and h["installation"] else None)
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
    from asm.backupstate import directory_archives, named_as_archive
    found, others, unreadable, lost = [], [], [], []
    for p in paths:
        if os.path.isdir(p):
            names, gone = directory_archives(p)
            lost += gone
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
    """One chain per scope of a complete full archive, the chains in the order of their
    first archive; then one (with no archive) per scope whose archives follow none.

    Every archive that can be restored has a chain of its own, followed back as
    imsrestore follows one: an incremental by base continues the archive its base is
    (by archive id, whatever its scope or when it was taken: the chain "full of /,
    then --base of one user, then --base of / again" is one chain); an incremental by
    date continues the newest archive taken before it of its scope, or of one covering
    it, if its ``since`` is not after that scope's last archive was taken.  Two
    archives may continue the same one (a fork: a backup that exited 1 was not made the
    next night's base, and the next night's incremental has the same base as it).  The
    restore of a scope is the chain of its newest archive that has one; the archives
    taken after that chain's full that it leaves out are named (``left_out``: a branch
    no later archive builds on, whose scope a later archive of the chain holds again;
    ``unsettled``: one whose mail the chain does not hold again).  An archive taken
    after the chain's end that has no chain (its base is not here, it is incomplete,
    or its ``since`` leaves a gap) stops the chain there: ``gap`` says why."""
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
    by_id = {a.archive_id: a for a in items if a.archive_id}
    chain_of: dict = {}                  # id(archive) -> its chain (full first)
    why: dict = {}                       # id(archive) -> why it has none

    def groups_for(a) -> list:
        """The chains' scopes an incremental by date of ``a``'s scope may continue."""
        own = {c[0].scope for c in chain_of.values() if c[0].created < a.created}
        if a.scope in own:
            return [a.scope]
        return [s for s in own if covers(s, a.scope)]

    for a in items:
        if a.complete is False:
            why[id(a)] = f"{a.path} is incomplete (no trailer)"
        elif a.full:
            chain_of[id(a)] = [a]
        elif a.base is not None:
            b = by_id.get(a.base)
            if b is None:
                why[id(a)] = _missing_base(a)
            elif id(b) in chain_of:
                chain_of[id(a)] = chain_of[id(b)] + [a]
            else:
                why[id(a)] = (f"{a.path} continues {b.path}, and " + why[id(b)] if id(b) in why else
                              f"{a.path}: its base {b.path} was taken after it")
        else:
            scopes = groups_for(a)
            prev = [c for c in chain_of.values() if c[0].scope in scopes and c[-1].created < a.created]
            # an incremental by date continues only archives of its own installation (as
            # imsrestore checks, exit 7): an IMS_HOME made again without its disaster
            # backup has a new identity, and its -d incrementals continue no old chain
            other = [c for c in prev if not _one_installation(c + [a])]
            prev = [c for c in prev if _one_installation(c + [a])]
            if not prev and other:
                c = max(other, key=lambda c: (c[-1].created, c[-1].path))
                why[id(a)] = (f"{a.path} is an incremental by date of another installation (identity "
                              f"{a.installation}) than the archives before it ({c[-1].path}: "
                              f"{_installation_of(c)}): it continues none of them (an IMS_HOME made again "
                              f"without its disaster backup, a cron line with the wrong IMS_HOME?), and "
                              f"the mail it holds is not in this restore: find that installation's full "
                              f"backup and name it too")
                continue
            if not prev:
                why[id(a)] = f"{a.path} is an incremental by date, and no archive before it covers its scope"
                continue
            c = max(prev, key=lambda c: (c[-1].created, c[-1].path))
            ref = [b for b in c if b.scope == a.scope] or [b for b in c if covers(b.scope, a.scope)] or [c[-1]]
            if a.since > ref[-1].created:
                why[id(a)] = (f"{a.path} holds mail stored since {_fmt(a.since)}, but the archive before it "
                              f"({ref[-1].path}) was taken at {_fmt(ref[-1].created)}: mail stored in between "
                              f"is in no archive here")
            else:
                chain_of[id(a)] = c + [a]

    def scope_of(a):
        """The scope of the chain an archive without one would belong to."""
        x, seen = a, set()
        while x.base is not None and x.base in by_id and id(x) not in seen:
            seen.add(id(x))
            x = by_id[x.base]
        if id(x) in chain_of:
            return chain_of[id(x)][0].scope
        if x.full:
            return x.scope
        scopes = groups_for(x) or [s for s in {c[0].scope for c in chain_of.values()} if covers(s, x.scope)]
        return x.scope if x.scope in scopes or not scopes else \
            max(scopes, key=lambda s: max(c[0].created for c in chain_of.values() if c[0].scope == s))

    ends: dict = {}                      # scope -> the newest archive with a chain
    for a in items:
        if id(a) in chain_of:
            ends[chain_of[id(a)][0].scope] = a
    members: dict = {}
    for a in items:
        members.setdefault(chain_of[id(a)][0].scope if id(a) in chain_of else scope_of(a), []).append(a)
    out = []
    for scope, mine in members.items():
        if scope not in ends:
            # what the user must find: the base the earliest of them names, or a full
            # taken before it
            first = mine[0]
            if id(first) in why and first.base is not None and first.base not in by_id:
                gap = f"no complete full archive: {why[id(first)]}"
            elif id(first) in why:
                gap = (f"no complete full archive: {why[id(first)]}; find the full backup of "
                       f"{' '.join(scope) or '/'} taken before {_when(first.created)} and name it too")
            else:
                gap = "no complete full archive"
            out.append(Chain(scope, [], gap, mine))
            continue
        end = ends[scope]
        c = Chain(scope, list(chain_of[id(end)]))
        start = c.archives[0]
        taken = {id(x) for x in c.archives}
        later = [a for a in mine if id(a) not in taken and a.created > start.created]
        after = [a for a in later if (a.created, a.path) > (end.created, end.path)]
        if after:
            c.gap = why.get(id(after[0])) or f"{after[0].path} does not continue the chain"
            c.dropped = after
        # a branch left out: name its last archive (with its chain, the command that
        # restores it too); an archive of the branch before it is in that command
        side = [a for a in later if (a.created, a.path) <= (end.created, end.path)]
        inside = {id(x) for a in side if id(a) in chain_of for x in chain_of[id(a)][:-1]}
        for a in side:
            if id(a) in inside:
                continue
            again = [x for x in c.archives if (x.created, x.path) > (a.created, a.path) and covers(x.scope, a.scope)]
            if id(a) in chain_of:
                cmd = "imsrestore -n " + " ".join(f"-f {shlex.quote(x.path)}" for x in chain_of[id(a)])
                how = f"to restore its mail too (beside the restore's folders), run after the restore: {cmd}"
                if again:
                    c.left_out.append(f"{a.path} is on a branch no later archive builds on: it is left out "
                                      f"(the restore ends in {end.path}, taken after it); {how}")
                else:
                    c.unsettled.append(f"{a.path} is on a branch the restore does not follow, and no later "
                                       f"archive of the chain holds its scope ({' '.join(a.scope)}) again: "
                                       f"its mail is not in the restore; {how}")
            elif again:
                c.left_out.append(f"{why[id(a)]}: it is left out (the restore ends in {end.path}, taken "
                                  f"after it)")
            else:
                c.unsettled.append(f"{why[id(a)]}: it is left out, and no later archive of the chain holds "
                                   f"its scope ({' '.join(a.scope)}) again: its mail is not in the restore")
        out.append(c)
    out.sort(key=lambda c: (c.archives[0].created if c.archives else 0, c.scope))
    return out


def _one_installation(archives) -> bool:
    """The archives that name an installation all name the same one."""
    return len({a.installation for a in archives if a.installation}) <= 1


def _installation_of(archives) -> str:
    return next((a.installation for a in archives if a.installation), "?")


def _when(t) -> str:
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"


def _fmt(t) -> str:
    import time
    return time.strftime("%Y%m%d:%H%M%S", time.localtime(t)) if t else "?"
