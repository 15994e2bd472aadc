"""A private Bacula 9.6 (director, storage daemon, file daemon) on 127.0.0.1.

Debian's daemons run from a temp dir with free ports, an SQLite catalog and a
file-based storage device; the director includes the resources ``imsbacula fileset``
wrote.  The file daemon gets a bare environment (no IMS_HOME, a plain PATH), as under
an init system, so the bpipe commands must carry what they need.  Every daemon is
stopped by its PID.  Use the ``bacula`` fixture (tests/conftest.py)::

    def test_x(bacula):
        bacula.start(open("ims-mail.conf").read(), client="ims-test-fd")
        jobid = bacula.run_job("ims-mail", "Full")
        assert bacula.job(jobid)["JobStatus"] == "T"

Without Bacula the fixture skips; under CI=true it fails.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time

from tests.helpers import free_ports, unavailable

SBIN = "/usr/sbin"
DAEMONS = {"dir": f"{SBIN}/bacula-dir", "sd": f"{SBIN}/bacula-sd", "fd": f"{SBIN}/bacula-fd"}
BCONSOLE = f"{SBIN}/bconsole"
BPIPE = "/usr/lib/bacula/bpipe-fd.so"
SCHEMA = "/usr/share/dbconfig-common/data/bacula-director-sqlite3/install/sqlite3"
QUERY = "/etc/bacula/scripts/query.sql"
CLIENT = "ims-test-fd"

DIR_CONF = """\
Director {{
  Name = ims-test-dir
  DIRport = {dirport}
  DirAddress = 127.0.0.1
  QueryFile = "{query}"
  WorkingDirectory = "{d}/work-dir"
  PidDirectory = "{d}/run"
  Maximum Concurrent Jobs = 5
  Password = "{dirpw}"
  Messages = Daemon
}}
Catalog {{
  Name = MyCatalog
  dbname = "bacula"; dbuser = ""; dbpassword = ""
}}
Storage {{
  Name = File1
  Address = 127.0.0.1
  SDPort = {sdport}
  Password = "{sdpw}"
  Device = FileDev
  Media Type = File
  Maximum Concurrent Jobs = 5
}}
Pool {{
  Name = File
  Pool Type = Backup
  Label Format = "Vol-"
  Maximum Volume Bytes = 1G
  Volume Retention = 365 days
  AutoPrune = yes
  Recycle = yes
}}
Pool {{
  Name = Default
  Pool Type = Backup
}}
Client {{
  Name = {client}
  Address = 127.0.0.1
  FDPort = {fdport}
  Catalog = MyCatalog
  Password = "{fdpw}"
}}
Messages {{
  Name = Standard
  console = all, !skipped, !saved
  append = "{d}/log/jobs.log" = all, !skipped
  catalog = all
}}
Messages {{
  Name = Daemon
  console = all, !skipped, !saved
  append = "{d}/log/dir.log" = all, !skipped
}}
@{include}
"""

SD_CONF = """\
Storage {{
  Name = ims-test-sd
  SDPort = {sdport}
  SDAddress = 127.0.0.1
  WorkingDirectory = "{d}/work-sd"
  Pid Directory = "{d}/run"
  Maximum Concurrent Jobs = 5
}}
Director {{
  Name = ims-test-dir
  Password = "{sdpw}"
}}
Device {{
  Name = FileDev
  Media Type = File
  Archive Device = "{d}/volumes"
  LabelMedia = yes
  Random Access = yes
  AutomaticMount = yes
  RemovableMedia = no
  AlwaysOpen = no
}}
Messages {{
  Name = Standard
  director = ims-test-dir = all
}}
"""

FD_CONF = """\
FileDaemon {{
  Name = {client}
  FDport = {fdport}
  FDAddress = 127.0.0.1
  WorkingDirectory = "{d}/work-fd"
  Pid Directory = "{d}/run"
  Plugin Directory = /usr/lib/bacula
  Maximum Concurrent Jobs = 5
}}
Director {{
  Name = ims-test-dir
  Password = "{fdpw}"
}}
Messages {{
  Name = Standard
  director = ims-test-dir = all, !skipped, !restored
}}
"""

CONSOLE_CONF = """\
Director {{
  Name = ims-test-dir
  DIRport = {dirport}
  address = 127.0.0.1
  Password = "{dirpw}"
}}
"""


def bacula_missing() -> str | None:
    for path in list(DAEMONS.values()) + [BCONSOLE, BPIPE, SCHEMA]:
        if not os.path.exists(path):
            return (f"{path} is missing (apt-get install bacula-director bacula-director-sqlite3 "
                    f"bacula-sd bacula-fd bacula-console)")
    if shutil.which("sqlite3") is None:
        return "sqlite3 is missing (apt-get install sqlite3)"
    if os.geteuid() != 0:
        return "the Bacula fixture runs the daemons as root"
    return None


def require_bacula() -> None:
    why = bacula_missing()
    if why:
        unavailable(f"Bacula: {why}")


class JobFailed(AssertionError):
    pass


class Bacula:
    """The three daemons of one private Bacula installation under ``dir``."""

    def __init__(self, workdir: str):
        self.dir = workdir
        self.client = CLIENT
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports = {}
        self.passwords = {k: secrets.token_hex(12) for k in ("dir", "sd", "fd")}
        self.include = os.path.join(workdir, "ims-mail.conf")
        self.console_conf = os.path.join(workdir, "bconsole.conf")
        self.db = os.path.join(workdir, "work-dir", "bacula.db")

    # -- daemons ------------------------------------------------------------
    def start(self, include_text: str) -> None:
        d = self.dir
        for sub in ("work-dir", "work-sd", "work-fd", "run", "log", "volumes"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        with open(self.include, "w") as f:
            f.write(include_text)
        with open(SCHEMA, "rb") as schema:
            subprocess.run(["sqlite3", self.db], stdin=schema, check=True, capture_output=True)
        self.ports = dict(zip(("dir", "sd", "fd"), free_ports(3)))
        values = dict(d=d, query=QUERY, include=self.include, client=self.client,
                      dirport=self.ports["dir"], sdport=self.ports["sd"], fdport=self.ports["fd"],
                      dirpw=self.passwords["dir"], sdpw=self.passwords["sd"], fdpw=self.passwords["fd"])
        confs = {"dir": DIR_CONF, "sd": SD_CONF, "fd": FD_CONF}
        for name, text in confs.items():
            with open(os.path.join(d, f"bacula-{name}.conf"), "w") as f:
                f.write(text.format(**values))
        with open(self.console_conf, "w") as f:
            f.write(CONSOLE_CONF.format(**values))
        test = subprocess.run([DAEMONS["dir"], "-t", "-c", os.path.join(d, "bacula-dir.conf")],
                              capture_output=True, text=True)
        if test.returncode:
            raise RuntimeError(f"bacula-dir rejects the configuration: {test.stdout}{test.stderr}")
        # the file daemon gets what an init system would give it: no IMS_HOME, a plain PATH
        bare = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        for name in ("sd", "fd", "dir"):
            log = open(os.path.join(d, "log", f"{name}.out"), "ab")
            self.procs[name] = subprocess.Popen(
                [DAEMONS[name], "-f", "-c", os.path.join(d, f"bacula-{name}.conf")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=bare if name == "fd" else None, start_new_session=True)
            log.close()
        deadline = time.monotonic() + 30
        for name in ("sd", "fd", "dir"):
            while True:
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"bacula-{name} exited: {self.log(name + '.out')}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.ports[name]), 0.5):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bacula-{name} does not answer on port {self.ports[name]}")
                time.sleep(0.05)

    def stop(self) -> None:
        for name in ("dir", "fd", "sd"):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait(5)

    def log(self, name: str = "jobs.log") -> str:
        try:
            with open(os.path.join(self.dir, "log", name), errors="replace") as f:
                return f.read()[-6000:]
        except FileNotFoundError:
            return "(no log)"

    # -- bconsole -----------------------------------------------------------
    def console(self, commands: str, timeout: float = 120) -> str:
        out = subprocess.run([BCONSOLE, "-c", os.path.abspath(self.console_conf)], input=commands,
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode:
            raise RuntimeError(f"bconsole failed ({out.returncode}): {out.stdout}{out.stderr}")
        return out.stdout

    def jobs(self) -> list[dict]:
        con = sqlite3.connect(self.db, timeout=30)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute(
                "SELECT JobId, Name, Type, Level, JobStatus, JobErrors, JobFiles, JobBytes FROM Job ORDER BY JobId")]
        finally:
            con.close()

    def job(self, jobid: int) -> dict:
        return next(j for j in self.jobs() if j["JobId"] == jobid)

    # a job's end in the catalog: OK, OK with warnings, errors, fatal, canceled
    FINAL = frozenset("TWEefA")

    def _queued(self, commands: str, timeout: float = 120) -> dict:
        """Run the bconsole ``commands`` that queue one job, then wait for it: its catalog
        row once it has ended.  bconsole's own ``wait`` looks once a second and, on
        Bacula 9.6, answered some 2.5 s after the job had ended (5.3 s a job instead of
        2.7): the catalog is read every 50 ms until the job's status is final, then
        ``wait jobid=N`` (answers within 0.2 s once the job has let go of the director)
        makes sure nothing of it runs any more, its messages printed."""
        before = {j["JobId"] for j in self.jobs()}
        out = self.console(commands)
        new = [j for j in self.jobs() if j["JobId"] not in before]
        if len(new) != 1:
            raise RuntimeError(f"expected one new job, found {new}: {out}")
        jobid = new[0]["JobId"]
        deadline = time.monotonic() + timeout
        while self.job(jobid)["JobStatus"] not in self.FINAL:
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {jobid} did not end in {timeout} s: {self.log()}")
            time.sleep(0.05)
        self.console(f"wait jobid={jobid}\nmessages\n")
        return self.job(jobid)

    def run_job(self, name: str, level: str) -> dict:
        """Run a backup job and wait for it; returns its catalog row."""
        return self._queued(f"run job={name} level={level} yes\n")

    def restore_job(self, jobid: int, restore_job: str) -> dict:
        """Restore everything one backup job saved (its bpipe streams) and wait."""
        return self._queued(f"restore jobid={jobid} restorejob={restore_job} client={self.client} "
                            f"all done yes\n")

    def restore_files(self, jobid: int, restore_job: str, files: list[str]) -> dict:
        """Restore only the named bpipe files (``/MAILSTORE/...``) of one job."""
        marks = "".join(f"cd {os.path.dirname(f)}\nmark {os.path.basename(f)}\n" for f in files)
        return self._queued(f"restore jobid={jobid} restorejob={restore_job} client={self.client}\n"
                            f"{marks}done\nyes\n")


@contextlib.contextmanager
def running_bacula(workdir: str | None = None):
    own = workdir is None
    if own:
        workdir = tempfile.mkdtemp(prefix="ims-bacula-")
    b = Bacula(workdir)
    try:
        yield b
    finally:
        b.stop()
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
