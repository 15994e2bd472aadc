"""Planning one folder's restore: which folder receives it, and in which mode.

* ``exact``: the folder was created by this restore (or was never used): every
  message keeps its UID, no duplicate check.
* ``merge``: a live folder: messages already there are skipped, the others keep
  their UID when it is free in the same UIDVALIDITY, else take new ones.
* ``chain``: the folder mirrors the archive restored into it last and this one
  follows it: messages the archive no longer lists are expunged at the end, flags
  are set as recorded.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from asm.archive.errors import CorruptMember
from asm.restore.errors import ChainOrderError
from asm.restore.journal import Journal, JournalRow
from asm.restore.options import RestoreOptions
from asm.store.base import Store


@dataclass
class FolderPlan:
    partition: str
    src_user: str
    user: str
    folder: str                 # target folder name
    src_folder: str
    mode: str                   # "exact" (created by us), "merge", "chain"
    archive_uidvalidity: int
    archive_uidnext: int
    archive_uids: object        # UidSet: every UID the archived folder held
    uidvalidity: int            # of the target
    state: object               # FolderState: flags of the messages not carried (incremental)
    existing: dict = field(default_factory=dict)     # size -> [MessageInfo]
    by_uid: dict = field(default_factory=dict)       # uid -> MessageInfo (existing)
    digests: dict = field(default_factory=dict)      # path -> sha256 (cache)
    restored: int = 0
    uidnext: int = 1            # the target's UIDNEXT as this run moves it
    renumbered: int = 0         # messages that took a new UID here
    failed: int = 0             # messages that could not be restored here
    resumed: bool = False       # an exact or chain restore of this archive cut short before:
                                # what it restored is there (same UIDs), the rest follows
    again: bool = False         # the archive restored here last, into a folder that mirrors it

    @property
    def mailbox(self) -> str:
        return f"/{self.partition}/{self.user}/{self.folder}"


def _fmt(t: float | None) -> str:
    return time.strftime("%Y%m%d:%H%M%S", time.localtime(t)) if t else "?"


class Planner:
    """Decides, for each archived folder selected, the target folder and the mode."""

    def __init__(self, store: Store, journal: Journal, header: dict, opts: RestoreOptions):
        self.store = store
        self.journal = journal
        self.header = header
        self.opts = opts

    def plan(self, m, user: str, locks: contextlib.ExitStack) -> FolderPlan:
        """The plan for folder member ``m`` restored under ``user``; the target folder's
        lock is entered on ``locks`` and held until the folder is done.  A folder
        restored exactly or as the next link of a chain is marked in the journal as
        under way before anything is written to it (see :meth:`Journal.start`)."""
        store = self.store
        folder = m.folder
        if store.exists(user, folder) and self.opts.new_mailbox:
            existing = store.messages(user, folder)
            if existing or folder != "INBOX":
                folder = self.new_name(user, folder)
        created = False
        if not store.exists(user, folder):
            # UIDNEXT is raised to the archive's only when the folder is complete, so a
            # killed run, run again, still finds every remaining UID free
            store.create_folder(user, folder, uidvalidity=m.uidvalidity, uidnext=1,
                                subscribed=m.subscribed)
            created = True
        locks.enter_context(store.lock(user, folder))
        info = store.folder(user, folder)
        j = self.journal.get(user, folder)
        resumed = (not created and j is not None and j.running is not None
                   and j.running == self.header.get("archive_id") and j.running_mode in ("exact", "chain")
                   and info.uidvalidity == m.uidvalidity)
        again = False
        if created:
            mode = "exact"
        elif resumed:
            mode = j.running_mode
        elif info.uidnext == 1 and not store.messages(user, folder):
            # never used (e.g. the INBOX of a user just created): adopt the archive's identity
            if info.uidvalidity != m.uidvalidity or info.subscribed != m.subscribed:
                info = store.set_folder(user, folder, uidvalidity=m.uidvalidity, subscribed=m.subscribed)
            mode = "exact"
        else:
            mode = "merge"
            if j is not None and j.mirror and j.uidvalidity == info.uidvalidity == m.uidvalidity \
                    and j.uidnext == info.uidnext:
                mode = self.chain_mode(user, folder, j)
                again = mode == "merge"
        if mode == "exact" and info.subscribed != m.subscribed:
            store.set_folder(user, folder, subscribed=m.subscribed)
        plan = FolderPlan(m.partition, m.user, user, folder, m.folder, mode, m.uidvalidity, m.uidnext,
                          m.uids, info.uidvalidity, m.state, uidnext=info.uidnext,
                          resumed=resumed, again=again)
        if mode != "exact" or resumed:
            for msg in store.messages(user, folder):
                plan.by_uid[msg.uid] = msg
                plan.existing.setdefault(msg.size, []).append(msg)
        if mode == "chain":
            self.check_gap(plan, j.created)
        if mode in ("exact", "chain") and not resumed:
            self.journal.start(user, folder, self.header, mode)
        return plan

    def chain_mode(self, user: str, folder: str, j: JournalRow) -> str:
        created = self.header.get("created")
        if j.archive_id == self.header.get("archive_id"):
            return "merge"  # the same archive again: nothing changes
        if created is not None and j.created is not None and created < j.created:
            raise ChainOrderError(
                f"this archive was taken at {_fmt(created)}, before the one restored last into "
                f"user/{user}/{folder} ({_fmt(j.created)}); restore a chain in order: the full "
                f"backup, then each incremental (or use -n to restore it beside the folder)")
        return "chain"

    @staticmethod
    def check_gap(plan: FolderPlan, last_created) -> None:
        """An incremental lists (in its state record) the messages it does not carry;
        each of them must already be here, else an archive in between is missing."""
        # bounded by the folder here, however many UIDs the archive's record spans
        missing = len(plan.state) - plan.state.count_in(plan.by_uid)
        if missing:
            raise ChainOrderError(
                f"user/{plan.user}/{plan.folder}: {missing} messages of this incremental's "
                f"folder (UIDs {plan.state.first_not_in(plan.by_uid)}...) are neither here nor in it: "
                f"the archive restored last "
                f"was taken at {_fmt(last_created)}; restore the incremental(s) taken in between first")

    def new_name(self, user: str, folder: str) -> str:
        """A free name beside ``folder`` (-n), or the one this archive's restore beside it
        began under and did not finish (a killed run of the same command resumes it)."""
        suffix = self.opts.new_suffix or time.strftime("%Y%m%d")
        base = f"{folder}-{suffix}"
        name, n = base, 1
        while self.store.exists(user, name):
            j = self.journal.get(user, name)
            if j is not None and j.running is not None and j.running == self.header.get("archive_id"):
                return name
            n += 1
            name = f"{base}-{n}"
        return name
