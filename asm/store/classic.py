"""The ``classic`` store: the embedded default, laid out like the classic message store.

::

    <store root>/mboxlist/mailboxes.db       mailbox list (SQLite): users, folders, subscriptions
    <store root>/queue/<user-hash>/           deliveries held while a user is restored
    <partition>/<h1>/<h2>/=<user>/            a user's directory; it is also INBOX
        store.idx                             the folder index (SQLite): UIDs, flags, dates
        store.lck                             the folder lock (flock)
        <hh>/<uid>.msg                        one file per message; copies are hard links
        =<folder level>/                      a subfolder, laid out the same way

``<h1>/<h2>`` are the first two bytes of SHA-1(user) in hex, so no directory grows
too large; levels are percent-encoded for ``/`` and ``%``.  A message file exists
whole before its index row does (written to a temporary name and renamed), so a
crash leaves at most an orphan file, never half a message in a folder.
docs/classic-store.md describes the layout in full.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import sqlite3
import threading
import time
from typing import BinaryIO, Iterable

from asm import lazy, sqlitedb
from asm.config import make_dirs
from asm.errors import EXIT_STORE
from asm.hookspecs import hookimpl
from asm.interrupts import interrupts_deferred
from asm.locks import flock_wait, pid_alive
from asm.store.base import (
    BadName, FolderExists, FolderInfo, FolderSnapshot, LockTimeout, MessageGone, MessageInfo,
    NameTooLong, NoSuchFolder, NoSuchPartition, NoSuchUser, Store, StoreError, StoreFull, UidInUse, Unlisted, UserExists,
    _what, check_folder_levels, check_folder_name, check_user_level, check_user_name, copy_to_fd, holder_gone, message_info, os_store_error, settled,
    unreadable_hint,
    split_flags, stat_part, this_holder,
)
from asm.trees import remove_tree

shutil = lazy.module("shutil")      # removing trees, copying files (startup time)

CHUNK = 1 << 20
_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user TEXT PRIMARY KEY, partition TEXT NOT NULL, dir TEXT NOT NULL,
    held INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS holders (
    user TEXT NOT NULL, holder TEXT NOT NULL, PRIMARY KEY (user, holder));
CREATE TABLE IF NOT EXISTS folders (
    user TEXT NOT NULL, name TEXT NOT NULL, uidvalidity INTEGER NOT NULL,
    subscribed INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (user, name));
CREATE TABLE IF NOT EXISTS counters (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS unplaced (
    user TEXT NOT NULL, name TEXT NOT NULL, pid INTEGER NOT NULL, PRIMARY KEY (user, name));
CREATE TABLE IF NOT EXISTS remains (user TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (user, name));
"""
_IDX_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS msgs (
    uid INTEGER PRIMARY KEY, flags TEXT NOT NULL, keywords TEXT NOT NULL,
    internaldate REAL NOT NULL, stored REAL NOT NULL, size INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS msgs_stored ON msgs (stored);
CREATE TABLE IF NOT EXISTS guids (uid INTEGER PRIMARY KEY, guid TEXT NOT NULL);
"""
_GUIDS = "CREATE TABLE IF NOT EXISTS guids (uid INTEGER PRIMARY KEY, guid TEXT NOT NULL)"
# the UIDs an expunge removed whose files may still be there (ClassicStore.expunge)
_EXPUNGED = "CREATE TABLE IF NOT EXISTS expunged (uid INTEGER PRIMARY KEY)"
_NEW_INDEX = "store.idx.new-"     # store.idx.new-<pid>: a new folder's index being built
#: the longest path of a folder's index SQLite opens (sqlitedb.PATH_MAX); the longest name
#: a folder's index has is store.idx.new-<pid>
INDEX_PATH_MAX = sqlitedb.PATH_MAX


@functools.lru_cache(maxsize=1)
def _longest_index() -> int:
    """The length of the longest store.idx.new-<pid> on this system (kernel.pid_max; 7
    digits, its largest, when it cannot be read)."""
    try:
        with open("/proc/sys/kernel/pid_max", "rb") as f:
            digits = len(str(int(f.read()) - 1))
    except (OSError, ValueError):
        digits = 7
    return len(_NEW_INDEX) + min(max(digits, 1), 7)


def _index_fits(folder: str, user: str, base: str) -> str:
    """``folder`` if the index of its directory below the user directory ``base`` has a
    path SQLite opens (INDEX_PATH_MAX); else NameTooLong naming the bytes (a deep folder,
    or one restored into a partition of a longer path, failed with the store's index
    "unable to open database file", exit 17, after the command had started)."""
    real = os.path.realpath(base)
    levels = [] if folder == "INBOX" else folder.split("/")
    n = len(os.fsencode(real)) + sum(len(os.fsencode(_enc(level))) + 2 for level in levels) + 1 + _longest_index()
    if n > INDEX_PATH_MAX:
        from asm.archive.names import shown
        raise NameTooLong(f"folder name '{shown(folder)}' of user '{shown(user)}' is too long for the classic "
                          f"store here: the path of its index would be {n} bytes (in {real}), at most "
                          f"{INDEX_PATH_MAX} (SQLite's limit); choose a shorter name or fewer levels, or a "
                          f"partition whose path is shorter")
    return folder


def _enc(level: str) -> str:
    return level.replace("%", "%25").replace("/", "%2F")


def _dec(level: str) -> str:
    return level.replace("%2F", "/").replace("%25", "%")


def _utf8(name: str, what: str) -> str:
    """The classic store keeps names as text in SQLite: a name holding bytes that are
    not UTF-8 (a Maildir made by another tool) cannot be stored, and says so."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        from asm.archive.names import shown
        raise BadName(f"{what} '{shown(name)}' holds bytes that are not UTF-8; the classic store keeps "
                      f"names as UTF-8 text: restore it into a maildir store, or rename it (imsrestore -m "
                      f"for a user)") from None
    return name


def _utf8_keywords(keywords) -> None:
    """The classic store keeps keywords as UTF-8 text in SQLite too: a keyword holding
    bytes that are not UTF-8 (a client's Latin-1, kept by a Maildir and its archive) is
    refused before anything is written, and says so."""
    for k in keywords:
        try:
            k.encode("utf-8")
        except UnicodeEncodeError:
            from asm.archive.names import shown
            raise BadName(f"keyword '{shown(k)}' holds bytes that are not UTF-8; the classic store "
                          f"keeps keywords as UTF-8 text: restore the message into a maildir store, "
                          f"which keeps them") from None


def _is_text(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _user_dir(user: str) -> str:
    h = hashlib.sha1(user.encode("utf-8")).hexdigest()
    return os.path.join(h[:2], h[2:4], "=" + _enc(user))


_HASH = frozenset("0123456789abcdef")
TMP_DIR = ".ims-tmp"        # per partition: message files being written
REBUILD_HINT = ("the mailbox list (mboxlist/mailboxes.db) was lost or replaced: rebuild it from the "
                "partitions with reconstruct -m before backing up")
LOST_HINT = ("rebuild it from the partitions with reconstruct -m, then run the same command again "
             "(nothing was changed)")


class MailboxListLost(StoreError):
    """The mailbox list is missing while partitions still hold user directories: read
    as it stands the store would look empty."""

    status = EXIT_STORE


def _is_hash(name: str) -> bool:
    return len(name) == 2 and set(name) <= _HASH


def scan_user_dirs(ppath: str):
    """(directory relative to the partition, user) of every user directory found on a
    partition (``<h1>/<h2>/=<user>``), whatever the mailbox list says."""
    try:
        tops = sorted(n for n in os.listdir(ppath) if _is_hash(n))
    except (FileNotFoundError, NotADirectoryError):
        return
    for h1 in tops:
        try:
            mids = sorted(n for n in os.listdir(os.path.join(ppath, h1)) if _is_hash(n))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for h2 in mids:
            try:
                entries = sorted(os.scandir(os.path.join(ppath, h1, h2)), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for e in entries:
                if e.name.startswith("=") and len(e.name) > 1 and e.is_dir(follow_symlinks=False):
                    yield os.path.join(h1, h2, e.name), _dec(e.name[1:])


def holds_mail(path: str) -> bool:
    """Whether a directory holds mail at any depth: a folder index or a message file.
    A leftover user directory with neither (an empty ``=joe``, empty hash directories,
    a lock file) holds nothing a new mailbox list could lose."""
    for _dirpath, _dirnames, filenames in os.walk(path):
        for n in filenames:
            if n.startswith("store.idx") or n.endswith(".msg"):
                return True
    return False


def mailbox_list_exists(root: str) -> bool:
    """Whether the classic store under ``root`` has its mailbox list (``os.path.exists``
    that tells a list this user cannot reach from a missing one).  StoreError when it
    cannot be looked for: a directory on the way this user may not read (the command run
    as another user than the store's owner, a cron line in the wrong crontab) must not
    look like a store without a list, whose partitions are then searched for lost users
    or which a repair would give a new, empty list."""
    db_path = os.path.join(root, "mboxlist", "mailboxes.db")
    try:
        os.stat(db_path)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        where = db_path
        for d in (root, os.path.dirname(db_path)):
            if os.path.isdir(d) and not os.access(d, os.R_OK | os.X_OK):
                where = d
                break
        raise StoreError(f"cannot read {where}, the classic store's mailbox list ({db_path}): "
                         f"{exc.strerror or exc}: {unreadable_hint(exc)}") from None


def lost_list(parts: dict) -> str | None:
    """Why a missing mailbox list was lost: a partition holds user directories with
    mail (``holds_mail``); None when none does (a store not made yet)."""
    for part, ppath in parts.items():
        found = []
        for rel, user in scan_user_dirs(ppath):
            if not holds_mail(os.path.join(ppath, rel)):
                continue        # an empty leftover directory: no mail to lose
            found.append(user)
            if len(found) > 3:
                break
        if found:
            shown = ", ".join(repr(u) for u in found[:3]) + (", ..." if len(found) > 3 else "")
            return f"partition {part!r} ({ppath}) holds user directories ({shown})"
    return None


def _flags_text(flags: Iterable[str]) -> str:
    return " ".join(sorted(flags))


def _remove_index(idx: str) -> None:
    """Remove an index with its WAL and shared memory (a WAL left beside a new index
    would be replayed into it)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(idx + suffix)


def _full_why(exc: sqlite3.Error) -> str:
    return str(exc) if "full" in str(exc) else f"No space left on device; SQLite: {exc}"


def _store_errors(fn):
    """SQLite and filesystem failures of a store operation become StoreErrors that name
    the operation; a full disk becomes StoreFull."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as exc:
            what = _what(fn, args)
            if "full" in str(exc) or ("I/O" in str(exc) and self._disk_full()):
                # SQLite reports some writes to a full filesystem (its WAL, shared
                # memory) as a plain I/O error
                raise StoreFull(what, _full_why(exc)) from None
            if "locked" in str(exc) or "busy" in str(exc):
                raise LockTimeout(f"the index or mailbox list for {what} ({exc})") from None
            raise StoreError(f"{fn.__name__} {what}: the store's index failed: {exc}") from None
        except OSError as exc:
            raise os_store_error(exc, _what(fn, args)) from None
    return wrapper


def aside_name(fdir: str) -> str:
    """Where this process builds a new index for the folder directory ``fdir``."""
    return os.path.join(fdir, f"{_NEW_INDEX}{os.getpid()}")


def drop_dead_asides(fdir: str) -> None:
    """Remove the indexes that processes now gone were building aside in ``fdir``."""
    for n in os.listdir(fdir):
        pid = n[len(_NEW_INDEX):]
        if n.startswith(_NEW_INDEX) and pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(fdir, n))


def _unmade(fdir: str, marked: bool = False) -> bool:
    """The folder has no index in place, and ``marked`` (the mailbox list says its index
    is still to be placed: ``unplaced``) or its directory holds one being built aside: a
    listed folder whose creation (with its messages) has not ended, or was cut short."""
    idx = os.path.join(fdir, "store.idx")
    if os.path.exists(idx):
        return False
    if marked:
        return True
    try:
        names = os.listdir(fdir)
    except OSError:
        return False
    # (looked at again: renamed into place while the directory was read)
    return any(n.startswith(_NEW_INDEX) for n in names) and not os.path.exists(idx)


def build_index(tmp: str, uidnext: int, uidvalidity: int, rows=(), guids=(), fresh: bool = False) -> sqlite3.Connection:
    """A folder index built aside under the temporary name ``tmp`` (nobody else opens
    it): its schema, UIDNEXT and UIDVALIDITY (the folder's own record of it, which
    reconstruct -m reads when the mailbox list is lost), and ``rows`` (msgs) and
    ``guids``, committed; returned open for more.  Its rollback journal is kept in memory
    and nothing is synced: nothing is to be rolled back or kept in a file nobody sees,
    until :func:`place_index` syncs it once and renames it into place.  The one helper
    of the store (a new folder) and of reconstruct (a lost or damaged index)."""
    if tmp != ":memory:" and not fresh:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    con = sqlite3.connect(tmp, isolation_level=None, check_same_thread=False)
    try:
        con.execute("PRAGMA journal_mode=MEMORY")
        con.execute("PRAGMA synchronous=OFF")
        con.executescript("BEGIN;" + _IDX_SCHEMA)
        con.execute("INSERT INTO meta VALUES ('uidnext', ?)", (uidnext,))
        con.execute("INSERT INTO meta VALUES ('uidvalidity', ?)", (uidvalidity,))
        con.executemany("INSERT INTO msgs VALUES (?,?,?,?,?,?)", rows)
        con.executemany("INSERT INTO guids VALUES (?,?)", guids)
        con.execute("COMMIT")
    except BaseException:
        con.close()
        raise
    return con


def fsync_dir(d: str) -> None:
    """Make a rename in ``d`` durable (as SQLite, a failure to sync a directory is ignored)."""
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def place_index(tmp: str, idx: str, chown=None, before=None) -> None:
    """Make the index built aside at ``tmp`` (closed) durable with one fdatasync and
    rename it to ``idx``, the rename made durable with one fsync of its directory: the
    index appears whole or not at all.  ``chown(path)`` gives it its owner first;
    ``before()`` runs just before the rename (reconstruct keeps a damaged one aside)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
    if chown is not None:
        chown(tmp)
    # (held: a signal after before() moved a damaged index aside and before the rename
    # left the folder without one, exit 130)
    with interrupts_deferred():
        if before is not None:
            before()
        os.replace(tmp, idx)
    fsync_dir(os.path.dirname(idx))


def clear_remains(fdir: str) -> None:
    """A removed folder's message files, one by one, their directories, then its index
    (last); its subfolders (``=...``) and its lock file stay.  (Its deletion's, and
    reconstruct's when it finds one cut short.)"""
    try:
        names = os.listdir(fdir)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in sorted(names, key=lambda e: (not _is_hash(e), e.startswith("store.idx"), e)):
        if entry.startswith("=") or entry == "store.lck":
            continue  # a subfolder; the lock, held
        p = os.path.join(fdir, entry)
        if os.path.isdir(p) and not os.path.islink(p):
            for n in os.listdir(p):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(p, n))
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(p)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def end_remains_dir(fdir: str) -> None:
    """A removed folder's directory goes when no subfolder is left in it."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        if not any(e.startswith("=") for e in os.listdir(fdir)):
            remove_tree(fdir)


_NO_FLAGS = frozenset()
# this process's ID, for temporaries' names (looked up once, not per message; a fork's child
# has its own)
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def _index_fingerprint(fdir: str) -> list | None:
    """The folder index's (inode, size, mtime, ctime), or None while a rollback journal
    says a transaction is in flight (or was cut: the next open rolls it back)."""
    path = os.path.join(fdir, "store.idx")
    if os.path.lexists(path + "-journal") or os.path.lexists(path + "-wal"):
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None         # a new folder whose index is being built aside (ClassicStore._filling)
    return stat_part(st)


def _open_lock(fdir: str) -> int:
    """The folder's lock file, opened for flock.  On a read-only filesystem (a
    snapshot mounted read-only) it is opened read-only, or the folder directory
    itself when the file was never made: flock works on either, and nobody writes
    a snapshot."""
    path = os.path.join(fdir, "store.lck")
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return os.open(fdir, os.O_RDONLY | os.O_DIRECTORY)


_last_uidvalidity = [0]
UV_MAX = 0x7FFFFFFF


def _uidvalidity(last: int = 0) -> int:
    """A new folder's UIDVALIDITY: the time, but above ``last`` (the highest the store
    ever gave, kept in the mailbox list) and any this process gave, so a folder or user
    deleted and made again within a second, by another command, or after the clock
    stepped back, does not reuse its UIDs under the same UIDVALIDITY (RFC 3501; an
    incremental by base would take them for the old ones)."""
    v = max(int(time.time()) & UV_MAX, _last_uidvalidity[0] + 1, last + 1)
    if v > UV_MAX:
        v = int(time.time()) & UV_MAX or 1      # 2038 reached by the counter: start over
    _last_uidvalidity[0] = v
    return v


class ClassicStore(Store):
    name = "classic"
    unlisted_hint = REBUILD_HINT
    restore_keeps_stored = False        # "stored": when it entered this folder in this store

    def __init__(self, config, create: bool = True):
        self.config = config
        self.root = config.store_root
        self.parts = config.checked_partitions()
        self.owner = config.owner()
        self._give = bool(self.owner) and os.geteuid() == 0     # files are given to store.owner
        self.lock_timeout = float(config.get_int("store.locktimeout"))
        db_path = os.path.join(self.root, "mboxlist", "mailboxes.db")
        if not mailbox_list_exists(self.root):
            # without a mailbox list the store is empty, unless its partitions say it was
            # lost: then no command reads it as empty, and none writes a new list over the
            # users it does not know (a restore would reset their folders to the archive
            # and the next delivery reuse their UIDs)
            self._check_lost(db_path)
            if mailbox_list_exists(self.root):
                pass                     # made meanwhile by another command (see _check_lost)
            elif create:
                make_dirs(os.path.dirname(os.path.abspath(self.root)))     # $IMS_HOME/data, whatever the umask
                self._makedirs(os.path.join(self.root, "mboxlist"))    # the owner's (store.owner)
            else:
                db_path = ":memory:"     # a command that only reads never makes a store
        try:
            self._db = sqlitedb.connect(db_path, self.lock_timeout, schema=_SCHEMA, check_same_thread=False)
        except sqlite3.Error as exc:
            if db_path != ":memory:" and sqlitedb.disk_full(exc, db_path):
                # (made, or its WAL files made, on a disk that is full: not a damaged list)
                raise StoreFull(f"the mailbox list {db_path}", _full_why(exc)) from None
            raise StoreError(f"the classic store's mailbox list {db_path} cannot be opened: {exc}") from None
        if db_path != ":memory:":
            # the list and its -wal/-shm (made by this open): the owner's, or the owner's
            # own commands could not open it (later ones SQLite makes as the list's owner)
            for suffix in ("", "-wal", "-shm", "-journal"):
                self._own(db_path + suffix)
        self._held: dict[str, tuple[int, int]] = {}   # folder dir -> (fd, depth)
        self._idx: dict[str, sqlite3.Connection] = {}
        self._where: dict[str, tuple[str, str]] = {}  # user -> (partition, dir): never change
        # while this process holds a folder's lock nobody else changes it, so its
        # mailbox-list row and its [UIDNEXT, highest UID] are kept in memory
        self._rows: dict[tuple[str, str], list] = {}
        self._counters: dict[str, list] = {}
        self._mutex = threading.RLock()
        self._tmp_clean: set[str] = set()            # partitions whose temp dir was cleaned
        self._tmp_dirs: set[str] = set()             # temp dirs known to exist (see _write_file)
        self._tmp_seq = 0                            # temporaries: <pid>-<uid>-<seq><tag>
        self._tmp_tag = os.urandom(4).hex()
        # a new folder a restore fills (create_folder_to_fill): folder dir -> its index
        # being built aside, renamed into place when the folder's lock is released; and
        # the folder's lock, taken before the folder was listed, until lock() takes it over
        self._filling: dict[str, str] = {}
        self._prelocked: dict[str, int] = {}
        # the folders (user, name) whose index was placed since the last sync, and those
        # the last sync covered: their mark in ``unplaced`` goes at the next sync (or
        # close), never before a sync made the index and its directory durable
        self._making: dict[str, tuple[str, str]] = {}
        self._placed: list[tuple[str, str]] = []
        self._covered: list[tuple[str, str]] = []
        self._made_dirs: list[str] = []     # a new user's directories, synced with its INBOX

    def _check_lost(self, db_path: str) -> None:
        why = lost_list(self.parts)
        # the list looked again at once: another command (restores of several group
        # archives started together into an empty store) may have made the store, list
        # first, between the look that found no list and the partitions' users -- 1 of
        # 80 such starts was refused as a lost list, exit 17
        if why is not None and not mailbox_list_exists(self.root):
            raise MailboxListLost(f"the classic store's mailbox list {db_path} is missing, but {why}: {LOST_HINT}")

    # -- paths -------------------------------------------------------------
    def partition_path(self, partition: str) -> str:
        try:
            return self.parts[partition]
        except KeyError:
            raise NoSuchPartition(partition, self.parts) from None

    def _user_row(self, user: str):
        if not _is_text(user):
            raise NoSuchUser(user)
        row = self._db.execute("SELECT partition, dir, held FROM users WHERE user=?", (user,)).fetchone()
        if row is None:
            raise NoSuchUser(user)
        return row

    def _user_where(self, user: str) -> tuple[str, str]:
        where = self._where.get(user)
        if where is None:
            part, d, _ = self._user_row(user)
            where = self._where[user] = (part, d)
        return where

    def _user_path(self, user: str) -> str:
        part, d = self._user_where(user)
        return os.path.join(self.partition_path(part), d)

    def _folder_dir(self, user: str, folder: str) -> str:
        base = self._user_path(user)
        if folder == "INBOX":
            return base
        return os.path.join(base, *("=" + _enc(level) for level in folder.split("/")))

    @staticmethod
    def _msg_path(fdir: str, uid: int) -> str:
        # 256 consecutive UIDs share a hash directory: small folders have one
        return os.path.join(fdir, f"{uid >> 8:02x}", f"{uid}.msg")

    def _chown(self, path: str) -> None:
        if self._give:
            os.chown(path, *self.owner)

    def _own(self, path: str | int) -> None:
        """``path`` (or an open descriptor), when it exists, given to store.owner if it
        is not yet its (a file made by an open, such as a lock or SQLite's)."""
        if not self._give:
            return
        try:
            st = os.stat(path)
            if (st.st_uid, st.st_gid) != tuple(self.owner):
                os.chown(path, *self.owner)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.EROFS:     # a snapshot mounted read-only: nobody writes it
                raise

    def _makedirs(self, path: str, made: list | None = None) -> None:
        """Make ``path`` and its missing parents (0700, the owner's); each directory
        made is appended to ``made``."""
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path)
        if parent and parent != path:
            self._makedirs(parent, made)
        try:
            os.mkdir(path, 0o700)
            self._chown(path)
        except FileExistsError:
            return
        if made is not None:
            made.append(path)

    @staticmethod
    def _sync_entries(made: list, fdir: str) -> None:
        """Make durable the entries of the directories ``made`` and of the folder
        directory ``fdir`` in their parents (one fsync per parent): before a folder's
        mailbox-list row, which may reach the disk at once, says it is there."""
        for d in sorted({os.path.dirname(x) for x in made} | {os.path.dirname(fdir)}):
            fsync_dir(d)

    # -- index -------------------------------------------------------------
    def _index(self, fdir: str, where: tuple[str, str] | None = None) -> sqlite3.Connection:
        con = self._idx.get(fdir)
        if con is None:
            path = os.path.join(fdir, "store.idx")
            if not os.path.exists(path):
                if _unmade(fdir, where is not None and self._mark(*where) is not None):
                    # listed, its index still being built aside (or its builder killed):
                    # nothing of it was ever visible; read as the empty folder it was made
                    return build_index(":memory:", 1, 0)
                raise FileNotFoundError(path)
            con = self._connect_index(path)
            self._cache_index(fdir, con)
        return con

    def _mark(self, user: str, folder: str) -> int | None:
        """The process that listed the folder before its index was placed, while the
        mailbox list still says so (``unplaced``); None for a folder whose index is placed."""
        row = self._db.execute("SELECT pid FROM unplaced WHERE user=? AND name=?", (user, folder)).fetchone()
        return None if row is None else row[0]

    def _drop_stale_mark(self, user: str, folder: str, fdir: str) -> None:
        """A folder listed with its mark and its index in place: the process that placed
        it is gone (killed before a sync let it drop the mark).  Its directory and every
        one above it up to the partition are synced first (the index itself was synced
        before it was renamed into place): only then may the list stop saying that the
        folder can be without an index.  Only after a kill; never on the way of a run."""
        part, _ = self._user_where(user)
        top = os.path.realpath(self.partition_path(part))
        d = fdir
        while True:
            fsync_dir(d)
            if os.path.realpath(d) == top or os.path.dirname(d) == d:
                break
            d = os.path.dirname(d)
        with sqlitedb.immediate(self._db):
            self._db.execute("DELETE FROM unplaced WHERE user=? AND name=?", (user, folder))

    def _drop_marks(self, folders: list) -> None:
        """Drop the marks of folders whose index (and directory) a sync made durable."""
        with sqlitedb.immediate(self._db):
            self._db.executemany("DELETE FROM unplaced WHERE user=? AND name=?", folders)

    def sync(self) -> None:
        """Also: the marks of the folders whose index the previous sync covered are
        dropped first, so that this sync covers that too; those placed since go at the
        next one (their directories are durable only from this sync on)."""
        if self._covered:
            covered, self._covered = self._covered, []
            with contextlib.suppress(sqlite3.Error):     # (kept, a mark is harmless: dropped later)
                self._drop_marks(covered)
        super().sync()
        self._covered, self._placed = self._placed, []

    def _adopt(self, fdir: str, uidvalidity: int) -> None:
        """Under the folder's lock, a listed folder whose index was never placed (its
        builder was killed; holding the lock, nobody builds it now): built aside anew,
        empty, as its creation made it, and placed when the lock is released (a restore
        run again fills it there, as the first run would have)."""
        mine = aside_name(fdir)
        # ours first, the dead ones after: killed in between, the folder still has an
        # aside index (without one, and none in place, it would read as damaged)
        con = build_index(mine, 1, uidvalidity)
        self._chown(mine)
        for n in os.listdir(fdir):
            if n.startswith(_NEW_INDEX) and os.path.join(fdir, n) != mine:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(fdir, n))
        self._filling[fdir] = mine
        self._cache_index(fdir, con)

    def _place_filled(self, fdir: str) -> None:
        """The folder's lock is released: its index built aside, messages and all, is
        committed, synced once and renamed into place (the folder appears whole)."""
        tmp = self._filling.pop(fdir)
        con = self._idx.pop(fdir, None)
        if con is not None:
            try:
                if con.in_transaction:
                    con.execute("COMMIT")
            finally:
                con.close()
        place_index(tmp, os.path.join(fdir, "store.idx"))
        made = self._making.pop(fdir, None)
        if made is not None:
            self._placed.append(made)       # its mark goes once a sync covered this

    def _connect_index(self, path: str, new: bool = False) -> sqlite3.Connection:
        # a rollback journal with synchronous=FULL: a crash at any moment leaves the index
        # whole and every commit durable.  A folder restored under one lock is one
        # commit, so this costs less than WAL, whose files are made and checkpointed
        # (fsynced) for each of the many indexes a run opens and closes.
        con = sqlitedb.connect(path, self.lock_timeout, journal_mode="DELETE", synchronous="FULL",
                               check_same_thread=False)
        # (a new index gets the guids table with the rest of its schema, in the caller's
        # one transaction: not in a commit of its own, which costs its fsyncs)
        if not new and not con.execute("SELECT 1 FROM sqlite_master WHERE name='guids'").fetchone():
            # an index made before messages had GUIDs: they get their table now
            with contextlib.suppress(sqlite3.Error):
                con.execute(_GUIDS)
                if con.in_transaction:
                    con.execute("COMMIT")
        return con

    def _new_index(self, fdir: str, idx: str, uidnext: int, uidvalidity: int) -> None:
        """A new folder's index, appearing whole in one rename (:func:`build_index`,
        :func:`place_index`): created in place, its first commit cost four syncs (the
        journal twice, the directory, the index), as many again as the folder's messages
        cost, and more time than they on a restore of many small folders.  A temporary a
        killed process left is removed here (the caller holds the mailbox list's write
        lock: nobody else makes this folder meanwhile)."""
        tmp = aside_name(fdir)
        drop_dead_asides(fdir)
        try:
            build_index(tmp, uidnext, uidvalidity).close()
            place_index(tmp, idx, self._chown)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @staticmethod
    def _guids(con: sqlite3.Connection, uid: int | None = None) -> dict:
        try:
            if uid is None:
                return dict(con.execute("SELECT uid, guid FROM guids").fetchall())
            return dict(con.execute("SELECT uid, guid FROM guids WHERE uid=?", (uid,)).fetchall())
        except sqlite3.OperationalError:     # a read-only index from before GUIDs
            return {}

    def _cache_index(self, fdir: str, con: sqlite3.Connection) -> None:
        if len(self._idx) >= 64:
            for k in [k for k in self._idx if k not in self._held and k not in self._filling][:32]:
                self._idx.pop(k).close()
        self._idx[fdir] = con

    def _meta(self, con: sqlite3.Connection) -> dict:
        return dict(con.execute("SELECT k, v FROM meta").fetchall())

    def _check_folder(self, user: str, folder: str) -> tuple[str, int, int]:
        folder = check_folder_name(folder)
        if not (_is_text(user) and _is_text(folder)):
            self._user_row(user)            # NoSuchUser: the list holds only UTF-8 names
            raise NoSuchFolder(user, folder)
        hit = self._rows.get((user, folder))
        if hit is not None:
            return folder, hit[0], hit[1]
        row = self._db.execute("SELECT uidvalidity, subscribed FROM folders WHERE user=? AND name=?",
                               (user, folder)).fetchone()
        if row is None:
            self._user_row(user)
            raise NoSuchFolder(user, folder)
        return folder, row[0], row[1]

    # -- read side -----------------------------------------------------------
    def partitions(self) -> list[str]:
        return list(self.parts)

    def check_partition(self, partition: str, writing: bool = False) -> bool:
        """Also: a partition where the mailbox list places users but whose directory
        holds none of their hash directories is the empty mount point of a disk that
        is not mounted (or the wrong directory): for a writer too, which would make the
        directories of users it restores or creates on the empty mount point."""
        there = super().check_partition(partition, writing)
        if there:
            n = self._db.execute("SELECT COUNT(*) FROM users WHERE partition=?", (partition,)).fetchone()[0]
            ppath = self.partition_path(partition)
            if n and not any(_is_hash(e) for e in os.listdir(ppath)):
                from asm.store.partitions import PartitionUnavailable
                raise PartitionUnavailable(
                    f"partition {partition!r}: the mailbox list places {n} users on it but {ppath} holds "
                    f"none of their directories: is its disk mounted? (check partition:{partition}.path)")
        return there

    def users(self, partition: str) -> list[str]:
        self.check_partition(partition)
        return [r[0] for r in self._db.execute(
            "SELECT user FROM users WHERE partition=? ORDER BY user", (partition,))]

    def unlisted_users(self, partition: str) -> list[Unlisted]:
        ppath = self.partition_path(partition)
        known = {r[0] for r in self._db.execute("SELECT dir FROM users WHERE partition=?", (partition,))}
        known |= self.user_remains_dirs(partition)     # (a deletion cut short: no lost user)
        # a leftover directory without an index or a message file holds nothing to
        # back up, and is no sign of a lost list (holds_mail)
        return [Unlisted("user", partition, user, None, os.path.join(ppath, rel),
                         "a user directory the mailbox list does not know")
                for rel, user in scan_user_dirs(ppath)
                if rel not in known and holds_mail(os.path.join(ppath, rel))]

    def unlisted_folders(self, user: str) -> list[Unlisted]:
        part, _ = self._user_where(user)
        known = set(self.folder_names(user))
        # (what a deletion cut short left is no unknown folder: its next deletion finishes it)
        known |= {r[0] for r in self._db.execute("SELECT name FROM remains WHERE user=?", (user,))}
        out: list[Unlisted] = []

        def walk(d: str, name: str | None) -> None:
            # one read of each directory: its folder directories, and whether it holds
            # mail itself (an index or message directories: not an implied parent such
            # as =Work of Work/2023, which holds only its subfolders)
            subs, mail = [], False
            try:
                with os.scandir(d) as it:
                    for e in it:
                        n = e.name
                        if n[:1] == "=":
                            if len(n) > 1 and e.is_dir(follow_symlinks=False):
                                subs.append((n, e.path))
                        elif not mail and (n == "store.idx" or (_is_hash(n) and e.is_dir(follow_symlinks=False))):
                            mail = True
            except (FileNotFoundError, NotADirectoryError):
                return
            if name is not None and mail and name not in known:
                out.append(Unlisted("folder", part, user, name, d,
                                    "a folder directory the mailbox list does not know"))
            for dirname, path in sorted(subs):
                walk(path, (name + "/" if name is not None else "") + _dec(dirname[1:]))
        walk(self._user_path(user), None)
        return out

    def user_partition(self, user: str) -> str:
        return self._user_where(user)[0]

    def folder_names(self, user: str) -> list[str]:
        self._user_row(user)
        rows = self._db.execute("SELECT name FROM folders WHERE user=?", (user,)).fetchall()
        return sorted((r[0] for r in rows), key=lambda n: (n != "INBOX", n))

    def folders(self, user: str) -> list[FolderInfo]:
        return [self.folder(user, n) for n in self.folder_names(user)]

    def folder(self, user: str, folder: str) -> FolderInfo:
        folder, uidvalidity, subscribed = self._check_folder(user, folder)
        try:
            meta = self._meta(self._index(self._folder_dir(user, folder), (user, folder)))
        except (sqlite3.Error, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                # an index missing with every user directory of its partition: the disk
                # is not mounted, not the folder damaged (says so as a backup does)
                self.check_partition(self._user_where(user)[0])
            raise StoreError(f"the index of folder {folder!r} of user {user!r} cannot be read "
                             f"({exc}); the folder is damaged") from None
        return FolderInfo(folder, uidvalidity, meta["uidnext"], bool(subscribed))

    def _info(self, fdir: str, row, stat: bool = True, guid: str = "") -> MessageInfo:
        uid, flags, keywords, internaldate, stored, size = row
        path = self._msg_path(fdir, uid)
        dev = ino = 0
        nlink = 1
        if stat:
            try:
                st = os.stat(path)
                dev, ino, nlink = st.st_dev, st.st_ino, st.st_nlink
            except FileNotFoundError:
                pass
        return message_info(uid, frozenset(flags.split()) if flags else _NO_FLAGS,
                            tuple(keywords.split()) if keywords else (), internaldate, stored,
                            size, path, dev, ino, nlink, guid, stored, "")

    def readahead(self, user: str, folder: str) -> tuple | None:
        # the index and the hash directories of the folder's message files (its
        # subfolders, =name, are folders of their own)
        return [], [self._folder_dir(user, folder)], "[0-9a-f]{2,}"

    def snapshot(self, user: str, folder: str, since: float | None = None,
                 known=None) -> FolderSnapshot:
        with self.lock(user, folder):
            info = self.folder(user, folder)
            fdir = self._folder_dir(user, folder)
            con = self._index(fdir)
            seen = time.time()
            fp = _index_fingerprint(fdir)    # under the lock: no writer between it and the rows
            rows = con.execute(
                "SELECT uid, flags, keywords, internaldate, stored, size FROM msgs ORDER BY uid").fetchall()
            guids = self._guids(con)
        msgs = []
        for row in rows:
            # "stored" is when the message entered this folder in this store (an append,
            # a copy, a restore): what an incremental by date judges by
            light = (since is not None or known is not None) and (since is None or row[4] < since) \
                and (known is None or row[0] in known)
            if light:
                # not carried by an incremental: flags only (for the chain), no stat
                msgs.append(message_info(row[0], frozenset(row[1].split()) if row[1] else _NO_FLAGS,
                                         tuple(row[2].split()) if row[2] else (), 0.0, row[4], 0, "",
                                         0, 0, 1, guids.get(row[0], ""), row[4], ""))
            else:
                msgs.append(self._info(fdir, row, guid=guids.get(row[0], "")))
        snap = FolderSnapshot(info, msgs)
        if fp is not None and settled([fp], seen):
            snap.fingerprint = ["classic", info.uidvalidity, info.uidnext, fp]
        return snap

    def folder_unchanged(self, user: str, folder: str, fingerprint: list) -> FolderInfo | None:
        """True to the fingerprint (the folder's index is the same file, unchanged since
        a moment well before that snapshot, with no transaction in flight; its
        UIDVALIDITY in the mailbox list the same): the same UIDs and flags.  Message
        files are never changed in place."""
        if not (isinstance(fingerprint, list) and len(fingerprint) == 4
                and fingerprint[0] == "classic"):
            return None
        try:
            folder, uidvalidity, subscribed = self._check_folder(user, folder)
            if uidvalidity != fingerprint[1]:
                return None
            if _index_fingerprint(self._folder_dir(user, folder)) != fingerprint[3]:
                return None
        except (OSError, StoreError, sqlite3.Error):
            return None
        return FolderInfo(folder, uidvalidity, fingerprint[2], bool(subscribed))

    def message(self, user: str, folder: str, uid: int) -> MessageInfo:
        folder, _, _ = self._check_folder(user, folder)
        fdir = self._folder_dir(user, folder)
        con = self._index(fdir, (user, folder))
        row = con.execute(
            "SELECT uid, flags, keywords, internaldate, stored, size FROM msgs WHERE uid=?", (uid,)).fetchone()
        if row is None:
            raise MessageGone(user, folder, uid)
        return self._info(fdir, row, guid=self._guids(con, uid).get(uid, ""))

    # -- locking -----------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, user: str, folder: str, timeout: float | None = None):
        folder, uidvalidity, subscribed = self._check_folder(user, folder)
        fdir = self._folder_dir(user, folder)
        with self._mutex:
            held = self._held.get(fdir)
            if held is not None:
                self._held[fdir] = (held[0], held[1] + 1)
                reentered = True
            else:
                reentered = False
        if not reentered:
            fd = self._prelocked.pop(fdir, None)
            mark = None if fdir in self._idx else self._mark(user, folder)
            if fd is None:
                try:
                    try:
                        fd = _open_lock(fdir)
                    except FileNotFoundError:
                        if mark is None:
                            raise
                        # listed before its directory was durable (a power cut): made now
                        self._makedirs(fdir)
                        fd = _open_lock(fdir)
                except (FileNotFoundError, NotADirectoryError):
                    raise StoreError(f"folder {folder!r} of user {user!r}: its directory {fdir} is missing "
                                     f"although the mailbox list has the folder; the store is damaged "
                                     f"(is its partition's disk mounted?)") from None
                if not flock_wait(fd, self.lock_timeout if timeout is None else timeout):
                    os.close(fd)
                    raise LockTimeout(f"folder {folder!r} of user {user!r}")
                self._own(fd)               # store.lck, made by the open
            self._clean_tmp(user)
            with self._mutex:
                self._held[fdir] = (fd, 1)
                self._rows[(user, folder)] = [uidvalidity, subscribed]
            try:
                if fdir not in self._idx:
                    if _unmade(fdir, mark is not None):
                        self._adopt(fdir, uidvalidity)
                        self._making[fdir] = (user, folder)
                    elif mark is not None and fdir not in self._filling and mark != _pid[0] \
                            and not pid_alive(mark):
                        self._drop_stale_mark(user, folder, fdir)
                # everything done under the lock is one index transaction: a folder
                # restored under one lock costs one commit, not one per message
                self._index(fdir).execute("BEGIN IMMEDIATE")
            except BaseException as exc:
                with self._mutex:
                    del self._held[fdir]
                    self._rows.pop((user, folder), None)
                os.close(fd)
                if isinstance(exc, sqlite3.Error) and ("full" in str(exc) or (
                        "I/O" in str(exc) and self._disk_full())):
                    # the empty index of a folder never placed, built aside on a full disk
                    # (_adopt): lock() is no _store_errors operation, and imsrestore said
                    # "internal error (OperationalError: database or disk is full)", exit 70
                    raise StoreFull(f"the index of {user}/{folder}", _full_why(exc)) from None
                raise
        try:
            yield
        finally:
            with self._mutex:
                fd, depth = self._held[fdir]
                if depth > 1:
                    self._held[fdir] = (fd, depth - 1)
                else:
                    del self._held[fdir]
                    self._rows.pop((user, folder), None)
                    self._counters.pop(fdir, None)
                    try:
                        # each change is complete on its own (file renamed before its
                        # row), so what was done is committed even after an error
                        if fdir in self._filling:
                            try:
                                self._place_filled(fdir)
                            except (sqlite3.Error, OSError) as exc:
                                if "full" in str(exc) or ("I/O" in str(exc) and self._disk_full()) or \
                                        getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
                                    raise StoreFull(f"the index of {user}/{folder}", _full_why(exc)
                                                    if isinstance(exc, sqlite3.Error) else str(exc)) from None
                                raise StoreError(f"the index of {user}/{folder} failed: {exc}") from None
                        con = self._idx.get(fdir)
                        if con is not None and con.in_transaction:
                            try:
                                con.execute("COMMIT")
                            except sqlite3.Error as exc:
                                if con.in_transaction:
                                    with contextlib.suppress(sqlite3.Error):
                                        con.execute("ROLLBACK")
                                if "full" in str(exc) or ("I/O" in str(exc) and self._disk_full()):
                                    raise StoreFull(f"the index of {user}/{folder}", _full_why(exc)) from None
                                raise StoreError(f"the index of {user}/{folder} failed: {exc}") from None
                    finally:
                        os.close(fd)   # closing drops the flock

    # -- a restore under way (Store.mark_restoring) --------------------------------
    # Kept in the folder index's meta table, in the transaction that holds everything
    # written under the folder's lock (a folder restored under one lock is one commit,
    # or, made new, one index renamed into place): the mark is on disk exactly when the
    # restore's changes are.  Left there after (removing it would cost the index a
    # commit, four syncs): a reader never sees it, and it counts only for the same
    # archive while the journal has no record of that restore (Planner.plan); another
    # restore replaces it, or removes it in its own transaction when it merges.

    def mark_restoring(self, user: str, folder: str, mark: str) -> None:
        fdir = self._folder_dir(user, folder)
        if fdir not in self._held:
            raise StoreError(f"{user}/{folder}: marked as being restored without its lock")
        self._index(fdir).execute("INSERT OR REPLACE INTO meta VALUES ('restoring', ?)", (mark,))

    def restoring_marks(self, user: str, folder: str) -> list[str]:
        mark = self._meta(self._index(self._folder_dir(user, folder))).get("restoring")
        return [mark] if isinstance(mark, str) else []

    def unmark_restoring(self, user: str, folder: str, mark: str) -> None:
        # only under the folder's lock, in its one transaction (no commit of its own):
        # otherwise it stays, as said above
        try:
            fdir = self._folder_dir(user, folder)
        except StoreError:
            return
        if fdir in self._held:
            self._index(fdir).execute("DELETE FROM meta WHERE k='restoring' AND v=?", (mark,))

    # -- write side ----------------------------------------------------------
    def check_new_folder(self, user: str, folder: str) -> str:
        """Names are kept as UTF-8 text, each level a directory ``=LEVEL`` ('%' and '/'
        written as '%25', '%2F')."""
        folder = _utf8(check_folder_name(folder), "folder name")
        check_folder_levels(folder, ("=" + _enc(level) for level in folder.split("/")), "classic")
        try:
            base = self._user_path(user)
        except NoSuchUser:
            return folder           # (checked again when the folder is made, the user then there)
        return _index_fits(folder, user, base)

    def check_new_user(self, user: str) -> str:
        """A user ID is kept as UTF-8 text (the mailbox list is SQLite)."""
        if not _is_text(check_user_name(user)):
            from asm.archive.names import shown
            raise BadName(f"user ID '{shown(user)}' holds bytes that are not UTF-8, and the classic store "
                          f"keeps names as UTF-8 text")
        return check_user_level(user, os.path.basename(_user_dir(user)), "classic")

    def _new_user(self, user: str, partition: str) -> tuple[str, str]:
        """(partition path, user directory) of a user about to be made; its name checked,
        the partition writable, and no user of that name listed (else UserExists)."""
        _utf8(check_user_name(user), "user ID")
        check_user_level(user, os.path.basename(_user_dir(user)), "classic")
        ppath = self.partition_path(partition)
        self.check_partition(partition, writing=True)
        if self._db.execute("SELECT 1 FROM users WHERE user=?", (user,)).fetchone():
            raise UserExists(user)
        real = os.path.realpath(ppath)
        n = len(os.fsencode(os.path.join(real, _user_dir(user)))) + 1 + _longest_index()
        if n > INDEX_PATH_MAX:
            from asm.archive.names import shown
            raise BadName(f"user ID '{shown(user)}' is too long for the classic store's partition {partition!r} "
                          f"({real}): the path of its INBOX's index would be {n} bytes, at most {INDEX_PATH_MAX} "
                          f"(SQLite's limit); choose a shorter one (imsrestore -m maps an archived user to "
                          f"another ID), or a partition whose path is shorter")
        if self._user_remains(user):
            self._finish_user_remains(user)      # (a deletion cut short: its files go first)
        return ppath, _user_dir(user)

    @_store_errors
    def create_user(self, user: str, partition: str = "primary", uidvalidity: int | None = None,
                    guid: str = "") -> None:
        # (the classic store has no mailbox GUIDs: ``guid`` is ignored)
        ppath, d = self._new_user(user, partition)
        made: list = []
        self._makedirs(os.path.join(ppath, d), made)
        try:
            self._db.execute("INSERT INTO users (user, partition, dir) VALUES (?,?,?)", (user, partition, d))
        except sqlite3.IntegrityError:
            raise UserExists(user) from None        # created meanwhile by another process
        # a kill here leaves a user without INBOX: the next create_folder("INBOX") makes it
        # (and the user's directories made here are synced with INBOX's)
        self._made_dirs = made
        try:
            self.create_folder(user, "INBOX", uidvalidity=uidvalidity, subscribed=True)
        finally:
            self._made_dirs = []

    @_store_errors
    def create_user_to_fill(self, user: str, partition: str = "primary", uidvalidity: int | None = None,
                            guid: str = "") -> None:
        """The user and INBOX listed in one commit, INBOX with its mark (``unplaced``)
        and no index yet: it reads as the empty INBOX it is, and the restore that fills
        it next builds its index aside under its lock (:meth:`_adopt`) and places it,
        messages and all, when that lock is released: 2 syncs in all, where an index
        made at once (2) and then committed in place with the INBOX's messages (4 more)
        cost 6.  The lock is not taken here: the restore takes it under its restore
        lock, and a reader or a writer coming first finds an empty INBOX and places it."""
        ppath, d = self._new_user(user, partition)
        udir = os.path.join(ppath, d)
        self._makedirs(udir)
        try:
            with sqlitedb.immediate(self._db):
                uidvalidity = self._new_folder_uidvalidity(user, "INBOX", uidvalidity)
                self._db.execute("INSERT INTO users (user, partition, dir) VALUES (?,?,?)", (user, partition, d))
                # (an index a killed creation of this user left is not this INBOX's)
                _remove_index(os.path.join(udir, "store.idx"))
                self._db.execute("INSERT INTO folders (user, name, uidvalidity, subscribed) VALUES (?,?,?,1)",
                                 (user, "INBOX", uidvalidity))
                self._db.execute("INSERT OR REPLACE INTO unplaced VALUES (?,?,?)", (user, "INBOX", _pid[0]))
        except sqlite3.IntegrityError:
            raise UserExists(user) from None        # created meanwhile by another process

    def delete_user(self, user: str) -> None:
        if _is_text(user) and self._user_remains(user):
            if not self._db.execute("SELECT 1 FROM users WHERE user=?", (user,)).fetchone():
                self._finish_user_remains(user)      # the same command, after a kill: finished
                return
        part, rel = self._user_where(user)
        path = self._user_path(user)
        for k in [k for k in self._idx if k == path or k.startswith(path + os.sep)]:
            self._idx.pop(k).close()
        for k in [k for k in self._filling if k == path or k.startswith(path + os.sep)]:
            del self._filling[k]
        for k in [k for k in self._making if k == path or k.startswith(path + os.sep)]:
            del self._making[k]
        # the user goes from the mailbox list and its files with it: a SIGTERM or Ctrl-C
        # between the two once left its directory, unlisted, which nothing removed after
        # (the same command run again: "no such user")
        # A SIGKILL or a power cut cannot be deferred: the commit records the user's
        # remains (a row named "/PARTITION/DIR", which no folder name can be), synced
        # before any file goes, and the row goes only once they are gone.  What a kill
        # left is no "user directory the mailbox list does not know" (every backup
        # exited 1 naming it, and reconstruct -m, its advice, brought the deleted mail
        # back): the same command run again, a new user of that name, or reconstruct
        # removes it.
        with interrupts_deferred():
            self._db.execute("PRAGMA synchronous=FULL")     # (this commit: the WAL synced)
            try:
                with sqlitedb.immediate(self._db):
                    self._db.execute("DELETE FROM folders WHERE user=?", (user,))
                    self._db.execute("DELETE FROM unplaced WHERE user=?", (user,))
                    self._db.execute("DELETE FROM remains WHERE user=?", (user,))
                    self._db.execute("DELETE FROM holders WHERE user=?", (user,))
                    self._db.execute("DELETE FROM users WHERE user=?", (user,))
                    self._db.execute("INSERT OR REPLACE INTO remains VALUES (?,?)", (user, f"/{part}/{rel}"))
            finally:
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._where.pop(user, None)
            self._finish_user_remains(user)

    def _user_remains(self, user: str) -> list[tuple[str, str]]:
        """(partition, directory) of each deletion of ``user`` cut short."""
        return [tuple(r[0][1:].split("/", 1)) for r in self._db.execute(
            "SELECT name FROM remains WHERE user=? AND substr(name, 1, 1)='/'", (user,))]

    def user_remains_dirs(self, partition: str) -> set:
        """The directories (relative to the partition) of users whose deletion was cut short."""
        return {r[0][len(partition) + 2:] for r in self._db.execute(
            "SELECT name FROM remains WHERE substr(name, 1, ?)=?", (len(partition) + 2, f"/{partition}/"))}

    def _finish_user_remains(self, user: str) -> None:
        """Remove what a deletion of ``user`` cut short left (nobody lists it: nobody
        writes there), then its record."""
        for part, rel in self._user_remains(user):
            try:
                ppath = self.partition_path(part)
            except StoreError:
                ppath = None                # (the partition since dropped from msg.conf)
            if ppath is not None:
                remove_tree(os.path.join(ppath, rel))
                if os.path.lexists(os.path.join(ppath, rel)):
                    raise StoreError(f"cannot remove {os.path.join(ppath, rel)}, what the deletion of user "
                                     f"{user!r} left: remove it by hand")
            with sqlitedb.immediate(self._db):
                self._db.execute("DELETE FROM remains WHERE user=? AND name=?", (user, f"/{part}/{rel}"))

    def _new_folder_uidvalidity(self, user: str, folder: str, uidvalidity: int | None) -> int:
        """Inside the mailbox list's write transaction: FolderExists if the folder is
        listed, else its UIDVALIDITY (``uidvalidity``, or a new one), the counter raised
        to it (a restored one too: new ones go above it)."""
        if self._db.execute("SELECT 1 FROM folders WHERE user=? AND name=?", (user, folder)).fetchone():
            raise FolderExists(user, folder)
        row = self._db.execute("SELECT v FROM counters WHERE k='uidvalidity'").fetchone()
        last = row[0] if row else 0
        uidvalidity = uidvalidity or _uidvalidity(last)
        if last < uidvalidity <= UV_MAX:
            self._db.execute("INSERT OR REPLACE INTO counters VALUES ('uidvalidity', ?)", (uidvalidity,))
        return uidvalidity

    @_store_errors
    def create_folder(self, user: str, folder: str, uidvalidity: int | None = None,
                      uidnext: int = 1, subscribed: bool = False, guid: str = "") -> FolderInfo:
        folder = self.check_new_folder(user, folder)
        self._user_row(user)
        if self._remains(user, folder):
            self._finish_remains(user, folder)      # (a deletion cut short: its files go first)
        fdir = self._folder_dir(user, folder)
        # one mailbox-list transaction from the check to the row: two processes creating
        # the same folder cannot both make (or remove) its index, nor get one UIDVALIDITY
        with sqlitedb.immediate(self._db):
            uidvalidity = self._new_folder_uidvalidity(user, folder, uidvalidity)
            made = list(self._made_dirs)
            self._makedirs(fdir, made)
            idx = os.path.join(fdir, "store.idx")
            old = self._idx.pop(fdir, None)
            if old is not None:
                old.close()
            _remove_index(idx)       # left by a crash between index and mailbox list: start clean
            self._new_index(fdir, idx, max(1, uidnext), uidvalidity)
            # the index is durable in its directory (place_index); the directory itself
            # and those made for it, in theirs, before the row (one fsync for a folder
            # one level deep: a power cut must not leave it listed with its directory gone)
            self._sync_entries(made, fdir)
            self._cache_index(fdir, self._connect_index(idx, new=True))
            self._db.execute("INSERT INTO folders (user, name, uidvalidity, subscribed) VALUES (?,?,?,?)",
                             (user, folder, uidvalidity, int(subscribed)))
        return FolderInfo(folder, uidvalidity, max(1, uidnext), subscribed)

    @_store_errors
    def create_folder_to_fill(self, user: str, folder: str, uidvalidity: int | None = None,
                              uidnext: int = 1, subscribed: bool = False, guid: str = "") -> FolderInfo:
        """A new folder whose index is built aside until its lock is released, with the
        messages put in it meanwhile, then synced once and renamed into place: the
        folder appears whole or not at all, for one fdatasync and one directory fsync
        (made in place, its messages' commit cost four syncs more).  The folder is
        listed, and locked, from the start; until the rename a reader finds it empty,
        as it is, and a process that takes its lock after the builder was killed builds
        it again (:meth:`_adopt`).  The folder's lock is taken before the folder is
        listed: nobody else can take it first and find the index missing."""
        folder = self.check_new_folder(user, folder)
        self._user_row(user)
        if self._remains(user, folder):
            self._finish_remains(user, folder)      # (a deletion cut short: its files go first)
        fdir = self._folder_dir(user, folder)
        if fdir in self._held or fdir in self._prelocked:
            return self.create_folder(user, folder, uidvalidity, uidnext, subscribed, guid)
        fresh = not os.path.isdir(fdir)         # made now: nothing left in it to remove
        self._makedirs(fdir)
        fd = _open_lock(fdir)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # (someone holds the lock of a folder not listed: made the usual way)
            os.close(fd)
            return self.create_folder(user, folder, uidvalidity, uidnext, subscribed, guid)
        tmp = aside_name(fdir)
        con = None
        try:
            self._own(fd)
            with sqlitedb.immediate(self._db):
                uidvalidity = self._new_folder_uidvalidity(user, folder, uidvalidity)
                old = self._idx.pop(fdir, None)
                if old is not None:
                    old.close()
                if not fresh:
                    _remove_index(os.path.join(fdir, "store.idx"))  # left by a crash: start clean
                    drop_dead_asides(fdir)
                con = build_index(tmp, max(1, uidnext), uidvalidity, fresh=fresh)
                self._chown(tmp)
                self._db.execute("INSERT INTO folders (user, name, uidvalidity, subscribed) VALUES (?,?,?,?)",
                                 (user, folder, uidvalidity, int(subscribed)))
                # listed with its mark, in one commit: whatever of its directory and
                # aside index a power cut loses, the folder reads as the empty one it is
                # until its index is placed and a sync covered that (ClassicStore.sync)
                self._db.execute("INSERT OR REPLACE INTO unplaced VALUES (?,?,?)", (user, folder, _pid[0]))
        except BaseException:
            if con is not None:
                con.close()
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._filling[fdir] = tmp
        self._making[fdir] = (user, folder)
        self._prelocked[fdir] = fd
        self._cache_index(fdir, con)
        return FolderInfo(folder, uidvalidity, max(1, uidnext), subscribed)

    @_store_errors
    def delete_folder(self, user: str, folder: str) -> None:
        """The folder goes from the mailbox list, and its remains are recorded there
        (``remains``), in one commit synced before any of its files goes: a kill or a
        power cut at any later point leaves no folder, never a listed one that lost
        messages or its index, and what is left of its files is removed by the same
        call run again (:meth:`folder_remains`), or when a folder of that name is made
        again, before anything of the new one is written."""
        folder = check_folder_name(folder)
        if folder != "INBOX" and _is_text(user) and _is_text(folder) and self._remains(user, folder):
            self._finish_remains(user, folder)
            return
        folder, _, _ = self._check_folder(user, folder)
        if folder == "INBOX":
            # INBOX always exists: empty it instead
            with self.lock(user, folder):
                self.expunge(user, folder, [m.uid for m in self.messages(user, folder)])
            return
        fdir = self._folder_dir(user, folder)
        with self.lock(user, folder):
            self._db.execute("PRAGMA synchronous=FULL")     # (this commit: the WAL synced)
            try:
                with sqlitedb.immediate(self._db):
                    self._db.execute("DELETE FROM folders WHERE user=? AND name=?", (user, folder))
                    self._db.execute("DELETE FROM unplaced WHERE user=? AND name=?", (user, folder))
                    self._db.execute("INSERT OR REPLACE INTO remains VALUES (?,?)", (user, folder))
            finally:
                self._db.execute("PRAGMA synchronous=NORMAL")
            con = self._idx.pop(fdir, None)
            if con:
                con.close()
            self._filling.pop(fdir, None)       # (its index built aside goes with the rest)
            self._making.pop(fdir, None)
            self._clear_remains(fdir)
        self._end_remains(user, folder, fdir)

    def _remains(self, user: str, folder: str) -> bool:
        return self._db.execute("SELECT 1 FROM remains WHERE user=? AND name=?", (user, folder)).fetchone() is not None

    def folder_remains(self, user: str, folder: str) -> bool:
        # delete_folder unlists the folder first: killed after that, its files stay
        try:
            folder = check_folder_name(folder)
            return folder != "INBOX" and _is_text(user) and _is_text(folder) and self._remains(user, folder)
        except (StoreError, sqlite3.Error):
            return False

    def _finish_remains(self, user: str, folder: str) -> None:
        """Remove what a deletion cut short left of a folder no longer listed (under
        its lock file: nobody else makes or removes it meanwhile)."""
        fdir = self._folder_dir(user, folder)
        try:
            fd = _open_lock(fdir)
        except (FileNotFoundError, NotADirectoryError):
            fd = None       # nothing left but the record
        try:
            if fd is not None:
                if not flock_wait(fd, self.lock_timeout):
                    raise LockTimeout(f"folder {folder!r} of user {user!r}")
                if self._remains(user, folder):     # (not finished meanwhile by another)
                    self._clear_remains(fdir)
        finally:
            if fd is not None:
                os.close(fd)
        self._end_remains(user, folder, fdir)

    @staticmethod
    def _clear_remains(fdir: str) -> None:
        clear_remains(fdir)

    def _end_remains(self, user: str, folder: str, fdir: str) -> None:
        """The folder's directory goes when no subfolder is left, then its record."""
        end_remains_dir(fdir)
        with sqlitedb.immediate(self._db):
            self._db.execute("DELETE FROM remains WHERE user=? AND name=?", (user, folder))

    @_store_errors
    def set_folder(self, user: str, folder: str, *, uidvalidity: int | None = None,
                   uidnext: int | None = None, subscribed: bool | None = None,
                   guid: str | None = None) -> FolderInfo:
        folder, _, _ = self._check_folder(user, folder)
        with self.lock(user, folder):
            row = self._rows[(user, folder)]
            if uidvalidity is not None:
                self._db.execute("UPDATE folders SET uidvalidity=? WHERE user=? AND name=?",
                                 (uidvalidity, user, folder))
                self._index(self._folder_dir(user, folder)).execute(
                    "INSERT OR REPLACE INTO meta VALUES ('uidvalidity', ?)", (uidvalidity,))
                row[0] = uidvalidity
            if subscribed is not None:
                self._db.execute("UPDATE folders SET subscribed=? WHERE user=? AND name=?",
                                 (int(subscribed), user, folder))
                row[1] = int(subscribed)
            if uidnext is not None:
                fdir = self._folder_dir(user, folder)
                con = self._index(fdir)
                top = con.execute("SELECT COALESCE(MAX(uid), 0) FROM msgs").fetchone()[0]
                con.execute("UPDATE meta SET v=? WHERE k='uidnext'", (max(uidnext, top + 1),))
                self._counters.pop(fdir, None)
            return self.folder(user, folder)

    def _tmp_dir(self, user: str) -> str:
        """``<partition>/.ims-tmp``: where message files are written before they are
        renamed to ``<uid>.msg``.  One directory per partition, so what a killed writer
        left is found without walking any folder (see :meth:`_clean_tmp`)."""
        part, _ = self._user_where(user)
        d = os.path.join(self.partition_path(part), TMP_DIR)
        if d not in self._tmp_dirs:
            if not os.path.isdir(d):
                self._makedirs(d)
            self._tmp_dirs.add(d)
        return d

    def _clean_tmp(self, user: str) -> None:
        """Remove what writers that are gone left in the partition's temporary
        directory: once per process and partition, at the first folder lock."""
        part, _ = self._user_where(user)
        if part in self._tmp_clean:
            return
        self._tmp_clean.add(part)
        d = os.path.join(self.partition_path(part), TMP_DIR)
        try:
            names = os.listdir(d)
        except OSError:
            return
        for name in names:
            pid_s = name.partition("-")[0]
            if pid_s.isdigit() and not pid_alive(int(pid_s)):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(d, name))

    def _write_file(self, user: str, fdir: str, uid: int, src: BinaryIO | None, link_from: str | None,
                    internaldate: float) -> tuple[str, os.stat_result]:
        """Write (or hard-link) the message to a temporary name and rename it to its
        ``<hh>/<uid>.msg``; returns its path and stat.  Directories known to be there
        are not looked at again: one missing (made, or removed by someone) is made when
        the open or the rename says so."""
        path = self._msg_path(fdir, uid)
        tdir = self._tmp_dir(user)
        self._tmp_seq += 1
        tmp = os.path.join(tdir, f"{_pid[0]}-{uid}-{self._tmp_seq:x}{self._tmp_tag}")
        opened = None
        try:
            if link_from is not None:
                try:
                    os.link(link_from, tmp)
                    self._rename_into(tmp, path)
                    return path, os.stat(path)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                        raise
                    src = opened = open(link_from, "rb")  # another filesystem: copy instead
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileNotFoundError:
                self._tmp_dirs.discard(tdir)
                self._makedirs(self._tmp_dir(user))
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                copy_to_fd(src, fd)
                os.utime(fd, (internaldate, internaldate))
                if self._give:
                    os.fchown(fd, *self.owner)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            self._rename_into(tmp, path)
            return path, st
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        finally:
            if opened is not None:
                opened.close()

    def _rename_into(self, tmp: str, path: str) -> None:
        """Rename ``tmp`` to ``path``, making its hash directory when it is not there."""
        try:
            os.replace(tmp, path)
        except FileNotFoundError:
            hdir = os.path.dirname(path)
            if os.path.isdir(hdir) or not os.path.lexists(tmp):
                raise
            self._makedirs(hdir)
            os.replace(tmp, path)

    single_copies = True

    def identity_differences(self, m: MessageInfo, guid: str, basename: str, pop3_uidl: str,
                             pop3_order: int) -> list[tuple[str, object, object]]:
        # (the classic store keeps a message's GUID as given, and no base name or POP3 field)
        return [("GUID", m.guid, guid)] if guid and m.guid != guid else []

    @_store_errors
    def append(self, user: str, folder: str, src: BinaryIO | None, *, uid: int | None = None,
               flags: Iterable[str] = (), keywords: Iterable[str] = (),
               internaldate: float | None = None, stored: float | None = None,
               link_from: str | None = None, size_hint: int | None = None,
               guid: str | None = None, fill: bool = False, basename: str | None = None,
               pop3_uidl: str | None = None, pop3_order: int | None = None) -> MessageInfo:
        folder, _, _ = self._check_folder(user, folder)
        now = time.time()
        guid = guid or os.urandom(16).hex()
        internaldate = now if internaldate is None else internaldate
        stored = now if stored is None else stored
        sys_flags, extra = split_flags(list(flags) + list(keywords))
        _utf8_keywords(extra)
        with self.lock(user, folder):
            fdir = self._folder_dir(user, folder)
            con = self._index(fdir)
            ctr = self._counters.get(fdir)
            if ctr is None:
                ctr = self._counters[fdir] = [
                    self._meta(con)["uidnext"],
                    con.execute("SELECT COALESCE(MAX(uid), 0) FROM msgs").fetchone()[0]]
            uidnext, top = ctr
            if uid is None:
                uid = max(uidnext, top + 1)
            elif uid <= top and (not fill or con.execute("SELECT 1 FROM msgs WHERE uid=?", (uid,)).fetchone()):
                raise UidInUse(user, folder, uid)
            path, st = self._write_file(user, fdir, uid, src, link_from, internaldate)
            size = st.st_size
            con.execute("INSERT INTO msgs VALUES (?,?,?,?,?,?)",
                        (uid, _flags_text(sys_flags), " ".join(extra), internaldate, stored, size))
            con.execute("INSERT OR REPLACE INTO guids VALUES (?,?)", (uid, guid))
            ctr[0], ctr[1] = max(uidnext, uid + 1), max(top, uid)
            if ctr[0] != uidnext:
                con.execute("UPDATE meta SET v=? WHERE k='uidnext'", (ctr[0],))
            return MessageInfo(uid, sys_flags, extra, internaldate, stored, size, path,
                               st.st_dev, st.st_ino, st.st_nlink, guid, stored)

    @_store_errors
    def set_flags(self, user: str, folder: str, uid: int, flags: Iterable[str],
                  keywords: Iterable[str] = ()) -> MessageInfo:
        folder, _, _ = self._check_folder(user, folder)
        sys_flags, extra = split_flags(list(flags) + list(keywords))
        _utf8_keywords(extra)
        with self.lock(user, folder):
            fdir = self._folder_dir(user, folder)
            cur = self._index(fdir).execute("UPDATE msgs SET flags=?, keywords=? WHERE uid=?",
                                            (_flags_text(sys_flags), " ".join(extra), uid))
            if cur.rowcount == 0:
                raise MessageGone(user, folder, uid)
        return self.message(user, folder, uid)

    @_store_errors
    def expunge(self, user: str, folder: str, uids: Iterable[int]) -> int:
        """The rows go, and their UIDs are recorded in the index's ``expunged`` table, in
        one commit (the one an expunge always cost), before the files are unlinked: a
        kill or a power cut after it leaves files that the table names, which the next
        expunge of the folder (a restore run again makes one), or reconstruct, removes;
        never a listed message without its file.  The record is dropped by that next
        expunge, in its own commit: no commit is added."""
        folder, _, _ = self._check_folder(user, folder)
        uids = sorted(set(uids))
        with self.lock(user, folder):
            fdir = self._folder_dir(user, folder)
            con = self._index(fdir)
            self._finish_expunged(con, fdir)
            gone = []
            for i in range(0, len(uids), 500):
                chunk = uids[i:i + 500]
                q = ",".join("?" * len(chunk))
                gone += [r[0] for r in con.execute(f"SELECT uid FROM msgs WHERE uid IN ({q})", chunk)]
            if gone:
                con.execute(_EXPUNGED)
            for i in range(0, len(gone), 500):
                chunk = gone[i:i + 500]
                q = ",".join("?" * len(chunk))
                con.execute(f"INSERT OR IGNORE INTO expunged SELECT uid FROM msgs WHERE uid IN ({q})", chunk)
                con.execute(f"DELETE FROM msgs WHERE uid IN ({q})", chunk)
                con.execute(f"DELETE FROM guids WHERE uid IN ({q})", chunk)
            self._counters.pop(fdir, None)
            if gone and con.in_transaction:
                con.execute("COMMIT")        # rows go first: a crash never lists a missing file
                con.execute("BEGIN IMMEDIATE")
            for uid in gone:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._msg_path(fdir, uid))
        return len(gone)

    def _finish_expunged(self, con: sqlite3.Connection, fdir: str) -> None:
        """Under the folder's lock, in its transaction: the files of an earlier expunge
        (``expunged``) are removed, unless a message took the UID again since (a
        restore puts an archived message at its UID), then the record."""
        try:
            left = [r[0] for r in con.execute(
                "SELECT uid FROM expunged WHERE uid NOT IN (SELECT uid FROM msgs)")]
            if not left and not con.execute("SELECT 1 FROM expunged LIMIT 1").fetchone():
                return
        except sqlite3.OperationalError:
            return                      # (an index no expunge has recorded in)
        for uid in left:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._msg_path(fdir, uid))
        con.execute("DELETE FROM expunged")

    # -- deliveries --------------------------------------------------------
    def _queue_dir(self, user: str) -> str:
        return os.path.join(self.root, "queue", _user_dir(user))

    @_store_errors
    def hold_deliveries(self, user: str, holder: str | None = None) -> None:
        self._user_row(user)
        with sqlitedb.immediate(self._db):
            self._db.execute("INSERT OR IGNORE INTO holders VALUES (?,?)", (user, holder or this_holder()))
            self._db.execute("UPDATE users SET held=1 WHERE user=?", (user,))

    def deliveries_held(self, user: str) -> bool:
        return bool(self._user_row(user)[2])

    def _other_holders(self, user: str, holder: str | None) -> list[str]:
        """Holders of ``user``'s deliveries but ``holder``; gone ones are forgotten."""
        rows = [r[0] for r in self._db.execute("SELECT holder FROM holders WHERE user=?", (user,))]
        gone = [h for h in rows if h == holder or holder is None or holder_gone(h)]
        for h in gone:
            self._db.execute("DELETE FROM holders WHERE user=? AND holder=?", (user, h))
        return [h for h in rows if h not in gone]

    @_store_errors
    def release_deliveries(self, user: str, holder: str | None = None) -> int:
        with sqlitedb.immediate(self._db):
            if self._other_holders(user, holder):
                return 0
        n = self._drain(user)
        with sqlitedb.immediate(self._db):
            if self._other_holders(user, holder):
                return n                       # held again meanwhile: the new holder releases
            self._db.execute("UPDATE users SET held=0 WHERE user=?", (user,))
        return n + self._drain(user)           # what arrived while we were draining

    def _drain(self, user: str) -> int:
        """Store what was queued.  ``<name>.delivering`` is made before a message is
        stored (as a hard link to its queued file) and removed with it from the queue: a
        drain killed in between left it, and the message is stored again only if its
        folder lacks that file."""
        qdir = self._queue_dir(user)
        if not os.path.isdir(qdir):
            return 0
        # one drain at a time: two restores of the user ending together (the last holder
        # draining while another held, restored and released) read the same queue, and
        # the second failed on a message the first had stored and taken away meanwhile
        fd = os.open(os.path.join(qdir, ".drain.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        try:
            if not flock_wait(fd, self.lock_timeout):
                raise LockTimeout(f"the delivery queue of user {user!r}")
            self._own(fd)
            return self._drain_held(user, qdir)
        finally:
            os.close(fd)

    def _drain_held(self, user: str, qdir: str) -> int:
        n = 0
        for name in sorted(e for e in os.listdir(qdir) if e.endswith(".json")):
            meta_path = os.path.join(qdir, name)
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            msg_path = meta_path[:-5] + ".msg"
            mark = meta_path[:-5] + ".delivering"
            folder = meta["folder"]
            if not self.exists(user, folder):
                folder = "INBOX"    # not made by the restore: as imsdeliver unheld, and Maildir
            st = os.stat(msg_path)
            if not (os.path.exists(mark) and any((m.dev, m.ino) == (st.st_dev, st.st_ino)
                                                 for m in self.messages(user, folder))):
                open(mark, "wb").close()
                self.append(user, folder, None, link_from=msg_path, internaldate=meta["internaldate"],
                            stored=meta["stored"])
                n += 1
            os.unlink(msg_path)
            os.unlink(meta_path)
            os.unlink(mark)
        return n

    def _enqueue(self, user: str, src: BinaryIO, first: str | None, folder: str, internaldate: float,
                 now: float) -> str:
        """Queue the message for ``user`` (a hard link to ``first``, the copy queued or
        stored for a user before, when there is one); its queued file's path."""
        qdir = self._queue_dir(user)
        self._makedirs(qdir)
        base = os.path.join(qdir, f"{time.time_ns():020d}-{os.urandom(4).hex()}")
        if first is not None:
            os.link(first, base + ".msg")
        else:
            with open(base + ".msg.tmp", "wb") as f:
                shutil.copyfileobj(src, f, CHUNK)
            os.replace(base + ".msg.tmp", base + ".msg")
        with open(base + ".json.tmp", "w", encoding="utf-8") as f:
            json.dump({"folder": folder, "internaldate": internaldate, "stored": now}, f)
        os.replace(base + ".json.tmp", base + ".json")
        return base + ".msg"

    @_store_errors
    def _deliver_each(self, folder, users, src, internaldate, now, out: dict) -> None:
        first: str | None = None
        for user in users:
            queued = None
            if self.deliveries_held(user):
                # queued in the same write transaction that saw the hold: a release's
                # "held=0" waits for it, so its last drain finds the message (checked
                # outside, a release ending in between left it queued for good while
                # imsdeliver said "queued")
                with sqlitedb.immediate(self._db):
                    if self.deliveries_held(user):
                        queued = self._enqueue(user, src, first, folder, internaldate, now)
            if queued is not None:
                out[user] = None
                first = first or queued
                continue
            if not self.exists(user, folder):
                self.create_folder(user, folder)
            info = self.append(user, folder, None if first else src, internaldate=internaldate,
                               stored=now, link_from=first)
            first = first or info.path
            out[user] = info

    def _disk_full(self) -> bool:
        """Whether a filesystem holding the store has (almost) no space left."""
        for d in self.sync_dirs():
            try:
                st = os.statvfs(d)
            except OSError:
                continue
            if st.f_bavail * st.f_frsize < 256 * 1024:
                return True
        return False

    def sync_dirs(self) -> list[str]:
        """The partitions and the store root (mailbox list, delivery queue)."""
        return super().sync_dirs() + [self.root]

    def close(self) -> None:
        for con in self._idx.values():
            con.close()
        self._idx.clear()
        for fd in self._prelocked.values():
            os.close(fd)
        self._prelocked.clear()
        if self._covered:
            # (a sync covered their indexes; the ones placed since keep their mark, which
            # the next lock of the folder drops once this process is gone)
            with contextlib.suppress(sqlite3.Error):
                self._drop_marks(self._covered)
            self._covered = []
        self._db.close()


@hookimpl
def ims_store_drivers():
    return {"classic": ClassicStore}
