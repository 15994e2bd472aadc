"""Installing the notify scripts: small shell wrappers with this installation's
IMS_HOME, Python and staging directory written in, under the names NetBackup looks
for (``bpstart_notify``, ``.POLICY`` or ``.POLICY.SCHEDULE`` suffixes)."""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import sys

from asm.errors import EXIT_USAGE, ImsError

MARKER = "# installed by imsnbu (ims-asm)"
DEFAULT_BIN = "/usr/openv/netbackup/bin"


class InstallError(ImsError):
    """The notify scripts cannot be installed as asked (the message says why)."""

    status = EXIT_USAGE


def script_names(policy: str | None, schedule: str | None) -> tuple[str, str]:
    suffix = ""
    if policy:
        suffix = f".{policy}" + (f".{schedule}" if schedule else "")
    return f"bpstart_notify{suffix}", f"bpend_notify{suffix}"


def script_text(which: str, home: str, directory: str, mode: str, max_age: float, jobs: int | None,
                keep: int | None, after_batch: str | None) -> str:
    argv = [sys.executable, "-m", "plugins.netbackup.notify", which, "--dir", directory]
    if which == "start":
        argv += ["--mode", mode]
        if mode == "check":
            argv += ["--max-age", f"{max_age:g}"]
        if jobs:
            argv += ["--jobs", str(jobs)]
        if after_batch:
            argv += ["--after-batch", after_batch]
    elif keep is not None:
        argv += ["--keep", str(keep)]
    env = [f"IMS_HOME={shlex.quote(home)}"]
    if os.environ.get("IMS_ASM_PLUGINS"):
        env.append(f"IMS_ASM_PLUGINS={shlex.quote(os.environ['IMS_ASM_PLUGINS'])}")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return "\n".join([
        "#!/bin/sh",
        MARKER,
        f"# NetBackup calls: {'bpstart_notify' if which == 'start' else 'bpend_notify'} "
        "CLIENT POLICY SCHEDULE SCHEDULE_TYPE [STATUS]",
        *(f"{e}; export {e.split('=')[0]}" for e in env),
        f"PYTHONPATH={shlex.quote(root)}${{PYTHONPATH:+:$PYTHONPATH}}; export PYTHONPATH",
        "exec " + " ".join(shlex.quote(a) for a in argv) + ' -- "$@"',
        "",
    ])


def install(bindir: str, policy: str | None, schedule: str | None, home: str, directory: str,
            mode: str = "dump", max_age: float = 24.0, jobs: int | None = None, keep: int | None = None,
            after_batch: str | None = None, force: bool = False) -> list[str]:
    if schedule and not policy:
        raise InstallError("--schedule needs --policy (NetBackup names the script bpstart_notify.POLICY.SCHEDULE)")
    for name in (policy, schedule):
        # a name is part of the scripts' file names: no '/', no leading '.', and no control
        # character (a name with a newline was installed as scripts no policy runs, exit 0)
        if name is not None and (not name or "/" in name or name.startswith(".")
                                 or re.search(r"[\x00-\x1f\x7f]", name) or len(name) > 128):
            raise InstallError(f"bad policy or schedule name {name!r}: give the name as NetBackup shows it "
                               f"(no '/', control character or leading '.')")
    if not os.path.isdir(bindir):
        raise InstallError(f"{bindir} does not exist: is the NetBackup client installed? (or pass --dir)")
    start, end = script_names(policy, schedule)
    paths = [os.path.join(bindir, start), os.path.join(bindir, end)]
    for p in paths:
        if os.path.exists(p) and not force:
            with open(p, encoding="utf-8", errors="replace") as f:
                if MARKER not in f.read(4096):
                    raise InstallError(f"{p} exists and was not installed by imsnbu: merge it by hand, "
                                       f"or pass --force to replace it")
    for which, p in zip(("start", "end"), paths):
        text = script_text(which, home, directory, mode, max_age, jobs, keep, after_batch)
        tmp = p + ".imsnbu-tmp"
        try:
            # (a path that is not UTF-8 is written as its bytes: the script quotes it)
            with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(text)
            os.chmod(tmp, 0o755)
            os.replace(tmp, p)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return paths


def policy_advice(policy: str | None, schedule: str | None, directory: str, mode: str, timeout: int) -> str:
    host = socket.gethostname()
    pol = policy or "<your policy>"
    lines = [
        f"Configure the NetBackup policy {pol} on the master server:",
        "  Policy type:        Standard",
        f"  Clients:            {host}",
        "  Backup selections:",
        f"    {directory}",
        "  Schedules" + (f" (the scripts above act for schedule {schedule} only)" if schedule else "") + ":",
        "    Full Backup                       -> every group dumped in full",
        "    Differential Incremental (INCR)   -> every group dumped since its last dump of any kind",
        "    Cumulative Incremental (CINC)     -> every group dumped since its last full dump",
        "  Allow multiple data streams: off (bpstart_notify stages once per job)",
    ]
    if mode == "dump":
        lines += [
            f"  BPSTART_TIMEOUT is {timeout} s: the dumps must finish in that time (less {15} s);",
            "    raise it on the master (and CLIENT_READ_TIMEOUT >= it on the client), or stage ahead:",
            "    imsstage dump --full / --incremental / --cumulative from cron before each window, and",
            "    reinstall with --check so bpstart_notify only checks for fresh complete dumps.",
        ]
    else:
        lines += [
            "  Stage ahead from cron before each backup window, matching the schedules, e.g.:",
            f"    0 1 * * 0    IMS_HOME=... imsstage dump --full -D {directory}",
            f"    0 1 * * 1-6  IMS_HOME=... imsstage dump --incremental -D {directory}",
        ]
    return "\n".join(lines)
