"""imsnbu: the NetBackup module's command.

    imsnbu install [--policy P [--schedule S]] [--dir /usr/openv/netbackup/bin] [-D STAGING]
                   [--check [--max-age HOURS]] [-j N] [--keep N] [--force]
    imsnbu restore PATH [-D STAGING] [--from DIR] [--client NAME] [--policy P] [--at DATE] [-v]
"""
from __future__ import annotations

import datetime as dt
import os
import shlex
import sys

from asm.cli.common import ArgParser, number, parse_date, run_command
from asm.config import Config
from asm.errors import EXIT_DEVICE, EXIT_MISSING, EXIT_OK, ImsError
from asm.groups import Groups
from plugins.netbackup.install import DEFAULT_BIN, install, policy_advice
from plugins.netbackup.notify import bpstart_timeout

PROG = "imsnbu"


def build_parser() -> ArgParser:
    p = ArgParser(prog=PROG, description="NetBackup module of ims-asm: notify scripts, policy setup, restore.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=ArgParser)
    s = sub.add_parser("install", help="install bpstart_notify/bpend_notify and print the policy setup")
    s.add_argument("--policy", help="install as bpstart_notify.POLICY (default: for every policy)")
    s.add_argument("--schedule", help="install as bpstart_notify.POLICY.SCHEDULE")
    s.add_argument("--dir", dest="bindir", default=DEFAULT_BIN, help=f"NetBackup bin directory (default {DEFAULT_BIN})")
    s.add_argument("-D", dest="staging", metavar="DIR", help="staging directory (default: staging.dir)")
    s.add_argument("--check", action="store_true",
                   help="bpstart_notify only checks for fresh dumps staged ahead (e.g. from cron)")
    s.add_argument("--max-age", type=number(0, whole=False, above=True, unit=" hours"), default=24.0, metavar="HOURS", help="freshness for --check (24)")
    s.add_argument("-j", dest="jobs", type=number(1, 64), metavar="N", help="parallel dumps (default: staging.jobs or cores)")
    s.add_argument("--keep", type=number(0, 1000), metavar="N", help="staged files kept after success (default: staging.keep)")
    s.add_argument("--force", action="store_true", help="replace notify scripts not installed by imsnbu")
    s = sub.add_parser("restore", help="print the bprestore command for a user's files; restore once they are back")
    s.add_argument("path", help="/partition/user/joe, /partition/joe/Folder or a user name")
    s.add_argument("-D", dest="staging", metavar="DIR", help="staging directory (default: staging.dir)")
    s.add_argument("--from", dest="frm", metavar="DIR", help="restore the files to DIR instead of where they were")
    s.add_argument("--client", default=None, help="NetBackup client that backed them up (default: this host)")
    s.add_argument("--policy", help="limit bprestore to this policy")
    s.add_argument("--at", metavar="YYYYMMDD[:HHMMSS]", help="the state as of this date")
    s.add_argument("-v", dest="verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # a mistyped IMS_HOME is refused (exit 2, installation_problem's line) before anything
    # is written: notify scripts with it inside would fail every job (bpstart exits 2)
    cfg = Config().require()
    try:
        if args.cmd == "install":
            return _install(args, cfg)
        return _restore(args, cfg)
    except OSError as exc:
        # the NetBackup bin directory, the staging directory or its rename file
        raise ImsError(f"{exc.filename or ''}: {exc.strerror}", status=EXIT_DEVICE) from None


def _install(args, cfg) -> int:
    from staging.run import staging_dir
    directory = staging_dir(cfg, args.staging)
    mode = "check" if args.check else "dump"
    paths = install(args.bindir, args.policy, args.schedule, cfg.home, directory, mode=mode,
                    max_age=args.max_age, jobs=args.jobs, keep=args.keep, force=args.force)
    for p in paths:
        print(f"installed {p} ({'checks for fresh dumps' if mode == 'check' and 'start' in p else 'stages' if 'start' in p else 'records the status, cleans up'})")
    print()
    print(policy_advice(args.policy, args.schedule, directory, mode, bpstart_timeout()))
    return EXIT_OK


def _restore(args, cfg) -> int:
    import socket

    from staging.catalog import Catalog
    from staging.cli import print_chain, user_of
    from staging.lookup import chain_for, restore_chain
    from staging.run import staging_dir
    directory = staging_dir(cfg, args.staging, create=False)
    user, target = user_of(args.path, Groups.load(cfg.groups_path))
    at = parse_date(args.at) if args.at is not None else None
    place = os.path.abspath(args.frm) if args.frm else directory
    cat = Catalog(directory)
    try:
        links = chain_for(cat, user, [place], at)
    finally:
        cat.close()
    target = target or f"/{links[-1].dump.partition}/user/{user}"
    print_chain(links, user)
    missing = [lk for lk in links if not lk.found]
    if missing:
        client = args.client or socket.gethostname()
        first = min(lk.dump.started for lk in missing)
        last = max(lk.dump.finished or lk.dump.started for lk in missing)
        fmt = lambda t: dt.datetime.fromtimestamp(t).strftime("%m/%d/%Y %H:%M:%S")  # noqa: E731
        cmd = ["bprestore", "-w", "-t", "0", "-C", client, "-D", socket.gethostname(),
               "-s", fmt(first - 60), "-e", fmt(last + 86400)]
        if args.policy:
            cmd += ["-p", args.policy]
        if place != directory:
            rename = os.path.join(place, ".imsnbu-rename")
            os.makedirs(place, exist_ok=True)
            with open(rename, "w", encoding="utf-8") as f:
                for lk in missing:
                    f.write(f"change {os.path.join(directory, lk.dump.file)} to {os.path.join(place, lk.dump.file)}\n")
            cmd += ["-R", rename]
        cmd += [os.path.join(directory, lk.dump.file) for lk in missing]
        print("\nHave NetBackup put the missing files back:")
        print("  " + " ".join(shlex.quote(c) for c in cmd))
        print("then run again: " + " ".join(shlex.quote(a) for a in rerun_argv(args, place)))
        return EXIT_MISSING  # the engine must put the files back
    return restore_chain(links, target, cfg.home, verbose=args.verbose, say=lambda s: print(s, file=sys.stderr))


def rerun_argv(args, place: str) -> list[str]:
    """The same ``imsnbu restore`` with every option given (the staging directory, where
    the files go back, the date), to run once NetBackup has put the files back."""
    argv = [PROG, "restore", args.path]
    if args.staging:
        argv += ["-D", os.path.abspath(args.staging)]
    if args.frm:
        argv += ["--from", place]
    for opt, value in (("--client", args.client), ("--policy", args.policy), ("--at", args.at)):
        if value is not None:
            argv += [opt, value]
    if args.verbose:
        argv.append("-v")
    return argv


if __name__ == "__main__":
    sys.exit(main())
