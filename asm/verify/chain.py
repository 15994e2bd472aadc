"""A chain: a full archive and the incrementals after it.  Checks that each incremental
continues what it was taken against (same scope; an incremental by base has its base
among the archives, several may share one; one by date alone was taken after the archive
before it, its ``since`` no later than that archive's start, so no mail fell in between)
and that every message an incremental lists but does not carry is in an earlier
archive of the chain; and builds what the chain restores to (each folder as the last
archive listed it, every message's bytes from the archive that carried them, flags as
last recorded).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from asm.backupstate import header_chain
from asm.errors import EXIT_ORDER
from asm.verify.archive import ArchiveCheck, FolderRec, Problem, pack_ids, unpack_ids


@dataclass
class ChainView:
    """What restoring the chain gives: folders by (partition, user, folder)."""
    folders: dict = field(default_factory=dict)
    users: dict = field(default_factory=dict)
    # (partition, user) -> the subscribed names that are no folder, as the last archive of
    # the chain that records them has them (a restore of an incremental ends the others)
    subscriptions: dict = field(default_factory=dict)
    archives: list = field(default_factory=list)     # ArchiveChecks, oldest first
    problems: list = field(default_factory=list)
    base_missing: str | None = None                  # the first archive is an incremental
    # the first archive of each older chain given (an earlier cycle's) that is an
    # incremental: what came before it was not checked either
    older_missing: list = field(default_factory=list)
    chain: list = field(default_factory=list)        # what a restore takes: the last full and what follows

    @property
    def created(self) -> float:
        return self.archives[-1].created if self.archives else 0.0

    @property
    def scope(self) -> list:
        """The paths the chain's backups were given, all its links' (one user's incremental
        after a full of the whole store: the whole store; the last link's alone narrowed a
        comparison to that user, every other user's folders counted deleted)."""
        links = self.chain or self.archives[-1:]
        out: list = []
        for a in links:
            for p in a.header.get("scope") or ["/"]:
                if p not in out:
                    out.append(p)
        return [p for p in out if not any(q != p and covers((q,), (p,)) for q in out)]


def _when(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"


def covers(outer: tuple, inner: tuple) -> bool:
    """Every path of scope ``inner`` is one of scope ``outer`` or below it (by name: a
    group's members are not looked up)."""
    def under(p: str, q: str) -> bool:
        return q == "/" or p == q or p.startswith(q.rstrip("/") + "/")
    return all(any(under(p, q) for q in outer) for p in inner)


def order(checks: list[ArchiveCheck]) -> list[ArchiveCheck]:
    """Readable archives oldest first (by the time their backup started), except that an
    incremental by base comes after its base whatever the clocks said: a clock stepped
    back between the two backups (NTP, a VM resumed from a snapshot) made the newest link
    look older than the full, and it was left out of the restore test."""
    arcs = sorted((c for c in checks if c.readable), key=lambda c: c.created)
    by_id: dict = {}
    for c in arcs:
        by_id.setdefault(c.archive_id, []).append(c)
    out: list = []
    placed: set = set()
    for c in arcs:
        todo, ids, x = [], set(), c
        while x is not None and id(x) not in placed and x.archive_id not in ids:
            ids.add(x.archive_id)
            todo.append(x)
            base = x.base if x.incremental else None
            x = by_id[base][0] if base in by_id else None
        for y in reversed(todo):
            for z in by_id[y.archive_id]:
                if id(z) not in placed:
                    placed.add(id(z))
                    out.append(z)
    return out


def _installation(a: ArchiveCheck) -> str | None:
    """The installation identity the archive's header names (None: written before archives
    named one, or by an installation that could not be given one)."""
    v = a.header.get("installation")
    return v if isinstance(v, str) and v else None


def build(checks: list[ArchiveCheck], groups=None) -> ChainView:
    """The chain of ``checks`` (any order; unreadable ones are left out, their own
    problems say why) and the problems of its continuity (EXIT_ORDER).

    Each incremental must have what it continues among the archives: an incremental by
    base its base (several may share one: cumulative incrementals of one full); one by
    date alone the archive taken before it, no later than its ``since``.  An incremental
    whose base is missing while an earlier link of its own chain (its header's
    ``chain``) is given has a link left out: a problem.  One given without any of its
    chain is checked on its own: what came before it cannot be, and the summary says so.
    What the chain restores to is the newest archive laid over what it continues, back
    to its full archive: the chain imsrestore takes."""
    view = ChainView()
    arcs = order(checks)
    view.archives = arcs
    if not arcs:
        return view

    def problem(text):
        view.problems.append(Problem(EXIT_ORDER, text))

    unique = []
    for a in arcs:
        if any(a.archive_id == b.archive_id for b in unique):
            problem(f"{a.device} is the same archive ({a.archive_id}) as another one given")
            continue
        unique.append(a)
    by_id = {a.archive_id: a for a in unique}
    parent: dict = {}
    for i, a in enumerate(unique):
        if not a.incremental:
            continue
        if a.base is not None:
            p = by_id.get(a.base)
            if p is None:
                given = [by_id[x] for x in header_chain(a.header) if x in by_id]
                if given:
                    problem(f"{a.device} is an incremental of archive {a.base}, which is not among the archives "
                            f"given, though {given[-1].device} of its chain is: a link of the chain is missing, "
                            "so what changed in between is in no archive given; give the full backup and every "
                            "incremental after it")
                continue
        else:
            # by date alone: it follows the archive of its scope taken before it
            same = [b for b in unique[:i] if list(b.header.get("scope") or ["/"]) ==
                    list(a.header.get("scope") or ["/"])]
            if not same:
                # none of its own scope (one user's, after a full of the whole store): the
                # newest archive before it whose scope covers its own, as a restore takes it
                same = [b for b in unique[:i] if covers(tuple(b.header.get("scope") or ["/"]),
                                                        tuple(a.header.get("scope") or ["/"]))]
            if not same:
                continue
            # (archives of two installations in one directory: its own installation's)
            mine = [b for b in same if _installation(b) in (None, _installation(a))]
            p = (mine or same)[-1]
            if a.since > p.created:
                problem(f"{a.device} holds mail stored since {_when(a.since)}, but the archive before "
                        f"it ({p.device}) was taken at {_when(p.created)}: mail stored in between "
                        "is in no archive of this chain")
        if _installation(a) and _installation(p) and _installation(a) != _installation(p):
            problem(f"{a.device} is a backup of another installation (identity {_installation(a)}) "
                    f"than {p.device} ({_installation(p)}), whose chain it would continue: it is no link "
                    f"of that chain (a cron line with the wrong IMS_HOME, two installations sharing a "
                    f"backup directory?); give the archives of one installation")
        parent[a.archive_id] = p

    def path_to(a) -> list:
        out: list = []
        while a is not None and all(a is not b for b in out):
            out.append(a)
            a = parent.get(a.archive_id)
        return out[::-1]

    # every chain the archives hold is checked (an older cycle's too); the newest one is
    # what a restore takes
    continued = {p.archive_id for p in parent.values()}
    seen_texts: set = set()
    newest = path_to(unique[-1])[0]
    missing_bases = {newest.base} if newest.incremental and newest.base is not None else set()
    for leaf in [a for a in unique if a.archive_id not in continued and a is not unique[-1]]:
        other = ChainView()
        found: list = []
        links = path_to(leaf)
        if links[0].incremental and (links[0].base is None or links[0].base not in missing_bases):
            # (cumulative incrementals of one full not given are one chain without it)
            view.older_missing.append(links[0].device)
            missing_bases.add(links[0].base)
        for k, a in enumerate(links):
            _apply(other, a, found.append, base=k == 0, groups=groups)
        for text in found:
            if text not in seen_texts:
                seen_texts.add(text)
                problem(text)
    path = path_to(unique[-1])
    if path[0].incremental:
        # an incremental checked on its own (or incrementals without their full archive): the
        # archives are checked, and the continuity between them, but what came before the first
        # one cannot be; the summary says so
        view.base_missing = path[0].device
        first = path[0]
        fulls = [b for b in unique if not b.incremental and b.created < first.created
                 and covers(tuple(b.header.get("scope") or ["/"]), tuple(first.header.get("scope") or ["/"]))
                 and b.archive_id not in header_chain(first.header)]     # (its own: a link left out, said above)
        if fulls:
            # a full backup given before the chain a restore takes, of another chain: the
            # archives given are no chain (imsrestore -f each of them in order refuses, 7)
            problem(f"{first.device} is an incremental of archive {first.base or 'taken before it'}, which is "
                    f"not among the archives given, and {fulls[-1].device} given before it is a full backup "
                    f"of another chain: these archives restore as no chain; give the full backup of "
                    f"{first.device}'s chain and every incremental after it")
    for k, a in enumerate(path):
        _apply(view, a, lambda text: None if text in seen_texts else problem(text), base=k == 0,
               groups=groups, unchecked=view.base_missing is not None)
        view.chain.append(a)
    return view


def _apply(view: ChainView, a: ArchiveCheck, problem, base: bool = False, groups=None,
           unchecked: bool = False) -> None:
    """Lay archive ``a`` over the view: its folders replace theirs; an incremental's
    listed-but-not-carried messages come from the view, with the flags it recorded.
    ``unchecked``: the chain's full archive was not given, so a message no earlier link
    carries may be in it (two incrementals alone were a broken chain, one was not)."""
    incremental = a.incremental
    new: dict = {}
    for key, f in a.folders.items():
        g = FolderRec(f.partition, f.user, f.name, f.uidvalidity, f.uidnext, f.subscribed, f.uids, f.state,
                      dict(f.messages), f.created, f.acl, f.mailbox_guid, dict(f.ids), f.state_pop3,
                      dict(f.copies))
        old = view.folders.get(key)
        if g.acl is None and old is not None:
            g.acl = old.acl         # not archived here: a restore leaves the earlier link's
        if g.mailbox_guid is None and old is not None and old.uidvalidity == f.uidvalidity:
            g.mailbox_guid = old.mailbox_guid       # (an archive from before they were archived)
        if incremental and not base:
            old = view.folders.get(key)
            if old is not None and old.uidvalidity == f.uidvalidity:
                # the earlier archives' messages this one lists without carrying them (bounded by
                # what the archives hold, never by the ranges a UID list spans)
                for uid, have in old.messages.items():
                    if uid in f.uids and uid not in g.messages:
                        st = f.state.get(uid)
                        if st is not None:
                            have = (have[0], tuple(sorted(st[0])), tuple(sorted(st[1])), have[3], have[4])
                        g.messages[uid] = have
                        if uid in old.copies:
                            g.copies[uid] = old.copies[uid]
                        ids = old.ids.get(uid)
                        if ids is not None:
                            # its POP3 UIDL and order as this backup recorded them (a POP3
                            # client's login since saved them), else as the earlier link's
                            pop3 = (f.state_pop3 or {}).get(uid)
                            if pop3 is not None:
                                guid, basename, _u, _o = unpack_ids(ids)
                                ids = pack_ids(guid, basename, pop3[0], pop3[1])
                            g.ids[uid] = ids
            if f.state:
                # the messages it records as kept from before (stored before its -d date); a
                # listed UID that is neither carried nor recorded vanished during that backup
                missing = len(f.state) - f.state.count_in(u for u in g.messages if u not in f.messages)
                first_missing = f.state.first_not_in(g.messages) if missing > 0 else None
            else:
                missing = len(f.uids) - len(g.messages)
                first_missing = f.uids.first_not_in(g.messages) if missing > 0 else None
            if missing > 0 and not (unchecked and (old is None or old.uidvalidity == f.uidvalidity)):
                why = ("no earlier archive of the chain holds this folder" if old is None else
                       "its UIDVALIDITY differs from the earlier archive's (the folder was recreated)"
                       if old.uidvalidity != f.uidvalidity else "they are in no earlier archive of the chain")
                problem(f"{a.device}: {f.mailbox} lists {missing} message{'s' if missing > 1 else ''} "
                        f"(from UID {first_missing}) it does not carry, and {why}")
        new[key] = g
    if incremental and not base:
        # a folder this incremental's backup did not look at (out of its scope, or left out by
        # its store.backupexclude) is not deleted: a restore of the chain keeps it as it was
        from asm.groups import Groups
        from asm.restore.selection import unseen_by
        unseen = unseen_by(a.header, groups if groups is not None else Groups(), {u for (_p, u) in a.users},
                           {(f.user, f.name) for f in a.folders.values()})
        if unseen is not None:
            for key, old in view.folders.items():
                if key not in new and unseen(old.partition, old.user, None, old.name):
                    new[key] = old
    users = dict(a.users)
    for f in new.values():
        if (f.partition, f.user) not in users and (f.partition, f.user) in view.users:
            users[(f.partition, f.user)] = view.users[(f.partition, f.user)]
    view.folders = new
    view.users = users
    for key, names in a.subscriptions.items():
        view.subscriptions[key] = sorted(names)
