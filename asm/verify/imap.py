"""A scratch Maildir store as an IMAP client sees it: a private Dovecot (when one is
installed) serving the scratch installation on 127.0.0.1, a free port, with a
configuration and password file of its own (nothing from /etc/dovecot), as the
scratch store's owner; every folder of the chain's view SELECTed and every message
fetched (UIDVALIDITY, UIDNEXT, UID, FLAGS, INTERNALDATE, BODY.PEEK[]) and compared.
The server is stopped by its PID when the comparison ends.

No store user's name reaches the server as text: each user is served to a login of its
own (``u1``, ``u2``, ...) whose home holds a ``Maildir`` link to that user's Maildir, so
a name with a space, a quote, a ``%``, a colon, non-ASCII or not UTF-8 at all logs in as
any other.  A folder Dovecot will not open by name (one beginning with ``~``, which it
reads as a home directory; one whose name is not UTF-8) is compared through the store
only, and named so (:attr:`Comparison.store_only`).

Access control lists are not compared here: this Dovecot loads no acl plugin (GETACL is
``imap_acl``'s, and an ACL naming the store's logins would not apply to ``u1``); the
folders' ``dovecot-acl`` files are compared through the store (compare.compare_restored).
"""
from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import imaplib
import os
import re
import secrets
import signal
import socket
import subprocess
import time

from asm.children import die_with_parent
from asm.verify.compare import Comparison
from asm.verify.chain import ChainView

DOVECOT = "/usr/sbin/dovecot"

CONF = """\
protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = imsverify-{port}
log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
auth_failure_delay = 0
mail_location = maildir:~/Maildir{options}
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/users
}}
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
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


def available() -> str | None:
    """Why a private Dovecot cannot serve the scratch store, or None."""
    if not os.access(DOVECOT, os.X_OK):
        return f"{DOVECOT} is not installed"
    if os.geteuid() != 0:
        return "starting a private Dovecot needs root"
    return None


def mutf7(name: str) -> str:
    """IMAP's modified UTF-7 (RFC 3501 §5.1.3) of a mailbox name."""
    out, run = [], []

    def flush():
        if run:
            b = base64.b64encode("".join(run).encode("utf-16-be")).decode().rstrip("=").replace("/", ",")
            out.append(f"&{b}-")
            run.clear()
    for c in name:
        if 0x20 <= ord(c) <= 0x7e:
            flush()
            out.append("&-" if c == "&" else c)
        else:
            run.append(c)
    flush()
    return "".join(out)


def unselectable(name: str) -> str | None:
    """Why Dovecot cannot be asked for the folder ``name`` by name, or None."""
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in name):
        return "its name is not UTF-8, which IMAP cannot name"
    if name.startswith("~"):
        return "Dovecot opens no folder whose name begins with '~' (it would name a home directory)"
    return None


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class PrivateDovecot:
    def __init__(self, workdir: str, users: dict, uid: int, gid: int, options: str = ""):
        """``users``: {user: that user's Maildir}; ``options``: what follows the path in
        the scratch store's mail_location (``:LAYOUT=fs``, ...)."""
        self.dir = workdir
        self.users = users
        self.logins = {user: f"u{i}" for i, user in enumerate(users, 1)}
        self.options = options
        self.uid, self.gid = uid, gid
        self.password = secrets.token_hex(16)
        self.port = 0
        self.pid = None
        self._proc = None

    def start(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        homes = os.path.join(self.dir, "homes")
        os.makedirs(homes, exist_ok=True)
        os.chmod(homes, 0o755)
        with open(os.path.join(self.dir, "users"), "w") as f:
            for user, root in self.users.items():
                login = self.logins[user]
                home = os.path.join(homes, login)
                os.mkdir(home, 0o755)
                os.chown(home, self.uid, self.gid)
                os.symlink(root, os.path.join(home, "Maildir"))
                f.write(f"{login}:{{PLAIN}}{self.password}:{self.uid}:{self.gid}::{home}::\n")
        # the password (every login's) is readable by Dovecot's auth process alone (it
        # runs as the internal user 'dovecot'): any local user who read it could log in
        # on the port and read the restored mail
        users = os.path.join(self.dir, "users")
        os.chmod(users, 0o600)
        with contextlib.suppress(KeyError, OSError):
            import pwd
            os.chown(users, pwd.getpwnam("dovecot").pw_uid, 0)
        conf = os.path.join(self.dir, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(CONF.format(d=self.dir, port=self.port, uid=self.uid, gid=self.gid, options=self.options))
        # in the foreground, a child of this process that dies with it (PR_SET_PDEATHSIG):
        # an imsverify killed outright leaves no Dovecot serving the scratch store
        with open(os.path.join(self.dir, "start.err"), "wb") as err:
            proc = subprocess.Popen([DOVECOT, "-F", "-c", conf], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, preexec_fn=functools.partial(die_with_parent, os.getpid()))
        self.pid, self._proc = proc.pid, proc
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rc = proc.poll()
            if rc is not None:
                self.pid = None
                raise RuntimeError(f"dovecot did not start (exit {rc}): {self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                if s.recv(100).startswith(b"* OK"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"dovecot did not answer on port {self.port}: {self.log()}")

    def stop(self) -> None:
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._proc.wait()

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "dovecot.log"), errors="replace") as f:
                return " ".join(f.read()[-600:].split())
        except OSError:
            return "(no log)"

    def login(self, user: str) -> imaplib.IMAP4:
        """A connection logged in as the store user ``user`` (by its own login)."""
        conn = imaplib.IMAP4("127.0.0.1", self.port, timeout=60)
        conn.login(self.logins[user], self.password)
        return conn


_ITEM = re.compile(rb"UID (\d+)|FLAGS \(([^)]*)\)|INTERNALDATE \"([^\"]+)\"")


def _meta(conn) -> dict:
    """uid -> (flags, keywords, int internaldate) of the selected folder."""
    typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE)")
    out = {}
    for item in data or []:
        line = item[0] if isinstance(item, tuple) else item
        if not line:
            continue
        uid = flags = date = None
        for m in _ITEM.finditer(line):
            if m.group(1):
                uid = int(m.group(1))
            elif m.group(2) is not None:
                flags = m.group(2).decode("utf-8", "replace").split()
            elif m.group(3):
                date = m.group(3)
        if uid is None:
            continue
        flags = [f for f in (flags or []) if f != "\\Recent"]
        when = imaplib.Internaldate2tuple(b'INTERNALDATE "' + date + b'"') if date else None
        out[uid] = (tuple(sorted(f for f in flags if f.startswith("\\"))),
                    tuple(sorted(f for f in flags if not f.startswith("\\"))),
                    int(time.mktime(when)) if when else None)
    return out


def _body_sha(conn, uid: int) -> str | None:
    typ, data = conn.uid("FETCH", str(uid), "(BODY.PEEK[])")
    for item in data or []:
        if isinstance(item, tuple) and len(item) > 1:
            return hashlib.sha256(item[1]).hexdigest()
    return None


_BARE_LF = re.compile(rb"(?<!\r)\n")


def served_sha256(f, plain=None) -> str:
    """The SHA-256 of a message as an IMAP server serves it: every line ending CRLF.
    Dovecot keeps a message it received over LMTP or APPEND with LF line ends
    (``mail_save_crlf = no``, its default) and adds the CR before each bare LF when it
    serves it.  ``f``: the message's bytes, read in chunks; ``plain``: a hash object
    that also gets them as they are."""
    h = hashlib.sha256()
    cr = False                          # the chunk before ended with CR
    for chunk in iter(lambda: f.read(1 << 20), b""):
        if plain is not None:
            plain.update(chunk)
        if cr and chunk[:1] == b"\n":
            h.update(b"\n")
            chunk, cr = chunk[1:], False
        if chunk:
            h.update(_BARE_LF.sub(b"\r\n", chunk))
            cr = chunk[-1:] == b"\r"
    return h.hexdigest()


def _served_as_stored(scratch, rec, uid: int, sha: str) -> str | None:
    """What Dovecot serves for the scratch store's copy of ``uid`` when that copy holds
    the archive's bytes (SHA-256 ``sha``); else None."""
    from asm.store.base import open_stored
    if scratch is None:
        return None
    plain = hashlib.sha256()
    try:
        info = scratch.message(rec.user, rec.name, uid)
        with (open_stored(info) if info.compressed else open(info.path, "rb")) as f:
            served = served_sha256(f, plain)
    except Exception:  # noqa: BLE001 - unreadable: the served bytes are then simply named
        return None
    return served if plain.hexdigest() == sha else None


def compare_served(view: ChainView, dovecot: PrivateDovecot, out: Comparison, scratch=None,
                   kept=None) -> None:
    """Every folder and message of ``view`` as Dovecot serves them; differences go to ``out``.
    ``scratch``: the store Dovecot serves, whose messages were compared byte for byte
    with the archive's: a message with bare LF line ends is served with CRLF ones.
    ``kept(user, folder)``: {uid: keywords} the scratch store kept beyond the folder's 26
    letters, which the live store's Dovecot has in its index and this one cannot serve."""
    by_user: dict = {}
    for (part, user, name), rec in view.folders.items():
        by_user.setdefault(user, []).append(rec)
    for user, recs in sorted(by_user.items()):
        if user not in dovecot.logins:
            out.add(f"restore test (IMAP): the user {user} is not in the scratch store")
            continue
        try:
            conn = dovecot.login(user)
        except (OSError, imaplib.IMAP4.error) as exc:
            out.add(f"restore test (IMAP): {user} cannot log in to the private Dovecot: {exc}")
            continue
        try:
            for rec in recs:
                why = unselectable(rec.name)
                if why:
                    out.store_only.append((rec.mailbox, why))
                    continue
                typ, data = conn.select(_quote(mutf7(rec.name)), readonly=True)
                if typ != "OK":
                    out.add(f"restore test (IMAP): {rec.mailbox} cannot be selected: {data}; Dovecot's log: "
                            f"{dovecot.log()}")
                    continue
                uv = conn.untagged_responses.get("UIDVALIDITY", [b"0"])[-1]
                un = conn.untagged_responses.get("UIDNEXT", [b"0"])[-1]
                if int(uv) != rec.uidvalidity or int(un) != rec.uidnext:
                    out.add(f"restore test (IMAP): {rec.mailbox}: Dovecot serves UIDVALIDITY {int(uv)} UIDNEXT "
                            f"{int(un)}, the archive says {rec.uidvalidity} and {rec.uidnext}")
                meta = _meta(conn) if rec.messages or int(conn.untagged_responses.get("EXISTS", [b"0"])[-1]) \
                    else {}
                beyond = kept(rec.user, rec.name) if kept is not None and meta else {}
                for uid, kws in beyond.items():
                    if uid in meta:          # (never a letter's keyword: a lost letter stays lost)
                        f, k, d = meta[uid]
                        meta[uid] = (f, tuple(sorted(set(k) | set(kws))), d)
                for uid, (sha, flags, keywords, idate, size) in rec.messages.items():
                    got = meta.pop(uid, None)
                    if got is None:
                        out.add(f"restore test (IMAP): {rec.mailbox}: Dovecot does not serve UID {uid}")
                        continue
                    if (got[0], got[1]) != (flags, keywords):
                        out.add(f"restore test (IMAP): {rec.mailbox}: UID {uid} has flags "
                                f"{' '.join(got[0] + got[1])!r}, {' '.join(flags + keywords)!r} in the archive")
                    if got[2] is not None and got[2] != idate:
                        out.add(f"restore test (IMAP): {rec.mailbox}: UID {uid} has INTERNALDATE {got[2]}, "
                                f"{idate} in the archive")
                    served = _body_sha(conn, uid)
                    if served != sha and served != _served_as_stored(scratch, rec, uid, sha):
                        out.add(f"restore test (IMAP): {rec.mailbox}: UID {uid} is served with other bytes "
                                "than the archive's")
                for uid in sorted(meta):
                    out.add(f"restore test (IMAP): {rec.mailbox}: Dovecot serves UID {uid}, which is not in "
                            "the archive")
        finally:
            with contextlib.suppress(Exception):
                conn.logout()
