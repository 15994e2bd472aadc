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


@pytest.mark.parametrize("compress", [[], ["-z"]])
def test_archives_joined_into_one_stream_are_refused_with_what_to_do(store, ims_home, tmp_path, driver, compress):
    """`cat FULL INCR | imsrestore -f -` restored the full alone and exited 0: the
    incremental's mail (new messages, an expunge, a flag change) silently missing.  Now
    the first archive is restored whole, the run exits 4 naming the joined archive and
    the chain command; that command, run next, gives the chain's state exactly.  Zeros
    after an archive (a tape's or dd's padding) stay no error."""
    for n in range(4):
        put(store, "joe", "INBOX", n, size=300 * n, flags=["\\Seen"] if n % 2 else [])
    put(store, "ann", "Work", 9)
    full, incr = tmp_path / "full.ims", tmp_path / "incr.ims"
    run(ims_home, "imsbackup", *compress, "-f", full, "/", check=0)
    first = state(store)
    put(store, "joe", "INBOX", 20, size=900)
    put(store, "ann", "Work", 21)
    store.expunge("joe", "INBOX", [1])
    store.set_flags("joe", "INBOX", 2, ["\\Flagged"], [])
    run(ims_home, "imsbackup", *compress, "-f", incr, "--base", f"{full}.state", "/", check=0)
    want = state(store)
    assert want != first
    joined = full.read_bytes() + incr.read_bytes()
    (tmp_path / "joined.ims").write_bytes(joined)
    for n, (dev, feed) in enumerate(((["-f", tmp_path / "joined.ims"], None), (["-f", "-"], joined))):
        home = tmp_path / f"dest-{n}"
        make_home(home, driver)
        for args in ([], ["-t"]):
            p = run(home, "imsrestore", *args, *dev, input=feed)
            err = p.stderr.decode()
            assert p.returncode == 4, (args, p.returncode, err)
            assert "another ims-asm archive begins at byte" in err, (args, err)
            assert "imsrestore -f FULL -f INCR" in err and "nothing of it is missing" in err, (args, err)
            assert len(err.splitlines()) == 1, (args, err)
        assert state(open_store(make_home(home, driver))) == first
        p = run(home, "imsverify", *dev, input=feed)
        assert p.returncode == 4 and "another ims-asm archive begins" in p.stdout.decode() + p.stderr.decode()
        run(home, "imsrestore", "-f", full, "-f", incr, check=0)
        assert state(open_store(make_home(home, driver))) == want
    # zeros after the end (a 64 KiB tape block's padding) and after a whole record: no error
    for pad in (65536 - len(full.read_bytes()) % 65536, 3 * 65536 + 5):
        home = tmp_path / f"padded-{pad}"
        make_home(home, driver)
        padded = full.read_bytes() + bytes(pad)
        run(home, "imsrestore", "-f", "-", input=padded, check=0)
        assert state(open_store(make_home(home, driver))) == first
    # anything else past the record is damage, named as bytes after the archive, exit 4
    home = tmp_path / "junk"
    make_home(home, driver)
    junk = full.read_bytes() + bytes(70000) + b"\x01" + bytes(511)
    p = run(home, "imsrestore", "-f", "-", input=junk)
    err = p.stderr.decode()
    if compress:
        # the zstd layer's damage past the archive's verified trailer (zeros after its
        # last frame, then not zeros) is imsverify's to name, as a cut seek table is
        assert p.returncode == 0, err
        v = run(home, "imsverify", "-v", "-f", "-", input=junk)
        err = v.stderr.decode()
        assert v.returncode == 4 and "after the archive's end: zstd: the bytes after frame" in err, err
    else:
        assert p.returncode == 4 and "bytes that are not zeros follow the end of the archive's last record" in err, err
        assert "nothing of the archive is missing" in err and len(err.splitlines()) == 1, err
    assert state(open_store(make_home(home, driver))) == first


def test_on_a_tape_the_reader_stops_at_the_archives_record(store, ims_home, tmp_path):
    """A tape holds the next archive as its next tape file, behind a file mark: the
    reader stops at the end of the writer's last record there, as before, so `mt fsf`
    counts files as the operator expects; from a pipe or a file it reads on to the end
    (the joined archives above).  The tape is stood in for by a stream whose descriptor
    is a character device."""
    import io as _io
    from asm.archive.errors import JoinedArchives
    from asm.archive.reader import ArchiveReader

    put(store, "joe", "INBOX", 1)
    a = tmp_path / "a.ims"
    run(ims_home, "imsbackup", "-f", a, "/", check=0)
    data = a.read_bytes()
    nul = open("/dev/null", "rb")

    class Tape(_io.BytesIO):
        def fileno(self):
            return nul.fileno()

    for raw, joined in ((Tape(data + data), False), (_io.BytesIO(data + data), True)):
        read = []
        r = ArchiveReader(raw)
        try:
            for m in r.members():
                read.append(m.kind)
        except JoinedArchives:
            read.append("joined")
        assert ("joined" in read) == joined, read
        if not joined:          # (read to the end of its own data, not into the next file)
            assert raw.tell() == len(data) and r.verified
    nul.close()
