"""Opening an installation for a command: configuration, groups and store together."""
from __future__ import annotations

from asm.config import Config
from asm.groups import Groups
from asm.store import open_store
from asm.store.base import Store


class Installation:
    """A command's installation: its configuration, groups and store.  (A plain class,
    not a dataclass: every command builds this module's classes at start.)"""

    __slots__ = ("config", "groups", "store")

    def __init__(self, config: Config, groups: Groups, store: Store):
        self.config, self.groups, self.store = config, groups, store


def open_installation(home: str | None = None, create: bool = False,
                      snapshot: list[str] | None = None, groups: bool = True) -> Installation:
    """Raises ConfigError, GroupsError or StoreError with a one-line message.

    IMS_HOME must be an existing installation (only ``msconfig set`` makes one).
    ``groups=False``: backup-groups.conf is not read (imsdeliver, which never uses it).
    Commands that write a store pass ``create`` (imsrestore, ``mboxutil -c``, the
    engines' recover commands): they may make the store's directories and mailbox list
    inside it.  Every other command makes nothing (docs/configuration.md, "Which
    commands create what").
    """
    cfg = Config(home)
    cfg.require()
    # ``groups`` False: a command that never uses backup groups (imsdeliver) is not stopped
    # by a mistake in backup-groups.conf, a backup setting: mail must still be delivered
    groups = Groups.load(cfg.groups_path) if groups else Groups()
    if snapshot:
        # --snapshot SNAP=LIVE: read the store's directories under snapshot mounts (asm/dr/snapshot.py)
        from asm.dr.snapshot import SnapshotConfig, parse_snapshot
        cfg = SnapshotConfig(cfg, [parse_snapshot(s) for s in snapshot])
        create = False
    return Installation(cfg, groups, open_store(cfg, create=create))
