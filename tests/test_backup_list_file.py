"""imsbackup -u FILE: a line names the folder it says.

Blanks around a line are dropped (an editor's trailing space, CRLF line ends,
indentation), but a folder's name may itself end in blanks: an IMAP client makes
"Sent " beside "Sent" (Dovecot allows it).  A line "/primary/joe/Sent " backed up
"Sent", exit 0, while "Sent " was left out.  Now the line as written wins when the store
has that folder; otherwise the line without its blanks is the path, as before."""
from __future__ import annotations

import io
import random

import pytest

from asm.archive.reader import ArchiveReader
from tests.dovecot_lab import MAIL_USER, lab_fixture, message
from tests.helpers import make_home, run

lab = lab_fixture("plain")

#: folders that differ only by trailing blanks, and one without a twin
FOLDERS = ["Sent", "Sent ", "Sent  ", "Drafts"]


def archived(path) -> dict:
    """{folder: [Subject of each message]} of the archive at ``path``."""
    out: dict = {}
    with open(path, "rb") as f:
        for m in ArchiveReader(f):
            if m.kind == "folder":
                out.setdefault(m.folder, [])
            elif m.kind != "user":
                assert m.kind == "message", m       # (no two messages alike: no link)
                with m.open() as body:
                    head = body.read()
                subject = [ln for ln in head.splitlines() if ln.startswith(b"Subject: ")][0]
                out.setdefault(m.folder, []).append(subject[len(b"Subject: "):].decode())
    return out


def cases(rng: random.Random) -> list[tuple[str, str]]:
    """(a -u line's text, the folder it names): each folder as written, and with junk
    around it (indentation, tabs or spaces after it), in a shuffled order."""
    out = [(f"/primary/joe/{name}", name) for name in FOLDERS]
    for name in FOLDERS:
        junk = rng.choice([" ", "  ", "\t", "   ", " \t "])
        # the name and its junk as one folder, if the store has it ("Sent" + " "); else
        # the line without its blanks ("Sent " + "   " is "Sent", as before)
        written = name + junk
        out.append((rng.choice(["", " ", "\t"]) + f"/primary/joe/{written}",
                    written if written in FOLDERS else written.strip()))
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_list_line_names_the_folder_with_trailing_blanks_that_dovecot_made(lab, tmp_path, seed):
    """Dovecot (IMAP CREATE and APPEND) makes the folders; each line of a -u file names
    exactly one of them, whatever junk its line carries."""
    home = tmp_path / "ims"
    make_home(home, "maildir", **{"store.owner": MAIL_USER, "dovecot.config": lab.conf,
                                  "store.mail_location": "doveconf"})
    u = f"joe{seed}"
    lab.add_user(u)
    with lab.imap(u) as imap:
        for name in FOLDERS:
            imap.create(name)
            for k in range(2):
                imap.append(name, message(f"in {name!r} {k}"))
        assert set(FOLDERS) <= set(imap.list())
    check_lines_for(home, tmp_path, random.Random(seed), u)


def check_lines_for(home, tmp_path, rng, user: str) -> None:
    """Back up each case's line alone (LF or CRLF ended, after a comment): the archive
    holds that folder alone, with its own messages; then every folder named at once."""
    for i, (line, want) in enumerate(cases(rng)):
        line = line.replace("/primary/joe/", f"/primary/{user}/")
        lst = tmp_path / f"list-{i}"
        end = rng.choice(["\n", "\r\n"])
        lst.write_bytes(f"# users to move\n{line}{end}".encode())
        a = tmp_path / f"a-{i}.ims"
        run(home, "imsbackup", "-f", a, "-u", lst, check=0)
        got = archived(a)
        assert list(got) == [want], (line, got)
        assert got[want] == [f"in {want!r} {k}" for k in range(2)], (line, got)
    lst = tmp_path / "all"
    lst.write_text("".join(f"/primary/{user}/{name}\n" for name in FOLDERS))
    run(home, "imsbackup", "-f", tmp_path / "all.ims", "-u", lst, check=0)
    assert sorted(archived(tmp_path / "all.ims")) == sorted(FOLDERS)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_list_line_names_the_folder_with_trailing_blanks_in_the_classic_store(tmp_path, seed):
    """The same in the classic store (its own API makes the folders)."""
    from asm.store import open_store
    home = tmp_path / "ims"
    store = open_store(make_home(home, "classic"))
    store.create_user("joe")
    for name in FOLDERS:
        store.create_folder("joe", name, subscribed=True)
        for k in range(2):
            store.append("joe", name, io.BytesIO(message(f"in {name!r} {k}")))
    check_lines_for(home, tmp_path, random.Random(seed), "joe")
