"""A chain's view (:class:`asm.verify.chain.ChainView`) against a store: a scratch store
it was just restored into (must be identical, as a client sees it) or the live store
(what the store has that the archive should hold; what changed since)."""
from __future__ import annotations

from dataclasses import dataclass, field

from asm.errors import EXIT_DIFFERS, EXIT_STORE
from asm.store.base import MessageGone, NoSuchFolder, NoSuchUser, NotNumbered, Store, StoreError, stored_sha256
from asm.verify.archive import Problem, unpack_ids
from asm.verify.chain import ChainView

#: Seconds of clock slack around the backup's start: a message stored this close to it
#: may or may not be in the archive.
SLACK = 2.0


def _store_folders(store: Store) -> dict:
    """(partition, user, folder) -> FolderInfo of every folder of the store."""
    out = {}
    for part in store.partitions():
        for user in store.users(part):
            for f in store.folders(user):
                out[(part, user, f.name)] = f
    return out


@dataclass
class Comparison:
    """The outcome of comparing archives with a store: problems and what was compared."""

    problems: list = field(default_factory=list)
    compared: int = 0          # messages whose bytes were compared
    # (mailbox, why) of the folders a test restore compared through the store only, not over IMAP
    store_only: list = field(default_factory=list)
    # against the live store: what changed since the backup (not problems)
    changes: dict = field(default_factory=lambda: {"new": 0, "expunged": 0, "flags": 0,
                                                   "folders_new": 0, "folders_gone": 0, "acls": 0})
    # against the live store: a line for each change -v names (a folder's ACL changed since)
    notes: list = field(default_factory=list)

    def add(self, text: str) -> None:
        self.problems.append(Problem(EXIT_DIFFERS, text))


def _acl_words(text: str) -> str:
    """An ACL's text on one line: its entries between quotes, ``none`` when it has none."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    shown = "; ".join(lines)
    if len(shown) > 300:
        shown = shown[:300] + "..."
    return repr(shown) if lines else "none"


def _flags(m) -> tuple:
    return tuple(sorted(m.flags)), tuple(sorted(m.keywords))


def compare_restored(view: ChainView, store: Store, have: dict | None = None,
                     label: str = "restore test", unread=()) -> Comparison:
    """The scratch store a test restore wrote against the chain's view: the same
    folders (UIDVALIDITY, UIDNEXT, subscription, ACL), the same UIDs, and each message's
    bytes, flags, keywords and INTERNALDATE; nothing else.  ``have``: the store's
    folders to compare ((partition, user, folder) -> FolderInfo; default all of them);
    ``label`` starts each line; ``unread``: keys of folders the store has but could not
    read, named already (never "not restored").  A folder whose messages cannot be read
    as they are is named and not compared, the others are."""
    out = Comparison()
    if have is None:
        have = _store_folders(store)
    else:
        have = dict(have)
    # ((partition, user, folder), uid) -> (inode, device, compressed) of each restored
    # message that is one file with another in the archive, or that another is one file
    # with: only those (all the store's MessageInfos took 240 MB at 100,000 messages)
    restored: dict = {}
    copied = _in_copies(view) if store.single_copies else set()
    for key, rec in view.folders.items():
        f = have.pop(key, None)
        if f is None:
            if key not in unread:
                out.add(f"{label}: {rec.mailbox} was not restored")
            continue
        try:
            listed = store.messages(rec.user, rec.name)
        except StoreError as exc:
            out.problems.append(_not_compared(f"{label}: {rec.mailbox}", exc))
            continue
        for what, want, got in (("UIDVALIDITY", rec.uidvalidity, f.uidvalidity),
                                ("UIDNEXT", rec.uidnext, f.uidnext),
                                ("subscription", rec.subscribed, f.subscribed)):
            if want != got:
                out.add(f"{label}: {rec.mailbox}: {what} is {got} after the restore, {want} in the archive")
        if rec.mailbox_guid and f.guid and f.guid != rec.mailbox_guid:
            # (dsync knows a folder by it: a replica takes the folder for one it lost)
            out.add(f"{label}: {rec.mailbox}: its mailbox GUID is {f.guid} after the restore, "
                    f"{rec.mailbox_guid} in the archive")
        if rec.acl is not None:
            got_acl = store.acl(rec.user, rec.name)
            if got_acl is not None and got_acl != rec.acl:
                out.add(f"{label}: {rec.mailbox}: its access control list is {_acl_words(got_acl)} after "
                        f"the restore, {_acl_words(rec.acl)} in the archive")
        msgs = {m.uid: m for m in listed}
        for uid, (sha, flags, keywords, idate, size) in rec.messages.items():
            m = msgs.pop(uid, None)
            if m is None:
                out.add(f"{label}: {rec.mailbox}: message {uid} was not restored")
                continue
            out.compared += 1
            if (key, uid) in copied:
                restored[(key, uid)] = (m.ino, m.dev, m.compressed)
            got = stored_sha256(m, missing=OSError)
            if got != sha:
                out.add(f"{label}: {rec.mailbox}: message {uid} came back with other bytes "
                        f"(SHA-256 {got or 'unreadable'}, {sha} in the archive)")
            if _flags(m) != (flags, keywords):
                out.add(f"{label}: {rec.mailbox}: message {uid} has flags {' '.join(_flags(m)[0] + _flags(m)[1])!r}"
                        f" after the restore, {' '.join(flags + keywords)!r} in the archive")
            if int(m.internaldate) != idate:
                out.add(f"{label}: {rec.mailbox}: message {uid} has INTERNALDATE {int(m.internaldate)} "
                        f"after the restore, {idate} in the archive")
            ids = rec.ids.get(uid)
            if ids is not None:
                for what, here, want in store.identity_differences(m, *unpack_ids(ids)):
                    out.add(f"{label}: {rec.mailbox}: message {uid} has {what} {here!r} after the restore, "
                            f"{want!r} in the archive")
        for uid in sorted(msgs):
            out.add(f"{label}: {rec.mailbox}: message {uid} is there after the restore but not in the archive")
    for (part, user, name), f in sorted(have.items()):
        if name == "INBOX" and _empty(store, user, name):
            continue            # a user's INBOX is made with the user
        out.add(f"{label}: /{part}/{user}/{name} is there after the restore but not in the archive")
    if store.single_copies:
        _compare_copies(out, view, restored, label)
    return out


def _not_compared(where: str, exc: StoreError) -> Problem:
    """The line for a folder a check could not read as it is, ``where`` its start: one
    it could read only by writing (NotNumbered; a check writes nothing) is not compared,
    not a pass (19); any other error is the store's (17)."""
    if isinstance(exc, NotNumbered):
        return Problem(EXIT_DIFFERS, f"{where}: not compared: {exc}")
    return Problem(EXIT_STORE, f"{where}: cannot be read in the store, so it was not compared: {exc}")


def _empty(store: Store, user: str, folder: str) -> bool:
    """The folder holds no message (one that cannot be read as it is: not known so)."""
    try:
        return not store.messages(user, folder)
    except StoreError:
        return False


def _in_copies(view: ChainView) -> set:
    """((partition, user, folder), uid) of each message of ``view`` that is one file with
    its first copy in the archive, and of each first copy."""
    out: set = set()
    for key, rec in view.folders.items():
        for uid, (tkey, tuid, _tuv) in rec.copies.items():
            out.add((key, uid))
            out.add((tkey, tuid))
    return out


def _compare_copies(out: Comparison, view: ChainView, restored: dict, label: str) -> None:
    """Each message the archive holds as a link to its first copy (one file at backup
    time) is one file with it after the restore, as a restore makes them (docs/operations.md,
    "Single copy"): a message delivered to 500 users restored as 500 files takes 500 times
    the disk.  Not asked where one file cannot be both (another INTERNALDATE: one mtime on
    a Maildir; other bytes), nor across file systems or of a compressed file."""
    for key, rec in view.folders.items():
        for uid, (tkey, tuid, tuv) in sorted(rec.copies.items()):
            t = view.folders.get(tkey)
            if t is None or t.uidvalidity != tuv:
                continue            # (that folder is another one at the chain's end)
            a, b = rec.messages.get(uid), t.messages.get(tuid)
            if a is None or b is None or a[0] != b[0] or a[3] != b[3]:
                continue
            ma, mb = restored.get((key, uid)), restored.get((tkey, tuid))
            if ma is None or mb is None or not (ma[0] and mb[0]) or ma[1] != mb[1] or ma[2] or mb[2]:
                continue
            if ma[0] != mb[0]:
                out.add(f"{label}: {rec.mailbox}: message {uid} is a file of its own after the restore, one "
                        f"file with {t.mailbox} message {tuid} in the archive (a single copy lost: the "
                        f"message is stored twice)")


def compare_exact(view: ChainView, store: Store, targets: list, exclude=None, paths=None) -> Comparison:
    """``--against-store --exact``: the live store, just restored from the chain,
    against the chain as a restore test's scratch store is (:func:`compare_restored`):
    every archived folder there with its UIDVALIDITY, UIDNEXT, subscription and ACL,
    every message with its UID, bytes, flags, keywords and INTERNALDATE, and nothing
    more in the folders of the scope (``targets``, :func:`live_targets`; a folder
    store.backupexclude keeps out is not looked at), and, when the scope's ``paths`` are
    whole users, each user's subscriptions to names that are no folder as the chain's
    archives hold them (IMSASM.subscriptions).  Any difference is a problem: the
    proof that a restore brought the store back as the archives hold it, before
    clients and deliveries are let in."""
    from asm.backup import left_out
    have = {}
    out_first: list = []
    unread: set = set()
    for t in targets:
        for name in t.folders:
            if exclude and left_out(t, name, exclude):
                continue
            key = (t.partition, t.user, name)
            try:
                have[key] = store.folder(t.user, name)
            except (NoSuchFolder, NoSuchUser):
                continue          # gone since it was listed: "was not restored" if archived
            except StoreError as exc:
                # (listed, but not read as it is: not "not restored", which a restore run
                # again would not change; as plain --against-store names it)
                out_first.append(_not_compared(f"exact: /{t.partition}/{t.user}/{name}", exc))
                unread.add(key)
    out = compare_restored(view, store, have, label="exact", unread=unread)
    out.problems.extend(out_first)
    for t in targets:
        if (t.partition, t.user) not in view.users:
            out.add(f"exact: /{t.partition}/{t.user} is there after the restore but not in the archive")
    if paths is None or any(lp.folder is not None for lp in paths):
        return out          # (an archive of some folders holds no user's other subscriptions)
    compare_subscriptions(out, view, store, [(t.partition, t.user) for t in targets], "exact")
    return out


def compare_subscriptions(out: Comparison, view: ChainView, store: Store, users, label: str) -> None:
    """Each of ``users`` ((partition, user)) that the chain holds and records the
    subscriptions of (IMSASM.subscriptions: a backup of the whole user) subscribes in
    ``store`` to the names that are no folder that the chain's last such record names,
    no more and no fewer; differences go to ``out``, each line starting with ``label``."""
    for key in users:
        if key not in view.users or key not in view.subscriptions:
            continue            # (an archive that does not record them: older, or of some folders)
        part, user = key
        want = set(view.subscriptions[key])
        try:
            got = set(store.other_subscriptions(user))
        except StoreError as exc:
            out.add(f"{label}: /{part}/{user}: its subscriptions cannot be read: {exc}")
            continue
        for name in sorted(want - got):
            out.add(f"{label}: /{part}/{user}: the subscription to {name!r} (no folder) was not restored")
        for name in sorted(got - want):
            out.add(f"{label}: /{part}/{user}: a subscription to {name!r} (no folder) is there after "
                    f"the restore but not in the archive")


def _renamed_from(view: ChainView, store: Store, t, name: str, uidvalidity: int, taken: dict):
    """The key of the chain's folder of this user that live folder ``name`` (not in the
    chain under its name, or there with another UIDVALIDITY) was renamed from: the only
    one with its UIDVALIDITY whose name the user no longer has, or has again for another
    folder (another UIDVALIDITY: a client's RENAME Trash "Old Trash" then CREATE Trash,
    or DELETE Work then RENAME Trash Work).  None: a new (or recreated) folder."""
    found = [k for k, r in view.folders.items()
             if k[:2] == (t.partition, t.user) and k[2] != name and r.uidvalidity == uidvalidity
             and k not in taken]

    def vacated(old: str) -> bool:
        try:
            return store.folder(t.user, old).uidvalidity != uidvalidity
        except StoreError:
            return True             # gone (or no longer readable under that name)
    found = [k for k in found if not store.exists(t.user, k[2]) or vacated(k[2])]
    return found[0] if len(found) == 1 else None


class RecordedGroups:
    """backup-groups.conf as a chain's archives recorded it: each user's group is the one
    its archive records (IMSASM.group, the membership when the backup ran, as imsrestore
    reads it), today's only for a user the chain records no group for.  What a logical
    path of the archive's scope covers (:meth:`asm.logical.LogicalPath.covers_user`)."""

    def __init__(self, view: ChainView, groups):
        self.now = groups
        self.of = {u: g for (_p, u), g in view.users.items() if g}

    def is_group(self, name: str) -> bool:
        return self.now.is_group(name)

    def group_of(self, user: str) -> str:
        return self.of.get(user) or self.now.group_of(user)

    def member(self, user: str, group: str) -> bool:
        from asm.groups import PREDEFINED
        return group == PREDEFINED or self.group_of(user) == group


def live_targets(view: ChainView, store: Store, groups) -> tuple[list, list, list]:
    """(paths, targets, gone) for comparing the chain with the live store: its scope as
    logical paths, the users and folders of the store it covers now (as
    :func:`asm.backup.select` gives them) and, for each path of the scope that names
    nothing now, one line saying so.  The scope comes from the archive, not from the
    command line: a user removed or a folder deleted since the backup selects nothing
    (:func:`compare_live` counts the archived folders as deleted), where ``select``
    refuses a path naming nothing (a typo on imsbackup's command line, exit 2).  A
    partition of the scope the store no longer has is EmptyStore (18), as a partition
    that lost every user is: nothing can be compared there.

    A backup group's users are the ones the archives recorded in it (its membership
    when the backup ran, as imsrestore reads it), whatever backup-groups.conf says
    now: a user moved to another group since is compared with the archive of the group
    it was in, not reported missing from the other one, and a user who joined the group
    since is not compared (no archive of it holds that user).  A short path
    /partition/NAME whose NAME is no group now but one the archives recorded is that
    group; one whose NAME the archives record as a user (not as a group) is that user,
    though backup-groups.conf has a group NAME now.  ``groups``: the installation's, or
    the :class:`RecordedGroups` of ``view``."""
    from asm.backup import EmptyStore, check_not_empty, whole_partitions
    from asm.groups import PREDEFINED, Groups
    from asm.logical import PathError, add_folders, match_folder, parse, sorted_targets, user_on
    from asm.restore.selection import as_recorded_group
    from asm.store.base import NoSuchUser
    if not isinstance(groups, RecordedGroups):
        groups = RecordedGroups(view, groups)
    partitions = store.partitions()

    def recorded(partition: str | None, group: str) -> list:
        """The users the chain records in ``group`` on ``partition``."""
        return sorted(u for (p, u) in view.users if p == partition and groups.member(u, group))

    def read(text: str):
        """A path of the scope as the backup read it, whatever backup-groups.conf says now."""
        lp = parse(text, groups, members=False)
        if lp.group not in (None, PREDEFINED) and (lp.partition, lp.group) in view.users \
                and not recorded(lp.partition, lp.group):
            return parse(text, Groups(), members=False)     # a user then, a group of that name since
        alt = as_recorded_group(lp)
        if alt is not None and (lp.partition, lp.user) not in view.users and recorded(alt.partition, alt.group):
            return alt              # a group the archives record, no group here now
        return lp

    paths = [read(text) for text in view.scope]
    lost = sorted({lp.partition for lp in paths if lp.partition is not None and lp.partition not in partitions})
    if lost:
        raise EmptyStore(f"the store has no partition {', '.join(map(repr, lost))} (partitions: "
                         f"{', '.join(partitions)}), where the archives have users: nothing to compare; check "
                         f"IMS_HOME and its partitions")
    by_user: dict = {}
    gone: list = []
    for lp in paths:
        parts = [lp.partition] if lp.partition is not None else partitions
        if lp.user is not None:
            try:
                part = store.user_partition(lp.user)
            except NoSuchUser:
                gone.append(f"{lp}: no user {lp.user!r} in the store now (removed since the backup): its "
                            f"archived folders are counted as deleted")
                continue
            if part != lp.partition:
                gone.append(f"{lp}: user {lp.user!r} is on partition {part!r} now: its archived folders on "
                            f"{lp.partition!r} are counted as deleted")
                continue
            store.check_partition(part)
            users = [(part, lp.user)]
        elif lp.group is not None and lp.group != PREDEFINED:
            users = []
            for user in recorded(lp.partition, lp.group):
                if user_on(store, lp.partition, user):
                    users.append((lp.partition, user))
                else:
                    gone.append(f"{lp}: no user {user!r} (of group {lp.group!r} when the backup ran) on "
                                f"partition {lp.partition!r} now (removed or moved since the backup): its "
                                f"archived folders are counted as deleted")
        else:
            users = [(p, u) for p in parts for u in store.users(p) if lp.covers_user(p, u, groups)]
        for part, user in users:
            names = store.folder_names(user)
            if lp.folder is None:
                chosen = names
            else:
                try:
                    folder = match_folder(lp.folder, names)
                except PathError:
                    folder = lp.folder          # several by case: the one of this exact name, if any
                chosen = [f for f in names if folder is not None and (f == folder or f.startswith(folder + "/"))]
                if not chosen:
                    gone.append(f"{lp}: user {user!r} has no folder {lp.folder!r} now (deleted or renamed "
                                f"since the backup): its archived folders are counted as deleted")
                    continue
            add_folders(by_user, part, user, groups.group_of(user), chosen, lp.folder is not None)
    targets = sorted_targets(by_user, partitions)
    # a partition it covers whose users are not listed but whose directories are there
    check_not_empty(store, whole_partitions(store, paths), targets, allow_empty=True)
    return paths, targets, gone


def _compare_live_acl(out: Comparison, store: Store, user: str, name: str, mailbox: str, archived: str) -> None:
    """The live folder's access control list against the archived one (the chain's last
    link's): a difference is a change since the backup, as a flag change is (the backup
    archived the ACL it read under the folder's snapshot, or named the folder it could
    not read it for), counted, and named under -v."""
    try:
        live = store.acl(user, name)
    except StoreError:
        return              # gone since it was listed
    if live is not None and live != archived:
        out.changes["acls"] += 1
        out.notes.append(f"{mailbox}: its access control list is {_acl_words(live)} in the store, "
                f"{_acl_words(archived)} in the archive (changed since the backup: a restore from these "
                f"archives gives the archived one; the next backup archives the store's)")


def compare_live(view: ChainView, store: Store, targets: list, exclude=None) -> Comparison:
    """The live store against the chain's view.  ``targets`` are the users and folders
    the archive's scope covers now (:func:`asm.backup.select`).  A problem is a message
    the store received before the last backup started and the chain does not hold
    (it should), or a message whose bytes differ from the archive's; new mail,
    expunges, flag changes, access control lists changed (a store that keeps ACLs, an
    archive that holds them) and new or deleted folders since are counted as changes."""
    from asm.backup import left_out
    out = Comparison()
    created = view.created
    seen = set()
    archived: dict = {}                 # (partition, user) -> the SHA-256 of all its archived mail
    renamed: dict = {}                  # the view's key of a folder renamed since -> its new key
    replaced: set = set()               # keys whose archived folder is gone, the name taken by another
    for t in targets:
        for name in t.folders:
            key = (t.partition, t.user, name)
            mailbox = f"/{t.partition}/{t.user}/{name}"
            if exclude and left_out(t, name, exclude):
                continue
            seen.add(key)
            rec = view.folders.get(key)
            try:
                info = store.folder(t.user, name)
                msgs = store.messages(t.user, name)
            except (NoSuchFolder, NoSuchUser):
                continue        # gone since it was listed
            except StoreError as exc:
                # (once skipped silently: its mail was in no count and the check passed, a
                # folder tonight's backup cannot read either, exit 1 there)
                out.problems.append(_not_compared(mailbox, exc))
                continue
            if rec is None or rec.uidvalidity != info.uidvalidity:
                # not in the chain under this name, or there as another folder (another
                # UIDVALIDITY): renamed since the backup (IMAP RENAME keeps the folder's
                # UIDVALIDITY and its files, with their times; the old name may have been
                # made again since) and the chain holds it under its old name, or a new
                # folder (made or recreated since: its messages are new ones)
                if rec is not None:
                    replaced.add(key)       # the archived folder of this name is gone since
                was = _renamed_from(view, store, t, name, info.uidvalidity, renamed)
                if was is not None:
                    renamed[was] = key
                    rec = view.folders[was]
                else:
                    rec = None
                    out.changes["folders_new"] += 1
            if rec is not None and rec.acl is not None:
                _compare_live_acl(out, store, t.user, name, mailbox, rec.acl)
            old = [m for m in msgs if (rec is None or m.uid not in rec.messages) and m.stored < created - SLACK]
            if old:
                # filed since the backup (MOVE, COPY, RENAME keep a Maildir file's name, and
                # the time it was stored, but its file entered this folder since: ctime):
                # the chain holds its bytes in another folder
                have = archived.get((t.partition, t.user))
                if have is None:
                    have = archived[(t.partition, t.user)] = {
                        v[0] for (p, u, _f), r in view.folders.items() if (p, u) == (t.partition, t.user)
                        for v in r.messages.values()}
                missed = []
                # the archived messages of this folder's name (any UIDVALIDITY) that are not
                # at their UIDs now: each may be one the store renumbered (its UID list lost)
                here: dict = {}
                was = view.folders.get(key)
                if was is not None:
                    now = {m.uid for m in msgs} if rec is was else set()
                    for uid, v in was.messages.items():
                        if uid not in now:
                            here[v[0]] = here.get(v[0], 0) + 1
                renumbered = []
                for m in old:
                    if m.changed < created - SLACK:
                        # in this folder since before the backup: not in the archive, or
                        # there under another UID (one archived copy each: a twin missed stays missed)
                        sha = stored_sha256(m, missing=OSError) if here else None
                        if here.get(sha):
                            here[sha] -= 1
                            renumbered.append(m.uid)
                            out.changes["new"] += 1
                        else:
                            missed.append(m)
                        continue
                    sha = stored_sha256(m, missing=OSError)
                    if sha in have:
                        out.changes["new"] += 1
                    elif sha is not None:           # (None: expunged while we looked)
                        missed.append(m)
                old = missed
                if renumbered:
                    out.notes.append(f"{mailbox}: {len(renumbered)} message{'s' if len(renumbered) > 1 else ''} of "
                                     f"the archive {'are' if len(renumbered) > 1 else 'is'} in the store under "
                                     f"another UID (UID {', '.join(map(str, renumbered[:5]))}"
                                     f"{', ...' if len(renumbered) > 5 else ''}): renumbered since the backup "
                                     f"(the folder's UID list was rebuilt), counted as new")
            if old:
                out.add(f"{mailbox}: {len(old)} message{'s' if len(old) > 1 else ''} the store received before "
                        f"the backup started {'are' if len(old) > 1 else 'is'} not in the archive "
                        f"(UID {', '.join(str(m.uid) for m in old[:5])}{', ...' if len(old) > 5 else ''})")
            for m in msgs:
                if rec is None or m.uid not in rec.messages:
                    if m.stored >= created - SLACK:
                        out.changes["new"] += 1
                    continue
                sha, flags, keywords = rec.messages[m.uid][:3]
                out.compared += 1
                got = stored_sha256(m, missing=OSError)
                if got is None:
                    # expunged while we looked, or renamed (a Maildir flag change): asked again
                    uid = m.uid
                    try:
                        m = store.message(t.user, name, uid)
                    except MessageGone:
                        out.compared -= 1
                        out.changes["expunged"] += 1
                        continue
                    except StoreError:
                        m = None
                    got = stored_sha256(m, missing=OSError) if m is not None else None
                    if got is None:
                        out.add(f"{mailbox}: message {uid} is listed by the store but its file cannot "
                                "be read: the store is damaged (reconstruct -n names what is lost; the archive "
                                "holds the message)")
                        continue
                if got != sha:
                    out.add(f"{mailbox}: message {m.uid} differs from the archive's copy (SHA-256 {got} in the "
                            f"store, {sha} in the archive): the store or the archive was changed")
                if _flags(m) != (flags, keywords):
                    out.changes["flags"] += 1
            if rec is not None:
                present = {m.uid for m in msgs}
                out.changes["expunged"] += sum(1 for u in rec.messages if u not in present)
    for key, rec in view.folders.items():
        if (key not in seen or key in replaced) and key not in renamed:
            out.changes["folders_gone"] += 1
            out.changes["expunged"] += len(rec.messages)
    return out
