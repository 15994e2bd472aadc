"""Shared fixtures: an installation per test, a store of each driver, the private
servers (Dovecot, OpenSSH, Bacula), and the rule that under CI=true nothing skips: a
missing server or tool fails the test (tests/helpers.py: ``unavailable``, ``require``),
and any other skip is reported as a failure too."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# every full backup of the suite, in this process and in the commands it runs, reads
# ahead from its first folder (asm/backupwarm.py; by default only past 16 MiB, which
# few test stores reach), so the whole suite checks that the read-ahead changes nothing
os.environ.setdefault("IMS_READAHEAD_AFTER", "0")

from asm import plugins  # noqa: E402
from asm.store import open_store  # noqa: E402
from tests.bacula import require_bacula, running_bacula  # noqa: E402
from tests.dovecot import require_dovecot, running_dovecot  # noqa: E402
from tests.helpers import CI, DRIVERS, make_home, require  # noqa: E402
from tests.sshd import require_sshd, running_sshd  # noqa: E402

__all__ = ["CI", "DRIVERS", "make_home", "require"]     # older tests import these from here


# -- scratch space ------------------------------------------------------------------------
SCRATCH_FREE = 4 << 30      # what a whole run may hold in its temporary directories at once


def _scratch_dir() -> str | None:
    """Where the tests' temporary trees go: $IMS_TEST_TMPDIR if set (``-`` keeps $TMPDIR),
    else /dev/shm when it is a writable tmpfs with room.  The stores the tests build are
    made durable the product's way (fsync, syncfs, SQLite synchronous=FULL) on every
    write; on a shared disk those calls, not the work tested, took most of a run's time.
    The same calls still run on a tmpfs, where they cost nothing; nothing here tests
    durability across a power loss, which no test can.  Full-disk tests mount their own
    small tmpfs either way."""
    want = os.environ.get("IMS_TEST_TMPDIR")
    if want:
        return None if want == "-" else want
    shm = "/dev/shm"
    try:
        with open("/proc/mounts") as f:
            tmpfs = any(line.split()[1:3] == [shm, "tmpfs"] for line in f)
        room = shutil.disk_usage(shm).free >= SCRATCH_FREE
    except OSError:
        return None
    return shm if tmpfs and room and os.access(shm, os.W_OK | os.X_OK) else None


def pytest_configure(config):
    """Point $TMPDIR (tmp_path, tempfile, and every command the tests start) at the
    scratch directory before pytest makes its base temporary directory; pytest-xdist's
    workers inherit it from the controller, which makes theirs under its own."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    scratch = _scratch_dir()
    if scratch:
        os.makedirs(scratch, exist_ok=True)
        os.environ["TMPDIR"] = scratch
        tempfile.tempdir = None         # gettempdir() reads $TMPDIR again


# -- order ---------------------------------------------------------------------------------
# Files that take longest, started first: with one file per worker (scripts/test: --dist
# loadfile --no-loadscope-reorder) the run ends soon after its longest file, so none of
# these should be left for last.  Only the order of whole files changes; a file's tests
# keep theirs.  A file missing here (or gone) just runs in its usual place.
# test_ssh*.py, test_incremental_dovecot.py, test_dovecot_layouts.py, test_staging_s3.py
# came last in name order although each takes minutes (test_ssh.py, one file then, 6 min
# alone on a loaded machine): a file that long handed out last keeps one worker busy
# after the others end.  This list alone sets the order: pytest 9 collects the files
# scripts/test names first (its first=) in their directory's order.
LONGEST_FIRST = ["test_restore_kill.py", "test_bacula_jobs.py", "test_verify.py", "test_archive_fuzz.py",
                 "test_errors.py", "test_s3.py", "test_dbox_chain.py", "test_dovecot_live_restore.py",
                 "test_reconstruct.py", "test_ssh_faults.py", "test_ssh.py", "test_incremental_dovecot.py",
                 "test_dovecot_layouts.py", "test_staging_s3.py", "test_dovecot_acl.py", "test_interrupt.py",
                 "test_dovecot_chain_kill.py", "test_incremental.py", "test_dbox_live_giveback.py",
                 "test_staging_faults.py", "test_dovecot_list_index.py"]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))       # stable


def _no_skip_under_ci(report) -> None:
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where nothing may skip: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skipped test is a failed one, whatever skipped it."""
    outcome = yield
    _no_skip_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """... and so is a test module that skips itself as a whole."""
    outcome = yield
    _no_skip_under_ci(outcome.get_result())


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch):
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def ims_home(tmp_path, monkeypatch):
    home = tmp_path / "ims"
    monkeypatch.setenv("IMS_HOME", str(home))
    return home


@pytest.fixture(params=DRIVERS)
def driver(request):
    return request.param


@pytest.fixture
def config(ims_home, driver):
    return make_home(ims_home, driver)


@pytest.fixture
def store(config):
    return open_store(config)


# -- private servers (tests/dovecot.py, tests/sshd.py, tests/bacula.py) -------------------
@pytest.fixture
def dovecot():
    """A running private Dovecot with an empty store at ``dovecot.store``."""
    require_dovecot()
    with running_dovecot() as server:
        yield server


@pytest.fixture(scope="module")
def sshd():
    """A running private OpenSSH server on 127.0.0.1, shared by a module's tests."""
    require_sshd()
    with running_sshd() as server:
        yield server


@pytest.fixture
def bacula(tmp_path):
    """A not-yet-started private Bacula; call ``start(include_text)``."""
    require_bacula()
    with running_bacula(str(tmp_path / "bacula")) as b:
        yield b
