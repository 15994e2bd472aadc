#!/usr/bin/env python3
"""Backup speed: imsbackup against GNU tar on the same generated stores, in the same run.

    python3 bench/bench_backup.py                       # both drivers, both store shapes
    python3 bench/bench_backup.py --driver maildir --shape 200 --pairs 5

For each driver and store shape (``--shape USERS``, repeatable; default 200 users x 7
folders, "many small folders", and 4 users x 7 folders, "few large folders"; the same
--messages in both, stores from gen_store.py cached under --dir), every timed command
runs as interleaved pairs with its reference, and a target's ratio is the MEDIAN of the
per-pair ratios (``--pairs``, at least 5):

* full, warm cache: ``imsbackup -f - / | cat >/dev/null`` against
  ``tar -cf - -C <parent> <partition> | cat >/dev/null`` (the pipe to cat matters: GNU
  tar writing straight to /dev/null skips reading files).  Target <= 1.5x.
* full, cold cache: the same two, with ``sync; echo 3 >/proc/sys/vm/drop_caches``
  (untimed) before each run.  Target <= 1.15x.  Needs root; the output says when
  the caches could not be dropped (and the cold pairs are then left out).
* incremental: ``imsbackup -f - -d <cut-off> /`` (1% of the messages stored after the
  cut-off) and ``imsbackup -f - --base <state> /`` (the state a full at the cut-off
  would have left) against the full imsbackup run of the same pair, warm.  Target <= 0.15
  on the many-small-folders store.
* ``-j 1`` against ``-j 2`` (warm), when this imsbackup has ``-j``.
* a no-op run: ``imsbackup -f - /`` of a store holding one empty user, median of
  --pairs x 3 runs.  Target <= 80 ms.  ``--noop-only`` runs only the no-op target.

Every imsbackup timed is ims-asm as sites install it (``pip install .``): a copy of this
tree installed, not editable, into a temporary venv that shares this environment's
dependencies.  A setuptools editable install adds an import finder (and pathlib) to every
start, 13-20 ms: about 5% of a ``--base`` incremental's time, nothing a site pays.
``--editable`` times this environment's own imsbackup instead.

Peak RSS (the 64 MB target at 100,000 messages) is bench_memory.py's.
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
    messages stored after it and the fingerprints of the folders they are in (the store
    is only read)."""
    import json
    from asm.archive.values import UidSet
    from asm.backupstate import decode_ids, encode_ids
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
        uids = UidSet.parse(f["uids"])
        ids = decode_ids(f["ids"], len(uids)) if "ids" in f else None
        f["uids"] = str(UidSet.of(u for u in uids if u not in new))
        if ids is not None:
            # the identity of each UID the base keeps (as the full recorded it)
            f["ids"] = encode_ids([i for u, i in zip(uids, ids) if u not in new])
        if new:
            # a backup at the cut-off saw this folder before its new mail: its fingerprint
            # (the folder as it is now) would not be the one it recorded
            f.pop("fingerprint", None)
            f.pop("flags", None)
    with open(path, "w") as out:
        json.dump(doc, out)


SHAPES = {200: "many small folders", 4: "few large folders"}
T_WARM, T_COLD, T_INCR, T_NOOP = 1.5, 1.15, 0.15, 0.080


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def drop_caches() -> bool:
    """sync; drop the page cache, dentries and inodes.  False when not permitted."""
    subprocess.run(["sync"], check=False)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def has_jobs(imsbackup: str) -> bool:
    p = subprocess.run(["bash", "-c", f"{imsbackup} --help"], capture_output=True, text=True)
    return re.search(r"(^|\s)-j\b", p.stdout) is not None


def verdict(ratio: float, target: float) -> str:
    return "met" if ratio <= target else "missed"


_INSTALLED: dict = {}


def installed_bin() -> str:
    """The bin directory of a temporary venv holding this tree installed as sites install
    it (``pip install .``, not editable, bytecode compiled), its dependencies shared with
    this environment (symlinked: no download).  Made once per run, removed at exit."""
    if "bin" in _INSTALLED:
        return _INSTALLED["bin"]
    import atexit
    import sysconfig
    import tempfile
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tmp = tempfile.mkdtemp(prefix="ims-noop-")
    atexit.register(shutil.rmtree, tmp, True)
    venv, src = os.path.join(tmp, "venv"), os.path.join(tmp, "src")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    purelib = sysconfig.get_paths()["purelib"]
    target = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                             "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            check=True, capture_output=True, text=True).stdout.strip()
    for name in os.listdir(purelib):
        low = name.lower()
        if low.startswith(("ims_asm", "__editable__", "pip", "__pycache__")):
            continue
        os.symlink(os.path.join(purelib, name), os.path.join(target, name))
    os.mkdir(src)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(os.path.join(root, name), src)
    for name in ("asm", "plugins", "staging"):
        shutil.copytree(os.path.join(root, name), os.path.join(src, name),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    p = subprocess.run([sys.executable, "-m", "pip", "--python", os.path.join(venv, "bin", "python"), "install",
                        "-q", "--disable-pip-version-check", "--no-deps", "--no-build-isolation", "--no-index", src],
                       capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"bench_backup.py: cannot install ims-asm into {venv} for the timed runs:\n{p.stderr[-2000:]}"
                         f"\n(--editable measures this environment's imsbackup instead)")
    _INSTALLED["bin"] = os.path.join(venv, "bin")
    return _INSTALLED["bin"]


def timed_imsbackup(args) -> tuple[str, str]:
    """(the imsbackup command every timed run uses, what it is)."""
    if args.editable:
        return tool("imsbackup"), "this environment's imsbackup"
    return shlex.quote(os.path.join(installed_bin(), "imsbackup")), "installed (pip install ., not editable)"


def noop_home(base: str, driver: str) -> str:
    """An installation with one user and no mail (made once)."""
    home = os.path.join(os.path.abspath(base), f"noop-{driver}")
    if not os.path.exists(os.path.join(home, "ok")):
        if os.path.exists(home):
            shutil.rmtree(home)
        g.make_home(home, driver, g.mail_owner() if driver == "maildir" else None)
        g.open_store(home).create_user("empty", "primary")
        open(os.path.join(home, "ok"), "w").close()
    return home


def bench_driver(args, driver: str) -> list[dict]:
    out = []
    for users in ([] if args.noop_only else args.shape or [200, 4]):
        out.append(bench_shape(args, driver, users))
    imsbackup, what = timed_imsbackup(args)
    home = noop_home(args.dir, driver)
    cmd = f"{imsbackup} -f - / | cat >/dev/null"
    g.sh(cmd, {"IMS_HOME": home})
    times = [g.sh(cmd, {"IMS_HOME": home}) for _ in range(args.pairs * 3)]
    t = median(times)
    print(f"\n== {driver}: no-op run (one empty user), {what}: median {t * 1000:.0f} ms of {len(times)} "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}) "
          f"-> target <= {T_NOOP * 1000:.0f} ms: {'met' if t <= T_NOOP else 'missed'}", flush=True)
    out.append({"driver": driver, "noop": t, "noop_times": times, "command": cmd,
                "targets": [("no-op run (one empty user)", driver, "-", t, T_NOOP, "s")]})
    return out


def bench_shape(args, driver: str, users: int) -> dict:
    m = g.ensure_store(args.dir, driver, args.messages, users, args.size_mix, args.seed,
                       args.new_fraction, args.force)
    state = os.path.join(args.dir, f"base-{driver}-{users}u.state")
    base_state(m, state)
    return time_store(args, driver, SHAPES.get(users, f"{users} users"), m, state, g.describe(m),
                      incremental_target=users == 200)


def time_store(args, driver: str, shape: str, m: dict, state: str, described: str,
               incremental_target: bool = True) -> dict:
    """Every backup target of one store: ``m`` names its installation (``home``), the
    directory tar reads (``partition``) and the -d cut-off (``since``); ``state`` is the
    state file of a full backup at the cut-off."""
    env = {"IMS_HOME": m["home"]}
    part = m["partition"]
    imsbackup, what = timed_imsbackup(args)
    full = f"{imsbackup} -f - /"
    incr = f"{imsbackup} -f - -d {m['since']} /"
    incr_base = f"{imsbackup} -f - --base {shlex.quote(state)} /"
    tar = f"tar -cf - -C {shlex.quote(os.path.dirname(part))} {shlex.quote(os.path.basename(part))}"
    jobs = has_jobs(imsbackup)
    print(f"\n== {driver}, {shape}: {described}", flush=True)
    print(f"   store {m['home']}; imsbackup {what}", flush=True)

    # untimed warm-up: fills the page cache, gives sizes and checks the incremental
    full_bytes, full_sum = summary(f"{full} -v", env)
    incr_bytes, incr_sum = summary(f"{incr} -v", env)
    base_bytes, base_sum = summary(f"{incr_base} -v", env)
    tar_bytes, _ = summary(tar, {})
    print(f"   archive {full_bytes / 1e6:.0f} MB ({full_sum.split(': ', 1)[-1]})")
    print(f"   incremental {incr_bytes / 1e6:.1f} MB ({incr_sum.split(': ', 1)[-1]})")
    print(f"   incremental by base {base_bytes / 1e6:.1f} MB ({base_sum.split(': ', 1)[-1]})")
    print(f"   tar {tar_bytes / 1e6:.0f} MB", flush=True)

    sink = " | cat >/dev/null"
    t = {k: [] for k in ("full", "tar", "incr", "incr_base", "j1", "j2", "cold", "cold_tar")}
    for i in range(args.pairs):
        t["full"].append(g.sh(full + sink, env))
        t["tar"].append(g.sh(tar + sink))
        t["incr"].append(g.sh(incr + sink, env))
        t["incr_base"].append(g.sh(incr_base + sink, env))
        line = (f"   warm pair {i + 1}: imsbackup {t['full'][-1]:.2f} s, tar {t['tar'][-1]:.2f} s, "
                f"-d {t['incr'][-1]:.2f} s, --base {t['incr_base'][-1]:.2f} s")
        if jobs:
            t["j1"].append(g.sh(f"{imsbackup} -j 1 -f - /" + sink, env))
            t["j2"].append(g.sh(f"{imsbackup} -j 2 -f - /" + sink, env))
            line += f", -j 1 {t['j1'][-1]:.2f} s, -j 2 {t['j2'][-1]:.2f} s"
        print(line, flush=True)
    cold = not args.no_cold and drop_caches()
    if not args.no_cold and not cold:
        print("   cold cache: NOT measured (cannot write /proc/sys/vm/drop_caches: not root?)")
    for i in range(args.pairs if cold else 0):
        drop_caches()
        t["cold"].append(g.sh(full + sink, env))
        drop_caches()
        t["cold_tar"].append(g.sh(tar + sink))
        print(f"   cold pair {i + 1}: imsbackup {t['cold'][-1]:.2f} s, tar {t['cold_tar'][-1]:.2f} s",
              flush=True)
    ratio = lambda a, b: median([x / y for x, y in zip(t[a], t[b])])  # noqa: E731
    targets = [("full backup, warm cache (x GNU tar)", driver, shape, ratio("full", "tar"), T_WARM, "x")]
    if cold:
        targets.append(("full backup, cold cache (x GNU tar)", driver, shape,
                        ratio("cold", "cold_tar"), T_COLD, "x"))
    targets.append(("incremental -d, 1% new (x full run)", driver, shape, ratio("incr", "full"),
                    T_INCR if incremental_target else None, "x"))
    targets.append(("incremental --base, 1% new (x full run)", driver, shape,
                    ratio("incr_base", "full"), T_INCR if incremental_target else None, "x"))
    if jobs:
        targets.append(("-j 2 (x -j 1)", driver, shape, ratio("j2", "j1"), None, "x"))
    for name, _, _, r, target, _ in targets:
        print(f"   {name}: median of {args.pairs} pairs {r:.3f}"
              + (f" -> target <= {target}: {verdict(r, target)}" if target else " (reported)"), flush=True)
    return {"driver": driver, "shape": shape, "store": m, "described": described, "times": t, "targets": targets,
            "bytes": {"archive": full_bytes, "incremental": incr_bytes, "incremental_base": base_bytes,
                      "tar": tar_bytes},
            "summaries": {"full": full_sum, "incr": incr_sum, "incr_base": base_sum},
            "commands": {"full": full + sink, "tar": tar + sink, "incr": incr + sink,
                         "incr_base": incr_base + sink,
                         "cold": "sync; echo 3 >/proc/sys/vm/drop_caches; <full or tar>"}}


def table(results: list[dict]) -> list[str]:
    out = ["| target | driver | store | measured (median) | target | verdict |", "|---|---|---|---|---|---|"]
    for r in results:
        for name, driver, shape, v, target, unit in r["targets"]:
            if unit == "s":
                shown, tshown = f"{v * 1000:.0f} ms", f"<= {target * 1000:.0f} ms"
            else:
                shown, tshown = f"{v:.2f}{unit}", (f"<= {target}{unit}" if target else "(report)")
            out.append(f"| {name} | {driver} | {shape} | {shown} | {tshown} | "
                       f"{verdict(v, target) if target else '-'} |")
    return out


def markdown(results: list[dict], args) -> str:
    results = [x for r in results for x in r]
    mach = g.machine()
    out = [f"Measured {mach['date']} with `{g.cmdline()}`: median of {args.pairs} interleaved pairs "
           f"per ratio; load average at the end {mach['loadavg']} (what else ran on the 2 cores "
           "shows there; single runs vary).", ""]
    out += table(results)
    out.append("")
    for r in results:
        if "noop" in r:
            out.append(f"- {r['driver']} no-op: runs {', '.join(f'{x * 1000:.0f}' for x in r['noop_times'])} ms: "
                       f"`{r['command']}`")
            continue
        t = r["times"]
        fmt = lambda k: ", ".join(f"{x:.2f}" for x in t[k])  # noqa: E731
        out.append(f"- {r['driver']}, {r['shape']} ({r['described']}): imsbackup {fmt('full')} s; "
                   f"tar {fmt('tar')} s; cold imsbackup {fmt('cold')} s; cold tar {fmt('cold_tar')} s; "
                   f"-d {fmt('incr')} s; --base {fmt('incr_base')} s"
                   + (f"; -j 1 {fmt('j1')} s; -j 2 {fmt('j2')} s" if t["j1"] else "")
                   + f". Archive {r['bytes']['archive'] / 1e6:.0f} MB vs tar {r['bytes']['tar'] / 1e6:.0f} MB; "
                   f"imsbackup said: `{r['summaries']['full'].strip()}`")
        for k, c in r["commands"].items():
            out.append(f"  - {k}: `{c}`")
    return "\n".join(out)


def add_timing_args(p: argparse.ArgumentParser) -> None:
    """The options time_store() and markdown() read."""
    p.add_argument("--pairs", type=int, default=5, help="interleaved pairs per ratio (default 5; median)")
    p.add_argument("--no-cold", action="store_true", help="leave out the cold-cache pairs")
    p.add_argument("--markdown", action="store_true", help="also print a Markdown block for bench/RESULTS.md")
    p.add_argument("--editable", "--noop-editable", dest="editable", action="store_true",
                   help="time this environment's imsbackup (default: a copy of this tree installed, not "
                        "editable, into a temporary venv, as sites install it)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_backup.py", description=__doc__.split("\n\n")[0],
                                epilog="Prints wall times and ratios; never run by the tests.")
    g.add_store_args(p)
    p.add_argument("--shape", type=int, action="append", metavar="USERS",
                   help="users of one store shape (repeatable; default 200 and 4)")
    add_timing_args(p)
    p.add_argument("--noop-only", action="store_true", help="run only the no-op target")
    args = p.parse_args(argv)
    if g.no_tar("bench_backup.py"):
        return 2
    g.compile_package()
    results = [bench_driver(args, d) for d in (args.driver or ["maildir", "classic"])]
    print("\n== every target (median of interleaved pairs)")
    print("\n".join(table([x for r in results for x in r])))
    if args.markdown:
        print("\n" + markdown(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
