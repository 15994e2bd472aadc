"""Parallel reading for a backup (``imsbackup -j N``): reader threads read and hash the
small message files of a folder ahead of the one thread that writes the archive.

The archive is the same bytes as without them: members are still written one by one
in store order by the writer, and a message whose file a thread could not read (gone,
renamed, not a regular file, an I/O error, bigger than the writer's one-buffer size) is
simply read again by the writer, which then says what is wrong as it always does.
Single-copy links are resolved in archive order by the writer, which proves a later copy
the first copy's inode before it writes a link (an inode number is reused once its file
is gone; docs/format.md §2.6).  A thread takes the identity (asm.archive.fileid) of the
file it read, with its bytes, for any copy that may be a link or the first of them.  A
later copy of an inode, known by its listed (device, inode) to follow one written
already or queued before it, is not read ahead where the filesystem has generation
numbers: the writer links it on its identity without reading it (and reads it itself
when that proof fails).  Elsewhere it is read ahead as any other file, as the writer
compares its bytes.

The threads overlap what releases the GIL: the waits for the disk (a cold cache), the
copies out of the page cache and SHA-256 over the message (hashlib releases it for
buffers above 2 KiB).  Memory stays bounded: at most ``window`` bytes of messages (by
their listed size) and ``4 x jobs`` messages are held ahead of the writer.
"""
from __future__ import annotations

import collections

from asm.archive import fileid
from asm.archive.writer import SMALL, read_small

WINDOW = 8 << 20                    # message bytes read ahead of the writer, at most


class ReadAhead:
    """One folder's messages read ahead, in the order they will be written."""

    def __init__(self, pool, jobs: int, messages: list, written_links=(), ignore_links: bool = False,
                 window: int = WINDOW):
        self._pool = pool
        self._max = 4 * jobs
        self._window = window
        self._todo = collections.deque(messages)
        self._ahead: dict = {}               # id(message) -> (future, size)
        self._queued = collections.deque()   # ids in order
        self._bytes = 0
        self._skip: set = set()              # ids the writer reads (or links) itself
        self._ident: set = set()             # ids whose identity is taken with the bytes
        seen: set = set()
        for m in messages:
            key = None if ignore_links or m.nlink < 2 else (m.dev, m.ino)
            if m.compressed or m.size > SMALL or \
                    (key is not None and (key in written_links or key in seen) and fileid.proves(m.dev)):
                self._skip.add(id(m))
            elif key is not None:
                self._ident.add(id(m))
            if key is not None:
                seen.add(key)
        self._fill()

    def _fill(self) -> None:
        while self._todo and len(self._queued) < self._max:
            m = self._todo[0]
            if id(m) in self._skip:
                self._todo.popleft()
                continue
            if self._queued and self._bytes + m.size > self._window:
                break
            self._todo.popleft()
            self._ahead[id(m)] = (self._pool.submit(read_small, m.path, id(m) in self._ident), m.size)
            self._queued.append(id(m))
            self._bytes += m.size

    def take(self, m):
        """(bytes, sha256 hex, identity or None) of ``m`` read ahead, or None: the
        writer reads it."""
        hit = self._ahead.pop(id(m), None)
        if hit is None:
            self._fill()
            return None
        # the writer goes in order: whatever was queued before m is no longer wanted
        while self._queued and self._queued[0] != id(m):
            gone = self._ahead.pop(self._queued.popleft(), None)
            if gone is not None:
                self._bytes -= gone[1]
        if self._queued:
            self._queued.popleft()
        fut, size = hit
        self._bytes -= size
        self._fill()
        try:
            return fut.result()
        except Exception:  # noqa: BLE001 - the writer reads it again and names the trouble
            return None

    def close(self) -> None:
        for fut, _ in self._ahead.values():
            fut.cancel()
        for fut, _ in self._ahead.values():
            if not fut.cancelled():
                try:
                    fut.result()
                except Exception:  # noqa: BLE001 - not wanted any more
                    pass
        self._ahead.clear()
        self._queued.clear()
        self._todo.clear()


class Readers:
    """The pool of reader threads for one run (none for ``jobs`` 1)."""

    def __init__(self, jobs: int):
        self.jobs = max(1, int(jobs))
        self._pool = None

    def folder(self, messages: list, written_links=(), ignore_links: bool = False) -> ReadAhead | None:
        """The read-ahead of one folder's ``messages``; ``written_links``: the link keys
        the writer holds already (ArchiveWriter.links_written), ``ignore_links``: -i."""
        if self.jobs < 2 or len(messages) < 2:
            return None
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor   # only when there is work
            self._pool = ThreadPoolExecutor(self.jobs, thread_name_prefix="imsbackup-read")
        return ReadAhead(self._pool, self.jobs, messages, written_links, ignore_links)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
