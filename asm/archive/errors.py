"""Every problem an archive can have, one class each, with a one-line message that
names the problem and says what to do about it, and the exit status it means when it
ends a command (:mod:`asm.errors`)."""

from asm.errors import EXIT_HOSTILE, EXIT_INCOMPLETE, EXIT_NOT_ARCHIVE, EXIT_PARTIAL, ImsError


class ArchiveError(ImsError):
    """Base class of every archive error: a damaged archive unless a subclass says otherwise."""

    status = EXIT_INCOMPLETE


class NotAnArchive(ArchiveError):
    """The stream does not start with an ims-asm header member."""

    status = EXIT_NOT_ARCHIVE

    def __init__(self, why):
        self.why = why
        super().__init__(f"not an ims-asm archive: {why}; check the file or device name")


class IncompleteArchive(ArchiveError):
    """The stream ended before the trailer (cut short, or the backup failed)."""

    def __init__(self, last_member=None, offset=None, why="end of data"):
        self.last_member = last_member
        self.offset = offset
        where = f"member {last_member}" if last_member else "the archive header"
        at = f" (byte {offset}: {why})" if offset is not None else f" ({why})"
        super().__init__(
            f"archive is incomplete: ended after {where}{at}; "
            "restore what came before or use an intact copy")


class CorruptMember(ArchiveError):
    """A header or its pax records cannot be parsed; the reader resynchronises
    at the next valid header and goes on."""

    def __init__(self, offset, why, name=None):
        self.offset = offset
        self.name = name
        self.why = why
        what = f"member {name!r}" if name else "member"
        super().__init__(
            f"corrupt {what} at byte {offset}: {why}; it was skipped, "
            "restore it from another backup")


class DigestMismatch(ArchiveError):
    """The bytes of a message do not hash to the SHA-256 recorded for it."""

    def __init__(self, name, expected, actual):
        self.name = name
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"message {name} is damaged: SHA-256 {actual} does not match the "
            f"recorded {expected}; do not restore these bytes, use another backup")


class HostileMember(ArchiveError):
    """A member that ims-asm never writes and that could harm a restore
    (path escapes, device nodes, symlinks, dangling links, lying sizes)."""

    status = EXIT_HOSTILE

    def __init__(self, name, why, offset=None):
        self.name = name
        self.offset = offset
        self.why = why
        at = f" at byte {offset}" if offset is not None else ""
        super().__init__(
            f"refusing member {name!r}{at}: {why}; the archive was not written by "
            "ims-asm or was tampered with, it was skipped")


class LinkTargetUnavailable(ArchiveError):
    """A hard-link member's bytes live in an earlier member that a
    non-seekable stream cannot go back to: that message waits for its first copy (a
    reference file), the rest is restored."""

    status = EXIT_PARTIAL

    def __init__(self, name, target):
        self.name = name
        self.target = target
        super().__init__(
            f"member {name} is a hard link to {target}, whose bytes cannot be read "
            "again from a stream; keep the target's copy when it passes, or read "
            "the archive from a seekable file")


class MessageChanged(ArchiveError):
    """A message's file changed while it was being archived: that message is named as
    failed, the rest of the archive is good."""

    status = EXIT_PARTIAL

    def __init__(self, name, source=None, why="its size or bytes changed"):
        self.name = name
        self.source = source
        src = f" ({source})" if source else ""
        super().__init__(
            f"message {name}{src} changed while it was being archived: {why}; "
            "back it up again")


class UnreadableSource(ArchiveError):
    """A message's file cannot be read as a message: it is not a regular file (a
    FIFO, a directory, a device), it is a symbolic link (never followed: a link in a
    mail directory could point anywhere), or reading it failed.  Only that message is
    missing from the archive (or, when the failure came after its header was written,
    its member is cut and fails its digest on restore); the caller names it."""

    status = EXIT_PARTIAL

    def __init__(self, name, source, why, written=False):
        self.name = name
        self.source = source
        self.why = why + ("; its member in this archive is cut short and fails its digest "
                          "on restore" if written else "")
        self.written = written
        super().__init__(f"message {name} ({source}) was not archived: {self.why}")


class CorruptSource(MessageChanged):
    """A big message changed between the hashing pass and the writing pass.
    Its member is already in the archive (with the first pass's digest), so
    the archive stays well-formed but that member fails its digest on restore."""

    def __init__(self, name, source=None, why="its bytes changed after hashing"):
        super().__init__(name, source, why + "; its member in this archive will "
                         "fail its digest on restore")
