"""A delivery hold that Dovecot itself honours: a passwd-file its LMTP service reads.

Dovecot's LMTP answers ``451 4.3.0`` (the MTA queues and retries) for a login whose
userdb lookup returns the field ``tempfail``.  With a passwd-file as LMTP's own first
userdb (docs/dovecot.md, "Holding deliveries"; inside ``protocol lmtp`` it is not one
Dovecot lists for ``doveadm user '*'``, which a ``%s`` path would fail with an error)::

    protocol lmtp {
      userdb {
        driver = passwd-file
        args = username_format=%u /etc/dovecot/hold.lmtp
      }
    }

``dovecot.holdfile = /etc/dovecot/hold.lmtp`` makes the maildir driver's delivery hold
(taken by every restore) add a line for the login there, and the last release remove
it.  Lines the administrator wrote are kept as they are.  Auth re-reads a passwd-file
at most once a second, so a hold waits 1.1 s before it counts as taken.
"""
from __future__ import annotations

import contextlib
import os
import time

from asm.store.maildir import dotlock

REASON = "userdb_reason=delivery_held_by_ims-asm"
SETTLE = 1.1


def _ours(line: str, login: str | None = None) -> bool:
    name, _, rest = line.partition(":")
    return REASON in rest and (login is None or name == login)


def set_held(path: str, login: str, held: bool, timeout: float, pid: int, hostname: str) -> bool:
    """Add (``held``) or remove the login's line; True when the file changed."""
    lock = path + dotlock.LOCK_SUFFIX
    dotlock.acquire(lock, timeout, f"the Dovecot hold file {path}", pid, hostname)
    try:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                # (at '\n' only: str.splitlines() also splits at U+0085, U+2028, form feeds...,
                # which a line the administrator wrote may hold: it was written back as two)
                lines = f.read().split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            lines, mode = [], 0o644
        has = any(_ours(ln, login) for ln in lines)
        if has == held:
            return False
        if held:
            lines.append(f"{login}:::::::userdb_tempfail=yes {REASON}")
        else:
            lines = [ln for ln in lines if not _ours(ln, login)]
        tmp = f"{path}.{pid}.tmp"
        try:
            # a full disk or a kill here leaves no temporary file beside the hold file
            with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write("".join(ln + "\n" for ln in lines))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    finally:
        dotlock.release(lock)
    if held:
        time.sleep(SETTLE)          # Dovecot's auth sees the new file from now on
    return True
