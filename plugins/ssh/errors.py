"""Every failure a user can meet on a remote device, one class each.

They are :class:`asm.devices.DeviceError` (so imsbackup/imsrestore report them as device
errors, with the ``exit_status`` of their class: 10 connect, 11 host key, 12
authentication, 13 far disk full, 14 link lost, 3 otherwise) and also :class:`OSError` with ``errno``/``strerror`` set, because the
commands turn an OSError raised while the archive is being written or read, or while
the device is closed, into the same one-line device error.  ``str(exc)`` is the message.
"""
from __future__ import annotations

import errno as _errno

from asm.devices import DeviceError


class RemoteError(DeviceError, OSError):
    """A remote device or transfer failed; the message says which host, what and why."""

    default_errno = _errno.EIO

    def __init__(self, message: str, err: int | None = None):
        OSError.__init__(self, err or self.default_errno, message)

    def __str__(self) -> str:
        return self.strerror


class ConnectFailed(RemoteError):
    """No SSH session: refused, timed out, unknown host name, not an SSH server."""
    default_errno = _errno.ECONNREFUSED
    exit_status = 10


class HostKeyUnknown(RemoteError):
    """The server's host key is in no known_hosts file (never accepted automatically)."""
    default_errno = _errno.EPERM
    exit_status = 11


class HostKeyChanged(RemoteError):
    """The server offered a key different from the one known_hosts holds for it."""
    default_errno = _errno.EPERM
    exit_status = 11


class AuthFailed(RemoteError):
    """None of our keys was accepted (or there was no key to offer)."""
    default_errno = _errno.EACCES
    exit_status = 12


class RemotePathError(RemoteError):
    """The remote path is missing, a directory, or not writable."""
    default_errno = _errno.ENOENT


class RemoteDiskFull(RemoteError):
    """The far file system has no room left."""
    default_errno = _errno.ENOSPC
    exit_status = 13


class LinkLost(RemoteError):
    """The connection dropped or stopped answering in the middle of a transfer."""
    default_errno = _errno.ECONNRESET
    exit_status = 14


class VerifyFailed(RemoteError):
    """A transferred file's size or SHA-256 differs on the far side."""
    default_errno = _errno.EIO
