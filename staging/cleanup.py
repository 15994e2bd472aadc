"""The engine's verdict and what follows: files of dumps the engine saved are removed
(all but the newest ``staging.keep`` per group); after a failure they stay for the
next attempt."""
from __future__ import annotations

import os
from collections import defaultdict

from staging.catalog import Catalog, Dump


def record_engine(catalog: Catalog, status: int, job: str | None = None, ids=None) -> list[Dump]:
    """Record the engine's exit ``status`` for the unreported dumps (of ``job``, or ``ids``)."""
    dumps = catalog.unreported(job) if ids is None else [catalog.get(i) for i in ids]
    catalog.report([d.id for d in dumps], status)
    return [catalog.get(d.id) for d in dumps]


def remove_saved(catalog: Catalog, directory: str, keep: int, only_ids=None) -> list[Dump]:
    """Remove the files of dumps the engine saved, keeping the newest ``keep`` per group.
    ``only_ids`` limits removal to those dumps (a batch) and ignores ``keep``."""
    removed = []
    per_group: dict = defaultdict(list)
    for d in catalog.all():
        if d.status == "complete" and d.removed is None and d.engine == "ok":
            per_group[(d.partition, d.grp)].append(d)
    for dumps in per_group.values():
        dumps.sort(key=lambda d: (d.started, d.id), reverse=True)
        victims = [d for d in dumps if d.id in only_ids] if only_ids is not None else dumps[keep:]
        for d in victims:
            try:
                os.unlink(os.path.join(directory, d.file))
            except FileNotFoundError:
                pass
            catalog.mark_removed(d.id)
            removed.append(d)
    return removed
