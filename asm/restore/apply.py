"""Writing what a plan says: one archived message into its folder (bytes, or a hard link
to its first copy), the duplicate check, and the spool of first copies a stream may
still need."""
from __future__ import annotations

import contextlib
import os
import time

from asm.archive.errors import DigestMismatch
from asm.errors import EXIT_PARTIAL
from asm.locks import pid_alive
from asm.restore.errors import ArchiveReadFailed
from asm.restore.options import RestoreOptions, RestoreResult
from asm.restore.plan import FolderPlan
from asm.store.base import Store, StoreError, UidInUse, UidPassed, stored_sha256
from asm.trees import remove_tree

CHUNK = 1 << 20
SPOOL_PREFIX = "restore-"       # restore-<pid>-<random>: one run's spool of first copies


def pop3_kwargs(m, plan=None) -> dict:
    """What POP3 clients know an archive's message by, as Store.append keywords: with a
    chain given in one command (``plan.final_flags``), the POP3 UIDL and order its end
    records for the UID (Dovecot's pop3_save_uidl saved them after the archive that
    carries the message), as its flags are the end's."""
    uidl, order = m.pop3_uidl, m.pop3_order
    end = plan.final_flags.pop3_of(m.uid) if plan is not None and plan.final_flags is not None else None
    if end is not None:
        uidl, order = end
    return {"basename": m.basename, "pop3_uidl": uidl, "pop3_order": order}


def _day(t: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
    except (OverflowError, OSError, ValueError):
        return f"{t:.0f}"


def date_not_kept(uid: int, want: float, got: float, done: str = "restored", name: str = "") -> str | None:
    """What to say when the store kept another INTERNALDATE than the archive's (or the
    mbox's: ``done`` "imported", ``name`` the message as the line calls it, default
    "message UID"); a Maildir's is the file's mtime, and ext4 holds only 1901-12-13 ..
    2446-05-10), else None; the message itself is stored.  Whole seconds count
    (sub-second precision is the file system's)."""
    if int(got) == int(want):
        return None
    return (f"{name or f'message {uid}'}: its INTERNALDATE {_day(want)} could not be kept: the store holds "
            f"{_day(got)} (a Maildir's INTERNALDATE is its file's mtime, and this file system "
            f"cannot hold that date); the message is {done} with that date")


def clean_spools(base: str) -> None:
    """Remove the spools of restores that are gone (killed: their own cleanup never ran)."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for n in names:
        pid_s = n[len(SPOOL_PREFIX):].partition("-")[0]
        if n.startswith(SPOOL_PREFIX) and pid_s.isdigit() and not pid_alive(int(pid_s)):
            remove_tree(os.path.join(base, n))


class _Source:
    """A member's byte stream handed to the store: read errors are the archive's."""

    def __init__(self, f):
        self.f = f

    def read(self, n=-1):
        try:
            return self.f.read(n)
        except OSError as exc:
            raise ArchiveReadFailed(exc) from exc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


class Applier:
    """Puts archived messages into planned folders; remembers where first copies landed
    (for the links that follow) and spools first copies a stream may need later."""

    def __init__(self, store: Store, reader, opts: RestoreOptions, res: RestoreResult,
                 selecting: bool, report):
        self.store = store
        self.reader = reader
        self.opts = opts
        self.res = res
        self.selecting = selecting              # only some folders are restored
        self.report = report
        self.placed: dict[str, str] = {}        # archive member name -> restored file path
        self.spool_dir: str | None = None
        self.spooled: dict[str, str] = {}       # member name -> spool file
        self.spool_bytes = 0
        # first copies found damaged (member name -> its DigestMismatch): a link to one is
        # damaged too, never a reference for imsrestore -r (this archive has no good copy)
        self.damaged: dict[str, DigestMismatch] = {}
        self._deferred_n = 0
        # (user, folder, its UIDVALIDITY) -> {store UID: (archive UIDVALIDITY, archived UID)}:
        # which archived message each message of a folder this command restored or took
        # for a duplicate is, so two archived messages with the same bytes are never both
        # taken for one message there (a chain's second link, a copy restored by the first)
        self._claims: dict = opts.claims
        if opts.spool_dir:
            clean_spools(opts.spool_dir)

    def close(self) -> None:
        if self.spool_dir:
            remove_tree(self.spool_dir)
            self.spool_dir = None

    # -- the duplicate check ----------------------------------------------------
    def _same_bytes(self, plan: FolderPlan, c, sha256: str) -> bool:
        # (of the message as a client gets it: a file Dovecot's zlib plugin compressed
        # is the message decompressed, as the archive holds it)
        d = plan.digests.get(c.path)
        if d is None:
            d = plan.digests[c.path] = stored_sha256(c)
        if d is None:
            # renamed since the plan listed it (Dovecot changed its flags while the
            # restore let go of the folder between batches): look it up once more
            try:
                fresh = self.store.message(plan.user, plan.folder, c.uid)
            except StoreError:
                return False
            d = plan.digests[fresh.path] = stored_sha256(fresh)
        return d == sha256

    def _claims_of(self, plan: FolderPlan) -> dict:
        return self._claims.setdefault((plan.user, plan.folder, plan.uidvalidity), {})

    def _free(self, plan: FolderPlan, c, m) -> bool:
        """Whether ``c`` may be archived message ``m``: no other archived message of this
        run is it already."""
        who = self._claims_of(plan).get(c.uid)
        return who is None or (m.uid is not None and who == (plan.archive_uidvalidity, m.uid))

    def _takes(self, plan: FolderPlan, c, m) -> bool:
        """Whether ``c`` may be taken for archived message ``m`` it is not at the UID of:
        free (:meth:`_free`), and, in the archive's UIDVALIDITY, at no UID of the
        archive (nor of the chain's end): a message there is the archived message of its
        own UID, which the same-UID match gives it, never a copy of another one with the
        same bytes (a folder that held a message twice, one copy expunged, would get
        nothing back: archived UID 1 taken for the copy at UID 2, which archived UID 2
        then is too)."""
        if not self._free(plan, c, m):
            return False
        if not plan.same or c.uid == m.uid:
            return True
        return c.uid not in plan.archive_uids and (plan.final_uids is None or c.uid not in plan.final_uids)

    def _claim(self, plan: FolderPlan, uid: int, m) -> None:
        if m.uid is not None:
            self._claims_of(plan)[uid] = (plan.archive_uidvalidity, m.uid)

    def duplicate(self, plan: FolderPlan, m) -> object | None:
        """:meth:`_duplicate`, claimed for ``m`` (see ``_claims``)."""
        dup = self._duplicate(plan, m)
        if dup is not None:
            self._claim(plan, dup.uid, m)
        return dup

    def _duplicate(self, plan: FolderPlan, m) -> object | None:
        """The existing message this archived one already is, or None.

        In the same UIDVALIDITY the UID is the identity: a message at the archived UID
        with the same bytes is it; an archived UID at or above UIDNEXT is new (the next
        link of a chain, or the rest of an interrupted restore) even when another
        message has the same bytes.  Otherwise any message with the same bytes is it,
        except one at another UID of the archive (or of the chain's end), which is that
        UID's archived message (:meth:`_takes`): one live message per archived one.
        A folder this archive's restore created is checked by UID alone when the
        restore resumes (even with -i), and not at all the first time.  With -i
        nothing else is checked, except what a run of this same command cut short
        stored (at or above ``plan.own_from``: docs/restore-design.md §2)."""
        if self.opts.ignore_duplicates and plan.own_from is not None and not plan.resumed:
            return self._own(plan, m)
        if (plan.mode == "exact" or self.opts.ignore_duplicates) and not plan.resumed:
            return None
        same_uid = plan.by_uid.get(m.uid) if plan.same else None
        if same_uid is not None and same_uid.size == m.size and self._free(plan, same_uid, m) \
                and self._same_bytes(plan, same_uid, m.sha256):
            return same_uid
        if self.fills(plan, m):
            # its UID was left free for it; it may be here only as a copy a run cut short
            # stored under a new UID (outside the archive's UIDs), never as another
            # archived message with the same bytes, nor the copy another one was taken for
            for c in plan.existing.get(m.size, []):
                if c.uid not in plan.archive_uids and self._free(plan, c, m) and self._same_bytes(
                        plan, c, m.sha256):
                    return c
            return None
        if self.opts.ignore_duplicates:
            return self._own(plan, m) if plan.own_from is not None else None
        if plan.same and same_uid is None and m.uid >= plan.uidnext:
            return None
        for c in plan.existing.get(m.size, []):
            if self._takes(plan, c, m) and self._same_bytes(plan, c, m.sha256):
                return c
        return None

    def _own(self, plan: FolderPlan, m) -> object | None:
        """-i: the message a run of this command cut short stored here already (at or
        above the UID it began at), or None."""
        same_uid = plan.by_uid.get(m.uid) if plan.same else None
        if same_uid is not None and same_uid.uid >= plan.own_from and same_uid.size == m.size \
                and self._free(plan, same_uid, m) and self._same_bytes(plan, same_uid, m.sha256):
            return same_uid
        for c in plan.existing.get(m.size, []):
            if c.uid >= plan.own_from and self._takes(plan, c, m) and self._same_bytes(plan, c, m.sha256):
                return c
        return None

    def _check(self, m) -> None:
        """A selected message the store holds already is not copied, but its bytes in
        the archive are still read and checked: exit 0 means the archive was whole
        (otherwise a pipe would discard them unhashed and a file would seek past)."""
        if m.kind == "message":
            m.check()

    @staticmethod
    def fills(plan: FolderPlan, m) -> bool:
        """A folder this archive's restore made, resumed: an archived UID below the
        folder's UIDNEXT that no message holds was left free for this message by a run
        that could not write it (a link whose first copy a stream could not keep, a
        message the store refused, a disk that filled after UIDNEXT was raised): it
        goes there (``fill``), as ``imsrestore -r`` puts it, not under a new UID.
        The same in a folder that mirrors the chain's earlier link: an archived UID it
        lacks below its UIDNEXT is a message that link's backup could not read (its
        state left it out, so this incremental carries it); nothing else can be there."""
        if not plan.same or m.uid >= plan.uidnext or m.uid in plan.by_uid:
            return False
        return (plan.mode == "exact" and plan.resumed) or (plan.mode == "chain" and m.uid in plan.archive_uids)

    @staticmethod
    def unlanded(dup, m) -> bool:
        """A message a run cut short stored (``dup``, at the archived UID of ``m``) lacks
        archived keywords that did not land (beyond 26: given to Dovecot by doveadm when
        the folder is let go, which the kill prevented).  Any other difference is a
        client's, made in the folder between the runs (a flag set, a message marked
        unread): kept, as a merge keeps what is there; the system flags are written with
        the file and always land."""
        return set(dup.flags) == set(m.flags) and set(dup.keywords) < set(m.keywords)

    @staticmethod
    def target_uid(plan: FolderPlan, m) -> int | None:
        if plan.mode == "exact" and not plan.resumed:
            return m.uid
        if plan.same and m.uid >= plan.uidnext:
            return m.uid
        return None

    # -- one message ------------------------------------------------------------
    def restore_message(self, plan: FolderPlan, m) -> None:
        try:
            self._restore_message(plan, m)
        except DigestMismatch as exc:
            if m.kind == "message" and m.nlink > 1:
                self.damaged.setdefault(m.name, exc)    # the links to it cannot be restored
            raise

    def _restore_message(self, plan: FolderPlan, m) -> None:
        store = self.store
        if plan.mode == "skip":             # the folder holds this archive already
            self._check(m)
            self.res.duplicates += 1
            return
        dup = self.duplicate(plan, m)
        same = plan.same
        if dup is not None:
            self._check(m)
            self.res.duplicates += 1
            if same and dup.uid != m.uid:
                # here already, but not at its archived UID (kept aside and stored under a
                # new one by a run cut short since): the folder is no mirror of the archive,
                # and another message may hold the archived UID
                plan.renumbered += 1
                if m.uid in plan.by_uid and not (
                        self.opts.ignore_duplicates and self._same_bytes(plan, plan.by_uid[m.uid], m.sha256)):
                    # (with -i, the message there before the command, whose copy this run
                    # stored at a new UID as asked, is not another message)
                    plan.taken.append(m.uid)
            path = dup.path
            if dup.uid == m.uid and (plan.mode == "chain" or plan.resumed and self.unlanded(dup, m)):
                # chain: the flags of this link; resumed: stored by the run cut short,
                # whose flags did not all land (keywords beyond 26, given to Dovecot by
                # doveadm when the folder is let go, which failed).  Set before the file
                # is remembered for the links that follow: a new flag renames a Maildir file
                path = store.set_flags(plan.user, plan.folder, dup.uid, m.flags, m.keywords).path
            if dup.uid == m.uid and plan.mode == "chain" and \
                    (m.pop3_uidl or "", m.pop3_order or 0) != (dup.pop3_uidl or "", dup.pop3_order or 0):
                # carried again by this link (an incremental by date: Dovecot renamed the
                # file, from new/ to cur/ at a POP3 login) with the POP3 UIDL Dovecot saved
                # since the link before (pop3_save_uidl): the chain's UIDL, not the older one
                store.set_pop3(plan.user, plan.folder, dup.uid, m.pop3_uidl or "", m.pop3_order or 0)
            self._place(m, path)
            store.let_others_in(plan.user, plan.folder)
            return
        if same and plan.mode == "chain" and m.uid in plan.by_uid and m.uid < plan.uidnext \
                and m.uid not in plan.stored:
            self._replace(plan, m.uid)
        fill = self.fills(plan, m)
        uid = m.uid if fill else self.target_uid(plan, m)
        if uid is not None and uid < plan.uidnext and not fill:
            uid = None             # passed already (another writer came between batches)
        if same and m.uid in plan.by_uid and uid is None and not (
                self.opts.ignore_duplicates and self._same_bytes(plan, plan.by_uid[m.uid], m.sha256)):
            plan.taken.append(m.uid)            # another message holds the archived UID
        # (kept aside only while archived UIDs can still be kept: below the archive's UIDNEXT)
        later = same and plan.uidnext < plan.archive_uidnext
        if uid is None and later and self._defer(plan, m):
            return
        try:
            info = self._append(plan, m, uid, fill=fill)
        except UidInUse as exc:    # someone took it meanwhile (or clients were told it
            # is gone: UidPassed): a new UID instead
            (plan.passed if isinstance(exc, UidPassed) else plan.taken).append(m.uid)
            uid = None
            if later and self._defer(plan, m):
                return
            info = self._append(plan, m, None)
        if info is None:
            return
        self._done(plan, m, info, renumbered=uid is None)
        # the store's folder lock is held in short batches: IMAP and LMTP go on between
        # them (docs/restore-design.md, "Live restores")
        store.let_others_in(plan.user, plan.folder)

    def _replace(self, plan: FolderPlan, uid: int) -> None:
        """A link of the chain carries another message under a UID that the folder holds
        from the link before it (and it mirrors that link): the store handed the UID out
        again (put back from a file-level backup, it gave its old UIDs to new mail), and
        the earlier message was gone when this link was taken.  Expunged here, so that
        the carried message takes its UID (Applier.fills), as the store had it."""
        self.res.expunged += self.store.expunge(plan.user, plan.folder, [uid])
        gone = plan.by_uid.pop(uid, None)
        if gone is not None:
            plan.existing[gone.size] = [c for c in plan.existing.get(gone.size, []) if c.uid != uid]
        self._claims_of(plan).pop(uid, None)

    def _done(self, plan: FolderPlan, m, info, renumbered: bool) -> None:
        why = date_not_kept(info.uid, m.internaldate, info.internaldate)
        if why is not None:                  # restored, but named: exit 1
            mailbox = f"/{plan.partition}/{plan.user}/{plan.folder}"
            self.res.errors.append({"mailbox": mailbox, "error": why, "status": EXIT_PARTIAL})
            self.report(f"error: {mailbox}: {why}")
        self._place(m, info.path)
        self._claim(plan, info.uid, m)
        if renumbered:
            self.res.renumbered += 1
            plan.renumbered += 1
        plan.restored += 1
        plan.stored.add(info.uid)
        plan.by_uid.setdefault(info.uid, info)
        plan.uidnext = max(plan.uidnext, info.uid + 1)

    # -- messages that take new UIDs, at the folder's end ----------------------------
    # In a folder of the archive's UIDVALIDITY a message that cannot keep its UID (passed
    # already, or taken by a message a client stored while the folder was half restored)
    # is kept aside and stored after the rest: given its new UID at once it would take
    # the UID of an archived message still to come, and that one the next, and so on
    # (one IMAP APPEND between a killed run and its rerun renumbered 77 of 120).

    def _defer(self, plan: FolderPlan, m) -> bool:
        """Keep ``m`` for :meth:`finish_deferred`: its first copy's path, or its bytes in
        the spool (checked against their digest as they are read).  False when the spool
        cannot take it (it is then stored at once, as before)."""
        flags, keywords = self.flags_for(plan, m)
        meta = (m, flags, keywords)
        link_from = self.placed.get(m.linkname if m.kind == "link" else m.name)
        if link_from is not None and os.path.exists(link_from):
            plan.deferred.append((meta, link_from, False))
            return True
        if self.spool_bytes + m.size > self.opts.spool_limit:
            return False
        src = m.open() if m.kind == "message" else self._link_source(m)
        if src is None:
            return False                        # recorded as pending by _append
        self._deferred_n += 1
        path = os.path.join(self._spool(), f"deferred-{self._deferred_n}.msg")
        try:
            with _Source(src) as source, open(path, "wb") as out:
                while True:
                    chunk = source.read(CHUNK)      # a digest mismatch propagates: damage
                    if not chunk:
                        break
                    out.write(chunk)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            if isinstance(exc, ArchiveReadFailed):
                raise
            self.opts.spool_limit = self.spool_bytes    # the spool is full: no more of it
            return False
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        self.spool_bytes += m.size
        if m.kind == "message" and m.nlink > 1:
            self.spooled.setdefault(m.name, path)       # a link in this folder may need it
        plan.deferred.append((meta, path, True))
        return True

    def finish_deferred(self, plan: FolderPlan) -> None:
        """Store the messages kept aside, each under a new UID above the archive's, once
        the folder's UIDNEXT was raised to the archive's (the caller holds the lock)."""
        plan.deferred.reverse()              # taken from the end: in archive order, O(1) each
        while plan.deferred:
            (m, flags, keywords), path, spooled = plan.deferred[-1]
            kwargs = dict(uid=None, flags=flags, keywords=keywords, internaldate=m.internaldate,
                          stored=m.stored if self.store.restore_keeps_stored else None, guid=m.guid,
                          **pop3_kwargs(m, plan))
            if spooled:
                with open(path, "rb") as f:
                    info = self.store.append(plan.user, plan.folder, f, **kwargs)
                self.res.messages += 1
                self.res.bytes += info.size
            else:
                info = self.store.append(plan.user, plan.folder, None, link_from=path, **kwargs)
                self.res.links += 1
            self._done(plan, m, info, renumbered=True)
            plan.deferred.pop()
            if spooled:
                self.drop_deferred_file(path)

    def drop_deferred(self, plan: FolderPlan) -> None:
        """A folder cut short: what was kept aside goes (the same command run again
        restores it)."""
        for _meta, path, spooled in plan.deferred:
            if spooled:
                self.drop_deferred_file(path)
        plan.deferred.clear()

    def drop_deferred_file(self, path: str) -> None:
        for k in [k for k, v in self.spooled.items() if v == path]:
            del self.spooled[k]
        with contextlib.suppress(OSError):
            self.spool_bytes -= os.path.getsize(path)
            os.unlink(path)

    def _spool(self) -> str:
        if self.spool_dir is None:
            import tempfile           # a stream's restore alone spools (every command's start)
            base = self.opts.spool_dir or tempfile.gettempdir()
            os.makedirs(base, exist_ok=True)
            self.spool_dir = tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", dir=base)
        return self.spool_dir

    def _append(self, plan: FolderPlan, m, uid: int | None, fill: bool = False):
        """Store one message (as a hard link to its first copy when that is here);
        None when its bytes are not available from this stream (recorded as pending)."""
        store = self.store
        flags, keywords = self.flags_for(plan, m)
        kwargs = dict(uid=uid, flags=flags, keywords=keywords, internaldate=m.internaldate,
                      stored=m.stored if store.restore_keeps_stored else None, guid=m.guid,
                      fill=fill, **pop3_kwargs(m, plan))
        link_from = self.placed.get(m.linkname if m.kind == "link" else m.name)
        if link_from is not None and os.path.exists(link_from):
            info = store.append(plan.user, plan.folder, None, link_from=link_from, **kwargs)
            self.res.links += 1
            return info
        src = m.open() if m.kind == "message" else self._link_source(m)
        if src is None:
            self._pending(plan, m, uid)
            return None
        with _Source(src) as source:
            info = store.append(plan.user, plan.folder, source, **kwargs)
        self.res.messages += 1
        self.res.bytes += info.size
        return info

    @staticmethod
    def flags_for(plan: FolderPlan, m) -> tuple:
        """The flags and keywords a message is restored with: the chain's end's when the
        chain is given in one command (an archive before the last one restores it), else
        the archive's."""
        if plan.final_flags is not None:
            end = plan.final_flags.get(m.uid)
            if end is not None:
                return end
        return m.flags, m.keywords

    def _place(self, m, path: str) -> None:
        """Remember where a first copy landed, for the links that follow.  Only files
        that had other links at backup time can be link targets: memory stays small."""
        if m.kind == "link":
            self.placed.setdefault(m.linkname, path)
        elif m.nlink > 1:
            self.placed.setdefault(m.name, path)

    def _link_source(self, m):
        """The bytes of a link whose first copy was not restored in this run (its
        first copy's damage when that was found damaged: named, as a file's would be)."""
        bad = self.damaged.get(m.linkname)
        if bad is not None:
            raise DigestMismatch(bad.name, bad.expected, bad.actual)
        spooled = self.spooled.get(m.linkname)
        if spooled is not None:
            return open(spooled, "rb")
        if self.reader.seekable:
            return self.reader.read_member_at(m)
        return None

    def _pending(self, plan: FolderPlan, m, uid) -> None:
        plan.failed += 1
        flags, keywords = self.flags_for(plan, m)
        self.res.pending.append({
            "member": m.name, "target": m.linkname, "sha256": m.sha256, "size": m.size,
            "partition": plan.partition, "user": plan.user, "folder": plan.folder, "uid": m.uid,
            "uidvalidity": plan.uidvalidity, "flags": sorted(flags), "keywords": list(keywords),
            "internaldate": m.internaldate, "stored": m.stored, "guid": m.guid, **pop3_kwargs(m, plan)})
        self.report(f"/{plan.partition}/{plan.user}/{plan.folder}/{m.uid}: first copy {m.linkname} is "
                    f"not available from this stream; recorded for imsrestore -r")

    # -- the spool of first copies ------------------------------------------------
    def maybe_spool(self, m) -> None:
        """On a stream, keep the bytes of an unselected first copy that a selected link
        may still need (nlink > 1), within the spool limit."""
        if m.kind != "message" or m.nlink < 2 or self.reader.seekable or not self.selecting:
            return
        if self.spool_bytes + m.size > self.opts.spool_limit:
            return
        path = os.path.join(self._spool(), f"{len(self.spooled)}.msg")
        out = None
        try:
            with m.open() as src:
                out = open(path, "wb")
                while True:
                    chunk = src.read(CHUNK)     # an archive read error propagates
                    if not chunk:
                        break
                    try:
                        out.write(chunk)
                    except OSError:             # spool full: go on without this copy
                        out.close()
                        out = None
                        os.unlink(path)
                        self.opts.spool_limit = self.spool_bytes
                        return
        except DigestMismatch as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self.damaged.setdefault(m.name, exc)    # a link to it is named damaged, not pending
            return
        finally:
            if out is not None:
                out.close()
        self.spooled[m.name] = path
        self.spool_bytes += m.size
