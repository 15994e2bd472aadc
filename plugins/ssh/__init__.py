"""Remote devices and file transfer over SSH (paramiko), for ``imsbackup -f host:path``,
``imsrestore -f host:path`` and the staging area's push to a media server.

- :mod:`plugins.ssh.spec`: the device strings ``[user@]host[:port]:path`` and
  ``ssh://[user@]host[:port]/path``.
- :mod:`plugins.ssh.connection`: settings from msconfig, key-only authentication,
  host keys checked against known_hosts (never accepted automatically).
- :mod:`plugins.ssh.device`: the archive devices (SFTP file written under a temporary
  name and renamed when complete; seekable SFTP reads; exec-channel streams for remote
  FIFOs and tapes).
- :mod:`plugins.ssh.transfer`: :func:`push`, :func:`fetch` and :func:`remove` for whole
  files, digest-checked on the far side.
- :mod:`plugins.ssh.plugin`: the ``ims_open_device`` hook.

See docs/ssh.md.
"""
from plugins.ssh.errors import (  # noqa: F401
    AuthFailed, ConnectFailed, HostKeyChanged, HostKeyUnknown, LinkLost, RemoteDiskFull, RemoteError,
    RemotePathError, VerifyFailed,
)
from plugins.ssh.transfer import FetchResult, PushResult, fetch, push, remove  # noqa: F401
