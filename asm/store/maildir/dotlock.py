"""Dotlocks as Dovecot takes them (``dovecot-uidlist.lock``, ``subscriptions.lock``):
a file created next to the one it protects, holding ``<pid>:<host>``; whoever
created it may change the protected file.  A lock whose owner is gone is stale and
may be broken; a held lock is touched now and then so it never looks stale."""
from __future__ import annotations

import contextlib
import errno
import os
import threading
import time

from asm.locks import pid_alive
from asm.store.base import LockTimeout

LOCK_SUFFIX = ".lock"
STALE_LOCK_SECS = 120          # Dovecot's MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT
TOUCH_LOCK_SECS = 30           # refresh held locks well before they look stale


class Unlocked(Exception):
    """The dotlock cannot be created at all (read-only store): read without it."""


FRESH_SECS = 2                 # a lock this young with no owner written yet is not judged


def owner_of(path: str) -> tuple[int, str] | None:
    """(pid, host) written in a lock file, or None when it holds no such line."""
    try:
        with open(path, "rb") as f:
            text = f.read(512).decode("utf-8", "replace").strip()
    except OSError:
        return None
    pid_s, sep, host = text.partition(":")
    if not sep or not pid_s.isdigit():
        return None
    return int(pid_s), host


def lock_is_stale(path: str, hostname: str) -> bool:
    """A lock may be broken when its owner is a process of this host that no longer
    exists, when it names no owner (an empty file: a writer that died between creating
    and filling it, as old versions could) and is older than FRESH_SECS, or when it is
    older than STALE_LOCK_SECS (its owner touches it while it lives)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    age = time.time() - st.st_mtime
    if age > STALE_LOCK_SECS:
        return True
    owner = owner_of(path)
    if owner is None:
        return age > FRESH_SECS
    pid, host = owner
    if host not in (hostname, os.uname().nodename, os.uname().nodename.split(".")[0]):
        return False
    return not pid_alive(pid)


def written_lock_is_stale(path: str, protected: str, hostname: str) -> bool:
    """Dovecot's judgement (file-dotlock.c check_lock) of a lock taken with
    file_dotlock_open, as the acl plugin takes ``dovecot-acl.lock``: the lock file
    holds the new file being written, not its owner, so it is stale only when neither
    it nor the file it protects changed for STALE_LOCK_SECS (Dovecot's stale_timeout
    there, 120 s).  One that names a process of this host (ours) is stale when that
    process is gone, as Dovecot judges it too."""
    owner = owner_of(path)
    if owner is not None and owner[1] in (hostname, os.uname().nodename, os.uname().nodename.split(".")[0]):
        return not pid_alive(owner[0])
    newest = 0.0
    for p in (path, protected):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            if p == path:
                return True
            continue
        newest = max(newest, st.st_mtime, st.st_ctime)
    return time.time() - newest > STALE_LOCK_SECS


def _temp_name(path: str, pid: int, hostname: str) -> str:
    d, base = os.path.split(path)
    return os.path.join(d, f".temp.{hostname}.{pid}.{os.urandom(4).hex()}.{base}")


def acquire(path: str, timeout: float, what: str, pid: int, hostname: str, chown=None,
            stale=None) -> None:
    """Create the dotlock ``path`` as Dovecot does (a temporary file holding
    ``<pid>:<host>`` hard-linked to the lock name, so the lock never exists without its
    owner), waiting up to ``timeout`` seconds (LockTimeout); :class:`Unlocked` when it
    cannot be created at all (a read-only store).  ``chown(fd)`` gives the lock file to
    the store's owner.  ``stale(path)`` judges a lock held by another (default
    :func:`lock_is_stale`)."""
    if stale is None:
        def stale(p):
            return lock_is_stale(p, hostname)
    deadline = time.monotonic() + timeout
    delay = 0.001
    tmp = _temp_name(path, pid, hostname)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        if isinstance(exc, PermissionError) or exc.errno in (errno.EROFS, errno.EACCES):
            raise Unlocked() from exc
        raise
    got = False
    try:
        try:
            try:
                data = f"{pid}:{hostname}".encode()
                try:
                    written = os.write(fd, data)
                except OSError as exc:
                    # (a full disk: named, not "No space left on device: free space there")
                    raise OSError(exc.errno, exc.strerror, path) from None
                if written != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
                if chown is not None:
                    chown(fd)
            finally:
                os.close(fd)
            while True:
                try:
                    os.link(tmp, path)
                    got = True
                    return
                except FileExistsError:
                    pass
                if stale(path):
                    break_lock(path, hostname)
                    continue
                if time.monotonic() >= deadline:
                    raise LockTimeout(what, path) from None
                # short polls: writers release the lock between operations for only
                # a moment, and a waiter that sleeps long would starve behind them
                import random               # only while waiting for the lock (startup time)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.01)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    except BaseException:
        # a Ctrl-C once the lock was made (as its temporary is removed): the caller never
        # learns it holds it, so it goes here.  Kept, it named this live process, and a
        # dbox restore's doveadm waited for it for ever as the run stopped.
        if got or _same_file(tmp, path):
            release(path)
        raise


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def clean_temps(directory: str, hostname: str) -> None:
    """Remove lock temporaries (``.temp.<host>.<pid>.*``) of dead processes of this host."""
    prefix = f".temp.{hostname}."
    try:
        names = [n for n in os.listdir(directory) if n.startswith(prefix)]
    except OSError:
        return
    for n in names:
        pid_s = n[len(prefix):].partition(".")[0]
        if pid_s.isdigit() and not pid_alive(int(pid_s)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, n))


def release(path: str) -> None:
    """Remove our lock.  A lock that cannot be removed (the disk failed under it) is
    left to be judged stale: it names this process, which is about to end.  A Ctrl-C
    (KeyboardInterrupt) arriving as it is removed does not keep it: the lock goes, then
    the interrupt goes on.  (Kept, it named this live process, so the doveadm that gives
    a dbox restore's finished folders back as the run stops waited for it for ever.)"""
    try:
        with contextlib.suppress(OSError):
            os.unlink(path)
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def break_lock(path: str, hostname: str) -> None:
    """Remove a stale lock, but only the one we judged (not a fresh one since).  It is
    renamed aside first, to a lock temporary's name (``.temp.<host>.<pid>.…``), so a
    process killed before the unlink leaves a name :func:`clean_temps` removes the next
    time the folder is written."""
    try:
        before = os.stat(path)
        stale_name = _temp_name(path, os.getpid(), hostname) + ".stale"
        os.rename(path, stale_name)
        after = os.stat(stale_name)
        if (after.st_ino, after.st_mtime_ns) != (before.st_ino, before.st_mtime_ns):
            # someone took the lock in between: put theirs back if we can
            try:
                os.link(stale_name, path)
            except FileExistsError:
                pass
        os.unlink(stale_name)
    except FileNotFoundError:
        pass


class Toucher:
    """A daemon thread that touches the locks ``held()`` returns every TOUCH_LOCK_SECS;
    it ends when there are none."""

    def __init__(self, held, mutex):
        self._held = held              # () -> list of objects with .lockpath and .touched
        self._mutex = mutex
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.wait(TOUCH_LOCK_SECS / 3):
            with self._mutex:
                held = self._held()
                if not held:
                    self._thread = None
                    return
            now = time.time()
            for h in held:
                if now - h.touched >= TOUCH_LOCK_SECS:
                    with contextlib.suppress(OSError):
                        os.utime(h.lockpath)
                    h.touched = now

    def start(self) -> None:
        """Call with the mutex held."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="maildir-lock-toucher")
            self._thread.start()
