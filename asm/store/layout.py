"""Where Dovecot keeps a login's mail: ``mail_location`` read the way Dovecot 2.3 reads it.

A pure module: it parses the setting, expands its variables for a login, and walks a
store's directories to find which logins have mail there.  It reads no message and no
Dovecot file; the only outside calls are ``doveconf`` in :func:`from_doveconf`, the
auth-userdb socket in :func:`userdb_users`, and directory listings.

* :func:`parse_mail_location` -- ``FORMAT:PATH[:KEY=VALUE...]`` for ``maildir``,
  ``sdbox`` and ``mdbox`` with ``LAYOUT=maildir++|fs``, ``INDEX=`` (or ``MEMORY``),
  ``CONTROL=``, ``INBOX=``, ``DIRNAME=``, ``MAILBOXDIR=``, ``SUBSCRIPTIONS=``, ``UTF-8``
  and the keys that move nothing a backup reads (``VOLATILEDIR``, ``ITERINDEX``,
  ``LISTINDEX``, ``NO-NOSELECT``, ``NO-FS-VALIDATION``, ``ALT`` for dbox).  Anything
  else is refused with a :class:`LayoutError` that names it.
* :func:`expand` -- ``%u %n %d %h`` (and ``%{user} %{username} %{domain} %{home}``) with
  Dovecot's substring syntax ``%[-][0]<offset>.<width>`` and modifiers ``L U E X R H N
  M D T``, byte for byte as Dovecot's var_expand.c does it; ``~/`` is the home.
* :meth:`StoreLayout.for_login` -- one login's Maildir root, INBOX, index and control
  roots, and per folder its mail directory (Maildir++ ``.A.B`` or ``LAYOUT=fs``
  ``A/B[/DIRNAME]``), index directory and control directory (where
  ``dovecot-uidlist`` and ``dovecot-keywords`` live).
* :meth:`StoreLayout.logins` -- the reverse: every login with mail under the store,
  found by walking the path template level by level; each candidate must expand back to
  exactly the directory it was found in, so nothing is attributed to the wrong login
  (``%d/%n`` keeps alice@example.com and alice@other.org apart; hashed levels such as
  ``%1n/%1.1n/%n`` or ``%2.256Nu/%u`` are checked, not trusted).
* :func:`from_doveconf` -- the layout of a running configuration: ``doveconf -c CONF -h
  mail_location``, and the home template (``mail_home``, or the userdb's ``home=``)
  when the location uses ``~`` or ``%h``.

* :meth:`StoreLayout.misplaced` with :func:`userdb_users` -- the logins a running
  Dovecot's userdb gives their own ``mail`` or ``home`` field leading outside the template
  (asked over its ``auth-userdb`` socket): :meth:`StoreLayout.logins` does not find them,
  the maildir driver names them so a backup leaves none out silently.

Per-user ``mail``/``home`` fields are not followed: such a login is named, not read.  Namespaces are read
by :func:`from_doveconf`: the inbox namespace's own ``location`` is the one used, any
other namespace keeping its mail elsewhere is refused by name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Iterator

from asm.errors import UsageError
from asm.store import utf7
from asm.store.base import is_inbox
from asm.store.maildir.names import dovecot_trashed, level_to_disk

FORMATS = ("maildir", "sdbox", "mdbox")
LAYOUTS = ("maildir++", "fs")
UIDLIST = "dovecot-uidlist"
KEYWORDS = "dovecot-keywords"
DEFAULT_SUBSCRIPTIONS = "subscriptions"
DBOX_MAILBOXDIR = "mailboxes"          # Dovecot's dbox defaults (dbox-storage.c)
DBOX_DIRNAME = "dbox-Mails"
# keys that change nothing a backup reads or writes
_INERT_FLAGS = ("ITERINDEX", "NO-NOSELECT", "NO-FS-VALIDATION", "ALTNOCHECK")
_INERT_VALUES = ("VOLATILEDIR", "LISTINDEX")
_VAR_NAMES = {"user": "u", "username": "n", "domain": "d", "home": "h"}
_MODIFIERS = "LUEXRHNMDT"


class LayoutError(UsageError):
    """A mail_location (or home template) this module cannot describe faithfully."""


# -- variables ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Var:
    """One %-variable of a mail_location template, where it is and its width."""

    key: str                  # u n d h (or '%')
    offset: int
    width: int
    zero: bool
    modifiers: str
    raw: str                  # as written, for messages

    @property
    def whole(self) -> bool:
        """Expands to the variable itself (maybe case-folded): usable as a capture."""
        return (self.offset == 0 and self.width == 0 and not self.zero
                and all(m in "LU" for m in self.modifiers))


_TOKENS: dict = {}       # (template, what) -> _tokens(): templates come from the configuration


def _tokens(template: str, what: str = "mail_location") -> tuple:
    """Split a template into literal strings and variables, as var_expand.c parses it
    (parsed once per template: a backup expands the same few for every login)."""
    got = _TOKENS.get((template, what))
    if got is None:
        got = _TOKENS[(template, what)] = tuple(_parse_tokens(template, what))
    return got


def _parse_tokens(template: str, what: str) -> list[str | _Var]:
    out: list[str | _Var] = []
    lit: list[str] = []
    t, i, n = template, 0, len(template)
    while i < n:
        if t[i] != "%":
            lit.append(t[i])
            i += 1
            continue
        start = i
        i += 1
        sign, offset, width, zero = 1, 0, 0, False
        if i < n and t[i] == "-":
            sign, i = -1, i + 1
        if i < n and t[i] == "0":
            zero, i = True, i + 1
        while i < n and t[i].isdigit():
            width = width * 10 + int(t[i])
            i += 1
        if i < n and t[i] == ".":
            offset, sign, width, i = sign * width, 1, 0, i + 1
            zero = False
            if i < n and t[i] == "0":
                zero, i = True, i + 1
            if i < n and t[i] == "-":
                sign, i = -1, i + 1
            while i < n and t[i].isdigit():
                width = width * 10 + int(t[i])
                i += 1
            width = sign * width
        mods = ""
        while i < n and t[i] in _MODIFIERS and len(mods) < 10:
            mods += t[i]
            i += 1
        if i >= n:
            break                                   # Dovecot drops a trailing '%...'
        if t[i] == "{" and "}" in t[i:]:
            end = t.index("}", i)
            name = t[i + 1:end]
            i = end + 1
            if name not in _VAR_NAMES:
                raise LayoutError(
                    f"{what} uses %{{{name}}}, which ims-asm cannot expand for a login "
                    f"(it knows %u %n %d %h and %{{user}} %{{username}} %{{domain}} "
                    f"%{{home}}): set {what} with those")
            key = _VAR_NAMES[name]
        else:
            key = t[i]
            i += 1
            if key not in "undh%":
                raise LayoutError(
                    f"{what} uses %{key}, which ims-asm cannot expand for a login (it "
                    f"knows %u %n %d %h): set {what} with those")
        if lit:
            out.append("".join(lit))
            lit = []
        if key == "%" and not mods and not offset and not width:
            out.append("%")
            continue
        out.append(_Var(key, offset, width, zero, mods, t[start:i]))
    if lit:
        out.append("".join(lit))
    return out


def _str_hash(b: bytes) -> int:
    h = 0
    for c in b:
        h = ((h << 4) + c) & 0xFFFFFFFF
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
            h ^= g
    return h


class _Ctx:
    __slots__ = ("offset", "width")

    def __init__(self, offset: int, width: int):
        self.offset, self.width = offset, width


def _hash_out(value: int, ctx: _Ctx) -> bytes:
    if ctx.width != 0:
        value %= ctx.width
        ctx.width = 0
    s = b"%x" % (value & 0xFFFFFFFF)
    if len(s) < ctx.offset:
        s = b"0" * (ctx.offset - len(s)) + s
    ctx.offset = 0
    return s


def _modify(m: str, v: bytes, ctx: _Ctx) -> bytes:
    if m == "L":
        return v.lower()                 # bytes.lower(): ASCII only, as i_tolower
    if m == "U":
        return v.upper()
    if m == "E":
        return re.sub(rb"([\"'\\])", rb"\\\1", v)
    if m == "X":
        return b"%x" % int(v) if v.isdigit() else b"0"
    if m == "R":
        return v[::-1]
    if m == "H":
        return _hash_out(_str_hash(v), ctx)
    if m == "N":
        return _hash_out(int.from_bytes(hashlib.md5(v).digest()[:8], "big"), ctx)
    if m == "M":
        return hashlib.md5(v).hexdigest().encode()
    if m == "D":
        return v.replace(b".", b",dc=")
    if m == "T":
        return v.rstrip(b" \t\n\v\f\r")
    raise AssertionError(m)


def _expand_var(var: _Var, value: bytes) -> bytes:
    ctx = _Ctx(var.offset, var.width)
    for m in var.modifiers:
        value = _modify(m, value, ctx)
    if ctx.offset < 0:
        if len(value) > -ctx.offset:
            value = value[len(value) + ctx.offset:]
    else:
        value = value[ctx.offset:]
    if ctx.width == 0:
        return value
    if not var.zero:
        width = ctx.width if ctx.width > 0 else len(value) + ctx.width
        return value[:width] if width >= 0 else value
    return value.rjust(ctx.width, b"0")


def login_values(login: str, home: str | None = None) -> dict[str, bytes | None]:
    """The variables Dovecot sets for a login (mail-user.c): %u %n %d %h."""
    raw = login.encode("utf-8", "surrogateescape")
    name, _, domain = raw.partition(b"@")
    return {"u": raw, "n": name, "d": domain,
            "h": None if home is None else home.encode("utf-8", "surrogateescape")}


def expand(template: str, login: str, home: str | None = None,
           what: str = "mail_location") -> str:
    """``template`` expanded for ``login`` exactly as Dovecot expands it (bytes-wise)."""
    values = login_values(login, home)
    out = bytearray()
    for tok in _tokens(template, what):
        if isinstance(tok, str):
            out += tok.encode("utf-8", "surrogateescape")
            continue
        if tok.key == "%":
            value = b"%"
        else:
            value = values[tok.key]
            if value is None:
                raise LayoutError(f"{what} uses {tok.raw} but no home directory is known "
                                  f"for {login}: give the userdb home template")
        out += _expand_var(tok, value)
    return out.decode("utf-8", "surrogateescape")


def _fix_path(path: str, home: str | None, login: str, what: str) -> str:
    """Dovecot's fix_path(): drop one trailing '/', expand '~' and '~/' to the home."""
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    if path.startswith("~"):
        if path != "~" and not path.startswith("~/"):
            raise LayoutError(f"{what} uses {path.split('/')[0]} (another system user's "
                              f"home): ims-asm needs ~/ or absolute paths")
        if home is None:
            raise LayoutError(f"{what} starts with ~ but no home directory is known for "
                              f"{login}: give the userdb home template")
        path = home + path[1:]
    return path


# -- mail_location --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MailLocation:
    """A parsed ``mail_location`` (paths still unexpanded)."""

    text: str
    format: str                       # maildir, sdbox, mdbox
    root: str
    layout: str                       # maildir++ or fs
    index: str | None = None          # None: with the mail; "" (INDEX=MEMORY): no index files
    control: str | None = None        # None: with the mail
    inbox: str | None = None          # None: the format's default
    dirname: str = ""                 # DIRNAME: mail of a folder in <folder>/<dirname>
    mailboxdir: str = ""              # MAILBOXDIR: folders under <root>/<mailboxdir>/
    subscriptions: str = DEFAULT_SUBSCRIPTIONS
    utf8: bool = False                # UTF-8: folder names on disk in UTF-8, not mUTF-7
    options: tuple[tuple[str, str], ...] = ()   # every key as written

    @property
    def is_maildir(self) -> bool:
        return self.format == "maildir"

    def templates(self) -> list[str]:
        return [p for p in (self.root, self.index, self.control, self.inbox) if p]

    def needs_home(self) -> bool:
        """True when a path uses ``~`` or ``%h`` (so a home template is needed)."""
        for p in self.templates():
            if p.startswith("~"):
                return True
            if any(isinstance(t, _Var) and t.key == "h" for t in _tokens(p)):
                return True
        return False


def _split_location(text: str) -> list[str]:
    """Split at ':' with Dovecot's '::' escape for a literal colon (split_next_arg)."""
    parts = text.split(":")
    out: list[str] = []
    i = 0
    while i < len(parts):
        s = parts[i]
        i += 1
        while i < len(parts) and parts[i] == "":
            i += 1
            if i >= len(parts):
                break                                 # trailing ':' ignored
            s += ":" + parts[i]
            i += 1
        out.append(s)
    return out


def parse_mail_location(text: str) -> MailLocation:
    """Parse ``FORMAT:PATH[:KEY=VALUE...]``; refuse what ims-asm cannot follow."""
    text = text.strip()
    if not text:
        raise LayoutError("mail_location is empty (Dovecot then guesses where mail is): "
                          "set it explicitly in dovecot.conf, e.g. maildir:~/Maildir")
    fmt, sep, rest = text.partition(":")
    if not sep or "/" in fmt or fmt.startswith("~"):
        raise LayoutError(f"mail_location {text!r} names no mailbox format: write it as "
                          f"FORMAT:PATH, e.g. maildir:{text}")
    if fmt not in FORMATS:
        raise LayoutError(f"mail_location {text!r}: the {fmt} format is not supported "
                          f"(ims-asm reads {', '.join(FORMATS)})")
    args = _split_location(rest)
    root = args[0]
    if not root:
        raise LayoutError(f"mail_location {text!r} has no mail root directory")
    if root.startswith("INBOX="):
        raise LayoutError(f"mail_location {text!r}: mail root directory not given")
    dbox = fmt != "maildir"
    fields: dict = {"layout": "fs" if dbox else "maildir++",
                    "dirname": DBOX_DIRNAME if dbox else "",
                    "mailboxdir": DBOX_MAILBOXDIR if dbox else ""}
    options = []
    for arg in args[1:]:
        key, eq, value = arg.partition("=")
        options.append((key, value))
        if arg == "UTF-8":
            fields["utf8"] = True
        elif key in _INERT_FLAGS and not eq:
            pass
        elif key in _INERT_VALUES and eq:
            pass
        elif key == "ALT" and dbox:
            pass                       # dbox alternate storage: doveadm reads it
        elif key == "LAYOUT":
            value = value.lower()
            if value not in LAYOUTS or (dbox and value != "fs"):
                raise LayoutError(f"mail_location {text!r}: LAYOUT={value} is not supported "
                                  f"(ims-asm follows LAYOUT=maildir++ and LAYOUT=fs)")
            fields["layout"] = value
        elif key == "INDEX":
            fields["index"] = "" if value == "MEMORY" else value
        elif key in ("CONTROL", "INBOX", "DIRNAME", "MAILBOXDIR", "SUBSCRIPTIONS") and eq:
            fields[{"CONTROL": "control", "INBOX": "inbox", "DIRNAME": "dirname",
                    "MAILBOXDIR": "mailboxdir", "SUBSCRIPTIONS": "subscriptions"}[key]] = value
        elif key == "UTF8":
            raise LayoutError(f"mail_location {text!r}: Dovecot spells the key UTF-8 (it "
                              f"refuses UTF8 as an unknown setting)")
        else:
            raise LayoutError(f"mail_location {text!r}: {key} is not supported by ims-asm "
                              f"(it follows LAYOUT, INDEX, CONTROL, INBOX, DIRNAME, "
                              f"MAILBOXDIR, SUBSCRIPTIONS and UTF-8)")
    if fields["layout"] == "maildir++" and fields.get("dirname"):
        raise LayoutError(f"mail_location {text!r}: DIRNAME needs LAYOUT=fs (Maildir++ keeps "
                          f"each folder in one .Name directory)")
    if fields["layout"] == "maildir++" and fields.get("mailboxdir"):
        raise LayoutError(f"mail_location {text!r}: MAILBOXDIR needs LAYOUT=fs")
    if "/" in fields.get("subscriptions", "") or not fields.get("subscriptions", "x"):
        raise LayoutError(f"mail_location {text!r}: SUBSCRIPTIONS must be a file name")
    md = fields.get("mailboxdir", "")
    if md and not md.endswith("/"):
        fields["mailboxdir"] = md + "/"
    root = _dot_levels(root, f"mail_location {text!r}")
    for key in ("index", "control", "inbox"):
        if fields.get(key):
            fields[key] = _dot_levels(fields[key], f"mail_location {text!r}")
    loc = MailLocation(text=text, format=fmt, root=root, options=tuple(options), **fields)
    for p in loc.templates():
        _tokens(p)                      # refuse unknown variables now, not per login
        if not p.startswith(("/", "~", "%h", "%{home}")):
            raise LayoutError(f"mail_location {text!r}: {p!r} is not an absolute path "
                              f"(Dovecot deprecates relative mail paths)")
    return loc


def _dot_levels(template: str, what: str) -> str:
    """``template`` without its literal ``.`` levels (``/srv/./mail/%u``: the kernel's
    path is ``/srv/mail/%u``, where Dovecot keeps the mail), so each login's paths are
    the ones a restore accepts; a ``.`` a variable gives a login stays refused there.
    A literal ``..`` level is refused: the kernel resolves it through a symlink, which
    ims-asm cannot follow as the same path."""
    levels = template.split("/")
    if ".." in levels:
        raise LayoutError(f"{what}: the path {template!r} has a '..' level: "
                          f"write it without '..' (the directory it names) in dovecot.conf "
                          f"or {'store.mail_home' if what.startswith('the home') else 'store.mail_location'}")
    return _without_dots(template)


def _without_dots(path: str) -> str:
    """``path`` without its ``.`` levels after the first."""
    levels = path.split("/")
    kept = [lv for i, lv in enumerate(levels) if lv != "." or i == 0]
    if len(kept) == len(levels):
        return path
    return "/".join(kept) if len(kept) > 1 else "/"


# -- one login ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class UserLayout:
    """Where one login's mail, indexes and control files are."""

    login: str
    home: str | None
    location: MailLocation
    root: str                     # the mail root (Maildir++: also INBOX)
    inbox_dir: str                # INBOX's mail directory (cur/ new/ tmp/ for Maildir)
    index_root: str | None        # None: no index files (INDEX=MEMORY)
    control_root: str             # where subscriptions and dovecot-uidvalidity live

    @property
    def layout(self) -> str:
        return self.location.layout

    @property
    def separator(self) -> str:
        """Hierarchy separator in directory names: '.' (Maildir++) or '/' (fs)."""
        return "." if self.layout == "maildir++" else "/"

    def storage_name(self, folder: str) -> str:
        """Folder name (levels joined by '/') as Dovecot names it on disk."""
        levels = folder.split("/")
        if is_inbox(levels[0]):
            levels[0] = "INBOX"
        if any(not lv for lv in levels):
            raise LayoutError(f"folder {folder!r} has an empty level")
        if self.layout == "maildir++" and any("." in lv for lv in levels):
            raise LayoutError(f"folder {folder!r}: Maildir++ uses '.' between levels, so a "
                              f"level may not contain '.'")
        enc = levels if self.location.utf8 else [level_to_disk(lv) for lv in levels]
        return self.separator.join(enc)

    def _under(self, base: str, folder: str, with_dirname: bool) -> str:
        name = self.storage_name(folder)
        if self.layout == "maildir++":
            return f"{base}/.{name}"
        path = f"{base}/{self.location.mailboxdir}{name}"
        if with_dirname and self.location.dirname:
            path += "/" + self.location.dirname
        return path

    def _is_inbox(self, folder: str) -> bool:
        return is_inbox(folder)

    def folder_dirname(self, folder: str) -> str:
        """The folder's mail directory relative to the root ('' for the root itself)."""
        path = self.folder_dir(folder)
        if path == self.root:
            return ""
        if path.startswith(self.root + "/"):
            return path[len(self.root) + 1:]
        return path

    def folder_dir(self, folder: str) -> str:
        """The folder's mail directory (Maildir: holds cur/ new/ tmp/)."""
        if self._is_inbox(folder) and self._inbox_is_special():
            return self.inbox_dir
        return self._under(self.root, folder, with_dirname=True)

    def _inbox_is_special(self) -> bool:
        loc = self.location
        return loc.inbox is not None or (loc.is_maildir and not loc.dirname)

    def index_dir(self, folder: str) -> str | None:
        """Where the folder's dovecot.index* files are (None with INDEX=MEMORY)."""
        if self.location.index is not None:
            if self.index_root is None:
                return None
            return self._under(self.index_root, folder, with_dirname=False)
        return self.folder_dir(folder)

    def control_dir(self, folder: str) -> str:
        """Where the folder's dovecot-uidlist and dovecot-keywords are."""
        if self.location.control is not None:
            return self._under(self.control_root, folder, with_dirname=False)
        return self.folder_dir(folder)

    def uidlist_path(self, folder: str) -> str:
        return os.path.join(self.control_dir(folder), UIDLIST)

    def keywords_path(self, folder: str) -> str:
        return os.path.join(self.control_dir(folder), KEYWORDS)

    @property
    def subscriptions_path(self) -> str:
        return os.path.join(self.control_root, self.location.subscriptions)

    @property
    def list_index_dir(self) -> str | None:
        """Where dovecot.list.index* are (the index root, else the mail root)."""
        return self.index_root if self.location.index is not None else self.root

    def folder_from_dirname(self, name: str) -> str | None:
        """A directory name (Maildir++: an entry of the root; fs: a path relative to the
        root, DIRNAME excluded) -> folder name, or None when it names no folder."""
        if self.layout == "maildir++":
            if not name.startswith(".") or name in (".", ".."):
                return None
            levels = name[1:].split(".")
        else:
            md = self.location.mailboxdir
            if md:
                if not name.startswith(md):
                    return None
                name = name[len(md):]
            levels = name.split("/")
        if any(not lv for lv in levels):
            return None
        out = []
        for lv in levels:
            if self.location.utf8:
                out.append(lv)
                continue
            try:
                out.append(utf7.decode(lv))
            except ValueError:
                out.append(lv)
        if is_inbox(out[0]):
            if len(out) == 1 and self._inbox_is_special():
                return None
            out[0] = "INBOX"
        folder = "/".join(out)
        try:
            if self.storage_name(folder) != self.separator.join(levels):
                # not the directory Dovecot opens for that name (.a&b, raw UTF-8 .Café,
                # .&AOk-&AOk- for .&AOkA6Q-): reading it as that folder would restore its
                # mail elsewhere or merge it into another folder (foreign_dirs names it)
                return None
        except LayoutError:
            return None
        return folder

    def folders(self) -> list[str]:
        """Folder names with a mail directory on disk (INBOX when it has one), sorted.

        Only directories are listed: Maildir++ ``.Name`` entries of the root; for fs the
        tree under the root, a directory being a folder when it holds ``cur`` (or the
        DIRNAME directory; ``cur new tmp`` are names Dovecot reserves in fs).
        """
        out = set()
        inbox = self.folder_dir("INBOX")
        if os.path.isdir(os.path.join(inbox, "cur") if self.location.is_maildir else inbox):
            out.add("INBOX")
        if self.layout == "maildir++":
            for entry in _scandirs(self.root):
                name = self.folder_from_dirname(entry)
                if name is not None:
                    out.add(name)
            return sorted(out)
        base = self.root + ("/" + self.location.mailboxdir.rstrip("/")
                            if self.location.mailboxdir else "")
        skip = {"cur", "new", "tmp", self.location.dirname}
        marker = self.location.dirname or "cur"
        stack = [""]
        while stack:
            rel = stack.pop()
            for entry in _scandirs(os.path.join(base, rel) if rel else base):
                if entry in skip or dovecot_trashed(entry):
                    continue
                sub = f"{rel}/{entry}" if rel else entry
                if os.path.isdir(os.path.join(base, sub, marker)):
                    name = self.folder_from_dirname(self.location.mailboxdir + sub)
                    if name is not None:
                        out.add(name)
                stack.append(sub)
        return sorted(out)

    def foreign_dirs(self) -> list[tuple[str, str, str]]:
        """(name, path, why) of the directories holding mail (Maildir: cur/ or new/;
        fs with DIRNAME: that directory) whose name is no folder name: they are not
        read (:meth:`folders`), so a backup must name them.  Sorted by path."""
        out = []
        mail = ("cur", "new") if self.location.is_maildir else ()
        why = "its name is no folder name Dovecot writes"
        if self.layout == "maildir++":
            for entry in _scandirs(self.root):
                if entry.startswith(".") and entry not in (".", "..") and not dovecot_trashed(entry) and \
                        self.folder_from_dirname(entry) is None and \
                        os.path.join(self.root, entry) != self.inbox_dir and \
                        any(os.path.isdir(os.path.join(self.root, entry, m)) for m in mail):
                    out.append((entry, os.path.join(self.root, entry), why))
            return out
        base = self.root + ("/" + self.location.mailboxdir.rstrip("/")
                            if self.location.mailboxdir else "")
        skip = {"cur", "new", "tmp", self.location.dirname}
        markers = (self.location.dirname,) if self.location.dirname else mail
        stack = [""]
        while stack:
            rel = stack.pop()
            for entry in _scandirs(os.path.join(base, rel) if rel else base):
                if entry in skip:
                    continue
                sub = f"{rel}/{entry}" if rel else entry
                path = os.path.join(base, sub)
                if path != self.inbox_dir and any(os.path.isdir(os.path.join(path, m)) for m in markers) \
                        and self.folder_from_dirname(self.location.mailboxdir + sub) is None:
                    out.append((sub, path, why))
                stack.append(sub)
        return sorted(out, key=lambda t: t[1])

    def linked_dirs(self) -> list[tuple[str, str]]:
        """(name, path) of the symbolic links to directories where a folder's directory
        could be (Maildir++: ``.Name`` entries of the root; fs: any level of the tree):
        never followed (:meth:`folders` lists directories only), so a backup must name
        them.  ``name`` is the folder the link would be, where its name is one."""
        out = []
        if self.layout == "maildir++":
            for entry in _scanlinks(self.root):
                if entry.startswith(".") and entry not in (".", "..") and not dovecot_trashed(entry):
                    out.append((self.folder_from_dirname(entry) or entry, os.path.join(self.root, entry)))
            return out
        base = self.root + ("/" + self.location.mailboxdir.rstrip("/")
                            if self.location.mailboxdir else "")
        skip = {"cur", "new", "tmp", self.location.dirname}
        stack = [""]
        while stack:
            rel = stack.pop()
            dirs, links = _scan(os.path.join(base, rel) if rel else base)    # (one read a level)
            for entry in links:
                if entry not in skip and not dovecot_trashed(entry):
                    sub = f"{rel}/{entry}" if rel else entry
                    out.append((self.folder_from_dirname(self.location.mailboxdir + sub) or sub,
                                os.path.join(base, sub)))
            for entry in dirs:
                if entry not in skip:
                    stack.append(f"{rel}/{entry}" if rel else entry)
        return sorted(out, key=lambda t: t[1])


def _drop_aliases(found: dict) -> None:
    """Logins whose mail directory is another found login's, through a symbolic link
    above the mail (a domain alias, ``example.net -> example.com``): one mail, read once,
    as the login whose path has no link (else the first by name)."""
    by_real: dict[str, list] = {}
    for login, ul in found.items():
        by_real.setdefault(os.path.realpath(ul.root), []).append(login)
    for real, logins in by_real.items():
        if len(logins) > 1:
            keep = min(logins, key=lambda lg: (os.path.normpath(found[lg].root) != real, lg))
            for login in logins:
                if login != keep:
                    del found[login]


def _scan(path: str) -> tuple[list[str], list[str]]:
    """(directories, symbolic links to directories) in ``path``, each sorted."""
    dirs, links = [], []
    try:
        with os.scandir(path) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    dirs.append(e.name)
                elif e.is_symlink() and e.is_dir():
                    links.append(e.name)
    except (FileNotFoundError, NotADirectoryError):
        pass
    return sorted(dirs), sorted(links)


def _scanlinks(path: str) -> list[str]:
    """The entries of ``path`` that are symbolic links to directories, sorted."""
    return _scan(path)[1]


def _scandirs(path: str, links: bool = False) -> list[str]:
    """The directories in ``path``, sorted; ``links``: with the symbolic links to
    directories (the levels above the mail directories, which are the administrator's:
    a domain or a home moved to another disk)."""
    dirs, linked = _scan(path)
    return sorted(dirs + linked) if links else dirs


def _user_layout(login: str, loc: MailLocation, home: str | None) -> UserLayout:
    """Every path Dovecot uses for ``login`` with location ``loc`` and home ``home``."""
    def path(template: str, what: str) -> str:
        # a '.' level a variable gives (%1.1n of j.doe) is the directory itself, as the
        # kernel reads it: the path without it is the one a backup and a restore use
        return _without_dots(_fix_path(expand(template, login, home, what), home, login, what))

    root = path(loc.root, "mail_location")
    index_root = None
    if loc.index is not None and loc.index != "":
        index_root = path(loc.index, "INDEX")
    control_root = path(loc.control, "CONTROL") if loc.control is not None else root
    if loc.inbox is not None:
        inbox = path(loc.inbox, "INBOX")
    elif loc.is_maildir and not loc.dirname:
        inbox = root                                  # Maildir: INBOX is the root
    else:
        inbox = f"{root}/{loc.mailboxdir}INBOX" + (f"/{loc.dirname}" if loc.dirname else "")
    if loc.index is None:
        index_root = root
    return UserLayout(login, home, loc, root, inbox, index_root, control_root)


# -- a whole store ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Skipped:
    """A directory found while enumerating logins that belongs to no login."""

    path: str
    reason: str
    hint: str | None = None        # what to do, when not the store's usual hint


@dataclasses.dataclass(frozen=True)
class Misplaced:
    """A login whose userdb fields put its mail outside the store's template."""

    login: str
    path: str                 # its mail root (or the userdb's mail field, unparsable)
    reason: str
    hint: str | None = None   # what to do, when not the usual (a location of its own)


def _compile_levels(template: str) -> list:
    """A path template level by level: ("lit", text), or ("rx", (regex, groups,
    can_be_empty)) for a level with variables, ``groups`` naming the login parts
    (%u, %n, %d) it tells."""
    compiled = []
    for level in template.split("/")[1:]:
        toks = _tokens(level)
        if not any(isinstance(t, _Var) and t.key != "%" for t in toks):
            compiled.append(("lit", expand(level, "x")))
            continue
        rx, groups = [], []
        for t in toks:
            if isinstance(t, str):
                rx.append(re.escape(t))
            elif t.key == "%":
                rx.append(re.escape(expand(t.raw, "x")))
            elif t.whole and t.key in "und":
                g = f"{t.key}{len(groups)}"
                groups.append((g, t.key))
                rx.append(f"(?P<{g}>.+?)" if t.key != "d" else f"(?P<{g}>.*?)")
            else:
                rx.append(".*?")
        # a level a short login leaves empty (%1.1n of "a", %d of "postmaster"):
        # Dovecot's path has '//' there
        try:
            can_be_empty = expand(level, "a") == ""
        except Exception:  # noqa: BLE001 - a level expand cannot take: never empty
            can_be_empty = False
        compiled.append(("rx", (re.compile("".join(rx), re.S), groups, can_be_empty)))
    return compiled


def _norm(path: str) -> str:
    """``path`` as the kernel reads it when it has no ``..`` level (``//``, ``/./`` and a
    trailing ``/`` name the same directory); with ``..`` as written (a symlink may lead
    elsewhere)."""
    return path if ".." in path.split("/") else os.path.normpath(path)


#: the MailLocation fields that decide which directory names are folders and which
#: folder each one is, with how a message states them
_NAMING = (("layout", lambda v: f"LAYOUT={v}"), ("utf8", lambda v: "UTF-8" if v else "in mUTF-7"),
           ("dirname", lambda v: f"DIRNAME={v}"), ("mailboxdir", lambda v: f"MAILBOXDIR={v}"),
           ("subscriptions", lambda v: f"SUBSCRIPTIONS={v}"))

#: What to do about a login whose own mail= keeps its mail where the template does but
#: names its folders otherwise.
SAME_DIR_HINT = ("back this login up from an IMS_HOME of its own whose store.mail_location is "
                 "its own mail location (imsbackup /primary/{login} there; it restores it the "
                 "same way), or give it the template's location in the userdb once Dovecot has "
                 "converted its folders (doveadm sync; docs/dovecot.md)")


def _naming_differs(mine: MailLocation, template: MailLocation) -> list[str]:
    """How ``mine`` names folders unlike ``template`` (LAYOUT, UTF-8, DIRNAME, ...)."""
    return [show(getattr(mine, f)) for f, show in _NAMING if getattr(mine, f) != getattr(template, f)]


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


class StoreLayout:
    """A mail_location plus (when it uses ``~``/``%h``) the userdb home template."""

    #: the running Dovecot's auth-userdb socket (set by :func:`from_doveconf`): where
    #: :func:`userdb_users` asks which logins exist and where their mail is
    userdb_socket: str | None = None
    #: the ``userdb { }`` sections of that Dovecot's configuration: what
    #: :func:`userdb_from_files` reads when the socket does not answer
    userdb_text: str = ""
    #: that Dovecot's ``mail_uid`` and ``mail_gid`` (as written: a name or a number; ""
    #: unset): who it runs a login as when the userdb gives no ``uid``/``gid``
    mail_uid: str = ""
    mail_gid: str = ""
    #: the ``uid=`` a userdb gives every login it serves (static ``args``,
    #: ``default_fields``, ``override_fields``; "" none): it wins over ``mail_uid``
    userdb_uid: str = ""
    userdb_gid: str = ""

    def __init__(self, location: MailLocation | str, home_template: str | None = None):
        self.location = (parse_mail_location(location) if isinstance(location, str)
                         else location)
        if home_template is not None:
            _tokens(home_template, "the home template")
            if "~" in home_template.split("/")[0] or not home_template.startswith("/"):
                raise LayoutError(f"home template {home_template!r} must be an absolute path")
            home_template = _dot_levels(home_template, f"the home template {home_template!r}")
        self.home_template = home_template
        if self.location.needs_home() and home_template is None:
            raise LayoutError(f"mail_location {self.location.text!r} uses ~ or %h: give the "
                              f"userdb home template too (mail_home, or home= of the userdb)")

    def __repr__(self) -> str:
        return f"StoreLayout({self.location.text!r}, home_template={self.home_template!r})"

    def home(self, login: str) -> str | None:
        if self.home_template is None:
            return None
        return expand(self.home_template, login, what="the home template")

    def for_login(self, login: str) -> UserLayout:
        """Every path Dovecot uses for ``login``."""
        return _user_layout(login, self.location, self.home(login))

    def misplaced(self, userdb: dict[str, dict[str, str]], everyone: bool = False) -> list[Misplaced]:
        """The logins of ``userdb`` ({login: its userdb fields}, see :func:`userdb_users`)
        whose own ``mail`` or ``home`` field puts mail where :meth:`for_login` does not
        look: :meth:`logins` walks the template, so that mail is in no backup.  A login
        counts only when its real location holds a mailbox (with ``everyone``: also when
        it holds none yet, the thing a restore must know); fields that lead to exactly
        the template's directories change nothing."""
        out = []
        for login in sorted(userdb):
            fields = userdb[login]
            mail, home = fields.get("mail") or None, fields.get("home") or None
            if home is not None:            # HOME/alice/, HOME//alice, HOME/./alice: one directory
                home = _norm(home)
            if mail is None and (home is None or home == _norm(self.home(login) or "")):
                continue
            try:
                ul = _user_layout(login, parse_mail_location(mail) if mail else self.location,
                                  home)
            except LayoutError as exc:
                if mail:
                    out.append(Misplaced(login, mail, f"the userdb gives {login} the mail "
                                                      f"location {mail!r} ({exc})"))
                continue                     # no home: Dovecot cannot serve it either
            try:
                here = self.for_login(login)
            except LayoutError:
                here = None
            same_dirs = here is not None and ul.location.format == here.location.format and (
                [_norm(d) for d in (ul.root, ul.inbox_dir, ul.control_root)]
                == [_norm(d) for d in (here.root, here.inbox_dir, here.control_root)]
                # INDEX=MEMORY: Dovecot keeps no index of the login's, nothing to read or clear
                and (ul.index_root is None or here.index_root is not None
                     and _norm(ul.index_root) == _norm(here.index_root)))
            differs = _naming_differs(ul.location, here.location) if here is not None else []
            if same_dirs and not differs:
                continue
            if not everyone and not self._has_mail(ul):
                continue
            if same_dirs:
                out.append(Misplaced(login, ul.root, (
                    f"the userdb gives {login} its own mail location {mail!r}, which keeps its "
                    f"folders in the template's directory but names them {', '.join(differs)} "
                    f"(store.mail_location {self.location.text!r} does not), so ims-asm would "
                    f"not read its folders as Dovecot writes them"),
                                     SAME_DIR_HINT.format(login=login)))
                continue
            what = (f"its own mail location {mail!r}" if mail and mail != self.location.text
                    else f"the home {home}")
            out.append(Misplaced(login, ul.root, f"the userdb gives {login} {what}, so Dovecot "
                                                 f"keeps its mail outside the tree of "
                                                 f"{self.location.text!r}"))
        return out

    # -- enumeration ------------------------------------------------------------------
    def root_template(self) -> str:
        """The mail root as one path template (``~`` and ``%h`` replaced by the home
        template), the thing :meth:`logins` walks."""
        return self._full_template(self.location.root)

    def _full_template(self, root: str) -> str:
        """A path template of the location with ``~`` and ``%h`` replaced by the home template."""
        if root.startswith("~"):
            root = self.home_template + root[1:]       # needs_home() made sure it is set
        out = []
        for tok in _tokens(root):
            if isinstance(tok, _Var) and tok.key == "h":
                if tok.offset or tok.width or tok.modifiers:
                    raise LayoutError(f"mail_location uses {tok.raw}: only a plain %h can "
                                      f"be followed back to a login")
                out.append(self.home_template)
            elif isinstance(tok, _Var):
                out.append(tok.raw)
            else:
                out.append(tok.replace("%", "%%"))
        return "".join(out).rstrip("/") or "/"

    def logins(self, with_skipped: bool = False):
        """Every login that has mail in the store, sorted, as {login: UserLayout}.

        Walks the root template one path level at a time.  A level with ``%u``, ``%n``
        or ``%d`` (whole, maybe case-folded) tells a part of the login; other variable
        levels (hashes, substrings) are walked and then checked: a candidate counts only
        when :meth:`for_login` gives back exactly the directory it was found in and that
        directory holds mail (Maildir: INBOX ``cur/`` or a folder; dbox: ``mailboxes``).
        With ``with_skipped`` returns ``(logins, skipped)`` to report the directories
        that matched the template but belong to no login.
        """
        compiled = _compile_levels(self.root_template())
        if not any(kind == "rx" and spec[1] for kind, spec in compiled):
            raise LayoutError(f"mail_location {self.location.text!r}: no path level holds "
                              f"the login (%u, or %n with %d), so the logins under the "
                              f"store cannot be listed")
        found: dict[str, UserLayout] = {}
        skipped: list[Skipped] = []
        slashed: dict[str, str] = {}             # path -> login, of logins holding '/'
        shortened: set[str] = set()              # logins found by a reading with an empty level
        for path, caps, short in self._walk("", compiled, {}):
            # short: a variable level was taken as empty (%1.1n of a one-letter login,
            # %d of a login without a domain: Dovecot's path then has '//'); such a
            # reading counts only when it gives back a login living exactly there
            login = self._login_from(caps)
            if login is None:
                if not short:
                    skipped.append(Skipped(path, "the path does not tell the whole login"))
                continue
            try:
                ul = self.for_login(login)
            except LayoutError as e:
                if not short:
                    skipped.append(Skipped(path, str(e)))
                continue
            if os.path.normpath(ul.root) != os.path.normpath(path):
                if not short:
                    skipped.append(Skipped(path, f"{login} would live in {ul.root}"))
                continue
            if not self._has_mail(ul):
                skipped.append(Skipped(path, "no mailbox in it"))
                continue
            if "/" in login:
                if not short or path not in slashed:     # a reading with every level wins
                    slashed[path] = login
                continue
            if login in found:
                if not short:
                    shortened.discard(login)     # a reading with every level found it too
                continue
            found[login] = ul
            if short:
                shortened.add(login)
        # a reading with an empty level (%d of "example.com") whose directory holds another
        # login's root (cur@example.com's STORE/example.com/cur under maildir:STORE/%d/%n)
        # is that login's parent directory, no login of its own: its "INBOX" is the other
        # login's Maildir, never to be read (or given a uidlist) as messages
        held = [os.path.normpath(ul.root) for ul in found.values()]
        for login in shortened:
            top = os.path.normpath(found[login].root).rstrip("/") + "/"
            if any(r.startswith(top) for r in held):
                del found[login]
        _drop_aliases(found)
        roots = {os.path.realpath(ul.root) for ul in found.values()}
        for path, login in slashed.items():
            if os.path.realpath(path) in roots:
                continue         # another reading of a login found (example.com/alice, no domain)
            # a path level of /primary/USER/FOLDER: no user ID of ims-asm holds '/'
            skipped.append(Skipped(path, f"the mail of the login {login!r}, whose '/' no user "
                                         f"ID of ims-asm can hold", (
                "ims-asm cannot back it up or restore it: copy it with doveadm backup, or "
                "rename the login without '/' (Dovecot's default auth_username_chars refuses "
                "'/'; docs/dovecot.md)")))
        result = dict(sorted(found.items()))
        return (result, skipped) if with_skipped else result

    def _held_templates(self) -> list[str]:
        """The location's directory templates, each also with its fixed leading directory
        as its symlinks resolve (/var/vmail/%u with /var/vmail -> /srv/vmail)."""
        out = []
        for template in self.location.templates():
            try:
                full = self._full_template(template)
            except LayoutError:
                continue
            out.append(full)
            levels = full.split("/")[1:]
            n = next((i for i, lv in enumerate(levels) if "%" in lv), len(levels))
            fixed = "/" + "/".join(levels[:n])
            real = os.path.realpath(fixed)
            if real != os.path.normpath(fixed):
                out.append(real.rstrip("/") + "/" + "/".join(levels[n:]))
        return out

    def login_holding(self, path: str) -> str | None:
        """The login whose mail, index or control directories hold ``path`` (absolute,
        normalised; it need not exist), read from the path by the templates, the
        filesystem never walked: None when it is no login's (a backup directory beside
        the mail, a home outside its Maildir)."""
        levels = os.path.normpath(path).split("/")[1:]
        for template in self._held_templates():
            try:
                compiled = _compile_levels(template)
            except LayoutError:
                continue
            if len(compiled) > len(levels):
                continue
            caps: dict = {}
            for (kind, spec), level in zip(compiled, levels):
                if kind == "lit":
                    if spec != level:
                        break
                    continue
                m = spec[0].fullmatch(level)
                if m is None or any(caps.setdefault(key, m.group(g)) != m.group(g) for g, key in spec[1]):
                    break
            else:
                login = self._login_from(caps)
                try:
                    ul = self.for_login(login) if login is not None else None
                except LayoutError:
                    ul = None
                if ul is not None and any(d and _under(os.path.normpath(path), os.path.normpath(d))
                                          for d in (ul.root, ul.inbox_dir, ul.index_root, ul.control_root)):
                    return login
        return None

    def _walk(self, prefix: str, compiled: list, caps: dict,
              short: bool = False, depth: int = 0) -> Iterator[tuple[str, dict, bool]]:
        if not compiled:
            yield prefix or "/", caps, short
            return
        (kind, spec), rest = compiled[0], compiled[1:]
        if kind == "lit":
            path = f"{prefix}/{spec}"
            if os.path.isdir(path):
                yield from self._walk(path, rest, caps, short)
            return
        rx, groups, can_be_empty = spec
        empty = rx.fullmatch("") if can_be_empty else None
        if empty is not None and prefix:
            # the level may be empty for some logins: the path goes on from here
            new = dict(caps)
            if all(new.setdefault(key, empty.group(g)) == empty.group(g) for g, key in groups):
                yield from self._walk(prefix, rest, new, True)
        yield from self._walk_level(prefix, "", rx, groups, rest, caps, short, depth)

    #: How many directory levels one login part (%u, %n, %d) may span: Dovecot puts
    #: the '/' of a login such as x/y@example.com (auth_username_chars allowing it)
    #: into the path as it is, so x/y is two levels.
    _MAX_SPAN = 4

    def _walk_level(self, prefix: str, head: str, rx, groups, rest: list, caps: dict,
                    short: bool, depth: int) -> Iterator[tuple[str, dict, bool]]:
        base = f"{prefix}/{head}" if head else prefix
        for entry in _scandirs(base or "/", links=True):
            value_text = f"{head}/{entry}" if head else entry
            m = rx.fullmatch(value_text)
            if m is None:
                continue
            new = dict(caps)
            ok = True
            for g, key in groups:
                value = m.group(g)
                if key in new and new[key] != value:
                    ok = False
                    break
                new[key] = value
            if not ok:
                continue
            found = False
            for hit in self._walk(f"{prefix}/{value_text}", rest, new, short, depth):
                found = True
                yield hit
            # nothing of the template below it: a login part holding '/' spans more
            # levels (rest non-empty: a level left with nothing below it tells that)
            if not found and groups and rest and depth + value_text.count("/") < self._MAX_SPAN:
                yield from self._walk_level(prefix, value_text, rx, groups, rest, caps, short,
                                            depth)

    @staticmethod
    def _login_from(caps: dict) -> str | None:
        if "u" in caps:
            u = caps["u"]
            name, _, dom = u.partition("@")
            if ("n" in caps and caps["n"] != name) or ("d" in caps and caps["d"] != dom):
                return None
            return u
        if "n" in caps:
            if "@" in caps["n"]:
                return None
            d = caps.get("d")
            return caps["n"] + ("@" + d if d else "")
        return None

    def _has_mail(self, ul: UserLayout) -> bool:
        if not os.path.isdir(ul.root):
            return False
        if not ul.location.is_maildir:
            return os.path.isdir(os.path.join(ul.root, ul.location.mailboxdir.rstrip("/")))
        if os.path.isdir(os.path.join(ul.inbox_dir, "cur")):
            return True
        return bool(ul.folders())


# -- the running configuration ----------------------------------------------------------

def _doveconf(args: list[str], doveconf: str) -> str:
    import subprocess                   # here: a backup with mail_location given never runs it
    try:
        res = subprocess.run([doveconf, *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise LayoutError(f"{doveconf} is not installed: give mail_location explicitly "
                          f"(store.mail_location) or install dovecot-core") from None
    if res.returncode:
        err = (res.stderr.strip().splitlines() or ["failed"])[-1]
        raise LayoutError(f"doveconf {' '.join(args)}: {err}")
    return res.stdout


def parse_userdb_homes(text: str) -> list[str]:
    """Home templates of the ``userdb { }`` sections printed by ``doveconf userdb``.

    A static userdb gives ``home=`` in ``args``; other drivers in ``override_fields``
    (which wins) or ``default_fields``.
    """
    return parse_userdb_field(text, "home")


def _userdb_sections(text: str) -> list[dict[str, str]]:
    """The settings of each ``userdb { }`` section printed by ``doveconf userdb``."""
    out = []
    for body in re.findall(r"userdb\s*(?:\S+\s*)?\{(.*?)\n\}", text, re.S):
        fields = {}
        for line in body.splitlines():
            k, eq, v = line.strip().partition(" = ")
            if eq:
                fields[k] = v
        out.append(fields)
    return out


# userdb drivers that cannot list their users (no iterate_init in Dovecot 2.3's auth)
_UNLISTABLE_USERDBS = frozenset({"static", "prefetch", "checkpassword"})


def userdbs_listable(text: str) -> bool:
    """Whether a userdb listing (``LIST`` on auth-userdb, ``doveadm user '*'``) of the
    ``userdb { }`` sections printed by ``doveconf userdb`` can name anybody.  Dovecot
    lists the global userdbs only (those inside ``protocol lmtp { }``, such as the
    delivery hold of docs/dovecot.md, are neither listed nor printed), skips those
    that cannot list, and when no userdb can (a static userdb alone) it logs "Error:
    Trying to iterate users, but userdbs don't support it" for every listing: so none
    is asked for then.  A passwd-file with a %variable path cannot list either, and
    logs an error for each listing ("User iteration isn't currently supported with
    %variable paths")."""
    for fields in _userdb_sections(text):
        driver = fields.get("driver", "")
        if driver in _UNLISTABLE_USERDBS:
            continue
        if driver == "passwd-file" and _passwd_file_has_variables(fields.get("args", "")):
            continue
        return True
    return False


def _passwd_file_has_variables(args: str) -> bool:
    """A passwd-file userdb's path (its ``args`` after ``username_format=``) holds a
    %variable (db-passwd-file.c: a % not doubled)."""
    return "%" in _passwd_file_args(args)[1].replace("%%", "")


def parse_userdb_field(text: str, name: str) -> list[str]:
    """The values of the userdb field ``name`` (``home``, ``mail``) that the ``userdb { }``
    sections printed by ``doveconf userdb`` give every login they serve: ``override_fields``
    (which wins), a static userdb's ``args``, else ``default_fields``; one per section
    setting it, in order."""
    out = []
    for fields in _userdb_sections(text):
        for key in ("override_fields", "args" if fields.get("driver") == "static" else "",
                    "default_fields"):
            m = re.search(rf"(?:^|\s){name}=(\S+)", fields.get(key, ""))
            if key and m:
                out.append(m.group(1))
                break
    return out


@dataclasses.dataclass(frozen=True)
class Namespace:
    """One ``namespace NAME { }`` section as ``doveconf namespace`` prints it."""

    name: str
    type: str = "private"
    prefix: str = ""
    location: str = ""               # "": the namespace keeps its mail at mail_location
    inbox: bool = False
    disabled: bool = False
    separator: str = ""              # "": the mailbox list's own ('.' Maildir++, '/' dbox and fs)


def parse_namespaces(text: str) -> list[Namespace]:
    """The top-level ``namespace`` sections of ``doveconf namespace`` (their own settings
    only: nested ``mailbox { }`` sections are indented deeper and skipped)."""
    out = []
    for name, body in re.findall(r"^namespace\s+(\S+)\s*\{\n(.*?)^\}", text, re.S | re.M):
        fields = {}
        for line in body.splitlines():
            m = re.match(r"^  (\w+) = ?(.*)$", line)
            if m:
                fields[m.group(1)] = m.group(2).strip()
        out.append(Namespace(name, fields.get("type", "private"), fields.get("prefix", ""),
                             fields.get("location", ""), fields.get("inbox") == "yes",
                             fields.get("disabled") == "yes", fields.get("separator", "")))
    return out


def dsync_namespace_options(namespaces: list[Namespace]) -> list[str]:
    """doveadm ``-o`` settings that show the inbox namespace's folders with no prefix and
    separator '/' (Work/2024), whatever the site configured (Courier's INBOX. and '.', or
    no separator: '.' in a Maildir++ copy, '/' in dbox).  The dbox driver gives them to
    every doveadm it runs, on the account and on its Maildir copy, so that both name a
    folder alike: with ``prefix = INBOX.`` doveadm backup to a Maildir stops on "INBOX
    can't be deleted", and ``mailbox status '*'`` lists nothing.  Folders are stored
    under the same names either way (Dovecot keeps neither prefix nor separator on disk),
    and a folder name cannot hold the separator, so the mapping is one to one.  [] when
    nothing is to change, or when another namespace already has the empty prefix."""
    active = [ns for ns in namespaces if not ns.disabled]
    inbox = next((ns for ns in active if ns.inbox), None)
    if inbox is None or (inbox.prefix == "" and inbox.separator == "/"):
        return []
    if any(ns.prefix == "" for ns in active if ns is not inbox):
        return []
    return [f"namespace/{inbox.name}/prefix=", f"namespace/{inbox.name}/separator=/"]


def listescape_char(conf: str | None = None, doveconf: str = "doveconf") -> str:
    """The listescape plugin's escape character ("\\" unless ``plugin { listescape_char
    }`` says otherwise) when ``mail_plugins`` loads it, else ""; "" too when doveconf
    fails (doveadm fails then as well, and is named there)."""
    try:
        text = _doveconf([*(["-c", conf] if conf else []), "-h", "mail_plugins"], doveconf)
    except (LayoutError, OSError):
        return ""
    if "listescape" not in text.split():
        return ""
    try:
        char = _doveconf([*(["-c", conf] if conf else []), "-h", "plugin/listescape_char"],
                         doveconf).strip()
    except (LayoutError, OSError):
        char = ""
    return char[:1] or "\\"


def doveconf_namespaces(conf: str | None = None, doveconf: str = "doveconf") -> list[Namespace]:
    """The namespaces of a Dovecot configuration (``doveconf [-c CONF] namespace``)."""
    return parse_namespaces(_doveconf([*(["-c", conf] if conf else []), "namespace"], doveconf))


def namespace_location(mail_location: str, namespaces: list[Namespace], conf: str | None = None) -> str:
    """The one location every namespace of the configuration keeps its mail at: the inbox
    namespace's own ``location`` when it has one (Dovecot uses it, not mail_location),
    else mail_location.  A namespace keeping mail anywhere else (a second private or a
    public namespace with its own location) is refused by name: a backup of the one
    location would silently leave its folders out.  Shared namespaces are other users'
    mail, backed up under those users; disabled ones hold nothing; a virtual-plugin
    namespace (``location = virtual:...``) holds views of folders backed up, no mail."""
    active = [ns for ns in namespaces if not ns.disabled and ns.type != "shared"
              and not (ns.location.startswith("virtual:") and not ns.inbox)]
    inbox = next((ns for ns in active if ns.inbox and ns.location), None)
    location = inbox.location if inbox is not None else mail_location
    for ns in active:
        own = ns.location or mail_location
        if own != location:
            raise LayoutError(
                f"{conf or 'the Dovecot configuration'}: namespace {ns.name} ({ns.type}, prefix "
                f"{ns.prefix!r}) keeps its mail "
                f"{f'at {own!r}' if own else 'where Dovecot guesses (no location, mail_location empty)'}"
                f", apart from {location!r} that "
                f"ims-asm backs up, so its folders would be in no backup: back that tree up "
                f"another way and set store.mail_location to {location!r} to back up the rest")
    return location


def _tabunescape(b: bytes) -> str:
    """Dovecot's str_tabunescape(): \\001 followed by 0 1 t r n stands for NUL \\001 TAB CR LF."""
    if b"\x01" in b:
        b = re.sub(rb"\x01(.)", lambda m: {b"0": b"\0", b"1": b"\x01", b"t": b"\t",
                                           b"r": b"\r", b"n": b"\n"}.get(m.group(1), m.group(1)),
                   b, flags=re.S)
    return b.decode("utf-8", "surrogateescape")


def _tabescape(s: str) -> bytes:
    b = s.encode("utf-8", "surrogateescape")
    for c, e in ((b"\x01", b"\x011"), (b"\0", b"\x010"), (b"\t", b"\x01t"), (b"\r", b"\x01r"),
                 (b"\n", b"\x01n")):
        b = b.replace(c, e)
    return b


USERDB_SERVICE = "imap"       # the lookups are made as IMAP's (a userdb may answer per service)
_USERDB_BATCH = 500           # lookups in flight at once: the replies never fill the socket


def userdb_users(socket_path: str, service: str = USERDB_SERVICE,
                 timeout: float = 120.0) -> tuple[dict[str, dict[str, str]], bool] | None:
    """Every login the running Dovecot's userdbs list, with the fields a lookup returns
    (``home``, ``mail``, ...), over its ``auth-userdb`` socket (the auth-master protocol
    ``doveadm user`` speaks: ``LIST`` then pipelined ``USER`` lookups, one connection:
    about 70 ms for 5,000 passwd-file logins, where one ``doveadm user`` per login takes
    15 ms each).  Returns ``(users, complete)``; ``complete`` is False when a userdb
    could not list its users (a static userdb lists none; a passwd-file with a
    %variable path fails its listing, the other userdbs are still listed; see
    :func:`userdbs_listable`: :func:`from_doveconf` gives no socket when none can).  None when the socket cannot be reached (Dovecot
    is not running, or this user may not connect)."""
    import socket
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
        except OSError:
            return None
        f = sock.makefile("rwb")
        f.write(b"VERSION\t1\t0\n")
        f.write(b"LIST\t1\tservice=" + _tabescape(service) + b"\n")
        f.flush()
        logins: list[str] = []
        complete = True
        while True:
            line = f.readline()
            if not line.endswith(b"\n"):
                raise OSError("the auth server closed the connection")
            parts = line.rstrip(b"\n").split(b"\t")
            if parts[0] == b"LIST" and len(parts) > 2 and parts[1] == b"1":
                logins.append(_tabunescape(parts[2]))
            elif parts[0] == b"DONE" and parts[1:2] == [b"1"]:
                complete = b"fail" not in parts[2:]
                break
        users: dict[str, dict[str, str]] = {}
        todo = list(dict.fromkeys(logins))       # a login in two userdbs is listed twice
        for start in range(0, len(todo), _USERDB_BATCH):
            batch = todo[start:start + _USERDB_BATCH]
            for n, login in enumerate(batch, start + 2):
                f.write(b"USER\t%d\t%s\tservice=%s\n" % (n, _tabescape(login), _tabescape(service)))
            f.flush()
            pending = len(batch)
            while pending:
                line = f.readline()
                if not line.endswith(b"\n"):
                    raise OSError("the auth server closed the connection")
                parts = line.rstrip(b"\n").split(b"\t")
                if parts[0] not in (b"USER", b"NOTFOUND", b"FAIL"):
                    continue                     # VERSION, SPID
                pending -= 1
                if parts[0] == b"USER" and len(parts) > 2:
                    fields = {}
                    for kv in parts[3:]:
                        k, _, v = _tabunescape(kv).partition("=")
                        fields[k] = v
                    users[_tabunescape(parts[2])] = fields
                elif parts[0] == b"FAIL":
                    complete = False             # a lookup failed: that login is unknown
        return users, complete
    except (OSError, ValueError):
        return None
    finally:
        sock.close()


def userdb_from_files(text: str) -> tuple[dict[str, dict[str, str]] | None, str]:
    """What :func:`userdb_users` gets from the running Dovecot, read from the userdbs'
    own files when Dovecot is not running (a cold backup, a restore before Dovecot is
    started again): every login the ``userdb { }`` sections ``text`` list, with the
    fields a lookup returns (``home``, ``mail``, ...).  As Dovecot 2.3's auth does
    (db-passwd-file.c, userdb-passwd-file.c; compared with ``doveadm user`` line shape
    by line shape):

    * a listing names the lines of each passwd-file of a fixed path (``%%`` in it is
      ``%``); a passwd-file whose path holds a %variable lists nobody, but is asked in
      a lookup (its path expanded for the login);
    * a line is a login only with a valid uid and gid when it has a uid (a number above
      0 or a system user; an empty uid and gid leave them to the fields), in lower case
      (auth_username_format's default %Lu), no space around it;
    * a lookup asks the userdbs in order: ``default_fields`` first, then the line's home
      field (as written) and ``userdb_`` extra fields (or, in the old format, the mail
      location after an empty ninth field), each expanded with the home known so far,
      then ``override_fields``; ``result_success`` (default return-ok) ends it or
      (continue, continue-ok) goes on to the next userdb, whose fields are added over;
      ``result_failure`` (default continue) likewise; a static userdb knows everybody;
    * the system ``passwd`` userdb is read with pwd (its listing's first_valid_uid is
      not applied).

    ``(None, why)`` when a userdb that lists its logins keeps them where only Dovecot's
    auth can ask (sql, ldap, lua, dict, ...), or a file it needs cannot be read."""
    sections = _userdb_sections(text)
    cache: dict[str, dict] = {}
    listed: list[str] = []
    for fields in sections:
        driver = fields.get("driver", "")
        if driver == "passwd-file":
            if _passwd_file_has_variables(fields.get("args", "")):
                continue                    # lists nobody (Dovecot logs an error)
            path = _passwd_file_args(fields.get("args", ""))[1]
            try:
                listed += _passwd_file(path.replace("%%", "%"), cache)
            except OSError as exc:
                return None, f"cannot read the userdb passwd-file {path}: {exc.strerror or exc}"
        elif driver == "passwd":
            import pwd
            listed += [pw.pw_name for pw in pwd.getpwall() if pw.pw_uid != 0]
        elif driver not in _UNLISTABLE_USERDBS:
            return None, f"the {driver or 'unnamed'} userdb can only be asked through Dovecot's auth service"
    users: dict[str, dict[str, str]] = {}
    for login in dict.fromkeys(listed):
        try:
            got = _userdb_lookup(sections, login, cache)
        except OSError as exc:
            return None, f"cannot read a userdb passwd-file: {exc.strerror or exc}"
        if got is not None:
            users[login] = got
    return users, ""


def _passwd_file_args(args: str) -> tuple[str, str]:
    """(username_format, path) of a passwd-file userdb's ``args``."""
    fmt = "%u"
    if args.startswith("username_format="):
        fmt, _, args = args[len("username_format="):].partition(" ")
    return fmt, args.strip()


def _passwd_file(path: str, cache: dict) -> dict[str, tuple[str, list[str]]]:
    """The logins of a passwd-file (_read_passwd_file), read once per path."""
    got = cache.get(path)
    if got is None:
        got = cache[path] = _read_passwd_file(path)
    return got


def _expand_value(value: str, login: str, home: str | None) -> str:
    try:
        return expand(value, login, home, what="a userdb field")
    except LayoutError:
        return value                    # a %variable ims-asm does not know: as written


def _userdb_lookup(sections: list, login: str, cache: dict) -> dict[str, str] | None:
    """The fields a userdb lookup of ``login`` returns (see :func:`userdb_from_files`),
    None when no userdb knows it."""
    import pwd
    result: dict[str, str] = {}
    found = False
    for fields in sections:
        driver = fields.get("driver", "")
        got: dict[str, str] | None = None
        # default_fields: set before the lookup, what it returns goes over them
        defaults = {k: _expand_value(v, login, result.get("home"))
                    for k, v in _field_words(fields.get("default_fields", "")).items()}
        known_home = defaults.get("home") or result.get("home")
        if driver == "static":
            got = {}
            for k, v in _field_words(fields.get("args", "")).items():
                got[k] = _expand_value(v, login, got.get("home") or known_home)
        elif driver == "passwd-file":
            fmt, path = _passwd_file_args(fields.get("args", ""))
            if _passwd_file_has_variables(fields.get("args", "")):
                try:
                    path = expand(path, login, None, what="a passwd-file path")
                except LayoutError:
                    continue
                entries = _passwd_file(path, cache) if os.path.exists(path) else {}
            else:
                entries = _passwd_file(path.replace("%%", "%"), cache)
            try:
                key = expand(fmt, login, None, what="username_format")
            except LayoutError:
                key = login
            entry = entries.get(key)
            if entry is not None:
                home, extra = entry
                got = {"home": home} if home else {}
                for word in extra:
                    if word.startswith("userdb_"):
                        k, _, v = word[7:].partition("=")
                        # (%h: the line's own home field only, "" without one: Dovecot
                        # 2.3 expands the extra fields before default_fields apply)
                        got[k] = _expand_value(v, login, got.get("home") or "")
        elif driver == "passwd":
            try:
                pw = pwd.getpwnam(login)
            except KeyError:
                pw = None
            if pw is not None and pw.pw_uid != 0:
                got = {"home": pw.pw_dir, "uid": str(pw.pw_uid), "gid": str(pw.pw_gid)}
        if got is None:
            if fields.get("result_failure", "continue").startswith("return"):
                break
            continue
        for k, v in defaults.items():
            if k not in result:
                result[k] = v
        result.update(got)
        for k, v in _field_words(fields.get("override_fields", "")).items():
            result[k] = _expand_value(v, login, result.get("home"))
        found = True
        success = fields.get("result_success", "return-ok")
        if success == "return-fail":
            return None
        if success.startswith("return"):
            break
    return result if found else None


def _field_words(text: str) -> dict[str, str]:
    """{key: value} of a userdb's ``args``/``default_fields``/``override_fields``."""
    out = {}
    for word in text.split():
        k, eq, v = word.partition("=")
        if eq:
            out[k] = v
    return out


def _id_ok(value: str, kind: str) -> bool:
    """A passwd-file uid or gid Dovecot takes: a number above 0, or a system user
    (group) name, as written (no blanks around it)."""
    return value == value.strip() and (system_id(value, kind) or 0) > 0


def system_id(value: str, kind: str) -> int | None:
    """A userdb's or mail_uid's ``uid``/``gid`` (``kind``) as a number: a number, or a
    system user (group) name; None for "" or a name the system does not know."""
    value = value.strip()
    if value.isdigit():
        return int(value)
    if not value:
        return None
    try:
        if kind == "uid":
            import pwd
            return pwd.getpwnam(value).pw_uid
        import grp
        return grp.getgrnam(value).gr_gid
    except KeyError:
        return None


def _read_passwd_file(path: str) -> dict[str, tuple[str, list[str]]]:
    """{name: (its home field, its extra fields)} of the lines of a passwd-file that a
    userdb serves (db-passwd-file.c, Dovecot 2.3): ``#`` comments, lines without a
    password field and lines of a name only skipped; a uid, when given, a number above
    0 or a system user, and then a gid too (0 or unknown: no login); the name in lower
    case without surrounding space (auth_username_format %Lu finds no other); the home
    field as written; the extra fields the rest of the line after the seventh ':',
    split at spaces, or (the old format: that field empty) ``userdb_mail=`` and what
    follows it, after ``userdb_uid=``/``userdb_gid=`` of the uid and gid columns when
    given.  A name given twice: its first line."""
    out: dict[str, tuple[str, list[str]]] = {}
    with open(path, "rb") as f:
        for raw in f:
            line = raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
            if not line or line[0] in ":#":
                continue
            parts = line.split(":")
            name = parts[0]
            if len(parts) < 3 or name != name.strip() or name != name.lower():
                continue
            uid, gid = parts[2], (parts[3] if len(parts) > 3 else "")
            if uid and (not _id_ok(uid, "uid") or not gid or not _id_ok(gid, "gid")):
                continue
            if not uid and gid and not _id_ok(gid, "gid"):
                continue
            home = parts[5] if len(parts) > 5 else ""
            rest = parts[7:]
            if rest and rest[0] == "":
                extra = [f"userdb_mail={':'.join(rest[1:])}"] if len(rest) > 1 and rest[1] else []
            else:
                extra = [w for w in ":".join(rest).split(" ") if w]    # (at spaces only)
            # the uid and gid columns, as Dovecot returns them (under the extra fields):
            # who it runs the login as (MaildirStore.check_writer, _login_owner)
            ids = [f"userdb_{k}={v}" for k, v in (("uid", uid), ("gid", gid)) if v]
            out.setdefault(name, (home, ids + extra))
    return out


#: what :func:`from_doveconf` reads of a configuration, in one run of doveconf (each run
#: parses the whole configuration again: five of them cost 20 ms of CPU at every start of
#: a command on a store with store.mail_location = doveconf)
_LAYOUT_SETTINGS = ("mail_location", "mail_home", "base_dir", "mail_uid", "mail_gid")
_LAYOUT_SECTIONS = ("userdb", "namespace")


def _doveconf_all(base: list[str], doveconf: str, names=_LAYOUT_SETTINGS + _LAYOUT_SECTIONS
                  ) -> tuple[dict[str, str], dict[str, str]]:
    """``doveconf [-c CONF] NAME...`` (default: mail_location mail_home base_dir userdb
    namespace), split into the settings (name -> value, stripped) and the text of each
    kind of section (all its top-level ``userdb { }`` sections, as ``doveconf userdb``
    alone prints them; the same for ``namespace``).  doveconf prints a top-level section
    from its unindented header line to an unindented ``}``, and a setting as ``name =
    value``."""
    text = _doveconf([*base, *names], doveconf)
    settings: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    block: list[str] | None = None
    for line in text.splitlines():
        if block is not None:
            block.append(line)
            if line == "}":
                block = None
        elif (m := re.match(r"(\w+) =(.*)$", line)):
            settings[m.group(1)] = m.group(2).strip()
        elif line.rstrip().endswith("{"):
            block = sections.setdefault(line.split(None, 1)[0], [])
            block.append(line)
    return settings, {k: "\n".join(v) + "\n" for k, v in sections.items()}


def from_doveconf(conf: str | None = None, doveconf: str = "doveconf") -> StoreLayout:
    """The StoreLayout of a Dovecot configuration (``doveconf [-c CONF]``): mail_location,
    or the inbox namespace's own location (see :func:`namespace_location`)."""
    base = ["-c", conf] if conf else []
    settings, sections = _doveconf_all(base, doveconf)
    location = settings.get("mail_location", "")
    userdbs = sections.get("userdb", "")
    # a userdb's mail= (static args, override_fields, default_fields) replaces
    # mail_location for every login it serves: that is where Dovecot keeps their mail
    mails = list(dict.fromkeys(parse_userdb_field(userdbs, "mail")))
    if len(mails) > 1:
        raise LayoutError(
            f"{conf or 'the Dovecot configuration'}: its userdbs give their logins different "
            f"mail locations ({', '.join(repr(m) for m in mails)}), and ims-asm backs up one: "
            f"set store.mail_location to one of them in each IMS_HOME")
    if mails:
        location = mails[0]
    location = namespace_location(location, parse_namespaces(sections.get("namespace", "")), conf)
    loc = parse_mail_location(location)
    home = None
    if loc.needs_home():
        # a home the userdb returns wins; mail_home is the default for users without one
        homes = parse_userdb_homes(userdbs)
        home = homes[0] if homes else (settings.get("mail_home") or None)
        if home is None:
            raise LayoutError(
                f"mail_location {location!r} uses ~ but no userdb in "
                f"{conf or 'the Dovecot configuration'} sets home= (static args, "
                f"default_fields or override_fields) and mail_home is empty: give the "
                f"home template explicitly")
    sl = StoreLayout(loc, home)
    sl.mail_uid, sl.mail_gid = settings.get("mail_uid", ""), settings.get("mail_gid", "")
    # a uid= every login of a userdb gets (a static userdb's args, default_fields,
    # override_fields) wins over mail_uid, as in Dovecot
    sl.userdb_uid = next(iter(parse_userdb_field(userdbs, "uid")), "")
    sl.userdb_gid = next(iter(parse_userdb_field(userdbs, "gid")), "")
    base_dir = settings.get("base_dir", "")
    if base_dir and userdbs_listable(userdbs):
        sl.userdb_socket = os.path.join(base_dir, "auth-userdb")
        sl.userdb_text = userdbs
    return sl
