"""Sizes as people read them, for messages, summaries and plans; dates as they type them."""
from __future__ import annotations

import re

_DATE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})(?::([0-9]{2})([0-9]{2})([0-9]{2}))?")


def classic_date(text: str) -> float:
    """``YYYYMMDD[:HHMMSS]`` in local time -> epoch seconds: exactly 8 digits, optionally
    ``:`` and exactly 6, a real calendar date and time; ValueError for anything else
    (strptime alone read ``2026115`` as 2026-11-05 and ``202611`` as 2026-01-01)."""
    import datetime as dt
    m = _DATE.fullmatch(text)
    if m is None:
        raise ValueError(f"not YYYYMMDD[:HHMMSS]: {text!r}")
    when = dt.datetime(*(int(g or 0) for g in m.groups()))    # ValueError: no such date or time
    try:
        return when.timestamp()
    except (OverflowError, ValueError, OSError):
        # local time cannot say when 0001-01-01 was (mktime's range): a date that early
        # means "all the mail there is", which the same date read as UTC says as well
        if when.year < 1970:
            return (when - dt.datetime(1970, 1, 1)).total_seconds()
        raise ValueError(f"out of range: {text!r}") from None


def human(n: float) -> str:
    """``1536`` -> ``1.5 KiB``; bytes below 1 KiB as a whole number."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
