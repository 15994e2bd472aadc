"""The staging catalog: ``DIR/catalog.db`` (SQLite), one row per dump.

A dump is ``running`` while written, ``complete`` once its file has its final name and
its SHA-256 is recorded, ``failed`` otherwise (a run killed mid-way leaves ``running``
rows; the next run turns them into ``failed``).  The engine's verdict is separate:
``engine`` is NULL until reported, then ``ok``, ``failed`` or ``lost`` (a NetBackup job
that never reported).  ``base`` names the dump an incremental continues, so a restore
chain is followed link by link.  The catalog lives beside the files, so an engine that
saves the directory saves the catalog too.

A copy pushed to a media server over SSH (``staging.remote``) is recorded in the push
columns: ``remote`` (the device string of the pushed file), ``push`` (NULL: never
tried; ``ok``; ``failed``; ``removed`` by remote retention, with ``remote_removed``),
``remote_until`` (object lock), ``push_verified`` (``sha256``: checked by the far side;
``size``: no shell there), ``pushed`` (time) and ``push_error``.  They were added after
the first catalogs were written: an older catalog gains them (ALTER TABLE) when opened.
"""
from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass

from asm import sqlitedb
from asm.archive.names import dump_json, from_db, to_db
from asm.errors import EXIT_DEVICE, EXIT_INCOMPLETE, EXIT_NOSPACE
from staging.errors import StagingError

CATALOG_NAME = "catalog.db"


def is_damage(exc) -> bool:
    """An SQLite error that means the catalog file is damaged (not one of writing it:
    permissions, a full disk, a read-only mount, another writer)."""
    text = str(exc).lower()
    return any(w in text for w in ("malformed", "not a database", "corrupt", "quick_check",
                                   "wrong # of entries", "row ", "page ", "btree"))


def is_full(exc, path: str) -> bool:
    """An SQLite error that means the disk holding the catalog ``path`` is full
    (SQLITE_FULL, "database or disk is full", or an I/O error on a disk with no room)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL:
        return True
    return sqlitedb.disk_full(exc, path)


class CatalogUnwritable(StagingError):
    """The catalog could not be written (permissions, space, a read-only mount); a full
    disk is EXIT_NOSPACE, as every full local disk."""

    status = EXIT_DEVICE

    def __init__(self, path: str, exc, dumping: bool = True):
        if is_full(exc, path):
            lost = "dumps it could not record were removed and are not counted: " if dumping else ""
            super().__init__(f"the staging disk is full: cannot write the staging catalog {path} ({exc}); "
                             f"{lost}free space in {os.path.dirname(path) or '.'} and run the same command "
                             f"again (the catalog itself is intact)", status=EXIT_NOSPACE)
            return
        long = sqlitedb.path_too_long(path)
        if long:
            super().__init__(f"cannot write the staging catalog {path}: {long}: give a staging directory "
                             f"whose path is shorter (-D, or staging.dir)")
            return
        super().__init__(f"cannot write the staging catalog {path}: {exc}: check its permissions, the free "
                         f"space and the mount (the catalog itself is intact)")


class CatalogDamaged(StagingError):
    """The catalog cannot be read: one line naming it, and what to do."""

    status = EXIT_INCOMPLETE

    def __init__(self, path: str, exc):
        super().__init__(f"the staging catalog {path} is damaged ({exc}): restore it from the engine's "
                         f"backup of the staging directory (docs/staging.md, 'After a disaster'), then "
                         f"run the command again")

def catalog_error(path: str, exc: sqlite3.DatabaseError, dumping: bool = True) -> StagingError | None:
    """The one-line error an SQLite error on the catalog ``path`` stands for (damaged,
    or unwritable: a full disk is EXIT_NOSPACE); None for "locked" (another writer,
    which the caller lets through)."""
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return None
    return CatalogDamaged(path, exc) if is_damage(exc) else CatalogUnwritable(path, exc, dumping)


SCHEMA = """
CREATE TABLE IF NOT EXISTS dumps (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    partition TEXT NOT NULL,
    grp TEXT NOT NULL,
    kind TEXT NOT NULL,              -- full | incr
    since REAL,                      -- -d date of an incremental (epoch seconds)
    base INTEGER,                    -- the dump an incremental continues
    started REAL NOT NULL,
    finished REAL,
    file TEXT NOT NULL,              -- final name, relative to the staging directory
    estimate INTEGER,
    size INTEGER,
    sha256 TEXT,
    status TEXT NOT NULL,            -- running | complete | failed
    error TEXT,
    pid INTEGER,
    job TEXT,                        -- the engine job that took it (e.g. policy.schedule)
    engine TEXT,                     -- NULL | ok | failed | lost
    engine_status INTEGER,
    reported REAL,
    removed REAL
);
CREATE TABLE IF NOT EXISTS dump_users (
    dump INTEGER NOT NULL REFERENCES dumps(id),
    user TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dump_users_user ON dump_users(user);
CREATE INDEX IF NOT EXISTS dumps_group ON dumps(partition, grp, started);
"""

# Columns added to ``dumps`` since the first schema, in order; added when missing.
ADDED_COLUMNS = (
    ("remote", "TEXT"),              # [user@]host[:port]:path of the pushed copy
    ("push", "TEXT"),                # NULL | ok | failed
    ("push_verified", "TEXT"),       # sha256 | size
    ("pushed", "REAL"),              # when the push finished (or failed)
    ("push_error", "TEXT"),
    ("remote_until", "REAL"),        # object lock: the remote copy cannot be removed before
    ("remote_removed", "REAL"),      # when retention removed the remote copy (push is then 'removed')
)


@dataclass
class Dump:
    """One dump the staging catalog records (a row of its dumps table)."""

    id: int
    run: str
    partition: str
    grp: str
    kind: str
    since: float | None
    base: int | None
    started: float
    finished: float | None
    file: str
    estimate: int | None
    size: int | None
    sha256: str | None
    status: str
    error: str | None
    pid: int | None
    job: str | None
    engine: str | None
    engine_status: int | None
    reported: float | None
    removed: float | None
    remote: str | None = None
    push: str | None = None
    push_verified: str | None = None
    pushed: float | None = None
    push_error: str | None = None
    remote_until: float | None = None
    remote_removed: float | None = None

    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))


class Catalog:
    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, CATALOG_NAME)
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except sqlite3.DatabaseError as exc:       # (named with its directory, as below)
            raise CatalogUnwritable(self.path, exc) from None
        try:
            self.db.execute("PRAGMA journal_mode=DELETE")
            self.db.executescript(SCHEMA)
            self._upgrade()
            ok = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
        except sqlite3.DatabaseError as exc:
            self.db.close()
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            if is_damage(exc):
                raise CatalogDamaged(self.path, exc) from None
            raise CatalogUnwritable(self.path, exc) from None
        self._area = None

    @property
    def area(self) -> str:
        """This staging area's own tag (random, kept in the catalog): in every dump's file
        name, so two areas pushing to one remote directory never write the same name."""
        if self._area is None:
            self.db.execute("CREATE TABLE IF NOT EXISTS area (tag TEXT NOT NULL)")
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                row = self.db.execute("SELECT tag FROM area").fetchone()
                if row is None:
                    row = (os.urandom(4).hex(),)
                    self.db.execute("INSERT INTO area VALUES (?)", row)
            self._area = row[0]
        return self._area

    def claim_installation(self, home: str, record: bool = True) -> str | None:
        """Record that this staging area holds the dumps of the installation ``home``
        (IMS_HOME, resolved) if no installation is recorded yet; the one recorded when it
        is another (None when it is this one).  Two installations staging into one area
        (a mistyped -D, two instances' staging.dir alike) made one's incrementals
        continue the other's full, exit 0, a chain that cannot be restored.  ``record``
        False (imsstage plan, which dumps nothing): only the check, nothing written."""
        home = os.path.realpath(home)
        if not record:
            try:
                row = self.db.execute("SELECT home FROM installation").fetchone()
            except sqlite3.OperationalError:        # (no such table: nobody claimed it)
                return None
            return None if row is None or row[0] == home else row[0]
        self.db.execute("CREATE TABLE IF NOT EXISTS installation (home TEXT NOT NULL)")
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT home FROM installation").fetchone()
            if row is None:
                self.db.execute("INSERT INTO installation VALUES (?)", (home,))
                return None
        return None if row[0] == home else row[0]

    def _upgrade(self) -> None:
        """Add the columns newer code writes to a catalog made by older code."""
        have = {r[1] for r in self.db.execute("PRAGMA table_info(dumps)")}
        missing = [(n, t) for n, t in ADDED_COLUMNS if n not in have]
        if not missing:
            return
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return                  # read-only catalog: the new fields read as None
        try:
            have = {r[1] for r in self.db.execute("PRAGMA table_info(dumps)")}   # another process may have won
            for name, kind in ADDED_COLUMNS:
                if name not in have:
                    self.db.execute(f"ALTER TABLE dumps ADD COLUMN {name} {kind}")
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self.db.execute("ROLLBACK")
            if "readonly" not in str(exc):
                raise
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()

    def _rows(self, sql: str, args=()) -> list[Dump]:
        cur = self.db.execute(f"SELECT * FROM dumps {sql}", args)
        names = [c[0] for c in cur.description]
        known = set(Dump.__dataclass_fields__)
        return [Dump(**{k: v for k, v in zip(names, r) if k in known}) for r in cur.fetchall()]

    # -- writing ------------------------------------------------------------------
    def start(self, run: str, partition: str, grp: str, kind: str, since, base, users, estimate,
              make_name) -> Dump:
        """Record a dump as running; ``make_name(id)`` gives its file name."""
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")      # the row with its name and users, or nothing
            cur = self.db.execute(
                "INSERT INTO dumps (run, partition, grp, kind, since, base, started, file, estimate, status, pid)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (run, partition, grp, kind, since, base, now, "", estimate, "running", os.getpid()))
            did = cur.lastrowid
            self.db.execute("UPDATE dumps SET file=? WHERE id=?", (make_name(did, now), did))
            self.db.executemany("INSERT INTO dump_users (dump, user) VALUES (?,?)",
                                [(did, to_db(u)) for u in users])
        return self.get(did)

    def finish(self, did: int, size: int, sha256: str) -> None:
        self.db.execute("UPDATE dumps SET status='complete', finished=?, size=?, sha256=? WHERE id=?",
                        (time.time(), size, sha256, did))

    def fail(self, did: int, error: str) -> None:
        self.db.execute("UPDATE dumps SET status='failed', finished=?, error=? WHERE id=?",
                        (time.time(), error, did))

    def fail_stale(self) -> list[Dump]:
        """Turn the ``running`` rows of a killed run into ``failed`` (call with the lock held).
        Their files are the caller's to remove (:meth:`failed_files`)."""
        stale = self._rows("WHERE status='running'")
        for d in stale:
            self.fail(d.id, f"run killed (or stopped by a full disk) before the dump finished (pid {d.pid})")
        return stale

    def running_of(self, run: str) -> list[Dump]:
        """The rows of run ``run`` still ``running``."""
        return self._rows("WHERE run=? AND status='running' ORDER BY id", (run,))

    def failed_files(self) -> list[Dump]:
        """Failed dumps not marked removed: a failed dump never keeps a file, so whatever is
        under such a name (a run that stopped between the rename and the catalog, before
        that could not happen) is the caller's to remove (then :meth:`mark_removed`)."""
        return self._rows("WHERE status='failed' AND removed IS NULL AND file != '' ORDER BY id")

    def claim(self, ids, job: str) -> None:
        self.db.executemany("UPDATE dumps SET job=? WHERE id=?", [(job, i) for i in ids])

    def reclaim(self, ids, job: str) -> None:
        """Claim for ``job`` dumps an earlier job failed to save (or never reported on):
        its verdict is cleared, so this job's bpend / ``imsstage done`` records its own."""
        self.db.executemany("UPDATE dumps SET job=?, engine=NULL, engine_status=NULL, reported=NULL "
                            "WHERE id=?", [(job, i) for i in ids])

    def report(self, ids, status: int) -> None:
        verdict = "ok" if status == 0 else "failed"
        self.db.executemany("UPDATE dumps SET engine=?, engine_status=?, reported=? WHERE id=?",
                            [(verdict, status, time.time(), i) for i in ids])

    def mark_lost(self, ids) -> None:
        self.db.executemany("UPDATE dumps SET engine='lost', reported=? WHERE id=?",
                            [(time.time(), i) for i in ids])

    def push_ok(self, did: int, remote: str, verified: str, until: float | None = None) -> None:
        self.db.execute("UPDATE dumps SET push='ok', remote=?, push_verified=?, pushed=?, push_error=NULL, "
                        "remote_until=? WHERE id=?", (remote, verified, time.time(), until, did))

    def remote_removed(self, did: int) -> None:
        """Retention removed the remote copy: it is no longer a place to fetch from."""
        self.db.execute("UPDATE dumps SET push='removed', remote_removed=? WHERE id=?", (time.time(), did))

    def pushed(self) -> list[Dump]:
        """Complete dumps with a remote copy, newest first."""
        return self._rows("WHERE status='complete' AND push='ok' ORDER BY started DESC, id DESC")

    def push_failed(self, did: int, error: str) -> None:
        self.db.execute("UPDATE dumps SET push='failed', pushed=?, push_error=? WHERE id=?",
                        (time.time(), error, did))

    def mark_removed(self, did: int) -> None:
        self.db.execute("UPDATE dumps SET removed=? WHERE id=?", (time.time(), did))

    # -- reading ------------------------------------------------------------------
    def get(self, did: int) -> Dump | None:
        rows = self._rows("WHERE id=?", (did,))
        return rows[0] if rows else None

    def all(self) -> list[Dump]:
        return self._rows("ORDER BY started, id")

    def users(self, did: int) -> list[str]:
        return [from_db(r[0]) for r in self.db.execute("SELECT user FROM dump_users WHERE dump=? ORDER BY user",
                                                        (did,))]

    def unreported(self, job: str | None = None) -> list[Dump]:
        """Complete dumps no engine has reported on (of ``job`` when given)."""
        if job is None:
            return self._rows("WHERE status='complete' AND engine IS NULL ORDER BY started, id")
        return self._rows("WHERE status='complete' AND engine IS NULL AND job=? ORDER BY started, id", (job,))

    def claimable(self) -> list[Dump]:
        """Complete dumps whose file an engine may take: none has reported on it yet,
        or the job that took it failed or never reported (``failed``, ``lost``)."""
        return self._rows("WHERE status='complete' AND removed IS NULL "
                          "AND (engine IS NULL OR engine IN ('failed', 'lost')) ORDER BY started, id")

    def last_base(self, partition: str, grp: str, full_only: bool) -> Dump | None:
        """The dump an incremental continues: the last complete one (of any kind, or the
        last full) that no engine reported as failed or lost."""
        kind = "AND kind='full'" if full_only else ""
        rows = self._rows(f"WHERE partition=? AND grp=? AND status='complete' "
                          f"AND (engine IS NULL OR engine='ok') {kind} ORDER BY started DESC, id DESC LIMIT 1",
                          (partition, grp))
        return rows[0] if rows else None

    def holding(self, user: str) -> list[Dump]:
        """Complete dumps whose group held ``user``, newest first."""
        return self._rows("WHERE status='complete' AND id IN (SELECT dump FROM dump_users WHERE user=?) "
                          "ORDER BY started DESC, id DESC", (to_db(user),))

    def unpushed(self) -> list[Dump]:
        """Complete dumps whose push failed or was never made, oldest first."""
        return self._rows("WHERE status='complete' AND (push IS NULL OR push='failed') ORDER BY started, id")

    def kept(self, partition: str, grp: str) -> list[Dump]:
        """Complete dumps of a group whose file is still in the area, newest first."""
        return self._rows("WHERE partition=? AND grp=? AND status='complete' AND removed IS NULL "
                          "ORDER BY started DESC, id DESC", (partition, grp))

    def to_json(self, d: Dump) -> str:
        out = dict(vars(d))
        out["users"] = self.users(d.id)
        return dump_json(out).decode("utf-8")
