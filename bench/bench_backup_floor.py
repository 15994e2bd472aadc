#!/usr/bin/env python3
"""How fast CPython itself can write an archive of this format: the floor under imsbackup.

    python3 bench/bench_backup_floor.py                     # both drivers, 200 users, 5 triples
    python3 bench/bench_backup_floor.py --driver classic --shape 4 --threads 2

Issue 17 asks a warm full backup within 1.5x of GNU tar.  This script asks whether any
CPython program can do that on this machine, whatever its design.  In one run, warm
page cache, each command as interleaved triples, the ratios the median of the per-triple
ratios (``--pairs``):

* **tar**: ``tar -cf - -C <parent> <partition> | cat >/dev/null``, as bench_backup.py;
* **floor**: a bare CPython loop over the same partition, ``| cat >/dev/null``, doing
  only what any writer of an ims-asm archive must do per file, with nothing of the
  store's own rules: walk the tree (scandir), lstat each file, a single copy of each
  hard-linked inode, open, read, close, SHA-256 over the bytes, pax records from one
  %-template (kind, uid, flags, dates, path, sha256) and SHA-256 over them and the
  ustar header (format 2's member digest), the ustar header and its checksum, and one
  ``write()`` per 10 KiB record, as tar and imsbackup do.  It reads no uidlist, index,
  flags or subscriptions and writes no state record; it is not an archive a reader
  accepts, only the cost of writing one;
* **floor, no digests**: the same without the two SHA-256 (how much the digests cost);
* **imsbackup**: ``imsbackup -f - / | cat >/dev/null`` (this environment's imsbackup).

It prints floor / tar (the least a pure-Python backup can cost, against the 1.5x target)
and imsbackup / floor (how much of imsbackup's time is its own work over the floor).
``--threads`` adds the floor with the reading and hashing handed to a pool of threads,
the shape of ``-j N``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_store as g  # noqa: E402

RECORD = 10240
ZERO = bytes(RECORD)
REC_TMPL = ("%%d SCHILY.xattr.user.imsasm.kind=message\n%%d SCHILY.xattr.user.imsasm.uid=%d\n%%d SCHILY.xattr.user.imsasm.flags=\\Seen\n"
            "%%d SCHILY.xattr.user.imsasm.internaldate=%d\n%%d SCHILY.xattr.user.imsasm.stored=%d\n%%d path=%s\n"
            "%%d SCHILY.xattr.user.imsasm.sha256=%s\n")
USTAR = ("%-100s%07o\0%07o\0%07o\0%011o\0%011o\0        %c%-100s" + "ustar\0" + "00"
         + "\0" * 32 + "\0" * 32 + "0000000\0" + "0000000\0" + "\0" * 155 + "\0" * 12)


def _records(body: str) -> bytes:
    """pax records "<len> key=value\n" of the lines "%d key=value\n" of ``body``."""
    out = []
    for line in body.encode().splitlines(keepends=True):
        text = line[3:]                         # "%d " was the template's placeholder
        n = len(text) + 1                       # the space, then as many digits as n has
        n += 1 if n < 9 else 2 if n < 98 else 3 if n < 997 else 4
        out.append(b"%d %s" % (n, text))
    return b"".join(out)


def _ustar(name: str, size: int, mtime: int, kind: str, link: str = "") -> bytes:
    block = (USTAR % (name[:100], 0o600, 0, 0, size, mtime, kind, link[:100])).encode("latin-1", "replace")
    block = block[:512].ljust(512, b"\0")
    chk = sum(block)
    return block[:148] + b"%06o\0 " % chk + block[156:]


def is_message(e) -> bool:
    """A message's file: maildir's cur/ and new/, classic's <uid>.msg (not the store's
    own files, which imsbackup does not archive either)."""
    return e.name.endswith(".msg") or os.path.basename(os.path.dirname(e.path)) in ("cur", "new")


def floor(part: str, digests: bool, out_fd: int, pool=None) -> int:
    """Write the floor's stream of ``part`` to ``out_fd``; the number of files."""
    buf = bytearray()
    seen: dict = {}
    n = 0
    uid = 0

    def flush(final: bool = False) -> None:
        nonlocal buf
        whole = len(buf) - len(buf) % RECORD
        view = memoryview(buf)
        for i in range(0, whole, RECORD):
            os.write(out_fd, view[i:i + RECORD])
        view.release()
        del buf[:whole]
        if final:
            buf += bytes(-len(buf) % RECORD + 1024)
            flush()

    def read(path: str, size: int):
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.read(fd, size + 1)        # one read: the size is known from lstat
        finally:
            os.close(fd)
        return data, (hashlib.sha256(data).hexdigest() if digests else "0" * 64)

    def files(d: str):
        with os.scandir(d) as it:
            ents = sorted(it, key=lambda e: e.name)
        for e in ents:
            if e.is_dir(follow_symlinks=False):
                yield from files(e.path)
            elif e.is_file(follow_symlinks=False) and is_message(e):
                yield e

    batch: list = []

    def emit(e, st, got) -> None:
        nonlocal n, uid
        uid += 1
        name = e.path[len(part) + 1:]
        key = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
        if key is not None and key in seen:
            recs = _records(REC_TMPL % (uid, int(st.st_mtime), int(st.st_mtime), name, "-"))
            head = _ustar(name, 0, int(st.st_mtime), "1", seen[key])
            data = b""
        else:
            data, digest = got if got is not None else read(e.path, st.st_size)
            recs = _records(REC_TMPL % (uid, int(st.st_mtime), int(st.st_mtime), name, digest))
            head = _ustar(name, len(data), int(st.st_mtime), "0")
            if key is not None:
                seen[key] = name
        if digests:
            recs += _records("%%d SCHILY.xattr.user.imsasm.digest=%s\n" % hashlib.sha256(recs + head).hexdigest())
        buf.extend(_ustar("././@PaxHeader", len(recs), 0, "x"))
        buf.extend(recs)
        buf.extend(bytes(-len(recs) % 512))
        buf.extend(head)
        if data:
            buf.extend(data)
            buf.extend(bytes(-len(data) % 512))
        n += 1
        if len(buf) >= RECORD:
            flush()

    for e in files(part):
        st = e.stat(follow_symlinks=False)
        if pool is None:
            emit(e, st, None)
            continue
        key = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
        batch.append((e, st, None if key is not None else pool.submit(read, e.path, st.st_size)))
        if len(batch) >= 16:
            for be, bst, fut in batch:
                emit(be, bst, fut.result() if fut is not None else None)
            batch.clear()
    for be, bst, fut in batch:
        emit(be, bst, fut.result() if fut is not None else None)
    flush(final=True)
    return n


def timed(cmd: str, env: dict | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], check=True, env=env)
    return time.perf_counter() - t


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=os.environ.get("IMS_BENCH_DIR", "/var/tmp/ims-bench"))
    p.add_argument("--driver", action="append", choices=("maildir", "classic"),
                   help="repeatable; both by default")
    p.add_argument("--shape", type=int, action="append", metavar="USERS",
                   help="users in the generated store, repeatable (default 200: many small folders)")
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="also the floor with N reader threads")
    p.add_argument("--run-floor", nargs=4, metavar=("PART", "DIGESTS", "THREADS", "FD"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run_floor:
        part, digests, threads, fd = args.run_floor
        pool = None
        if int(threads) > 1:
            from concurrent.futures import ThreadPoolExecutor
            pool = ThreadPoolExecutor(int(threads))
        n = floor(part, digests == "1", int(fd), pool)
        print(f"{n} files", file=sys.stderr)
        return 0
    for driver in args.driver or ["maildir", "classic"]:
        for users in args.shape or [200]:
            bench(args, driver, users)
    return 0


def bench(args, driver: str, users: int) -> None:
    m = g.ensure_store(args.dir, driver, args.messages, users)
    part = m["partition"]
    me = f"{shlex.quote(sys.executable)} {shlex.quote(os.path.abspath(__file__))}"
    ims = os.environ.get("IMSBACKUP") or shlex.quote(
        os.path.join(os.path.dirname(sys.executable), "imsbackup"))
    q = shlex.quote
    cmds = {
        "tar": f"tar -cf - -C {q(os.path.dirname(part))} {q(os.path.basename(part))} | cat >/dev/null",
        "floor": f"{me} --run-floor {q(part)} 1 0 1 2>/dev/null | cat >/dev/null",
        "floor, no digests": f"{me} --run-floor {q(part)} 0 0 1 2>/dev/null | cat >/dev/null",
        "imsbackup": f"IMS_HOME={q(m['home'])} {ims} -f - / | cat >/dev/null",
    }
    if args.threads > 1:
        cmds[f"floor, {args.threads} threads"] = (f"{me} --run-floor {q(part)} 1 {args.threads} 1 "
                                                   "2>/dev/null | cat >/dev/null")
    print(f"\n== {driver}, {users} users: {g.describe(m)}", flush=True)
    files = subprocess.run(["bash", "-c", f"{me} --run-floor {q(part)} 1 0 1 2>&1 >/dev/null"],
                           capture_output=True, text=True, check=True).stdout.strip()
    print(f"   the floor writes {files} (every message name; the store holds {m['instances']})")
    for c in cmds.values():                     # warm the cache, check each runs
        timed(c)
    t: dict = {k: [] for k in cmds}
    for _ in range(args.pairs):
        for k, c in cmds.items():
            t[k].append(timed(c))
        print("   " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in t.items()), flush=True)
    tar = t["tar"]
    for k in cmds:
        if k != "tar":
            r = median([a / b for a, b in zip(t[k], tar)])
            print(f"   {k} / tar: {r:.2f}x (median of {args.pairs}; issue 17's target for a warm full "
                  f"backup: 1.5x)")
    r = median([a / b for a, b in zip(t["imsbackup"], t["floor"])])
    print(f"   imsbackup / floor: {r:.2f}x", flush=True)


if __name__ == "__main__":
    sys.exit(main())
