"""msconfig, mboxutil, imsimport and imsdeliver run as real commands, the way an
administrator runs them, with the store checked afterwards through the driver."""
from __future__ import annotations

import email.utils
import io
import os
import re
import subprocess
import time

import pytest

from asm.config import Config
from asm.store import open_store
from tests.helpers import MBOX, MBOX_ONE, MBOX_THREE, MBOX_TWO, command, command_env, local_time, popen, run

MSG = b"From: a@example.com\r\nTo: joe@example.com, ann@example.com, bob@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


def out(proc) -> str:
    return proc.stdout.decode()


def err(proc) -> str:
    return proc.stderr.decode()


def fresh_store():
    return open_store(Config())


# -- msconfig -------------------------------------------------------------------
def test_msconfig_set_show_unset(ims_home):
    p = run(ims_home, "msconfig", "set", "store.backupexclude", "Trash%Bulk Mail", text=True)
    assert p.returncode == 0
    # what the list was read as is said: a folder named '50% off' cannot be named there
    assert p.stderr.splitlines()[-1] + "\n" == ("msconfig: user backups now leave out the folders 'Trash', 'Bulk Mail' and the "
                        "folders below them, in any case ('%' separates names)\n"), p.stderr
    p = run(ims_home, "msconfig", "set", "store.backupexclude", "50% off", text=True)
    assert p.returncode == 0 and p.stderr == (
        "msconfig: user backups now leave out the folders '50', 'off' and the folders below them, "
        "in any case ('%' separates names)\n"), p.stderr
    p = run(ims_home, "msconfig", "set", "store.backupexclude", "Trash%Bulk Mail", check=0)
    p = run(ims_home, "msconfig", "show", "store.backupexclude")
    assert p.returncode == 0 and out(p) == "role.store.backupexclude = Trash%Bulk Mail\n"
    assert out(run(ims_home, "msconfig", "show", "store.driver")) == "role.store.driver = classic\n"  # a default
    listing = out(run(ims_home, "msconfig", "show")).splitlines()
    assert "role.store.backupexclude = Trash%Bulk Mail" in listing
    assert "role.ssh.port = 22" in listing
    assert all(line.startswith("role.") for line in listing)
    assert listing == sorted(listing)
    full = out(run(ims_home, "msconfig", "show", "-a"))
    assert "# role.ssh.identity (not set)" in full
    assert run(ims_home, "msconfig", "unset", "store.backupexclude").returncode == 0
    assert out(run(ims_home, "msconfig", "show", "store.backupexclude")) == ""
    assert Config().get("store.backupexclude") is None


def test_msconfig_console_script(ims_home, tmp_path):
    """The command pip put in the venv's bin works by its path alone, as from cron: from
    another directory, with a PATH that does not hold it and no PYTHONPATH."""
    cron = {"PATH": "/usr/bin:/bin", "PYTHONPATH": None}
    p = run(ims_home, "msconfig", "set", "ssh.port", "2022", env=cron, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert run(ims_home, "msconfig", "show", "ssh.port", env=cron, cwd=tmp_path).stdout == b"role.ssh.port = 2022\n"


@pytest.mark.parametrize("args,words", [
    (["set", "store.drvier", "classic"], ["unknown option 'store.drvier'", "store.driver"]),
    (["show", "no.such"], ["unknown option 'no.such'"]),
    (["unset", "ssh.prot"], ["unknown option 'ssh.prot'"]),
    (["set", "store.driver", "mbox"], ["store.driver", "classic, maildir"]),
    (["set", "ssh.port", "0"], ["ssh.port", "between 1 and 65535"]),
    (["set", "partition:second.path", "relative/dir"], ["partition:second.path", "absolute path"]),
    (["set", "partition:second.path", "/a\nstore.driver = bogus"], ["partition:second.path"]),
    (["set", "store.driver"], ["msconfig"]),                 # missing value: usage error
])
def test_msconfig_refusals(ims_home, args, words):
    p = run(ims_home, "msconfig", *args)
    assert p.returncode == 2
    assert out(p) == ""
    lines = err(p).splitlines()
    assert len(lines) == 1 and lines[0].startswith("msconfig"), err(p)
    for w in words:
        assert w in lines[0]
    assert not os.path.exists(ims_home / "config" / "msg.conf")


def test_msconfig_partition_path_absolute(ims_home):
    assert run(ims_home, "msconfig", "set", "partition:second.path", "/srv/mail/second/").returncode == 0
    assert out(run(ims_home, "msconfig", "show", "partition:second.path")) == "role.partition:second.path = /srv/mail/second\n"


def test_msconfig_without_ims_home(tmp_path):
    p = run(None, "msconfig", "show", env={"IMS_HOME": None}, cwd=tmp_path)
    assert p.returncode == 2
    assert err(p) == "msconfig: IMS_HOME is not set: export IMS_HOME=/path/to/installation\n"


def test_msconfig_writes_atomically_under_concurrency(ims_home):
    procs = [popen(ims_home, "msconfig", "set", f"partition:p{i}.path", f"/srv/mail/p{i}", stderr=subprocess.PIPE)
             for i in range(20)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    conf = ims_home / "config"
    assert not [n for n in os.listdir(conf) if n.startswith(".tmp")], "temporary files left behind"
    cfg = Config()                                   # parses
    parts = cfg.partitions()
    assert {f"p{i}": f"/srv/mail/p{i}" for i in range(20)}.items() <= parts.items(), "a set was lost"
    lines = (conf / "msg.conf").read_text().splitlines()
    assert lines[0].startswith("#") and len(lines) == 21


# -- mboxutil ---------------------------------------------------------------------
def test_mboxutil_create_list_delete(config, ims_home):
    assert run(ims_home, "mboxutil", "-c", "user/joe").returncode == 0
    assert run(ims_home, "mboxutil", "-c", "user/joe/Work/2023").returncode == 0
    assert run(ims_home, "mboxutil", "-c", "user/ann/Sent").returncode == 0     # creates ann too
    s = fresh_store()
    assert [f.name for f in s.folders("joe")] == ["INBOX", "Work/2023"]
    assert [f.name for f in s.folders("ann")] == ["INBOX", "Sent"]
    assert s.folder("joe", "Work/2023").subscribed
    s.deliver(["joe"], io.BytesIO(MSG))
    p = run(ims_home, "mboxutil", "-l")
    assert p.returncode == 0
    rows = out(p).splitlines()
    assert rows[0].split() == ["msgs", "bytes", "uidvalidity", "uidnext", "mailbox"]
    inbox = next(r for r in rows if r.endswith("user/joe/INBOX")).split()
    assert inbox[0] == "1" and inbox[1] == str(len(MSG)) and inbox[3] == "2"
    assert any(r.endswith("user/ann/Sent") for r in rows)
    only = out(run(ims_home, "mboxutil", "-l", "-p", "user/joe/*")).splitlines()[1:]
    assert [r.split()[-1] for r in only] == ["user/joe/INBOX", "user/joe/Work/2023"]

    assert run(ims_home, "mboxutil", "-d", "user/joe/Work/2023").returncode == 0
    assert not fresh_store().exists("joe", "Work/2023")
    assert run(ims_home, "mboxutil", "-d", "user/ann").returncode == 0
    assert not fresh_store().exists("ann")


def test_mboxutil_list_marks_unsubscribed_apart_from_the_name(config, ims_home):
    """A subscribed folder named 'W  (unsubscribed)' printed exactly like an unsubscribed
    'W': the marker was appended with two spaces, which a name may hold.  It now follows
    a tab, which no name holds: the mailbox is the line's last column up to a tab."""
    run(ims_home, "mboxutil", "-c", "user/joe/W", check=0)
    run(ims_home, "mboxutil", "-c", "user/joe/W  (unsubscribed)", check=0)
    fresh_store().set_folder("joe", "W", subscribed=False)
    rows = out(run(ims_home, "mboxutil", "-l", check=0)).splitlines()[1:]
    names = [re.match(r"^ *\d+ +\d+ +\d+ +\d+  (.*)$", r).group(1).split("\t") for r in rows]
    assert sorted(names) == [["user/joe/INBOX"], ["user/joe/W", "(unsubscribed)"],
                             ["user/joe/W  (unsubscribed)"]], rows
    assert [r.split()[4] for r in rows] == ["user/joe/INBOX", "user/joe/W", "user/joe/W"]   # awk '{print $5}'


def test_mboxutil_errors(config, ims_home):
    assert run(ims_home, "mboxutil", "-c", "user/joe").returncode == 0
    p = run(ims_home, "mboxutil", "-c", "joe")
    assert p.returncode == 2 and "user/<uid>" in err(p)
    p = run(ims_home, "mboxutil", "-c", "user/joe")
    assert p.returncode != 0 and "already exists" in err(p)
    p = run(ims_home, "mboxutil", "-d", "user/joe/Nope")
    assert p.returncode != 0 and "Nope" in err(p)
    p = run(ims_home, "mboxutil", "-c", "user/joe/a//b")
    assert p.returncode != 0 and "bad folder name" in err(p)
    assert run(ims_home, "mboxutil").returncode == 2


def test_mboxutil_p_is_never_passed_over(config, ims_home):
    """-p is the partition of a user -c makes (or the pattern of -l).  Given where it
    is not used, it was passed over, exit 0: a folder made for an existing user with a
    mistyped partition (-p nopart), or -d with -p.  Refused (exit 2, one line, nothing
    done); a -p that names the user's own partition is fine."""
    assert run(ims_home, "mboxutil", "-c", "user/joe").returncode == 0
    for argv, says in ((["-c", "user/joe/Z", "-p", "nopart"], "user 'joe' is on partition 'primary', not 'nopart'"),
                       (["-d", "user/joe", "-p", "primary"], "-p is not used with -d")):
        p = run(ims_home, "mboxutil", *argv)
        assert p.returncode == 2 and says in err(p) and err(p).count("\n") == 1, (argv, p.returncode, err(p))
    names = out(run(ims_home, "mboxutil", "-l", check=0))
    assert "user/joe/INBOX" in names and "user/joe/Z" not in names, names      # nothing made, nothing deleted
    assert run(ims_home, "mboxutil", "-c", "user/joe/Z", "-p", "primary").returncode == 0
    assert run(ims_home, "mboxutil", "-c", "user/ann/Sent", "-p", "primary").returncode == 0   # makes ann there


def test_mboxutil_a_name_with_an_empty_level_is_never_its_parent(config, ims_home):
    """mboxutil -d "user/joe/$FOLDER" with FOLDER empty deleted the whole user: a name
    with an empty level is refused (exit 2, one line), whatever the option."""
    assert run(ims_home, "mboxutil", "-c", "user/joe/Old").returncode == 0
    run(ims_home, "imsdeliver", "joe", input=MSG, check=0)
    before = out(run(ims_home, "mboxutil", "-l", check=0))
    said = {"user/joe/": "bad mailbox name 'user/joe/': no folder after the last '/'",
            "user//joe": "bad mailbox name 'user//joe'",
            "user/joe//": "bad folder name '/'", "user/joe//Old": "bad folder name '/Old'",
            "user/joe/Old/": "bad folder name 'Old/'", "user/joe/Old//": "bad folder name 'Old//'",
            "": "bad mailbox name ''"}          # (-c '': an internal error, 70, before)
    for opt in ("-d", "-c"):
        for name, line in said.items():
            p = run(ims_home, "mboxutil", opt, name)
            assert p.returncode == 2, (opt, name, err(p))
            assert err(p).count("\n") == 1 and err(p).startswith(f"mboxutil: {line}"), (opt, err(p))
    assert out(run(ims_home, "mboxutil", "-l", check=0)) == before
    assert fresh_store().messages("joe", "INBOX")


def _filled_runs(argv, mnt, tmp_path, base, n: int, seed: int, after_count=None):
    """``argv`` run once with room (its steps counted; ``after_count()`` then sees that
    store), then once per fill point -- the store's disk, ``mnt``, written full before
    one of its steps, ``n`` points spread over them -- each on a fresh copy of ``base``
    at ``mnt/h``.  Yields (point, result, the filler file); the copy goes after each."""
    import shutil
    from tests.faults import count_steps, run_with_fault, spread
    home, filler = mnt / "h", mnt / "filler"
    shutil.copytree(base, home)
    total, p = count_steps(argv, mnt, tmp_path, env={"IMS_HOME": str(home)})
    assert p.returncode == 0, p.stderr
    if after_count is not None:
        after_count()
    shutil.rmtree(home)
    for k in spread(total, n, seed):
        shutil.copytree(base, home)
        r = run_with_fault(argv, mnt, f"fill:{k}", env={"IMS_HOME": str(home), "IMS_FAULT_FILL": str(filler)})
        assert r.returncode in (0, 13), (k, err(r))
        yield k, r, filler
        shutil.rmtree(home)


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_mboxutil_c_user_on_a_disk_that_fills_up_anywhere_then_run_again_makes_the_user(tmp_path, driver):
    """``mboxutil -c user/newbie`` with the store's disk filling up (a real tmpfs written
    full) before each of its steps in turn: exit 13 ("run the same command again"), and
    the same command with room makes the user with its INBOX.  Before, in the classic
    store, a full disk once the user was listed but before its INBOX was made left a
    user without INBOX, and the same command said "user already exists", exit 2."""
    from tests.helpers import make_home, small_tmpfs
    mnt = tmp_path / "mnt"
    with small_tmpfs(mnt, "4m"):
        base, home = tmp_path / "base", mnt / "h"
        store = open_store(make_home(base, driver))
        store.create_user("joe")
        getattr(store, "close", lambda: None)()
        argv = ["mboxutil", "-c", "user/newbie"]
        statuses = set()
        for k, r, filler in _filled_runs(argv, mnt, tmp_path, base, 14, 2):
            statuses.add(r.returncode)
            if filler.exists():
                os.unlink(filler)
            if r.returncode == 13:
                assert err(r).count("\n") == 1 and "full" in err(r), (k, err(r))
                run(home, *argv, env={"IMS_HOME": str(home)}, check=0)
            s = open_store(Config(str(home)))
            try:
                assert [f.name for f in s.folders("newbie")] == ["INBOX"], k
            finally:
                getattr(s, "close", lambda: None)()
        assert 13 in statuses, statuses


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_imsdeliver_to_several_users_on_a_disk_that_fills_up_anywhere_names_who_has_it(tmp_path, driver):
    """``imsdeliver -m FILE alice bob carol`` with the store's disk written full before
    each of 16 of its steps: exit 13 and one line; when some recipients have the message
    already, the line names them and the others, and a delivery to the others only
    leaves every recipient with exactly one copy, byte for byte.  (It said only "no space
    left", and the mail server's retry to all three gave the first ones two copies.)"""
    from tests.helpers import make_home, small_tmpfs
    users = ["alice", "bob", "carol"]
    body = b"Subject: once\r\n\r\n" + b"x" * 40_000 + b"\r\n"
    msg = tmp_path / "m.eml"
    msg.write_bytes(body)
    mnt = tmp_path / "mnt"
    with small_tmpfs(mnt, "4m"):
        base, home = tmp_path / "base", mnt / "h"
        store = open_store(make_home(base, driver))
        for u in users:
            store.create_user(u)
        getattr(store, "close", lambda: None)()
        argv = ["imsdeliver", "-m", str(msg)] + users
        partly, bad = 0, []
        for k, r, filler in _filled_runs(argv, mnt, tmp_path, base, 16, 7):
            if filler.exists():
                os.unlink(filler)
            s = open_store(Config(str(home)))
            try:
                have = [u for u in users if s.messages(u, "INBOX")]
            finally:
                getattr(s, "close", lambda: None)()
            rest = [u for u in users if u not in have]
            if r.returncode == 13:
                line = err(r)
                if line.count("\n") != 1:
                    bad.append((k, "lines", line))
                elif have:
                    partly += 1
                    named = line.partition("delivered already to ")[2].partition(" (they keep it)")[0].split()
                    again = line.partition("deliver it again to ")[2].partition(" only")[0].split()
                    if named != have or again != rest or "same command" in line:
                        bad.append((k, have, line))
                if rest:
                    run(home, "imsdeliver", "-m", msg, *rest, env={"IMS_HOME": str(home)}, check=0)
            elif have != users:
                bad.append((k, "exit 0", have))
            s = open_store(Config(str(home)))
            try:
                got = {}
                for u in users:
                    got[u] = []
                    for m in s.messages(u, "INBOX"):
                        with s.open_message(u, "INBOX", m.uid) as f:
                            got[u].append(f.read())
            finally:
                getattr(s, "close", lambda: None)()
            if got != {u: [body] for u in users}:
                bad.append((k, "copies", {u: len(v) for u, v in got.items()}))
        assert bad == [], bad
        assert partly >= 1


# -- imsimport --------------------------------------------------------------------
def test_imsimport_mbox(config, ims_home, tmp_path):
    mbox = tmp_path / "joe.mbox"
    mbox.write_bytes(MBOX)
    assert run(ims_home, "mboxutil", "-c", "user/joe").returncode == 0
    p = run(ims_home, "imsimport", "-u", "joe", "-s", str(mbox), "-d", "Imported", "-v")
    assert p.returncode == 0, err(p)
    assert "imported 3 messages" in err(p)
    s = fresh_store()
    assert s.folder("joe", "Imported").subscribed
    msgs = s.messages("joe", "Imported")
    assert [m.uid for m in msgs] == [1, 2, 3]
    bodies = []
    for m in msgs:
        with s.open_message("joe", "Imported", m.uid) as f:
            bodies.append(f.read())
    assert bodies == [MBOX_ONE, MBOX_TWO, MBOX_THREE]
    assert [m.size for m in msgs] == [len(MBOX_ONE), len(MBOX_TWO), len(MBOX_THREE)]
    assert msgs[0].flags == {"\\Seen", "\\Answered", "\\Flagged"}
    assert msgs[1].flags == frozenset()
    assert msgs[2].flags == {"\\Deleted", "\\Draft"}
    assert [int(m.internaldate) for m in msgs] == [int(local_time(2024, 1, 1, 10, 0, 0)),
                                                   int(local_time(2000, 2, 29, 23, 59, 59)),
                                                   int(local_time(1998, 7, 4, 12, 0, 0))]
    assert all(abs(m.stored - time.time()) < 120 for m in msgs)


def test_imsimport_of_a_from_line_of_9999_local_time_backs_up_and_restores(config, ims_home, tmp_path):
    """"From a@b Fri Dec 31 23:59:59 9999" under TZ=America/New_York is 10000-01-01
    UTC: imsimport and imsbackup exited 0, imsrestore refused the member (pax mtime
    253402318799 out of range), exit 4, 1 of 2 restored.  The date imported is the last
    IMAP holds, 9999-12-31 23:59:59 UTC, and both messages back up and restore."""
    env = {"TZ": "America/New_York"}
    mbox = tmp_path / "m.mbox"
    mbox.write_bytes(b"From a@b Fri Dec 31 23:59:59 9999\nSubject: a\n\nx\n\n"
                     b"From a@b Mon Jan  1 10:00:00 2024\nSubject: b\n\ny\n")
    run(ims_home, "mboxutil", "-c", "user/joe", check=0)
    run(ims_home, "imsimport", "-u", "joe", "-s", str(mbox), env=env, check=0)
    assert [m.internaldate for m in fresh_store().messages("joe", "INBOX")] == [253402300799, 1704121200]
    run(ims_home, "imsbackup", "-f", tmp_path / "a.ims", "/", env=env, check=0)
    dest = tmp_path / "dest"
    os.makedirs(dest)
    Config(home=str(dest)).set("store.driver", config.get("store.driver"))
    run(dest, "imsrestore", "-f", tmp_path / "a.ims", env=env, check=0)
    got = open_store(Config(home=str(dest))).messages("joe", "INBOX")
    assert [m.internaldate for m in got] == [253402300799, 1704121200]


def test_imsimport_into_a_maildir_on_ext4_names_each_date_it_cannot_keep(tmp_path):
    """An mbox whose From_ lines carry dates ext4 cannot hold (before 1901-12-13 20:45:52
    or after 2446-05-10) imported into a Maildir store on ext4 (INTERNALDATE is the
    file's mtime): every message is imported, its bytes whole, and each one whose
    INTERNALDATE the store could not keep, and only those, is named with its place in
    the mbox and its UID, exit 1.  Before, they got another date and the run exited 0."""
    from tests.helpers import make_home, small_ext4
    days = ["Wed, 01 Jan 1800 00:00:00 +0000", "Fri, 13 Dec 1901 20:45:51 +0000",
            "Fri, 13 Dec 1901 20:45:52 +0000", "Tue, 01 Jan 2030 12:00:00 +0000",
            "Sat, 10 May 2446 00:00:00 +0000", "Wed, 01 Jan 3000 00:00:00 +0000",
            "Fri, 31 Dec 9999 23:59:59 +0000"]
    bodies = [f"Subject: {i}\n\nmessage {i}\n".encode() for i in range(len(days))]
    mbox = tmp_path / "m.mbox"
    mbox.write_bytes(b"\n".join(f"From a@b {d}\n".encode() + b for d, b in zip(days, bodies)))
    with small_ext4(tmp_path / "ext4") as mnt:
        home = tmp_path / "ims"
        store = open_store(make_home(home, "maildir", **{"partition:primary.path": str(mnt)}))
        store.create_user("joe")
        p = run(home, "imsimport", "-u", "joe", "-s", mbox, text=True)
        got = store.messages("joe", "INBOX")
        assert len(got) == len(days)
        for i, m in enumerate(got):
            with open(m.path, "rb") as f:
                assert f.read() == bodies[i]
        want = [email.utils.parsedate_to_datetime(d).timestamp() for d in days]
        lost = [i for i, m in enumerate(got) if int(m.internaldate) != int(want[i])]
        assert {0, 1, 5, 6} <= set(lost) and not {2, 3} & set(lost), [m.internaldate for m in got]
        assert p.returncode == 1, p.stderr
        lines = p.stderr.splitlines()
        assert len(lines) == len(lost), p.stderr
        for line, i in zip(lines, lost):
            assert line.startswith(f"imsimport: user/joe/INBOX: message {i + 1} of the mbox (UID {got[i].uid}): "
                                   f"its INTERNALDATE "), line
            assert "could not be kept" in line and line.endswith("the message is imported with that date"), line


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_imsimport_on_a_disk_that_fills_up_anywhere_then_run_again_imports_the_mbox_once(tmp_path, driver):
    """The store's disk fills up (a real tmpfs written full) before each of imsimport's
    steps in turn: exit 13, one line, and the same command run again once there is room,
    as that line says, leaves the folder with the mbox's messages once each, as one run
    with room does.  Before, a Maildir kept every message imported before the disk
    filled and the rerun imported them again (the classic store's index rolled them
    back): up to 29 of 30 messages twice; the line said "(after N messages)" of a
    classic import that had left none."""
    import hashlib
    from tests.helpers import make_home, small_tmpfs
    mnt = tmp_path / "mnt"
    with small_tmpfs(mnt, "4m"):
        base, home = tmp_path / "base", mnt / "h"
        store = open_store(make_home(base, driver))
        store.create_user("joe")
        store.append("joe", "INBOX", io.BytesIO(b"Subject: there before\r\n\r\nold\r\n"))
        getattr(store, "close", lambda: None)()
        with open(base / "in.mbox", "wb") as f:
            for i in range(30):
                f.write(b"From a@b Mon Jan  1 10:00:00 2024\nSubject: m%d\n\n" % i + b"y" * (2000 * (i % 5)) + b"\n\n")
        argv = ["imsimport", "-u", "joe", "-s", str(home / "in.mbox")]

        def inbox():
            s = open_store(Config(str(home)))
            try:
                got = []
                for m in s.messages("joe", "INBOX"):
                    with open(m.path, "rb") as f:
                        got.append((hashlib.sha256(f.read()).hexdigest(), sorted(m.flags), int(m.internaldate)))
                return sorted(got)
            finally:
                getattr(s, "close", lambda: None)()

        want = []
        statuses = set()
        for k, r, filler in _filled_runs(argv, mnt, tmp_path, base, 14, 5, lambda: want.extend(inbox())):
            assert len(want) == 31
            statuses.add(r.returncode)
            if r.returncode == 13:
                assert err(r).count("\n") == 1 and "full" in err(r) and "nothing was imported" in err(r), (k, err(r))
                assert len(inbox()) == 1, k                 # as it was: nothing half imported
            if filler.exists():                             # (not after the last step)
                os.unlink(filler)
            if r.returncode == 13:
                run(home, *argv, env={"IMS_HOME": str(home)}, check=0)
            assert inbox() == want, k
        assert 13 in statuses, statuses


def test_imsimport_from_stdin_into_inbox(config, ims_home):
    assert run(ims_home, "mboxutil", "-c", "user/joe").returncode == 0
    p = run(ims_home, "imsimport", "-u", "joe", "-s", "-", input=MBOX)
    assert p.returncode == 0 and err(p) == ""
    assert len(fresh_store().messages("joe", "INBOX")) == 3


def test_imsimport_refuses_non_mbox(config, ims_home, tmp_path):
    bad = tmp_path / "letter.eml"
    bad.write_bytes(b"Subject: not an mbox\n\nbody\n")
    assert run(ims_home, "mboxutil", "-c", "user/joe").returncode == 0
    p = run(ims_home, "imsimport", "-u", "joe", "-s", str(bad), "-d", "Imported")
    assert p.returncode == 2
    assert "not an mbox" in err(p) and str(bad) in err(p)
    s = fresh_store()
    assert not s.exists("joe", "Imported"), "a refused file must not leave a folder behind"
    assert s.messages("joe", "INBOX") == []


def test_imsimport_errors(config, ims_home, tmp_path):
    p = run(ims_home, "imsimport", "-u", "nobody", "-s", str(tmp_path / "x"))
    assert p.returncode == 2 and "mboxutil -c user/nobody" in err(p)
    assert run(ims_home, "mboxutil", "-c", "user/joe").returncode == 0
    p = run(ims_home, "imsimport", "-u", "joe", "-s", str(tmp_path / "missing.mbox"))
    assert p.returncode == 2 and "does not exist" in err(p)


def test_imsimport_empty_mbox_makes_the_folder_a_blank_file_is_refused(config, ims_home, tmp_path):
    """An empty file is a valid empty mailbox: the folder is made, '0 messages', exit 0.
    A non-empty file that is no mbox (blank lines only: it made the folder, exit 0, as
    if empty) is refused, exit 2, one line, before any folder is made; from a pipe too."""
    assert run(ims_home, "mboxutil", "-c", "user/joe").returncode == 0
    empty = tmp_path / "empty.mbox"
    empty.write_bytes(b"")
    p = run(ims_home, "imsimport", "-v", "-u", "joe", "-s", str(empty), "-d", "Old")
    assert p.returncode == 0 and err(p) == "imsimport: imported 0 messages into user/joe/Old\n", err(p)
    assert fresh_store().exists("joe", "Old") and fresh_store().messages("joe", "Old") == []
    blank = tmp_path / "blank.mbox"
    blank.write_bytes(b"\n\n   \n")
    for argv, kw, name in ((["-s", str(blank)], {}, str(blank)), (["-s", "-"], {"input": b"\n\n"}, "standard input")):
        p = run(ims_home, "imsimport", "-v", "-u", "joe", "-d", "Blank", *argv, **kw)
        assert p.returncode == 2 and err(p).count("\n") == 1, err(p)
        assert err(p).startswith(f"imsimport: {name}: not an mbox file: it holds only blank lines"), err(p)
        assert "no folder made" in err(p) and not fresh_store().exists("joe", "Blank")


# -- imsdeliver -------------------------------------------------------------------
def test_imsdeliver_one_inode_for_three_users(config, ims_home, tmp_path):
    for u in ("joe", "ann", "bob"):
        assert run(ims_home, "mboxutil", "-c", f"user/{u}").returncode == 0
    msg = tmp_path / "msg.eml"
    msg.write_bytes(MSG)
    p = run(ims_home, "imsdeliver", "-v", "-m", str(msg), "joe", "ann", "joe", "bob")     # joe named twice
    assert p.returncode == 0, err(p)
    assert out(p).splitlines() == ["joe: UID 1", "ann: UID 1", "bob: UID 1"]
    s = fresh_store()
    infos = [s.message(u, "INBOX", 1) for u in ("joe", "ann", "bob")]
    assert len({(m.dev, m.ino) for m in infos}) == 1, "one stored copy"
    assert all(m.nlink == 3 for m in infos)
    assert [m.uid for m in s.messages("joe", "INBOX")] == [1]        # one copy for joe
    for u in ("joe", "ann", "bob"):
        with s.open_message(u, "INBOX", 1) as f:
            assert f.read() == MSG


def test_imsdeliver_stdin_and_folder(config, ims_home):
    assert run(ims_home, "mboxutil", "-c", "user/joe").returncode == 0
    # the folder must exist: imsdeliver creates none (a missing one gets INBOX, tests/test_user_inputs.py)
    assert run(ims_home, "mboxutil", "-c", "user/joe/Lists/ietf").returncode == 0
    p = run(ims_home, "imsdeliver", "-d", "Lists/ietf", "joe", input=MSG)
    assert p.returncode == 0, err(p)
    s = fresh_store()
    (m,) = s.messages("joe", "Lists/ietf")
    with s.open_message("joe", "Lists/ietf", m.uid) as f:
        assert f.read() == MSG


def test_imsdeliver_delivers_whatever_backup_groups_conf_holds(config, ims_home):
    """A typo in backup-groups.conf, a backup setting, stopped every delivery (exit 2: an
    MTA bounces the mail to its senders).  imsdeliver never uses the groups: it delivers;
    a backup still names the typo."""
    assert run(ims_home, "mboxutil", "-c", "user/alice").returncode == 0
    (ims_home / "config" / "backup-groups.conf").write_text("groupA=[a-l.*\n")
    p = run(ims_home, "imsdeliver", "alice", input=MSG)
    assert p.returncode == 0, err(p)
    assert len(fresh_store().messages("alice", "INBOX")) == 1
    p = run(ims_home, "imsbackup", "-f", ims_home / "x.ims", "/")
    assert p.returncode == 2 and b"backup-groups.conf:1" in p.stderr, err(p)


def test_imsdeliver_held_user_gets_it_queued(config, ims_home):
    for u in ("joe", "ann"):
        assert run(ims_home, "mboxutil", "-c", f"user/{u}").returncode == 0
    s = fresh_store()
    s.hold_deliveries("ann")
    p = run(ims_home, "imsdeliver", "-v", "joe", "ann", input=MSG)
    assert p.returncode == 0, err(p)
    assert out(p).splitlines() == ["joe: UID 1", "ann: queued (deliveries held)"]
    s = fresh_store()
    assert len(s.messages("joe", "INBOX")) == 1
    assert s.messages("ann", "INBOX") == []
    assert s.release_deliveries("ann") == 1
    (m,) = s.messages("ann", "INBOX")
    with s.open_message("ann", "INBOX", m.uid) as f:
        assert f.read() == MSG


def test_imsdeliver_refuses_an_empty_message(config, ims_home, tmp_path):
    """imsdeliver with nothing on stdin stored a 0-byte message (UID 1) and exited 0.
    Refused: exit 2, one line, nothing stored or queued, no UID used; an empty -m file
    too (said before the line about a missing -d folder)."""
    for u in ("joe", "ann"):
        assert run(ims_home, "mboxutil", "-c", f"user/{u}").returncode == 0
    fresh_store().hold_deliveries("ann")
    empty = tmp_path / "empty.eml"
    empty.write_bytes(b"")
    for argv, kw, line in ((["joe", "ann"], {"input": b""}, "no message on standard input: nothing delivered"),
                           (["-m", str(empty), "-d", "Nope", "joe"], {},
                            f"message file '{empty}' is empty (0 bytes): nothing delivered")):
        p = run(ims_home, "imsdeliver", "-v", *argv, **kw)
        assert p.returncode == 2 and err(p) == f"imsdeliver: {line}\n" and p.stdout == b"", err(p)
        s = fresh_store()
        assert s.messages("joe", "INBOX") == [] and s.folder("joe", "INBOX").uidnext == 1
        assert s.release_deliveries("ann") == 0
        s.hold_deliveries("ann")
    p = run(ims_home, "imsdeliver", "-v", "joe", input=MSG)
    assert p.returncode == 0 and out(p) == "joe: UID 1\n", err(p)
    # the store refuses it whoever asks (a pipe cannot be peeked at: read, then refused)
    from asm.store.base import EmptyMessage

    class Pipe(io.RawIOBase):
        def readinto(self, b):
            return 0
    for src in (io.BytesIO(b""), Pipe()):
        with pytest.raises(EmptyMessage):
            fresh_store().deliver(["joe", "ann"], src)
    s = fresh_store()
    assert [m.uid for m in s.messages("joe", "INBOX")] == [1] and s.release_deliveries("ann") == 0


def test_imsdeliver_v_whose_reader_is_gone_exits_0_once_stored(config, ims_home, tmp_path):
    """imsdeliver -v whose stdout reader went away (or stdout closed): the message is
    stored, so the exit is 0 (141 told the MTA nothing happened: it retried and the
    user got the mail twice)."""
    assert run(ims_home, "mboxutil", "-c", "user/joe").returncode == 0
    m = tmp_path / "m.eml"
    m.write_bytes(MSG)
    p = popen(ims_home, "imsdeliver", "-v", "-m", m, "joe", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()                        # the reader is gone before the line
    assert p.wait(timeout=120) == 0, p.stderr.read()
    p.stderr.close()
    p = subprocess.run(["/bin/sh", "-c", 'exec "$@" >&-', "sh", command("imsdeliver"), "-v", "-m", str(m), "joe"],
                       env=command_env(ims_home), capture_output=True, timeout=120)
    assert p.returncode == 0 and p.stderr == b"", p.stderr
    assert len(fresh_store().messages("joe", "INBOX")) == 2


def test_imsdeliver_is_quiet_without_v(config, ims_home):
    """operations.md: without -v a successful run prints nothing (cron, an MTA's
    mailbox_command mail what a command prints).  imsdeliver printed 'USER: UID N' for
    every delivery; now only with -v."""
    for u in ("joe", "ann"):
        assert run(ims_home, "mboxutil", "-c", f"user/{u}").returncode == 0
    fresh_store().hold_deliveries("ann")
    p = run(ims_home, "imsdeliver", "joe", "ann", input=MSG)
    assert p.returncode == 0 and p.stdout == b"" and p.stderr == b"", (p.stdout, p.stderr)
    assert len(fresh_store().messages("joe", "INBOX")) == 1
    p = run(ims_home, "imsdeliver", "-v", "joe", input=MSG)
    assert p.returncode == 0 and out(p) == "joe: UID 2\n" and p.stderr == b"", (p.stdout, p.stderr)


def test_imsdeliver_unknown_user_delivers_nothing(config, ims_home):
    assert run(ims_home, "mboxutil", "-c", "user/joe").returncode == 0
    p = run(ims_home, "imsdeliver", "joe", "nobody", input=MSG)
    assert p.returncode == 2 and "nobody" in err(p)
    assert fresh_store().messages("joe", "INBOX") == []
