"""Remote device strings.

``[user@]host[:port]:path`` (``tar -f host:/dev/rmt0`` style; a port is digits between
two colons: ``host:2222:/backup/x``) and ``ssh://[user@]host[:port]/path``.  IPv6
addresses go in brackets: ``[::1]:/backup/x``.  A relative path (or ``~/path``) is
relative to the remote user's home directory.  Whether a string is remote at all is
decided by :func:`asm.devices.is_remote` (``./host:file`` is always local).
"""
from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from urllib.parse import unquote

from plugins.ssh.errors import RemoteUsageError

_SSH_URL = re.compile(r"^ssh://(?:(?P<user>[^@/]+)@)?(?P<host>\[[^\]/]+\]|[^:/\[\]]+)(?::(?P<port>\d*))?(?P<path>/.*)?$")
_SCP = re.compile(r"^(?:(?P<user>[^/@:]+)@)?(?P<host>\[[^\]/]+\]|[^/:\[\]]+):(?:(?P<port>\d+):)?(?P<path>.*)$", re.S)


@dataclass(frozen=True)
class RemoteSpec:
    user: str | None
    host: str
    port: int | None
    path: str
    text: str = ""

    def with_path(self, path: str) -> "RemoteSpec":
        return RemoteSpec(self.user, self.host, self.port, path, self.text)


def _port(text: str | None, spec: str) -> int | None:
    if not text:
        return None
    n = int(text)
    if not 1 <= n <= 65535:
        raise RemoteUsageError(f"bad port {text} in device {spec!r}: use 1 to 65535", errno.EINVAL)
    return n


def parse(spec: str) -> RemoteSpec:
    """Split a remote device string; raises RemoteUsageError (one line, exit 2) when malformed."""
    m = _SSH_URL.match(spec) if spec.startswith("ssh://") else _SCP.match(spec)
    if not m:
        raise RemoteUsageError(f"bad remote device {spec!r}: write [user@]host[:port]:path "
                               f"or ssh://[user@]host[:port]/path", errno.EINVAL)
    host = m.group("host")
    if host.startswith("["):
        host = host[1:-1]
    path = m.group("path") or ""
    if spec.startswith("ssh://"):
        path = unquote(path)
        if path.startswith("/~/"):
            path = path[3:]
    elif path.startswith("~/"):
        path = path[2:]
    if path in ("", "/", "~"):
        raise RemoteUsageError(f"remote device {spec!r} names no file: add a path, e.g. {host}:/backup/full.ims", errno.EINVAL)
    user = m.group("user")
    return RemoteSpec(unquote(user) if user and spec.startswith("ssh://") else user, host,
                      _port(m.group("port"), spec), path, spec)
