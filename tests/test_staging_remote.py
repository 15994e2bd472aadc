"""imsstage with a media server over SSH (a real OpenSSH server on 127.0.0.1): every
completed dump pushed and recorded, fetched back after the local copies are gone and a
user restored from the fetched chain; a refused host key, a full far disk and the
retry with ``imsstage push``."""
from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest

from asm.config import Config
from asm.store import open_store
from staging.catalog import Catalog
from tests.helpers import (
    build, change_mail, free_port, imsstage, rows, sha256, sized_store, staged_files, user_view,
)

PLUGINS = "classic,maildir,localdevices,ssh"
REMOTE_NAME = "dumps ä; 50% 'q'"        # spaces, quotes, %, ; and Unicode in the remote directory


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("IMS_ASM_PLUGINS", PLUGINS)
    monkeypatch.setenv("HOME", str(tmp_path))        # never the developer's ~/.ssh keys
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def configure(home, sshd, remote: str | None = None, knownhosts: str | None = None) -> None:
    cfg = Config(str(home))
    cfg.set("ssh.identity", sshd.client_key)
    cfg.set("ssh.knownhosts", knownhosts or sshd.known_hosts)
    cfg.set("ssh.timeout", "10")
    if remote is not None:
        cfg.set("staging.remote", sshd.spec(remote))


def one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


def far_path(d: dict) -> str:
    """The path on the media server of a pushed dump (its device string's path)."""
    prefix = d["remote"].split(":", 2)
    return prefix[2]


def test_push_fetch_back_and_restore_from_remote_chain(ims_home, driver, sshd, tmp_path):
    store = build(ims_home, driver)
    remote = sshd.remote_dir(f"{REMOTE_NAME} {driver}")
    configure(ims_home, sshd, remote)
    st = tmp_path / "stage"
    r = imsstage(ims_home, "-D", str(st), "-j", "2", "-v", check=0)
    assert "4 of 4 dumps staged" in r.stderr and "4 pushed to" in r.stderr
    change_mail(store, ["bob", "alice"])
    r = imsstage(ims_home, "-D", str(st), "--incremental", "-v", check=0)
    assert "4 pushed to" in r.stderr
    dumps = rows(st)
    assert [(d["kind"], d["status"], d["push"]) for d in dumps] == [("full", "complete", "ok")] * 4 + \
        [("incr", "complete", "ok")] * 4
    # every pushed copy is complete, byte for byte, verified on the far side, under its own name
    for d in dumps:
        assert d["remote"] == sshd.spec(os.path.join(remote, d["file"]))
        assert d["push_verified"] == "sha256" and d["push_error"] is None
        assert d["finished"] <= d["pushed"]
        assert os.path.getsize(far_path(d)) == d["size"] and sha256(far_path(d)) == d["sha256"]
    assert sorted(os.listdir(remote)) == sorted(d["file"] for d in dumps)     # no temporary names left
    listing = imsstage(ims_home, "list", "-D", str(st), check=0).stdout
    assert listing.count(f"\tpushed {sshd.spec(remote)}") == 8

    # the local copies go (the engine saved them, or the disk was lost) ...
    want = user_view(store, "bob")
    assert want
    for f in staged_files(st):
        os.unlink(st / f)
    r = imsstage(ims_home, "locate", "-D", str(st), "/primary/user/bob", check=0)
    chain = [ln for ln in r.stdout.splitlines() if ln.startswith("  ")]
    assert len(chain) == 2 and "full" in chain[0] and "incr" in chain[1]
    assert all(f"not here: pushed to {sshd.spec(remote)}" in ln for ln in chain)
    # ... and the user is restored from the chain fetched back from the media server
    store.delete_user("bob")
    r = imsstage(ims_home, "restore", "-D", str(st), "-v", "/primary/user/bob", check=0)
    assert r.stderr.count("imsstage: fetched ") == 2 and r.stderr.count("restoring /primary/user/bob") == 2
    assert user_view(open_store(Config(str(ims_home))), "bob") == want      # UIDs, flags, bytes
    assert staged_files(st) == []                        # fetched copies removed after the restore

    # fetch alone keeps them, checked against the catalog's digest
    back = tmp_path / "back"
    r = imsstage(ims_home, "fetch", "-D", str(st), "--into", str(back), "alice", check=0)
    alice = [d for d in dumps if d["grp"] == "gA"]
    assert sorted(os.listdir(back)) == sorted(d["file"] for d in alice)
    for d in alice:
        assert sha256(back / d["file"]) == d["sha256"]
    # a copy changed on the far side is refused, and nothing is left in its place
    d = alice[0]
    with open(far_path(d), "r+b") as f:
        f.seek(3000)
        f.write(b"X")
    os.unlink(back / d["file"])
    r = imsstage(ims_home, "fetch", "-D", str(st), "--into", str(back), "alice")
    assert r.returncode == 3, r.stderr
    line = one_line(r.stderr)
    assert f"cannot fetch {d['file']}" in line and "expected " + d["sha256"] in line
    assert sorted(os.listdir(back)) == [alice[1]["file"]]


def test_unknown_host_key_refused_and_push_retried(ims_home, sshd, tmp_path):
    build(ims_home, "classic", users=8, messages=40)
    remote = sshd.remote_dir("hostkey")
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    configure(ims_home, sshd, remote, knownhosts=str(empty))
    st = tmp_path / "stage"
    r = imsstage(ims_home, "-D", str(st), "gA", "gB")
    assert r.returncode == 11, r.stderr
    line = one_line(r.stderr)
    assert "2 of 2 dump(s) not pushed" in line and "host key of [127.0.0.1]" in line
    assert "ssh-keyscan" in line and "'imsstage push' retries" in line
    assert os.listdir(remote) == []                      # nothing written on the far side
    dumps = rows(st)
    assert [(d["status"], d["push"]) for d in dumps] == [("complete", "failed")] * 2
    assert all("is not known" in d["push_error"] and d["remote"] is None for d in dumps)
    for d in dumps:                                      # the staged files stay, intact
        assert sha256(st / d["file"]) == d["sha256"]
    # the host key accepted: 'imsstage push' sends exactly the failed ones
    Config(str(ims_home)).set("ssh.knownhosts", sshd.known_hosts)
    r = imsstage(ims_home, "push", "-D", str(st), "-v", check=0)
    assert "2 dump(s) pushed, 0 failed" in r.stderr
    dumps = rows(st)
    assert [d["push"] for d in dumps] == ["ok", "ok"] and all(d["push_error"] is None for d in dumps)
    assert sorted(os.listdir(remote)) == sorted(d["file"] for d in dumps)
    for d in dumps:
        assert sha256(far_path(d)) == d["sha256"]
    r = imsstage(ims_home, "push", "-D", str(st), "-v", check=0)      # nothing left to do
    assert "0 dump(s) pushed, 0 failed" in r.stderr


def test_connection_refused_and_bad_remote(ims_home, sshd, tmp_path):
    build(ims_home, "classic", users=8, messages=40)
    configure(ims_home, sshd)
    st = tmp_path / "stage"
    r = imsstage(ims_home, "-D", str(st), "--push", f"imsbk@127.0.0.1:{free_port()}:/srv/dumps", "gA")
    assert r.returncode == 10 and "Connection refused" in one_line(r.stderr)
    assert rows(st)[0]["push"] == "failed" and staged_files(st) == [rows(st)[0]["file"]]
    # a remote directory that does not exist: nothing is written under its name
    missing = sshd.remote_dir("parent") + "/nosuch"
    r = imsstage(ims_home, "push", "-D", str(st), "--to", sshd.spec(missing))
    assert r.returncode == 3 and "does not exist" in one_line(r.stderr)
    assert not os.path.exists(missing)
    r = imsstage(ims_home, "-D", str(st), "--push", "/not/remote", "gA")
    assert r.returncode == 2 and "bad --push" in one_line(r.stderr) and len(rows(st)) == 1


def test_far_disk_full(ims_home, sshd, tmp_path):
    sized_store(ims_home, {"ga": (1, 6, 50_000), "gb": (2, 10, 60_000)})     # ~0.3 MB and ~1.2 MB
    configure(ims_home, sshd)
    try:
        small = sshd.remote_dir("small", tmpfs_size="1m")
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test (needs root): {exc.stderr}")
    st = tmp_path / "stage"
    r = imsstage(ims_home, "-D", str(st), "--push", sshd.spec(small))
    assert r.returncode == 13, r.stderr
    line = one_line(r.stderr)
    assert "not pushed" in line and "no space left" in line and "'imsstage push' retries" in line
    dumps = {d["grp"]: d for d in rows(st)}
    assert dumps["gb"]["push"] == "failed" and "no space left" in dumps["gb"]["push_error"]
    assert all(d["status"] == "complete" for d in dumps.values())
    # nothing incomplete on the far side: only copies the catalog calls pushed, and whole
    assert sorted(os.listdir(small)) == sorted(d["file"] for d in dumps.values() if d["push"] == "ok")
    for d in dumps.values():
        assert sha256(st / d["file"]) == d["sha256"]          # the local files stay
        if d["push"] == "ok":
            assert sha256(far_path(d)) == d["sha256"]
    # retried to a roomier directory: only the failed ones go
    big = sshd.remote_dir("big")
    imsstage(ims_home, "push", "-D", str(st), "--to", sshd.spec(big), check=0)
    after = {d["grp"]: d for d in rows(st)}
    assert all(d["push"] == "ok" for d in after.values())
    assert sorted(os.listdir(big)) == sorted(d["file"] for d in dumps.values() if d["push"] == "failed")
    assert sha256(far_path(after["gb"])) == after["gb"]["sha256"] and far_path(after["gb"]).startswith(big)


def test_ssh_plugin_not_allowed(ims_home, tmp_path, monkeypatch):
    build(ims_home, "classic", users=4, messages=20)
    Config(str(ims_home)).set("staging.remote", "bk@media:/dumps")
    monkeypatch.setenv("IMS_ASM_PLUGINS", "classic,localdevices")
    st = tmp_path / "stage"
    r = imsstage(ims_home, "-D", str(st))
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert "needs the ssh plugin" in line and "IMS_ASM_PLUGINS=classic,localdevices" in line
    assert not os.path.exists(st / "catalog.db") or rows(st) == []
    imsstage(ims_home, "-D", str(st), "--no-push", check=0)    # staging alone still works
    assert [d["push"] for d in rows(st)] == [None]


OLD_SCHEMA = """
CREATE TABLE dumps (id INTEGER PRIMARY KEY, run TEXT NOT NULL, partition TEXT NOT NULL, grp TEXT NOT NULL,
    kind TEXT NOT NULL, since REAL, base INTEGER, started REAL NOT NULL, finished REAL, file TEXT NOT NULL,
    estimate INTEGER, size INTEGER, sha256 TEXT, status TEXT NOT NULL, error TEXT, pid INTEGER, job TEXT,
    engine TEXT, engine_status INTEGER, reported REAL, removed REAL);
CREATE TABLE dump_users (dump INTEGER NOT NULL REFERENCES dumps(id), user TEXT NOT NULL);
INSERT INTO dumps VALUES (1, 'r1', 'primary', 'gA', 'full', NULL, NULL, 1700000000, 1700000010,
    'primary-gA-old-full-1.ims', 100, 90, 'ab', 'complete', NULL, 1, NULL, 'ok', 0, 1700000020, NULL);
INSERT INTO dump_users VALUES (1, 'alice');
"""


def test_catalog_from_before_push_columns(tmp_path):
    """A catalog written before remote copies existed opens, gains the columns, keeps its rows."""
    db = sqlite3.connect(tmp_path / "catalog.db")
    db.executescript(OLD_SCHEMA)
    db.close()
    cat = Catalog(str(tmp_path))
    try:
        d = cat.get(1)
        assert (d.file, d.engine, d.push, d.remote) == ("primary-gA-old-full-1.ims", "ok", None, None)
        assert [x.id for x in cat.unpushed()] == [1] and cat.users(1) == ["alice"]
        cat.push_ok(1, "bk@media:/dumps/primary-gA-old-full-1.ims", "size")
        assert (cat.get(1).push, cat.get(1).push_verified) == ("ok", "size") and cat.unpushed() == []
    finally:
        cat.close()
    Catalog(str(tmp_path)).close()                           # a second open changes nothing
    cols = [r[1] for r in sqlite3.connect(tmp_path / "catalog.db").execute("PRAGMA table_info(dumps)")]
    assert cols[-7:] == ["remote", "push", "push_verified", "pushed", "push_error", "remote_until",
                         "remote_removed"] and len(cols) == 28
