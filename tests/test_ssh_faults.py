"""Remote devices over SSH when the far side fails, against a real OpenSSH server on
127.0.0.1 (tests/sshd.py): the server killed or frozen during a transfer or while SFTP
starts, a full far disk or device, a busy far side that still answers, and seekable reads
under load.  The everyday paths, host keys and keys: tests/test_ssh.py (whose fixtures
and helpers these tests share; a file of their own so that two workers run them)."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time

import paramiko
import pytest

from asm.config import Config
from asm.store import open_store
from plugins.ssh import fetch, push
from plugins.ssh.connection import Settings
from tests import test_ssh
from tests.faults import run_with_fault, spread
from tests.helpers import make_home, popen, run
from tests.test_ssh import PLUGINS, _remote_fifo, home_for, one_line, restored

# the fixtures of tests/test_ssh.py, each built again for this module (module scope)
_env, source, stream = test_ssh._env, test_ssh.source, test_ssh.stream


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


def _whole_bulky(path) -> bool:
    """Whether ``path`` is a complete archive of the bulky store (its 16 messages)."""
    from asm.archive.reader import ArchiveReader
    with open(path, "rb") as f:
        r = ArchiveReader(f)
        n = sum(1 for _ in r.members())
    return r.complete and r.trailer["counts"]["messages"] == 16 and n > 16


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


# -- a backup stopped by a signal (an engine's SIGTERM) mid-write ----------------------
def _cut_after(monkeypatch, cls, name, n: int):
    """Make the ``n``-th call of ``cls.name(self, data)`` (a method that writes all of
    ``data``) write only its first half, then raise KeyboardInterrupt: a SIGTERM landing
    in the middle of sending, as it does in a backup killed by its engine."""
    real = getattr(cls, name)
    calls = [0]

    def cut(self, data, *a, **kw):
        calls[0] += 1
        if calls[0] == n:
            real(self, bytes(data)[:max(1, len(data) // 2)], *a, **kw)
            raise KeyboardInterrupt
        return real(self, data, *a, **kw)
    monkeypatch.setattr(cls, name, cut)


@pytest.mark.parametrize("layer,n", [("sftp", 1), ("sftp", 3), ("sftp", 9), ("sftp", 40),
                                     ("ssh", 2), ("ssh", 7), ("ssh", 30)])
def test_sftp_write_cut_by_a_signal_leaves_no_partial_file(sshd, tmp_path, monkeypatch, layer, n):
    """ssh.stream sftp (and so every sftp-only account): a SIGTERM that lands while an
    SFTP write request is half sent (the SFTP channel then out of step: "sftp"), or while
    an SSH packet is half written (the whole session out of step: "ssh"), at the n-th
    send of the backup.  Closing the device as failed removes the temporary file all the
    same -- over a new channel, or a new session -- within ssh.timeout, with the link
    alive (docs/ssh.md); nothing stays on the far side."""
    import paramiko.packet
    import paramiko.sftp

    from plugins.ssh import device
    from plugins.ssh.connection import Settings, connect
    from plugins.ssh.spec import parse
    d = sshd.remote_dir(f"cut-{layer}-{n}")
    spec = sshd.spec(f"{d}/full.ims")
    settings = Settings(identity=sshd.client_key, knownhosts=sshd.known_hosts, timeout=5, stream="sftp")
    rs = parse(spec)
    dev = device.open_write(spec, connect(rs, settings), rs.path, 10240)
    assert [x.endswith(".partial") for x in os.listdir(d)] == [True]
    if layer == "sftp":
        _cut_after(monkeypatch, paramiko.sftp.BaseSFTP, "_write_all", n)
    else:
        _cut_after(monkeypatch, paramiko.packet.Packetizer, "write_all", n)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        for _ in range(4000):                    # up to 40 MiB: the cut comes first
            dev.file.write(os.urandom(10240))
    monkeypatch.undo()
    dev.close(ok=False)
    assert time.monotonic() - t0 < 4, "the removal waited for an answer that never comes"
    assert os.listdir(d) == []


@pytest.mark.parametrize("stream", ["sftp", "auto"])
def test_sigterm_anywhere_in_a_remote_backup_leaves_no_partial_file(sshd, bulky, tmp_path, stream):
    """imsbackup -f HOST:PATH (ssh.stream sftp, and auto: cat on an exec channel)
    SIGTERM'd by its engine at 14 points spread over a whole run -- before the file is
    made, while it is written, while it is finished (every write answered, checked,
    renamed): exit 130, one line, and nothing left on the far side (or, in its first
    tenths of a second, the default end of SIGTERM, nothing begun); or, once the archive
    is in place, exit 0 (no "interrupted" for a complete archive) and the archive whole.
    (Once a SIGTERM while an SFTP backup finished left its temporary file: the signal
    was "held" by the main thread's mask, and paramiko's thread took it.)"""
    big = Config(str(bulky["home"]))
    src = home_for(tmp_path, sshd, name="src", ssh_stream=stream, store_root=big.store_root,
                   **{"partition:primary_path": big.partitions()["primary"]})
    d = sshd.remote_dir(f"sigterm-{stream}")
    took = 1e9
    for _ in range(2):          # (the faster of two: a first, cold, run set points past the end)
        t0 = time.monotonic()
        run(src.home, "imsbackup", "-f", sshd.spec(f"{d}/full.ims"), "/", check=0)
        took = min(took, time.monotonic() - t0)
        assert _whole_bulky(os.path.join(d, "full.ims"))
        os.unlink(os.path.join(d, "full.ims"))
    outcomes = []
    for k in range(14):
        delay = took * 1.1 * (k + 0.5) / 14
        proc = popen(src.home, "imsbackup", "-f", sshd.spec(f"{d}/full.ims"), "/",
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0:
            assert os.listdir(d) == ["full.ims"], (delay, os.listdir(d), err)
            assert err == "" and _whole_bulky(os.path.join(d, "full.ims")), (delay, err)
            os.unlink(os.path.join(d, "full.ims"))
        else:
            # (-15: in its first tenths of a second, while Python starts, as the signal
            # does by default -- nothing done yet, docs/operations.md)
            assert proc.returncode in (130, -signal.SIGTERM), (delay, proc.returncode, err)
            if proc.returncode == 130:
                assert "interrupted" in one_line(err), err
            assert os.listdir(d) == [], (delay, proc.returncode, os.listdir(d), err)
        outcomes.append(proc.returncode)
    assert outcomes.count(130) >= 7, outcomes       # (the points fell inside the runs)


@pytest.mark.parametrize("stream", ["auto", "sftp"])
def test_a_sigterm_landing_inside_paramiko_anywhere_ends_the_backup_cleanly(sshd, bulky, tmp_path, stream):
    """SIGTERM raised inside paramiko's own code (tests/fault: at the N-th return of a
    built-in call made from paramiko -- a lock's acquire(), a socket send, a cipher
    update -- on the main thread), at 30 points spread over a whole remote backup, both
    streams: each run ends within a minute, exit 130 "interrupted" and nothing on the far
    side, or exit 0 with the whole archive in place.  (A SIGTERM from an engine once
    landed between a paramiko lock's acquire() and its try: the lock stayed taken and
    the backup, closing its channel, waited for it for ever -- 1 run in about 250.)"""
    big = Config(str(bulky["home"]))
    src = home_for(tmp_path, sshd, name="src", ssh_stream=stream, store_root=big.store_root,
                   **{"partition:primary_path": big.partitions()["primary"]})
    d = sshd.remote_dir(f"inside-{stream}")
    argv = ["imsbackup", "-f", sshd.spec(f"{d}/full.ims"), "/"]
    env = {"IMS_HOME": src.home}
    out = tmp_path / "points"
    run_with_fault(argv, tmp_path, f"sshcount:{out}", env=env).check_returncode()
    total = int(out.read_text())
    assert total > 1000, total                  # (the count reaches paramiko's sends)
    os.unlink(os.path.join(d, "full.ims"))
    bad, outcomes = [], []
    for n in spread(total, 30, seed=17 if stream == "auto" else 29):
        try:
            p = run_with_fault(argv, tmp_path, f"sshterm:{n}", env=env, timeout=60)
        except subprocess.TimeoutExpired:
            bad.append((n, "hung: no end within 60 s"))
            break
        err = p.stderr.decode("utf-8", "replace")
        left = sorted(os.listdir(d))
        outcomes.append(p.returncode)
        if p.returncode == 0:
            if left != ["full.ims"] or not _whole_bulky(os.path.join(d, "full.ims")) or err:
                bad.append((n, 0, left, err))
        elif p.returncode != 130 or "interrupted" not in one_line(err) or left:
            bad.append((n, p.returncode, left, err))
        for name in left:
            os.unlink(os.path.join(d, name))
    assert not bad, bad
    assert outcomes.count(130) >= 20, outcomes       # (the points fell inside the runs)


def test_a_sigterm_landing_inside_paramiko_anywhere_ends_the_restore_and_a_rerun_is_exact(sshd, bulky, tmp_path):
    """The same for a restore reading a remote archive over SFTP, at 16 points: each run
    ends within a minute, exit 130 "interrupted" (or 0); run again, the store is the
    backed-up one, byte for byte."""
    import shutil
    want = test_ssh.snapshot(open_store(Config(str(bulky["home"]))))
    d = sshd.remote_dir("inside-restore")
    shutil.copyfile(bulky["archive"], os.path.join(d, "full.ims"))
    os.chown(os.path.join(d, "full.ims"), sshd.pw.pw_uid, sshd.pw.pw_gid)
    argv = ["imsrestore", "-f", sshd.spec(f"{d}/full.ims"), "/"]
    probe = home_for(tmp_path, sshd, name="probe")
    out = tmp_path / "points"
    run_with_fault(argv, tmp_path, f"sshcount:{out}", env={"IMS_HOME": probe.home}).check_returncode()
    total = int(out.read_text())
    assert total > 1000, total
    bad, outcomes = [], []
    for i, n in enumerate(spread(total, 16, seed=41)):
        dst = home_for(tmp_path, sshd, name=f"dst{i}")
        try:
            p = run_with_fault(argv, tmp_path, f"sshterm:{n}", env={"IMS_HOME": dst.home}, timeout=60)
        except subprocess.TimeoutExpired:
            bad.append((n, "hung: no end within 60 s"))
            break
        err = p.stderr.decode("utf-8", "replace")
        outcomes.append(p.returncode)
        if p.returncode not in (0, 130) or (p.returncode == 130) != ("interrupted" in err) \
                or (p.returncode == 130 and len([ln for ln in err.splitlines() if ln.strip()]) != 1):
            bad.append((n, p.returncode, err))
            continue
        again = run(dst.home, *argv)
        if again.returncode != 0 or restored(dst.home) != want:
            bad.append((n, "rerun", again.returncode, again.stderr[-300:]))
        shutil.rmtree(dst.home)
    assert not bad, bad
    assert outcomes.count(130) >= 10, outcomes


@pytest.mark.parametrize("layer,n", [("sftp", 10), ("sftp", 30), ("ssh", 12), ("ssh", 40)])
def test_push_cut_by_a_signal_leaves_no_partial_file(sshd, tmp_path, monkeypatch, layer, n):
    """The staging push (imsstage SIGTERM'd while it pushes a dump) writes as the SFTP
    device does: a signal mid-request leaves nothing on the far side either."""
    import paramiko.packet
    import paramiko.sftp
    d = sshd.remote_dir(f"push-cut-{layer}-{n}")
    local = tmp_path / "g.ims"
    local.write_bytes(os.urandom(3_000_000))
    settings = Settings(identity=sshd.client_key, knownhosts=sshd.known_hosts, timeout=5)
    if layer == "sftp":
        _cut_after(monkeypatch, paramiko.sftp.BaseSFTP, "_write_all", n)
    else:
        _cut_after(monkeypatch, paramiko.packet.Packetizer, "write_all", n)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        push(str(local), sshd.spec(d + "/"), settings)
    assert time.monotonic() - t0 < 4, "the removal waited for an answer that never comes"
    assert os.listdir(d) == []


def test_a_full_far_devices_message_that_trails_dds_exit_status_is_waited_for():
    """sshd may send a far command's exit status before the last of its stderr: a far
    ``dd`` at the end of /dev/full was "dd exited 1", exit 3, once (CI, under load), where
    "No space left on device" came a moment later (exit 13).  Once the exit status is in,
    the stderr is read until the channel's data ends (EOF), a bounded while: here it
    arrives 0.3 s after the exit status."""
    import types
    from plugins.ssh import device
    from plugins.ssh import RemoteDiskFull

    chan = _LateStderrChan(1, b"dd: error writing '/dev/full': No space left on device\n1+0 records in\n", 0.3)
    try:
        conn = types.SimpleNamespace(label="imsbk@[127.0.0.1]:22")
        lines = device._stderr_lines(chan, device.STDERR_SETTLE)
        exc = device._dd_failed(conn, "/dev/full", lines, "dd exited 1")
    finally:
        chan.timer.cancel()
    assert isinstance(exc, RemoteDiskFull), exc
    assert "no space left on imsbk@[127.0.0.1]:22 in /dev/full" in str(exc), exc


class _LateStderrChan:
    """A finished far command whose stderr arrives ``delay`` seconds after its exit status."""

    eof_received = closed = False

    def __init__(self, status: int, err: bytes, delay: float):
        import threading
        self.status, self._err = status, b""
        self.timer = threading.Timer(delay, self._late, (err,))
        self.timer.start()

    def _late(self, err):
        self._err = err
        self.eof_received = True

    def exit_status_ready(self):
        return True

    def recv_exit_status(self):
        return self.status

    def recv_stderr_ready(self):
        return bool(self._err)

    def recv_stderr(self, n):
        out, self._err = self._err[:n], self._err[n:]
        return out


def test_a_full_far_disks_message_that_trails_cats_exit_status_is_waited_for():
    """The far ``cat > TMP`` writer of an archive: its "No space left on device" may come
    after its exit status, as dd's does (above); without the wait the backup ended "cat
    exited 1", an I/O error, where the remote disk was full (exit 13)."""
    import errno as errno_mod
    from plugins.ssh import device

    sink = object.__new__(device._CatSink)
    sink.chan = _LateStderrChan(1, b"cat: write error: No space left on device\n", 0.3)
    try:
        why = sink._failed()
    finally:
        sink.chan.timer.cancel()
    assert isinstance(why, OSError) and why.errno == errno_mod.ENOSPC, why
    assert "No space left on device" in str(why), why


def test_a_far_readers_message_that_trails_its_exit_status_is_waited_for():
    """The far reader of an archive (``exec dd if=...``): its reason arrives after its exit
    status; the error names it rather than "remote command exited 1"."""
    import types
    from plugins.ssh import device
    from plugins.ssh import RemoteError

    chan = _LateStderrChan(1, b"dd: error reading '/backup/a.ims': Input/output error\n", 0.3)
    conn = types.SimpleNamespace(label="imsbk@[127.0.0.1]:22", recv=lambda c, n: b"",
                                 exit_status=lambda c: 1, alive=lambda: True)
    reader = device._ExecReader(conn, chan, "/backup/a.ims")
    try:
        with pytest.raises(RemoteError) as info:
            reader.read()
    finally:
        chan.timer.cancel()
    assert "reading /backup/a.ims failed: dd: error reading '/backup/a.ims': Input/output error" \
        in str(info.value), info.value


def _own_login(sshd, name: str, bashrc: str = ""):
    """A login of this module's sshd with the client's key and its own ~/.bashrc (which
    bash reads under sshd before a command): a far side that behaves as a test needs,
    and whose processes are this test's alone (pgrep -u)."""
    import shutil
    from tests.sshd import ensure_user
    pw = ensure_user(name)
    with open(os.path.join(pw.pw_dir, ".bashrc"), "w") as f:
        f.write(bashrc)
    akdir = os.path.join(sshd.dir, "authorized_keys")
    shutil.copy(sshd.client_key + ".pub", os.path.join(akdir, name))
    os.chmod(os.path.join(akdir, name), 0o644)
    return pw


def test_a_sigterm_while_a_slow_far_shell_starts_cat_leaves_no_temporary_file(sshd, source, tmp_path):
    """imsbackup -f HOST:PATH with ssh.stream auto writes through ``exec cat > TMP``.  A
    SIGTERM while that command starts: the temporary file was removed (over a new
    session) before the far shell had opened ``> TMP``, which then made it again: exit
    130, "interrupted", and ``.full.ims.*.partial`` left on the far side (CI under load,
    1 of 14 points of test_sigterm_anywhere_in_a_remote_backup_leaves_no_partial_file
    [auto]).  Here the far shell is slow to start every time (a login whose ~/.bashrc,
    which bash reads under sshd, sleeps): the far cat is now ended and awaited before
    the removal, and every run ends 130 with nothing left."""
    import pwd
    import sys
    slow = "imsbkslow"
    pw = _own_login(sshd, slow, bashrc="sleep 0.4\n")   # (read by bash -c under sshd, first)
    d = sshd.remote_dir("sigterm-cat-start")
    os.chown(d, pw.pw_uid, pw.pw_gid)
    src = home_for(tmp_path, sshd, source, ssh_stream="auto")
    script = tmp_path / "imsbackup"     # (named as the command: asm takes its early signals)
    script.write_text(
        "import os, signal, sys\n"
        "import paramiko\n"
        "real = paramiko.Channel.exec_command\n"
        "def started(self, command):\n"
        "    real(self, command)\n"
        "    if command.startswith('exec cat > '):   # an engine's SIGTERM as sshd starts it\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        for _ in range(1000): pass\n"
        "paramiko.Channel.exec_command = started\n"
        "from asm.cli.imsbackup import main\n"
        "sys.exit(main())\n")
    assert pwd.getpwnam(slow).pw_shell.endswith("bash")
    for i in range(4):
        p = run(src.home, sys.executable, script, "-f", sshd.spec(f"{d}/full.ims", user=slow), "/", text=True)
        assert p.returncode == 130 and "interrupted" in one_line(p.stderr), (i, p.returncode, p.stderr)
        time.sleep(0.6)         # (a far shell that would make the file late has made it by now)
        assert os.listdir(d) == [], (i, os.listdir(d))


@pytest.mark.parametrize("how", ["sftp open", "cat exec", "push"])
def test_a_sigterm_while_the_far_side_has_not_yet_made_the_temporary_file_leaves_none(sshd, source, tmp_path,
                                                                                     how):
    """A SIGTERM while the request that makes the temporary file is unanswered (the far
    sshd slow: here stopped for a second): the SFTP open of imsbackup -f HOST:PATH (and
    of the staging push), or the exec of its far ``cat > TMP`` (ssh.stream auto).  The
    signal waits for paramiko's call to return (asm.interrupts), and is then taken at the
    next call: after the exec, outside the code that removes the file on the way out, and
    ``.full.ims.*.partial`` was left with exit 130.  Every run: 130, nothing left."""
    import subprocess as sp
    import sys
    login = "imsbkstop"
    pw = _own_login(sshd, login)
    d = sshd.remote_dir(f"sigterm-made-{how.replace(' ', '-')}")
    os.chown(d, pw.pw_uid, pw.pw_gid)
    local = tmp_path / "g.ims"
    local.write_bytes(os.urandom(200_000))
    src = home_for(tmp_path, sshd, source, ssh_stream="auto" if how == "cat exec" else "sftp")
    call = ("from asm.cli.imsbackup import main\nsys.exit(main())\n" if how != "push" else
            "from plugins.ssh import push\nfrom plugins.ssh.connection import Settings\n"
            "from asm.cli.common import run_command\n"
            f"s = Settings(identity={sshd.client_key!r}, knownhosts={sshd.known_hosts!r}, timeout=10)\n"
            f"sys.exit(run_command('imsbackup', lambda a: push({str(local)!r}, {sshd.spec(d + '/', user=login)!r}, s) "
            f"and 0, []))\n")
    cls, meth, test = (("paramiko.Channel", "exec_command", "args[0].startswith('exec cat > ')")
                       if how == "cat exec" else ("paramiko.SFTPClient", "open", "'x' in args[1]"))
    script = tmp_path / "imsbackup"     # (named as the command: asm takes its early signals)
    script.write_text(
        "import os, signal, subprocess, sys, threading\n"
        "import paramiko\n"
        f"real = {cls}.{meth}\n"
        "def stopped(self, *args, **kw):\n"
        f"    if {test}:\n"
        f"        subprocess.run(['pkill', '-STOP', '-u', {login!r}])   # the far side stops\n"
        "        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
        f"        threading.Timer(1.0, subprocess.run, (['pkill', '-CONT', '-u', {login!r}],)).start()\n"
        "    return real(self, *args, **kw)\n"
        f"{cls}.{meth} = stopped\n"
        + call)
    try:
        for i in range(3):
            argv = [sys.executable, script] + (["-f", sshd.spec(f"{d}/full.ims", user=login), "/"]
                                               if how != "push" else [])
            p = run(src.home, *argv, text=True, timeout=60)
            assert p.returncode == 130 and "interrupted" in one_line(p.stderr), (i, p.returncode, p.stderr)
            time.sleep(1.5)         # (the far side goes on at 1.0 s: what it makes is there by now)
            assert os.listdir(d) == [], (i, os.listdir(d))
    finally:
        sp.run(["pkill", "-CONT", "-u", login])
