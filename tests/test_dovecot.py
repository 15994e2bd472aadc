"""Round trips between the maildir driver and a real Dovecot 2.3 over IMAP.

(1) A store the driver wrote is served by Dovecot exactly: UIDVALIDITY, UIDNEXT, UIDs
with gaps, flags, keywords, INTERNALDATE, bytes, folders and subscriptions.
(2) Mail that Dovecot stored (APPEND, STORE, EXPUNGE) is read back exactly by the driver.
"""
from __future__ import annotations

import io
import re
from datetime import datetime

from asm.store import utf7
from asm.store.maildir import MaildirStore
from tests.dovecot import maildir_config

_HEAD = re.compile(rb"UID (\d+) FLAGS \(([^)]*)\) INTERNALDATE \"([^\"]+)\" RFC822\.SIZE (\d+)")
_LIST = re.compile(rb'^\(([^)]*)\) (?:NIL|"(?:[^"\\]|\\.)*") (.*)$')


def q(name: str) -> str:
    """A logical folder name as an IMAP quoted string (modified UTF-7)."""
    return '"' + utf7.encode(name).replace("\\", "\\\\").replace('"', '\\"') + '"'


def idate(text: bytes) -> float:
    return datetime.strptime(text.decode(), "%d-%b-%Y %H:%M:%S %z").timestamp()


def imap_folder(c, name: str) -> dict:
    """What an IMAP client sees of one folder."""
    typ, _ = c.select(q(name), readonly=True)
    assert typ == "OK", (name, _)
    uv = int(c.response("UIDVALIDITY")[1][0])
    un = int(c.response("UIDNEXT")[1][0])
    msgs = {}
    typ, data = c.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
    assert typ == "OK"
    for item in data:
        if isinstance(item, tuple):
            m = _HEAD.search(item[0])
            flags = frozenset(f for f in m.group(2).decode().split() if f != "\\Recent")
            assert int(m.group(4)) == len(item[1])
            msgs[int(m.group(1))] = (flags, idate(m.group(3)), item[1])
    c.close()
    return {"uidvalidity": uv, "uidnext": un, "messages": msgs}


def _names(lines) -> dict:
    """LIST/LSUB answer -> {logical name: attributes}."""
    out = {}
    items = list(lines)
    i = 0
    while i < len(items):
        it = items[i]
        if isinstance(it, tuple):                     # name sent as a literal
            head, name = it[0], it[1]
            attrs = re.match(rb"^\(([^)]*)\)", head).group(1)
            i += 2
        else:
            if it is None:
                i += 1
                continue
            m = _LIST.match(it)
            attrs, name = m.group(1), m.group(2)
            if name.startswith(b'"'):
                name = re.sub(rb"\\(.)", rb"\1", name[1:-1])
            i += 1
        out[utf7.decode(name.decode())] = set(attrs.decode().split())
    return out


def store_view(s: MaildirStore, user: str, folder: str) -> dict:
    snap = s.snapshot(user, folder)
    msgs = {}
    for m in snap.messages:
        with s.open_message(user, folder, m.uid) as f:
            msgs[m.uid] = (frozenset(m.flags) | frozenset(m.keywords), float(int(m.internaldate)), f.read())
    return {"uidvalidity": snap.info.uidvalidity, "uidnext": snap.info.uidnext, "messages": msgs}


def body(n: int, extra: str = "") -> bytes:
    return (f"From: sender{n}@example.com\r\nSubject: message {n} {extra}\r\n"
            f"Message-ID: <{n}@example.com>\r\n\r\nbody {n} ä\r\n").encode()


# -- (1) the driver writes, Dovecot serves --------------------------------------------------

LAYOUT = {
    # folder: (uidvalidity, uidnext, subscribed, [(uid, flags, internaldate)])
    "INBOX": (1111, 30, True, [(3, ["\\Seen"], 1262304000), (7, ["\\Answered", "$Label1"], 1300000000),
                               (8, [], 1400000000), (20, ["\\Flagged", "\\Deleted", "Important"], 1500000000)]),
    "Work": (2222, 5, True, [(1, ["\\Draft"], 1000000000), (4, ["$Label1", "$Label2", "NonJunk"], 1000000100)]),
    "Work/2023": (3333, 100, False, [(50, ["\\Seen", "\\Flagged"], 1672531200)]),
    "Café/Réunions": (4444, 3, True, [(1, ["\\Seen", "Privé"], 1700000000)]),
    "with space %;": (5555, 1, False, []),
    "INBOX/Sub": (6666, 12, True, [(11, [], 1710000000)]),
}


def _write_layout(s: MaildirStore, user: str, tag: str) -> dict:
    expect = {}
    for folder, (uv, un, sub, msgs) in LAYOUT.items():
        if folder == "INBOX":
            s.set_folder(user, folder, uidvalidity=uv, uidnext=un, subscribed=sub)
        else:
            s.create_folder(user, folder, uidvalidity=uv, uidnext=un, subscribed=sub)
        want = {}
        for uid, flags, date in msgs:
            data = body(uid, f"{tag} {folder}")
            system = [f for f in flags if f.startswith("\\")]
            kws = [f for f in flags if not f.startswith("\\")]
            m = s.append(user, folder, io.BytesIO(data), uid=uid, flags=system, keywords=kws,
                         internaldate=date, stored=date + 60)
            assert m.uid == uid
            want[uid] = (frozenset(flags), float(date), data)
        expect[folder] = {"uidvalidity": uv, "uidnext": un, "messages": want}
    return expect


def test_store_written_by_driver_is_served_by_dovecot(dovecot, tmp_path):  # noqa: F811
    s = MaildirStore(maildir_config(str(tmp_path / "ims"), dovecot.store))
    expected = {}
    for user in ("alice", "bob"):
        s.create_user(user)
        dovecot.add_user(user)
        expected[user] = _write_layout(s, user, user)
    for user in ("alice", "bob"):
        c = dovecot.imap(user)
        try:
            typ, lst = c.list()
            names = _names(lst)
            for folder in LAYOUT:
                assert folder in names and "\\Noselect" not in names[folder]
            assert "\\Noselect" in names["Café"]          # implied parent
            typ, lsub = c.lsub()
            assert set(_names(lsub)) == {f for f, v in LAYOUT.items() if v[2]}
            for folder in LAYOUT:
                assert imap_folder(c, folder) == expected[user][folder], (user, folder)
        finally:
            c.logout()
    assert "Error" not in dovecot.log() and "Panic" not in dovecot.log(), dovecot.log()


def test_driver_changes_a_folder_dovecot_has_indexed(dovecot, tmp_path):  # noqa: F811
    """A restore-like rewrite (new UIDVALIDITY, old UIDs back) wins over Dovecot's index."""
    s = MaildirStore(maildir_config(str(tmp_path / "ims"), dovecot.store))
    s.create_user("carol")
    dovecot.add_user("carol")
    s.create_folder("carol", "Box", uidvalidity=10, uidnext=1)
    for i in range(3):
        s.append("carol", "Box", io.BytesIO(body(i)), internaldate=1500000000 + i)
    c = dovecot.imap("carol")
    before = imap_folder(c, "Box")
    assert sorted(before["messages"]) == [1, 2, 3] and before["uidvalidity"] == 10
    c.logout()
    # Dovecot has indexed it; now expunge, put UID 2 back, and change the folder's numbers
    s.expunge("carol", "Box", [2, 3])
    c = dovecot.imap("carol")
    assert sorted(imap_folder(c, "Box")["messages"]) == [1]
    c.logout()
    with s.lock("carol", "Box"):
        s.append("carol", "Box", io.BytesIO(body(2, "again")), uid=2, flags=["\\Seen"],
                 internaldate=1500000002)
        s.set_folder("carol", "Box", uidnext=40)
    s.set_flags("carol", "Box", 1, ["\\Flagged"], ["Later"])
    c = dovecot.imap("carol")
    got = imap_folder(c, "Box")
    c.logout()
    assert got["uidnext"] == 40 and sorted(got["messages"]) == [1, 2]
    assert got["messages"][2] == (frozenset({"\\Seen"}), 1500000002.0, body(2, "again"))
    assert got["messages"][1][0] == {"\\Flagged", "Later"}
    # and a folder deleted and recreated with another UIDVALIDITY
    s.delete_folder("carol", "Box")
    s.create_folder("carol", "Box", uidvalidity=77, uidnext=9, subscribed=True)
    s.append("carol", "Box", io.BytesIO(body(8)), uid=8, internaldate=1600000000)
    c = dovecot.imap("carol")
    got = imap_folder(c, "Box")
    c.logout()
    assert (got["uidvalidity"], got["uidnext"], sorted(got["messages"])) == (77, 9, [8])
    assert "Error" not in dovecot.log() and "Panic" not in dovecot.log(), dovecot.log()


# -- (2) Dovecot writes, the driver reads ----------------------------------------------------

def test_mail_stored_by_dovecot_is_read_back_exactly(dovecot, tmp_path):  # noqa: F811
    dovecot.add_user("dave")
    c = dovecot.imap("dave")
    folders = ["INBOX", "Archive/2022", "Privé", "Lists/ietf;x"]
    for f in folders[1:]:
        assert c.create(q(f))[0] == "OK"
    assert c.subscribe(q("Archive/2022"))[0] == "OK"
    assert c.subscribe(q("Privé"))[0] == "OK"
    n = 0
    for f in folders:
        for flags in ["", "\\Seen", "\\Seen \\Flagged $Label1", "\\Answered Important", "\\Draft",
                      "\\Deleted $Label2 $Label1"]:
            n += 1
            date = 1600000000 + n * 86400 + n
            typ, _ = c.append(q(f), f"({flags})" if flags else None,
                              f'"{datetime.utcfromtimestamp(date).strftime("%d-%b-%Y %H:%M:%S")} +0000"',
                              body(n, f))
            assert typ == "OK", _
    c.select(q("INBOX"))
    c.uid("STORE", "2", "+FLAGS", "(\\Deleted)")
    c.expunge()
    c.uid("STORE", "3", "FLAGS", "(\\Answered NewKeyword)")
    c.select(q("Privé"))
    c.uid("STORE", "1:*", "+FLAGS", "(\\Seen)")
    c.uid("STORE", "5", "-FLAGS", "(\\Seen \\Draft)")
    c.close()
    seen = {f: imap_folder(c, f) for f in folders}
    lsub = set(_names(c.lsub()[1]))
    c.logout()

    s = MaildirStore(maildir_config(str(tmp_path / "ims"), dovecot.store))
    assert [f.name for f in s.folders("dave")] == sorted(folders, key=lambda x: (x != "INBOX", x))
    assert {f.name for f in s.folders("dave") if f.subscribed} == lsub == {"Archive/2022", "Privé"}
    for f in folders:
        # Dovecot saves lines ending in LF and serves them as CRLF (RFC822.SIZE is that
        # virtual size): the driver hands out the bytes on disk, which IMAP shows with CRLF
        view = store_view(s, "dave", f)
        for uid, (flags, date, data) in view["messages"].items():
            assert b"\r\n" not in data
            view["messages"][uid] = (flags, date, data.replace(b"\n", b"\r\n"))
        assert view == seen[f], f
    assert sorted(seen["INBOX"]["messages"]) == [1, 3, 4, 5]          # 2 and \Deleted 6 expunged
    assert seen["INBOX"]["messages"][3][0] == {"\\Answered", "NewKeyword"}
    sizes = {m.uid: m.size for m in s.messages("dave", "INBOX")}
    assert sizes == {u: len(v[2]) - v[2].count(b"\n") for u, v in seen["INBOX"]["messages"].items()}


def test_unseen_files_get_uids_dovecot_agrees_with(dovecot, tmp_path):  # noqa: F811
    """A file dropped into new/ (an MDA) gets its UID from the driver; Dovecot keeps it."""
    import os
    s = MaildirStore(maildir_config(str(tmp_path / "ims"), dovecot.store))
    s.create_user("erin")
    dovecot.add_user("erin")
    s.append("erin", "INBOX", io.BytesIO(body(1)))
    new = os.path.join(dovecot.store, "erin", "Maildir", "new", "1700000000.M1P1.mda")
    with open(new, "wb") as f:
        f.write(body(2))
    dovecot.fix_owner()
    snap = s.snapshot("erin", "INBOX")
    assert [m.uid for m in snap.messages] == [1, 2]
    c = dovecot.imap("erin")
    got = imap_folder(c, "INBOX")
    c.logout()
    assert sorted(got["messages"]) == [1, 2] and got["messages"][2][2] == body(2)


def test_driver_and_dovecot_share_dovecot_uidvalidity(dovecot, tmp_path):  # noqa: F811
    """The driver gives a new folder its UIDVALIDITY as Dovecot does, through the user's
    dovecot-uidvalidity: a folder Dovecot makes next gets a higher one, and a folder the
    driver deletes and makes again never gets one that name or another had."""
    s = MaildirStore(maildir_config(str(tmp_path / "ims"), dovecot.store))
    s.create_user("alice")
    dovecot.add_user("alice")
    v1 = s.create_folder("alice", "Work").uidvalidity
    c = dovecot.imap("alice")
    try:
        assert c.create("New")[0] == "OK"
        typ, data = c.status("New", "(UIDVALIDITY)")
        v_new = int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))
    finally:
        c.logout()
    assert v_new > v1
    s.delete_folder("alice", "Work")
    v2 = s.create_folder("alice", "Work").uidvalidity
    assert v2 > v_new
    assert "Error" not in dovecot.log() and "Panic" not in dovecot.log(), dovecot.log()


def test_two_files_with_one_base_name_are_two_messages_dovecot_agrees_with(dovecot, tmp_path):  # noqa: F811
    """new/B beside cur/B:2,S and cur/C:2,S beside cur/C:2,F, each another message: the
    backup gives the second of each pair a base name and a UID of its own (as Dovecot's
    maildir_fix_duplicate does) and archives all five; Dovecot serving the store then has
    the same five messages under the same UIDs, with the same flags."""
    import os

    from tests.helpers import run
    from tests.test_maildir import archived_messages
    home = tmp_path / "ims"
    s = MaildirStore(maildir_config(str(home), dovecot.store))
    s.create_user("fred")
    dovecot.add_user("fred")
    s.append("fred", "INBOX", io.BytesIO(body(1)), flags=["\\Seen"])
    r = os.path.join(dovecot.store, "fred", "Maildir")
    for name, n in (("new/1700000000.M1P1.mda", 2), ("cur/1700000000.M1P1.mda:2,S", 3),
                    ("cur/1700000100.M2P2.mda:2,S", 4), ("cur/1700000100.M2P2.mda:2,F", 5)):
        with open(os.path.join(r, name), "wb") as f:
            f.write(body(n))
    dovecot.fix_owner()
    run(home, "imsbackup", "-f", tmp_path / "a.ims", "/", check=0)
    got = archived_messages(tmp_path / "a.ims")[("fred", "INBOX")]
    assert sorted(data for data, _ in got.values()) == sorted(body(n) for n in range(1, 6))
    c = dovecot.imap("fred")
    seen = imap_folder(c, "INBOX")["messages"]
    c.logout()
    assert {uid: (data.replace(b"\r\n", b"\n"), flags) for uid, (flags, _d, data) in seen.items()} == \
        {uid: (data.replace(b"\r\n", b"\n"), flags) for uid, (data, flags) in got.items()}
