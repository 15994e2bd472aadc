"""backup-groups.conf: first whole-ID match wins, the predefined group 'user', and errors
that name file and line."""
from __future__ import annotations

import pytest

from asm.groups import PREDEFINED, Groups, GroupsError

EXAMPLE = """\
# split the users of a partition for parallel backups
groupA=[a-l].*

groupB=[m-r].*
  # indented comment
groupC=.*
"""


def test_first_matching_group_wins():
    g = Groups.parse(EXAMPLE)
    assert g.names() == ["groupA", "groupB", "groupC", "user"]
    assert g.group_of("alice") == "groupA"
    assert g.group_of("lisa") == "groupA"
    assert g.group_of("mike") == "groupB"
    assert g.group_of("zoe") == "groupC"     # groupC would also match alice: order decides
    assert g.group_of("1234") == "groupC"


def test_match_is_on_the_whole_user_id():
    g = Groups.parse("groupA=a\nshort=[a-z]{1,3}\n")
    assert g.group_of("a") == "groupA"
    assert g.group_of("alice") == "user"      # 'a' is a prefix only: no match
    assert g.group_of("bob") == "short"
    assert g.group_of("bobby") == "user"
    assert g.group_of("xbob") == "user"


def test_no_file_means_only_user(tmp_path):
    g = Groups.load(str(tmp_path / "missing.conf"))
    assert g.names() == [PREDEFINED]
    assert g.group_of("anyone") == "user"
    assert g.is_group("user") and not g.is_group("groupA")


def test_user_holds_everyone():
    g = Groups.parse(EXAMPLE)
    assert g.member("alice", "user") and g.member("zoe", "user")
    assert g.member("alice", "groupA") and not g.member("alice", "groupB")
    assert g.members("groupB", ["alice", "mike", "rita", "zoe"]) == ["mike", "rita"]
    assert g.members("user", ["alice", "zoe"]) == ["alice", "zoe"]


def test_spaces_around_equals_and_equals_in_regex():
    g = Groups.parse("  eq = a=b.*  \n")
    assert g.group_of("a=bc") == "eq"


def test_load_from_file(tmp_path):
    p = tmp_path / "backup-groups.conf"
    p.write_text(EXAMPLE)
    assert Groups.load(str(p)).group_of("mike") == "groupB"


def test_a_file_saved_with_a_byte_order_mark_loads(tmp_path):
    """An editor's UTF-8 byte-order mark before the first group name made that name
    'bad' (exit 2 naming a name that looks right): the mark is not part of it."""
    p = tmp_path / "backup-groups.conf"
    p.write_bytes(b"\xef\xbb\xbf" + EXAMPLE.encode())
    g = Groups.load(str(p))
    assert g.group_of("mike") == "groupB" and g.names() == Groups.parse(EXAMPLE).names()


@pytest.mark.parametrize("text,line,what", [
    ("groupA=[a-l.*\n", 1, "bad regular expression"),
    ("# c\ngroupA=a.*\n\ngroupA=b.*\n", 4, "already defined on line 2"),
    ("groupA=a.*\njust-a-name\n", 2, "expected 'name=regex'"),
    ("user=.*\n", 1, "predefined"),
    ("groupA=\n", 1, "empty expression"),
    ("bad name=x\n", 1, "bad group name"),
    ("=x.*\n", 1, "bad group name"),
])
def test_errors_name_file_and_line(tmp_path, text, line, what):
    p = tmp_path / "backup-groups.conf"
    p.write_text(text)
    with pytest.raises(GroupsError) as exc:
        Groups.load(str(p))
    msg = str(exc.value)
    assert msg.startswith(f"{p}:{line}: "), msg
    assert what in msg
    assert "\n" not in msg
