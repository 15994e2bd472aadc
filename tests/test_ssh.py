"""Remote devices over SSH against a real OpenSSH server on 127.0.0.1: imsbackup and
imsrestore run as commands with ``-f imsbk@127.0.0.1:PORT:/path``, the staging push and
fetch, and every failure a user meets (host keys, keys, refused, killed, disk full)."""
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
from tests.helpers import block_device, free_port, make_home, popen, run
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
                                       ("ssh://", "bad remote device")])
def test_a_device_string_naming_no_remote_file_is_a_usage_error(sshd, source, tmp_path, dev, said):
    """A -f that can name no archive file is exit 2 (bad path, nothing was done), as
    s3://bkt is: never exit 3, which says a device failed and to fix the device."""
    src = home_for(tmp_path, sshd, source)
    for argv in (["imsbackup", "-f", dev, "/primary/user/bob"], ["imsrestore", "-t", "-f", dev]):
        p = run(src.home, *argv, text=True)
        assert p.returncode == 2, (argv, p.stderr)
        assert said in one_line(p.stderr) and repr(dev) in p.stderr


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


# -- the far side failing during a transfer ---------------------------------------
def test_server_killed_mid_transfer(sshd, source, tmp_path, stream):
    src = home_for(tmp_path, sshd, source, ssh_stream=stream)
    d = sshd.remote_dir(f"killed-{stream}")
    proc = popen(src.home, "imsbackup", "-b", "1", "-f", sshd.spec(f"{d}/x.ims"), "/",
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    stopped = False
    while time.monotonic() < deadline and proc.poll() is None:
        parts = [n for n in os.listdir(d) if n.endswith(".partial")]
        if parts and os.path.getsize(os.path.join(d, parts[0])) >= 64 * 1024:
            proc.send_signal(signal.SIGSTOP)         # freeze the backup mid-stream ...
            stopped = True
            break
        time.sleep(0.002)
    assert stopped, "the backup finished before it could be interrupted"
    assert sshd.kill_sessions()                      # ... drop the server side of the link ...
    proc.send_signal(signal.SIGCONT)                 # ... and let it find out
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 14, err
    line = one_line(err)
    assert "lost" in line and "incomplete" in line
    assert "x.ims" not in os.listdir(d)              # nothing that looks complete
    assert all(n.startswith(".x.ims.") and n.endswith(".partial") for n in os.listdir(d))


def test_link_lost_during_restore(sshd, source, tmp_path):
    src = home_for(tmp_path, sshd, source)
    d = sshd.remote_dir("readkill")
    p = run(src.home, "imsbackup", "-f", sshd.spec(f"{d}/x.ims"), "/", text=True)
    assert p.returncode == 0, p.stderr
    dst = home_for(tmp_path, sshd, name="dst")
    before = set(sshd.session_pids())
    proc = popen(dst.home, "imsrestore", "-f", sshd.spec(f"{d}/x.ims"), "/",
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None and not set(sshd.session_pids()) - before:
        time.sleep(0.002)
    time.sleep(0.3)                                  # the restore is reading by now
    proc.send_signal(signal.SIGSTOP)
    assert proc.poll() is None, "the restore finished before it could be interrupted"
    assert sshd.kill_sessions()
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 14, err
    assert "lost" in one_line(err)


def test_far_disk_full(sshd, source, tmp_path, stream):
    src = home_for(tmp_path, sshd, source, ssh_stream=stream)
    try:
        d = sshd.remote_dir(f"full-{stream}", tmpfs_size="1m")
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test (needs root): {exc.stderr}")
    p = run(src.home, "imsbackup", "-f", sshd.spec(f"{d}/x.ims"), "/", text=True)
    assert p.returncode == 13, p.stderr
    line = one_line(p.stderr)
    assert "no space left" in line and "incomplete" in line
    assert os.listdir(d) == []                        # the partial file was removed
    settings = Settings(identity=sshd.client_key, knownhosts=sshd.known_hosts, timeout=10)
    big = tmp_path / "big"
    big.write_bytes(os.urandom(2 << 20))
    from plugins.ssh import RemoteDiskFull
    with pytest.raises(RemoteDiskFull):
        push(str(big), sshd.spec(d + "/"), settings)
    assert os.listdir(d) == []


@pytest.mark.parametrize("size", ["small", "bulky"])
def test_full_remote_device(sshd, source, bulky, tmp_path, size):
    """A far character device that is full (a tape at its end; here /dev/full) is exit
    13 with "no space left", as the same device written locally is, for an archive
    that fits SSH's window (one user) and one far larger (bulky)."""
    what = "/"
    if size == "small":
        cfg, what = home_for(tmp_path, sshd, source), "/primary/user/alice"
    else:
        cfg = Config(str(bulky["home"]))
        for k, v in (("ssh.identity", sshd.client_key), ("ssh.knownhosts", sshd.known_hosts),
                     ("ssh.timeout", "10"), ("ssh.keepalive", "30")):
            cfg.set(k, v)
    p = run(cfg.home, "imsbackup", "-f", sshd.spec("/dev/full"), what, text=True)
    assert p.returncode == 13, p.stderr
    line = one_line(p.stderr)
    assert "no space left on" in line and "/dev/full" in line and "incomplete" in line


@pytest.mark.parametrize("exc, alive, lost", [(ConnectionResetError(104, "Connection reset by peer"), True, True),
                                              (EOFError(), True, True), (OSError("x"), False, True),
                                              (paramiko.SSHException("Channel closed."), True, False)])
def test_a_link_lost_while_sftp_starts_is_a_lost_link_not_a_missing_subsystem(exc, alive, lost):
    """A reset right after login (the server restarted, a flaky link) is exit 14, run
    again; only a server that is still there and refuses SFTP is told to enable it."""
    from plugins.ssh.connection import Connection
    from plugins.ssh.errors import LinkLost, RemoteError
    from plugins.ssh.spec import parse

    class Transport:
        def is_active(self):
            return alive

        def open_session(self, timeout=None):
            raise exc

    class Client:
        def get_transport(self):
            return Transport()

        def close(self):
            pass
    conn = Connection(Client(), parse("u@h:/x"), "u", 22, Settings())
    with pytest.raises(RemoteError) as got:
        conn.sftp
    assert isinstance(got.value, LinkLost) == lost, got.value
    assert ("no SFTP subsystem" in str(got.value)) != lost


def test_sftp_server_that_never_answers_fails_after_ssh_timeout(tmp_path, monkeypatch):
    """docs/ssh.md: ssh.timeout bounds each SFTP answer, the start of the SFTP session
    too.  An sftp-server that never answers (a home directory on a dead NFS mount) is
    exit 14 after ssh.timeout, naming what was being started, not a restore that waits
    for ever."""
    import tests.sshd as sshd_mod
    sshd_mod.require_sshd()
    monkeypatch.setattr(sshd_mod, "CONF", sshd_mod.CONF.replace(
        "Subsystem sftp internal-sftp", "Subsystem sftp /bin/sleep 600"))
    with sshd_mod.running_sshd() as server:
        dst = home_for(tmp_path, server, ssh_timeout="2")
        d = server.remote_dir("mute")
        with open(os.path.join(d, "x.ims"), "wb") as f:
            f.write(b"\0" * 10240)
        proc = popen(dst.home, "imsrestore", "-t", "-f", server.spec(f"{d}/x.ims"),
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("imsrestore still waits 60 s for an SFTP server that never answers (ssh.timeout=2)")
    assert proc.returncode == 14, err
    line = one_line(err)
    assert "no answer within ssh.timeout (2 s) while starting SFTP" in line and "run the command again" in line


def _post_auth(sshd, pid: int) -> bool:
    """Whether ``pid`` is the sshd process serving the logged-in user (its title names
    the user, without the monitor's "[priv]" or the pre-auth child's "[net]")."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return sshd.user in title and "[" not in title


@pytest.mark.parametrize("when", ["before its channel", "after its channel", "paramiko's channel timer first"])
def test_far_side_frozen_while_sftp_starts(sshd, monkeypatch, when):
    """An sshd frozen right after the login (a paused VM, a hung host) while the SFTP
    session starts: opening its channel, or requesting the subsystem, which paramiko
    waits for without limit: LinkLost (exit 14) after ssh.timeout.  paramiko's own
    timer for opening the channel ("Timeout opening channel.") may fire before ours on
    a loaded host (here it is made to): the same no answer, never "no SFTP subsystem"."""
    import threading
    from plugins.ssh.connection import connect
    from plugins.ssh.errors import LinkLost
    from plugins.ssh.spec import parse
    settings = Settings(identity=sshd.client_key, knownhosts=sshd.known_hosts, timeout=2, keepalive=0)
    before = set(sshd.session_pids())
    conn = connect(parse(sshd.spec("/tmp/x")), settings)
    # the monitor ("sshd: USER [priv]") forks the user's process ("sshd: USER", later
    # "USER@notty") after the login, while the pre-auth child ("[net]") may still be
    # exiting: counting two new processes could freeze the monitor alone, and SFTP start
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(_post_auth(sshd, p) for p in set(sshd.session_pids()) - before):
        time.sleep(0.01)
    frozen: list[int] = []

    def freeze():
        for pid in set(sshd.session_pids()) - before:
            os.kill(pid, signal.SIGSTOP)
            frozen.append(pid)
    transport = conn.client.get_transport()
    if when == "before its channel":
        freeze()
    elif when == "paramiko's channel timer first":
        freeze()
        real = transport.open_session
        monkeypatch.setattr(transport, "open_session", lambda *a, **kw: real(*a, **{**kw, "timeout": 0.5}))
    else:
        real = transport.open_session

        def open_then_freeze(*a, **kw):
            chan = real(*a, **kw)
            freeze()
            return chan
        monkeypatch.setattr(transport, "open_session", open_then_freeze)
    got: list[BaseException] = []

    def start():
        try:
            conn.sftp
        except BaseException as exc:       # noqa: B902 - handed to the test thread
            got.append(exc)
    try:
        t0 = time.monotonic()
        worker = threading.Thread(target=start, daemon=True)
        worker.start()
        worker.join(60)
        assert not worker.is_alive(), "starting SFTP still waits 60 s on a frozen far side (ssh.timeout=2)"
        assert time.monotonic() - t0 < 40
        assert frozen and len(got) == 1 and isinstance(got[0], LinkLost), got
        assert "no answer within ssh.timeout (2 s) while starting SFTP" in str(got[0])
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        conn.close()


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


# -- a far side that stops answering (frozen, not closed) ------------------------------
@pytest.fixture(scope="module")
def bulky(tmp_path_factory):
    """A store of 16 MiB of incompressible mail and a local archive of it: more than
    SSH's 2 MiB window, so a transfer is still going when the far side freezes."""
    import io
    import random
    root = tmp_path_factory.mktemp("bulky")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMS_ASM_PLUGINS", PLUGINS)
        cfg = make_home(root / "home", "classic")
        store = open_store(cfg)
        store.create_user("joe")
        rnd = random.Random(5)
        for i in range(16):
            store.append("joe", "INBOX", io.BytesIO(b"Subject: m%d\r\n\r\n" % i + rnd.randbytes(1 << 20)))
        run(cfg.home, "imsbackup", "-f", root / "bulky.ims", "/", check=0)
    return {"home": cfg.home, "archive": root / "bulky.ims"}


def _freeze_far_side(sshd, proc, ready, what):
    """Stop ``proc`` (our client) once ``ready()``, freeze every process of the far
    side's sessions (sshd and its command: a hung host, a paused VM), go on with the
    client.  Returns the frozen pids (SIGCONT them afterwards)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.002)
    assert proc.poll() is None, f"{what} finished before the far side could be frozen"
    proc.send_signal(signal.SIGSTOP)
    frozen = sshd.session_pids()
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    proc.send_signal(signal.SIGCONT)
    return frozen


def _remote_command(sshd, word):
    def seen():
        for pid in sshd.session_pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[0] == word:
                        return True
            except OSError:
                pass
        return False
    return seen


@pytest.mark.parametrize("target", ["file", "fifo-write", "fifo-read"])
def test_frozen_far_side_fails_after_ssh_timeout(sshd, bulky, tmp_path, target):
    """docs/ssh.md: a link that stops answering fails after ssh.timeout (exit 14) on the
    exec channels too: `cat > TMP` (ssh.stream=auto), `dd of=FIFO` and `cat FIFO`
    (a remote tape), not a command that waits for ever."""
    d = sshd.remote_dir(f"frozen-{target}")
    opts = {"ssh.identity": sshd.client_key, "ssh.knownhosts": sshd.known_hosts,
            "ssh.timeout": "2", "ssh.keepalive": "1"}
    fifo = os.path.join(d, "tape")
    helper = None
    if target == "file":
        cfg = Config(str(bulky["home"]))
        for k, v in opts.items():
            cfg.set(k, v)
        argv, ready = ["imsbackup", "-f", sshd.spec(f"{d}/x.ims"), "/"], _remote_command(sshd, b"cat")
    else:
        _remote_fifo(d, "tape", sshd)
        if target == "fifo-write":      # nobody reads the tape: dd blocks, the window fills
            cfg = Config(str(bulky["home"]))
            argv, ready = ["imsbackup", "-f", sshd.spec(fifo), "/"], _remote_command(sshd, b"dd")
        else:
            cfg = make_home(tmp_path / "dst", "classic")
            helper = subprocess.Popen(["sh", "-c", 'cat "$1" > "$2"', "sh", str(bulky["archive"]), fifo])
            argv, ready = ["imsrestore", "-f", sshd.spec(fifo), "/"], _remote_command(sshd, b"cat")
        for k, v in opts.items():
            cfg.set(k, v)
    proc = popen(cfg.home, *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    frozen = []
    try:
        frozen = _freeze_far_side(sshd, proc, ready, argv[0])
        t0 = time.monotonic()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{argv[0]} still waits 20 s after the far side stopped answering (ssh.timeout=2)")
        assert proc.returncode == 14, err
        assert "no answer within ssh.timeout" in one_line(err)
        assert time.monotonic() - t0 < 15
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if helper is not None:
            helper.kill()
            helper.wait()
        if target == "fifo-write":      # let the far dd open its tape and end
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            time.sleep(0.2)
            os.close(fd)


def test_busy_far_side_is_no_lost_link(sshd, source, tmp_path):
    """A far command that is busy longer than ssh.timeout (a tape loading, a FIFO whose
    reader comes late) while its sshd still answers is waited for, not a lost link."""
    src = home_for(tmp_path, sshd, source, ssh_timeout="1")
    fifo = _remote_fifo(sshd.remote_dir("busy"), "tape", sshd)
    caught = tmp_path / "caught.ims"
    reader = subprocess.Popen(["sh", "-c", 'sleep 4; cat "$1" > "$2"', "sh", fifo, str(caught)])
    p = run(src.home, "imsbackup", "-f", sshd.spec(fifo), "/primary/user/alice", text=True)
    reader.wait(30)
    assert p.returncode == 0, p.stderr
    assert caught.stat().st_size > 0


def test_push_waits_for_a_slow_far_sha256sum(tmp_path, monkeypatch):
    """docs/ssh.md: where the far side has a shell, push compares its sha256sum.  Hashing
    a big dump may take longer than ssh.timeout (each answer of a link): that is a busy
    far side, not a weaker check; push waits for it while the link answers."""
    import shutil
    import tempfile
    import tests.sshd as sshd_mod
    sshd_mod.require_sshd()
    slow = tempfile.mkdtemp(prefix="ims-slowbin-")
    try:
        os.chmod(slow, 0o755)
        with open(os.path.join(slow, "sha256sum"), "w") as f:
            f.write('#!/bin/sh\nsleep 3\nexec /usr/bin/sha256sum "$@"\n')
        os.chmod(os.path.join(slow, "sha256sum"), 0o755)
        monkeypatch.setattr(sshd_mod, "CONF", sshd_mod.CONF.replace(
            "Subsystem sftp", f"SetEnv PATH={slow}:/usr/bin:/bin\nSubsystem sftp"))
        with sshd_mod.running_sshd() as server:
            settings = Settings(identity=server.client_key, knownhosts=server.known_hosts, timeout=1)
            d = server.remote_dir("slowsum")
            local = tmp_path / "dump.ims"
            local.write_bytes(os.urandom(1 << 20))
            r = push(str(local), server.spec(d + "/"), settings)
            assert r.verified == "sha256" and r.sha256 == hashlib.sha256(local.read_bytes()).hexdigest()
            assert os.listdir(d) == ["dump.ims"]
            back = tmp_path / "back.ims"
            assert fetch(server.spec(f"{d}/dump.ims"), str(back), settings).verified == "sha256"
    finally:
        shutil.rmtree(slow, ignore_errors=True)


def test_seekable_remote_reads_under_load_return_every_byte(sshd, tmp_path):
    """The seekable SFTP reader, as a restore from host:/file uses it: seeded random
    reads (sequential runs that read ahead, seeks back and forth) return the file's
    bytes, while another thread keeps the interpreter busy as a loaded machine does.
    paramiko's readv() sent its read requests from a helper thread and could end up
    waiting for an answer to a request it never sent: a healthy link failed as "no
    answer within ssh.timeout" (exit 14), about once in 60 such patterns here."""
    import random
    import sys
    import threading
    from plugins.ssh.connection import connect
    from plugins.ssh.device import open_read
    from plugins.ssh.spec import parse
    d = sshd.remote_dir("seekload")
    data = os.urandom(3 << 20)
    path = os.path.join(d, "a.ims")
    with open(path, "wb") as f:
        f.write(data)
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            pass
    hog = threading.Thread(target=busy, daemon=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    hog.start()
    rnd = random.Random(3)
    settings = Settings(identity=sshd.client_key, knownhosts=sshd.known_hosts, timeout=2, keepalive=0)
    try:
        conn = connect(parse(sshd.spec(path)), settings)
        for pattern in range(80):
            dev = open_read(sshd.spec(path), conn, path)
            pos = 0
            while pos < len(data) and rnd.random() > 0.05:
                if rnd.random() < 0.2:
                    pos = rnd.randrange(len(data))
                dev.file.seek(pos)
                n = rnd.choice([512, 10240, 70000, 200000])
                assert dev.file.read(n) == data[pos:pos + n], (pattern, pos, n)
                pos = min(pos + n, len(data))
            dev.file.close()
        conn.close()
    finally:
        stop.set()
        hog.join()
        sys.setswitchinterval(interval)
