"""A backup while clients change flags: Dovecot renames a Maildir message's file at every
flag change, so a file the backup listed may have another name when it is read, and
readdir() may miss a file renamed while the directory is read.  Every message must be in
every archive all the same (asm/store/maildir/store.py: list_messages, and the snapshot
and the writer looking again, as Dovecot's own readers do).

Before this was so, a backup of 3,000 messages while a client flagged and unflagged them
exited 0 with 20-25 of them left out of the archive (in 5 of 8 runs)."""
from __future__ import annotations

import io
import re
import shutil
import threading

from tests.dovecot_lab import lab_fixture, message
from tests.helpers import run
from tests.test_dovecot_layouts import configure

lab = lab_fixture("plain")

N_MESSAGES = 2500
BACKUPS = 5


def listed(home, archive) -> tuple[dict, set]:
    """({(login, folder): its member's uids= count}, {(login, folder, UID) of each
    message}) of an archive, from imsrestore -t."""
    out = run(home, "imsrestore", "-f", archive, "-t", check=0, text=True).stdout
    counts, msgs = {}, set()
    for line in out.splitlines():
        path = line.split("\t", 1)[0]
        folder = re.search(r"\tuidvalidity=\d+ uidnext=\d+ uids=(\d+)", line)
        m = re.fullmatch(r"/primary/([^/]+)/(.+)/(\d+)", path)
        if folder:
            login, _, name = path[len("/primary/"):].partition("/")
            counts[(login, name)] = int(folder.group(1))
        elif m:
            msgs.add((m.group(1), m.group(2), int(m.group(3))))
    return counts, msgs


def test_every_message_is_in_every_archive_while_a_client_changes_flags(lab, tmp_path):
    from asm.config import Config
    from asm.store import open_store
    u = lab.logins[0]
    home = tmp_path / "ims"
    configure(lab, home)
    lab.deliver([u], message("first, by LMTP"))
    store = open_store(Config(home=str(home)))
    with store.batch(), store.lock(u, "INBOX"):
        for i in range(N_MESSAGES):
            store.append(u, "INBOX", io.BytesIO(message(f"m {i}", body=f"message {i}", size=300 + i % 700)),
                         internaldate=1700000000 + i)
    lab.fix_owner()
    before = lab.client_state(u)["INBOX"]
    want = {m.uid for m in before.messages}
    assert len(want) == N_MESSAGES + 1

    stop = threading.Event()
    stores = [0]
    failed: list[BaseException] = []

    def client() -> None:
        # a client that flags and unflags every message, again and again: Dovecot
        # renames each file in cur/ every time
        try:
            with lab.imap(u) as c:
                c.select("INBOX")
                while not stop.is_set():
                    c.uid_store("1:*", "+FLAGS", [r"\Flagged"])
                    c.uid_store("1:*", "-FLAGS", [r"\Flagged"])
                    stores[0] += 2
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            failed.append(exc)
    t = threading.Thread(target=client)
    t.start()
    results = []
    try:
        for i in range(BACKUPS):
            archive = tmp_path / f"b{i}.ims"
            p = run(home, "imsbackup", "-f", archive, f"/primary/{u}", check=None, text=True)
            counts, msgs = listed(home, archive)
            results.append((p.returncode, p.stderr.strip()[-300:], counts.get((u, "INBOX")),
                            {uid for (_, f, uid) in msgs if f == "INBOX"}))
    finally:
        stop.set()
        t.join(timeout=60)
    assert not failed, failed
    assert stores[0] >= 2 * BACKUPS, stores      # the client really renamed files meanwhile
    for code, err, count, uids in results:
        assert (code, count, len(uids)) == (0, len(want), len(want)), (code, err, count, len(uids))
        assert uids == want

    # the last archive gives every message back, byte for byte, under its UID
    shutil.rmtree(lab.mailbox_path(u, "INBOX"))
    run(home, "imsrestore", "-f", tmp_path / f"b{BACKUPS - 1}.ims", check=0)
    after = lab.client_state(u)["INBOX"]
    assert after.uidvalidity == before.uidvalidity
    assert {m.uid: m.sha256 for m in after.messages} == {m.uid: m.sha256 for m in before.messages}


def test_a_uid_no_listing_found_while_the_folder_changed_at_every_read_is_named(tmp_path, monkeypatch):
    """The folder changed at every one of list_messages' reads and one file was in none
    of them: renamed out of sight each time, or expunged; the snapshot cannot tell, so
    it names the UID (the backup exits 1) rather than take it for expunged."""
    import os

    import asm.store.maildir.store as ms
    from asm.store import open_store
    from tests.helpers import make_home, put
    store = open_store(make_home(tmp_path / "ims", driver="maildir"))
    for i in range(5):
        put(store, "alice", "INBOX", i)
    hidden = os.path.basename(store.message("alice", "INBOX", 3).path).partition(":")[0]
    real = ms.list_messages

    def unsettled(d, before=None, clashes=None):
        files, whole = real(d, before, clashes)
        assert whole
        return {b: v for b, v in files.items() if b != hidden}, False
    monkeypatch.setattr(ms, "list_messages", unsettled)
    snap = store.snapshot("alice", "INBOX")
    assert [m.uid for m in snap.messages] == [1, 2, 4, 5]
    assert len(snap.warnings) == 1 and "1 messages (UIDs 3) were not found" in snap.warnings[0]

    # the same listing, but the folder held still at the last read: UID 3 was expunged
    monkeypatch.setattr(ms, "list_messages", lambda d, before=None, clashes=None: (unsettled(d, before, clashes)[0], True))
    snap = store.snapshot("alice", "INBOX")
    assert [m.uid for m in snap.messages] == [1, 2, 4, 5] and snap.warnings == []

    # renamed out of sight at the first listings only (3 clients setting flags on 1:*
    # kept 80 of a folder's messages out of 11 listings back to back, CI): looked for in
    # listings a little apart, it is found, and nothing is named
    for hidden_for in (1, 3, 8):
        calls = [0]

        def for_a_while(d, before=None, clashes=None, n=hidden_for):
            calls[0] += 1
            files, _whole = real(d, before, clashes)
            if calls[0] <= n:
                return {b: v for b, v in files.items() if b != hidden}, False
            return files, False
        monkeypatch.setattr(ms, "list_messages", for_a_while)
        snap = store.snapshot("alice", "INBOX")
        assert [m.uid for m in snap.messages] == [1, 2, 3, 4, 5] and snap.warnings == [], (hidden_for, snap.warnings)


def test_mail_no_client_moved_is_in_every_archive_taken_while_clients_work(lab, tmp_path):
    """Backups of the whole store while every login's client works at random (flags on
    some or all messages, COPY, MOVE, EXPUNGE, APPEND, LMTP): each message that was there
    when the backup began, and that no client expunged or moved until it ended, is in
    the archive under its UID; every backup exits 0, or 1 naming only messages moved
    past it (tests/test_backup_moves.py)."""
    import random
    import time
    rnd = random.Random(7)
    home = tmp_path / "ims"
    configure(lab, home)
    folders = ["INBOX", "Work", "Arch/2024"]
    for u in lab.logins:
        with lab.imap(u) as c:
            for f in folders[1:]:
                c.create(f)
            for f in folders:
                for i in range(rnd.randint(60, 160)):
                    c.append(f, message(f"{u} {f} {i}", size=rnd.randrange(3000)),
                             flags=rnd.choice([[], [r"\Seen"], ["$X"]]))
    for r in range(3):
        kept = set()                      # (login, folder, uid) no client may expunge or move
        for u in lab.logins:
            st = lab.client_state(u)
            kept |= {(u, f, m.uid) for f in folders for m in st[f].messages if rnd.random() < 0.6}
        stop = threading.Event()
        failed: list = []
        ops = [0]

        def client(u, crnd):
            try:
                with lab.imap(u) as c:
                    while not stop.is_set():
                        f = crnd.choice(folders)
                        c.select(f)
                        uids = c.uids()
                        free = [x for x in uids if (u, f, x) not in kept]
                        other = crnd.choice([x for x in folders if x != f])
                        op = crnd.choice(["flags", "flags", "flags", "all", "copy", "move", "expunge",
                                          "append", "lmtp"])
                        if op == "flags" and uids:
                            c.uid_store(crnd.sample(uids, min(len(uids), crnd.randint(1, 30))),
                                        crnd.choice(["+FLAGS", "-FLAGS", "FLAGS"]),
                                        crnd.choice([[r"\Seen"], [r"\Flagged", "$Y"], []]))
                        elif op == "all":
                            c.uid_store("1:*", crnd.choice(["+FLAGS", "-FLAGS"]), [r"\Answered"])
                        elif op == "copy" and uids:
                            c.uid_copy(crnd.sample(uids, min(len(uids), 5)), other)
                        elif op == "move" and free:
                            c.uid_move(crnd.sample(free, min(len(free), 3)), other)
                        elif op == "expunge" and free:
                            c.uid_expunge(crnd.sample(free, min(len(free), 3)))
                        elif op == "append":
                            c.append(f, message(f"live {r} {ops[0]}", size=crnd.randrange(3000)))
                        elif op == "lmtp":
                            lab.deliver([u], message(f"lmtp {r} {ops[0]}"))
                        c.unselect()
                        ops[0] += 1
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                failed.append(exc)
        threads = [threading.Thread(target=client, args=(u, random.Random(r * 10 + i)))
                   for i, u in enumerate(lab.logins)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        archive = tmp_path / f"r{r}.ims"
        try:
            p = run(home, "imsbackup", "-f", archive, "/", text=True)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert not failed, failed
        assert ops[0] >= 10, ops[0]
        # exit 0; or 1 naming only what a client moved into a folder already read from
        # one read after it left (in no folder of the archive: tests/test_backup_moves.py)
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith("imsbackup: could not back up")]
        assert p.returncode == 0 or (p.returncode == 1 and errors and all(
            "came into this folder during the backup" in ln for ln in errors)), (p.returncode, p.stderr[-800:])
        got = listed(home, archive)[1]
        assert sorted(kept - got) == [], (r, len(kept - got))


def test_a_folder_dovecot_deletes_while_a_backup_reads_it_is_no_error(tmp_path, monkeypatch):
    """IMAP DELETE during a backup (found 1 in 6 backups racing a client that deletes
    folders: exit 1).  Two moments: the folder went between the listing and its lock
    (the dotlock could not be made in its directory: 'cannot write ... No such file or
    directory'), and Dovecot's DELETE had renamed it to ..DOVECOT-TRASHED, which was
    named as 'no Maildir++ folder name'.  Both are a folder deleted after the run listed
    it: not in the archive, never an error (docs/operations.md, Consistency)."""
    import os

    from asm.store import open_store
    from asm.store.base import NoSuchFolder
    from tests.helpers import make_home, put
    home = tmp_path / "ims"
    store = open_store(make_home(home, driver="maildir"))
    for i in range(3):
        put(store, "alice", "INBOX", i)
        put(store, "alice", "Gone", i)
    gone = store._folder_dir("alice", "Gone")
    real = store._acquire_dotlock

    def deleted_first(path, *a):
        if path.startswith(gone + "/"):
            shutil.rmtree(gone)
        return real(path, *a)
    monkeypatch.setattr(store, "_acquire_dotlock", deleted_first)
    monkeypatch.setattr(store, "_read_only_snapshot", lambda *a: None)    # the locked way
    try:
        store.snapshot("alice", "Gone")
    except NoSuchFolder:
        pass
    else:
        raise AssertionError("a snapshot of a folder deleted before its lock was taken")
    assert not os.path.exists(gone)

    # Dovecot's DELETE, caught half way: the folder renamed to ..DOVECOT-TRASHED
    trashed = os.path.join(os.path.dirname(gone), "..DOVECOT-TRASHED")
    shutil.copytree(store._folder_dir("alice", "INBOX") + "/cur", os.path.join(trashed, "cur"))
    os.makedirs(os.path.join(trashed, "new"))
    p = run(home, "imsbackup", "-f", tmp_path / "full.ims", "/", check=0)
    assert p.stderr == b"", p.stderr


def test_a_folder_deleted_and_made_again_while_a_backup_reads_it_is_never_half_or_mixed(tmp_path, monkeypatch):
    """A client's DELETE then CREATE of one name while the backup reads that folder (found
    racing mboxutil-like deletes and re-creates against imsbackup: exit 0 with the old
    folder's UIDVALIDITY and 71 or 623 of its 1,500 messages, no line).  The messages
    not read by then did not vanish one by one, and a UID of the new folder is not the
    old one's message renamed.  Every moment (after 0..7 of 8 messages are read): the
    archive's Work holds only the old folder's messages under its UIDVALIDITY, and
    holds them all unless the run names the folder (exit 1)."""
    import io
    import os

    from asm.archive.writer import ArchiveWriter
    from asm.cli.imsbackup import main
    from asm.store import open_store
    from tests.helpers import make_home, msg, put
    for k in range(8):
        home = tmp_path / f"ims{k}"
        monkeypatch.setenv("IMS_HOME", str(home))
        store = open_store(make_home(home, driver="maildir"))
        for i in range(8):
            put(store, "alice", "INBOX", i)
            put(store, "alice", "Work", 100 + i)
        old_uv = store.folder("alice", "Work").uidvalidity
        old = {m.uid: open(m.path, "rb").read() for m in store.messages("alice", "Work")}
        real = ArchiveWriter.add_message
        seen = [0]

        def add_message(self, partition, user, folder, *a, real=real, seen=seen, k=k, home=home, **kw):
            if folder == "Work":
                if seen[0] == k:
                    other = open_store(make_home(home, driver="maildir"))
                    other.delete_folder("alice", "Work")
                    other.create_folder("alice", "Work")
                    for i in range(8):
                        other.append("alice", "Work", io.BytesIO(msg(900 + i)))
                seen[0] += 1
            return real(self, partition, user, folder, *a, **kw)
        monkeypatch.setattr(ArchiveWriter, "add_message", add_message)
        archive = tmp_path / f"full{k}.ims"
        rc = main(["-f", str(archive), "/"])
        monkeypatch.setattr(ArchiveWriter, "add_message", real)
        assert rc in (0, 1), k
        target = tmp_path / f"t{k}"
        make_home(target, driver="maildir")
        run(target, "imsrestore", "-f", archive, check=rc)
        got = open_store(make_home(target, driver="maildir"))
        assert got.folder("alice", "Work").uidvalidity == old_uv, k
        restored = {m.uid: open(m.path, "rb").read() for m in got.messages("alice", "Work")}
        assert all(old.get(u) == b for u, b in restored.items()), f"after {k}: the new folder's mail under the old UIDVALIDITY"
        assert rc == 1 or restored == old, f"after {k}: exit 0 with {len(restored)} of the old folder's 8 messages"
        assert os.path.exists(archive)
