"""The chain journal, ``$IMS_HOME/data/restore-journal.db``: per folder, the archive
restored into it last and what that left (docs/operations.md, "Incremental chains")."""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass

from asm.archive import names


@dataclass(frozen=True)
class JournalRow:
    """What the journal knows of one folder."""

    uidvalidity: int            # the folder's, when the archive was restored into it
    uidnext: int                # ... and its UIDNEXT then
    archive_id: str | None      # the archive restored last
    created: float | None       # when that archive was taken
    since: float | None         # its -d date (None: a full backup)
    mirror: bool                # the folder then held exactly that archive's state


class Journal:
    """The archive last restored into each folder, and whether the folder then held
    exactly that archive's state (``mirror``): only such a folder can continue a chain,
    since continuing one expunges what the next archive does not list."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("""CREATE TABLE IF NOT EXISTS restored (
            user TEXT, folder TEXT, uidvalidity INTEGER, uidnext INTEGER,
            archive_id TEXT, created REAL, since REAL, mirror INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (user, folder))""")

    # names are keys as names.to_db keeps them: any name the filesystem allows, losslessly

    def get(self, user: str, folder: str) -> JournalRow | None:
        row = self.db.execute("SELECT uidvalidity, uidnext, archive_id, created, since, mirror "
                              "FROM restored WHERE user=? AND folder=?",
                              (names.to_db(user), names.to_db(folder))).fetchone()
        if row is None:
            return None
        uidvalidity, uidnext, archive_id, created, since, mirror = row
        return JournalRow(uidvalidity, uidnext, archive_id, created, since, bool(mirror))

    def put(self, user: str, folder: str, uidvalidity: int, uidnext: int, header: dict,
            mirror: bool) -> None:
        self.db.execute("INSERT OR REPLACE INTO restored VALUES (?,?,?,?,?,?,?,?)",
                        (names.to_db(user), names.to_db(folder), uidvalidity, uidnext,
                         header.get("archive_id"), header.get("created"), header.get("since"),
                         int(mirror)))
