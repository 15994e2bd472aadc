"""Witnesses of what a store's records said: the restore journal and archives.

Reconstruct asks, per folder, "which UIDVALIDITY did it have, and how far had its
UIDs gone?" and, per message file, "which UID (and flags, dates) did this message
have?".  Beside the store's own damaged or older records (read by the driver's
reconstructor), two witnesses can answer:

* the restore journal, ``$IMS_HOME/data/restore-journal.db``: for each folder a
  restore wrote, its UIDVALIDITY and the UIDNEXT the restore left;
* archives (``imsbackup`` files) named on the command line, a chain in order: each
  folder's UIDVALIDITY, UIDNEXT and subscription, and for each message its UID,
  SHA-256, flags, keywords, dates, and (Maildir) its file's base name, POP3 UIDL and
  POP3 order.  A later archive's word on a message wins.
  They are read through their compression and encryption layers as imsrestore reads
  them (:mod:`asm.layers`: zstd, age with the identities given).

A witness that is damaged (a corrupt member, an archive cut short, a layer that fails)
or hostile (members ims-asm never writes) still speaks for its intact members; what
was wrong is named in :attr:`Knowledge.problems` and :attr:`Knowledge.status` is the
status imsrestore would give the archive (4 or 5), so the run does not end with 0.

Archive metadata can be large (one row per message of the whole store), so it goes
to a private SQLite file under $TMPDIR, never into memory; the archives are read
member by member and no message body is read.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass

from asm.archive import names
from asm.archive.errors import ArchiveError, CorruptMember, DigestMismatch, HostileMember, NotAnArchive
from asm.archive.reader import ArchiveReader
from asm.atend import scratch_dir
from asm.errors import EXIT_HOSTILE, EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE, ImsError
from asm.layers.errors import LayerError
from asm.reconstruct.sqlite import read_only_uri
from asm.trees import remove_tree

MAX_LISTED = 10_000_000     # UIDs one archived folder may list for reconstruct to take it as a witness

_SCHEMA = """
CREATE TABLE folders (user, folder, uidvalidity INTEGER, uidnext INTEGER, subscribed INTEGER,
                      created REAL, source TEXT, mailbox_guid TEXT, PRIMARY KEY (user, folder, uidvalidity));
CREATE TABLE msgs (user, folder, uidvalidity INTEGER, uid INTEGER, sha256 TEXT, flags TEXT,
                   keywords TEXT, internaldate REAL, stored REAL, created REAL, guid TEXT,
                   basename TEXT, pop3_uidl TEXT, pop3_order INTEGER,
                   PRIMARY KEY (user, folder, uidvalidity, uid));
CREATE INDEX msgs_digest ON msgs (user, folder, uidvalidity, sha256);
CREATE TABLE listing (user, folder, uidvalidity INTEGER, created REAL, source TEXT,
                      PRIMARY KEY (user, folder, uidvalidity));
CREATE TABLE listed (user, folder, uidvalidity INTEGER, uid INTEGER,
                     PRIMARY KEY (user, folder, uidvalidity, uid));
"""


class KnowledgeError(ImsError):
    """An archive or journal named as a witness cannot be read at all."""

    status = EXIT_USAGE


@dataclass(frozen=True)
class FolderWitness:
    """What one witness (an archive, or the restore journal) says of a folder."""

    uidvalidity: int
    uidnext: int
    subscribed: bool | None       # None: this witness does not know
    created: float                # when the witness saw it (archive creation, journal entry)
    source: str                   # "journal", or the archive's path
    mailbox_guid: str = ""        # its mailbox GUID (IMSASM.mailbox_guid), "" when no witness knows


@dataclass(frozen=True)
class MessageWitness:
    """What one witness says of a message: its UID, digest and flags."""

    uid: int
    sha256: str | None
    flags: tuple
    keywords: tuple
    internaldate: float | None
    stored: float | None
    source: str
    created: float = 0.0          # when the archive that last spoke of it was taken
    guid: str = ""                # the store's GUID the archive recorded ("" when none)
    basename: str = ""            # the Maildir file's base name ("" when none)
    pop3_uidl: str = ""           # its POP3 UIDL, the uidlist's P field ("" when none)
    pop3_order: int = 0           # its POP3 order, the uidlist's O field (0 when none)


@dataclass(frozen=True)
class Listing:
    """The newest archive's list of the UIDs a folder held when it was taken."""

    created: float
    source: str


def _split(text) -> tuple:
    """Words of a flags or keywords column (a BLOB: keywords holding bytes that are not
    UTF-8, names.to_db)."""
    text = names.from_db(text)
    return tuple(text.split()) if text else ()


@contextlib.contextmanager
def _layered(path: str, identities):
    """The archive's bytes in ``path``, its layers (zstd, age) peeled off as imsrestore
    does; a file that cannot be opened or whose layers cannot be is KnowledgeError with
    the status imsrestore gives it (2: no identity opens it, 4: a layer is damaged, ...)."""
    from asm.layers import open_read
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise KnowledgeError(f"cannot read archive {path}: {exc.strerror}") from None
    with raw:
        try:
            stream, _layers = open_read(raw, identities)
        except LayerError as exc:
            raise KnowledgeError(f"{path}: {exc.strerror or exc}", status=exc.status) from None
        except OSError as exc:
            raise KnowledgeError(f"cannot read archive {path}: {exc.strerror or exc}") from None
        yield stream


def archive_created(path: str, identities=()) -> float | None:
    """When the archive in ``path`` was taken (its header's ``created``); None when the
    file is no ims-asm archive (a file backup, a state file: not a witness).
    KnowledgeError when it may be one but cannot be read (encrypted, no identity opens
    it; a damaged layer or header)."""
    with _layered(path, identities) as f:
        try:
            return float(ArchiveReader(f).header.get("created") or 0.0)
        except NotAnArchive:
            return None
        except ArchiveError as exc:
            raise KnowledgeError(f"{path}: {exc}", status=exc.status) from None
        except OSError as exc:                    # a layer's own damage, also LayerError
            raise KnowledgeError(f"{path}: {exc.strerror or exc}", status=EXIT_INCOMPLETE) from None


class Knowledge:
    """The journal and archives, asked per folder and per message."""

    def __init__(self):
        # removed when the command ends, also when what follows fails (a signal, or a full
        # /tmp, before the caller's "with" owned it left the directory behind)
        self._dir = scratch_dir("ims-reconstruct-")
        self.db = sqlite3.connect(os.path.join(self._dir, "knowledge.db"), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.executescript(_SCHEMA)
        self.sources: list[str] = []          # what was read, for the report
        self.problems: list[str] = []         # archive damage met while reading (named)
        self.notes: list[str] = []            # witnesses passed over that are no archive (the journal)
        self.status = EXIT_OK                 # the worst an archive named as a witness was: 4 or 5

    def close(self) -> None:
        self.db.close()
        remove_tree(self._dir)

    def __enter__(self) -> "Knowledge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- loading ------------------------------------------------------------------
    def add_journal(self, path: str) -> int:
        """Folders the restore journal knows; 0 when there is no journal."""
        rows: list = []
        if os.path.exists(path):
            try:
                con = sqlite3.connect(read_only_uri(path), uri=True)
                try:
                    rows = con.execute("SELECT user, folder, uidvalidity, uidnext, created FROM restored").fetchall()
                finally:
                    con.close()
                self.sources.append(path)
            except sqlite3.Error as exc:
                self.notes.append(f"{path}: the restore journal cannot be read ({exc}); not used")
        for user, folder, uv, un, created in rows:
            if uv is None or un is None:
                continue
            self._folder(names.from_db(user), names.from_db(folder), int(uv), int(un), None,
                         float(created or 0.0), "journal")
        return len(rows)

    def problem(self, text: str, status: int) -> None:
        """An archive named as a witness was damaged (EXIT_INCOMPLETE), could not be
        read, or held hostile members (EXIT_HOSTILE): named, and the run's status."""
        self.problems.append(text)
        if status == EXIT_HOSTILE or self.status == EXIT_HOSTILE:
            self.status = EXIT_HOSTILE
        else:
            self.status = EXIT_INCOMPLETE

    def add_archive(self, path: str, identities=()) -> dict:
        """Every folder and message an archive records; counts.  A damaged or hostile
        member is skipped and named in :attr:`problems`; an archive that is cut short
        gives what came before the cut.  ``identities`` (a list of age identities or a
        callable giving them) open an encrypted archive."""
        counts = {"folders": 0, "messages": 0}
        with _layered(path, identities) as f:
            try:
                reader = ArchiveReader(f)
            except ArchiveError as exc:
                raise KnowledgeError(f"{path}: {exc}", status=exc.status) from None
            except OSError as exc:
                raise KnowledgeError(f"{path}: {exc.strerror or exc}", status=EXIT_INCOMPLETE) from None
            created = float(reader.header.get("created") or 0.0)
            current: dict = {}                    # (user, folder) -> uidvalidity
            self.db.execute("BEGIN")
            try:
                it = reader.members(on_error=lambda e: self.problem(f"{path}: {e}", e.status))
                for m in it:
                    if m.kind == "folder":
                        current[(m.user, m.folder)] = m.uidvalidity
                        self._folder(m.user, m.folder, m.uidvalidity, m.uidnext, bool(m.subscribed),
                                     created, path, m.mailbox_guid)
                        self._state(m, created)
                        self._listing(m, created, path)
                        counts["folders"] += 1
                    elif m.kind in ("message", "link"):
                        uv = current.get((m.user, m.folder))
                        if uv is None:
                            continue
                        self.db.execute(
                            "INSERT OR REPLACE INTO msgs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                            (names.to_db(m.user), names.to_db(m.folder), uv, m.uid, m.sha256,
                             " ".join(sorted(m.flags)), names.to_db(" ".join(m.keywords)), m.internaldate,
                             m.stored, created, m.guid or "", m.basename or "", m.pop3_uidl or "",
                             m.pop3_order or 0))
                        counts["messages"] += 1
                        if m.kind == "message":
                            # the bytes are read to their SHA-256, as imsrestore -t reads them:
                            # a witness whose mail is damaged is named (4), though only its
                            # records are used here; the admin may restore from it next
                            try:
                                m.check()
                            except DigestMismatch as exc:
                                self.problem(f"{path}: {exc}", exc.status)
            except (CorruptMember, HostileMember):
                pass                              # already in problems via on_error
            except ArchiveError as exc:
                self.problem(f"{path}: {exc}", exc.status)
            except OSError as exc:                # a layer cut short or damaged (LayerDamaged)
                self.problem(f"{path}: {exc.strerror or exc}", EXIT_INCOMPLETE)
            finally:
                self.db.execute("COMMIT")
        self.sources.append(path)
        return counts

    def _folder(self, user, folder, uv, un, subscribed, created, source, mailbox_guid=None) -> None:
        row = self.db.execute("SELECT created, uidnext, mailbox_guid FROM folders WHERE user=? AND folder=? AND "
                              "uidvalidity=?", (names.to_db(user), names.to_db(folder), uv)).fetchone()
        if row is not None and row[0] > created:
            # an older witness may still know a higher UIDNEXT (never lower it)
            if un > row[1]:
                self.db.execute("UPDATE folders SET uidnext=? WHERE user=? AND folder=? AND uidvalidity=?",
                                (un, names.to_db(user), names.to_db(folder), uv))
            if mailbox_guid and not row[2]:
                self.db.execute("UPDATE folders SET mailbox_guid=? WHERE user=? AND folder=? AND uidvalidity=?",
                                (mailbox_guid, names.to_db(user), names.to_db(folder), uv))
            return
        if row is not None:
            un = max(un, row[1])
            mailbox_guid = mailbox_guid or row[2]     # (the journal, an older archive: none)
            if subscribed is None:
                old = self.db.execute("SELECT subscribed FROM folders WHERE user=? AND folder=? AND "
                                      "uidvalidity=?", (names.to_db(user), names.to_db(folder), uv)).fetchone()
                subscribed = None if old[0] is None else bool(old[0])
        self.db.execute("INSERT OR REPLACE INTO folders VALUES (?,?,?,?,?,?,?,?)",
                        (names.to_db(user), names.to_db(folder), uv, un,
                         None if subscribed is None else int(subscribed), created, source, mailbox_guid or ""))

    def _listing(self, m, created, source) -> None:
        key = (names.to_db(m.user), names.to_db(m.folder), m.uidvalidity)
        row = self.db.execute("SELECT created FROM listing WHERE user=? AND folder=? AND uidvalidity=?",
                              key).fetchone()
        if row is not None and row[0] > created:
            return
        self.db.execute("DELETE FROM listed WHERE user=? AND folder=? AND uidvalidity=?", key)
        self.db.execute("INSERT OR REPLACE INTO listing VALUES (?,?,?,?,?)", key + (created, source))
        if len(m.uids) > MAX_LISTED:
            return              # no folder holds so many: a witness that says so is not believed
        self.db.executemany("INSERT OR IGNORE INTO listed VALUES (?,?,?,?)", (key + (u,) for u in m.uids))

    def _state(self, m, created) -> None:
        """An incremental's folder member lists the flags of messages it does not carry
        (the reader has parsed and checked its IMSASM.state record), and their POP3
        UIDLs and orders (IMSASM.state_pop3: saved by Dovecot when a POP3 client logged
        in after the archive that carried the message; before, a reconstruct from a
        chain gave such a message none, and its POP3 client downloaded it again)."""
        if len(m.uids) > MAX_LISTED:
            return
        for fl, kw, uids in m.state.entries:
            flags = " ".join(sorted(fl))
            kws = names.to_db(" ".join(kw))      # a keyword's bytes that are not UTF-8: a BLOB
            for uid in uids:
                self.db.execute("UPDATE msgs SET flags=?, keywords=?, created=? WHERE user=? AND folder=? "
                                "AND uidvalidity=? AND uid=? AND created<=?",
                                (flags, kws, created, names.to_db(m.user), names.to_db(m.folder),
                                 m.uidvalidity, uid, created))
        for uid, (uidl, order) in (getattr(m, "state_pop3", None) or {}).items():
            self.db.execute("UPDATE msgs SET pop3_uidl=?, pop3_order=? WHERE user=? AND folder=? "
                            "AND uidvalidity=? AND uid=? AND created<=?",
                            (uidl or "", order or 0, names.to_db(m.user), names.to_db(m.folder),
                             m.uidvalidity, uid, created))

    # -- asking -------------------------------------------------------------------
    def folders(self, user: str, folder: str) -> list[FolderWitness]:
        """Every UIDVALIDITY a witness knows for the folder, the newest first."""
        rows = self.db.execute("SELECT uidvalidity, uidnext, subscribed, created, source, mailbox_guid FROM folders "
                               "WHERE user=? AND folder=? ORDER BY created DESC",
                               (names.to_db(user), names.to_db(folder))).fetchall()
        return [FolderWitness(r[0], r[1], None if r[2] is None else bool(r[2]), r[3], r[4], r[5] or "")
                for r in rows]

    def folder(self, user: str, folder: str, uidvalidity: int | None = None) -> FolderWitness | None:
        """The newest witness of the folder (with that UIDVALIDITY, when given)."""
        for w in self.folders(user, folder):
            if uidvalidity is None or w.uidvalidity == uidvalidity:
                return w
        return None

    def folder_names(self, user: str) -> list[str]:
        return sorted({names.from_db(r[0]) for r in self.db.execute(
            "SELECT folder FROM folders WHERE user=?", (names.to_db(user),))})

    def message(self, user: str, folder: str, uidvalidity: int, uid: int) -> MessageWitness | None:
        r = self.db.execute("SELECT uid, sha256, flags, keywords, internaldate, stored, created, guid FROM msgs "
                            "WHERE user=? AND folder=? AND uidvalidity=? AND uid=?",
                            (names.to_db(user), names.to_db(folder), uidvalidity, uid)).fetchone()
        if r is None:
            return None
        return MessageWitness(r[0], r[1], _split(r[2]), _split(r[3]), r[4], r[5], "archive", r[6] or 0.0,
                              r[7] or "")

    def listing(self, user: str, folder: str, uidvalidity: int) -> Listing | None:
        r = self.db.execute("SELECT created, source FROM listing WHERE user=? AND folder=? AND uidvalidity=?",
                            (names.to_db(user), names.to_db(folder), uidvalidity)).fetchone()
        return Listing(r[0], r[1]) if r else None

    def listed(self, user: str, folder: str, uidvalidity: int, uid: int) -> bool:
        """Did the newest archive of the folder still hold this UID?"""
        return self.db.execute("SELECT 1 FROM listed WHERE user=? AND folder=? AND uidvalidity=? AND uid=?",
                               (names.to_db(user), names.to_db(folder), uidvalidity, uid)).fetchone() is not None

    def by_digest(self, user: str, folder: str, uidvalidity: int, sha256: str) -> list[MessageWitness]:
        """The archived messages of the folder with these bytes, by UID."""
        rows = self.db.execute("SELECT uid, sha256, flags, keywords, internaldate, stored, guid, basename, "
                               "pop3_uidl, pop3_order FROM msgs WHERE "
                               "user=? AND folder=? AND uidvalidity=? AND sha256=? ORDER BY uid",
                               (names.to_db(user), names.to_db(folder), uidvalidity, sha256)).fetchall()
        return [MessageWitness(r[0], r[1], _split(r[2]), _split(r[3]), r[4], r[5], "archive", guid=r[6] or "",
                               basename=r[7] or "", pop3_uidl=r[8] or "", pop3_order=r[9] or 0)
                for r in rows]

    def has_messages(self, user: str, folder: str, uidvalidity: int) -> bool:
        return self.db.execute("SELECT 1 FROM msgs WHERE user=? AND folder=? AND uidvalidity=? LIMIT 1",
                               (names.to_db(user), names.to_db(folder), uidvalidity)).fetchone() is not None
