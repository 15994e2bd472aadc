"""Exit statuses and exceptions of the staging commands (docs/staging.md lists them).

The first ones are the core's (asm.cli.common); staging adds its own from 9 up.
"""
from __future__ import annotations

from asm.cli.common import EXIT_LOCKED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE  # noqa: F401

EXIT_SPACE = 9          # the staging filesystem cannot hold the run: nothing was dumped
EXIT_MISSING = 15       # files needed (restore) or fresh dumps (check) are not there
EXIT_DEADLINE = 16      # the run did not finish before --deadline; unfinished dumps removed


class StagingError(Exception):
    """An error the user can fix; printed as one line with ``status`` as exit status."""

    status = EXIT_USAGE

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class LockHeld(StagingError):
    status = EXIT_LOCKED


class NoSpace(StagingError):
    status = EXIT_SPACE


class Missing(StagingError):
    status = EXIT_MISSING
