"""A private Dovecot 2.3 IMAP server over a Maildir store, for round-trip tests.

The server runs on 127.0.0.1 on a free port with a self-contained configuration
(nothing from /etc/dovecot), serves ``maildir:<store>/%u/Maildir`` as the
unprivileged mail user ``vmail`` and authenticates from a passwd-file.  It is
stopped by its PID.  Use the ``dovecot`` fixture (tests/conftest.py)::

    def test_x(dovecot):
        dovecot.add_user("alice", "pw")
        ...write mail under dovecot.store (owner: dovecot.mail_user)...
        imap = dovecot.imap("alice")

When Dovecot is not installed the fixture skips, but fails under ``CI=true``
(CI installs ``dovecot-imapd``, so a missing server there is a real error).
``running_dovecot()`` starts one for a test that needs it only in some cases.
"""
from __future__ import annotations

import contextlib
import imaplib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Iterator

from tests.dovecot_lab import _wait_gone, ensure_mail_user
from tests.helpers import free_port, unavailable

DOVECOT = "/usr/sbin/dovecot"
MAIL_USER = "vmail"

CONF = """\
protocols = imap
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = test-dovecot-{port}
log_path = {d}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:{store}/%u/Maildir
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={store}/%u
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


def dovecot_missing() -> str | None:
    """Why Dovecot cannot run here, or None when it can."""
    if not os.path.exists(DOVECOT):
        return f"{DOVECOT} is not installed (apt-get install dovecot-imapd)"
    if os.geteuid() != 0:
        return "the Dovecot fixture needs root (it runs mail as the vmail user)"
    return None


def require_dovecot() -> None:
    """Skip the calling test without Dovecot; fail instead under CI=true."""
    why = dovecot_missing()
    if why:
        unavailable(f"Dovecot: {why}")


def chown_tree(path: str, uid: int, gid: int) -> None:
    """chown -R: Dovecot refuses (or fails) to touch files it cannot write."""
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.lchown(os.path.join(root, n), uid, gid)


class Dovecot:
    """One running private Dovecot; ``store`` is the partition directory it serves."""

    host = "127.0.0.1"

    def __init__(self, workdir: str):
        self.dir = workdir
        self.store = os.path.join(workdir, "mail")
        self.conf = os.path.join(workdir, "dovecot.conf")
        self.users_file = os.path.join(workdir, "users")
        self.mail_user = MAIL_USER
        self.uid, self.gid = ensure_mail_user()
        self.port = 0
        self.pid: int | None = None
        self.passwords: dict[str, str] = {}

    # -- users ----------------------------------------------------------------
    def add_user(self, user: str, password: str | None = None) -> None:
        """Let ``user`` log in (Dovecot re-reads the passwd-file when it changes)."""
        self.passwords[user] = password if password is not None else user + "-pw"
        tmp = self.users_file + ".tmp"
        with open(tmp, "w") as f:
            for u, p in self.passwords.items():
                f.write(f"{u}:{{PLAIN}}{p}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.users_file)

    def fix_owner(self) -> None:
        """Give the whole store to the mail user (for files written as root)."""
        chown_tree(self.store, self.uid, self.gid)

    # -- server ---------------------------------------------------------------
    def start(self) -> None:
        os.makedirs(self.store, exist_ok=True)
        os.chown(self.store, self.uid, self.gid)
        if not os.path.exists(self.users_file):
            self.add_user("nobody-here", "x")
        self.port = free_port()
        with open(self.conf, "w") as f:
            f.write(CONF.format(d=self.dir, store=self.store, port=self.port,
                                uid=self.mail_user, gid=self.mail_user))
        check = subprocess.run([DOVECOT, "-c", self.conf, "-n"], capture_output=True, text=True)
        if check.returncode:
            raise RuntimeError(f"dovecot rejects its test config: {check.stderr}")
        # The daemon's children inherit stdout/stderr: never pipe them (we'd wait forever).
        with open(os.path.join(self.dir, "start.err"), "wb") as err:
            rc = subprocess.run([DOVECOT, "-c", self.conf], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err).returncode
        if rc:
            raise RuntimeError(f"dovecot failed to start ({rc}): {self.log()}")
        pidfile = os.path.join(self.dir, "run", "master.pid")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.pid is None and os.path.exists(pidfile):
                with open(pidfile) as f:
                    text = f.read().strip()
                if text:
                    self.pid = int(text)
            if self.pid is not None:
                with contextlib.suppress(OSError), socket.create_connection(
                        (self.host, self.port), timeout=0.5) as s:
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
        _wait_gone(pid, timeout=10)         # (through a pidfd: the master is no child of ours)

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "dovecot.log"), errors="replace") as f:
                return f.read()[-4000:]
        except FileNotFoundError:
            return "(no log)"

    # -- clients --------------------------------------------------------------
    def imap(self, user: str) -> imaplib.IMAP4:
        """A logged-in IMAP connection for ``user`` (who must have been added)."""
        conn = imaplib.IMAP4(self.host, self.port, timeout=30)
        conn.login(user, self.passwords[user])
        return conn


@contextlib.contextmanager
def running_dovecot(workdir: str | None = None) -> Iterator[Dovecot]:
    """Start a private Dovecot in ``workdir`` (a new temp dir by default), stop it after."""
    own = workdir is None
    if own:
        workdir = tempfile.mkdtemp(prefix="ims-dovecot-")
    os.chmod(workdir, 0o755)            # the mail user must reach the store below it
    server = Dovecot(workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


def maildir_config(home: str, store: str, owner: str | None = MAIL_USER):
    """A Config for the maildir driver over ``store`` (the Dovecot partition)."""
    from asm.config import Config
    cfg = Config(home=home)
    cfg.set("store.driver", "maildir")
    cfg.set("partition:primary.path", store)
    if owner:
        cfg.set("store.owner", owner)
    return cfg
