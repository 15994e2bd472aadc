"""Reconstruct for the classic store: the mailbox list from the partitions (``-m``),
and each folder's index from its message files.

What each record is rebuilt from (docs/classic-store.md, "Reconstruct"):

* **users**: the user directories of every partition (``<h1>/<h2>/=<user>``);
* **folders**: the ``=`` directories of a user that hold an index or messages;
* **UIDVALIDITY**: the folder's own index (``meta.uidvalidity``), else the mailbox list,
  else the restore journal or an archive (the newest that knows the folder), else a
  new one (named: clients will download the folder again);
* **UIDs**: the message file names (``<hh>/<uid>.msg``): never lost;
* **flags, keywords, dates**: the index row, else an archive's record of the same UID
  with the same bytes (SHA-256), else no flags, INTERNALDATE = the file's mtime and
  stored date = its ctime (named);
* **UIDNEXT**: the highest of the index's, the journal's and the archives' (for the
  same UIDVALIDITY) and the highest UID + 1.

A healthy index or mailbox list is corrected in place, in one transaction; a missing
or damaged one is built beside it and renamed over it (a damaged one is kept as
``*.damaged-<time>``).  Each folder is worked on under its lock (``store.lck``).

What a kill cut short is finished as the store would (docs/classic-store.md,
"Reconstruct"): a deletion's ``remains``; the files of an expunge (``expunged``); a
folder a restore was making (``unplaced``, no index in place) is left to the restore;
a restore's mark in an index (``meta.restoring``) is kept.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import sqlite3
import time

from asm.config import Config
from asm.interrupts import interrupts_deferred
from asm.locks import flock_wait
from asm.reconstruct import LOST, NOTE, REPAIRED, UNKNOWN, Report
from asm.reconstruct import uid_list as _uids
from asm.digests import file_sha256_or_none as _sha256
from asm.reconstruct.knowledge import Knowledge
from asm.reconstruct.sqlite import read_only_uri
from asm.sqlitedb import disk_full
from asm.store.base import (
    BadName, LockTimeout, StoreError, StoreFull, _syncfs, check_folder_name, os_store_error,
)
from asm.store.classic import (
    _GUIDS, _NEW_INDEX, _SCHEMA, _dec, _enc, _full_why, _open_lock, _user_dir, _uidvalidity, aside_name,
    build_index, clear_remains, end_remains_dir, fsync_dir, holds_mail, place_index, scan_user_dirs,
)
from asm.store.partitions import PartitionUnavailable, check_partition_dir
from asm.trees import remove_tree

_HASHDIR = re.compile(r"[0-9a-f]{2,}\Z")
_MSGFILE = re.compile(r"([1-9][0-9]*)\.msg\Z")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _asides(d: str) -> list:
    """The names of the indexes being built aside in the folder directory ``d``."""
    try:
        return sorted(n for n in os.listdir(d) if n.startswith(_NEW_INDEX))
    except OSError:
        return []


def _holds_mail(d: str) -> bool:
    try:
        with os.scandir(d) as it:
            return any(e.name == "store.idx" or (_HASHDIR.match(e.name) and e.is_dir(follow_symlinks=False))
                       for e in it)
    except OSError:
        return False


class _Index:
    """What an existing store.idx still says (as much as can be read)."""

    def __init__(self, path: str):
        self.path = path
        self.exists = os.path.exists(path)
        self.healthy = False
        self.error: str | None = None
        self.meta: dict = {}
        self.rows: dict = {}             # uid -> (uid, flags, keywords, internaldate, stored, size)
        self.guids: dict = {}            # uid -> the store's GUID of the message (what can be read)
        self.expunged: set = set()       # UIDs an expunge removed, their files maybe not yet
        if not self.exists:
            return
        try:
            con = sqlite3.connect(read_only_uri(path), uri=True)
        except sqlite3.Error as exc:
            self.error = str(exc)
            return
        try:
            ok = con.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                self.error = f"damaged ({ok})"
            self.meta = dict(con.execute("SELECT k, v FROM meta").fetchall())
            cur = con.execute("SELECT uid, flags, keywords, internaldate, stored, size FROM msgs ORDER BY uid")
            while True:
                try:
                    row = cur.fetchone()
                except sqlite3.Error as exc:
                    self.error = self.error or f"damaged ({exc})"
                    break
                if row is None:
                    break
                self.rows[row[0]] = row
            try:
                self.guids = {u: g for u, g in con.execute("SELECT uid, guid FROM guids") if g}
            except sqlite3.Error:
                pass                     # an index from before GUIDs, or its table is damaged
            try:
                self.expunged = {r[0] for r in con.execute("SELECT uid FROM expunged")}
            except sqlite3.Error:
                pass                     # no expunge recorded in it (ClassicStore.expunge)
            self.healthy = self.error is None and "uidnext" in self.meta
            if self.error is None and not self.healthy:
                self.error = "it has no UIDNEXT"
        except sqlite3.Error as exc:
            self.error = f"damaged ({exc})"
        finally:
            con.close()


class _List:
    """The mailbox list being checked or rebuilt: the real one (changed in one
    transaction) or a new one built beside it (renamed over it at the end)."""

    def __init__(self, root: str, repair: bool, report: Report):
        self.dir = os.path.join(root, "mboxlist")
        self.path = os.path.join(self.dir, "mailboxes.db")
        self.repair = repair
        self.report = report
        self.new_path: str | None = None
        self.rebuilt = False              # the list was missing or damaged
        self.damaged = False
        self.salvaged = 0
        old_users: dict = {}
        old_folders: dict = {}
        old_marks: list = []             # (table, row) of unplaced and remains
        problem = None
        if os.path.exists(self.path):
            try:
                con = sqlite3.connect(self.path, isolation_level=None, timeout=30)
                ok = con.execute("PRAGMA quick_check").fetchone()[0]
                if ok != "ok":
                    problem = f"it is damaged ({ok})"
            except sqlite3.Error as exc:
                problem = f"it cannot be read ({exc})"
                con = None
            if problem is None:
                self.con = con
                self.con.execute("PRAGMA journal_mode=WAL")
                self.con.execute("BEGIN IMMEDIATE")
                return
            # salvage what can still be read (UIDVALIDITY, subscriptions), then rebuild
            if con is not None:
                with contextlib.suppress(sqlite3.Error):
                    for u, p, d, h in con.execute("SELECT user, partition, dir, held FROM users"):
                        old_users[u] = (p, d, h)
                with contextlib.suppress(sqlite3.Error):
                    for u, n, uv, s in con.execute("SELECT user, name, uidvalidity, subscribed FROM folders"):
                        old_folders[(u, n)] = (uv, s)
                for table in ("unplaced", "remains"):
                    with contextlib.suppress(sqlite3.Error):
                        old_marks += [(table, r) for r in con.execute(f"SELECT * FROM {table}")]
                con.close()
            self.salvaged = len(old_users) + len(old_folders)
            report.add(UNKNOWN if not self.salvaged else REPAIRED, self.path,
                       f"the mailbox list {problem}: " + ("rebuilt" if repair else "would be rebuilt (run without -n)")
                       + " from the partitions"
                       + (f" (kept {self.salvaged} rows that could still be read; the damaged file is "
                          f"kept as mailboxes.db.damaged-<time>)" if repair else ""))
        else:
            report.add(REPAIRED, self.path, "the mailbox list is missing: " + (
                "rebuilt from the partitions" if repair else "would be rebuilt from the partitions (run without -n)"))
        self.rebuilt = True
        self.damaged = problem is not None
        if repair:
            os.makedirs(self.dir, exist_ok=True)
        self.new_path = os.path.join(self.dir if repair else _tmpdir(), f"mailboxes.db.new-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.new_path)
        try:
            self.con = sqlite3.connect(self.new_path, isolation_level=None)
            self.con.executescript(_SCHEMA)
            self.con.execute("BEGIN")
            for u, (p, d, h) in old_users.items():
                self.con.execute("INSERT OR REPLACE INTO users VALUES (?,?,?,?)", (u, p, d, h))
            for (u, n), (uv, s) in old_folders.items():
                self.con.execute("INSERT OR REPLACE INTO folders VALUES (?,?,?,?)", (u, n, uv, s))
            for table, row in old_marks:
                with contextlib.suppress(sqlite3.Error):
                    self.con.execute(f"INSERT OR REPLACE INTO {table} VALUES ({','.join('?' * len(row))})", row)
        except BaseException:
            # (a SIGTERM here, or a full disk under the new list, before the caller has the
            # list to roll back: the list begun aside goes, as the roll-back removes it; it
            # was left, named by a pid no run has again)
            with contextlib.suppress(Exception):
                self.con.close()
            with contextlib.suppress(OSError):
                os.unlink(self.new_path)
            raise

    # reading
    def user(self, user: str):
        return self.con.execute("SELECT partition, dir, held FROM users WHERE user=?", (user,)).fetchone()

    def users(self) -> dict:
        return {u: (p, d, h) for u, p, d, h in self.con.execute("SELECT user, partition, dir, held FROM users")}

    def folders(self, user: str) -> dict:
        return {n: (uv, s) for n, uv, s in self.con.execute(
            "SELECT name, uidvalidity, subscribed FROM folders WHERE user=?", (user,))}

    # writing (inside the transaction)
    def put_user(self, user, partition, d, held=0) -> None:
        self.con.execute("INSERT OR REPLACE INTO users VALUES (?,?,?,?)", (user, partition, d, held))

    def unplaced(self, user: str) -> set:
        """The user's folders listed before their index was placed (a restore making them)."""
        return {r[0] for r in self.con.execute("SELECT name FROM unplaced WHERE user=?", (user,))}

    def remains(self, user: str) -> set:
        """The user's folders whose deletion began (unlisted, files maybe left)."""
        return {r[0] for r in self.con.execute("SELECT name FROM remains WHERE user=? AND substr(name, 1, 1)<>'/'",
                                               (user,))}

    def user_remains(self) -> dict:
        """(partition, directory) -> user, of each user whose deletion was cut short (a
        row named "/PARTITION/DIR": the store's delete_user)."""
        return {tuple(n[1:].split("/", 1)): u for u, n in self.con.execute(
            "SELECT user, name FROM remains WHERE substr(name, 1, 1)='/'")}

    def drop_user(self, user) -> None:
        for table in ("folders", "unplaced", "remains"):
            self.con.execute(f"DELETE FROM {table} WHERE user=?", (user,))
        self.con.execute("DELETE FROM users WHERE user=?", (user,))

    def put_folder(self, user, name, uidvalidity, subscribed) -> None:
        self.con.execute("INSERT OR REPLACE INTO folders VALUES (?,?,?,?)",
                         (user, name, uidvalidity, int(bool(subscribed))))

    def drop_folder(self, user, name) -> None:
        self.con.execute("DELETE FROM folders WHERE user=? AND name=?", (user, name))
        self.con.execute("DELETE FROM unplaced WHERE user=? AND name=?", (user, name))

    def put_unplaced(self, user, name) -> None:
        # (this process: gone when the store next locks the folder, which places its index)
        self.con.execute("INSERT OR REPLACE INTO unplaced VALUES (?,?,?)", (user, name, os.getpid()))

    def drop_remains(self, user, name) -> None:
        self.con.execute("DELETE FROM remains WHERE user=? AND name=?", (user, name))

    def finish(self, owner) -> None:
        """Commit (repair) or roll back (check); a rebuilt list replaces the old file."""
        if not self.repair:
            # (also what a failed run undoes: committed already and the rename failed, or a
            # COMMIT that failed on a full disk, rolled back by SQLite already: "cannot
            # rollback" hid the full disk as exit 70)
            with contextlib.suppress(sqlite3.Error):
                self.con.execute("ROLLBACK")
            self.con.close()
            if self.new_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.new_path)
            return
        self.con.execute("COMMIT")
        if self.new_path is None:
            self.con.close()
            return
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.close()                 # checkpoints: everything is in the main file
        fd = os.open(self.new_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if owner and os.geteuid() == 0:
            os.chown(self.new_path, *owner)
        if self.damaged and os.path.exists(self.path):
            os.rename(self.path, f"{self.path}.damaged-{_stamp()}")
        # a -wal or -shm without its database would be applied to the new one
        for ext in ("-wal", "-shm"):
            p = self.path + ext
            if os.path.exists(p):
                if self.damaged:
                    os.rename(p, f"{self.path}.damaged-{_stamp()}{ext}")
                else:
                    os.unlink(p)
        os.replace(self.new_path, self.path)
        fsync_dir(self.dir)


def _tmpdir() -> str:
    import tempfile
    return tempfile.gettempdir()


class ClassicReconstructor:
    """``-m`` (:meth:`mailbox_list`) and the folder indexes (:meth:`folder`)."""

    def __init__(self, config: Config, knowledge: Knowledge, report: Report, repair: bool = True):
        self.config = config
        self.k = knowledge
        self.report = report
        self.repair = repair
        self.parts = config.partitions()
        self.owner = config.owner()
        self.timeout = float(config.get_int("store.locktimeout"))
        self.list: _List | None = None
        self.marked: set = set()         # (user, folder) listed by a restore before their index was placed

    # -- helpers -------------------------------------------------------------------
    def _open_list(self) -> _List:
        if self.list is None:
            self.list = _List(self.config.store_root, self.repair, self.report)
        return self.list

    def _partition_path(self, part: str) -> str | None:
        path = self.parts.get(part)
        if path is None:
            return None
        there = check_partition_dir(part, path, self.config.partition_configured(part))
        return path if there else None

    def _chown(self, path: str) -> None:
        if self.owner and os.geteuid() == 0:
            with contextlib.suppress(OSError):
                os.chown(path, *self.owner)

    @staticmethod
    def folder_dir(user_dir: str, folder: str) -> str:
        if folder == "INBOX":
            return user_dir
        return os.path.join(user_dir, *("=" + _enc(level) for level in folder.split("/")))

    def mailbox(self, part: str, user: str, folder: str | None = None) -> str:
        return f"/{part}/{user}" + (f"/{folder}" if folder else "")

    # -- the mailbox list (-m) ---------------------------------------------------------
    def mailbox_list(self) -> None:
        lst = self._open_list()
        listed = lst.users()
        found: dict = {}                 # user -> (partition, rel)
        gone = lst.user_remains()        # (partition, rel) -> user: deletions cut short
        for part in self.parts:
            ppath = self._partition_path(part)
            on_part = [u for u, (p, _, _) in listed.items() if p == part]
            if ppath is None:
                if on_part:
                    raise PartitionUnavailable(
                        f"partition {part!r}: the mailbox list places {len(on_part)} users on it but its directory "
                        f"{self.parts[part]} does not exist: mount its disk (or check partition:{part}.path); "
                        f"nothing was changed")
                continue
            entries = list(scan_user_dirs(ppath))
            if on_part and not entries and not any(_HASHDIR.match(n) for n in os.listdir(ppath)):
                raise PartitionUnavailable(
                    f"partition {part!r}: the mailbox list places {len(on_part)} users on it but {ppath} "
                    f"holds none of their directories: is its disk mounted? (check partition:{part}.path); "
                    f"nothing was changed")
            for rel, user in entries:
                where = self.mailbox(part, user)
                if (part, rel) in gone and user not in listed:
                    # deleted (mboxutil -d), killed before its files were gone: never a
                    # user to list again (that brought the deleted mail back)
                    self.report.add(REPAIRED, where, f"its deletion was cut short: what was left of its files "
                                                     f"({os.path.join(ppath, rel)}) "
                                                     + ("removed" if self.repair else "to be removed (run without -n)"))
                    if self.repair:
                        remove_tree(os.path.join(ppath, rel))
                        if not os.path.lexists(os.path.join(ppath, rel)):
                            lst.drop_remains(gone.pop((part, rel)), f"/{part}/{rel}")
                    continue
                if user in found:
                    fp, frel = found[user]
                    self.report.add(UNKNOWN, where,
                                    f"a second directory for user {user!r} ({os.path.join(ppath, rel)}); the "
                                    f"user is on partition {fp!r} ({frel}): this one is not listed; move its "
                                    f"mail by hand (imsbackup of one, imsrestore into the other)")
                    continue
                try:
                    user.encode("utf-8")
                except UnicodeEncodeError:
                    self.report.add(UNKNOWN, where, "the user ID is not UTF-8 text: the classic store cannot "
                                                    "list it; rename its directory")
                    continue
                old = listed.get(user)
                if old is None and not holds_mail(os.path.join(ppath, rel)):
                    # as the store's writers count it (docs/classic-store.md): a directory
                    # without an index or a message file is no user, and listed it would be
                    # an INBOX without an index that every command calls damaged
                    self.report.add(NOTE, where, f"{os.path.join(ppath, rel)} holds no mail (no folder index, "
                                                 f"no message file): a leftover directory, not added to the "
                                                 f"mailbox list; remove it, or restore the user into it")
                    continue
                if old is not None and (old[0], old[1]) != (part, rel):
                    op = self.parts.get(old[0])
                    if op and os.path.isdir(os.path.join(op, old[1])):
                        found[user] = (old[0], old[1])
                        self.report.add(UNKNOWN, where,
                                        f"a second directory for user {user!r} ({os.path.join(ppath, rel)}); "
                                        f"the list places the user on {old[0]!r} ({old[1]}), which exists: "
                                        f"this one is not listed; move its mail by hand")
                        continue
                found[user] = (part, rel)
                if old is None:
                    if not lst.rebuilt:
                        self.report.add(REPAIRED, where, f"user directory not in the mailbox list "
                                                         f"({os.path.join(ppath, rel)}): added")
                    lst.put_user(user, part, rel, self._held(user))
                elif (old[0], old[1]) != (part, rel):
                    self.report.add(REPAIRED, where, f"the list placed the user at {old[0]}:{old[1]}, which is "
                                                     f"gone; the user's directory is {os.path.join(ppath, rel)}")
                    lst.put_user(user, part, rel, old[2])
                if rel != _user_dir(user):
                    self.report.add(NOTE, where, f"the user directory is {rel}, not {_user_dir(user)} where "
                                                 f"the classic store puts it; it is used where it is")
        if self.repair:
            for (part, rel), user in gone.items():
                ppath = self._partition_path(part) if part in self.parts else None
                if ppath is not None and not os.path.lexists(os.path.join(ppath, rel)):
                    lst.drop_remains(user, f"/{part}/{rel}")     # (its files were gone already)
        for user, (part, d, _) in listed.items():
            if user not in found:
                ppath = self.parts.get(part)
                self.report.add(LOST, self.mailbox(part, user),
                                f"the user's directory ({os.path.join(ppath or '?', d)}) is missing: removed "
                                f"from the mailbox list; restore the user from an archive")
                lst.drop_user(user)
        if lst.rebuilt:
            self.report.add(NOTE, lst.path, f"{len(found)} users found on the partitions")
        for user in sorted(found):
            self.user_folders(user)
        self.report.users += len(found)

    def _held(self, user: str) -> int:
        q = os.path.join(self.config.store_root, "queue", _user_dir(user))
        try:
            n = sum(1 for x in os.listdir(q) if x.endswith(".msg"))
        except OSError:
            n = 0
        if n:
            self.report.add(NOTE, f"user {user}", f"{n} deliveries are held in {q}: they are stored by the next "
                                                   f"imsrestore of the user (without -H)")
        return 1 if n else 0

    def user_dir(self, user: str) -> tuple[str, str] | None:
        """(partition, absolute user directory) from the list being rebuilt."""
        row = self._open_list().user(user)
        if row is None:
            return None
        ppath = self.parts.get(row[0])
        return (row[0], os.path.join(ppath, row[1])) if ppath else None

    def user_folders(self, user: str) -> list[str]:
        """Reconcile one user's folder rows with its directories; the folder names."""
        lst = self._open_list()
        where = self.user_dir(user)
        if where is None:
            return []
        part, udir = where
        listed = lst.folders(user)
        known = set(self.k.folder_names(user))   # an empty folder lost its index: a witness knows it
        marked = lst.unplaced(user)              # listed by a restore before their index was placed
        deleted = lst.remains(user) - set(listed)     # a deletion cut short: not listed again
        found = {"INBOX": udir}

        def walk(d: str, levels: list) -> None:
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError:
                return
            for e in entries:
                if not (e.name.startswith("=") and len(e.name) > 1 and e.is_dir(follow_symlinks=False)):
                    continue
                sub = levels + [_dec(e.name[1:])]
                name = "/".join(sub)
                # <user>/=INBOX holds INBOX's children (INBOX/sub is =INBOX/=sub), INBOX
                # itself is <user>: that directory is INBOX misplaced only if it holds mail
                children_of_inbox = not levels and e.name == "=INBOX"
                if name in deleted:
                    pass                # (its remains are finished below; its subfolders are folders)
                elif _holds_mail(e.path) or (not children_of_inbox and (name in listed or name in known)):
                    try:
                        norm = check_folder_name(name)
                        norm.encode("utf-8")
                    except (BadName, UnicodeEncodeError):
                        self.report.add(UNKNOWN, self.mailbox(part, user, name),
                                        f"{e.path} holds mail under a name the store cannot list; rename it")
                        norm = None
                    if norm is not None:
                        if self.folder_dir(udir, norm) != e.path:
                            self.report.add(UNKNOWN, self.mailbox(part, user, name),
                                            f"{e.path} holds mail but the folder {norm!r} would be "
                                            f"{self.folder_dir(udir, norm)}; rename the directory")
                        else:
                            found[norm] = e.path
                walk(e.path, sub)
        walk(udir, [])
        for name in sorted(lst.remains(user) & set(listed)):
            # listed again since its deletion began (by an older reconstruct): its files are
            # what is there now, and the record would have the store remove them
            self.report.add(NOTE, self.mailbox(part, user, name),
                            "its deletion had been cut short, but it is listed: kept, the record of its "
                            "deletion dropped")
            lst.drop_remains(user, name)
        for name in sorted(deleted):
            self._finish_deletion(part, user, name, self.folder_dir(udir, name))
        for name in sorted(listed):
            if name not in found and name in marked:
                # a restore listed it and was cut short before its directory was durable:
                # it reads as the empty folder it was made, and the store makes its
                # directory again (the same restore run again fills it)
                self.report.add(NOTE, self.mailbox(part, user, name),
                                f"its directory ({self.folder_dir(udir, name)}) is missing, but a restore was "
                                f"making the folder (listed before its index was placed): kept, read as empty "
                                f"until the same imsrestore run again fills it")
                continue
            if name not in found and not os.path.isdir(self.folder_dir(udir, name)):
                self.report.add(LOST, self.mailbox(part, user, name),
                                f"the folder's directory ({self.folder_dir(udir, name)}) is missing: removed "
                                f"from the mailbox list; restore the folder from an archive")
                lst.drop_folder(user, name)
            elif name not in found:
                found[name] = self.folder_dir(udir, name)   # listed, directory there, index gone
        unsubscribed_unknown = []
        for name, fdir in sorted(found.items()):
            idx = _Index(os.path.join(fdir, "store.idx"))
            own = idx.meta.get("uidvalidity")
            row = listed.get(name)
            being_made = not idx.exists and _asides(fdir)
            if being_made and row is None:
                # no index in place, one being built aside: a restore was making it (its
                # mark lost with the list); listed with the mark, it reads as the empty
                # folder it was made, never as damaged, and the restore run again fills it
                own = own or _Index(os.path.join(fdir, being_made[0])).meta.get("uidvalidity") or None
                lst.put_unplaced(user, name)
                self.report.add(NOTE, self.mailbox(part, user, name),
                                "a restore was making it (its index still aside, no index in place): listed with "
                                "that mark, read as empty until the same imsrestore run again fills it")
            where_m = self.mailbox(part, user, name)
            if row is not None:
                if own is not None and own != row[0]:
                    self.report.add(REPAIRED, where_m, f"UIDVALIDITY {row[0]} in the mailbox list, {own} in "
                                                       f"the folder's index: the index's is kept")
                    lst.put_folder(user, name, own, row[1])
                continue
            uv, why, subscribed = self._uidvalidity(user, name, own)
            if subscribed is None:
                subscribed = True
                if name != "INBOX":
                    unsubscribed_unknown.append(name)
            lst.put_folder(user, name, uv, subscribed)
            kind = UNKNOWN if why is None else REPAIRED
            lst_word = "not in the mailbox list" if not lst.rebuilt else "found"
            text = (f"{lst_word}: listed with UIDVALIDITY {uv} from {why}" if why else
                    f"{lst_word}: its UIDVALIDITY is known nowhere (no index, journal or archive has it): "
                    f"new UIDVALIDITY {uv}; clients will download the folder again")
            if not lst.rebuilt or kind != REPAIRED:
                self.report.add(kind, where_m, text + ("" if subscribed else ", unsubscribed"))
        if unsubscribed_unknown:
            shown = ", ".join(repr(n) for n in unsubscribed_unknown[:5]) + (", ..." if len(unsubscribed_unknown) > 5 else "")
            self.report.add(UNKNOWN, self.mailbox(part, user),
                            f"the subscription of {len(unsubscribed_unknown)} folders is known nowhere (no archive "
                            f"has it): subscribed, so clients show them ({shown})")
        return sorted(found, key=lambda n: (n != "INBOX", n))

    def _finish_deletion(self, part: str, user: str, name: str, fdir: str) -> None:
        """What a deletion cut short left of a folder no longer listed (``remains``):
        removed as the deletion would have (its subfolders kept), under its lock, then
        the record (with the list)."""
        where = self.mailbox(part, user, name)
        left = _holds_mail(fdir)
        self.report.add(REPAIRED if left else NOTE, where,
                        "its deletion was cut short: " + ("what was left of its files " if left else "its record ")
                        + ("removed" if self.repair else "to be removed (run without -n)"))
        if not self.repair:
            return
        try:
            fd = _open_lock(fdir)
        except (FileNotFoundError, NotADirectoryError):
            fd = None
        try:
            if fd is not None:
                if not flock_wait(fd, self.timeout):
                    raise LockTimeout(f"folder {name!r} of user {user!r}")
                clear_remains(fdir)
        finally:
            if fd is not None:
                os.close(fd)
        end_remains_dir(fdir)
        self._open_list().drop_remains(user, name)

    def _uidvalidity(self, user: str, folder: str, own: int | None):
        """(UIDVALIDITY, where it came from or None, subscribed) for a folder the list lacks."""
        w = self.k.folder(user, folder, own) if own is not None else self.k.folder(user, folder)
        subscribed = None if (w is None or w.subscribed is None) else w.subscribed
        if own is not None:
            return own, "the folder's index", subscribed
        if w is not None:
            return w.uidvalidity, ("the restore journal" if w.source == "journal" else w.source), subscribed
        return _uidvalidity(), None, subscribed

    def commit_list(self) -> None:
        # held: a signal while the list is put in place waits until it is there (one
        # between the commit and the rename left the rebuilt list aside, and the roll-back
        # that followed failed on the committed connection: exit 70); the signal, delivered
        # after, finds no list left to roll back
        with interrupts_deferred():
            if self.list is not None:
                self.list.finish(self.owner)
                self.list = None

    # -- which folders a path names -------------------------------------------------------
    def targets(self, lp, groups, recursive: bool) -> list[tuple]:
        """(partition, user, folder, folder directory, UIDVALIDITY) for a logical path,
        the user's folder rows reconciled with its directories first.  Without
        ``recursive`` a user means its INBOX and a folder only itself."""
        from asm.logical import PathError, match_folder
        lst = self._open_list()
        users = lst.users()
        if lp.partition is not None and lp.partition not in self.parts:
            raise PathError(f"{lp}: no partition {lp.partition!r} (partitions: {', '.join(self.parts)})")
        if lp.user is not None:
            row = users.get(lp.user)
            if row is None:
                raise PathError(f"{lp}: no user {lp.user!r} in the mailbox list (reconstruct -m adds the "
                                f"users found on the partitions)")
            if row[0] != lp.partition:
                raise PathError(f"{lp}: user {lp.user!r} is on partition {row[0]!r}, not {lp.partition!r}")
            chosen = [lp.user]
        else:
            chosen = sorted(u for u, (p, _, _) in users.items() if lp.covers_user(p, u, groups))
        out = []
        for user in chosen:
            names = self.user_folders(user)
            if lp.folder is not None:
                folder = match_folder(lp.folder, names)
                if folder is None:
                    raise PathError(f"{lp}: user {user!r} has no folder {lp.folder!r}")
                names = [n for n in names if n == folder or (recursive and n.startswith(folder + "/"))]
            elif not recursive:
                names = ["INBOX"]
            part, udir = self.user_dir(user)
            rows = lst.folders(user)
            self.marked |= {(user, n) for n in lst.unplaced(user)}
            for n in names:
                if n in rows:
                    out.append((part, user, n, self.folder_dir(udir, n), rows[n][0]))
        return out

    # -- one folder's index ------------------------------------------------------------
    def folder(self, target: tuple) -> None:
        """Rebuild (or check) one folder's index from its message files; ``target``
        from :meth:`targets` (the mailbox list may be committed in between)."""
        part, user, folder, fdir, uidvalidity = target
        mb = self.mailbox(part, user, folder)
        if (user, folder) in self.marked and not os.path.exists(os.path.join(fdir, "store.idx")):
            # listed by a restore before its index was placed, and the restore was cut
            # short: nothing of it was ever visible (it reads as empty); its message files
            # are the restore's, which, run again, writes them at their archived UIDs with
            # their flags (indexed here, their flags would be known nowhere)
            self.report.folders += 1
            n = sum(len(os.listdir(os.path.join(fdir, d))) for d in os.listdir(fdir)
                    if _HASHDIR.match(d) and os.path.isdir(os.path.join(fdir, d))) if os.path.isdir(fdir) else 0
            self.report.add(NOTE, mb, f"a restore was making this folder and was cut short before its index was "
                                      f"placed ({n} message files of it are there): left for the restore, it reads "
                                      f"as empty until the same imsrestore run again fills it")
            return
        if not os.path.isdir(fdir):
            self.report.add(LOST, mb, f"the folder's directory {fdir} is missing; restore it from an archive")
            return
        self.report.folders += 1
        fd = _open_lock(fdir) if self.repair else None
        try:
            if fd is not None and not flock_wait(fd, self.timeout):
                raise LockTimeout(f"folder {folder!r} of user {user!r}")
            try:
                self._rebuild(mb, user, folder, fdir, uidvalidity)
            except sqlite3.Error as exc:
                # the index built aside (or updated in place) on a full disk: SQLite says
                # "database or disk is full" (or an I/O error of its journal), which
                # reached the user as an internal error, exit 70
                if "full" in str(exc) or disk_full(exc, fdir):
                    raise StoreFull(f"the index of {mb}", _full_why(exc)) from None
                raise
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise os_store_error(exc, f"the index of {mb}") from None
                raise
        finally:
            if fd is not None:
                os.close(fd)

    def _scan(self, mb: str, fdir: str) -> dict:
        """uid -> path of every message file; moves misplaced ones, removes .tmp-* left overs."""
        files: dict = {}
        tmps = 0
        try:
            subdirs = [e for e in os.scandir(fdir) if _HASHDIR.match(e.name) and e.is_dir(follow_symlinks=False)]
        except OSError as exc:
            raise StoreError(f"{mb}: cannot read {fdir}: {exc.strerror}") from None
        for sd in sorted(subdirs, key=lambda e: e.name):
            for e in sorted(os.scandir(sd.path), key=lambda e: e.name):
                if e.name.startswith(".tmp-"):
                    tmps += 1
                    if self.repair:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(e.path)
                    continue
                m = _MSGFILE.match(e.name)
                if not m:
                    self.report.add(NOTE, mb, f"{e.path} is no message file name; left alone")
                    continue
                if not e.is_file(follow_symlinks=False):
                    self.report.add(UNKNOWN, mb, f"{e.path} is not a regular file; left alone (a backup names it)")
                    continue
                uid = int(m.group(1))
                right = os.path.join(fdir, f"{uid >> 8:02x}", e.name)
                path = e.path
                if right != e.path:
                    if os.path.lexists(right) or uid in files:
                        self.report.add(UNKNOWN, mb, f"{e.path}: message {uid} is also at {right}; this copy "
                                                     f"is left alone, compare them by hand")
                        continue
                    self.report.add(REPAIRED, mb, f"message {uid} was in the wrong directory ({e.path}): "
                                                  + ("moved" if self.repair else "to be moved") + f" to {right}")
                    if self.repair:
                        os.makedirs(os.path.dirname(right), mode=0o700, exist_ok=True)
                        os.rename(e.path, right)
                        path = right
                files[uid] = path
        if tmps:
            self.report.add(NOTE, mb, f"{tmps} temporary files of interrupted writes"
                                      + (" removed" if self.repair else " (reconstruct removes them)"))
        return files

    def _rebuild(self, mb: str, user: str, folder: str, fdir: str, uidvalidity: int) -> None:
        idx_path = os.path.join(fdir, "store.idx")
        idx = _Index(idx_path)
        files = self._scan(mb, fdir)
        # files of an expunge cut short (its rows' removal committed, the files not yet
        # unlinked): removed as the expunge would have, not taken for messages the index
        # lost (only from a healthy index, which also says no message took the UID again)
        cut = sorted(u for u in idx.expunged if u in files and u not in idx.rows) if idx.healthy else []
        if cut:
            self.report.add(NOTE, mb, f"{len(cut)} message files of an expunge cut short (UIDs {_uids(cut)}): "
                                      + ("removed" if self.repair else "reconstruct removes them"))
            for uid in cut:
                if self.repair:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(files[uid])
                del files[uid]
        self.report.messages += len(files)
        witness = self.k.folder(user, folder, uidvalidity)
        # the index's state is as of its last change: an archive taken later knows newer flags
        idx_time = os.stat(idx_path).st_mtime if idx.exists else 0.0
        rows: dict = {}
        guids: dict = {}                 # uid -> GUID for the index's guids table
        added_known, added_unknown, resized, reflagged = [], [], [], []
        newer_from = set()
        for uid, path in sorted(files.items()):
            st = os.stat(path)
            old = idx.rows.get(uid)
            if old is not None:
                if old[5] != st.st_size:
                    resized.append(uid)
                    old = old[:5] + (st.st_size,)
                w = self.k.message(user, folder, uidvalidity, uid)
                if w is not None and w.created > idx_time:
                    flags, kws = " ".join(sorted(w.flags)), " ".join(w.keywords)
                    if (flags, kws) != (old[1], old[2]):
                        old = (uid, flags, kws) + old[3:]
                        reflagged.append(uid)
                        newer_from.add(w.created)
                rows[uid] = old
                guid = idx.guids.get(uid) or (w.guid if w is not None and w.sha256 and w.sha256 == _sha256(path)
                                              else "")
                if guid:
                    guids[uid] = guid
                continue
            w = self.k.message(user, folder, uidvalidity, uid)
            if w is not None and w.sha256 and w.sha256 == _sha256(path):
                rows[uid] = (uid, " ".join(sorted(w.flags)), " ".join(w.keywords),
                             w.internaldate if w.internaldate is not None else st.st_mtime,
                             w.stored if w.stored is not None else st.st_ctime, st.st_size)
                added_known.append(uid)
                if idx.guids.get(uid) or w.guid:
                    guids[uid] = idx.guids.get(uid) or w.guid
            else:
                rows[uid] = (uid, "", "", st.st_mtime, st.st_ctime, st.st_size)
                added_unknown.append(uid)
        gone = sorted(set(idx.rows) - set(files))
        top = max(files, default=0)
        candidates = [top + 1, 1]
        sources = []
        if "uidnext" in idx.meta:
            candidates.append(int(idx.meta["uidnext"]))
        if witness is not None:
            candidates.append(witness.uidnext)
            sources.append("the restore journal" if witness.source == "journal" else witness.source)
        uidnext = max(candidates)

        # what was wrong
        if not idx.exists:
            # one line per folder, however many messages it held
            parts = [f"the index is missing: rebuilt from {len(files)} message files (UIDs from their names)"]
            if added_known:
                parts.append(f"flags and dates of {len(added_known)} from "
                             f"{sources[-1] if sources else 'an archive'}")
            if added_unknown:
                parts.append(f"the flags of {len(added_unknown)} ({_uids(added_unknown)}) known nowhere (set to "
                             f"none, INTERNALDATE from the file's time)")
            self.report.add(UNKNOWN if added_unknown else REPAIRED, mb, "; ".join(parts))
            added_known_shown = added_unknown_shown = True
        else:
            added_known_shown = added_unknown_shown = False
        if idx.exists and not idx.healthy:
            self.report.add(REPAIRED, mb, f"the index {idx.error}: rebuilt from {len(files)} message files "
                                          f"({len(idx.rows)} of its rows could still be read"
                                          + ("; the damaged file is kept as store.idx.damaged-<time>)"
                                             if self.repair else ")"))
        if added_known and not added_known_shown:
            self.report.add(REPAIRED, mb, f"{len(added_known)} messages were not in the index: added with their "
                                          f"UIDs ({_uids(added_known)}), flags and dates from {sources[-1] if sources else 'an archive'}")
        if added_unknown and not added_unknown_shown:
            self.report.add(UNKNOWN, mb, f"{len(added_unknown)} messages were not in the index: added with their "
                                         f"UIDs ({_uids(added_unknown)}); their flags are known nowhere (set to "
                                         f"none), INTERNALDATE from the file's time")
        if reflagged:
            self.report.add(REPAIRED, mb, f"the flags of {len(reflagged)} messages (UIDs {_uids(reflagged)}) "
                                          f"taken from an archive of {_when(max(newer_from))}, newer than the "
                                          f"index ({_when(idx_time)})")
        if gone:
            listing = self.k.listing(user, folder, uidvalidity)
            expunged, kept_by, lost = [], [], []
            for uid in gone:
                if listing is not None and listing.created > idx_time:
                    (kept_by if self.k.listed(user, folder, uidvalidity, uid) else expunged).append(uid)
                else:
                    lost.append(uid)
            if expunged:
                self.report.add(NOTE, mb, f"{len(expunged)} messages in the index have no file and were expunged "
                                          f"after the index was captured (the archive {listing.source} of "
                                          f"{_when(listing.created)} no longer has them; UIDs {_uids(expunged)}): "
                                          f"removed from the index")
            if kept_by:
                self.report.add(LOST, mb, f"{len(kept_by)} messages in the index have no file (UIDs "
                                          f"{_uids(kept_by)}): removed from the index; the archive "
                                          f"{listing.source} has them: imsrestore -f {listing.source} {mb}")
            if lost:
                self.report.add(LOST, mb, f"{len(lost)} messages in the index have no file (UIDs {_uids(lost)}): "
                                          f"expunged after the index was captured, or lost: removed from the "
                                          f"index; if they were not expunged, restore them from an archive "
                                          f"(imsrestore -f ARCHIVE {mb})")
        if resized:
            self.report.add(REPAIRED, mb, f"the size of {len(resized)} messages differed from their files "
                                          f"(UIDs {_uids(resized)}): corrected")
        if "uidnext" not in idx.meta and witness is None:
            if files or idx.exists:
                self.report.add(UNKNOWN, mb, f"its UIDNEXT is known nowhere: set to the highest UID + 1 "
                                             f"({uidnext}); a UID of a message expunged before the loss may "
                                             f"be given again")
        elif "uidnext" in idx.meta and uidnext > int(idx.meta["uidnext"]) and uidnext > top + 1:
            self.report.add(REPAIRED, mb, f"UIDNEXT raised from {idx.meta['uidnext']} to {uidnext} "
                                          f"(what {', '.join(sources) or 'the files'} saw)")
        if idx.meta.get("uidvalidity") not in (None, uidvalidity):
            self.report.add(REPAIRED, mb, f"the index said UIDVALIDITY {idx.meta['uidvalidity']}, the mailbox "
                                          f"list {uidvalidity}: set to the list's")
        changed = (not idx.healthy or added_known or added_unknown or gone or resized or reflagged or idx.expunged
                   or int(idx.meta.get("uidnext", 0)) != uidnext or idx.meta.get("uidvalidity") != uidvalidity)
        if not (self.repair and changed):
            return
        if idx.healthy:
            con = sqlite3.connect(idx_path, isolation_level=None, timeout=self.timeout)
            try:
                con.execute("BEGIN IMMEDIATE")
                for uid in gone:
                    con.execute("DELETE FROM msgs WHERE uid=?", (uid,))
                for uid in added_known + added_unknown + resized + reflagged:
                    con.execute("INSERT OR REPLACE INTO msgs VALUES (?,?,?,?,?,?)", rows[uid])
                con.execute(_GUIDS)
                for uid in gone:
                    con.execute("DELETE FROM guids WHERE uid=?", (uid,))
                if idx.expunged:
                    con.execute("DELETE FROM expunged")     # (its files removed above)
                for uid in added_known + added_unknown:
                    if uid in guids and uid not in idx.guids:
                        con.execute("INSERT OR REPLACE INTO guids VALUES (?,?)", (uid, guids[uid]))
                con.execute("INSERT OR REPLACE INTO meta VALUES ('uidnext', ?)", (uidnext,))
                con.execute("INSERT OR REPLACE INTO meta VALUES ('uidvalidity', ?)", (uidvalidity,))
                con.execute("COMMIT")
            finally:
                con.close()
            return
        tmp = aside_name(fdir)

        def keep_damaged() -> None:
            if idx.exists:
                os.rename(idx_path, f"{idx_path}.damaged-{_stamp()}")
            for ext in ("-journal", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(idx_path + ext)
        try:
            con = build_index(tmp, uidnext, uidvalidity, [rows[u] for u in sorted(rows)], sorted(guids.items()))
            try:
                if isinstance(idx.meta.get("restoring"), str):
                    # a restore's mark (Store.mark_restoring), kept for the restore to resolve
                    con.execute("INSERT OR REPLACE INTO meta VALUES ('restoring', ?)", (idx.meta["restoring"],))
            finally:
                con.close()
            place_index(tmp, idx_path, self._chown, before=keep_damaged)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def sync(self) -> None:
        """Make the repairs durable (syncfs on each partition and the store root)."""
        for path in list(self.parts.values()) + [self.config.store_root]:
            if os.path.isdir(path):
                fd = os.open(path, os.O_RDONLY)
                try:
                    _syncfs(fd)
                finally:
                    os.close(fd)
