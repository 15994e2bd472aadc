"""imsdeliver: deliver one message (stdin or a file) to several users as a single copy,
as a mail server does for a message with several recipients.  Users whose deliveries
are held (a restore is running) get it queued and stored when the hold is released."""
from __future__ import annotations

import sys

from asm.cli.common import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, ArgParser, die, lossless_output
from asm.cli.context import open_installation
from asm.config import ConfigError
from asm.groups import GroupsError
from asm.store.base import StoreError

PROG = "imsdeliver"


def main(argv: list[str] | None = None) -> int:
    lossless_output()
    p = ArgParser(prog=PROG, description="Deliver a message to users as one stored copy.")
    p.add_argument("users", nargs="+", help="recipient user IDs")
    p.add_argument("-m", metavar="FILE", default="-", help="message file (default stdin)")
    p.add_argument("-d", metavar="FOLDER", default="INBOX", help="folder (default INBOX)")
    args = p.parse_args(argv)
    try:
        store = open_installation().store
        users = list(dict.fromkeys(args.users))   # a recipient named twice gets one copy
        for u in users:
            if not store.exists(u):
                return die(PROG, f"no user {u!r}", EXIT_USAGE)
        src = sys.stdin.buffer if args.m == "-" else open(args.m, "rb")
        with src:
            out = store.deliver(users, src, args.d)
    except FileNotFoundError:
        return die(PROG, f"message file {args.m!r} does not exist", EXIT_USAGE)
    except (ConfigError, GroupsError) as exc:
        return die(PROG, str(exc), getattr(exc, "status", EXIT_USAGE))
    except StoreError as exc:
        return die(PROG, str(exc), getattr(exc, "status", EXIT_PARTIAL))
    for user, info in out.items():
        print(f"{user}: {'queued (deliveries held)' if info is None else f'UID {info.uid}'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
