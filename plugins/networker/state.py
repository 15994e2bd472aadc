"""What imsasm remembers between NetWorker saves: the state of each save record.

NetWorker gives an incremental or differential ASM only a date (``-t``: the save time
of the backup it builds on).  A date cannot see mail Dovecot moved or renamed (the file
keeps its name), so imsasm keeps, per save record (the placeholder or directory path it
was handed), the state file of every save it streamed completely
(``$IMS_HOME/data/networker/state/<key>/<started>-<level>.state``, asm.backupstate
format, written atomically after the whole save stream reached NetWorker's pipe) and
turns ``-t`` back into the state of the backup NetWorker means:

* the base is the **first** state of that record whose save started at or after ``-t``
  (NetWorker takes the save time just before it starts the ASM, so the backup at ``-t``
  started then or a few seconds later: ``<started>`` is when that imsasm run began, for
  each of its records, however long the records before it took) and no later than
  ``-t`` + :data:`SLACK`; a
  differential's ``-t`` is the last full's, so the incrementals after it are not taken;
* a save NetWorker failed after imsasm wrote the stream has a state NetWorker never
  names: it started after the save NetWorker does name, so it is not the first one;
* the one case the rule gets wrong: the state of the save NetWorker names lost alone
  while a later save of the record that NetWorker does not count started within
  :data:`SLACK` of it; the directory is written and kept as a whole;
* no state at all (first save with this module version, a new placeholder, the state
  directory lost): the record is saved **full** and imsasm says so on stderr (which
  NetWorker puts in the savegroup report) and in ``imsasm.log``.  A full is always
  restorable and starts the chain again; failing would leave the night without backup.

States older than the second-to-last full of a record are removed (no later -t can
name them: an incremental's base is the last backup, a differential's the last full).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re

#: how long after NetWorker's save time (-t) the ASM of that save may have started
SLACK = 600.0

_NAME = re.compile(r"^(\d+\.\d{6})-(full|incr)\.state$")


def _dir(home: str, name: str) -> str:
    key = hashlib.sha256(os.path.normpath(name).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return os.path.join(home, "data", "networker", "state", key)


def states(home: str, name: str) -> list[tuple[float, str, str]]:
    """[(started, level, path)] of the save record ``name``, oldest first."""
    d = _dir(home, name)
    try:
        entries = os.listdir(d)
    except FileNotFoundError:
        return []
    out = []
    for e in entries:
        m = _NAME.match(e)
        if m:
            out.append((float(m.group(1)), m.group(2), os.path.join(d, e)))
    return sorted(out)


def base_for(home: str, name: str, since: float) -> tuple[float, str, str] | None:
    """The state the incremental/differential of ``name`` with ``-t since`` builds on:
    the first save of the record that started at or after ``since`` (NetWorker's save
    time, whole seconds), within :data:`SLACK` of it."""
    got = [s for s in states(home, name) if since - 2 <= s[0] <= since + SLACK]
    return got[0] if got else None


def save(home: str, name: str, started: float, full: bool, header: dict, folders: list) -> str:
    """Record the state of a save of ``name`` that reached NetWorker whole; prune."""
    from asm.backupstate import write_state
    d = _dir(home, name)
    os.makedirs(d, exist_ok=True)
    label = os.path.join(d, "name")
    if not os.path.exists(label):
        try:
            with open(label, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(name + "\n")
        except BaseException:
            # (a full disk: an empty label, never written again, was left for good)
            with contextlib.suppress(OSError):
                os.unlink(label)
            raise
    path = os.path.join(d, f"{started:.6f}-{'full' if full else 'incr'}.state")
    write_state(path, header, folders, device=f"NetWorker save set {name}")
    prune(home, name)
    return path


def prune(home: str, name: str) -> None:
    have = states(home, name)
    fulls = [s for s in have if s[1] == "full"]
    if len(fulls) < 2:
        return
    keep_from = fulls[-2][0]
    for started, _, path in have:
        if started < keep_from:
            try:
                os.unlink(path)
            except OSError:
                pass
