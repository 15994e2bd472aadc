"""The staging area with S3 object storage (SeaweedFS on 127.0.0.1): dumps pushed to
s3://bucket/prefix/, fetched back for a restore, remote retention (newest N, daily,
weekly, monthly, chains kept whole) and object lock."""
from __future__ import annotations

import os
import time

import pytest

from asm.config import Config
from staging.catalog import Catalog
from staging.retention import Policy, kept
from tests.helpers import build, change_mail, imsstage, make_home, rows, user_view
from tests.s3server import RO_ACCESS, RO_SECRET, running


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    with running("seaweedfs", str(tmp_path_factory.mktemp("seaweed"))) as srv:
        yield srv


_n = [0]


def area(tmp_path, srv, driver="classic", lock=False, **opts):
    _n[0] += 1
    b = srv.bucket(f"st{os.getpid()}-{_n[0]}", lock=lock)
    home = tmp_path / "home"
    store = build(home, driver, users=12, messages=100)
    cfg = Config(str(home))
    for k, v in {"staging.dir": str(tmp_path / "stage"), "staging.remote": f"s3://{b}/mail/",
                 "s3.retries": "1", "s3.partsize": "5", **opts}.items():
        cfg.set(k, v)
    return home, store, b


def test_push_fetch_and_restore(tmp_path, seaweed, driver):
    """Each dump goes to s3://bucket/mail/NAME, checked, with its SHA-256 as metadata;
    after the local files are cleaned up, imsstage restore fetches the chain back
    (the catalog's digest checked) and every message of the user comes back."""
    home, store, b = area(tmp_path, seaweed, driver)
    imsstage(home, "dump", "-j", "2", check=0, env=seaweed.env())
    users = store.users("primary")
    change_mail(store, users[:3])
    imsstage(home, "dump", "--incremental", "-j", "2", check=0, env=seaweed.env())
    rs = rows(tmp_path / "stage")
    assert rs and all(r["push"] == "ok" and r["push_verified"] == "etag" for r in rs)
    for r in rs:
        key = r["remote"].split("/", 3)[3]
        h = seaweed.client().head_object(Bucket=b, Key=key)
        assert h["ContentLength"] == r["size"] and h["Metadata"]["sha256"] == r["sha256"]
    assert sorted(seaweed.keys(b)) == sorted("mail/" + r["file"] for r in rs)
    want = user_view(store, users[0])
    imsstage(home, "done", "--keep", "0", check=0)
    assert not [n for n in os.listdir(tmp_path / "stage") if n.endswith(".ims")]
    # verify cannot prove a chain it does not have: it says to fetch it (it said only to
    # have the backup engine restore it), and the advice works
    p = imsstage(home, "verify", users[0], env=seaweed.env())
    assert p.returncode == 15 and f"imsstage fetch {users[0]}" in p.stderr, p.stderr
    imsstage(home, "fetch", users[0], check=0, env=seaweed.env())
    imsstage(home, "verify", users[0], check=0, env=seaweed.env())
    imsstage(home, "done", "--keep", "0", check=0)
    dst = tmp_path / "dst"
    make_home(dst, driver)
    for k in ("staging.dir", "staging.remote", "s3.retries"):
        Config(str(dst)).set(k, Config(str(home)).get(k))
    p = imsstage(dst, "restore", "-D", tmp_path / "stage", users[0], env=seaweed.env())
    assert p.returncode == 0, p.stderr
    from asm.store import open_store
    assert user_view(open_store(Config(str(dst))), users[0]) == want


def test_a_remote_copy_that_differs_is_refused(tmp_path, seaweed):
    home, store, b = area(tmp_path, seaweed)
    imsstage(home, "dump", "gA", check=0, env=seaweed.env())
    r = rows(tmp_path / "stage")[0]
    key = r["remote"].split("/", 3)[3]
    data = bytearray(seaweed.get(b, key))
    data[len(data) // 2] ^= 1
    seaweed.client().put_object(Bucket=b, Key=key, Body=bytes(data), Metadata={"sha256": r["sha256"]})
    os.unlink(tmp_path / "stage" / r["file"])
    p = imsstage(home, "fetch", "--into", tmp_path / "back", "alice", env=seaweed.env())
    assert p.returncode == 3 and "expected" in p.stderr and not os.listdir(tmp_path / "back")


def test_retention_keeps_chains_whole(tmp_path, seaweed):
    """keep 1: the newest incremental is kept with its whole chain back to the full;
    after a new full, the old chain's remote copies are removed (the objects are gone,
    the catalog says so) and a restore still finds the new chain."""
    home, store, b = area(tmp_path, seaweed, **{"staging.remote.keep": "1"})
    users = store.users("primary")
    imsstage(home, "dump", "gA", check=0, env=seaweed.env())
    for _ in range(2):
        change_mail(store, users[:2])
        imsstage(home, "dump", "--incremental", "gA", check=0, env=seaweed.env())
    p = imsstage(home, "prune", "-v", check=0, env=seaweed.env())
    assert "0 remote copies removed" in p.stderr and len(seaweed.keys(b)) == 3
    time.sleep(1.1)
    imsstage(home, "dump", "--full", "gA", check=0, env=seaweed.env())
    p = imsstage(home, "prune", "--dry-run", check=0, env=seaweed.env())
    assert "3 remote copies to remove" in p.stderr and len(seaweed.keys(b)) == 4
    imsstage(home, "prune", check=0, env=seaweed.env())
    rs = rows(tmp_path / "stage")
    assert [r["push"] for r in rs] == ["removed", "removed", "removed", "ok"]
    assert seaweed.keys(b) == ["mail/" + rs[-1]["file"]]
    p = imsstage(home, "locate", "alice", check=0)
    assert rs[-1]["file"] in p.stdout and rs[0]["file"] not in p.stdout


def test_retention_periods():
    """daily/weekly/monthly keep the newest dump of each of the last N periods that have
    dumps, per group (borg/restic rules), plus what kept incrementals need."""
    import tempfile
    d = tempfile.mkdtemp()
    cat = Catalog(d)
    day = 86400
    base = time.mktime((2026, 6, 30, 12, 0, 0, 0, 0, -1))
    ids = []
    for i in range(120):                           # one full dump a day, newest first in time
        dump = cat.start("r", "primary", "gA", "full", None, None, ["u"], 1, lambda did, now: f"f{did}.ims")
        cat.finish(dump.id, 1, "0" * 64)
        cat.push_ok(dump.id, f"s3://b/f{dump.id}.ims", "etag")
        cat.db.execute("UPDATE dumps SET started=? WHERE id=?", (base - i * day, dump.id))
        ids.append(dump.id)
    dumps = cat.pushed()
    assert kept(dumps, Policy(keep=2), cat) == set(ids[:2])
    assert kept(dumps, Policy(daily=7), cat) == set(ids[:7])
    weekly = kept(dumps, Policy(weekly=4), cat)
    assert len(weekly) == 4 and ids[0] in weekly
    monthly = kept(dumps, Policy(monthly=3), cat)
    months = sorted({time.strftime("%Y-%m", time.localtime(base - ids.index(i) * day)) for i in monthly})
    assert months == ["2026-04", "2026-05", "2026-06"] and len(monthly) == 3
    both = kept(dumps, Policy(keep=1, daily=3, monthly=3), cat)
    assert both == set(ids[:3]) | monthly
    # an incremental kept keeps its base chain
    inc = cat.start("r", "primary", "gA", "incr", base, ids[50], ["u"], 1, lambda did, now: f"i{did}.ims")
    cat.finish(inc.id, 1, "0" * 64)
    cat.push_ok(inc.id, "s3://b/i.ims", "etag")
    cat.db.execute("UPDATE dumps SET started=? WHERE id=?", (base + day, inc.id))
    assert kept(cat.pushed(), Policy(keep=1), cat) == {inc.id, ids[50]}
    cat.close()


def test_prune_refuses_a_policy_that_keeps_nothing(tmp_path, seaweed):
    """staging.remote.keep 0 (and the other rules 0 or unset) keeps nothing: prune
    refuses it as it refuses no policy at all -- exit 2, one line naming the options,
    every remote copy (the last full included) still there and still pushed in the
    catalog -- instead of deleting every off-site copy and exiting 0."""
    home, store, b = area(tmp_path, seaweed, **{"staging.remote.keep": "0", "staging.remote.keepdaily": "0"})
    users = store.users("primary")
    imsstage(home, "dump", "--full", "gA", check=0, env=seaweed.env())
    change_mail(store, users[:2])
    imsstage(home, "dump", "--incremental", "gA", check=0, env=seaweed.env())
    before = sorted(seaweed.keys(b))
    assert len(before) == 2
    for extra in ((), ("--dry-run",)):
        p = imsstage(home, "prune", "-v", *extra, env=seaweed.env())
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "staging.remote.keep" in lines[0] and "nothing was removed" in lines[0]
        assert "0 of 2" not in p.stderr
    assert sorted(seaweed.keys(b)) == before
    assert [r["push"] for r in rows(tmp_path / "stage")] == ["ok", "ok"]
    Config(str(home)).set("staging.remote.keepweekly", "1")     # one rule above 0: a policy
    p = imsstage(home, "prune", "-v", env=seaweed.env())
    assert p.returncode == 0 and "2 of 2 remote copies kept" in p.stderr, p.stderr
    assert sorted(seaweed.keys(b)) == before


def test_retention_never_removes_the_last_remote_full():
    """Whatever the policy keeps, each group keeps a full remote copy: when the kept
    incremental's own full was never pushed (its push failed), the newest pushed full
    stays, so the remote copies still restore the group."""
    import tempfile
    cat = Catalog(tempfile.mkdtemp())

    def dump(kind, base, started, pushed=True):
        d = cat.start("r", "primary", "gA", kind, None, base, ["u"], 1, lambda did, now: f"f{did}.ims")
        cat.finish(d.id, 1, "0" * 64)
        if pushed:
            cat.push_ok(d.id, f"s3://b/f{d.id}.ims", "etag")
        cat.db.execute("UPDATE dumps SET started=? WHERE id=?", (started, d.id))
        return d.id

    t = time.mktime((2026, 6, 1, 12, 0, 0, 0, 0, -1))
    old_full = dump("full", None, t)
    new_full = dump("full", None, t + 86400, pushed=False)
    incr = dump("incr", new_full, t + 2 * 86400)
    assert old_full in kept(cat.pushed(), Policy(keep=1), cat)
    assert kept(cat.pushed(), Policy(keep=1), cat) & {d.id for d in cat.pushed()} == {incr, old_full}
    from types import SimpleNamespace
    zero = SimpleNamespace(get={"staging.remote.keep": "0", "staging.remote.keepdaily": "0"}.get)
    assert Policy.from_config(zero) is None
    cat.close()


def test_object_lock(tmp_path, seaweed):
    """s3.lockdays: each pushed copy is under object lock; prune keeps a locked copy
    (and says until when) instead of failing; a bucket without object lock is refused
    before anything is sent."""
    home, store, b = area(tmp_path, seaweed, lock=True, **{"s3.lockdays": "1", "staging.remote.keep": "1"})
    imsstage(home, "dump", "gA", check=0, env=seaweed.env())
    time.sleep(1.1)
    imsstage(home, "dump", "gA", check=0, env=seaweed.env())
    rs = rows(tmp_path / "stage")
    assert all(r["remote_until"] and r["remote_until"] > time.time() + 80000 for r in rs)
    key = rs[0]["remote"].split("/", 3)[3]
    r = seaweed.client().get_object_retention(Bucket=b, Key=key)
    assert r["Retention"]["Mode"] == "GOVERNANCE"
    p = imsstage(home, "prune", "-v", check=0, env=seaweed.env())
    assert "object lock" in p.stderr and "1 under object lock" in p.stderr
    assert len(seaweed.keys(b)) == 2 and [x["push"] for x in rows(tmp_path / "stage")] == ["ok", "ok"]
    nolock = seaweed.bucket(f"nl{os.getpid()}")
    cfg = Config(str(home))
    cfg.set("staging.remote", f"s3://{nolock}/x/")
    p = imsstage(home, "dump", "gB", env=seaweed.env())
    assert p.returncode == 2 and "has no object lock" in p.stderr
    assert seaweed.keys(nolock) == []


def test_prune_without_delete_permission_fails(tmp_path, seaweed):
    """Credentials that may read and list but not delete, on a bucket without object lock:
    prune removes nothing, and says so -- counted failed, exit 12 (no permission), one line
    naming the permission to give -- not 'under object lock' and exit 0, which cron would
    take for retention working."""
    home, store, b = area(tmp_path, seaweed, **{"staging.remote.keep": "1"})
    imsstage(home, "dump", "gA", check=0, env=seaweed.env())
    time.sleep(1.1)
    imsstage(home, "dump", "gA", check=0, env=seaweed.env())
    ro = seaweed.env(AWS_ACCESS_KEY_ID=RO_ACCESS, AWS_SECRET_ACCESS_KEY=RO_SECRET)
    p = imsstage(home, "prune", "-v", env=ro)
    assert p.returncode == 12, p.stderr
    assert "0 under object lock, 1 failed" in p.stderr
    line = [x for x in p.stderr.splitlines() if "could not be removed" in x]
    assert len(line) == 1 and "permission to delete" in line[0] and "retention keeps it" not in line[0]
    assert len(seaweed.keys(b)) == 2 and [x["push"] for x in rows(tmp_path / "stage")] == ["ok", "ok"]


@pytest.mark.parametrize("key", ["unlocked/x.ims", "AccessDenied/x.ims"])
def test_a_remove_that_fails_is_told_by_the_servers_answer_not_by_the_names(tmp_path, monkeypatch, key):
    """prune's remove: the server gone between the HEAD and the DELETE (a crash, a cut
    cable) is that failure (S3ConnectFailed: prune counts it failed, with its status) -- also when
    the bucket or the prefix holds "locked" or "AccessDenied".  Read in the error's text,
    which names them, it was "under object lock" (kept, exit 0: retention looked fine)."""
    from plugins.s3 import transfer
    from plugins.s3.errors import S3ConnectFailed, S3Locked
    with running("seaweedfs", str(tmp_path / "srv")) as srv:
        b = srv.bucket(f"st{os.getpid()}-names")
        srv.client().put_object(Bucket=b, Key=key, Body=b"x" * 100)
        for k, v in srv.env(**{"AWS_MAX_ATTEMPTS": "1"}).items():
            if v is None:
                monkeypatch.delenv(k, raising=False)
            else:
                monkeypatch.setenv(k, v)
        real = transfer._delete

        def server_gone(s3, settings, spec, version=None):
            srv.kill()
            return real(s3, settings, spec, version)

        monkeypatch.setattr(transfer, "_delete", server_gone)
        cfg = make_home(tmp_path / "home", "classic", **{"s3.retries": "0", "s3.timeout": "5"})
        with pytest.raises(S3ConnectFailed) as e:
            transfer.remove(f"s3://{b}/{key}", cfg)
        assert not isinstance(e.value, S3Locked)
