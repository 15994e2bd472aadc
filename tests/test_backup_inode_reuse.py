"""Single-copy links when inode numbers are reused during a backup (adv-quick findings 02
and 03): messages hard-linked in two folders (Dovecot COPY, ``imsdeliver aa ab``) are
archived, expunged while the same run goes on, and new mail delivered meanwhile gets
their freed inode numbers.  The writer linked the new messages to the old ones' members
by (st_dev, st_ino) alone: the new mail was lost, exit 0 from imsbackup, imsverify and
imsrestore.  A later copy is a link member only when its bytes are the first copy's
(docs/format.md §2.6): each message restores with its own bytes, and real hard links
are still single copies.  The proof is the copy's identity (inode, generation number,
size, mtime: asm/archive/fileid.py) where the filesystem gives generation numbers (ext4),
so a later copy is not read at all, and its bytes elsewhere (the tests' tmpfs)."""
from __future__ import annotations

import glob
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from asm.archive.reader import ArchiveReader
from asm.config import Config
from asm.store import open_store
from tests.helpers import command_env, make_home, run, small_ext4

# imsbackup with two test hooks, from the environment: IMS_TEST_STOP_AFTER ("user/folder")
# stops the process (SIGSTOP) once that folder is in the archive, so the test changes the
# store at that point of the run; IMS_TEST_SWAP (a JSON file {path: [dev, ino]}) makes the
# store report those files with those (dev, ino): files swapped for others that took the
# inode numbers between the writer's reads, whatever the filesystem hands out
HOOKED = r'''
import dataclasses, json, os, signal, sys
import asm.backup as b
from asm.store.classic import ClassicStore
from asm.store.maildir.store import MaildirStore
stop = os.environ.get("IMS_TEST_STOP_AFTER")
real_folder = b._backup_folder
def _backup_folder(store, writer, t, folder, *a, **k):
    got = real_folder(store, writer, t, folder, *a, **k)
    if f"{t.user}/{folder}" == stop:
        os.kill(os.getpid(), signal.SIGSTOP)
    return got
b._backup_folder = _backup_folder
swap = {}
if os.environ.get("IMS_TEST_SWAP"):
    with open(os.environ["IMS_TEST_SWAP"]) as f:
        swap = json.load(f)
def hook(cls):
    real = cls.snapshot
    def snapshot(self, *a, **k):
        snap = real(self, *a, **k)
        snap.messages[:] = [dataclasses.replace(m, dev=swap[m.path][0], ino=swap[m.path][1])
                            if m.path in swap else m for m in snap.messages]
        return snap
    cls.snapshot = snapshot
for cls in (ClassicStore, MaildirStore):
    hook(cls)
from asm.cli.imsbackup import main
sys.exit(main(sys.argv[1:]))
'''


def backup(home, archive, *opts, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOOKED, *opts, "-f", str(archive), "/"],
                            env=command_env(home, env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_stopped(p: subprocess.Popen, timeout: float = 60) -> None:
    """Until ``p`` stopped itself (IMS_TEST_STOP_AFTER)."""
    deadline = time.monotonic() + timeout
    while True:
        if p.poll() is not None:
            raise AssertionError(f"imsbackup ended (exit {p.returncode}) before it stopped: "
                                 f"{p.stderr.read().decode()[-2000:]}")
        with open(f"/proc/{p.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        assert time.monotonic() < deadline, "imsbackup never reached the folder it stops after"
        time.sleep(0.01)


def finish(p: subprocess.Popen) -> str:
    p.send_signal(signal.SIGCONT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()[-2000:]
    return err.decode()


def archived(archive) -> dict:
    """{(user, folder, uid): (kind, bytes)} of the archive's messages and links."""
    out = {}
    with open(archive, "rb") as f:
        r = ArchiveReader(f)
        for m in r:
            if m.kind in ("message", "link"):
                with m.open() as g:
                    out[(m.user, m.folder, m.uid)] = (m.kind, g.read())
        assert r.complete
    return out


def stored(store, user, folder="INBOX") -> dict:
    """{uid: (bytes, (dev, ino))} of a folder of the live store."""
    out = {}
    for m in store.messages(user, folder):
        with open(m.path, "rb") as f:
            out[m.uid] = (f.read(), (m.dev, m.ino))
    return out


def text(what: str, size: int) -> bytes:
    head = f"From: a@example.com\r\nTo: b@example.com\r\nSubject: {what}\r\n\r\n{what}\r\n".encode()
    return head + b"x" * max(0, size - len(head))


@pytest.mark.parametrize("seed", range(4))
def test_a_later_copy_under_a_reused_inode_number_is_a_link_only_for_the_same_bytes(
        store, ims_home, tmp_path, seed):
    """Property over seeds, both drivers, -j 1..4: zc's and zd's copies of new messages
    (one inode each) are reported with the (dev, ino) of aa's and ab's old ones, archived
    first.  Every message's member holds its own bytes; a later copy is a link exactly
    when its bytes are those of the member the key names (ab's copies of aa's, zd's of
    zc's, zc's when a new message has an old one's bytes)."""
    rnd = random.Random(seed)
    sizes = [1, 40, 3000, 70_000] + ([(1 << 20) + 7] if seed % 2 else [])
    for u in ("aa", "ab", "zc", "zd"):
        store.create_user(u)
    old = [text(f"OLD {i}", rnd.choice(sizes)) for i in range(rnd.randint(3, 8))]
    for data in old:
        store.deliver(["aa", "ab"], io.BytesIO(data))
    new = [rnd.choice(old) if rnd.random() < 0.3 else text(f"NEW {i}", len(rnd.choice(old)))
           for i in range(rnd.randint(3, 8))]
    for data in new:
        store.deliver(["zc", "zd"], io.BytesIO(data))
    aa, ab, zc, zd = (stored(store, u) for u in ("aa", "ab", "zc", "zd"))
    assert [k for _, k in aa.values()] == [k for _, k in ab.values()]        # one inode each
    assert [k for _, k in zc.values()] == [k for _, k in zd.values()]
    olds = list(aa.items())
    rnd.shuffle(olds)
    swap, took = {}, {}
    for m in store.messages("zc", "INBOX"):
        if olds and rnd.random() < 0.8:
            uid, (data, key) = olds.pop()
            took[m.uid] = data
            swap[m.path] = key
            swap[next(x.path for x in store.messages("zd", "INBOX") if x.uid == m.uid)] = key
    assert took, "no message takes an old inode number"
    with open(tmp_path / "swap.json", "w") as f:
        json.dump(swap, f)
    a = tmp_path / "a.ims"
    finish(backup(ims_home, a, "-j", str(rnd.randint(1, 4)), env={"IMS_TEST_SWAP": tmp_path / "swap.json"}))
    got = archived(a)
    want = {(u, "INBOX", uid): data for u, msgs in (("aa", aa), ("ab", ab), ("zc", zc), ("zd", zd))
            for uid, (data, _) in msgs.items()}
    assert {k: v[1] for k, v in got.items()} == want
    kinds = {k: v[0] for k, v in got.items()}
    assert {k for k, v in kinds.items() if v == "link"} == {
        *(("ab", "INBOX", uid) for uid in ab), *(("zd", "INBOX", uid) for uid in zd),
        *(("zc", "INBOX", uid) for uid, data in took.items() if data == zc[uid][0])}


@pytest.mark.parametrize("jobs", [1, 3])
def test_classic_messages_deleted_during_a_backup_give_their_inode_numbers_to_new_mail(tmp_path, jobs):
    """Finding 03 with the store's own operations and the filesystem's own inode
    numbers: imsdeliver aa ab (one file, two links), a full backup of / that stops once
    ab is archived, users aa and ab deleted (mboxutil -d), new mail of the same sizes
    delivered to zc zd, the backup goes on: exit 0, and a restore into an empty store
    gives each message of zc and zd its own bytes, each pair still one inode."""
    with small_ext4(tmp_path / "ext4", "32M") as mnt:    # tmpfs never reuses a number
        _classic_reuse(tmp_path, mnt / "ims", jobs)


def _classic_reuse(tmp_path, home, jobs):
    store = open_store(make_home(home, "classic"))
    for u in ("aa", "ab", "zc", "zd"):
        store.create_user(u)
    for i in range(40):
        store.deliver(["aa", "ab"], io.BytesIO(text(f"OLD {i:02}", 300 + 97 * i)))
    old = {k for _, k in stored(store, "aa").values()}
    a = tmp_path / "a.ims"
    p = backup(home, a, "-j", str(jobs), env={"IMS_TEST_STOP_AFTER": "ab/INBOX"})
    try:
        wait_stopped(p)
        store.delete_user("aa")
        store.delete_user("ab")
        for i in range(80):
            store.deliver(["zc", "zd"], io.BytesIO(text(f"NEW {i:02}", 300 + 97 * (i % 40))))
    finally:
        err = finish(p)
    zc, zd = stored(store, "zc"), stored(store, "zd")
    assert old & {k for _, k in zc.values()}, "the filesystem reused no inode number: nothing tested"
    home2 = tmp_path / "ims2"
    make_home(home2, "classic")
    run(home2, "imsrestore", "-f", a, check=0)
    back = open_store(Config(home=str(home2)))
    for user, live in (("zc", zc), ("zd", zd)):
        assert {uid: data for uid, (data, _) in stored(back, user).items()} == \
            {uid: data for uid, (data, _) in live.items()}, user
    # real hard links: still single copies, in the archive and in the restored store
    assert sorted(k for k, (kind, _) in archived(a).items() if kind == "link" and k[0] != "ab") == \
        [("zd", "INBOX", uid) for uid in zd], err
    assert [k for _, k in stored(back, "zc").values()] == [k for _, k in stored(back, "zd").values()]


def test_dovecot_messages_expunged_during_a_backup_give_their_inode_numbers_to_new_mail(tmp_path, jobs=2):
    """Finding 02 against a real Dovecot: 30 messages APPENDed to Aa and COPYed (hard
    links) to Ab, a full backup (-j 2) that stops once Ab is archived, every message of Aa
    and Ab expunged, 60 new ones APPENDed to Zc and COPYed to Zd (the filesystem hands them
    the freed inode numbers), the backup goes on: exit 0, and a restore into an empty
    store gives Zc and Zd what the client saw (UIDs, bytes, GUIDs, dates), each copy
    still one inode with its original."""
    # on an ext4 of its own (the tests' tmpfs never reuses an inode number) the mail user
    # can reach (not under pytest's 0700 directories)
    top = tempfile.mkdtemp(prefix="ims-inode-reuse-")
    try:
        os.chmod(top, 0o755)
        with small_ext4(os.path.join(top, "fs"), "32M") as mnt:
            os.chmod(mnt, 0o755)
            _dovecot_reuse(tmp_path, os.path.join(mnt, "lab"), jobs)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _dovecot_reuse(tmp_path, workdir, jobs):
    from tests.dovecot_lab import dovecot_lab, message
    from tests.test_incremental_dovecot import view
    with dovecot_lab("plain", workdir=workdir) as lab:
        home = tmp_path / "ims"
        make_home(home, "maildir", **{"partition:primary.path": lab.store, "store.owner": lab.mail_user})

        def inodes(box):
            d = lab.mailbox_path("alice", box)
            return {os.stat(p).st_ino for p in glob.glob(d + "/cur/*") + glob.glob(d + "/new/*")}
        with lab.imap("alice") as imap:
            for b in ("Aa", "Ab", "Zc", "Zd"):
                imap.create(b)
            for i in range(30):
                imap.append("Aa", message(f"OLD message {i:02}", body=f"old {i:02} " * (10 + i)))
            imap.select("Aa")
            imap.uid_copy(imap.uids(), "Ab")
            imap.unselect()
        old = inodes("Aa")
        a = tmp_path / "a.ims"
        p = backup(home, a, "-j", str(jobs), env={"IMS_TEST_STOP_AFTER": "alice/Ab"})
        try:
            wait_stopped(p)
            with lab.imap("alice") as imap:
                for b in ("Aa", "Ab"):
                    imap.select(b)
                    imap.uid_expunge(imap.uids())
                    imap.unselect()
                for i in range(60):
                    imap.append("Zc", message(f"NEW message {i:02}", body=f"new {i:02} " * (10 + i % 30)))
                imap.select("Zc")
                imap.uid_copy(imap.uids(), "Zd")
                imap.unselect()
        finally:
            finish(p)
        assert old & inodes("Zc"), "the filesystem reused no inode number: nothing tested"
        want = view(lab)[0]
        assert len(want["Zd"][3]) == 60
        lab.stop()
        shutil.rmtree(os.path.join(lab.store, "alice"))
        run(home, "imsrestore", "-f", a, check=0)
        lab.start()
        have = view(lab)[0]
        for b in ("INBOX", "Zc", "Zd"):
            assert have[b] == want[b], b
        back = open_store(Config(home=str(home)))
        assert [(m.dev, m.ino) for m in back.messages("alice", "Zc")] == \
            [(m.dev, m.ino) for m in back.messages("alice", "Zd")]     # still single copies


# -- the proof by identity (asm/archive/fileid.py): the inode's generation number --------

# put before HOOKED: IMS_TEST_READS (a file) gets {"dev:ino": reads} of every message file
# whose bytes were read (by the writer or a reader thread) at exit; IMS_TEST_BY_BYTES makes
# the run prove every later copy by its bytes (fileid.GENERATIONS, the internal switch)
COUNTED = r'''
import atexit, json, os, threading
import asm.archive.writer as w
if os.environ.get("IMS_TEST_BY_BYTES"):
    import asm.archive.fileid as fileid
    fileid.GENERATIONS = False
reads, lock = {}, threading.Lock()
real_read_start = w._read_start
def _read_start(f):
    fd = getattr(f, "fd", None)
    if fd is not None:
        st = os.fstat(fd)
        with lock:
            k = f"{st.st_dev}:{st.st_ino}"
            reads[k] = reads.get(k, 0) + 1
    return real_read_start(f)
w._read_start = _read_start
def dump():
    with open(os.environ["IMS_TEST_READS"], "w") as f:
        json.dump(reads, f)
atexit.register(dump)
'''


def test_ext4_gives_a_reused_inode_number_a_new_generation(tmp_path):
    """What the proof stands on (docs/format.md §2.6), on the filesystem the tests can
    make: a file with two links is removed and the next new file takes its inode number,
    200 times over; every time the generation differs, so (st_dev, st_ino, generation)
    never names two files."""
    from asm.archive import fileid
    with small_ext4(tmp_path / "ext4", "16M") as mnt:
        seen, reused = {}, 0
        for i in range(200):
            p = os.path.join(mnt, f"m{i}")
            with open(p, "wb") as f:
                f.write(b"x" * 100)
            os.link(p, p + ".2")
            fd = os.open(p, os.O_RDONLY)
            try:
                who = fileid.identity(fd, os.fstat(fd))
            finally:
                os.close(fd)
            assert who is not None, "ext4 answered no generation number"
            if who[1] in seen:
                reused += 1
                assert seen[who[1]] != who[2], f"inode {who[1]} reused with its generation"
            seen[who[1]] = who[2]
            os.unlink(p)
            os.unlink(p + ".2")
        assert reused >= 100, "ext4 reused no inode number: nothing tested"


def _writer_on(mnt, n):
    from asm.archive import ArchiveWriter
    out = io.BytesIO()
    w = ArchiveWriter(out)
    w.write_header({"driver": "classic"})
    w.add_user("primary", "joe", "user")
    w.add_folder("primary", "joe", "INBOX", uidvalidity=1, uidnext=n + 1, subscribed=True,
                 uids=range(1, n + 1))
    return w, out


def _members(out) -> dict:
    r = ArchiveReader(io.BytesIO(out.getvalue()))
    got = {}
    for m in r:
        if m.kind in ("message", "link"):
            with m.open() as f:
                got[m.uid] = (m.kind, f.read())
    assert r.complete
    return got


def _count_reads(monkeypatch) -> dict:
    """{st_ino: times the writer read the file's bytes} from now on."""
    import asm.archive.writer as wmod
    reads: dict = {}
    real = wmod._read_start

    def counted(f):
        ino = os.fstat(f.fd).st_ino
        reads[ino] = reads.get(ino, 0) + 1
        return real(f)
    monkeypatch.setattr(wmod, "_read_start", counted)
    return reads


def _fresh_fileid(monkeypatch):
    from asm.archive import fileid
    monkeypatch.setattr(fileid, "_none", set())
    monkeypatch.setattr(fileid, "_first", {})
    return fileid


@pytest.mark.parametrize("seed", range(3))
def test_a_reused_inode_number_with_a_new_generation_is_no_link(tmp_path, monkeypatch, seed):
    """Property, writer level, on ext4: a message file with a second link is archived,
    both links removed, and a new file made until it takes the same inode number, then
    given the old one's size and mtime to the nanosecond (only the generation tells them
    apart) and a second link; the writer gets both new copies under the old key.  The
    new file is a full member with its own bytes (a link only when its bytes are the old
    ones, proven by reading them), its second link a link member to it that is never
    read; the first copy of each inode is read once."""
    fileid = _fresh_fileid(monkeypatch)
    rnd = random.Random(seed)
    rounds = 12
    with small_ext4(tmp_path / "ext4", "16M") as mnt:
        w, out = _writer_on(mnt, 4 * rounds)
        reads = _count_reads(monkeypatch)
        want, uid = {}, 0
        for r in range(rounds):
            old = text(f"OLD {seed} {r}", rnd.choice([60, 3000, 90_000]))
            a = os.path.join(mnt, f"a{r}")
            with open(a, "wb") as f:
                f.write(old)
            os.link(a, a + ".2")
            st = os.stat(a)
            key = (st.st_dev, st.st_ino)
            for p in (a, a + ".2"):
                uid += 1
                w.add_message("primary", "joe", "INBOX", uid=uid, flags=(), keywords=(),
                              internaldate=1.7e9, stored=1.7e9, nlink=2, src_path=p, link_key=key)
                want[uid] = ("message" if p == a else "link", old)
            assert reads.pop(st.st_ino, 0) == 1          # the second link was not read
            os.unlink(a)
            os.unlink(a + ".2")
            same = rnd.random() < 0.3
            new = old if same else bytes(b ^ 1 if i == len(old) // 2 else b for i, b in enumerate(old))
            for i in range(50):
                b = os.path.join(mnt, f"b{r}.{i}")
                with open(b, "wb") as f:
                    f.write(new)
                if os.stat(b).st_ino == st.st_ino:
                    break
            else:
                pytest.fail("ext4 did not reuse the inode number: nothing tested")
            os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.link(b, b + ".2")
            fd = os.open(b, os.O_RDONLY)
            try:
                who = fileid.identity(fd, os.fstat(fd))
            finally:
                os.close(fd)
            assert who[:2] == key and who[3:] == (st.st_size, st.st_mtime_ns)
            for p in (b, b + ".2"):
                uid += 1
                w.add_message("primary", "joe", "INBOX", uid=uid, flags=(), keywords=(),
                              internaldate=1.7e9, stored=1.7e9, nlink=2, src_path=p, link_key=key)
                want[uid] = ("message" if p == b and not same else "link", new)
            # the new file: read once (proven by its bytes or written); its link never
            assert reads.pop(st.st_ino, 0) == 1
        w.close()
    assert _members(out) == want


def _ioctl_says(monkeypatch, fileid, answer):
    """fcntl.ioctl as fileid calls it: raising OSError(answer) or giving generation
    ``answer`` for every file; returns the list of st_ino it was asked about."""
    import struct
    asked = []

    def ioctl(fd, req, buf):
        assert req == fileid.FS_IOC_GETVERSION
        asked.append(os.fstat(fd).st_ino)
        if isinstance(answer, OSError):
            raise answer
        return struct.pack("I", answer) + bytes(len(buf) - 4)
    monkeypatch.setattr(fileid.fcntl, "ioctl", ioctl)
    return asked


@pytest.mark.parametrize("fallback", ["ENOTTY", "EOPNOTSUPP", "EINVAL", "one generation", "switch"])
def test_without_generation_numbers_every_later_copy_is_proven_by_its_bytes(
        tmp_path, monkeypatch, fallback):
    """A filesystem that has no generation numbers (the ioctl refused: ENOTTY,
    EOPNOTSUPP, EINVAL), that gives every inode the same one, or the internal switch
    (fileid.GENERATIONS = False): every later copy is read and is a link only for the
    first copy's bytes; files under a key whose bytes differ (another file under the
    same number) are full members.  The filesystem is asked once, then never again
    (remembered per st_dev)."""
    import errno
    fileid = _fresh_fileid(monkeypatch)
    answer = {"one generation": 7}.get(fallback)
    if fallback == "switch":
        monkeypatch.setattr(fileid, "GENERATIONS", False)
    elif answer is None:
        answer = OSError(getattr(errno, fallback), os.strerror(getattr(errno, fallback)))
    asked = _ioctl_says(monkeypatch, fileid, answer)
    rnd = random.Random(fallback)
    with small_ext4(tmp_path / "ext4", "16M") as mnt:
        w, out = _writer_on(mnt, 40)
        reads = _count_reads(monkeypatch)
        files, want, last = [], {}, {}
        for i in range(8):
            p = os.path.join(mnt, f"f{i}")
            with open(p, "wb") as f:
                f.write(text(f"FILE {i}", rnd.choice([50, 5000])))
            os.link(p, p + ".2")
            files.append(p)
        for uid in range(1, 41):
            # a key: mostly a file's own, now and then another file's (its number reused)
            p = rnd.choice(files) + rnd.choice(["", ".2"])
            st = os.stat(p)
            key = (st.st_dev, st.st_ino) if rnd.random() < 0.8 else \
                (st.st_dev, os.stat(rnd.choice(files)).st_ino)
            with open(p, "rb") as f:
                data = f.read()
            w.add_message("primary", "joe", "INBOX", uid=uid, flags=(), keywords=(),
                          internaldate=1.7e9, stored=1.7e9, nlink=2, src_path=p, link_key=key)
            link = last.get(key) == data
            if not link:
                last[key] = data
            want[uid] = ("link" if link else "message", data)
        w.close()
    assert _members(out) == want
    assert sum(reads.values()) == 40                 # every copy read
    assert len(asked) == {"switch": 0, "one generation": 2}.get(fallback, 1), asked


@pytest.mark.parametrize("proof,seed", [("generation", s) for s in range(4)] + [("bytes", 1), ("bytes", 2)])
def test_each_inode_is_read_once_where_its_generation_proves_its_copies(tmp_path, proof, seed):
    """Property over seeds, both drivers, -j 1..4, a store on ext4: messages delivered to 2-4 users
    at once (one inode each) and to one user, some bigger than one read buffer.  Every
    message restores as its own bytes, each inode's later copies are link members, and
    each inode's bytes are read once in the whole run (by the writer or a reader thread)
    where the filesystem's generation numbers prove the copies; with the proof by bytes
    forced (fileid.GENERATIONS = False) every copy is read."""
    rnd = random.Random(seed)
    driver = ("classic", "maildir")[seed % 2]
    jobs = seed + 1
    with small_ext4(tmp_path / "ext4", "48M") as mnt:
        home = mnt / "ims"
        store = open_store(make_home(home, driver))
        users = ["u1", "u2", "u3", "u4", "u5"]
        for u in users:
            store.create_user(u)
        for i in range(rnd.randint(20, 40)):
            size = rnd.choice([30, 900, 20_000, 200_000] + ([(1 << 20) + 5] if i == 3 else []))
            store.deliver(rnd.sample(users, rnd.choice([1, 2, 2, 3, 4])), io.BytesIO(text(f"M {i}", size)))
        live = {u: stored(store, u) for u in users}
        copies: dict = {}
        for u in users:
            for _, (_, key) in live[u].items():
                copies[key] = copies.get(key, 0) + 1
        assert max(copies.values()) >= 3
        a = tmp_path / "a.ims"
        env = {"IMS_TEST_READS": tmp_path / "reads.json", "IMS_TEST_BY_BYTES": "1" if proof == "bytes" else None}
        p = subprocess.Popen([sys.executable, "-c", COUNTED + HOOKED, "-j", str(jobs), "-f", str(a), "/"],
                             env=command_env(home, env), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
        with open(tmp_path / "reads.json") as f:
            reads = {tuple(int(x) for x in k.split(":")): n for k, n in json.load(f).items()}
    got = archived(a)
    assert {k: v[1] for k, v in got.items()} == \
        {(u, "INBOX", uid): data for u in users for uid, (data, _) in live[u].items()}
    assert sum(v[0] == "link" for v in got.values()) == sum(n - 1 for n in copies.values())
    want = copies if proof == "bytes" else {k: 1 for k in copies}
    assert reads == want, f"-j {jobs}"
