#!/usr/bin/env python3
"""How fast CPython itself can restore an archive of this format: the floor under imsrestore.

    python3 bench/bench_restore_floor.py                    # both drivers, 200 users, 5 triples
    python3 bench/bench_restore_floor.py --driver maildir --shape 4 --pairs 3

Issue 17 asks ``imsbackup | imsrestore`` into an empty store, durable, within 1.5x of
``tar | tar; sync``.  bench_backup_floor.py asks that of the backup side; this script asks
it of the restore side: whether any CPython program can unpack this format that fast on
this machine, whatever its design.  The archive is made once (``imsbackup -f FILE /``)
and read from the page cache; in one run each command as interleaved triples, every run
into a new, empty target of its own (none deleted before the last run, as
bench_restore.py explains), the ratios the median of the per-triple ratios:

* **tar**: ``tar -xf TAR -C <target>; sync``, TAR being ``tar -cf`` of the partition;
* **floor**: a bare CPython loop that does only what any reader of an ims-asm archive
  must do per member, and no more, then ``sync``: read the stream in 64 KiB pieces, check
  each ustar block's checksum, split the pax records, check the member digest (SHA-256
  over the records and the ustar block, §2.8 of docs/format.md), check the data's
  SHA-256, create the file (``O_CREAT|O_EXCL``), write it, close it, set its time
  (INTERNALDATE), make each hard-link member a link and each folder a directory.  It
  writes the member names as they are: no flags in file names, no uidlist, index or
  subscriptions, no journal, no locks, no checks against the store;
* **imsrestore**: ``IMS_HOME=<target> imsrestore -f ARCHIVE`` into an empty store of
  the same driver (it makes its data durable itself, with syncfs).

It prints floor / tar (the least a pure-Python restore can cost) and imsrestore / floor
(how much of imsrestore's time is its own work over the floor: the store's rules,
the journal that makes a killed restore safe to run again, durability per folder).
The pipe the target names (``imsbackup | imsrestore``) adds the backup's own time on
the other core; bench_restore.py measures it.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_store as g  # noqa: E402
from bench_backup_floor import median, timed  # noqa: E402


K = b"SCHILY.xattr.user.imsasm."               # IMSASM.* in docs/format.md, on the wire


class _Stream:
    """Bytes of a file descriptor, read in 64 KiB pieces."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = b""
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n <= len(self.buf):
            out = self.buf[self.pos:self.pos + n]
            self.pos += n
            return out
        parts = [self.buf[self.pos:]]
        need = n - len(parts[0])
        while need > 0:
            chunk = os.read(self.fd, max(65536, need))
            if not chunk:
                raise EOFError("the archive ended inside a member")
            parts.append(chunk)
            need -= len(chunk)
        data = b"".join(parts)
        self.buf, self.pos = data[n:], 0
        return data[:n]


def _block(s: _Stream) -> bytes | None:
    """The next 512-byte header block, its checksum checked; None at the end blocks."""
    b = s.take(512)
    if not b.strip(b"\0"):
        return None
    if sum(b[:148]) + 256 + sum(b[156:]) != int(b[148:154], 8):
        raise ValueError("a header block's checksum is wrong")
    return b


def _records(raw: bytes) -> tuple[dict, bytes]:
    """pax records -> {key: value}, and the bytes before the digest record."""
    out, pos, before = {}, 0, b""
    while pos < len(raw):
        sp = raw.index(b" ", pos)
        n = int(raw[pos:sp])
        key, _, value = raw[sp + 1:pos + n - 1].partition(b"=")
        if key == K + b"digest":
            before = raw[:pos]
        out[key] = value
        pos += n
    return out, before


def floor(src_fd: int, dst: str) -> int:
    """Unpack the archive on ``src_fd`` under ``dst`` as described above; the members."""
    s = _Stream(src_fd)
    made: set = {dst}
    n = 0
    while True:
        x = _block(s)
        if x is None:
            break
        size = int(x[124:136].rstrip(b"\0") or b"0", 8)
        raw = s.take(size)
        s.take(-size % 512)
        recs, before = _records(raw)
        head = _block(s)
        if hashlib.sha256(before + head).hexdigest().encode() != recs.get(K + b"digest"):
            raise ValueError("a member's record digest is wrong")
        name = (recs.get(b"path") or head[:100].rstrip(b"\0")).decode()
        kind, size = head[156:157], int(head[124:136].rstrip(b"\0") or b"0", 8)
        data = s.take(size) if size else b""
        s.take(-size % 512)
        n += 1
        if kind == b"5":
            path = os.path.join(dst, name)
            os.makedirs(path, exist_ok=True)
            made.add(path.rstrip("/"))
            continue
        if K + b"sha256" not in recs or name.startswith("ims-asm."):
            continue                            # the archive's header and trailer
        if kind != b"1" and hashlib.sha256(data).hexdigest().encode() != recs[K + b"sha256"]:
            raise ValueError(f"{name}: the data's SHA-256 is wrong")
        path = os.path.join(dst, name)
        parent = os.path.dirname(path)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        when = float(recs.get(K + b"internaldate", b"0"))
        if kind == b"1":
            target = (recs.get(b"linkpath") or head[157:257].rstrip(b"\0")).decode()
            os.link(os.path.join(dst, target), path)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        os.utime(path, (when, when), follow_symlinks=False)
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=os.environ.get("IMS_BENCH_DIR", "/var/tmp/ims-bench"))
    p.add_argument("--driver", action="append", choices=("maildir", "classic"),
                   help="repeatable; both by default")
    p.add_argument("--shape", type=int, action="append", metavar="USERS",
                   help="users in the generated store, repeatable (default 200: many small folders)")
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--run-floor", nargs=2, metavar=("ARCHIVE", "DST"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run_floor:
        src, dst = args.run_floor
        fd = os.open(src, os.O_RDONLY)
        try:
            n = floor(fd, dst)
        finally:
            os.close(fd)
        os.sync()
        print(f"{n} members", file=sys.stderr)
        return 0
    if g.no_tar("bench_restore_floor.py"):
        return 1
    for driver in args.driver or ["maildir", "classic"]:
        for users in args.shape or [200]:
            bench(args, driver, users)
    return 0


def bench(args, driver: str, users: int) -> None:
    m = g.ensure_store(args.dir, driver, args.messages, users)
    part = m["partition"]
    q = shlex.quote
    venv = os.path.dirname(sys.executable)
    ims = lambda name: os.environ.get(name.upper()) or q(os.path.join(venv, name))  # noqa: E731
    work = os.path.join(args.dir, f"restore-floor-{driver}-{users}")
    if os.path.exists(work):
        g.sh(f"rm -rf {q(work)}")
        print("   (targets of an earlier run deleted: waiting 61 s, see bench_restore.py)", flush=True)
        g.sh("sync; sleep 61")
    os.makedirs(work)
    archive, tarball = os.path.join(work, "archive.ims"), os.path.join(work, "store.tar")
    g.sh(f"IMS_HOME={q(m['home'])} {ims('imsbackup')} -f {q(archive)} /")
    g.sh(f"tar -cf {q(tarball)} -C {q(os.path.dirname(part))} {q(os.path.basename(part))}")
    g.sh(f"cat {q(archive)} {q(tarball)} >/dev/null")     # both read from the page cache
    me = f"{q(sys.executable)} {q(os.path.abspath(__file__))}"

    def commands(i: int) -> dict:
        t = {k: os.path.join(work, f"{k}-{i}") for k in ("tar", "floor", "imsrestore")}
        for d in t.values():
            os.makedirs(d)
        home = t["imsrestore"]
        g.make_home(home, driver, g.mail_owner())
        return {"tar": f"tar -xf {q(tarball)} -C {q(t['tar'])} && sync",
                "floor": f"{me} --run-floor {q(archive)} {q(t['floor'])} 2>/dev/null",
                "imsrestore": f"IMS_HOME={q(home)} {ims('imsrestore')} -f {q(archive)}"}

    print(f"\n== {driver}, {users} users: {g.describe(m)}", flush=True)
    for c in commands(0).values():          # warm up, and check that each runs
        timed(c)
    g.sh("sync")
    t: dict = {"tar": [], "floor": [], "imsrestore": []}
    for i in range(1, args.pairs + 1):
        cmds = commands(i)
        g.sh("sync")
        for k, c in cmds.items():
            t[k].append(timed(c))
        print("   " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in t.items()), flush=True)
    tar = t["tar"]
    for k in ("floor", "imsrestore"):
        r = median([a / b for a, b in zip(t[k], tar)])
        print(f"   {k} / tar: {r:.2f}x (median of {args.pairs}; issue 17's target for the "
              f"restore end of a pipe: 1.5x)")
    r = median([a / b for a, b in zip(t["imsrestore"], t["floor"])])
    print(f"   imsrestore / floor: {r:.2f}x", flush=True)


if __name__ == "__main__":
    sys.exit(main())
