"""Planning one folder's restore: which folder receives it, and in which mode.

* ``exact``: the folder was created by this restore (or was never used): every
  message keeps its UID, no duplicate check.
  Resumed (a run of this archive cut short in it, or one that ended leaving some of
  its messages out at free UIDs), it gets what is missing at the archived UIDs.
* ``merge``: a live folder: messages already there are skipped, the others keep
  their UID when it is free in the same UIDVALIDITY, else take new ones.
* ``chain``: the folder mirrors the archive restored into it last and this one
  follows it (its header names that archive as its base, or, for archives that name
  no base, it was taken later): messages the archive no longer lists are expunged at
  the end, flags are set as recorded.
* ``skip``: the folder mirrors a later archive of this one's chain and has not
  changed since: this archive is in it already (a chain run again), nothing is done.

A live folder that has moved on is always merged, never refused; only an archive
that continues the folder's chain past a missing link (or an incremental whose base
was never restored into an absent folder) is refused, exit 7.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

from asm.backupstate import header_chain
from asm.restore.errors import ChainOrderError
from asm.restore.journal import Journal, JournalRow
from asm.restore.options import RestoreOptions
from asm.store.aclcmds import doveadm_acl_commands
from asm.store.base import LockTimeout, NameTooLong, Store, StoreError


@dataclass
class FolderPlan:
    """How one archived folder is restored: its target, mode, UIDs and what this run did there."""

    partition: str
    src_user: str
    user: str
    folder: str                 # target folder name
    src_folder: str
    mode: str                   # "exact" (created by us), "merge", "chain", "skip"
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
    stored: set = field(default_factory=set)         # the UIDs this run stored here (never
                                # expunged by its chain step: each is a message of the archive)
    failed: int = 0             # messages that could not be restored here
    deferred: list = field(default_factory=list)     # messages that take new UIDs at the
                                # folder's end (Applier.finish_deferred), not amid the UIDs
                                # the rest of the archive keeps
    taken: list = field(default_factory=list)        # archived UIDs another message holds here
    passed: list = field(default_factory=list)       # archived UIDs the store's server told its
                                # clients are gone (a killed run's record Dovecot passed)
    resumed: bool = False       # an exact or chain restore of this archive cut short before:
                                # what it restored is there (same UIDs), the rest follows
    again: bool = False         # the archive restored here last, into a folder that mirrors it
    own_from: int | None = None  # -i, the same command run again after it was cut short: the
                                # UID from which the folder may hold what that run stored
                                # (checked for duplicates, as nothing else is with -i)
    final_uids: object = None   # a chain given in one command: the UIDs the folder holds at its
                                # end (its last archive's list); no other message is restored
    final_flags: object = None  # ... and the flags they have there (EndFlags)
    pop3: object = None         # {uid: (uidl, order)}: the POP3 UIDLs and orders of the
                                # messages an incremental lists without carrying them
                                # (IMSASM.state_pop3), set as they were at its backup
    vanished: bool = False      # the folder was deleted or renamed (by a client) while this
                                # run restored into it: named once, the rest not written
    foreign: bool = False       # merged into another user's folder (-m): an equal UIDVALIDITY
                                # there is a coincidence (two folders made in one second),
                                # never the archived folder
    mark: str | None = None     # the mark this restore left in the folder (exact, chain),
                                # removed once the journal's completion record is on disk

    @property
    def same(self) -> bool:
        """The target is the archived folder (its UIDVALIDITY): a UID names the same
        message in both."""
        return self.uidvalidity == self.archive_uidvalidity and not self.foreign

    @property
    def mailbox(self) -> str:
        return f"/{self.partition}/{self.user}/{self.folder}"


class EndFlags:
    """The flags and keywords each message of one folder has at the end of a chain given
    in one command: its last archive's state record (the messages it does not carry)
    and the messages it carries.  A message an earlier archive restores gets them, not
    its own (older) ones: in a folder that is merged (a live folder that moved on) no
    later link sets them.  Kept as UID sets per distinct (flags, keywords): a few
    entries per folder, not one per message."""

    __slots__ = ("state", "_carried", "_carried_state", "pop3")

    def __init__(self, state, pop3=None):
        self.state = state                      # FolderState of the last archive's folder
        self._carried: dict = {}                # (flags, keywords) -> [uid, ...] while read
        self._carried_state = None              # ... then as a FolderState of its own
        # {uid: (POP3 UIDL, order)}: its IMSASM.state_pop3 and the messages it carries that
        # have either (only those: a few per folder, where POP3 clients saved UIDLs)
        self.pop3 = dict(pop3) if pop3 else {}

    def carried(self, uid: int, flags, keywords, pop3=None) -> None:
        self._carried.setdefault((frozenset(flags), tuple(keywords)), []).append(uid)
        if pop3 is not None and (pop3[0] or pop3[1]):
            self.pop3[uid] = pop3

    def pop3_of(self, uid: int):
        """(POP3 UIDL, order) the chain's end gives ``uid``, or None when it gives none."""
        return self.pop3.get(uid)

    def done(self) -> None:
        """The folder's members are all read: the carried UIDs become sets."""
        from asm.archive.values import FolderState, UidSet
        self._carried_state = FolderState((fl, kw, UidSet.of(uids)) for (fl, kw), uids in self._carried.items())
        self._carried = {}

    def get(self, uid: int):
        """(flags, keywords) the chain's end gives ``uid``, or None."""
        got = self._carried_state.get(uid) if self._carried_state is not None else None
        return got if got is not None else self.state.get(uid)


def chain_end(members) -> dict:
    """{(user, folder): (uidvalidity, UidSet, EndFlags)} of the chain's last archive,
    from its members (message data is not read)."""
    out, cur = {}, None
    for m in members:
        if m.kind == "folder":
            if cur is not None:
                cur.done()
            cur = EndFlags(m.state, getattr(m, "state_pop3", None))
            out[(m.user, m.folder)] = (m.uidvalidity, m.uids, cur)
        elif m.kind in ("message", "link") and cur is not None and m.uid is not None:
            cur.carried(m.uid, m.flags, m.keywords, (m.pop3_uidl or "", m.pop3_order or 0))
    if cur is not None:
        cur.done()
    return out


def mark_name(archive_id, mode: str, base, run: str | None = None) -> str:
    """The mark (Store.mark_restoring) of a restore of ``archive_id`` in ``mode`` into a
    folder whose journal row named ``base`` (None: no archive) when it began; ``run``:
    the token of the -n command that restores it (Journal.begin_run), which a rerun
    after a power cut goes on with in the folders it finds it in."""
    return f"{archive_id}.{mode}.{base or '-'}" + (f".{run}" if run else "")


def _fmt(t: float | None) -> str:
    return time.strftime("%Y%m%d:%H%M%S", time.localtime(t)) if t else "?"


class Planner:
    """Decides, for each archived folder selected, the target folder and the mode."""

    def __init__(self, store: Store, journal: Journal, header: dict, opts: RestoreOptions):
        self.store = store
        self.journal = journal
        self.header = header
        self.opts = opts
        self._guids: dict = {}          # user -> {folder: mailbox GUID} (own_guid)
        self.withheld: list = []        # (partition, user, folder, archived GUID) another
                                        # folder had
        self.acls: dict = {}            # user -> [folders given an ACL, folders whose own
                                        # ACL was removed] (set_acl)
        self.acl_locked: list = []      # (user, folder, why) of ACLs not written: locked
        self.taken_over: set = set()    # users whose INBOX this archive continues from the
                                        # restore of another chain's older archive (chain_mode)
        self.stale: list = []           # (user, folder, mark) of marks a restore left in a
                                        # folder that no longer count: removed after a sync

    def plan(self, m, user: str, locks: contextlib.ExitStack, final_uids=None, final_flags=None) -> FolderPlan:
        """The plan for folder member ``m`` restored under ``user``; the target folder's
        lock is entered on ``locks`` and held until the folder is done.  A folder
        restored exactly or as the next link of a chain is marked in the journal as
        under way before anything is written to it (see :meth:`Journal.start`)."""
        store = self.store
        folder = m.folder
        beside = False
        run = self.opts.run_token if self.opts.new_mailbox and self.opts.run_token else None
        began = self.journal.beside_of(user, folder, run) if run else None
        if began is None and run and not m.state and store.exists(user, folder) \
                and self.began_here(user, folder, m):
            # (its journal row lost in a power cut: see began_here).  Only a folder this
            # archive carries whole is ever restored under its own name with -n; an
            # incremental's folder goes beside, and the user's new INBOX, of the archived
            # UIDVALIDITY, is not one it began
            began = folder
        if began is not None:
            # this -n command, cut short, began this folder (beside, or under its own name
            # when there was none): it goes on there
            folder, beside = began, began != m.folder
        elif self.opts.new_mailbox and (m.state or store.exists(user, folder)):
            # beside an existing folder; and beside an absent (or empty) one when this is an
            # incremental that lists messages it does not carry: only what it carries is
            # restored, never a folder passed off as this archive's whole folder
            existing = store.messages(user, folder) if store.exists(user, folder) else ()
            if existing or folder != "INBOX" or m.state:
                folder = self.new_name(user, folder, m)
                beside = True
        created = False
        mark = (self.opts.run_token, m.folder) if self.opts.new_mailbox and self.opts.run_token else None
        if not store.exists(user, folder):
            if not beside:
                self.check_base(m, user, folder)
            if mark is not None:
                # said before the folder exists: a run cut short right after making it
                # finds it again by the journal, not as a stranger's folder
                self.journal.start(user, folder, self.header, "exact", beside=mark)
            # UIDNEXT is raised to the archive's only when the folder is complete, so a
            # killed run, run again, still finds every remaining UID free
            # (its lock held from its creation on; the store may make it appear whole,
            # filled, when that lock is released)
            made = store.create_folder_held(locks, user, folder, uidvalidity=m.uidvalidity, uidnext=1,
                                            subscribed=m.subscribed,
                                            guid=self.own_guid(m, user, folder, beside))
            self._guids.get(user, {})[folder] = made.guid
            created = True
        else:
            locks.enter_context(store.lock(user, folder))
        info = store.folder(user, folder)
        j = self.journal.get(user, folder)
        aid = self.header.get("archive_id")
        resumed = (not created and j is not None and j.running is not None
                   and j.running == aid and j.running_mode in ("exact", "chain")
                   and info.uidvalidity == m.uidvalidity)
        base = j.archive_id if j is not None else None      # the row as before this restore
        marks = [] if created else store.restoring_marks(user, folder)
        marked = None
        if not created and not resumed and (j is None or j.running is None) and marks \
                and info.uidvalidity == m.uidvalidity and info.uidnext <= max(1, m.uidnext):
            # a restore of this archive marked the folder (Store.mark_restoring) when it
            # created or continued it from the row the journal still has, and the record
            # that it was under way is lost (a power cut: it was not synced), or so is
            # its completion record: it is resumed as the journal would have had it
            marked = next((md for md in ("exact", "chain") if mark_name(aid, md, base, run) in marks), None)
            resumed = marked is not None
        again = refill = False
        if created:
            mode = "exact"
        elif resumed:
            mode = marked or j.running_mode
        elif (j is not None and j.running is None and j.gaps and j.archive_id == aid
              and info.uidvalidity == m.uidvalidity == j.uidvalidity and info.uidnext == j.uidnext
              and (j.count is None or j.count == len(store.messages(user, folder)))):
            # this archive's restore made (or continued) the folder exactly but could not
            # write some of its messages (links whose first copy a stream could not keep:
            # a full spool, the reference file not written), and nothing changed here since:
            # the same command run again resumes it, the messages going to the archived
            # UIDs it left free for them
            mode, resumed, refill = "exact", True, True
        elif (j is not None and j.running is not None and j.running != aid
              and j.running_mode == "chain" and j.mirror and info.uidvalidity == m.uidvalidity
              and (j.archive_id == aid or aid in j.chain or self.earlier_in_command(aid, j.archive_id))):
            # this archive was restored here, and the restore of a later link of its
            # chain (j.running) began from it and was cut short: the folder is on its
            # way from this archive to that one, which, resumed, finishes it.  (Merged
            # into as a folder that moved on, it was no mirror any more, and the link
            # resumed as a merge never set the flags its state record lists.)
            mode = "skip"
        elif info.uidnext == 1 and not store.messages(user, folder):
            # never used (e.g. the INBOX of a user just created): adopt the archive's identity
            if not beside:
                self.check_base(m, user, folder)
            guid = self.own_guid(m, user, folder, beside)
            if info.uidvalidity != m.uidvalidity or info.subscribed != m.subscribed or \
                    (guid and guid != info.guid):
                info = store.set_folder(user, folder, uidvalidity=m.uidvalidity, subscribed=m.subscribed,
                                        guid=guid or None)
                self._guids.get(user, {})[folder] = info.guid
            mode = "exact"
        else:
            mode = "merge"
            # (a folder the restore of j's archive made or continued exactly but for the
            # messages it could not write, damaged ones, whose archived UIDs it left free:
            # no mirror, yet the next link of its chain continues it, and is refused for it
            # when it lists them without carrying them (check_gap).  Merged, as before, it
            # exited 0 with the chain's expunges and flags left out, and that mail missing)
            gapped = j is not None and not j.mirror and j.gaps > 0 and j.running is None
            if j is not None and (j.mirror or gapped) and j.uidvalidity == info.uidvalidity \
                    and j.uidnext == info.uidnext \
                    and (j.count is None or j.count == len(store.messages(user, folder))):
                # the folder is as the restore of j's archive left it
                rel = "skip" if self.header.get("archive_id") in j.chain \
                    else self.chain_mode(user, folder, j, m, final_uids)
                if rel == "skip":
                    mode = "skip"   # the folder holds this archive already: a chain run again
                elif info.uidvalidity == m.uidvalidity:
                    mode = rel
                    again = j.archive_id == self.header.get("archive_id")
                elif rel == "chain":
                    # the folder was made again between the backups (a new UIDVALIDITY):
                    # the next link of the chain replaces what the last one left, when it
                    # holds the new folder whole (one that lists messages it does not carry
                    # had them from a folder renamed onto this name: they are in an
                    # earlier archive under the old name, not here)
                    self.check_replaced(m, user, folder, info.uidvalidity, chained=True)
                    store.expunge(user, folder, [msg.uid for msg in store.messages(user, folder)])
                    # another mailbox than the one there: never the old one's GUID, which
                    # the folder it was renamed to between the backups has (A and B
                    # swapped: each kept the other's, and neither could then be given its
                    # own, exit 0); a new one until its own is free (_give_withheld_guids)
                    guid = self.own_guid(m, user, folder, beside) or \
                        (os.urandom(16).hex() if m.mailbox_guid and info.guid else None)
                    info = store.set_folder(user, folder, uidvalidity=m.uidvalidity, uidnext=1,
                                            subscribed=m.subscribed, guid=guid)
                    self._guids.get(user, {})[folder] = info.guid
                    mode = "exact"
        if mode == "merge" and not beside and info.uidvalidity != m.uidvalidity and not self.opts.chain_ids:
            # another folder of that name (made again, or renamed onto it): the messages
            # this incremental lists without carrying them are not in it
            self.check_replaced(m, user, folder, info.uidvalidity)
        if mode in ("exact", "chain") and info.subscribed != m.subscribed:
            store.set_folder(user, folder, subscribed=m.subscribed)
        own = not beside and user == m.user and folder == m.folder
        owed = j.acl_owed if j is not None and own else None
        acl = None
        if mode in ("exact", "chain") and m.acl is not None and own:
            # the folder is this archive's under its archived user and name: its access
            # control list as archived (a chain's last link's; "" removes one).  Merged
            # into, beside (-n) or under another user (-m), the live ACL stays: sharing
            # is the owner's (docs/operations.md, "Access control lists")
            acl = m.acl
        elif owed is not None and (j.archive_id == aid or aid in j.chain
                                   or self.earlier_in_command(aid, j.archive_id)):
            # the restore of this archive (or of a later link of its chain) into the
            # folder could not write its ACL (its lock held): this run of the same
            # command, which finds the folder's mail there, gives it
            acl = owed
        elif owed is not None and mode in ("exact", "chain") and own:
            # a later archive of the folder, which carries no ACL for it (its backup
            # could not read it): its state is the truth, and the ACL an earlier link
            # owed is older than it: no longer owed (the live ACL stays as it is).
            # Kept, it stayed owed for good, and the same command of the earlier links
            # run again wrote it over the later state
            self.journal.owe_acl(user, folder, None)
        if acl is not None and self.set_acl(user, folder, acl, owed):
            got = self.acls.setdefault(user, [0, 0])
            got[0 if acl else 1] += 1
        plan = FolderPlan(m.partition, m.user, user, folder, m.folder, mode, m.uidvalidity, m.uidnext,
                          m.uids, info.uidvalidity, m.state, uidnext=info.uidnext,
                          resumed=resumed, again=again, final_uids=final_uids, final_flags=final_flags,
                          pop3=getattr(m, "state_pop3", None),
                          foreign=mode == "merge" and user != m.user)
        if self.opts.ignore_duplicates and self.opts.run_token and mode != "skip":
            # -i checks nothing already there, but a run of this command cut short stored
            # messages here: they are its own, recognised from the UID it began at
            token = self.opts.run_token
            plan.own_from = self.journal.mark_run(user, folder, token, info.uidnext)
            if mode == "merge":
                # the same in the folder (Store.mark_restoring), which a power cut does not
                # lose: the journal's record of it is not synced, and a rerun that lost it
                # stored a second copy of everything the cut run had stored here
                own = [int(p[2]) for p in (x.split(".") for x in marks)
                       if len(p) == 4 and p[:2] == [aid, "own"] and p[3] == token and p[2].isdigit()]
                if own:
                    plan.own_from = min(plan.own_from, *own)
                plan.mark = mark_name(aid, "own", str(plan.own_from), token)
                if plan.mark not in marks:
                    store.mark_restoring(user, folder, plan.mark)
            if plan.own_from >= info.uidnext:
                plan.own_from = None            # nothing stored here since it began
        if mode not in ("exact", "skip") or resumed:
            for msg in store.messages(user, folder):
                plan.by_uid[msg.uid] = msg
                plan.existing.setdefault(msg.size, []).append(msg)
        if mode == "chain":
            self.check_gap(plan, j.created, by_date=self.header.get("base") is None,
                           gaps=(j.archive_id, j.gaps) if j.gaps and not j.mirror else None)
        if mode in ("exact", "chain") and (not resumed or refill or marked):
            self.journal.start(user, folder, self.header, mode, beside=mark)
        if mode in ("exact", "chain"):
            # the same in the folder, before anything of this restore is written to it
            # (the journal's record is not synced: a power cut may lose it, docs/restore-
            # design.md section 3); earlier marks are of restores this one follows
            plan.mark = mark_name(aid, mode, base, run)
            if plan.mark not in marks:
                store.mark_restoring(user, folder, plan.mark)
            self.stale += [(user, folder, x) for x in marks if x != plan.mark]
        elif mode == "merge" and (j is None or j.running is None):
            # marks of restores that no longer count: this one merges into what they left
            # (a folder no restore is under way in), and one of them found later would
            # resume over this merge (a chain link's expunged again the mail this merge
            # brought back).  Removed now, under the folder's lock (classic: in its
            # transaction; a removal a power cut loses keeps the mark, as before)
            for x in marks:
                if x != plan.mark:              # (-i: its own, above)
                    store.unmark_restoring(user, folder, x)
        else:
            # marks of restores the journal has the completion record of
            self.stale += [(user, folder, x) for x in marks
                           if j is not None and j.running is None and x.split(".")[0] == j.archive_id]
        return plan

    def set_acl(self, user: str, folder: str, acl: str, owed: str | None = None) -> bool:
        """store.set_acl; a lock of the ACL another process holds past store.locktimeout
        (Dovecot changing it, or a lock left behind) is kept in :attr:`acl_locked` for
        the restore to name, and the folder's mail is restored all the same; the journal
        keeps the ACL as owed (``owed``: the one it kept already), for the same command
        run again to give."""
        try:
            changed = self.store.set_acl(user, folder, acl)
        except LockTimeout as exc:
            if owed != acl:
                self.journal.owe_acl(user, folder, acl)
            self.acl_locked.append((user, folder, self._acl_locked_why(user, folder, acl, exc.path)))
            return False
        if owed is not None:
            self.journal.owe_acl(user, folder, None)
        return changed

    def _acl_locked_why(self, user: str, folder: str, acl: str, lockpath: str) -> str:
        """What to do about an ACL not written for its lock: run the same command again,
        or the doveadm acl commands that give the folder that ACL from the one it has
        (``delete`` for each identifier it has that the archived ACL lacks, all of them
        when the archived ACL is none; ``set`` for each one it gives), shell-quoted."""
        given = "; ".join(ln for ln in acl.split("\n") if ln and not ln.startswith("#")) or "none"
        if len(given) > 200:
            given = given[:200] + "..."
        try:
            have = self.store.acl(user, folder) or ""
        except (StoreError, OSError):
            have = ""
        cmds = doveadm_acl_commands(user, folder, acl, have)
        text = "; ".join(cmds)
        if not cmds:
            todo = ""
        elif len(text) > 1000:
            todo = (f", or give it that with doveadm acl ({len(cmds)} commands, the first: {cmds[0]})")
        else:
            todo = f", or give it that yourself: {text}"
        return (f"its mail is restored, its access control list is not: another process held its lock "
                f"{lockpath} past store.locktimeout (Dovecot holds it while it changes the ACL: IMAP SETACL, "
                f"doveadm acl; one unchanged for 120 s is broken); once it is gone, run the same command "
                f"again (it gives the folder its archived ACL, {given}){todo}")

    def own_guid(self, m, user: str, folder: str, beside: bool) -> str:
        """The archived mailbox GUID of folder member ``m`` for the folder this restore
        makes (or makes the archived one: a new UIDVALIDITY) as ``user``'s ``folder``:
        only under its archived name and user (not beside it, -n; not for another user,
        -m), and only when no other folder of the user has that GUID (one renamed away
        since the backup keeps it: two mailboxes of an account never share one).  ""
        otherwise: the store gives the folder a GUID of its own.  A replica kept by dsync
        knows the folder by it (docs/operations.md, "GUIDs")."""
        guid = m.mailbox_guid
        if not guid or beside or user != m.user or folder != m.folder:
            return ""
        known = self._guids.get(user)
        if known is None:
            known = self._guids[user] = {f.name: f.guid for f in self.store.folders(user)}
        if any(g == guid for name, g in known.items() if name != folder):
            # (a chain's folder renamed between its backups: the old name, which has
            # it, goes at the end of this archive's restore; then this one gets it)
            self.withheld.append((m.partition, user, folder, guid))
            return ""
        return guid

    def chain_mode(self, user: str, folder: str, j: JournalRow, m, final_uids=None) -> str:
        """The mode for a folder that mirrors archive ``j.archive_id`` and has not changed
        since: how this archive stands to that one."""
        h = self.header
        aid, base, created = h.get("archive_id"), h.get("base"), h.get("created")
        if j.archive_id == aid:
            return "merge"  # the same archive again: nothing changes
        if self.earlier_in_command(aid, j.archive_id):
            # the folder holds a later link of the chain this command restores (it was
            # cut short after that link, and is run again): this one is in there as far as
            # it still counts, and the links after it finish the folder.  (Its header
            # need not name that link as an ancestor: a -d link names none, and a --base
            # link before it is of another line.  Merged, the folder stopped being a
            # mirror, and every later link merged too: their flags, and the chain end's
            # subscriptions, were never set, exit 0.)
            return "skip"
        if base is not None:
            if base == j.archive_id:
                return "chain"
            if j.archive_id in header_chain(h) and not m.state:
                # this archive of the folder's chain holds the folder whole (its base,
                # narrower, did not look at it: a full of /, an incremental of one user,
                # then one of / again): it is the folder as it was then, whatever links
                # came between.  (Of another chain it is a merge: the folder may hold
                # what an older archive brought back.)
                return "chain"
            if j.archive_id in header_chain(h):
                raise ChainOrderError(
                    f"user/{user}/{folder} holds archive {j.archive_id} (taken at {_fmt(j.created)}) "
                    f"and this incremental follows {base}, taken after it: restore the incremental(s) "
                    f"in between first, or the whole chain in one command (imsrestore -f FULL -f INCR1 "
                    f"-f INCR2 ...)")
            if not m.state and created is not None and j.created is not None and created > j.created:
                # another chain's incremental, taken after the archive the folder holds, that
                # holds the folder whole (its base did not have it: the user moved from one
                # backup group to another between the backups): the folder as it was then,
                # as a full taken then would give it; never a merge that keeps the older
                # archive's expunged mail and flags
                if folder == "INBOX":
                    self.taken_over.add(user)
                return "chain"
            # another chain: a classic merge, unless the folder is as the restore of an
            # older archive left it and lacks mail this incremental lists without carrying
            # it (that mail is in its own base, which was not restored here)
            self.check_other_chain(user, folder, j, m, final_uids)
            return "merge"
        if created is not None and j.created is not None and created < j.created:
            # an older archive into a folder that is as a later archive's restore left it:
            # it is in there already as far as it still counts (a chain run again); one
            # that moved on since takes it as a classic merge (see plan)
            return "skip"
        return "chain"

    def earlier_in_command(self, aid, other) -> bool:
        """Archive ``aid`` comes before ``other`` in the chain this command restores
        (``imsrestore -f FULL -f INCR1 ...``, checked in order by check_chain)."""
        ids = self.opts.chain_ids
        return aid in ids and other in ids and ids.index(aid) < ids.index(other)

    @staticmethod
    def _missing(state, here, final_uids) -> int:
        """How many messages of an incremental's state record (the messages it lists and
        does not carry) the container of UIDs ``here`` lacks."""
        # bounded by the folder here, however many UIDs the archive's record spans
        if final_uids is None:
            return len(state) - state.count_in(here)
        # a chain in one command restores only what its end holds
        return state.count_common(final_uids) - state.count_in(u for u in here if u in final_uids)

    def check_other_chain(self, user: str, folder: str, j: JournalRow, m, final_uids=None) -> None:
        """An incremental (by base) into a folder that mirrors the restore of an archive
        not in its chain, taken before it: the messages it lists without carrying them
        must be here, else they are in its base (or an archive before it), which was
        never restored here.  An older incremental (mail back into a folder restored
        from a later archive) is a classic merge."""
        h = self.header
        created = h.get("created")
        if not m.state or (created is not None and j.created is not None and created < j.created):
            return
        if j.uidvalidity != m.uidvalidity:
            return      # another folder of that name: its UIDs are not these (check_replaced)
        here = {msg.uid for msg in self.store.messages(user, folder)}
        missing = self._missing(m.state, here, final_uids)
        if missing:
            raise ChainOrderError(
                f"user/{user}/{folder} holds archive {j.archive_id} (taken at {_fmt(j.created)}), which "
                f"this incremental does not follow (its base is {h.get('base')}, of another chain): "
                f"{missing} of its messages (UIDs {m.state.first_not_in(here)}...) are in that base or an "
                f"archive before it, not here; restore its full and each incremental up to it first, or "
                f"the chain in one command (imsrestore -f FULL -f INCR ...), or use -n to restore only "
                f"what this archive carries")

    @classmethod
    def check_gap(cls, plan: FolderPlan, last_created, by_date: bool = False, gaps=None) -> None:
        """An incremental lists (in its state record) the messages it does not carry;
        each of them must already be here, else an archive in between is missing, or
        (``gaps``: (archive id, count)) the restore of the archive before it could not
        write some of its messages, or (``by_date``: an incremental by date) the folder's
        UIDs were given again after its date under the same UIDVALIDITY (Dovecot numbers
        the files again when a dovecot-uidlist is lost and its index kept), which no
        archive holds."""
        missing = cls._missing(plan.state, plan.by_uid, plan.final_uids)
        if missing and gaps is not None:
            raise ChainOrderError(
                f"user/{plan.user}/{plan.folder}: {missing} messages of this incremental's folder "
                f"(UIDs {plan.state.first_not_in(plan.by_uid)}...) are neither here nor in it: the restore "
                f"of archive {gaps[0]} (taken at {_fmt(last_created)}), which it follows, could not write "
                f"{gaps[1]} of its messages (damaged, named when it ran); restore that archive again from "
                f"an intact copy (or complete it with the reference file its restore named: imsrestore "
                f"-r REFFILE), then this one; the folder is left as it was")
        if missing:
            path = f"/{plan.partition}/{plan.user}/{plan.folder}"
            renumbered = (
                f", or, when none was taken in between, the folder's files were numbered again "
                f"after this incremental's date under the same UIDVALIDITY (Dovecot does so when a "
                f"folder's dovecot-uidlist is lost and its index kept), which an incremental by date "
                f"does not carry: restore the folder from the earlier archives alone (imsrestore -f "
                f"FULL [-f INCR ...] {path}), then what this incremental carries beside it "
                f"(imsrestore -n -f THIS-INCR {path}); for exact chains take incrementals with --base, "
                f"or a new full backup now") if by_date else ""
            raise ChainOrderError(
                f"user/{plan.user}/{plan.folder}: {missing} messages of this incremental's "
                f"folder (UIDs {plan.state.first_not_in(plan.by_uid)}...) are neither here nor in it: "
                f"the archive restored last "
                f"was taken at {_fmt(last_created)}; restore the incremental(s) taken in between first"
                f"{renumbered}")

    def check_replaced(self, m, user: str, folder: str, here: int, chained: bool = False) -> None:
        """A folder made again (or renamed onto this name) between the backups, whose
        messages from before are not carried by this incremental: refused, as a folder
        that is not here at all (check_base), before anything of it is replaced."""
        if not m.state:
            return
        h = self.header
        if h.get("base") is None and chained:
            # the folder is as the chain's earlier link left it, under another UIDVALIDITY
            self.by_date_partial(m, user, folder)
        how = ("an incremental by date does not carry the mail of a renamed folder, which is in the "
               "earlier backup under its old name; --base incrementals carry renamed folders whole"
               if h.get("base") is None else "the archive that carries them is missing")
        raise ChainOrderError(
            f"user/{user}/{folder} here (UIDVALIDITY {here}) is not the folder of that name in this "
            f"incremental (UIDVALIDITY {m.uidvalidity}: made again or renamed onto the name between the "
            f"backups), and this incremental holds only part of it: {len(m.state)} of its messages are in "
            f"earlier archives ({how}); restore the chain in one command (imsrestore -f FULL -f INCR ...), "
            f"or use -n to restore only what this archive carries")

    def check_base(self, m, user: str, folder: str) -> None:
        """An incremental whose base was never restored here: the messages it lists but
        does not carry are in the base (or an archive before it), not here."""
        if not m.state:
            return
        h = self.header
        base = h.get("base")
        if base is None and (self.journal.get(user, folder) is not None or self.in_chain_command()):
            # an incremental by date after earlier links of the chain (in this command, or
            # restored here before): they were restored, and hold no folder of this name
            # and UIDVALIDITY ("restore the chain in order" would be what was done)
            self.by_date_partial(m, user, folder)
        what = (f"its base archive {base}" if base else
                f"the backup(s) taken before {_fmt(h.get('since'))}")
        renamed = "" if base else (
            " (or the folder was renamed after that date: an incremental by date does not carry "
            "the mail of a renamed folder, which is in the earlier backup under its old name; "
            "--base incrementals carry renamed folders whole)")
        raise ChainOrderError(
            f"user/{user}/{folder} is not here and this incremental holds only part of it: "
            f"{len(m.state)} of its messages are in {what}{renamed}; restore the chain in order "
            f"(imsrestore -f FULL -f INCR ...), or use -n to restore only what this archive carries")

    def in_chain_command(self) -> bool:
        """This archive comes after another in the chain this command restores."""
        ids = self.opts.chain_ids
        aid = self.header.get("archive_id")
        return aid in ids and ids.index(aid) > 0

    def by_date_partial(self, m, user: str, folder: str) -> None:
        """An incremental by date (-d) lists messages of a folder under a UIDVALIDITY no
        earlier link restored here has (the folder was made again, renamed onto its name,
        or its UID list rebuilt, after the date, and the backup did not carry the files
        older than the date: an archive written before imsbackup carried such a folder
        whole, or a UIDVALIDITY below the date): no archive of the chain holds those
        messages under these UIDs.  Restoring the chain again, or in order, cannot help;
        the advice is what does: the folder from the links before, and this one beside."""
        h = self.header
        raise ChainOrderError(
            f"user/{user}/{folder}: this incremental by date (-d {_fmt(h.get('since'))}) lists "
            f"{len(m.state)} messages (UIDs {m.state.first_not_in(())}...) under UIDVALIDITY {m.uidvalidity} "
            f"that it does not carry, and no earlier archive of the chain holds the folder under this name "
            f"and UIDVALIDITY (it was made again, renamed onto the name or had its UID list rebuilt after "
            f"that date), so the chain cannot restore it exactly; its older mail is in the earlier "
            f"archives: restore the folder from them alone (imsrestore -f FULL [-f INCR ...] "
            f"/{m.partition}/{user}/{folder}, or the folder's earlier name if it was renamed), then what "
            f"this incremental carries beside it (imsrestore -n -f THIS-INCR /{m.partition}/{user}/{folder}); "
            f"for exact chains take incrementals with --base, or a new full backup now")

    def new_name(self, user: str, folder: str, m=None) -> str:
        """A free name beside ``folder`` (-n), or the one this archive's restore beside it
        began under and did not finish (a killed run of the same command resumes it)."""
        suffix = self.opts.new_suffix or time.strftime("%Y%m%d")
        n = 1
        name = self.fitting(user, folder, f"-{suffix}")
        ancestors = header_chain(self.header)
        while self.store.exists(user, name):
            if m is not None and self.opts.run_token and self.began_here(user, name, m):
                return name
            j = self.journal.get(user, name)
            if j is not None and j.running is not None and j.running == self.header.get("archive_id"):
                return name
            if j is not None and j.running is None and j.mirror and j.archive_id in ancestors:
                # the folder an earlier link of this archive's chain was restored into,
                # beside: the chain continues there (-n with a chain), not in one more
                return name
            n += 1
            name = self.fitting(user, folder, f"-{suffix}-{n}")
        return name

    def began_here(self, user: str, folder: str, m) -> bool:
        """Whether this -n command, cut short by a power cut, began restoring folder
        member ``m`` into the folder: the journal lost the row that said so
        (Journal.start is not synced), and the folder kept the mark with the command's
        token (made durable with the token, Journal.begin_run), or, cut before the
        mark or its index reached the disk, is as the command made it: never used, of
        the archived UIDVALIDITY.  Without this, the same command run again made one
        more folder beside and left this one half restored, or empty."""
        aid, run = self.header.get("archive_id"), self.opts.run_token
        if self.journal.get(user, folder) is not None:
            return False
        try:
            # (read without the folder's lock: a classic folder a killed run made may
            # have no index yet, which its lock makes again)
            marks = self.store.restoring_marks(user, folder)
        except (StoreError, OSError):
            marks = []
        if any(x.split(".")[0] == aid and x.endswith(f".{run}") for x in marks):
            return True
        try:
            info = self.store.folder(user, folder)
            return info.uidvalidity == m.uidvalidity and info.uidnext == 1 \
                and not self.store.messages(user, folder)
        except StoreError:
            return False                # (damaged: not taken for anything of ours)

    def fitting(self, user: str, folder: str, tail: str) -> str:
        """``folder`` + ``tail``, its last level shortened (a character at a time: never
        within a UTF-8 character) until the store can keep the name: a legal name of
        up to 255 bytes has no room for -YYYYMMDD.  A name the store refuses for
        another reason, or one no shortening makes fit, is BadName (exit 2 or 1)."""
        parent, sep, last = folder.rpartition("/")
        cut = last
        while True:
            name = f"{parent}{sep}{cut}{tail}"
            try:
                self.store.check_new_folder(user, name)
                return name
            except NameTooLong:
                if not cut:
                    raise
                # a long name costs one check per character: a few hundred at most
                cut = cut[:-1]
