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
        where = f"after member {last_member}" if last_member else "inside the archive header"
        at = f" (byte {offset}: {why})" if offset is not None else f" ({why})"
        super().__init__(
            f"archive is incomplete: ended {where}{at}; "
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


class TrailingData(CorruptMember):
    """Bytes that are not zeros after the trailer, within the writer's last record, when
    the members before them matched the trailer's digest and counts and none read was
    damaged: nothing of the archive is missing, but its medium holds bytes the writer did not write
    (``tar -r`` appended a member, a device wrote over the archive's end).  Damage all the
    same (exit 4, docs/format.md §2.7), named for what it is, not as a member skipped."""

    def __init__(self, offset, why, name=None):
        self.offset = offset
        self.name = name
        self.why = why
        ArchiveError.__init__(self, self._line(offset, why, name))

    @staticmethod
    def _line(offset, why, name) -> str:
        return (f"corrupt member {name!r} at byte {offset}: {why}: something was written after the "
                "archive's end (tar -r, another archive, a device's data); the members before it match the "
                "trailer's digest and counts, and none read was damaged: nothing of the archive is missing; "
                "keep an intact copy of it")


class JoinedArchives(TrailingData):
    """Another ims-asm archive after this one's end, in the same file or stream
    (``cat FULL INCR | imsrestore -f -``): this archive was read whole, the next was not.
    Exit 4 (as any data after an archive's end), with what to do instead."""

    @staticmethod
    def _line(offset, why, name) -> str:
        return (f"{why}: archives joined into one file or stream (as `cat FULL INCR |` makes); only the "
                "first was read (nothing of it is missing), what follows it was not: give each archive its "
                "own file and -f, in the order they were taken (imsrestore -f FULL -f INCR)")


class CorruptHeader(CorruptMember):
    """The archive's header member is damaged (its digest, its JSON or a field of it):
    nothing in the archive can be trusted to belong to it, so nothing is read."""

    def __init__(self, offset, why):
        self.offset = offset
        self.name = "ims-asm.header"
        self.why = why
        ArchiveError.__init__(
            self, f"the archive's header is damaged: {why}; nothing was read from it, "
            "use another copy of the archive")


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
    """A member whose headers are intact (its digest matches, in a version 2 archive)
    but that ims-asm never writes and that could harm a restore: path escapes
    (absolute names, '..'), symbolic links, device nodes and FIFOs, hard links out of
    the archive, directories or links claiming data.  Damage is CorruptMember."""

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


class UnarchivableValue(ArchiveError, ValueError):
    """A value of a message or folder that the archive reader would refuse (a time
    outside years 1..9999, a UID or UIDVALIDITY outside 1..2^32-1, a keyword listed twice
    or longer than the format allows, ...): the writer never writes such a member, so
    every archive it closes restores.  Nothing of the member was written; the caller
    names it (exit 1), and, for a folder, its messages.  (A ValueError too, as the
    writer's refusals of bad values always were.)"""

    status = EXIT_PARTIAL

    def __init__(self, name, why):
        self.name = name
        self.why = why
        super().__init__(f"{name} was not archived: {why}, which the archive format "
                         "cannot hold (docs/format.md)")
