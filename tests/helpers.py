"""The one helper set of the tests.

* The rule for what a test needs: under CI=true a missing server, tool or privilege
  fails the test; elsewhere it skips (``unavailable``, ``require``).
* The project's commands run as a user runs them, from the environment the README's
  commands build: the venv's bin directory next to ``sys.executable``, never whatever
  is on PATH (``command``, ``run``, ``popen``).  A program the test hands a command
  *name* to (savepnpc running a res file) finds it as the docs tell administrators to
  set it up (tests/test_networker.py links the commands, as docs/networker.md does).
* Stores: messages, fills and what a client sees of them; staging catalogs; the sample
  mbox; a small filesystem for full-disk cases.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from typing import NoReturn

import pytest

from asm.cli.demo import fingerprint
from asm.config import Config
from asm.demo import build_demo
from asm.store import open_store
from asm.store.base import Store

CI = os.environ.get("CI") == "true"
DRIVERS = ["classic", "maildir"]
BIN = os.path.dirname(sys.executable)          # the venv's bin: the project's commands
TIMEOUT = 300                                  # seconds before a hung command fails its test


# -- what a test needs ------------------------------------------------------------------
def unavailable(why: str) -> NoReturn:
    """A server, tool or privilege the test needs is missing: under CI=true (where
    .ci/run installs everything and runs as root) the test fails, elsewhere it skips."""
    if CI:
        pytest.fail(f"{why} (CI=true: a missing requirement is a failure)", pytrace=False)
    pytest.skip(why)


def require(tool: str, why: str = "") -> str:
    """Path of an outside ``tool`` (tar, sqlite3, ...) found on PATH; ``unavailable``
    when it is missing.  Never for the project's own commands: see ``command``."""
    path = shutil.which(tool) or (tool if os.path.isabs(tool) and os.path.exists(tool) else None)
    if path is None:
        unavailable(f"{tool} is not installed{': ' + why if why else ''} (.ci/run installs it)")
    return path


# -- the project's commands ---------------------------------------------------------------
def command(name: str) -> str:
    """Absolute path of the project's command ``name`` in the venv's bin directory."""
    path = os.path.join(BIN, name)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} is not in {BIN}, the bin directory of {sys.executable}: "
                    f"run the tests with the venv's python after ./scripts/setup-venv", pytrace=False)
    return path


def command_env(home=None, env: dict | None = None) -> dict:
    """This process's environment with IMS_HOME=home (kept as it is when home is None)
    and ``env`` applied on top; a value of None removes that variable."""
    e = dict(os.environ)
    if home is not None:
        e["IMS_HOME"] = str(home)
    for k, v in (env or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = str(v)
    return e


#: The NetBackup notify scripts' command, run as the scripts ``imsnbu install`` writes run
#: it: this environment's python with ``-m plugins.netbackup.notify`` (it has no console
#: script of its own).
NOTIFY = "imsnbu-notify"


def argv_of(argv) -> list:
    """[command, args...] -> an argv to execute: a bare command name is the project's
    command from the venv (``command``; ``NOTIFY`` as the notify scripts run it); a path
    (a script the project installed, such as a NetBackup notify script) is run as it is.
    Arguments are strings (a name that is not UTF-8 as os.fsdecode gives it) or bytes."""
    cmd, *args = (os.fspath(a) if isinstance(a, os.PathLike) else a for a in argv)
    if cmd == NOTIFY:
        exe = [sys.executable, "-m", "plugins.netbackup.notify"]
    else:
        exe = [cmd if os.sep in cmd else command(cmd)]
    return [*exe, *(a if isinstance(a, bytes) else str(a) for a in args)]


def _shown(data) -> str:
    if data is None:
        return ""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text if len(text) < 4000 else text[:2000] + "\n...\n" + text[-2000:]


def sh_commands(text: str) -> list[list[str]]:
    """The commands of ``text`` as sh reads them (separated by ';'): what a line of
    advice tells an administrator to run."""
    lex = shlex.shlex(text, posix=True, punctuation_chars=";")
    lex.whitespace_split = True
    cmds, cur = [], []
    for tok in lex:
        if tok == ";":
            cmds.append(cur)
            cur = []
        else:
            cur.append(tok)
    return cmds + ([cur] if cur else [])


def run(home, *argv, input=None, env=None, check=None, timeout=TIMEOUT, stdin=None, text=False, cwd=None):
    """Run one of the project's commands as an administrator would and wait for it.

    ``argv``: a command name (``imsbackup``, ``imsstage``, ...) or a path, then its
    arguments (paths and numbers are turned into strings).  ``home``: IMS_HOME of the
    child (None: as in this process).  ``env``: variables set (or removed, with None)
    on top of this process's environment.  ``input``: bytes (str with ``text``) fed on
    stdin; otherwise ``stdin`` (a file, a descriptor; default /dev/null: a command
    never waits on the tester's terminal).  ``check``: the exit status the test
    expects.  Returns the CompletedProcess, stdout and stderr captured."""
    if input is None and stdin is None:
        stdin = subprocess.DEVNULL
    p = subprocess.run(argv_of(argv), env=command_env(home, env), input=input, stdin=stdin,
                       capture_output=True, text=text, timeout=timeout, cwd=cwd)
    if check is not None:
        assert p.returncode == check, (f"{' '.join(map(str, argv))}: exit {p.returncode}, expected {check}\n"
                                       f"stdout: {_shown(p.stdout)}\nstderr: {_shown(p.stderr)}")
    return p


def popen(home, *argv, env=None, **kw) -> subprocess.Popen:
    """Start one of the project's commands (as ``run``) without waiting: for pipes,
    terminals, signals and concurrent runs.  ``kw`` goes to subprocess.Popen."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(argv_of(argv), env=command_env(home, env), **kw)


# -- installations and messages -----------------------------------------------------------
MSG = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: %s\r\n\r\nbody %s\r\n"


@contextlib.contextmanager
def in_home(home):
    """IMS_HOME set to ``home`` for what the block runs in this process (the store API,
    and the commands ``run`` starts with ``home`` None), as it was afterwards."""
    old = os.environ.get("IMS_HOME")
    os.environ["IMS_HOME"] = str(home)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("IMS_HOME")
        else:
            os.environ["IMS_HOME"] = old


def deep_dir(base: str, length: int, letter: str) -> str:
    """A directory under ``base`` whose path is ``length`` bytes long, made (components of
    at most 100 bytes of ``letter``): for paths near a limit such as SQLite's."""
    parts, left = [], length - len(base)
    while left > 0:
        k = min(100, left)
        if 0 < left - k < 2:          # no component of 0 bytes
            k -= 2
        parts.append("/" + letter * (k - 1))
        left -= k
    path = base + "".join(parts)
    assert len(path.encode()) == length
    os.makedirs(path)
    return path


def make_home(path, driver: str = "classic", **options) -> Config:
    """A fresh installation under ``path`` with the given driver."""
    os.makedirs(path, exist_ok=True)
    cfg = Config(home=str(path))
    cfg.set("store.driver", driver)
    for k, v in options.items():
        cfg.set(k, v)
    return cfg


def msg(n, size=0) -> bytes:
    body = MSG % (str(n).encode(), str(n).encode())
    return body + b"x" * size


def put(store: Store, user: str, folder: str, n: int, **kw):
    if not store.exists(user):
        store.create_user(user)
    if not store.exists(user, folder):
        store.create_folder(user, folder, subscribed=True)
    return store.append(user, folder, io.BytesIO(msg(n, kw.pop("size", 0))), **kw)


def state(store: Store, users=None, guid: bool = False) -> dict:
    """What a client sees: per folder (uidvalidity, uidnext, subscribed) and per message
    (sha256, flags, keywords, int internaldate[, GUID with ``guid``])."""
    out = {}
    for part in store.partitions():
        for user in store.users(part):
            if users is not None and user not in users:
                continue
            for f in store.folders(user):
                out[(user, f.name)] = (f.uidvalidity, f.uidnext, f.subscribed)
                for m in store.messages(user, f.name):
                    with open(m.path, "rb") as fh:
                        digest = hashlib.sha256(fh.read()).hexdigest()
                    out[(user, f.name, m.uid)] = (digest, tuple(sorted(m.flags)), tuple(sorted(m.keywords)),
                                                  int(m.internaldate)) + ((m.guid,) if guid else ())
    return out


def user_view(store: Store, user: str) -> dict:
    """Everything a client sees of one user: folders (UIDVALIDITY, UIDNEXT) and every
    message's bytes, UID, flags, keywords and date."""
    fp = fingerprint(store)
    return {k: v for k, v in fp.items() if isinstance(k, tuple) and k[0] == user}


def inode_groups(store: Store) -> list:
    groups: dict = {}
    for part in store.partitions():
        for user in store.users(part):
            for f in store.folders(user):
                for m in store.messages(user, f.name):
                    groups.setdefault((m.dev, m.ino), []).append((user, f.name, m.uid))
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- stores for staging and the engines ---------------------------------------------------
STAGING_GROUPS = "gA=[a-f].*\ngB=[g-m].*\ngC=[n-r].*\n"     # the rest (s-z) fall in 'user'


def build(home, driver: str, users: int = 16, messages: int = 160, groups: str = STAGING_GROUPS):
    """The demo store (alice, bob, ...) in groups gA, gB, gC and 'user'."""
    cfg = Config(str(home))
    cfg.set("store.driver", driver)
    with open(cfg.groups_path, "w") as f:
        f.write(groups)
    store = open_store(Config(str(home)))
    build_demo(store, users=users, messages=messages)
    time.sleep(1.1)     # dumps record their start by the second: keep the build out of it
    return store


def sized_store(home, groups: dict):
    """{group: (users, messages each, bytes each)} -> a classic store; groups gA.. by prefix."""
    cfg = Config(str(home))
    cfg.set("store.driver", "classic")
    with open(cfg.groups_path, "w") as f:
        for g in groups:
            f.write(f"{g}={g}_.*\n")
    store = open_store(Config(str(home)))
    for g, (users, n, size) in groups.items():
        for i in range(users):
            u = f"{g}_{i}"
            store.create_user(u)
            for k in range(n):
                body = (b"Subject: %s %d\r\n\r\n" % (u.encode(), k)).ljust(size, b"z")
                store.append(u, "INBOX", io.BytesIO(body), flags=["\\Seen"] if k % 2 else [])
    return store


def change_mail(store, users, n: int = 6):
    """A day of mail: new deliveries (one to several users), a flag change, an expunge."""
    time.sleep(1.1)     # incrementals are taken by the second
    tag = b"%f" % time.time()       # each round's mail differs from the last one's
    for i in range(n):
        rcpts = users[i % len(users): i % len(users) + (2 if i % 3 == 0 else 1)]
        store.deliver(rcpts, io.BytesIO(b"Subject: new %d %s\r\n\r\n" % (i, tag) + b"x" * (500 * i + 10) + b"\r\n"),
                      folder="INBOX", internaldate=1_700_000_000 + i)
    u = users[0]
    msgs = store.messages(u, "INBOX")
    store.set_flags(u, "INBOX", msgs[0].uid, ["\\Seen", "\\Flagged"], ["$Important"])
    if len(msgs) > 2:
        store.expunge(u, "INBOX", [msgs[1].uid])


# -- staging catalogs ----------------------------------------------------------------------
def imsstage(home, *args, **kw):
    """``run(home, "imsstage", ...)`` with text output."""
    return run(home, "imsstage", *args, text=True, **kw)


def rows(directory) -> list[dict]:
    db = sqlite3.connect(os.path.join(str(directory), "catalog.db"))
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM dumps ORDER BY id")]
    finally:
        db.close()


def users_of(directory, dump_id) -> list[str]:
    db = sqlite3.connect(os.path.join(str(directory), "catalog.db"))
    try:
        return sorted(r[0] for r in db.execute("SELECT user FROM dump_users WHERE dump=?", (dump_id,)))
    finally:
        db.close()


def staged_files(directory) -> list[str]:
    return sorted(n for n in os.listdir(str(directory)) if n.endswith(".ims") and not n.startswith("."))


# -- a sample mbox -------------------------------------------------------------------------
MBOX = (
    b"From alice@example.com Mon Jan  1 10:00:00 2024\n"
    b"Status: RO\n"
    b"X-Status: AF\n"
    b"Subject: one\n"
    b"\n"
    b"body line\n"
    b">From the start of a line\n"
    b">>From quoted twice\n"
    b"From inside a paragraph is not a separator\n"
    b"\n"
    b"From bob@example.com Tue Feb 29 23:59:59 2000\n"
    b"Status: O\n"
    b"Subject: two\n"
    b"\n"
    b"second\n"
    b"\n"
    b"\n"
    b"From carol@example.com Sat Jul  4 12:00:00 1998\n"
    b"X-Status: DT\n"
    b"Subject: three\n"
    b"\n"
    b"Status: R in the body is not a flag\n"
    b"\n"
)
# the three messages of MBOX as they are stored
MBOX_ONE = (b"Status: RO\nX-Status: AF\nSubject: one\n\nbody line\nFrom the start of a line\n"
            b">From quoted twice\nFrom inside a paragraph is not a separator\n")
MBOX_TWO = b"Status: O\nSubject: two\n\nsecond\n\n"
MBOX_THREE = b"X-Status: DT\nSubject: three\n\nStatus: R in the body is not a flag\n"


def local_time(y, mo, d, h, mi, s) -> float:
    return time.mktime((y, mo, d, h, mi, s, 0, 0, -1))


# -- servers -------------------------------------------------------------------------------
USERADD_LOCK = "/run/lock/ims-asm-tests-useradd.lock"


@contextlib.contextmanager
def system_users_lock():
    """Held while a test creates a system user: two test processes at once (pytest-xdist's
    workers, another checkout's run) would otherwise both find the user missing and one
    ``useradd`` fail ("already exists", or /etc/passwd locked)."""
    import fcntl
    os.makedirs(os.path.dirname(USERADD_LOCK), exist_ok=True)
    with open(USERADD_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that nothing listens on (each bound until all
    are chosen: one by one, the kernel may hand the same port out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# -- filesystems ---------------------------------------------------------------------------
@contextlib.contextmanager
def block_device(path, size: int = 4 << 20):
    """A block-device node at ``path`` (as /dev/sdX is) for a zero-filled loop device of
    ``size`` bytes; yields the loop device's own path (to read the disk back)."""
    import stat
    losetup = require("losetup", "a loop device stands for a disk")
    img = f"{path}.img"
    with open(img, "wb") as f:
        f.truncate(size)
    p = subprocess.run([losetup, "-f", "--show", img], capture_output=True, text=True)
    if p.returncode != 0:
        os.unlink(img)
        unavailable(f"losetup cannot attach a loop device: {p.stderr.strip()}")
    loop = p.stdout.strip()
    try:
        os.mknod(path, 0o600 | stat.S_IFBLK, os.stat(loop).st_rdev)
        yield loop
    finally:
        subprocess.run([losetup, "-d", loop])
        os.unlink(img)


@contextlib.contextmanager
def small_tmpfs(path, size: str):
    """A tmpfs of ``size`` mounted on ``path`` (created) for full-disk tests;
    ``unavailable`` when it cannot be mounted (CI runs as root).  Detached lazily, so a
    file still open in the test process cannot leave it behind."""
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        unavailable(f"cannot mount a {size} tmpfs (needs root): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])


@contextlib.contextmanager
def small_ext4(path, size: str = "16M"):
    """An ext4 file system of ``size`` on a loop device mounted on ``path`` (created):
    one whose file times end where ext4's do (1901-12-13 .. 2446-05-10 at most), which
    the tests' tmpfs scratch directory does not show; ``unavailable`` when it cannot be
    made (CI runs as root)."""
    mkfs = require("mkfs.ext4", "an ext4 file system's limits")
    os.makedirs(path, exist_ok=True)
    img = f"{path}.img"
    r = subprocess.run([mkfs, "-q", "-F", img, size], capture_output=True, text=True)
    if r.returncode == 0:
        r = subprocess.run(["mount", "-o", "loop", img, str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        with contextlib.suppress(OSError):
            os.unlink(img)
        unavailable(f"cannot make and mount a {size} ext4 (needs root): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])
        with contextlib.suppress(OSError):
            os.unlink(img)


def verify_inprocess(argv: list, home: str | None = None, stdin: bytes | None = None) -> tuple[int, str]:
    """imsverify's main(argv) in this process: its exit status and stderr+stdout text."""
    from asm import plugins
    from asm.cli import imsverify
    out, err = io.BytesIO(), io.BytesIO()
    so = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    se = io.TextIOWrapper(err, encoding="utf-8", write_through=True)
    saved = sys.stdout, sys.stderr, sys.stdin
    saved_home = os.environ.get("IMS_HOME")
    feeder = None
    if stdin is not None:
        r, w = os.pipe()

        def feed():
            try:
                with os.fdopen(w, "wb") as f:
                    f.write(stdin)
            except OSError:
                pass
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        sin = io.TextIOWrapper(os.fdopen(r, "rb"))
    else:
        sin = open(os.devnull)
    try:
        if home is None:
            os.environ.pop("IMS_HOME", None)
        else:
            os.environ["IMS_HOME"] = home
        sys.stdout, sys.stderr, sys.stdin = so, se, sin
        plugins.reset()
        status = imsverify.main(argv)
    finally:
        sys.stdout, sys.stderr, sys.stdin = saved
        if saved_home is None:
            os.environ.pop("IMS_HOME", None)
        else:
            os.environ["IMS_HOME"] = saved_home
        sin.close()
        if feeder:
            feeder.join(10)
        plugins.reset()
    return status, (err.getvalue() + out.getvalue()).decode("utf-8", "replace")
