"""Text files read line by line in bounded memory (lists of names, map files)."""
from __future__ import annotations

from asm.errors import UsageError

#: the longest line a list or map file may hold (a name is at most a few hundred bytes):
#: a file with no line break (/dev/zero, a binary given by mistake) was read whole
LINE_LIMIT = 64 << 10


def bounded_lines(f, path: str, what: str, error=None):
    """The lines of the text file ``f``, each at most LINE_LIMIT characters: a longer one
    is ``error`` (default UsageError), naming the file and line, not a MemoryError."""
    n = 0
    while True:
        line = f.readline(LINE_LIMIT + 1)
        if not line:
            return
        n += 1
        if len(line) > LINE_LIMIT and not line.endswith("\n"):
            raise (error or UsageError)(f"{path}:{n}: a line longer than {LINE_LIMIT // 1024} KiB: not {what}")
        yield line
