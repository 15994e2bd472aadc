"""Backups read from a filesystem snapshot (``--snapshot SNAP=LIVE``).

A snapshot is stood for by a copy of the store's filesystem (``cp -a``) bind-mounted
read-only, as a ZFS snapshot always is and an LVM or btrfs one may be: the archive
must hold the store as it was when the snapshot was taken (not as it is live), and
nothing may be written in the snapshot."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess

import pytest

from asm.archive.reader import ArchiveReader
from asm.cli.demo import fingerprint
from asm.config import Config
from asm.demo import build_demo
from asm.store import open_store
from tests.helpers import change_mail, make_home, msg, run, unavailable

EXIT_USAGE = 2


@contextlib.contextmanager
def readonly_snapshot(live, snap):
    """``snap``: a copy of ``live`` as it is now, mounted read-only."""
    subprocess.run(["cp", "-a", str(live), str(snap)], check=True)
    r = subprocess.run(["mount", "--bind", str(snap), str(snap)], capture_output=True, text=True)
    if r.returncode:
        unavailable(f"cannot bind-mount a read-only snapshot (needs root): {r.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(snap)], check=True, capture_output=True)
        yield snap
    finally:
        subprocess.run(["umount", "-l", str(snap)])


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_backup_from_a_read_only_snapshot_is_the_snapshot_instant(tmp_path, driver):
    home = tmp_path / "ims"
    store = open_store(make_home(home, driver))
    build_demo(store, users=4, messages=60, seed=11)
    users = sorted(store.users("primary"))
    store = open_store(Config(str(home)))
    then = fingerprint(store)
    data = home / "data"
    with readonly_snapshot(data, tmp_path / "snap") as snap:
        change_mail(store, users, n=5)                       # the live store moves on
        store.create_folder(users[0], "After")
        now = fingerprint(open_store(Config(str(home))))
        assert now != then
        p = run(home, "imsbackup", "-v", "--snapshot", f"{snap}={data}", "-f", tmp_path / "snap.ims", "/",
                check=0)
        assert "Traceback" not in p.stderr.decode()
        run(home, "imsdr", "backup", "--snapshot", f"{snap}={data}", "-f", tmp_path / "dr.tar", check=0)
        with open(tmp_path / "snap.ims", "rb") as f:
            header = ArchiveReader(f).header
        assert header["options"]["snapshot"] == {str(data): str(snap)}
        m = json.loads(run(home, "imsdr", "show", "--json", "-f", tmp_path / "dr.tar", check=0).stdout)
        assert m["snapshot"] == {str(data): str(snap)}
        assert all(i["source"].startswith(str(snap)) for i in m["items"] if i["kind"] in ("mboxlist", "indexes"))
    # the archive holds the store as it was at the snapshot
    home2 = tmp_path / "ims2"
    make_home(home2, driver)
    run(home2, "imsrestore", "-f", tmp_path / "snap.ims", check=0)
    assert fingerprint(open_store(Config(str(home2)))) == then


def test_every_partition_must_be_under_a_snapshot(tmp_path):
    home = tmp_path / "ims"
    second = tmp_path / "second"
    second.mkdir()
    store = open_store(make_home(home, "classic", **{"partition:second.path": str(second)}))
    store.create_user("joe")
    store.append("joe", "INBOX", io.BytesIO(msg(1)))
    snap = tmp_path / "snap"
    subprocess.run(["cp", "-a", str(home / "data"), str(snap)], check=True)
    p = run(home, "imsbackup", "--snapshot", f"{snap}={home / 'data'}", "-f", tmp_path / "a.ims", "/",
            check=EXIT_USAGE)
    err = p.stderr.decode()
    assert f"partition second ({second})" in err and err.count("\n") == 1
    assert not (tmp_path / "a.ims").exists()
    for bad in ("nosign", f"relative={home}", f"{tmp_path / 'missing'}={home / 'data'}",
                f"{snap}={snap}"):
        p = run(home, "imsbackup", "--snapshot", bad, "-f", tmp_path / "a.ims", "/", check=EXIT_USAGE)
        assert p.stderr.decode().count("\n") == 1 and "--snapshot" in p.stderr.decode()
