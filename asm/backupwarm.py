"""Cold-cache read-ahead for a full backup: a child process goes ahead of the backup
through the folders it will read, in its order, and asks the kernel for their files.

On a cold cache a backup waits for the disk at every step: a folder's directories
listed, each file's inode, its data.  GNU tar waits the same way, one step after
another; ims-asm also spends CPU on every message (headers, digests), and without
read-ahead that CPU time adds to the waits.  The child takes the waits instead: it
lists the directories the store names (``Store.readahead``), opens each file (the
inode is read), asks for its data with ``posix_fadvise(WILLNEED)`` (queued to the disk
in the background) and closes it.  The backup then finds what it reads in the page
cache, and its CPU time overlaps the disk's.

It never changes what the backup reads or writes: every error is ignored (the backup
meets the same file and says what is wrong), and nothing it asks for comes into either
process.  The page cache it fills is bounded: it stays at most ``window`` bytes (file
sizes as listed) ahead of the backup's position, which the backup reports through a
pipe with :meth:`Warmer.enter` (a new folder) and :meth:`Warmer.took` (a message's
size).  It skips folders the backup has passed.  On a warm cache it costs an open, a
call and a close per file on another core (the backup's own per-message read-ahead,
which did the same in the backup's process, is not used while it runs).
``backup.readahead no`` turns it off; incrementals never use it.
"""
from __future__ import annotations

import os
import re

from asm.errors import EXIT_OK

WINDOW = 64 << 20               # bytes asked for ahead of the backup, at most
START_AFTER = 16 << 20          # bytes the backup takes before the read-ahead begins
                                # (IMS_READAHEAD_AFTER, in bytes, for tests: 0 from the start)
_POLL = 0.005                   # seconds between looks while the window is full
SORT_MAX = 65536                # entries of one directory sorted by name, at most

_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)
_OPEN = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | \
    getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


class Plan:
    """Where a whole read of one folder looks (``Store.readahead``): ``files`` read
    whole; the regular files of each of ``dirs``, and of their subdirectories whose
    names ``descend`` (a regular expression, matched whole) names."""

    __slots__ = ("files", "dirs", "descend")

    def __init__(self, files=(), dirs=(), descend: str | None = None):
        self.files = list(files)
        self.dirs = list(dirs)
        self.descend = re.compile(descend).fullmatch if descend else None


def available() -> bool:
    return _WILLNEED is not None and hasattr(os, "fork")


class Warmer:
    """The read-ahead over ``plans`` (one per folder, in the backup's order; None: a
    folder the store says nothing about), in a child process of its own.

    A process, not a thread: a thread waits for the interpreter's lock after each of
    its system calls while the backup computes, and so fell behind the backup it should
    run ahead of (measured on a cold cache: a thread stayed 0-13 MiB ahead and the
    backup was no quicker; with this process a cold backup takes about 30% less time,
    bench/bench_readahead.py).  The child is forked (nothing is started anew), its
    standard streams point at /dev/null, it keeps none of the backup's other
    descriptors, it makes only the file system calls below, and it ends when the backup
    closes the pipe that tells it the backup's position (or dies: the pipe's end is the
    same to it)."""

    def __init__(self, plans: list, window: int = WINDOW, after: int | None = None):
        if after is None:
            try:
                after = int(os.environ.get("IMS_READAHEAD_AFTER") or START_AFTER)
            except ValueError:
                after = START_AFTER
        self._plans, self._window, self._after = plans, window, after
        self._pid = None
        self._w = -1
        self._started = False
        self._i = -1
        self._bytes = 0                      # bytes taken in the folder of plan _i
        self._sent = 0                       # ... when the position was last sent
        self._total = 0                      # bytes taken in all

    def _start(self) -> None:
        """Fork the child (once the backup has taken ``after`` bytes: a small backup
        would pay more for the fork, its pages copied as the backup writes them, than
        it could win)."""
        self._started = True
        global _POS
        if _POS is None:                     # imported here: a small backup never needs it
            import struct
            _POS = struct.Struct("=qq")
        r, w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            return                           # no read-ahead: the backup goes on without
        if pid == 0:                         # the child: its status is not looked at
            try:
                os.close(w)
                _child(self._plans, self._window, r, self._i, self._bytes)
            except BaseException:  # noqa: BLE001 - read-ahead only, never a word
                pass
            finally:
                try:                         # gone only when the backup is: it never
                    os.set_blocking(r, True) # writes into a pipe nobody reads
                    while os.read(r, 4096):
                        pass
                finally:
                    os._exit(EXIT_OK)
        os.close(r)
        os.set_blocking(w, False)            # a full pipe drops a position: the next says all
        self._pid, self._w = pid, w
        self._send()

    # -- the backup's side --------------------------------------------------------------

    @property
    def running(self) -> bool:
        """The child reads ahead (the backup need not ask for files itself)."""
        return self._w >= 0

    def enter(self, i: int) -> None:
        """The backup begins the folder of plan ``i``."""
        self._total += self._bytes - self._sent
        self._i, self._bytes, self._sent = i, 0, 0
        self._moved()

    def took(self, size: int) -> None:
        """The backup took a message of ``size`` bytes."""
        self._bytes += size
        if self._bytes - self._sent >= _SEND_EVERY:
            self._total += self._bytes - self._sent
            self._sent = self._bytes
            self._moved()

    def _moved(self) -> None:
        """Tell the child where the backup is, or fork it once the backup is far enough."""
        if self._started:
            self._send()
        elif self._total >= self._after:
            self._start()

    def _send(self) -> None:
        if self._w < 0:
            return
        try:
            os.write(self._w, _POS.pack(self._i, self._bytes))
        except BlockingIOError:
            pass
        except OSError:                      # the child is gone
            os.close(self._w)
            self._w = -1

    def close(self) -> None:
        if self._w >= 0:
            os.close(self._w)
            self._w = -1
        if self._pid is not None:
            pid, self._pid = self._pid, None
            _reap(pid)


def _reap(pid: int, grace: float = 2.0) -> None:
    """Wait for the child, which ends when its pipe closes; one that does not (stopped,
    or blocked on a hung mount) is killed after ``grace`` seconds, and one the kill
    cannot end at once is left to init: the read-ahead is only advice, and never holds
    the backup."""
    import signal
    import time
    deadline, killed = time.monotonic() + grace, False
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        if time.monotonic() >= deadline:
            if killed:
                return
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            deadline, killed = time.monotonic() + grace, True
        time.sleep(0.005)


_POS = None                              # struct "=qq": (plan, bytes taken in it), as sent
_SEND_EVERY = 1 << 20                    # the backup's position sent every MiB inside a folder


def _child(plans: list, window: int, r: int, i: int, taken: int) -> None:
    """The read-ahead, in the forked child: nothing of the backup's kept but the pipe."""
    import signal
    for sig in ("SIGINT", "SIGTERM", "SIGHUP", "SIGPIPE", "SIGQUIT"):
        if hasattr(signal, sig):
            signal.signal(getattr(signal, sig), signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    # the archive, locks, sockets: the backup's alone (a lock held through a copy of its
    # descriptor here would outlive the backup by as long as this takes to notice)
    os.closerange(3, r)
    os.closerange(r + 1, os.sysconf("SC_OPEN_MAX"))
    os.set_blocking(r, False)
    pos = _Position(r, len(plans))
    pos.i, pos.taken = i, taken
    walk(plans, window, pos, willneed)


def walk(plans: list, window: int, pos, ask) -> None:
    """Ask for every file of ``plans`` in order with ``ask(path) -> size``, staying at
    most ``window`` bytes (plus one file) ahead of the backup's position ``pos``
    (:class:`_Position`: ``read()``, ``wait()``, ``ahead(asked)``, ``i``, ``done``);
    folders the backup has passed are skipped, the rest of one it passes is left."""
    asked = 0
    for i, plan in enumerate(plans):
        pos.read()
        if pos.done:
            return
        if i < pos.i:
            continue                         # the backup is past it
        pos.start[i] = asked
        if plan is None:
            continue                         # nothing to ask for
        for path in plan.files:
            ask(path)
        for d in plan.dirs:
            for path in _listing(d, plan.descend):
                while True:
                    pos.read()
                    if pos.done or pos.i > i or pos.ahead(asked) <= window:
                        break
                    pos.wait()
                if pos.done:
                    return
                if pos.i > i:
                    break
                asked += ask(path)
            else:
                continue
            break


class _Position:
    """The backup's position as the child last heard it."""

    def __init__(self, r: int, n: int):
        self.r = r
        self.i = -1
        self.taken = 0
        self.done = False
        self.start: list = [None] * n     # bytes asked for when the child began plan i
        self._buf = b""

    def read(self) -> None:
        while True:
            try:
                got = os.read(self.r, 4096)
            except BlockingIOError:
                return
            if not got:
                self.done = True             # the backup closed the pipe (or died)
                return
            buf = self._buf + got
            n = len(buf) // _POS.size * _POS.size
            if n:
                self.i, self.taken = _POS.unpack_from(buf, n - _POS.size)
            self._buf = buf[n:]

    def wait(self) -> None:
        import select
        select.select([self.r], [], [], _POLL)

    def ahead(self, asked: int) -> int:
        """Bytes asked for ahead of the backup (0 or less: not ahead)."""
        if self.i < 0:
            return asked
        start = self.start[self.i]
        if start is None:
            start = asked - self.taken       # not there yet: behind the backup
        return asked - start - self.taken


def _listing(d: str, descend):
    """The regular files of ``d`` (and of the subdirectories ``descend`` names), by
    name: close to the order a folder is read in (Maildir names begin with the delivery
    time; classic names are UIDs).  A directory of more than SORT_MAX entries is given
    in the order the file system lists it, never held whole: the child's memory stays
    bounded whatever the folder's size."""
    try:
        it = os.scandir(d)
    except OSError:
        return
    with it:
        first: list = []
        try:
            for e in it:
                first.append(e)
                if len(first) > SORT_MAX:
                    break
            else:
                first.sort(key=_key)
        except OSError:
            pass
        for e in first:
            yield from _entry(e, descend)
        first = []
        try:
            for e in it:                     # past SORT_MAX: the rest as listed
                yield from _entry(e, descend)
        except OSError:
            return


def _entry(e, descend):
    try:
        if e.is_file(follow_symlinks=False):
            yield e.path
        elif descend is not None and descend(e.name) and e.is_dir(follow_symlinks=False):
            yield from _listing(e.path, None)
    except OSError:
        pass


def willneed(path: str) -> int:
    """Ask the kernel for one file's data (posix_fadvise WILLNEED: read in the
    background); its size (none when it cannot be opened or asked for)."""
    size = 0
    if _WILLNEED is None:
        return size
    try:
        fd = os.open(path, _OPEN)
    except OSError:
        return size
    try:
        size = os.fstat(fd).st_size
        os.posix_fadvise(fd, 0, 0, _WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)
    return size


def _key(entry) -> tuple:
    """Numbers in order whatever their width (classic's UIDs and hash directories,
    Maildir's delivery times): by the length of the part before the first dot, then by
    name."""
    name = entry.name
    return (len(name.partition(".")[0]), name)
