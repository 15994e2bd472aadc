"""The S3 device against real servers on 127.0.0.1 (SeaweedFS, and rclone serve s3 as
a second implementation), no mock: round trips on both drivers with and without
layers, seekable partial restores through ranged GETs, settings from the environment
and from msconfig, and the faults: the server killed during an upload and during a
download (and coming back, or not), a backup killed outright, wrong credentials, a
missing bucket, a full disk on the server."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from asm.config import Config
from asm.store import open_store
from tests.helpers import build, make_home, popen, run, small_tmpfs, state
from tests.s3server import ACCESS, SECRET, running


# small parts, few quick retries: multipart on small stores, faults found in seconds
FAST = {"s3.partsize": "5", "s3.retries": "2", "s3.timeout": "10", "s3.concurrency": "3"}


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    with running("seaweedfs", str(tmp_path_factory.mktemp("seaweed"))) as srv:
        yield srv


@pytest.fixture(scope="module")
def rclone(tmp_path_factory):
    with running("rclone", str(tmp_path_factory.mktemp("rclone"))) as srv:
        yield srv


def setup(home, driver="classic", **options):
    cfg = make_home(home, driver)
    for k, v in {**FAST, **options}.items():
        cfg.set(k, v)
    return cfg


def fresh(tmp_path, driver, name):
    home = tmp_path / name
    setup(home, driver)
    return home, open_store(Config(str(home)))


_n = [0]


def bucket(srv, lock=False) -> str:
    _n[0] += 1
    return srv.bucket(f"t{os.getpid()}-{_n[0]}", lock=lock)


def big_store(home, driver="classic", mib: int = 24):
    """A store of about ``mib`` MiB (a few parts of 5 MiB), messages of 200 KiB."""
    store = build(home, driver, users=4, messages=40)
    import io
    for i in range(mib * 5):
        store.append(f"{store.users('primary')[i % 4]}", "INBOX",
                     io.BytesIO(b"Subject: big %d\r\n\r\n" % i + os.urandom(150_000).hex().encode()[:200_000]))
    return store


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("server", ["seaweed", "rclone"])
def test_round_trip_both_servers(request, tmp_path, driver, server):
    """imsbackup -f s3://bucket/key and imsrestore from it, on both implementations:
    multipart (several 5 MiB parts), every message back; a partial restore of one user
    reads by ranged GETs; the layered archive (zstd + age) works the same."""
    srv = request.getfixturevalue(server)
    b = bucket(srv)
    home = tmp_path / "src"
    setup(home, driver)
    store = big_store(home, driver, mib=12)
    run(home, "imsbackup", "-f", f"s3://{b}/mail/full.ims", "/", env=srv.env(), check=0)
    assert srv.keys(b) == ["mail/full.ims"] and srv.uploads(b) == []
    want = state(store)
    d, s = fresh(tmp_path, driver, "d1")
    run(d, "imsrestore", "-f", f"s3://{b}/mail/full.ims", env=srv.env(), check=0)
    assert state(s) == want
    user = store.users("primary")[1]
    d, s = fresh(tmp_path, driver, "d2")
    run(d, "imsrestore", "-f", f"s3://{b}/mail/full.ims", f"/primary/user/{user}", env=srv.env(), check=0)
    assert state(s) == {k: v for k, v in want.items() if k[0] == user}
    keygen = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout
    key = tmp_path / "key.txt"
    key.write_text(keygen)
    os.chmod(key, 0o600)
    rcpt = [ln.split(": ")[1] for ln in keygen.splitlines() if ln.startswith("# public key")][0]
    run(home, "imsbackup", "-z", "--recipient", rcpt, "-f", f"s3://{b}/mail/enc.ims", "/", env=srv.env(), check=0)
    assert srv.get(b, "mail/enc.ims").startswith(b"age-encryption.org/v1\n")
    d, s = fresh(tmp_path, driver, "d3")
    run(d, "imsrestore", "--identity", key, "-f", f"s3://{b}/mail/enc.ims", f"/primary/user/{user}",
        env=srv.env(), check=0)
    assert state(s) == {k: v for k, v in want.items() if k[0] == user}


def test_settings_from_msconfig_and_a_credentials_file(tmp_path, seaweed):
    """No AWS variables at all: s3.endpoint, s3.region and s3.credentials (a standard
    AWS credentials file with a profile named by s3.profile)."""
    b = bucket(seaweed)
    home = tmp_path / "src"
    creds = tmp_path / "credentials"
    creds.write_text(f"[backup]\naws_access_key_id = {ACCESS}\naws_secret_access_key = {SECRET}\n")
    os.chmod(creds, 0o600)
    setup(home, "classic", **{"s3.endpoint": seaweed.endpoint, "s3.region": "eu-west-1",
                              "s3.credentials": str(creds), "s3.profile": "backup"})
    store = build(home, "classic", users=3, messages=20)
    env = {k: None for k in seaweed.env()}
    env["AWS_CONFIG_FILE"] = str(tmp_path / "none")
    run(home, "imsbackup", "-f", f"s3://{b}/x.ims", "/", env=env, check=0)
    d, s = fresh(tmp_path, "classic", "d")
    for k, v in {"s3.endpoint": seaweed.endpoint, "s3.credentials": str(creds), "s3.profile": "backup"}.items():
        Config(str(d)).set(k, v)
    run(d, "imsrestore", "-f", f"s3://{b}/x.ims", env=env, check=0)
    assert state(s) == state(store)


# --------------------------------------------------------------------------- faults

def test_wrong_credentials_and_missing_bucket(tmp_path, seaweed, rclone):
    """Wrong credentials are exit 12, a missing bucket or object exit 3, whatever the names
    hold: a bucket or key holding "404" (or a server on port 40473, as one CI run had)
    was a missing bucket to wrong credentials, since the error's text was searched for
    "404"."""
    home = tmp_path / "src"
    setup(home)
    build(home, "classic", users=2, messages=10)
    for srv in (seaweed, rclone):
        b = srv.bucket(f"t{os.getpid()}-404-{srv.kind}")
        p = run(home, "imsbackup", "-f", f"s3://{b}/x.ims", "/", env=srv.env(AWS_SECRET_ACCESS_KEY="wrong"), text=True)
        assert p.returncode == 12, p.stderr
        assert "refused the credentials" in p.stderr and len(p.stderr.strip().splitlines()) == 1
        p = run(home, "imsbackup", "-f", "s3://no-such-bucket-here/x.ims", "/", env=srv.env(), text=True)
        assert p.returncode == 3 and "does not exist" in p.stderr and "Traceback" not in p.stderr
        assert "no-such-bucket-here" not in [x["Name"] for x in srv.client().list_buckets()["Buckets"]]
        p = run(home, "imsrestore", "-f", f"s3://{b}/none.ims", "-t", env=srv.env(), text=True)
        assert p.returncode == 3 and "does not exist" in p.stderr
        p = run(home, "imsrestore", "-f", f"s3://{b}/x.ims", "-t", env=srv.env(AWS_SECRET_ACCESS_KEY="wrong"),
                text=True)
        assert p.returncode == 12
        assert srv.keys(b) == [] and srv.uploads(b) == []


def _wait(cond, timeout=60.0, what="") -> None:
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("comes_back", [False, True])
def test_server_killed_during_an_upload(tmp_path, comes_back):
    """Killed once the first part is in: the backup either fails in one line with a
    remote status and leaves no object (the upload is aborted by the next run), or,
    when the server is back within the retries, finishes and restores whole."""
    with running("seaweedfs", str(tmp_path / "srv")) as srv:
        b = bucket(srv)
        home = tmp_path / "src"
        setup(home, **{"s3.retries": "6" if comes_back else "1", "s3.concurrency": "1"})
        store = big_store(home, mib=30)
        p = popen(home, "imsbackup", "-f", f"s3://{b}/k.ims", "/", env=srv.env(), stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
        c = srv.client()
        _wait(lambda: any(c.list_parts(Bucket=b, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")
                          for u in srv.uploads(b)) or p.poll() is not None, what="a first part")
        assert p.poll() is None, "the backup finished before the server could be killed: make the store bigger"
        srv.kill()
        if comes_back:
            time.sleep(0.5)
            srv.start()
        out, err = p.communicate(timeout=300)
        err = err.decode()
        if comes_back:
            assert p.returncode == 0, err
            d, s = fresh(tmp_path, "classic", "d")
            run(d, "imsrestore", "-f", f"s3://{b}/k.ims", env=srv.env(), check=0)
            assert state(s) == state(store)
            return
        assert p.returncode in (10, 14), err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "incomplete" in err
        srv.start()
        assert srv.keys(b) == [] and len(srv.uploads(b)) == 1        # it could not be aborted then
        run(home, "imsbackup", "-f", f"s3://{b}/again.ims", "/primary/user/" + store.users("primary")[0],
            env=srv.env(), check=0)
        assert srv.keys(b) == ["again.ims"] and srv.uploads(b) == []   # ... and the next run did


def test_backup_killed_outright_leaves_nothing_visible(tmp_path, seaweed):
    """SIGKILL in the middle of an upload: no object under the name, and the next run
    aborts the dead run's upload."""
    b = bucket(seaweed)
    home = tmp_path / "src"
    setup(home, **{"s3.concurrency": "1"})
    store = big_store(home, mib=30)
    p = popen(home, "imsbackup", "-f", f"s3://{b}/k.ims", "/", env=seaweed.env(), stderr=subprocess.PIPE)
    _wait(lambda: seaweed.uploads(b) or p.poll() is not None, what="an upload")
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert seaweed.keys(b) == [] and len(seaweed.uploads(b)) == 1
    run(home, "imsbackup", "-f", f"s3://{b}/k.ims", "/primary/user/" + store.users("primary")[0],
        env=seaweed.env(), check=0)
    assert seaweed.keys(b) == ["k.ims"] and seaweed.uploads(b) == []


def _bulky_source(tmp_path, seaweed, mib: int):
    """(a new bucket, an installation holding a store of about ``mib`` MiB, a function
    telling whether object k.ims of that bucket is a whole archive of that store)."""
    import io

    from asm.archive.reader import ArchiveReader
    b = bucket(seaweed)
    home = tmp_path / "src"
    setup(home)
    store = big_store(home, mib=mib)
    count = sum(len(store.messages(u, f)) for u in store.users("primary") for f in store.folder_names(u))

    def whole() -> bool:
        r = ArchiveReader(io.BytesIO(seaweed.get(b, "k.ims")))
        n = sum(1 for m in r.members() if m.kind in ("message", "link"))   # (a link: a copy kept once)
        counts = r.trailer["counts"] if r.complete else {}
        return counts.get("messages", 0) + counts.get("links", 0) == n == count
    return b, home, whole


def test_sigterm_anywhere_in_an_s3_backup_leaves_nothing_visible(tmp_path, seaweed):
    """imsbackup -f s3://... (multipart: 5 MiB parts, 3 at once) SIGTERM'd by its
    engine at 24 points spread over a whole run, 10 of them over its end -- before the
    upload starts, while parts go up, as it completes: exit 130, one line "interrupted", no object under the name
    and no upload left open; or, once the object is complete, exit 0 and the object
    whole (never "interrupted" beside a complete object)."""
    b, home, whole = _bulky_source(tmp_path, seaweed, 14)

    for _ in range(2):                   # (the second, warm, run is timed)
        t0 = time.monotonic()
        run(home, "imsbackup", "-f", f"s3://{b}/k.ims", "/", env=seaweed.env(), check=0)
        took = time.monotonic() - t0
        assert whole()
        seaweed.client().delete_object(Bucket=b, Key="k.ims")
    outcomes = []
    # 14 points over the whole run, 10 more over its end (the upload completed)
    points = [1.1 * (k + 0.5) / 14 for k in range(14)] + [0.75 + 0.3 * k / 9 for k in range(10)]
    for k, at in enumerate(points):
        p = popen(home, "imsbackup", "-f", f"s3://{b}/k.ims", "/", env=seaweed.env(),
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(took * at)
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=90)[1]
        if p.returncode == 0:
            assert err == "" and seaweed.keys(b) == ["k.ims"] and whole(), (k, err)
            seaweed.client().delete_object(Bucket=b, Key="k.ims")
        else:
            # (-15: in its first tenths of a second, while Python starts, as the signal
            # does by default -- nothing done yet, docs/operations.md)
            assert p.returncode in (130, -signal.SIGTERM), (k, p.returncode, err)
            if p.returncode == 130:
                assert "interrupted" in err and err.count("\n") == 1, err
            assert seaweed.keys(b) == [], (k, p.returncode, err)
        assert seaweed.uploads(b) == [], (k, p.returncode, err)
        outcomes.append(p.returncode)
    assert outcomes.count(130) >= 7, outcomes


def test_a_sigterm_landing_inside_the_s3_client_anywhere_ends_the_backup_cleanly(tmp_path, seaweed):
    """SIGTERM raised inside the S3 client's own code on the main thread (tests/fault: at
    the N-th return of a built-in call made from botocore, urllib3 or http.client -- a
    lock's acquire(), a socket send, a digest update), at 30 points spread over a whole
    multipart backup: each run ends within a minute, exit 130 "interrupted" with no
    object and no upload left open, or exit 0 with the whole object.  (A signal raised
    in a library between a lock's acquire() and the try that releases it leaves the lock
    taken, and the cleanup that aborts the upload through the same client can wait on it
    for ever: paramiko did that, docs/ssh.md.)"""
    from tests.faults import run_with_fault, spread
    b, home, whole = _bulky_source(tmp_path, seaweed, 12)

    argv = ["imsbackup", "-f", f"s3://{b}/k.ims", "/"]
    env = dict(seaweed.env(), IMS_HOME=str(home), IMS_FAULT_LIBS="botocore,urllib3,http,boto3")
    out = tmp_path / "points"
    run_with_fault(argv, tmp_path, f"sshcount:{out}", env=env).check_returncode()
    total = int(out.read_text())
    assert total > 300 and whole(), total         # (the count reaches the client's requests)
    seaweed.client().delete_object(Bucket=b, Key="k.ims")
    bad, outcomes = [], []
    for n in spread(total, 30, seed=53):
        try:
            p = run_with_fault(argv, tmp_path, f"sshterm:{n}", env=env, timeout=60)
        except subprocess.TimeoutExpired:
            bad.append((n, "hung: no end within 60 s"))
            break
        err = p.stderr.decode("utf-8", "replace")
        keys, uploads = seaweed.keys(b), seaweed.uploads(b)
        outcomes.append(p.returncode)
        if p.returncode == 0:
            if keys != ["k.ims"] or not whole() or err:
                bad.append((n, 0, keys, err))
        elif p.returncode != 130 or "interrupted" not in err or err.count("\n") != 1 or keys:
            bad.append((n, p.returncode, keys, err))
        if uploads:
            bad.append((n, p.returncode, "upload left open", uploads))
        for k in keys:
            seaweed.client().delete_object(Bucket=b, Key=k)
    assert not bad, bad
    assert outcomes.count(130) >= 20, outcomes       # (the points fell inside the runs)


@pytest.mark.parametrize("comes_back", [False, True])
def test_server_killed_during_a_download(tmp_path, comes_back):
    """Killed while imsrestore reads: the restore stops with one line and a remote
    status, and what it restored is byte for byte right; when the server is back
    within the retries, the read resumes where it stopped and the restore is whole."""
    with running("seaweedfs", str(tmp_path / "srv")) as srv:
        b = bucket(srv)
        home = tmp_path / "src"
        setup(home)
        store = big_store(home, mib=40)
        run(home, "imsbackup", "-f", f"s3://{b}/k.ims", "/", env=srv.env(), check=0)
        want = state(store)
        d, s = fresh(tmp_path, "classic", "d")
        cfg = Config(str(d))
        cfg.set("s3.retries", "6" if comes_back else "1")
        p = popen(d, "imsrestore", "-b", "1", "-f", f"s3://{b}/k.ims", env=srv.env(), stderr=subprocess.PIPE)
        spool = os.path.join(str(d), "data")
        _wait(lambda: p.poll() is not None or any(
            len(files) > 30 for _, _, files in os.walk(spool)), what="restored messages")
        assert p.poll() is None, "the restore finished before the server could be killed: make the store bigger"
        srv.kill()
        if comes_back:
            time.sleep(0.5)
            srv.start()
        _, err = p.communicate(timeout=300)
        err = err.decode()
        if comes_back:
            assert p.returncode == 0, err
            assert state(s) == want
            return
        assert p.returncode in (10, 14), err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
        got = state(s)
        assert got and all(want[k] == v for k, v in got.items() if len(k) == 3)


@pytest.mark.parametrize("server", ["seaweed", "rclone"])
@pytest.mark.parametrize("how", ["seek", "resume"])
def test_an_object_replaced_while_it_is_read_is_never_mixed_in(request, tmp_path, server, how, monkeypatch):
    """s3://bkt/latest.ims opened as imsrestore opens it, then replaced (tonight's backup
    to the same key): a later GET (a seek, a broken GET resumed) never returns bytes of
    the new object, also from a server that ignores If-Match (rclone): it fails with one
    line saying the object changed while it was read, exit 3 (an object that differs)."""
    from asm.devices import open_device
    from plugins.s3.errors import S3Error
    srv = request.getfixturevalue(server)
    b = bucket(srv)
    c = srv.client()
    old, new = os.urandom(3 << 20), os.urandom(3 << 20) + b"longer"
    c.put_object(Bucket=b, Key="latest.ims", Body=old)
    for k, v in srv.env().items():
        monkeypatch.delenv(k, raising=False) if v is None else monkeypatch.setenv(k, v)
    home = tmp_path / "ims"
    setup(home)
    dev = open_device(f"s3://{b}/latest.ims", "rb", 20, Config(str(home)))
    try:
        f = dev.file
        assert f.read(4096) == old[:4096]
        c.put_object(Bucket=b, Key="latest.ims", Body=new)
        if how == "seek":
            f.seek(2 << 20)
        else:
            reader = getattr(f, "raw", f)
            reader._body.close()            # the GET breaks off: the read resumes at byte 4096
        with pytest.raises(S3Error) as got:
            f.read(4096)
    finally:
        dev.close()
    msg = str(got.value)
    assert got.value.status == 3 and "changed while it was read" in msg and f"s3://{b}/latest.ims" in msg
    assert "\n" not in msg


def test_full_disk_on_the_server(tmp_path):
    """SeaweedFS on a small tmpfs: the upload fails in one line with no object left
    visible and no upload left behind; the server cannot say 'disk full' in S3 terms
    (it answers 500 InternalError), so the status is the device's or 13."""
    with small_tmpfs(tmp_path / "small", "40m"):
        with running("seaweedfs", str(tmp_path / "small"), volume_mb=8) as srv:
            b = bucket(srv)
            home = tmp_path / "src"
            setup(home, **{"s3.retries": "1"})
            big_store(home, mib=60)
            p = run(home, "imsbackup", "-f", f"s3://{b}/k.ims", "/", env=srv.env(), text=True)
            assert p.returncode in (3, 13, 14), p.stderr
            assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
            assert "k.ims" not in srv.keys(b) and srv.uploads(b) == []


def _upload_peak(tmp_path, server, b, name: str, mib: int) -> tuple[int, int]:
    """(peak RSS, object size) of an imsbackup of a store of about ``mib`` MiB to S3."""
    home = tmp_path / name
    setup(home)
    big_store(home, mib=mib)
    with open(tmp_path / f"{name}.err", "wb") as err:
        p = popen(home, "imsbackup", "-f", f"s3://{b}/{name}.ims", "/", env=server.env(), stderr=err)
        _, status, usage = os.wait4(p.pid, 0)       # this child's own peak, nobody else's
    assert os.waitstatus_to_exitcode(status) == 0, (tmp_path / f"{name}.err").read_text()
    size = server.client().head_object(Bucket=b, Key=f"{name}.ims")["ContentLength"]
    return usage.ru_maxrss * 1024, size


def test_upload_memory_is_bounded(tmp_path, seaweed):
    """Archives of about 10 and 100 MiB go up in 5 MiB parts, 3 at a time: the peak
    memory of the larger backup exceeds the smaller one's by far less than the 90 MiB
    the archive grew (parts in flight are held, not the archive; the rest is the
    interpreter and boto3, the same for both)."""
    b = bucket(seaweed)
    small, small_size = _upload_peak(tmp_path, seaweed, b, "small", 10)
    large, large_size = _upload_peak(tmp_path, seaweed, b, "large", 100)
    assert large_size - small_size > 80 << 20
    assert large - small < 40 << 20, \
        f"imsbackup peaked at {small >> 20} MiB for {small_size >> 20} MiB and at {large >> 20} MiB for " \
        f"{large_size >> 20} MiB: memory grows with the archive"


def _seaweed_client(seaweed, monkeypatch):
    """(Settings, boto3 client) for the test SeaweedFS: 5 MiB parts, no retries."""
    from plugins.s3.settings import Settings, client
    for k, v in seaweed.env().items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)
    settings = Settings(partsize=5 << 20, concurrency=2, retries=0)
    return settings, client(settings)


@pytest.mark.parametrize("lie", ["part", "complete", "size"])
def test_what_the_server_answers_is_checked(seaweed, monkeypatch, lie):
    """The real server, with its answers altered on the way back as a server that stored
    other bytes would answer: a part's MD5, the assembled ETag, the size.  The upload
    fails with S3VerifyFailed and no object is left under the name."""
    from plugins.s3.errors import S3VerifyFailed
    from plugins.s3.spec import parse
    from plugins.s3.upload import S3Writer
    settings, real = _seaweed_client(seaweed, monkeypatch)

    class Altered:
        def __getattr__(self, name):
            return getattr(real, name)

        def upload_part(self, **kw):
            r = real.upload_part(**kw)
            if lie == "part" and kw["PartNumber"] == 2:
                r["ETag"] = '"' + "0" * 32 + '"'
            return r

        def complete_multipart_upload(self, **kw):
            r = real.complete_multipart_upload(**kw)
            if lie == "complete":
                r["ETag"] = '"' + "0" * 32 + '-3"'
            return r

        def head_object(self, **kw):
            r = real.head_object(**kw)
            if lie == "size":
                r["ContentLength"] -= 1
            return r

    b = bucket(seaweed)
    w = S3Writer(Altered(), settings, parse(f"s3://{b}/v.ims"))
    with pytest.raises(S3VerifyFailed):
        for _ in range(12):
            w.write(os.urandom(1 << 20))
        w.close()
    w.abort()
    assert seaweed.keys(b) == [] and seaweed.uploads(b) == []


def _failing_upload(client, settings, url):
    """12 MiB written through an S3Writer over ``client`` to ``url`` and closed, which must
    raise S3Error: (the writer, pytest's ExceptionInfo)."""
    from plugins.s3.errors import S3Error
    from plugins.s3.spec import parse
    from plugins.s3.upload import S3Writer
    w = S3Writer(client, settings, parse(url))
    with pytest.raises(S3Error) as exc:
        for _ in range(12):
            w.write(os.urandom(1 << 20))
        w.close()
    return w, exc


@pytest.mark.parametrize("name", ["v.ims", "v404.ims"])
@pytest.mark.parametrize("reachable", [True, False])
def test_link_lost_after_the_upload_completed(seaweed, monkeypatch, reachable, name):
    """The server completes the object, then the link fails before it could be checked:
    the writer fails (never exit 0 for an unchecked object), removes the object when the
    server can still be reached, and otherwise says it may be left there, whole but
    unchecked, and how to check it, not that the archive is incomplete."""
    from botocore.exceptions import EndpointConnectionError

    settings, real = _seaweed_client(seaweed, monkeypatch)

    class LinkGone:
        completed = False          # (the writer also looks at the key before it starts)

        def __getattr__(self, name):
            return getattr(real, name)

        def complete_multipart_upload(self, **kw):
            r = real.complete_multipart_upload(**kw)
            self.completed = True
            return r

        def head_object(self, **kw):
            if not self.completed:
                return real.head_object(**kw)
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

        def delete_object(self, **kw):
            if reachable:
                return real.delete_object(**kw)
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    b = bucket(seaweed)
    _w, exc = _failing_upload(LinkGone(), settings, f"s3://{b}/{name}")
    text = str(exc.value)
    # (a key holding "404" was taken for a missing object: "replaced by another writer")
    assert "completed on the server" in text and "incomplete" not in text, text
    from asm.cli.imsbackup import _incomplete
    assert exc.value.outcome_said and _incomplete(exc.value, "") == text    # imsbackup adds nothing
    if reachable:
        assert "was removed" in text and seaweed.keys(b) == []
    else:
        assert "could not be removed" in text and f"imsverify -f s3://{b}/{name}" in text
        assert seaweed.keys(b) == [name]
    assert seaweed.uploads(b) == []


@pytest.mark.parametrize("key", ["d//x.ims", "a/../x.ims", "./x.ims", "x.ims/..", os.fsdecode(b"\xff\xfe.ims")],
                         ids=["empty-level", "dotdot", "dot", "trailing-dotdot", "not-utf8"])
def test_a_key_no_s3_server_keeps_as_written_is_refused_before_the_backup(tmp_path, key):
    """s3://bkt/d//x.ims was stored by SeaweedFS as d/x.ims (over an archive of that name)
    and refused by rclone after the whole backup (exit 3); a key that is not UTF-8 failed
    after the whole backup with Python's words.  Refused up front now: exit 2, one line,
    before any setting or server is looked at; imsrestore and imsverify alike."""
    home, store = fresh(tmp_path, "classic", "ims")
    store.create_user("joe")
    dev = "s3://bkt/" + key
    for argv in (["imsbackup", "-f", dev, "/"], ["imsrestore", "-t", "-f", dev], ["imsverify", "-f", dev]):
        p = run(home, *argv, env={"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None})
        err = p.stderr.decode("utf-8", "replace")
        if argv[0] == "imsverify":      # (a problem of the run: named, its status)
            assert p.returncode == 2, (argv, p.returncode, err)
            continue
        assert p.returncode == 2 and err.count("\n") == 1, (argv, p.returncode, err)
        assert "level" in err or "not UTF-8" in err, err


@pytest.mark.parametrize("when", ["part", "complete"])
def test_a_server_gone_in_the_middle_of_an_upload_is_the_link_lost(seaweed, monkeypatch, when):
    """The S3 server went away after it had taken parts of the upload (a crash, a
    restart): every retry then meets "connection refused", which said "cannot connect
    to the S3 endpoint" (exit 10, as for a server never reached).  The link was lost in
    the middle of the transfer: exit 14, as the docs give it."""
    from botocore.exceptions import EndpointConnectionError

    from asm.errors import EXIT_LINKLOST, status_of
    settings, real = _seaweed_client(seaweed, monkeypatch)
    calls = {"n": 0}

    class GoneMidway:
        def __getattr__(self, name):
            return getattr(real, name)

        def upload_part(self, **kw):
            calls["n"] += 1
            if when == "part" and calls["n"] > 1:
                raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
            return real.upload_part(**kw)

        def complete_multipart_upload(self, **kw):
            if when == "complete":
                raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
            return real.complete_multipart_upload(**kw)

    b = bucket(seaweed)
    w, exc = _failing_upload(GoneMidway(), settings, f"s3://{b}/m.ims")
    assert status_of(exc.value) == EXIT_LINKLOST, (status_of(exc.value), str(exc.value))
    assert "lost in the middle of the transfer" in str(exc.value)
    w.abort()
    assert seaweed.keys(b) == []


# --------------------------------------------------------------------------- two writers of one key

def _archive_id(home, srv, url) -> str:
    """The archive id in the header of the archive at ``url`` (imsrestore -h)."""
    import json
    p = run(home, "imsrestore", "-h", "-f", url, env=srv.env(), check=0, text=True)
    ids = [w.strip('",') for ln in p.stdout.splitlines() for w in ln.split() if len(w.strip('",')) >= 16
           and "archive_id" in ln]
    return ids[-1] if ids else json.dumps(p.stdout)


def test_two_runs_of_one_installation_to_one_key(tmp_path, seaweed):
    """Two imsbackup runs of one installation to the same s3://bkt/key (a cron job
    started twice): the second is refused as for a local file, exit 6 with one line
    naming the first's pid, before it sends anything (no upload, no state file); the
    first finishes, and the object at the key is its archive, the one its state file
    names.  (Before, both exited 0 and only the second's archive was left.)"""
    import json
    b = bucket(seaweed)
    home = tmp_path / "src"
    setup(home, **{"s3.concurrency": "1"})
    store = big_store(home, mib=24)
    url = f"s3://{b}/same.ims"
    first = popen(home, "imsbackup", "-f", url, "--state-out", tmp_path / "one.state", "/", env=seaweed.env(),
                  stderr=subprocess.PIPE)
    _wait(lambda: seaweed.uploads(b) or first.poll() is not None, what="the first run's upload")
    assert first.poll() is None, "the first run finished before the second started: make the store bigger"
    first.send_signal(signal.SIGSTOP)        # it holds the name while the second tries (a loaded CI)
    try:
        second = run(home, "imsbackup", "-f", url, "--state-out", tmp_path / "two.state", "/", env=seaweed.env(),
                     text=True)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 6, second.stderr
    err = second.stderr.strip()
    assert len(err.splitlines()) == 1 and f"another imsbackup (pid {first.pid}) is writing {url}" in err, err
    assert "nothing was written" in err and "Traceback" not in err
    assert not (tmp_path / "two.state").exists() and len(seaweed.uploads(b)) == 1
    _, ferr = first.communicate(timeout=300)
    assert first.returncode == 0, ferr
    assert seaweed.keys(b) == ["same.ims"] and seaweed.uploads(b) == []
    meta = seaweed.client().head_object(Bucket=b, Key="same.ims")["Metadata"]
    assert meta["ims-writer"].split(":")[1] == str(first.pid)
    one = json.loads((tmp_path / "one.state").read_text())
    assert _archive_id(home, seaweed, url) == one["archive_id"]
    d, s = fresh(tmp_path, "classic", "d")
    run(d, "imsrestore", "-f", url, env=seaweed.env(), check=0)
    assert state(s) == state(store)
    # the lock went with the run: the next one writes
    run(home, "imsbackup", "-f", url, "/primary/user/" + store.users("primary")[0], env=seaweed.env(), check=0)


def test_two_runs_started_at_once(tmp_path, seaweed):
    """The tester's case as it was met: two imsbackup runs to one key started at the
    same moment, each with its state file.  Exactly one succeeds and the other is refused
    (exit 6, no state file); the object at the key is the winner's, the archive its state
    file names, so an incremental from it follows an archive that exists."""
    import json
    b = bucket(seaweed)
    home = tmp_path / "src"
    setup(home, **{"s3.concurrency": "1"})
    big_store(home, mib=24)                  # long enough for the two to overlap
    url = f"s3://{b}/same.ims"
    runs = [popen(home, "imsbackup", "-f", url, "--state-out", tmp_path / f"{i}.state", "/", env=seaweed.env(),
                  stderr=subprocess.PIPE) for i in (1, 2)]
    errs = [p.communicate(timeout=300)[1].decode() for p in runs]
    codes = [p.returncode for p in runs]
    assert sorted(codes) == [0, 6], (codes, errs)
    won, lost = (1, 2) if codes[0] == 0 else (2, 1)
    assert "is writing" in errs[lost - 1] and "nothing was written" in errs[lost - 1], errs
    assert not (tmp_path / f"{lost}.state").exists()
    st = json.loads((tmp_path / f"{won}.state").read_text())
    assert seaweed.keys(b) == ["same.ims"] and seaweed.uploads(b) == []
    assert _archive_id(home, seaweed, url) == st["archive_id"]


def _other_writer_env(tmp_path, srv, stage: str) -> dict:
    """The environment of an imsbackup that loads tests/s3otherwriter.py as a plugin."""
    site = tmp_path / "site"
    dist = site / "s3otherwriter-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: s3otherwriter\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ims_asm]\ns3otherwriter = tests.s3otherwriter\n")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return srv.env(PYTHONPATH=str(site) + os.pathsep + here, IMS_TEST_S3_OTHER_WRITER=stage)


@pytest.mark.parametrize("server", ["seaweed", "rclone"])
@pytest.mark.parametrize("size", ["put", "multipart"])
def test_an_object_replaced_after_the_upload_fails_the_run(request, tmp_path, server, size):
    """Another writer (another host) writes the same key just after this run completed
    its object and before the run checks it: the run must not exit 0 for an archive that
    is not there.  Exit 6, one line saying the object was replaced by another writer, no
    state file (an incremental must not follow it), and the other writer's object is
    left as it is (not removed as if it were a bad copy of ours)."""
    from tests.s3otherwriter import OTHER
    srv = request.getfixturevalue(server)
    b = bucket(srv)
    home = tmp_path / "src"
    setup(home)
    if size == "put":
        build(home, "classic", users=2, messages=5)
    else:
        big_store(home, mib=12)
    url = f"s3://{b}/same.ims"
    p = run(home, "imsbackup", "-f", url, "--state-out", tmp_path / "x.state", "/",
            env=_other_writer_env(tmp_path, srv, "completed"), text=True)
    assert p.returncode == 6, p.stderr
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{url} was replaced by another writer after this run uploaded it" in err, err
    assert "incomplete" not in err
    assert not (tmp_path / "x.state").exists()
    assert srv.keys(b) == ["same.ims"] and srv.get(b, "same.ims") == OTHER and srv.uploads(b) == []


@pytest.mark.parametrize("server", ["seaweed", "rclone"])
def test_another_writer_completing_first(request, tmp_path, server):
    """Another writer completes the same key while this run uploads it.  SeaweedFS
    (like AWS) checks the condition this run completes on (If-None-Match: * here, the
    key being new when the run began): it refuses to replace the other's object, and the
    run fails, exit 6, one line, no state file, the other object kept, no upload left.
    rclone ignores conditions: this run's object replaces the other's and is checked
    to be this run's, exit 0 and its state file names what is there."""
    import json

    from tests.s3otherwriter import OTHER
    srv = request.getfixturevalue(server)
    b = bucket(srv)
    home = tmp_path / "src"
    setup(home)
    big_store(home, mib=12)
    url = f"s3://{b}/same.ims"
    p = run(home, "imsbackup", "-f", url, "--state-out", tmp_path / "x.state", "/",
            env=_other_writer_env(tmp_path, srv, "completing"), text=True)
    assert srv.uploads(b) == [] and srv.keys(b) == ["same.ims"]
    if server == "rclone":
        assert p.returncode == 0, p.stderr
        assert _archive_id(home, srv, url) == json.loads((tmp_path / "x.state").read_text())["archive_id"]
        return
    assert p.returncode == 6, p.stderr
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{url} was written by another writer while this run uploaded it" in err and "refused" in err, err
    assert not (tmp_path / "x.state").exists() and srv.get(b, "same.ims") == OTHER


@pytest.mark.parametrize("answer", ["lost-reply", "not-implemented"])
def test_conditional_completion_edge_cases(seaweed, monkeypatch, answer):
    """The condition never fails a run that wrote alone.  ``lost-reply``: the server
    completed the object but its answer was lost; the completion tried again meets the
    condition (the key now holds an object) and must find that object is this writer's
    own.  ``not-implemented``: a server that answers a conditional request 501 is asked
    again without the condition; the check after the upload still applies."""
    from botocore.exceptions import ClientError, ConnectionClosedError

    from plugins.s3.spec import parse
    from plugins.s3.upload import S3Writer
    settings, real = _seaweed_client(seaweed, monkeypatch)
    settings.retries = 2
    seen = []

    class Server:
        def __getattr__(self, name):
            return getattr(real, name)

        def complete_multipart_upload(self, **kw):
            seen.append(sorted(k for k in kw if k.startswith("If")))
            if answer == "not-implemented" and "IfNoneMatch" in kw:
                raise ClientError({"Error": {"Code": "NotImplemented", "Message": "no conditions here"},
                                   "ResponseMetadata": {"HTTPStatusCode": 501}}, "CompleteMultipartUpload")
            r = real.complete_multipart_upload(**kw)
            if answer == "lost-reply" and len(seen) == 1:
                raise ConnectionClosedError(endpoint_url=seaweed.endpoint)
            return r

    b = bucket(seaweed)
    w = S3Writer(Server(), settings, parse(f"s3://{b}/v.ims"))
    data = os.urandom(12 << 20)
    w.write(data)
    w.close()
    assert seaweed.get(b, "v.ims") == data and seaweed.uploads(b) == []
    assert seen[0] == ["IfNoneMatch"] and len(seen) == 2
    if answer == "not-implemented":
        assert seen[1] == []


def test_imsdr_to_a_key_another_run_of_the_installation_writes_is_refused(tmp_path, seaweed, monkeypatch):
    """imsdr backup -f s3://bkt/key holds the installation's lock on the key as imsbackup
    does: while another run holds it, exit 6 with one line naming that run, before
    anything is sent (no object, no upload); once it is let go the disaster backup is
    written.  (Before, imsdr took no lock: two runs captured everything, and the second's
    completion was refused after it, "the disaster backup is incomplete", while the
    object held the first's.)"""
    from asm.locks import FileLock
    from plugins.s3.settings import Settings
    from plugins.s3.spec import parse
    from plugins.s3.upload import lock_path
    b = bucket(seaweed)
    home = tmp_path / "src"
    setup(home)
    build(home, "classic", users=2, messages=6)
    url = f"s3://{b}/dr.tar"
    env = seaweed.env()
    for k, v in env.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)
    path = lock_path(Settings.from_config(Config(str(home))), parse(url))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock = FileLock(path)
    assert lock.acquire() is None
    try:
        p = run(home, "imsdr", "backup", "-f", url, env=env, text=True)
    finally:
        lock.release()
    err = p.stderr.strip()
    assert p.returncode == 6, err
    assert len(err.splitlines()) == 1 and f"another imsdr (pid {os.getpid()}) is writing {url}" in err, err
    assert "nothing was written" in err and "Traceback" not in err
    assert seaweed.keys(b) == [] and seaweed.uploads(b) == []
    run(home, "imsdr", "backup", "-f", url, env=env, check=0)
    assert seaweed.keys(b) == ["dr.tar"] and not os.path.exists(path)
