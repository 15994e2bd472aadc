"""imsbackup: write selected mailboxes of the store to a device as an archive.

    imsbackup -f device [-b blocking_factor] [-d YYYYMMDD[:HHMMSS]] [--base ARCHIVE|STATEFILE]
              [--state-out FILE] [-u file] [-i] [-v] [--allow-empty] [--snapshot SNAP=LIVE ...]
              [-z | --compress zstd[:N]|none] [--encrypt | --no-encrypt]
              [--recipient age1...] [--recipients-file FILE] [name ...]
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import time

from asm.archive.writer import ArchiveWriter
from asm.backup import BackupOptions, refuse_device_in_store, run_backup, select
from asm.cli.common import (
    ArgParser, Commit, Once, Progress, UsageError, blocking_factor, check_out_file, die, human,
    lock_target, parse_date, read_list_file, run_command, warn,
)
from asm.cli.context import open_installation
from asm.devices import DeviceError, open_device
from asm.errors import (
    EXIT_EMPTY, EXIT_INTERRUPTED, EXIT_NOSPACE, EXIT_OK, EXIT_PARTIAL, ImsError, device_status, worst,
)
from asm.layers import wrap_write
from asm.layers.options import write_layers
from asm.logical import LogicalPath, PathError, parse, resolve
from asm.store.base import StoreError

PROG = "imsbackup"
#: how far in the future a -d may be (clocks of two hosts apart; docs/operations.md)
DATE_SKEW = 300


def jobs_count(text: str) -> int:
    """argparse type for -j: 1 to 256 reader threads."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"-j takes a number of threads from 1 to 256, not {text!r}")
    return n


def build_parser() -> ArgParser:
    p = ArgParser(prog=PROG, description="Back up mailboxes to a file, tape, pipe or remote device.")
    p.add_argument("-f", dest="device", required=True, metavar="DEVICE",
                   help="file, tape or FIFO to write; '-' for stdout; [user@]host:path via a device plugin")
    p.add_argument("-b", dest="bf", type=blocking_factor, default=20, metavar="N",
                   help="blocking factor: every write is 512*N bytes (default 20)")
    # default 1 (no reader thread), whatever the CPUs: measured on 2 cores, -j 2 was
    # 1.1-1.3x slower than -j 1 (bench/RESULTS.md, issue 17): each reader thread takes
    # the GIL back after every system call and the writing thread, the bottleneck, pays
    # for those hand-offs.  -j N is there for disks that want many reads in flight.
    p.add_argument("-j", dest="jobs", type=jobs_count, default=1, metavar="N",
                   help="threads reading message files ahead of the writer (default 1: reads in "
                        "the writing thread); the archive is the same whatever N")
    p.add_argument("-d", dest="date", metavar="YYYYMMDD[:HHMMSS]",
                   help="only messages stored at or after this local time (incremental)")
    p.add_argument("--base", action=Once, metavar="ARCHIVE|STATEFILE",
                   help="incremental: carry what the backup named here (its state file, or its archive) "
                        "did not hold: new, moved, copied and restored messages, new folders whole, "
                        "and record every folder's UIDs and flags (docs/operations.md)")
    p.add_argument("--state-out", dest="state_out", action=Once, metavar="FILE",
                   help="where to write this backup's state file, the --base of the next incremental "
                        "(default: DEVICE.state beside a plain-file archive)")
    p.add_argument("-u", dest="listfile", metavar="FILE", help="read the names to back up from FILE (- for standard input)")
    p.add_argument("-i", dest="ignore_links", action="store_true",
                   help="write every copy of a message in full (no single-copy links)")
    p.add_argument("-v", dest="verbose", action="store_true", help="report each mailbox and a summary")
    p.add_argument("--allow-empty", dest="allow_empty", action="store_true",
                   help="an empty store (or partition) is expected: back it up instead of failing with "
                        f"exit {EXIT_EMPTY}")
    p.add_argument("--snapshot", action="append", metavar="SNAP=LIVE",
                   help="read the store from a filesystem snapshot: what lives under the directory LIVE is "
                        "read under the snapshot mount SNAP (repeat for each filesystem; docs/disaster-recovery.md)")
    p.add_argument("-z", dest="z", action="store_true",
                   help="compress with zstd (at the level of store.compress, else 3)")
    p.add_argument("--compress", metavar="zstd[:N]|none", help="compression for this run (default: store.compress)")
    enc = p.add_mutually_exclusive_group()
    enc.add_argument("--encrypt", dest="encrypt", action="store_true", default=None,
                     help="encrypt with age to the recipients given or configured (store.encrypt.recipients); "
                          "fail when there are none")
    enc.add_argument("--no-encrypt", dest="encrypt", action="store_false",
                     help="write this archive unencrypted even when store.encrypt.recipients is set")
    p.add_argument("--recipient", action="append", default=[], metavar="age1...",
                   help="encrypt to this age recipient (repeatable; replaces store.encrypt.recipients)")
    p.add_argument("--recipients-file", action="append", default=[], metavar="FILE",
                   help="encrypt to the recipients listed in FILE (repeatable)")
    p.add_argument("--report", metavar="FILE",
                   help="write a JSON report of the run to FILE (docs/operations.md, \"Proving your backups\")")
    p.add_argument("names", nargs="*", metavar="name",
                   help="logical paths: /, /primary, /primary/groupA, /primary/user/joe, /primary/joe/INBOX")
    return p


def _incomplete(exc: BaseException, removed: str) -> str:
    """A device's error and what it means for the archive, said once (a device plugin's
    own error may say it already: DeviceError.outcome_said)."""
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if getattr(exc, "outcome_said", False):
        return why
    return f"{why}; the archive is incomplete{removed}"


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _state_aside(state_out: str) -> str | None:
    """Move an existing state file at ``state_out`` to a name of this process; that
    name, or None when there was none (or it cannot be moved: then it is overwritten
    later, as before)."""
    aside = f"{state_out}.replaced-{os.getpid()}"
    if os.path.isdir(state_out) and not os.path.islink(state_out):
        return None                      # not a state file (refused before the run): left alone
    try:
        os.replace(state_out, aside)
    except OSError:
        return None
    return aside


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from asm.report import refuse_clobber, run_reported
    named = [(f"the archive of -f {args.device}", args.device),
             (f"the archive's state file {args.device}.state", f"{args.device}.state"),
             (f"the base --base {args.base}", args.base), (f"the state file --state-out {args.state_out}", args.state_out),
             (f"the list -u {args.listfile}", args.listfile)]
    named += [(f"the recipients file {f}", f) for f in args.recipients_file]
    if args.state_out:
        check_out_file("--state-out", args.state_out)
        refuse_clobber("--state-out", args.state_out, named[:1] + named[4:], noun="state file", state_ok=True)
    return run_reported(PROG, args.report, lambda rep: _backup(args, rep), lambda w: warn(PROG, w), named)


def _failed(rep, text: str, status: int) -> int:
    """``die`` with the line in the run report's ``errors`` too (a device that failed
    during or at the end of the run left ``errors: []``: a monitor saw no reason)."""
    rep.update(errors=list(rep.fields.get("errors") or []) + [{"mailbox": "", "error": text}])
    return die(PROG, text, status)


def _backup(args, rep) -> int:
    held: list = []                     # the lock on a local archive's name (lock_target)
    try:
        return _backup_held(args, rep, held)
    finally:
        for lock in held:
            lock.release()


def _listed(inst, name: str, written: str) -> LogicalPath:
    """The path of a -u line: ``name``, the line without the blanks around it, unless the
    line as ``written`` ends in blanks that are part of a folder's name the store has (a
    client may make "Sent " beside "Sent": the line names the one it says, not the other
    with exit 0)."""
    if written != name:
        try:
            lp = parse(written, inst.groups)
            if lp.folder is not None and resolve([lp], inst.store, inst.groups):
                return lp
        except (PathError, StoreError, OSError):
            pass                    # the line without its trailing blanks says what is wrong
    return parse(name, inst.groups)


def _backup_held(args, rep, held: list) -> int:
    since = parse_date(args.date) if args.date is not None else None
    if since is not None and since > time.time() + DATE_SKEW:
        raise UsageError(f"-d {args.date} is {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))} local "
                         f"time, later than now: the archive would hold no message; give the start time "
                         f"of the previous backup")
    listed = read_list_file(args.listfile, as_written=True) if args.listfile else []
    if args.listfile and not listed:
        raise UsageError(f"-u {args.listfile} names no user (it is empty, or only comments and blank lines): "
                         f"fix what writes it, or leave -u out (/ names the whole store)")
    names = list(args.names)
    if args.base:
        from asm.backupstate import load_base, refuse_base_overwrite   # here: only an incremental needs it
        base = load_base(args.base)
        refuse_base_overwrite(args.base, base, args.device)
    else:
        base = None
    inst = open_installation(snapshot=args.snapshot)
    refuse_device_in_store(args.device, inst.store, inst.config.home,
                           inst.config.get("device.localonly") == "yes")
    paths = [parse(n, inst.groups) for n in names] + [_listed(inst, *pair) for pair in listed]
    paths = paths or [parse("/", inst.groups)]
    allow_empty = args.allow_empty or inst.config.get("backup.allowempty") == "yes"
    targets = select(inst.store, inst.groups, paths, allow_empty=allow_empty)
    if args.device == "-" and sys.stdout.isatty():
        raise UsageError("refusing to write an archive to a terminal: redirect stdout or name a file with -f")
    opts = BackupOptions(since=since, ignore_links=args.ignore_links,
                         exclude=inst.config.backup_exclude(), verbose=args.verbose,
                         snapshot=inst.config.describe() if args.snapshot else None, base=base,
                         jobs=args.jobs, installation=inst.config.installation_id(create=True))
    if base is not None and base.driver and base.driver != inst.store.name:
        raise UsageError(f"the base {args.base} is a backup of a {base.driver} store, this store is "
                         f"{inst.store.name}: take a full backup")
    if base is not None and base.installation and base.installation != opts.installation:
        # (a cron line with the wrong IMS_HOME, two installations sharing /backup and its
        # last.state: the incremental would pass as a link of the other's chain, adv9 F1)
        raise UsageError(f"the base {args.base} is a backup of another installation (identity "
                         f"{base.installation}; this one, IMS_HOME={inst.config.home}, is "
                         f"{opts.installation or 'none'}): check IMS_HOME, or take a full backup; if this "
                         f"is that installation with IMS_HOME/data rebuilt by hand, echo {base.installation} "
                         f"> {inst.config.installation_id_path}")
    from asm.report import chain_base, labels_of
    rep.labels = labels_of(paths)
    rep.begin(inst.config, selection=[str(p) for p in paths], device=args.device, since=since,
              chain_base=chain_base(since, base.archive_id if base is not None else None))
    layers = write_layers(inst.config, args.compress, args.z, args.encrypt, args.recipient, args.recipients_file)
    raw = open_device(args.device, "wb", args.bf, inst.config)
    # the state file goes beside a local plain-file archive only (a plugin's device that
    # calls itself a file has no place here to put one: --state-out names it)
    target = getattr(raw, "target", None)
    if isinstance(target, str):
        lock_target(PROG, target, raw, held)
    elif isinstance(getattr(raw, "lock_path", None), str):
        lock_target(PROG, args.device, raw, held, path=raw.lock_path, state=bool(args.state_out))
    if args.state_out or isinstance(target, str):
        from asm.backupstate import state_path_for, write_state
    state_out = args.state_out or (state_path_for(target) if isinstance(target, str) else None)
    if state_out and isinstance(target, str):
        from asm.backupstate import recover_replaced
        recover_replaced(state_out)          # (under the name's lock: no other run writes it)
    if state_out and not args.state_out and os.path.isdir(state_out):
        with contextlib.suppress(Exception):
            raw.close(ok=False)
        raise UsageError(f"the state file of -f {args.device}, {state_out}, is a directory: move it away, or "
                         f"name the state file with --state-out; nothing was written")
    device = wrap_write(raw, layers.level, layers.recipients, layers.threads, 512 * args.bf)

    progress = Progress()
    t0 = time.monotonic()

    def show(res):
        el = time.monotonic() - t0
        progress.update(f"{PROG}: {res.users} users, {res.messages + res.links} messages, "
                        f"{human(res.bytes)} ({human(res.bytes / el if el else 0)}/s)")

    def report(line):
        if args.verbose:
            progress.clear()
            print(f"{PROG}: {line}", file=sys.stderr)

    ok, status = False, None
    # the archive is written under a temporary name: what went is that partial file,
    # never an earlier archive under the name asked for (an administrator reading
    # "was removed" feared for last night's)
    removed = (f" (its partial file was removed; a file already named {args.device}, if any, is kept as it was)"
               if getattr(device, "kind", "") == "file" else "")
    try:
        writer = ArchiveWriter(device.file, args.bf)
        res = run_backup(inst.store, targets, paths, writer, opts, device=args.device,
                         report=report, progress=show if progress.enabled else None, groups=inst.groups)
        ok = True
    except KeyboardInterrupt:
        # said once the device is closed: its line names a temporary file that could not go
        progress.clear()
        status = EXIT_INTERRUPTED
    except (OSError, DeviceError) as exc:
        progress.clear()
        status = _failed(rep, f"cannot write {args.device}: {_incomplete(exc, removed)}", device_status(exc))
    except BaseException as exc:       # the store failed, or a bug: never leave a partial archive behind
        progress.clear()
        with contextlib.suppress(Exception):
            device.close(ok=False)
        if isinstance(exc, ImsError):
            raise ImsError(f"{exc}; {args.device} is not a complete archive{removed}", status=exc.status) from exc
        raise
    if ok:
        # the slow end (the layers' last frames, every byte answered, checked and synced)
        # may still be cut by a signal, which abandons the archive; putting it in place may not
        try:
            device.prepare()
        except KeyboardInterrupt:
            progress.clear()
            ok, status = False, EXIT_INTERRUPTED
        except (OSError, DeviceError) as exc:
            progress.clear()
            ok = False
            status = _failed(rep, f"cannot finish {args.device}: {_incomplete(exc, removed)}", device_status(exc))
        except BaseException:          # (a bug: never leave a partial archive behind)
            progress.clear()
            with contextlib.suppress(Exception):
                device.close(ok=False)
            raise
    # an archive put in place (a file renamed, here or over SFTP; an S3 object completed)
    # and its state file go as one: a signal meanwhile waits, and once both are there the
    # run has succeeded (Commit)
    placed = ok and getattr(device, "puts_in_place", False)
    commit = Commit().begin() if placed else Commit()
    # the old state file goes aside first: a kill (SIGKILL, a power cut) between the
    # archive's rename and the new state file leaves no state file, never one naming an
    # archive that is gone (the next --base incremental would follow the wrong one)
    aside = _state_aside(state_out) if placed and state_out else None
    left = ""
    try:
        device.close(ok=ok)
    except (OSError, DeviceError) as exc:
        if status is None:
            status = _failed(rep, f"cannot finish {args.device}: {_incomplete(exc, removed)}", device_status(exc))
        left = f"; {exc}"
    if status is None and not placed:
        # a stream (-f -, a pipe) has no place: once its last bytes went (a signal while
        # they wait for a slow reader still ends the run, the state file untouched), its
        # state file is what commits it.  A signal as the old one went aside, or once the
        # new one was written, exited 130 (143) with the state file gone, or naming the
        # stream the engine then discarded as failed.  Without a state file the run has
        # succeeded here: a signal later ended a whole stream as -15, without a word
        commit.begin()
        if state_out:
            aside = _state_aside(state_out)
    if status == EXIT_INTERRUPTED:
        _failed(rep, f"interrupted: {args.device} is not a complete archive{'' if left else removed}{left}",
                EXIT_INTERRUPTED)
    if status is not None:
        if aside is not None:
            with contextlib.suppress(OSError):
                os.replace(aside, state_out)          # nothing was put in place: as it was
        commit.undo()
        return status
    rep.update(counts={"users": res.users, "folders": res.folders, "messages": res.messages, "links": res.links,
                       "bytes": res.bytes},
               unchanged_folders=res.unchanged,
               errors=res.errors, vanished=res.vanished, excluded=res.excluded,
               archive_id=(res.trailer or {}).get("archive_id"), digest=(res.trailer or {}).get("digest"),
               backup_seconds=round(res.seconds, 3))
    progress.clear()
    state_status = EXIT_OK
    if state_out:
        try:
            write_state(state_out, res.header, res.state,
                        device=None if args.device == "-" else
                        os.path.abspath(args.device) if os.path.exists(args.device) else args.device)
        except OSError as exc:
            warn(PROG, f"cannot write the state file {state_out}: {exc.strerror or exc}; the archive is "
                       f"complete: name it with --base for the next incremental")
            # a full disk is the table's 13 whatever is written; anything else 1
            state_status = EXIT_NOSPACE if exc.errno in (errno.ENOSPC, errno.EDQUOT) else EXIT_PARTIAL
        else:
            if aside is not None:
                with contextlib.suppress(OSError):
                    os.unlink(aside)             # the state file is written: the old one goes
    commit.done()
    for e in res.errors:
        warn(PROG, f"could not back up {e['mailbox']}: {e['error']}")
    for note in res.notes:
        warn(PROG, note)
    if res.vanished and args.verbose:
        warn(PROG, f"{len(res.vanished)} messages were expunged during the backup and are not in the archive")
    if args.verbose or sys.stderr.isatty():
        print(f"{PROG}: {res.users} users, {res.folders} folders, {res.messages} messages, "
              f"{res.links} links, {human(res.bytes)} in {res.seconds:.1f}s"
              + (f" ({res.unchanged} unchanged since the base, not read)" if res.unchanged else "")
              + (f", {len(res.excluded)} folders excluded" if res.excluded else "")
              + (f", {len(res.vanished)} vanished" if res.vanished else ""), file=sys.stderr)
        if layers.level is not None or layers.recipients:
            w = device.file
            print(f"{PROG}: layers {layers.describe()}: archive {human(w.bytes_in)}, written "
                  f"{human(w.bytes_out)}" + (f" ({w.bytes_in / w.bytes_out:.2f}x)" if w.bytes_out else ""),
                  file=sys.stderr)
    if res.errors:
        warn(PROG, f"{len(res.errors)} mailboxes or messages could not be backed up (named above and in "
                   f"the archive's trailer); the archive is complete for the rest")
        return worst(state_status, EXIT_PARTIAL)
    return state_status


if __name__ == "__main__":
    sys.exit(main())
