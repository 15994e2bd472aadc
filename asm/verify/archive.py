"""One archive read the way a restore reads it, every check of docs/format.md §4 made,
and what it holds kept (per folder its UIDs, per message its digest, flags and date) so
a chain, the live store or a test restore can be compared with it.

Nothing here prints or imports the command line: problems are collected as
:class:`Problem` (an exit status from :mod:`asm.errors` and one line).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from asm.archive.errors import (ArchiveError, DigestMismatch, HostileMember, IncompleteArchive,
                                LinkTargetUnavailable)
from asm.archive.reader import ArchiveReader
from asm.archive.values import FolderState, UidSet
from asm.errors import EXIT_HOSTILE, EXIT_INCOMPLETE, EXIT_PARTIAL


@dataclass
class Problem:
    """One problem imsverify found: its exit status and one line saying where and what."""

    status: int          # what it means (asm.errors): 4 damage, 5 hostile, 7 chain, 19 differs, 1 backup errors
    text: str            # one line: where, and what is wrong


def pack_ids(guid, basename, pop3_uidl, pop3_order) -> str:
    """A message's identities (IMSASM.guid, its Maildir base name, POP3 UIDL and order;
    None or 0: none) as one string, kept for each message a check reads: a tuple of four
    took about 90 bytes more a message (imsverify at 100,000 messages)."""
    if not (guid or basename or pop3_uidl or pop3_order):
        return ""
    return f"{guid or ''}\0{basename or ''}\0{pop3_uidl or ''}\0{pop3_order or 0}"


def unpack_ids(packed: str) -> tuple[str, str, str, int]:
    """(GUID, base name, POP3 UIDL, POP3 order) of :func:`pack_ids`' string ("" and 0: none)."""
    if not packed:
        return "", "", "", 0
    guid, basename, uidl, order = packed.split("\0")
    return guid, basename, uidl, int(order)


@dataclass
class FolderRec:
    """A folder as an archive (or a chain of them) says it was at backup time."""
    partition: str
    user: str
    name: str
    uidvalidity: int
    uidnext: int
    subscribed: bool
    uids: UidSet
    state: FolderState
    # uid -> (sha256, flags (sorted tuple), keywords (sorted tuple), int internaldate, size)
    messages: dict = field(default_factory=dict)
    created: float = 0.0   # when the archive that listed it last was started
    acl: str | None = None  # its access control list (IMSASM.acl; None: not archived, a
                            # restore leaves the folder's as it finds it)
    mailbox_guid: str | None = None     # its mailbox GUID (IMSASM.mailbox_guid; None: not archived)
    # uid -> pack_ids(GUID, Maildir base name, POP3 UIDL, POP3 order) of each message,
    # what a restore gives it back (dsync, POP3 clients)
    ids: dict = field(default_factory=dict)
    state_pop3: dict | None = None      # {uid: (POP3 UIDL, order)} of the messages an
                                        # incremental keeps (IMSASM.state_pop3)
    # uid -> ((partition, user, folder), uid, UIDVALIDITY) of the message a link member is
    # one file with (its first copy): a restore makes them one file again (single copy)
    copies: dict = field(default_factory=dict)

    @property
    def mailbox(self) -> str:
        return f"/{self.partition}/{self.user}/{self.name}"


@dataclass
class ArchiveCheck:
    """What :func:`check_archive` found in one archive."""
    device: str
    header: dict = field(default_factory=dict)
    trailer: dict | None = None
    users: dict = field(default_factory=dict)       # (partition, user) -> group
    subscriptions: dict = field(default_factory=dict)  # (partition, user) -> its subscribed names
                                                       # that are no folder (IMSASM.subscriptions)
    folders: dict = field(default_factory=dict)     # (partition, user, folder) -> FolderRec
    counts: dict = field(default_factory=lambda: {"users": 0, "folders": 0, "messages": 0, "links": 0,
                                                  "bytes": 0})
    problems: list = field(default_factory=list)
    backup_errors: list = field(default_factory=list)   # the trailer's errors: what the backup could not save
    seconds: float = 0.0
    readable: bool = False          # the header was read (it is an ims-asm archive)

    @property
    def archive_id(self) -> str | None:
        return self.header.get("archive_id")

    @property
    def created(self) -> float:
        return float(self.header.get("created") or 0.0)

    @property
    def since(self) -> float | None:
        return self.header.get("since")

    @property
    def base(self) -> str | None:
        """The archive id of the base of an incremental by base (``imsbackup --base``)."""
        return self.header.get("base")

    @property
    def incremental(self) -> bool:
        """An incremental, by date (``-d``: ``since``) or by base (``--base``: ``base``)."""
        return self.since is not None or self.base is not None

    @property
    def intact(self) -> bool:
        """Every check passed: header, members, digests, trailer (backup errors aside)."""
        return self.readable and self.trailer is not None and not any(
            p.status != EXIT_PARTIAL for p in self.problems)

    def add(self, status: int, text: str) -> None:
        self.problems.append(Problem(status, text))


def _status(exc: ArchiveError) -> int:
    return EXIT_HOSTILE if isinstance(exc, HostileMember) else (exc.status or EXIT_INCOMPLETE)


def check_archive(raw, device: str, blocking_factor: int = 20, progress=None) -> ArchiveCheck:
    """Read the archive from ``raw`` (a binary stream: file, pipe, tape, remote) to its
    end.  OSError from the device is raised; everything the archive gets wrong is a
    Problem of the result.  ``progress(check)`` is called as messages go by."""
    out = ArchiveCheck(device)
    t0 = time.monotonic()
    try:
        reader = ArchiveReader(raw, blocking_factor)
    except ArchiveError as exc:
        out.add(_status(exc), f"{device}: {exc}")
        out.seconds = time.monotonic() - t0
        return out
    out.readable = True
    out.header = reader.header
    created = float(reader.header.get("created") or 0.0)

    def on_error(exc):
        out.add(_status(exc), f"{device}: {exc}")

    folder = None
    first: dict = {}        # a message member's name -> (folder key, uid, UIDVALIDITY): a link's target
    try:
        for m in reader.members(on_error=on_error):
            if m.kind == "user":
                out.users[(m.partition, m.user)] = m.group
                if m.subscriptions is not None:
                    out.subscriptions[(m.partition, m.user)] = m.subscriptions
                out.counts["users"] += 1
                continue
            if m.kind == "folder":
                folder = FolderRec(m.partition, m.user, m.folder, m.uidvalidity, m.uidnext, m.subscribed,
                                   m.uids, m.state, created=created, acl=m.acl,
                                   mailbox_guid=m.mailbox_guid, state_pop3=m.state_pop3)
                out.folders[(m.partition, m.user, m.folder)] = folder
                out.counts["folders"] += 1
                continue
            if m.kind == "message":
                try:
                    m.check()
                except DigestMismatch as exc:
                    on_error(exc)
                    continue
                out.counts["messages"] += 1
                out.counts["bytes"] += m.size
            else:
                # a link: the reader proved its SHA-256 is its target's, and the target's
                # bytes were checked when the target was read
                out.counts["links"] += 1
            if folder is not None and (folder.partition, folder.user, folder.name) == (
                    m.partition, m.user, m.folder):
                here = (folder.partition, folder.user, folder.name)
                if m.kind == "message":
                    if m.nlink > 1:         # (only a file with other links is a link's target)
                        first[m.name] = (here, m.uid, folder.uidvalidity)
                elif m.linkname in first:
                    folder.copies[m.uid] = first[m.linkname]
                folder.messages[m.uid] = (m.sha256, tuple(sorted(m.flags)), tuple(sorted(m.keywords)),
                                          int(m.internaldate or 0), m.size)
                folder.ids[m.uid] = pack_ids(m.guid, m.basename, m.pop3_uidl, m.pop3_order)
            if progress:
                progress(out)
    except IncompleteArchive as exc:
        out.add(EXIT_INCOMPLETE, f"{device}: {exc}")
    except LinkTargetUnavailable as exc:       # never for a check (links are not opened): a bug
        out.add(EXIT_INCOMPLETE, f"{device}: {exc}")
    if reader.trailer is not None:
        out.trailer = reader.trailer
        for e in reader.trailer.get("errors", []):
            out.backup_errors.append(e)
            out.add(EXIT_PARTIAL, f"{device}: the backup could not save {e['mailbox']}: {e['error']}")
    elif not any(p.status == EXIT_INCOMPLETE for p in out.problems):
        out.add(EXIT_INCOMPLETE, f"{device}: the archive has no trailer: the backup did not finish or the "
                                 "copy was cut short")
    out.seconds = time.monotonic() - t0
    return out
