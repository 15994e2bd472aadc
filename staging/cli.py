"""imsstage: dump backup groups into a staging area for any backup engine, and find
and restore them again.

    imsstage [dump] [-D DIR] [-j N] [--full|--incremental|--cumulative] [--after-batch CMD]
                    [--push SPEC|--no-push] [--report FILE] [group ...]
    imsstage plan [-D DIR] [--incremental|--cumulative] [group ...]
    imsstage done [-D DIR] [--status N] [--job NAME]
    imsstage push [-D DIR] [--to SPEC]
    imsstage prune [-D DIR] [--dry-run]
    imsstage list [-D DIR] [--json]
    imsstage locate [-D DIR] [--from DIR] [--at DATE] PATH
    imsstage fetch [-D DIR] [--into DIR] [--at DATE] PATH
    imsstage restore [-D DIR] [--from DIR] [--at DATE] [--keep-fetched] [--report FILE] [-v] PATH
    imsstage verify [-D DIR] [--from DIR] [--at DATE] [--report FILE] [-v] PATH
"""
from __future__ import annotations

import os
import sqlite3
import sys

from asm.cli.common import ArgParser, Progress, UsageError, die, human, number, parse_date, run_command
from asm.cli.context import open_installation
from asm.config import Config
from asm.errors import EXIT_INTERRUPTED, EXIT_OK
from asm.groups import Groups
from asm.logical import parse
from staging.catalog import CATALOG_NAME, Catalog
from staging.errors import Missing
from staging.lookup import chain_for, restore_chain
from staging.run import check_fresh, default_jobs, engine_done, push_pending, stage, staging_dir

PROG = "imsstage"
COMMANDS = ("dump", "plan", "done", "push", "prune", "list", "locate", "fetch", "restore", "check", "verify")


def _common(p):
    p.add_argument("-D", dest="dir", metavar="DIR", help="staging directory (default: staging.dir)")
    p.add_argument("-v", dest="verbose", action="store_true", help="say what happens (quiet in cron otherwise)")


def build_parser() -> ArgParser:
    p = ArgParser(prog=PROG, description="Stage per-group dumps for a backup engine; find and restore them.")
    sub = p.add_subparsers(dest="cmd", parser_class=ArgParser)
    for name, helptext in (("dump", "dump groups into the staging directory (the default command)"),
                           ("plan", "estimate sizes and print the batches; dump nothing"),
                           ("check", "succeed only if every group has a fresh complete dump not yet saved")):
        s = sub.add_parser(name, help=helptext)
        _common(s)
        m = s.add_mutually_exclusive_group()
        m.add_argument("--full", dest="mode", action="store_const", const="full", help="full dumps (default)")
        m.add_argument("--incremental", dest="mode", action="store_const", const="incr",
                       help="since the last successful dump of any kind (per group)")
        m.add_argument("--cumulative", dest="mode", action="store_const", const="cinc",
                       help="since the last successful full dump (per group)")
        if name == "check":
            s.add_argument("--max-age", type=number(0, whole=False, above=True, unit=" hours"), default=24.0, metavar="HOURS",
                           help="how old a dump may be (default 24)")
            s.add_argument("--job", metavar="NAME", help="claim the dumps for this engine job")
            continue
        s.add_argument("-j", dest="jobs", type=number(1, 64), metavar="N",
                       help="dumps at a time (default: staging.jobs, else the number of cores)")
        s.add_argument("--after-batch", metavar="CMD",
                       help="shell command that saves a batch when the area cannot hold every group "
                            "(gets the files as \"$@\"); default: staging.afterbatch")
        s.add_argument("--deadline", type=number(0, whole=False, above=True, unit=" seconds"), metavar="SECONDS",
                       help="stop and remove unfinished dumps after this many seconds")
        s.add_argument("--job", metavar="NAME", help="claim the staged dumps for this engine job")
        if name == "dump":
            s.add_argument("--report", metavar="FILE",
                           help="write a JSON report of the run to FILE (docs/operations.md, \"Proving your backups\")")
        s.add_argument("--wait", type=number(0, whole=False, unit=" seconds"), default=0.0, metavar="SECONDS",
                       help="wait this long for another run on the area to finish (default: refuse at once)")
        if name == "dump":
            pm = s.add_mutually_exclusive_group()
            pm.add_argument("--push", metavar="SPEC",
                            help="push each completed dump to [user@]host[:port]:dir over SFTP or to "
                                 "s3://bucket/prefix/ (default: staging.remote)")
            pm.add_argument("--no-push", dest="push", action="store_const", const="",
                            help="do not push, even when staging.remote is set")
        s.add_argument("groups", nargs="*", metavar="group", help="GROUP (every partition) or /PARTITION/GROUP")
    s = sub.add_parser("done", help="the engine finished: record its status; on 0 remove saved files")
    _common(s)
    s.add_argument("--status", type=int, default=0, help="the engine's exit status (default 0)")
    s.add_argument("--job", metavar="NAME", help="only the dumps claimed by this job")
    s.add_argument("--keep", type=number(0, 1000), metavar="N", help="keep the newest N per group (default: staging.keep)")
    s = sub.add_parser("push", help="push the dumps whose push failed or was never made")
    _common(s)
    s.add_argument("--to", metavar="SPEC", help="[user@]host[:port]:dir or s3://bucket/prefix/ "
                                                "(default: staging.remote)")
    s.add_argument("--wait", type=number(0, whole=False, unit=" seconds"), default=0.0, metavar="SECONDS",
                   help="wait this long for another run on the area to finish (default: refuse at once)")
    s = sub.add_parser("prune", help="remove the remote copies the remote retention (staging.remote.keep*) "
                                     "no longer keeps")
    _common(s)
    s.add_argument("--dry-run", action="store_true", help="say what would be removed; remove nothing")
    s.add_argument("--wait", type=number(0, whole=False, unit=" seconds"), default=0.0, metavar="SECONDS",
                   help="wait this long for another run on the area to finish (default: refuse at once)")
    s = sub.add_parser("list", help="print the catalog")
    _common(s)
    s.add_argument("--json", action="store_true", help="one JSON object per dump")
    for name, helptext in (("locate", "which files hold a user or folder, and the chain to restore"),
                           ("fetch", "fetch the chain's pushed files back from the media server"),
                           ("restore", "restore a user or folder from the chain of staged files "
                                       "(fetching pushed ones that are not here)"),
                           ("verify", "imsverify the chain the catalog names for a user (the files must be "
                                      "here or in --from)")):
        s = sub.add_parser(name, help=helptext)
        _common(s)
        if name == "fetch":
            s.add_argument("--into", dest="frm", metavar="DIR",
                           help="where to put the fetched files (default: the staging directory)")
        else:
            s.add_argument("--from", dest="frm", metavar="DIR",
                           help="where the engine put the files back, and where pushed files are fetched "
                                "to (default: the staging directory)")
        if name == "verify":
            s.add_argument("--report", metavar="FILE", help="imsverify's JSON report of the chain")
        if name == "restore":
            s.add_argument("--report", metavar="FILE",
                           help="write a JSON report of the chain restore to FILE (one report for the chain)")
            s.add_argument("--keep-fetched", action="store_true",
                           help="keep the files fetched from the media server (default: removed after "
                                "a successful restore)")
        s.add_argument("--at", metavar="YYYYMMDD[:HHMMSS]", help="the state as of this date (default: newest)")
        s.add_argument("path", help="/partition/user/joe, /partition/joe/Folder, or a user name")
    return p


def _say(verbose: bool, progress: Progress | None = None):
    def say(line: str) -> None:
        if verbose:
            if progress:
                progress.clear()
            print(f"{PROG}: {line}", file=sys.stderr)
    return say


def user_of(text: str, groups: Groups) -> tuple[str, str | None]:
    """(user, logical path for imsrestore or None when only a name was given)."""
    if not text.startswith("/"):
        return text, None
    lp = parse(text, groups)
    if lp.user is None:
        raise UsageError(f"{text!r} names no user: use /partition/user/joe or /partition/joe/Folder")
    return lp.user, text


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["dump"] + argv
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "dump" or args.cmd == "restore":
            from asm.report import run_reported
            from asm.cli.common import warn
            cmd = PROG if args.cmd == "dump" else f"{PROG} restore"
            return run_reported(cmd, args.report, lambda rep: _dispatch(args, rep), lambda w: warn(PROG, w))
        return _dispatch(args)
    except KeyboardInterrupt:
        return die(PROG, "interrupted: unfinished dumps were removed and marked failed", EXIT_INTERRUPTED)
    except sqlite3.DatabaseError as exc:
        # damage the catalog's first check did not reach, or a write it could not make
        from staging.catalog import catalog_error
        err = catalog_error(CATALOG_NAME, exc)
        if err is None:
            raise
        return die(PROG, str(err), err.status)


def _dispatch(args, rep=None) -> int:
    if args.cmd in ("dump", "plan", "check"):
        inst = open_installation()
        directory = staging_dir(inst.config, args.dir)
        mode = args.mode or "full"
        if rep is not None:
            rep.begin(inst.config, selection=list(args.groups) or ["/"], device=directory, mode=mode)
        if args.cmd == "check":
            fresh = check_fresh(inst, directory, mode, args.max_age * 3600, job=args.job)
            if args.verbose:
                for d in fresh:
                    print(f"{PROG}: fresh: {d.file} ({d.kind}, {d.when()})", file=sys.stderr)
            return EXIT_OK
        jobs = args.jobs or default_jobs(inst.config)
        if jobs < 1:
            raise UsageError(f"bad -j {jobs}: use 1 or more")
        progress = Progress(enabled=None if not args.verbose else None)
        say = _say(args.verbose or args.cmd == "plan", progress)

        def show(done, total, running):
            progress.update(f"{PROG}: {done}/{total} groups staged, {len(running)} running: "
                            + ", ".join(j.unit.label for j in running))

        def show_push(i, total, d):
            progress.update(f"{PROG}: pushing {i}/{total}: {d.file}", force=True)

        res = stage(inst, directory, args.groups, mode, jobs,
                    after_batch=args.after_batch or inst.config.get("staging.afterbatch"),
                    deadline=args.deadline, job=args.job, lock_wait=args.wait, say=say,
                    progress=show if progress.enabled else None, plan_only=args.cmd == "plan",
                    push=getattr(args, "push", None), push_progress=show_push if progress.enabled else None)
        progress.clear()
        if args.cmd == "plan":
            return EXIT_OK
        ok = [o for o in res.dumps if o.ok]
        if rep is not None:
            from staging.report import stage_report
            stage_report(rep, res)
        if args.verbose or sys.stderr.isatty():
            print(f"{PROG}: {len(ok)} of {len(res.dumps)} dumps staged in {directory}, "
                  f"{human(sum(o.size for o in ok))}, {res.batches} batch(es)"
                  + (f"; {len(res.pushed)} pushed to {res.remote}" if res.remote else ""), file=sys.stderr)
        if res.message:
            print(f"{PROG}: {res.message}", file=sys.stderr)
        if res.push_message:
            print(f"{PROG}: {res.push_message}", file=sys.stderr)
        return res.status
    cfg = Config()
    directory = staging_dir(cfg, args.dir, create=False)
    if args.cmd == "done":
        keep = args.keep if args.keep is not None else cfg.get_int("staging.keep")
        reported, removed = engine_done(directory, args.status, keep, job=args.job)
        if args.verbose:
            print(f"{PROG}: engine status {args.status} recorded on {len(reported)} dumps; "
                  f"{len(removed)} files removed", file=sys.stderr)
        return EXIT_OK
    if args.cmd == "push":
        return _push(args, cfg, directory)
    if args.cmd == "prune":
        from staging.retention import prune
        rep = prune(cfg, directory, dry_run=args.dry_run, lock_wait=args.wait,
                    say=_say(args.verbose or args.dry_run))
        if args.verbose or args.dry_run or sys.stderr.isatty():
            print(f"{PROG}: {len(rep.removed)} remote copies {'to remove' if args.dry_run else 'removed'}, "
                  f"{len(rep.kept)} kept, {len(rep.locked)} under object lock, {len(rep.failed)} failed",
                  file=sys.stderr)
        for d, error, _ in rep.failed[:1]:
            print(f"{PROG}: {len(rep.failed)} remote copies could not be removed (they stay in the catalog as "
                  f"pushed; the next prune tries again): {error}", file=sys.stderr)
        return rep.status
    cat = Catalog(directory)
    try:
        if args.cmd == "list":
            for d in cat.all():
                if args.json:
                    print(cat.to_json(d))
                else:
                    print(f"{d.id}\t{d.when()}\t/{d.partition}/{d.grp}\t{d.kind}\t{d.status}"
                          f"\t{d.engine or '-'}\t{d.size if d.size is not None else '-'}\t{d.file}"
                          f"{'' if d.removed is None else ' (removed)'}{'' if not d.error else ' ' + d.error}"
                          + _push_note(d))
            return EXIT_OK
        groups = Groups.load(cfg.groups_path)
        user, target = user_of(args.path, groups)
        at = parse_date(args.at) if args.at is not None else None
        places = [os.path.abspath(args.frm)] if args.frm else [directory]
        links = chain_for(cat, user, places, at)
        if target is None:
            target = f"/{links[-1].dump.partition}/user/{user}"
        if args.cmd == "locate":
            print_chain(links, user)
            return EXIT_OK
        say = lambda s: print(s, file=sys.stderr)  # noqa: E731
        into = places[0]
        if args.cmd == "verify":
            return _verify_chain(links, user, cfg, args)
        if args.cmd == "fetch":
            from staging.remote import fetch_links
            fetched = fetch_links(links, into, cfg, say=say if args.verbose else lambda s: None)
            print_chain(links, user)
            missing = [lk.dump.file for lk in links if not lk.found]
            if missing:
                raise Missing(f"{len(missing)} of the {len(links)} files are neither here nor pushed: "
                              f"{', '.join(missing)}; have the engine restore them (see 'locate')")
            if args.verbose:
                say(f"{PROG}: {len(fetched)} file(s) fetched into {into}")
            return EXIT_OK
        fetched = []
        if any(not lk.found and lk.remote for lk in links):
            gaps = [lk.dump.file for lk in links if not lk.found and not lk.remote]
            if gaps:        # say so before fetching anything
                raise Missing(f"{len(gaps)} of the {len(links)} files are not back yet and were not pushed: "
                              f"{', '.join(gaps)}; have the engine restore them (see 'locate'), then run this again")
            from staging.remote import fetch_links
            fetched = fetch_links(links, into, cfg, say=say if args.verbose else lambda s: None)
        child = None
        if rep is not None:
            from asm.report import labels_of
            rep.labels = labels_of([target])
            rep.begin(cfg, selection=[target], device=into, at=args.at,
                      chain=[{"file": lk.dump.file, "kind": lk.dump.kind, "id": lk.dump.id,
                              "base": lk.dump.base, "sha256": lk.dump.sha256} for lk in links])
            if rep.active:
                os.makedirs(os.path.join(cfg.home, "data"), exist_ok=True)
                child = os.path.join(cfg.home, "data", f".imsstage-restore-{os.getpid()}.json")
        try:
            rc = restore_chain(links, target, cfg.home, verbose=args.verbose, say=say, report=child)
        finally:
            if child:
                _merge_child(rep, child)
        if rc == EXIT_OK and fetched and not args.keep_fetched:
            for f in fetched:
                try:
                    os.unlink(f.path)
                except FileNotFoundError:
                    pass
            if args.verbose:
                say(f"{PROG}: removed the {len(fetched)} fetched file(s) (--keep-fetched keeps them)")
        return rc
    finally:
        cat.close()


def _verify_chain(links, user: str, cfg, args) -> int:
    """imsverify -f FULL -f INCR ...: the chain the catalog names, checked as one (each
    incremental continues the one before, every member's digest), after each file's
    SHA-256 is checked against the catalog."""
    import subprocess

    from staging.dump import sha256_of
    missing = [lk.dump.file for lk in links if not lk.found]
    if missing:
        # (those pushed off-site come back with fetch, as restore takes them: the advice
        # pointed at the backup engine only)
        remote = [lk for lk in links if not lk.found and lk.remote]
        how = (f"fetch them (imsstage fetch {user}), or have the engine restore them into --from DIR"
               if remote else "have the engine restore them into --from DIR")
        raise Missing(f"{len(missing)} of the {len(links)} files of {user}'s chain are not here: "
                      f"{', '.join(missing)}; {how} (see 'locate'), then run this again")
    for lk in links:
        _, digest = sha256_of(lk.found)
        if digest != lk.dump.sha256:
            from asm.errors import EXIT_INCOMPLETE
            from staging.errors import StagingError
            raise StagingError(f"{lk.found} is not the file the catalog recorded (sha256 {digest[:12]}... "
                               f"instead of {lk.dump.sha256[:12]}...)", status=EXIT_INCOMPLETE)
    argv = [sys.executable, "-m", "asm.cli.imsverify"]
    for lk in links:
        argv += ["-f", lk.found]
    if args.verbose:
        argv.append("-v")
    if args.report:
        argv += ["--report", args.report]
    return subprocess.run(argv, env=dict(os.environ, IMS_HOME=cfg.home)).returncode


def _merge_child(rep, path: str) -> None:
    """The chain restore's own report (imsrestore's) becomes this run's counts."""
    import json
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    for k in ("counts", "errors", "archives", "duplicates", "renumbered", "expunged", "hostile", "corrupt"):
        if k in doc:
            rep.fields[k] = doc[k]


def _push_note(d) -> str:
    if d.push == "ok":
        return f"\tpushed {d.remote} ({d.push_verified})"
    if d.push == "failed":
        return f"\tpush FAILED: {d.push_error}"
    if d.push == "removed":
        return f"\tremote copy {d.remote} removed by retention"
    return ""


def _push(args, cfg, directory: str) -> int:
    progress = Progress()
    say = _say(args.verbose, progress)

    def show(i, total, d):
        progress.update(f"{PROG}: pushing {i}/{total}: {d.file}", force=True)

    rep, gone = push_pending(cfg, directory, args.to, lock_wait=args.wait, say=say,
                             progress=show if progress.enabled else None)
    progress.clear()
    if args.verbose or sys.stderr.isatty():
        print(f"{PROG}: {len(rep.pushed)} dump(s) pushed, {len(rep.failed)} failed"
              + (f", {len(gone)} no longer here to push" if gone else ""), file=sys.stderr)
    if rep.failed:
        print(f"{PROG}: {rep.message}", file=sys.stderr)
    return rep.status


def print_chain(links, user: str, out=None) -> None:
    out = out or sys.stdout
    print(f"{user}: {len(links)} file(s) to restore, in this order:", file=out)
    for i, lk in enumerate(links, 1):
        d = lk.dump
        if lk.found:
            where = lk.found
        elif lk.remote:
            where = f"not here: pushed to {lk.remote}" + (", saved by the engine" if d.engine == "ok" else "")
        else:
            where = "not here: saved by the engine" if d.engine == "ok" else "MISSING"
        print(f"  {i}. {d.when()}  {d.kind:4}  /{d.partition}/{d.grp}  {d.file}  {d.size} bytes  "
              f"sha256 {d.sha256}  [{where}]", file=out)


if __name__ == "__main__":
    sys.exit(main())
