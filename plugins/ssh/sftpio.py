"""SFTP helpers shared by the devices and the transfers: turning paramiko's failures
into one-line errors, the far side's free space, durable commit by rename."""
from __future__ import annotations

import errno
import posixpath
import secrets
import shlex
import socket

import paramiko
from paramiko.sftp import CMD_DATA, CMD_EXTENDED, CMD_EXTENDED_REPLY, CMD_READ, CMD_STATUS, int64

from plugins.ssh.errors import LinkLost, RemoteDiskFull, RemoteError, RemotePathError

#: Below this many free bytes on the far side, a failed write is reported as a full disk.
FULL_MARGIN = 1 << 20
#: paramiko's largest SFTP write request.
MAX_WRITE = 32768


def temp_name(path: str) -> str:
    """A hidden name next to ``path``; never mistaken for a finished file."""
    d, base = posixpath.split(path)
    return posixpath.join(d, f".{base}.{secrets.token_hex(4)}.partial")


def free_bytes(conn, directory: str) -> int | None:
    """Free bytes for the user in ``directory`` on the far side, or None if unknown.

    Uses OpenSSH's ``statvfs@openssh.com`` SFTP extension (works without a shell),
    then ``df -Pk`` over an exec channel."""
    try:
        t, msg = conn.sftp._request(CMD_EXTENDED, "statvfs@openssh.com", directory or ".")
        if t == CMD_EXTENDED_REPLY:
            _bsize, frsize, _blocks, _bfree, bavail = (msg.get_int64() for _ in range(5))
            return frsize * bavail
    except Exception:  # extension missing, or the link is gone: try the shell, then give up
        pass
    try:
        status, out, _ = conn.run(f"df -Pk -- {shlex.quote(directory or '.')}")
        if status == 0:
            return int(out.splitlines()[-1].split()[3]) * 1024
    except Exception:
        pass
    return None


def translate(conn, exc: BaseException, doing: str, path: str, leftover: str | None = None) -> RemoteError:
    """The RemoteError that says what ``exc`` (raised while ``doing`` ``path``) means."""
    if isinstance(exc, RemoteError):
        return exc
    tail = f"; the partial file {leftover} may remain there (it is not a complete archive)" if leftover else ""
    if isinstance(exc, (EOFError, socket.timeout, paramiko.SSHException, ConnectionError)) or \
            not conn.alive() or (isinstance(exc, OSError) and exc.errno in (errno.EPIPE, errno.ECONNRESET)):
        if isinstance(exc, socket.timeout):
            why = "no answer within ssh.timeout"
        elif isinstance(exc, (EOFError, ConnectionError)) or not conn.alive():
            why = "the connection was closed or reset"
        else:
            why = str(exc).strip().rstrip(":") or type(exc).__name__
        return LinkLost(f"connection to {conn.label} lost while {doing} {path} ({why}){tail}")
    if isinstance(exc, OSError):
        code = exc.errno
        text = exc.strerror or (exc.args[0] if exc.args else "") or type(exc).__name__
        if code == errno.ENOENT:
            return RemotePathError(f"{conn.label}: {path}: no such file or directory")
        if code == errno.EACCES:
            return RemotePathError(f"{conn.label}: {path}: permission denied", errno.EACCES)
        if code == errno.ENOSPC or doing in ("writing", "finishing", "creating"):
            free = free_bytes(conn, posixpath.dirname(path))
            if code == errno.ENOSPC or (free is not None and free < FULL_MARGIN):
                left = f" ({free} bytes free)" if free is not None else ""
                return RemoteDiskFull(f"no space left on {conn.label} in {posixpath.dirname(path) or '~'}"
                                      f"{left} while {doing} {path}; the remote file was not completed: "
                                      f"free space there or choose another directory")
        return RemoteError(f"{conn.label}: {doing} {path} failed: {text}{tail}", code or errno.EIO)
    return RemoteError(f"{conn.label}: {doing} {path} failed: {exc!r}{tail}")


def finish_writes(f) -> None:
    """Wait for the answer to every pipelined write of ``f``, raising the first error,
    then close it.  (paramiko's close() does not look at pipelined write answers, so
    a failed write - a full disk - would otherwise go unnoticed.)"""
    reqs = getattr(f, "_reqs", None)
    while reqs:
        f.sftp._read_response(reqs.popleft())
    f.close()


def discard(conn, path: str) -> str | None:
    """Remove the temporary file ``path`` a failed (or interrupted) write left; None once
    it is gone, else why it may remain.

    Never over the channel it was written on: a signal (an engine's SIGTERM) may have
    cut an SFTP request half-sent (that channel then answers nothing sensible) or an SSH
    packet half-written (the whole session then waits for bytes that never come), and
    pipelined writes may still be unanswered.  A new session to the same host, or, when
    none can be made, a new SFTP channel of ``conn``, each waiting at most ssh.timeout.
    The caller holds signals meanwhile (asm.interrupts.interrupts_deferred)."""
    from plugins.ssh.connection import connect
    why = "the connection is gone"
    try:
        new = connect(conn.spec, conn.settings)
        try:
            _remove(new.sftp, path)
            return None
        finally:
            new.close()
    except Exception as exc:        # noqa: BLE001 - the next way, then say why
        why = str(translate(conn, exc, "removing", path))
    try:
        old, conn._sftp = conn._sftp, None
        if old is not None:
            quiet_close(old)
        if conn.alive():
            _remove(conn.sftp, path)
            return None
    except Exception as exc:        # noqa: BLE001
        why = str(translate(conn, exc, "removing", path))
    return why


def _remove(sftp, path: str) -> None:
    try:
        sftp.remove(path)
    except FileNotFoundError:
        pass


def abandon(f) -> None:
    """Let go of an SFTP file being written without a close request: its answer would
    come after those of the pipelined writes still unanswered, on a channel a signal may
    have cut mid-request (closing the channel, or the session, ends it instead)."""
    f._closed = True


def quiet_close(obj) -> None:
    """Close a channel or file whose link may be gone: the error that matters was
    already raised (or will be, by the caller)."""
    try:
        obj.close()
    except Exception:
        pass


class _Answers:
    """Where the SFTP client files the answers to :func:`read_many`'s requests that
    arrive while it waits for another (paramiko calls ``_async_response``)."""

    def __init__(self):
        self.got: dict[int, tuple] = {}

    def _async_response(self, t, msg, num) -> None:
        self.got[num] = (t, msg)


def read_many(f, chunks: list[tuple[int, int]]) -> bytes:
    """The bytes of ``chunks`` ((offset, length), contiguous, each at most 32 KiB) of
    the open SFTP file ``f``: every read request sent at once, the answers taken in
    order, in the calling thread.

    paramiko's own ``readv()`` sends its requests from a helper thread and decides
    from a count of unanswered requests that it has sent them all; when the answers
    come faster than that thread sends (a loaded machine), it can wait for an answer
    to a request never sent, until ssh.timeout: a restore over a healthy link failed
    as "no answer within ssh.timeout" (2 of 600 read patterns under load)."""
    sftp = f.sftp
    answers = _Answers()
    nums = [sftp._async_request(answers, CMD_READ, f.handle, int64(off), int(n)) for off, n in chunks]
    parts = []
    for (off, n), num in zip(chunks, nums):
        try:
            if num in answers.got:
                t, msg = answers.got.pop(num)
                if t == CMD_STATUS:
                    sftp._convert_status(msg)   # raises: EOFError at the end, IOError else
            else:
                # answers to the other requests are filed meanwhile; a status answer to
                # this one raises as above
                t, msg = sftp._read_response(num)
        except EOFError:
            t, msg = CMD_STATUS, None
        if t == CMD_STATUS:
            data = b""
        elif t != CMD_DATA:
            raise paramiko.SFTPError(f"expected data, got SFTP packet type {t}")
        else:
            data = msg.get_string()
        parts.append(data)
        if len(data) < n:
            # a short answer (the end of the file, or a server that reads less): the
            # rest, if there is any, one request after the other
            rest = _read_at(f, off + len(data), n - len(data))
            parts.append(rest)
            if len(data) + len(rest) < n:
                break                               # the file ends here
    return b"".join(parts)


def _read_at(f, off: int, n: int) -> bytes:
    f.seek(off)
    parts, got = [], 0
    while got < n:
        d = f.read(n - got)
        if not d:
            break
        parts.append(d)
        got += len(d)
    return b"".join(parts)


def fsync(sftp: paramiko.SFTPClient, path: str) -> None:
    """Ask the far side to flush ``path`` to disk (``fsync@openssh.com``), if it can."""
    try:
        with sftp.open(path, "r") as f:
            sftp._request(CMD_EXTENDED, "fsync@openssh.com", f.handle)
    except IOError as exc:
        if not getattr(exc, "errno", None) and "unsupported" in str(exc).lower():
            return
        raise


def replace(sftp: paramiko.SFTPClient, tmp: str, target: str) -> None:
    """Rename ``tmp`` over ``target`` atomically (``posix-rename@openssh.com``), falling
    back to plain SFTP rename (which refuses an existing target) elsewhere."""
    try:
        sftp.posix_rename(tmp, target)
    except IOError as exc:
        if "unsupported" not in str(exc).lower():
            raise
        sftp.rename(tmp, target)


