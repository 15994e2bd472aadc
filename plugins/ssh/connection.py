"""SSH sessions for remote devices: settings from msconfig, keys found as OpenSSH finds
them, host keys checked against known_hosts and never accepted automatically.

Authentication is by key only: the configured ``ssh.identity``, the agent
(``SSH_AUTH_SOCK``) and ``~/.ssh/id_ed25519``, ``id_ecdsa``, ``id_rsa``.  No password is
ever asked for, sent, put on a command line or logged.
"""
from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import os
import shlex
import socket
import threading
from dataclasses import dataclass

import paramiko

from plugins.ssh.errors import (
    AuthFailed, ConnectFailed, HostKeyChanged, HostKeyRevoked, HostKeyUnknown, LinkLost, RemoteError,
)
from plugins.ssh.spec import RemoteSpec

# paramiko's transport thread logs a dropped link itself; without a handler Python would
# print it as a second, unformatted line.  Our errors say it once; logging setups still see it.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"


@dataclass
class Settings:
    """The ``ssh.*`` options (see asm/config.py); ``config`` may be None (defaults)."""
    user: str | None = None
    port: int = 22
    identity: str | None = None
    knownhosts: str | None = None
    timeout: int = 30
    keepalive: int = 30
    stream: str = "auto"

    @classmethod
    def from_config(cls, config) -> "Settings":
        if config is None:
            return cls()
        return cls(user=config.get("ssh.user"), port=config.get_int("ssh.port"),
                   identity=config.get("ssh.identity"), knownhosts=config.get("ssh.knownhosts"),
                   timeout=config.get_int("ssh.timeout"), keepalive=config.get_int("ssh.keepalive"),
                   stream=config.get("ssh.stream"))

    def known_hosts_files(self) -> list[str]:
        if self.knownhosts:
            return [self.knownhosts]
        return [SYSTEM_KNOWN_HOSTS, os.path.expanduser("~/.ssh/known_hosts")]

    def accept_file(self) -> str:
        return self.knownhosts or os.path.expanduser("~/.ssh/known_hosts")


def fingerprint(key) -> str:
    """OpenSSH's ``SHA256:...`` form, as ``ssh-keygen -lf`` prints it (of each key of
    an :class:`_AnyOf`, joined by "or")."""
    if isinstance(key, _AnyOf):
        return " or ".join(fingerprint(k) for k in key.keys)
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


class _AnyOf:
    """The keys known_hosts lists for one host and key type (a key rotation keeps the
    old and the new key): equal to a key when any of them is, as OpenSSH matches."""

    def __init__(self, keys: list):
        self.keys = keys

    def __eq__(self, other):
        return any(k == other for k in self.keys)

    def __ne__(self, other):
        return not self == other

    __hash__ = None

    def get_name(self) -> str:
        return self.keys[0].get_name()

    def get_base64(self) -> str:
        return " or ".join(k.get_base64() for k in self.keys)


class _ByType(dict):
    """key type -> known key(s), the shape paramiko's SSHClient expects of a lookup."""

    def keys(self):
        return list(super().keys())


class _KnownHosts(paramiko.HostKeys):
    """paramiko's HostKeys gives a host one key per type (its first line), so the
    host's new key on a second line read as CHANGED.  Here a lookup gives every key of
    each type, and the offered key matches when it is any of them."""

    def lookup(self, hostname):
        found: dict[str, list] = {}
        for e in self._entries:
            if e.key is not None and self._hostname_matches(hostname, e):
                keys = found.setdefault(e.key.get_name(), [])
                if e.key not in keys:
                    keys.append(e.key)
        if not found:
            return None
        return _ByType({t: ks[0] if len(ks) == 1 else _AnyOf(ks) for t, ks in found.items()})

    def check(self, hostname, key) -> bool:
        known = self.lookup(hostname)
        return known is not None and known.get(key.get_name()) == key


def _keyscan_type(key: paramiko.PKey) -> str:
    name = key.get_name()
    if name.startswith("ecdsa"):
        return "ecdsa"
    return name.removeprefix("ssh-")


def host_entry(host: str, port: int) -> str:
    """The name known_hosts uses: ``host`` on port 22, ``[host]:port`` otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


def _revoked(revoked: list, hostname: str, key) -> HostKeyRevoked | None:
    """The HostKeyRevoked to raise when ``key`` is on a ``@revoked`` line (``revoked``:
    (key, file, line number) of each), else None.  A revoked key is refused for every
    host, whatever host names its line gives (a stolen key is no better elsewhere)."""
    for bad, path, lineno in revoked:
        if bad == key:
            return HostKeyRevoked(
                f"host key {key.get_name()} {fingerprint(key)} of {hostname} is REVOKED in {path} line "
                f"{lineno} (@revoked): this may be an attack; do not accept it: ask the server's "
                f"administrator for its current host key")
    return None


def _refuse_revoked(revoked: list, hostname: str, key) -> None:
    """Raise HostKeyRevoked when ``key`` is on a ``@revoked`` line, before anything is
    sent to the host."""
    exc = _revoked(revoked, hostname, key)
    if exc is not None:
        raise exc


class _Refuse(paramiko.MissingHostKeyPolicy):
    """An unknown host key is refused, with the fingerprint and how to accept it; a
    revoked one, saying so (and never how to accept it)."""

    def __init__(self, settings: Settings, port: int, revoked: list | None = None):
        self.settings = settings
        self.port = port
        self.revoked = revoked or []

    def missing_host_key(self, client, hostname, key):
        _refuse_revoked(self.revoked, hostname, key)
        host = hostname[1:hostname.rindex("]")] if hostname.startswith("[") else hostname
        scan = f"ssh-keyscan{'' if self.port == 22 else f' -p {self.port}'} -t {_keyscan_type(key)} {host}"
        raise HostKeyUnknown(
            f"host key of {hostname} is not known ({key.get_name()} {fingerprint(key)}): "
            f"compare that fingerprint with 'ssh-keygen -lf' of the server's host key, then accept it with "
            f"'{scan} >> {shlex.quote(self.settings.accept_file())}'")


class Connection:
    """One SSH session; ``sftp`` opens lazily; ``label`` names it in messages."""

    def __init__(self, client: paramiko.SSHClient, spec: RemoteSpec, user: str, port: int,
                 settings: Settings):
        self.client = client
        self.spec = spec
        self.user = user
        self.port = port
        self.settings = settings
        self.label = f"{user}@{host_entry(spec.host, port)}"
        self._sftp: paramiko.SFTPClient | None = None
        self._shell: bool | None = None

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            step = "opening its channel"
            try:
                t = self.client.get_transport()
                if t is None or not t.is_active():
                    raise EOFError()
                # each step waits for the far side at most ssh.timeout: a frozen sshd, or an
                # sftp-server stuck on a dead home directory, is a link that stopped answering
                chan = self._answer_within(lambda: self._open_channel(t))
                chan.settimeout(self.settings.timeout)
                step = "requesting the sftp subsystem"
                self._answer_within(lambda: chan.invoke_subsystem("sftp"))
                step = "waiting for the SFTP server's version"
                self._sftp = self._answer_within(lambda: paramiko.SFTPClient(chan))
            except socket.timeout:
                self.close()
                raise LinkLost(f"{self.label}: no answer within ssh.timeout ({self.settings.timeout} s) "
                               f"while starting SFTP ({step}): the far side stopped answering (a hung "
                               f"server, or a home directory on a dead mount); run the command again "
                               f"when it answers") from None
            except (paramiko.SSHException, paramiko.SFTPError, EOFError, OSError) as exc:
                if not self.alive() or isinstance(exc, (EOFError, ConnectionError)):
                    # the link went away, not the subsystem: a rerun may well go through
                    raise LinkLost(f"{self.label}: the connection was lost while starting SFTP "
                                   f"({exc or 'closed'}): run the command again") from None
                raise RemoteError(f"{self.label}: the server offers no SFTP subsystem ({exc or 'refused'}): "
                                  f"enable 'Subsystem sftp' in its sshd_config") from None
            self._sftp.get_channel().settimeout(self.settings.timeout)
        return self._sftp

    def _open_channel(self, t: paramiko.Transport) -> paramiko.Channel:
        """A session channel, waiting for the far side's answer at most ssh.timeout.
        paramiko's own timer for it ends in an SSHException ("Timeout opening
        channel."), not a refusal: it may fire just before :meth:`_answer_within`'s, and
        is the same no answer (socket.timeout), never "no SFTP subsystem"."""
        try:
            return t.open_session(timeout=self.settings.timeout)
        except paramiko.SSHException as exc:
            if "timeout" in str(exc).lower():
                raise socket.timeout("no answer within ssh.timeout") from None
            raise

    def _answer_within(self, wait):
        """``wait()`` (a step that waits for the far side, which paramiko may wait for
        without limit), given ssh.timeout: when it has not returned by then, the session
        is closed (which ends the wait) and socket.timeout raised."""
        done, expired = threading.Event(), threading.Event()

        def watch():
            if done.wait(self.settings.timeout):
                return
            expired.set()
            try:
                self.client.close()
            except Exception:
                pass
        watcher = threading.Thread(target=watch, name="ims-ssh-watch", daemon=True)
        watcher.start()
        try:
            result = wait()
        except Exception:
            done.set()
            watcher.join()
            if expired.is_set():
                raise socket.timeout("no answer within ssh.timeout") from None
            raise
        done.set()
        watcher.join()
        if expired.is_set():        # it answered as the time ran out: the session is closed
            raise socket.timeout("no answer within ssh.timeout")
        return result

    def has_shell(self) -> bool:
        """Whether the far side runs commands in a POSIX shell (not an sftp-only
        account, whose forced sftp-server would read our bytes as SFTP)."""
        if self._shell is None:
            try:
                status, out, _ = self.run("echo ims-asm-shell")
            except RemoteError:
                if not self.alive():
                    raise
                status, out = -1, ""
            self._shell = status == 0 and out.strip() == "ims-asm-shell"
        return self._shell

    def alive(self) -> bool:
        t = self.client.get_transport()
        return bool(t and t.is_active())

    def exec(self, command: str) -> paramiko.Channel:
        """An exec channel running ``command`` (already quoted) in the remote shell.

        Its timeout is ssh.timeout: a send, receive or wait that makes no progress for
        that long raises socket.timeout (use :meth:`send_all`, :meth:`recv` and
        :meth:`exit_status`, which tell a busy far side from one that stopped answering)."""
        try:
            chan = self.client.get_transport().open_session(timeout=self.settings.timeout)
            chan.settimeout(self.settings.timeout)
            chan.exec_command(command)
            return chan
        except (paramiko.SSHException, EOFError, OSError, AttributeError) as exc:
            raise LinkLost(f"{self.label}: cannot run a remote command: {exc or 'channel refused'}") from None

    # -- waiting on an exec channel --------------------------------------------------
    # A channel's command may be busy for long (dd on a tape that rewinds, cat of a
    # FIFO nobody feeds yet, sha256sum of a big dump): that is no lost link.  So when a
    # channel makes no progress for ssh.timeout, the far sshd is asked for an answer
    # (a global request, as OpenSSH's ServerAliveInterval asks); no answer within
    # ssh.timeout is a far side that stopped answering: the session is closed and
    # socket.timeout raised (sftpio.translate: LinkLost, "no answer within ssh.timeout").

    def answering(self) -> bool:
        """Whether the far sshd answers a request within ssh.timeout."""
        t = self.client.get_transport()
        if t is None or not t.is_active():
            return False
        answered = threading.Event()

        def ask():
            try:
                t.global_request("keepalive@openssh.com", wait=True)   # refused is an answer too
            except Exception:
                return
            if t.is_active():
                answered.set()
        threading.Thread(target=ask, name="ims-ssh-probe", daemon=True).start()
        return answered.wait(self.settings.timeout)

    def _stalled(self) -> None:
        """A channel made no progress for ssh.timeout: return if the far side still
        answers, else end the session and raise socket.timeout."""
        if self.answering():
            return
        try:
            self.client.close()          # also ends the probe, which waits on the transport
        except Exception:
            pass
        raise socket.timeout("no answer within ssh.timeout")

    def send_all(self, chan: paramiko.Channel, data) -> None:
        """Send every byte of ``data`` on ``chan`` while the far side answers."""
        mv = memoryview(data)
        while len(mv):
            try:
                n = chan.send(mv)
            except socket.timeout:
                self._stalled()
                continue
            if n <= 0:
                raise BrokenPipeError(32, "the channel was closed")
            mv = mv[n:]

    def recv(self, chan: paramiko.Channel, n: int, stderr: bool = False) -> bytes:
        """Up to ``n`` bytes from ``chan`` (b"" at its end) while the far side answers."""
        while True:
            try:
                return chan.recv_stderr(n) if stderr else chan.recv(n)
            except socket.timeout:
                self._stalled()

    def exit_status(self, chan: paramiko.Channel) -> int:
        """The command's exit status (-1: none), waiting while the far side answers."""
        while not chan.status_event.wait(self.settings.timeout):
            self._stalled()
        return chan.recv_exit_status()

    def run(self, command: str, patient: bool = False) -> tuple[int, str, str]:
        """Run a short command; (exit status, stdout, stderr).  Status -1: no shell/lost.
        It fails when it makes no progress for ssh.timeout, unless ``patient``: then it
        takes as long as it takes while the far side answers (sha256sum of a big dump)."""
        chan = self.exec(command)
        try:
            chan.shutdown_write()          # stdin at EOF: a forced sftp-server exits
            if patient:
                out = b"".join(iter(lambda: self.recv(chan, 65536), b""))
                err = b"".join(iter(lambda: self.recv(chan, 65536, stderr=True), b""))
                status = self.exit_status(chan)
            else:
                out = chan.makefile("rb").read()
                err = chan.makefile_stderr("rb").read()
                if not chan.status_event.wait(self.settings.timeout):
                    raise socket.timeout()
                status = chan.recv_exit_status()
        except (socket.timeout, paramiko.SSHException, EOFError, OSError) as exc:
            raise LinkLost(f"{self.label}: remote command did not finish: {exc or 'timed out'}") from None
        finally:
            try:
                chan.close()
            except Exception:      # the link is gone; the caller hears of it
                pass
        return status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def close(self) -> None:
        try:
            if self._sftp is not None:
                self._sftp.close()
        except Exception:  # closing a dead session must not hide the real error
            pass
        try:
            self.client.close()
        except Exception:
            pass


_PASSPHRASE = "passphrase-protected"


def _load_key(path: str):
    """(the private key in ``path``, None), or (None, why it cannot be used)."""
    try:
        return paramiko.PKey.from_path(path), None
    except TypeError:           # cryptography: encrypted, and no password given
        return None, _PASSPHRASE
    except OSError as exc:
        return None, exc.strerror or str(exc)
    except Exception:           # not a key from_path knows: ask each key class (older formats)
        pass
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key_file(path), None
        except paramiko.PasswordRequiredException:
            return None, _PASSPHRASE
        except Exception:
            continue
    return None, "not an ed25519, ecdsa or rsa private key (OpenSSH or PEM format)"


def _key_files(settings: Settings) -> list[str]:
    if settings.identity:
        if not os.path.isfile(settings.identity):
            raise AuthFailed(f"ssh.identity {settings.identity} does not exist: "
                             f"msconfig set ssh.identity /path/to/private_key")
        return [settings.identity]
    found = []
    for name in DEFAULT_KEYS:
        p = os.path.expanduser(os.path.join("~", ".ssh", name))
        if os.path.isfile(p):
            found.append(p)
    return found


class _Keys:
    """The keys to offer, in the order docs/ssh.md gives: ssh.identity, the agent's,
    ~/.ssh/id_*; and the key files that cannot be offered, with why."""

    def __init__(self, settings: Settings, agent: bool):
        self.files: list[str] = []              # loaded, offered
        self.unusable: dict[str, str] = {}      # path -> why not
        file_keys = []
        for path in _key_files(settings):
            key, why = _load_key(path)
            if key is None:
                if settings.identity and why != _PASSPHRASE:
                    raise AuthFailed(f"ssh.identity {path} cannot be used as a key: {why}: "
                                     f"msconfig set ssh.identity /path/to/private_key")
                self.unusable[path] = why
            else:
                self.files.append(path)
                file_keys.append(key)
        self.agent = None
        agent_keys: list = []
        if agent:
            try:
                self.agent = paramiko.Agent()
                agent_keys = list(self.agent.get_keys())
            except (paramiko.SSHException, OSError):     # a stale SSH_AUTH_SOCK: no agent keys
                agent_keys = []
        self.agent_count = len(agent_keys)
        self.keys = (file_keys[:1] + agent_keys + file_keys[1:]) if settings.identity else \
            agent_keys + file_keys

    def protected(self) -> list[str]:
        return [p for p, why in self.unusable.items() if why == _PASSPHRASE]

    def tried(self) -> str:
        return ", ".join(self.files + ([f"the agent's {self.agent_count} key(s)"] if self.agent_count else [])) \
            or "no key"

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()


class _AuthTimedOut(Exception):
    """The server did not answer a key within ssh.timeout (paramiko's auth_timeout)."""


class _Client(paramiko.SSHClient):
    """paramiko's SSHClient, offering exactly our keys: its own key handling tries every
    key class on each file and reports the last loader's error ("Invalid key") instead
    of the server's refusal."""

    ims_keys: list = []
    ims_revoked: list = []          # (key, file, line) of known_hosts' @revoked lines
    ims_hostname = ""

    def _auth(self, username, *_ignored):
        # the host key was found in known_hosts: a @revoked line still refuses it,
        # before any key is offered to that host
        _refuse_revoked(self.ims_revoked, self.ims_hostname, self._transport.get_remote_server_key())
        refused = None
        for key in self.ims_keys:
            try:
                self._transport.auth_publickey(username, key)
            except paramiko.AuthenticationException as exc:
                # paramiko says "Authentication timeout." when no answer came within
                # auth_timeout: a server slow to look the key up, not a refusal
                if "timeout" in str(exc).lower() and self._transport.is_active():
                    raise _AuthTimedOut() from None
                refused = exc
                continue
            if self._transport.is_authenticated():
                return
            refused = paramiko.AuthenticationException("more than a key is required")
        raise refused or paramiko.AuthenticationException("no key was accepted")


def connect(spec: RemoteSpec, settings: Settings) -> Connection:
    """An authenticated session to ``spec``'s host; raises a RemoteError subclass."""
    user = spec.user or settings.user or getpass.getuser()
    port = spec.port or settings.port
    name = f"{user}@{host_entry(spec.host, port)}"
    keys = _Keys(settings, bool(os.environ.get("SSH_AUTH_SOCK")))
    try:
        return _connect(spec, settings, user, port, name, keys)
    finally:
        keys.close()


def _connect(spec: RemoteSpec, settings: Settings, user: str, port: int, name: str, keys: _Keys) -> Connection:
    client = _Client()
    client.ims_keys = keys.keys
    client._host_keys = hk = _KnownHosts()      # every key of a host, not its first line's
    revoked: list = []
    for f in settings.known_hosts_files():
        if os.path.isfile(f):
            try:
                revoked += _load_known_hosts(hk, f)
            except (OSError, UnicodeDecodeError) as exc:
                raise HostKeyUnknown(f"cannot read known_hosts file {f}: {exc}") from None
    client.set_missing_host_key_policy(_Refuse(settings, port, revoked))
    client.ims_revoked, client.ims_hostname = revoked, host_entry(spec.host, port)
    try:        # an unknown host is no connection (10), whether or not there is a key to offer
        socket.getaddrinfo(spec.host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectFailed(f"cannot connect to {name}: unknown host {spec.host!r} ({exc.strerror})") from None
    if not keys.keys:
        if keys.protected():
            raise AuthFailed(f"{name}: the key {', '.join(keys.protected())} is passphrase-protected: load it "
                             f"into ssh-agent (ssh-add) and run again")
        unusable = "".join(f"; {p}: {why}" for p, why in keys.unusable.items())
        agent = "; the agent holds no key" if os.environ.get("SSH_AUTH_SOCK") else ""
        raise AuthFailed(f"{name}: no SSH key to offer{agent}{unusable}: create one with ssh-keygen, "
                         f"load one into ssh-agent (ssh-add), or msconfig set ssh.identity /path/to/private_key")
    try:
        client.connect(spec.host, port=port, username=user, key_filename=None,
                       allow_agent=False, look_for_keys=False, password=None,
                       timeout=settings.timeout, banner_timeout=settings.timeout,
                       auth_timeout=settings.timeout)
    except (HostKeyUnknown, HostKeyRevoked):
        client.close()
        raise
    except _AuthTimedOut:
        client.close()
        raise ConnectFailed(f"cannot connect to {name}: the server did not finish authentication within "
                            f"ssh.timeout ({settings.timeout} s) (a slow key lookup there, such as an "
                            f"AuthorizedKeysCommand waiting on LDAP, or an overloaded host): check the "
                            f"server, or raise ssh.timeout if it is only slow", 110) from None
    except paramiko.BadHostKeyException as exc:
        client.close()
        entry = host_entry(spec.host, port)
        refused = _revoked(revoked, entry, exc.key)
        if refused is not None:
            raise refused from None
        raise HostKeyChanged(
            f"host key of {entry} has CHANGED (offered {exc.key.get_name()} {fingerprint(exc.key)}, "
            f"known_hosts has {fingerprint(exc.expected_key)}): this may be an attack; if the server's "
            f"key was really replaced, check the new fingerprint, run 'ssh-keygen -f "
            f"{shlex.quote(settings.accept_file())} -R {shlex.quote(entry)}' and accept the new key") from None
    except paramiko.AuthenticationException:
        client.close()
        skipped = "".join(f"; {p} is passphrase-protected: load it into ssh-agent (ssh-add)"
                          for p in keys.protected())
        raise AuthFailed(f"{name}: authentication failed (tried {keys.tried()}; keys only, no passwords"
                         f"{skipped}): add the public key to ~{user}/.ssh/authorized_keys there, "
                         f"or set ssh.identity") from None
    except socket.timeout:
        client.close()
        raise ConnectFailed(f"cannot connect to {name}: timed out after {settings.timeout}s "
                            f"(check the host name, ssh.port and firewalls; ssh.timeout sets the wait)",
                            110) from None
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        client.close()
        why = "; ".join(sorted({e.strerror or str(e) for e in exc.errors.values()}))
        raise ConnectFailed(f"cannot connect to {name}: {why} (is sshd running there on port {port}? "
                            f"check the host and ssh.port)") from None
    except socket.gaierror as exc:
        client.close()
        raise ConnectFailed(f"cannot connect to {name}: unknown host {spec.host!r} ({exc.strerror})") from None
    except (paramiko.SSHException, EOFError, OSError) as exc:
        client.close()
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ConnectFailed(f"cannot connect to {name}: {why}") from None
    if settings.keepalive:
        client.get_transport().set_keepalive(settings.keepalive)
    return Connection(client, spec, user, port, settings)


def _load_known_hosts(hk: paramiko.HostKeys, path: str) -> list:
    """Load ``path`` into ``hk`` as OpenSSH reads it: lines it cannot parse are passed over,
    ``@cert-authority`` lines too (ims-asm uses no host certificates); returns the keys
    of ``@revoked`` lines as (key, path, line number): refused whatever else the file says.
    A ``@revoked`` line's key is never one of ``hk``'s.  (paramiko's own HostKeys.load
    knows no markers: it reads ``@revoked`` as the host name and the key type as the key,
    and stops the whole file with InvalidHostKey.)"""
    revoked = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            # fields are separated by any run of spaces and tabs, as OpenSSH reads them
            # (paramiko's from_line takes exactly one: a @revoked line written with two
            # would be passed over, and its key read as unknown)
            fields = line.split()
            marker = None
            if fields[0].startswith("@"):
                marker = fields.pop(0)
                if marker != "@revoked" or not fields:
                    continue
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(" ".join(fields[:3]), lineno)
            except (paramiko.SSHException, paramiko.hostkeys.InvalidHostKey, ValueError):
                continue
            if entry is None:
                continue
            if marker == "@revoked":
                revoked.append((entry.key, path, lineno))
                continue
            for h in list(entry.hostnames):
                if hk.check(h, entry.key):
                    entry.hostnames.remove(h)
            if entry.hostnames:
                hk._entries.append(entry)
    return revoked
