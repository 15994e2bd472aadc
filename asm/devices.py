"""Devices an archive is written to or read from, and the local device plugin.

``-`` is stdout (write) or stdin (read); a path is a plain file, a FIFO or a
character device (tape).  A block device (a raw disk) is refused for writing (exit 2).  ``[user@]host:path`` is left to a remote-device plugin
(``ims_open_device``); ``./host:path`` or ``device.localonly = yes`` forces a local
file whose name holds a colon.

A plain file is written under a temporary name in the same directory and renamed
over the target only when the archive is complete, so a failed or killed backup never
replaces a good archive with half of one.  Files are created 0600.
"""
from __future__ import annotations

import contextlib
import errno as _errno
import os
import re
import stat
import sys
import weakref

from asm.errors import EXIT_AUTH, EXIT_CONNECT, EXIT_DEVICE, EXIT_LINKLOST, EXIT_NOSPACE, EXIT_USAGE, ImsError
from asm.hookspecs import hookimpl
from asm.interrupts import interrupts_deferred

_REMOTE_RE = re.compile(r"^(ssh://|(?:[^/@:]+@)?[^/:]+:)")
_URL_RE = re.compile(r"^([a-z][a-z0-9+.-]*)://")


def url_scheme(spec: str) -> str | None:
    """``s3`` for ``s3://bucket/key`` (any ``scheme://``), else None: a device plugin of
    that scheme owns it, never the ssh plugin (``[user@]host:path``) nor a local file."""
    m = _URL_RE.match(spec)
    return m.group(1) if m else None


class DeviceError(ImsError):
    """A device that cannot be opened or written; the message says which and why.
    ``status`` is what the commands exit with (plugins refine it per failure).
    ``outcome_said`` is True when the message already says what became of the archive
    (incomplete, completed on the server, removed): the commands then add nothing."""

    status = EXIT_DEVICE
    outcome_said = False


# -- the failures every remote device shares (the ssh and s3 plugins refine them) --------
# Each is a DeviceError with the exit status of its kind and an OSError with errno and
# strerror set, because the commands report an OSError raised while an archive is
# written, read or finished as a failure of the device.  ``str(exc)`` is the message.

class DeviceOSError(DeviceError, OSError):
    """A device failure that is also an OSError (errno, strerror): what a stream layer
    or a remote device raises from inside a read or write."""

    default_errno = _errno.EIO

    def __init__(self, message: str, err: int | None = None):
        OSError.__init__(self, err or self.default_errno, message)

    def __str__(self) -> str:
        return self.strerror


class RemoteDeviceError(DeviceOSError):
    """A remote device or transfer failed; the message says where, what and why."""


class RemoteConnectFailed(RemoteDeviceError):
    """The far end cannot be reached: refused, timed out, unknown host name, TLS."""
    default_errno = _errno.ECONNREFUSED
    status = EXIT_CONNECT


class RemoteAuthFailed(RemoteDeviceError):
    """No credentials or keys, or the far end refused them."""
    default_errno = _errno.EACCES
    status = EXIT_AUTH


class RemoteNotFound(RemoteDeviceError):
    """The remote path, bucket or object does not exist (or is not what was expected)."""
    default_errno = _errno.ENOENT


class RemoteNoSpace(RemoteDeviceError):
    """The far side has no room left."""
    default_errno = _errno.ENOSPC
    status = EXIT_NOSPACE


class RemoteLinkLost(RemoteDeviceError):
    """The connection dropped or stopped answering in the middle of a transfer."""
    default_errno = _errno.ECONNRESET
    status = EXIT_LINKLOST


class RemoteVerifyFailed(RemoteDeviceError):
    """What the far side stored is not what was sent (size or digest)."""


class Device:
    """An open device: ``file`` is the raw binary stream; ``seekable`` tells whether
    the restore may seek in it.  ``close(ok)`` commits (True) or abandons (False).

    Written in two steps when ``puts_in_place`` is True (a file renamed over its name,
    an S3 object completed): :meth:`prepare` does all the slow work short of that
    (every byte sent, answered, checked, synced) and may be cut by a signal (then
    ``close(ok=False)`` abandons it); ``close(ok=True)`` after it only puts the archive
    in place, a short step the commands hold signals over (asm.cli.common.Commit), so
    an archive that is there is never reported "interrupted".  ``close(ok=True)`` alone
    prepares first."""

    #: close(ok=True) after prepare() only puts a complete archive in place
    puts_in_place = False

    def __init__(self, spec: str, file, seekable: bool = False, kind: str = "stream"):
        self.spec = spec
        self.file = file
        self.seekable = seekable
        self.kind = kind

    def prepare(self) -> None:
        """Everything before the archive is put in place (nothing by default)."""

    def close(self, ok: bool = True) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        self.close(ok=et is None)


class _FileDevice(Device):
    """A plain file written through a temporary name, renamed on success.  A temporary
    file that is never closed (a Ctrl-C or SIGTERM between its creation and the caller
    owning the device, a bug) is removed when the device is dropped or at exit."""

    puts_in_place = True

    def __init__(self, spec: str, target: str):
        import tempfile                     # only a plain-file archive needs it (startup time)
        d = os.path.dirname(os.path.abspath(target))
        # .<name>.<host>.<pid>-<random>.partial: what a killed backup (SIGKILL, a power
        # cut) of this host left for this name is removed by the next one
        prefix = f".{os.path.basename(target)}.{os.uname().nodename}."
        _sweep_partials(d, prefix)
        with interrupts_deferred():        # the file exists only together with its remover
            try:
                fd, self.tmp = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", suffix=".partial", dir=d)
            except OSError as exc:
                raise DeviceError(f"cannot write device {spec!r}: {exc.strerror} ({d})") from None
            self._discard = weakref.finalize(self, _remove, self.tmp)
        os.fchmod(fd, 0o600)
        super().__init__(spec, os.fdopen(fd, "wb", buffering=0), seekable=True, kind="file")
        self.target = target
        self._synced = False

    def prepare(self) -> None:
        if not self._synced:
            os.fsync(self.file.fileno())
            self._synced = True

    def close(self, ok: bool = True) -> None:
        try:
            if ok:
                self.prepare()
            self.file.close()
        except BaseException:          # (a signal too: nothing is put in place)
            ok = False
            raise
        finally:
            if ok:
                os.replace(self.tmp, self.target)
            else:
                _remove(self.tmp)
            self._discard.detach()


def _sweep_partials(d: str, prefix: str) -> None:
    """Remove ``<prefix><pid>-*.partial`` files in ``d`` whose process is gone."""
    from asm.locks import pid_alive
    try:
        names = [n for n in os.listdir(d) if n.startswith(prefix) and n.endswith(".partial")]
    except OSError:
        return
    for n in names:
        pid_s, dash, _ = n[len(prefix):].partition("-")
        if dash and pid_s.isdigit() and int(pid_s) != os.getpid() and not pid_alive(int(pid_s)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(d, n))


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def block_device_message(spec: str, where: str = "", pipe_to: str = "") -> str:
    """The one line that refuses a block device (a raw disk) as an archive to write;
    ``where`` prefixes it (a remote host), ``pipe_to`` is the command that can write it."""
    return (f"{where}device {spec!r} is a block device (a disk): archives are not written over a raw "
            f"disk; make a file system on it and name a file there, or write -f - and pipe it "
            f"into {pipe_to or 'dd of=' + spec}")


def is_remote(spec: str, localonly: bool = False) -> bool:
    if localonly or spec.startswith(("/", "./", "../")):
        return False
    return bool(_REMOTE_RE.match(spec))


def open_local(spec: str, mode: str) -> Device:
    if spec == "-":
        std = sys.stdout if mode == "wb" else sys.stdin
        if std is None:                # (the commands' own refuse it: asm.cli.common.closed_streams)
            name = "stdout" if mode == "wb" else "stdin"
            raise DeviceError(f"device '-' is {name}, and {name} is closed: redirect it, or name a file with -f")
        stream = std.buffer
        try:
            seekable = mode == "rb" and stream.seekable() and stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
        except (OSError, ValueError):
            seekable = False
        return _StdDevice(spec, stream, seekable)
    path = spec
    if not spec:
        # an unset variable in a cron line: refused before a backup reads the store
        raise DeviceError("device '' is empty: give -f a file name, '-' or a device",
                          status=EXIT_USAGE)
    if mode == "wb" and spec.endswith("/") and not os.path.isdir(spec):
        # a name ending in '/' can only be a directory; the archive would be written
        # to a temporary file next to it and fail only at the end of the backup
        raise DeviceError(f"device {spec!r} ends in '/' but no such directory exists: create it "
                          f"and name a file in it ({spec}backup.ims), or drop the '/'",
                          status=EXIT_USAGE)
    if mode == "wb":
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise DeviceError(f"cannot use device {spec!r}: {exc.strerror}") from None
        if st is not None and (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
            try:
                f = open(path, "wb", buffering=0)
            except OSError as exc:
                raise DeviceError(f"cannot open device {spec!r} for writing: {exc.strerror}") from None
            return Device(spec, f, False, "fifo" if stat.S_ISFIFO(st.st_mode) else "tape")
        if st is not None and stat.S_ISBLK(st.st_mode):
            # a raw disk: never a temporary file beside the node renamed over it (the disk
            # untouched, the node replaced), and never written in place either (a failed
            # backup would leave the disk's last archive half overwritten)
            raise DeviceError(block_device_message(spec), status=EXIT_USAGE)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise DeviceError(f"device {spec!r} is a directory: name a file, e.g. {os.path.join(spec, 'backup.ims')}")
        if os.path.islink(path):
            # written through the link, as GNU tar -f does: the file it names gets the
            # archive (the temporary file beside it, renamed over it), the link stays
            _refuse_planted_link(spec, path)
            path = os.path.realpath(path)
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise DeviceError(f"cannot write device {spec!r}: directory {os.path.dirname(os.path.abspath(path))} does not exist")
        return _FileDevice(spec, path)
    try:
        f = open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise DeviceError(f"device {spec!r} does not exist: check the -f argument") from None
    except IsADirectoryError:
        raise DeviceError(f"device {spec!r} is a directory, not an archive") from None
    except OSError as exc:
        raise DeviceError(f"cannot open device {spec!r} for reading: {exc.strerror}") from None
    st = os.fstat(f.fileno())
    return Device(spec, f, stat.S_ISREG(st.st_mode), "file" if stat.S_ISREG(st.st_mode) else "stream")


def _refuse_planted_link(spec: str, path: str) -> None:
    """An archive is written through a symbolic link only when each link on the way was
    made by this run's user, root or the owner of the directory holding it (the kernel's
    fs.protected_symlinks rule): one who can write a shared /backup could otherwise plant
    tonight's archive name as a link to any file root would then replace."""
    euid = os.geteuid()
    for _ in range(40):
        try:
            st = os.lstat(path)
        except OSError:
            return
        if not stat.S_ISLNK(st.st_mode):
            return
        d = os.path.dirname(os.path.abspath(path))
        try:
            owner = os.stat(d).st_uid
        except OSError:
            owner = None
        if st.st_uid not in (euid, 0, owner):
            raise DeviceError(f"device {spec!r}: {path} is a symbolic link made by uid {st.st_uid}, neither "
                              f"this run's user nor the owner of {d}: an archive is never written through it "
                              f"(someone who can write {d} could have planted it to replace any file); "
                              f"remove it, or make it as the backup's user; nothing was written",
                              status=EXIT_USAGE)
        target = os.readlink(path)
        path = target if os.path.isabs(target) else os.path.join(d, target)


class _StdDevice(Device):
    def close(self, ok: bool = True) -> None:
        """Flush what is buffered.  A reader that went away before it had all of a
        complete archive is a device failure (BrokenPipeError), never a success."""
        try:
            self.file.flush()
        except ValueError:
            pass
        except BrokenPipeError:
            if ok:
                raise


def open_device(spec: str, mode: str, blocking_factor: int = 20, config=None) -> Device:
    """Ask the device plugins for ``spec``; the local plugin answers for local paths."""
    from asm import plugins
    dev = plugins.hook().ims_open_device(spec=spec, mode=mode, blocking_factor=blocking_factor,
                                         config=config)
    if dev is None:
        scheme = url_scheme(spec)
        if scheme and scheme != "ssh" and not _localonly(config):
            raise DeviceError(f"device {spec!r}: no device plugin for {scheme}:// is loaded: install ims-asm "
                              f"with its {scheme} plugin (or add {scheme} to IMS_ASM_PLUGINS), or write "
                              f"./{spec} for a local file")
        if is_remote(spec, _localonly(config)):
            raise DeviceError(f"device {spec!r} names a remote host but no remote-device plugin is "
                              f"loaded: install the ssh plugin, or write ./{spec} for a local file")
        if os.environ.get("IMS_ASM_PLUGINS", "").strip():
            raise DeviceError(f"no device plugin can open {spec!r}: IMS_ASM_PLUGINS="
                              f"{os.environ['IMS_ASM_PLUGINS'].strip()} leaves out localdevices (files, "
                              f"stdin/stdout, FIFOs, tapes): add it, or unset IMS_ASM_PLUGINS", status=EXIT_USAGE)
        raise DeviceError(f"no device plugin can open {spec!r}")
    return dev


def _localonly(config) -> bool:
    return bool(config is not None and config.get("device.localonly") == "yes")


@hookimpl(trylast=True)
def ims_open_device(spec, mode, blocking_factor, config):
    if is_remote(spec, _localonly(config)):
        return None
    return open_local(spec, mode)
