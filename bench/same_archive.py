#!/usr/bin/env python3
"""Two trees' imsbackup on one store: the same archive, member by member?

    git worktree add /tmp/main-tree main        # (or git archive main | tar -x -C DIR)
    python3 bench/same_archive.py --old /tmp/main-tree --new . --home $IMS_HOME --out /tmp/cmp -- -d 20261203:120000 /
    python3 bench/same_archive.py --old ... --new ... --home ... --out ... -- --base '/bench/base-{tree}.state' /

Each tree's ``python -m asm.cli.imsbackup -f OUT/<old|new>.ims ARGS`` runs with a fixed
archive id and creation time (asm.archive.writer's uuid4 and time patched in the child),
so two trees that write the same members write the same bytes.  An argument holding
``{tree}`` names a file per tree (``old``/``new``: each tree's own base state file, when
the state file's form differs between them); it is copied to OUT/base.state with one
archive id, time and device first, as the incremental's header records those.

Prints whether the archives are byte-identical (else the first member that differs, by
name, type, size, pax records and the SHA-256 of its data), whether the state files
beside them are (their ``device`` left out), and whether they differ only in their
folders' fingerprints (a driver's private record, docs/format.md section 7).  Exit 0 when
archives, exit statuses and standard errors are the same.  Speed work (issue 17) must
leave what an archive holds as it was: bench/RESULTS.md, fourteenth pass.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile

WRAP = ("import runpy, sys, asm.archive.writer as w\n"
        "class T:\n    @staticmethod\n    def time(): return 1796300000.25\n"
        "w.uuid4 = lambda: '00000000-0000-4000-8000-000000000000'; w.time = T\n"
        "sys.argv = ['imsbackup'] + sys.argv[1:]\n"
        "runpy.run_module('asm.cli.imsbackup', run_name='__main__')\n")


def members(path: str) -> list:
    out = []
    with tarfile.open(path, "r:") as t:
        for m in t:
            data = t.extractfile(m).read() if m.isfile() else b""
            out.append((m.name, m.type, m.linkname, m.size, dict(m.pax_headers), hashlib.sha256(data).hexdigest()))
    return out


def state(path: str) -> dict | None:
    if not os.path.exists(path + ".state"):
        return None
    with open(path + ".state", "rb") as f:
        doc = json.load(f)
    doc.pop("device", None)              # (the archive's own path)
    return doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="the tree of the code before")
    p.add_argument("--new", required=True, help="the tree of the code after")
    p.add_argument("--home", required=True, help="IMS_HOME of the store")
    p.add_argument("--out", required=True, help="a directory for the two archives")
    p.add_argument("args", nargs="+", help="imsbackup's arguments after -f (after --)")
    a = p.parse_args(argv)
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    res = {}
    for k, tree in (("old", a.old), ("new", a.new)):
        f = os.path.join(out, f"{k}.ims")
        for x in (f, f + ".state"):
            if os.path.exists(x):
                os.unlink(x)
        args = []
        for x in a.args:
            if "{tree}" in x:
                with open(x.replace("{tree}", k)) as g:
                    d = json.load(g)
                d["archive_id"], d["created"] = "11111111-1111-4111-8111-111111111111", 1796200000.5
                d["device"] = "/base.ims"
                x = os.path.join(out, "base.state")
                with open(x, "w") as g:
                    json.dump(d, g)
            args.append(x)
        r = subprocess.run([sys.executable, "-c", WRAP, "-f", f, *args], cwd="/",
                           env=dict(os.environ, IMS_HOME=a.home, PYTHONPATH=os.path.abspath(tree)),
                           capture_output=True, text=True)
        res[k] = (r.returncode, r.stderr, f)
        size = os.path.getsize(f) if os.path.exists(f) else "-"
        print(f"{k}: exit {r.returncode}, {size} bytes, stderr {r.stderr.strip()[-300:]!r}")
    (ea, sa, fa), (eb, sb, fb) = res["old"], res["new"]
    if not (os.path.exists(fa) and os.path.exists(fb)):
        return 1
    with open(fa, "rb") as x, open(fb, "rb") as y:
        same = x.read() == y.read()
    ma, mb = members(fa), members(fb)
    da, db = state(fa), state(fb)
    print(f"members: old {len(ma)}, new {len(mb)}; archives byte-identical: {same}; "
          f"state files identical: {da == db}; exit and stderr the same: {(ea, sa) == (eb, sb)}")
    if not same:
        for i, (x, y) in enumerate(zip(ma, mb)):
            if x != y:
                print(f"first member that differs: #{i}\n  old {x}\n  new {y}")
                break
    if da != db and da and db:
        strip = lambda d: {**d, "folders": [dict(f, fingerprint=None) for f in d["folders"]]}  # noqa: E731
        print(f"state files the same but for fingerprints: {strip(da) == strip(db)}")
    return 0 if same and (ea, sa) == (eb, sb) else 1


if __name__ == "__main__":
    sys.exit(main())
