"""imsrestore: restore mailboxes from an imsbackup archive.

    imsrestore -f device [-f device ...] [-b bf] [-t] [-h] [-n] [-i] [-r reffile] [-m mapfile] [-c y|n] [-v]
               [--identity FILE] [path ...]

Several -f restore a chain to the point in time of the last one: a full backup and its
incrementals, in order; the chain is checked (each incremental names the one before as
its base) before anything changes.

Compressed (zstd, gzip, xz, bzip2) and age-encrypted archives are recognised by their
magic bytes, whoever made them (asm.layers).
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import stat
import sys
import time

from asm.archive.errors import ArchiveError, DigestMismatch, HostileMember, IncompleteArchive
from asm.archive.reader import ArchiveReader
from asm.cli.common import (
    ArgParser, Progress, UsageError, blocking_factor, check_out_file, die, human, run_command, shown, warn,
)
from asm.cli.context import open_installation
from asm.devices import DeviceError, open_device
from asm.errors import (
    EXIT_HOSTILE, EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_NOSPACE, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE,
    ImsError,
    device_status,
)
from asm.layers import wrap_read
from asm.layers.errors import LayerDamaged
from asm.layers.options import identity_loader
from asm.logical import not_a_user_too, parse, user_on
from asm.restore import (
    ChainOrderError, Journal, Restorer, RestoreOptions, Selection, chain_end, complete_references, default_reffile,
    read_map, read_reffile,
)
from asm.store.base import check_user_name

PROG = "imsrestore"


def build_parser() -> ArgParser:
    p = ArgParser(prog=PROG, description="Restore mailboxes from an imsbackup archive.", add_help=False)
    p.add_argument("-f", dest="devices", required=True, action="append", metavar="DEVICE",
                   help="archive file, tape or FIFO; '-' for stdin; [user@]host:path via a device plugin; "
                        "repeat for a chain (full, then each incremental in order)")
    p.add_argument("-b", dest="bf", type=blocking_factor, default=20, metavar="N", help="blocking factor (default 20)")
    p.add_argument("-t", dest="toc", action="store_true", help="list the archive's contents; restore nothing")
    p.add_argument("-h", dest="header", action="store_true", help="print the archive header; restore nothing")
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("-n", dest="new", action="store_true",
                   help="restore into a new folder (name-YYYYMMDD) when the folder exists, or when an "
                        "incremental holds only part of a folder that is not here")
    p.add_argument("-i", dest="ignore", action="store_true",
                   help="do not check for messages already there (duplicates possible)")
    p.add_argument("-r", dest="reffile", metavar="REFFILE",
                   help="complete the links listed in a reference file from this archive")
    p.add_argument("-R", dest="refout", metavar="FILE",
                   help="where to write the reference file for links a stream could not resolve")
    p.add_argument("-m", dest="mapfile", metavar="MAPFILE", help="olduser=newuser lines: restore under other users")
    p.add_argument("-c", dest="cont", choices=["y", "n"],
                   help="the answer to 'continue after an error?': y or n (default: ask on a "
                        "terminal, continue otherwise)")
    p.add_argument("-H", "--hold", dest="hold", action="store_true",
                   help="leave deliveries held at the end (more archives of a chain follow)")
    p.add_argument("--recovery", action="store_true",
                   help="one chain of several restored into one store after a total loss (imsdr chain "
                        "--commands writes it): a user another chain's restore gave from a later "
                        "archive is left so, one it gave from an older archive is made anew")
    p.add_argument("-v", dest="verbose", action="store_true", help="report each mailbox and a summary")
    p.add_argument("--identity", action="append", default=[], metavar="FILE",
                   help="age identity file for an encrypted archive (repeatable; default: "
                        "store.encrypt.identities)")
    p.add_argument("--report", metavar="FILE",
                   help="write a JSON report of the run to FILE (docs/operations.md, \"Proving your backups\")")
    p.add_argument("paths", nargs="*", metavar="path",
                   help="what to restore: /, /primary/groupA, /primary/user/joe, /primary/joe/INBOX")
    return p


def _asker(progress):
    """The classic prompt: after an error, ask whether to go on (a terminal only)."""
    def ask(message: str) -> bool:
        progress.clear()
        while True:
            print(f"{PROG}: {message}", file=sys.stderr)
            sys.stderr.write("Do you want to continue? [y/n] ")
            sys.stderr.flush()
            answer = sys.stdin.readline()
            if not answer:
                return False
            if answer.strip().lower() in ("y", "yes"):
                return True
            if answer.strip().lower() in ("n", "no"):
                return False
    return ask


def _print_header(header: dict) -> None:
    for k in sorted(header):
        v = header[k]
        if k in ("created", "since") and isinstance(v, (int, float)):
            v = f"{v} ({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(v))})"
        print(shown(f"{k}: {v}"))       # a forged header says nothing to the terminal


class _OutputFailed(Exception):
    """Writing the listing to stdout failed (not the device): run_command says how."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


# control characters (C0 with TAB and newline, DEL, C1): no store keeps a C0 one in a
# folder or user name, but a forged archive may claim any, and the listing must neither
# drive the terminal of whoever checks a tape nor gain lines or fields (tab-separated)
_LISTED_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _listed(name) -> str:
    """A name from the archive as the listing prints it: as it is (bytes that are not
    UTF-8 too, as ls and find print them), but each control character as \\xNN."""
    return _LISTED_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(name))


def _print(line: str) -> None:
    try:
        print(line)
    except OSError as exc:
        raise _OutputFailed(exc) from exc


def _toc(reader, sel: Selection, verbose: bool = False, layered=None) -> int:
    """List the selected folders and messages, and check the whole archive while reading
    it, as a restore would: every member's records (and, in a version 2 archive, their
    digests), every message's bytes against its SHA-256, every link against its first
    copy, the trailer against the sequence; ``layered`` (the stream of a compressed or
    encrypted archive) is then read to the end of its layers, as imsverify does.  Damage
    is named on stderr, exit 4; hostile members exit 5."""
    errors: list[str] = []
    counts = {"hostile": 0, "corrupt": 0, "messages": 0, "bytes": 0}

    def on_error(e):
        counts["hostile" if isinstance(e, HostileMember) else "corrupt"] += 1
        errors.append(str(e))

    current_ok = False
    recorded: dict = {}             # (partition, user) -> the group the backup recorded
    try:
        for m in reader.members(on_error=on_error):
            if m.kind == "user":
                recorded[(m.partition, m.user)] = m.group
                continue
            if m.kind == "folder":
                # a group path selects by the group recorded at backup, as the restore does
                current_ok = sel.folder(m.partition, m.user, recorded.get((m.partition, m.user), m.group),
                                        m.folder)
                if current_ok:
                    _print(f"{_listed(f'/{m.partition}/{m.user}/{m.folder}')}\tuidvalidity={m.uidvalidity} "
                          f"uidnext={m.uidnext} uids={len(m.uids)}{' subscribed' if m.subscribed else ''}")
                continue
            if m.kind == "message":
                try:
                    m.check()
                    counts["messages"] += 1
                    counts["bytes"] += m.size
                except DigestMismatch as exc:
                    on_error(exc)
            if not current_ok:
                continue
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.internaldate or 0))
            flags = _listed(" ".join(sorted(m.flags) + list(m.keywords)))
            what = f"link to {_listed(m.linkname)}" if m.kind == "link" else f"{m.size}"
            _print(f"{_listed(f'/{m.partition}/{m.user}/{m.folder}')}/{m.uid}\t{what}\t{when}\t{flags}")
    except IncompleteArchive as exc:
        for e in errors:
            warn(PROG, e)
        warn(PROG, str(exc))
        return EXIT_INCOMPLETE
    for e in errors:
        warn(PROG, e)
    if verbose:
        warn(PROG, f"checked {counts['messages']} messages ({human(counts['bytes'])}): "
                   + ("every digest matches" if not errors else
                      f"{counts['corrupt']} damaged, {counts['hostile']} hostile members"))
    if counts["hostile"]:
        return EXIT_HOSTILE
    if counts["corrupt"]:
        return EXIT_INCOMPLETE
    if not reader.complete:
        warn(PROG, "archive is incomplete: it has no trailer")
        return EXIT_INCOMPLETE
    if layered is not None:
        from asm.layers import read_to_end
        from asm.layers.errors import LayerError
        try:
            damage = read_to_end(layered)
        except LayerError as exc:
            damage = [f"after the archive's end: {exc.strerror or exc}"]
        for line in damage:
            warn(PROG, line)
        if damage:
            return EXIT_INCOMPLETE
    unmatched = sel.unmatched()
    # what the archive's backup could not read, where the paths reach it (as a restore says)
    unread = dict(sel.unread(reader.trailer))
    for mailbox, why in unread.items():
        if mailbox not in unmatched:
            warn(PROG, unread_line(mailbox, why))
    for p in unmatched:
        # as the restore with the same path says (and exits): never an empty listing with 0
        warn(PROG, _unmatched(p, sel.near_misses(p), sel.left_out(p, reader.header), unread.get(p),
                              sel.user_path(p)))
    # (as a restore's status: every path unmatched is a usage error, some of them a part)
    if unmatched:
        return EXIT_USAGE if len(unmatched) == len(sel.paths) else EXIT_PARTIAL
    return EXIT_OK


def _user_here(store, partition, name) -> bool:
    """user_on for -t, which may list a tape where no store is (an installation that
    cannot read its own store lists as if it had no users)."""
    try:
        return user_on(store, partition, name)
    except (ImsError, OSError):
        return False


def unread_line(mailbox: str, why: str) -> str:
    """A mailbox the backup that made the archive could not read (its trailer says so):
    the archive does not bring it back as the store had it; a later one may."""
    return (f"{mailbox}: the backup that made this archive could not read it: it is not here as "
            f"the store had it; restore it from a later backup that read it ({why})")


def _unmatched(path: str, near: list | None, left_out: str | None, unread: str | None = None,
               user_path: str | None = None) -> str:
    """The line for a path that matched nothing in the archive, with what it has under
    another case, the store.backupexclude that kept the folder out of the backup, or
    the path of the archived user that a /P/NAME read as a backup group here names."""
    why = ""
    if user_path:
        name = user_path.split("/")[3]
        why = (f" ({name!r} is a backup group here (backup-groups.conf), and the archive holds a user "
               f"{name!r}: restore it as {user_path})")
    elif near:
        import unicodedata
        same_case = [n for n in near if unicodedata.normalize("NFD", n) == unicodedata.normalize("NFD", path)]
        # (a near miss whose user is not one this path names differs in its user ID)
        users = any(n.split("/")[2] not in path.split("/")[2:] for n in near if n.count("/") >= 2)
        why = (f" (it has {', '.join(near)}: "
               + ("user IDs and folder names" if users else "folder names") + " are matched exactly, but INBOX"
               + ("; the same letters, written in other Unicode code points (accents as separate "
                  "characters, or not): copy the path from imsrestore -t" if same_case else "") + ")")
    elif left_out:
        why = (f" (the backup left it out: store.backupexclude was {left_out!r}; an archive of it "
               f"needs a backup naming it, e.g. imsbackup -f FILE {path})")
    elif unread:
        why = f" (the backup that made this archive could not read it: {unread})"
    return f"{path}: nothing in the archive matches this path{why}"


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _open_layered(spec: str, bf: int, config, identities):
    device = open_device(spec, "rb", bf, config)
    return wrap_read(device, identity_loader(config, identities), 512 * bf)


def _read_header(spec: str, bf: int, config, identities=()) -> dict:
    """The header of one archive of a chain (the device is opened and closed again)."""
    try:
        device = _open_layered(spec, bf, config, identities)
    except DeviceError as exc:
        raise ImsError(f"cannot open {spec}: {exc}", status=device_status(exc)) from None
    with device:
        try:
            return ArchiveReader(device.file, bf).header
        except ArchiveError as exc:
            raise ImsError(f"{spec}: {exc}", status=exc.status) from None
        except OSError as exc:
            raise ImsError(f"cannot read {spec}: {exc.strerror or exc}", status=device_status(exc)) from None


def _final_state(spec: str, bf: int, config, identities=(), seen: list | None = None) -> tuple[dict, tuple]:
    """(asm.restore.plan.chain_end of the chain's last archive, its trailer's errors:
    what its backup could not read) (read once to its end before anything is restored;
    message data is skipped where it can be).  ``seen`` gets its user and folder members."""
    try:
        device = _open_layered(spec, bf, config, identities)
    except DeviceError as exc:
        raise ImsError(f"cannot open {spec}: {exc}", status=device_status(exc)) from None
    with device:
        try:
            reader = ArchiveReader(device.file, bf)
            members = reader.members(on_error=lambda e: None)
            if seen is not None:
                members = _tap(members, seen)
            out = chain_end(members)
            unread = tuple((reader.trailer or {}).get("errors", []))
        except ArchiveError as exc:
            raise ImsError(f"{spec}: {exc}", status=exc.status) from None
        except OSError as exc:
            raise ImsError(f"cannot read {spec}: {exc.strerror or exc}", status=device_status(exc)) from None
    return out, unread


def _map_targets_at_risk(user_map: dict, paths: list) -> list:
    """The map's new names the selection may also take under their own names (users
    the map does not rename themselves): only for them must the archive be looked at."""
    from asm.restore.selection import may_take
    return [new for old, new in user_map.items() if new != old and new not in user_map and may_take(paths, new)]


def _check_map(args, inst, paths: list, user_map: dict, reader, layered: bool) -> None:
    """Refuse, before anything is written, a map line whose new name is a user this run
    restores under its own name too (asm.restore.selection.check_map_targets): the
    archive's users are listed first, by seek on a plain archive file, else by reading
    it once more (a pipe, FIFO or tape cannot be: there the restore refuses the second
    of the two users it meets, and names it)."""
    from asm.restore.selection import check_map_targets, restored_users
    at_risk = _map_targets_at_risk(user_map, paths)
    if not at_risk:
        return
    sel = Selection(paths, inst.groups, is_user=functools.partial(user_on, inst.store))
    if reader.seekable and not layered:
        check_map_targets(user_map, restored_users(reader.index(on_error=lambda e: None), sel, user_map))
        return
    spec = args.device
    try:
        st = os.stat(spec) if spec != "-" else None
    except OSError:
        st = False                      # a remote device (host:path, s3://): opened again
    if spec == "-" or (st and not stat.S_ISREG(st.st_mode)):
        # a pipe, FIFO or tape is read once: the restore itself refuses whichever of the
        # two users comes second (RestoreOptions.map_targets), exit 1, never a merge
        return
    try:
        device = _open_layered(spec, args.bf, inst.config, args.identity)
    except DeviceError as exc:
        raise ImsError(f"cannot open {spec}: {exc}", status=device_status(exc)) from None
    with device:
        try:
            users = restored_users(ArchiveReader(device.file, args.bf).members(on_error=lambda e: None),
                                   sel, user_map)
        except ArchiveError as exc:
            raise ImsError(f"{spec}: {exc}", status=exc.status) from None
        except OSError as exc:
            raise ImsError(f"cannot read {spec}: {exc.strerror or exc}", status=device_status(exc)) from None
    check_map_targets(user_map, users)


def _tap(members, seen: list):
    for m in members:
        if m.kind in ("user", "folder"):
            seen.append(m)
        yield m


def check_chain(specs: list, headers: list) -> None:
    """Each archive after the first must follow the one before it: an incremental names
    it as its base; an archive that names no base (a full, or an incremental by date
    alone) must have been taken after it; and each is a backup of the installation the
    others are (those that name one).  ChainOrderError (exit 7) names the first that
    does not, before anything is restored."""
    first = None
    for spec, h in zip(specs, headers):
        inst = h.get("installation")
        if not isinstance(inst, str) or not inst:
            continue
        if first is None:
            first = (spec, inst)
        elif inst != first[1]:
            raise ChainOrderError(
                f"{spec} is a backup of another installation (identity {inst}) than {first[0]} "
                f"({first[1]}): it is no link of that chain (a cron line with the wrong IMS_HOME, two "
                f"installations sharing a backup directory?); give the archives of one installation; "
                f"nothing was restored")
    for i in range(1, len(headers)):
        prev, h = headers[i - 1], headers[i]
        base = h.get("base")
        if base is not None:
            if base != prev.get("archive_id"):
                raise ChainOrderError(
                    f"{specs[i]} does not follow {specs[i - 1]}: it is an incremental of archive {base}, "
                    f"and {specs[i - 1]} is {prev.get('archive_id')}; give the full backup, then each "
                    f"incremental in the order they were taken, none left out (imsrestore -h -f ARCHIVE "
                    f"shows an archive's id and base); nothing was restored")
        elif h.get("since") is None:
            raise ChainOrderError(f"{specs[i]} is a full backup: it cannot follow {specs[i - 1]} in a chain; "
                                  f"nothing was restored")
        elif (h.get("created") or 0) <= (prev.get("created") or 0):
            raise ChainOrderError(f"{specs[i]} was taken before {specs[i - 1]}: give a chain in the order "
                                  f"its archives were taken; nothing was restored")


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.refout:
        check_out_file("-R", args.refout)
    from asm.report import run_reported
    named = [(f"the archive of -f {d}", d) for d in args.devices]
    named += [(f"the reference file -r {args.reffile}", args.reffile),
              (f"the reference file -R {args.refout}", args.refout), (f"the map file -m {args.mapfile}", args.mapfile)]
    named += [(f"the identity file {f}", f) for f in args.identity]
    return run_reported(PROG, args.report, lambda rep: _dispatch(args, rep), lambda w: warn(PROG, w), named)


def _dispatch(args, rep) -> int:
    if len(args.devices) > 1:
        return _chain(args, rep)
    args.device = args.devices[0]
    return _one(args, rep)


def _chain(args, rep) -> int:
    """Several -f: check the chain, then restore each archive in turn (deliveries stay
    held until the last one); stop at the first that does not end well."""
    if args.toc or args.header or args.reffile:
        raise UsageError("-t, -h and -r take one archive: give one -f")
    if "-" in args.devices:
        raise UsageError("a chain of several -f cannot read stdin ('-'): name the archives")
    inst = open_installation(create=True)
    # a bad map file: before the journal
    user_map = read_map(args.mapfile, inst.store.check_new_user) if args.mapfile else {}
    headers = [_read_header(d, args.bf, inst.config, args.identity) for d in args.devices]
    check_chain(args.devices, headers)
    # the end of the chain: what its last archive lists, folder by folder; the archives
    # before it restore nothing else (no message or folder gone by then comes back)
    paths = [parse(p, inst.groups, members=False) for p in args.paths]
    at_risk = _map_targets_at_risk(user_map, paths)
    seen: list | None = [] if at_risk else None
    final, unread = _final_state(args.devices[-1], args.bf, inst.config, args.identity, seen)
    if at_risk:
        # the chain restores what its last archive holds: a map onto a user it restores
        # under its own name too is refused before anything is written (_check_map)
        from asm.restore.selection import check_map_targets, restored_users
        check_map_targets(user_map, restored_users(
            seen, Selection(paths, inst.groups, is_user=functools.partial(user_on, inst.store)), user_map))
    from asm.restore.selection import unseen_by
    unseen = unseen_by(headers[-1], inst.groups, {u for (u, _f) in final}, final)
    status = EXIT_OK
    sig = _run_signature(args, headers) if args.new or args.ignore else None
    journal = _journal(inst) if sig else None
    token = journal.begin_run(sig) if sig else ""
    per: list = []              # the run report: each archive's status and counts, and their sum
    new_uids: list = []         # ... and every archive's folders restored with new UIDs

    def report_chain() -> None:
        total: dict = {}
        for p in per:
            for k, v in (p["counts"] or {}).items():
                total[k] = total.get(k, 0) + v
        rep.update(device=list(args.devices), chain=per, counts=total, new_uids=new_uids)

    unmatched: list = [None]    # the paths no archive before this one matched (None: none yet)
    chain_gone: list = []       # RestoreResult.gone_asked over the chain, named after its last archive
    map_used: set = set()       # the map file's old names some archive of the chain had
    map_targets: dict = {}      # RestoreOptions.map_targets, for every archive of the chain
    claims: dict = {}           # RestoreOptions.claims, for every archive of the chain
    acl_users: dict = {}        # user -> [ACLs given, ACLs removed], over the chain
    for i, d in enumerate(args.devices):
        last = i == len(args.devices) - 1
        one = argparse.Namespace(**vars(args))
        one.chain_unmatched = unmatched
        one.chain_gone = chain_gone
        one.map_used = map_used
        one.map_targets = map_targets
        one.claims = claims
        one.map_last = last
        one.acl_users = acl_users
        one.device = d
        one.hold = args.hold or not last
        one.run_token = token
        one.chain_ids = tuple(h.get("archive_id") for h in headers)
        one.final = None if last else final
        one.final_unread = () if last else unread
        one.final_unseen = None if last else unseen
        one.final_created = None if last else headers[-1].get("created")
        rep.fields.pop("counts", None)
        rep.fields.pop("new_uids", None)
        st = _one(one, rep)
        new_uids.extend(rep.fields.get("new_uids") or [])
        per.append({"device": d, "status": st, "counts": rep.fields.get("counts")})
        report_chain()
        if st != EXIT_OK:
            if not last:
                warn(PROG, f"the chain stopped at {d} (exit {st}): the archives after it were not restored; "
                           f"once the cause is fixed run the same command again (what is restored "
                           f"already is recognised)")
            elif sig and getattr(one, "restored", None) == EXIT_OK:
                journal.end_run(sig)        # complete (exit 1 for what its backup could not read)
            return st
    if sig:
        journal.end_run(sig)
    return status


def merged_lines(merged: list, most: int = 10) -> list[str]:
    """A note for each folder restored into another folder of its name (another
    UIDVALIDITY: made again since the backup, or by a delivery into an emptied store
    while the restore ran): its messages are all there, but with new UIDs, so clients
    that cached the archived folder fetch it again.  Not an error (a merge into the
    live folder is what was asked), but never silent: a disaster restore that wanted the
    archived UIDs learns why it did not get them.  At most ``most`` lines, then a count."""
    out = [f"note: {mailbox}: its {n} archived message{'s were' if n != 1 else ' was'} added with new UIDs: "
           f"the folder there has UIDVALIDITY {have}, the archived one {want} (made again since the "
           f"backup, or by a delivery while the store was empty: hold deliveries during a restore, "
           f"docs/dovecot.md); clients that cached the archived folder fetch its mail again"
           for mailbox, n, have, want in merged[:most]]
    if len(merged) > most:
        out.append(f"note: {len(merged) - most} more folders were restored so, with new UIDs (--report names "
                   f"each)")
    return out


def acl_note(acl_users: dict) -> str:
    """The one line after a restore that gave folders their archived access control
    lists (or removed one): Dovecot lists a folder shared with others from its
    acl_shared_dict, which a restore does not write (docs/dovecot.md, "Access control
    lists"); the command that rebuilds it for these users."""
    import shlex
    users = sorted(acl_users)
    given = sum(g for g, _r in acl_users.values())
    removed = sum(r for _g, r in acl_users.values())
    if len(users) == 1:
        cmd = f"doveadm acl recalc -u {shlex.quote(users[0])}"
    elif len(users) <= 20:
        cmd = f"for u in {' '.join(shlex.quote(u) for u in users)}; do doveadm acl recalc -u \"$u\"; done"
    else:
        cmd = "doveadm acl recalc -A"
    what = " and ".join(x for x in (
        f"gave {given} folder{'s' if given != 1 else ''} the access control list archived with it" if given else "",
        f"removed the access control list of {removed} folder{'s' if removed != 1 else ''} that had "
        f"none at the backup" if removed else "") if x)
    return (f"note: this restore {what} ({len(users)} user{'s' if len(users) != 1 else ''}); Dovecot finds "
            f"the folders shared with a user through its acl_shared_dict, which a lost store may have taken "
            f"with it and no restore writes: with Dovecot running, run {cmd}")


def _journal(inst) -> Journal:
    return Journal(os.path.join(inst.config.home, "data", "restore-journal.db"))


def _run_signature(args, headers: list) -> str:
    """What makes a -n or -i command the same command run again: its archives, paths, map
    and those two options."""
    import hashlib
    import json
    what = [[h.get("archive_id") for h in headers], sorted(args.paths),
            sorted((read_map(args.mapfile) if args.mapfile else {}).items())]
    if args.ignore:
        what.append(["-i", bool(args.new)])     # (-n alone keeps the signature it had)
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()


def _one(args, rep) -> int:
    inst = open_installation(create=not (args.toc or args.header))
    # a group path selects by the group the archive recorded, not by backup-groups.conf now
    # (which may not define it: a fresh installation): asm.restore.selection.Selection
    paths = [parse(p, inst.groups, members=False) for p in args.paths]
    if not (args.toc or args.header):
        for lp in paths:
            not_a_user_too(lp, inst.store)     # a group here named like a user here: refused
    # (a new name the store cannot keep is a bad map file: refused before anything is written)
    user_map = read_map(args.mapfile, inst.store.check_new_user if not (args.toc or args.header) else
                        check_user_name) if args.mapfile else {}
    if getattr(args, "map_used", None) is None:
        args.map_used = set()           # one archive: its own (a chain shares one, see _chain)
    refdoc = read_reffile(args.reffile) if args.reffile else None
    if args.device == "-" and sys.stdin.isatty():
        raise UsageError("refusing to read an archive from a terminal: pipe one in or name a file with -f")
    if not (args.toc or args.header):
        from asm.report import chain_base, labels_of
        rep.labels = labels_of(paths)
        rep.begin(inst.config, selection=[str(p) for p in paths] or ["/"], device=args.device)
    device = open_device(args.device, "rb", args.bf, inst.config)
    try:
        device = wrap_read(device, identity_loader(inst.config, args.identity), 512 * args.bf)
    except OSError as exc:             # the layers' own errors too (asm.layers.errors)
        return die(PROG, f"cannot read {args.device}: {exc.strerror or exc}", device_status(exc))

    progress = Progress()
    with device:
        try:
            reader = ArchiveReader(device.file, args.bf)
        except ArchiveError as exc:
            return die(PROG, f"{args.device}: {exc}", exc.status)
        except OSError as exc:
            return die(PROG, f"cannot read {args.device}: {exc.strerror or exc}", device_status(exc))
        if args.header:
            if getattr(device, "layers", None):
                print(f"layers: {' '.join(device.layers)}")
            _print_header(reader.header)
            return EXIT_OK
        # (-t too: it lists what the restore with the same paths takes, and a short path
        # /P/NAME naming a user of this store is that user alone there)
        sel = Selection(paths, inst.groups, is_user=functools.partial(_user_here, inst.store) if args.toc
                        else functools.partial(user_on, inst.store))
        if args.toc:
            try:
                return _toc(reader, sel, args.verbose, device.file if getattr(device, "layers", None) else None)
            except _OutputFailed as exc:
                raise exc.error from None
            except OSError as exc:
                return die(PROG, f"cannot read {args.device}: {exc.strerror or exc}", device_status(exc))
        if user_map and refdoc is None and not getattr(args, "chain_ids", ()):
            # (a chain looks at its last archive: _chain)
            _check_map(args, inst, paths, user_map, reader, bool(getattr(device, "layers", None)))

        def report(line):
            if args.verbose:
                progress.clear()
                print(f"{PROG}: {line}", file=sys.stderr)

        def show(res):
            progress.update(f"{PROG}: {res.folders} folders, {res.messages + res.links + res.duplicates} "
                            f"messages, {human(res.bytes)}")

        for part in inst.store.partitions():
            # an unmounted disk is said as such before anything is written (a folder of
            # it would otherwise read as damaged, or be made on the empty mount point)
            inst.store.check_partition(part, writing=True)
        try:
            sig = None
            if refdoc is not None:
                res = complete_references(inst.store, reader, refdoc, report=report, journal=_journal(inst))
            else:
                journal = _journal(inst)
                token = getattr(args, "run_token", None)
                if token is None and (args.new or args.ignore):     # one archive (a chain has its own)
                    sig = _run_signature(args, [reader.header])
                    token = journal.begin_run(sig)
                opts = RestoreOptions(
                    ignore_duplicates=args.ignore, new_mailbox=args.new, continue_on_error=args.cont != "n",
                    ask=_asker(progress) if args.cont is None and args.device != "-" and sys.stdin.isatty()
                    else None,
                    user_map=user_map, map_used=args.map_used, keep_held=args.hold,
                    map_targets=getattr(args, "map_targets", None) if getattr(args, "map_targets", None)
                    is not None else {},
                    reffile=args.refout or default_reffile(inst.config.home, reader.header),
                    spool_dir=os.path.join(inst.config.home, "data", "spool"), verbose=args.verbose,
                    spool_limit=inst.config.get_int("restore.spoolmax") << 20,
                    run_token=token or "", chain_ids=getattr(args, "chain_ids", ()),
                    # (the chain's one dict even while it is empty: not ``or {}``)
                    claims=getattr(args, "claims", None) if getattr(args, "claims", None) is not None else {},
                    final=getattr(args, "final", None), final_unread=getattr(args, "final_unread", ()),
                    final_unseen=getattr(args, "final_unseen", None),
                    final_created=getattr(args, "final_created", None), recovery=getattr(args, "recovery", False))
                res = Restorer(inst.store, inst.groups, reader, opts, sel, journal, device=args.device,
                               report=report, progress=show if progress.enabled else None).restore()
        except KeyboardInterrupt:
            progress.clear()
            return die(PROG, "interrupted: what was restored so far is complete message by message; "
                       "run the same command again to finish (no duplicates; deliveries to the users "
                       "being restored stay held until it completes)", EXIT_INTERRUPTED)
        except OSError as exc:         # the device (a store failure is a StoreError, with its status)
            progress.clear()
            why = f"cannot read {args.device}: {exc.strerror or exc}"
            if isinstance(exc, LayerDamaged):
                why += (": what the archive held before the damage was restored, message by message; the same "
                        "command with an intact copy of the archive (imsverify -f COPY checks one) restores the "
                        "rest, without duplicates")
            return die(PROG, why, device_status(exc))
    progress.clear()
    unmatched = getattr(args, "chain_unmatched", None)
    if unmatched is not None:
        # a chain in one command: a path need only match in one of its archives (a folder
        # made after the full, or gone by the end, which is then not restored); the last
        # archive is the one without the chain's end to restore up to
        if args.final is None:
            res.unmatched = [p for p in res.unmatched if p in unmatched[0]]
        else:
            got = set(res.unmatched)
            unmatched[0] = got if unmatched[0] is None else unmatched[0] & got
            res.unmatched = []
    rep.update(counts={"users": res.users, "folders": res.folders, "messages": res.messages, "links": res.links,
                       "bytes": res.bytes, "duplicates": res.duplicates, "renumbered": res.renumbered,
                       "expunged": res.expunged},
               errors=res.errors, archive_id=reader.header.get("archive_id"),
               digest=(reader.trailer or {}).get("digest"),
               chain_base=chain_base(reader.header.get("since"), reader.header.get("base")),
               hostile=res.hostile, corrupt=res.corrupt, incomplete=res.incomplete,
               unmatched=list(res.unmatched), pending=len(res.pending),
               unread=[mailbox for mailbox, _why in res.unread],
               new_uids=[{"mailbox": mb, "messages": n, "uidvalidity": have, "archived_uidvalidity": want}
                         for mb, n, have, want in res.merged],
               restore_seconds=round(res.seconds, 3))
    for e in res.errors:
        if e.get("status") != EXIT_NOSPACE:        # a full disk is said once, below
            warn(PROG, f"{e['mailbox']}: {e['error']}")
    for mailbox, line in res.kept:
        warn(PROG, f"{mailbox}: {line}")
    for mailbox, why in res.unread:
        if mailbox not in res.unmatched:           # (said with the path, below)
            warn(PROG, unread_line(mailbox, why))
    for line in merged_lines(res.merged):
        warn(PROG, line)
    if args.verbose or sys.stderr.isatty():
        print(f"{PROG}: {res.users} users, {res.folders} folders, {res.messages} messages, {res.links} links, "
              f"{res.duplicates} already there, {res.renumbered} with new UIDs, {res.expunged} expunged, "
              + (f"{len(res.removed)} folders removed, " if res.removed else "")
              + (f"{res.skipped} folders held this archive already, " if res.skipped else "") +
              f"{human(res.bytes)} in {res.seconds:.1f}s", file=sys.stderr)
    if res.pending:
        warn(PROG, f"{len(res.pending)} linked messages need their first copy from this archive: run "
             f"imsrestore -f {args.device} -r {args.refout or default_reffile(inst.config.home, reader.header)}")
    for p in res.unmatched:
        warn(PROG, _unmatched(p, res.near_misses.get(p), res.left_out.get(p), dict(res.unread).get(p),
                              res.user_paths.get(p)))
    if res.store_full:
        n = len(res.held)
        warn(PROG, res.store_full + (f" (deliveries to {n} user{'s' if n > 1 else ''} stay held until it "
                                     f"completes)" if n else ""))
    if res.hostile:
        warn(PROG, f"{res.hostile} hostile members were refused; nothing was written outside the store")
    if res.incomplete:
        warn(PROG, res.incomplete)
    if res.stopped and res.store_full is None:
        # -c n (or the answer n): the run ended at its first error, the rest was not read
        warn(PROG, (f"{res.corrupt} damaged members were named above and not restored; " if res.corrupt else "")
             + "the restore stopped at the error above, as asked (-c n): the rest of the archive was not "
             "restored; run the same command with -c y to restore the rest (what is restored already is "
             "recognised)" + (", and restore the damaged members from another copy" if res.corrupt else ""))
    elif res.corrupt:
        warn(PROG, f"{res.corrupt} damaged members were named above and not restored; the rest was "
             "restored: restore those from another copy")
    if res.out_of_order:
        warn(PROG, f"{len(res.out_of_order)} folders were left as they were: this archive does not "
             f"follow the one restored last into them, or lists mail no archive given holds under its "
             f"UIDs (see above: each line says what to do)")
    acl_users = getattr(args, "acl_users", None)
    if acl_users is None:
        acl_users = {}
    for user, (given, removed) in res.acls.items():
        got = acl_users.setdefault(user, [0, 0])
        got[0] += given
        got[1] += removed
    if acl_users and getattr(args, "map_last", True):
        warn(PROG, acl_note(acl_users))
    status = res.status()
    args.restored = res.restored_status()   # (1 for a mailbox the backup could not read alone:
    if sig and args.restored == EXIT_OK:    # run again, it would do nothing more)
        journal.end_run(sig)                # complete: the same command again begins anew
    if user_map and refdoc is None and getattr(args, "map_last", True):
        unused = [k for k in user_map if k not in args.map_used]
        for k in unused:
            # a typo (Dovecot lowercases logins), or a user the archive does not hold: their
            # mail, if any, was restored under its own name
            warn(PROG, f"map line {k}={user_map[k]}: no user {k!r} in the archive"
                       + ("s" if getattr(args, "chain_unmatched", None) is not None else "")
                       + f": nothing was restored to {user_map[k]!r} (names are matched exactly)")
        if unused and status == EXIT_OK:
            status = EXIT_PARTIAL
    gone = getattr(args, "chain_gone", None)
    if gone is not None:
        gone.extend(mb for mb in res.gone_asked if mb not in gone)
        if args.final is None and gone:
            # a path named a folder the chain's end does not have: none of it was restored
            for mailbox in gone:
                warn(PROG, f"{mailbox}: not restored: the chain's last archive does not hold this folder "
                           f"(deleted or renamed away before its backup); to get it as an earlier archive "
                           f"holds it, restore from that archive alone (imsrestore -n -f ARCHIVE {mailbox})")
            if status == EXIT_OK:
                status = EXIT_PARTIAL
    return status


if __name__ == "__main__":
    sys.exit(main())
