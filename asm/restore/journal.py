"""The chain journal, ``$IMS_HOME/data/restore-journal.db``: per folder, the archive
restored into it last and what that left (docs/operations.md, "Incremental chains")."""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import sqlite3
from dataclasses import dataclass

from asm import sqlitedb
from asm.archive import names
from asm.config import make_dirs
from asm.errors import EXIT_LOCKED, EXIT_NOSPACE, EXIT_STORE, ImsError

BUSY_MS = 30_000            # how long a statement waits for another restore's transaction


class JournalError(ImsError):
    """The restore journal cannot be read or written (it is the installation's, in
    $IMS_HOME/data): a full disk, another process holding it too long, damage."""

    status = EXIT_STORE


def _journal_errors(fn):
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as exc:
            text = str(exc)
            if sqlitedb.disk_full(exc, self.path):
                raise JournalError(f"the restore journal {self.path} cannot be written: its disk is full "
                                   f"(SQLite: {text}): free space there and run the same command again",
                                   status=EXIT_NOSPACE) from None
            status = EXIT_LOCKED if "locked" in text else EXIT_STORE
            raise JournalError(f"the restore journal {self.path} failed: {text}", status=status) from None
        except OSError as exc:
            status = EXIT_NOSPACE if exc.errno in (errno.ENOSPC, errno.EDQUOT) else EXIT_STORE
            raise JournalError(f"cannot write the restore journal {self.path}: {exc.strerror or exc}",
                               status=status) from None
    return wrapper


@dataclass(frozen=True)
class JournalRow:
    """What the journal knows of one folder."""

    uidvalidity: int | None     # the folder's, when the archive was restored into it
    uidnext: int | None         # ... and its UIDNEXT then
    archive_id: str | None      # the archive restored last
    created: float | None       # when that archive was taken
    since: float | None         # its -d date (None: a full backup)
    mirror: bool                # the folder then held exactly that archive's state
    running: str | None = None  # an archive whose restore into the folder began and has
    running_mode: str | None = None  # not finished (killed, stopped): its id and mode
    chain: tuple = ()           # the ancestors of the archive restored last (full first):
                                # archives the folder has in it already, recognised on a rerun
    count: int | None = None    # messages the folder held when the restore ended
    source: str | None = None   # the folder it was made beside (-n): not the archive's folder
                                # of its own name, never removed as one
    gaps: int = 0               # the restore that ended (running None) made or continued the
                                # folder exactly but could not write this many of the archive's
                                # messages (links whose first copy a stream could not keep, a
                                # message the store refused): their archived UIDs are free
    acl_owed: str | None = None  # the access control list a restore could not give the
                                # folder (its lock held): the same command run again gives it


class Journal:
    """The archive last restored into each folder, and whether the folder then held
    exactly that archive's state (``mirror``): only such a folder can continue a chain,
    since continuing one expunges what the next archive does not list.

    A restore that creates or continues a folder says so first (:meth:`start`), and
    :meth:`put` ends it: a run killed in between leaves ``running`` set, and the same
    command run again resumes the folder in that mode instead of merging into it."""

    @_journal_errors
    def __init__(self, path: str):
        self.path = path
        make_dirs(os.path.dirname(path))           # $IMS_HOME/data: 0755 whatever the umask
        self.db = sqlitedb.connect(path, BUSY_MS / 1000, schema="""CREATE TABLE IF NOT EXISTS restored (
            user TEXT, folder TEXT, uidvalidity INTEGER, uidnext INTEGER,
            archive_id TEXT, created REAL, since REAL, mirror INTEGER NOT NULL DEFAULT 0,
            running TEXT, running_mode TEXT, chain TEXT, count INTEGER, run TEXT, source TEXT,
            run_uid INTEGER, gaps INTEGER, acl_owed TEXT, PRIMARY KEY (user, folder));
            CREATE TABLE IF NOT EXISTS runs (signature TEXT PRIMARY KEY, token TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS users_held (user TEXT PRIMARY KEY, archive_id TEXT, created REAL,
            chain TEXT);""")
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(restored)")}
        for col, typ in (("running", "TEXT"), ("running_mode", "TEXT"), ("chain", "TEXT"),
                         ("count", "INTEGER"), ("run", "TEXT"), ("source", "TEXT"), ("run_uid", "INTEGER"),
                         ("gaps", "INTEGER"), ("acl_owed", "TEXT")):
            if col not in cols:             # a journal written by an older ims-asm
                try:
                    sqlitedb.retry(lambda: self.db.execute(f"ALTER TABLE restored ADD COLUMN {col} {typ}"),
                                   BUSY_MS / 1000)
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):
                        raise

    def _tx(self):
        """A write transaction of its own, or, inside :meth:`together`'s, that one."""
        return contextlib.nullcontext() if self.db.in_transaction else sqlitedb.immediate(self.db)

    @_journal_errors
    def together(self, records) -> None:
        """Make the journal changes ``records`` (callables: :meth:`put`, :meth:`forget`,
        ...) in one transaction: one commit for the many folders a sync of the store made
        durable (asm/restore/engine.py, Restorer._record_done); none if one fails."""
        with sqlitedb.immediate(self.db):
            for record in records:
                record()

    # names are keys as names.to_db keeps them: any name the filesystem allows, losslessly

    @_journal_errors
    def get(self, user: str, folder: str) -> JournalRow | None:
        row = self.db.execute("SELECT uidvalidity, uidnext, archive_id, created, since, mirror, "
                              "running, running_mode, chain, count, source, gaps, acl_owed FROM restored WHERE user=? "
                              "AND folder=?", (names.to_db(user), names.to_db(folder))).fetchone()
        if row is None:
            return None
        uidvalidity, uidnext, archive_id, created, since, mirror, running, running_mode, chain, count, source, \
            gaps, acl_owed = row
        return JournalRow(uidvalidity, uidnext, archive_id, created, since, bool(mirror),
                          running, running_mode, tuple((chain or "").split()), count,
                          names.from_db(source) if source is not None else None, gaps or 0,
                          names.from_db(acl_owed) if acl_owed is not None else None)

    @_journal_errors
    def folders(self, user: str) -> list[str]:
        """The folders of ``user`` the journal knows."""
        return [names.from_db(r[0]) for r in self.db.execute(
            "SELECT folder FROM restored WHERE user=?", (names.to_db(user),))]

    @_journal_errors
    def users(self) -> list[str]:
        """The users the journal knows a folder of."""
        return [names.from_db(r[0]) for r in self.db.execute("SELECT DISTINCT user FROM restored")]

    @_journal_errors
    def forget_user(self, user: str) -> None:
        """The user was removed: every row of its folders goes, and the archive that held it."""
        with self._tx():
            self.db.execute("DELETE FROM restored WHERE user=?", (names.to_db(user),))
            self.db.execute("DELETE FROM users_held WHERE user=?", (names.to_db(user),))

    # -- the newest archive restored here that held a user whole (its every folder) ------
    # A disaster recovery restores one chain per backup group (imsrestore --recovery): a
    # user that moved between groups is in both, and comes back as the newer had it.

    @_journal_errors
    def held_by(self, user: str) -> tuple | None:
        """(archive id, created, chain ids) of the newest archive restored here that held
        ``user`` whole, or None."""
        row = self.db.execute("SELECT archive_id, created, chain FROM users_held WHERE user=?",
                              (names.to_db(user),)).fetchone()
        return None if row is None else (row[0], row[1], tuple((row[2] or "").split()))

    @_journal_errors
    def put_held(self, user: str, header: dict) -> None:
        """The archive with ``header`` held ``user`` whole and was restored: kept when it
        is not older than the one the journal names."""
        from asm.backupstate import header_chain
        self.db.execute("INSERT INTO users_held (user, archive_id, created, chain) VALUES (?,?,?,?) "
                        "ON CONFLICT (user) DO UPDATE SET archive_id=excluded.archive_id, "
                        "created=excluded.created, chain=excluded.chain "
                        "WHERE users_held.created IS NULL OR excluded.created >= users_held.created",
                        (names.to_db(user), header.get("archive_id"), header.get("created"),
                         " ".join(header_chain(header))))

    @_journal_errors
    def forget(self, user: str, folder: str) -> None:
        self.db.execute("DELETE FROM restored WHERE user=? AND folder=?", (names.to_db(user), names.to_db(folder)))

    @_journal_errors
    def start(self, user: str, folder: str, header: dict, mode: str, beside: tuple | None = None) -> None:
        """The restore of the archive with ``header`` into the folder begins, in ``mode``.
        ``beside``: (run token, source folder) of a folder a -n restore makes beside
        ``source`` (see :meth:`begin_run`, :meth:`beside_of`)."""
        key = (names.to_db(user), names.to_db(folder))
        # one statement (a row made, or its running set): the per-folder work of a restore
        with self._tx():
            if beside is None:
                self.db.execute("INSERT INTO restored (user, folder, mirror, running, running_mode) "
                                "VALUES (?,?,0,?,?) ON CONFLICT (user, folder) DO UPDATE SET "
                                "running=excluded.running, running_mode=excluded.running_mode",
                                (*key, header.get("archive_id"), mode))
            else:
                self.db.execute("INSERT INTO restored (user, folder, mirror, running, running_mode, run, source) "
                                "VALUES (?,?,0,?,?,?,?) ON CONFLICT (user, folder) DO UPDATE SET "
                                "running=excluded.running, running_mode=excluded.running_mode, "
                                "run=excluded.run, source=excluded.source",
                                (*key, header.get("archive_id"), mode, beside[0], names.to_db(beside[1])))

    @_journal_errors
    def owe_acl(self, user: str, folder: str, acl: str | None) -> None:
        """The restore could not give the folder the access control list ``acl`` (its
        lock held past store.locktimeout): kept until one gives it (None), so that the
        same command run again, which finds the folder's mail restored, gives it then.
        (:meth:`put` leaves it as it is.)"""
        key = (names.to_db(user), names.to_db(folder))
        with sqlitedb.immediate(self.db):
            self.db.execute("INSERT OR IGNORE INTO restored (user, folder, mirror) VALUES (?,?,0)", key)
            self.db.execute("UPDATE restored SET acl_owed=? WHERE user=? AND folder=?",
                            (None if acl is None else names.to_db(acl), *key))

    # -- a -n command cut short and run again goes on in the folders it began beside ------
    # A command with -n makes new folders; run again after it completed it makes new ones
    # again, but run again after it was cut short (killed, a full disk) it must go on in
    # those it began.  Each such command has a token, kept under its signature (the
    # archives and what was asked) until it completes; every folder it makes beside
    # carries the token and the folder it stands beside.

    @_journal_errors
    def begin_run(self, signature: str) -> str:
        """The token of the command with ``signature``: the one of its run that was cut
        short, if any, else a new one, made durable before it is returned (one sync per
        command): the folders the command makes carry it (Planner.began_here), and a
        rerun after a power cut that lost it would not know them for its own."""
        with self._tx():
            row = self.db.execute("SELECT token FROM runs WHERE signature=?", (signature,)).fetchone()
            if row is not None:
                return row[0]
            token = os.urandom(8).hex()
            self.db.execute("INSERT INTO runs (signature, token) VALUES (?,?)", (signature, token))
        self.sync()
        return token

    @_journal_errors
    def sync(self) -> None:
        """Make the journal's commits durable (WAL, synchronous=NORMAL: a power cut loses
        the commits no sync covered): one syncfs of its filesystem."""
        from asm.store.base import syncfs_dirs
        syncfs_dirs([os.path.dirname(os.path.abspath(self.path))])

    @_journal_errors
    def end_run(self, signature: str) -> None:
        """The command with ``signature`` completed: run again, it begins anew."""
        self.db.execute("DELETE FROM runs WHERE signature=?", (signature,))

    @_journal_errors
    def mark_run(self, user: str, folder: str, token: str, uidnext: int) -> int:
        """The command with ``token`` (-i) is about to write into the folder, whose UIDNEXT
        is ``uidnext``: the UID from which the folder may hold what this command stored,
        the first time it came here (an earlier run of it, cut short), else ``uidnext``."""
        key = (names.to_db(user), names.to_db(folder))
        with self._tx():
            self.db.execute("INSERT OR IGNORE INTO restored (user, folder, mirror) VALUES (?,?,0)", key)
            row = self.db.execute("SELECT run, run_uid FROM restored WHERE user=? AND folder=?", key).fetchone()
            if row[0] == token and row[1] is not None:
                return row[1]
            self.db.execute("UPDATE restored SET run=?, run_uid=? WHERE user=? AND folder=?",
                            (token, uidnext, *key))
            return uidnext

    @_journal_errors
    def beside_of(self, user: str, source: str, token: str) -> str | None:
        """The folder the run with ``token`` began beside ``source``, if any."""
        row = self.db.execute("SELECT folder FROM restored WHERE user=? AND source=? AND run=?",
                              (names.to_db(user), names.to_db(source), token)).fetchone()
        return names.from_db(row[0]) if row else None

    @_journal_errors
    def put(self, user: str, folder: str, uidvalidity: int, uidnext: int, header: dict,
            mirror: bool, count: int | None = None, gaps: int = 0) -> None:
        """The restore of the archive with ``header`` into the folder is complete; the
        folder then held ``count`` messages, and ``gaps`` of the archive's (not a mirror)
        were left out at free archived UIDs, for the same command run again to fill."""
        from asm.backupstate import header_chain
        # run and source (a folder made beside another) stay as start set them
        self.db.execute("INSERT INTO restored (user, folder, uidvalidity, uidnext, archive_id, "
                        "created, since, mirror, running, running_mode, chain, count, gaps) "
                        "VALUES (?,?,?,?,?,?,?,?,NULL,NULL,?,?,?) ON CONFLICT (user, folder) DO UPDATE SET "
                        "uidvalidity=excluded.uidvalidity, uidnext=excluded.uidnext, "
                        "archive_id=excluded.archive_id, created=excluded.created, since=excluded.since, "
                        "mirror=excluded.mirror, running=NULL, running_mode=NULL, chain=excluded.chain, "
                        "count=excluded.count, gaps=excluded.gaps",
                        (names.to_db(user), names.to_db(folder), uidvalidity, uidnext,
                         header.get("archive_id"), header.get("created"), header.get("since"),
                         int(mirror), " ".join(header_chain(header)), count, gaps or None))
