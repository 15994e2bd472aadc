"""Is a partition's directory really there?

A store partition is a directory, often the mount point of its own disk.  When that
disk is not mounted, the directory is still there, empty, on the disk above it: a
backup would find no users and a restore would fill the wrong disk.  So before a
command uses a partition it checks that the directory exists (for commands that only
read), is a directory, can be read, and is not under a mount point that
``/etc/fstab`` names but that nothing is mounted on.  What cannot be told this way (a
mount point that only an automounter or a systemd unit knows) is caught by the
empty-partition check of the backup (``asm.backup.select``).
"""
from __future__ import annotations

import os
import re
import stat

from asm.errors import EXIT_STORE
from asm.store.base import StoreError

#: Where mount points are configured and where the kernel lists what is mounted
#: (module attributes so tests can point them elsewhere).
FSTAB = "/etc/fstab"
MOUNTINFO = "/proc/self/mountinfo"

_OCTAL = re.compile(r"\\([0-7]{3})")


class PartitionUnavailable(StoreError):
    """A partition's directory is missing, not a directory, unreadable, or the empty
    mount point of a disk that is not mounted."""

    status = EXIT_STORE


def _unescape(field: str) -> str:
    """fstab and mountinfo write a space in a path as \\040."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def fstab_mount_points(path: str | None = None) -> list[str]:
    """Directories /etc/fstab mounts something on (not / and not swap)."""
    out = []
    try:
        with open(path or FSTAB, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 2 or fields[0].startswith("#"):
                    continue
                point = _unescape(fields[1])
                if point.startswith("/") and point != "/":
                    out.append(os.path.normpath(point))
    except OSError:
        return []
    return out


def mounted_points(path: str | None = None) -> set[str] | None:
    """Mount points the kernel has now, or None when it cannot be told."""
    try:
        with open(path or MOUNTINFO, encoding="utf-8", errors="replace") as f:
            return {os.path.normpath(_unescape(line.split()[4])) for line in f if len(line.split()) > 4}
    except OSError:
        return None


def unmounted_mount_point(path: str) -> str | None:
    """The mount point /etc/fstab names at or above ``path`` (the nearest one) when
    nothing is mounted on it: the partition's disk is not there."""
    p = os.path.normpath(os.path.abspath(path))
    covering = [m for m in fstab_mount_points() if p == m or p.startswith(m + "/")]
    if not covering:
        return None
    nearest = max(covering, key=len)
    mounted = mounted_points()
    if mounted is None or nearest in mounted:
        return None
    return nearest


def check_partition_dir(name: str, path: str, configured: bool = True, writing: bool = False,
                        key: str | None = None) -> bool:
    """Raise PartitionUnavailable when partition ``name`` at ``path`` cannot be used.

    Returns True when the directory exists, False when it does not and that is fine:
    the default partition under IMS_HOME before the first user (``configured`` False),
    or a command that writes and will create it.  A configured partition that is
    missing is an error for a command that only reads: a mistyped path or a disk that
    is not mounted must not look like an empty store.  ``key``: the option that gives
    ``path``, for the message (default ``partition:NAME.path``; a Dovecot layout's root
    comes from store.mail_location).
    """
    key = key or f"partition:{name}.path"
    point = unmounted_mount_point(path)
    if point is not None:
        raise PartitionUnavailable(
            f"partition {name!r} ({path}): {point} is a mount point in {FSTAB} but nothing is "
            f"mounted on it: mount it (mount {point}) and run the same command again")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if writing or not configured:
            return False
        raise PartitionUnavailable(
            f"partition {name!r}: its directory {path} does not exist: check {key} "
            f"(msconfig show), or mount the partition's disk") from None
    except OSError as exc:
        raise PartitionUnavailable(f"partition {name!r}: cannot use {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PartitionUnavailable(f"partition {name!r}: {path} is not a directory: check "
                                   f"{key} (msconfig show)")
    if not writing and not os.access(path, os.R_OK | os.X_OK):
        raise PartitionUnavailable(f"partition {name!r}: cannot read {path} (permission denied): run "
                                   f"as the store's owner or root")
    return True
