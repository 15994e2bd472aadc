"""Remote devices over SSH against a real OpenSSH server on 127.0.0.1: imsbackup and
imsrestore run as commands with ``-f imsbk@127.0.0.1:PORT:/path``, the staging push and
fetch, and the refusals a user meets (host keys, keys, refused connections).  A far side
that fails during a transfer (killed, frozen, full): tests/test_ssh_faults.py."""
from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import time

import paramiko
import pytest

from asm.config import Config
from asm.demo import build_demo
from asm.store import open_store
from plugins.ssh import AuthFailed, HostKeyUnknown, VerifyFailed, fetch, push
from plugins.ssh.connection import Settings
from tests.helpers import block_device, free_port, make_home, run
from tests.sshd import keygen

PLUGINS = "classic,localdevices,ssh"
NAME = "full; 50% 'é' v1.ims"          # spaces, quotes, %, ; and Unicode in the remote name


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A classic store shared by the tests (read only): 6 users, Unicode folders, links."""
    root = tmp_path_factory.mktemp("src")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMS_ASM_PLUGINS", PLUGINS)
        cfg = make_home(root / "home", "classic", **{"store.root": str(root / "store"),
                                                     "partition:primary.path": str(root / "part")})
        counts = build_demo(open_store(cfg), users=6, messages=140, seed=3)
        yield {"root": root, "counts": counts, "snapshot": snapshot(open_store(cfg))}


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("IMS_ASM_PLUGINS", PLUGINS)
    monkeypatch.setenv("HOME", str(tmp_path))        # never the developer's ~/.ssh keys ...
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)   # ... nor agent: only the configured key


def snapshot(store) -> dict:
    """(user, folder, uid) -> (sha256 of bytes, flags, keywords), plus folder UIDVALIDITY."""
    out = {}
    for part in store.partitions():
        for user in store.users(part):
            for f in store.folders(user):
                out[(user, f.name)] = ("uidvalidity", f.uidvalidity)
                for m in store.messages(user, f.name):
                    with store.open_message(user, f.name, m.uid) as fh:
                        digest = hashlib.sha256(fh.read()).hexdigest()
                    out[(user, f.name, m.uid)] = (digest, tuple(sorted(m.flags)), tuple(m.keywords))
    return out


def home_for(tmp_path, sshd, source=None, name="home", **ssh):
    """An installation: the shared source store (backup) or an empty one (restore)."""
    opts = {"ssh.identity": sshd.client_key, "ssh.knownhosts": sshd.known_hosts,
            "ssh.timeout": "10"}
    opts.update({k.replace("_", "."): v for k, v in ssh.items()})
    if source is not None:
        opts["store.root"] = str(source["root"] / "store")
        opts["partition:primary.path"] = str(source["root"] / "part")
    return make_home(tmp_path / name, "classic", **opts)


def one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


def restored(home) -> dict:
    return snapshot(open_store(Config(str(home))))


# -- the everyday paths -------------------------------------------------------------
@pytest.fixture(params=["auto", "sftp"])
def stream(request):
    """ssh.stream: auto writes through cat on an exec channel, sftp through SFTP writes."""
    return request.param


def test_backup_to_remote_file_and_restore_seekable(sshd, source, tmp_path, stream):
    src = home_for(tmp_path, sshd, source, ssh_stream=stream)
    d = sshd.remote_dir(f"file-{stream}")
    p = run(src.home, "imsbackup", "-f", sshd.spec(f"{d}/{NAME}"), "/", text=True)
    assert p.returncode == 0, p.stderr
    assert os.listdir(d) == [NAME]                       # no temporary file left behind
    st = os.stat(os.path.join(d, NAME))
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == sshd.pw.pw_uid
    assert st.st_size % (512 * 20) == 0                  # whole records of the blocking factor

    dst = home_for(tmp_path, sshd, name="dst")
    url = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{d}/" + NAME.replace("%", "%25")
    p = run(dst.home, "imsrestore", "-f", url, "/", text=True)
    assert p.returncode == 0, p.stderr
    assert restored(dst.home) == source["snapshot"]
    assert sum(1 for k in source["snapshot"] if len(k) == 3) >= source["counts"]["messages"]


def test_blocking_factor_and_listing_over_ssh(sshd, source, tmp_path):
    src = home_for(tmp_path, sshd, source)
    d = sshd.remote_dir("bf")
    p = run(src.home, "imsbackup", "-b", "7", "-f", sshd.spec(f"{d}/a.ims"), "/primary/user/alice", text=True)
    assert p.returncode == 0, p.stderr
    assert os.path.getsize(f"{d}/a.ims") % (512 * 7) == 0
    p = run(src.home, "imsrestore", "-b", "7", "-t", "-f", sshd.spec(f"{d}/a.ims"), text=True)
    assert p.returncode == 0, p.stderr
    listed = {ln.split("\t")[0] for ln in p.stdout.splitlines()}
    want = {f"/primary/alice/{k[1]}/{k[2]}" for k in source["snapshot"] if len(k) == 3 and k[0] == "alice"}
    assert want and want <= listed


def _remote_fifo(d, name, sshd) -> str:
    """A FIFO in the remote directory ``d`` that the test user of ``sshd`` owns."""
    fifo = os.path.join(d, name)
    os.mkfifo(fifo)
    os.chown(fifo, sshd.pw.pw_uid, sshd.pw.pw_gid)
    return fifo


def test_stream_through_remote_fifo(sshd, source, tmp_path):
    """host:/path/fifo is a stream (exec channel), like tar -f host:/dev/rmt0."""
    src = home_for(tmp_path, sshd, source)
    fifo = _remote_fifo(sshd.remote_dir("fifo"), "pipe", sshd)
    caught = tmp_path / "caught.ims"
    reader = subprocess.Popen(["sh", "-c", 'cat "$1" > "$2"', "sh", fifo, str(caught)])
    p = run(src.home, "imsbackup", "-f", sshd.spec(fifo), "/", text=True)
    reader.wait(30)
    assert p.returncode == 0, p.stderr
    assert caught.stat().st_size % (512 * 20) == 0 and caught.stat().st_size > 100_000

    dst = home_for(tmp_path, sshd, name="dst")
    feeder = subprocess.Popen(["sh", "-c", 'cat "$1" > "$2"', "sh", str(caught), fifo])
    p = run(dst.home, "imsrestore", "-f", sshd.spec(fifo), "/", text=True)
    feeder.wait(30)
    assert p.returncode == 0, p.stderr
    assert restored(dst.home) == source["snapshot"]


def test_remote_block_device_is_refused_never_replaced(sshd, source, tmp_path):
    """host:/dir/disk where disk is a block device: exit 2, one line, the node stays a
    block device and the disk is not written (never a temporary file renamed over it)."""
    src = home_for(tmp_path, sshd, source)
    d = sshd.remote_dir("blk")
    node = os.path.join(d, "disk")
    with block_device(node) as loop:
        os.chown(node, sshd.pw.pw_uid, sshd.pw.pw_gid)
        p = run(src.home, "imsbackup", "-f", sshd.spec(node), "/primary/user/bob", text=True)
        assert p.returncode == 2, p.stderr
        assert p.stderr.count("\n") == 1 and "block device" in p.stderr and f"dd of={node}" in p.stderr
        assert stat.S_ISBLK(os.lstat(node).st_mode)
        assert not [n for n in os.listdir(d) if n.endswith(".partial")]
        with open(loop, "rb") as f:
            assert f.read() == bytes(4 << 20)


@pytest.mark.parametrize("dev, said", [("backuphost:", "names no file"), ("ssh://backuphost/", "names no file"),
                                       ("backuphost:~", "names no file"),
                                       ("backuphost:99999:/x.ims", "bad port 99999"),
                                       ("ssh://", "bad remote device"),
                                       # mistyped hosts: an internal error (70) before
                                       ("backup..example.com:/b/x.ims", "is no host name"),
                                       (".example.com:/b/x.ims", "is no host name"),
                                       ("a" * 64 + ".example.com:/b/x.ims", "is no host name"),
                                       ("ssh://backup..example.com/b/x.ims", "is no host name")])
def test_a_device_string_naming_no_remote_file_is_a_usage_error(sshd, source, tmp_path, dev, said):
    """A -f that can name no archive file is exit 2 (bad path, nothing was done), as
    s3://bkt is: never exit 3, which says a device failed and to fix the device."""
    src = home_for(tmp_path, sshd, source)
    for argv in (["imsbackup", "-f", dev, "/primary/user/bob"], ["imsrestore", "-t", "-f", dev]):
        p = run(src.home, *argv, text=True)
        assert p.returncode == 2, (argv, p.stderr)
        assert said in one_line(p.stderr) and repr(dev) in p.stderr


def test_a_remote_path_that_is_not_utf8_is_a_usage_error(sshd, source, tmp_path):
    """A remote path holding bytes that are not UTF-8 (SFTP names it in UTF-8 here)
    failed after connecting, exit 3, with Python's UnicodeEncodeError as its reason.
    Refused before any connection: exit 2, one line saying what is wrong."""
    src = home_for(tmp_path, sshd, source)
    dev = sshd.spec(sshd.remote_dir("nu") + "/" + os.fsdecode(b"\xff.ims"))
    for argv in (["imsbackup", "-f", dev, "/primary/user/bob"], ["imsrestore", "-t", "-f", dev]):
        p = run(src.home, *argv)
        err = p.stderr.decode("utf-8", "replace")
        assert p.returncode == 2, (argv, err)
        assert "not UTF-8" in one_line(err) and "UnicodeEncodeError" not in err, err


def test_local_file_with_colon_stays_local(sshd, source, tmp_path, monkeypatch):
    src = home_for(tmp_path, sshd, source)
    monkeypatch.chdir(tmp_path)
    p = run(src.home, "imsbackup", "-f", "./127.0.0.1:x.ims", "/primary/user/bob", text=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "127.0.0.1:x.ims").stat().st_size > 0
    src.set("device.localonly", "yes")
    p = run(src.home, "imsbackup", "-f", "127.0.0.1:y.ims", "/primary/user/bob", text=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "127.0.0.1:y.ims").stat().st_size > 0


# -- staging push and fetch ----------------------------------------------------------
def test_push_and_fetch(sshd, tmp_path):
    settings = Settings(identity=sshd.client_key, knownhosts=sshd.known_hosts, timeout=10)
    d = sshd.remote_dir("push")
    local = tmp_path / "groupA 50% é.ims"
    data = os.urandom(700_000)
    local.write_bytes(data)
    r = push(str(local), sshd.spec(d + "/"), settings)
    assert r.remote_path == f"{d}/{local.name}" and r.size == len(data)
    assert r.verified == "sha256" and r.sha256 == hashlib.sha256(data).hexdigest()
    assert os.listdir(d) == [local.name]
    with open(r.remote_path, "rb") as f:
        assert f.read() == data

    back = tmp_path / "back" / "copy.ims"
    back.parent.mkdir()
    got = fetch(sshd.spec(r.remote_path), str(back), settings, sha256=r.sha256)
    assert back.read_bytes() == data and got.verified == "sha256"

    other = tmp_path / "back" / "other.ims"
    with pytest.raises(VerifyFailed, match="SHA-256"):
        fetch(sshd.spec(r.remote_path), str(other), settings, sha256="0" * 64)
    assert os.listdir(back.parent) == ["copy.ims"]      # nothing half-fetched kept


def test_push_refuses_wrong_key_and_writes_nothing(sshd, tmp_path):
    settings = Settings(identity=sshd.other_key, knownhosts=sshd.known_hosts, timeout=10)
    d = sshd.remote_dir("pushkey")
    (tmp_path / "f").write_bytes(b"x" * 1000)
    with pytest.raises(AuthFailed, match="authentication failed"):
        push(str(tmp_path / "f"), sshd.spec(d + "/"), settings)
    assert os.listdir(d) == []


def test_sftp_only_account(sshd, source, tmp_path):
    """No shell on the far side (ForceCommand internal-sftp): SFTP writes, size-verified push."""
    src = home_for(tmp_path, sshd, source)
    d = sshd.remote_dir("sftponly", owner=sshd.sftp_user)
    p = run(src.home, "imsbackup", "-f", sshd.spec(f"{d}/a.ims", user=sshd.sftp_user), "/primary/user/carol", text=True)
    assert p.returncode == 0, p.stderr
    assert os.listdir(d) == ["a.ims"]
    dst = home_for(tmp_path, sshd, name="dst")
    p = run(dst.home, "imsrestore", "-f", sshd.spec(f"{d}/a.ims", user=sshd.sftp_user), "/", text=True)
    assert p.returncode == 0, p.stderr
    want = {k: v for k, v in source["snapshot"].items() if k[0] == "carol"}
    assert want and restored(dst.home) == want
    settings = Settings(identity=sshd.client_key, knownhosts=sshd.known_hosts, timeout=10)
    local = tmp_path / "dump.ims"
    local.write_bytes(b"z" * 50_000)
    r = push(str(local), sshd.spec(d + "/", user=sshd.sftp_user), settings)
    assert r.verified == "size" and open(r.remote_path, "rb").read() == local.read_bytes()


# -- refusals ------------------------------------------------------------------------
def _fingerprint(pub: str) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", pub], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def test_unknown_host_key_refused_with_how_to_accept(sshd, source, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    src = home_for(tmp_path, sshd, source, ssh_knownhosts=str(empty))
    d = sshd.remote_dir("unknown")
    p = run(src.home, "imsbackup", "-f", sshd.spec(f"{d}/x.ims"), "/", text=True)
    assert p.returncode == 11
    line = one_line(p.stderr)
    assert "not known" in line and _fingerprint(sshd.host_key + ".pub") in line
    assert f"ssh-keyscan -p {sshd.port} -t ed25519 127.0.0.1 >> {empty}" in line
    assert os.listdir(d) == [] and empty.read_text() == ""       # nothing accepted, nothing written
    with pytest.raises(HostKeyUnknown):
        push(str(empty), sshd.spec(d + "/"), Settings(identity=sshd.client_key, knownhosts=str(empty)))


def test_changed_host_key_refused(sshd, source, tmp_path):
    impostor = keygen(str(tmp_path / "impostor"))
    with open(impostor + ".pub") as f:
        kind, blob = f.read().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    dst = home_for(tmp_path, sshd, ssh_knownhosts=str(kh))
    p = run(dst.home, "imsrestore", "-f", sshd.spec("/etc/hostname"), "/", text=True)
    assert p.returncode == 11
    line = one_line(p.stderr)
    assert "CHANGED" in line and _fingerprint(sshd.host_key + ".pub") in line and _fingerprint(impostor + ".pub") in line


def test_known_hosts_as_sites_keep_it(sshd, source, tmp_path):
    """A known_hosts file with @cert-authority lines, a line cut short and comments, as
    ~/.ssh/known_hosts often is: read as OpenSSH reads it (the host's own line counts,
    the rest is passed over), not an internal error; a host key marked @revoked is
    refused (exit 11) even though a plain line lists it too."""
    ca = keygen(str(tmp_path / "ca"))
    with open(ca + ".pub") as f:
        ca_kind, ca_blob = f.read().split()[:2]
    with open(sshd.known_hosts) as f:
        host_lines = f.read()
    kh = tmp_path / "known_hosts"
    kh.write_text(f"# managed by hand\n@cert-authority *.example.com {ca_kind} {ca_blob}\n"
                  f"broken.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI\n\n" + host_lines)
    src = home_for(tmp_path, sshd, source, ssh_knownhosts=str(kh))
    d = sshd.remote_dir("marks")
    p = run(src.home, "imsbackup", "-f", sshd.spec(f"{d}/x.ims"), "/", text=True)
    assert p.returncode == 0, p.stderr
    assert os.listdir(d) == ["x.ims"]
    with open(sshd.host_key + ".pub") as f:
        kind, blob = f.read().split()[:2]
    with open(kh, "a") as f:
        f.write(f"@revoked * {kind} {blob}\n")
    p = run(src.home, "imsbackup", "-f", sshd.spec(f"{d}/y.ims"), "/", text=True)
    assert p.returncode == 11 and "@revoked" in one_line(p.stderr), p.stderr
    assert os.listdir(d) == ["x.ims"]


@pytest.mark.parametrize("others", ["only @revoked", "also a plain line", "another key listed",
                                    "hashed name, tabs"])
def test_revoked_host_key_refused_before_authentication(sshd, tmp_path, others):
    """A host key on a known_hosts @revoked line is refused (exit 11) saying it is
    REVOKED, where, and not to accept it (never the ssh-keyscan advice for an unknown
    key), before any client key is offered: here the client key is one the server
    refuses, so reaching authentication would be exit 12.  The @revoked line may name
    the host hashed (``ssh-keygen -H``) and separate its fields by tabs and runs of
    blanks, as OpenSSH reads them; it never makes the key a known one."""
    with open(sshd.known_hosts) as f:
        plain = f.read()
    impostor = keygen(str(tmp_path / "impostor"))
    with open(impostor + ".pub") as f:
        kind, blob = f.read().split()[:2]
    entry = f"[127.0.0.1]:{sshd.port}"
    before = {"only @revoked": "", "also a plain line": plain, "another key listed": f"{entry} {kind} {blob}\n",
              "hashed name, tabs": "# retired 2026-11-30\n"}[others]
    if others == "hashed name, tabs":
        host_kind, host_blob = sshd.host_pub().split()
        revoked = f"@revoked\t{paramiko.HostKeys.hash_host(entry)}  {host_kind}\t{host_blob} old key\n"
    else:
        revoked = f"@revoked {entry} {sshd.host_pub()}\n"
    kh = tmp_path / "known_hosts"
    kh.write_text(before + revoked)
    dst = home_for(tmp_path, sshd, ssh_knownhosts=str(kh), ssh_identity=sshd.other_key)
    p = run(dst.home, "imsrestore", "-t", "-f", sshd.spec("/nonexistent/x.ims"), text=True)
    assert p.returncode == 11, p.stderr
    line = one_line(p.stderr)
    n = 2 if before else 1
    assert f"of {entry} is REVOKED in {kh} line {n} (@revoked)" in line and "do not accept it" in line
    assert _fingerprint(sshd.host_key + ".pub") in line
    assert "ssh-keyscan" not in line and "not known" not in line and "CHANGED" not in line
    assert kh.read_text() == before + revoked                  # nothing accepted, nothing written


def test_wrong_client_key_refused(sshd, source, tmp_path):
    src = home_for(tmp_path, sshd, source, ssh_identity=sshd.other_key)
    d = sshd.remote_dir("wrongkey")
    p = run(src.home, "imsbackup", "-f", sshd.spec(f"{d}/x.ims"), "/", text=True)
    assert p.returncode == 12
    line = one_line(p.stderr)
    assert "authentication failed" in line and sshd.other_key in line
    assert os.listdir(d) == []


def _client_key(tmp_path, kind: str, passphrase: str = "") -> str:
    """A new client key: 'rsa' and 'ecdsa' in OpenSSH's format, 'rsa-pem' the old PEM one."""
    path = str(tmp_path / f"key-{kind}")
    t, extra = {"rsa": ("rsa", ["-b", "2048"]), "ecdsa": ("ecdsa", []),
                "rsa-pem": ("rsa", ["-b", "2048", "-m", "PEM"]), "ed25519": ("ed25519", [])}[kind]
    subprocess.run(["ssh-keygen", "-q", "-t", t, *extra, "-N", passphrase, "-C", "t", "-f", path], check=True)
    return path


@pytest.mark.parametrize("kind", ["rsa", "ecdsa", "rsa-pem"])
@pytest.mark.parametrize("where", ["ssh.identity", "~/.ssh"])
def test_unaccepted_key_of_every_type_is_refused_authentication(sshd, tmp_path, kind, where):
    """A key the server does not list is exit 12 "authentication failed ... add the
    public key", whatever its type and format, as ssh.identity or as ~/.ssh/id_*: not
    "cannot connect (exit 10): Invalid key" from paramiko's key loading."""
    key = _client_key(tmp_path, kind)
    if where == "~/.ssh":                        # HOME is tmp_path (the _env fixture)
        (tmp_path / ".ssh").mkdir()
        default = str(tmp_path / ".ssh" / ("id_ecdsa" if kind == "ecdsa" else "id_rsa"))
        os.rename(key, default)
        key = default
        dst = home_for(tmp_path, sshd)
        dst.unset("ssh.identity")
    else:
        dst = home_for(tmp_path, sshd, ssh_identity=key)
    p = run(dst.home, "imsrestore", "-t", "-f", sshd.spec("/nonexistent/x.ims"), text=True)
    assert p.returncode == 12, p.stderr
    line = one_line(p.stderr)
    assert "authentication failed" in line and key in line and "add the public key" in line


def test_accepted_rsa_key_and_unusable_keys(sshd, tmp_path):
    """An RSA key the server lists logs in; a passphrase-protected key, and an agent
    that holds no key with no key file, are exit 12 saying so."""
    rsa = _client_key(tmp_path, "rsa")
    with open(rsa + ".pub") as f, open(os.path.join(sshd.dir, "authorized_keys", sshd.user), "a") as ak:
        ak.write(f.read())
    dst = home_for(tmp_path, sshd, ssh_identity=rsa)
    p = run(dst.home, "imsrestore", "-t", "-f", sshd.spec("/nonexistent/x.ims"), text=True)
    assert p.returncode == 3 and "does not exist" in one_line(p.stderr), p.stderr   # logged in
    (tmp_path / "pp").mkdir()
    locked = _client_key(tmp_path / "pp", "ed25519", passphrase="secret words")
    dst.set("ssh.identity", locked)
    p = run(dst.home, "imsrestore", "-t", "-f", sshd.spec("/nonexistent/x.ims"), text=True)
    assert p.returncode == 12, p.stderr
    assert "passphrase-protected" in one_line(p.stderr) and locked in p.stderr
    dst.unset("ssh.identity")
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True).stdout
    sock = agent.split("SSH_AUTH_SOCK=")[1].split(";")[0]
    pid = int(agent.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        p = run(dst.home, "imsrestore", "-t", "-f", sshd.spec("/nonexistent/x.ims"), text=True,
                env={"SSH_AUTH_SOCK": sock})
    finally:
        os.kill(pid, signal.SIGTERM)
    assert p.returncode == 12, p.stderr
    assert "no SSH key to offer" in one_line(p.stderr) and "the agent holds no key" in p.stderr


def test_slow_authentication_is_a_timeout_not_a_refused_key(tmp_path, monkeypatch):
    """A server that answers the (authorized) key only after ssh.timeout, as when its
    AuthorizedKeysCommand waits on a hung LDAP server, is exit 10 "did not finish
    authentication within ssh.timeout", never exit 12 "add the public key"."""
    import shutil
    import tempfile
    import tests.sshd as sshd_mod
    sshd_mod.require_sshd()
    safe = tempfile.mkdtemp(prefix="ims-akc-", dir="/run")    # sshd runs the command only from root-owned dirs
    try:
        os.chmod(safe, 0o755)
        keys = os.path.join(safe, "keys")
        with open(os.path.join(safe, "slow-keys"), "w") as f:
            f.write(f"#!/bin/sh\nsleep 60\ncat {keys}\n")
        os.chmod(os.path.join(safe, "slow-keys"), 0o755)
        monkeypatch.setattr(sshd_mod, "CONF", sshd_mod.CONF.replace(
            "AuthorizedKeysFile {d}/authorized_keys/%u",
            f"AuthorizedKeysCommand {safe}/slow-keys\nAuthorizedKeysCommandUser nobody\nAuthorizedKeysFile none"))
        with sshd_mod.running_sshd() as server:
            shutil.copy(server.client_key + ".pub", keys)
            os.chmod(keys, 0o644)
            dst = home_for(tmp_path, server, ssh_timeout="2")
            t0 = time.monotonic()
            p = run(dst.home, "imsrestore", "-t", "-f", server.spec("/nonexistent/x.ims"), text=True, timeout=50)
            took = time.monotonic() - t0
    finally:
        shutil.rmtree(safe, ignore_errors=True)
    assert p.returncode == 10, p.stderr
    line = one_line(p.stderr)
    assert "did not finish authentication within ssh.timeout (2 s)" in line and "add the public key" not in line
    assert took < 40


def test_connection_refused(sshd, source, tmp_path):
    src = home_for(tmp_path, sshd, source)
    p = run(src.home, "imsbackup", "-f", f"imsbk@127.0.0.1:{free_port()}:/tmp/x.ims", "/", text=True)
    assert p.returncode == 10
    assert "Connection refused" in one_line(p.stderr)


def test_missing_remote_archive(sshd, tmp_path):
    dst = home_for(tmp_path, sshd)
    d = sshd.remote_dir("missing")
    p = run(dst.home, "imsrestore", "-f", sshd.spec(f"{d}/nope.ims"), "/", text=True)
    assert p.returncode == 3 and "does not exist" in one_line(p.stderr)


def test_known_hosts_with_the_old_and_new_key_of_a_rotation(sshd, source, tmp_path):
    """A host key rotation leaves two lines of one key type for the host, the old key
    first: OpenSSH accepts the host when any of them is the key it offers, so does
    imsbackup.  A key that is none of them is still CHANGED (exit 11), both named."""
    old, other = keygen(str(tmp_path / "old")), keygen(str(tmp_path / "other"))
    lines = []
    for k in (old, other):
        with open(k + ".pub") as f:
            kind, blob = f.read().split()[:2]
        lines.append(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    with open(sshd.known_hosts) as f:
        real = f.read()
    kh = tmp_path / "known_hosts"
    kh.write_text(lines[0] + real)
    src = home_for(tmp_path, sshd, source, ssh_knownhosts=str(kh))
    d = sshd.remote_dir("rotation")
    p = run(src.home, "imsbackup", "-f", sshd.spec(f"{d}/x.ims"), "/primary/user/alice", text=True)
    assert p.returncode == 0, p.stderr
    assert os.listdir(d) == ["x.ims"]
    kh.write_text(lines[0] + lines[1])
    p = run(src.home, "imsbackup", "-f", sshd.spec(f"{d}/y.ims"), "/primary/user/alice", text=True)
    assert p.returncode == 11, p.stderr
    line = one_line(p.stderr)
    assert "CHANGED" in line and _fingerprint(old + ".pub") in line and _fingerprint(other + ".pub") in line
    assert _fingerprint(sshd.host_key + ".pub") in line and os.listdir(d) == ["x.ims"]
