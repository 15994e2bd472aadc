"""Installation configuration: ``$IMS_HOME/config/msg.conf``, written by ``msconfig``.

The file holds ``name = value`` lines.  Every option is declared in :data:`OPTIONS`
with a checker, so a typo is refused with a message naming the option instead of
being silently ignored.  Writes go to a temporary file, are fsynced and renamed,
so a crash never leaves half a configuration.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import re
from typing import Callable

from asm.errors import EXIT_EMPTY, EXIT_NOSPACE, EXIT_USAGE, ImsError

#: Longest value msconfig stores (a path may be this long on Linux).
MAX_VALUE = 4096
#: Largest msg.conf read; a bigger file is not a configuration file.
MAX_CONF_BYTES = 1 << 20
#: Highest user ID store.owner may name ((uid_t)-1 means "no change" to chown).
MAX_UID = 2**32 - 2
_DIGITS = re.compile(r"[0-9]+\Z")


class ConfigError(ImsError):
    """A bad option name or value, or an unreadable configuration file."""

    status = EXIT_USAGE


class NoInstallation(ConfigError):
    """IMS_HOME names no installation (missing, a file, or a directory that holds
    neither config/ nor data/): a command that reads never makes one."""

    status = EXIT_USAGE


class ConfigWriteFailed(ConfigError):
    """msg.conf could not be written (full disk, read-only, permissions); the old
    file is untouched."""

    def __init__(self, path: str, exc: OSError):
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        what = "free space on that disk" if full else "check the directory's permissions"
        super().__init__(f"cannot write {path}: {exc.strerror or exc}; it was left as it was: "
                         f"{what} and run the same command again",
                         status=EXIT_NOSPACE if full else EXIT_USAGE)


def _choice(*values: str) -> Callable[[str], str]:
    def check(v: str) -> str:
        if v not in values:
            raise ValueError(f"must be one of {', '.join(values)}")
        return v
    return check


def _abspath(v: str) -> str:
    if not v.startswith("/"):
        raise ValueError("must be an absolute path")
    return os.path.normpath(v)


def _int(lo: int, hi: int) -> Callable[[str], str]:
    def check(v: str) -> str:
        # ASCII digits only: int() would also take '1_0', '+5' and other scripts' digits
        if not _DIGITS.match(v) or len(v) > 20:
            raise ValueError(f"must be a whole number between {lo} and {hi}")
        n = int(v)
        if not lo <= n <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return str(n)
    return check


def _owner(v: str) -> str:
    """A user name, or a numeric user ID, that exists on this system: restored files
    are chowned to it, so a typo must fail here and not in the middle of a restore."""
    if _DIGITS.match(v):
        if len(v) > 10 or int(v) > MAX_UID:
            raise ValueError(f"a user ID is between 0 and {MAX_UID}")
        try:
            pwd.getpwuid(int(v))
        except KeyError:
            raise ValueError(f"no user with ID {int(v)} on this system (add it, or name an existing user)") from None
        return str(int(v))
    try:
        pwd.getpwnam(v)
    except KeyError:
        raise ValueError(f"no such user {v!r} on this system") from None
    return v


def exclude_names(v: str) -> list[str]:
    """store.backupexclude's folder names: split on '%', each trimmed of spaces
    ('Trash % Bulk Mail' is Trash and Bulk Mail)."""
    return [x.strip() for x in v.split("%")]


def _exclude(v: str) -> str:
    names = exclude_names(v)
    if any(not x for x in names):
        raise ValueError("folder names are separated by single '%' and may not be empty")
    for x in names:
        if x.startswith("/") or x.endswith("/") or "//" in x:
            raise ValueError(f"bad folder name {x!r}: levels are separated by single '/', e.g. Archive/2023")
    return "%".join(names)


def _mail_location(v: str) -> str:
    """``doveconf`` (read from the running Dovecot) or a Maildir ``mail_location``."""
    if v == "doveconf":
        return v
    from asm.store.layout import LayoutError, parse_mail_location
    from asm.store.maildir.store import check_driver_location
    try:
        loc = parse_mail_location(v)
        check_driver_location(loc)
    except LayoutError as exc:
        raise ValueError(str(exc)) from None
    return loc.text


def _home_template(v: str) -> str:
    if not v.startswith("/"):
        raise ValueError("must be an absolute path template, e.g. /var/vmail/%d/%n")
    from asm.store.layout import LayoutError, _tokens
    try:
        _tokens(v, "store.mail_home")
    except LayoutError as exc:
        raise ValueError(str(exc)) from None
    return v


def _compress(v: str) -> str:
    """none, zstd or zstd:LEVEL (1-22)."""
    low = v.lower()
    if low in ("none", "no", "off"):
        return "none"
    algo, _, level = low.partition(":")
    if algo != "zstd":
        raise ValueError("must be none, zstd or zstd:LEVEL (1-22), e.g. zstd:3")
    if level and (not _DIGITS.match(level) or not 1 <= int(level) <= 22):
        raise ValueError(f"bad zstd level {level!r}: use 1 (fastest) to 22 (smallest), e.g. zstd:3")
    return f"zstd:{int(level)}" if level else "zstd"


def _recipients(v: str) -> str:
    """age1... recipients and absolute paths of recipients files, separated by spaces or
    commas; a secret key is refused here, before it is ever written to msg.conf."""
    from asm.layers import bech32
    items = [x for x in re.split(r"[\s,]+", v) if x]
    for x in items:
        if x.upper().startswith("AGE-SECRET-KEY-"):
            raise ValueError("that is a secret key: give its public recipient (age-keygen -y KEYFILE prints "
                             "it); the secret key never belongs on the mail host")
        if x.startswith("/"):
            continue
        try:
            hrp, data = bech32.decode(x)
        except ValueError as exc:
            raise ValueError(f"{x[:30]!r} is neither an age1... recipient ({exc}) nor an absolute path of a "
                             f"recipients file") from None
        if hrp != "age" or len(data) != 32:
            raise ValueError(f"{x[:30]!r} is not an X25519 age recipient (age1...)")
        from asm.layers.age import SMALL_ORDER_WHY, small_order
        if small_order(data):
            raise ValueError(f"{x[:30]!r} is an age recipient that cannot be used: {SMALL_ORDER_WHY}")
    if not items:
        raise ValueError("no recipient given")
    return " ".join(items)


def _paths(v: str) -> str:
    items = [x for x in re.split(r"[\s,]+", v) if x]
    if not items or any(not x.startswith("/") for x in items):
        raise ValueError("must be absolute paths, separated by spaces")
    return " ".join(os.path.normpath(x) for x in items)


def _url(v: str) -> str:
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
        raise ValueError("must be an http:// or https:// URL, e.g. https://s3.example.com:9000")
    return v.rstrip("/")


def _bool(v: str) -> str:
    low = v.lower()
    if low in ("1", "yes", "true", "on"):
        return "yes"
    if low in ("0", "no", "false", "off"):
        return "no"
    raise ValueError("must be yes or no")


def _any(v: str) -> str:
    if "\n" in v:
        raise ValueError("may not contain a newline")
    return v


class Option:
    """An option msconfig knows: its checker, its default (None: unset) and what it is.
    (A plain class, not a frozen dataclass: every command builds it at start.)"""

    __slots__ = ("check", "default", "doc")

    def __init__(self, check: Callable[[str], str], default: str | None, doc: str):
        self.check, self.default, self.doc = check, default, doc


#: Every option msconfig knows.  ``partition:NAME.path`` is matched by pattern.
OPTIONS: dict[str, Option] = {
    "store.driver": Option(lambda v: _driver(v), "classic",
                           "message store format: classic (embedded), maildir (Dovecot), or a "
                           "driver a loaded plugin offers"),
    "store.backupexclude": Option(_exclude, None,
                                  "folders left out of user backups, %-separated, e.g. Trash%Bulk Mail"),
    "store.owner": Option(_owner, None,
                          "system user owning store files; restored files get this owner"),
    "store.mail_location": Option(_mail_location, None,
                                  "maildir driver: Dovecot's mail_location (e.g. maildir:/var/vmail/%d/%n/"
                                  "Maildir; sdbox:/mdbox: through doveadm backup), or 'doveconf' to read "
                                  "it from dovecot.config; unset: <partition>/<user>/Maildir"),
    "store.mail_home": Option(_home_template, None,
                              "maildir driver: the userdb home template (e.g. /var/vmail/%d/%n) when "
                              "store.mail_location uses ~ or %h"),
    "store.locktimeout": Option(_int(1, 3600), "30", "seconds to wait for a folder lock"),
    "store.root": Option(_abspath, None,
                         "classic store root (mailbox list, queue); default $IMS_HOME/data/store"),
    "store.backupdir": Option(_abspath, None,
                              "mkbackupdir's backup image directory when -p is not given (NetWorker)"),
    "dovecot.config": Option(_abspath, None,
                             "Dovecot's configuration file, for reconstruct's doveadm force-resync and the "
                             "mail_crypt keys imsdr backup saves (default /etc/dovecot/dovecot.conf if present)"),
    "dovecot.holdfile": Option(_abspath, None,
                               "maildir driver: a passwd-file Dovecot's LMTP userdb reads (e.g. "
                               "/etc/dovecot/hold.lmtp); a delivery hold adds the login there with "
                               "tempfail, so Dovecot's LMTP answers 451 while a restore runs"),
    "device.localonly": Option(_bool, "no",
                               "treat every -f argument as a local path, even with a colon"),
    "store.compress": Option(_compress, "none",
                             "compress every archive imsbackup writes: none, zstd, or zstd:LEVEL (1-22; "
                             "zstd alone is level 3)"),
    "store.compress.threads": Option(_int(0, 256), "0",
                                     "threads compressing one archive, 0 for one per core"),
    "store.encrypt.recipients": Option(_recipients, None,
                                       "encrypt every archive to these age recipients: age1... keys and/or "
                                       "absolute paths of recipients files, separated by spaces"),
    "store.encrypt.identities": Option(_paths, None,
                                       "age identity files (absolute paths) imsrestore tries on an encrypted "
                                       "archive; for restore hosts: keep them off the mail host"),
    "s3.endpoint": Option(_url, None, "S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the "
                                      "AWS configuration files, else AWS)"),
    "s3.region": Option(_any, None, "S3 region (default: AWS_REGION, the AWS configuration files, else us-east-1)"),
    "s3.profile": Option(_any, None, "profile of the AWS configuration files (default: AWS_PROFILE, else default)"),
    "s3.credentials": Option(_abspath, None, "AWS shared credentials file (default: AWS_SHARED_CREDENTIALS_FILE, "
                                             "else ~/.aws/credentials)"),
    "s3.addressing": Option(_choice("auto", "path", "virtual"), "auto",
                            "bucket in the path or in the host name; auto: path with s3.endpoint set, else virtual"),
    "s3.partsize": Option(_int(5, 5120), "16", "MiB per part of a multipart upload (doubling every 2,000 parts)"),
    "s3.concurrency": Option(_int(1, 32), "4", "parts uploaded at once (memory: about partsize x (concurrency + 1))"),
    "s3.retries": Option(_int(0, 20), "5", "times a failed request (a part, a ranged read) is tried again"),
    "s3.timeout": Option(_int(1, 3600), "60", "seconds to wait for a connection or an answer"),
    "s3.lockdays": Option(_int(0, 36500), "0",
                          "object lock: each object written stays undeletable this many days (0: none; the "
                          "bucket must have object lock enabled)"),
    "s3.lockmode": Option(_choice("governance", "compliance"), "governance",
                          "object lock mode: governance (privileged users may lift it) or compliance (nobody)"),
    "backup.allowempty": Option(_bool, "no",
                                "yes: a backup that finds no user on a partition it covers writes an "
                                f"(empty) archive instead of failing with exit {EXIT_EMPTY}"),
    "backup.skipunchanged": Option(_bool, "yes",
                                   "no: an incremental reads every folder, also those its base "
                                   "recorded as unchanged (for a store whose file times cannot be "
                                   "trusted, e.g. an NFS server whose clock is off by seconds)"),
    "backup.readahead": Option(_bool, "yes",
                               "no: a full backup does not have a child process ask the kernel for "
                               "the folders' files ahead of it (the read-ahead overlaps a cold "
                               "cache's waits for the disk with the backup's own work)"),
    "restore.spoolmax": Option(_int(0, 1 << 20), "1024",
                               "MiB of first copies a restore from a pipe may keep for later links"),
    "staging.dir": Option(_abspath, None, "staging directory for per-group dumps"),
    "staging.keep": Option(_int(0, 1000), "0", "staging dumps kept after the engine succeeded"),
    "staging.jobs": Option(_int(1, 64), None, "parallel group dumps (default: number of cores)"),
    "staging.afterbatch": Option(_any, None,
                                 "shell command saving a staged batch when the area cannot hold every group"),
    "staging.remote": Option(_any, None, "[user@]host[:port]:dir or s3://bucket/prefix to push completed dumps to"),
    "staging.remote.keep": Option(_int(0, 100000), None,
                                  "remote copies kept per group by 'imsstage prune': the newest N (0: off; all "
                                  "four rules off or unset: prune refuses)"),
    "staging.remote.keepdaily": Option(_int(0, 100000), None,
                                       "... and the newest of each of the last N days that have dumps"),
    "staging.remote.keepweekly": Option(_int(0, 100000), None, "... of each of the last N weeks"),
    "staging.remote.keepmonthly": Option(_int(0, 100000), None, "... of each of the last N months"),
    "report.textfile": Option(_abspath, None,
                              "directory of node-exporter's textfile collector: each imsbackup, imsrestore "
                              "and imsverify run writes its metrics there (docs/operations.md)"),
    "report.healthcheck": Option(_url, None,
                                 "URL pinged at the start (URL/start), success (URL) and failure (URL/fail) "
                                 "of each backup, healthchecks.io style"),
    "report.timeout": Option(_int(1, 300), "10", "seconds a healthcheck ping may take"),
}

PARTITION_RE = re.compile(r"^partition:([A-Za-z0-9_][A-Za-z0-9_.-]*)\.path$")


def _driver(v: str) -> str:
    """classic, maildir, or the name of a store driver a loaded plugin offers."""
    if v in ("classic", "maildir"):
        return v
    from asm import plugins
    offered = plugins.store_factories()
    if v not in offered:
        raise ValueError(f"must be one of {', '.join(sorted(offered) or ['classic', 'maildir'])} "
                         f"(the store drivers of the loaded plugins; check IMS_ASM_PLUGINS)")
    return v


def plugin_options() -> dict[str, Option]:
    """The options loaded plugins declare (hook ``ims_options``)."""
    from asm import plugins
    out: dict[str, Option] = {}
    for answer in plugins.hook().ims_options():
        for name, spec in (answer or {}).items():
            if name in OPTIONS or name in out or PARTITION_RE.match(name):
                raise plugins.PluginError(f"two declarations of the option {name!r} (a plugin's "
                                          f"ims_options and another)")
            check_fn, default, doc = spec
            out[name] = Option(check_fn, default, doc)
    return out


def lookup(name: str) -> Option:
    if name in OPTIONS:
        return OPTIONS[name]
    if PARTITION_RE.match(name):
        return Option(_abspath, None, "directory of a store partition")
    extra = plugin_options()
    if name in extra:
        return extra[name]
    raise ConfigError(f"unknown option {_short(name)!r}{_hint(name, extra)}")


def _nearest(name: str, extra: dict[str, Option]) -> str | None:
    """The known option name nearest ``name`` (a typo in either part: ``stroe.owner``,
    ``partiton:primary.path``, ``Store.Driver``), or None."""
    import difflib
    m = _PARTITION_SHAPE.match(name)
    mine = f"partition:{m.group(1)}.path" if m else None
    candidates = [*OPTIONS, *extra]
    candidates.append(mine if mine and mine != name and PARTITION_RE.match(mine) else "partition:primary.path")
    near = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6) or \
        difflib.get_close_matches(name.lower(), candidates, n=1, cutoff=0.6)
    return near[0] if near and len(name) <= 200 else None


#: a name shaped as partition:NAME.path, whatever its first part and NAME
_PARTITION_SHAPE = re.compile(r"^[^:.]*:(.*)\.path$", re.S)


def _partition_hint(name: str) -> str | None:
    """For a name shaped as partition:NAME.path whose NAME no partition can have: what a
    NAME may hold, and the name with each character it may not hold as ``_`` when that
    is a name msconfig takes (never the name refused)."""
    m = _PARTITION_SHAPE.match(name)
    if m is None or len(name) > 200 or PARTITION_RE.match(f"partition:{m.group(1)}.path"):
        return None
    fixed = re.sub(r"[^A-Za-z0-9_.-]", "_", m.group(1))
    fixed = "_" + fixed[1:] if fixed[:1] in (".", "-") else fixed
    near = f"partition:{fixed}.path"
    return (" (in partition:NAME.path, NAME is letters, digits, _, then also . and -"
            + (f"; did you mean {near}?" if fixed and near != name and PARTITION_RE.match(near) else "") + ")")


def _hint(name: str, extra: dict[str, Option]) -> str:
    """What a partition NAME may hold, else the nearest known name, else the namespace's options."""
    part = _partition_hint(name)
    if part is not None:
        return part
    known = [*OPTIONS, *extra]
    near = _nearest(name, extra)
    if near:
        return f" (did you mean {near}? 'msconfig show -a' lists the known options)"
    close = [n for n in known if n.split(".")[0] == name.split(".")[0]]
    if close:
        return f" (known {name.split('.')[0]} options: {', '.join(close)})"
    return " (run 'msconfig show -a' for the known options)"


def _bad_char(value: str) -> str | None:
    """Why ``value`` cannot be a line of msg.conf, or None."""
    if value.isascii() and value.isprintable():
        return None                 # the usual case, without loading the Unicode database
    import unicodedata
    for c in value:
        cat = unicodedata.category(c)
        if cat == "Cs":
            # a byte that was not UTF-8 on the command line (os.fsdecode's escape)
            return "is not UTF-8 text (msg.conf is UTF-8)"
        if cat in ("Cc", "Zl", "Zp"):
            # msg.conf is line-based: a newline in a value would smuggle in another
            # option (and leave a file no command can read)
            return "may not contain newlines or other control characters"
    return None


def check(name: str, value: str) -> str:
    opt = lookup(name)
    shown = value if len(value) <= 80 else value[:60] + f"...({len(value)} characters)"
    if "AGE-SECRET-KEY-" in value.upper():
        shown = "(an age secret key: not shown)"
    try:
        if len(value) > MAX_VALUE:
            raise ValueError(f"too long ({len(value)} characters; at most {MAX_VALUE})")
        why = _bad_char(value)
        if why:
            raise ValueError(why)
        if not value.strip():
            raise ValueError(f"empty (to return to the default, run: msconfig unset {name})")
        return opt.check(value.strip())
    except ValueError as exc:
        raise ConfigError(f"bad value {shown if shown.startswith('(') else repr(shown)} for option {name}: "
                          f"{exc}") from None


#: Namespaces of the options asm.config declares: any other name in msg.conf belongs to
#: a plugin (hook ims_options).
CORE_NAMESPACES = frozenset(n.split(".")[0] for n in OPTIONS)
_DRIVER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _check_loaded(name: str, value: str) -> str:
    """check() for a line read from msg.conf: a plugin's option or store driver whose
    plugin is not loaded now is kept as written (the command that needs it says so;
    the others, msconfig among them, must still run)."""
    if name == "store.driver" and value.strip() not in ("classic", "maildir"):
        if _DRIVER_NAME.match(value.strip()):
            return value.strip()
    try:
        return check(name, value)
    except ConfigError:
        space = name.split(".")[0]
        if "." in name and space not in CORE_NAMESPACES and not PARTITION_RE.match(name) \
                and _bad_char(value) is None:
            try:
                lookup(name)
            except ConfigError:
                # a plugin's options are named <entry point>.<option> (hook ims_options):
                # only an installed plugin's that is not loaded now are kept unchecked.  Any
                # other name (a typo in its first part: stroe.owner, Store.Driver) is
                # unknown, as a typo after the dot is: kept, it would be silently ignored
                from asm import plugins
                installed = plugins.installed()
                if space in installed and not plugins.is_loaded(space):
                    return value.strip()
                if space in installed or _nearest(name, plugin_options()):
                    raise                     # a typo: the error names the nearest name
                raise ConfigError(f"unknown option {_short(name)!r}: no installed plugin is named "
                                  f"{_short(space)!r} (install the plugin whose option it is, or remove "
                                  f"the line)") from None
        raise


def ims_home(home: str | None = None) -> str:
    home = home or os.environ.get("IMS_HOME")
    if not home:
        raise ConfigError("IMS_HOME is not set: export IMS_HOME=/path/to/installation")
    if "\x00" in home:
        raise NoInstallation(f"IMS_HOME={home!r} is not a path")
    home = os.path.abspath(home)
    if os.path.exists(home) and not os.path.isdir(home):
        raise NoInstallation(f"IMS_HOME={home} is a file, not an installation directory: check IMS_HOME")
    return home


def own_file(path: str, home: str | None = None) -> str | None:
    """What ``path`` is of the installation IMS_HOME (``home``) when an output file there
    would replace or add to its own files: its configuration (IMS_HOME/config), its store
    (the store root, a partition) or one of its databases (IMS_HOME/data/*.db: the
    restore journal, Bacula's state).  None otherwise, and when there is no installation.
    (A mistyped --report or --state-out replaced msg.conf or the mailbox list, exit 0.)"""
    try:
        home = ims_home(home)
    except ImsError:
        return None
    if not os.path.isfile(os.path.join(home, "config", "msg.conf")):
        return None
    real = os.path.realpath(path)

    def under(d: str) -> bool:
        d = os.path.realpath(d)
        return real == d or real.startswith(d.rstrip("/") + "/")
    if under(os.path.join(home, "config")):
        return f"in the installation's configuration ({os.path.join(home, 'config')})"
    try:
        cfg = Config(home)
        stores = [cfg.store_root, *cfg.partitions().values()]
    except (ImsError, OSError, ValueError):
        stores = []
    for d in stores:
        if d and under(d):
            return f"in the store ({d})"
    data = os.path.join(home, "data")
    if under(data) and re.search(r"\.db(-wal|-shm|-journal)?$", os.path.basename(real)):
        return f"one of the installation's databases ({data})"
    return None


def installation_problem(home: str) -> str | None:
    """Why ``home`` is not an installation a command may read, or None.

    An installation is a directory holding ``config/`` (made by ``msconfig set``) or
    ``data/`` (made by the store).  A mistyped IMS_HOME has neither, and a command
    that only reads must say so instead of creating a new, empty installation there.
    """
    if not os.path.exists(home):
        return (f"IMS_HOME={home} does not exist: check IMS_HOME (a new installation is "
                f"made by 'msconfig set NAME VALUE')")
    if not os.path.isdir(home):
        return f"IMS_HOME={home} is a file, not an installation directory: check IMS_HOME"
    if not any(os.path.isdir(os.path.join(home, d)) for d in ("config", "data")):
        return (f"IMS_HOME={home} is not an ims-asm installation (it has no config/ or data/): "
                f"check IMS_HOME")
    return None


class Config:
    """The options of one installation (``IMS_HOME``)."""

    def __init__(self, home: str | None = None):
        self.home = ims_home(home)
        self.path = os.path.join(self.home, "config", "msg.conf")
        self.groups_path = os.path.join(self.home, "config", "backup-groups.conf")
        self.values: dict[str, str] = {}
        self.created = False          # set() made the installation directory
        self._load()

    def require(self) -> "Config":
        """Raise NoInstallation unless IMS_HOME is an existing installation."""
        why = installation_problem(self.home)
        if why:
            raise NoInstallation(why)
        return self

    def _read(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_CONF_BYTES + 1)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise NoInstallation(f"IMS_HOME={self.home}: {os.path.dirname(self.path)} is not a "
                                 f"directory: check IMS_HOME") from None
        except IsADirectoryError:
            raise ConfigError(f"{self.path} is a directory, not a file: remove it or move it away") from None
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror}") from None
        if len(data) > MAX_CONF_BYTES:
            raise ConfigError(f"{self.path} is bigger than {MAX_CONF_BYTES >> 20} MiB: it is not a "
                              f"msg.conf (msconfig writes one 'name = value' line per option)")
        return data

    def _load(self) -> None:
        data = self._read()
        if data is None:
            return
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]                 # a byte-order mark left by an editor
        seen: dict[str, int] = {}
        for lineno, raw in enumerate(data.split(b"\n"), 1):
            where = f"{self.path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                  f"{exc.start + 1}); msg.conf is UTF-8: retype the line or set it with "
                                  f"msconfig set") from None
            s = line.rstrip("\r").strip()
            if not s or s.startswith("#"):
                continue
            name, eq, value = s.partition("=")
            if not eq:
                raise ConfigError(f"{where}: expected 'name = value', found {_short(s)!r}")
            name, value = name.strip(), value.strip()
            try:
                self.values[name] = _check_loaded(name, value)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            if name in seen:
                raise ConfigError(f"{where}: {name} is already set on line {seen[name]}; keep one of the two lines")
            seen[name] = lineno

    # -- reading ------------------------------------------------------------
    def get(self, name: str) -> str | None:
        if name in self.values:
            return self.values[name]
        return lookup(name).default

    def get_int(self, name: str) -> int:
        return int(self.get(name))

    @property
    def driver(self) -> str:
        return self.get("store.driver")

    @property
    def store_root(self) -> str:
        return self.get("store.root") or os.path.join(self.home, "data", "store")

    def partitions(self) -> dict[str, str]:
        """{name: path}; ``primary`` always exists (default under IMS_HOME)."""
        parts = {}
        for name, value in self.values.items():
            m = PARTITION_RE.match(name)
            if m:
                parts[m.group(1)] = value
        if "primary" not in parts:
            sub = "maildir" if self.driver == "maildir" else os.path.join("store", "partition")
            parts["primary"] = os.path.join(self.home, "data", sub, "primary")
        return dict(sorted(parts.items(), key=lambda kv: (kv[0] != "primary", kv[0])))

    def checked_partitions(self) -> dict[str, str]:
        """:meth:`partitions`, refused (ConfigError) when two name one directory or one
        lies inside another: a backup read each user twice or took one partition's users
        for a lost mailbox list, a restore could not tell where a user was; and when one
        set in msg.conf by hand is a directory :meth:`_misplaced` names (``/``, IMS_HOME,
        the store's root...), as ``msconfig set`` refuses it."""
        parts = self.partitions()
        problem = next((why for why in (self._misplaced(f"partition:{n}.path", p) for n, p in parts.items()
                                        if self.partition_configured(n)) if why),
                       None) or partition_overlap(parts)
        if problem:
            raise ConfigError(problem)
        return parts

    def backup_exclude(self) -> list[str]:
        raw = self.get("store.backupexclude")
        return exclude_names(raw) if raw else []

    def partition_configured(self, name: str) -> bool:
        """True when ``partition:NAME.path`` is set (not the default under IMS_HOME)."""
        return f"partition:{name}.path" in self.values

    @property
    def installation_id_path(self) -> str:
        return os.path.join(self.home, "data", "installation.id")

    def installation_id(self, create: bool = False) -> str | None:
        """The installation's identity, written into every archive's header: 32
        hexadecimal digits in ``$IMS_HOME/data/installation.id`` (not in msg.conf, which
        configuration management may write again from a template; imsdr backs it up);
        with ``create``, made (a random one) when the installation has none yet.  None
        when it has none and cannot be given one (``data/`` not writable): the archive
        then names none, as archives of earlier versions do.  ConfigError when the file
        holds anything else."""
        path = self.installation_id_path
        try:
            with open(path, "rb") as f:
                text = f.read(100)
        except FileNotFoundError:
            text = None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        if text is not None:
            v = text.decode("ascii", "replace").strip()
            if not re.fullmatch(r"[0-9a-f]{32}", v):
                raise ConfigError(f"{path} is damaged (it holds no installation identity, 32 hexadecimal "
                                  f"digits): restore it from the disaster backup (imsdr restore), or remove "
                                  f"it, and the next backup starts new chains")
            return v
        if not create:
            return None
        import uuid
        v = uuid.uuid4().hex
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            make_dirs(os.path.dirname(path))
            try:
                atomic_write(tmp, (v + "\n").encode(), mode=0o644)
                os.link(tmp, path)          # (two first backups at once: one identity)
            except FileExistsError:
                return self.installation_id()
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        except OSError:
            return None
        return v

    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) of store.owner, or None when files keep the running user's."""
        name = self.get("store.owner")
        if not name:
            return None
        try:
            pw = pwd.getpwuid(int(name)) if _DIGITS.match(name) else pwd.getpwnam(name)
        except (KeyError, OverflowError, ValueError):
            raise ConfigError(f"store.owner is {name!r}, which is no user on this system (any more): "
                              f"msconfig set store.owner to an existing user") from None
        return pw.pw_uid, pw.pw_gid

    # -- writing ------------------------------------------------------------
    def _make_home(self) -> None:
        """Create IMS_HOME (one level, as mkdir does: a mistyped parent is refused)."""
        if os.path.isdir(self.home):
            return
        parent = os.path.dirname(self.home)
        if not os.path.isdir(parent):
            raise NoInstallation(f"cannot create the installation IMS_HOME={self.home}: {parent} does "
                                 f"not exist (check IMS_HOME, or create {parent} first)")
        try:
            os.mkdir(self.home, 0o755)
            os.chmod(self.home, 0o755)          # whatever the umask (make_dirs)
            self.created = True
        except FileExistsError:
            pass

    @contextlib.contextmanager
    def _writing(self):
        """Hold msg.conf's lock and re-read the file, so two msconfig runs at once
        each keep the other's change instead of writing back a stale copy."""
        d = os.path.dirname(self.path)
        try:
            self._make_home()
            make_dirs(d)
            from asm.locks import open_lock_file
            fd = open_lock_file(os.path.join(d, ".msg.conf.lock"), 0o644)
        except OSError as exc:
            raise ConfigWriteFailed(self.path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.values = {}
            self._load()
            try:
                yield
            except OSError as exc:
                raise ConfigWriteFailed(self.path, exc) from None
        finally:
            os.close(fd)

    def set(self, name: str, value: str) -> str:
        value = check(name, value)
        if name in ("store.driver", "store.root") or not os.path.isdir(self.home):
            deep = self._too_deep_for_sqlite(name, value)
            if deep:
                raise ConfigError(deep)
        with self._writing():
            old = self.values.get(name)
            self.values[name] = value
            problem = None
            if PARTITION_RE.match(name):
                problem = self._misplaced(name, value) or partition_overlap(self.partitions())
            if problem:
                if old is None:
                    del self.values[name]
                else:
                    self.values[name] = old
                raise ConfigError(problem)
            self.save()
        return value

    def _too_deep_for_sqlite(self, name: str, value: str) -> str | None:
        """Why the installation, once ``name`` is ``value``, could not open its databases
        (the restore journal in IMS_HOME/data, the classic store's mailbox list in the
        store's root): a path longer than SQLite opens; else None.  (Set, it would have
        made an installation every later command fails in.)"""
        from asm.sqlitedb import path_too_long
        driver = value if name == "store.driver" else self.driver
        root = value if name == "store.root" else self.store_root
        dbs = [("IMS_HOME", os.path.join(self.home, "data", "restore-journal.db"))]
        if driver == "classic":
            own = name == "store.root" or "store.root" in self.values     # else under IMS_HOME
            dbs.append(("store.root" if own else "IMS_HOME", os.path.join(root, "mboxlist", "mailboxes.db")))
        for what, path in dbs:
            long = path_too_long(path)
            if long:
                return (f"{what} is too deep: the database {path} would not open, {long}; "
                        f"choose a shorter {what}")
        return None

    def _misplaced(self, name: str, value: str) -> str | None:
        """Why ``value`` cannot be the directory of a partition: ``/``, IMS_HOME or a
        directory holding it, one in IMS_HOME's config/, the store's root or a directory
        holding it (each holds files that are no mail: a restore would write users beside
        them, a backup would read them as users), else None."""
        real = os.path.realpath(value)
        home = os.path.realpath(self.home)
        conf = os.path.join(home, "config")
        root = os.path.realpath(self.store_root)
        why = ("is the root directory" if real == "/" else
               f"is IMS_HOME ({self.home}), which holds the installation's own files" if real == home else
               f"holds IMS_HOME ({self.home}), the installation's own files" if _within(home, real) else
               f"lies in IMS_HOME's configuration directory ({conf})" if _within(real, conf) else
               f"is the store's root ({self.store_root})" if real == root else
               f"holds the store's root ({self.store_root})" if _within(root, real) else None)
        if why is None:
            return None
        return (f"{name} {value} {why}: a partition needs a directory of its own (e.g. "
                f"{os.path.join(self.home, 'partitions', name.split(':', 1)[1][:-5])}): set another")

    def unset(self, name: str) -> bool:
        lookup(name)
        with self._writing():
            had = self.values.pop(name, None) is not None
            if had:
                self.save()
        return had

    def save(self) -> None:
        d = os.path.dirname(self.path)
        make_dirs(d)
        text = "# written by msconfig; edit with 'msconfig set NAME VALUE'\n" + "".join(
            f"{k} = {v}\n" for k, v in sorted(self.values.items()))
        atomic_write(self.path, text.encode("utf-8"), mode=0o644)


def _within(a: str, b: str) -> bool:
    """Whether the (real) path ``a`` is ``b`` or lies inside it."""
    return a == b or a.startswith(b.rstrip("/") + "/")


def partition_overlap(parts: dict[str, str]) -> str | None:
    """The line naming two partitions (``parts``: {name: path}, primary first) whose
    directories are one (after symbolic links) or one inside the other, or None."""
    seen: list = []
    for name, path in parts.items():
        real = os.path.realpath(path)
        for other, opath, oreal in seen:
            if real == oreal:
                how = f"is the directory of partition {other!r} ({opath})"
            elif _within(real, oreal):
                how = f"lies inside partition {other!r} ({opath})"
            elif _within(oreal, real):
                how = f"holds partition {other!r} ({opath})"
            else:
                continue
            return (f"partition {name!r} ({path}) {how}: each partition needs a directory of its own, "
                    f"outside the others': msconfig set partition:{name}.path to another directory, or "
                    f"msconfig unset partition:{name}.path")
        seen.append((name, path, real))
    return None


def _short(s: str) -> str:
    return s if len(s) <= 80 else s[:60] + f"...({len(s)} characters)"


def make_dirs(path: str, mode: int = 0o755) -> None:
    """``os.makedirs(path, exist_ok=True)`` that gives each directory it creates exactly
    ``mode``, whatever the umask: the installation's own directories ($IMS_HOME/config,
    $IMS_HOME/data) are 0755, never writable by others (os.makedirs made them 0777
    under umask 000, and anyone could rename a msg.conf naming another store.owner into
    config/).  Directories that exist are left as they are."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        make_dirs(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return
    os.chmod(path, mode)


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never half."""
    d = os.path.dirname(path) or "."
    import tempfile                 # only writing needs it (startup time)
    from asm.interrupts import interrupts_deferred
    tmp = None
    try:
        # (held: a SIGTERM as mkstemp returned left the file, no one to remove it)
        with interrupts_deferred():
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            if tmp is not None:
                os.unlink(tmp)
        except OSError:             # (the failure that matters is the one raised)
            pass
        raise
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
