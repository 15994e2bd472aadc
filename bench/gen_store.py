#!/usr/bin/env python3
"""Generate (once) a message store for the benchmarks, through the store API.

    python3 bench/gen_store.py --dir /var/tmp/ims-bench --driver maildir
    python3 bench/gen_store.py --dir /var/tmp/ims-bench --driver classic --messages 20000 --users 200

The store is an installation (``IMS_HOME``) under ``--dir``, named after its
parameters, with ``bench-store.json`` describing it.  A later run with the same
parameters reuses it (``--force`` rebuilds it).

What it holds: ``--messages`` message instances in ``--users`` users, spread over
several folders each (nested and non-ASCII names included); about a third of the
instances are single-copy hard links (``store.deliver`` to 2-4 users at once);
sizes follow ``--size-mix`` (mostly small, a few megabyte-sized ones).  The last
``--new-fraction`` (1%) of the messages is delivered after a recorded cut-off
time, so ``imsbackup -d <since>`` selects exactly them as new.

The other bench scripts import this module for the store, the timing helpers and
the machine description.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import io
import json
import os
import platform
import pwd
import random
import shlex
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MANIFEST = "bench-store.json"
#: share, size range (bytes).  ~29 KB per stored file on average: 20,000 instances
#: (13,300 files) make about 400 MB on disk.
SIZE_MIXES = {
    "default": "0.75:300-8k,0.21:8k-64k,0.037:64k-512k,0.003:1m-4m",
    "small": "1:300-4k",
}
FOLDERS = [("INBOX", 0.50), ("Sent", 0.15), ("Archive/2023", 0.10), ("Work", 0.08),
           ("Bulk Mail", 0.06), ("Trash", 0.06), ("Réunions/Été 50%", 0.05)]
LINK_SHARE = 0.25       # deliveries to 2-4 users: 0.25*2/(1+0.25*2) = 1/3 of instances are links
MAIL_USER = "vmail"


# -- size mix ----------------------------------------------------------------
def _bytes(text: str) -> int:
    t = text.strip().lower()
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(t[-1:], 1)
    return int(float(t[:-1] if t[-1:] in "kmg" else t) * mult)


def parse_mix(spec: str) -> list[tuple[float, int, int]]:
    """'0.75:300-8k,0.25:8k-64k' -> [(cumulative share, lo, hi), ...]."""
    spec = SIZE_MIXES.get(spec, spec)
    out, total = [], 0.0
    try:
        for part in spec.split(","):
            share, rng = part.split(":")
            lo, hi = rng.split("-")
            total += float(share)
            out.append((total, _bytes(lo), _bytes(hi)))
    except ValueError:
        raise SystemExit(f"gen_store: bad --size-mix {spec!r}: use share:lo-hi,... "
                         f"e.g. 0.9:300-8k,0.1:8k-1m, or one of {', '.join(SIZE_MIXES)}") from None
    if not out or abs(total - 1.0) > 0.01 or any(lo < 200 or hi < lo for _, lo, hi in out):
        raise SystemExit(f"gen_store: bad --size-mix {spec!r}: shares must add up to 1 "
                         "and sizes be at least 200 bytes")
    return out


def pick_size(rng: random.Random, mix) -> int:
    r = rng.random()
    for cum, lo, hi in mix:
        if r <= cum:
            return rng.randint(lo, hi)
    return rng.randint(mix[-1][1], mix[-1][2])


# -- message bytes -----------------------------------------------------------
class Body:
    """A pool of base64 text (like an attachment) that messages take slices of."""

    def __init__(self, seed: int, size: int = 4 << 20):
        raw = random.Random(seed).randbytes(size * 3 // 4)
        b64 = base64.b64encode(raw)
        lines = [b64[i:i + 76] for i in range(0, len(b64), 76)]
        self.pool = b"\r\n".join(lines)
        self.pool2 = self.pool + self.pool

    def text(self, rng: random.Random, n: int) -> bytes:
        if n <= len(self.pool):
            off = rng.randrange(len(self.pool))
            return self.pool2[off:off + n]
        reps = n // len(self.pool) + 1
        return (self.pool * reps)[:n]


def message(rng: random.Random, body: Body, n: int, size: int, sender: str, rcpts, when: float) -> bytes:
    head = (f"From: {sender} <{sender}@example.com>\r\n"
            f"To: {', '.join(r + '@example.com' for r in rcpts)}\r\n"
            f"Subject: bench message {n} ({size} bytes)\r\n"
            f"Date: {dt.datetime.fromtimestamp(when, dt.timezone.utc):%a, %d %b %Y %H:%M:%S +0000}\r\n"
            f"Message-ID: <bench-{n}-{rng.getrandbits(40):x}@example.com>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    return head + body.text(rng, max(0, size - len(head)))


class Streaming(io.RawIOBase):
    """``size`` bytes of message produced on the fly (never held in memory): a header,
    then a repeating text block.  For the 1 GB message of bench_memory.py."""

    def __init__(self, size: int, block: bytes | None = None):
        self.size, self.pos = size, 0
        head = b"From: big@example.com\r\nTo: u@example.com\r\nSubject: one big message\r\n\r\n"
        self.head = head
        self.block = block or (b"0123456789abcdef" * 4 + b"\r\n") * 16384   # ~1 MB
        self.blen = len(self.block)

    def readable(self):
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.size - self.pos)
        if n <= 0:
            return 0
        out, done = memoryview(buf), 0
        while done < n:
            if self.pos < len(self.head):
                src, off = self.head, self.pos
            else:
                src, off = self.block, (self.pos - len(self.head)) % self.blen
            k = min(n - done, len(src) - off)
            out[done:done + k] = src[off:off + k]
            done += k
            self.pos += k
        return n


# -- installations -------------------------------------------------------------
def mail_owner() -> str | None:
    """The unprivileged mail user (created when missing, as tests/dovecot.py does) when
    running as root, so doveadm can work on a maildir store; None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(MAIL_USER)
    except KeyError:
        r = subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "-U", MAIL_USER],
                           capture_output=True, text=True)
        if r.returncode:
            return None
    return MAIL_USER


def make_home(home: str, driver: str, owner: str | None = None):
    """A fresh installation at ``home`` with ``driver``; returns its Config."""
    from asm.config import Config
    os.makedirs(home, exist_ok=True)
    cfg = Config(home=home)
    cfg.set("store.driver", driver)
    if owner:
        cfg.set("store.owner", owner)
    return cfg


def open_store(home: str):
    from asm.config import Config
    from asm.store import open_store as _open
    return _open(Config(home=home))


def partition_dir(home: str) -> str:
    from asm.config import Config
    return Config(home=home).partitions()["primary"]


def mix_name(mix: str) -> str:
    return mix if mix in SIZE_MIXES else "mix" + hashlib.sha1(mix.encode()).hexdigest()[:8]


def store_dir(base: str, driver: str, messages: int, users: int, mix: str, seed: int) -> str:
    return os.path.join(base, f"{driver}-{messages}m-{users}u-{mix_name(mix)}-s{seed}")


class Ticker:
    """A progress line on a terminal, nothing otherwise."""

    def __init__(self, what: str, total: int):
        self.what, self.total = what, total
        self.on = sys.stderr.isatty()
        self.t0 = self.last = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if self.on and (now - self.last > 0.5 or done == self.total):
            self.last = now
            rate = done / (now - self.t0) if now > self.t0 else 0
            sys.stderr.write(f"\r{self.what}: {done}/{self.total} ({rate:.0f}/s)   ")
            sys.stderr.flush()

    def end(self) -> None:
        if self.on:
            sys.stderr.write("\n")


def generate(home: str, driver: str, messages: int, users: int, mix: str, seed: int,
             new_fraction: float, owner: str | None, quiet: bool = False) -> dict:
    """Build the store at ``home`` (which must not hold one yet); returns the manifest."""
    t0 = time.monotonic()
    make_home(home, driver, owner)
    store = open_store(home)
    sizes = parse_mix(mix)
    rng = random.Random(seed)
    body = Body(seed)
    names = [f"user{i:04d}" for i in range(users)]
    fnames = [f for f, _ in FOLDERS]
    fweights = [w for _, w in FOLDERS]
    for u in names:
        store.create_user(u, "primary")
        for f in fnames[1:]:
            store.create_folder(u, f, subscribed=(f != "Bulk Mail"))
    n_new = int(round(messages * new_fraction))
    counts = {"instances": 0, "files": 0, "links": 0, "bytes_files": 0, "bytes_instances": 0,
              "new_instances": 0}
    tick = Ticker(f"generating {driver} store", messages) if not quiet else (lambda d: None)
    now = time.time()
    n = 0

    def one(target: int, stored_old: bool) -> None:
        nonlocal n
        while counts["instances"] < target:
            n += 1
            size = pick_size(rng, sizes)
            left = target - counts["instances"]
            k = rng.randint(2, 4) if rng.random() < LINK_SHARE else 1
            k = min(k, left, users)
            rcpts = rng.sample(names, k) if k > 1 else [rng.choice(names)]
            folder = rng.choices(fnames, fweights)[0]
            when = int(now - rng.uniform(0, 365 * 86400)) if stored_old else int(time.time())
            data = message(rng, body, n, size, rng.choice(names), rcpts, when)
            flags = ["\\Seen"] if rng.random() < 0.7 else []
            if k == 1:
                # stored spread over the past year (before the cut-off) or now (new)
                store.append(rcpts[0], folder, io.BytesIO(data), flags=flags, internaldate=when,
                             stored=when if stored_old else None)
            else:
                # one inode for every recipient: k-1 hard links
                store.deliver(rcpts, io.BytesIO(data), folder=folder, internaldate=when)
                counts["links"] += k - 1
            counts["instances"] += k
            counts["files"] += 1
            counts["bytes_files"] += len(data)
            counts["bytes_instances"] += len(data) * k
            if not stored_old:
                counts["new_instances"] += k
            tick(counts["instances"])

    one(messages - n_new, True)
    # the cut-off: a whole second strictly after every old message was stored
    cutoff = int(time.time()) + 1
    while time.time() < cutoff:
        time.sleep(0.05)
    one(messages, False)
    if hasattr(tick, "end"):
        tick.end()
    if hasattr(store, "close"):
        store.close()
    manifest = {
        "driver": driver, "home": home, "partition": partition_dir(home), "users": users,
        "folders_per_user": len(FOLDERS), "seed": seed, "size_mix": SIZE_MIXES.get(mix, mix),
        "new_fraction": new_fraction, "cutoff": cutoff,
        "since": dt.datetime.fromtimestamp(cutoff).strftime("%Y%m%d:%H%M%S"),
        "owner": owner, "gen_seconds": round(time.monotonic() - t0, 1),
        "created": dt.datetime.now().isoformat(timespec="seconds"), **counts,
    }
    with open(os.path.join(home, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def ensure_store(base: str, driver: str, messages: int = 20000, users: int = 200,
                 mix: str = "default", seed: int = 1, new_fraction: float = 0.01,
                 force: bool = False, quiet: bool = False) -> dict:
    """The manifest of the cached store with these parameters, generated if missing."""
    parse_mix(mix)                  # a bad --size-mix fails before anything is written
    home = store_dir(os.path.abspath(base), driver, messages, users, mix, seed)
    path = os.path.join(home, MANIFEST)
    if not force and os.path.exists(path):
        with open(path) as f:
            m = json.load(f)
        if m.get("new_fraction") == new_fraction:
            return m
    if os.path.exists(home):
        shutil.rmtree(home)
    owner = mail_owner() if driver == "maildir" else None
    return generate(home, driver, messages, users, mix, seed, new_fraction, owner, quiet)


# -- helpers for the bench scripts ---------------------------------------------------
def sh(cmd: str, env: dict | None = None, check: bool = True) -> float:
    """Run ``cmd`` with bash (pipefail); returns wall seconds.  Fails loudly."""
    e = dict(os.environ)
    e.update(env or {})
    t0 = time.perf_counter()
    p = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], env=e, stderr=subprocess.PIPE)
    t = time.perf_counter() - t0
    if check and p.returncode:
        raise SystemExit(f"benchmark command failed (status {p.returncode}): {cmd}\n"
                         + p.stderr.decode(errors="replace")[-2000:])
    return t


def best_of(n: int, cmd: str, env: dict | None = None, before=None) -> tuple[float, list[float]]:
    """Minimum wall time of ``n`` runs (``before()`` runs untimed before each)."""
    times = []
    for _ in range(n):
        if before:
            before()
        times.append(sh(cmd, env))
    return min(times), times


def compile_package() -> None:
    """Byte-compile the source tree's packages once, as an installation does: with
    PYTHONDONTWRITEBYTECODE set, every run would otherwise compile ~70 modules (about
    0.1 s of CPU) and the startup measured would be no user's."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "asm"),
                    os.path.join(ROOT, "plugins")], check=False, stdout=subprocess.DEVNULL)


def drop_note() -> str:
    return "warm page cache (one untimed run first), best of N wall-clock times"


def machine() -> dict:
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"
    return {"uname": out(["uname", "-a"]), "nproc": out(["nproc"]), "free": out(["free", "-h"]),
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "tar": out(["tar", "--version"]).splitlines()[0] if shutil.which("tar") else "missing",
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def describe(m: dict) -> str:
    return (f"{m['driver']} store: {m['instances']} messages in {m['users']} users "
            f"x {m['folders_per_user']} folders, {m['links']} hard-linked copies, "
            f"{m['files']} files, {m['bytes_files'] / 1e6:.0f} MB on disk "
            f"({m['bytes_instances'] / 1e6:.0f} MB counting every copy), "
            f"{m['new_instances']} new since -d {m['since']}")


def cmdline() -> str:
    return "python3 " + " ".join(shlex.quote(a) for a in sys.argv)


def no_tar(prog: str) -> bool:
    """True (and says so) when GNU tar, every benchmark's reference, is not installed."""
    if shutil.which("tar"):
        return False
    print(f"{prog}: GNU tar is not installed (apt-get install tar)", file=sys.stderr)
    return True


def run_drivers(prog: str, args, bench_driver, markdown) -> int:
    """The end of every tar-compared benchmark: check tar, run each driver, print the
    Markdown block when asked."""
    if no_tar(prog):
        return 2
    results = [bench_driver(args, d) for d in (args.driver or ["maildir", "classic"])]
    if args.markdown:
        print("\n" + markdown(results, args))
    return 0


def add_store_args(p: argparse.ArgumentParser, drivers_default=("maildir", "classic")) -> None:
    p.add_argument("--dir", default=os.environ.get("IMS_BENCH_DIR", "/var/tmp/ims-bench"),
                   help="where generated stores are cached and scratch copies made "
                        "(default $IMS_BENCH_DIR or /var/tmp/ims-bench)")
    p.add_argument("--driver", action="append", choices=["maildir", "classic"],
                   help=f"store driver (repeatable; default: {' and '.join(drivers_default)})")
    p.add_argument("--messages", type=int, default=20000, help="message instances (default 20000)")
    p.add_argument("--users", type=int, default=200, help="users (default 200)")
    p.add_argument("--size-mix", default="default",
                   help="share:lo-hi,... or a preset (%s); default: %s" % (
                       ", ".join(SIZE_MIXES), SIZE_MIXES["default"]))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--new-fraction", type=float, default=0.01,
                   help="share of messages stored after the -d cut-off (default 0.01)")
    p.add_argument("--force", action="store_true", help="regenerate the store even if cached")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gen_store.py", description=__doc__.split("\n\n")[0])
    add_store_args(p)
    args = p.parse_args(argv)
    for driver in args.driver or ["maildir", "classic"]:
        m = ensure_store(args.dir, driver, args.messages, args.users, args.size_mix, args.seed,
                         args.new_fraction, args.force)
        print(f"{m['home']}: {describe(m)} (generated in {m['gen_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
