"""The restore engine's main loop: archive members in, folders planned
(:mod:`asm.restore.plan`) and written (:mod:`asm.restore.apply`), errors named per
mailbox, deliveries held and released, the journal kept."""
from __future__ import annotations

import contextlib
import errno
import time

from asm import plugins
from asm.archive.errors import CorruptMember, DigestMismatch, HostileMember, IncompleteArchive
from asm.errors import EXIT_OK, EXIT_PARTIAL
from asm.events import Run
from asm.groups import Groups
from asm.restore.apply import Applier
from asm.restore.errors import ArchiveReadFailed, ChainOrderError, StopRestore
from asm.restore.journal import Journal
from asm.restore.options import RestoreOptions, RestoreResult
from asm.restore.plan import FolderPlan, Planner
from asm.restore.reffile import write_reffile
from asm.restore.selection import Selection
from asm.store.base import Store, StoreError, StoreFull


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
        self.res = RestoreResult()
        self.run = Run("restore", device, [str(p) for p in selection.paths], {
            "ignore_duplicates": opts.ignore_duplicates, "new_mailbox": opts.new_mailbox})
        self.planner = Planner(store, journal, self.header, opts)
        self.applier = Applier(store, reader, opts, self.res, bool(selection.paths), self.report)
        self.held: list[str] = []
        self.users_seen: set = set()
        self.plan: FolderPlan | None = None
        self.lock_stack = contextlib.ExitStack()
        self.user_groups: dict[tuple, str | None] = {}

    # -- errors ---------------------------------------------------------------
    def _error(self, mailbox: str, exc: Exception | str) -> None:
        msg = str(exc)
        self.res.errors.append({"mailbox": mailbox, "error": msg})
        self.report(f"error: {mailbox}: {msg}")
        go_on = self.opts.ask(f"{mailbox}: {msg}") if self.opts.ask else self.opts.continue_on_error
        if not go_on:
            raise StopRestore(msg)

    # -- main loop --------------------------------------------------------------
    def restore(self) -> RestoreResult:
        t0 = time.monotonic()
        self.store.deferred_sync = True      # one sync() at the end instead of an fsync per file
        plugins.run_start(self.run)
        status = EXIT_PARTIAL
        try:
            stopped = False
            try:
                for m in self.reader.members(on_error=self._member_error):
                    self._member(m)
            except IncompleteArchive as exc:
                self.res.incomplete = str(exc)
            except StopRestore:
                stopped = True
            # a folder cut short keeps its UIDNEXT and journal as they were, so the same
            # command run again finishes it with the archived UIDs
            self._end_folder(complete=self.res.incomplete is None and not stopped)
            status = EXIT_PARTIAL if self.res.errors or self.res.incomplete or self.res.pending else EXIT_OK
        finally:
            self._end_folder(complete=False)
            self.lock_stack.close()
            for user in ([] if self.opts.keep_held else self.held):
                try:
                    self.store.release_deliveries(user)
                except StoreError as exc:
                    self.res.errors.append({"mailbox": user, "error": f"releasing held deliveries: {exc}"})
            self.applier.close()
            self.res.unmatched = self.sel.unmatched()
            self.res.near_misses = {p: self.sel.near_misses(p) for p in self.res.unmatched}
            self.res.seconds = time.monotonic() - t0
            self.run.counts = {"users": self.res.users, "folders": self.res.folders,
                               "messages": self.res.messages, "links": self.res.links,
                               "bytes": self.res.bytes}
            self.run.errors = [(e["mailbox"], e["error"]) for e in self.res.errors]
            plugins.run_end(self.run, status)
        if self.res.pending and self.opts.reffile:
            write_reffile(self.opts.reffile, self.header, self.res.pending)
        self.store.sync()
        self.store.deferred_sync = False
        return self.res

    def _member_error(self, exc: Exception) -> None:
        if isinstance(exc, HostileMember):
            self.res.hostile += 1
        self._error(getattr(exc, "name", None) or "archive", exc)

    def _member(self, m) -> None:
        if m.kind == "user":
            self.user_groups[(m.partition, m.user)] = m.group
            return
        if m.kind == "folder":
            self._end_folder(complete=True)
            self._start_folder(m)
            return
        plan = self.plan
        selected = plan is not None and plan.src_user == m.user and plan.src_folder == m.folder
        if not selected:
            self.applier.maybe_spool(m)
            return
        try:
            self.applier.restore_message(plan, m)
        except ArchiveReadFailed as exc:
            raise exc.error from None            # the device failed: the CLI says so
        except OSError as exc:                   # not the archive's (see _Source): the store's
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                plan.failed += 1
                self._error(f"/{m.partition}/{plan.user}/{plan.folder}/{m.uid}", f"cannot write: {exc}")
                return
            plan.failed += 1
            self._store_full(f"/{m.partition}/{plan.user}/{plan.folder}",
                             StoreFull(f"{plan.user}/{plan.folder}", exc.strerror))
        except StoreFull as exc:
            plan.failed += 1
            self._store_full(f"/{m.partition}/{plan.user}/{plan.folder}", exc)
        except (DigestMismatch, CorruptMember) as exc:
            plan.failed += 1
            self._error(f"/{m.partition}/{m.user}/{m.folder}/{m.uid}", exc)
        except StoreError as exc:
            plan.failed += 1
            self._error(f"/{m.partition}/{plan.user}/{plan.folder}/{m.uid}", exc)
        if self.progress:
            self.progress(self.res)

    # -- folders --------------------------------------------------------------
    def _start_folder(self, m) -> None:
        group = self.user_groups.get((m.partition, m.user), m.group)
        if not self.sel.folder(m.partition, m.user, group, m.folder):
            self.plan = None
            return
        user = self.opts.user_map.get(m.user, m.user)
        mailbox = f"/{m.partition}/{user}/{m.folder}"
        try:
            self._ensure_user(m.partition, user)
            plan = self.plan = self.planner.plan(m, user, self.lock_stack)
            self.res.folders += 1
            self.report(f"{plan.mailbox}: restoring ({plan.mode}"
                        + (f", from {m.user}/{m.folder}" if (user, plan.folder) != (m.user, m.folder) else "")
                        + ")")
        except ChainOrderError as exc:
            # this folder is left exactly as it was; the others go on
            self.plan = None
            self.res.out_of_order.append(mailbox)
            self._release_lock()
            self._error(mailbox, exc)
        except StoreFull as exc:
            self.plan = None
            self._release_lock()
            self._store_full(mailbox, exc)
        except (StoreError, CorruptMember) as exc:
            self.plan = None
            self._release_lock()
            self._error(mailbox, exc)

    def _store_full(self, mailbox: str, exc: StoreFull) -> None:
        """The store's disk is full: nothing more can be written, so the run stops."""
        self.res.store_full = str(exc)
        self.res.errors.append({"mailbox": mailbox, "error": str(exc)})
        raise StopRestore(str(exc)) from None

    def _release_lock(self) -> None:
        self.lock_stack.close()
        self.lock_stack = contextlib.ExitStack()

    def _ensure_user(self, partition: str, user: str) -> None:
        if not self.store.exists(user):
            part = partition if partition in self.store.partitions() else "primary"
            self.store.create_user(user, part)
        if user not in self.users_seen:
            self.users_seen.add(user)
            self.res.users += 1
        if user not in self.held:
            if not self.store.deliveries_held(user):
                self.store.hold_deliveries(user)
            self.held.append(user)

    def _end_folder(self, complete: bool) -> None:
        plan = self.plan
        if plan is None:
            return
        self.plan = None
        store = self.store
        mailbox = plan.mailbox
        try:
            if complete:
                if plan.mode == "chain":
                    keep = set(plan.archive_uids)
                    gone = [u for u in plan.by_uid if u not in keep]
                    # messages restored in this run are in the archive's list by construction
                    self.res.expunged += store.expunge(plan.user, plan.folder, gone)
                    for uid, (flags, keywords) in plan.state.items():
                        if uid in plan.by_uid and uid in keep:
                            store.set_flags(plan.user, plan.folder, uid, flags, keywords)
                info = store.folder(plan.user, plan.folder)
                if plan.uidvalidity == plan.archive_uidvalidity and info.uidnext < plan.archive_uidnext:
                    # never lower UIDNEXT: clients must not see a UID twice
                    info = store.set_folder(plan.user, plan.folder, uidnext=plan.archive_uidnext)
                # the folder mirrors the archive when it was created or continued from it
                # and every message kept its UID: only then may a later link expunge
                mirror = plan.mode in ("exact", "chain") and not plan.renumbered and not plan.failed
                self.journal.put(plan.user, plan.folder, info.uidvalidity, info.uidnext, self.header, mirror)
            plugins.mailbox_done(self.run, mailbox, {"status": "ok" if complete else "error",
                                                     "messages": plan.restored, "bytes": 0, "error": None})
        except StoreError as exc:
            # recorded, never raised: this runs while the restore is winding up
            self.res.errors.append({"mailbox": mailbox, "error": str(exc)})
            self.report(f"error: {mailbox}: {exc}")
        finally:
            self.lock_stack.close()
            self.lock_stack = contextlib.ExitStack()
