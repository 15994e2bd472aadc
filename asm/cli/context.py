"""Opening an installation for a command: configuration, groups and store together."""
from __future__ import annotations

from dataclasses import dataclass

from asm.config import Config
from asm.groups import Groups
from asm.store import open_store
from asm.store.base import Store


@dataclass
class Installation:
    config: Config
    groups: Groups
    store: Store


def open_installation(home: str | None = None) -> Installation:
    """Raises ConfigError or GroupsError with a one-line message."""
    cfg = Config(home)
    groups = Groups.load(cfg.groups_path)
    return Installation(cfg, groups, open_store(cfg))
