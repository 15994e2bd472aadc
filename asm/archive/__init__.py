"""The ims-asm archive: a POSIX pax (tar) stream of users, folders and messages.

Knows nothing of command lines, devices or store drivers; docs/format.md is the
specification. Writer and reader are in their own modules; names, pax headers and
record blocking are separate so each can be tested and reused on its own.
"""
from .errors import (ArchiveError, CorruptHeader, CorruptMember, CorruptSource, DigestMismatch,
                     HostileMember, IncompleteArchive, LinkTargetUnavailable,
                     MessageChanged, NotAnArchive)
from .records import RecordReader, RecordWriter
from .values import FolderState, UidSet

_READER = ("ArchiveReader", "Member", "MemberStream")


def __getattr__(name):
    # the reader and the writer are imported when first asked for: a backup never needs
    # the reader, a restore or a listing the writer (every command's start)
    if name in _READER:
        from . import reader
        return getattr(reader, name)
    if name == "ArchiveWriter":
        from .writer import ArchiveWriter
        return ArchiveWriter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ArchiveWriter", "ArchiveReader", "Member", "MemberStream", "RecordReader",
    "RecordWriter", "ArchiveError", "NotAnArchive", "IncompleteArchive",
    "CorruptMember", "CorruptHeader", "DigestMismatch", "HostileMember", "LinkTargetUnavailable",
    "MessageChanged", "CorruptSource", "UidSet", "FolderState",
]
