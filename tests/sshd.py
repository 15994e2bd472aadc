"""A private OpenSSH server on 127.0.0.1 for the SSH device tests.

The server runs ``/usr/sbin/sshd -D -e`` with its own configuration, host key and
authorized_keys directory (nothing from /etc/ssh), accepts keys only, and offers SFTP
(internal-sftp) and a shell to the test user ``imsbk``.  The client side is pinned: a
known_hosts file holding ``[127.0.0.1]:PORT`` with the fixture's host key, and a client
key in that user's authorized_keys.  Stopped by its PID.  Use the module-scoped ``sshd``
fixture (tests/conftest.py)::

    def test_x(sshd, tmp_path):
        remote = sshd.remote_dir("case")                  # a directory owned by imsbk
        spec = sshd.spec(remote + "/full.ims")            # imsbk@127.0.0.1:PORT:/...
        cfg.set("ssh.identity", sshd.client_key); cfg.set("ssh.knownhosts", sshd.known_hosts)

When sshd is not installed the fixture skips, but fails under ``CI=true``.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from tests.helpers import free_port, system_users_lock, unavailable

SSHD_BIN = "/usr/sbin/sshd"
USER = "imsbk"
SFTP_USER = "imsbksftp"     # an sftp-only account (ForceCommand internal-sftp): no shell

CONF = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_ed25519
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys/%u
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
StrictModes no
LogLevel VERBOSE
Subsystem sftp internal-sftp
Match User {sftp_user}
    ForceCommand internal-sftp
"""


def require_sshd() -> None:
    why = None
    if not os.path.exists(SSHD_BIN) or not shutil.which("ssh-keygen"):
        why = f"{SSHD_BIN} is not installed (apt-get install openssh-server)"
    elif os.geteuid() != 0:
        why = "the sshd fixture needs root (it logs a test user in)"
    if why:
        unavailable(f"OpenSSH server: {why}")


def ensure_user(name: str = USER) -> pwd.struct_passwd:
    with system_users_lock():
        try:
            return pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True)
            # '*' = no password but not locked: with UsePAM no a '!' account cannot log in at all
            subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
            return pwd.getpwnam(name)


def keygen(path: str, comment: str = "ims-asm-test") -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path], check=True)
    return path


class SSHD:
    host = "127.0.0.1"

    def __init__(self):
        # under /tmp, world-traversable: the test user must reach its directories
        self.dir = tempfile.mkdtemp(prefix="ims-sshd-")
        os.chmod(self.dir, 0o755)
        self.pw = ensure_user()
        self.user = USER
        self.sftp_user = SFTP_USER
        self.sftp_pw = ensure_user(SFTP_USER)
        self.host_key = keygen(os.path.join(self.dir, "host_ed25519"), "test-host")
        self.client_key = keygen(os.path.join(self.dir, "client_ed25519"))
        self.other_key = keygen(os.path.join(self.dir, "other_ed25519"), "not-authorized")
        akdir = os.path.join(self.dir, "authorized_keys")
        os.makedirs(akdir, mode=0o755)
        for u in (USER, SFTP_USER):
            shutil.copy(self.client_key + ".pub", os.path.join(akdir, u))
            os.chmod(os.path.join(akdir, u), 0o644)
        self.conf = os.path.join(self.dir, "sshd_config")
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        self.mounts: list[str] = []
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def host_pub(self) -> str:
        with open(self.host_key + ".pub") as f:
            kind, blob = f.read().split()[:2]
        return f"{kind} {blob}"

    def start(self) -> None:
        os.makedirs("/run/sshd", exist_ok=True)
        os.chmod("/run/sshd", 0o755)
        self.port = free_port()
        with open(self.conf, "w") as f:
            f.write(CONF.format(d=self.dir, port=self.port, sftp_user=SFTP_USER))
        check = subprocess.run([SSHD_BIN, "-t", "-f", self.conf], capture_output=True, text=True)
        if check.returncode:
            raise RuntimeError(f"sshd rejects its test config: {check.stderr}")
        with open(self.known_hosts, "w") as f:
            f.write(f"[{self.host}]:{self.port} {self.host_pub()}\n")
        self.log = open(os.path.join(self.dir, "sshd.log"), "wb")
        self.proc = subprocess.Popen([SSHD_BIN, "-D", "-e", "-f", self.conf], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5) as s:
                if s.recv(100).startswith(b"SSH-2.0"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not answer on port {self.port}: {self.read_log()}")

    def read_log(self) -> str:
        with open(os.path.join(self.dir, "sshd.log"), errors="replace") as f:
            return f.read()[-3000:]

    def spec(self, path: str, user: str | None = USER) -> str:
        return f"{user + '@' if user else ''}{self.host}:{self.port}:{path}"

    def remote_dir(self, name: str, tmpfs_size: str | None = None, owner: str = USER) -> str:
        """A fresh directory owned by ``owner``; a tmpfs of that size if asked."""
        path = os.path.join(self.dir, "remote", name)
        os.makedirs(path)
        os.chmod(os.path.dirname(path), 0o755)
        if tmpfs_size:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_size},mode=0755", "tmpfs", path],
                           check=True, capture_output=True)
            self.mounts.append(path)
        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)
        return path

    def session_pids(self) -> list[int]:
        """Every process below the master sshd (the per-connection sshd processes)."""
        if self.proc is None:
            return []
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
        out, todo = [], [self.proc.pid]
        while todo:
            p = todo.pop()
            for c in children.get(p, []):
                out.append(c)
                todo.append(c)
        return out

    def kill_sessions(self) -> list[int]:
        """SIGKILL every connection's processes: the link drops like a crashed host."""
        pids = self.session_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def stop(self) -> None:
        self.kill_sessions()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            self.log.close()
        for m in self.mounts:
            subprocess.run(["umount", "-l", m], capture_output=True)
        self.mounts.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_sshd():
    """Start a private sshd, stop it (and everything below it) after."""
    server = SSHD()
    try:
        server.start()
        yield server
    finally:
        server.stop()
