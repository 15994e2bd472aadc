"""The run object handed to plugins around each backup or restore (see hookspecs)."""
from __future__ import annotations

import time


class Run:
    """(A plain class, not a dataclass: every backup and restore builds this module's
    classes at start, and a dataclass execs its generated methods then.)"""

    def __init__(self, kind: str, device: str, paths: list | None = None, options: dict | None = None,
                 started: float | None = None, counts: dict | None = None, errors: list | None = None):
        self.kind = kind                                # "backup" or "restore"
        self.device = device                            # the -f argument
        self.paths = [] if paths is None else paths     # logical paths asked for (strings)
        self.options = {} if options is None else options   # since, ignore_links, ... as given
        self.started = time.time() if started is None else started
        self.counts = {} if counts is None else counts  # filled in as the run goes
        self.errors = [] if errors is None else errors  # (mailbox, message) pairs
