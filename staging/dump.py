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

import ctypes
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from asm.digests import file_sha256
from asm.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL
from staging.catalog import Catalog, Dump
from staging.plan import GroupPlan

PR_SET_PDEATHSIG = 1


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


def _die_with_parent():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:   # the parent is already gone
        os._exit(EXIT_INTERRUPTED)


@dataclass
class Outcome:
    unit: GroupPlan
    dump: Dump
    ok: bool
    error: str = ""
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
    """Dumps units ``jobs`` at a time into ``directory``, recording them in ``catalog``."""

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

    def _spawn(self, unit: GroupPlan) -> _Job:
        area = self.catalog.area
        dump = self.catalog.start(self.run_id, unit.partition, unit.group, unit.kind, unit.since, unit.base,
                                  unit.users, unit.estimate, lambda did, when: file_name(unit, did, when, area))
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
        if len(unit.paths) > 1:
            listfile = os.path.join(self.directory, f".{dump.file}.list")
            with open(listfile, "w", encoding="utf-8") as f:
                f.writelines(p + "\n" for p in unit.paths)
            argv += ["-u", listfile]
        else:
            argv += unit.paths
        errfile = tempfile.TemporaryFile()
        env = dict(os.environ, IMS_HOME=self.home, IMS_REPORT_PARENT="imsstage")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errfile,
                                env=env, preexec_fn=_die_with_parent,
                                pass_fds=(self.lock_fd,) if self.lock_fd is not None else ())
        self.report(f"{unit.label}: {unit.kind} dump started as {dump.file}")
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
                os.rename(job.tmp, final)
                fsync_dir(self.directory)
                self.catalog.finish(job.dump.id, size, digest)
                self.report(f"{job.unit.label}: {job.dump.file} complete, {size} bytes in {secs:.1f}s")
                return Outcome(job.unit, self.catalog.get(job.dump.id), True, size=size, seconds=secs,
                               report=report)
            except OSError as exc:
                error = f"cannot finish {job.dump.file}: {exc.strerror or exc}"
        elif rc < 0:
            error = f"imsbackup was killed by signal {-rc}"
        else:
            error = f"imsbackup exit {rc}: " + (err_lines[-1] if err_lines else "no message")
            if rc == EXIT_PARTIAL:
                error += " (" + "; ".join(err_lines[-3:]) + ")" if len(err_lines) > 1 else ""
        _unlink(job.tmp)
        for p in glob.glob(os.path.join(glob.escape(self.directory), "." + glob.escape(temp_name(job.dump.file))
                                        + ".*.partial")):
            _unlink(p)
        self.catalog.fail(job.dump.id, error)
        self.report(f"{job.unit.label}: dump FAILED: {error}")
        return Outcome(job.unit, self.catalog.get(job.dump.id), False, error=error, seconds=secs, report=report)

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
                    running.append(self._spawn(queue.pop(0)))
                for job in list(running):
                    rc = job.proc.poll()
                    if rc is not None:
                        running.remove(job)
                        done.append(self._finish(job, rc))
                if self.progress:
                    self.progress(len(done), len(done) + len(running) + len(queue), running)
                if running:
                    time.sleep(0.05)
        except BaseException:
            self._stop(running, signal.SIGTERM)
            for job in running:
                rc = job.proc.wait()
                done.append(self._finish(job, rc))
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


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
