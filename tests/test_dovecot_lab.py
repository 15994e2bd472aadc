"""The Dovecot lab in every layout, and the facts docs/dovecot.md states about Dovecot.

Each layout's Dovecot is filled by Dovecot itself (LMTP, IMAP APPEND/COPY/MOVE/RENAME/
DELETE/STORE/EXPUNGE) and read back as a client sees it (``client_state``).  The
"fact" tests pin down how Dovecot 2.3 behaves where a backup tool depends on it:
where each file lives, what X-GUID is, what zlib does to sizes, keywords beyond 26,
doveadm backup between dbox and Maildir, and the LMTP delivery hold.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re

import pytest

from tests import dovecot_lab as lab_module
from tests.dovecot_lab import (
    LAYOUTS, LabImap, LabImapError, dovecot_lab, lab_fixture, message,
)

lab = lab_fixture(params=list(LAYOUTS))
plain_lab = lab_fixture("plain")
zlib_lab = lab_fixture("zlib")


def body_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_messages(before, after, folder="INBOX"):
    """Messages of ``folder`` in ``after`` with a UID at or above ``before``'s UIDNEXT."""
    return [m for m in after[folder].messages if m.uid >= before[folder].uidnext]


# -- every layout -----------------------------------------------------------------------

def test_lmtp_delivers_one_stored_copy_to_three_logins(lab):
    three = lab.logins[:3]
    before = {u: lab.client_state(u) for u in three}
    msg = message(f"to three in {lab.layout.name}", size=4000)
    replies = lab.deliver(three, msg)
    assert all(code == 250 for code, _ in replies.values()), replies
    got = {}
    for u in three:
        new = new_messages(before[u], lab.client_state(u))
        assert len(new) == 1, (u, new)
        got[u] = new[0]
        with lab.imap(u) as c:
            c.select("INBOX", readonly=True)
            body = c.fetch_body(new[0].uid)
        # Dovecot adds Return-Path and Received; the rest is the message, byte for byte
        assert body.endswith(msg) and body_sha(body) == new[0].sha256
        assert new[0].size == len(body)
    assert len({m.sha256 for m in got.values()}) == 1
    # one message, one GUID for every recipient (Maildir: the file's base name or the
    # uidlist G field; dbox: the GUID in the dbox file)
    assert len({m.guid for m in got.values()}) == 1, got
    if lab.layout.format == "mdbox":
        # each user's own storage/m.N file: no inode shared between users
        storages = []
        for u in three:
            root = os.path.dirname(os.path.dirname(os.path.dirname(lab.mailbox_path(u, "INBOX"))))
            st = os.path.join(root, "storage")
            storages.append({os.stat(os.path.join(st, f)).st_ino
                             for f in os.listdir(st) if f.startswith("m.")})
            assert storages[-1]
        assert not set.intersection(*storages)
        return
    inodes, names = set(), set()
    for u in three:
        d = lab.mailbox_path(u, "INBOX")
        files = ([os.path.join(d, "new", f) for f in os.listdir(os.path.join(d, "new"))]
                 if lab.layout.maildir else
                 [os.path.join(d, f) for f in os.listdir(d) if f.startswith("u.")])
        linked = [f for f in files if os.stat(f).st_nlink >= 3]
        inodes |= {os.stat(f).st_ino for f in linked}
        names |= {os.path.basename(f) for f in linked}
    assert len(inodes) == 1, "one inode hard-linked into the three mailboxes"
    if lab.layout.maildir and "zlib" not in lab.layout.mail_plugins:
        assert len(names) == 1 and got[three[0]].guid == names.pop().split(":")[0]


def test_imap_changes_show_in_client_state(lab):
    u = lab.logins[0]
    tag = lab.layout.name
    start = lab.client_state(u)
    lab.deliver([u], message(f"delivered {tag}"))
    with lab.imap(u) as c:
        for f in ("Work", "Work/2024", "Old", "Scratch"):
            c.create(f)
        c.subscribe("Work/2024")
        c.subscribe("Old")
        uv_work, a1 = c.append("Work", message(f"a1 {tag}"), [r"\Seen", "$Label1"],
                               "05-Mar-2024 12:00:00 +0100")
        msg_a2 = message(f"a2 {tag}", size=1500)
        _, a2 = c.append("Work", msg_a2, [r"\Flagged"], "06-Mar-2024 23:59:59 -0500")
        _, a3 = c.append("Work", message(f"a3 {tag}"))
        c.append("Scratch", message(f"gone {tag}"))
        inbox = c.select("INBOX")
        uid_in = inbox["uidnext"] - 1
        copied = c.uid_copy([uid_in], "Work/2024")
        moved = c.uid_move([uid_in], "Old")
        assert list(copied) == [uid_in] and list(moved) == [uid_in]
        c.select("Work")
        c.uid_store([a2], "+FLAGS", [r"\Answered", "Urgent"])
        c.uid_store([a1], "-FLAGS", ["$Label1"])
        c.uid_expunge([a3])
        c.unselect()
        c.rename("Old", "Old-2026")
        c.delete("Scratch")
    state = lab.client_state(u)
    assert set(state.folders) == set(start.folders) | {"Work", "Work/2024", "Old-2026"}
    # RENAME leaves subscriptions alone (RFC 3501): "Old" stays subscribed, though gone
    assert {"Work/2024", "Old"} <= state.subscriptions
    assert "Old-2026" not in state.subscriptions and "Old" not in state.folders
    assert "Scratch" not in state.folders
    work = state["Work"].by_uid()
    assert state["Work"].uidvalidity == uv_work
    assert state["Work"].uidnext == a3 + 1 and sorted(work) == [a1, a2]
    assert work[a1].flags == {r"\Seen"}
    assert work[a2].flags == {r"\Flagged", r"\Answered", "Urgent"}
    # INTERNALDATE as APPEND set it, shown in the server's zone (UTC here)
    assert work[a1].internaldate == "05-Mar-2024 11:00:00 +0000"
    assert work[a2].internaldate == "07-Mar-2024 04:59:59 +0000"
    assert work[a2].size == len(msg_a2) and work[a2].sha256 == body_sha(msg_a2)
    # the delivered message: moved out of INBOX, copied to Work/2024, same bytes and GUID
    assert uid_in not in state["INBOX"].by_uid()
    c_msg = state["Work/2024"].by_uid()[copied[uid_in]]
    m_msg = state["Old-2026"].by_uid()[moved[uid_in]]
    assert c_msg.sha256 == m_msg.sha256
    assert c_msg.guid == m_msg.guid, "X-GUID survives COPY and MOVE (and the RENAME after)"
    guids = [m.guid for _, m in state.all_messages()]
    assert len(set(guids)) == len(guids) - 1, "only the copy shares a GUID"


# Where Dovecot keeps each file, relative to the lab directory, for login alice (the
# first login of every layout below) and the folder "Work" (holding a keyword).
# None: the layout has no such file.
WHERE = {
    "plain": dict(root="mail/alice/Maildir", inbox_uidlist="mail/alice/Maildir/dovecot-uidlist",
                  uidlist="mail/alice/Maildir/.Work/dovecot-uidlist",
                  keywords="mail/alice/Maildir/.Work/dovecot-keywords",
                  subscriptions="mail/alice/Maildir/subscriptions",
                  inbox_index="mail/alice/Maildir/dovecot.index.log",
                  index="mail/alice/Maildir/.Work/dovecot.index.log",
                  list_index="mail/alice/Maildir/dovecot.list.index.log",
                  uidvalidity="mail/alice/Maildir/dovecot-uidvalidity"),
    "fs": dict(root="mail/alice/Maildir", inbox_uidlist="mail/alice/Maildir/dovecot-uidlist",
               uidlist="mail/alice/Maildir/Work/dovecot-uidlist",
               keywords="mail/alice/Maildir/Work/dovecot-keywords",
               subscriptions="mail/alice/Maildir/subscriptions",
               inbox_index="mail/alice/Maildir/dovecot.index.log",
               index="mail/alice/Maildir/Work/dovecot.index.log",
               list_index="mail/alice/Maildir/dovecot.list.index.log",
               uidvalidity="mail/alice/Maildir/dovecot-uidvalidity"),
    "idxctl": dict(root="mail/alice", inbox_uidlist="ctl/alice/.INBOX/dovecot-uidlist",
                   uidlist="ctl/alice/.Work/dovecot-uidlist",
                   keywords="ctl/alice/.Work/dovecot-keywords",
                   subscriptions="ctl/alice/subscriptions",
                   inbox_index="idx/alice/.INBOX/dovecot.index.log",
                   index="idx/alice/.Work/dovecot.index.log",
                   list_index="idx/alice/dovecot.list.index.log",
                   uidvalidity="ctl/alice/dovecot-uidvalidity"),
    "sdbox": dict(root="mail/alice/sdbox", inbox_uidlist=None, uidlist=None, keywords=None,
                  subscriptions="mail/alice/sdbox/subscriptions",
                  inbox_index="mail/alice/sdbox/mailboxes/INBOX/dbox-Mails/dovecot.index.log",
                  index="mail/alice/sdbox/mailboxes/Work/dbox-Mails/dovecot.index.log",
                  list_index="mail/alice/sdbox/dovecot.list.index.log",
                  uidvalidity="mail/alice/sdbox/dovecot-uidvalidity"),
    "mdbox": dict(root="mail/alice/mdbox", inbox_uidlist=None, uidlist=None, keywords=None,
                  subscriptions="mail/alice/mdbox/subscriptions",
                  inbox_index="mail/alice/mdbox/mailboxes/INBOX/dbox-Mails/dovecot.index.log",
                  index="mail/alice/mdbox/mailboxes/Work/dbox-Mails/dovecot.index.log",
                  list_index="mail/alice/mdbox/dovecot.list.index.log",
                  uidvalidity="mail/alice/mdbox/dovecot-uidvalidity"),
}


def test_where_dovecot_keeps_its_files(lab):
    name = lab.layout.name
    where = WHERE.get(name) or WHERE["plain"]
    if name not in WHERE:
        # the other Maildir++ layouts differ from "plain" only in the root
        root = os.path.relpath(lab.mailbox_path(lab.logins[0], "INBOX"), lab.dir)
        where = {k: v and v.replace("mail/alice/Maildir", root) for k, v in where.items()}
        where["root"] = root
    u = lab.logins[0]
    if name in WHERE:
        assert u == "alice"
    with lab.imap(u) as c:
        if "Work" not in c.list():
            c.create("Work")
        c.subscribe("Work")
        c.append("Work", message("kw"), ["Project"])
        c.select("Work")
        c.select("INBOX")
    # what doveadm says and what is on disk agree with the table
    assert os.path.relpath(lab.mailbox_path(u, "INBOX"), lab.dir).startswith(where["root"])
    ctl = os.path.relpath(lab.mailbox_path(u, "Work", "control"), lab.dir)
    idx = os.path.relpath(lab.mailbox_path(u, "Work", "index"), lab.dir)
    assert idx == os.path.dirname(where["index"])
    for key, rel in where.items():
        if key == "root" or rel is None:
            continue
        assert os.path.isfile(os.path.join(lab.dir, rel)), (key, rel, sorted(_tree(lab.dir)))
    if where["uidlist"]:
        assert ctl == os.path.dirname(where["uidlist"])
    else:
        # dbox: no uidlist and no keywords file anywhere; both are in dovecot.index*
        names = {os.path.basename(p) for p in _tree(lab.dir)}
        assert "dovecot-uidlist" not in names and "dovecot-keywords" not in names
    if name == "idxctl":
        # nothing but mail in the Maildir tree
        mail_files = {os.path.basename(p) for p in _tree(os.path.join(lab.dir, "mail"))}
        assert not {n for n in mail_files if n.startswith("dovecot") or n == "subscriptions"}


def _tree(top: str) -> list[str]:
    return [os.path.join(r, f) for r, _, fs in os.walk(top) for f in fs]


# -- facts: Maildir GUIDs --------------------------------------------------------------

def _uidlist(path: str) -> list[str]:
    with open(path) as f:
        return f.read().splitlines()


def test_maildir_guid_is_the_base_name_unless_the_uidlist_has_a_G_field(plain_lab):
    lab = plain_lab
    u = "bob"
    lab.deliver([u], message("guid from base name"))
    d = lab.mailbox_path(u, "INBOX")
    state = lab.client_state(u)
    (msg,) = state["INBOX"].messages
    (fname,) = os.listdir(os.path.join(d, "new")) or os.listdir(os.path.join(d, "cur"))
    # no G field written for a plain delivery: X-GUID is the base name, S= and W= included
    lines = _uidlist(os.path.join(d, "dovecot-uidlist"))
    assert re.fullmatch(rf"{msg.uid} :{re.escape(fname)}", lines[1])
    assert msg.guid == fname.split(":")[0] and ",S=" in msg.guid and ",W=" in msg.guid
    # a G field written by another tool is honoured after a restart (index files kept)
    lab.stop(wait=False)        # no session open: nothing of it writes any more
    lines[1] = lines[1].replace(f"{msg.uid} :", f"{msg.uid} G0123456789abcdef0123456789abcdef :")
    with open(os.path.join(d, "dovecot-uidlist"), "w") as f:
        f.write("\n".join(lines) + "\n")
    lab.start()
    again = lab.client_state(u)["INBOX"].messages[0]
    assert again.guid == "0123456789abcdef0123456789abcdef"
    assert (again.uid, again.sha256) == (msg.uid, msg.sha256)
    # ... and with the index files gone too; Dovecot keeps the field when it rewrites
    lab.stop(wait=False)
    for f in os.listdir(d):
        if f.startswith("dovecot.index"):
            os.unlink(os.path.join(d, f))
    lab.start()
    with lab.imap(u) as c:
        c.select("INBOX")
        c.uid_store([msg.uid], "+FLAGS", [r"\Seen"])        # makes Dovecot rewrite
    again = lab.client_state(u)["INBOX"].messages[0]
    assert again.guid == "0123456789abcdef0123456789abcdef"
    assert any(" G0123456789abcdef0123456789abcdef " in line
               for line in _uidlist(os.path.join(d, "dovecot-uidlist")))


# -- facts: keywords -------------------------------------------------------------------

def test_maildir_keeps_26_keywords_in_file_names_the_rest_only_in_its_index(plain_lab):
    lab = plain_lab
    u = "carol"
    kws = [f"kw{i:02d}" for i in range(30)]
    with lab.imap(u) as c:
        c.create("Tags")
        _, uid = c.append("Tags", message("thirty keywords"))
        c.select("Tags")
        c.uid_store([uid], "+FLAGS", kws)
    d = lab.mailbox_path(u, "Tags")
    assert lab.client_state(u)["Tags"].messages[0].flags == set(kws)
    with open(os.path.join(d, "dovecot-keywords")) as f:
        table = dict(line.split(" ", 1) for line in f.read().splitlines())
    assert table == {str(i): kws[i] for i in range(26)}
    (fname,) = os.listdir(os.path.join(d, "cur"))
    assert fname.endswith(":2," + "abcdefghijklmnopqrstuvwxyz")
    # the index is the only place of kw26..kw29: without it they are gone
    lab.stop(wait=False)
    for f in os.listdir(d):
        if f.startswith("dovecot.index"):
            os.unlink(os.path.join(d, f))
    lab.start()
    assert lab.client_state(u)["Tags"].messages[0].flags == set(kws[:26])


# -- facts: zlib -----------------------------------------------------------------------

def test_zlib_compresses_files_and_keeps_uncompressed_sizes_in_the_name(zlib_lab):
    lab = zlib_lab
    u = "alice"
    msg = message("compressed", size=20000)
    with lab.imap(u) as c:
        c.create("Z")
        _, uid = c.append("Z", msg, [r"\Seen"])
    d = lab.mailbox_path(u, "Z")
    (fname,) = os.listdir(os.path.join(d, "cur"))
    path = os.path.join(d, "cur", fname)
    with open(path, "rb") as f:
        raw = f.read()
    assert raw[:2] == b"\x1f\x8b", "gzip"
    plain = gzip.decompress(raw)
    assert plain == msg.replace(b"\r\n", b"\n"), "stored with LF line ends"
    s = int(re.search(r",S=(\d+)", fname).group(1))
    w = int(re.search(r",W=(\d+)", fname).group(1))
    assert s == len(plain) and s > len(raw), "S= is the uncompressed size, not the file's"
    seen = lab.client_state(u)["Z"].by_uid()[uid]
    assert w == seen.size == len(msg), "W= and RFC822.SIZE: uncompressed, CRLF line ends"
    assert seen.sha256 == body_sha(msg)
    # Dovecot records a G field for what it saves compressed: X-GUID is the base name
    # without ,S= and ,W=
    lines = _uidlist(os.path.join(d, "dovecot-uidlist"))
    assert re.fullmatch(rf"{uid} G(\S+) :{re.escape(fname.split(':')[0])}", lines[1])
    assert seen.guid == fname.split(",")[0] == lines[1].split()[1][1:]


def test_zlib_delivery_links_one_file_under_three_names_with_one_guid(zlib_lab):
    lab = zlib_lab
    three = lab.logins[:3]
    before = {u: lab.client_state(u) for u in three}
    lab.deliver(three, message("zlib to three", size=3000))
    names, inodes, guids, gfields = set(), set(), set(), set()
    for u in three:
        (m,) = new_messages(before[u], lab.client_state(u))
        guids.add(m.guid)
        d = lab.mailbox_path(u, "INBOX")
        line = [x for x in _uidlist(os.path.join(d, "dovecot-uidlist"))
                if x.startswith(f"{m.uid} ")][0]
        base = line.split(":", 1)[1]
        names.add(base)
        gfields.add(line.split()[1])
        inodes.add(os.stat(os.path.join(d, "new", base)).st_ino)
    assert len(inodes) == 1 and len(names) == 3
    assert len(guids) == 1 and gfields == {"G" + guids.pop()}
    # the G field is one of the three base names without ,S= and ,W=
    assert {n.split(",")[0] for n in names} & {g[1:] for g in gfields}


# -- facts: doveadm backup between dbox and Maildir --------------------------------------

@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
def test_doveadm_backup_between_dbox_and_maildir_keeps_what_clients_see(fmt):
    with dovecot_lab(fmt) as lab:
        lab.deliver(["alice", "bob"], message("one"))
        lab.deliver(["alice"], message("two"))
        with lab.imap("alice") as c:
            c.create("Archive")
            c.subscribe("Archive")
            _, first = c.append("Archive", message("gap"))
            c.append("Archive", message("three"), [r"\Seen", "$Label1", "Work"],
                     "05-Mar-2024 12:00:00 +0100")
            c.select("INBOX")
            c.uid_copy([1], "Archive")
            c.uid_move([2], "Archive")
            _, last = c.append("Archive", message("four"), [r"\Flagged"])
            c.select("Archive")
            c.uid_expunge([first, last])    # a gap, and UIDNEXT above the last UID + 1
        orig = lab.client_state("alice")
        assert orig["Archive"].uidnext > max(orig["Archive"].by_uid()) + 1
        copy = os.path.join(lab.dir, "copy")
        os.makedirs(copy)
        os.chown(copy, lab.uid, lab.gid)
        lab.doveadm("backup", f"maildir:{copy}/Maildir", user="alice")
        lab.add_user("alice.md", mail=f"maildir:{copy}/Maildir", home=copy)
        as_maildir = lab.client_state("alice.md")
        assert as_maildir == orig
        # the Maildir copy holds every GUID as a uidlist G field
        lines = _uidlist(f"{copy}/Maildir/.Archive/dovecot-uidlist")
        gs = {m.uid: m.guid for m in orig["Archive"].messages}
        for line in lines[1:]:
            uid, g = line.split()[:2]
            assert g == "G" + gs[int(uid)]
        # UIDNEXT is in the uidlist header too, so it outlives the copy's index files
        header = dict((f[0], f[1:]) for f in lines[0].split()[1:])
        assert int(header["N"]) == orig["Archive"].uidnext
        # and back into a new dbox
        lab.doveadm("backup", f"{fmt}:{copy}/back", user="alice.md")
        lab.add_user("alice.back", mail=f"{fmt}:{copy}/back", home=copy)
        assert lab.client_state("alice.back") == orig
        for f in os.listdir(f"{copy}/Maildir/.Archive"):
            if f.startswith("dovecot.index"):
                os.unlink(f"{copy}/Maildir/.Archive/{f}")
        lab.restart()
        assert lab.client_state("alice.md") == orig


# -- facts: holding deliveries ---------------------------------------------------------

def test_lmtp_hold_is_a_userdb_tempfail_for_the_lmtp_service_only(plain_lab):
    lab = plain_lab
    held, other = "alice", "bob"
    before = {u: lab.client_state(u) for u in (held, other)}
    lab.hold(held)
    try:
        replies = lab.deliver([held, other], message("while held"), check=False)
        assert replies[held][0] == 451 and replies[held][1].startswith("4.3.0")
        assert replies[other][0] == 250
        # IMAP and doveadm still work for the held login: only LMTP is refused
        with lab.imap(held) as c:
            c.select("INBOX")
        lab.doveadm("mailbox status", "messages", "INBOX", user=held)
        assert not new_messages(before[held], lab.client_state(held))
        assert len(new_messages(before[other], lab.client_state(other))) == 1
    finally:
        lab.release(held)
    replies = lab.deliver([held], message("after release"))
    assert [m for m in new_messages(before[held], lab.client_state(held))]


# -- the lab itself ---------------------------------------------------------------------

def test_client_state_is_read_over_imap_only(plain_lab, monkeypatch):
    """client_state must not look at files: with open() failing it still works."""
    import builtins
    lab = plain_lab
    lab.deliver(["carol"], message("imap only"))
    real_open = builtins.open

    def no_files(path, *a, **k):
        if isinstance(path, str) and path.startswith(lab.dir):
            raise AssertionError(f"client_state opened {path}")
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", no_files)
    st = lab.client_state("carol")
    assert st["INBOX"].messages


def test_lab_refuses_wrong_credentials_and_unknown_folders(plain_lab):
    import imaplib
    with pytest.raises(imaplib.IMAP4.error):
        LabImap(plain_lab.host, plain_lab.port, "alice", "wrong password")
    with plain_lab.imap("alice") as c, pytest.raises(LabImapError):
        c.select("No/Such/Folder")


def test_folder_names_that_need_quoting_round_trip(plain_lab):
    lab = plain_lab
    names = ["My Folder", "Caf&AOk-", "Caf&AOk-/Sub Dir"]        # Café in modified UTF-7
    with lab.imap("bob") as c:
        for n in names:
            c.create(n)
            c.subscribe(n)
            c.append(n, message(f"in {n}"), [r"\Seen"])
    state = lab.client_state("bob")
    for n in names:
        assert state[n].subscribed and len(state[n].messages) == 1
    assert os.path.isdir(os.path.join(lab.mailbox_path("bob", "INBOX"), ".Caf&AOk-.Sub Dir"))


def test_doveadm_offline_reads_the_account_named_in_the_environment(plain_lab):
    lab = plain_lab
    home = f"{lab.store}/carol"
    res = lab.doveadm("mailbox list", env={"USER": "carol", "HOME": home})
    assert "INBOX" in res.stdout.decode().split()


def test_a_missing_lmtp_server_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setattr(lab_module, "LMTP_BINARY", "/nonexistent/lmtp")
    monkeypatch.setattr(lab_module, "CI", True)
    with pytest.raises(pytest.fail.Exception, match="dovecot-lmtpd"):
        lab_module.require_lab()
    monkeypatch.setattr(lab_module, "CI", False)
    with pytest.raises(pytest.skip.Exception, match="dovecot-lmtpd"):
        lab_module.require_lab()
