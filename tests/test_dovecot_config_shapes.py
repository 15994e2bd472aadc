"""Dovecot configurations beyond the lab's eleven layouts, each its own small dovecot.conf
(tests/dovecot_lab.py's LabLayout): what ims-asm cannot read faithfully is named, never
archived or restored wrong with exit 0."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil

import pytest

from tests.dovecot_lab import MAIL_USER, LabLayout, dovecot_lab, ensure_mail_user, message
from tests.helpers import make_home, run

PLAIN_LOC = "maildir:{store}/%u/Maildir"


@pytest.fixture
def shaped_lab(request):
    """A running Dovecot with the LabLayout the test is parametrized with (indirect)."""
    with dovecot_lab(request.param) as lab:
        yield lab


def shaped(layout: LabLayout):
    return pytest.mark.parametrize("shaped_lab", [layout], ids=[layout.name], indirect=True)


def configure(lab, home, location: str = "doveconf") -> None:
    """The installation msconfig set would write (the same msg.conf, written by the same
    Config.set), in this process: four msconfig commands per test took seconds on a
    loaded machine and tested nothing here (msconfig's own tests do; the tests below
    that give msconfig a location run it)."""
    make_home(home, "maildir", **{"store.owner": MAIL_USER, "dovecot.config": lab.conf,
                                  "store.mail_location": location})


def _mail_and_a_stale_maildir(lab, flags) -> None:
    """Each login gets mail over LMTP and IMAP where Dovecot serves it, and a stale
    ~/Maildir tree (one old message) that a move or migration left behind."""
    for u in lab.logins:
        lab.deliver([u], message(f"for {u}"))
        with lab.imap(u) as c:
            c.create("Work")
            c.append("Work", message(f"work {u}"), flags)
        old = os.path.join(lab.store, u, "Maildir")
        for d in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(old, d), exist_ok=True)
        with open(os.path.join(old, "cur", "1000000000.M1P1.old,S=20:2,S"), "wb") as f:
            f.write(b"Subject: old\n\nstale\n")
        lab.fix_owner(os.path.join(lab.store, u))


def stored_files(lab, login: str) -> list[str]:
    return sorted(glob.glob(os.path.join(lab.store, login, "Maildir", "cur", "*"))
                  + glob.glob(os.path.join(lab.store, login, "Maildir", "new", "*")))


LZ4 = LabLayout("lz4", PLAIN_LOC, "{store}/%u", ("alice",), mail_plugins="zlib",
                plugin=(("zlib_save", "lz4"),))


@shaped(LZ4)
def test_dovecot_lz4_files_are_named_never_archived_compressed(shaped_lab, tmp_path):
    """zlib_save = lz4: Dovecot's own LZ4 stream ("Dovecot-LZ4" magic, not the LZ4
    frame format) is recognised like zstd: the backup names each message (exit 1), the
    archive holds none of the compressed bytes, imsverify says so, and a restore writes
    nothing Dovecot cannot read.  (Before, the compressed bytes were archived as the
    message and restored under S= their compressed size; Dovecot then failed every
    FETCH of it, "Cached message size smaller than expected (379 < 428)", and imsbackup,
    imsverify and imsrestore all exited 0.)"""
    lab = shaped_lab
    lab.deliver(["alice"], message("lz4 by lmtp"))
    with lab.imap("alice") as c:
        c.create("Work")
        c.append("Work", message("lz4 appended", size=2000), [r"\Seen"])
    files = stored_files(lab, "alice") + glob.glob(os.path.join(lab.store, "alice/Maildir/.Work/cur/*"))
    assert len(files) == 2 and all(open(f, "rb").read(11) == b"Dovecot-LZ4" for f in files)
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    b = run(home, "imsbackup", "-f", a, "/", check=1, text=True)
    for f in files:
        assert os.path.basename(f) in b.stderr and "lz4" in b.stderr, b.stderr
    listing = run(home, "imsrestore", "-t", "-f", a, check=None, text=True).stdout
    assert "/primary/alice/INBOX/1\t" not in listing and "/primary/alice/Work/1\t" not in listing, listing
    run(home, "imsverify", "-f", a, check=1)          # the backup's errors, counted
    # the account emptied and restored: what comes back is readable (nothing came back)
    for f in files:
        os.unlink(f)
    run(home, "imsrestore", "-f", a, check=None)
    state = lab.client_state("alice")
    assert all(not f.messages for f in state.folders.values())


ARCHIVE_NS = LabLayout("ns-archive", PLAIN_LOC, "{store}/%u", ("alice",), extra="""\
namespace archive {
  prefix = Archive/
  separator = /
  location = maildir:{store}/%u/Archive
  subscriptions = no
}""")
PUBLIC_NS = LabLayout("ns-public", PLAIN_LOC, "{store}/%u", ("alice",), extra="""\
namespace public {
  type = public
  prefix = Public/
  separator = /
  location = maildir:{store}/public:INDEX=~/public-index
  subscriptions = no
  list = children
}""")


@pytest.mark.parametrize("shaped_lab,ns,folder", [
    (ARCHIVE_NS, "archive", "Archive/2019"), (PUBLIC_NS, "public", "Public/Announce")],
    ids=["private", "public"], indirect=["shaped_lab"])
def test_a_namespace_with_its_own_location_is_refused_by_name(shaped_lab, ns, folder, tmp_path):
    """A namespace keeping its mail apart from the location ims-asm backs up (a second
    private namespace, a public one) would be missing from every backup: imsbackup
    refuses in one line naming it and what to do (exit 2, no archive written); set
    store.mail_location explicitly and the rest is backed up knowingly.  (Before, its
    folders were silently left out: after a restore Archive/2019 and Public/Announce
    were missing, every command exited 0.)"""
    lab = shaped_lab
    os.makedirs(os.path.join(lab.store, "public"), exist_ok=True)
    lab.fix_owner(os.path.join(lab.store, "public"))
    lab.deliver(["alice"], message("in the inbox"))
    with lab.imap("alice") as c:
        c.create(folder)
        c.append(folder, message(f"in {folder}"), [r"\Seen"])
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/", check=2, text=True)
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and f"namespace {ns}" in err and "store.mail_location" in err, err
    assert "Traceback" not in err and not os.path.exists(a)
    # the administrator's answer: the private mail_location given explicitly
    run(home, "msconfig", "set", "store.mail_location", lab.mail_location, check=0)
    run(home, "imsbackup", "-f", a, "/", check=0)
    listing = run(home, "imsrestore", "-t", "-f", a, check=0, text=True).stdout
    assert "/primary/alice/INBOX/1\t" in listing and folder not in listing


INBOX_ELSEWHERE = LabLayout("ns-inbox-location", PLAIN_LOC, "{store}/%u", ("alice", "bob"),
                            inbox_namespace="  location = maildir:{store}/%u/Mail2")


@shaped(INBOX_ELSEWHERE)
def test_the_inbox_namespace_location_is_the_one_backed_up(shaped_lab, tmp_path):
    """The inbox namespace's own location= wins over mail_location for Dovecot, and so
    for ims-asm: the backup reads that tree, a restore writes there.  (Before, the
    stale tree left at mail_location was archived, the real mail lost, exit 0.)"""
    lab = shaped_lab
    _mail_and_a_stale_maildir(lab, [r"\Seen", "$Label1"])
    assert lab.mailbox_path("alice").startswith(os.path.join(lab.store, "alice", "Mail2"))
    before = {u: lab.client_state(u) for u in lab.logins}
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, "/", check=0)
    listing = run(home, "imsrestore", "-t", "-f", a, check=0, text=True).stdout
    assert listing.count("/primary/") >= 6 and "/Work/1\t" in listing, listing
    for u in lab.logins:
        shutil.rmtree(os.path.join(lab.store, u, "Mail2"))
    run(home, "imsrestore", "-f", a, check=0)
    for u in lab.logins:
        assert lab.client_state(u) == before[u]


QUOTA = LabLayout("quota", PLAIN_LOC, "{store}/%u", ("alice",), mail_plugins="quota",
                  plugin=(("quota", "maildir:User quota"), ("quota_rule", "*:storage=10M")),
                  extra="protocol imap {\n  mail_plugins = $mail_plugins imap_quota\n}")


def quota_used(lab, login: str = "alice") -> tuple[int, int]:
    """(STORAGE used in KiB, MESSAGE used) as GETQUOTAROOT tells an IMAP client."""
    with lab.imap(login) as c:
        typ, data = c.conn.getquotaroot("INBOX")
    assert typ == "OK", data
    text = " ".join(str(x) for part in data for x in (part if isinstance(part, list) else [part]))
    m = re.search(r"STORAGE (\d+) \d+", text)
    n = re.search(r"MESSAGE (\d+) \d+", text)
    return int(m.group(1)), int(n.group(1)) if n else -1


@shaped(QUOTA)
def test_a_restore_leaves_maildir_quota_counting_what_it_wrote(shaped_lab, tmp_path):
    """Maildir++ quota (maildirsize): a restore into the live account makes Dovecot
    count its mail again (the file is padded past the 5,120 bytes after which the
    Maildir++ rules, Dovecot's included, recalculate; its limits line is kept), so
    GETQUOTAROOT after the restore is what it was before the loss.  (Before, a
    restored 1 MB folder was not counted: 3 KiB used after the restore, 983 before.)"""
    lab = shaped_lab
    lab.deliver(["alice"], message("small"))
    with lab.imap("alice") as c:
        c.create("Big")
        for i in range(5):
            c.append("Big", message(f"big {i}", size=200_000))
    full = quota_used(lab)
    assert full[0] > 900
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, "/", check=0)
    with lab.imap("alice") as c:
        c.delete("Big")
    assert quota_used(lab)[0] < 100
    size_file = os.path.join(lab.store, "alice", "Maildir", "maildirsize")
    with open(size_file) as f:
        limits = f.readline()
    run(home, "imsrestore", "-f", a, "/primary/alice/Big", check=0)
    assert len(lab.client_state("alice")["Big"].messages) == 5
    assert quota_used(lab) == full
    with open(size_file) as f:
        assert f.readline() == limits


# Sites migrated from Courier keep every folder under INBOX: prefix "INBOX.", separator '.'
# (the later separator line of the inbox namespace wins); Debian's 10-mail.conf sets no
# separator (Dovecot takes the mailbox list's: '/' for dbox, '.' for Maildir++)
COURIER_NS = "  separator = .\n  prefix = INBOX."
NO_SEPARATOR_NS = "  separator ="


def dbox_ns(fmt: str, name: str, lines: str) -> LabLayout:
    return LabLayout(f"{name}-{fmt}", f"{fmt}:{{store}}/%u/{fmt}", "{store}/%u", ("alice", "bob"),
                     inbox_namespace=lines)


@pytest.mark.parametrize("shaped_lab,prefix,sep", [
    (dbox_ns("sdbox", "courier", COURIER_NS), "INBOX.", "."),
    (dbox_ns("mdbox", "courier", COURIER_NS), "INBOX.", "."),
    (dbox_ns("sdbox", "nosep", NO_SEPARATOR_NS), "", "/")],
    ids=["courier-sdbox", "courier-mdbox", "nosep-sdbox"], indirect=["shaped_lab"])
def test_a_dbox_store_with_the_sites_namespace_is_backed_up_and_restored(shaped_lab, prefix, sep, tmp_path):
    """sdbox/mdbox with `namespace inbox { prefix = INBOX. ; separator = . }` (Courier),
    or with no separator set (Debian's default): the full backup holds every folder
    (under the names the Maildir driver gives them, as in the default namespace:
    Work/2024), and a restore into the emptied store gives IMAP clients the folders,
    UIDVALIDITY, UIDNEXT, UIDs, flags, keywords and subscriptions they saw.  (Before,
    doveadm backup of each login to the temporary Maildir stopped, on "mailbox_delete
    failed: INBOX can't be deleted" and on "Mail locations must use the same hierarchy
    separator": imsbackup exited 17 with that dsync error and wrote no archive.)"""
    lab = shaped_lab
    work, year = prefix + "Work", prefix + "Work" + sep + "2024"
    for u in lab.logins:
        lab.deliver([u], message(f"for {u}"))
        with lab.imap(u) as c:
            for box in (work, year):
                c.create(box)
            c.subscribe(year)
            c.append(work, message(f"w1 {u}"), [r"\Seen", "$Label1"], "05-Mar-2024 12:00:00 +0100")
            _, w2 = c.append(work, message(f"w2 {u}", size=1500), [r"\Flagged"])
            c.append(year, message(f"y {u}"), [r"\Answered"])
            c.select(work)
            c.uid_expunge([w2])
            c.unselect()
    before = {u: lab.client_state(u) for u in lab.logins}
    assert sorted(before["alice"].folders) == ["INBOX", work, year]
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/", check=None, text=True)
    assert p.returncode == 0, p.stderr
    listing = run(home, "imsrestore", "-t", "-f", a, check=0, text=True).stdout
    for u in lab.logins:
        for f in ("INBOX/1", "Work/1", "Work/2024/1"):
            assert f"/primary/{u}/{f}\t" in listing, listing
    shutil.rmtree(lab.store)
    os.mkdir(lab.store)
    lab.fix_owner(lab.store)
    run(home, "imsrestore", "-f", a, check=0)
    for u in lab.logins:
        assert lab.client_state(u) == before[u]


def maildir_ns(name: str, lines: str, layout: str = "") -> LabLayout:
    return LabLayout(f"{name}-maildir{layout.replace(':LAYOUT=', '-')}", f"maildir:{{store}}/%u/Maildir{layout}",
                     "{store}/%u", ("alice",), inbox_namespace=lines)


KEYWORDS_30 = [f"kw{i:02d}" for i in range(30)]


@pytest.mark.parametrize("shaped_lab,prefix,sep", [
    (maildir_ns("courier", COURIER_NS), "INBOX.", "."),
    (maildir_ns("courier", COURIER_NS, ":LAYOUT=fs"), "INBOX.", "."),
    (maildir_ns("sepdot", "  separator = ."), "", "."),
    (maildir_ns("sepdot", "  separator = .", ":LAYOUT=fs"), "", ".")],
    ids=["courier", "courier-fs", "sepdot", "sepdot-fs"], indirect=["shaped_lab"])
def test_keywords_beyond_26_of_a_maildir_store_with_the_sites_namespace_round_trip(shaped_lab, prefix, sep,
                                                                                    tmp_path):
    """A Maildir store whose inbox namespace has Courier's prefix INBOX. and separator
    '.', or only the separator '.': a message's keywords beyond the 26 file-name letters
    (Dovecot keeps them in its index only) are asked of doveadm by folder name, as the
    driver names folders (Work/Sub), which such a namespace does not.  Before: with the
    prefix, those of every folder but INBOX were left out of the archive and the restore
    (exit 0: kw26..kw29 gone for good); with the '.' separator, every nested folder failed
    every backup (exit 1, "Name must not have '/' characters") and every restore (exit
    17).  Now: the backup exits 0, the archive holds all 30, and a restore into the
    emptied store gives IMAP clients every keyword back."""
    lab = shaped_lab
    from asm.store.utf7 import encode
    boxes = [prefix + "Tags", prefix + "Work", prefix + "Work" + sep + "Sub",
             prefix + encode("Été") + sep + encode("Ünter")]
    with lab.imap("alice") as c:
        c.append("INBOX", message("inbox"), KEYWORDS_30)
        for box in boxes:
            c.create(box)
            c.append(box, message(f"in {box}"), [r"\Seen"] + KEYWORDS_30)
            c.append(box, message(f"second in {box}"), KEYWORDS_30[20:])
    before = lab.client_state("alice")
    for box in ["INBOX"] + boxes:
        assert all(set(KEYWORDS_30[20:]) <= set(m.flags) for m in before[box].messages), (box, before[box])
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/", check=None, text=True)
    assert p.returncode == 0, p.stderr
    shutil.rmtree(lab.store)
    os.mkdir(lab.store)
    lab.fix_owner(lab.store)
    p = run(home, "imsrestore", "-f", a, check=None, text=True)
    assert p.returncode == 0, p.stderr
    assert lab.client_state("alice") == before


@pytest.mark.parametrize("shaped_lab", [LabLayout("dirname", "maildir:{store}/%u/Maildir:LAYOUT=fs:DIRNAME=mdir",
                                                    "{store}/%u", ("alice", "bob"))],
                         ids=["dirname"], indirect=True)
def test_a_dirname_store_restores_into_the_emptied_store(shaped_lab, tmp_path):
    """maildir:...:LAYOUT=fs:DIRNAME=mdir keeps INBOX's files in Maildir/INBOX/mdir.  A
    restore into the emptied store (the disaster case) made that directory before the
    Maildir it builds aside was renamed into place: the rename failed, the user was taken
    as existing and every folder failed, exit 17 ("no such folder: 'INBOX'"), until a
    client had logged in.  Now every user comes back as IMAP clients saw it."""
    lab = shaped_lab
    for u in lab.logins:
        lab.deliver([u], message(f"for {u}"))
    with lab.imap("alice") as c:
        c.create("Work")
        c.append("Work", message("work"), [r"\Seen", "$Label1"])
    before = {u: lab.client_state(u) for u in lab.logins}
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, "/", check=0)
    shutil.rmtree(lab.store)
    os.mkdir(lab.store)
    lab.fix_owner(lab.store)
    p = run(home, "imsrestore", "-f", a, check=None, text=True)
    assert p.returncode == 0, p.stderr
    for u in lab.logins:
        assert os.path.isdir(os.path.join(lab.store, u, "Maildir", "INBOX", "mdir", "cur"))
        assert lab.client_state(u) == before[u]


@pytest.mark.parametrize("dovecot", ["running", "stopped"])
@pytest.mark.parametrize("shaped_lab,override", [("plain", "mail"), ("home", "home")],
                         ids=["userdb-mail", "userdb-home"], indirect=["shaped_lab"])
def test_a_login_the_userdb_keeps_elsewhere_is_named_and_the_backup_exits_1(shaped_lab, override,
                                                                             dovecot, tmp_path):
    """A userdb may give one login its own mail= (passwd-file userdb_mail=) or, with
    mail_location maildir:~/Maildir, a home= apart from the home template: Dovecot keeps
    that login's mail there, outside the tree store.mail_location's template describes.
    The backup names the login and where its mail is, and exits 1 (partial), never 0; a
    userdb field that puts a login exactly where the template does changes nothing.
    (Before, imsbackup / exited 0 and carol's 3 messages were in no archive.)
    The same with Dovecot stopped (a cold backup): its userdbs' passwd-files are read
    (before, nothing could be asked, and the backup exited 0 without carol)."""
    lab = shaped_lab
    elsewhere = os.path.join(lab.dir, "elsewhere")
    os.makedirs(elsewhere)
    lab.fix_owner(elsewhere)
    if override == "mail":
        lab.add_user("carol", mail=f"maildir:{elsewhere}/carol/Maildir")
        lab.add_user("bob", mail=f"maildir:{lab.store}/bob/Maildir")        # where the template is
    else:
        lab.add_user("carol", home=f"{elsewhere}/carol")
        lab.add_user("bob", home=os.path.join(lab.homes, "bob"))
    for u in ("alice", "bob", "carol"):
        lab.deliver([u], message(f"for {u}"))
    with lab.imap("carol") as c:
        c.create("Work")
        c.append("Work", message("work"), [r"\Seen"])
        c.append("Work", message("work 2"))
    carol_inbox = lab.mailbox_path("carol")
    assert carol_inbox.startswith(f"{elsewhere}/carol/Maildir"), carol_inbox
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    if dovecot == "stopped":
        lab.stop()
    p = run(home, "imsbackup", "-f", a, "/", check=1, text=True)
    err = [line for line in p.stderr.splitlines() if "carol" in line]
    assert len(err) == 1 and f"{elsewhere}/carol/Maildir" in err[0], p.stderr
    assert "bob" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    listing = run(home, "imsrestore", "-t", "-f", a, check=0, text=True).stdout
    assert "/primary/alice/INBOX/1\t" in listing and "/primary/bob/INBOX/1\t" in listing, listing
    assert "/primary/carol/" not in listing
    if dovecot == "stopped":
        lab.start()
    # the administrator's answer the message gives: an IMS_HOME of its own whose
    # store.mail_location is carol's location backs her up, and restores her there
    before = lab.client_state("carol")
    home2 = tmp_path / "ims-elsewhere"
    configure(lab, home2, f"maildir:{elsewhere}/%n/Maildir")
    a2 = tmp_path / "carol.ims"
    run(home2, "imsbackup", "-f", a2, "/", check=0)
    shutil.rmtree(os.path.join(elsewhere, "carol", "Maildir"))
    run(home2, "imsrestore", "-f", a2, check=0)
    assert lab.client_state("carol") == before


def test_with_dovecot_stopped_an_sql_userdb_that_cannot_be_asked_is_named_and_the_backup_exits_1(tmp_path):
    """Dovecot stopped, its userdb in SQL: nobody can say which logins it gives their
    own mail= or home=, so nobody can say the backup holds all the store's mail.  The
    backup still saves every login it finds, names what it could not ask and why, and
    exits 1 (it exited 0).  A restore from that archive brings back what it holds and
    says the same (exit 1): the archive cannot say it has all the store's mail."""
    conf = tmp_path / "dovecot.conf"
    mail = tmp_path / "mail"
    conf.write_text(f"base_dir = {tmp_path}/run\nmail_location = maildir:{mail}/%u/Maildir\n"
                    f"userdb {{\n  driver = sql\n  args = {tmp_path}/sql.conf\n}}\n")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(mail / "alice" / "Maildir" / sub)
    (mail / "alice" / "Maildir" / "new" / "1700000000.M1P1.host").write_bytes(message("hi"))
    home = tmp_path / "ims"
    make_home(home, "maildir", **{"dovecot.config": str(conf), "store.mail_location": "doveconf"})
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/", check=1, text=True)
    assert f"Dovecot's auth service does not answer ({tmp_path}/run/auth-userdb)" in p.stderr, p.stderr
    assert "sql userdb can only be asked through Dovecot's auth service" in p.stderr, p.stderr
    assert "start Dovecot and run the command again" in p.stderr and "Traceback" not in p.stderr
    listing = run(home, "imsrestore", "-t", "-f", a, check=0, text=True).stdout
    assert "/primary/alice/INBOX/1\t" in listing, listing
    # imsdr backup says the same, and still captures the store's files
    p = run(home, "imsdr", "backup", "-f", tmp_path / "dr.tar", check=1, text=True)
    assert "sql userdb can only be asked through Dovecot's auth service" in p.stderr, p.stderr
    assert "none of the store's index and control files" not in p.stderr, p.stderr
    items = json.loads(run(home, "imsdr", "show", "--json", "-f", tmp_path / "dr.tar", check=0,
                           text=True).stdout)["items"]
    assert [i for i in items if i.get("login") == "alice"], items
    shutil.rmtree(mail / "alice")
    p = run(home, "imsrestore", "-f", a, check=1, text=True)
    assert "/primary: the backup that made this archive could not read it" in p.stderr, p.stderr
    assert "sql userdb can only be asked" in p.stderr, p.stderr
    assert [f.read_bytes() for f in (mail / "alice" / "Maildir" / "cur").iterdir()] == [message("hi")]


@pytest.mark.parametrize("shaped_lab,fmt", [
    (LabLayout("userdb-moved", PLAIN_LOC, "{store}/%u", ("alice", "carol")), "maildir"),
    (LabLayout("userdb-moved-sdbox", "sdbox:{store}/%u/sdbox", "{store}/%u", ("alice", "carol")),
     "sdbox")], ids=["maildir", "sdbox"], indirect=["shaped_lab"])
def test_a_restore_of_a_login_the_userdb_keeps_elsewhere_never_writes_the_template(shaped_lab, fmt,
                                                                                   tmp_path):
    """carol was backed up where the template put her; since then the userdb gives her
    her own mail= (her new disk is empty).  A restore must not write her mail where
    Dovecot no longer looks and exit 0: it names her and her location, restores the
    others, and exits non-zero; nothing appears at the template's place.  (Before, the
    restore exited 0 and wrote carol's message to mail/carol/Maildir, where Dovecot never
    showed it.)"""
    lab = shaped_lab
    for u in lab.logins:
        lab.deliver([u], message(f"for {u}"))
    before = lab.client_state("alice")
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, "/", check=0)
    elsewhere = os.path.join(lab.dir, "elsewhere")
    os.makedirs(elsewhere)
    lab.fix_owner(elsewhere)
    mail_dir = f"{elsewhere}/carol/" + ("Maildir" if fmt == "maildir" else "sdbox")
    lab.add_user("carol", mail=f"{fmt}:{mail_dir}")
    # what is left at the template's place is not carol's mail any more: named
    p = run(home, "imsbackup", "-f", tmp_path / "b.ims", "/", check=1, text=True)
    assert f"{lab.store}/carol/{'Maildir' if fmt == 'maildir' else 'sdbox'}): not backed up" \
        in p.stderr, p.stderr
    for u in lab.logins:
        shutil.rmtree(os.path.join(lab.store, u))
    p = run(home, "imsrestore", "-f", a, text=True)
    assert p.returncode not in (0, 70), (p.returncode, p.stderr)
    err = [line for line in p.stderr.splitlines() if "carol" in line]
    assert err and mail_dir in err[0] and "Traceback" not in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(lab.store, "carol"))
    assert lab.client_state("alice") == before


def _named(stderr: str, login: str) -> list[str]:
    """What a command says of ``login``: each line's text from "/primary/<login>" on."""
    return sorted("/primary/" + line.split("/primary/", 1)[1] for line in stderr.splitlines()
                  if f"/primary/{login}" in line)


@shaped(LabLayout("userdb-moved-dr", PLAIN_LOC, "{store}/%u", ("alice", "carol")))
@pytest.mark.parametrize("dovecot", ["running", "stopped"])
def test_imsdr_names_a_login_the_userdb_keeps_elsewhere_as_imsbackup_does(shaped_lab, dovecot, tmp_path):
    """imsdr backup walks store.mail_location's template as imsbackup does: a login the
    userdb gives its own mail= is named, in imsbackup's words (where its mail is, and the
    directory left at the template's place that is not its mail any more), with
    imsbackup's exit status 1; none of that directory's files is captured.  A disaster
    backup taken before the move never puts carol's files back at the template's place
    (restore and -n name her, exit 1), and restores the others.  (Before, imsdr backup
    exited 0 with carol's 9 stale index files captured and her moved mail in no bundle,
    and imsdr restore --only indexes wrote them under mail/carol, exit 0.)  The restore
    the same with Dovecot stopped, as the runbook has it: the userdb's passwd-files are
    read (before, carol's files went back under mail/carol, exit 0)."""
    lab = shaped_lab
    for u in lab.logins:
        lab.deliver([u], message(f"for {u}"))
    with lab.imap("carol") as c:
        c.create("Work")
        c.append("Work", message("work"), [r"\Seen"])
    home = tmp_path / "ims"
    configure(lab, home)
    before = tmp_path / "before.tar"
    run(home, "imsdr", "backup", "-f", before, check=0)
    elsewhere = os.path.join(lab.dir, "elsewhere")
    os.makedirs(elsewhere)
    lab.fix_owner(elsewhere)
    lab.add_user("carol", mail=f"maildir:{elsewhere}/carol/Maildir")
    lab.deliver(["carol"], message("for carol, moved"))
    b = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/", check=1, text=True)
    named = _named(b.stderr, "carol")
    assert len(named) == 2 and any(f"{elsewhere}/carol/Maildir" in n for n in named), b.stderr
    dr = tmp_path / "dr.tar"
    p = run(home, "imsdr", "backup", "-f", dr, check=1, text=True)
    assert _named(p.stderr, "carol") == named, p.stderr
    assert "alice" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    items = json.loads(run(home, "imsdr", "show", "--json", "-f", dr, check=0, text=True).stdout)["items"]
    assert not [i for i in items if i.get("login") == "carol"
                or (i.get("target") or "").startswith(f"{lab.store}/carol/")], items
    assert [i for i in items if i.get("login") == "alice"]

    # the bundle of before the move: carol's files are not put where Dovecot no longer looks
    for u in lab.logins:
        shutil.rmtree(os.path.join(lab.store, u))
    if dovecot == "stopped":
        lab.stop()
    for dry in (True, False):
        p = run(home, "imsdr", "restore", "--only", "indexes", "-f", before, *(["-n"] if dry else []),
                check=1, text=True)
        assert f"{lab.store}/carol" not in p.stdout, p.stdout
        err = [line for line in p.stderr.splitlines() if "carol" in line]
        assert len(err) == 1 and f"{elsewhere}/carol/Maildir" in err[0], p.stderr
        assert "Traceback" not in p.stderr
    assert not os.path.exists(os.path.join(lab.store, "carol"))
    assert os.path.isfile(os.path.join(lab.store, "alice", "Maildir", "dovecot-uidlist"))


DOT_LEVEL = LabLayout("dot-level", "maildir:{store}/./%u/Maildir", "{store}/%u", ("alice", "bob"))
DOT_HOME = LabLayout("dot-home", "maildir:~/Maildir", "{store}/./%u", ("alice", "bob"))


@pytest.mark.parametrize("shaped_lab", [DOT_LEVEL, DOT_HOME], ids=["location", "home"], indirect=True)
def test_a_mail_location_with_a_dot_level_is_restored(shaped_lab, tmp_path):
    """mail_location maildir:/x/./%u/Maildir (Dovecot serves it; the '.' level is the
    directory itself): the backup exited 0 but every restore exited 17, "bad user ID
    'alice': it would be stored at /x/./alice/Maildir, outside the store".  The fixed
    part of the path is read as the kernel reads it: the restore brings the folder back.
    The same for a '.' level in the home template (userdb home=, store.mail_home)."""
    lab = shaped_lab
    lab.deliver(["alice", "bob"], message("hello", size=2000))
    with lab.imap("alice") as c:
        c.create("Work")
        c.append("Work", message("w"), [r"\Seen"])
    before = lab.client_state("alice")
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, "/", check=0)
    listing = run(home, "imsrestore", "-t", "-f", a, check=0, text=True).stdout
    assert "/primary/alice/Work/1\t" in listing and "/primary/bob/INBOX/1\t" in listing, listing
    with lab.imap("alice") as c:
        c.delete("Work")
    run(home, "imsrestore", "-f", a, "/primary/alice/Work", check=0)
    assert lab.client_state("alice").folders == before.folders
    # the same location given to msconfig works the same way
    run(home, "msconfig", "set", "store.mail_location", lab.layout.mail_location.format(store=lab.store), check=0)
    if lab.layout is DOT_HOME:
        run(home, "msconfig", "set", "store.mail_home", DOT_HOME.home.format(store=lab.store), check=0)
    with lab.imap("alice") as c:
        c.delete("Work")
    run(home, "imsrestore", "-f", a, "/primary/alice/Work", check=0)
    assert lab.client_state("alice").folders == before.folders


HOME_SLASH = LabLayout("userdb-home-spelling", "maildir:~/Maildir", "{home}/%n", ("alice", "bob", "carol"),
                       userdb="passwd-file")


@shaped(HOME_SLASH)
def test_a_userdb_home_spelt_otherwise_is_the_templates_directory(shaped_lab, tmp_path):
    """A userdb home= of HOME/alice/ (as SQL userdbs often return it), HOME//bob or
    HOME/./carol/ names the very directory of the home template: Dovecot serves the
    mail of HOME/<login>/Maildir.  The backup reads all three, exits 0, and a restore
    after a lost disk brings their folders back.  (Before, imsbackup exited 1 leaving
    their mail out, "the userdb keeps alice's mail at HOME/alice//Maildir, not in this
    directory the template gives it (HOME/alice/Maildir)", and after a loss imsrestore
    exited 0 leaving alice an empty INBOX.)"""
    lab = shaped_lab
    spelt = {"alice": f"{lab.homes}/alice/", "bob": f"{lab.homes}//bob", "carol": f"{lab.homes}/./carol/"}
    for u, h in spelt.items():
        lab.add_user(u, home=h)
        lab.deliver([u], message(f"for {u}"))
        with lab.imap(u) as c:
            c.create("Work")
            c.append("Work", message(f"work {u}"), [r"\Seen"])
        assert os.path.normpath(lab.mailbox_path(u)) == f"{lab.homes}/{u}/Maildir"
    before = {u: lab.client_state(u) for u in lab.logins}
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/", check=0, text=True)
    assert "userdb" not in p.stderr, p.stderr
    listing = run(home, "imsrestore", "-t", "-f", a, check=0, text=True).stdout
    for u in lab.logins:
        assert f"/primary/{u}/INBOX/1\t" in listing and f"/primary/{u}/Work/1\t" in listing, listing
    shutil.rmtree(lab.homes)
    os.mkdir(lab.homes)
    lab.fix_owner(lab.homes)
    run(home, "imsrestore", "-f", a, check=0)
    for u in lab.logins:
        assert lab.client_state(u) == before[u], u


@shaped(LabLayout("userdb-index-memory", PLAIN_LOC, "{store}/%u", ("alice", "carol")))
def test_a_userdb_mail_that_only_keeps_no_index_is_the_templates_mail(shaped_lab, tmp_path):
    """carol's userdb mail= is the template plus :INDEX=MEMORY: her mail and control
    directories are the template's, only her index lives in memory.  The backup reads her
    (exit 0) and a restore brings her folders back.  (Before, imsbackup exited 1 leaving
    her mail out, naming the same directory twice and saying it "belongs to no login that
    Dovecot would put there".)"""
    lab = shaped_lab
    lab.add_user("carol", mail=f"maildir:{lab.store}/%u/Maildir:INDEX=MEMORY")
    for u in lab.logins:
        lab.deliver([u], message(f"for {u}"))
        with lab.imap(u) as c:
            c.create("Work")
            c.append("Work", message(f"work {u}"), [r"\Seen"])
    before = {u: lab.client_state(u) for u in lab.logins}
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/", check=0, text=True)
    assert "carol" not in p.stderr, p.stderr
    listing = run(home, "imsrestore", "-t", "-f", a, check=0, text=True).stdout
    assert "/primary/carol/INBOX/1\t" in listing and "/primary/carol/Work/1\t" in listing, listing
    shutil.rmtree(os.path.join(lab.store, "carol"))
    run(home, "imsrestore", "-f", a, "/primary/carol", check=0)
    assert lab.client_state("carol") == before["carol"]


@pytest.mark.parametrize("shaped_lab,option", [
    (LabLayout("userdb-layout-fs", PLAIN_LOC, "{store}/%u", ("alice", "carol")), "LAYOUT=fs"),
    (LabLayout("userdb-utf8", PLAIN_LOC, "{store}/%u", ("alice", "carol")), "UTF-8")],
    ids=["layout-fs", "utf8"], indirect=["shaped_lab"])
def test_a_login_whose_own_mail_names_folders_otherwise_is_named_not_half_read(shaped_lab, option,
                                                                               tmp_path):
    """A migrated login, carol, has mail=<the template>:LAYOUT=fs (or :UTF-8) in the
    userdb: the same directory, folders named another way.  The backup names her, what
    differs and what to do, and exits 1, never 0 with her INBOX only; a restore never
    writes her at the template's place with the template's folder names.  (Before, with
    LAYOUT=fs imsbackup, imsverify --against-store and imsrestore all exited 0 with her
    folders Work, Work/2024 and Réunion gone; with UTF-8 the advice was to rename her
    folder directories, which Dovecot writes that way for her.)"""
    lab = shaped_lab
    lab.add_user("carol", mail=f"maildir:{lab.store}/%u/Maildir:{option}")
    for u in lab.logins:
        lab.deliver([u], message(f"for {u}"))
        with lab.imap(u) as c:
            for f in ("Work", "Work/2024", "R&AOk-union"):
                c.create(f)
            c.append("Work", message(f"work {u}"), [r"\Seen"])
            c.append("Work/2024", message(f"2024 {u}"))
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/", check=1, text=True)
    err = [line for line in p.stderr.splitlines() if "carol" in line]
    assert len(err) == 1 and option in err[0] and "IMS_HOME" in err[0], p.stderr
    assert "rename" not in err[0] and "alice" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    listing = run(home, "imsrestore", "-t", "-f", a, check=0, text=True).stdout
    assert "/primary/alice/Work/2024/1\t" in listing and "/primary/carol/" not in listing, listing
    p = run(home, "imsverify", "--against-store", "-f", a, text=True)
    assert p.returncode != 0, (p.returncode, p.stderr)
    # the answer the message gives: an IMS_HOME of her own, her own location
    before = lab.client_state("carol")
    home2 = tmp_path / "ims-carol"
    configure(lab, home2, f"maildir:{lab.store}/%u/Maildir:{option}")
    a2 = tmp_path / "carol.ims"
    run(home2, "imsbackup", "-f", a2, "/primary/carol", check=0)
    shutil.rmtree(os.path.join(lab.store, "carol"))
    p = run(home, "imsrestore", "-f", a2, text=True)
    assert p.returncode not in (0, 70) and "carol" in p.stderr, (p.returncode, p.stderr)
    assert not os.path.exists(os.path.join(lab.store, "carol"))
    run(home2, "imsrestore", "-f", a2, check=0)
    assert lab.client_state("carol") == before


# the static userdb's args give every login mail= apart from mail_location
STATIC_MAIL = LabLayout("userdb-static-mail", PLAIN_LOC, "{store}/%u mail=maildir:{store}/%u/Mail2",
                        ("alice", "bob"))


@shaped(STATIC_MAIL)
def test_a_static_userdb_mail_is_the_location_backed_up(shaped_lab, tmp_path):
    """mail_location is maildir:STORE/%u/Maildir but the static userdb's args say
    home=STORE/%u mail=maildir:STORE/%u/Mail2: Dovecot serves Mail2, and so the backup
    reads Mail2 and a restore writes there.  (Before, imsbackup exited 0 having archived
    the stale STORE/%u/Maildir tree a migration left behind and none of the served mail.)"""
    lab = shaped_lab
    _mail_and_a_stale_maildir(lab, [r"\Seen"])
    assert lab.mailbox_path("alice").startswith(os.path.join(lab.store, "alice", "Mail2"))
    before = {u: lab.client_state(u) for u in lab.logins}
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, "/", check=0)
    listing = run(home, "imsrestore", "-t", "-f", a, check=0, text=True).stdout
    for u in lab.logins:
        assert f"/primary/{u}/INBOX/1\t" in listing and f"/primary/{u}/Work/1\t" in listing, listing
    for u in lab.logins:
        shutil.rmtree(os.path.join(lab.store, u, "Mail2"))
    run(home, "imsrestore", "-f", a, check=0)
    for u in lab.logins:
        assert lab.client_state(u) == before[u]


@shaped(LabLayout("hashed-dot", "maildir:{store}/%1n/%1.1n/%n/Maildir", "{store}/%1n/%1.1n/%n",
                  ("j.doe", "bob")))
def test_a_login_whose_hashed_level_is_a_dot_is_restored(shaped_lab, tmp_path):
    """With maildir:STORE/%1n/%1.1n/%n/Maildir the login j.doe gets the level '.' from
    %1.1n: Dovecot keeps her at STORE/j/./j.doe = STORE/j/j.doe.  A backup of her alone
    and a restore, into the emptied store or live, bring her mail back.  (Before, the
    backup of / exited 0 but its restore exited 1, "bad user ID 'j.doe': it would be
    stored at .../j/./j.doe/Maildir, outside the store", and imsbackup /primary/j.doe and
    a live imsrestore of her exited 2 with the same words.)"""
    lab = shaped_lab
    for u in lab.logins:
        lab.deliver([u], message(f"for {u}"))
    with lab.imap("j.doe") as c:
        c.create("Work")
        c.append("Work", message("work"), [r"\Seen"])
    assert os.path.normpath(lab.mailbox_path("j.doe")) == f"{lab.store}/j/j.doe/Maildir"
    before = {u: lab.client_state(u) for u in lab.logins}
    home = tmp_path / "ims"
    configure(lab, home)
    a, one = tmp_path / "a.ims", tmp_path / "one.ims"
    run(home, "imsbackup", "-f", a, "/", check=0)
    run(home, "imsbackup", "-f", one, "/primary/j.doe", check=0)
    listing = run(home, "imsrestore", "-t", "-f", one, check=0, text=True).stdout
    assert "/primary/j.doe/Work/1\t" in listing, listing
    with lab.imap("j.doe") as c:
        c.delete("Work")
    run(home, "imsrestore", "-f", one, "/primary/j.doe", check=0)       # live
    assert lab.client_state("j.doe") == before["j.doe"]
    for top in os.listdir(lab.store):
        shutil.rmtree(os.path.join(lab.store, top))
    run(home, "imsrestore", "-f", a, check=0)
    for u in lab.logins:
        assert lab.client_state(u) == before[u], u


def _tree(top: str) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), top) for d, ds, fs in os.walk(top) for n in ds + fs}


@shaped(LabLayout("vdomain-cur", "maildir:{store}/%d/%n", "{home}/%d/%n",
                  ("cur@example.com", "alice@example.com")))
def test_a_login_named_like_a_maildir_directory_is_no_phantom_domain_login(shaped_lab, tmp_path):
    """maildir:STORE/%d/%n with the mailbox cur@example.com, whose root is
    STORE/example.com/cur: STORE/example.com is no login's (no userdb has a login
    "example.com" with an empty domain), it only holds cur@'s Maildir.  The backup reads
    cur@example.com and alice, exits 0 and changes nothing in the store; the restore
    writes no Dovecot file back as a message.  (Before, the walk took STORE/example.com
    for the login "example.com": imsbackup wrote a dovecot-uidlist, dovecot-uidvalidity
    files, new/ and tmp/ into the domain directory, archived cur@'s dovecot-uidlist,
    index cache and maildirfolder as that login's "messages" and exited 1.)"""
    lab = shaped_lab
    for u in lab.logins:
        lab.deliver([u], message(f"for {u}"))
    with lab.imap("cur@example.com") as c:
        c.create("Work")
        c.append("Work", message("work"), [r"\Seen"])
    assert lab.mailbox_path("cur@example.com") == f"{lab.store}/example.com/cur"
    before = {u: lab.client_state(u) for u in lab.logins}
    files = _tree(lab.store)
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/", check=0, text=True)
    assert p.stderr == "", p.stderr
    assert _tree(lab.store) == files
    listing = run(home, "imsrestore", "-t", "-f", a, check=0, text=True).stdout
    assert "/primary/cur@example.com/Work/1\t" in listing and "/primary/example.com/" not in listing, listing
    shutil.rmtree(os.path.join(lab.store, "example.com"))
    run(home, "imsrestore", "-f", a, check=0)
    for u in lab.logins:
        assert lab.client_state(u) == before[u], u


VIRTUAL_NS = LabLayout("ns-virtual", PLAIN_LOC, "{store}/%u", ("alice",), mail_plugins="virtual", extra="""\
namespace virtual {
  prefix = Virtual/
  separator = /
  location = virtual:{store}/%u/virtual
  subscriptions = no
}""")


@shaped(VIRTUAL_NS)
def test_a_virtual_namespace_is_views_of_mail_already_backed_up(shaped_lab, tmp_path):
    """A virtual-plugin namespace (prefix Virtual/, location virtual:...) holds no mail
    of its own: its folders are views of the folders backed up.  The backup reads the
    mail (exit 0) and a restore brings it back.  (Before, every imsbackup exited 2,
    claiming the namespace "keeps its mail at 'virtual:...'" and that "its folders
    would be in no backup".)"""
    lab = shaped_lab
    lab.deliver(["alice"], message("in the inbox"))
    with lab.imap("alice") as c:
        c.create("Work")
        c.append("Work", message("work"), [r"\Seen"])
    before = lab.client_state("alice")
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/", check=0, text=True)
    assert p.stderr == "", p.stderr
    listing = run(home, "imsrestore", "-t", "-f", a, check=0, text=True).stdout
    assert "/primary/alice/INBOX/1\t" in listing and "/primary/alice/Work/1\t" in listing, listing
    shutil.rmtree(os.path.join(lab.store, "alice", "Maildir"))
    run(home, "imsrestore", "-f", a, check=0)
    assert lab.client_state("alice") == before


def _alice_runs_as_her_own_user(lab) -> tuple[int, int]:
    """The userdb runs alice as a system user of her own (her home hers); every login
    gets a delivery and a subscribed Work folder with a flagged message.  (uid, gid)."""
    uid, gid = ensure_mail_user("imsalice")
    lab.set_userdb_fields("alice", "uid=imsalice gid=imsalice")
    os.makedirs(os.path.join(lab.store, "alice"), exist_ok=True)
    os.chown(os.path.join(lab.store, "alice"), uid, gid)
    for u in lab.logins:
        lab.deliver([u], message(f"for {u}"))
        with lab.imap(u) as c:
            c.create("Work")
            c.subscribe("Work")
            c.append("Work", message(f"work {u}"), [r"\Seen", "$Label1"])
    return uid, gid


OWN_UID = LabLayout("ownuid", "maildir:~/Maildir", "{store}/%u", ("alice", "bob"), userdb="passwd-file")


@shaped(OWN_UID)
def test_a_restore_never_writes_mail_dovecot_runs_its_login_as_another_uid_for(shaped_lab, tmp_path):
    """Dovecot runs a login as the uid its userdb gives it (system users, a passwd-file's
    uid, an SQL uid column), else as mail_uid, and keeps its directories 0700.  The
    restore gave everything to store.owner: alice, whom the userdb runs as her own
    system user, got a Maildir of vmail's, exit 0, and every IMAP command of hers
    answered "[SERVERBUG] Internal error" (Permission denied).  Now her folders are
    named and nothing of hers is written (exit 17); bob, run as mail_uid = store.owner,
    comes back whole.  A store.owner that is not Dovecot's mail_uid is refused the
    same way, for a folder restored into the live store too."""
    lab = shaped_lab
    uid, gid = _alice_runs_as_her_own_user(lab)
    assert os.stat(os.path.join(lab.store, "alice", "Maildir", "cur")).st_uid == uid
    before = {u: lab.client_state(u) for u in lab.logins}
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, "/", check=0)
    for u in lab.logins:
        shutil.rmtree(os.path.join(lab.store, u, "Maildir"))
    p = run(home, "imsrestore", "-f", a, text=True)
    assert p.returncode == 17, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 2 and all(f"Dovecot runs alice as uid {uid} (the userdb's uid={uid})" in line
                                   for line in lines), p.stderr
    assert {re.match(r"imsrestore: (\S+):", line).group(1) for line in lines} == \
        {"/primary/alice/INBOX", "/primary/alice/Work"}, p.stderr
    assert not os.path.exists(os.path.join(lab.store, "alice", "Maildir"))
    assert lab.client_state("bob") == before["bob"]
    # inside a login's existing Maildir the files go to the uid Dovecot runs it as, even
    # under a store.owner that is not Dovecot's mail user: bob's folder comes back readable
    with lab.imap("bob") as c:
        c.delete("Work")
    make_home(home, "maildir", **{"store.owner": "imsalice"})
    p = run(home, "imsrestore", "-f", a, "/primary/bob/Work", text=True)
    assert p.returncode == 0, p.stderr
    assert lab.client_state("bob") == before["bob"]
    assert os.stat(os.path.join(lab.store, "bob", "Maildir", ".Work", "cur")).st_uid == lab.uid


@shaped(OWN_UID)
def test_files_written_in_a_login_dovecot_runs_as_its_own_uid_stay_readable_to_it(shaped_lab, tmp_path):
    """alice's userdb entry runs her as her own system user; store.owner is vmail
    (mail_uid).  A file an MDA dropped in her new/ gets its UID from the backup, which
    rewrote her dovecot-uidlist as store.owner: imsbackup exited 0 and from then on
    every SELECT INBOX of hers answered "[SERVERBUG] Internal error" (Permission
    denied); imsdeliver's message file and mboxutil -c's folder and subscriptions file
    likewise.  What is written inside her Maildir now belongs to her uid."""
    lab = shaped_lab
    uid, gid = ensure_mail_user("imsalice")
    lab.set_userdb_fields("alice", "uid=imsalice gid=imsalice")
    alice = os.path.join(lab.store, "alice")
    os.makedirs(alice, exist_ok=True)
    os.chown(alice, uid, gid)
    lab.deliver(["alice"], message("over lmtp"))
    with lab.imap("alice") as c:
        c.create("Work")
        c.subscribe("Work")
        c.append("Work", message("work"), [r"\Seen"])
    mda = os.path.join(alice, "Maildir", "new", "1796400000.M1P1.mx,S=19")
    with open(mda, "wb") as f:
        f.write(b"Subject: mda\n\nbody\n")
    os.chown(mda, uid, gid)
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, "/", check=0)
    assert os.stat(os.path.join(alice, "Maildir", "dovecot-uidlist")).st_uid == uid
    listing = run(home, "imsrestore", "-t", "-f", a, check=0, text=True).stdout
    assert "/primary/alice/INBOX/2\t" in listing, listing
    state = lab.client_state("alice")
    assert [m.uid for m in state["INBOX"].messages] == [1, 2]
    m = tmp_path / "m.eml"
    m.write_bytes(message("via imsdeliver"))
    run(home, "imsdeliver", "-m", m, "alice", check=0)
    run(home, "mboxutil", "-c", "user/alice/Made", check=0)
    state = lab.client_state("alice")
    assert [m.uid for m in state["INBOX"].messages] == [1, 2, 3]
    assert state["Made"].messages == () and state.subscriptions >= {"Work"}


LISTESCAPE = LabLayout("listescape", PLAIN_LOC, "{store}/%u", ("alice",), mail_plugins="listescape")


@shaped(LISTESCAPE)
def test_keywords_beyond_26_of_a_folder_listescape_names_are_backed_up_and_restored(shaped_lab, tmp_path):
    """With Dovecot's listescape plugin a folder v1.2 is the directory .v1\\2e2, which
    the Maildir driver names v1\\2e2 (docs/maildir.md).  Its keywords beyond the 26
    file-name letters were asked of doveadm under that name, which Dovecot does not
    know: "answered for none of the folder's 2 messages", the folder left out of the
    backup, exit 1.  doveadm now gets Dovecot's own name, and the folder round-trips."""
    lab = shaped_lab
    with lab.imap("alice") as c:
        for box in ("v1.2", "~t/x.y"):
            c.create(box)
            c.subscribe(box)
            c.append(box, message(f"thirty in {box}"), [r"\Seen", *KEYWORDS_30])
            c.append(box, message(f"two in {box}"), ["kw29", "other"])
    before = lab.client_state("alice")
    assert before["v1.2"].messages[0].flags == {r"\Seen", *KEYWORDS_30}
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/", text=True)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    listing = run(home, "imsrestore", "-t", "-f", a, check=0, text=True).stdout
    assert "/primary/alice/v1\\2e2/2\t" in listing and "/primary/alice/\\7et/x\\2ey/2\t" in listing, listing
    with lab.imap("alice") as c:
        c.delete("~t/x.y")
        c.delete("v1.2")
    run(home, "imsrestore", "-f", a, check=0)
    assert lab.client_state("alice") == before


@shaped(OWN_UID)
def test_with_dovecot_stopped_the_restore_reads_whom_the_userdb_runs_a_login_as(shaped_lab, tmp_path):
    """The disaster runbook restores with Dovecot stopped: the userdb is then read from
    its files.  A passwd-file line's uid and gid columns (alice:{PLAIN}pw:UID:GID::...,
    the classic shape) were not read: alice was taken to run as the default_fields'
    vmail, her lost Maildir was made as vmail, exit 0, and Dovecot, started again, could
    not open it.  Now her folders are named, exit 17, nothing of hers written."""
    lab = shaped_lab
    uid, gid = ensure_mail_user("imsalice")
    alice = os.path.join(lab.store, "alice")
    os.makedirs(alice, exist_ok=True)
    os.chown(alice, uid, gid)
    with open(lab.users_file) as f:
        text = f.read()
    with open(lab.users_file, "w") as f:
        f.write(text.replace("alice:{PLAIN}pw-alice::", f"alice:{{PLAIN}}pw-alice:{uid}:{gid}:", 1))
    lab.restart()
    for u in lab.logins:
        lab.deliver([u], message(f"for {u}"))
    assert os.stat(os.path.join(alice, "Maildir", "cur")).st_uid == uid
    before = lab.client_state("bob")
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, "/", check=0)
    lab.stop()
    try:
        for u in lab.logins:
            shutil.rmtree(os.path.join(lab.store, u, "Maildir"))
        p = run(home, "imsrestore", "-f", a, text=True)
    finally:
        lab.start()
    assert p.returncode == 17 and p.stderr.count("\n") == 1, p.stderr
    assert f"imsrestore: /primary/alice/INBOX: Dovecot runs alice as uid {uid} (the userdb's uid={uid})" \
        in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(alice, "Maildir"))
    assert lab.client_state("bob") == before


@shaped(LabLayout("ownuid-sdbox", "sdbox:~/sdbox", "{store}/%u", ("alice", "bob"), userdb="passwd-file"))
def test_a_dbox_login_dovecot_runs_as_its_own_uid_is_named_with_what_works(shaped_lab, tmp_path):
    """sdbox, alice run as her own system user: doveadm backup, running as her, cannot
    write the Maildir copy made as store.owner.  The backup named her with dsync's
    "Permission denied" and advised force-resync and renames, which cannot help.  Now it
    says why and what works (exit 1, bob in the archive): an IMS_HOME whose
    store.owner is her user backs her up and restores her as IMAP clients saw her."""
    lab = shaped_lab
    uid, gid = _alice_runs_as_her_own_user(lab)
    before = lab.client_state("alice")
    home = tmp_path / "ims"
    configure(lab, home)
    p = run(home, "imsbackup", "-f", tmp_path / "all.ims", "/", text=True)
    assert p.returncode == 1, p.stderr
    assert f"/primary/alice: Dovecot runs this login as uid {uid} (the userdb's uid={uid})" in p.stderr, p.stderr
    assert "IMS_HOME whose store.owner is that user" in p.stderr and "force-resync" not in p.stderr, p.stderr
    own = tmp_path / "ims-alice"
    configure(lab, own)
    make_home(own, "maildir", **{"store.owner": "imsalice"})
    a = tmp_path / "alice.ims"
    run(own, "imsbackup", "-f", a, "/primary/alice", check=0)
    shutil.rmtree(os.path.join(lab.store, "alice", "sdbox"))
    run(own, "imsrestore", "-f", a, check=0)
    assert lab.client_state("alice") == before
