"""One error model: every exit status comes from asm.errors and is documented, every
command ends through asm.cli.common.run_command, and no traceback ever reaches a user
(closed pipes, SIGTERM at any moment, bugs, garbage arguments).

The behaviour tests run the real console scripts of this environment as subprocesses,
as a user or an engine would, through tests/helpers.py (``run``, ``popen``: the venv's
bin directory, never PATH)."""
from __future__ import annotations

import ast
import configparser
import contextlib
import glob
import importlib
import io
import os
import pkgutil
import signal
import subprocess
import sys
import time

import pytest

from asm import errors
from asm.archive.reader import ArchiveReader
from asm.store import open_store
from tests.helpers import NOTIFY, deep_dir, in_home, make_home, popen, put, require, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATUSES = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}


def _console_scripts() -> dict[str, str]:
    """{command: "module:function"} from setup.cfg."""
    cp = configparser.ConfigParser()
    cp.read(os.path.join(ROOT, "setup.cfg"))
    out = {}
    for line in cp["options.entry_points"]["console_scripts"].strip().splitlines():
        name, target = (x.strip() for x in line.split("=", 1))
        out[name] = target
    return out


SCRIPTS = _console_scripts()
# the NetBackup notify scripts' command (helpers.NOTIFY runs it as imsnbu installs it)
ENTRY_POINTS = dict(SCRIPTS, **{NOTIFY: "plugins.netbackup.notify:main"})


def quiet(tmp, **more) -> dict:
    """The environment ``run``/``popen`` apply for these tests: no IMS_DEBUG (a bug is a
    crash file, not a traceback on stderr) and crash files under ``tmp``."""
    return {"IMS_DEBUG": None, "TMPDIR": str(tmp), **more}


def no_traceback(p, what=""):
    err = p.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and "Exception ignored" not in err, f"{what}: {err}"
    return err


# ----------------------------------------------------------------------------- statuses

def _source_files():
    for top in ("asm", "plugins", "staging"):
        for path in glob.glob(os.path.join(ROOT, top, "**", "*.py"), recursive=True):
            yield os.path.relpath(path, ROOT), path


def _int(node) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def _is_status_target(t) -> bool:
    name = t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else ""
    return name.startswith("EXIT_") or name in ("status", "exit_status", "rc", "returncode")


# functions whose int results are counts or offsets, not exit statuses
COUNT_FUNCTIONS = {"readinto", "readinto1", "write", "tell", "seek", "fileno", "__len__",
                   "release_deliveries", "_drain"}       # messages released


def test_exit_statuses_are_defined_only_in_asm_errors():
    """No module but asm/errors.py defines an exit-status constant, sets a status from a
    bare number, or returns/exits with one: every status is an asm.errors name."""
    bad = []
    for rel, path in _source_files():
        if rel == os.path.join("asm", "errors.py"):
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        funcs = {}
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    funcs.setdefault(id(node), fn.name)
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    name = t.id if isinstance(t, ast.Name) else getattr(t, "attr", "")
                    if name.startswith("EXIT_"):
                        bad.append(f"{where}: defines {name}")
                    elif _is_status_target(t) and node.value is not None and _int(node.value):
                        bad.append(f"{where}: {name} = {node.value.value}")
            elif isinstance(node, ast.Return) and node.value is not None and _int(node.value):
                if funcs.get(id(node)) not in COUNT_FUNCTIONS:
                    bad.append(f"{where}: return {node.value.value} in {funcs.get(id(node))}()")
            elif isinstance(node, ast.Call):
                f = node.func
                fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                if fname in ("exit", "_exit", "SystemExit") and node.args and _int(node.args[0]):
                    bad.append(f"{where}: {fname}({node.args[0].value})")
                for kw in node.keywords:
                    if kw.arg in ("status", "exit_status") and _int(kw.value):
                        bad.append(f"{where}: {kw.arg}={kw.value.value}")
                if fname in ("die", "ImsError", "StagingError") and any(_int(a) for a in node.args[1:]):
                    bad.append(f"{where}: {fname}(..., <number>)")
    assert bad == []


def test_every_status_is_a_distinct_documented_name():
    names = {k: v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    assert len(set(names.values())) == len(names), "two EXIT_ names share a status"
    assert all(type(v) is int and 0 <= v <= 255 for v in names.values())


def _all_modules():
    for top in ("asm", "plugins", "staging"):
        pkg = importlib.import_module(top)
        yield top
        for m in pkgutil.walk_packages(pkg.__path__, top + "."):
            yield m.name


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_error_class_carries_a_documented_status():
    for name in _all_modules():
        importlib.import_module(name)
    classes = [c for c in _subclasses(errors.ImsError) if c.__module__.split(".")[0] in ("asm", "plugins", "staging")]
    assert len(classes) >= 40
    assert [c.__qualname__ for c in classes if c.status not in STATUSES] == []
    # nothing keeps the old per-plugin attribute
    assert [c.__qualname__ for c in classes if "exit_status" in vars(c)] == []


def test_the_statuses_errors_mean():
    """What each error means at a command's top level (docs/operations.md)."""
    from asm.archive import errors as ae
    from asm.backup import EmptyStore, UnlistedStore
    from asm.config import ConfigError, ConfigWriteFailed, NoInstallation
    from asm.devices import DeviceError
    from asm.groups import GroupsError
    from asm.logical import PathError
    from asm.plugins import PluginError
    from asm.restore import ChainOrderError, RestoreError
    from asm.store import base as sb
    from asm.store.classic import MailboxListLost
    from asm.store.partitions import PartitionUnavailable
    from plugins.bacula.fileset import FilesetError
    from plugins.netbackup.install import InstallError
    from plugins.networker import getdate, stream, tree
    from plugins.ssh import errors as se
    from staging import errors as st
    want = {
        ConfigError("x"): errors.EXIT_USAGE, PluginError("x"): errors.EXIT_USAGE, GroupsError("x"): errors.EXIT_USAGE,
        PathError("x"): errors.EXIT_USAGE, errors.UsageError("x"): errors.EXIT_USAGE,
        DeviceError("x"): errors.EXIT_DEVICE,
        sb.StoreError("x"): errors.EXIT_STORE, sb.StoreFull("INBOX"): errors.EXIT_NOSPACE,
        sb.LockTimeout("joe"): errors.EXIT_LOCKED, sb.NoSuchUser("joe"): errors.EXIT_USAGE,
        sb.NoSuchFolder("joe", "X"): errors.EXIT_USAGE, sb.NoSuchPartition("p", ["primary"]): errors.EXIT_USAGE,
        sb.UserExists("joe"): errors.EXIT_USAGE, sb.FolderExists("joe", "X"): errors.EXIT_USAGE,
        sb.BadName("x"): errors.EXIT_USAGE,
        ae.NotAnArchive("x"): errors.EXIT_NOT_ARCHIVE, ae.IncompleteArchive(): errors.EXIT_INCOMPLETE,
        ae.CorruptMember(0, "x"): errors.EXIT_INCOMPLETE, ae.DigestMismatch("m", "a", "b"): errors.EXIT_INCOMPLETE,
        ae.HostileMember("m", "x"): errors.EXIT_HOSTILE, ae.MessageChanged("m"): errors.EXIT_PARTIAL,
        ae.UnreadableSource("m", "/x", "a FIFO"): errors.EXIT_PARTIAL,
        RestoreError("x"): errors.EXIT_USAGE, ChainOrderError("x"): errors.EXIT_ORDER,
        se.ConnectFailed("x"): errors.EXIT_CONNECT, se.HostKeyUnknown("x"): errors.EXIT_HOSTKEY,
        se.HostKeyChanged("x"): errors.EXIT_HOSTKEY, se.HostKeyRevoked("x"): errors.EXIT_HOSTKEY,
        se.AuthFailed("x"): errors.EXIT_AUTH,
        se.RemoteDiskFull("x"): errors.EXIT_NOSPACE, se.LinkLost("x"): errors.EXIT_LINKLOST,
        se.RemotePathError("x"): errors.EXIT_DEVICE, se.VerifyFailed("x"): errors.EXIT_DEVICE,
        se.RemoteUsageError("x"): errors.EXIT_USAGE,
        st.StagingError("x"): errors.EXIT_USAGE, st.LockHeld("x"): errors.EXIT_LOCKED,
        st.NoSpace("x"): errors.EXIT_SPACE, st.Missing("x"): errors.EXIT_MISSING,
        stream.NotAStream("x"): errors.EXIT_NOT_ARCHIVE, stream.TruncatedStream("x"): errors.EXIT_INCOMPLETE,
        tree.TreeError("x"): errors.EXIT_USAGE, getdate.DateError("x"): errors.EXIT_USAGE,
        InstallError("x"): errors.EXIT_USAGE, FilesetError("x"): errors.EXIT_USAGE,
        # readers never create an installation; an empty or unlisted store is no success
        NoInstallation("x"): errors.EXIT_USAGE, EmptyStore("x"): errors.EXIT_EMPTY,
        UnlistedStore("x"): errors.EXIT_STORE, MailboxListLost("x"): errors.EXIT_STORE,
        PartitionUnavailable("x"): errors.EXIT_STORE,
    }
    assert {type(e).__name__: e.status for e in want} == {type(e).__name__: s for e, s in want.items()}
    assert all(isinstance(e, errors.ImsError) for e in want)
    # the ssh errors stay OSErrors, so a failure while writing is reported like one
    assert isinstance(se.LinkLost("x"), OSError) and errors.device_status(se.LinkLost("x")) == errors.EXIT_LINKLOST
    assert errors.device_status(OSError(28, "No space left on device")) == errors.EXIT_NOSPACE
    assert errors.device_status(OSError(5, "Input/output error")) == errors.EXIT_DEVICE
    # msg.conf that cannot be written: a full disk is EXIT_NOSPACE, anything else a usage error
    assert ConfigWriteFailed("msg.conf", OSError(28, "No space left on device")).status == errors.EXIT_NOSPACE
    assert ConfigWriteFailed("msg.conf", OSError(13, "Permission denied")).status == errors.EXIT_USAGE


def _entry_modules() -> set[str]:
    return {target.split(":")[0] for target in ENTRY_POINTS.values()}


def test_library_code_never_imports_the_command_line():
    """asm/ outside asm/cli, staging/ and plugins/ (but the commands' own modules) do
    not import asm.cli, not even inside a function."""
    commands = _entry_modules()
    bad = []
    for rel, path in _source_files():
        module = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
        if module.startswith("asm.cli") or module in commands:
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{rel}:{node.lineno}: {n}" for n in names if n == "asm.cli" or n.startswith("asm.cli.")]
    assert bad == []


def test_every_command_ends_through_run_command():
    """Every console script's main() (and the notify scripts') is ``return run_command(...)``."""
    missing = []
    for name, target in sorted(ENTRY_POINTS.items()):
        module, func = target.split(":")
        path = os.path.join(ROOT, *module.split(".")) + ".py"
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func)
        body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        ok = (len(body) == 1 and isinstance(body[0], ast.Return) and isinstance(body[0].value, ast.Call)
              and getattr(body[0].value.func, "id", "") == "run_command")
        if not ok:
            missing.append(name)
    assert missing == []


def test_every_command_restarts_in_utf8_mode():
    """asm/__init__.py knows every console script by name and every module a command is
    run as with ``python -m`` (the notify scripts, imsstage's and imsbacula's children):
    each restarts in Python's UTF-8 mode under a locale that is not UTF-8
    (tests/test_names.py runs them under one)."""
    import asm
    assert set(SCRIPTS) <= asm._COMMANDS
    mains = set()
    for rel, path in _source_files():
        with open(path, encoding="utf-8") as f:
            if 'if __name__ == "__main__":' in f.read():
                mains.add(rel[:-3].replace(os.sep, "."))
    assert mains and [m for m in sorted(mains) if not (m.startswith("asm.cli.") or m in asm._COMMAND_MODULES)] == []
    assert asm._dash_m(["-I", "-X", "utf8=0", "-m", "asm.cli.imsbackup", "-f", "x"]) == "asm.cli.imsbackup"
    assert asm._dash_m(["-Imstaging.cli"]) == "staging.cli" and asm._dash_m(["-c", "-m x"]) is None


# ----------------------------------------------------------------------------- closed pipes

LONG = "a folder whose name is long enough to make every line of a listing a long one "


def _fill(store, folders: int = 0, messages: int = 0):
    """One user with ``folders`` long-named folders (one listing line each) and
    ``messages`` messages in a long-named folder (one -t line each)."""
    with store.batch():                      # one sync at the end, not an fsync per file
        store.create_user("joe")
        for i in range(folders):
            store.create_folder("joe", f"{LONG}{i:05d}", subscribed=True)
        for i in range(messages):
            put(store, "joe", f"{LONG}messages", i)


def _into_head(home, tmp, *argv) -> tuple[int, bytes, bytes]:
    """``argv | head -1``: (argv's status, head's output, argv's stderr)."""
    writer = popen(home, *argv, env=quiet(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen([require("head"), "-1"], stdin=writer.stdout, stdout=subprocess.PIPE)
    writer.stdout.close()           # only head reads it now
    out = head.communicate(timeout=120)[0]
    err = writer.stderr.read()
    writer.stderr.close()
    return writer.wait(timeout=120), out, err


def test_imsrestore_listing_into_head(store, ims_home, tmp_path):
    _fill(store, messages=1500)          # about 190 KB of -t lines: far more than a pipe holds
    a = tmp_path / "a.ims"
    run(ims_home, "imsbackup", "-f", a, "/", check=0)
    full = run(ims_home, "imsrestore", "-f", a, "-t", env=quiet(tmp_path))
    assert full.returncode == 0 and len(full.stdout) > 150_000
    for argv in (["-f", a, "-t"], ["-t", "-f", a, "/primary/joe"]):
        status, out, err = _into_head(ims_home, tmp_path, "imsrestore", *argv)
        assert out == full.stdout.splitlines(keepends=True)[0]
        assert status == errors.EXIT_PIPE, err
        assert b"Traceback" not in err and len(err.splitlines()) <= 1, err
    assert glob.glob(str(tmp_path / "*crash*")) == []


def test_mboxutil_listing_into_head(store, ims_home, tmp_path):
    _fill(store, folders=1200)           # about 190 KB of listing lines
    full = run(ims_home, "mboxutil", "-l", env=quiet(tmp_path))
    assert full.returncode == 0 and len(full.stdout) > 150_000
    status, out, err = _into_head(ims_home, tmp_path, "mboxutil", "-l")
    assert out == full.stdout.splitlines(keepends=True)[0]
    assert status == errors.EXIT_PIPE, err
    assert b"Traceback" not in err and len(err.splitlines()) <= 1, err
    assert glob.glob(str(tmp_path / "*crash*")) == []


@pytest.mark.parametrize("bf", ["1", "20"])
@pytest.mark.parametrize("keep", [0, 1000, 60_000])
def test_archive_to_a_reader_that_leaves_is_a_device_error(store, ims_home, tmp_path, bf, keep):
    """imsbackup -f - | head -c N: the archive is incomplete, so this is never success
    (nor the quiet EXIT_PIPE of a listing): a device error, one line."""
    for i in range(40):
        put(store, f"u{i % 4}", "INBOX", i, size=20_000)
    writer = popen(ims_home, "imsbackup", "-b", bf, "-f", "-", "/", env=quiet(tmp_path),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader = subprocess.Popen([require("head"), "-c", str(keep)], stdin=writer.stdout, stdout=subprocess.PIPE)
    writer.stdout.close()
    got = reader.communicate(timeout=120)[0]
    err = writer.stderr.read()
    writer.stderr.close()
    status = writer.wait(timeout=120)
    assert len(got) == keep
    assert status == errors.EXIT_DEVICE, err
    assert b"Traceback" not in err and len(err.splitlines()) == 1
    assert b"incomplete" in err


def _closed(home, tmp, redirect: str, *argv):
    """``argv`` run with a standard stream closed (``>&-``, ``2>&-``, ``<&-``)."""
    from tests.helpers import argv_of, command_env
    return subprocess.run(["/bin/sh", "-c", f'exec "$@" {redirect}', "sh", *argv_of(argv)],
                          env=command_env(home, quiet(tmp)), capture_output=True, timeout=120)


def test_a_closed_standard_stream_is_a_device_error_or_nothing_to_say(store, ims_home, tmp_path):
    """A command started with stdin or stdout closed that needs it (-f -, a listing)
    ends with one line naming the stream and EXIT_DEVICE: not a crash (70, AttributeError
    on isatty), not exit 0 having listed nothing.  A closed stderr stops nothing: a backup
    to a file is written and exits 0.  (Before: 70 for -f - and for 2>&- with no archive
    written; 0 for -t and mboxutil -l.)"""
    put(store, "joe", "INBOX", 1)
    a = tmp_path / "a.ims"
    run(ims_home, "imsbackup", "-f", a, "/", check=0)
    for redirect, argv in ((">&-", ["imsbackup", "-f", "-", "/"]),
                           ("<&-", ["imsrestore", "-f", "-"]),
                           ("<&-", ["imsverify", "-v", "-f", "-"]),
                           (">&-", ["imsdr", "backup", "-f", "-"]),
                           (">&-", ["imsrestore", "-t", "-f", a, "/"]),
                           (">&-", ["mboxutil", "-l"]),
                           ("<&-", ["imsdeliver", "joe"])):       # (its option is -m, not -f)
        p = _closed(ims_home, tmp_path, redirect, *argv)
        err = no_traceback(p, argv)
        assert p.returncode == errors.EXIT_DEVICE, (argv, p.returncode, err)
        stream = "stdout" if redirect == ">&-" else "stdin"
        assert f"{stream} is closed" in err and len(err.splitlines()) <= 2, (argv, err)
        assert "-f" not in err.partition(" is closed")[2], err     # (every command's hint, J5)
    b = tmp_path / "b.ims"
    p = _closed(ims_home, tmp_path, "2>&-", "imsbackup", "-v", "-f", b, "/")
    assert p.returncode == errors.EXIT_OK, p.returncode
    assert _complete_archive(b)
    assert glob.glob(str(tmp_path / "*crash*")) == []


def test_v_lines_whose_reader_is_gone_are_dropped_and_the_work_stands(store, ims_home, tmp_path, driver):
    """``imsbackup -v ... 2>&1 | head -1``, ``imsrestore -v ... 2>&1 | head -1`` (here: a
    reader gone before the first line, every time): the -v lines are dropped and the
    run does all its work and exits 0.  (Before: the restore stopped after the folder
    whose line failed, exit 141, deliveries held; the backup exit 141 with no archive,
    and 70 with only stderr piped.)"""
    from tests.helpers import make_home, state
    from asm.store import open_store
    for i in range(60):
        put(store, f"u{i % 4}", "INBOX" if i % 10 == 0 else f"F{i % 10}", i)
    a, b = tmp_path / "a.ims", tmp_path / "b.ims"
    for target, streams in ((a, {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}),
                            (b, {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE})):
        p = popen(ims_home, "imsbackup", "-v", "-f", target, "/", env=quiet(tmp_path), **streams)
        (p.stdout or p.stderr).close()          # the reader is gone
        assert p.wait(timeout=120) == errors.EXIT_OK, streams
        assert _complete_archive(target)
    home2 = tmp_path / "ims2"
    make_home(home2, driver)
    p = popen(home2, "imsrestore", "-v", "-f", a, env=quiet(tmp_path),
              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    p.stdout.close()
    assert p.wait(timeout=120) == errors.EXIT_OK
    with in_home(home2):
        restored = state(open_store(make_home(home2, driver)))
    assert restored == state(store)
    assert glob.glob(str(tmp_path / "*crash*")) == []


# ----------------------------------------------------------------------------- SIGTERM

def _complete_archive(path) -> bool:
    with open(path, "rb") as f:
        r = ArchiveReader(f)
        for _ in r:
            pass
        return r.complete


def test_sigterm_at_any_moment_of_imsbackup(store, ims_home, tmp_path):
    """An engine cancelling the job may send SIGTERM at any moment, even while Python is
    still starting: no traceback, 130 (or a quiet death by the signal before the command
    started), nothing half-written left, the previous archive never replaced by half of one."""
    for i in range(150):
        put(store, f"u{i % 6}", "INBOX", i, size=30_000)
    target = tmp_path / "a.ims"
    argv = ["imsbackup", "-b", "1", "-f", target, "/"]
    t0 = time.monotonic()
    run(ims_home, *argv, env=quiet(tmp_path), check=errors.EXIT_OK)
    whole = time.monotonic() - t0            # about 0.5 s here: interpreter start, setup, writing
    statuses = []
    n = 24
    for k in range(n):
        delay = whole * (0.1 + k / (n - 1))  # from a tenth of a run to past its end, on this machine
        target.write_bytes(b"yesterday's good archive")
        p = popen(ims_home, *argv, env=quiet(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=120)[1].decode("utf-8", "replace")
        statuses.append(p.returncode)
        assert "Traceback" not in err and "Exception ignored" not in err, (delay, err)
        assert p.returncode in (errors.EXIT_INTERRUPTED, -signal.SIGTERM, errors.EXIT_OK), (delay, p.returncode, err)
        assert len(err.splitlines()) <= 1, (delay, err)
        if p.returncode == errors.EXIT_INTERRUPTED:
            assert err.startswith("imsbackup: interrupted"), err
        assert [f for f in os.listdir(tmp_path) if f.endswith(".partial")] == [], delay
        if target.read_bytes() != b"yesterday's good archive":
            assert _complete_archive(target), delay         # replaced only by a whole archive
    assert errors.EXIT_INTERRUPTED in statuses, statuses     # the cancel was seen and handled
    assert glob.glob(str(tmp_path / "*crash*")) == []


def _signal_when(p, pattern, sig, timeout=60):
    """Send ``sig`` to ``p`` once a file matching ``pattern`` exists (the run is under way)."""
    deadline = time.monotonic() + timeout
    while not glob.glob(pattern, recursive=True) and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.005)
    p.send_signal(sig)
    return p.communicate(timeout=120)[1].decode("utf-8", "replace")


def test_sighup_is_sigterm_unless_ignored(store, ims_home, tmp_path):
    """SIGHUP (the operator's ssh session dropped) ends a run as SIGTERM does: 130, one
    line, the hidden .partial removed, the --report written, a restore test's scratch
    installation removed.  Under nohup (SIGHUP ignored) the backup goes on to exit 0.
    (Before: a bare death by SIGHUP, 129, no line, the .partial and scratch left, no report.)"""
    for i in range(200):
        put(store, f"u{i % 4}", "INBOX", i, size=60_000)
    a = tmp_path / "a.ims"
    run(ims_home, "imsbackup", "-f", a, "/", check=0)
    target, report = tmp_path / "b.ims", tmp_path / "report.json"
    p = popen(ims_home, "imsbackup", "-b", "1", "--report", report, "-f", target, "/", env=quiet(tmp_path),
              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = _signal_when(p, str(tmp_path / ".b.ims.*.partial"), signal.SIGHUP)
    assert p.returncode == errors.EXIT_INTERRUPTED, (p.returncode, err)
    assert err.startswith("imsbackup: interrupted") and len(err.splitlines()) == 1, err
    assert glob.glob(str(tmp_path / ".*.partial")) == [] and not target.exists()
    assert report.exists()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    p = popen(ims_home, "imsverify", "--restore-test", "--scratch", scratch, "-f", a, env=quiet(tmp_path),
              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = _signal_when(p, str(scratch / "imsverify-restore-*" / "**" / "*u1*"), signal.SIGHUP)
    assert p.returncode == errors.EXIT_INTERRUPTED, (p.returncode, err)
    assert os.listdir(scratch) == [], err
    p = popen(ims_home, "imsbackup", "-f", target, "/", env=quiet(tmp_path), stdout=subprocess.DEVNULL,
              stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    err = _signal_when(p, str(tmp_path / ".b.ims.*.partial"), signal.SIGHUP)
    assert p.returncode == errors.EXIT_OK, (p.returncode, err)
    assert _complete_archive(target)


def test_an_interrupt_raised_where_python_cannot_pass_it_on_is_not_lost(tmp_path):
    """A SIGTERM whose KeyboardInterrupt is raised inside a weakref callback (as when it
    lands in the import machinery's module-lock callback, seen once in CI's neighbour
    run) must still end the command as interrupted, not be printed as "Exception
    ignored" and forgotten while the command goes on."""
    script = tmp_path / "cb.py"
    script.write_text(
        "import sys, time, weakref\n"
        "from asm.cli.common import run_command\n"
        "class X:\n    pass\n"
        "def body(argv):\n"
        "    def cb(_ref):\n"
        "        raise KeyboardInterrupt          # what the SIGTERM handler raises\n"
        "    x = X()\n"
        "    r = weakref.ref(x, cb)\n"
        "    del x                               # the callback runs here; its exception is unraisable\n"
        "    for _ in range(200):\n"
        "        time.sleep(0.01)\n"
        "    print('went on after the interrupt')\n"
        "    return 0\n"
        "sys.exit(run_command('imstest', body, []))\n")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    assert "Exception ignored" not in p.stderr and "went on" not in p.stdout, p.stderr
    assert p.returncode == errors.EXIT_INTERRUPTED, (p.returncode, p.stderr)
    assert p.stderr.strip().splitlines() == ["imstest: interrupted"], p.stderr


def test_other_unraisable_exceptions_still_reach_the_hook_that_was_there(tmp_path):
    """While a command runs its own unraisable hook is in place for interrupts only:
    anything else goes to the hook that was installed before (pytest's, a plugin's),
    and that hook is back when the command ends."""
    script = tmp_path / "hook.py"
    script.write_text(
        "import sys, weakref\n"
        "from asm.cli.common import run_command\n"
        "def mine(u):\n"
        "    print('previous hook got', u.exc_type.__name__)\n"
        "sys.unraisablehook = mine\n"
        "class X:\n    pass\n"
        "def body(argv):\n"
        "    def cb(_ref):\n"
        "        raise ValueError('in a callback')\n"
        "    x = X()\n"
        "    r = weakref.ref(x, cb)\n"
        "    del x\n"
        "    return 0\n"
        "code = run_command('imstest', body, [])\n"
        "print('restored', sys.unraisablehook is mine)\n"
        "sys.exit(code)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=root,
                       env={**os.environ, "PYTHONPATH": root})
    assert p.returncode == errors.EXIT_OK, p.stderr
    assert p.stdout.splitlines() == ["previous hook got ValueError", "restored True"], (p.stdout, p.stderr)


# ----------------------------------------------------------------------------- bugs

def _patched(tmp_path, module, attr, owner="") -> dict:
    """PYTHONPATH with a sitecustomize that turns ``module[.owner].attr`` into a bug."""
    d = tmp_path / "bug"
    d.mkdir(exist_ok=True)
    (d / "sitecustomize.py").write_text(
        f"import {module} as m\n\n\ndef _bug(*args, **kwargs):\n    raise ZeroDivisionError('a simulated bug')\n\n\n"
        f"setattr({'m.' + owner if owner else 'm'}, {attr!r}, _bug)\n")
    return {"PYTHONPATH": os.pathsep.join([str(d), ROOT])}


@pytest.mark.parametrize("case", [
    ("mboxutil", ["-l"], "asm.cli.mboxutil", "open_installation", ""),
    ("imsbackup", ["-f", "{t}/a.ims", "/"], "asm.archive.writer", "close", "ArchiveWriter"),
    ("imsrestore", ["-f", "{t}/a.ims"], "asm.restore", "restore", "Restorer"),
    ("msconfig", ["show"], "asm.cli.msconfig", "Config", ""),
])
def test_a_bug_is_one_line_a_crash_file_and_70(store, ims_home, tmp_path, case):
    name, argv, module, attr, owner = case
    put(store, "joe", "INBOX", 1)
    work = tmp_path / "work"
    work.mkdir()
    run(ims_home, "imsbackup", "-f", work / "a.ims", "/", check=0)
    before = (work / "a.ims").read_bytes()
    argv = [a.format(t=work) for a in argv]
    if name == "imsbackup":
        (work / "a.ims").write_bytes(b"yesterday's good archive")
    env = _patched(tmp_path, module, attr, owner)
    p = run(ims_home, name, *argv, env=quiet(work, **env))
    err = no_traceback(p, name)
    assert p.returncode == errors.EXIT_INTERNAL, err
    assert len(err.splitlines()) == 1 and err.startswith(f"{name}: internal error (ZeroDivisionError: a simulated bug)")
    crash = glob.glob(str(work / f"{name}-crash-*.txt"))
    assert len(crash) == 1 and f"details in {crash[0]}; please report it" in err
    text = open(crash[0], encoding="utf-8").read()
    assert "Traceback (most recent call last)" in text and "ZeroDivisionError: a simulated bug" in text
    assert oct(os.stat(crash[0]).st_mode & 0o777) == "0o600"
    if name == "imsbackup":          # a bug while writing never leaves a half archive behind
        assert (work / "a.ims").read_bytes() == b"yesterday's good archive"
        assert [f for f in os.listdir(work) if f.endswith(".partial")] == []
    else:
        assert (work / "a.ims").read_bytes() == before
    # IMS_DEBUG=1: the traceback on stderr instead of a file
    p = run(ims_home, name, *argv, env=quiet(work, **env, IMS_DEBUG="1"))
    err = p.stderr.decode()
    assert p.returncode == errors.EXIT_INTERNAL and "Traceback (most recent call last)" in err
    assert "ZeroDivisionError: a simulated bug" in err and len(glob.glob(str(work / "*crash*"))) == 1


# ----------------------------------------------------------------------------- every command

GARBAGE = [
    ["--no-such-option"],
    ["-Z", "x"],
    ["\udcff\udcfe"],                        # an argument that is not UTF-8
    ["-f"],                                  # an option without its value
    ["list", "--json", "--bogus", "/x//y"],
]

# commands that would do real (slow) work when given nothing: a demo builds a store
NO_PLAIN_RUN = {"ims-demo"}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_every_command_refuses_garbage_without_a_traceback(name, tmp_path):
    home = tmp_path / "ims"
    runs = [(["--help"], home), *[(g, home) for g in GARBAGE]]
    if name not in NO_PLAIN_RUN:
        runs += [([], home), ([], None)]      # nothing at all; and without IMS_HOME
    for argv, h in runs:
        p = run(h, name, *argv, env=quiet(tmp_path, **({} if h else {"IMS_HOME": None})), cwd=tmp_path)
        err = no_traceback(p, f"{name} {argv}")
        assert p.returncode in STATUSES - {errors.EXIT_INTERNAL}, (name, argv, p.returncode, err)
        if argv == ["--help"]:
            assert p.returncode == errors.EXIT_OK and b"usage" in p.stdout.lower() + p.stderr.lower()
        elif p.returncode == errors.EXIT_USAGE:
            assert len(err.splitlines()) == 1, (name, argv, err)
    assert glob.glob(str(tmp_path / "*crash*")) == []


@pytest.mark.parametrize("name,argv", [
    ("msconfig", ["show"]), ("mboxutil", ["-l"]), ("imsimport", ["-u", "joe", "-s", "x"]),
    ("imsdeliver", ["joe"]), ("imsbackup", ["-f", "a.ims", "/"]), ("imsrestore", ["-f", "a.ims"]),
    ("imsasm", ["-r"]), ("mkbackupdir", ["-p", "tree"]), ("imsasmreport", []),
    ("imsstage", ["list", "-D", "st"]), ("imsnbu", ["restore", "joe"]), ("imsbacula", ["history"]),
    ("imsnbu-notify", ["start", "--", "c", "p", "s", "FULL"]),
])
def test_without_ims_home_every_command_says_so(name, argv, tmp_path):
    p = run(None, name, *argv, env=quiet(tmp_path, IMS_HOME=None), cwd=tmp_path)
    err = no_traceback(p, name)
    assert p.returncode == errors.EXIT_USAGE and "IMS_HOME is not set" in err, (p.returncode, err)
    assert len(err.splitlines()) == 1, err
    assert os.listdir(tmp_path) == []                # nothing created anywhere


def test_list_and_map_files_hold_names_whatever_their_bytes(store, ims_home, tmp_path):
    """-u and -m files are read as names, bytes that are not UTF-8 included (names
    round-trip, tests/test_names.py): what they name that does not exist, or a line that
    is no mapping, is one line and EXIT_USAGE, never a traceback, and nothing is written."""
    put(store, "joe", "INBOX", 1)
    a = tmp_path / "a.ims"
    run(ims_home, "imsbackup", "-f", a, "/", check=0)
    users = tmp_path / "users"
    users.write_bytes(b"/primary/user/j\xf6e\n")
    mapfile = tmp_path / "map"
    mapfile.write_bytes(b"joe=ann\n\xff\xfe\n")
    for argv, says in ((["imsbackup", "-u", users, "-f", tmp_path / "b.ims"], "/primary/user/j\\xf6e: no user 'j\\xf6e'"),
                       (["imsrestore", "-m", mapfile, "-f", a], f"{mapfile}:2: expected 'olduser=newuser'")):
        p = run(ims_home, *argv, env=quiet(tmp_path))
        assert p.returncode == errors.EXIT_USAGE, p.stderr
        err = no_traceback(p)
        assert says in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "b.ims").exists() and glob.glob(str(tmp_path / "*crash*")) == []


def restore_mapped(ims_home, tmp_path, mapping: bytes) -> tuple:
    """The store of ``ims_home`` backed up and restored into a new classic installation
    with ``imsrestore -m`` of a map file holding ``mapping``: (the restore's
    CompletedProcess, the new IMS_HOME, the map file)."""
    from tests.helpers import make_home
    a = tmp_path / "a.ims"
    run(ims_home, "imsbackup", "-f", a, "/", check=0)
    dest = tmp_path / "dest"
    make_home(dest, "classic")
    mapfile = tmp_path / "map"
    mapfile.write_bytes(mapping)
    return run(dest, "imsrestore", "-m", mapfile, "-f", a, env=quiet(tmp_path)), dest, mapfile


def test_list_and_map_files_saved_with_a_byte_order_mark(store, ims_home, tmp_path):
    """A -m map file or -u list saved by an editor that writes a UTF-8 byte-order mark
    (Notepad) and CRLF line ends: the mark is not part of the first name, as in msg.conf
    and backup-groups.conf.  Read as a name, the first map line matched no archived user
    and that user's mail was restored under its own name (into another person's mailbox
    on a live store), exit 1; the first -u line was a bad path."""
    from tests.helpers import make_home
    from asm.store import open_store
    put(store, "joe", "INBOX", 1)
    put(store, "ann", "INBOX", 2)
    p, dest, _map = restore_mapped(ims_home, tmp_path, b"\xef\xbb\xbfjoe=newjoe\r\nann=newann\r\n")
    assert p.returncode == 0 and p.stderr == b"", (p.returncode, p.stderr)
    assert sorted(open_store(make_home(dest, "classic")).users("primary")) == ["newann", "newjoe"]
    users = tmp_path / "users"
    users.write_bytes(b"\xef\xbb\xbf/primary/joe\r\n# ann too\r\n/primary/ann\r\n")
    b = tmp_path / "b.ims"
    p = run(ims_home, "imsbackup", "-u", users, "-f", b, env=quiet(tmp_path))
    assert p.returncode == 0 and p.stderr == b"", (p.returncode, p.stderr)
    listed = run(ims_home, "imsrestore", "-t", "-f", b, check=0).stdout
    assert b"/primary/joe/INBOX\t" in listed and b"/primary/ann/INBOX\t" in listed, listed


@contextlib.contextmanager
def store_of_another_user(tmp_path, drv: str, top: str):
    """An installation of driver ``drv`` with joe's INBOX, whose store directory ``top``
    (relative to IMS_HOME) belongs to another user, 0700, as after msconfig set
    store.owner: yields (IMS_HOME, the argv prefix that runs a command as root without
    the right to read others' files, through capsh).  Mode 0755 again at the end."""
    import shutil
    from asm.store import open_store
    from tests.helpers import make_home, require
    capsh = shutil.which("capsh") or require("/usr/sbin/capsh", "to run a command without the right to read "
                                                               "others' files")
    if os.geteuid() != 0:
        pytest.skip("needs root, to drop its right to read others' files")
    home = tmp_path / "ims"
    cfg = make_home(home, drv)
    with in_home(home):
        put(open_store(cfg), "joe", "INBOX", 1)
    top = home / top
    for d, _dirs, files in os.walk(top):
        for n in [d, *(os.path.join(d, f) for f in files)]:
            os.chown(n, 65534, 65534)
    os.chmod(top, 0o700)
    try:
        yield home, [capsh, "--drop=cap_dac_override,cap_dac_read_search,cap_fowner", "--", "-c", 'exec "$0" "$@"']
    finally:
        os.chmod(top, 0o755)


def test_a_classic_store_the_user_cannot_read_is_the_store_status(tmp_path):
    """A cron line in the wrong crontab: the classic store (0700, its owner's) cannot be
    read by the user running the command.  Every command that opens it says so in one
    line, EXIT_STORE, and names what to do; it was an internal error (70, "please report
    it", a crash file), as the unreadable mailbox list looked missing and the search of
    the partitions for its lost users met the permission error (reconstruct said the
    list was missing and told to rebuild it)."""
    from tests.helpers import command
    with store_of_another_user(tmp_path, "classic", "data/store") as (home, as_other):
        root = home / "data" / "store"
        for argv in (["imsbackup", "-f", tmp_path / "a.ims", "/"], ["mboxutil", "-l"],
                     ["reconstruct", "-n", "-r", "/"]):
            p = run(home, *as_other, command(argv[0]), *argv[1:], env=quiet(tmp_path))
            err = no_traceback(p, argv[0])
            assert p.returncode == errors.EXIT_STORE and len(err.splitlines()) == 1, (argv, p.returncode, err)
            assert f"cannot read {root}" in err and "run as the store's owner" in err, err
            assert "is missing" not in err, err
        assert not (tmp_path / "a.ims").exists() and glob.glob(str(tmp_path / "*crash*")) == []


@pytest.mark.parametrize("drv", ["classic", "maildir"])
def test_a_disaster_backup_of_a_store_the_user_cannot_read_is_the_store_status(tmp_path, drv):
    """imsdr backup run by a user who cannot read the store (the cron line in the wrong
    crontab): the classic mailbox list looked missing and the partitions' search for
    lost users met the permission error, which the capture took for the device's,
    "cannot write DEVICE", exit 3; a Maildir partition it could not list was passed
    over, every user's control files left out.  Now the store's status, 17, one line
    naming what it cannot read and what to do, and no bundle kept; as root, exit 0."""
    from tests.helpers import command
    top = "data/store" if drv == "classic" else "data/maildir/primary"
    bundle = tmp_path / "dr.tar"
    with store_of_another_user(tmp_path, drv, top) as (home, as_other):
        p = run(home, *as_other, command("imsdr"), "backup", "-f", bundle, env=quiet(tmp_path))
        err = no_traceback(p, "imsdr")
        assert p.returncode == errors.EXIT_STORE and len(err.splitlines()) == 1, (p.returncode, err)
        assert f"cannot read {home / top}" in err and "run as the store's owner or root" in err, err
        assert "cannot write" not in err and not bundle.exists(), err
    p = run(home, "imsdr", "backup", "-f", bundle, env=quiet(tmp_path))
    assert p.returncode == 0 and bundle.exists(), p.stderr


def test_a_map_to_a_name_the_store_cannot_keep_is_refused_before_anything(store, ims_home, tmp_path):
    """imsrestore -m with a new user ID the target store cannot keep (the classic store:
    bytes that are not UTF-8) is a bad map file: one line naming its line, EXIT_USAGE, and
    nothing is written (not one error per folder and the store's status 17)."""
    from tests.helpers import make_home
    for f in ("INBOX", "Work", "Old"):
        put(store, "alice", f, 1)
    p, dest, mapfile = restore_mapped(ims_home, tmp_path, b"# new names\nalice=d\xffave\n")
    err = no_traceback(p)
    assert p.returncode == errors.EXIT_USAGE and len(err.splitlines()) == 1, (p.returncode, err)
    assert f"{mapfile}:2:" in err and "not UTF-8" in err, err
    from asm.store import open_store
    assert open_store(make_home(dest, "classic")).users("primary") == []      # nothing written


# ----------------------------------------------------------------------------- -b

def test_one_blocking_factor_range_everywhere(store, ims_home, tmp_path):
    """-b takes 1..4096 in both commands, as the archive's record layer and docs/format.md do."""
    from asm.archive.records import MAX_BLOCKING_FACTOR
    assert MAX_BLOCKING_FACTOR == 4096
    with open(os.path.join(ROOT, "docs", "format.md"), encoding="utf-8") as f:
        assert f"1..{MAX_BLOCKING_FACTOR} accepted" in f.read()
    for i in range(3):
        put(store, "joe", "INBOX", i)
    a = tmp_path / "a.ims"
    for bad in ("0", "4097", "-1", "x"):
        for cmd in (["imsbackup", "-f", a, "/"], ["imsrestore", "-t", "-f", a]):
            p = run(ims_home, cmd[0], "-b", bad, *cmd[1:])
            assert p.returncode == errors.EXIT_USAGE and b"use 1 to 4096" in p.stderr, p.stderr
            assert not a.exists()
    run(ims_home, "imsbackup", "-b", "4096", "-f", a, "/", check=0)
    assert a.stat().st_size % (512 * 4096) == 0
    p = run(ims_home, "imsrestore", "-b", "4096", "-t", "-f", a, check=0)
    assert p.stdout.count(b"/primary/joe/INBOX/") == 3
    with open(a, "rb") as f:
        assert ArchiveReader(f, 1).header["blocking_factor"] == 4096


# ----------------------------------------------------------------------------- store errors

def test_store_errors_end_with_their_own_status(store, ims_home, tmp_path):
    """A store error is no longer 'some mailboxes failed' (1): named things that do not
    exist or already exist are usage errors, a held lock is EXIT_LOCKED."""
    store.create_user("joe")
    p = run(ims_home, "mboxutil", "-c", "user/joe")
    assert p.returncode == errors.EXIT_USAGE and no_traceback(p) == "mboxutil: user already exists: 'joe'\n"
    p = run(ims_home, "mboxutil", "-d", "user/nobody/Work")
    assert p.returncode == errors.EXIT_USAGE and "nobody" in no_traceback(p)
    p = run(ims_home, "mboxutil", "-d", "user/joe/Work")
    assert p.returncode == errors.EXIT_USAGE and "Work" in no_traceback(p)
    p = run(ims_home, "mboxutil", "-c", "user/ann", "-p", "nowhere")
    assert p.returncode == errors.EXIT_USAGE and "no partition 'nowhere'" in no_traceback(p)
    p = run(ims_home, "imsdeliver", "joe", "nobody", input=b"Subject: x\r\n\r\nx\r\n")
    assert p.returncode == errors.EXIT_USAGE and no_traceback(p) == (
        "imsdeliver: no user 'nobody': nothing delivered; check the name (mboxutil -l lists the users' mailboxes)\n")
    run(ims_home, "msconfig", "set", "store.locktimeout", "1", check=0)
    with store.lock("joe", "INBOX"):
        p = run(ims_home, "imsimport", "-u", "joe", "-s", "-",
                input=b"From a@b Mon Jan  1 10:00:00 2024\nSubject: x\n\nx\n")
    assert p.returncode == errors.EXIT_LOCKED, p.stderr
    assert "another process holds it" in no_traceback(p) and "(nothing was imported)" in p.stderr.decode()
    assert [m.uid for m in store.messages("joe", "INBOX")] == []


@pytest.mark.parametrize("columns", [None, "0", "-3", "37", "200", "wide"])
@pytest.mark.parametrize("terminal", [None, (31, 120), (24, 0)])
def test_help_is_as_wide_as_argparse_makes_it(columns, terminal, monkeypatch):
    """Every command's help formatter takes its width without importing shutil (startup
    time): the width must be shutil.get_terminal_size's, whatever $COLUMNS and stdout
    say, so --help reads as argparse alone would write it."""
    import argparse
    import fcntl
    import pty
    import shutil
    import struct
    import sys
    import termios

    from asm.cli.common import ArgParser
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    if terminal is not None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *terminal, 0, 0))
        out = os.fdopen(slave, "w")
        monkeypatch.setattr(sys, "__stdout__", out)
    try:
        def parser(cls, **kw):
            p = cls(prog="imsx", description="a command " * 30, **kw)
            p.add_argument("-f", dest="device", metavar="DEVICE", help="where it goes " * 20)
            p.add_argument("names", nargs="*", help="logical paths " * 15)
            return p.format_help()
        want = shutil.get_terminal_size().columns - 2
        assert argparse.HelpFormatter("x")._width == want
        assert parser(ArgParser) == parser(argparse.ArgumentParser)
    finally:
        if terminal is not None:
            out.close()
            os.close(master)


def test_a_device_error_says_once_what_became_of_the_archive():
    """imsbackup adds "the archive is incomplete" to a device's error unless the device
    said already what became of it (DeviceError.outcome_said), never by its wording."""
    from asm.cli.imsbackup import _incomplete
    from asm.devices import DeviceError, DeviceOSError
    plain = DeviceOSError("the link to backup.example was lost")
    assert _incomplete(plain, " and was removed") == \
        "the link to backup.example was lost; the archive is incomplete and was removed"
    worded = DeviceError("a device whose message merely mentions an incomplete thing")
    assert _incomplete(worded, "").endswith("; the archive is incomplete")
    said = DeviceOSError("the object had been completed on the server, and was removed")
    said.outcome_said = True
    assert _incomplete(said, " and was removed") == "the object had been completed on the server, and was removed"
    assert _incomplete(OSError(28, "No space left on device"), "") == \
        "No space left on device; the archive is incomplete"


def test_messages_say_nothing_to_the_terminal_and_stay_one_line(capsys):
    """A name from an archive or a store (an ESC sequence, BEL, a newline, DEL, C1) is
    written \\xNN in every message: one message is one line, and a forged archive cannot
    retitle, clear or recolour the operator's terminal.  (Before: imsbackup printed a
    folder name's newline and ESC raw; imsrestore -h a header's host.)"""
    from asm.cli.common import shown, warn
    assert shown("a\x1b]0;owned\x07\x1b[2Jb") == "a\\x1b]0;owned\\x07\\x1b[2Jb"
    assert shown("two\nlines\r\x7f\x85 t\tab") == "two\\x0alines\\x0d\\x7f\\x85 t\tab"
    assert shown("'j\\udcf6rg' caf\u00e9 \u65e5\u672c") == "'j\\xf6rg' caf\u00e9 \u65e5\u672c"
    warn("imsrestore", "primary/ann/INBOX/1.eml\x1b[31m: corrupt\nmember")
    err = capsys.readouterr().err
    assert err == "imsrestore: primary/ann/INBOX/1.eml\\x1b[31m: corrupt\\x0amember\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_while_the_command_loads_is_one_line_and_130(tmp_path, sig):
    """Ctrl-C or SIGTERM while the command's modules still load (before run_command sets
    its handlers): one line, status 130, no traceback, nothing done.  The load is made
    slow here (an import hook sleeps in it) so the signal lands there every time.
    (Before: SIGINT printed a traceback, exit 1 or -2; SIGTERM was a bare -15.)"""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys, time\n"
        "class Slow:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'asm.cli.imsrestore':\n"
        "            open(sys.argv[-1] + '.loading', 'w').close()\n"
        "            time.sleep(30)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Slow())\n")
    marker = tmp_path / "x.ims"
    # (SIGINT as a terminal gives it: a test run started in the background of a shell
    # without job control inherits SIGINT ignored, which a command rightly keeps)
    p = popen(None, "imsrestore", "-t", "-f", str(marker), env={"PYTHONPATH": str(hook)},
              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not os.path.exists(f"{marker}.loading") and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.01)
    os.kill(p.pid, sig)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err == b"imsrestore: interrupted while starting: nothing was done\n", \
        (p.returncode, err)


@pytest.mark.parametrize("where", ["atend.mark", "signals"])
def test_a_sigterm_as_run_command_takes_the_signals_is_one_line_and_130(store, ims_home, tmp_path, where):
    """A SIGTERM in run_command's first statements, after it took the signals over and
    before the body's try, raised a KeyboardInterrupt nothing caught: a traceback and the
    process ended by SIGINT (-2; seen in 1 of 9 parallel runs of the imsdr kill test).
    Here the SIGTERM is sent from inside those statements every time (atend.mark, or as
    the handlers are set), so one of the two early handlers must take it: one line, 130."""
    put(store, "joe", "INBOX", 2)
    script = tmp_path / "imsbackup"        # (named as the command: asm takes its early signals)
    script.write_text(
        "import os, signal, sys\n"
        "import asm.atend, asm.cli.common as common\n"
        "def kill(f):\n"
        "    def g(*a, **k):\n"
        "        r = f(*a, **k)\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        for _ in range(1000): pass          # (the handler runs between bytecodes)\n"
        "        return r\n"
        "    return g\n"
        + ("asm.atend.mark = kill(asm.atend.mark)\n" if where == "atend.mark" else
           "_set = signal.signal\n"
           "def set_then_kill(sig, handler):\n"
           "    old = _set(sig, handler)\n"
           "    if sig == signal.SIGTERM and handler is common._raise_interrupt:\n"
           "        kill(lambda: None)()\n"
           "    return old\n"
           "signal.signal = set_then_kill\n")
        + "from asm.cli.imsbackup import main\n"
        "sys.exit(main())\n")
    p = run(ims_home, sys.executable, script, "-f", tmp_path / "a.ims", "/", env=quiet(tmp_path), text=True)
    assert p.returncode == errors.EXIT_INTERRUPTED and "Traceback" not in p.stderr, (p.returncode, p.stderr)
    assert len(p.stderr.splitlines()) == 1 and "interrupted" in p.stderr, p.stderr
    assert not (tmp_path / "a.ims").exists()


@pytest.mark.parametrize("device", ["newdir/", "", "a.ims/"], ids=["missing-dir-slash", "empty", "file-slash"])
def test_imsbackup_f_that_can_name_no_file_is_refused_before_reading(store, ims_home, tmp_path, device):
    """imsbackup -f newdir/ (a missing directory) and -f "" (an unset variable in a cron
    line) read the whole store, then failed with exit 3, "cannot finish newdir/: Not a
    directory".  Refused up front: exit 2, one line naming the argument, nothing written."""
    put(store, "joe", "INBOX", 3)
    work = tmp_path / "work"
    work.mkdir()
    p = run(ims_home, "imsbackup", "-v", "-f", device, "/", cwd=work, text=True)
    assert p.returncode == errors.EXIT_USAGE, p.stderr
    assert len(p.stderr.splitlines()) == 1 and repr(device) in p.stderr, p.stderr
    assert "/primary/joe" not in p.stderr and os.listdir(work) == []


def test_a_device_failing_during_the_backup_is_in_the_reports_errors(store, ims_home, tmp_path):
    """The device failing during the run (stdout's reader gone) or at its end: the line
    was on stderr and the status in --report, but the report's errors were [] (a
    monitor reading the JSON saw no reason); a failure found before the run had it."""
    import json
    for i in range(40):
        put(store, f"u{i % 4}", "INBOX", i, size=20_000)
    rep = tmp_path / "rep.json"
    p = popen(ims_home, "imsbackup", "-f", "-", "--report", rep, "/", env=quiet(tmp_path),
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()                         # the reader goes away at once
    err = p.communicate(timeout=120)[1].decode()
    assert p.returncode == errors.EXIT_DEVICE, (p.returncode, err)
    doc = json.loads(rep.read_text())
    assert doc["status"] == errors.EXIT_DEVICE
    assert [e["error"] for e in doc["errors"]] == [err.strip().split(": ", 1)[1]], (doc["errors"], err)


def test_an_ims_home_too_deep_for_sqlite_is_named_so(tmp_path):
    """An IMS_HOME so deep that the classic store's mailbox list (data/store/mboxlist/
    mailboxes.db) is longer than SQLite opens: imsrestore said "the classic store's mailbox
    list ... cannot be opened: unable to open database file", which reads as permissions
    or a disk.  Now the line names the path's length and SQLite's limit (exit 17, nothing
    restored); 30 bytes shorter (the INBOX's index under the limit too, which the store
    checks itself) the same restore is whole.  (The installation was made elsewhere and
    moved there: msconfig refuses to make it there.)"""
    from asm.sqlitedb import PATH_MAX
    src = tmp_path / "src"
    s = open_store(make_home(src, "classic"))
    s.create_user("alice")
    for i in range(3):
        s.append("alice", "INBOX", io.BytesIO(b"Subject: %d\r\n\r\nbody\r\n" % i))
    archive = tmp_path / "a.ims"
    run(src, "imsbackup", "-f", archive, "/", check=0)
    tail = "/h/data/store/mboxlist/mailboxes.db"
    base = os.path.realpath(tmp_path)
    for over in (1, -30):
        deep = deep_dir(base, PATH_MAX + over - len(tail), "x" if over > 0 else "y")
        home = deep + "/h"
        assert len((home + tail[2:]).encode()) == PATH_MAX + over
        # msconfig refuses to make an installation that deep (test_config); one moved
        # there (a copied IMS_HOME, a deeper mount) is what a command meets
        shallow = tmp_path / f"h{over}"
        make_home(shallow, "classic")
        os.rename(shallow, home)
        p = run(home, "imsrestore", "-f", archive, "/", text=True)
        if over > 0:
            assert p.returncode == errors.EXIT_STORE, p.stderr
            assert p.stderr.count("\n") == 1, p.stderr
            assert (f"mailboxes.db cannot be opened: unable to open database file: its path is "
                    f"{PATH_MAX + 1} bytes long (links resolved), longer than SQLite opens ({PATH_MAX} "
                    f"bytes); give it a shorter path") in p.stderr, p.stderr
            written = [f for _, _, files in os.walk(os.path.join(home, "data", "store", "partition"))
                       for f in files]
            assert written == [], written
        else:
            assert p.returncode == 0, p.stderr
            got = open_store(make_home(home, "classic"))
            assert [m.uid for m in got.messages("alice", "INBOX")] == [1, 2, 3]
