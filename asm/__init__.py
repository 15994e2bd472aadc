"""ims-asm: message store backup and restore, and adapters for backup engines."""
__version__ = "0.1.0"

# Every console script imports this first, before the command's own modules load (which
# takes a moment): a Ctrl-C, SIGTERM or SIGHUP (not ignored: nohup) in that moment ends the command with one line and
# status 130, as later (asm.cli.common.run_command), not with a traceback or a bare signal
# death.  Nothing has been done yet then.  (Python's own start, before this, is not covered.)

import os as _os
import sys as _sys

_COMMANDS = frozenset({
    "msconfig", "mboxutil", "imsimport", "imsdeliver", "imsbackup", "imsrestore", "imsverify",
    "reconstruct", "imsdr", "imsplugins", "ims-demo", "imsasm", "mkbackupdir", "imsasmreport",
    "imsstage", "imsnbu", "imsbacula"})


# Names are UTF-8 bytes on disk (the classic store, Dovecot) and in archives (docs/format.md),
# whatever the locale: a command runs in Python's UTF-8 mode, so that the filesystem
# encoding, argv, stdio and subprocess pipes are UTF-8 (surrogateescape) under any
# locale.  Under a UTF-8 locale (or C/POSIX, where Python turns it on by itself) nothing
# happens; under another (en_US.ISO-8859-1 in an old cron environment) the command
# restarts itself at once with ``-X utf8``, before any ims-asm code has run, and
# PYTHONUTF8=1 passes the mode on to the Python processes it starts.  A process that
# cannot (a command's main() called from another program) is refused by
# asm.cli.common.run_command instead of misreading names.

_COMMAND_MODULES = frozenset({
    "plugins.networker.imsasm", "plugins.networker.mkbackupdir", "plugins.networker.report",
    "plugins.netbackup.cli", "plugins.netbackup.notify", "plugins.bacula.cli", "staging.cli"})


def _is_command() -> bool:
    """Whether this process is one of the commands: a console script, or ``python -m`` of
    a command's module (the staging children, the NetBackup notify scripts)."""
    main = _sys.modules.get("__main__")
    if _os.path.basename(getattr(main, "__file__", None) or "") in _COMMANDS:
        return True
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is None and _sys.argv[:1] == ["-m"]:       # python -m: its package is being imported
        name = _dash_m(list(getattr(_sys, "orig_argv", ()))[1:])
    return bool(name) and (name.startswith("asm.cli.") or name in _COMMAND_MODULES)


def _dash_m(args: list) -> str | None:
    """The module of ``python [options] -m MODULE ...`` from the interpreter's arguments."""
    it = iter(args)
    for a in it:
        if a == "--check-hash-based-pycs":
            next(it, None)
        elif a.startswith("-") and not a.startswith("--") and a != "-":
            for i, c in enumerate(a[1:], 1):        # -Im mod, -mmod, -X utf8, -Wignore
                if c in "mcXW":
                    value = a[i + 1:] or next(it, None)
                    if c == "m":
                        return value
                    if c == "c":
                        return None
                    break
        elif not a.startswith("--"):
            return None                             # a script, or - (stdin)
    return None


def _utf8_mode() -> None:
    """Restart in Python's UTF-8 mode when the locale's character set is not UTF-8."""
    if _sys.flags.utf8_mode or _sys.getfilesystemencoding().lower().replace("-", "") == "utf8":
        return
    argv = list(getattr(_sys, "orig_argv", ()))
    if not argv or argv[1:3] == ["-X", "utf8"] or not _sys.executable or not _is_command():
        return                          # (already restarted once: run_command refuses)
    _os.environ["PYTHONUTF8"] = "1"     # for the Python processes the command starts
    try:
        _sys.stdout.flush()
        _sys.stderr.flush()
        _os.execv(_sys.executable, [_sys.executable, "-X", "utf8", *argv[1:]])
    except (OSError, ValueError):
        pass                            # run_command refuses, with a message saying what to do


def _console_script() -> bool:
    """Whether this process is one of the console scripts (not a test, a plugin host,
    ``python -c`` ... importing asm)."""
    main = _sys.modules.get("__main__")
    return _os.path.basename(getattr(main, "__file__", None) or "") in _COMMANDS


def _trap_while_starting() -> None:
    if not _console_script():
        return
    from asm.errors import EXIT_INTERRUPTED     # (small: errno only; imported now, not in the handler)
    import signal

    def interrupted_while_starting(signum, frame):
        name = _os.path.basename(_sys.argv[0]) if _sys.argv and _sys.argv[0] else "ims-asm"
        try:
            _os.write(2, f"{name}: interrupted while starting: nothing was done\n".encode())
        finally:
            _os._exit(EXIT_INTERRUPTED)

    interrupted_while_starting.ims_early = True     # asm.cli.common.run_command replaces it
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)):
            if signal.getsignal(sig) in (signal.default_int_handler, signal.SIG_DFL):
                signal.signal(sig, interrupted_while_starting)
    except ValueError:                  # not the main thread
        pass


# A command's modules make about 100,000 objects as they load, and Python's cyclic garbage
# collector walks them over and over meanwhile, finding nothing to free: 7-10 ms of a
# start's 60-80 ms of CPU.  In a command it is paused from here until run_command begins
# the command's work (asm.cli.common._resume_gc), which also moves what the start made
# out of the collector's way for the rest of the run (gc.freeze).
_gc_paused = False


def _pause_gc_while_starting() -> None:
    global _gc_paused
    if not _console_script():
        return
    import gc
    if gc.isenabled():
        gc.disable()
        _gc_paused = True


_utf8_mode()
_trap_while_starting()
_pause_gc_while_starting()
