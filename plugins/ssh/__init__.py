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
_ERRORS = {"AuthFailed", "ConnectFailed", "HostKeyChanged", "HostKeyRevoked", "HostKeyUnknown", "LinkLost",
           "RemoteDiskFull", "RemoteError", "RemotePathError", "RemoteUsageError", "VerifyFailed"}
_TRANSFER = {"FetchResult", "PushResult", "fetch", "push", "remove"}


def __getattr__(name):
    # imported on first use: every command loads this plugin (plugins.ssh.plugin), and
    # importing paramiko costs ~0.15 s and ~20 MB; the errors module, a little start time
    if name in _ERRORS:
        from plugins.ssh import errors
        return getattr(errors, name)
    if name in _TRANSFER:
        from plugins.ssh import transfer
        return getattr(transfer, name)
    raise AttributeError(name)
