"""Which archived folders a restore takes (the paths on its command line), and under
which users (the map file of -m)."""
from __future__ import annotations

from asm.groups import PREDEFINED, Groups
from asm.logical import LogicalPath, fold
from asm.restore.errors import RestoreError
from asm.store.base import BadName, check_folder_name, check_user_name


def read_map(path: str, check=check_user_name) -> dict:
    """The map file's {olduser: newuser}.  ``check(newuser)`` raises BadName for a new
    name that cannot be used (the target store's Store.check_new_user): the line is
    refused before anything is restored."""
    out = {}
    try:
        # names: any bytes; utf-8-sig: a byte-order mark an editor wrote (Notepad) is not
        # part of the first old name, which would match nobody and leave that user's mail
        # restored under its own name
        f = open(path, encoding="utf-8-sig", errors="surrogateescape")
    except OSError as exc:
        raise RestoreError(f"cannot read map file {path!r}: {exc.strerror}") from None
    with f:
        try:
            from asm.lines import bounded_lines
            for lineno, line in enumerate(bounded_lines(f, path, "a map file (olduser=newuser lines)",
                                                        RestoreError), 1):
                s = line.strip()
                if not s or s.startswith("#"):
                    continue
                old, eq, new = s.partition("=")
                if not eq or not old.strip() or not new.strip():
                    raise RestoreError(f"{path}:{lineno}: expected 'olduser=newuser', found {s[:80]!r}")
                if "=" in new:
                    # a user ID may hold '=': joe=old=joe2 is joe -> old=joe2 or joe=old -> joe2,
                    # and no split can be chosen before the archive is read (a pipe)
                    raise RestoreError(f"{path}:{lineno}: {s[:80]!r} has more than one '=', so it does "
                                       f"not say which user is renamed: a map file cannot rename a "
                                       f"user whose ID holds '=' or give that name (restore it "
                                       f"under its own name)")
                try:
                    check(new.strip())                  # refused before anything is restored
                except BadName as exc:
                    raise RestoreError(f"{path}:{lineno}: {exc}: map {old.strip()!r} to another name "
                                       f"(nothing was restored)") from None
                if old.strip() in out:
                    raise RestoreError(f"{path}:{lineno}: {old.strip()!r} is mapped a second time (to "
                                       f"{new.strip()!r}; before to {out[old.strip()]!r}): keep one line")
                joined = [o for o, n in out.items() if n == new.strip()]
                if joined:
                    # two archived users into one: their folders would merge under one
                    # UIDVALIDITY, and the clients of one of them would lose every UID
                    raise RestoreError(f"{path}:{lineno}: {old.strip()!r} and {joined[0]!r} are both mapped to "
                                       f"{new.strip()!r}: their mail would be merged into one user's "
                                       f"folders; map each to a user of its own (to merge, restore them "
                                       f"in two runs; nothing was restored)")
                out[old.strip()] = new.strip()
        except UnicodeDecodeError:
            raise RestoreError(f"cannot read map file {path!r}: it is not UTF-8 text") from None
    return out


def check_map_targets(user_map: dict, restored) -> None:
    """Refuse (RestoreError, exit 2) a map line whose new name is a user this same run
    also restores under its own name (``restored``: the archived users the selection
    takes that the map does not rename): the two users' folders would be merged into
    one folder set, one of them keeping its UIDVALIDITY and the other renumbered."""
    restored = set(restored)
    for old, new in user_map.items():
        if new != old and new in restored and new not in user_map:
            raise RestoreError(f"{old}={new}: {new} is restored too in this run; restore {new} alone in "
                               f"a run of its own, or select the users with paths (nothing was restored)")


def may_take(paths: list[LogicalPath], user: str) -> bool:
    """Whether the selection ``paths`` (none: everything) can take the archived user
    ``user`` under its own name (a group or partition path may: the archive says)."""
    return not paths or any(lp.user is None or lp.user == user
                            or (alt := as_recorded_group(lp)) is not None and alt.user == user for lp in paths)


def restored_users(members, sel: "Selection", user_map: dict) -> set:
    """The archived users ``sel`` (a Selection of its own: this counts its hits) takes
    from ``members`` and the map leaves under their own names."""
    out: set = set()
    groups: dict = {}
    for m in members:
        if m.kind == "user":
            groups[(m.partition, m.user)] = m.group
            if not sel.paths and m.user not in user_map:
                out.add(m.user)
        elif m.kind == "folder" and m.user not in user_map and m.user not in out:
            if sel.folder(m.partition, m.user, groups.get((m.partition, m.user), m.group), m.folder):
                out.add(m.user)
    return out


def as_recorded_group(lp: LogicalPath) -> LogicalPath | None:
    """A short path /partition/NAME[/user[/folder]] (NAME is no group of this
    installation's backup-groups.conf) read as /partition/GROUP/user/folder: NAME may be
    a group the archive records (IMSASM.group) although no groups file here defines it
    (a fresh installation after a loss, another host, groups changed since).  None for
    a path that cannot be read so."""
    if lp.group is not None or lp.user is None:
        return None
    rest = [p for p in lp.text.split("/")[1:] if p][2:]
    try:
        user = check_user_name(rest[0]) if rest else None
        folder = check_folder_name("/".join(rest[1:])) if len(rest) > 1 else None
    except BadName:
        return None
    return LogicalPath(lp.text, lp.partition, lp.user, user, folder)


def _nfd(name: str) -> str:
    import unicodedata
    return unicodedata.normalize("NFD", name)


class Selection:
    """Which archived folders the paths select.  Folder names are matched exactly on
    restore (INBOX in any case): a stream cannot know beforehand whether an exact
    match is still to come.  A folder that differs only in case is remembered, so an
    unmatched path can name what the archive has.

    A group is the one the archive records for each user, whatever backup-groups.conf
    says now; a short path /partition/NAME/... also selects as /partition/GROUP/...
    the users the archive records in a group NAME (as_recorded_group)."""

    def __init__(self, paths: list[LogicalPath], groups: Groups, is_user=None):
        self.paths = paths
        self.groups = groups
        self.hits = [0] * len(paths)
        self.near: list[set] = [set() for _ in paths]
        # /P/NAME read as the group NAME of backup-groups.conf while the archive holds a
        # user NAME on P: that user's own path, for the line of an unmatched path
        self.user_too: list[str | None] = [None] * len(paths)
        # (not when NAME is a user of the store restored into: there the short path means
        # that user, and the group's users' archived mail would merge into their live
        # folders; ``is_user(partition, user)``)
        self.recorded = {lp: None if is_user is not None and lp.user is not None and is_user(lp.partition, lp.user)
                         else as_recorded_group(lp) for lp in paths}

    def _user_ok(self, lp: LogicalPath, partition: str, user: str, group: str | None) -> bool:
        """Whether ``lp`` (one of the paths, read either way) takes this user's folders."""
        return any(ok for _lp, ok in self._readings(lp, partition, user, group))

    def _readings(self, lp: LogicalPath, partition: str, user: str, group: str | None):
        """(the path as read, whether it takes this user) for each way ``lp`` reads."""
        yield lp, self._user_ok_as(lp, partition, user, group)
        alt = self.recorded.get(lp)
        if alt is not None:
            # only by the group the archive recorded (NAME is no group here)
            yield alt, group is not None and group == alt.group and alt.partition == partition \
                and (alt.user is None or alt.user == user)

    def _user_ok_as(self, lp: LogicalPath, partition: str, user: str, group: str | None) -> bool:
        if lp.partition is not None and lp.partition != partition:
            return False
        if lp.user is not None:
            return lp.user == user
        if lp.group is not None and lp.group != "user":
            return group == lp.group or (group is None and self.groups.member(user, lp.group))
        return True

    def folder(self, partition: str, user: str, group: str | None, folder: str) -> bool:
        if not self.paths:
            return True
        hit = False
        for i, path in enumerate(self.paths):
            if path.group == user and path.group != PREDEFINED and path.partition in (None, partition):
                rest = [p for p in path.text.split("/") if p][2:]
                self.user_too[i] = "/".join(["", partition, PREDEFINED, user, *rest])
            took = False
            for lp, ok in self._readings(path, partition, user, group):
                if not ok:
                    if lp.user is not None and lp.user != user and not (lp.user.isascii() and user.isascii()) \
                            and lp.partition in (None, partition) and _nfd(lp.user) == _nfd(user):
                        # the same ID in another Unicode form: named if nothing matches
                        self.near[i].add(f"/{partition}/{user}" + (f"/{lp.folder}" if lp.folder else ""))
                    continue
                if lp.covers_folder(folder):
                    took = True
                elif lp.folder is not None:
                    depth = lp.folder.count("/") + 1
                    prefix = "/".join(folder.split("/")[:depth])
                    if fold(prefix) == fold(lp.folder):
                        self.near[i].add(f"/{partition}/{user}/{prefix}")
            if took:
                self.hits[i] += 1
                hit = True
        return hit

    def unmatched(self) -> list[str]:
        return [str(lp) for lp, n in zip(self.paths, self.hits) if n == 0]

    def reaches(self, mailbox: str) -> bool:
        """Whether the paths reach ``mailbox`` ("/partition[/user[/folder]]", "/" the
        whole store), as an archive trailer names what its backup could not read."""
        if not self.paths:
            return True
        partition, user, folder = (mailbox[1:].split("/", 2) + [None, None])[:3]
        return any((lp.partition is None or not partition or lp.partition == partition)
                   and (lp.user is None and lp.group is None or user is None
                        or lp.covers_user(partition, user, self.groups))
                   and (folder is None or lp.covers_folder(folder))
                   for lp in self.paths)

    def unread(self, trailer: dict | None) -> list[tuple[str, str]]:
        """(mailbox, why) of an archive trailer's errors (what its backup could not read)
        that the paths reach."""
        out = []
        for e in (trailer or {}).get("errors") or ():
            mailbox = e.get("mailbox") if isinstance(e, dict) else None
            if isinstance(mailbox, str) and mailbox.startswith("/") and self.reaches(mailbox):
                out.append((mailbox, str(e.get("error"))))
        return out

    def left_out(self, path: str, header: dict) -> str | None:
        """For an unmatched ``path``: the store.backupexclude that left its folder out
        of the backup of ``header`` (as that backup ran with it), or None."""
        from asm.logical import is_excluded
        exclude = (header.get("options") or {}).get("exclude") or []
        if not isinstance(exclude, list) or not exclude:
            return None
        exclude = [str(x) for x in exclude]
        if any(str(lp) == path and lp.folder is not None and is_excluded(lp.folder, exclude)
               for lp in self.paths):
            return "%".join(exclude)
        return None

    def user_path(self, path: str) -> str | None:
        """For an unmatched ``path`` /P/NAME[/...] read as a backup group here: the path
        of the archived user NAME (/P/user/NAME[/...]), or None."""
        return next((u for lp, u in zip(self.paths, self.user_too) if str(lp) == path and u), None)

    def near_misses(self, path: str) -> list[str]:
        """Archived folders that ``path`` (an unmatched one) names but for case."""
        return sorted(set().union(*[self.near[i] for i, lp in enumerate(self.paths) if str(lp) == path]))


def unseen_by(header: dict, groups, held_users=None, held_folders=None):
    """A test (partition, user, group, folder) -> True for a folder the backup of
    ``header`` did not look at: outside its scope, or left out by the store.backupexclude
    it ran with (a folder it names explicitly never is).  ``held_users``: the users that
    archive holds; a backup of some paths (not the whole store) that holds none of a
    user's mail did not look at that user (one who left its group since, say).
    ``held_folders``: the (user, folder) that archive holds: a scope path naming a folder
    but for case (/primary/joe/trash) took the folder asm.logical.match_folder chose among
    the user's folders then, which the archive holds (a backup refuses a path that names
    no folder).  None when its scope cannot be read with today's groups (then every
    folder counts as looked at, as before)."""
    from asm.logical import PathError, is_excluded, parse
    scope = header.get("scope") or ["/"]
    exclude = (header.get("options") or {}).get("exclude") or []
    if not isinstance(scope, list) or not isinstance(exclude, list):
        return None
    try:
        paths = [parse(p, groups) for p in scope]
    except (PathError, TypeError, ValueError):
        return None
    if any(lp.partition is None for lp in paths):
        paths = []                          # '/': every folder is in its scope
    if held_folders is not None:
        paths = [_as_resolved(lp, held_folders) for lp in paths]
    sel = Selection(paths, groups)
    # a path naming a folder names its subfolders too: the backup takes them, excluded
    # or not, as it takes the folder (asm.logical.add_folders)
    explicit = [lp for lp in paths if lp.folder is not None]
    exclude = [str(x) for x in exclude]

    parts = {lp.partition for lp in paths if lp.partition is not None}

    def unseen(partition: str, user: str, group, folder: str) -> bool:
        if paths and not partition and parts:
            # (partition not known yet: on none of the scope's partitions)
            return all(unseen(p, user, group, folder) for p in parts)
        if paths and held_users is not None and user not in held_users:
            # a user the archive holds nothing of: one who left the scope since (moved
            # to another group) was not looked at; one the groups here (the installation's,
            # restored with it: those the backups ran with) still put in its scope was
            # looked for and not found: removed from the store, so gone by then.  (Taken
            # as unseen, a user made after a group's full and removed before its last
            # incremental came back from the middle link, exit 0.)
            if not sel.folder(partition, user, None, folder):
                return True
        if paths and not sel.folder(partition, user, group, folder):
            return True
        return not any(lp.partition == partition and lp.user == user and lp.covers_folder(folder)
                       for lp in explicit) and is_excluded(folder, exclude)
    return unseen


def _as_resolved(lp: LogicalPath, held_folders) -> LogicalPath:
    """A backup's scope path ``lp`` naming a folder, with the folder its backup took
    (asm.logical.match_folder among the folders the archive holds of that user)."""
    from dataclasses import replace

    from asm.logical import PathError, match_folder
    if lp.folder is None:
        return lp
    try:
        folder = match_folder(lp.folder, [f for (u, f) in held_folders if u == lp.user])
    except PathError:
        return lp
    return lp if folder is None or folder == lp.folder else replace(lp, folder=folder)
