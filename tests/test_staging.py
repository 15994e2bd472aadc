"""imsstage: parallel group dumps, catalog, space planning on a small filesystem, a run
killed mid-way, and a user restored from the full + incremental chain."""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import time

import pytest

from asm.config import Config
from asm.store import open_store
from staging.lock import AreaLock
from tests import test_verify
from tests.helpers import (
    build, change_mail, imsstage, popen, rows, run, sha256, sized_store, small_tmpfs, staged_files, user_view,
    users_of,
)


def test_parallel_dumps_of_every_group(ims_home, driver, tmp_path):
    store = build(ims_home, driver)
    st = tmp_path / "stage"
    r = imsstage(ims_home, "-D", str(st), "-j", "2", "-v", check=0)
    assert "4 of 4 dumps staged" in r.stderr
    dumps = rows(st)
    assert [(d["grp"], d["kind"], d["status"]) for d in dumps] == [
        ("gA", "full", "complete"), ("gB", "full", "complete"), ("gC", "full", "complete"),
        ("user", "full", "complete")]
    # two at a time: the second started before the first finished
    assert dumps[1]["started"] < dumps[0]["finished"]
    assert staged_files(st) == sorted(d["file"] for d in dumps)
    assert not [n for n in os.listdir(st) if n.endswith(".partial")]
    for d in dumps:
        path = st / d["file"]
        assert os.path.getsize(path) == d["size"]
        assert sha256(path) == d["sha256"]
        # the estimate is close to, and not below, the real size
        assert d["size"] <= d["estimate"] <= d["size"] * 1.2 + 65536
    assert users_of(st, dumps[0]["id"]) == ["alice", "bob", "carol", "dave", "erin", "frank"]
    assert users_of(st, dumps[3]["id"]) == ["sybil"]
    # every message of the store is in exactly the dumps: restore them all elsewhere
    other = tmp_path / "other"
    Config(str(other)).set("store.driver", driver)
    shutil.copy(Config(str(ims_home)).groups_path, Config(str(other)).groups_path)
    for d in dumps:
        run(other, "imsrestore", "-f", st / d["file"], check=0)
    restored = open_store(Config(str(other)))
    for u in ("alice", "grace", "niaj", "sybil"):
        assert user_view(restored, u) == user_view(store, u)


def test_named_groups_and_bad_names(ims_home, tmp_path):
    build(ims_home, "classic")
    st = tmp_path / "stage"
    imsstage(ims_home, "-D", str(st), "gB", "/primary/user", check=0)
    assert [d["grp"] for d in rows(st)] == ["gB", "user"]
    r = imsstage(ims_home, "-D", str(st), "nosuch")
    assert r.returncode == 2 and "no backup group 'nosuch'" in r.stderr and len(r.stderr.splitlines()) == 1
    r = imsstage(ims_home, "gA")
    assert r.returncode == 2 and "staging.dir" in r.stderr
    assert len(rows(st)) == 2


def test_a_staging_directory_too_long_for_sqlite_is_named_so(ims_home, tmp_path):
    """A -D directory whose catalog's path is longer than SQLite opens (504 bytes, links
    resolved) failed "cannot write the staging catalog catalog.db: unable to open database
    file: check its permissions, the free space and the mount": neither the directory nor
    the cause.  Now the line names the catalog's whole path, its length and the limit;
    a directory of a path just short enough is used as any."""
    from asm.sqlitedb import PATH_MAX
    build(ims_home, "classic", users=4, messages=20)
    real = os.path.realpath(tmp_path)
    for extra, ok in ((0, False), (3, True)):
        # the catalog's path: PATH_MAX + 1 bytes, or 2 bytes under the limit
        d = os.path.join(real, f"x{extra}")
        need = PATH_MAX + 1 - extra - len("/catalog.db") - len(d)     # bytes of "/ddd..." levels
        while need > 101:
            d, need = os.path.join(d, "d" * 99), need - 100
        d = os.path.join(d, "d" * (need - 1))
        os.makedirs(d)
        assert len(os.path.join(d, "catalog.db").encode()) == PATH_MAX + 1 - extra
        r = imsstage(ims_home, "-D", d, "gA")
        if ok:
            assert r.returncode == 0, r.stderr
            continue
        err = r.stderr.decode() if isinstance(r.stderr, bytes) else r.stderr
        assert r.returncode == 3 and len(err.splitlines()) == 1, err
        assert f"{d}/catalog.db: its path is {PATH_MAX + 1} bytes long" in err, err
        assert f"longer than SQLite opens ({PATH_MAX} bytes)" in err and "-D" in err, err


def test_two_areas_never_name_a_dump_alike_and_a_damaged_catalog_is_one_line(ims_home, tmp_path):
    """Two staging areas (two hosts, or two -D) dumping the same group in the same second
    used to write the same file name, and a push of one replaced the other's remote
    copy: each area's names carry its own tag.  A catalog cut short or overwritten is
    named with what to do (exit 4), never an internal error."""
    build(ims_home, "classic")
    a, b = tmp_path / "a", tmp_path / "b"
    imsstage(ims_home, "-D", str(a), "gB", check=0)
    imsstage(ims_home, "-D", str(b), "gB", check=0)
    imsstage(ims_home, "-D", str(a), "gB", check=0)
    na, nb = staged_files(a), staged_files(b)
    assert len(na) == 2 and len(nb) == 1 and not set(na) & set(nb), (na, nb)
    tag = lambda n: n[:-len(".ims")].rsplit("-", 1)[1]           # noqa: E731
    assert tag(na[0]) == tag(na[1]) != tag(nb[0]) and len(tag(nb[0])) == 8
    cat = b / "catalog.db"
    good = cat.read_bytes()
    for damage in (good[: len(good) // 2], os.urandom(len(good)), good[:4096] + os.urandom(len(good) - 4096)):
        cat.write_bytes(damage)
        for cmd in (["list"], ["locate", "-D", str(b), "/primary/user/alice"], ["-D", str(b), "gB"],
                    ["done", "-D", str(b), "--status", "0"]):
            argv = cmd if "-D" in cmd else cmd + ["-D", str(b)]
            r = imsstage(ims_home, *argv)
            assert r.returncode == 4 and "catalog" in r.stderr and "damaged" in r.stderr, (cmd, r.stderr)
            assert len(r.stderr.strip().splitlines()) == 1 and "internal error" not in r.stderr, r.stderr
    cat.write_bytes(good)
    assert imsstage(ims_home, "list", "-D", str(b)).returncode == 0


def test_incremental_and_cleanup(ims_home, tmp_path):
    store = build(ims_home, "classic")
    st = tmp_path / "st ä; 50%"
    imsstage(ims_home, "-D", str(st), "gA", check=0)
    full = rows(st)[0]
    change_mail(store, ["alice", "bob", "carol"])
    imsstage(ims_home, "-D", str(st), "--incremental", "gA", check=0)
    incr = rows(st)[1]
    assert incr["kind"] == "incr" and incr["base"] == full["id"] and incr["since"] == int(full["started"])
    assert incr["size"] < full["size"] / 4
    # the engine failed: files stay; an incremental still continues the (unreported) chain
    imsstage(ims_home, "done", "-D", str(st), "--status", "2", check=0)
    assert [d["engine"] for d in rows(st)] == ["failed", "failed"]
    assert len(staged_files(st)) == 2
    # a failed dump is no base: the next incremental falls back to a full
    r = imsstage(ims_home, "-D", str(st), "--incremental", "-v", "gA", check=0)
    assert "a full dump" in r.stderr and rows(st)[2]["kind"] == "full"
    # success: saved files go, except the newest staging.keep per group; the engine saved
    # the whole area, the failed chain's files with it, so they go as saved ones too
    # (their verdict stays failed: no incremental continues them)
    Config(str(ims_home)).set("staging.keep", "1")
    imsstage(ims_home, "done", "-D", str(st), check=0)
    assert staged_files(st) == [rows(st)[2]["file"]]
    assert [(d["engine"], d["removed"] is not None) for d in rows(st)] == [
        ("failed", True), ("failed", True), ("ok", False)]
    imsstage(ims_home, "-D", str(st), "--cumulative", "gA", check=0)
    assert rows(st)[3]["base"] == rows(st)[2]["id"]
    imsstage(ims_home, "done", "-D", str(st), check=0)
    assert staged_files(st) == [rows(st)[3]["file"]]
    assert rows(st)[2]["removed"] is not None


def test_a_staging_area_of_another_installation_is_refused(ims_home, tmp_path):
    """Two installations staging into one area (a mistyped -D, two instances whose
    staging.dir is alike): the second's --incremental continued the first's full of the
    same group name, exit 0, and its restore then failed (7) leaving neither's mail.
    The area keeps the installation it stages for: another's dump is refused, exit 2,
    one line naming both, nothing staged; its own area works as before."""
    build(ims_home, "classic")
    other = tmp_path / "other"
    build(other, "classic")
    st = tmp_path / "st"
    imsstage(ims_home, "-D", str(st), "gA", check=0)
    before = rows(st)
    for mode in ("--incremental", "--full"):
        p = imsstage(other, "-D", str(st), mode, "gA")
        assert p.returncode == 2, p.stderr
        assert p.stderr.count("\n") == 1 and str(ims_home) in p.stderr and str(other) in p.stderr, p.stderr
        assert rows(st) == before and len(staged_files(st)) == len(before)
    imsstage(other, "-D", str(tmp_path / "own"), "--incremental", "gA", check=0)
    assert rows(tmp_path / "own")[0]["kind"] == "full"
    imsstage(ims_home, "-D", str(st), "--incremental", "gA", check=0)
    assert rows(st)[-1]["kind"] == "incr"
    # imsstage plan dumps nothing, so claims no area: another installation may stage there after
    fresh = tmp_path / "fresh"
    p = imsstage(other, "plan", "-D", str(fresh), "gA")
    assert p.returncode == 0, p.stderr
    imsstage(ims_home, "-D", str(fresh), "gA", check=0)
    p = imsstage(other, "plan", "-D", str(fresh), "gA")        # and it checks the claim
    assert p.returncode == 2 and str(ims_home) in p.stderr, p.stderr


def test_cleanup_of_dumps_whose_job_failed(tmp_path):
    """remove_saved after a success: a dump whose job failed or was lost goes when a later
    successful job (not an after-batch command, which saves only its batch) saved the
    directory with it, or when a newer full of its group was saved and no dump that stays
    needs it as a base; a failed dump that nothing saved and that a staying incremental
    continues stays, as does one no later success covers."""
    from staging.catalog import Catalog
    from staging.cleanup import remove_saved
    cat = Catalog(str(tmp_path))
    t0 = time.time() - 1000

    def dump(grp, kind, at, engine=None, job=None, base=None):
        d = cat.start("r", "primary", grp, kind, None, base, ["u"], 1, lambda did, now: f"{grp}-{did}.ims")
        (tmp_path / d.file).write_bytes(b"x")
        cat.finish(d.id, 1, "0" * 64)
        cat.db.execute("UPDATE dumps SET started=?, finished=?, job=? WHERE id=?", (t0 + at, t0 + at + 5, job, d.id))
        if engine == "lost":
            cat.mark_lost([d.id])
        elif engine is not None:
            cat.report([d.id], 0 if engine == "ok" else 84)
        return d.id

    a_failed = dump("gA", "full", 0, "failed", "netbackup:M.s")
    a_lost = dump("gA", "incr", 10, "lost", "netbackup:M.s", base=a_failed)
    a_ok = dump("gA", "full", 50, "ok", "netbackup:M.s")              # a whole-area job: saved them
    b_failed = dump("gB", "full", 60, "failed", "netbackup:M.s")      # only a batch job saved later
    b_incr = dump("gB", "incr", 70, None, None, base=b_failed)          # unreported, continues it
    c_failed = dump("gC", "full", 80, "failed", "netbackup:M.s")      # superseded, nothing needs it
    dump("gB", "full", 100, "ok", "batch:r1:1")
    dump("gC", "full", 100, "ok", "batch:r1:1")
    d_failed = dump("gD", "full", 300, "failed", "netbackup:M.s")     # after the last success
    removed = {d.id for d in remove_saved(cat, str(tmp_path), 1)}
    assert removed == {a_failed, a_lost, c_failed}
    left = {d.id for d in cat.all() if d.removed is None}
    assert {a_ok, b_failed, b_incr, d_failed} <= left
    assert sorted(os.listdir(tmp_path)) == sorted([d.file for d in cat.all() if d.removed is None] + ["catalog.db"])
    assert [cat.get(i).engine for i in (a_failed, a_lost, c_failed)] == ["failed", "lost", "failed"]
    cat.close()


def test_user_restored_from_chain(ims_home, driver, tmp_path):
    store = build(ims_home, driver)
    st, engine = tmp_path / "stage", tmp_path / "engine"
    engine.mkdir()
    imsstage(ims_home, "-D", str(st), check=0)
    for f in staged_files(st):
        shutil.copy(st / f, engine / f)            # the engine saves them ...
    imsstage(ims_home, "done", "-D", str(st), check=0)   # ... and reports success
    assert staged_files(st) == []
    change_mail(store, ["bob", "alice"])
    imsstage(ims_home, "-D", str(st), "--incremental", check=0)
    change_mail(store, ["bob", "carol"])
    imsstage(ims_home, "-D", str(st), "--incremental", check=0)
    for f in staged_files(st):
        shutil.copy(st / f, engine / f)
    imsstage(ims_home, "done", "-D", str(st), check=0)
    want = user_view(store, "bob")
    assert want
    r = imsstage(ims_home, "locate", "-D", str(st), "/primary/user/bob", check=0)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("  ")]
    assert len(lines) == 3 and "full" in lines[0] and "incr" in lines[1] and "incr" in lines[2]
    assert all("saved by the engine" in ln for ln in lines)
    # restoring before the files are back says which are missing
    r = imsstage(ims_home, "restore", "-D", str(st), "/primary/user/bob")
    assert r.returncode == 15 and "3 of the 3 files are not back" in r.stderr
    store.delete_user("bob")
    r = imsstage(ims_home, "restore", "-D", str(st), "--from", str(engine), "/primary/user/bob", check=0)
    assert r.stderr.count("restoring /primary/user/bob") == 3
    assert user_view(open_store(Config(str(ims_home))), "bob") == want
    # a file the engine returned changed is refused before anything is restored
    bad = sorted(p for p in os.listdir(engine) if "-gA-" in p and "-full-" in p)[0]
    with open(engine / bad, "r+b") as f:
        f.seek(2000)
        f.write(b"X")
    r = imsstage(ims_home, "restore", "-D", str(st), "--from", str(engine), "alice")
    assert r.returncode == 4 and "not the file the catalog recorded" in r.stderr


def test_lock_refuses_a_second_run(ims_home, tmp_path):
    build(ims_home, "classic", users=4, messages=20)
    st = tmp_path / "stage"
    st.mkdir()
    with AreaLock(str(st)).acquire():
        r = imsstage(ims_home, "-D", str(st))
        assert r.returncode == 6 and "another staging run" in r.stderr
    assert staged_files(st) == []
    imsstage(ims_home, "-D", str(st), check=0)


def test_deadline_stops_and_removes(ims_home, tmp_path):
    build(ims_home, "classic", users=6, messages=60)
    st = tmp_path / "stage"
    r = imsstage(ims_home, "-D", str(st), "--deadline", "0.001")
    assert r.returncode == 16 and "stage ahead" in r.stderr
    assert staged_files(st) == []


def test_killed_run_leaves_nothing_complete(ims_home, tmp_path):
    store = build(ims_home, "classic", users=16, messages=700)
    st = tmp_path / "stage"
    proc = popen(ims_home, "imsstage", "-D", st, "-j", "1", stderr=subprocess.PIPE)
    # wait until a dump is being written, then kill the run outright
    t_end = time.monotonic() + 60
    while time.monotonic() < t_end:
        if os.path.isdir(st) and any(n.endswith(".partial") for n in os.listdir(st)):
            break
        time.sleep(0.01)
    else:
        pytest.fail("no dump started")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    running = [d for d in rows(st) if d["status"] == "running"]
    assert len(running) == 1
    complete = [d for d in rows(st) if d["status"] == "complete"]
    # every file that looks complete is one the catalog says is complete, with its digest
    assert staged_files(st) == sorted(d["file"] for d in complete)
    for d in complete:
        assert sha256(st / d["file"]) == d["sha256"]
    # the children died with the run: the area is free again
    with AreaLock(str(st)).acquire():
        pass
    r = imsstage(ims_home, "-D", str(st), "-j", "2", "-v", check=0)
    assert "1 dumps marked failed" in r.stderr
    after = rows(st)
    assert after[running[0]["id"] - 1]["status"] == "failed"
    assert "killed" in after[running[0]["id"] - 1]["error"]
    assert not [n for n in os.listdir(st) if n.startswith(".") and n != ".lock"]
    assert len([d for d in after if d["status"] == "complete"]) == len(complete) + 4
    assert store.users("primary")


@pytest.fixture
def small_fs(tmp_path):
    """A 3 MiB tmpfs made for the test."""
    with small_tmpfs(tmp_path / "small", "3m") as d:
        yield d


def test_space_check_refuses_and_batches(ims_home, small_fs, tmp_path):
    sized_store(ims_home, {"ga": (2, 10, 50_000), "gb": (2, 10, 50_000), "gc": (2, 10, 50_000),
                            "gd": (2, 10, 50_000)})
    # 4 x ~1 MB does not fit in 3 MiB at once, and nothing says how to empty the area between batches
    r = imsstage(ims_home, "-D", str(small_fs))
    assert r.returncode == 9 and "2 batches" in r.stderr and "--after-batch" in r.stderr
    assert staged_files(small_fs) == [] and rows(small_fs) == []
    r = imsstage(ims_home, "plan", "-D", str(small_fs), check=0)
    assert "batch 1:" in r.stderr and "batch 2:" in r.stderr
    # with a command that saves each batch, it runs in batches and says so
    engine = tmp_path / "engine"
    engine.mkdir()
    r = imsstage(ims_home, "-D", str(small_fs), "-j", "2", "-v", "--after-batch", f'cp "$@" {engine}/', check=0)
    assert "cannot hold every group at once: 2 batches" in r.stderr
    dumps = rows(small_fs)
    assert sorted(d["grp"] for d in dumps) == ["ga", "gb", "gc", "gd"]
    assert all(d["status"] == "complete" for d in dumps)
    saved = [d for d in dumps if d["engine"] == "ok"]
    left = [d for d in dumps if d["engine"] is None]
    assert len(saved) == 2 and len(left) == 2
    assert sorted(os.listdir(engine)) == sorted(d["file"] for d in saved)
    assert staged_files(small_fs) == sorted(d["file"] for d in left)
    for d in saved:
        assert sha256(engine / d["file"]) == d["sha256"]
    imsstage(ims_home, "done", "-D", str(small_fs), check=0)
    # one group alone bigger than the filesystem: refused, naming it
    store = open_store(Config(str(ims_home)))
    for k in range(40):
        store.append("gd_0", "INBOX", io.BytesIO(b"Subject: big\r\n\r\n" + b"y" * 100_000))
    r = imsstage(ims_home, "-D", str(small_fs), "--after-batch", "true")
    assert r.returncode == 9 and "group /primary/gd needs about" in r.stderr
    assert len(rows(small_fs)) == 4


hook_server = test_verify.hook_server       # the local healthcheck server (a pytest fixture)


def test_run_reports_of_dumps_and_of_a_chain_restore(ims_home, tmp_path, hook_server):
    """imsstage dump --report: one JSON report and one healthcheck start/success per run
    (not one per dump), its counts the sum of what the dumps hold, a textfile per group;
    imsstage restore --report: one report for the whole chain."""
    import json

    from asm.archive.reader import ArchiveReader
    srv, hook = hook_server
    store = build(ims_home, "classic", users=8, messages=60)
    prom = tmp_path / "prom"
    prom.mkdir()
    cfg = Config(str(ims_home))
    cfg.set("report.textfile", str(prom))
    cfg.set("report.healthcheck", f"http://127.0.0.1:{srv.server_address[1]}/hc")
    st = tmp_path / "stage"

    def held(path):
        """(messages + links) and message bytes an archive holds, read from the archive."""
        with open(path, "rb") as f:
            r = ArchiveReader(f)
            n = nbytes = 0
            for m in r.members():
                if m.kind in ("message", "link"):
                    n += 1
                    nbytes += m.size if m.kind == "message" else 0
        return n, nbytes

    for mode in ([], ["--incremental"]):
        if mode:
            change_mail(store, ["bob", "alice"])
        hook.hits.clear()
        rep = tmp_path / "stage.json"
        imsstage(ims_home, "-D", str(st), *mode, "--report", str(rep), check=0)
        doc = json.loads(rep.read_text())
        files = [d for d in rows(st) if d["kind"] == ("incr" if mode else "full")]
        want = [held(st / d["file"]) for d in files]
        assert doc["status"] == 0 and doc["command"] == "imsstage" and len(doc["dumps"]) == len(files) >= 2
        assert doc["counts"]["messages"] + doc["counts"]["links"] == sum(n for n, _ in want) > 0
        assert doc["counts"]["bytes"] == sum(b for _, b in want)
        assert [p for p, _ in hook.hits] == ["/hc/start", "/hc"]
        for d, (n, _) in zip(files, want):
            text = (prom / f"ims_stage_primary_{d['grp']}.prom").read_text()
            assert f'ims_stage_messages{{partition="primary",group="{d["grp"]}"}} {n}\n' in text, text
            assert f'ims_stage_last_status{{partition="primary",group="{d["grp"]}"}} 0\n' in text
    assert not [n for n in os.listdir(st) if n.endswith(".json")] and not list(prom.glob("ims_backup_*"))
    # the chain the catalog names, verified as one
    r = imsstage(ims_home, "verify", "-D", str(st), "/primary/user/bob", "--report", str(tmp_path / "v.json"))
    assert r.returncode == 0, r.stderr
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["status"] == 0 and len(v["archives"]) == 2, v
    # ... and the whole staging directory, every group's full and incremental (by base), as
    # one chain per group, restored into a scratch store and compared
    p = run(ims_home, "imsverify", "-f", st, "--restore-test", text=True)
    assert p.returncode == 0 and "every check passed" in p.stdout, (p.stdout, p.stderr)
    # the chain restore: one report, counts of the chain
    want = user_view(store, "bob")
    n_bob = sum(len(store.messages("bob", f.name)) for f in store.folders("bob"))
    store.delete_user("bob")
    rep = tmp_path / "restore.json"
    imsstage(ims_home, "restore", "-D", str(st), "--report", str(rep), "/primary/user/bob", check=0)
    doc = json.loads(rep.read_text())
    assert user_view(open_store(Config(str(ims_home))), "bob") == want
    assert doc["status"] == 0 and doc["kind"] == "restore" and [c["kind"] for c in doc["chain"]] == ["full", "incr"]
    assert doc["counts"]["messages"] + doc["counts"]["links"] - doc.get("expunged", 0) == n_bob > 0
    r = imsstage(ims_home, "restore", "-D", str(st), "--report", str(rep), "/primary/user/nobody")
    assert r.returncode != 0 and json.loads(rep.read_text())["status"] == r.returncode
    # a staged file changed since the catalog recorded it: refused, named
    f = st / [d for d in rows(st) if d["kind"] == "full" and d["grp"] == "user"][0]["file"] \
        if any(d["grp"] == "user" for d in rows(st)) else st / rows(st)[0]["file"]
    with open(f, "r+b") as fh:
        fh.seek(1500)
        fh.write(b"Z")
    r = imsstage(ims_home, "verify", "-D", str(st), "/primary/user/bob")
    assert r.returncode == 4 and "not the file the catalog recorded" in r.stderr, r.stderr


def test_a_catalog_that_cannot_be_written_is_not_called_damaged():
    """Advice to restore catalog.db from a backup is for a damaged file only: a full
    disk or a read-only mount must not make an admin replace a good catalog."""
    import sqlite3

    from staging.catalog import CatalogDamaged, CatalogUnwritable, is_damage
    for text in ("database disk image is malformed", "file is not a database", "quick_check: row 3 missing"):
        assert is_damage(sqlite3.DatabaseError(text)), text
    for text in ("attempt to write a readonly database", "database or disk is full", "unable to open database file",
                 "disk I/O error"):
        assert not is_damage(sqlite3.OperationalError(text)), text
    assert CatalogDamaged.status == 4 and CatalogUnwritable.status == 3
    assert "intact" in str(CatalogUnwritable("/s/catalog.db", "database or disk is full"))
