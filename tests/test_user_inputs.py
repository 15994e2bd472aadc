"""Command-line input an administrator mistypes, table-driven: each gives one line on
stderr naming what was given and what is expected, exit status 2 (usage error,
docs/operations.md), no traceback, and does nothing (creates no file or directory)."""
from __future__ import annotations

import os

import pytest

from asm.errors import EXIT_USAGE
from tests.helpers import in_home, make_home, put, run
from asm.store import open_store


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "ims"
    cfg = make_home(h, "classic")
    with in_home(h):
        store = open_store(cfg)
        put(store, "bob", "INBOX", 1)
    return h


def _one_line(p):
    err = p.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    return err


# not YYYYMMDD[:HHMMSS]: strptime read '2026115' as 2026-11-05 and '202611' as 2026-01-01
BAD_DATES = ["2026115", "202611", "20261126:0200", "20261126:020", "", " 20261126", "20261126:",
             "2026-11-26", "20261126:240000", "20260230", "20261126:1200000", "２０２６１１２６"]


@pytest.mark.parametrize("date", BAD_DATES, ids=range(len(BAD_DATES)))
def test_bad_date_imsbackup(home, tmp_path, date):
    out = tmp_path / "d.ims"
    p = run(home, "imsbackup", "-f", out, "-d", date, "/primary/bob")
    assert p.returncode == EXIT_USAGE, p.stderr
    err = _one_line(p)
    # (in the form, but no day or time there is: which part does not exist)
    said = {"20261126:240000": "there is no time 24:00:00", "20260230": "there is no 2026-02-30"}
    assert repr(date) in err and said.get(date, "YYYYMMDD") in err, err
    assert not out.exists()


@pytest.mark.parametrize("date", ["2026115", "20261126:0200", ""])
def test_bad_date_imsasm(home, date):
    p = run(home, "imsasm", "-s", "-t", date, "/primary/bob")
    assert p.returncode == EXIT_USAGE, p.stderr
    assert repr(date) in _one_line(p)


def test_good_dates_still_taken(home, tmp_path):
    for date in ("20200115", "20200115:235959"):
        run(home, "imsbackup", "-f", tmp_path / "d.ims", "-d", date, "/primary/bob", check=0)


@pytest.mark.parametrize("text", ["2026115", "202611", "20261126:0200", "", "20260230"])
def test_bad_date_networker_getdate(text):
    from plugins.networker import getdate
    with pytest.raises(getdate.DateError, match="YYYYMMDD"):
        getdate.parse(text)


def test_networker_getdate_forms_still_taken():
    from plugins.networker import getdate
    assert getdate.parse("20240501:131000") == getdate.parse("2024-05-01 13:10:00")
    assert getdate.parse("20240501") == getdate.parse("05/01/2024")
    assert getdate.parse("1700000000") == 1700000000.0


@pytest.mark.parametrize("date", ["2026115", "20261126:020", ""])
def test_bad_date_imsstage_at(home, tmp_path, date):
    stage = tmp_path / "stage"
    stage.mkdir()
    p = run(home, "imsstage", "locate", "-D", stage, "--at", date, "/primary/bob")
    assert p.returncode == EXIT_USAGE, p.stderr
    assert repr(date) in _one_line(p)


BACULA_COMMANDS = [["backup", "/primary/bob"], ["restore", "/primary/bob"], ["select", "/primary/bob"],
                   ["select", "--clear"], ["history"], ["fileset"], ["jobstart", "--jobid", "1", "--level", "Full"],
                   ["jobdone", "--jobid", "1"], ["jobfailed", "--jobid", "1"], ["restorestart", "--jobid", "1"],
                   ["restoredone", "--jobid", "1"]]


@pytest.mark.parametrize("argv", BACULA_COMMANDS, ids=[a[0] + str(i) for i, a in enumerate(BACULA_COMMANDS)])
def test_imsbacula_mistyped_home_creates_nothing(home, argv):
    """A mistyped --home (or IMS_HOME) is refused as every other command refuses it; it
    used to be created (data/bacula/state.db) and then passed as an installation."""
    typo = str(home) + "x"
    for how in (["--home=" + typo], []):
        p = run(None, "imsbacula", *how, *argv, input=b"", env={"IMS_HOME": None if how else typo})
        assert p.returncode == EXIT_USAGE, (how, p.stderr)
        err = _one_line(p)
        assert f"IMS_HOME={typo} does not exist" in err, err
        assert not (home.parent / (home.name + "x")).exists()


BAD_STAGE_NUMBERS = [(["done", "--keep", "-1"], "--keep"), (["done", "--keep", "1001"], "--keep"),
                     (["check", "--max-age", "-5"], "--max-age"), (["check", "--max-age", "0"], "--max-age"),
                     (["check", "--max-age", "nan"], "--max-age"), (["check", "--max-age", "inf"], "--max-age"),
                     (["dump", "-j", "0"], "-j"), (["dump", "-j", "-2"], "-j"), (["dump", "-j", "65"], "-j"),
                     (["dump", "--deadline", "-1"], "--deadline"), (["dump", "--deadline", "nan"], "--deadline"),
                     (["dump", "--wait", "-1"], "--wait"), (["push", "--wait", "nan"], "--wait")]


@pytest.mark.parametrize("argv,option", BAD_STAGE_NUMBERS, ids=range(len(BAD_STAGE_NUMBERS)))
def test_imsstage_bad_counts_and_ages(home, tmp_path, argv, option):
    """imsstage done --keep -1 (meant: keep them all) removed every staged dump, the newest
    included, exit 0; check --max-age -5 said 'younger than -5 h' (15)."""
    stage = tmp_path / "stage"
    stage.mkdir()
    run(home, "imsstage", "dump", "-D", stage, "-j", "1", check=0)
    before = sorted(p.name for p in stage.iterdir())
    p = run(home, "imsstage", *argv[:1], "-D", stage, *argv[1:])
    assert p.returncode == EXIT_USAGE, p.stderr
    err = _one_line(p)
    assert option in err and repr(argv[-1]) in err, err
    assert sorted(p.name for p in stage.iterdir()) == before


@pytest.mark.parametrize("argv", [["--keep", "-1"], ["--max-age", "-5"], ["-j", "0"]])
def test_imsnbu_install_bad_counts(home, tmp_path, argv):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (tmp_path / "stage").mkdir()
    p = run(home, "imsnbu", "install", "--dir", bindir, "-D", tmp_path / "stage", *argv)
    assert p.returncode == EXIT_USAGE, p.stderr
    assert argv[0] in _one_line(p)
    assert list(bindir.iterdir()) == []


def test_local_name_with_colon_read_as_host(home, tmp_path):
    """-f full-02:00.ims (a time in a local file name) is [user@]host:path for host
    'full-02': the line says so and names ./full-02:00.ims; a host that does not
    resolve is 10 (no connection), not 12 ('no SSH key to offer')."""
    env = {"HOME": tmp_path, "SSH_AUTH_SOCK": None}
    p = run(home, "imsbackup", "-f", "full-02:00.ims", "/primary/bob", env=env, cwd=tmp_path)
    assert p.returncode == 10, p.stderr
    err = _one_line(p)
    assert "'full-02'" in err and "./full-02:00.ims" in err, err
    assert list(tmp_path.glob("full-02*")) == []
    p = run(home, "imsrestore", "-t", "-f", "nohost.invalid:/x.ims", env=env)
    assert p.returncode == 10, p.stderr
    assert "unknown host 'nohost.invalid'" in _one_line(p)


@pytest.mark.parametrize("plugins,unknown", [("classic,maildr", "maildr"), ("classic,localdevice", "localdevice"),
                                             ("classic, localdevices ,sh", "sh")])
def test_ims_asm_plugins_typo(home, tmp_path, plugins, unknown):
    """A misspelt IMS_ASM_PLUGINS gave 'no device plugin can open FILE' (3), naming neither
    the unknown name nor the variable."""
    out = tmp_path / "a.ims"
    for argv in (["imsbackup", "-f", out, "/primary/bob"], ["mboxutil", "-l"], ["imsplugins", "list"]):
        p = run(home, *argv, env={"IMS_ASM_PLUGINS": plugins})
        assert p.returncode == EXIT_USAGE, (argv, p.stderr)
        err = _one_line(p)
        assert "IMS_ASM_PLUGINS" in err and repr(unknown) in err and "localdevices" in err, err
    assert not out.exists()


def test_ims_asm_plugins_without_localdevices(home, tmp_path):
    p = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/primary/bob", env={"IMS_ASM_PLUGINS": "classic"})
    assert p.returncode == EXIT_USAGE, p.stderr
    err = _one_line(p)
    assert "IMS_ASM_PLUGINS" in err and "localdevices" in err, err


MSG = b"From: a@example.com\r\nSubject: typo\r\n\r\nbody\r\n"


def test_imsdeliver_to_a_missing_folder_goes_to_inbox(home):
    """imsdeliver -d Inbx made a folder 'Inbx' (configuration.md: imsdeliver creates
    nothing). As Dovecot's LMTP/deliver (lda_mailbox_autocreate=no): into INBOX, said
    on stderr; a folder that exists still gets it, one stored copy for both users."""
    run(home, "mboxutil", "-c", "user/alice", check=0)
    run(home, "mboxutil", "-c", "user/alice/Lists", check=0)
    run(home, "mboxutil", "-c", "user/bob/Lists", check=0)
    def folders():
        return [ln.split()[-1] for ln in run(home, "mboxutil", "-l", check=0, text=True).stdout.splitlines()[1:]]
    before = folders()
    p = run(home, "imsdeliver", "-v", "-d", "Inbx", "alice", "bob", input=MSG, check=0)
    assert p.stdout.decode().splitlines() == ["alice: UID 1", "bob: UID 2"]
    assert "no folder 'Inbx'" in p.stderr.decode() and "INBOX" in p.stderr.decode()
    assert folders() == before, "no folder created"
    p = run(home, "imsdeliver", "-v", "-d", "Lists", "alice", "bob", input=MSG, check=0)
    assert p.stdout.decode().splitlines() == ["alice: UID 1", "bob: UID 1"] and p.stderr == b""
    p = run(home, "imsdeliver", "-d", "Lists", "alice", "mallory", input=MSG)
    assert p.returncode == EXIT_USAGE
    with in_home(home):
        from asm.config import Config
        s = open_store(Config())
        assert [m.uid for m in s.messages("alice", "INBOX")] == [1]
        assert [m.uid for m in s.messages("bob", "INBOX")] == [1, 2]
        with s.open_message("alice", "INBOX", 1) as f:
            assert f.read() == MSG
        a, b = s.message("alice", "Lists", 1), s.message("bob", "Lists", 1)
        assert (a.dev, a.ino) == (b.dev, b.ino), "one stored copy"


def test_imsbackup_two_bases_refused(home, tmp_path):
    run(home, "imsbackup", "-f", tmp_path / "f1.ims", "/", check=0)
    run(home, "imsbackup", "-f", tmp_path / "f2.ims", "/", check=0)
    out = tmp_path / "i.ims"
    p = run(home, "imsbackup", "-f", out, "--base", tmp_path / "f1.ims.state", "--base",
            tmp_path / "f2.ims.state", "/")
    assert p.returncode == EXIT_USAGE, p.stderr
    assert "--base" in _one_line(p)
    assert not out.exists()


def _sha(path):
    import hashlib
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_imsbackup_into_its_own_store_refused(home, tmp_path):
    """-f naming the classic mailbox list exited 0 and renamed the archive over it: every
    later command then failed with exit 17 ("file is not a database").  A file of the
    store (by a symlink or '..' too) or of IMS_HOME/data is refused before anything is
    written; a directory of its own under IMS_HOME is not the store."""
    with in_home(home):
        msgfile = open_store(make_home(home, "classic")).message("bob", "INBOX", 1).path
    db = home / "data" / "store" / "mboxlist" / "mailboxes.db"
    (tmp_path / "link").symlink_to(home / "data" / "store")
    digest, listing = _sha(msgfile), run(home, "mboxutil", "-l", check=0).stdout
    for dev in (db, msgfile, home / "data" / "store" / "new.ims", tmp_path / "link" / "mboxlist" / "mailboxes.db",
                home / "backups" / ".." / "data" / "store" / "mboxlist" / "mailboxes.db",
                home / "data" / "restore-journal.db"):
        p = run(home, "imsbackup", "-f", dev, "/")
        assert p.returncode == EXIT_USAGE, (dev, p.stderr)
        err = _one_line(p)
        assert str(dev) in err and "outside the store" in err, err
        assert not (home / "data" / "restore-journal.db").exists()
    assert _sha(msgfile) == digest and run(home, "mboxutil", "-l", check=0).stdout == listing
    assert not (home / "data" / "store" / "new.ims").exists()
    assert not [x for x in (home / "data" / "store" / "mboxlist").iterdir() if x.name.endswith(".partial")]
    (home / "backups").mkdir()
    run(home, "imsbackup", "-f", home / "backups" / "full.ims", "/", check=0)
    run(home, "imsrestore", "-t", "-f", home / "backups" / "full.ims", check=0)


def test_imsbackup_into_a_maildir_refused(tmp_path):
    """The same for a Dovecot Maildir under store.mail_location: a login's message files
    are the store's; a backup directory beside the logins (under the template's fixed
    /vmail) is not."""
    h = tmp_path / "ims"
    make_home(h, "maildir")
    vmail = tmp_path / "vmail"
    run(h, "msconfig", "set", "store.mail_location", f"maildir:{vmail}/%u/Maildir", check=0)
    with in_home(h):
        from asm.config import Config
        put(open_store(Config(home=str(h))), "alice", "INBOX", 1)
    cur = vmail / "alice" / "Maildir" / "cur"
    (msgfile,) = cur.iterdir()
    digest = _sha(msgfile)
    for dev in (msgfile, cur / "x.ims", vmail / "alice" / "Maildir" / "dovecot-uidlist",
                vmail / "backups" / ".." / "alice" / "Maildir" / "cur" / msgfile.name):
        p = run(h, "imsbackup", "-f", dev, "/")
        assert p.returncode == EXIT_USAGE, (dev, p.stderr)
        assert str(dev) in _one_line(p)
    assert _sha(msgfile) == digest and list(cur.iterdir()) == [msgfile]
    (vmail / "backups").mkdir()
    run(h, "imsbackup", "-f", vmail / "backups" / "full.ims", "/", check=0)
    run(h, "imsbackup", "-f", vmail / "alice" / "full.ims", "/", check=0)       # a home, not mail


@pytest.mark.parametrize("cmd", ["imsbackup", "imsrestore", "imsverify"])
def test_unwritable_report_refused_before_the_run(home, tmp_path, cmd):
    """--report to a path that cannot be written was a warning with exit 0: monitoring
    then read the previous run's report. Refused (2) before anything is done."""
    run(home, "imsbackup", "-f", tmp_path / "a.ims", "/", check=0)
    argv = {"imsbackup": ["-f", tmp_path / "b.ims", "/"], "imsrestore": ["-t", "-f", tmp_path / "a.ims"],
            "imsverify": ["-f", tmp_path / "a.ims"]}[cmd]
    for report in (tmp_path / "nodir" / "r.json", tmp_path):
        p = run(home, cmd, *argv, "--report", report)
        assert p.returncode == EXIT_USAGE, (report, p.stderr)
        err = _one_line(p)
        assert "--report" in err and str(report) in err, err
    assert not (tmp_path / "b.ims").exists()


def test_report_or_state_out_over_an_archive_refused(home, tmp_path):
    """--report (and imsbackup --state-out) naming the archive, a chain's archive or the
    base was taken (exit 0) and the JSON replaced the only copy of the backup.  Refused
    (2) before anything is done, by any path; a report or state file of its own is fine."""
    full = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    (tmp_path / "link.ims").symlink_to(full)
    digest, state = _sha(full), _sha(f"{full}.state")
    cases = [
        ("imsbackup", "-f", tmp_path / "a.ims", "--report", tmp_path / "a.ims", "/"),
        ("imsbackup", "-f", tmp_path / "a.ims", "--state-out", tmp_path / "a.ims", "/"),
        ("imsbackup", "-f", tmp_path / "a.ims", "--base", full, "--state-out", full, "/"),
        ("imsbackup", "-f", tmp_path / "a.ims", "--base", f"{full}.state", "--report", f"{full}.state", "/"),
        ("imsbackup", "-f", tmp_path / "a.ims", "--report", full, "/"),
        ("imsverify", "-f", full, "--report", full),
        ("imsverify", "-f", tmp_path, "--report", tmp_path / "link.ims"),
        ("imsrestore", "-t", "-f", full, "--report", tmp_path / "link.ims"),
        ("imsrestore", "-f", full, "--report", tmp_path / "x" / ".." / "full.ims"),
    ]
    for argv in cases:
        p = run(home, *argv)
        assert p.returncode == EXIT_USAGE, (argv, p.stderr)
        err = _one_line(p)
        assert ("--report" in err or "--state-out" in err) and "nothing was done" in err, err
        assert _sha(full) == digest and _sha(f"{full}.state") == state, argv
        assert not (tmp_path / "a.ims").exists(), argv
    run(home, "imsbackup", "-f", tmp_path / "i.ims", "--base", f"{full}.state", "--state-out", f"{full}.state",
        "--report", tmp_path / "r.json", "/", check=0)
    run(home, "imsverify", "-f", full, "--report", tmp_path / "r.json", check=0)


REPEATED = [
    ("imsbackup", ["-f", "{t}/a.ims", "-u", "{t}/u1", "-u", "{t}/u2"], "-u"),
    ("imsbackup", ["-f", "{t}/a.ims", "-f", "{t}/b.ims", "/"], "-f"),
    ("imsbackup", ["-f", "{t}/a.ims", "-d", "20000101", "-d", "20200101", "/"], "-d"),
    ("imsbackup", ["-f", "{t}/a.ims", "-b", "20", "-b", "10", "/"], "-b"),
    ("imsbackup", ["-f", "{t}/a.ims", "--report", "{t}/r1", "--report", "{t}/r2", "/"], "--report"),
    ("imsrestore", ["-m", "{t}/m1", "-m", "{t}/m2", "-f", "{t}/full.ims"], "-m"),
    ("imsrestore", ["-R", "{t}/a.ref", "-R", "{t}/b.ref", "-f", "{t}/full.ims"], "-R"),
    ("imsrestore", ["-r", "{t}/a.ref", "-r", "{t}/b.ref", "-f", "{t}/full.ims"], "-r"),
    ("imsrestore", ["-c", "y", "-c", "n", "-f", "{t}/full.ims"], "-c"),
    ("imsrestore", ["--report", "{t}/r1", "--report", "{t}/r2", "-f", "{t}/full.ims"], "--report"),
    ("imsverify", ["-b", "20", "-b", "10", "-f", "{t}/full.ims"], "-b"),
    ("imsverify", ["--report", "{t}/r1", "--report", "{t}/r2", "-f", "{t}/full.ims"], "--report"),
    ("imsdeliver", ["-d", "INBOX", "-d", "Work", "bob"], "-d"),
]


@pytest.mark.parametrize("cmd,argv,option", REPEATED, ids=[f"{c}{o}" for c, a, o in REPEATED])
def test_option_given_twice_refused(home, tmp_path, cmd, argv, option):
    """An option that takes one value, given twice, kept the last silently (exit 0):
    -u users-a -u users-b backed up users-b's users only, -m m1 -m m2 restored joe as joe
    and not as m1 said.  Refused (2) naming the option; nothing is done."""
    t = tmp_path / "t"
    t.mkdir()
    run(home, "imsbackup", "-f", t / "full.ims", "/", check=0)
    (t / "u1").write_text("/primary/bob\n")
    (t / "u2").write_text("/primary/bob\n")
    (t / "m1").write_text("bob=jim\n")
    (t / "m2").write_text("bob=amy\n")
    before = sorted(p.name for p in t.iterdir())
    dest = tmp_path / "dest"
    make_home(dest, "classic")
    p = run(dest if cmd == "imsrestore" else home, cmd, *[a.format(t=t) for a in argv], input=b"Subject: x\r\n\r\nx\r\n")
    assert p.returncode == EXIT_USAGE, p.stderr
    err = _one_line(p)
    assert f"{option} given twice" in err, err
    assert sorted(p.name for p in t.iterdir()) == before
    assert not (dest / "data").exists()
    assert run(home, "mboxutil", "-l", check=0).stdout.count(b"bob") == 1


def test_state_out_in_a_missing_directory_refused(home, tmp_path):
    """imsbackup --state-out .../typo1/typo2/i.state made the missing chain (mkdir -p),
    exit 0: refused as --report's missing directory is (2), nothing written or made."""
    typo = tmp_path / "typo1" / "typo2" / "i.state"
    p = run(home, "imsbackup", "-f", tmp_path / "i.ims", "--state-out", typo, "/")
    assert p.returncode == EXIT_USAGE, p.stderr
    err = _one_line(p)
    assert "--state-out" in err and str(typo.parent) in err and "does not exist" in err, err
    assert not (tmp_path / "typo1").exists() and not (tmp_path / "i.ims").exists()
    run(home, "imsbackup", "-f", tmp_path / "i.ims", "--state-out", tmp_path / "i.state", "/", check=0)


def test_mail_location_typo_names_store_mail_location(tmp_path):
    """A typo in store.mail_location's root said 'check partition:primary.path (msconfig
    show)': a key unused with store.mail_location."""
    h = tmp_path / "ims"
    make_home(h, "maildir")
    (tmp_path / "vmail" / "alice" / "Maildir" / "cur").mkdir(parents=True)
    run(h, "msconfig", "set", "store.mail_location", f"maildir:{tmp_path}/vmal/%u/Maildir", check=0)
    p = run(h, "imsbackup", "-f", tmp_path / "a.ims", "/")
    assert p.returncode == 17, p.stderr
    err = _one_line(p)
    assert "store.mail_location" in err and "partition:primary.path" not in err, err
    assert f"{tmp_path}/vmal" in err


def test_msconfig_show_prints_the_documented_defaults(home):
    """configuration.md gives store.root and partition:primary.path a default and says
    'show NAME' prints 'its value or its default': both printed nothing (exit 0)."""
    root = f"{home}/data/store"
    p = run(home, "msconfig", "show", "store.root", check=0, text=True)
    assert p.stdout == f"role.store.root = {root}\n"
    p = run(home, "msconfig", "show", "partition:primary.path", check=0, text=True)
    assert p.stdout == f"role.partition:primary.path = {root}/partition/primary\n"
    listing = run(home, "msconfig", "show", check=0, text=True).stdout.splitlines()
    assert f"role.store.root = {root}" in listing and listing == sorted(listing)
    assert f"role.partition:primary.path = {root}/partition/primary" in listing
    assert run(home, "msconfig", "show", "partition:other.path", check=0).stdout == b""
    run(home, "msconfig", "set", "store.root", "/srv/ims", check=0)
    assert run(home, "msconfig", "show", "store.root", check=0).stdout == b"role.store.root = /srv/ims\n"


@pytest.mark.parametrize("how", ["staging.dir", "-D"])
def test_mistyped_staging_dir_is_not_created(home, tmp_path, how):
    """staging.dir /nonexist/stage was made with its parents and dumped into (exit 0).
    The staging directory itself may be made, as mkdir makes it: its parent must exist."""
    typo = tmp_path / "nonexist" / "stage"
    if how == "-D":
        argv = ["-D", typo]
    else:
        run(home, "msconfig", "set", "staging.dir", typo, check=0)
        argv = []
    p = run(home, "imsstage", "dump", *argv, "-j", "1")
    assert p.returncode == EXIT_USAGE, p.stderr
    err = _one_line(p)
    assert str(typo) in err and how in err and "does not exist" in err, err
    assert not (tmp_path / "nonexist").exists()
    argv = ["-D", tmp_path / "stage"] if how == "-D" else []
    if how != "-D":
        run(home, "msconfig", "set", "staging.dir", tmp_path / "stage", check=0)
    run(home, "imsstage", "dump", *argv, "-j", "1", check=0)       # one level is made
    assert any(p.suffix == ".ims" for p in (tmp_path / "stage").iterdir())
    # the commands that read a staging area make none: a typo in -D read as an empty
    # catalog (list exit 0; done --status 0 recorded the engine's verdict on no dump)
    typo = tmp_path / "stagign"
    for sub in (["list"], ["done", "--status", "0"], ["locate", "bob"], ["restore", "bob"]):
        p = run(home, "imsstage", *sub, "-D", typo)
        assert p.returncode == EXIT_USAGE, (sub, p.stderr)
        err = _one_line(p)
        assert str(typo) in err and "does not exist" in err, err
        assert not typo.exists(), sub


def _queued_while_held(tmp_path, driver, folder):
    """joe with one message in INBOX, his deliveries held, and 'imsdeliver -d FOLDER joe'
    queued; (home, config)."""
    h = tmp_path / "ims"
    cfg = make_home(h, driver)
    with in_home(h):
        store = open_store(cfg)
        put(store, "joe", "INBOX", 1)
        store.hold_deliveries("joe")
    p = run(h, "imsdeliver", "-v", "-d", folder, "joe", input=MSG, check=0)
    assert p.stdout == b"joe: queued (deliveries held)\n" and p.stderr == b"", p.stderr
    return h, cfg


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_imsdeliver_to_a_folder_while_deliveries_are_held(tmp_path, driver):
    """While a restore holds the user's deliveries the folder it restores may not be made
    yet: imsdeliver -d Work queues the message for Work, not INBOX (it did, with 'no
    folder Work' on stderr), and the release stores it in Work once the restore made it."""
    h, cfg = _queued_while_held(tmp_path, driver, "Work")
    with in_home(h):
        store = open_store(cfg)
        store.create_folder("joe", "Work")          # what the restore does, then releases
        assert store.release_deliveries("joe") == 1
        assert [m.uid for m in store.messages("joe", "INBOX")] == [1]
        [m] = store.messages("joe", "Work")
        with store.open_message("joe", "Work", m.uid) as f:
            assert f.read() == MSG


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_a_dotless_i_inbox_is_a_folder_of_its_own(tmp_path, driver):
    """'ınbox'.upper() == 'INBOX' in Python, but IMAP matches INBOX without regard to
    ASCII case only: 'ınbox' (Turkish dotless i) and 'ınbox/sub' are folders of their
    own.  imsdeliver -d ınbox delivered into INBOX, and 'ınbox/sub' was INBOX/sub."""
    home = tmp_path / "ims"
    make_home(home, driver)
    for f in ("user/alice", "user/alice/\u0131nbox", "user/alice/\u0131nbox/sub", "user/alice/INBOX/sub"):
        run(home, "mboxutil", "-c", f, check=0)
    for folder in ("\u0131nbox", "\u0131nbox/sub", "INBOX/sub", "inbox"):
        p = run(home, "imsdeliver", "-d", folder, "alice", input=MSG + folder.encode(), check=0)
        assert p.stderr == b"", p.stderr
    with in_home(home):
        from asm.config import Config
        s = open_store(Config())
        def body(f, uid):
            with s.open_message("alice", f, uid) as fh:
                return fh.read()
        got = {f: [body(f, m.uid) for m in s.messages("alice", f)] for f in s.folder_names("alice")}
    assert got == {"INBOX": [MSG + b"inbox"], "INBOX/sub": [MSG + b"INBOX/sub"],
                   "\u0131nbox": [MSG + "\u0131nbox".encode()],
                   "\u0131nbox/sub": [MSG + "\u0131nbox/sub".encode()]}, got


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_a_held_delivery_to_a_folder_the_restore_never_made_goes_to_inbox(tmp_path, driver):
    """A message queued for a folder that still does not exist when the deliveries are
    released (the restore did not bring it: a typo, or a folder the archive lacks) is
    stored in INBOX on both drivers, as imsdeliver does unheld (Dovecot's LDA default);
    the classic release made the folder (the Maildir one did not)."""
    h, cfg = _queued_while_held(tmp_path, driver, "Wrok")
    with in_home(h):
        store = open_store(cfg)
        assert store.release_deliveries("joe") == 1
        assert store.folder_names("joe") == ["INBOX"]
        [_, m] = store.messages("joe", "INBOX")
        with store.open_message("joe", "INBOX", m.uid) as f:
            assert f.read() == MSG


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
@pytest.mark.parametrize("what", ["imsbackup", "imsstage", "msconfig", "mkbackupdir"])
def test_a_lock_file_planted_as_a_link_is_refused_and_its_target_untouched(home, tmp_path, what, link):
    """A lock beside an archive or in a staging area lives in a directory others may
    write (a shared /backup): one who plants '.full.ims.lock -> /etc/shadow' there had
    root truncate that file and write its pid in it (imsbackup exit 0).  Every lock file
    is opened without following a link, and one with other names is refused: exit 2,
    one line naming it, the file it points to as it was, nothing done."""
    import os
    shared = tmp_path / "shared"
    shared.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    os.chmod(victim, 0o600)
    if what == "imsbackup":
        lock, argv = shared / ".full.ims.lock", ["imsbackup", "-f", shared / "full.ims", "/"]
    elif what == "imsstage":
        lock, argv = shared / ".lock", ["imsstage", "dump", "-D", shared, "-j", "1"]
    elif what == "msconfig":
        lock, argv = home / "config" / ".msg.conf.lock", ["msconfig", "set", "store.backupexclude", "Junk"]
    else:
        run(home, "mkbackupdir", "-p", shared, check=0)
        lock, argv = shared / ".imsasm-tree.lock", ["mkbackupdir", "-p", shared]
    before = sorted(os.listdir(lock.parent))
    with __import__("contextlib").suppress(FileNotFoundError):
        lock.unlink()
    if link == "symlink":
        os.symlink(victim, lock)
    else:
        os.link(victim, lock)
    p = run(home, *argv)
    assert p.returncode == EXIT_USAGE, p.stderr
    err = _one_line(p)
    assert str(lock) in err and "link" in err, err
    assert victim.read_bytes() == b"precious\n"
    lock.unlink()
    assert sorted(n for n in os.listdir(lock.parent) if n != lock.name) == \
        sorted(n for n in before if n != lock.name)             # nothing done
    run(home, *argv, check=0)                                   # the link gone: as always
    assert victim.read_bytes() == b"precious\n"


OWN_FILES = {"msg.conf": ("config", "msg.conf"), "groups": ("config", "backup-groups.conf"),
             "mailbox list": ("data", "store", "mboxlist", "mailboxes.db"),
             "journal": ("data", "restore-journal.db"), "new file in the store": ("data", "store", "report.json")}
OUTPUTS = {
    "imsbackup --report": lambda t, out: ["imsbackup", "-f", t / "a.ims", "--report", out, "/"],
    "imsbackup --state-out": lambda t, out: ["imsbackup", "-f", t / "a.ims", "--state-out", out, "/"],
    "imsverify --report": lambda t, out: ["imsverify", "-f", t / "full.ims", "--report", out],
    "imsrestore -t --report": lambda t, out: ["imsrestore", "-t", "-f", t / "full.ims", "--report", out],
    "imsbackup -f": lambda t, out: ["imsbackup", "-f", out, "/"],
    "imsdr backup -f": lambda t, out: ["imsdr", "backup", "-f", out],
    "imsbacula fileset -o": lambda t, out: ["imsbacula", "fileset", "-o", out],
}


@pytest.mark.parametrize("which", list(OWN_FILES))
@pytest.mark.parametrize("command", list(OUTPUTS))
def test_an_output_file_that_is_the_installations_own_is_refused(home, tmp_path, command, which):
    """A mistyped --report, --state-out, -f or -o naming the installation's own files (its
    msg.conf, the mailbox list, a database, a file in the store): exit 2 before the run,
    one line, the file as it was.  (Before: exit 0, and msg.conf or the mailbox list held
    a JSON report, a state file or a tar: every later command failed.)"""
    import os
    run(home, "msconfig", "set", "store.root", home / "data" / "store", check=0)
    run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
    run(home, "imsrestore", "-f", tmp_path / "full.ims", "-t", check=0)    # the journal is there
    if which == "journal" and not (home / "data" / "restore-journal.db").exists():
        (home / "data" / "restore-journal.db").write_bytes(b"SQLite format 3\0")
    out = home.joinpath(*OWN_FILES[which])
    before = out.read_bytes() if out.exists() else None
    p = run(home, *OUTPUTS[command](tmp_path, out), env={"IMS_ASM_PLUGINS": "classic,maildir,localdevices,bacula"})
    assert p.returncode == EXIT_USAGE, (p.returncode, p.stderr)
    err = _one_line(p)
    assert str(out) in err, err
    after = out.read_bytes() if out.exists() else None
    if out.suffix == ".db":
        # (a database's header counters move as the store is opened: still the database)
        assert after[:16] == before[:16] == b"SQLite format 3\0"
    else:
        assert after == before
    assert run(home, "mboxutil", "-l").returncode == 0
    assert not os.path.exists(tmp_path / "a.ims")


@pytest.mark.parametrize("command", ["imsbackup", "imsdr"])
def test_an_archive_name_planted_as_another_users_link_is_refused(home, tmp_path, command):
    """Tonight's archive name planted in a shared backup directory as a symbolic link by
    another user (uid 65534 here) to a file root owns: root replaced that file with the
    archive, exit 0.  An archive is written through a link only when it was made by this
    run's user, root or the directory's owner (as the kernel's fs.protected_symlinks
    rule): exit 2, one line, the file as it was.  A link of the directory's owner is
    followed as before (tests/test_backup.py: links of this run's user)."""
    import os
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    victim = tmp_path / "root-only" / "victim"
    victim.parent.mkdir()
    victim.write_bytes(b"precious\n")
    name = shared / "full-20261206.ims"
    os.symlink(victim, name)
    os.lchown(name, 65534, 65534)
    argv = ["imsbackup", "-f", name, "/"] if command == "imsbackup" else ["imsdr", "backup", "-f", name]
    p = run(home, *argv)
    assert p.returncode == EXIT_USAGE, p.stderr
    err = _one_line(p)
    assert str(name) in err and "65534" in err, err
    assert victim.read_bytes() == b"precious\n" and sorted(os.listdir(victim.parent)) == ["victim"]
    os.chown(shared, 65534, 65534)                  # the directory's owner made it: followed
    p = run(home, *argv)
    assert p.returncode == 0, p.stderr
    assert victim.read_bytes() != b"precious\n" and os.path.islink(name)


@pytest.mark.parametrize("which", ["imsimport -s", "imsbackup -u", "imsrestore -m", "imsrestore -r"])
def test_an_input_file_with_no_line_break_is_refused_in_bounded_memory(home, tmp_path, which):
    """/dev/zero (or a binary given by mistake) as an mbox, a -u list, a -m map or a -r
    reference file: each was read as one unbounded line (MemoryError, exit 70, or the
    host's memory).  Now exit 2 in one line, under a 1 GiB address space."""
    import resource
    import subprocess
    from tests.helpers import command, command_env
    run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
    argv = {"imsimport -s": ["imsimport", "-u", "bob", "-s", "/dev/zero"],
            "imsbackup -u": ["imsbackup", "-f", tmp_path / "z.ims", "-u", "/dev/zero"],
            "imsrestore -m": ["imsrestore", "-f", tmp_path / "full.ims", "-m", "/dev/zero", "/primary/bob"],
            "imsrestore -r": ["imsrestore", "-f", tmp_path / "full.ims", "-r", "/dev/zero"]}[which]

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    p = subprocess.run([command(argv[0]), *map(str, argv[1:])], env=command_env(home, None), capture_output=True,
                       stdin=subprocess.DEVNULL, preexec_fn=limited, timeout=120)
    assert p.returncode == EXIT_USAGE, p.stderr
    err = _one_line(p)
    assert "/dev/zero" in err, err


@pytest.mark.parametrize("cmd,argv", [
    ("imsbackup", ["--state-out", "-", "-f", "a.ims", "/"]),
    ("imsbackup", ["--report", "-", "-f", "a.ims", "/"]),
    ("imsrestore", ["-R", "-", "-f", "a.ims", "/"]),
    ("imsrestore", ["--report", "-", "-f", "a.ims", "/"]),
    ("imsverify", ["--report", "-", "-f", "a.ims"]),
], ids=["state-out", "backup-report", "restore-R", "restore-report", "verify-report"])
def test_an_output_file_option_given_dash_is_refused(home, tmp_path, cmd, argv):
    """'-' means standard input or output to every -f of these commands; --state-out -,
    -R - and --report - wrote a file named '-' in the working directory instead (exit 0).
    Refused, one line saying to name a file, nothing written."""
    work = tmp_path / "work"
    work.mkdir()
    run(home, "imsbackup", "-f", work / "a.ims", "/", check=0)
    before = sorted(p.name for p in work.iterdir())
    p = run(home, cmd, *argv, cwd=work)
    assert p.returncode == EXIT_USAGE, p.stderr
    err = _one_line(p)
    assert " - : " in err and "name a file" in err, err
    assert sorted(p.name for p in work.iterdir()) == before


def test_z_with_compress_none_is_refused(home, tmp_path):
    """-z (compress) with --compress none wrote an uncompressed archive, exit 0: one of
    the two was not done.  Refused, nothing written; -z with a zstd level is taken."""
    out = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-z", "--compress", "none", "-f", out, "/")
    assert p.returncode == EXIT_USAGE, p.stderr
    assert "-z" in _one_line(p) and not out.exists()
    run(home, "imsbackup", "-z", "--compress", "zstd:5", "-f", out, "/", check=0)
    assert out.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"          # zstd's magic number


@pytest.mark.parametrize("version", [99, 0, "1", None])
def test_a_state_file_of_another_version_is_refused_as_a_base(home, tmp_path, version):
    """A state file whose version this ims-asm does not read (a newer one's, or damaged)
    was read as if it were its own, exit 0: what a newer version says differently would
    leave mail out of the incremental.  Refused, one line (a newer one's says to use
    that ims-asm or the archive as the base), nothing written; the archive then works."""
    import json
    full = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    doc = json.loads((tmp_path / "full.ims.state").read_text())
    if version is None:
        del doc["version"]
    else:
        doc["version"] = version
    odd = tmp_path / "odd.state"
    odd.write_text(json.dumps(doc))
    out = tmp_path / "incr.ims"
    p = run(home, "imsbackup", "--base", odd, "-f", out, "/")
    assert p.returncode == EXIT_USAGE, p.stderr
    err = _one_line(p)
    assert f"version {version!r}" in err and str(odd) in err, err
    assert ("newer ims-asm" in err) == (version == 99), err
    assert not out.exists() and not (tmp_path / "incr.ims.state").exists()
    run(home, "imsbackup", "--base", full, "-f", out, "/", check=0)


@pytest.mark.parametrize("driver", ["classic", "maildir"])
@pytest.mark.parametrize("how", ["same", "inside", "holds", "symlink"])
def test_two_partitions_in_one_directory_are_refused(tmp_path, driver, how):
    """Two partitions naming one directory (or one inside the other): msconfig took it;
    then the classic backup failed saying the mailbox list was lost and to rebuild it
    with reconstruct -m (advice that would give the users to the wrong partition).
    msconfig set now refuses it, naming both partitions and how to fix it, and a msg.conf
    edited by hand so is refused by every command, the same line, nothing written."""
    h = tmp_path / "ims"
    cfg = make_home(h, driver)
    with in_home(h):
        put(open_store(cfg), "bob", "INBOX", 1)
    primary = cfg.partitions()["primary"]
    good = tmp_path / "good.ims"
    run(h, "imsbackup", "-f", good, "/", check=0)
    if how == "symlink":
        os.symlink(primary, tmp_path / "alias")
    bad = {"same": primary, "inside": os.path.join(primary, "bob"), "holds": os.path.dirname(primary),
           "symlink": str(tmp_path / "alias")}[how]
    p = run(h, "msconfig", "set", "partition:second.path", bad)
    assert p.returncode == EXIT_USAGE, p.stderr
    err = _one_line(p)
    assert "partition 'second'" in err and "partition 'primary'" in err and "msconfig" in err, err
    assert "partition:second" not in (h / "config" / "msg.conf").read_text()
    # by hand
    with open(h / "config" / "msg.conf", "a") as f:
        f.write(f"partition:second.path = {bad}\n")
    out = tmp_path / "a.ims"
    p = run(h, "imsbackup", "-f", out, "/")
    assert p.returncode == EXIT_USAGE, p.stderr
    assert _one_line(p).split(": ", 1)[1] == err.split(": ", 1)[1]
    assert not out.exists()
    p = run(h, "imsrestore", "-f", good, "/")
    assert p.returncode == EXIT_USAGE and "partition 'second'" in _one_line(p), p.stderr
    run(h, "msconfig", "unset", "partition:second.path", check=0)
    run(h, "imsbackup", "-f", out, "/", check=0)


@pytest.mark.parametrize("name,refused", [("restore-journal.db", True), ("restore-journal.db-wal", True),
                                          ("state.db-journal", True), ("reports.dbx.json", False),
                                          ("nightly.db.json", False), ("a.dbreport", False)])
def test_only_a_database_under_data_counts_as_the_installations_own(home, tmp_path, name, refused):
    """Under IMS_HOME/data a database (*.db, and SQLite's -wal, -shm, -journal beside it)
    is refused as a --report; any other name that merely holds '.db' was refused too
    (a report named nightly.db.json, exit 2) and is now written."""
    out = home / "data" / name
    p = run(home, "imsbackup", "-f", tmp_path / "a.ims", "--report", out, "/")
    if refused:
        assert p.returncode == EXIT_USAGE and "databases" in _one_line(p), p.stderr
        assert not out.exists() or out.read_bytes()[:1] != b"{"
    else:
        assert p.returncode == 0, p.stderr
        assert out.read_bytes()[:1] == b"{"
