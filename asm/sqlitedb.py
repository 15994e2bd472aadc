"""SQLite as every ims-asm database uses it (the classic mailbox list and folder
indexes, the restore journal): several processes at once, none of them ever failing
with "database is locked" while another only holds it for a moment.

* Every connection waits for the others (``busy_timeout``), also while it sets itself
  up: its journal mode and schema are retried until the deadline, since SQLite answers
  a journal-mode change made while another connection writes with SQLITE_BUSY at once.
* A write transaction starts with ``BEGIN IMMEDIATE`` (:func:`immediate`): it takes
  the write lock when it begins, so it never fails half-way when it would have to
  upgrade a read lock another writer made stale (that error skips the busy handler).
"""
from __future__ import annotations

import contextlib
import sqlite3
import time
from typing import Iterator


def _busy(exc: sqlite3.Error) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def connect(path: str, timeout: float, *, journal_mode: str = "WAL", synchronous: str = "NORMAL",
            schema: str = "", check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode that waits ``timeout`` seconds for other writers,
    in ``journal_mode`` with ``synchronous``, with ``schema`` (idempotent DDL) applied."""
    con = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=check_same_thread)
    try:
        con.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        setup = [f"PRAGMA journal_mode={journal_mode}", f"PRAGMA synchronous={synchronous}"]
        retry(lambda: [con.execute(s) for s in setup], timeout)
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
