#!/usr/bin/env python3
"""Remote device speed: imsbackup/imsrestore to and from ``host:path`` over SSH (loopback,
a private sshd from tests/sshd.py) against the same commands on a local file, same store,
same run.

    python3 bench/bench_ssh.py                    # 20 users, 1,000 messages, best of 3
    python3 bench/bench_ssh.py --messages 3000 --repeat 5 --record

* backup:  ``imsbackup -f imsbk@127.0.0.1:PORT:/dir/full.ims /``  vs  ``imsbackup -f /dir/full.ims /``,
  with ``ssh.stream = auto`` (cat on an exec channel) and ``ssh.stream = sftp`` (SFTP writes)
* restore: ``imsrestore -f imsbk@127.0.0.1:PORT:/dir/full.ims /`` (seekable SFTP) vs the local
  file, each into an empty classic store
* link ceiling: OpenSSH's own ``ssh host 'cat > file' < archive`` (when the ssh client is
  installed), what the encrypted loopback link costs without ims-asm.

Runs are interleaved, warm page cache, best wall time of --repeat.  Needs root (sshd
logs a test user in).  ``--record`` appends an "ssh" section to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from asm.config import Config  # noqa: E402
from asm.demo import build_demo  # noqa: E402
from asm.store import open_store  # noqa: E402
from tests.sshd import SSHD  # noqa: E402

PLUGINS = "classic,localdevices,ssh"


def timed(argv, env) -> float:
    t = time.perf_counter()
    p = subprocess.run(argv, env=env, capture_output=True, text=True)
    el = time.perf_counter() - t
    if p.returncode:
        sys.exit(f"bench_ssh: {' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")
    return el


def home(path, **opts) -> Config:
    os.makedirs(path, exist_ok=True)
    cfg = Config(home=path)
    cfg.set("store.driver", "classic")
    for k, v in opts.items():
        cfg.set(k, v)
    return cfg


def cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--record", action="store_true", help="append the results to bench/RESULTS.md")
    a = ap.parse_args()
    os.environ["IMS_ASM_PLUGINS"] = PLUGINS
    work = tempfile.mkdtemp(prefix="bench-ssh-")
    sshd = SSHD()
    try:
        sshd.start()
        ssh_opts = {"ssh.identity": sshd.client_key, "ssh.knownhosts": sshd.known_hosts}
        src = home(os.path.join(work, "src"), **ssh_opts)
        counts = build_demo(open_store(src), users=a.users, messages=a.messages, seed=11)
        env = dict(os.environ, IMS_HOME=src.home, IMS_ASM_PLUGINS=PLUGINS, HOME=work)
        env.pop("SSH_AUTH_SOCK", None)
        local = os.path.join(work, "local", "full.ims")
        os.makedirs(os.path.dirname(local))
        rdir = sshd.remote_dir("bench")
        remote = sshd.spec(os.path.join(rdir, "full.ims"))
        # untimed warm-up of both (also checks they work)
        timed(["imsbackup", "-f", local, "/"], env)
        timed(["imsbackup", "-f", remote, "/"], env)
        size = os.path.getsize(local)
        ssh_cli = shutil.which("ssh")
        ssh_argv = [ssh_cli, "-q", "-p", str(sshd.port), "-i", sshd.client_key, "-o", "BatchMode=yes",
                    "-o", f"UserKnownHostsFile={sshd.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                    f"{sshd.user}@127.0.0.1", f"cat > {rdir}/raw"] if ssh_cli else None

        sftp_home = home(os.path.join(work, "src-sftp"), **ssh_opts, **{
            "ssh.stream": "sftp", "store.root": src.store_root,
            "partition:primary.path": src.partitions()["primary"]})
        env_sftp = dict(env, IMS_HOME=sftp_home.home)
        best = {"backup local": 1e9, "backup ssh": 1e9, "backup sftp": 1e9, "restore local": 1e9,
                "restore ssh": 1e9, "ssh cat": 1e9}
        for i in range(a.repeat):
            best["backup local"] = min(best["backup local"], timed(["imsbackup", "-f", local, "/"], env))
            best["backup ssh"] = min(best["backup ssh"], timed(["imsbackup", "-f", remote, "/"], env))
            best["backup sftp"] = min(best["backup sftp"], timed(["imsbackup", "-f", remote, "/"], env_sftp))
            if ssh_argv:
                with open(local, "rb") as f:
                    t = time.perf_counter()
                    subprocess.run(ssh_argv, stdin=f, check=True, env=env)
                    best["ssh cat"] = min(best["ssh cat"], time.perf_counter() - t)
            for kind, dev in (("restore local", local), ("restore ssh", remote)):
                dst = home(os.path.join(work, f"dst-{kind[8:]}-{i}"), **ssh_opts)
                best[kind] = min(best[kind], timed(["imsrestore", "-f", dev, "/"], dict(env, IMS_HOME=dst.home)))
                shutil.rmtree(dst.home)
        mib = size / 2**20
        lines = [
            f"store: {counts['users']} users, {counts['messages']} messages ({counts['shared']} shared), "
            f"archive {mib:.1f} MiB; best of {a.repeat}",
            f"backup  local file        {best['backup local']:6.2f} s  {mib / best['backup local']:7.1f} MiB/s",
            f"backup  ssh (exec cat)    {best['backup ssh']:6.2f} s  {mib / best['backup ssh']:7.1f} MiB/s"
            f"   ratio ssh/local {best['backup ssh'] / best['backup local']:.2f}",
            f"backup  ssh (SFTP only)   {best['backup sftp']:6.2f} s  {mib / best['backup sftp']:7.1f} MiB/s"
            f"   ratio ssh/local {best['backup sftp'] / best['backup local']:.2f}",
            f"restore local file        {best['restore local']:6.2f} s  {mib / best['restore local']:7.1f} MiB/s",
            f"restore ssh (SFTP, seek)  {best['restore ssh']:6.2f} s  {mib / best['restore ssh']:7.1f} MiB/s"
            f"   ratio ssh/local {best['restore ssh'] / best['restore local']:.2f}",
        ]
        if ssh_argv:
            lines.append(f"link: OpenSSH 'ssh cat > file' of the archive {best['ssh cat']:6.2f} s "
                         f"{mib / best['ssh cat']:7.1f} MiB/s")
        print("\n".join(lines))
        if a.record:
            when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
            machine = f"{platform.node()}, {cpu()}, {os.cpu_count()} cores, Linux {platform.release()}, " \
                      f"Python {platform.python_version()}"
            path = os.path.join(ROOT, "bench", "RESULTS.md")
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"\n## ssh\n\n`python3 bench/bench_ssh.py --messages {a.messages} --repeat {a.repeat}`"
                        f" - {when}, {machine}; sshd on loopback (shared machine, other jobs running).\n\n```\n"
                        + "\n".join(lines) + "\n```\n")
            print(f"appended to {path}")
    finally:
        sshd.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
