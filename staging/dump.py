"""Running group dumps in parallel: each is an ``imsbackup`` child process writing a
temporary name (``.NAME.partial``) that is renamed to ``NAME`` only after the child
succeeded and the file was read back, digested and synced.

Why child processes and not functions in a pool: each dump is the very command an
administrator would run by hand, with its own exit status and error lines; a dump
that crashes or leaks cannot disturb the others; the dumps use every core (no GIL);
and a deadline or Ctrl-C can stop a dump with a signal, after which imsbackup removes
its own partial file.  Children die with the parent (PR_SET_PDEATHSIG) and hold the
area lock descriptor, so a killed run cannot leave a writer behind an unlocked area.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from asm.interrupts import interrupts_deferred
from asm.digests import file_sha256
from asm.errors import EXIT_INTERRUPTED, EXIT_NOSPACE, EXIT_OK, EXIT_PARTIAL
from staging.catalog import Catalog, Dump
from staging.plan import GroupPlan

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}

PR_SET_PDEATHSIG = 1


def _listable(path: str) -> bool:
    """Does ``path`` come back from an ``imsbackup -u`` list exactly as written?  The
    list is read with universal newlines, each line stripped of blanks, and lines that
    are empty or begin with ``#`` are skipped (asm.cli.common.read_list_file)."""
    return bool(path) and path == path.strip() and "\n" not in path and "\r" not in path \
        and not path.startswith("#")


def file_name(unit: GroupPlan, did: int, when: float, area: str = "") -> str:
    """PARTITION-GROUP-YYYYMMDD-HHMMSS-KIND-ID-AREA.ims: ``area`` is the staging area's tag
    (Catalog.area), so two areas pushing to one remote directory never share a name."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    return f"{unit.partition}-{unit.group}-{stamp}-{unit.kind}-{did}" + (f"-{area}" if area else "") + ".ims"


def temp_name(final: str) -> str:
    return f".{final}.partial"


def sha256_of(path: str) -> tuple[int, str]:
    """(size, hex digest), streamed; also syncs the file to disk."""
    digest, n = file_sha256(path, fsync=True)
    return n, digest


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_leftovers(directory: str) -> list[str]:
    """Temporary files of dumps that did not finish (ours and imsbackup's: its lock file
    next to the dump's temporary name stays behind when it is killed outright)."""
    gone = []
    for pattern in (".*.partial", ".*.partial.lock", ".*.list", ".*.report.json"):
        for p in glob.glob(os.path.join(glob.escape(directory), pattern)):
            try:
                os.unlink(p)
                gone.append(p)
            except FileNotFoundError:
                pass
    return gone


def remove_files_of(directory: str, dump: Dump) -> bool:
    """Remove what a dump that did not complete may have left: its temporary file and
    imsbackup's files beside it, its list and report, and its final name (a run stopped
    between the rename and the catalog).  Whether a file under the final name was there."""
    if not dump.file:
        return False
    for p in (temp_name(dump.file), f".{dump.file}.list", os.path.basename(report_file(directory, dump.file))):
        _unlink(os.path.join(directory, p))
    for p in glob.glob(os.path.join(glob.escape(directory), "." + glob.escape(temp_name(dump.file)) + ".*")):
        _unlink(p)
    return _unlink(os.path.join(directory, dump.file))


def _die_with_parent():
    # the child starts with the parent's mask, taken while it was started (interrupts_deferred)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:   # the parent is already gone
        os._exit(EXIT_INTERRUPTED)


@dataclass
class Outcome:
    """How one backup group's dump ended."""

    unit: GroupPlan
    dump: Dump
    ok: bool
    error: str = ""
    status: int = EXIT_OK               # a failed dump's: EXIT_NOSPACE (the disk filled up) or EXIT_PARTIAL
    size: int = 0
    seconds: float = 0.0
    report: dict | None = None          # the dump's imsbackup run report (counts, archive id, errors)


class _Job:
    def __init__(self, unit, dump, proc, tmp, listfile, errfile, started):
        self.unit, self.dump, self.proc, self.tmp = unit, dump, proc, tmp
        self.listfile, self.errfile, self.started = listfile, errfile, started


def report_file(directory: str, file: str) -> str:
    """Where a dump's imsbackup writes its run report (read and removed by imsstage)."""
    return os.path.join(directory, f".{file}.report.json")


def state_file(home: str, dump_id: int) -> str:
    """Where the state of dump ``dump_id`` is kept (the --base of the next incremental of
    its group): in the installation, not the staging area the engine empties."""
    return os.path.join(home, "data", "staging-state", f"{dump_id}.state")


class Runner:
    """Dumps units ``jobs`` at a time into ``directory``, recording them in ``catalog``.

    Whatever stops a run (a signal, a full disk, a catalog that cannot be written), it
    ends with no dump of it left ``running`` and no file of a dump that did not complete:
    the children still running are stopped, then every row of the run still ``running``
    is marked failed and its files removed (:meth:`abandon`).  A file is renamed to its
    final name and recorded complete with interrupts held; when the catalog cannot
    record it, it is removed again: nothing is ever under a final name without a
    ``complete`` row (a run killed outright leaves ``running`` rows, whose files the
    next run removes)."""

    def __init__(self, home: str, directory: str, catalog: Catalog, run_id: str, jobs: int,
                 blocking_factor: int = 20, lock_fd: int | None = None, deadline: float | None = None,
                 report=None, progress=None):
        self.home, self.directory, self.catalog, self.run_id = home, directory, catalog, run_id
        self.jobs = max(1, jobs)
        self.bf = blocking_factor
        self.lock_fd = lock_fd
        self.deadline = deadline            # time.monotonic() value, or None
        self.report = report or (lambda line: None)
        self.progress = progress
        self.timed_out = False

    def _spawn(self, unit: GroupPlan, running: list) -> None:
        """Record the dump and start its child; both or neither happen before an interrupt
        (held meanwhile), and the job is in ``running`` when they have."""
        area = self.catalog.area
        with interrupts_deferred():
            dump = self.catalog.start(self.run_id, unit.partition, unit.group, unit.kind, unit.since, unit.base,
                                      unit.users, unit.estimate, lambda did, when: file_name(unit, did, when, area))
            try:
                running.append(self._start_child(unit, dump))
            except BaseException as exc:
                # the child could not be started (a full disk for its list file): the dump failed
                remove_files_of(self.directory, dump)
                self._fail_row(dump.id, f"cannot start imsbackup: {getattr(exc, 'strerror', None) or exc}")
                raise
        self.report(f"{unit.label}: {unit.kind} dump started as {dump.file}")

    def _start_child(self, unit: GroupPlan, dump: Dump) -> _Job:
        tmp = os.path.join(self.directory, temp_name(dump.file))
        os.makedirs(os.path.dirname(state_file(self.home, dump.id)), exist_ok=True)   # (--state-out's directory)
        argv = [sys.executable, "-m", "asm.cli.imsbackup", "-f", tmp, "-b", str(self.bf),
                "--state-out", state_file(self.home, dump.id), "--report", report_file(self.directory, dump.file)]
        base_state = state_file(self.home, unit.base) if unit.base is not None else None
        if base_state is not None and os.path.exists(base_state):
            # what the base dump held, not a date: moved, copied and restored mail too
            argv += ["--base", base_state]
        elif unit.since is not None:
            # a base dumped before dumps kept their state: by date (docs/operations.md)
            argv += ["-d", time.strftime("%Y%m%d:%H%M%S", time.localtime(unit.since))]
        listfile = None
        # imsbackup -u drops the blanks around each line and splits at \r too: a path
        # the list would not give back as written (user 'zed ' read as 'zed') goes on
        # the command line, or that user was left out of the dump with exit 0
        listed = [p for p in unit.paths if _listable(p)]
        named = [p for p in unit.paths if not _listable(p)]
        if len(listed) > 1:
            listfile = os.path.join(self.directory, f".{dump.file}.list")
            # (a user directory whose name is not UTF-8 is written as its bytes, as
            # imsbackup -u reads it: strict UTF-8 stopped the whole run, exit 70)
            with open(listfile, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.writelines(p + "\n" for p in listed)
            argv += ["-u", listfile]
        else:
            named = unit.paths
        argv += named              # (logical paths: each begins with '/')
        errfile = tempfile.TemporaryFile()
        env = dict(os.environ, IMS_HOME=self.home, IMS_REPORT_PARENT="imsstage")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errfile,
                                    env=env, preexec_fn=_die_with_parent,
                                    pass_fds=(self.lock_fd,) if self.lock_fd is not None else ())
        except BaseException:
            errfile.close()
            raise
        return _Job(unit, dump, proc, tmp, listfile, errfile, time.monotonic())

    def _finish(self, job: _Job, rc: int) -> Outcome:
        secs = time.monotonic() - job.started
        job.errfile.seek(0)
        err_lines = job.errfile.read().decode("utf-8", "replace").strip().splitlines()
        job.errfile.close()
        if job.listfile:
            _unlink(job.listfile)
        final = os.path.join(self.directory, job.dump.file)
        error = ""
        status = EXIT_PARTIAL
        report = None
        rfile = report_file(self.directory, job.dump.file)
        try:
            with open(rfile, encoding="utf-8") as f:
                report = json.load(f)
        except (OSError, ValueError):
            pass
        _unlink(rfile)
        if rc == EXIT_OK:
            try:
                if os.path.exists(final):
                    raise OSError(f"{final} already exists")
                size, digest = sha256_of(job.tmp)
                self._commit(job, final, size, digest)
                self.report(f"{job.unit.label}: {job.dump.file} complete, {size} bytes in {secs:.1f}s")
                return Outcome(job.unit, self.catalog.get(job.dump.id), True, size=size, seconds=secs,
                               report=report)
            except OSError as exc:
                error = f"cannot finish {job.dump.file}: {exc.strerror or exc}"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    status = EXIT_NOSPACE
        elif rc < 0:
            error = f"imsbackup was killed by signal {-rc}"
        else:
            error = f"imsbackup exit {rc}: " + (err_lines[-1] if err_lines else "no message")
            if rc == EXIT_PARTIAL:
                error += " (" + "; ".join(err_lines[-3:]) + ")" if len(err_lines) > 1 else ""
            if rc == EXIT_NOSPACE:          # the staging disk (or the state file's) filled up
                status = EXIT_NOSPACE
        remove_files_of(self.directory, job.dump)
        self.catalog.fail(job.dump.id, error)
        self.report(f"{job.unit.label}: dump FAILED: {error}")
        return Outcome(job.unit, self.catalog.get(job.dump.id), False, error=error, status=status,
                       seconds=secs, report=report)

    def _commit(self, job: _Job, final: str, size: int, digest: str) -> None:
        """The file under its final name and its row complete, both or neither (interrupts
        held meanwhile): when the row cannot be written, the file goes again."""
        with interrupts_deferred():
            os.rename(job.tmp, final)
            try:
                fsync_dir(self.directory)
                self.catalog.finish(job.dump.id, size, digest)
            except BaseException:
                _unlink(final)
                raise

    def _fail_row(self, did: int, error: str) -> None:
        """Mark ``did`` failed if the catalog can still be written (a full disk may not let
        it: the row stays ``running`` for the next run, which fails it; its files are gone)."""
        try:
            self.catalog.fail(did, error)
        except sqlite3.Error:
            pass

    def abandon(self, error: str) -> list[Dump]:
        """Every dump of this run still ``running`` failed with ``error``: its files removed
        (the temporary one, and the final one a rename may have made), its row marked."""
        try:
            rows = self.catalog.running_of(self.run_id)
        except sqlite3.Error:
            return []
        for d in rows:
            remove_files_of(self.directory, d)
            self._fail_row(d.id, error)
        return rows

    def run(self, units: list[GroupPlan]) -> list[Outcome]:
        queue = list(units)
        running: list[_Job] = []
        done: list[Outcome] = []
        try:
            while queue or running:
                if self.deadline is not None and time.monotonic() > self.deadline:
                    self.timed_out = True
                    queue.clear()
                    self._stop(running, signal.SIGTERM)
                while queue and len(running) < self.jobs:
                    self._spawn(queue.pop(0), running)
                for job in list(running):
                    rc = job.proc.poll()
                    if rc is not None:
                        # finished (complete or failed) before it leaves ``running``: an
                        # interrupt meanwhile leaves it to the cleanup below
                        done.append(self._finish(job, rc))
                        running.remove(job)
                if self.progress:
                    self.progress(len(done), len(done) + len(running) + len(queue), running)
                if running:
                    time.sleep(0.05)
        except BaseException as exc:
            with interrupts_deferred():         # a second SIGTERM must not cut the cleanup short
                self._stop(running, signal.SIGTERM)
                for job in running:
                    with contextlib.suppress(OSError, ValueError):
                        job.errfile.close()
                self.abandon(_stopped_by(exc))
            raise
        return done

    @staticmethod
    def _stop(running: list[_Job], sig: int) -> None:
        for job in running:
            if job.proc.poll() is None:
                job.proc.send_signal(sig)
        t_end = time.monotonic() + 10
        for job in running:
            try:
                job.proc.wait(max(0.1, t_end - time.monotonic()))
            except subprocess.TimeoutExpired:
                job.proc.kill()
                job.proc.wait()


def _stopped_by(exc: BaseException) -> str:
    """The error recorded on the dumps a run stopped before they finished."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGTERM, SIGINT or SIGHUP) before the dump finished"
    if isinstance(exc, sqlite3.Error):
        return f"the run stopped: the staging catalog could not be written ({exc})"
    return f"the run stopped before the dump finished: {getattr(exc, 'strerror', None) or exc}"


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
