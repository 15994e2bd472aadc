"""Archives whose member names were crafted (every digest, checksum and the trailer
recomputed, so only the reader's name checks and the commands' output stand between the
archive and the user): what `imsrestore` and `imsrestore -t` make of names no store holds.

* A folder level whose escapes decode to hold '/' (`Trash%2F`, `%2FTrash`,
  `Work%2F%2F2023`, `A%2FB`): ims-asm never writes one (a folder's levels are split at '/',
  an empty level cannot be archived, docs/format.md §3).  Before, `-t` called such an
  archive intact (exit 0) and the restore named a "bad folder name" (exit 1): now both
  name the member as damaged, exit 4, and the rest of the archive is restored.
* A name holding control characters (an ESC sequence, a newline that starts a forged
  listing line, a tab): `-t` printed them raw to stdout, so an archive could drive the
  terminal of whoever checks a tape with it and add lines to the listing; now each is
  written as \\xNN, one listed folder or message per line, as on stderr.
"""
from __future__ import annotations

import os

import pytest

from asm.archive import spec
from asm.store import open_store
from tests import archive_fuzz as af
from tests.helpers import make_home, put, run, state


def _rename_folder(ms, user: str, old: str, new_member: bytes, new_logical: bytes):
    """Folder ``old`` of ``user`` (not its subfolders) under another member directory and
    IMSASM.folder record; its messages follow it."""
    oldp = f"primary/{user}/{old}/".encode()
    for m in ms:
        if m.name.startswith(oldp) and b"/" not in m.name[len(oldp):].rstrip(b"/"):
            m.set_name(f"primary/{user}/".encode() + new_member + b"/" + m.name[len(oldp):])
            if m.get(spec.FOLDER) is not None:
                m.set(spec.FOLDER, new_logical)
    return ms


@pytest.fixture
def archive(store, ims_home, tmp_path):
    for folder in ("INBOX", "Work/2023", "Trash"):
        for n in range(3):
            put(store, "joe", folder, n + 10 * len(folder), size=30 * n, flags=["\\Seen"] if n else [])
    put(store, "ann", "INBOX", 99)
    a = tmp_path / "full.ims"
    run(ims_home, "imsbackup", "-f", a, "/", check=0)
    return a.read_bytes()


def _fresh(tmp_path, driver, tag):
    home = tmp_path / tag
    make_home(home, driver)
    return home


def _both_ways(tmp_path, driver, archive, tag):
    """For ``-f FILE`` and ``-f -`` (a pipe): (how, a new installation, the restore of
    ``archive`` into it, ``imsrestore -t`` of it)."""
    for how in ("file", "pipe"):
        home = _fresh(tmp_path, driver, f"{tag}-{how}")
        dev = ["-f", "-"] if how == "pipe" else ["-f", archive]
        feed = archive.read_bytes() if how == "pipe" else None
        yield how, home, run(home, "imsrestore", *dev, input=feed), run(home, "imsrestore", "-t", *dev, input=feed)


@pytest.mark.parametrize("member,status", [
    (b"Trash%2F", 4), (b"%2FTrash", 4), (b"Tr%2F%2Fash", 4), (b"Tr%2Fash", 4),
    (b"%2F%2E%2E%2Fesc", 5),            # a '..' level among them: hostile, as before
])
def test_a_folder_level_that_decodes_to_hold_a_slash_is_damage(archive, tmp_path, driver, member, status):
    logical = member.replace(b"%2F", b"/").replace(b"%2E", b".")
    ms = _rename_folder(af.models(archive), "joe", "Trash", member, logical)
    forged = tmp_path / "forged.ims"
    forged.write_bytes(af.emit(ms))
    for how, home, r, t in _both_ways(tmp_path, driver, forged, "home"):
        for what, p in (("restore", r), ("-t", t)):
            err = p.stderr.decode("utf-8", "replace")
            assert p.returncode == status, (how, what, p.returncode, err)
            assert "Traceback" not in err
            assert f"primary/joe/{member.decode()}/" in err and "%2F" in err, (how, what, err)
        got = state(open_store(make_home(home, driver)))
        assert not any(k[1].startswith(("Tr", "/")) or "//" in k[1] for k in got), got
        # the rest of the archive is restored, exactly
        assert {k for k in got if k[0] == "ann"} and ("joe", "Work/2023") in got
        assert not any(name not in ("config", "data") for name in os.listdir(home)), os.listdir(home)


CONTROL_NAMES = [
    # an ESC sequence that clears the screen, an OSC that sets the window title, a bell
    b"Tr%1B[2J%1B]0;owned%07ash",
    # a newline that starts a forged listing line, with tabs as the listing's own
    b"Trash%0A/primary/joe/INBOX/77%0912345%092020-01-01 00:00%09",
    # a carriage return that overwrites the line, DEL and a C1 CSI
    b"Trash%0D/primary/ann/INBOX%7F%C2%9B31m",
]


@pytest.mark.parametrize("member", CONTROL_NAMES)
def test_the_listing_writes_control_characters_of_names_as_escapes(archive, tmp_path, driver, member):
    import urllib.parse
    logical = urllib.parse.unquote_to_bytes(member)
    ms = _rename_folder(af.models(archive), "joe", "Trash", member, logical)
    # and a keyword holding a C1 CSI (the format refuses C0 and DEL in keywords, not C1)
    first = next(m for m in ms if m.name.startswith(b"primary/joe/INBOX/") and m.name.endswith(b".eml"))
    first.set(spec.KEYWORDS, b"$L\xc2\x9b2J")
    forged = tmp_path / "forged.ims"
    forged.write_bytes(af.emit(ms))
    home = _fresh(tmp_path, driver, "home")
    for dev, feed in ((["-f", forged], None), (["-f", "-"], forged.read_bytes())):
        t = run(home, "imsrestore", "-t", *dev, input=feed)
        out = t.stdout
        assert t.returncode == 0, t.stderr
        bad = [c for c in out if c < 0x20 and c not in (0x09, 0x0A)]
        assert not bad, out
        assert not any(0x7F <= ord(c) <= 0x9F for c in out.decode("utf-8", "surrogateescape")), out
        lines = out.decode("utf-8").splitlines()
        # one line per folder and message the archive holds, each a listed name and tab-separated fields
        held = [m for m in ms if m.name.startswith(b"primary/") and m.get(spec.KIND) in (b"folder", b"message", b"link")]
        assert len(lines) == len(held), lines
        folder_lines = [x for x in lines if "\tuidvalidity=" in x]
        assert all(x.count("\t") == 1 for x in folder_lines), folder_lines
        assert all(x.count("\t") == 3 for x in lines if x not in folder_lines), lines
        assert not any(x.startswith("/primary/joe/INBOX/77") for x in lines), lines
        assert any("\\x1b" in x or "\\x0a" in x or "\\x0d" in x for x in lines), lines


@pytest.mark.parametrize("spelling", [b"inbox", b"Inbox", b"iNBOX"])
def test_the_inbox_in_another_case_is_the_inbox(store, archive, tmp_path, driver, spelling):
    """IMAP's INBOX is one folder whatever its ASCII case (RFC 3501 5.1), and every store
    names it INBOX.  Before, a member 'primary/joe/inbox/' made the classic store's restore
    fail with exit 17 and 'cannot write joe/inbox: .../=inbox/store.idx' (a store it took
    for damaged), and the maildir one merge a second "INBOX" into the first, exit 0."""
    source = state(store)
    # the archive's INBOX spelled otherwise: restored as the INBOX, exactly
    ms = _rename_folder(af.models(archive), "joe", "INBOX", spelling, spelling)
    alone = tmp_path / "alone.ims"
    alone.write_bytes(af.emit(ms))
    # and the same beside the INBOX (Trash respelled): that folder is there twice
    ms = _rename_folder(af.models(archive), "joe", "Trash", spelling, spelling)
    twice = tmp_path / "twice.ims"
    twice.write_bytes(af.emit(ms))
    for how, home, r, t in _both_ways(tmp_path, driver, alone, "alone"):
        assert r.returncode == 0 and t.returncode == 0, (how, r.stderr, t.stderr)
        assert state(open_store(make_home(home, driver))) == source
    for how, home, r, t in _both_ways(tmp_path, driver, twice, "twice"):
        for what, p in (("restore", r), ("-t", t)):
            err = p.stderr.decode("utf-8", "replace")
            assert p.returncode == 4, (how, what, p.returncode, err)
            assert f"primary/joe/{spelling.decode()}/" in err and "twice" in err, (how, what, err)
        got = state(open_store(make_home(home, driver)))
        # the INBOX as archived, nothing of the second one in it; the rest restored
        assert {k: v for k, v in got.items() if k[:2] == ("joe", "INBOX")} == \
            {k: v for k, v in source.items() if k[:2] == ("joe", "INBOX")}
        assert {k: v for k, v in got.items() if k[1] != "Trash"} == \
            {k: v for k, v in source.items() if k[1] != "Trash"}
