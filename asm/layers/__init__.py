"""Stream layers between an archive and its device: zstd compression and age
encryption, on any device (file, pipe, tape, SSH, S3).  See docs/offsite.md.

Writing stacks them as the standard tools expect to undo them::

    archive (tar) -> zstd -> age -> device        age -d -i KEY | zstd -d | tar -t

Reading recognises each layer by its magic bytes (:func:`sniff`) and peels them off
(:func:`open_read`), whoever wrote them: ims-asm, or ``zstd`` and ``age`` (and gzip,
xz, bzip2) by hand.  Commands use :func:`wrap_read` and :func:`wrap_write` on an open
device; other readers (imsverify) call :func:`open_read` on any raw stream.

What can be read by seeking (a partial restore, a link's first copy) and what only in
one pass:

* age: always seekable on a seekable device: chunk ``i`` of 64 KiB sits at a fixed
  offset and is authenticated alone; which chunk is the last follows from the size;
* zstd as ims-asm writes it: independent frames of 1 MiB and a seek table at the end
  (the zstd seekable format): seekable; ``zstd`` output has no table: one pass;
* gzip, xz, bzip2 (read only, for archives compressed by hand): one pass.
"""
from asm.layers.errors import (  # noqa: F401
    IdentityNeeded, KeyProblem, LayerDamaged, LayerError, LayerUnsupported,
)

# asm.layers.stack's names, imported at first use (PEP 562): a command that writes no
# layer (or imports only the errors, as asm.layers.options does) does not build its
# stream classes at start.
_STACK = ("KINDS", "LayeredDevice", "LayeredWriter", "layered_write", "open_read", "read_to_end", "sniff",
          "wrap_read")
_SUBMODULES = ("age", "base", "bech32", "errors", "options", "stack", "zstd")

__all__ = ["IdentityNeeded", "KeyProblem", "LayerDamaged", "LayerError", "LayerUnsupported", "wrap_write", *_STACK]


def wrap_write(device, compress_level: int | None, recipients: list, threads: int = 0, record_size: int = 10240):
    """``device`` as it is without layers (their stream code is not even loaded: a
    plain backup's start), else a LayeredDevice writing through them."""
    if compress_level is None and not recipients:
        return device
    from asm.layers.stack import layered_write
    return layered_write(device, compress_level, recipients, threads, record_size)


def __getattr__(name: str):
    import importlib
    if name in _STACK:
        value = getattr(importlib.import_module("asm.layers.stack"), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:                      # asm.layers.zstd, ... as attributes
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_STACK))
