"""imsdeliver: deliver one message (stdin or a file) to several users as a single copy,
as a mail server does for a message with several recipients.  Users whose deliveries
are held (a restore is running) get it queued and stored when the hold is released."""
from __future__ import annotations

import sys

from asm.cli.common import ArgParser, UsageError, run_command
from asm.cli.context import open_installation
from asm.errors import EXIT_OK

PROG = "imsdeliver"


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _main(argv: list[str] | None) -> int:
    p = ArgParser(prog=PROG, description="Deliver a message to users as one stored copy.")
    p.add_argument("users", nargs="+", help="recipient user IDs")
    p.add_argument("-m", metavar="FILE", default="-", help="message file (default stdin)")
    p.add_argument("-d", metavar="FOLDER", default="INBOX", help="folder (default INBOX)")
    args = p.parse_args(argv)
    store = open_installation().store
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
    with src:
        out = store.deliver(users, src, args.d)
    for user, info in out.items():
        print(f"{user}: {'queued (deliveries held)' if info is None else f'UID {info.uid}'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
