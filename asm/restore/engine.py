"""The restore engine's main loop: archive members in, folders planned
(:mod:`asm.restore.plan`) and written (:mod:`asm.restore.apply`), errors named per
mailbox, deliveries held and released, the journal kept."""
from __future__ import annotations

import collections
import contextlib
import functools
import os
import time

from asm import plugins
from asm.archive.errors import CorruptMember, DigestMismatch, HostileMember, IncompleteArchive, TrailingData
from asm.errors import EXIT_LOCKED, EXIT_NOSPACE, EXIT_PARTIAL, EXIT_USAGE, ImsError
from asm.events import Run
from asm.groups import Groups
from asm.restore.apply import Applier
from asm.restore.folderlock import LOCK_FILE, RestoreLocks
from asm.restore.errors import ArchiveReadFailed, ChainOrderError, RestoreError, StopRestore
from asm.restore.journal import Journal, JournalError
from asm.restore.options import RestoreOptions, RestoreResult, error_status
from asm.restore.plan import FolderPlan, Planner
from asm.restore.reffile import write_reffile
from asm.restore.selection import Selection
from asm.store.base import (NoSuchFolder, Store, StoreError, StoreFull, UserExists, os_store_error, syncfs_dirs,
                            this_holder)


#: folders complete on disk are recorded so in the journal after one sync of the store
#: (Restorer._record_done): when this many wait, or the first has waited this long
DONE_FOLDERS = 1000
DONE_SECONDS = 30.0


def _fmt(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"


def unread_by(errors, partition: str, user: str, folder: str) -> str | None:
    """Among an archive trailer's ``errors`` ({mailbox, error}: what its backup could
    not read), the one that covers this folder ("mailbox: error"): the folder itself,
    its user, its partition, the whole store.  None when none does."""
    names = ("/", f"/{partition}", f"/{partition}/{user}", f"/{partition}/{user}/{folder}")
    for e in errors:
        if e["mailbox"] in names:
            return f"{e['mailbox']}: {e['error']}"
    return None


class Restorer:
    def __init__(self, store: Store, groups: Groups, reader, opts: RestoreOptions,
                 selection: Selection, journal: Journal, device: str = "", report=None, progress=None):
        self.store = store
        self.groups = groups
        self.reader = reader
        self.header = reader.header
        self.opts = opts
        self.sel = selection
        self.journal = journal
        self.report = report or (lambda line: None)
        self.progress = progress
        self.res = RestoreResult(paths=len(selection.paths))
        self.run = Run("restore", device, [str(p) for p in selection.paths], {
            "ignore_duplicates": opts.ignore_duplicates, "new_mailbox": opts.new_mailbox})
        self.planner = Planner(store, journal, self.header, opts)
        self.planner.acls = self.res.acls
        # only some folders or messages are restored (paths, or a chain's end): a stream
        # keeps first copies that a restored link may need
        self.applier = Applier(store, reader, opts, self.res, bool(selection.paths) or opts.final is not None,
                               self.report)
        self.held: list[str] = []
        # a store that writes a copy and gives it to the mail server when its batch ends
        # (dbox): folders it completed or removed are put in the journal only after
        # that, so a killed run's journal is never ahead of what the server has
        self.deferred: collections.deque | None = \
            collections.deque() if getattr(store, "journal_after_sync", False) else None
        # any other store: folders complete on disk and other journal changes, with the
        # restore lock of each folder, recorded after a sync of the store covers them
        self.done: list = []
        self.done_keys: set = set()                 # ... (user, folder) of those folders
        self.done_since = 0.0
        # marks left in folders (Store.mark_restoring) whose journal records are committed:
        # (user, folder, mark), removed after the next sync makes those records durable
        self.unmark: list = []
        self.journal_dirs = self._journal_dirs()
        self.holder = this_holder()
        self.users_seen: set = set()
        self.plan: FolderPlan | None = None
        self.lock_stack = contextlib.ExitStack()      # the store's lock of the folder being restored
        self.restore_lock = contextlib.ExitStack()    # and our restore lock of it (folderlock)
        config = getattr(store, "config", None)
        self.locks = RestoreLocks(os.path.join(os.path.dirname(os.path.abspath(journal.path)), LOCK_FILE),
                                  config.owner() if config is not None else None)
        self.locks.before_wait = self._settle
        self.user_groups: dict[tuple, str | None] = {}
        self.refused_users: set = set()             # of a partition not configured here
        self.cur_user: tuple | None = None          # (partition, user) of the archive being read
        self.cur_folders: set = set()               # ... and its folders the archive lists
        self.cur_damaged = False                    # ... a member of it was damaged (or a
                                                    # folder refused): remove none of its folders
        self.cur_subscriptions: list | None = None  # ... its subscribed names that are no folder
                                                    # (None: the archive does not say)
        self.subs_todo: list = []                   # (partition, user, names, replace) for
                                                    # _give_subscriptions, after _remove_gone
        self.gone: list = []                        # (partition, user, folders listed) of
                                                    # users whose gone folders are removed
        self.held_users: set = set()                # (partition, user) the archive holds
        self.damaged = False                        # a member was damaged: a user may be missing
        self.gone_users: list = []                  # (partition, user) the archive no longer
                                                    # holds, removed whole (_remove_users)
        self.whole: set = set()                     # (partition, user) whose every folder the
                                                    # archive holds whole (its base had none)
        self.whole_users = self._whole_users()
        # an archive of folder paths (imsbackup /primary/user/joe/Trash), or a restore of
        # folder paths: the folders its backup looked at that it no longer lists, and the
        # paths take, were deleted between the backups as well (_remove_gone, unseen_by)
        self.scoped_users = not self.whole_users and self._scoped_users()
        self.skip_users: set = set()                # (partition, user) --recovery leaves as a
                                                    # later archive of another chain left it
        self._final_users: set | None = None        # the users the chain's last archive holds

    # -- errors ---------------------------------------------------------------
    def _error(self, mailbox: str, exc: Exception | str, status: int | None = None) -> None:
        msg = str(exc)
        if status is None:
            status = error_status(exc)
        self.res.errors.append({"mailbox": mailbox, "error": msg, "status": status})
        self.report(f"error: {mailbox}: {msg}")
        go_on = self.opts.ask(f"{mailbox}: {msg}") if self.opts.ask else self.opts.continue_on_error
        if not go_on:
            raise StopRestore(msg)

    def _store_error(self, mailbox: str, exc: Exception, what: str) -> None:
        """A store failure (a StoreError, or an OSError of the store's filesystem) while
        restoring ``mailbox`` (``what``: user/folder): a full disk stops the run,
        anything else is named for that mailbox and the others go on."""
        if isinstance(exc, OSError):
            exc = os_store_error(exc, what)
        if exc.status == EXIT_NOSPACE:
            self._store_full(mailbox, exc)
        self._error(mailbox, exc)

    # -- main loop --------------------------------------------------------------
    def restore(self) -> RestoreResult:
        """Restore what the selection takes from the archive.  The whole run is one
        store batch: whatever ends it, what was written is durable when it returns."""
        # the plugins hear how the run ended once the batch has ended too: a store that
        # gives its copy to the mail server then (dbox) may fail the run there (exit 17)
        self._end_status = EXIT_PARTIAL
        try:
            try:
                with self.store.batch():
                    self._restore()
                self.unmark += self.planner.stale
                self.planner.stale = []
                if self.unmark:
                    # the batch's sync made the last records durable (the journal's own
                    # filesystem too): their marks go
                    try:
                        syncfs_dirs(self.journal_dirs)
                    except OSError:
                        pass
                    else:
                        self._unmark()
                # (dbox) the batch gave the copies back: the folders are Dovecot's now
                if self._record_deferred():
                    self._end_status = self.res.status()
            finally:
                self._release_deferred()        # not recorded (the batch failed): under way
        except Exception as exc:
            plugins.run_end(self.run, exc.status if isinstance(exc, ImsError) else error_status(exc))
            raise
        except BaseException:
            plugins.run_end(self.run, self._end_status)
            raise
        plugins.run_end(self.run, self._end_status)
        return self.res

    def _journal_dirs(self) -> list:
        """The journal's directory when no sync of the store covers its filesystem (its
        records are durable only once it is synced too), else nothing."""
        d = os.path.dirname(os.path.abspath(self.journal.path))
        try:
            mine = os.stat(d).st_dev
            devs = {os.stat(x).st_dev for x in self.store.sync_dirs() if os.path.exists(x)}
        except OSError:
            return [d]
        return [] if mine in devs else [d]

    def _unmark(self) -> None:
        """Remove the marks whose journal records a sync made durable: the journal says
        now what they said (a folder whose mark goes first could be taken for a stranger's
        by a rerun after a power cut)."""
        marks, self.unmark = self.unmark, []
        for user, folder, mark in marks:
            try:
                self.store.unmark_restoring(user, folder, mark)
            except (StoreError, OSError):
                pass                    # (found again, and removed, by a later restore)

    def _journal(self, mailbox: str, record, lock=None, mark=None) -> None:
        """A journal change (``record()``) once what the run wrote before it is durable:
        after the next sync of the store (_record_done), or, for a store that gives its
        copy to the mail server when its batch ends, once that is done (self.deferred).
        ``lock``: the folder's restore lock, released once the change is recorded.
        ``mark``: (user, folder, mark) of the folder's mark, removed once that is durable."""
        if self.deferred is not None:
            # its restore lock is held until then too (docs/restore-design.md §3: sync,
            # record, then release): another restore of the folder finds it done, never
            # under way, and its own record never comes before this one
            self.deferred.append((mailbox, record, lock))
            return
        if not self.done:
            self.done_since = time.monotonic()
        self.done.append((mailbox, record, lock, mark))
        if len(self.done) >= DONE_FOLDERS or time.monotonic() - self.done_since >= DONE_SECONDS:
            self._record_done()

    def _settle(self) -> None:
        """Record what waits to be recorded, and let go of those folders' restore locks:
        before waiting for a restore lock another restore holds (two restores never wait
        for each other's folders), and before a folder is taken a second time.  A store
        that gives its copy to the mail server (dbox) gives it now, as its batch's end
        would: the folders are recorded only once the server has them."""
        if self.deferred is None:
            self._record_done()
            return
        self.done_keys.clear()
        if not self.deferred:
            return
        try:
            self.store.sync()
        except (StoreError, OSError) as exc:
            if isinstance(exc, OSError):
                exc = os_store_error(exc, "the store")
            n = sum(1 for _m, _r, lock in self.deferred if lock is not None)
            self._record_error(self.deferred[0][0] if len(self.deferred) == 1 else "/", (
                f"{exc}: {n} restored folder{'s are' if n != 1 else ' is'} not recorded complete "
                f"(the same command run again finishes {'them' if n != 1 else 'it'})"), exc.status)
            self._release_deferred()
            return
        self._record_deferred()

    def _record_deferred(self) -> bool:
        """Record the journal changes of a store that gave its copy to the mail server
        (self.deferred), sync the journal, then release their folders' restore locks.
        True when one could not be recorded (named)."""
        failed = False
        locks: list = []
        recorded = 0
        try:
            while self.deferred:
                mailbox, record, lock = self.deferred.popleft()
                recorded += 1
                if lock is not None:
                    locks.append(lock)
                try:
                    record()
                except JournalError as exc:
                    self._record_error(mailbox, str(exc), exc.status)
                    failed = True
            if recorded:
                # durable before the locks go and the run ends: these records come after
                # the batch's last sync, and a power cut after exit 0 took them all back
                # (Dovecot serving the folders, the next link merging into them)
                try:
                    self.journal.sync()
                except JournalError as exc:
                    self._record_error("/", str(exc), exc.status)
                    failed = True
        finally:
            for lock in locks:
                lock.close()
        return failed

    def _release_deferred(self) -> None:
        """Let go of the restore locks of folders not recorded (the give-back failed):
        they stay under way in the journal, and the same command run again finishes them."""
        deferred, self.deferred = self.deferred, (collections.deque() if self.deferred is not None else None)
        for _m, _r, lock in deferred or ():
            if lock is not None:
                lock.close()

    def _record_done(self) -> None:
        """Record the journal changes waiting (self.done) after a sync of the store (one
        syncfs per filesystem) made everything written before them durable, all in one
        transaction, then release their folders' restore locks.  A folder is thus never
        recorded complete while some of its files are only in the page cache (a power cut
        then left the rerun taking it as done: mail lost, exit 0), and one sync serves
        many folders.  A folder not recorded (the sync or the journal failed) stays under
        way: the same command run again resumes it, as after a kill."""
        done, self.done = self.done, []
        self.done_keys.clear()
        if not done:
            return
        try:
            try:
                self.store.sync()
                syncfs_dirs(self.journal_dirs)
            except (StoreError, OSError) as exc:
                if isinstance(exc, OSError):
                    exc = os_store_error(exc, "the store")
                n = sum(1 for _m, _r, lock, _k in done if lock is not None)
                self._record_error(done[0][0] if len(done) == 1 else "/", (
                    f"{exc}: {n} restored folder{'s are' if n != 1 else ' is'} not recorded complete "
                    f"(the same command run again finishes {'them' if n != 1 else 'it'})"), exc.status)
                return
            # the records that sync made durable: their marks are not needed any more
            self._unmark()
            self.unmark += self.planner.stale
            self.planner.stale = []
            try:
                self.journal.together([record for _m, record, _l, _k in done])
                self.unmark += [mark for _m, _r, _l, mark in done if mark is not None]
            except JournalError:
                for mailbox, record, _lock, mark in done:       # one by one: each failure named
                    try:
                        record()
                        if mark is not None:
                            self.unmark.append(mark)
                    except JournalError as exc:
                        self._record_error(mailbox, str(exc), exc.status)
        finally:
            # after the journal: another restore of the folder waiting for it sees it done
            for _m, _r, lock, _k in done:
                if lock is not None:
                    lock.close()

    def _restore(self) -> None:
        t0 = time.monotonic()
        plugins.run_start(self.run)
        status = EXIT_PARTIAL
        finished = stopped = False
        try:
            try:
                for m in self.reader.members(on_error=self._member_error):
                    self._member(m)
            except IncompleteArchive as exc:
                self.res.incomplete = str(exc)
            except StopRestore:
                stopped = self.res.stopped = True
            # a folder cut short keeps its UIDNEXT and journal as they were, so the same
            # command run again finishes it with the archived UIDs
            self._end_folder(complete=self.res.incomplete is None and not stopped)
            if self.res.incomplete is None and not stopped:
                self._end_user()
                self._record_done()     # (what follows reads the journal)
                self._find_gone_users()
                self._remove_gone()
                self._remove_users()
                self._give_subscriptions()
                self._give_withheld_guids()
                self._name_unread()
            finished = True
            status = self.res.status()
        finally:
            self._end_folder(complete=False)
            self._drop_lock("")
            # (before deliveries are released; whatever ended the run: Ctrl-C, a full disk)
            self._record_done()
            unwritten = None
            if finished and self.res.pending and self.opts.reffile:
                try:
                    write_reffile(self.opts.reffile, self.header, self.res.pending)
                except ImsError as exc:
                    unwritten = exc
                    status = exc.status
            # a run the same command must finish (the store filled up, Ctrl-C, a kill, the
            # reference file not written) leaves deliveries held: new mail would take the
            # UIDs still to be restored
            keep = self.opts.keep_held or not finished or self.res.store_full is not None \
                or unwritten is not None
            for user in ([] if keep else self.held):
                try:
                    self.store.release_deliveries(user, self.holder)
                except (StoreError, OSError) as exc:
                    self._record_error(user, f"releasing held deliveries: {exc}", error_status(exc))
            self.res.held = list(self.held) if keep and not self.opts.keep_held else []
            self.applier.close()
            # a run stopped (a full disk, an error with -c n) or killed did not read the whole
            # archive: a path it did not get to is not one the archive lacks
            self.res.unmatched = self.sel.unmatched() if finished and not stopped else []
            self.res.near_misses = {p: self.sel.near_misses(p) for p in self.res.unmatched}
            self.res.left_out = {p: x for p in self.res.unmatched if (x := self.sel.left_out(p, self.header))}
            self.res.user_paths = {p: x for p in self.res.unmatched if (x := self.sel.user_path(p))}
            self.res.seconds = time.monotonic() - t0
            self.run.counts = {"users": self.res.users, "folders": self.res.folders,
                               "messages": self.res.messages, "links": self.res.links,
                               "bytes": self.res.bytes}
            self.run.errors = [(e["mailbox"], e["error"]) for e in self.res.errors]
            self._end_status = status       # told to the plugins by restore()
        if unwritten is not None:
            n = len(self.res.held)
            raise RestoreError(str(unwritten) + (f" (deliveries to {n} user{'s' if n > 1 else ''} stay held "
                                                 f"until it completes)" if n else ""),
                               status=unwritten.status) from None

    def _record_error(self, mailbox: str, msg: str, status: int) -> None:
        """An error met while winding up: recorded, never raised, nobody asked."""
        if status == EXIT_NOSPACE and self.res.store_full is None:
            self.res.store_full = msg
        self.res.errors.append({"mailbox": mailbox, "error": msg, "status": status})
        self.report(f"error: {mailbox}: {msg}")

    def _member_error(self, exc: Exception) -> None:
        self.cur_damaged = True             # this user's folder list cannot be trusted
        self.damaged = True                 # ... nor the archive's list of users
        if isinstance(exc, HostileMember):
            self.res.hostile += 1
        elif isinstance(exc, TrailingData):
            self.res.trailing = str(exc)    # (no member is missing: not counted as one)
        elif isinstance(exc, CorruptMember):
            self.res.corrupt += 1
            if self.plan is not None and getattr(exc, "name", None) != "ims-asm.trailer":
                # a member lost within the folder being restored (a damaged header: the
                # reader went on at the next one) may be one of its messages: the folder
                # is no mirror of the archive, its archived UIDs kept free (journal gaps),
                # as for a message whose bytes are damaged.  Recorded as a mirror, the
                # same archive from an intact copy gave the message a new UID (exit 0),
                # and the next link was refused as if one had been skipped
                self.plan.failed += 1
        self._error(getattr(exc, "name", None) or "archive", exc)

    def _member(self, m) -> None:
        if m.kind == "user":
            self._end_folder(complete=True)
            self._end_user()
            self.user_groups[(m.partition, m.user)] = m.group
            self.held_users.add((m.partition, m.user))
            if m.user in self.opts.user_map:
                self.opts.map_used.add(m.user)       # the map names a user the archive has
            self.cur_user = (m.partition, m.user)
            self.cur_subscriptions = m.subscriptions
            self.cur_folders = set()
            self.whole.add(self.cur_user)
            self.cur_damaged = False
            self._recovery_user(m.partition, m.user, m.group)
            return
        if m.kind == "folder":
            self._end_folder(complete=True)
            self._start_folder(m)
            return
        plan = self.plan
        selected = plan is not None and plan.src_user == m.user and plan.src_folder == m.folder
        if selected and plan.final_uids is not None and m.uid not in plan.final_uids:
            selected = False                     # gone by the end of the chain: not restored
        if not selected:
            self.applier.maybe_spool(m)
            return
        if plan.vanished:                        # (see _vanished: named once)
            plan.failed += 1
            self.applier.maybe_spool(m)          # (a first copy later links may need)
            return
        try:
            self.applier.restore_message(plan, m)
        except ArchiveReadFailed as exc:
            raise exc.error from None            # the device failed: the CLI says so
        except (DigestMismatch, CorruptMember) as exc:
            plan.failed += 1
            self.res.corrupt += 1
            self._error(f"/{m.partition}/{m.user}/{m.folder}/{m.uid}", exc)
        except (StoreError, OSError) as exc:     # not the archive's (see _Source): the store's
            plan.failed += 1
            if isinstance(exc, OSError):
                exc = os_store_error(exc, f"{plan.user}/{plan.folder}")
            if isinstance(exc, StoreFull):
                self._store_full(plan.mailbox, exc)
            if plan.vanished:
                pass                             # named once (below); the rest are counted
            elif self._vanished(plan):
                plan.vanished = True
                self._error(plan.mailbox, (
                    f"the folder was deleted or renamed while it was restored (by an IMAP client?): "
                    f"the messages from archived UID {m.uid} on were not restored; run the same "
                    f"command again to restore them to this name"), EXIT_PARTIAL)
            else:
                self._error(f"{plan.mailbox}/{m.uid}", exc)
        if self.progress:
            self.progress(self.res)

    def _vanished(self, plan: FolderPlan) -> bool:
        """The folder a message could not be written to is no longer the one this run
        restores into: gone (a client's DELETE or RENAME) or made again (another
        UIDVALIDITY).  Every later message would fail the same way, one line each."""
        try:
            return self.store.folder(plan.user, plan.folder).uidvalidity != plan.uidvalidity
        except NoSuchFolder:
            return True
        except (StoreError, OSError):
            return False

    # -- folders --------------------------------------------------------------
    def _whole_users(self) -> bool:
        """This archive and this restore cover whole users (no folder paths): only then
        does a folder missing from the archive mean the folder was gone at backup time."""
        from asm.logical import parse
        if any(lp.folder is not None for lp in self.sel.paths):
            return False
        try:
            return all(parse(p, self.groups).folder is None for p in self.header.get("scope") or ["/"])
        except ImsError:
            return False

    def _scoped_users(self) -> bool:
        """The scope of this archive's backup can be read here (its paths, with today's
        groups): what it looked at is known (unseen_by)."""
        from asm.logical import parse
        try:
            return all(parse(p, self.groups) is not None for p in self.header.get("scope") or ["/"])
        except ImsError:
            return False

    def _taken(self, partition: str, src_user: str, folder: str) -> bool:
        """A path of this restore that matched in this archive takes ``folder`` (every
        folder without paths)."""
        if not self.sel.paths:
            return True
        group = self.user_groups.get((partition, src_user))
        return any(self.sel.hits[i] and ok and lp.covers_folder(folder)
                   for i, path in enumerate(self.sel.paths)
                   for lp, ok in self.sel._readings(path, partition, src_user, group))

    def _end_user(self) -> None:
        """A user's folders are all read: a chain restore will remove the folders the
        archive no longer lists (deleted or renamed away between the backups), once the
        archive is read to its trailer (_remove_gone).  The journal says this archive held
        the user whole (imsrestore --recovery of another chain compares with it)."""
        cur, self.cur_user = self.cur_user, None
        if cur is None or not (self.whole_users or self.scoped_users) or self.opts.new_mailbox \
                or self.cur_damaged or cur in self.skip_users:
            return                          # (a damaged member may be a folder's: remove nothing)
        partition, src_user = cur
        group = self.user_groups.get(cur)
        if self.sel.paths and not any(self.sel._user_ok(lp, partition, src_user, group) for lp in self.sel.paths):
            return
        user = self.opts.user_map.get(src_user, src_user)
        if not self.whole_users:
            # (some folders of the user: not the user held whole; its subscriptions to
            # names that are no folder under a folder path restored -- a deleted
            # subfolder's, which Dovecot keeps -- are given as the user's are, there only)
            if self.cur_subscriptions is not None and user == src_user:
                scope = functools.partial(self._taken, partition, src_user)
                self.subs_todo.append((partition, user, [n for n in self.cur_subscriptions if scope(n)],
                                       scope if self._continues() else False))
            if self._continues():
                self.gone.append((partition, src_user, frozenset(self.cur_folders)))
            return
        if self.cur_subscriptions is not None and user == src_user:
            # (given once the gone folders are removed: a folder deleted between the links
            # of a chain takes its subscription with it, which the later link then names)
            self.subs_todo.append((partition, user, self.cur_subscriptions, self._continues()))
        if user in self.users_seen:
            try:
                self._journal(f"/{partition}/{user}", functools.partial(self.journal.put_held, user, self.header))
            except JournalError as exc:
                self._record_error(f"/{partition}/{user}", str(exc), exc.status)
        if not self._continues():
            return
        self.gone.append((partition, src_user, frozenset(self.cur_folders)))

    def _give_subscriptions(self) -> None:
        """Each user restored whole under its own name gets the subscriptions to names
        that are no folder its archive records (IMSASM.subscriptions: Dovecot keeps them
        after a DELETE or RENAME, LSUB shows them): added; and an archive that continues a
        chain (an incremental) also ends those it does not record, as it removes the
        folders it no longer has.  A full archive merged into a live user removes none.
        A restore of some folders of a user does the same under them alone (``replace``
        is then the test of a name being under them)."""
        for partition, user, names, replace in self.subs_todo:
            mailbox = f"/{partition}/{user}"
            try:
                if not self.store.exists(user):
                    continue
                if replace:
                    stale = sorted(set(self.store.other_subscriptions(user)) - set(names))
                    if callable(replace):
                        stale = [n for n in stale if replace(n)]
                    if stale:
                        self.store.unsubscribe_names(user, stale)
                if names:
                    self.store.subscribe_names(user, names)
            except (StoreError, OSError) as exc:
                if isinstance(exc, OSError):
                    exc = os_store_error(exc, user)
                self._record_error(mailbox, f"its subscriptions to names that are no folder were not "
                                            f"restored: {exc}", exc.status)
        self.subs_todo = []

    def _continues(self) -> bool:
        """This archive can continue a chain restored before it: an incremental that names
        its chain, or one by date (-d), which follows whatever was taken before it."""
        from asm.backupstate import by_date, header_chain
        return bool(header_chain(self.header)) or by_date(self.header)

    def _follows(self, j) -> bool:
        """This archive follows the one the journal row ``j`` says its folder mirrors."""
        from asm.backupstate import by_date, header_chain
        h = self.header
        if j.archive_id in header_chain(h):
            return True
        created = h.get("created")
        return by_date(h) and j.archive_id != h.get("archive_id") \
            and j.created is not None and created is not None and j.created < created

    def _newer_whole(self, j, partition: str, src_user: str) -> bool:
        """This archive, an incremental of another chain than the one the journal row
        ``j`` says its folder mirrors, holds the folder's user whole (its base had none of
        the user: one moved from another backup group; its INBOX was continued from the
        restore of the other chain, Planner.taken_over) and was taken after that archive:
        the user as it was then, without the folders deleted since."""
        created = self.header.get("created")
        return (partition, src_user) in self.whole \
            and self.opts.user_map.get(src_user, src_user) in self.planner.taken_over \
            and j.created is not None and created is not None and j.created < created

    def _remove_gone(self) -> None:
        """Remove the folders the archive no longer lists, of the users it held whole:
        only those this chain's restores made and that are as they left them (never a
        folder someone made or changed since, never INBOX), and only once the archive
        was read to a valid trailer.  A folder the trailer names as not backed up (or
        whose user or partition it names) was not deleted: the backup could not read
        it.  It is kept as it is, and said so (one line; the status is _name_unread's,
        which names the same mailbox: a chain's earlier links go on to its later archives)."""
        from asm.logical import is_excluded
        trailer = getattr(self.reader, "trailer", None)
        if not self.gone or trailer is None:
            return
        unread = trailer.get("errors", [])
        exclude = (self.header.get("options") or {}).get("exclude") or []
        unseen = None
        if self.scoped_users:
            from asm.restore.selection import unseen_by
            unseen = unseen_by(self.header, self.groups, {u for (_p, u, _l) in self.gone},
                               {(u, f) for (_p, u, listed) in self.gone for f in listed})
            if unseen is None:
                return                      # (its scope cannot be read here: remove nothing)
        for partition, src_user, listed in self.gone:
            user = self.opts.user_map.get(src_user, src_user)
            try:
                known = self.journal.folders(user)
            except JournalError as exc:
                self._record_error(f"/{partition}/{user}", str(exc), exc.status)
                continue
            for folder in sorted(known, reverse=True):          # subfolders before their parents
                if folder in listed or folder == "INBOX" or (
                        unseen(partition, src_user, self.user_groups.get((partition, src_user)), folder)
                        or not self._taken(partition, src_user, folder)
                        if unseen is not None else is_excluded(folder, exclude)):
                    continue                # (not looked at by its backup, or not asked for: kept)
                mailbox = f"/{partition}/{user}/{folder}"
                try:
                    j = self.journal.get(user, folder)
                    if j is None or not j.mirror or j.running or j.source is not None \
                            or not (self._follows(j) or self._newer_whole(j, partition, src_user)):
                        continue
                    if not self.store.exists(user, folder):
                        # gone, or half removed by a run killed while removing it (the
                        # store finishes that)
                        if self.store.folder_remains(user, folder):
                            self.store.delete_folder(user, folder)
                            self.store.remove_empty_levels(user, folder)
                        self._journal(mailbox, functools.partial(self.journal.forget, user, folder))
                        continue
                    why = unread_by(unread, partition, src_user, folder)
                    if why is not None:
                        # named, not a failure of this restore (as _name_unread): a chain
                        # goes on to the archives after it, which may hold it again
                        line = (f"not in this archive: the backup that wrote it could not read it "
                                f"({why}); kept as an earlier archive's restore left it")
                        self.res.kept.append((mailbox, line))       # (said by the command)
                        continue
                    lock = contextlib.ExitStack()
                    with contextlib.ExitStack() as unless_removed:
                        unless_removed.enter_context(lock)
                        lock.enter_context(self.locks.hold(user, folder))
                        with self.store.lock(user, folder):
                            info = self.store.folder(user, folder)
                            msgs = self.store.messages(user, folder)
                        if (info.uidvalidity, info.uidnext) != (j.uidvalidity, j.uidnext) or \
                                (j.count is not None and j.count != len(msgs)):
                            self.report(f"{mailbox}: not in this archive, but changed since the chain's "
                                        f"restore made it: kept")
                            continue
                        # (its own lock: a folder is removed with its lock file)
                        self.store.delete_folder(user, folder)
                        unless_removed.pop_all()
                    # the levels above it it leaves empty go too (LIST would show them
                    # \Noselect, where the chain in one command never made them)
                    self.store.remove_empty_levels(user, folder)
                    # (a removal given to the server only when the batch ends is
                    # forgotten only then: a run killed before it removes it again); its
                    # restore lock is held till then: another restore that makes the
                    # folder again meanwhile would have its record forgotten
                    self._journal(mailbox, functools.partial(self.journal.forget, user, folder), lock)
                    self.res.removed.append(mailbox)
                    self.report(f"{mailbox}: removed (the archive no longer lists it)")
                except (StoreError, JournalError, OSError) as exc:
                    if isinstance(exc, OSError):
                        exc = os_store_error(exc, f"{user}/{folder}")
                    self._record_error(mailbox, str(exc), exc.status)

    def _find_gone_users(self) -> None:
        """The users this chain's restores made that the archive no longer holds although
        its backup looked at them (the account was removed between the backups): a chain
        given in one command never restores them, so this link removes them as it removes
        a folder it no longer lists.  Their folders go by _remove_gone (all but INBOX),
        then INBOX and the user by _remove_users, on the same conditions.  A user out of
        the backup's scope (a group's backup: the user may have moved to another group) is
        not looked at, as unseen_by says for a chain in one command."""
        from asm.restore.selection import unseen_by
        if not self._continues() or not self.whole_users or self.opts.new_mailbox or self.damaged:
            return
        held = {u for (_p, u) in self.held_users}
        unseen = unseen_by(self.header, self.groups, held)
        if unseen is None:
            return
        umap = self.opts.user_map
        targets = {umap.get(u, u) for u in held}
        back = {new: old for old, new in umap.items()}
        try:
            known = self.journal.users()
        except JournalError as exc:
            self._record_error("/", str(exc), exc.status)
            return
        for user in sorted(known):
            src = back.get(user, user)
            if user in targets or src in held or (src == user and user in umap):
                continue            # held, or the journal's rows are of another restore's user
            if unseen("", src, None, "INBOX"):
                continue            # (a backup of some paths: first, before the store is asked)
            try:
                if not self.store.exists(user):
                    continue
                partition = self.store.user_partition(user)
            except (StoreError, OSError):
                continue            # (no user here: nothing to remove)
            if unseen(partition, src, None, "INBOX"):
                continue
            if self.sel.paths and not any(self.sel._user_ok(lp, partition, src, None) for lp in self.sel.paths):
                continue
            self.gone.append((partition, src, frozenset()))
            self.gone_users.append((partition, src))

    def _recovery_user(self, partition: str, src_user: str, group) -> None:
        """imsrestore --recovery (one chain of several restored into one store after a
        total loss; imsdr chain --commands): a user that moved between backup groups is in
        the chains of both, and comes back as the newest archive holding it had it,
        whatever order the chains are restored in.  The journal names the newest archive
        restored here that held the user whole (Journal.held_by).  When that archive is
        of another chain and was taken after this chain's last archive holding the user
        (the chain's end, when it holds the user; else this archive), this archive leaves
        the user as it is (skip_users): it would make again a folder deleted before that
        later backup.  When it was taken before, the user is removed first (_replace_user)
        and this chain makes it as its archives hold it.  Without --recovery (an older
        archive restored on purpose, to get a deleted folder back) none of this applies."""
        if not self.opts.recovery or not self.whole_users or self.opts.new_mailbox:
            return
        if self.sel.paths and not any(self.sel._user_ok(lp, partition, src_user, group) for lp in self.sel.paths):
            return
        from asm.backupstate import header_chain
        user = self.opts.user_map.get(src_user, src_user)
        mailbox = f"/{partition}/{user}"
        try:
            held = self.journal.held_by(user)
            if held is None or held[1] is None or not self.store.exists(user):
                return
            h = self.header
            if held[0] in {h.get("archive_id"), *header_chain(h), *self.opts.chain_ids}:
                return                      # this chain's own restore (or the same again)
            created, at_end = h.get("created"), self.opts.final is None
            if not at_end and self.opts.final_created is not None:
                if self._final_users is None:
                    self._final_users = {u for (u, _f) in self.opts.final}
                if src_user in self._final_users:
                    created, at_end = self.opts.final_created, True    # the chain's end holds the user
            if created is None:
                return
            if held[1] > created:
                self.skip_users.add((partition, src_user))
                self.report(f"{mailbox}: left as the restore of a later archive of another chain gave it "
                            f"(taken at {_fmt(held[1])}): this chain holds the user as it was before")
            elif at_end:
                # (a link whose chain's end does not hold the user, taken after the other
                # chain's archive: the links before it were left out, and what it lists
                # without carrying it is refused, never removed first)
                self._replace_user(partition, user, mailbox, held[1])
        except (StoreError, JournalError, OSError) as exc:
            if isinstance(exc, OSError):
                exc = os_store_error(exc, user)
            self.skip_users.add((partition, src_user))
            self._error(mailbox, exc, exc.status)

    def _replace_user(self, partition: str, user: str, mailbox: str, when: float) -> None:
        """--recovery: ``user`` here came from an older archive of another chain, which
        this chain's later archive holds again: removed (every folder as a restore left
        it), so this chain makes the user as its archives hold it, without the folders
        deleted since.  A user with a folder someone made or changed, or whose deliveries
        another restore holds, is kept and merged into (said with -v)."""
        kept = f"{mailbox}: an older archive of another chain restored it, but it changed since: merged into"
        if getattr(self.store, "journal_after_sync", False):
            self.report(kept)               # (dbox: a restore does not remove a login)
            return
        with self.locks.hold(user, ""):
            if self.store.deliveries_held(user) or self.store.unlisted_folders(user):
                self.report(kept)
                return
            for folder in self.store.folder_names(user):
                j = self.journal.get(user, folder)
                with self.store.lock(user, folder):
                    info = self.store.folder(user, folder)
                    count = len(self.store.messages(user, folder))
                if j is None or not j.mirror or j.running or j.source is not None \
                        or (info.uidvalidity, info.uidnext) != (j.uidvalidity, j.uidnext) \
                        or (j.count is not None and j.count != count):
                    self.report(kept)
                    return
            self.store.delete_user(user)
        self.journal.forget_user(user)
        self.report(f"{mailbox}: removed first: the restore of an older archive of another chain "
                    f"(taken at {_fmt(when)}) made it; this chain gives it as its archives hold it")

    def _remove_users(self) -> None:
        """Remove the users _find_gone_users found, now that _remove_gone removed their
        other folders: only a user left with its INBOX alone, as a restore of this chain
        left it (never one that got mail or a folder since, nor one whose backup could not
        read it, nor one whose deliveries another restore holds).  Mail queued for the
        user while deliveries were held is delivered first, and the user is then kept."""
        trailer = getattr(self.reader, "trailer", None)
        if trailer is None:
            return
        unread = trailer.get("errors", [])
        for partition, src in self.gone_users:
            user = self.opts.user_map.get(src, src)
            mailbox = f"/{partition}/{user}"
            kept = f"{mailbox}: not in this archive, but it holds what this chain's restores did not leave: kept"
            try:
                if not self.store.exists(user):
                    self._journal(mailbox, functools.partial(self.journal.forget_user, user))
                    continue
                why = unread_by(unread, partition, src, "INBOX")
                if why is not None:
                    self.res.kept.append((f"{mailbox}/INBOX", (
                        f"not in this archive: the backup that wrote it could not read it ({why}); "
                        f"kept as an earlier archive's restore left it")))
                    continue
                j = self.journal.get(user, "INBOX")
                if self.store.folder_names(user) != ["INBOX"] or self.store.unlisted_folders(user) \
                        or j is None or not j.mirror or j.running or j.source is not None \
                        or not self._follows(j):
                    self.report(kept)
                    continue
                if getattr(self.store, "journal_after_sync", False):
                    # (dbox: the restore works on a Maildir copy that it gives back to the
                    # login; a login itself it cannot remove)
                    self._record_error(mailbox, (
                        "not in this archive (the account was removed between the backups), but a "
                        "restore does not remove a dbox login: its INBOX is kept as an earlier "
                        "archive's restore left it; remove the login's mail as Dovecot's own "
                        "(its mail_location directory) if it is to stay removed"), EXIT_PARTIAL)
                    continue
                with self.locks.hold(user, ""), self.locks.hold(user, "INBOX"):
                    if self.store.deliveries_held(user):
                        # (mail queued meanwhile is delivered: the INBOX is then no mirror)
                        self.store.release_deliveries(user, self.holder)
                        if self.store.deliveries_held(user):
                            self.report(f"{mailbox}: not in this archive, but another restore holds its "
                                        f"deliveries: kept")
                            continue
                    with self.store.lock(user, "INBOX"):
                        info = self.store.folder(user, "INBOX")
                        count = len(self.store.messages(user, "INBOX"))
                    if (info.uidvalidity, info.uidnext) != (j.uidvalidity, j.uidnext) or \
                            (j.count is not None and j.count != count):
                        self.report(kept)
                        continue
                    self.store.delete_user(user)
                self._journal(mailbox, functools.partial(self.journal.forget_user, user))
                self.res.removed.append(f"{mailbox}/INBOX")
                self.report(f"{mailbox}: removed (the archive no longer holds the user)")
            except (StoreError, JournalError, OSError) as exc:
                if isinstance(exc, OSError):
                    exc = os_store_error(exc, user)
                self._record_error(mailbox, str(exc), exc.status)

    def _give_withheld_guids(self) -> None:
        """The folders this run made under their archived names whose archived mailbox
        GUID another folder of the user had (Planner.own_guid): the folder the archive
        no longer lists, renamed to this one between the backups, has gone
        (_remove_gone); now that no other folder has it, they get it."""
        for partition, user, folder, guid in self.planner.withheld:
            mailbox = f"/{partition}/{user}/{folder}"
            try:
                if not self.store.exists(user, folder) or \
                        any(f.guid == guid for f in self.store.folders(user)):
                    continue
                with self.locks.hold(user, folder):
                    self.store.set_folder(user, folder, guid=guid)
            except (StoreError, OSError) as exc:
                if isinstance(exc, OSError):
                    exc = os_store_error(exc, f"{user}/{folder}")
                self._record_error(mailbox, str(exc), exc.status)

    def _name_unread(self) -> None:
        """What the backup that made this archive could not read (its trailer's errors),
        where the selection reaches it: named, for this archive does not bring it back,
        and the run's status is 1 (RestoreResult.status: the user asked for it and did
        not get it as the store had it).  A chain's earlier links leave that to its last
        (opts.final set): a later archive may hold it again."""
        trailer = getattr(self.reader, "trailer", None)
        if trailer is None or self.opts.final is not None:
            return
        self.res.unread = self.sel.unread(trailer)
        for mailbox, _why in self.res.unread:
            self.report(f"{mailbox}: not in this archive as the store had it: its backup could not read it")

    def _start_folder(self, m) -> None:
        self.held_users.add((m.partition, m.user))
        if m.state:
            self.whole.discard((m.partition, m.user))
        if (m.partition, m.user) == self.cur_user:
            self.cur_folders.add(m.folder)
        if (m.partition, m.user) in self.skip_users:
            self.plan = None                # (--recovery: a later archive's restore has the user)
            return
        group = self.user_groups.get((m.partition, m.user), m.group)
        if not self.sel.folder(m.partition, m.user, group, m.folder):
            self.plan = None
            return
        user = self.opts.user_map.get(m.user, m.user)
        mailbox = f"/{m.partition}/{user}/{m.folder}"
        if self.opts.user_map:
            # two archived users restored as one (a map onto a user restored under its own
            # name too): the commands refuse that before they write (they look at the
            # archive first); a stream they could not look ahead in gets here: the user
            # that comes second is not restored, and said so, never merged
            came = self.opts.map_targets.setdefault(user, m.user)
            if came != m.user:
                self.plan = None
                if (m.user, user) not in self.refused_users:
                    self.refused_users.add((m.user, user))
                    old = m.user if m.user in self.opts.user_map else came
                    self._error(f"/{m.partition}/{user}", (
                        f"{old}={user}: {user} is restored too in this run; {came}'s folders were "
                        f"restored to {user}, {m.user}'s were not (they would be merged): restore "
                        f"{m.user} in a run of its own"), EXIT_USAGE)
                return
        final_uids = final_flags = None
        if self.opts.final is not None:
            end = self.opts.final.get((m.user, m.folder))
            if end is None and unread_by(self.opts.final_unread, m.partition, m.user, m.folder) is not None:
                # the chain's last backup could not read it (its trailer names it), it did
                # not delete it: restored as this archive holds it (the last archive's
                # restore keeps it and says so)
                pass
            elif end is None and self.opts.final_unseen is not None and \
                    self.opts.final_unseen(m.partition, m.user, group, m.folder):
                # the chain's last backup did not look at it (out of its scope, or left out
                # by store.backupexclude): not deleted, restored as this archive holds it
                self.report(f"{mailbox}: outside what the chain's last archive covers: restored as "
                            f"this archive holds it")
            elif end is None or end[0] != m.uidvalidity:
                # deleted, renamed away or made again by the end of the chain
                self.plan = None
                if end is None and any(lp.folder is not None and lp.folder == m.folder
                                       and self.sel._user_ok(lp, m.partition, m.user, group) for lp in self.sel.paths):
                    # a path names this very folder: the admin asked for it and gets none
                    # of it, which exit 0 would hide (a subfolder a path takes with its
                    # parent, deleted between the backups, goes unsaid as in a whole
                    # restore); named by the command once the chain is done (an error here
                    # would stop the chain at this archive).  (One made again: a later
                    # archive restores it as the chain's end has it.)
                    self.res.gone_asked.append(mailbox)
                self.report(f"{mailbox}: not in the chain's last archive (as this folder): skipped")
                return
            else:
                final_uids, final_flags = end[1], end[2]
        if m.partition not in self.store.partitions() and not self.store.exists(user):
            # a user of a partition this installation does not have (partition:NAME.path
            # forgotten or mistyped) is not put on another without a word: refused, once
            self.plan = None
            if user not in self.refused_users:
                self.refused_users.add(user)
                self._error(f"/{m.partition}/{user}", (
                    f"partition '{m.partition}' is not configured here: set it (msconfig set "
                    f"partition:{m.partition}.path DIR) and run the restore again, or to restore the "
                    f"user on another partition make it there first (mboxutil -c user/{user} -p primary); "
                    f"nothing of this user was restored"), EXIT_USAGE)
            return
        try:
            if not self.store.exists(user) and not self.opts.new_mailbox:
                # an incremental refused for want of its base makes nothing, not even the user
                # (with -n what it carries goes beside, see FolderPlanner.plan)
                self.planner.check_base(m, user, m.folder)
            if (user, m.folder) in self.done_keys:
                # (a folder the archive lists twice: the first is recorded first, and its
                # restore lock, which this process would take again and release, is let go of)
                self._settle()
            with self.locks.hold(user, ""):        # one restore at a time makes a user
                self._ensure_user(m.partition, user, m)
            self.restore_lock.enter_context(self.locks.hold(
                user, m.folder, waiting=lambda pid: self.report(
                    f"{mailbox}: waiting for another restore of it to finish"
                    + (f" (process {pid})" if pid else ""))))
            try:
                plan = self.plan = self.planner.plan(m, user, self.lock_stack, final_uids, final_flags)
            finally:
                for _u, _f, why in self.planner.acl_locked:
                    self._record_error(mailbox, why, EXIT_LOCKED)       # the mail goes on
                self.planner.acl_locked.clear()
            self.res.folders += 1
            if plan.mode == "skip":
                self.res.skipped += 1
            self.report(f"{plan.mailbox}: restoring ({plan.mode}"
                        + (f", from {m.user}/{m.folder}" if (user, plan.folder) != (m.user, m.folder) else "")
                        + ")")
        except ChainOrderError as exc:
            # this folder is left exactly as it was; the others go on, but none of this
            # user's is removed: the one refused may be where another went (a rename)
            self.plan = None
            if (m.partition, m.user) == self.cur_user:
                self.cur_damaged = True
            self.res.out_of_order.append(mailbox)
            self._drop_lock(mailbox)
            self._error(mailbox, exc)
        except CorruptMember as exc:
            self.plan = None
            self._drop_lock(mailbox)
            self._error(mailbox, exc)
        except (StoreError, JournalError, OSError) as exc:
            # the store cannot hold this folder (a name too long for its filesystem,
            # read-only, ...): named for it, the other folders go on
            self.plan = None
            self._drop_lock(mailbox)
            self._store_error(mailbox, exc, f"{user}/{m.folder}")

    def _store_full(self, mailbox: str, exc: ImsError) -> None:
        """The store's disk is full: nothing more can be written, so the run stops."""
        self.res.store_full = str(exc)
        self.res.errors.append({"mailbox": mailbox, "error": str(exc), "status": exc.status})
        raise StopRestore(str(exc)) from None

    def _release_lock(self) -> None:
        """Release the folder's lock (a driver writes what it kept in memory then: that
        may fail, and raises)."""
        stack, self.lock_stack = self.lock_stack, contextlib.ExitStack()
        stack.close()

    def _drop_lock(self, mailbox: str) -> None:
        """Release the locks of a folder that failed; a failure to do so is recorded."""
        try:
            self._release_lock()
        except (StoreError, OSError) as exc:
            self._record_error(mailbox, str(exc), error_status(exc))
        finally:
            self._release_restore_lock()

    def _release_restore_lock(self) -> None:
        stack, self.restore_lock = self.restore_lock, contextlib.ExitStack()
        stack.close()

    def _ensure_user(self, partition: str, user: str, m) -> None:
        # files Dovecot could not open are not written at all (the folder is named, exit 17)
        self.store.check_writer(user)
        if not self.store.exists(user):
            part = partition         # configured: _start_folder refuses a user of another
            try:
                # INBOX has the archive's UIDVALIDITY from the start (when the archive
                # holds INBOX, it comes first): no moment with another one on disk
                inbox = m.folder == "INBOX"
                # ... and its mailbox GUID, when it is the archived user's own INBOX
                # (Planner.own_guid: a new user has no other folder that could hold it)
                # (an INBOX filled next may be made to appear whole, filled, when its
                # lock is released: Store.create_user_to_fill)
                make = self.store.create_user_to_fill if inbox else self.store.create_user
                make(user, part, uidvalidity=m.uidvalidity if inbox else None,
                     guid=(m.mailbox_guid or "") if inbox and user == m.user else "")
            except UserExists:
                pass                              # another restore made it meanwhile
        if user not in self.users_seen:
            self.users_seen.add(user)
            self.res.users += 1
        if user not in self.held:
            # our own hold, beside any other restore's: whoever finishes last releases
            self.store.hold_deliveries(user, self.holder)
            self.held.append(user)

    def _end_folder(self, complete: bool) -> None:
        """Finish the folder being restored: a complete one gets the chain's expunges and
        flags and the archive's UIDNEXT, its changes are committed (the store lock
        released), and only then does the journal call it done.  A folder cut short
        keeps its journal entry 'under way', so the same command resumes it."""
        plan = self.plan
        if plan is None:
            return
        self.plan = None
        store = self.store
        mailbox = plan.mailbox
        info = None
        if plan.vanished:
            # named when it was seen; not recorded as restored (the same command run
            # again restores the folder under its name); its locks went with it
            try:
                self.applier.drop_deferred(plan)
                self._release_lock()
            except (StoreError, OSError):
                pass
            finally:
                self._release_restore_lock()
            plugins.mailbox_done(self.run, mailbox, {"status": "error", "messages": plan.restored,
                                                     "bytes": 0, "error": "deleted or renamed while restored"})
            return
        if plan.mode == "skip":
            try:
                self._release_lock()
            except (StoreError, OSError) as exc:
                self._record_error(mailbox, str(exc), error_status(exc))
            finally:
                self._release_restore_lock()
            return
        try:
            try:
                if complete:
                    if plan.mode == "chain":
                        keep = plan.archive_uids
                        # (a message this run stored is the archive's, even under a new UID)
                        gone = [u for u in plan.by_uid if u not in keep and u not in plan.stored]
                        self.res.expunged += store.expunge(plan.user, plan.folder, gone)
                        for uid in gone:
                            plan.by_uid.pop(uid, None)
                        for uid in plan.by_uid:
                            st = plan.state.get(uid) if uid in keep else None
                            if st is not None:
                                store.set_flags(plan.user, plan.folder, uid, st[0], st[1])
                        # POP3 UIDLs Dovecot saved (pop3_save_uidl) since the archive that
                        # carried the message: clients must not fetch it all again
                        for uid, (uidl, order) in (plan.pop3 or {}).items():
                            if uid in plan.by_uid and uid in keep:
                                store.set_pop3(plan.user, plan.folder, uid, uidl, order)
                    info = store.folder(plan.user, plan.folder)
                    if plan.same and info.uidnext < plan.archive_uidnext:
                        # never lower UIDNEXT: clients must not see a UID twice
                        info = store.set_folder(plan.user, plan.folder, uidnext=plan.archive_uidnext)
                    if plan.deferred:
                        # the messages that could not keep their UIDs, above the archive's
                        self.applier.finish_deferred(plan)
                        info = store.folder(plan.user, plan.folder)
            finally:
                self.applier.drop_deferred(plan)
                self._release_lock()
            if complete and plan.taken:
                self._record_error(mailbox, (
                    f"{len(plan.taken)} archived UIDs ({', '.join(map(str, plan.taken[:5]))}"
                    f"{', ...' if len(plan.taken) > 5 else ''}) are held by other messages stored in the "
                    f"folder since its restore began (a delivery, IMAP APPEND, COPY or MOVE, while it ran or "
                    f"between the archives of its chain): those archived messages got new UIDs, every other "
                    f"message kept its own; a client that cached this folder before the loss may show its "
                    f"old message for those UIDs until it is told to resync the folder (a chain restored in "
                    f"one command, or with -H until its last archive, holds deliveries throughout)"),
                    EXIT_PARTIAL)
            if complete and plan.passed:
                self._record_error(mailbox, (
                    f"{len(plan.passed)} archived UIDs ({', '.join(map(str, plan.passed[:5]))}"
                    f"{', ...' if len(plan.passed) > 5 else ''}) were given out as gone: a restore killed "
                    f"while writing them left their records, and Dovecot told a client UIDNEXT past them "
                    f"before this run; those archived messages got new UIDs (a client never fetches a "
                    f"UID below the UIDNEXT it was given), every other message kept its own"),
                    EXIT_PARTIAL)
            if complete and plan.mode == "merge" and plan.renumbered and info.uidvalidity != \
                    plan.archive_uidvalidity and (plan.user, plan.folder) == (plan.src_user, plan.src_folder):
                # its own name, but another folder there (made again since the backup, or by
                # a delivery into the emptied store): every message a new UID, which the
                # command names (a client that cached the archived folder fetches it again)
                self.res.merged.append((mailbox, plan.renumbered, info.uidvalidity, plan.archive_uidvalidity))
            if complete:
                # the folder mirrors the archive when it was created or continued from it
                # (or was a mirror of it already) and every message kept its UID: only
                # then may a later link of the chain expunge
                whole = (plan.mode in ("exact", "chain") or plan.again) and not plan.renumbered
                mirror = whole and not plan.failed
                # messages it could not write (links a stream could not resolve, messages
                # the store refused) left their archived UIDs free: the same command run
                # again puts them there (Planner.plan, Applier.fills)
                done = (plan.user, plan.folder, info.uidvalidity, info.uidnext, self.header, mirror,
                        len(plan.by_uid), plan.failed if whole else 0)
                # recorded after a sync covers its files; its restore lock held till then
                lock, self.restore_lock = self.restore_lock, contextlib.ExitStack()
                self.done_keys.update({(plan.user, plan.folder), (plan.user, plan.src_folder)})
                self._journal(mailbox, functools.partial(self.journal.put, *done), lock,
                              (plan.user, plan.folder, plan.mark) if plan.mark else None)
            plugins.mailbox_done(self.run, mailbox, {"status": "ok" if complete else "error",
                                                     "messages": plan.restored, "bytes": 0, "error": None})
        except (StoreError, JournalError, OSError) as exc:
            # recorded, never raised: this runs while the restore is winding up
            if isinstance(exc, OSError):
                exc = os_store_error(exc, f"{plan.user}/{plan.folder}")
            self._record_error(mailbox, str(exc), exc.status)
        finally:
            self._release_restore_lock()        # (a complete folder's: once it is recorded)
