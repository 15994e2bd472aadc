"""Sizes as people read them, for messages, summaries and plans; dates as they type them."""
from __future__ import annotations

import re

_DATE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})(?::([0-9]{2})([0-9]{2})([0-9]{2}))?")


def local_timestamp(when) -> float:
    """A naive local ``datetime`` -> epoch seconds, the earlier instant it can mean: a
    time the clock shows twice (01:30 when it goes back from 02:00 to 01:00) is its first
    occurrence, and one it skips (02:30 when it goes forward from 02:00 to 03:00) is read
    with the offset after the change (01:30 before it), never the later reading (03:30
    after it).  Such a time names when a backup starts or what it starts from: erring
    early carries a few messages twice, late would leave some out.  (``timestamp()``
    alone takes the first reading, fold=0: the earlier one when the clock repeats, the
    later one when it skips.)"""
    return min(when.timestamp(), when.replace(fold=1).timestamp())


class NoSuchDate(ValueError):
    """YYYYMMDD[:HHMMSS] in form, but no day or time of the calendar (20250230, 24:00:00)."""


def _real_day(y: int, mo: int, d: int) -> bool:
    import datetime as dt
    try:
        dt.date(y, mo, d)
        return True
    except ValueError:
        return False


def classic_date(text: str) -> float:
    """``YYYYMMDD[:HHMMSS]`` in local time -> epoch seconds: exactly 8 digits, optionally
    ``:`` and exactly 6, a real calendar date and time; ValueError for anything else
    (strptime alone read ``2026115`` as 2026-11-05 and ``202611`` as 2026-01-01).  A
    time a daylight-saving change skips or repeats is its earlier instant
    (:func:`local_timestamp`)."""
    import datetime as dt
    m = _DATE.fullmatch(text)
    if m is None:
        raise ValueError(f"not YYYYMMDD[:HHMMSS]: {text!r}")
    parts = [int(g or 0) for g in m.groups()]
    try:
        when = dt.datetime(*parts)
    except ValueError:
        y, mo, d, h, mi, sec = parts
        if not _real_day(y, mo, d):
            raise NoSuchDate(f"there is no {y:04d}-{mo:02d}-{d:02d}") from None
        raise NoSuchDate(f"there is no time {h:02d}:{mi:02d}:{sec:02d} (hours 00-23, minutes and "
                         f"seconds 00-59)") from None
    try:
        return local_timestamp(when)
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
