"""An archive with something written after its end: a member appended by GNU `tar -r`
(an administrator adding a note to the tape's archive), or a device's bytes over the
rest of the writer's last record.  Every member before them is whole and matches the
trailer: the restore restores everything and still exits 4 (docs/format.md §2.7: only
zeros may follow the trailer), but the line says what happened and that nothing of the
archive is missing.  Before, it said the trailer "was skipped, restore it from another
backup" and "1 damaged members were named above and not restored", though none was.
When a member really is damaged, the lines say so as before, never "nothing missing".
"""
from __future__ import annotations

import subprocess

import pytest

from asm.store import open_store
from tests.helpers import make_home, put, require, run, state


@pytest.fixture
def archive(store, ims_home, tmp_path):
    for folder in ("INBOX", "Work/2023"):
        for n in range(3):
            put(store, "joe", folder, n + 10 * len(folder), size=50 * n, flags=["\\Seen"] if n else [])
    put(store, "ann", "INBOX", 99)
    a = tmp_path / "full.ims"
    run(ims_home, "imsbackup", "-f", a, "/", check=0)
    return a


def _end_of_trailer(data: bytes) -> int:
    return len(data.rstrip(b"\0"))


@pytest.mark.parametrize("how", ["tar -r", "bytes in the last record"])
def test_bytes_after_the_archives_end_are_named_for_what_they_are(store, archive, tmp_path, driver, how):
    want = state(store)
    data = archive.read_bytes()
    changed = tmp_path / "changed.ims"
    if how == "tar -r":
        changed.write_bytes(data)
        (tmp_path / "NOTE.txt").write_text("restore with imsrestore\n")
        subprocess.run([require("tar"), "-rf", changed.name, "NOTE.txt"], cwd=tmp_path, check=True)
    else:
        end = _end_of_trailer(data)
        changed.write_bytes(data[:end + 1024 + 7] + b"\x01garbage" + data[end + 1024 + 15:])
    assert changed.read_bytes() != data
    # and the same with a message's bytes damaged too: then a member is missing
    bad = bytearray(changed.read_bytes())
    at = data.index(b"Subject: ") + 3      # within the first message's data
    bad[at] ^= 0x20
    damaged = tmp_path / "damaged.ims"
    damaged.write_bytes(bytes(bad))
    for n, (dev, feed) in enumerate(((["-f", changed], None), (["-f", "-"], changed.read_bytes()))):
        home = tmp_path / f"dest-{n}"
        make_home(home, driver)
        r = run(home, "imsrestore", *dev, input=feed)
        t = run(home, "imsrestore", "-t", *dev, input=feed)
        for what, p in (("restore", r), ("-t", t)):
            err = p.stderr.decode()
            assert p.returncode == 4, (what, p.returncode, err)
            assert "the bytes after the trailer are not zeros" in err, (what, err)
            assert "nothing of the archive is missing" in err, (what, err)
            assert "not restored" not in err and "was skipped" not in err, (what, err)
            assert len(err.splitlines()) == 1, (what, err)
        assert state(open_store(make_home(home, driver))) == want
        home = tmp_path / f"damaged-{n}"
        make_home(home, driver)
        feed2 = damaged.read_bytes() if feed is not None else None
        dev2 = ["-f", "-"] if feed is not None else ["-f", damaged]
        for args in ([], ["-t"]):
            p = run(home, "imsrestore", *args, *dev2, input=feed2)
            err = p.stderr.decode()
            assert p.returncode == 4, (args, err)
            assert "is damaged" in err and "nothing of the archive is missing" not in err, (args, err)
