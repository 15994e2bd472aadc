"""imsbackup as administrators run it, on both drivers: names, -u, -d, single copy, -i,
store.backupexclude, -b, devices, -v and quiet cron runs, exit statuses, GNU tar, and
consistency while mail flows."""
from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import select
import shutil
import stat
import subprocess
import threading
import time

import pytest

from asm.archive.reader import ArchiveReader
from tests.helpers import block_device, make_home, msg, popen, put, require, run, small_tmpfs


def members(path):
    with open(path, "rb") as f:
        r = ArchiveReader(f)
        out = list(r)
        return r, out


def archive_view(data: bytes):
    """An archive as a reader sees it (header, every member with its records and bytes,
    trailer), less what two runs of the same backup never share: the archive id, the
    creation time and the member times taken from it."""
    r = ArchiveReader(io.BytesIO(data))
    members = []
    for m in r:
        body = None
        if m.kind == "message":
            with m.open() as f:
                body = f.read()
        members.append((m.kind, m.name, m.partition, m.user, m.folder, m.uid, m.flags, m.keywords,
                        m.internaldate, m.stored, m.nlink, m.sha256, m.size, m.linkname, m.group,
                        m.uidvalidity, m.uidnext, m.subscribed, m.uids, body))
    assert r.complete and r.trailer["archive_id"] == r.header["archive_id"]
    header = {k: v for k, v in r.header.items() if k not in ("archive_id", "created")}
    trailer = {k: v for k, v in r.trailer.items() if k not in ("archive_id", "digest")}   # the digest covers them
    return header, members, trailer


def archive_id(data: bytes) -> str:
    return ArchiveReader(io.BytesIO(data)).header["archive_id"]


def folders_in(path):
    _, ms = members(path)
    return [(m.user, m.folder) for m in ms if m.kind == "folder"]


def messages_in(path):
    _, ms = members(path)
    return [(m.user, m.folder, m.uid, m.kind) for m in ms if m.kind in ("message", "link")]


@pytest.fixture
def populated(store, ims_home):
    (ims_home / "config").mkdir(parents=True, exist_ok=True)
    (ims_home / "config" / "backup-groups.conf").write_text("# groups\ngroupA=[a-l].*\ngroupB=[m-z].*\n")
    n = 0
    for user in ("amy", "joe", "mary", "zed"):
        for folder in ("INBOX", "Trash", "Work", "Work/2023", "Bulk Mail"):
            for _ in range(2):
                n += 1
                put(store, user, folder, n, flags=["\\Seen"] if n % 2 else [])
    return store


def test_names_select_what_is_written(populated, ims_home, tmp_path):
    a = tmp_path / "a.ims"
    run(ims_home, "imsbackup", "-f", a, "/", check=0)
    assert len(folders_in(a)) == 20
    run(ims_home, "imsbackup", "-f", a, "/primary/groupA", check=0)
    assert {u for u, _ in folders_in(a)} == {"amy", "joe"}
    run(ims_home, "imsbackup", "-f", a, "/primary/user/joe", check=0)
    assert {u for u, _ in folders_in(a)} == {"joe"}
    run(ims_home, "imsbackup", "-f", a, "/primary/groupA/joe/INBOX", check=0)
    assert folders_in(a) == [("joe", "INBOX")]
    run(ims_home, "imsbackup", "-f", a, "/primary/joe/Work", "/primary/mary/INBOX", check=0)
    assert folders_in(a) == [("joe", "Work"), ("joe", "Work/2023"), ("mary", "INBOX")]
    lst = tmp_path / "names.txt"
    lst.write_text("# users to move\n/primary/user/zed\n\n/primary/groupA/amy/Trash\n")
    run(ims_home, "imsbackup", "-f", a, "-u", lst, check=0)
    assert {u for u, _ in folders_in(a)} == {"zed", "amy"}
    assert ("amy", "Trash") in folders_in(a) and ("amy", "INBOX") not in folders_in(a)


def test_bytes_metadata_and_gnu_tar(populated, ims_home, tmp_path):
    tar = require("tar", "GNU tar reads the archives")
    store = populated
    m = put(store, "joe", "Réunions; \"Q3\" 50%", 99, flags=["\\Flagged"], keywords=["$Label1"],
            internaldate=1_500_000_000)
    a = tmp_path / "a.ims"
    run(ims_home, "imsbackup", "-f", a, "/primary/user/joe", check=0)
    r, ms = members(a)
    assert r.complete and r.header["driver"] == store.name and r.header["scope"] == ["/primary/user/joe"]
    got = [x for x in ms if x.kind == "message" and x.folder == "Réunions; \"Q3\" 50%"][0]
    assert (got.uid, got.flags, got.keywords, int(got.internaldate)) == (m.uid, {"\\Flagged"}, ("$Label1",), 1_500_000_000)
    listing = subprocess.run([tar, "tvf", str(a)], capture_output=True, check=True)
    assert listing.stderr == b"" and "Réunions".encode() in listing.stdout
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run([tar, "xf", str(a), "-C", str(dest)], check=True)
    extracted = [os.path.join(d, f) for d, _, fs in os.walk(dest) for f in fs if f == f"{m.uid}.eml"]
    assert any(open(p, "rb").read() == msg(99) for p in extracted)


def test_incremental_writes_new_messages_and_every_uid(store, ims_home, tmp_path):
    # -d judges by when a message entered its folder in this store: the classic store's
    # stored time, a Maildir file's ctime (which no tool can set back: hence the sleeps)
    old = put(store, "joe", "INBOX", 1, stored=time.time() - 86400 * 3)
    time.sleep(1.1)
    cut = time.time()
    since = time.strftime("%Y%m%d:%H%M%S", time.localtime(cut))
    time.sleep(1.1)
    new = put(store, "joe", "INBOX", 2)
    a = tmp_path / "i.ims"
    run(ims_home, "imsbackup", "-f", a, "-d", since, "/", check=0)
    r, ms = members(a)
    folder = [x for x in ms if x.kind == "folder"][0]
    assert list(folder.uids) == [old.uid, new.uid]
    assert [x.uid for x in ms if x.kind == "message"] == [new.uid]
    assert r.header["since"] == pytest.approx(cut, abs=5)
    day = time.strftime("%Y%m%d", time.localtime(time.time() - 86400 * 10))
    run(ims_home, "imsbackup", "-f", a, "-d", day, "/", check=0)
    assert len(messages_in(a)) == 2


def test_single_copy_and_ignore_links(store, ims_home, tmp_path):
    for u in ("amy", "bob", "cat"):
        store.create_user(u)
    store.deliver(["amy", "bob", "cat"], io.BytesIO(msg(1, 50_000)))
    a, full = tmp_path / "a.ims", tmp_path / "full.ims"
    run(ims_home, "imsbackup", "-f", a, "/", check=0)
    kinds = sorted(k for *_, k in messages_in(a))
    assert kinds == ["link", "link", "message"]
    assert os.path.getsize(a) < 2 * 50_000
    run(ims_home, "imsbackup", "-i", "-f", full, "/", check=0)
    assert sorted(k for *_, k in messages_in(full)) == ["message"] * 3
    assert os.path.getsize(full) > 3 * 50_000


@pytest.mark.parametrize("jobs", [2, 5])
def test_reader_threads_write_the_same_archive(store, ims_home, tmp_path, jobs):
    """-j N: reader threads ahead of the writer change nothing in the archive: the same
    members in the same order with the same bytes, single copies resolved in archive
    order (the first copy whole, the others links), big messages, empty folders."""
    n = 0
    for u in ("amy", "bob", "cat"):
        store.create_user(u)
        store.create_folder(u, "Empty", subscribed=False)
        for folder in ("INBOX", "Work"):
            for size in (0, 3000, 70_000, 0, (1 << 20) + 17, 10):
                n += 1
                put(store, u, folder, n, size=size, flags=["\\Seen"] if n % 3 else [])
    for k in range(4):
        store.deliver(["cat", "amy", "bob"][k % 3:] + ["amy"][:k % 2], io.BytesIO(msg(100 + k, 5000 * k)))
    one, many = tmp_path / "one.ims", tmp_path / "many.ims"
    run(ims_home, "imsbackup", "-j", "1", "-f", one, "/", check=0)
    run(ims_home, "imsbackup", "-j", str(jobs), "-f", many, "/", check=0)
    view = archive_view(one.read_bytes())
    assert archive_view(many.read_bytes()) == view
    kinds = [m[0] for m in view[1]]
    assert kinds.count("link") >= 4 and kinds.count("message") == 3 * 2 * 6 + 4


def test_backupexclude_and_explicit_override(populated, ims_home, tmp_path):
    run(ims_home, "msconfig", "set", "store.backupexclude", "trash%Bulk Mail", check=0)
    a = tmp_path / "a.ims"
    run(ims_home, "imsbackup", "-f", a, "/primary/user/joe", check=0)
    assert [f for _, f in folders_in(a)] == ["INBOX", "Work", "Work/2023"]
    run(ims_home, "imsbackup", "-f", a, "/primary/user/joe/Trash", check=0)
    assert folders_in(a) == [("joe", "Trash")]


def test_backupexclude_matches_folders_as_a_backup_path_does(store, ims_home, tmp_path):
    """store.backupexclude names folders without regard to case, as a backup path does
    (asm.logical.fold): the exclude 'CAFÉ%STRASSE', typed in one Unicode form, leaves out
    'Café' written in the other (a Mac client's e + U+0301) and 'Straße' (whose capitals
    are STRASSE), and everything below them.  Before, the exclude compared lower()
    strings: both folders were backed up, exit 0, while /primary/user/joe/CAFÉ named
    the folder."""
    cafe, strasse = "Cafe\u0301", "Stra\u00dfe"
    for i, f in enumerate(("INBOX", cafe, f"{cafe}/2024", strasse, "Keep", "Caf")):
        put(store, "joe", f, i)
    run(ims_home, "msconfig", "set", "store.backupexclude", "CAF\u00c9%STRASSE", check=0)
    a = tmp_path / "a.ims"
    run(ims_home, "imsbackup", "-f", a, "/primary/user/joe", check=0)
    assert [f for _, f in folders_in(a)] == ["INBOX", "Caf", "Keep"]
    # named explicitly, in another case and form, the folder is backed up all the same
    run(ims_home, "imsbackup", "-f", a, "/primary/user/joe/CAF\u00c9", check=0)
    assert [f for _, f in folders_in(a)] == [cafe, f"{cafe}/2024"]


@pytest.mark.parametrize("bf", [1, 7, 20])
def test_blocking_factor(store, ims_home, tmp_path, bf):
    put(store, "joe", "INBOX", 1, size=3333)
    a = tmp_path / "a.ims"
    run(ims_home, "imsbackup", "-b", bf, "-f", a, "/", check=0)
    assert os.path.getsize(a) % (512 * bf) == 0
    assert run(ims_home, "imsrestore", "-b", bf, "-f", a, "-t", check=0).stdout.count(b"\n") == 2


def test_devices_file_stdout_fifo_chardev(store, ims_home, tmp_path):
    put(store, "joe", "INBOX", 1)
    a = tmp_path / "a.ims"
    old = os.umask(0)
    try:
        run(ims_home, "imsbackup", "-f", a, "/", check=0)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(a).st_mode) == 0o600
    to_file = archive_view(a.read_bytes())
    for spelling in (["-f-"], ["-f", "-"]):
        out = run(ims_home, "imsbackup", *spelling, "/", check=0).stdout
        assert len(out) % 10240 == 0                  # whole records of the default blocking factor
        # the archive a file gets, member for member and byte for byte, with its own id and time
        assert archive_view(out) == to_file
        assert archive_id(out) != archive_id(a.read_bytes())    # each archive is one of its own
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("data", open(fifo, "rb").read()))
    t.start()
    run(ims_home, "imsbackup", "-f", fifo, "/", check=0)
    t.join(10)
    assert len(got["data"]) % 10240 == 0 and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert archive_view(got["data"]) == to_file
    run(ims_home, "imsbackup", "-f", "/dev/null", "/", check=0)   # a character device


def test_block_device_is_refused_never_replaced(store, ims_home, tmp_path):
    """-f naming a block device (a raw disk, a USB drive): refused, exit 2, one line; the
    node stays a block device and the disk is not written (never an archive written to a
    file beside the node and renamed over it, exit 0, the disk untouched)."""
    put(store, "joe", "INBOX", 2)
    node = tmp_path / "backupdisk"
    with block_device(node) as loop:
        link = tmp_path / "by-id"                   # as /dev/disk/by-id/usb-... is
        os.symlink(node, link)
        for dev in (node, link):
            p = run(ims_home, "imsbackup", "-f", dev, "/", text=True)
            assert p.returncode == 2, p.stderr
            assert p.stderr.count("\n") == 1 and "block device" in p.stderr and str(dev) in p.stderr
            assert "dd of=" in p.stderr
            assert stat.S_ISBLK(os.lstat(node).st_mode) and os.path.islink(link)
        assert not [n for n in os.listdir(tmp_path) if n.endswith(".partial")]
        with open(loop, "rb") as f:
            assert f.read() == bytes(4 << 20)


def test_pipe_into_imsrestore(store, ims_home, tmp_path):
    put(store, "joe", "INBOX", 1)
    put(store, "joe", "Sent", 2)
    dest = tmp_path / "dest"
    make_home(dest, store.name)
    b = popen(ims_home, "imsbackup", "-f-", "/", stdout=subprocess.PIPE)
    r = run(dest, "imsrestore", "-f", "-", stdin=b.stdout)
    b.stdout.close()
    assert b.wait() == 0 and r.returncode == 0, r.stderr
    assert b"Sent" in run(dest, "mboxutil", "-l", check=0).stdout


def test_remote_device_without_plugin_and_local_colon_names(store, ims_home, tmp_path, monkeypatch):
    put(store, "joe", "INBOX", 1)
    env = {"IMS_ASM_PLUGINS": f"{store.name},localdevices"}
    bad = run(ims_home, "imsbackup", "-f", "backuphost:/dump/a.ims", "/", env=env)
    assert bad.returncode == 3
    assert b"no remote-device plugin" in bad.stderr and b"./backuphost:/dump/a.ims" in bad.stderr
    monkeypatch.chdir(tmp_path)       # not os.chdir: later tests would run in a removed directory
    run(ims_home, "imsbackup", "-f", "./host:a.ims", "/", env=env, check=0)
    assert (tmp_path / "host:a.ims").stat().st_size > 0


def test_verbose_quiet_and_summary(populated, ims_home, tmp_path):
    a = tmp_path / "a.ims"
    quiet = run(ims_home, "imsbackup", "-f", a, "/", check=0)
    assert quiet.stderr == b"" and quiet.stdout == b""      # cron: silence
    loud = run(ims_home, "imsbackup", "-v", "-f", a, "/", check=0).stderr.decode()
    assert "/primary/joe/Work/2023: 2 messages" in loud
    assert "imsbackup: 4 users, 20 folders, 40 messages, 0 links" in loud.splitlines()[-1]


def test_progress_line_on_a_terminal(populated, ims_home, tmp_path):
    master, slave = pty.openpty()
    p = popen(ims_home, "imsbackup", "-f", tmp_path / "a.ims", "/", stderr=slave, env={"TERM": "xterm"})
    os.close(slave)
    out = b""
    while True:
        r, _, _ = select.select([master], [], [], 30)
        if not r:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert p.wait(30) == 0
    assert b"\r\x1b[K" in out and b"messages" in out          # the self-rewriting line
    assert b"imsbackup: 4 users, 20 folders, 40 messages" in out   # summary on a terminal


@pytest.mark.parametrize("argv, needle", [
    (["-f", "{a}", "/primary/user/nobody"], b"no user 'nobody'"),
    (["-f", "{a}", "/nopart"], b"no partition 'nopart'"),
    (["-f", "{a}", "/primary/user/joe/NoSuchFolder"], b"has no folder 'NoSuchFolder'"),
    (["-f", "{a}", "primary/user/joe"], b"must start with '/'"),
    (["-f", "{a}", "-d", "2024-05-01", "/"], b"bad date '2024-05-01'"),
    (["-f", "{a}", "-b", "0", "/"], b"bad blocking factor"),
    (["-f", "{a}", "-j", "0", "/"], b"-j takes a number of threads from 1 to 256, not '0'"),
    (["-f", "{a}", "-j", "x", "/"], b"-j takes a number of threads from 1 to 256, not 'x'"),
    (["-f", "{a}", "-j", "257", "/"], b"-j takes a number of threads from 1 to 256, not '257'"),
    (["-f", "{a}", "-u", "/no/such/list", "/"], b"cannot read '/no/such/list'"),
    (["-f", "{a}", "-x", "/"], b"unrecognized arguments"),
    (["/"], b"-f"),
])
def test_usage_errors_write_nothing(populated, ims_home, tmp_path, argv, needle):
    a = tmp_path / "a.ims"
    p = run(ims_home, "imsbackup", *[x.format(a=a) for x in argv])
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not a.exists() and os.listdir(tmp_path) == ["ims"]


def test_a_list_on_standard_input_and_dates_no_calendar_has(populated, ims_home, tmp_path):
    """-u - reads the names from standard input, as -f - writes there (it was "cannot
    read '-'"); a date in the right form that no calendar has (20250230, 24:00:00) says
    which part does not exist, exit 2, nothing written (it said the form was wrong)."""
    a = tmp_path / "a.ims"
    run(ims_home, "imsbackup", "-f", a, "-u", "-", input=b"\xef\xbb\xbf/primary/user/joe\n# x\n", check=0)
    users = {u for u, _f, _uid, _k in messages_in(a)}
    assert users == {"joe"}, users
    for date, said in (("20250230", "there is no 2025-02-30"),
                       ("20250101:240000", "there is no time 24:00:00"),
                       ("20230229:120000", "there is no 2023-02-29")):
        b = tmp_path / "b.ims"
        p = run(ims_home, "imsbackup", "-f", b, "-d", date, "/")
        assert p.returncode == 2 and said.encode() in p.stderr and p.stderr.count(b"\n") == 1, p.stderr
        assert not b.exists()


@pytest.mark.parametrize("content", ["", "# users of the legal hold\n\n   \n"])
def test_a_list_file_that_names_nobody_is_refused(populated, ims_home, tmp_path, content):
    """-u FILE that names nobody (empty, or comments only: the script that makes it
    matched nobody) is refused, never taken as no name at all, which is the whole store."""
    lst = tmp_path / "list"
    lst.write_text(content)
    a = tmp_path / "a.ims"
    for names in ([], ["/primary/user/joe"]):
        p = run(ims_home, "imsbackup", "-f", a, "-u", lst, *names)
        assert p.returncode == 2, p.stderr
        err = p.stderr.decode()
        assert len(err.splitlines()) == 1 and str(lst) in err and "names no user" in err, err
        assert not a.exists() and sorted(os.listdir(tmp_path)) == ["ims", "list"]


def test_a_date_in_the_future_is_refused(populated, ims_home, tmp_path):
    """-d later than now (20621126 typed for 20261126) would write an archive that holds
    no message: refused, with the date as it was understood; a date within the clock-skew
    allowance (300 s) is taken."""
    a = tmp_path / "a.ims"
    p = run(ims_home, "imsbackup", "-f", a, "-d", "20621126", "/")
    assert p.returncode == 2, p.stderr
    err = p.stderr.decode()
    assert len(err.splitlines()) == 1 and "2062-11-26 00:00:00" in err and "later than now" in err, err
    assert not a.exists() and os.listdir(tmp_path) == ["ims"]
    soon = time.strftime("%Y%m%d:%H%M%S", time.localtime(time.time() + 60))
    run(ims_home, "imsbackup", "-f", a, "-d", soon, "/", check=0)


def test_messages_dated_before_1901_and_an_old_d_date_restore(ims_home, tmp_path):
    """A message whose INTERNALDATE is before 1901 (an mbox From_ line of 1800, year 1)
    is backed up and restored with its date; -d 19000101 or 00010101 ("take everything")
    writes an archive every reader accepts, in every time zone.  (Classic store: a Maildir file's mtime on ext4 cannot
    go below 1901.)"""
    from asm.store import open_store
    store = open_store(make_home(ims_home, "classic"))
    dates = [-5364662400, -62135596800, -5364662400.25, 1_600_000_000]
    for n, d in enumerate(dates):
        put(store, "joe", "INBOX", n, internaldate=d)
    before = [(m.uid, m.internaldate) for m in store.messages("joe", "INBOX")]
    # 00010101, the earliest date there is, was "bad date" in UTC and west of it (mktime's
    # range ends just after it): refused though it is exactly what YYYYMMDD asks for
    for n, extra in enumerate(([], ["-d", "19000101"], ["-d", "00010102"], ["-d", "00010101"],
                               ["-d", "00010101:000000"])):
        a = tmp_path / f"a{n}.ims"
        run(ims_home, "imsbackup", "-f", a, *extra, "/", check=0)
        run(ims_home, "imsverify", "-f", a, check=0)
        dest = tmp_path / f"dest{n}"
        s2 = open_store(make_home(dest, "classic"))
        run(dest, "imsrestore", "-f", a, check=0)
        assert [(m.uid, m.internaldate) for m in s2.messages("joe", "INBOX")] == before


def test_f_names_a_symlink_the_archive_goes_to_its_target(store, ims_home, tmp_path):
    """-f LINK writes the file the link names (as GNU tar -f does), the link stays: a
    stable name into a staging disk gets today's archive, not yesterday's; a dangling
    link's target is made.  The state file is ARCHIVE.state beside the archive."""
    put(store, "joe", "INBOX", 1)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "current.ims").write_bytes(b"yesterday")
    for name, target in (("current.ims", staging / "current.ims"), ("new.ims", staging / "new.ims")):
        link = tmp_path / name
        link.symlink_to(target)
        run(ims_home, "imsbackup", "-f", link, "/", check=0)
        assert link.is_symlink() and os.readlink(link) == str(target)
        run(ims_home, "imsverify", "-f", target, check=0)
        assert [m[:3] for m in messages_in(target)] == [("joe", "INBOX", 1)]
    # the state file goes beside the archive, where a scan of the directory finds it
    assert sorted(os.listdir(staging)) == ["current.ims", "current.ims.state", "new.ims", "new.ims.state"]


def test_bad_groups_file_is_named(populated, ims_home, tmp_path):
    (ims_home / "config" / "backup-groups.conf").write_text("groupA=[a-l.*\n")
    p = run(ims_home, "imsbackup", "-f", tmp_path / "a.ims", "/")
    assert p.returncode == 2 and b"backup-groups.conf:1: bad regular expression" in p.stderr


def test_a_named_group_with_no_users_says_where_to_look(populated, ims_home, tmp_path):
    """/primary/GROUP naming a group whose patterns match no user there: exit 2, one line
    naming the group and what to check, nothing written."""
    (ims_home / "config" / "backup-groups.conf").write_text("groupA=[a-l].*\ngroupQ=q.*\n")
    a = tmp_path / "a.ims"
    p = run(ims_home, "imsbackup", "-f", a, "/primary/groupQ")
    assert p.returncode == 2 and p.stderr.count(b"\n") == 1, p.stderr
    assert b"backup group 'groupQ' has no users on partition 'primary': check its patterns in " \
           b"backup-groups.conf" in p.stderr, p.stderr
    assert not a.exists()


def _break_folder(store, user, folder):
    """Make one folder unreadable the way a damaged disk would."""
    if store.name == "classic":
        idx = os.path.join(os.path.dirname(store.message(user, folder, store.messages(user, folder)[0].uid).path),
                           "..", "store.idx")
        os.unlink(idx)
        os.mkdir(idx)
    else:
        uidlist = os.path.join(store.partition_path("primary"), user, "Maildir", f".{folder}", "dovecot-uidlist")
        with open(uidlist, "w") as f:
            f.write("garbage\n")


def test_unreadable_mailbox_is_named_and_archive_still_complete(populated, ims_home, tmp_path):
    _break_folder(populated, "joe", "Work")
    a = tmp_path / "a.ims"
    p = run(ims_home, "imsbackup", "-f", a, "/")
    assert p.returncode == 1, p.stderr
    assert b"could not back up /primary/joe/Work" in p.stderr
    r, ms = members(a)
    assert r.complete and [e["mailbox"] for e in r.trailer["errors"]] == ["/primary/joe/Work"]
    assert ("joe", "Work/2023") in [(m.user, m.folder) for m in ms if m.kind == "folder"]
    # a restore of that archive names the folder its backup could not read, exit 1 (it
    # restored what the archive holds, but not that folder as the store had it; a later
    # backup brings it); one that does not reach that folder says nothing, exit 0
    for n, (paths, named) in enumerate([((), True), (("/primary/joe",), True), (("/primary/joe/Work",), True),
                                        (("/primary/joe/Work/2023",), False), (("/primary/mary",), False)]):
        home = tmp_path / f"to{n}"
        make_home(home, populated.name)
        p = run(home, "imsrestore", "-f", a, *paths)
        if named:
            assert p.returncode == 1 and p.stderr.decode().splitlines()[-1] == (
                "imsrestore: /primary/joe/Work: the backup that made this archive could not read it: it is "
                "not here as the store had it; restore it from a later backup that read it ("
                + r.trailer["errors"][0]["error"] + ")"), p.stderr
        else:
            assert p.returncode == 0 and p.stderr == b"", p.stderr
    # imsverify says the same of the archive, its restore test no more than that
    p = run(ims_home, "imsverify", "-v", "-f", a, "--restore-test", text=True)
    assert p.returncode == 1 and "the backup could not save /primary/joe/Work" in p.stderr, p.stderr
    assert "did not restore cleanly" not in p.stderr, p.stderr
    p = run(tmp_path / "to0", "imsrestore", "-f", a, "-t", "/primary/joe")      # a listing says so too
    assert p.returncode == 0 and p.stderr.decode().startswith(
        "imsrestore: /primary/joe/Work: the backup that made this archive could not read it"), p.stderr
    # asked for such a folder alone (no subfolder), a listing or a restore says why it is
    # not there (exit 2)
    _break_folder(populated, "joe", "Trash")
    b = tmp_path / "b.ims"
    assert run(ims_home, "imsbackup", "-f", b, "/primary/joe").returncode == 1
    why = {e["mailbox"]: e["error"] for e in members(b)[0].trailer["errors"]}["/primary/joe/Trash"]
    for how in (("-t",), ()):
        p = run(tmp_path / "to0", "imsrestore", "-f", b, *how, "/primary/joe/Trash")
        assert p.returncode == 2 and p.stderr.decode() == (
            "imsrestore: /primary/joe/Trash: nothing in the archive matches this path (the backup that made "
            "this archive could not read it: " + why + ")\n"), p.stderr


def test_a_state_file_the_disk_has_no_room_for_is_exit_13_and_a_directory_in_its_way_is_refused(
        store, ims_home, tmp_path):
    """A disk with room for the archive but not its state file: the archive is kept and
    the run said so, but exited 1 (the table's "mailboxes or messages failed"); a full
    device is 13.  A directory named A.state beside -f A was moved aside to
    A.state.replaced-PID, and the run said the state file could not be written although
    it was (exit 1): refused up front now (exit 2), the directory left as it is, nothing
    written."""
    for u in range(20):
        for f in range(25):
            put(store, f"user{u:02d}", "INBOX" if f == 0 else f"Folder{f:02d}", f)
    probe = tmp_path / "probe.ims"
    run(ims_home, "imsbackup", "-f", probe, "/", check=0)
    size, state = probe.stat().st_size, (tmp_path / "probe.ims.state").stat().st_size
    assert state > 32 << 10
    with small_tmpfs(tmp_path / "small", f"{(size + 3 * 4096) // 1024 + 4}k") as small:
        p = run(ims_home, "imsbackup", "-f", small / "a.ims", "/")
        assert p.returncode == 13, p.stderr
        assert p.stderr.decode() == (f"imsbackup: cannot write the state file {small}/a.ims.state: No space left "
                                     f"on device; the archive is complete: name it with --base for the next "
                                     f"incremental\n")
        r, _ = members(small / "a.ims")
        assert r.complete and os.listdir(small) == ["a.ims"]
    (tmp_path / "b.ims.state").mkdir()
    (tmp_path / "b.ims.state" / "notes").write_text("mine")
    p = run(ims_home, "imsbackup", "-f", tmp_path / "b.ims", "/")
    assert p.returncode == 2, p.stderr
    assert p.stderr.decode() == (f"imsbackup: the state file of -f {tmp_path}/b.ims, {tmp_path}/b.ims.state, is a "
                                 f"directory: move it away, or name the state file with --state-out; nothing "
                                 f"was written\n")
    assert (tmp_path / "b.ims.state" / "notes").read_text() == "mine"
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith(("b.", ".b."))) == ["b.ims.state"]


def test_full_disk_leaves_no_archive(store, ims_home, tmp_path):
    put(store, "joe", "INBOX", 1, size=200_000)
    put(store, "joe", "INBOX", 2, size=200_000)
    with small_tmpfs(tmp_path / "small", "128k") as small:
        p = run(ims_home, "imsbackup", "-f", small / "a.ims", "/")
        assert p.returncode == 13
        assert b"No space left on device" in p.stderr and b"incomplete" in p.stderr
        assert os.listdir(small) == []


def test_a_report_the_full_disk_cannot_hold_never_leaves_the_previous_one_as_this_runs(store, ims_home, tmp_path):
    """--report FILE on a disk that fills up: checked writable before the run (an empty
    probe file, which a full tmpfs still creates), then not writable at its end.  The
    run keeps its status and warns (docs/operations.md), but the previous run's report
    stayed under the name, "ok": true with the other archive: a monitor read it as this
    run's.  At every fill level the file is now this run's report or none at all."""
    put(store, "joe", "INBOX", 1)
    with small_tmpfs(tmp_path / "small", "128k") as small:
        rep = small / "last.json"
        seen = set()
        for i, left in enumerate(range(0, 12 << 10, 512)):
            for n in os.listdir(small):
                os.unlink(small / n)
            run(ims_home, "imsbackup", "-f", tmp_path / "old.ims", "--report", rep, "/", check=0)
            fd = os.open(small / "fill", os.O_WRONLY | os.O_CREAT)
            try:
                free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
                if free > left:
                    os.posix_fallocate(fd, 0, free - left)
            finally:
                os.close(fd)
            new = tmp_path / f"new{i}.ims"
            p = run(ims_home, "imsbackup", "-f", new, "--report", rep, "/")
            assert p.returncode == 0, (left, p.stderr)
            seen.add(rep.exists())
            if rep.exists():
                doc = json.loads(rep.read_text())
                assert doc["device"] == str(new) and doc["archive_id"] == members(new)[0].header["archive_id"], left
                assert p.stderr == b"", (left, p.stderr)
            else:
                assert p.stderr.decode().count("\n") == 1 and "previous report there was removed" in p.stderr.decode()
            assert sorted(os.listdir(small)) in (["fill"], ["fill", "last.json"]), (left, os.listdir(small))
        assert seen == {True, False}, seen         # both ends of the fill levels were reached


def test_backup_while_mail_flows_is_consistent(store, ims_home, tmp_path, config):
    from asm.store import open_store
    for i in range(60):
        put(store, "joe", "INBOX", i, size=2000)
    stop = time.monotonic() + 4
    errors = []

    def churn():
        other = open_store(config)
        n = 1000
        try:
            while time.monotonic() < stop:
                n += 1
                other.deliver(["joe"], io.BytesIO(msg(n, 3000)))
                uids = [m.uid for m in other.messages("joe", "INBOX")]
                other.expunge("joe", "INBOX", uids[:1])
                other.set_flags("joe", "INBOX", uids[-1], ["\\Seen"])
        except Exception as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=churn)
    t.start()
    runs = 0
    while time.monotonic() < stop:
        a = tmp_path / f"a{runs}.ims"
        p = run(ims_home, "imsbackup", "-v", "-f", a, "/")
        assert p.returncode == 0, p.stderr
        with open(a, "rb") as f:
            r = ArchiveReader(f)
            ms = []
            for m in r:             # every digest verified while reading
                ms.append(m)
                if m.kind == "message":
                    with m.open() as fh:
                        assert fh.read().startswith(b"From: ")
        folder = [m for m in ms if m.kind == "folder"][0]
        assert {m.uid for m in ms if m.kind == "message"} <= set(folder.uids)
        assert r.complete
        runs += 1
    t.join()
    assert not errors and runs >= 2


def rename_folder(store, user, old, new) -> None:
    """A folder renamed as a client sees it (the store has no rename): made under the
    new name with the old one's messages, the old one deleted."""
    store.create_folder(user, new)
    for m in store.messages(user, old):
        with open(m.path, "rb") as f:
            store.append(user, new, f, flags=m.flags, internaldate=m.internaldate)
    store.delete_folder(user, old)


def test_a_folder_deleted_or_renamed_during_the_backup_is_a_change_not_a_failure(store, ims_home, tmp_path):
    """While a backup of whole users runs (held here by its reader), one of a later
    user's folders is deleted and another renamed (made under the new name, the old one
    deleted, as a client sees it): the deleted one vanished (no error, as an expunged
    message), the renamed one is read under its new name; exit 0.  A folder named
    explicitly that is gone is still an error."""
    for n in range(40):
        put(store, "amy", "INBOX", n, size=20_000)
    put(store, "zed", "Doomed", 1)
    for n in range(3):
        put(store, "zed", "Old", 10 + n)
    for paths, named in ((["/"], False), (["/primary/zed", "/primary/amy"], False),
                         (["/primary/amy", "/primary/zed/Doomed", "/primary/zed/Old"], True)):
        if not store.exists("zed", "Old"):
            for n in range(3):
                put(store, "zed", "Old", 10 + n)
            store.delete_folder("zed", "New")
            put(store, "zed", "Doomed", 1)
        p = popen(ims_home, "imsbackup", "-f", "-", *paths, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = p.stdout.read(4096)                   # under way in amy's INBOX, blocked on us
        store.delete_folder("zed", "Doomed")
        rename_folder(store, "zed", "Old", "New")
        out, err = p.communicate(timeout=60)
        a = tmp_path / "a.ims"
        a.write_bytes(first + out)
        if named:
            assert p.returncode == 1 and b"could not back up /primary/zed/Doomed" in err, err
            continue
        assert p.returncode == 0, err
        got = {(u, f) for u, f, _uid, _k in messages_in(a)}
        assert ("zed", "New") in got and ("zed", "Doomed") not in got and ("zed", "Old") not in got
        assert len([1 for u, f, _uid, _k in messages_in(a) if (u, f) == ("zed", "New")]) == 3


def test_a_folder_renamed_onto_a_name_already_read_is_named_and_one_renamed_back_is_read(store, ims_home, tmp_path):
    """The backup has read zed's Archive and waits inside Big: the user rotates (Archive
    to Old, Current to Archive).  What is under Archive now was not read: named (exit 1),
    never a silent exit 0.  Then: Current renamed to Tmp and back while the backup waits:
    Current is read (exit 0)."""
    def rename(old, new):
        rename_folder(store, "zed", old, new)

    for n in range(3):
        put(store, "zed", "Archive", 100 + n)
        put(store, "zed", "Current", 300 + n)
    for n in range(40):
        put(store, "zed", "Big", 200 + n, size=20_000)
    for case in ("back", "rotate"):
        p = popen(ims_home, "imsbackup", "-f", "-", "/", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = p.stdout.read(4096)                    # Archive read; inside Big, blocked on us
        if case == "rotate":
            rename("Archive", "Old")
            rename("Current", "Archive")
        else:
            rename("Current", "Tmp")
            rename("Tmp", "Current")
        out, err = p.communicate(timeout=60)
        a = tmp_path / f"{case}.ims"
        a.write_bytes(first + out)
        if case == "rotate":
            assert p.returncode == 1 and b"could not back up /primary/zed/Archive: another folder was renamed " \
                b"to this name during the backup" in err, err
        else:
            assert p.returncode == 0, err
            assert len([1 for u, f, _uid, _k in messages_in(a) if (u, f) == ("zed", "Current")]) == 3


def test_a_folder_deleted_or_renamed_while_it_is_read_ends_the_run_as_a_change(store, ims_home, tmp_path):
    """The backup waits inside zed's Big (on its reader) when the user renames Big to
    Large, then deletes Large: a rename is read under the new name (exit 0), a deletion
    leaves what was read (exit 0); named explicitly, a deletion is that path's error
    (exit 1).  Before, the whole run ended with 'no such folder' and exit 2."""
    for n in range(40):
        put(store, "zed", "Big", n, size=20_000)
    p = popen(ims_home, "imsbackup", "-f", "-", "/", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.read(4096)
    rename_folder(store, "zed", "Big", "Large")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    a = tmp_path / "a.ims"
    a.write_bytes(first + out)
    assert len([1 for u, f, _uid, _k in messages_in(a) if (u, f) == ("zed", "Large")]) == 40
    for paths, want in ((["/primary/zed"], 0), (["/primary/zed/Large"], 1)):
        if not store.exists("zed", "Large"):
            for n in range(40):
                put(store, "zed", "Large", n, size=20_000)
        p = popen(ims_home, "imsbackup", "-f", "-", *paths, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdout.read(4096)
        store.delete_folder("zed", "Large")
        _, err = p.communicate(timeout=60)
        assert p.returncode == want, err
        if want:
            assert b"could not back up /primary/zed/Large: deleted or renamed while it was read" in err, err


@pytest.mark.parametrize("when", ["while-read", "before-read"])
def test_a_user_deleted_during_a_backup_of_the_store_is_a_change_not_a_failure(store, ims_home, tmp_path, when):
    """mboxutil -d user/zed while imsbackup / reads zed's INBOX (or before it reaches zed's
    folders): zed vanished, as an expunged message; the archive is complete and holds
    everyone else's mail; exit 0, no error in the trailer.  Before, the run ended with
    'no such user' and exit 2 (no archive at all) or exit 1 naming each folder of zed.
    Named explicitly (/primary/zed), a user deleted meanwhile is that path's error (exit 1)."""
    put(store, "alice", "INBOX", 1)
    if when == "while-read":
        for n in range(40):
            put(store, "zed", "INBOX", n, size=20_000)
    else:
        for n in range(40):
            put(store, "alice", "Big", 100 + n, size=20_000)
    for paths, want in ((["/"], 0), (["/primary/zed", "/primary/alice"], 1)):
        if store.exists("zed"):
            store.delete_user("zed")
        for f in ("INBOX", "Work", "Trash") if when == "before-read" else ():
            put(store, "zed", f, 1)
        for n in range(40) if when == "while-read" else ():
            put(store, "zed", "INBOX", n, size=20_000)
        if want:
            paths = paths[::-1] if when == "before-read" else paths
        p = popen(ims_home, "imsbackup", "-f", "-", *paths, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = p.stdout.read(4096)                   # inside zed's (or alice's) big folder
        assert run(ims_home, "mboxutil", "-d", "user/zed").returncode == 0
        out, err = p.communicate(timeout=60)
        a = tmp_path / f"{when}-{want}.ims"
        a.write_bytes(first + out)
        r, _ = members(a)
        assert r.complete, err
        got = messages_in(a)
        assert len([1 for u, f, _uid, _k in got if u == "alice"]) == (1 if when == "while-read" else 41)
        if want:
            assert p.returncode == 1, err
            assert b"could not back up /primary/zed: deleted during the backup" in err, err
            assert [e["mailbox"] for e in r.trailer["errors"]] == ["/primary/zed"]
        else:
            assert p.returncode == 0 and err == b"", err
            assert r.trailer["errors"] == []


@pytest.mark.parametrize("when", ["before-read", "while-read"])
def test_a_user_gone_before_the_backup_reached_it_leaves_no_entry_and_a_chain_keeps_it_gone(
        store, ims_home, tmp_path, when):
    """mboxutil -d user/zed during an incremental of the whole store: before the run
    reached zed (it waits in alice's Big), or while it reads zed's INBOX.  Every user
    member of the archive has a folder member after it: a zed gone before any folder
    of his was read is not in the archive at all, as a user deleted before the run.
    The chain restored in one command has no zed (deleted by its end); its archives
    restored one by one leave zed as the full had him, as for a user deleted between
    the backups.  Before, an empty entry for zed was written: counted and listed as a
    user, and the incremental restored on its own removed every folder of zed but
    INBOX (a half account)."""
    from asm.store import open_store
    put(store, "alice", "INBOX", 1)
    for f in ("INBOX", "Work"):
        put(store, "zed", f, 1)
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    run(ims_home, "imsbackup", "-f", full, "/", check=0)
    user, folder = ("alice", "Big") if when == "before-read" else ("zed", "INBOX")
    for n in range(40):
        put(store, user, folder, 100 + n, size=20_000)
    p = popen(ims_home, "imsbackup", "-f", "-", "--base", full, "--state-out", tmp_path / "incr.state", "/",
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.read(4096)
    assert run(ims_home, "mboxutil", "-d", "user/zed").returncode == 0
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    incr.write_bytes(first + out)
    r, ms = members(incr)
    assert r.complete and r.trailer["errors"] == []
    with_member = [m.user for m in ms if m.kind == "user"]
    with_folder = sorted({m.user for m in ms if m.kind == "folder"})
    assert with_member == with_folder == (["alice"] if when == "before-read" else ["alice", "zed"])
    assert r.trailer["counts"]["users"] == len(with_member)
    chain, one_by_one = tmp_path / "chain", tmp_path / "one"
    ended = open_store(make_home(chain, store.name))
    got = open_store(make_home(one_by_one, store.name))
    run(chain, "imsrestore", "-f", full, "-f", incr, check=0)
    run(one_by_one, "imsrestore", "-f", full, check=0)
    run(one_by_one, "imsrestore", "-f", incr, check=0)
    if when == "before-read":
        # archive by archive as in one command: the incremental of / no longer holds zed
        assert not ended.exists("zed") and not got.exists("zed")
    else:
        assert ended.exists("zed", "INBOX") and not ended.exists("zed", "Work")


def test_a_folder_renamed_while_it_is_read_is_said_to_be_in_the_archive_twice(tmp_path):
    """Dovecot's RENAME (one rename(2): the folder keeps its UIDVALIDITY) while the backup
    waits inside the folder: the run reads it again under its new name (exit 0), and
    the member already written under the old name holds the part read before.  The docs
    said it was not in the archive, and nothing was said: a restore of that archive
    brought the old name back.  One line now says so; nothing is lost."""
    import os

    from asm.store import open_store
    from tests.helpers import make_home, popen
    home = tmp_path / "ims"
    store = open_store(make_home(home, "maildir"))
    for n in range(40):
        put(store, "zed", "Big", n, size=20_000)
    big = store._folder_dir("zed", "Big")
    p = popen(home, "imsbackup", "-f", "-", "/", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.read(4096)
    os.rename(big, os.path.join(os.path.dirname(big), ".Large"))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    a = tmp_path / "a.ims"
    a.write_bytes(first + out)
    got = [(f, uid) for u, f, uid, _k in messages_in(a) if u == "zed"]
    assert sorted(uid for f, uid in got if f == "Large") == list(range(1, 41))
    # (the pipe is full after the first messages: they were read under the old name)
    old = [uid for f, uid in got if f == "Big"]
    assert old and old == list(range(1, len(old) + 1)) and len(old) < 40, got
    assert b"/primary/zed/Big: renamed to 'Large' while its messages were read" in err, err
    assert err.count(b"\n") == 1, err


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_a_folder_deleted_while_it_is_read_is_said_to_be_in_the_archive_in_part(tmp_path, driver):
    """A client's DELETE while the backup waits inside the folder: the member already
    written holds the part read before (none, when the wait came before its first
    message), exit 0 (nothing the store still has is lost).  -v said "not in the
    archive", and a restore of that archive brought the deleted folder back.  One line
    now says so, and what it says holds: the archive alone brings the folder back with
    that part, a chain with the next incremental does not."""
    from asm.store import open_store
    home = tmp_path / "ims"
    store = open_store(make_home(home, driver))
    put(store, "zed", "INBOX", 1)
    for n in range(40):
        put(store, "zed", "Big", n, size=20_000)
    p = popen(home, "imsbackup", "-v", "-f", "-", "--state-out", tmp_path / "a.state", "/",
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.read(4096)
    store.delete_folder("zed", "Big")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    a = tmp_path / "a.ims"
    a.write_bytes(first + out)
    got = sorted(uid for u, f, uid, _k in messages_in(a) if f == "Big")
    assert got == list(range(1, len(got) + 1)) and len(got) < 40, got
    text = err.decode()
    assert "/primary/zed/Big: deleted while its messages were read: the archive holds the part read before; " \
           "a restore of this archive alone brings 'Big' back" in text, text
    assert "/primary/zed/Big: deleted or renamed during the backup: not in the archive" not in text, text
    run(home, "imsbackup", "-f", tmp_path / "b.ims", "--base", tmp_path / "a.state", "/", check=0)
    alone = open_store(make_home(tmp_path / "alone", driver))
    chain = open_store(make_home(tmp_path / "chain", driver))
    run(tmp_path / "alone", "imsrestore", "-f", a, check=0)
    run(tmp_path / "chain", "imsrestore", "-f", a, "-f", tmp_path / "b.ims", check=0)
    assert alone.exists("zed", "Big") and [m.uid for m in alone.messages("zed", "Big")] == got
    assert not chain.exists("zed", "Big") and chain.exists("zed", "INBOX")


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_a_folder_deleted_at_any_point_of_its_read_is_a_whole_prefix_said_so(tmp_path, driver):
    """The same DELETE at 10 points spread over the folder's read (after 4 KiB to 1 MiB
    of the stream): always exit 0; the archive holds messages 1..k of the folder, in
    order, none missing; when k < 40 one line says the archive holds the part read
    before, and a restore of the archive alone brings exactly those k back."""
    import random
    from asm.store import open_store
    rnd = random.Random(23 if driver == "classic" else 31)
    cuts = [rnd.randrange(4096 << i, 4096 << (i + 1)) for i in range(8)] + [4096, 900_000]
    bad = []
    for i, cut in enumerate(cuts):
        home = tmp_path / f"ims{i}"
        store = open_store(make_home(home, driver))
        put(store, "zed", "INBOX", 1)
        for n in range(40):
            put(store, "zed", "Big", n, size=20_000)
        p = popen(home, "imsbackup", "-v", "-f", "-", "/", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = p.stdout.read(cut)
        store.delete_folder("zed", "Big")
        out = p.stdout.read()                  # (the rest: communicate() would skip what
        err = p.stderr.read()                  # the reader holds in its buffer)
        p.wait(60)
        a = tmp_path / f"a{i}.ims"
        a.write_bytes(first + out)
        got = sorted(uid for u, f, uid, _k in messages_in(a) if f == "Big")
        said = b"/primary/zed/Big: deleted while its messages were read: the archive holds the part read before" in err
        if p.returncode != 0 or got != list(range(1, len(got) + 1)) or (len(got) < 40 and not said):
            bad.append((cut, p.returncode, len(got), err[-300:]))
            continue
        alone = open_store(make_home(tmp_path / f"alone{i}", driver))
        run(tmp_path / f"alone{i}", "imsrestore", "-f", a, check=0)
        back = [m.uid for m in alone.messages("zed", "Big")] if alone.exists("zed", "Big") else []
        if back != got:
            bad.append((cut, "restored", len(back), len(got)))
    assert bad == [], bad


@pytest.mark.parametrize("watch", ["archive", "state"])
def test_a_signal_once_the_archive_is_in_place_does_not_make_a_complete_run_a_failed_one(
        store, ims_home, tmp_path, watch):
    """A SIGTERM or Ctrl-C that comes as the archive is renamed into place, or as its
    state file is written, either finds the run before that point (130, no archive) or
    after it (exit 0, the archive and its state both there): never "interrupted" beside
    a complete archive, nor an archive without its state."""
    import signal
    from asm.backupstate import load_base
    for u in range(20):
        for f in range(10):
            for k in range(5):
                put(store, f"user{u}", "INBOX" if f == 0 else f"F{f}", f * 10 + k, size=300)
    for attempt in range(6):
        target = tmp_path / f"a{attempt}.ims"
        seen = target if watch == "archive" else tmp_path / f"a{attempt}.ims.state"
        p = popen(ims_home, "imsbackup", "-f", target, "/", stderr=subprocess.PIPE,
                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # (as test_errors)
        deadline = time.monotonic() + 60
        while not seen.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0002)
        if p.poll() is None:
            p.send_signal(signal.SIGTERM if attempt % 2 else signal.SIGINT)
        err = p.communicate(timeout=60)[1]
        if p.returncode == 0:
            r, _ = members(target)
            assert r.complete and load_base(str(target) + ".state"), err
        else:
            assert p.returncode == 130 and not target.exists() and not seen.exists(), (p.returncode, err)


def test_a_second_backup_to_the_same_archive_name_is_refused_while_the_first_runs(store, ims_home, tmp_path):
    """cron started `imsbackup -f bk/nightly.ims /` twice: both exited 0 and the archive
    could end up from one run and nightly.ims.state from the other (the next --base
    incremental then would not follow the archive, exit 7 at restore).  The second is
    refused now (exit 6, one line naming the first's pid), writes nothing, and the
    archive and state file are the first run's; once it ended the name is free."""
    import signal
    from asm.backupstate import load_base
    for n in range(20):
        put(store, f"u{n % 4}", "INBOX", n, size=20_000)
    bk = tmp_path / "bk"
    bk.mkdir()
    target = bk / "nightly.ims"
    a = popen(ims_home, "imsbackup", "-b", "1", "-f", target, "/", stderr=subprocess.PIPE)
    lock = bk / ".nightly.ims.lock"               # (docs/operations.md): holds its pid once taken
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_bytes().strip() == str(a.pid).encode()) and a.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.001)
    a.send_signal(signal.SIGSTOP)                 # the first run, still writing
    try:
        assert a.poll() is None, "the first backup ended and never held .nightly.ims.lock"
        b = run(ims_home, "imsbackup", "-f", target, "/")
    finally:
        a.send_signal(signal.SIGCONT)
    err_a = a.communicate(timeout=60)[1]
    assert b.returncode == 6, b.stderr
    assert b.stderr.decode().startswith(f"imsbackup: another imsbackup (pid {a.pid}) is writing {target}")
    assert b.stderr.count(b"\n") == 1 and b"nothing was written" in b.stderr
    assert a.returncode == 0, err_a
    r, _ = members(target)
    assert r.complete and load_base(f"{target}.state").archive_id == r.header["archive_id"]
    assert sorted(os.listdir(bk)) == ["nightly.ims", "nightly.ims.state"]
    assert run(ims_home, "imsbackup", "-f", target, "/").returncode == 0
    assert sorted(os.listdir(bk)) == ["nightly.ims", "nightly.ims.state"]


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_killed_backup_leaves_no_complete_looking_archive(store, ims_home, tmp_path, sig):
    import signal
    for n in range(200):
        put(store, f"u{n % 10}", "INBOX", n, size=200_000)
    old = tmp_path / "a.ims"
    old.write_bytes(b"yesterday's good archive")
    p = popen(ims_home, "imsbackup", "-b", "1", "-f", old, "/", stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and p.poll() is None:
        parts = [f for f in os.listdir(tmp_path) if f.endswith(".partial")]
        if parts and os.path.getsize(tmp_path / parts[0]) > 1_000_000:
            break
        time.sleep(0.005)
    assert p.poll() is None, "the backup finished before it could be killed"
    p.send_signal(getattr(signal, sig))
    err = p.communicate(timeout=30)[1]
    assert old.read_bytes() == b"yesterday's good archive"        # never replaced by half of one
    left = [f for f in os.listdir(tmp_path) if f.endswith(".partial")]
    if sig == "SIGTERM":                                          # an engine cancelling the job
        assert p.returncode == 130 and b"interrupted" in err and b"its partial file was removed" in err
        assert b"is kept as it was" in err        # the line says yesterday's archive stays
        assert left == []
    else:
        assert p.returncode == -9 and left and all(f.startswith(".a.ims.") for f in left)
        # the next run of the same command removes what the killed one left (it stayed
        # for ever, as large as what was written, one more at each kill -9 or power cut)
        other = tmp_path / ".b.ims.x.1-y.partial"
        other.write_bytes(b"another name's")
        run(ims_home, "imsbackup", "-f", old, "/", check=0)
        assert [f for f in os.listdir(tmp_path) if f.endswith(".partial")] == [other.name]


def test_a_classic_store_on_a_full_disk_is_still_read(tmp_path):
    """The disk of a classic store (mailbox list, partition) is 100% full: what only reads
    it still works (imsbackup to another disk, mboxutil -l, imsverify --against-store,
    imsdr backup), and the archive is the store.  (Before: "mailbox list cannot be opened: disk I/O
    error", exit 17: SQLite could not make the WAL's -shm file.)"""
    from asm.config import Config
    from asm.store import open_store
    from tests.helpers import state
    with small_tmpfs(tmp_path / "small", "4m") as small:
        home = small / "ims"
        make_home(home, "classic")
        run(home, "mboxutil", "-c", "user/joe", check=0)
        for i in range(3):
            run(home, "imsdeliver", "joe", input=msg(i, 1000), check=0)
        fd = os.open(small / "fill", os.O_WRONLY | os.O_CREAT)    # the mail disk fills up
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        assert os.statvfs(small).f_bavail == 0
        p = run(home, "mboxutil", "-l")
        assert p.returncode == 0 and b"user/joe" in p.stdout, p.stderr
        a = tmp_path / "a.ims"
        run(home, "imsbackup", "-f", a, "/", check=0)
        run(home, "imsverify", "-f", a, "--against-store", check=0)
        p = run(home, "imsdr", "backup", "-f", tmp_path / "dr.tar")
        assert p.returncode == 0, p.stderr
        os.unlink(small / "fill")
        src = open_store(Config(str(home)), create=False)
        want = state(src)
        src.close()
    make_home(tmp_path / "to", "classic")
    run(tmp_path / "to", "imsrestore", "-f", a, check=0)
    assert state(open_store(Config(str(tmp_path / "to")), create=False)) == want
    assert len([k for k in want if len(k) == 3]) == 3


# -- values the archive format cannot hold as the store has them --------------------------

def _maildir_inbox(ims_home, user="joe", n=1):
    """A maildir installation with ``n`` messages in user's INBOX; (store, INBOX dir)."""
    from asm.store import open_store
    store = open_store(make_home(ims_home, "maildir"))
    for i in range(n):
        m = put(store, user, "INBOX", i, internaldate=1e9)
    return store, os.path.dirname(os.path.dirname(m.path))


def _restored(tmp_path, archive, driver, name="dest", check=0):
    """(store, imsrestore's CompletedProcess) of ``archive`` restored into a new store."""
    from asm.store import open_store
    dest = tmp_path / name
    store = open_store(make_home(dest, driver))
    p = run(dest, "imsrestore", "-f", archive, text=True, check=check)
    return store, p


def test_maildir_names_whose_number_is_no_time_are_backed_up_and_restored(ims_home, tmp_path):
    """Names another MDA wrote, starting with milliseconds (1700000000123.M1P1.mx1) or a
    date (20231103123045.4711.mx2), were archived with that number as the stored date
    (IMSASM.stored=1700000000123): imsbackup exited 0, imsrestore refused the members
    (exit 4) and 1 of 3 messages came back, from any backup.  Such a number is no time:
    the file's ctime is the stored date, as for a name without one."""
    store, inbox = _maildir_inbox(ims_home)
    odd = ["1700000000123.M1P1.mx1", "20231103123045.4711.mx2"]
    for i, base in enumerate(odd):
        with open(os.path.join(inbox, "cur", base + ":2,S"), "wb") as f:
            f.write(b"Subject: odd name %d\r\n\r\nbody\r\n" % i)
    msgs = store.messages("joe", "INBOX")
    assert len(msgs) == 3
    for m in msgs[1:]:
        assert m.stored == os.stat(m.path).st_ctime
    a = tmp_path / "a.ims"
    run(ims_home, "imsbackup", "-f", a, "/", check=0)
    s2, _ = _restored(tmp_path, a, "maildir")
    got = s2.messages("joe", "INBOX")
    assert [(m.uid, m.flags) for m in got] == [(1, frozenset()), (2, {"\\Seen"}), (3, {"\\Seen"})]
    assert [m.basename for m in got[1:]] == odd


@pytest.mark.parametrize("damage", ["3 V0 N5", "3 V4294967296 N5", "1 0 5", "uid 0"])
def test_a_uidlist_dovecot_calls_broken_is_named_with_the_fix_not_archived(ims_home, tmp_path, damage):
    """A dovecot-uidlist of V0 or V4294967296, or a line with UID 0, was archived with
    exit 0, and imsrestore refused the folder member (IMSASM.uidvalidity 0 is out of
    range) with its 3 messages: 0 of 3 restored, exit 4.  Dovecot deletes such a file and
    numbers the folder again; the backup names the folder (exit 1) with the fix,
    reconstruct, after which it is backed up whole."""
    store, inbox = _maildir_inbox(ims_home, n=3)
    put(store, "ann", "INBOX", 9, internaldate=1e9)
    ul = os.path.join(inbox, "dovecot-uidlist")
    with open(ul) as f:
        lines = f.read().splitlines()
    if damage == "uid 0":
        lines[-1] = "0 " + lines[-1].split(" ", 1)[1]
    else:
        lines[0] = damage
    with open(ul, "w") as f:
        f.write("\n".join(lines) + "\n")
    a = tmp_path / "a.ims"
    p = run(ims_home, "imsbackup", "-f", a, "/", text=True, check=1)
    assert "could not back up /primary/joe/INBOX" in p.stderr and "dovecot-uidlist" in p.stderr
    assert "reconstruct" in p.stderr, p.stderr
    r, ms = members(a)
    assert r.complete and ("joe", "INBOX") not in [(m.user, m.folder) for m in ms if m.kind == "folder"]
    s2, _ = _restored(tmp_path, a, "maildir", check=None)
    assert len(s2.messages("ann", "INBOX")) == 1
    run(ims_home, "reconstruct", "/primary/joe/INBOX", check=None)
    run(ims_home, "imsbackup", "-f", tmp_path / "b.ims", "/", check=0)
    s3, _ = _restored(tmp_path, tmp_path / "b.ims", "maildir", name="dest3")
    assert len(s3.messages("joe", "INBOX")) == 3


def test_a_keyword_that_is_not_utf8_is_backed_up_and_restored_as_its_bytes(ims_home, tmp_path):
    """dovecot-keywords "0 bad\\xffkw" (a client's Latin-1) made imsbackup of the whole
    store crash (UnicodeEncodeError, exit 70): no archive for any user.  The keyword is
    archived as its bytes and a maildir restore writes them back; the classic store,
    which keeps keywords as UTF-8 text, names that message (exit 1) and restores the rest."""
    store, inbox = _maildir_inbox(ims_home)
    put(store, "ann", "INBOX", 5, internaldate=1e9)
    with open(os.path.join(inbox, "dovecot-keywords"), "wb") as f:
        f.write(b"0 bad\xffkw\n")
    with open(os.path.join(inbox, "cur", "1700000000.M1P1Q1.host:2,Sa"), "wb") as f:
        f.write(b"Subject: tagged\r\n\r\nbody\r\n")
    a = tmp_path / "a.ims"
    run(ims_home, "imsbackup", "-f", a, "/", check=0)
    s2, _ = _restored(tmp_path, a, "maildir")
    assert [m.keywords for m in s2.messages("joe", "INBOX")] == [(), ("bad\udcffkw",)]
    assert len(s2.messages("ann", "INBOX")) == 1
    kw_file = os.path.join(s2.partition_path("primary"), "joe", "Maildir", "dovecot-keywords")
    with open(kw_file, "rb") as f:
        assert f.read() == b"0 bad\xffkw\n"
    s3, p = _restored(tmp_path, a, "classic", name="classic", check=1)
    assert "keyword 'bad\\xffkw' holds bytes that are not UTF-8" in p.stderr, p.stderr
    assert [m.uid for m in s3.messages("joe", "INBOX")] == [1]
    assert len(s3.messages("ann", "INBOX")) == 1
    assert "internal error" not in p.stderr


def test_keywords_the_archive_cannot_hold_never_cost_the_message(ims_home, tmp_path):
    """A dovecot-keywords naming Junk at two letters, and a keyword of 1001 characters,
    were archived with exit 0 and refused by imsrestore ("lists a keyword twice", "is
    not a keyword"), exit 4: 1 of 3 messages restored.  Junk at its second letter is no
    keyword, as Dovecot reads the file; the long keyword is left out and the message
    named (exit 1); all three messages restore (exit 1: the restore names INBOX, which
    the archive does not hold as the store had it)."""
    store, inbox = _maildir_inbox(ims_home)
    long_kw = "k" * 1001
    with open(os.path.join(inbox, "dovecot-keywords"), "w") as f:
        f.write(f"0 Junk\n1 Junk\n2 {long_kw}\n3 $Label1\n")
    with open(os.path.join(inbox, "cur", "1700000000.M1P1Q1.host:2,Sab"), "wb") as f:
        f.write(b"Subject: junk twice\r\n\r\nbody\r\n")
    with open(os.path.join(inbox, "cur", "1700000001.M1P1Q1.host:2,cd"), "wb") as f:
        f.write(b"Subject: long keyword\r\n\r\nbody\r\n")
    assert [m.keywords for m in store.messages("joe", "INBOX")] == [(), ("Junk",), (long_kw, "$Label1")]
    a = tmp_path / "a.ims"
    p = run(ims_home, "imsbackup", "-f", a, "/", text=True, check=1)
    assert "could not back up /primary/joe/INBOX: message 3: IMSASM.keywords holds 'kkk" in p.stderr
    assert "archived without it" in p.stderr and "message 2" not in p.stderr
    s2, _ = _restored(tmp_path, a, "maildir", check=1)
    assert [(m.uid, m.flags, m.keywords) for m in s2.messages("joe", "INBOX")] == [
        (1, frozenset(), ()), (2, {"\\Seen"}, ("Junk",)), (3, frozenset(), ("$Label1",))]


@pytest.mark.parametrize("date, archived", [
    (253402300799.5, 253402300799),        # half a second into year 10000
    (253402343999.0, 253402300799),        # "31-Dec-9999 23:59:59 -1200"
    (-62135596800.5, -62135596800),        # half a second before year 1
])
def test_an_internaldate_outside_years_1_to_9999_is_archived_at_the_nearest_and_named(
        ims_home, tmp_path, date, archived):
    """A classic INTERNALDATE of 253402300799.5 was archived with exit 0, and imsrestore
    refused the member ("pax mtime ... out of range"), exit 4: the message could be
    restored from no backup.  It is archived with the nearest date the format holds and
    named (exit 1), and restores (exit 1: the restore names INBOX again)."""
    from asm.store import open_store
    store = open_store(make_home(ims_home, "classic"))
    put(store, "joe", "INBOX", 1, internaldate=1e9)
    put(store, "joe", "INBOX", 2, internaldate=date)
    a = tmp_path / "a.ims"
    p = run(ims_home, "imsbackup", "-f", a, "/", text=True, check=1)
    assert "could not back up /primary/joe/INBOX: message 2: its INTERNALDATE" in p.stderr
    assert "archived with INTERNALDATE" in p.stderr
    s2, _ = _restored(tmp_path, a, "classic", check=1)
    assert [(m.uid, m.internaldate) for m in s2.messages("joe", "INBOX")] == [(1, 1e9), (2, archived)]


def test_a_maildir_file_time_past_9999_is_archived_at_the_last_date_and_named(ims_home, tmp_path):
    """IMAP APPEND "31-Dec-9999 23:59:59 -1200" is 10000-01-01 11:59:59 UTC, and a file
    system with 64-bit times (tmpfs, btrfs) keeps it as the file's mtime: imsbackup exited
    0, imsrestore refused the member, exit 4, and the message was lost.  It is archived
    with 9999-12-31 23:59:59 UTC and named (exit 1); the restore names it again (exit 1)."""
    import tempfile
    t = 253402343999.0
    shm = tempfile.mkdtemp(prefix="ims-values-", dir="/dev/shm") if os.path.isdir("/dev/shm") else None
    try:
        if shm is None:
            pytest.skip("no /dev/shm")
        probe = os.path.join(shm, "probe")
        open(probe, "w").close()
        os.utime(probe, (t, t))
        if os.stat(probe).st_mtime != t:
            pytest.skip("/dev/shm keeps no time past 2446")
        from asm.store import open_store
        store = open_store(make_home(ims_home, "maildir", **{"partition:primary.path": os.path.join(shm, "mail")}))
        put(store, "joe", "INBOX", 1, internaldate=1e9)
        m = put(store, "joe", "INBOX", 2, internaldate=1e9)
        os.utime(m.path, (t, t))
        a = tmp_path / "a.ims"
        p = run(ims_home, "imsbackup", "-f", a, "/", text=True, check=1)
        assert ("message 2: its INTERNALDATE 253402343999 is after 9999-12-31 23:59:59 UTC, the last "
                "time the archive format holds: archived with INTERNALDATE 9999-12-31 23:59:59 UTC") in p.stderr
        s2, _ = _restored(tmp_path, a, "classic", check=1)
        assert [(m.uid, m.internaldate) for m in s2.messages("joe", "INBOX")] == [(1, 1e9), (2, 253402300799)]
    finally:
        if shm is not None:
            shutil.rmtree(shm, ignore_errors=True)
