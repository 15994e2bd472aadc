"""What a restore is asked to do (:class:`RestoreOptions`) and what it did
(:class:`RestoreResult`)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RestoreOptions:
    ignore_duplicates: bool = False     # -i: no duplicate check (classic behaviour)
    new_mailbox: bool = False           # -n: restore beside an existing folder
    continue_on_error: bool = True      # -c y|n
    ask: object = None                  # ask(message) -> bool: the classic prompt on a terminal
    user_map: dict = field(default_factory=dict)   # -m: old -> new
    reffile: str | None = None          # where unresolved links are written
    spool_limit: int = 1 << 30          # bytes of first copies kept from a stream
    verbose: bool = False
    new_suffix: str = ""                # -n suffix (default: -YYYYMMDD)
    keep_held: bool = False             # leave deliveries held at the end (more of a chain follows)
    spool_dir: str = ""                 # where first copies from a stream are kept


@dataclass
class RestoreResult:
    users: int = 0
    folders: int = 0
    messages: int = 0        # restored with their bytes
    links: int = 0           # restored as hard links (single copy)
    duplicates: int = 0      # already there, skipped
    renumbered: int = 0      # given new UIDs
    expunged: int = 0        # chain: removed because the later archive no longer had them
    bytes: int = 0
    errors: list = field(default_factory=list)       # {"mailbox", "error"}
    pending: list = field(default_factory=list)      # reference-file entries
    incomplete: str | None = None                    # why the archive ended early
    hostile: int = 0
    store_full: str | None = None                    # the store filled up: the run stopped
    unmatched: list = field(default_factory=list)    # selection paths that matched nothing
    near_misses: dict = field(default_factory=dict)  # unmatched path -> folders differing in case
    out_of_order: list = field(default_factory=list)  # folders refused: chain applied out of order
    seconds: float = 0.0
