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
    imported: list[int] = []                  # the UIDs this run appended
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
                with store.lock(args.u, args.d), _all_or_none(store, args.u, args.d, imported):
                    for msg in itertools.chain([first] if first else [], messages):
                        with msg.file:
                            info = store.append(args.u, args.d, msg.file, flags=msg.flags,
                                                internaldate=msg.internaldate)
                        imported.append(info.uid)
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
            raise ImsError(f"{exc} ({_undo(store, args.u, args.d, imported)})", status=exc.status) from None
    except BaseException:
        commit.undo()
        raise
    commit.done()
    if args.v:
        print(f"{PROG}: imported {n} messages into user/{args.u}/{args.d}", file=sys.stderr)
    return EXIT_PARTIAL if named else EXIT_OK


@contextlib.contextmanager
def _all_or_none(store, user: str, folder: str, imported: list[int]):
    """Under the folder's lock: stopped by a signal (SIGTERM, Ctrl-C), the import takes
    back the messages it put in (``imported``; held: not cut half way), so the same
    command run again imports the mbox once.  (It exited 130 with the first messages
    imported, and the run again imported them a second time.)  A store failure is
    undone by :func:`_undo`, once the store has rolled back what it does."""
    try:
        yield
    except KeyboardInterrupt:
        if imported:
            with interrupts_deferred():
                left = set(imported) & {m.uid for m in store.messages(user, folder)}
                if left:
                    store.expunge(user, folder, sorted(left))
        raise


def _undo(store, user: str, folder: str, imported: list[int]) -> str:
    """An import that failed part way (its disk full) is undone, so that the same command
    run again, as the error says, imports the mbox once: the messages it appended that are
    still in the folder are expunged.  A store whose index rolled back with the failure
    (classic) has none left; a Maildir kept each one, and the rerun imported them twice.
    What to say of them."""
    if not imported:
        return "nothing was imported"          # (the store is not asked: its lock may be the failure)
    try:
        left = sorted(set(imported) & {m.uid for m in store.messages(user, folder)})
        if left:
            store.expunge(user, folder, left)
    except (StoreError, OSError) as exc:
        return (f"{len(imported)} messages were imported before it, and could not be removed ({exc}): "
                f"expunge them from user/{user}/{folder} before running it again")
    return f"nothing was imported: the {len(imported)} messages imported before it were removed"


if __name__ == "__main__":
    sys.exit(main())
