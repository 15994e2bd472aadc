"""imsbacula: the Bacula (bpipe) module's command.

    imsbacula fileset [--per-user] [--name NAME] [--client C] [--storage S] [--pool P] [-o FILE]
    imsbacula backup [--level L] PATH         (bpipe reader: imsbackup -f - to stdout)
    imsbacula restore [--only PATH ...] PATH  (bpipe writer: stdin to imsrestore -f -)
    imsbacula select [PATH ... | --clear]     (what the next restore jobs restore)
    imsbacula history [--check]               (the good jobs each path's chain is made of)
    imsbacula jobstart|jobdone|jobfailed|restorestart|restoredone --jobid N [--level L]  (Job RunScripts)
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time

from asm.cli.common import ArgParser, Commit, UsageError, run_command
from asm.errors import EXIT_DEVICE, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, ImsError
from plugins.bacula.encoding import decode
from plugins.bacula.state import State, normalize_level

PROG = "imsbacula"
CHUNK = 1 << 16
DEFAULT_FILESET = "ims-mail"


def build_parser() -> ArgParser:
    p = ArgParser(prog=PROG, description="Bacula bpipe module: FileSet, backup/restore streams, job state.")
    p.add_argument("--home", metavar="ENC", help=argparse_hidden())
    p.add_argument("--plugins", metavar="ENC", help=argparse_hidden())
    p.add_argument("--fileset", default=DEFAULT_FILESET, metavar="NAME",
                   help=f"the FileSet whose job state to use (default {DEFAULT_FILESET})")
    p.add_argument("-E", dest="encoded", action="store_true", help=argparse_hidden())
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=ArgParser)

    f = sub.add_parser("fileset", help="write the FileSet and Job resources for bacula-dir.conf")
    f.add_argument("--per-user", action="store_true", help="one Plugin line per user instead of per group")
    f.add_argument("--name", default=DEFAULT_FILESET, help=f"FileSet and Job name (default {DEFAULT_FILESET})")
    f.add_argument("--client", default=None, help="the Client resource of this host (default HOSTNAME-fd)")
    f.add_argument("--storage", default="File1", help="Storage resource (default File1)")
    f.add_argument("--pool", default="File", help="Pool resource (default File)")
    f.add_argument("--messages", default="Standard", help="Messages resource (default Standard)")
    f.add_argument("--schedule", action="store_true",
                   help="add a Schedule: Full on Sunday, Incremental Monday to Saturday, 01:05")
    f.add_argument("--imsbacula", default=None, metavar="PATH",
                   help="absolute path of imsbacula on the client (default: this one)")
    f.add_argument("-o", dest="output", metavar="FILE", help="write to FILE (atomically) instead of stdout")

    b = sub.add_parser("backup", help="stream the archive of PATH to stdout (the bpipe reader)")
    b.add_argument("--level", default="auto", help="Full, Incremental, Differential or auto (the running job's)")
    b.add_argument("path")

    r = sub.add_parser("restore", help="restore the archive on stdin (the bpipe writer)")
    r.add_argument("--only", action="append", default=[], metavar="PATH",
                   help="restore only this user or folder (repeatable); default: 'imsbacula select'")
    r.add_argument("path")

    s = sub.add_parser("select", help="restore only these paths in the next restore jobs")
    s.add_argument("paths", nargs="*", metavar="PATH")
    s.add_argument("--clear", action="store_true", help="restore everything again")

    h = sub.add_parser("history", help="list the good backup jobs recorded per path")
    h.add_argument("--check", action="store_true",
                   help="check that each path's newest chain is unbroken: every base an incremental "
                        "names is a good job of that path whose state is kept (exit 7 when not)")

    for name, what in (("jobstart", "a backup job begins (client RunScript Before)"),
                       ("jobdone", "a backup job succeeded (client RunScript After, on success)"),
                       ("jobfailed", "a backup job failed (client RunScript After, on failure)"),
                       ("restorestart", "a restore job begins: show the selection in the job log"),
                       ("restoredone", "a restore job ended: fail it when a selected path was in no stream")):
        j = sub.add_parser(name, help=what)
        j.add_argument("--jobid", type=int, required=True)
        if name == "jobstart":
            j.add_argument("--level", required=True)
    return p


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


def _word(text: str, encoded: bool, what: str) -> str:
    if not encoded:
        return text
    try:
        return decode(text)
    except ValueError as exc:
        raise UsageError(f"bad {what}: {exc}") from None


def _log_path(home: str, fileset: str) -> str:
    d = os.path.join(home, "data", "bacula", "log")
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, f"{fileset}.log")


def _log(home: str, fileset: str, line: str, echo: bool = True) -> None:
    """A line in $IMS_HOME/data/bacula/log/FILESET.log (the bpipe commands' stderr is not
    in Bacula's job log) and on stderr."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(_log_path(home, fileset), "a", encoding="utf-8", errors="surrogateescape") as f:
        f.write(f"{stamp} {line}\n")
    if echo:
        print(f"{PROG}: {line}", file=sys.stderr, flush=True)


_STOPS = ("SIGINT", "SIGTERM", "SIGHUP")


def _child_setup(parent: int) -> None:
    """In the child, before the tool starts: the stop signals the wrapper held while it
    started the tool are let through again, and the tool gets SIGTERM when this wrapper
    dies, even of a SIGKILL (Linux's PR_SET_PDEATHSIG), so no tool goes on writing to a
    stream or a store its job no longer owns; a wrapper already gone: at once."""
    import signal
    from asm.children import die_with_parent
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [getattr(signal, n) for n in _STOPS])
    die_with_parent(parent)


def _run_tool(home: str, fileset: str, argv: list[str], stdin=None) -> int:
    """Run an ims tool with our stdin/stdout (the bpipe pipe, never copied through
    Python) and copy its stderr lines to the log.  When this wrapper is stopped (SIGTERM,
    SIGINT, SIGHUP: Bacula cancelling the job, a timeout) the tool is stopped too, and
    waited for, before the wrapper exits 130: an exit that says "interrupted" while the
    tool still writes the archive or the store would be a lie."""
    import functools
    import signal
    stops = [getattr(signal, n) for n in _STOPS]
    # (held while the tool starts: a stop signal then would leave a tool no one waits for)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        proc = subprocess.Popen([sys.executable, "-m"] + argv, stdin=stdin, stdout=None, stderr=subprocess.PIPE,
                                preexec_fn=functools.partial(_child_setup, os.getpid()))
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        raise
    try:
        # (a stop signal that came while the tool started is raised here, where the
        # tool is stopped and waited for)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        for raw in proc.stderr:
            _log(home, fileset, raw.decode("utf-8", "replace").rstrip("\n"))
        return proc.wait()
    except BaseException:
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGTERM)
        try:
            # the tool ends as it would on its own SIGTERM (nothing half-written), and
            # says why on its stderr, which still goes to the job's log
            for raw in proc.stderr:
                _log(home, fileset, raw.decode("utf-8", "replace").rstrip("\n"))
            proc.wait(timeout=60)
        except BaseException:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()
        raise


def _tool_name(argv):
    return argv[0].rsplit(".", 1)[-1]


def _own_script() -> str:
    """The imsbacula of this Python (not a PATH shim: the file daemon runs it with a bare
    environment)."""
    here = os.path.join(os.path.dirname(sys.executable), PROG)
    if os.access(here, os.X_OK):
        return here
    return shutil.which(PROG) or os.path.abspath(sys.argv[0])


# -- commands ---------------------------------------------------------------------

def cmd_fileset(args, home: str) -> int:
    import socket

    from asm.cli.context import open_installation
    from asm.config import atomic_write
    from plugins.bacula.fileset import Options, render

    exe = args.imsbacula or _own_script()
    o = Options(name=args.name, per_user=args.per_user,
                client=args.client or f"{socket.gethostname().split('.')[0]}-fd",
                storage=args.storage, pool=args.pool, messages=args.messages, schedule=args.schedule,
                imsbacula=exe, home=home, plugins=os.environ.get("IMS_ASM_PLUGINS", ""))
    inst = open_installation(home)
    text = render(o, inst.store, inst.groups)
    if args.output:
        out = os.path.abspath(args.output)
        if not os.path.isdir(os.path.dirname(out)):
            raise UsageError(f"cannot write {args.output!r}: its directory does not exist")
        from asm.config import own_file
        mine = own_file(out, home)
        if mine:
            raise UsageError(f"-o {args.output} is {mine}, which the FileSet would replace: name a file of its "
                             f"own (e.g. in /etc/bacula); nothing was written")
        atomic_write(out, text.encode("utf-8"), mode=0o640)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_backup(args, home: str, state: State) -> int:
    path = _word(args.path, args.encoded, "path")
    jobid = None
    if args.level == "auto":
        pend = state.pending(args.fileset)
        if pend is None:
            level = "Full"
            _log(home, args.fileset, f"{path}: no running job recorded for FileSet {args.fileset!r} (is the "
                 f"Job's 'jobstart' RunScript missing?): taking a full backup")
        else:
            jobid, level = pend
    else:
        try:
            level = normalize_level(args.level)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    base = state.since(path, level, args.fileset)
    argv = ["asm.cli.imsbackup", "-f", "-"]
    if level != "Full" and base is None:
        _log(home, args.fileset, f"{path}: no good earlier backup to build a {level.lower()} on: taking a full")
        level = "Full"
    base_state = None
    if base is not None:
        base_state = state.good_files(path, base[1])[0]
        if not os.path.isfile(base_state):
            # a good job without its state (recorded before the module kept states, or the
            # state lost): a date cannot see mail moved or renamed since, so take a full
            _log(home, args.fileset, f"{path}: the state of job {base[1]} (the base of this "
                 f"{level.lower()}) is missing ({base_state}): taking a full")
            level, base, base_state = "Full", None, None
    if base_state is not None:
        argv += ["--base", base_state]
    report = None
    if jobid is not None:
        state_out, report = state.pending_files(args.fileset, jobid, path)
        argv += ["--state-out", state_out, "--report", report]
    if sys.stdout.isatty():
        raise UsageError("refusing to write an archive to a terminal: bpipe reads this from a pipe")
    started = time.time()
    _log(home, args.fileset, f"{path}: {level.lower()} backup" + (f" of job {jobid}" if jobid else "")
         + (f", what changed since job {base[1]}" if base else ""), echo=False)
    if jobid is not None:
        # failed until it ends well: a stream interrupted, or this process killed, before
        # imsbackup's status is known is a failed stream to jobdone, never a missing one
        state.stream_failed(args.fileset, jobid, path, EXIT_INTERRUPTED)
    rc = _run_tool(home, args.fileset, argv + [path])
    if rc != EXIT_OK:
        _log(home, args.fileset, f"{path}: imsbackup failed with exit status {rc}; the job must fail")
        if jobid is not None:
            state.stream_failed(args.fileset, jobid, path, rc)
        return rc
    if jobid is not None:
        state.stream_ok(args.fileset, jobid, path, level, started)
    _log(home, args.fileset, f"{path}: {level.lower()} backup streamed", echo=False)
    return EXIT_OK


def _applies(sel, stream) -> bool:
    """Can the stream of ``stream`` hold something of the selected path ``sel``?  False
    only when its path says so whatever groups it was taken with: another partition,
    another user's per-user stream, or another group (imsrestore matches a group
    against the group each user was archived under).  Whether a group's stream holds a
    user is not decided here: backup-groups.conf may have changed since the stream was
    taken (a group split), so the stream is read and imsrestore says what it holds."""
    if sel.partition is None:
        return True
    if stream.partition != sel.partition:
        return False
    if sel.user is not None:
        return stream.user is None or stream.user == sel.user
    if sel.group is not None and sel.group != "user" and stream.group not in (None, "user", sel.group):
        return False
    return True


def _drain(stream) -> int:
    n = 0
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return n
        n += len(chunk)


def cmd_restore(args, home: str, state: State) -> int:
    import json
    import tempfile

    from asm.cli.context import open_installation
    from asm.logical import PathError, parse

    path = _word(args.path, args.encoded, "path")
    inst = open_installation(home, create=True)
    try:
        stream = parse(path, inst.groups)
        only = [_word(p, args.encoded, "--only path") for p in args.only] or state.selection()
        chosen = [p for p in only if _applies(parse(p, inst.groups), stream)]
    except PathError as exc:
        raise UsageError(str(exc)) from None
    if only and not chosen:
        n = _drain(sys.stdin.buffer)
        _log(home, args.fileset, f"{path}: nothing selected in this stream ({', '.join(only)}); "
             f"skipped {n} bytes")
        return EXIT_OK
    _log(home, args.fileset, f"{path}: restoring " + (", ".join(chosen) if chosen else "everything"), echo=False)
    os.makedirs(state.dir, exist_ok=True)
    fd, report = tempfile.mkstemp(prefix="restore-", suffix=".json", dir=state.dir)
    os.close(fd)
    try:
        rc = _run_tool(home, args.fileset, ["asm.cli.imsrestore", "-f", "-", "--report", report] + chosen,
                       stdin=sys.stdin.buffer)
        try:
            with open(report, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            doc = {}
    finally:
        with contextlib.suppress(OSError):
            os.unlink(report)
    unmatched = [p for p in doc.get("unmatched") or [] if isinstance(p, str)]
    if chosen and unmatched and rc in (EXIT_USAGE, EXIT_PARTIAL) and not doc.get("errors") \
            and not doc.get("pending") and not doc.get("unread"):
        # the only failure is selected paths this stream does not hold (another group's
        # users, a group split since): other streams of the job hold them
        if len(unmatched) >= len(chosen):
            _log(home, args.fileset, f"{path}: nothing selected in this stream ({', '.join(chosen)}); "
                 f"read to the end, nothing restored")
        else:
            _log(home, args.fileset, f"{path}: restored what this stream holds of the selection; not in it: "
                 + ", ".join(unmatched))
            if not args.only:
                state.restore_held(args.fileset, [p for p in chosen if p not in unmatched])
        return EXIT_OK
    if rc == EXIT_OK and chosen and not args.only:
        state.restore_held(args.fileset, chosen)
    if rc != EXIT_OK:
        _log(home, args.fileset, f"{path}: imsrestore failed with exit status {rc}; the job must fail")
    return rc


def cmd_select(args, home: str, state: State) -> int:
    from asm.cli.context import open_installation
    from asm.logical import PathError, parse

    if args.clear and args.paths:
        raise UsageError("give paths or --clear, not both")
    if args.clear:
        state.set_selection([])
        print(f"{PROG}: restores restore everything in their streams again")
        return EXIT_OK
    if args.paths:
        inst = open_installation(home)
        for p in args.paths:
            try:
                lp = parse(p, inst.groups)
            except PathError as exc:
                raise UsageError(str(exc)) from None
            if lp.partition is None:
                raise UsageError(f"{p!r} selects everything: use 'imsbacula select --clear' instead")
            parts = inst.store.partitions()
            if lp.partition not in parts:
                # no stream covers it: every restore job would skip it and end "Restore OK"
                raise UsageError(f"{p!r}: there is no partition {lp.partition!r} (this installation has "
                                 f"{', '.join(sorted(parts))}); nothing was selected")
        state.set_selection(list(dict.fromkeys(args.paths)))
    sel = state.selection()
    if sel:
        print(f"{PROG}: restore jobs restore only: " + ", ".join(sel)
              + " (until 'imsbacula select --clear')")
    else:
        print(f"{PROG}: restore jobs restore everything in their streams")
    return EXIT_OK


def _check_history(rows, state: State) -> int:
    """Each path's newest chain in each FileSet, walked back from its last good job
    through the bases its state names (archive ids) to a full: every link must be a good
    job of that path and FileSet with its state kept."""
    import json

    from asm.errors import EXIT_ORDER
    by_path: dict = {}
    for path, jobid, fs, level, started, _fin in rows:
        by_path.setdefault((path, fs), []).append((started, jobid, level))
    bad = 0
    for (path, fs), jobs in by_path.items():
        ids = {}
        for _, jobid, level in jobs:
            try:
                with open(state.good_files(path, jobid)[0], encoding="utf-8") as f:
                    doc = json.load(f)
                ids[doc["archive_id"]] = (jobid, level, doc.get("chain") or [])
            except (OSError, ValueError, KeyError):
                continue
        newest = max(jobs)[1]
        cur = next((v for v in ids.values() if v[0] == newest), None)
        if cur is None:
            print(f"{PROG}: {path}: the state of its newest good job {newest} (FileSet {fs}) is missing: "
                  f"its next incremental will be a full")
            bad += 1
            continue
        chain = cur[2]
        missing = [a for a in chain if a not in ids]
        if missing:
            print(f"{PROG}: {path}: job {newest} continues archive(s) {', '.join(missing)} that no good job "
                  f"of this path holds in FileSet {fs} (states pruned or lost): the chain cannot be "
                  f"restored whole")
            bad += 1
            continue
        links = [ids[a][0] for a in chain] + [newest]
        print(f"{PROG}: {path}: chain of {len(links)} jobs intact: " + " -> ".join(map(str, links))
              + f" (FileSet {fs})")
    return EXIT_ORDER if bad else EXIT_OK


def cmd_history(args, home: str, state: State) -> int:
    rows = state.history()
    if not rows:
        print(f"{PROG}: no good backup job recorded yet")
        return EXIT_OK
    if args.check:
        return _check_history(rows, state)
    print("path\tjobid\tfileset\tlevel\tstarted")
    for path, jobid, fileset, level, started, finished in rows:
        print(f"{path}\t{jobid}\t{fileset}\t{level}\t{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}")
    return EXIT_OK


MISSED_SHOWN = 20       # users named one a line in the job log; the rest counted


def _uncovered(home: str, paths: list[str]) -> list[str]:
    """Lines naming the users of the store that no stream of the job (``paths``: the
    logical paths it streamed, well or not) covers: made since 'imsbacula fileset' wrote
    the FileSet (in a group that had no user then, with --per-user, on a new partition)
    or moved by backup-groups.conf into a group without a Plugin line.  Every stream of
    such a job exits 0 and Bacula says "Backup OK" while their mail is in no backup."""
    from asm.cli.common import shown
    from asm.cli.context import open_installation
    from asm.logical import PathError, parse

    inst = open_installation(home)
    streams = []
    for p in paths:
        try:
            streams.append(parse(p, inst.groups, members=False))
        except PathError:
            continue
    missed = [(part, user) for part in inst.store.partitions() for user in inst.store.users(part)
              if not any(s.covers_user(part, user, inst.groups) for s in streams)]
    if not missed:
        return []
    lines = [shown(f"/{part}/{inst.groups.group_of(user)}/{user}: in no stream of this job's FileSet: "
                   f"NOT BACKED UP") for part, user in missed[:MISSED_SHOWN]]
    if len(missed) > MISSED_SHOWN:
        lines.append(f"... and {len(missed) - MISSED_SHOWN} more users in no stream: NOT BACKED UP")
    lines.append(f"{len(missed)} users of the store are in no Plugin line of the FileSet (made since "
                 f"'imsbacula fileset' wrote it, or moved to another group): write it again "
                 f"(imsbacula fileset -o ...), reload the director and run a job; this job must fail")
    return lines


def cmd_job(args, home: str, state: State) -> int:
    if args.cmd == "jobstart":
        try:
            level = normalize_level(args.level)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        state.job_start(args.fileset, args.jobid, level)
        print(f"{PROG}: job {args.jobid}: {level.lower()} backup of FileSet {args.fileset}")
    elif args.cmd == "jobdone":
        # the job recorded good and its streams' states put in place, or neither: a signal
        # between the two exited 130 (the job failed) with the job good in state.db, the
        # states of its streams left in pending/ or moved, and the next incremental built
        # on a job Bacula failed; once both are done, the run succeeded (Commit)
        commit = Commit().begin()
        try:
            rows, bad = state.job_done(args.fileset, args.jobid)
            reports = state.commit_states(args.fileset, args.jobid, rows)
        except BaseException:
            commit.undo()
            raise
        commit.done()
        total = {"messages": 0, "links": 0, "bytes": 0, "folders": 0, "errors": 0}
        for path, level, started in rows:
            doc = reports.get(path) or {}
            c = doc.get("counts") or {}
            for k in ("messages", "links", "bytes", "folders"):
                total[k] += int(c.get(k) or 0)
            total["errors"] += len(doc.get("errors") or [])
            what = (f"{c.get('messages', 0)} messages, {c.get('links', 0)} links, {c.get('bytes', 0)} bytes, "
                    f"{c.get('folders', 0)} folders, {len(doc.get('errors') or [])} errors"
                    if doc else "no run report")
            print(f"{PROG}: job {args.jobid}: {path} {level.lower()} recorded as good: {what}"
                  + (f" (archive {doc.get('archive_id')})" if doc.get("archive_id") else ""))
        if rows:
            print(f"{PROG}: job {args.jobid}: {len(rows)} streams, {total['messages']} messages, "
                  f"{total['links']} links, {total['bytes']} bytes, {total['errors']} errors")
        if not rows and not bad:
            # not one stream started (bpipe not loaded: 'Plugin Directory' missing in
            # bacula-fd.conf) or said a word: Bacula ends such a job OK with 0 files
            print(f"{PROG}: job {args.jobid}: no stream of this job ran to its end (is 'Plugin Directory' set "
                  f"in bacula-fd.conf, and the FileSet's Plugin lines there?); nothing recorded, the job "
                  f"must fail", flush=True)
            return EXIT_PARTIAL
        if not rows:
            print(f"{PROG}: job {args.jobid}: no stream of this job finished well; nothing recorded")
        missed = _uncovered(home, [p for p, _, _ in rows] + [p for p, _ in bad])
        for line in missed:
            print(f"{PROG}: job {args.jobid}: {line}", flush=True)
        if bad:
            # Bacula 9.6 counts a failed bpipe stream as a warning ("Backup OK -- with
            # warnings"); failing this RunScript (FailJobOnError) makes the job fail.
            for path, status in bad:
                why = ("it did not finish: interrupted or killed" if status == EXIT_INTERRUPTED
                       else f"imsbackup exit status {status}")
                print(f"{PROG}: job {args.jobid}: {path} FAILED ({why}); "
                      f"its next incremental starts from its last good job", flush=True)
            return EXIT_PARTIAL         # some stream of the job failed: the job must fail
        if missed:
            return EXIT_PARTIAL         # mail of the store is in no stream: the job must fail
    elif args.cmd == "jobfailed":
        n = state.job_failed(args.fileset, args.jobid)
        state.drop_states(args.fileset, args.jobid)
        print(f"{PROG}: job {args.jobid} failed: {n} streams not recorded; the next incremental starts "
              f"from the last good job (see {_log_path(home, args.fileset)})")
        try:
            with open(_log_path(home, args.fileset), encoding="utf-8") as f:
                tail = [ln.rstrip("\n") for ln in f][-10:]
            for ln in tail:
                print(f"{PROG}: log: {ln}")
        except OSError:
            pass
    elif args.cmd == "restoredone":
        missed = state.restore_done(args.fileset, args.jobid)
        if missed:
            for p in missed:
                print(f"{PROG}: restore job {args.jobid}: {p}: no stream of this job holds it; nothing of it "
                      f"was restored (mark the stream that holds it, or check 'imsbacula select')", flush=True)
            return EXIT_USAGE           # as imsrestore for a path that matched nothing
    else:  # restorestart
        sel = state.selection()
        state.restore_start(args.fileset, args.jobid, sel)
        print(f"{PROG}: restore job {args.jobid}: restoring "
              + ("only " + ", ".join(sel) + " (imsbacula select)" if sel else "everything in the selected streams"))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.plugins is not None:
        os.environ["IMS_ASM_PLUGINS"] = _word(args.plugins, True, "--plugins")
    if args.home is not None:
        os.environ["IMS_HOME"] = _word(args.home, True, "--home")
    from asm.config import NoInstallation, ims_home, installation_problem
    home = ims_home()
    why = installation_problem(home)
    if why:      # as every command: a mistyped --home is refused, never made (its state.db, its log)
        raise NoInstallation(why)
    if args.cmd != "fileset":
        # the job state's FileSet names a log file under $IMS_HOME/data/bacula/log: a
        # Bacula resource name, never a path ('../../x' wrote outside the installation)
        from plugins.bacula.fileset import NAME_RE
        if not NAME_RE.match(args.fileset):
            raise UsageError(f"bad --fileset {args.fileset!r}: use the FileSet's name as 'imsbacula fileset "
                             f"--name' wrote it (letters, digits, '_', '.', '-')")
    state = State(home)
    if args.cmd == "fileset":
        return cmd_fileset(args, home)
    if args.cmd == "backup":
        try:
            return cmd_backup(args, home, state)
        except BrokenPipeError:        # stdout is the stream bpipe reads: it is a device here
            raise ImsError("the reader went away (bpipe closed the pipe)", status=EXIT_DEVICE) from None
    if args.cmd == "restore":
        return cmd_restore(args, home, state)
    if args.cmd == "select":
        return cmd_select(args, home, state)
    if args.cmd == "history":
        return cmd_history(args, home, state)
    return cmd_job(args, home, state)


if __name__ == "__main__":
    sys.exit(main())
