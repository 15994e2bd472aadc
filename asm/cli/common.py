"""What every command shares: exit statuses, one-line errors, quiet-unless-asked output,
and the terminal progress line."""
from __future__ import annotations

import argparse
import os
import sys
import time

from asm.errors import (  # noqa: F401  (the commands still take their statuses from here)
    EXIT_AUTH, EXIT_CONNECT, EXIT_DEVICE, EXIT_HOSTILE, EXIT_HOSTKEY, EXIT_INCOMPLETE, EXIT_INTERRUPTED,
    EXIT_LINKLOST, EXIT_LOCKED, EXIT_NOSPACE, EXIT_NOT_ARCHIVE, EXIT_OK, EXIT_ORDER, EXIT_PARTIAL, EXIT_USAGE,
    UsageError, device_status,
)
from asm.units import human  # noqa: F401


class ArgParser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit EXIT_USAGE."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


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


def read_list_file(path: str) -> list[str]:
    """Names from a -u file: one per line, blank lines and # comments ignored."""
    try:
        with open(path, encoding="utf-8") as f:
            return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as exc:
        raise UsageError(f"cannot read {path!r}: {exc.strerror}") from None
