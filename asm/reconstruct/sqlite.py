"""Opening a SQLite database only to read it."""
from __future__ import annotations

import os
import urllib.parse


def read_only_uri(path: str) -> str:
    """A ``file:`` URI that opens ``path`` read-only and never creates it.  The path is
    percent-encoded: a folder named ``Archive 50% off`` is the directory
    ``=Archive 50%25 off``, and ``%``, ``?`` and ``#`` mean something in a URI."""
    return "file:" + urllib.parse.quote(os.fsencode(path), safe="/") + "?mode=ro"
