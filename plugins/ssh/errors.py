"""Every failure a user can meet on an SSH device, one class each.

They refine the remote-device failures of :mod:`asm.devices` (each a DeviceError with
the exit status of its kind, EXIT_CONNECT, EXIT_HOSTKEY, EXIT_AUTH, EXIT_NOSPACE (far
disk full), EXIT_LINKLOST, EXIT_USAGE (a device string or remote path that can name no
archive), else EXIT_DEVICE, and an OSError with errno/strerror set).
``str(exc)`` is the message.
"""
from __future__ import annotations

import errno as _errno

from asm.devices import (RemoteAuthFailed, RemoteConnectFailed, RemoteDeviceError, RemoteLinkLost,
                         RemoteNoSpace, RemoteNotFound, RemoteVerifyFailed)
from asm.errors import EXIT_HOSTKEY, EXIT_USAGE


class RemoteError(RemoteDeviceError):
    """An SSH device or transfer failed; the message says which host, what and why."""


class ConnectFailed(RemoteError, RemoteConnectFailed):
    """No SSH session: refused, timed out, unknown host name, not an SSH server."""


class HostKeyError(RemoteError):
    """The server's host key cannot be trusted (never accepted automatically)."""
    default_errno = _errno.EPERM
    status = EXIT_HOSTKEY


class HostKeyUnknown(HostKeyError):
    """The server's host key is in no known_hosts file."""


class HostKeyChanged(HostKeyError):
    """The server offered a key different from the one known_hosts holds for it."""


class HostKeyRevoked(HostKeyError):
    """The server offered a key that a known_hosts ``@revoked`` line lists."""


class AuthFailed(RemoteError, RemoteAuthFailed):
    """None of our keys was accepted (or there was no key to offer)."""


class RemotePathError(RemoteError, RemoteNotFound):
    """The remote path is missing, a directory, or not writable."""


class RemoteUsageError(RemotePathError):
    """A device string or remote path that can name no archive (malformed, no file, a bad
    port, a raw disk): a usage error, exit 2, nothing was done."""
    status = EXIT_USAGE


class RemoteDiskFull(RemoteError, RemoteNoSpace):
    """The far file system has no room left."""


class LinkLost(RemoteError, RemoteLinkLost):
    """The connection dropped or stopped answering in the middle of a transfer."""


class VerifyFailed(RemoteError, RemoteVerifyFailed):
    """A transferred file's size or SHA-256 differs on the far side."""
