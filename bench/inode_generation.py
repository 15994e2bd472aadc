#!/usr/bin/env python3
"""Does a filesystem give a reused inode number a new generation?  (docs/format.md §2.6)

    python3 bench/inode_generation.py DIR [COUNT]

Creates a file in DIR with a second hard link, takes its inode number and generation
(``ioctl(FS_IOC_GETVERSION)``), removes both links, and again, COUNT times (default
2000); prints how often an inode number came back and how often with the generation it
had before (0 is what single-copy links by identity need), or the error the ioctl gave
(ENOTTY: no generation numbers, so imsbackup proves later copies by their bytes there)."""
from __future__ import annotations

import errno
import fcntl
import os
import struct
import sys

FS_IOC_GETVERSION = (2 << 30) | (struct.calcsize("l") << 16) | (ord("v") << 8) | 1


def generation(path: str):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        return struct.unpack_from("I", fcntl.ioctl(fd, FS_IOC_GETVERSION, bytes(8)))[0]
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        os.close(fd)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    d, count = argv[0], int(argv[1]) if len(argv) > 1 else 2000
    os.makedirs(d, exist_ok=True)
    seen: dict = {}                  # inode number -> its last generation (None: no answer)
    reused = same = 0
    errors = set()
    for i in range(count):
        p = os.path.join(d, f"m{i}")
        with open(p, "wb") as f:
            f.write(b"x" * 100)
        os.link(p, p + ".2")
        ino, gen = os.stat(p).st_ino, generation(p)
        if isinstance(gen, str):
            errors.add(gen)
            gen = None
        elif seen.get(ino) is not None:
            reused += 1
            same += seen[ino] == gen
        seen[ino] = gen
        os.unlink(p)
        os.unlink(p + ".2")
    print(f"{d}: {count} files, {len(seen)} inode numbers, {reused} reused with a generation, "
          f"{same} of them with the same generation" + (f"; ioctl: {', '.join(sorted(errors))}" if errors else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
