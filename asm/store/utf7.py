"""IMAP modified UTF-7 (RFC 3501 section 5.1.3), the encoding of Maildir++ folder names.

Dovecot stores folder names on disk (``.Caf&AOk-.Sub``) and in the ``subscriptions``
file in this encoding; the logical view shows them as Unicode.  Printable ASCII
except ``&`` stands for itself, ``&`` is ``&-``, and every other run of characters is
``&`` + base64 of its UTF-16BE form (with ``,`` for ``/``, no padding) + ``-``.
"""
from __future__ import annotations


def encode(name: str) -> str:
    """Unicode -> modified UTF-7."""
    if name.isascii() and name.isprintable() and "&" not in name:
        return name                     # printable ASCII but '&' stands for itself
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            import base64               # only a name beyond printable ASCII (startup time)
            raw = "".join(run).encode("utf-16-be", "surrogatepass")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            run.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def decode(name: str) -> str:
    """Modified UTF-7 -> Unicode; ValueError on text that is not valid modified UTF-7."""
    out: list[str] = []
    i, n = 0, len(name)
    while i < n:
        ch = name[i]
        if ord(ch) < 0x20 or ord(ch) > 0x7E:
            raise ValueError(f"not modified UTF-7 (raw character {ch!r}): {name!r}")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError(f"not modified UTF-7 (unterminated '&'): {name!r}")
        chunk = name[i + 1:end]
        if not chunk:
            out.append("&")
        else:
            import base64               # only a name beyond printable ASCII (startup time)
            import binascii
            b64 = chunk.replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            try:
                raw = base64.b64decode(b64, validate=True)
                text = raw.decode("utf-16-be")
            except (binascii.Error, UnicodeDecodeError):
                raise ValueError(f"not modified UTF-7 (bad base64 run {chunk!r}): {name!r}") from None
            if any(0x20 <= ord(c) <= 0x7E for c in text):
                raise ValueError(f"not modified UTF-7 (encoded printable ASCII): {name!r}")
            out.append(text)
        i = end + 1
    return "".join(out)
