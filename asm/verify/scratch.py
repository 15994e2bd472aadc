"""The restore test: restore a chain into a scratch installation of its own, compare
what a client would see there with the chain's view, and remove it.

The scratch installation is a fresh IMS_HOME under a temporary directory (or under the
directory given), with the store driver of the installation (or the archive's), one
directory per partition the archives name, its own restore journal and lock files: the
live store, its journal and its held deliveries are never touched.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field

from asm import atend
from asm.archive.errors import ArchiveError
from asm.archive.reader import ArchiveReader
from asm.config import Config
from asm.errors import EXIT_OK, ImsError
from asm.groups import Groups
from asm.store import open_store
from asm.trees import remove_tree
from asm.verify.archive import Problem
from asm.verify.chain import ChainView
from asm.verify.compare import Comparison, compare_restored, compare_subscriptions

_PARTITION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


@dataclass
class RestoreTest:
    """A test restore into a scratch installation and what comparing it found."""

    home: str = ""
    driver: str = ""
    comparison: Comparison | None = None
    problems: list = field(default_factory=list)
    restored: dict = field(default_factory=lambda: {"messages": 0, "links": 0, "bytes": 0, "folders": 0})
    served: str = ""            # "dovecot": also compared over IMAP; else why not


def layout_options(location) -> str:
    """What of a Maildir store's ``mail_location`` (a MailLocation, or None) decides which
    folder names it can keep and how they lie on disk: ``:LAYOUT=fs``, ``:DIRNAME=...``,
    ``:UTF-8`` ("" for Maildir++ as the scratch store has it by default)."""
    if location is None or not location.is_maildir:
        return ""
    out = ":LAYOUT=fs" if location.layout == "fs" else ""
    if location.dirname:
        out += f":DIRNAME={location.dirname}"
    if location.utf8:
        out += ":UTF-8"
    return out


def scratch_home(parent: str | None, driver: str, partitions: set, owner: str | None = None,
                 options: str = "") -> str:
    """A fresh scratch installation; ``options``: the live Maildir store's layout options
    (:func:`layout_options`), kept by the scratch store under <home>/mail/<user>/Maildir."""
    from asm.locks import owned_tempdir
    home = owned_tempdir("imsverify-restore-", parent)     # (a killed run's, left behind, removed)
    if owner:
        os.chmod(home, 0o755)       # the mail user Dovecot serves as reaches the store inside
    cfg = Config(home)
    cfg.set("store.driver", driver)
    if owner:
        cfg.set("store.owner", owner)
    if options:
        mail = os.path.join(home, "mail")
        os.makedirs(mail, mode=0o755)
        path = mail.replace("%", "%%").replace(":", "::")
        cfg.set("store.mail_location", f"maildir:{path}/%u/Maildir{options}")
        return home
    for p in sorted(partitions):
        if p != "primary" and _PARTITION.match(p):
            d = os.path.join(home, "partitions", p)
            os.makedirs(d, exist_ok=True)
            cfg.set(f"partition:{p}.path", d)
    return home


def mail_owner(live_owner: str | None) -> str | None:
    """The user a private Dovecot serves the scratch store as: the installation's
    store.owner, else ``vmail`` or ``mail`` when they exist (None: not as root, or none)."""
    import pwd
    if os.geteuid() != 0:
        return None
    for name in (live_owner, "vmail", "mail"):
        if not name:
            continue
        try:
            pw = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        except KeyError:
            continue
        if pw.pw_uid != 0:
            return pw.pw_name
    return None


def restore_test(view: ChainView, open_raw, driver: str, parent: str | None = None, keep: bool = False,
                 report=None, imap: bool = True, live_owner: str | None = None, location=None) -> RestoreTest:
    """Restore the chain's archives from its last full one (``open_raw(check)`` opens one again for reading, as
    a context manager yielding a binary stream) oldest first into a scratch installation
    with ``driver``, then compare it with ``view``.  ``location``: the live Maildir
    store's MailLocation (its store.mail_location), whose folder layout the scratch store
    keeps (LAYOUT=fs holds names Maildir++ cannot).  The scratch installation is
    removed unless ``keep``."""
    from asm.restore import Journal, Restorer, RestoreOptions, Selection
    from asm.verify import imap as imapview
    out = RestoreTest(driver=driver)
    partitions = {k[0] for k in view.folders} | {k[0] for k in view.users}
    owner = None
    if driver != "maildir":
        out.served = "the classic store has no IMAP server"
    elif not imap:
        out.served = "not asked"
    else:
        out.served = imapview.available() or ""
        if not out.served:
            owner = mail_owner(live_owner)
            if owner is None:
                out.served = "no mail user to serve the scratch store as (set store.owner)"
    options = layout_options(location) if driver == "maildir" and partitions <= {"primary"} else ""
    out.home = home = scratch_home(parent, driver, partitions, owner, options)
    if not keep:
        # (also when a signal cuts the removal below short: the command finishes it, asm/atend.py;
        # a SIGTERM in it left restored mail in --scratch)
        atend.at_end(remove_tree, home)
    try:
        cfg = Config(home)
        store = _keeping(open_store(cfg, create=True), home)
        groups = Groups()
        journal = Journal(os.path.join(home, "data", "restore-journal.db"))
        for i, a in enumerate(view.chain):
            last = i == len(view.chain) - 1
            opts = RestoreOptions(continue_on_error=True, keep_held=not last,
                                  reffile=os.path.join(home, "data", f"refs-{i}.json"),
                                  spool_dir=os.path.join(home, "data", "spool"))
            with open_raw(a) as raw:
                try:
                    reader = ArchiveReader(raw, a.header.get("blocking_factor", 20))
                except ArchiveError as exc:
                    out.problems.append(Problem(exc.status, f"restore test: {a.device}: {exc}"))
                    continue
                res = Restorer(store, groups, reader, opts, Selection([], groups), journal,
                               device=a.device, report=report).restore()
            for k in ("messages", "links", "bytes", "folders"):
                out.restored[k] += getattr(res, k)
            # (a mailbox the archive's backup could not read is named by the archive's own
            # check, with its status: not again as a restore that did not go cleanly)
            status = res.restored_status()
            for e in res.errors:
                out.problems.append(Problem(e.get("status", status) or status,
                                            f"restore test: {a.device}: {e['mailbox']}: {e['error']}"))
            if status != EXIT_OK and not res.errors:
                why = res.incomplete or res.trailing or (f"{res.corrupt} damaged members" if res.corrupt else
                                         f"{res.hostile} hostile members" if res.hostile else
                                         f"{len(res.pending)} links left unresolved" if res.pending else
                                         "it did not restore cleanly")
                out.problems.append(Problem(status, f"restore test: {a.device}: {why}"))
        scratch = _keeping(open_store(Config(home)), home)
        out.comparison = compare_restored(view, scratch)
        if scratch.name == view.archives[-1].header.get("driver"):
            # (a store of another driver may keep none: the classic store keeps no
            # subscription without its folder)
            compare_subscriptions(out.comparison, view, scratch, sorted(view.subscriptions), "restore test")
        if owner is not None:
            _compare_served(view, scratch, home, owner, out)
    except ImsError as exc:
        out.problems.append(Problem(exc.status, f"restore test: {exc}"))
    finally:
        if not keep:
            remove_tree(home)
    return out


def _keeping(store, home: str):
    """The scratch Maildir store keeps keywords beyond the 26 file-name letters itself,
    in <home>/data/index-keywords.json: no Dovecot serves it while the restore writes, and
    the live store's restore gives them to Dovecot's index (docs/dovecot.md, "Keywords
    beyond 26"), so the test restores and compares every keyword as that restore does."""
    if hasattr(store, "keep_index_keywords") and store._doveadm() is None:
        os.makedirs(os.path.join(home, "data"), exist_ok=True)
        store.keep_index_keywords(os.path.join(home, "data", "index-keywords.json"))
    return store


def _compare_served(view: ChainView, scratch, home: str, owner: str, out: RestoreTest) -> None:
    """The scratch Maildir store as a private Dovecot serves it to a client."""
    import pwd

    from asm.verify import imap as imapview
    pw = pwd.getpwnam(owner)
    blocked = _unreachable(os.path.dirname(home), pw.pw_uid, pw.pw_gid)
    if blocked:
        out.served = (f"the mail user {owner} cannot reach {blocked}: give --scratch a directory it can "
                      "reach to compare over IMAP too")
        return
    users = {}
    for part in scratch.partitions():
        for user in scratch.users(part):
            users[user] = scratch._root(user)
    for d in (os.path.join(home, "data"),):
        if os.path.isdir(d):
            os.chmod(d, 0o755)
    # Dovecot's sockets live in its base_dir: a short path (a socket's is at most 107 bytes)
    work = atend.scratch_dir("imsverify-dovecot-", "/tmp" if os.path.isdir("/tmp") else None, 0o755)
    layout = getattr(scratch, "_layout", None)
    dov = imapview.PrivateDovecot(work, users, pw.pw_uid, pw.pw_gid,
                                  layout_options(layout.location if layout is not None else None))
    try:
        dov.start()
        keeper = getattr(scratch, "_doveadm_cache", None)
        imapview.compare_served(view, dov, out.comparison, scratch,
                                kept=getattr(keeper, "index_only", None))
        out.served = "dovecot"
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        out.served = f"the private Dovecot did not run ({exc})"
    finally:
        dov.stop()
        remove_tree(work)


def _unreachable(path: str, uid: int, gid: int) -> str | None:
    """The first directory on the way to ``path`` that ``uid`` cannot enter, or None."""
    import stat
    path = os.path.abspath(path)
    parts = path.split(os.sep)
    for i in range(2, len(parts) + 1):
        d = os.sep.join(parts[:i]) or os.sep
        try:
            st = os.stat(d)
        except OSError:
            return d
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return f"{d} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None
