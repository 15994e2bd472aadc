"""Times as NetWorker hands them to an ASM's ``-t`` (a subset of nsr_getdate(3))."""
from __future__ import annotations

import datetime as dt
import re
import time

from asm.errors import EXIT_USAGE, ImsError
from asm.units import classic_date, local_timestamp


class DateError(ImsError, ValueError):
    """A ``-t`` time this ASM cannot read."""

    status = EXIT_USAGE


_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%d", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y", "%m/%d/%y %H:%M:%S",
            "%m/%d/%y %H:%M", "%m/%d/%y")
_AGO = re.compile(r"^(\d+)\s*(second|minute|hour|day|week)s?\s+ago$", re.I)
_UNIT = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400}


def parse(text: str, now: float | None = None) -> float:
    """Epoch seconds (``1700000000`` or ``@1700000000``), ``YYYYMMDD[:HHMMSS]`` (the
    imsbackup -d form), ``YYYY-MM-DD[ HH:MM[:SS]]``, ``MM/DD/YY[YY] [HH:MM[:SS]]`` or
    ``N hours|days|weeks ago``; local time (one a daylight-saving change skips or repeats:
    its earlier instant, asm.units.local_timestamp)."""
    s = text.strip()
    if re.fullmatch(r"@?\d{9,11}", s):
        return float(s.lstrip("@"))
    m = _AGO.match(s)
    if m:
        return (now if now is not None else time.time()) - int(m.group(1)) * _UNIT[m.group(2).lower()]
    if re.fullmatch(r"[0-9:]*", s):
        # the imsbackup -d form, strictly: strptime took '2026115' as 2026-11-05
        try:
            return classic_date(s)
        except ValueError:
            raise DateError(f"bad time {text!r}: use seconds since 1970, YYYYMMDD[:HHMMSS] (8 digits, "
                            "optionally ':' and 6), 'YYYY-MM-DD HH:MM:SS', 'MM/DD/YYYY HH:MM:SS' "
                            "or 'N days ago'") from None
    for fmt in _FORMATS:
        try:
            return local_timestamp(dt.datetime.strptime(s, fmt))
        except ValueError:
            continue
    raise DateError(f"bad time {text!r}: use seconds since 1970, YYYYMMDD[:HHMMSS], "
                    "'YYYY-MM-DD HH:MM:SS', 'MM/DD/YYYY HH:MM:SS' or 'N days ago'")
