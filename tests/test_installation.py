"""An installation is never made by a command that only reads, and a bad one is one
line and a documented status: a mistyped IMS_HOME, IMS_HOME naming a file, a msg.conf
that is not UTF-8, a store.owner that cannot be, a full disk under msconfig, a
partition directory that is missing or the empty mount point of an unmounted disk."""
from __future__ import annotations

import io
import os
import shutil
import subprocess

import pytest

from asm.archive.reader import ArchiveReader
from asm.errors import EXIT_EMPTY, EXIT_NOSPACE, EXIT_STORE, EXIT_USAGE
from asm.store import open_store
from tests.helpers import make_home, msg, require, run, small_tmpfs


def one_line(p) -> str:
    err = p.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    return err


def tree(path) -> list:
    out = []
    for d, dirs, files in os.walk(path):
        out += [os.path.relpath(os.path.join(d, n), path) for n in dirs + files]
    return sorted(out)


@pytest.fixture
def archive(tmp_path):
    """A good archive of a one-user store (for commands that read one)."""
    home = tmp_path / "src"
    store = open_store(make_home(home, "classic"))
    store.create_user("joe")
    store.append("joe", "INBOX", io.BytesIO(msg(1)))
    path = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", path, "/", check=0)
    return path


READERS = [
    ("imsbackup", "-f", "{tmp}/out.ims", "/"),
    ("imsbackup", "-f", "{tmp}/out.ims", "/primary/joe"),
    ("imsrestore", "-f", "{archive}", "-t"),
    ("imsrestore", "-f", "{archive}", "-h"),
    ("mboxutil", "-l"),
    ("mboxutil", "-d", "user/joe"),
    ("imsdeliver", "joe", "-m", "{archive}"),
    ("msconfig", "show"),
    ("msconfig", "show", "store.driver"),
    ("msconfig", "unset", "ssh.port"),
]


@pytest.mark.parametrize("argv", READERS, ids=lambda a: " ".join(a[:2]))
def test_a_mistyped_ims_home_is_an_error_and_makes_nothing(tmp_path, archive, argv):
    typo = tmp_path / "imss"
    argv = [a.format(tmp=tmp_path, archive=archive) for a in argv]
    p = run(typo, *argv)
    assert p.returncode == EXIT_USAGE, (p.returncode, p.stderr)
    assert f"IMS_HOME={typo} does not exist" in one_line(p)
    assert not typo.exists(), "a command that reads made an installation"
    assert not (tmp_path / "out.ims").exists()


@pytest.mark.parametrize("argv", READERS, ids=lambda a: " ".join(a[:2]))
def test_a_directory_that_is_no_installation_is_an_error(tmp_path, archive, argv):
    other = tmp_path / "srv"
    (other / "www").mkdir(parents=True)
    argv = [a.format(tmp=tmp_path, archive=archive) for a in argv]
    p = run(other, *argv)
    assert p.returncode == EXIT_USAGE
    assert "is not an ims-asm installation" in one_line(p)
    assert tree(other) == ["www"]


@pytest.mark.parametrize("argv", READERS + [("msconfig", "set", "ssh.port", "22"),
                                            ("imsrestore", "-f", "{archive}"),
                                            ("mboxutil", "-c", "user/joe")],
                         ids=lambda a: " ".join(a[:3]))
def test_ims_home_naming_a_file(tmp_path, archive, argv):
    f = tmp_path / "ims.conf"
    f.write_text("not a directory\n")
    argv = [a.format(tmp=tmp_path, archive=archive) for a in argv]
    p = run(f, *argv)
    assert p.returncode == EXIT_USAGE
    assert f"IMS_HOME={f} is a file" in one_line(p)
    assert f.read_text() == "not a directory\n"


def test_only_msconfig_set_makes_an_installation_and_says_so(tmp_path):
    home = tmp_path / "ims"
    p = run(home, "msconfig", "set", "store.driver", "maildir")
    assert p.returncode == 0
    assert p.stderr.decode() == f"msconfig: created the installation {home} (IMS_HOME)\n"
    assert tree(home) == ["config", "config/.msg.conf.lock", "config/msg.conf"]
    assert run(home, "msconfig", "set", "ssh.port", "2222").stderr == b""   # exists now: no word
    deep = tmp_path / "no" / "such" / "ims"
    p = run(deep, "msconfig", "set", "ssh.port", "2222")
    assert p.returncode == EXIT_USAGE and f"{tmp_path / 'no' / 'such'} does not exist" in one_line(p)
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_readers_of_a_new_installation_make_no_store(tmp_path, driver):
    home = tmp_path / "ims"
    run(home, "msconfig", "set", "store.driver", driver, check=0)
    for argv in (["mboxutil", "-l"], ["imsbackup", "-f", tmp_path / "a.ims", "/"],
                 ["imsbackup", "--allow-empty", "-f", tmp_path / "b.ims", "/"]):
        run(home, *argv)
    # (the backup that wrote an archive gave the installation its identity: no store)
    assert tree(home) == ["config", "config/.msg.conf.lock", "config/msg.conf", "data", "data/installation.id"]
    # a restore may make the store inside the installation
    src = tmp_path / "src"
    s = open_store(make_home(src, driver))
    s.create_user("joe")
    s.append("joe", "INBOX", io.BytesIO(msg(1)))
    run(src, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
    run(home, "imsrestore", "-f", tmp_path / "full.ims", check=0)
    assert "joe" in run(home, "mboxutil", "-l", check=0).stdout.decode()


def test_msg_conf_that_is_not_utf8(ims_home, tmp_path):
    make_home(ims_home, "classic")
    conf = ims_home / "config" / "msg.conf"
    conf.write_bytes(b"store.driver = classic\nstore.backupexclude = Corbeille%Envoy\xe9s\n")
    for argv in (["imsbackup", "-f", tmp_path / "a.ims", "/"], ["msconfig", "show"], ["mboxutil", "-l"],
                 ["msconfig", "set", "ssh.port", "2"]):
        p = run(ims_home, *argv)
        assert p.returncode == EXIT_USAGE
        line = one_line(p)
        assert f"{conf}:2: not UTF-8 text (byte 0xe9 at column 38)" in line, line
    assert conf.read_bytes().endswith(b"Envoy\xe9s\n"), "msconfig set must not rewrite a file it cannot read"


@pytest.mark.parametrize("value,why", [
    ("4294967296", "between 0 and 4294967294"),
    ("4294967295", "between 0 and 4294967294"),
    ("99999999999999999999999", "between 0 and 4294967294"),
    ("3999999999", "no user with ID 3999999999"),
    ("-1", "no such user"),
    ("²", "no such user"),
    ("no-such-user-xyzzy", "no such user"),
])
def test_store_owner_must_be_a_user_that_exists(ims_home, tmp_path, value, why):
    make_home(ims_home, "classic")
    p = run(ims_home, "msconfig", "set", "store.owner", value)
    assert p.returncode == EXIT_USAGE and why in one_line(p)
    assert b"store.owner" not in (ims_home / "config" / "msg.conf").read_bytes()
    # the same value written by hand stops every command before it touches the store
    with open(ims_home / "config" / "msg.conf", "a", encoding="utf-8") as f:
        f.write(f"store.owner = {value}\n")
    p = run(ims_home, "imsrestore", "-f", tmp_path / "none.ims")
    assert p.returncode == EXIT_USAGE and why in one_line(p)


@pytest.mark.parametrize("size", ["8k", "24k"])
def test_a_full_disk_while_the_mailbox_list_or_journal_is_written_is_exit_13(tmp_path, size):
    """The disk fills while the classic store's mailbox list (or the restore journal)
    is made or written: exit 13 and one line that says the disk is full, not 17
    ("database or disk is full" / "disk I/O error": a damaged store)."""
    src = tmp_path / "src"
    make_home(src, "classic")
    run(src, "mboxutil", "-c", "user/joe", check=0)
    run(src, "imsdeliver", "joe", input=b"Subject: m\r\n\r\nbody\r\n", check=0)
    archive = tmp_path / "a.ims"
    run(src, "imsbackup", "-f", archive, "/", check=0)
    with small_tmpfs(tmp_path / "mnt", size) as mnt:
        home = mnt / "ims"
        os.makedirs(home / "config")
        shutil.copy(src / "config" / "msg.conf", home / "config")
        for argv, kw in ((("imsrestore", "-f", archive), {}), (("mboxutil", "-c", "user/ann"), {}),
                         (("imsdeliver", "joe"), {"input": b"Subject: n\r\n\r\nbody\r\n"})):
            p = run(home, *argv, **kw)
            assert p.returncode == EXIT_NOSPACE, (argv, p.stderr)
            assert "full" in one_line(p), (argv, p.stderr)
    # the restore journal ($IMS_HOME/data) on the full disk, the store elsewhere
    with small_tmpfs(tmp_path / "mnt2", "1m") as mnt:
        home = mnt / "ims"
        cfg = make_home(home, "classic")
        cfg.set("partition:primary.path", str(tmp_path / "dst" / "primary"))
        cfg.set("store.root", str(tmp_path / "dst" / "root"))
        st = os.statvfs(mnt)
        with open(mnt / "fill", "wb") as f:
            f.write(b"\0" * (st.f_bavail * st.f_frsize - 16 * 1024))
        p = run(home, "imsrestore", "-f", archive)
        assert p.returncode == EXIT_NOSPACE, p.stderr
        line = one_line(p)
        assert "restore-journal.db" in line and "full" in line, line


def test_store_owner_by_id_takes_that_users_group(ims_home):
    cfg = make_home(ims_home, "classic", **{"store.owner": "0"})
    assert cfg.owner() == (0, 0)
    import pwd
    nobody = pwd.getpwnam("nobody")
    cfg.set("store.owner", str(nobody.pw_uid))
    assert cfg.owner() == (nobody.pw_uid, nobody.pw_gid)


def test_msconfig_set_on_a_full_disk(tmp_path):
    mnt = tmp_path / "mnt"
    with small_tmpfs(mnt, "256k"):
        home = mnt / "ims"
        run(home, "msconfig", "set", "store.driver", "maildir", check=0)
        before = (home / "config" / "msg.conf").read_bytes()
        subprocess.run([require("dd"), "if=/dev/zero", f"of={mnt}/fill", "bs=4k"], capture_output=True)
        p = run(home, "msconfig", "set", "staging.afterbatch", "x" * 4000)
        assert p.returncode == EXIT_NOSPACE, p.stderr
        line = one_line(p)
        assert f"cannot write {home}/config/msg.conf: No space left on device" in line
        assert (home / "config" / "msg.conf").read_bytes() == before
        assert sorted(os.listdir(home / "config")) == [".msg.conf.lock", "msg.conf"], "no temporary file left"
        os.unlink(mnt / "fill")
        run(home, "msconfig", "set", "staging.afterbatch", "x" * 4000, check=0)


# -- partitions ---------------------------------------------------------------------

@pytest.mark.parametrize("driver", ["classic", "maildir"])
@pytest.mark.parametrize("cmd", [("imsbackup", "-f", "{tmp}/a.ims", "/"),
                                 ("imsbackup", "-f", "{tmp}/a.ims", "/second"),
                                 ("mboxutil", "-l")], ids=lambda c: " ".join(c[:1] + c[-1:]))
def test_a_missing_partition_directory_is_an_error_for_readers(tmp_path, driver, cmd):
    home = tmp_path / "ims"
    store = open_store(make_home(home, driver))
    store.create_user("joe")
    store.append("joe", "INBOX", io.BytesIO(msg(1)))
    run(home, "msconfig", "set", "partition:second.path", tmp_path / "mnt" / "second", check=0)
    p = run(home, *[str(c).format(tmp=tmp_path) for c in cmd])
    assert p.returncode == EXIT_STORE, p.stderr
    assert f"partition 'second': its directory {tmp_path}/mnt/second does not exist" in one_line(p)
    assert not (tmp_path / "mnt").exists() and not (tmp_path / "a.ims").exists()
    # a path inside another partition does not need it
    run(home, "imsbackup", "-f", tmp_path / "joe.ims", "/primary/joe", check=0)


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_a_partition_that_is_a_file(tmp_path, driver):
    home = tmp_path / "ims"
    make_home(home, driver, **{"partition:primary.path": str(tmp_path / "p")})
    (tmp_path / "p").write_text("x")
    p = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/")
    assert p.returncode == EXIT_STORE and "is not a directory" in one_line(p)


def _misplaced_partitions(tmp_path, home, cfg) -> list:
    """(option, path, what the refusal says) for each directory a partition cannot be
    (/, IMS_HOME also through a symbolic link or with a trailing /, a directory holding
    it, its config/, the store's root or a directory holding it)."""
    os.symlink(home, tmp_path / "link")
    return [("partition:primary.path", "/", "is the root directory"),
            ("partition:primary.path", f"{home}/", "is IMS_HOME"),
            ("partition:extra.path", str(tmp_path / "link"), "is IMS_HOME"),
            ("partition:extra.path", cfg.store_root, "is the store's root"),
            ("partition:extra.path", str(tmp_path), "holds IMS_HOME"),
            ("partition:extra.path", str(home / "config" / "p"), "configuration directory"),
            ("partition:extra.path", str(home / "data"), "holds the store's root")]


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_a_partition_cannot_be_the_root_directory_ims_home_or_the_store_root(tmp_path, driver):
    """msconfig set partition:NAME.path to /, to IMS_HOME (also through a symbolic link
    or with a trailing /) or a directory holding it, into its config/, or to the store's
    root or a directory holding it: exit 2, one line naming what the path
    is, and the configuration as it was.  (Taken, a restore wrote users beside the
    installation's own files, and a backup read those as users.)"""
    home = tmp_path / "ims"
    cfg = make_home(home, driver)
    before = (home / "config" / "msg.conf").read_bytes()
    cases = _misplaced_partitions(tmp_path, home, cfg)
    for name, value, why in cases:
        p = run(home, "msconfig", "set", name, value)
        assert p.returncode == 2 and why in one_line(p) and name in one_line(p), (value, p.stderr)
        assert (home / "config" / "msg.conf").read_bytes() == before
    run(home, "msconfig", "set", "partition:extra.path", tmp_path / "extra", check=0)


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_a_partition_written_into_msg_conf_by_hand_is_checked_as_msconfig_checks_it(tmp_path, driver):
    """The same partition paths written into msg.conf by hand (configuration management,
    an editor): every command that opens the store exits 2 with the line msconfig set
    gives, and none writes anything into the directory named (a restore of a whole
    archive would have put its users beside the installation's own files)."""
    home = tmp_path / "ims"
    cfg = make_home(home, driver)
    s = open_store(cfg)
    s.create_user("joe")
    s.append("joe", "INBOX", io.BytesIO(msg(1)))
    getattr(s, "close", lambda: None)()
    run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
    conf = home / "config" / "msg.conf"
    good = conf.read_text()
    cases = _misplaced_partitions(tmp_path, home, cfg)

    def tree() -> list:
        return sorted((os.path.relpath(os.path.join(d, n), tmp_path), os.lstat(os.path.join(d, n)).st_mtime_ns)
                      for d, ds, fs in os.walk(tmp_path) for n in ds + fs)

    for name, value, why in cases:
        conf.write_text(good + f"{name} = {value}\n")
        before = tree()
        for argv in (["imsbackup", "-f", tmp_path / "x.ims", "/"],
                     ["imsrestore", "-f", tmp_path / "full.ims"],
                     ["imsdeliver", "joe"]):
            p = run(home, *argv, input=msg(2))
            said = one_line(p)
            assert p.returncode == 2 and why in said and name in said, (value, argv, p.returncode, p.stderr)
        assert tree() == before, value
    conf.write_text(good)
    run(home, "imsrestore", "-f", tmp_path / "full.ims", check=0)


def test_a_restore_into_an_unmounted_classic_partition_says_so(tmp_path):
    """The restore said "the index of folder 'INBOX' ... cannot be read; the folder is
    damaged" where imsbackup says the disk is not mounted: it says what imsbackup says,
    and writes nothing on the empty mount point."""
    home = tmp_path / "ims"
    cfg = make_home(home, "classic")
    s = open_store(cfg)
    for u in ("joe", "kim"):
        s.create_user(u)
        s.append(u, "INBOX", io.BytesIO(msg(1)))
    s.close()
    run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
    (tmp_path / "mnt").mkdir()
    cfg.set("partition:primary.path", str(tmp_path / "mnt"))
    said = one_line(run(home, "imsbackup", "-f", tmp_path / "x.ims", "/primary/kim", check=EXIT_STORE))
    assert said.endswith("is its disk mounted? (check partition:primary.path)\n"), said
    for argv in (["imsrestore", "-f", tmp_path / "full.ims", "/primary/kim"],
                 ["imsrestore", "-f", tmp_path / "full.ims", "/primary/kim/INBOX"],
                 ["imsrestore", "-f", tmp_path / "full.ims"],
                 ["imsdeliver", "kim"]):
        p = run(home, *argv, input=msg(2))
        assert p.returncode == EXIT_STORE, (argv, p.stderr)
        assert said.split(": ", 1)[1] in one_line(p) and "damaged" not in one_line(p), (argv, p.stderr)
        assert os.listdir(tmp_path / "mnt") == [], argv


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_an_unmounted_partition_disk(tmp_path, monkeypatch, driver):
    """The partition's disk is mounted when the store is filled, then not: the mount
    point is an empty directory.  With the mount point in fstab the command says so;
    without, the backup still refuses an empty partition (exit 18)."""
    mnt = tmp_path / "mnt"
    home = tmp_path / "ims"
    cfg = make_home(home, driver, **{"partition:second.path": str(mnt)})
    with small_tmpfs(mnt, "4m"):
        s = open_store(cfg)
        s.create_user("joe")
        s.create_user("kim", "second")
        s.append("kim", "INBOX", io.BytesIO(msg(2)))
        run(home, "imsbackup", "-f", tmp_path / "ok.ims", "/", check=0)
        s.close() if hasattr(s, "close") else None
    assert os.listdir(mnt) == []
    monkeypatch.setenv("IMS_HOME", str(home))
    p = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/")
    if driver == "classic":     # the mailbox list knows kim lives there: the disk is missing
        assert p.returncode == EXIT_STORE, p.stderr
        assert f"places 1 users on it but {mnt} holds none of their directories: is its disk mounted?" \
            in one_line(p)
        p = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/second/kim")
        assert p.returncode == EXIT_STORE and "is its disk mounted?" in one_line(p)
    else:                       # an empty partition
        assert p.returncode == EXIT_EMPTY, p.stderr
        assert f"second: {mnt}" in one_line(p) and "is the disk mounted?" in one_line(p)
    from asm.backup import select
    from asm.cli.context import open_installation
    from asm.logical import parse
    from asm.store import partitions
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# test\nUUID=1234 / ext4 defaults 0 1\n/dev/sdz1 {mnt} ext4 noatime 0 2\n")
    monkeypatch.setattr(partitions, "FSTAB", str(fstab))
    assert partitions.unmounted_mount_point(str(mnt)) == str(mnt)
    assert partitions.unmounted_mount_point(str(mnt / "deeper")) == str(mnt)
    assert partitions.unmounted_mount_point(str(tmp_path)) is None
    inst = open_installation(str(home))
    for path in ("/", "/second", "/second/user"):
        with pytest.raises(partitions.PartitionUnavailable, match=f"{mnt} is a mount point in {fstab} but "
                                                                  f"nothing is mounted on it") as exc:
            select(inst.store, inst.groups, [parse(path, inst.groups)], allow_empty=True)
        assert exc.value.status == EXIT_STORE
    assert not (tmp_path / "a.ims").exists()
    # a restore must not fill the disk underneath either
    assert open_store(cfg).check_partition("primary", writing=True)
    with pytest.raises(partitions.PartitionUnavailable, match="nothing is mounted on it"):
        open_store(cfg).create_user("new", "second")
    assert os.listdir(mnt) == []


def test_an_archive_of_every_user_after_the_disk_comes_back(tmp_path):
    """The refusal is about the disk: once it is mounted again the same command works
    and the archive holds both partitions' users."""
    mnt = tmp_path / "mnt"
    home = tmp_path / "ims"
    cfg = make_home(home, "maildir", **{"partition:second.path": str(mnt)})
    with small_tmpfs(mnt, "4m"):
        s = open_store(cfg)
        s.create_user("joe")
        s.create_user("kim", "second")
        run(home, "imsbackup", "-f", tmp_path / "ok.ims", "/", check=0)
    with open(tmp_path / "ok.ims", "rb") as f:
        users = sorted(m.user for m in ArchiveReader(f).members() if m.kind == "user")
    assert users == ["joe", "kim"]


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_the_installation_s_own_directories_are_not_writable_by_others_whatever_the_umask(tmp_path, driver):
    """Under umask 000, msconfig and imsrestore made $IMS_HOME/config and $IMS_HOME/data
    0777 (os.makedirs): anyone could rename a msg.conf naming another store.owner into
    config/, and root's next restore gave the restored mail to that user.  They are
    0755 (msg.conf 0644) whatever the umask, and nothing the commands make is
    writable by group or others."""
    import stat
    home = tmp_path / "ims"
    old = os.umask(0)
    try:
        run(home, "msconfig", "set", "store.driver", driver, check=0)
        run(home, "mboxutil", "-c", "user/joe", check=0)
        run(home, "imsdeliver", "joe", input=msg(1), check=0)
        run(home, "imsbackup", "-f", tmp_path / "a.ims", "/", check=0)
        run(home, "imsrestore", "-f", tmp_path / "a.ims", check=0)
    finally:
        os.umask(old)
    assert {d: oct(stat.S_IMODE(os.stat(home / d).st_mode)) for d in ("config", "data", "config/msg.conf")} \
        == {"config": "0o755", "data": "0o755", "config/msg.conf": "0o644"}
    writable = [os.path.join(r, n) for r, ds, fs in os.walk(home) for n in ds + fs
                if not os.path.islink(os.path.join(r, n)) and os.lstat(os.path.join(r, n)).st_mode & 0o022]
    assert writable == []
