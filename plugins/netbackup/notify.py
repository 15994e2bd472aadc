"""What bpstart_notify and bpend_notify do.  NetBackup runs them on the client as

    bpstart_notify CLIENT POLICY SCHEDULE SCHEDULE_TYPE [STATUS]
    bpend_notify   CLIENT POLICY SCHEDULE SCHEDULE_TYPE STATUS

with SCHEDULE_TYPE one of FULL, INCR (differential: since the last backup of any kind),
CINC (cumulative: since the last full), UBAK, UARC (user backups and archives: nothing
to stage).  A non-zero exit of bpstart_notify fails the job (status 73); the script must
finish within BPSTART_TIMEOUT (default 300 s, else status 74), so the dump gets a deadline
a little shorter than that.  In ``check`` mode (dumps staged ahead from cron) the script
only verifies that every group has a fresh, complete dump.

The installed scripts (see :mod:`plugins.netbackup.install`) call
``python -m plugins.netbackup.notify start|end [--mode dump|check] [--dir DIR] ... -- ARGS``.
"""
from __future__ import annotations

import os
import re
import sys
import time

from asm.cli.common import ArgParser, run_command
from asm.config import Config
from asm.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ImsError

SCHEDULE_TYPES = {"FULL": "full", "INCR": "incr", "CINC": "cinc", "UBAK": None, "UARC": None}
DEFAULT_TIMEOUT = 300
MARGIN = 15          # seconds kept for NetBackup between our end and its timeout
BP_CONF = "/usr/openv/netbackup/bp.conf"


def bpstart_timeout(bp_conf: str = BP_CONF) -> int:
    """BPSTART_TIMEOUT from the environment or bp.conf, else NetBackup's default 300."""
    env = os.environ.get("BPSTART_TIMEOUT")
    if env and env.strip().isdigit():
        return int(env)
    try:
        with open(bp_conf, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = re.match(r"\s*BPSTART_TIMEOUT\s*=\s*(\d+)", line)
                if m:
                    return int(m.group(1))
    except OSError:
        pass
    return DEFAULT_TIMEOUT


def job_key(policy: str, schedule: str) -> str:
    return f"netbackup:{policy}.{schedule}"


class Log:
    """Lines go to stderr (NetBackup keeps them in the client's bpbkar log) and to
    ``DIR/netbackup.log`` with a time stamp."""

    def __init__(self, directory: str | None):
        self.path = os.path.join(directory, "netbackup.log") if directory else None

    def __call__(self, line: str) -> None:
        print(f"imsnbu: {line}", file=sys.stderr)
        if self.path:
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {line}\n")
            except OSError:
                pass


def build_parser() -> ArgParser:
    p = ArgParser(prog="imsnbu-notify", description="bpstart_notify / bpend_notify for ims-asm staging")
    p.add_argument("which", choices=["start", "end"])
    p.add_argument("--mode", choices=["dump", "check"], default="dump")
    p.add_argument("--dir", metavar="DIR", help="staging directory (default: staging.dir)")
    p.add_argument("--jobs", type=int, metavar="N")
    p.add_argument("--max-age", type=float, default=24.0, metavar="HOURS")
    p.add_argument("--keep", type=int, metavar="N")
    p.add_argument("--after-batch", metavar="CMD")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command("imsnbu", _main, argv)


def _main(argv: list[str] | None) -> int:
    from staging.run import check_fresh, default_jobs, engine_done, stage, staging_dir

    argv = list(sys.argv[1:] if argv is None else argv)
    nbu_args: list[str] = []
    if "--" in argv:     # NetBackup's own arguments follow "--", untouched (they may start with "-")
        i = argv.index("--")
        argv, nbu_args = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    args.args = nbu_args
    log = Log(None)
    if len(args.args) < 4:
        log(f"bp{args.which}_notify: expected CLIENT POLICY SCHEDULE SCHEDULE_TYPE"
            f"{' STATUS' if args.which == 'end' else ' [STATUS]'}, got {len(args.args)} arguments")
        return EXIT_USAGE
    client, policy, schedule, stype = args.args[:4]
    status = args.args[4] if len(args.args) > 4 else "0"
    if stype not in SCHEDULE_TYPES:
        log(f"unknown schedule type {stype!r}: expected one of {', '.join(SCHEDULE_TYPES)}")
        return EXIT_USAGE
    if not re.fullmatch(r"-?\d+", status):
        log(f"bad status {status!r}: expected a number")
        return EXIT_USAGE
    try:
        from asm.cli.context import open_installation
        cfg = Config()
        directory = staging_dir(cfg, args.dir)
        log = Log(directory)
        mode = SCHEDULE_TYPES[stype]
        key = job_key(policy, schedule)
        where = f"{client} {policy}/{schedule} {stype}"
        if mode is None:
            log(f"{where}: user backup/archive, nothing to stage")
            return EXIT_OK
        if args.which == "end":
            keep = args.keep if args.keep is not None else cfg.get_int("staging.keep")
            reported, removed = engine_done(directory, int(status), keep, job=key)
            log(f"{where}: bpend status {status} recorded on {len(reported)} dumps; "
                + (f"{len(removed)} files removed" if int(status) == 0 else "files kept for the next attempt"))
            from staging import report as sreport
            doc = sreport.read(sreport.job_report_path(directory, key))
            if doc is not None and int(status) == 0:
                # the counts of what bpstart_notify staged for this job, in the job's log
                log(f"{where}: this job saved {sreport.summary(doc)} (staging status {doc.get('status')})")
            elif int(status) != 0:
                # NetBackup did not save the job (1 is "partially successful": which files is
                # not ours to know): nothing of it may be logged as saved
                log(f"{where}: this job failed (NetBackup status {status}): nothing of it counts as saved"
                    + (f"; bpstart_notify staged {sreport.summary(doc)} (staging status {doc.get('status')})"
                       if doc is not None else "")
                    + "; the files are kept for the next attempt (see NetBackup's job details for why it failed)")
            return EXIT_OK
        timeout = bpstart_timeout()
        budget = max(5, timeout - MARGIN)
        inst = open_installation()
        if args.mode == "check":
            fresh = check_fresh(inst, directory, mode, args.max_age * 3600, job=key, lock_wait=budget)
            log(f"{where}: {len(fresh)} fresh staged dumps found, claimed for this job")
            return EXIT_OK
        _mark_lost(directory, key, log)
        jobs = args.jobs or default_jobs(cfg)
        from asm.report import RunReport
        from staging import report as sreport
        rep = RunReport("imsstage", sreport.job_report_path(directory, key), cfg)
        rep.begin(selection=["/"], device=directory, mode=mode, job=key)
        try:
            res = stage(inst, directory, None, mode, jobs,
                        after_batch=args.after_batch or cfg.get("staging.afterbatch"),
                        deadline=budget, job=key, say=lambda s: log(f"{where}: {s}"))
        except BaseException as exc:
            from asm.errors import status_of
            rep.finish(status_of(exc), errors=[{"mailbox": "", "error": str(exc) or type(exc).__name__}])
            raise
        sreport.stage_report(rep, res)
        rep.finish(res.status)
        for w in rep.warnings:
            log(w)
        log(f"{where}: staged {sreport.summary(rep.doc)}")
        ok = sum(1 for o in res.dumps if o.ok)
        log(f"{where}: {ok} of {len(res.dumps)} dumps staged in {directory} (status {res.status})")
        if res.message:
            log(f"{where}: {res.message}")
        return res.status
    except ImsError as exc:            # said in NetBackup's log and ours, not only on stderr
        log(str(exc))
        return exc.status
    except KeyboardInterrupt:          # NetBackup gave up on the script (BPSTART_TIMEOUT) or the job
        log("interrupted: unfinished dumps were removed and marked failed")
        return EXIT_INTERRUPTED


def _mark_lost(directory: str, key: str, log) -> None:
    """Dumps an earlier job of this policy.schedule took but never reported on (no
    bpend_notify ran): the engine may not have them, so no incremental continues them."""
    from staging.catalog import Catalog
    cat = Catalog(directory)
    try:
        lost = cat.unreported(key)
        if lost:
            cat.mark_lost([d.id for d in lost])
            log(f"{len(lost)} dumps of an earlier {key} job were never reported by bpend_notify: marked lost")
    finally:
        cat.close()


if __name__ == "__main__":
    sys.exit(main())
