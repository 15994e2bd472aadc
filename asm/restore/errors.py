"""The errors of a restore: those a user sees (with their exit status) and two that
only steer the engine."""
from __future__ import annotations

from asm.errors import EXIT_ORDER, EXIT_USAGE, ImsError


class RestoreError(ImsError):
    """A restore that cannot start (bad map file, bad reference file)."""

    status = EXIT_USAGE


class ChainOrderError(RestoreError):
    """Archives of an incremental chain applied out of order."""

    status = EXIT_ORDER


class StopRestore(Exception):
    """-c n: stop at the first error."""


class ArchiveReadFailed(Exception):
    """Reading the archive failed while a message was being stored (carries the OSError,
    so a device failure is never reported as a store failure)."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error
