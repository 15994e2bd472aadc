"""sdbox and mdbox stores, through ``doveadm backup`` and a temporary Maildir.

ims-asm never parses dbox files.  A login's dbox account is copied to a Maildir
(``doveadm -c CONF backup -u LOGIN maildir:WORK/LOGIN/Maildir``) the first time a command
reads it (folder by folder, ``backup -m FOLDER``, when every copy of the whole login
ends on a desync: _copy_by_folder), and the Maildir driver reads and writes that copy.  A
restore that changed a copy (or built a new login's mail there) gives it to Dovecot
before it releases the login's delivery hold, and at the end of its batch at the latest:
each folder it changed with ``doveadm -c CONF -o mail_location=maildir:WORK/LOGIN/Maildir
backup -u LOGIN -m FOLDER <the login's dbox location>`` (the whole login, without ``-m``,
when the restore made or removed the login), so that what Dovecot does meanwhile to the
login's other folders stays.
``doveadm backup`` keeps UIDVALIDITY, UIDNEXT, UIDs, flags, keywords, INTERNALDATE and
GUIDs in both directions (docs/dovecot.md); ``doveadm sync -1`` is never used.

Copying back makes a folder what the copy's folder is, so whatever Dovecot did to it
after the copy was taken would be undone.  Before it copies back the driver compares
Dovecot's listing of those folders (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, message count,
subscription; every message's UID, GUID and flags) with the one it took before the copy
was made: when one differs nothing is given back and the restore fails (exit 17) naming
the login, whose held deliveries are released.  After copying back it compares those
folders with the copy and fails the same way when Dovecot did not keep them, naming any
message Dovecot stored in a folder between the check and its give-back that the
give-back removed (_lost).  The delivery hold (dovecot.holdfile) is taken before the
copy a restore writes is made (hold_deliveries).

WORK is ``<store>/.ims-dbox-work.<host>.<pid>``, on the store's disk and reachable by the
mail user; it goes when the command ends (asm.atend; at exit outside a command).  The
process holds an flock on ``WORK/.lock`` and every doveadm it starts inherits that
descriptor: a doveadm whose ims process was killed (``kill -9`` of the process, not its
group) keeps the lock while it goes on copying, and the next run on this host waits
until it has ended before it removes the killed run's WORK and copies anything (else
both wrote the same dbox account at once).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import time

from asm import atend
from asm.config import Config
from asm.locks import flock_wait, pid_alive
from asm.store import layout as layout_mod
from asm.store import utf7
from asm.store.base import (BadName, FolderInfo, NoSuchUser, StoreError, StoreFull, Unlisted, UserExists,
                             check_folder_name, check_user_name)
from asm.store.maildir.doveadm import TIMEOUT, Doveadm, DoveadmRace, DsyncDesync
from asm.store.maildir.store import (ACL_FILE, MaildirStore, MisplacedLogin, _misplaced, expanded_location,
                                    fixed_prefix, misplaced_logins, open_layout)
from asm.trees import remove_tree

_WRITES = ("create_folder", "delete_folder", "set_folder", "append", "set_flags", "expunge",
           "hold_deliveries", "release_deliveries", "delete_user")


class DboxStore(MaildirStore):
    """A Dovecot sdbox/mdbox store seen through temporary Maildir copies."""

    unlisted_hint = "the store is read through doveadm backup (sdbox/mdbox)"

    def uidvalidity_given_since(self, user: str, since: float) -> int | None:
        # (the Maildir copy's counter is dsync's, not the account's; a dbox folder
        # rebuilt since is carried by its messages' dates already)
        return None
    #: what a restore wrote is Dovecot's only once the batch gives the copy back: the
    #: restore journal records a folder only then (asm/restore/engine.py)
    journal_after_sync = True
    #: the copy doveadm backup reads, whose list index keeps the old mailbox GUID: a new
    #: GUID resets the copy's index (no session of a client has it open); keeping it
    #: made doveadm backup refuse a renamed folder's GUID, exit 17
    guid_keeps_index = False
    # (a login's Maildir copy is given back to Dovecot when its deliveries are released,
    # inside the batch: its subscriptions are written as they change, not at the sync)
    defer_subscriptions = False

    single_copies = False       # (Dovecot's own files: no hard links of ours)

    def identity_differences(self, m, guid: str, basename: str, pop3_uidl: str,
                             pop3_order: int) -> list:
        # (the account's messages keep their GUIDs through doveadm backup; the base names
        # are the temporary Maildir copy's, made again by every copy)
        return [("X-GUID", m.guid, guid)] if guid and m.guid and m.guid != guid else []

    # its journal is written after the copy is given back (journal_after_sync): no mark
    # in the copy, which Dovecot would be given
    def mark_restoring(self, user: str, folder: str, mark: str) -> None:
        pass

    def restoring_marks(self, user: str, folder: str) -> list[str]:
        return []

    def unmark_restoring(self, user: str, folder: str, mark: str) -> None:
        pass

    def __init__(self, config: Config, create: bool = True, layout=None):
        dbox = layout or open_layout(config, dbox=True)
        super().__init__(config, create, layout=False)
        self._dbox = dbox
        self._dv = MaildirStore._doveadm(self)       # the dbox accounts themselves
        if self._dv is None:
            raise layout_mod.LayoutError(
                f"mail_location {dbox.location.text!r}: sdbox and mdbox are read and written "
                f"through doveadm, which needs Dovecot's configuration: msconfig set "
                f"dovecot.config /etc/dovecot/dovecot.conf (and install doveadm)")
        # the account and its Maildir copy name folders alike (Work/2024), whatever the
        # inbox namespace's prefix and separator (layout.dsync_namespace_options)
        self._dv.settings = layout_mod.dsync_namespace_options(
            layout_mod.doveconf_namespaces(self._dv.conf))
        self._prefix = fixed_prefix(dbox.root_template())
        self._work = os.path.join(self._prefix, f".ims-dbox-work.{self._hostname}.{self._pid}")
        self._parts = {"primary": self._work}
        self._exported: set[str] = set()          # logins copied from dbox
        self._created: set[str] = set()           # logins this process builds
        self._pending: set[str] = set()           # copies changed since Dovecot had them
        self._subs_after: dict[str, list] = {}    # names to subscribe once the login's copy
                                                  # is given back (subscribe_names)
        self._touched: dict[str, set | None] = {}  # login -> the folders its copy changed in
                                                  # (None: the whole login, _give_back)
        self._seen: dict[str, dict | None] = {}   # Dovecot's listing before the copy was made
        self._renamed: dict[str, list] = {}       # login -> its dbox folders the copy cannot hold
        self._names: dict[str, list] = {}         # login -> its folders, as its last copy had them
        self._uncopied: dict[str, tuple] = {}     # login -> (why, what to do): doveadm backup failed
        self._left_out: dict[str, set] = {}       # login -> its folders dsync stopped on, left out
        self._unsynced: dict[str, dict] = {}      # login -> {folder: (why, what to do, what to do
                                                  # before a restore)}: its own copy failed
                                                  # (_copy_by_folder), not in the copy
        self._failed: list[str] = []              # give-backs that failed as deliveries were released
        self._levels: dict[str, set] = {}         # login -> folders removed whose empty levels
                                                  # go once the copy is given back
        self._holding: set[str] = set()           # logins whose deliveries this run holds
        self._aside: dict[str, dict] = {}         # login -> {folder: GUID}: a killed run's
                                                  # folders moved aside, not in the copy (_take_aside)
        self._dovecot_runs = False                # its auth service answered (_check_dovecot_runs)
        self.acls_not_archived: list = []         # (login, folder) with an ACL not archived

    def folder_unchanged(self, user: str, folder: str, fingerprint: list) -> FolderInfo | None:
        return None      # the Maildir read is a fresh copy each run: dbox itself is not looked at

    #: doveadm backup copies the account's ACL files into the Maildir copy but not one
    #: written into the copy back: a backup says nothing of a dbox folder's ACL and a
    #: restore writes none (docs/dovecot.md, "Access control lists")
    carries_acl = False

    def _read_acl(self, d: str, user: str, folder: str) -> None:
        """None (not archived), but a folder whose copy holds an ACL (doveadm backup
        copied the account's dovecot-acl) is kept in :attr:`acls_not_archived`, for
        the backup to say that the archive does not hold it rather than drop it
        without a word."""
        try:
            has = os.path.getsize(os.path.join(d, ACL_FILE)) > 0
        except OSError:
            has = False
        if has and (user, folder) not in self.acls_not_archived:
            self.acls_not_archived.append((user, folder))
        return None

    def readahead(self, user: str, folder: str) -> tuple | None:
        return None      # the copy doveadm just wrote is in the page cache; asking for its
                         # files would copy every login again (WORK holds one at a time)

    # -- the dbox side -------------------------------------------------------------------
    def _ensure_work(self) -> None:
        if not os.path.isdir(self._work):
            self._clean_stale_work()
            os.mkdir(self._work, 0o700)
            owner = self._owner_for(self._prefix)
            self._chown(self._work, owner)
            atend.at_end(remove_tree, self._work)
            fd = os.open(os.path.join(self._work, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._dv.hold_fd = fd          # every doveadm child holds it too

    def _clean_stale_work(self) -> None:
        """Work directories of this host's processes that were killed before their end."""
        prefix = f".ims-dbox-work.{self._hostname}."
        try:
            names = [n for n in os.listdir(self._prefix) if n.startswith(prefix)]
        except OSError:
            return
        for n in names:
            pid = n[len(prefix):]
            if pid.isdigit() and not pid_alive(int(pid)):
                path = os.path.join(self._prefix, n)
                fd = self._wait_for_orphans(path, int(pid))
                remove_tree(path)
                if fd is not None:
                    os.close(fd)

    @staticmethod
    def _wait_for_orphans(path: str, pid: int) -> int | None:
        """Wait until no doveadm of the killed process ``pid`` holds its WORK's lock (it
        may still be copying a login to or from Dovecot); the lock's descriptor, held."""
        try:
            fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return None                      # no lock: nothing of it runs
        if flock_wait(fd, TIMEOUT, poll=0.1):
            return fd
        os.close(fd)
        raise StoreError(f"a doveadm started by the killed ims process {pid} still works on {path} "
                         f"(copying a login to or from Dovecot) after {TIMEOUT} s; wait until it "
                         f"ends or stop it (fuser -k {path}/.lock), then run again")

    def _dbox_root(self, user: str) -> str:
        self._not_misplaced(user)
        try:
            return self._dbox.for_login(check_user_name(user)).root
        except layout_mod.LayoutError as exc:
            raise StoreError(f"user {user!r}: {exc}") from None

    def _maildir(self, user: str) -> str:
        return os.path.join(self._work, user, "Maildir")

    def _check_copier(self, user: str) -> None:
        """StoreError when Dovecot runs ``user`` as another uid than the one WORK (the
        login's Maildir copy) belongs to: doveadm backup, running as the login, cannot
        write the copy there ("stat(.../subscriptions) failed: Permission denied"), and
        the error used to advise force-resync and renames, which cannot help."""
        got = self._dovecot_uid(user, self._dbox) if self._root_euid else None
        if got is None:
            return
        want, what = got
        have = os.stat(self._work).st_uid
        if have != want:
            self._uncopied[user] = (
                f"Dovecot runs this login as uid {want} ({what}), and doveadm backup, running as "
                f"it, cannot write the Maildir copy this driver makes as uid {have} "
                f"(store.owner, else the owner of {self._prefix})",
                "back this login up (and restore it) from an IMS_HOME whose store.owner is that "
                "user; sdbox/mdbox logins Dovecot runs as uids of their own are not otherwise "
                "supported (docs/dovecot.md)")
            raise StoreError(f"{user}: {'; '.join(self._uncopied[user])}")

    def _export(self, user: str) -> None:
        """Copy the login's account to WORK; the copies of the logins read before go
        (a backup reads one login after the other: WORK holds one account at a time)."""
        if user in self._uncopied:               # tried in this run: not again
            why, todo = self._uncopied[user]
            raise StoreError(f"{user}: {why}; {todo}")
        self._ensure_work()
        self._check_copier(user)
        with self._mutex:
            busy = {u for (u, _f) in self._held}
        for other in sorted(self._exported - self._created - self._pending - busy):
            remove_tree(os.path.join(self._work, other))
            self._exported.discard(other)
            self._seen.pop(other, None)
            self._touched.pop(other, None)
        for attempt in range(1, DESYNC_TRIES + 1):
            remove_tree(os.path.join(self._work, user))
            names, seen = self._account_now(user)
            # a folder whose Maildir++ directory name would be longer than a file name may be
            # stops doveadm backup of the whole login: left out of the copy (and named)
            # (its parents too, when they are: dsync creates them first)
            long = {n[:i] for n in names if _too_long(n)
                    for i in [*(k for k, c in enumerate(n) if c in "/."), len(n)] if _too_long(n[:i])}
            self._left_out.pop(user, None)
            self._unsynced.pop(user, None)
            try:
                copy = self._copy(user, long)
            except StoreFull:
                raise
            except (DsyncDesync, DoveadmRace) as exc:
                # the user's client changed folders while dsync copied them: a fresh
                # copy, as dsync asks ("You may want to run dsync again"); after that
                # folder by folder, so that a folder the client keeps making and deleting
                # costs no other
                if attempt < DESYNC_TRIES:
                    continue
                copy = self._copy_by_folder(user, names, long, exc)
            except StoreError as exc:
                copy = self._copy_without_escaped(user, names, long, exc)
            break
        self._seen[user] = seen
        self._exported.add(user)
        self._check_copy(user, names, copy)
        self._aside.pop(user, None)
        if user in self._holding:
            self._take_aside(user)
        self._names[user] = self._copied_names(user)

    def _take_aside(self, user: str) -> None:
        """A run killed while it moved the account's folders (_move_guids) left a folder
        aside, ``ims-moving-PID-N`` (an IMAP client lists it), holding the mailbox GUID
        the archive gives another name.  Copied as a folder of the account's own, its
        GUID was another folder's in the copy: the restore run again gave the folder
        that wants it a new one (Planner.own_guid), and the folder aside stayed, exit 0.
        Such a folder of a process that is gone (pid_alive; never a live run's) is
        ours: it is removed from the copy a restore writes (the deliveries it holds,
        hold_deliveries: a backup copies it as it is), so the restore gives its GUID to
        the folder the archive has it under, and the give-back renames it there (the
        rename keeps its mail); one the copy wants under no name is named (_give_back)."""
        aside = self._aside.setdefault(user, {})
        if not any(_ASIDE.match(n.split("/")[0]) for n in MaildirStore.folder_names(self, user)):
            return          # (the copy's own listing: no doveadm run for a login without one)
        opts = self._copy_options(user)
        for name, (_n, guid) in sorted(self._folders(user, maildir=True).items(), reverse=True):
            m = _ASIDE.match(name.split("/")[0])
            if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
                self._dv.run(user, "mailbox delete", "--", name, options=opts)       # children first
                aside[name] = guid

    def _account_now(self, user: str) -> tuple[dict[str, tuple], str | None]:
        """The login's folders (_folders) and what Dovecot serves of it (_listing), read
        before the copy.  A client that deletes or renames a folder, or expunges a
        message, while doveadm lists them stops doveadm ("Mailbox doesn't exist",
        "Message was expunged"): the listing is taken again, up to LISTING_TRIES times
        (what is gone is gone: the copy and the archive do not have it, as a message a
        Maildir backup finds expunged); after that the login is named as not backed up."""
        for attempt in range(1, LISTING_TRIES + 1):
            try:
                names = self._folders(user)
                if names["INBOX"][1] == "" and os.path.isdir(self._dbox_root(user)):
                    # no INBOX in the account (renamed away, never delivered to): Dovecot makes
                    # one, with a UIDVALIDITY of its own, when it is first opened (a client's
                    # login, doveadm).  Opened here, so the copy, the archive and a restore
                    # have the UIDVALIDITY clients are served, not one the Maildir copy made up
                    self._dv.run(user, "mailbox status", "uidvalidity", "INBOX")
                    names = self._folders(user)
                # what Dovecot serves before the copy: a change made while doveadm copies (an
                # APPEND to a folder it has copied) is in the account and not in the copy, so
                # the give-back must see the account differ from this, not from a listing
                # taken after the copy (it held the change: the give-back undid it, exit 0)
                # after 3 races, folder by folder: a client that makes and deletes a
                # scratch folder all day races every listing of the whole login
                return names, self._listing(user, modseq=True, by_folder=attempt > 3)
            except DoveadmRace as exc:
                if attempt == LISTING_TRIES:
                    self._uncopied[user] = (
                        f"doveadm could not list this login: its folders or messages changed while "
                        f"it listed them, {LISTING_TRIES} times ({exc})",
                        f"back up again when its IMAP client is less busy (or hold it, doveadm kick "
                        f"{shlex.quote(user)})")
                    raise StoreError(f"{user}: {'; '.join(self._uncopied[user])}") from None
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    @staticmethod
    def _desync_why(user: str, exc: StoreError) -> tuple[str, str]:
        return (f"doveadm backup (dsync) could not copy this login: its folders changed while it "
                f"copied them, {DESYNC_TRIES} times, and so did each folder while it copied it "
                f"on its own ({exc})",
                f"back up again when its IMAP client is less busy (or hold it, doveadm kick "
                f"{shlex.quote(user)})")

    def _copy_by_folder(self, user: str, names: dict[str, tuple], long: set[str],
                        exc: StoreError) -> dict[str, tuple]:
        """The copy made folder by folder (``doveadm backup -m FOLDER``, each folder of the
        listing taken before, INBOX first), once DESYNC_TRIES copies of the whole login
        ended on a desync (``exc``): a client that makes and deletes a scratch folder all
        day (or a filter) desyncs every copy of the whole login, while each of its other
        folders, copied on its own, does not.

        ``-m`` syncs that folder alone (its UIDVALIDITY, UIDNEXT, UIDs, flags, keywords,
        GUIDs, as the whole copy does) and leaves the copy's other folders as they are.
        A folder deleted meanwhile is not copied (``-m`` matches nothing): _check_copy
        finds it gone.  A folder whose own copy desyncs DESYNC_TRIES times, or fails
        otherwise, is left out of the copy and named (_unsynced, unlisted_folders; a
        restore into the login is refused, _refuse_renamed); when no folder could be
        copied the login is named as before.  The copy's subscriptions are then made
        the account's (``-m`` carries only the folder's own)."""
        root = os.path.join(self._work, user)
        remove_tree(root)
        target = f"maildir:{self._maildir(user)}"
        excl = sum((["-x", n] for n in sorted(long)), [])
        order = ["INBOX", *sorted(n for n in names if n != "INBOX" and n not in long)]
        failed: dict[str, StoreError] = {}
        desynced: dict[str, StoreError] = {}
        for name in order:
            for attempt in range(1, DESYNC_TRIES + 1):
                try:
                    self._dv.run(user, "backup", "-m", name, *excl, target)
                except StoreFull:
                    raise
                except (DsyncDesync, DoveadmRace) as again:
                    if attempt == DESYNC_TRIES:
                        desynced[name] = again
                    continue
                except StoreError as other:
                    failed[name] = other
                break
        if len(failed) + len(desynced) == len(order):      # not one folder copied
            remove_tree(root)
            if not failed:
                self._uncopied[user] = self._desync_why(user, exc)
                raise StoreError(f"{user}: {'; '.join(self._uncopied[user])}") from None
            first = failed[min(failed)]
            self._uncopied[user] = (
                f"doveadm backup (dsync) cannot copy this login, on which dsync stops ({first})",
                f"repair or rename what dsync's error names (doveadm force-resync -u {shlex.quote(user)} '*', "
                f"doveadm mailbox rename -u {shlex.quote(user)} ...) and run the command again")
            raise StoreError(f"{user}: {'; '.join(self._uncopied[user])}") from None
        q = shlex.quote
        busy = f"when its IMAP client is less busy (or hold it, doveadm kick {q(user)})"
        self._unsynced[user] = {
            **{name: (f"doveadm backup (dsync) could not copy this dbox folder: it changed while dsync "
                      f"copied it, {DESYNC_TRIES} times, on its own as with the whole login ({err})",
                      f"back up again {busy}", f"restore again {busy}")
               for name, err in desynced.items()},
            **{name: (f"doveadm backup (dsync) cannot copy this dbox folder ({err})",
                      f"repair or rename it (doveadm force-resync -u {q(user)} {q(name)}, doveadm mailbox "
                      f"rename -u {q(user)} {q(name)} NEW-NAME) and back up again",
                      f"repair or rename it (doveadm force-resync -u {q(user)} {q(name)}, doveadm mailbox "
                      f"rename -u {q(user)} {q(name)} NEW-NAME) and restore again")
               for name, err in failed.items()}}
        opts = self._copy_options(user)
        want = set(self._dv.names(user, "mailbox list -s"))
        have = set(self._dv.names(user, "mailbox list -s", options=opts))
        if want - have:
            self._dv.run(user, "mailbox subscribe", "--", *sorted(want - have), options=opts)
        if have - want:
            self._dv.run(user, "mailbox unsubscribe", "--", *sorted(have - want), options=opts)
        return self._folders(user, maildir=True)

    def _copy_without_escaped(self, user: str, names: dict[str, tuple], long: set[str],
                              exc: StoreError) -> dict[str, tuple]:
        """The copy made again without the folders whose name holds '%' and two hex
        digits, once ``doveadm backup`` of the whole login failed (``exc``).

        dsync reads '%XX' in a name as an escaped character: "x%2e" becomes "x." (in the
        Maildir++ copy a hierarchy: "Ends with hierarchy separator"), which stops the
        copy of the whole login.  ``-x`` takes such a folder by its name with its '%'
        written '%25' (dsync reads the pattern the same way; "v%252e" leaves out "v%2e"
        and nothing else, its parents that hold an escape too).  The folders left out are
        named by _check_copy as not copied, the login's others are read.  When that
        fails too (or no folder has an escape) the login cannot be copied: a StoreError
        naming it (the backup names the login as not backed up, unlisted_folders, and
        reads the others; a restore into it fails)."""
        escaped = sorted(n for n in names if _ESCAPE.search(n))
        if escaped:
            remove_tree(os.path.join(self._work, user))
            parts = {n[:i] for n in escaped for i in [*(k for k, c in enumerate(n) if c == "/"), len(n)]
                     if _ESCAPE.search(n[:i])}
            try:
                copy = self._copy(user, long | {n.replace("%", "%25") for n in parts})
                self._left_out[user] = set(escaped)
                return copy
            except StoreFull:
                raise
            except StoreError as again:
                exc = again
        remove_tree(os.path.join(self._work, user))
        if escaped:
            what = (f"whose dbox folder {', '.join(map(repr, escaped[:3]))}{' ...' if len(escaped) > 3 else ''} "
                    f"{_why(escaped[0], ' in its name')}")
            todo = (f"rename it {_without(escaped[0])} (doveadm mailbox rename -u {shlex.quote(user)} "
                    f"{shlex.quote(escaped[0])} NEW-NAME) and run the command again")
        else:
            what = "on which dsync stops"
            todo = (f"repair or rename what dsync's error names (doveadm force-resync -u {shlex.quote(user)} "
                    f"'*', doveadm mailbox rename -u {shlex.quote(user)} ...) and run the command again")
        self._uncopied[user] = (f"doveadm backup (dsync) cannot copy this login, {what} ({exc})", todo)
        raise StoreError(f"{user}: doveadm backup (dsync) cannot copy this login, {what}; {todo} ({exc})") from None

    def _copy(self, user: str, exclude: set[str]) -> dict[str, tuple]:
        """``doveadm backup`` of the login to WORK, leaving out ``exclude``; the copy's
        folders (_folders)."""
        self._dv.run(user, "backup", *sum((["-x", n] for n in sorted(exclude)), []),
                     f"maildir:{self._maildir(user)}")
        return self._folders(user, maildir=True)

    def _check_copy(self, user: str, names: dict[str, tuple], copy: dict[str, tuple]) -> None:
        """What ``doveadm backup`` did not copy faithfully, found by comparing the copy's
        folders with the account's own (``doveadm mailbox status``: the folders that hold
        mail, not the parents that only hold other folders):

        * a parent that only holds other folders (IMAP \\Noselect: "Trash" of
          "Trash/child") becomes a real, empty folder in the copy: it is removed from the
          copy, so it is neither backed up as a folder nor made a real one when the copy
          is given back;
        * a folder whose name holds '%' and two hex digits is copied under another
          name: dsync reads "%50" in "pct%50" as an escaped "P", both ways (Dovecot 2.3);
          other '%' ("100%", "%%", "a%2Fb") it keeps; so is one whose name holds '.'
          (the Maildir++ copy cannot: dsync makes it '_'), and one too long for the
          copy is left out of it (_too_long).  Such a folder cannot be read or written
          through doveadm backup under its own name: a backup names it as not backed
          up (unlisted_folders), the copy's renamed folder is removed from the copy, and
          nothing is written to the login (a copy given back would rename or remove it);
        * a folder an IMAP client deleted or renamed while doveadm copied (the account,
          listed again after the copy, no longer has it under its name and GUID) is
          gone: not in the copy, not named (the next incremental has it gone, as a
          Maildir backup has a folder deleted while it runs); a folder made (or renamed
          to) meanwhile that the copy holds is the account's and stays in the copy.

        A folder is the copy's when the copy has a folder of that name with the same
        mailbox GUID (dsync keeps GUIDs): a name is never guessed from its characters,
        and a renamed folder that lands on another folder's name ("a%25b" on "a%b") is
        caught.  Both sides are named by doveadm (namespace prefix and separator as
        layout.dsync_namespace_options makes them); folders are removed from the copy
        with ``doveadm mailbox delete``, which keeps the copy's own indexes true."""
        # (an INBOX the account does not have -- never delivered to, or renamed away --
        # is one the Maildir copy has, empty: not a folder copied under another name)
        unsynced = self._unsynced.get(user, {})
        missing = [n for n, (_m, guid) in names.items()
                   if (n not in copy or copy[n][1] != guid or n in unsynced)
                   and not (n == "INBOX" and guid == "" and n in copy and not copy[n][0] and n not in unsynced)]
        extra = set(copy) - set(names)
        # the account as it is after the copy: a client may have deleted or renamed a
        # folder while doveadm copied (not in the copy, not in the account: gone, as a
        # folder a Maildir backup finds gone, and the next incremental has it gone), or
        # made one (in the copy and the account under its name with its GUID: backed up)
        now = self._folders_after(user, names) if missing or extra else names
        self._renamed[user] = sorted(n for n in missing if n in now and now[n][1] == names[n][1])
        opts = self._copy_options(user)
        # a folder whose own copy failed (_copy_by_folder) is named while the account has
        # it, and what its copy holds (a part, or nothing) is never read
        self._unsynced[user] = {n: v for n, v in unsynced.items() if n in self._renamed[user]}
        for name in sorted(unsynced, reverse=True):
            if name in copy and name != "INBOX":        # (the copy's INBOX: folder_names leaves it out)
                self._dv.run(user, "mailbox delete", "--", name, options=opts)
        for name in sorted(extra, reverse=True):     # children first
            if name in now and now[name][1] == copy[name][1] and copy[name][1]:
                continue                              # the account's own folder, made meanwhile
            if self._renamed[user] or not copy[name][0]:
                # (a copy with a '%' folder is never written or given back: its renamed
                # folders go, mail and all; the account keeps them as they are)
                self._dv.run(user, "mailbox delete", "--", name, options=opts)

    def _folders_after(self, user: str, before: dict[str, tuple]) -> dict[str, tuple]:
        """The login's folders (_folders) listed again after its copy; ``before`` (the
        listing taken before the copy) when clients keep changing them while doveadm lists."""
        for attempt in range(1, LISTING_TRIES + 1):
            try:
                return self._folders(user)
            except DoveadmRace:
                time.sleep(0.05 * attempt)
        return before

    def _copy_options(self, user: str) -> list[str]:
        """doveadm's settings for looking at the login's copy: its folders as its
        directories are (a parent dsync met in the dbox account while it gave the copy
        back stays in the copy's list index as a folder that is not there, and 'mailbox
        status *' then fails on it)."""
        return [f"mail_location=maildir:{self._maildir(user)}", "mailbox_list_index=no"]

    def _folders(self, user: str, maildir: bool = False) -> dict[str, tuple]:
        """{folder: (messages, mailbox GUID)} of the login's dbox account (``maildir``: of
        its copy), as doveadm names them: the folders that hold mail, not the parents
        that only hold folders; INBOX always."""
        opts = self._copy_options(user) if maildir else []
        out = self._dv.run(user, "mailbox status", "messages guid", "*", options=opts, formatter="json")
        try:
            got = {row["mailbox"]: (int(row["messages"]), row["guid"]) for row in json.loads(out or "[]")}
        except (ValueError, TypeError, KeyError):
            raise StoreError(f"doveadm mailbox status -u {user}: unexpected output {out[:200]!r}") from None
        got.setdefault("INBOX", (0, ""))
        return got

    def folder_names(self, user: str) -> list[str]:
        if user not in self._exported and user in self._names:
            # the copy went for another login's (WORK holds one at a time): the names it
            # had, rather than a second doveadm backup of the whole account (a backup
            # lists every login's folders first, then reads them login by login)
            return list(self._names[user])
        self.user_partition(user)                 # (copies the login when it has no copy)
        if user in self._uncopied:
            # named by unlisted_folders; whatever would write to it fails: one login
            # dsync cannot copy stops no other
            return []
        return self._copied_names(user)

    def _copied_names(self, user: str) -> list[str]:
        """The copy's folders, without those whose own copy failed (_copy_by_folder): the
        copy has an INBOX whatever dsync copied, which is then not the account's."""
        unsynced = self._unsynced.get(user, {})
        return [n for n in super().folder_names(user) if n not in unsynced]

    def unlisted_folders(self, user: str):
        if user in self._uncopied:
            why, todo = self._uncopied[user]
            return [Unlisted("user", "primary", user, None, self._dbox_root(user), why, todo)]
        if user not in self._renamed:            # (known from the login's last copy)
            self._ensure_copy(user)
        left_out = self._left_out.get(user, set())
        unsynced = self._unsynced.get(user, {})
        return [Unlisted("folder", "primary", user, name, self._dbox_root(user), *unsynced[name][:2])
                if name in unsynced else
                Unlisted("folder", "primary", user, name, self._dbox_root(user),
                         f"doveadm backup (dsync) copies a dbox folder "
                         f"{_why(name, stops=name in left_out)}",
                         f"rename it {_without(name)} (doveadm mailbox rename -u "
                         f"{shlex.quote(user)} {shlex.quote(name)} NEW-NAME) and back up again")
                for name in self._renamed.get(user, ())]

    def _refuse_renamed(self, user: str) -> None:
        names = self._renamed.get(user)
        unsynced = self._unsynced.get(user, {})
        if names and names[0] in unsynced:
            why, _todo, todo = unsynced[names[0]]
            raise StoreError(
                f"{user}: nothing restored into this login: its dbox folder {names[0]!r} could not be "
                f"copied from Dovecot ({why}), and Dovecot's doveadm backup (dsync), which gives the "
                f"restored mail to the dbox account, would remove it; {todo}")
        if names:
            raise StoreError(
                f"{user}: nothing restored into this login: its dbox folder {names[0]!r} "
                f"{_why(names[0], ' in its name')}, and Dovecot's doveadm backup (dsync), which gives "
                f"the restored mail to the dbox account, would rename or remove it; rename the "
                f"folder {_without(names[0])} (doveadm mailbox rename -u {shlex.quote(user)} "
                f"{shlex.quote(names[0])} NEW-NAME) and restore again")

    def _listing(self, user: str, maildir: bool = False, modseq: bool = False,
                 by_folder: bool = False) -> dict[str, str] | None:
        """What Dovecot serves of the login's dbox account (``maildir``: of its copy), by
        folder: {folder: its UIDVALIDITY, UIDNEXT and message count (and HIGHESTMODSEQ with
        ``modseq``), every message's UID, GUID and flags (without \\Recent)}.
        With ``modseq`` (the listing that tells whether a client changed the account)
        the subscriptions too: an IMAP SUBSCRIBE changes neither of the others (a name
        subscribed without a folder is a key of its own).
        None when the login has no dbox account.  ``by_folder``: each folder on its own,
        one that went (or changed) while doveadm read it left out, as one deleted before
        the listing (DoveadmRace only when the list of folders itself raced): a listing
        that lacks a folder the account has only makes a restore's give-back see a
        changed account, never the reverse.  Kept by folder so that a give-back of some
        folders (_give_back) looks at those folders only."""
        if not maildir and not os.path.isdir(self._dbox_root(user)):
            return None
        opts = self._copy_options(user) if maildir else []
        fields = "uidvalidity uidnext messages" + (" highestmodseq" if modseq else "")
        if by_folder:
            status_parts, mail_parts = [], []
            for name in self._dv.names(user, "mailbox list", options=opts):
                try:
                    st = self._dv.run(user, "mailbox status", "--", fields, name, options=opts, formatter="json")
                    ms = self._dv.run(user, "fetch", "--", "mailbox uid guid flags", "mailbox", name, "all",
                                      options=opts)
                except StoreError:
                    continue      # gone, going, or a parent only (\Noselect)
                # (doveadm reads NAME as a pattern: '*x' also takes 'ax', listed on its own)
                status_parts += [r for r in _json_rows(user, st) if r.get("mailbox") == name]
                mail_parts += [b for b in ms.split("\f") if _block_mailbox(b) == name]
            status, mails = status_parts, "\f".join(mail_parts)
        else:
            status = _json_rows(user, self._dv.run(user, "mailbox status", fields, "*", options=opts,
                                                   formatter="json"))
            mails = self._dv.run(user, "fetch", "mailbox uid guid flags", "all", options=opts)
        out: dict[str, list[str]] = {}
        for row in status:
            box = row.pop("mailbox", "")
            out.setdefault(box, []).insert(0, " ".join(f"{k}={row[k]}" for k in sorted(row)))
        msgs = []
        for block in mails.split("\f"):
            fields_ = dict(re.findall(r"^(mailbox|uid|guid|flags): ?(.*)$", block, re.M))
            if fields_:
                flags = " ".join(sorted(f for f in fields_.get("flags", "").split() if f != "\\Recent"))
                msgs.append((fields_.get("mailbox", ""), int(fields_.get("uid", 0)),
                             fields_.get("guid", ""), flags))
        for box, uid, guid, flags in sorted(msgs):
            out.setdefault(box, []).append(repr((uid, guid, flags)))
        if modseq:
            for name in self._dv.names(user, "mailbox list -s", options=opts):
                out.setdefault(name, []).append("subscribed")
        return {box: "\n".join(lines) for box, lines in out.items()}

    def _location_of(self, user: str) -> str:
        """The login's dbox location, every variable and ~ expanded (doveadm's target)."""
        self._not_misplaced(user)
        return expanded_location(self._dbox, user)

    def _not_misplaced(self, user: str) -> None:
        """MisplacedLogin when the userdb keeps ``user`` apart from the template."""
        away = _misplaced(self._dbox).get(user)
        if away is not None:
            m = away[1]
            raise MisplacedLogin(f"{m.why} ({m.path}): ims-asm does not read or write it there; "
                                 f"{m.hint}")

    def _give_back(self, user: str) -> None:
        """The changed copy becomes the login's dbox account, if Dovecot did not change
        the account since the copy was made; checked afterwards.

        Only the folders the restore changed are given back, each with ``doveadm backup
        -m FOLDER`` (dsync syncs that folder alone and leaves the account's others as
        they are), and only those folders must be as the copy was made from: what a
        client or a delivery does meanwhile to another folder is not Dovecot's to undo.
        (The whole login was once given back: a client APPENDing to Drafts while doveadm
        did so lost what Dovecot had answered OK [APPENDUID], and the error said nothing
        of it.)  A login this run made (no copy made from Dovecot) or removed is given
        back whole."""
        if user not in self._pending:
            return
        # given back or not (refused, half given back: a full disk), not again in this
        # run: the account is no longer what the copy was made from, and the journal has
        # not recorded the login's folders, so the same command run again redoes it
        self._pending.discard(user)
        touched = self._touched.pop(user, None)
        before = self._seen.get(user)
        scope = None if touched is None or before is None else sorted(touched)
        now = self._listing(user, modseq=True)
        changed = _differs(before, now, scope)
        if changed:
            raise StoreError(
                f"{user}: Dovecot changed the dbox account while the restore worked on a "
                f"copy of it (a delivery or an IMAP client, in {', '.join(map(repr, changed[:3]))}"
                f"{' ...' if len(changed) > 3 else ''}); the restored mail was not given "
                f"to Dovecot: run the restore again (dovecot.holdfile holds deliveries "
                f"meanwhile, docs/dovecot.md)")
        # (a login the restore made has no folder to move: two doveadm runs saved)
        if before is not None and self._move_guids(user, scope):
            now = self._listing(user, modseq=True)
        aside = self._aside.pop(user, {})
        left = sorted(n for n in self._folders(user) if n in aside) if aside else []
        if left and scope is None:
            raise StoreError(self._aside_why(user, left, "the restored mail was not given to Dovecot"))
        copy = [f"mail_location=maildir:{self._maildir(user)}"]
        dropped: dict[str, set[int]] = {}
        stopped = None
        if scope is None:
            try:
                self._dv.run(user, "backup", self._location_of(user), options=copy)
            except DsyncDesync as exc:
                if not _renamed_to_itself(str(exc)):
                    raise                 # (given back all the same: compared below)
        else:
            try:
                dropped = self._give_folders_back(user, scope, copy)
            except _Stopped as exc:
                stopped = exc           # what it left is compared: mail it removed is named
        got, want = self._listing(user), self._listing(user, maildir=True)
        if stopped is not None or _differs(want, got, scope) or dropped:
            lost = _lost(now or {}, got or {}, want or {}, scope, dropped)
            if lost:
                raise StoreError(
                    f"{user}: mail Dovecot stored while the restore gave the dbox account its "
                    f"restored folders was removed by doveadm backup: "
                    + "; ".join(f"{n} message{'s' if n not in ('1', 'at least 1') else ''} in {box!r} (UIDs {uids})"
                                for box, n, uids in lost)
                    + f"; the restored mail is there; those messages are gone from the account "
                    f"(their senders or the clients that saved them may have them): restore a dbox "
                    f"folder while no client writes to it (doveadm kick {shlex.quote(user)}; "
                    f"dovecot.holdfile holds deliveries), docs/dovecot.md")
            if stopped is not None:
                raise StoreError(str(stopped))
            where = "" if scope is None else f" ({', '.join(map(repr, scope[:3]))}{' ...' if len(scope) > 3 else ''})"
            raise StoreError(
                f"{user}: doveadm backup did not give the dbox account the folders, UIDs, "
                f"GUIDs or flags of the restored copy (docs/dovecot.md); mail a client or a delivery "
                f"stored in the restored folders{where} meanwhile may be gone from them; compare "
                f"the output of doveadm fetch -u {shlex.quote(user)} 'mailbox uid guid flags' all "
                f"with the archive")
        later = self._subs_after.pop(user, None)
        if later:
            self._subscribe_now(user, later)
        self._remove_levels_now(user, self._levels.pop(user, ()))
        self._seen[user] = self._listing(user, modseq=True)
        if left:
            raise StoreError(self._aside_why(user, left, "the restored mail was given to Dovecot"))

    @staticmethod
    def _aside_why(user: str, left: list[str], done: str) -> str:
        """Why a folder a killed run moved aside (_take_aside) stays: the restored copy
        has its mailbox GUID under no name (another archive than that run's)."""
        return (f"{user}: {done}; the dbox folder {left[0]!r}{' ...' if len(left) > 1 else ''} was moved "
                f"aside by a restore that was killed, and the archive gives its mailbox GUID no "
                f"folder: run the killed restore's command again, or rename it (doveadm mailbox rename -u "
                f"{shlex.quote(user)} {shlex.quote(left[0])} NEW-NAME)")

    def _move_guids(self, user: str, scope: list[str] | None) -> bool:
        """The account's folders renamed (``doveadm mailbox rename``, which keeps a
        folder's GUID) to the names the copy gives their mailbox GUIDs, for the folders
        of ``scope`` (None: every folder of the copy).  A chain's folders renamed,
        swapped or shifted between its backups and restored archive by archive are
        made under their old names by the full, and the incremental's restore gives
        the copy's folders their GUIDs under the new ones: dsync of one folder (-m)
        cannot move a GUID from one name to another (nor could dsync of the whole
        login: A and B swapped, or C->D, B->C, A->B, ended with exit 17, folders left
        empty).  A move waits for its name to be free (its folder moved away first);
        a cycle goes through a name of its own for a moment.  A name the account uses
        for a folder that does not move is never taken: that move is left to dsync.
        True when a folder was renamed."""
        copy = self._folders(user, maildir=True)
        names = sorted(copy) if scope is None else scope
        done = False
        for step in range(2 * len(names) + 2):
            # listed again after each rename: Dovecot renames a folder with its children
            account = self._folders(user)
            where = {guid: name for name, (_n, guid) in account.items() if guid}
            moves = {}                               # account name -> copy name
            for name in names:
                guid = copy.get(name, (0, ""))[1]
                src = where.get(guid) if guid else None
                if src is not None and src != name and "INBOX" not in (src, name):
                    moves[src] = name
            # a name the account uses for a folder that is not moved away: left to dsync
            moves = {src: dst for src, dst in moves.items() if dst not in account or dst in moves}
            if not moves:
                break
            # a folder before those going under it: a child moved first makes its new
            # parent's name a level Dovecot will not rename another folder onto
            # ("Target mailbox already exists": P and Q swapped, P/k going with P)
            dsts = set(moves.values())
            ready = sorted((src for src, dst in moves.items() if dst not in account
                            and not any(dst.startswith(d + "/") for d in dsts)),
                           key=lambda src: (moves[src].count("/"), src))
            if ready:
                self._dv.run(user, "mailbox rename", "--", ready[0], moves[ready[0]])
            else:
                # only cycles left (A and B swapped): one goes aside under a name of its own
                self._dv.run(user, "mailbox rename", "--", sorted(moves)[0], f"ims-moving-{os.getpid()}-{step}")
            done = True
        return done

    def remove_empty_levels(self, user: str, folder: str) -> None:
        """The account's levels above the removed ``folder`` that hold no folder any more
        (a dbox account keeps a directory for each: IMAP LIST shows it \\Noselect
        \\HasNoChildren) are removed, deepest first, once the copy is given back (the
        copy, Maildir++, has none): Dovecot's RENAME removes them so, and a chain in one
        command never makes them."""
        folder = check_folder_name(folder)
        if "/" not in folder:
            return
        if user in self._pending:
            self._levels.setdefault(user, set()).add(folder)
        else:
            self._remove_levels_now(user, [folder])

    def _remove_levels_now(self, user: str, removed) -> None:
        """``doveadm mailbox delete`` of each level above the folders ``removed`` that is
        no folder of the account (Dovecot refuses a level that still holds one: "Mailbox
        has children"), deepest first; a level that is no longer there, or that Dovecot
        keeps, ends the walk up from that folder."""
        if not removed:
            return
        try:
            folders = set(self._folders(user))       # (the selectable ones: never deleted)
        except DoveadmRace:
            return        # (a client at work: its levels stay, as Dovecot's DELETE leaves them)
        for name in sorted(removed, reverse=True):
            parts = name.split("/")
            for i in range(len(parts) - 1, 0, -1):
                level = "/".join(parts[:i])
                if level == "INBOX" or level in folders:
                    break
                try:
                    self._dv.run(user, "mailbox delete", "--", level)
                except StoreFull:
                    raise
                except StoreError:
                    break                         # holds a folder, or is not there

    def _give_folders_back(self, user: str, scope: list[str], copy: list[str]) -> dict[str, set[int]]:
        """``doveadm backup -m FOLDER`` of each folder of ``scope`` the copy has; each it
        no longer has (the restore removed it) removed from the account, children first;
        the copy's subscriptions of those folders made the account's.  Returns {folder:
        UIDs}: the folders dsync deleted in the account (and made again from the copy)
        because they held a message under a UID the copy gives another."""
        have = self._listing(user, maildir=True, modseq=True) or {}
        target = self._location_of(user)
        folders = [n for n in scope if "uidnext=" in have.get(n, "")]
        dropped: dict[str, set[int]] = {}
        for name in folders:
            for attempt in range(1, DESYNC_TRIES + 1):
                try:
                    self._dv.run(user, "backup", "-m", name, target, options=copy)
                    break
                except StoreFull:
                    raise
                except StoreError as exc:
                    if isinstance(exc, DsyncDesync) and _renamed_to_itself(str(exc), name):
                        break             # given back all the same: compared below
                    # a message stored in the folder after the check, under a UID dsync
                    # gives the copy's message too: dsync deletes the account's folder
                    # ("Deleting mailbox 'Trash': UID=31 already exists locally for a
                    # different mail") and stops; run again, it makes it from the copy
                    conflict = _CONFLICT.findall(str(exc))
                    if isinstance(exc, DsyncDesync) and not conflict:
                        # mdbox: "Mailbox changes caused a desync ... UIDs changed due to
                        # UID conflicts": a message stored in the folder after the check
                        # under a UID the copy gives another; run again, dsync would make
                        # the folder the copy's and remove it: not run again.  Another
                        # desync (a folder made again meanwhile) is run again, as dsync
                        # asks, until the last try.  What it left is compared below.
                        uids_claimed = "UID conflict" in str(exc)
                        if not uids_claimed and attempt < DESYNC_TRIES:
                            continue
                        raise _Stopped(_stopped_why(user, name, str(exc), uids_claimed)) from None
                    if not conflict or attempt == DESYNC_TRIES:
                        raise
                    dropped.setdefault(name, set()).update(int(u) for _box, u in conflict)
            if name in dropped:
                # made again from the copy, with the copy's UIDNEXT: the UIDs Dovecot gave
                # the messages dsync removed are not given to other mail
                self._dv.run(user, "mailbox update", "--min-next-uid", str(max(dropped[name]) + 1), "--", name)
        for name in sorted((n for n in scope if n not in folders), reverse=True):
            try:
                self._dv.run(user, "mailbox delete", "--", name)
            except DoveadmRace:
                pass                              # not there (any more): what the copy says
        subs = set(self._dv.names(user, "mailbox list -s"))
        want = {n for n in scope if have.get(n, "").endswith("subscribed")}
        if want - subs:
            self._dv.run(user, "mailbox subscribe", "--", *sorted(want - subs))
        gone = (subs & set(scope)) - want
        if gone:
            self._dv.run(user, "mailbox unsubscribe", "--", *sorted(gone))
        return dropped

    def other_subscriptions(self, user: str, folders=None) -> list[str]:
        """The account's subscribed names that are no folder of it, as doveadm lists
        them (``mailbox list -s``: Dovecot keeps a subscription after DELETE or RENAME)."""
        if not os.path.isdir(self._dbox_root(user)):
            return []
        subs = set(self._dv.names(user, "mailbox list -s"))
        have = set(self.folder_names(user) if folders is None else folders)
        out = []
        for name in sorted(subs - have):
            try:
                if check_folder_name(name) not in have:
                    out.append(name)
            except BadName:
                continue
        return out

    def subscribe_names(self, user: str, names) -> None:
        """``doveadm mailbox subscribe`` of the names the account has not subscribed
        (Dovecot takes names that are no folder; an IMAP SUBSCRIBE does not); after the
        login's restored copy is given back, when one is to be (a change to the account
        before would read as Dovecot's, and the give-back of the whole login would undo it)."""
        self._subscriptions(user, names, True)

    def unsubscribe_names(self, user: str, names) -> None:
        self._subscriptions(user, names, False)

    def _subscriptions(self, user: str, names, on: bool) -> None:
        names = [check_folder_name(n) for n in names]
        if not names:
            return
        if user in self._pending:
            self._subs_after.setdefault(user, []).extend((n, on) for n in names)
            return
        self._subscribe_now(user, [(n, on) for n in names])

    def _subscribe_now(self, user: str, changes: list) -> None:
        have = set(self._dv.names(user, "mailbox list -s"))
        for on, verb in ((False, "mailbox unsubscribe"), (True, "mailbox subscribe")):
            todo = sorted({n for n, o in changes if o == on and (n in have) != on})
            if todo:
                self._dv.run(user, verb, "--", *todo)

    def _doveadm(self):
        """What the Maildir code asks doveadm (keywords beyond 26) concerns the copy."""
        if getattr(self, "_dv", None) is None:
            return None
        return _CopyDoveadm(self._dv.conf, self._dv.binary, self)

    # -- the store API ---------------------------------------------------------------------
    def check_partition(self, partition: str, writing: bool = False) -> bool:
        from asm.store.partitions import check_partition_dir
        self.partition_path(partition)
        ok = check_partition_dir(partition, self._prefix, True, writing,
                                 key=f"store.mail_location ({self._dbox.location.text})")
        if writing:
            self._check_dovecot_runs()
        return ok

    def _check_dovecot_runs(self) -> None:
        """What a restore writes reaches the dbox accounts through ``doveadm backup -u
        LOGIN``, which asks the running Dovecot's auth service for the login (its
        auth-userdb socket): refused before anything is written when nothing answers
        there.  (With Dovecot stopped, as the disaster-recovery runbook once said, a
        restore ran to its end and then failed every login with doveadm's "User lookup
        failed", exit 17.)  Once it answered, not asked again."""
        if self._dovecot_runs:
            return
        import socket
        conf = ["-c", self._dv.conf]
        try:                            # one doveconf for both where it knows both
            settings, _ = layout_mod._doveconf_all(conf, "doveconf", ("base_dir", "auth_socket_path"))
        except layout_mod.LayoutError:
            settings, _ = layout_mod._doveconf_all(conf, "doveconf", ("base_dir",))
        base, name = settings.get("base_dir", ""), settings.get("auth_socket_path", "")
        path = os.path.join(base, name or "auth-userdb")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(path)
        except OSError as exc:
            why = exc.strerror or str(exc)
            what = ("Dovecot is not running" if isinstance(exc, (FileNotFoundError, ConnectionRefusedError))
                    else "Dovecot's auth service cannot be reached")
            raise StoreError(
                f"{what} ({path}: {why}): an sdbox/mdbox store is written through doveadm, which "
                f"asks the running Dovecot for each login; nothing was written: start Dovecot "
                f"(deliveries held or LMTP closed, docs/disaster-recovery.md step 4a) and run the "
                f"same command again") from None
        self._dovecot_runs = True

    def sync_dirs(self) -> list[str]:
        return [self._prefix]

    def holds_path(self, path: str) -> bool:
        return (self._dbox.login_holding(path) is not None
                or path.startswith(os.path.join(os.path.realpath(self._prefix), ".ims-dbox-work.")))

    def users(self, partition: str) -> list[str]:
        self.partition_path(partition)
        if not self.check_partition(partition):
            return []
        found = (set(self._dbox.logins()) - set(_misplaced(self._dbox))) | self._created
        return sorted(u for u in found if not u.startswith(".ims-"))

    def unlisted_users(self, partition: str):
        away = _misplaced(self._dbox)
        stale = [Unlisted("user", partition, login, None, self._dbox.for_login(login).root,
                          f"the userdb keeps {login}'s mail at {away[login][1].path}, not in this "
                          f"directory the template gives it", away[login][1].hint)
                 for login in sorted(set(self._dbox.logins()) & set(away))
                 # its own location's directory (LAYOUT, UTF-8 apart): misplaced_logins names it
                 if os.path.normpath(self._dbox.for_login(login).root)
                 != os.path.normpath(away[login][1].path)] if away else []
        return stale + misplaced_logins(self._dbox, partition)

    def user_partition(self, user: str) -> str:
        check_user_name(user)
        if user in self._exported or user in self._created:
            return "primary"
        if os.path.isdir(self._dbox_root(user)):
            try:
                self._export(user)
            except StoreFull:
                raise
            except StoreError:
                if user not in self._uncopied:
                    raise
                # a login dsync cannot copy is still the store's: folder_names lists
                # nothing of it, unlisted_folders names it, every write to it fails
            return "primary"
        raise NoSuchUser(user)

    def create_user(self, user: str, partition: str = "primary", uidvalidity: int | None = None,
                    guid: str = "") -> None:
        check_user_name(user)
        if self.exists(user):
            raise UserExists(user)
        self._ensure_work()
        super().create_user(user, partition, uidvalidity, guid)
        self._created.add(user)
        self._exported.add(user)
        self._pending.add(user)
        self._seen[user] = None

    def _ensure_copy(self, user: str) -> None:
        """The login's copy in WORK, made now when it has a dbox account and no copy."""
        if user not in self._exported and os.path.isdir(self._dbox_root(user)):
            self._export(user)

    def exists(self, user: str, folder: str | None = None) -> bool:
        if folder is None and user not in self._exported:
            return os.path.isdir(self._dbox_root(user))
        self._ensure_copy(user)
        return super().exists(user, folder)

    def hold_deliveries(self, user: str, holder: str | None = None) -> None:
        """Dovecot's hold (dovecot.holdfile) is taken, and has taken effect, before the
        copy the restore writes is made: a delivery Dovecot accepted after the copy was
        made changes the account, which then refuses the give-back.  The command looked
        the login up before (the copy is made then): that copy, unchanged so far, is made
        again once the hold is in place.  (Before, every restore of a dbox login that
        got mail every 0.3 s was refused, each run again: "Dovecot changed the dbox
        account ... run the restore again".)"""
        added = self._dovecot_hold(user, True)       # waits until auth reads it (holdfile.SETTLE)
        try:
            if added and user in self._exported and user not in self._pending | self._created:
                remove_tree(os.path.join(self._work, user))
                self._exported.discard(user)
                for kept in (self._seen, self._touched, self._names):
                    kept.pop(user, None)
            self._holding.add(user)
            MaildirStore.hold_deliveries(self, user, holder)      # (copies the login again)
            if user in self._exported and user not in self._aside:
                self._take_aside(user)            # (a copy made before the hold was taken)
        except BaseException:
            if added:
                self._dovecot_hold(user, False)
            raise

    def release_deliveries(self, user: str, holder: str | None = None) -> int:
        # Dovecot gets the restored mail while deliveries are still held.  When it cannot
        # (the account changed meanwhile, doveadm failed), nothing more is done for the
        # login in this run: its hold goes as at any end of a run (kept, LMTP answered 451
        # after the command had gone), and the failure, in its own words, ends the batch
        # (sync): one line, not one more "releasing held deliveries" error.  A full disk
        # (exit 13) keeps the hold: the same command must finish the restore.
        try:
            self._give_back(user)
        except StoreFull:
            raise
        except StoreError as exc:
            n = super().release_deliveries(user, holder)
            if not self.in_batch:
                raise
            self._failed.append(str(exc))
            return n
        return super().release_deliveries(user, holder)

    # -- Dovecot's own view (reconstruct: its index files are the authority) ----------------
    def account_status(self, user: str, mask: str = "*") -> dict[str, tuple[int, int, int]]:
        """{folder: (messages, UIDVALIDITY, UIDNEXT)} of the login's dbox account as
        Dovecot reads it (``doveadm mailbox status``): every mailbox matching ``mask``
        opened, no copy made."""
        out = self._dv.run(user, "mailbox status", "--", "messages uidvalidity uidnext", mask, formatter="json")
        try:
            return {row["mailbox"]: (int(row["messages"]), int(row["uidvalidity"]), int(row["uidnext"]))
                    for row in json.loads(out or "[]")}
        except (ValueError, TypeError, KeyError):
            raise StoreError(f"doveadm mailbox status -u {user}: unexpected output {out[:200]!r}") from None

    def force_resync(self, user: str, mask: str = "*") -> None:
        """Dovecot checks the login's mailboxes against its dbox files and fixes its
        index files (``doveadm force-resync``): UIDs, flags and UIDVALIDITY it keeps."""
        self._dv.run(user, "force-resync", "--", mask)

    def sync(self) -> None:
        super().sync()
        failed, self._failed = self._failed, []
        for user in sorted(self._pending):
            try:
                self._give_back(user)
            except StoreFull:
                raise                    # the others would not fit either
            except StoreError as exc:
                failed.append(str(exc))
        if failed:
            raise StoreError("; ".join(failed))


#: copies of a login dsync ends on a desync (its folders changed meanwhile) before it is
#: named as not backed up
DESYNC_TRIES = 3
#: listings of a login taken before its copy (_account_now) while a client changes it
LISTING_TRIES = 10

def _differs(before: dict | None, now: dict | None, scope: list[str] | None) -> list[str]:
    """The folders (of ``scope``; None: every folder) whose listing (DboxStore._listing)
    differs; ["*"] when the account came or went."""
    if before is None or now is None:
        return [] if before is now else ["*"]
    names = sorted(set(before) | set(now)) if scope is None else scope
    return [n for n in names if before.get(n) != now.get(n)]


def _lost(now: dict, got: dict, want: dict, scope: list[str] | None,
          dropped: dict[str, set[int]]) -> list[tuple[str, str, str]]:
    """[(folder, count, UIDs)]: messages Dovecot stored in a folder while it was given
    back, that the give-back removed: UIDs Dovecot gave out after the last check (from
    the UIDNEXT the account and the copy had then, to the account's UIDNEXT now) that the
    account no longer holds; in a folder dsync deleted and made again (``dropped``: the
    UIDs its warning named), at least those, and any after them."""
    def uidnext(text: str | None) -> int:
        m = re.search(r"\buidnext=(\d+)", text or "")
        return int(m.group(1)) if m else 0

    def uids(text: str | None) -> set[int]:
        return {int(m) for m in re.findall(r"^\((\d+), ", text or "", re.M)}
    out = []
    for box in (sorted(set(got) | set(now)) if scope is None else scope):
        start = max(uidnext(now.get(box)), uidnext(want.get(box)))
        gone = sorted(set(range(start, uidnext(got.get(box)))) - uids(got.get(box)))
        if box in dropped:
            gone = sorted(set(gone) | dropped[box])
            out.append((box, f"at least {len(gone)}", f"{gone[0]} and any after it"))
        elif gone:
            out.append((box, str(len(gone)), f"{gone[0]}-{gone[-1]}" if len(gone) > 1 else str(gone[0])))
    return out


class _Stopped(StoreError):
    """A folder's give-back stopped on a desync: UIDs both sides claim, or another one
    still there after the last try (_give_folders_back)."""


def _stopped_why(user: str, name: str, desync: str, uids_claimed: bool) -> str:
    """The line of a folder's give-back that dsync stopped on a desync: UIDs both sides
    claim (not run again), or another desync ``DESYNC_TRIES`` runs in a row."""
    what = (f"Dovecot stored mail in {name!r} while the restore gave it back, and doveadm "
            f"backup stopped on the UIDs both claim ({desync}); messages stored in it "
            f"meanwhile may be gone from it and restored ones may have other UIDs"
            if uids_claimed else
            f"doveadm backup did not give the dbox account {name!r} as restored: it could not "
            f"bring the folder in step after {DESYNC_TRIES} tries, each ending on a desync (the "
            f"folder changed while dsync copied it: {desync}); messages stored in it meanwhile "
            f"may be gone from it and it may not hold all the restored ones")
    return (f"{user}: {what} (their senders or the clients that saved them may have them): "
            f"restore the folder again while no client writes to it (doveadm kick "
            f"{shlex.quote(user)}; dovecot.holdfile holds deliveries), docs/dovecot.md")


#: dsync's desync whenever it gives a folder whose name holds '%' back to an account that
#: has it (Dovecot 2.3.19): it names the folder with that '%' escaped ("100%25") and finds
#: it renamed to itself, on every run, while it gives the folder's mail, flags and UIDs
#: back all the same (measured: sdbox and mdbox, "100%", "%%", "a%2Fb", "Work/50%")
_SELF_RENAME = re.compile(r"desync\. You may want to run dsync again: Mailbox (.+) mailbox_rename "
                          r"conflict: Can't rename mailbox to itself\.?$")


def _renamed_to_itself(desync: str, name: str | None = None) -> bool:
    """Whether ``desync`` is only dsync's rename of a '%' folder to itself (of the folder
    ``name``, when given), not a change: the give-back is then compared with the copy as
    any other, which tells whether dsync gave it all.  (Taken for a change, every restore
    into a login that has such a folder failed, exit 17, after 3 tries.)"""
    m = _SELF_RENAME.search(desync)
    if m is None or "%25" not in m.group(1):
        return False
    return name is None or m.group(1).replace("%25", "%") == name


_ASIDE = re.compile(r"ims-moving-(\d+)-\d+\Z")     # _move_guids's name for a folder aside
#: dsync's warning when, giving a folder back, it finds a message the check did not see
_CONFLICT = re.compile(r"Deleting mailbox '([^']*)': UID=(\d+) already exists")


def _block_mailbox(block: str) -> str | None:
    """The ``mailbox:`` field of one block of a ``doveadm fetch``, or None."""
    m = re.search(r"^mailbox: (.*)$", block, re.M)
    return m.group(1) if m else None


def _json_rows(user: str, out: str) -> list[dict]:
    """The rows of a ``doveadm -f json mailbox status``."""
    try:
        rows = json.loads(out or "[]")
        return [{k: str(v) for k, v in row.items()} for row in rows]
    except (ValueError, TypeError, AttributeError):
        raise StoreError(f"doveadm mailbox status -u {user}: unexpected output {out[:200]!r}") from None


#: what dsync (Dovecot 2.3) reads as an escaped character in a folder name: other '%' it keeps
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")

#: the longest file name (Linux, and the file systems Dovecot stores are on)
NAME_MAX = 255


def _too_long(name: str) -> bool:
    """Would the folder's Maildir++ directory (".A.B", modified UTF-7) be too long a name?"""
    return len(("." + utf7.encode(name)).encode()) > NAME_MAX


def _why(name: str, where: str = "", stops: bool = False) -> str:
    """What keeps doveadm backup from copying the folder to the temporary Maildir++
    (``stops``: dsync stopped on it, so it was left out of the copy)."""
    if stops:
        return ("whose name holds '%' and two hex digits not at all (dsync reads '%XX' as an "
                "escaped character, and one such name of this login stopped the copy of the whole "
                "login: they were left out)")
    if _ESCAPE.search(name):
        return (f"has '%' and two hex digits{where} (dsync reads '%XX' as an escaped character)"
                if where else "whose name holds '%' and two hex digits under another name "
                "(dsync reads '%XX' as an escaped character)")
    if _too_long(name):
        return (f"has a name too long for the temporary Maildir++ copy (over {NAME_MAX} bytes "
                f"as one directory name)") if where else (
                "whose name is too long for the temporary Maildir++ copy (over "
                f"{NAME_MAX} bytes as one directory name) not at all")
    if "." in name:
        return (f"has '.'{where} (the temporary Maildir++ copy cannot hold it)" if where else
                "whose name holds '.' under another name (the temporary Maildir++ copy makes it '_')")
    return (f"cannot be copied under its name{where}" if where else
            "under another name (the temporary Maildir++ copy cannot hold its name)")


def _without(name: str) -> str:
    if _ESCAPE.search(name):
        return "without '%'"
    if _too_long(name):
        return "shorter, or move it up the tree"
    if "." in name:
        return "without '.'"
    return "so that a Maildir++ copy can hold it"


class _CopyDoveadm(Doveadm):
    """doveadm on a login's Maildir copy in WORK (``-o mail_location=maildir:COPY``)."""

    def __init__(self, conf: str, binary: str, store: DboxStore):
        super().__init__(conf, binary, store._dv.settings)
        self._store = store

    @property
    def hold_fd(self):
        return self._store._dv.hold_fd

    def run(self, login: str, command: str, *args: str, options=(), formatter: str | None = None) -> str:
        options = [*options, f"mail_location=maildir:{self._store._maildir(login)}"]
        return super().run(login, command, *args, options=options, formatter=formatter)


def _writable(name: str):
    inner = getattr(MaildirStore, name)

    def method(self, user, *args, **kwargs):
        if name != "hold_deliveries":
            self._ensure_copy(user)
            self._refuse_renamed(user)
            if user in self._exported:
                self._pending.add(user)
                touched = self._touched.setdefault(user, set())
                if name in ("delete_user", "create_user") or touched is None:
                    self._touched[user] = None          # the whole login
                else:
                    touched.add(args[0] if args else kwargs["folder"])
            self._names.pop(user, None)       # the copy's folders change: not kept
        return inner(self, user, *args, **kwargs)
    method.__name__ = name
    method.__doc__ = inner.__doc__
    return method


for _name in _WRITES:
    if _name not in vars(DboxStore):
        setattr(DboxStore, _name, _writable(_name))
