"""asm/store/layout.py: mail_location parsed, expanded and walked back the way Dovecot does.

Unit tests for parsing, expansion, per-login paths and enumeration over made-up trees;
then the module against a real Dovecot: variable expansion compared with the paths
Dovecot itself expands, and for every lab layout the logins Dovecot filled (LMTP, IMAP)
found again, each mapped to the directories where Dovecot put its mail, index and
control files (``doveadm mailbox path``), none missing and none misattributed.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil

import pytest

from asm.errors import EXIT_USAGE, ImsError
from asm.store import layout as L
from asm.store.layout import (
    LayoutError, StoreLayout, expand, from_doveconf, parse_mail_location, parse_userdb_field, parse_userdb_homes,
)
from tests.dovecot_lab import LAYOUTS, LabLayout, dovecot_lab, lab_fixture, message


# -- parsing ------------------------------------------------------------------------------

def test_parse_maildir_defaults():
    loc = parse_mail_location("maildir:/var/vmail/%d/%n/Maildir")
    assert (loc.format, loc.root, loc.layout) == ("maildir", "/var/vmail/%d/%n/Maildir",
                                                  "maildir++")
    assert (loc.index, loc.control, loc.inbox, loc.dirname, loc.mailboxdir) == \
        (None, None, None, "", "")
    assert loc.subscriptions == "subscriptions" and not loc.utf8 and not loc.needs_home()


def test_parse_every_key_it_follows():
    loc = parse_mail_location("maildir:~/Maildir:LAYOUT=fs:INDEX=/idx/%u:CONTROL=/ctl/%u"
                              ":INBOX=/in/%u:DIRNAME=mAildir:MAILBOXDIR=folders"
                              ":SUBSCRIPTIONS=subs:UTF-8:VOLATILEDIR=/tmp/%u:ITERINDEX")
    assert loc.layout == "fs" and loc.index == "/idx/%u" and loc.control == "/ctl/%u"
    assert loc.inbox == "/in/%u" and loc.dirname == "mAildir" and loc.mailboxdir == "folders/"
    assert loc.subscriptions == "subs" and loc.utf8 and loc.needs_home()
    assert parse_mail_location("maildir:/m/%u:INDEX=MEMORY").index == ""
    assert parse_mail_location("maildir:/m/%h/x").needs_home()


def test_parse_colon_escape_and_trailing_colon():
    assert parse_mail_location("maildir:/var/a::b/%u:").root == "/var/a:b/%u"
    assert parse_mail_location("maildir:/m/%u:INDEX=/i::x/%u").index == "/i:x/%u"


def test_parse_dbox_defaults():
    for fmt in ("sdbox", "mdbox"):
        loc = parse_mail_location(f"{fmt}:/srv/%u/{fmt}")
        assert (loc.layout, loc.dirname, loc.mailboxdir) == ("fs", "dbox-Mails", "mailboxes/")
        assert not loc.is_maildir


@pytest.mark.parametrize("text, words", [
    ("", ["empty", "set it explicitly"]),
    ("/var/mail/%u", ["names no mailbox format", "maildir:/var/mail/%u"]),
    ("mbox:~/mail:INBOX=/var/mail/%u", ["mbox format is not supported"]),
    ("imapc:", ["imapc format is not supported"]),
    ("maildir:/m/%u:LAYOUT=index", ["LAYOUT=index is not supported"]),
    ("maildir:/m/%u:FULLDIRNAME=x", ["FULLDIRNAME is not supported"]),
    ("maildir:/m/%u:BROKENCHAR=~", ["BROKENCHAR is not supported"]),
    ("maildir:/m/%u:FOO=1", ["FOO is not supported"]),
    ("maildir:/m/%u:UTF8", ["spells the key UTF-8"]),
    ("maildir:/m/%u:DIRNAME=x", ["DIRNAME needs LAYOUT=fs"]),
    ("maildir:Maildir", ["not an absolute path"]),
    ("maildir:/m/%s/%u", ["%s", "cannot expand"]),
    ("maildir:/m/%{if;%d;ne;;%d;x}/%n", ["%{if;%d;ne;;%d;x}", "cannot expand"]),
    ("maildir:/m/%{md5:user}", ["%{md5:user}"]),
    ("maildir:~vmail/%u", ["~vmail"]),
    ("maildir::INDEX=/x", ["no mail root directory"]),
])
def test_parse_refuses_what_it_cannot_follow(text, words):
    with pytest.raises(LayoutError) as e:
        loc = parse_mail_location(text)
        StoreLayout(loc, "/home/%u").for_login("a")
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    assert isinstance(e.value, ImsError) and e.value.status == EXIT_USAGE


def test_home_template_is_required_when_the_location_uses_it():
    with pytest.raises(LayoutError, match="give the userdb home template"):
        StoreLayout("maildir:~/Maildir")
    with pytest.raises(LayoutError, match="absolute"):
        StoreLayout("maildir:~/Maildir", "home/%u")


# -- expansion --------------------------------------------------------------------------

@pytest.mark.parametrize("template, login, expected", [
    ("%u", "alice@example.com", "alice@example.com"),
    ("%n", "alice@example.com", "alice"),
    ("%d", "alice@example.com", "example.com"),
    ("%d", "alice", ""),
    ("%n", "alice", "alice"),
    ("%n", "a@b@c", "a"),                       # cut at the first '@'
    ("%d", "a@b@c", "b@c"),
    ("%Lu", "Alice@Example.COM", "alice@example.com"),
    ("%Un", "alice", "ALICE"),
    ("%1n", "alice", "a"),
    ("%2u", "alice", "al"),                     # docs: first two characters
    ("%2.1u", "alice", "i"),                    # docs: the third character
    ("%1.1n", "alice", "l"),
    ("%0.-2u", "alice", "ali"),                 # docs: all but the last two
    ("%-2.2n", "alice", "ce"),                  # from the end
    ("%9.2n", "alice", ""),                     # offset past the end
    ("%04n", "x", "000x"),                      # zero width pads, never truncates
    ("%04n", "alice", "alice"),
    ("%Rn", "alice", "ecila"),
    ("%Mn", "alice", "6384e2b2184bcbf58eccf10ca7a6563c"),
    ("%Xn", "255", "ff"),
    ("%Xn", "abc", "0"),
    ("%Dd", "a@mail.example.com", "mail,dc=example,dc=com"),
    ("%{user}/%{username}/%{domain}", "a@b", "a@b/a/b"),
    ("%h/x", "a", "/home/a/x"),
    ("%%n", "alice", "%n"),
    ("/var/%d/%n/Maildir", "bob@ex.org", "/var/ex.org/bob/Maildir"),
])
def test_expand(template, login, expected):
    assert expand(template, login, home="/home/" + login) == expected


def test_hash_modifiers_stay_in_their_range():
    for login in ("alice", "bob@example.com", "x", "12345"):
        n = expand("%256Nu", login)
        assert re.fullmatch(r"[0-9a-f]{1,2}", n)
        assert expand("%2.256Nu", login) == n.rjust(2, "0")
        assert re.fullmatch(r"[0-9a-f]{1,3}", expand("%4096Hu", login))
        assert re.fullmatch(r"[0-9a-f]{1,8}", expand("%Nu", login))


def test_expand_needs_the_home_for_h():
    with pytest.raises(LayoutError, match="no home directory"):
        expand("%h/Maildir", "alice")


# -- one login ----------------------------------------------------------------------------

def test_maildirplusplus_paths_with_index_and_control_elsewhere():
    ul = StoreLayout("maildir:/m/%u:INDEX=/i/%u:CONTROL=/c/%u").for_login("alice")
    assert (ul.root, ul.inbox_dir, ul.index_root, ul.control_root) == \
        ("/m/alice", "/m/alice", "/i/alice", "/c/alice")
    assert ul.folder_dir("INBOX") == "/m/alice" and ul.folder_dir("inbox") == "/m/alice"
    assert ul.folder_dir("Work/2024") == "/m/alice/.Work.2024"
    assert ul.folder_dirname("Work/2024") == ".Work.2024"
    assert ul.index_dir("INBOX") == "/i/alice/.INBOX"
    assert ul.control_dir("INBOX") == "/c/alice/.INBOX"
    assert ul.uidlist_path("Work") == "/c/alice/.Work/dovecot-uidlist"
    assert ul.keywords_path("Work") == "/c/alice/.Work/dovecot-keywords"
    assert ul.subscriptions_path == "/c/alice/subscriptions"
    assert ul.list_index_dir == "/i/alice"
    assert ul.folder_dir("Café") == "/m/alice/.Caf&AOk-"
    with pytest.raises(LayoutError, match="may not contain '.'"):
        ul.folder_dir("a.b")


def test_fs_layout_paths_with_dirname_and_utf8():
    sl = StoreLayout("maildir:~/Maildir:LAYOUT=fs:DIRNAME=mAildir:UTF-8", "/home/%n")
    ul = sl.for_login("bob@example.com")
    assert ul.root == "/home/bob/Maildir"
    assert ul.inbox_dir == "/home/bob/Maildir/INBOX/mAildir"
    assert ul.folder_dir("Work/2024") == "/home/bob/Maildir/Work/2024/mAildir"
    assert ul.folder_dir("Café") == "/home/bob/Maildir/Café/mAildir"
    assert ul.control_dir("Work") == ul.index_dir("Work") == ul.folder_dir("Work")
    assert ul.folder_from_dirname("Work/2024") == "Work/2024"


def test_index_memory_means_no_index_files():
    ul = StoreLayout("maildir:/m/%u:INDEX=MEMORY").for_login("a")
    assert ul.index_dir("INBOX") is None and ul.list_index_dir is None
    assert ul.control_dir("INBOX") == "/m/a"


def test_inbox_elsewhere():
    ul = StoreLayout("maildir:/m/%u:INBOX=/inbox/%u").for_login("a")
    assert ul.folder_dir("INBOX") == ul.index_dir("INBOX") == "/inbox/a"
    assert ul.folder_dir("Sent") == "/m/a/.Sent"


def test_folders_listed_from_directories(tmp_path):
    root = tmp_path / "a" / "Maildir"
    for d in ("cur", ".Sent/cur", ".Work.2024/cur", ".Caf&AOk-/cur", "..DOVECOT-TRASHED/cur",
              "tmp"):
        (root / d).mkdir(parents=True)
    ul = StoreLayout(f"maildir:{tmp_path}/%u/Maildir").for_login("a")
    assert ul.folders() == ["Café", "INBOX", "Sent", "Work/2024"]
    fs = tmp_path / "b" / "Maildir"
    for d in ("cur", "Sent/cur", "Work/2024/cur", "Work/2024/new", ".hidden/cur"):
        (fs / d).mkdir(parents=True)
    ul = StoreLayout(f"maildir:{tmp_path}/%u/Maildir:LAYOUT=fs").for_login("b")
    # Work: no cur, \Noselect; '.hidden' is a folder name Dovecot allows in fs
    assert ul.folders() == [".hidden", "INBOX", "Sent", "Work/2024"]


# -- enumeration over made-up trees ---------------------------------------------------------

def _maildir(path):
    os.makedirs(os.path.join(path, "cur"), exist_ok=True)


def test_two_domains_with_the_same_local_part_stay_apart(tmp_path):
    for d in ("example.com/alice", "example.com/bob", "other.org/alice"):
        _maildir(tmp_path / d / "Maildir")
    (tmp_path / "example.com" / "carol").mkdir()             # a home without mail
    (tmp_path / "lost+found").mkdir()
    sl = StoreLayout(f"maildir:{tmp_path}/%d/%n/Maildir")
    found, skipped = sl.logins(with_skipped=True)
    assert list(found) == ["alice@example.com", "alice@other.org", "bob@example.com"]
    assert found["alice@other.org"].root == f"{tmp_path}/other.org/alice/Maildir"
    assert not skipped                 # no Maildir below carol or lost+found: no candidate


def test_hashed_levels_are_checked_not_trusted(tmp_path):
    for d in ("a/l/alice", "a/l/albert", "b/o/bob", "b/o/alice", "x/y/z/w"):
        _maildir(tmp_path / d / "Maildir")
    sl = StoreLayout(f"maildir:{tmp_path}/%1n/%1.1n/%n/Maildir")
    found, skipped = sl.logins(with_skipped=True)
    assert list(found) == ["albert", "alice", "bob"]
    assert found["alice"].root == f"{tmp_path}/a/l/alice/Maildir"
    # x/y/z/w: a login 'z/w' ('/' spans a level) would live elsewhere: mail of nobody,
    # named (it used to match nothing and be passed over in silence)
    assert [(s.path, s.reason) for s in skipped] == [
        (f"{tmp_path}/b/o/alice/Maildir", f"alice would live in {tmp_path}/a/l/alice/Maildir"),
        (f"{tmp_path}/x/y/z/w/Maildir", f"z/w would live in {tmp_path}/z///z/w/Maildir")]


def test_hash_buckets_are_checked(tmp_path):
    sl = StoreLayout(f"maildir:{tmp_path}/%2.256Nu/%u")
    for login in ("alice@example.com", "alice@other.org"):
        _maildir(sl.for_login(login).root)
    _maildir(tmp_path / "00" / "bob@example.com")
    found, skipped = sl.logins(with_skipped=True)
    assert list(found) == ["alice@example.com", "alice@other.org"]
    assert len(skipped) == 1 and skipped[0].path.endswith("/00/bob@example.com")


def test_a_directory_without_mail_is_no_login(tmp_path):
    _maildir(tmp_path / "alice")
    (tmp_path / "stray").mkdir()
    (tmp_path / "ghost" / ".Sent" / "cur").mkdir(parents=True)     # folders only: a login
    sl = StoreLayout(f"maildir:{tmp_path}/%u:INDEX={tmp_path}-idx/%u")
    found, skipped = sl.logins(with_skipped=True)
    assert list(found) == ["alice", "ghost"]
    assert [(os.path.basename(s.path), s.reason) for s in skipped] == [("stray", "no mailbox in it")]


def test_home_template_logins(tmp_path):
    for d in ("example.com/alice", "other.org/alice"):
        _maildir(tmp_path / d / "Maildir")
    sl = StoreLayout("maildir:~/Maildir:LAYOUT=fs", f"{tmp_path}/%d/%n")
    assert list(sl.logins()) == ["alice@example.com", "alice@other.org"]
    sl = StoreLayout("maildir:%h/Maildir", f"{tmp_path}/%d/%n")
    assert list(sl.logins()) == ["alice@example.com", "alice@other.org"]


def test_dbox_logins(tmp_path):
    (tmp_path / "alice" / "mdbox" / "mailboxes" / "INBOX" / "dbox-Mails").mkdir(parents=True)
    (tmp_path / "bob" / "mdbox").mkdir(parents=True)
    sl = StoreLayout(f"mdbox:{tmp_path}/%u/mdbox")
    assert list(sl.logins()) == ["alice"]


def test_a_template_without_the_login_cannot_be_listed(tmp_path):
    with pytest.raises(LayoutError, match="no path level holds the login"):
        StoreLayout(f"maildir:{tmp_path}/%2.256Nu/Maildir").logins()
    with pytest.raises(LayoutError, match="no path level holds the login"):
        StoreLayout(f"maildir:{tmp_path}/shared").logins()


def test_userdb_homes_from_doveconf_output():
    text = """userdb {
  args = username_format=%u /etc/dovecot/hold.%s
  driver = passwd-file
  name =
}
userdb {
  args = uid=vmail gid=vmail home=/var/vmail/%d/%n
  driver = static
}
userdb {
  args = /etc/dovecot/users
  default_fields = uid=vmail home=/srv/%u
  driver = passwd-file
  override_fields = home=/forced/%n
}
"""
    assert parse_userdb_homes(text) == ["/var/vmail/%d/%n", "/forced/%n"]
    assert parse_userdb_field(text, "mail") == []
    text = text.replace("home=/var/vmail/%d/%n", "home=/var/vmail/%d/%n mail=maildir:~/Mail2")
    assert parse_userdb_field(text, "mail") == ["maildir:~/Mail2"]


def _userdb(driver: str, args: str = "", default: str = "", override: str = "") -> str:
    """One ``userdb { }`` section as ``doveconf userdb`` prints it."""
    return (f"userdb {{\n  args = {args}\n  default_fields = {default}\n  driver = {driver}\n"
            f"  override_fields = {override}\n  result_success = return-ok\n}}\n")


def test_userdb_from_files_reads_passwd_files_as_dovecots_auth_does(tmp_path):
    """With Dovecot stopped, the logins a listing would give and the home and mail a
    lookup would return, from the passwd-files themselves: only userdb_ extra fields
    (the rest of the line after the 7th ':', colons and all), the home field, default
    fields under them, override fields over them; comments, passdb-only lines and
    uid 0 are no login; the first userdb that knows a login answers for it (a static
    one knows everybody)."""
    users = tmp_path / "users"
    users.write_text(
        "# a comment:x:1:1::/nowhere::userdb_mail=maildir:/no\n"
        "alice:{PLAIN}pw::::::\n"
        "bob:{PLAIN}pw:1000:1000::/srv/bob::userdb_mail=maildir:~/Mail:INDEX=/idx/%u mail=passdb-only\n"
        "passonly:{PLAIN}pw\n"
        "root:x:0:0::/root::\n"
        "carol:x:::::: userdb_home=/else/%n nice=10\n")
    text = _userdb("passwd-file", f"username_format=%u {users}", default="uid=vmail home=/m/%u")
    got, why = L.userdb_from_files(text)
    assert why == ""
    assert got == {"alice": {"uid": "vmail", "home": "/m/alice"},
                   # (the line's uid and gid columns over default_fields, as Dovecot returns them)
                   "bob": {"uid": "1000", "gid": "1000", "home": "/srv/bob", "mail": "maildir:~/Mail:INDEX=/idx/bob"},
                   "carol": {"uid": "vmail", "home": "/else/carol"}}
    over = _userdb("passwd-file", str(users), override="home=/forced/%u")
    got, _ = L.userdb_from_files(over)
    assert {u: f["home"] for u, f in got.items()} == {u: f"/forced/{u}" for u in ("alice", "bob", "carol")}
    # a static userdb first answers every lookup; one after only for logins no file has
    static = _userdb("static", "uid=vmail home=/st/%u mail=maildir:/st/%u/M")
    got, _ = L.userdb_from_files(static + text)
    assert got["bob"] == {"uid": "vmail", "home": "/st/bob", "mail": "maildir:/st/bob/M"}
    got, _ = L.userdb_from_files(text + static)
    assert got["bob"]["home"] == "/srv/bob" and set(got) == {"alice", "bob", "carol"}
    # a passwd-file with a %variable path lists nobody, as in Dovecot
    assert L.userdb_from_files(_userdb("passwd-file", "/etc/%d/passwd") + text)[0].keys() == got.keys()


def test_userdb_from_files_says_what_it_cannot_read(tmp_path):
    got, why = L.userdb_from_files(_userdb("sql", "/etc/dovecot/sql.conf"))
    assert got is None and "sql userdb can only be asked through Dovecot" in why
    got, why = L.userdb_from_files(_userdb("passwd-file", str(tmp_path / "missing")))
    assert got is None and f"cannot read the userdb passwd-file {tmp_path}/missing" in why


def test_from_doveconf_takes_the_userdbs_mail_or_refuses_two(tmp_path):
    """A userdb's mail= for every login (static args, default_fields) replaces
    mail_location, as in Dovecot; two userdbs with different mail= are refused."""
    doveconf = "/usr/bin/doveconf"
    if not os.path.exists(doveconf):
        from tests.dovecot_lab import require_lab
        require_lab()
    conf = tmp_path / "dovecot.conf"
    static = "userdb {\n  driver = static\n  args = home=/m/%u mail=maildir:/m/%u/Mail2\n}\n"
    conf.write_text("mail_location = maildir:/m/%u/Maildir\n" + static)
    assert from_doveconf(str(conf), doveconf=doveconf).location.text == "maildir:/m/%u/Mail2"
    conf.write_text("mail_location = maildir:/m/%u/Maildir\n"
                    "userdb {\n  driver = passwd-file\n  args = /nonexistent\n"
                    "  default_fields = mail=maildir:/m/%u/Mail3\n}\n" + static)
    with pytest.raises(LayoutError, match="different mail locations.*Mail3.*Mail2.*store.mail_location"):
        from_doveconf(str(conf), doveconf=doveconf)


def test_from_doveconf_home_from_mail_home_or_refused(tmp_path):
    doveconf = "/usr/bin/doveconf"
    if not os.path.exists(doveconf):
        from tests.dovecot_lab import require_lab
        require_lab()
    conf = tmp_path / "dovecot.conf"
    base = ("mail_location = maildir:~/Maildir\n"
            "userdb {\n  driver = passwd-file\n  args = /nonexistent\n}\n")
    conf.write_text(base)
    with pytest.raises(LayoutError, match="no userdb .* sets home=.*mail_home is empty"):
        from_doveconf(str(conf), doveconf=doveconf)
    conf.write_text(base + "mail_home = /srv/%d/%n\n")
    sl = from_doveconf(str(conf), doveconf=doveconf)
    assert sl.home_template == "/srv/%d/%n"
    assert sl.for_login("a@b.org").root == "/srv/b.org/a/Maildir"
    conf.write_text("mail_location = maildir:~/Maildir:FOO=1\n")
    with pytest.raises(LayoutError, match="FOO is not supported"):
        from_doveconf(str(conf), doveconf=doveconf)
    with pytest.raises(LayoutError, match="doveconf"):
        from_doveconf(str(tmp_path / "missing.conf"), doveconf=doveconf)


def test_from_doveconf_reads_namespaces(tmp_path):
    """The inbox namespace's own location wins over mail_location (as in Dovecot); a
    namespace keeping mail elsewhere is refused by name; shared and disabled ones, and
    namespaces at mail_location (mailbox { } subsections and all), are fine."""
    doveconf = "/usr/bin/doveconf"
    if not os.path.exists(doveconf):
        from tests.dovecot_lab import require_lab
        require_lab()
    conf = tmp_path / "dovecot.conf"
    base = ("mail_location = maildir:/m/%u/Maildir\n"
            "namespace inbox {\n  inbox = yes\n  separator = /\n"
            "  mailbox Sent {\n    special_use = \\Sent\n    auto = subscribe\n  }\n}\n"
            "namespace shared {\n  type = shared\n  prefix = shared/%%u/\n  separator = /\n"
            "  location = maildir:%%h/Maildir:INDEX=~/Maildir/shared/%%u\n}\n"
            "namespace old {\n  disabled = yes\n  prefix = Old/\n  location = maildir:/old/%u\n}\n"
            "namespace same {\n  prefix = Same/\n  separator = /\n}\n")
    conf.write_text(base)
    assert from_doveconf(str(conf), doveconf=doveconf).location.text == "maildir:/m/%u/Maildir"
    conf.write_text(base.replace("  inbox = yes\n", "  inbox = yes\n  location = maildir:/m/%u/Mail2\n"))
    with pytest.raises(LayoutError, match=r"namespace same \(private, prefix 'Same/'\) keeps its mail "
                                          r"at 'maildir:/m/%u/Maildir'.*store.mail_location"):
        from_doveconf(str(conf), doveconf=doveconf)
    conf.write_text(base.replace("  inbox = yes\n", "  inbox = yes\n  location = maildir:/m/%u/Mail2\n")
                    .replace("namespace same {\n", "namespace same {\n  location = maildir:/m/%u/Mail2\n"))
    assert from_doveconf(str(conf), doveconf=doveconf).location.text == "maildir:/m/%u/Mail2"
    # mail_location left empty, the location written in the inbox namespace only
    conf.write_text("namespace inbox {\n  inbox = yes\n  location = maildir:/m/%u/Mail3\n}\n")
    assert from_doveconf(str(conf), doveconf=doveconf).location.text == "maildir:/m/%u/Mail3"
    conf.write_text("namespace inbox {\n  inbox = yes\n  location = maildir:/m/%u/Mail3\n}\n"
                    "namespace b {\n  prefix = B/\n}\n")
    with pytest.raises(LayoutError, match=r"namespace b .* where Dovecot guesses"):
        from_doveconf(str(conf), doveconf=doveconf)
    conf.write_text(base + "namespace public {\n  type = public\n  prefix = Public/\n"
                           "  location = maildir:/m/public\n}\n")
    with pytest.raises(LayoutError, match="namespace public \\(public"):
        from_doveconf(str(conf), doveconf=doveconf)


def test_a_virtual_namespace_holds_no_mail_of_its_own():
    """virtual: namespaces are views of folders backed up: never refused as mail elsewhere."""
    ns = [L.Namespace("inbox", inbox=True, separator="/"),
          L.Namespace("virtual", prefix="Virtual/", location="virtual:/m/%u/virtual")]
    assert L.namespace_location("maildir:/m/%u/Maildir", ns) == "maildir:/m/%u/Maildir"
    with pytest.raises(LayoutError, match="namespace other"):
        L.namespace_location("maildir:/m/%u/Maildir", ns + [L.Namespace("other", prefix="O/",
                                                                        location="maildir:/o/%u")])


def test_dsync_namespace_options_name_folders_without_prefix_and_with_slash(tmp_path):
    """What the dbox driver gives every doveadm (-o) so that the account and its Maildir
    copy name folders alike: the inbox namespace's prefix emptied and separator '/',
    nothing when it already is so, nothing when another namespace has the empty prefix
    (two would clash)."""
    doveconf = "/usr/bin/doveconf"
    if not os.path.exists(doveconf):
        from tests.dovecot_lab import require_lab
        require_lab()
    conf = tmp_path / "dovecot.conf"

    def options(text):
        conf.write_text("mail_location = sdbox:/m/%u/sdbox\n" + text)
        return L.dsync_namespace_options(L.doveconf_namespaces(str(conf), doveconf=doveconf))
    assert options("namespace inbox {\n  inbox = yes\n  separator = /\n}\n") == []
    courier = ["namespace/priv/prefix=", "namespace/priv/separator=/"]
    assert options("namespace priv {\n  inbox = yes\n  separator = .\n  prefix = INBOX.\n}\n") == courier
    assert options("namespace priv {\n  inbox = yes\n}\n") == courier          # no separator set
    assert options("namespace priv {\n  inbox = yes\n  separator = .\n  prefix = INBOX.\n}\n"
                   "namespace compat {\n  separator = .\n  hidden = yes\n  list = no\n"
                   "  alias_for = INBOX.\n}\n") == []
    assert options("namespace priv {\n  inbox = yes\n  separator = .\n  prefix = INBOX.\n}\n"
                   "namespace compat {\n  disabled = yes\n}\n") == courier


def test_from_doveconf_explains_a_missing_doveconf():
    with pytest.raises(LayoutError, match="not installed"):
        from_doveconf("/nonexistent.conf", doveconf="/nonexistent/doveconf")


# -- against a real Dovecot -------------------------------------------------------------

EXPAND_TEMPLATES = [
    "%u", "%n", "%d", "%Lu", "%Un", "%1n", "%2n", "%1.1n", "%2.1n", "%-2.2n", "%0.-2u",
    "%256Nu", "%2.256Nu", "%4.256Nn", "%Nu", "%Hu", "%256Hu", "%3RHu", "%Mu", "%8Mu", "%Rn",
    "%{user}", "%{username}", "%{domain}", "%h", "%04n", "%1.04n", "%Xn", "%Dd", "%Tn",
    "%%n", "%L{user}", "%2.2Lu", "%-5n", "%10n", "%1.Nu", "%0Nu", "%3.-1n", "%-3.2n",
    "%99.2n", "%.3n",
]
EXPAND_LOGINS = ("alice", "bob.smith@other.org", "x", "12345", "a-b_c.d@sub.ex-ample.org")


def test_expansion_matches_dovecot():
    """Every template expanded by Dovecot (one mail_location holding all of them,
    doveadm mailbox path per login) and by layout.expand: identical, byte for byte."""
    lay = LabLayout("expand", "maildir:{store}/" + "|".join(EXPAND_TEMPLATES) + "|end",
                    "{home}/%u", EXPAND_LOGINS)
    with dovecot_lab(lay) as lab:
        for login in EXPAND_LOGINS:
            got = lab.mailbox_path(login, "INBOX")[len(lab.store) + 1:].split("|")
            assert got[-1] == "end" and len(got) == len(EXPAND_TEMPLATES) + 1
            home = f"{lab.homes}/{login}"
            for template, dovecot_says in zip(EXPAND_TEMPLATES, got):
                assert expand(template, login, home) == dovecot_says, (template, login)


layout_lab = lab_fixture(params=list(LAYOUTS))
FOLDERS = ("INBOX", "Archive", "Archive/2024", "Sent")


def _owner_headers(top: str) -> set[str]:
    """X-Owner values in every file under ``top`` (gzip files read uncompressed)."""
    out = set()
    for r, _, fs in os.walk(top):
        for f in fs:
            with open(os.path.join(r, f), "rb") as fh:
                data = fh.read()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            out |= {m.decode() for m in re.findall(rb"X-Owner: (\S+)", data)}
    return out


def test_layout_finds_every_login_where_dovecot_put_its_mail(layout_lab):
    lab = layout_lab
    folders = FOLDERS + ((".hidden", "a.b") if lab.layout.name == "fs" else ())
    for login in lab.logins:
        lab.deliver([login], message(f"own {login}", extra_headers=f"X-Owner: {login}\r\n"))
        with lab.imap(login) as c:
            for f in folders[1:]:
                c.create(f)
            c.subscribe("Sent")
            c.append("Archive/2024", message(f"kw {login}"), ["Project"])
    lab.deliver(lab.logins, message("for everyone"))
    # things a walker must not take for a login
    stray = os.path.join(lab.store, "lost+found")
    os.makedirs(stray)
    first = lab.logins[0]
    misplaced = None
    if lab.layout.name in ("hashed", "nhash"):
        # a copy of the first login's mail under another login's hash level
        other = lab.mailbox_path(lab.logins[-1], "INBOX")
        src = lab.mailbox_path(first, "INBOX")
        misplaced = other.replace(lab.logins[-1], first)
        shutil.copytree(src, misplaced)

    sl = from_doveconf(lab.conf, doveconf="/usr/bin/doveconf")
    assert sl.location.text == lab.doveconf("mail_location") == lab.mail_location
    if sl.location.needs_home():
        assert sl.home_template == lab.home_template
    found, skipped = sl.logins(with_skipped=True)
    assert sorted(found) == sorted(lab.logins), skipped
    # skipped: only the misplaced copy (it re-expands elsewhere) and the stray directory
    assert {s.path for s in skipped} <= {misplaced, stray}, skipped
    if misplaced:
        assert misplaced in {s.path for s in skipped}
    for login, ul in found.items():
        for f in folders:
            assert ul.folder_dir(f) == lab.mailbox_path(login, f, "mailbox"), (login, f)
            assert ul.index_dir(f) == lab.mailbox_path(login, f, "index"), (login, f)
            assert ul.control_dir(f) == lab.mailbox_path(login, f, "control"), (login, f)
        assert set(ul.folders()) == set(lab.client_state(login).folders)
        assert os.path.isfile(ul.subscriptions_path)
        with open(ul.subscriptions_path) as fh:
            assert "Sent" in fh.read()
        assert os.path.isfile(os.path.join(ul.list_index_dir, "dovecot.list.index.log"))
        if ul.location.is_maildir:
            for f in FOLDERS:
                assert os.path.isfile(ul.uidlist_path(f)), (login, f)
            assert os.path.isfile(ul.keywords_path("Archive/2024"))
        # this login's own message is under its root, and no other login's message is
        assert _owner_headers(ul.root) == {login}, (login, ul.root)


def test_from_doveconf_reads_the_userdb_home_of_each_driver(layout_lab):
    lab = layout_lab
    sl = from_doveconf(lab.conf, doveconf="/usr/bin/doveconf")
    if lab.layout.name in ("home", "fs"):
        # home: passwd-file default_fields; fs: static args
        assert sl.home_template == lab.home_template
        assert sl.for_login(lab.logins[0]).root == lab.mailbox_path(lab.logins[0], "INBOX")
    else:
        assert sl.home_template is None
    assert L.parse_mail_location(lab.doveconf("mail_location")) == sl.location


def test_misplaced_names_logins_whose_userdb_fields_lead_out_of_the_template(tmp_path):
    """StoreLayout.misplaced: a login whose userdb mail= or home= puts a mailbox outside
    the template is named with its real mail root; fields that lead to the template's
    own directories, or to no mailbox, are not."""
    def maildir(path):
        for d in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(path, d), exist_ok=True)
    store, other = tmp_path / "store", tmp_path / "other"
    for u in ("alice", "bob"):
        maildir(f"{store}/{u}/Maildir")
    maildir(f"{other}/carol/Maildir")
    sl = StoreLayout(f"maildir:{store}/%u/Maildir")
    got = sl.misplaced({
        "alice": {"uid": "1001", "home": f"{tmp_path}/homes/alice"},      # home unused
        "bob": {"mail": f"maildir:{store}/bob/Maildir"},                 # the template's own
        "carol": {"mail": f"maildir:{other}/carol/Maildir"},
        "dave": {"mail": f"maildir:{other}/dave/Maildir"},               # no mailbox yet
        "erin": {"mail": f"mbox:{other}/erin"},
    })
    assert [(m.login, m.path) for m in got] == [("carol", f"{other}/carol/Maildir"),
                                                ("erin", f"mbox:{other}/erin")]
    assert "maildir:" in got[0].reason and "mbox format is not supported" in got[1].reason
    # what a restore must know: dave's mail goes to his own location, empty or not
    assert [m.login for m in sl.misplaced({"bob": {}, "dave": {"mail": f"maildir:{other}/dave/Maildir"}},
                                          everyone=True)] == ["dave"]
    homes = StoreLayout("maildir:~/Maildir", f"{tmp_path}/home/%n")
    maildir(f"{tmp_path}/home/alice/Maildir")
    got = homes.misplaced({"alice": {"home": f"{tmp_path}/home/alice"},
                           "carol": {"home": f"{other}/carol"}})
    assert [(m.login, m.path) for m in got] == [("carol", f"{other}/carol/Maildir")]
    assert f"the home {other}/carol" in got[0].reason


def test_userdb_users_asks_the_auth_userdb_socket(tmp_path):
    """userdb_users: LIST then pipelined USER lookups on Dovecot's auth-userdb socket;
    None when nothing answers there."""
    assert L.userdb_users(str(tmp_path / "no-socket")) is None
    with dovecot_lab("home") as lab:
        lab.add_user("carol", home=f"{lab.dir}/elsewhere/carol")
        sl = L.from_doveconf(lab.conf)
        users, complete = L.userdb_users(sl.userdb_socket)
        # every global userdb lists its users (the hold file is LMTP's own, not listed)
        assert complete
        assert sorted(users) == ["alice", "bob", "carol"]
        assert users["carol"]["home"] == f"{lab.dir}/elsewhere/carol"
        assert users["alice"]["home"] == f"{lab.homes}/alice"
