"""A symbolic link in a mail directory is never followed (docs/operations.md).

The commands run as root; a mail directory is its user's (or Dovecot's vmail's) to
change, and a link there could name any file or directory on the system.  A link where
a folder's directory (or a level of it), its cur/ new/ tmp/, dovecot-uidlist,
dovecot-keywords or the user's subscriptions should be is named on one line with a
non-zero exit, by imsbackup, imsrestore and imsdr backup alike; and through none of them
is a byte read into an archive or a bundle, or a file made or changed, outside the store.
The mail is Dovecot's own (LMTP and IMAP on a private Dovecot, tests/dovecot_lab.py), on
a virtual-domain layout and on LAYOUT=fs; the links are what a hostile or careless user
would leave.
"""
from __future__ import annotations

import io
import os
import shutil
import tarfile

import pytest

from tests.dovecot_lab import MAIL_USER, lab_fixture, message
from asm.errors import EXIT_PARTIAL, EXIT_STORE
from asm.store import open_store
from tests.helpers import make_home, msg, run

lab = lab_fixture(params=["vdomain", "fs"], scope="function")   # links break a lab: one each

SECRET = b"ROOT-ONLY-SECRET-7f3a9c"


def configure(lab, home, **options) -> None:
    make_home(home, "maildir", **{"store.owner": MAIL_USER, "dovecot.config": lab.conf,
                                  "store.mail_location": "doveconf", **options})


def outside(tmp_path) -> str:
    """A Maildir-shaped directory outside the store, a root-only message in it, and a
    root-only file beside its folders: what a link could lead a root command to."""
    o = tmp_path / "outside"
    for sub in ("cur", "new", "tmp"):
        (o / "maildir" / sub).mkdir(parents=True)
    (o / "maildir" / "cur" / "1700000000.M1P1.host,S=40:2,").write_bytes(b"Subject: x\r\n\r\n" + SECRET + b"\r\n")
    (o / "maildir" / "dovecot-uidlist").write_text("3 V1 N2\n1 :1700000000.M1P1.host,S=40\n")
    (o / "secret").write_bytes(SECRET + b"\n")
    for p in (o / "secret", o / "maildir" / "cur" / "1700000000.M1P1.host,S=40:2,"):
        os.chmod(p, 0o600)
    return str(o)


def tree(path: str) -> dict:
    """Every entry under ``path``: its kind, bytes, mode and mtime (nothing may change)."""
    out = {}
    for dirpath, dirs, files in os.walk(path):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            data = open(p, "rb").read() if os.path.isfile(p) else None
            out[os.path.relpath(p, path)] = (st.st_mode, st.st_mtime_ns, st.st_uid, data)
    return out


def fill(lab) -> None:
    lab.deliver(lab.logins, message("to everyone", size=2000))
    for u in lab.logins:
        with lab.imap(u) as c:
            for f in ("Work", "Keep"):
                c.create(f)
                c.subscribe(f)
            c.append("Work", message(f"w1 {u}"), [r"\Seen", "$Label1"])
            c.append("Work", message(f"w2 {u}"), [r"\Flagged"])
            c.append("Keep", message(f"k {u}"))


def sibling(lab, login: str, name: str) -> str:
    """Where Dovecot would put the folder ``name`` (beside Work, as Dovecot names it)."""
    work = lab.mailbox_path(login, "Work")
    base = os.path.basename(work)
    return os.path.join(os.path.dirname(work), base.replace("Work", name))


def seen(lab, login: str) -> dict:
    """What the login's IMAP client sees of the folders no link touches."""
    with lab.imap(login) as c:
        return {f: c.folder_state(f, True) for f in ("INBOX", "Work", "Keep")}


def backed_up_past(home, tmp_path, path: str, o: str, before: dict):
    """A backup of the store with the link at ``path``: named, exit 1, no byte from
    beyond it in the archive, nothing beyond it changed.  Returns the archive."""
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/")
    assert_named(p, path, EXIT_PARTIAL)
    assert SECRET not in a.read_bytes()
    assert tree(o) == before
    return a


def assert_named(p, path: str, status: int) -> None:
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == status, err
    assert path in err and "symbolic link" in err, err
    assert "Traceback" not in err, err


def test_a_folder_that_is_a_link_is_named_and_never_followed(lab, tmp_path):
    fill(lab)
    login = lab.logins[0]
    o = outside(tmp_path)
    home = tmp_path / "ims"
    configure(lab, home)
    # an archive holding a real folder "Linked" (Dovecot's), for the restore below
    with lab.imap(login) as c:
        c.create("Linked")
        c.append("Linked", message("linked, in the store"))
    full = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    with lab.imap(login) as c:
        c.delete("Linked")
    want = seen(lab, login)
    link = sibling(lab, login, "Linked")
    assert not os.path.lexists(link)
    os.symlink(os.path.join(o, "maildir"), link)
    before = tree(o)

    a = backed_up_past(home, tmp_path, link, o, before)
    toc = run(home, "imsrestore", "-t", "-f", a, check=0).stdout.decode()
    assert "/Work/" in toc and "/Linked" not in toc          # the rest of the archive is whole

    # the administrator's way out: leave the folder out, and the run is clean again
    configure(lab, home, **{"store.backupexclude": "Linked"})
    b = tmp_path / "b.ims"
    p = run(home, "imsbackup", "-f", b, "/")
    assert p.returncode == 0, p.stderr
    assert SECRET not in b.read_bytes()
    configure(lab, home)

    # a restore of the archive's real "Linked" never writes through the link
    p = run(home, "imsrestore", "-f", full)
    assert_named(p, link, EXIT_STORE)
    assert tree(o) == before
    assert os.path.islink(link)
    assert seen(lab, login) == want                # and the rest of the store as it was


@pytest.mark.parametrize("entry", ["uidlist", "keywords", "cur", "new", "tmp", "subscriptions"])
def test_a_control_file_or_mail_directory_that_is_a_link_is_named_and_never_followed(lab, tmp_path, entry):
    fill(lab)
    login = lab.logins[-1]
    o = outside(tmp_path)
    home = tmp_path / "ims"
    configure(lab, home)
    full = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    work = lab.mailbox_path(login, "Work")
    ctl = lab.mailbox_path(login, "Work", "control")
    path = {"uidlist": os.path.join(ctl, "dovecot-uidlist"),
            "keywords": os.path.join(ctl, "dovecot-keywords"),
            "cur": os.path.join(work, "cur"), "new": os.path.join(work, "new"),
            "tmp": os.path.join(work, "tmp"),
            "subscriptions": os.path.join(lab.mailbox_path(login, "INBOX", "control"), "subscriptions")}[entry]
    assert os.path.lexists(path) or entry == "keywords", path
    if os.path.isdir(path) and not os.path.islink(path):
        # (its messages go with it: the restore below has them to write back)
        shutil.rmtree(path)
        target = os.path.join(o, "maildir", entry if entry != "tmp" else "new")
    else:
        if os.path.lexists(path):
            os.unlink(path)
        target = os.path.join(o, "secret")
    os.symlink(target, path)
    before = tree(o)

    backed_up_past(home, tmp_path, path, o, before)
    p = run(home, "imsrestore", "-f", full)
    assert_named(p, path, EXIT_STORE)
    assert tree(o) == before
    assert os.path.islink(path)

    bundle = tmp_path / "dr.tar"
    p = run(home, "imsdr", "backup", "-f", bundle)
    if entry in ("uidlist", "keywords", "subscriptions"):
        assert_named(p, path, EXIT_PARTIAL)
    with tarfile.open(bundle) as t:
        for m in t.getmembers():
            if m.isfile():
                assert SECRET not in t.extractfile(m).read(), m.name
    assert tree(o) == before


def test_the_partition_layout_names_a_linked_folder_and_never_follows_it(tmp_path):
    """The maildir driver's own layout (<partition>/<user>/Maildir, no mail_location)."""
    home = tmp_path / "ims"
    store = open_store(make_home(home, "maildir"))
    store.create_user("joe")
    store.append("joe", "INBOX", io.BytesIO(msg(1)))
    store.create_folder("joe", "Linked")
    store.append("joe", "Linked", io.BytesIO(msg(2)))
    full = tmp_path / "full.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    root = os.path.join(str(home), "data", "maildir", "primary", "joe", "Maildir")
    shutil.rmtree(os.path.join(root, ".Linked"))
    o = outside(tmp_path)
    link = os.path.join(root, ".Linked")
    os.symlink(os.path.join(o, "maildir"), link)
    before = tree(o)
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/")
    assert_named(p, link, EXIT_PARTIAL)
    assert SECRET not in a.read_bytes() and tree(o) == before
    for argv in (("-f", full), ("-f", full, "/primary/joe/Linked")):
        p = run(home, "imsrestore", *argv)
        assert_named(p, link, EXIT_STORE)
        assert tree(o) == before


def test_a_link_planted_at_a_temporary_name_is_never_written_through(tmp_path):
    """A rewrite's temporary is ``<file>.<pid>.<thread>.tmp``: a name its user can
    guess.  A link planted there is named, and the file it names keeps its bytes."""
    import threading

    from asm.store.base import LinkInStore
    store = open_store(make_home(tmp_path / "ims", "maildir"))
    store.create_user("joe")
    root = os.path.join(str(tmp_path / "ims"), "data", "maildir", "primary", "joe", "Maildir")
    o = outside(tmp_path)
    before = tree(o)
    tid = threading.get_ident()
    planted = [os.path.join(root, f"{n}.{os.getpid()}.{tid}.tmp")
               for n in ("dovecot-uidvalidity", "subscriptions")]
    for p in planted:
        os.symlink(os.path.join(o, "secret"), p)
    with pytest.raises(LinkInStore) as exc:
        store.create_folder("joe", "Work", subscribed=True)
    assert exc.value.path in planted
    assert tree(o) == before


vd = lab_fixture("vdomain", scope="function")


def test_a_domain_or_home_moved_behind_a_link_is_backed_up_and_an_alias_once(vd, tmp_path):
    """The links above the mail directories are the administrator's, and followed: a
    domain moved to another disk (``other.org -> /disk2/other.org``) and a home moved so
    are backed up like any; a domain alias (``example.net -> example.com``) is the same
    mail, backed up once, as the logins whose path has no link."""
    fill(vd)
    disk2 = os.path.join(vd.dir, "disk2")
    os.mkdir(disk2)
    shutil.move(os.path.join(vd.store, "other.org"), os.path.join(disk2, "other.org"))
    os.symlink(os.path.join(disk2, "other.org"), os.path.join(vd.store, "other.org"))
    shutil.move(os.path.join(vd.store, "example.com", "bob"), os.path.join(disk2, "bob"))
    os.symlink(os.path.join(disk2, "bob"), os.path.join(vd.store, "example.com", "bob"))
    os.symlink(os.path.join(vd.store, "example.com"), os.path.join(vd.store, "example.net"))
    want = {u: vd.client_state(u) for u in vd.logins}
    home = tmp_path / "ims"
    configure(vd, home)
    a = tmp_path / "a.ims"
    p = run(home, "imsbackup", "-f", a, "/")
    assert p.returncode == 0, p.stderr
    toc = run(home, "imsrestore", "-t", "-f", a, check=0).stdout.decode()
    users = {line.split("/")[2] for line in toc.splitlines() if line.startswith("/primary/")}
    assert users == set(vd.logins)
    p = run(home, "imsverify", "-f", a, "--against-store")
    assert p.returncode == 0, p.stderr

    bundle = tmp_path / "dr.tar"
    run(home, "imsdr", "backup", "-f", bundle, check=0)
    with tarfile.open(bundle) as t:
        names = t.getnames()
    for login in ("alice@other.org", "bob@example.com"):
        assert any(n.endswith("dovecot-uidlist") and ("other.org/alice" if login.endswith("other.org")
                                                       else "example.com/bob") in n for n in names), names

    # and it all comes back, to the byte, where the links lead
    for login in vd.logins:
        root = os.path.join(vd.store, *reversed(login.split("@")))
        for entry in os.listdir(root):
            p = os.path.join(root, entry)
            shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
    run(home, "imsrestore", "-f", a, check=0)
    assert os.path.islink(os.path.join(vd.store, "other.org"))
    assert {u: vd.client_state(u) for u in vd.logins} == want
