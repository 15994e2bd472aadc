"""docs/disaster-recovery.md, followed as written.

The runbook's command blocks (a ```sh block under a ``<!-- runbook: NAME -->`` line)
are read from the page and run with bash, with only the placeholders the page
documents set (IMS_HOME, BACKUP, PARTITION, OWNER).  Each route fills a store, takes
the documented backups between days of mail, destroys the whole installation (store,
databases, configuration, keys), recovers by the blocks, and compares what a client
sees with the source: for the classic store through the store's own view, for Maildir
through a real Dovecot over IMAP (tests/dovecot_lab.py), on stores Dovecot itself
filled (LMTP deliveries to several logins, IMAP changes) -- stores ims-asm did not make.
The file-level Maildir route runs Dovecot with mail_crypt: the mail on disk is
encrypted, so it reads back only if the disaster backup brought the keys back."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time

import pytest

from asm.cli.demo import fingerprint
from asm.config import Config
from asm.demo import build_demo
from asm.store import open_store
from tests.dovecot_lab import PLAIN, Lab, LabLayout, dovecot_lab, message
from tests.helpers import BIN, change_mail, make_home, require, run

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "disaster-recovery.md")
PLACEHOLDERS = {"IMS_HOME", "BACKUP", "PARTITION", "OWNER"}
_BLOCK = re.compile(r"<!-- runbook: (?P<name>[\w-]+)(?: driver=(?P<driver>\w+))? -->\n```sh\n(?P<body>.*?)```",
                    re.S)
ROUTES = {
    "archives": ["recover-partitions", "recover-start", "recover-archives", "check"],
    "files": ["recover-partitions", "recover-start", "recover-files", "recover-files-records",
              "recover-reconstruct", "check"],
}


def blocks() -> dict:
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    out = {}
    for m in _BLOCK.finditer(text):
        assert m.group("name") not in out, f"two runbook blocks named {m.group('name')}"
        out[m.group("name")] = (m.group("driver"), m.group("body"))
    return out


def test_the_runbook_blocks_use_only_documented_placeholders():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    table = set(re.findall(r"^\| `([A-Z_]+)` \|", text, re.M))
    assert table == PLACEHOLDERS
    found = blocks()
    used = set()
    for name, (driver, body) in found.items():
        assigned = set(re.findall(r"(?:^|\s)([a-z_][a-z0-9_]*)=", body))
        refs = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", body))
        assert refs <= PLACEHOLDERS | assigned, (name, refs - PLACEHOLDERS - assigned)
        used |= refs & PLACEHOLDERS
    assert used == PLACEHOLDERS
    steps = {b for route in ROUTES.values() for b in route} | {"backup-full", "backup-incremental", "backup-files"}
    assert set(found) == steps, "every runbook block is run by a route, every route's block is in the page"


class Runbook:
    def __init__(self, home, backup, partition, owner):
        self.env = {"PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "IMS_HOME": str(home),
                    "BACKUP": str(backup), "PARTITION": str(partition), "OWNER": owner,
                    "LANG": "C.UTF-8", "HOME": "/root", "TMPDIR": tempfile.gettempdir()}
        self.blocks = blocks()
        self.driver = None
        self.log: list = []

    def run(self, name: str) -> subprocess.CompletedProcess:
        driver, body = self.blocks[name]
        if driver is not None and driver != self.driver:
            self.log.append((name, "skipped: for the " + driver + " store"))
            return None
        p = subprocess.run(["bash", "-e", "-c", body], env=self.env, capture_output=True, text=True,
                           cwd="/", timeout=600)
        self.log.append((name, p.returncode))
        assert p.returncode == 0, f"runbook block {name} exited {p.returncode}:\n{body}\n{p.stdout}\n{p.stderr}"
        assert "Traceback" not in p.stderr
        return p


# -- classic ---------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["archives", "files"])
def test_runbook_classic(tmp_path, route):
    require("tar")
    home, backup = tmp_path / "ims", tmp_path / "backup"
    backup.mkdir()
    store = open_store(make_home(home, "classic"))
    with open(Config(str(home)).groups_path, "w") as f:
        f.write("early=[a-f].*\nlate=.*\n")
    build_demo(store, users=6, messages=90, seed=15)
    users = sorted(store.users("primary"))
    partition = Config(str(home)).partitions()["primary"]
    rb = Runbook(home, backup, partition, "root")
    rb.driver = "classic"
    rb.run("backup-full")
    for day in range(2):
        change_mail(open_store(Config(str(home))), users, n=5)
        time.sleep(1.1)
        rb.run("backup-incremental" if route == "archives" else "backup-files"
               if day == 1 else "backup-incremental")
    want = fingerprint(open_store(Config(str(home))))
    conf = {n: (home / "config" / n).read_bytes() for n in ("msg.conf", "backup-groups.conf")}

    shutil.rmtree(home)                                   # the store, databases, configuration
    for name in ROUTES[route]:
        rb.run(name)
    assert {n: (home / "config" / n).read_bytes() for n in conf} == conf
    assert fingerprint(open_store(Config(str(home)))) == want


# -- Maildir, filled and read by Dovecot ---------------------------------------------------

def dovecot_day(lab: Lab, day: int) -> None:
    """A day of mail as Dovecot makes it: one delivery to every login (one stored copy),
    others to one, folders, COPY and MOVE (before the full backup only: see
    test_an_incremental_misses_mail_copied_by_imap), APPEND, flags and keywords, an expunge."""
    logins = lab.logins
    for i in range(6):
        lab.deliver(logins if i % 3 == 0 else [logins[0], logins[i % len(logins)]][: 1 + i % 2],
                    message(f"day {day} mail {i}", size=400 * i))
    with lab.imap(logins[0]) as c:
        box = f"Projects/{day}"
        c.create(box)
        c.subscribe(box)
        c.select("INBOX")
        uids = c.uids()
        if day == 0:
            c.uid_copy(uids[:2], box)
            c.uid_move(uids[2:3], box)
        else:
            c.append(box, message(f"day {day} draft"), flags=["\\Draft", "$Day"],
                     internaldate=1_700_000_000 + day)
        c.uid_store(uids[:1], "+FLAGS", ["\\Seen", f"$Day{day}"])
        if len(uids) > 4:
            c.uid_expunge(uids[3:4])
        c.unselect()
    with lab.imap(logins[1]) as c:
        c.select("INBOX")
        c.uid_store(c.uids()[-1:], "+FLAGS", ["\\Flagged", "$Todo"])
        c.unselect()


def views(lab: Lab, guid: bool = True) -> dict:
    out = {}
    for login in lab.logins:
        st = lab.client_state(login)
        out[login] = {name: (f.uidvalidity, f.uidnext, f.subscribed,
                             tuple((m.uid, m.flags, m.internaldate, m.size, m.sha256) + ((m.guid,) if guid else ())
                                   for m in f.messages))
                      for name, f in st.folders.items()}
        out[login]["LSUB"] = st.subscriptions
    return out


def differences(got: dict, want: dict) -> list:
    """(login, folder, what) for every folder that differs: short enough to read."""
    out = []
    for login in sorted(set(got) | set(want)):
        g, w = got.get(login, {}), want.get(login, {})
        for name in sorted(set(g) | set(w), key=str):
            if g.get(name) == w.get(name):
                continue
            if name == "LSUB" or g.get(name) is None or w.get(name) is None:
                out.append((login, name, g.get(name), w.get(name)))
                continue
            if g[name][:3] != w[name][:3]:
                out.append((login, name, "folder", g[name][:3], w[name][:3]))
            gm = {m[0]: m for m in g[name][3]}
            wm = {m[0]: m for m in w[name][3]}
            for uid in sorted(set(gm) | set(wm)):
                if gm.get(uid) != wm.get(uid):
                    out.append((login, name, uid, gm.get(uid), wm.get(uid)))
    return out


def crypt_layout(keys: str) -> LabLayout:
    return LabLayout("crypt", "maildir:{store}/%u/Maildir", "{store}/%u", PLAIN, mail_plugins="mail_crypt",
                     plugin=(("mail_crypt_global_private_key", f"<{keys}/priv.pem"),
                             ("mail_crypt_global_public_key", f"<{keys}/pub.pem"),
                             ("mail_crypt_save_version", "2")))


@pytest.mark.parametrize("route", ["archives", "files"])
def test_runbook_maildir_through_dovecot(tmp_path, route):
    require("tar")
    openssl = require("openssl")
    keys = tempfile.mkdtemp(prefix="ims-keys-")
    os.chmod(keys, 0o755)
    layout = "plain"
    if route == "files":
        # the archive route restores the bytes on disk under new names, which Dovecot cannot
        # read back for encrypted mail (its ,S= is the plain size): mail_crypt on this route only
        subprocess.run([openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-out", f"{keys}/priv.pem"], check=True, capture_output=True)
        subprocess.run([openssl, "pkey", "-in", f"{keys}/priv.pem", "-pubout", "-out", f"{keys}/pub.pem"],
                       check=True, capture_output=True)
        layout = crypt_layout(keys)
    home, backup = tmp_path / "ims", tmp_path / "backup"
    backup.mkdir()
    try:
        with dovecot_lab(layout) as lab:
            make_home(home, "maildir", **{"partition:primary.path": lab.store, "store.owner": lab.mail_user,
                                          "dovecot.config": lab.conf})
            with open(Config(str(home)).groups_path, "w") as f:
                f.write("first=a.*\nrest=.*\n")
            rb = Runbook(home, backup, lab.store, lab.mail_user)
            rb.driver = "maildir"
            dovecot_day(lab, 0)
            rb.run("backup-full")
            for day in (1, 2):
                dovecot_day(lab, day)
                time.sleep(1.1)
                rb.run("backup-files" if route == "files" and day == 2 else "backup-incremental")
            want = views(lab, guid=route == "files")
            # single copies (one LMTP delivery to every login, COPY) as the driver sees them
            links = fingerprint(open_store(Config(str(home))))["links"]
            assert links
            if route == "files":
                first = os.path.join(lab.store, lab.logins[0], "Maildir", "cur")
                on_disk = [n for n in os.listdir(first)]
                with open(os.path.join(first, on_disk[0]), "rb") as f:
                    assert f.read(7) == b"CRYPTED"          # mail_crypt is really on
                saved_keys = {n: open(os.path.join(keys, n), "rb").read() for n in os.listdir(keys)}
            lab.stop()

            # the whole installation is gone: configuration, journals, the store, the keys
            shutil.rmtree(home)
            shutil.rmtree(lab.store)
            for n in os.listdir(keys):
                os.unlink(os.path.join(keys, n))
            for name in ROUTES[route]:
                rb.run(name)
            if route == "files":
                assert {n: open(os.path.join(keys, n), "rb").read() for n in os.listdir(keys)} == saved_keys
            lab.start()
            got = views(lab, guid=route == "files")
            assert differences(got, want) == []
            assert fingerprint(open_store(Config(str(home))))["links"] == links
    finally:
        shutil.rmtree(keys, ignore_errors=True)


def test_runbook_drfiles_control_index_apart_keeps_uids_and_keywords(tmp_path):
    """The file-level route on a layout keeping CONTROL= and INDEX= apart from the mail
    (maildir:STORE/%u:INDEX=IDX/%u:CONTROL=CTL/%u): the file backup of $PARTITION holds no
    uidlist, dovecot-keywords or subscriptions; the disaster backup taken just before it
    does, and the route puts them back.  Clients see the same UIDVALIDITY, UIDs, UIDNEXT,
    keywords and subscriptions as before the loss (a folder made after the full backup
    too, and a folder whose expunge left a gap in its UIDs)."""
    require("tar")
    home, backup = tmp_path / "ims", tmp_path / "backup"
    backup.mkdir()
    with dovecot_lab("idxctl") as lab:
        make_home(home, "maildir", **{"store.owner": lab.mail_user, "dovecot.config": lab.conf,
                                      "store.mail_location": "doveconf"})
        rb = Runbook(home, backup, lab.store, lab.mail_user)
        rb.driver = "maildir"
        lab.deliver(lab.logins, message("to all"))
        with lab.imap("alice") as c:
            c.create("Work")
            c.subscribe("Work")
            c.append("Work", message("w1"), flags=["\\Seen", "$Project"])
        rb.run("backup-full")
        time.sleep(1.1)
        lab.deliver(lab.logins, message("day 1"))
        lab.deliver(["bob"], message("day 1 spam"))
        lab.deliver(["bob"], message("day 1 kept"))
        with lab.imap("bob") as c:
            c.select("INBOX")
            c.uid_expunge([3])
            c.unselect()
        with lab.imap("alice") as c:
            c.create("Later")
            c.subscribe("Later")
            c.append("Later", message("l1"), flags=["$Later"])
        rb.run("backup-files")
        want = views(lab)
        assert [m.uid for m in lab.client_state("bob").folders["INBOX"].messages] == [1, 2, 4]
        lab.stop()
        shutil.rmtree(home)
        for top in (lab.store, lab.idx, lab.ctl):
            shutil.rmtree(top)
            os.mkdir(top)
            os.chown(top, lab.uid, lab.gid)
        for name in ROUTES["files"]:
            rb.run(name)
        lab.start()
        got = views(lab)
        assert differences(got, want) == []
        assert got["bob"]["INBOX"][1] == 5                      # UIDNEXT never goes down


def test_runbook_drfiles_partition_of_a_layout_is_its_mail_root(tmp_path):
    """PARTITION is what `msconfig show partition:primary.path` prints: with
    store.mail_location (here maildir:STORE/%d/%n/Maildir) that is the directory the mail
    root template starts with, where the mail is, not a default under IMS_HOME; and a
    file backup that fails leaves no files-*.tar for the recovery to take."""
    require("tar")
    home, backup = tmp_path / "ims", tmp_path / "backup"
    backup.mkdir()
    with dovecot_lab("vdomain") as lab:
        make_home(home, "maildir", **{"store.owner": lab.mail_user, "dovecot.config": lab.conf,
                                      "store.mail_location": "doveconf"})
        lab.deliver(lab.logins, message("hello"))
        shown = run(home, "msconfig", "show", "partition:primary.path", check=0, text=True).stdout
        assert shown == f"role.partition:primary.path = {lab.store}\n"
        listing = run(home, "msconfig", "show", check=0, text=True).stdout
        assert f"role.partition:primary.path = {lab.store}\n" in listing
        rb = Runbook(home, backup, lab.store, lab.mail_user)
        rb.run("backup-files")
        (tar,) = [n for n in os.listdir(backup) if n.startswith("files-")]
        with tarfile.open(backup / tar) as t:
            mail = [m for m in t.getmembers() if (m.isfile() or m.islnk()) and re.search(r"/(cur|new)/", m.name)]
        assert len(mail) == len(lab.logins)
        os.unlink(backup / tar)
        rb.env["PARTITION"] = str(tmp_path / "not-there")
        with pytest.raises(AssertionError, match="exited 2"):
            rb.run("backup-files")
        assert [n for n in os.listdir(backup) if n.startswith("files-")] == []


def test_an_incremental_by_date_sees_mail_copied_by_imap(tmp_path):
    """Found by the runbook (fixed by issue 13): an incremental (-d) selected Maildir
    messages by the time in their file name, which IMAP COPY and MOVE keep; it now
    judges by the file's ctime, which a link or rename sets."""
    home = tmp_path / "ims"
    with dovecot_lab("plain") as lab:
        make_home(home, "maildir", **{"partition:primary.path": lab.store, "store.owner": lab.mail_user})
        for i in range(3):
            lab.deliver(["alice"], message(f"m{i}"))
        subprocess.run([f"{BIN}/imsbackup", "-f", tmp_path / "full.ims", "/"], env={**os.environ, "IMS_HOME": str(home)},
                       check=True)
        time.sleep(1.1)
        since = time.strftime("%Y%m%d:%H%M%S")
        time.sleep(1.1)
        with lab.imap("alice") as c:
            c.create("New")
            c.select("INBOX")
            c.uid_copy([1], "New")
            c.uid_move([2], "New")
            c.unselect()
        subprocess.run([f"{BIN}/imsbackup", "-f", tmp_path / "incr.ims", "-d", since, "/"],
                       env={**os.environ, "IMS_HOME": str(home)}, check=True)
        want = lab.client_state("alice")
        lab.stop()
        shutil.rmtree(os.path.join(lab.store, "alice"))
        for a, hold in (("full.ims", ["-H"]), ("incr.ims", [])):
            subprocess.run([f"{BIN}/imsrestore", *hold, "-f", tmp_path / a], env={**os.environ, "IMS_HOME": str(home)},
                           check=True)
        lab.start()
        got = lab.client_state("alice")
        assert [m.sha256 for m in got["New"].messages] == [m.sha256 for m in want["New"].messages]
        assert got.folders == want.folders
