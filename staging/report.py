"""The run report of a staging run (imsstage dump, NetBackup's bpstart_notify): the sum
of its dumps' imsbackup reports, each dump, and per group a Prometheus textfile
(``ims_stage_PARTITION_GROUP.prom``) instead of one for the whole run."""
from __future__ import annotations

import json
import os
import time


def stage_report(rep, res) -> None:
    """One report for the run: the sum of its staged dumps' imsbackup reports (a dump that
    failed is removed, so it counts only in its own entry and in the errors), each dump,
    and per group a textfile (ims_stage_PARTITION_GROUP.prom) instead of one for the run."""
    from asm.report import textfile
    counts = {k: 0 for k in ("users", "folders", "messages", "links", "bytes")}
    dumps, errors = [], []
    for o in res.dumps:
        r = o.report or {}
        if o.ok:                    # a failed dump's file is removed: nothing of it was staged
            for k in counts:
                counts[k] += int((r.get("counts") or {}).get(k) or 0)
        errors += [dict(e, dump=o.dump.file) for e in r.get("errors") or []]
        if not o.ok:
            errors.append({"mailbox": f"/{o.unit.partition}/{o.unit.group}", "error": o.error, "dump": o.dump.file})
        dumps.append({"file": o.dump.file, "id": o.dump.id, "partition": o.unit.partition,
                      "group": o.unit.group, "kind": o.dump.kind, "base": o.dump.base, "ok": o.ok,
                      "size": o.size, "sha256": o.dump.sha256, "archive_id": r.get("archive_id"),
                      "counts": r.get("counts"), "error": o.error or None})
        if rep.textdir:
            doc = {"status": 0 if o.ok else (r.get("status") or 1), "ended": time.time(),
                   "duration_seconds": round(o.seconds, 3), "counts": r.get("counts") or {},
                   "errors": r.get("errors") or ([o.error] if o.error else [])}
            try:
                textfile(rep.textdir, rep.kind, o.unit.partition, o.unit.group, doc)
            except OSError as exc:
                rep.warnings.append(f"cannot write the metrics file in {rep.textdir}: {exc.strerror or exc}")
    rep.textdir = None              # written per group above
    rep.update(counts=counts, errors=errors, dumps=dumps, batches=res.batches,
               pushed=len(res.pushed), remote=res.remote)



def job_report_path(directory: str, job: str) -> str:
    """Where bpstart_notify leaves its run's report for bpend_notify to show."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in job)
    return os.path.join(directory, f".report-{safe}.json")


def summary(doc: dict) -> str:
    """What a run staged (its counts are of the dumps that were staged), and its errors."""
    c = doc.get("counts") or {}
    dumps = doc.get("dumps") or []
    failed = sum(1 for d in dumps if d.get("ok") is False)
    return (f"{len(dumps) - failed} dumps" + (f" ({failed} more failed, not staged)" if failed else "")
            + f", {c.get('messages', 0)} messages, {c.get('links', 0)} links, "
            f"{c.get('bytes', 0)} bytes, {len(doc.get('errors') or [])} errors")


def read(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
