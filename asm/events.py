"""The run object handed to plugins around each backup or restore (see hookspecs)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Run:
    kind: str                       # "backup" or "restore"
    device: str                     # the -f argument
    paths: list = field(default_factory=list)      # logical paths asked for (strings)
    options: dict = field(default_factory=dict)    # since, ignore_links, ... as given
    started: float = field(default_factory=time.time)
    counts: dict = field(default_factory=dict)     # filled in as the run goes
    errors: list = field(default_factory=list)     # (mailbox, message) pairs
