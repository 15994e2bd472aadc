"""imsdeliver: deliver one message (stdin or a file) to several users as a single copy,
as a mail server does for a message with several recipients.  Users whose deliveries
are held (a restore is running) get it queued and stored when the hold is released."""
from __future__ import annotations

import sys

from asm.cli.common import ArgParser, UsageError, run_command, tell, warn
from asm.cli.context import open_installation
from asm.errors import EXIT_OK
from asm.store.base import EmptyMessage, nonempty_message

PROG = "imsdeliver"


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _main(argv: list[str] | None) -> int:
    p = ArgParser(prog=PROG, description="Deliver a message to users as one stored copy.")
    p.add_argument("users", nargs="+", help="recipient user IDs")
    p.add_argument("-m", metavar="FILE", default="-", help="message file (default stdin)")
    p.add_argument("-d", metavar="FOLDER", default="INBOX", help="folder (default INBOX)")
    p.add_argument("-v", dest="verbose", action="store_true",
                   help="print 'USER: UID N' (or 'USER: queued (deliveries held)') for each recipient")
    args = p.parse_args(argv)
    store = open_installation(groups=False).store
    users = list(dict.fromkeys(args.users))   # a recipient named twice gets one copy
    for u in users:
        if not store.exists(u):
            raise UsageError(f"no user {u!r}")
    try:
        src = sys.stdin.buffer if args.m == "-" else open(args.m, "rb")
    except FileNotFoundError:
        raise UsageError(f"message file {args.m!r} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read message file {args.m!r}: {exc.strerror}") from None
    try:
        src = nonempty_message(src)          # (store.deliver refuses it too: before any line)
    except EmptyMessage:
        src.close()
        raise UsageError("no message on standard input: nothing delivered" if args.m == "-" else
                         f"message file {args.m!r} is empty (0 bytes): nothing delivered") from None
    # As Dovecot's LMTP/deliver (lda_mailbox_autocreate=no): a folder the user does not
    # have gets nothing made; the message goes to INBOX, so a mistyped -d neither loses
    # mail nor creates a folder (docs/configuration.md, "Which commands create what").
    # A user whose deliveries are held (a restore runs) gets it queued for the folder
    # asked: the restore may not have made it yet, and the release decides.
    targets: dict[str, list[str]] = {}
    for u in users:
        to = (args.d if args.d == "INBOX" or store.exists(u, args.d) or store.deliveries_held(u)
              else "INBOX")
        if to != args.d:
            warn(PROG, f"{u} has no folder {args.d!r}: delivered to INBOX (create the folder with "
                       f"'mboxutil -c user/{u}/{args.d}')")
        targets.setdefault(to, []).append(u)
    out = {}
    with src, store.batch():                  # delivered means on disk when we say so
        if len(targets) > 1:                  # two folders: read the message once, store it twice
            import shutil
            import tempfile
            spool = tempfile.TemporaryFile()
            shutil.copyfileobj(src, spool, 1 << 20)
            src = spool
        for folder, group in targets.items():
            if len(targets) > 1:
                src.seek(0)
            out.update(store.deliver(group, src, folder))
    if args.verbose:                          # (a successful run is silent: docs/operations.md)
        for user, info in ((u, out[u]) for u in users):   # delivered: a reader gone is no failure now
            tell(f"{user}: {'queued (deliveries held)' if info is None else f'UID {info.uid}'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
