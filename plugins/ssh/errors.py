"""Every failure a user can meet on a remote device, one class each.

They are :class:`asm.devices.DeviceError` (so :class:`asm.errors.ImsError`: imsbackup,
imsrestore and imsstage report them as device errors with the ``status`` of their class,
EXIT_CONNECT, EXIT_HOSTKEY, EXIT_AUTH, EXIT_NOSPACE (far disk full), EXIT_LINKLOST, else
EXIT_DEVICE) and also :class:`OSError` with ``errno``/``strerror`` set, because the
commands turn an OSError raised while the archive is being written or read, or while
the device is closed, into the same one-line device error.  ``str(exc)`` is the message.
"""
from __future__ import annotations

import errno as _errno

from asm.devices import DeviceError
from asm.errors import EXIT_AUTH, EXIT_CONNECT, EXIT_HOSTKEY, EXIT_LINKLOST, EXIT_NOSPACE


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
    status = EXIT_CONNECT


class HostKeyUnknown(RemoteError):
    """The server's host key is in no known_hosts file (never accepted automatically)."""
    default_errno = _errno.EPERM
    status = EXIT_HOSTKEY


class HostKeyChanged(RemoteError):
    """The server offered a key different from the one known_hosts holds for it."""
    default_errno = _errno.EPERM
    status = EXIT_HOSTKEY


class AuthFailed(RemoteError):
    """None of our keys was accepted (or there was no key to offer)."""
    default_errno = _errno.EACCES
    status = EXIT_AUTH


class RemotePathError(RemoteError):
    """The remote path is missing, a directory, or not writable."""
    default_errno = _errno.ENOENT


class RemoteDiskFull(RemoteError):
    """The far file system has no room left."""
    default_errno = _errno.ENOSPC
    status = EXIT_NOSPACE


class LinkLost(RemoteError):
    """The connection dropped or stopped answering in the middle of a transfer."""
    default_errno = _errno.ECONNRESET
    status = EXIT_LINKLOST


class VerifyFailed(RemoteError):
    """A transferred file's size or SHA-256 differs on the far side."""
    default_errno = _errno.EIO
