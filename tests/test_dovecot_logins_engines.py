"""Full logins (alice@example.com) through the engines' paths, against a real Dovecot.

A virtual-domain Dovecot (``maildir:STORE/%d/%n/Maildir``, two domains sharing the
local part alice) is filled by LMTP and IMAP.  Then:

* imsstage: dumps per backup group (a group matching a domain, the rest in ``user``),
  the catalog's users, an incremental after IMAP changes, ``locate`` and ``restore`` of
  one login from the engine's copies into the emptied login;
* mkbackupdir and the NetWorker module (tests/nsrharness.py): the placeholder tree
  names full logins, save sets and catalog entries carry them, ``recover`` of one login;
* the Bacula module in a real Bacula: a per-login FileSet (one bpipe file per login),
  a full job, a restore of one login's file, and of one login out of a group's stream.

Each time the client view Dovecot serves afterwards (UIDVALIDITY, UIDNEXT, UIDs, flags,
keywords, INTERNALDATE, bytes, X-GUID) is the one before, for the restored login and,
untouched, for the others (alice@example.com never gets alice@other.org's mail).
"""
from __future__ import annotations

import os
import shutil
import time

from plugins.networker import tree
from tests.dovecot_lab import lab_fixture, message
from tests.helpers import imsstage, rows, run, staged_files, users_of
from tests.nsrharness import Harness
from tests.test_dovecot_layouts import configure
from tests.test_bacula import imsbacula, plugin_lines
from tests.test_bacula_jobs import job_ok
from tests.test_networker import env, nsr_bin, res_file  # noqa: F401  (fixtures)

lab = lab_fixture("vdomain", scope="function")
GROUPS = "example=.*@example\\.com\n"              # alice@other.org falls in 'user'


def fill(lab, tag):
    lab.deliver(lab.logins, message(f"{tag} to everyone", size=1500))
    for u in lab.logins:
        lab.deliver([u], message(f"{tag} only for {u}", body=u))
        with lab.imap(u) as c:
            if "Work" not in c.list():
                c.create("Work")
                c.subscribe("Work")
            c.append("Work", message(f"{tag} w {u}"), [r"\Seen", "$Label1"], "05-Mar-2024 12:00:00 +0100")
            c.select("INBOX")
            c.uid_store(c.uids()[:1], "+FLAGS", [r"\Flagged", "Project"])
            c.unselect()


def change(lab):
    fill(lab, "later")
    with lab.imap("alice@other.org") as c:
        c.select("INBOX")
        uids = c.uids()
        c.uid_move(uids[:1], "Work")
        c.uid_expunge(uids[1:2])
        c.unselect()


def drop(lab, login):
    """The login's mail is lost (its directory removed); Dovecot starts it afresh."""
    local, domain = login.split("@")
    shutil.rmtree(os.path.join(lab.store, domain, local))


def setup(lab, tmp_path):
    home = tmp_path / "ims"
    configure(lab, home)
    (home / "config" / "backup-groups.conf").write_text(GROUPS)
    return home


def test_staging_names_catalogs_and_restores_full_logins(lab, tmp_path):
    home = setup(lab, tmp_path)
    fill(lab, "first")
    st, engine = tmp_path / "stage", tmp_path / "engine"
    engine.mkdir()
    imsstage(home, "-D", str(st), check=0)
    dumps = rows(st)
    assert [(d["grp"], d["kind"], d["status"]) for d in dumps] == [
        ("example", "full", "complete"), ("user", "full", "complete")]
    assert users_of(st, dumps[0]["id"]) == ["alice@example.com", "bob@example.com"]
    assert users_of(st, dumps[1]["id"]) == ["alice@other.org"]
    assert all("@" not in f for f in staged_files(st))         # file names are per group
    for f in staged_files(st):
        shutil.copy(st / f, engine / f)
    imsstage(home, "done", "-D", str(st), check=0)
    time.sleep(1.1)
    change(lab)
    imsstage(home, "-D", str(st), "--incremental", check=0)
    for f in staged_files(st):
        shutil.copy(st / f, engine / f)
    imsstage(home, "done", "-D", str(st), check=0)
    before = {u: lab.client_state(u) for u in lab.logins}

    for login, group in (("alice@other.org", "user"), ("alice@example.com", "example")):
        r = imsstage(home, "locate", "-D", str(st), f"/primary/{group}/{login}", check=0)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("  ")]
        assert len(lines) == 2 and "full" in lines[0] and "incr" in lines[1], r.stdout
        drop(lab, login)
        r = imsstage(home, "restore", "-D", str(st), "--from", str(engine), f"/primary/{group}/{login}", check=0)
        assert r.stderr.count(f"restoring /primary/{group}/{login}") == 2, r.stderr
        for u in lab.logins:
            assert lab.client_state(u) == before[u], (login, u)
    # a bare local part names nobody: the login is the full address
    r = imsstage(home, "locate", "-D", str(st), "/primary/user/alice")
    assert r.returncode != 0 and "alice" in r.stderr and "Traceback" not in r.stderr


def test_mkbackupdir_and_networker_save_and_recover_full_logins(lab, tmp_path, env, nsr_bin):  # noqa: F811
    home = setup(lab, tmp_path)
    fill(lab, "first")
    backup = tmp_path / "backup"
    p = run(home, "mkbackupdir", "-p", str(backup), text=True)
    assert p.returncode == 0, p.stderr
    ex, user = backup / "primary" / "example", backup / "primary" / "user"
    assert sorted(os.listdir(ex)) == [".nsr", "alice@example.com", "bob@example.com"]
    assert sorted(os.listdir(user)) == [".nsr", "alice@other.org"]
    for d in (ex / "alice@example.com", user / "alice@other.org"):
        assert (d / "INBOX").is_file() and (d / "Work").is_file()
        assert tree.decode(d.name) == d.name                     # '@' is kept as it is
    e = dict(env, IMS_HOME=str(home))
    h = Harness(nsr_bin, str(tmp_path / "catalog"), e)
    res = res_file(tmp_path, "groupA.res", home, backup)
    done = h.savepnpc(res, [str(ex), str(user)])
    assert done["saves"] and set(done["saves"]) == {0}, h.log
    paths = {en.path for en in h.catalog.entries}
    assert str(user / "alice@other.org" / "INBOX") in paths, sorted(paths)
    assert str(ex / "alice@example.com" / "Work") in paths, sorted(paths)
    before = {u: lab.client_state(u) for u in lab.logins}
    for login, d in (("alice@other.org", user), ("alice@example.com", ex)):
        drop(lab, login)
        out = h.recover(str(d / login), env=e)
        assert out and all(rc == 0 for rc, _ in out), out
        for u in lab.logins:
            assert lab.client_state(u) == before[u], (login, u)


def test_bacula_filesets_jobs_and_restores_of_full_logins(lab, tmp_path, ims_home, bacula, monkeypatch):
    from plugins.bacula.encoding import decode
    monkeypatch.setenv("IMS_ASM_PLUGINS", "classic,maildir,localdevices,bacula")
    home = setup(lab, ims_home.parent)
    assert home == ims_home
    (home / "config" / "backup-groups.conf").write_text(GROUPS + "rest=.*\n")
    fill(lab, "first")
    groups = imsbacula("fileset", "--client", bacula.client, check=True).stdout.decode()
    users = imsbacula("fileset", "--per-user", "--name", "ims-users", "--client", bacula.client,
                      check=True).stdout.decode()
    files = sorted(fname for fname, _, _ in plugin_lines(users))
    assert files == ["/MAILSTORE/primary/example/alice@example.com",
                     "/MAILSTORE/primary/example/bob@example.com",
                     "/MAILSTORE/primary/rest/alice@other.org"], files
    assert "/primary/rest/alice@other.org" in [decode(w[-1]) for _, w, _ in plugin_lines(users)]
    bacula.start(groups + users)
    per_user = bacula.run_job("ims-users", "Full")
    job_ok(bacula, per_user)
    assert per_user["JobFiles"] == 3
    full = bacula.run_job("ims-mail", "Full")
    job_ok(bacula, full)
    before = {u: lab.client_state(u) for u in lab.logins}
    # one login's own file
    drop(lab, "alice@other.org")
    job_ok(bacula, bacula.restore_files(per_user["JobId"], "ims-users-restore",
                                        ["/MAILSTORE/primary/rest/alice@other.org"]))
    for u in lab.logins:
        assert lab.client_state(u) == before[u], u
    # one login out of its group's stream (select, then the group's file)
    drop(lab, "alice@example.com")
    imsbacula("select", "/primary/example/alice@example.com", check=True)
    job_ok(bacula, bacula.restore_files(full["JobId"], "ims-mail-restore", ["/MAILSTORE/primary/example"]))
    imsbacula("select", "--clear", check=True)
    for u in lab.logins:
        assert lab.client_state(u) == before[u], u
    assert "restoring only /primary/example/alice@example.com" in bacula.log()
