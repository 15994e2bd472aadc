"""The engine's verdict and what follows: files of dumps the engine saved are removed
(all but the newest ``staging.keep`` per group); after a failure they stay for the
next attempt.

A dump whose job failed (or was lost) is not left behind for good: the engine saves
the whole staging directory, so a later successful job (not an after-batch command,
which saves only its batch's files) that started after the dump was complete saved
it too, and it is then cleaned up as a saved dump.  One that no successful job saved
goes only when a newer full of its group was saved and no dump that stays continues
it; otherwise it stays (the next attempt may take it)."""
from __future__ import annotations

import os
from collections import defaultdict

from staging.catalog import Catalog, Dump

UNSAVED = ("failed", "lost")        # engine verdicts of a job that did not save its dumps


def record_engine(catalog: Catalog, status: int, job: str | None = None, ids=None) -> list[Dump]:
    """Record the engine's exit ``status`` for the unreported dumps (of ``job``, or ``ids``)."""
    dumps = catalog.unreported(job) if ids is None else [catalog.get(i) for i in ids]
    catalog.report([d.id for d in dumps], status)
    return [catalog.get(d.id) for d in dumps]


def _whole_area(d: Dump) -> bool:
    """A dump the engine saved as part of the whole staging directory (not one batch)."""
    return d.engine == "ok" and not (d.job or "").startswith("batch:")


def remove_saved(catalog: Catalog, directory: str, keep: int, only_ids=None) -> list[Dump]:
    """Remove the files of dumps the engine saved, keeping the newest ``keep`` per group.
    ``only_ids`` limits removal to those dumps (a batch) and ignores ``keep``.

    Without ``only_ids``, a dump whose job failed or was lost counts as saved when a
    later whole-area job saved it (it was complete before that job's dump started);
    one that nothing saved is removed when a newer full of its group was saved and no
    dump that stays needs it in its chain."""
    everything = catalog.all()
    present = [d for d in everything if d.status == "complete" and d.removed is None]
    saved_starts = sorted(d.started for d in everything if _whole_area(d))
    latest_save = saved_starts[-1] if saved_starts else None
    unsaved = [d for d in present if d.engine in UNSAVED]
    saved_again = {d.id for d in unsaved if only_ids is None and latest_save is not None
                   and d.finished is not None and d.finished <= latest_save}
    per_group: dict = defaultdict(list)
    for d in present:
        if d.engine == "ok" or d.id in saved_again:
            per_group[(d.partition, d.grp)].append(d)
    victims: list[Dump] = []
    for dumps in per_group.values():
        dumps.sort(key=lambda d: (d.started, d.id), reverse=True)
        victims += [d for d in dumps if d.id in only_ids] if only_ids is not None else dumps[keep:]
    if only_ids is None:
        victims += _superseded([d for d in unsaved if d.id not in saved_again], present, everything,
                               {d.id for d in victims})
    removed = []
    for d in victims:
        try:
            os.unlink(os.path.join(directory, d.file))
        except FileNotFoundError:
            pass
        catalog.mark_removed(d.id)
        removed.append(d)
    return removed


def _superseded(unsaved: list[Dump], present: list[Dump], everything: list[Dump], going: set) -> list[Dump]:
    """The dumps of ``unsaved`` (no successful job saved them) that a newer saved full of
    their group replaces and that no dump staying in the area continues."""
    newest_full: dict = {}
    for d in everything:
        if d.engine == "ok" and d.kind == "full":
            k = (d.partition, d.grp)
            newest_full[k] = max(newest_full.get(k, d.started), d.started)
    cands = {d.id: d for d in unsaved if d.started < newest_full.get((d.partition, d.grp), d.started)}
    by_id = {d.id: d for d in everything}
    while True:
        # what the dumps that stay need: their base chains
        needed: set = set()
        for d in present:
            if d.id in going or d.id in cands:
                continue
            b = d.base
            while b is not None and b not in needed:
                needed.add(b)
                b = by_id[b].base if b in by_id else None
        keep_back = [i for i in cands if i in needed]
        if not keep_back:
            return list(cands.values())
        for i in keep_back:
            del cands[i]
