"""mkbackupdir: build and synchronise the backup image tree NetWorker saves.

    mkbackupdir [-a asm_name] [-i | -f] [-u] [-t threads] [-v] [--allow-empty] -p directory

``directory/<partition>/<group>/<user>/<folder...>`` of zero-length placeholders, with a
``.nsr`` directive (``imsasm: *``) in every directory holding them.  Each run adds
what is new and removes what vanished; every change is atomic (placeholders are created
with O_EXCL, directives replaced by rename), so it is safe from a precmd while mail
flows.  The name mapping is in :mod:`plugins.networker.tree`.  A store that holds no
users (a disk that is not mounted) is refused before anything is written, as a backup
refuses it (exit 18), unless an empty store is expected (``--allow-empty``).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from asm.backup import check_not_empty, is_excluded
from asm.cli.common import ArgParser, Progress, UsageError, die, run_command, warn
from asm.cli.context import open_installation
from asm.config import atomic_write
from asm.errors import EXIT_LOCKED, EXIT_OK, EXIT_PARTIAL
from asm.store.base import StoreError

from . import tree

PROG = "mkbackupdir"
LIMIT = 64              # old NetWorker's save-set name limit
_ASM_RE = re.compile(r"^[A-Za-z0-9_.+-]*asm$")


def build_parser() -> ArgParser:
    p = ArgParser(prog=PROG, description="Build the backup image tree (placeholders and .nsr directives).")
    p.add_argument("-a", dest="asm", default="imsasm", metavar="ASM",
                   help="ASM named in the .nsr directives (default imsasm; must end in 'asm')")
    only = p.add_mutually_exclusive_group()
    only.add_argument("-i", dest="inbox", action="store_true", help="INBOX only")
    only.add_argument("-f", dest="folders", action="store_true", help="folders only (everything but INBOX)")
    p.add_argument("-u", dest="per_user", action="store_true",
                   help="one placeholder per user instead of one per folder")
    p.add_argument("-t", dest="threads", type=int, metavar="N",
                   help="threads writing the tree, 1 to 1024 (default: one per partition)")
    p.add_argument("-v", dest="verbose", action="store_true", help="report what was added and removed")
    p.add_argument("--allow-empty", dest="allow_empty", action="store_true",
                   help="a partition with no users is expected: empty its part of the tree "
                        "(default: refuse, exit 18; or msconfig set backup.allowempty yes)")
    p.add_argument("-p", dest="directory", metavar="DIRECTORY", help="the backup image directory")
    return p


# ----------------------------------------------------------------------------- desired tree

def desired_tree(inst, args) -> tuple[dict, dict, int]:
    """({relpath: "dir"|"file"}, {dir relpath: .nsr text}, users) for the store as it is now."""
    store, groups = inst.store, inst.groups
    exclude = inst.config.backup_exclude()
    want: dict[str, str] = {}
    nsr: dict[str, str] = {"": _comment("the directories below carry the directives")}
    users = 0
    handed = f"{args.asm}: *\n"
    for part in store.partitions():
        want[part] = "dir"
        nsr[part] = _comment("the directories below carry the directives")
        for user in store.users(part):
            group = groups.group_of(user)
            gdir = f"{part}/{group}"
            want[gdir] = "dir"
            users += 1
            udir = f"{gdir}/{_placeholder(tree.encode, user, f'/{part}/{user}', args)}"
            if args.per_user:
                want[udir] = "file"
                nsr[gdir] = _comment("one placeholder per user") + handed
                continue
            nsr.setdefault(gdir, _comment("the user directories below carry the directives"))
            try:
                names = list(store.folder_names(user)) if hasattr(store, "folder_names") else [f.name for f in store.folders(user)]
            except StoreError:
                continue                    # removed while we looked
            names = [n for n in names if not is_excluded(n, exclude)]
            if args.inbox:
                names = [n for n in names if n == "INBOX"]
            want[udir] = "dir"
            nsr[udir] = _comment("one placeholder per folder; a folder directory holds its subfolders") + handed
            present = set(names)
            for name in names:
                if args.folders and name == "INBOX":
                    continue
                levels = _placeholder(tree.folder_path, name, f"/{part}/{user}/{name}", args)
                for i in range(1, len(levels)):        # parents are directories
                    d = udir + "/" + "/".join(levels[:i])
                    want[d] = "dir"
                    nsr[d] = _comment("subfolders") + handed
                path = udir + "/" + "/".join(levels)
                has_children = any(o.startswith(name + "/") for o in present if o != name) \
                    and not args.inbox
                if has_children:
                    want[path] = "dir"
                    nsr[path] = _comment("subfolders; %self is this folder's own messages") + handed
                    want[path + "/" + tree.SELF] = "file"
                else:
                    want[path] = "file"
            if args.folders and any(n.startswith("INBOX/") for n in names):
                want[udir + "/INBOX"] = "dir"
                nsr[udir + "/INBOX"] = _comment("subfolders") + handed
    for d, kind in want.items():
        if kind == "dir":
            nsr.setdefault(d, _comment("subfolders") + handed)
    return want, nsr, users


def _placeholder(encode, name: str, mailbox: str, args):
    """``encode(name)``; a name whose placeholder would be too long for a file name is a
    TreeError naming the mailbox and what to do (it was "name '...' is too long for a
    file name", naming neither the user nor the folder, nor the way out)."""
    try:
        return encode(name)
    except tree.TreeError as exc:
        from asm.archive.names import shown
        way = ("move that user's mail to a shorter user ID" if encode is tree.encode else
               "rename that folder, or build the tree with one placeholder per user (mkbackupdir -u)")
        raise tree.TreeError(f"{shown(mailbox)}: {exc}, where '%', '/', control characters and a leading '.' "
                             f"take 3 bytes each: nothing of the tree was changed; {way} and run mkbackupdir "
                             f"again") from None


def _comment(what: str) -> str:
    return f"# written by mkbackupdir: {what}; do not edit, it is rewritten on every run\n"


def long_names(directory: str, want: dict) -> tuple[int, str | None, int]:
    """(longest save-set name length, that name, the longest -p that still fits)."""
    longest, name = 0, None
    for rel, kind in want.items():
        if kind != "file":
            continue
        full = f"{directory}/{rel}"
        if len(full) > longest:
            longest, name = len(full), full
    fits = LIMIT - (longest - len(directory))
    return longest, name, fits


# ----------------------------------------------------------------------------- owner

def _owner(inst) -> tuple[int, int, str]:
    o = inst.config.owner()
    name = inst.config.get("store.owner")
    if o is None:
        return os.geteuid(), os.getegid(), "the current user"
    return o[0], o[1], name


def writable_by(path: str, uid: int, gid: int) -> bool:
    if uid == 0:
        return True
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & 0o300 == 0o300)
    groups = {gid}
    try:
        import grp
        import pwd
        pw = pwd.getpwuid(uid)
        groups |= {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}
    except (KeyError, ImportError):
        pass
    if st.st_gid in groups:
        return bool(st.st_mode & 0o030 == 0o030)
    return bool(st.st_mode & 0o003 == 0o003)


# ----------------------------------------------------------------------------- sync

class Sync:
    def __init__(self, root: str, owner: tuple[int, int] | None, report):
        self.root = root
        self.owner = owner          # chown to this when running as root
        self.report = report
        self.added = self.removed = self.rewritten = 0
        self.problems: list[str] = []

    def _own(self, path: str) -> None:
        if self.owner and os.geteuid() == 0:
            os.lchown(path, *self.owner)

    def existing(self) -> dict:
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel
            for d in dirnames:
                out[f"{rel}/{d}".lstrip("/")] = "dir"
            for f in filenames:
                if rel == "" and f in (tree.MARKER, tree.LOCK):
                    continue
                if f == tree.DIRECTIVE:
                    continue
                out[f"{rel}/{f}".lstrip("/")] = "file"
        return out

    def remove(self, rel: str, kind: str) -> None:
        path = os.path.join(self.root, rel)
        try:
            if kind == "file":
                if os.path.getsize(path) != 0 and not os.path.basename(path).startswith(".tmp-"):
                    self.problems.append(f"{path} is not an empty placeholder; left alone (remove it by hand)")
                    return
                os.unlink(path)
            else:
                nsr = os.path.join(path, tree.DIRECTIVE)
                if os.path.exists(nsr):
                    os.unlink(nsr)
                os.rmdir(path)
            self.removed += 1
            self.report(f"removed {rel}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                self.problems.append(f"{path} holds files mkbackupdir did not write; left alone")
            else:
                self.problems.append(f"cannot remove {path}: {exc.strerror}")

    def make_dir(self, rel: str) -> None:
        path = os.path.join(self.root, rel)
        try:
            os.mkdir(path, 0o755)
            self._own(path)
            self.added += 1
        except FileExistsError:
            pass

    def make_file(self, rel: str) -> None:
        path = os.path.join(self.root, rel)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
            self._own(path)
            self.added += 1
            self.report(f"added {rel}")
        except FileExistsError:
            pass
        except OSError as exc:
            self.problems.append(f"cannot create {path}: {exc.strerror}")

    def directive(self, rel: str, text: str) -> None:
        path = os.path.join(self.root, rel, tree.DIRECTIVE)
        data = text.encode("utf-8")
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    return
        except FileNotFoundError:
            pass
        try:
            atomic_write(path, data, 0o644)
            self._own(path)
            self.rewritten += 1
        except OSError as exc:
            self.problems.append(f"cannot write {path}: {exc.strerror}")


def synchronise(root: str, want: dict, nsr: dict, owner, threads: int, report) -> Sync:
    s = Sync(root, owner, report)
    have = s.existing()
    # a leaf that gained subfolders (file -> dir) or lost them (dir -> file): old form first
    changed = [r for r, k in have.items() if r in want and want[r] != k]
    cleared: set = set()        # removed with a directory that became a placeholder file
    for r in sorted(changed, key=lambda r: -r.count("/")):
        if have[r] == "dir":
            for sub in sorted((x for x in have if x.startswith(r + "/")), key=lambda x: -x.count("/")):
                s.remove(sub, have[sub])
                cleared.add(sub)
        s.remove(r, have[r])
    dirs = sorted((r for r, k in want.items() if k == "dir"), key=lambda r: (r.count("/"), r))
    for d in dirs:
        s.make_dir(d)
    s.directive("", nsr[""])
    files = sorted(r for r, k in want.items() if k == "file")
    by_user: dict[str, list] = {}
    for f in files:
        key = "/".join(f.split("/")[:3])
        by_user.setdefault(key, []).append(f)

    def work(chunk):
        for f in chunk:
            s.make_file(f)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(work, by_user.values()))
    for d in dirs:
        s.directive(d, nsr[d])
    gone = [r for r in have if r not in want or (r in changed)]
    gone = [r for r in gone if r not in changed and r not in cleared]
    for r in sorted(gone, key=lambda r: -r.count("/")):
        s.remove(r, have[r])
    return s


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if not _ASM_RE.match(args.asm):
        raise UsageError(f"-a {args.asm!r}: NetWorker runs only external ASMs whose names end in "
                         "'asm' and hold no '/', e.g. -a imsasm or -a ims2asm")
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise UsageError(f"-t {args.threads}: threads must be between 1 and 1024")
    inst = open_installation()
    directory = args.directory or inst.config.get("store.backupdir")
    if not directory:
        raise UsageError("no backup directory: give -p DIRECTORY "
                         "(or set one with msconfig set store.backupdir DIRECTORY)")
    # a partition that lists nobody is a disk not mounted (its empty mount point) far more
    # often than a store whose users all left: refuse it as imsbackup does (exit 18, 17
    # for a directory that is gone) before the tree loses a placeholder, so tonight's
    # save still names every mailbox and fails loudly rather than saving nothing
    check_not_empty(inst.store, inst.store.partitions(), [],
                    args.allow_empty or inst.config.get("backup.allowempty") == "yes")
    directory = os.path.abspath(directory)
    uid, gid, who = _owner(inst)
    if os.path.exists(directory):
        if not os.path.isdir(directory):
            raise UsageError(f"-p {directory}: not a directory")
        # (its lock, and a temporary file of its marker, are what a first run stopped before
        # it marked the tree leaves: that is an empty directory)
        if not os.path.exists(os.path.join(directory, tree.MARKER)) and \
                [n for n in os.listdir(directory) if n != tree.LOCK and not n.startswith(".tmp-")]:
            raise UsageError(f"-p {directory}: the directory is not empty and mkbackupdir did not "
                             "build it; give an empty or new directory")
        if os.path.exists(os.path.join(directory, tree.MARKER)):
            # another installation's tree (two instances on one host, the other's IMS_HOME
            # in the environment): rebuilt for this one, its save sets would save this
            # installation's mail under the other's names and none of the other's
            built_for = tree.read_marker(directory).get("ims_home")
            if isinstance(built_for, str) and os.path.realpath(built_for) != os.path.realpath(inst.config.home):
                raise UsageError(f"-p {directory} is the tree of the installation {built_for}, and this is "
                                 f"IMS_HOME={inst.config.home}: nothing was changed; give this installation's "
                                 f"tree (store.backupdir), or remove {directory} to build it for this one")
    else:
        parent = os.path.dirname(directory)
        if not os.path.isdir(parent):
            raise UsageError(f"-p {directory}: {parent} does not exist; create it first")
        if not writable_by(parent, os.geteuid(), os.getegid()):
            raise UsageError(f"-p {directory}: cannot create it, {parent} is not writable")
    check = directory if os.path.exists(directory) else os.path.dirname(directory)
    if not writable_by(check, uid, gid) and os.path.exists(directory):
        raise UsageError(f"-p {directory}: not writable by the store owner ({who}); "
                         f"chown {who if who != 'the current user' else uid} {directory} or pick another directory")

    progress = Progress()

    def report(line):
        if args.verbose:
            progress.clear()
            warn(PROG, line)

    os.makedirs(directory, exist_ok=True)
    owner = (uid, gid) if inst.config.owner() else None
    if owner and os.geteuid() == 0:
        os.chown(directory, uid, gid)
    from asm.locks import open_lock_file
    lockfd = open_lock_file(os.path.join(directory, tree.LOCK), 0o644)
    try:
        try:
            fcntl.flock(lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return die(PROG, f"another mkbackupdir is building {directory}; try again when it is done", EXIT_LOCKED)
        t0 = time.time()
        marker_path = os.path.join(directory, tree.MARKER)
        if not os.path.exists(marker_path):
            # a first build marks the tree as this installation's, being built, before it
            # makes anything: stopped (exit 130, SIGKILL) it is built on by the same command
            # run again, not refused as a directory mkbackupdir did not build; imsasm
            # refuses to save from it until a build ends
            atomic_write(marker_path, (json.dumps({"format": "ims-asm-backupdir", "version": 1,
                                                   "ims_home": inst.config.home, "asm": args.asm,
                                                   "building": True, "built": t0}, indent=1,
                                                  ensure_ascii=False) + "\n").encode("utf-8"))
            if owner and os.geteuid() == 0:
                os.chown(marker_path, uid, gid)
        progress.update(f"{PROG}: scanning the store", force=True)
        want, nsr, users = desired_tree(inst, args)
        threads = args.threads or max(1, len(inst.store.partitions()))
        progress.update(f"{PROG}: writing {sum(1 for k in want.values() if k == 'file')} placeholders", force=True)
        s = synchronise(directory, want, nsr, owner, threads, report)
        marker = {"format": "ims-asm-backupdir", "version": 1, "ims_home": inst.config.home,
                  "asm": args.asm, "mode": "users" if args.per_user else "folders",
                  "only": "inbox" if args.inbox else "folders" if args.folders else None,
                  "built": t0, "users": users,
                  "placeholders": sum(1 for k in want.values() if k == "file")}
        atomic_write(os.path.join(directory, tree.MARKER),
                     (json.dumps(marker, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
        if owner and os.geteuid() == 0:
            os.chown(os.path.join(directory, tree.MARKER), uid, gid)
    finally:
        os.close(lockfd)
    progress.clear()
    longest, name, fits = long_names(directory, want)
    if longest > LIMIT:
        if fits >= 2:
            warn(PROG, f"save-set name {name!r} is {longest} characters, over old NetWorker's limit of {LIMIT}: "
                       f"use a -p of at most {fits} characters (e.g. -p {_suggest(fits)})")
        else:
            warn(PROG, f"save-set name {name!r} is {longest} characters, over old NetWorker's limit of {LIMIT}, "
                       f"and no -p fits (the mailbox part alone is {longest - len(directory)} characters); "
                       "use -u (one placeholder per user) or a NetWorker without the limit")
    for p in s.problems:
        warn(PROG, p)
    if args.verbose or sys.stderr.isatty():
        warn(PROG, f"{directory}: {users} users, {marker['placeholders']} placeholders; "
                   f"{s.added} added, {s.removed} removed, {s.rewritten} directives written")
    return EXIT_PARTIAL if s.problems else EXIT_OK


def _suggest(n: int) -> str:
    for cand in ("/backup", "/bkup", "/bk", "/b"):
        if len(cand) <= n:
            return cand
    return "/b"


if __name__ == "__main__":
    sys.exit(main())
