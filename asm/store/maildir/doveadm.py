"""What only Dovecot itself knows, asked through ``doveadm -c CONF``.

A Maildir file name has 26 letters for keywords; Dovecot keeps a folder's further
keywords in its index files only (docs/dovecot.md, "Keywords beyond 26").  A backup
that reads files asks ``doveadm fetch`` for them; a restore that writes files gives
them back with ``doveadm flags add`` (and ``flags remove`` takes away those the index
holds that a message no longer has).  Both run while this driver does not hold the
folder's lock (doveadm takes it).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

from asm.store.base import StoreError, StoreFull

TIMEOUT = 300
#: how Dovecot says the disk or the quota is full (strerror of ENOSPC, EDQUOT)
_FULL = re.compile(r"No space left on device|Disk quota exceeded")
#: dsync's "run me again": a mailbox changed (deleted, made again) while it synced, exit 2
_DESYNC = re.compile(r"Mailbox changes caused a desync\.[^\n]*")


#: a folder or message an IMAP client removed while doveadm listed it (the listing, taken
#: again, no longer has it).  A folder deleted and made again under doveadm (a client that
#: creates and deletes a scratch folder in a loop) also ends it on the folder's files gone
#: ("Mailbox Tmp1: stat(.../Tmp1/dbox-Mails) failed: No such file or directory", "Failed
#: to lock mailbox Tmp0 for dsyncing: file_create_locked(...) failed: ... No such file or
#: directory", "... Temporary file ... was unexpectedly deleted") or on the new folder's
#: index log ("Mailbox Tmp2: ... Transaction log .../dovecot.index.log: duplicate
#: transaction log sequence (2)", "Mailbox Tmp1: Failed to lookup mailbox status: Corrupted
#: transaction log file .../dovecot.index.log seq 2: indexid changed: X -> Y"), sdbox and
#: mdbox alike (Dovecot 2.3.19, 3 clients doing so).  A folder really damaged so fails
#: every time: after LISTING_TRIES the login is named, as before
_RACE = re.compile(r"Mailbox doesn't exist|Mailbox was deleted under us|Message was expunged"
                   r"|[Mm]ailbox [^\n]*(?:failed: No such file or directory|was unexpectedly deleted)"
                   r"|[Mm]ailbox [^\n]*Transaction log [^\n]*: duplicate transaction log sequence"
                   r"|[Mm]ailbox [^\n]*Corrupted transaction log file [^\n]*: indexid changed")


class DoveadmRace(StoreError):
    """doveadm stopped on a folder or message deleted, renamed or expunged while it read
    it (an IMAP client at work): the same command run again lists what is there now."""


class DsyncDesync(StoreError):
    """doveadm backup/sync ended on a desync: the mailboxes changed while it copied them
    (an IMAP client at work); dsync asks to be run again."""


class Doveadm:
    #: a descriptor every doveadm child inherits (DboxStore: the flock'd lock of its
    #: WORK directory), so that a doveadm its killed parent left running is seen
    hold_fd: int | None = None

    def __init__(self, conf: str, binary: str, settings=()):
        self.conf, self.binary = conf, binary
        #: ``-o`` settings of every run (DboxStore: how the inbox namespace names folders)
        self.settings = list(settings)
        #: the listescape plugin's escape character when Dovecot loads it ("" without):
        #: the Maildir driver names a folder as its directory says (``v1\2e2``), Dovecot
        #: by its unescaped name (``v1.2``), which doveadm must be given (:meth:`mailbox`)
        self.listescape = ""

    def mailbox(self, folder: str) -> str:
        """The name doveadm knows the driver's ``folder`` by: with the listescape plugin,
        each escape (the escape character and two hex digits) as the character it
        stands for (Dovecot escapes the separators, '~' and the escape character)."""
        if not self.listescape:
            return folder
        esc = re.escape(self.listescape)
        return re.sub(esc + r"([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), folder)

    @classmethod
    def find(cls, conf: str | None) -> "Doveadm | None":
        """The doveadm of a Dovecot configuration (None: no configuration or no doveadm)."""
        binary = shutil.which("doveadm") or ("/usr/bin/doveadm" if os.path.exists("/usr/bin/doveadm") else None)
        if conf is None or binary is None:
            return None
        return cls(conf, binary)

    def run(self, login: str, command: str, *args: str, options=(), formatter: str | None = None) -> str:
        """``doveadm -c CONF [-o k=v...] [-f FORMATTER] COMMAND -u LOGIN ARGS``; its output."""
        words = command.split()
        return self._run(login, *words, *args, options=options, nwords=len(words), formatter=formatter)

    def _run(self, login: str, *args: str, options=(), nwords: int = 2, formatter: str | None = None) -> str:
        cmd = [self.binary, "-c", self.conf]
        for o in (*self.settings, *options):
            cmd += ["-o", o]
        if formatter:
            cmd += ["-f", formatter]
        cmd += [*args[:nwords], "-u", login, *args[nwords:]]
        try:
            res = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                                 pass_fds=() if self.hold_fd is None else (self.hold_fd,))
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StoreError(f"{' '.join(cmd[:4])}...: {exc}") from None
        if res.returncode:
            text = res.stderr.decode("utf-8", "replace")
            full = _FULL.search(text)
            if full:          # the store's disk (or quota) is full: exit 13, not 17
                raise StoreFull(f"{login}'s mail (doveadm {' '.join(args[:nwords])})", full.group(0))
            err = (text.strip().splitlines() or ["failed"])[-1]
            if "User lookup failed" in text:
                # doveadm -u asks the running Dovecot's auth service for the login
                err += (" (doveadm finds the login through the running Dovecot: start Dovecot, "
                        "then run the same command again)")
            desync = _DESYNC.search(text)
            if desync:        # dsync: the mailboxes changed while it copied them
                raise DsyncDesync(f"doveadm {' '.join(args[:nwords])} -u {login} ({self.conf}): "
                                  f"{desync.group(0)}")
            if _RACE.search(text):
                raise DoveadmRace(f"doveadm {' '.join(args[:nwords])} -u {login} ({self.conf}): {err}")
            raise StoreError(f"doveadm {' '.join(args[:nwords])} -u {login} ({self.conf}): {err}")
        return res.stdout.decode("utf-8", "surrogateescape")

    def names(self, login: str, command: str, *args: str, options=()) -> list[str]:
        """The names ``command`` prints one a line (``mailbox list``, ``mailbox list
        -s``), split at ``\n`` only: str.splitlines() also splits at U+0085, U+2028 and
        U+2029, which a folder name may hold (Dovecot refuses only ASCII control
        characters), and made two names of one."""
        return [n for n in self.run(login, command, *args, options=options).split("\n") if n]

    def search(self, login: str, folder: str) -> list[str]:
        """The doveadm search words for the folder's messages: ``mailbox NAME``, whose
        NAME doveadm reads as a pattern, so a name holding '*' or '%' is given by its
        GUID (``mailbox-guid``): 'mailbox *x' also searched 'ax', whose keywords beyond
        the 26th were read as those of '*x' and had those of '*x' added on a restore."""
        name = self.mailbox(folder)
        if "*" not in name and "%" not in name:
            return ["mailbox", name]
        import json
        text = self.run(login, "mailbox status", "--", "guid", name, formatter="json")
        try:
            rows = json.loads(text or "[]")
        except ValueError:
            rows = []
        guids = [r.get("guid") for r in rows if isinstance(r, dict) and r.get("mailbox") == name]
        if len(guids) != 1 or not guids[0]:
            raise StoreError(f"doveadm mailbox status -u {login} ({self.conf}): no one mailbox GUID for "
                             f"{name!r} in {text.strip()[:200]!r}")
        return ["mailbox-guid", guids[0]]

    def keywords(self, login: str, folder: str) -> dict[int, tuple]:
        """{uid: keywords} of every message of the folder, as Dovecot's index has them."""
        out = self.run(login, "fetch", "--", "uid flags", *self.search(login, folder), "all")
        result = {}
        for block in out.split("\f"):
            uid = re.search(r"^uid: (\d+)$", block, re.M)
            flags = re.search(r"^flags: ?(.*)$", block, re.M)
            if uid and flags is not None:
                result[int(uid.group(1))] = tuple(f for f in flags.group(1).split()
                                                  if not f.startswith("\\"))
        return result

    def change_keywords(self, login: str, folder: str, uids, add=(), remove=()) -> None:
        """Add and remove keywords of the messages ``uids`` (in groups of 500 UIDs)."""
        uids = sorted(uids)
        where = self.search(login, folder) if uids and (add or remove) else []
        for i in range(0, len(uids), 500):
            part = ",".join(map(str, uids[i:i + 500]))
            if add:
                self.run(login, "flags add", "--", " ".join(add), *where, "uid", part)
            if remove:
                self.run(login, "flags remove", "--", " ".join(remove), *where, "uid", part)


class KeptKeywords:
    """Dovecot's index stood in for where no Dovecot serves the store (the scratch store
    of ``imsverify --restore-test``): the keywords of each message that the folder's 26
    letters cannot hold, kept in the JSON file ``path`` by the message file's base name,
    answered as :meth:`Doveadm.keywords` and :meth:`Doveadm.change_keywords` do (a
    keyword the folder's letters hold is never kept here: a letter lost stays lost)."""

    def __init__(self, store, path: str):
        import json
        self.store, self.path = store, path
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                self.kept = {tuple(k.split("\0", 1)): {b: set(v) for b, v in kw.items()}
                             for k, kw in json.load(f).items()}
        except FileNotFoundError:
            self.kept = {}

    def _folder(self, user: str, folder: str):
        from asm.store.maildir.names import read_keywords
        from asm.store.maildir.uidlist import read_uidlist
        d = self.store._existing_folder_dir(user, folder)
        ctl = self.store._ctl_idx(user, folder, d)[0]
        ul = read_uidlist(ctl)
        return ({} if ul is None else {uid: rec[1] for uid, rec in ul.records.items()}), read_keywords(ctl)

    def index_only(self, user: str, folder: str) -> dict[int, tuple]:
        """{uid: keywords} kept here (those no letter of the folder holds)."""
        kept = self.kept.get((user, folder), {})
        bases, _ = self._folder(user, folder)
        return {uid: tuple(sorted(kept[b])) for uid, b in bases.items() if kept.get(b)}

    def keywords(self, login: str, folder: str) -> dict[int, tuple]:
        kept = self.kept.get((login, folder), {})
        bases, _ = self._folder(login, folder)
        return {uid: tuple(sorted(kept.get(b, ()))) for uid, b in bases.items()}

    def change_keywords(self, login: str, folder: str, uids, add=(), remove=()) -> None:
        import json
        bases, table = self._folder(login, folder)
        kept = self.kept.setdefault((login, folder), {})
        for uid in uids:
            b = bases.get(uid)
            if b is None:
                continue
            have = kept.setdefault(b, set())
            have.update(k for k in add if k not in table)
            have.difference_update(remove)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
            json.dump({"\0".join(k): {b: sorted(v) for b, v in kw.items() if v}
                       for k, kw in self.kept.items()}, f)
        os.replace(tmp, self.path)
