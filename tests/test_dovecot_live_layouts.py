"""Partial restores into a Dovecot store that Dovecot is serving, in the layouts
tests/test_dovecot_list_index.py does not run live: ``hashed`` and ``zlib`` here,
``nhash`` and ``home`` in tests/test_dovecot_live_homes.py (tests/dovecot_lab.py).

Dovecot fills the store from a seed (LMTP, APPEND, COPY, MOVE, RENAME, EXPUNGE, DELETE,
flags and keywords), ``imsbackup`` takes a full and a ``--base`` incremental after more
changes, and then, while three IMAP sessions of the login are at work (one IDLE on the
folder being restored, one polling SELECT/FETCH/STATUS, one APPENDing to Drafts),
``imsrestore`` restores: a folder the user deleted since, the chain ``-f FULL -f INCR``
of a folder and of the whole live login, the full into another live login, and a
deleted folder's restore killed at a random point then run again.  Checked over IMAP
(zlib: as Dovecot serves its compressed files): every message byte for byte with its
UID, flags, keywords, INTERNALDATE and X-GUID, each folder's UIDVALIDITY; a folder
restored where none was is exactly the archived one, a live folder merged keeps what
it held and gets back what it lacked (docs/operations.md, "Restores"); every APPEND
Dovecot acknowledged during a restore is there; the IDLE session answers DONE or is
told to log in again, never hangs; Dovecot logs no index error (only the lines a live
restore is documented to cause, docs/dovecot.md "Live restores").
"""
from __future__ import annotations

import collections
import hashlib
import io
import os
import random
import re
import signal
import socket
import threading
import time

from tests.dovecot_lab import LabImapError, lab_fixture, message, quote, random_changes
from tests.helpers import popen, run
from tests.test_dovecot_layouts import configure

# Two files, two layouts each, so that xdist (--dist loadfile) runs them on two workers:
# tests/test_dovecot_live_homes.py runs these same tests on nhash and home.
LAYOUTS = ["hashed", "zlib"]
lab = lab_fixture(params=LAYOUTS)

# what the Dovecot log must not say while and after a restore runs
BAD_LOG = re.compile(r"\[SERVERBUG\]|Corrupted|Panic|Fatal|Error:")
# ... but for what a live restore is documented to cause (docs/dovecot.md "Live
# restores": a session with a folder whose UIDVALIDITY the restore changed is logged
# out).  (The userdb listing every command asks for once logged auth-worker errors
# here too: tests/test_dovecot_quiet_log.py.)
ALLOWED_LOG = re.compile(r"dovecot\.index reset, view is now inconsistent")
BROKEN = re.compile(r"SERVERBUG|Internal error|Corrupted|inconsistent")


def seed_of() -> int:
    return int(os.environ.get("IMS_SEED") or time.time_ns() % 1_000_000)


# -- sessions -------------------------------------------------------------------------

class Idler(threading.Thread):
    """A raw IMAP session that SELECTs ``folder`` and IDLEs in it, ending each IDLE
    with DONE after a short while: a DONE unanswered for 15 s is a hang.  A BYE is
    kept (it must tell the client to log in again); the session then logs in anew."""

    def __init__(self, lab, login, folder, stop):
        super().__init__(daemon=True)
        self.lab, self.login, self.folder, self.stop = lab, login, folder, stop
        self.hangs: list[str] = []
        self.byes: list[str] = []
        self.broken: list[str] = []
        self.rounds = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._session()
            except (OSError, EOFError) as e:
                if "timed out" in str(e):
                    self.hangs.append(repr(e))
                    return
                time.sleep(0.05)

    def _session(self) -> None:
        s = socket.create_connection((self.lab.host, self.lab.port), timeout=15)
        buf = bytearray()
        n = 0

        def readline() -> bytes:
            while b"\n" not in buf:
                chunk = s.recv(65536)         # (a socket timeout loses nothing here)
                if not chunk:
                    raise EOFError("closed")
                buf.extend(chunk)
            i = buf.index(b"\n") + 1
            line = bytes(buf[:i])
            del buf[:i]
            self._look(line)
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:                             # a literal: skip its bytes
                want = int(m.group(1))
                while len(buf) < want:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise EOFError("closed")
                    buf.extend(chunk)
                del buf[:want]
            return line

        def until(tag: bytes) -> list[bytes]:
            lines = []
            while True:
                line = readline()
                lines.append(line)
                if line.startswith(tag + b" "):
                    return lines

        def cmd(text: str) -> list[bytes]:
            nonlocal n
            n += 1
            tag = f"i{n}".encode()
            s.sendall(tag + b" " + text.encode() + b"\r\n")
            return until(tag)
        try:
            readline()
            pw = self.lab.passwords[self.login]
            cmd(f"LOGIN {quote(self.login)} {quote(pw)}")
            while not self.stop.is_set():
                if not cmd(f"SELECT {quote(self.folder)}")[-1].split()[1] == b"OK":
                    time.sleep(0.05)
                    continue
                while not self.stop.is_set():
                    n += 1
                    tag = f"i{n}".encode()
                    s.sendall(tag + b" IDLE\r\n")
                    line = readline()
                    while line.startswith(b"* "):
                        line = readline()
                    if not line.startswith(b"+"):
                        if line.startswith(tag + b" NO") or line.startswith(tag + b" BAD"):
                            break                  # (the folder is gone: select again)
                        raise EOFError(line)
                    s.settimeout(0.2 + 0.3 * random.random())
                    try:
                        while True:
                            readline()
                    except (socket.timeout, TimeoutError):
                        pass
                    s.settimeout(15)
                    s.sendall(b"DONE\r\n")
                    try:
                        until(tag)
                    except (socket.timeout, TimeoutError):
                        self.hangs.append(f"DONE unanswered for 15 s in {self.folder}")
                        self.stop.set()
                        return
                    self.rounds += 1
                    cmd("NOOP")
        finally:
            s.close()

    def _look(self, line: bytes) -> None:
        text = line.decode(errors="replace").rstrip()
        if text.startswith("* BYE"):
            self.byes.append(text)
        if BROKEN.search(text) and "relogin" not in text:
            self.broken.append(text)


class Clients:
    """An IDLE session on ``folder``, a poller (SELECT, FETCH, STATUS of every folder)
    and an appender to Drafts, all of ``login``, until the block ends."""

    def __init__(self, lab, login, folder, rnd):
        self.lab, self.login, self.rnd = lab, login, random.Random(rnd.random())
        self.stop = threading.Event()
        self.idler = Idler(lab, login, folder, self.stop)
        self.folder = folder
        self.appended: list[tuple[int, int, bytes]] = []      # (uidvalidity, uid, bytes)
        self.broken: list[str] = []
        self.polls = 0
        self.threads = [self.idler, threading.Thread(target=self._poller, daemon=True),
                        threading.Thread(target=self._appender, daemon=True)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in self.threads), "a client session hangs"

    def _guard(self, work) -> None:
        while not self.stop.is_set():
            try:
                with self.lab.imap(self.login, timeout=15) as c:
                    while not self.stop.is_set():
                        try:
                            work(c)
                        except LabImapError as e:
                            if BROKEN.search(str(e)) and "relogin" not in str(e):
                                self.broken.append(str(e))
                            c.selected = None
            except LabImapError:
                raise
            except Exception as e:                      # closed by the server
                if BROKEN.search(str(e)) and "relogin" not in str(e):
                    self.broken.append(repr(e))
                time.sleep(0.05)

    def _poller(self) -> None:
        def work(c):
            names = sorted(c.list())
            for name in (self.folder, self.rnd.choice(names)):
                try:
                    c.select(name)
                    c.conn.uid("FETCH", "1:*", "(FLAGS INTERNALDATE)")
                    c.unselect()
                except LabImapError as e:
                    if BROKEN.search(str(e)):
                        raise
                c.selected = None
            for name in names:
                try:
                    c.status(name)
                except LabImapError as e:
                    if BROKEN.search(str(e)):
                        raise
            self.polls += 1
        self._guard(work)

    def _appender(self) -> None:
        def work(c):
            data = message(f"appended {self.rnd.random()}", size=self.rnd.randrange(2000))
            uv, uid = c.append("Drafts", data, self.rnd.choice([[], [r"\Seen"], ["$Live"]]))
            self.appended.append((uv, uid, data))
            time.sleep(0.02)
        self._guard(work)


# -- checks ---------------------------------------------------------------------------

def log_offset(lab) -> int:
    return os.path.getsize(os.path.join(lab.dir, "dovecot.log"))


def bad_log(lab, start: int) -> list[str]:
    with open(os.path.join(lab.dir, "dovecot.log"), errors="replace") as f:
        f.seek(start)
        return [ln for ln in f.read().splitlines() if BAD_LOG.search(ln) and not ALLOWED_LOG.search(ln)]


def key(m):
    return (m.sha256, m.flags, m.internaldate, m.size, m.guid)


def exact(got, want, where) -> None:
    """A folder restored where none was: the archived one, every message at its UID."""
    assert got is not None, f"{where}: not restored"
    assert (got.uidvalidity, got.uidnext) == (want.uidvalidity, want.uidnext), (where, got, want)
    assert [(m.uid, *key(m)) for m in got.messages] == [(m.uid, *key(m)) for m in want.messages], where


def merged(got, live, want, extra_shas, where) -> None:
    """A live folder merged with the archived ``want`` (docs/operations.md, "Folder
    present"): what it held stays as it was; each archived message it lacked comes back
    once, with its archived flags, INTERNALDATE and GUID, at its archived UID when that is
    at or above the live UIDNEXT under the archived UIDVALIDITY, else above the live
    UIDNEXT; nothing else but ``extra_shas`` (clients' APPENDs meanwhile)."""
    if live is None:
        exact(got, want, where)
        return
    assert got is not None and got.uidvalidity == live.uidvalidity, (where, got, live)
    by_uid = got.by_uid()
    for m in live.messages:
        assert m.uid in by_uid and key(by_uid[m.uid]) == key(m), (where, "kept", m, by_uid.get(m.uid))
    held = collections.Counter(m.sha256 for m in live.messages)
    archived = collections.Counter(m.sha256 for m in want.messages)
    have = collections.Counter(m.sha256 for m in got.messages)
    should = held | archived
    assert not should - have, (where, "missing", should - have)
    assert set(have - should) <= extra_shas, (where, "unexpected", have - should)
    live_uids = {m.uid for m in live.messages}
    wanted = collections.defaultdict(list)
    for m in want.messages:
        wanted[m.sha256].append(m)
    for m in got.messages:
        if m.uid in live_uids or m.sha256 not in wanted:
            continue
        assert m.uid >= live.uidnext, (where, "a UID below the live UIDNEXT", m, live.uidnext)
        assert any(key(m) == key(w) for w in wanted[m.sha256]), (where, m, wanted[m.sha256])


def appended_kept(state, clients, where) -> None:
    drafts = state.folders.get("Drafts")
    assert drafts is not None, where
    by_uid = drafts.by_uid()
    for uv, uid, data in clients.appended:
        if uv != drafts.uidvalidity:
            continue
        assert uid in by_uid and by_uid[uid].sha256 == hashlib.sha256(data).hexdigest(), \
            (where, "an acknowledged APPEND is gone", uid)


def check_clients(clients, where) -> None:
    assert not clients.idler.hangs, (where, clients.idler.hangs)
    assert all("relogin" in b or "Logged out" in b or "Server shutting down" in b
               for b in clients.idler.byes), (where, clients.idler.byes)
    assert not clients.idler.broken and not clients.broken, (where, clients.idler.broken, clients.broken)
    assert clients.polls >= 1 and clients.appended, (where, clients.polls, len(clients.appended))


# -- the scenario -----------------------------------------------------------------------

def logical(imap_name: str) -> str:
    """The logical path's folder name of an IMAP (modified UTF-7) name."""
    from asm.store.utf7 import decode
    return decode(imap_name)


def selectable(state) -> list[str]:
    return sorted(n for n, f in state.folders.items() if n not in ("INBOX", "Drafts") and f.messages)


def test_partial_restores_into_the_served_store_while_clients_idle_poll_and_append(lab, tmp_path):
    seed = seed_of()
    print(f"IMS_SEED={seed} ({lab.layout.name})")          # (shown with a failure)
    start = log_offset(lab)
    try:
        scenario(lab, tmp_path, seed)
    except Exception as exc:
        raise AssertionError(f"{lab.layout.name} IMS_SEED={seed}: {exc!r}\nDovecot: "
                             + "\n".join(bad_log(lab, start)[-10:])) from exc


def scenario(lab, tmp_path, seed) -> None:
    rnd = random.Random(seed)
    tag = f"{lab.layout.name}-{seed}"
    u = lab.logins[0]
    other = lab.logins[1]
    home = tmp_path / "ims"
    configure(lab, home)
    with lab.imap(u) as c:                         # a fixed start, then the seed's changes
        for name in ("Drafts", "Work", "Lists", "Old", "Keep", "Notes"):
            if name not in c.list():
                c.create(name)
            for i in range(rnd.randrange(2, 5)):
                c.append(name, message(f"{tag} {name} {i}", size=rnd.randrange(4000)),
                         rnd.choice([[], [r"\Seen"], [r"\Flagged", "$Work"], ["Kw1", "Kw2"]]),
                         internaldate=1_700_000_000 + rnd.randrange(10 ** 6))
    random_changes(lab, rnd, 14, f"{tag} a", logins=[u, other], exclude=("delete",))
    lab.fix_owner()
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    run(home, "imsbackup", "-f", full, "/", check=0)
    at_full = {x: lab.client_state(x) for x in (u, other)}
    random_changes(lab, rnd, 10, f"{tag} b", logins=[u], exclude=("delete",))
    lab.fix_owner()
    run(home, "imsbackup", "-f", incr, "--base", f"{full}.state", "/", check=0)
    at_incr = lab.client_state(u)
    random_changes(lab, rnd, 6, f"{tag} c", logins=[u, other], exclude=("delete", "rename"))
    where = f"{lab.layout.name} seed {seed}"
    log_start = log_offset(lab)
    # the user deletes two folders after the incremental
    candidates = [n for n in selectable(at_incr) if n in at_full[u].folders and "/" not in n]
    rnd.shuffle(candidates)
    gone_full, gone_kill = candidates[0], candidates[-1]      # (one folder, now and then)
    with lab.imap(u) as c:
        for name in {gone_full, gone_kill}:
            for sub in [n for n in c.list() if n.startswith(name + "/")]:
                c.delete(sub)
            c.delete(name)
        if "Drafts" not in c.list():
            c.create("Drafts")

    def restore(argv, folder, check_rc=0):
        with Clients(lab, u, folder, rnd) as clients:
            res = run(home, "imsrestore", *argv, text=True)
        assert res.returncode == check_rc, (where, argv, res.returncode, res.stderr)
        return clients

    # 1. a folder the user deleted since, from the full
    cl = restore(["-f", full, f"/primary/{u}/{logical(gone_full)}"], gone_full)
    after = lab.client_state(u)
    exact(after.folders.get(gone_full), at_full[u][gone_full], f"{where}: {gone_full} from the full")
    appended_kept(after, cl, where)
    check_clients(cl, where)

    # 2. the chain into a live folder (IDLE on it), then into the whole live login
    live = after                     # (the clients are gone: nothing changed since)
    target = rnd.choice([n for n in selectable(at_incr) if n in live.folders] or ["INBOX"])

    def under(name, top):
        return name == top or name.startswith(top + "/")

    cl = restore(["-f", full, "-f", incr, f"/primary/{u}/{logical(target)}"], target)
    after = lab.client_state(u)
    if under(target, gone_full):
        # restored from the full in 1. (or with its parent), it mirrors the full: the chain continues it, and
        # it is the incremental's folder (docs/operations.md, "Incremental chains")
        exact(after.folders.get(target), at_incr[target], f"{where}: {target}, mirroring the full")
    else:
        merged(after.folders.get(target), live.folders.get(target), at_incr[target], set(), f"{where}: {target}")
    target_after = after.folders[target]       # (the chain again leaves it so)
    appended_kept(after, cl, where)
    check_clients(cl, where)

    live = after
    cl = restore(["-f", full, "-f", incr, f"/primary/{u}"], "INBOX")
    after = lab.client_state(u)
    extra = {hashlib.sha256(d).hexdigest() for _, _, d in cl.appended}
    for name, want in at_incr.folders.items():
        if name == target:
            # it holds the chain's end already: the same archives change nothing
            exact(after.folders.get(name), target_after, f"{where}: {name}, chain of the login again")
        elif under(name, gone_kill) or under(name, gone_full):
            # made by it, or mirroring the full since 1. (a subfolder too: the user
            # deleted it with its parent, and 1. restored it with the parent; seed 554564,
            # Work/child, where the chain rightly gave UID 1 the incremental's \Seen): the
            # incremental's folder
            exact(after.folders.get(name), want, f"{where}: {name}, chain of the login")
        else:
            merged(after.folders.get(name), live.folders.get(name), want,
                   extra if name == "Drafts" else set(), f"{where}: {name}, chain of the login")
    appended_kept(after, cl, where)
    check_clients(cl, where)

    # 3. the full into another live login
    with lab.imap(other) as c:
        if "Drafts" not in c.list():
            c.create("Drafts")
    live_other = lab.client_state(other)
    with Clients(lab, other, "INBOX", rnd) as cl:
        res = run(home, "imsrestore", "-f", full, f"/primary/{other}", text=True)
    assert res.returncode == 0, (where, res.stderr)
    after = lab.client_state(other)
    extra = {hashlib.sha256(d).hexdigest() for _, _, d in cl.appended}
    for name, want in at_full[other].folders.items():
        merged(after.folders.get(name), live_other.folders.get(name), want,
               extra if name == "Drafts" else set(), f"{where}: {other}/{name}")
    check_clients(cl, where)

    # 4. a deleted folder's restore killed at a random point, then run again
    with lab.imap(u) as c:
        c.delete(gone_kill)
    argv = ["-f", full, "-f", incr, f"/primary/{u}/{logical(gone_kill)}"]
    with Clients(lab, u, gone_kill, rnd) as cl:
        p = popen(home, "imsrestore", *argv)
        time.sleep(rnd.uniform(0.1, 1.2))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
        res = run(home, "imsrestore", *argv, text=True)
    got = lab.client_state(u).folders.get(gone_kill)
    if res.returncode == 1 and "given out as gone" in res.stderr:
        assert got.uidvalidity == at_incr[gone_kill].uidvalidity, (where, res.stderr)
    else:
        assert res.returncode == 0, (where, res.stderr)
        exact(got, at_incr[gone_kill], f"{where}: {gone_kill} killed and run again")
    check_clients(cl, where)

    logged = bad_log(lab, log_start)
    assert not logged, where + "\n" + "\n".join(sorted({re.sub(r"^\S+ \S+ \S+ ", "", ln) for ln in logged})[:12])


def test_a_keyword_the_restore_adds_is_read_by_a_session_that_has_the_folder_open(lab, tmp_path):
    """Dovecot reads dovecot-keywords again only when its mtime (in seconds) differs from
    the one it last read (maildir-keywords.c, maildir_keywords_sync; its own writer makes
    the mtime grow every time).  A session with the folder open (an IDLE client) that read
    the file in the same second the restore rewrote it with a new keyword took the new
    letter for a keyword it had lost: the restored message showed "unknown-1" instead of
    its keyword, and Dovecot wrote "1 unknown-1" into dovecot-keywords for every client
    (found by the scenario above, zlib, a killed chain restore run again)."""
    from asm.config import Config
    from asm.store import open_store
    u = lab.logins[-1]
    home = tmp_path / "ims"
    configure(lab, home)
    with lab.imap(u) as c:
        c.create("Tags")
        c.append("Tags", message("first"), ["$Label1"])
    kwfile = os.path.join(lab.mailbox_path(u, "Tags", "control"), "dovecot-keywords")
    store = open_store(Config(home=str(home)))
    with lab.imap(u) as live:
        # the session reads the keywords file, whose mtime is the second the restore writes
        # in (the next one: the SELECT takes milliseconds, the write waits for it to begin)
        at = int(time.time()) + 1
        os.utime(kwfile, (at, at))
        live.select("Tags")
        assert live.fetch_meta()[0]["flags"] == {"$Label1"}
        while time.time() < at + 0.05:
            time.sleep(0.01)
        with store.lock(u, "Tags"):
            uid = store.append(u, "Tags", io.BytesIO(message("restored")), keywords=["$Todo", "$Label1"]).uid
        assert int(time.time()) == at, "too slow: the write left the second"
        live.command("NOOP")
        seen_live = {m["uid"]: m["flags"] for m in live.fetch_meta()}
    assert seen_live[uid] == {"$Todo", "$Label1"}, seen_live
    with lab.imap(u) as c:
        c.select("Tags", readonly=True)
        assert {m["uid"]: m["flags"] for m in c.fetch_meta()}[uid] == {"$Todo", "$Label1"}
    with open(kwfile) as f:
        assert "unknown" not in f.read()


idxctl_lab = lab_fixture("idxctl")


def test_a_keyword_the_restore_adds_under_control_elsewhere_is_read_by_an_open_session(idxctl_lab, tmp_path):
    """The same race where CONTROL= puts dovecot-keywords apart from the mail
    (``maildir:STORE/%u:INDEX=IDX/%u:CONTROL=CTL/%u``): the file the driver rewrites there
    gets the mtime a second past the old one too (the test reads the file where Dovecot
    says it is, ``doveadm mailbox path -t control``)."""
    lab = idxctl_lab
    assert lab.mailbox_path(lab.logins[-1], "INBOX", "control").startswith(lab.ctl + "/")
    test_a_keyword_the_restore_adds_is_read_by_a_session_that_has_the_folder_open(lab, tmp_path)


zlib_lab = lab_fixture("zlib")


def test_a_copy_restored_beside_one_dovecot_compressed_is_served_whole(zlib_lab, tmp_path):
    """zlib: a message COPYed to two folders is one compressed file (a hard link, its
    S= the uncompressed size).  Restored into the live login with only the second copy
    missing, the restore took the first (still there, compressed) for the link's target
    and linked it under a name whose S= was the compressed file's size: Dovecot failed
    every FETCH of it ("Cached message size smaller than expected", "[SERVERBUG]" /
    "Internal error"), exit 0 (found by the scenario above, IMS_SEED=661680).  Now the
    message is stored as the restore stores any: plain, S= its size, served whole."""
    lab = zlib_lab
    u = "alice"
    body = message("copied twice", size=3000)
    with lab.imap(u) as c:
        for f in ("One", "Two"):
            c.create(f)
        _, uid = c.append("One", body, ["$Label1"])
        c.select("One")
        c.uid_copy([uid], "Two")
        c.unselect()
    home = tmp_path / "ims"
    configure(lab, home)
    archive = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", archive, f"/primary/{u}", check=0)
    want = lab.client_state(u)["Two"]
    with lab.imap(u) as c:
        c.delete("Two")
    start = log_offset(lab)
    run(home, "imsrestore", "-f", archive, f"/primary/{u}", check=0)
    got = lab.client_state(u)["Two"]              # (FETCH BODY[] of every message)
    exact(got, want, "Two")
    with lab.imap(u) as c:
        c.select("Two", readonly=True)
        assert c.fetch_body(want.messages[0].uid) == body
    assert not bad_log(lab, start), bad_log(lab, start)
