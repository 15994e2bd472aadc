"""Retention of the remote copies (``imsstage prune``): per group, keep the newest
``staging.remote.keep`` dumps, the newest of each of the last ``keepdaily`` days,
``keepweekly`` ISO weeks and ``keepmonthly`` months that have dumps (the rules of
borg prune and restic forget), and every dump a kept incremental needs (its chain
back to the full).  The remote copies of the rest are removed; one under object lock
is kept until its lock ends (a later prune removes it).  A rule of 0 is off; a policy
with every rule off (or unset) keeps nothing, so prune refuses it rather than remove
every copy.  Whatever the policy, each group keeps its newest remote full when no kept
chain has one (a kept incremental whose own full was never pushed), so the remote
copies never lose the last full a restore starts from.  Local files follow
``staging.keep`` (``imsstage done``), independently."""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from asm.errors import EXIT_OK, EXIT_USAGE, device_status
from staging.catalog import Catalog, Dump
from staging.errors import StagingError
from staging.lock import AreaLock

OPTIONS = ("keep", "keepdaily", "keepweekly", "keepmonthly")


@dataclass
class Policy:
    """How many dumps to keep: the last N, and per day, week and month."""

    keep: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    @classmethod
    def from_config(cls, config) -> "Policy | None":
        """The policy of the ``staging.remote.keep*`` options; None when none of them
        keeps anything (all unset or 0): such a policy would remove every remote copy."""
        vals = {k: config.get(f"staging.remote.{k}") for k in OPTIONS}
        n = {k: int(v or 0) for k, v in vals.items()}
        if not any(n.values()):
            return None
        return cls(n["keep"], n["keepdaily"], n["keepweekly"], n["keepmonthly"])

    def describe(self) -> str:
        return ", ".join(f"{what} {n}" for what, n in (("newest", self.keep), ("daily", self.daily),
                                                       ("weekly", self.weekly), ("monthly", self.monthly)) if n) \
            or "nothing"


def _periods(policy: Policy):
    lt = time.localtime
    yield policy.daily, lambda t: time.strftime("%Y-%m-%d", lt(t))
    yield policy.weekly, lambda t: time.strftime("%G-W%V", lt(t))
    yield policy.monthly, lambda t: time.strftime("%Y-%m", lt(t))


def kept(dumps: list[Dump], policy: Policy, catalog: Catalog) -> set[int]:
    """The ids of ``dumps`` (complete, with a remote copy) that ``policy`` keeps, with
    the chains the kept ones need."""
    keep: set[int] = set()
    groups: dict = defaultdict(list)
    for d in dumps:
        groups[(d.partition, d.grp)].append(d)
    for ds in groups.values():
        ds.sort(key=lambda d: (d.started, d.id), reverse=True)
        keep.update(d.id for d in ds[:policy.keep])
        for n, period in _periods(policy):
            seen: list = []
            for d in ds:
                k = period(d.started)
                if k in seen:
                    continue
                if len(seen) >= n:
                    break
                seen.append(k)
                keep.add(d.id)
    _add_chains(keep, catalog)
    # the last remote full of a group is never removed: when no kept dump is a pushed
    # full (the kept incremental's own full was never pushed), the newest pushed full
    # stays -- a policy that keeps anything keeps something a restore can start from
    for ds in groups.values():
        fulls = [d for d in ds if d.kind == "full"]
        if fulls and not any(d.id in keep for d in fulls):
            keep.add(fulls[0].id)
    return keep


def _add_chains(keep: set[int], catalog: Catalog) -> None:
    """An incremental is worth nothing without its base chain: add the chains."""
    todo = list(keep)
    while todo:
        d = catalog.get(todo.pop())
        if d is not None and d.base is not None and d.base not in keep:
            keep.add(d.base)
            todo.append(d.base)


@dataclass
class PruneReport:
    """What pruning did: dumps kept, removed, and left because they were locked."""

    kept: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    locked: list = field(default_factory=list)        # (Dump, why)
    failed: list = field(default_factory=list)        # (Dump, error, status)
    status: int = EXIT_OK


def prune(config, directory: str, dry_run: bool = False, lock_wait: float = 0.0, say=lambda s: None) -> PruneReport:
    policy = Policy.from_config(config)
    if policy is None:
        raise StagingError("no remote retention is set (staging.remote.keep, keepdaily, keepweekly and "
                           "keepmonthly are all unset or 0, which would keep no copy): msconfig set "
                           "staging.remote.keepdaily 7 (and/or staging.remote.keep, keepweekly, keepmonthly); "
                           "nothing was removed", EXIT_USAGE)
    from staging.remote import backend
    lock = AreaLock(directory).acquire(lock_wait, "imsstage prune")
    cat = Catalog(directory)
    rep = PruneReport()
    try:
        dumps = cat.pushed()
        keep = kept(dumps, policy, cat)
        say(f"remote retention ({policy.describe()}): {len(keep)} of {len(dumps)} remote copies kept")
        for d in sorted(dumps, key=lambda d: (d.started, d.id)):
            if d.id in keep:
                rep.kept.append(d)
                continue
            if dry_run:
                say(f"{d.file}: would remove {d.remote}")
                rep.removed.append(d)
                continue
            be = backend(d.remote, f"removing {d.remote}")
            try:
                be.remove(d.remote, config)
            except Exception as exc:
                if be.Locked and isinstance(exc, be.Locked):
                    rep.locked.append((d, str(exc)))
                    say(f"{d.file}: kept: {exc}")
                    continue
                if isinstance(exc, be.RemoteError):
                    rep.failed.append((d, str(exc), device_status(exc)))
                    say(f"{d.file}: removing {d.remote} FAILED: {exc}")
                    continue
                raise
            cat.remote_removed(d.id)
            rep.removed.append(d)
            say(f"{d.file}: removed {d.remote}")
        if rep.failed:
            rep.status = rep.failed[0][2]
        return rep
    finally:
        cat.close()
        lock.release()
