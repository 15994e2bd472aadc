"""The logical mailbox view every store driver implements (the "backup API").

A store holds partitions; a partition holds users; a user holds folders named with
``/`` as the hierarchy separator (``INBOX``, ``Work/2023``); a folder holds messages
keyed by UID.  Backup and restore talk only to this interface, so nothing above it
knows which driver is underneath.

Drivers are file-per-message stores, so a message also has a ``path``: the backup
streams from it with large reads, and the restore can hard-link a second copy to the
first one.  A ``path`` may go stale (a Maildir file is renamed when its flags change,
a message is expunged): callers re-ask ``message()`` once and otherwise treat the
message as gone (:class:`MessageGone`).
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
import errno
import functools
import os
import stat
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Iterable, Iterator

from asm.errors import (
    EXIT_LOCKED, EXIT_NOSPACE, EXIT_PARTIAL, EXIT_STORE, EXIT_USAGE, ImsError,
)

#: IMAP system flags a driver stores; anything else is a keyword.
SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
# how often a reader looks again for a message file a client renamed (a Maildir flag
# change) while it was read; Dovecot's maildir-util.c retries as often
RENAME_RETRIES = 10


class StoreError(ImsError):
    """Base class of every error a store driver raises on purpose.  Unless a subclass
    says otherwise it means the store cannot be read or written as asked (damaged index,
    read-only, a name the filesystem refuses): EXIT_STORE at a command's top level."""

    status = EXIT_STORE


class NoSuchUser(StoreError):
    status = EXIT_USAGE         # a user someone named: nothing was done

    def __init__(self, user: str):
        super().__init__(f"no such user: {user!r}")
        self.user = user


class NoSuchPartition(StoreError):
    status = EXIT_USAGE

    def __init__(self, partition: str, known: Iterable[str]):
        super().__init__(f"no partition {partition!r} (configured: {', '.join(known)})")
        self.partition = partition


class NoSuchFolder(StoreError):
    status = EXIT_USAGE

    def __init__(self, user: str, folder: str):
        super().__init__(f"no such folder: {folder!r} of user {user!r}")
        self.user, self.folder = user, folder


class FolderExists(StoreError):
    status = EXIT_USAGE

    def __init__(self, user: str, folder: str):
        super().__init__(f"folder already exists: {folder!r} of user {user!r}")
        self.user, self.folder = user, folder


class NotNumbered(StoreError):
    """A folder whose messages have no UIDs on disk that this process may give them
    (a Maildir without dovecot-uidlist whose Dovecot index, which holds the UIDVALIDITY
    Dovecot will keep, cannot be read; or a read-only command that would have to choose
    a new UIDVALIDITY or rename a file): the folder is not read, nothing is written,
    and the command names it."""


class UserExists(StoreError):
    status = EXIT_USAGE

    def __init__(self, user: str):
        super().__init__(f"user already exists: {user!r}")
        self.user = user


class MessageGone(StoreError):
    """The message was expunged (or renamed away) between listing and reading: that one
    message is missing from what a command did."""

    status = EXIT_PARTIAL

    def __init__(self, user: str, folder: str, uid: int):
        super().__init__(f"message {uid} of {user}/{folder} vanished")
        self.user, self.folder, self.uid = user, folder, uid


class UidInUse(StoreError):
    def __init__(self, user: str, folder: str, uid: int):
        super().__init__(f"UID {uid} is already used in {user}/{folder}")


class UidPassed(UidInUse):
    """A fill at a UID the folder's server has told its clients is gone (UIDNEXT passed
    it without a message): a message stored there now would never reach a client that
    fetches from the UIDNEXT it was given (RFC 3501 2.3.1.1)."""

    def __init__(self, user: str, folder: str, uid: int):
        StoreError.__init__(self, f"UID {uid} of {user}/{folder} was given out as gone: it is not reused")


class EmptyMessage(StoreError):
    """A message of 0 bytes offered for delivery: no mail server stores one (Dovecot's
    LMTP and APPEND refuse it), and it would take a UID for nothing."""

    status = EXIT_USAGE         # bad input: nothing was stored, no UID used

    def __init__(self):
        super().__init__("the message is empty (0 bytes): nothing delivered")


class _Prefixed:
    """The bytes ``head`` then the rest of ``src``: a stream whose first bytes were read
    to see that it holds some (a pipe cannot be read again)."""

    def __init__(self, head: bytes, src: BinaryIO):
        self._head, self._src = head, src

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                out, self._head = self._head + self._src.read(), b""
                return out
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._src.read(n)

    def close(self) -> None:
        self._src.close()


def partly_delivered(exc: BaseException, out: dict) -> None:
    """For a driver's ``deliver`` that failed (or was interrupted) part way: ``out``,
    the {user: MessageInfo or None (queued)} of the recipients that have the message
    already, goes with the exception as ``exc.delivered`` (imsdeliver names them, so a
    retry goes to the others only and nobody gets it twice)."""
    if out:
        with contextlib.suppress(AttributeError, TypeError):
            exc.delivered = dict(out)


def nonempty_message(src: BinaryIO) -> BinaryIO:
    """``src``, or a stream of the same bytes, when it holds at least one byte;
    EmptyMessage when it holds none (before anything is written or a UID taken)."""
    peek = getattr(src, "peek", None)
    if peek is not None:
        if peek(1):
            return src
        raise EmptyMessage()
    head = src.read(COPY_CHUNK)
    if not head:
        raise EmptyMessage()
    return _Prefixed(head, src)


class StoreFull(StoreError):
    """The store's filesystem (or its quota) is full: nothing more can be written."""

    status = EXIT_NOSPACE

    def __init__(self, what: str, why: str = "No space left on device", outside: str | None = None):
        # ``outside``: the file written is not in the store (the Dovecot hold file), so the
        # filesystem to free is that file's, not a partition's
        if outside:
            super().__init__(f"no space left ({why}) while writing {what}: free space on the filesystem "
                             f"holding {outside} and run the same command again")
            return
        super().__init__(f"the store is full ({why}) while writing {what}: free space on the "
                         f"partition and run the same command again")


def unreadable_hint(exc: OSError) -> str:
    """What to do about a part of the store this process cannot read: a permission
    refused is another user's store (a cron line in the wrong crontab)."""
    return ("run as the store's owner or root" if exc.errno in (errno.EACCES, errno.EPERM)
            else "check the store's disk")


def os_store_error(exc: OSError, what: str) -> StoreError:
    """The StoreError a failed filesystem call on the store stands for: a full disk is
    StoreFull (exit 13); anything else (a read-only filesystem, a name too long for it,
    permissions) names what was being done and why (exit 17)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(what, exc.strerror or str(exc))
    why = exc.strerror or str(exc)
    if exc.errno == errno.EROFS:
        why += ": the store's filesystem is mounted read-only"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        why += ": check the store's permissions (store.owner)"
    where = f" ({exc.filename})" if exc.filename else ""
    return StoreError(f"cannot write {what}: {why}{where}")


#: operations whose second argument is not a folder
_USER_ONLY = ("create_user", "delete_user", "hold_deliveries", "release_deliveries")


def _what(fn, args) -> str:
    named = args[:1] if fn.__name__ in _USER_ONLY else args[:2]
    return "/".join(str(a) for a in named if isinstance(a, str)) or fn.__name__


def store_os_errors(fn):
    """Decorator for a driver's write operations: an OSError of the filesystem becomes
    the StoreError (:func:`os_store_error`) naming the user and folder, so a store's
    failure is never reported as the device's or as a crash."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except OSError as exc:
            raise os_store_error(exc, _what(fn, args)) from None
    return wrapper


class LockTimeout(StoreError):
    status = EXIT_LOCKED

    def __init__(self, what: str, path: str = ""):
        super().__init__(f"could not lock {what}: another process holds it; try again later")
        self.path = path or what


class BadName(StoreError):
    """A user or folder name the driver cannot store (empty level, NUL, ...)."""

    status = EXIT_USAGE


class NameTooLong(BadName):
    """A folder name the driver would keep as a directory name of more than
    :data:`NAME_MAX` bytes (a shorter name would do: imsrestore -n shortens the one it
    makes)."""


class LinkInStore(StoreError):
    """A symbolic link where a mail directory or a control file of a folder should be
    (docs/operations.md): never followed, by a backup or a restore."""

    def __init__(self, path: str):
        self.path = path
        super().__init__(f"{path} is a symbolic link: ims-asm never follows one in a mail directory "
                         "(it could name any file or directory on the system); replace it with the "
                         "directory or file it names")


def open_nofollow(path: str, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that never follows a symbolic link at ``path`` (:class:`LinkInStore`):
    for the files of a mail directory, which its user may have replaced with one."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinkInStore(path) from None
        raise


def nofollow_opener(path: str, flags: int) -> int:
    """``open(..., opener=nofollow_opener)``: :func:`open_nofollow` for ``open``."""
    return open_nofollow(path, flags, 0o666)


class Unlisted:
    """Mail on disk that the store's own lists do not know, so a backup would skip it
    without a word: a user directory the classic mailbox list lacks, a Maildir home
    or folder directory the maildir driver cannot read as one.  (A plain class, not a
    dataclass: a dataclass execs its generated methods at import, at every start.)"""

    __slots__ = ("kind", "partition", "user", "folder", "path", "why", "hint")

    def __init__(self, kind: str, partition: str, user: str, folder: str | None, path: str, why: str,
                 hint: str | None = None):
        self.kind = kind                    # "user" or "folder"
        self.partition = partition
        self.user = user                    # the name the directory stands for
        self.folder = folder
        self.path = path                    # the directory on disk
        self.why = why
        self.hint = hint                    # what to do, when not the store's unlisted_hint


@dataclass(frozen=True)
class MessageInfo:
    """One message of a folder snapshot (a docstring spares dataclass an
    inspect.signature at import)."""

    uid: int
    flags: frozenset = frozenset()          # subset of SYSTEM_FLAGS
    keywords: tuple = ()                     # IMAP keywords, in order
    internaldate: float = 0.0                # epoch seconds (IMAP INTERNALDATE)
    stored: float = 0.0                      # epoch seconds the store received it
    size: int = 0                            # bytes on disk (exactly what is streamed)
    path: str = ""                           # the file holding the bytes
    dev: int = 0
    ino: int = 0
    nlink: int = 1
    guid: str = ""                           # the store's GUID of the message (Dovecot: X-GUID)
    changed: float = 0.0                     # when it last entered this folder in this store
                                             # (Maildir: the file's ctime; classic: stored)
    compressed: str = ""                     # "gz", "bz2", "xz": the file holds the
                                             # message compressed (Dovecot's zlib plugin);
                                             # size is then the message's, not the file's
    basename: str = ""                       # Maildir: the file's base name (POP3 UIDL %f)
    pop3_uidl: str = ""                      # the message's own POP3 UIDL (Dovecot: the
                                             # uidlist's P field; an empty P: the base name)
    pop3_order: int = 0                      # its POP3 order (the uidlist's O field), 0: none


SETTLE_NS = 2_000_000_000        # a fingerprint counts when nothing moved for this long


def stat_part(st) -> list:
    """One file of a folder fingerprint (Store.folder_unchanged): [inode, size, mtime_ns,
    ctime_ns], a JSON-able list."""
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def settled(parts: list, seen: float) -> bool:
    """Whether every part of a fingerprint (stat_part lists; [] for a file that is not
    there) was last changed SETTLE_NS before ``seen``, when it was taken: a change made
    later, even in the same clock tick as the snapshot, then always gives another mtime
    or ctime."""
    limit = int(seen * 1e9) - SETTLE_NS
    return all(not part or (part[2] < limit and part[3] < limit) for part in parts)


_FIELDS = ("uid", "flags", "keywords", "internaldate", "stored", "size", "path", "dev", "ino",
           "nlink", "guid", "changed", "compressed", "basename", "pop3_uidl", "pop3_order")
assert _FIELDS == tuple(f.name for f in dataclasses.fields(MessageInfo))
_new = object.__new__
_set = object.__setattr__


def message_info(uid, flags, keywords, internaldate, stored, size, path, dev, ino, nlink, guid,
                 changed, compressed, basename="", pop3_uidl="", pop3_order=0) -> MessageInfo:
    """MessageInfo(every field, in order): the same frozen object, made without the
    dataclass's one object.__setattr__ per field (5x faster; a snapshot makes one per
    message)."""
    m = _new(MessageInfo)
    _set(m, "__dict__", {"uid": uid, "flags": flags, "keywords": keywords,
                         "internaldate": internaldate, "stored": stored, "size": size,
                         "path": path, "dev": dev, "ino": ino, "nlink": nlink, "guid": guid,
                         "changed": changed, "compressed": compressed, "basename": basename,
                         "pop3_uidl": pop3_uidl, "pop3_order": pop3_order})
    return m


@dataclass(frozen=True)
class FolderInfo:
    """A folder's name, UIDVALIDITY, UIDNEXT, subscription and mailbox GUID."""

    name: str                                # logical name, "/"-separated, "INBOX" first
    uidvalidity: int
    uidnext: int
    subscribed: bool = False
    guid: str = ""                           # the store's mailbox GUID (32 lowercase hex
                                             # digits: Dovecot's), "" when it has none
    acl: str | None = None                   # the folder's access control list as its store
                                             # keeps it (Dovecot's dovecot-acl text, "" for
                                             # none), None when the store does not say


@dataclass
class FolderSnapshot:
    """A folder's metadata and message list taken together under its lock."""

    info: FolderInfo
    messages: list = field(default_factory=list)  # list[MessageInfo], ascending UID
    warnings: list = field(default_factory=list)  # what the snapshot could not carry
    # what the folder looked like on disk before it was read (a JSON-able list the
    # driver compares with Store.folder_unchanged), or None when it cannot say: an
    # incremental whose base recorded it skips the folder while it stays the same
    fingerprint: list | None = None


class Store(abc.ABC):
    """One store: its partitions, users, folders and messages.

    ``name`` is the driver name used in configuration (``store.driver``) and
    recorded in archives.
    """

    name = "abstract"
    _batch_depth = 0
    #: set by a command that must not change the store (imsverify --against-store):
    #: a driver that would write to read (number a folder's new messages, give it a
    #: uidlist) names the folder instead (NotNumbered)
    read_only = False
    #: What to do about :meth:`unlisted_users` found where the store lists nobody.
    unlisted_hint = "the store's own list of users does not know them"
    #: A restored message keeps the archived "stored" date (True), or the store dates it
    #: now, when it entered this store (False: the classic store, whose incrementals by
    #: date (-d) judge by it).
    restore_keeps_stored = True

    def check_partition(self, partition: str, writing: bool = False) -> bool:
        """Raise :class:`asm.store.partitions.PartitionUnavailable` when the partition's
        directory cannot be used (missing for a reader, not a directory, unreadable, an
        unmounted disk); True when it exists."""
        from asm.store.partitions import check_partition_dir
        config = getattr(self, "config", None)
        configured = config.partition_configured(partition) if config is not None else True
        return check_partition_dir(partition, self.partition_path(partition), configured, writing)

    def unlisted_users(self, partition: str) -> list[Unlisted]:
        """User directories on ``partition`` that look like mail but that :meth:`users`
        does not list (a lost mailbox list, a layout the driver does not read)."""
        return []

    def unlisted_folders(self, user: str) -> list[Unlisted]:
        """Folder directories of ``user`` that hold mail but that :meth:`folder_names`
        does not list."""
        return []

    # -- read side ------------------------------------------------------------
    @abc.abstractmethod
    def partitions(self) -> list[str]:
        """Partition names, ``primary`` first when present."""

    @abc.abstractmethod
    def users(self, partition: str) -> list[str]:
        """User IDs stored on ``partition``, sorted."""

    @abc.abstractmethod
    def user_partition(self, user: str) -> str:
        """The partition holding ``user``; raises NoSuchUser."""

    @abc.abstractmethod
    def folders(self, user: str) -> list[FolderInfo]:
        """The user's folders, INBOX first then sorted by name."""

    def folder_names(self, user: str) -> list[str]:
        """The user's folder names, INBOX first, without reading any folder's index
        (so one damaged folder does not hide the others)."""
        return [f.name for f in self.folders(user)]

    @abc.abstractmethod
    def folder(self, user: str, folder: str) -> FolderInfo:
        """One folder's metadata; raises NoSuchFolder."""

    @abc.abstractmethod
    def snapshot(self, user: str, folder: str, since: float | None = None,
                 known=None) -> FolderSnapshot:
        """Folder metadata and its messages, read under the folder lock (held briefly).

        With ``since``, every message's ``changed`` (when it last entered this folder in
        this store) is filled in, and messages that did not change since it may be
        returned with only ``uid``, ``flags``, ``keywords``, ``stored``, ``changed``.
        With ``known`` (a container of UIDs: what an incremental's base held), the
        messages it holds may be returned the same way (unless ``since`` says they
        changed).  Incremental backups use that: they still record every UID and the
        flags of the old messages.
        """

    def messages(self, user: str, folder: str) -> list[MessageInfo]:
        return self.snapshot(user, folder).messages

    def folder_unchanged(self, user: str, folder: str, fingerprint: list) -> FolderInfo | None:
        """The folder's FolderInfo when it is exactly as it was when a snapshot recorded
        ``fingerprint`` (the same UIDs, flags and keywords, nothing being written), else
        None.  A driver that cannot tell answers None: the folder is then read again."""
        return None

    def arrivals(self, user: str, folder: str, uidnext: int, fingerprint: list | None = None) -> list:
        """The messages that came into the folder after a snapshot that gave ``uidnext``
        (and ``fingerprint``, when it recorded one): ``(uid, path, os.stat_result, born)``
        of each file under a UID at or above ``uidnext``, ascending; ``born``: when the
        message first came into the store as far as its GUID tells (None: it does not).  A full backup asks it
        of each folder it read once the folder's user is done, to name the messages a
        client moved in from a folder read after they left it (docs/operations.md).  []
        when the driver cannot tell."""
        return []

    def readahead(self, user: str, folder: str) -> tuple | None:
        """Where a whole read of the folder (a snapshot, then every message) looks, for
        a full backup's cold-cache read-ahead (asm/backupwarm.py): ``(files, dirs,
        descend)``, the files it reads, the directories whose regular files it reads,
        and a regular expression naming the subdirectories of those (one level) whose
        regular files it reads too (None: none).  None (the default): the driver does
        not say, nothing is read ahead.  Called for every folder before the backup
        begins, so it must be cheap: it makes paths (and may look where a directory
        is), it reads no folder."""
        return None

    @abc.abstractmethod
    def message(self, user: str, folder: str, uid: int) -> MessageInfo:
        """One message, freshly looked up; raises MessageGone."""

    def open_message(self, user: str, folder: str, uid: int) -> BinaryIO:
        """The message bytes as a binary file (streamed, never read whole)."""
        for attempt in (0, 1):
            info = self.message(user, folder, uid)
            try:
                return open_stored(info)
            except FileNotFoundError:
                continue
        raise MessageGone(user, folder, uid)

    def exists(self, user: str, folder: str | None = None) -> bool:
        try:
            if folder is None:
                self.user_partition(user)
            else:
                self.folder(user, folder)
            return True
        except (NoSuchUser, NoSuchFolder):
            return False

    # -- write side -----------------------------------------------------------
    def check_new_user(self, user: str) -> str:
        """``user`` if this store can keep it as a user ID, else BadName saying why: a
        name can be checked before anything is written (imsrestore -m).  Any valid
        user ID by default; a driver with its own limits says so."""
        return check_user_name(user)

    def check_writer(self, user: str) -> None:
        """A StoreError when what a restore writes for ``user`` could not be read by the
        mail server that serves it (the maildir driver: files of another uid than the one
        Dovecot runs the login as).  Nothing by default."""

    def check_new_folder(self, user: str, folder: str) -> str:
        """``folder`` (normalised) if this store can keep it as a folder of ``user`` (who
        exists), else BadName saying why (NameTooLong when only its length is in the
        way): a name can be checked before anything is written.  Any valid folder name
        by default; a driver with its own limits says so."""
        return check_folder_name(folder)

    @abc.abstractmethod
    def create_user(self, user: str, partition: str = "primary", uidvalidity: int | None = None,
                    guid: str = "") -> None:
        """Create ``user`` with an empty, subscribed INBOX (of UIDVALIDITY ``uidvalidity``
        and mailbox GUID ``guid`` when given and the store has mailbox GUIDs: a restore
        gives it the archive's from the start); raises UserExists."""

    def create_user_to_fill(self, user: str, partition: str = "primary", uidvalidity: int | None = None,
                            guid: str = "") -> None:
        """:meth:`create_user` for a caller that fills INBOX next under its lock (a
        restore): a driver may make INBOX appear whole, messages and all, when that lock
        is released (the classic store does, for fewer syncs).  By default create_user."""
        self.create_user(user, partition, uidvalidity, guid)

    @abc.abstractmethod
    def delete_user(self, user: str) -> None:
        """Remove the user and every folder and message."""

    @abc.abstractmethod
    def create_folder(self, user: str, folder: str, uidvalidity: int | None = None,
                      uidnext: int = 1, subscribed: bool = False, guid: str = "") -> FolderInfo:
        """Create a folder (parents are implied); raises FolderExists.  ``guid``: its
        mailbox GUID (a store without mailbox GUIDs ignores it; "" makes a new one)."""

    def create_folder_held(self, locks: contextlib.ExitStack, user: str, folder: str,
                           **kwargs) -> FolderInfo:
        """:meth:`create_folder`, its :meth:`lock` entered on ``locks``.  A driver that
        can keeps the lock it made the folder under (nothing can come in between, so
        nothing it wrote has to be read again); by default :meth:`create_folder_to_fill`
        then the lock."""
        info = self.create_folder_to_fill(user, folder, **kwargs)
        locks.enter_context(self.lock(user, folder))
        return info

    def create_folder_to_fill(self, user: str, folder: str, uidvalidity: int | None = None,
                              uidnext: int = 1, subscribed: bool = False, guid: str = "") -> FolderInfo:
        """:meth:`create_folder` for a caller that takes the folder's lock next and
        fills it under that lock (a restore): a driver may make the folder appear whole,
        messages and all, when that lock is released (the classic store does, for fewer
        syncs).  A folder listed but not filled yet reads as empty.  By default
        create_folder."""
        return self.create_folder(user, folder, uidvalidity, uidnext, subscribed, guid)

    #: True when snapshots tell a folder's access control list (FolderInfo.acl) and
    #: set_acl writes one
    carries_acl = False

    def set_acl(self, user: str, folder: str, acl: str) -> bool:
        """Give ``user``'s ``folder`` the access control list ``acl`` (as FolderInfo.acl
        has it; "" removes the folder's own).  True when that changed the folder's
        ACL; False when it was so already, or (nothing done) for a store that does not
        keep ACLs."""
        return False

    def acl(self, user: str, folder: str) -> str | None:
        """The folder's access control list as set_acl writes it ("" for none); None
        for a store that does not keep ACLs (what imsverify compares a restore with)."""
        return None

    #: True when a restore stores the copies of one message (a link member and its first
    #: copy) as one file (hard links) and keeps them so: what imsverify compares
    single_copies = False

    def identity_differences(self, m: MessageInfo, guid: str, basename: str, pop3_uidl: str,
                             pop3_order: int) -> list[tuple[str, object, object]]:
        """What of message ``m`` (restored) is not what a restore gives a message archived
        with these identities (IMSASM.guid, the Maildir base name, the POP3 UIDL and
        order; "" and 0 for none): [(what, here, archived)], empty when it is all kept.
        Only what this store keeps is compared (imsverify --restore-test and --exact: a
        lost GUID breaks dsync and a pop3_uidl_format of %g, a lost base name or P field
        makes POP3 clients download mail again).  This store keeps none of them."""
        return []

    @abc.abstractmethod
    def delete_folder(self, user: str, folder: str) -> None:
        """Remove one folder and its messages (not its subfolders)."""

    def other_subscriptions(self, user: str, folders: Iterable[str] | None = None) -> list[str]:
        """The user's subscribed names that are no folder of it, sorted: an IMAP
        client's subscription its server keeps after a DELETE or RENAME, a parent that
        only holds folders.  ``folders``: the user's folder names, when the caller has
        just listed them.  A store whose subscriptions are its folders' own has none."""
        return []

    def subscribe_names(self, user: str, names: Iterable[str]) -> None:
        """Subscribe ``names`` (folders or not) that are not subscribed yet; never
        unsubscribes.  A store whose subscriptions are its folders' own does nothing."""
        return None

    def unsubscribe_names(self, user: str, names: Iterable[str]) -> None:
        """End the subscriptions to ``names`` (that are no folder of the user)."""
        return None

    def remove_empty_levels(self, user: str, folder: str) -> None:
        """After ``folder`` was removed: the levels above it that hold no folder any
        more and are no folder themselves go too (a server that keeps such a level,
        LAYOUT=fs or dbox, lists it as \\Noselect).  Dovecot's RENAME removes them so;
        a chain in one command never makes them, and a chain restored archive by archive
        must end as it does.  A level that holds anything stays.  A store whose parents
        are no directories of their own does nothing."""
        return None

    def folder_remains(self, user: str, folder: str) -> bool:
        """True when a folder that does not exist left something behind that its
        server still shows (a deletion killed half way): delete_folder finishes it."""
        return False

    @abc.abstractmethod
    def set_folder(self, user: str, folder: str, *, uidvalidity: int | None = None,
                   uidnext: int | None = None, subscribed: bool | None = None,
                   guid: str | None = None) -> FolderInfo:
        """Change folder metadata.  UIDNEXT never moves below max(UID)+1.  ``guid``: a new
        mailbox GUID (a store without mailbox GUIDs ignores it)."""

    @abc.abstractmethod
    def append(self, user: str, folder: str, src: BinaryIO | None, *, uid: int | None = None,
               flags: Iterable[str] = (), keywords: Iterable[str] = (),
               internaldate: float | None = None, stored: float | None = None,
               link_from: str | None = None, size_hint: int | None = None,
               guid: str | None = None, fill: bool = False, basename: str | None = None,
               pop3_uidl: str | None = None, pop3_order: int | None = None) -> MessageInfo:
        """Add one message and return it as stored.

        ``fill``: the given UID may be below the highest present, when no message has
        it (``imsrestore -r`` putting a linked message at the UID its restore left free
        for it); UIDNEXT does not move.  A UID the store's server told clients is gone
        is never filled (UidPassed).

        ``guid``: the message's GUID to keep (a restore gives the archived one); None
        lets the store make one.  ``basename``, ``pop3_uidl``, ``pop3_order``: what
        POP3 clients know the message by (MessageInfo), to keep where the store can
        (a Maildir file's name, its uidlist record); a store without them ignores them.

        ``src`` is read to EOF in chunks (the bytes are written exactly).  With
        ``link_from`` (the ``path`` of a message in this store) the new message is a
        hard link to that file and ``src`` may be None; when a link is impossible
        (another filesystem) the file is copied.  ``uid`` None takes UIDNEXT; a given
        UID must be >= every UID present (else UidInUse), and UIDNEXT moves past it.
        The message appears whole or not at all (written to a temporary name, then
        renamed).  Dates default to now.
        """

    @abc.abstractmethod
    def set_flags(self, user: str, folder: str, uid: int, flags: Iterable[str],
                  keywords: Iterable[str] = ()) -> MessageInfo:
        """Replace a message's flags and keywords."""

    def uidvalidity_given_since(self, user: str, since: float) -> int | None:
        """The UIDVALIDITY the store gave one of ``user``'s folders last, when it gave it
        at or after ``since`` (a folder made, or its UID list made again, since), else
        None; None when the store cannot tell (imsbackup -d then judges the folder by its
        messages' dates alone)."""
        return None

    def set_pop3(self, user: str, folder: str, uid: int, uidl: str, order: int) -> bool:
        """Give a message this POP3 UIDL and POP3 order ("" and 0: none; Dovecot's
        uidlist P and O fields), as an incremental's state record has them; True when
        the store keeps them.  A store without POP3 UIDLs of its own (the classic
        store) keeps none: False."""
        return False

    @abc.abstractmethod
    def expunge(self, user: str, folder: str, uids: Iterable[int]) -> int:
        """Remove the messages with these UIDs; returns how many were removed."""

    @abc.abstractmethod
    def lock(self, user: str, folder: str, timeout: float = 30.0) -> contextlib.AbstractContextManager:
        """Exclusive folder lock that every writer of this store respects.

        Re-entrant within one Store object: append() and friends called while the
        caller holds the lock do not try to take it again.
        """

    def let_others_in(self, user: str, folder: str) -> bool:
        """Called by a long writer (a restore) after each message it wrote into a folder
        whose :meth:`lock` it holds.  A driver whose lock other programs wait for (the
        maildir driver: Dovecot's dotlock) lets go of it for a moment when a short batch
        is full and takes it again, so they go on meanwhile; True when it did.  The
        caller's view of the folder may be stale after that.  Others keep the lock."""
        return False

    # -- deliveries -----------------------------------------------------------
    @abc.abstractmethod
    def hold_deliveries(self, user: str, holder: str | None = None) -> None:
        """From now on deliveries to ``user`` are queued instead of stored.  ``holder``
        names who holds them (a restore: :func:`this_holder`); several can hold the
        same user's deliveries at once, each releasing its own hold."""

    @abc.abstractmethod
    def release_deliveries(self, user: str, holder: str | None = None) -> int:
        """Take ``holder``'s hold away, and those of processes of this host that are
        gone (a killed restore's); while other holds remain nothing is delivered and 0
        is returned.  The last one (or ``holder`` None, which ends every hold) delivers
        what was queued, in arrival order, and returns the count.  A queued message is
        stored once even when a release is killed half-way and run again."""

    @abc.abstractmethod
    def deliveries_held(self, user: str) -> bool:
        ...

    @contextlib.contextmanager
    def deliveries_on_hold(self, user: str) -> Iterator[None]:
        already = self.deliveries_held(user)
        if not already:
            self.hold_deliveries(user)
        try:
            yield
        finally:
            if not already:
                self.release_deliveries(user)

    def deliver(self, users: list[str], src: BinaryIO, folder: str = "INBOX",
                internaldate: float | None = None) -> dict:
        """Deliver one message to several users as a single copy (hard links).

        Held users get it queued.  Returns {user: MessageInfo or None if queued}.  An
        empty ``src`` raises EmptyMessage before anything is stored.  A failure part way
        carries the recipients served already as ``exc.delivered`` (:func:`partly_delivered`).
        """
        import time
        folder = check_folder_name(folder)
        src = nonempty_message(src)             # 0 bytes: refused, no UID taken
        now = time.time()
        out: dict = {}
        try:
            self._deliver_each(folder, users, src, now if internaldate is None else internaldate, now, out)
        except BaseException as exc:
            partly_delivered(exc, out)
            raise
        return out

    @abc.abstractmethod
    def _deliver_each(self, folder: str, users: list[str], src: BinaryIO, internaldate: float,
                      now: float, out: dict) -> None:
        """:meth:`deliver`'s work, the driver's: each user's copy (the first stored, the
        others linked to it; queued for a held user), ``out[user]`` set as each is.  The
        folder comes first: a driver's error decorator names what failed by it."""

    # -- a restore under way, recorded in the folder itself ---------------------
    # The restore journal's "under way" record (Journal.start) is not synced when it is
    # written: after a power cut the folder's files may be there without it.  So a
    # restore also marks the folder it creates or continues, in the folder, before it
    # writes anything there, such that no later change of the folder is on disk without
    # the mark; the mark goes once the journal's completion record is (docs/restore-design.md
    # section 3).  A store that cannot keep one keeps none (restoring_marks: []).

    def mark_restoring(self, user: str, folder: str, mark: str) -> None:
        """Under the folder's lock, before the restore writes anything into it: record
        ``mark`` (letters, digits, '.', '-') in the folder, so that whatever of the
        restore's later changes reaches the disk, the mark does too, without a sync."""

    def restoring_marks(self, user: str, folder: str) -> list[str]:
        """The marks :meth:`mark_restoring` left in the folder."""
        return []

    def unmark_restoring(self, user: str, folder: str, mark: str) -> None:
        """Remove ``mark`` from the folder (gone already, or the folder: nothing)."""

    # -- durability -----------------------------------------------------------
    @contextlib.contextmanager
    def batch(self) -> Iterator["Store"]:
        """The scope of durability of a command that writes: what was written inside it
        is on disk when it ends, however it ends (normally, by an exception, by Ctrl-C):
        its exit runs :meth:`sync`.  Inside a batch drivers skip per-file fsyncs; a
        batch inside a batch syncs only when the outermost one ends.  Outside any batch
        a driver promises no durability (stores built by tests and tools)."""
        self._batch_depth += 1
        ok = False
        try:
            yield self
            ok = True
        finally:
            self._batch_depth -= 1
            if self._batch_depth == 0:
                if ok:
                    self.sync()
                else:
                    # what was written before the failure is made durable too; a sync
                    # that fails now must not hide the error that ended the batch
                    with contextlib.suppress(Exception):
                        self.sync()

    @property
    def in_batch(self) -> bool:
        return self._batch_depth > 0

    def sync(self) -> None:
        """Make everything written so far durable (one syncfs per filesystem that holds
        the store); the exit of :meth:`batch` calls it."""
        syncfs_dirs(self.sync_dirs())

    def sync_dirs(self) -> list[str]:
        """Directories whose filesystems hold the store: its partitions."""
        return [self.partition_path(p) for p in self.partitions()]

    def holds_path(self, path: str) -> bool:
        """Whether ``path`` (absolute, symlinks and ``..`` resolved; it need not exist)
        lies in the store's own directories, where any file is the store's: a file
        written there by another program (an archive) would replace or add a message,
        a mailbox list, an index."""
        return any(path == d or path.startswith(d.rstrip("/") + "/")
                   for d in (os.path.realpath(x) for x in self.sync_dirs()))

    @abc.abstractmethod
    def partition_path(self, partition: str) -> str:
        """The directory holding ``partition``."""


#: Compressed message files Dovecot's zlib plugin reads (and the standard library too):
#: magic bytes -> kind.  zstd and lz4 are recognised, to be named, not read: Dovecot's
#: zlib_save = lz4 writes its own stream format (IOSTREAM_LZ4_MAGIC, "Dovecot-LZ4\r*\x9b\xc5"),
#: not the LZ4 frame format; both are named.
COMPRESSED_MAGIC = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"),
                    (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x04\x22\x4d\x18", "lz4"),
                    (b"Dovecot-LZ4\r*\x9b\xc5", "lz4"))
_MAGIC_LEN = max(len(m) for m, _ in COMPRESSED_MAGIC)


def compression_of(path: str) -> str:
    """The compression a message file's first bytes show ("" for none).  Only a regular
    file is opened (never a FIFO, whose open would wait for a writer, nor a symbolic
    link, whose target is not the store's): anything else is left to the caller's checks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        head = os.read(fd, _MAGIC_LEN)
    except OSError:
        return ""
    finally:
        os.close(fd)
    for magic, kind in COMPRESSED_MAGIC:
        if head.startswith(magic):
            return kind
    return ""


class _Decompressed:
    """A compressed message file read as the message (read, seek, close, name); a
    damaged or cut compressed stream is an OSError, as an unreadable file is."""

    def __init__(self, path: str, kind: str):
        import bz2
        import gzip
        import lzma
        self.name = path
        self._f = {"gz": gzip, "bz2": bz2, "xz": lzma}[kind].open(path, "rb")
        self._errors = (EOFError, ValueError, lzma.LZMAError, zlib.error)

    def read(self, n: int = -1) -> bytes:
        try:
            return self._f.read(n)
        except self._errors as exc:
            raise OSError(errno.EIO, f"damaged compressed data: {exc}") from None

    def seek(self, pos: int, whence: int = 0) -> int:
        try:
            return self._f.seek(pos, whence)
        except self._errors as exc:
            raise OSError(errno.EIO, f"damaged compressed data: {exc}") from None

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_stored(info: MessageInfo) -> BinaryIO:
    """The message's bytes as a client gets them: the file, decompressed when it is
    compressed (a seekable stream: rewinding reads it again).  FileNotFoundError
    propagates; a compression the standard library cannot read is a StoreError."""
    return open_stored_path(info.path, info.compressed)


def open_stored_path(path: str, compressed: str) -> BinaryIO:
    """:func:`open_stored` of the file at ``path`` ("" ``compressed`` for none)."""
    if not compressed:
        return open(path, "rb")
    if compressed in ("gz", "bz2", "xz"):
        return _Decompressed(path, compressed)
    raise StoreError(f"{path} is compressed with {compressed}, which ims-asm cannot "
                     f"read (it reads gz, bz2 and xz): set zlib_save to gz in Dovecot for new "
                     f"mail; this message is not in the archive")


def stored_sha256(info: MessageInfo, missing=FileNotFoundError) -> str | None:
    """The SHA-256 of the message as a client gets it, as the archive records it: of
    the file, decompressed when it is compressed (Dovecot's zlib plugin); None when it
    cannot be read (``missing``: the errors that mean so; a compression ims-asm cannot
    read counts)."""
    return path_sha256(info.path, info.compressed, missing)


def path_sha256(path: str, compressed: str = "", missing=FileNotFoundError) -> str | None:
    """:func:`stored_sha256` of the file at ``path`` holding the message compressed
    with ``compressed`` ("" for none)."""
    import hashlib

    from asm.digests import CHUNK, file_sha256_or_none
    if not compressed:
        return file_sha256_or_none(path, missing=missing)
    h = hashlib.sha256()
    try:
        with open_stored_path(path, compressed) as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
    except (StoreError, missing):
        return None
    return h.hexdigest()


def this_holder() -> str:
    """This process as a holder of deliveries: ``<pid>@<host>``."""
    return f"{os.getpid()}@{os.uname().nodename}"


def holder_gone(holder: str) -> bool:
    """True when ``holder`` names a process of this host that no longer exists, or is
    no holder name at all (an older hold marker's content)."""
    from asm.locks import pid_alive
    pid_s, at, host = holder.partition("@")
    if not at or not pid_s.isdigit():
        return True
    return host == os.uname().nodename and not pid_alive(int(pid_s))


COPY_CHUNK = 1 << 20


def write_all(fd: int, data) -> None:
    """All of ``data`` written to the descriptor ``fd`` (os.write may write less than
    it is given; one that writes nothing is a full disk)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def copy_to_fd(src: BinaryIO, fd: int) -> int:
    """The file object ``src`` written to the descriptor ``fd``, COPY_CHUNK bytes at a
    time, straight to the file (no buffered writer, with its stat, terminal check and
    seek); the number of bytes written."""
    size = 0
    while True:
        chunk = src.read(COPY_CHUNK)
        if not chunk:
            return size
        write_all(fd, chunk)
        size += len(chunk)


def syncfs_dirs(dirs, ignore_errors: bool = False) -> None:
    """One syncfs per filesystem holding one of ``dirs`` (a directory that does not
    exist is skipped: nothing was ever written there).  A failure raises OSError, or is
    ignored with ``ignore_errors``."""
    done = set()
    for d in dirs:
        try:
            dev = os.stat(d).st_dev
        except OSError:
            continue
        if dev in done:
            continue
        done.add(dev)
        try:
            fd = os.open(d, os.O_RDONLY)
            try:
                _syncfs(fd)
            finally:
                os.close(fd)
        except OSError:
            if not ignore_errors:
                raise


def _syncfs(fd: int) -> None:
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) == 0:
            return
    except (OSError, AttributeError):
        pass
    os.sync()


def split_flags(all_flags: Iterable[str]) -> tuple[frozenset, tuple]:
    """Split an IMAP flag list into (system flags, keywords)."""
    system, keywords = set(), []
    for f in all_flags:
        if f in SYSTEM_FLAGS:
            system.add(f)
        elif f.startswith("\\"):
            continue  # \Recent and unknown system flags are not stored
        elif f not in keywords:
            keywords.append(f)
    return frozenset(system), tuple(keywords)


def is_inbox(level: str) -> bool:
    """Whether a folder name (or its first level) is INBOX, which IMAP matches without
    regard to ASCII case only (RFC 3501 5.1): 'ınbox' (dotless i) and 'ınbox/sub' are
    folders of their own, though 'ınbox'.upper() == 'INBOX' in Python."""
    return len(level) == 5 and level.isascii() and level.upper() == "INBOX"


_GOOD_FOLDER_NAMES: dict = {}      # name -> normalised: names that passed (asked per message)


def check_folder_name(name: str) -> str:
    """Validate a logical folder name; returns it normalised (INBOX upper-cased)."""
    hit = _GOOD_FOLDER_NAMES.get(name) if type(name) is str else None
    if hit is not None:
        return hit
    checked = _check_folder_name(name)
    if len(_GOOD_FOLDER_NAMES) >= 4096:
        _GOOD_FOLDER_NAMES.clear()
    _GOOD_FOLDER_NAMES[name] = checked
    return checked


def _check_folder_name(name: str) -> str:
    if not name or name.startswith("/") or name.endswith("/") or "//" in name:
        raise BadName(f"bad folder name {name!r}: use levels separated by single '/'")
    if "\x00" in name or any(ord(c) < 32 for c in name):
        raise BadName(f"bad folder name {name!r}: control characters are not allowed")
    if any(level in (".", "..") for level in name.split("/")):
        raise BadName(f"bad folder name {name!r}: '.' and '..' are not folder names")
    first, _, rest = name.partition("/")
    if is_inbox(first):
        name = "INBOX" + ("/" + rest if rest else "")
    return name


def check_user_name(user: str) -> str:
    if not user or "/" in user or user in (".", "..") or "\x00" in user \
            or any(ord(c) < 32 for c in user):
        raise BadName(f"bad user ID {user!r}: it may not be empty or contain '/' or control characters")
    return user


NAME_MAX = 255      # bytes in one path level (Linux file systems)


def check_folder_levels(folder: str, levels, store: str) -> str:
    """``folder`` if each of ``levels``, the directory names a store keeps it under,
    fits in one path level; else NameTooLong naming the folder, the bytes and the limit."""
    for level in levels:
        n = len(os.fsencode(level))
        if n > NAME_MAX:
            from asm.archive.names import shown
            raise NameTooLong(f"folder name '{shown(folder)}' is too long for the {store} store: a directory "
                              f"name of it would be {n} bytes, at most {NAME_MAX}; choose a shorter one")
    return folder


def check_user_level(user: str, level: str, store: str) -> str:
    """``user`` if ``level``, the directory name a store keeps the user under, fits in
    one path level; else BadName, before anything is written (it was an OSError, exit
    17, "File name too long", after the command had started)."""
    n = len(os.fsencode(level))
    if n > NAME_MAX:
        from asm.archive.names import shown
        raise BadName(f"user ID '{shown(user)}' is too long for the {store} store: its directory name "
                      f"would be {n} bytes, at most {NAME_MAX}; choose a shorter one "
                      f"(imsrestore -m maps an archived user to another ID)")
    return user
