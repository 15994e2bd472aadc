"""Writing what a plan says: one archived message into its folder (bytes, or a hard link
to its first copy), the duplicate check, and the spool of first copies a stream may
still need."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from asm.archive.errors import DigestMismatch
from asm.locks import pid_alive
from asm.restore.errors import ArchiveReadFailed
from asm.restore.options import RestoreOptions, RestoreResult
from asm.restore.plan import FolderPlan
from asm.store.base import Store, StoreError, UidInUse, stored_sha256

CHUNK = 1 << 20
SPOOL_PREFIX = "restore-"       # restore-<pid>-<random>: one run's spool of first copies


def clean_spools(base: str) -> None:
    """Remove the spools of restores that are gone (killed: their own cleanup never ran)."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for n in names:
        pid_s = n[len(SPOOL_PREFIX):].partition("-")[0]
        if n.startswith(SPOOL_PREFIX) and pid_s.isdigit() and not pid_alive(int(pid_s)):
            shutil.rmtree(os.path.join(base, n), ignore_errors=True)


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
        if opts.spool_dir:
            clean_spools(opts.spool_dir)

    def close(self) -> None:
        if self.spool_dir:
            shutil.rmtree(self.spool_dir, ignore_errors=True)
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

    def duplicate(self, plan: FolderPlan, m) -> object | None:
        """The existing message this archived one already is, or None.

        In the same UIDVALIDITY the UID is the identity: a message at the archived UID
        with the same bytes is it; an archived UID at or above UIDNEXT is new (the next
        link of a chain, or the rest of an interrupted restore) even when another
        message has the same bytes.  Otherwise any message with the same bytes is it.
        A folder this archive's restore created is checked by UID alone when the
        restore resumes (even with -i), and not at all the first time."""
        if (plan.mode == "exact" or self.opts.ignore_duplicates) and not plan.resumed:
            return None
        same_uid = plan.by_uid.get(m.uid) if plan.uidvalidity == plan.archive_uidvalidity else None
        if same_uid is not None and same_uid.size == m.size and self._same_bytes(plan, same_uid, m.sha256):
            return same_uid
        if self.opts.ignore_duplicates:
            return None
        if plan.uidvalidity == plan.archive_uidvalidity and same_uid is None and m.uid >= plan.uidnext:
            return None
        for c in plan.existing.get(m.size, []):
            if self._same_bytes(plan, c, m.sha256):
                return c
        return None

    def _check(self, m) -> None:
        """A selected message the store holds already is not copied, but its bytes in
        the archive are still read and checked: exit 0 means the archive was whole
        (otherwise a pipe would discard them unhashed and a file would seek past)."""
        if m.kind == "message":
            m.check()

    @staticmethod
    def target_uid(plan: FolderPlan, m) -> int | None:
        if plan.mode == "exact" and not plan.resumed:
            return m.uid
        if plan.uidvalidity == plan.archive_uidvalidity and m.uid >= plan.uidnext:
            return m.uid
        return None

    # -- one message ------------------------------------------------------------
    def restore_message(self, plan: FolderPlan, m) -> None:
        store = self.store
        if plan.mode == "skip":             # the folder holds this archive already
            self._check(m)
            self.res.duplicates += 1
            return
        dup = self.duplicate(plan, m)
        if dup is not None:
            self._check(m)
            self.res.duplicates += 1
            self._place(m, dup.path)
            if plan.mode == "chain" and dup.uid == m.uid:
                store.set_flags(plan.user, plan.folder, dup.uid, m.flags, m.keywords)
            store.let_others_in(plan.user, plan.folder)
            return
        uid = self.target_uid(plan, m)
        if uid is not None and uid < plan.uidnext:
            uid = None             # passed already (another writer came between batches)
        try:
            info = self._append(plan, m, uid)
        except UidInUse:           # someone took it meanwhile: a new UID instead
            if not plan.renumbered:
                self.report(f"{plan.mailbox}: UID {m.uid} was taken by a message stored "
                            f"meanwhile (IMAP APPEND or a delivery): the archived messages "
                            f"from there on get new UIDs")
            uid = None
            info = self._append(plan, m, None)
        if info is None:
            return
        self._place(m, info.path)
        if uid is None:
            self.res.renumbered += 1
            plan.renumbered += 1
        plan.restored += 1
        plan.by_uid.setdefault(info.uid, info)
        plan.uidnext = max(plan.uidnext, info.uid + 1)
        # the store's folder lock is held in short batches: IMAP and LMTP go on between
        # them (docs/restore-design.md, "Live restores")
        store.let_others_in(plan.user, plan.folder)

    def _append(self, plan: FolderPlan, m, uid: int | None):
        """Store one message (as a hard link to its first copy when that is here);
        None when its bytes are not available from this stream (recorded as pending)."""
        store = self.store
        flags, keywords = self.flags_for(plan, m)
        kwargs = dict(uid=uid, flags=flags, keywords=keywords, internaldate=m.internaldate,
                      stored=m.stored if store.restore_keeps_stored else None, guid=m.guid)
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
        """The bytes of a link whose first copy was not restored in this run."""
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
            "internaldate": m.internaldate, "stored": m.stored, "guid": m.guid})
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
        if self.spool_dir is None:
            base = self.opts.spool_dir or tempfile.gettempdir()
            os.makedirs(base, exist_ok=True)
            self.spool_dir = tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", dir=base)
        path = os.path.join(self.spool_dir, f"{len(self.spooled)}.msg")
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
        except DigestMismatch:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        finally:
            if out is not None:
                out.close()
        self.spooled[m.name] = path
        self.spool_bytes += m.size
