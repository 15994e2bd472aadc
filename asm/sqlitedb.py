"""SQLite as every ims-asm database uses it (the classic mailbox list and folder
indexes, the restore journal): several processes at once, none of them ever failing
with "database is locked" while another only holds it for a moment.

* Every connection waits for the others (``busy_timeout``), also while it sets itself
  up: its journal mode and schema are retried until the deadline, since SQLite answers
  a journal-mode change made while another connection writes with SQLITE_BUSY at once.
* A write transaction starts with ``BEGIN IMMEDIATE`` (:func:`immediate`): it takes
  the write lock when it begins, so it never fails half-way when it would have to
  upgrade a read lock another writer made stale (that error skips the busy handler).
* On a full disk a WAL database cannot be opened as usual: SQLite must make and size
  its ``-shm`` file (32 KiB) and fails with "disk I/O error".  The connection is then
  made again in ``locking_mode=EXCLUSIVE``, where SQLite keeps the WAL index in its own
  memory (no ``-shm``) and holds an exclusive lock on the database for the connection's
  life.  It reads what is committed, also in a ``-wal`` a writer left, and no other
  process can write, or checkpoint into the file, while it reads (they wait, as for any
  writer, and then fail "locked"); its own writes fail "database or disk is full".  Not
  ``mode=ro`` (it needs the ``-shm`` too) nor ``immutable=1`` (it ignores the ``-wal``,
  and a writer that comes once space is freed changes the file under it).
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from typing import Iterator


def _busy(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


FULL_BELOW = 256 * 1024     # bytes free under which a filesystem counts as full


def nearly_full(path: str) -> bool:
    """Whether the filesystem holding ``path`` (or its nearest existing parent) has
    (almost) no space left."""
    d = os.path.abspath(path)
    while not os.path.exists(d) and os.path.dirname(d) != d:
        d = os.path.dirname(d)
    try:
        st = os.statvfs(d)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < FULL_BELOW


#: SQLite's unix VFS opens no database whose full path (symbolic links resolved) is longer
#: than its MAX_PATHNAME, 512 bytes, less the 8 its journal's name adds: it fails "unable
#: to open database file", which reads as a permission or a disk problem.
PATH_MAX = 512 - 8


def path_too_long(path: str) -> str | None:
    """Why SQLite cannot open the database ``path`` when its path is too long for it
    (PATH_MAX), else None."""
    try:
        n = len(os.fsencode(os.path.realpath(path)))
    except (OSError, ValueError):
        return None
    if n <= PATH_MAX:
        return None
    return f"its path is {n} bytes long (links resolved), longer than SQLite opens ({PATH_MAX} bytes)"


def disk_full(exc: sqlite3.Error, path: str) -> bool:
    """Whether SQLite's error on the database ``path`` means its disk is full: it says
    so, or it reports a ``-wal``/``-shm`` it could not make or grow there as an I/O error."""
    text = str(exc)
    return "full" in text or ("I/O" in text and nearly_full(path))


def connect(path: str, timeout: float, *, journal_mode: str = "WAL", synchronous: str = "NORMAL",
            schema: str = "", check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode that waits ``timeout`` seconds for other writers,
    in ``journal_mode`` with ``synchronous``, with ``schema`` (idempotent DDL) applied.
    A WAL database on a full disk is opened with its WAL index in memory, holding it
    exclusively (see the module's docstring)."""
    try:
        return _connect(path, timeout, [f"PRAGMA journal_mode={journal_mode}", f"PRAGMA synchronous={synchronous}"],
                        schema, check_same_thread)
    except sqlite3.OperationalError as exc:
        long = path_too_long(path)
        if long:
            # (else "unable to open database file", read as permissions or a disk: an
            # IMS_HOME 480 bytes deep made the classic store's mailbox list fail so)
            raise sqlite3.OperationalError(f"{exc}: {long}; give it a shorter path") from None
        if journal_mode != "WAL" or not os.path.exists(path) or not disk_full(exc, path):
            raise
        try:
            return _connect(path, timeout, ["PRAGMA locking_mode=EXCLUSIVE",
                                            "SELECT count(*) FROM sqlite_master"], schema, check_same_thread)
        except sqlite3.Error:
            raise exc from None


def _connect(path: str, timeout: float, setup: list, schema: str, check_same_thread: bool) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=check_same_thread)
    try:
        con.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        retry(lambda: [con.execute(s).fetchall() for s in setup], timeout)
        if schema:
            retry(lambda: con.executescript(schema), timeout)
    except BaseException:
        con.close()
        raise
    return con


def retry(fn, timeout: float):
    """Run ``fn`` again while SQLite says another connection holds the database, up to
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() >= deadline:
                raise
        import random                   # only when the database is busy (startup time)
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.2)


@contextlib.contextmanager
def immediate(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction holding the write lock from its start; rolled back when the
    body raises."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        if con.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
