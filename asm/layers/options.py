"""Which layers a run uses: the command line over msg.conf (``store.compress``,
``store.compress.threads``, ``store.encrypt.recipients``, ``store.encrypt.identities``)."""
from __future__ import annotations

import re

from asm.errors import UsageError
from asm.layers.errors import KeyProblem

DEFAULT_LEVEL = 3       # asm.layers.zstd.DEFAULT_LEVEL (not imported: zstandard loads only when used)


class WriteLayers:
    """The layers an archive is written through.  (A plain class, not a dataclass: a
    dataclass execs its generated methods when its module is imported, at every
    backup's start.)"""

    def __init__(self, level: int | None = None, threads: int = 0, recipients: list | None = None):
        self.level = level                   # zstd level, None: no compression
        self.threads = threads
        self.recipients = [] if recipients is None else recipients

    def describe(self) -> str:
        parts = ([f"zstd:{self.level}"] if self.level is not None else []) + \
                ([f"age ({len(self.recipients)} recipient{'s' if len(self.recipients) != 1 else ''})"]
                 if self.recipients else [])
        return ", ".join(parts) or "none"


def parse_compress(spec: str) -> int | None:
    """``none`` -> None, ``zstd`` -> 3, ``zstd:N`` -> N (checked as msg.conf checks it)."""
    from asm.config import ConfigError, check
    try:
        v = check("store.compress", spec)
    except ConfigError as exc:
        raise UsageError(str(exc).replace("for option store.compress", "for --compress")) from None
    if v == "none":
        return None
    return int(v.split(":")[1]) if ":" in v else DEFAULT_LEVEL


def _tokens(value: str | None) -> list[str]:
    return [x for x in re.split(r"[\s,]+", value or "") if x]


def load_recipients(tokens: list[str]) -> list:
    """age1... recipients and recipients files (absolute or relative paths) -> Recipients."""
    from asm.layers import age
    out = []
    for t in tokens:
        if t.lower().startswith("age1") or t.upper().startswith("AGE-SECRET-KEY-") or \
                t.startswith(("ssh-", "sk-ssh-", "ecdsa-")):
            out.append(age.Recipient.parse(t))
        else:
            out += age.read_recipients(t)
    return out


def write_layers(config, compress: str | None = None, z: bool = False, encrypt: bool | None = None,
                 recipients: list[str] = (), recipient_files: list[str] = ()) -> WriteLayers:
    """The layers of a backup.  ``compress``: --compress SPEC; ``z``: -z (zstd at the
    configured level, else 3); ``encrypt``: --encrypt (True) / --no-encrypt (False);
    ``recipients``/``recipient_files``: --recipient / --recipients-file (they imply
    --encrypt and replace store.encrypt.recipients)."""
    conf = config.get("store.compress") if config is not None else "none"
    if compress is not None:
        level = parse_compress(compress)
        if z and not level:
            raise UsageError(f"-z (compress) contradicts --compress {compress}: give one or the other")
    elif z:
        level = parse_compress(conf) if conf and conf != "none" else DEFAULT_LEVEL
    else:
        level = parse_compress(conf or "none")
    threads = config.get_int("store.compress.threads") if config is not None else 0
    given = list(recipients) + list(recipient_files)
    if encrypt is False:
        if given:
            raise UsageError("--no-encrypt contradicts --recipient/--recipients-file: give one or the other")
        return WriteLayers(level, threads, [])
    tokens = given or _tokens(config.get("store.encrypt.recipients") if config is not None else None)
    if encrypt and not tokens:
        raise KeyProblem("--encrypt needs age recipients: --recipient age1... or --recipients-file FILE, or "
                         "msconfig set store.encrypt.recipients 'age1...'")
    return WriteLayers(level, threads, load_recipients(tokens) if tokens else [])


def identity_loader(config, files: list[str] = ()):
    """A callable giving the identities of ``files`` (--identity), else of
    store.encrypt.identities; called only when an archive turns out to be encrypted.
    Files given with --identity are read now, whatever the archive: a typo in one (a
    file missing, readable by all, holding no key) is named before anything is read or
    written, not only when an archive happens to be encrypted (a plain archive restored
    with a wrong --identity exited 0 without a look at it)."""
    if files:
        from asm.layers import age
        given = []
        for p in files:
            given += age.read_identities(p)
        return lambda: given

    def load():
        from asm.layers import age
        paths = list(files) or _tokens(config.get("store.encrypt.identities") if config is not None else None)
        out = []
        for p in paths:
            out += age.read_identities(p)
        return out
    return load
