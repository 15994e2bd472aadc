"""Helpers shared by the command-line tests: run a command as a user would, and
compare stores message by message."""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys

import pytest

from asm.store.base import Store

MSG = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: %s\r\n\r\nbody %s\r\n"


def run(home, *argv, input=None, env=None, check=None):
    """Run ``python -m asm.cli.<cmd> args`` with IMS_HOME=home; returns CompletedProcess."""
    cmd, *args = argv
    e = dict(os.environ, IMS_HOME=str(home))
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", f"asm.cli.{cmd}", *map(str, args)], env=e,
                       input=input, capture_output=True)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stderr.decode(errors="replace"))
    return p


def msg(n, size=0) -> bytes:
    body = MSG % (str(n).encode(), str(n).encode())
    return body + b"x" * size


def put(store: Store, user: str, folder: str, n: int, **kw):
    if not store.exists(user):
        store.create_user(user)
    if not store.exists(user, folder):
        store.create_folder(user, folder, subscribed=True)
    return store.append(user, folder, io.BytesIO(msg(n, kw.pop("size", 0))), **kw)


def state(store: Store, users=None) -> dict:
    """What a client sees: per folder (uidvalidity, uidnext, subscribed) and per message
    (sha256, flags, keywords, int internaldate)."""
    out = {}
    for part in store.partitions():
        for user in store.users(part):
            if users is not None and user not in users:
                continue
            for f in store.folders(user):
                out[(user, f.name)] = (f.uidvalidity, f.uidnext, f.subscribed)
                for m in store.messages(user, f.name):
                    with open(m.path, "rb") as fh:
                        digest = hashlib.sha256(fh.read()).hexdigest()
                    out[(user, f.name, m.uid)] = (digest, tuple(sorted(m.flags)), tuple(sorted(m.keywords)),
                                                  int(m.internaldate))
    return out


def inode_groups(store: Store) -> list:
    groups: dict = {}
    for part in store.partitions():
        for user in store.users(part):
            for f in store.folders(user):
                for m in store.messages(user, f.name):
                    groups.setdefault((m.dev, m.ino), []).append((user, f.name, m.uid))
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


@contextlib.contextmanager
def small_tmpfs(path, size: str):
    """A tmpfs of ``size`` mounted on ``path`` (created) for full-disk tests; it fails
    under CI=true when it cannot be mounted (CI runs as root) and skips elsewhere.
    Detached lazily, so a file still open in the test process cannot leave it behind."""
    os.makedirs(path, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("cannot mount a small tmpfs (the test runs as root in CI)")
        pytest.skip("cannot mount tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])
