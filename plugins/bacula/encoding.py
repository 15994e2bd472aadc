"""Percent-encoding for words that go into a bpipe plugin string.

bpipe splits its definition on ``:`` and Bacula splits each command on blanks and
quotes, so every word we put there (paths, user IDs, IMS_HOME) is written with only
``[A-Za-z0-9_.,+=@/-]`` and ``%XX`` (UTF-8 bytes); ``imsbacula`` decodes it.  Names
are encoded from their bytes: a user directory whose name is not UTF-8 (held as
surrogate escapes, as os.fsdecode gives it) is its bytes as %XX and decodes back to them.
"""
from __future__ import annotations

from urllib.parse import quote, unquote

SAFE = "_.,+=@/-"
_OK = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789" + SAFE)


def encode(text: str) -> str:
    """``text`` with everything outside the safe set as %XX; round-trips with decode.
    (quote() keeps '~' whatever ``safe`` says: it is written %7E here, or a user ID or
    IMS_HOME holding one gave a word decode refused, and that stream failed every night.)"""
    return quote(text.encode("utf-8", "surrogateescape"), safe=SAFE).replace("~", "%7E")


def decode(word: str) -> str:
    """The inverse of :func:`encode`; a malformed escape is refused."""
    # (a FileSet written before '~' was encoded holds it as itself: read as %7E)
    word = word.replace("~", "%7E")
    if not set(word.replace("%", "")) <= _OK:
        raise ValueError(f"{word!r} is not a percent-encoded word (characters outside [A-Za-z0-9{SAFE}%])")
    out = unquote(word, encoding="utf-8", errors="surrogateescape")
    if encode(out) != word:   # %zz, lower-case hex, or an escaped safe character: not ours
        raise ValueError(f"{word!r} is not a percent-encoded word as imsbacula writes them")
    if "\0" in out:          # (no path, name or list can hold one: it was an internal error)
        raise ValueError(f"{word!r} holds %00, a NUL byte, which no path or name can hold")
    return out


def is_plain(word: str) -> bool:
    """True when ``word`` needs no encoding (an executable path we cannot encode)."""
    return bool(word) and set(word) <= _OK


def runscript_escape(word: str) -> str:
    """Bacula expands ``%x`` codes in RunScript commands: double every ``%``."""
    return word.replace("%", "%%")
