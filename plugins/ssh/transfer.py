"""Whole-file transfer for the staging area: push a finished dump to a media server,
fetch it back for a restore, remove it after the engine has it.

    from plugins.ssh import push, fetch, remove
    r = push("/staging/groupA.ims", "bk@media:2222:/dumps/", config)
    r.remote_path, r.sha256, r.verified      # "/dumps/groupA.ims", "ab12...", "sha256"
    fetch("bk@media:2222:/dumps/groupA.ims", "/staging/groupA.ims", config, sha256=r.sha256)

The remote file appears under its final name only when it is complete: it is written
under ``.NAME.XXXXXXXX.partial``, flushed, its size checked and, where the far side has
a shell, its SHA-256 computed there (``sha256sum``) and compared before the rename.
"""
from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import shlex
import stat
import tempfile
from dataclasses import dataclass

from asm.interrupts import interrupts_deferred
from plugins.ssh import sftpio
from plugins.ssh.connection import Connection, Settings, connect
from plugins.ssh.errors import RemoteError, RemotePathError, VerifyFailed
from plugins.ssh.spec import RemoteSpec, parse

CHUNK = 1 << 18


@dataclass
class PushResult:
    """A file sent over SSH: where it is on the far side, its size and its SHA-256."""

    remote_path: str      # where the file now is on the far side
    size: int
    sha256: str           # of the local bytes sent
    verified: str         # "sha256" (checked by the far side) or "size" (no shell there)


@dataclass
class FetchResult:
    """A file fetched over SSH: where it was written, its size and its SHA-256."""

    local_path: str
    size: int
    sha256: str
    verified: str         # "sha256" (against the expected or the far side's digest) or "size"


def _settings(config) -> Settings:
    return config if isinstance(config, Settings) else Settings.from_config(config)


def remote_sha256(conn: Connection, path: str) -> str | None:
    """The far side's ``sha256sum`` of ``path``, or None when it has no shell/tool.

    Hashing a big file may take longer than ssh.timeout: it is waited for as long as
    the far side answers (a check that timed out must not pass as a size check); a
    far side that stops answering is LinkLost."""
    try:
        status, out, _ = conn.run(f"sha256sum -- {shlex.quote(path)}", patient=True)
    except RemoteError:
        if not conn.alive():
            raise
        return None
    if status != 0 or not out:
        return None
    digest = out.split()[0].lstrip("\\")
    return digest if len(digest) == 64 else None


def _target(conn: Connection, rs: RemoteSpec, local_path: str) -> str:
    """The remote file name: the spec's path, or inside it when it names a directory."""
    base = os.path.basename(local_path)
    if rs.path.endswith("/"):
        return posixpath.join(rs.path, base)
    try:
        st = conn.sftp.stat(rs.path)
    except FileNotFoundError:
        return rs.path
    except Exception as exc:
        raise sftpio.translate(conn, exc, "examining", rs.path) from None
    return posixpath.join(rs.path, base) if stat.S_ISDIR(st.st_mode) else rs.path


def push(local_path: str, remote_spec: str, config=None) -> PushResult:
    """Send the finished file ``local_path`` to ``remote_spec`` (``[user@]host[:port]:path``
    or ``ssh://...``; a directory, or a path ending in ``/``, receives the same base name).

    ``config`` is an :class:`asm.config.Config` (``ssh.*`` options), a
    :class:`plugins.ssh.connection.Settings`, or None.  Returns a :class:`PushResult`.
    Raises a :class:`plugins.ssh.errors.RemoteError` subclass; then no file with the
    final name was written (an older one there is untouched)."""
    rs = parse(remote_spec)
    try:
        src = open(local_path, "rb")
    except OSError as exc:
        raise RemotePathError(f"cannot read {local_path}: {exc.strerror}") from None
    with src:
        conn = connect(rs, _settings(config))
        try:
            return _push(conn, rs, src, local_path)
        finally:
            conn.close()


def _push(conn: Connection, rs: RemoteSpec, src, local_path: str) -> PushResult:
    sftp = conn.sftp
    target = _target(conn, rs, local_path)
    d = posixpath.dirname(target) or "."
    tmp = sftpio.temp_name(target)
    h = hashlib.sha256()
    n = 0
    try:
        f = sftp.open(tmp, "wx", bufsize=0)
    except FileNotFoundError:
        raise RemotePathError(f"{conn.label}: directory {d} does not exist: create it there first") from None
    except Exception as exc:
        raise sftpio.translate(conn, exc, "writing", target) from None
    try:
        try:
            f.chmod(0o600)
            f.set_pipelined(True)
            while True:
                chunk = src.read(CHUNK)
                if not chunk:
                    break
                h.update(chunk)
                f.write(chunk)
                n += len(chunk)
            sftpio.finish_writes(f)
        except BaseException:
            sftpio.abandon(f)           # (no close request on a channel a signal may have cut)
            raise
        size = sftp.stat(tmp).st_size
        if size != n:
            raise OSError(errno.EIO, f"{tmp} holds {size} bytes, {n} were sent")
        digest = h.hexdigest()
        far = remote_sha256(conn, tmp)
        if far is not None and far != digest:
            raise VerifyFailed(f"{conn.label}: SHA-256 of {target} differs on the far side "
                               f"({far} != {digest}): the copy was removed; try again")
        sftpio.fsync(sftp, tmp)
        sftpio.replace(sftp, tmp, target)
        return PushResult(target, n, digest, "sha256" if far else "size")
    except BaseException as exc:
        # the copy goes, also after a signal (SIGTERM to imsstage while it pushes)
        with interrupts_deferred():
            left = sftpio.discard(conn, tmp)
        if not isinstance(exc, Exception):
            raise
        raise sftpio.translate(conn, exc, "writing", target, leftover=tmp if left else None) from None


def fetch(remote_spec: str, local_path: str, config=None, sha256: str | None = None) -> FetchResult:
    """Copy the remote file ``remote_spec`` to ``local_path`` (written under a temporary
    name in the same directory and renamed when complete and verified).

    The bytes are checked against ``sha256`` when given, else against the far side's
    ``sha256sum`` when it has a shell, else by size.  Raises a RemoteError subclass
    (VerifyFailed on a digest mismatch) and leaves ``local_path`` untouched then."""
    rs = parse(remote_spec)
    local_path = os.path.abspath(local_path)
    d = os.path.dirname(local_path)
    conn = connect(rs, _settings(config))
    tmp = None
    try:
        sftp = conn.sftp
        try:
            st = sftp.stat(rs.path)
            src = sftp.open(rs.path, "r", bufsize=0)
        except Exception as exc:
            raise sftpio.translate(conn, exc, "opening", rs.path) from None
        if not stat.S_ISREG(st.st_mode):
            raise RemotePathError(f"{conn.label}: {rs.path} is not a regular file")
        try:
            fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(local_path) + ".", suffix=".partial", dir=d)
        except OSError as exc:
            raise RemotePathError(f"cannot write {local_path}: {exc.strerror} ({d})") from None
        h = hashlib.sha256()
        n = 0
        with os.fdopen(fd, "wb") as out, src:
            off = 0
            while off < st.st_size:
                want = min(st.st_size - off, 32 * 32768)
                chunks = [(o, min(32768, off + want - o)) for o in range(off, off + want, 32768)]
                try:
                    data = sftpio.read_many(src, chunks)
                except Exception as exc:
                    raise sftpio.translate(conn, exc, "reading", rs.path) from None
                if not data:
                    break
                h.update(data)
                out.write(data)
                off += len(data)
                n += len(data)
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if n != st.st_size:
            raise VerifyFailed(f"{conn.label}: {rs.path}: got {n} of {st.st_size} bytes")
        expected = sha256 or remote_sha256(conn, rs.path)
        if expected is not None and expected != digest:
            raise VerifyFailed(f"{conn.label}: SHA-256 of {rs.path} is {digest}, expected {expected}: "
                               f"the copy was not kept")
        os.replace(tmp, local_path)
        tmp = None
        return FetchResult(local_path, n, digest, "sha256" if expected else "size")
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        conn.close()


def remove(remote_spec: str, config=None) -> bool:
    """Remove a pushed file; False if it was not there."""
    rs = parse(remote_spec)
    conn = connect(rs, _settings(config))
    try:
        conn.sftp.remove(rs.path)
        return True
    except FileNotFoundError:
        return False
    except Exception as exc:
        raise sftpio.translate(conn, exc, "removing", rs.path) from None
    finally:
        conn.close()
