"""A chain of links restored in one command into a real Dovecot's plain Maildir store,
killed anywhere, then run again: every message as the last link recorded it.

The chain (full, ``--base``, ``-d``, ``--base``, ``-d``) is taken from a lab Dovecot
(tests/dovecot_lab.py) whose clients change it between the links: flags set and
cleared, keywords added and removed, messages expunged, moved (a message in Trash that
an earlier link had \\Answered, as a helper's fuzzer once found kept), new mail and new
folders.  The one-command restore is killed (SIGKILL) before one step of its run, the
points spread over the whole run (tests/faults.py), and the same command is run again:
it must exit 0 and a client must see every folder (UIDVALIDITY, UIDNEXT, subscriptions)
and every message (UID, flags, keywords, INTERNALDATE, bytes, GUID) as at the last link.

IMS_KILL_SEED repeats a seed; IMS_CHAIN_KILL_POINTS asks for more points and
IMS_CHAIN_SOURCE_SEED for other client changes (the sweep the test was built with, 120
points over three sources, is in the commit that added it).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import time

from tests.dovecot_lab import MAIL_USER, lab_fixture, message, random_changes
from tests.faults import count_steps, run_with_fault, spread
from tests.helpers import run

LOGINS = ("alice", "carol")        # the clients that change mail between links
VIEWED = ("alice", "bob", "carol")  # (bob gets LMTP mail only)
POINTS = int(os.environ.get("IMS_CHAIN_KILL_POINTS") or 2)
SEED = int(os.environ.get("IMS_KILL_SEED") or time.time_ns() % 1_000_000)
SOURCE_SEED = int(os.environ.get("IMS_CHAIN_SOURCE_SEED") or 3)

chain_lab = lab_fixture("plain")


def configure(lab, home) -> None:
    run(home, "msconfig", "set", "store.driver", "maildir", check=0)
    run(home, "msconfig", "set", "store.owner", MAIL_USER, check=0)
    run(home, "msconfig", "set", "dovecot.config", lab.conf, check=0)
    run(home, "msconfig", "set", "store.mail_location", "doveconf", check=0)


def view(lab) -> dict:
    """What each login's client sees: folders (UIDVALIDITY, UIDNEXT, subscribed, every
    message's UID, flags and keywords, date, size, bytes, GUID) and subscriptions."""
    out = {}
    for u in VIEWED:
        st = lab.client_state(u)
        out[u] = ({name: (f.uidvalidity, f.uidnext, f.subscribed,
                          tuple((m.uid, m.flags, m.internaldate, m.size, m.sha256, m.guid) for m in f.messages))
                   for name, f in st.folders.items()}, st.subscriptions & set(st.folders))
    return out


def wipe(lab) -> None:
    for top in (lab.store, lab.idx, lab.ctl, lab.homes):
        if os.path.isdir(top):
            shutil.rmtree(top)
        os.mkdir(top)
        os.chown(top, lab.uid, lab.gid)


def _store(lab, login, box, pick, op, flags) -> None:
    with lab.imap(login) as c:
        c.select(box)
        uids = c.uids()
        if uids:
            c.uid_store([uids[i % len(uids)] for i in pick], op, flags)
        c.unselect()


def _build_chain(lab, tmp_path, seed: int) -> tuple[list, dict]:
    """Five links from the lab, clients changing it between them; returns the
    archives and the client view at the last one."""
    rnd = random.Random(seed)
    home = tmp_path / "src"
    configure(lab, home)
    for i in range(6):
        lab.deliver(list(VIEWED), message(f"first {i}", size=400 * i))
    for u in LOGINS:
        with lab.imap(u) as c:
            for box in ("Trash", "Work", "Lists"):
                c.create(box)
                c.subscribe(box)
            for i in range(4):
                c.append("Work", message(f"{u} work {i}"), [r"\Seen", f"$W{i}"] if i % 2 else [],
                         internaldate=1_700_000_000 + i * 3600)
            c.append("Lists", message(f"{u} list"), ["$Label1"])
    a = [tmp_path / f"l{i}.ims" for i in range(5)]
    run(home, "imsbackup", "-f", a[0], "--state-out", f"{a[0]}.state", "/", check=0)

    def changes(tag):
        for u in LOGINS:
            # moved to Trash, flags set on the way; flags set, cleared and keywords
            with lab.imap(u) as c:
                c.select("INBOX")
                uids = c.uids()
                if len(uids) > 2:
                    c.uid_store(uids[:1], "+FLAGS", [r"\Answered", f"${tag}"])
                    c.uid_move(uids[:1], "Trash")
                c.unselect()
            _store(lab, u, "Trash", [0, 1], rnd.choice(["+FLAGS", "-FLAGS", "FLAGS"]),
                   rnd.choice([[r"\Answered"], [r"\Seen", "$Later"], []]))
            _store(lab, u, "Work", [rnd.randrange(9)], "FLAGS", rnd.choice([[], [r"\Flagged", f"${tag}"]]))
            _store(lab, u, "Work", [rnd.randrange(9)], "-FLAGS", [r"\Seen", "$W1", "$W3"])
            _store(lab, u, "INBOX", [rnd.randrange(9), rnd.randrange(9)], "+FLAGS",
                   rnd.choice([[r"\Answered"], [r"\Deleted"], ["$Todo", r"\Draft"]]))
        random_changes(lab, rnd, 6, tag, logins=list(LOGINS), exclude=("rename", "delete"))

    changes("one")
    run(home, "imsbackup", "-f", a[1], "--base", f"{a[0]}.state", "--state-out", f"{a[1]}.state", "/", check=0)
    time.sleep(1.1)
    since = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    changes("two")
    run(home, "imsbackup", "-f", a[2], "-d", since, "--state-out", f"{a[2]}.state", "/", check=0)
    changes("three")
    run(home, "imsbackup", "-f", a[3], "--base", f"{a[2]}.state", "--state-out", f"{a[3]}.state", "/", check=0)
    time.sleep(1.1)
    since = time.strftime("%Y%m%d:%H%M%S")
    time.sleep(1.1)
    changes("four")
    run(home, "imsbackup", "-f", a[4], "-d", since, "/", check=0)
    return [str(x) for x in a], view(lab)


def _differences(want: dict, got: dict) -> list:
    out = []
    for u in VIEWED:
        wf, gf = want[u][0], got[u][0]
        for box in sorted(set(wf) | set(gf)):
            if wf.get(box) == gf.get(box):
                continue
            if box not in wf or box not in gf:
                out.append((u, box, "missing" if box not in gf else "extra"))
                continue
            w, g = wf[box], gf[box]
            if w[:3] != g[:3]:
                out.append((u, box, "folder", w[:3], g[:3]))
            wm, gm = {m[0]: m for m in w[3]}, {m[0]: m for m in g[3]}
            for uid in sorted(set(wm) | set(gm)):
                if wm.get(uid) != gm.get(uid):
                    out.append((u, box, uid, wm.get(uid) and (sorted(wm[uid][1]), wm[uid][4][:8]),
                                gm.get(uid) and (sorted(gm[uid][1]), gm[uid][4][:8])))
        if want[u][1] != got[u][1]:
            out.append((u, "subscriptions", sorted(want[u][1] ^ got[u][1])))
    return out


def test_a_killed_chain_restore_run_again_gives_every_message_as_the_last_link(chain_lab, tmp_path):
    """Killed at POINTS points spread over the one-command restore of the five links (a
    new seed each run) and where the link after the first -d one begins, then run again:
    exit 0, and every folder and message as at the last link.  (With fc2ab34 undone, a
    -d link met by the rerun of the --base links before it made the folder merge, and
    an earlier link's flags stayed with exit 0: 2 of 4 points, the -d one among them.)"""
    lab = chain_lab
    archives, want = _build_chain(lab, tmp_path, SOURCE_SEED)
    cmd = ["imsrestore", *sum((["-f", x] for x in archives), [])]

    def fresh(name):
        wipe(lab)
        home = tmp_path / name
        configure(lab, home)
        return home

    home = fresh("count")
    log = tmp_path / "steps.log"
    total, p = count_steps(cmd, "/", tmp_path, env={"IMS_HOME": str(home), "IMS_FAULT_LOG": str(log)})
    assert p.returncode == 0, p.stderr
    assert _differences(want, view(lab)) == []
    # each link opens the journal first (its CREATE TABLE IF NOT EXISTS): one point
    # where the link after the first -d one begins (the rerun then meets that -d link in
    # the folders while it runs the --base links before it: fc2ab34)
    starts = [int(ln.split()[0]) for ln in log.read_text().splitlines()
              if ln.split(" ", 1)[-1].startswith("sqlite: CREATE TABLE IF NOT EXISTS restored")]
    assert len(starts) == len(archives), starts
    points = sorted(set(spread(total, POINTS, SEED)) | {starts[3]})
    bad, killed = [], 0
    for k in points:
        home = fresh(f"k{k}")
        first = run_with_fault(cmd, "/", f"kill:{k}", env={"IMS_HOME": str(home)})
        killed += first.returncode == -signal.SIGKILL
        again = run(home, *cmd)
        diff = _differences(want, view(lab))
        if first.returncode not in (-signal.SIGKILL, 0) or again.returncode != 0 or diff:
            bad.append((k, first.returncode, again.returncode, again.stderr[-300:], diff[:4]))
        shutil.rmtree(home, ignore_errors=True)
    assert bad == [], (f"IMS_KILL_SEED={SEED} IMS_CHAIN_SOURCE_SEED={SOURCE_SEED}: {total} steps, "
                       f"{len(bad)} of {len(points)} points wrong", bad)
    assert killed >= len(points) - 1

