"""asm.interrupts: the stop signals held over a step that must not be cut, with other
threads running (paramiko's transport, S3 and compression workers).  A mask alone held
nothing then: the kernel gave the signal to another thread and CPython ran the main
thread's handler at once (an SFTP backup SIGTERM'd as it finished left its temporary
file).  Each case runs in a child process of its own, its signals sent by the kernel."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import os, signal, sys, threading, time
from asm.interrupts import Hold, interrupts_deferred
def interrupt(signum, frame):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, interrupt)
signal.signal(signal.SIGHUP, interrupt)
signal.signal(signal.SIGINT, signal.default_int_handler)   # (a background job starts with it ignored)
stop = threading.Event()
workers = [threading.Thread(target=stop.wait, daemon=True) for _ in range(4)]
for w in workers:
    w.start()
def send(*sigs):
    for s in sigs:
        os.kill(os.getpid(), s)
    time.sleep(0.2)           # (delivered by now, to some thread)
"""


def child(body: str, threads: bool = True) -> subprocess.CompletedProcess:
    code = PRELUDE + textwrap.dedent(body)
    if not threads:
        code = code.replace("range(4)", "range(0)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=__file__.rsplit("/tests/", 1)[0])


@pytest.mark.parametrize("threads", [True, False])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_in_a_hold_comes_after_it_once(threads, sig):
    p = child(f"""
        try:
            with interrupts_deferred():
                send(signal.{sig}, signal.{sig})
                print("step done", flush=True)
            print("NOT DELIVERED")
        except KeyboardInterrupt:
            print("interrupted after the step")
        try:
            time.sleep(0.2)
            print("once")
        except KeyboardInterrupt:
            print("TWICE")
        """, threads)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n") == ["step done", "interrupted after the step", "once", ""], p.stdout


def test_holds_nest_and_the_outer_one_delivers():
    p = child("""
        try:
            with interrupts_deferred():
                with interrupts_deferred():
                    send(signal.SIGTERM)
                print("inner let go", flush=True)
                send(signal.SIGINT)
                print("outer step done", flush=True)
        except KeyboardInterrupt:
            print("interrupted")
        """)
    assert p.stdout.split("\n") == ["inner let go", "outer step done", "interrupted", ""], (p.stdout, p.stderr)


def test_a_dropped_hold_ignores_the_signal_that_came_and_those_after():
    p = child("""
        h = Hold().begin()
        send(signal.SIGTERM)
        h.drop()
        send(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        print("succeeded", signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)
        """)
    assert (p.returncode, p.stdout) == (0, "succeeded True\n"), p.stderr


def test_the_default_action_comes_after_the_step():
    """No handler of ours (library code outside a command): SIGTERM's default, the end
    of the process, waits for the step."""
    p = child("""
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with interrupts_deferred():
            send(signal.SIGTERM)
            print("step done", flush=True)
        print("NOT ENDED")
        """)
    assert (p.returncode, p.stdout) == (-signal.SIGTERM, "step done\n"), p.stderr


def test_an_ignored_signal_stays_ignored():
    """nohup: SIGHUP ignored before the hold is ignored after it."""
    p = child("""
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        with interrupts_deferred():
            send(signal.SIGHUP)
        send(signal.SIGHUP)
        print("kept", signal.getsignal(signal.SIGHUP) is signal.SIG_IGN)
        """)
    assert (p.returncode, p.stdout) == (0, "kept True\n"), p.stderr


def test_off_the_main_thread_a_hold_does_nothing():
    p = child("""
        out = []
        def work():
            with interrupts_deferred():
                out.append("ran")
        t = threading.Thread(target=work); t.start(); t.join()
        print(out, signal.getsignal(signal.SIGTERM) is interrupt)
        """)
    assert (p.returncode, p.stdout) == (0, "['ran'] True\n"), p.stderr


def test_a_storm_of_signals_never_cuts_a_step_and_leaves_the_handlers_as_they_were():
    """1,500 signals sent by another thread, a few hundred microseconds apart, while
    steps are held one after another: none is handled inside a step, each let-go
    delivers what came, and after the storm the handlers and the mask are as before
    (the command can still be interrupted).  The handlers count instead of raising,
    so the count is exact."""
    p = child("""
        import random
        state = {"inside": 0, "cut": 0, "delivered": 0}
        def count(signum, frame):
            state["cut" if state["inside"] else "delivered"] += 1
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, count)
        def storm():
            rnd = random.Random(7)
            for _ in range(1500):
                os.kill(os.getpid(), rnd.choice([signal.SIGTERM, signal.SIGINT, signal.SIGHUP]))
                time.sleep(rnd.random() / 2000)
        sender = threading.Thread(target=storm, daemon=True)
        sender.start()
        steps = 0
        while sender.is_alive():
            with interrupts_deferred():
                state["inside"] = 1
                sum(range(300))
                state["inside"] = 0
            steps += 1
        time.sleep(0.1)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        same = all(signal.getsignal(s) is count for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
        signal.signal(signal.SIGTERM, interrupt)
        try:
            send(signal.SIGTERM)
            print("NOT INTERRUPTIBLE")
        except KeyboardInterrupt:
            pass
        print(state["cut"], state["delivered"] > 200, steps > 300, same,
              sorted(set(blocked) & {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}))
        """)
    assert (p.returncode, p.stdout) == (0, "0 True True True []\n"), (p.stdout, p.stderr)


ATOMIC = """
import os, signal, sys, tempfile
from asm import config, report
def interrupt(signum, frame):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, interrupt)
calls = [0]
at = int(sys.argv[1])
def after(f):
    def wrapped(*a, **kw):
        out = f(*a, **kw)
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGTERM)     # (handled before this returns)
        return out
    return wrapped
for mod, name in ((tempfile, "mkstemp"), (os, "fdopen"), (os, "fsync"), (os, "chmod"), (os, "replace"),
                  (os, "open"), (os, "close"), (os, "link"), (os, "unlink"), (os, "makedirs")):
    setattr(mod, name, after(getattr(mod, name)))
d = sys.argv[2]
outcome = []
for what in ("atomic_write", "report", "identity"):
    try:
        if what == "atomic_write":
            config.atomic_write(os.path.join(d, "a", "f"), b"new", 0o644)
        elif what == "report":
            report._write_atomic(os.path.join(d, "r", "f"), b"new")
        else:
            config.Config(os.path.join(d, "home")).installation_id(create=True)
        outcome.append("done")
    except KeyboardInterrupt:
        outcome.append("interrupted")
print(" ".join(outcome), calls[0])
"""


def test_an_atomic_write_stopped_by_a_signal_after_any_call_leaves_old_or_new_and_nothing_else(tmp_path):
    """config.atomic_write (msg.conf, state files, mkbackupdir's directives), the report
    file's writer and the installation identity, each SIGTERM'd just after each of the
    system calls they make: the file is the old one or the new one, whole, and no
    temporary file is left beside it.  (A signal as mkstemp returned, before the try
    that removes it, left .tmp-XXXX: mkbackupdir SIGTERM'd left one in its tree.)"""
    def run_at(point: int, d) -> str:
        for sub in ("a", "r", "home/data"):
            os.makedirs(d / sub, exist_ok=True)
        for sub in ("a", "r"):
            (d / sub / "f").write_bytes(b"old")
        p = subprocess.run([sys.executable, "-c", ATOMIC, str(point), str(d)], capture_output=True, text=True,
                           timeout=60, cwd=__file__.rsplit("/tests/", 1)[0])
        assert p.returncode == 0, p.stderr
        return p.stdout.split()

    import os
    clean = run_at(0, tmp_path / "clean")
    assert clean[:3] == ["done"] * 3
    total = int(clean[3])
    assert total >= 20
    bad = []
    for point in range(1, total + 1):
        d = tmp_path / f"p{point}"
        out = run_at(point, d)
        problems = []
        for sub in ("a", "r"):
            left = sorted(os.listdir(d / sub))
            if left != ["f"] or (d / sub / "f").read_bytes() not in (b"old", b"new"):
                problems.append((sub, left))
        left = sorted(os.listdir(d / "home" / "data"))
        if left not in ([], ["installation.id"]):
            problems.append(("identity", left))
        if "interrupted" not in out:
            problems.append(("no interrupt", out))
        if problems:
            bad.append((point, out, problems))
    assert bad == [], bad[:3]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_scratch_directory_is_removed_when_a_signal_comes_as_it_is_made(sig):
    """asm.atend.scratch_dir (imsverify's private Dovecot, a DR snapshot's mailbox list):
    a signal that comes as mkdtemp returns is delivered once the directory is registered
    for removal, so the end of the command removes it.  (Made, then registered, a signal
    in between left it in /tmp for good.)"""
    p = child(f"""
    import tempfile
    from asm import atend
    made = []
    real = tempfile.mkdtemp
    def mkdtemp(*a, **kw):
        made.append(real(*a, **kw))
        os.kill(os.getpid(), signal.{sig})
        time.sleep(0.2)                  # (delivered by now, to some thread)
        return made[-1]
    tempfile.mkdtemp = mkdtemp
    mark = atend.mark()
    try:
        atend.scratch_dir("ims-test-")
        print("no interrupt")
    except KeyboardInterrupt:
        print("interrupted")
    assert len(made) == 1 and os.path.isdir(made[0])
    atend.finish(mark)
    print("gone" if not os.path.exists(made[0]) else "left")
    """)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["interrupted", "gone"], p.stdout
