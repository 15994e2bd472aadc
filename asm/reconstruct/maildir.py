"""Reconstruct for Maildir++ stores (the ``maildir`` driver, Dovecot's own stores).

In a Maildir the message files in ``cur/`` and ``new/`` are the messages, their names
carry the flags, and ``dovecot-uidlist`` is the only record of their UIDs and of the
folder's UIDVALIDITY and UIDNEXT.  Checked per folder:

* ``cur/ new/ tmp/`` present (made when missing);
* ``dovecot-uidlist`` readable, against the files: lines without a file (Dovecot
  drops those lazily after an expunge, so they are only named), files without a line
  (orphans), a missing or damaged list;
* the UIDVALIDITY and the UIDs of orphans, taken from the best witness: the uidlist
  itself, what Dovecot's index files remember (``doveadm dump``), the restore journal,
  archives (a message is recognised by its SHA-256);
* ``dovecot-keywords`` present when file names use keyword letters; ``subscriptions``;
* Dovecot's index files older than the uidlist, or remembering another UIDVALIDITY or
  UIDs beyond the uidlist.

Orphans no witness knows are numbered at UIDNEXT in order of arrival, as Dovecot does
for mail an MDA delivered (when the uidlist was intact and nobody saw higher UIDs that
is exactly new mail, and only noted).  Dovecot's index files are removed where they
would contradict the repaired uidlist (as the driver does), and ``doveadm
force-resync`` then rebuilds them, as the mail user, where Dovecot is installed.
"""
from __future__ import annotations

import contextlib
import errno
import os
import time
import uuid

from asm.config import Config
from asm.reconstruct import LOST, NOTE, REPAIRED, UNKNOWN, Report
from asm.reconstruct import uid_list as _uids
from asm.reconstruct.dovecot import Dovecot
from asm.reconstruct.knowledge import Knowledge
from asm.store.base import (
    StoreError, check_folder_name, compression_of, os_store_error, path_sha256, write_all,
)
from asm.store.maildir.names import SIZE_RE
from asm.store.maildir.store import BASE_OK, record_fields, sizes_match
from asm.store.maildir.uidlist import mailbox_guid, open_uidlist
from asm.store.maildir import (
    INDEX_FILES, KEYWORDS, LIST_INDEX_FILES, LOCK_SUFFIX, SUBSCRIPTIONS, UIDLIST, MaildirStore, Uidlist,
    level_to_disk, split_name, stored_from_name,
)

TMP_STALE_SECS = 36 * 3600          # Dovecot removes tmp/ files older than this itself


def _message_sha256(path: str, base: str) -> str | None:
    """The SHA-256 of the message as the archive records it (as a client gets it): of
    the file decompressed where Dovecot's zlib plugin compressed it (a file whose size
    is not its name's S=, as the store reads it); None when it cannot be read."""
    m = SIZE_RE.search(base)
    try:
        compressed = compression_of(path) if m and int(m.group(1)) != os.stat(path).st_size else ""
    except OSError:
        return None
    return path_sha256(path, compressed, missing=OSError)


def _record_fields(base: str, w) -> str:
    """A rebuilt uidlist record's G (GUID), P (POP3 UIDL) and O (POP3 order) fields, as
    the archive's witness ``w`` knows them (a restore writes the same, docs/format.md):
    where the file's name is not its GUID (a zlib Maildir's restored files, whose
    archived names state the uncompressed size), Dovecot's X-GUID comes from G."""
    return "" if w is None else record_fields(base, w.guid, w.pop3_uidl, w.pop3_order)


class _Parsed:
    """A dovecot-uidlist read leniently: whatever lines are sound."""

    def __init__(self, path: str):
        self.path = path
        self.exists = False
        self.header_ok = False
        self.uidvalidity: int | None = None
        self.uidnext = 1
        self.extra: list = []
        self.records: dict = {}          # uid -> (ext, base)
        self.bad_lines = 0
        self.mtime = 0.0
        try:
            with open_uidlist(path) as f:
                text = f.read()
            self.mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            return
        except OSError:
            self.exists = True
            self.bad_lines = 1
            return
        self.exists = True
        lines = text.split("\n")
        head = lines[0].split() if lines else []
        try:
            ul = Uidlist.parse(lines[0] + "\n", path) if head else None
        except Exception:       # noqa: BLE001 - any damage in the header: read the lines anyway
            ul = None
        if ul is not None and ul.uidvalidity:
            self.header_ok = True
            self.uidvalidity, self.uidnext, self.extra = ul.uidvalidity, ul.uidnext, list(ul.extra)
        version1 = bool(head) and head[0] == "1"
        for line in lines[1:]:
            if not line:
                continue
            try:
                one = Uidlist.parse(("1 1 1\n" if version1 else "3 V1 N1\n") + line, path)
            except Exception:   # noqa: BLE001
                self.bad_lines += 1
                continue
            for uid, rec in one.records.items():
                if uid in self.records or uid <= 0:
                    self.bad_lines += 1
                    continue
                self.records[uid] = rec
        top = max(self.records, default=0)
        self.uidnext = max(self.uidnext, top + 1)


class MaildirReconstructor:
    def __init__(self, config: Config, knowledge: Knowledge, report: Report, repair: bool = True,
                 dovecot: Dovecot | None = None):
        self.config = config
        self.k = knowledge
        self.report = report
        self.repair = repair
        self.dovecot = dovecot
        # with store.mail_location the folders, uidlists (CONTROL=), index files (INDEX=)
        # and subscriptions are where the layout puts them (the driver's _ctl_idx);
        # sdbox/mdbox are refused by the driver (their records are Dovecot's indexes)
        self.store = MaildirStore(config, create=False)
        self.layout = self.store._layout
        self.owner = config.owner()
        self.timeout = float(config.get_int("store.locktimeout"))
        self.touched: dict = {}          # user -> home: users whose files this run changed
        self.rewritten: dict = {}        # (user, folder) -> {base: uid} written, checked after resync
        self._cur_missing = False        # the folder being checked had no cur/ (folder)

    def mailbox(self, part: str, user: str, folder: str | None = None) -> str:
        return f"/{part}/{user}" + (f"/{folder}" if folder else "")

    # -- -m: nothing to rebuild, but say what the driver cannot read --------------------------
    def mailbox_list(self) -> None:
        n = 0
        for part in self.store.partitions():
            users = self.store.users(part)
            n += len(users)
            try:
                unlisted = self.store.unlisted_users(part)
            except StoreError as exc:         # (Dovecot stopped, an sql userdb: who is elsewhere)
                self.report.add(UNKNOWN, f"/{part}", str(exc))
                unlisted = []
            for u in unlisted:
                self.report.add(UNKNOWN, self.mailbox(part, u.user),
                                f"{u.path}: {u.why}; the maildir driver reads <partition>/<user>/Maildir: "
                                f"move the mail there by hand")
            for user in users:
                self._unlisted_folders(part, user)
        self.report.add(NOTE, "maildir", f"the maildir driver keeps no mailbox list: its {n} users are the "
                                         f"directories of the partitions")
        self.report.users += n

    def _unlisted_folders(self, part: str, user: str) -> None:
        for u in self.store.unlisted_folders(user):
            self.report.add(UNKNOWN, self.mailbox(part, user, u.folder),
                            f"{u.path}: {u.why}; rename it to a Maildir++ folder name (.Name with cur/ new/ tmp/)")

    # -- targets ------------------------------------------------------------------------------
    def targets(self, lp, groups, recursive: bool) -> list[tuple]:
        from asm.logical import PathError, match_folder
        from asm.store.base import NoSuchUser
        parts = self.store.partitions()
        if lp.partition is not None and lp.partition not in parts:
            raise PathError(f"{lp}: no partition {lp.partition!r} (partitions: {', '.join(parts)})")
        if lp.user is not None:
            try:
                part = self.store.user_partition(lp.user)
            except NoSuchUser:
                raise PathError(f"{lp}: no user {lp.user!r} in the store") from None
            if part != lp.partition:
                raise PathError(f"{lp}: user {lp.user!r} is on partition {part!r}, not {lp.partition!r}")
            users = [(part, lp.user)]
        else:
            users = [(p, u) for p in ([lp.partition] if lp.partition else parts)
                     for u in self.store.users(p) if lp.covers_user(p, u, groups)]
        out = []
        for part, user in users:
            names = self._folder_names(user)
            if lp.folder is not None:
                folder = match_folder(lp.folder, names)
                if folder is None:
                    raise PathError(f"{lp}: user {user!r} has no folder {lp.folder!r}")
                names = [n for n in names if n == folder or (recursive and n.startswith(folder + "/"))]
            elif not recursive:
                names = ["INBOX"]
            else:
                self._unlisted_folders(part, user)
                self._subscriptions(part, user)
            out.extend((part, user, n) for n in names)
        return out

    def _folder_names(self, user: str) -> list[str]:
        """The driver's folders, and also ``.Name`` directories that lost their cur/ but
        still hold new/ or tmp/ (they are repaired, not passed over)."""
        names = set(self.store.folder_names(user))
        root = self.store._root(user)
        if self.layout is not None and self.layout.location.layout != "maildir++":
            return ["INBOX"] + sorted(n for n in names if n != "INBOX")
        with contextlib.suppress(OSError):
            for e in os.scandir(root):
                if e.name.startswith(".") and e.is_dir(follow_symlinks=False):
                    logical = MaildirStore.folder_from_dirname(e.name)
                    if logical and (os.path.isdir(os.path.join(e.path, "new"))
                                    or os.path.exists(os.path.join(e.path, UIDLIST))):
                        names.add(logical)
        return ["INBOX"] + sorted(n for n in names if n != "INBOX")

    # -- subscriptions -----------------------------------------------------------------------
    def _subscriptions(self, part: str, user: str) -> None:
        root = self.store._subs_root(user)
        path = os.path.join(root, SUBSCRIPTIONS)
        if os.path.exists(path):
            return
        names = self._folder_names(user)
        if names == ["INBOX"]:
            return
        chosen, unknown = [], []
        for n in names:
            w = self.k.folder(user, n)
            if w is not None and w.subscribed is not None:
                if w.subscribed:
                    chosen.append(n)
            else:
                unknown.append(n)
                chosen.append(n)
        kind = UNKNOWN if unknown else REPAIRED
        self.report.add(kind, self.mailbox(part, user), "the subscriptions file is missing: "
                        + (f"{len(unknown)} folders whose subscription is known nowhere are subscribed"
                           if unknown else "rebuilt from the archives"))
        if self.repair:
            text = "V\t2\n\n" + "".join("\t".join(level_to_disk(x) for x in n.split("/")) + "\n" for n in chosen)
            self._makedirs(root, self.store._root(user))
            self._write(path, text.encode("utf-8", "surrogateescape"), root)
            self.touched[user] = self.store._home(user)

    # -- one folder ------------------------------------------------------------------------------
    def folder(self, target: tuple) -> None:
        part, user, folder = target
        mb = self.mailbox(part, user, folder)
        d = self.store._folder_dir(user, check_folder_name(folder))
        if not os.path.isdir(d):
            self.report.add(LOST, mb, f"the folder's directory {d} is missing; restore it from an archive")
            return
        self.report.folders += 1
        # (Dovecot never removes a folder's cur/: a uidlist listing messages of a folder
        # without one lost them, it did not expunge them; _check says so)
        self._cur_missing = not os.path.isdir(os.path.join(d, "cur"))
        for sub in ("cur", "new", "tmp"):
            p = os.path.join(d, sub)
            if not os.path.isdir(p):
                self.report.add(REPAIRED, mb, f"{sub}/ is missing" + (": made" if self.repair else ""))
                if self.repair:
                    self._mkdir(p, d)
                    self.touched[user] = self.store._home(user)
        if folder != "INBOX" and not os.path.exists(os.path.join(d, "maildirfolder")) and self.repair:
            with contextlib.suppress(OSError):
                os.close(os.open(os.path.join(d, "maildirfolder"), os.O_WRONLY | os.O_CREAT, 0o600))
                self._own(os.path.join(d, "maildirfolder"), d)
        c, i = self.store._ctl_idx(user, folder, d)      # CONTROL= and INDEX= (else d, d)
        if self.repair and c != d and not os.path.isdir(c):
            self.report.add(REPAIRED, mb, f"the control directory {c} is missing: made")
            self._makedirs(c, d)
        lockpath = os.path.join(c, UIDLIST + LOCK_SUFFIX)
        locked = False
        if self.repair and os.path.isdir(os.path.join(d, "cur")):
            self.store._acquire_dotlock(lockpath, self.timeout, f"{user}/{folder} ({lockpath})")
            locked = True
        try:
            self._check(mb, user, folder, d, c, i)
        finally:
            if locked:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lockpath)

    def _mailbox_guid(self, user: str, folder: str, uidvalidity: int) -> str:
        """The mailbox GUID of a folder whose uidlist header is rebuilt: the one a witness
        archived for it (the same name and UIDVALIDITY), as a restore gives it back, when no
        other folder of the user has it now (two mailboxes of an account never share
        one); else a new one.  dsync knows a folder by it: with a new one, a replica took
        the repaired folder for one it lost (docs/operations.md, "GUIDs")."""
        w = self.k.folder(user, folder, uidvalidity)
        guid = w.mailbox_guid if w is not None else ""
        if guid and not self._guid_taken(user, folder, guid):
            return guid
        return uuid.uuid4().hex

    def _guid_taken(self, user: str, folder: str, guid: str) -> bool:
        """Whether another folder of ``user`` has mailbox GUID ``guid`` in its uidlist header."""
        for n in self._folder_names(user):
            if n == folder:
                continue
            try:
                d = self.store._folder_dir(user, check_folder_name(n))
                c, _i = self.store._ctl_idx(user, n, d)
            except StoreError:
                continue
            ul = _Parsed(os.path.join(c, UIDLIST))
            if ul.header_ok and mailbox_guid(ul.extra) == guid:
                return True
        return False

    def _scan(self, mb: str, d: str) -> dict:
        files: dict = {}
        clashes: list = []                    # (subdir, file name) another file's base name has
        for sub in ("new", "cur"):            # cur/ wins when a name is in both
            try:
                entries = list(os.scandir(os.path.join(d, sub)))
            except OSError:
                continue
            for e in entries:
                if e.name.startswith("."):
                    continue
                if not e.is_file(follow_symlinks=False):
                    self.report.add(UNKNOWN, mb, f"{e.path} is not a regular file; left alone (a backup names it)")
                    continue
                base = split_name(e.name)[0]
                if not Uidlist.can_hold(base):
                    self.report.add(UNKNOWN, mb, f"{e.path!r}: the message file's name holds a line break, "
                                                 f"which dovecot-uidlist (one line per message) cannot hold: "
                                                 f"it has no UID; rename it to a name without one and run "
                                                 f"reconstruct again")
                    continue
                had = files.get(base)
                files[base] = (sub, e.name)
                if had is not None:
                    # two names, one base: the one kept is cur/'s, then the smallest (as
                    # the backup's list_messages); the other is looked at below
                    if had[0] == sub and had[1] < e.name:
                        files[base], had = had, (sub, e.name)
                    clashes.append(had)
        for sub, fname in clashes:
            self._duplicate(mb, d, files, sub, fname)
        stale = []
        with contextlib.suppress(OSError):
            now = time.time()
            for e in os.scandir(os.path.join(d, "tmp")):
                with contextlib.suppress(OSError):
                    if e.is_file(follow_symlinks=False) and now - e.stat(follow_symlinks=False).st_mtime > TMP_STALE_SECS:
                        stale.append(e.path)
        if stale:
            self.report.add(NOTE, mb, f"{len(stale)} files in tmp/ older than 36 hours (interrupted deliveries)"
                                      + (": removed" if self.repair else ""))
            if self.repair:
                for p in stale:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p)
        return files

    def _duplicate(self, mb: str, d: str, files: dict, sub: str, fname: str) -> None:
        """A file whose base name the file kept in ``files`` has too (``new/B`` beside
        ``cur/B:2,S``), as the backup (MaildirStore._fix_duplicates) and Dovecot's
        maildir_fix_duplicate treat it: a hard link of the same inode is one message;
        any other file is a message of its own, renamed to a new base name (its sizes,
        flags and subdirectory kept), under which it is numbered as a new message."""
        base, sep, info = fname.partition(":")
        kept = os.path.join(d, *files[base])
        path = os.path.join(d, sub, fname)
        try:
            one, dup = os.lstat(kept), os.lstat(path)
        except OSError:
            return
        if (one.st_dev, one.st_ino) == (dup.st_dev, dup.st_ino):
            self.report.add(NOTE, mb, f"{path} and {kept} are two links of one file: one message")
            return
        new_base = self.store.duplicate_base(base, dup.st_ctime)
        new = new_base + sep + info
        if self.repair:
            try:
                os.rename(path, os.path.join(d, sub, new))
            except OSError as exc:
                self.report.add(UNKNOWN, mb, f"{path}: a second message with the base name of {kept} could not "
                                             f"be given a name of its own ({exc.strerror}): it has no UID; rename "
                                             f"it to a new unique name and run reconstruct again")
                return
        self.report.add(REPAIRED, mb, f"{path} is a second message with the base name of {kept}: "
                                      + ("renamed" if self.repair else "to be renamed")
                                      + f" to {os.path.join(sub, new)} (as Dovecot does) and numbered as a new "
                                        f"message")
        files[new_base] = (sub, new if self.repair else fname)

    def _check(self, mb: str, user: str, folder: str, d: str, c: str | None = None,
               i: str | None = "") -> None:
        """``d`` the mail directory, ``c`` where its uidlist and keywords are (CONTROL=),
        ``i`` where its index files are (INDEX=; None: none)."""
        c = d if c is None else c
        i = d if i == "" else i
        ul = _Parsed(os.path.join(c, UIDLIST))
        files = self._scan(mb, d)
        self.report.messages += len(files)
        view = self.dovecot.index_view(i) if self.dovecot is not None and i else None
        if view is not None and not view.files:
            view = None

        # UIDVALIDITY
        if ul.header_ok:
            uidvalidity, uv_from = ul.uidvalidity, None
        elif view is not None and view.uidvalidity:
            uidvalidity, uv_from = view.uidvalidity, "Dovecot's index"
        else:
            w = self.k.folder(user, folder)
            if w is not None:
                uidvalidity = w.uidvalidity
                uv_from = "the restore journal" if w.source == "journal" else w.source
            else:
                uidvalidity, uv_from = int(time.time()) & 0xFFFFFFFF or 1, None
        if not ul.exists:
            self.report.add(REPAIRED if uv_from else UNKNOWN, mb,
                            "dovecot-uidlist is missing: rebuilt from the message files, "
                            + (f"UIDVALIDITY {uidvalidity} from {uv_from}" if uv_from else
                               f"its UIDVALIDITY is known nowhere: new UIDVALIDITY {uidvalidity}; clients will "
                               f"download the folder again"))
        elif not ul.header_ok:
            self.report.add(REPAIRED if uv_from else UNKNOWN, mb,
                            "dovecot-uidlist's header is damaged: "
                            + (f"UIDVALIDITY {uidvalidity} from {uv_from}" if uv_from else
                               f"its UIDVALIDITY is known nowhere: new UIDVALIDITY {uidvalidity}"))
        if ul.bad_lines:
            self.report.add(REPAIRED, mb, f"dovecot-uidlist has {ul.bad_lines} damaged lines: dropped "
                                          f"(their messages are numbered again below)")

        # records against files
        kept: dict = {}
        seen_bases: dict = {}
        for uid in sorted(ul.records):
            ext, base = ul.records[uid]
            if base in seen_bases:
                self.report.add(NOTE, mb, f"{base} is listed twice (UIDs {seen_bases[base]} and {uid}); the lower "
                                          f"is kept")
                continue
            seen_bases[base] = uid
            if base in files:
                kept[uid] = (ext, base)
        dead = sorted(set(ul.records) - set(kept))
        if dead and self._cur_missing:
            self.report.add(LOST, mb, f"{len(dead)} uidlist lines have no file (UIDs {_uids(dead)}) and the "
                                      f"folder's cur/ was missing, which Dovecot never removes: its messages "
                                      f"were lost, not expunged; dropped; restore them from an archive "
                                      f"(imsrestore -f ARCHIVE {mb})")
        elif dead:
            self.report.add(NOTE, mb, f"{len(dead)} uidlist lines have no file (UIDs {_uids(dead)}): expunged by "
                                      f"Dovecot, or lost; dropped (if they were not expunged, restore them from "
                                      f"an archive)")
        listed_bases = {b for _, b in kept.values()}
        orphans = [b for b in files if b not in listed_bases]

        # how far UIDs went: nothing at or below this may be given to an unknown message
        floor = ul.uidnext if ul.header_ok else max(kept, default=0) + 1
        high = {"the uidlist": floor}
        if view is not None and view.uidvalidity == uidvalidity and view.next_uid:
            high["Dovecot's index"] = view.next_uid
        wj = self.k.folder(user, folder, uidvalidity)
        if wj is not None:
            high["the restore journal" if wj.source == "journal" else wj.source] = wj.uidnext
        nxt = max(max(high.values()), max(kept, default=0) + 1)
        seen_more = [k for k, v in high.items() if v > floor]

        # orphans: an archive may know them by their bytes
        assigned: dict = {}
        witness: dict = {}               # base -> the archive's MessageWitness
        known = []
        taken = set(kept)
        if orphans and self.k.has_messages(user, folder, uidvalidity):
            for base in sorted(orphans, key=lambda b: (stored_from_name(b) or float("inf"), b)):
                digest = _message_sha256(os.path.join(d, *files[base]), base)
                if digest is None:
                    continue
                for w in self.k.by_digest(user, folder, uidvalidity, digest):
                    if w.uid not in taken:
                        assigned[base] = w.uid
                        witness[base] = w
                        taken.add(w.uid)
                        known.append(w.uid)
                        break
        unknown = []
        for base in sorted((b for b in orphans if b not in assigned),
                           key=lambda b: (stored_from_name(b) or float("inf"), b)):
            while nxt in taken:
                nxt += 1
            assigned[base] = nxt
            taken.add(nxt)
            unknown.append(nxt)
            nxt += 1
        uidnext = max(nxt, max(taken, default=0) + 1, floor)
        if known:
            self.report.add(REPAIRED, mb, f"{len(known)} messages missing from dovecot-uidlist: given back their "
                                          f"UIDs ({_uids(known)}) from the archives")
            self._archived_names(mb, d, files, assigned, witness, {b for _, b in ul.records.values()})
            pop3 = [b for b, w in witness.items() if w.pop3_uidl or w.pop3_order]
            if pop3:
                self.report.add(REPAIRED, mb, f"{len(pop3)} messages given back their POP3 UIDLs or POP3 order "
                                              f"(the uidlist's P and O fields) from the archives")
        if unknown:
            if ul.header_ok and not seen_more and ul.exists:
                self.report.add(NOTE, mb, f"{len(unknown)} messages not numbered yet (delivered by an MDA, or "
                                          f"newer than the uidlist): UIDs {_uids(unknown)}, as Dovecot gives them")
            else:
                why = (f"UIDs up to {max(high.values()) - 1} were seen by {', '.join(seen_more)}"
                       if seen_more else "no witness knows them")
                self.report.add(UNKNOWN, mb, f"{len(unknown)} messages whose UIDs are known nowhere ({why}): new "
                                             f"UIDs {_uids(unknown)}; clients will download them again")

        # keywords: every letter a file name uses must be named in dovecot-keywords
        uid_of = {base: uid for uid, (_, base) in kept.items()}
        uid_of.update(assigned)
        index_kw = None
        if self.dovecot is not None and view is not None and view.uidvalidity == uidvalidity:
            index_kw = self.dovecot.index_keywords(i)
        keywords_changed = self._keywords(mb, user, folder, c, files, uid_of, uidvalidity, index_kw)

        # Dovecot's index
        index_files = [n for n in INDEX_FILES if i and os.path.exists(os.path.join(i, n))]
        disk_next = max(ul.uidnext if ul.header_ok else 0, view.next_uid if view is not None else 0)
        below = any(u < disk_next for u in assigned.values())
        invalidate = bool(index_files) and (not ul.header_ok or below or ul.bad_lines > 0
                                           or (view is not None and view.uidvalidity not in (None, uidvalidity)))
        if view is not None and view.uidvalidity not in (None, uidvalidity):
            self.report.add(REPAIRED, mb, f"Dovecot's index remembers UIDVALIDITY {view.uidvalidity}, the uidlist "
                                          f"says {uidvalidity}: its index files "
                                          + ("are removed" if self.repair else "must go"))
        elif view is not None and view.next_uid > floor and ul.header_ok:
            self.report.add(REPAIRED, mb, f"Dovecot's index has seen UIDs up to {view.next_uid - 1}, the uidlist "
                                          f"only up to {floor - 1} (captured at different times): UIDNEXT raised "
                                          f"to {uidnext}")
            invalidate = invalidate or bool(index_files)
        elif index_files and ul.exists:
            older = [n for n in index_files if os.stat(os.path.join(i, n)).st_mtime + 1 < ul.mtime]
            if older:
                self.report.add(NOTE, mb, f"Dovecot's index files ({', '.join(older)}) are older than "
                                          f"dovecot-uidlist: Dovecot reads the newer uidlist (its UIDs win)")

        changed = (not ul.header_ok or ul.bad_lines or dead or assigned or uidnext != ul.uidnext
                   or uidvalidity != ul.uidvalidity)
        if keywords_changed and self.repair:
            self.touched[user] = self.store._home(user)
            invalidate_keywords = bool(index_files)
        else:
            invalidate_keywords = False
        if not self.repair or not (changed or invalidate_keywords):
            return
        if not changed:
            for n in INDEX_FILES + ("dovecot.index.cache",):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(i, n))
            return
        records = dict(kept)
        for base, uid in assigned.items():
            records[uid] = (_record_fields(base, witness.get(base)), base)
        extra = ul.extra if ul.header_ok else [f"G{self._mailbox_guid(user, folder, uidvalidity)}"]
        new = Uidlist(uidvalidity=uidvalidity, uidnext=uidnext, extra=extra, records=records)
        self._write(os.path.join(c, UIDLIST), new.render().encode("utf-8", "surrogateescape"), d)
        if invalidate:
            for n in INDEX_FILES + ("dovecot.index.cache",):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(i, n))
            lidx = self.store._list_index_dir(user)
            for n in LIST_INDEX_FILES if lidx else ():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(lidx, n))
        self.touched[user] = self.store._home(user)
        self.rewritten[(user, folder)] = {base: uid for uid, (_, base) in records.items()}

    def _archived_names(self, mb: str, d: str, files: dict, assigned: dict, witness: dict,
                        listed: set) -> None:
        """Give a message an archive knows back the base name it had (as a restore does,
        docs/dovecot.md): pop3_uidl_format = %f gives POP3 clients the file name as the
        UIDL.  Only where that name is free in the folder (no file, no uidlist line has
        it) and its S= and W= are the file's sizes; ``files`` and ``assigned`` follow the rename."""
        renamed = []
        for base in sorted(witness):
            want = witness[base].basename
            if not want or want == base or want in files or want in listed or not BASE_OK.match(want):
                continue
            sub, fname = files[base]
            new = want + fname[len(base):]
            src = os.path.join(d, sub, fname)
            try:
                if len(new) > 255 or not sizes_match(want, os.stat(src).st_size, src):
                    continue
                if self.repair:
                    os.rename(src, os.path.join(d, sub, new))
            except OSError:
                continue
            renamed.append(want)
            files[want] = (sub, new)
            del files[base]
            assigned[want] = assigned.pop(base)
            witness[want] = witness.pop(base)
        if renamed:
            self.report.add(REPAIRED, mb, f"{len(renamed)} message files came back under other names: "
                                          + ("given" if self.repair else "to be given")
                                          + " back the file names the archives know (pop3_uidl_format = %f "
                                            "gives POP3 clients the file name)")

    def _keywords(self, mb, user, folder, d, files, uid_of, uidvalidity, index_kw=None) -> bool:
        # d: the folder's control directory (dovecot-keywords is there)
        """Name the keyword letters of file names that dovecot-keywords lacks (it was lost,
        or put back from before those keywords were first used) from what archives say of
        each message, then from Dovecot's index and its logs (``index_kw``, Dovecot.index_keywords:
        the names in first-use order, which is the letters' order, taken only when it
        agrees with every named letter and every message's keywords in the index).
        True when the file was (or would be) rewritten."""
        path = os.path.join(d, KEYWORDS)
        table: list = []
        with contextlib.suppress(OSError):
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                for line in f:
                    i, _, name = line.rstrip("\n").partition(" ")
                    if i.isdigit() and name and int(i) < 26:
                        table.extend([""] * (int(i) + 1 - len(table)))
                        table[int(i)] = name
        named = lambda c: ord(c) - 97 < len(table) and table[ord(c) - 97]  # noqa: E731
        learned: dict = {}
        pending: list = []                        # files with letters no witness named yet
        for base, (sub, fname) in files.items():
            letters = sorted({c for c in split_name(fname)[1] if "a" <= c <= "z"})
            missing = [c for c in letters if not named(c) and c not in learned]
            if not missing:
                continue
            uid = uid_of.get(base)
            w = self.k.message(user, folder, uidvalidity, uid) if uid is not None else None
            if w is None:
                pending.append(letters)
                continue
            have = {table[ord(c) - 97] for c in letters if named(c)} | {learned[c] for c in letters if c in learned}
            cands = [kw for kw in w.keywords if kw not in have and kw not in table and kw not in learned.values()]
            if len(cands) != len(missing):
                pending.append(letters)
                continue
            for c, kw in zip(missing, cands):     # a Maildir's keywords are listed in letter order
                learned[c] = kw
        from_index: dict = {}
        if pending and index_kw is not None:
            from_index = self._index_letters(files, uid_of, table, learned, index_kw)
            learned.update(from_index)
        unknown_files = sum(1 for letters in pending if any(not named(c) and c not in learned for c in letters))
        from_archives = {c: kw for c, kw in learned.items() if c not in from_index}
        for source, got in (("the archives", from_archives), ("Dovecot's index and its logs", from_index)):
            if got:
                self.report.add(REPAIRED, mb, "dovecot-keywords " + ("is missing" if not table else "lacks keywords "
                                              "the file names use") + f": learned from {source} ("
                                + ", ".join(f"{c}={kw}" for c, kw in sorted(got.items())) + ")")
        if unknown_files:
            self.report.add(UNKNOWN, mb, f"dovecot-keywords {'is missing' if not table else 'lacks letters'}: the "
                                         f"keywords of {unknown_files} messages (letters a-z in their file names) "
                                         f"cannot be named")
        if learned and self.repair:
            for c, kw in learned.items():
                i = ord(c) - 97
                table.extend([""] * (i + 1 - len(table)))
                table[i] = kw
            text = "".join(f"{i} {k}\n" for i, k in enumerate(table) if k)
            self._write(path, text.encode("utf-8", "surrogateescape"), d)
        return bool(learned)

    @staticmethod
    def _index_letters(files, uid_of, table, learned, index_kw) -> dict:
        """{letter: name} of the letters neither dovecot-keywords nor the archives named,
        from Dovecot's index and its logs: its names in first-use order are the letters a, b, ...;
        taken only when that order gives every named letter its name and every message
        file exactly the keywords the index says its UID has; else {} (nothing guessed)."""
        order, per_uid = index_kw
        known = {chr(97 + i): k for i, k in enumerate(table) if k}
        known.update(learned)
        if any(ord(c) - 97 >= len(order) or order[ord(c) - 97] != kw for c, kw in known.items()):
            return {}
        for base, (sub, fname) in files.items():
            letters = {c for c in split_name(fname)[1] if "a" <= c <= "z"}
            if any(ord(c) - 97 >= len(order) for c in letters):
                return {}
            uid = uid_of.get(base)
            names = {order[ord(c) - 97] for c in letters}
            if (uid is None and letters) or (uid is not None and names != per_uid.get(uid, set())):
                return {}
        used = {c for _, fname in files.values() for c in split_name(fname)[1] if "a" <= c <= "z"}
        return {c: order[ord(c) - 97] for c in sorted(used) if c not in known}

    # -- files ------------------------------------------------------------------------------------
    def _owner_near(self, d: str):
        if os.geteuid() != 0:
            return None
        if self.owner:
            return self.owner
        try:
            st = os.stat(d)
        except OSError:
            return None
        return (st.st_uid, st.st_gid) if st.st_uid != 0 else None

    def _own(self, path: str, near: str) -> None:
        owner = self._owner_near(near)
        if owner:
            with contextlib.suppress(OSError):
                os.lchown(path, *owner)

    def _mkdir(self, path: str, near: str) -> None:
        os.mkdir(path, 0o700)
        self._own(path, near)

    def _makedirs(self, path: str, near: str) -> None:
        """``path`` and its missing parents (a lost CONTROL= tree), owned as ``near``."""
        if os.path.isdir(path):
            return
        self._makedirs(os.path.dirname(path), near)
        with contextlib.suppress(FileExistsError):
            self._mkdir(path, near)

    def _write(self, path: str, data: bytes, near: str) -> None:
        """``path`` replaced by ``data`` whole, or left as it was: the temporary file goes
        however the write ends (a full disk left it there, cut short, for good: no later
        run removes it), and a full disk names the file that could not be written."""
        tmp = f"{path}.reconstruct-{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                write_all(fd, data)
                owner = self._owner_near(near)
                if owner:
                    os.fchown(fd, *owner)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException as exc:
            # (a SIGTERM, a full disk: the copy was left beside the uidlist, by no name a
            # later run removes)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise os_store_error(exc, path) from None
            raise

    # -- Dovecot ------------------------------------------------------------------------------------
    def resync(self, users: list[str] | None = None) -> None:
        """``doveadm force-resync`` for every user this run changed (or ``users``), then
        check that Dovecot kept the UIDs the repaired uidlists give."""
        if self.dovecot is None or not self.repair:
            return
        todo = users if users is not None else sorted(self.touched)
        for user in todo:
            home = self.store._home(user)
            part = self.store.user_partition(user)
            location = None
            if self.layout is not None:
                from asm.store.maildir.store import expanded_location
                location = expanded_location(self.layout, user)
            ok, why = self.dovecot.force_resync(user, home, self.owner, location)
            if not ok:
                self.report.add(NOTE, self.mailbox(part, user), f"doveadm force-resync not run: {why}")
                continue
            self.report.add(NOTE, self.mailbox(part, user), "doveadm force-resync: Dovecot's indexes rebuilt")
            for (u, folder), want in self.rewritten.items():
                if u != user:
                    continue
                d = self.store._folder_dir(user, folder)
                c, _i = self.store._ctl_idx(user, folder, d)
                got = {b: uid for uid, (_, b) in _Parsed(os.path.join(c, UIDLIST)).records.items()}
                moved = sorted(uid for b, uid in want.items() if b in got and got[b] != uid)
                if moved:
                    self.report.add(UNKNOWN, self.mailbox(part, user, folder),
                                    f"Dovecot renumbered {len(moved)} messages after the repair (UIDs "
                                    f"{_uids(moved)}): its log says why")
