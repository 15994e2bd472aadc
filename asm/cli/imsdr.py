"""imsdr: the disaster backup of an installation, and what a recovery needs to start.

    imsdr backup  -f DEVICE [--snapshot SNAP=LIVE ...] [--dovecot-config FILE] [-v]
    imsdr restore -f DEVICE [--only KIND,... | --all] [--force | --missing] [-n] [-v]
    imsdr show    -f DEVICE [--json]
    imsdr chain   [--verify] [--commands] PATH ...

``backup`` captures the mailbox list, folder indexes, journals, staging catalog,
configuration and Dovecot's mail_crypt keys (asm/dr/bundle.py) with a manifest;
``restore`` puts chosen parts back (by default what an archive restore cannot bring:
configuration, catalog, journals, keys); ``show`` prints the manifest; ``chain``
prints the archive files to restore, in order (asm/dr/chain.py).
docs/disaster-recovery.md is the runbook.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time

from asm.cli.common import ArgParser, Commit, Progress, UsageError, lock_target, run_command, warn
from asm.config import Config, NoInstallation
from asm.devices import DeviceError, open_device
from asm.errors import EXIT_MISSING, EXIT_OK, EXIT_PARTIAL, ImsError, device_status
from asm.store.base import syncfs_dirs
from asm.trees import remove_tree

PROG = "imsdr"


def build_parser() -> ArgParser:
    p = ArgParser(prog=PROG, description="Disaster backup and recovery helpers (docs/disaster-recovery.md).")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=ArgParser)
    s = sub.add_parser("backup", help="capture mailbox list, indexes, journals, catalog, configuration, keys")
    s.add_argument("-f", dest="device", required=True, metavar="DEVICE", help="file to write ('-': stdout)")
    s.add_argument("--snapshot", action="append", metavar="SNAP=LIVE",
                   help="read the store under a snapshot mount (as imsbackup --snapshot)")
    s.add_argument("--dovecot-config", metavar="FILE",
                   help="dovecot.conf naming mail_crypt keys (default: dovecot.config, else /etc/dovecot/dovecot.conf)")
    s.add_argument("-v", dest="verbose", action="store_true")
    s = sub.add_parser("restore", help="put the parts of a disaster backup back")
    s.add_argument("-f", dest="device", required=True, metavar="DEVICE", help="file to read ('-': stdin)")
    s.add_argument("--only", metavar="KIND,...",
                   help="what to restore: config, catalog, journals, keys, mboxlist, indexes "
                        "(default: config,catalog,journals,keys; a kind the backup does not hold: exit 15)")
    s.add_argument("--all", dest="everything", action="store_true",
                   help="everything, also the mailbox list and indexes (file-level route: the partitions' "
                        "message files are back, reconstruct follows)")
    s.add_argument("--force", action="store_true", help="replace files that exist and differ")
    s.add_argument("--missing", action="store_true",
                   help="put back only the files that are not there (file-level route: what the file backup "
                        "did not hold, such as a layout's CONTROL= and INDEX= trees); leave the others as they are")
    s.add_argument("-n", dest="dry", action="store_true", help="say what would be restored where; write nothing")
    s.add_argument("--dovecot-config", metavar="FILE",
                   help="Dovecot's configuration naming the mail_crypt key files (default: dovecot.config, "
                        "else /etc/dovecot/dovecot.conf)")
    s.add_argument("-v", dest="verbose", action="store_true")
    s = sub.add_parser("show", help="print a disaster backup's manifest")
    s.add_argument("-f", dest="device", required=True, metavar="DEVICE")
    s.add_argument("--json", action="store_true", help="the manifest as JSON")
    s = sub.add_parser("chain", help="print the archive files to restore, full first, in order")
    s.add_argument("--verify", action="store_true", help="read each archive to its trailer (complete ones only)")
    s.add_argument("--commands", action="store_true",
                   help="print the imsrestore command instead: one per chain (imsrestore -f FULL -f INCR ...)")
    s.add_argument("--identity", action="append", default=[], metavar="FILE",
                   help="age identity file for encrypted archives (repeatable; default: "
                        "store.encrypt.identities)")
    s.add_argument("paths", nargs="+", metavar="PATH", help="archive files or directories holding them")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.cmd == "chain" and "-f" in extra:
            parser.error("chain takes the archive files (or directories holding them) as they are, "
                         "without -f: imsdr chain PATH ...")
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return {"backup": _backup, "restore": _restore, "show": _show, "chain": _chain}[args.cmd](args)


def _when(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"


# -- backup ------------------------------------------------------------------------------
def _backup(args) -> int:
    held: list = []                     # the lock on the archive's name or S3 key (lock_target)
    try:
        return _backup_held(args, held)
    finally:
        for lock in held:
            lock.release()


def _backup_held(args, held: list) -> int:
    from asm.dr.bundle import Capture
    cfg = Config()
    cfg.require()
    if args.snapshot and cfg.driver == "maildir" and cfg.get("store.mail_location"):
        raise UsageError("imsdr backup --snapshot follows <partition>/<user>/Maildir stores only; with "
                         "store.mail_location set, take the disaster backup from the live store")
    if args.snapshot:
        from asm.dr.snapshot import SnapshotConfig, parse_snapshot
        cfg = SnapshotConfig(cfg, [parse_snapshot(s) for s in args.snapshot])
    if args.device == "-" and sys.stdout.isatty():
        raise UsageError("refusing to write a disaster backup to a terminal: redirect stdout or name a file with -f")
    from asm.config import own_file
    from asm.devices import is_remote, url_scheme
    mine = None if args.device == "-" or url_scheme(args.device) or \
        is_remote(args.device, cfg.get("device.localonly") == "yes") else own_file(args.device, cfg.home)
    if mine:
        raise UsageError(f"-f {args.device} is {mine}, which the disaster backup would replace: put it outside "
                         f"IMS_HOME/config, IMS_HOME/data and the store (e.g. /backup/...); nothing was written")
    dovecot_config = args.dovecot_config or cfg.get("dovecot.config")
    if dovecot_config is None and cfg.driver == "maildir":
        from asm.reconstruct.dovecot import SITE_CONFIG
        dovecot_config = SITE_CONFIG if os.path.exists(SITE_CONFIG) else None
    device = open_device(args.device, "wb", 20, cfg)
    # one run of the installation at a time writes one S3 key: two, the second's
    # completion was refused after the whole capture ("the disaster backup is
    # incomplete") while the object held the first's.  (Two runs to one local file each
    # rename a whole bundle of their own into place: the last one is there, whole.)
    if isinstance(getattr(device, "lock_path", None), str):
        lock_target(PROG, args.device, device, held, path=device.lock_path, state=False)
    progress = Progress()
    say = (lambda line: (progress.clear(), warn(PROG, line))) if args.verbose else None
    cap = Capture(cfg, device.file, report=say, dovecot_config=dovecot_config,
                  progress=lambda counts: progress.update(
                      f"{PROG}: {counts['indexes']} index files, {counts['mboxlist']} mailbox list"))
    removed = " and was removed" if getattr(device, "kind", "") == "file" else ""
    ok = False
    try:
        manifest = cap.run()
        ok = True
    except (OSError, DeviceError) as exc:
        with contextlib.suppress(Exception):
            device.close(ok=False)
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ImsError(f"cannot write {args.device}: {why}; the disaster backup is incomplete{removed}",
                       status=device_status(exc)) from None
    except BaseException:
        with contextlib.suppress(Exception):
            device.close(ok=False)
        raise
    finally:
        cap.close()
    progress.clear()

    def cannot_finish(exc) -> ImsError:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return ImsError(f"cannot finish {args.device}: {why}; the disaster backup is incomplete{removed}",
                        status=device_status(exc))

    try:
        device.prepare()              # (a signal here abandons the bundle)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            device.close(ok=False)
        if isinstance(exc, (OSError, DeviceError)):
            raise cannot_finish(exc) from None
        raise
    # the bundle put in place is the run's success: a signal meanwhile waits, and once
    # it is there none calls it "interrupted" (Commit)
    commit = Commit().begin() if getattr(device, "puts_in_place", False) else Commit()
    try:
        device.close(ok=ok)
    except (OSError, DeviceError) as exc:
        commit.undo()
        raise cannot_finish(exc) from None
    except BaseException:
        commit.undo()
        raise
    commit.done()
    for p in manifest["problems"]:
        warn(PROG, f"not captured: {p}")
    if args.verbose or sys.stderr.isatty():
        c = manifest["counts"]
        print(f"{PROG}: {args.device}: as of {_when(manifest['started'])} to {_when(manifest['finished'])}: "
              f"mailbox list {c['mboxlist']}, {c['indexes']} index files, {c['journals']} journals, "
              f"{c['catalog']} catalog, {c['config']} configuration files, {c['keys']} key files", file=sys.stderr)
    return EXIT_PARTIAL if manifest["problems"] else EXIT_OK


# -- restore -----------------------------------------------------------------------------
def _kinds(args) -> tuple:
    from asm.dr.bundle import DEFAULT_RESTORE, KINDS
    if args.everything:
        return KINDS
    if not args.only:
        return DEFAULT_RESTORE
    kinds = tuple(k.strip() for k in args.only.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise UsageError(f"--only {args.only!r}: unknown kind {', '.join(bad) or '(none)'}; the kinds are "
                         f"{', '.join(KINDS)}")
    return kinds


def _device_config() -> Config | None:
    """The installation's configuration, to open -f as every command does (device.localonly,
    ssh.*, s3.*), when IMS_HOME holds one; None when it holds none (the disaster case) or
    IMS_HOME is not set (imsdr show needs no installation)."""
    from asm.config import ConfigError, ims_home
    try:
        home = ims_home()
    except ConfigError:
        return None
    if not os.path.isfile(os.path.join(home, "config", "msg.conf")):
        return None
    return Config(home)


def _home(create: bool) -> str:
    """IMS_HOME, made with ``create`` (one level, as msconfig set does) when a recovery
    starts from nothing; without, only checked that it could be (-n writes nothing)."""
    from asm.config import ims_home
    home = ims_home()
    if not os.path.isdir(home):
        parent = os.path.dirname(home)
        if not os.path.isdir(parent):
            raise NoInstallation(f"cannot create the installation IMS_HOME={home}: {parent} does not exist")
        if create:
            os.mkdir(home, 0o755)
    return home


def _restore(args) -> int:
    from asm.digests import file_sha256
    from asm.dr.bundle import confine, lacking_kinds, misplaced_now, plan_restore, put, read_manifest
    kinds = _kinds(args)
    if args.force and args.missing:
        raise UsageError("--force replaces the files that exist, --missing leaves them: give one of them")
    home = _home(create=False)          # made only once there is something to put there
    device = open_device(args.device, "rb", 20, _device_config())
    try:
        manifest, tmp = read_manifest(device.file)
    finally:
        with contextlib.suppress(Exception):
            device.close()
    try:
        lacking = lacking_kinds(manifest, kinds) if args.only else []
        if lacking:
            # kinds named on purpose: restoring the rest and exiting 0 would pass for the step done
            raise ImsError(f"{args.device}: the disaster backup (taken on {manifest.get('host')} as of "
                           f"{_when(manifest.get('started'))}) holds no {', '.join(lacking)}: nothing was "
                           f"restored; leave {'it' if len(lacking) == 1 else 'them'} out of --only, or use "
                           f"another disaster backup ('imsdr show -f' says what one holds)", status=EXIT_MISSING)
        members = os.path.join(tmp, "m")
        cfg = Config(home)
        if "config" in kinds and os.path.exists(os.path.join(members, "config", "msg.conf")):
            # where things go is what the configuration being restored says
            cfg.path = os.path.join(members, "config", "msg.conf")
            cfg.values = {}
            cfg._load()
            cfg.path = os.path.join(home, "config", "msg.conf")
        if "config" in kinds:
            for name, value in _commands_of(os.path.join(members, "config", "msg.conf")):
                warn(PROG, f"the configuration restored sets {name} = {value}, a shell command imsstage runs: "
                           f"check it is yours")
        plan = plan_restore(manifest, lambda: cfg, kinds)
        dovecot_config = args.dovecot_config or cfg.get("dovecot.config")
        if dovecot_config is None:
            from asm.reconstruct.dovecot import SITE_CONFIG
            dovecot_config = SITE_CONFIG
        confine(cfg, plan, dovecot_config, manifest.get("dovecot_config"))
        away = misplaced_now(cfg, plan)
        for login, u in sorted(away.items()):
            n = sum(1 for item, _ in plan if item.get("login") == login)
            warn(PROG, f"not restored: /{u.partition}/{login}: {u.why} ({u.path}): its {n} files of the "
                       f"disaster backup are not put at the template's place, where Dovecot no longer "
                       f"looks; {u.hint}")
        plan = [(item, target) for item, target in plan if item.get("login") not in away]
        owner = None
        with contextlib.suppress(ImsError):
            owner = cfg.owner()
        conflicts, todo = [], []
        for item, target in plan:
            src = os.path.join(members, item["member"])
            if args.missing and item["member"].startswith("partition/") and \
                    not os.path.isdir(os.path.dirname(target)):
                continue        # a folder the file backup does not hold was deleted: not made again
            if os.path.exists(target):
                if args.missing or file_sha256(target)[0] == item["sha256"]:
                    continue
                if not args.force:
                    conflicts.append(target)
                    continue
            todo.append((item, src, target))
        if conflicts:
            shown = ", ".join(conflicts[:3]) + (f", ... ({len(conflicts)} files)" if len(conflicts) > 3 else "")
            raise UsageError(f"{shown} already exist{'s' if len(conflicts) == 1 else ''} and differ from the disaster "
                             f"backup: nothing was restored; move them away, or use --force to replace them")
        if not args.dry:
            from asm.dr.bundle import sweep_dead_copies
            for d in sorted({os.path.dirname(t) for _, t in plan}):
                sweep_dead_copies(d)         # (what a restore killed outright left, where it stays)
        if todo and not args.dry:
            _home(create=True)
        store_kinds = ("mboxlist", "indexes")
        for item, src, target in todo:
            if args.dry or args.verbose:
                print(f"{'would restore' if args.dry else 'restored'} {item['kind']}: {target}"
                      f" (as of {_when(item['captured'])})")
            if not args.dry:
                # a file of the store -- a login's dovecot-attributes (keys) too -- and the
                # directories made for it belong to store.owner, whatever uid the old machine
                # recorded: Dovecot must read it, and make new logins' directories beside it
                put(src, target, item, owner if item["kind"] in store_kinds
                    or item["member"].startswith(("partition/", "dovecot/")) else None)
        if not args.dry:
            syncfs_dirs({os.path.dirname(t) for _, _, t in todo}, ignore_errors=True)
        if args.verbose or sys.stderr.isatty():
            print(f"{PROG}: {'would restore' if args.dry else 'restored'} {len(todo)} files "
                  f"({', '.join(kinds)}) of the disaster backup taken on {manifest.get('host')} "
                  f"as of {_when(manifest.get('started'))}", file=sys.stderr)
    finally:
        remove_tree(tmp)
    return EXIT_PARTIAL if away else EXIT_OK


#: settings whose value is a command some ims-asm command runs: what a disaster backup's
#: configuration may make this host run, named by show and restore (the manifest's digest
#: proves no origin: a bundle is as trusted as where it was kept)
COMMAND_SETTINGS = ("staging.afterbatch",)


def _commands_of(msg_conf: str) -> list[tuple[str, str]]:
    """(setting, value) of the COMMAND_SETTINGS a bundle's msg.conf sets."""
    if not os.path.isfile(msg_conf):
        return []
    cfg = Config(os.path.dirname(os.path.dirname(msg_conf)))
    try:
        return [(k, cfg.get(k)) for k in COMMAND_SETTINGS if cfg.get(k)]
    except ImsError:
        return []


# -- show ---------------------------------------------------------------------------------
def _show(args) -> int:
    from asm.dr.bundle import read_manifest
    device = open_device(args.device, "rb", 20, _device_config())
    try:
        manifest, tmp = read_manifest(device.file)
    finally:
        with contextlib.suppress(Exception):
            device.close()
    try:
        commands = _commands_of(os.path.join(tmp, "m", "config", "msg.conf"))
    finally:
        remove_tree(tmp)
    items = manifest.pop("all_items")
    if args.json:
        manifest["items"] = items
        print(json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True))
        return EXIT_OK
    print(f"disaster backup of {manifest['ims_home']} on {manifest['host']} ({manifest['driver']} store), "
          f"ims-asm {manifest['tool_version']}")
    print(f"taken from {_when(manifest['started'])} to {_when(manifest['finished'])}"
          + (f", read from snapshots {manifest['snapshot']}" if manifest.get("snapshot") else ""))
    if manifest.get("mail_location"):
        print(f"mail_location: {manifest['mail_location']}")
    else:
        print("partitions: " + ", ".join(f"{k}={v}" for k, v in manifest["partitions"].items()))
    for kind in manifest["order"]:
        mine = [i for i in items if i["kind"] == kind]
        if kind == "indexes":
            if mine:
                print(f"{kind}: {len(mine)} files, captured {_when(min(i['captured'] for i in mine))} to "
                      f"{_when(max(i['captured'] for i in mine))}")
            else:
                print(f"{kind}: none")
            continue
        if not mine:
            print(f"{kind}: none")
        for i in mine:
            extra = f", {i['users']} users, {i['folders']} folders" if "users" in i else ""
            print(f"{kind}: {i['source']} ({i['method']}, {i['size']} bytes, as of {_when(i['captured'])}{extra})")
    for name, value in commands:
        print(f"configuration: {name} = {value} (a shell command, run as imsstage's user: check it is yours "
              f"before restoring the configuration)")
    for n in manifest.get("notes") or []:
        print(f"note: {n}")
    for p in manifest.get("problems") or []:
        print(f"not captured: {p}")
    return EXIT_OK


# -- chain --------------------------------------------------------------------------------
def _chain(args) -> int:
    from asm.dr.chain import archive_files, chains
    for p in args.paths:
        if not os.path.exists(p):
            raise UsageError(f"{p} does not exist")
    from asm.layers.options import identity_loader
    try:
        cfg = Config()                  # store.encrypt.identities, when an installation is there
        cfg.require()
    except ImsError:
        cfg = None
    files, _others, unreadable, lost = archive_files(args.paths, verify=args.verify,
                                                     identities=identity_loader(cfg, args.identity))
    for why in unreadable:
        warn(PROG, f"{why}: not used (give --identity FILE for an encrypted archive)")
    for why in lost:
        warn(PROG, f"{why}: not used; the mail only it held cannot be restored from these archives")
    unreadable += lost
    found = chains(files)
    if not any(c.archives for c in found):
        # the first chain's reason names what to find (the base its incrementals continue)
        why = next((c.gap for c in found if c.gap and c.gap != "no complete full archive"), None)
        raise ImsError(f"no complete full archive in {', '.join(args.paths)}: nothing to restore from"
                       + (f" ({len(unreadable)} files could not be read, named above)" if unreadable else "")
                       + (f"; {why[len('no complete full archive: '):]}" if why else ""),
                       status=EXIT_MISSING)
    status = EXIT_PARTIAL if unreadable else EXIT_OK
    # several chains (one per backup group): a user that moved between groups is in two;
    # --recovery gives it as the newer archive holding it had it, whichever chain runs first
    several = sum(1 for c in found if c.archives) > 1
    for c in found:
        if args.commands and c.archives:
            # one command per chain: it checks the chain before writing, holds deliveries
            # throughout, restores each message once (as the chain's end has it) and can
            # be run again after any interruption
            print("imsrestore " + ("--recovery " if several else "")
                  + " ".join(f"-f {shlex.quote(a.path)}" for a in c.archives))
        for a in c.archives if not args.commands else ():
            print(a.path)
        for note in c.left_out:
            warn(PROG, f"scope {' '.join(c.scope)}: {note}")
        for why in c.unsettled:
            status = EXIT_PARTIAL
            warn(PROG, f"scope {' '.join(c.scope)}: {why}")
        if c.gap:
            status = EXIT_PARTIAL
            warn(PROG, f"scope {' '.join(c.scope)}: the chain stops: {c.gap}"
                 + (f" ({len(c.dropped)} later archives not listed)" if c.dropped else ""))
    return status


if __name__ == "__main__":
    sys.exit(main())
