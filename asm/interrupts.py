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
import threading


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
