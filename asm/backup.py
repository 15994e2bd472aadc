"""The backup engine: logical view -> selection -> archive writer.

Knows nothing of the command line or of the device: it gets a store, the parsed
logical paths and an open :class:`asm.archive.writer.ArchiveWriter`.  Each folder's
metadata and message list are taken under the folder lock (briefly, by the driver's
``snapshot``), never for the whole run; a message expunged after that is counted as
vanished, never a failure.
"""
from __future__ import annotations

import dataclasses
import itertools
import operator
import os
import time

from asm import __version__, backupwarm, plugins
from asm.archive import fileid, spec, values
from asm.archive.errors import MessageChanged, UnarchivableValue, UnreadableSource
from asm.archive.values import UidSet
from asm.backupread import Readers
from asm.backupstate import encode_ids, identity
from asm.errors import EXIT_EMPTY, EXIT_OK, EXIT_PARTIAL, EXIT_STORE, ImsError
from asm.events import Run
from asm.groups import PREDEFINED, Groups
from asm.logical import LogicalPath, Target, is_excluded, resolve
from asm.store.base import RENAME_RETRIES, MessageGone, NoSuchFolder, NoSuchUser, Store, StoreError, open_stored


class EmptyStore(ImsError):
    """A backup found no user where the store should have some (a wrong IMS_HOME or
    partition path, a disk that is not mounted); nothing was written."""

    status = EXIT_EMPTY


class UnlistedStore(StoreError):
    """A partition lists no user while its directories hold mail (a lost mailbox list,
    a layout the driver does not read): nothing was written."""

    status = EXIT_STORE


class BackupOptions:
    """How to back up.  (Plain classes here, not dataclasses: a dataclass execs its
    generated methods when its module is imported, at every backup's start.)"""

    def __init__(self, since: float | None = None, ignore_links: bool = False, exclude: list | None = None,
                 verbose: bool = False, snapshot: dict | None = None, base: object = None, jobs: int = 1,
                 skip_unchanged: bool | None = None, installation: str | None = None):
        self.since = since                  # -d: only messages stored at or after
        self.ignore_links = ignore_links    # -i: every copy in full
        self.exclude = [] if exclude is None else exclude   # store.backupexclude folder names
        self.verbose = verbose
        self.snapshot = snapshot            # --snapshot: {live directory: snapshot mount} read instead
        self.base = base                    # --base: asm.backupstate.BaseState of the previous backup
        self.jobs = jobs                    # -j: threads reading message files ahead of the writer
        # an incremental writes folders its base's fingerprints say are unchanged from the
        # base's record (None: as backup.skipunchanged says, default yes)
        self.skip_unchanged = skip_unchanged
        self.given_since: dict = {}         # -d: user -> Store.uidvalidity_given_since (once a user)
        self.installation = installation    # Config.installation_id(): in the header


class BackupResult:
    """What a backup did, counted as it goes."""

    def __init__(self):
        self.users = 0
        self.folders = 0
        self.messages = 0
        self.links = 0
        self.bytes = 0
        self.vanished: list = []            # "user/folder/uid"
        self.errors: list = []              # {"mailbox", "error"}
        self.excluded: list = []            # mailboxes left out by store.backupexclude
        # what the administrator must know though nothing was lost: a folder renamed while
        # its messages were read is in the archive under both names (one line each)
        self.notes: list = []
        self.seconds = 0.0
        self.trailer: dict | None = None
        self.header: dict | None = None
        # (partition, user, folder, uidvalidity, UidSet[, fingerprint, flags]): what the
        # archive chain now holds, for the state file (messages that failed or vanished left
        # out: the next one retries); a folder read whole and clean adds the store's
        # fingerprint and every UID's flags, for asm.backupstate
        self.state: list = []
        self.unchanged = 0                  # folders an incremental took from its base unread


def left_out(t: Target, folder: str, exclude: list[str]) -> bool:
    """A folder of ``t`` that store.backupexclude leaves out of a backup (one named
    explicitly in a path never is)."""
    return folder not in t.explicit and is_excluded(folder, exclude)


def whole_partitions(store: Store, paths: list[LogicalPath]) -> list[str]:
    """The partitions ``paths`` cover as a whole (``/``, ``/primary``, ``/primary/user``)."""
    out: list[str] = []
    for lp in paths:
        if lp.user is None and lp.group in (None, PREDEFINED):
            for p in ([lp.partition] if lp.partition is not None else store.partitions()):
                if p not in out:
                    out.append(p)
    return out


def check_not_empty(store: Store, partitions: list[str], targets: list[Target],
                    allow_empty: bool = False) -> None:
    """Refuse a backup that would find nobody on a partition it covers as a whole.

    A partition without listed users but with user directories on disk is a lost
    mailbox list (or a layout the driver does not read): UnlistedStore, whatever
    ``allow_empty`` says.  A partition that is simply empty is EmptyStore unless the
    administrator said an empty store is expected (``allow_empty``).
    """
    have = {t.partition for t in targets}
    empty = [p for p in partitions if p not in have and not store.users(p)]
    for p in empty:
        found = store.unlisted_users(p)
        if found:
            shown = ", ".join(repr(u.user) for u in found[:3]) + (", ..." if len(found) > 3 else "")
            raise UnlistedStore(f"partition {p!r} ({store.partition_path(p)}) lists no user but holds "
                                f"{len(found)} user directories ({shown}): {store.unlisted_hint}")
    if empty and not allow_empty:
        where = "; ".join(f"{p}: {store.partition_path(p)}" for p in empty)
        if len(empty) == len(store.partitions()):
            what = "the store holds no users"
        else:
            what = f"partition{'s' if len(empty) > 1 else ''} {', '.join(map(repr, empty))} " \
                   f"hold{'' if len(empty) > 1 else 's'} no users"
        raise EmptyStore(f"{what} ({where}): nothing to back up; check IMS_HOME and the partition "
                         f"paths (is the disk mounted?); if an empty store is expected, run with "
                         f"--allow-empty (or msconfig set backup.allowempty yes)")


def check_not_emptied(store: Store, paths: list[LogicalPath], held: set) -> None:
    """Refuse to compare archives with a store that lost every user of a partition the
    archives hold users of (``held``: those partitions) and ``paths`` cover as a whole:
    the disk did not mount, IMS_HOME names another installation.  EmptyStore, as a
    backup of it is refused (an archive of an empty store matches an empty store)."""
    empty = [p for p in whole_partitions(store, paths) if p in held and not store.users(p)]
    if empty:
        where = "; ".join(f"{p}: {store.partition_path(p)}" for p in empty)
        what = ("the store holds no users" if len(empty) == len(store.partitions()) else
                f"partition{'s' if len(empty) > 1 else ''} {', '.join(map(repr, empty))} "
                f"hold{'' if len(empty) > 1 else 's'} no users")
        raise EmptyStore(f"{what} ({where}), where the archives have users: nothing to compare; check "
                         f"IMS_HOME and the partition paths (is the disk mounted?)")


def refuse_device_in_store(device: str, store: Store, home: str, localonly: bool = False) -> None:
    """Refuse (UsageError, before anything is written) a local archive file in the
    store's own directories or in ``IMS_HOME/data`` (the mailbox list, restore
    journal, reference files): put in place, the archive would replace a message, an
    index or the mailbox list, or add a file the store would read as its own (GNU tar
    refuses to archive into its input).  The path is compared with symlinks and
    ``..`` resolved; a directory of its own under IMS_HOME (backups/) is fine."""
    from asm.devices import is_remote, url_scheme
    from asm.errors import UsageError
    if device == "-" or not device or url_scheme(device) or is_remote(device, localonly):
        return
    seen = os.path.normpath(os.path.abspath(device))
    real = os.path.realpath(device)
    data = os.path.realpath(os.path.join(home, "data"))
    config = os.path.realpath(os.path.join(home, "config"))
    if real == data or real.startswith(data + "/") or real.startswith(config + "/") or \
            store.holds_path(real) or store.holds_path(seen):
        where = "" if real == seen else f" ({real})"
        raise UsageError(f"-f {device} is inside the store this backup reads{where}: writing the archive "
                         f"there would destroy or add to the store's own files; put the archive outside the "
                         f"store and IMS_HOME/data (e.g. /backup/...); nothing was written")


def select(store: Store, groups: Groups, paths: list[LogicalPath], allow_empty: bool = False) -> list[Target]:
    """The users and folders ``paths`` name; PathError when one names nothing, EmptyStore
    or UnlistedStore when a partition they cover holds no user (see check_not_empty).
    Call it before opening the device so a typo writes nothing."""
    targets = resolve(paths, store, groups)
    check_not_empty(store, whole_partitions(store, paths), targets, allow_empty)
    return targets


def unlisted_errors(store: Store, groups: Groups, targets: list[Target], paths: list[LogicalPath],
                    exclude: list[str], unreadable: dict | None = None) -> list[dict]:
    """Mail on disk in the backup's scope that the store does not list, as error
    entries: a backup must name what it could not see, not skip it silently.
    ``unreadable`` gets {(partition, user): entry} of the targets whose whole login the
    store could not read (its folders are not known)."""
    out = []
    for p in whole_partitions(store, paths) + [lp.partition for lp in paths
                                                if lp.user is None and lp.group not in (None, PREDEFINED)]:
        try:
            found = store.unlisted_users(p)
        except (StoreError, OSError) as exc:
            e = {"mailbox": f"/{p}", "error": f"cannot look for user directories the store does not "
                                              f"list: {getattr(exc, 'strerror', None) or exc}"}
            if e not in out:
                out.append(e)
            continue
        for u in found:
            if any(lp.user is None and lp.covers_user(p, u.user, groups) for lp in paths):
                e = {"mailbox": f"/{p}/{u.user}", "error": f"{u.why} ({u.path}): not backed up; "
                                                           f"{u.hint or store.unlisted_hint}"}
                if e not in out:
                    out.append(e)
    for t in targets:
        try:
            found = store.unlisted_folders(t.user)
        except (StoreError, OSError):
            continue                        # the user's own folders report the damage
        for u in found:
            # (folder None: the whole login could not be read, e.g. a dbox login that
            # doveadm backup cannot copy; its folders are not known)
            if u.folder is not None and left_out(t, u.folder, exclude):
                continue
            if any(lp.covers_user(t.partition, t.user, groups) and (u.folder is None or lp.covers_folder(u.folder))
                   for lp in paths):
                out.append({"mailbox": f"/{t.partition}/{t.user}" + ("" if u.folder is None else f"/{u.folder}"),
                            "error": f"{u.why} ({u.path}): not backed up; {u.hint or store.unlisted_hint}"})
                if u.folder is None and unreadable is not None:
                    unreadable.setdefault((t.partition, t.user), out[-1])
    return out


def run_backup(store: Store, targets: list[Target], paths: list[LogicalPath], writer,
               opts: BackupOptions, device: str = "", report=None, progress=None,
               groups: Groups | None = None) -> BackupResult:
    """Write the archive for ``targets`` (from :func:`select`).  ``report(line)`` gets -v
    lines; ``progress(result)`` is called as messages go by.  ``groups`` (the
    installation's) lets mail the store does not list be named for group paths too."""
    res = BackupResult()
    if opts.skip_unchanged is None:
        conf = getattr(store, "config", None)
        opts.skip_unchanged = conf is None or conf.get("backup.skipunchanged") != "no"
    run = Run("backup", device, [str(p) for p in paths],
              {"since": opts.since, "ignore_links": opts.ignore_links})
    plugins.run_start(run)
    t0 = time.monotonic()
    started = time.time()
    base = opts.base
    res.header = writer.write_header({
        "tool_version": __version__, "host": os.uname().nodename, "driver": store.name,
        # whose chain it continues: an incremental of another installation is none of ours
        **({"installation": opts.installation} if opts.installation else {}),
        "scope": [str(p) for p in paths], "since": opts.since,
        # an incremental names its base and the chain it continues (full first)
        "base": base.archive_id if base is not None else None,
        "chain": base.lineage if base is not None else [],
        # ... and what a user can look for when that base is lost (imsdr chain names it)
        **({"base_recorded": base.recorded()} if base is not None and base.recorded() else {}),
        "options": {"ignore_links": opts.ignore_links, "exclude": opts.exclude,
                    **({"snapshot": opts.snapshot} if opts.snapshot else {})},
    })
    status = EXIT_PARTIAL
    readers = Readers(opts.jobs)
    warm = None
    try:
        unreadable: dict = {}
        for e in unlisted_errors(store, groups or Groups(), targets, paths, opts.exclude, unreadable):
            res.errors.append(e)
            if report:
                report(f"error: {e['mailbox']}: {e['error']}")
        # every login of the run named as not readable at all (e.g. doveadm backup of a
        # dbox login failing for each, a host-wide error): nothing would be backed up, so
        # the run fails (the archive is removed) rather than leave an archive of no user
        lost = [unreadable.get((t.partition, t.user)) for t in targets]
        if lost and all(lost):
            status = EXIT_STORE
            raise StoreError(f"no login could be backed up: {lost[0]['mailbox']}: {lost[0]['error']}")
        warm = _warmer(store, targets, opts)
        k = 0                            # the folder's place in the warmer's plans
        for t in targets:
            # the user's member goes just before its first folder's: a user deleted before
            # the run reached it is not in the archive at all, as one deleted before the run
            # a backup of the whole user: a folder deleted or renamed since it was listed is
            # a change (as an expunged message), and a name that appeared meanwhile is read
            whole = any(lp.folder is None and lp.covers_user(t.partition, t.user, groups or Groups())
                        for lp in paths)
            uw = _UserFirst(writer, t, res, store if whole else None)
            # covered by /, a partition or a group (not named): the user deleted during the
            # run is a change too, its folders not read by then are not in the archive
            implicit = any(lp.user is None and lp.covers_user(t.partition, t.user, groups or Groups())
                           for lp in paths)
            queue = list(t.folders)
            # a full backup: what came into a folder after it was read, from one read
            # after it left, is in no folder of the archive (_moved_in names it)
            watch = {"files": set(), "folders": {}} if opts.base is None and opts.since is None \
                and type(store).arrivals is not Store.arrivals else None
            done: dict = {}                        # folder -> the UIDVALIDITY read (None: unknown)
            cut: list = []                         # (folder, UIDVALIDITY): gone while read
            for i, f in enumerate(queue):          # (grows while it is walked)
                mailbox = f"/{t.partition}/{t.user}/{f}"
                if f in done:
                    continue
                if left_out(t, f, opts.exclude):
                    res.excluded.append(mailbox)
                    done[f] = None
                    continue
                if warm is not None and i < len(t.folders):
                    warm.enter(k)
                    k += 1
                n0 = len(res.state)
                got = _backup_folder(store, uw, t, f, mailbox, opts, res, run, report, progress, readers,
                                     warm if i < len(t.folders) else None, gone_ok=whole, watch=watch)
                if got == "user gone":
                    user = f"/{t.partition}/{t.user}"
                    if implicit:
                        if report:
                            report(f"{user}: deleted during the backup: its folders not read by then are "
                                   f"not in the archive")
                    else:
                        res.errors.append({"mailbox": user, "error": "deleted during the backup: its folders "
                                                                     "not read by then are not in this archive"})
                    break
                if len(res.state) > n0 and res.state[-1][2] == f:
                    done[f] = res.state[-1][3]      # its member is written (gone while read, maybe)
                elif got != "gone":
                    done[f] = None
                if got != "gone":
                    continue
                if done.get(f) is not None:
                    cut.append((f, done[f]))
                if report:
                    report(f"{mailbox}: deleted or renamed during the backup: " + (
                        "the messages read before it went are in the archive" if done.get(f) is not None
                        else "not in the archive") + " (a new name is read)")
                if len(queue) < 4 * len(t.folders) + 64:
                    _renamed_meanwhile(store, t, queue, i, done, res)
            else:
                uw.write()           # (a user whose folders were all left out or failed, as before)
            if watch is not None and watch["folders"]:
                _moved_in(store, t, watch, started, res, report)
            for f, uv in cut:
                # its member is written with the messages read before it went; read again
                # under its new name (the same UIDVALIDITY), it is in the archive twice
                to = [n for n, v in done.items() if v == uv and n != f]
                if to:
                    res.notes.append(
                        f"/{t.partition}/{t.user}/{f}: renamed to {to[0]!r} while its messages were read: "
                        f"the archive holds it whole under {to[0]!r}, and under {f!r} the part read before "
                        f"the rename; a restore of this archive alone brings {f!r} back too (delete it "
                        f"after), a chain with the next incremental does not")
                else:
                    # (the -v line said "not in the archive": its member was written, with
                    # the messages read before, and a restore brought the folder back)
                    res.notes.append(
                        f"/{t.partition}/{t.user}/{f}: deleted while its messages were read: the archive "
                        f"holds the part read before; a restore of this archive alone brings {f!r} back "
                        f"with it (delete it after), a chain with the next incremental does not")
        skipped_acls = getattr(store, "acls_not_archived", None)
        if skipped_acls:
            res.notes.append(_acl_not_archived_note(skipped_acls))
        res.seconds = time.monotonic() - t0
        res.trailer = writer.close(errors=res.errors)
        status = EXIT_PARTIAL if res.errors else EXIT_OK
        return res
    finally:
        if warm is not None:
            warm.close()
        readers.close()
        run.counts = {"users": res.users, "folders": res.folders, "messages": res.messages,
                      "links": res.links, "bytes": res.bytes}
        run.errors = [(e["mailbox"], e["error"]) for e in res.errors]
        plugins.run_end(run, status)


#: seconds between the time a delivery's file name records and its UID, at most: a
#: delivery begun 2-4 ms before a run and ended after its folder was read was named as a
#: message a client moved in (exit 1) on a loaded machine.  (Small: a message delivered
#: longer before the run and moved by a client during it must still be named; every
#: command's start alone takes longer.)
DELIVERY_SLACK = 0.05


def _moved_in(store: Store, t: Target, watch: dict, started: float, res: BackupResult, report) -> None:
    """The messages a client moved, during this full backup, into a folder already read
    from one not read yet: in neither folder's snapshot, so in no folder of the archive.
    Each folder read is asked for what came in after its snapshot (:meth:`Store.arrivals`);
    a file this run read in another folder is there (a move from a folder read before,
    or a copy), one that came into the store during the run was delivered (the next
    backup has it, as every delivery during a run); one that was in the store before
    the run is named (exit 1).  The folders are asked twice, in their order and then
    the other way: a client moving a message on while they are asked would have to
    move it past both passes for it to go unnamed."""
    files = watch["files"]
    found: dict = {}                     # file (dev, ino) -> (folder, uid) where first seen
    order = list(watch["folders"].items())
    for folder, (uidnext, fingerprint) in order + order[::-1]:
        try:
            came = store.arrivals(t.user, folder, uidnext, fingerprint)
        except Exception:  # noqa: BLE001 - a check after the fact: the folder's own read said what was wrong
            continue
        for uid, _path, st, born in came:
            key = (st.st_dev << 64) | st.st_ino
            # in the store before the run, as its GUID's time says (not its INTERNALDATE:
            # a delivery or an APPEND during the run may carry any); a GUID's time is when
            # its delivery began, which may end (its UID given) after the folder was read:
            # one begun just before the run is a delivery
            if born is not None and born < started - DELIVERY_SLACK and key not in files and key not in found:
                found[key] = (folder, uid)
    by_folder: dict = {}
    for folder, uid in found.values():
        by_folder.setdefault(folder, []).append(uid)
    for folder, _ in order:
        missed = sorted(by_folder.get(folder, ()))
        if not missed:
            continue
        mailbox = f"/{t.partition}/{t.user}/{folder}"
        n = len(missed)
        why = (f"{n} message{'s' if n > 1 else ''} (UID{'s' if n > 1 else ''} {UidSet.of(missed)}) came into "
               f"this folder during the backup, after it was read, and {'were' if n > 1 else 'was'} in the store "
               f"before the run but read in no other folder: moved in by a client from a folder read after "
               f"{'they' if n > 1 else 'it'} left it, {'they are' if n > 1 else 'it is'} in no folder of this "
               f"archive; the next backup has {'them' if n > 1 else 'it'} (a snapshot closes the window: "
               f"--snapshot)")
        res.errors.append({"mailbox": mailbox, "error": why})
        if report:
            report(f"error: {mailbox}: {why}")


class _UserFirst:
    """The archive writer for one user's folders: the user's member is written when its
    first folder's is (or when :meth:`write` is called), so a user gone before any of
    its folders was read leaves no member: restored, an empty user entry would list the
    user (imsrestore -t, the counts) and, in an incremental restored on its own, read
    as a user kept whose every folder but INBOX was deleted (format.md, section 7)."""

    def __init__(self, writer, t: Target, res: BackupResult, store: Store | None = None):
        self._writer, self._t, self._res = writer, t, res
        #: the store, for a backup of the whole user: its subscriptions to names that are
        #: no folder go with its member (a backup of some of its folders has none)
        self._store = store
        self.written = False

    def __getattr__(self, name):
        return getattr(self._writer, name)

    def write(self) -> None:
        if not self.written:
            self.written = True
            subs = None
            if self._store is not None:
                try:
                    subs = self._store.other_subscriptions(self._t.user, self._t.folders)
                except (StoreError, OSError):
                    subs = None          # (the folders' own reads name an unreadable file)
            try:
                self._writer.add_user(self._t.partition, self._t.user, self._t.group, subs)
            except ValueError:           # (names the store would not list: never written)
                self._writer.add_user(self._t.partition, self._t.user, self._t.group)
            self._res.users += 1

    def add_folder(self, *args, **kw):
        self.write()
        return self._writer.add_folder(*args, **kw)


def _renamed_meanwhile(store: Store, t: Target, queue: list, i: int, done: dict, res: BackupResult) -> None:
    """A folder of ``t`` was gone when its turn came (queue[i]): its user's folders are
    listed again.  A name not read yet and not still to come is read in this run (the
    new name of a renamed folder, or an old one a rename gave back).  A name read
    already whose UIDVALIDITY is not the one read was taken by another folder since (a
    rename onto it): what it holds now was not read, and is named (exit 1)."""
    try:
        now = store.folder_names(t.user)
    except StoreError:
        return
    coming = set(queue[i + 1:])
    for n in now:
        if n not in done:
            if n not in coming:
                queue.append(n)
                coming.add(n)
        elif done[n] is not None:
            try:
                uv = store.folder(t.user, n).uidvalidity
            except StoreError:
                continue
            if uv != done[n]:
                done[n] = None                  # named once
                res.errors.append({"mailbox": f"/{t.partition}/{t.user}/{n}", "error": (
                    "another folder was renamed to this name during the backup, after this name was read: "
                    "the mail under it now is not in this archive; the next backup reads it")})


def _warmer(store: Store, targets: list[Target], opts: BackupOptions):
    """The cold-cache read-ahead (asm/backupwarm.py, a child process forked once the
    backup is under way) over the folders this backup reads, in its order; None for an
    incremental (it reads a few files of each folder: reading every one ahead would
    cost a cold cache more than it saves), with ``backup.readahead no``, or where the
    kernel cannot be asked."""
    if opts.since is not None or opts.base is not None:
        return None
    conf = getattr(store, "config", None)
    if conf is not None and conf.get("backup.readahead") == "no":
        return None
    if not backupwarm.available():
        return None
    plans = []
    for t in targets:
        for f in t.folders:
            if left_out(t, f, opts.exclude):
                continue
            try:
                got = store.readahead(t.user, f)
                plans.append(None if got is None else backupwarm.Plan(*got))
            except Exception:  # noqa: BLE001 - read-ahead only: the backup says what is wrong
                plans.append(None)
    if not any(plans):
        return None
    return backupwarm.Warmer(plans)


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _acl_not_archived_note(folders: list) -> str:
    """One line for the folders whose Dovecot ACL the store does not archive (sdbox/mdbox,
    docs/dovecot.md "Access control lists"): said, never dropped without a word."""
    users = {u for u, _f in folders}
    shown = ", ".join(f"{u}/{f}" for u, f in folders[:3]) + (", ..." if len(folders) > 3 else "")
    n = len(folders)
    return (f"{n} folder{'s' if n > 1 else ''} of {len(users)} user{'s' if len(users) > 1 else ''} "
            f"({shown}) {'have' if n > 1 else 'has'} a Dovecot access control list (dovecot-acl) that this "
            f"archive does not hold: the ACLs of sdbox/mdbox folders are not archived, and a restore leaves "
            f"the ACLs there as they are; back up ROOT/mailboxes/*/dbox-Mails/dovecot-acl with the homes, "
            f"or set them again with doveadm acl set")


def _fit_time(t, what: str, notes: list):
    """``t`` (a message's INTERNALDATE or stored date), or the nearest time the archive
    format holds (years 1..9999 UTC) when it is outside them, with a note saying so.
    (A time that is no number at all is left to the writer's guard, which names it.)"""
    if type(t) in (int, float) and spec.TIME_MIN <= t <= spec.TIME_MAX:
        return t
    if type(t) not in (int, float) or t != t:
        return t
    fit = spec.TIME_MAX if t > spec.TIME_MAX else spec.TIME_MIN
    notes.append(f"its {what} {t:.0f} is {'after' if t > fit else 'before'} {_utc(fit)}, the "
                 f"{'last' if t > fit else 'first'} time the archive format holds: archived with "
                 f"{what} {_utc(fit)}")
    return fit


def _fit_keywords(kws: tuple, notes: list) -> tuple:
    """The keywords of ``kws`` an archive can hold (values.keywords: each once, at most
    spec.MAX_WORD characters, no space or control character, not starting with '\\'),
    with a note for each left out."""
    keep: list = []
    for k in kws:
        try:
            if not isinstance(k, str) or not k or any(c.isspace() for c in k):
                raise ValueError(f"{spec.KEYWORDS} holds {values._short(k)}, which is not a keyword")
            values.keywords(k)
        except ValueError as exc:
            notes.append(f"{exc} (at most {spec.MAX_WORD} characters, no space or control "
                         f"character, not starting with '\\'): archived without it")
            continue
        if k not in keep:
            keep.append(k)
    return tuple(keep)


def _fit(m, good: set, notes: list):
    """``m``, or a copy with the INTERNALDATE, stored date and keywords an archive can
    hold (the writer refuses what its reader would, docs/format.md), ``notes`` saying
    what was changed: the message is archived, not lost, and named (exit 1).  ``good``:
    keyword tuples found right already.  Two comparisons and a set lookup per message."""
    idate, stored, kws = m.internaldate, m.stored, m.keywords
    if type(idate) in (int, float) and spec.TIME_MIN <= idate <= spec.TIME_MAX and \
            type(stored) in (int, float) and spec.TIME_MIN <= stored <= spec.TIME_MAX and \
            (not kws or kws in good):
        return m
    idate = _fit_time(idate, "INTERNALDATE", notes)
    stored = _fit_time(stored, "stored date", notes)
    fixed = _fit_keywords(kws, notes) if kws else kws
    if fixed == kws:
        good.add(kws)
        if idate == m.internaldate and stored == m.stored:
            return m
    return dataclasses.replace(m, internaldate=idate, stored=stored, keywords=fixed)


def _flag_key(m, cache: dict) -> str:
    """The flags-and-keywords string of a message as an incremental's folder state keys it."""
    k = (m.flags, m.keywords)
    got = cache.get(k)
    if got is None:
        got = cache[k] = " ".join(sorted(m.flags) + list(m.keywords))
    return got


def _held_as_another(base, user: str, folder: str, held, snap) -> set:
    """The UIDs of ``snap`` the base held with another message under them (another
    identity: a GUID or Maildir base name that is not the one it recorded), which an
    incremental carries: a store rolled back from outside (a file-level restore of it
    or of one user) gives the UIDs it had handed out again to new mail."""
    if held is None:
        return set()
    ids = base.identities(user, folder)
    if not ids:
        return set()
    out = set()
    for m in snap.messages:
        was = ids.get(m.uid)
        if was:
            now = identity(m.guid, m.basename)
            if now and now != was:
                out.add(m.uid)
    return out


def _unchanged_folder(store, writer, t: Target, folder: str, mailbox: str, opts: BackupOptions,
                      res: BackupResult, run: Run, report) -> bool:
    """An incremental's folder that the store says is as its base saw it (the base read
    it whole and clean and recorded its fingerprint): its member is written from the
    base's record, the same UIDs and flags a fresh read would give, nothing is read.
    False when the folder has to be read."""
    got = opts.base.unchanged.get((t.user, folder))
    if got is None or opts.since is not None or not opts.skip_unchanged:
        return False
    fingerprint, flags = got
    base_uv, uids = opts.base.folders[(t.user, folder)]
    try:
        info = store.folder_unchanged(t.user, folder, fingerprint)
    except Exception:  # the store cannot tell: read the folder, which says what is wrong
        return False
    if info is None or info.uidvalidity != base_uv:
        return False
    try:
        writer.add_folder(t.partition, t.user, folder, uidvalidity=info.uidvalidity,
                          uidnext=info.uidnext, subscribed=info.subscribed, uids=uids, state=flags,
                          mailbox_guid=info.guid, acl=info.acl,
                          state_ids=opts.base.packed_identities(t.user, folder))
    except UnarchivableValue:
        return False                     # read it: _backup_folder names what is wrong
    res.folders += 1
    res.unchanged += 1
    ids = opts.base.ids.get((t.user, folder))
    if ids is not None and len(ids) != 4 * -(-4 * len(uids) // 3):
        ids = None                       # not one per UID: not passed on
    res.state.append((t.partition, t.user, folder, info.uidvalidity, uids, fingerprint, flags, ids))
    if report:
        report(f"{mailbox}: 0 messages, 0 bytes (unchanged since the base)")
    plugins.mailbox_done(run, mailbox, {"status": "ok", "messages": 0, "bytes": 0, "error": None})
    return True


def _read_folder(store, t: Target, folder: str, mailbox: str, opts: BackupOptions, res: BackupResult,
                 run: Run, known=None, gone_ok: bool = False, whole: bool = False) -> tuple:
    """(store.snapshot of one folder, None), or (None, what _backup_folder returns instead:
    "user gone", "gone" with ``gone_ok``, or None once the error is recorded).  ``whole``:
    every message read in full (the folder is carried whole)."""
    try:
        return store.snapshot(t.user, folder, since=None if whole else opts.since,
                              known=None if whole else known), None
    except Exception as exc:  # one unreadable mailbox must not stop the backup of the others
        if isinstance(exc, NoSuchUser) and exc.user == t.user:
            return None, "user gone"
        if gone_ok and isinstance(exc, NoSuchFolder):
            return None, "gone"
        why = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
        res.errors.append({"mailbox": mailbox, "error": why})
        plugins.mailbox_done(run, mailbox, {"status": "error", "messages": 0, "bytes": 0, "error": why})
        return None, None


def _fit_pop3(pop3: dict) -> dict:
    """The POP3 UIDLs and orders the format can hold (as the writer keeps a carried
    message's: a UIDL of printable ASCII without space, an order in range)."""
    out = {}
    for uid, (uidl, order) in pop3.items():
        uidl = uidl if uidl and values.POP3_UIDL_RE.match(uidl) else ""
        order = order if type(order) is int and spec.POP3_ORDER_MIN <= order <= spec.POP3_ORDER_MAX else 0
        if uidl or order:
            out[uid] = (uidl, order)
    return out


def _made_since(store, user: str, opts: BackupOptions, info) -> bool:
    """An incremental by date (-d) of a folder that got its UIDVALIDITY after the date:
    made (again), or its UID list rebuilt (Dovecot makes a new dovecot-uidlist for a lost
    one: new UIDVALIDITY, UIDs from 1, the files and their dates as they were), so its
    UIDs are not the ones the backups before the date hold: an incremental that listed
    its older files without carrying them could not be restored (the chain's earlier
    links hold no message under these UIDs).  Dovecot gives a new UIDVALIDITY one above
    the user's last (not the time), so only the store can tell which it gave since the
    date (Store.uidvalidity_given_since: the last one, when its counter changed since).
    A folder it cannot tell (several made since) is judged by its messages' dates, as
    before, and its restore stops with what gets the mail back (exit 7), never silently."""
    if opts.since is None:
        return False
    if user not in opts.given_since:    # (once a user: a Maildir++ root lists every folder)
        try:
            opts.given_since[user] = store.uidvalidity_given_since(user, opts.since)
        except Exception:  # the store cannot tell: the dates judge, as before
            opts.given_since[user] = None
    return info.uidvalidity == opts.given_since[user]


def _backup_folder(store, writer, t: Target, folder: str, mailbox: str, opts: BackupOptions,
                   res: BackupResult, run: Run, report, progress, readers=None, warm=None,
                   gone_ok: bool = False, watch: dict | None = None) -> str | None:
    """Read one folder into the archive; "gone" (nothing written, no error) when
    ``gone_ok`` and it no longer exists; "user gone" (no error: the caller says what it
    means) when its user no longer exists (deleted before or while it was read).
    ``watch``: the user's files read and each folder's UIDNEXT as read, for
    :func:`_moved_in`."""
    held = None                          # what the base held of this folder
    other: set = set()                   # ... under these UIDs as other messages
    if opts.base is not None and _unchanged_folder(store, writer, t, folder, mailbox, opts, res,
                                                   run, report):
        return
    if opts.base is not None:
        # the base's UIDs under the folder's UIDVALIDITY now (read again under the
        # lock below: a folder recreated in between is carried whole)
        got = opts.base.folders.get((t.user, folder))
        held = got[1] if got is not None else None
    snap, out = _read_folder(store, t, folder, mailbox, opts, res, run, known=held, gone_ok=gone_ok)
    if snap is None:
        return out
    for why in getattr(snap, "warnings", ()):      # named in the trailer, exit 1
        res.errors.append({"mailbox": mailbox, "error": why})
        if report:
            report(f"error: {mailbox}: {why}")
    info = snap.info
    if opts.base is not None:
        light = held is not None
        held = opts.base.holds(t.user, folder, info.uidvalidity)
        other = _held_as_another(opts.base, t.user, folder, held, snap)
        if light and (held is None or other):
            # listed from their names only, as held: read again in full (once) when the
            # folder was made again since the base (another UIDVALIDITY: carried whole) or
            # the base held some of its UIDs as other messages (those are written)
            snap, out = _read_folder(store, t, folder, mailbox, opts, res, run)
            if snap is None:
                return out
            info = snap.info
            held = opts.base.holds(t.user, folder, info.uidvalidity)
            other = _held_as_another(opts.base, t.user, folder, held, snap)
    made_since = _made_since(store, t.user, opts, info)
    if made_since and any(m.changed < opts.since for m in snap.messages):
        # an incremental by date (-d) of a folder whose UIDVALIDITY is not older than the
        # date: the folder was made (again), renamed onto its name or its UID list was
        # rebuilt (Dovecot gives a new UIDVALIDITY, its time) after that date, so its UIDs
        # are not the ones the earlier backups hold, whatever the files' dates say: read
        # again in full, carried whole (else the chain could not restore it: exit 7)
        snap, out = _read_folder(store, t, folder, mailbox, opts, res, run, whole=True)
        if snap is None:
            return out
        info = snap.info
        made_since = _made_since(store, t.user, opts, info)
        if opts.base is not None:
            held = opts.base.holds(t.user, folder, info.uidvalidity)
            other = _held_as_another(opts.base, t.user, folder, held, snap)
    if watch is not None:
        watch["folders"][folder] = (info.uidnext, snap.fingerprint)
    # values the archive cannot hold as the store has them (a time after 9999, a keyword
    # of 2,000 characters): the message archived with the nearest it can, and named
    good: set = set()
    for i, m in enumerate(snap.messages):
        notes: list = []
        fixed = _fit(m, good, notes)
        if fixed is not m:
            snap.messages[i] = fixed
            for why in notes:
                res.errors.append({"mailbox": mailbox, "error": f"message {m.uid}: {why}"})
                if report:
                    report(f"error: {mailbox}: message {m.uid}: {why}")

    def carried(m) -> bool:
        if opts.base is None and opts.since is None:
            return True                  # a full backup
        if opts.base is not None and (held is None or m.uid not in held or m.uid in other):
            # the base did not hold it (new, moved, copied, restored), or held another
            # message under its UID (the store was put back from a file-level backup)
            return True
        return opts.since is not None and (made_since or m.changed >= opts.since)

    acl = info.acl
    if acl is not None:
        try:
            values.acl(acl)
        except ValueError as exc:
            # an ACL file the format cannot hold (not Dovecot's syntax, not UTF-8, too
            # long): the folder and its mail are archived without it, and it is named
            why = (f"its access control list is not archived ({exc}); the folder and its "
                   f"mail are, and a restore leaves the folder's ACL as it finds it: fix the "
                   f"ACL (doveadm acl set) and back up again")
            res.errors.append({"mailbox": mailbox, "error": why})
            if report:
                report(f"error: {mailbox}: {why}")
            acl = None
    msgs = snap.messages
    # each message's flags-and-keywords key and identity, once: the folder member's state
    # records and the state file's both take them
    keys: dict = {}
    fkeys = [_flag_key(m, keys) for m in msgs]
    idents = [identity(m.guid, m.basename) for m in msgs]
    uid_list = [m.uid for m in msgs]
    uid_set = UidSet.of(uid_list)
    # (a snapshot lists its messages in ascending UID order, each once; a driver that
    # did not is taken the long way below)
    ordered = len(uid_set) == len(uid_list) and all(map(operator.lt, uid_list, itertools.islice(uid_list, 1, None)))
    state = None
    state_pop3: dict = {}                # ... their POP3 UIDLs and orders (the uidlist's P and O,
                                         # saved by Dovecot's pop3_save_uidl after the base
                                         # carried them: a chain restore gives them back)
    state_ids: dict = {}                 # ... and what is under each UID it lists: a --base of
    if opts.base is None and opts.since is None:   # this archive knows them, as its state file does
        todo = msgs                      # a full backup carries every message
    else:
        todo, listed = [], {}
        for m, k, i in zip(msgs, fkeys, idents):
            if carried(m):
                todo.append(m)
            else:
                listed.setdefault(k, []).append(m.uid)
                state_ids[m.uid] = i
                if m.pop3_uidl or m.pop3_order:
                    state_pop3[m.uid] = (m.pop3_uidl, m.pop3_order)
        state = {k: UidSet.of(v) for k, v in listed.items()}
    try:
        writer.add_folder(t.partition, t.user, folder, uidvalidity=info.uidvalidity,
                          uidnext=info.uidnext, subscribed=info.subscribed,
                          uids=uid_set, state=state, mailbox_guid=info.guid,
                          acl=acl, state_ids=state_ids, state_pop3=_fit_pop3(state_pop3))
    except UnarchivableValue as exc:
        # the writer's last guard: a folder member the reader would refuse is never
        # written (it would take every message of the folder with it); named, exit 1
        why = (f"{exc.why}, which the archive format cannot hold: the folder and its "
               f"{len(snap.messages)} messages are not in this archive")
        res.errors.append({"mailbox": mailbox, "error": why})
        if report:
            report(f"error: {mailbox}: {why}")
        plugins.mailbox_done(run, mailbox, {"status": "error", "messages": 0, "bytes": 0, "error": why})
        return
    lost: set = set()                    # UIDs listed but not saved: the next backup retries them
    res.folders += 1
    failed: list[str] = []

    def fail(uid: int, why: str) -> None:
        # one odd file is that message's error, never the whole backup's
        res.errors.append({"mailbox": mailbox, "error": f"message {uid}: {why}"})
        failed.append(why)
        lost.add(uid)
        if report:
            report(f"error: {mailbox}: message {uid}: {why}")

    ahead = None
    if readers is not None:
        ahead = readers.folder(todo, writer.links_written, opts.ignore_links)
    gone: list = []
    try:
        n, nbytes = _write_messages(store, writer, t, folder, mailbox, todo, opts, res,
                                    report, progress, ahead, fail, lost, warm, gone, info.uidvalidity)
    finally:
        if ahead is not None:
            ahead.close()
    if watch is not None:
        # the files read (not one that vanished before it was: moved away meanwhile, it
        # is in no folder of the archive unless _moved_in finds it where it went)
        # (one int per file, not a tuple: a user of 100,000 messages costs about 5 MB)
        watch["files"].update(((m.dev or 0) << 64) | (m.ino or 0) for m in todo if m.uid not in lost)
    user_gone = any(isinstance(g, NoSuchUser) for g in gone)
    if gone and not gone_ok and not user_gone:
        # named explicitly, and deleted or renamed while it was read
        res.errors.append({"mailbox": mailbox, "error": "deleted or renamed while it was read: the messages "
                                                         "not read by then are not in this archive"})
    if not lost:
        kept = uid_set
        got = idents
    else:
        kept = UidSet.of(u for u in uid_list if u not in lost)
        got = [i for u, i in zip(uid_list, idents) if u not in lost]
    if not ordered:
        got = [i for _, i in sorted((u, i) for u, i in zip(uid_list, idents) if u not in lost)]
    ids = encode_ids(got) if any(got) else None
    if snap.fingerprint is not None and not lost and not getattr(snap, "warnings", ()):
        # read whole and clean: the next incremental may take it from this record while
        # the store says it is unchanged
        if state is not None and not todo:
            flags = state                # (nothing carried: the state names every UID)
        else:
            listed = {}
            for u, k in zip(uid_list, fkeys):
                listed.setdefault(k, []).append(u)
            flags = {k: UidSet.of(v) for k, v in listed.items()}
        res.state.append((t.partition, t.user, folder, info.uidvalidity, kept, snap.fingerprint,
                          flags, ids))
    else:
        res.state.append((t.partition, t.user, folder, info.uidvalidity, kept, None, None, ids))
    if report:
        report(f"{mailbox}: {n} messages, {nbytes} bytes" + (f", {len(failed)} failed" if failed else ""))
    plugins.mailbox_done(run, mailbox, {"status": "error" if failed else "ok", "messages": n,
                                        "bytes": nbytes, "error": failed[0] if failed else None})
    if user_gone:
        return "user gone"               # the run says so and goes on with the next user
    if gone and gone_ok:
        return "gone"                    # the run lists the user's folders again
    return None


class _Prefetch:
    """Asks the kernel to read the next messages' files while this one is written
    (posix_fadvise WILLNEED: the reads go to the disk together, in the background, as a
    cold cache needs; on a warm one it costs an open, the call and a close per file).
    A window of PREFETCH_FILES files and PREFETCH_BYTES bytes ahead, never more; a file
    that cannot be opened is left to the writer, which says why."""

    PREFETCH_FILES = 64
    PREFETCH_BYTES = 16 << 20

    def __init__(self, msgs: list, written=(), ignore_links: bool = False) -> None:
        self.msgs, self.written, self.ignore_links = msgs, written, ignore_links
        self.next = 0                # the first message not asked for yet
        self.sizes: list = []        # sizes asked for, by position
        self.ahead = 0               # bytes asked for and not written yet

    def upto(self, i: int) -> None:
        msgs, sizes = self.msgs, self.sizes
        if i > 0 and i <= len(sizes):
            self.ahead -= sizes[i - 1]
        while self.next < len(msgs) and self.next - i < self.PREFETCH_FILES and \
                (self.ahead < self.PREFETCH_BYTES or self.next == i):
            m = msgs[self.next]
            size = 0
            # a later copy of a file written already is linked on its identity without
            # being read where the filesystem has generation numbers; elsewhere the writer
            # compares its bytes (docs/format.md 2.6).  One whose inode number was reused
            # meanwhile is then read cold: time, never bytes
            if not m.compressed and not (m.nlink > 1 and not self.ignore_links and
                                         (m.dev, m.ino) in self.written and fileid.proves(m.dev)):
                size = m.size
                backupwarm.willneed(m.path)
            sizes.append(size)
            self.ahead += size
            self.next += 1


def _write_messages(store, writer, t: Target, folder: str, mailbox: str, todo: list,
                    opts: BackupOptions, res: BackupResult, report, progress, ahead, fail,
                    lost: set, warm=None, gone: list | None = None,
                    uidvalidity: int | None = None) -> tuple[int, int]:
    """The folder's messages this run carries (``todo``) into the archive; (messages,
    bytes) written.  ``gone`` gets the NoSuchFolder (or NoSuchUser) that found the
    folder itself gone (deleted or renamed while read, or its user deleted; or another
    folder, of another ``uidvalidity``, under its name now)."""
    n = nbytes = 0
    # the files asked for ahead: by the read-ahead child once it runs, else here, a few
    # at a time
    ahead_of = _Prefetch(todo, writer.links_written, opts.ignore_links) \
        if ahead is None and (warm is None or not warm.running) else None
    for i, m in enumerate(todo):
        if ahead_of is not None:
            ahead_of.upto(i)
        if warm is not None:
            warm.took(m.size)
        uid = m.uid
        for attempt in range(RENAME_RETRIES + 1):
            link_key = None if opts.ignore_links or m.nlink < 2 else (m.dev, m.ino)
            opened = None
            try:
                before = writer.counts["links"]
                # a compressed file (Dovecot's zlib): the archive holds the message itself
                opened = open_stored(m) if m.compressed else None
                # read by a reader thread already (-j), else None: the writer reads it
                data = ahead.take(m) if ahead is not None and attempt == 0 and not opened else None
                writer.add_message(t.partition, t.user, folder, uid=uid, flags=m.flags,
                                   keywords=m.keywords, internaldate=m.internaldate, stored=m.stored,
                                   # (0: the file was unlinked as it was listed, a
                                   # race tmpfs shows; it was one file)
                                   nlink=max(1, m.nlink), src_path=None if opened else m.path,
                                   src_file=opened, size=m.size, link_key=link_key, guid=m.guid,
                                   src_data=data, basename=m.basename, pop3_uidl=m.pop3_uidl,
                                   pop3_order=m.pop3_order)
            except StoreError as exc:
                fail(uid, str(exc))
                break
            except FileNotFoundError:
                # renamed (a Maildir flag change) or expunged since the snapshot: look
                # again, as often as a client may rename it meanwhile
                try:
                    again = store.message(t.user, folder, uid)
                    if uidvalidity is not None and store.folder(t.user, folder).uidvalidity != uidvalidity:
                        # the folder deleted and made again under its name meanwhile (a
                        # client's DELETE then CREATE): the folder went, as when its name
                        # is gone.  (Taken for an expunge or a rename, the archive held
                        # part of a folder the store no longer has, or the new folder's
                        # message under the old one's UIDVALIDITY, exit 0.)
                        raise NoSuchFolder(t.user, folder)
                except MessageGone:
                    again = None
                    if uidvalidity is not None and gone is not None and not gone:
                        try:
                            if store.folder(t.user, folder).uidvalidity != uidvalidity:
                                gone.append(NoSuchFolder(t.user, folder))    # (as above)
                        except (NoSuchFolder, NoSuchUser) as exc:
                            gone.append(exc)
                        except StoreError:
                            pass
                except (NoSuchFolder, NoSuchUser) as exc:
                    # the folder itself went (deleted or renamed), or its whole user
                    # (mboxutil -d): the messages not read by then vanished
                    again = None
                    if gone is not None and not any(type(g) is type(exc) for g in gone):
                        gone.append(exc)
                if again is not None and attempt < RENAME_RETRIES:
                    m = _fit(again, set(), [])   # (named already, from the snapshot)
                    continue
                if again is not None:
                    fail(uid, f"its file {again.path} is missing although the store lists the message")
                    break
                res.vanished.append(f"{mailbox}/{uid}")
                lost.add(uid)
                if report:
                    report(f"{mailbox}: message {uid} vanished during the backup (expunged); not in the archive")
                break
            except UnarchivableValue as exc:
                # the writer's last guard: a value the reader would refuse (nothing written)
                fail(uid, f"{exc.why}, which the archive format cannot hold; it is not in this "
                          f"archive ({m.path})")
                break
            except UnreadableSource as exc:
                fail(uid, f"{exc.why} ({exc.source})")
                if exc.written:          # its (cut) member is in the archive: count it
                    res.messages += 1
                break
            except MessageChanged as exc:
                fail(uid, f"it changed while it was read ({m.path}): {str(exc).split(': ', 1)[-1]}")
                res.messages += 1        # its member is in the archive
                res.bytes += m.size
                break
            finally:
                if opened is not None:
                    opened.close()
            if writer.counts["links"] > before:
                res.links += 1
            else:
                res.messages += 1
                res.bytes += m.size
                nbytes += m.size
            n += 1
            break
        if progress:
            progress(res)
    return n, nbytes
