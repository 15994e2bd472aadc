"""What can go wrong in a stream layer, one class each.

They are :class:`asm.devices.DeviceError` (so :class:`asm.errors.ImsError`, with the
``status`` of their class) and also :class:`OSError`: a layer fails inside a read or a
write of the archive, where the commands report an OSError as a failure of the device
(``cannot read DEVICE: ...``) with :func:`asm.errors.device_status`.
"""
from __future__ import annotations

import errno as _errno

from asm.devices import DeviceOSError
from asm.errors import EXIT_INCOMPLETE, EXIT_NOT_ARCHIVE, EXIT_USAGE


class LayerError(DeviceOSError):
    """A compression or encryption layer failed; the message says which and why."""


class KeyProblem(LayerError):
    """A recipient or identity that cannot be used (malformed, unreadable, a secret key
    where a public recipient belongs): nothing was written or read."""
    default_errno = _errno.EINVAL
    status = EXIT_USAGE


class IdentityNeeded(LayerError):
    """The archive is encrypted and no identity was given, or none of those given
    opens it."""
    default_errno = _errno.EACCES
    status = EXIT_USAGE


class LayerDamaged(LayerError):
    """A compressed or encrypted stream is cut short, altered or corrupt: what it
    released before is authentic (age) or checked (zstd frames), nothing after."""
    status = EXIT_INCOMPLETE


class LayerUnsupported(LayerError):
    """A layer ims-asm recognises but does not read itself (armored age, a passphrase)."""
    default_errno = _errno.ENOTSUP
    status = EXIT_NOT_ARCHIVE
