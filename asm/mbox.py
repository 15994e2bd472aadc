"""Streaming Unix mbox reader: one message at a time, never a whole file in memory.

Messages are split on ``From `` lines that follow a blank line (or start the file;
blank lines before the first are skipped); ``>From `` quoting (mboxrd) is undone.  An
empty file is an empty mailbox; a file whose first line that is not blank is no
``From `` line, or that holds blank lines only, is NotAnMbox, raised before the first
message is handed out.  Each message is spooled to a temporary file
(in memory up to 1 MiB) and handed out with its envelope date and its flags taken
from the ``Status:``/``X-Status:`` headers, which are kept in the bytes.
"""
from __future__ import annotations

import email.utils
import re
import tempfile
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from asm.errors import EXIT_USAGE, ImsError

_FROM_RE = re.compile(rb"^From \S+\s+(.*)$")
_QUOTED_RE = re.compile(rb"^>+From ")
_STATUS = {b"R": "\\Seen", b"A": "\\Answered", b"F": "\\Flagged", b"D": "\\Deleted", b"T": "\\Draft"}


MBOX_LINE = 64 << 20


class NotAnMbox(ImsError, ValueError):
    """The input is not a Unix mbox file."""

    status = EXIT_USAGE


@dataclass
class MboxMessage:
    """One message of an mbox file: its bytes (a bounded file), size, INTERNALDATE and flags."""

    file: BinaryIO
    size: int
    internaldate: float
    flags: frozenset


# the first and last second an IMAP INTERNALDATE (and an archive, docs/format.md) can
# hold: 0001-01-01 00:00:00 and 9999-12-31 23:59:59 UTC
FIRST_DATE, LAST_DATE = -62135596800, 253402300799


def _envelope_date(line: bytes) -> float:
    """The From_ line's date (local time unless it names its zone), or now when it has
    none.  A date that is a calendar date in its zone but not in UTC (9999-12-31 23:59:59
    in New York is 10000-01-01 UTC) becomes the nearest one IMAP holds."""
    m = _FROM_RE.match(line.rstrip(b"\r\n"))
    if m:
        text = m.group(1).decode("latin-1").strip()
        t = None
        try:  # asctime form: "Mon Jan  1 10:00:00 2024"
            t = time.mktime(time.strptime(" ".join(text.split()[:5]), "%a %b %d %H:%M:%S %Y"))
        except (ValueError, OverflowError):
            try:
                t = email.utils.parsedate_to_datetime(text).timestamp()
            except (TypeError, ValueError, IndexError, OverflowError):
                pass
        if t is not None:
            return min(max(t, FIRST_DATE), LAST_DATE)
    return time.time()


def read_mbox(src: BinaryIO) -> Iterator[MboxMessage]:
    spool = None
    size = 0
    date = 0.0
    flags: set = set()
    in_headers = False
    prev_blank = True
    pending_blank = b""
    blank_only = False          # only blank lines read, no message yet

    def finish():
        spool.seek(0)
        return MboxMessage(spool, size, date, frozenset(flags))

    # lines read at most MBOX_LINE at a time (a file with no line break, /dev/zero, was
    # read whole: MemoryError); a longer line is taken in parts, as a message line
    for line in iter(lambda: src.readline(MBOX_LINE), b""):
        if prev_blank and line.startswith(b"From "):
            if spool is not None:
                yield finish()
            spool = tempfile.SpooledTemporaryFile(max_size=1 << 20)
            size, date, flags, in_headers, pending_blank = 0, _envelope_date(line), set(), True, b""
            prev_blank = False
            continue
        if spool is None:
            if line.strip():
                raise NotAnMbox("not an mbox file: it does not start with a 'From ' line")
            blank_only = True
            continue
        stripped = line.rstrip(b"\r\n")
        if in_headers:
            if not stripped:
                in_headers = False
            elif stripped[:7].lower() in (b"status:", b"x-statu"):
                value = stripped.split(b":", 1)[1].strip()
                for ch in value:
                    f = _STATUS.get(bytes([ch]))
                    if f:
                        flags.add(f)
        if _QUOTED_RE.match(line):
            line = line[1:]
        # the blank line before the next "From " belongs to the separator, not the message
        if pending_blank:
            spool.write(pending_blank)
            size += len(pending_blank)
            pending_blank = b""
        if not stripped:
            pending_blank = line
            prev_blank = True
            continue
        prev_blank = False
        spool.write(line)
        size += len(line)
    if spool is not None:
        yield finish()
    elif blank_only:
        # an empty file is an empty mailbox; blank lines and nothing else are no mbox a
        # mail program writes (a truncated or wrong file): refused, nothing is made
        raise NotAnMbox("not an mbox file: it holds only blank lines, no 'From ' line (an empty "
                        "mailbox is an empty file)")
