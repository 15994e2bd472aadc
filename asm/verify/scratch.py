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
import shutil
import tempfile
from dataclasses import dataclass, field

from asm.archive.errors import ArchiveError
from asm.archive.reader import ArchiveReader
from asm.config import Config
from asm.errors import EXIT_OK, ImsError
from asm.groups import Groups
from asm.store import open_store
from asm.verify.archive import Problem
from asm.verify.chain import ChainView
from asm.verify.compare import Comparison, compare_restored

_PARTITION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


@dataclass
class RestoreTest:
    home: str = ""
    driver: str = ""
    comparison: Comparison | None = None
    problems: list = field(default_factory=list)
    restored: dict = field(default_factory=lambda: {"messages": 0, "links": 0, "bytes": 0, "folders": 0})


def scratch_home(parent: str | None, driver: str, partitions: set) -> str:
    home = tempfile.mkdtemp(prefix="imsverify-restore-", dir=parent)
    cfg = Config(home)
    cfg.set("store.driver", driver)
    for p in sorted(partitions):
        if p != "primary" and _PARTITION.match(p):
            d = os.path.join(home, "partitions", p)
            os.makedirs(d, exist_ok=True)
            cfg.set(f"partition:{p}.path", d)
    return home


def restore_test(view: ChainView, open_raw, driver: str, parent: str | None = None, keep: bool = False,
                 report=None) -> RestoreTest:
    """Restore the chain's archives from its last full one (``open_raw(check)`` opens one again for reading, as
    a context manager yielding a binary stream) oldest first into a scratch installation
    with ``driver``, then compare it with ``view``.  The scratch installation is
    removed unless ``keep``."""
    from asm.restore import Journal, Restorer, RestoreOptions, Selection
    out = RestoreTest(driver=driver)
    partitions = {k[0] for k in view.folders} | {k[0] for k in view.users}
    out.home = home = scratch_home(parent, driver, partitions)
    try:
        cfg = Config(home)
        store = open_store(cfg, create=True)
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
            status = res.status()
            for e in res.errors:
                out.problems.append(Problem(e.get("status", status) or status,
                                            f"restore test: {a.device}: {e['mailbox']}: {e['error']}"))
            if status != EXIT_OK and not res.errors:
                why = res.incomplete or (f"{res.corrupt} damaged members" if res.corrupt else
                                         f"{res.hostile} hostile members" if res.hostile else
                                         f"{len(res.pending)} links left unresolved" if res.pending else
                                         "it did not restore cleanly")
                out.problems.append(Problem(status, f"restore test: {a.device}: {why}"))
        out.comparison = compare_restored(view, open_store(Config(home)))
    except ImsError as exc:
        out.problems.append(Problem(exc.status, f"restore test: {exc}"))
    finally:
        if not keep:
            shutil.rmtree(home, ignore_errors=True)
    return out
