"""Names that are not UTF-8 round-trip: a Maildir folder or user directory whose name
holds bytes another tool wrote is listed, backed up, printed (-v, -t, mboxutil -l) and
restored with those very bytes; a trailer's error list, the restore journal, reference
files and the staging catalog keep them; the classic store, which keeps names as UTF-8
text, refuses such a name with one line for that mailbox only.  And UTF-8 names stay
those names under a locale whose character set is not UTF-8."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from asm.archive.reader import ArchiveReader
from asm.config import Config
from asm.errors import EXIT_PARTIAL, EXIT_USAGE
from asm.store import open_store
from asm.store.base import NameTooLong
from tests.helpers import command_env, make_home, msg, require, run, state, unavailable

CAFE = os.fsdecode(b"Caf\xe9")          # Latin-1 'Café': not UTF-8
JORG = os.fsdecode(b"j\xf6rg")          # Latin-1 'jörg'
PRIVE_RAW = "Priv\u00e9"                # UTF-8, but not modified UTF-7 on disk


def maildir_folder(root: bytes, name: bytes, body: bytes, stamp: int = 1700000000) -> None:
    """A folder made the way another tool would: a .Name directory with a message."""
    d = os.path.join(root, b"." + name)
    for sub in (b"cur", b"new", b"tmp"):
        os.makedirs(os.path.join(d, sub))
    with open(os.path.join(d, b"cur", b"%d.M1P1.otherhost,S=%d:2,S" % (stamp, len(body))), "wb") as f:
        f.write(body)


def maildir_user(partition: bytes, user: bytes, body: bytes) -> None:
    md = os.path.join(partition, user, b"Maildir")
    for sub in (b"cur", b"new", b"tmp"):
        os.makedirs(os.path.join(md, sub))
    with open(os.path.join(md, b"cur", b"1700000000.M1P1.otherhost,S=%d:2," % len(body)), "wb") as f:
        f.write(body)


@pytest.fixture
def foreign(tmp_path):
    """A maildir store holding joe (with folders Café in Latin-1 and Privé in raw UTF-8)
    and jörg (in Latin-1), as another tool left them."""
    home = tmp_path / "src"
    cfg = make_home(home, "maildir")
    store = open_store(cfg)
    store.create_user("joe")
    store.append("joe", "INBOX", io.BytesIO(msg(1)))
    part = os.fsencode(cfg.partitions()["primary"])
    root = os.path.join(part, b"joe", b"Maildir")
    maildir_folder(root, b"Caf\xe9", msg(2))
    maildir_folder(root, b"Priv\xc3\xa9", msg(3))
    maildir_user(part, b"j\xf6rg", msg(4))
    return home, store


def test_mboxutil_lists_names_as_their_bytes(foreign):
    home, _ = foreign
    p = run(home, "mboxutil", "-l")
    assert p.returncode == 0, p.stderr
    assert b"  user/joe/Caf\xe9" in p.stdout
    assert "  user/joe/Privé".encode() in p.stdout
    assert b"  user/j\xf6rg/INBOX" in p.stdout
    assert p.stderr == b""


@pytest.mark.parametrize("dest_driver", ["maildir", "classic"])
def test_backup_and_restore_of_names_that_are_not_utf8(tmp_path, foreign, dest_driver):
    home, store = foreign
    state(store)                  # the first look gives the foreign folders their UIDs
    want = state(store)
    assert ("joe", CAFE) in want and (JORG, "INBOX") in want and ("joe", PRIVE_RAW) in want
    archive = tmp_path / "full.ims"
    p = run(home, "imsbackup", "-v", "-f", archive, "/")
    assert p.returncode == 0, p.stderr
    assert b"imsbackup: /primary/joe/Caf\\xe9: 1 messages" in p.stderr           # -v, for people
    assert b"imsbackup: /primary/j\\xf6rg/INBOX: 1 messages" in p.stderr
    with open(archive, "rb") as f:
        users = {(m.user, m.folder) for m in ArchiveReader(f).members() if m.kind == "folder"}
    assert users == {("joe", "INBOX"), ("joe", CAFE), ("joe", PRIVE_RAW), (JORG, "INBOX")}
    p = run(home, "imsrestore", "-f", archive, "-t")                                # -t, for scripts
    assert p.returncode == 0, p.stderr
    assert b"/primary/joe/Caf\xe9\tuidvalidity=" in p.stdout
    assert b"/primary/j\xf6rg/INBOX/1\t" in p.stdout
    assert run(home, "imsrestore", "-f", archive, "-t", f"/primary/{JORG}").stdout.count(b"\n") == 2

    dest = tmp_path / "dest"
    make_home(dest, dest_driver)
    p = run(dest, "imsrestore", "-v", "-f", archive)
    assert b"Traceback" not in p.stderr
    got = state(open_store(make_home(dest, dest_driver)))
    if dest_driver == "maildir":
        assert p.returncode == 0, p.stderr
        assert got == want
        root = os.path.join(os.fsencode(open_store(make_home(dest, "maildir")).partition_path("primary")),
                            b"joe", b"Maildir")
        assert os.path.isdir(os.path.join(root, b".Caf\xe9", b"cur")), "the very bytes come back"
        assert os.path.isdir(os.path.join(root, b".Priv&AOk-", b"cur")), "UTF-8 goes back as Dovecot writes it"
        again = run(dest, "imsrestore", "-f", archive)                # the journal holds the names
        assert again.returncode == 0, again.stderr
        assert state(open_store(make_home(dest, dest_driver))) == want
    else:
        # the classic store keeps names as UTF-8 text: those two mailboxes are named, the rest
        # restored: a named failure (1), not a store that cannot be read or written (17)
        assert p.returncode == EXIT_PARTIAL, p.stderr
        errs = [ln for ln in p.stderr.decode("utf-8").splitlines()
                if "not UTF-8" in ln and not ln.startswith("imsrestore: error:")]
        assert len(errs) == 2 and any("j\\xf6rg" in e for e in errs) and any("Caf\\xe9" in e for e in errs)
        assert {k: v for k, v in want.items() if JORG not in k and CAFE not in k} == got


def test_an_error_list_with_such_a_name(tmp_path, foreign):
    """A folder with a damaged index and a name that is not UTF-8: the backup names it
    and finishes (the trailer used to be unwritable and the whole backup lost)."""
    home, store = foreign
    d = os.path.join(os.fsencode(store.partition_path("primary")), b"joe", b"Maildir", b".Caf\xe9")
    with open(os.path.join(d, b"dovecot-uidlist"), "wb") as f:
        f.write(b"7 garbage\n")
    archive = tmp_path / "full.ims"
    p = run(home, "imsbackup", "-f", archive, "/")
    assert p.returncode == 1, p.stderr
    assert b"could not back up /primary/joe/Caf\\xe9: " in p.stderr and b"Traceback" not in p.stderr
    with open(archive, "rb") as f:
        r = ArchiveReader(f)
        list(r.members())
    assert [e["mailbox"] for e in r.trailer["errors"]] == [f"/primary/joe/{CAFE}"]
    raw = archive.read_bytes()
    trailer = raw[raw.index(b'"errors"'):]
    trailer.decode("utf-8")                                 # the member is valid UTF-8 JSON


def test_folder_directories_not_spelled_as_their_folder_are_named(tmp_path):
    """Folder directories another tool named with no canonical modified UTF-7 spelling
    ('.a&b', an unterminated '.&AOk', '.&AOk-&AOk-' next to '.&AOkA6Q-' (both 'éé'),
    '.&AGE-' next to '.a' (both 'a'), raw UTF-8 '.Privé' next to '.Priv&AOk-'): each
    one is backed up under a name that restores to that very directory, or named with
    exit 1; none is dropped or merged into another (the archive held 3 of 8, exit 0)."""
    home = tmp_path / "src"
    cfg = make_home(home, "maildir")
    store = open_store(cfg)
    store.create_user("joe")
    root = os.path.join(os.fsencode(cfg.partitions()["primary"]), b"joe", b"Maildir")
    odd = [b"a&b", b"&AOk", b"&AOk-&AOk-", b"&AGE-", b"Priv\xc3\xa9"]
    canonical = [b"&AOkA6Q-", b"a", b"Priv&AOk-"]
    for i, name in enumerate(odd + canonical):
        maildir_folder(root, name, msg(i + 1), stamp=1700000000 + i)
    archive = tmp_path / "full.ims"
    p = run(home, "imsbackup", "-f", archive, "/")
    assert p.returncode == 1, p.stderr
    errs = p.stderr.decode("utf-8", "replace")
    for name in odd:
        assert f"/primary/joe/.{name.decode()} ".encode() in p.stderr or \
            f"/Maildir/.{name.decode()})" in errs, (name, errs)
    assert "it spells the folder 'Privé' in raw UTF-8, but that folder is the directory " \
           ".Priv&AOk-" in errs
    with open(archive, "rb") as f:
        r = ArchiveReader(f)
        members = list(r.members())
    folders = sorted(m.folder for m in members if m.kind == "folder")
    assert folders == sorted(["INBOX", "éé", "a", PRIVE_RAW])
    assert sum(1 for m in members if m.kind == "message") == 3
    assert len(r.trailer["errors"]) == len(odd)
    # the folders it read restore to the directories they came from
    dest = tmp_path / "dest"
    dcfg = make_home(dest, "maildir")
    p = run(dest, "imsrestore", "-f", archive)
    droot = os.path.join(os.fsencode(dcfg.partitions()["primary"]), b"joe", b"Maildir")
    for name in canonical:
        assert len(os.listdir(os.path.join(droot, b"." + name, b"cur"))) == 1, name
    assert not any(os.path.exists(os.path.join(droot, b"." + n)) for n in odd)


def test_names_in_list_map_and_path_arguments(tmp_path, foreign):
    home, store = foreign
    lst = tmp_path / "users.txt"
    lst.write_bytes(b"# one per line\n/primary/j\xf6rg\n")
    archive = tmp_path / "jorg.ims"
    p = run(home, "imsbackup", "-f", archive, "-u", lst)
    assert p.returncode == 0, p.stderr
    p = run(home, "imsbackup", "-f", tmp_path / "cafe.ims", f"/primary/joe/{CAFE}")
    assert p.returncode == 0, p.stderr
    mapfile = tmp_path / "map"
    mapfile.write_bytes(b"j\xf6rg=joerg\n")
    dest = tmp_path / "dest"
    make_home(dest, "classic")
    p = run(dest, "imsrestore", "-m", mapfile, "-f", archive)
    assert p.returncode == 0, p.stderr
    got = state(open_store(make_home(dest, "classic")))
    assert [k for k in got if len(k) == 3] == [("joerg", "INBOX", 1)]
    assert got[("joerg", "INBOX", 1)][0] == state(store)[(JORG, "INBOX", 1)][0]


def test_journal_reffile_and_catalog_keep_the_bytes(tmp_path):
    from asm.archive.names import dump_json, from_db, to_db
    from asm.restore import Journal, read_reffile, write_reffile
    from staging.catalog import Catalog
    for name in (CAFE, JORG, "plain", "Privé", "%41", os.fsdecode(b"\xff\xfe")):
        assert from_db(to_db(name)) == name
        assert json.loads(dump_json({"n": name})) == {"n": name}
    assert to_db("plain") == "plain" and to_db("Privé") == "Privé", "UTF-8 names are stored as before"
    j = Journal(str(tmp_path / "journal.db"))
    j.put(JORG, CAFE, 7, 9, {"archive_id": "a"}, True)
    j.put(JORG, "Caf\u00e9", 8, 10, {"archive_id": "b"}, True)
    a, b = j.get(JORG, CAFE), j.get(JORG, "Caf\u00e9")
    assert (a.uidvalidity, a.uidnext, a.archive_id) == (7, 9, "a") and (b.uidvalidity, b.uidnext, b.archive_id) == (8, 10, "b")
    ref = tmp_path / "x.ref"
    pending = [{"member": f"p/{JORG}/{CAFE}/2.eml", "target": "p/ann/INBOX/1.eml", "partition": "p",
                "user": JORG, "folder": CAFE, "uid": 2, "flags": [], "keywords": [],
                "internaldate": 1_700_000_000}]
    write_reffile(str(ref), {"archive_id": "a"}, pending)
    assert read_reffile(str(ref))["references"] == pending
    c = Catalog(str(tmp_path))
    d = c.start("run1", "primary", "user", "full", None, None, [JORG, "ann"], 100,
                lambda did, now: f"dump-{did}.ims")
    assert c.users(d.id) == sorted(["ann", JORG])
    assert [x.id for x in c.holding(JORG)] == []         # not complete yet, but found by its name
    c.db.execute("UPDATE dumps SET status='complete' WHERE id=?", (d.id,))
    assert [x.id for x in c.holding(JORG)] == [d.id]


def test_every_command_prints_names_as_their_bytes(tmp_path, foreign):
    """Lossless output is run_command's, so it holds for every command, not only the
    five that once set it up: imsstage prints jörg's name to stdout as its very bytes
    (it was an internal error, 70), and a name on stderr shows its odd byte as \\xNN."""
    home, _ = foreign
    stage = tmp_path / "stage"
    p = run(home, "imsstage", "dump", "-D", stage, "-j", "1")
    assert p.returncode == 0, p.stderr
    # stdio as Python sets it up in an administrator's locale such as en_US.UTF-8 (under
    # C, POSIX and C.UTF-8 it would escape such bytes on its own)
    utf8 = {"PYTHONIOENCODING": "utf-8:strict"}
    p = run(home, "imsstage", "locate", "-D", stage, f"/primary/user/{JORG}", env=utf8)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(b"j\xf6rg: 1 file(s) to restore, in this order:\n"), p.stdout
    p = run(home, "mkbackupdir", "-p", tmp_path / "tree", f"--no-such-option-{JORG}", env=utf8)
    assert p.returncode == 2 and p.stderr.endswith(b"--no-such-option-j\\xf6rg (see mkbackupdir --help)\n"), p.stderr


@pytest.mark.parametrize("name", [b"user/j\xf6rg", b"user/j\xf6rg/Work", b"user/joe/Caf\xe9", b"user/joe/Caf\xe9/2023"])
def test_mboxutil_create_refuses_what_the_classic_store_cannot_keep(tmp_path, name):
    """The classic store keeps names as UTF-8 text: a name that is not is one line naming
    it (\\xNN) and EXIT_USAGE, nothing made (it was an internal error, 70); a maildir
    store makes it and lists it back as its bytes."""
    home = tmp_path / "classic"
    store = open_store(make_home(home, "classic"))
    store.create_user("joe")
    part = store.partition_path("primary")
    before = sorted(os.walk(part))
    p = run(home, "mboxutil", "-c", os.fsdecode(name), env={"TMPDIR": tmp_path, "IMS_DEBUG": None})
    assert p.returncode == EXIT_USAGE, p.stderr
    what = b"user ID 'j\\xf6rg'" if b"j\xf6rg" in name else b"folder name 'Caf\\xe9"
    assert p.stderr.startswith(b"mboxutil: " + what) and b"holds bytes that are not UTF-8" in p.stderr, p.stderr
    assert p.stderr.count(b"\n") == 1 and b"\\udc" not in p.stderr, p.stderr
    assert p.stdout == b"" and not [f for f in os.listdir(tmp_path) if "crash" in f]
    again = open_store(Config(str(home)))
    assert [u for u in again.users("primary")] == ["joe"] and again.folder_names("joe") == ["INBOX"]
    assert sorted(os.walk(part)) == before
    p = run(home, "mboxutil", "-d", os.fsdecode(name))           # quoted names show the byte as \xNN too
    assert p.returncode == EXIT_USAGE and p.stderr.count(b"\n") == 1 and b"\\udc" not in p.stderr, p.stderr
    assert (b"no such user: 'j\\xf6rg'" if b"j\xf6rg" in name else b"no such folder: 'Caf\\xe9") in p.stderr, p.stderr
    other = tmp_path / "maildir"
    make_home(other, "maildir")
    run(other, "mboxutil", "-c", "user/joe", check=0)
    run(other, "mboxutil", "-c", os.fsdecode(name), check=0)
    listed = run(other, "mboxutil", "-l", check=0).stdout
    assert b"  " + name + (b"/INBOX" if name.count(b"/") == 1 else b"") + b"\n" in listed, listed


def test_a_folder_name_the_restoring_store_cannot_keep_is_named_never_exit_17(tmp_path):
    """A classic archive's folders "v1.2" (Maildir++ keeps '.' as its separator) and 120
    'é' (241 bytes as a classic directory, 322 once Dovecot writes it in modified UTF-7)
    restored into a maildir store: exit 17, "the store cannot be read or written", the
    second as a raw "File name too long (path)".  Each is one line naming the folder and
    the limit, the rest is restored: exit 1; restoring only those folders: exit 2."""
    src = tmp_path / "src"
    store = open_store(make_home(src, "classic"))
    store.create_user("joe")
    store.append("joe", "INBOX", io.BytesIO(msg(1)))
    long = "\u00e9" * 120
    for folder in ("v1.2", long):
        store.create_folder("joe", folder)
        store.append("joe", folder, io.BytesIO(msg(2)))
    archive = tmp_path / "a.ims"
    run(src, "imsbackup", "-f", archive, "/", check=0)
    dest = tmp_path / "dest"
    got = open_store(make_home(dest, "maildir"))
    p = run(dest, "imsrestore", "-f", archive, text=True)
    assert p.returncode == EXIT_PARTIAL, p.stderr
    lines = p.stderr.splitlines()
    assert any("/primary/joe/v1.2:" in ln and "may not contain '.'" in ln for ln in lines), p.stderr
    assert any("is too long for the maildir store" in ln and "at most 255" in ln for ln in lines), p.stderr
    assert "File name too long" not in p.stderr, p.stderr
    assert got.folder_names("joe") == ["INBOX"] and len(got.messages("joe", "INBOX")) == 1
    for folder in ("v1.2", long):
        p = run(dest, "imsrestore", "-f", archive, f"/primary/joe/{folder}", text=True)
        assert p.returncode == EXIT_USAGE, p.stderr
    assert got.folder_names("joe") == ["INBOX"]


def _deep(levels: int) -> str:
    return "/".join(f"level{i:02d}" for i in range(levels))


def test_a_classic_folder_whose_index_path_sqlite_cannot_open_is_named(tmp_path):
    """SQLite opens no database whose path is longer than 504 bytes (its 512, less a
    journal's suffix), and a classic folder's directory is its levels below the user's:
    a folder 40 levels deep, or one restored into a partition of a longer path than the
    store it was backed up from, was "the store's index failed: unable to open database
    file", exit 17, after the command had started.  At every length around the limit a
    folder is now made (and used, and read again) or refused as too long, naming the
    bytes and the limit: never that error."""
    made = refused = 0
    for pad in range(0, 40, 3):                 # the partition's path, pad bytes longer
        home = tmp_path / f"h{pad}"
        store = open_store(make_home(home, "classic", **{"partition:primary.path": str(home / ("p" * (pad + 1)))}))
        store.create_user("joe")
        base = len(os.fsencode(os.path.realpath(store.partition_path("primary"))))
        for depth in range(max(1, (440 - base) // 9), (520 - base) // 9):
            folder = _deep(depth)
            try:
                store.create_folder("joe", folder)
            except NameTooLong as exc:
                assert "SQLite's limit" in str(exc) and "at most 504" in str(exc), exc
                refused += 1
                continue
            store.append("joe", folder, io.BytesIO(msg(depth)), flags=["\\Seen"])
            again = open_store(Config(str(home)))
            assert [m.uid for m in again.messages("joe", folder)] == [1]
            made += 1
        assert "joe" in open_store(Config(str(home))).users("primary")
    assert made and refused


def test_a_deep_folder_restored_into_a_longer_partition_path_is_named_never_exit_17(tmp_path):
    """The deepest folder a classic store keeps, restored into one whose partition path
    is longer: exit 17 after INBOX was restored; now that folder is named (exit 1)."""
    src = tmp_path / "s"
    store = open_store(make_home(src, "classic"))
    store.create_user("joe")
    store.append("joe", "INBOX", io.BytesIO(msg(1)))
    deep = "level00"
    for _ in range(200):                         # the deepest folder this store keeps
        try:
            store.check_new_folder("joe", deep + "/next")
        except NameTooLong:
            break
        deep += "/next"
    else:
        pytest.fail("no folder is too deep for the classic store")
    store.create_folder("joe", deep)
    store.append("joe", deep, io.BytesIO(msg(2)))
    archive = tmp_path / "a.ims"
    run(src, "imsbackup", "-f", archive, "/", check=0)
    dest = tmp_path / "a-longer-installation-path" / "dest"
    got = open_store(make_home(dest, "classic"))
    p = run(dest, "imsrestore", "-f", archive, text=True)
    assert p.returncode == EXIT_PARTIAL, p.stderr
    assert "unable to open database file" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert f"folder name '{deep}' of user 'joe' is too long for the classic store here" in p.stderr
    assert got.folder_names("joe") == ["INBOX"] and len(got.messages("joe", "INBOX")) == 1
    p = run(dest, "mboxutil", "-c", f"user/joe/{deep}", text=True)
    assert p.returncode == EXIT_USAGE and "SQLite's limit" in p.stderr, p.stderr
    # the same archive into a store as short as the first: all of it
    same = tmp_path / "d"
    make_home(same, "classic")
    run(same, "imsrestore", "-f", archive, check=0)
    assert state(open_store(Config(str(same)))) == state(store)


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_a_user_id_too_long_for_one_directory_is_refused_up_front(tmp_path, driver):
    """A user ID the store would keep as a directory name of more than 255 bytes was
    exit 17 ("File name too long") from mboxutil -c, and from a restore after it had
    started; it is now one line naming it, EXIT_USAGE, nothing made.  The limit is the
    directory name's bytes: classic writes '%' as '%25', UTF-8 counts bytes."""
    home = tmp_path / "home"
    store = open_store(make_home(home, driver))
    store.create_user("joe")
    store.append("joe", "INBOX", io.BytesIO(msg(1)))
    part = store.partition_path("primary")
    before = sorted(os.walk(part))
    fits = "u" * (254 if driver == "classic" else 255)
    long_ids = ["u" * 300, "\u00e9" * 128, "x" + "u" * (255 if driver == "classic" else 256)]
    if driver == "classic":
        long_ids.append("%" * 90)             # 270 bytes once '%' is written '%25'
    for user in long_ids:
        p = run(home, "mboxutil", "-c", f"user/{user}", env={"IMS_DEBUG": None})
        assert p.returncode == EXIT_USAGE, p.stderr
        assert p.stderr.count(b"\n") == 1 and b"is too long for the" in p.stderr and b"at most 255" in p.stderr, p.stderr
    assert sorted(os.walk(part)) == before
    archive = tmp_path / "joe.ims"
    run(home, "imsbackup", "-f", archive, "/primary/user/joe")
    mapfile = tmp_path / "map"
    mapfile.write_text(f"joe={long_ids[0]}\n")
    p = run(home, "imsrestore", "-f", archive, "-m", mapfile, text=True)
    assert p.returncode == EXIT_USAGE and "is too long for the" in p.stderr, p.stderr
    assert sorted(os.walk(part)) == before
    run(home, "mboxutil", "-c", f"user/{fits}")
    assert fits in list(open_store(Config(str(home))).users("primary"))


@pytest.fixture(scope="module")
def latin1(tmp_path_factory):
    """The environment of an old cron job: the locale en_US.ISO-8859-1 (built with
    localedef into a directory of its own, named by LOCPATH), no PYTHONUTF8."""
    localedef = require("localedef", "to build an ISO-8859-1 locale")
    loc = tmp_path_factory.mktemp("locales") / "en_US.ISO-8859-1"
    p = subprocess.run([localedef, "-i", "en_US", "-f", "ISO-8859-1", str(loc)], capture_output=True, text=True)
    if not loc.is_dir():
        unavailable(f"localedef cannot build en_US.ISO-8859-1: {p.stderr[-300:]}")
    env = {"LOCPATH": loc.parent, "LC_ALL": "en_US.ISO-8859-1", "LANG": "en_US.ISO-8859-1",
           "PYTHONUTF8": None, "PYTHONIOENCODING": None, "PYTHONCOERCECLOCALE": None}
    p = subprocess.run([sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"],
                       env=command_env(None, env), capture_output=True, text=True)
    assert p.stdout.strip() == "iso8859-1", "the locale is in force: Python alone would misread UTF-8 names"
    return env


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_utf8_names_under_a_latin1_locale(tmp_path, latin1, driver):
    """Under an ISO-8859-1 locale the commands read UTF-8 names as Latin-1 text: imsbackup
    exited 0 having archived user jösé as 'jÃ¶sÃ©' (a maildir store; on a classic one it
    called the user's directory missing, exit 1), imsrestore made a user of that name
    (classic: a directory '=j\\xf6s\\xe9' the next mboxutil -l calls damaged, exit 17),
    reconstruct -m replaced jösé by 'jÃ¶sÃ©' in the mailbox list, and imsrestore -t and
    mboxutil -l ended in internal error 70 on a folder 日本.  Every command now runs in
    Python's UTF-8 mode whatever the locale: the names are the same bytes as under UTF-8."""
    home = tmp_path / "src"
    store = open_store(make_home(home, driver))
    store.create_user("jösé")
    store.create_folder("jösé", "日本")
    store.append("jösé", "INBOX", io.BytesIO(msg(1)))
    store.append("jösé", "日本", io.BytesIO(msg(2)))
    want = state(store)
    listed = "user/jösé/日本".encode()
    archive = tmp_path / "full.ims"
    p = run(home, "imsbackup", "-f", archive, "/", env=latin1)
    assert (p.returncode, p.stderr) == (0, b"")
    for argv in (["imsrestore", "-t", "-f", archive], ["mboxutil", "-l"]):
        p = run(home, *argv, env=latin1)
        assert p.returncode == 0 and p.stderr == b"", (argv, p.stderr)
        assert listed in p.stdout or "primary/jösé/日本/".encode() in p.stdout, (argv, p.stdout)
    # as imsstage starts its children; and stdout is the names' bytes whatever PYTHONIOENCODING says
    p = subprocess.run([sys.executable, "-m", "asm.cli.mboxutil", "-l"], capture_output=True, timeout=120,
                       env=command_env(home, {**latin1, "PYTHONIOENCODING": "latin-1"}))
    assert p.returncode == 0 and listed in p.stdout, p.stderr
    if driver == "classic":
        p = run(home, "reconstruct", "-m", env=latin1)
        assert p.returncode == 0, p.stderr
        assert b"repaired" not in p.stdout + p.stderr, p.stdout + p.stderr
    p = run(home, "reconstruct", "--no-resync", "-r", "/primary/jösé", env=latin1)
    assert p.returncode == 0, p.stderr
    assert state(open_store(make_home(home, driver))) == want
    assert run(home, "mboxutil", "-l").returncode == 0

    dest = tmp_path / "dest"
    make_home(dest, driver)
    p = run(dest, "imsrestore", "-f", archive, env=latin1)
    assert (p.returncode, p.stderr) == (0, b"")
    got = state(open_store(make_home(dest, driver)))
    assert sorted(got) == sorted(want)
    assert [got[k][0] for k in sorted(got) if len(k) == 3] == [want[k][0] for k in sorted(want) if len(k) == 3]
    p = run(dest, "mboxutil", "-l")
    assert p.returncode == 0 and listed in p.stdout, p.stderr
    assert run(dest, "imsbackup", "-f", tmp_path / "again.ims", "/").returncode == 0


def test_a_command_that_cannot_run_in_utf8_mode_is_refused(tmp_path, latin1):
    """A command's main() called by another program under such a locale cannot restart
    itself: it refuses, one line saying what to do, exit 2, nothing done."""
    home = tmp_path / "home"
    store = open_store(make_home(home, "classic"))
    code = "import sys; from asm.cli.mboxutil import main; sys.exit(main(['-c', 'user/jösé']))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=command_env(home, {**latin1, "IMS_DEBUG": None}))
    assert p.returncode == EXIT_USAGE, p.stderr
    assert p.stderr.count("\n") == 1 and "not UTF-8" in p.stderr and "PYTHONUTF8=1" in p.stderr, p.stderr
    assert list(store.users("primary")) == []
