"""Holding the stop signals (SIGINT, SIGTERM, SIGHUP) over a step that must not be cut.

A signal that comes while held waits and is delivered, once, when the hold is let go:
what its handler then does (KeyboardInterrupt, the default's exit) happens after the
step.  Or the hold is *dropped* (:meth:`Hold.drop`): the run has succeeded and a signal
that came, or comes, is ignored.

The hold is kept by the Python handlers, not by the thread's signal mask alone.  With
other threads running (paramiko's transport, S3 and compression workers) a signal the
main thread blocks is taken by one of them, and CPython still runs its handler in the
main thread at once: a mask alone held nothing in those runs (an SFTP backup SIGTERM'd
while it finished left its temporary file).  The mask is blocked as well, so a child
forked meanwhile starts with the signals held (see staging.dump, plugins.bacula.cli).

Only the main thread can hold (it alone runs handlers); elsewhere a hold does nothing.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
import types


def stop_signals() -> list:
    """The signals that end a run as Ctrl-C does (KeyboardInterrupt, cleanup, 130): SIGHUP
    too (an operator's terminal or ssh session closed), unless the command was started
    with it ignored (nohup), which it keeps."""
    return [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)]


class Hold:
    def __init__(self):
        self._handlers = None        # {signal: the handler held over}, None when not holding
        self._mask = None
        self.pending: list = []

    def begin(self) -> "Hold":
        if threading.current_thread() is not threading.main_thread() or self._handlers is not None:
            return self
        try:
            self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals())
        except (AttributeError, OSError, ValueError):
            self._mask = None
        self._handlers = handlers = {}
        try:
            for sig in stop_signals():
                old = signal.getsignal(sig)
                if old is None or old is signal.SIG_IGN:     # (set outside Python; ignored: nohup)
                    continue
                signal.signal(sig, self._arrived)            # (runs a pending handler first)
                handlers[sig] = old
        except BaseException:
            # a signal that came just before, raised half way: what was swapped goes back
            # (a recorder left in place would have swallowed every later Ctrl-C)
            self.release()
            raise
        return self

    def _arrived(self, signum, frame) -> None:
        if signum not in self.pending:
            self.pending.append(signum)

    def _give_back(self, ignore: bool) -> None:
        handlers = self._handlers
        if handlers is None:
            return
        # the mask first: one blocked meanwhile is delivered here, to _arrived (no
        # exception half way through, which would leave the mask blocked for good)
        mask, self._mask = self._mask, None
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._handlers = None
        came = None
        for sig, old in handlers.items():
            while True:
                try:
                    signal.signal(sig, signal.SIG_IGN if ignore else old)
                    break
                except KeyboardInterrupt as exc:
                    # raised by a handler given back already (signal.signal runs pending
                    # handlers first, then sets): the rest are given back too, then it goes on
                    came = came or exc
        if came is not None:
            raise came

    def release(self) -> None:
        """Let go: a signal that came meanwhile is delivered now, to its own handler."""
        was_holding = self._handlers is not None
        self._give_back(ignore=False)
        pending, self.pending = self.pending, []
        if was_holding:
            for sig in pending:
                signal.raise_signal(sig)

    def drop(self) -> None:
        """The step succeeded: stop signals are ignored from now on (one that came is dropped)."""
        self._give_back(ignore=True)
        self.pending = []


@contextlib.contextmanager
def interrupts_deferred():
    """The stop signals wait until the end of the block (held, not lost)."""
    hold = Hold().begin()
    try:
        yield
    finally:
        hold.release()


# -- not inside a library that cannot be cut ------------------------------------------
# A stop signal raises KeyboardInterrupt in the main thread at the next bytecode
# boundary, wherever that is.  Inside paramiko that can be between a lock's acquire()
# and the try that releases it (Channel._send, Transport._send_user_message, ...): the
# lock stays taken, and the cleanup that then closes the channel -- and paramiko's own
# thread, feeding the channel's window -- wait for it for ever.  An SSH backup
# SIGTERM'd by its engine hung instead of ending (1 run in about 250).  So a handler
# that would raise asks :func:`put_aside` first: when the main thread is inside such a
# library, the signal waits until the outermost call into it has returned, and is then
# delivered, to the handler of that moment, just before the next call the main thread
# makes (raised there, the callee never runs: nothing of the library's is cut).  Every
# call our code makes into paramiko is bounded by ssh.timeout, so a signal waits at most
# that long (only a far side that stopped answering makes it wait at all).

#: The packages whose code must not be cut by an exception (by module name: a path
#: would also match an installation under a directory of that name, whose every frame
#: would then put a signal aside for good).
UNCUTTABLE = ("paramiko", "logging")


class _Aside:
    pending: list = []
    target = None            # the outermost frame of the library the main thread is in
    left = False             # that call has returned: deliver at the next call
    previous = None          # the profile function that was set (chained meanwhile)
    delivering = False


def _uncuttable(frame) -> bool:
    name = frame.f_globals.get("__name__") or ""
    return name.partition(".")[0] in UNCUTTABLE


def put_aside(signum: int, frame) -> bool:
    """For a Python signal handler about to raise (``frame``: the one it was given):
    True when the signal was put aside until the main thread is out of an uncuttable
    library (:data:`UNCUTTABLE`), then delivered again; False when it may raise now."""
    if _Aside.delivering or threading.current_thread() is not threading.main_thread():
        return False
    if _Aside.pending:
        if sys.getprofile() is _watch:
            if signum not in _Aside.pending:
                _Aside.pending.append(signum)
            return True
        _Aside.pending = []      # (the watch was taken away: not waited on for ever)
    target = None
    f = frame
    while f is not None:
        if _uncuttable(f):
            target = f
        f = f.f_back
    if target is None:
        return False
    previous = sys.getprofile()
    if previous is not None and not isinstance(previous, types.FunctionType):
        return False             # a C profiler (cProfile): nothing can be chained to it
    _Aside.pending, _Aside.target, _Aside.left, _Aside.previous = [signum], target, False, previous
    sys.setprofile(_watch)
    return True


def _watch(frame, event, arg) -> None:
    if _Aside.previous is not None:
        _Aside.previous(frame, event, arg)
    if not _Aside.left:
        if event == "return" and frame is _Aside.target:
            _Aside.left, _Aside.target = True, None
        return
    if event == "call" and _uncuttable(frame):
        _Aside.target, _Aside.left = frame, False        # back in: wait for that call too
        return
    if event not in ("call", "c_call"):
        return
    sys.setprofile(_Aside.previous)
    pending, _Aside.pending, _Aside.previous = _Aside.pending, [], None
    _Aside.delivering = True
    try:
        for sig in pending:
            signal.raise_signal(sig)         # its handler raises here: the call is not made
    finally:
        _Aside.delivering = False
