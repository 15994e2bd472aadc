"""MaildirStore: the logical store view over Dovecot Maildir++ partitions (the package
docstring describes the layout)."""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import re
import shlex
import stat as stat_mod
import struct
import sys
import threading
import time
import atexit
from typing import BinaryIO, Iterable, Iterator

from asm import atend
from asm.config import Config, make_dirs
from asm.lazy import module as _lazy_module
from asm.locks import pid_alive
from asm.store.base import (
    BadName, FolderExists, LockTimeout, FolderInfo, FolderSnapshot, MessageGone, StoreFull,
    LinkInStore, MessageInfo, NoSuchFolder, NoSuchPartition, NoSuchUser, RENAME_RETRIES, Store, StoreError, UidInUse, UidPassed,
    NotNumbered, Unlisted, UserExists,
    check_folder_levels, check_folder_name, check_user_level, check_user_name, compression_of, copy_to_fd, holder_gone, message_info, os_store_error,
    nofollow_opener, open_nofollow, open_stored_path, settled, split_flags, stat_part, store_os_errors, this_holder, write_all,
)
from asm.store.maildir import dotlock, names as mdnames, subscriptions, uidlist as uidlist_mod
from asm.store.maildir.dotlock import LOCK_SUFFIX, Unlocked
from asm.store.maildir.names import (
    KEYWORDS, SIZE_RE, dovecot_trashed, folder_dirname, folder_from_dirname, split_name, stored_from_name,
)
from asm.store.maildir.subscriptions import SUBSCRIPTIONS
from asm.store.maildir.uidlist import (
    UIDLIST, Uidlist, guid_of, open_uidlist, pop3_of, read_uidlist, read_uidlist_header,
)
from asm.trees import remove_tree

layout_mod = _lazy_module("asm.store.layout")     # only a store.mail_location needs it (startup time)
shutil = _lazy_module("shutil")                    # removing trees, copying files (startup time)
rd = _lazy_module("asm.reconstruct.dovecot")       # doveadm dump, after a killed writer only

CHUNK = 1 << 20
HOLD_MARKER = ".ims-hold"
# our message base names (_new_base): <secs>.M<usecs>P<pid>Q<seq>R<random>.<host>
_OUR_BASE = re.compile(r"^\d+\.M\d+P(\d+)Q\d+R([0-9a-f]{8})\.(.+)$")
# temporaries of _write_file: <name>.<pid>.<thread>.tmp
_WRITE_TMP = re.compile(r"^.+\.(\d+)\.\d+\.tmp$")
QUEUE_DIR = ".ims-queue"
DELETING = ".ims-deleting"          # a folder's cur/ aside, left by a deletion of an older version
RESTORE_MARK = "ims-restoring"        # ims-restoring.<mark>: a restore under way (mark_restoring)
STAGED_DIR = "ims-mkdir"             # a folder directory before _mkdir_staged names it
# directories of ours that Dovecot never lists, <kind>.<pid>.<random> (_staged_name): a
# folder directory being made (mkdir), removed (deleting), a cur/ or tmp/ to be named so
_STAGED_RE = re.compile(r"^\.?ims-(?:mkdir|deleting|cur|tmp|index)\.(\d+)\.[0-9a-f]{8}$")
PRE_CUR = ".ims-cur"                # a new folder's cur/, left by an older version
NEW_PREFIX = ".ims-new-Maildir."     # a Maildir being built by create_user
DELETED_PREFIX = ".ims-deleted-Maildir."   # a Maildir delete_user removes: <hex login>.<pid>.<random>
_LAST_UIDVALIDITY = [0]
UIDVALIDITY_FILE = "dovecot-uidvalidity"
# the acl plugin's per-folder file (acl = vfile): in the folder's mail directory, in every
# Maildir layout, CONTROL= or not (Dovecot 2.3 keeps it in the control directory only
# for mbox); docs/dovecot.md, "Access control lists"
ACL_FILE = "dovecot-acl"
ACL_LIST_FILE = "dovecot-acl-list"  # in the mail root: the login's folders that have one
ACL_MAX_BYTES = 65536               # what an archive holds (asm/archive/spec.py ACL_MAX_BYTES)
_VSIZE_RE = re.compile(r",W=(\d+)")
_GUID_OK = re.compile(r"[\x21-\x39\x3b-\x7e]{1,255}\Z")   # one uidlist field: no space or ':'
_UIDL_OK = re.compile(r"[\x21-\x7e]{1,255}\Z")           # a P field's value: no space
# a base name to give a file: a uidlist field's characters but '/', no leading '.'
BASE_OK = re.compile(r"[\x21-\x2d\x30-\x39\x3b-\x7e][\x21-\x2e\x30-\x39\x3b-\x7e]{0,254}\Z")
INDEX_FILES = ("dovecot.index", "dovecot.index.log", "dovecot.index.log.2", "dovecot.index.cache")
# The header of Dovecot's transaction log (lib-index/mail-transaction-log.h, format 1.3):
# major, minor, hdr_size, indexid, file_seq, prev_file_seq, prev_file_offset,
# create_stamp, initial_modseq, compat_flags (1: little-endian), unused.  A folder whose
# index Dovecot builds again starts its mod-sequences at initial_modseq (_new_index).
_LOG_HEADER = struct.Struct("=BBHIIIIIQB3xI")
LIST_INDEX_FILES = ("dovecot.list.index", "dovecot.list.index.log", "dovecot.list.index.log.2")
MAILDIRSIZE = "maildirsize"           # Maildir++ quota (Dovecot's quota = maildir)
MAILDIRSIZE_MAX = 5120                # bigger: recalculated (Maildir++, quota-maildir.c)


# index directory -> (UIDVALIDITY, where its index files are kept) of a folder this
# process removed there (MaildirStore._keep_index: a restore opens a store per archive
# of a chain, the next link's may make it again); what is not taken back goes at the
# command's end (asm.atend), or at exit
_KEPT_INDEX: dict[str, tuple[int, str]] = {}
_KEPT_LOCK = threading.Lock()


def _rename_in(tmp: str, path: str) -> None:
    """The directory ``tmp`` renamed to ``path``; FileExistsError when ``path`` is there
    (made meanwhile, by a session or another run: empty, rename would replace it)."""
    if os.path.lexists(path):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
    try:
        os.rename(tmp, path)
    except OSError as exc:                  # (one made meanwhile, holding files)
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path) from None


@atexit.register
def _drop_kept() -> None:
    for _uv, where in list(_KEPT_INDEX.values()):
        remove_tree(where)
    _KEPT_INDEX.clear()


def _hex_login(user: str) -> str:
    """A login spelled in a file name of one level, unambiguously (delete_user's aside)."""
    return os.fsencode(user).hex()


def _base_tag(base: str) -> str:
    """8 hex digits naming a base name: the R field of the tmp/ file of a message that
    will have that base name (_new_base)."""
    return hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _ends_with_lf(fd: int, size: int) -> bool:
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"


# -- where Dovecot keeps things: store.mail_location ------------------------------

def open_layout(config: Config, dbox: bool = False) -> "layout_mod.StoreLayout | None":
    """The StoreLayout of ``store.mail_location`` (``doveconf``: of the running Dovecot,
    ``doveconf -c dovecot.config``), or None for the classic <partition>/<user>/Maildir."""
    text = config.get("store.mail_location")
    if not text:
        return None
    home = config.get("store.mail_home")
    if text == "doveconf":
        conf = config.get("dovecot.config")
        if conf and not os.path.exists(conf):
            # (doveconf's own "Fatal: open(...) failed" said nothing of what to do; after a
            # total loss this is the step the runbook does before the restore)
            raise layout_mod.LayoutError(
                f"dovecot.config {conf} does not exist, and store.mail_location = doveconf reads "
                f"the store's layout from it: install or restore Dovecot's configuration there "
                f"first (docs/disaster-recovery.md, step 2), or msconfig set dovecot.config to "
                f"where it is")
        sl = layout_mod.from_doveconf(conf)
        if home:
            socket, userdbs = sl.userdb_socket, sl.userdb_text
            sl = layout_mod.StoreLayout(sl.location, home)
            sl.userdb_socket, sl.userdb_text = socket, userdbs
    else:
        sl = layout_mod.StoreLayout(text, home)
    loc = sl.location
    if not loc.is_maildir and not dbox:
        raise layout_mod.LayoutError(
            f"mail_location {loc.text!r}: the maildir driver reads maildir: locations "
            f"({loc.format} is not supported)")
    check_driver_location(loc)
    sl.root_template()                       # a %h it cannot follow back is refused now
    return sl


def check_driver_location(loc: "layout_mod.MailLocation") -> None:
    """LayoutError for what the layout module reads but the maildir and dbox drivers do
    not follow (msconfig refuses it when store.mail_location is set, a command when it
    comes from doveconf): a SUBSCRIPTIONS= file name, the subscriptions file being read
    and written under its default name everywhere."""
    if loc.subscriptions != layout_mod.DEFAULT_SUBSCRIPTIONS:
        raise layout_mod.LayoutError(
            f"mail_location {loc.text!r}: SUBSCRIPTIONS= is not supported by the maildir "
            f"driver (it reads and writes the file 'subscriptions'): drop the key, after "
            f"renaming each user's {loc.subscriptions} to subscriptions (docs/dovecot.md)")


_LINK_WHY = ("it is a symbolic link to a directory, which ims-asm never follows in a mail "
             "directory (it could name any directory on the system)")
_LINK_HINT = ("make it a directory of the Maildir (move the mail it names into it), or leave "
              "the folder out (store.backupexclude)")


def _link_below(root: str, d: str) -> str | None:
    """The first level of ``d`` below ``root`` (``d`` itself included) that is a
    symbolic link, or None.  ``root`` itself, and a ``d`` outside it (INBOX= elsewhere), are
    the administrator's paths: not looked at."""
    if not d.startswith(root + "/"):
        return None
    p = root
    for level in d[len(root) + 1:].split("/"):
        p = f"{p}/{level}"
        if os.path.islink(p):
            return p
    return None


class MisplacedLogin(StoreError):
    """A login whose userdb mail=/home= puts its mail outside store.mail_location's
    template: reading or writing it at the template's place would be the wrong mail."""


class NotDovecotsOwner(StoreError):
    """A login Dovecot runs as another uid than the one a restore would give its files:
    Dovecot could not open what the restore wrote."""


class UserdbUnread(StoreError):
    """Dovecot is not running and its userdb can only be asked through it (sql, ldap):
    which logins it keeps apart from the template (their own mail=/home=) is not known."""


MISPLACED_HINT = ("give this login an IMS_HOME of its own whose store.mail_location is that "
                  "location (it backs the login up and restores it there), or move its mail "
                  "where the template puts it (docs/dovecot.md)")


def misplaced_logins(layout: "layout_mod.StoreLayout", partition: str = "primary",
                     everyone: bool = False) -> list[Unlisted]:
    """The logins the running Dovecot's userdb keeps apart from the layout's template
    (their own ``mail=`` or ``home=``) and that have mail there, as Unlisted users: they
    are in no backup (``everyone``: also those without mail yet).  Asked once per layout,
    only when the layout came from ``doveconf``: of Dovecot's auth-userdb socket, else
    (Dovecot stopped) of the userdbs' passwd-files; StoreError (without ``everyone``)
    when neither can be read (an sql or ldap userdb with Dovecot stopped): a backup
    names that, it cannot say its scope is whole (see docs/dovecot.md)."""
    got = [u for has_mail, u in _misplaced(layout, partition).values() if everyone or has_mail]
    why = getattr(layout, "_userdb_unread", None)
    if why is not None and not everyone:
        raise UserdbUnread(why)
    return got


def record_fields(base: str, guid: str | None, uidl: str | None, order: int | None) -> str:
    """A uidlist record's extension fields for a message whose file has base name
    ``base``: G (its GUID, where it is not the base name, which Dovecot takes for the
    GUID without one), then P and O (:func:`pop3_fields`); each only when Dovecot can
    read it back ("" for none).  A restore and reconstruct write the same."""
    return " ".join(f for f in (
        f"G{guid}" if guid and guid != base and _GUID_OK.match(guid) else "",
        pop3_fields(uidl, order)) if f)


def pop3_fields(uidl: str | None, order: int | None) -> str:
    """A uidlist record's P (POP3 UIDL) and O (POP3 order) fields for these values, each
    only when Dovecot can read it back ("" for none)."""
    uidl, order = _kept_pop3(uidl, order)
    return " ".join(f for f in (f"P{uidl}" if uidl else "", f"O{order}" if order else "") if f)


def _kept_pop3(uidl: str | None, order: int | None) -> tuple[str, int]:
    """(POP3 UIDL, order) as a uidlist record keeps them: each only when Dovecot can read
    it back ("" and 0 for none)."""
    return (uidl if uidl and _UIDL_OK.match(uidl) else "",
            order if type(order) is int and 0 < order < 1 << 32 else 0)


def _base_fits(name: str | None, letters: str) -> bool:
    """Whether a message file can have the base name ``name`` with these flag letters: a
    Maildir base name, short enough for its ":2," and letters."""
    return bool(name) and BASE_OK.match(name) is not None and len(name) + 3 + len(letters) <= 255


def _sizes_match_or_none(base: str, m: MessageInfo) -> bool:
    """:func:`sizes_match` of message ``m``'s file; False when it cannot be read (gone
    since it was listed: its bytes are compared, and named, apart)."""
    try:
        return sizes_match(base, m.size, m.path)
    except OSError:
        return False


def sizes_match(base: str, size: int, path: str) -> bool:
    """Whether the sizes a Maildir base name states are those of the file at ``path``
    (``size`` bytes): ``S=`` its size, ``W=`` its size with every line end a CRLF.
    Dovecot trusts both: a wrong S= fails FETCH ("Internal error"), a wrong W= serves
    the message cut to W= bytes."""
    m = SIZE_RE.search(base)
    if m is not None and int(m.group(1)) != size:
        return False
    w = _VSIZE_RE.search(base)
    if w is None:
        return True
    bare, last = 0, b""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            bare += chunk.count(b"\n") - chunk.count(b"\r\n") - (last == b"\r" and chunk[:1] == b"\n")
            last = chunk[-1:]
    return int(w.group(1)) == size + bare


def _misplaced(layout: "layout_mod.StoreLayout", partition: str = "primary") -> dict:
    """{login: (has mail there, Unlisted)} of misplaced_logins, asked once per layout."""
    got = getattr(layout, "_misplaced", None)
    if got is None:
        got = {}
        if layout.userdb_socket:
            users = layout_mod.userdb_users(layout.userdb_socket)
            if users is None:
                # Dovecot is not running: its userdbs' own files say the same
                users, why = layout_mod.userdb_from_files(layout.userdb_text)
                if users is None:
                    layout._userdb_unread = (
                        f"Dovecot's auth service does not answer ({layout.userdb_socket}) and {why}, "
                        f"so a login whose userdb entry gives it its own mail= or home= cannot be "
                        f"found; start Dovecot and run the command again")
                else:
                    users = (users, True)
            if users is not None:
                layout._userdb_fields = users[0]     # (the uid/gid: MaildirStore.check_writer)
                with_mail = {m.login for m in layout.misplaced(users[0])}
                got = {m.login: (m.login in with_mail, Unlisted("user", partition, m.login, None, m.path,
                                                                m.reason, m.hint or MISPLACED_HINT))
                       for m in layout.misplaced(users[0], everyone=True)}
        layout._misplaced = got
    return got


def _asks_dovecot(layout) -> bool:
    """The layout came from Dovecot's configuration with something that says whom it
    runs a login as (a userdb to ask, a userdb's uid= for all, mail_uid)."""
    return layout is not None and bool(layout.userdb_socket or layout.userdb_uid or layout.mail_uid)


def _login_fields(layout, login: str) -> dict:
    """The fields the userdb gives ``login`` (uid, gid, ...), asked once per layout with
    the misplaced logins (:func:`_misplaced`); {} when it gives none or was not asked."""
    _misplaced(layout)
    return (getattr(layout, "_userdb_fields", None) or {}).get(login) or {}


def expanded_location(layout: "layout_mod.StoreLayout", login: str) -> str:
    """The login's mail_location with every variable and ~ expanded: what doveadm is
    given with ``-o mail_location=`` to work on one account without a userdb lookup."""
    ul = layout.for_login(login)
    loc = layout.location
    text = f"{loc.format}:{ul.root}"
    if loc.index is not None:
        text += f":INDEX={ul.index_root}" if ul.index_root else ":INDEX=MEMORY"
    if loc.control is not None:
        text += f":CONTROL={ul.control_root}"
    if loc.inbox is not None:
        text += f":INBOX={ul.inbox_dir}"
    for key, value in loc.options:
        if key not in ("INDEX", "CONTROL", "INBOX"):
            text += f":{key}={layout_mod.expand(value, login, ul.home)}" if value else f":{key}"
    return text


def fixed_prefix(template: str) -> str:
    """The directory a path template starts with before its first variable level."""
    out = []
    for level in template.split("/")[1:]:
        if "%" in level:
            break
        out.append(level)
    return os.path.normpath("/" + "/".join(out))


def layout_partition_path(config: Config) -> str | None:
    """With store.mail_location set, the directory of the store's one partition,
    ``primary``: the one its mail root template starts with (what the store reads, and
    a file-level backup must save); None without a layout.  partition:primary.path is
    not used then.  Raises LayoutError when the location cannot be read (doveconf)."""
    if not config.get("store.mail_location"):
        return None
    return fixed_prefix(open_layout(config, dbox=True).root_template())


def _fingerprint_stats(d: str, ctl: str) -> list:
    """[uidlist, cur/, new/, tmp/, dovecot-keywords, dovecot-acl] as (inode, size, mtime,
    ctime) lists, [] for a missing keywords or ACL file.  A Maildir changes only by names
    in cur/ and new/ (deliveries pass through tmp/), by dovecot-uidlist (rewritten or
    appended to) and by its keyword table: the same lists mean the same messages, UIDs
    and flags; and the same ACL file the same access control list (Dovecot replaces it
    whole at every change)."""
    *files, keywords = _fingerprint_files(d, ctl)
    out = [stat_part(os.stat(p)) for p in files]
    for path in (keywords, os.path.join(d, ACL_FILE)):
        try:
            out.append(stat_part(os.stat(path)))
        except FileNotFoundError:
            out.append([])
    return out


def _packed(path: str) -> str:
    """The compression of the message file at ``path`` ("" for none): a file whose S=
    is not its size and whose first bytes show one (Dovecot's zlib plugin)."""
    m = SIZE_RE.search(os.path.basename(path))
    try:
        if not m or int(m.group(1)) == os.stat(path).st_size:
            return ""
    except FileNotFoundError:
        return ""
    return compression_of(path)


def _fingerprint_files(d: str, ctl: str) -> tuple:
    join = os.path.join
    return join(ctl, UIDLIST), join(d, "cur"), join(d, "new"), join(d, "tmp"), join(ctl, KEYWORDS)


def _fingerprint_same(d: str, ctl: str, want: list) -> bool:
    """_fingerprint_stats(d, ctl) == want, the files stat()ed one by one up to the first
    that differs (a folder that changed costs one or two stats, not six)."""
    files = (*_fingerprint_files(d, ctl), os.path.join(d, ACL_FILE))
    if len(want) != len(files):
        return False                     # (a fingerprint from before the ACL was in it)
    for i, path in enumerate(files):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if i < 4:
                raise                    # the uidlist, cur/ new/ tmp/ are always there
            if want[i] != []:
                return False
            continue
        if want[i] != stat_part(st):
            return False
    return True


def _dir_parts(dirs) -> list:
    out = []
    for path in dirs:
        try:
            out.append(stat_part(os.stat(path)))
        except FileNotFoundError:
            out.append(None)
    return out


def list_messages(d: str, before: list | None = None, clashes: list | None = None) -> tuple[dict, bool]:
    """(base -> (subdir, file name) for every message file in new/ and cur/ of the
    Maildir ``d``, whether that listing is whole).  cur/ wins when a name is in both: a
    file only moves from new/ to cur/, and new/ is read first; in one directory the
    smallest name wins.

    Two files of one read with one base name (``new/B`` and ``cur/B:2,S``, ``cur/C:2,S``
    and ``cur/C:2,F``) may be two messages (Dovecot's maildir_fix_duplicate gives the
    second a base name of its own), or one file renamed while it was read, or two hard
    links of one: the names that lost go to ``clashes`` (subdir, file name), for the
    caller to tell (MaildirStore._fix_duplicates), never dropped unsaid.

    readdir() may miss a file that is renamed while the directory is read, and a client
    renames one at every flag change.  So a directory that changed while it was read
    (its times before and after differ) is read again, and every name a read saw is
    kept, the later read's first (a name gone since is looked for again when it is
    opened), up to RENAME_RETRIES times: False when new/ or cur/ changed at every read.
    ``before``: the stat_part()s of new/ and cur/ taken just before, if the caller has
    them."""
    dirs = (os.path.join(d, "new"), os.path.join(d, "cur"))
    files: dict = {}
    for _ in range(RENAME_RETRIES + 1):
        if before is None:
            before = _dir_parts(dirs)
        one = {}
        for sub, path in zip(("new", "cur"), dirs):
            try:
                names = os.listdir(path)
            except FileNotFoundError:
                continue
            for fname in names:
                if fname[:1] != ".":
                    base = fname.partition(":")[0]
                    had = one.get(base)
                    one[base] = (sub, fname)
                    if had is not None:
                        # two names, one base: the one kept is cur/'s, then the smallest
                        if had[0] == sub and had[1] < fname:
                            one[base], had = had, (sub, fname)
                        if clashes is not None:
                            clashes.append(had)
        files.update(one)
        after = _dir_parts(dirs)
        if after == before:
            return files, True
        before = after
    return files, False


# -- the per-folder working state, valid while the folder lock is held ---------------

class _State:
    """(Plain classes here, not dataclasses: a dataclass execs its generated methods
    when its module is imported, at every start of a command on a Maildir store.)"""

    def __init__(self, dir: str, uidlist: Uidlist, disk_uidnext: int, ctl: str = "", idx: str | None = "",
                 files: dict | None = None, keywords: list | None = None, dirty: bool = False,
                 keywords_dirty: bool = False, index_invalidated: bool = False, bases: dict | None = None,
                 flag_cache: dict | None = None, max_uid: int | None = None, overflow: dict | None = None,
                 ul_fd: int | None = None, ul_size: int = 0):
        self.dir = dir                      # the mail directory (cur/ new/ tmp/)
        self.uidlist = uidlist
        self.disk_uidnext = disk_uidnext    # UIDNEXT Dovecot may have indexed
        self.ctl = ctl or dir               # dovecot-uidlist, dovecot-keywords, the lock
        self.idx = dir if idx == "" else idx    # dovecot.index* (None: INDEX=MEMORY)
        self.files = files                  # base -> (subdir, file name)
        self.keywords = keywords            # index -> keyword
        self.dirty = dirty
        self.keywords_dirty = keywords_dirty
        self.index_invalidated = index_invalidated
        self.bases = bases                  # base -> uid
        self.flag_cache = {} if flag_cache is None else flag_cache  # letters -> (flags, keywords)
        self.max_uid = max_uid              # highest UID in the uidlist (None: recompute)
        # uid -> every keyword of a message whose keywords Dovecot's index must be set to
        # (some beyond the 26 letters, or the letters all taken: the index may hold more)
        self.overflow = {} if overflow is None else overflow
        # a mailbox GUID set alone while Dovecot keeps the folder's index: Dovecot's
        # mailbox list index is told at unlock (_give_dovecot_guid)
        self.dovecot_guid: str | None = None
        self.ul_fd = ul_fd                  # dovecot-uidlist open for appending, while the
        self.ul_size = ul_size              # lock is held (closed before any rewrite); its size
        self.owner = None                   # who new files belong to (_folder_owner), once
        self.owner_known = False            # looked up while the lock is held
        self.whole = True                   # files: False when new/ or cur/ changed at
                                            # every read of list_messages()
        self.unseen: list = []              # UIDs a snapshot did not find in an unwhole listing
        self.unrecordable: list = []        # files no uidlist record can name (_assign_uids)
        self.mail_changed = False           # a message file added or removed (maildirsize)

    def top_uid(self) -> int:
        if self.max_uid is None:
            self.max_uid = max(self.uidlist.records, default=0)
        return self.max_uid


class _Held:
    def __init__(self, lockpath: str | None, depth: int = 1, state: _State | None = None, touched: float = 0.0,
                 since: float = 0.0, writes: int = 0, lost: StoreError | None = None):
        self.lockpath = lockpath            # None when the store is read-only for us
        self.depth = depth
        self.state = state
        self.touched = touched
        self.since = since                  # time.monotonic() the dotlock was (re)taken
        self.writes = writes                # messages written since then (let_others_in)
        self.lost = lost                    # the dotlock could not be taken back: why


#: What to do about a folder directory whose name is not the one its folder is written to.
_FOREIGN_HINT = ("a folder's directory is its name in modified UTF-7 (RFC 3501 5.1.3, e.g. "
                 ".Caf&AOk- for Café): rename it to the spelling Dovecot writes for the folder "
                 "meant, or move its mail into that folder (docs/maildir.md)")


class MaildirStore(Store):
    """Dovecot Maildir++ partitions behind the logical view."""

    name = "maildir"
    #: a new mailbox GUID alone keeps Dovecot's index of a folder Dovecot has indexed
    #: (set_folder): its sessions stay; the dbox driver's copy resets it (DboxStore)
    guid_keeps_index = True
    #: subscriptions changed in a batch are written at its next sync (_set_subscribed)
    defer_subscriptions = True
    unlisted_hint = ("the maildir driver reads <partition>/<user>/Maildir: check partition:NAME.path "
                     "and the store's layout (docs/maildir.md)")

    def __init__(self, config: Config, create: bool = True, layout=None):
        self.config = config
        self._parts = config.checked_partitions()  # read once: asked for on every call
        self._owner = config.owner()
        self._subs = subscriptions.Cache()
        self._subs_users: dict[str, str] = {}      # subscriptions root -> user, of the changes
                                                   # a batch has not written yet (_set_subscribed)
        self._subs_swept: set = set()              # users whose subscriptions directory was cleaned
                                                   # of dead writers' leftovers (_sweep_subscriptions)
        self._staged_cleaned: set = set()          # parents cleaned of _mkdir_staged leftovers
        self._no_links: set = set()                # folder directories found free of symbolic
                                                   # links (_refuse_links)
        self._user_parts: dict[str, str] = {}       # user -> partition (checked on use)
        self._writers_checked: set = set()         # users check_writer found Dovecot can read
        self._login_owners: dict = {}              # path -> Dovecot's owner of its login (_login_owner)
        self._held: dict[tuple[str, str], _Held] = {}
        self._kept_index = _KEPT_INDEX
        self._mutex = threading.RLock()
        self._seq = 0
        self._pid = os.getpid()
        self._root_euid = os.geteuid() == 0         # (asked once: files are given away only as root)
        self._rand, self._rand_at, self._rand_pid = "", 0, 0   # hex digits for R fields
        self._hostname = mdnames.host()
        self._toucher = dotlock.Toucher(lambda: [h for h in self._held.values() if h.lockpath], self._mutex)
        # None: <partition>/<user>/Maildir (layout=False: so whatever the configuration says)
        self._layout = open_layout(config) if layout is None else (layout or None)
        # Dovecot's UTF-8 location option: folder names, and the subscriptions file, in UTF-8
        self._subs.utf8 = self._utf8 = bool(self._layout is not None and self._layout.location.utf8)
        self._uls: dict[str, layout_mod.UserLayout] = {}
        if self._layout is not None:
            self._parts = {"primary": fixed_prefix(self._layout.root_template())}
            self.unlisted_hint = (f"it matches store.mail_location ({self._layout.location.text}) "
                                  f"but belongs to no login that Dovecot would put there (docs/dovecot.md)")

    # ------------------------------------------------------------------ layout
    def partitions(self) -> list[str]:
        return list(self._parts)

    def partition_path(self, partition: str) -> str:
        parts = self._parts
        if partition not in parts:
            raise NoSuchPartition(partition, parts)
        return parts[partition]

    def check_partition(self, partition: str, writing: bool = False) -> bool:
        if self._layout is None:
            return super().check_partition(partition, writing)
        from asm.store.partitions import check_partition_dir
        return check_partition_dir(partition, self.partition_path(partition), True, writing,
                                   key=f"store.mail_location ({self._layout.location.text})")

    def sync_dirs(self) -> list[str]:
        out = super().sync_dirs()
        if self._layout is not None:
            loc = self._layout.location
            out += [fixed_prefix(t) for t in (loc.index, loc.control, loc.inbox) if t and t.startswith("/")]
            if self._layout.home_template:
                out.append(fixed_prefix(self._layout.home_template))
        return out

    def holds_path(self, path: str) -> bool:
        # a template's fixed directory (/home of /home/%u/Maildir) holds more than mail:
        # only the directories of a login are the store's
        if self._layout is None:
            return super().holds_path(path)
        return self._layout.login_holding(path) is not None

    def _logins(self) -> tuple[dict, list]:
        found, skipped = self._layout.logins(with_skipped=True)
        found = {k: v for k, v in found.items() if not k.startswith((NEW_PREFIX, DELETED_PREFIX))}
        # a login the userdb keeps elsewhere: what the walk found at the template's place
        # is not the mail Dovecot serves it (unlisted_users names that directory)
        away = _misplaced(self._layout)
        for login in [k for k in found if k in away]:
            root = found.pop(login).root
            if os.path.normpath(root) == os.path.normpath(away[login][1].path):
                continue             # its own location's directory: unlisted_users names it once
            skipped.append(layout_mod.Skipped(root, (
                f"the userdb keeps {login}'s mail at {away[login][1].path}, not in this "
                f"directory the template gives it")))
        self._uls.update(found)
        return found, skipped

    def _ul(self, user: str) -> "layout_mod.UserLayout":
        """Where Dovecot keeps ``user``'s mail, index and control files (layout mode);
        MisplacedLogin for a login the userdb keeps apart from the template."""
        ul = self._uls.get(user)
        if ul is None:
            away = _misplaced(self._layout).get(user)
            if away is not None:
                m = away[1]
                raise MisplacedLogin(f"{m.why} ({m.path}): ims-asm does not read or write it "
                                     f"there; {m.hint}")
            check_user_name(user)
            try:
                ul = self._layout.for_login(user)
            except layout_mod.LayoutError as exc:
                raise BadName(f"user {user!r}: {exc}") from None
            # a '.' level (%1.1n of j.doe) is dropped by for_login, as the kernel drops it;
            # '..', or a login part that is '.' (x@. under %d/%n: another login's
            # directory), would leave the login's own place
            name, _, domain = user.partition("@")
            for p in (ul.root, ul.control_root, ul.index_root, ul.inbox_dir):
                if p and (".." in p.split("/") or "." in (name, domain) and "@" in user):
                    raise BadName(f"bad user ID {user!r}: it would be stored at {p}, outside "
                                  f"the store")
            self._uls[user] = ul
        return ul

    def users(self, partition: str) -> list[str]:
        root = self.partition_path(partition)
        if not self.check_partition(partition):
            return []                        # the default partition before its first user
        if self._layout is not None:
            return sorted(self._logins()[0])
        try:
            names = os.listdir(root)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if os.path.isdir(os.path.join(root, n, "Maildir")))

    def unlisted_users(self, partition: str) -> list[Unlisted]:
        """Directories of the partition that hold mail in a form this driver does not
        read as a user: a Maildir at the home's top (cur/, new/) or a ``Maildir`` that
        is not a directory (a dangling link, a file).  With store.mail_location: the
        directories the location's template matches that belong to no login."""
        root = self.partition_path(partition)
        out = []
        if self._layout is not None:
            if not self.check_partition(partition):
                return []
            return [Unlisted("user", partition, os.path.relpath(s.path, root), None, s.path, s.reason,
                             s.hint)
                    for s in self._logins()[1] if s.reason != "no mailbox in it"] + \
                misplaced_logins(self._layout, partition)
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        for e in entries:
            if e.name.startswith(".") or e.name == "lost+found" or not e.is_dir():
                continue
            md = os.path.join(e.path, "Maildir")
            if os.path.isdir(md):
                continue
            if os.path.lexists(md):
                why = "its Maildir is not a directory (a dangling link or a file)"
            elif os.path.isdir(os.path.join(e.path, "cur")) or os.path.isdir(os.path.join(e.path, "new")):
                why = "a Maildir (cur/, new/) directly in the home, not in <home>/Maildir"
            else:
                continue                     # a home without mail yet
            out.append(Unlisted("user", partition, e.name, None, e.path, why))
        return out

    def unlisted_folders(self, user: str) -> list[Unlisted]:
        """``.Name`` directories of the Maildir that hold mail (cur/ or new/) but are not
        read as folders: a name that is no Maildir++ folder name, or no cur/."""
        if self._layout is not None:
            part = self.user_partition(user)
            ul = self._ul(user)
            return sorted([Unlisted("folder", part, user, name, path, why, _FOREIGN_HINT)
                           for name, path, why in ul.foreign_dirs()]
                          + [Unlisted("folder", part, user, name, path, _LINK_WHY, _LINK_HINT)
                             for name, path in ul.linked_dirs()], key=lambda u: u.path)
        root = self._root(user)
        part = self.user_partition(user)
        out = []
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        for e in entries:
            if not e.name.startswith(".") or e.name in (".", "..") or dovecot_trashed(e.name):
                continue
            if e.is_symlink():
                if e.is_dir():                # a link to a directory: Dovecot would list it
                    out.append(Unlisted("folder", part, user, self.folder_from_dirname(e.name) or e.name,
                                        e.path, _LINK_WHY, _LINK_HINT))
                continue
            if not e.is_dir(follow_symlinks=False):
                continue
            logical = self.folder_from_dirname(e.name)
            has_cur = os.path.isdir(os.path.join(e.path, "cur"))
            if not has_cur and not os.path.isdir(os.path.join(e.path, "new")):
                continue                     # not a folder (Dovecot's own directories)
            hint = None
            if logical is None:
                why = "its name is no Maildir++ folder name"
                hint = _FOREIGN_HINT
            elif self._folder_dir(user, logical, root) != e.path:
                why = (f"it spells the folder {logical!r} in raw UTF-8, but that folder is the "
                       f"directory {self.folder_dirname(logical)}")
                hint = "move its mail into that folder's directory (docs/maildir.md)"
                logical = None
            elif has_cur:
                continue                     # a folder (new/ not looked at: not needed)
            else:
                why = "it has new/ but no cur/"
            out.append(Unlisted("folder", part, user, logical or e.name, e.path, why, hint))
        return out

    def user_partition(self, user: str) -> str:
        if self._layout is not None:
            if os.path.isdir(self._ul(user).root):
                return "primary"
            raise NoSuchUser(user)
        part = self._user_parts.get(user)
        if part is not None and os.path.isdir(os.path.join(self._parts[part], user, "Maildir")):
            return part
        check_user_name(user)
        for part, path in self._parts.items():
            if os.path.isdir(os.path.join(path, user, "Maildir")):
                self._user_parts[user] = part
                return part
        raise NoSuchUser(user)

    def _home(self, user: str) -> str:
        """The user's home: where the delivery hold and its queue live.  With
        store.mail_location and no home template: $IMS_HOME/data/maildir-hold/<login>."""
        if self._layout is not None:
            ul = self._ul(user)
            self.user_partition(user)
            if ul.home and os.path.normpath(ul.home) != os.path.normpath(ul.root):
                return ul.home
            # no home, or the home is the Maildir (.ims-queue would be a folder there)
            return os.path.join(self.config.home, "data", "maildir-hold", user)
        return os.path.join(self.partition_path(self.user_partition(user)), user)

    def _root(self, user: str) -> str:
        if self._layout is not None:
            self.user_partition(user)
            return self._ul(user).root
        return os.path.join(self._home(user), "Maildir")

    def _subs_root(self, user: str, seen: bool = False) -> str:
        """The directory of the user's subscriptions file.  ``seen``: the caller has
        just found the user's Maildir there (a folder in it), or needs no check (it only
        opens a file there): it is not looked for again."""
        if seen:
            found = self._seen_root(user)
            if found is not None:
                return self._ul(user).control_root if self._layout is not None else found
        if self._layout is not None:
            self.user_partition(user)
            return self._ul(user).control_root
        return self._root(user)

    def _seen_root(self, user: str) -> str | None:
        """The user's Maildir where it was last found (no look at the disk), or None."""
        if self._layout is not None:
            return self._ul(user).root
        part = self._user_parts.get(user)
        return None if part is None else os.path.join(self._parts[part], user, "Maildir")

    def _list_index_dir(self, user: str) -> str | None:
        if self._layout is not None:
            return self._ul(user).list_index_dir
        return self._root(user)

    def _ctl_idx(self, user: str, folder: str, d: str) -> tuple[str, str | None]:
        """The folder's control directory (dovecot-uidlist, dovecot-keywords, the lock)
        and index directory (None: no index files), given its mail directory ``d``."""
        if self._layout is None:
            return d, d
        ul = self._ul(user)
        try:
            return ul.control_dir(folder), ul.index_dir(folder)
        except layout_mod.LayoutError as exc:
            raise BadName(str(exc)) from None

    folder_dirname = staticmethod(folder_dirname)
    folder_from_dirname = staticmethod(folder_from_dirname)

    def _folder_dir(self, user: str, folder: str, root: str | None = None) -> str:
        """``root``: the user's Maildir when the caller knows it (no layout)."""
        if self._layout is not None:
            self.user_partition(user)
            try:
                return self._ul(user).folder_dir(check_folder_name(folder))
            except layout_mod.LayoutError as exc:
                raise BadName(str(exc)) from None
        sub = self.folder_dirname(folder)
        if root is None:
            root = self._root(user)
        if not sub:
            return root
        d = os.path.join(root, sub)
        if not folder.isascii():
            # another tool may have named the directory in raw UTF-8 (.Privé, not
            # .Priv&AOk-): folder_from_dirname read it so, so find it so
            raw = "." + check_folder_name(folder).replace("/", ".")
            if raw != sub and not os.path.isdir(d) and os.path.isdir(os.path.join(root, raw)):
                return os.path.join(root, raw)
        return d

    def _existing_folder_dir(self, user: str, folder: str) -> str:
        root = self._seen_root(user)
        if root is not None and self._layout is None:
            # its cur/ in the Maildir where the user was last found says the user is
            # there still: not looked for first (a restore asked that about 5 times a
            # folder, a stat each); not there, the user is looked for as ever
            d = self._folder_dir(user, folder, root)
            if os.path.isdir(os.path.join(d, "cur")):
                if d not in self._no_links:
                    self._refuse_links(user, folder, d, root)
                return d
        d = self._folder_dir(user, folder)
        if not os.path.isdir(os.path.join(d, "cur")):
            raise NoSuchFolder(user, check_folder_name(folder))
        if d not in self._no_links:
            self._refuse_links(user, folder, d, self._root(user))
        return d

    def _refuse_links(self, user: str, folder: str, d: str, root: str) -> None:
        """A folder whose directory (or a level of it below the user's Maildir), cur/,
        new/, tmp/, control directory, dovecot-uidlist or dovecot-keywords is a symbolic
        link is neither read nor written (:class:`LinkInStore`): the commands run as root,
        and a link in a mail directory, which its user may have made, could name any file
        or directory on the system.  Checked once per folder directory and process."""
        ctl = self._ctl_idx(user, folder, d)[0]
        hit = _link_below(root, d)
        if hit is None:
            paths = [f"{d}/cur", f"{d}/new", f"{d}/tmp", f"{ctl}/{UIDLIST}", f"{ctl}/{KEYWORDS}"]
            if ctl != d:
                paths.insert(0, ctl)
            hit = next((p for p in paths if os.path.islink(p)), None)
        if hit is not None:
            raise LinkInStore(hit)
        self._no_links.add(d)

    # ------------------------------------------------------------------ ownership
    def _dovecot_uid(self, user: str, lay=None) -> tuple[int, str] | None:
        """(uid, what says so) Dovecot runs ``user`` as: the ``uid`` its userdb gives the
        login (asked with the misplaced logins, :func:`_misplaced`), else the one a userdb
        gives every login (a static userdb's ``args``), else ``mail_uid``;
        None when the layout was not read from Dovecot's configuration or neither is
        known.  ``lay``: another layout than the store's (the dbox accounts')."""
        lay = lay or self._layout
        if not _asks_dovecot(lay):
            return None
        fields = _login_fields(lay, user)
        for value, what in ((fields.get("uid", ""), f"the userdb's uid={fields.get('uid', '')}"),
                            (lay.userdb_uid, f"the userdb's uid={lay.userdb_uid}"),
                            (lay.mail_uid, f"mail_uid = {lay.mail_uid}")):
            uid = layout_mod.system_id(value, "uid")
            if uid is not None:
                return uid, what
        return None

    def check_writer(self, user: str) -> None:
        """NotDovecotsOwner when the files a restore writes for ``user`` would belong to
        another uid than the one Dovecot runs the login as (a userdb giving logins their
        own uid: system users, a passwd-file's or SQL's uid; a store.owner that is not
        Dovecot's mail_uid): Dovecot, which keeps a login's directories 0700 and files
        0600, could not open them ("Permission denied", "[SERVERBUG] Internal error" to
        every client), and the restore would have exited 0.  Inside a login's existing
        mail root the files go to Dovecot's owner (:meth:`_login_owner`); a login whose
        mail root must be made is made as the partition's owner (store.owner, else the
        owner of the store's top directory), which is checked.  Once per login."""
        checked = self._writers_checked
        if user in checked:
            return
        got = self._dovecot_uid(user)
        if got is not None:
            want, what = got
            root = self._ul(user).root
            if not self._root_euid:
                writer, how = os.geteuid(), "this command runs as uid"
            else:
                near = root if os.path.isdir(root) else self.partition_path("primary")
                owner = self._owner_for(near)
                writer = owner[0] if owner else 0
                how = ("store.owner is uid" if self._owner else
                       f"store.owner is unset and {near} belongs to uid")
                if near != root:
                    how = f"its mail root {root} would be made, and {how}"
            if writer != want:
                raise NotDovecotsOwner(
                    f"Dovecot runs {user} as uid {want} ({what}) but {how} {writer}, so Dovecot "
                    f"could not open what a restore writes: nothing of {user} restored; set "
                    f"store.owner to Dovecot's mail user, or restore a login the userdb gives "
                    f"its own uid with an IMS_HOME whose store.owner is that user")
        checked.add(user)

    def _dovecot_owner(self, user: str) -> tuple[int, int] | None:
        """(uid, gid) Dovecot runs ``user`` as (:meth:`_dovecot_uid`; the gid likewise:
        the userdb's, a userdb's for every login, mail_gid, else the uid's own group);
        None when not known."""
        got = self._dovecot_uid(user)
        if got is None:
            return None
        lay = self._layout
        fields = _login_fields(lay, user)
        for value in (fields.get("gid", ""), lay.userdb_gid, lay.mail_gid):
            gid = layout_mod.system_id(value, "gid")
            if gid is not None:
                return got[0], gid
        import pwd
        try:
            return got[0], pwd.getpwuid(got[0]).pw_gid
        except KeyError:
            return got[0], self._owner[1] if self._owner else got[0]

    def _login_owner(self, near: str) -> tuple[int, int] | None:
        """Dovecot's owner of the login whose mail, control or index directories hold
        ``near`` (:meth:`_dovecot_owner`), None for a path of no login's or when Dovecot's
        configuration does not say: a file written there is given to the uid Dovecot
        opens it as, whatever store.owner says (a backup numbering an MDA's new files
        rewrote dovecot-uidlist as store.owner: a login the userdb runs as its own uid
        got "Permission denied", [SERVERBUG] at every SELECT, after an imsbackup that
        exited 0; imsdeliver and mboxutil -c the same)."""
        lay = self._layout
        if not _asks_dovecot(lay):
            return None
        cache = self._login_owners
        if near not in cache:
            login = lay.login_holding(near)
            cache[near] = self._dovecot_owner(login) if login is not None else None
        return cache[near]

    def _owner_for(self, near: str) -> tuple[int, int] | None:
        if not self._root_euid:
            return None
        owner = self._owner
        if owner:
            return self._login_owner(near) or owner
        try:                     # unset store.owner: keep what the store already uses
            st = os.stat(near)
        except OSError:
            return None
        return (st.st_uid, st.st_gid) if st.st_uid != 0 else None

    def _folder_owner(self, st: _State) -> tuple[int, int] | None:
        """_owner_for the folder's directory, looked up once per lock hold, when the
        folder is written to; its cur/ new/ tmp/ are given to that owner then if a
        killed run made one and died before it could (a mkdir and its chown are two
        steps: Dovecot could not write to a directory root kept)."""
        if not st.owner_known:
            st.owner, st.owner_known = self._owner_for(st.dir), True
            if st.owner:
                for sub in ("cur", "new", "tmp"):
                    self._own(os.path.join(st.dir, sub), st.owner)
        return st.owner

    def _own(self, path: str, owner) -> None:
        """``path``, made before by a run that may have been killed between its mkdir and
        its chown, given to ``owner`` if it is not yet."""
        if not owner:
            return
        try:
            s = os.lstat(path)
        except FileNotFoundError:
            return
        if (s.st_uid, s.st_gid) != tuple(owner):
            os.lchown(path, *owner)

    @staticmethod
    def _chown(path: str | int, owner: tuple[int, int] | None) -> None:
        if owner:
            if isinstance(path, int):
                os.fchown(path, *owner)
            else:
                os.lchown(path, *owner)

    def _mkdir(self, path: str, owner) -> None:
        os.mkdir(path, 0o700)
        self._chown(path, owner)

    def _mkdir_aside(self, path: str, owner) -> None:
        """_mkdir of a control or index directory (CONTROL=, INDEX= apart from the mail;
        Dovecot lists neither) that appears already the owner's: made under a name of
        ours beside it (_STAGED_RE's ``ims-mkdir``, removed by the next call there when a
        kill left it), given, renamed in.  (Made under its name as root, 0700, then
        chowned, a client's SELECT that had found the old folder's mail before a folder
        was removed and made again at once opened its dovecot-uidlist between the two:
        "Permission denied", "[SERVERBUG] Internal error" to the client.)
        FileExistsError when ``path`` is there already.  (_mkdir_staged with no Maildir
        to stage in: the name is made beside ``path``.)"""
        if owner:
            self._clean_staged(os.path.dirname(path))
        self._mkdir_staged(path, owner)

    def _mkdir_or_own(self, path: str, owner) -> None:
        """_mkdir, or, when ``path`` is there already (a killed run made it and may have
        died before its chown), _own."""
        try:
            self._mkdir(path, owner)
        except FileExistsError:
            self._own(path, owner)

    @property
    def _fs_layout(self) -> bool:
        """LAYOUT=fs: a folder's subfolders live in its directory."""
        return self._layout is not None and self._layout.location.layout == "fs"

    def _makedirs(self, path: str, owner, top: bool = True, within: str | None = None,
                  staged: tuple | None = None, aside: bool = False) -> bool:
        """``path`` and its missing parents (each chowned), as Dovecot makes them;
        ``path`` itself given to ``owner`` if it is there already (a killed creation
        left it), and the parents that were there only below ``within`` (the login's
        own directories: LAYOUT=fs parent levels).  ``staged``: the directories are
        folders Dovecot lists, each made whole (:meth:`_mkdir_staged`, staged where
        :meth:`_staging` says for the Maildir ``within``), ``path`` with the
        subdirectories named.  ``aside``: control or index directories, each made
        whole (:meth:`_mkdir_aside`).  True when this call made ``path`` itself (with
        ``staged``: it holds only those subdirectories, all empty)."""
        if os.path.isdir(path):
            if top or (within and path.startswith(within.rstrip("/") + "/")):
                self._own(path, owner)
            return False
        parent = os.path.dirname(path)
        if parent != path:
            self._makedirs(parent, owner, top=False, within=within,
                           staged=None if staged is None else (), aside=aside)
        try:
            if aside:
                self._mkdir_aside(path, owner)
            elif staged is None:
                self._mkdir(path, owner)
            else:
                self._mkdir_staged(path, owner, staged if top else (), root=within)
        except FileExistsError:
            return False
        return True

    def _staging(self, parent: str, root: str | None) -> tuple[str, str]:
        """(directory, prefix) of a directory that is to appear in ``parent`` (of the
        Maildir ``root``) while it is made, or of one removed from there, under a name
        Dovecot never lists (:meth:`_staged_name`), on ``parent``'s filesystem (one
        rename).  Maildir++: ``parent`` itself, a plain name (Dovecot lists only dot
        names in the Maildir, nothing within a folder).  LAYOUT=fs, where Dovecot lists
        every directory name but cur, new and tmp (a dot name too, as a folder
        \\Noselect or not): the Maildir's own tmp/ (INBOX's), whose entries Dovecot
        never lists; a dot name in ``parent`` only when that tmp/ is missing or on
        another filesystem."""
        if not self._fs_layout or root is None:
            return parent, ""
        hidden = os.path.join(root, "tmp")
        try:
            if os.stat(hidden).st_dev == os.stat(parent).st_dev and os.path.isdir(hidden):
                return hidden, ""
        except OSError:
            pass
        return parent, "."

    def _staged_name(self, parent: str, root: str | None, kind: str) -> str:
        """A new path for a directory of ours of ``kind`` (mkdir, deleting, cur, tmp)
        meant for ``parent``, where Dovecot never lists it (:meth:`_staging`); one a
        killed run left is removed by the next :meth:`_clean_staged` there."""
        where, dot = self._staging(parent, root)
        return os.path.join(where, f"{dot}ims-{kind}.{self._pid}.{self._random8()}")

    def _mkdir_staged(self, path: str, owner, subs=(), fill=None, root: str | None = None) -> None:
        """A folder's directory, appearing whole or not at all: made under a temporary
        name Dovecot does not list (:meth:`_staging`, ``root`` the login's Maildir),
        given to ``owner`` with its ``subs`` (new/ tmp/), then renamed into place (one
        a killed run left is removed by the next folder made beside it,
        _clean_staged).  Made as ``path`` and chowned after, a kill between the two
        left a directory of root's, 0700, that Dovecot lists and cannot open
        ("[SERVERBUG] Internal error", stat(.../tmp) Permission denied) until a rerun.
        (Under LAYOUT=fs the temporary name was a dot name beside ``path``, which a
        client's LIST showed as a folder for the moment.)  ``fill(tmp)`` writes the
        rest of the folder (its uidlist, cur/ last) before the rename."""
        if not owner and fill is None:  # nothing to give: no step to be killed between
            os.mkdir(path, 0o700)
            for sub in subs:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(os.path.join(path, sub), 0o700)
            return
        tmp = self._staged_name(os.path.dirname(path), root, "mkdir")
        os.mkdir(tmp, 0o700)
        try:
            self._chown(tmp, owner)
            for sub in subs:
                self._mkdir(os.path.join(tmp, sub), owner)
            if fill is not None:
                fill(tmp)
            _rename_in(tmp, path)
        except BaseException:
            remove_tree(tmp)
            raise

    def _clean_staged(self, parent: str, root: str | None = None, again: bool = False) -> bool:
        """Directories of ours (:meth:`_staged_name`) of a process that is gone left
        where those meant for ``parent`` are made (looked for once per place and store
        object, unless ``again``: a restore making 10,000 folders in one Maildir reads
        it once, not 10,000 times).  True when one was removed."""
        found = False
        for where in dict.fromkeys((parent, self._staging(parent, root)[0])):
            if where in self._staged_cleaned and not again:
                continue
            self._staged_cleaned.add(where)
            try:
                entries = os.listdir(where)
            except OSError:
                continue
            for n in entries:
                m = _STAGED_RE.match(n)
                if m and not pid_alive(int(m.group(1))):
                    remove_tree(os.path.join(where, n))
                    found = True
        return found

    def _write_file(self, path: str, data: bytes, owner, fsync: bool | None = None,
                    mode: int = 0o600, newer_than: float | None = None) -> None:
        """Write ``path`` atomically (temp + rename in the same directory), of ``mode``;
        fsynced unless inside a :meth:`batch`, whose end makes it durable with the rest.
        ``newer_than``: the new file's mtime is at least a whole second past it (the
        file's mtime before), given before the rename."""
        if fsync is None:
            fsync = not self.in_batch
        d, base = os.path.split(path)
        tmp = os.path.join(d, f"{base}.{self._pid}.{threading.get_ident()}.tmp")
        fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)   # (a link planted there: named)
        try:
            try:
                write_all(fd, data)
                self._chown(fd, owner)
                if mode != 0o600:
                    os.fchmod(fd, mode)
                if newer_than is not None and int(os.fstat(fd).st_mtime) <= int(newer_than):
                    os.utime(fd, (time.time(), int(newer_than) + 1))
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            # a full disk while writing: the temporary goes, the file stays as it was
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        try:
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    # ------------------------------------------------------------------ locking
    def _lock_timeout(self) -> float:
        try:
            return float(self.config.get_int("store.locktimeout"))
        except (TypeError, ValueError):
            return 30.0

    def _acquire_dotlock(self, path: str, timeout: float, what: str) -> None:
        dotlock.acquire(path, timeout, what, self._pid, self._hostname,
                        lambda fd: self._chown(fd, self._owner_for(os.path.dirname(path))))

    @contextlib.contextmanager
    def _locked(self, user: str, folder: str, timeout: float | None = None,
                create_uidlist: bool = True) -> Iterator[_State]:
        """The folder's working state under its lock (taken unless already held)."""
        folder = check_folder_name(folder)
        key = (user, folder)
        with self._mutex:
            held = self._held.get(key)
            if held is not None:
                held.depth += 1
        if held is None:
            d = self._existing_folder_dir(user, folder)
            self._sweep_subscriptions(user)
            ctl = self._ctl_idx(user, folder, d)[0]
            if ctl != d and not self.read_only and not os.path.isdir(ctl):
                # control files elsewhere (CONTROL=) and not made yet for this folder
                with contextlib.suppress(OSError):
                    self._makedirs(ctl, self._owner_for(self._subs_root(user)), aside=True)
            lockpath = os.path.join(ctl, UIDLIST + LOCK_SUFFIX)
            try:
                if self.read_only:
                    # a command that must not change the store: read as a store we may
                    # not write is read (no lock file, nothing recovered or flushed)
                    raise Unlocked(lockpath)
                self._acquire_dotlock(lockpath, self._lock_timeout() if timeout is None else timeout,
                                      f"{user}/{folder} ({lockpath})")
            except Unlocked:
                lockpath = None
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    self._existing_folder_dir(user, folder)  # deleted or renamed meanwhile:
                                                             # no such folder, not a write error
                raise os_store_error(exc, f"{user}/{folder}") from None
            held = _Held(lockpath=lockpath, touched=time.time(), since=time.monotonic())
            with self._mutex:
                self._held[key] = held
                if lockpath:
                    self._toucher.start()
        try:
            if held.lost is not None:
                raise held.lost
            if held.state is None:
                try:
                    held.state = self._load_state(user, folder, create_uidlist and held.lockpath is not None,
                                                  numbering=create_uidlist)
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        self._existing_folder_dir(user, folder)     # gone meanwhile, as above
                    raise os_store_error(exc, f"{user}/{folder}") from None
            yield held.state
        finally:
            with self._mutex:
                held.depth -= 1
                last = held.depth == 0
                if last:
                    del self._held[key]
            if last:
                try:
                    if held.state is not None and held.lockpath:
                        try:
                            self._flush(held.state)
                        except OSError as exc:
                            if exc.errno == errno.ENOENT:
                                self._existing_folder_dir(user, folder)   # deleted meanwhile
                            raise os_store_error(exc, f"{user}/{folder}") from None
                finally:
                    if held.state is not None:
                        self._close_uidlist(held.state)
                    if held.lockpath:
                        dotlock.release(held.lockpath)
                    if held.state is not None and held.state.mail_changed:
                        self._quota_stale(user)
                if held.state is not None and held.state.overflow:
                    if sys.exc_info()[1] is None:
                        self._give_dovecot_keywords(user, folder, held.state.overflow)
                    else:                     # the error in flight is the one to report
                        with contextlib.suppress(StoreError):
                            self._give_dovecot_keywords(user, folder, held.state.overflow)
                if held.state is not None and held.state.dovecot_guid:
                    if sys.exc_info()[1] is None:
                        self._give_dovecot_guid(user, folder, held.state.dovecot_guid)
                    else:
                        with contextlib.suppress(StoreError):
                            self._give_dovecot_guid(user, folder, held.state.dovecot_guid)

    def _doveadm(self):
        """doveadm of the Dovecot configuration (dovecot.config; with store.mail_location
        = doveconf the default one), or None."""
        if not hasattr(self, "_doveadm_cache"):
            from asm.store.maildir.doveadm import Doveadm
            conf = self.config.get("dovecot.config")
            if conf is None and self.config.get("store.mail_location") == "doveconf":
                conf = "/etc/dovecot/dovecot.conf"
            dv = Doveadm.find(conf)
            if dv is not None:
                # folders named as this driver names them (Work/Sub), whatever the inbox
                # namespace's prefix and separator (Courier's INBOX. and '.', Debian's '.'):
                # 'mailbox Work/Sub' was refused there ("Name must not have '/'"), and with
                # prefix INBOX. 'mailbox Tags' was no folder; the files are the same either way
                try:
                    dv.settings = layout_mod.dsync_namespace_options(layout_mod.doveconf_namespaces(dv.conf))
                except (layout_mod.LayoutError, OSError):
                    pass             # (doveconf fails: doveadm will too, and that is named there)
                # the listescape plugin: this driver names a folder by its directory
                # (v1\2e2), Dovecot by the unescaped name (v1.2): "doveadm fetch ...
                # mailbox 'v1\2e2'" answered for no message, and a folder with keywords
                # beyond 26 was left out of every backup (exit 1)
                dv.listescape = layout_mod.listescape_char(dv.conf)
            self._doveadm_cache = dv
        return self._doveadm_cache

    def keep_index_keywords(self, path: str):
        """Where no Dovecot serves this store (the scratch store of ``imsverify
        --restore-test``): keywords beyond the 26 file-name letters are kept in the file
        ``path`` instead of Dovecot's index, and read back from it.  The keeper."""
        from asm.store.maildir.doveadm import KeptKeywords
        self._doveadm_cache = KeptKeywords(self, path)
        return self._doveadm_cache

    def _give_dovecot_keywords(self, user: str, folder: str, overflow: dict) -> None:
        """Dovecot's index gets the keywords set for each message of ``overflow`` (uid ->
        all its keywords): those beyond the 26 file-name letters are added, and keywords
        only the index holds that the message no longer has are removed (an earlier link
        of a chain, or a client, may have put them there; doveadm takes the folder's
        lock: called after this driver let it go)."""
        dv = self._doveadm()
        index = dv.keywords(user, folder)      # Dovecot reads the file names first
        changes: dict[tuple, list] = {}
        for uid, want in sorted(overflow.items()):
            have = index.get(uid)
            if have is None:
                continue                       # expunged meanwhile (a client)
            add = tuple(k for k in want if k not in have)
            drop = tuple(k for k in have if k not in want)
            if add or drop:
                changes.setdefault((add, drop), []).append(uid)
        for (add, drop), uids in changes.items():
            dv.change_keywords(user, folder, uids, add, drop)
        overflow.clear()

    def _give_dovecot_guid(self, user: str, folder: str, guid: str) -> None:
        """Dovecot's mailbox list index (``mailbox_list_index = yes``, Dovecot 2.3's
        default) caches each folder's mailbox GUID and, for a folder whose index Dovecot
        keeps, learns a GUID written in its dovecot-uidlist only once something opens the
        folder: ``doveadm mailbox status guid`` and dsync went on serving the old one.
        ``doveadm mailbox update --mailbox-guid`` sets it as Dovecot's own (the uidlist
        header it writes is the one written here).  (A chain restored archive by archive
        gives a renamed folder its archived GUID only once the old name is gone; the
        folder had been opened meanwhile, for keywords beyond the 26th or by a client,
        and kept the GUID it was made with, exit 0.)  doveadm takes the folder's lock:
        called after this driver let it go."""
        dv = self._doveadm()
        if dv is None or not hasattr(dv, "run"):
            return                             # (no Dovecot: nothing caches it)
        dv.run(user, "mailbox update", "--mailbox-guid", guid, "--", dv.mailbox(folder))

    def _index_keywords(self, user: str, folder: str, ctl: str, snap: FolderSnapshot,
                        no_table: bool = False) -> bool:
        """A folder whose 26 keyword letters are all taken may have more keywords in
        Dovecot's index only: read them with doveadm, or say that they are missing.
        True when the folder's keywords are not all in its file names (the index has a
        say: no fingerprint tells when those change)."""
        if no_table:
            return False                     # no dovecot-keywords (its fingerprint says)
        table = mdnames.read_keywords(ctl)
        if sum(1 for k in table if k) < mdnames.MAX_KEYWORDS:
            return False
        if not snap.messages:
            return True
        if (user, folder) in self._held:
            # our own writer holds the folder's dotlock (a restore looking at what is
            # there): doveadm would wait on it until Dovecot calls it stale, minutes;
            # the writer sets the keywords it restores itself
            return True
        dv = self._doveadm()
        if dv is None:
            snap.warnings.append(
                f"all {mdnames.MAX_KEYWORDS} keyword letters of the folder are taken: keywords "
                f"beyond them are only in Dovecot's index and are not in the archive (set "
                f"dovecot.config so the backup reads them with doveadm)")
            return True
        try:
            index = dv.keywords(user, folder)
        except StoreError as exc:
            snap.warnings.append(f"keywords beyond the {mdnames.MAX_KEYWORDS} file-name letters "
                                 f"could not be read, not in the archive: {exc}")
            return True
        if not any(m.uid in index for m in snap.messages):
            # doveadm answered for no message of the folder: another folder than this one
            # (a namespace that names it otherwise), not "no keyword beyond the letters"
            snap.warnings.append(f"keywords beyond the {mdnames.MAX_KEYWORDS} file-name letters could not "
                                 f"be read, not in the archive: doveadm fetch -u {user} 'uid flags' mailbox "
                                 f"{folder!r} answered for none of the folder's {len(snap.messages)} messages")
            return True
        out = []
        for m in snap.messages:
            extra = [k for k in index.get(m.uid, ()) if k not in m.keywords]
            out.append(dataclasses.replace(m, keywords=m.keywords + tuple(extra)) if extra else m)
        snap.messages = out
        return True

    def lock(self, user: str, folder: str, timeout: float = 30.0):
        return self._locked(user, folder, timeout)

    # A long writer (a restore) holds a folder's lock in short batches, so Dovecot's
    # IMAP and LMTP, which wait for the same dotlock, go on meanwhile (docs/dovecot.md,
    # "Live restores").  Dovecot watches a dotlock it waits for with inotify and tries
    # again as soon as it goes away (file-dotlock.c, use_io_notify; without inotify it
    # looks every 0.1-0.2 s), so a short gap lets it in.
    # A hold is bounded by time: at the restore's pace (2,000-2,500 messages a second)
    # a bound of 500 messages ended every hold after 0.2-0.25 s, and the 50 ms gap plus
    # the re-read of the folder cost 18% of a restore of large folders (20,000 messages
    # in 28 folders: 9.0 s against 7.4 s with no gaps).  The message bound stays for
    # slow disks' sake only.
    BATCH_MESSAGES = 5000           # messages written under one hold of the dotlock
    BATCH_SECONDS = 0.5             # or this long, whichever comes first
    BATCH_GAP = 0.05                # how long the dotlock stays free between batches

    def let_others_in(self, user: str, folder: str) -> bool:
        """Called by a long writer after each message it wrote into a folder whose lock
        it holds (``with store.lock(...)``): when the batch is full, what is kept in
        memory is written, Dovecot's dotlock is let go for a moment and taken again, and
        the folder is read again (Dovecot may have changed it meanwhile).  True when it
        let go.  The writer's own plan may be stale then: a UID it wants may be taken
        (append raises UidInUse) or a message gone (MessageGone)."""
        key = (user, check_folder_name(folder))
        with self._mutex:
            held = self._held.get(key)
        if held is None or not held.lockpath or held.state is None or held.lost is not None:
            return False
        held.writes += 1
        if held.writes < self.BATCH_MESSAGES and time.monotonic() - held.since < self.BATCH_SECONDS:
            return False
        st = held.state
        try:
            self._flush(st)
        except OSError as exc:
            raise os_store_error(exc, f"{user}/{folder}") from None
        lockpath, what = held.lockpath, f"{user}/{folder} ({held.lockpath})"
        self._close_uidlist(st)
        with self._mutex:
            held.lockpath = None            # not ours for a moment: the toucher leaves it
            held.state = None
        dotlock.release(lockpath)
        time.sleep(self.BATCH_GAP)
        try:
            self._acquire_dotlock(lockpath, self._lock_timeout(), what)
        except (StoreError, Unlocked, OSError) as exc:
            # nothing of ours is pending: the folder is as a reader sees it.  The message
            # just written is done; every later use of this hold fails with this error
            # (the caller's lock is gone), so the folder is never called complete
            if isinstance(exc, OSError):
                exc = os_store_error(exc, f"{user}/{folder}")
            elif isinstance(exc, Unlocked):
                exc = LockTimeout(what)
            held.lost = exc
            return True
        with self._mutex:
            held.lockpath = lockpath
            held.touched = time.time()
        held.since = time.monotonic()
        held.writes = 0
        try:
            held.state = self._load_state(user, key[1], True)
        except OSError as exc:
            raise os_store_error(exc, f"{user}/{folder}") from None
        held.state.overflow = st.overflow     # keywords for Dovecot's index, given at unlock
        held.state.dovecot_guid = st.dovecot_guid
        return True

    def _load_state(self, user: str, folder: str, writing: bool, numbering: bool = True) -> _State:
        d = self._existing_folder_dir(user, folder)
        ctl, idx = self._ctl_idx(user, folder, d)
        ul = read_uidlist(ctl)
        if ul is None:
            uv, un = self._indexed_numbering(user, folder, ctl, idx) if numbering else (None, 1)
            ul = Uidlist(uidvalidity=uv or self._folder_uidvalidity(user), uidnext=un,
                         extra=[f"G{os.urandom(16).hex()}"])
            st = _State(dir=d, ctl=ctl, idx=idx, uidlist=ul, disk_uidnext=un, dirty=writing)
        else:
            # a last line cut off by a crash: rewrite before appending to it
            st = _State(dir=d, ctl=ctl, idx=idx, uidlist=ul, disk_uidnext=ul.uidnext,
                        dirty=writing and ul.torn)
        if writing:
            self._recover(st)
        return st

    def _dovecot_indexed(self, idx: str | None) -> bool:
        """Dovecot has an index of the folder (one that can hold its UIDVALIDITY): a
        ``dovecot.index`` or a transaction log that is not only our floor log."""
        if idx is None:
            return False                     # INDEX=MEMORY
        if os.path.exists(os.path.join(idx, "dovecot.index")) or \
                os.path.exists(os.path.join(idx, "dovecot.index.log.2")):
            return True
        return os.path.exists(os.path.join(idx, "dovecot.index.log")) and not self._floor_log(idx)

    def _indexed_numbering(self, user: str, folder: str, ctl: str, idx: str | None) -> tuple[int | None, int]:
        """(UIDVALIDITY, UIDNEXT) for a folder that has no dovecot-uidlist, as Dovecot
        numbers it when it opens it (maildir_sync_index: the uidlist takes the
        UIDVALIDITY and next UID of the index header): Dovecot's index's, read with
        ``doveadm dump``, when it has one (a folder Dovecot made, CREATE writes the index
        first, or whose uidlist was lost or removed); (None, 1) where it has none (a
        folder another tool made: a new UIDVALIDITY by Dovecot's rule, as Dovecot gives
        it).  A uidlist with a UIDVALIDITY of our own over Dovecot's index would make
        every client drop its cache and download the folder again.  NotNumbered where the
        index is there but cannot be read (no doveadm): the numbering is left to
        Dovecot, nothing is written.  A read-only command that would have to choose a
        new UIDVALIDITY chooses one in memory (it writes no dovecot-uidvalidity)."""
        path = os.path.join(ctl, UIDLIST)
        if self._dovecot_indexed(idx):
            exe = rd.find_doveadm()
            view = rd.Dovecot(exe).index_view(idx) if exe is not None else None
            if view is None or not view.files:
                raise NotNumbered(
                    f"its {UIDLIST} ({path}) is missing and Dovecot's index of the folder, which holds its "
                    f"UIDVALIDITY, could not be read ({'no doveadm is installed' if exe is None else 'doveadm dump failed'}): "
                    f"not read and nothing written (a {UIDLIST} with a new UIDVALIDITY would make every "
                    f"client download the folder again); Dovecot numbers the messages again under the "
                    f"folder's UIDVALIDITY when it next opens the folder (a client's SELECT, or doveadm "
                    f"force-resync -u {shlex.quote(user)} {shlex.quote(folder)}): back it up after that")
            if view.uidvalidity:
                return view.uidvalidity, max(1, view.next_uid)
        if self.read_only:
            # a command that writes nothing (no dovecot-uidvalidity either): a UIDVALIDITY
            # of this reading only, which no client has seen (Dovecot, opening the folder,
            # chooses one as the next backup does); the folder reads as one made since
            return self._new_uidvalidity(), 1
        return None, 1

    def _recover(self, st: _State) -> None:
        """What a writer killed in this folder left (we hold its lock now): the message
        files of ours still in tmp/ and their uidlist records (never visible: the
        record goes, UIDNEXT goes back to what a client can have seen), temporaries of
        dead processes, a tmp/ or new/ that a killed creation left out."""
        d = st.dir
        owner = None
        for sub in ("new", "tmp"):
            if not os.path.isdir(os.path.join(d, sub)):
                if not os.path.isdir(os.path.join(d, "cur")):
                    # the folder (or its user) is being deleted: never make a directory in
                    # it (delete_user would find its tree not empty); the caller says gone
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.path.join(d, "cur"))
                owner = owner or self._owner_for(d)
                with contextlib.suppress(FileExistsError):
                    self._mkdir(os.path.join(d, sub), owner)
        stale = {}
        try:
            entries = os.listdir(os.path.join(d, "tmp"))
        except FileNotFoundError:
            entries = []
        for n in entries:
            m = _OUR_BASE.match(n)
            if m and m.group(3) == self._hostname and not pid_alive(int(m.group(1))):
                stale[n] = os.path.join(d, "tmp", n)
        if stale:
            ul = st.uidlist
            # a message kept under its archived base name (append): its record names that
            # base, whose _base_tag is the R field of its file in tmp/, and no file has it
            tags = {_OUR_BASE.match(n).group(2) for n in stale}
            kept = set()
            if any(_base_tag(base) in tags for _, base in ul.records.values()):
                on_disk = list_messages(d)[0]
                kept = {base for _, base in ul.records.values()
                        if _base_tag(base) in tags and base not in on_disk}
            dead = [uid for uid, (_, base) in ul.records.items()
                    if base.partition(",S=")[0] in stale or base in kept]
            seen = (self._indexed_uidnext(st) or 0) if dead else 0
            for uid in dead:
                if uid < seen:
                    # Dovecot read the record, found no file and told its clients UIDNEXT
                    # past it: the record stays, fileless, as Dovecot keeps an expunged
                    # message's, so the UID is never given to a message again (append)
                    continue
                del ul.records[uid]
            if dead:
                ul.uidnext = max(ul.header_uidnext, max(ul.records, default=0) + 1, seen)
                st.max_uid = None
                st.dirty = True
                self._flush_uidlist(st)
            for path in stale.values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._clean_temporaries(d)
        if st.ctl != d:
            self._clean_temporaries(st.ctl)

    def _indexed_uidnext(self, st: _State) -> int | None:
        """The UIDNEXT Dovecot's index of the folder holds (what its clients were told),
        read with ``doveadm dump``; None when it has none of its own (no index, INDEX=MEMORY,
        only our floor log) or another UIDVALIDITY, or no doveadm is installed."""
        if st.idx is None or self._floor_log(st.idx) or \
                not any(os.path.exists(os.path.join(st.idx, n)) for n in INDEX_FILES):
            return None
        exe = rd.find_doveadm()
        if exe is None:
            return None
        view = rd.Dovecot(exe).index_view(st.idx)
        if view.uidvalidity not in (None, st.uidlist.uidvalidity):
            return None
        return view.next_uid

    def _clean_temporaries(self, d: str) -> None:
        """Temporaries of _write_file (``<name>.<pid>.<thread>.tmp``) and of dotlocks
        left in ``d`` by processes of this host that are gone."""
        try:
            names = os.listdir(d)
        except OSError:
            return
        for n in names:
            m = _WRITE_TMP.match(n)
            if m and not pid_alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(d, n))
        dotlock.clean_temps(d, self._hostname)
        for n in names:
            if n.endswith(LOCK_SUFFIX) and n != UIDLIST + LOCK_SUFFIX:
                # another file's lock (subscriptions.lock) whose owner died holding it
                path = os.path.join(d, n)
                if dotlock.owner_of(path) is not None and dotlock.lock_is_stale(path, self._hostname):
                    dotlock.break_lock(path, self._hostname)

    def _flush(self, st: _State) -> None:
        if st.keywords_dirty:
            self._flush_keywords(st)
        if st.dirty:
            self._flush_uidlist(st)

    def _flush_keywords(self, st: _State) -> None:
        # Dovecot reads dovecot-keywords again only when its mtime, in seconds, is not
        # the one it read (maildir-keywords.c): a session that has the folder open would
        # take a letter added within that second for a lost keyword ("unknown-1") and
        # write that name into the file.  Its own writer makes the mtime grow every
        # time; so does this one (docs/dovecot.md, "Live restores").
        path = os.path.join(st.ctl, KEYWORDS)
        try:
            before = os.stat(path).st_mtime
        except FileNotFoundError:
            before = None
        self._write_file(path, mdnames.render_keywords(st.keywords or []), self._owner_for(st.ctl),
                         newer_than=before)
        st.keywords_dirty = False

    def _flush_uidlist(self, st: _State) -> None:
        self._close_uidlist(st)             # the file is replaced: appends go to the new one
        self._write_file(os.path.join(st.ctl, UIDLIST),
                         st.uidlist.render().encode("utf-8", "surrogateescape"), self._owner_for(st.ctl))
        st.dirty = False
        st.uidlist.header_uidnext = st.uidlist.uidnext

    @staticmethod
    def _new_uidvalidity(last: int = 0) -> int:
        # never one this process gave before: a folder deleted and made again within a
        # second must not reuse its UIDs under the same UIDVALIDITY (RFC 3501)
        v = max(int(time.time()) & 0xFFFFFFFF or 1, _LAST_UIDVALIDITY[0] + 1, last + 1)
        if v > 0xFFFFFFFF:
            v = int(time.time()) & 0xFFFFFFFF or 1
        _LAST_UIDVALIDITY[0] = v
        return v

    def _folder_uidvalidity(self, user: str) -> int:
        """A new folder's UIDVALIDITY by Dovecot's rule (mailbox-uidvalidity.c): above the
        last one the user's mailbox list gave, kept in ``dovecot-uidvalidity`` (8 hex
        digits) in the control root, with the empty ``dovecot-uidvalidity.<hex>`` renamed
        to the new value (one rename: two processes cannot take the same).  A folder
        deleted and made again by another command in the same second, or after the
        clock stepped back, so gets a UIDVALIDITY its name never had.  When the file
        cannot be used, the time (as Dovecot falls back)."""
        try:
            ctl = self._subs_root(user)
            names = os.listdir(ctl)
        except (OSError, StoreError):
            return self._new_uidvalidity()
        path = os.path.join(ctl, UIDVALIDITY_FILE)
        owner = self._owner_for(ctl)
        for _ in range(10):
            marks = [int(n[len(UIDVALIDITY_FILE) + 1:], 16) for n in names
                     if n.startswith(UIDVALIDITY_FILE + ".") and len(n) == len(UIDVALIDITY_FILE) + 9
                     and all(c in "0123456789abcdefABCDEF" for c in n[-8:])]
            cur = max(marks, default=0)
            with contextlib.suppress(OSError, ValueError):
                with open(path, "rb", opener=nofollow_opener) as f:
                    cur = max(cur, int(f.read(8), 16))
            v = self._new_uidvalidity(cur)
            dst = f"{path}.{v:08x}"
            try:
                if cur in marks:
                    os.rename(f"{path}.{cur:08x}", dst)
                else:
                    os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                self._own(dst, owner)
                self._write_file(path, f"{v:08x}".encode(), owner)
                return v
            except (FileNotFoundError, FileExistsError):
                names = os.listdir(ctl)         # another process took it: the next one
            except OSError:
                return v
        return self._new_uidvalidity()

    def uidvalidity_given_since(self, user: str, since: float) -> int | None:
        """Dovecot's counter (``dovecot-uidvalidity`` and its ``.<hex>`` mark in the control
        root, see _folder_uidvalidity): its value when the counter was last moved at or
        after ``since`` (the file's mtime, the mark's ctime: a rename), else None."""
        try:
            ctl = self._subs_root(user)
            names = os.listdir(ctl)
        except (OSError, StoreError):
            return None
        best, when = None, 0.0
        path = os.path.join(ctl, UIDVALIDITY_FILE)
        with contextlib.suppress(OSError, ValueError):
            with open(path, "rb", opener=nofollow_opener) as f:
                best, when = int(f.read(8), 16), os.fstat(f.fileno()).st_mtime
        for n in names:
            if n.startswith(UIDVALIDITY_FILE + ".") and len(n) == len(UIDVALIDITY_FILE) + 9 \
                    and all(c in "0123456789abcdefABCDEF" for c in n[-8:]):
                v = int(n[-8:], 16)
                if best is None or v >= best:
                    with contextlib.suppress(OSError):
                        st = os.lstat(os.path.join(ctl, n))
                        best, when = v, max(when if v == best else 0.0, st.st_ctime)
        return best if best is not None and when >= since else None

    def _quota_stale(self, user: str) -> None:
        """Make Dovecot's Maildir++ quota count the user's mail again after this store
        added or removed message files: its ``maildirsize`` (in the control root) is
        padded with zero lines ("0 0") past MAILDIRSIZE_MAX bytes, the size past which
        the Maildir++ rules (Dovecot's quota-maildir.c included) recalculate it.  Not
        removed: its first line may be the only place the user's limits are written
        (Dovecot does not unlink it either, for that reason).  The totals the lines add
        up to are unchanged for a reader that does not recalculate; no file, nothing to do."""
        try:
            # (no file there, the user's gone or never had one: nothing to do)
            path = os.path.join(self._subs_root(user, seen=True), MAILDIRSIZE)
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (OSError, StoreError):
            return
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISREG(st.st_mode) and st.st_size <= MAILDIRSIZE_MAX:
                pad = b"0 0\n" * ((MAILDIRSIZE_MAX - st.st_size) // 4 + 1)
                # a file cut short of its last LF: the pad starts on a line of its own
                write_all(fd, pad if _ends_with_lf(fd, st.st_size) else b"\n" + pad)
        except OSError:
            pass                    # a quota count left stale is not worth failing a restore
        finally:
            os.close(fd)

    @staticmethod
    def _invalidate_index(d: str | None, names: Iterable[str] = INDEX_FILES) -> None:
        """Remove Dovecot's index files so it re-reads dovecot-uidlist (they would win)."""
        if d is None:
            return                           # INDEX=MEMORY: there are none
        for n in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(d, n))

    @property
    def _dovecot_site(self) -> bool:
        """Dovecot serves this store: its configuration is named (as _doveadm decides)."""
        return bool(self.config.get("dovecot.config")) or self.config.get("store.mail_location") == "doveconf"

    def _new_index(self, idx: str | None, owner) -> None:
        """A folder whose index files are gone (a new folder, or one whose index was
        removed) gets a ``dovecot.index.log`` of a header only, whose initial_modseq is a
        time-derived floor (milliseconds since 1970), before Dovecot builds its index from
        the files.  Dovecot takes a log without an index as its own first step of making
        one (mail-transaction-log-file.c: "creating index file ... use the indexid in
        it"), so every message it then indexes gets a mod-sequence above the floor:
        HIGHESTMODSEQ never goes down under the same UIDVALIDITY (RFC 7162), and a
        CONDSTORE client that cached any value the lost index reached, even after the
        backup, is told every message changed and fetches their flags again.  A higher
        floor than a folder restored before (its value plus fewer than 1,000 changes a
        second since) needs the clock right.  Not for a store no Dovecot is said to serve,
        nor INDEX=MEMORY; a log Dovecot made meanwhile is left alone."""
        if idx is None or not self._dovecot_site:
            return
        stamp = int(time.time())
        hdr = _LOG_HEADER.pack(1, 3, _LOG_HEADER.size, (stamp & 0xFFFFFFFF) or 1, 1, 0, 0, stamp & 0xFFFFFFFF,
                               time.time_ns() // 1_000_000, 1 if sys.byteorder == "little" else 0, 0)
        self._makedirs(idx, owner, aside=True)
        path = os.path.join(idx, "dovecot.index.log")
        tmp = f"{path}.{self._pid}.{threading.get_ident()}.tmp"
        fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)   # (a link planted there: named)
        try:
            try:
                write_all(fd, hdr)
                self._chown(fd, owner)
            finally:
                os.close(fd)
            os.link(tmp, path)         # whole or not at all, and never over Dovecot's own
        except FileExistsError:
            pass
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _reset_index(self, idx: str | None, owner) -> None:
        """Remove the folder's index files (Dovecot reads the uidlist and files again),
        leaving it a mod-sequence floor (_new_index) where Dovecot has not indexed it.

        A folder Dovecot has indexed may be open in a live session (a client re-created
        it and SELECTed it): that session keeps its index in memory and, finding the log
        gone, writes the next one itself (the same indexid, the next file_seq) and logs the
        client out ("IMAP session state is inconsistent, please relogin").  A log of ours
        there instead is a log of another index: with the indexid Dovecot gave (both are
        the time in seconds) "Lost log for seq=1 ... Missing middle file seq=3", an fsck
        and the folder seen empty; with another one "Corrupted transaction log file ...
        indexid changed".  So such a folder's index files are only removed, as before the
        floor.  A floor log of ours that Dovecot has not written to stays as it is (a
        session that read it holds its indexid)."""
        if idx is None:
            return
        if self._floor_log(idx):
            self._invalidate_index(idx, [n for n in INDEX_FILES if n != "dovecot.index.log"])
            return
        indexed = any(os.path.lexists(os.path.join(idx, n)) for n in INDEX_FILES)
        self._invalidate_index(idx)
        if not indexed:
            self._new_index(idx, owner)

    @staticmethod
    def _floor_log(idx: str) -> bool:
        """The folder's dovecot.index.log is a header only that _new_index wrote: the
        first log file (file_seq 1, none before it) and an initial_modseq a time floor
        (milliseconds; Dovecot's own first log starts at 1, a later one continues its
        index's value at a file_seq above 1)."""
        try:
            with open(os.path.join(idx, "dovecot.index.log"), "rb") as f:
                data = f.read(_LOG_HEADER.size + 1)
        except OSError:
            return False
        if len(data) != _LOG_HEADER.size:
            return False
        major, _minor, size, _id, seq, prev_seq, _off, _stamp, modseq, _compat, _u = _LOG_HEADER.unpack(data)
        return major == 1 and size == _LOG_HEADER.size and seq == 1 and prev_seq == 0 and modseq >= 10**12

    # ------------------------------------------------------------------ scanning
    def _scan(self, st: _State) -> dict:
        """base -> (subdir, file name) for every message file in cur/ and new/."""
        clashes: list = []
        st.files, st.whole = list_messages(st.dir, clashes=clashes)
        if clashes:
            self._fix_duplicates(st, clashes)
        return st.files

    def _fix_duplicates(self, st: _State, clashes: list) -> None:
        """Files whose base name a file kept in ``st.files`` has too (list_messages), as
        Dovecot's maildir_fix_duplicate (maildir-sync.c) treats them: one gone since
        was renamed while the folder was read, one that is the same inode is a hard
        link of the same message; any other is a message of its own and is renamed to a
        new base name (its S= and W= sizes, its flags and its subdirectory kept), under
        which _assign_uids gives it a UID at UIDNEXT, as a file Dovecot has not seen
        yet: the backup takes both, and Dovecot, reading the folder next, has both
        under the same UIDs (it would rename the one it met second the same way).
        A name that cannot be changed (a store read-only for us) is a StoreError
        naming the two files: the folder is not backed up rather than one dropped."""
        done = set()
        for sub, fname in clashes:
            if (sub, fname) in done:
                continue
            done.add((sub, fname))
            base, sep, info = fname.partition(":")
            kept = st.files.get(base)
            if kept is None or kept == (sub, fname):
                continue
            path = os.path.join(st.dir, sub, fname)
            try:
                dup = os.lstat(path)
            except FileNotFoundError:
                continue                        # renamed while the folder was read
            try:
                one = os.lstat(os.path.join(st.dir, *kept))
            except FileNotFoundError:
                st.files[base] = (sub, fname)   # the kept name was the one renamed away
                continue
            if (one.st_dev, one.st_ino) == (dup.st_dev, dup.st_ino):
                continue                        # two links of one file: one message
            if self.read_only:
                raise NotNumbered(
                    f"{path}: a second message file with the base name of {os.path.join(st.dir, *kept)} "
                    f"(two messages, one name): not read (this command writes nothing); the next backup, "
                    f"or Dovecot when it opens the folder, gives it a name of its own and a UID")
            new_base = self.duplicate_base(base, dup.st_ctime)
            new = new_base + sep + info
            try:
                os.rename(path, os.path.join(st.dir, sub, new))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreError(
                    f"{path}: a second message file with the base name of {os.path.join(st.dir, *kept)} "
                    f"(two messages, one name: Dovecot renames one) could not be given a name of its own "
                    f"({exc.strerror}): run this as a user that may write the folder, or rename it to a "
                    f"new unique name yourself") from None
            st.files[new_base] = (sub, new)

    def duplicate_base(self, base: str, ctime: float) -> str:
        """A new base name for a second message file whose base name is ``base`` (as
        Dovecot's maildir_fix_duplicate): of the time ``base`` names (else the file's
        ``ctime``), its S= and W= sizes kept (also for reconstruct's own scan)."""
        stored = stored_from_name(base)
        sizes = "".join(m.group(0) for m in (SIZE_RE.search(base), _VSIZE_RE.search(base)) if m)
        return self._new_base(stored if stored is not None else ctime) + sizes

    def _assign_uids(self, st: _State) -> None:
        """Give files Dovecot has not seen yet UIDs at UIDNEXT (as Dovecot would)."""
        by_base = st.uidlist.by_base()
        new = [b for b in st.files if b not in by_base]
        st.unrecordable = [os.path.join(st.dir, *st.files[b]) for b in new if not Uidlist.can_hold(b)]
        if st.unrecordable:
            # a name with a line break would split its record over two lines, and the
            # uidlist could not be read again (by Dovecot either): no UID, named instead
            new = [b for b in new if Uidlist.can_hold(b)]
        if new:
            def order(b: str):
                t = stored_from_name(b)
                return (t if t is not None else float("inf"), b)
            for b in sorted(new, key=order):
                uid = st.uidlist.uidnext
                st.uidlist.records[uid] = ("", b)
                by_base[b] = uid
                st.uidlist.uidnext = uid + 1
            st.max_uid = None
            st.dirty = True
        st.bases = by_base

    def _keywords(self, st: _State) -> list:
        if st.keywords is None:
            st.keywords = mdnames.read_keywords(st.ctl)
        return st.keywords

    def _decode_flags(self, st: _State, letters: str) -> tuple[frozenset, tuple]:
        hit = st.flag_cache.get(letters)
        if hit is None:
            table = self._keywords(st) if mdnames.has_keyword_letters(letters) else None
            hit = st.flag_cache[letters] = mdnames.decode_letters(letters, table)
        return hit

    def _encode_flags(self, st: _State, flags: Iterable[str], keywords: Iterable[str],
                      keep: str = "", uid: int | None = None, existing: bool = False) -> str:
        """The flag letters of a file name (``existing``: for a message that has a UID
        in Dovecot's index already, whose keywords are being set)."""
        _, kws = split_flags(list(flags) + list(keywords))
        dv = self._doveadm() if uid is not None else None
        table = self._keywords(st) if kws or dv is not None else None
        # keywords beyond the 26 letters: Dovecot's index keeps them (doveadm, at unlock)
        overflow = [] if dv is not None and kws else None
        letters, grew = mdnames.encode_letters(flags, keywords, table, keep, where=st.dir,
                                               overflow=overflow)
        if dv is not None:
            # with every letter taken, the index of a message there already may hold
            # keywords it no longer has: it gets the whole set (removing those) at unlock
            if overflow or existing and sum(1 for k in table if k) >= mdnames.MAX_KEYWORDS:
                st.overflow[uid] = tuple(kws)
            else:
                st.overflow.pop(uid, None)
        if grew:
            st.keywords_dirty = True
            st.flag_cache.clear()
        return letters

    def _info(self, st: _State, uid: int, sub: str, fname: str, stat: bool = True,
              stored: float | None = None) -> MessageInfo:
        base, sep, info = fname.partition(":")
        letters = info[2:] if sep and info[:2] == "2," else ""
        hit = st.flag_cache.get(letters)
        flags, kws = hit if hit is not None else self._decode_flags(st, letters)
        path = f"{st.dir}/{sub}/{fname}"
        rec = st.uidlist.records.get(uid)
        guid = base if rec is None else (guid_of(rec[0], rec[1]) if rec[0] else rec[1])
        uidl, order = pop3_of(rec[0], rec[1]) if rec is not None and rec[0] else ("", 0)
        if stored is None:
            stored = stored_from_name(base)
        m = SIZE_RE.search(base)
        if not stat:
            return message_info(uid, flags, kws, 0.0, stored or 0.0, int(m.group(1)) if m else 0,
                                path, 0, 0, 1, guid, stored or 0.0, "", base, uidl, order)
        s = os.stat(path)
        size, compressed = s.st_size, ""
        if m and int(m.group(1)) != size:
            # S= is the message's size: a file of another size may be compressed
            # (Dovecot's zlib plugin); then the message is what it decompresses to
            compressed = compression_of(path)
            if compressed:
                size = int(m.group(1))
        # the file's ctime changes when it is linked (COPY, LMTP to several users) or
        # renamed (MOVE, a flag change): when it entered this folder.  A folder RENAME
        # renames the directory and leaves its files' ctimes (docs/operations.md, -d)
        return message_info(uid, flags, kws, s.st_mtime, stored if stored is not None else s.st_ctime,
                            size, path, s.st_dev, s.st_ino, s.st_nlink, guid, s.st_ctime, compressed,
                            base, uidl, order)

    def _find(self, st: _State, uid: int, user: str, folder: str) -> tuple[str, str, str]:
        """(base, subdir, file name) of ``uid``; rescans once if the file moved."""
        rec = st.uidlist.records.get(uid)
        if rec is None:
            raise MessageGone(user, folder, uid)
        base = rec[1]
        if st.files is None:
            self._scan(st)
        hit = st.files.get(base)
        if hit is None or not os.path.lexists(os.path.join(st.dir, *hit)):
            self._scan(st)
            hit = st.files.get(base)
            if hit is None:
                raise MessageGone(user, folder, uid)
        return base, hit[0], hit[1]

    # ------------------------------------------------------------------ read side
    def folder_names(self, user: str) -> list[str]:
        """From the directory names alone: a damaged uidlist must not hide the others."""
        root = self._root(user)
        if self._layout is not None:
            ul = self._ul(user)
            return ["INBOX"] + [n for n in ul.folders() if n != "INBOX" and
                                os.path.isdir(os.path.join(ul.folder_dir(n), "cur"))]
        names = set()
        with os.scandir(root) as it:
            for e in it:
                if e.name.startswith(".") and e.is_dir(follow_symlinks=False):
                    # (a link to a directory is not read: unlisted_folders names it)
                    logical = self.folder_from_dirname(e.name)
                    # (a raw UTF-8 .Privé next to .Priv&AOk-: not read, unlisted_folders names it)
                    if logical and os.path.isdir(os.path.join(e.path, "cur")) and \
                            self._folder_dir(user, logical, root) == e.path:
                        names.add(logical)
        return ["INBOX"] + sorted(names)

    def folders(self, user: str) -> list[FolderInfo]:
        subs = self._subs.get(self._subs_root(user))
        return [self._folder_info(user, n, subs) for n in self.folder_names(user)]

    def folder(self, user: str, folder: str) -> FolderInfo:
        folder = check_folder_name(folder)
        self._existing_folder_dir(user, folder)
        return self._folder_info(user, folder, self._subs.get(self._subs_root(user, seen=True)))

    def _folder_info(self, user: str, folder: str, subs: set) -> FolderInfo:
        key = (user, folder)
        held = self._held.get(key)
        if held is not None and held.state is not None:
            ul = held.state.uidlist
        else:
            d = self._existing_folder_dir(user, folder)
            ul = read_uidlist_header(self._ctl_idx(user, folder, d)[0])
            if ul is None:                   # never opened by Dovecot: give it a uidlist now
                with self._locked(user, folder) as st:
                    ul = st.uidlist
        return FolderInfo(name=folder, uidvalidity=ul.uidvalidity, uidnext=ul.uidnext,
                          subscribed=folder in subs, guid=uidlist_mod.mailbox_guid(ul.extra))

    def snapshot(self, user: str, folder: str, since: float | None = None,
                 known=None) -> FolderSnapshot:
        folder = check_folder_name(folder)
        subs = self._subs.get(self._subs_root(user))
        snap = self._read_only_snapshot(user, folder, since, known, subs)
        if snap is not None:
            return snap
        with self._locked(user, folder) as st:
            self._scan(st)
            numbered = st.uidlist.uidnext
            self._assign_uids(st)
            numbered_at = time.time()
            msgs = self._snapshot_messages(st, since, known)
            if st.uidlist.uidnext > numbered:
                # files no uidlist line named (new mail Dovecot has not seen yet, or every
                # file of a folder whose dovecot-uidlist was lost and made again by a
                # delivery) got their UIDs here, now: they entered the folder's numbering
                # now, whatever their ctimes say, and no earlier backup holds them under
                # these UIDs, so an incremental by date (-d) must carry them
                msgs = [dataclasses.replace(m, changed=max(m.changed, numbered_at))
                        if m.uid >= numbered else m for m in msgs]
            unreadable = None
            try:
                acl = self._read_acl(st.dir, user, folder)
            except OSError as exc:
                # the mail is not lost for it: archived without the ACL, which is named
                acl, unreadable = None, exc.strerror or str(exc)
            info = FolderInfo(name=folder, uidvalidity=st.uidlist.uidvalidity,
                              uidnext=st.uidlist.uidnext, subscribed=folder in subs,
                              guid=uidlist_mod.mailbox_guid(st.uidlist.extra), acl=acl)
            ctl = st.ctl
        snap = FolderSnapshot(info=info, messages=msgs)
        if unreadable:
            snap.warnings.append(f"its access control list ({ACL_FILE}) could not be read "
                                 f"({unreadable}): the folder and its mail are archived without it, "
                                 f"and a restore leaves the folder's ACL as it finds it")
        self._unseen_warning(st, snap)
        self._index_keywords(user, folder, ctl, snap)
        return snap

    def readahead(self, user: str, folder: str) -> tuple | None:
        d = self._folder_dir(user, folder)
        # what a snapshot reads: the fingerprint's files, and every file in the directories
        uidlist, cur, new, tmp, keywords = _fingerprint_files(d, self._ctl_idx(user, folder, d)[0])
        return [uidlist, keywords], [tmp, new, cur], None

    def _read_only_snapshot(self, user: str, folder: str, since, known, subs) -> FolderSnapshot | None:
        """The snapshot without the folder's dotlock, as Dovecot's own readers take it:
        read dovecot-uidlist, list new/ and cur/, and check that the uidlist is the
        same file afterwards.  None (take the locked way) when anything asks for a
        writer: a dotlock present (someone writes: wait for them), a file without a
        UID yet (it gets one under the lock), a uidlist missing, torn or replaced
        meanwhile, a tmp/ or new/ missing, a temporary a writer of ours left in tmp/."""
        if (user, folder) in self._held:
            return None                      # our own lock: its state is the truth
        d = self._existing_folder_dir(user, folder)
        ctl, idx = self._ctl_idx(user, folder, d)
        path = os.path.join(ctl, UIDLIST)
        try:
            if os.path.lexists(path + LOCK_SUFFIX):
                return None
            seen = time.time()
            fp = _fingerprint_stats(d, ctl)  # before anything is read: a change after it shows
            before = fp[0]
            with open_uidlist(path) as f:
                ul = Uidlist.parse(f.read(), path)
            if ul.torn:
                return None
            for n in os.listdir(os.path.join(d, "tmp")):
                if _OUR_BASE.match(n):
                    return None              # maybe a killed writer of ours: _recover
            clashes: list = []
            files, whole = list_messages(d, before=[fp[2], fp[1]], clashes=clashes)
            by_base = ul.by_base()
            if clashes or any(b not in by_base for b in files):
                return None                  # (two files with one name: _fix_duplicates)
            st = _State(dir=d, ctl=ctl, idx=idx, uidlist=ul, disk_uidnext=ul.uidnext,
                        files=files, bases=by_base)
            st.whole = whole
            after = os.stat(path)
            try:
                acl = self._read_acl(d, user, folder)   # after the fingerprint: a change shows
            except OSError:
                return None                  # the locked way names it
        except (FileNotFoundError, StoreError):
            return None                      # the locked way says what is wrong
        except OSError as exc:
            raise os_store_error(exc, f"{user}/{folder}") from None
        if stat_part(after) != before:
            return None                      # changed under us
        msgs = self._snapshot_messages(st, since, known)
        info = FolderInfo(name=folder, uidvalidity=ul.uidvalidity, uidnext=ul.uidnext,
                          subscribed=folder in subs, guid=uidlist_mod.mailbox_guid(ul.extra), acl=acl)
        snap = FolderSnapshot(info=info, messages=msgs)
        self._unseen_warning(st, snap)
        if not self._index_keywords(user, folder, ctl, snap, no_table=not fp[4]) and \
                settled(fp, seen) and st.whole:
            # (and the mailbox GUID of the uidlist header the fingerprint covers: an
            # unchanged folder's member is written without reading it again)
            snap.fingerprint = ["maildir", ul.uidvalidity, ul.uidnext, *fp, info.guid]
        return snap

    def arrivals(self, user: str, folder: str, uidnext: int, fingerprint: list | None = None) -> list:
        """Dovecot gives a message moved or copied in its UID when it does it (a client's
        COPYUID names it): the uidlist's records at or above ``uidnext``.  A uidlist whose
        status is the fingerprint's is not read (one stat)."""
        try:
            folder = check_folder_name(folder)
            d = self._existing_folder_dir(user, folder)
            ctl = self._ctl_idx(user, folder, d)[0]
            if fingerprint is not None and len(fingerprint) > 3 and \
                    stat_part(os.stat(os.path.join(ctl, UIDLIST))) == fingerprint[3]:
                return []
            ul = read_uidlist(ctl)
        except (StoreError, OSError):
            return []                        # gone, or unreadable: its own backup said so
        if ul is None or ul.uidnext <= uidnext:
            return []
        new = {rec[1]: (uid, rec[0]) for uid, rec in ul.records.items() if uid >= uidnext}
        if not new:
            return []
        files, _whole = list_messages(d)
        out = []
        for base, (uid, ext) in new.items():
            hit = files.get(base)
            if hit is None:
                continue
            path = os.path.join(d, *hit)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            # a file Dovecot moved or copied keeps its GUID (maildir-copy.c): as its base
            # name, or, under a new name, in the record's G field; a GUID that is a Maildir
            # name tells when the message first came into the store.  A delivery's is the
            # delivery's, whatever its INTERNALDATE
            out.append((uid, path, st, stored_from_name(guid_of(ext, base))))
        return sorted(out, key=lambda t: t[0])

    # ------------------------------------------------------------------ access control lists
    carries_acl = True

    def _read_acl(self, d: str, user: str, folder: str) -> str | None:
        """The text of the folder's dovecot-acl ("" when it has none; bytes that are not
        UTF-8 kept as surrogates, for the backup to name), None when this store does
        not carry ACLs.  At most one byte more than an archive holds is read.  Raises
        OSError when it cannot be read."""
        if not self.carries_acl:
            return None
        try:
            with open(os.path.join(d, ACL_FILE), "rb", opener=nofollow_opener) as f:
                data = f.read(ACL_MAX_BYTES + 1)
        except FileNotFoundError:
            return ""
        return data.decode("utf-8", "surrogateescape")   # (OSError: the caller's)

    single_copies = True

    def identity_differences(self, m: MessageInfo, guid: str, basename: str, pop3_uidl: str,
                             pop3_order: int) -> list[tuple[str, object, object]]:
        """As a restore's append keeps them: the GUID a uidlist G field can hold (or the
        base name it is), the archived base name where a file can have it (a Maildir
        name whose S= and W= are the restored file's sizes, short enough for its flag
        letters), the P and O fields Dovecot can read back."""
        out: list = []
        if guid and m.guid != guid and _GUID_OK.match(guid):
            out.append(("X-GUID", m.guid, guid))
        letters = os.path.basename(m.path).partition(":2,")[2]
        if (m.basename and m.basename != basename and not m.compressed and _base_fits(basename, letters)
                and _sizes_match_or_none(basename, m)):
            out.append(("base name (POP3 UIDL %f)", m.basename, basename))
        want = _kept_pop3(pop3_uidl, pop3_order)
        if (m.pop3_uidl, m.pop3_order) != want:
            out.append(("POP3 UIDL and order (uidlist P and O)", (m.pop3_uidl, m.pop3_order), want))
        return out

    def acl(self, user: str, folder: str) -> str | None:
        try:
            return self._read_acl(self._existing_folder_dir(user, folder), user, folder)
        except OSError as exc:
            raise os_store_error(exc, f"{user}/{folder}") from None

    def set_acl(self, user: str, folder: str, acl: str) -> bool:
        """Write the folder's dovecot-acl atomically (a temporary beside it, renamed),
        owned as its folder and moded as Dovecot moded it (the folder directory's
        permissions without execute bits); "" removes it.  True when the file changed.
        Dovecot re-reads a changed file (acl_cache_secs).

        The file is read, compared and written under Dovecot's own lock of it,
        ``dovecot-acl.lock`` (acl-backend-vfile-update.c: IMAP SETACL/DELETEACL and
        doveadm acl take it to read, change and replace the file), waited for as long
        as store.locktimeout (30 s, Dovecot's timeout there too) and broken as Dovecot
        breaks it (unchanged for 120 s): without it a SETACL that read the file before
        this write replaced it after, and the restored ACL was gone with no word.
        :class:`LockTimeout` when it cannot be had (nothing written)."""
        if not self.carries_acl:
            return False
        d = self._existing_folder_dir(user, folder)
        path = os.path.join(d, ACL_FILE)
        if acl == "" and not os.path.lexists(path):
            # none to remove (a new folder): as the locked unlink would find, without the lock;
            # a client's SETACL now comes after this
            return False
        lockpath = path + dotlock.LOCK_SUFFIX
        try:
            try:
                dotlock.acquire(lockpath, self._lock_timeout(), f"the access control list of {user}/{folder} "
                                f"({lockpath})", self._pid, self._hostname,
                                lambda fd: self._chown(fd, self._owner_for(d)),
                                stale=lambda p: dotlock.written_lock_is_stale(p, path, self._hostname))
            except dotlock.Unlocked:
                lockpath = None         # a read-only folder: the write below says so
        except OSError as exc:
            raise os_store_error(exc, f"{user}/{folder}") from None
        try:
            return self._set_acl_locked(user, d, path, acl, folder)
        finally:
            if lockpath is not None:
                dotlock.release(lockpath)

    def _set_acl_locked(self, user: str, d: str, path: str, acl: str, folder: str) -> bool:
        try:
            if acl == "":
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    return False
            else:
                try:
                    with open(path, "rb", opener=nofollow_opener) as f:
                        if f.read(ACL_MAX_BYTES + 1) == acl.encode("utf-8", "surrogateescape"):
                            return False     # as it is (a chain run again): not rewritten
                except FileNotFoundError:
                    pass
                mode = stat_mod.S_IMODE(os.stat(d).st_mode) & 0o666
                # fsynced before the rename, as Dovecot does ("we really don't want to
                # lose ACL files' contents")
                self._write_file(path, acl.encode("utf-8", "surrogateescape"), self._owner_for(d),
                                 fsync=True, mode=mode or 0o600)
            # the login's list of its folders with ACLs (LIST of a shared namespace reads
            # it) no longer says what is on disk: Dovecot makes it again when it is missing
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._root(user), ACL_LIST_FILE))
        except OSError as exc:
            raise os_store_error(exc, f"{user}/{folder}") from None
        return True

    def folder_unchanged(self, user: str, folder: str, fingerprint: list) -> FolderInfo | None:
        """True to the fingerprint (dovecot-uidlist, cur/ new/ tmp/, dovecot-keywords and
        dovecot-acl as they were, all settled before that snapshot read them): the folder
        holds the same messages under the same names, so the same UIDs and flags; and the
        same uidlist header, so the mailbox GUID the fingerprint recorded (one from before
        it did is read from the header), and the same ACL file (read only when there is
        one: a folder without has the ACL "")."""
        if not (isinstance(fingerprint, list) and len(fingerprint) in (9, 10)
                and fingerprint[0] == "maildir") or (user, folder) in self._held:
            return None
        guid = fingerprint[9] if len(fingerprint) == 10 else None
        if guid is not None and not isinstance(guid, str):
            return None
        try:
            folder = check_folder_name(folder)
            part = self._user_parts.get(user)
            if self._layout is None and part is not None:
                # the user's Maildir where user_partition found it (the selection
                # did): not looked at again, its folder's stats below fail or differ if
                # it is not there any more
                root = os.path.join(self._parts[part], user, "Maildir")
                d = ctl = self._folder_dir(user, folder, root)
                subs_root = root
            elif self._layout is not None:
                # the login's directories as the layout names them, not looked for
                # first (user_partition): the stats below fail or differ if not there
                ul = self._ul(user)
                d = ul.folder_dir(folder)
                ctl = ul.control_dir(folder)
                subs_root = ul.control_root
            else:
                d = self._folder_dir(user, folder)
                ctl, _ = self._ctl_idx(user, folder, d)
                subs_root = self._subs_root(user)
            if guid is None:
                # the mailbox GUID from the header line, read before the check: a uidlist
                # replaced after this read is not the fingerprint's
                with open(os.path.join(ctl, UIDLIST), encoding="utf-8", errors="surrogateescape") as f:
                    guid = uidlist_mod.mailbox_guid(f.readline().split()[1:])
            # (read before the check, as the GUID; none when the check finds none)
            acl = self._read_acl(d, user, folder) if fingerprint[8] != [] else "" if self.carries_acl else None
            if not _fingerprint_same(d, ctl, fingerprint[3:9]) or \
                    os.path.lexists(os.path.join(ctl, UIDLIST + LOCK_SUFFIX)):
                return None
        except (OSError, StoreError, layout_mod.LayoutError):
            return None
        return FolderInfo(name=folder, uidvalidity=fingerprint[1], uidnext=fingerprint[2],
                          subscribed=folder in self._subs.get(subs_root), guid=guid, acl=acl)

    def _snapshot_messages(self, st: _State, since, known) -> list:
        """The folder's messages in UID order.  A uidlist line whose file is not there
        was expunged (Dovecot drops the line later); where new/ or cur/ changed at every
        read (list_messages), such UIDs are put in ``st.unseen`` too: they may have been
        renamed out of sight at every read."""
        files = st.files
        msgs = []
        unseen = st.unseen = []
        for uid in sorted(st.uidlist.records):
            base = st.uidlist.records[uid][1]
            hit = files.get(base)
            if hit is None:
                if not st.whole:
                    unseen.append(uid)
                continue
            if known is not None and since is None and uid in known:
                # the base of an incremental held it: flags from the name, no stat
                msgs.append(self._info(st, uid, *hit, stat=False))
                continue
            for attempt in range(RENAME_RETRIES + 1):
                try:
                    msgs.append(self._info(st, uid, *hit))
                    break
                except FileNotFoundError:
                    if os.path.islink(os.path.join(st.dir, *hit)):
                        # a link to a missing file: listed so the backup names it
                        msgs.append(self._info(st, uid, *hit, stat=False, stored=stored_from_name(base)))
                        break
                # renamed (a client changed its flags) or expunged right now: list the
                # folder again and look for it there, as Dovecot's own readers do
                files = self._scan(st)
                hit = files.get(base)
                if hit is None:
                    if not st.whole:
                        unseen.append(uid)
                    break                # expunged
            else:
                # renamed again at every look: listed from its name, so the backup reads
                # it (and names it if it cannot) rather than leave it out unsaid
                msgs.append(self._info(st, uid, *hit, stat=False))
        if unseen:
            msgs = self._look_again(st, msgs, unseen)
        return msgs

    def _look_again(self, st: _State, msgs: list, unseen: list) -> list:
        """The messages no listing had while clients renamed files in the folder (flag
        changes: a rename moves a name in the directory, and a listing taken meanwhile
        may see neither the old name nor the new one), looked for in more listings, a
        little apart (1 ms, doubling): each listing misses a message only while it is
        being renamed, so a few listings find nearly all of them (CI saw 80 of a folder's
        messages missed at every one of 11 listings taken back to back while 3 clients
        set flags on 1:*).  A listing taken whole (nothing changed while it was read)
        without a message: it was expunged."""
        for attempt in range(RENAME_RETRIES):
            time.sleep(0.001 * (1 << min(attempt, 6)))
            files = self._scan(st)
            still = []
            for uid in unseen:
                hit = files.get(st.uidlist.records[uid][1])
                if hit is None:
                    still.append(uid)
                    continue
                try:
                    msgs.append(self._info(st, uid, *hit))
                except FileNotFoundError:
                    still.append(uid)
            unseen[:] = [] if st.whole else still
            if not unseen:
                break
        msgs.sort(key=lambda m: m.uid)
        return msgs

    def _unseen_warning(self, st: _State, snap: FolderSnapshot) -> None:
        for path in st.unrecordable:
            snap.warnings.append(
                f"{path!r}: the message file's name holds a line break, which dovecot-uidlist (one "
                f"line per message) cannot hold: it has no UID and is not in this archive; rename "
                f"it to a name without one (Dovecot cannot keep it either), and back up again")
        if st.unseen:
            some = " ".join(str(u) for u in st.unseen[:10]) + (" ..." if len(st.unseen) > 10 else "")
            snap.warnings.append(
                f"{len(st.unseen)} messages (UIDs {some}) were not found: "
                f"clients renamed files in the folder while it was read, at every one of "
                f"{RENAME_RETRIES + 1} reads; they were expunged or are not in this archive "
                f"(the next backup takes them)")

    def message(self, user: str, folder: str, uid: int) -> MessageInfo:
        folder = check_folder_name(folder)
        held = self._held.get((user, folder))
        if held is not None and held.state is not None:
            st = held.state
        else:
            d = self._existing_folder_dir(user, folder)
            ctl, idx = self._ctl_idx(user, folder, d)
            ul = read_uidlist(ctl)
            if ul is None:
                raise MessageGone(user, folder, uid)
            st = _State(dir=d, ctl=ctl, idx=idx, uidlist=ul, disk_uidnext=ul.uidnext)
        for attempt in (0, 1):
            base, sub, fname = self._find(st, uid, user, folder)
            try:
                return self._info(st, uid, sub, fname)
            except FileNotFoundError:
                st.files = None
        raise MessageGone(user, folder, uid)

    # ------------------------------------------------------------------ subscriptions
    def other_subscriptions(self, user: str, folders=None) -> list[str]:
        """The names of the user's subscriptions file that are no folder of it (Dovecot
        keeps a subscription after an IMAP DELETE or RENAME; LSUB shows it)."""
        names = self._subs.get(self._subs_root(user))
        if not names:
            return []
        return sorted(names - set(self.folder_names(user) if folders is None else folders))

    def subscribe_names(self, user: str, names, on: bool = True) -> None:
        names = [check_folder_name(n) for n in names]
        if not names:
            return
        root = self._subs_root(user)
        have = self._subs.get(root)
        changes = {n: on for n in names if (n in have) != on}
        if not changes:
            return
        if self.in_batch and self.defer_subscriptions:
            self._subs.pending.setdefault(root, {}).update(changes)
            self._subs_users[root] = user
            return
        self._write_subscriptions(user, root, changes)

    def unsubscribe_names(self, user: str, names) -> None:
        self.subscribe_names(user, names, on=False)

    def _sweep_subscriptions(self, user: str) -> None:
        """Once per user: what a killed writer of the subscriptions left (its temporary
        file, its lock, its lock's temporary), which no later write may come to clean (the
        file was already right).  Maildir++ sweeps the root with INBOX; a restore beside
        (-n) or another layout may never lock INBOX."""
        if user in self._subs_swept or self.read_only:   # (every folder lock asks: no path work then)
            return
        self._subs_swept.add(user)
        try:
            root = self._subs_root(user)
        except (StoreError, OSError):
            return
        self._clean_temporaries(root)

    def _set_subscribed(self, user: str, folder: str, on: bool) -> None:
        """Inside a :meth:`batch` the change waits (in the cache, which every read of
        this store sees) and the next :meth:`sync` writes each user's changes in one
        rewrite of the file, before its syncfs: a restore records a folder complete only
        after a sync (asm/restore/engine.py, Restorer._record_done), so its subscription
        is on disk by then, and a user of many folders costs one rewrite per sync, not
        one per folder (each a rename over the file, which ext4 writes out at once)."""
        root = self._subs_root(user, seen=True)      # (every caller has just found the folder)
        if (folder in self._subs.get(root)) == on:
            # as asked already (the file is read whole without the lock: it is only ever
            # replaced by a rename); a writer changing it now comes after this
            return
        if self.in_batch and self.defer_subscriptions:
            self._subs.pending.setdefault(root, {})[folder] = on
            self._subs_users[root] = user
            return
        self._write_subscriptions(user, root, {folder: on})

    def _write_subscriptions(self, user: str, root: str, changes: dict) -> None:
        """``changes`` ({folder: subscribed}) made to the file, under its lock."""
        path = os.path.join(root, SUBSCRIPTIONS)
        lockpath = path + LOCK_SUFFIX
        try:
            self._acquire_dotlock(lockpath, self._lock_timeout(), f"subscriptions of {user}")
        except Unlocked:
            raise StoreError(f"cannot write {path}: permission denied") from None
        try:
            self._sweep_subscriptions(user)
            now = subscriptions.read(root, self._utf8)
            subscribed = subscriptions.apply(now, changes)
            if subscribed == now:
                return
            self._write_file(path, subscriptions.render(subscribed, self._utf8), self._owner_for(root))
            self._subs.put(root, subscribed)        # (under its lock: not read back)
        finally:
            dotlock.release(lockpath)

    def _flush_subscriptions(self) -> None:
        """Write the subscriptions a batch changed, one rewrite per user; each user's
        that is written leaves the pending ones, so a failure (its lock held past
        store.locktimeout, a full disk) leaves the others' and its own to the next sync.
        The first failure is raised once every user was tried."""
        failed = None
        for root in list(self._subs.pending):
            changes = self._subs.pending[root]
            try:
                self._write_subscriptions(self._subs_users[root], root, changes)
            except FileNotFoundError:
                pass                            # (the user's Maildir went: nothing to subscribe)
            except (StoreError, OSError) as exc:
                if isinstance(exc, OSError):
                    # a store failure, with its status (a full disk: exit 13), never the device's
                    exc = os_store_error(exc, f"{self._subs_users[root]}: subscriptions")
                failed = failed or exc
                continue
            del self._subs.pending[root]
            self._subs_users.pop(root, None)
        if failed is not None:
            raise failed

    def sync(self) -> None:
        """The subscriptions changed in the batch written (one rewrite per user), then
        one syncfs per filesystem of the store: a failure to write them still syncs the
        rest, and is raised after."""
        try:
            self._flush_subscriptions()
        finally:
            super().sync()

    # ------------------------------------------------------------------ users & folders
    def check_new_folder(self, user: str, folder: str) -> str:
        """As Dovecot names it on disk (Maildir++ '.A.B' in modified UTF-7, or the
        layout's levels), each directory of its mail, control and index paths fits in
        one path level."""
        folder = check_folder_name(folder)
        d = self._folder_dir(user, folder)
        ctl, idx = self._ctl_idx(user, folder, d)
        levels = [level for path in {d, ctl, idx} if path for level in path.split(os.sep)]
        return check_folder_levels(folder, levels, "maildir")

    def check_new_user(self, user: str) -> str:
        """Without a layout the user's home is one directory named as the user ID."""
        check_user_name(user)
        return user if self._layout is not None else check_user_level(user, user, "maildir")

    @store_os_errors
    def create_user(self, user: str, partition: str = "primary", uidvalidity: int | None = None,
                    guid: str = "") -> None:
        """The user's Maildir is built complete (cur/ new/ tmp/, dovecot-uidlist with
        INBOX's UIDVALIDITY and mailbox GUID, subscriptions) under a temporary name in the home and
        renamed into place: a kill never leaves a Maildir without its INBOX."""
        self.check_new_user(user)
        if self.exists(user):
            raise UserExists(user)
        if self._layout is not None:
            return self._create_layout_user(user, partition, uidvalidity, guid)
        part = self.partition_path(partition)
        self.check_partition(partition, writing=True)
        make_dirs(part)                         # (0755 whatever the umask, as the partition docs say)
        owner = self._owner_for(part)
        home = os.path.join(part, user)
        if not os.path.isdir(home):
            with contextlib.suppress(FileExistsError):
                self._mkdir(home, owner)
        self._clean_new_dirs(home)
        root = os.path.join(home, "Maildir")
        new = os.path.join(home, f"{NEW_PREFIX}{self._hostname}.{self._pid}.{os.urandom(4).hex()}")
        try:
            self._mkdir(new, owner)
            for sub in ("new", "tmp", "cur"):
                self._mkdir(os.path.join(new, sub), owner)
            ul = Uidlist(uidvalidity=uidvalidity or self._new_uidvalidity(), uidnext=1,
                         extra=uidlist_mod.with_mailbox_guid([], guid))
            self._write_file(os.path.join(new, UIDLIST), ul.render().encode(), owner)
            self._new_index(new, owner)
            # subscribed, as IMAP clients do on first login
            self._write_file(os.path.join(new, SUBSCRIPTIONS), subscriptions.render(["INBOX"]), owner)
            try:
                os.rename(new, root)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise UserExists(user) from None
                raise
        except BaseException:
            remove_tree(new)
            raise
        self._user_parts[user] = partition

    def _create_layout_user(self, user: str, partition: str, uidvalidity: int | None,
                            guid: str = "") -> None:
        """create_user where store.mail_location says: the Maildir is built under a
        temporary name next to its place and renamed; control and index files that a
        lost mail tree left behind (CONTROL=, INDEX= elsewhere) are replaced or removed,
        so Dovecot never mixes them with the new Maildir."""
        self.partition_path(partition)
        self.check_partition(partition, writing=True)
        ul = self._ul(user)
        owner = self._owner_for(self.partition_path(partition))
        parent = os.path.dirname(ul.root)
        self._makedirs(parent, owner)
        self._clean_new_dirs(parent)
        new = os.path.join(parent, f"{NEW_PREFIX}{self._hostname}.{self._pid}.{os.urandom(4).hex()}")

        def built(path: str) -> str:
            # a path under the mail root is made in the Maildir being built (DIRNAME: INBOX's
            # files are in ROOT/INBOX/DIRNAME): made at its place first, the root would be
            # there before the rename, which then failed (the user taken as existing, its
            # INBOX missing: a restore into an emptied store failed every folder, exit 17)
            if path == ul.root or path.startswith(ul.root + "/"):
                return new + path[len(ul.root):]
            return path
        inbox_ctl = built(ul.control_dir("INBOX"))
        try:
            self._mkdir(new, owner)
            if ul.inbox_dir == ul.root:
                for sub in ("new", "tmp", "cur"):
                    self._mkdir(os.path.join(new, sub), owner)
            uv = uidvalidity or self._new_uidvalidity()
            ul_text = Uidlist(uidvalidity=uv, uidnext=1,
                              extra=uidlist_mod.with_mailbox_guid([], guid)).render().encode()
            for ctl, data in ((inbox_ctl, ul_text), (built(ul.control_root), subscriptions.render(["INBOX"]))):
                name = UIDLIST if data is ul_text else SUBSCRIPTIONS
                if ctl == new:
                    self._write_file(os.path.join(new, name), data, owner)
                else:
                    self._makedirs(ctl, owner)
                    if data is ul_text:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(os.path.join(ctl, KEYWORDS))
                    self._write_file(os.path.join(ctl, name), data, owner)
            for d, names in ((ul.index_dir("INBOX"), INDEX_FILES), (ul.list_index_dir, LIST_INDEX_FILES)):
                if d is not None and built(d) == d:         # (under the root: nothing there yet)
                    self._invalidate_index(d, names)
            inbox_idx = ul.index_dir("INBOX")
            if inbox_idx == ul.root:
                self._new_index(new, owner)
            try:
                os.rename(new, ul.root)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise UserExists(user) from None
                raise
        except BaseException:
            remove_tree(new)
            raise
        if ul.inbox_dir != ul.root:                  # INBOX= or DIRNAME: INBOX elsewhere
            for sub in ("new", "tmp", "cur"):
                self._makedirs(os.path.join(ul.inbox_dir, sub), owner)
        if inbox_idx != ul.root:                     # INDEX= (or INBOX=) elsewhere
            self._new_index(inbox_idx, owner)

    def _clean_new_dirs(self, home: str) -> None:
        """Maildirs a killed create_user left half-built under their temporary names."""
        prefix = f"{NEW_PREFIX}{self._hostname}."
        try:
            names = [n for n in os.listdir(home) if n.startswith(prefix)]
        except OSError:
            return
        for n in names:
            pid_s = n[len(prefix):].partition(".")[0]
            if pid_s.isdigit() and not pid_alive(int(pid_s)):
                remove_tree(os.path.join(home, n))

    @store_os_errors
    def delete_user(self, user: str) -> None:
        """The user's Maildir is renamed aside first (DELETED_PREFIX, next to it), in one
        step: from then on the user is gone for every reader and writer (a backup that
        was reading it finds it gone and can make nothing in it again), then removed.
        Removal that fails leaves the user deleted and says so; run again, it finishes
        what is left."""
        try:
            root = self._root(user)
        except NoSuchUser:
            remains = self._deleted_remains(user)
            if not remains:
                raise
            return self._remove_deleted(user, remains)
        aside = os.path.join(os.path.dirname(root), f"{DELETED_PREFIX}{_hex_login(user)}.{self._pid}."
                                                    f"{os.urandom(4).hex()}")
        home = self._home(user) if self._layout is not None else None
        try:
            os.rename(root, aside)
        except FileNotFoundError:
            raise NoSuchUser(user) from None           # deleted meanwhile by another run
        self._user_parts.pop(user, None)
        for r in [r for r, u in self._subs_users.items() if u == user]:
            self._subs.pending.pop(r, None)         # (its subscriptions went with it)
            del self._subs_users[r]
        self._remove_deleted(user, [aside])
        if self._layout is not None:
            self._remove_empty_levels(user, root, home)

    def _remove_empty_levels(self, user: str, root: str, home: str) -> None:
        """After a delete_user with store.mail_location: the directories that held only
        the user's Maildir (``mail/%u`` of ``mail/%u/Maildir``), when empty, and the
        user's delivery hold under $IMS_HOME/data/maildir-hold when it queues nothing,
        so that nothing of the user is left (never the home, never a level the template
        does not name by the user, never a directory that holds anything)."""
        ul, template = self._ul(user), self._layout.location.root
        top = fixed_prefix(template) if template.startswith("/") else None
        d = os.path.dirname(os.path.normpath(root))
        while top is not None and d.startswith(top.rstrip("/") + "/") and d != ul.home:
            try:
                os.rmdir(d)
            except OSError:
                break
            d = os.path.dirname(d)
        if os.path.dirname(home) == os.path.join(self.config.home, "data", "maildir-hold"):
            for d in (os.path.join(home, QUEUE_DIR), home):
                try:
                    os.rmdir(d)
                except OSError:
                    break

    def _deleted_remains(self, user: str) -> list[str]:
        """What a delete_user of ``user`` renamed aside and could not remove."""
        prefix = f"{DELETED_PREFIX}{_hex_login(user)}."
        try:
            check_user_name(user)
            parents = [os.path.dirname(self._ul(user).root)] if self._layout is not None else \
                [os.path.join(p, user) for p in self._parts.values()]
        except StoreError:
            return []
        out = []
        for parent in parents:
            with contextlib.suppress(OSError):
                out += [os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(prefix)]
        return out

    def _remove_deleted(self, user: str, remains: list[str]) -> None:
        """Remove a deleted user's Maildir renamed aside (``remains``) and the rest of
        its home (control and index trees of its own with store.mail_location)."""
        try:
            for path in remains:
                remove_tree(path, strict=True)
            if self._layout is None:
                remove_tree(os.path.dirname(remains[0]), strict=True)      # the home (delivery hold, ...)
            else:
                ul, loc = self._ul(user), self._layout.location
                # control and index trees only when they are the user's own (a variable in them)
                for path, template in ((ul.control_root, loc.control), (ul.index_root, loc.index)):
                    if path and template and "%" in template and path != ul.root:
                        remove_tree(path)
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise StoreError(f"user {user!r} is deleted (no longer listed or backed up), but its mail could not "
                             f"all be removed: {exc.strerror or exc}{where}; fix that and run "
                             f"mboxutil -d user/{user} again to finish") from None

    @store_os_errors
    def _make_way_for_a_subscriptions_folder(self, user: str, folder: str, d: str) -> None:
        """A LAYOUT=fs folder named ``subscriptions`` (Dovecot makes one when asked: it
        then keeps no subscription for the user, LSUB and SUBSCRIBE fail) has its
        directory where the subscriptions file would be.  Where that file holds no more
        than INBOX (what :meth:`create_user` writes) it gives way; one with the user's
        subscriptions is kept, and the folder refused in one line."""
        if not os.path.isfile(d) or os.path.islink(d):
            return
        path = os.path.join(self._subs_root(user), SUBSCRIPTIONS)
        if os.path.normpath(path) != os.path.normpath(d):
            return
        if set(subscriptions.read(os.path.dirname(path), self._utf8)) <= {"INBOX"}:
            os.unlink(path)
            self._subs.put(os.path.dirname(path), [])
            return
        raise StoreError(f"cannot create folder {folder!r} of user {user!r}: with LAYOUT=fs its directory is "
                         f"{d}, the user's subscriptions file, which holds subscriptions (Dovecot cannot keep "
                         f"both): move that file aside, then run the restore again")

    def create_folder(self, user: str, folder: str, uidvalidity: int | None = None,
                      uidnext: int = 1, subscribed: bool = False, guid: str = "",
                      hold: contextlib.ExitStack | None = None) -> FolderInfo:
        """A folder exists (for Dovecot and for us) once its cur/ does.  A new folder's
        directory is made whole under a name Dovecot does not list -- new/ tmp/, its
        maildirfolder and dovecot-uidlist (and index floor) where they live in it, cur/
        last -- and renamed into place in one step (:meth:`_mkdir_staged`), so neither a
        kill nor a client sees it half made.  (Made in place, a client's SELECT between
        its new/ tmp/ and its cur/ made Dovecot add cur/ itself, with a uidlist and index
        of its own, and the restore then refused: "folder already exists", exit 17.)
        A directory that is there already without cur/ (a LAYOUT=fs level that holds
        subfolders, a damaged INBOX) gets its files first and cur/ last, in place.
        INBOX can be created only in a Maildir that lacks its cur/ (a damaged one).
        ``hold``: the folder's lock (:meth:`lock`) is entered on it and held on from
        the creation (a folder made under another name: its dotlock taken in it before
        the rename, so it appears locked), with the state this made where this call made
        the directory and its control files are in it (nothing to read again)."""
        folder = self.check_new_folder(user, folder)
        d = self._folder_dir(user, folder)
        root = self._root(user)
        link = _link_below(root, d)
        if link is not None:
            raise LinkInStore(link)       # nothing made through it (_refuse_links)
        if os.path.isdir(os.path.join(d, "cur")):
            raise FolderExists(user, folder)
        self._make_way_for_a_subscriptions_folder(user, folder, d)
        owner = self._owner_for(root)
        ctl, idx = self._ctl_idx(user, folder, d)
        ul = Uidlist(uidvalidity=uidvalidity or self._folder_uidvalidity(user), uidnext=max(1, uidnext),
                     extra=uidlist_mod.with_mailbox_guid([], guid))
        if ctl != d:
            self._makedirs(ctl, owner, aside=True)
        lockpath = os.path.join(ctl, UIDLIST + LOCK_SUFFIX)
        staged = d != root and not os.path.lexists(d)
        if staged:
            # LAYOUT=fs: parent levels too (given to the owner if a killed run left them),
            # each appearing whole (_mkdir_staged)
            self._makedirs(os.path.dirname(d), owner, top=False, within=root, staged=())
            self._clean_staged(os.path.dirname(d), root)
        elif folder != "INBOX" or self._layout is not None:
            self._makedirs(d, owner, within=root)
            self._clean_staged(os.path.dirname(d), root)
        locked = False
        if staged and ctl == d:
            # nobody sees the folder before its rename: its lock would be in it (taken
            # there when the caller holds it on, so that the folder appears locked)
            self._create_staged(user, d, ctl, idx, folder, ul, owner, root, lock=hold is not None)
            locked = hold is not None
        else:
            try:
                self._acquire_dotlock(lockpath, self._lock_timeout(), f"{user}/{folder} ({lockpath})")
            except Unlocked:
                raise StoreError(f"cannot create folder {folder!r} of user {user!r}: "
                                 f"{d} is not writable") from None
            try:
                if os.path.isdir(os.path.join(d, "cur")):
                    raise FolderExists(user, folder)     # made meanwhile by another process
                if staged:
                    self._create_staged(user, d, ctl, idx, folder, ul, owner, root)
                else:
                    self._create_in_place(d, ctl, idx, folder, ul, owner, root)
                locked = hold is not None
            finally:
                if not locked:
                    dotlock.release(lockpath)
        ul.header_uidnext = ul.uidnext
        if locked:
            # the lock stays ours: the caller's hold, with the state just written (a
            # directory this call made holds no message and nothing to recover; one a
            # killed creation left, or control files elsewhere (CONTROL=), which may hold
            # a killed writer's temporaries, are read and recovered as any, _load_state)
            st = None
            if staged and ctl == d:
                st = _State(dir=d, ctl=ctl, idx=idx, uidlist=ul, disk_uidnext=ul.uidnext, files={})
                st.owner, st.owner_known = owner, True
            kept = _Held(lockpath=lockpath, depth=0, state=st, touched=time.time(), since=time.monotonic())
            with self._mutex:
                self._held[(user, folder)] = kept
                self._toucher.start()
            try:
                hold.enter_context(self._locked(user, folder))   # (its exit lets the lock go)
            except BaseException:
                with self._mutex:
                    self._held.pop((user, folder), None)
                dotlock.release(lockpath)
                raise
        # Dovecot's mailbox list index (dovecot.list.index*) is left to Dovecot: it lists
        # a folder made or removed on disk from the directory tree (a new session at once,
        # an open one within a second) and checks a folder's STATUS cached there against
        # the folder's own index log and dovecot-uidlist.  Removing it under a live
        # Dovecot gave sessions a new indexid ("Corrupted transaction log ... indexid
        # changed", "duplicate transaction log sequence", APPEND "[SERVERBUG]")
        self._set_subscribed(user, folder, subscribed)
        return FolderInfo(name=folder, uidvalidity=ul.uidvalidity, uidnext=ul.uidnext,
                          subscribed=subscribed, guid=uidlist_mod.mailbox_guid(ul.extra))

    def _folder_files(self, d: str, ctl: str, idx: str | None, folder: str, ul: Uidlist, owner,
                      fresh: bool = False, place: str | None = None) -> None:
        """A new folder's files but cur/: maildirfolder in ``d``, its index files reset
        (a floor, _new_index) or those of the folder removed there just before taken
        back (_take_kept_index), keywords a lost folder left in ``ctl`` removed, its
        dovecot-uidlist.  ``fresh``: ``d`` was made just now and holds only new/ tmp/
        (no index file to look for there).  ``place``: where ``idx`` is to be once the
        folder is in place (``idx`` itself unless staged)."""
        if folder != "INBOX":
            mf = os.path.join(d, "maildirfolder")
            if fresh or not os.path.exists(mf):
                os.close(open_nofollow(mf, os.O_WRONLY | os.O_CREAT))
            self._own(mf, owner)
        if folder != "INBOX":             # (its index directory: the user's, every folder's)
            self._renew_index_dir(idx, d, ctl)
        if self._take_kept_index(place or idx, idx, ul.uidvalidity, owner):
            pass
        elif fresh and idx == d:
            self._new_index(idx, owner)
        else:
            self._reset_index(idx, owner)
        if ctl != d:                       # left by a folder whose mail was lost
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(ctl, KEYWORDS))
        self._write_file(os.path.join(ctl, UIDLIST), ul.render().encode(), owner)

    def _index_aside(self, idx: str) -> str:
        """A name beside the index directory ``idx`` (INDEX= apart from the mail), on its
        filesystem, that Dovecot never lists (_STAGED_RE's ``ims-index``)."""
        return os.path.join(os.path.dirname(idx), f"ims-index.{self._pid}.{self._random8()}")

    def _renew_index_dir(self, idx: str | None, d: str, ctl: str) -> None:
        """A folder made where an index directory of its own is there already (INDEX=
        apart from the mail: what a session that had the old folder open wrote there
        again while it was removed, or a folder lost there) gets that directory as a new
        one, its files moved in, before they are looked at (_take_kept_index,
        _reset_index).  Dovecot keeps a closed folder's index open for 10 s and gives it
        to the next SELECT of the same index directory, known by its inode
        (mail_index_alloc_cache); two sessions that had each made an index of their own
        there took theirs back, and the one that looked second found the other's log:
        "Corrupted transaction log file ... indexid changed" and "[SERVERBUG] Internal
        error" to its client (1 run in 40 of test_dovecot_live_folders' subfolder test
        under load).  Left as it is when it holds a directory (LAYOUT=fs: its subfolders'
        indexes), or is the mail or control directory; INBOX's is never looked at (the
        user's index directory: the mailbox list index, every folder's).  A directory
        set aside here by a process that is gone (SIGKILL between the renames) is removed
        first, as :meth:`_clean_staged` removes those beside the mail."""
        if idx is None or idx in (d, ctl):
            return
        self._clean_staged(os.path.dirname(idx))
        try:
            st = os.lstat(idx)
            if not stat_mod.S_ISDIR(st.st_mode):
                return
            with os.scandir(idx) as it:
                if any(e.is_dir(follow_symlinks=False) for e in it):
                    return
        except FileNotFoundError:
            return
        new = self._index_aside(idx)        # (given first: never root's under its name)
        os.mkdir(new, 0o700)
        try:
            os.chmod(new, stat_mod.S_IMODE(st.st_mode))
            if self._root_euid:
                os.lchown(new, st.st_uid, st.st_gid)
        except BaseException:
            os.rmdir(new)
            raise
        aside = self._index_aside(idx)
        os.rename(idx, aside)
        try:
            try:
                os.rename(new, idx)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                return                      # made meanwhile by a session: a new one, its own
            finally:
                with contextlib.suppress(OSError):
                    os.rmdir(new)
            for n in os.listdir(aside):
                os.rename(os.path.join(aside, n), os.path.join(idx, n))
        finally:
            remove_tree(aside)

    def _create_staged(self, user: str, d: str, ctl: str, idx: str | None, folder: str, ul: Uidlist,
                       owner, root: str, lock: bool = False) -> None:
        """The folder made whole under another name and renamed to ``d`` (which is not
        there); the files that live in it (ctl, idx equal to ``d``) are written there.
        ``lock`` (ctl equal to ``d``): its dotlock is taken in it before the rename, so
        it appears locked by this process."""
        def fill(tmp: str) -> None:
            self._folder_files(tmp, tmp if ctl == d else ctl, tmp if idx == d else idx, folder, ul, owner,
                               fresh=True, place=idx)
            self._mkdir(os.path.join(tmp, "cur"), owner)
            if lock:
                self._acquire_dotlock(os.path.join(tmp, UIDLIST + LOCK_SUFFIX), self._lock_timeout(),
                                      f"{user}/{folder}")
        try:
            self._mkdir_staged(d, owner, ("new", "tmp"), fill=fill, root=root)
        except FileExistsError:
            if os.path.isdir(os.path.join(d, "cur")):
                raise FolderExists(user, folder) from None     # made meanwhile
            raise

    def _create_in_place(self, d: str, ctl: str, idx: str | None, folder: str, ul: Uidlist, owner,
                         root: str) -> None:
        """The files of a folder whose directory is there without cur/ (a LAYOUT=fs
        level that holds subfolders, a damaged folder; what a killed creation left is
        reused), in the order that keeps Dovecot from opening it half made: Dovecot
        opens a Maildir folder only when its tmp/ is there, and adds a missing cur/
        itself when it does (maildir_check_tmp, maildir_set_deleted), so a tmp/ there
        without cur/ goes aside first; then its index floor, maildirfolder and
        dovecot-uidlist, new/, cur/, and tmp/ last, cur/ and tmp/ each made under a name
        Dovecot never lists, given to the owner and renamed into place (:meth:`_staging`).
        (Made new/ tmp/ first and cur/ last, a client's SELECT in between made Dovecot
        add cur/ and an index of its own, which the index floor then replaced: its
        sessions logged "duplicate transaction log sequence" and answered
        "[SERVERBUG]"; its staged cur/, a dot name in the folder, was listed under
        LAYOUT=fs.)  Under Maildir++ Dovecot adds cur/ new/ tmp/ to any folder
        directory it is asked to open, made half or not: cur/ and tmp/ renamed onto
        the empty ones it made are the same folder."""
        parent = os.path.dirname(d) if d != root else d
        tmp_dir = os.path.join(d, "tmp")
        if os.path.isdir(tmp_dir) and not os.path.isdir(os.path.join(d, "cur")):
            aside = self._staged_name(parent, root, "tmp")
            if aside.startswith(tmp_dir + "/"):      # (INBOX's tmp/ is the staging place)
                aside = os.path.join(parent, "." + os.path.basename(aside))
            os.rename(tmp_dir, aside)       # (a killed creation's, or a damaged folder's)
            remove_tree(aside)
        self._folder_files(d, ctl, idx, folder, ul, owner)
        self._mkdir_or_own(os.path.join(d, "new"), owner)       # (mail of a damaged folder stays)
        for sub in ("cur", "tmp"):
            pre = self._staged_name(parent, root, sub)
            self._mkdir(pre, owner)
            try:
                os.rename(pre, os.path.join(d, sub))    # (onto an empty one Dovecot made: the same)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                os.rmdir(pre)               # one Dovecot made and used meanwhile: kept

    def create_folder_held(self, locks: contextlib.ExitStack, user: str, folder: str,
                           **kwargs) -> FolderInfo:
        return self.create_folder(user, folder, hold=locks, **kwargs)

    # -- a restore under way (Store.mark_restoring) --------------------------------
    # An empty file ``ims-restoring.<mark>`` in the folder's directory, beside cur/:
    # the mark is in its name (a file's data may be lost in a power cut that keeps its
    # name), and it is made before any message of the restore is renamed into cur/, so
    # the filesystem's journal, which keeps changes to names in the order they were
    # made, never has such a message without it.  Dovecot takes neither it for mail
    # (not in cur/ or new/) nor for a folder (not a directory, no leading dot); it is
    # removed once the journal's record of the restore is on disk.

    @store_os_errors
    def mark_restoring(self, user: str, folder: str, mark: str) -> None:
        d = self._existing_folder_dir(user, folder)
        path = os.path.join(d, f"{RESTORE_MARK}.{mark}")
        if not os.path.exists(path):
            os.close(open_nofollow(path, os.O_WRONLY | os.O_CREAT))
            self._own(path, self._owner_for(d))

    def restoring_marks(self, user: str, folder: str) -> list[str]:
        try:
            names = os.listdir(self._existing_folder_dir(user, folder))
        except OSError:
            return []
        return [n[len(RESTORE_MARK) + 1:] for n in names if n.startswith(RESTORE_MARK + ".")]

    def unmark_restoring(self, user: str, folder: str, mark: str) -> None:
        with contextlib.suppress(OSError, StoreError):
            # (where the user was last found: not looked for again, a stat per folder)
            os.unlink(os.path.join(self._existing_folder_dir(user, folder), f"{RESTORE_MARK}.{mark}"))

    @store_os_errors
    def delete_folder(self, user: str, folder: str) -> None:
        """The folder goes for Dovecot in one step: its directory renamed to a name
        Dovecot never lists (:meth:`_staging`), under its lock, then removed.  (cur/
        renamed aside first and the rest removed after, a client's SELECT in between
        made Dovecot add cur/ new/ tmp/ again -- it does so to any folder directory
        it opens, maildir_set_deleted -- and the folder stayed, listed, without its
        mail.)  Under LAYOUT=fs a folder that holds subfolders keeps its directory:
        its tmp/ goes first (Dovecot opens no folder without it), then cur/ and new/,
        each renamed aside.  Killed anywhere, the folder is whole or gone, and what
        is left (an aside directory, control and index files elsewhere, the
        subscription) is finished by the next call (:meth:`folder_remains`)."""
        folder = check_folder_name(folder)
        if folder == "INBOX":
            raise BadName("INBOX cannot be deleted (delete its messages, or the user)")
        d = self._folder_dir(user, folder)
        root = self._root(user)
        parent = os.path.dirname(d)
        asides: list[str] = []
        if not os.path.isdir(os.path.join(d, "cur")):
            # gone, or a deletion killed half way (the folder is gone for us, not all its
            # files): finished now
            ctl, idx = self._ctl_idx(user, folder, d)
            dirs = dict.fromkeys(x for x in (d, ctl, idx) if x and os.path.isdir(x))
            cleaned = self._clean_staged(parent, root, again=True)
            if not dirs and not cleaned and folder not in self._subs.get(self._subs_root(user)):
                raise NoSuchFolder(user, folder)
            self._clear_folder(dirs)
            lock = os.path.join(ctl, UIDLIST + LOCK_SUFFIX)
            if os.path.lexists(lock) and dotlock.lock_is_stale(lock, self._hostname):
                dotlock.break_lock(lock, self._hostname)      # the killed deletion's
                dotlock.clean_temps(ctl, self._hostname)
        else:
            with self._locked(user, folder, create_uidlist=False) as st:
                d = st.dir
                if self._fs_layout and self._has_subfolders(d):
                    for sub in ("tmp", "cur", "new", DELETING):
                        if os.path.isdir(os.path.join(d, sub)):
                            asides.append(self._staged_name(parent, root, "deleting"))
                            os.rename(os.path.join(d, sub), asides[-1])
                    self._keep_index(st.idx, st.idx, st.uidlist.uidvalidity, parent, root, st.idx == d)
                else:
                    asides.append(self._staged_name(parent, root, "deleting"))
                    os.rename(d, asides[-1])        # (its lock goes with it when it is there)
                    self._keep_index(st.idx, asides[-1] if st.idx == d else st.idx,
                                     st.uidlist.uidvalidity, parent, root, st.idx == d)
                st.dirty = st.keywords_dirty = False
                dirs = dict.fromkeys(x for x in (d, st.ctl, st.idx) if x and os.path.isdir(x))
                self._clear_folder(dirs)
        for aside in asides:
            remove_tree(aside)
        for where in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(where)
        self._quota_stale(user)              # (the list index: as in create_folder)
        self._set_subscribed(user, folder, False)

    def _keep_index(self, idx: str | None, now: str | None, uidvalidity: int, parent: str,
                    root: str, in_mail: bool) -> None:
        """The index files of a folder being removed (in ``now``: its index directory
        ``idx``, or the directory it was renamed to) are kept aside, under a name Dovecot
        never lists on their filesystem, for a folder this object makes there again
        (_take_kept_index): a session that had the old folder selected holds its index
        log open and, if it looks again after the new folder got a log of its own, takes
        that for its index's next log -- "duplicate transaction log sequence" (the same
        indexid: both are the time in seconds), else "indexid changed", and "NO Internal
        error" to its client, as after Dovecot's own DELETE and CREATE when a client
        opens the new folder first.  Given the same log back, with the new folder's
        UIDVALIDITY in its uidlist, Dovecot resets that index itself (as for any new
        UIDVALIDITY, _dovecot_resets) and the session is logged out ("IMAP session
        state is inconsistent, please relogin").  Only where Dovecot is said to serve
        the store; kept for the process (a restore opens a store per archive of a
        chain), the files not taken back go when it ends (or, killed, with the next
        folder made or removed beside them, _clean_staged)."""
        if idx is None or now is None or not self._dovecot_site:
            return
        names = [n for n in INDEX_FILES if os.path.lexists(os.path.join(now, n))]
        if "dovecot.index.log" not in names:
            return
        if in_mail:
            where = self._staged_name(parent, root, "index")
        else:                               # (INDEX= elsewhere: on its filesystem)
            where = self._index_aside(idx)
        try:
            os.mkdir(where, 0o700)
            for n in names:
                os.rename(os.path.join(now, n), os.path.join(where, n))
        except OSError:
            remove_tree(where)
            return
        with _KEPT_LOCK:
            old = self._kept_index.pop(idx, None)
            self._kept_index[idx] = (uidvalidity, where)
        atend.at_end(_drop_kept)            # (the command's end; atexit outside one)
        if old is not None:
            remove_tree(old[1])

    def _take_kept_index(self, place: str | None, idx: str | None, uidvalidity: int, owner) -> bool:
        """The index files _keep_index kept of the folder removed at ``place`` are put in
        ``idx`` (the new folder's index directory, staged or in place), when the new
        folder has another UIDVALIDITY (under the same one Dovecot would keep the old
        index's UIDNEXT) and no index of its own.  True when they were."""
        with _KEPT_LOCK:
            kept = self._kept_index.pop(place, None) if place is not None else None
        if kept is None:
            return False
        old_uv, where = kept
        try:
            if old_uv == uidvalidity or idx is None or \
                    any(os.path.lexists(os.path.join(idx, n)) for n in INDEX_FILES):
                return False
            self._makedirs(idx, owner, aside=True)
            try:
                for n in os.listdir(where):
                    os.rename(os.path.join(where, n), os.path.join(idx, n))
            except OSError:
                return False        # (gone with its user meanwhile: a new index, as before)
            return True
        finally:
            remove_tree(where)

    def _has_subfolders(self, d: str) -> bool:
        """LAYOUT=fs: ``d`` holds a directory that is no part of its own folder."""
        with os.scandir(d) as it:
            return any(e.is_dir(follow_symlinks=False) and e.name not in ("cur", "new", "tmp", DELETING)
                       and not _STAGED_RE.match(e.name) for e in it)

    def _half_deleted(self, d: str) -> bool:
        """``d`` is there without cur/ and holds what a deletion killed half way left
        (under LAYOUT=fs: anything but subfolders, where a level that holds only
        subfolders is what a deletion that ended, or Dovecot's CREATE of ``X/Kid``,
        leaves of ``X``)."""
        if not os.path.isdir(d) or os.path.isdir(os.path.join(d, "cur")):
            return False
        if not self._fs_layout:
            return True
        try:
            with os.scandir(d) as it:
                return any(not e.is_dir(follow_symlinks=False) or e.name in ("new", "tmp", DELETING)
                           for e in it)
        except OSError:
            return False

    def remove_empty_levels(self, user: str, folder: str) -> None:
        """LAYOUT=fs: each level above the removed ``folder`` that is no folder (no cur/)
        and holds nothing any more is removed, deepest first, as Dovecot's RENAME removes
        the levels it leaves empty (else IMAP LIST shows it \\Noselect \\HasNoChildren,
        where the chain in one command never made it).  rmdir removes only an empty
        directory: a level that holds a folder, a file, or a subfolder a client made
        meanwhile stays, and so do the levels above it.  Maildir++ names levels, it
        keeps no directory for them: nothing to do."""
        if not self._fs_layout:
            return
        folder = check_folder_name(folder)
        parts = folder.split("/")
        for i in range(len(parts) - 1, 0, -1):
            name = "/".join(parts[:i])
            if name == "INBOX":
                return
            try:
                d = self._folder_dir(user, name)
                if os.path.isdir(os.path.join(d, "cur")):
                    return                   # a folder of its own
                ctl, idx = self._ctl_idx(user, name, d)
                os.rmdir(d)
            except FileNotFoundError:
                continue                     # (no directory of its own: the level above may be)
            except (OSError, StoreError):
                return                       # holds something: it stays, and what is above it
            for other in dict.fromkeys((ctl, idx)):
                if other and other != d:
                    with contextlib.suppress(OSError):
                        os.rmdir(other)      # (CONTROL=/INDEX= elsewhere: an empty level there)

    def folder_remains(self, user: str, folder: str) -> bool:
        # a deletion killed after the folder went for Dovecot: its directory (LAYOUT=fs:
        # one that holds subfolders) without cur/, an aside directory, its subscription
        try:
            folder = check_folder_name(folder)
            if folder == "INBOX":
                return False
            d = self._folder_dir(user, folder)
            if self._half_deleted(d):
                return True
            if os.path.isdir(os.path.join(d, "cur")):
                return False
            if folder in self._subs.get(self._subs_root(user)):
                return True
            root = self._root(user)
            parent = os.path.dirname(d)
            return any(_STAGED_RE.match(n) and not pid_alive(int(_STAGED_RE.match(n).group(1)))
                       for where in dict.fromkeys((parent, self._staging(parent, root)[0]))
                       for n in (os.listdir(where) if os.path.isdir(where) else ()))
        except (StoreError, OSError):
            return False

    def _clear_folder(self, dirs) -> None:
        """Everything of a folder being deleted in its mail, control and index
        directories but its lock (and, with LAYOUT=fs, its subfolders)."""
        fs = self._fs_layout
        for where in dirs:
            for n in os.listdir(where) if os.path.isdir(where) else ():
                p = os.path.join(where, n)
                if n == UIDLIST + LOCK_SUFFIX:
                    continue
                if os.path.isdir(p) and not os.path.islink(p):
                    if not fs or n in ("new", "tmp", DELETING):   # LAYOUT=fs: subfolders live there
                        remove_tree(p)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p)

    @store_os_errors
    def set_folder(self, user: str, folder: str, *, uidvalidity: int | None = None,
                   uidnext: int | None = None, subscribed: bool | None = None,
                   guid: str | None = None) -> FolderInfo:
        folder = check_folder_name(folder)
        # what Dovecot's index alone holds (keywords beyond the 26 letters) goes with it
        # when the folder's identity changes: read first (doveadm takes the folder's lock)
        kept = self._index_only_keywords(user, folder, uidvalidity, uidnext, guid)
        with self._locked(user, folder) as st:
            ul = st.uidlist
            changed = renumbered = new_uv = new_guid = False
            if uidvalidity is not None and uidvalidity != ul.uidvalidity:
                ul.uidvalidity = uidvalidity
                changed = renumbered = new_uv = True
            if guid and guid != uidlist_mod.mailbox_guid(ul.extra):
                # another mailbox to Dovecot (its list index keeps GUIDs)
                ul.extra = uidlist_mod.with_mailbox_guid(ul.extra, guid)
                changed = new_guid = True
            if uidnext is not None:
                floor = max(ul.records, default=0) + 1
                want = max(uidnext, floor)
                if want != ul.uidnext:
                    renumbered = renumbered or want < ul.uidnext
                    ul.uidnext = want
                    changed = True
            if changed:
                # its index files are removed (and clients that have the folder selected
                # are logged out) only when the identity changed
                dovecot_keeps = (new_uv or (new_guid and self.guid_keeps_index)) and self._dovecot_resets(st)
                if new_guid and dovecot_keeps:
                    st.dovecot_guid = uidlist_mod.mailbox_guid(ul.extra)
                if dovecot_keeps and (new_uv or not renumbered):
                    # Dovecot's own index stays: Dovecot resets it itself when it reads a
                    # UIDVALIDITY in dovecot-uidlist that is not its index's (below); a
                    # Maildir's mailbox GUID is the uidlist header's alone (no index holds
                    # it: maildir_uidlist_get_mailbox_guid), read again with the uidlist
                    self._wake_dovecot(st.dir)
                    st.disk_uidnext = ul.uidnext
                elif (renumbered or new_guid) and not st.index_invalidated:
                    # (Dovecot's list index stays: the STATUS it caches is checked against
                    # the folder's index log and uidlist, both new now; create_folder)
                    self._reset_index(st.idx, self._folder_owner(st))
                    st.index_invalidated = True
                elif not renumbered:
                    # a higher UIDNEXT alone: Dovecot reads the uidlist again only when
                    # cur/ or new/ changed, so cur/ is made to look changed first (before
                    # the header: a kill between the two leaves the old UIDNEXT, which the
                    # same command raises again, never a raised header Dovecot ignores)
                    self._wake_dovecot(st.dir)
                if renumbered or (new_guid and st.index_invalidated):
                    # the new index gets them back at unlock (_give_dovecot_keywords);
                    # keywords a write of this lock set are newer
                    for uid, kws in kept.items():
                        if uid in ul.records:
                            st.overflow.setdefault(uid, kws)
                # on disk now, not at unlock: messages appended next are recorded
                # after this header (a kill must not leave them under another UIDVALIDITY)
                self._flush_uidlist(st)
                if dovecot_keeps and not new_uv:
                    # again: a session that looked between the first and the header took
                    # the old GUID with the new mtime, and would not read the uidlist again
                    self._wake_dovecot(st.dir)
            info_uv, info_un, info_guid = ul.uidvalidity, ul.uidnext, uidlist_mod.mailbox_guid(ul.extra)
        if subscribed is not None:
            self._set_subscribed(user, folder, subscribed)
        subs = self._subs.get(self._subs_root(user))
        return FolderInfo(name=folder, uidvalidity=info_uv, uidnext=info_un,
                          subscribed=folder in subs, guid=info_guid)

    def _dovecot_resets(self, st: _State) -> bool:
        """A new UIDVALIDITY for this folder is left to Dovecot to apply to its index:
        Dovecot serves the store and has indexed the folder (index files of its own,
        not only our floor log).  Dovecot, reading a dovecot-uidlist whose UIDVALIDITY is
        not its index's, resets the index in a transaction of its own and indexes the
        uidlist's messages and UIDNEXT under the new one (maildir-sync-index.c,
        "UIDVALIDITY changed"; ``doveadm mailbox update --uid-validity`` resets it the
        same way, but cannot lower UIDNEXT and would wait for the lock held here).  A
        session that has the folder open is told to log in again.  Removing the index
        files instead, a session opening the folder just then got "[SERVERBUG] Internal
        error" ("Corrupted transaction log file ... indexid changed"), about half the
        times (docs/dovecot.md, "Live restores")."""
        idx = st.idx
        return (idx is not None and self._dovecot_site and not self._floor_log(idx)
                and any(os.path.lexists(os.path.join(idx, n)) for n in INDEX_FILES))

    @staticmethod
    def _wake_dovecot(d: str) -> None:
        """Give the folder's cur/ a new mtime, so Dovecot's next look at the folder
        reads dovecot-uidlist again.  Dovecot keeps UIDNEXT in its index and reads the
        uidlist only when the mtime of cur/ or new/ differs from the one its index
        recorded (or within a second of it: maildir-sync.c, maildir_sync_quick_check);
        a header raised with no message file changed was otherwise never seen, and a
        client was told the UIDNEXT the index held before, lower than the archive's
        (docs/dovecot.md, "UIDNEXT and Dovecot's index")."""
        cur = os.path.join(d, "cur")
        old = os.stat(cur)
        # never the same mtime (Dovecot compares seconds and nanoseconds, a 0 ns as any)
        mtime = max(time.time_ns(), old.st_mtime_ns + 1_000_000)
        if mtime % 1_000_000_000 == 0:
            mtime += 1
        try:
            os.utime(cur, ns=(old.st_atime_ns, mtime))
        except PermissionError:
            # not cur/'s owner (nor root), only allowed to write in it: an entry made
            # and removed changes its mtime too (a dot name, which no reader takes
            # for a message)
            probe = os.path.join(cur, f".ims-touch.{os.getpid()}.{threading.get_ident()}")
            os.mkdir(probe)
            os.rmdir(probe)

    def _index_only_keywords(self, user: str, folder: str, uidvalidity: int | None,
                             uidnext: int | None, guid: str | None) -> dict[int, tuple]:
        """{uid: every keyword} of the folder's messages that have keywords only Dovecot's
        index holds (beyond the 26 file-name letters, all taken), when set_folder with
        these values would remove the index (a new UIDVALIDITY or mailbox GUID, a lower
        UIDNEXT): else they were lost with it.  (A folder made without its archived GUID,
        which it gets once the folder renamed away from it is removed -- a chain's
        incremental restored on its own -- lost them so, exit 0.)  Read with doveadm,
        so not while this process holds the folder's lock (a folder whose index does
        not matter there: one just emptied or never used)."""
        if (user, folder) in self._held or (uidvalidity is None and uidnext is None and not guid):
            return {}
        dv = self._doveadm()
        if dv is None:
            return {}
        d = self._existing_folder_dir(user, folder)
        ctl = self._ctl_idx(user, folder, d)[0]
        ul = read_uidlist_header(ctl)
        if ul is None or not ((uidvalidity is not None and uidvalidity != ul.uidvalidity)
                              or (guid and guid != uidlist_mod.mailbox_guid(ul.extra))
                              or (uidnext is not None and uidnext < ul.uidnext)):
            return {}
        table = mdnames.read_keywords(ctl)
        if sum(1 for k in table if k) < mdnames.MAX_KEYWORDS:
            return {}
        return {uid: kws for uid, kws in dv.keywords(user, folder).items() if any(k not in table for k in kws)}

    # ------------------------------------------------------------------ messages
    def _new_base(self, stored: float, keep: str | None = None) -> str:
        """A new base name of ours.  ``keep``: the base name the message will have in
        cur/ (append), whose tag is then the R field (_recover links the two)."""
        secs = int(stored)
        usecs = min(int(round((stored - secs) * 1e6)), 999_999)
        self._seq += 1
        r = self._random8() if keep is None else _base_tag(keep)
        return f"{secs}.M{usecs}P{self._pid}Q{self._seq}R{r}.{self._hostname}"

    def _free_base(self, st: _State, name: str | None, letters: str) -> str | None:
        """``name`` when a message can have it as its base name in this folder: a
        Maildir base name that no file and no uidlist record of the folder has (a
        folder where it is taken, a live one, gets a new name).  A record whose file is
        gone (Dovecot expunged the message and keeps the line until it next rewrites the
        list) does not take it: that line is dropped, as any such line when the list is
        written, so the name is never in two records.  (Before, a message expunged since
        the backup came back under a new name: with pop3_uidl_format = %f a new UIDL, so
        a POP3 client downloaded it again.)"""
        if not _base_fits(name, letters):
            return None
        files = st.files if st.files is not None else self._scan(st)
        if st.bases is None:
            st.bases = st.uidlist.by_base()
        if name in files:
            return None
        if name in st.bases:
            if name in self._scan(st):
                return None
            del st.uidlist.records[st.bases.pop(name)]
            st.max_uid = None
            st.dirty = True
        return name

    def _random8(self) -> str:
        """8 random hex digits (the R field of a new file's name, as Dovecot's), from
        a pool drawn 4 KiB at a time: one getrandom call per 1,024 messages, not one
        per message.  A forked child (another pid) draws a pool of its own, so two
        processes never share digits."""
        at = self._rand_at
        if at + 8 > len(self._rand) or self._rand_pid != os.getpid():
            self._rand, at, self._rand_pid = os.urandom(4096).hex(), 0, os.getpid()
        self._rand_at = at + 8
        return self._rand[at:at + 8]

    @store_os_errors
    def append(self, user: str, folder: str, src: BinaryIO | None, *, uid: int | None = None,
               flags: Iterable[str] = (), keywords: Iterable[str] = (),
               internaldate: float | None = None, stored: float | None = None,
               link_from: str | None = None, size_hint: int | None = None,
               guid: str | None = None, fill: bool = False, basename: str | None = None,
               pop3_uidl: str | None = None, pop3_order: int | None = None) -> MessageInfo:
        folder = check_folder_name(folder)
        if src is None and link_from is None:
            raise StoreError("append needs the message bytes (src) or a file to link (link_from)")
        now = time.time()
        with self._locked(user, folder) as st:
            ul = st.uidlist
            if uid is None:
                uid = ul.uidnext
            else:
                if uid <= 0:
                    raise StoreError(f"bad UID {uid}")
                if fill and uid in ul.records and ul.records[uid][1] not in self._scan(st):
                    # a record without its file: a message clients were told is gone, or
                    # one a killed writer recorded whose UID Dovecot passed (_recover)
                    raise UidPassed(user, folder, uid)
                if uid <= st.top_uid():
                    self._prune(st)           # lines of files Dovecot expunged don't count
                    if uid <= st.top_uid() and (not fill or uid in ul.records):
                        raise UidInUse(user, folder, uid)
                    if uid <= st.top_uid():
                        st.dirty = True       # the uidlist is rewritten in UID order
            letters = self._encode_flags(st, flags, keywords, uid=uid)
            # the archived base name, where it is free: pop3_uidl_format = %f (the file
            # name) gives POP3 clients the UIDL they know (docs/dovecot.md)
            keep = self._free_base(st, basename, letters)
            base = self._new_base(stored if stored is not None else now, keep)
            owner = self._folder_owner(st)
            tmp = os.path.join(st.dir, "tmp", base)
            s = None                # the new file's status, as it is when it leaves tmp/
            try:
                if link_from is not None:
                    s = self._link_tmp(link_from, tmp, internaldate)    # (of the inode before the link)
                linked = s is not None
                if s is None:
                    # (a compressed file, Dovecot's zlib plugin, is copied as the message it
                    # holds, as a restore writes any: plain, S= its size)
                    opened = open_stored_path(link_from, _packed(link_from)) if src is None else None
                    try:
                        s = self._write_tmp(tmp, src if opened is None else opened, owner, internaldate)
                    finally:
                        if opened is not None:
                            opened.close()
                size = s.st_size
                if keep is not None and not sizes_match(keep, size, tmp):
                    keep = None         # Dovecot would fail to read it, or serve it cut short
                full_base = keep or f"{base},S={size}"
                # a kept GUID is the uidlist's G field (Dovecot honours it: docs/dovecot.md),
                # a kept POP3 UIDL its P field, a POP3 order its O field
                ext = record_fields(full_base, guid, pop3_uidl, pop3_order)
                path = self._commit(st, uid, tmp, full_base, letters, ext)
            except BaseException:
                # (a SIGTERM or Ctrl-C during the open or link that made the file is raised
                # as it returns, before the try that removes it: it was left in tmp/; once
                # in cur/, it is no longer there)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            # (its size and mtime as the file system keeps them: from the descriptor it
            # was written through, or the inode it links to; a rename changes neither)
            flags_set, kws = self._decode_flags(st, letters)
            uidl, order = pop3_of(ext, full_base)
            return MessageInfo(uid=uid, flags=flags_set, keywords=kws, internaldate=s.st_mtime,
                               stored=stored_from_name(full_base) or now, size=s.st_size, path=path,
                               dev=s.st_dev, ino=s.st_ino, nlink=s.st_nlink + linked,
                               guid=guid_of(ext, full_base), changed=s.st_ctime,
                               basename=full_base, pop3_uidl=uidl, pop3_order=order)

    # A message becomes visible in three steps, so that a kill between any two of them
    # leaves nothing a rerun could take for another message (docs/restore-design.md):
    # its bytes in tmp/<base>, then its record appended to dovecot-uidlist, then the
    # rename into cur/.  A record whose file is still in tmp/ was never visible: the
    # next writer of the folder drops both (_recover).

    def _link_tmp(self, link_from: str, tmp: str, internaldate: float | None) -> os.stat_result | None:
        """Hard-link ``link_from`` to ``tmp``; its status before the link, or None when it
        must be copied."""
        try:
            s = os.stat(link_from)
        except FileNotFoundError:
            raise StoreError(f"cannot link {link_from}: it no longer exists") from None
        if internaldate is not None and int(internaldate) != int(s.st_mtime):
            return None                       # one inode has one mtime = one INTERNALDATE
        m = SIZE_RE.search(os.path.basename(link_from))
        if m and int(m.group(1)) != s.st_size and compression_of(link_from):
            # a file Dovecot compressed (zlib plugin): its S= is the message's size, not
            # the file's; linked under a name with the file's size, Dovecot failed every
            # FETCH of it ("Cached message size smaller than expected")
            return None
        try:
            self._in_tmp(tmp, lambda: os.link(link_from, tmp))
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                return None
            raise
        return s

    def _in_tmp(self, tmp: str, make):
        """Run ``make`` (which creates ``tmp``); a tmp/ that a killed creation or another
        tool left out is made again first."""
        try:
            return make()
        except FileNotFoundError:
            d = os.path.dirname(tmp)
            if not os.path.isdir(os.path.join(os.path.dirname(d), "cur")):
                raise
            self._mkdir_or_own(d, self._owner_for(os.path.dirname(d)))
            return make()

    def _write_tmp(self, tmp: str, src: BinaryIO, owner, internaldate: float | None) -> os.stat_result:
        """Write ``src`` to ``tmp``; its status (size, and mtime as the file system
        kept the INTERNALDATE: one may hold a narrower range of times)."""
        fd = self._in_tmp(tmp, lambda: os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            try:
                copy_to_fd(src, fd)
                self._chown(fd, owner)
                if internaldate is not None:
                    os.utime(fd, (internaldate, internaldate))
                return os.fstat(fd)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _commit(self, st: _State, uid: int, tmp: str, full_base: str, letters: str,
                ext: str = "") -> str:
        """Record ``uid`` for the file ``tmp`` in dovecot-uidlist, then move it into cur/."""
        fname = f"{full_base}:2,{letters}"
        path = os.path.join(st.dir, "cur", fname)
        try:
            if st.keywords_dirty:             # its letters must mean something on disk first
                self._flush_keywords(st)
            undo = self._record(st, uid, full_base, ext)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        try:
            os.rename(tmp, path)
        except BaseException:
            self._unrecord(st, uid, undo)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if st.bases is not None:
            st.bases[full_base] = uid
        if st.files is not None:
            st.files[full_base] = ("cur", fname)
        st.mail_changed = True
        return path

    def _record(self, st: _State, uid: int, full_base: str, ext: str = "") -> int | None:
        """Add ``uid`` to the uidlist, on disk before the caller shows the file: an
        appended line, or (when the file on disk is behind the state) a rewrite.
        Returns the size to cut the file back to if the file never arrives."""
        ul = st.uidlist
        ul.records[uid] = (ext, full_base)
        ul.uidnext = max(ul.uidnext, uid + 1)
        st.max_uid = max(st.top_uid(), uid)
        if uid < st.disk_uidnext and not st.index_invalidated:
            # Dovecot's index may already call this UID expunged: make it re-read
            self._reset_index(st.idx, self._folder_owner(st))
            st.index_invalidated = True
        try:
            if st.dirty:
                self._flush_uidlist(st)
                return None
            return self._append_uidlist(st, uid, full_base, ext)
        except BaseException:
            del ul.records[uid]
            st.max_uid = None
            raise

    @staticmethod
    def _append_uidlist(st: _State, uid: int, full_base: str, ext: str = "") -> int:
        """Append one record line to the folder's ``dovecot-uidlist`` (as
        :func:`uidlist.append_record`, through a descriptor kept open while the lock is
        held: one write per message); returns the file's size before it."""
        if st.ul_fd is None:
            fd = os.open(os.path.join(st.ctl, UIDLIST), os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                st.ul_size = os.fstat(fd).st_size
            except BaseException:
                os.close(fd)
                raise
            st.ul_fd = fd
        fd, before = st.ul_fd, st.ul_size
        data = Uidlist.record_line(uid, ext, full_base).encode("utf-8", "surrogateescape")
        try:
            write_all(fd, data)
        except BaseException:
            try:
                os.ftruncate(fd, before)
            except OSError:
                MaildirStore._close_uidlist(st)
            raise
        st.ul_size = before + len(data)
        return before

    @staticmethod
    def _close_uidlist(st: _State) -> None:
        fd, st.ul_fd = st.ul_fd, None
        if fd is not None:
            os.close(fd)

    def _unrecord(self, st: _State, uid: int, undo: int | None) -> None:
        st.uidlist.records.pop(uid, None)
        st.max_uid = None
        if undo is None:
            st.dirty = True
            return
        try:
            if st.ul_fd is not None:
                os.ftruncate(st.ul_fd, undo)
                st.ul_size = undo
            else:
                uidlist_mod.undo_append(st.ctl, undo)
        except OSError:
            self._close_uidlist(st)
            st.dirty = True

    def _prune(self, st: _State) -> None:
        """Drop uidlist lines whose files are gone."""
        files = self._scan(st)
        dead = [u for u, (_, b) in st.uidlist.records.items() if b not in files]
        for u in dead:
            del st.uidlist.records[u]
        st.max_uid = None
        if dead:
            st.dirty = True

    @store_os_errors
    def set_flags(self, user: str, folder: str, uid: int, flags: Iterable[str],
                  keywords: Iterable[str] = ()) -> MessageInfo:
        folder = check_folder_name(folder)
        with self._locked(user, folder) as st:
            for attempt in (0, 1):
                base, sub, fname = self._find(st, uid, user, folder)
                letters = self._encode_flags(st, flags, keywords, keep=split_name(fname)[1], uid=uid,
                                             existing=True)
                if st.keywords_dirty:
                    self._flush_keywords(st)
                new = f"{base}:2,{letters}"
                try:
                    if (sub, fname) != ("cur", new):
                        os.rename(os.path.join(st.dir, sub, fname), os.path.join(st.dir, "cur", new))
                except FileNotFoundError:
                    st.files = None
                    continue
                st.files[base] = ("cur", new)
                return self._info(st, uid, "cur", new)
            raise MessageGone(user, folder, uid)

    @store_os_errors
    def set_pop3(self, user: str, folder: str, uid: int, uidl: str, order: int) -> bool:
        """The record's P and O fields replaced by these (its G field kept): written
        with the uidlist when the lock is let go of, as an expunge's."""
        folder = check_folder_name(folder)
        with self._locked(user, folder) as st:
            self._find(st, uid, user, folder)            # MessageGone for none
            ext, base = st.uidlist.records[uid]
            fields = [f for f in ext.split() if f[:1] not in ("P", "O")]
            pop3 = pop3_fields(uidl, order)
            new = " ".join(fields + ([pop3] if pop3 else []))
            if new != ext:
                st.uidlist.records[uid] = (new, base)
                st.dirty = True
        return True

    @store_os_errors
    def expunge(self, user: str, folder: str, uids: Iterable[int]) -> int:
        folder = check_folder_name(folder)
        n = 0
        with self._locked(user, folder) as st:
            for uid in uids:
                try:
                    base, sub, fname = self._find(st, uid, user, folder)
                except MessageGone:
                    st.uidlist.records.pop(uid, None)
                    st.max_uid = None
                    continue
                try:
                    os.unlink(os.path.join(st.dir, sub, fname))
                    n += 1
                    st.mail_changed = True
                except FileNotFoundError:
                    pass
                del st.uidlist.records[uid]
                st.max_uid = None
                st.files.pop(base, None)
                if st.bases is not None:
                    st.bases.pop(base, None)
                st.dirty = True
        return n

    # ------------------------------------------------------------------ deliveries
    def _hold_marker(self, user: str) -> str:
        return os.path.join(self._home(user), HOLD_MARKER)

    def _holders(self, marker: str) -> list[str]:
        try:
            with open(marker, encoding="utf-8", errors="replace") as f:
                return [ln.strip() for ln in f if ln.strip()]
        except FileNotFoundError:
            return []

    def _other_holders(self, marker: str, holder: str | None) -> list[str]:
        """Live holders in ``marker`` but ``holder`` (none when ``holder`` is None: a
        release without a name ends every hold), as the classic store's twin."""
        if holder is None:
            return []
        return [h for h in self._holders(marker) if h != holder and not holder_gone(h)]

    @contextlib.contextmanager
    def _hold_lock(self, user: str):
        path = self._hold_marker(user) + LOCK_SUFFIX
        dotlock.clean_temps(os.path.dirname(path), self._hostname)
        try:
            self._acquire_dotlock(path, self._lock_timeout(), f"the delivery hold of {user}")
        except Unlocked:
            raise StoreError(f"cannot write {path}: permission denied") from None
        try:
            # a hold marker's temporary that a killed process left beside it (held: ours to clean)
            home = os.path.dirname(path)
            with contextlib.suppress(OSError):
                for n in os.listdir(home):
                    m = _WRITE_TMP.match(n)
                    if m and n.startswith(HOLD_MARKER + ".") and not pid_alive(int(m.group(1))):
                        with contextlib.suppress(OSError):
                            os.unlink(os.path.join(home, n))
            yield
        finally:
            dotlock.release(path)

    @store_os_errors
    def hold_deliveries(self, user: str, holder: str | None = None) -> None:
        """The marker ``.ims-hold`` lists the holders, one a line."""
        marker = self._hold_marker(user)
        home = os.path.dirname(marker)
        if self._layout is not None and not os.path.isdir(home):
            self._makedirs(home, self._owner_for(self._root(user)))
        owner = self._owner_for(home)
        q = os.path.join(home, QUEUE_DIR)
        if not os.path.isdir(q):
            with contextlib.suppress(FileExistsError):
                self._mkdir(q, owner)
        with self._hold_lock(user):
            holders = [h for h in self._holders(marker) if not holder_gone(h)]
            holders = [h for h in holders if h != holder] + [holder or this_holder()]
            self._write_file(marker, "".join(h + "\n" for h in holders).encode(), owner)
        self._dovecot_hold(user, True)

    def _dovecot_hold(self, user: str, held: bool) -> bool:
        """The login's line in dovecot.holdfile (Dovecot's LMTP answers 451 while it is
        there), when that option is set; True when this call added or removed it."""
        path = self.config.get("dovecot.holdfile")
        if path:
            from asm.store.maildir.holdfile import set_held
            try:
                return set_held(path, user, held, self._lock_timeout(), self._pid, self._hostname)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise StoreFull(f"the Dovecot hold file {path}", exc.strerror or str(exc),
                                    outside=path) from None
                raise os_store_error(exc, f"the Dovecot hold file {path}") from None
        return False

    def deliveries_held(self, user: str) -> bool:
        return os.path.exists(self._hold_marker(user))

    def _queued(self, user: str) -> list[str]:
        q = os.path.join(self._home(user), QUEUE_DIR)
        try:
            return sorted(os.path.join(q, n) for n in os.listdir(q) if n.endswith(".eml"))
        except FileNotFoundError:
            return []

    @store_os_errors
    def release_deliveries(self, user: str, holder: str | None = None) -> int:
        marker = self._hold_marker(user)
        owner = self._owner_for(os.path.dirname(marker))
        with self._hold_lock(user):
            others = self._other_holders(marker, holder)
            if others:
                self._write_file(marker, "".join(h + "\n" for h in others).encode(), owner)
                return 0
        n = self._drain(user)
        with self._hold_lock(user):
            others = self._other_holders(marker, holder)
            if others:
                # held again meanwhile: the new holder releases; we are off the list
                # (left on it, a restore still running for other users kept the hold
                # after the new holder let go)
                self._write_file(marker, "".join(h + "\n" for h in others).encode(), owner)
                return n
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker)
            self._dovecot_hold(user, False)
        n += self._drain(user)                 # what arrived while we were draining
        return n

    def _drain(self, user: str) -> int:
        """Store what was queued.  ``<name>.delivering`` is made before a message is
        stored and removed with it from the queue: a drain killed in between left it,
        and the message is stored again only if its folder lacks its file."""
        n = 0
        for eml in self._queued(user):
            meta_path = eml[:-4] + ".json"
            mark = eml[:-4] + ".delivering"
            try:
                with open(meta_path, encoding="utf-8") as f:
                    meta = json.load(f)
            except (FileNotFoundError, ValueError):
                meta = {}
            folder = meta.get("folder", "INBOX")
            if not self.exists(user, folder):
                folder = "INBOX"
            if not (os.path.exists(mark) and self._has_file(user, folder, eml)):
                self._write_file(mark, b"", None, fsync=False)
                self.append(user, folder, None, link_from=eml, internaldate=meta.get("internaldate"),
                            stored=meta.get("stored"))
                n += 1
            os.unlink(eml)
            for p in (meta_path, mark):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        return n

    def _has_file(self, user: str, folder: str, path: str) -> bool:
        """Whether a message of the folder is ``path``'s file (a hard link to it)."""
        st = os.stat(path)
        return any((m.dev, m.ino) == (st.st_dev, st.st_ino) for m in self.messages(user, folder))

    def _enqueue(self, user: str, src: BinaryIO | None, first: str | None, folder: str,
                 internaldate: float, stored: float) -> str:
        home = self._home(user)
        q = os.path.join(home, QUEUE_DIR)
        owner = self._owner_for(home)
        if not os.path.isdir(q):
            with contextlib.suppress(FileExistsError):
                self._mkdir(q, owner)
        self._seq += 1
        name = f"{time.time_ns():020d}.{self._pid}.{self._seq:06d}"
        meta = {"folder": folder, "internaldate": internaldate, "stored": stored}
        self._write_file(os.path.join(q, name + ".json"), json.dumps(meta).encode(), owner,
                         fsync=False)
        final = os.path.join(q, name + ".eml")
        tmp = os.path.join(q, "." + name + ".tmp")
        if first is not None:
            try:
                os.link(first, tmp)
                os.rename(tmp, final)
                return final
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
            src = open(first, "rb")
        try:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
                self._chown(out.fileno(), owner)
            os.utime(tmp, (internaldate, internaldate))
            os.rename(tmp, final)
        finally:
            if first is not None:
                src.close()
        return final

    @store_os_errors
    def _deliver_each(self, folder, users, src, idate, now, out: dict) -> None:
        first: str | None = None
        for user in users:
            path = None
            if self.deliveries_held(user):
                # queued under the hold's lock, the hold seen again there: a release
                # removes the marker under it, so its last drain finds the message
                # (checked outside, a release ending in between left it queued for good
                # while imsdeliver said "queued")
                with self._hold_lock(user):
                    if self.deliveries_held(user):
                        path = self._enqueue(user, src if first is None else None, first, folder, idate, now)
            if path is not None:
                first = first or path
                out[user] = None
            else:
                if not self.exists(user, folder):
                    self.create_folder(user, folder)  # like Dovecot's lda_mailbox_autocreate
                if first is None:
                    info = self.append(user, folder, src, internaldate=idate, stored=now)
                else:
                    info = self.append(user, folder, None, link_from=first, internaldate=idate,
                                       stored=now)
                first = first or info.path
                out[user] = info
