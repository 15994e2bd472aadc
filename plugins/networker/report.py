"""imsasmreport: what the ASM saved since the tree was last built (a savepnpc pstcmd).

    imsasmreport [-p directory] [-v]

Reads ``$IMS_HOME/log/imsasm.log`` (written by imsasm: a line when a save record
begins, another when it ends) and reports the records saved since mkbackupdir last
built the tree (the group's precmd).  A record that began and has no line saying how it
ended (its stream cut, imsasm killed) failed.  Exit 0 when every record saved cleanly,
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
    bad = [e for e in records if e.get("status") != "ok"]
    for e in records:
        if args.verbose or e in bad:
            print(f"{e.get('status')}\t{e.get('name')}\t{e.get('level', 'full')}\t{e.get('messages', 0)} messages\t"
                  f"{e.get('bytes', 0)} bytes"
                  + (f"\t{'; '.join(e.get('errors') or [])}" if e.get("errors") else ""))
    nmsg = sum(int(e.get("messages") or 0) for e in records)
    nbytes = sum(int(e.get("bytes") or 0) for e in records)
    incr = sum(1 for e in records if e.get("level") == "incr")
    print(f"{PROG}: {len(records)} save records since {when}: {len(records) - len(bad)} ok, {len(bad)} failed; "
          f"{nmsg} messages, {nbytes} bytes saved ({len(records) - incr} full, {incr} incremental on their "
          f"last save's state)")
    if not records:
        warn(PROG, f"no save records since the tree was built at {when}: did the group run?")
        return EXIT_PARTIAL
    return EXIT_PARTIAL if bad else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
