"""One staging run, start to end: lock, recover from a killed run, plan, dump in
batches, push each batch to the media server (when a remote is set), hand each full
batch to the engine, record, clean up.  The command line
(:mod:`staging.cli`) and the NetBackup notify scripts call these functions."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import time
import uuid
from dataclasses import dataclass, field

from asm.errors import EXIT_DEADLINE, EXIT_NOSPACE, EXIT_OK, EXIT_PARTIAL, worst
from asm.units import human
from staging.catalog import Catalog, catalog_error
from staging.cleanup import record_engine, remove_saved
from staging.dump import Runner, remove_files_of, remove_leftovers
from staging.errors import Missing, NoSpace, StagingError
from staging.lock import AreaLock
from staging.plan import describe_batches, estimate, free_space, group_units, make_plan

MODES = ("full", "incr", "cinc")   # full; since the last dump of any kind; since the last full


def staging_dir(config, given: str | None, create: bool = True) -> str:
    """The staging directory (-D, else staging.dir), checked.  ``create``: made if it is
    missing, one level deep (dump, plan, check); else a missing one is named (list,
    done, locate, restore, ...): a mistyped -D read as an empty catalog, exit 0 (and
    'done --status 0' recorded the engine's verdict on no dump)."""
    d = given or config.get("staging.dir")
    if not d:
        raise StagingError("no staging directory: pass -D DIR or run 'msconfig set staging.dir /path'")
    d = os.path.abspath(d)
    if not create and not os.path.isdir(d):
        where = f"-D {given}" if given else f"staging.dir {d}"
        raise StagingError(f"staging directory {d} does not exist: check {where}; nothing was done")
    try:
        # one level, as mkdir makes it: a mistyped path (/nonexist/stage) must not be
        # made with its parents and dumped into
        os.mkdir(d, mode=0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        where = f"-D {given}" if given else f"staging.dir {d}"
        raise StagingError(f"staging directory {d}: its parent {os.path.dirname(d)} does not exist: "
                           f"check {where} (the staging directory is made only one level deep, as "
                           f"mkdir does)") from None
    except OSError as exc:
        raise StagingError(f"cannot create staging directory {d!r}: {exc.strerror}") from None
    if not os.path.isdir(d):
        raise StagingError(f"staging directory {d!r} is not a directory")
    if not os.access(d, os.W_OK):
        raise StagingError(f"staging directory {d!r} is not writable")
    return d


def default_jobs(config) -> int:
    j = config.get("staging.jobs")
    return int(j) if j else (os.cpu_count() or 1)


@dataclass
class StageResult:
    """What a staging run did: its exit status, every dump's outcome, batches."""

    status: int = EXIT_OK
    dumps: list = field(default_factory=list)        # Outcome of every dump
    batches: int = 0
    recovered: int = 0                               # stale 'running' rows turned 'failed'
    message: str = ""
    remote: str | None = None                        # where dumps were pushed
    pushed: list = field(default_factory=list)       # Dump rows pushed
    push_failed: list = field(default_factory=list)  # (Dump, error, status)
    push_message: str = ""


def remote_of(config, given: str | None) -> str | None:
    """The push target: ``given`` (``--push``; "" for none) or ``staging.remote``."""
    spec = config.get("staging.remote") if given is None else given
    if not spec:
        return None
    from staging.remote import push_target
    return push_target(spec, "--push" if given else "staging.remote")


def store_units(inst, names: list[str] | None, what: str) -> list:
    """The (partition, group) units of ``names`` (None: the whole store), refusing an
    empty store as a dump and a check alike."""
    if not names:
        # a whole-store run: a partition without users is a wrong path or a disk that
        # is not mounted, not a group to skip in silence (as imsbackup / would say)
        # (EmptyStore, UnlistedStore: asm.errors statuses of their own, as imsbackup's)
        from asm.backup import check_not_empty
        check_not_empty(inst.store, inst.store.partitions(), [],
                        allow_empty=inst.config.get("backup.allowempty") == "yes")
    try:
        units = group_units(inst.store, inst.groups, names)
    except ValueError as exc:
        raise StagingError(str(exc)) from None
    if not units:
        raise StagingError(f"no backup group has users: nothing to {what}")
    return units


def stage(inst, directory: str, names: list[str] | None = None, mode: str = "full", jobs: int = 1,
          after_batch: str | None = None, deadline: float | None = None, job: str | None = None,
          lock_wait: float = 0.0, say=lambda s: None, progress=None, plan_only: bool = False,
          push: str | None = None, push_progress=None) -> StageResult:
    """Dump the groups into ``directory``.  ``deadline`` is seconds from now.  ``push``
    is the remote directory each completed dump is pushed to (None: ``staging.remote``;
    "": no push)."""
    t_end = time.monotonic() + deadline if deadline else None
    remote = None if plan_only else remote_of(inst.config, push)
    lock = AreaLock(directory).acquire(lock_wait, "imsstage dump")
    cat = Catalog(directory)
    try:
        return _stage(inst, directory, cat, lock, names, mode, jobs, after_batch, deadline, t_end, job, say,
                      progress, plan_only, remote, push_progress)
    except sqlite3.DatabaseError as exc:
        # a catalog that cannot be written (a full disk: 13) or is damaged: one line
        err = catalog_error(cat.path, exc)
        if err is None:
            raise
        raise err from None
    finally:
        cat.close()
        lock.release()


def recover(cat: Catalog, directory: str) -> tuple[list, list]:
    """What a run that was killed (or stopped by a full disk) left: its ``running`` rows
    marked failed, and no file of a failed dump: temporary files, and a final name a
    rename made before the catalog could record it.  Returns (rows failed now, files
    removed)."""
    stale = cat.fail_stale()
    left = remove_leftovers(directory)
    for d in cat.failed_files():
        if remove_files_of(directory, d):
            cat.mark_removed(d.id)
            left.append(os.path.join(directory, d.file))
    return stale, left


def _stage(inst, directory, cat, lock, names, mode, jobs, after_batch, deadline, t_end, job, say, progress,
           plan_only, remote, push_progress) -> StageResult:
    res = StageResult(remote=remote)
    other = cat.claim_installation(inst.config.home, record=not plan_only)
    if other is not None:
        raise StagingError(f"staging directory {directory} holds the dumps of the installation {other}, and "
                           f"this is IMS_HOME={inst.config.home}: nothing was staged; give each installation "
                           f"a staging directory of its own (-D, staging.dir); an installation moved from "
                           f"{other} starts again with a full dump in a new one")
    stale, left = recover(cat, directory)
    res.recovered = len(stale)
    if stale or left:
        say(f"recovered from a killed run: {len(stale)} dumps marked failed, "
            f"{len(left)} leftover files removed")
    units = store_units(inst, names, "stage")
    exclude = inst.config.backup_exclude()
    for u in units:
        if mode == "full":
            u.kind = "full"
        else:
            base = cat.last_base(u.partition, u.group, full_only=(mode == "cinc"))
            if base is None:
                u.kind = "full"
                say(f"{u.label}: no earlier {'full ' if mode == 'cinc' else ''}dump to continue: a full dump")
            else:
                u.kind, u.base, u.since = "incr", base.id, float(int(base.started))
        estimate(inst.store, u, exclude, u.since)
        say(f"{u.label}: {len(u.users)} users, {u.messages} messages, {u.kind}"
            + (f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(u.since))}" if u.since else "")
            + f", about {human(u.estimate)}")
    plan = make_plan(units, directory, can_batch=bool(after_batch) or plan_only)
    say(f"{len(units)} groups, about {human(plan.total)}; {human(plan.capacity)} free in {directory}")
    if len(plan.batches) > 1:
        say(f"the staging area cannot hold every group at once: {len(plan.batches)} batches "
            f"({describe_batches(plan)}); "
            + (f"'{after_batch}' saves each batch before the next" if after_batch
               else "a dump needs --after-batch COMMAND to save each batch before the next"))
    if plan_only:
        res.batches = len(plan.batches)
        res.message = describe_batches(plan)
        return res
    run_id = uuid.uuid4().hex[:12]
    runner = Runner(inst.config.home, directory, cat, run_id, jobs, lock_fd=lock.fd,
                    deadline=t_end, report=say, progress=progress)
    for i, batch in enumerate(plan.batches, 1):
        if i > 1:
            need = sum(u.estimate for u in batch)
            free, reserve = free_space(directory)
            if need > free - reserve:
                raise NoSpace(f"batch {i} needs about {human(need)} but only {human(free - reserve)} is "
                              f"free in {directory} after batch {i - 1} was saved: free space and run again")
        outs = runner.run(batch)
        res.dumps += outs
        res.batches = i
        if runner.timed_out:
            res.status = EXIT_DEADLINE
            res.message = (f"the dumps did not finish within {deadline:.0f}s; unfinished dumps were "
                           f"stopped and removed: stage ahead (e.g. from cron) and only check at backup time")
            return res
        failed = [o for o in outs if not o.ok]
        if failed:
            # a dump stopped by a full staging disk is 13, as every full local disk
            res.status = worst(res.status, *(o.status or EXIT_PARTIAL for o in failed))
        ok_ids = [o.dump.id for o in outs if o.ok]
        if remote and ok_ids:
            from staging.remote import push_dumps
            rep = push_dumps(cat, directory, [cat.get(i) for i in ok_ids], remote, inst.config,
                             say=say, progress=push_progress, deadline=t_end)
            res.pushed += rep.pushed
            res.push_failed += rep.failed
            if rep.skipped:
                say(f"{len(rep.skipped)} dump(s) not pushed: {rep.skipped[0][1]}; 'imsstage push' sends them")
            if rep.failed and not res.push_message:
                res.push_message = rep.message
        if i < len(plan.batches):
            files = [os.path.join(directory, o.dump.file) for o in outs if o.ok]
            say(f"batch {i} of {len(plan.batches)} staged; running: {after_batch}")
            rc = subprocess.run(["/bin/sh", "-c", after_batch, "sh", *files],
                                env=dict(os.environ, IMS_STAGING_DIR=directory, IMS_STAGING_BATCH=str(i))
                                ).returncode
            cat.claim(ok_ids, f"batch:{run_id}:{i}")
            record_engine(cat, rc, ids=ok_ids)
            if rc != 0:
                res.status = EXIT_PARTIAL
                res.message = (f"the after-batch command failed (exit {rc}) on batch {i}: its files stay "
                               f"in {directory}; batches {i + 1}-{len(plan.batches)} were not dumped")
                return res
            remove_saved(cat, directory, 0, only_ids=set(ok_ids))
        elif job:
            cat.claim(ok_ids, job)
    if res.status != EXIT_OK:
        bad = [o for o in res.dumps if not o.ok]
        res.message = f"{len(bad)} of {len(res.dumps)} dumps failed: " + "; ".join(
            f"{o.unit.label}: {o.error}" for o in bad)
    if res.push_failed and res.status != EXIT_NOSPACE:
        # the push's own status (10 connect, 11 host key, 12 auth, 13 far disk full,
        # 14 link lost, 3 otherwise) says more than "some dumps failed"
        res.status = res.push_failed[0][2]
    return res


def push_pending(config, directory: str, spec: str | None = None, lock_wait: float = 0.0,
                 say=lambda s: None, progress=None):
    """``imsstage push``: push the complete dumps whose push failed or was never made
    (to ``spec``, else ``staging.remote``).  Returns (PushReport, dumps gone locally)."""
    remote = remote_of(config, spec)
    if not remote:
        raise StagingError("no remote to push to: pass --to [user@]host[:port]:dir or run "
                           "'msconfig set staging.remote [user@]host[:port]:dir'")
    lock = AreaLock(directory).acquire(lock_wait, "imsstage push")
    cat = Catalog(directory)
    try:
        from staging.remote import PushReport, push_dumps
        todo = cat.unpushed()
        gone = [d for d in todo if d.removed is not None]
        todo = [d for d in todo if d.removed is None]
        for d in gone:
            say(f"{d.file}: not pushed: its file was removed from the area after the engine saved it")
        rep = push_dumps(cat, directory, todo, remote, config, say=say, progress=progress) if todo else PushReport()
        return rep, gone
    finally:
        cat.close()
        lock.release()


def engine_done(directory: str, status: int, keep: int, job: str | None = None,
                lock_wait: float = 60.0) -> tuple[list, list]:
    """The engine finished with ``status``: record it on the unreported dumps (of ``job``)
    and, on 0, remove saved files beyond ``keep``.  Returns (reported, removed)."""
    lock = AreaLock(directory).acquire(lock_wait, "imsstage done")
    cat = Catalog(directory)
    try:
        reported = record_engine(cat, status, job=job)
        removed = remove_saved(cat, directory, keep) if status == 0 else []
        return reported, removed
    except sqlite3.DatabaseError as exc:
        # a full staging disk: 13 in one line, as a dump says it (bpend_notify, which
        # calls this directly, said "internal error", exit 70)
        err = catalog_error(cat.path, exc, dumping=False)
        if err is None:
            raise
        raise err from None
    finally:
        cat.close()
        lock.release()


def check_fresh(inst, directory: str, mode: str, max_age: float, job: str | None = None,
                lock_wait: float = 0.0) -> list:
    """For backups staged ahead: every group must have a complete dump no engine has
    saved -- none has taken it yet, or the job that took it failed or never reported,
    so a retry takes the files kept for it -- younger than ``max_age`` seconds (a full
    one when ``mode`` is full), whose file is there with its recorded size.  Claims them
    for ``job`` (clearing a failed job's verdict); raises Missing."""
    # no group at all is no fresh dump for every group: an empty store (a disk that is
    # not mounted) is refused as the dump refuses it (exit 18), not found vacuously fresh
    units = store_units(inst, None, "check")
    lock = AreaLock(directory).acquire(lock_wait, "check")
    cat = Catalog(directory)
    try:
        now = time.time()
        fresh, missing = [], []
        pending = cat.claimable()
        for u in units:
            # an unreported dump another job claimed is that job's; one whose job failed
            # or was lost is anyone's again
            cands = [d for d in pending if d.partition == u.partition and d.grp == u.group
                     and now - d.started <= max_age and (mode != "full" or d.kind == "full")
                     and (d.engine is not None or d.job is None or d.job == job)]
            cands = [d for d in cands if _present(directory, d)]
            if cands:
                fresh.extend(cands)
            else:
                missing.append(u.label)
        if missing:
            raise Missing(f"no fresh complete {'full ' if mode == 'full' else ''}dump (younger than "
                          f"{max_age / 3600:g} h) in {directory} for: {', '.join(missing)}; run "
                          f"'imsstage dump {'--full' if mode == 'full' else '--' + mode}' first (e.g. from cron)")
        if job:
            cat.reclaim([d.id for d in fresh], job)
        return fresh
    except sqlite3.DatabaseError as exc:
        err = catalog_error(cat.path, exc, dumping=False)
        if err is None:
            raise
        raise err from None
    finally:
        cat.close()
        lock.release()


def _present(directory: str, d) -> bool:
    try:
        return os.path.getsize(os.path.join(directory, d.file)) == d.size
    except OSError:
        return False
