"""Archive devices on another host.

- A regular remote file (or a new one) is written over SFTP under a hidden temporary
  name (``.NAME.XXXXXXXX.partial``, mode 0600) in whole records, flushed, checked for
  size and renamed over the target only by ``close(ok=True)``; ``close(ok=False)``
  removes it.  Read back, it is seekable (the restore's index-and-seek path).
- A remote FIFO or character device (``host:/dev/nst0``, the ``tar -f host:/dev/rmt0``
  habit) is a stream through an exec channel: ``dd obs=RECORD of=PATH`` to write (the
  far ``dd`` re-blocks to whole records), ``cat`` to read.  That needs a POSIX shell.
- A remote block device (a raw disk) is refused for writing (exit 2).
"""
from __future__ import annotations

import contextlib
import errno
import posixpath
import shlex
import socket
import stat
import time

import paramiko

from asm.atend import at_end
from asm.devices import Device, block_device_message
from asm.interrupts import interrupts_deferred
from plugins.ssh.connection import Connection
from plugins.ssh.errors import LinkLost, RemoteDiskFull, RemoteError, RemotePathError, RemoteUsageError
from plugins.ssh import sftpio

#: how long a far command's stderr may trail its exit status (_stderr_lines)
STDERR_SETTLE = 5.0
#: how long a stopped far ``cat`` is given to end before its file is removed (_CatSink.abort)
CAT_EXIT_WAIT = 5.0


def _stderr_lines(chan: paramiko.Channel, settle: float = STDERR_SETTLE) -> list[str]:
    """What the remote command wrote on stderr; once its exit status is in, up to
    ``settle`` seconds more for the rest of it (every caller asks after a failing exit
    status, so a run that succeeds never waits): sshd may send the exit status before the
    last of the command's stderr (a far ``dd`` at the end of a full device: "dd exited
    1", exit 3, where "No space left on device" came a moment later, exit 13; CI, under
    load), and the end of the channel's data (EOF) comes after it."""
    err = b""
    deadline = time.monotonic() + settle
    while not (chan.eof_received or chan.closed) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(4096)
    except Exception:      # the link is gone: the caller's error says so
        pass
    return err.decode("utf-8", "replace").strip().splitlines()


def _stat(conn: Connection, path: str):
    try:
        return conn.sftp.stat(path)
    except FileNotFoundError:
        return None
    except Exception as exc:
        raise sftpio.translate(conn, exc, "examining", path) from None


class _SFTPWriter:
    """The raw file the archive writer sees.  It hands over whole records; they are
    sent as SFTP writes of as many whole records as fit one SFTP request (32 KiB), so
    the far file is laid out record by record with fewer round trips."""

    def __init__(self, dev: "RemoteFileWriter", record_size: int):
        self.dev = dev
        self.batch = max(record_size, (sftpio.MAX_WRITE // record_size) * record_size)
        self._buf = bytearray()

    def write(self, data) -> int:
        self._buf += data
        if len(self._buf) >= self.batch:
            self._send(len(self._buf) - len(self._buf) % self.batch)
        return len(data)

    def _send(self, n: int) -> None:
        dev = self.dev
        mv = memoryview(self._buf)
        try:
            for i in range(0, n, self.batch):
                dev.f.write(mv[i:i + self.batch].tobytes())
        except Exception as exc:
            raise sftpio.translate(dev.conn, exc, "writing", dev.path, leftover=dev.tmp) from None
        finally:
            mv.release()
        del self._buf[:n]
        dev.written += n

    def flush(self) -> None:
        if self._buf:
            self._send(len(self._buf))

    def seekable(self) -> bool:
        return False


class _SFTPSink:
    """Pipelined SFTP writes: works on sftp-only accounts (no shell)."""

    def __init__(self, f):
        self.f = f

    def write(self, data: bytes) -> None:
        self.f.write(data)

    def finish(self) -> None:
        sftpio.finish_writes(self.f)

    def abort(self) -> None:
        sftpio.abandon(self.f)


class _CatSink:
    """``cat > TMP`` on an exec channel: no per-write answers, so several times faster
    than SFTP with paramiko.  A failing cat (full disk) ends the channel; its message
    becomes the error."""

    def __init__(self, conn: Connection, tmp: str):
        self.conn, self.tmp = conn, tmp
        self.chan = conn.exec(f"exec cat > {shlex.quote(tmp)}")

    def _failed(self) -> OSError | None:
        if not self.chan.exit_status_ready():
            return None
        status = self.chan.recv_exit_status()
        if status == 0:
            return None
        if status == -1:
            return ConnectionResetError(errno.ECONNRESET, "the channel closed without an exit status")
        text = _stderr_lines(self.chan)
        msg = text[-1] if text else f"cat exited {status}"
        return OSError(errno.ENOSPC if "No space left" in msg else errno.EIO, msg)

    def write(self, data: bytes) -> None:
        try:
            self.conn.send_all(self.chan, data)
        except socket.timeout:
            raise                           # the far side stopped answering
        except (OSError, paramiko.SSHException, EOFError) as exc:
            why = self._failed()
            if why is not None:
                raise why from None
            raise exc

    def finish(self) -> None:
        self.chan.shutdown_write()
        self.conn.exit_status(self.chan)
        why = self._failed()
        if why is not None:
            raise why
        self.chan.close()

    def abort(self) -> None:
        """End the far ``cat`` before its file is removed: a shell that had not yet opened
        ``> TMP`` when the command was stopped (an engine's SIGTERM right after the exec)
        creates it after a removal that came first, and the temporary file was left
        behind, exit 130.  Its stdin is ended (EOF) and its exit awaited, a bounded while
        (a lost link never answers)."""
        try:
            self.chan.shutdown_write()
            self.chan.status_event.wait(CAT_EXIT_WAIT)
        except Exception:
            pass                    # the link is gone: the removal says what it could do
        sftpio.quiet_close(self.chan)


class RemoteFileWriter(Device):
    """A remote regular file written through a temporary name, renamed on success."""

    puts_in_place = True

    def __init__(self, spec: str, conn: Connection, path: str, record_size: int):
        self.conn, self.path = conn, path
        sftp = conn.sftp
        st = _stat(conn, path)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise RemotePathError(f"{conn.label}: {path} is a directory: name a file, e.g. "
                                  f"{posixpath.join(path, 'backup.ims')}", 21)
        d = posixpath.dirname(path) or "."
        dst = _stat(conn, d)
        if dst is None or not stat.S_ISDIR(dst.st_mode):
            raise RemotePathError(f"{conn.label}: directory {d} does not exist: create it there first")
        self.tmp = sftpio.temp_name(path)
        self.f = None
        try:
            f = sftp.open(self.tmp, "wx", bufsize=0)
        except Exception as exc:
            raise sftpio.translate(conn, exc, "creating", self.tmp) from None
        except BaseException:
            # a signal (an engine's SIGTERM) while the far side made it: it may be there
            with interrupts_deferred():
                sftpio.discard(conn, self.tmp)
            conn.close()
            raise
        try:
            try:
                f.chmod(0o600)
                if conn.settings.stream == "auto" and conn.has_shell():
                    f.close()                      # created 0600 and unique; cat fills it
                    with interrupts_deferred():    # (a far cat started is one _discard ends)
                        self.f = _CatSink(conn, self.tmp)
                else:
                    f.set_pipelined(True)
                    self.f = _SFTPSink(f)
            except RemoteError:
                raise
            except Exception as exc:
                raise sftpio.translate(conn, exc, "creating", self.tmp) from None
        except BaseException:
            # made, then a failure or a signal (an engine's SIGTERM) before it was ours to
            # hand over: it goes again
            self.f = self.f or _SFTPSink(f)
            self._discard()
            conn.close()
            raise
        self.written = 0
        # never closed (a signal between here and the caller's try, a bug): removed when
        # the command ends, while the link is still up (no finalizer can reach the far side)
        self._closed = self._prepared = False
        at_end(self._left_open)
        super().__init__(spec, _SFTPWriter(self, record_size), seekable=False, kind="remote-file")

    def _left_open(self) -> None:
        if not self._closed:
            with contextlib.suppress(Exception):
                self.close(ok=False)

    def prepare(self) -> None:
        """Every write answered (or for ``cat`` to exit 0), the size checked, the far
        side asked to fsync: all but the rename."""
        if self._prepared:
            return
        conn, sftp = self.conn, self.conn._sftp
        try:
            self.file.flush()
            self.f.finish()                   # every write answered, or the error
            size = sftp.stat(self.tmp).st_size
            if size != self.written:
                raise OSError(errno.EIO, f"{self.tmp} holds {size} bytes, {self.written} were sent")
            sftpio.fsync(sftp, self.tmp)
        except Exception as exc:
            raise sftpio.translate(conn, exc, "finishing", self.path, leftover=self.tmp) from None
        self._prepared = True

    def close(self, ok: bool = True) -> None:
        conn, sftp = self.conn, self.conn._sftp
        self._closed = True
        try:
            if ok:
                try:
                    self.prepare()
                except BaseException:
                    # failed, or a signal (an engine's SIGTERM) while it finished: not an archive
                    self._discard()
                    raise
                try:
                    with interrupts_deferred():      # renamed, or not: never cut in between
                        sftpio.replace(sftp, self.tmp, self.path)
                except Exception as exc:
                    err = sftpio.translate(conn, exc, "finishing", self.path, leftover=self.tmp)
                    self._discard()
                    raise err from None
            else:
                left = self._discard()
                if left:
                    raise RemoteError(f"{conn.label}: the temporary file {self.tmp} could not be removed "
                                      f"({left}): it is not a complete archive; remove it there")
        finally:
            conn.close()

    def _discard(self) -> str | None:
        """Remove the temporary file (:func:`sftpio.discard`: never over the channel it
        was written on, which a signal may have cut); None once it is gone, else why it
        may remain.  Signals wait meanwhile (a second SIGTERM must not leave the file
        after all)."""
        with interrupts_deferred():
            self.f.abort()
            return sftpio.discard(self.conn, self.tmp)


class _SFTPReader:
    """Seekable raw file over SFTP with read-ahead for sequential reads (bounded)."""

    MAX_AHEAD = 1 << 20
    CHUNK = 32768

    def __init__(self, conn: Connection, path: str, f, size: int):
        self.conn, self.path, self.f, self.size = conn, path, f, size
        self.pos = 0
        self._buf = b""
        self._bufpos = 0          # file offset of _buf[0]
        self._ahead = self.CHUNK  # grows while reads stay sequential

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self.pos
        elif whence == 2:
            offset += self.size
        if offset < 0:
            raise OSError(22, "negative seek")
        self.pos = offset
        return offset

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self.size - self.pos)
        end = min(self.pos + n, self.size)
        if end <= self.pos:
            return b""
        b0, b1 = self._bufpos, self._bufpos + len(self._buf)
        if b0 <= self.pos and end <= b1:
            out = self._buf[self.pos - b0:end - b0]
            self.pos = end
            return out
        sequential = self.pos == b1
        self._ahead = min(self._ahead * 2, self.MAX_AHEAD) if sequential else self.CHUNK
        want = max(end - self.pos, self._ahead)
        want = min(want, self.size - self.pos)
        chunks = [(off, min(self.CHUNK, self.pos + want - off))
                  for off in range(self.pos, self.pos + want, self.CHUNK)]
        try:
            data = sftpio.read_many(self.f, chunks)
        except Exception as exc:
            raise sftpio.translate(self.conn, exc, "reading", self.path) from None
        self._buf, self._bufpos = data, self.pos
        out = data[:end - self.pos]
        self.pos += len(out)
        return out

    def close(self) -> None:
        sftpio.quiet_close(self.f)


class _ConnDevice(Device):
    """A device that owns its connection: closing it ends the session."""

    def __init__(self, spec, file, conn: Connection, seekable: bool, kind: str):
        super().__init__(spec, file, seekable=seekable, kind=kind)
        self.conn = conn

    def close(self, ok: bool = True) -> None:
        try:
            self.file.close()
        finally:
            self.conn.close()


class _ExecReader:
    """The stdout of a remote command as a raw stream; a dropped link or a failed
    command is an error, never a quiet end of data."""

    def __init__(self, conn: Connection, chan: paramiko.Channel, path: str):
        self.conn, self.chan, self.path = conn, chan, path

    def seekable(self) -> bool:
        return False

    def read(self, n: int = 65536) -> bytes:
        try:
            data = self.conn.recv(self.chan, n if n and n > 0 else 65536)
            if data:
                return data
            status = self.conn.exit_status(self.chan)
        except (socket.timeout, paramiko.SSHException, EOFError, OSError) as exc:
            raise sftpio.translate(self.conn, exc, "reading", self.path) from None
        if status == -1 or not self.conn.alive() and not self.chan.exit_status_ready():
            raise LinkLost(f"connection to {self.conn.label} lost while reading {self.path}")
        if status != 0:
            err = _stderr_lines(self.chan)
            raise RemoteError(f"{self.conn.label}: reading {self.path} failed: "
                              f"{err[-1] if err else f'remote command exited {status}'}")
        return b""

    def close(self) -> None:
        sftpio.quiet_close(self.chan)


class _ExecWriter:
    def __init__(self, conn: Connection, chan: paramiko.Channel, path: str):
        self.conn, self.chan, self.path = conn, chan, path

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        try:
            self.conn.send_all(self.chan, data)
        except (socket.timeout, paramiko.SSHException, EOFError, OSError) as exc:
            raise self._why(exc) from None
        return len(data)

    def flush(self) -> None:
        pass

    def _why(self, exc) -> RemoteError:
        if self.chan.exit_status_ready() and self.chan.recv_exit_status() not in (0, -1):
            return _dd_failed(self.conn, self.path, _stderr_lines(self.chan), str(exc))
        return sftpio.translate(self.conn, exc, "writing", self.path)


def _dd_failed(conn: Connection, path: str, stderr: list[str], fallback: str) -> RemoteError:
    """The error of a far ``dd of=PATH`` that failed: a full device (a tape at its end,
    "No space left on device") is RemoteDiskFull (exit 13), as it is written locally."""
    err = [e for e in stderr if "records" not in e and "copied" not in e]
    msg = err[0] if err else fallback
    if any("No space left" in e for e in err):
        return RemoteDiskFull(f"no space left on {conn.label} in {path} while writing ({msg}): "
                              f"load another medium or name another device")
    return RemoteError(f"{conn.label}: writing {path} failed: {msg}")


class RemoteStreamWriter(Device):
    def __init__(self, spec: str, conn: Connection, path: str, record_size: int):
        self.conn = conn
        chan = conn.exec(f"exec dd obs={record_size} {shlex.quote('of=' + path)}")
        super().__init__(spec, _ExecWriter(conn, chan, path), seekable=False, kind="remote-stream")

    def close(self, ok: bool = True) -> None:
        w = self.file
        try:
            if ok:
                try:
                    w.chan.shutdown_write()
                    status = self.conn.exit_status(w.chan)
                except Exception as exc:
                    raise sftpio.translate(self.conn, exc, "finishing", w.path) from None
                if status != 0:
                    raise _dd_failed(self.conn, w.path, _stderr_lines(w.chan), f"dd exited {status}")
        finally:
            sftpio.quiet_close(w.chan)
            self.conn.close()


def open_write(spec: str, conn: Connection, path: str, record_size: int) -> Device:
    st = _stat(conn, path)
    if st is not None and stat.S_ISBLK(st.st_mode):
        # a raw disk: never a temporary file renamed over the node (exit 0, disk untouched)
        raise RemoteUsageError(block_device_message(
            spec, f"{conn.label}: ", f"dd of={shlex.quote(path)} on that host (over ssh)"), errno.EINVAL)
    if st is not None and (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        return RemoteStreamWriter(spec, conn, path, record_size)
    return RemoteFileWriter(spec, conn, path, record_size)


def open_read(spec: str, conn: Connection, path: str) -> Device:
    st = _stat(conn, path)
    if st is None:
        raise RemotePathError(f"{conn.label}: {path} does not exist: check the -f argument")
    if stat.S_ISDIR(st.st_mode):
        raise RemotePathError(f"{conn.label}: {path} is a directory, not an archive", 21)
    if stat.S_ISREG(st.st_mode):
        try:
            f = conn.sftp.open(path, "r", bufsize=0)
        except Exception as exc:
            raise sftpio.translate(conn, exc, "opening", path) from None
        return _ConnDevice(spec, _SFTPReader(conn, path, f, st.st_size), conn, True, "remote-file")
    chan = conn.exec(f"exec cat -- {shlex.quote(path)}")
    return _ConnDevice(spec, _ExecReader(conn, chan, path), conn, False, "remote-stream")
