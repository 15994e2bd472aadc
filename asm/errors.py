"""Every exit status of every ims-asm command, and the base of every error a user can cause.

One module, so a status means the same thing whichever command returns it and
docs/operations.md can list them all (tests/test_docs.py checks that it does, and
nothing else; tests/test_errors.py that no other module defines or returns a status).  Library code raises :class:`ImsError` subclasses; it never imports
the command line.  Each subclass carries its exit status; its message is one line
that names what is wrong and says what to do.  :func:`asm.cli.common.run_command`
turns them into that line on stderr and the status.
"""
from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_PARTIAL = 1        # finished, but named mailboxes/messages failed (a backup's trailer lists them)
EXIT_USAGE = 2          # bad options, configuration or paths: nothing was done
EXIT_DEVICE = 3         # the device could not be opened, read or written
EXIT_INCOMPLETE = 4     # the archive is truncated or corrupt; what came before was restored
EXIT_HOSTILE = 5        # the archive holds members that would write outside the store
EXIT_LOCKED = 6         # a lock is held by another run
EXIT_ORDER = 7          # incremental archives applied in the wrong order
EXIT_NOT_ARCHIVE = 8    # the input is not an ims-asm archive (imsasm: not a save stream)
EXIT_SPACE = 9          # (imsstage) the staging filesystem cannot hold the run
EXIT_CONNECT = 10       # remote device: no connection (refused, unknown host)
EXIT_HOSTKEY = 11       # remote device: host key unknown, changed or revoked
EXIT_AUTH = 12          # remote device: authentication failed
EXIT_NOSPACE = 13       # the device (local or remote), the store's disk, or stdout's is full
EXIT_LINKLOST = 14      # remote device: the connection dropped mid-transfer
EXIT_MISSING = 15       # (imsstage, imsnbu, notify scripts, imsdr) files or fresh dumps needed are not there
EXIT_DEADLINE = 16      # (imsstage, bpstart_notify) the run did not finish before --deadline
EXIT_STORE = 17         # the store cannot be read or written (read-only, damaged, a name the filesystem refuses)
EXIT_EMPTY = 18         # a backup (or imsverify --against-store) found no user in a store that should have some
EXIT_DIFFERS = 19       # (imsverify) the archive is intact but a test restore or the live store differs from it
EXIT_INTERNAL = 70      # a bug in ims-asm: one line on stderr, the details in a crash file
EXIT_INTERRUPTED = 130  # Ctrl-C, SIGTERM from an engine cancelling the job, or SIGHUP (not under nohup)
EXIT_PIPE = 141         # stdout was closed by its reader (e.g. `| head`): the output was cut


#: When several failures meet in one run, its status is the first of these present
#: (docs/operations.md, "Exit statuses"): a full store stopped the run; hostile, then
#: damaged input; a store that could not be written; a lock held; a chain out of order;
#: a name or path refused; any other named failure.  Not ranked by number: 7 is not
#: worse than 5.
SEVERITY = (EXIT_NOSPACE, EXIT_HOSTILE, EXIT_INCOMPLETE, EXIT_STORE, EXIT_LOCKED, EXIT_ORDER, EXIT_USAGE,
            EXIT_PARTIAL)


def worst(*statuses: int) -> int:
    """The status a run exits with when ``statuses`` all happened in it (:data:`SEVERITY`;
    one not listed there ranks after them, the higher first; EXIT_OK only when all are)."""
    present = set(statuses) - {EXIT_OK}
    for s in SEVERITY:
        if s in present:
            return s
    return max(present, default=EXIT_OK)


class ImsError(Exception):
    """An error a user can cause (or must know about): one line, one exit status.

    Subclasses set ``status``; an instance may override it (``ImsError(msg, status=..)``).
    """

    status = EXIT_USAGE

    def __init__(self, message: str = "", status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class UsageError(ImsError):
    """Bad command-line input; nothing was done."""

    status = EXIT_USAGE


def device_status(exc: BaseException) -> int:
    """The exit status of a failed device operation: the error's own (a plugin's remote
    errors carry 10-14), a full disk's, or EXIT_DEVICE."""
    if isinstance(exc, ImsError):
        return exc.status
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return EXIT_NOSPACE
    return EXIT_DEVICE


def status_of(exc: BaseException) -> int:
    """The exit status an exception stands for when it reaches a command's top level."""
    if isinstance(exc, ImsError):
        return exc.status
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return EXIT_NOSPACE
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_INTERNAL
