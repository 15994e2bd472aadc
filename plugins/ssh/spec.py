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
    """A parsed [user@]host[:port]:path remote device."""

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
    user = unquote(user) if user and spec.startswith("ssh://") else user
    _check_names(spec, user, host)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        # (SFTP takes the path as UTF-8 here: it failed after the connection, exit 3, in
        # Python's words)
        raise RemoteUsageError(f"bad remote device {ascii(spec)}: its path holds bytes that are not UTF-8, which "
                               f"the remote device cannot name: name the file in UTF-8", errno.EINVAL) from None
    return RemoteSpec(user, host, _port(m.group("port"), spec), path, spec)


def _check_names(spec: str, user: str | None, host: str) -> None:
    """A host name the resolver cannot take (an empty or over-long label: backup..example.com,
    .host, a mistyped 64-character label) or a user or host that is not UTF-8: one line,
    exit 2, before any connection (they ended in an internal error, exit 70)."""
    for what, value in (("user", user), ("host", host)):
        if value is None:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RemoteUsageError(f"bad remote device {spec!r}: its {what} name is not UTF-8", errno.EINVAL) \
                from None
    if ":" in host:
        return                          # an IPv6 address
    labels = host.rstrip(".").split(".") if host != "." else [""]
    if any(not label or len(label.encode("utf-8")) > 63 for label in labels) or len(host) > 253:
        raise RemoteUsageError(f"bad remote device {spec!r}: {host!r} is no host name (an empty or longer than "
                               f"63 characters part between its dots): check the host", errno.EINVAL)
    try:
        host.encode("idna")
    except UnicodeError as exc:
        raise RemoteUsageError(f"bad remote device {spec!r}: {host!r} is no host name ({exc}): check the host",
                               errno.EINVAL) from None
