"""Fault injection for the kill and full-disk property tests.

Loaded only in a child process whose PYTHONPATH starts with this directory and whose
environment sets ``IMS_FAULT``; the product never sees it.  A "step" is one change a
process makes to files under ``IMS_FAULT_ROOT`` (an open for writing, a rename, link,
unlink, mkdir, rmdir, utime, chmod, chown, truncate, or one SQLite statement that
writes), counted through Python's audit hooks (PEP 578) and SQLite's trace callback.
A removal relative to a directory descriptor (each file and directory shutil.rmtree
removes) is a step too, named by its full path.

    IMS_FAULT=count:FILE        write the number of steps to FILE at exit
    IMS_FAULT=kill:N            SIGKILL this process just before step N (1-based)
    IMS_FAULT=int:N             SIGINT (Ctrl-C) to this process just before step N, once:
                                it winds up as an interrupted command does (at a step that
                                is an SQLite statement, just after it: sqlite3 drops any
                                exception raised in its trace callback, so a SIGINT sent
                                from there was lost and the run went on to exit 0; no
                                signal lands there in a real run, which has no callbacks)
    IMS_FAULT=term:N            SIGTERM (an engine cancelling the job) just before step N, once;
                                at an SQLite statement, just after it, as for int:N
    IMS_FAULT=enospc:N          from step N on, every step fails with ENOSPC (a disk
                                that filled up and stays full)
    IMS_FAULT=fill:N            just before step N, fill the filesystem of IMS_FAULT_FILL
                                (a file made there, written until the disk is full): a
                                real full disk from then on, for SQLite and children too
    IMS_FAULT=eio:TEXT          every open of a path holding TEXT fails with EIO (a
                                damaged disk's unreadable file); no step is counted
    IMS_FAULT=order:FILE        no fault: one line per event to FILE, numbered in the
                                order they happened, so a test can check what came before
                                what (tests/test_restore_durability.py):
                                  "N write PATH"   a step (PATH: what it made or changed,
                                                   the new name of a rename or link)
                                  "N sql DB STMT"  any SQLite statement on the database DB
                                                   (under the root), bound values in
                                  "N syncfs DEV"   syncfs(2) of the filesystem DEV (st_dev),
                                                   called through ctypes, has returned 0
                                  "N sync"         os.sync() has returned
                                  "N fsync PATH", "N fdatasync PATH"  os.fsync/os.fdatasync
                                                   of the file or directory PATH (under
                                                   the root) has returned
                                  "N lockf CMD OFFSET PATH"  fcntl.lockf of PATH (under the
                                                   root) at OFFSET, before it runs
    IMS_FAULT=sshcount:FILE     write to FILE how many "paramiko points" the main thread
                                passed: each return of a built-in call made from paramiko's
                                own code (a lock's acquire(), a socket's send, a cipher's
                                update, ...), counted through a profile function
    IMS_FAULT=sshterm:N         SIGTERM raised, once, at the N-th paramiko point, right
                                there: its handler runs inside paramiko, between a lock's
                                acquire() and the try that releases it when that is where
                                the point falls (a signal from outside lands there now and
                                then; this lands there on purpose)
    IMS_FAULT_LIBS=A,B,...      (with sshcount: or sshterm:) the libraries whose points count
                                instead of paramiko's (e.g. botocore,urllib3,http: the S3 client;
                                a module by its file: shutil.py)
    IMS_FAULT_SENT=FILE         (with int: or term:) a line to FILE when the signal is sent
    IMS_FAULT_LOG=FILE          (with any of them) one line per step: "N what", so a
                                test can find the step it must kill before
    IMS_FAULT_READS=1           (with any of them) an open for reading under the root is
                                a step too: a backup reads the store and writes nothing there
    IMS_FAULT_INHERIT=no        (with any of them) only the process started with it runs
                                under the fault, not the Python processes it starts
    IMS_FAULT_DURABLE=FILE      (with any of them) the restore journal
                                ($IMS_HOME/data/restore-journal.db) as a power cut would
                                leave it: its committed state copied to FILE at the start
                                and after every syncfs(2) or sync(2) that returned (its
                                WAL is synced by nothing else in a run); removed when there
                                is no journal then

Killing *before* a step is the same as killing after the previous one, so N from 1 to
the counted total (+1) covers every point between two changes on disk.
"""
import errno
import os
import signal
import sys

_SPEC = os.environ.get("IMS_FAULT", "")
_ROOT = os.environ.get("IMS_FAULT_ROOT", "")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.rename": 2, "os.link": 2, "os.remove": 1, "os.rmdir": 1, "os.mkdir": 1,
                "os.utime": 1, "os.chmod": 1, "os.chown": 1, "os.truncate": 1,
                "os.symlink": 2}
_SQL_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "COMMIT", "CREATE", "DROP", "ALTER")


class _State:
    steps = 0
    mode = ""
    n = 0
    out = ""
    busy = False
    log = None
    reads = False
    deferred = None     # a signal due at an SQLite statement, sent once it has run
                        # (sqlite3 drops an exception raised in its trace callback)
    order = None        # IMS_FAULT=order: the file events are numbered in
    order_n = 0


def _fd_path(fd):
    """The path descriptor ``fd`` is open on, or None (gone, or not ours to read)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _under_root(path):
    if isinstance(path, int) or path is None:
        return False
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    try:
        path = os.fspath(path)
    except TypeError:
        return False
    return bool(_ROOT) and os.path.abspath(path).startswith(_ROOT)


def _order(line):
    if _State.order is not None:
        _State.order_n += 1
        _State.order.write(f"{_State.order_n} {line}\n")
        _State.order.flush()


def _step(what, sql=False):
    _State.steps += 1
    if _State.log is not None:
        _State.busy = True
        try:
            _State.log.write(f"{_State.steps} {what}\n")
            _State.log.flush()
        finally:
            _State.busy = False
    if _State.mode == "kill" and _State.steps >= _State.n:
        os.kill(os.getpid(), signal.SIGKILL)
    if _State.mode in ("int", "term") and _State.steps >= _State.n:
        sig = signal.SIGINT if _State.mode == "int" else signal.SIGTERM
        if sql:
            _State.deferred = sig
            sig = None
        _State.mode = ""
        if sig is not None:
            _sent()
            os.kill(os.getpid(), sig)
    if _State.mode == "fill" and _State.steps >= _State.n:
        _State.mode = ""
        _fill(os.environ["IMS_FAULT_FILL"])
    if _State.mode == "enospc" and _State.steps >= _State.n:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), what)


def _sent():
    """IMS_FAULT_SENT: say that the int:/term: signal was sent (a run whose steps came
    fewer than counted -- reader threads that read a file twice, or once, as timing has
    it -- never reaches N, and exits 0 rightly)."""
    out = os.environ.get("IMS_FAULT_SENT")
    if out:
        with open(out, "a") as f:
            f.write(f"{_State.steps}\n")


def _fill(path):
    """Write ``path`` until its filesystem has no block left."""
    _State.busy = True
    try:
        with open(path, "ab", buffering=0) as f:
            for chunk in (1 << 20, 1 << 16, 4096, 512, 1):
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
    finally:
        _State.busy = False


def _audit(event, args):
    if _State.busy:
        return
    if _State.deferred is not None:
        sig, _State.deferred = _State.deferred, None
        _sent()
        os.kill(os.getpid(), sig)
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        if _State.mode == "eio":
            if isinstance(path, (str, bytes)) and _State.out in os.fsdecode(path):
                raise OSError(errno.EIO, os.strerror(errno.EIO), path)
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
            (mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS)
        if (writing or _State.reads) and _under_root(path):
            if writing:
                _order(f"write {os.fsdecode(path)}")
            _step(path)
        return
    if event == "fcntl.lockf" and _State.order is not None:
        fd, cmd, _len, start = args[:4]
        path = _fd_path(fd)
        if path is not None and _under_root(path):
            _order(f"lockf {cmd} {start} {path}")
        return
    nargs = _PATH_EVENTS.get(event)
    if event in ("os.remove", "os.rmdir") and len(args) > 1 and isinstance(args[1], int) \
            and args[1] >= 0 and isinstance(args[0], (str, bytes)):
        # relative to a directory descriptor (shutil.rmtree removes a tree so): each
        # file and directory it removes is a step of its own
        base = _fd_path(args[1])
        if base is not None:
            args = (os.path.join(base, os.fsdecode(args[0])),) + tuple(args[1:])
    if nargs is not None and any(_under_root(a) for a in args[:nargs]):
        target = args[nargs - 1]
        if not isinstance(target, int):
            _order(f"write {os.fsdecode(os.fspath(target))}")
        _step(args[0])


def _wrap_sqlite():
    import sqlite3
    real_connect = _State.real_connect = sqlite3.connect

    def connect(database, *a, **kw):
        con = real_connect(database, *a, **kw)
        if _under_root(database):
            def trace(stmt):
                _order(f"sql {os.path.abspath(database)} {' '.join(stmt.split())}")
                if stmt.lstrip().upper().startswith(_SQL_WRITES):
                    _step(f"sqlite: {stmt[:40]}", sql=True)
            con.set_trace_callback(trace)
        return con
    sqlite3.connect = connect


def _durable():
    """IMS_FAULT_DURABLE: copy the journal's committed state aside (not a step)."""
    out = os.environ.get("IMS_FAULT_DURABLE")
    if not out:
        return
    src = os.path.join(os.environ.get("IMS_HOME", ""), "data", "restore-journal.db")
    _State.busy = True
    try:
        for p in (out, out + "-journal"):
            if os.path.exists(p):
                os.unlink(p)
        if os.path.exists(src):
            con = _State.real_connect(src)
            dst = _State.real_connect(out)
            try:
                con.backup(dst)
            finally:
                dst.close()
                con.close()
    finally:
        _State.busy = False


def _log_syncs():
    """IMS_FAULT=order: syncfs(2) through ctypes (any library's, as ``CDLL(...).syncfs``)
    and os.sync() logged once they returned (and IMS_FAULT_DURABLE's copy made)."""
    import ctypes
    real_sync = os.sync

    def sync():
        real_sync()
        _order("sync")
        _durable()
    os.sync = sync

    def file_sync(name):
        real = getattr(os, name)

        def synced(fd):
            real(fd)
            path = _fd_path(fd if isinstance(fd, int) else fd.fileno())
            if path is not None and _under_root(path):
                _order(f"{name} {path}")
        setattr(os, name, synced)
    file_sync("fsync")
    file_sync("fdatasync")

    class CDLL(ctypes.CDLL):
        def __getattr__(self, name):
            real = super().__getattr__(name)
            if name != "syncfs":
                return real

            def syncfs(fd):
                r = real(fd)
                if r == 0:
                    _order(f"syncfs {os.fstat(fd).st_dev}")
                    _durable()
                return r
            setattr(self, name, syncfs)
            return syncfs
    ctypes.CDLL = CDLL


def _paramiko_points(spec):
    mode, _, arg = spec.partition(":")
    state = {"n": 0, "at": int(arg) if mode == "sshterm" else 0}
    sep = os.sep
    # a package by its directory ("paramiko"), a module by its file ("shutil.py")
    libs = tuple(f"{sep}{lib}" + ("" if lib.endswith(".py") else sep)
                 for lib in os.environ.get("IMS_FAULT_LIBS", "paramiko").split(","))

    def points(frame, event, _arg):
        if event != "c_return" or not any(lib in frame.f_code.co_filename for lib in libs):
            return
        state["n"] += 1
        if state["n"] == state["at"]:
            state["at"] = 0
            signal.raise_signal(signal.SIGTERM)
    if mode == "sshcount":
        import atexit

        def dump():
            with open(arg, "w") as f:
                f.write(str(state["n"]))
        atexit.register(dump)
    sys.setprofile(points)


def _install(spec):
    mode, _, arg = spec.partition(":")
    _State.mode = mode
    if mode in ("sshcount", "sshterm"):
        _paramiko_points(spec)
        return
    if mode == "count":
        import atexit
        _State.out = arg

        def dump():
            with open(_State.out, "w") as f:
                f.write(str(_State.steps))
        atexit.register(dump)
    elif mode in ("kill", "int", "term", "enospc", "fill"):
        _State.n = int(arg)
        if mode == "int" and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            # started as a background job of a script (sh ignores SIGINT there), which the
            # command keeps, as it keeps SIGHUP under nohup: Ctrl-C as from a terminal
            signal.signal(signal.SIGINT, signal.default_int_handler)
    elif mode == "eio":
        _State.out = arg
    elif mode == "order":
        _State.order = open(arg, "a")
        _log_syncs()
    else:
        raise SystemExit(f"sitecustomize: bad IMS_FAULT {spec!r}")
    if os.environ.get("IMS_FAULT_DURABLE") and mode != "order":
        _log_syncs()
    _State.reads = os.environ.get("IMS_FAULT_READS") == "1"
    if os.environ.get("IMS_FAULT_LOG"):
        _State.log = open(os.environ["IMS_FAULT_LOG"], "a")
    sys.addaudithook(_audit)
    try:
        _wrap_sqlite()
    except ImportError:
        pass
    else:
        _durable()


def _mine():
    """Whether the fault is this process's (IMS_FAULT_INHERIT=no: only the first one's;
    its pid stays across a re-exec)."""
    if os.environ.get("IMS_FAULT_INHERIT") != "no":
        return True
    owner = os.environ.setdefault("IMS_FAULT_PID", str(os.getpid()))
    return owner == str(os.getpid())


if _SPEC and _mine():
    _install(_SPEC)
