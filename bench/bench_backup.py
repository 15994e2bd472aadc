#!/usr/bin/env python3
"""Backup speed: imsbackup against GNU tar on the same generated store, in the same run.

    python3 bench/bench_backup.py                       # maildir and classic, 20,000 messages
    python3 bench/bench_backup.py --driver maildir --repeat 5

For each driver (store from gen_store.py, cached under --dir):

* full:  ``imsbackup -f - / | cat >/dev/null``  vs  ``tar -cf - -C <parent> <partition> | cat >/dev/null``
  (the pipe to cat matters: GNU tar writing straight to /dev/null skips reading files)
* incremental: ``imsbackup -f - -d <cut-off> / | cat >/dev/null`` with 1% of the
  messages stored after the cut-off, against the full imsbackup run.
* incremental by base: ``imsbackup -f - --base <state> / | cat >/dev/null``, the state
  being what a full backup at the cut-off held (a full's state file less the messages
  stored after the cut-off), so it carries the same 1%.

Warm page cache (one untimed run of each first, which also counts the bytes and
checks the incremental's message count); the runs are interleaved and the best of
--repeat wall times is kept.  Targets (issue 3): full within 2x of GNU tar;
incremental at most 1/10 of the full run.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_store as g  # noqa: E402


def tool(name: str) -> str:
    path = shutil.which(name)
    return shlex.quote(path) if path else f"{shlex.quote(sys.executable)} -m asm.cli.{name}"


def summary(cmd: str, env: dict) -> tuple[int, str]:
    """(archive bytes, imsbackup's -v summary line) of one untimed run."""
    e = dict(os.environ, **env)
    p = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd + " | wc -c"], env=e,
                       capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"benchmark command failed (status {p.returncode}): {cmd}\n{p.stderr[-2000:]}")
    lines = [ln for ln in p.stderr.splitlines() if re.search(r"\d+ users, \d+ folders", ln)]
    return int(p.stdout.split()[0]), (lines[-1] if lines else "")


def base_state(m: dict, path: str) -> None:
    """The state file of a full backup taken at the cut-off: a full's state, less the
    messages stored after it (the store is only read)."""
    import json
    from asm.archive.values import UidSet
    env = {"IMS_HOME": m["home"]}
    full = path + ".full.ims"
    g.sh(f"{tool('imsbackup')} -f {shlex.quote(full)} /", env)
    os.unlink(full)
    with open(full + ".state") as f:
        doc = json.load(f)
    os.unlink(full + ".state")
    store = g.open_store(m["home"])
    for f in doc["folders"]:
        new = {x.uid for x in store.messages(f["user"], f["folder"]) if x.stored >= m["cutoff"]}
        f["uids"] = str(UidSet.of(u for u in UidSet.parse(f["uids"]) if u not in new))
    with open(path, "w") as out:
        json.dump(doc, out)


def bench_driver(args, driver: str) -> dict:
    m = g.ensure_store(args.dir, driver, args.messages, args.users, args.size_mix, args.seed,
                       args.new_fraction, args.force)
    env = {"IMS_HOME": m["home"]}
    part = m["partition"]
    imsbackup = tool("imsbackup")
    full = f"{imsbackup} -f - /"
    incr = f"{imsbackup} -f - -d {m['since']} /"
    state = os.path.join(args.dir, f"base-{driver}.state")
    base_state(m, state)
    incr_base = f"{imsbackup} -f - --base {shlex.quote(state)} /"
    tar = f"tar -cf - -C {shlex.quote(os.path.dirname(part))} {shlex.quote(os.path.basename(part))}"
    print(f"\n== {driver}: {g.describe(m)}", flush=True)
    print(f"   store {m['home']}", flush=True)

    # untimed warm-up: fills the page cache, gives sizes and checks the incremental
    full_bytes, full_sum = summary(f"{full} -v", env)
    incr_bytes, incr_sum = summary(f"{incr} -v", env)
    base_bytes, base_sum = summary(f"{incr_base} -v", env)
    tar_bytes, _ = summary(tar, {})
    print(f"   incremental by base {base_bytes / 1e6:.1f} MB ({base_sum.split(': ', 1)[-1]})")
    print(f"   archive {full_bytes / 1e6:.0f} MB ({full_sum.split(': ', 1)[-1]})")
    print(f"   incremental {incr_bytes / 1e6:.1f} MB ({incr_sum.split(': ', 1)[-1]})")
    print(f"   tar {tar_bytes / 1e6:.0f} MB", flush=True)

    t = {"full": [], "tar": [], "incr": [], "incr_base": []}
    for i in range(args.repeat):
        t["full"].append(g.sh(f"{full} | cat >/dev/null", env))
        t["tar"].append(g.sh(f"{tar} | cat >/dev/null"))
        t["incr"].append(g.sh(f"{incr} | cat >/dev/null", env))
        t["incr_base"].append(g.sh(f"{incr_base} | cat >/dev/null", env))
        print(f"   run {i + 1}: imsbackup {t['full'][-1]:.2f} s, tar {t['tar'][-1]:.2f} s, "
              f"incremental {t['incr'][-1]:.2f} s, by base {t['incr_base'][-1]:.2f} s", flush=True)
    b = {k: min(v) for k, v in t.items()}
    r = {
        "driver": driver, "store": m, "times": t, "best": b,
        "ratio_tar": b["full"] / b["tar"], "ratio_incr": b["incr"] / b["full"],
        "ratio_base": b["incr_base"] / b["full"],
        "bytes": {"archive": full_bytes, "incremental": incr_bytes, "incremental_base": base_bytes,
                  "tar": tar_bytes},
        "summaries": {"full": full_sum, "incr": incr_sum, "incr_base": base_sum},
        "commands": {"full": f"{full} | cat >/dev/null", "incr": f"{incr} | cat >/dev/null",
                     "incr_base": f"{incr_base} | cat >/dev/null", "tar": f"{tar} | cat >/dev/null"},
    }
    print(f"   best of {args.repeat}: imsbackup {b['full']:.2f} s, GNU tar {b['tar']:.2f} s "
          f"-> ratio {r['ratio_tar']:.2f}x (target <= 2x: {'met' if r['ratio_tar'] <= 2 else 'MISSED'})")
    print(f"   incremental {b['incr']:.2f} s = {r['ratio_incr']:.3f} of the full run "
          f"(target <= 0.1: {'met' if r['ratio_incr'] <= 0.1 else 'MISSED'})", flush=True)
    print(f"   incremental by base {b['incr_base']:.2f} s = {r['ratio_base']:.3f} of the full run; "
          f"{base_bytes / 1e6:.1f} MB = {base_bytes / full_bytes:.4f} of the full archive", flush=True)
    return r


def markdown(results: list[dict], args) -> str:
    mach = g.machine()
    out = [f"Measured {mach['date']} with `{g.cmdline()}`; {g.drop_note().replace('N', str(args.repeat))}; "
           f"load average at the end {mach['loadavg']} (2 cores shared with other engineers' "
           "jobs, so single runs vary).", ""]
    out.append("| driver | store | imsbackup full | GNU tar | ratio (target <= 2x) "
               "| incremental (-d, 1% new) | incr / full (target <= 0.1) |")
    out.append("|---|---|---|---|---|---|---|")
    for r in results:
        s, b = r["store"], r["best"]
        out.append(f"| {r['driver']} | {s['instances']} msgs, {s['users']} users, {s['links']} links, "
                   f"{s['bytes_files'] / 1e6:.0f} MB | {b['full']:.2f} s | {b['tar']:.2f} s | "
                   f"**{r['ratio_tar']:.2f}x** {'met' if r['ratio_tar'] <= 2 else 'missed'} | "
                   f"{b['incr']:.2f} s | **{r['ratio_incr']:.3f}** "
                   f"{'met' if r['ratio_incr'] <= 0.1 else 'missed'} |")
    out.append("")
    for r in results:
        out.append(f"- {r['driver']}: all runs imsbackup {', '.join(f'{x:.2f}' for x in r['times']['full'])} s; "
                   f"tar {', '.join(f'{x:.2f}' for x in r['times']['tar'])} s; incremental "
                   f"{', '.join(f'{x:.2f}' for x in r['times']['incr'])} s. Archive "
                   f"{r['bytes']['archive'] / 1e6:.0f} MB vs tar {r['bytes']['tar'] / 1e6:.0f} MB; "
                   f"imsbackup said: `{r['summaries']['full'].strip()}`; incremental: "
                   f"`{r['summaries']['incr'].strip()}`; incremental by base "
                   f"{', '.join(f'{x:.2f}' for x in r['times']['incr_base'])} s, "
                   f"{r['bytes']['incremental_base'] / 1e6:.1f} MB "
                   f"({r['bytes']['incremental_base'] / r['bytes']['archive']:.4f} of the full archive): "
                   f"`{r['summaries']['incr_base'].strip()}`")
        for k, c in r["commands"].items():
            out.append(f"  - {k}: `{c}`")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_backup.py", description=__doc__.split("\n\n")[0],
                                epilog="Prints wall times and ratios; never run by the tests.")
    g.add_store_args(p)
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each command (default 3; best kept)")
    p.add_argument("--markdown", action="store_true", help="also print a Markdown block for bench/RESULTS.md")
    args = p.parse_args(argv)
    return g.run_drivers("bench_backup.py", args, bench_driver, markdown)


if __name__ == "__main__":
    sys.exit(main())
