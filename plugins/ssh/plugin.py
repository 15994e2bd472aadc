"""The ``ims_open_device`` hook: ``[user@]host[:port]:path`` and ``ssh://...`` devices."""
from __future__ import annotations

from asm.devices import is_remote, url_scheme
from asm.hookspecs import hookimpl


def _localonly(config) -> bool:
    return bool(config is not None and config.get("device.localonly") == "yes")


def open_remote(spec: str, mode: str, blocking_factor: int = 20, config=None):
    """Open a remote device; raises a :class:`plugins.ssh.errors.RemoteError`."""
    # imported here: paramiko is loaded only when a remote device is really used
    from plugins.ssh import device
    from plugins.ssh.connection import Settings, connect
    from plugins.ssh.spec import parse
    rs = parse(spec)
    conn = connect(rs, Settings.from_config(config))
    try:
        if mode == "wb":
            return device.open_write(spec, conn, rs.path, 512 * blocking_factor)
        return device.open_read(spec, conn, rs.path)
    except BaseException:
        conn.close()
        raise


@hookimpl
def ims_open_device(spec, mode, blocking_factor, config):
    if not is_remote(spec, _localonly(config)):
        return None
    if url_scheme(spec) not in (None, "ssh"):
        return None                  # s3:// and other schemes belong to their own plugins
    return open_remote(spec, mode, blocking_factor, config)
