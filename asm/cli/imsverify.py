"""imsverify: prove that archives restore.

    imsverify -f device [-f device ...] [-b N] [--against-store [--exact]] [--restore-test [--scratch DIR]
              [--keep-scratch]] [--report FILE] [-v]
"""
from __future__ import annotations

import contextlib
import os
import sys
import time

from asm.cli.common import ArgParser, Progress, UsageError, blocking_factor, human, run_command, warn
from asm.config import Config, ConfigError
from asm.devices import open_device
from asm.errors import (EXIT_DEVICE, EXIT_DIFFERS, EXIT_EMPTY, EXIT_HOSTILE, EXIT_INCOMPLETE, EXIT_NOT_ARCHIVE,
                        EXIT_OK, EXIT_ORDER, EXIT_PARTIAL, EXIT_STORE, EXIT_USAGE, ImsError, device_status)
from asm.verify import Problem, build, check_archive, verdict

PROG = "imsverify"


def build_parser() -> ArgParser:
    p = ArgParser(prog=PROG, description="Check archives (one, or a chain of a full and its incrementals) as a "
                                         "restore reads them; optionally restore them into a scratch store "
                                         "or compare them with the live store.")
    p.add_argument("-f", dest="devices", action="append", required=True, metavar="DEVICE",
                   help="archive file, tape, FIFO, '-' for stdin, [user@]host:path, or a directory of "
                        "archive files (a staging directory); repeat for a chain")
    p.add_argument("-b", dest="bf", type=blocking_factor, default=20, metavar="N",
                   help="blocking factor to read with (default 20; tapes: the writer's)")
    p.add_argument("--against-store", action="store_true",
                   help="compare with the live store of IMS_HOME: mail it had when the backup started that "
                        "the archives lack, and what changed since (mail, flags, folders, ACLs)")
    p.add_argument("--exact", action="store_true",
                   help="with --against-store: the store was just restored from these archives and must "
                        "equal them (UIDs, bytes, flags, folders, UIDVALIDITY, UIDNEXT, subscriptions); "
                        "any difference, mail since included, is a problem")
    p.add_argument("--restore-test", action="store_true",
                   help="restore into a scratch installation, compare it with the archives, remove it")
    p.add_argument("--scratch", metavar="DIR", help="where the scratch installation is made (default $TMPDIR)")
    p.add_argument("--keep-scratch", action="store_true", help="leave the scratch installation (its path is printed)")
    p.add_argument("--identity", action="append", default=[], metavar="FILE",
                   help="age identity file for encrypted archives (repeatable; default: store.encrypt.identities)")
    p.add_argument("--report", metavar="FILE", help="write a JSON report of the run to FILE")
    p.add_argument("--healthcheck", metavar="URL",
                   help="ping URL/start, then URL (every check passed) or URL/fail; never changes the status")
    p.add_argument("-v", dest="verbose", action="store_true", help="name every problem and each archive")
    return p


def _config() -> Config | None:
    """The installation's configuration when IMS_HOME names one (remote devices, the
    store driver), else None: checking an archive file needs no installation."""
    try:
        return Config().require()
    except ConfigError:
        return None


def _chains(checks: list) -> list[list]:
    """The archives in chains, in the order of their first archive: one per scope, and an
    incremental by base in its base's chain whatever its scope (one user's incremental of
    a full of the whole store continues that full)."""
    from asm.backupstate import header_chain
    from asm.verify.chain import covers
    comp = list(range(len(checks)))

    def find(i):
        while comp[i] != i:
            comp[i] = comp[comp[i]]
            i = comp[i]
        return i
    first: dict = {}
    index = {c.archive_id: i for i, c in enumerate(checks)}
    for i, c in enumerate(checks):
        scope = tuple(c.header.get("scope") or ["/"])
        j = first.setdefault(scope, i)
        if j == i and c.header.get("since") is not None and c.base is None:
            # an incremental by date of a scope no archive before had (one user's, after
            # a full of the whole store): it follows the newest archive taken before it
            # whose scope covers its own, as a restore takes it
            earlier = [k for k, o in enumerate(checks)
                       if (o.header.get("created") or 0) < (c.header.get("created") or 0)
                       and covers(tuple(o.header.get("scope") or ["/"]), scope)]
            if earlier:
                j = max(earlier, key=lambda k: checks[k].header.get("created") or 0)
        comp[find(i)] = find(j)
        for aid in [c.base] + header_chain(c.header):
            if aid in index:
                comp[find(i)] = find(index[aid])
    out: dict = {}
    for i, c in enumerate(checks):
        out.setdefault(find(i), []).append(c)
    return [out[k] for k in sorted(out, key=lambda k: min(i for i in range(len(checks)) if find(i) == k))]


def _groups(cfg):
    """The installation's backup groups (to tell which folders an archive's scope covers),
    or none when there is no installation or its groups cannot be read."""
    from asm.groups import Groups, GroupsError
    if cfg is None:
        return Groups()
    try:
        return Groups.load(cfg.groups_path)
    except (GroupsError, OSError):
        return Groups()


def _labels(scopes: list[str], groups) -> tuple[str, str]:
    """The monitoring labels of the archives' scopes, as imsbackup gave them to the
    backups: /primary/groupA/alice and /primary/alice are user:alice (read as a group,
    a user's passing check replaced the group's failing status in the textfile)."""
    from asm.logical import PathError, parse
    from asm.report import labels_of
    paths = []
    for text in scopes:
        try:
            paths.append(parse(text, groups, members=False))
        except (PathError, ValueError):
            paths.append(text)
    return labels_of(paths)


def _expand(devices: list[str]) -> tuple[list[str], list[str]]:
    """Devices as given; a local directory stands for the archive files in it.  And why
    each entry of such a directory that is a backup by its name is none (backupstate.
    directory_archives: a symbolic link whose archive is gone)."""
    from asm.backupstate import directory_archives
    out, lost = [], []
    for d in devices:
        if d != "-" and os.path.isdir(d):
            files, gone = directory_archives(d)
            if not files and not gone:
                raise UsageError(f"{d} is a directory without files: name archive files or a directory holding them")
            out.extend(files)
            lost.extend(gone)
        else:
            out.append(d)
    return out, lost


@contextlib.contextmanager
def _reading(dev: str, bf: int, cfg, identities: list[str]):
    """The archive's bytes from ``dev``, its compression and encryption layers (docs/offsite.md)
    peeled off as imsrestore does."""
    from asm.layers import wrap_read
    from asm.layers.options import identity_loader
    device = wrap_read(open_device(dev, "rb", bf, cfg), identity_loader(cfg, identities), 512 * bf)
    with device:
        if getattr(device, "layers", None):
            device.file.ims_layers = device.layers      # read to their end after the archive's
        yield device.file


def _to_the_end(raw, dev: str, c) -> None:
    """A compressed or encrypted archive is read to the end of its layers after the
    archive's own end: a zstd file whose seek table was cut or is wrong, or an age file
    cut after the archive's last byte, is damaged even when every message was read whole."""
    from asm.layers import read_to_end
    from asm.layers.errors import LayerDamaged, LayerError
    try:
        for note in read_to_end(raw):
            c.add(LayerDamaged.status, f"{dev}: {note}")
    except LayerError as exc:
        c.add(exc.status, f"{dev}: after the archive's end: {exc.strerror or exc}")


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from asm.report import run_reported
    named = [(f"the archive of -f {d}", d) for d in args.devices] + [(f"the identity file {f}", f)
                                                                      for f in args.identity]
    return run_reported(PROG, args.report, lambda rep: _verify(args, rep), lambda w: warn(PROG, w), named)


def _verify(args, report) -> int:
    if args.devices.count("-") > 1:
        raise UsageError("stdin (-f -) can be read once: give the other archives as files")
    if "-" in args.devices and sys.stdin.isatty():
        raise UsageError("refusing to read an archive from a terminal: pipe one in or name a file with -f")
    if args.restore_test and "-" in args.devices:
        raise UsageError("--restore-test reads each archive twice (check, then restore): give a file, "
                         "not stdin")
    if args.exact and not args.against_store:
        raise UsageError("--exact compares the store with the archives: give --against-store too")
    if args.scratch and not os.path.isdir(args.scratch):
        raise UsageError(f"--scratch {args.scratch}: no such directory")
    from asm.devices import is_remote
    for d in args.devices:
        if d.endswith("/") and is_remote(d) and not d.startswith("s3://"):
            # (only a local directory is read for its archives: this one failed as a device, 3)
            raise UsageError(f"-f {d} names a directory on a remote host: name its archive files there "
                             f"(-f HOST:/dir/full.ims -f HOST:/dir/incr.ims), or copy them here and give the "
                             f"local directory")
    from_dirs = [d for d in args.devices if d != "-" and os.path.isdir(d)]
    devices, lost = _expand(args.devices)
    cfg = _config()
    inst = None
    if args.against_store:
        from asm.cli.context import open_installation
        inst = open_installation()
        # a check: the live store is read and never changed (no uidlist written, no
        # UID given, no file renamed); a folder that would need it is named instead
        inst.store.read_only = True
        cfg = inst.config
    if args.healthcheck:
        from asm.config import _url
        try:
            report.url = _url(args.healthcheck)
        except ValueError as exc:
            raise UsageError(f"--healthcheck {args.healthcheck!r}: {exc}") from None
    report.begin(cfg, devices=devices)

    progress = Progress(enabled=None)
    t0 = time.monotonic()
    problems: list[Problem] = [Problem(EXIT_NOT_ARCHIVE, f"{why}: the mail only it held is in no "
                                                                    f"archive; take a full backup") for why in lost]
    checks = []
    skipped = []
    for dev in devices:
        def show(c, dev=dev):
            el = time.monotonic() - t0
            progress.update(f"{PROG}: {dev}: {c.counts['messages'] + c.counts['links']} messages, "
                            f"{human(c.counts['bytes'])} ({human(c.counts['bytes'] / el if el else 0)}/s)")
        try:
            with _reading(dev, args.bf, cfg, args.identity) as raw:
                c = check_archive(raw, dev, args.bf, progress=show if progress.enabled else None)
                if c.readable and getattr(raw, "ims_layers", None):
                    _to_the_end(raw, dev, c)
        except OSError as exc:
            progress.clear()
            c = None
            problems.append(Problem(device_status(exc), f"cannot read {dev}: {exc.strerror or exc}"))
        except UsageError:
            raise
        except ImsError as exc:        # a device plugin's DeviceError (with its status)
            progress.clear()
            c = None
            problems.append(Problem(exc.status, f"{dev}: {exc}"))
        if c is None:
            continue
        if (not c.readable and all(p.status == EXIT_NOT_ARCHIVE for p in c.problems)
                and any(os.path.dirname(dev) == d.rstrip("/") for d in from_dirs)):
            from asm.backupstate import named_as_archive
            if not named_as_archive(dev):
                skipped.append(dev)    # a file of a directory that is no archive (a catalog, a log)
                continue
            # one of ours by its name or its state file, and its bytes are gone (0 bytes,
            # zeros): damage, as when it is named
            c.problems = [Problem(EXIT_NOT_ARCHIVE, f"{dev}: its name or the state file beside it says it is "
                                                    f"a backup, but it is no readable archive "
                                                    f"({c.problems[0].text.removeprefix(dev + ': ')}): the mail "
                                                    f"only it held is in no archive; take a full backup")]
        checks.append(c)
        problems.extend(c.problems)
        if args.verbose:
            progress.clear()
            warn(PROG, f"{dev}: " + _describe(c))
    progress.clear()
    if not checks and skipped:
        raise UsageError(f"no archive among the files of {', '.join(from_dirs)}")
    if skipped:     # (the archives checked; a directory's other files apart: adv9 F18)
        report.update(devices=[d for d in devices if d not in skipped], passed_over=skipped)

    views = []
    groups = inst.groups if inst is not None else _groups(cfg)
    for group in _chains([c for c in checks if c.readable]):
        v = build(group, groups)
        views.append(v)
        problems.extend(v.problems)

    if args.restore_test or args.against_store:
        for v in views:
            if v.base_missing:
                what = "--restore-test" if args.restore_test else "--against-store"
                problems.append(Problem(EXIT_ORDER, f"{what} needs the whole chain: {v.base_missing} is an "
                                                    "incremental; give its full archive (and the incrementals "
                                                    "between) too"))
        views_to_use = [v for v in views if not v.base_missing]
    else:
        views_to_use = views
    tested = compared = 0
    changes = {}
    served: list = []
    store_only: list = []
    if args.restore_test and views_to_use:
        from asm.verify.scratch import restore_test
        driver = (cfg.driver if cfg is not None else None)
        for v in views_to_use:
            drv = driver or (v.archives[-1].header.get("driver") if v.archives[-1].header.get("driver")
                             in ("classic", "maildir") else "classic")

            def reopen(c):
                return _reading(c.device, args.bf, cfg, args.identity)

            rt = restore_test(v, reopen, drv, parent=args.scratch, keep=args.keep_scratch,
                              live_owner=cfg.get("store.owner") if cfg is not None else None,
                              location=_live_location(cfg, drv))
            served.append(rt.served)
            problems.extend(rt.problems)
            if rt.comparison is not None:
                problems.extend(rt.comparison.problems)
                tested += rt.comparison.compared
                store_only.extend(rt.comparison.store_only)
            if args.keep_scratch:
                warn(PROG, f"the scratch installation is kept: IMS_HOME={rt.home}")
    if args.against_store and views_to_use:
        from asm.backup import check_not_emptied, unlisted_errors
        from asm.verify.compare import RecordedGroups, compare_exact, compare_live, live_targets
        named = {e["mailbox"] for c in checks for e in getattr(c, "backup_errors", ())}
        for v in views_to_use:
            # (the scope is the archive's, not the command line's: a user or folder deleted
            # since is counted as deleted, never a usage error; a group's users are the ones
            # the archive recorded in it, whatever backup-groups.conf says now)
            recorded = RecordedGroups(v, inst.groups)
            paths, targets, gone = live_targets(v, inst.store, recorded)
            check_not_emptied(inst.store, paths, {k[0] for k in (*v.users, *v.folders)})
            if args.verbose:
                for line in gone:
                    warn(PROG, line)
            exclude = (v.archives[-1].header.get("options") or {}).get("exclude") or []
            cmp = (compare_exact(v, inst.store, targets, exclude, paths) if args.exact
                   else compare_live(v, inst.store, targets, exclude))
            problems.extend(cmp.problems)
            if args.verbose:
                for line in cmp.notes:
                    warn(PROG, line)
            # mail on disk the store does not list (as imsbackup names it): in no archive
            for e in unlisted_errors(inst.store, recorded, targets, paths, exclude):
                if e["mailbox"] not in named:
                    named.add(e["mailbox"])
                    problems.append(Problem(EXIT_DIFFERS, f"{e['mailbox']}: the store holds mail no "
                                                          f"backup reads: {e['error']}"))
            compared += cmp.compared
            for k, n in cmp.changes.items():
                changes[k] = changes.get(k, 0) + n

    status = verdict(problems)
    if args.verbose:
        for p in problems:
            warn(PROG, p.text)
    if args.verbose and args.restore_test:
        for why in served:
            if why and why != "dovecot":
                warn(PROG, f"restore test: compared through the store only ({why})")
        for mailbox, why in store_only:
            warn(PROG, f"restore test: {mailbox} compared through the store only, not over IMAP ({why})")
    line = _summary(checks, views, problems, status, tested if args.restore_test else None,
                    (compared, changes) if args.against_store else None, time.monotonic() - t0, served,
                    exact=args.exact)
    if status == EXIT_OK:
        print(f"{PROG}: {line}")
    else:
        # (one problem: said here, what is wrong and what to do; several: -v names each)
        warn(PROG, line + ("" if args.verbose else f": {problems[0].text}" if len(problems) == 1 else
                           " (-v names each problem)"))
    scopes = sorted({s for c in checks if c.readable for s in (c.header.get("scope") or ["/"])})
    report.labels = _labels(scopes, groups)
    report.update(summary=line, selection=scopes, counts=_totals(checks),
                  errors=[p.text for p in problems], chains=len(views),
                  archives=[_archive_info(c) for c in checks],
                  chain_base=[v.archives[0].archive_id for v in views if v.archives],
                  restore_test=({"messages_compared": tested, "imap": "dovecot" in served,
                                 "not_over_imap": [w for w in served if w != "dovecot"]}
                                if args.restore_test else None),
                  against_store=({"messages_compared": compared, **changes, "exact": args.exact}
                                 if args.against_store else None))
    return status


def _live_location(cfg, driver: str):
    """The installation's Maildir mail_location (a MailLocation), whose folder layout the
    scratch store of --restore-test keeps; None: none, or it cannot be read (the scratch
    store is then Maildir++)."""
    if cfg is None or driver != "maildir" or not cfg.get("store.mail_location"):
        return None
    from asm.store.maildir.store import open_layout
    try:
        return open_layout(cfg).location
    except (ImsError, OSError):
        return None


def _describe(c) -> str:
    if not c.readable:
        return "not readable"
    kind = "incremental" if c.incremental else "full"
    n = c.counts
    return (f"{kind} archive {c.archive_id} of {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(c.created))}, "
            f"{n['users']} users, {n['folders']} folders, {n['messages']} messages, {n['links']} links, "
            f"{human(n['bytes'])}: " + ("intact" if c.intact else
                                        f"{len(c.problems)} problem{'s' if len(c.problems) != 1 else ''}"))


def _totals(checks) -> dict:
    """Messages, links and bytes summed over the archives (each holds its own); users and
    folders counted once however many archives list them (a week's chain said 7 times
    the store's users)."""
    out = {"archives": len(checks), "users": 0, "folders": 0, "messages": 0, "links": 0, "bytes": 0}
    users, folders = set(), set()
    for c in checks:
        for k in ("messages", "links", "bytes"):
            out[k] += c.counts[k]
        if c.users or c.folders:
            users.update(c.users)
            users.update((p, u) for p, u, _f in c.folders)
            folders.update(c.folders)
        else:                       # (an archive not read that far: its own counts)
            out["users"] += c.counts["users"]
            out["folders"] += c.counts["folders"]
    out["users"] += len(users)
    out["folders"] += len(folders)
    return out


def _archive_info(c) -> dict:
    return {"device": c.device, "archive_id": c.archive_id, "created": c.header.get("created"),
            "since": c.since, "base": c.base, "scope": c.header.get("scope"), "digest": (c.trailer or {}).get("digest"),
            "intact": c.intact, "counts": c.counts, "problems": len(c.problems)}


def _summary(checks, views, problems, status, tested, live, seconds, served=(), exact=False) -> str:
    t = _totals(checks)
    s = (f"{t['archives']} archive{'s' if t['archives'] != 1 else ''}"
         + (f" ({len(views)} chain{'s' if len(views) != 1 else ''})" if t["archives"] > 1 else "")
         + f", {t['users']} users, {t['folders']} folders, {t['messages']} messages, {t['links']} links, "
         f"{human(t['bytes'])} in {seconds:.1f}s")
    partial = [v.base_missing for v in views if v.base_missing] + [d for v in views for d in v.older_missing]
    if partial:
        s += f"; {len(partial)} chain{'s' if len(partial) > 1 else ''} without {'their' if len(partial) > 1 else 'its'} full archive (what came before not checked)"
    if tested is not None:
        s += f"; restore test: {tested} messages compared" + (" (and over IMAP)" if "dovecot" in served else "")
    if live is not None and exact:
        s += f"; live store: {live[0]} messages compared, exactly as the archives hold them"
    elif live is not None:
        compared, ch = live
        s += (f"; live store: {compared} messages compared, since the backup {ch.get('new', 0)} new, "
              f"{ch.get('expunged', 0)} expunged, {ch.get('flags', 0)} with other flags")
        if ch.get("folders_new") or ch.get("folders_gone"):
            s += f", {ch.get('folders_new', 0)} folders new and {ch.get('folders_gone', 0)} deleted"
        if ch.get("acls"):
            s += f", {ch['acls']} folder{'s' if ch['acls'] != 1 else ''} with another access control list"
    if status == EXIT_OK:
        return s + ": every check passed"
    kinds = {}
    for p in problems:
        kinds[p.status] = kinds.get(p.status, 0) + 1
    names = {EXIT_HOSTILE: "hostile", EXIT_INCOMPLETE: "damage", EXIT_ORDER: "chain", EXIT_DIFFERS: "differences",
             EXIT_PARTIAL: "backup errors", EXIT_USAGE: "usage or identity", EXIT_DEVICE: "device",
             EXIT_NOT_ARCHIVE: "not an archive", EXIT_STORE: "store", EXIT_EMPTY: "empty store"}
    what = ", ".join(f"{n} {names.get(k, f'status {k}')}" for k, n in sorted(kinds.items()))
    return s + f": FAILED, {len(problems)} problem{'s' if len(problems) != 1 else ''} ({what})"


if __name__ == "__main__":
    sys.exit(main())
