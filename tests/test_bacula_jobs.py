"""The Bacula module end to end through a real Bacula 9.6 (director, storage and file
daemons on 127.0.0.1, tests/bacula.py): imsbacula's FileSets in the director, full and
incremental jobs, restores of a deleted user and a deleted folder, per-user streams,
two FileSets of one store.  The same commands without daemons: tests/test_bacula.py."""
from __future__ import annotations

import contextlib
import io
import re
import time

import pytest

from asm.store import open_store
from tests.dovecot import require_dovecot, running_dovecot
from tests.helpers import make_home
from tests.test_bacula import DAY, GROUPS, PLUGINS, USERS, fill, imsbacula, msg, picture, plugin_lines


@pytest.fixture(autouse=True)
def _plugins(monkeypatch):
    monkeypatch.setenv("IMS_ASM_PLUGINS", PLUGINS)


IMAP_BOXES = [("alice", "INBOX"), ("alice", "Work/2023"), ("bob", "INBOX"), ("joe", "INBOX"), ("joe", "Trash")]


def imap_picture(server) -> dict:
    """What Dovecot serves: per mailbox UIDVALIDITY and per UID the flags and bytes."""
    out = {}
    for user in sorted({u for u, _ in IMAP_BOXES}):
        conn = server.imap(user)
        try:
            for u, box in IMAP_BOXES:
                if u != user:
                    continue
                typ, _ = conn.select(f'"{box}"', readonly=True)
                assert typ == "OK", (user, box)
                uidvalidity = int(conn.response("UIDVALIDITY")[1][0])
                typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
                rows = {}
                for item in data:
                    if not isinstance(item, tuple):
                        continue
                    head = item[0].decode()
                    uid = int(re.search(r"UID (\d+)", head).group(1))
                    flags = re.search(r"FLAGS \(([^)]*)\)", head).group(1).split()
                    rows[uid] = (tuple(sorted(f for f in flags if f != "\\Recent")), item[1])
                out[(user, box)] = (uidvalidity, rows)
        finally:
            conn.logout()
    return out


def same(got: dict, want: dict) -> None:
    """Equal pictures, or an assertion naming the first mailbox and message that differ."""
    for key in sorted(set(got) | set(want)):
        g, w = got.get(key), want.get(key)
        if g == w:
            continue
        if g is None or w is None:
            raise AssertionError(f"{key}: {'missing' if g is None else 'unexpected'}")
        assert g[0] == w[0], f"{key}: UIDVALIDITY {g[0]} != {w[0]}"
        gm, wm = {m[0]: m[1:] for m in g[1]}, {m[0]: m[1:] for m in w[1]}
        assert sorted(gm) == sorted(wm), f"{key}: UIDs {sorted(gm)} != {sorted(wm)}"
        for uid in wm:
            assert gm[uid][:3] == wm[uid][:3], f"{key} UID {uid}: {gm[uid][:3]} != {wm[uid][:3]}"
            assert gm[uid][3] == wm[uid][3], f"{key} UID {uid}: bytes differ"


def assert_job_counts(bac, jobid: int, want: dict) -> None:
    """The job log (the jobdone RunScript's lines) names each stream's messages."""
    with open(f"{bac.dir}/log/jobs.log", errors="replace") as f:
        log = f.read()
    got = {}
    for g in want:
        m = re.search(rf"job {jobid}: /primary/{g} \w+ recorded as good: (\d+) messages, (\d+) links", log)
        assert m, (g, log[-3000:])
        got[g] = int(m.group(1)) + int(m.group(2))
    assert got == want
    m = re.search(rf"job {jobid}: {len(want)} streams, (\d+) messages, (\d+) links", log)
    assert m and int(m.group(1)) + int(m.group(2)) == sum(want.values()), log[-3000:]


def job_ok(bac, job) -> None:
    assert job["JobStatus"] == "T" and job["JobErrors"] == 0, (job, bac.log())


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_full_incremental_and_restores_through_bacula(driver, ims_home, bacula, tmp_path):
    with contextlib.ExitStack() as stack:
        if driver == "maildir":          # a Maildir store that a real Dovecot serves
            require_dovecot()
            server = stack.enter_context(running_dovecot())
            cfg = make_home(ims_home, driver, **{"partition:primary.path": server.store, "store.owner": "vmail"})
        else:
            server, cfg = None, make_home(ims_home, driver)
        run_scenario(cfg, ims_home, bacula, server)


def run_scenario(cfg, ims_home, bacula, server):
    (ims_home / "config" / "backup-groups.conf").write_text(GROUPS)
    store = open_store(cfg)
    old = time.time() - 10 * DAY
    fill(store, old)
    if server:
        for user in sorted({u for u, _ in IMAP_BOXES}):
            server.add_user(user)
    conf = imsbacula("fileset", "--client", bacula.client, check=True).stdout.decode()
    assert len(plugin_lines(conf)) == 2
    # a second FileSet, one stream per user, in the same director
    users_conf = imsbacula("fileset", "--per-user", "--name", "ims-users", "--client", bacula.client,
                           check=True).stdout.decode()
    bacula.start(conf + users_conf)

    full = bacula.run_job("ims-mail", "Full")
    job_ok(bacula, full)
    assert full["Level"] == "F" and full["JobFiles"] == 2
    after_full = picture(store)
    # the job log (jobdone, the After RunScript) shows what each stream saved
    saved = {g: sum(len(v[1]) for k, v in after_full.items() if (k[0][0] == "a") == (g == "groupA"))
             for g in ("groupA", "rest")}
    assert_job_counts(bacula, full["JobId"], saved)

    # after the full: a message moved to another folder, a folder renamed (over IMAP on
    # Dovecot: the files keep their names and dates), new mail, a flag change
    if server:
        conn = server.imap("alice")
        try:
            assert conn.select("INBOX")[0] == "OK"
            assert conn.uid("MOVE", "1", '"Work/2023"')[0] == "OK"
            assert conn.rename("Sent", "Sent-2026")[0] == "OK"
        finally:
            conn.logout()
    else:
        m = store.message("alice", "INBOX", 1)
        store.append("alice", "Work/2023", None, link_from=m.path, flags=m.flags, keywords=m.keywords,
                     internaldate=m.internaldate)
        store.expunge("alice", "INBOX", [1])
        info = store.folder("alice", "Sent")
        store.create_folder("alice", "Sent-2026", uidvalidity=info.uidvalidity, subscribed=True)
        for m in store.messages("alice", "Sent"):
            store.append("alice", "Sent-2026", None, uid=m.uid, link_from=m.path, flags=m.flags,
                         keywords=m.keywords, internaldate=m.internaldate, stored=m.stored)
        store.set_folder("alice", "Sent-2026", uidnext=info.uidnext)
        store.delete_folder("alice", "Sent")
    new = {("alice", "INBOX"): 2, ("bob", "50% off; \"quoted\" 'too'"): 1, ("joe", "Trash"): 1}
    for (u, f), n in new.items():
        for i in range(n):
            store.append(u, f, io.BytesIO(msg(u, f, 100 + i, 2000)), flags=["\\Flagged"])
    store.set_flags("joe", "INBOX", 1, ["\\Seen", "\\Deleted"])
    incr = bacula.run_job("ims-mail", "Incremental")
    job_ok(bacula, incr)
    assert incr["Level"] == "I" and incr["JobBytes"] < full["JobBytes"]
    # the incremental carried what its base (the full's state) did not hold: the new
    # mail, the moved message and the renamed folder's six
    assert_job_counts(bacula, incr["JobId"], {"groupA": 2 + 1 + 6, "rest": 2})
    history = imsbacula("history", check=True).stdout.decode()
    assert re.search(rf"/primary/groupA\t{incr['JobId']}\tims-mail\tIncremental", history), history
    expected = picture(store)
    assert expected != after_full
    if server:
        served = imap_picture(server)     # Dovecot has indexed these mailboxes before the loss
        assert served[("joe", "Trash")][1][max(served[("joe", "Trash")][1])][0] == ("\\Flagged",)

    # disaster: users of each group and a folder disappear
    store.delete_user("amy smith: q")
    store.delete_user("alice")
    store.delete_user("joe")
    store.delete_folder("bob", "50% off; \"quoted\" 'too'")

    # restore the chain: the full, then the incremental (alice: the moved message back
    # in Work/2023 only, Sent-2026 and no Sent)
    gone = ("amy smith: q", "alice", "joe")
    job_ok(bacula, bacula.restore_job(full["JobId"], "ims-mail-restore"))
    same(picture(store, gone), {k: v for k, v in after_full.items() if k[0] in gone})
    job_ok(bacula, bacula.restore_job(incr["JobId"], "ims-mail-restore"))
    same(picture(store), expected)
    if server:
        assert imap_picture(server) == served

    # one folder out of a group's stream: only it comes back, the rest is untouched
    store.delete_folder("alice", "Work/2023")
    store.delete_user("joe")
    imsbacula("select", "/primary/alice/Work/2023", check=True)
    for jobid in (full["JobId"], incr["JobId"]):
        job_ok(bacula, bacula.restore_job(jobid, "ims-mail-restore"))
    assert "joe" not in store.users("primary")
    same(picture(store, ["alice"]), {k: v for k, v in expected.items() if k[0] == "alice"})
    assert "restoring only /primary/alice/Work/2023" in bacula.log()

    # one user, marked in Bacula's tree as the group's file, restored from the full only
    imsbacula("select", "/primary/user/joe", check=True)
    job_ok(bacula, bacula.restore_files(full["JobId"], "ims-mail-restore", ["/MAILSTORE/primary/rest"]))
    same(picture(store, ["joe"]), {k: v for k, v in after_full.items() if k[0] == "joe"})
    # the wrong group's file marked: no stream holds joe, the restore job fails naming him
    wrong = bacula.restore_files(full["JobId"], "ims-mail-restore", ["/MAILSTORE/primary/groupA"])
    assert wrong["JobStatus"] not in ("T", "W"), wrong
    assert f"restore job {wrong['JobId']}: /primary/user/joe: no stream of this job holds it" in bacula.log()
    imsbacula("select", "--clear", check=True)

    # per-user streams: a user whose name bpipe would split (' ', ':') is its own file
    per_user = bacula.run_job("ims-users", "Full")
    job_ok(bacula, per_user)
    assert per_user["JobFiles"] == len(USERS)
    before = picture(store)
    store.delete_user("amy smith: q")
    job_ok(bacula, bacula.restore_files(per_user["JobId"], "ims-users-restore",
                                        ["/MAILSTORE/primary/groupA/amy%20smith%3A%20q"]))
    same(picture(store), before)

    # a stream that fails fails the job; only the streams that finished well are recorded
    store.delete_user("joe")                  # the FileSet still has a line for joe
    failed = bacula.run_job("ims-users", "Incremental")
    assert failed["JobStatus"] not in ("T", "W"), failed
    log = bacula.log()
    assert "/MAILSTORE/primary/rest/joe: imsbacula: imsbackup: /primary/rest/joe: no user 'joe'" in log, log
    assert f"job {failed['JobId']}: /primary/rest/joe FAILED (imsbackup exit status 2)" in log, log
    history = imsbacula("history", check=True).stdout.decode()
    assert f"/primary/rest/bob\t{failed['JobId']}\t" in history
    assert f"/primary/rest/joe\t{failed['JobId']}\t" not in history


def test_two_filesets_of_one_store_each_build_on_their_own_jobs(ims_home, bacula):
    """Two FileSets of one store (imsbacula fileset --name: a local and an off-site set)
    are two chains.  An Incremental of ims-mail took as its base the last good job of
    ims-offsite (the module's record was per path, whatever the FileSet), so restoring
    ims-mail's own chain (its Full, then its Incremental), both 'Restore OK', left joe's
    INBOX at UIDs [1, 3]: UID 2, stored between the two FileSets' Fulls, was gone.  A
    Differential, the Full it builds on, and pruning are each FileSet's own too."""
    cfg = make_home(ims_home, "classic")
    (ims_home / "config" / "backup-groups.conf").write_text(GROUPS)
    store = open_store(cfg)
    store.create_user("joe")
    n = 0

    def add():
        nonlocal n
        store.append("joe", "INBOX", io.BytesIO(msg("joe", "INBOX", n)))
        n += 1

    def inbox():
        return [m.uid for m in store.messages("joe", "INBOX")] if store.exists("joe") else []

    log = ims_home / "data" / "bacula" / "log" / "ims-mail.log"
    add()
    conf = "".join(imsbacula("fileset", "--name", name, "--client", bacula.client, check=True).stdout.decode()
                   for name in ("ims-mail", "ims-offsite"))
    bacula.start(conf)
    full = bacula.run_job("ims-mail", "Full")
    job_ok(bacula, full)
    add()                                                   # UID 2: after ims-mail's Full
    job_ok(bacula, bacula.run_job("ims-offsite", "Full"))
    add()                                                   # UID 3
    incr = bacula.run_job("ims-mail", "Incremental")
    job_ok(bacula, incr)
    assert f"/primary/rest: incremental backup of job {incr['JobId']}, what changed since job {full['JobId']}" \
        in log.read_text(), log.read_text()
    add()                                                   # UID 4
    diff = bacula.run_job("ims-mail", "Differential")
    job_ok(bacula, diff)
    assert f"/primary/rest: differential backup of job {diff['JobId']}, what changed since job {full['JobId']}" \
        in log.read_text(), log.read_text()
    # two more Fulls of ims-offsite prune its own older states, never ims-mail's
    job_ok(bacula, bacula.run_job("ims-offsite", "Full"))
    job_ok(bacula, bacula.run_job("ims-offsite", "Full"))
    out = imsbacula("history", "--check", check=True).stdout.decode()
    assert f"/primary/rest: chain of 2 jobs intact: {full['JobId']} -> {diff['JobId']} (FileSet ims-mail)" in out, out

    # ims-mail's chain restores the store: the Full then the Incremental, then the Differential
    store.delete_user("joe")
    job_ok(bacula, bacula.restore_job(full["JobId"], "ims-mail-restore"))
    assert inbox() == [1]
    job_ok(bacula, bacula.restore_job(incr["JobId"], "ims-mail-restore"))
    assert inbox() == [1, 2, 3]
    store.delete_user("joe")
    job_ok(bacula, bacula.restore_job(full["JobId"], "ims-mail-restore"))
    job_ok(bacula, bacula.restore_job(diff["JobId"], "ims-mail-restore"))
    assert inbox() == [1, 2, 3, 4]
    # and the next Incremental of ims-mail still builds on ims-mail's last job
    add()
    nxt = bacula.run_job("ims-mail", "Incremental")
    job_ok(bacula, nxt)
    assert f"incremental backup of job {nxt['JobId']}, what changed since job {diff['JobId']}" in log.read_text()


def test_a_user_the_fileset_has_no_stream_for_fails_the_job(ims_home, bacula):
    """'imsbacula fileset' writes a Plugin line per group that has users (per user with
    --per-user).  A user made afterwards in a group that had none, or any new user of a
    per-user FileSet, was in no stream: every stream exited 0, jobdone recorded the job
    as good and Bacula said "Backup OK" night after night while that mail was in no
    backup (FINDINGS-G 2).  The job now fails, its log naming the user and what to do;
    the FileSet written again backs the user up."""
    cfg = make_home(ims_home, "classic")
    (ims_home / "config" / "backup-groups.conf").write_text("groupA=a.*\ngroupB=b.*\nrest=.*\n")
    store = open_store(cfg)
    for u in ("alice", "joe"):
        store.create_user(u)
        store.append(u, "INBOX", io.BytesIO(msg(u, "INBOX", 0)), flags=["\\Seen"])

    def filesets():
        return "".join(imsbacula("fileset", *extra, "--client", bacula.client, check=True).stdout.decode()
                       for extra in ([], ["--per-user", "--name", "ims-users"]))

    conf = filesets()
    assert len(plugin_lines(conf)) == 2 + 2          # groupA, rest; alice, joe: no groupB line
    bacula.start(conf)
    job_ok(bacula, bacula.run_job("ims-mail", "Full"))
    job_ok(bacula, bacula.run_job("ims-users", "Full"))

    store.create_user("bob")                          # groupB: no Plugin line in either FileSet
    store.append("bob", "INBOX", io.BytesIO(msg("bob", "INBOX", 0)))
    for name in ("ims-mail", "ims-users"):
        job = bacula.run_job(name, "Incremental")
        assert job["JobStatus"] not in ("T", "W"), (job, bacula.log())
        log = bacula.log()
        assert f"job {job['JobId']}: /primary/groupB/bob: in no stream of this job's FileSet: NOT BACKED UP" \
            in log, log
        assert "write it again (imsbacula fileset -o ...)" in log, log

    # the FileSet written again holds bob: the job is good, and bob's mail restores
    conf = filesets()
    assert len(plugin_lines(conf)) == 3 + 3
    with open(bacula.include, "w") as f:
        f.write(conf)
    bacula.console("reload\n")
    full = bacula.run_job("ims-mail", "Full")
    job_ok(bacula, full)
    want = picture(store, ["bob"])
    store.delete_user("bob")
    job_ok(bacula, bacula.restore_job(full["JobId"], "ims-mail-restore"))
    same(picture(store, ["bob"]), want)
