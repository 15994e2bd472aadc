"""msg.conf through the Config API: options, checks, defaults, partitions, atomic writes."""
from __future__ import annotations

import os

import pytest

from asm.config import OPTIONS, Config, ConfigError, check, ims_home


def test_defaults_without_a_file(ims_home):
    cfg = Config()
    assert cfg.home == str(ims_home)
    assert cfg.driver == "classic"
    assert cfg.get("store.locktimeout") == "30"
    assert cfg.get("store.backupexclude") is None
    assert cfg.backup_exclude() == []
    assert cfg.owner() is None
    assert cfg.store_root == os.path.join(str(ims_home), "data", "store")
    assert cfg.partitions() == {"primary": os.path.join(str(ims_home), "data", "store", "partition", "primary")}
    assert not os.path.exists(cfg.path), "reading must not create msg.conf"


def test_set_persists_and_normalises(ims_home):
    cfg = Config()
    cfg.set("store.locktimeout", "045")
    cfg.set("device.localonly", "TRUE")
    cfg.set("partition:second.path", "/srv/mail//second/")
    again = Config()
    assert again.get("store.locktimeout") == "45"
    assert again.get_int("store.locktimeout") == 45
    assert again.get("device.localonly") == "yes"
    assert again.partitions()["second"] == "/srv/mail/second"
    assert list(again.partitions()) == ["primary", "second"], "primary comes first"


def test_primary_partition_can_be_moved(ims_home):
    cfg = Config()
    cfg.set("partition:primary.path", "/srv/p0")
    cfg.set("partition:archive.path", "/srv/p1")
    assert Config().partitions() == {"primary": "/srv/p0", "archive": "/srv/p1"}


def test_maildir_default_partition(ims_home):
    cfg = Config()
    cfg.set("store.driver", "maildir")
    assert Config().partitions()["primary"] == os.path.join(str(ims_home), "data", "maildir", "primary")


def test_backupexclude_splits_on_percent(ims_home):
    Config().set("store.backupexclude", "Trash%Bulk Mail")
    assert Config().backup_exclude() == ["Trash", "Bulk Mail"]


@pytest.mark.parametrize("value", ["Trash%", "%Trash", "Trash%%Bulk", " "])
def test_backupexclude_refuses_empty_names(ims_home, value):
    with pytest.raises(ConfigError, match="store.backupexclude"):
        Config().set("store.backupexclude", value)


def test_unset_returns_to_default(ims_home):
    cfg = Config()
    cfg.set("ssh.port", "2222")
    assert cfg.unset("ssh.port") is True
    assert Config().get("ssh.port") == "22"
    assert cfg.unset("ssh.port") is False


@pytest.mark.parametrize("name,value,why", [
    ("store.driver", "mbox", "must be one of classic, maildir"),
    ("store.locktimeout", "0", "between 1 and 3600"),
    ("store.locktimeout", "ten", "whole number"),
    ("ssh.port", "70000", "between 1 and 65535"),
    ("device.localonly", "maybe", "yes or no"),
    ("store.root", "relative/dir", "absolute path"),
    ("partition:second.path", "data/second", "absolute path"),
    ("store.owner", "no-such-user-xyzzy", "no such user"),
    ("ssh.user", "joe\nstore.driver = maildir", "control characters"),
    ("partition:x.path", "/a\nstore.driver = bogus", "control characters"),
])
def test_bad_values_name_the_option(ims_home, name, value, why):
    cfg = Config()
    with pytest.raises(ConfigError) as exc:
        cfg.set(name, value)
    msg = str(exc.value)
    assert name in msg and why in msg and "\n" not in msg
    assert not os.path.exists(cfg.path), "a refused value must not be written"


@pytest.mark.parametrize("name", ["store.drvier", "driver", "partition:.path", "partition:x.dir",
                                  "partition:a/b.path"])
def test_unknown_options_refused(ims_home, name):
    with pytest.raises(ConfigError, match="unknown option"):
        Config().set(name, "/x")


def test_unknown_option_hint_lists_relatives():
    with pytest.raises(ConfigError) as exc:
        check("ssh.prot", "22")
    assert "ssh.port" in str(exc.value)


def test_numeric_owner_must_exist(ims_home):
    import pwd
    nobody = pwd.getpwnam("nobody")
    Config().set("store.owner", str(nobody.pw_uid))
    assert Config().owner() == (nobody.pw_uid, nobody.pw_gid)    # that user's group, not the ID again
    unused = next(u for u in range(12345, 60000) if not _uid_exists(u))
    with pytest.raises(ConfigError, match=f"no user with ID {unused}"):
        Config().set("store.owner", str(unused))


def _uid_exists(uid: int) -> bool:
    import pwd
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def test_every_option_has_doc_and_sane_default():
    for name, opt in OPTIONS.items():
        assert opt.doc, name
        if opt.default is not None:
            assert opt.check(opt.default) == opt.default, name


def test_bad_file_line_reported_with_file_and_line(ims_home):
    os.makedirs(ims_home / "config")
    (ims_home / "config" / "msg.conf").write_text("# c\n\nstore.driver = classic\nstore.locktimeout 5\n")
    with pytest.raises(ConfigError, match=r"msg\.conf:4: expected 'name = value'"):
        Config()
    (ims_home / "config" / "msg.conf").write_text("store.driver = classic\nstore.nope = 1\n")
    with pytest.raises(ConfigError, match=r"msg\.conf:2: unknown option 'store.nope'"):
        Config()


def test_hand_written_file_with_comments_is_read(ims_home):
    os.makedirs(ims_home / "config")
    (ims_home / "config" / "msg.conf").write_text(
        "# local settings\n\n  store.driver=maildir  \nstore.backupexclude =  Trash%Bulk Mail\n")
    cfg = Config()
    assert cfg.driver == "maildir"
    assert cfg.backup_exclude() == ["Trash", "Bulk Mail"]


def test_write_is_atomic_and_leaves_no_temp_files(ims_home):
    cfg = Config()
    for i in range(10):
        cfg.set("ssh.timeout", str(i + 1))
    conf_dir = os.path.dirname(cfg.path)
    assert not [n for n in os.listdir(conf_dir) if n.startswith(".tmp")]
    text = open(cfg.path).read()
    assert text.startswith("# written by msconfig")
    assert "ssh.timeout = 10\n" in text
    assert oct(os.stat(cfg.path).st_mode & 0o777) == oct(0o644)


def test_two_config_objects_do_not_lose_each_others_sets(ims_home):
    a, b = Config(), Config()
    a.set("ssh.port", "2222")
    b.set("ssh.timeout", "9")       # b loaded before a wrote: must not drop ssh.port
    c = Config()
    assert (c.get("ssh.port"), c.get("ssh.timeout")) == ("2222", "9")


def test_ims_home_unset(monkeypatch):
    monkeypatch.delenv("IMS_HOME", raising=False)
    with pytest.raises(ConfigError, match="IMS_HOME is not set"):
        ims_home()
    with pytest.raises(ConfigError, match="IMS_HOME"):
        Config()


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_msconfig_refuses_an_installation_too_deep_for_its_databases(tmp_path, driver):
    """msconfig made an IMS_HOME so deep that its restore journal (data/restore-journal.db)
    or, classic, its mailbox list (store.root/mboxlist/mailboxes.db) was longer than SQLite
    opens, without a word: every command after it failed.  Now it refuses (exit 2, one
    line naming the database, its length, SQLite's limit and what to shorten) and makes
    nothing; at the limit it makes the installation."""
    from asm.errors import EXIT_USAGE
    from asm.sqlitedb import PATH_MAX
    from tests.helpers import deep_dir, run
    base = os.path.realpath(tmp_path)
    longest = "/h/data/store/mboxlist/mailboxes.db" if driver == "classic" else "/h/data/restore-journal.db"
    for over, letter in ((1, "x"), (0, "y")):
        parent = deep_dir(base, PATH_MAX + over - len(longest), letter)
        home = parent + "/h"
        p = run(home, "msconfig", "set", "store.driver", driver, text=True)
        if over:
            assert p.returncode == EXIT_USAGE, p.stderr
            assert p.stderr.count("\n") == 1, p.stderr
            db = home + longest[2:]
            assert p.stderr == (f"msconfig: IMS_HOME is too deep: the database {db} would not open, its path "
                                f"is {PATH_MAX + 1} bytes long (links resolved), longer than SQLite opens "
                                f"({PATH_MAX} bytes); choose a shorter IMS_HOME\n"), p.stderr
            assert os.listdir(parent) == []
        else:
            assert p.returncode == 0, p.stderr
            assert Config(home=home).driver == driver
    # store.root set deep in an installation that exists: refused, the file unchanged
    home = str(tmp_path / "ok")
    run(home, "msconfig", "set", "store.driver", "classic", check=0)
    before = open(os.path.join(home, "config", "msg.conf"), "rb").read()
    root = deep_dir(base, PATH_MAX + 1 - len("/r/mboxlist/mailboxes.db"), "z") + "/r"
    p = run(home, "msconfig", "set", "store.root", root, text=True)
    if driver == "classic":
        assert p.returncode == EXIT_USAGE, p.stderr
        assert "store.root is too deep: the database " + root + "/mboxlist/mailboxes.db would not open" \
            in p.stderr and p.stderr.endswith("; choose a shorter store.root\n"), p.stderr
        assert open(os.path.join(home, "config", "msg.conf"), "rb").read() == before
    else:
        run(home, "msconfig", "set", "store.driver", "maildir", check=0)
        run(home, "msconfig", "set", "store.root", root, check=0)     # no mailbox list in a Maildir store
        p = run(home, "msconfig", "set", "store.driver", "classic", text=True)
        assert p.returncode == EXIT_USAGE and "store.root is too deep" in p.stderr, p.stderr
