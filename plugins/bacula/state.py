"""What the module remembers between Bacula jobs: $IMS_HOME/data/bacula/state.db.

- ``pending``: the job a FileSet is running now (its JobId and level), written by the
  Job's client RunScript before the backup (``imsbacula jobstart``);
- ``streams``: each bpipe stream of that job that finished well (imsbackup exit 0 and
  every byte taken by the file daemon), with the time it started;
- ``good``: per logical path, the streams of jobs that *succeeded*, each with its
  FileSet: copied from ``streams`` only by ``imsbacula jobdone`` (the RunScript Bacula
  runs after a job that ended well).  An incremental takes its base from here, so a job
  that failed anywhere (file daemon, storage daemon, another stream) never moves it on,
  and only from jobs of its own FileSet: two FileSets of one store (``imsbacula fileset
  --name``) are two chains, each restored from its own jobs.  (Rows have always named
  their FileSet: a state.db of an older module version needs no migration.)
- ``selection``: what the next restores restore (``imsbacula select``).
- ``restoring``/``restored``: the restore job a FileSet is running (``restorestart``)
  and, per selected path, whether a stream of it held the path (``restoredone`` fails
  the job when one was held by none).
- ``states/``: the backup state (asm.backupstate) of every stream: written by imsbackup
  ``--state-out`` into ``states/pending/<fileset>-<jobid>/`` while the job runs, moved
  (rename, atomic) to ``states/good/<path key>/<jobid>.state`` by ``jobdone`` with the
  stream's run report, removed by ``jobfailed``.  The next incremental of a path is
  ``--base`` the state of its FileSet's last good job of that path, a differential's
  that of its FileSet's last good Full (JobIds are unique across FileSets, so the
  states of several FileSets share the path's directory).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from asm.trees import remove_tree

SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (fileset TEXT PRIMARY KEY, jobid INTEGER NOT NULL,
    level TEXT NOT NULL, started REAL NOT NULL);
CREATE TABLE IF NOT EXISTS streams (fileset TEXT NOT NULL, jobid INTEGER NOT NULL, path TEXT NOT NULL,
    level TEXT NOT NULL, started REAL NOT NULL, finished REAL NOT NULL,
    PRIMARY KEY (fileset, jobid, path));
CREATE TABLE IF NOT EXISTS good (path TEXT NOT NULL, jobid INTEGER NOT NULL, fileset TEXT NOT NULL,
    level TEXT NOT NULL, started REAL NOT NULL, finished REAL NOT NULL, committed REAL NOT NULL,
    PRIMARY KEY (path, jobid));
CREATE TABLE IF NOT EXISTS failed (fileset TEXT NOT NULL, jobid INTEGER NOT NULL, path TEXT NOT NULL,
    status INTEGER NOT NULL, PRIMARY KEY (fileset, jobid, path));
CREATE TABLE IF NOT EXISTS selection (path TEXT PRIMARY KEY, added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS restoring (fileset TEXT PRIMARY KEY, jobid INTEGER NOT NULL, started REAL NOT NULL);
CREATE TABLE IF NOT EXISTS restored (fileset TEXT NOT NULL, jobid INTEGER NOT NULL, path TEXT NOT NULL,
    held INTEGER NOT NULL, PRIMARY KEY (fileset, jobid, path));
"""

LEVELS = {"F": "Full", "I": "Incremental", "D": "Differential"}


def normalize_level(text: str) -> str:
    """'Full'/'F'/'full' -> 'Full' etc.; Bacula's %l gives the long form."""
    t = (text or "").strip()
    for short, long in LEVELS.items():
        if t.lower() in (short.lower(), long.lower()):
            return long
    raise ValueError(f"unknown backup level {text!r}: use Full, Incremental or Differential")


def _stored(path: str):
    """A path as state.db keeps it: text, or its bytes (a BLOB) when it names a user
    whose name is not UTF-8 (surrogate escapes, which sqlite cannot hold as text)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape")


def _loaded(value) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


class State:
    def __init__(self, home: str):
        self.dir = os.path.join(home, "data", "bacula")
        self.path = os.path.join(self.dir, "state.db")

    @contextlib.contextmanager
    def db(self):
        from asm.errors import EXIT_NOSPACE, EXIT_STORE, ImsError
        from asm.sqlitedb import disk_full
        try:
            os.makedirs(self.dir, exist_ok=True)
            con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise ImsError(f"cannot open the job state {self.path}: {getattr(exc, 'strerror', None) or exc}; "
                           f"the job must fail", status=EXIT_STORE) from None
        try:
            try:
                con.execute("PRAGMA busy_timeout = 60000")
                con.executescript(SCHEMA)
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                # a full disk under IMS_HOME/data: 13 (free space, run the job again), not 70
                if disk_full(exc, self.path):
                    raise ImsError(f"cannot write the job state {self.path}: its disk is full ({exc}): free "
                                   f"space there and run the job again", status=EXIT_NOSPACE) from None
                raise
            try:
                yield con
                con.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
                if disk_full(exc, self.path):
                    raise ImsError(f"cannot write the job state {self.path}: its disk is full ({exc}): free "
                                   f"space there and run the job again", status=EXIT_NOSPACE) from None
                raise
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
                raise
        finally:
            con.close()

    # -- a backup job ---------------------------------------------------------
    def job_start(self, fileset: str, jobid: int, level: str) -> None:
        with self.db() as con:
            con.execute("DELETE FROM streams WHERE fileset = ?", (fileset,))
            con.execute("DELETE FROM failed WHERE fileset = ?", (fileset,))
            # states of earlier jobs of this FileSet that never ended (crashed daemon)
            pend = os.path.join(self.dir, "states", "pending")
            for name in os.listdir(pend) if os.path.isdir(pend) else []:
                if name.rsplit("-", 1)[0] == fileset:
                    remove_tree(os.path.join(pend, name))
            con.execute("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?)", (fileset, jobid, level, time.time()))

    def pending(self, fileset: str) -> tuple[int, str] | None:
        with self.db() as con:
            row = con.execute("SELECT jobid, level FROM pending WHERE fileset = ?", (fileset,)).fetchone()
        return (row[0], row[1]) if row else None

    def stream_ok(self, fileset: str, jobid: int, path: str, level: str, started: float) -> None:
        with self.db() as con:
            con.execute("INSERT OR REPLACE INTO streams VALUES (?, ?, ?, ?, ?, ?)",
                        (fileset, jobid, _stored(path), level, started, time.time()))
            # it was recorded as failed while it ran (cmd_backup)
            con.execute("DELETE FROM failed WHERE fileset = ? AND jobid = ? AND path = ?",
                        (fileset, jobid, _stored(path)))

    def stream_failed(self, fileset: str, jobid: int, path: str, status: int) -> None:
        with self.db() as con:
            con.execute("INSERT OR REPLACE INTO failed VALUES (?, ?, ?, ?)",
                        (fileset, jobid, _stored(path), status))

    def job_done(self, fileset: str, jobid: int) -> tuple[list[tuple[str, str, float]], list[tuple[str, int]]]:
        """Commit the streams of a job that ended well; returns the committed
        (path, level, started) and the (path, exit status) of the streams that failed."""
        now = time.time()
        with self.db() as con:
            bad = con.execute("SELECT path, status FROM failed WHERE fileset = ? AND jobid = ? ORDER BY path",
                              (fileset, jobid)).fetchall()
            con.execute("DELETE FROM failed WHERE fileset = ?", (fileset,))
            rows = con.execute("SELECT path, level, started, finished FROM streams WHERE fileset = ? AND jobid = ?",
                               (fileset, jobid)).fetchall()
            for path, level, started, finished in rows:
                con.execute("INSERT OR REPLACE INTO good VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (path, jobid, fileset, level, started, finished, now))
            con.execute("DELETE FROM streams WHERE fileset = ? AND jobid = ?", (fileset, jobid))
            con.execute("DELETE FROM pending WHERE fileset = ? AND jobid = ?", (fileset, jobid))
        return [(_loaded(p), lv, s) for p, lv, s, _ in rows], [(_loaded(p), st) for p, st in bad]

    def job_failed(self, fileset: str, jobid: int) -> int:
        """Forget what a failed job streamed; returns how many streams were dropped."""
        with self.db() as con:
            n = con.execute("DELETE FROM streams WHERE fileset = ? AND jobid = ?", (fileset, jobid)).rowcount
            con.execute("DELETE FROM failed WHERE fileset = ?", (fileset,))
            con.execute("DELETE FROM pending WHERE fileset = ? AND jobid = ?", (fileset, jobid))
        return n

    def since(self, path: str, level: str, fileset: str) -> tuple[float, int] | None:
        """(start time, JobId) an incremental/differential of ``path`` in FileSet
        ``fileset`` starts from (a good job of that FileSet: another FileSet's jobs are
        another chain), or None when there is no good job to build on (the caller then
        takes a full)."""
        if level == "Full":
            return None
        with self.db() as con:
            if level == "Differential":
                row = con.execute("SELECT started, jobid FROM good WHERE path = ? AND fileset = ? "
                                  "AND level = 'Full' ORDER BY started DESC LIMIT 1",
                                  (_stored(path), fileset)).fetchone()
            else:
                row = con.execute("SELECT started, jobid FROM good WHERE path = ? AND fileset = ? "
                                  "ORDER BY started DESC LIMIT 1", (_stored(path), fileset)).fetchone()
        return (row[0], row[1]) if row else None

    def history(self) -> list[tuple]:
        with self.db() as con:
            rows = con.execute("SELECT path, jobid, fileset, level, started, finished FROM good "
                               "ORDER BY path, started").fetchall()
        return [(_loaded(r[0]),) + tuple(r[1:]) for r in rows]

    # -- state files of the streams (the --base of the next incremental) -------------
    @staticmethod
    def _key(path: str) -> str:
        return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:32]

    def pending_dir(self, fileset: str, jobid: int) -> str:
        return os.path.join(self.dir, "states", "pending", f"{fileset}-{jobid}")

    def pending_files(self, fileset: str, jobid: int, path: str) -> tuple[str, str]:
        """(state file, report file) a stream of a running job writes."""
        d = self.pending_dir(fileset, jobid)
        os.makedirs(d, exist_ok=True)
        k = self._key(path)
        return os.path.join(d, f"{k}.state"), os.path.join(d, f"{k}.json")

    def good_files(self, path: str, jobid: int) -> tuple[str, str]:
        d = os.path.join(self.dir, "states", "good", self._key(path))
        return os.path.join(d, f"{jobid}.state"), os.path.join(d, f"{jobid}.json")

    def commit_states(self, fileset: str, jobid: int, rows) -> dict:
        """Move the state and report of each committed stream (path, level, started) to
        its good place; returns {path: report dict or None}.  Prunes states no
        incremental or differential can name any more (before the path's second-to-last
        Full)."""
        reports = {}
        for path, level, _started in rows:
            st, rp = self.pending_files(fileset, jobid, path)
            gst, grp = self.good_files(path, jobid)
            os.makedirs(os.path.dirname(gst), exist_ok=True)
            doc = None
            with contextlib.suppress(OSError, ValueError):
                with open(rp, encoding="utf-8") as f:
                    doc = json.load(f)
                os.replace(rp, grp)
            if os.path.exists(st):
                os.replace(st, gst)
            reports[path] = doc
            self._prune(path, fileset)
        remove_tree(self.pending_dir(fileset, jobid))
        return reports

    def drop_states(self, fileset: str, jobid: int) -> None:
        remove_tree(self.pending_dir(fileset, jobid))

    def _prune(self, path: str, fileset: str) -> None:
        """Remove the states of ``fileset``'s jobs of ``path`` older than its second-to-
        last good Full (and of no job recorded as good at all): never another FileSet's,
        whose chain goes on from its own jobs."""
        with self.db() as con:
            fulls = [r[0] for r in con.execute("SELECT jobid FROM good WHERE path = ? AND fileset = ? "
                                               "AND level = 'Full' ORDER BY started DESC LIMIT 2",
                                               (_stored(path), fileset))]
            owner = {r[0]: r[1] for r in con.execute("SELECT jobid, fileset FROM good WHERE path = ?",
                                                      (_stored(path),))}
        if len(fulls) < 2:
            return
        d = os.path.dirname(self.good_files(path, 0)[0])
        for name in os.listdir(d):
            stem = name.split(".", 1)[0]
            if stem.isdigit() and int(stem) < min(fulls) and owner.get(int(stem), fileset) == fileset:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(d, name))

    # -- restore selection ------------------------------------------------------
    def set_selection(self, paths: list[str]) -> None:
        with self.db() as con:
            con.execute("DELETE FROM selection")
            now = time.time()
            con.executemany("INSERT OR REPLACE INTO selection VALUES (?, ?)", [(_stored(p), now) for p in paths])

    def selection(self) -> list[str]:
        with self.db() as con:
            return [_loaded(r[0]) for r in con.execute("SELECT path FROM selection ORDER BY added, path")]

    # -- a restore job: which selected paths its streams held -------------------------
    def restore_start(self, fileset: str, jobid: int, paths: list[str]) -> None:
        with self.db() as con:
            con.execute("DELETE FROM restored WHERE fileset = ?", (fileset,))
            con.execute("INSERT OR REPLACE INTO restoring VALUES (?, ?, ?)", (fileset, jobid, time.time()))
            con.executemany("INSERT OR REPLACE INTO restored VALUES (?, ?, ?, 0)",
                            [(fileset, jobid, _stored(p)) for p in paths])

    def restore_held(self, fileset: str, paths: list[str]) -> None:
        """A stream of the running restore job held (and restored) these selected paths."""
        with self.db() as con:
            row = con.execute("SELECT jobid FROM restoring WHERE fileset = ?", (fileset,)).fetchone()
            if row is None:
                return
            con.executemany("UPDATE restored SET held = 1 WHERE fileset = ? AND jobid = ? AND path = ?",
                            [(fileset, row[0], _stored(p)) for p in paths])

    def restore_done(self, fileset: str, jobid: int) -> list[str] | None:
        """The selected paths no stream of the restore job held (None: the job did not
        run 'restorestart')."""
        with self.db() as con:
            row = con.execute("SELECT jobid FROM restoring WHERE fileset = ? AND jobid = ?",
                              (fileset, jobid)).fetchone()
            missed = [_loaded(r[0]) for r in con.execute(
                "SELECT path FROM restored WHERE fileset = ? AND jobid = ? AND held = 0 ORDER BY path",
                (fileset, jobid))]
            con.execute("DELETE FROM restored WHERE fileset = ?", (fileset,))
            con.execute("DELETE FROM restoring WHERE fileset = ?", (fileset,))
        return missed if row is not None else None
