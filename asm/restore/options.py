"""What a restore is asked to do (:class:`RestoreOptions`) and what it did
(:class:`RestoreResult`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from asm.errors import (
    EXIT_HOSTILE, EXIT_INCOMPLETE, EXIT_LOCKED, EXIT_NOSPACE, EXIT_OK, EXIT_ORDER, EXIT_PARTIAL, EXIT_STORE,
    EXIT_USAGE, ImsError, worst,
)


@dataclass
class RestoreOptions:
    """What a restore is asked to do (imsrestore's options and a chain's context)."""

    ignore_duplicates: bool = False     # -i: no duplicate check (classic behaviour)
    new_mailbox: bool = False           # -n: restore beside an existing folder
    continue_on_error: bool = True      # -c y|n
    ask: object = None                  # ask(message) -> bool: the classic prompt on a terminal
    user_map: dict = field(default_factory=dict)   # -m: old -> new
    map_used: set = field(default_factory=set)     # ... the old names the archive(s) had
    map_targets: dict = field(default_factory=dict)  # ... {user restored to: the archived user
                                        # restored as it} (one dict for a chain or a stream)
    reffile: str | None = None          # where unresolved links are written
    spool_limit: int = 1 << 30          # bytes of first copies kept from a stream
    verbose: bool = False
    new_suffix: str = ""                # -n suffix (default: -YYYYMMDD)
    keep_held: bool = False             # leave deliveries held at the end (more of a chain follows)
    spool_dir: str = ""                 # where first copies from a stream are kept
    chain_ids: tuple = ()               # a chain in one command: its archives' ids, in order
    run_token: str = ""                 # -n, -i: this command's token (Journal.begin_run): a run
                                        # cut short and run again goes on beside where it began
                                        # (-n), and knows the messages it stored already (-i)
    claims: dict = field(default_factory=dict)   # which archived message each message a run
                                        # restored or took for a duplicate is (Applier._claims):
                                        # one dict for the archives of a chain in one command
    final: dict | None = None           # a chain in one command, before its last archive:
                                        # {(user, folder): (uidvalidity, UidSet, EndFlags)} its
                                        # end holds (asm.restore.plan.chain_end)
    final_unread: tuple = ()            # ... and its trailer's errors ({mailbox, error}:
                                        # what its backup could not read)
    final_unseen: object = None         # ... and a test (partition, user, group, folder) ->
                                        # True for a folder its backup did not look at (out
                                        # of its scope, or store.backupexclude left it out)
    final_created: float | None = None  # ... and when that last archive was taken
    recovery: bool = False              # --recovery: one chain of several restored into one
                                        # store (a disaster recovery, imsdr chain --commands):
                                        # a user another chain's restore brought from a later
                                        # archive is left so; one from an older, made anew


@dataclass
class RestoreResult:
    """What a restore did: counts, the folders it removed, its errors and exit status."""

    users: int = 0
    folders: int = 0
    messages: int = 0        # restored with their bytes
    links: int = 0           # restored as hard links (single copy)
    duplicates: int = 0      # already there, skipped
    renumbered: int = 0      # given new UIDs
    expunged: int = 0        # chain: removed because the later archive no longer had them
    removed: list = field(default_factory=list)      # chain: folders the later archive no longer had
    skipped: int = 0         # folders that hold this archive already (a chain run again)
    bytes: int = 0
    errors: list = field(default_factory=list)       # {"mailbox", "error", "status"}
    pending: list = field(default_factory=list)      # reference-file entries
    incomplete: str | None = None                    # why the archive ended early
    hostile: int = 0                                 # members refused as hostile (exit 5)
    corrupt: int = 0                                 # members damaged: digest, checksum, records (exit 4)
    trailing: str | None = None                      # bytes after the trailer, every member whole (exit 4)
    store_full: str | None = None                    # the store filled up: the run stopped
    unmatched: list = field(default_factory=list)    # selection paths that matched nothing
    near_misses: dict = field(default_factory=dict)  # unmatched path -> folders differing in case
    left_out: dict = field(default_factory=dict)     # unmatched path -> the store.backupexclude that left it out
    user_paths: dict = field(default_factory=dict)   # unmatched /P/GROUP path -> the archived user GROUP's path
    unread: list = field(default_factory=list)       # (mailbox, why): the archive's backup could not read it
    kept: list = field(default_factory=list)         # (mailbox, line): not listed, unread by the backup: kept
    gone_asked: list = field(default_factory=list)   # folders a path names that the chain's
                             # last archive no longer holds (deleted or renamed away): not restored
    merged: list = field(default_factory=list)       # (mailbox, messages given new UIDs, the folder's
                                                     # UIDVALIDITY, the archived one): its own folder
                                                     # found there as another (made again, or by a delivery)
    out_of_order: list = field(default_factory=list)  # folders refused: chain applied out of order
    seconds: float = 0.0
    held: list = field(default_factory=list)         # users whose deliveries stay held: the run
                                                     # did not finish (the store full, Ctrl-C)
    paths: int = 0                                   # selection paths given
    stopped: bool = False                            # stopped at an error (-c n, or the
                                                     # answer n): the rest was not read
    acls: dict = field(default_factory=dict)         # user -> [folders given their archived
                                                     # ACL, folders whose own ACL was removed]

    def failures(self) -> set[int]:
        """The statuses of the failures :data:`asm.errors.SEVERITY` ranks above a usage
        error that met in this run: the store filled up (13: the run stopped, the rest
        was not tried), hostile members (5), a truncated or corrupt archive (4),
        mailboxes the store could not write (17), folders locked by another run (6),
        chains applied out of order (7)."""
        out = {e.get("status", EXIT_PARTIAL) for e in self.errors} & {EXIT_NOSPACE, EXIT_STORE, EXIT_LOCKED,
                                                                         EXIT_ORDER}
        if self.store_full is not None:
            out.add(EXIT_NOSPACE)
        if self.hostile:
            out.add(EXIT_HOSTILE)
        if self.incomplete or self.corrupt or self.trailing:
            out.add(EXIT_INCOMPLETE)
        if self.out_of_order:
            out.add(EXIT_ORDER)
        return out

    def status(self) -> int:
        """The run's exit status (docs/operations.md, "Exit statuses"): :meth:`restored_status`,
        and 1 when the selection reached a mailbox the archive's backup could not read
        (``unread``: the user asked for it and did not get it as the store had it)."""
        return worst(self.restored_status(), EXIT_PARTIAL if self.unread else EXIT_OK)

    def restored_status(self) -> int:
        """The status of the restore of what the archive holds, when several kinds of
        failure met: the worst of :meth:`failures`, else paths that matched nothing
        at all or only names the store cannot keep (2), and any other named failure (1).
        EXIT_OK: the run is complete (run again, it would do nothing more)."""
        worst_failure = worst(*self.failures())
        if worst_failure != EXIT_OK:
            return worst_failure
        statuses = {e.get("status", EXIT_PARTIAL) for e in self.errors}
        if self.paths and len(self.unmatched) == self.paths:
            return EXIT_USAGE
        if statuses == {EXIT_USAGE} and not self.folders:
            return EXIT_USAGE       # refused (a user of a partition not configured): nothing restored
        if self.errors or self.pending or self.unmatched:
            return EXIT_PARTIAL
        return EXIT_OK


def error_status(exc: BaseException) -> int:
    """The status one failed mailbox or message stands for in a restore: the store's
    failures their own (full 13, locked 6, a name the store cannot keep 2: a usage
    error, the store is fine; anything else 17), a chain out of order 7, a hostile
    member 5, a damaged member 4 (the rest of the archive was read), another error its
    own status."""
    from asm.archive.errors import ArchiveError, HostileMember
    from asm.restore.errors import ChainOrderError
    from asm.store.base import BadName, LockTimeout, StoreError, StoreFull, os_store_error
    if isinstance(exc, OSError):
        exc = os_store_error(exc, "")
    if isinstance(exc, StoreFull):
        return EXIT_NOSPACE
    if isinstance(exc, LockTimeout):
        return EXIT_LOCKED
    if isinstance(exc, BadName):
        return EXIT_USAGE
    if isinstance(exc, StoreError):
        return EXIT_STORE
    if isinstance(exc, ChainOrderError):
        return EXIT_ORDER
    if isinstance(exc, HostileMember):
        return EXIT_HOSTILE
    if isinstance(exc, ArchiveError):
        return EXIT_INCOMPLETE
    if isinstance(exc, ImsError):
        return exc.status
    return EXIT_PARTIAL
