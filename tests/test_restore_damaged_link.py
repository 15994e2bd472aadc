"""A chain restored archive by archive whose middle link has a damaged message.

The restore of the damaged incremental names the message and exits 4, leaving its
archived UID free (journal ``gaps``).  The next link, restored on its own, used to take
the folder, no mirror any more, for a live folder that moved on and merge into it: exit
0, with the message it lists without carrying it missing, its expunges not applied
(mail the user deleted back) and its flags not set.  The chain given in one command
stops at the damaged link (exit 4), and so must the next link given alone, for the
folders it cannot continue exactly: it continues the others as the next link of their
chain, and is refused (exit 7, the folder left as it was) for a folder whose missing
message it needs, naming the archive to restore again.  The intact copy of the damaged
link, then the next one, give the store exactly as it was backed up.
"""
from __future__ import annotations

import io
import time

from asm.archive import pax
from asm.store import open_store
from tests import archive_fuzz as af
from tests.helpers import change_mail, make_home, msg, put, run, state


def _chain(store, home, tmp_path):
    for user, folders in (("joe", ["INBOX", "Work"]), ("ann", ["INBOX"])):
        for folder in folders:
            for n in range(3):
                put(store, user, folder, n + 10 * len(folder) + len(user), size=40 * n,
                    flags=["\\Seen"] if n else [])
    full, incr, incr2 = (tmp_path / f"{x}.ims" for x in ("full", "incr", "incr2"))
    run(home, "imsbackup", "-f", full, "/", check=0)
    change_mail(store, ["joe", "ann"])                      # new mail, a flag, an expunge
    put(store, "joe", "Work", 77, size=300)
    run(home, "imsbackup", "-f", incr, "--base", f"{full}.state", "/", check=0)
    change_mail(store, ["joe", "ann"])
    inbox = store.messages("ann", "INBOX")
    store.set_flags("ann", "INBOX", inbox[-1].uid, ["\\Answered"], ["$Done"])
    store.expunge("joe", "Work", [store.messages("joe", "Work")[-1].uid])     # the one incr carried
    store.deliver(["joe"], io.BytesIO(msg(900, 700)), folder="Work")
    time.sleep(1.1)
    run(home, "imsbackup", "-f", incr2, "--base", f"{incr}.state", "/", check=0)
    return full, incr, incr2, state(store)


def test_the_link_after_a_damaged_one_never_merges_with_exit_0(store, ims_home, tmp_path, driver):
    full, incr, incr2, want = _chain(store, ims_home, tmp_path)
    data = incr.read_bytes()
    parts, _ = af.layout(data)
    victims = [p for p in parts if p.ustar[156:157] == pax.REGTYPE and p.name.endswith(".eml")]
    assert len(victims) >= 6, [p.name for p in victims]
    outcomes = []
    for i, p in enumerate(victims):
        bad = bytearray(data)
        bad[p.data_at + len(p.data) // 2] ^= 0x10
        damaged = tmp_path / f"damaged-{i}.ims"
        damaged.write_bytes(bytes(bad))
        home = tmp_path / f"dest-{i}"
        make_home(home, driver)
        run(home, "imsrestore", "-H", "-f", full, check=0)
        r = run(home, "imsrestore", "-H", "-f", damaged)
        assert r.returncode == 4 and p.name.encode() in r.stderr, (p.name, r.returncode, r.stderr)
        r = run(home, "imsrestore", "-f", incr2)
        err = r.stderr.decode()
        got = state(open_store(make_home(home, driver)))
        where = (p.name, r.returncode, err[-600:])
        if r.returncode == 0:
            # only when the next link does not need the damaged message: then it is exact
            assert got == want, where
        else:
            assert r.returncode == 7, where
            assert "could not write 1 of its messages" in err and "restore that archive again" in err, where
            outcomes.append(p.name)
        # the way back the line gives: the intact copy, then the next link
        run(home, "imsrestore", "-H", "-f", incr, check=0)
        run(home, "imsrestore", "-f", incr2, check=0)
        assert state(open_store(make_home(home, driver))) == want, p.name
    # the refusal was met (a message incr2 lists without carrying it), and not for all
    assert outcomes and len(outcomes) < len(victims), outcomes


def test_a_message_lost_to_a_damaged_header_leaves_its_uid_for_the_intact_copy(store, ims_home, tmp_path, driver):
    """A message member whose header block is damaged is lost (the reader goes on at the
    next member): its folder was recorded as a mirror of the archive all the same, so the
    same archive from an intact copy merged into it, giving the message a new UID (exit 0,
    clients fetch it again), and the next link was refused as if one had been skipped.
    Now the folder keeps the message's UID free, as for damaged bytes."""
    full, incr, incr2, want = _chain(store, ims_home, tmp_path)
    data = full.read_bytes()
    parts, _ = af.layout(data)
    victims = [p for p in parts if p.ustar[156:157] == pax.REGTYPE and p.name.endswith(".eml")]
    assert len(victims) >= 6, [p.name for p in victims]
    for i, p in enumerate(victims):
        bad = bytearray(data)
        bad[p.ustar_at + 20] ^= 0x01                # a byte of its name: the checksum fails
        damaged = tmp_path / f"damaged-{i}.ims"
        damaged.write_bytes(bytes(bad))
        home = tmp_path / f"dest-{i}"
        make_home(home, driver)
        r = run(home, "imsrestore", "-H", "-f", damaged)
        assert r.returncode == 4, (p.name, r.returncode, r.stderr)
        r = run(home, "imsrestore", "-H", "-f", incr)
        err = r.stderr.decode()
        assert r.returncode in (0, 7), (p.name, r.returncode, err)
        if r.returncode == 7:
            assert "could not write" in err and "restore that archive again" in err, (p.name, err)
        # the intact copy, then the chain: every message at its archived UID, exit 0
        for a in (full, incr):
            r = run(home, "imsrestore", "-H", "-f", a)
            assert r.returncode == 0 and b"with new UIDs" not in r.stderr, (p.name, a.name, r.stderr)
        r = run(home, "imsrestore", "-v", "-f", incr2)
        assert r.returncode == 0 and b" 0 with new UIDs" in r.stderr, (p.name, r.stderr[-500:])
        assert state(open_store(make_home(home, driver))) == want, p.name
