"""A private Dovecot 2.3 (IMAP + LMTP) in the mail_location layouts real sites use.

Unlike tests/dovecot.py (one fixed layout, filled by writing files), a lab is filled
by Dovecot itself -- LMTP deliveries and IMAP APPEND/COPY/MOVE/RENAME/... -- and read
back "as a client sees it" over IMAP only (:meth:`Lab.client_state`).  Each lab runs on
127.0.0.1 on free ports with a self-contained configuration (nothing from
/etc/dovecot), its own base_dir and state_dir, serves mail as the unprivileged user
``vmail`` and is stopped by its PID.

Layouts (``LAYOUTS``; ``{store}`` is the mail store, ``{home}`` the homes' parent,
``{idx}``/``{ctl}`` separate index and control trees):

=========  ==========================================================  ===============
name       mail_location                                               logins
=========  ==========================================================  ===============
plain      maildir:{store}/%u/Maildir                                  alice bob carol
login      maildir:{store}/%u/Maildir                                  alice@example.com ...
vdomain    maildir:{store}/%d/%n/Maildir  (home {store}/%d/%n)         alice@example.com,
                                                                       alice@other.org ...
hashed     maildir:{store}/%1n/%1.1n/%n/Maildir                        alice albert bob
nhash      maildir:{store}/%2.256Nu/%u                                 alice@example.com ...
home       maildir:~/Maildir  (home {home}/%n, passwd-file userdb)     alice bob carol
fs         maildir:~/Maildir:LAYOUT=fs  (home {store}/%u)              alice bob carol
idxctl     maildir:{store}/%u:INDEX={idx}/%u:CONTROL={ctl}/%u           alice bob carol
zlib       maildir:{store}/%u/Maildir + zlib plugin, zlib_save = gz    alice bob carol
sdbox      sdbox:{store}/%u/sdbox                                      alice bob carol
mdbox      mdbox:{store}/%u/mdbox                                      alice bob carol
=========  ==========================================================  ===============

``ACL_LAYOUTS`` (not in LAYOUTS): ``acl``, ``aclctl`` and ``aclsdbox``, plain's, idxctl's
and sdbox's locations with the acl plugin (``acl = vfile``, ``anyone`` allowed), ``imap_acl``, a shared
namespace ``shared/<owner>/`` and its shared-mailboxes dictionary ``Lab.dict``.

A :class:`Lab` offers ``deliver(rcpts, msg)`` (one LMTP transaction, per-recipient
replies), ``imap(login)`` (a :class:`LabImap`: create/delete/rename/subscribe, append
with flags and INTERNALDATE, UID COPY/MOVE/STORE/EXPUNGE, select with
UIDVALIDITY/UIDNEXT), ``client_state(login)`` (what the client sees, over IMAP only),
``pop3_uidls(login)`` (the UIDL list a POP3 client gets, for a lab made with
``pop3_uidl_format=``), ``doveadm(...)`` as the mail user with ``-c CONF``, ``doveconf(name)``,
``mailbox_path(login, folder, kind)`` (Dovecot's own answer), ``hold(login)`` /
``release(login)`` (LMTP answers 451 for that login; docs/dovecot.md),
``add_user(login, mail=..., home=...)`` (e.g. a second login over a doveadm backup
copy) and ``restart()``.

Use it as a context manager or as a pytest fixture::

    from tests.dovecot_lab import dovecot_lab, lab_fixture

    with dovecot_lab("vdomain") as lab:
        lab.deliver(lab.logins, b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        state = lab.client_state("alice@example.com")

    lab = lab_fixture(params=["plain", "vdomain"])     # module-scoped, parametrized
    vdomain_lab = lab_fixture("vdomain", scope="function")

Without Dovecot (or its LMTP server) the fixture skips, but fails under ``CI=true``.
A lab lives in /tmp/ims-lab-* (the mail user must reach it) and is removed after its
last test; set IMS_KEEP_LAB=1 to keep fixture labs for a look at the files.
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import imaplib
import os
import poplib
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from typing import Iterable, Iterator

import pytest

DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
DOVECONF = "/usr/bin/doveconf"
LMTP_BINARY = "/usr/lib/dovecot/lmtp"
POP3_BINARY = "/usr/lib/dovecot/pop3"
MAIL_USER = "vmail"
CI = os.environ.get("CI") == "true"


# -- layouts ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LabLayout:
    """One Dovecot configuration shape: where mail lives and who logs in."""

    name: str
    mail_location: str               # with {store} {home} {idx} {ctl} placeholders
    home: str                        # userdb home template, same placeholders
    logins: tuple[str, ...]
    userdb: str = "static"           # "static" (args home=) or "passwd-file" (default_fields)
    mail_plugins: str = ""
    plugin: tuple[tuple[str, str], ...] = ()
    extra: str = ""                  # more top-level configuration ({store} etc. filled)
    inbox_namespace: str = ""        # more lines in the inbox namespace ({store} etc. filled)

    @property
    def format(self) -> str:
        return self.mail_location.split(":", 1)[0]

    @property
    def maildir(self) -> bool:
        return self.format == "maildir"


PLAIN = ("alice", "bob", "carol")
LAYOUTS: dict[str, LabLayout] = {lay.name: lay for lay in [
    LabLayout("plain", "maildir:{store}/%u/Maildir", "{store}/%u", PLAIN),
    LabLayout("login", "maildir:{store}/%u/Maildir", "{store}/%u",
              ("alice@example.com", "bob@example.com", "carol@other.org")),
    LabLayout("vdomain", "maildir:{store}/%d/%n/Maildir", "{store}/%d/%n",
              ("alice@example.com", "bob@example.com", "alice@other.org")),
    LabLayout("hashed", "maildir:{store}/%1n/%1.1n/%n/Maildir", "{store}/%1n/%1.1n/%n",
              ("alice", "albert", "bob")),
    LabLayout("nhash", "maildir:{store}/%2.256Nu/%u", "{home}/%u",
              ("alice@example.com", "bob@example.com", "alice@other.org")),
    LabLayout("home", "maildir:~/Maildir", "{home}/%n", PLAIN, userdb="passwd-file"),
    LabLayout("fs", "maildir:~/Maildir:LAYOUT=fs", "{store}/%u", PLAIN),
    LabLayout("idxctl", "maildir:{store}/%u:INDEX={idx}/%u:CONTROL={ctl}/%u",
              "{home}/%u", PLAIN),
    LabLayout("zlib", "maildir:{store}/%u/Maildir", "{store}/%u", PLAIN,
              mail_plugins="zlib", plugin=(("zlib_save", "gz"),)),
    LabLayout("sdbox", "sdbox:{store}/%u/sdbox", "{store}/%u", PLAIN),
    LabLayout("mdbox", "mdbox:{store}/%u/mdbox", "{store}/%u", PLAIN),
]}
MAILDIR_LAYOUTS = [n for n, lay in LAYOUTS.items() if lay.maildir]

# The acl plugin with per-folder vfile ACLs (IMAP SETACL, doveadm acl set; "anyone"
# allowed) and a shared namespace "shared/<owner>/" listed through a shared-mailboxes
# dictionary, over the plain and idxctl locations (tests/test_dovecot_acl.py).  Not in
# LAYOUTS: the layout-wide tests do not run them.
_ACL_EXTRA = """\
protocol imap {
  mail_plugins = $mail_plugins imap_acl
}
plugin {
  acl = vfile
  acl_anyone = allow
  acl_shared_dict = file:{dict}
}
namespace shared {
  type = shared
  separator = /
  prefix = shared/%%u/
  location = SHARED:INDEX={home}/%u/shared/%%u
  subscriptions = no
  list = children
}
"""
ACL_LAYOUTS: dict[str, LabLayout] = {lay.name: lay for lay in [
    LabLayout("acl", "maildir:{store}/%u/Maildir", "{store}/%u", PLAIN, mail_plugins="acl",
              extra=_ACL_EXTRA.replace("SHARED", "maildir:{store}/%%u/Maildir")),
    LabLayout("aclctl", "maildir:{store}/%u:INDEX={idx}/%u:CONTROL={ctl}/%u", "{home}/%u", PLAIN,
              mail_plugins="acl",
              extra=_ACL_EXTRA.replace("SHARED", "maildir:{store}/%%u:CONTROL={ctl}/%%u")),
    LabLayout("aclsdbox", "sdbox:{store}/%u/sdbox", "{store}/%u", PLAIN, mail_plugins="acl",
              extra=_ACL_EXTRA.replace("SHARED", "sdbox:{store}/%%u/sdbox")),
]}

CONF = """\
# private test Dovecot ({layout}); nothing from /etc/dovecot
protocols = imap lmtp
listen = 127.0.0.1
base_dir = {run}
state_dir = {d}/state
instance_name = lab-{port}
log_path = {d}/dovecot.log
hostname = lab.example
postmaster_address = postmaster@lab.example
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = {mail_location}
mail_uid = {user}
mail_gid = {user}
first_valid_uid = 1
mail_plugins = $mail_plugins {mail_plugins}
maildir_copy_with_hardlinks = yes
lda_mailbox_autocreate = yes
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
{userdb}
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lport}
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
# doveadm runs as the mail user: let it reach the stats and userdb sockets
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
service auth {{
  unix_listener auth-userdb {{
    mode = 0666
  }}
}}
plugin {{
{plugin}
}}
{extra}
"""

# LMTP's first userdb, as docs/dovecot.md ("Holding deliveries") configures it: a
# passwd-file in "protocol lmtp".  Logins listed in hold.lmtp get the userdb field
# "tempfail", so LMTP answers 451 4.3.0 for them (the MTA queues and retries); IMAP,
# doveadm and the userdb listing (LIST on auth-userdb, doveadm user '*') use the global
# userdbs only, so they neither see the hold nor try to list its file.  (The hold was
# once a global passwd-file at hold.%s: every listing logged "Error: ... User iteration
# isn't currently supported with %variable paths".)  See Lab.hold().
USERDB_HOLD = """\
protocol lmtp {{
  userdb {{
    driver = passwd-file
    args = username_format=%u {d}/hold.lmtp
  }}
}}
"""

# Second userdb: per-login overrides (e.g. a second login whose mail= points at a copy
# made by doveadm backup, so a test can compare both over IMAP).  See Lab.add_user().
USERDB_OVERRIDE = """\
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/userdb.override
  default_fields = uid={user} gid={user}
}}
"""

USERDB_STATIC = """\
userdb {{
  driver = static
  args = uid={user} gid={user} home={home}
}}"""

USERDB_PASSWD_FILE = """\
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/users
  default_fields = uid={user} gid={user} home={home}
}}"""


# -- environment ----------------------------------------------------------------------

POP3_LISTENER = """\
pop3_uidl_format = {uidl_format}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}"""


def lab_missing(pop3: bool = False) -> str | None:
    """Why a lab cannot run here, or None when it can (``pop3``: with Dovecot's POP3
    server too)."""
    need = [(DOVECOT, "dovecot-imapd"), (LMTP_BINARY, "dovecot-lmtpd"), (DOVEADM, "dovecot-core")]
    if pop3:
        need.append((POP3_BINARY, "dovecot-pop3d"))
    for path, pkg in need:
        if not os.path.exists(path):
            return f"{path} is not installed (scripts/install-servers installs {pkg})"
    if os.geteuid() != 0:
        return "the Dovecot lab needs root (it runs mail as the vmail user)"
    return None


def require_lab(pop3: bool = False) -> None:
    """Skip the calling test without Dovecot; fail instead under CI=true."""
    why = lab_missing(pop3)
    if why:
        if CI:
            pytest.fail(f"Dovecot is required in CI: {why}")
        pytest.skip(why)


def ensure_mail_user(name: str = MAIL_USER) -> tuple[int, int]:
    from tests.helpers import system_users_lock
    with system_users_lock():
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "-U", name],
                           check=True, capture_output=True)
            pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (tests/helpers.py; a Dovecot given one port for two
    listeners, as one by one the kernel may hand out, refused its configuration,
    "duplicate listener")."""
    from tests.helpers import free_ports as ports
    return ports(n)


#: (pidfd, directory to remove) of Dovecot masters still ending, awaited at exit.  A pidfd,
#: not a pid: the suite starts more processes than pid_max (32768 here), so a pid kept
#: until exit can name another process by then, which a pid-based wait would SIGKILL.
_STOPPING: list[tuple[int | None, str | None]] = []


def _pidfd(pid: int) -> int | None:
    """A pidfd for the living process ``pid`` (None once it is gone)."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def _wait_gone_fd(fd: int | None, timeout: float = 15) -> None:
    """Until the process of pidfd ``fd`` has ended (SIGKILLed after ``timeout``); closes
    ``fd``."""
    if fd is None:
        return
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        if not p.poll(timeout * 1000):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        os.close(fd)


def _wait_gone(pid: int, timeout: float = 15) -> None:
    _wait_gone_fd(_pidfd(pid), timeout)


def _children(pid: int) -> dict[int, str]:
    """{pid: name} of ``pid``'s living child processes (zombies left out)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if int(rest[1]) == pid and rest[0] != "Z":
            out[int(name)] = comm
    return out


def _wait_sessions_gone(pid: int, timeout: float = 15) -> None:
    """Until the Dovecot master ``pid`` has no child but its log process: every process
    that served a session or could touch the store has ended.  The master itself sleeps
    a second more before it ends, its log process last (Dovecot 2.3's
    services_monitor_wait_and_kill)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(_children(pid).values()) <= {"log"}:
            return
        time.sleep(0.02)
    raise RuntimeError(f"dovecot {pid}'s processes did not end within {timeout} s: {_children(pid)}")


def _reap_stopping() -> None:
    while _STOPPING:
        fd, remove = _STOPPING.pop()
        _wait_gone_fd(fd)
        if remove:
            shutil.rmtree(remove, ignore_errors=True)


# -- IMAP wire parsing ------------------------------------------------------------------

class _Nil:
    def __repr__(self) -> str:
        return "NIL"


NIL = _Nil()


def _wire(data: Iterable) -> bytes:
    """Rebuild the wire form of an imaplib response list (literals come as tuples)."""
    out = bytearray()
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):
            out += item[0] + b"\r\n" + item[1]
        else:
            out += item
    return bytes(out)


def parse_sexp(buf: bytes, pos: int = 0) -> tuple[list, int]:
    """Parse IMAP tokens up to the end of a parenthesised list or of ``buf``.

    Atoms come back as str, quoted strings as str, literals as bytes, NIL as ``NIL``,
    lists as Python lists.
    """
    items: list = []
    n = len(buf)
    while pos < n:
        c = buf[pos:pos + 1]
        if c in (b" ", b"\r", b"\n"):
            pos += 1
        elif c == b"(":
            sub, pos = parse_sexp(buf, pos + 1)
            items.append(sub)
        elif c == b")":
            return items, pos + 1
        elif c == b'"':
            pos += 1
            s = bytearray()
            while buf[pos:pos + 1] != b'"':
                if buf[pos:pos + 1] == b"\\":
                    pos += 1
                s += buf[pos:pos + 1]
                pos += 1
            items.append(s.decode("utf-8", "surrogateescape"))
            pos += 1
        elif c == b"{":
            end = buf.index(b"}", pos)
            size = int(buf[pos + 1:end])
            start = end + 1
            if buf[start:start + 2] == b"\r\n":
                start += 2
            items.append(buf[start:start + size])
            pos = start + size
        else:
            m = re.compile(rb"[^ ()\r\n\[]+(\[[^\]]*\](<[0-9.]+>)?)?").match(buf, pos)
            if m is None:       # a lone '[' : take it as an atom character
                m = re.compile(rb"\[[^ ()\r\n]*").match(buf, pos)
            tok = m.group(0).decode("utf-8", "surrogateescape")
            items.append(NIL if tok.upper() == "NIL" else tok)
            pos = m.end()
    return items, pos


def _fetch_items(data: list) -> list[dict]:
    """imaplib FETCH data -> one dict per ``* n FETCH (...)`` (keys upper-cased)."""
    wire = _wire(data)
    out = []
    # imaplib strips "* " and joins responses; walk them: "<seq> (<items>)" repeated
    pos = 0
    while pos < len(wire):
        m = re.compile(rb"\s*(\d+) \(").match(wire, pos)
        if not m:
            break
        lst, pos = parse_sexp(wire, m.end())
        d = {"SEQ": int(m.group(1))}
        for i in range(0, len(lst) - 1, 2):
            d[str(lst[i]).upper()] = lst[i + 1]
        out.append(d)
    return out


def _uid_set(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        if ":" in part:
            a, b = (int(x) for x in part.split(":"))
            out.extend(range(min(a, b), max(a, b) + 1))
        else:
            out.append(int(part))
    return out


def quote(name: str) -> str:
    """An IMAP quoted string (folder names with spaces, quotes or backslashes)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _code(texts: Iterable, name: str) -> list[str] | None:
    for t in texts:
        if isinstance(t, tuple):
            t = t[0]
        if t is None:
            continue
        s = t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
        m = re.search(r"\[" + name + r" ([^\]]*)\]", s)
        if m:
            return m.group(1).split()
    return None


# -- client state ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MessageState:
    uid: int
    flags: frozenset[str]            # system flags and keywords, without \Recent
    internaldate: str                # exactly as Dovecot prints it
    size: int                        # RFC822.SIZE
    guid: str                        # FETCH X-GUID
    sha256: str                      # of BODY.PEEK[]


@dataclasses.dataclass(frozen=True)
class FolderState:
    name: str
    uidvalidity: int
    uidnext: int
    subscribed: bool
    messages: tuple[MessageState, ...]   # by UID

    def by_uid(self) -> dict[int, MessageState]:
        return {m.uid: m for m in self.messages}


@dataclasses.dataclass(frozen=True)
class ClientState:
    """What one login's IMAP client sees: every selectable folder and the subscriptions."""

    folders: dict[str, FolderState]
    subscriptions: frozenset[str]    # LSUB, including names that do not exist

    def __getitem__(self, name: str) -> FolderState:
        return self.folders[name]

    def all_messages(self) -> list[tuple[str, MessageState]]:
        return [(f, m) for f in sorted(self.folders) for m in self.folders[f].messages]


# -- IMAP client ----------------------------------------------------------------------

class LabImapError(AssertionError):
    pass


class LabImap:
    """A logged-in IMAP connection with the commands tests need (UIDs everywhere)."""

    def __init__(self, host: str, port: int, login: str, password: str, timeout: float = 30):
        self.conn = imaplib.IMAP4(host, port, timeout=timeout)
        self.login = login
        self._ok(self.conn.login(login, password), "LOGIN")
        self.selected: str | None = None

    # plumbing
    def _ok(self, res, what: str):
        typ, data = res
        if typ != "OK":
            raise LabImapError(f"{what} failed for {self.login}: {typ} {data!r}")
        return data

    def command(self, name: str, *args) -> list:
        """Any command through imaplib's generic path (name must be known to imaplib)."""
        return self._ok(self.conn._simple_command(name, *args), name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.logout()

    def __enter__(self) -> "LabImap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # folders
    def create(self, name: str) -> None:
        self._ok(self.conn.create(quote(name)), f"CREATE {name}")

    def delete(self, name: str) -> None:
        if self.selected == name:
            self.unselect()
        self._ok(self.conn.delete(quote(name)), f"DELETE {name}")

    def rename(self, old: str, new: str) -> None:
        if self.selected == old:
            self.unselect()
        self._ok(self.conn.rename(quote(old), quote(new)), f"RENAME {old} {new}")

    def subscribe(self, name: str) -> None:
        self._ok(self.conn.subscribe(quote(name)), f"SUBSCRIBE {name}")

    def unsubscribe(self, name: str) -> None:
        self._ok(self.conn.unsubscribe(quote(name)), f"UNSUBSCRIBE {name}")

    def list(self, lsub: bool = False) -> dict[str, list[str]]:
        """{name: attributes} from LIST (or LSUB) "" "*"."""
        res = (self.conn.lsub if lsub else self.conn.list)('""', "*")
        data = self._ok(res, "LSUB" if lsub else "LIST")
        out = {}
        items, _ = parse_sexp(_wire(x if isinstance(x, tuple) else x + b"\r\n" for x in data
                                    if x is not None))
        # flat stream: (attrs) sep name (attrs) sep name ...
        i = 0
        while i + 2 < len(items):
            attrs, name = items[i], items[i + 2]
            if isinstance(name, bytes):
                name = name.decode("utf-8", "surrogateescape")
            out[name] = [str(a) for a in attrs]
            i += 3
        return out

    def select(self, name: str = "INBOX", readonly: bool = False) -> dict:
        """SELECT/EXAMINE: {'exists', 'uidvalidity', 'uidnext'}."""
        typ, data = self.conn.select(quote(name), readonly=readonly)
        if typ != "OK":
            raise LabImapError(f"SELECT {name} failed for {self.login}: {data!r}")
        self.selected = name
        uv = self.conn.response("UIDVALIDITY")[1]
        un = self.conn.response("UIDNEXT")[1]
        return {"exists": int(data[0]), "uidvalidity": int(uv[0]), "uidnext": int(un[0])}

    def status(self, name: str) -> dict:
        """STATUS name (MESSAGES UIDNEXT UIDVALIDITY): {'messages', 'uidnext', 'uidvalidity'}."""
        data = self._ok(self.conn.status(quote(name), "(MESSAGES UIDNEXT UIDVALIDITY)"), f"STATUS {name}")
        text = b" ".join(x if isinstance(x, bytes) else x[0] for x in data if x is not None).decode()
        return {k.lower(): int(v) for k, v in re.findall(r"(MESSAGES|UIDNEXT|UIDVALIDITY) (\d+)", text)}

    def unselect(self) -> None:
        if self.selected is not None:
            self._ok(self.conn.close(), "CLOSE")    # no \Deleted anywhere we close
            self.selected = None

    # messages
    def append(self, folder: str, msg: bytes, flags: Iterable[str] = (),
               internaldate: datetime | float | str | None = None) -> tuple[int, int]:
        """APPEND; returns (uidvalidity, uid) from APPENDUID."""
        fl = "(" + " ".join(flags) + ")" if flags else None
        date = None
        if internaldate is not None:
            if isinstance(internaldate, str):
                date = '"' + internaldate + '"'
            else:
                if isinstance(internaldate, (int, float)):
                    internaldate = datetime.fromtimestamp(internaldate, timezone.utc)
                date = imaplib.Time2Internaldate(internaldate)
        data = self._ok(self.conn.append(quote(folder), fl, date, msg), f"APPEND {folder}")
        code = _code(data, "APPENDUID")
        if code is None:
            raise LabImapError(f"APPEND {folder}: no APPENDUID in {data!r}")
        return int(code[0]), int(code[1])

    def uid_copy(self, uids: Iterable[int] | str, dest: str) -> dict[int, int]:
        """UID COPY; returns {source uid: destination uid} from COPYUID."""
        return self._copy_move("COPY", uids, dest)

    def uid_move(self, uids: Iterable[int] | str, dest: str) -> dict[int, int]:
        """UID MOVE (RFC 6851); returns {source uid: destination uid}."""
        return self._copy_move("MOVE", uids, dest)

    def _copy_move(self, cmd: str, uids, dest: str) -> dict[int, int]:
        uidset = uids if isinstance(uids, str) else ",".join(str(u) for u in uids)
        self.conn.untagged_responses.pop("OK", None)
        # _simple_command keeps the tagged reply, where COPY puts its COPYUID code
        data = self._ok(self.conn._simple_command("UID", cmd, uidset, quote(dest)),
                        f"UID {cmd} {dest}")
        code = _code(list(data) + list(self.conn.untagged_responses.get("OK", [])), "COPYUID")
        if code is None:
            return {}
        return dict(zip(_uid_set(code[1]), _uid_set(code[2])))

    def uid_store(self, uids: Iterable[int] | str, op: str, flags: Iterable[str]) -> None:
        """UID STORE uids op (flags); op is +FLAGS, -FLAGS or FLAGS (.SILENT allowed)."""
        uidset = uids if isinstance(uids, str) else ",".join(str(u) for u in uids)
        self._ok(self.conn.uid("STORE", uidset, op, "(" + " ".join(flags) + ")"), "UID STORE")

    def expunge(self) -> None:
        self._ok(self.conn.expunge(), "EXPUNGE")

    def uid_expunge(self, uids: Iterable[int]) -> None:
        """Mark \\Deleted and UID EXPUNGE (UIDPLUS) only these UIDs."""
        uidset = ",".join(str(u) for u in uids)
        self.uid_store(uidset, "+FLAGS.SILENT", [r"\Deleted"])
        self._ok(self.conn.uid("EXPUNGE", uidset), "UID EXPUNGE")

    def fetch_meta(self, uids: str = "1:*") -> list[dict]:
        """[{uid, flags, internaldate, size, guid}] of the selected folder, by UID."""
        data = self._ok(self.conn.uid("FETCH", uids,
                                      "(UID FLAGS INTERNALDATE RFC822.SIZE X-GUID)"), "FETCH")
        rows = {}
        for d in _fetch_items([x for x in data if x is not None]):
            if "UID" not in d or "RFC822.SIZE" not in d:
                continue                # unsolicited FLAGS updates and the like
            rows[int(d["UID"])] = {
                "uid": int(d["UID"]),
                "flags": frozenset(str(f) for f in d["FLAGS"] if str(f) != r"\Recent"),
                "internaldate": str(d["INTERNALDATE"]),
                "size": int(d["RFC822.SIZE"]),
                "guid": str(d["X-GUID"]),
            }
        return [rows[u] for u in sorted(rows)]

    def fetch_body(self, uid: int) -> bytes:
        """BODY.PEEK[] of one message (one message in memory at a time)."""
        data = self._ok(self.conn.uid("FETCH", str(uid), "(BODY.PEEK[])"), "FETCH BODY")
        for d in _fetch_items([x for x in data if x is not None]):
            if int(d.get("UID", -1)) == uid and "BODY[]" in d:
                body = d["BODY[]"]
                return body if isinstance(body, bytes) else str(body).encode()
        raise LabImapError(f"UID {uid}: no BODY[] in {data!r}")

    def uids(self) -> list[int]:
        data = self._ok(self.conn.uid("SEARCH", "ALL"), "SEARCH")
        return sorted(int(x) for x in b" ".join(d for d in data if d).split())

    def folder_state(self, name: str, subscribed: bool) -> FolderState:
        info = self.select(name, readonly=True)
        msgs = []
        if info["exists"]:
            for row in self.fetch_meta():
                digest = hashlib.sha256(self.fetch_body(row["uid"])).hexdigest()
                msgs.append(MessageState(sha256=digest, **row))
        self.unselect()
        return FolderState(name, info["uidvalidity"], info["uidnext"], subscribed,
                           tuple(msgs))

    def state(self) -> ClientState:
        """Every selectable folder with UIDVALIDITY/UIDNEXT and its messages; LSUB."""
        folders = self.list()
        subs = frozenset(self.list(lsub=True))
        out = {}
        for name in sorted(folders):
            attrs = {a.lower() for a in folders[name]}
            if "\\noselect" in attrs or "\\nonexistent" in attrs:
                continue
            out[name] = self.folder_state(name, name in subs)
        return ClientState(out, subs)


# -- the lab --------------------------------------------------------------------------

class LmtpError(AssertionError):
    pass


class Lab:
    """One running private Dovecot in one layout."""

    host = "127.0.0.1"

    def __init__(self, layout: LabLayout | str, workdir: str,
                 logins: Iterable[str] | None = None, extra: str = "",
                 pop3_uidl_format: str | None = None, override_userdb: bool = True):
        self.layout = ({**LAYOUTS, **ACL_LAYOUTS}[layout] if isinstance(layout, str)
                       else layout)
        self.dir = workdir
        self.store = os.path.join(workdir, "mail")
        self.homes = os.path.join(workdir, "home")
        self.dict = os.path.join(self.homes, "shared-mailboxes.db")   # acl_shared_dict (ACL_LAYOUTS)
        self.idx = os.path.join(workdir, "idx")
        self.ctl = os.path.join(workdir, "ctl")
        self.conf = os.path.join(workdir, "dovecot.conf")
        self.users_file = os.path.join(workdir, "users")
        self.mail_user = MAIL_USER
        self.uid, self.gid = ensure_mail_user()
        self.extra = extra
        # False: the userdbs docs/dovecot.md documents and nothing else (no userdb.override,
        # so no add_user(mail=, home=))
        self.override_userdb = override_userdb
        self.port = self.lport = self.pport = 0
        self.pop3_uidl_format = pop3_uidl_format   # None: no POP3 server
        self.starts = 0
        self.run_dir = os.path.join(workdir, "run0")
        self.pid: int | None = None
        self.passwords: dict[str, str] = {}
        self.userdb_fields: dict[str, str] = {}
        self.held: set[str] = set()
        self.overrides: dict[str, str] = {}
        self.logins = list(logins if logins is not None else self.layout.logins)
        for login in self.logins:
            self.add_user(login)
        # both passwd-files exist, empty, before Dovecot starts: auth opens a fixed path
        # at start ("Error: ... open(...) failed" for a missing one) and lists it
        self._write_overrides()
        self._write_holds(settle=False)

    # -- paths --------------------------------------------------------------------
    def _fill(self, template: str) -> str:
        for key, value in (("{store}", self.store), ("{home}", self.homes),
                           ("{idx}", self.idx), ("{ctl}", self.ctl), ("{dict}", self.dict)):
            template = template.replace(key, value)       # not str.format: %{user}
        return template

    @property
    def mail_location(self) -> str:
        """The configured mail_location (variables unexpanded)."""
        return self._fill(self.layout.mail_location)

    @property
    def home_template(self) -> str:
        return self._fill(self.layout.home)

    # -- users ----------------------------------------------------------------------
    def add_user(self, login: str, password: str | None = None, userdb: str | None = None,
                 mail: str | None = None, home: str | None = None) -> None:
        """Let ``login`` log in.  ``userdb`` = extra userdb fields ("k=v k2=v2", only
        with the passwd-file userdb); ``mail``/``home`` give this login its own
        mail_location/home (an override userdb).  Dovecot re-reads both files."""
        self.passwords[login] = password if password is not None else "pw-" + login
        if userdb is not None:
            self.userdb_fields[login] = userdb
        if mail is not None or home is not None:
            if not self.override_userdb:
                raise ValueError("this lab has no override userdb (override_userdb=False)")
            home = home or os.path.join(self.homes, login)
            self.overrides[login] = " ".join(
                f"userdb_{k}={v}" for k, v in (("mail", mail), ("home", home)) if v)
            self._write_overrides()
        if login not in self.logins:
            self.logins.append(login)
        self._write_users()

    def _write_overrides(self) -> None:
        path = os.path.join(self.dir, "userdb.override")
        with open(path + ".tmp", "w") as f:
            for login, fields in self.overrides.items():
                f.write(f"{login}:::::::{fields}\n")
        os.chmod(path + ".tmp", 0o644)
        os.replace(path + ".tmp", path)

    def set_userdb_fields(self, login: str, fields: str) -> None:
        """Replace the extra userdb fields of ``login`` (passwd-file userdb only)."""
        if self.layout.userdb != "passwd-file":
            raise ValueError(f"layout {self.layout.name} has a static userdb")
        self.userdb_fields[login] = fields
        self._write_users()

    def _write_users(self) -> None:
        tmp = self.users_file + ".tmp"
        with open(tmp, "w") as f:
            for u, p in self.passwords.items():
                extra = " ".join("userdb_" + kv for kv in self.userdb_fields.get(u, "").split())
                f.write(f"{u}:{{PLAIN}}{p}::::::{extra}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.users_file)
        if self.pid is not None:
            # auth re-reads a passwd-file at most once a second (db-passwd-file.c)
            time.sleep(1.1)

    def hold(self, login: str) -> None:
        """Make Dovecot's LMTP refuse ``login`` with a temporary failure (451 4.3.0 at
        RCPT TO), other services unchanged."""
        self.held.add(login)
        self._write_holds()

    def release(self, login: str) -> None:
        self.held.discard(login)
        self._write_holds()

    def _write_holds(self, settle: bool = True) -> None:
        path = os.path.join(self.dir, "hold.lmtp")
        with open(path + ".tmp", "w") as f:
            for login in sorted(self.held):
                f.write(f"{login}:::::::userdb_tempfail=yes userdb_reason=delivery_held\n")
        os.chmod(path + ".tmp", 0o644)
        os.replace(path + ".tmp", path)
        if self.pid is not None and settle:
            time.sleep(1.1)         # auth re-reads a passwd-file at most once a second

    # -- server -------------------------------------------------------------------
    def write_config(self) -> None:
        lay = self.layout
        userdb = USERDB_PASSWD_FILE if lay.userdb == "passwd-file" else USERDB_STATIC
        userdb = "".join(u.format(user=self.mail_user, home=self.home_template, d=self.dir)
                         for u in (USERDB_HOLD, USERDB_OVERRIDE if self.override_userdb else "",
                                   userdb))
        plugin = "\n".join(f"  {k} = {v}" for k, v in lay.plugin)
        text = CONF.format(layout=lay.name, d=self.dir, port=self.port, lport=self.lport,
                           run=self.run_dir,
                           mail_location=self.mail_location, user=self.mail_user,
                           mail_plugins=lay.mail_plugins, userdb=userdb, plugin=plugin,
                           extra=self._fill(lay.extra + "\n" + self.extra).strip())
        if self.pop3_uidl_format is not None:
            text = text.replace("protocols = imap lmtp", "protocols = imap pop3 lmtp", 1)
            text += POP3_LISTENER.format(uidl_format=self.pop3_uidl_format, port=self.pport) + "\n"
        if lay.inbox_namespace:
            head = "namespace inbox {\n  inbox = yes\n  separator = /\n"
            text = text.replace(head, head + self._fill(lay.inbox_namespace).rstrip("\n") + "\n", 1)
        with open(self.conf, "w") as f:
            f.write(text)
        os.chmod(self.conf, 0o644)

    def start(self) -> None:
        for p in (self.store, self.homes, self.idx, self.ctl):
            os.makedirs(p, exist_ok=True)
            os.chown(p, self.uid, self.gid)
        # every start gets new ports and its own base_dir, so a start need not wait for
        # the previous instance to finish shutting down (see restart())
        self.starts += 1
        self.run_dir = os.path.join(self.dir, f"run{self.starts}")
        self.port, self.lport, pport = free_ports(3)
        if self.pop3_uidl_format is not None:
            self.pport = pport
        self.write_config()
        check = subprocess.run([DOVECOT, "-c", self.conf, "-n"], capture_output=True, text=True)
        if check.returncode:
            raise RuntimeError(f"dovecot rejects the {self.layout.name} config: {check.stderr}")
        with open(os.path.join(self.dir, "start.err"), "wb") as err:
            rc = subprocess.run([DOVECOT, "-c", self.conf], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err).returncode
        if rc:
            raise RuntimeError(f"dovecot failed to start ({rc}): {self.log()}")
        pidfile = os.path.join(self.run_dir, "master.pid")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.pid is None and os.path.exists(pidfile):
                with open(pidfile) as f:
                    text = f.read().strip()
                if text:
                    self.pid = int(text)
            if self.pid is not None and self._answers(self.port, b"* OK") \
                    and self._answers(self.lport, b"220") \
                    and (not self.pport or self._answers(self.pport, b"+OK")):
                return
            time.sleep(0.05)
        raise RuntimeError(f"dovecot did not answer on {self.port}/{self.lport}: {self.log()}")

    def _answers(self, port: int, banner: bytes) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(
                (self.host, port), timeout=0.5) as s:
            return s.recv(100).startswith(banner)
        return False

    def stop(self, wait: bool | str = True, remove: bool = False) -> None:
        """SIGTERM the master (Dovecot takes about a second to end).  Without ``wait`` the end
        is awaited when the test process exits, so fixture teardowns overlap; ``remove``
        deletes the lab's directory once Dovecot is gone.  ``wait="sessions"`` returns
        once every process that served a session or touched the store has ended, the
        master and its log process still ending (awaited at exit): only for a start()
        right after it, on new ports and a new base_dir, whatever is done to the store
        in between.  A command run meanwhile could reach the old instance's sockets,
        which its master holds while nobody answers them."""
        if wait == "sessions" and remove:
            raise ValueError("stop(wait='sessions') keeps the lab for the next start")
        pid, self.pid = self.pid, None
        fd = None if pid is None else _pidfd(pid)
        if fd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGTERM)
        if wait == "sessions":
            if fd is not None:
                _wait_sessions_gone(pid)
                if not _STOPPING:
                    atexit.register(_reap_stopping)
                _STOPPING.append((fd, None))
        elif wait:
            _wait_gone_fd(fd)
            if remove:
                shutil.rmtree(self.dir, ignore_errors=True)
        else:
            if not _STOPPING:
                atexit.register(_reap_stopping)
            _STOPPING.append((fd, self.dir if remove else None))

    def restart(self) -> None:
        """A new instance over the same store (in-memory state gone), on new ports.

        The old one is still shutting down (about a second) but holds no mailbox open: its
        sessions ended with the tests' IMAP logouts and LMTP QUITs.
        """
        self.stop(wait=False)
        self.start()

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "dovecot.log"), errors="replace") as f:
                return f.read()[-6000:]
        except FileNotFoundError:
            return "(no log)"

    def logged(self, text: str, timeout: float = 15.0) -> bool:
        """Whether Dovecot's log says ``text``, waiting up to ``timeout`` for it: its log
        process writes a line a moment after the session that caused it has ended (on a
        loaded machine, after the test had looked once and found nothing)."""
        import time
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(os.path.join(self.dir, "dovecot.log"), errors="replace") as f:
                    if text in f.read():
                        return True
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def fix_owner(self, path: str | None = None) -> None:
        """chown -R the mail user (for files a test wrote as root): ``path``, or every
        mail tree (never Dovecot's run directory: a login directory owned by the mail
        user locks imap-login out of the auth socket, and IMAP logins hang).  A file that
        goes while we walk (a dotlock a live session of Dovecot's takes and drops) is
        left: it was Dovecot's, not ours."""
        for top in [path] if path else [self.store, self.homes, self.idx, self.ctl]:
            for root, dirs, files in os.walk(top):
                for p in [root] + [os.path.join(root, n) for n in files]:
                    try:
                        os.lchown(p, self.uid, self.gid)
                    except FileNotFoundError:
                        pass

    # -- LMTP ---------------------------------------------------------------------
    def deliver(self, rcpts: Iterable[str] | str, msg: bytes, sender: str = "sender@lab.example",
                check: bool = True) -> dict[str, tuple[int, str]]:
        """One LMTP transaction: ``msg`` to every recipient; {rcpt: (code, text)}.

        A recipient refused at RCPT has that reply; the others get their own reply after
        DATA (LMTP answers per recipient).  With ``check`` anything but 250 raises.
        """
        rcpts = [rcpts] if isinstance(rcpts, str) else list(rcpts)
        with socket.create_connection((self.host, self.lport), timeout=60) as s:
            f = s.makefile("rb")

            def reply() -> tuple[int, str]:
                lines = []
                while True:
                    line = f.readline()
                    if not line:
                        raise LmtpError("LMTP connection closed")
                    lines.append(line[4:].decode().rstrip())
                    if line[3:4] != b"-":
                        return int(line[:3]), " ".join(lines)

            def cmd(text: str) -> tuple[int, str]:
                s.sendall(text.encode() + b"\r\n")
                return reply()

            reply()
            cmd("LHLO lab.example")
            code, text = cmd(f"MAIL FROM:<{sender}>")
            if code != 250:
                raise LmtpError(f"MAIL FROM: {code} {text}")
            result: dict[str, tuple[int, str]] = {}
            accepted = []
            for r in rcpts:
                result[r] = cmd(f"RCPT TO:<{r}>")
                if result[r][0] == 250:
                    accepted.append(r)
            if accepted:
                code, text = cmd("DATA")
                if code != 354:
                    raise LmtpError(f"DATA: {code} {text}")
                body = msg.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                if not body.endswith(b"\r\n"):
                    body += b"\r\n"
                body = re.sub(rb"(?m)^\.", b"..", body)
                s.sendall(body + b".\r\n")
                for r in accepted:
                    result[r] = reply()
            with contextlib.suppress(Exception):
                cmd("QUIT")
        if check:
            bad = {r: v for r, v in result.items() if v[0] != 250}
            if bad:
                raise LmtpError(f"LMTP delivery failed: {bad}\n{self.log()}")
        return result

    # -- IMAP ---------------------------------------------------------------------
    def pop3_uidls(self, login: str) -> list[tuple[int, str]]:
        """What a POP3 client sees of ``login``'s INBOX: [(message number, UIDL)], by a
        real POP3 login (the lab must have been made with ``pop3_uidl_format``)."""
        if not self.pport:
            raise RuntimeError("this lab has no POP3 server (Lab(..., pop3_uidl_format=...))")
        p = poplib.POP3(self.host, self.pport, timeout=30)
        try:
            p.user(login)
            p.pass_(self.passwords[login])
            lines = p.uidl()[1]
        finally:
            p.quit()
        out = []
        for line in lines:
            n, _, uidl = line.decode("ascii").partition(" ")
            out.append((int(n), uidl))
        return out

    def imap(self, login: str, timeout: float = 30) -> LabImap:
        return LabImap(self.host, self.port, login, self.passwords[login], timeout=timeout)

    def client_state(self, login: str) -> ClientState:
        """What ``login``'s IMAP client sees (folders, subscriptions, every message)."""
        with self.imap(login) as c:
            return c.state()

    # -- tools --------------------------------------------------------------------
    def as_mail_user(self) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]

    def doveadm(self, *args: str, user: str | None = None, check: bool = True,
                env: dict[str, str] | None = None, options: Iterable[str] = (),
                input: bytes | None = None) -> subprocess.CompletedProcess:
        """``doveadm -c CONF [-o k=v ...] ARGS`` as the mail user.

        The first argument is the command name, words included ("mailbox path"); -u USER
        follows it when ``user`` is given.  Without ``user``, doveadm works offline on
        the account named by USER and HOME in ``env`` (no daemon needed).
        """
        cmd = [*self.as_mail_user(), DOVEADM, "-c", self.conf]
        for o in options:
            cmd += ["-o", o]
        cmd += args[0].split()
        if user is not None:
            cmd += ["-u", user]
        cmd += list(args[1:])
        e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/"}
        e.update(env or {})
        res = subprocess.run(cmd, capture_output=True, env=e, input=input, cwd="/")
        if check and res.returncode:
            raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}: "
                               f"{res.stderr.decode(errors='replace')}")
        return res

    def doveconf(self, name: str) -> str:
        """``doveconf -c CONF -h NAME``: the effective value of one setting."""
        res = subprocess.run([DOVECONF, "-c", self.conf, "-h", name],
                             capture_output=True, text=True, check=True)
        return res.stdout.rstrip("\n")

    def mailbox_path(self, login: str, mailbox: str = "INBOX", kind: str = "mailbox") -> str:
        """Where Dovecot itself says ``mailbox`` lives (doveadm mailbox path -t KIND)."""
        res = self.doveadm("mailbox path", "-t", kind, mailbox, user=login)
        return res.stdout.decode().strip()


@contextlib.contextmanager
def dovecot_lab(layout: LabLayout | str = "plain", workdir: str | None = None,
                logins: Iterable[str] | None = None, extra: str = "",
                pop3_uidl_format: str | None = None, override_userdb: bool = True) -> Iterator[Lab]:
    """Start a private Dovecot in ``layout`` (temp dir by default); stop it after.
    ``pop3_uidl_format``: serve POP3 too, with that UIDL format (:meth:`Lab.pop3_uidls`);
    ``override_userdb=False``: only the userdbs docs/dovecot.md documents (the layout's
    and LMTP's hold file), not the lab's per-login override file."""
    require_lab(pop3=pop3_uidl_format is not None)
    own = workdir is None
    if own:
        workdir = tempfile.mkdtemp(prefix="ims-lab-")   # not under pytest's 0700 tmp dirs:
    os.makedirs(workdir, exist_ok=True)                  # the mail user must reach the store
    os.chmod(workdir, 0o755)
    lab = Lab(layout, workdir, logins=logins, extra=extra, pop3_uidl_format=pop3_uidl_format,
              override_userdb=override_userdb)
    try:
        lab.start()
        yield lab
    finally:
        lab.stop(wait=not own, remove=own)      # own dir: removed once Dovecot is gone


def lab_fixture(layout: str | None = None, *, params: Iterable[str] | None = None,
                scope: str = "module", logins: Iterable[str] | None = None, extra: str = ""):
    """A pytest fixture yielding a running :class:`Lab`.

    ``lab_fixture("vdomain")`` gives one layout; ``lab_fixture(params=[...])`` a fixture
    parametrized over layouts (the id is the layout name).  Assign it to a module-level
    name: ``vd = lab_fixture("vdomain")``.
    """
    if (layout is None) == (params is None):
        raise TypeError("give one layout or params")
    plist = list(params) if params is not None else None

    @pytest.fixture(scope=scope, params=plist, ids=plist)
    def _lab(request):
        name = request.param if plist is not None else layout
        require_lab()
        work = tempfile.mkdtemp(prefix=f"ims-lab-{name}-")
        os.chmod(work, 0o755)
        lab = Lab(name, work, logins=logins, extra=extra)
        try:
            lab.start()
            yield lab
        finally:
            # the next lab starts while this one shuts down; the directory goes after
            lab.stop(wait=False, remove=not os.environ.get("IMS_KEEP_LAB"))
    return _lab


def message(subject: str, body: str = "hello", sender: str = "sender@lab.example",
            extra_headers: str = "", size: int = 0) -> bytes:
    """A small RFC 5322 message (CRLF), padded to about ``size`` bytes when given."""
    text = (f"From: {sender}\r\nTo: someone@lab.example\r\nSubject: {subject}\r\n"
            f"Message-ID: <{hashlib.sha1(subject.encode()).hexdigest()}@lab.example>\r\n"
            f"Date: Mon, 06 Jan 2025 10:00:00 +0000\r\n{extra_headers}\r\n{body}\r\n")
    if size > len(text):
        line = ("x" * 70 + "\r\n")
        text += line * ((size - len(text)) // len(line))
    return text.encode()


def move_and_rename_start(lab, login: str = "alice") -> None:
    """The start of issue 13's scenario, made by Dovecot: a precious message delivered
    over LMTP, an Archive folder, and a subscribed Projects holding one \\Seen $Work
    message (the tests then MOVE the precious one to Archive and RENAME Projects)."""
    lab.deliver([login], message("precious", size=3000))
    with lab.imap(login) as imap:
        imap.create("Archive")
        imap.create("Projects")
        imap.subscribe("Projects")
        imap.append("Projects", message("plan"), flags=["\\Seen", "$Work"], internaldate=1_700_000_000)


RANDOM_NAMES = ["Work", "Lists", "Trash", "Archive", "R&AOk-unions", "Sp ace", "semi;colon", "q'uote"]


def random_changes(lab, rnd, n: int, tag: str, logins=None, exclude=()) -> None:
    """``n`` random client changes: LMTP to some of the lab's logins; APPEND, COPY, MOVE,
    EXPUNGE, STORE, RENAME, DELETE, CREATE by one of ``logins`` (default: every login),
    nested names too (their parents hold only folders), with spaces, quotes, ';' and
    non-ASCII, but none of the kinds named in ``exclude`` ("rename", ...).  No '%' in
    names: dbox's dsync cannot carry them (tests/test_dbox_chain.py)."""
    ops = ["lmtp", "lmtp", "append", "copy", "move", "expunge", "flags", "rename",
           "delete", "create", "create"]
    ops = [o for o in ops if o not in exclude]
    for k in range(n):
        op = rnd.choice(ops)
        if op == "lmtp":
            lab.deliver(rnd.sample(lab.logins, rnd.randint(1, len(lab.logins))),
                        message(f"{tag} lmtp {k}", size=rnd.randrange(3000)))
            continue
        with lab.imap(rnd.choice(logins or lab.logins)) as imap:
            listed = imap.list()
            folders = sorted(name for name, attrs in listed.items()
                             if not {a.lower() for a in attrs} & {"\\noselect", "\\nonexistent"})
            src = rnd.choice(folders)
            if op == "append":
                imap.append(src, message(f"{tag} append {k}"),
                            flags=rnd.choice([[], [r"\Seen"], ["$Label1"], [r"\Draft", "Kw2"]]),
                            internaldate=1_700_000_000 + rnd.randrange(10 ** 6))
            elif op == "create" or (op in ("rename", "delete") and src != "INBOX"):
                new = rnd.choice(RANDOM_NAMES) + rnd.choice(["", "-x", "/child"])
                if op == "delete":
                    imap.delete(src)
                elif new not in listed and not new.startswith(src + "/"):
                    if op == "rename":
                        imap.rename(src, new)
                    else:
                        imap.create(new)
                        if rnd.random() < 0.6:
                            imap.subscribe(new)
            elif op not in ("rename", "delete"):
                imap.select(src)
                uids = imap.uids()
                if uids:
                    pick = rnd.sample(uids, min(len(uids), rnd.randrange(1, 4)))
                    dest = rnd.choice([f for f in folders if f != src] or [src])
                    if op == "copy" and dest != src:
                        imap.uid_copy(pick, dest)
                    elif op == "move" and dest != src:
                        imap.uid_move(pick, dest)
                    elif op == "expunge":
                        imap.uid_expunge(pick)
                    elif op == "flags":
                        imap.uid_store(pick, rnd.choice(["FLAGS", "+FLAGS", "-FLAGS"]),
                                       rnd.choice([[], [r"\Seen"], [r"\Flagged", "$Todo"], [r"\Answered"]]))
                imap.unselect()
