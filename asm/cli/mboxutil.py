"""mboxutil: list, create and delete mailboxes by hand.

Mailbox names are written as the classic tool does: ``user/<uid>/<folder>``
(``user/joe/INBOX``, ``user/joe/Work/2023``); ``user/<uid>`` alone means the user.
"""
from __future__ import annotations

import fnmatch
import sys

from asm.cli.common import ArgParser, Commit, UsageError, run_command
from asm.cli.context import open_installation
from asm.errors import EXIT_OK
from asm.store.base import UserExists, check_folder_name

PROG = "mboxutil"


def split_mailbox(name: str) -> tuple[str, str | None]:
    """(user, folder or None for the user).  A name with an empty level is refused, never
    taken as its parent: ``-d "user/joe/$FOLDER"`` with FOLDER empty must not delete joe."""
    parts = name.split("/", 2)
    if len(parts) < 2 or parts[0] != "user" or not parts[1]:
        raise UsageError(f"bad mailbox name {name!r}: write user/<uid>[/<folder>], e.g. user/joe/INBOX")
    if len(parts) == 2:
        return parts[1], None
    if not parts[2]:
        raise UsageError(f"bad mailbox name {name!r}: no folder after the last '/': write user/{parts[1]} "
                         f"for the user, user/{parts[1]}/<folder> for a folder")
    return parts[1], check_folder_name(parts[2])


def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _main(argv: list[str] | None) -> int:
    p = ArgParser(prog=PROG, description="List, create and delete mailboxes.")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("-l", action="store_true", help="list mailboxes with message counts and sizes")
    mode.add_argument("-c", metavar="MAILBOX", help="create a mailbox (user/joe creates the user)")
    mode.add_argument("-d", metavar="MAILBOX", help="delete a mailbox (user/joe deletes the user)")
    p.add_argument("-p", metavar="PATTERN", help="with -l: only mailboxes matching this shell pattern; "
                   "with -c: the partition for a new user")
    args = p.parse_args(argv)
    store = open_installation(create=bool(args.c)).store
    if args.l:
        print(f"{'msgs':>8} {'bytes':>12} {'uidvalidity':>11} {'uidnext':>8}  mailbox")
        for part in store.partitions():
            for user in store.users(part):
                for f in store.folders(user):
                    name = f"user/{user}/{f.name}"
                    if args.p and not fnmatch.fnmatchcase(name, args.p):
                        continue
                    msgs = store.messages(user, f.name)
                    # the marker follows a tab, which no name holds (check_folder_name): a
                    # subscribed folder named "W  (unsubscribed)" is not an unsubscribed W
                    print(f"{len(msgs):>8} {sum(m.size for m in msgs):>12} {f.uidvalidity:>11} "
                          f"{f.uidnext:>8}  {name}{'' if f.subscribed else chr(9) + '(unsubscribed)'}")
        return EXIT_OK
    user, folder = split_mailbox(args.c if args.c is not None else args.d)
    if args.d is not None and args.p is not None:
        # (passed over, exit 0: the administrator meant something by it)
        raise UsageError(f"-p is not used with -d (it names the partition of a user -c makes, or the "
                         f"pattern of -l): leave it out to delete {args.d}")
    if args.c:
        if folder is None:
            try:
                store.create_user(user, args.p or "primary")
            except UserExists:
                # a creation cut short once the user was listed (its disk full: "run the
                # same command again", which then said "user already exists" of a user
                # without INBOX) is finished: its INBOX is made now
                if store.exists(user, "INBOX") or (args.p is not None and args.p != store.user_partition(user)):
                    raise
                store.create_folder(user, "INBOX", subscribed=True)
        else:
            if not store.exists(user):
                store.create_user(user, args.p or "primary")
            elif args.p is not None and args.p != store.user_partition(user):
                # a mistyped partition was passed over, exit 0, the folder made where joe is
                raise UsageError(f"user {user!r} is on partition {store.user_partition(user)!r}, not "
                                 f"{args.p!r}: -p names the partition of a new user; leave it out to make "
                                 f"a folder of {user!r}")
            store.create_folder(user, folder, subscribed=True)
    elif folder is None:
        # once the user is gone (its files with it: delete_user holds the signals), the run
        # succeeded: a signal that came meanwhile must not call it "interrupted"
        commit = Commit().begin()
        try:
            store.delete_user(user)
        except BaseException:
            commit.undo()
            raise
        commit.done()
    else:
        store.delete_folder(user, folder)
    return EXIT_OK

if __name__ == "__main__":
    sys.exit(main())
