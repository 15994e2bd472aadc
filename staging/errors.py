"""The exceptions of the staging commands (docs/staging.md lists what each exit status
means).  Their statuses come from :mod:`asm.errors`, like every command's."""
from __future__ import annotations

from asm.errors import EXIT_LOCKED, EXIT_MISSING, EXIT_SPACE, EXIT_USAGE, ImsError


class StagingError(ImsError):
    """An error the user can fix; printed as one line with ``status`` as exit status."""

    status = EXIT_USAGE


class LockHeld(StagingError):
    status = EXIT_LOCKED


class NoSpace(StagingError):
    status = EXIT_SPACE


class Missing(StagingError):
    status = EXIT_MISSING
