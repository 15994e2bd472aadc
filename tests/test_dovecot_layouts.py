"""The maildir driver over real Dovecot layouts (store.mail_location).

Each layout's Dovecot (tests/dovecot_lab.py) is filled by Dovecot itself: one LMTP
message to every login, IMAP CREATE/APPEND (flags, keywords, INTERNALDATE)/COPY/STORE/
EXPUNGE, two domains sharing a local part.  Then ``imsbackup /`` with the layout read
from ``doveconf``, every mail tree (mail, index, control, homes) wiped, a restore of one
login into the empty store, then of the rest; each time what the IMAP client sees
(UIDVALIDITY, UIDNEXT, UIDs, flags, keywords, INTERNALDATE, bytes, RFC822.SIZE,
subscriptions, X-GUID) must be what it saw before the backup.  The archive's table of contents is
checked independently against what Dovecot itself lists (``doveadm fetch``): every
login, every message, nobody's mail under another login.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import time

import pytest

from asm.errors import EXIT_DIFFERS
from tests.dovecot_lab import MAIL_USER, lab_fixture, message, quote
from tests.helpers import make_home, run

REUNIONS = "R&AOk-unions"          # "Réunions" as IMAP names it (modified UTF-7)
LAYOUTS = ["plain", "login", "vdomain", "hashed", "nhash", "home", "fs", "idxctl", "zlib", "sdbox", "mdbox"]
lab = lab_fixture(params=LAYOUTS)


def configure(lab, home, location: str = "doveconf") -> None:
    """The installation msconfig set would write (the same msg.conf, written by the same
    Config.set), in this process: four msconfig commands per test took seconds on a
    loaded machine and tested nothing here (msconfig's own tests do, and
    test_msconfig_refuses_a_location_it_cannot_follow runs it)."""
    make_home(home, "maildir", **{"store.owner": MAIL_USER, "dovecot.config": lab.conf,
                                  "store.mail_location": location})


def fill(lab) -> None:
    """Dovecot fills every login: LMTP (one message to all), then IMAP per login; each
    login keeps a subscription to a folder it deleted (Dovecot keeps it: LSUB shows
    "Old" as \\NonExistent), which a restore must give back too."""
    tag = lab.layout.name
    lab.deliver(lab.logins, message(f"to everyone in {tag}", size=3000))
    for i, u in enumerate(lab.logins):
        lab.deliver([u], message(f"only for {u}", body=f"private to {u}"))
        with lab.imap(u) as c:
            for f in ("Work", "Work/2024", REUNIONS, "Old"):
                c.create(f)
            c.subscribe("Old")
            c.delete("Old")
            c.subscribe("Work/2024")
            c.subscribe(REUNIONS)
            c.append("Work", message(f"a1 {u}"), [r"\Seen", "$Label1"], "05-Mar-2024 12:00:00 +0100")
            _, a2 = c.append("Work", message(f"a2 {u}", size=1500), [r"\Flagged"],
                             "06-Mar-2024 23:59:59 -0500")
            _, a3 = c.append("Work", message(f"a3 {u}"))
            c.append(REUNIONS, message(f"r {u}", body="é" * (i + 1)), ["Project", r"\Answered"])
            inbox = c.select("INBOX")
            c.uid_copy([inbox["uidnext"] - 1], "Work/2024")
            c.uid_store([inbox["uidnext"] - 2], "+FLAGS", [r"\Seen", "NonJunk"])
            c.select("Work")
            c.uid_store([a2], "+FLAGS", [r"\Answered", "Urgent"])
            c.uid_expunge([a3])
            c.unselect()


def seen(state):
    """What a client sees, X-GUID included (archives carry GUIDs since issue 13; every
    layout restores them: a Maildir record's G field, dbox through doveadm backup)."""
    return state.folders, state.subscriptions


def wipe(lab) -> None:
    """Every tree Dovecot keeps anything of a login in: the store as after a lost disk."""
    for top in (lab.store, lab.idx, lab.ctl, lab.homes):
        if os.path.isdir(top):
            shutil.rmtree(top)
        os.mkdir(top)
        os.chown(top, lab.uid, lab.gid)


def dovecot_listing(lab) -> dict:
    """{(login, folder): sorted [(uid, guid)]} as Dovecot lists it (doveadm fetch)."""
    out = {}
    for u in lab.logins:
        res = lab.doveadm("fetch", "mailbox uid guid", "all", user=u).stdout.decode()
        for block in res.split("\f"):
            fields = dict(re.findall(r"^(mailbox|uid|guid): (.*)$", block, re.M))
            if fields:
                out.setdefault((u, fields["mailbox"]), []).append(
                    (int(fields["uid"]), fields["guid"]))
    return {k: sorted(v) for k, v in out.items()}


def archive_listing(home, archive) -> dict:
    """{(login, folder): number of UIDs} from the archive's table of contents."""
    res = run(home, "imsrestore", "-t", "-f", archive, check=0, text=True)
    out = {}
    for line in res.stdout.splitlines():
        m = re.match(r"^/primary/([^/]+)/(.+)\tuidvalidity=\d+ uidnext=\d+ uids=(\d+)", line)
        if m:
            out[(m.group(1), m.group(2))] = int(m.group(3))
    return out


def test_backup_finds_every_login_and_restores_it_as_clients_saw_it(lab, tmp_path):
    fill(lab)
    before = {u: lab.client_state(u) for u in lab.logins}
    listed = dovecot_listing(lab)
    assert {u for u, _ in listed} == set(lab.logins)
    home = tmp_path / "ims"
    configure(lab, home)
    archive = tmp_path / "full.ims"
    res = run(home, "imsbackup", "-f", archive, "/", check=0, text=True)
    # independent check: the archive holds exactly the folders and message counts
    # Dovecot lists for each login (a message under the wrong login would change both)
    toc = archive_listing(home, archive)
    assert {k: v for k, v in toc.items() if v} == {k: len(v) for k, v in listed.items()}, res.stderr
    assert {u for u, _ in toc} == set(lab.logins)

    wipe(lab)
    first = lab.logins[-1]                     # alice@other.org in vdomain and nhash
    run(home, "imsrestore", "-f", archive, f"/primary/{first}", check=0)
    assert lab.client_state(first) == before[first]        # X-GUID included
    for u in lab.logins[:-1]:
        assert not lab.client_state(u).all_messages(), u     # nothing leaked to others
    # a Dovecot that made the others' empty INBOX meanwhile: the restore takes its place
    wipe(lab)
    run(home, "imsrestore", "-f", archive, check=0)
    for u in lab.logins:
        after = lab.client_state(u)
        assert after == before[u], u
        guids = {m.guid for _, m in after.all_messages()}
        assert "" not in guids and guids == {m.guid for _, m in before[u].all_messages()}, u
    # no stray control files where Dovecot keeps none (CONTROL= elsewhere)
    if lab.layout.name == "idxctl":
        names = {n for _, _, fs in os.walk(lab.store) for n in fs}
        assert not {n for n in names if n.startswith("dovecot") or n == "subscriptions"}, names
    # and Dovecot goes on from there: a new delivery gets the next UID everywhere
    lab.deliver(lab.logins, message("after the restore"))
    for u in lab.logins:
        inbox = lab.client_state(u)["INBOX"]
        assert inbox.messages[-1].uid == before[u]["INBOX"].uidnext, u
        assert inbox.uidvalidity == before[u]["INBOX"].uidvalidity


vdomain = lab_fixture("vdomain")
zlib_lab = lab_fixture("zlib")


def test_compressed_mail_is_archived_as_the_message_and_restored_readable(zlib_lab, tmp_path):
    """zlib: the archive holds each message as a client reads it (decompressed); the
    restore writes plain files with S= their size, which Dovecot's zlib plugin reads
    as it reads its own compressed ones (it tells them apart by their first bytes)."""
    lab = zlib_lab
    u = "bob"
    big = message("big", size=3 << 20)                   # past the writer's 1 MiB pass
    with lab.imap(u) as c:
        c.create("Z")
        _, uid_big = c.append("Z", big, [r"\Seen"])
        _, uid_small = c.append("Z", message("small"), ["Project"])
    d = lab.mailbox_path(u, "Z")
    on_disk = [os.path.join(d, "cur", n) for n in os.listdir(os.path.join(d, "cur"))]
    assert all(open(p, "rb").read(2) == b"\x1f\x8b" for p in on_disk)
    before = lab.client_state(u)
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "z.ims"
    run(home, "imsbackup", "-f", a, f"/primary/{u}/Z", check=0)
    # the archive's message is the decompressed file (LF line ends, as Dovecot stored it)
    res = run(home, "imsrestore", "-t", "-v", "-f", a, check=0, text=True)
    assert "uids=2" in res.stdout
    with lab.imap(u) as c:
        c.delete("Z")
    run(home, "imsrestore", "-f", a, check=0)
    after = lab.client_state(u)
    assert seen(after)[0]["Z"] == seen(before)[0]["Z"]
    with lab.imap(u) as c:
        c.select("Z", readonly=True)
        assert c.fetch_body(uid_big) == big           # BODY[] over IMAP, byte for byte
    for n in os.listdir(os.path.join(d, "cur")):
        p = os.path.join(d, "cur", n)
        with open(p, "rb") as f:
            data = f.read()
        assert data[:2] != b"\x1f\x8b"
        assert int(re.search(r",S=(\d+)", n).group(1)) == len(data)
        assert data in (big.replace(b"\r\n", b"\n"), message("small").replace(b"\r\n", b"\n"))


def test_compressed_mail_already_in_the_store_is_recognised(zlib_lab, tmp_path):
    """A restore into a live zlib folder recognises the messages it holds already (the
    archive's digest is of the message, the file is compressed): none comes back a
    second time, whether the folder is the archived one (same UIDVALIDITY) or one made
    again with the same mail (another UIDVALIDITY), and imsverify --against-store finds
    the store as the archive has it.  (Before, each compressed message was restored a
    second time, exit 0; a fuzzer restoring a chain into the live zlib store found it.)"""
    lab = zlib_lab
    u = "carol"
    bodies = [message(f"y {i}", size=400 * i) for i in range(5)]
    with lab.imap(u) as c:
        c.create("Y")
        for b in bodies:
            c.append("Y", b, [r"\Seen"])
    lab.deliver([u], message("by lmtp, compressed"))
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "c.ims"
    run(home, "imsbackup", "-f", a, f"/primary/{u}", check=0)
    before = lab.client_state(u)
    p = run(home, "imsrestore", "-v", "-f", a, check=0, text=True)
    assert "0 with new UIDs" in p.stderr and lab.client_state(u) == before, p.stderr
    run(home, "imsverify", "-f", a, "--against-store", check=0)
    with lab.imap(u) as c:                        # the folder made again, the same mail in it
        c.delete("Y")
        c.create("Y")
        for b in bodies:
            c.append("Y", b, [r"\Seen"])
    again = lab.client_state(u)
    run(home, "imsrestore", "-f", a, check=0)
    assert len(lab.client_state(u)["Y"].messages) == len(bodies)
    assert lab.client_state(u) == again


def test_groups_match_full_logins_and_a_map_moves_mail_across_domains(vdomain, tmp_path):
    lab = vdomain
    for u in lab.logins:
        lab.deliver([u], message(f"for {u}", body=u))
    before = {u: lab.client_state(u) for u in lab.logins}
    home = tmp_path / "ims"
    configure(lab, home)
    os.makedirs(home / "config", exist_ok=True)
    (home / "config" / "backup-groups.conf").write_text("other=.*@other\\.org\nexample=.*@example\\.com\n")
    a = tmp_path / "other.ims"
    run(home, "imsbackup", "-f", a, "/primary/other", check=0)
    assert {u for u, _ in archive_listing(home, a)} == {"alice@other.org"}
    # alice@other.org's mail restored as a new login of another domain: where the
    # layout puts that login, and nowhere near alice@example.com
    lab.add_user("alice@third.net")
    mapfile = tmp_path / "map"
    mapfile.write_text("alice@other.org=alice@third.net\n")
    run(home, "imsrestore", "-f", a, "-m", mapfile, check=0)
    assert os.path.isdir(os.path.join(lab.store, "third.net", "alice", "Maildir", "cur"))
    assert seen(lab.client_state("alice@third.net")) == seen(before["alice@other.org"])
    for u in lab.logins[:3]:
        assert seen(lab.client_state(u)) == seen(before[u]), u


chain_lab = lab_fixture(params=LAYOUTS)


def test_a_full_and_an_incremental_backup_restore_into_an_empty_store(chain_lab, tmp_path):
    """Every layout, dbox too (the incremental's restore meets logins the full one gave
    to Dovecot: it merges into them, docs/dovecot.md; tests/test_dbox_chain.py)."""
    lab = chain_lab
    u, other = lab.logins[-1], lab.logins[1]
    lab.deliver(lab.logins, message("before the full backup"))
    home = tmp_path / "ims"
    configure(lab, home)
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    time.sleep(1.1)
    since = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    lab.deliver([u, other], message("after the full backup"))
    with lab.imap(u) as c:
        c.create("Later")
        c.append("Later", message("later"), ["Project"])
        c.select("INBOX")
        c.uid_store([1], "+FLAGS", [r"\Seen", "Done"])
    before = {x: lab.client_state(x) for x in lab.logins}
    run(home, "imsbackup", "-f", incr, "-d", since, "/", check=0)
    wipe(lab)
    run(home, "imsrestore", "-H", "-f", full, check=0)
    run(home, "imsrestore", "-f", incr, check=0)
    for x in lab.logins:
        assert seen(lab.client_state(x)) == seen(before[x]), x


base_lab = lab_fixture(params=LAYOUTS)


def test_a_base_incremental_skips_exactly_the_folders_dovecot_left_alone(base_lab, tmp_path):
    """Every layout: a full backup once every folder has settled, then Dovecot changes
    three folders of two logins (LMTP, APPEND, STORE).  The ``--base`` incremental reads
    those three and none of the other six (Maildir layouts: the fingerprint is read
    where the layout keeps dovecot-uidlist, CONTROL= included; dbox reads every folder),
    and the chain restored into an empty store is what the clients saw."""
    from asm.store.base import SETTLE_NS
    lab = base_lab
    u, other = lab.logins[-1], lab.logins[1]
    lab.deliver(lab.logins, message("before the full backup"))
    for x in lab.logins:
        with lab.imap(x) as c:
            for box in ("Work", "Quiet"):
                c.create(box)
                c.append(box, message(f"first in {box} of {x}"), [r"\Seen"])
    home = tmp_path / "ims"
    configure(lab, home)
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    time.sleep(SETTLE_NS / 1e9 + 0.2)
    run(home, "imsbackup", "-f", full, "/", check=0)
    lab.deliver([u, other], message("after the full backup"))
    with lab.imap(u) as c:
        c.append("Work", message("later"), ["Project"])
        c.select("INBOX")
        c.uid_store([1], "+FLAGS", [r"\Seen", "Done"])
    before = {x: lab.client_state(x) for x in lab.logins}
    res = run(home, "imsbackup", "-v", "-f", incr, "--base", f"{full}.state", "/", check=0, text=True)
    got = re.search(r"\((\d+) unchanged since the base, not read\)", res.stderr)
    assert (int(got.group(1)) if got else 0) == (6 if lab.layout.maildir else 0), res.stderr
    wipe(lab)
    run(home, "imsrestore", "-H", "-f", full, check=0)
    run(home, "imsrestore", "-f", incr, check=0)
    for x in lab.logins:
        assert seen(lab.client_state(x)) == seen(before[x]), x


# -- configuration mistakes (no Dovecot needed) -------------------------------------------

@pytest.mark.parametrize("value, words", [
    ("Maildir/%u", "names no mailbox format"),
    ("maildir:var/mail/%u", "not an absolute path"),
    ("maildir:/var/mail/%u:FOO=1", "FOO is not supported"),
    ("maildir:/var/mail/%{service}", "%{service}"),
    ("mbox:/var/mail/%u", "mbox format is not supported"),
    # docs/dovecot.md: described by the layout module, not followed by the drivers
    ("maildir:/var/mail/%u/Maildir:SUBSCRIPTIONS=subs.txt", "SUBSCRIPTIONS= is not supported"),
])
def test_msconfig_refuses_a_location_it_cannot_follow(tmp_path, value, words):
    home = tmp_path / "ims"
    res = run(home, "msconfig", "set", "store.mail_location", value, text=True)
    assert res.returncode == 2 and words in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_a_location_with_a_home_needs_the_home_template(tmp_path):
    home = tmp_path / "ims"
    run(home, "msconfig", "set", "store.driver", "maildir", check=0)
    run(home, "msconfig", "set", "store.mail_location", "maildir:~/Maildir", check=0)
    res = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/", text=True)
    assert res.returncode == 2 and "home template" in res.stderr, res.stderr
    assert not (tmp_path / "a.ims").exists()
    (tmp_path / "homes" / "example.com" / "alice" / "Maildir" / "cur").mkdir(parents=True)
    run(home, "msconfig", "set", "store.mail_home", f"{tmp_path}/homes/%d/%n", check=0)
    run(home, "imsbackup", "-f", tmp_path / "a.ims", "/", check=0)
    assert {u for u, _ in archive_listing(home, tmp_path / "a.ims")} == {"alice@example.com"}


def test_a_login_that_would_leave_the_store_is_refused(tmp_path):
    from asm.config import Config
    from asm.store import open_store
    from asm.store.base import BadName
    cfg = Config(home=str(tmp_path / "ims"))
    cfg.set("store.driver", "maildir")
    cfg.set("store.mail_location", f"maildir:{tmp_path}/mail/%d/%n/Maildir")
    (tmp_path / "mail").mkdir()
    store = open_store(cfg)
    store.create_user("alice@example.com")
    assert store.users("primary") == ["alice@example.com"]
    for bad in ("alice@..", "..@example.com", "alice@."):
        with pytest.raises(BadName):
            store.create_user(bad)
    assert sorted(os.listdir(tmp_path / "mail")) == ["example.com"]


KWS = [f"kw{i:02d}" for i in range(30)]


def test_keywords_beyond_26_are_kept_through_dovecot_or_named(vdomain, tmp_path):
    """Dovecot keeps a folder's keywords 27.. in its index only: the backup reads them
    with doveadm and the restore gives them back the same way; without a Dovecot
    configuration to ask, the backup names the loss (stderr, trailer, exit 1)."""
    lab = vdomain
    u = "bob@example.com"
    with lab.imap(u) as c:
        c.create("Tags")
        _, uid = c.append("Tags", message("thirty keywords"), [r"\Seen", *KWS])
        c.append("Tags", message("three keywords"), ["kw29", "kw00", "other"])
    before = lab.client_state(u)
    assert before["Tags"].by_uid()[uid].flags == {r"\Seen", *KWS}
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "tags.ims"
    run(home, "imsbackup", "-f", a, f"/primary/{u}/Tags", check=0)
    with lab.imap(u) as c:
        c.delete("Tags")
    run(home, "imsrestore", "-f", a, check=0)
    assert seen(lab.client_state(u))[0]["Tags"] == seen(before)[0]["Tags"]
    # the same store described without Dovecot's configuration: the loss is named
    home2 = tmp_path / "ims2"
    run(home2, "msconfig", "set", "store.driver", "maildir", check=0)
    run(home2, "msconfig", "set", "store.mail_location", lab.mail_location, check=0)
    res = run(home2, "imsbackup", "-f", tmp_path / "b.ims", f"/primary/{u}/Tags", text=True)
    assert res.returncode == 1 and "only in Dovecot's index" in res.stderr, res.stderr
    trailer = subprocess.run(["tar", "-xOf", tmp_path / "b.ims", "ims-asm.trailer"],
                             capture_output=True, check=True).stdout.decode()
    assert "only in Dovecot's index" in trailer and "bob@example.com/Tags" in trailer


kw_lab = lab_fixture("plain")


def test_keywords_beyond_26_come_back_when_a_restore_with_dovecot_stopped_is_run_again(kw_lab, tmp_path):
    """Keywords 27.. go to Dovecot's index through doveadm, which finds the login through
    the running Dovecot.  A restore with Dovecot stopped (the disaster runbook's order)
    stops there with 17, saying to start Dovecot and run again; that second run took the
    message as already there (exit 0) and left keywords 27-30 lost.  It sets them now."""
    lab = kw_lab
    u = "alice"
    lab.deliver([u], message("plain"))
    with lab.imap(u) as c:
        _, uid = c.append("INBOX", message("thirty keywords"), [r"\Seen", *KWS])
    before = lab.client_state(u)
    assert before["INBOX"].by_uid()[uid].flags == {r"\Seen", *KWS}
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "kw.ims"
    run(home, "imsbackup", "-f", a, f"/primary/{u}", check=0)
    lab.stop()
    try:
        wipe(lab)
        first = run(home, "imsrestore", "-f", a, text=True)
    finally:
        lab.start()
    assert first.returncode == 17 and first.stderr.count("\n") == 1, first.stderr
    assert "start Dovecot, then run the same command again" in first.stderr, first.stderr
    again = run(home, "imsrestore", "-f", a, text=True)
    assert again.returncode == 0, again.stderr
    assert seen(lab.client_state(u)) == seen(before)


def test_keywords_beyond_26_removed_in_a_later_link_stay_removed(kw_lab, tmp_path):
    """A message with 30 keywords, a chain: full; +kw30 kw31; -kw00 kw27.  Keywords
    beyond the 26 letters live in Dovecot's index only, and the restore only ever added
    to it: the chain in one imsrestore into the emptied store exited 0 with kw00 and kw27
    back (an earlier link's flags gave them to the index; the end's flags could not take
    them away).  The restore sets the index's keywords to the archive's; into the live
    store it changes nothing, unchanged or with those keywords set again by a client (a
    merge leaves a client's flags, letters and index alike)."""
    lab = kw_lab
    u = "bob"
    with lab.imap(u) as c:
        _, uid = c.append("INBOX", message("thirty keywords"), [r"\Seen", *KWS])
        c.append("INBOX", message("three keywords"), ["kw29", "kw00", "other"])
    home = tmp_path / "ims"
    configure(lab, home)
    full, mid, incr = (tmp_path / n for n in ("full.ims", "mid.ims", "incr.ims"))
    run(home, "imsbackup", "-f", full, f"/primary/{u}", check=0)
    time.sleep(1.1)
    with lab.imap(u) as c:
        c.select("INBOX")
        c.uid_store([uid], "+FLAGS", ["kw30", "kw31"])
    run(home, "imsbackup", "-f", mid, "--base", f"{full}.state", f"/primary/{u}", check=0)
    time.sleep(1.1)
    with lab.imap(u) as c:
        c.select("INBOX")
        c.uid_store([uid], "-FLAGS", ["kw00", "kw27"])
    run(home, "imsbackup", "-f", incr, "--base", f"{mid}.state", f"/primary/{u}", check=0)
    before = lab.client_state(u)
    want = {r"\Seen", "kw30", "kw31", *KWS} - {"kw00", "kw27"}
    assert before["INBOX"].by_uid()[uid].flags == want
    chain = ("-f", full, "-f", mid, "-f", incr)
    run(home, "imsrestore", *chain, check=0)                  # into the unchanged live store
    assert seen(lab.client_state(u)) == seen(before)
    with lab.imap(u) as c:                                    # a client sets them again
        c.select("INBOX")
        c.uid_store([uid], "+FLAGS", ["kw00", "kw27"])
    moved_on = lab.client_state(u)
    run(home, "imsrestore", *chain, check=0)                  # a merge: the client's flags stay
    assert seen(lab.client_state(u)) == seen(moved_on)
    wipe(lab)
    run(home, "imsrestore", *chain, check=0)                  # into the emptied store
    assert seen(lab.client_state(u)) == seen(before)


def test_restore_test_keeps_keywords_beyond_26_as_the_restore_does(kw_lab, tmp_path):
    """imsverify --restore-test of a healthy archive of a message with 30 keywords
    exited 17 ("Maildir file names hold at most 26 keywords"): its scratch store has no
    Dovecot to give keywords 27.. to, while imsrestore into the real store is exact.  The
    scratch store keeps them itself; the test passes, over IMAP too, and a keyword lost
    from a file name is still named (never hidden by the kept ones)."""
    import contextlib
    import glob
    import tempfile

    from asm.config import Config
    from asm.store import open_store
    from asm.verify import build, check_archive
    from asm.verify.compare import compare_restored
    from asm.verify.scratch import _compare_served, _keeping, mail_owner, restore_test
    lab = kw_lab
    u = "carol"
    lab.add_user(u)
    with lab.imap(u) as c:
        _, uid = c.append("INBOX", message("thirty keywords"), [r"\Seen", *KWS])
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "kw.ims"
    run(home, "imsbackup", "-f", a, f"/primary/{u}", check=0)
    parent = tempfile.mkdtemp(prefix="imsverify-test-", dir="/tmp")
    os.chmod(parent, 0o755)
    try:
        p = run(home, "imsverify", "-v", "-f", a, "--restore-test", "--scratch", parent, text=True)
        assert p.returncode == 0, p.stderr
        assert "(and over IMAP)" in p.stdout, p.stdout
        with open(a, "rb") as f:
            view = build([check_archive(f, str(a))])

        @contextlib.contextmanager
        def reopen(c):
            with open(c.device, "rb") as f:
                yield f
        rt = restore_test(view, reopen, "maildir", parent=parent, keep=True)
        assert rt.served == "dovecot" and not rt.problems and not rt.comparison.problems, rt
        # kw01 (letter b) lost from the file name: named by the store and the IMAP comparison
        [path] = glob.glob(os.path.join(rt.home, "**", "Maildir", "cur", "*"), recursive=True)
        assert path.endswith(":2,Sabcdefghijklmnopqrstuvwxyz"), path
        os.rename(path, path.replace("abcdef", "acdef"))
        scratch = _keeping(open_store(Config(rt.home)), rt.home)
        texts = [p.text for p in compare_restored(view, scratch).problems]
        assert len(texts) == 1 and f"message {uid} has flags" in texts[0], texts
        rt.comparison = type(rt.comparison)()
        _compare_served(view, scratch, rt.home, mail_owner(None), rt)
        texts = [p.text for p in rt.comparison.problems]
        assert len(texts) == 1 and f"UID {uid} has flags" in texts[0], texts
        served = texts[0].split("', ")[0]
        assert "kw01" not in served and "kw29" in served, texts
    finally:
        shutil.rmtree(parent, ignore_errors=True)


sdbox = lab_fixture("sdbox")


def test_dbox_restore_into_an_account_with_mail_merges_and_a_new_login_gets_it(sdbox, tmp_path):
    lab = sdbox
    lab.deliver(["alice", "bob"], message("dbox mail"))
    with lab.imap("alice") as c:
        c.create("Work")
        c.append("Work", message("w"), [r"\Seen", "Project"], "05-Mar-2024 12:00:00 +0100")
    before = lab.client_state("alice")
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, "/primary/alice", check=0)
    assert not [n for n in os.listdir(lab.store) if n.startswith(".ims-dbox-work")]
    run(home, "imsrestore", "-f", a, check=0)             # into the account it came from
    assert lab.client_state("alice") == before            # nothing changes
    with lab.imap("alice") as c:
        c.delete("Work")
    run(home, "imsrestore", "-f", a, check=0)             # a lost folder comes back
    assert lab.client_state("alice") == before
    lab.add_user("dora")
    mapfile = tmp_path / "map"
    mapfile.write_text("alice=dora\n")
    run(home, "imsrestore", "-f", a, "-m", mapfile, check=0)
    assert seen(lab.client_state("dora")) == seen(before)
    assert os.path.isdir(os.path.join(lab.store, "dora", "sdbox", "mailboxes"))
    assert not [n for n in os.listdir(lab.store) if n.startswith(".ims-dbox-work")]


def test_a_directory_that_belongs_to_no_login_is_named_not_skipped(tmp_path):
    """A hashed store with mail in a bucket its login does not hash to: the backup takes
    the logins that are where Dovecot puts them and names the other (exit 1)."""
    store = tmp_path / "mail"
    for d in ("a/l/alice", "b/o/bob", "b/o/alice"):
        (store / d / "Maildir" / "cur").mkdir(parents=True)
    home = tmp_path / "ims"
    run(home, "msconfig", "set", "store.driver", "maildir", check=0)
    run(home, "msconfig", "set", "store.mail_location", f"maildir:{store}/%1n/%1.1n/%n/Maildir", check=0)
    res = run(home, "imsbackup", "-f", tmp_path / "a.ims", "/", text=True)
    assert res.returncode == 1, res.stderr
    assert f"alice would live in {store}/a/l/alice/Maildir" in res.stderr
    assert f"{store}/b/o/alice/Maildir" in res.stderr
    assert {u for u, _ in archive_listing(home, tmp_path / "a.ims")} == {"alice", "bob"}


@pytest.mark.parametrize("layout", ["plain", "fs"])
def test_folder_directories_dovecot_would_not_open_are_named_not_skipped(tmp_path, layout):
    """Folder directories another tool wrote with names that are not Dovecot's spelling
    of any folder (raw UTF-8 'Café' next to Dovecot's 'Caf&AOk-', an unescaped 'a&b', a
    non-canonical '&AOk-&AOk-'): imsbackup exited 0 with INBOX only, and imsverify
    --against-store said all passed.  Each is now named (exit 1), every folder Dovecot
    made is archived, and a name of bytes that are not UTF-8 is kept as those bytes."""
    from tests.dovecot_lab import dovecot_lab
    with dovecot_lab(layout, logins=["alice"]) as lab:
        home = str(tmp_path / "ims")
        configure(lab, home)
        lab.deliver(["alice"], message("hello"))
        with lab.imap("alice") as c:
            c.create("Caf&AOk-")
            c.append("Caf&AOk-", message("made by dovecot"))
            c.create("DOVECOT-TRASHED")                    # a user's folder of that name: read
            c.append("DOVECOT-TRASHED", message("a folder like any other"))
        root = os.fsencode(lab.mailbox_path("alice"))     # INBOX is the root in both layouts
        before = tmp_path / "before.ims"
        run(home, "imsbackup", "-f", before, "/", check=0)
        foreign = [b"Caf\xc3\xa9", b"a&b", b"&AOk-&AOk-"]
        for i, n in enumerate(foreign + [b"bad\xff"]):
            d = os.path.join(root, (b"." if layout == "plain" else b"") + n)
            for sub in (b"cur", b"new", b"tmp"):
                os.makedirs(os.path.join(d, sub))
            with open(os.path.join(d, b"cur", b"%d.M1P1.other,S=9:2,S" % (1700000000 + i)), "wb") as f:
                f.write(b"\r\nkept %d\r\n" % i)
        # and where Dovecot's DELETE renames a folder on its way out: passed over (a
        # folder deleted while a backup runs is no error), as Dovecot's listing does
        # (mailbox-list-maildir.h and mailbox-list-fs.h name it)
        trashed = os.path.join(root, b"..DOVECOT-TRASHED" if layout == "plain" else b"..DOVECOT-TrasH")
        for sub in (b"cur", b"new", b"tmp"):
            os.makedirs(os.path.join(trashed, sub))
        with open(os.path.join(trashed, b"cur", b"1700000099.M1P1.other,S=9:2,S"), "wb") as f:
            f.write(b"\r\nbeing deleted\r\n")
        lab.fix_owner()
        a = tmp_path / "a.ims"
        p = run(home, "imsbackup", "-f", a, "/")
        assert p.returncode == 1, p.stderr
        assert b"DOVECOT-TRASHED" not in p.stderr, p.stderr
        named = [ln for ln in p.stderr.decode("utf-8", "replace").splitlines()
                 if "its name is no folder name Dovecot writes" in ln]
        assert len(named) == len(foreign), p.stderr
        for n in foreign:
            assert any(os.fsdecode(n) in ln or n.decode() in ln for ln in named), (n, named)
        toc = run(home, "imsrestore", "-t", "-f", a).stdout
        got = sorted(ln.split(b"\t")[0] for ln in toc.splitlines() if b"\tuidvalidity=" in ln)
        assert got == [b"/primary/alice/Caf\xc3\xa9", b"/primary/alice/DOVECOT-TRASHED", b"/primary/alice/INBOX",
                       b"/primary/alice/bad\xff"], got
        assert sum(1 for ln in toc.splitlines() if re.match(rb"^/primary/alice/.*/\d+\t", ln)) == 4
        v = run(home, "imsverify", "-v", "-f", a, "--against-store", text=True)
        assert v.returncode != 0, v.stdout + v.stderr
        # an archive from before they appeared: the live store holds mail no backup reads
        v = run(home, "imsverify", "-v", "-f", before, "--against-store")
        assert v.returncode == EXIT_DIFFERS, v.stdout + v.stderr
        assert v.stderr.count(b"the store holds mail no backup reads") == len(foreign), v.stderr
        assert b"a&b" in v.stderr


@pytest.mark.parametrize("layout", ["plain", "fs"])
def test_a_dotless_i_inbox_and_its_children_are_backed_up_apart_from_inbox(tmp_path, layout):
    """'ınbox' and 'ınbox/sub' (Turkish dotless i, how a Turkish client lower-cases
    INBOX) are folders of their own to Dovecot; 'ınbox'.upper() == 'INBOX' made ims-asm
    name the first as no folder (exit 1) and merge the second into INBOX/sub: its
    message was in no archive, and both folders were gone after a restore."""
    from tests.dovecot_lab import dovecot_lab
    with dovecot_lab(layout, logins=["alice"]) as lab:
        home = str(tmp_path / "ims")
        configure(lab, home)
        lab.deliver(["alice"], message("real inbox"))
        with lab.imap("alice") as c:
            for name in ("&ATE-nbox", "&ATE-nbox/sub", "INBOX/sub"):      # ınbox, ınbox/sub
                c.create(name)
                c.append(name, message(f"kept in {name}"), [r"\Seen"])
        before = lab.client_state("alice")
        assert {"&ATE-nbox", "&ATE-nbox/sub", "INBOX/sub"} <= set(before.folders)
        a = tmp_path / "a.ims"
        p = run(home, "imsbackup", "-f", a, "/", text=True)
        assert p.returncode == 0, p.stderr
        assert archive_listing(home, a) == {("alice", "INBOX"): 1, ("alice", "INBOX/sub"): 1,
                                            ("alice", "\u0131nbox"): 1, ("alice", "\u0131nbox/sub"): 1}
        lab.stop(wait="sessions")
        wipe(lab)
        lab.start()
        run(home, "imsrestore", "-f", a, check=0)
        assert seen(lab.client_state("alice")) == seen(before)


RESERVED_FS = ("subscriptions", "subscriptions/sub", "dovecot-keywords", "dovecot.index", "maildirfolder")


def test_lay_out_fs_folders_named_as_inbox_files_are_backed_up_and_restored(tmp_path):
    """LAYOUT=fs keeps INBOX in the Maildir's root, beside the folders' directories, so a
    folder Dovecot lets a client create as 'subscriptions' or 'dovecot-keywords' takes
    the place of the user's subscriptions file or INBOX's keyword table (Dovecot then
    keeps none of those: LSUB fails; LIST does not show 'subscriptions').  Every backup
    of such a user failed ("Is a directory", exit 1, INBOX in no archive).  Now each
    such folder is backed up and restored exactly (UIDVALIDITY, UIDs, flags, bytes), and
    a restore where the subscriptions file holds real subscriptions refuses that one
    folder in a line saying to move the file aside, which then works."""
    from tests.dovecot_lab import dovecot_lab
    with dovecot_lab("fs", logins=["alice"]) as lab:
        home = str(tmp_path / "ims")
        configure(lab, home)
        lab.deliver(["alice"], message("hello", size=2000))
        with lab.imap("alice") as c:
            for i, n in enumerate(RESERVED_FS):
                c.create(n)
                c.append(n, message(f"in {n}", size=500 + i), [r"\Seen", "$Label1"] if i % 2 else [r"\Flagged"])
                c.append(n, message(f"second in {n}"))
            assert "subscriptions" not in c.list()         # (Dovecot hides it, keeps its mail)

        def state():
            with lab.imap("alice") as c:
                out = {}
                for n in sorted(set(c.list()) | set(RESERVED_FS)):
                    info = c.select(n, readonly=True)
                    out[n] = (info["uidvalidity"], info["uidnext"],
                              [(m, c.fetch_body(m["uid"])) for m in c.fetch_meta()])
                return out

        before = state()
        assert all(len(before[n][2]) == 2 for n in RESERVED_FS) and len(before["INBOX"][2]) == 1
        a = tmp_path / "a.ims"
        p = run(home, "imsbackup", "-f", a, "/", text=True)
        assert p.returncode == 0, p.stderr
        assert archive_listing(home, a) == {("alice", "INBOX"): 1, **{("alice", n): 2 for n in RESERVED_FS}}
        lab.stop(wait="sessions")
        wipe(lab)
        lab.start()
        p = run(home, "imsrestore", "-f", a, text=True)
        assert p.returncode == 0, p.stderr
        assert state() == before
        # the user's subscriptions file holds a subscription: that folder is refused, named
        lab.stop(wait="sessions")
        wipe(lab)
        lab.start()
        with lab.imap("alice") as c:
            c.create("Work")
            c.subscribe("Work")
        subs = os.path.join(lab.mailbox_path("alice"), "subscriptions")
        assert os.path.isfile(subs)
        p = run(home, "imsrestore", "-f", a, text=True)
        assert p.returncode != 0
        refused = [ln for ln in p.stderr.splitlines() if "subscriptions file" in ln]
        assert len(refused) == 1 and "move that file aside" in refused[0] and subs in refused[0], p.stderr
        os.rename(subs, subs + ".aside")
        p = run(home, "imsrestore", "-f", a, text=True)
        assert p.returncode == 0, p.stderr
        after = state()
        assert {n: after[n] for n in before} == before


def test_a_login_with_a_slash_is_named_not_skipped(tmp_path):
    """A Dovecot that allows any login character (auth_username_chars =) keeps the mail
    of 'x/y@example.com' at STORE/example.com/x/y/Maildir in the vdomain layout.  The
    walk along the template did not find it: imsbackup / exited 0 without it, named
    nothing, and imsverify --against-store passed.  No user ID of ims-asm holds '/',
    so the login is named (exit 1) and the other logins are backed up."""
    from tests.dovecot_lab import dovecot_lab
    with dovecot_lab("vdomain", logins=["alice@example.com", "x/y@example.com"],
                     extra="auth_username_chars =") as lab:
        home = str(tmp_path / "ims")
        configure(lab, home)
        lab.deliver(["alice@example.com"], message("hello"))
        before = tmp_path / "before.ims"
        run(home, "imsbackup", "-f", before, "/", check=0)
        with lab.imap("x/y@example.com") as c:
            c.append("INBOX", message("precious for x/y", size=2000), [r"\Seen"])
        where = os.path.join(lab.store, "example.com", "x", "y", "Maildir")
        assert os.path.isdir(os.path.join(where, "cur"))
        a = tmp_path / "a.ims"
        p = run(home, "imsbackup", "-f", a, "/", text=True)
        assert p.returncode == 1, p.stderr
        line, = [ln for ln in p.stderr.splitlines() if "x/y@example.com" in ln]
        assert where in line and "no user ID of ims-asm can hold" in line, line
        assert archive_listing(home, a) == {("alice@example.com", "INBOX"): 1}
        v = run(home, "imsverify", "-v", "-f", before, "--against-store", text=True)
        assert v.returncode == EXIT_DIFFERS and "x/y@example.com" in v.stderr, v.stdout + v.stderr


def test_imsdr_leaves_a_dbox_stores_mail_to_archives_and_refuses_a_snapshot(tmp_path):
    """imsdr captures index files of Maildir locations only (tests/test_dovecot_layouts_dr.py);
    a dbox store's flags and UIDs live in Dovecot's indexes: its way back is archives.
    The disaster backup of a dbox installation holds the rest (configuration, journals,
    catalog, keys) and says in its manifest what it left out, exit 0."""
    home = tmp_path / "ims"
    (tmp_path / "mail").mkdir()
    run(home, "msconfig", "set", "store.driver", "maildir", check=0)
    run(home, "msconfig", "set", "store.mail_location", f"sdbox:{tmp_path}/mail/%d/%n/sdbox", check=0)
    res = run(home, "imsdr", "backup", "-v", "-f", tmp_path / "dr.tar", text=True, check=0)
    assert "sdbox store: its mail and index files are not captured" in res.stderr, res.stderr
    shown = run(home, "imsdr", "show", "-f", tmp_path / "dr.tar", text=True, check=0).stdout
    assert "indexes: none" in shown and "config: " in shown and "note: mail_location 'sdbox:" in shown, shown
    os.unlink(tmp_path / "dr.tar")
    # reconstruct has Dovecot check a dbox store (tests/test_dbox_chain.py), through doveadm
    # and the configuration it needs, which this installation does not name
    res = run(home, "reconstruct", "-r", "/", text=True)
    assert res.returncode == 2 and "sdbox" in res.stderr and "dovecot.config" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    run(home, "msconfig", "set", "store.mail_location", f"maildir:{tmp_path}/mail/%d/%n/Maildir", check=0)
    res = run(home, "imsdr", "backup", "--snapshot", f"{tmp_path}/snap={tmp_path}/mail", "-f",
              tmp_path / "dr.tar", text=True)
    assert res.returncode == 2 and "--snapshot" in res.stderr, res.stderr


def test_a_restore_holds_dovecot_lmtp_deliveries(vdomain, tmp_path):
    """dovecot.holdfile: the store's delivery hold is a userdb tempfail Dovecot's LMTP
    honours (451, the MTA retries); the administrator's own lines stay."""
    from asm.config import Config
    from asm.store import open_store
    lab = vdomain
    u, other = "alice@example.com", "bob@example.com"
    hold = os.path.join(lab.dir, "hold.lmtp")
    with open(hold, "w") as f:
        f.write("carol@example.com:::::::userdb_tempfail=yes userdb_reason=admin\n")
    os.chmod(hold, 0o644)
    home = tmp_path / "ims"
    configure(lab, home)
    run(home, "msconfig", "set", "dovecot.holdfile", hold, check=0)
    lab.deliver([u], message("before"))
    store = open_store(Config(home=str(home)))
    store.hold_deliveries(u, "1@test")
    store.hold_deliveries(u, "2@test")
    replies = lab.deliver([u, other], message("while held"), check=False)
    assert replies[u][0] == 451 and replies[other][0] == 250, replies
    assert store.release_deliveries(u, "1@test") == 0
    assert lab.deliver([u], message("still held"), check=False)[u][0] == 451
    store.release_deliveries(u, "2@test")
    time.sleep(1.1)
    assert lab.deliver([u], message("released"), check=False)[u][0] == 250
    assert open(hold).read() == "carol@example.com:::::::userdb_tempfail=yes userdb_reason=admin\n"
    # a restore holds while it writes and lets go at the end
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, f"/primary/{u}", check=0)
    with lab.imap(u) as c:
        c.create("Restored")
    run(home, "imsrestore", "-f", a, check=0)
    assert "alice@example.com" not in open(hold).read()
    time.sleep(1.1)
    assert lab.deliver([u], message("after the restore"), check=False)[u][0] == 250


def test_a_utf8_location_keeps_folder_names_and_subscriptions_in_utf8(tmp_path):
    """mail_location's UTF-8 option: Dovecot keeps folder directories and the
    subscriptions file in UTF-8.  A restore must write the subscriptions the same way, or
    the client's LSUB names a folder that does not exist and loses the real one."""
    from tests.dovecot_lab import LabLayout, dovecot_lab
    lay = LabLayout("utf8", "maildir:{store}/%u/Maildir:UTF-8", "{store}/%u", ("alice",))
    with dovecot_lab(lay) as lab:
        home = str(tmp_path / "ims")
        configure(lab, home)
        with lab.imap("alice") as c:
            for f in (REUNIONS, "Work", f"Work/{REUNIONS}"):
                c.create(f)
                c.subscribe(f)
                c.append(f, message(f"in {f}"))
        before = seen(lab.client_state("alice"))
        subs = os.path.join(lab.store, "alice", "Maildir", "subscriptions")
        with open(subs, "rb") as f:
            dovecot_wrote = f.read()
        assert "Réunions".encode() in dovecot_wrote
        a = tmp_path / "a.ims"
        run(home, "imsbackup", "-f", a, "/", check=0)
        lab.stop(wait="sessions")
        wipe(lab)
        lab.start()
        run(home, "imsrestore", "-f", a, check=0)
        assert seen(lab.client_state("alice")) == before
        with open(subs, "rb") as f:
            assert sorted(f.read().split(b"\n")) == sorted(dovecot_wrote.split(b"\n"))


@pytest.mark.parametrize("layout, short", [("hashed", "a"), ("vdomain", "postmaster")])
def test_a_login_whose_path_has_an_empty_level_is_backed_up(tmp_path, layout, short):
    """Dovecot expands %1.1n of a one-letter login, and %d of a login without a domain,
    to nothing: its mail is at STORE/a//a/Maildir or STORE//postmaster/Maildir.  A backup
    of the whole store must take that login with the others, not leave it out unnamed."""
    from tests.dovecot_lab import LAYOUTS as LAB_LAYOUTS, dovecot_lab
    logins = list(LAB_LAYOUTS[layout].logins) + [short]
    with dovecot_lab(layout, logins=logins) as lab:
        home = str(tmp_path / "ims")
        configure(lab, home)
        lab.deliver(logins, message("to everyone"))
        lab.deliver([short], message(f"only for {short}"))
        assert "//" in lab.mailbox_path(short) or os.path.isdir(lab.mailbox_path(short))
        a = tmp_path / "a.ims"
        p = run(home, "imsbackup", "-f", a, "/", text=True)
        assert p.returncode == 0, p.stderr
        got = archive_listing(home, a)
        assert {u for u, _ in got} == set(logins), got
        assert got[(short, "INBOX")] == 2
        before = lab.client_state(short)
        lab.stop(wait="sessions")
        wipe(lab)
        lab.start()
        run(home, "imsrestore", "-f", a, check=0)
        assert seen(lab.client_state(short)) == seen(before)


def condstore_select(c, folder: str) -> tuple[int, int]:
    """SELECT folder (CONDSTORE): (UIDVALIDITY, HIGHESTMODSEQ), what a CONDSTORE client caches."""
    c.conn.untagged_responses.clear()
    c.command("SELECT", quote(folder), "(CONDSTORE)")
    c.conn.state, c.selected = "SELECTED", folder
    codes = b" ".join(x for x in c.conn.untagged_responses.get("OK", []) if isinstance(x, bytes))
    uv = re.search(rb"UIDVALIDITY (\d+)", codes)
    hms = re.search(rb"HIGHESTMODSEQ (\d+)", codes)
    assert uv and hms, codes
    return int(uv.group(1)), int(hms.group(1))


def uid_flags(c, modseq: int | None = None) -> dict[int, frozenset]:
    """{uid: flags} of UID FETCH 1:* (FLAGS), with (CHANGEDSINCE modseq) when given: the
    messages a CONDSTORE client is told changed since the HIGHESTMODSEQ it cached."""
    typ, data = c.conn.uid("FETCH", "1:*", "(FLAGS)" + (f" (CHANGEDSINCE {modseq})" if modseq else ""))
    assert typ == "OK", data
    out = {}
    for d in data:
        m = re.search(rb"UID (\d+)", d) if isinstance(d, bytes) else None
        if m:
            flags = re.search(rb"FLAGS \(([^)]*)\)", d).group(1).decode().split()
            out[int(m.group(1))] = frozenset(f for f in flags if f != r"\Recent")
    return out


modseq_lab = lab_fixture(params=["plain", "idxctl", "sdbox", "mdbox"])
stopped_modseq_lab = lab_fixture(params=["plain", "idxctl"])


def test_condstore_clients_are_told_every_flag_the_restore_changed(modseq_lab, tmp_path):
    """RFC 7162 after a disaster: the backup runs at 2 AM, the client keeps changing flags
    and caches HIGHESTMODSEQ M at 10 AM, the store is lost at noon and restored.  The
    messages come back with their 2 AM flags, same UIDVALIDITY and UIDs; UID FETCH 1:*
    (FLAGS) (CHANGEDSINCE M) must name every message whose flags differ from the client's
    (before: Dovecot rebuilt its index from the files at HIGHESTMODSEQ 2-4 < M and
    answered nothing, so the client showed its 10 AM flags forever)."""
    condstore_after_a_lost_disk(modseq_lab, tmp_path, stopped=False)


def test_condstore_clients_are_told_every_flag_a_restore_with_dovecot_stopped_changed(
        stopped_modseq_lab, tmp_path):
    """The same, restored while Dovecot is stopped (the disaster-recovery runbook):
    nothing of Dovecot's runs during the restore."""
    condstore_after_a_lost_disk(stopped_modseq_lab, tmp_path, stopped=True)


def condstore_after_a_lost_disk(lab, tmp_path, stopped: bool) -> None:
    u = lab.logins[0]
    lab.deliver([u], message("modseq inbox"))
    with lab.imap(u) as c:
        c.create("Sync")
        uids = [c.append("Sync", message(f"s{i}"), [r"\Seen"])[1] for i in range(3)]
        c.select("Sync")
        for i in range(6):                     # raise HIGHESTMODSEQ well above a new index's
            c.uid_store([uids[0]], "+FLAGS" if i % 2 == 0 else "-FLAGS", [r"\Answered"])
        c.unselect()
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, f"/primary/{u}", check=0)      # 2 AM
    cached = {}
    with lab.imap(u) as c:                     # 10 AM: changes no archive has
        c.select("Sync")
        c.uid_store([uids[1]], "+FLAGS", [r"\Flagged"])
        c.uid_store([uids[2]], "-FLAGS", [r"\Seen"])
        c.unselect()
        c.select("INBOX")
        c.uid_store("1:*", "+FLAGS", [r"\Seen"])
        c.unselect()
        for folder in ("INBOX", "Sync"):
            uv, m = condstore_select(c, folder)
            cached[folder] = (uv, m, uid_flags(c))
    if stopped:
        lab.stop()
    try:
        wipe(lab)                              # noon: the disk is lost
        run(home, "imsrestore", "-f", a, check=0)
    finally:
        if stopped:
            lab.start()
    with lab.imap(u) as c:
        for folder, (uv, m, flags) in cached.items():
            now_uv, now = condstore_select(c, folder)
            server = uid_flags(c)
            assert (now_uv, sorted(server)) == (uv, sorted(flags)), folder
            differ = {uid for uid in flags if server[uid] != flags[uid]}
            assert differ, (folder, flags, server)            # the 2 AM flags are back
            told = uid_flags(c, m)
            assert differ <= set(told), (folder, m, now, differ, told)
            assert all(told[uid] == server[uid] for uid in told)
            assert now > m, (folder, m, now)


live_lab = lab_fixture("plain")


def test_a_restore_into_a_folder_a_live_session_recreated_leaves_dovecot_a_clean_index(live_lab, tmp_path):
    """A client deleted and re-created Sync (new UIDVALIDITY) and a live session has it
    SELECTed when the restore puts back the archived UIDVALIDITY (the index is reset)
    in the same second.  Dovecot's log holds no index error, the live session sees the
    restored messages or is told to log in again, and a new session sees the source's
    UIDVALIDITY, UIDs and flags.  (Before: the reset wrote a log whose indexid, the time
    in seconds, was the one Dovecot had just given the folder: "Lost log for seq=1 ...
    Missing middle file seq=3", fscking, and the live session saw the folder empty.)"""
    lab = live_lab
    u = lab.logins[0]
    with lab.imap(u) as c:
        c.create("Sync")
        uids = [c.append("Sync", message(f"s{i}"), [r"\Seen"])[1] for i in range(4)]
        c.select("Sync")
        c.uid_store([uids[1]], "+FLAGS", [r"\Flagged"])
        c.unselect()
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, f"/primary/{u}", check=0)
    src = lab.client_state(u).folders["Sync"]
    logfile = os.path.join(lab.dir, "dovecot.log")
    start = os.path.getsize(logfile)
    with lab.imap(u) as c:
        c.delete("Sync")
        c.create("Sync")
    live = lab.imap(u).__enter__()
    try:
        live.select("Sync")
        run(home, "imsrestore", "-f", a, f"/primary/{u}/Sync", check=0)
        try:
            live.conn.noop()
            seen_live = sorted(uid_flags(live))
        except Exception as exc:               # told to log in again: the old index is gone
            seen_live = str(exc)
    finally:
        with contextlib.suppress(Exception):
            live.__exit__(None, None, None)
    got = lab.client_state(u).folders["Sync"]
    assert (got.uidvalidity, [(m.uid, m.flags) for m in got.messages]) == \
        (src.uidvalidity, [(m.uid, m.flags) for m in src.messages])
    with open(logfile, errors="replace") as f:
        f.seek(start)
        log = [ln for ln in f.read().splitlines() if re.search(r"\b(imap|lmtp|doveadm)\(", ln)
               and re.search(r"Error|Panic|Fatal|[Cc]orrupt|Lost log|fscking", ln)]
    # (Dovecot resets Sync's index itself on reading the archived UIDVALIDITY, and says so
    # for the session that has it selected, which it logs out: the same line and logout as
    # after `doveadm mailbox update --uid-validity`, docs/dovecot.md "Live restores")
    log = [ln for ln in log if not re.search(r"Mailbox Sync: .*/dovecot\.index reset, view is now inconsistent$", ln)]
    assert not log, log
    assert seen_live == sorted(uids) or "relogin" in str(seen_live), seen_live


def test_a_restore_giving_an_indexed_folder_its_uidvalidity_back_killed_anywhere_ends_exact(live_lab, tmp_path):
    """A client deleted and re-created Sync (Dovecot indexed it under a new UIDVALIDITY);
    the restore that gives it the archived UIDVALIDITY back leaves Dovecot's index to
    Dovecot, which resets it when it reads the new UIDVALIDITY (docs/dovecot.md, "Live
    restores").  Killed at any step, a client looking at every folder before the same
    command is run again: the rerun ends with the folder as archived (UIDVALIDITY, UIDs,
    flags) and Dovecot's log holds no index error."""
    from tests.faults import count_steps, run_with_fault, spread
    lab = live_lab
    u = lab.logins[2]
    with lab.imap(u) as c:
        c.create("Sync")
        for i in range(3):
            c.append("Sync", message(f"sync {i}"), [r"\Seen"] if i % 2 else [r"\Flagged"])
    home = tmp_path / "ims"
    configure(lab, home)
    a = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", a, f"/primary/{u}/Sync", check=0)
    src = lab.client_state(u).folders["Sync"]
    want = (src.uidvalidity, [(m.uid, m.flags) for m in src.messages])
    argv = ["imsrestore", "-f", str(a), f"/primary/{u}/Sync"]
    logfile = os.path.join(lab.dir, "dovecot.log")

    def remade():               # the client's own Sync, indexed under its UIDVALIDITY
        shutil.rmtree(home / "data", ignore_errors=True)
        with lab.imap(u) as c:
            c.delete("Sync")
            c.create("Sync")
            assert c.select("Sync")["uidvalidity"] != src.uidvalidity

    remade()
    steplog = tmp_path / "steps.log"
    total, _ = count_steps(argv, lab.store, tmp_path, env={"IMS_HOME": str(home), "IMS_FAULT_LOG": str(steplog)})
    steps = [(int(n), what) for n, _, what in (ln.rstrip("\n").partition(" ") for ln in open(steplog))]
    # the steps of the UIDVALIDITY change (cur/ given a new mtime, the uidlist's header
    # written) and the one after each, and points spread over the rest of the run
    change = [n for n, what in steps if what.endswith("/.Sync/cur")]
    assert change, steps
    header = [n for n, what in steps if n > change[0] and "dovecot-uidlist" in what][:2]
    seed = time.time_ns() % 1_000_000
    points = sorted({*change, change[0] + 1, *header, header[-1] + 1, *spread(total, 1, seed)})
    start = os.path.getsize(logfile)
    for point in points:
        remade()
        run_with_fault(argv, lab.store, f"kill:{point}", env={"IMS_HOME": str(home)})
        _client_looks(lab, u)
        again = run(home, *argv, text=True)
        got = lab.client_state(u).folders["Sync"]
        where = f"killed at step {point} of {total} (seed {seed}): {again.returncode} {again.stderr}"
        if again.returncode == 1 and "given out as gone" in again.stderr:
            # docs/operations.md "Killed": a UID a client was told was past gets a new one
            assert got.uidvalidity == src.uidvalidity, where
        else:
            assert again.returncode == 0, where
            assert (got.uidvalidity, [(m.uid, m.flags) for m in got.messages]) == want, where
    with open(logfile, errors="replace") as f:
        f.seek(start)
        log = [ln for ln in f.read().splitlines() if re.search(r"\b(imap|lmtp|doveadm)\(", ln)
               and re.search(r"Error|Panic|Fatal|[Cc]orrupt|Lost log|fscking", ln)]
    assert not log, log[:5]


def _age(lab, login: str) -> None:
    """Every folder's cur/ and new/ of ``login`` dated 10 s back: Dovecot's next look at
    them is as a look a while after their last change (it then records that it checked
    them, and reads dovecot-uidlist again only once their mtime changes)."""
    t = time.time() - 10
    root = os.path.join(lab.store, login, "Maildir")
    for d in [root, *(os.path.join(root, n) for n in os.listdir(root) if n.startswith("."))]:
        for sub in ("cur", "new"):
            if os.path.isdir(os.path.join(d, sub)):
                os.utime(os.path.join(d, sub), (t, t))


def _client_looks(lab, login: str) -> None:
    """A client opens every folder Dovecot lists (each one must open)."""
    with lab.imap(login) as c:
        for name, attrs in c.list().items():
            if "\\Noselect" not in attrs:
                c.select(name, readonly=True)


def _uidnexts(lab, login: str, folders) -> dict:
    """{folder: (MESSAGES, UIDVALIDITY, UIDNEXT)} as a client's STATUS, then SELECT, sees them."""
    out = {}
    with lab.imap(login) as c:
        for f in folders:
            s = c.status(f)
            out[f] = (s["messages"], s["uidvalidity"], s["uidnext"])
        for f in folders:
            s = c.select(f, readonly=True)
            assert (s["exists"], s["uidvalidity"], s["uidnext"]) == out[f], (f, s, out[f])
    return out


def test_uidnext_above_the_last_uid_is_what_clients_see_after_any_restore(kw_lab, tmp_path):
    """Folders whose UIDNEXT is above their last UID (mail expunged between the backups),
    one with a message of 30 keywords (keywords 27.. go to Dovecot's index through doveadm,
    which indexes the folder during the restore), restored into the emptied store: in one
    command, archive by archive with a client looking between, and killed at many points
    with a client looking before the same command is run again.  A client's STATUS and
    SELECT always give the archived UIDNEXT.  Before, the restore raised UIDNEXT in
    dovecot-uidlist only, and Dovecot, whose index held the lower one, read the uidlist
    again only when cur/ or new/ changed (or within a second of it): a chain restore
    exited 0 with alice/Lists UIDNEXT 2 instead of 3 in some runs, depending on timing;
    a UID clients saw expunged would go to new mail."""
    from tests.faults import count_steps, run_with_fault, spread
    lab = kw_lab
    u = "carol"
    folders = ("Tags", "Plain", "Empty")
    with lab.imap(u) as c:
        for f in folders:
            c.create(f)
        c.append("Tags", message("thirty keywords"), [r"\Seen", *KWS])
        c.append("Plain", message("plain"), [r"\Flagged"])
        _, gone = c.append("Empty", message("gone before the full"))
        c.select("Empty")
        c.uid_expunge([gone])
        c.unselect()
    home = tmp_path / "ims"
    configure(lab, home)
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, f"/primary/{u}", check=0)
    with lab.imap(u) as c:            # one message each, expunged: UIDNEXT one past the last UID + 1
        for f in folders:
            _, uid = c.append(f, message(f"expunged in {f}"))
            c.select(f)
            c.uid_expunge([uid])
            c.unselect()
    run(home, "imsbackup", "-f", incr, "--base", f"{full}.state", f"/primary/{u}", check=0)
    want = _uidnexts(lab, u, folders)
    assert {f: w[2] for f, w in want.items()} == {"Tags": 3, "Plain": 3, "Empty": 3}
    chain = ["imsrestore", "-f", str(full), "-f", str(incr)]

    def restart():
        wipe(lab)
        shutil.rmtree(home / "data", ignore_errors=True)

    restart()                         # the chain in one command
    run(home, *chain, check=0)
    assert _uidnexts(lab, u, folders) == want
    # archive by archive, a client looking at the folders a while after the first
    restart()
    run(home, "imsrestore", "-H", "-f", full, check=0)
    _age(lab, u)
    _client_looks(lab, u)
    run(home, "imsrestore", "-f", incr, check=0)
    assert _uidnexts(lab, u, folders) == want
    # killed anywhere; a client looks a while later; the same command again
    restart()
    total, _ = count_steps(chain, lab.store, tmp_path, env={"IMS_HOME": str(home)})
    seed = time.time_ns() % 1_000_000
    for point in spread(total, 3, seed):
        restart()
        r = run_with_fault(chain, lab.store, f"kill:{point}", env={"IMS_HOME": str(home)})
        if os.path.isdir(os.path.join(lab.store, u, "Maildir")):
            _age(lab, u)
            _client_looks(lab, u)
        again = run(home, *chain, text=True)
        got = _uidnexts(lab, u, folders)
        where = f"killed at step {point} of {total} (seed {seed}, kill rc {r.returncode}): {again.stderr}"
        if again.returncode == 1 and "given out as gone" in again.stderr:
            # docs/operations.md "Killed": a UID a client was told was past gets a new one
            assert all(got[f][2] >= want[f][2] for f in folders), where
        else:
            assert again.returncode == 0 and got == want, (where, got, want)


def test_a_restore_killed_while_it_makes_a_folder_leaves_nothing_dovecot_cannot_open(kw_lab, tmp_path):
    """A restore killed at each step of making a folder (Maildir++ ``.Work`` and
    ``.Work.Sub``, store.owner vmail, run as root): every folder Dovecot then lists opens
    (SELECT), and the same command run again gives the account back as it was.  Before,
    the folder's directory was made under its own name and given to store.owner after:
    killed between the two it was root's, 0700, without cur/ new/ tmp/, and Dovecot listed
    it and failed SELECT with "[SERVERBUG] Internal error" (stat(.../tmp) Permission
    denied) until the restore was run again (adv-chainfuzz finding 06)."""
    from tests.faults import run_with_fault
    lab = kw_lab
    u = "bob"
    with lab.imap(u) as c:
        for f in ("Work", "Work/Sub"):
            c.create(f)
            c.append(f, message(f"in {f}"), [r"\Seen"])
    before = lab.client_state(u)
    home = tmp_path / "ims"
    configure(lab, home)
    archive = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", archive, f"/primary/{u}", check=0)
    argv = ["imsrestore", "-f", str(archive)]

    def restart():
        wipe(lab)
        shutil.rmtree(home / "data", ignore_errors=True)

    restart()
    log = tmp_path / "steps.log"
    run_with_fault(argv, lab.store, f"count:{tmp_path / 'n'}", env={"IMS_HOME": str(home), "IMS_FAULT_LOG": str(log)})
    maildir = os.path.join(lab.store, u, "Maildir")
    steps = [(int(n), what) for n, _, what in (line.rstrip("\n").partition(" ") for line in open(log))]
    # the steps making the first folder's directory and its new/ tmp/ (a rename is
    # logged by its source), and the step after them
    work = os.path.join(maildir, ".Work")
    dirs = {work, os.path.join(work, "new"), os.path.join(work, "tmp")}
    making = [n for n, what in steps if what in dirs or "ims-mkdir" in what]
    making = [n for n in making if n <= making[0] + 8]
    assert len(making) >= 6, making
    for point in [*making, making[-1] + 1]:
        restart()
        r = run_with_fault(argv, lab.store, f"kill:{point}", env={"IMS_HOME": str(home)})
        assert r.returncode == -9, r.stderr
        _client_looks(lab, u)
        for n in os.listdir(maildir):         # the folders Dovecot lists are store.owner's
            st = os.stat(os.path.join(maildir, n))
            if n.startswith(".") and stat.S_ISDIR(st.st_mode):
                assert (st.st_uid, st.st_gid) == (lab.uid, lab.gid), (point, n)
    again = run(home, *argv, text=True)
    assert again.returncode == 0, again.stderr
    assert seen(lab.client_state(u)) == seen(before)
    assert not [n for n in os.listdir(maildir) if "ims-mkdir" in n]


subs_lab = lab_fixture(params=["plain", "vdomain", "sdbox"])


@pytest.mark.parametrize("kind", ["base", "d"])
@pytest.mark.parametrize("how", ["one command", "one per archive"])
def test_subscriptions_to_deleted_folders_follow_the_chain(subs_lab, tmp_path, kind, how):
    """Dovecot keeps a subscription after an IMAP DELETE; a chain must end with the
    subscriptions its last backup saw.  A full (R and X, subscribed), an incremental
    after DELETE R and DELETE X (both subscriptions kept), another after UNSUBSCRIBE R and
    X made again unsubscribed: restored into an emptied store, in one command or one
    archive per command, LSUB and LIST are as the clients saw them, and imsverify
    --exact passes.  (An adversarial check found, per command, both subscriptions lost
    with exit 0 -- the removal of the gone folder came after they were given -- and, in
    one command, R subscribed again: the last archive had no way to say "none".)"""
    lab = subs_lab
    u = lab.logins[0]
    home = tmp_path / "ims"
    configure(lab, home)
    with lab.imap(u) as c:
        for f in ("R", "X"):              # (the module's lab: as an earlier test left it)
            if f in c.list():
                c.delete(f)
            if f in c.list(lsub=True):
                c.unsubscribe(f)
        for f in ("R", "X"):
            c.create(f)
            c.subscribe(f)
            c.append(f, message(f"m {f}"), [r"\Seen"])
    a = [tmp_path / f"a{i}.ims" for i in range(3)]
    starts = [time.strftime("%Y%m%d:%H%M%S")]
    time.sleep(1.1)
    run(home, "imsbackup", "-f", a[0], "/", check=0)
    time.sleep(1.1)
    with lab.imap(u) as c:
        c.delete("R")
        c.delete("X")
    starts.append(time.strftime("%Y%m%d:%H%M%S"))
    time.sleep(1.1)
    run(home, "imsbackup", "-f", a[1], *(["--base", a[0]] if kind == "base" else ["-d", starts[0]]), "/", check=0)
    mid = lab.client_state(u).subscriptions
    assert {"R", "X"} <= mid, mid
    time.sleep(1.1)
    with lab.imap(u) as c:
        c.unsubscribe("R")
        c.create("X")
        c.unsubscribe("X")
        c.append("X", message("new x"))
    run(home, "imsbackup", "-f", a[2], *(["--base", a[1]] if kind == "base" else ["-d", starts[1]]), "/", check=0)
    before = lab.client_state(u)
    assert "R" not in before.subscriptions and "X" not in before.subscriptions
    lab.stop(wait="sessions")
    wipe(lab)
    lab.start()
    if how == "one command":
        run(home, "imsrestore", *sum((["-f", x] for x in a), []), check=0)
    else:
        for i, x in enumerate(a):
            run(home, "imsrestore", *(["-H"] if i < 2 else []), "-f", x, check=0)
    assert lab.client_state(u) == before
    run(home, "imsverify", *sum((["-f", x] for x in a), []), "--against-store", "--exact", check=0)
    # and the middle of the chain: the subscriptions of the deleted folders come back
    lab.stop(wait="sessions")
    wipe(lab)
    lab.start()
    run(home, "imsrestore", "-f", a[0], "-f", a[1], check=0)
    assert lab.client_state(u).subscriptions == mid


def test_a_folder_restore_brings_back_the_subscriptions_dovecot_kept_under_it(subs_lab, tmp_path):
    """Dovecot keeps the subscription of a deleted subfolder (P/Old after DELETE P/Old).
    A restore of the whole user gives it back; a restore of the folder P alone did not:
    LSUB lost P/Old, exit 0.  Now a folder path's restore gives the subscriptions to
    names that are no folder under it, and none elsewhere (Q, deleted too, is outside
    /P); a restore of the full and an incremental whose backup saw P/Old unsubscribed
    ends with it unsubscribed, as the clients last saw it."""
    lab = subs_lab
    u = lab.logins[0]
    home = tmp_path / "ims"
    configure(lab, home)
    names = ("P", "P/Old", "P/Kept", "Q")
    with lab.imap(u) as c:
        for f in reversed(names):          # (the module's lab: as an earlier test left it)
            if f in c.list():
                c.delete(f)
            if f in c.list(lsub=True):
                c.unsubscribe(f)
        for f in names:
            c.create(f)
            c.subscribe(f)
            c.append(f, message(f"m {f}"), [r"\Seen"])
        c.delete("P/Old")
        c.delete("Q")
    saw = lab.client_state(u)
    assert {"P", "P/Old", "P/Kept", "Q"} <= saw.subscriptions and "P/Old" not in saw.folders, saw.subscriptions
    full = tmp_path / "full.ims"
    start = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    run(home, "imsbackup", "-f", full, "/", check=0)
    for path, want in (("P", {"P", "P/Old", "P/Kept"}), ("P/Kept", {"P/Kept"}), ("INBOX", set())):
        lab.stop(wait="sessions")
        wipe(lab)
        lab.start()
        p = run(home, "imsrestore", "-f", full, f"/primary/{u}/{path}", text=True)
        assert p.returncode == 0, (path, p.stderr)
        got = lab.client_state(u)
        assert got.subscriptions & set(names) == want, (path, got.subscriptions)
        assert set(got.folders) & set(names) == want - {"P/Old"}, (path, got.folders)
    # the incremental's backup sees P/Old unsubscribed: a chain of the folder ends so
    time.sleep(1.1)
    with lab.imap(u) as c:
        c.unsubscribe("P/Old")
    lab.stop(wait="sessions")
    wipe(lab)
    lab.start()
    run(home, "imsrestore", "-f", full, check=0)
    with lab.imap(u) as c:
        c.unsubscribe("P/Old")
    incr = tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", incr, "-d", start, "/", check=0)
    lab.stop(wait="sessions")
    wipe(lab)
    lab.start()
    run(home, "imsrestore", "-f", full, "-f", incr, f"/primary/{u}/P", check=0)
    got = lab.client_state(u)
    assert got.subscriptions & set(names) == {"P", "P/Kept"}, got.subscriptions
