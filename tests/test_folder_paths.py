"""Folder names in logical paths: INBOX in any case, an exact name first, else the one
folder that matches without regard to case (the seed's own example writes
/primary/user/user1/trash) or to the Unicode form of its accents, else an error naming
the candidates; and
store.backupexclude names trimmed of the spaces around '%'."""
from __future__ import annotations

import io

import pytest

from asm.archive.reader import ArchiveReader
from asm.config import Config
from asm.errors import EXIT_USAGE
from asm.store import open_store
from tests.helpers import make_home, msg, run


def folders_in(archive) -> set:
    with open(archive, "rb") as f:
        return {(m.user, m.folder) for m in ArchiveReader(f).members() if m.kind == "folder"}


def messages_in(archive) -> set:
    with open(archive, "rb") as f:
        return {(m.user, m.folder, m.uid) for m in ArchiveReader(f).members() if m.kind == "message"}


@pytest.fixture(params=["classic", "maildir"])
def home(request, tmp_path):
    h = tmp_path / "ims"
    store = open_store(make_home(h, request.param))
    n = 0
    for user, folders in {"user1": ["Trash", "Bulk Mail", "Work", "Work/2023"],
                          "joe": ["Archive", "archive", "Archive/Old", "Projects/ims"]}.items():
        store.create_user(user)
        for f in ["INBOX"] + folders:
            if f != "INBOX":
                store.create_folder(user, f)
            n += 1
            store.append(user, f, io.BytesIO(msg(n)))
    return h


def test_the_seeds_override_example(home, tmp_path):
    """store.backupexclude = Trash%Bulk Mail leaves Trash out of user backups; naming it,
    even as 'trash', backs it up (docs/configuration.md)."""
    run(home, "msconfig", "set", "store.backupexclude", "Trash%Bulk Mail", check=0)
    run(home, "imsbackup", "-f", tmp_path / "all.ims", "/primary/user/user1", check=0)
    assert ("user1", "Trash") not in folders_in(tmp_path / "all.ims")
    p = run(home, "imsbackup", "-f", tmp_path / "trash.ims", "/primary/user/user1/trash")
    assert p.returncode == 0, p.stderr
    assert folders_in(tmp_path / "trash.ims") == {("user1", "Trash")}
    assert len(messages_in(tmp_path / "trash.ims")) == 1
    # asking that archive for the folder it left out says why, not only "nothing matches"
    for how in ((), ("-t",)):
        p = run(home, "imsrestore", "-f", tmp_path / "all.ims", *how, "/primary/user1/Trash")
        assert p.returncode == EXIT_USAGE
        assert p.stderr.decode() == (
            "imsrestore: /primary/user1/Trash: nothing in the archive matches this path (the backup "
            "left it out: store.backupexclude was 'Trash%Bulk Mail'; an archive of it needs a backup "
            "naming it, e.g. imsbackup -f FILE /primary/user1/Trash)\n")


def test_a_listing_and_a_restore_exit_alike_when_some_paths_match_nothing(home, tmp_path):
    """Paths of which some match nothing: the restore brings the rest and exits 1 (a
    part); -t with the same paths listed the rest and exited 2, as if nothing had
    matched.  Both now exit 1 naming the path that matched nothing, and 2 when none
    matched."""
    from asm.errors import EXIT_PARTIAL
    a = tmp_path / "all.ims"
    run(home, "imsbackup", "-f", a, "/primary/user/user1", check=0)
    dest = tmp_path / "dest"
    make_home(dest, "classic")
    line = ("imsrestore: /primary/user1/Nowhere: nothing in the archive matches this path")
    for how in (("-t",), ()):
        p = run(dest, "imsrestore", "-f", a, *how, "/primary/user1/INBOX", "/primary/user1/Nowhere", text=True)
        assert p.returncode == EXIT_PARTIAL, (how, p.returncode, p.stderr)
        assert p.stderr.startswith(line) and p.stderr.count("\n") == 1, (how, p.stderr)
        if how:
            assert "/primary/user1/INBOX\t" in p.stdout, p.stdout
        p = run(dest, "imsrestore", "-f", a, *how, "/primary/user1/Nowhere", "/primary/user2/INBOX", text=True)
        assert p.returncode == EXIT_USAGE, (how, p.returncode, p.stderr)
    got = open_store(make_home(dest, "classic"))
    assert [f for f in got.folder_names("user1")] == ["INBOX"]


@pytest.mark.parametrize("path,want", [
    ("/primary/user1/inbox", {"INBOX"}),
    ("/primary/user1/trash", {"Trash"}),
    ("/primary/user1/BULK MAIL", {"Bulk Mail"}),
    ("/primary/user1/work", {"Work", "Work/2023"}),
    ("/primary/user1/work/2023", {"Work/2023"}),
    ("/primary/user1/WORK/2023", {"Work/2023"}),
    ("/primary/joe/archive", {"archive"}),                   # an exact match wins
    ("/primary/joe/Archive", {"Archive", "Archive/Old"}),
    ("/primary/joe/archive/old", {"Archive/Old"}),           # the only one, whatever the case
    ("/primary/joe/projects/IMS", {"Projects/ims"}),
])
def test_which_folder_a_path_names(home, tmp_path, path, want):
    p = run(home, "imsbackup", "-f", tmp_path / "x.ims", path)
    assert p.returncode == 0, p.stderr
    assert {f for _, f in folders_in(tmp_path / "x.ims")} == want


def test_several_folders_differing_in_case_are_named(home, tmp_path):
    p = run(home, "imsbackup", "-f", tmp_path / "x.ims", "/primary/joe/ARCHIVE")
    assert p.returncode == EXIT_USAGE
    assert p.stderr.decode() == ("imsbackup: /primary/joe/ARCHIVE: user 'joe': folder 'ARCHIVE' matches "
                                 "'Archive', 'archive' when case is ignored, and none exactly: name one "
                                 "of them exactly\n")
    assert not (tmp_path / "x.ims").exists()
    p = run(home, "imsbackup", "-f", tmp_path / "x.ims", "/primary/joe/Archiv")
    assert p.returncode == EXIT_USAGE and b"user 'joe' has no folder 'Archiv'" in p.stderr


@pytest.mark.parametrize("how", ["msconfig", "by hand"])
def test_spaces_around_percent_are_trimmed(home, tmp_path, how):
    if how == "msconfig":
        run(home, "msconfig", "set", "store.backupexclude", " Trash % Bulk Mail ", check=0)
        assert run(home, "msconfig", "show", "store.backupexclude").stdout == \
            b"role.store.backupexclude = Trash%Bulk Mail\n"
    else:
        with open(home / "config" / "msg.conf", "a") as f:
            f.write("store.backupexclude = Trash % Bulk Mail\n")
    p = run(home, "imsbackup", "-f", tmp_path / "x.ims", "/primary/user1")
    assert p.returncode == 0, p.stderr
    assert {f for _, f in folders_in(tmp_path / "x.ims")} == {"INBOX", "Work", "Work/2023"}


def test_restore_names_what_a_path_missed_by_case(home, tmp_path):
    run(home, "imsbackup", "-f", tmp_path / "all.ims", "/", check=0)
    dest = tmp_path / "dest"
    make_home(dest, "maildir")
    p = run(dest, "imsrestore", "-f", tmp_path / "all.ims", "/primary/user1/trash")
    assert p.returncode == EXIT_USAGE
    assert p.stderr.decode() == ("imsrestore: /primary/user1/trash: nothing in the archive matches this "
                                 "path (it has /primary/user1/Trash: folder names are matched exactly, "
                                 "but INBOX)\n")
    p = run(dest, "imsrestore", "-f", tmp_path / "all.ims", "/primary/user1/Trash")
    assert p.returncode == 0, p.stderr


NFC, NFD = "R\u00e9sum\u00e9s", "Re\u0301sume\u0301s"     # the same text: accents as one or two code points


@pytest.mark.parametrize("typed,stored", [(NFC, NFD), (NFD, NFC), (NFC.upper(), NFD)])
def test_a_path_typed_in_another_unicode_form_names_the_folder(home, tmp_path, typed, stored):
    """A folder a Mac client (or a name copied from a file listing) wrote with its accents
    as combining characters, and a path typed with them as one character: the same text
    on every screen.  imsbackup said "user 'joe' has no folder 'Résumés'" (exit 2), the
    folder plainly there in mboxutil -l; and a restore's path matched nothing, the line
    naming a folder that read like the path itself.  A backup now takes the one folder
    that is that text (as it takes one that differs in case), an exact name first; a
    restore (which matches exactly) says the two differ in their code points and where
    to copy the name from."""
    store = open_store(Config(str(home)))
    store.create_folder("joe", stored)
    store.create_folder("joe", stored + "/2026")
    store.append("joe", stored, io.BytesIO(msg(90)))
    p = run(home, "imsbackup", "-f", tmp_path / "x.ims", f"/primary/joe/{typed}")
    assert p.returncode == 0, p.stderr
    assert folders_in(tmp_path / "x.ims") == {("joe", stored), ("joe", stored + "/2026")}
    p = run(home, "imsbackup", "-f", tmp_path / "all.ims", "/")
    assert p.returncode == 0, p.stderr
    dest = tmp_path / "dest"
    make_home(dest, "maildir")
    p = run(dest, "imsrestore", "-f", tmp_path / "all.ims", f"/primary/joe/{typed}", text=True)
    assert p.returncode == EXIT_USAGE
    assert p.stderr == (f"imsrestore: /primary/joe/{typed}: nothing in the archive matches this path (it has "
                        f"/primary/joe/{stored}: folder names are matched exactly, but INBOX"
                        + ("; the same letters, written in other Unicode code points (accents as separate "
                           "characters, or not): copy the path from imsrestore -t" if typed != NFC.upper() else "")
                        + ")\n")
    p = run(dest, "imsrestore", "-f", tmp_path / "all.ims", f"/primary/joe/{stored}", text=True)
    assert p.returncode == 0, p.stderr


def test_an_exact_name_wins_over_one_in_another_unicode_form(home, tmp_path):
    store = open_store(Config(str(home)))
    for i, f in enumerate((NFC, NFD)):
        store.create_folder("joe", f)
        store.append("joe", f, io.BytesIO(msg(80 + i)))
    for f in (NFC, NFD):
        p = run(home, "imsbackup", "-f", tmp_path / "x.ims", f"/primary/joe/{f}")
        assert p.returncode == 0, p.stderr
        assert folders_in(tmp_path / "x.ims") == {("joe", f)}
    p = run(home, "imsbackup", "-f", tmp_path / "x.ims", f"/primary/joe/{NFC.lower()}")
    assert p.returncode == EXIT_USAGE and "when case is ignored, and none exactly" in p.stderr.decode(), p.stderr


def test_a_user_path_typed_in_another_unicode_form_says_so(home, tmp_path):
    """User IDs are matched exactly; one typed with its accents in another Unicode form
    than the store's was "no user 'jörg' in the store", the user plainly in mboxutil -l."""
    store = open_store(Config(str(home)))
    store.create_user("jo\u0308rg")
    p = run(home, "imsbackup", "-f", tmp_path / "x.ims", "/primary/j\u00f6rg", text=True)
    assert p.returncode == EXIT_USAGE
    assert p.stderr == ("imsbackup: /primary/j\u00f6rg: no user 'j\u00f6rg' in the store (it has 'jo\u0308rg': the "
                        "same letters, written in other Unicode code points (accents as separate characters, "
                        "or not); user IDs are matched exactly: copy the ID from mboxutil -l)\n"), p.stderr
    assert not (tmp_path / "x.ims").exists()
    p = run(home, "imsbackup", "-f", tmp_path / "x.ims", "/primary/nobody", text=True)
    assert p.stderr == "imsbackup: /primary/nobody: no user 'nobody' in the store\n"


def test_a_restore_path_naming_a_user_in_another_unicode_form_says_so(tmp_path):
    src = tmp_path / "src"
    store = open_store(make_home(src, "maildir"))
    store.create_user("jo\u0308rg")
    store.append("jo\u0308rg", "INBOX", io.BytesIO(msg(1)))
    run(src, "imsbackup", "-f", tmp_path / "a.ims", "/", check=0)
    dest = tmp_path / "dest"
    make_home(dest, "maildir")
    for path, shown in (("/primary/j\u00f6rg", "/primary/jo\u0308rg"),
                        ("/primary/j\u00f6rg/INBOX", "/primary/jo\u0308rg/INBOX")):
        p = run(dest, "imsrestore", "-f", tmp_path / "a.ims", path, text=True)
        assert p.returncode == EXIT_USAGE
        assert p.stderr == (f"imsrestore: {path}: nothing in the archive matches this path (it has {shown}: "
                            "user IDs and folder names are matched exactly, but INBOX; the same letters, "
                            "written in other Unicode code points (accents as separate characters, or not): "
                            "copy the path from imsrestore -t)\n"), p.stderr
    p = run(dest, "imsrestore", "-f", tmp_path / "a.ims", "/primary/jo\u0308rg", text=True)
    assert p.returncode == 0, p.stderr
