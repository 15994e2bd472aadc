"""reconstruct: rebuild a store's records (mailbox list, folder indexes, dovecot-uidlist)
from its message files, keeping UIDVALIDITY and UIDs wherever a witness still knows them.

    reconstruct [-n] [-v] [-a ARCHIVE ...] [--identity FILE] [--no-journal] -m
    reconstruct [-n] [-v] [-a ARCHIVE ...] [--identity FILE] [--no-journal]
                [--dovecot-config FILE | --no-resync] [-m] [-r] path ...

It repairs unless ``-n`` is given, as the classic tool did: administrators run it after
a restore precisely to repair, and every repair keeps what any witness knows (no
message file is ever removed or renamed away, no known UID or UIDVALIDITY changed,
UIDNEXT never lowered).  ``-n`` reports the same findings and changes nothing.

Archives are read through their layers (zstd, age) as imsrestore reads them.  A witness
that is damaged, hostile or (in a directory given to ``-a``) cannot be read is named;
the repair goes on from what could be read, and the run exits 4 (5: hostile members),
as imsrestore does on the same archive, never 0.

On an sdbox/mdbox store Dovecot's index files are the records: Dovecot checks them
(asm/reconstruct/dbox.py).
"""
from __future__ import annotations

import os
import sys

from asm.cli.common import ArgParser, Progress, UsageError, run_command, warn
from asm.config import Config
from asm.errors import EXIT_OK, EXIT_PARTIAL, EXIT_STORE, ImsError
from asm.groups import Groups
from asm.layers.options import identity_loader
from asm.logical import parse
from asm.reconstruct import NOTE, REPAIRED, UNKNOWN, Report
from asm.reconstruct.knowledge import Knowledge, KnowledgeError, archive_created
from asm.store.base import StoreError

PROG = "reconstruct"


def build_parser() -> ArgParser:
    p = ArgParser(prog=PROG, description="Rebuild the mailbox list and folder indexes from the message files.")
    p.add_argument("-m", dest="mboxlist", action="store_true",
                   help="rebuild the mailbox list from the partitions (classic store)")
    p.add_argument("-r", dest="recursive", action="store_true",
                   help="every folder under the paths (a user: all of its folders; /: the whole store)")
    p.add_argument("-n", dest="check", action="store_true", help="check and report only; change nothing")
    p.add_argument("-a", "--archive", dest="archives", action="append", default=[], metavar="ARCHIVE",
                   help="an archive (or a directory of archives) that knows UIDs, flags and UIDVALIDITY; give "
                        "a chain oldest first")
    p.add_argument("--identity", action="append", default=[], metavar="FILE",
                   help="age identity file for encrypted archives (repeatable; default: "
                        "store.encrypt.identities)")
    p.add_argument("--no-journal", dest="journal", action="store_false",
                   help="do not ask the restore journal ($IMS_HOME/data/restore-journal.db)")
    p.add_argument("--dovecot-config", metavar="FILE",
                   help="dovecot.conf for doveadm (default: dovecot.config, else /etc/dovecot/dovecot.conf)")
    p.add_argument("--no-resync", dest="resync", action="store_false",
                   help="maildir: do not run doveadm force-resync after the repairs (sdbox/mdbox: before "
                        "opening each mailbox)")
    p.add_argument("-v", dest="verbose", action="store_true", help="also print notes and a summary")
    p.add_argument("paths", nargs="*", metavar="path",
                   help="/partition/user[/folder] (with -r also /, /partition, /partition/group)")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _archives(paths: list[str], k: Knowledge, identities) -> list[str]:
    """The archive files of ``paths`` (a directory's by the time they were taken).  A
    file of a directory that is no archive is passed over; one that may be but cannot
    be read (encrypted, and no identity opens it; damaged) is named in ``k``'s
    problems.  A file named itself must be an archive (KnowledgeError, later)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for n in sorted(os.listdir(p)):
                f = os.path.join(p, n)
                if n.startswith(".") or not os.path.isfile(f):
                    continue
                try:
                    created = archive_created(f, identities)
                except KnowledgeError as exc:
                    k.problem(f"{exc}; not used as a witness", exc.status)
                    continue
                if created is not None:
                    found.append((created, f))
            out.extend(f for _, f in sorted(found))
        elif not os.path.exists(p):
            raise UsageError(f"archive {p!r} does not exist")
        else:
            out.append(p)
    return out


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if not args.mboxlist and not args.paths:
        raise UsageError("say what to reconstruct: -m (the mailbox list) and/or paths such as /primary/joe "
                         "or, with -r, / for the whole store")
    cfg = Config()
    cfg.require()
    groups = Groups.load(cfg.groups_path)
    paths = [parse(p, groups) for p in args.paths]
    for lp in paths:
        if lp.user is None and not args.recursive:
            raise UsageError(f"{lp} names more than one user: add -r to reconstruct every folder under it, "
                             f"or name a user (/partition/user[/folder])")
    repair = not args.check

    progress = Progress()

    def show(f) -> None:
        if f.kind != NOTE or args.verbose:
            progress.clear()
            warn(PROG, f.line(repair))
    report = Report(repair=repair, listener=show)
    report.progress = lambda: progress.update(
        f"{PROG}: {report.folders} folders, {report.messages} messages checked, "
        f"{len([f for f in report.findings if f.kind != NOTE])} findings")

    with Knowledge() as k:
        if args.journal:
            k.add_journal(os.path.join(cfg.home, "data", "restore-journal.db"))
        identities = identity_loader(cfg, args.identity)
        for a in _archives(args.archives, k, identities):
            counts = k.add_archive(a, identities)
            if args.verbose:
                warn(PROG, f"{a}: {counts['folders']} folders, {counts['messages']} messages known")
        for problem in k.problems:
            warn(PROG, problem)
        for problem in k.notes:
            warn(PROG, f"warning: {problem}")
        if cfg.driver == "classic":
            _classic(cfg, groups, k, report, repair, args, paths)
        else:
            _maildir(cfg, groups, k, report, repair, args, paths)

    progress.clear()
    if args.verbose or sys.stderr.isatty():
        verb = "repaired" if repair else "found"
        print(f"{PROG}: {report.users} users, {report.folders} folders, {report.messages} messages checked; "
              f"{report.count('repaired')} problems {verb}, {report.count('unknown')} with unknowns, "
              f"{report.count('lost')} lost", file=sys.stderr)
    if k.status != EXIT_OK:
        return k.status            # a witness was damaged, unread or hostile: 4 or 5, as imsrestore says
    return EXIT_OK if report.clean else EXIT_PARTIAL


def _classic(cfg, groups, k, report, repair, args, paths) -> None:
    import sqlite3

    from asm.reconstruct.classic import ClassicReconstructor
    from asm.sqlitedb import disk_full
    from asm.store.base import StoreFull
    from asm.store.classic import mailbox_list_exists
    db = os.path.join(cfg.store_root, "mboxlist", "mailboxes.db")
    if not mailbox_list_exists(cfg.store_root) and not args.mboxlist:
        raise StoreError(f"the classic store's mailbox list {db} is missing: rebuild it first with reconstruct -m",
                         status=EXIT_STORE)
    rec = ClassicReconstructor(cfg, k, report, repair)
    said = len(report.findings)
    try:
        if args.mboxlist:
            rec.mailbox_list()
        targets = []
        for lp in paths:
            for t in rec.targets(lp, groups, args.recursive):
                if t not in targets:
                    targets.append(t)
        rec.commit_list()
    except BaseException as exc:
        if rec.list is not None:
            rec.list.repair = False          # nothing half-done: roll the list back
            rec.commit_list()
        undone = len([f for f in report.findings[said:] if f.kind in (REPAIRED, UNKNOWN)]) if repair else 0
        if isinstance(exc, sqlite3.Error) and ("full" in str(exc) or disk_full(exc, db)):
            raise _not_kept(StoreFull(f"the mailbox list {db}", str(exc)), undone) from None
        if isinstance(exc, ImsError):
            raise _not_kept(exc, undone) from None
        raise
    for t in targets:
        rec.folder(t)
        report.progress()
    if repair:
        rec.sync()


def _not_kept(exc: ImsError, undone: int) -> ImsError:
    """``exc``, saying that the mailbox list repairs printed above (``undone`` of them)
    were rolled back with it: the lines said "repaired" for a repair the failure undid."""
    if undone:
        what = f"the {undone} repairs of the mailbox list listed above were" if undone > 1 else \
            "the repair of the mailbox list listed above was"
        exc.args = (f"{exc}; {what} not kept",)
    return exc


def _maildir(cfg, groups, k, report, repair, args, paths) -> None:
    from asm.reconstruct.dovecot import Dovecot
    from asm.reconstruct.maildir import MaildirReconstructor
    if cfg.get("store.mail_location"):
        from asm.store.maildir.store import open_layout
        layout = open_layout(cfg, dbox=True)
        if not layout.location.is_maildir:
            # sdbox/mdbox: Dovecot's index files are the records; Dovecot checks them
            from asm.reconstruct.dbox import DboxReconstructor
            rec = DboxReconstructor(cfg, report, repair and args.resync, layout)
            if args.mboxlist:
                rec.mailbox_list()
            targets = []
            for lp in paths:
                targets += rec.targets(lp, groups, args.recursive)
            rec.check(targets)
            return
    dovecot = Dovecot.find(args.dovecot_config or cfg.get("dovecot.config"))
    try:
        rec = MaildirReconstructor(cfg, k, report, repair, dovecot)
        if args.mboxlist:
            rec.mailbox_list()
        targets = []
        for lp in paths:
            for t in rec.targets(lp, groups, args.recursive):
                if t not in targets:
                    targets.append(t)
        for t in targets:
            rec.folder(t)
            report.progress()
        if args.resync:
            rec.resync()
    finally:
        if dovecot is not None:
            dovecot.close()


if __name__ == "__main__":
    sys.exit(main())
