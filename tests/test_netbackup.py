"""The NetBackup module: notify scripts installed and called with NetBackup's arguments
(CLIENT POLICY SCHEDULE SCHEDULE_TYPE [STATUS]) for full, differential and cumulative
cycles, the staged-ahead check mode, and the restore that prints bprestore."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import time

import pytest

from asm.archive.reader import ArchiveReader
from asm.config import Config
from asm.store import open_store
from tests.helpers import build, change_mail, imsstage, rows, run, sha256, staged_files, user_view


def imsnbu(home, *args, **kw):
    return run(home, "imsnbu", *args, text=True, **kw)


@pytest.fixture
def nbu(ims_home, tmp_path):
    """An installation with groups, a staging dir and the scripts installed for policy
    MAIL (any schedule) in a NetBackup bin directory made for the test."""
    store = build(ims_home, "classic", users=12, messages=120)
    st = tmp_path / "staging"
    Config(str(ims_home)).set("staging.dir", str(st))
    bindir = tmp_path / "openv" / "bin"
    bindir.mkdir(parents=True)
    r = imsnbu(ims_home, "install", "--policy", "MAIL", "--dir", str(bindir), check=0)
    return store, st, bindir, r.stdout


def notify(bindir, name, *args):
    """A notify script imsnbu installed, run by its path as NetBackup runs it: with
    no IMS_HOME and a PATH that does not hold the project's commands."""
    bare = {"IMS_HOME": None, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return run(None, bindir / name, *args, env=bare, text=True)


def held(directory, files) -> tuple[int, int]:
    """(messages and links, message bytes) the archives ``files`` in ``directory`` hold."""
    n = nbytes = 0
    for f in files:
        with open(directory / f, "rb") as fh:
            for m in ArchiveReader(fh).members():
                if m.kind in ("message", "link"):
                    n += 1
                    nbytes += m.size if m.kind == "message" else 0
    return n, nbytes


def test_install_prints_policy_and_refuses_foreign_scripts(ims_home, tmp_path, nbu):
    store, st, bindir, out = nbu
    assert sorted(os.listdir(bindir)) == ["bpend_notify.MAIL", "bpstart_notify.MAIL"]
    assert all(os.access(bindir / n, os.X_OK) for n in os.listdir(bindir))
    assert "Backup selections:\n    " + str(st) in out
    assert "Policy type:        Standard" in out and "BPSTART_TIMEOUT is 300 s" in out
    for t in ("Full Backup", "Differential Incremental (INCR)", "Cumulative Incremental (CINC)"):
        assert t in out
    imsnbu(ims_home, "install", "--policy", "MAIL", "--schedule", "daily incr", "--dir", str(bindir), check=0)
    assert (bindir / "bpstart_notify.MAIL.daily incr").exists()
    (bindir / "bpstart_notify").write_text("#!/bin/sh\nexit 0\n")
    r = imsnbu(ims_home, "install", "--dir", str(bindir))
    assert r.returncode == 2 and "not installed by imsnbu" in r.stderr
    assert (bindir / "bpstart_notify").read_text() == "#!/bin/sh\nexit 0\n"
    r = imsnbu(ims_home, "install", "--schedule", "S", "--dir", str(bindir))
    assert r.returncode == 2 and "--schedule needs --policy" in r.stderr
    before = sorted(os.listdir(bindir))
    for bad in ("M\ntouch X", "a/b", ".hidden", "tab\there", ""):         # (a newline was installed, exit 0)
        r = imsnbu(ims_home, "install", "--policy", bad, "--dir", str(bindir))
        assert r.returncode == 2 and "bad policy or schedule name" in r.stderr, (bad, r.stderr)
        assert sorted(os.listdir(bindir)) == before


def test_install_refuses_an_ims_home_that_is_no_installation(tmp_path):
    """A mistyped IMS_HOME: imsnbu install exits 2 with one line naming IMS_HOME, as
    every command (imsbacula fileset too) -- it writes no notify script (which would exit
    2 every night, NetBackup status 73), makes no staging directory and prints no policy
    advice; imsnbu restore refuses it the same way."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    typo = tmp_path / "srv" / "imss"
    r = imsnbu(typo, "install", "--policy", "MAIL", "--dir", str(bindir), "-D", str(tmp_path / "stage"))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"IMS_HOME={typo} does not exist" in lines[0], r.stderr
    assert os.listdir(bindir) == [] and not (tmp_path / "stage").exists() and r.stdout == ""
    assert not typo.exists()
    r = imsnbu(typo, "restore", "joe", "-D", str(tmp_path / "stage"))
    assert r.returncode == 2 and f"IMS_HOME={typo} does not exist" in r.stderr, r.stderr
    assert not (tmp_path / "stage").exists() and not typo.exists()


def test_full_incr_cinc_cycles(ims_home, tmp_path, nbu):
    store, st, bindir, _ = nbu
    engine = tmp_path / "engine"
    engine.mkdir()

    def backup(stype, status="0"):
        r = notify(bindir, "bpstart_notify.MAIL", "mailhost", "MAIL", "sched", stype)
        assert r.returncode == 0, r.stderr
        files = staged_files(st)
        for f in files:                              # NetBackup reads the selection
            shutil.copy(st / f, engine / f)
        r = notify(bindir, "bpend_notify.MAIL", "mailhost", "MAIL", "sched", stype, status)
        assert r.returncode == 0, r.stderr
        # bpend_notify's lines (the client's bpbkar log) give the counts of what was saved
        n, nbytes = held(engine, files)
        m = re.search(r"this job saved (\d+) dumps, (\d+) messages, (\d+) links, (\d+) bytes, 0 errors", r.stderr)
        assert m and (int(m.group(1)), int(m.group(2)) + int(m.group(3)), int(m.group(4))) == \
            (len(files), n, nbytes), (r.stderr, n, nbytes)
        return files

    full = backup("FULL")
    assert len(full) == 3 and all("-full-" in f for f in full)
    assert staged_files(st) == []                   # status 0: cleaned up
    d_full = {d["grp"]: d for d in rows(st)}
    assert all(d["engine"] == "ok" and d["job"] == "netbackup:MAIL.sched" for d in d_full.values())

    change_mail(store, ["alice", "grace"])
    incr1 = backup("INCR")
    assert all("-incr-" in f for f in incr1)
    last = {d["grp"]: d for d in rows(st)[3:6]}
    assert all(last[g]["base"] == d_full[g]["id"] for g in last)

    change_mail(store, ["alice", "niaj"])
    backup("INCR")                                  # differential: continues the last incremental
    incr2 = {d["grp"]: d for d in rows(st)[6:9]}
    assert all(incr2[g]["base"] == last[g]["id"] for g in incr2)

    backup("CINC")                                  # cumulative: since the last full
    cinc = {d["grp"]: d for d in rows(st)[9:12]}
    assert all(cinc[g]["base"] == d_full[g]["id"] and cinc[g]["since"] == int(d_full[g]["started"])
               for g in cinc)

    # a failed job keeps its files and is no base for the next incremental
    r = notify(bindir, "bpstart_notify.MAIL", "mailhost", "MAIL", "sched", "INCR")
    assert r.returncode == 0
    kept = staged_files(st)
    assert len(kept) == 3
    notify(bindir, "bpend_notify.MAIL", "mailhost", "MAIL", "sched", "INCR", "13")
    assert staged_files(st) == kept
    assert [d["engine"] for d in rows(st)[12:15]] == ["failed"] * 3
    notify(bindir, "bpstart_notify.MAIL", "mailhost", "MAIL", "sched", "INCR")
    again = {d["grp"]: d for d in rows(st)[15:18]}
    assert all(again[g]["base"] == cinc[g]["id"] for g in again)
    r = notify(bindir, "bpend_notify.MAIL", "mailhost", "MAIL", "sched", "INCR", "0")
    # NetBackup saved the whole directory, the failed job's files with it: they go too
    # (staging.keep 0), their verdict stays failed -- failed jobs do not fill the area
    assert "6 files removed" in r.stderr, r.stderr
    assert staged_files(st) == []
    assert [(d["engine"], d["removed"] is not None) for d in rows(st)[12:18]] == \
        [("failed", True)] * 3 + [("ok", True)] * 3

    # user backups (e.g. bpbackup of a batch) stage nothing; bad arguments fail the job
    r = notify(bindir, "bpstart_notify.MAIL", "mailhost", "MAIL", "user", "UBAK")
    assert r.returncode == 0 and len(rows(st)) == 18
    r = notify(bindir, "bpstart_notify.MAIL", "mailhost", "MAIL")
    assert r.returncode != 0 and "expected CLIENT POLICY SCHEDULE SCHEDULE_TYPE" in r.stderr
    r = notify(bindir, "bpstart_notify.MAIL", "mailhost", "MAIL", "s", "WEEKLY")
    assert r.returncode != 0 and "unknown schedule type 'WEEKLY'" in r.stderr
    assert os.path.exists(st / "netbackup.log")


def test_a_failed_dump_is_not_counted_as_saved(ims_home, tmp_path, nbu):
    """One group's dump fails (a message file of alice is gone): bpstart_notify fails
    the job, and neither its log lines nor bpend_notify's count that dump's messages as
    staged or saved: its file was removed, NetBackup saves only the others."""
    store, st, bindir, _ = nbu
    victim = store.messages("alice", "INBOX")[0]
    os.unlink(victim.path)
    r = notify(bindir, "bpstart_notify.MAIL", "mailhost", "MAIL", "sched", "FULL")
    assert r.returncode != 0, r.stderr
    files = staged_files(st)
    n, nbytes = held(st, files)
    assert 0 < len(files) < len({d["grp"] for d in rows(st)}), files
    failed = len({d["grp"] for d in rows(st)}) - len(files)
    want = f"staged {len(files)} dumps ({failed} more failed, not staged), "
    assert want in r.stderr, r.stderr
    m = re.search(r"staged \d+ dumps \(\d+ more failed, not staged\), (\d+) messages, (\d+) links, (\d+) bytes",
                  r.stderr)
    assert m and (int(m.group(1)) + int(m.group(2)), int(m.group(3))) == (n, nbytes), (r.stderr, n, nbytes)
    r = notify(bindir, "bpend_notify.MAIL", "mailhost", "MAIL", "sched", "FULL", "1")
    assert "this job saved" not in r.stderr, r.stderr
    m = re.search(r"bpstart_notify staged \d+ dumps(?: \(\d+ more failed, not staged\))?, (\d+) messages, "
                  r"(\d+) links", r.stderr)
    assert m and int(m.group(1)) + int(m.group(2)) == n, r.stderr


def test_a_failed_job_does_not_say_it_saved(ims_home, tmp_path, nbu):
    """bpend_notify of a job NetBackup failed (84, media write error): the log says the
    job failed and that what bpstart_notify staged is kept for the next attempt -- never
    'this job saved ...', the line a monitor reads as the mail being saved.  A job that
    succeeded still says what it saved."""
    store, st, bindir, _ = nbu
    assert notify(bindir, "bpstart_notify.MAIL", "mailhost", "MAIL", "sched", "FULL").returncode == 0
    n, _ = held(st, staged_files(st))
    r = notify(bindir, "bpend_notify.MAIL", "mailhost", "MAIL", "sched", "FULL", "84")
    assert r.returncode == 0, r.stderr
    assert "this job saved" not in r.stderr, r.stderr
    line = [x for x in r.stderr.splitlines() if "failed (NetBackup status 84)" in x]
    assert len(line) == 1 and "nothing of it counts as saved" in line[0] and "kept for the next attempt" in line[0]
    assert all(d["engine"] == "failed" for d in rows(st)) and len(staged_files(st)) == len(rows(st))
    assert notify(bindir, "bpstart_notify.MAIL", "mailhost", "MAIL", "sched", "FULL").returncode == 0
    r = notify(bindir, "bpend_notify.MAIL", "mailhost", "MAIL", "sched", "FULL", "0")
    m = re.search(r"this job saved \d+ dumps, (\d+) messages, (\d+) links", r.stderr)
    assert m and int(m.group(1)) + int(m.group(2)) == n, r.stderr


def test_a_failed_jobs_dumps_are_cleaned_once_a_later_job_saved_them(ims_home, tmp_path, nbu):
    """Dump mode, staging.keep 0: a job fails (bpend 84, files kept for the next attempt);
    the next job stages afresh and succeeds.  NetBackup saved the whole staging directory,
    the failed job's files with it, so its bpend 0 removes those too: the area does not
    fill up with every failed job's dumps.  Their verdict stays 'failed' (no incremental
    continues them); a failed job with no later success keeps its files."""
    store, st, bindir, _ = nbu
    args = ("mailhost", "MAIL", "sched", "FULL")
    assert notify(bindir, "bpstart_notify.MAIL", *args).returncode == 0
    assert notify(bindir, "bpend_notify.MAIL", *args, "84").returncode == 0
    failed = staged_files(st)
    assert len(failed) == 3
    assert notify(bindir, "bpstart_notify.MAIL", *args).returncode == 0
    assert notify(bindir, "bpend_notify.MAIL", *args, "84").returncode == 0
    assert len(staged_files(st)) == 6                  # no success yet: every file stays
    assert notify(bindir, "bpstart_notify.MAIL", *args).returncode == 0
    r = notify(bindir, "bpend_notify.MAIL", *args, "0")
    assert r.returncode == 0 and "9 files removed" in r.stderr, r.stderr
    assert staged_files(st) == []
    rs = rows(st)
    assert [d["engine"] for d in rs] == ["failed"] * 6 + ["ok"] * 3
    assert all(d["removed"] is not None for d in rs)


def test_check_mode_with_staging_ahead(ims_home, tmp_path, nbu):
    store, st, bindir, _ = nbu
    r = imsnbu(ims_home, "install", "--policy", "MAIL", "--schedule", "full", "--check", "--max-age", "2",
               "--dir", str(bindir), check=0)
    assert "Stage ahead from cron" in r.stdout
    args = ("mailhost", "MAIL", "full", "FULL")
    r = notify(bindir, "bpstart_notify.MAIL.full", *args)
    assert r.returncode == 15 and "no fresh complete full dump" in r.stderr and rows(st) == []
    imsstage(ims_home, "--incremental", check=0)    # no full yet: every group gets a full
    imsstage(ims_home, "done", check=0)             # ... which an engine already took
    r = notify(bindir, "bpstart_notify.MAIL.full", *args)
    assert r.returncode == 15                       # taken ones are not fresh
    imsstage(ims_home, "--full", check=0)           # the cron job
    r = notify(bindir, "bpstart_notify.MAIL.full", *args)
    assert r.returncode == 0, r.stderr
    claimed = [d for d in rows(st) if d["job"] == "netbackup:MAIL.full"]
    assert len(claimed) == 3
    # a group whose file went missing fails the check and names the group
    os.unlink(st / claimed[0]["file"])
    r = notify(bindir, "bpstart_notify.MAIL.full", *args)
    assert r.returncode == 15 and f"/primary/{claimed[0]['grp']}" in r.stderr
    r = notify(bindir, "bpend_notify.MAIL.full", *args, "0")
    assert r.returncode == 0
    assert staged_files(st) == []


def test_check_mode_retry_after_a_failed_job_claims_the_kept_dumps(ims_home, tmp_path, nbu):
    """Staging ahead: the job fails (bpend 84: "the files are kept for the next
    attempt"); NetBackup's retry runs bpstart_notify --check again, which takes the same
    fresh, complete full dumps again (exit 0, not 15 "no fresh complete full dump"),
    and the retry's bpend 0 records them saved and cleans them up."""
    store, st, bindir, _ = nbu
    imsnbu(ims_home, "install", "--policy", "MAIL", "--check", "--dir", str(bindir), "--force", check=0)
    args = ("mailhost", "MAIL", "full", "FULL")
    imsstage(ims_home, "--full", check=0)           # the cron job
    files = staged_files(st)
    assert len(files) == 3
    assert notify(bindir, "bpstart_notify.MAIL", *args).returncode == 0
    r = notify(bindir, "bpend_notify.MAIL", *args, "84")
    assert r.returncode == 0 and "kept for the next attempt" in r.stderr
    assert [d["engine"] for d in rows(st)] == ["failed"] * 3 and staged_files(st) == files
    r = notify(bindir, "bpstart_notify.MAIL", *args)          # NetBackup's retry
    assert r.returncode == 0, r.stderr
    assert "3 fresh staged dumps found" in r.stderr, r.stderr
    rs = rows(st)
    assert all(d["job"] == "netbackup:MAIL.full" and d["engine"] is None for d in rs)
    r = notify(bindir, "bpend_notify.MAIL", *args, "0")
    assert r.returncode == 0 and "bpend status 0 recorded on 3 dumps; 3 files removed" in r.stderr, r.stderr
    assert [d["engine"] for d in rows(st)] == ["ok"] * 3 and staged_files(st) == []


def test_check_mode_refuses_an_empty_store(ims_home, tmp_path):
    """Staging ahead with the mail disk not mounted (an empty mount point): the cron dump
    exits 18, and so do bpstart_notify --check and imsstage check, with the dump's one
    line -- not exit 0 with "0 fresh staged dumps found" (no group, so "every group has a
    fresh dump" was vacuously true).  Nothing is claimed."""
    import io

    from tests.helpers import make_home, msg
    mail = tmp_path / "mail"
    mail.mkdir()
    st = tmp_path / "staging"
    store = open_store(make_home(ims_home, "maildir", **{"partition:primary.path": str(mail),
                                                          "staging.dir": str(st)}))
    store.create_user("joe")
    store.append("joe", "INBOX", io.BytesIO(msg(1)))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    imsnbu(ims_home, "install", "--policy", "MAIL", "--check", "--dir", str(bindir), check=0)
    imsstage(ims_home, "--full", check=0)            # yesterday's cron, taken by a good job
    assert notify(bindir, "bpstart_notify.MAIL", "mailhost", "MAIL", "full", "FULL").returncode == 0
    assert notify(bindir, "bpend_notify.MAIL", "mailhost", "MAIL", "full", "FULL", "0").returncode == 0
    imsstage(ims_home, "--full", check=0)            # and a full staged for tonight...
    mail.rename(tmp_path / "mail.disk")              # ... when the disk is not mounted
    mail.mkdir()
    p = imsstage(ims_home, "--incremental")
    assert p.returncode == 18, p.stderr
    r = notify(bindir, "bpstart_notify.MAIL", "mailhost", "MAIL", "incr", "INCR")
    assert r.returncode == 18 and "the store holds no users" in r.stderr, r.stderr
    assert "fresh staged dumps found" not in r.stderr
    p = imsstage(ims_home, "check", "--incremental", "--job", "x")
    assert p.returncode == 18, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "the store holds no users" in lines[0] and "mounted" in lines[0]
    assert [d["job"] for d in rows(st)] == ["netbackup:MAIL.full", None]


def test_bpstart_timeout_gives_the_deadline(ims_home, tmp_path, nbu):
    from plugins.netbackup.notify import bpstart_timeout
    conf = tmp_path / "bp.conf"
    conf.write_text("SERVER = master\nBPSTART_TIMEOUT = 1200\n")
    assert bpstart_timeout(str(conf)) == 1200
    assert bpstart_timeout(str(tmp_path / "none")) == 300


def test_restore_prints_bprestore_then_restores(ims_home, tmp_path, nbu):
    store, st, bindir, _ = nbu
    engine = tmp_path / "engine"
    engine.mkdir()
    for stype in ("FULL", "INCR"):
        if stype == "INCR":
            change_mail(store, ["heidi", "ivan"])
        assert notify(bindir, "bpstart_notify.MAIL", "mailhost", "MAIL", "s", stype).returncode == 0
        for f in staged_files(st):
            shutil.copy(st / f, engine / f)
        assert notify(bindir, "bpend_notify.MAIL", "mailhost", "MAIL", "s", stype, "0").returncode == 0
    want = user_view(store, "heidi")
    back = tmp_path / "back ü"
    # the staging directory given with -D only (none configured): the command it says to
    # run again must name it, and every other option given, as it was given
    Config(str(ims_home)).unset("staging.dir")
    r = imsnbu(ims_home, "restore", "/primary/user/heidi", "-D", str(st), "--from", str(back),
               "--client", "mailhost", "--at", time.strftime("%Y%m%d:%H%M%S", time.localtime(time.time() + 60)))
    assert r.returncode == 15
    again = [ln for ln in r.stdout.splitlines() if ln.startswith("then run again: ")]
    assert len(again) == 1, r.stdout
    again = shlex.split(again[0][len("then run again: "):])
    assert again[:2] == ["imsnbu", "restore"] and again[again.index("-D") + 1] == str(st), again
    assert again[again.index("--from") + 1] == str(back) and "--at" in again, again
    cmd = [ln for ln in r.stdout.splitlines() if ln.strip().startswith("bprestore ")]
    assert len(cmd) == 1 and "-C mailhost" in cmd[0] and "-t 0" in cmd[0]
    gb = sorted(d["file"] for d in rows(st) if d["grp"] == "gB")
    assert all(os.path.join(str(st), f) in cmd[0] for f in gb)
    rename = (back / ".imsnbu-rename").read_text().splitlines()
    assert rename == [f"change {st / f} to {back / f}" for f in gb]
    for f in gb:                                    # what bprestore -R would do
        shutil.copy(engine / f, back / f)
    store.delete_user("heidi")
    imsnbu(ims_home, *again[1:], check=0)          # the command it said, as it said it
    assert user_view(open_store(Config(str(ims_home))), "heidi") == want
    for f in gb:
        assert sha256(back / f) == [d["sha256"] for d in rows(st) if d["file"] == f][0]


def test_plugin_registers_imsnbu():
    from asm import plugins
    assert "imsnbu" in plugins.commands()


@pytest.mark.parametrize("odd", [os.fsdecode(b"j\xf6rg"), "zed "], ids=["not-utf8", "trailing-blank"])
def test_every_user_of_the_predefined_group_is_staged_whatever_its_name(ims_home, tmp_path, odd):
    """The predefined group ``user`` is dumped from a list of user paths (imsbackup -u).
    A Maildir user directory whose name is not UTF-8 stopped the whole bpstart_notify
    with an internal error (exit 70, no group staged); a user ID ending with a blank
    was read back from the list without it (``/primary/zed`` twice), left out of the
    dump, and the job exited 0 saying it saved everything else (FINDINGS-G 1 and 4).
    Through the installed notify scripts and a restore of what NetBackup took, each
    user comes back with its bytes, UIDs and flags."""
    from tests.helpers import make_home, put
    cfg = make_home(ims_home, "maildir")
    with open(cfg.groups_path, "w") as f:
        f.write("gA=[a-f].*\n")              # everyone else is in the predefined group 'user'
    store = open_store(cfg)
    for i, u in enumerate(["alice", "zed", odd, "xavier"]):
        put(store, u, "INBOX", i, flags=["\\Seen"])
        put(store, u, "Work", 10 + i, flags=["\\Flagged"], keywords=["$Label1"])
    want = {u: user_view(store, u) for u in store.users("primary")}
    assert odd in want and len(want) == 4
    st = tmp_path / "staging"
    Config(str(ims_home)).set("staging.dir", str(st))
    bindir = tmp_path / "openv" / "bin"
    bindir.mkdir(parents=True)
    imsnbu(ims_home, "install", "--policy", "MAIL", "--dir", str(bindir), check=0)

    r = notify(bindir, "bpstart_notify.MAIL", "mailhost", "MAIL", "sched", "FULL")
    assert r.returncode == 0, r.stderr
    engine = tmp_path / "engine"                 # what NetBackup takes of the selection
    engine.mkdir()
    files = staged_files(st)
    for f in files:
        shutil.copy(st / f, engine / f)
    r = notify(bindir, "bpend_notify.MAIL", "mailhost", "MAIL", "sched", "FULL", "0")
    assert r.returncode == 0, r.stderr
    assert "this job saved 2 dumps, 8 messages" in r.stderr, r.stderr

    target = tmp_path / "target"
    make_home(target, "maildir")
    for f in files:
        r = run(target, "imsrestore", "-f", engine / f, text=True)
        assert r.returncode == 0, r.stderr
    got = open_store(Config(str(target)))
    assert sorted(got.users("primary")) == sorted(want)
    for u in want:
        assert user_view(got, u) == want[u], u


def test_bpend_notify_on_a_full_staging_disk_is_13_in_one_line_and_the_retry_records_the_job(
        ims_home, tmp_path, nbu):
    """The staging disk fills up (a real tmpfs written full) before each of bpend_notify's
    steps in turn: the job's verdict written to the catalog, each saved file removed and
    marked so.  bpend_notify called the catalog's writes itself, outside imsstage's
    handling of a full catalog: SQLite's "database or disk is full" was an internal error
    (exit 70, a crash file, "please report it").  Now: exit 13, one line naming the
    catalog; and the same script run again with room records the job and removes its
    files as a run with room does."""
    import sqlite3
    from tests.faults import count_steps, run_with_fault, spread
    from tests.helpers import small_tmpfs
    _, st, bindir, _ = nbu
    bare = {"IMS_HOME": None, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    with small_tmpfs(st, "16m"):            # (the staging directory the scripts were installed with)
        filler, base = st / "filler", tmp_path / "staged"
        r = notify(bindir, "bpstart_notify.MAIL", "mailhost", "MAIL", "sched", "FULL")
        assert r.returncode == 0, r.stderr
        shutil.copytree(st, base)
        argv = [bindir / "bpend_notify.MAIL", "mailhost", "MAIL", "sched", "FULL", "0"]

        def catalog():
            db = sqlite3.connect(st / "catalog.db")
            try:
                got = db.execute("SELECT grp, status, engine, engine_status, removed IS NULL FROM dumps "
                                 "ORDER BY id").fetchall()
            finally:
                db.close()
            return got, staged_files(st)

        total, p = count_steps(argv, st, tmp_path, env=bare)
        assert p.returncode == 0, p.stderr
        want = catalog()
        assert want[1] == [] and {row[2] for row in want[0]} == {"ok"}, want
        statuses = set()
        for k in spread(total, 12, 3):
            for n in os.listdir(st):
                os.unlink(st / n)
            shutil.copytree(base, st, dirs_exist_ok=True)
            r = run_with_fault(argv, st, f"fill:{k}", env={**bare, "IMS_FAULT_FILL": str(filler)})
            out = r.stderr.decode()
            statuses.add(r.returncode)
            assert r.returncode in (0, 13), (k, out)
            if r.returncode == 13:
                assert out.count("\n") == 1 and "full" in out and f"{st}/catalog.db" in out, (k, out)
                assert "internal error" not in out, (k, out)
            if filler.exists():
                os.unlink(filler)
            r = run(None, *argv, env=bare, text=True)
            assert r.returncode == 0, (k, r.stderr)
            assert catalog() == want, k
        assert 13 in statuses, statuses
