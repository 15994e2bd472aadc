"""imsimport: import a Unix mbox file into a user's mailbox."""
from __future__ import annotations

import itertools
import sys

from asm.cli.common import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, ArgParser, die, lossless_output
from asm.cli.context import open_installation
from asm.config import ConfigError
from asm.groups import GroupsError
from asm.mbox import read_mbox
from asm.store.base import StoreError, check_folder_name

PROG = "imsimport"


def main(argv: list[str] | None = None) -> int:
    lossless_output()
    p = ArgParser(prog=PROG, description="Import a Unix mbox file into a mailbox.")
    p.add_argument("-u", required=True, metavar="USER", help="user ID")
    p.add_argument("-s", required=True, metavar="MBOXFILE", help="mbox file to read ('-' for stdin)")
    p.add_argument("-d", metavar="MAILBOX", default="INBOX", help="destination folder (default INBOX)")
    p.add_argument("-v", action="store_true", help="say how many messages were imported")
    args = p.parse_args(argv)
    try:
        store = open_installation().store
        if not store.exists(args.u):
            return die(PROG, f"no user {args.u!r}: create it first with 'mboxutil -c user/{args.u}'", EXIT_USAGE)
        args.d = check_folder_name(args.d)
        src = sys.stdin.buffer if args.s == "-" else open(args.s, "rb")
    except FileNotFoundError:
        return die(PROG, f"mbox file {args.s!r} does not exist", EXIT_USAGE)
    except (ConfigError, GroupsError, StoreError) as exc:
        return die(PROG, str(exc), getattr(exc, "status", EXIT_USAGE))
    n = 0
    try:
        with src:
            # read the first message before touching the store, so a file that is not
            # an mbox is refused without leaving an empty folder behind
            messages = read_mbox(src)
            first = next(messages, None)
            if not store.exists(args.u, args.d):
                store.create_folder(args.u, args.d, subscribed=True)
            with store.lock(args.u, args.d):
                for msg in itertools.chain([first] if first else [], messages):
                    with msg.file:
                        store.append(args.u, args.d, msg.file, flags=msg.flags,
                                     internaldate=msg.internaldate)
                    n += 1
    except ValueError as exc:
        return die(PROG, f"{args.s}: {exc}", EXIT_USAGE)
    except StoreError as exc:
        return die(PROG, f"{exc} (after {n} messages)", EXIT_PARTIAL)
    if args.v:
        print(f"{PROG}: imported {n} messages into user/{args.u}/{args.d}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
