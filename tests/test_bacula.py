"""The Bacula module end to end: imsbacula's FileSet in a real Bacula 9.6 (director,
storage and file daemons on 127.0.0.1), full and incremental jobs, restores of a
deleted user and a deleted folder, and the module's refusals."""
from __future__ import annotations

import contextlib
import io
import os
import re
import time

import pytest

from asm.store import open_store
from plugins.bacula.encoding import decode, encode
from plugins.bacula.state import State
from tests.dovecot import require_dovecot, running_dovecot
from tests.helpers import make_home, put, run

PLUGINS = "classic,maildir,localdevices,bacula"
DAY = 86400
GROUPS = "groupA=a.*\nrest=.*\n"


@pytest.fixture(autouse=True)
def _plugins(monkeypatch):
    monkeypatch.setenv("IMS_ASM_PLUGINS", PLUGINS)


def imsbacula(*args, input=None, check=False):
    """imsbacula from the venv with this test's IMS_HOME; ``check``: must exit 0."""
    return run(None, "imsbacula", *args, input=input, check=0 if check else None)


def msg(user: str, folder: str, i: int, size: int = 300) -> bytes:
    head = f"From: sender{i}@example.com\r\nTo: {user}@example.com\r\nSubject: {folder} #{i}\r\n\r\n"
    return head.encode() + (f"line {i} of {folder} for {user}\r\n" * (size // 30)).encode()


USERS = {               # user -> folders (groupA = a.*, rest = everyone else)
    "alice": ["INBOX", "Sent", "Work/2023"],
    "amy smith: q": ["INBOX", "Réunions/Été"],
    "bob": ["INBOX", "50% off; \"quoted\" 'too'"],
    "joe": ["INBOX", "Trash"],
}
FLAGS = [[], ["\\Seen"], ["\\Seen", "\\Answered"], ["\\Flagged"], ["\\Seen", "\\Draft"]]


def fill(store, old: float) -> None:
    for u, folders in USERS.items():
        store.create_user(u)
        for f in folders:
            if f != "INBOX":
                store.create_folder(u, f, subscribed=True)
            for i in range(6):
                store.append(u, f, io.BytesIO(msg(u, f, i)), flags=FLAGS[i % len(FLAGS)],
                             keywords=["$Label1"] if i == 2 else [], internaldate=old + i, stored=old + i)
    # a single-copy link: the same message in two users' INBOXes
    first = store.message("alice", "INBOX", 1)
    store.append("bob", "INBOX", None, link_from=first.path, flags=["\\Seen"], internaldate=first.internaldate,
                 stored=old, size_hint=first.size)


def picture(store, users=None) -> dict:
    """Everything a user relies on: folders with UIDVALIDITY, and per message UID, flags,
    keywords, INTERNALDATE and bytes."""
    out = {}
    for u in sorted(users or [u for p in store.partitions() for u in store.users(p)]):
        for f in store.folders(u):
            rows = []
            for m in store.messages(u, f.name):
                with store.open_message(u, f.name, m.uid) as fh:
                    data = fh.read()
                rows.append((m.uid, tuple(sorted(m.flags)), tuple(m.keywords), int(m.internaldate), data))
            out[(u, f.name)] = (f.uidvalidity, rows)
    return out


# -- without daemons: the FileSet text and the commands' refusals -----------------------

def test_encoding_round_trips_names_bpipe_would_split():
    for name in ["/primary/amy smith: q/INBOX", "/p/50% off; \"quoted\" 'too'", "/p/Réunions/Été", "/p/日本語"]:
        word = encode(name)
        assert re.fullmatch(r"[A-Za-z0-9_.,+=@/%-]+", word), word
        assert decode(word) == name
    latin1 = os.fsdecode(b"/p/j\xf6rg")            # a name that is not UTF-8: its bytes
    assert encode(latin1) == "/p/j%F6rg" and decode("/p/j%F6rg") == latin1
    with pytest.raises(ValueError):
        decode("/primary/a b")
    with pytest.raises(ValueError):
        decode("%zz")


def plugin_lines(text: str) -> list[list[str]]:
    """Each Plugin line split the way bpipe splits it: name, file, reader, writer."""
    out = []
    for line in text.splitlines():
        m = re.fullmatch(r'\s*Plugin = "(.*)"', line)
        if m:
            plugin, fname, reader, writer = m.group(1).split(":", 3)
            assert plugin == "bpipe"
            out.append([fname, reader.split(), writer.split()])
    return out


def test_fileset_has_one_line_per_group_and_partition(ims_home, tmp_path):
    cfg = make_home(ims_home, "classic", **{"partition:second.path": str(tmp_path / "second")})
    store = open_store(cfg)
    store.create_user("alice")
    store.create_user("zed")
    store.create_user("amy smith: q", "second")
    (ims_home / "config" / "backup-groups.conf").write_text(GROUPS)
    p = imsbacula("fileset", "--name", "mail-x", "--client", "host1-fd", check=True)
    text = p.stdout.decode()
    lines = plugin_lines(text)
    assert [fname for fname, _, _ in lines] == ["/MAILSTORE/primary/groupA", "/MAILSTORE/primary/rest",
                                                "/MAILSTORE/second/groupA"]
    fname, reader, writer = lines[0]
    assert reader[0].startswith("/") and reader[0].endswith("imsbacula")
    assert reader[-2:] == ["backup", "/primary/groupA"] and writer[-2:] == ["restore", "/primary/groupA"]
    assert f"--home={encode(str(ims_home))}" in reader
    assert "Name = \"mail-x\"" in text and "Client = \"host1-fd\"" in text
    assert "Type = Restore" in text and "jobstart --jobid %i --level %l" in text

    per_user = plugin_lines(imsbacula("fileset", "--per-user", check=True).stdout.decode())
    names = [fname for fname, _, _ in per_user]
    assert names == ["/MAILSTORE/primary/groupA/alice", "/MAILSTORE/primary/rest/zed",
                     "/MAILSTORE/second/groupA/amy%20smith%3A%20q"]
    assert decode(per_user[2][1][-1]) == "/second/groupA/amy smith: q"

    out = tmp_path / "ims-mail.conf"
    imsbacula("fileset", "-o", str(out), check=True)
    assert out.read_text().count("Plugin = ") == 3


def test_fileset_refuses_users_outside_every_group(ims_home):
    store = open_store(make_home(ims_home, "classic"))
    store.create_user("alice")
    store.create_user("zed")
    (ims_home / "config" / "backup-groups.conf").write_text("groupA=a.*\n")
    p = imsbacula("fileset")
    assert p.returncode == 2 and p.stdout == b""
    assert b"match no line of backup-groups.conf ('zed')" in p.stderr and b"rest=.*" in p.stderr
    p = imsbacula("fileset", "--name", "bad name")
    assert p.returncode == 2 and b"bad --name 'bad name'" in p.stderr


def test_per_user_fileset_of_a_user_whose_name_is_not_utf8(ims_home, tmp_path):
    """A Maildir user directory named with bytes that are not UTF-8 (b'j\\xf6rg'): the
    per-user FileSet names it by its bytes (%F6), and its stream backs up, is recorded
    by jobdone and restores under the same bytes."""
    part = tmp_path / "part"
    store = open_store(make_home(ims_home, "maildir", **{"partition:primary.path": str(part)}))
    (ims_home / "config" / "backup-groups.conf").write_text("rest=.*\n")
    md = os.path.join(os.fsencode(part), b"j\xf6rg", b"Maildir")
    for sub in (b"cur", b"new", b"tmp"):
        os.makedirs(os.path.join(md, sub))
    with open(os.path.join(md, b"cur", b"1700000000.M1P1.h,S=14:2,S"), "wb") as f:
        f.write(b"Subject: j\r\n\r\n")
    p = imsbacula("fileset", "--per-user")
    assert p.returncode == 0, p.stderr
    lines = plugin_lines(p.stdout.decode("ascii"))
    assert [fname for fname, _, _ in lines] == ["/MAILSTORE/primary/rest/j%F6rg"]
    reader = lines[0][1]
    imsbacula("jobstart", "--jobid", "3", "--level", "Full", check=True)
    archive = imsbacula(*reader[1:], check=True).stdout
    done = imsbacula("jobdone", "--jobid", "3", check=True)
    assert b"/primary/rest/j\xf6rg full recorded as good: 1 messages" in done.stdout, done.stdout
    assert b"/primary/rest/j\xf6rg\t3\t" in imsbacula("history", check=True).stdout
    user = os.fsdecode(b"j\xf6rg")
    want = picture(store, [user])
    assert [r[1] for r in want[(user, "INBOX")][1]] == [("\\Seen",)]
    store.delete_user(user)
    imsbacula(*lines[0][2][1:], input=archive, check=True)
    assert picture(store, [user]) == want


def test_backup_fails_when_imsbackup_fails_and_records_nothing(ims_home):
    store = open_store(make_home(ims_home, "classic"))
    store.create_user("alice")
    imsbacula("jobstart", "--jobid", "7", "--level", "Incremental", check=True)
    p = imsbacula("-E", "backup", "/primary/nogroup/alice")      # not a group: imsbackup refuses
    assert p.returncode == 2
    assert b"imsbackup failed with exit status 2" in p.stderr
    done = imsbacula("jobdone", "--jobid", "7")          # the Job's After RunScript fails the job
    assert done.returncode == 1
    assert b"job 7: /primary/nogroup/alice FAILED (imsbackup exit status 2)" in done.stdout
    assert b"no good backup job recorded" in imsbacula("history", check=True).stdout
    p = imsbacula("-E", "backup", "/primary/a b")
    assert p.returncode == 2 and b"not a percent-encoded word" in p.stderr


@pytest.mark.parametrize("sig", ["TERM", "KILL"])
def test_a_stream_killed_before_it_ended_fails_the_job(ims_home, tmp_path, sig):
    """imsbacula killed while imsbackup streams (the job cancelled, an OOM kill, an
    admin's kill of the process group): the stream is no good one, and jobdone, the
    Job's After RunScript, must fail the job naming it; a stream that ends well after
    it is recorded as good."""
    import signal
    import subprocess

    from tests.helpers import popen
    store = open_store(make_home(ims_home, "classic"))
    (ims_home / "config" / "backup-groups.conf").write_text(GROUPS)
    store.create_user("alice")
    for i in range(40):
        store.append("alice", "INBOX", io.BytesIO(msg("alice", "INBOX", i, size=200_000)))
    imsbacula("jobstart", "--jobid", "7", "--level", "Full", check=True)
    with open(tmp_path / "stream", "wb") as out:
        p = popen(None, "imsbacula", "-E", "backup", "/primary/groupA", stdout=out, stderr=subprocess.DEVNULL,
                  start_new_session=True)
        deadline = time.monotonic() + 30
        while (tmp_path / "stream").stat().st_size == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(p.pid, getattr(signal, f"SIG{sig}"))
        p.wait()
    assert p.returncode != 0
    done = imsbacula("jobdone", "--jobid", "7")
    assert done.returncode == 1, done.stdout
    assert b"job 7: /primary/groupA FAILED (it did not finish: interrupted or killed)" in done.stdout
    assert b"no good backup job recorded" in imsbacula("history", check=True).stdout
    # the next job's stream ends well: recorded, and jobdone passes
    imsbacula("jobstart", "--jobid", "8", "--level", "Full", check=True)
    with open(tmp_path / "stream2", "wb") as out:
        assert popen(None, "imsbacula", "-E", "backup", "/primary/groupA", stdout=out).wait() == 0
    done = imsbacula("jobdone", "--jobid", "8", check=True)
    assert b"/primary/groupA full recorded as good" in done.stdout and b"FAILED" not in done.stdout


def test_a_job_in_which_no_stream_ran_fails(ims_home):
    """jobstart ran but no bpipe stream of the job started or was recorded (the file
    daemon without 'Plugin Directory', imsbacula killed before it wrote a word): Bacula
    ends such a job OK with 0 files; jobdone must fail it, saying why."""
    store = open_store(make_home(ims_home, "classic"))
    store.create_user("alice")
    imsbacula("jobstart", "--jobid", "9", "--level", "Full", check=True)
    done = imsbacula("jobdone", "--jobid", "9")
    assert done.returncode == 1, done.stdout
    assert b"job 9: no stream of this job ran to its end" in done.stdout, done.stdout
    assert b"no good backup job recorded" in imsbacula("history", check=True).stdout


def test_incremental_streams_build_on_the_last_good_state(ims_home):
    """Without daemons, as the RunScripts and bpipe call it: a Full, an Incremental on
    its state (carries only the change), a Differential on the Full's; history --check
    walks the chain; a lost state means a full next time, said."""
    store = open_store(make_home(ims_home, "classic"))
    (ims_home / "config" / "backup-groups.conf").write_text(GROUPS)
    for i in range(3):
        store.create_user(f"a{i}")
        store.append(f"a{i}", "INBOX", io.BytesIO(msg(f"a{i}", "INBOX", i)))

    def job(jobid, level):
        imsbacula("jobstart", "--jobid", str(jobid), "--level", level, check=True)
        p = imsbacula("-E", "backup", "/primary/groupA", check=True)
        done = imsbacula("jobdone", "--jobid", str(jobid), check=True).stdout.decode()
        m = re.search(r"recorded as good: (\d+) messages", done)
        return p, int(m.group(1))

    assert job(1, "Full")[1] == 3
    m = store.message("a0", "INBOX", 1)                    # a move: a link in another folder
    store.create_folder("a0", "Archive")
    store.append("a0", "Archive", None, link_from=m.path, flags=m.flags, internaldate=m.internaldate)
    store.expunge("a0", "INBOX", [1])
    p, n = job(2, "Incremental")
    assert n == 1 and b"what changed since job 1" in open(ims_home / "data" / "bacula" / "log" / "ims-mail.log",
                                                           "rb").read()
    assert job(3, "Differential")[1] == 1                  # on the Full: the move again
    out = imsbacula("history", "--check", check=True).stdout.decode()
    assert "/primary/groupA: chain of 2 jobs intact: 1 -> 3" in out, out
    # the Full's state lost: the next incremental (on job 3) still builds; a differential
    # (on the Full) is taken full, said in the job log
    os.unlink(ims_home / "data" / "bacula" / "states" / "good" / State._key("/primary/groupA") / "1.state")
    p = imsbacula("history", "--check")
    assert p.returncode == 7 and b"no good job of this path holds" in p.stdout, p.stdout
    imsbacula("jobstart", "--jobid", "4", "--level", "Differential", check=True)
    p = imsbacula("-E", "backup", "/primary/groupA", check=True)
    assert b"the state of job 1 (the base of this differential) is missing" in p.stderr and b"taking a full" in p.stderr
    done = imsbacula("jobdone", "--jobid", "4", check=True).stdout.decode()
    assert "/primary/groupA full recorded as good: 3 messages" in done, done


def test_select_and_restore_of_a_stream_without_the_selection(ims_home):
    store = open_store(make_home(ims_home, "classic"))
    store.create_user("alice")
    store.create_user("bob")
    (ims_home / "config" / "backup-groups.conf").write_text(GROUPS)
    imsbacula("jobstart", "--jobid", "1", "--level", "Full", check=True)
    archive = imsbacula("-E", "backup", "/primary/rest", check=True).stdout
    assert len(archive) % 10240 == 0 and archive
    assert b"/primary/groupA/alice" in imsbacula("select", "/primary/groupA/alice", check=True).stdout
    # the stream of group 'rest' holds nothing selected: read it all, restore nothing, succeed
    p = imsbacula("-E", "restore", "/primary/rest", input=archive, check=True)
    assert b"nothing selected in this stream" in p.stderr
    assert b"everything" in imsbacula("select", "--clear", check=True).stdout
    for bad, why in (("primary/joe", b"must start with '/'"), ("/", b"selects everything"),
                     ("/secondary/mike", b"there is no partition 'secondary'")):
        p = imsbacula("select", bad)
        assert p.returncode == 2 and why in p.stderr, p.stderr
    assert b"everything" in imsbacula("select", check=True).stdout        # nothing was selected


def test_a_selected_user_is_restored_from_a_stream_of_a_group_split_since(ims_home):
    """A restore job of a group's stream taken before the groups changed (gA=[a-f].*
    split into gA=[a-c].* and gB=[d-f].*): the old gA stream holds dave, today's gA
    does not.  'imsbacula select /primary/dave' must restore dave from it (the stream
    says what it holds, not today's backup-groups.conf); a stream that does not hold
    dave is read to the end and skipped."""
    store = open_store(make_home(ims_home, "classic"))
    groups = ims_home / "config" / "backup-groups.conf"
    groups.write_text("gA=[a-f].*\nrest=.*\n")
    for u in ("alice", "dave", "zoe"):
        store.create_user(u)
        for i in range(3):
            store.append(u, "INBOX", io.BytesIO(msg(u, "INBOX", i)), flags=FLAGS[i])
    want = picture(store, ["dave"])
    gA = imsbacula("backup", "--level", "Full", "/primary/gA", check=True).stdout
    rest = imsbacula("backup", "--level", "Full", "/primary/rest", check=True).stdout
    store.delete_user("dave")
    groups.write_text("gA=[a-c].*\ngB=[d-f].*\nrest=.*\n")
    imsbacula("select", "/primary/dave", check=True)
    p = imsbacula("-E", "restore", "/primary/rest", input=rest, check=True)
    assert b"nothing selected in this stream" in p.stderr, p.stderr
    assert "dave" not in store.users("primary")
    p = imsbacula("-E", "restore", "/primary/gA", input=gA, check=True)
    assert b"nothing selected" not in p.stderr, p.stderr
    assert picture(store, ["dave"]) == want
    assert sorted(store.users("primary")) == ["alice", "dave", "zoe"]


def test_a_restore_stream_whose_backup_could_not_read_a_selected_folder_fails_the_job(ims_home, tmp_path):
    """A group's stream whose backup could not read alice's Work (its trailer names it):
    a restore job selecting alice, and a user this stream does not hold (another
    group's), restores alice's other mail and fails (exit 1, as imsrestore and imsverify
    of the same archive), never passes as "not in this stream".  Before, the other
    path's miss hid Work: exit 0."""
    from tests.test_backup import _break_folder
    store = open_store(make_home(ims_home, "classic"))
    (ims_home / "config" / "backup-groups.conf").write_text(GROUPS)
    for f in ("INBOX", "Work"):
        for i in range(2):
            put(store, "alice", f, i)
    put(store, "zoe", "INBOX", 1)
    _break_folder(store, "alice", "Work")
    archive = run(None, "imsbackup", "-f", "-", "/primary/groupA", check=1).stdout
    dest = tmp_path / "dest"
    got = open_store(make_home(dest, "classic"))
    (dest / "config" / "backup-groups.conf").write_text(GROUPS)
    env = {"IMS_HOME": str(dest)}
    for chosen in (["/primary/alice"], ["/primary/alice", "/primary/zoe"]):
        run(dest, "imsbacula", "select", *chosen, env=env, check=0)
        p = run(dest, "imsbacula", "-E", "restore", "/primary/groupA", input=archive, env=env)
        assert p.returncode == 1, p.stderr
        assert b"/primary/alice/Work: the backup that made this archive could not read it" in p.stderr, p.stderr
        assert len(got.messages("alice", "INBOX")) == 2


def test_a_restore_job_whose_selection_no_stream_holds_fails(ims_home):
    """As the restore Job's RunScripts and bpipe call it: a selected user that no
    stream of the job holds (the wrong group's file marked) is restored by nothing, so
    'restoredone' (After, FailJobOnError) fails the job naming it; a job whose streams
    held it passes."""
    store = open_store(make_home(ims_home, "classic"))
    (ims_home / "config" / "backup-groups.conf").write_text(GROUPS)
    for u in ("alice", "bob"):
        store.create_user(u)
        store.append(u, "INBOX", io.BytesIO(msg(u, "INBOX", 1)))
    gA = imsbacula("backup", "--level", "Full", "/primary/groupA", check=True).stdout
    rest = imsbacula("backup", "--level", "Full", "/primary/rest", check=True).stdout
    store.delete_user("bob")
    imsbacula("select", "/primary/user/bob", check=True)
    imsbacula("restorestart", "--jobid", "5", check=True)
    p = imsbacula("-E", "restore", "/primary/groupA", input=gA, check=True)
    assert b"nothing selected in this stream" in p.stderr
    done = imsbacula("restoredone", "--jobid", "5")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert b"restore job 5: /primary/user/bob: no stream of this job holds it" in done.stdout, done.stdout
    assert "bob" not in store.users("primary")
    imsbacula("restorestart", "--jobid", "6", check=True)
    imsbacula("-E", "restore", "/primary/groupA", input=gA, check=True)
    imsbacula("-E", "restore", "/primary/rest", input=rest, check=True)
    imsbacula("restoredone", "--jobid", "6", check=True)
    assert [m.uid for m in store.messages("bob", "INBOX")] == [1]
    # without a selection there is nothing to miss
    imsbacula("select", "--clear", check=True)
    imsbacula("restorestart", "--jobid", "7", check=True)
    imsbacula("restoredone", "--jobid", "7", check=True)


# -- with real daemons -------------------------------------------------------------------

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
