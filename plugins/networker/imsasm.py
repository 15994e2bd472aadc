"""imsasm: the external NetWorker ASM for the message store (uasm(8) arguments).

    imsasm -s [-benouv] [-ix] [-t time] [-f proto] [-p path] [--allow-empty] [--report FILE] path...
    imsasm -r [-nuv] [-i {nNyYrR}] [-m src=dst] [-z suffix] [--report FILE] [path...]
    imsasm -c [-nuv] [path...]

Save writes one save record per path (a placeholder or a directory of them in a
mkbackupdir tree) to stdout; recover reads a save stream from stdin and restores
through imsrestore's engine; compare checks a stream against the store.  The stream
format is in :mod:`plugins.networker.stream` and docs/networker.md.
"""
from __future__ import annotations

import errno
import hashlib
import os
import socket
import sys
import time

from asm.archive.errors import ArchiveError, IncompleteArchive, NotAnArchive
from asm.archive.names import dump_json
from asm.archive.reader import ArchiveReader
from asm.archive.writer import ArchiveWriter
from asm.backup import BackupOptions, check_not_empty, run_backup
from asm.cli.common import ArgParser, Progress, UsageError, die, human, run_command, warn
from asm.cli.context import open_installation
from asm.config import NoInstallation
from asm.errors import (
    EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_NOSPACE, EXIT_OK, EXIT_PARTIAL,
    EXIT_USAGE, ImsError, device_status, worst,
)
from asm.logical import LogicalPath, Target, sorted_targets
from asm.restore import Journal, Restorer, RestoreOptions, Selection, default_reffile
from asm.store.base import MessageGone, NoSuchFolder, NoSuchUser, StoreError

from . import getdate, tree
from . import state as nsrstate
from .stream import StreamError, StreamReader, StreamWriter, TruncatedStream, NotAStream

PROG = "imsasm"
BF = 20


# ----------------------------------------------------------------------------- parsing

def _save_parser() -> ArgParser:
    p = ArgParser(prog=f"{PROG} -s", description="Write a save stream of the named placeholders to stdout.")
    p.add_argument("-b", dest="estimate", action="store_true",
                   help="print the estimate (records, header bytes, data bytes); write no stream")
    p.add_argument("-e", dest="no_end", action="store_true", help="omit the end-of-stream marker")
    p.add_argument("-n", dest="dry", action="store_true", help="check the paths; write no stream")
    p.add_argument("-o", dest="old", action="store_true",
                   help="old-style stream (accepted; this ASM has one stream format)")
    p.add_argument("-u", dest="stop", action="store_true", help="stop at the first mailbox error")
    p.add_argument("-v", dest="verbose", action="store_true", help="name the ASM, its arguments and each record")
    p.add_argument("-i", dest="ignore_directives", action="store_true",
                   help="ignore .nsr directives (accepted; imsasm reads none below its arguments)")
    p.add_argument("-x", dest="cross", action="store_true", help="cross mount points (accepted; no effect)")
    p.add_argument("-t", dest="time", metavar="TIME", help="only mail stored since TIME (incremental levels)")
    p.add_argument("-f", dest="proto", metavar="PROTO", help="prototype directive file (checked, not needed)")
    p.add_argument("-p", dest="ppath", metavar="PATH", help="directory relative paths are taken from")
    p.add_argument("--allow-empty", dest="allow_empty", action="store_true",
                   help="a partition the paths reach may hold no users (default: refuse, exit 18; "
                        "or msconfig set backup.allowempty yes)")
    p.add_argument("--report", metavar="FILE",
                   help="write a JSON report of the run to FILE (docs/operations.md, \"Proving your backups\")")
    p.add_argument("paths", nargs="+", metavar="path", help="placeholders or directories of a mkbackupdir tree")
    return p


def _recover_parser(mode: str) -> ArgParser:
    p = ArgParser(prog=f"{PROG} {mode}", description="Restore (or compare) a save stream read from stdin.")
    p.add_argument("-n", dest="dry", action="store_true", help="read and check the stream; change nothing")
    p.add_argument("-u", dest="stop", action="store_true", help="stop at the first error")
    p.add_argument("-v", dest="verbose", action="store_true", help="name each record and mailbox")
    if mode == "-r":
        p.add_argument("-i", dest="answer", choices=list("nNyYrR"), default="Y",
                       help="folder already there: n/N skip it, y/Y merge into it (default), "
                            "r/R restore beside it with the -z suffix")
        p.add_argument("-m", dest="maps", action="append", default=[], metavar="SRC=DST",
                       help="restore the user at tree path SRC as the user at tree path DST")
        p.add_argument("-z", dest="suffix", default=".R", metavar="SUFFIX",
                       help="suffix for -i r/R (default .R: folder INBOX comes back as INBOX-R)")
        p.add_argument("-P", dest="passphrase", metavar="PASS", help="accepted; streams are not encrypted")
    p.add_argument("--report", metavar="FILE",
                   help="write a JSON report of the run to FILE (docs/operations.md, \"Proving your backups\")")
    p.add_argument("paths", nargs="*", metavar="path", help="tree paths to recover (default: all)")
    return p


def split_mode(argv: list[str]) -> tuple[str, list[str]]:
    if not argv or not argv[0].startswith("-") or len(argv[0]) < 2 or argv[0][1] not in "src":
        raise UsageError("the first argument must be -s (save), -r (recover) or -c (compare), "
                         "e.g. imsasm -s /backup/primary/groupA/joe/INBOX")
    first = argv[0]
    rest = ([f"-{first[2:]}"] if len(first) > 2 else []) + list(argv[1:])
    return first[:2], rest


# ----------------------------------------------------------------------------- helpers

def _installation(marker: dict | None = None, create: bool = False, root: str | None = None):
    """The installation: the one the tree's marker names (a save), else IMS_HOME (a
    recover restores where IMS_HOME says).  Only a recover (``create``) may make the
    store's directories.

    A save's placeholders are the users and folders of the installation mkbackupdir
    read (its marker names it), so the tree wins over an IMS_HOME NetWorker's
    environment holds for another instance; stderr says so, as saving the wrong
    installation's mail under these save-set names would back up neither."""
    env_home = os.environ.get("IMS_HOME")
    tree_home = (marker or {}).get("ims_home")
    if not tree_home:
        return open_installation(env_home, create=create)
    try:
        inst = open_installation(tree_home, create=create)
    except NoInstallation:
        raise UsageError(f"{root}/{tree.MARKER} names the installation {tree_home}, which is not one "
                         f"(missing, or without config/ and data/); run mkbackupdir -p {root} again with "
                         f"IMS_HOME of the installation to back up") from None
    if env_home and os.path.realpath(env_home) != os.path.realpath(inst.config.home):
        warn(PROG, f"IMS_HOME={env_home} ignored: {root} is a tree of the installation {inst.config.home} "
                   f"(its {tree.MARKER}); saving that one")
    os.environ["IMS_HOME"] = inst.config.home
    return inst


def _log(inst, entry: dict) -> None:
    """Append one JSON line per record to $IMS_HOME/log/imsasm.log (read by imsasmreport)."""
    d = os.path.join(inst.config.home, "log")
    try:
        os.makedirs(d, exist_ok=True)
        line = dump_json(entry, sort_keys=True) + b"\n"
        fd = os.open(os.path.join(d, "imsasm.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        warn(PROG, f"cannot write the run log in {d}: {exc.strerror}")


class SaveRecord:
    """One path argument resolved against the tree and the store."""

    def __init__(self, name: str, root: str, rel: list[str], place: tree.Place, kind: str):
        self.name, self.root, self.rel, self.place, self.kind = name, root, rel, place, kind
        self.targets: list[Target] = []
        self.vanished: list[str] = []
        self.adopted: list[str] = []        # folders saved here for want of a placeholder (logical)


def plan_records(inst, paths: list[str], ppath: str | None):
    """(root, marker, [SaveRecord]) for the path arguments; TreeError/UsageError when one is
    not a placeholder of a mkbackupdir tree."""
    root = marker = None
    out = []
    for arg in paths:
        path = arg if os.path.isabs(arg) or not ppath else os.path.join(ppath, arg)
        path = os.path.abspath(path)
        if not os.path.lexists(path):
            raise UsageError(f"{path}: no such placeholder; run mkbackupdir again or check the save set")
        r = tree.find_root(path)
        if r is None:
            raise UsageError(f"{path} is not in a mkbackupdir tree (no {tree.MARKER} above it); "
                             "run mkbackupdir -p DIR and save paths below DIR")
        if root is None:
            root, marker = r, tree.read_marker(r)
            if marker.get("building"):
                raise UsageError(f"{r}: mkbackupdir's first build of this tree did not end (stopped or "
                                 f"killed): run mkbackupdir -p {r} again, then save")
        elif r != root:
            raise UsageError(f"{path} is in another backup tree ({r}, not {root}); save each tree separately")
        rel = tree.relparts(root, path)
        isdir = os.path.isdir(path)
        rec = SaveRecord(path, root, rel, tree.place_of(rel, isdir), "directory" if isdir else "file")
        out.append(rec)
    if inst is not None:
        for rec in out:
            _resolve(inst, rec)
    return root, marker, out


def _resolve(inst, rec: SaveRecord, allow_empty: bool = False) -> None:
    store, groups = inst.store, inst.groups
    leaves = []
    if rec.kind == "directory":
        for f in tree.walk_placeholders(rec.name):
            leaves.append(tree.place_of(tree.relparts(rec.root, f), False))
    else:
        leaves.append(rec.place)
    by_user: dict[str, Target] = {}
    order: list[str] = []
    partitions = store.partitions()
    # a partition whose directory is gone (a disk not mounted, a wrong path) is the store's
    # failure, as imsbackup says (exit 17): never every mailbox on it "removed since
    # mkbackupdir ran" and an empty record with exit 0
    covered = covered_partitions(partitions, rec.place, leaves)
    for p in covered:
        store.check_partition(p)
    for leaf in leaves:
        if leaf.user is None:
            raise tree.TreeError(f"{rec.name}: a placeholder above the user level; "
                                 "this is not a tree mkbackupdir wrote")
        try:
            part = store.user_partition(leaf.user)
            folders = _folder_names(store, leaf.user)
        except NoSuchUser:
            rec.vanished.append(leaf.logical())
            continue
        t = by_user.get(leaf.user)
        if t is None:
            t = by_user[leaf.user] = Target(part, leaf.user, groups.group_of(leaf.user), [], set())
            order.append(leaf.user)
        have = set(t.folders)
        if leaf.folder is None:
            t.folders.extend(f for f in folders if f not in have)
            continue
        chosen = [f for f in folders if leaf.covers(part, leaf.user, None, f) and f not in have]
        if not chosen and not any(leaf.covers(part, leaf.user, None, f) for f in have):
            rec.vanished.append(leaf.logical())
            # renamed since mkbackupdir? its new name has no placeholder until the next
            # precmd, so tonight no record would hold it: this record takes it
            orphans = [f for f in _unplaced(inst, rec.root, leaf, folders) if f not in t.folders]
            t.folders.extend(orphans)
            t.explicit.update(orphans)
            rec.adopted += [f"/{part}/{leaf.user}/{f}" for f in orphans]
            continue
        t.folders.extend(chosen)
        t.explicit.update(chosen)
    # a partition the record reaches that lists nobody (the empty mount point of a disk
    # not mounted) is refused as imsbackup refuses it (exit 18), not saved as a record of
    # mailboxes all "removed since mkbackupdir ran"
    check_not_empty(store, covered, list(by_user.values()),
                    allow_empty or inst.config.get("backup.allowempty") == "yes")
    rec.targets = sorted_targets(by_user, partitions)


def covered_partitions(partitions: list[str], place: tree.Place, leaves: list[tree.Place]) -> list[str]:
    """The store's partitions a record reaches: the one its path names (every one for
    the tree's root) and those of its placeholders."""
    named = {place.partition} if place.partition is not None else set(partitions)
    named |= {leaf.partition for leaf in leaves}
    return [p for p in partitions if p in named]


def _unplaced(inst, root: str, leaf: tree.Place, folders: list[str]) -> list[str]:
    """The user's folders that no placeholder of the tree covers (renamed or made since
    mkbackupdir ran), among those mkbackupdir would have given one (store.backupexclude,
    -i and -f as the tree's marker says)."""
    from asm.backup import is_excluded
    try:
        only = tree.read_marker(root).get("only")
    except tree.TreeError:
        return []
    exclude = inst.config.backup_exclude()
    udir = os.path.join(root, leaf.partition or "", leaf.group or "", tree.encode(leaf.user))
    places = []
    for f in tree.walk_placeholders(udir) if os.path.isdir(udir) else ():
        try:
            places.append(tree.place_of(tree.relparts(root, f), False))
        except (tree.TreeError, UnicodeDecodeError):
            continue
    out = []
    for f in folders:
        if is_excluded(f, exclude) or (only == "inbox" and f != "INBOX") or (only == "folders" and f == "INBOX"):
            continue
        if not any(p.covers(p.partition, leaf.user, None, f) for p in places):
            out.append(f)
    return out


def _folder_names(store, user: str) -> list[str]:
    if hasattr(store, "folder_names"):
        return list(store.folder_names(user))
    return [f.name for f in store.folders(user)]


# ----------------------------------------------------------------------------- save

def estimate(inst, records: list[SaveRecord], since: float | None, exclude: list[str]) -> tuple[int, int, int]:
    """(records, header bytes, data bytes): framing and archive headers, message bytes."""
    from asm.backup import is_excluded
    header = 8 + 400                                     # STREAM section
    data = 0
    for rec in records:
        header += 2 * (8 + 400) + 3 * 1536 + 10240 // 2   # BEGIN/FINISH, archive header/trailer, padding
        for t in rec.targets:
            header += 1024
            for f in t.folders:
                if f not in t.explicit and is_excluded(f, exclude):
                    continue
                try:
                    snap = inst.store.snapshot(t.user, f, since=since)
                except StoreError:
                    continue
                header += 1536 + 8 * len(snap.messages)
                seen = set()
                for m in snap.messages:
                    if since is not None and m.changed < since:
                        continue
                    header += 1536
                    key = (m.dev, m.ino)
                    if m.nlink > 1 and key in seen:
                        continue
                    seen.add(key)
                    data += m.size
                    header += -m.size % 512
    return len(records), header, data


def save(args, rep) -> int:
    try:
        since = getdate.parse(args.time) if args.time is not None else None
    except getdate.DateError as exc:
        raise UsageError(f"-t: {exc}") from None
    if args.proto and not os.path.isfile(args.proto):
        raise UsageError(f"-f {args.proto}: no such prototype directive file")
    root, marker, records = plan_records(None, args.paths, args.ppath)
    inst = _installation(marker, root=root)
    try:
        for rec in records:
            _resolve(inst, rec, args.allow_empty)
    except ImsError as exc:
        if not (args.dry or args.estimate):
            # refused before any record began (a partition gone, the store empty): the
            # pstcmd must still see these save sets failed
            for rec in records:
                _log(inst, {"time": time.time(), "mode": "save", "name": rec.name,
                            "logical": rec.place.logical(), "status": "error", "errors": [str(exc)]})
        raise
    if not (args.dry or args.estimate) and sys.stdout.isatty():
        raise UsageError("refusing to write a save stream to a terminal: redirect stdout")
    exclude = inst.config.backup_exclude()
    if args.verbose:
        warn(PROG, "asm: imsasm -s" + (f" -t {args.time}" if args.time else "") + " " + " ".join(args.paths))
    for rec in records:
        for v in rec.vanished:
            warn(PROG, f"{rec.name}: {v} is no longer in the store (removed since mkbackupdir ran); skipped")
        if rec.adopted:
            warn(PROG, f"{rec.name}: {', '.join(rec.adopted)} had no placeholder (renamed or made since "
                       f"mkbackupdir ran): saved in this record instead; recover them with it (or the user's "
                       f"directory); the next mkbackupdir -p {rec.root} gives them their own")
    if args.estimate:
        n, h, d = estimate(inst, records, since, exclude)
        print(f"{n} {h} {d}")
        return EXIT_OK
    if args.dry:
        for rec in records:
            nf = sum(len(t.folders) for t in rec.targets)
            if args.verbose:
                warn(PROG, f"{rec.name} -> {rec.place.logical()}: {len(rec.targets)} users, {nf} folders")
        return EXIT_OK

    from asm.backupstate import BaseError, load_base
    home = inst.config.home
    out = sys.stdout.buffer
    sw = StreamWriter(out)
    progress = Progress()
    status = EXIT_OK
    t0 = time.monotonic()
    # every record's state is filed under the time this save began, the time NetWorker's
    # save time (the next -t) is taken just before: a record that starts an hour into a
    # group's save is still found by that -t (plugins/networker/state.py)
    run_started = time.time()
    done = {"records": 0, "users": 0, "folders": 0, "messages": 0, "links": 0, "bytes": 0}
    rep.labels = _labels(records)
    rep.begin(inst.config, selection=[r.place.logical() for r in records], device="stdout (NetWorker save)",
              since=since, records=[])
    finished: list = []                 # (record name, started, full, result): states once the stream is whole
    logged: list = []                   # (record, its log id, level): each record whose start line is written
    errors: list = []

    def report(line):
        if args.verbose:
            progress.clear()
            warn(PROG, line)

    def base_of(rec):
        """(BaseState, its path) an incremental of ``rec`` builds on, or (None, why not)."""
        got = nsrstate.base_for(home, rec.name, since)
        if got is None:
            return None, "no state of an earlier save of this record (first save, or the state was lost)"
        try:
            b = load_base(got[2])
        except BaseError as exc:
            return None, str(exc)
        if b.driver and b.driver != inst.store.name:
            return None, f"the state of the earlier save is of a {b.driver} store"
        return b, got[2]

    installation = inst.config.installation_id(create=True)     # (each record's header)
    try:
        sw.start({"host": socket.gethostname(), "created": time.time(), "since": since,
                  "root": root, "ims_home": inst.config.home, "asm": os.path.basename(sys.argv[0]) or PROG,
                  "end": not args.no_end})
        for rec in records:
            if args.verbose:
                report(f"{rec.name} -> {rec.place.logical()}")
            base = None
            if since is not None:
                base, where = base_of(rec)
                if base is None:
                    warn(PROG, f"{rec.name}: {where}: saving it full (a date alone misses mail moved or "
                               f"renamed; the next incremental builds on this full)")
                    _log(inst, {"time": time.time(), "mode": "save", "name": rec.name, "event": "full-fallback",
                                "since": since, "why": where})
                else:
                    report(f"{rec.name}: incremental on the save of {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(os.path.basename(where).split('-')[0])))}")
            opts = BackupOptions(since=None, exclude=exclude, verbose=args.verbose, base=base,
                                 installation=installation)
            started = time.time()
            # the start line, before the record's first byte: a record cut or killed (SIGKILL
            # leaves nothing else) is one imsasmreport sees begun and never finished
            rid = f"{socket.gethostname()}-{os.getpid()}-{started:.6f}-{len(logged)}"
            level = "incr" if base is not None else "full"
            logged.append((rec, rid, level))
            _log(inst, {"time": started, "mode": "save", "event": "start", "record": rid, "name": rec.name,
                        "logical": rec.place.logical(), "since": since, "level": level})
            sink = sw.record({"name": rec.name, "root": root, "path": "/".join(rec.rel), "kind": rec.kind,
                              "logical": rec.place.logical(), "since": since, "created": started,
                              "adopted": rec.adopted,
                              "level": "incr" if base is not None else "full",
                              "base": base.archive_id if base is not None else None,
                              "host": socket.gethostname(), "ims_home": inst.config.home})
            writer = ArchiveWriter(sink, BF)

            def show(res, _base=dict(done)):
                el = time.monotonic() - t0
                progress.update(f"{PROG}: {_base['records'] + 1}/{len(records)} records, "
                                f"{_base['messages'] + _base['links'] + res.messages + res.links} messages, "
                                f"{human(_base['bytes'] + res.bytes)} ({human((_base['bytes'] + res.bytes) / el if el else 0)}/s)")

            res = run_backup(inst.store, rec.targets, [LogicalPath(rec.place.logical())], writer, opts,
                             device=rec.name, report=report, progress=show if progress.enabled else None,
                             groups=inst.groups)
            rstatus = "partial" if res.errors else "ok"
            sink.finish({"status": rstatus, "users": res.users, "folders": res.folders,
                         "messages": res.messages, "links": res.links, "data_bytes": res.bytes,
                         "errors": res.errors[:100], "vanished": rec.vanished + res.vanished[:100]})
            done["records"] += 1
            for k in ("users", "folders", "messages", "links", "bytes"):
                done[k] += getattr(res, k)
            finished.append((rec, run_started, base is None, res))
            errors += res.errors
            _log(inst, {"time": time.time(), "mode": "save", "record": rid, "name": rec.name,
                        "logical": rec.place.logical(),
                        "since": since, "level": "incr" if base is not None else "full",
                        "base": base.archive_id if base is not None else None,
                        "archive_id": (res.trailer or {}).get("archive_id"), "status": rstatus,
                        "adopted": rec.adopted, "folders": res.folders, "messages": res.messages + res.links,
                        "bytes": res.bytes, "errors": [f"{e['mailbox']}: {e['error']}" for e in res.errors]})
            rep.fields["records"].append({"name": rec.name, "logical": rec.place.logical(), "status": rstatus,
                                          "level": "incr" if base is not None else "full",
                                          "base": base.archive_id if base is not None else None,
                                          "archive_id": (res.trailer or {}).get("archive_id"),
                                          "digest": (res.trailer or {}).get("digest"),
                                          "messages": res.messages + res.links, "bytes": res.bytes})
            for e in res.errors:
                warn(PROG, f"{rec.name}: could not save {e['mailbox']}: {e['error']}")
            if res.errors:
                status = EXIT_PARTIAL
                if args.stop:
                    break
        if not args.no_end:
            sw.end()
        else:
            out.flush()
    except KeyboardInterrupt:
        progress.clear()
        _log_failed(inst, logged, len(finished), "interrupted: the save stream is incomplete")
        return die(PROG, "interrupted: the save stream is incomplete", EXIT_INTERRUPTED)
    except OSError as exc:
        progress.clear()
        why = f"cannot write the save stream: {exc.strerror or exc}; it is incomplete"
        _log_failed(inst, logged, len(finished), why)
        return die(PROG, why, device_status(exc))
    except ImsError as exc:
        progress.clear()
        _log_failed(inst, logged, len(finished), str(exc))
        raise
    progress.clear()
    rep.update(counts={k: done[k] for k in ("users", "folders", "messages", "links", "bytes")},
               errors=errors, vanished=sum((r.vanished for r in records), []))
    # the whole stream reached NetWorker's pipe: what each record held is the base of its
    # next incremental (never before: a cut stream leaves the previous state the base)
    for rec, began, full, res in finished:
        try:
            nsrstate.save(home, rec.name, began, full, res.header, res.state)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            where = f" in {os.path.join(home, 'data', 'networker', 'state')}" if full else ""
            warn(PROG, f"{rec.name}: cannot record the state of this save{where} ({exc.strerror or exc}); "
                       f"its next incremental will be a full" + ("; free space there" if full else ""))
            # a full disk is the status table's 13 whatever was written, as imsbackup's
            # state file (it was 1, "mailboxes or messages failed", which none had)
            status = worst(status, EXIT_NOSPACE if full else EXIT_PARTIAL)
    if args.verbose:
        warn(PROG, f"{done['records']} records, {done['messages'] + done['links']} messages, {human(done['bytes'])} "
                   f"in {time.monotonic() - t0:.1f}s")
    return status


def _log_failed(inst, logged: list, nfinished: int, why: str) -> None:
    """The save stream failed: NetWorker keeps no part of a failed save set, so every
    record this run began is logged failed (the one cut with ``why``), for imsasmreport."""
    for i, (rec, rid, level) in enumerate(logged):
        err = why if i >= nfinished else f"the save stream failed after this record ({why})"
        _log(inst, {"time": time.time(), "mode": "save", "record": rid, "name": rec.name,
                    "logical": rec.place.logical(), "level": level, "status": "error", "errors": [err]})


def _labels(records):
    from asm.report import labels_of
    return labels_of([r.place.logical() for r in records])


# ----------------------------------------------------------------------------- recover

class TreeSelection(Selection):
    """Selects archive folders by tree places (exact or subtree), and with -i n/N leaves
    folders that already exist alone."""

    def __init__(self, places: list[tree.Place], groups, skip_existing=None):
        super().__init__([LogicalPath(p.logical()) for p in places], groups)
        self.places = places
        self.skip_existing = skip_existing
        self.skipped: list[str] = []

    def folder(self, partition, user, group, folder):
        hit = False
        for i, p in enumerate(self.places):
            if p.covers(partition, user, group, folder):
                self.hits[i] += 1
                hit = True
        if hit and self.skip_existing is not None and self.skip_existing(user, folder):
            self.skipped.append(f"/{partition}/{user}/{folder}")
            return False
        return hit

    def reaches(self, mailbox: str) -> bool:
        """As Selection.reaches (what a record's trailer names as not backed up), by the
        places: a user or partition named whole is reached by any place inside it."""
        if not self.places:
            return True
        partition, user, folder = (mailbox[1:].split("/", 2) + [None, None])[:3]
        for p in self.places:
            if p.partition is not None and partition and partition != p.partition:
                continue
            if p.user is not None and user is not None and user != p.user:
                continue
            if folder is None or p.folder is None or p.covers(partition, user, None, folder):
                return True
        return False


def _match(rec_info: dict, want: list[str]):
    """Which recover paths select this record: None (none: skip it), else (whole,
    inside): the indexes of the paths at or above the record (they take it whole; with
    no path, the record is taken whole too) and [(index, place)] of those inside it
    (they select its folders)."""
    if not want:
        return [], []
    name = os.path.normpath(rec_info.get("name", ""))
    root = rec_info.get("root", "")
    whole, inside = [], []
    for i, w in enumerate(want):
        if w == name or name.startswith(w.rstrip("/") + "/") or w == "/":
            whole.append(i)
        elif w.startswith(name + "/"):
            parts = tree.relparts(root, w)
            last_self = parts and parts[-1] == tree.SELF
            inside.append((i, tree.place_of(parts, is_dir=not last_self)))
    return (whole, inside) if whole or inside else None


def _selected_places(want: list[str], whole: list[int], inside: list) -> list[tree.Place]:
    """The places a record's selection holds: [] (all of it) when no path is inside it,
    else the places inside it, after the whole record (Place()) when a path also takes
    it whole: so each inside path's folders are counted (TreeSelection.hits)."""
    places = [p for _, p in inside]
    if places and (whole or not want):
        places = [tree.Place()] + places
    return places


def _inside_hits(sel, want: list[str], whole: list[int], inside: list) -> dict:
    """{path index: folders of the record it selected} for the paths inside a record."""
    off = 1 if whole or not want else 0
    hits = getattr(sel, "hits", None) if isinstance(sel, TreeSelection) else None
    return {i: (hits[k + off] if hits is not None else 0) for k, (i, _) in enumerate(inside)}


def _split_map(m: str, root: str) -> tuple:
    """(SRC, DST, their places) of one -m SRC=DST.  A user name may hold '=' (a user
    'e=x' is a directory .../e=x of the tree), so the '=' taken is the one at which both
    sides name a user directory of the tree; two such '=' are refused as ambiguous."""
    if "=" not in m:
        raise UsageError(f"-m {m!r}: expected SRC=DST, e.g. -m /backup/primary/groupA/joe=/backup/primary/groupA/ann")
    fits, first_error = [], None
    at = m.find("=")
    while at >= 0:
        src, dst = m[:at], m[at + 1:]
        if src and dst:
            try:
                ps = tree.place_of(tree.relparts(root, src), True)
                pd = tree.place_of(tree.relparts(root, dst), True)
            except tree.TreeError as exc:
                first_error = first_error or exc
            else:
                if ps.user is not None and pd.user is not None and ps.folder is None and pd.folder is None:
                    fits.append((src, dst, ps, pd))
        at = m.find("=", at + 1)
    if len(fits) > 1:
        raise UsageError(f"-m {m!r}: it can be split at more than one '=' ({fits[0][0]!r} or {fits[1][0]!r} "
                         f"as the source); recover that user in a run of its own without -m")
    if not fits and first_error is not None:
        raise first_error
    if not fits:
        raise UsageError(f"-m {m!r}: both sides must name a user directory of the tree "
                         f"(PARTITION/GROUP/USER below {root}); folders cannot be relocated")
    return fits[0]


def _user_map(maps: list[str], root: str, want: list[str] = ()) -> dict:
    """{source user: target user} of the -m SRC=DST; ``want``: the paths recovered.  A DST
    those paths also reach, not renamed itself, would be recovered under its own name
    too, its folders merged with SRC's: refused (exit 2) before anything is recovered.
    (Without paths the stream, read once, cannot be looked ahead in: the restore engine
    refuses whichever of the two comes second, RestoreOptions.map_targets.)"""
    out = {}
    dsts = {}
    for m in maps:
        src, dst, ps, pd = _split_map(m, root)
        if ps.user in out and out[ps.user] != pd.user:
            raise UsageError(f"-m {m!r}: {ps.user!r} is already mapped to {out[ps.user]!r}: keep one -m")
        joined = [u for u, d in out.items() if d == pd.user and u != ps.user]
        if joined:
            raise UsageError(f"-m {m!r}: {ps.user!r} and {joined[0]!r} are both mapped to {pd.user!r}: their "
                             f"mail would be merged into one user's folders; map each to a user of its own "
                             f"(to merge, recover them in two runs)")
        out[ps.user] = pd.user
        dsts[pd.user] = tree.relparts(root, dst)
    reach = [tree.relparts(root, w) for w in want]
    for src, dst in out.items():
        if dst == src or dst in out:
            continue
        d = dsts[dst]
        if any(r[:len(d)] == d or d[:len(r)] == r for r in reach):
            raise UsageError(f"-m {src}={dst}: {dst} is recovered too in this run (the paths reach it); "
                             f"recover {dst} alone in a run of its own, or give the paths of the users to "
                             f"recover (nothing was recovered)")
    return out


def _verify(rec, report) -> tuple[int, int, list[str]]:
    """-n: read every member and check its digest; returns (messages, bytes, errors)."""
    reader = ArchiveReader(rec, BF)
    n = nbytes = 0
    errors = []
    for m in reader.members(on_error=lambda e: errors.append(str(e))):
        if m.kind != "message":
            if m.kind == "link":
                n += 1
            continue
        try:
            with m.open() as f:
                while True:
                    b = f.read(1 << 20)
                    if not b:
                        break
                    nbytes += len(b)
            n += 1
        except ArchiveError as exc:
            errors.append(str(exc))
    if not reader.complete:
        errors.append("the record's archive has no trailer (incomplete)")
    report(f"{rec.name}: {n} messages, {human(nbytes)} checked")
    return n, nbytes, errors


def _compare(inst, rec, sel, report) -> list[str]:
    """Differences between one record's archive and the store."""
    store = inst.store
    reader = ArchiveReader(rec, BF)
    diffs: list[str] = []
    ok_folder = False
    for m in reader.members(on_error=lambda e: diffs.append(str(e))):
        if m.kind == "user":
            continue
        where = f"/{m.partition}/{m.user}/{m.folder}"
        if m.kind == "folder":
            ok_folder = sel is None or sel.folder(m.partition, m.user, m.group, m.folder)
            if not ok_folder:
                continue
            try:
                info = store.folder(m.user, m.folder)
            except (NoSuchUser, NoSuchFolder):
                diffs.append(f"{where}: folder is missing from the store")
                ok_folder = False
                continue
            if info.uidvalidity != m.uidvalidity:
                diffs.append(f"{where}: UIDVALIDITY {info.uidvalidity} in the store, {m.uidvalidity} saved")
            continue
        if not ok_folder:
            continue
        try:
            got = store.message(m.user, m.folder, m.uid)
        except (MessageGone, StoreError):
            diffs.append(f"{where}/{m.uid}: message is missing from the store")
            continue
        if got.size != m.size:
            diffs.append(f"{where}/{m.uid}: {got.size} bytes in the store, {m.size} saved")
            continue
        h = hashlib.sha256()
        with open(got.path, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        if h.hexdigest() != m.sha256:
            diffs.append(f"{where}/{m.uid}: bytes differ from the saved message")
        if set(got.flags) != set(m.flags) or tuple(got.keywords) != tuple(m.keywords):
            diffs.append(f"{where}/{m.uid}: flags {sorted(got.flags) + list(got.keywords)} in the store, "
                         f"{sorted(m.flags) + list(m.keywords)} saved")
    report(f"{rec.name}: {len(diffs)} differences")
    return diffs


def recover(mode: str, args, rep=None) -> int:
    want = [os.path.normpath(os.path.abspath(p)) for p in args.paths]
    suffix = getattr(args, "suffix", "")
    if "/" in suffix or any(ord(c) < 32 or ord(c) == 127 for c in suffix):
        # ('-z /x' made a folder 'INBOX-/x': a child of an 'INBOX-' that is not there)
        raise UsageError(f"-z {suffix!r}: a suffix may not hold '/' (the folder separator) or control "
                         f"characters; give one such as -z .R")
    inst = None if args.dry else _installation(create=mode == "-r")
    if rep is not None:
        from asm.report import labels_of
        rep.labels = labels_of(["/"])
        rep.begin(inst.config, selection=want or ["/"], device="stdin (NetWorker recover)", records=[])
    if sys.stdin.isatty():
        raise UsageError("no save stream on stdin: pipe one in (NetWorker's recover does)")
    progress = Progress()

    def report(line):
        if args.verbose:
            progress.clear()
            warn(PROG, line)

    try:
        reader = StreamReader(sys.stdin.buffer)
    except NotAStream as exc:
        return die(PROG, f"stdin is not an imsasm save stream: {exc}", exc.status)
    except OSError as exc:
        return die(PROG, f"cannot read stdin: {exc.strerror or exc}", device_status(exc))

    matched = 0
    stopped = False             # the store filled up: the save sets after it were not read
    hits = [0] * len(want)      # per path: records it takes whole, or folders it selects in one
    errors: list[str] = []
    status = EXIT_OK
    totals = {"records": 0, "folders": 0, "messages": 0, "links": 0, "duplicates": 0, "bytes": 0}
    try:
        for rec in reader.records():
            got = _match(rec.info, want)
            if got is None:
                continue
            whole, inside = got
            places = _selected_places(want, whole, inside)
            for i in whole:
                hits[i] += 1
            matched += 1
            totals["records"] += 1
            report(f"{rec.name}" + (f" ({', '.join(p.logical() for _, p in inside)})" if inside else ""))
            if rep is not None:
                rep.fields["records"].append({"name": rec.name, "logical": rec.info.get("logical"),
                                              "level": rec.info.get("level"), "base": rec.info.get("base")})
            try:
                if args.dry:
                    for i, _ in inside:
                        hits[i] += 1            # -n checks the stream, not which folders a path selects
                    _, _, errs = _verify(rec, report)
                    errors += [f"{rec.name}: {e}" for e in errs]
                    continue
                if mode == "-c":
                    sel = TreeSelection(places, inst.groups) if places else None
                    diffs = _compare(inst, rec, sel, report)
                    errors += diffs
                    for i, n in _inside_hits(sel, want, whole, inside).items():
                        hits[i] += n
                    if diffs and args.stop:
                        break
                    continue
                rstatus, sel = _restore_record(inst, rec, places, args, totals, errors, report, progress)
                status = worst(status, rstatus)
                for i, n in _inside_hits(sel, want, whole, inside).items():
                    hits[i] += n
                if rstatus == EXIT_NOSPACE:
                    stopped = True          # nothing more can be written: the rest is not read
                    break
                if errors and args.stop:
                    break
            except NotAnArchive as exc:
                errors.append(f"{rec.name}: the record does not hold an imsbackup archive ({exc})")
                status = worst(status, EXIT_INCOMPLETE)
            except IncompleteArchive as exc:
                errors.append(f"{rec.name}: {exc}")
                status = worst(status, EXIT_INCOMPLETE)
            finally:
                _log_recover(inst, mode, rec, errors)
    except TruncatedStream as exc:
        progress.clear()
        for e in errors:
            warn(PROG, e)
        return die(PROG, f"{exc}; what came before was {'checked' if args.dry else 'restored'}", exc.status)
    except StreamError as exc:
        progress.clear()
        return die(PROG, f"damaged save stream: {exc}", exc.status)
    except KeyboardInterrupt:
        progress.clear()
        return die(PROG, "interrupted: what was restored so far is complete message by message; "
                   "run the same recover again to finish (no duplicates)", EXIT_INTERRUPTED)
    progress.clear()
    for e in errors:
        warn(PROG, e)
    if rep is not None:
        rep.update(counts=dict(totals), errors=[{"mailbox": "", "error": e} for e in errors])
    # a path that took no record, or selected no folder inside the records it lies in
    # (a typo: .../joe/Wrok), is named as imsrestore names it: exit 2 when no path
    # matched anything (nothing was restored), else a failure of this run (exit 1)
    unmatched = [w for w, n in zip(want, hits) if n == 0] if not stopped else []
    if want and (not matched or len(unmatched) == len(want)):
        raise UsageError(f"nothing in the save stream matches {', '.join(unmatched or want)}"
                         + ("" if not matched else
                            " (no folder of the records holding it has that name: folder names are "
                            "matched exactly)"))
    for w in unmatched:
        warn(PROG, f"{w}: nothing in the save stream matches this path; the other paths were "
                   f"{'compared' if mode == '-c' else 'checked' if args.dry else 'restored'}")
    if mode == "-r" and not args.dry and (args.verbose or sys.stderr.isatty()):
        warn(PROG, f"{totals['records']} records, {totals['folders']} folders, {totals['messages']} messages, "
                   f"{totals['links']} links, {totals['duplicates']} already there, {human(totals['bytes'])}")
    if mode == "-c" and args.verbose:
        warn(PROG, f"{totals['records']} records compared, {len(errors)} differences")
    if (errors or unmatched) and status == EXIT_OK:
        status = EXIT_PARTIAL
    return status


def _log_recover(inst, mode, rec, errors) -> None:
    if inst is not None and mode == "-r":
        _log(inst, {"time": time.time(), "mode": "recover", "name": rec.name,
                    "logical": rec.info.get("logical"), "status": "ok" if not errors else "error",
                    "errors": errors[-5:]})


def _restore_record(inst, rec, places, args, totals, errors, report, progress) -> tuple:
    user_map = _user_map(args.maps, rec.info.get("root", "/"), args.paths) if args.maps else {}
    answer = args.answer
    def exists(user, folder):
        return inst.store.exists(user_map.get(user, user), folder)
    skip = exists if answer in "nN" else None
    sel = TreeSelection(places, inst.groups, skip) if places or skip else Selection([], inst.groups)
    if not places and skip is not None:
        sel.places = [tree.Place()]
        sel.paths = [LogicalPath("/")]
        sel.hits = [0]
    home = inst.config.home
    reader = ArchiveReader(rec, BF)
    if getattr(args, "map_targets", None) is None:
        args.map_targets = {}           # one for the whole stream: its records are one run
    opts = RestoreOptions(new_mailbox=answer in "rR", user_map=user_map, map_targets=args.map_targets,
                          new_suffix=args.suffix.lstrip(".") or "R",
                          continue_on_error=not args.stop,
                          reffile=default_reffile(home, reader.header),
                          spool_dir=os.path.join(home, "data", "spool"), verbose=args.verbose)
    journal = Journal(os.path.join(home, "data", "restore-journal.db"))

    def show(res):
        progress.update(f"{PROG}: {rec.name}: {res.folders} folders, {res.messages + res.links + res.duplicates} "
                        f"messages, {human(res.bytes)}")

    res = Restorer(inst.store, inst.groups, reader, opts, sel, journal, device=rec.name, report=report,
                   progress=show if progress.enabled else None).restore()
    for k in ("folders", "messages", "links", "duplicates", "bytes"):
        totals[k] += getattr(res, k)
    errors += [f"{rec.name}: {e['mailbox']}: {e['error']}" for e in res.errors]
    if isinstance(sel, TreeSelection):
        for s in sel.skipped:
            report(f"{s}: already there; left alone (-i {answer})")
    if res.pending:
        errors.append(f"{rec.name}: {len(res.pending)} linked messages need their first copy; "
                      f"recover the save set holding it, then imsrestore -r {opts.reffile}")
    # each failure keeps its own status (a full store 13, a store that cannot be written
    # 17, a lock 6, folders refused because this save set does not follow what was
    # recovered into them 7, as imsrestore says them), ranked as imsrestore ranks them
    # (a name the store cannot keep is named, 1: imsasm's own exit 2 is for its paths)
    statuses = res.failures() | {EXIT_PARTIAL if e.get("status") == EXIT_USAGE else e.get("status", EXIT_PARTIAL)
                                 for e in res.errors}
    if res.pending:
        statuses.add(EXIT_PARTIAL)
    # what the record's backup could not read, where the paths reach it: named and exit 1,
    # as imsrestore of the same archive says it
    from asm.cli.imsrestore import unread_line
    for mailbox, why in res.unread:
        errors.append(f"{rec.name}: {unread_line(mailbox, why)}")
        statuses.add(EXIT_PARTIAL)
    if res.hostile:
        errors.append(f"{rec.name}: {res.hostile} hostile members refused")
    if res.incomplete:
        errors.append(f"{rec.name}: {res.incomplete}")
    return worst(*statuses), sel


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        title, usage = __doc__.split("\n\n")[:2]
        print(f"usage:\n{usage}\n\n{title}\n'imsasm -s --help' (or -r, -c) lists the options of each mode")
        return EXIT_OK
    mode, rest = split_mode(argv)
    from asm.report import run_reported
    if mode == "-s":
        args = _save_parser().parse_args(rest)
        if args.estimate or args.dry:
            return save(args, None)
        return run_reported(PROG, args.report, lambda rep: save(args, rep), lambda w: warn(PROG, w))
    args = _recover_parser(mode).parse_args(rest)
    if mode == "-c" or args.dry:
        return recover(mode, args, None)
    return run_reported(PROG + " -r", args.report, lambda rep: recover(mode, args, rep), lambda w: warn(PROG, w))


if __name__ == "__main__":
    sys.exit(main())
