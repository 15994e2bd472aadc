"""What every command shares: one way to end (exceptions become one line on stderr and
an exit status from :mod:`asm.errors`), quiet-unless-asked output, and the terminal
progress line."""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import re
import sys
import time
from typing import Callable

from asm import atend
from asm.errors import (
    EXIT_DEVICE, EXIT_INTERNAL, EXIT_LOCKED, EXIT_NOSPACE, EXIT_OK, EXIT_PIPE, EXIT_USAGE, ImsError, UsageError,
    device_status, status_of,
)
from asm.units import human  # noqa: F401  (the commands' size formatting)

__all__ = ["ArgParser", "Commit", "Once", "Progress", "UsageError", "blocking_factor", "check_out_file", "die",
           "failure_text", "human", "lock_target", "number", "parse_date",
           "read_list_file", "run_command", "tell", "warn"]


def _columns() -> int:
    """``shutil.get_terminal_size().columns``, as shutil computes it ($COLUMNS, else the
    terminal on stdout, else 80), without importing shutil, which imports bz2 and lzma:
    argparse's help formatter asks for it at every add_argument of every command's start."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
        columns = columns or 80
    return columns


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help formatter, as wide as it would be (:func:`_columns`)."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


class ArgParser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit EXIT_USAGE, and whose options that
    take one value (action "store", the default) may be given once (:class:`Once`)."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)
        self.register("action", None, Once)
        self.register("action", "store", Once)

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def die(prog: str, message: str, status: int) -> int:
    print(f"{prog}: {shown(message)}", file=sys.stderr)
    return status


def tell(text: str) -> None:
    """A line on stdout about work already done (``imsdeliver -v``): it is not the work,
    so a reader that went away, a full disk or a closed stdout drops it (stdout then
    points at /dev/null) and the run's status stands: never 141 after a delivery, which
    an MTA would retry and deliver twice."""
    if isinstance(sys.stdout, _ClosedStream) or sys.stdout is None:
        return
    try:
        print(text, flush=True)
    except OSError:
        _quiet_stdout()


def warn(prog: str, message: str) -> None:
    print(f"{prog}: {shown(message)}", file=sys.stderr)


# a byte that was not UTF-8, as repr() writes it: \udcNN after an even run of backslashes
_REPR_BYTE = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")


# control characters (but TAB): a name from an archive or a store must not move the
# terminal's cursor, ring it, change its colours or split a one-line message in two
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def shown(message: str) -> str:
    """A message for stderr with every byte that was not UTF-8 written as \\xNN: a name
    quoted with repr() (``'j\\udcf6rg'``) reads as the rest do (``'j\\xf6rg'``);
    unquoted, stderr's own error handler does it (:func:`lossless_output`).  Control
    characters are written \\xNN too: one message is one line, and says nothing to the
    terminal."""
    if "\\udc" in message:
        message = _REPR_BYTE.sub(r"\1\\x\2", message)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", message)


# ----------------------------------------------------------------------------- run_command

_depth = 0          # run_command calls in progress (imsplugins run nests a plugin's command)


def _resume_gc() -> None:
    """The garbage collector asm/__init__.py paused while the command's modules loaded
    runs again, with what they made frozen (never garbage: modules, classes, functions)."""
    import asm
    if asm._gc_paused:
        asm._gc_paused = False
        gc.freeze()
        gc.enable()


def run_command(prog: str, body: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command's ``body(argv)`` and return its exit status; every ``main()`` is this.

    SIGTERM (a backup engine cancelling the job) and SIGHUP (the operator's terminal or
    ssh session closed; kept ignored under nohup) unwind like Ctrl-C from the first
    moment, so temporary files are removed and locks and delivery holds released.  What
    the body does not handle itself ends as one line on stderr, ``prog: message``, and
    a status from :mod:`asm.errors`:

    - :class:`~asm.errors.ImsError`: its message and its ``status``;
    - KeyboardInterrupt (Ctrl-C, SIGTERM, SIGHUP): "interrupted", EXIT_INTERRUPTED;
    - stdout closed by its reader (``| head``): nothing more, EXIT_PIPE;
    - a full disk (ENOSPC, EDQUOT): EXIT_NOSPACE;
    - anything else is a bug: "internal error" with the traceback saved in a crash
      file (printed instead with IMS_DEBUG=1), EXIT_INTERNAL.

    Names print losslessly (:func:`lossless_output`).  No traceback reaches the user.
    """
    global _depth
    outer = _depth == 0
    if outer:
        _resume_gc()
        closed_streams()
    lossless_output()
    if outer and not utf8_names():
        return _flush_stdout(prog, die(prog, _NOT_UTF8 % sys.getfilesystemencoding(), EXIT_USAGE))
    diagnostics = _Diagnostics.install() if outer else None
    saved = _signals_now()
    own_work = atend.mark()
    _depth += 1
    try:
        try:
            try:
                _trap_signals(saved)       # (inside the try: a SIGTERM from its first moment is "interrupted")
                status = body(argv)
                status = EXIT_OK if status is None else int(status)
            finally:
                _depth -= 1
                try:
                    if outer:
                        atend.finish(own_work)      # (while a signal is still "interrupted")
                finally:
                    _untrap_signals(saved, outer)
        except SystemExit as exc:          # argparse: --help (0) or a usage error it printed (2)
            status = _exit_code(prog, exc.code)
        except BaseException as exc:       # noqa: B036 - the one place every failure ends
            status = _report(prog, exc)
        return _flush_stdout(prog, status)
    finally:
        if diagnostics is not None:
            diagnostics.uninstall()


_NOT_UTF8 = ("the locale's character set is %s, not UTF-8, and Python is not in its UTF-8 mode: names "
             "would be misread; run the command with PYTHONUTF8=1 (or under a UTF-8 locale)")


def utf8_names() -> bool:
    """Whether names reach this process as UTF-8: Python's UTF-8 mode or a UTF-8 locale.
    Every command sees to it when it starts (asm/__init__.py restarts it with -X utf8);
    a main() called from another program under another locale is refused, nothing done."""
    return bool(sys.flags.utf8_mode) or sys.getfilesystemencoding().lower().replace("-", "") == "utf8"


class _ClosedStream:
    """sys.stdin or sys.stdout of a command started with it closed (``<&-``, ``>&-``):
    never a terminal, and any use of it (reading, writing, ``-f -``) ends the command
    with one line and EXIT_DEVICE; what the command never needs it for goes on."""

    def __init__(self, name: str, redirect: str, use: str):
        self.name, self._redirect, self._use = name, redirect, use

    def isatty(self) -> bool:
        return False

    def _refuse(self, *args, **kwargs):
        raise ImsError(f"{self.name} is closed (the command was started with {self._redirect}) and this run "
                       f"needs it: {self._use}", status=EXIT_DEVICE)

    write = writelines = read = readline = readlines = fileno = __iter__ = _refuse
    buffer = property(_refuse)

    def flush(self) -> None:
        pass


def closed_streams() -> None:
    """A standard descriptor the command was started without (``>&-``, ``2>&-``,
    ``<&-``) is opened on /dev/null first, so no file the command opens takes its
    number (an archive written by print()).  A closed stderr is then /dev/null: a
    message has nowhere to go, the work and its exit status stand.  A closed stdin or
    stdout is :class:`_ClosedStream`: the run that needs it ends with one line on stderr
    and EXIT_DEVICE, never exit 0 having listed nothing nor a crash."""
    import io
    for fd, name, flags in ((0, "stdin", os.O_RDONLY), (1, "stdout", os.O_WRONLY), (2, "stderr", os.O_WRONLY)):
        try:
            os.fstat(fd)
            closed = getattr(sys, name) is None
        except OSError:
            closed = True
            try:
                null = os.open(os.devnull, flags)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)
            except OSError:
                continue
        if not closed:
            continue
        if name == "stderr":
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), errors="backslashreplace",
                                          line_buffering=True)
        elif name == "stdout":
            sys.stdout = _ClosedStream("stdout", ">&-", "redirect it (> FILE, a pipe)")
        else:
            sys.stdin = _ClosedStream("stdin", "<&-", "redirect it (< FILE, a pipe)")


class _Diagnostics:
    """sys.stderr while a command runs.  What goes there (-v lines, the progress line,
    warnings, the final line) tells about the work; it is not the work: when it cannot
    be written (its reader went away, ``2>&1 | head -1``, or its file's disk is full)
    it is dropped, fd 2 is pointed at /dev/null, and the run goes on to its own exit
    status.  (A BrokenPipeError from a -v line ended a restore half-way with 141.)"""

    def __init__(self, stream):
        self._stream = stream
        self.lost = False

    @classmethod
    def install(cls) -> "_Diagnostics | None":
        if sys.stderr is None or isinstance(sys.stderr, cls):
            return None
        sys.stderr = cls(sys.stderr)
        return sys.stderr

    def uninstall(self) -> None:
        if sys.stderr is self:
            sys.stderr = self._stream

    def write(self, text):
        if not self.lost:
            try:
                return self._stream.write(text)
            except OSError:
                self._lose()
        return len(text)

    def flush(self) -> None:
        if not self.lost:
            try:
                self._stream.flush()
            except OSError:
                self._lose()

    def _lose(self) -> None:
        self.lost = True
        with contextlib.suppress(AttributeError, OSError, ValueError):
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())
            finally:
                os.close(null)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()       # what is still buffered goes to /dev/null now

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _shown(exc):
    """Codec error handler for messages to people: a byte that was not UTF-8 (a lone
    surrogate from os.fsdecode) as \\xNN, anything else unencodable as \\uNNNN."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for c in exc.object[exc.start:exc.end]:
        o = ord(c)
        out.append("\\x%02x" % (o - 0xDC00) if 0xDC80 <= o <= 0xDCFF else "\\u%04x" % o)
    return "".join(out), exc.end


def lossless_output() -> None:
    """Names hold whatever bytes the filesystem allows.  stdout writes them as those
    very bytes (as ls and find do, so a listing can be fed back to a command); stderr,
    read by people and logs, shows a byte that is not UTF-8 as \\xNN, and a character
    its encoding lacks (PYTHONIOENCODING=latin-1 and a folder 日本) as \\uNNNN.  Never a
    UnicodeEncodeError: stdout is UTF-8 whatever PYTHONIOENCODING says, as the names are."""
    import codecs
    try:
        codecs.lookup_error("ims-shown")
    except LookupError:
        codecs.register_error("ims-shown", _shown)
    for stream, errors in ((sys.stdout, "surrogateescape"), (sys.stderr, "ims-shown")):
        try:
            if stream is sys.stdout and codecs.lookup(stream.encoding).name != "utf-8":
                stream.reconfigure(encoding="utf-8", errors=errors)
            else:
                stream.reconfigure(errors=errors)
        except (AttributeError, LookupError, TypeError, ValueError):
            pass


def _raise_interrupt(signum, frame):
    from asm.interrupts import put_aside
    if put_aside(signum, frame):        # inside paramiko: once that call has returned
        return
    raise KeyboardInterrupt


def _redeliver_interrupt(previous, unraisable) -> None:
    """sys.unraisablehook while a command runs (``previous``: the hook it replaced, which
    gets everything else).  A signal's KeyboardInterrupt raised
    where Python cannot pass an exception on (a weakref callback of the import machinery,
    a __del__) would be printed as "Exception ignored" and lost, and the command would go
    on; the signal is sent again instead, from a thread, a moment later (raised here,
    in the hook, it would be lost the same way)."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        import threading
        threading.Thread(target=_send_sigterm_again, name="ims-interrupt-again", daemon=True).start()
        return
    previous(unraisable)


def _send_sigterm_again() -> None:
    import signal
    time.sleep(0.05)                 # the main thread has left what swallowed the first one
    os.kill(os.getpid(), signal.SIGTERM)


class Commit:
    """The moment a run's result is put in place (an archive renamed to its name, the
    state file beside it): SIGINT, SIGTERM and SIGHUP wait (held: :class:`asm.interrupts.Hold`)
    from :meth:`begin`; after :meth:`done` they are ignored for the rest of the command,
    which succeeded (a signal then must not call a complete run "interrupted"); after
    :meth:`undo` (nothing was put in place) one that came meanwhile is delivered as usual."""

    def __init__(self):
        from asm.interrupts import Hold
        self._hold = Hold()

    def begin(self) -> "Commit":
        self._hold.begin()
        return self

    def done(self) -> None:
        self._hold.drop()

    def undo(self) -> None:
        self._hold.release()


def _signals_now():
    """The handlers :func:`_trap_signals` replaces and :func:`_untrap_signals` gives back
    (None off the main thread, where signals cannot be handled)."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None
    hup = getattr(signal, "SIGHUP", None)
    return (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT), sys.unraisablehook,
            signal.getsignal(hup) if hup is not None else None)


def _trap_signals(saved) -> None:
    """SIGTERM, SIGINT, and SIGHUP unless it is ignored (nohup), raise KeyboardInterrupt
    (put aside while the main thread is inside paramiko: asm.interrupts.put_aside);
    *saved* is :func:`_signals_now`, taken before."""
    import signal
    if saved is None:
        return
    hup = getattr(signal, "SIGHUP", None)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if hup is not None and saved[3] is not signal.SIG_IGN:
        signal.signal(hup, _raise_interrupt)
    if getattr(saved[1], "ims_early", False) or saved[1] is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_interrupt)    # (asm's, while the command loaded)
    sys.unraisablehook = functools.partial(_redeliver_interrupt, saved[2])


def _untrap_signals(saved, outer: bool) -> None:
    """After the body: a nested command gives back the outer one's handlers; the outermost
    lets a late SIGTERM or Ctrl-C end the process quietly (it is only reporting and
    exiting now) instead of raising in the middle of that."""
    import signal
    if saved is None:
        return
    term, intr, hook, hup = saved
    if outer:
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:   # (ignored: a Commit done, nohup)
                signal.signal(sig, signal.SIG_DFL)
        if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _raise_interrupt):
            signal.signal(signal.SIGINT, signal.SIG_DFL)
    else:
        signal.signal(signal.SIGTERM, term)
        signal.signal(signal.SIGINT, intr)
        if hup is not None:
            signal.signal(signal.SIGHUP, hup)
    sys.unraisablehook = hook            # last: no signal of ours can raise any more


def _say(prog: str, message: str) -> None:
    """One line on stderr; a stderr that cannot be written is not worth a traceback."""
    Progress.clear_all()
    try:
        print(f"{prog}: {shown(message)}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _exit_code(prog: str, code) -> int:
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    _say(prog, str(code))
    return EXIT_USAGE


def _report(prog: str, exc: BaseException) -> int:
    """The line and the status for what ended the body; :func:`asm.errors.status_of` says
    which status an exception stands for, this says it to the user."""
    if isinstance(exc, BrokenPipeError) and _stdout_gone():
        _quiet_stdout()
        return EXIT_PIPE
    status = status_of(exc)
    if status == EXIT_INTERNAL:
        return _internal_error(prog, exc)
    if isinstance(exc, (ImsError, KeyboardInterrupt)):
        _say(prog, failure_text(exc))
    else:                              # a full disk (status_of: EXIT_NOSPACE)
        _say(prog, f"{failure_text(exc)}: free space there and run the same command again")
    return status


def failure_text(exc: BaseException) -> str:
    """What a command's last line says of a failure that is no bug (an ImsError, a
    signal, a full disk), before any what-to-do of its own (:func:`_report`)."""
    if isinstance(exc, ImsError):
        return str(exc) or type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    where = f" writing {exc.filename}" if getattr(exc, "filename", None) else ""
    return f"{getattr(exc, 'strerror', None) or 'no space left on device'}{where}"


def _internal_error(prog: str, exc: BaseException) -> int:
    """A bug: one line for the user, the traceback in a crash file for the report."""
    import traceback
    what = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if os.environ.get("IMS_DEBUG", "") not in ("", "0"):
        try:
            sys.stderr.write(text)
        except (OSError, ValueError):
            pass
        _say(prog, f"internal error ({what}); please report it with the traceback above")
        return EXIT_INTERNAL
    try:
        path = _write_crash_file(prog, text)
    except OSError as err:
        _say(prog, f"internal error ({what}); its details could not be saved ({err.strerror or err}): "
                   f"run again with IMS_DEBUG=1 to see them, and please report it")
        return EXIT_INTERNAL
    _say(prog, f"internal error ({what}); details in {path}; please report it")
    return EXIT_INTERNAL


def _write_crash_file(prog: str, text: str) -> str:
    """``$TMPDIR/<prog>-crash-YYYYMMDD-HHMMSS-XXXX.txt`` (0600): what ran, where, and the traceback."""
    import platform
    import tempfile

    from asm import __version__
    fd, path = tempfile.mkstemp(prefix=f"{prog}-crash-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
        f.write(f"command: {' '.join(sys.argv)}\n"
                f"ims-asm {__version__}, Python {platform.python_version()}, {platform.platform()}\n"
                f"time: {time.strftime('%Y-%m-%d %H:%M:%S %z')}\ncwd: {os.getcwd()}\n"
                f"IMS_HOME: {os.environ.get('IMS_HOME', '(not set)')}\n\n{text}")
    return path


def _stdout_gone() -> bool:
    """Has stdout's reader gone away (a pipe with no reader left)?"""
    import select
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _quiet_stdout() -> None:
    """Point fd 1 at /dev/null, so what is still buffered goes nowhere at exit instead of
    raising BrokenPipeError again in the interpreter's final flush."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(fd, sys.stdout.fileno())
        finally:
            os.close(fd)
    except (AttributeError, OSError, ValueError):
        pass


def _flush_stdout(prog: str, status: int) -> int:
    """Flush what the command printed now, where a failure can still be told apart: a
    reader that went away cuts the output (EXIT_PIPE unless something failed before)."""
    import errno
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_PIPE if status == EXIT_OK else status
    except OSError as exc:
        _quiet_stdout()
        if status != EXIT_OK:
            return status
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _say(prog, f"cannot write stdout: {exc.strerror}; free space there and run again")
            return EXIT_NOSPACE
        _say(prog, f"cannot write stdout: {exc.strerror or exc}")
        return EXIT_PIPE if exc.errno == errno.EPIPE else EXIT_DEVICE
    except ValueError:                 # stdout was closed by the command
        pass
    return status


# ----------------------------------------------------------------------------- output

class Progress:
    """A single self-rewriting line on a terminal; silent when stderr is not a tty
    (cron) unless the command was asked for -v."""

    _shown_any: set = set()

    def __init__(self, enabled: bool | None = None, interval: float = 0.5):
        if enabled is None:
            enabled = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
        self.enabled = enabled
        self.interval = interval
        self._last = 0.0
        self._shown = False
        self.start = time.monotonic()

    def update(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        sys.stderr.write("\r\x1b[K" + text[:200])
        sys.stderr.flush()
        self._shown = True
        Progress._shown_any.add(self)

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._shown = False
        Progress._shown_any.discard(self)

    @classmethod
    def clear_all(cls) -> None:
        """Before a final error line: no progress text left in front of it."""
        for p in list(cls._shown_any):
            try:
                p.clear()
            except (OSError, ValueError):
                cls._shown_any.discard(p)


# ----------------------------------------------------------------------------- arguments

def blocking_factor(text: str) -> int:
    """argparse type for -b: records of 512*N bytes, N from 1 to MAX_BLOCKING_FACTOR (the
    range the archive's record layer takes, so the command and the format agree)."""
    from asm.archive.records import MAX_BLOCKING_FACTOR
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_BLOCKING_FACTOR:
        raise argparse.ArgumentTypeError(f"bad blocking factor {text!r}: use 1 to {MAX_BLOCKING_FACTOR}")
    return n


class Once(argparse.Action):
    """``action=Once`` (every "store" option of an :class:`ArgParser`): an option that
    may be given once; a second one is refused (``-u a -u b``, ``-m m1 -m m2``, two
    ``--base``: argparse kept the last and silently dropped the first)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string is not None:
            given = namespace.__dict__.setdefault("_ims_given", {})
            if self.dest in given:
                parser.error(f"{option_string} given twice ({given[self.dest]!r} and {values!r}): give it once")
            given[self.dest] = values
        setattr(namespace, self.dest, values)


def check_out_file(option: str, path: str) -> None:
    """A file an option names for the command to write (imsrestore -R, imsbackup
    --state-out) is in an existing directory, as --report's is: a mistyped directory is
    refused before the run (UsageError, exit 2), never made (mkdir -p made it).  ``-``
    is refused too: it wrote a file named '-' where every other option means stdout."""
    if path == "-":
        raise UsageError(f"{option} - : this option writes a file, never standard output: name a file "
                         f"(./- for one named '-'); nothing was done")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path} is a directory: name a file in it; nothing was done")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise UsageError(f"{option} {path}: directory {d} does not exist: create it or name a file in an "
                         f"existing directory; nothing was done")


def number(lo: float, hi: float | None = None, whole: bool = True,
           above: bool = False, unit: str = "") -> Callable[[str], float]:
    """argparse type for a count or a duration: a whole number (``whole``) or a finite
    decimal from ``lo`` (excluded with ``above``) to ``hi``; anything else (``-1``,
    ``nan``, ``1e999``) is refused naming the value and the range (argparse the option), so that
    ``--keep -1`` cannot mean "remove every file" nor ``--max-age -5`` "always stale"."""
    import math

    def parse(text: str):
        try:
            v = int(text) if whole else float(text)
        except ValueError:
            v = None
        if v is None or not math.isfinite(v) or v < lo or (above and v == lo) or (hi is not None and v > hi):
            what = "a whole number" if whole else "a number"
            rng = (f"above {lo:g}" if above else f"from {lo:g}") + (f" to {hi:g}" if hi is not None else "")
            raise argparse.ArgumentTypeError(f"use {what} {rng}{unit}, not {text!r}")
        return v
    return parse


def parse_date(text: str) -> float:
    """``YYYYMMDD[:HHMMSS]`` in local time, as the classic tools take it, strictly
    (asm.units.classic_date): a later "since" than meant would miss the mail in between."""
    from asm.units import NoSuchDate, classic_date
    try:
        return classic_date(text)
    except NoSuchDate as exc:
        raise UsageError(f"bad date {text!r}: {exc}; give a real day and time, e.g. 20240501:131000") from None
    except ValueError:
        raise UsageError(f"bad date {text!r}: use YYYYMMDD or YYYYMMDD:HHMMSS (8 digits, "
                         "optionally ':' and 6), e.g. 20240501:131000") from None


def read_list_file(path: str, as_written: bool = False) -> list:
    """Names from a -u file (``-``: standard input, as ``-f -`` is): one per line, blank
    lines and # comments ignored, blanks around a name dropped; a name that is not UTF-8
    is kept as its bytes; a leading byte-order mark (an editor's) is not part of the
    first name.  ``as_written``: (name, the line as written) pairs, the latter with its
    trailing blanks (a folder's name may end in one: imsbackup asks the store)."""
    import io
    from asm.lines import bounded_lines

    def names(f, shown):
        out = [(ln.strip(), ln.rstrip("\n").lstrip()) for ln in bounded_lines(f, shown, "a list of names, one a line")
               if ln.strip() and not ln.lstrip().startswith("#")]
        return out if as_written else [name for name, _ in out]
    try:
        if path == "-":          # (a closed stdin: its own line, EXIT_DEVICE)
            f = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", errors="surrogateescape")
            try:
                return names(f, "standard input")
            finally:
                f.detach()
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
            return names(f, path)
    except OSError as exc:
        raise UsageError(f"cannot read {'standard input' if path == '-' else repr(path)}: "
                         f"{exc.strerror or exc}") from None


# ----------------------------------------------------------------------------- lock_target

def lock_target(prog: str, target: str, raw, held: list, path: str | None = None, state: bool = True) -> None:
    """One run at a time writes a local archive and its state file: a second run of the
    same name (cron started twice) would leave the archive of one run beside the state
    file of the other.  Refused (EXIT_LOCKED), its temporary removed, nothing written.
    ``path``: the lock file a device plugin names for a remote object (an S3 key: the
    installation's lock on it, so the object of one run is not replaced by the other's
    while the first reports success).  ``prog``: the command (imsbackup, imsdr) said
    to hold it."""
    from asm.locks import FileLock
    if path is None:
        path = os.path.join(os.path.dirname(os.path.abspath(target)), f".{os.path.basename(target)}.lock")
    else:
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        except OSError as exc:
            with contextlib.suppress(Exception):
                raw.close(ok=False)
            raise ImsError(f"cannot lock {target} ({path}): {exc.strerror or exc}; nothing was written",
                           status=device_status(exc)) from None
    lock = FileLock(path)
    try:
        pid = lock.acquire()
    except OSError as exc:
        with contextlib.suppress(Exception):
            raw.close(ok=False)
        raise ImsError(f"cannot lock {target} ({lock.path}): {exc.strerror or exc}; nothing was written",
                       status=device_status(exc)) from None
    if pid is not None:
        with contextlib.suppress(Exception):
            raw.close(ok=False)
        who = f"another {prog} (pid {pid})" if pid else f"another {prog}"
        raise ImsError(f"{who} is writing {target}{' and its state file' if state else ''}: nothing was "
                       f"written; wait for it "
                       f"to finish (a cron job started twice?), or use another -f name", status=EXIT_LOCKED)
    held.append(lock)
