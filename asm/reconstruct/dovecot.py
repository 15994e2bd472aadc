"""Dovecot's own tools, where Dovecot is installed: ``doveadm dump`` to read what its
index files remember of a folder (UIDVALIDITY, how far UIDs went), and ``doveadm
force-resync`` to have Dovecot bring its indexes in line with the repaired Maildir.

Both run without a running Dovecot: ``dump`` reads files; ``force-resync`` runs on one
account named by ``USER`` and ``HOME`` in its environment (no userdb lookup), with the
site's configuration (``dovecot.config``, for its plugins and settings) or, without
one, a private one-line configuration, and always the driver's layout
(``mail_location = maildir:~/Maildir``, home ``<partition>/<user>``).  Run as root,
doveadm reads its configuration and becomes the mail user itself (``mail_uid``,
``mail_gid`` given as the Maildir's owner): Dovecot never touches mail as root.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass

from asm.atend import scratch_dir
from asm.trees import remove_tree

DOVEADM_PATHS = ("/usr/bin/doveadm", "/usr/local/bin/doveadm", "/usr/sbin/doveadm")
SITE_CONFIG = "/etc/dovecot/dovecot.conf"
INDEX_FILES = ("dovecot.index", "dovecot.index.log.2", "dovecot.index.log")

# (a log's header update says "uid_validity = N"; the index's header, "uid validity ....... = N")
_UV = re.compile(r"uid[_ ]validity[ .]*= (\d+)")
_NEXT = re.compile(r"(?:next[_ ]uid|first[_ ]recent[_ ]uid)[ .]*= (\d+)")
_APPEND = re.compile(r"type=append\b")
_UIDS = re.compile(r"uids=(.*)")
_NOTE = re.compile(r"\([^)]*\)")              # "uids=1 (flags=8),2,4 (flags=2),6-9,"
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
_KW_RECORD = re.compile(r"type=keyword-(update|reset)\b")
_KW_UPDATE = re.compile(r"modify=(\d+), name=(.*?), uids=")
_KW_NAME = re.compile(r"^\s+(\d+) = (.*)$")                  # the index's "-- Keywords --" list
_RECORD = re.compile(r"^RECORD: seq=\d+, uid=(\d+)")
_REC_KW = re.compile(r"^ - ext \d+ keywords\s*:.*\(([0-9a-fA-F]*)\)\s*$")


def find_doveadm() -> str | None:
    found = shutil.which("doveadm")
    if found:
        return found
    for p in DOVEADM_PATHS:
        if os.access(p, os.X_OK):
            return p
    return None


@dataclass
class IndexView:
    """What Dovecot's index files of one folder remember."""

    uidvalidity: int | None = None
    next_uid: int = 0              # 0: nothing known
    files: tuple = ()


class Dovecot:
    """doveadm for one installation; ``config`` is dovecot.conf or None (private one)."""

    def __init__(self, doveadm: str, config: str | None = None):
        self.doveadm = doveadm
        self.config = config
        self._tmp: str | None = None

    @classmethod
    def find(cls, config: str | None) -> "Dovecot | None":
        exe = find_doveadm()
        if exe is None:
            return None
        if config is None and os.path.exists(SITE_CONFIG):
            config = SITE_CONFIG
        return cls(exe, config)

    def close(self) -> None:
        if self._tmp:
            remove_tree(self._tmp)
            self._tmp = None

    def _conf(self) -> str:
        if self.config:
            return self.config
        if self._tmp is None:
            self._tmp = scratch_dir("ims-doveadm-", mode=0o755)   # (removed at the end, whatever happens)
            with open(os.path.join(self._tmp, "dovecot.conf"), "w") as f:
                f.write("# ims-asm reconstruct: the maildir driver's layout\n"
                        "mail_location = maildir:~/Maildir\n")
            os.chmod(os.path.join(self._tmp, "dovecot.conf"), 0o644)
        return os.path.join(self._tmp, "dovecot.conf")

    # -- what the index remembers -------------------------------------------------------
    def index_view(self, folder_dir: str) -> IndexView:
        view = IndexView()
        seen = []
        for name in INDEX_FILES:
            path = os.path.join(folder_dir, name)
            if not os.path.exists(path):
                continue
            try:
                out = subprocess.run([self.doveadm, "dump", path], capture_output=True, text=True,
                                     errors="replace", timeout=120, cwd="/",
                                     env={"PATH": "/usr/bin:/bin"}).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            seen.append(name)
            for m in _UV.finditer(out):
                view.uidvalidity = int(m.group(1))      # the last one written wins
            for m in _NEXT.finditer(out):
                view.next_uid = max(view.next_uid, int(m.group(1)))
            lines = out.splitlines()
            for i, line in enumerate(lines):
                if _APPEND.search(line) and i + 1 < len(lines):
                    m = _UIDS.search(lines[i + 1])
                    if m:
                        for r in _RANGE.finditer(_NOTE.sub("", m.group(1))):
                            view.next_uid = max(view.next_uid, int(r.group(2) or r.group(1)) + 1)
        view.files = tuple(seen)
        return view

    def _dump(self, path: str) -> str | None:
        """``doveadm dump`` of an index file or transaction log, or None when it fails."""
        try:
            p = subprocess.run([self.doveadm, "dump", path], capture_output=True, text=True,
                               errors="replace", timeout=120, cwd="/", env={"PATH": "/usr/bin:/bin"})
        except (OSError, subprocess.TimeoutExpired):
            return None
        return p.stdout if p.returncode == 0 else None

    def _index_snapshot(self, path: str) -> tuple[list, dict] | None:
        """The keywords ``dovecot.index`` holds: (its names, in its order: the order the
        folder first used them; {uid: names set} from each record's keyword bitmap), or
        None when it cannot be read or has no keyword list."""
        out = self._dump(path)
        if out is None:
            return None
        names: dict = {}
        per_uid: dict = {}
        section = uid = None
        for line in out.splitlines():
            if line.startswith("-- "):
                section, uid = line.strip("- "), None
                continue
            if section == "Keywords":
                m = _KW_NAME.match(line)
                if m:
                    names[int(m.group(1))] = m.group(2)
                continue
            r = _RECORD.match(line)
            if r:
                uid = int(r.group(1))
                per_uid[uid] = set()
                continue
            k = _REC_KW.match(line) if uid is not None else None
            if k:
                bits = bytes.fromhex(k.group(1)) if len(k.group(1)) % 2 == 0 else b""
                for i in range(len(bits) * 8):
                    if bits[i // 8] >> (i % 8) & 1:
                        if i not in names:
                            return None             # a bit no name stands for: not understood
                        per_uid[uid].add(names[i])
        if not names or sorted(names) != list(range(len(names))):
            return None
        return [names[i] for i in range(len(names))], per_uid

    def index_keywords(self, folder_dir: str) -> tuple[list, dict] | None:
        """What a folder's index says of its keywords: (names in the order the folder
        first used them, {uid: names set}).  Dovecot's main index (``dovecot.index``)
        holds the names in that order and each message's keywords as of when it was
        last written; its transaction logs, the rotated one (``dovecot.index.log.2``)
        then the current one, are replayed over it oldest first (each keyword-update,
        add or remove, and keyword-reset; a name they use that the index does not know
        comes after its names).  The logs alone hold only what happened since they were
        last rotated: a keyword first used before that is named only by the index.  A
        Maildir gives keyword letters in the same first-use order, so this names the
        letters of a lost dovecot-keywords when it agrees with every message (the caller
        checks).  None when neither the index nor a log is there, or a log cannot be
        read."""
        order: list = []
        per_uid: dict = {}
        found = False
        index = os.path.join(folder_dir, "dovecot.index")
        snap = self._index_snapshot(index) if os.path.exists(index) else None
        if snap is not None:
            # (replaying log records the index already holds gives the same end state:
            # each (uid, keyword) ends as the last record touching it says)
            order, per_uid = snap
            found = True
        for name in ("dovecot.index.log.2", "dovecot.index.log"):
            path = os.path.join(folder_dir, name)
            if not os.path.exists(path):
                continue
            out = self._dump(path)
            if out is None:
                return None
            found = True
            lines = out.splitlines()
            for n, line in enumerate(lines):
                kind = _KW_RECORD.search(line)
                if not kind:
                    continue
                detail = lines[n + 1] if n + 1 < len(lines) else ""
                m = _UIDS.search(detail)
                if not m:
                    return None                     # a record this reader does not understand
                uids = [u for r in _RANGE.finditer(_NOTE.sub("", m.group(1)))
                        for u in range(int(r.group(1)), int(r.group(2) or r.group(1)) + 1)]
                if kind.group(1) == "reset":
                    for u in uids:
                        per_uid[u] = set()
                    continue
                k = _KW_UPDATE.search(detail)
                if not k or k.group(1) not in ("0", "1"):
                    return None
                if k.group(2) not in order:
                    order.append(k.group(2))
                for u in uids:
                    names = per_uid.setdefault(u, set())
                    (names.add if k.group(1) == "0" else names.discard)(k.group(2))
        return (order, per_uid) if found else None

    # -- force-resync ---------------------------------------------------------------------
    def force_resync(self, user: str, home: str, owner: tuple[int, int] | None,
                     location: str | None = None) -> tuple[bool, str]:
        """``doveadm force-resync '*'`` on one account, as ``owner`` (uid, gid);
        ``location``: the login's mail_location with every variable expanded
        (store.mail_location), else the driver's ``maildir:~/Maildir``."""
        if owner is None:
            try:
                st = os.stat(os.path.join(home, "Maildir") if location is None else home)
            except OSError as exc:
                return False, f"cannot stat {home}/Maildir: {exc.strerror}"
            owner = (st.st_uid, st.st_gid)
        if owner[0] == 0:
            return False, ("the Maildir belongs to root, which Dovecot never serves (set store.owner to "
                           "Dovecot's mail user)")
        try:
            name = pwd.getpwuid(owner[0]).pw_name
        except KeyError:
            name = str(owner[0])
        env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "USER": user, "HOME": home, "LOGNAME": name}
        # the driver's layout, whatever the site's mail_location; as root, doveadm reads its
        # configuration and then becomes the mail user itself (mail_uid, mail_gid)
        cmd = [self.doveadm, "-c", self._conf(), "-o", f"mail_location={location or 'maildir:~/Maildir'}"]
        if os.geteuid() == 0:
            cmd += ["-o", f"mail_uid={owner[0]}", "-o", f"mail_gid={owner[1]}"]
        elif os.geteuid() != owner[0]:
            return False, f"run reconstruct as root or as the mail user (uid {owner[0]})"
        cmd += ["force-resync", "*"]
        kw: dict = {}
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env, cwd="/",
                               timeout=3600, **kw)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"{' '.join(cmd)}: {exc}"
        if p.returncode != 0:
            why = " ".join((p.stderr or p.stdout).split())[:300]
            return False, f"doveadm force-resync exited {p.returncode}: {why}"
        return True, ""
