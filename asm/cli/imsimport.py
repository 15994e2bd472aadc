"""imsimport: import a Unix mbox file into a user's mailbox."""
from __future__ import annotations

import contextlib
import itertools
import sys

from asm.cli.common import ArgParser, Commit, UsageError, run_command, warn
from asm.cli.context import open_installation
from asm.errors import EXIT_OK, EXIT_PARTIAL, ImsError
from asm.interrupts import interrupts_deferred
from asm.mbox import NotAnMbox, read_mbox
from asm.restore.apply import date_not_kept
from asm.store.base import StoreError, check_folder_name

PROG = "imsimport"


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _main(argv: list[str] | None) -> int:
    p = ArgParser(prog=PROG, description="Import a Unix mbox file into a mailbox.")
    p.add_argument("-u", required=True, metavar="USER", help="user ID")
    p.add_argument("-s", required=True, metavar="MBOXFILE", help="mbox file to read ('-' for stdin)")
    p.add_argument("-d", metavar="MAILBOX", default="INBOX", help="destination folder (default INBOX)")
    p.add_argument("-v", action="store_true", help="say how many messages were imported")
    args = p.parse_args(argv)
    store = open_installation().store
    if not store.exists(args.u):
        raise UsageError(f"no user {args.u!r}: create it first with 'mboxutil -c user/{args.u}'")
    args.d = check_folder_name(args.d)
    try:
        src = sys.stdin.buffer if args.s == "-" else open(args.s, "rb")
    except FileNotFoundError:
        raise UsageError(f"mbox file {args.s!r} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read mbox file {args.s!r}: {exc.strerror}") from None
    n = 0
    named = 0                                 # imported with another INTERNALDATE than the mbox's
    commit = Commit()
    try:
        try:
            with src, store.batch():              # what was imported is on disk, however it ends
                # read the first message before touching the store, so a file that is not
                # an mbox is refused without leaving an empty folder behind
                messages = read_mbox(src)
                first = next(messages, None)
                if not store.exists(args.u, args.d):
                    store.create_folder(args.u, args.d, subscribed=True)
                with store.lock(args.u, args.d), _all_or_none(store, args.u, args.d):
                    for msg in itertools.chain([first] if first else [], messages):
                        with msg.file:
                            info = store.append(args.u, args.d, msg.file, flags=msg.flags,
                                                internaldate=msg.internaldate)
                        n += 1
                        # a date the store's file system cannot hold (a Maildir on ext4: its
                        # INTERNALDATE is the file's mtime): imported, and named, exit 1
                        why = date_not_kept(info.uid, msg.internaldate, info.internaldate, "imported",
                                            f"message {n} of the mbox (UID {info.uid})")
                        if why is not None:
                            named += 1
                            warn(PROG, f"user/{args.u}/{args.d}: {why}")
                    # every message is in: a signal from here waits (the batch made durable),
                    # then is ignored, the run having succeeded
                    commit.begin()
        except NotAnMbox as exc:
            raise UsageError(f"{'standard input' if args.s == '-' else args.s}: {exc}; nothing was imported "
                             f"and no folder made") from None
        except StoreError as exc:
            raise ImsError(f"{exc} (after {n} messages)", status=exc.status) from None
    except BaseException:
        commit.undo()
        raise
    commit.done()
    if args.v:
        print(f"{PROG}: imported {n} messages into user/{args.u}/{args.d}", file=sys.stderr)
    return EXIT_PARTIAL if named else EXIT_OK


@contextlib.contextmanager
def _all_or_none(store, user: str, folder: str):
    """Under the folder's lock: stopped by a signal (SIGTERM, Ctrl-C), the import takes
    back the messages it put in (held: not cut half way), so the same command run again
    imports the mbox once.  (It exited 130 with the first messages imported, and the
    run again imported them a second time.)"""
    start = store.folder(user, folder).uidnext
    try:
        yield
    except KeyboardInterrupt:
        with interrupts_deferred():
            store.expunge(user, folder, [m.uid for m in store.messages(user, folder) if m.uid >= start])
        raise


if __name__ == "__main__":
    sys.exit(main())
