"""The restore engine: archive reader -> planner (UIDs, duplicates, chains, links) -> store.

Rules (docs/operations.md explains them for administrators):

* Folder absent: created with the archive's UIDVALIDITY; messages keep their UIDs,
  flags, keywords and dates; UIDNEXT is set to the archive's at the end of the folder
  (not before, so a killed restore run again still keeps the UIDs).
* Folder present: its lock is held while the folder is restored and the user's
  deliveries are held for the whole run.  Messages already there (same bytes) are
  skipped; the others keep their archived UID when the folder has the archive's
  UIDVALIDITY and the UID is at or above its UIDNEXT, else take new UIDs.
* Chain: a journal records, per folder, the archive last restored into it and the
  UIDNEXT it left.  When the folder is unchanged since (same UIDVALIDITY and UIDNEXT)
  a newer archive continues the chain: messages not in its UID list are expunged and
  flags are set as recorded, so full + incrementals give the state of the last one.
  An older archive, or an incremental whose listed-but-not-carried messages are not in
  the folder (a missing link), is refused for that folder (:class:`ChainOrderError`),
  which is left as it was while the other folders go on.
* Single copy: a link member becomes a hard link to the restored first copy.  When
  the first copy is outside the selection, a seekable archive is read there; a stream
  keeps first copies that may be needed in a bounded spool; what still cannot be had
  goes to a reference file that ``imsrestore -r`` completes.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field

from asm import plugins
from asm.archive import names
from asm.archive.errors import ArchiveError, CorruptMember, DigestMismatch, HostileMember, IncompleteArchive
from asm.errors import EXIT_OK, EXIT_ORDER, EXIT_PARTIAL, EXIT_USAGE, ImsError
from asm.events import Run
from asm.groups import Groups
from asm.logical import LogicalPath
from asm.store.base import Store, StoreError, StoreFull, UidInUse

CHUNK = 1 << 20


class RestoreError(ImsError):
    """A restore that cannot start (bad map file, bad reference file)."""

    status = EXIT_USAGE


class ChainOrderError(RestoreError):
    """Archives of an incremental chain applied out of order."""

    status = EXIT_ORDER


class StopRestore(Exception):
    """-c n: stop at the first error."""


class ArchiveReadFailed(Exception):
    """Reading the archive failed while a message was being stored (carries the OSError,
    so a device failure is never reported as a store failure)."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


class _Source:
    """A member's byte stream handed to the store: read errors are the archive's."""

    def __init__(self, f):
        self.f = f

    def read(self, n=-1):
        try:
            return self.f.read(n)
        except OSError as exc:
            raise ArchiveReadFailed(exc) from exc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@dataclass
class RestoreOptions:
    ignore_duplicates: bool = False     # -i: no duplicate check (classic behaviour)
    new_mailbox: bool = False           # -n: restore beside an existing folder
    continue_on_error: bool = True      # -c y|n
    ask: object = None                  # ask(message) -> bool: the classic prompt on a terminal
    user_map: dict = field(default_factory=dict)   # -m: old -> new
    reffile: str | None = None          # where unresolved links are written
    spool_limit: int = 1 << 30          # bytes of first copies kept from a stream
    verbose: bool = False
    new_suffix: str = ""                # -n suffix (default: -YYYYMMDD)
    keep_held: bool = False             # leave deliveries held at the end (more of a chain follows)
    spool_dir: str = ""                 # where first copies from a stream are kept


@dataclass
class RestoreResult:
    users: int = 0
    folders: int = 0
    messages: int = 0        # restored with their bytes
    links: int = 0           # restored as hard links (single copy)
    duplicates: int = 0      # already there, skipped
    renumbered: int = 0      # given new UIDs
    expunged: int = 0        # chain: removed because the later archive no longer had them
    bytes: int = 0
    errors: list = field(default_factory=list)       # {"mailbox", "error"}
    pending: list = field(default_factory=list)      # reference-file entries
    incomplete: str | None = None                    # why the archive ended early
    hostile: int = 0                                 # members refused as hostile (exit 5)
    corrupt: int = 0                                 # members damaged: digest, checksum, records (exit 4)
    store_full: str | None = None                    # the store filled up: the run stopped
    unmatched: list = field(default_factory=list)    # selection paths that matched nothing
    near_misses: dict = field(default_factory=dict)  # unmatched path -> folders differing in case
    out_of_order: list = field(default_factory=list)  # folders refused: chain applied out of order
    seconds: float = 0.0


# ----------------------------------------------------------------------------------
# selection and mapping

def read_map(path: str) -> dict:
    out = {}
    try:
        f = open(path, encoding="utf-8", errors="surrogateescape")   # names: any bytes
    except OSError as exc:
        raise RestoreError(f"cannot read map file {path!r}: {exc.strerror}") from None
    with f:
        try:
            for lineno, line in enumerate(f, 1):
                s = line.strip()
                if not s or s.startswith("#"):
                    continue
                old, eq, new = s.partition("=")
                if not eq or not old.strip() or not new.strip():
                    raise RestoreError(f"{path}:{lineno}: expected 'olduser=newuser', found {s[:80]!r}")
                out[old.strip()] = new.strip()
        except UnicodeDecodeError:
            raise RestoreError(f"cannot read map file {path!r}: it is not UTF-8 text") from None
    return out


class Selection:
    """Which archived folders the paths select.  Folder names are matched exactly on
    restore (INBOX in any case): a stream cannot know beforehand whether an exact
    match is still to come.  A folder that differs only in case is remembered, so an
    unmatched path can name what the archive has."""

    def __init__(self, paths: list[LogicalPath], groups: Groups):
        self.paths = paths
        self.groups = groups
        self.hits = [0] * len(paths)
        self.near: list[set] = [set() for _ in paths]

    def _user_ok(self, lp: LogicalPath, partition: str, user: str, group: str | None) -> bool:
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
        for i, lp in enumerate(self.paths):
            if not self._user_ok(lp, partition, user, group):
                continue
            if lp.covers_folder(folder):
                self.hits[i] += 1
                hit = True
            elif lp.folder is not None:
                depth = lp.folder.count("/") + 1
                prefix = "/".join(folder.split("/")[:depth])
                if prefix.casefold() == lp.folder.casefold():
                    self.near[i].add(f"/{partition}/{user}/{prefix}")
        return hit

    def unmatched(self) -> list[str]:
        return [str(lp) for lp, n in zip(self.paths, self.hits) if n == 0]

    def near_misses(self, path: str) -> list[str]:
        """Archived folders that ``path`` (an unmatched one) names but for case."""
        return sorted(set().union(*[self.near[i] for i, lp in enumerate(self.paths) if str(lp) == path]))


# ----------------------------------------------------------------------------------
# the chain journal

class Journal:
    """$IMS_HOME/data/restore-journal.db: the archive last restored into each folder,
    and whether the folder then held exactly that archive's state (``mirror``): only
    such a folder can continue a chain, since continuing one expunges what the next
    archive does not list."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("""CREATE TABLE IF NOT EXISTS restored (
            user TEXT, folder TEXT, uidvalidity INTEGER, uidnext INTEGER,
            archive_id TEXT, created REAL, since REAL, mirror INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (user, folder))""")

    # names are keys as names.to_db keeps them: any name the filesystem allows, losslessly

    def get(self, user: str, folder: str):
        """(uidvalidity, uidnext, archive_id, created, since, mirror) or None."""
        return self.db.execute("SELECT uidvalidity, uidnext, archive_id, created, since, mirror "
                               "FROM restored WHERE user=? AND folder=?",
                               (names.to_db(user), names.to_db(folder))).fetchone()

    def put(self, user: str, folder: str, uidvalidity: int, uidnext: int, header: dict,
            mirror: bool) -> None:
        self.db.execute("INSERT OR REPLACE INTO restored VALUES (?,?,?,?,?,?,?,?)",
                        (names.to_db(user), names.to_db(folder), uidvalidity, uidnext,
                         header.get("archive_id"), header.get("created"), header.get("since"),
                         int(mirror)))


def _fmt(t: float | None) -> str:
    return time.strftime("%Y%m%d:%H%M%S", time.localtime(t)) if t else "?"


# ----------------------------------------------------------------------------------
# the per-folder plan

@dataclass
class FolderPlan:
    partition: str
    src_user: str
    user: str
    folder: str                 # target folder name
    src_folder: str
    mode: str                   # "exact" (created by us), "merge", "chain"
    archive_uidvalidity: int
    archive_uidnext: int
    archive_uids: object        # UidSet: every UID the archived folder held
    uidvalidity: int            # of the target
    state: object               # FolderState: flags of the messages not carried (incremental)
    existing: dict = field(default_factory=dict)     # size -> [MessageInfo]
    by_uid: dict = field(default_factory=dict)       # uid -> MessageInfo (existing)
    digests: dict = field(default_factory=dict)      # path -> sha256 (cache)
    restored: int = 0
    uidnext: int = 1            # the target's UIDNEXT as this run moves it
    renumbered: int = 0         # messages that took a new UID here
    failed: int = 0             # messages that could not be restored here


def _sha256_file(path: str) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while True:
                b = f.read(CHUNK)
                if not b:
                    return h.hexdigest()
                h.update(b)
    except FileNotFoundError:
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
        self.res = RestoreResult()
        self.run = Run("restore", device, [str(p) for p in selection.paths], {
            "ignore_duplicates": opts.ignore_duplicates, "new_mailbox": opts.new_mailbox})
        self.held: list[str] = []
        self.users_seen: set = set()
        self.plan: FolderPlan | None = None
        self.lock_stack = contextlib.ExitStack()
        self.placed: dict[str, str] = {}        # archive member name -> restored file path
        self.spool_dir: str | None = None
        self.spooled: dict[str, str] = {}       # member name -> spool file
        self.spool_bytes = 0
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
            if self.spool_dir:
                shutil.rmtree(self.spool_dir, ignore_errors=True)
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
        elif isinstance(exc, CorruptMember):
            self.res.corrupt += 1
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
            self._maybe_spool(m)
            return
        try:
            self._restore_message(plan, m)
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
            self.res.corrupt += 1
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
            self.plan = self._plan_folder(m, user)
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
        except StoreError as exc:
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

    def _plan_folder(self, m, user: str) -> FolderPlan:
        store = self.store
        self._ensure_user(m.partition, user)
        folder = m.folder
        if store.exists(user, folder) and self.opts.new_mailbox:
            existing = store.messages(user, folder)
            if existing or folder != "INBOX":
                folder = self._new_name(user, folder)
        created = False
        if not store.exists(user, folder):
            # UIDNEXT is raised to the archive's only when the folder is complete, so a
            # killed run, run again, still finds every remaining UID free
            store.create_folder(user, folder, uidvalidity=m.uidvalidity, uidnext=1,
                                subscribed=m.subscribed)
            created = True
        self.lock_stack.enter_context(store.lock(user, folder))
        info = store.folder(user, folder)
        if not created and info.uidnext == 1 and not store.messages(user, folder):
            # never used (e.g. the INBOX of a user just created): adopt the archive's identity
            info = store.set_folder(user, folder, uidvalidity=m.uidvalidity, subscribed=m.subscribed)
            created = True
        j = None
        if created:
            mode = "exact"
        else:
            mode = "merge"
            j = self.journal.get(user, folder)
            if j is not None and j[5] and j[0] == info.uidvalidity == m.uidvalidity and j[1] == info.uidnext:
                mode = self._chain_mode(user, folder, j)
        plan = FolderPlan(m.partition, m.user, user, folder, m.folder, mode, m.uidvalidity, m.uidnext,
                          m.uids, info.uidvalidity, m.state, uidnext=info.uidnext)
        if mode != "exact":
            for msg in store.messages(user, folder):
                plan.by_uid[msg.uid] = msg
                plan.existing.setdefault(msg.size, []).append(msg)
        if mode == "chain":
            self._check_gap(plan, j[3])
        self.res.folders += 1
        self.report(f"/{m.partition}/{user}/{folder}: restoring ({mode}"
                    + (f", from {m.user}/{m.folder}" if (user, folder) != (m.user, m.folder) else "") + ")")
        return plan

    def _chain_mode(self, user: str, folder: str, j) -> str:
        last_id, last_created = j[2], j[3]
        created = self.header.get("created")
        if last_id == self.header.get("archive_id"):
            return "merge"  # the same archive again: nothing changes
        if created is not None and last_created is not None and created < last_created:
            raise ChainOrderError(
                f"this archive was taken at {_fmt(created)}, before the one restored last into "
                f"user/{user}/{folder} ({_fmt(last_created)}); restore a chain in order: the full "
                f"backup, then each incremental (or use -n to restore it beside the folder)")
        return "chain"

    def _check_gap(self, plan: "FolderPlan", last_created) -> None:
        """An incremental lists (in its state record) the messages it does not carry;
        each of them must already be here, else an archive in between is missing."""
        # bounded by the folder here, however many UIDs the archive's record spans
        missing = len(plan.state) - plan.state.count_in(plan.by_uid)
        if missing:
            raise ChainOrderError(
                f"user/{plan.user}/{plan.folder}: {missing} messages of this incremental's "
                f"folder (UIDs {plan.state.first_not_in(plan.by_uid)}...) are neither here nor in it: "
                f"the archive restored last "
                f"was taken at {_fmt(last_created)}; restore the incremental(s) taken in between first")

    def _new_name(self, user: str, folder: str) -> str:
        suffix = self.opts.new_suffix or time.strftime("%Y%m%d")
        base = f"{folder}-{suffix}"
        name, n = base, 1
        while self.store.exists(user, name):
            n += 1
            name = f"{base}-{n}"
        return name

    def _end_folder(self, complete: bool) -> None:
        plan = self.plan
        if plan is None:
            return
        self.plan = None
        store = self.store
        mailbox = f"/{plan.partition}/{plan.user}/{plan.folder}"
        try:
            if complete:
                if plan.mode == "chain":
                    keep = plan.archive_uids
                    gone = [u for u in plan.by_uid if u not in keep]
                    # messages restored in this run are in the archive's list by construction
                    self.res.expunged += store.expunge(plan.user, plan.folder, gone)
                    for uid in plan.by_uid:
                        st = plan.state.get(uid) if uid in keep else None
                        if st is not None:
                            store.set_flags(plan.user, plan.folder, uid, st[0], st[1])
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

    # -- messages -------------------------------------------------------------
    def _same_bytes(self, plan: FolderPlan, c, sha256: str) -> bool:
        d = plan.digests.get(c.path)
        if d is None:
            d = plan.digests[c.path] = _sha256_file(c.path)
        return d == sha256

    def _duplicate(self, plan: FolderPlan, m) -> object | None:
        """The existing message this archived one already is, or None.

        In the same UIDVALIDITY the UID is the identity: a message at the archived UID
        with the same bytes is it; an archived UID at or above UIDNEXT is new (the next
        link of a chain, or the rest of an interrupted restore) even when another
        message has the same bytes.  Otherwise any message with the same bytes is it."""
        if self.opts.ignore_duplicates or plan.mode == "exact":
            return None
        if plan.uidvalidity == plan.archive_uidvalidity:
            same_uid = plan.by_uid.get(m.uid)
            if same_uid is not None and same_uid.size == m.size and self._same_bytes(plan, same_uid, m.sha256):
                return same_uid
            if same_uid is None and m.uid >= plan.uidnext:
                return None
        for c in plan.existing.get(m.size, []):
            if self._same_bytes(plan, c, m.sha256):
                return c
        return None

    def _target_uid(self, plan: FolderPlan, m) -> int | None:
        if plan.mode == "exact":
            return m.uid
        if plan.uidvalidity == plan.archive_uidvalidity and m.uid >= plan.uidnext:
            return m.uid
        return None

    def _restore_message(self, plan: FolderPlan, m) -> None:
        store = self.store
        dup = self._duplicate(plan, m)
        if dup is not None:
            self.res.duplicates += 1
            self._place(m, dup.path)
            if plan.mode == "chain" and dup.uid == m.uid:
                store.set_flags(plan.user, plan.folder, dup.uid, m.flags, m.keywords)
            return
        uid = self._target_uid(plan, m)
        try:
            info = self._append(plan, m, uid)
        except UidInUse:           # someone took it meanwhile: a new UID instead
            uid = None
            info = self._append(plan, m, None)
        if info is None:
            return
        self._place(m, info.path)
        if uid is None:
            self.res.renumbered += 1
            plan.renumbered += 1
        plan.restored += 1
        plan.by_uid.setdefault(info.uid, info)
        plan.uidnext = max(plan.uidnext, info.uid + 1)

    def _append(self, plan: FolderPlan, m, uid: int | None):
        """Store one message (as a hard link to its first copy when that is here);
        None when its bytes are not available from this stream (recorded as pending)."""
        store = self.store
        kwargs = dict(uid=uid, flags=m.flags, keywords=m.keywords, internaldate=m.internaldate,
                      stored=m.stored)
        link_from = self.placed.get(m.linkname if m.kind == "link" else m.name)
        if link_from is not None and os.path.exists(link_from):
            info = store.append(plan.user, plan.folder, None, link_from=link_from, **kwargs)
            self.res.links += 1
            return info
        src = m.open() if m.kind == "message" else self._link_source(m)
        if src is None:
            self._pending(plan, m, uid)
            return None
        with _Source(src) as source:
            info = store.append(plan.user, plan.folder, source, **kwargs)
        self.res.messages += 1
        self.res.bytes += info.size
        return info

    def _place(self, m, path: str) -> None:
        """Remember where a first copy landed, for the links that follow.  Only files
        that had other links at backup time can be link targets: memory stays small."""
        if m.kind == "link":
            self.placed.setdefault(m.linkname, path)
        elif m.nlink > 1:
            self.placed.setdefault(m.name, path)

    def _link_source(self, m):
        """The bytes of a link whose first copy was not restored in this run."""
        spooled = self.spooled.get(m.linkname)
        if spooled is not None:
            return open(spooled, "rb")
        if self.reader.seekable:
            return self.reader.read_member_at(m)
        return None

    def _pending(self, plan: FolderPlan, m, uid) -> None:
        plan.failed += 1
        self.res.pending.append({
            "member": m.name, "target": m.linkname, "sha256": m.sha256, "size": m.size,
            "partition": plan.partition, "user": plan.user, "folder": plan.folder, "uid": m.uid,
            "uidvalidity": plan.uidvalidity, "flags": sorted(m.flags), "keywords": list(m.keywords),
            "internaldate": m.internaldate, "stored": m.stored})
        self.report(f"/{plan.partition}/{plan.user}/{plan.folder}/{m.uid}: first copy {m.linkname} is "
                    f"not available from this stream; recorded for imsrestore -r")

    def _maybe_spool(self, m) -> None:
        """On a stream, keep the bytes of an unselected first copy that a selected link
        may still need (nlink > 1), within the spool limit."""
        if m.kind != "message" or m.nlink < 2 or self.reader.seekable or not self.sel.paths:
            return
        if self.spool_bytes + m.size > self.opts.spool_limit:
            return
        if self.spool_dir is None:
            base = self.opts.spool_dir or tempfile.gettempdir()
            os.makedirs(base, exist_ok=True)
            self.spool_dir = tempfile.mkdtemp(prefix="restore-", dir=base)
        path = os.path.join(self.spool_dir, f"{len(self.spooled)}.msg")
        out = None
        try:
            with m.open() as src:
                out = open(path, "wb")
                while True:
                    chunk = src.read(CHUNK)     # an archive read error propagates
                    if not chunk:
                        break
                    try:
                        out.write(chunk)
                    except OSError:             # spool full: go on without this copy
                        out.close()
                        out = None
                        os.unlink(path)
                        self.opts.spool_limit = self.spool_bytes
                        return
        except DigestMismatch:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        finally:
            if out is not None:
                out.close()
        self.spooled[m.name] = path
        self.spool_bytes += m.size


# ----------------------------------------------------------------------------------
# reference files (-r)

def default_reffile(home: str, header: dict) -> str:
    """$IMS_HOME/data/refs/<archive id>.ref: the archive id is a UUID (the reader checks
    every header field before anything uses it), so this path stays in data/refs."""
    return os.path.join(home, "data", "refs", f"{header['archive_id']}.ref")


def write_reffile(path: str, header: dict, pending: list) -> None:
    """Only a restore that has pending links writes one (and makes its directory)."""
    from asm.config import atomic_write
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    doc = {"format": "ims-asm-references", "version": 1, "archive_id": header.get("archive_id"),
           "created": header.get("created"), "references": pending}
    atomic_write(path, names.dump_json(doc, indent=1), mode=0o600)


def read_reffile(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise RestoreError(f"cannot read reference file {path!r}: {exc.strerror}") from None
    except ValueError:
        raise RestoreError(f"{path!r} is not an imsrestore reference file (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != "ims-asm-references":
        raise RestoreError(f"{path!r} is not an imsrestore reference file")
    refs = doc.get("references")
    keys = {"member": str, "target": str, "partition": str, "user": str, "folder": str, "uid": int,
            "flags": list, "keywords": list}
    if not isinstance(refs, list) or not all(
            isinstance(r, dict) and all(isinstance(r.get(k), t) for k, t in keys.items()) for r in refs):
        raise RestoreError(f"{path!r} is a damaged reference file (its references are not as imsrestore "
                           "writes them): run the restore that wrote it again")
    return doc


def complete_references(store: Store, reader, doc: dict, report=None) -> RestoreResult:
    """Second pass: restore the link members a stream could not resolve, from the archive."""
    report = report or (lambda line: None)
    res = RestoreResult()
    if doc.get("archive_id") != reader.header.get("archive_id"):
        raise RestoreError("the reference file was written for another archive "
                           f"(archive {doc.get('archive_id')}, this is {reader.header.get('archive_id')})")
    wanted: dict[str, list] = {}
    for ref in doc["references"]:
        wanted.setdefault(ref["target"], []).append(ref)

    def on_error(e: Exception) -> None:
        if isinstance(e, HostileMember):
            res.hostile += 1
        elif isinstance(e, CorruptMember):
            res.corrupt += 1
        res.errors.append({"mailbox": "archive", "error": str(e)})

    try:
        for m in reader.members(on_error=on_error):
            refs = wanted.pop(m.name, None) if m.kind == "message" else None
            if not refs:
                continue
            first_path = None
            for ref in refs:
                user, folder = ref["user"], ref["folder"]
                try:
                    if not store.exists(user, folder):
                        store.create_folder(user, folder, uidvalidity=ref.get("uidvalidity"))
                    with store.lock(user, folder):
                        info = store.folder(user, folder)
                        uid = ref["uid"] if info.uidvalidity == ref.get("uidvalidity") and ref["uid"] >= info.uidnext else None
                        kw = dict(uid=uid, flags=ref["flags"], keywords=ref["keywords"],
                                  internaldate=ref["internaldate"], stored=ref["stored"])
                        if first_path:
                            got = store.append(user, folder, None, link_from=first_path, **kw)
                            res.links += 1
                        else:
                            with m.open() as src:
                                got = store.append(user, folder, src, **kw)
                            res.messages += 1
                            first_path = got.path
                    report(f"/{ref['partition']}/{user}/{folder}/{got.uid}: restored from {m.name}")
                except (StoreError, ArchiveError) as exc:
                    if isinstance(exc, DigestMismatch):
                        res.corrupt += 1
                    res.errors.append({"mailbox": f"/{ref['partition']}/{user}/{folder}", "error": str(exc)})
            if not wanted:
                break
    except IncompleteArchive as exc:
        res.incomplete = str(exc)
    for target, refs in wanted.items():
        for ref in refs:
            res.errors.append({"mailbox": f"/{ref['partition']}/{ref['user']}/{ref['folder']}",
                               "error": f"first copy {target} is not in this archive"})
    store.sync()
    return res
