"""Reading the store from a filesystem snapshot for one run (``--snapshot SNAP=LIVE``).

An LVM, btrfs or ZFS snapshot freezes a whole filesystem at one instant, so a backup
read from it is one point in time for every folder.  The snapshot is mounted
somewhere else (``/mnt/snap``, ``/srv/.snapshots/2am``, ``/srv/mail/.zfs/snapshot/2am``):
``--snapshot /mnt/snap=/srv/mail`` says "what lives under /srv/mail, read it under
/mnt/snap".  Every partition and the classic store root must be under one of the
given live directories (a part read live would not be the same instant).

The classic mailbox list is SQLite in WAL mode, which cannot be opened on a
read-only filesystem once its last user closed it; its two files are therefore
copied from the (frozen, so consistent) snapshot into a private directory and opened
there.  Nothing in the snapshot is written: folder locks fall back to read-only
opens there (asm/store/classic.py), and the maildir driver reads without its dotlock.
"""
from __future__ import annotations

import os
import shutil

from asm import atend
from asm.config import Config
from asm.errors import EXIT_USAGE, ImsError


class SnapshotError(ImsError):
    status = EXIT_USAGE


def parse_snapshot(text: str) -> tuple[str, str]:
    """``SNAP=LIVE`` -> (live, snap), both absolute and normalised."""
    snap, eq, live = text.partition("=")
    if not eq or not snap or not live:
        raise SnapshotError(f"bad --snapshot {text!r}: write SNAPSHOT_MOUNT=LIVE_DIRECTORY, "
                            f"e.g. --snapshot /mnt/snap=/srv/mail")
    for what, p in (("snapshot mount", snap), ("live directory", live)):
        if not p.startswith("/"):
            raise SnapshotError(f"bad --snapshot {text!r}: the {what} {p!r} must be an absolute path")
    snap, live = os.path.normpath(snap), os.path.normpath(live)
    if not os.path.isdir(snap):
        raise SnapshotError(f"--snapshot {text!r}: {snap} is not a directory: mount the snapshot there first")
    if snap == live:
        raise SnapshotError(f"--snapshot {text!r}: the snapshot mount and the live directory are the same")
    return live, snap


class SnapshotConfig(Config):
    """The installation's configuration with store paths read under snapshot mounts."""

    def __init__(self, base: Config, mapping: list[tuple[str, str]]):
        self.__dict__.update(base.__dict__)
        self.snapshot = sorted(mapping, key=lambda ls: -len(ls[0]))     # longest live prefix first
        self._copy: str | None = None
        uncovered = [f"partition {n} ({p})" for n, p in base.partitions().items() if self._map(p) is None]
        if base.driver == "classic" and self._map(base.store_root) is None:
            uncovered.append(f"the store root ({base.store_root})")
        if uncovered:
            raise SnapshotError(f"{', '.join(uncovered)} {'is' if len(uncovered) == 1 else 'are'} under no "
                                f"--snapshot live directory: snapshot that filesystem too and add "
                                f"--snapshot MOUNT=DIR for it (a part read live is not the same instant)")
        self._base_root = base.store_root
        self._base_parts = base.partitions()

    def describe(self) -> dict:
        return {live: snap for live, snap in self.snapshot}

    def _map(self, path: str) -> str | None:
        p = os.path.normpath(path)
        for live, snap in self.snapshot:
            if p == live:
                return snap
            if p.startswith(live.rstrip("/") + "/"):
                return os.path.join(snap, p[len(live.rstrip("/")) + 1:])
        return None

    def partitions(self) -> dict[str, str]:
        return {n: self._map(p) for n, p in self._base_parts.items()}

    def partition_configured(self, name: str) -> bool:
        return True                       # in a snapshot, a missing partition is never "not yet made"

    @property
    def store_root(self) -> str:
        """A private directory holding a copy of the snapshot's mailbox list."""
        if self._copy is None:
            src = os.path.join(self._map(self._base_root), "mboxlist")
            self._copy = atend.scratch_dir("ims-snapshot-")
            dst = os.path.join(self._copy, "mboxlist")
            os.mkdir(dst, 0o700)
            for name in ("mailboxes.db", "mailboxes.db-wal"):
                p = os.path.join(src, name)
                if os.path.exists(p):
                    shutil.copyfile(p, os.path.join(dst, name))
        return self._copy

    def snapshot_store_root(self) -> str:
        """Where the store root is in the snapshot (the real one, not the private copy)."""
        return self._map(self._base_root)
