"""The NetWorker module driven the way NetWorker drives it (tests/nsrharness.py):
mkbackupdir from a savepnpc precmd, imsasm per directory as the .nsr directives say,
recover -a of a folder, a user, a group and the whole store, full and incremental."""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import struct
import sys
import time

import pytest

from asm.config import Config
from asm.store import open_store
from plugins.networker import tree
from tests.helpers import command, make_home, popen, run
from tests.nsrharness import Harness, parse_res

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGINS = "classic,localdevices,networker,maildir"
GROUPS = "groupA=[a-l].*\ngroupB=[m-z].*\n"
USERS = ["alice", "bob", "mary", "a b 'q' \"x\"", "zoë 日本", "50%;off"]
FOLDERS = ["Sent", "Work", "Work/2023", "Réunions/Été", "50% off; \"q\"", ".hidden"]


@pytest.fixture(params=["classic", "maildir"])
def drv(request):
    return request.param


#: The commands docs/networker.md (setup, step 1) links beside NetWorker's save.
LINKED = ("imsasm", "mkbackupdir", "imsasmreport")
#: A PATH as NetWorker's client daemon might have it: none of the project's commands.
BARE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture
def nsr_bin(tmp_path):
    """Setup step 1 of docs/networker.md: the three commands linked from the venv's bin
    into the directory of NetWorker's save (here a directory of the test's own)."""
    d = tmp_path / "nsr-sbin"
    d.mkdir()
    for name in LINKED:
        os.symlink(command(name), d / name)
    return str(d)


@pytest.fixture
def env(nsr_bin, monkeypatch):
    """What savepnpc runs precmds, ASMs and pstcmds with: a PATH that holds the links
    of step 1 and not the venv, so the res files' command names resolve as documented."""
    monkeypatch.setenv("IMS_ASM_PLUGINS", PLUGINS)
    return dict(os.environ, IMS_ASM_PLUGINS=PLUGINS, PATH=f"{nsr_bin}:{BARE_PATH}")


def home(path, drv):
    cfg = make_home(path, drv)
    with open(cfg.groups_path, "w", encoding="utf-8") as f:
        f.write(GROUPS)
    return cfg


def fill(store, users=USERS, seed=0):
    for i, u in enumerate(users):
        store.create_user(u)
        for f in FOLDERS:
            if f.startswith(".") and store.name == "maildir":
                continue                  # Maildir++ cannot hold a '.' in a folder level
            store.create_folder(u, f, subscribed=True)
        for j, f in enumerate(["INBOX", "Work", "Work/2023", "Réunions/Été", "50% off; \"q\""]):
            for k in range(3):
                body = f"From: x@example.com\r\nSubject: {u} {f} {k} {seed}\r\n\r\n{'x' * (k * 50 + j)}\r\n"
                store.append(u, f, io.BytesIO(body.encode("utf-8")),
                             flags=["\\Seen"] if k else ["\\Flagged", "\\Answered"],
                             keywords=["$Label1"] if k == 2 else [], internaldate=1_600_000_000 + k * 60)


def state(store, users=None) -> dict:
    out = {}
    for part in store.partitions():
        for u in store.users(part):
            if users is not None and u not in users:
                continue
            for f in store.folders(u):
                msgs = []
                for m in store.messages(u, f.name):
                    with open(m.path, "rb") as fh:
                        digest = hashlib.sha256(fh.read()).hexdigest()
                    msgs.append((m.uid, tuple(sorted(m.flags)), tuple(m.keywords), m.size, digest))
                out[(u, f.name)] = (f.uidvalidity, tuple(msgs))
    return out


def res_file(tmp_path, name, ims_home, backup):
    """An examples/res file with the installation and tree paths of this test."""
    with open(os.path.join(ROOT, "examples", "res", name), encoding="utf-8") as f:
        text = f.read().replace("/srv/ims", str(ims_home)).replace("/backup", str(backup))
    out = tmp_path / name
    out.write_text(text, encoding="utf-8")
    return str(out)


# ----------------------------------------------------------------------------- names

def test_name_mapping_is_lossless_and_canonical():
    for name in ["INBOX", "a b", "50% off; \"q\" 'x'", "Réunions", "日本語", ".hidden", "..", ".", "%self",
                 "tab\tin", "%2E", "a%"]:
        enc = tree.encode(name)
        assert "/" not in enc and enc not in (".", "..", ".nsr", tree.SELF) and not enc.startswith(".")
        assert tree.decode(enc) == name
    for bad in ["%2e", "a%zz", "%", "%C3", tree.SELF]:
        with pytest.raises(tree.TreeError):
            tree.decode(bad)
    assert tree.folder_path("Work/2023") == ["Work", "2023"]
    p = tree.place_of(["primary", "groupA", "a b 'q' \"x\"", "Work", tree.SELF], False)
    assert (p.user, p.folder, p.subtree) == ("a b 'q' \"x\"", "Work", False)
    assert p.covers("primary", p.user, None, "Work") and not p.covers("primary", p.user, None, "Work/2023")


def test_res_file_syntax():
    with open(os.path.join(ROOT, "examples", "res", "groupA.res"), encoding="utf-8") as f:
        res = parse_res(f.read())
    assert res["type"] == ["savepnpc"]
    assert "mkbackupdir -p /backup" in res["precmd"][0]
    assert "imsasmreport" in res["pstcmd"][0]
    assert res["timeout"] == ["4:00am"]


def test_example_res_files_name_only_commands_the_setup_links():
    """Every command an example res file runs by bare name is one that setup step 1 of
    docs/networker.md links onto savepnpc's PATH (a venv install has them nowhere else)."""
    with open(os.path.join(ROOT, "docs", "networker.md"), encoding="utf-8") as f:
        doc = f.read()
    step1 = re.search(r"for c in ([^;]+); do ln -s \"\$BIN/\$c\" /usr/sbin/\$c; done", doc)
    assert step1 and tuple(step1.group(1).split()) == LINKED
    named = set()
    for path in glob.glob(os.path.join(ROOT, "examples", "res", "*.res")):
        with open(path, encoding="utf-8") as f:
            res = parse_res(f.read())
        for cmd in res.get("precmd", []) + res.get("pstcmd", []):
            words = cmd.split()
            if words[0] == "/usr/bin/env":
                words = [w for w in words[1:] if "=" not in w]
            named.add(words[0])
    assert named == {"mkbackupdir", "imsasmreport"}
    assert named <= set(LINKED)


# ----------------------------------------------------------------------------- mkbackupdir

def test_mkbackupdir_tree_incremental_and_refusals(tmp_path, ims_home, env):
    cfg = home(ims_home, "classic")
    store = open_store(cfg)
    fill(store, USERS[:4])
    backup = tmp_path / "backup"
    p = run(ims_home, "mkbackupdir", "-p", str(backup))
    assert p.returncode == 0, p.stderr
    u = backup / "primary" / "groupA" / "a b 'q' \"x\""
    assert (u / "INBOX").is_file() and (u / "INBOX").stat().st_size == 0
    assert (u / "Work" / tree.SELF).is_file() and (u / "Work" / "2023").is_file()
    assert (u / "Réunions" / "Été").is_file() and not (u / "Réunions" / tree.SELF).exists()
    assert (u / "50%25 off; \"q\"").is_file() and (u / "%2Ehidden").is_file()
    assert (u / ".nsr").read_text().strip().endswith("imsasm: *")
    assert (backup / "primary" / "groupB" / "mary" / "INBOX").is_file()
    # a user and a folder vanish, a folder appears, a leaf gains a subfolder
    store.delete_user("bob")
    store.delete_folder("alice", "Sent")
    store.create_folder("alice", "New one")
    store.create_folder("alice", "50% off; \"q\"/sub")
    (backup / "primary" / "groupA" / "alice" / "notes.txt").write_text("admin's file")
    p = run(ims_home, "mkbackupdir", "-v", "-p", str(backup))
    assert p.returncode == 1 and "notes.txt is not an empty placeholder; left alone" in p.stderr.decode()
    a = backup / "primary" / "groupA" / "alice"
    assert not (backup / "primary" / "groupA" / "bob").exists()
    assert not (a / "Sent").exists() and (a / "New one").is_file()
    assert (a / "50%25 off; \"q\"" / tree.SELF).is_file() and (a / "50%25 off; \"q\"" / "sub").is_file()
    assert (a / "notes.txt").read_text() == "admin's file"          # not ours: kept
    # refusals: exit 2, one line, nothing written
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep").write_text("x")
    for argv, why in [(["-p", str(other)], "not empty"), (["-a", "imsbackup", "-p", str(backup)], "end in 'asm'"),
                      (["-t", "0", "-p", str(backup)], "between 1 and 1024"), ([], "-p DIRECTORY")]:
        p = run(ims_home, "mkbackupdir", *argv)
        assert p.returncode == 2 and why in p.stderr.decode() and p.stderr.decode().count("\n") == 1, p.stderr
    assert sorted(os.listdir(other)) == ["keep"]


def test_a_first_mkbackupdir_stopped_anywhere_is_finished_by_the_same_command(tmp_path, ims_home, env):
    """A first mkbackupdir stopped by SIGTERM (exit 130, "run again") or SIGKILL left a tree
    without its marker, which every later run refused as a directory mkbackupdir did not
    build (exit 2): a savepnpc precmd then failed every night.  The tree is marked first
    (as being built); the same command run again finishes it, exactly as one run builds
    it, and imsasm refuses to save from a tree whose first build did not end."""
    import signal
    import subprocess
    from tests.helpers import popen
    cfg = home(ims_home, "classic")
    store = open_store(cfg)
    for i in range(60):
        store.create_user(f"user{i:02d}")
        for f in ("Sent", "Trash", "Work/2024"):
            store.create_folder(f"user{i:02d}", f)

    def tree_of(d):
        return sorted(os.path.relpath(os.path.join(r, n), d) for r, ds, fs in os.walk(d) for n in ds + fs
                      if n != tree.LOCK and n != tree.MARKER)
    want = tmp_path / "want"
    t0 = time.monotonic()
    run(ims_home, "mkbackupdir", "-p", str(want), check=0)
    took = time.monotonic() - t0
    stopped = 0
    for k, sig in enumerate([signal.SIGTERM, signal.SIGKILL] * 5):
        d = tmp_path / f"t{k}"
        p = popen(ims_home, "mkbackupdir", "-p", str(d), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(took * (k + 1) / 12)             # spread over a whole run
        p.send_signal(sig)
        rc = p.wait()
        if rc == 0:
            continue
        stopped += 1
        if (d / tree.MARKER).exists() and json.loads((d / tree.MARKER).read_text()).get("building"):
            placeholder = next((os.path.join(r, n) for r, _ds, fs in os.walk(d) for n in fs
                                if n == "INBOX"), None)
            if placeholder:
                q = run(ims_home, "imsasm", "-s", placeholder)
                assert q.returncode == 2 and "did not end" in q.stderr.decode(), q.stderr
        p = run(ims_home, "mkbackupdir", "-p", str(d))
        assert p.returncode == 0, (k, rc, p.stderr)
        assert tree_of(d) == tree_of(want), k
        assert not json.loads((d / tree.MARKER).read_text()).get("building")
    assert stopped >= 3, stopped


def test_mkbackupdir_refuses_directory_owner_cannot_write(tmp_path, ims_home, env):
    cfg = home(ims_home, "classic")
    open_store(cfg).create_user("alice")
    cfg.set("store.owner", "nobody")
    d = tmp_path / "rootonly"
    d.mkdir(mode=0o755)
    p = run(ims_home, "mkbackupdir", "-p", str(d))
    if os.geteuid() != 0 and os.stat(d).st_uid != 0:
        assert p.returncode == 0
        return
    assert p.returncode == 2 and "not writable by the store owner (nobody)" in p.stderr.decode()
    assert os.listdir(d) == []


def test_mkbackupdir_warns_about_64_characters(tmp_path, ims_home, env):
    home(ims_home, "classic")
    open_store(Config()).create_user("averyveryverylonguserid")
    deep = tmp_path / ("x" * 40)
    p = run(ims_home, "mkbackupdir", "-p", str(deep))
    assert p.returncode == 0
    err = p.stderr.decode()
    longest = len(f"{deep}/primary/groupA/averyveryverylonguserid/INBOX")
    fits = 64 - (longest - len(str(deep)))
    assert f"is {longest} characters" in err and f"use a -p of at most {fits} characters" in err


def test_a_folder_whose_placeholder_name_would_be_too_long_is_named_with_the_way_out(tmp_path, ims_home, env, drv):
    """A folder level the store keeps (at most 255 bytes as the store writes it) whose
    placeholder is longer: the tree writes '%' and a leading '.' as 3 bytes.  mkbackupdir
    stopped with "name '...' is too long for a file name" naming neither the user nor
    the folder; the precmd fails and nobody is saved that night.  Now the one line names
    the mailbox and the way out (rename it, or -u), the tree is left as it was, and -u
    builds a tree that saves it."""
    cfg = home(ims_home, drv)
    store = open_store(cfg)
    store.create_user("alice")
    store.append("alice", "INBOX", io.BytesIO(b"Subject: a\r\n\r\nx\r\n"))
    d = tmp_path / "backup"
    assert run(ims_home, "mkbackupdir", "-p", str(d)).returncode == 0
    before = sorted(os.walk(d))
    folder = "." + "b" * 253 if drv == "classic" else "a" * 240 + "%" * 6
    store.create_folder("alice", folder)
    store.append("alice", folder, io.BytesIO(b"Subject: b\r\n\r\nx\r\n"))
    p = run(ims_home, "mkbackupdir", "-p", str(d), text=True)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith(f"mkbackupdir: /primary/alice/{folder}: "), p.stderr
    assert "mkbackupdir -u" in p.stderr and "nothing of the tree was changed" in p.stderr, p.stderr
    assert sorted(os.walk(d)) == before
    u = tmp_path / "per-user"
    assert run(ims_home, "mkbackupdir", "-u", "-p", str(u)).returncode == 0
    assert os.path.isfile(u / "primary" / "groupA" / "alice")


# ----------------------------------------------------------------------------- round trips

def _fresh(tmp_path, name, drv, env):
    h = tmp_path / name
    home(h, drv)
    e = dict(env, IMS_HOME=str(h))
    return h, e


def test_savepnpc_full_and_incremental_round_trips(tmp_path, ims_home, env, nsr_bin, drv):
    cfg = home(ims_home, drv)
    store = open_store(cfg)
    fill(store)
    backup = tmp_path / "backup"
    h = Harness(nsr_bin, str(tmp_path / "catalog"), env)
    res = res_file(tmp_path, "groupA.res", ims_home, backup)
    sets = [str(backup / "primary" / g) for g in ("groupA", "groupB", "user")]   # 50%;off is in 'user'
    done = h.savepnpc(res, sets)
    assert [c[1] for c in done["precmd"]] == [0]
    assert done["saves"] and set(done["saves"]) == {0}, h.log
    assert done["pstcmd"][0][1] == 0 and "0 failed" in done["pstcmd"][0][2]
    full = state(store)

    # one folder (a subfolder inside a folder directory), one user, one group, everything
    A = backup / "primary" / "groupA"
    cases = [
        (A / "a b 'q' \"x\"" / "Work" / "2023", lambda k: k == ("a b 'q' \"x\"", "Work/2023")),
        (A / "alice" / "Work" / tree.SELF, lambda k: k == ("alice", "Work")),
        (backup / "primary" / "groupB" / "zoë 日本", lambda k: k[0] == "zoë 日本"),
        (A, lambda k: k[0] in ("alice", "bob", "a b 'q' \"x\"")),
        (backup, lambda k: True),
    ]
    for i, (path, which) in enumerate(cases):
        target, e = _fresh(tmp_path, f"r{i}", drv, env)
        out = h.recover(str(path), env=e)
        assert all(rc == 0 for rc, _ in out), out
        got = state(open_store(Config(str(target))))
        want = {k: v for k, v in full.items() if which(k)}
        got = {k: v for k, v in got.items() if k in want or v[1]}
        assert got == want, path

    # incremental: new mail, an expunge and a flag change since the full (-t as save
    # passes it: the full's save time, which imsasm turns into the full's state)
    time.sleep(1.1)
    for u in ("alice", "zoë 日本"):
        store.append(u, "INBOX", io.BytesIO(f"Subject: new for {u}\r\n\r\nnew\r\n".encode()), flags=["\\Draft"])
        first = store.messages(u, "Work")[0].uid
        store.expunge(u, "Work", [first])
        m = store.messages(u, "INBOX")[0]
        store.set_flags(u, "INBOX", m.uid, ["\\Seen", "\\Deleted"], ["Important"])
    done = h.savepnpc(res, sets, level="incr")
    assert set(done["saves"]) == {0}, h.log
    assert re.search(r"\(0 full, [1-9]\d* incremental", done["pstcmd"][0][2]), done["pstcmd"]
    assert not any("saving it full" in x for x in h.log)
    final = state(store)
    for i, (path, users) in enumerate([(A / "alice", {"alice"}), (backup, None)]):
        target, e = _fresh(tmp_path, f"i{i}", drv, env)
        out = h.recover(str(path), env=e)            # the full, then the incremental
        assert len(out) >= 2 and all(rc == 0 for rc, _ in out), out
        got = state(open_store(Config(str(target))), users)
        assert got == {k: v for k, v in final.items() if users is None or k[0] in users}


def test_the_example_client_resources_save_every_user_of_the_example_groups(tmp_path, ims_home, env, nsr_bin):
    """examples/res (client.nsr's save sets, groupA.res's precmd and pstcmd, and
    backup-groups.conf) taken as shipped: users no line of backup-groups.conf matches
    ('Bob', '2pac', 'émile') are in the predefined group 'user', which had no save set:
    3 users of 5 in no backup while imsasmreport said '0 failed', exit 0.  Every user's
    mail comes back from a recover of the whole tree."""
    cfg = home(ims_home, "classic")
    with open(os.path.join(ROOT, "examples", "res", "backup-groups.conf"), encoding="utf-8") as f:
        groups = f.read()
    with open(cfg.groups_path, "w", encoding="utf-8") as f:
        f.write(groups)
    store = open_store(cfg)
    fill(store, ["alice", "mike", "Bob", "2pac", "émile"])
    backup = tmp_path / "backup"
    with open(os.path.join(ROOT, "examples", "res", "client.nsr"), encoding="utf-8") as f:
        client = "\n".join(line for line in f.read().splitlines() if not line.lstrip().startswith("#"))
    sets = [v.strip().replace("/backup", str(backup)) for m in re.finditer(r"save set:\s*([^;]*);", client)
            for v in m.group(1).split(",")]
    assert len(sets) >= 2
    h = Harness(nsr_bin, str(tmp_path / "catalog"), env)
    done = h.savepnpc(res_file(tmp_path, "groupA.res", ims_home, backup), sets)
    assert [c[1] for c in done["precmd"]] == [0] and set(done["saves"]) == {0}, h.log
    assert done["pstcmd"][0][1] == 0
    built = {p.parent.name for p in backup.glob("primary/*/*/INBOX")}
    assert built == {tree.encode(u) for u in ("alice", "mike", "Bob", "2pac", "émile")}
    target, e = _fresh(tmp_path, "all", "classic", env)
    out = h.recover(str(backup), env=e)
    assert out and all(rc == 0 for rc, _ in out), out
    assert state(open_store(Config(str(target)))) == state(store)


def test_failing_precmd_means_no_save(tmp_path, ims_home, env, nsr_bin):
    home(ims_home, "classic")
    open_store(Config()).create_user("alice")
    backup = tmp_path / "backup"
    res = tmp_path / "bad.res"
    res.write_text(f'type: savepnpc;\nprecmd: "mkbackupdir -a nope -p {backup}";\n'
                   f'pstcmd: "touch {tmp_path}/pst";\ntimeout: "3 hours";\n')
    h = Harness(nsr_bin, str(tmp_path / "catalog"), env)
    done = h.savepnpc(str(res), [str(backup)])
    assert done["precmd"][0][1] == 2 and done["saves"] == [] and done["pstcmd"] == []
    assert not (tmp_path / "pst").exists() and h.catalog.entries == []


def test_per_user_records_estimate_compare_and_rename(tmp_path, ims_home, env, nsr_bin):
    cfg = home(ims_home, "classic")
    store = open_store(cfg)
    fill(store, USERS[:3])
    backup = tmp_path / "backup"
    h = Harness(nsr_bin, str(tmp_path / "catalog"), env)
    done = h.savepnpc(res_file(tmp_path, "users.res", ims_home, backup), [str(backup)])
    assert set(done["saves"]) == {0} and done["pstcmd"][0][1] == 0
    assert (backup / "primary" / "groupA" / "alice").is_file()          # -u: one placeholder per user
    assert len(h.catalog.entries) == 3
    # -b: records, header bytes, data bytes (every message byte once)
    p = run(ims_home, "imsasm", "-s", "-b", str(backup / "primary" / "groupA"))
    n, hdr, data = map(int, p.stdout.split())
    assert (n, data) == (1, sum(m[3] for k, v in state(store).items() if k[0] in ("alice", "bob") for m in v[1]))
    assert hdr > 0
    ss = h.catalog.entries[0].saveset
    saved = state(store, {"alice"})
    # -c: equal, then a difference after a flag change
    with open(ss, "rb") as f:
        assert run(ims_home, "imsasm", "-c", stdin=f).returncode == 0
    m = store.messages("alice", "INBOX")[0]
    store.set_flags("alice", "INBOX", m.uid, ["\\Deleted"])
    with open(ss, "rb") as f:
        p = run(ims_home, "imsasm", "-c", stdin=f)
    assert p.returncode == 1 and f"/primary/alice/INBOX/{m.uid}: flags" in p.stderr.decode()
    # -i r: restored beside the existing folder with the -z suffix
    with open(ss, "rb") as f:
        p = run(ims_home, "imsasm", "-r", "-ir", "-z", ".R", str(backup / "primary" / "groupA" / "alice"), stdin=f)
    assert p.returncode == 0, p.stderr
    assert [x.uid for x in store.messages("alice", "INBOX-R")] == [x.uid for x in store.messages("alice", "INBOX")]
    # -m: user relocation
    with open(ss, "rb") as f:
        p = run(ims_home, "imsasm", "-r", "-m", f"{backup}/primary/groupA/alice={backup}/primary/groupA/carol", stdin=f)
    assert p.returncode == 0, p.stderr
    assert state(store, {"carol"}) == {("carol", k[1]): v for k, v in saved.items()}
    # two users relocated onto one (or one user to two): refused before anything is
    # recovered, where it merged bob's mail into carol's folders with exit 0
    g = f"{backup}/primary/groupA"
    before = state(store)
    for maps in ([f"{g}/alice={g}/dave", f"{g}/bob={g}/dave"], [f"{g}/alice={g}/dave", f"{g}/alice={g}/erin"]):
        with open(ss, "rb") as f:
            p = run(ims_home, "imsasm", "-r", *[x for m in maps for x in ("-m", m)], stdin=f)
        err = p.stderr.decode()
        assert p.returncode == 2 and err.count("\n") == 1, err
        assert "both mapped to 'dave'" in err or "already mapped to 'dave'" in err, err
    assert state(store) == before


def test_map_onto_a_user_the_recover_takes_too_is_refused(tmp_path, ims_home, env):
    """imsasm -r -m alice=bob over a stream holding bob too: both landed in bob's folders
    (bob's kept their UIDVALIDITY, alice's renumbered into them), exit 0.  Paths that
    reach bob: refused, exit 2, one line, nothing recovered; no paths (the stream is
    read once): whichever comes second is not recovered, exit 1, named; paths that
    leave bob out: alice's mail is bob's, alone."""
    store = open_store(home(ims_home, "classic"))
    fill(store, ["alice", "bob"])
    backup = tmp_path / "backup"
    assert run(ims_home, "mkbackupdir", "-u", "-p", str(backup)).returncode == 0
    g = backup / "primary" / "groupA"
    stream = run(ims_home, "imsasm", "-s", str(g / "alice"), str(g / "bob"), check=0).stdout
    target, _ = _fresh(tmp_path, "new", "classic", env)
    fresh = open_store(Config(str(target)))
    for paths in ([g], [g / "alice", g / "bob"], [backup]):
        p = run(target, "imsasm", "-r", "-m", f"{g}/alice={g}/bob", *map(str, paths), input=stream)
        err = p.stderr.decode()
        assert p.returncode == 2 and err.count("\n") == 1, (paths, err)
        assert "-m alice=bob: bob is recovered too in this run" in err, err
        assert state(fresh) == {}
    p = run(target, "imsasm", "-r", "-m", f"{g}/alice={g}/bob", input=stream)
    err = p.stderr.decode()
    assert p.returncode == 1 and err.count("\n") == 1 and "alice=bob: bob is restored too in this run" in err, err
    assert state(fresh, {"bob"}) == {("bob",) + k[1:]: v for k, v in state(store, {"alice"}).items()}
    other, _ = _fresh(tmp_path, "other", "classic", env)
    p = run(other, "imsasm", "-r", "-m", f"{g}/alice={g}/bob", str(g / "alice"), input=stream)
    assert p.returncode == 0, p.stderr
    assert state(open_store(Config(str(other)))) == {("bob",) + k[1:]: v for k, v in state(store, {"alice"}).items()}


def test_a_user_whose_name_holds_an_equals_sign_is_relocated_and_a_suffix_with_a_slash_refused(tmp_path, ims_home,
                                                                                                  env):
    """-m SRC=DST splits where both sides name a user directory of the tree: a user
    'e=x' (a directory .../e=x) is relocated, and relocated onto; before, the first '='
    was taken, exit 2 'x=... is not inside the backup tree'.  -z with a '/' made a
    folder 'INBOX-/x' under a parent that is not there, exit 0: now exit 2, one line,
    nothing recovered."""
    store = open_store(home(ims_home, "classic"))
    fill(store, ["e=x", "dan"])
    backup = tmp_path / "backup"
    assert run(ims_home, "mkbackupdir", "-u", "-p", str(backup)).returncode == 0
    g = backup / "primary" / "groupA"
    assert (g / "e=x").is_file()
    stream = run(ims_home, "imsasm", "-s", str(g / "e=x"), str(g / "dan"), check=0).stdout
    want = {u: state(store, {u}) for u in ("e=x", "dan")}
    target, _ = _fresh(tmp_path, "new", "classic", env)
    fresh = open_store(Config(str(target)))
    p = run(target, "imsasm", "-r", "-m", f"{g}/e=x={g}/zz", str(g / "e=x"), input=stream)
    assert p.returncode == 0, p.stderr
    assert state(fresh) == {("zz",) + k[1:]: v for k, v in want["e=x"].items()}
    p = run(target, "imsasm", "-r", "-m", f"{g}/dan={g}/f=y", str(g / "dan"), input=stream)
    assert p.returncode == 0, p.stderr
    assert state(fresh, {"f=y"}) == {("f=y",) + k[1:]: v for k, v in want["dan"].items()}
    before = state(fresh)
    for suffix in ("/x", ".a/b", "a\nb", "\x7f"):
        p = run(target, "imsasm", "-r", "-i", "r", "-z", suffix, input=stream)
        err = p.stderr.decode()
        assert p.returncode == 2 and err.count("\n") == 1 and "-z " in err and "'/'" in err, (suffix, err)
        assert state(fresh) == before
    p = run(target, "imsasm", "-r", "-i", "r", "-z", ".R", str(g / "dan"), input=stream)
    assert p.returncode == 0, p.stderr
    assert fresh.exists("dan", "INBOX") and not fresh.exists("dan", "INBOX-R")     # (dan was not there)


def test_bad_input(tmp_path, ims_home, env):
    cfg = home(ims_home, "classic")
    store = open_store(cfg)
    fill(store, ["alice", "bob"])
    backup = tmp_path / "backup"
    assert run(ims_home, "mkbackupdir", "-p", str(backup)).returncode == 0
    cases = [
        (["imsasm", "-v", "x"], None, 2, "must be -s"),
        (["imsasm", "-s", str(tmp_path)], None, 2, "not in a mkbackupdir tree"),
        (["imsasm", "-s", str(backup / "primary" / "groupA" / "alice" / "Nope")], None, 2, "no such placeholder"),
        (["imsasm", "-s", "-t", "someday", str(backup)], None, 2, "bad time"),
        (["imsasm", "-r"], b"not a stream at all", 8, "not an imsasm save stream"),
    ]
    for argv, data, rc, why in cases:
        p = run(ims_home, *argv, input=data)
        assert p.returncode == rc and why in p.stderr.decode(), (argv, p.stderr)
        assert p.stderr.decode().count("\n") == 1
    good = run(ims_home, "imsasm", "-s", str(backup / "primary" / "groupA" / "alice")).stdout
    p = run(ims_home, "imsasm", "-r", "-n", input=good[: len(good) // 2])
    assert p.returncode == 4 and "is cut inside" in p.stderr.decode(), p.stderr
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF
    p = run(ims_home, "imsasm", "-r", "-n", input=bytes(damaged))
    assert p.returncode in (1, 4)
    p = run(ims_home, "imsasm", "-r", str(backup / "primary" / "groupB"), input=good)
    assert p.returncode == 2 and "nothing in the save stream matches" in p.stderr.decode()

    # a stream of two records cut right after the first one's FINISH (where a save
    # flushes): exit 4, not a recover of the first user alone with exit 0
    for e in ([], ["-e"]):
        two = run(ims_home, "imsasm", "-s", *e, *(str(backup / "primary" / "groupA" / u)
                                                   for u in ("alice", "bob"))).stdout
        at, finishes = 0, []
        while at < len(two):
            kind, length = struct.unpack_from(">II", two, at)
            at += 8 + length + (-length % 4)
            if kind == 4:
                finishes.append(at)
        assert len(finishes) >= 2, finishes
        p = run(ims_home, "imsasm", "-r", "-n", input=two[:finishes[0]])
        if e:       # without END by design: a cut between records cannot be seen (documented)
            assert p.returncode == 0, p.stderr
        else:
            assert p.returncode == 4 and "without its END section" in p.stderr.decode(), p.stderr
            assert run(ims_home, "imsasm", "-r", "-n", input=two).returncode == 0


# ----------------------------------------------------------------------------- state chains (issue 13)

def test_dovecot_move_and_rename_chain_through_networker(tmp_path, env, nsr_bin):
    """Real Dovecot: LMTP delivery, full save through savepnpc, UID MOVE and RENAME over
    IMAP, an incremental save (NetWorker's -t), recover -a of the chain into an empty
    store: the client sees exactly the source.  The pstcmd's output (the savegroup
    report) and the textfile carry the counts of what was saved."""
    import json
    import shutil

    from tests.dovecot_lab import dovecot_lab, message, move_and_rename_start
    from tests.test_incremental_dovecot import view

    with dovecot_lab("plain") as lab:
        ims = tmp_path / "ims"
        prom = tmp_path / "prom"
        prom.mkdir()
        home(ims, "maildir")
        for k, v in {"partition:primary.path": lab.store, "store.owner": lab.mail_user,
                     "report.textfile": str(prom)}.items():
            Config(home=str(ims)).set(k, v)
        e = dict(env, IMS_HOME=str(ims))
        backup = tmp_path / "backup"
        backup.mkdir()
        os.chown(backup, lab.uid, lab.gid)
        os.chmod(tmp_path, 0o755)
        move_and_rename_start(lab)
        lab.deliver(["alice"], message("second", size=100))
        h = Harness(nsr_bin, str(tmp_path / "catalog"), e)
        res = res_file(tmp_path, "groupA.res", ims, backup)
        sets = [str(backup / "primary" / "groupA")]
        done = h.savepnpc(res, sets)
        assert [c[1] for c in done["precmd"]] == [0] and set(done["saves"]) == {0}, (done, h.log)
        assert done["pstcmd"][0][1] == 0 and "3 messages" in done["pstcmd"][0][2], done["pstcmd"]
        time.sleep(1.1)
        with lab.imap("alice") as imap:
            imap.select("INBOX")
            imap.uid_move(imap.uids()[:1], "Archive")
            imap.unselect()
            imap.rename("Projects", "Projects-2026")
        want = view(lab)
        done = h.savepnpc(res, sets, level="incr")
        assert set(done["saves"]) == {0}, h.log
        # the incremental carried the moved message (Archive, on its full's state) and the
        # renamed folder (a new placeholder: its first save is a full, said on stderr)
        assert "2 messages" in done["pstcmd"][0][2] and "(2 full, 1 incremental" not in done["pstcmd"][0][2]
        runs = [json.loads(x) for x in open(ims / "log" / "imsasm.log", encoding="utf-8")]
        second = {os.path.basename(r["name"]): r for r in runs if r.get("status") and r["since"]}
        assert {k: (r["level"], r["messages"]) for k, r in second.items()} == \
            {"INBOX": ("incr", 0), "Archive": ("incr", 1), "Projects-2026": ("full", 1)}, second
        assert second["Archive"]["base"] and any("Projects-2026: no state" in x for x in h.log)
        metrics = (prom / "ims_backup_primary_groupA.prom").read_text()
        assert 'ims_backup_messages{partition="primary",group="groupA"} 2' in metrics, metrics
        lab.stop()
        shutil.rmtree(os.path.join(lab.store, "alice"))
        out = h.recover(str(backup / "primary" / "groupA" / "alice"))
        assert len(out) == 2 and all(rc == 0 for rc, _ in out), out
        lab.start()
        assert view(lab) == want


def test_incremental_without_state_saves_full_and_says_so(tmp_path, ims_home, env, nsr_bin, drv):
    """-t with no state of the backup it names (first save with this module, state lost):
    the record is saved whole, said on stderr; a cut stream records no state."""
    cfg = home(ims_home, drv)
    store = open_store(cfg)
    fill(store, ["alice", "bob"])
    backup = tmp_path / "backup"
    assert run(ims_home, "mkbackupdir", "-p", str(backup)).returncode == 0
    alice = str(backup / "primary" / "groupA" / "alice")
    p = run(ims_home, "imsasm", "-s", "-t", str(int(time.time())), alice)
    assert p.returncode == 0 and "saving it full" in p.stderr.decode(), p.stderr
    n = sum(len(v[1]) for v in state(store).values())
    with_state = glob.glob(str(ims_home / "data" / "networker" / "state" / "*" / "*-full.state"))
    assert len(with_state) == 1
    # an incremental on it with nothing new carries no message
    rep = tmp_path / "r.json"
    p = run(ims_home, "imsasm", "-s", "--report", str(rep), "-t", str(int(time.time())), alice)
    assert p.returncode == 0 and "saving it full" not in p.stderr.decode(), p.stderr
    import json
    doc = json.loads(rep.read_text())
    assert doc["counts"]["messages"] == 0 and doc["records"][0]["level"] == "incr" and n > 0
    assert doc["records"][0]["base"] and doc["status"] == 0


@pytest.mark.parametrize("resname", ["groupA.res", "users.res"])
def test_move_rename_and_level_1_chains_on_both_drivers(tmp_path, ims_home, env, nsr_bin, drv, resname):
    """Through the store's own API on both drivers, with one record per folder and one per
    user: a move and a folder rename after the full, an incremental, then a level 1
    (differential: -t of the full) after a flag change; recover -a of each chain into an
    empty installation gives the source."""
    cfg = home(ims_home, drv)
    store = open_store(cfg)
    fill(store, ["alice", "bob"])
    backup = tmp_path / "backup"
    h = Harness(nsr_bin, str(tmp_path / "catalog"), env)
    res = res_file(tmp_path, resname, ims_home, backup)
    sets = [str(backup / "primary" / "groupA")]
    done = h.savepnpc(res, sets)
    assert set(done["saves"]) == {0}, (done, h.log)
    time.sleep(1.1)
    m = store.messages("alice", "INBOX")[0]
    store.append("alice", "Sent", None, link_from=m.path, flags=m.flags, keywords=m.keywords,
                 internaldate=m.internaldate)
    store.expunge("alice", "INBOX", [m.uid])
    info = store.folder("alice", "Réunions/Été")
    store.create_folder("alice", "Done", uidvalidity=info.uidvalidity, subscribed=True)
    for x in store.messages("alice", "Réunions/Été"):
        store.append("alice", "Done", None, uid=x.uid, link_from=x.path, flags=x.flags, keywords=x.keywords,
                     internaldate=x.internaldate)
    store.set_folder("alice", "Done", uidnext=info.uidnext)
    store.delete_folder("alice", "Réunions/Été")
    done = h.savepnpc(res, sets, level="incr")
    assert set(done["saves"]) == {0} and done["pstcmd"][0][1] == 0, (done, h.log)
    want = state(store)
    target, e = _fresh(tmp_path, "r1", drv, env)
    out = h.recover(str(backup / "primary" / "groupA"), env=e)
    assert all(rc == 0 for rc, _ in out), out
    assert state(open_store(Config(str(target)))) == want
    # level 1: on the full's state (NetWorker's -t is the full's save time), not the incremental's
    time.sleep(1.1)
    x = store.messages("bob", "INBOX")[0]
    store.set_flags("bob", "INBOX", x.uid, ["\\Seen", "\\Answered"], ["$Done"])
    before = len(open(ims_home / "log" / "imsasm.log", encoding="utf-8").readlines())
    done = h.savepnpc(res, sets, level="1")
    assert set(done["saves"]) == {0}, h.log
    log = [json.loads(x) for x in open(ims_home / "log" / "imsasm.log", encoding="utf-8")]
    saves = [r for r in log[:before] if r.get("status") and r.get("mode") == "save"]
    fulls = {r["name"]: r["archive_id"] for r in saves if r["level"] == "full"}
    lvl1 = [r for r in log[before:] if r.get("status") and r.get("mode") == "save"]
    assert lvl1 and all(r["level"] == "incr" and r["base"] == fulls[r["name"]] for r in lvl1), (lvl1, fulls)
    # a folder whose last subfolder went: its placeholder directory becomes a file, and
    # the precmd still succeeds (it used to fail on the directory's old entries)
    store.delete_folder("alice", "Work/2023")
    p = run(ims_home, "mkbackupdir", "-p", str(backup))
    assert p.returncode == 0, p.stderr
    assert os.path.isfile(backup / "primary" / "groupA" / "alice" / "Work") or resname == "users.res"


def test_folder_renamed_during_the_savegroup_is_saved_that_night(tmp_path, env):
    """Per-folder tree (examples/res/groupA.res): a folder renamed after the precmd
    (mkbackupdir) and before save reaches its placeholder.  The placeholder's folder is
    gone and the new name has none until tomorrow's precmd, so no record would hold its
    mail tonight.  The record of the vanished placeholder takes the user's folders that
    have no placeholder, says so in one line, and recovering it brings them back byte for
    byte with their UIDs and flags."""
    h = tmp_path / "h"
    cfg = make_home(h, "maildir", **{"partition:primary.path": str(tmp_path / "part")})
    store = open_store(cfg)
    store.create_user("alice")
    store.create_folder("alice", "Projects", subscribed=True)
    for k in range(3):
        store.append("alice", "Projects", io.BytesIO(b"Subject: p%d\r\n\r\nx\r\n" % k),
                     flags=["\\Seen"] if k else ["\\Flagged"])
    store.append("alice", "INBOX", io.BytesIO(b"Subject: i\r\n\r\ny\r\n"))
    t = tmp_path / "t"
    assert run(h, "mkbackupdir", "-p", str(t)).returncode == 0
    want = state(store)[("alice", "Projects")]
    os.rename(tmp_path / "part" / "alice" / "Maildir" / ".Projects",        # IMAP RENAME
              tmp_path / "part" / "alice" / "Maildir" / ".Projects-2026")
    udir = t / "primary" / "user" / "alice"
    p = run(h, "imsasm", "-s", "Projects", "INBOX", cwd=str(udir))       # save runs the ASM as the .nsr says
    err = p.stderr.decode()
    assert p.returncode == 0, err
    line = [x for x in err.splitlines() if "/primary/alice/Projects-2026" in x]
    assert len(line) == 1 and "no placeholder" in line[0] and "saved in this record" in line[0], err
    d = tmp_path / "d"
    dcfg = make_home(d, "maildir", **{"partition:primary.path": str(tmp_path / "dpart")})
    r = run(d, "imsasm", "-r", str(udir / "Projects"), input=p.stdout)
    assert r.returncode == 0, r.stderr
    got = state(open_store(dcfg))
    assert got[("alice", "Projects-2026")][1] == want[1]
    assert got.get(("alice", "INBOX"), (0, ()))[1] == ()          # only the record asked for


def _alice_full_and_incremental(tmp_path, ims_home, drv, flags=()):
    """alice's save record of a mkbackupdir -u tree saved full, a message delivered
    (with ``flags``), then saved incremental (-t): (full stream, incremental stream, the
    store's state after both)."""
    store = open_store(home(ims_home, drv))
    fill(store, ["alice"])
    backup = tmp_path / "backup"
    assert run(ims_home, "mkbackupdir", "-u", "-p", str(backup)).returncode == 0
    alice = str(backup / "primary" / "groupA" / "alice")
    full = run(ims_home, "imsasm", "-s", alice, check=0).stdout
    t0 = str(int(time.time()))
    time.sleep(1.1)
    store.append("alice", "INBOX", io.BytesIO(b"Subject: new\r\n\r\nnew\r\n"), flags=list(flags))
    incr = run(ims_home, "imsasm", "-s", "-t", t0, alice, check=0).stdout
    return full, incr, state(store)


def test_concatenated_streams_with_end_restore_as_a_chain(tmp_path, ims_home, env):
    """docs/networker.md: chained streams may repeat STREAM.  A full and an incremental,
    each written without -e (so each ends in END), piped one after the other into
    imsasm -r: both are restored, not the first alone with exit 0."""
    full, incr, want = _alice_full_and_incremental(tmp_path, ims_home, "classic", flags=["\\Draft"])
    target, _ = _fresh(tmp_path, "new", "classic", env)
    p = run(target, "imsasm", "-r", input=full + incr)
    assert p.returncode == 0, p.stderr
    assert state(open_store(Config(str(target)))) == want
    # -n reads the second stream too, and whatever follows an END that is not a stream
    # is refused loudly, not ignored
    assert run(target, "imsasm", "-r", "-n", input=full + incr).returncode == 0
    p = run(target, "imsasm", "-r", "-n", input=full + b"garbage!" * 4)
    assert p.returncode == 4 and "after its END section" in p.stderr.decode(), p.stderr
    assert p.stderr.decode().count("\n") == 1


def test_an_incremental_recovered_before_its_full_exits_7(tmp_path, ims_home, env, drv):
    """An incremental save set recovered alone (its full not recovered first) into a
    store without the user: the folder is refused, as imsrestore refuses it, and the
    exit status is 7 (chain out of order, docs/networker.md), not 1: imsasm's status
    for a record collapsed the refusal into 'finished with named failures'."""
    full, incr, want = _alice_full_and_incremental(tmp_path, ims_home, drv)
    target, _ = _fresh(tmp_path, "new", drv, env)
    p = run(target, "imsasm", "-r", input=incr, check=7)
    assert "this incremental holds only part of it" in p.stderr.decode(), p.stderr
    t = open_store(Config(str(target)))                  # the refused folders are not made
    assert not [f for f in ("INBOX", "Work") if t.exists("alice") and t.exists("alice", f)
                and t.messages("alice", f)]
    # the full first, then the incremental: the store it was taken from, exit 0
    run(target, "imsasm", "-r", input=full, check=0)
    run(target, "imsasm", "-r", input=incr, check=0)
    assert state(open_store(Config(str(target)))) == want


def test_tree_names_its_installation_over_a_conflicting_ims_home(tmp_path, env):
    """A second instance's tree (mkbackupdir -a ims2asm) names its IMS_HOME in
    .imsasm-tree; NetWorker may run the ASM with the first instance's IMS_HOME in its
    environment.  The save is of the installation the tree names (its placeholders'
    names mean that installation's users), and stderr says IMS_HOME was overridden."""
    one, two = tmp_path / "one", tmp_path / "two"
    for h in (one, two):
        store = open_store(home(h, "classic"))
        store.create_user("joe")
        store.append("joe", "INBOX", io.BytesIO(f"Subject: mail of {h.name}\r\n\r\nbody\r\n".encode()))
    tree2 = tmp_path / "tree2"
    assert run(two, "mkbackupdir", "-a", "ims2asm", "-p", str(tree2)).returncode == 0
    ph = str(tree2 / "primary" / "groupA" / "joe" / "INBOX")
    p = run(one, "imsasm", "-s", ph)
    assert p.returncode == 0, p.stderr
    assert b"mail of two" in p.stdout and b"mail of one" not in p.stdout
    err = p.stderr.decode()
    assert err.count("\n") == 1 and str(two) in err and str(one) in err, err
    # the same IMS_HOME (or none) says nothing
    assert run(two, "imsasm", "-s", ph).stderr == b""
    assert run(None, "imsasm", "-s", ph, env={"IMS_HOME": None}).stderr == b""
    # mkbackupdir with the other installation's IMS_HOME leaves the tree as it is, exit 2
    # (before: exit 0, the tree re-pointed to 'one', two's placeholders made one's)
    marker = (tree2 / tree.MARKER).read_bytes()
    p = run(one, "mkbackupdir", "-a", "ims2asm", "-p", str(tree2))
    assert p.returncode == 2 and str(two) in p.stderr.decode() and p.stderr.decode().count("\n") == 1, p.stderr
    assert (tree2 / tree.MARKER).read_bytes() == marker
    assert run(two, "mkbackupdir", "-a", "ims2asm", "-p", str(tree2)).returncode == 0
    # a tree whose installation is gone: one line naming the tree's marker, exit 2
    os.rename(two, tmp_path / "moved")
    p = run(one, "imsasm", "-s", ph)
    assert p.returncode == 2 and tree.MARKER in p.stderr.decode() and p.stderr.decode().count("\n") == 1, p.stderr


# ----------------------------------------------------------------------------- the store's disk

def _mounted_store(tmp_path):
    """A Maildir store on its own partition directory (the disk), two users, a tree."""
    h = tmp_path / "h"
    cfg = make_home(h, "maildir", **{"partition:primary.path": str(tmp_path / "mail")})
    (tmp_path / "mail").mkdir()
    store = open_store(cfg)
    for u in ("ann", "joe"):
        store.create_user(u)
        for k in range(3):
            store.append(u, "INBOX", io.BytesIO(b"Subject: %d\r\n\r\nx\r\n" % k))
    t = tmp_path / "t"
    assert run(h, "mkbackupdir", "-p", str(t)).returncode == 0
    return h, t


def test_save_of_a_partition_whose_directory_is_gone_is_exit_17(tmp_path, env):
    """The partition's disk is not mounted (its directory is gone) when NetWorker runs the
    ASM: no save record 'skipping' every mailbox with exit 0, but exit 17 naming the
    partition's directory (as imsbackup /), and no stream."""
    h, t = _mounted_store(tmp_path)
    os.rename(tmp_path / "mail", tmp_path / "mail.unmounted")
    for path in (t / "primary" / "user" / "joe" / "INBOX", t / "primary", t):
        for extra in ([], ["-n"], ["-b"]):
            p = run(h, "imsasm", "-s", *extra, str(path))
            err = p.stderr.decode()
            assert p.returncode == 17, (path, extra, err)
            assert "partition 'primary'" in err and str(tmp_path / "mail") in err and err.count("\n") == 1, err
            assert p.stdout == b"" and "skipped" not in err
    # the pstcmd sees the refused save sets failed (no record began, a line says why)
    r = run(h, "imsasmreport", "-p", str(t))
    assert r.returncode == 1 and "3 save records" in r.stdout.decode() and "0 ok, 3 failed" in r.stdout.decode()
    assert "partition 'primary'" in r.stdout.decode(), r.stdout


def test_an_empty_mount_point_is_exit_18_and_the_tree_is_kept(tmp_path, env, nsr_bin):
    """The disk is not mounted and its mount point (the partition directory) is there and
    empty.  The precmd mkbackupdir must not take that for a store whose users all left
    (removing every placeholder, exit 0) and the ASM must not save nothing with exit 0:
    both are exit 18 (the store holds no users; is the disk mounted?), as imsbackup /,
    the tree is left as it was, and savepnpc runs no save.  An empty store that is
    expected (--allow-empty, backup.allowempty yes) is saved as such."""
    h, t = _mounted_store(tmp_path)
    before = sorted(str(p.relative_to(t)) for p in t.rglob("*"))
    marker = (t / tree.MARKER).read_bytes()
    os.rename(tmp_path / "mail", tmp_path / "mail.disk")
    (tmp_path / "mail").mkdir()
    p = run(h, "mkbackupdir", "-p", str(t))
    err = p.stderr.decode()
    assert p.returncode == 18 and "holds no users" in err and "mounted" in err and err.count("\n") == 1, err
    assert sorted(str(p.relative_to(t)) for p in t.rglob("*")) == before
    assert (t / tree.MARKER).read_bytes() == marker
    for path in (t / "primary", t / "primary" / "user" / "joe" / "INBOX", t):
        p = run(h, "imsasm", "-s", str(path))
        err = p.stderr.decode()
        assert p.returncode == 18 and "holds no users" in err and err.count("\n") == 1, (path, err)
        assert p.stdout == b""
    # through savepnpc: the precmd fails, no save runs
    res = tmp_path / "g.res"
    res.write_text(f'type: savepnpc;\nprecmd: "mkbackupdir -p {t}";\npstcmd: "imsasmreport -p {t}";\n')
    hn = Harness(nsr_bin, str(tmp_path / "catalog"), dict(env, IMS_HOME=str(h)))
    done = hn.savepnpc(str(res), [str(t / "primary")])
    assert done["precmd"][0][1] == 18 and done["saves"] == [] and hn.catalog.entries == []
    # expected empty: the ASM saves the empty record, mkbackupdir empties the tree
    p = run(h, "imsasm", "-s", "--allow-empty", str(t / "primary"))
    assert p.returncode == 0 and p.stdout, p.stderr
    Config(home=str(h)).set("backup.allowempty", "yes")
    assert run(h, "imsasm", "-s", str(t / "primary")).returncode == 0
    p = run(h, "mkbackupdir", "-p", str(t))
    assert p.returncode == 0, p.stderr
    assert not (t / "primary" / "user" / "joe").exists()


def test_pstcmd_names_a_save_cut_or_killed_as_failed(tmp_path, ims_home, env):
    """A group of two save sets, one ASM each: ann's save is whole, bob's stream is cut
    (NetWorker's end of the pipe went away: imsasm exit 3), then a save of bob is killed
    outright (SIGKILL: imsasm writes nothing more).  The pstcmd must not say "1 ok, 0
    failed" with exit 0: it names bob's record as failed and exits 1.  NetWorker's client
    retry then saves bob whole: the save set is reported by its last attempt, "failed,
    then saved on retry", and the pstcmd exits 0 (everything was saved); it is not
    counted as a failure, nor twice."""
    import signal
    import subprocess
    cfg = home(ims_home, "classic")
    store = open_store(cfg)
    store.create_user("ann")
    store.append("ann", "INBOX", io.BytesIO(b"Subject: a\r\n\r\nx\r\n"))
    store.create_user("bob")
    for k in range(20):
        store.append("bob", "INBOX", io.BytesIO(b"Subject: b\r\n\r\n" + os.urandom(50000).hex().encode()))
    backup = tmp_path / "backup"
    assert run(ims_home, "mkbackupdir", "-u", "-p", str(backup)).returncode == 0
    ann, bob = (str(backup / "primary" / "groupA" / u) for u in ("ann", "bob"))
    assert run(ims_home, "imsasm", "-s", ann).returncode == 0
    p = popen(ims_home, "imsasm", "-s", bob, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(100000)
    p.stdout.close()
    assert p.wait(timeout=60) == 3 and b"it is incomplete" in p.stderr.read()
    p.stderr.close()
    r = run(ims_home, "imsasmreport", "-p", str(backup))
    out = r.stdout.decode()
    assert r.returncode == 1, out
    assert "2 save records" in out and "1 ok, 1 failed" in out, out
    assert re.search(r"^error\t" + re.escape(bob) + r"\t.*incomplete", out, re.M), out
    # killed: only the line that said it started is left
    p = popen(ims_home, "imsasm", "-s", bob, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdout.read(1000)                 # it has begun the record; the pipe fills and it waits
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    p.stdout.close()
    r = run(ims_home, "imsasmreport", "-p", str(backup))
    out = r.stdout.decode()
    # bob's save set by its last attempt: failed (killed), after a first that failed too
    assert r.returncode == 1 and "2 save records" in out and "1 ok, 1 failed" in out, out
    assert re.search(r"^error\t" + re.escape(bob) + r"\t.*never finished.*not saved on retry either "
                     r"\(2 attempts; the first failure: .*incomplete", out, re.M), out
    # the client retry saves bob whole: saved, said so, exit 0; its bytes counted once
    assert run(ims_home, "imsasm", "-s", bob).returncode == 0
    r = run(ims_home, "imsasmreport", "-p", str(backup))
    out = r.stdout.decode()
    assert r.returncode == 0, out
    assert "2 save records" in out and "2 ok (1 failed, then saved on retry), 0 failed" in out, out
    assert re.search(r"^ok\t" + re.escape(bob) + r"\t.*\tfailed, then saved on retry \(3 attempts; the first "
                     r"failure: .*incomplete", out, re.M), out
    assert "21 messages" in out, out
    # and a later attempt that fails again makes it a failure once more (the last attempt counts)
    p = popen(ims_home, "imsasm", "-s", bob, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdout.read(100000)
    p.stdout.close()
    assert p.wait(timeout=60) == 3
    r = run(ims_home, "imsasmreport", "-p", str(backup))
    out = r.stdout.decode()
    assert r.returncode == 1 and "2 save records" in out and "1 ok, 1 failed" in out, out
    assert re.search(r"^error\t" + re.escape(bob) + r"\t.*the last of 4 attempts failed", out, re.M), out


def test_recover_of_a_path_inside_a_record_that_matches_nothing(tmp_path, ims_home, env):
    """imsasm -r (and -c) of a path inside a record that names no folder of it (a typo,
    .../joe/Wrok) is exit 2 naming the path, as imsrestore says for the same archive, not
    exit 0 having restored nothing; with another path that does match, that one is
    restored and the other named, exit 1; in a chain a path need only match in one record
    (a folder made after the full)."""
    cfg = home(ims_home, "classic")
    store = open_store(cfg)
    fill(store, ["joe"])
    backup = tmp_path / "backup"
    assert run(ims_home, "mkbackupdir", "-u", "-p", str(backup)).returncode == 0
    joe = backup / "primary" / "groupA" / "joe"
    full = run(ims_home, "imsasm", "-s", str(joe), check=0).stdout
    typo = str(joe / "Wrok")
    for mode in ("-r", "-c"):
        target, _ = _fresh(tmp_path, f"t{mode}", "classic", env)
        p = run(target, "imsasm", mode, typo, input=full)
        err = p.stderr.decode()
        assert p.returncode == 2 and f"nothing in the save stream matches {typo}" in err, (mode, err)
        assert err.count("\n") == 1, err
        assert state(open_store(Config(str(target)))) == {}
    target, _ = _fresh(tmp_path, "both", "classic", env)
    p = run(target, "imsasm", "-r", str(joe / "Work"), typo, input=full)
    err = p.stderr.decode()
    assert p.returncode == 1 and typo in err and str(joe / "Work") not in err, err
    got = state(open_store(Config(str(target))))
    assert {k[1] for k in got} >= {"Work", "Work/2023"} and "INBOX" not in {k[1] for k in got if got[k][1]}
    # the whole record and a typo inside it: the record is restored, the typo named
    target, _ = _fresh(tmp_path, "whole", "classic", env)
    p = run(target, "imsasm", "-r", str(joe), typo, input=full)
    assert p.returncode == 1 and typo in p.stderr.decode(), p.stderr
    assert ("joe", "INBOX") in state(open_store(Config(str(target))))
    # a chain: the folder is in the incremental only
    t0 = str(int(time.time()))
    time.sleep(1.1)
    store.create_folder("joe", "New", subscribed=True)
    store.append("joe", "New", io.BytesIO(b"Subject: n\r\n\r\nn\r\n"))
    incr = run(ims_home, "imsasm", "-s", "-t", t0, str(joe), check=0).stdout
    target, _ = _fresh(tmp_path, "chain", "classic", env)
    p = run(target, "imsasm", "-r", str(joe / "New"), input=full + incr)
    assert p.returncode == 0, p.stderr
    assert len(state(open_store(Config(str(target))))[("joe", "New")][1]) == 1


def test_recover_into_a_store_that_fills_up_is_exit_13_and_finishes_when_freed(tmp_path, ims_home, env, drv):
    """imsasm -r of a save stream of two records (alice, then bob) into a store whose disk
    fills during alice: exit 1, "finished, but named mailboxes failed", with bob's record
    read and failing too.  The store's full disk is 13, one error, bob not tried and not
    called unmatched; with room made, the same recover finishes exactly."""
    from tests.helpers import small_tmpfs
    cfg = home(ims_home, drv)
    store = open_store(cfg)
    fill(store, ["alice", "bob"])
    for u in ("alice", "bob"):
        for n in range(12):
            body = f"From: x@example.com\r\nSubject: {u} big {n}\r\n\r\n".encode() + os.urandom(45_000).hex().encode()
            store.append(u, "INBOX", io.BytesIO(body), flags=["\\Seen"])
    want = state(store)
    backup = tmp_path / "backup"
    assert run(ims_home, "mkbackupdir", "-u", "-p", str(backup)).returncode == 0
    group = backup / "primary" / "groupA"
    stream = run(ims_home, "imsasm", "-s", str(group / "alice"), str(group / "bob"), check=0).stdout
    with small_tmpfs(tmp_path / "small", "1m") as part:
        target, _ = _fresh(tmp_path, "target", drv, env)
        Config(str(target)).set("partition:primary.path", str(part / "primary"))
        args = ["imsasm", "-r", str(group / "alice"), str(group / "bob")]
        p = run(target, *args, input=stream)
        err = p.stderr.decode()
        assert p.returncode == 13, err
        assert "the store is full" in err and "nothing in the save stream matches" not in err, err
        assert "bob" not in err, err
        assert "bob" not in [u for pt in open_store(Config(str(target))).partitions()
                             for u in open_store(Config(str(target))).users(pt)]
        import subprocess
        subprocess.run(["mount", "-o", "remount,size=64m", str(part)], check=True)
        p = run(target, *args, input=stream)
        assert p.returncode == 0, p.stderr
        assert state(open_store(Config(str(target)))) == want


def test_a_save_whose_state_disk_fills_up_anywhere_is_13_and_the_next_save_records_it(tmp_path, ims_home):
    """IMS_HOME/data/networker (the state of each save, the base of its next incremental)
    on a disk that fills up (a real tmpfs written full) before each step of the saves'
    states in turn.  The stream reached NetWorker whole, but the state could not be
    recorded: exit 1 ("mailboxes or messages failed", none had), where the status table,
    and imsbackup for its state file, say a full disk is 13; the line named the record
    but not the disk to free; and a label file cut short by the full disk stayed empty
    for good.  Now: 13, the state directory named, no empty label left, and the next
    save with room records every record's state."""
    import shutil
    from plugins.networker import state as nsrstate
    from tests.faults import count_steps, run_with_fault, spread
    from tests.helpers import small_tmpfs
    store = open_store(home(ims_home, "classic"))
    fill(store, ["alice", "bob", "carol"])
    backup = tmp_path / "backup"
    run(ims_home, "mkbackupdir", "-u", "-p", str(backup), check=0)
    records = sorted(str(p) for p in (backup / "primary").iterdir() if not p.name.startswith("."))
    argv = ["imsasm", "-s", *records]
    with small_tmpfs(ims_home / "data" / "networker", "1m") as nw:
        filler = nw / "filler"
        total, p = count_steps(argv, nw, tmp_path)
        assert p.returncode == 0, p.stderr
        statuses = set()
        for k in spread(total, 12, 11):
            shutil.rmtree(nw / "state", ignore_errors=True)
            r = run_with_fault(argv, nw, f"fill:{k}", env={"IMS_FAULT_FILL": str(filler)})
            out = r.stderr.decode()
            statuses.add(r.returncode)
            assert r.returncode in (0, 13), (k, out)
            if r.returncode == 13:
                assert "internal error" not in out and f"{nw}/state" in out and "free space there" in out, (k, out)
                assert out.count("cannot record the state") >= 1, (k, out)
            labels = [os.path.join(d, n) for d, _, fs in os.walk(nw / "state") for n in fs if n == "name"]
            assert [x for x in labels if os.path.getsize(x) == 0] == [], (k, labels)
            if filler.exists():
                os.unlink(filler)
            run(ims_home, *argv, check=0)
            for rec in records:
                assert nsrstate.states(str(ims_home), rec), (k, rec)
        assert 13 in statuses, statuses


def test_statuses_of_one_run_are_ranked_as_documented():
    """imsasm ranked the statuses of several save sets by number: a chain out of order
    (7) hid hostile members (5), damage (4) or a lock (6), and a store that could not be
    written (17) hid a full one (13).  asm.errors.worst ranks them as docs/operations.md
    says: 13, 5, 4, 17, 6, 7, 2, 1."""
    from asm import errors as e
    assert e.worst(e.EXIT_ORDER, e.EXIT_HOSTILE) == e.EXIT_HOSTILE
    assert e.worst(e.EXIT_INCOMPLETE, e.EXIT_ORDER, e.EXIT_PARTIAL) == e.EXIT_INCOMPLETE
    assert e.worst(e.EXIT_STORE, e.EXIT_NOSPACE) == e.EXIT_NOSPACE
    assert e.worst(e.EXIT_LOCKED, e.EXIT_ORDER) == e.EXIT_LOCKED
    assert e.worst(e.EXIT_STORE, e.EXIT_INCOMPLETE) == e.EXIT_INCOMPLETE
    assert e.worst(e.EXIT_OK, e.EXIT_PARTIAL) == e.EXIT_PARTIAL and e.worst(e.EXIT_OK) == e.EXIT_OK
    doc = open(os.path.join(ROOT, "docs", "operations.md"), encoding="utf-8").read()
    ranked = re.search(r"the status is the first of these that happened: 13 [^:]*: ([^)]*)\), ([0-9, ]+) \(", doc)
    assert ranked, "docs/operations.md no longer ranks the statuses"
    assert [13] + [int(x) for x in ranked.group(2).split(",")] == list(e.SEVERITY)


SLOW_CLOCK = """\
import sys, time, types
import plugins.networker.imsasm as m
real, ahead = time.time, [0.0]
m.time = types.SimpleNamespace(time=lambda: real() + ahead[0], monotonic=time.monotonic,
                               strftime=time.strftime, localtime=time.localtime)
backup = m.run_backup
def slow(*a, **k):      # each record takes 25 minutes of the clock
    res = backup(*a, **k)
    ahead[0] += 1500
    return res
m.run_backup = slow
sys.argv[0] = "imsasm"
sys.exit(m.main(sys.argv[1:]))
"""


def test_a_record_saved_late_in_a_long_save_finds_its_base(tmp_path, ims_home, env, drv):
    """One imsasm -s of a group's three records, each taking 25 minutes: the state of the
    second and third was filed under the time their record began, 25 and 50 minutes after
    NetWorker's save time, past the 10 minutes a -t looks, so every night's incremental
    saved them full again ("no state of an earlier save ... saving it full").  Filed
    under the time the save began, each record's incremental builds on its own state."""
    cfg = home(ims_home, drv)
    store = open_store(cfg)
    fill(store, ["alice", "bob", "carl"])
    backup = tmp_path / "backup"
    assert run(ims_home, "mkbackupdir", "-u", "-p", str(backup)).returncode == 0
    group = backup / "primary" / "groupA"
    records = [str(group / u) for u in ("alice", "bob", "carl")]
    script = tmp_path / "slow_clock.py"
    script.write_text(SLOW_CLOCK)
    e = dict(env, PYTHONPATH=ROOT)
    asm = [sys.executable, script]
    t0 = str(int(time.time()))
    full = run(ims_home, *asm, "-s", *records, env=e, check=0).stdout
    time.sleep(1.1)
    for u in ("alice", "bob", "carl"):
        store.append(u, "INBOX", io.BytesIO(f"Subject: new {u}\r\n\r\nnew\r\n".encode()), flags=["\\Draft"])
    want = state(store)
    rep = tmp_path / "incr.json"
    p = run(ims_home, *asm, "-s", "-t", t0, "--report", rep, *records, env=e)
    err = p.stderr.decode()
    assert p.returncode == 0 and "saving it full" not in err, err
    incr = p.stdout
    levels = [(r["name"], r["level"], r["messages"]) for r in json.loads(rep.read_text())["records"]]
    assert levels == [(r, "incr", 1) for r in records], levels
    target, _ = _fresh(tmp_path, "new", drv, env)
    run(target, "imsasm", "-r", input=full + incr, check=0)
    assert state(open_store(Config(str(target)))) == want


def test_recover_of_a_record_whose_backup_could_not_read_a_folder_exits_1_as_imsrestore(tmp_path, ims_home, env):
    """A save record whose backup could not read joe's Work (its trailer names it; imsasm
    -s exited 1): imsasm -r of it, or of a path reaching Work, restores the rest, names
    Work with imsrestore's line and exits 1, as imsrestore and imsverify of the same
    archive; a path that does not reach Work is exit 0.  Before, imsasm -r said
    nothing of Work and exited 0."""
    from tests.test_backup import _break_folder
    cfg = home(ims_home, "classic")
    store = open_store(cfg)
    fill(store, ["joe"])
    _break_folder(store, "joe", "Work")
    backup = tmp_path / "backup"
    assert run(ims_home, "mkbackupdir", "-u", "-p", str(backup)).returncode == 0
    joe = backup / "primary" / "groupA" / "joe"
    full = run(ims_home, "imsasm", "-s", str(joe), check=1).stdout
    line = "/primary/joe/Work: the backup that made this archive could not read it"
    for n, (paths, want) in enumerate((((), 1), ((str(joe / "Work"),), 1), ((str(joe / "INBOX"),), 0))):
        target, _ = _fresh(tmp_path, f"t{n}", "classic", env)
        p = run(target, "imsasm", "-r", *paths, input=full)
        err = p.stderr.decode()
        assert p.returncode == want and err.count(line) == want, (paths, err)
        got = state(open_store(Config(str(target))))
        assert len(got[("joe", "INBOX" if n == 2 else "Work/2023")][1]) == 3, got
        assert ("joe", "Work") not in got or not got[("joe", "Work")][1], got
