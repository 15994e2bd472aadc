"""reconstruct on a store it did not make: a Maildir store that Dovecot filled (LMTP
deliveries to several logins, IMAP folders, flags, keywords, COPY, MOVE, EXPUNGE), read
back through Dovecot's IMAP as a client sees it.

Dovecot itself, finding a dovecot-uidlist gone, keeps the folder's UIDVALIDITY (from its
index) but gives every message a new UID (docs/dovecot.md); reconstruct, run while
Dovecot is stopped, must do better wherever a witness knows the UIDs, find every
message anyway, and leave Dovecot's indexes agreeing (doveadm force-resync)."""
from __future__ import annotations

import glob
import os
import shutil
import time

from asm.store.maildir import Uidlist
from tests.dovecot_lab import Lab, dovecot_lab, message
from tests.helpers import make_home, run

EXIT_PARTIAL = 1


def fill(lab: Lab) -> None:
    logins = lab.logins
    for i in range(6):
        lab.deliver(logins if i % 2 == 0 else logins[:1], message(f"delivered {i}", size=300 + 700 * i))
    with lab.imap("alice") as c:
        for f in ("Work", "Work/2024", "Team Notes"):
            c.create(f)
            c.subscribe(f)
        c.select("INBOX")
        c.uid_copy([1, 2], "Work")
        c.uid_move([3], "Team Notes")
        c.uid_store([1], "+FLAGS", ["\\Seen", "$Label1"])
        c.uid_store([4], "+FLAGS", ["\\Flagged", "$Todo", "Project"])
        c.uid_expunge([5])
        c.unselect()
        for n in range(4):
            c.append("Work/2024", message(f"appended {n}"), flags=["\\Seen"] if n % 2 else [],
                     internaldate=1_700_000_000 + 3600 * n)
    with lab.imap("bob") as c:
        c.select("INBOX")
        c.uid_store([1, 2], "+FLAGS", ["\\Answered", "$Forwarded"])
        c.unselect()


def view(lab: Lab) -> dict:
    return {login: lab.client_state(login) for login in lab.logins}


def setup(tmp_path, lab: Lab):
    home = tmp_path / "ims"
    make_home(home, "maildir", **{"partition:primary.path": lab.store, "store.owner": "vmail",
                                  "dovecot.config": lab.conf})
    return home


def uidlists(lab: Lab, login: str) -> list[str]:
    root = os.path.join(lab.store, login, "Maildir")
    return [os.path.join(root, "dovecot-uidlist")] + sorted(glob.glob(os.path.join(root, ".*", "dovecot-uidlist")))


def test_reconstruct_a_store_dovecot_filled(tmp_path):
    with dovecot_lab("plain") as lab:
        home = setup(tmp_path, lab)
        fill(lab)
        before = view(lab)
        run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
        lab.stop()

        # a healthy Dovecot store: nothing to repair
        run(home, "reconstruct", "-n", "-r", "/", check=0)
        # every uidlist of alice, bob's keywords, carol's tmp/ gone
        for p in uidlists(lab, "alice"):
            os.unlink(p)
        os.unlink(os.path.join(lab.store, "bob", "Maildir", "dovecot-keywords"))
        shutil.rmtree(os.path.join(lab.store, "carol", "Maildir", "tmp"))
        p = run(home, "reconstruct", "-v", "-r", "-a", tmp_path / "full.ims", "/", check=0)
        said = p.stderr.decode()
        assert "Traceback" not in said and "doveadm force-resync: Dovecot's indexes rebuilt" in said, said
        lab.start()
        assert view(lab) == before                 # UIDs, UIDVALIDITY, flags, keywords, GUIDs, bytes
        lab.stop()

        # no witness at all: every message is found; the UIDs alice's client knew are lost, named
        for p in uidlists(lab, "alice"):
            os.unlink(p)
        p = run(home, "reconstruct", "-r", "--no-journal", "/primary/alice", check=EXIT_PARTIAL)
        assert "UIDs are known nowhere" in p.stderr.decode()
        lab.start()
        after = view(lab)
        for f, st in before["alice"].folders.items():
            assert sorted(m.sha256 for m in st.messages) == sorted(m.sha256 for m in after["alice"][f].messages)
            assert sorted(m.guid for m in st.messages) == sorted(m.guid for m in after["alice"][f].messages)
        assert after["bob"] == before["bob"] and after["carol"] == before["carol"]


def test_a_uidlist_older_than_dovecots_index(tmp_path):
    """The uidlist comes back from before the last deliveries while Dovecot's index (and
    the messages) are newer: Dovecot alone would renumber; reconstruct gives the new
    messages their UIDs from an incremental, or new UIDs above all Dovecot had seen."""
    with dovecot_lab("plain") as lab:
        home = setup(tmp_path, lab)
        fill(lab)
        run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
        time.sleep(1.1)
        since = time.strftime("%Y%m%d:%H%M%S")
        old = {p: open(p, "rb").read() for p in uidlists(lab, "alice")}
        time.sleep(1.1)
        for i in range(3):
            lab.deliver(["alice"], message(f"late {i}"))
        with lab.imap("alice") as c:
            c.select("INBOX")
            c.fetch_meta()
            c.unselect()
        run(home, "imsbackup", "-f", tmp_path / "incr.ims", "-d", since, "/", check=0)
        want = lab.client_state("alice")
        lab.stop()

        def put_back_old():
            for p, data in old.items():
                with open(p, "wb") as f:
                    f.write(data)
                os.chown(p, lab.uid, lab.gid)

        put_back_old()
        p = run(home, "reconstruct", "-r", "-a", tmp_path / "full.ims", "-a", tmp_path / "incr.ims",
                "/primary/alice", check=0)
        assert "Traceback" not in p.stderr.decode()
        lab.start()
        assert lab.client_state("alice") == want
        lab.stop()

        put_back_old()
        p = run(home, "reconstruct", "-r", "--no-journal", "/primary/alice", check=EXIT_PARTIAL)
        assert "Dovecot's index" in p.stderr.decode()
        lab.start()
        got = lab.client_state("alice")
        inbox_want, inbox_got = want["INBOX"].by_uid(), got["INBOX"].by_uid()
        first = Uidlist.parse(old[uidlists(lab, "alice")[0]].decode())
        late = {m.sha256 for m in want["INBOX"].messages if m.uid not in first.records}
        # every message is there; none took a UID the client had seen for another message
        assert sorted(m.sha256 for m in got["INBOX"].messages) == sorted(m.sha256 for m in want["INBOX"].messages)
        for uid, m in inbox_got.items():
            if uid in inbox_want:
                assert inbox_want[uid].sha256 == m.sha256
        assert got["INBOX"].uidvalidity == want["INBOX"].uidvalidity
        assert len(late) == 3          # numbered anew, above every UID Dovecot had given
        assert min(u for u, m in inbox_got.items() if m.sha256 in late) >= want["INBOX"].uidnext


def test_reconstruct_gives_back_guids_a_file_name_cannot_carry(tmp_path):
    """On a zlib Maildir (zlib_save = gz) a file's name states the uncompressed size
    (S=), so a file back from a file backup under another name cannot be given its
    archived name again, and Dovecot takes the file's base name for its X-GUID unless the
    uidlist's G field says otherwise: reconstruct -a writes the archived GUID as G, as a
    restore does.  (Before, the rebuilt uidlist had no G field: the X-GUIDs of the
    renamed files changed, UIDs, flags and bytes came back.)"""
    with dovecot_lab("zlib", logins=["alice", "bob"]) as lab:
        fill(lab)
        before = view(lab)
        home = setup(tmp_path, lab)
        run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
        lab.stop()
        inbox = os.path.join(lab.store, "alice", "Maildir")
        for p in [os.path.join(inbox, "dovecot-uidlist")] + glob.glob(os.path.join(inbox, "dovecot.index*")):
            os.unlink(p)
        files = sorted(glob.glob(os.path.join(inbox, "cur", "*")))
        assert len(files) >= 2, files
        for n, path in enumerate(files):
            name = os.path.basename(path)
            os.rename(path, os.path.join(inbox, "cur", f"1700000000.M{n}P1.filebackup" + name[name.index(","):]))
        p = run(home, "reconstruct", "-r", "-a", tmp_path / "full.ims", "/primary/alice", check=0, text=True)
        assert "Traceback" not in p.stderr, p.stderr
        lab.start()
        assert view(lab) == before                 # UIDs, flags, keywords, bytes, and the GUIDs


def test_two_message_files_with_one_base_name_are_both_kept_and_dovecot_agrees(tmp_path):
    """Two files of a Maildir with one base name, each another message (the delivered
    file and a cur/ one beside it; two cur/ files of a base the uidlist lacks), and two
    hard links of one file: reconstruct keeps every message as the backup and Dovecot's
    maildir_fix_duplicate do.  The file the uidlist's UID stays with is cur/'s (then the
    smallest name), the other gets a new unique base name (sizes and flags kept) and a
    new UID, and each is said; the links stay one message.  Afterwards every file's
    bytes are there under a base name of its own with a UID in the uidlist, and Dovecot
    serving the folder shows each message once, under that UID.  Before, reconstruct
    read one file per base name and numbered nothing for the other."""
    import hashlib

    from asm.store.maildir.uidlist import read_uidlist
    with dovecot_lab("plain", logins=["alice"]) as lab:
        home = setup(tmp_path, lab)
        lab.deliver(["alice"], message("delivered"))
        lab.stop()
        inbox = os.path.join(lab.store, "alice", "Maildir")
        (first,) = glob.glob(os.path.join(inbox, "new", "*")) + glob.glob(os.path.join(inbox, "cur", "*"))
        base = os.path.basename(first).partition(":")[0]
        other = os.path.join(inbox, "cur", base + ":2,S") if "/new/" in first else os.path.join(inbox, "new", base)
        with open(first, "rb") as f:
            bodies = {first: f.read()}
        # (the same size: its name's S= and W= are the delivered file's)
        for path, data in ((other, bodies[first].replace(b"delivered", b"Delivered")),
                           (os.path.join(inbox, "cur", "1700000100.M2P2.mda:2,S"), message("C seen")),
                           (os.path.join(inbox, "cur", "1700000100.M2P2.mda:2,F"), message("C flagged")),
                           (os.path.join(inbox, "new", "1700000200.M3P3.mda"), message("D linked"))):
            bodies[path] = data
            with open(path, "wb") as f:
                f.write(bodies[path])
        os.link(os.path.join(inbox, "new", "1700000200.M3P3.mda"), os.path.join(inbox, "cur", "1700000200.M3P3.mda:2,"))
        lab.fix_owner()
        uid_before = read_uidlist(inbox).by_base()[base]
        p = run(home, "reconstruct", "-v", "-r", "/primary/alice", check=0, text=True)
        said = p.stderr
        assert "Traceback" not in said, said
        assert said.count("is a second message with the base name of") == 2, said
        assert "are two links of one file: one message" in said, said

        on_disk = {}                                  # base -> (bytes, flag letters), one per inode
        inodes = set()
        for sub in ("new", "cur"):
            for name in sorted(os.listdir(os.path.join(inbox, sub))):
                st = os.stat(os.path.join(inbox, sub, name))
                if (st.st_dev, st.st_ino) in inodes:
                    continue
                inodes.add((st.st_dev, st.st_ino))
                b, _, info = name.partition(":")
                assert b not in on_disk, name
                with open(os.path.join(inbox, sub, name), "rb") as f:
                    on_disk[b] = (f.read(), info[2:])
        assert sorted(d for d, _ in on_disk.values()) == sorted(set(bodies.values()))
        uids = read_uidlist(inbox).by_base()
        assert set(on_disk) <= set(uids), (sorted(on_disk), uids)
        kept = os.path.join(inbox, "cur", base + ":2,S") if "/new/" in first else first
        assert uids[base] == uid_before and on_disk[base][0] == bodies[kept]
        assert {on_disk[b][1] for b in on_disk if on_disk[b][0] in (message("C seen"), message("C flagged"))} \
            == {"S", "F"}
        lab.start()
        got = lab.client_state("alice")["INBOX"].messages

        def served(data: bytes) -> str:              # (IMAP gives CRLF lines; Dovecot stores LF)
            return hashlib.sha256(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")).hexdigest()
        assert sorted((m.uid, m.sha256) for m in got) == sorted((uids[b], served(d)) for b, (d, _) in on_disk.items())
        flags = {m.sha256: m.flags for m in got}
        assert "\\Seen" in flags[hashlib.sha256(message("C seen")).hexdigest()]
        assert "\\Flagged" in flags[hashlib.sha256(message("C flagged")).hexdigest()]


def test_a_folder_whose_cur_is_gone_with_its_messages_is_named_lost(tmp_path):
    """A file-level recovery that did not bring a folder's messages back (an INBOX=
    tree the file backup did not hold), with its uidlist put back from the disaster
    backup: its lines are lost mail, not expunged (Dovecot never removes cur/), so
    reconstruct names them and exits 1; a file Dovecot expunged (cur/ there) is a note."""
    with dovecot_lab("plain") as lab:
        home = setup(tmp_path, lab)
        fill(lab)
        lab.stop()
        bob = os.path.join(lab.store, "bob", "Maildir")
        shutil.rmtree(os.path.join(bob, "cur"))
        shutil.rmtree(os.path.join(bob, "new"))
        p = run(home, "reconstruct", "-r", "--no-journal", "/primary/bob", check=EXIT_PARTIAL)
        said = p.stderr.decode()
        assert "/primary/bob/INBOX" in said and "lost, not expunged" in said, said
        assert "imsrestore -f ARCHIVE /primary/bob/INBOX" in said, said
        # a message file gone from a folder whose cur/ is there: Dovecot's expunge, exit 0
        carol = sorted(glob.glob(os.path.join(lab.store, "carol", "Maildir", "new", "*"))
                       + glob.glob(os.path.join(lab.store, "carol", "Maildir", "cur", "*")))
        os.unlink(carol[0])
        p = run(home, "reconstruct", "-v", "-r", "--no-journal", "/primary/carol", check=0)
        assert "expunged by Dovecot, or lost" in p.stderr.decode()
