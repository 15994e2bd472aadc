"""Run reports: what a backup, restore or verify run did, for machines.

* ``--report FILE``: a JSON document (selection, counts, bytes, duration, errors,
  vanished, excluded, archive id and digest, chain base, exit status), written whole
  (temporary file, fsync, rename) at the end of the run;
* ``report.textfile`` (msconfig): a directory read by Prometheus node-exporter's
  textfile collector; each run rewrites ``ims_<kind>_<partition>_<group>.prom`` with
  ``ims_<kind>_last_success_timestamp_seconds``, messages, bytes, errors, duration,
  the last status and run time, labelled with partition and group (a failed run
  keeps the previous success time);
* a run started by another command that reports it (imsstage's imsbackup and imsrestore
  children: ``IMS_REPORT_PARENT`` in their environment) writes only its ``--report``
  file; the parent writes the textfile and pings;
* ``report.healthcheck`` (msconfig): a URL pinged by backups (imsbackup, imsstage,
  imsasm; imsverify takes its own with ``--healthcheck``) at the start (``URL/start``),
  on success (``URL``) and on failure (``URL/fail``), healthchecks.io style, each with
  ``report.timeout`` seconds at most; a ping that fails is a warning, never the run's
  failure.

Nothing here fails a run once it has started: every problem of reporting is returned
as a warning line.  A ``--report`` file that cannot be written at all (no such
directory, no permission, a directory) is refused before the run starts (exit 2).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import time

from asm import __version__

#: Report kinds by command.
KINDS = {"imsbackup": "backup", "imsrestore": "restore", "imsverify": "verify", "imsstage": "stage",
         "imsasm": "backup", "imsasm -r": "restore", "imsstage restore": "restore"}

METRICS = (
    ("last_success_timestamp_seconds", "Unix time the last successful (exit 0) run ended"),
    ("last_run_timestamp_seconds", "Unix time the last run ended, whatever its status"),
    ("last_status", "exit status of the last run (docs/operations.md)"),
    ("messages", "messages of the last run (message and link members)"),
    ("bytes", "bytes of message data of the last run"),
    ("errors", "mailboxes or messages that failed, or problems found, in the last run"),
    ("duration_seconds", "how long the last run took"),
)


def _readable(value):
    """``value`` with every name's bytes that are not UTF-8 (held as lone surrogates,
    surrogateescape) written ``\\xNN``, as messages write them (names.shown): JSON with
    a lone surrogate escape is refused by strict readers and turned into U+FFFD by jq
    (adv9 F18)."""
    from asm.archive.names import shown     # (only when a report is written)
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {_readable(k): _readable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_readable(v) for v in value]
    return value


def chain_base(since, base) -> dict | None:
    """A report's ``chain_base`` for an incremental archive, None for a full one: its
    ``-d`` date (``since``) and the archive id of its ``--base`` (``base``), as far as set."""
    if since is None and base is None:
        return None
    return {k: v for k, v in (("since", since), ("base", base)) if v is not None}


def labels_of(paths) -> tuple[str, str]:
    """(partition, group) labels for a run's logical paths (LogicalPath or text):
    ``all`` for what covers everything, several values joined with ``,``."""
    parts, groups = [], []
    for p in paths or ["/"]:
        part = getattr(p, "partition", None)
        group = getattr(p, "group", None)
        user = getattr(p, "user", None)
        if isinstance(p, str):
            levels = [x for x in p.split("/") if x]
            part = levels[0] if levels else None
            group = levels[1] if len(levels) > 1 else None
            # (/p/GROUP/u/... is the group's: NetWorker's save sets of a group's folders are
            # counted as the group's; imsverify and imsbackup give LogicalPaths)
            user = levels[2] if len(levels) > 2 and levels[1] == "user" else None
            group = None if user else group
        g = f"user:{user}" if user else (group or "all")
        for lst, v in ((parts, part or "all"), (groups, g)):
            if v not in lst:
                lst.append(v)
    return ",".join(parts), ",".join(groups)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _file_part(v: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", v)[:80] or "_"


def _write_atomic(path: str, data: bytes) -> None:
    from asm.config import atomic_write
    atomic_write(os.path.abspath(path), data, 0o644)


def _number(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


def textfile(directory: str, kind: str, partition: str, group: str, doc: dict) -> str:
    """Write the Prometheus textfile of one run; returns its path."""
    name = f"ims_{kind}_{_file_part(partition)}_{_file_part(group)}.prom"
    path = os.path.join(directory, name)
    lab = f'{{partition="{_escape(partition)}",group="{_escape(group)}"}}'
    metric_last = f"ims_{kind}_last_success_timestamp_seconds"
    last_success = None
    if doc["status"] == 0:
        last_success = doc["ended"]
    else:
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.startswith(metric_last + "{"):
                        last_success = float(line.rsplit(" ", 1)[1])
        except (OSError, ValueError, IndexError):
            pass
    counts = doc.get("counts") or {}
    values = {
        "last_success_timestamp_seconds": last_success,
        "last_run_timestamp_seconds": doc["ended"],
        "last_status": doc["status"],
        "messages": counts.get("messages", 0) + counts.get("links", 0),
        "bytes": counts.get("bytes", 0),
        "errors": len(doc.get("errors") or []),
        "duration_seconds": doc["duration_seconds"],
    }
    out = []
    for metric, help_text in METRICS:
        v = values[metric]
        if v is None:
            continue            # never succeeded yet: absent (alert on absent())
        full = f"ims_{kind}_{metric}"
        out.append(f"# HELP {full} {help_text}\n# TYPE {full} gauge\n{full}{lab} {_number(v)}\n")
    _write_atomic(path, "".join(out).encode("utf-8"))
    return path


def ping(url: str, timeout: float, body: str = "") -> str | None:
    """POST ``body`` to ``url``; returns why it failed, or None."""
    import urllib.error             # only when a ping is configured (startup time)
    import urllib.request
    try:
        req = urllib.request.Request(url, data=body.encode("utf-8", "replace")[:100_000], method="POST",
                                     headers={"User-Agent": f"ims-asm/{__version__}",
                                              "Content-Type": "text/plain; charset=utf-8"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read(1024)
        return None
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except Exception as exc:  # noqa: BLE001 - a ping never fails the run, whatever went wrong
        reason = getattr(exc, "reason", None)
        return str(reason or exc) or type(exc).__name__


class RunReport:
    """One run's report.  ``start`` pings the healthcheck; ``finish`` writes the JSON
    file, the textfile and pings success or failure.  ``warnings`` collects what could
    not be reported (the command prints them; the run's status stays its own)."""

    def __init__(self, command: str, path: str | None, config=None, **fields):
        self.command = command
        self.kind = KINDS.get(command, command)
        self.path = path
        self.textdir = self.url = None
        self.timeout = 10.0
        self.labels: tuple[str, str] | None = None
        self.started = time.time()
        self._t0 = time.monotonic()
        self.fields = dict(fields)
        self.warnings: list[str] = []
        self.doc: dict | None = None
        self.begun = False
        if config is not None:
            self.configure(config)

    def configure(self, config) -> None:
        """Take report.textfile, report.healthcheck and report.timeout from ``config``.
        A run that another command started and reports (imsstage's dumps and chain
        restore: ``IMS_REPORT_PARENT`` set) writes its ``--report`` file only."""
        if os.environ.get("IMS_REPORT_PARENT"):
            return
        try:
            self.textdir = config.get("report.textfile")
            if self.kind in ("backup", "stage"):   # a restore or verify run has its own check (--healthcheck)
                self.url = self.url or config.get("report.healthcheck")
            self.timeout = float(config.get("report.timeout") or 10)
        except Exception:  # noqa: BLE001 - a configuration without these options
            pass

    @classmethod
    def start(cls, command: str, path: str | None, config=None, **fields) -> "RunReport":
        r = cls(command, path, config, **fields)
        r.begin()
        return r

    def begin(self, config=None, **fields) -> None:
        """The run starts (its installation is open): ping URL/start."""
        if config is not None:
            self.configure(config)
        self.fields.update(fields)
        if self.begun:
            return              # a chain of archives in one run: one start
        self.begun = True
        if self.url:
            why = ping(self.url.rstrip("/") + "/start", self.timeout)
            if why:
                self.warnings.append(f"healthcheck {self.url.rstrip('/')}/start not reached ({why}); the run goes on")

    def update(self, **fields) -> None:
        self.fields.update(fields)

    @property
    def active(self) -> bool:
        return bool(self.path or self.textdir or self.url)

    def finish(self, status: int, summary: str = "", labels: tuple[str, str] | None = None, **fields) -> dict:
        ended = time.time()
        doc = {"command": self.command, "kind": self.kind, "tool_version": __version__,
               "host": os.uname().nodename, "status": status, "ok": status == 0,
               "started": self.started, "ended": ended,
               "duration_seconds": round(time.monotonic() - self._t0, 3)}
        doc.update(self.fields)
        doc.update(fields)
        doc.setdefault("errors", [])
        if summary:
            doc["summary"] = summary
        self.doc = doc
        if self.path:
            try:
                _write_atomic(self.path, (json.dumps(_readable(doc), indent=2, sort_keys=True, default=str)
                                          + "\n").encode("ascii"))
            except OSError as exc:
                # the previous run's report must not stand for this one (a full disk let
                # check_writable's empty probe through, then kept last night's "ok": true)
                gone = ""
                with contextlib.suppress(OSError):
                    if os.path.isfile(self.path) and not os.path.islink(self.path):
                        os.unlink(self.path)
                        gone = "; the previous report there was removed, so that it is not read as this run's"
                self.warnings.append(f"cannot write the report {self.path}: {exc.strerror or exc}{gone}")
        if self.textdir:
            part, group = labels or self.labels or labels_of(doc.get("selection"))
            try:
                textfile(self.textdir, self.kind, part, group, doc)
            except OSError as exc:
                self.warnings.append(f"cannot write the metrics file in {self.textdir}: {exc.strerror or exc}")
        if self.url and self.begun:
            url = self.url.rstrip("/") + ("" if status == 0 else "/fail")
            why = ping(url, self.timeout, doc.get("summary") or f"{self.command} exit {status}")
            if why:
                self.warnings.append(f"healthcheck {url} not reached ({why})")
        return doc


def holds_backup(path: str, state_ok: bool = False) -> str | None:
    """What ``path`` is when it is an existing file of a backup that a report or a state
    file must never replace: "an ims-asm archive" (also one that cannot be read here:
    encrypted, damaged layer) or (unless ``state_ok``) "a backup state file"; None
    otherwise."""
    from asm.backupstate import _is_state_file
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        return None
    if _is_state_file(real):
        return None if state_ok else "a backup state file"
    from asm.dr.chain import Unreadable, read_header
    try:
        info = read_header(real)
    except Unreadable:
        return "an ims-asm archive"
    return "an ims-asm archive" if info is not None else None


def refuse_clobber(option: str, path: str, named, noun: str = "report", state_ok: bool = False) -> None:
    """Refuse (EXIT_USAGE, before the run) an output file ``option path`` (the ``noun``)
    that is a file the run reads or writes (``named``: (what it is, its path) pairs, by
    any path: symlinks and '..' resolved) or an existing archive (or state file, unless
    ``state_ok``): written at the end, it would replace the archive, its base or its
    state file."""
    from asm.errors import EXIT_USAGE, ImsError
    real = os.path.realpath(path)
    what = next((what for what, p in named if p and p != "-" and os.path.realpath(p) == real), None)
    what = what or holds_backup(path, state_ok)
    if not what:
        from asm.config import own_file
        what = own_file(path)
    if what:
        raise ImsError(f"{option} {path} is {what}, which the {noun} would replace: name a file of its "
                       f"own; nothing was done", status=EXIT_USAGE)


def check_writable(path: str, named=()) -> None:
    """Refuse (EXIT_USAGE, before the run) a ``--report`` file that cannot be written: a
    run that ended 0 with only a warning left the previous run's report in place, and
    monitoring read that one as this run's.  Nor may it name a file the run reads or
    writes (``named``, see :func:`refuse_clobber`), or an archive or state file."""
    from asm.errors import EXIT_USAGE, ImsError
    if path == "-":         # (it wrote a file named '-': every other option means stdout by it)
        raise ImsError("--report - : the report is written to a file, never standard output: name a file "
                       "(./- for one named '-'); nothing was done", status=EXIT_USAGE)
    refuse_clobber("--report", path, named)
    why = "it is a directory" if os.path.isdir(path) else None
    if why is None:
        import tempfile
        try:
            fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            why = exc.strerror or str(exc)
    if why:
        raise ImsError(f"--report {path}: cannot write the report there ({why}): name a file in an "
                       f"existing, writable directory; nothing was done", status=EXIT_USAGE)


def run_reported(command: str, path: str | None, body, warn, named=()) -> int:
    """Run ``body(report)`` -> exit status, and report it whatever happens: the JSON
    file, the textfile and the healthcheck get the status (an exception's, from
    :func:`asm.errors.status_of`, which is then raised on for the command to say);
    ``warn(line)`` says what could not be reported.  ``named``: the files the run reads
    or writes ((what it is, path) pairs), which the report must not be."""
    from asm.errors import status_of
    if path:
        check_writable(path, named)
    rep = RunReport(command, path)
    try:
        status = body(rep)
    except BaseException as exc:
        if rep.active:
            errs = list(rep.fields.get("errors") or [])
            errs.append({"mailbox": "", "error": str(exc) or type(exc).__name__})
            rep.finish(status_of(exc), errors=errs)
            for w in rep.warnings:
                warn(w)
        raise
    if rep.active:
        rep.finish(status)
        for w in rep.warnings:
            warn(w)
    return status
