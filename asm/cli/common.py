"""What every command shares: exit statuses, one-line errors, quiet-unless-asked output,
and the terminal progress line."""
from __future__ import annotations

import argparse
import os
import sys
import time

# Exit statuses, documented in docs/operations.md.
EXIT_OK = 0
EXIT_PARTIAL = 1        # finished, but some mailboxes/messages failed (named on stderr)
EXIT_USAGE = 2          # bad options, configuration or paths: nothing was done
EXIT_DEVICE = 3         # the device could not be opened, read or written
EXIT_INCOMPLETE = 4     # the archive is truncated or corrupt; what came before was restored
EXIT_HOSTILE = 5        # the archive holds members that would write outside the store
EXIT_LOCKED = 6         # a lock is held by another run
EXIT_ORDER = 7          # incremental archives applied in the wrong order
EXIT_NOT_ARCHIVE = 8     # the input is not an ims-asm archive
EXIT_CONNECT = 10       # remote device: no connection (refused, unknown host)
EXIT_HOSTKEY = 11       # remote device: host key unknown or changed
EXIT_AUTH = 12          # remote device: authentication failed
EXIT_NOSPACE = 13       # the device (local or remote) is full
EXIT_LINKLOST = 14      # remote device: the connection dropped mid-transfer
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad command-line input; printed as one line, exit EXIT_USAGE."""


class ArgParser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit EXIT_USAGE."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def device_status(exc: BaseException) -> int:
    """The exit status for a device failure: the plugin's own, or ENOSPC's, or 3."""
    import errno
    status = getattr(exc, "exit_status", None)
    if status is not None:
        return status
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return EXIT_NOSPACE
    return EXIT_DEVICE


def die(prog: str, message: str, status: int) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return status


def warn(prog: str, message: str) -> None:
    print(f"{prog}: {message}", file=sys.stderr)


class Progress:
    """A single self-rewriting line on a terminal; silent when stderr is not a tty
    (cron) unless the command was asked for -v."""

    def __init__(self, enabled: bool | None = None, interval: float = 0.5):
        if enabled is None:
            enabled = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
        self.enabled = enabled
        self.interval = interval
        self._last = 0.0
        self._shown = False
        self.start = time.monotonic()

    def update(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        sys.stderr.write("\r\x1b[K" + text[:200])
        sys.stderr.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._shown = False


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def blocking_factor(text: str) -> int:
    """argparse type for -b: records of 512*N bytes, N from 1 to 2048."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 2048:
        raise argparse.ArgumentTypeError(f"bad blocking factor {text!r}: use 1 to 2048")
    return n


def parse_date(text: str) -> float:
    """``YYYYMMDD[:HHMMSS]`` in local time, as the classic tools take it."""
    import datetime as dt
    fmt = "%Y%m%d:%H%M%S" if ":" in text else "%Y%m%d"
    try:
        return dt.datetime.strptime(text, fmt).timestamp()
    except ValueError:
        raise UsageError(f"bad date {text!r}: use YYYYMMDD or YYYYMMDD:HHMMSS, e.g. 20240501:131000") from None


def sigterm_as_interrupt() -> None:
    """SIGTERM (a backup engine cancelling the job) unwinds like Ctrl-C, so temporary
    files are removed and locks and delivery holds released."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


def _shown(exc):
    """Codec error handler for messages to people: a byte that was not UTF-8 (a lone
    surrogate from os.fsdecode) as \\xNN, anything else unencodable as \\uNNNN."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for c in exc.object[exc.start:exc.end]:
        o = ord(c)
        out.append("\\x%02x" % (o - 0xDC00) if 0xDC80 <= o <= 0xDCFF else "\\u%04x" % o)
    return "".join(out), exc.end


def lossless_output() -> None:
    """Names hold whatever bytes the filesystem allows.  stdout writes them as those
    very bytes (as ls and find do, so a listing can be fed back to a command); stderr,
    read by people and logs, shows a byte that is not UTF-8 as \\xNN.  Never a
    UnicodeEncodeError."""
    import codecs
    try:
        codecs.lookup_error("ims-shown")
    except LookupError:
        codecs.register_error("ims-shown", _shown)
    for stream, errors in ((sys.stdout, "surrogateescape"), (sys.stderr, "ims-shown")):
        try:
            stream.reconfigure(errors=errors)
        except (AttributeError, ValueError):
            pass


def read_list_file(path: str) -> list[str]:
    """Names from a -u file: one per line, blank lines and # comments ignored; a name
    that is not UTF-8 is kept as its bytes."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as exc:
        raise UsageError(f"cannot read {path!r}: {exc.strerror}") from None
