"""Logical paths: every form parsed, then resolved against a real store of each driver."""
from __future__ import annotations

import pytest

from asm.groups import Groups
from asm.logical import LogicalPath, PathError, parse, resolve
from asm.store import open_store

GROUPS = Groups.parse("groupA=[a-l].*\ngroupB=m.*\n")


# -- parsing ------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("/", (None, None, None, None)),
    ("/primary", ("primary", None, None, None)),
    ("/primary/", ("primary", None, None, None)),
    ("/primary/groupA", ("primary", "groupA", None, None)),
    ("/primary/user", ("primary", "user", None, None)),
    ("/primary/groupA/joe", ("primary", "groupA", "joe", None)),
    ("/primary/groupA/joe/Work/2023", ("primary", "groupA", "joe", "Work/2023")),
    ("/primary/joe", ("primary", None, "joe", None)),                 # short form
    ("/primary/joe/Sent", ("primary", None, "joe", "Sent")),
    ("/primary/user/joe", ("primary", "user", "joe", None)),
    ("/primary/user/joe/inbox", ("primary", "user", "joe", "INBOX")),
    ("/primary/user/joe/Inbox/Sub", ("primary", "user", "joe", "INBOX/Sub")),
    ("/primary/user/joe/Réunions/Été", ("primary", "user", "joe", "Réunions/Été")),
])
def test_parse_forms(text, want):
    lp = parse(text, GROUPS)
    assert (lp.partition, lp.group, lp.user, lp.folder) == want
    assert str(lp) == text


@pytest.mark.parametrize("text,what", [
    ("primary/joe", "must start with '/'"),
    ("", "must start with '/'"),
    ("/primary//joe", "empty component"),
    ("/primary/groupB/joe", "not in backup group 'groupB'"),   # joe is in groupA
    ("/primary/groupA/mike", "not in backup group 'groupA'"),
    ("/primary/user/..", "bad user ID"),
    ("/primary/joe/a\tb", "control characters"),
])
def test_parse_errors(text, what):
    with pytest.raises(PathError, match=what):
        parse(text, GROUPS)


def test_wrong_group_error_suggests_the_right_paths():
    with pytest.raises(PathError) as exc:
        parse("/primary/groupB/joe", GROUPS)
    assert "/primary/groupA/joe" in str(exc.value)
    assert "/primary/user/joe" in str(exc.value)


def test_wrong_group_error_names_each_path_once():
    """A user in no configured group: the one path is suggested once, not twice."""
    with pytest.raises(PathError) as exc:
        parse("/primary/groupB/zoe", GROUPS)
    assert str(exc.value).count("/primary/user/zoe") == 1, str(exc.value)


def test_covers_user():
    g = GROUPS
    assert parse("/", g).covers_user("second", "zoe", g)
    assert parse("/primary", g).covers_user("primary", "zoe", g)
    assert not parse("/primary", g).covers_user("second", "zoe", g)
    assert parse("/primary/groupA", g).covers_user("primary", "alice", g)
    assert not parse("/primary/groupA", g).covers_user("primary", "mike", g)
    assert parse("/primary/user", g).covers_user("primary", "mike", g)
    assert parse("/primary/joe", g).covers_user("primary", "joe", g)
    assert not parse("/primary/joe", g).covers_user("primary", "jo", g)


def test_folder_path_covers_its_subfolders_only():
    lp = parse("/primary/joe/Work", GROUPS)
    assert lp.covers_folder("Work") and lp.covers_folder("Work/2023") and lp.covers_folder("Work/a/b")
    assert not lp.covers_folder("Workshop")         # a prefix of the name is not a parent
    assert not lp.covers_folder("INBOX")
    assert parse("/primary/joe", GROUPS).covers_folder("anything")


def test_names_folder():
    assert parse("/primary/joe/Trash", GROUPS).names_folder("Trash")
    assert parse("/primary/joe/Trash", GROUPS).names_folder("Trash/Old")
    assert not parse("/primary/joe/Trash", GROUPS).names_folder("Sent")
    # a user, group or partition path names no folder: backupexclude still applies
    for text in ("/", "/primary", "/primary/user", "/primary/joe"):
        assert not parse(text, GROUPS).names_folder("Trash")


def test_logical_path_is_value():
    assert parse("/primary/joe", GROUPS) == LogicalPath("/primary/joe", "primary", None, "joe", None)


# -- resolving against a store ---------------------------------------------------
@pytest.fixture
def mstore(config, tmp_path):
    config.set("partition:second.path", str(tmp_path / "second"))
    (tmp_path / "second").mkdir()
    s = open_store(config)
    for u in ("alice", "joe", "mike", "zoe"):
        s.create_user(u)
    s.create_user("kim", "second")
    for f in ("Sent", "Trash", "Work", "Work/2023", "Workshop"):
        s.create_folder("joe", f)
    s.create_folder("kim", "Archive")
    return s


def _r(store, *texts):
    return resolve([parse(t, GROUPS) for t in texts], store, GROUPS)


def _names(targets):
    return [(t.partition, t.user, list(t.folders)) for t in targets]


def test_resolve_root_and_partitions(mstore):
    everyone = _r(mstore, "/")
    assert [(t.partition, t.user) for t in everyone] == [
        ("primary", "alice"), ("primary", "joe"), ("primary", "mike"), ("primary", "zoe"), ("second", "kim")]
    assert [t.user for t in _r(mstore, "/second")] == ["kim"]
    assert [t.user for t in _r(mstore, "/primary")] == ["alice", "joe", "mike", "zoe"]
    joe = next(t for t in everyone if t.user == "joe")
    assert list(joe.folders) == ["INBOX", "Sent", "Trash", "Work", "Work/2023", "Workshop"]
    assert joe.group == "groupA" and joe.explicit == set()


def test_resolve_groups(mstore):
    assert [t.user for t in _r(mstore, "/primary/groupA")] == ["alice", "joe"]
    assert [t.user for t in _r(mstore, "/primary/groupB")] == ["mike"]
    assert [t.user for t in _r(mstore, "/primary/user")] == ["alice", "joe", "mike", "zoe"]
    assert [t.user for t in _r(mstore, "/second/groupA")] == ["kim"]


def test_resolve_user_forms_agree(mstore):
    long = _names(_r(mstore, "/primary/groupA/joe"))
    assert long == _names(_r(mstore, "/primary/joe")) == _names(_r(mstore, "/primary/user/joe"))
    assert long[0][1] == "joe" and len(long[0][2]) == 6


def test_resolve_folder_selects_subfolders(mstore):
    t, = _r(mstore, "/primary/groupA/joe/Work")
    assert list(t.folders) == ["Work", "Work/2023"]
    assert t.explicit == {"Work", "Work/2023"}
    t, = _r(mstore, "/primary/groupA/joe/Work/2023")
    assert list(t.folders) == ["Work/2023"]


def test_resolve_inbox_any_case(mstore):
    t, = _r(mstore, "/primary/joe/inbox")
    assert list(t.folders) == ["INBOX"]


def test_resolve_union_of_paths(mstore):
    out = _r(mstore, "/primary/joe/Sent", "/primary/joe/Trash", "/second/kim", "/primary/joe/Sent")
    assert _names(out) == [("primary", "joe", ["Sent", "Trash"]),
                           ("second", "kim", ["INBOX", "Archive"])]
    assert out[0].explicit == {"Sent", "Trash"}


@pytest.mark.parametrize("text,what", [
    ("/nowhere", "no partition 'nowhere'"),
    ("/nowhere/user/joe", "no partition 'nowhere'"),
    ("/primary/nobody", "no user 'nobody'"),
    ("/primary/user/nobody/INBOX", "no user 'nobody'"),
    ("/second/joe", "on partition 'primary', not 'second'"),
    ("/primary/joe/Nope", "no folder 'Nope'"),
    ("/primary/joe/Work/2024", "no folder 'Work/2024'"),
    ("/primary/joe/Work/2023/Q1", "no folder"),
])
def test_resolve_paths_naming_nothing(mstore, text, what):
    with pytest.raises(PathError, match=what):
        _r(mstore, text)


def test_resolve_named_group_without_users(config):
    s = open_store(config)
    s.create_user("zoe")
    groups = Groups.parse("groupA=[a-l].*\n")
    with pytest.raises(PathError, match="backup group 'groupA' has no users"):
        resolve([parse("/primary/groupA", groups)], s, groups)
    # the predefined group and a whole partition may be empty without error
    assert resolve([parse("/primary/user", groups)], open_store(config), groups)[0].user == "zoe"


def test_a_group_named_like_a_user_is_refused_not_taken_for_the_group(config, tmp_path):
    """backup-groups.conf 'bob=a.*' (a group named like the login bob): `imsbackup
    /primary/bob` backed up the group (alice) and exited 0, bob in no archive.  A path
    that reads both ways is refused, naming the path that means the user."""
    from tests.helpers import make_home, run
    s = open_store(config)
    for u in ("alice", "bob"):
        s.create_user(u)
    groups = Groups.parse("bob=a.*\n")
    for text in ("/primary/bob", "/primary/bob/alice"):
        with pytest.raises(PathError, match=r"'bob' is both a backup group .* and a user: "
                                            r"/primary/user/bob/?\S* is the user"):
            resolve([parse(text, groups)], s, groups)
    assert [t.user for t in resolve([parse("/primary/user/bob", groups)], s, groups)] == ["bob"]
    home = tmp_path / "cli"
    store = open_store(make_home(home, "classic"))
    for u in ("alice", "bob"):
        store.create_user(u)
    (home / "config" / "backup-groups.conf").write_text("bob=a.*\n")
    p = run(home, "imsbackup", "-f", tmp_path / "x.ims", "/primary/bob", check=2, text=True)
    assert p.stderr.count("\n") == 1 and "/primary/user/bob is the user" in p.stderr, p.stderr
    assert not (tmp_path / "x.ims").exists()


@pytest.mark.parametrize("seed", range(8))
def test_an_exclude_names_the_folders_a_path_names(seed):
    """store.backupexclude and a backup path agree on every name: for random folder
    names (accented letters in either Unicode form, ß, dotted and dotless i, Greek final
    sigma, '/' levels) and an exclude that spells one of them in a random case and form,
    is_excluded says yes exactly where match_folder finds that folder, and for the
    folders below it; a name differing in one letter is never excluded."""
    import random
    import unicodedata

    from asm.logical import fold, is_excluded, match_folder
    rnd = random.Random(seed)
    letters = ["a", "e", "s", "i", "é", "ß", "İ", "ı", "σ", "ς", "Ω", "ñ", "k", "K"]

    def word():
        return "".join(rnd.choice(letters) for _ in range(rnd.randint(1, 5)))

    def respell(name):
        cased = "".join(c.upper() if rnd.random() < 0.5 else c for c in name)
        return unicodedata.normalize(rnd.choice(["NFC", "NFD"]), cased)
    checked = 0
    for _ in range(300):
        folder = unicodedata.normalize(rnd.choice(["NFC", "NFD"]),
                                       "/".join(word() for _ in range(rnd.randint(1, 3))))
        spelled = respell(folder)
        if match_folder(spelled, [folder]) == folder:
            checked += 1
            assert is_excluded(folder, [spelled]) and is_excluded(folder + "/Sub", [spelled]), (folder, spelled)
        else:
            assert fold(spelled) != fold(folder) and not is_excluded(folder, [spelled]), (folder, spelled)
        other = spelled[:-1] + ("x" if not spelled.endswith("x") else "y")
        assert not is_excluded(folder, [other]) or fold(other) == fold(folder), (folder, other)
        assert not is_excluded(folder, [spelled + "x"]) and not is_excluded(folder.rsplit("/", 1)[0] + "x", [spelled])
    assert checked > 200, checked
