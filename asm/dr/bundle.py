"""The disaster backup: everything an installation needs beyond the messages, in one
tar file with a manifest (``imsdr backup``), and putting it back (``imsdr restore``).

Captured, in this order (the classic tools' order: database, indexes, then -- by the
backup that follows -- messages, then configuration; a record captured before the
mail it describes can only lack mail, which reconstruct adds back, never list mail
that is not there):

1. ``mboxlist``: the classic mailbox list (``mailboxes.db``);
2. ``indexes``: every classic folder index (``store.idx``); for Maildir every folder's
   ``dovecot-uidlist`` and ``dovecot-keywords`` and each user's ``subscriptions``; with
   ``store.mail_location`` these where the layout keeps them (``CONTROL=``), each
   login's ``dovecot-uidvalidity*``, and Dovecot's ``dovecot.index*`` and
   ``dovecot.list.index*`` files (``INDEX=``, else in the folders), as
   ``dovecot/<absolute path>`` members put back at that path; for an sdbox or mdbox
   location none (its mail and indexes come back from archives: the manifest's
   ``notes`` says so, and everything below is captured as for any store);
3. ``journals``: the restore journal (``$IMS_HOME/data/restore-journal.db``) and the
   Bacula module's state (``data/bacula/state.db``);
4. ``catalog``: the staging catalog (``staging.dir``/``catalog.db``);
5. ``config``: ``msg.conf`` and ``backup-groups.conf``;
6. ``keys``: Dovecot's mail_crypt key files named in its configuration, and the
   users' ``dovecot-attributes`` (where Dovecot keeps per-user keys).

Every SQLite database is copied with SQLite's online backup API (a consistent copy
while the store is in use), never as a file; the text files are replaced atomically
by their writers, so a read is one whole version.  The manifest (``ims-dr/
manifest.json``, the last member) says what was captured, from where, by which
method, when, and each member's size and SHA-256, and its own SHA-256
(``manifest_sha256``, from version 2); ``imsdr restore`` checks them all before it puts
anything in place.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import stat
import shutil
import socket
import sqlite3
import subprocess
import tarfile
import time

from asm import __version__, sqlitedb
from asm.digests import file_sha256
from asm.interrupts import interrupts_deferred
from asm.locks import owned_tempdir
from asm.errors import EXIT_HOSTILE, EXIT_INCOMPLETE, EXIT_NOSPACE, EXIT_NOT_ARCHIVE, EXIT_USAGE, ImsError
from asm.reconstruct.sqlite import read_only_uri
from asm.trees import remove_tree

FORMAT = "ims-asm-dr"
VERSION = 2                               # 2: the manifest carries its own digest (manifest_sha256)
PREFIX = "ims-dr/"
MANIFEST = PREFIX + "manifest.json"
LISTING = PREFIX + "files.jsonl"          # one line per captured index/control file
KINDS = ("mboxlist", "indexes", "journals", "catalog", "config", "keys")
DEFAULT_RESTORE = ("config", "catalog", "journals", "keys")
CHUNK = 1 << 20
MAILDIR_CONTROL = ("dovecot-uidlist", "dovecot-keywords")
MAILDIR_USER = ("subscriptions",)
ATTRIBUTES = "dovecot-attributes"


class BundleError(ImsError):
    status = EXIT_USAGE


class NotABundle(BundleError):
    status = EXIT_NOT_ARCHIVE


class DamagedBundle(BundleError):
    status = EXIT_INCOMPLETE


class HostileBundle(BundleError):
    status = EXIT_HOSTILE


def _hostile(what: str) -> HostileBundle:
    return HostileBundle(f"hostile disaster backup: {what}, which imsdr never writes; nothing was written: "
                         f"use a copy you trust")


def manifest_digest(manifest: dict) -> str:
    """The SHA-256 of a manifest less its ``manifest_sha256``, in one canonical JSON form
    (the same after the manifest is read back: damage to any byte of it changes it)."""
    rest = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, ensure_ascii=True,
                                     separators=(",", ":")).encode("ascii")).hexdigest()


def _sound(name: str) -> bool:
    """A member name (under ims-dr/) as imsdr writes them: relative, each level a name."""
    return bool(name) and "\0" not in name and all(p not in ("", ".", "..") for p in name.split("/"))


#: the members imsdr writes under fixed names, and their kinds
FIXED_MEMBERS = {"config/msg.conf": "config", "config/backup-groups.conf": "config",
                 "data/installation.id": "config",
                 "data/restore-journal.db": "journals", "data/bacula/state.db": "journals",
                 "staging/catalog.db": "catalog", "store/mboxlist/mailboxes.db": "mboxlist",
                 "files.jsonl": "listing"}
#: the files a partition/ member may be, by kind: a classic folder's index, a Maildir
#: folder's control files and a user's subscriptions, a user's dovecot-attributes (keys)
PARTITION_FILES = {"indexes": ("store.idx",) + MAILDIR_CONTROL + MAILDIR_USER, "keys": (ATTRIBUTES,)}
#: the files a dovecot/ member may be (Dovecot's, where store.mail_location puts them)
DOVECOT_FILES = MAILDIR_CONTROL + MAILDIR_USER
DOVECOT_PREFIXES = ("dovecot-uidvalidity", "dovecot.index", "dovecot.list.index")


def _dovecot_file(kind: str, name: str) -> bool:
    """``name`` is a file imsdr captures of kind ``kind`` from a Dovecot layout."""
    if kind == "keys":
        return name == ATTRIBUTES
    return kind == "indexes" and (name in DOVECOT_FILES or name.startswith(DOVECOT_PREFIXES))


def _check_item(item: dict) -> None:
    """Where an item would be put back is its member's name, as Capture wrote both: a
    manifest whose ``target``, ``partition`` or ``path`` says otherwise is hostile.  So is
    a member imsdr never writes: a name outside the ones it uses, a kind its name never
    has, a file that is not one of the index, control or key files it captures (a forged
    manifest carries a digest anyone can compute: what it may name is bounded here, and
    where those files may go by the installation, :func:`confine`)."""
    member = item.get("member")
    if not isinstance(member, str) or not _sound(member):
        raise _hostile(f"its manifest names a member {member!r}")
    kind = item.get("kind")
    name = member.rsplit("/", 1)[-1]
    if member in FIXED_MEMBERS:
        ok = FIXED_MEMBERS[member] == kind
    elif member.startswith("partition/"):
        ok = member.count("/") >= 2 and name in PARTITION_FILES.get(kind, ())
    elif member.startswith("keys/files/"):
        ok = kind == "keys"
    elif member.startswith("dovecot/"):
        ok = _dovecot_file(kind, name)
    else:
        ok = False
    if ok and any(not isinstance(item.get(k, 0), int) or isinstance(item.get(k), bool) or item.get(k, 0) < 0
                  for k in ("mode", "uid", "gid")):
        raise _hostile(f"its manifest gives member {member!r} a mode or owner that is no number")
    if ok and item.get("method") == "sqlite-backup":
        ok = member.endswith((".db", "/store.idx"))      # (its -wal/-shm/-journal are removed)
    if not ok:
        raise _hostile(f"its manifest names member {member!r} of kind {kind!r}")
    if member.startswith("partition/"):
        _, part, path = (member.split("/", 2) + ["", ""])[:3]
        if item.get("partition") != part or item.get("path") != path:
            raise _hostile(f"its manifest puts member {member!r} at partition {item.get('partition')!r} "
                           f"path {item.get('path')!r}")
    for prefix in ("keys/files/", "dovecot/"):
        if member.startswith(prefix):
            where = member[len(prefix) - 1:]
            if item.get("target", where) != where:
                raise _hostile(f"its manifest puts member {member!r} at {item.get('target')!r}")


def sqlite_copy(src: str, dst: str) -> None:
    """A consistent copy of a live SQLite database (the online backup API).  A WAL
    database on a full disk, whose -shm cannot be made, is read holding it exclusively,
    its WAL index in memory (asm/sqlitedb.py says why)."""
    try:
        _sqlite_copy(read_only_uri(src), dst, [])
    except sqlite3.OperationalError as exc:
        if not sqlitedb.disk_full(exc, src):
            raise
        try:
            # mode=rw: never creates it; nothing is written (a read-only connection needs the -shm)
            _sqlite_copy(read_only_uri(src)[:-len("?mode=ro")] + "?mode=rw", dst,
                         ["PRAGMA locking_mode=EXCLUSIVE", "SELECT count(*) FROM sqlite_master"])
        except sqlite3.Error:
            raise exc from None


def _sqlite_copy(uri: str, dst: str, setup: list) -> None:
    con = sqlite3.connect(uri, uri=True, timeout=60)
    try:
        for statement in setup:
            con.execute(statement).fetchall()
        out = sqlite3.connect(dst)
        try:
            con.backup(out)
        finally:
            out.close()
    finally:
        con.close()


# ---------------------------------------------------------------------------------------
# capture

class Capture:
    """Writes the bundle to an open binary stream (a device's file)."""

    def __init__(self, config, stream, report=None, dovecot_config: str | None = None, progress=None):
        self.config = config
        self.report = report or (lambda line: None)
        self.tar = tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT,
                                encoding="utf-8", errors="surrogateescape")
        self.tmp = owned_tempdir("ims-dr-")          # (a killed run's, left behind, removed)
        self.items: list = []
        self.listing = open(os.path.join(self.tmp, "files.jsonl"), "w", encoding="utf-8",
                            errors="surrogateescape")
        self.counts: dict = {k: 0 for k in KINDS}
        self.problems: list = []
        self.notes: list = []              # what was left out by design (not a problem)
        self.dovecot_config = dovecot_config
        self.progress = progress or (lambda counts: None)
        self.started = time.time()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.listing.close()
        if not self.tar.closed:
            # a failed run: the stream is abandoned, never flushed into a closed device
            self.tar.fileobj.closed = True
            self.tar.closed = True
        remove_tree(self.tmp)

    # -- adding members ---------------------------------------------------------------------
    def _add(self, member: str, copy: str, st: os.stat_result | None, kind: str, source: str,
             method: str, listed: bool = False, **extra) -> dict:
        digest, size = file_sha256(copy)
        info = tarfile.TarInfo(PREFIX + member)
        info.size = size
        info.mtime = int(st.st_mtime) if st else int(time.time())
        info.mode = (st.st_mode & 0o7777) if st else 0o600
        info.uid, info.gid = (st.st_uid, st.st_gid) if st else (0, 0)
        with open(copy, "rb") as f:
            self.tar.addfile(info, f)
        item = {"kind": kind, "member": member, "source": source, "method": method,
                "captured": time.time(), "size": size, "sha256": digest,
                "mode": info.mode, "uid": info.uid, "gid": info.gid,
                "mtime": st.st_mtime if st else None, **extra}
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.progress(self.counts)
        if listed:
            self.listing.write(json.dumps(item, ensure_ascii=False) + "\n")
        else:
            self.items.append(item)
        return item

    def _sqlite(self, member: str, src: str, kind: str, listed: bool = False, inspect=None,
                **extra) -> dict | None:
        try:
            st = os.stat(src)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:       # (taken for missing: "cannot write DEVICE", exit 3)
            raise _store_unreadable(src, exc, "a database the disaster backup holds") from None
        dst = os.path.join(self.tmp, "db")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dst)
        try:
            sqlite_copy(src, dst)
        except sqlite3.Error as exc:
            if sqlitedb.nearly_full(self.tmp) and ("full" in str(exc) or "I/O" in str(exc)):
                # the private copy's disk (TMPDIR) is full, not the database
                raise BundleError(f"no space left on {os.path.dirname(self.tmp)} (TMPDIR), where imsdr copies "
                                  f"{src} ({exc}): free space there or set TMPDIR to another disk, and run "
                                  f"the same command again", status=EXIT_NOSPACE) from None
            self.problems.append(f"{src}: cannot be copied ({exc})")
            return None
        try:
            if inspect is not None:
                extra.update(inspect(dst))
            return self._add(member, dst, st, kind, src, "sqlite-backup", listed, **extra)
        finally:
            os.unlink(dst)

    def _file(self, member: str, src: str, kind: str, listed: bool = False, mail: bool | None = None,
              **extra) -> dict | None:
        """``mail``: ``src`` is in a mail directory (default: for kind "indexes"), where a
        symbolic link is never followed: its user may have made it, and it could name any
        file on the system.  It is named as not captured."""
        if mail is None:
            mail = kind == "indexes"
        try:
            st = os.lstat(src) if mail else os.stat(src)
            if mail and stat.S_ISLNK(st.st_mode):
                self.problems.append(f"{src}: a symbolic link, which imsdr never follows in a mail "
                                     f"directory (it could name any file on the system); replace it "
                                     f"with the file it names")
                return None
            dst = os.path.join(self.tmp, "file")
            shutil.copyfile(src, dst)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.problems.append(f"{src}: cannot be read ({exc.strerror})")
            return None
        try:
            return self._add(member, dst, st, kind, src, "file", listed, **extra)
        finally:
            os.unlink(dst)

    # -- what an installation holds -----------------------------------------------------------
    def run(self) -> dict:
        cfg = self.config
        home = cfg.home
        driver = cfg.driver
        parts = cfg.partitions()
        snapshot = cfg.describe() if hasattr(cfg, "describe") else None
        layout = None
        if driver == "maildir" and cfg.get("store.mail_location"):
            layout = self._layout(snapshot)
            parts = {}
        if driver == "classic":
            root = cfg.snapshot_store_root() if snapshot else cfg.store_root
            listed = cfg.store_root if snapshot else root   # a snapshot's list is read from its copy
            item = self._sqlite("store/mboxlist/mailboxes.db",
                                os.path.join(listed, "mboxlist", "mailboxes.db"), "mboxlist",
                                inspect=self._count_list)
            if item is not None:
                item["source"] = os.path.join(root, "mboxlist", "mailboxes.db")
                self.report(f"mailbox list: {item['users']} users, {item['folders']} folders")
            else:
                self._lost_list(parts, os.path.join(root, "mboxlist", "mailboxes.db"),
                                os.path.join(listed, "mboxlist", "mailboxes.db"))
            self._classic_indexes(parts)
            if (item is None or not item.get("users")) and not self.problems:
                self._no_store(cfg, parts, root)
        elif layout is not None and not layout.location.is_maildir:
            # sdbox/mdbox: the messages, flags and UIDs live in Dovecot's own files, which
            # only an archive (imsbackup) brings back whole; the rest is captured as for
            # any store
            self.notes.append(f"mail_location {layout.location.text!r} is a {layout.location.format} "
                              f"store: its mail and index files are not captured (recover the mail from "
                              f"archives, imsbackup; docs/disaster-recovery.md step 4a)")
            self.report(self.notes[-1])
        elif layout is not None:
            self._misplaced_problems(layout)
            self._layout_files(layout)
        else:
            self._maildir_control(parts)
            if not any(os.path.isdir(os.path.join(d, u, "Maildir")) for d in parts.values() if os.path.isdir(d)
                       for u in os.listdir(d)):
                self._no_store(cfg, parts, None)
        self.report(f"indexes: {self.counts['indexes']} files")
        self._sqlite("data/restore-journal.db", os.path.join(home, "data", "restore-journal.db"), "journals")
        self._sqlite("data/bacula/state.db", os.path.join(home, "data", "bacula", "state.db"), "journals")
        staging = cfg.get("staging.dir")
        if staging:
            self._sqlite("staging/catalog.db", os.path.join(staging, "catalog.db"), "catalog")
        for name in ("msg.conf", "backup-groups.conf"):
            self._file(f"config/{name}", os.path.join(home, "config", name), "config")
        # the installation's identity: the chains its archives make go on after a recovery
        self._file("data/installation.id", os.path.join(home, "data", "installation.id"), "config")
        self._keys(parts, layout)
        finished = time.time()
        self.listing.close()
        if self.counts["indexes"] or os.path.getsize(os.path.join(self.tmp, "files.jsonl")):
            self._add("files.jsonl", os.path.join(self.tmp, "files.jsonl"), None, "listing", "", "list")
            self.counts.pop("listing", None)
        manifest = {
            "format": FORMAT, "version": VERSION, "tool_version": __version__,
            "host": socket.gethostname(), "ims_home": home, "driver": driver,
            "started": self.started, "finished": finished,
            "store_root": cfg.store_root if not snapshot else cfg.snapshot_store_root(),
            "partitions": parts, "staging_dir": staging, "snapshot": snapshot,
            "mail_location": layout.location.text if layout is not None else None,
            "dovecot_config": self.dovecot_config,
            "order": ["mboxlist", "indexes", "journals", "catalog", "config", "keys"],
            "counts": self.counts, "items": self.items, "problems": self.problems,
        }
        if self.notes:
            manifest["notes"] = self.notes
        manifest["manifest_sha256"] = manifest_digest(manifest)
        data = json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True).encode("utf-8", "surrogateescape")
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        info.mtime = int(finished)
        info.mode = 0o644
        self.tar.addfile(info, io.BytesIO(data))
        self.tar.close()
        return manifest

    @staticmethod
    def _count_list(path: str) -> dict:
        """Users and folders in the copy of the mailbox list (for the manifest)."""
        c = sqlite3.connect(path)
        try:
            return {"users": c.execute("SELECT COUNT(*) FROM users").fetchone()[0],
                    "folders": c.execute("SELECT COUNT(*) FROM folders").fetchone()[0]}
        except sqlite3.Error:
            return {"users": None, "folders": None}
        finally:
            c.close()

    def _no_store(self, cfg, parts: dict, root: str | None) -> None:
        """A store of which nothing was found (no mailbox list with users, no user
        directory): named as imsbackup names it (exit 18 there), unless an empty store
        is expected (backup.allowempty): the nightly disaster backup of a store whose
        disk is not mounted would otherwise pass for one, with nothing of the store."""
        if cfg.get("backup.allowempty") == "yes":
            return
        missing = [f"partition:{p}.path {d}" for p, d in parts.items() if not os.path.isdir(d)]
        if missing:
            why = f"{', '.join(missing)} does not exist"
        else:
            why = (f"the store holds no users ({', '.join(f'{p}: {d}' for p, d in parts.items())}"
                   + (f"; no mailbox list in {root}" if root else "") + ")")
        self.problems.append(f"{why}: nothing of the store was captured; check IMS_HOME and the partition "
                             f"paths (is the disk mounted?); if an empty store is expected, msconfig set "
                             f"backup.allowempty yes")

    def _lost_list(self, parts: dict, shown: str, db: str) -> None:
        """A classic mailbox list that is missing while the partitions hold mail was
        lost (as every other command says, exit 17): named, the rest still captured."""
        from asm.store.classic import lost_list
        if os.path.lexists(db):
            return                      # there but not copied: _sqlite named it
        why = lost_list(parts)
        if why is not None:
            self.problems.append(f"{shown}: the classic store's mailbox list is missing, but {why}: it was "
                                 f"lost; rebuild it from the partitions with reconstruct -m, then run "
                                 f"imsdr backup again")

    def _classic_indexes(self, parts: dict) -> None:
        from asm.store.classic import scan_user_dirs

        def unreadable(exc: OSError):
            if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):   # (gone meanwhile)
                raise _store_unreadable(exc.filename or ppath, exc)
        for part, ppath in parts.items():
            try:
                users = list(scan_user_dirs(ppath))
            except OSError as exc:
                raise _store_unreadable(exc.filename or ppath, exc) from None
            for rel, _user in users:
                for dirpath, dirnames, filenames in os.walk(os.path.join(ppath, rel), onerror=unreadable):
                    dirnames[:] = sorted(d for d in dirnames if d.startswith("="))
                    if "store.idx" in filenames:
                        sub = os.path.relpath(os.path.join(dirpath, "store.idx"), ppath)
                        self._sqlite(f"partition/{part}/{sub}", os.path.join(dirpath, "store.idx"), "indexes",
                                     listed=True, partition=part, path=sub)

    def _maildir_control(self, parts: dict) -> None:
        for part, ppath in parts.items():
            try:
                homes = sorted(os.listdir(ppath))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:           # (passed over, the bundle lacked every user's files)
                raise _store_unreadable(ppath, exc) from None
            for user in homes:
                root = os.path.join(ppath, user, "Maildir")
                try:
                    if not stat.S_ISDIR(os.stat(root).st_mode):
                        continue
                    names = os.listdir(root)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except OSError as exc:
                    raise _store_unreadable(root, exc) from None
                for name in MAILDIR_USER:
                    self._control(part, ppath, os.path.join(root, name))
                dirs = [root] + sorted(os.path.join(root, n) for n in names
                                       if n.startswith(".") and os.path.isdir(os.path.join(root, n, "cur"))
                                       and not os.path.islink(os.path.join(root, n)))
                for d in dirs:
                    for name in MAILDIR_CONTROL:
                        self._control(part, ppath, os.path.join(d, name))

    def _layout(self, snapshot):
        """The store's StoreLayout (store.mail_location), for Maildir locations."""
        from asm.store.layout import LayoutError
        from asm.store.maildir.store import open_layout
        if snapshot:
            raise ImsError("imsdr backup --snapshot follows <partition>/<user>/Maildir stores "
                           "only; with store.mail_location set, take the disaster backup from "
                           "the live store", status=EXIT_USAGE)
        try:
            layout = open_layout(self.config, dbox=True)
        except LayoutError as exc:
            raise ImsError(str(exc), status=EXIT_USAGE) from None
        return layout

    def _home_template(self, layout) -> str | None:
        return home_template(layout, self.dovecot_config)

    def _misplaced_problems(self, layout) -> None:
        """Name, in imsbackup's words, the mail under the template that is no login's
        (a login the running Dovecot's userdb gives its own ``mail=``/``home=``: what is
        left at the template's place, and where its mail really is): none of it is captured."""
        from asm.store.base import StoreError
        from asm.store.maildir.store import MaildirStore, UserdbUnread
        store = MaildirStore(self.config, create=False, layout=layout)
        try:
            found = store.unlisted_users("primary")
        except UserdbUnread as exc:
            # (the files are still captured: only who the userdb keeps elsewhere is unknown)
            self.problems.append(f"/primary: {exc}")
            return
        except (StoreError, OSError) as exc:
            # a tree not there (a disk not mounted): the rest is still worth capturing
            self.problems.append(f"/primary: {getattr(exc, 'strerror', None) or exc}; none of the store's "
                                 f"index and control files is captured")
            return
        for u in found:
            self.problems.append(f"/{u.partition}/{u.user}: {u.why} ({u.path}): not backed up; "
                                 f"{u.hint or store.unlisted_hint}")

    @staticmethod
    def _logins(layout) -> dict:
        """{login: UserLayout} the template's walk finds, less the logins the userdb keeps
        elsewhere (their files at the template's place are not the mail Dovecot serves)."""
        from asm.store.maildir.store import _misplaced
        away = _misplaced(layout)
        return {k: v for k, v in sorted(layout.logins().items()) if k not in away}

    def _layout_files(self, layout) -> None:
        """Every file Dovecot keeps beside a login's messages, where the layout puts it:
        uidlists and keywords (CONTROL=), subscriptions and dovecot-uidvalidity (the
        control root), index files (INDEX=, else the folders).  Members are
        ``dovecot/<absolute path>``, put back at that path."""
        for login, ul in self._logins(layout).items():
            self._abs(os.path.join(ul.control_root, ul.location.subscriptions), "indexes", login)
            with contextlib.suppress(OSError):
                for n in sorted(os.listdir(ul.control_root)):
                    if n.startswith("dovecot-uidvalidity"):
                        self._abs(os.path.join(ul.control_root, n), "indexes", login)
            index_dirs = [ul.list_index_dir] if ul.list_index_dir else []
            for folder in ul.folders():
                for name in MAILDIR_CONTROL:
                    self._abs(os.path.join(ul.control_dir(folder), name), "indexes", login)
                if ul.index_dir(folder):
                    index_dirs.append(ul.index_dir(folder))
            seen = set()
            for d in index_dirs:
                if d in seen:
                    continue
                seen.add(d)
                with contextlib.suppress(OSError):
                    for n in sorted(os.listdir(d)):
                        if n.startswith(("dovecot.index", "dovecot.list.index")) and \
                                not n.endswith((".lock", ".tmp")):
                            self._abs(os.path.join(d, n), "indexes", login)

    def _abs(self, path: str, kind: str, login: str) -> None:
        if os.path.isfile(path):
            self._file(f"dovecot{path}", path, kind, listed=(kind == "indexes"), mail=True, target=path,
                       login=login)

    def _control(self, part: str, ppath: str, path: str) -> None:
        sub = os.path.relpath(path, ppath)
        self._file(f"partition/{part}/{sub}", path, "indexes", listed=True, partition=part, path=sub)

    def _keys(self, parts: dict, layout=None) -> None:
        for path in mail_crypt_key_files(self.dovecot_config):
            self._file(f"keys/files{path}", path, "keys", target=path)
        if self.config.driver != "maildir":
            return
        if layout is not None:
            # a login's dovecot-attributes (mail_attribute_dict = file:%h/dovecot-attributes,
            # or beside its mail or control files)
            homes = self._home_template(layout)
            for login, ul in self._logins(layout).items():
                found = []
                home = ul.home
                if home is None and homes:
                    from asm.store.layout import LayoutError, expand
                    with contextlib.suppress(LayoutError):
                        home = expand(homes, login, what="the home template")
                for d in (home, ul.root, ul.control_root):
                    p = os.path.join(d, ATTRIBUTES) if d else None
                    if p and p not in found and os.path.isfile(p):
                        found.append(p)
                        self._abs(p, "keys", login)
            return
        for part, ppath in parts.items():
            with contextlib.suppress(OSError):
                for user in sorted(os.listdir(ppath)):
                    for sub in (ATTRIBUTES, os.path.join("Maildir", ATTRIBUTES)):
                        p = os.path.join(ppath, user, sub)
                        if os.path.isfile(p):
                            rel = os.path.relpath(p, ppath)
                            self._file(f"partition/{part}/{rel}", p, "keys", mail=True, partition=part,
                                       path=rel)


def home_template(layout, dovecot_config: str | None) -> str | None:
    """Where homes are, for a location that does not use them (its keys may be
    there): the layout's, else the userdb's or mail_home of Dovecot's configuration."""
    if layout.home_template:
        return layout.home_template
    if not dovecot_config or not os.path.exists(dovecot_config):
        return None
    from asm.store.layout import LayoutError, _doveconf_all, parse_userdb_homes
    try:
        settings, sections = _doveconf_all(["-c", dovecot_config], "doveconf", ("mail_home", "userdb"))
        homes = parse_userdb_homes(sections.get("userdb", ""))
        return homes[0] if homes else (settings.get("mail_home") or None)
    except (LayoutError, OSError):
        return None


def mail_crypt_key_files(config: str | None, strict: bool = False) -> list[str]:
    """Files Dovecot's mail_crypt settings read (``mail_crypt_*key* = </path``).
    ``strict``: a configuration that cannot be read is a BundleError, not none."""
    def unread(why: str) -> list[str]:
        if strict:
            raise BundleError(why)
        return []
    if not config or not os.path.exists(config):
        return unread(f"Dovecot's configuration {config or '(none: give --dovecot-config FILE)'} does not exist")
    doveconf = shutil.which("doveconf") or ("/usr/bin/doveconf" if os.path.exists("/usr/bin/doveconf") else None)
    if doveconf is None:
        return unread("doveconf is not installed, to read Dovecot's configuration")
    try:
        # -P: doveconf hides the values of key settings unless asked
        proc = subprocess.run([doveconf, "-c", config, "-n", "-P"], capture_output=True, text=True, timeout=60,
                              errors="replace")
        out = proc.stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return unread(f"doveconf -c {config} failed ({exc})")
    if strict and proc.returncode != 0:
        return unread(f"doveconf -c {config} failed ({(proc.stderr.strip().splitlines() or ['exit %d' % proc.returncode])[-1]})")
    found = []
    for line in out.splitlines():
        name, eq, value = line.strip().partition(" = ")
        if eq and name.startswith("mail_crypt") and "key" in name and value.startswith("<"):
            path = value[1:].strip()
            if path.startswith("/") and path not in found:
                found.append(path)
    return found


# ---------------------------------------------------------------------------------------
# reading and restoring

#: the largest pax or GNU long-name header imsdr reads (its own are a few hundred bytes):
#: tarfile reads such a header whole, and a file claiming gigabytes made it fail for memory
HEADER_LIMIT = 1 << 20


class _BoundedTarInfo(tarfile.TarInfo):
    def _proc_pax(self, tarfile_):
        if self.size > HEADER_LIMIT:
            raise tarfile.ReadError(f"an extended header of {self.size} bytes")
        return super()._proc_pax(tarfile_)

    def _proc_gnulong(self, tarfile_):
        if self.size > HEADER_LIMIT:
            raise tarfile.ReadError(f"a long name header of {self.size} bytes")
        return super()._proc_gnulong(tarfile_)


def read_manifest(stream) -> tuple[dict, str]:
    """The manifest, and a private directory holding every member (checked against it)."""
    tmp = owned_tempdir("ims-dr-restore-")
    try:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|*", encoding="utf-8", errors="surrogateescape",
                               tarinfo=_BoundedTarInfo)
        except tarfile.TarError as exc:
            raise NotABundle(f"not a disaster backup (imsdr backup writes one): {exc}") from None
        manifest = None
        got: dict = {}
        dirs: set = set()
        try:
            for m in tar:
                # nothing is written before its name is known to be one imsdr writes: a
                # name that leaves the private directory, or a link, is hostile
                name = m.name[len(PREFIX):] if m.name.startswith(PREFIX) else None
                if name is None and (m.name.startswith("/") or ".." in m.name.split("/")):
                    raise _hostile(f"it holds a member {m.name!r}")
                if name is None or not (m.isfile() or m.issym() or m.islnk() or m.isdev()):
                    raise NotABundle(f"not a disaster backup: unexpected member {m.name!r}")
                if not m.isfile() or not _sound(name):
                    raise _hostile(f"it holds a member {m.name!r}" + ("" if m.isfile() else " (a link or device)"))
                levels = name.split("/")
                above = ["/".join(levels[:i]) for i in range(1, len(levels))]
                if name in got or name in dirs or any(d in got for d in above) or \
                        (m.name == MANIFEST and manifest is not None):
                    raise _hostile(f"it holds member {m.name!r} twice (or as a file and a directory)")
                dirs.update(above)
                f = tar.extractfile(m)
                if m.name == MANIFEST:
                    try:
                        manifest = json.loads(f.read(64 << 20).decode("utf-8", "surrogateescape"))
                    except ValueError as exc:
                        raise DamagedBundle(f"the manifest is not JSON ({exc})") from None
                    continue
                dst = os.path.join(tmp, "m", name)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                h = hashlib.sha256()
                with open(dst, "wb") as out:
                    for chunk in iter(lambda: f.read(CHUNK), b""):
                        h.update(chunk)
                        out.write(chunk)
                got[name] = h.hexdigest()
        except tarfile.TarError as exc:
            raise DamagedBundle(f"the disaster backup is damaged or cut short ({exc}); use another copy") from None
        if manifest is None:
            if not got:
                raise NotABundle("not a disaster backup (imsdr backup writes one)")
            raise DamagedBundle("the disaster backup has no manifest (it was cut short); use another copy")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise NotABundle("not a disaster backup (its manifest says another format)")
        # version 1 (before ims-asm wrote manifest_sha256) is read unchecked; from 2 on, a
        # manifest without its digest, or whose digest differs, is damaged
        sealed = manifest.get("manifest_sha256")
        if (sealed is not None or manifest.get("version") != 1) and sealed != manifest_digest(manifest):
            raise DamagedBundle("the disaster backup's manifest is damaged (its SHA-256 "
                                + ("is missing" if sealed is None else "does not match") + "); use another copy")
        items = list(manifest.get("items", []))
        if "files.jsonl" in got:
            with open(os.path.join(tmp, "m", "files.jsonl"), encoding="utf-8", errors="surrogateescape") as f:
                try:
                    items += [json.loads(line) for line in f if line.strip()]
                except ValueError as exc:
                    raise DamagedBundle(f"the disaster backup's file list is not JSON ({exc}); "
                                        f"use another copy") from None
        if not all(isinstance(it, dict) for it in items):
            raise DamagedBundle("the disaster backup's manifest is damaged (an item is no record); use another copy")
        for it in items:
            _check_item(it)
        odd = sorted({str(it.get("kind")) for it in items} - set(KINDS) - {"listing"})
        unlisted = sorted(set(got) - {it["member"] for it in items})
        if odd or unlisted:
            raise DamagedBundle("the disaster backup's manifest is damaged ("
                                + (f"unknown kind {', '.join(map(repr, odd))}" if odd else
                                   f"{len(unlisted)} members it does not list: {', '.join(unlisted[:3])}")
                                + "); use another copy")
        bad = [it["member"] for it in items if got.get(it["member"]) != it.get("sha256")]
        if bad:
            raise DamagedBundle(f"{len(bad)} members of the disaster backup are missing or damaged "
                                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); use another copy")
        manifest["all_items"] = items
        return manifest, tmp
    except BaseException:
        remove_tree(tmp)
        raise


def lacking_kinds(manifest: dict, kinds: tuple) -> list[str]:
    """The kinds of ``kinds`` of which the bundle holds no file (a site without a staging
    catalog or mail_crypt keys, the wrong bundle), in the order asked.  A kind its store
    never has (a mailbox list beside a Maildir store's indexes: ``--only mboxlist,indexes``
    says "the records", whatever the store) is not missing, unless nothing asked for is
    held (``--only mboxlist`` of a Maildir store, ``--only indexes`` of an sdbox one)."""
    held = {item.get("kind") for item in manifest["all_items"]}
    never = set()
    if manifest.get("driver") != "classic":
        never.add("mboxlist")
    if manifest.get("notes") and manifest.get("mail_location"):
        never.add("indexes")             # sdbox/mdbox: their mail and indexes come from archives
    lacking = [k for k in kinds if k not in held]
    if any(k in held for k in kinds):
        lacking = [k for k in lacking if k not in never]
    return lacking


def plan_restore(manifest: dict, config_for, kinds: tuple) -> list[tuple[dict, str]]:
    """(item, target path) for the chosen kinds; ``config_for()`` gives the installation's
    configuration as it will be once msg.conf is back (partitions, store root, staging)."""
    out = []
    home = None
    for item in manifest["all_items"]:
        if item["kind"] not in kinds or item["kind"] == "listing":
            continue
        member = item["member"]
        cfg = config_for()
        home = cfg.home
        if member.startswith("config/") or member.startswith("data/"):
            target = os.path.join(home, member)
        elif member == "staging/catalog.db":
            staging = cfg.get("staging.dir") or manifest.get("staging_dir")
            if not staging:
                continue
            target = os.path.join(staging, "catalog.db")
        elif member == "store/mboxlist/mailboxes.db":
            target = os.path.join(cfg.store_root, "mboxlist", "mailboxes.db")
        elif member.startswith("partition/"):
            part, path = item["partition"], item["path"]
            ppath = cfg.partitions().get(part)
            if ppath is None:
                raise BundleError(f"the disaster backup has files of partition {part!r}, which msg.conf does not "
                                  f"name: restore the configuration first (or set partition:{part}.path)")
            target = os.path.join(ppath, path)
        elif member.startswith("keys/files/"):
            target = item.get("target") or "/" + member[len("keys/files/"):]
        elif member.startswith("dovecot/"):
            target = item.get("target") or member[len("dovecot"):]
        else:
            continue
        out.append((item, target))
    return out


def _login_sound(login) -> bool:
    return isinstance(login, str) and login not in ("", ".", "..") and "/" not in login and "\0" not in login


def _layout_keeps(layout, dovecot_config: str | None, login: str, kind: str, target: str) -> bool:
    """``target`` is where this installation's layout keeps a file of ``kind`` of ``login``
    (as Capture found them: :meth:`Capture._layout_files`, :meth:`Capture._keys`)."""
    from asm.store.layout import LayoutError, _under, expand
    try:
        ul = layout.for_login(login)
    except LayoutError:
        return False
    d, name = os.path.split(target)
    if kind == "keys":
        homes = [ul.home]
        template = home_template(layout, dovecot_config) if ul.home is None else None
        if template:
            with contextlib.suppress(LayoutError):
                homes.append(expand(template, login, what="the home template"))
        return name == ATTRIBUTES and d in [h for h in homes + [ul.root, ul.control_root] if h]
    if target == ul.subscriptions_path or (name.startswith("dovecot-uidvalidity") and d == ul.control_root):
        return True
    if name in MAILDIR_CONTROL:
        roots = (ul.root, ul.inbox_dir, ul.control_root)
    elif name.startswith(("dovecot.index", "dovecot.list.index")):
        roots = (ul.root, ul.inbox_dir, ul.index_root, ul.list_index_dir)
    else:
        return False
    return any(r and _under(d, r) for r in roots)


def confine(config, plan: list[tuple[dict, str]], dovecot_config: str | None, taken_with=None) -> None:
    """Refuse, before anything is written, a plan that puts a file where this installation
    keeps none of its kind: a key file Dovecot's configuration (``dovecot_config``) names
    in no ``mail_crypt_*key`` setting (HostileBundle), a Dovecot file outside the
    directories store.mail_location gives its login (HostileBundle).  A configuration
    that cannot say (no Dovecot configuration, no store.mail_location): BundleError,
    exit 2; so is a key file the configuration names not when the disaster backup was
    taken with another (``taken_with``: give that one).  A member's name alone cannot be
    trusted: a forged manifest's digest is anyone's to compute."""
    keys = [t for item, t in plan if item["member"].startswith("keys/files/")]
    if keys:
        try:
            named = mail_crypt_key_files(dovecot_config, strict=True)
        except BundleError as exc:
            raise BundleError(f"the disaster backup holds {len(keys)} mail_crypt key files ({', '.join(keys[:2])}"
                              f"{', ...' if len(keys) > 2 else ''}), put back only where Dovecot's configuration "
                              f"names them, and {exc}: nothing was restored; restore Dovecot's configuration "
                              f"first (or name it with --dovecot-config FILE), or leave the keys out "
                              f"(--only config,catalog,journals)") from None
        real = {os.path.realpath(n) for n in named}
        for t in keys:
            if t not in named and os.path.realpath(t) not in real:
                if isinstance(taken_with, str) and taken_with != dovecot_config:
                    raise BundleError(f"the disaster backup holds the mail_crypt key file {t}, which Dovecot's "
                                      f"configuration {dovecot_config} names in no mail_crypt_*key setting; "
                                      f"it was taken with {taken_with}: nothing was restored; give "
                                      f"--dovecot-config {taken_with} (once it is back), or leave the keys "
                                      f"out (--only config,catalog,journals)")
                raise _hostile(f"its manifest puts a key file at {t!r}, which Dovecot's configuration "
                               f"({dovecot_config}) names in no mail_crypt_*key setting")
    dov = [(item, t) for item, t in plan if item["member"].startswith("dovecot/")]
    if not dov:
        return
    from asm.store.layout import LayoutError
    from asm.store.maildir.store import open_layout
    why = None
    layout = None
    if config.driver != "maildir" or not config.get("store.mail_location"):
        why = "the configuration names no store.mail_location to say where they go"
    else:
        try:
            layout = open_layout(config, dbox=True)
        except (LayoutError, ImsError, OSError) as exc:
            why = f"store.mail_location cannot be read ({exc})"
    if layout is None:
        raise BundleError(f"the disaster backup holds {len(dov)} files of a Dovecot layout and {why}: nothing "
                          f"was restored; restore the configuration with them (a default kind), or set "
                          f"store.mail_location as it was")
    for item, t in dov:
        login = item.get("login")
        if not _login_sound(login) or not _layout_keeps(layout, dovecot_config, login, item["kind"], t):
            raise _hostile(f"its manifest puts member {item['member']!r} of login {login!r} where "
                           f"store.mail_location ({layout.location.text}) keeps no such file of it")


def misplaced_now(config, plan: list[tuple[dict, str]]) -> dict:
    """{login: Unlisted} of the logins with files in ``plan`` that the running Dovecot's
    userdb now keeps apart from store.mail_location's template (their own ``mail=`` or
    ``home=``): their files must not be put back at the template's place, where Dovecot
    no longer looks.  Empty when the store has no layout or Dovecot's auth-userdb socket
    does not answer (as for imsrestore, docs/dovecot.md)."""
    logins = {item["login"] for item, _ in plan if item.get("login")}
    if not logins or config.driver != "maildir" or not config.get("store.mail_location"):
        return {}
    from asm.store.layout import LayoutError
    from asm.store.maildir.store import _misplaced, open_layout
    try:
        layout = open_layout(config, dbox=True)
    except (LayoutError, ImsError, OSError):
        return {}
    return {login: u for login, (_has, u) in _misplaced(layout).items() if login in logins}


_swept: set = set()


def sweep_dead_copies(d: str) -> None:
    """Remove the temporary copies (``NAME.imsdr-PID.tmp``) an imsdr restore killed
    outright left in ``d`` (its process gone): a re-run finishes with none left in the
    store's folder directories.  Once per directory and run."""
    if d in _swept:
        return
    _swept.add(d)
    from asm.locks import pid_alive
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        m = re.fullmatch(r".+\.imsdr-(\d+)\.tmp", n)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(d, n))


def _store_unreadable(path: str, exc: OSError, what: str = "a directory of the store"):
    """The error for a part of the store a disaster backup cannot read: the store's
    status (17), not the device's, which a wrapping "cannot write DEVICE" gave (3)."""
    from asm.store.base import StoreError, unreadable_hint
    return StoreError(f"cannot read {path}, {what}: {exc.strerror or exc}: {unreadable_hint(exc)}; "
                      f"the disaster backup is incomplete and was not kept")


def put(src: str, target: str, item: dict, owner=None) -> None:
    """Put one restored file in place atomically, with its recorded mode and owner, or
    ``owner`` (store.owner) for a file of the store and the directories made for it."""
    d = os.path.dirname(target)
    missing = []
    p = d
    while p and p != "/" and not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    os.makedirs(d, exist_ok=True)
    if missing and owner and os.geteuid() == 0:
        # directories of a lost tree (CONTROL=, INDEX=) belong to the store's owner, as
        # Dovecot made them: it must write locks and new files there
        for p in missing:
            with contextlib.suppress(OSError):
                os.chown(p, *owner)
                os.chmod(p, 0o700)
    sweep_dead_copies(d)
    tmp = f"{target}.imsdr-{os.getpid()}.tmp"
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, item.get("mode", 0o600) & 0o777)      # (never set-id: no file imsdr writes is)
        if os.geteuid() == 0:
            uid, gid = owner if owner else (item.get("uid", 0), item.get("gid", 0))
            with contextlib.suppress(OSError):
                os.chown(tmp, uid, gid)
        if item.get("mtime"):
            # a folder index says "as of" by its time: reconstruct lets a newer archive's flags win
            os.utime(tmp, (item["mtime"], item["mtime"]))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # (held: a signal between the two left the old database without its WAL, the
        # transactions not yet checkpointed into it lost, and exited 130)
        with interrupts_deferred():
            if item.get("method") == "sqlite-backup":
                for ext in ("-wal", "-shm", "-journal"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(target + ext)
            os.replace(tmp, target)
    except OSError as exc:
        # (a full disk: no half-written file left, and the error names the file being
        # restored there, not the private copy it was read from)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OSError(exc.errno, exc.strerror, target) from None
    except BaseException:
        # (SIGTERM, Ctrl-C, up to the rename: exit 130, nothing half-written left)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
