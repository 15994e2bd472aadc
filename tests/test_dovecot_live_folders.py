"""Folders a restore makes, completes and removes while Dovecot's clients are at them
(Maildir layouts, a real Dovecot): every step of the driver's is one step for Dovecot.

Clients SELECT, LIST and STATUS the folder being made or removed as fast as Dovecot
answers, and another session LISTs every folder in a loop, round after round: each
creation gives the folder the UIDVALIDITY and GUID asked for, each removal leaves no
trace of it (on disk, in a new session's LIST), no session is ever shown a name of the
driver's own (a staged or removed directory), and Dovecot logs no error
(docs/dovecot.md, "Live restores"; docs/maildir.md, "New folders").
"""
from __future__ import annotations

import contextlib
import imaplib
import io
import os
import random
import shutil
import threading
import time
import uuid

from tests.dovecot_lab import LabImapError, lab_fixture, message
from tests.test_dovecot_layouts import configure
from tests.test_dovecot_list_index import BROKEN, Hammer, _Paused, dovecot_failures

lab = lab_fixture(params=["plain", "fs", "idxctl", "vdomain"])

ROUNDS = 40


class Lister(_Paused):
    """Sessions LISTing every folder as fast as Dovecot answers while :attr:`go` is set:
    one logged in throughout, two logging in again for every LIST (a new session reads
    the directory tree at once, an open one within a second); every listed name that is
    one of the driver's own (``ims-``) is kept."""

    def __init__(self, lab, login):
        self.lab, self.login = lab, login
        self.go, self.stop = threading.Event(), threading.Event()
        self.idle = [threading.Event() for _ in range(3)]
        self.seen: set[str] = set()
        self.broken: list[str] = []
        self.dropped: list[str] = []       # as Hammer's: see dovecot_failures
        self.lists = 0
        self.threads = [threading.Thread(target=self._run, args=(i, fresh), daemon=True)
                        for i, fresh in zip(self.idle, (False, True, True))]

    def _run(self, idle, fresh: bool) -> None:
        c = None
        try:
            while not self.stop.is_set():
                if not self.go.is_set():
                    idle.set()
                    self.go.wait()
                    continue
                if c is None:
                    c = self.lab.imap(self.login, timeout=20)
                gone = fresh
                try:
                    names = c.list()
                except LabImapError as e:
                    if BROKEN.search(str(e)):
                        self.broken.append(str(e))
                    continue
                except imaplib.IMAP4.abort:
                    self.dropped.append("LIST")
                    gone = True                    # (this session is gone: a new one)
                    continue
                finally:
                    if gone:
                        c.close()
                        c = None
                self.lists += 1
                self.seen.update(n for n in names if "ims-" in n.lower())
        finally:
            if c is not None:
                c.close()


class Clients:
    """A :class:`Hammer` at ``name`` and a :class:`Lister`, resumed and paused together."""

    def __init__(self, lab, login, name):
        self.hammer, self.lister = Hammer(lab, login, name), Lister(lab, login)

    def __enter__(self):
        self.hammer.__enter__()
        self.lister.__enter__()
        return self

    def __exit__(self, *exc):
        self.lister.__exit__(*exc)
        self.hammer.__exit__(*exc)

    def resume(self) -> None:
        self.hammer.resume()
        self.lister.resume()

    def pause(self) -> None:
        self.hammer.pause()
        self.lister.pause()


def _setup(lab, tmp_path, login):
    from asm.config import Config
    from asm.store import open_store
    home = tmp_path / "ims"
    configure(lab, home)
    store = open_store(Config(home=str(home)))
    with lab.imap(login) as c:
        c.select("INBOX")                  # (Dovecot makes the login's Maildir)
    return store


def _log_from(lab) -> tuple[str, int]:
    log = os.path.join(lab.dir, "dovecot.log")
    with open(log, "rb") as f:
        return log, f.seek(0, os.SEEK_END)


def _logged(log: str, start: int) -> list[str]:
    """Dovecot's error lines from ``start`` on, for an assertion's message: a session
    answered [SERVERBUG] says only "refer to server log"."""
    with open(log, "rb") as f:
        f.seek(start)
        lines = f.read().decode(errors="replace").splitlines()
    return [ln for ln in lines if "Error:" in ln or "Panic:" in ln or "Fatal:" in ln][-8:]


def _fill(store, login, folder, n: int, seed: int) -> None:
    for i in range(n):
        store.append(login, folder, io.BytesIO(message(f"{folder} {seed} {i}")),
                     flags=[r"\Seen"] if i % 2 else [])


def test_a_folder_removed_while_clients_select_it_goes_whole(lab, tmp_path):
    """delete_folder of a folder with mail while clients SELECT, LIST and STATUS it:
    after each removal the folder's directory is gone, a new session does not list it,
    and no session ever lists a name of the driver's or is answered [SERVERBUG].
    Before, cur/ was renamed aside in the folder's directory and the rest removed
    after: a SELECT in between made Dovecot add cur/ new/ tmp/ again
    (maildir_set_deleted), and the folder stayed, listed, without its mail (Maildir++
    and INDEX=/CONTROL=, within 10 rounds); under LAYOUT=fs the aside cur/
    (``Old/.ims-deleting``) could be listed as a folder."""
    login = lab.logins[0]
    store = _setup(lab, tmp_path, login)
    rnd = random.Random(7)
    log, start = _log_from(lab)
    name = "Old"
    with Clients(lab, login, name) as clients:
        for r in range(ROUNDS):
            store.create_folder(login, name, uidvalidity=2000 + r, guid=uuid.uuid4().hex)
            _fill(store, login, name, rnd.randrange(1, 6), r)
            lab.fix_owner()
            d = store._folder_dir(login, name)
            clients.resume()
            time.sleep(0.002 * (r % 5))
            store.delete_folder(login, name)
            clients.pause()
            assert not os.path.lexists(d), (r, sorted(os.listdir(d)))
            assert name not in store.folder_names(login), r
            assert not store.folder_remains(login, name), r
            with lab.imap(login) as c:
                assert name not in c.list(), r
        assert not clients.lister.seen, sorted(clients.lister.seen)[:5]
        assert clients.hammer.selects > ROUNDS and clients.lister.lists > ROUNDS
        assert not clients.hammer.broken and not clients.lister.broken, \
            (clients.hammer.broken[:3], clients.lister.broken[:3], _logged(log, start))
    assert not dovecot_failures(log, start, lab, clients.hammer, clients.lister)


def test_folders_made_while_clients_list_and_select_them_appear_whole(lab, tmp_path):
    """create_folder, round after round, while clients SELECT, LIST and STATUS the new
    folder's name and another session LISTs everything: each folder gets the
    UIDVALIDITY and GUID asked for, which is what a client is then told, and no session
    ever lists a name of the driver's or is answered [SERVERBUG].  Under LAYOUT=fs the
    new folder is a level that holds a subfolder already (made in place: ``Ln/Kid``
    first, then ``Ln``) every other round.  Before, under LAYOUT=fs a folder was staged
    as ``.ims-mkdir.<pid>.<random>`` beside its place, which LIST showed as a folder
    for the moment; a level was given new/ tmp/ first and cur/ last (staged as
    ``Ln/.ims-cur``, listed too), and a SELECT in between made Dovecot add cur/ and an
    index the driver's index floor then replaced: "duplicate transaction log
    sequence", [SERVERBUG]."""
    login = lab.logins[2]
    store = _setup(lab, tmp_path, login)
    fs = lab.layout.name == "fs"
    log, start = _log_from(lab)
    # many, as fast as they go (the SELECTs elsewhere: a session that has a folder
    # selected while it is removed and made again at once is another matter, see
    # docs/dovecot.md "Live restores")
    sessions = []
    with Clients(lab, login, "INBOX") as clients:
        sessions += [clients.hammer, clients.lister]
        clients.resume()
        t = time.monotonic()
        while time.monotonic() - t < 1.5 or clients.lister.lists < 60:
            store.create_folder(login, "Quick")
            store.delete_folder(login, "Quick")
        clients.pause()
        assert not clients.lister.seen, sorted(clients.lister.seen)[:5]
    for r in range(ROUNDS):
        name = f"L{r}"
        level = fs and r % 2 == 0
        if level:
            store.create_folder(login, f"{name}/Kid")
            _fill(store, login, f"{name}/Kid", 1, r)
            lab.fix_owner()
        with Clients(lab, login, name) as clients:
            sessions += [clients.hammer, clients.lister]
            clients.resume()
            time.sleep(0.002 * (r % 5))
            uv, guid = 3000 + r, uuid.uuid4().hex
            info = store.create_folder(login, name, uidvalidity=uv, guid=guid)
            _fill(store, login, name, 2, r)
            clients.pause()
            assert (info.uidvalidity, info.guid) == (uv, guid)
            with lab.imap(login) as c:
                assert c.status(name) == {"messages": 2, "uidnext": 3, "uidvalidity": uv}, r
                if level:
                    assert c.status(f"{name}/Kid")["messages"] == 1
            assert not clients.lister.seen, (r, sorted(clients.lister.seen)[:5])
            assert not clients.hammer.broken and not clients.lister.broken, \
                (r, clients.hammer.broken[:3], clients.lister.broken[:3], _logged(log, start))
    assert not dovecot_failures(log, start, lab, *sessions)


def test_a_new_mailbox_guid_alone_leaves_dovecots_index_and_sessions_alone(lab, tmp_path):
    """set_folder giving an indexed folder another mailbox GUID under the same
    UIDVALIDITY (a restore of a folder a client made again with its old UIDVALIDITY,
    or an archive of another copy), round after round, while a session has the folder
    selected and others SELECT, LIST and STATUS it: Dovecot reports the new GUID at
    once (doveadm, a new session), the selected session goes on (NOOP, its UIDs and
    flags unchanged), and no session is answered [SERVERBUG].  Before, the driver
    removed the folder's dovecot.index* files as for a new UIDVALIDITY, and the session
    that had it selected was logged out ("IMAP session state is inconsistent, please
    relogin") -- a Maildir's GUID is only the uidlist header's, no index holds it."""
    from tests.test_dovecot_list_index import guids
    login = lab.logins[1]
    store = _setup(lab, tmp_path, login)
    name = "Kept"
    with lab.imap(login) as c:
        c.create(name)
        for i in range(4):
            c.append(name, message(f"kept {i}"), [r"\Seen"] if i % 2 else [])
        want = c.status(name)
    lab.fix_owner()
    log, start = _log_from(lab)
    with Clients(lab, login, name) as clients, lab.imap(login) as held:
        held.select(name)
        flags = held.fetch_meta()
        for r in range(12):
            guid = uuid.uuid4().hex
            clients.resume()
            with store.lock(login, name):
                info = store.set_folder(login, name, guid=guid)
            clients.pause()
            assert (info.guid, info.uidvalidity) == (guid, want["uidvalidity"])
            held.command("NOOP")
            assert held.fetch_meta() == flags, r
            # (Dovecot's list index, which doveadm reads, takes it from the folder once a
            # session has looked at the folder again: within a second or two)
            t = time.monotonic()
            while guids(lab, login)[name] != guid and time.monotonic() - t < 3:
                held.command("NOOP")
                time.sleep(0.2)
            assert guids(lab, login)[name] == guid, r
            with lab.imap(login) as c:
                assert c.status(name) == want, r
        assert not clients.hammer.broken and not clients.lister.broken, \
            (clients.hammer.broken[:3], clients.lister.broken[:3], _logged(log, start))
    assert not dovecot_failures(log, start, lab, clients.hammer, clients.lister)


def _kid_view(lab, login, name) -> tuple:
    """What a new session sees of ``name``: UIDVALIDITY, UIDNEXT and (uid, flags) rows."""
    with lab.imap(login) as c:
        sel = c.select(name)
        return sel["uidvalidity"], sel["uidnext"], sorted((m["uid"], m["flags"], m["guid"])
                                                          for m in c.fetch_meta())


def _twins(lab, login, folders) -> dict:
    """{(twin, folder): what a new session sees} of ``folders`` of each login of the
    same name in another domain (vdomain: alice@other.org), each made with a message
    where it is not there: they must stay as they are."""
    twins = [x for x in lab.logins if x != login and x.split("@")[0] == login.split("@")[0]]
    for twin in twins:
        with lab.imap(twin) as c:
            for f in folders:
                try:
                    c.status(f)
                except LabImapError:
                    c.create(f)
                    c.append(f, message(f"twin {f}"), [r"\Flagged"])
    lab.fix_owner()
    return _views(lab, [(t, f) for t in twins for f in folders])


def _views(lab, of) -> dict:
    """{(login, folder): what a new session sees} of each pair of ``of``."""
    return {(t, f): _kid_view(lab, t, f) for t, f in of}


def _gone_for_a_new_session(lab, login, name, where) -> None:
    r"""``name`` cannot be selected, and is listed at most as the parent of a folder
    (as Dovecot lists it after its own DELETE of it: Maildir++ ``\HasChildren``)."""
    with lab.imap(login) as c:
        listed = c.list()
        assert name not in listed or {r"\HasChildren", r"\Noselect", r"\NonExistent"} & set(listed[name]), \
            (where, listed.get(name))
        try:
            c.select(name)
        except LabImapError:
            pass
        else:
            raise AssertionError(f"{where}: {name} can still be selected")


def test_a_folder_that_holds_subfolders_removed_while_clients_select_it_goes_whole(lab, tmp_path):
    """delete_folder of a folder with mail that holds a subfolder (LAYOUT=fs keeps its
    directory, the subfolder lives in it), round after round, while clients SELECT,
    LIST and STATUS it: after each removal a new session cannot select it nor lists it
    as a folder, the subfolder is as it was (UIDVALIDITY, UIDNEXT, UIDs, flags, GUIDs),
    no session is shown a name of the driver's or answered [SERVERBUG], Dovecot logs
    no error.  Before, under LAYOUT=fs its tmp/, cur/ and new/ were renamed aside one
    after the other: a session that had opened the folder and synced in between found
    cur/ (or new/) gone with the directory there and made cur/ new/ tmp/ again
    (maildir_set_deleted), and the folder stayed, listed and selectable, empty."""
    login = lab.logins[0]
    store = _setup(lab, tmp_path, login)
    log, start = _log_from(lab)
    name, kid = "Par", "Par/Kid"
    store.create_folder(login, kid, uidvalidity=4321, guid=uuid.uuid4().hex)
    _fill(store, login, kid, 3, 0)
    lab.fix_owner()
    want = _kid_view(lab, login, kid)
    fs = lab.layout.name == "fs"
    twin_want = _twins(lab, login, (kid, name))
    # (LAYOUT=fs: the level Par/ that holds only Kid/ is no folder, nor what a removal
    # left: before, any directory without cur/ was taken for one half removed)
    assert not store.folder_remains(login, name)
    with Clients(lab, login, name) as clients:
        for r in range(ROUNDS // 2):
            store.create_folder(login, name, uidvalidity=5000 + r, guid=uuid.uuid4().hex)
            _fill(store, login, name, 1 + r % 3, r)
            lab.fix_owner()
            clients.resume()
            time.sleep(0.002 * (r % 5))
            store.delete_folder(login, name)
            time.sleep(0.01)
            clients.pause()
            d = store._folder_dir(login, name)
            assert name not in store.folder_names(login), r
            if fs:
                # the level its subfolder lives in, and at most the dovecot-uidlist a
                # session that waited for the folder's lock wrote once it was free
                # (Dovecot cannot open it: no tmp/)
                assert set(os.listdir(d)) <= {"Kid", "dovecot-uidlist"}, (r, sorted(os.listdir(d)))
            else:
                assert not store.folder_remains(login, name), r
                assert not os.path.lexists(d), r
            _gone_for_a_new_session(lab, login, name, r)
            assert _kid_view(lab, login, kid) == want, r
        assert _views(lab, twin_want) == twin_want
        assert not clients.lister.seen, sorted(clients.lister.seen)[:5]
        assert not clients.hammer.broken and not clients.lister.broken, \
            (clients.hammer.broken[:3], clients.lister.broken[:3], _logged(log, start))
    assert not dovecot_failures(log, start, lab, clients.hammer, clients.lister)


def test_a_folder_made_again_where_its_index_was_left_is_a_new_index_to_every_session(lab, tmp_path):
    """A folder whose mail directory went (removed by hand, lost with a disk) while its
    index and control files stayed (idxctl: INDEX= and CONTROL= apart from the mail; the
    other layouts lose the index with the mail, and are held to the same), made again
    by a restore with a new UIDVALIDITY: a session that had the old folder selected and
    closed it in the last 10 s (Dovecot keeps that index open and gives it to the next
    SELECT of the same index directory, known by its inode) and a new session that
    indexes the new folder first both SELECT it and see it as restored, and Dovecot logs
    no broken index.  Before, the index directory was kept (its files removed): the
    first session took its old index back and found the other's log there ("Corrupted
    transaction log ... indexid changed", "[SERVERBUG] Internal error"), as one run in
    40 of the subfolder test above did under load, where a session had written into the
    index directory again while the folder was removed."""
    login = lab.logins[1]
    store = _setup(lab, tmp_path, login)
    log, start = _log_from(lab)
    name = "Lost"
    store.create_folder(login, name, uidvalidity=7001, guid=uuid.uuid4().hex)
    _fill(store, login, name, 2, 0)
    lab.fix_owner()
    with lab.imap(login) as old:
        assert old.select(name) == {"exists": 2, "uidvalidity": 7001, "uidnext": 3}
        old.select("INBOX")                 # the folder closed: its index kept open 10 s
        shutil.rmtree(store._folder_dir(login, name))      # its mail lost, nothing else
        time.sleep(1.1)                     # (an index's id is the time in seconds)
        store.create_folder(login, name, uidvalidity=7002, guid=uuid.uuid4().hex)
        _fill(store, login, name, 3, 1)
        lab.fix_owner()
        want = {"exists": 3, "uidvalidity": 7002, "uidnext": 4}
        with lab.imap(login) as new:
            assert new.select(name) == want
        assert old.select(name) == want
        assert [(m["uid"], m["flags"]) for m in old.fetch_meta()] == \
            [(1, frozenset()), (2, frozenset([r"\Seen"])), (3, frozenset())]
    assert not dovecot_failures(log, start, lab), _logged(log, start)


def _next_command(c) -> str:
    """What a session's next NOOP gets: "OK", "NO ..." or "BYE ..." (the server ended it)."""
    try:
        typ, data = c.conn.noop()
    except (imaplib.IMAP4.abort, OSError) as e:
        return f"BYE {e}"
    no = c.conn.untagged_responses.pop("NO", None)
    bye = c.conn.untagged_responses.pop("BYE", None)
    if bye:
        return f"BYE {bye!r}"
    return f"NO {no!r}" if typ != "OK" or no else "OK"


def test_a_folder_removed_and_made_again_at_once_ends_the_old_one_cleanly(lab, tmp_path):
    """A folder Dovecot has indexed, selected in a session, removed and made again at
    once under its name with a new UIDVALIDITY (a chain in one command: a link that no
    longer lists it, then one that lists a new folder of that name), round after round,
    while other clients SELECT, LIST and STATUS it: the session that had the old one
    selected is logged out on its next command, as for any new UIDVALIDITY ("IMAP
    session state is inconsistent"), a new session sees the new folder exactly
    (UIDVALIDITY, UIDNEXT, UIDs, flags), and Dovecot logs no broken index.  Before,
    the new folder's index log (a floor, file_seq 1, indexid the time in seconds) was
    another index's log to that session: "duplicate transaction log sequence (1)"
    within the same second, "indexid changed" after it, and "NO Internal error" to
    the client -- as Dovecot's own DELETE and CREATE give when a client opens the new
    folder before the old session looks again."""
    login = lab.logins[2]
    store = _setup(lab, tmp_path, login)
    log, start = _log_from(lab)
    name = "Again"
    with lab.imap(login) as c:
        if name in c.list():
            c.delete(name)
        c.create(name)
        for i in range(3):
            c.append(name, message(f"again {i}"), [r"\Seen"] if i % 2 else [])
    twin_want = _twins(lab, login, (name,))
    answers = []
    with Clients(lab, login, name) as clients:
        for r in range(8):
            held = lab.imap(login)
            try:
                held.select(name)                  # (Dovecot indexes it, the session holds it)
                if r % 2:
                    time.sleep(1.05)               # (the new index in another second)
                clients.resume()
                uv = 7000 + r
                store.delete_folder(login, name)
                store.create_folder(login, name, uidvalidity=uv, guid=uuid.uuid4().hex)
                _fill(store, login, name, 1 + r % 3, r)
                lab.fix_owner()
                time.sleep(0.05)
                clients.pause()
                answers.append(_next_command(held))
            finally:
                with contextlib.suppress(Exception):
                    held.close()
            with lab.imap(login) as c:
                assert c.select(name) == {"exists": 1 + r % 3, "uidvalidity": uv, "uidnext": 2 + r % 3}, r
                assert [(m["uid"], m["flags"]) for m in c.fetch_meta()] == \
                    [(i + 1, frozenset([r"\Seen"] if i % 2 else [])) for i in range(1 + r % 3)], r
        assert not clients.hammer.broken and not clients.lister.broken, \
            (clients.hammer.broken[:3], clients.lister.broken[:3], _logged(log, start))
    assert all(a.startswith("BYE") and "inconsistent" in a for a in answers), answers
    assert _views(lab, twin_want) == twin_want
    assert not dovecot_failures(log, start, lab, clients.hammer, clients.lister)


def test_a_chain_that_removes_and_makes_folders_again_under_clients_ends_exact(lab, tmp_path):
    """The chain's next links restored in one command into a login Dovecot serves,
    while clients SELECT, LIST and STATUS the folders it changes and a session has one
    selected: a link whose archive no longer lists ``P`` but lists ``P/Kid``, no longer
    ``Q`` nor ``Q/Kid``, nor ``X``, and a last link that lists a new ``X`` (the user
    made it again: a new UIDVALIDITY).  The command exits 0; a new session cannot
    select ``P`` (listed at most as ``P/Kid``'s parent), lists neither ``Q`` nor
    ``Q/Kid``, and sees ``P/Kid`` and ``X`` as the user had them (UIDVALIDITY, UIDNEXT,
    UIDs, flags); the session that had the old ``X`` selected is logged out as for any
    new UIDVALIDITY; no session lists a name of ours or is answered [SERVERBUG];
    Dovecot logs no broken index."""
    from tests.helpers import run
    src, dst = lab.logins[0], lab.logins[1]
    home = tmp_path / "ims"
    configure(lab, home)
    with lab.imap(src) as c:
        listed = c.list()
        for f in ("P", "P/Kid", "Q", "Q/Kid", "X"):
            if f not in listed or not {r"\Noselect", r"\NonExistent"}.isdisjoint(listed[f]) or f == "P":
                try:
                    c.create(f)
                except LabImapError:
                    pass
            for i in range(2):
                c.append(f, message(f"chain {f} {i}"), [r"\Seen"] if i else [r"\Flagged", "$Chain"])
    lab.fix_owner()
    full, incr1, incr2 = (tmp_path / f"{n}.ims" for n in ("full", "incr1", "incr2"))
    run(home, "imsbackup", "-f", full, f"/primary/{src}", check=0)
    with lab.imap(src) as c:
        for f in ("P", "Q/Kid", "Q", "X"):
            c.delete(f)
    run(home, "imsbackup", "-f", incr1, "--base", f"{full}.state", f"/primary/{src}", check=0)
    time.sleep(1.1)                        # (a new UIDVALIDITY for X: Dovecot's is the time)
    with lab.imap(src) as c:
        c.create("X")
        c.append("X", message("chain X again"), [r"\Answered"])
    lab.fix_owner()
    run(home, "imsbackup", "-f", incr2, "--base", f"{incr1}.state", f"/primary/{src}", check=0)
    want = {f: _kid_view(lab, src, f) for f in ("P/Kid", "X")}
    mapfile = tmp_path / "map"
    mapfile.write_text(f"{src}={dst}\n")
    res = run(home, "imsrestore", "-m", mapfile, "-f", full, f"/primary/{src}", text=True)
    assert res.returncode == 0, res.stderr
    lab.fix_owner()
    log, start = _log_from(lab)
    with Clients(lab, dst, "P") as clients, Hammer(lab, dst, "X") as other, lab.imap(dst) as held:
        held.select("X")
        clients.resume()
        other.resume()
        res = run(home, "imsrestore", "-m", mapfile, "-f", incr1, "-f", incr2, f"/primary/{src}", text=True)
        time.sleep(0.05)
        clients.pause()
        other.pause()
        answer = _next_command(held)
        assert res.returncode == 0, res.stderr
        assert not clients.lister.seen, sorted(clients.lister.seen)[:5]
        broken = clients.hammer.broken + clients.lister.broken + other.broken
        assert not broken, (broken[:3], _logged(log, start))
    assert answer.startswith("BYE") and "inconsistent" in answer, answer
    _gone_for_a_new_session(lab, dst, "P", "P")
    with lab.imap(dst) as c:
        listed = c.list()
    assert "Q" not in listed and "Q/Kid" not in listed, listed
    assert {f: _kid_view(lab, dst, f) for f in want} == want
    assert not dovecot_failures(log, start, lab, clients.hammer, clients.lister, other)
