"""The backup engine: logical view -> selection -> archive writer.

Knows nothing of the command line or of the device: it gets a store, the parsed
logical paths and an open :class:`asm.archive.writer.ArchiveWriter`.  Each folder's
metadata and message list are taken under the folder lock (briefly, by the driver's
``snapshot``), never for the whole run; a message expunged after that is counted as
vanished, never a failure.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

from asm import __version__, plugins
from asm.errors import EXIT_OK, EXIT_PARTIAL
from asm.events import Run
from asm.groups import Groups
from asm.logical import LogicalPath, Target, resolve
from asm.store.base import MessageGone, Store, StoreError


@dataclass
class BackupOptions:
    since: float | None = None          # -d: only messages stored at or after
    ignore_links: bool = False          # -i: every copy in full
    exclude: list = field(default_factory=list)   # store.backupexclude folder names
    verbose: bool = False


@dataclass
class BackupResult:
    users: int = 0
    folders: int = 0
    messages: int = 0
    links: int = 0
    bytes: int = 0
    vanished: list = field(default_factory=list)   # "user/folder/uid"
    errors: list = field(default_factory=list)     # {"mailbox", "error"}
    excluded: list = field(default_factory=list)   # mailboxes left out by store.backupexclude
    seconds: float = 0.0
    trailer: dict | None = None


def is_excluded(folder: str, exclude: list[str]) -> bool:
    """store.backupexclude names a folder (case-insensitively) and everything below it."""
    low = folder.lower()
    for name in exclude:
        n = name.lower()
        if low == n or low.startswith(n + "/"):
            return True
    return False


def select(store: Store, groups: Groups, paths: list[LogicalPath]) -> list[Target]:
    """The users and folders ``paths`` name; PathError when one names nothing.  Call it
    before opening the device so a typo writes nothing."""
    return resolve(paths, store, groups)


def run_backup(store: Store, targets: list[Target], paths: list[LogicalPath], writer,
               opts: BackupOptions, device: str = "", report=None, progress=None) -> BackupResult:
    """Write the archive for ``targets`` (from :func:`select`).  ``report(line)`` gets -v
    lines; ``progress(result)`` is called as messages go by."""
    res = BackupResult()
    run = Run("backup", device, [str(p) for p in paths],
              {"since": opts.since, "ignore_links": opts.ignore_links})
    plugins.run_start(run)
    t0 = time.monotonic()
    writer.write_header({
        "tool_version": __version__, "host": socket.gethostname(), "driver": store.name,
        "scope": [str(p) for p in paths], "since": opts.since,
        "options": {"ignore_links": opts.ignore_links, "exclude": opts.exclude},
    })
    status = EXIT_PARTIAL
    try:
        for t in targets:
            writer.add_user(t.partition, t.user, t.group)
            res.users += 1
            for f in t.folders:
                mailbox = f"/{t.partition}/{t.user}/{f}"
                if f not in t.explicit and is_excluded(f, opts.exclude):
                    res.excluded.append(mailbox)
                    continue
                _backup_folder(store, writer, t, f, mailbox, opts, res, run, report, progress)
        res.seconds = time.monotonic() - t0
        res.trailer = writer.close(errors=res.errors)
        status = EXIT_PARTIAL if res.errors else EXIT_OK
        return res
    finally:
        run.counts = {"users": res.users, "folders": res.folders, "messages": res.messages,
                      "links": res.links, "bytes": res.bytes}
        run.errors = [(e["mailbox"], e["error"]) for e in res.errors]
        plugins.run_end(run, status)


def _backup_folder(store, writer, t: Target, folder: str, mailbox: str, opts: BackupOptions,
                   res: BackupResult, run: Run, report, progress) -> None:
    try:
        snap = store.snapshot(t.user, folder, since=opts.since)
    except Exception as exc:  # one unreadable mailbox must not stop the backup of the others
        why = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
        res.errors.append({"mailbox": mailbox, "error": why})
        plugins.mailbox_done(run, mailbox, {"status": "error", "messages": 0, "bytes": 0, "error": why})
        return
    info = snap.info
    state = None
    if opts.since is not None:
        state = {}
        for m in snap.messages:
            if m.stored < opts.since:
                state.setdefault(" ".join(sorted(m.flags) + list(m.keywords)), []).append(m.uid)
    writer.add_folder(t.partition, t.user, folder, uidvalidity=info.uidvalidity, uidnext=info.uidnext,
                      subscribed=info.subscribed, uids=[m.uid for m in snap.messages], state=state)
    res.folders += 1
    n = nbytes = 0
    for m in snap.messages:
        if opts.since is not None and m.stored < opts.since:
            continue
        uid = m.uid
        for attempt in (0, 1):
            link_key = None if opts.ignore_links or m.nlink < 2 else (m.dev, m.ino)
            try:
                before = writer.counts["links"]
                writer.add_message(t.partition, t.user, folder, uid=uid, flags=m.flags,
                                   keywords=m.keywords, internaldate=m.internaldate, stored=m.stored,
                                   nlink=m.nlink, src_path=m.path, size=m.size, link_key=link_key)
            except FileNotFoundError:
                # renamed (a Maildir flag change) or expunged since the snapshot: look once more
                try:
                    if attempt == 0:
                        m = store.message(t.user, folder, uid)
                        continue
                except MessageGone:
                    pass
                res.vanished.append(f"{mailbox}/{uid}")
                if report:
                    report(f"{mailbox}: message {uid} vanished during the backup (expunged); not in the archive")
                break
            if writer.counts["links"] > before:
                res.links += 1
            else:
                res.messages += 1
                res.bytes += m.size
                nbytes += m.size
            n += 1
            break
        if progress:
            progress(res)
    if report:
        report(f"{mailbox}: {n} messages, {nbytes} bytes")
    plugins.mailbox_done(run, mailbox, {"status": "ok", "messages": n, "bytes": nbytes, "error": None})
