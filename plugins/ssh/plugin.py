"""The ``ims_open_device`` hook: ``[user@]host[:port]:path`` and ``ssh://...`` devices."""
from __future__ import annotations

from asm.config import _abspath, _any, _choice, _int
from asm.devices import is_remote, url_scheme
from asm.hookspecs import hookimpl


@hookimpl
def ims_options():
    """The options of remote devices (msg.conf ``ssh.*``)."""
    return {
        "ssh.identity": (_abspath, None, "private key file for remote devices"),
        "ssh.knownhosts": (_abspath, None, "known_hosts file (default ~/.ssh/known_hosts)"),
        "ssh.port": (_int(1, 65535), "22", "default SSH port for remote devices"),
        "ssh.timeout": (_int(1, 3600), "30", "seconds to wait when connecting"),
        "ssh.keepalive": (_int(0, 3600), "30", "seconds between keepalives, 0 for none"),
        "ssh.user": (_any, None, "default remote user"),
        "ssh.stream": (_choice("auto", "sftp"), "auto",
                       "how archive bytes go to a remote file: auto (cat on an exec channel when "
                       "the far side has a shell, faster) or sftp (SFTP only)"),
    }


def _localonly(config) -> bool:
    return bool(config is not None and config.get("device.localonly") == "yes")


def open_remote(spec: str, mode: str, blocking_factor: int = 20, config=None):
    """Open a remote device; raises a :class:`plugins.ssh.errors.RemoteError`."""
    # imported here: paramiko is loaded only when a remote device is really used
    from plugins.ssh import device
    from plugins.ssh.connection import Settings, connect
    from plugins.ssh.errors import AuthFailed, ConnectFailed
    from plugins.ssh.spec import parse
    rs = parse(spec)
    try:
        conn = connect(rs, Settings.from_config(config))
    except (ConnectFailed, AuthFailed) as exc:
        if spec.startswith("ssh://"):
            raise
        # host:path is also how a local file with a colon reads (full-02:00.ims): say so
        raise type(exc)(f"{exc} (device {spec!r} was read as [user@]host:path, host {rs.host!r}; "
                        f"a local file with a colon in its name: ./{spec})", exc.errno) from None
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
