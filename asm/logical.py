"""Logical paths: ``/``, ``/partition``, ``/partition/group``, ``/partition/group/user``,
``/partition/group/user/folder/sub`` and the short ``/partition/user[/folder...]``
(used when the second component is not a group name).

A path naming a folder covers that folder and its subfolders.  Parsing needs only the
group names; :func:`resolve` checks a parsed path against a store.
"""
from __future__ import annotations

from dataclasses import dataclass

from asm.errors import EXIT_USAGE, ImsError
from asm.groups import PREDEFINED, Groups
from asm.store.base import BadName, NoSuchUser, Store, StoreError, check_folder_name, check_user_name


class PathError(ImsError):
    """A logical path that is malformed or names nothing."""

    status = EXIT_USAGE


@dataclass(frozen=True)
class LogicalPath:
    """A parsed logical path (a docstring spares dataclass an inspect.signature at import)."""

    text: str
    partition: str | None = None
    group: str | None = None
    user: str | None = None
    folder: str | None = None

    def covers_user(self, partition: str, user: str, groups: Groups) -> bool:
        if self.partition is not None and partition != self.partition:
            return False
        if self.user is not None:
            return user == self.user
        if self.group is not None:
            return groups.member(user, self.group)
        return True

    def covers_folder(self, folder: str) -> bool:
        if self.folder is None:
            return True
        return folder == self.folder or folder.startswith(self.folder + "/")

    def names_folder(self, folder: str) -> bool:
        """True when this path names ``folder`` (or a parent of it) explicitly;
        such folders are backed up even when store.backupexclude lists them."""
        return self.folder is not None and self.covers_folder(folder)

    def __str__(self) -> str:
        return self.text


def parse(text: str, groups: Groups, members: bool = True) -> LogicalPath:
    """``members``: a path /partition/GROUP/user must name a member of GROUP as
    ``groups`` has it now.  A restore passes False: there membership is as the archive
    recorded it (asm.restore.selection.Selection)."""
    raw = text
    if not text.startswith("/"):
        raise PathError(f"bad logical path {raw!r}: it must start with '/', e.g. /primary/user/joe")
    parts = [p for p in text.split("/")[1:]]
    while parts and parts[-1] == "":
        parts.pop()
    if any(p == "" for p in parts):
        raise PathError(f"bad logical path {raw!r}: empty component ('//')")
    if not parts:
        return LogicalPath(raw)
    partition, rest = parts[0], parts[1:]
    if not rest:
        return LogicalPath(raw, partition)
    if groups.is_group(rest[0]):
        group, rest = rest[0], rest[1:]
    else:
        group = None  # short form /partition/user
    if not rest:
        return LogicalPath(raw, partition, group)
    user, rest = rest[0], rest[1:]
    try:  # a bad name is the path's fault: report it as a PathError like the rest
        check_user_name(user)
        folder = check_folder_name("/".join(rest)) if rest else None
    except BadName as exc:
        raise PathError(f"bad logical path {raw!r}: {exc}") from None
    if members and group is not None and not groups.member(user, group):
        now = groups.group_of(user)
        raise PathError(f"user {user!r} is not in backup group {group!r} (it is in {now!r}); use "
                        f"/{partition}/{now}/{user}"
                        + (f" or /{partition}/{PREDEFINED}/{user}" if now != PREDEFINED else ""))
    return LogicalPath(raw, partition, group, user, folder)


def fold(name: str) -> str:
    """``name`` without regard to case, nor to the Unicode form its accents are written in
    (a Mac client's or a copied name's 'Cafe' + U+0301 is 'Café' typed as one character:
    the same text on every screen, other code points; Unicode's canonical caseless match)."""
    import unicodedata
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def match_folder(requested: str, names: list[str]) -> str | None:
    """The folder of ``names`` that a path's folder ``requested`` means, or None.

    IMAP folder names are case-sensitive, except INBOX (already normalised by
    check_folder_name).  An exact match wins (the folder, or a parent of folders, by
    that name); else the one folder whose name matches without regard to case (the
    seed's own example writes /primary/user/user1/trash for Trash) or to the Unicode
    form of its accents (:func:`fold`); several such folders are a PathError naming them.
    """
    if any(n == requested or n.startswith(requested + "/") for n in names):
        return requested
    depth = requested.count("/") + 1
    want = fold(requested)
    cands = sorted({"/".join(n.split("/")[:depth]) for n in names if n.count("/") + 1 >= depth})
    cands = [c for c in cands if fold(c) == want]
    if len(cands) > 1:
        raise PathError(f"folder {requested!r} matches {', '.join(repr(c) for c in cands)} when case is "
                        f"ignored, and none exactly: name one of them exactly")
    return cands[0] if cands else None


class Target:
    """One user to act on, and which folders of it.  (A plain class, not a dataclass:
    a dataclass execs its generated methods at import, at every command's start.)"""

    def __init__(self, partition: str, user: str, group: str, folders: list, explicit: set):
        self.partition = partition
        self.user = user
        self.group = group
        self.folders = folders      # folder names
        self.explicit = explicit    # folder names named explicitly (exclude does not apply)


def user_on(store: Store, partition: str | None, name: str) -> bool:
    """Whether ``name`` is a user of ``store`` on ``partition``."""
    try:
        return store.user_partition(name) == partition
    except (NoSuchUser, BadName):
        return False


def not_a_user_too(lp: LogicalPath, store: Store) -> None:
    """``/partition/NAME[/...]`` reads as backup group NAME; when NAME is also a user of
    that partition the short form means that user too, and one reading would silently
    leave the other out: refused (the predefined group's long form is unambiguous)."""
    if lp.group is None or lp.group == PREDEFINED or not user_on(store, lp.partition, lp.group):
        return
    rest = "".join(f"/{p}" for p in (lp.user, lp.folder) if p)
    raise PathError(f"{lp}: {lp.group!r} is both a backup group (backup-groups.conf) and a user: "
                    f"/{lp.partition}/{PREDEFINED}/{lp.group}{rest} is the user; rename the group "
                    f"to name the group")


def resolve(paths: list[LogicalPath], store: Store, groups: Groups) -> list[Target]:
    """Expand logical paths against the store; a path naming nothing is a PathError.

    Users appear once, in partition then user order, with the union of the folders
    the paths select.
    """
    partitions = store.partitions()
    by_user: dict[str, Target] = {}
    for lp in paths:
        not_a_user_too(lp, store)
        parts = [lp.partition] if lp.partition is not None else partitions
        if lp.partition is not None and lp.partition not in partitions:
            raise PathError(f"{lp}: no partition {lp.partition!r} (partitions: {', '.join(partitions)})")
        if lp.user is not None:
            try:
                part = store.user_partition(lp.user)
            except NoSuchUser:
                import unicodedata
                nfd = unicodedata.normalize("NFD", lp.user)
                try:
                    alike = sorted(u for p in partitions for u in store.users(p)
                                   if u != lp.user and unicodedata.normalize("NFD", u) == nfd)
                except (StoreError, OSError):
                    alike = []          # (only a hint: an unreadable partition is said by what reads it)
                raise PathError(f"{lp}: no user {lp.user!r} in the store"
                                + (f" (it has {', '.join(repr(u) for u in alike)}: the same letters, written in "
                                   f"other Unicode code points (accents as separate characters, or not); user "
                                   f"IDs are matched exactly: copy the ID from mboxutil -l)" if alike else "")) from None
            if part != lp.partition:
                raise PathError(f"{lp}: user {lp.user!r} is on partition {part!r}, not {lp.partition!r}")
            store.check_partition(part)
            users = [(part, lp.user)]
        else:
            users = [(p, u) for p in parts for u in store.users(p) if lp.covers_user(p, u, groups)]
        found = False
        for part, user in users:
            names = store.folder_names(user)
            if lp.folder is None:
                chosen = names
            else:
                try:
                    folder = match_folder(lp.folder, names)
                except PathError as exc:
                    raise PathError(f"{lp}: user {user!r}: {exc}") from None
                if folder is None:
                    raise PathError(f"{lp}: user {user!r} has no folder {lp.folder!r}")
                chosen = [f for f in names if f == folder or f.startswith(folder + "/")]
            found = True
            add_folders(by_user, part, user, groups.group_of(user), chosen, lp.folder is not None)
        if not found and lp.group is not None and lp.group != PREDEFINED and not users:
            # an empty group is not an error for whole-partition runs, but naming it is
            # worth a clear word rather than an empty archive
            raise PathError(f"{lp}: backup group {lp.group!r} has no users on partition {lp.partition!r}: "
                            f"check its patterns in backup-groups.conf, or the partition")
    return sorted_targets(by_user, partitions)


def add_folders(by_user: dict, part: str, user: str, group: str, chosen: list, explicit: bool) -> None:
    """Add the folders ``chosen`` (of a path naming a folder: ``explicit``) to ``user``'s
    Target in ``by_user`` (made on first use), each folder once."""
    t = by_user.get(user)
    if t is None:
        t = by_user[user] = Target(part, user, group, [], set())
    have = set(t.folders)
    t.folders.extend(f for f in chosen if f not in have)
    if explicit:
        t.explicit.update(chosen)


def sorted_targets(by_user: dict, partitions: list) -> list:
    """The Targets of ``by_user`` in the store's order: by partition, then user; each
    user's folders INBOX first, then by name."""
    order = {p: i for i, p in enumerate(partitions)}
    out = sorted(by_user.values(), key=lambda t: (order.get(t.partition, 99), t.user))
    for t in out:
        t.folders.sort(key=lambda f: (f != "INBOX", f))
    return out


def is_excluded(folder: str, exclude: list[str]) -> bool:
    """store.backupexclude names a folder and everything below it, without regard to
    case or to the Unicode form of accents, as a path names a folder (:func:`fold`)
    (here, not in asm.backup, so that a restore starts without the backup's modules)."""
    if not exclude:
        return False
    low = fold(folder)
    for name in exclude:
        n = fold(name)
        if low == n or low.startswith(n + "/"):
            return True
    return False
