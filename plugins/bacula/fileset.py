"""The Bacula director resources for a store: a FileSet with one bpipe Plugin line per
backup group and partition (or per user), the backup Job (levels Full, Incremental,
Differential chosen at run time or by a Schedule) and a restore Job.

The Job's client RunScripts tell the module the JobId and level before the streams
start (``jobstart``) and whether the job succeeded (``jobdone``/``jobfailed``): bpipe
passes neither to the commands it runs.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from asm.errors import EXIT_USAGE, ImsError
from plugins.bacula.encoding import encode, is_plain, runscript_escape

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,100}\Z")   # (\Z: "$" lets a newline end it)


class FilesetError(ImsError):
    """The store or the options cannot give a usable FileSet (message names the fix)."""

    status = EXIT_USAGE


@dataclass
class Options:
    """The options of a Bacula FileSet and its jobs that imsbacula writes."""

    name: str = "ims-mail"
    per_user: bool = False
    client: str = "bacula-fd"
    storage: str = "File1"
    pool: str = "File"
    messages: str = "Standard"
    schedule: bool = False
    imsbacula: str = ""            # absolute path of imsbacula on the client
    home: str = ""                 # IMS_HOME on the client
    plugins: str = ""              # IMS_ASM_PLUGINS to pass on, if any


def check_options(o: Options) -> None:
    for what, value in (("--name", o.name), ("--client", o.client), ("--storage", o.storage),
                        ("--pool", o.pool), ("--messages", o.messages)):
        if not NAME_RE.match(value):
            raise FilesetError(f"bad {what} {value!r}: use letters, digits, '_', '.', '-' (a Bacula resource name)")
    if not o.imsbacula.startswith("/") or not is_plain(o.imsbacula):
        raise FilesetError(f"imsbacula path {o.imsbacula!r} must be absolute and use only letters, digits and "
                           f"'_.,+=@/-' (bpipe splits on ':' and blanks): give another with --imsbacula")


def streams(store, groups, per_user: bool) -> list[tuple[str, str, str | None]]:
    """(partition, group, user or None) for each Plugin line, in store order."""
    out = []
    configured = [n for n in groups.names() if n != "user"]
    for part in store.partitions():
        users = store.users(part)
        if per_user:
            out.extend((part, groups.group_of(u), u) for u in users)
            continue
        if not configured:
            if users:
                out.append((part, "user", None))
            continue
        lost = [u for u in users if groups.group_of(u) == "user"]
        if lost:
            shown = ", ".join(repr(u) for u in lost[:5]) + (" ..." if len(lost) > 5 else "")
            raise FilesetError(
                f"{len(lost)} users of partition {part!r} match no line of backup-groups.conf ({shown}) and "
                f"would not be backed up: end the file with a catch-all group such as 'rest=.*', or use --per-user")
        for g in configured:
            if any(groups.group_of(u) == g for u in users):
                out.append((part, g, None))
    if not out:
        raise FilesetError("the store has no users: nothing to put in a FileSet")
    return out


def logical_path(part: str, group: str, user: str | None) -> str:
    return f"/{part}/{group}" + (f"/{user}" if user is not None else "")


def _base(o: Options) -> list[str]:
    words = [o.imsbacula, f"--home={encode(o.home)}"]
    if o.plugins:
        words.append(f"--plugins={encode(o.plugins)}")
    words.append(f"--fileset={o.name}")
    return words


def plugin_line(o: Options, part: str, group: str, user: str | None) -> str:
    path = logical_path(part, group, user)
    fname = "/MAILSTORE" + encode(path)
    backup = " ".join(_base(o) + ["-E", "backup", encode(path)])
    restore = " ".join(_base(o) + ["-E", "restore", encode(path)])
    line = f"bpipe:{fname}:{backup}:{restore}"
    assert '"' not in line and "\\" not in line
    return line


def runscript(o: Options, args: str) -> str:
    return " ".join(runscript_escape(w) for w in _base(o)) + " " + args


def render(o: Options, store, groups) -> str:
    check_options(o)
    lines = streams(store, groups, o.per_user)
    q = lambda s: f'"{s}"'  # noqa: E731  (names are checked: no quotes inside)
    out = [
        f"# Bacula resources for the mail store {o.home}",
        f"# written by imsbacula fileset{' --per-user' if o.per_user else ''} on "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}; include it in bacula-dir.conf with",
        "#   @/etc/bacula/ims-mail.conf",
        "# and write it again (imsbacula fileset -o ...) after adding partitions or backup groups.",
        "",
        "FileSet {",
        f"  Name = {q(o.name)}",
        "  Include {",
        "    Options {",
        "      signature = MD5",
        "    }",
    ]
    for part, group, user in lines:
        out.append(f"    Plugin = {q(plugin_line(o, part, group, user))}")
    out += [
        "  }",
        "}",
        "",
    ]
    if o.schedule:
        out += [
            "Schedule {",
            f"  Name = {q(o.name + '-cycle')}",
            "  Run = Level=Full sun at 01:05",
            "  Run = Level=Incremental mon-sat at 01:05",
            "}",
            "",
        ]
    common = [
        f"  Client = {q(o.client)}",
        f"  FileSet = {q(o.name)}",
        f"  Storage = {q(o.storage)}",
        f"  Pool = {q(o.pool)}",
        f"  Messages = {q(o.messages)}",
    ]
    out += [
        "# Full, Incremental or Differential: 'run job=NAME level=Full' (or a Schedule's Run lines).",
        "Job {",
        f"  Name = {q(o.name)}",
        "  Type = Backup",
        "  Level = Incremental",
        *common,
        *([f"  Schedule = {q(o.name + '-cycle')}"] if o.schedule else []),
        "  Allow Duplicate Jobs = no",
        "  # tell imsbacula the JobId and level before the bpipe streams start",
        "  RunScript {",
        "    RunsWhen = Before",
        "    RunsOnClient = yes",
        "    FailJobOnError = yes",
        f"    Command = {q(runscript(o, 'jobstart --jobid %i --level %l'))}",
        "  }",
        "  # the job succeeded: its streams become the base of the next incremental",
        "  RunScript {",
        "    RunsWhen = After",
        "    RunsOnClient = yes",
        "    RunsOnSuccess = yes",
        "    RunsOnFailure = no",
        "    FailJobOnError = yes      # a stream that failed fails the job (bpipe alone only warns)",
        f"    Command = {q(runscript(o, 'jobdone --jobid %i'))}",
        "  }",
        "  # the job failed: forget its streams and show why in the job log",
        "  RunScript {",
        "    RunsWhen = After",
        "    RunsOnClient = yes",
        "    RunsOnSuccess = no",
        "    RunsOnFailure = yes",
        "    FailJobOnError = no",
        f"    Command = {q(runscript(o, 'jobfailed --jobid %i'))}",
        "  }",
        "}",
        "",
        "# Restores go through the bpipe restore command (imsrestore -f -); 'where' is ignored.",
        "# Restore one user or folder: 'imsbacula select /primary/joe/INBOX' on the client first.",
        "Job {",
        f"  Name = {q(o.name + '-restore')}",
        "  Type = Restore",
        *common,
        "  Where = /",
        "  RunScript {",
        "    RunsWhen = Before",
        "    RunsOnClient = yes",
        "    FailJobOnError = yes",
        f"    Command = {q(runscript(o, 'restorestart --jobid %i'))}",
        "  }",
        "  # a path 'imsbacula select' chose that no stream of the job held fails the job",
        "  RunScript {",
        "    RunsWhen = After",
        "    RunsOnClient = yes",
        "    RunsOnSuccess = yes",
        "    RunsOnFailure = no",
        "    FailJobOnError = yes",
        f"    Command = {q(runscript(o, 'restoredone --jobid %i'))}",
        "  }",
        "}",
        "",
    ]
    return "\n".join(out)
