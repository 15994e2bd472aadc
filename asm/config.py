"""Installation configuration: ``$IMS_HOME/config/msg.conf``, written by ``msconfig``.

The file holds ``name = value`` lines.  Every option is declared in :data:`OPTIONS`
with a checker, so a typo is refused with a message naming the option instead of
being silently ignored.  Writes go to a temporary file, are fsynced and renamed,
so a crash never leaves half a configuration.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import tempfile
from dataclasses import dataclass
from typing import Callable

from asm.errors import EXIT_USAGE, ImsError


class ConfigError(ImsError):
    """A bad option name or value, or an unreadable configuration file."""

    status = EXIT_USAGE


def _choice(*values: str) -> Callable[[str], str]:
    def check(v: str) -> str:
        if v not in values:
            raise ValueError(f"must be one of {', '.join(values)}")
        return v
    return check


def _abspath(v: str) -> str:
    if not v.startswith("/"):
        raise ValueError("must be an absolute path")
    return os.path.normpath(v)


def _int(lo: int, hi: int) -> Callable[[str], str]:
    def check(v: str) -> str:
        try:
            n = int(v)
        except ValueError:
            raise ValueError("must be a whole number") from None
        if not lo <= n <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return str(n)
    return check


def _owner(v: str) -> str:
    try:
        pwd.getpwnam(v)
    except KeyError:
        if not v.isdigit():
            raise ValueError(f"no such user {v!r} on this system") from None
    return v


def _exclude(v: str) -> str:
    names = [x for x in v.split("%")]
    if any(not x.strip() for x in names):
        raise ValueError("folder names are separated by single '%' and may not be empty")
    return v


def _bool(v: str) -> str:
    low = v.lower()
    if low in ("1", "yes", "true", "on"):
        return "yes"
    if low in ("0", "no", "false", "off"):
        return "no"
    raise ValueError("must be yes or no")


def _any(v: str) -> str:
    if "\n" in v:
        raise ValueError("may not contain a newline")
    return v


@dataclass(frozen=True)
class Option:
    check: Callable[[str], str]
    default: str | None
    doc: str


#: Every option msconfig knows.  ``partition:NAME.path`` is matched by pattern.
OPTIONS: dict[str, Option] = {
    "store.driver": Option(_choice("classic", "maildir"), "classic",
                           "message store format: classic (embedded) or maildir (Dovecot)"),
    "store.backupexclude": Option(_exclude, None,
                                  "folders left out of user backups, %-separated, e.g. Trash%Bulk Mail"),
    "store.owner": Option(_owner, None,
                          "system user owning store files; restored files get this owner"),
    "store.locktimeout": Option(_int(1, 3600), "30", "seconds to wait for a folder lock"),
    "store.root": Option(_abspath, None,
                         "classic store root (mailbox list, queue); default $IMS_HOME/data/store"),
    "store.backupdir": Option(_abspath, None,
                              "mkbackupdir's backup image directory when -p is not given (NetWorker)"),
    "device.localonly": Option(_bool, "no",
                               "treat every -f argument as a local path, even with a colon"),
    "ssh.identity": Option(_abspath, None, "private key file for remote devices"),
    "ssh.knownhosts": Option(_abspath, None, "known_hosts file (default ~/.ssh/known_hosts)"),
    "ssh.port": Option(_int(1, 65535), "22", "default SSH port for remote devices"),
    "ssh.timeout": Option(_int(1, 3600), "30", "seconds to wait when connecting"),
    "ssh.keepalive": Option(_int(0, 3600), "30", "seconds between keepalives, 0 for none"),
    "ssh.user": Option(_any, None, "default remote user"),
    "ssh.stream": Option(_choice("auto", "sftp"), "auto",
                         "how archive bytes go to a remote file: auto (cat on an exec channel when "
                         "the far side has a shell, faster) or sftp (SFTP only)"),
    "restore.spoolmax": Option(_int(0, 1 << 20), "1024",
                               "MiB of first copies a restore from a pipe may keep for later links"),
    "staging.dir": Option(_abspath, None, "staging directory for per-group dumps"),
    "staging.keep": Option(_int(0, 1000), "0", "staging dumps kept after the engine succeeded"),
    "staging.jobs": Option(_int(1, 64), None, "parallel group dumps (default: number of cores)"),
    "staging.afterbatch": Option(_any, None,
                                 "shell command saving a staged batch when the area cannot hold every group"),
    "staging.remote": Option(_any, None, "[user@]host[:port]:dir to push completed dumps to"),
}

PARTITION_RE = re.compile(r"^partition:([A-Za-z0-9_][A-Za-z0-9_.-]*)\.path$")


def lookup(name: str) -> Option:
    if name in OPTIONS:
        return OPTIONS[name]
    if PARTITION_RE.match(name):
        return Option(_abspath, None, "directory of a store partition")
    close = [n for n in OPTIONS if n.split(".")[0] == name.split(".")[0]]
    hint = f" (known {name.split('.')[0]} options: {', '.join(close)})" if close else \
        " (run 'msconfig show' for the known options)"
    raise ConfigError(f"unknown option {name!r}{hint}")


def check(name: str, value: str) -> str:
    opt = lookup(name)
    try:
        # msg.conf is line-based: a newline in a value would smuggle in another option
        # (and leave a file no command can read); the file also strips each value.
        if any(ord(c) < 32 or c == "\x7f" for c in value):
            raise ValueError("may not contain newlines or other control characters")
        return opt.check(value.strip())
    except ValueError as exc:
        raise ConfigError(f"bad value {value!r} for option {name}: {exc}") from None


def ims_home(home: str | None = None) -> str:
    home = home or os.environ.get("IMS_HOME")
    if not home:
        raise ConfigError("IMS_HOME is not set: export IMS_HOME=/path/to/installation")
    return os.path.abspath(home)


class Config:
    """The options of one installation (``IMS_HOME``)."""

    def __init__(self, home: str | None = None):
        self.home = ims_home(home)
        self.path = os.path.join(self.home, "config", "msg.conf")
        self.groups_path = os.path.join(self.home, "config", "backup-groups.conf")
        self.values: dict[str, str] = {}
        self._load()

    def _load(self) -> None:
        try:
            f = open(self.path, encoding="utf-8")
        except FileNotFoundError:
            return
        with f:
            for lineno, line in enumerate(f, 1):
                s = line.strip()
                if not s or s.startswith("#"):
                    continue
                name, eq, value = s.partition("=")
                if not eq:
                    raise ConfigError(f"{self.path}:{lineno}: expected 'name = value'")
                name, value = name.strip(), value.strip()
                try:
                    self.values[name] = check(name, value)
                except ConfigError as exc:
                    raise ConfigError(f"{self.path}:{lineno}: {exc}") from None

    # -- reading ------------------------------------------------------------
    def get(self, name: str) -> str | None:
        opt = lookup(name)
        return self.values.get(name, opt.default)

    def get_int(self, name: str) -> int:
        return int(self.get(name))

    @property
    def driver(self) -> str:
        return self.get("store.driver")

    @property
    def store_root(self) -> str:
        return self.get("store.root") or os.path.join(self.home, "data", "store")

    def partitions(self) -> dict[str, str]:
        """{name: path}; ``primary`` always exists (default under IMS_HOME)."""
        parts = {}
        for name, value in self.values.items():
            m = PARTITION_RE.match(name)
            if m:
                parts[m.group(1)] = value
        if "primary" not in parts:
            sub = "maildir" if self.driver == "maildir" else os.path.join("store", "partition")
            parts["primary"] = os.path.join(self.home, "data", sub, "primary")
        return dict(sorted(parts.items(), key=lambda kv: (kv[0] != "primary", kv[0])))

    def backup_exclude(self) -> list[str]:
        raw = self.get("store.backupexclude")
        return [x for x in raw.split("%")] if raw else []

    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) of store.owner, or None when files keep the running user's."""
        name = self.get("store.owner")
        if not name:
            return None
        try:
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
        except KeyError:
            return int(name), int(name)

    # -- writing ------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self):
        """Hold msg.conf's lock and re-read the file, so two msconfig runs at once
        each keep the other's change instead of writing back a stale copy."""
        d = os.path.dirname(self.path)
        os.makedirs(d, exist_ok=True)
        fd = os.open(os.path.join(d, ".msg.conf.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.values = {}
            self._load()
            yield
        finally:
            os.close(fd)

    def set(self, name: str, value: str) -> str:
        value = check(name, value)
        with self._writing():
            self.values[name] = value
            self.save()
        return value

    def unset(self, name: str) -> bool:
        lookup(name)
        with self._writing():
            had = self.values.pop(name, None) is not None
            if had:
                self.save()
        return had

    def save(self) -> None:
        d = os.path.dirname(self.path)
        os.makedirs(d, exist_ok=True)
        text = "# written by msconfig; edit with 'msconfig set NAME VALUE'\n" + "".join(
            f"{k} = {v}\n" for k, v in sorted(self.values.items()))
        atomic_write(self.path, text.encode("utf-8"), mode=0o644)


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never half."""
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
