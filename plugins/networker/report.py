"""imsasmreport: what the ASM saved since the tree was last built (a savepnpc pstcmd).

    imsasmreport [-p directory] [-v]

Reads ``$IMS_HOME/log/imsasm.log`` (written by imsasm: a line when a save record
begins, another when it ends) and reports the records saved since mkbackupdir last
built the tree (the group's precmd).  A record that began and has no line saying how it
ended (its stream cut, imsasm killed) failed.  A save set attempted more than once
(NetWorker's client retries run it again) is reported by its last attempt: one that
failed and was then saved is saved ("failed, then saved on retry"); one whose last
attempt failed is a failure.  Exit 0 when every save set's last attempt saved cleanly,
1 when one failed or none was saved.
"""
from __future__ import annotations

import json
import os
import sys
import time

from asm.cli.common import ArgParser, run_command, warn
from asm.config import Config, ConfigError
from asm.errors import EXIT_OK, EXIT_PARTIAL

from . import tree

PROG = "imsasmreport"


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _main(argv: list[str] | None) -> int:
    p = ArgParser(prog=PROG, description="Report the save records imsasm wrote since the tree was built.")
    p.add_argument("-p", dest="directory", metavar="DIRECTORY", help="the mkbackupdir tree")
    p.add_argument("-v", dest="verbose", action="store_true", help="list every record, not only failures")
    args = p.parse_args(argv)
    cfg = Config()
    directory = args.directory or cfg.get("store.backupdir")
    if not directory:
        raise ConfigError("no backup directory: give -p DIRECTORY")
    marker = tree.read_marker(os.path.abspath(directory))
    since = marker.get("built", 0)
    log = os.path.join(cfg.home, "log", "imsasm.log")
    records = []
    by_id: dict = {}        # a record's log id -> its entry in records (the last line about it wins)
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(e, dict) or e.get("mode") != "save" or not e.get("time", 0) >= since:
                    continue
                rid = e.get("record")
                if e.get("event") == "start" and rid:
                    # begun: failed until a line says how it ended (a stream cut, imsasm
                    # killed, the host down: none leaves another line)
                    when_started = time.strftime("%H:%M:%S", time.localtime(e.get("time", 0)))
                    e = dict(e, status="error", errors=[f"started at {when_started} and never finished "
                                                        f"(imsasm killed, or its stream cut): not saved"])
                elif "status" not in e:
                    continue
                if rid and rid in by_id:
                    records[by_id[rid]] = e
                    continue
                if rid:
                    by_id[rid] = len(records)
                records.append(e)
    except FileNotFoundError:
        pass
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    records, retried = last_attempts(records)
    bad = [e for e in records if e.get("status") != "ok"]
    for e in records:
        note = retried.get(id(e))
        if args.verbose or e in bad or note:
            errors = list(e.get("errors") or []) + ([note] if note else [])
            print(f"{e.get('status')}\t{e.get('name')}\t{e.get('level', 'full')}\t{e.get('messages', 0)} messages\t"
                  f"{e.get('bytes', 0)} bytes" + (f"\t{'; '.join(errors)}" if errors else ""))
    nmsg = sum(int(e.get("messages") or 0) for e in records)
    nbytes = sum(int(e.get("bytes") or 0) for e in records)
    incr = sum(1 for e in records if e.get("level") == "incr")
    saved_on_retry = sum(1 for e in records if id(e) in retried and e.get("status") == "ok")
    print(f"{PROG}: {len(records)} save records since {when}: {len(records) - len(bad)} ok"
          + (f" ({saved_on_retry} failed, then saved on retry)" if saved_on_retry else "")
          + f", {len(bad)} failed; "
          f"{nmsg} messages, {nbytes} bytes saved ({len(records) - incr} full, {incr} incremental on their "
          f"last save's state)")
    if not records:
        warn(PROG, f"no save records since the tree was built at {when}: did the group run?")
        return EXIT_PARTIAL
    return EXIT_PARTIAL if bad else EXIT_OK


def last_attempts(attempts: list[dict]) -> tuple[list[dict], dict]:
    """Each save set (its ``name``, the path NetWorker saved) by its last attempt, in the
    order of their first: NetWorker's client retry runs a failed save set again, and
    what it has is what the last attempt saved.  Also {id(entry): note} for the save
    sets attempted more than once, saying what the earlier attempts did."""
    by_name: dict = {}
    for e in attempts:
        by_name.setdefault(e.get("name") or e.get("record") or id(e), []).append(e)
    last, notes = [], {}
    for tries in by_name.values():
        e = tries[-1]
        last.append(e)
        if len(tries) > 1:
            failed = [t for t in tries[:-1] if t.get("status") != "ok"]
            first_error = next((x for t in failed for x in (t.get("errors") or [])), "")
            why = f"; the first failure: {first_error}" if first_error else ""
            n = len(tries)
            if e.get("status") == "ok":
                note = f"failed, then saved on retry ({n} attempts{why})" if failed else f"saved ({n} attempts)"
            else:
                saved = len(failed) < n - 1
                note = (f"the last of {n} attempts failed (an earlier one saved it: look at NetWorker's save "
                        f"sets)" if saved else f"not saved on retry either ({n} attempts{why})")
            notes[id(e)] = note
    return last, notes


if __name__ == "__main__":
    sys.exit(main())
