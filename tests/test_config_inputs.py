"""Malformed configuration, table-driven: every bad name, value, encoding, control
character, huge value or missing '=' gives one line on stderr, exit status 2 (usage
or configuration error, docs/operations.md), no traceback, and leaves msg.conf as it
was; through msconfig set and show, and through a hand-edited msg.conf that imsbackup
reads."""
from __future__ import annotations

import os

import pytest

from asm.errors import EXIT_USAGE
from tests.helpers import make_home, run

A = "a"


def fs(b: bytes) -> str:
    """A command-line argument holding these exact bytes (not UTF-8 included)."""
    return os.fsdecode(b)


BAD_NAMES = [
    ("store.drvier", "unknown option"),
    ("", "unknown option"),
    ("store.", "unknown option"),
    (".driver", "unknown option"),
    ("store.driver.x", "unknown option"),
    ("STORE.DRIVER", "unknown option"),
    ("role.store.driver", "unknown option"),
    ("store.driver ", "unknown option"),
    ("store driver", "unknown option"),
    ("store.driver=classic", "unknown option"),
    ("store.dr\u0456ver", "unknown option"),          # a Cyrillic i
    ("store.driver\nssh.port", "unknown option"),
    ("store.\x01driver", "unknown option"),
    ("store.\x1b[31mdriver", "unknown option"),
    (fs(b"store.dr\xffiver"), "unknown option"),
    ("x" * 100_000, "unknown option"),
    ("partition:.path", "unknown option"),
    ("partition:x.dir", "unknown option"),
    ("partition:a/b.path", "unknown option"),
    ("partition:x y.path", "unknown option"),
    ("partition:\u00e9.path", "unknown option"),
    ("partition:-x.path", "unknown option"),
]

BAD_VALUES = [
    ("store.driver", "mbox", "must be one of classic, maildir"),
    ("store.driver", "Classic", "must be one of"),
    ("store.driver", "", "empty"),
    ("store.driver", "   ", "empty"),
    ("store.driver", "classic\n", "control characters"),
    ("store.driver", "classic\r", "control characters"),
    ("store.driver", "classic # the default", "must be one of"),
    ("store.driver", fs(b"cl\xe4ssic"), "not UTF-8"),
    ("store.driver", "classic\u2028", "control characters"),
    ("store.driver", "classic\u0085", "control characters"),
    ("store.locktimeout", "0", "between 1 and 3600"),
    ("store.locktimeout", "-1", "whole number"),
    ("store.locktimeout", "3601", "between 1 and 3600"),
    ("store.locktimeout", "ten", "whole number"),
    ("store.locktimeout", "1e3", "whole number"),
    ("store.locktimeout", "0x10", "whole number"),
    ("store.locktimeout", "1_0", "whole number"),
    ("store.locktimeout", "+5", "whole number"),
    ("store.locktimeout", "\u0663", "whole number"),           # an Arabic-Indic 3
    ("store.locktimeout", "1.5", "whole number"),
    ("store.locktimeout", "9" * 5000, "too long"),
    ("store.locktimeout", "9" * 4000, "whole number"),
    ("ssh.port", "65536", "between 1 and 65535"),
    ("ssh.port", "99999999999999999999999999", "whole number"),
    ("ssh.port", "22 ", None),                                   # trimmed: fine (control)
    ("ssh.keepalive", "-0", "whole number"),
    ("device.localonly", "maybe", "yes or no"),
    ("device.localonly", "2", "yes or no"),
    ("backup.allowempty", "perhaps", "yes or no"),
    ("store.root", "relative/dir", "absolute path"),
    ("store.root", "~/store", "absolute path"),
    ("store.root", "/a\tb", "control characters"),
    ("store.root", "/" + A * 5000, "too long"),
    ("partition:primary.path", "data/primary", "absolute path"),
    ("partition:x.path", "/a\nstore.driver = bogus", "control characters"),
    ("store.owner", "4294967296", "between 0 and 4294967294"),
    ("store.owner", "no-such-user-xyzzy", "no such user"),
    ("store.owner", "root\x7f", "control characters"),
    ("store.owner", "3999999999", "no user with ID"),
    ("store.backupexclude", "Trash%", "may not be empty"),
    ("store.backupexclude", "%Trash", "may not be empty"),
    ("store.backupexclude", "Trash%%Bulk", "may not be empty"),
    ("store.backupexclude", " % ", "may not be empty"),
    ("store.backupexclude", "Trash/%Bulk", "single '/'"),
    ("store.backupexclude", "/Trash", "single '/'"),
    ("store.backupexclude", "Trash//Old", "single '/'"),
    ("ssh.user", "joe\x1b[31m", "control characters"),
    ("ssh.identity", "keys/id_ed25519", "absolute path"),
    ("ssh.stream", "scp", "must be one of auto, sftp"),
    ("staging.keep", "1001", "between 0 and 1000"),
    ("staging.jobs", "0", "between 1 and 64"),
    ("staging.jobs", "65", "between 1 and 64"),
    ("staging.dir", "", "empty"),
    ("staging.afterbatch", "x" * 5000, "too long"),
    ("restore.spoolmax", "1048577", "between 0 and 1048576"),
]


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "ims"
    make_home(h, "classic", **{"ssh.port": "2222"})
    return h


def _one_line(p):
    err = p.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert len(err) < 2000, "one short line, not the whole input echoed"
    return err


@pytest.mark.parametrize("name,why", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_bad_names_through_msconfig(home, name, why):
    conf = (home / "config" / "msg.conf").read_bytes()
    for argv in (["set", name, "x"], ["show", name], ["unset", name]):
        p = run(home, "msconfig", *argv)
        assert p.returncode == EXIT_USAGE, (argv, p.stderr)
        assert why in _one_line(p)
    assert (home / "config" / "msg.conf").read_bytes() == conf


BAD_PARTITION_NAMES = ["partition:bad name.path", "partition:x y.path", "partition:a/b.path", "partition:\u00e9.path",
                       "partition:-x.path", "partition:.path", "partiton:bad name.path", "Partition:a b.path"]


@pytest.mark.parametrize("name", BAD_PARTITION_NAMES, ids=range(len(BAD_PARTITION_NAMES)))
def test_a_bad_partition_name_is_never_suggested(home, name):
    """msconfig set 'partition:bad name.path' was refused "(did you mean partition:bad
    name.path?": the very name refused.  A suggestion is a different name msconfig takes,
    and the line says what a partition NAME may hold."""
    import re
    from asm.config import lookup
    p = run(home, "msconfig", "set", name, "/srv/mail2")
    assert p.returncode == EXIT_USAGE, p.stderr
    line = _one_line(p)
    m = re.search(r"did you mean (\S+)\?", line)
    if m:
        assert m.group(1) != name, line
        lookup(m.group(1))                                   # taken
    assert "letters, digits" in line, line


@pytest.mark.parametrize("name,value,why", BAD_VALUES, ids=range(len(BAD_VALUES)))
def test_bad_values_through_msconfig(home, name, value, why):
    conf = (home / "config" / "msg.conf").read_bytes()
    p = run(home, "msconfig", "set", name, value)
    if why is None:
        assert p.returncode == 0, p.stderr
        return
    assert p.returncode == EXIT_USAGE, p.stderr
    line = _one_line(p)
    assert why in line and name in line, line
    assert (home / "config" / "msg.conf").read_bytes() == conf
    p = run(home, "msconfig", "show")
    assert p.returncode == 0 and b"role.ssh.port = 2222\n" in p.stdout


HAND_EDITED = [
    (b"store.driver\n", 1, "expected 'name = value'"),
    (b"# ok\n= classic\n", 2, "unknown option ''"),
    (b"store.driver == classic\n", 1, "must be one of"),
    # a driver no loaded plugin offers (a plugin's, not loaded now?): named when opening
    (b"store.driver = mbox\n", None, "no loaded plugin offers it"),
    (b"store.driver = classic\nstore.driver = maildir\n", 2, "already set on line 1"),
    (b"store.driver = cl\xe4ssic\n", 1, "not UTF-8 text (byte 0xe4 at column 18)"),
    (b"# caf\xe9\n", 1, "not UTF-8 text"),
    (b"\xff\xfes\x00t\x00", 1, "not UTF-8 text (byte 0xff at column 1)"),         # UTF-16
    (b"store.driver = cla\x00ssic\n", 1, "control characters"),
    (b"store.drvier = classic\n", 1, "unknown option 'store.drvier'"),
    (b"ssh.user = " + b"x" * 200_000 + b"\n", 1, "too long"),
    (b"[store]\ndriver = classic\n", 1, "expected 'name = value'"),
    (b"store.driver: classic\n", 1, "expected 'name = value'"),
    (b"export IMS_HOME=/srv/ims\n", 1, "unknown option 'export IMS_HOME'"),
    (b"ssh.port = 22 # default\n", 1, "whole number"),
    (b"partition:primary.path = data/primary\n", 1, "absolute path"),
    (b"store.owner = 4294967296\n", 1, "between 0 and 4294967294"),
    (b"store.backupexclude = Trash%\n", 1, "may not be empty"),
    (b"ssh.user = joe\x1b[0m\n", 1, "control characters"),
    (b"store.driver = classic\rssh.port = 2\r", 1, "control characters"),
    (b"ssh.port =\n", 1, "empty"),
    (b"ssh.port = 2\xc2\xa02\n", 1, "whole number"),               # a no-break space
    (b"store.driver = clas\xe2\x80\xa8sic\n", 1, "control characters"),
    (b"\n\n\nstore.locktimeout = 0\n", 4, "between 1 and 3600"),
    # a typo in the first part of a name is no plugin's option (a plugin's namespace is
    # its entry point name): refused, naming the nearest known option
    (b"partiton:primary.path = /srv/mail\n", 1, "unknown option 'partiton:primary.path' (did you mean partition:primary.path?"),
    (b"stroe.owner = vmail\n", 1, "unknown option 'stroe.owner' (did you mean store.owner?"),
    (b"Store.Driver = maildir\n", 1, "unknown option 'Store.Driver' (did you mean store.driver?"),
    (b"# x\nssh.identty = /k\n", 2, "unknown option 'ssh.identty' (did you mean ssh.identity?"),
    (b"x" * (2 << 20), None, "bigger than 1 MiB"),
]


@pytest.mark.parametrize("text,line,why", HAND_EDITED, ids=range(len(HAND_EDITED)))
def test_hand_edited_msg_conf_read_by_imsbackup(home, tmp_path, text, line, why):
    conf = home / "config" / "msg.conf"
    conf.write_bytes(text)
    p = run(home, "imsbackup", "-f", tmp_path / "out.ims", "/")
    assert p.returncode == EXIT_USAGE, p.stderr
    err = _one_line(p)
    where = f"{conf}:{line}: " if line else f"{conf} "
    assert where in err and why in err, err
    assert not (tmp_path / "out.ims").exists()
    assert conf.read_bytes() == text
    assert sorted(os.listdir(home)) == ["config"], "nothing was made"


def test_msg_conf_that_is_a_directory(home, tmp_path):
    conf = home / "config" / "msg.conf"
    conf.unlink()
    conf.mkdir()
    for argv in (["imsbackup", "-f", tmp_path / "out.ims", "/"], ["msconfig", "show"],
                 ["msconfig", "set", "ssh.port", "22"]):
        p = run(home, *argv)
        assert p.returncode == EXIT_USAGE and f"{conf} is a directory" in _one_line(p)


@pytest.mark.parametrize("text", [
    b"\xef\xbb\xbfstore.driver = classic\n",            # a byte-order mark from an editor
    b"store.driver = classic\r\nssh.port = 2222\r\n",    # CRLF line ends
    b"  ssh.port\t=\t2222  \n# comment\n\n",
    b"store.backupexclude = Trash % Bulk Mail\n",
])
def test_what_a_hand_edited_file_may_look_like(home, tmp_path, text):
    (home / "config" / "msg.conf").write_bytes(text)
    p = run(home, "msconfig", "show")
    assert p.returncode == 0 and p.stderr == b"", p.stderr
