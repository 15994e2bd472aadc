"""The streaming mbox reader: splitting, >From unquoting, flags, envelope dates, exact bytes."""
from __future__ import annotations

import io
import time

import pytest

from asm.mbox import read_mbox
from tests.helpers import MBOX, MBOX_ONE as ONE, MBOX_THREE as THREE, MBOX_TWO as TWO, local_time


def _read(data: bytes):
    out = []
    for m in read_mbox(io.BytesIO(data)):
        with m.file:
            body = m.file.read()
        assert m.size == len(body)
        out.append((body, m.flags, m.internaldate))
    return out


def test_messages_bytes_flags_and_dates():
    got = _read(MBOX)
    assert [b for b, _, _ in got] == [ONE, TWO, THREE]
    assert got[0][1] == {"\\Seen", "\\Answered", "\\Flagged"}
    assert got[1][1] == frozenset()
    assert got[2][1] == {"\\Deleted", "\\Draft"}
    assert got[0][2] == local_time(2024, 1, 1, 10, 0, 0)
    assert got[1][2] == local_time(2000, 2, 29, 23, 59, 59)
    assert got[2][2] == local_time(1998, 7, 4, 12, 0, 0)


def test_crlf_mbox_keeps_crlf():
    data = MBOX.replace(b"\n", b"\r\n")
    got = _read(data)
    assert [b for b, _, _ in got] == [x.replace(b"\n", b"\r\n") for x in (ONE, TWO, THREE)]
    assert got[0][1] == {"\\Seen", "\\Answered", "\\Flagged"}


def test_leading_blank_lines_and_no_final_newline():
    got = _read(b"\n\nFrom a@b Mon Jan  1 10:00:00 2024\nSubject: x\n\nend")
    assert [b for b, _, _ in got] == [b"Subject: x\n\nend"]


def test_rfc2822_envelope_date_and_missing_date():
    got = _read(b"From a@b Mon, 01 Jan 2024 10:00:00 +0000\nS: 1\n\n"
                b"From b@c\nS: 2\n")
    assert got[0][2] == 1704103200.0
    assert abs(got[1][2] - time.time()) < 60, "no envelope date: now"


def test_empty_file_has_no_messages():
    assert _read(b"") == []


@pytest.mark.parametrize("data", [
    b"Subject: not an mbox\n\nbody\n",
    b"\x89PNG\r\n\x1a\n\x00\x00",
    b"\nReturn-Path: <a@b>\nFrom a@b Mon Jan  1 10:00:00 2024\n",
    b"\n", b"\r\n\n  \n\t\n",           # blank lines only: no mbox (an empty mailbox is an empty file)
])
def test_not_an_mbox(data):
    with pytest.raises(ValueError, match="not an mbox"):
        list(read_mbox(io.BytesIO(data)))


def test_large_message_spools_and_streams():
    body = b"x" * 100 + b"\n"
    data = b"From a@b Mon Jan  1 10:00:00 2024\n\n" + body * 30000
    (msg, _, _), = _read(data)
    assert msg == b"\n" + body * 30000


@pytest.mark.parametrize("tz, line, want", [
    # 9999-12-31 23:59:59 in New York is 10000-01-01 04:59:59 UTC: no IMAP date
    ("America/New_York", b"From a@b Fri Dec 31 23:59:59 9999", 253402300799),
    ("America/New_York", b"From a@b Fri, 31 Dec 9999 23:59:59 -1200", 253402300799),
    # 0001-01-01 00:00:00 in Tokyo is 0000-12-31 15:00 UTC
    ("Asia/Tokyo", b"From a@b Mon Jan  1 00:00:00 0001", -62135596800),
    ("America/New_York", b"From a@b Mon Jan  1 10:00:00 2024", 1704121200),
])
def test_an_envelope_date_outside_years_1_to_9999_utc_is_the_nearest_imap_holds(monkeypatch, tz, line, want):
    """imsimport read "Fri Dec 31 23:59:59 9999" as New York time, 253402318799: the
    message was imported and backed up with exit 0 and could be restored from no backup
    (pax mtime out of range, exit 4).  Such a date becomes the nearest one IMAP holds."""
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        (_, _, date), = _read(line + b"\nSubject: a\n\nx\n")
        assert date == want
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("driver", ["classic", "maildir"])
def test_imsimport_stopped_by_a_signal_at_every_step_imports_all_or_nothing(tmp_path, driver):
    """imsimport SIGTERM'd (or Ctrl-C'd) before each of its steps on disk: exit 130 and
    none of the mbox's messages in the folder, or exit 0 and each of them once; after a
    130 the same command imports each once.  (It exited 130 with the messages imported
    so far left in, and the run again imported them a second time.)"""
    import shutil
    from asm.config import Config
    from asm.store import open_store
    from tests.faults import run_with_fault, signalled_copy, spread
    from tests.helpers import in_home, make_home, run
    base = tmp_path / "base"
    cfg = make_home(base, driver)
    with in_home(base):
        store = open_store(cfg)
        store.create_user("alice")
        store.create_folder("alice", "Keep", subscribed=True)
        store.append("alice", "Keep", io.BytesIO(b"Subject: old\r\n\r\nbody\r\n"))
        getattr(store, "close", lambda: None)()
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(b"".join(b"From a@b Sat Jan  3 01:05:34 1996\nSubject: m%d\n\nbody %d\n\n" % (i, i)
                              for i in range(12)))

    def subjects(home, folder):
        store = open_store(Config(str(home)), create=False)
        try:
            if not store.exists("alice", folder):
                return []
            out = []
            for m in store.messages("alice", folder):
                with open(m.path, "rb") as f:
                    out.append(f.readline().strip().decode())
            return sorted(out)
        finally:
            getattr(store, "close", lambda: None)()

    everything = sorted([f"Subject: m{i}" for i in range(12)])
    bad, outcomes = [], []
    for folder, before in (("Keep", ["Subject: old"]), ("New", [])):
        argv = ["imsimport", "-u", "alice", "-d", folder, "-s", str(mbox)]
        probe = tmp_path / f"probe-{folder}"
        shutil.copytree(base, probe)
        log = tmp_path / f"steps-{folder}"
        p = run_with_fault(argv, probe, "count:/dev/null", env={"IMS_HOME": str(probe), "IMS_FAULT_LOG": str(log)})
        assert p.returncode == 0, p.stderr
        assert subjects(probe, folder) == sorted(before + everything)
        steps = [line for line in log.read_text().splitlines() if line.split(" ", 1)[0].isdigit()]
        for i, point in enumerate(spread(len(steps), 9, 3)):
            mode = "int" if i % 3 == 2 else "term"
            home = tmp_path / f"k-{folder}-{point}"
            p = signalled_copy(argv, base, home, mode, point)
            outcomes.append(p.returncode)
            problems = []
            if p.returncode == 130:
                if p.stderr.decode().strip() != "imsimport: interrupted":
                    problems.append(p.stderr)
                if subjects(home, folder) != before:
                    problems.append(("130 with", subjects(home, folder)))
                p = run(home, *argv, env={"IMS_HOME": str(home)})
                if p.returncode != 0:
                    problems.append(("rerun", p.returncode, p.stderr))
            elif p.returncode != 0 or p.stderr:
                problems.append((p.returncode, p.stderr))
            if subjects(home, folder) != sorted(before + everything):
                problems.append(("at the end", subjects(home, folder)))
            if problems:
                bad.append((folder, point, mode, steps[point - 1] if point <= len(steps) else "end", problems))
            else:
                shutil.rmtree(home)
    assert bad == [], bad[:3]
    assert outcomes.count(130) >= 6, outcomes       # (the points fell inside the runs)


SIGNAL_AFTER_OPEN = """
import os, signal, sys
at = int(sys.argv[1])
calls = [0]
def after(f):
    def wrapped(*a, **kw):
        out = f(*a, **kw)
        target = os.fsdecode(a[1] if f is real_link else a[0]) if a and not isinstance(a[0], int) else ""
        if os.path.basename(os.path.dirname(target)) == "tmp" and "Maildir" in target:
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGTERM)   # (as one that came during the call)
        return out
    return wrapped
real_link = os.link
os.open, os.link = after(os.open), after(os.link)
from asm.cli.imsimport import main
code = main(sys.argv[2:])
print(calls[0], file=sys.stderr)
sys.exit(code)
"""


def test_a_maildir_message_file_made_as_a_signal_comes_is_not_left_in_tmp(tmp_path):
    """imsimport into a Maildir SIGTERM'd as each message file is made in tmp/ (a signal
    that comes during the open(2) is raised as it returns): exit 130, nothing imported,
    and tmp/ empty.  (The file was made before the try that removes it: an empty file
    was left in tmp/ in most SIGTERM'd imports, the restore's appends the same.)"""
    import os
    import shutil
    import subprocess
    import sys
    from tests.helpers import command_env, in_home, make_home
    from asm.store import open_store
    base = tmp_path / "base"
    cfg = make_home(base, "maildir")
    with in_home(base):
        open_store(cfg).create_user("alice")
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(b"".join(b"From a@b Sat Jan  3 01:05:34 1996\nSubject: m%d\n\nbody %d\n\n" % (i, i)
                              for i in range(8)))

    def run_at(point):
        home = tmp_path / f"p{point}"
        shutil.copytree(base, home)
        p = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_OPEN, str(point), "-u", "alice", "-d", "New",
                            "-s", str(mbox)], env=command_env(home), capture_output=True, text=True, timeout=60,
                           cwd=__file__.rsplit("/tests/", 1)[0])
        left = [os.path.join(d, f) for d, _, fs in os.walk(home) for f in fs
                if os.path.basename(d) == "tmp"]
        cur = [f for d, _, fs in os.walk(home) for f in fs if os.path.basename(d) == "cur" and ".New" in d]
        return p, left, cur

    p, left, cur = run_at(0)
    assert p.returncode == 0 and left == [] and len(cur) == 8, p.stderr
    total = int(p.stderr.split()[-1])
    assert total >= 8
    bad = []
    for point in range(1, total + 1):
        p, left, cur = run_at(point)
        if p.returncode != 130 or left or cur:
            bad.append((point, p.returncode, left, len(cur), p.stderr[-200:]))
    assert bad == [], bad[:3]
