"""ims-asm: message store backup and restore, and adapters for backup engines."""
__version__ = "0.1.0"

# Every console script imports this first, before the command's own modules load (which
# takes a moment): a Ctrl-C or SIGTERM in that moment ends the command with one line and
# status 130, as later (asm.cli.common.run_command), not with a traceback or a bare signal
# death.  Nothing has been done yet then.  (Python's own start, before this, is not covered.)

import os as _os
import sys as _sys

_COMMANDS = frozenset({
    "msconfig", "mboxutil", "imsimport", "imsdeliver", "imsbackup", "imsrestore", "imsverify",
    "reconstruct", "imsdr", "imsplugins", "ims-demo", "imsasm", "mkbackupdir", "imsasmreport",
    "imsstage", "imsnbu", "imsbacula"})


def _trap_while_starting() -> None:
    main = _sys.modules.get("__main__")
    if _os.path.basename(getattr(main, "__file__", None) or "") not in _COMMANDS:
        return                          # imported by a test, a plugin host, python -c ...
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
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) in (signal.default_int_handler, signal.SIG_DFL):
                signal.signal(sig, interrupted_while_starting)
    except ValueError:                  # not the main thread
        pass


_trap_while_starting()
