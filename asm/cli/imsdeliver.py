"""imsdeliver: deliver one message (stdin or a file) to several users as a single copy,
as a mail server does for a message with several recipients.  Users whose deliveries
are held (a restore is running) get it queued and stored when the hold is released."""
from __future__ import annotations

import shlex
import sys

from asm.cli.common import ArgParser, UsageError, failure_text, run_command, tell, warn
from asm.cli.context import open_installation
from asm.errors import EXIT_INTERNAL, EXIT_OK, ImsError, status_of
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
            raise UsageError(f"no user {u!r}: nothing delivered; check the name (mboxutil -l lists the users' mailboxes)")
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
    try:
        with src, store.batch():              # delivered means on disk when we say so
            if len(targets) > 1:              # two folders: read the message once, store it twice
                import shutil
                import tempfile
                spool = tempfile.TemporaryFile()
                shutil.copyfileobj(src, spool, 1 << 20)
                src = spool
            for folder, group in targets.items():
                if len(targets) > 1:
                    src.seek(0)
                try:
                    out.update(store.deliver(group, src, folder))
                except BaseException as exc:
                    out.update(getattr(exc, "delivered", None) or {})
                    raise
    except BaseException as exc:
        partly = _partly(exc, users, out)
        if partly is None:
            raise
        raise partly from exc
    if args.verbose:                          # (a successful run is silent: docs/operations.md)
        for user, info in ((u, out[u]) for u in users):   # delivered: a reader gone is no failure now
            tell(f"{user}: {'queued (deliveries held)' if info is None else f'UID {info.uid}'}")
    return EXIT_OK


def _partly(exc: BaseException, users: list[str], out: dict) -> ImsError | None:
    """A failure (a full disk, a signal, a store error) after some recipients got the
    message: the same line and status, naming who has it and who must get it again.
    (It said only "no space left", exit 13, and the mail server's retry to every
    recipient gave the first ones the message twice.)"""
    got = [u for u in users if u in out]
    if not got or status_of(exc) == EXIT_INTERNAL:
        return None
    rest = [u for u in users if u not in out]
    what = failure_text(exc).replace(" and run the same command again", "")   # (not the same: the rest)
    again = (f"deliver it again to {' '.join(shlex.quote(u) for u in rest)} only" if rest
             else "do not deliver it again")
    return ImsError(f"{what}; delivered already to {' '.join(shlex.quote(u) for u in got)} (they keep it): "
                    f"{again}", status=status_of(exc))


if __name__ == "__main__":
    sys.exit(main())
