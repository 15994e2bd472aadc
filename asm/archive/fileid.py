"""Which file an open message file is, for single-copy links (docs/format.md §2.6).

(st_dev, st_ino) alone names a file only while it exists: once a message is expunged
during a backup its inode number goes to the next new file.  The inode's *generation*
number (``FS_IOC_GETVERSION``) tells the two apart: ext2 and ext4 give every new inode a
random 32-bit one, so a reused number comes with another generation (1 in 2**32 the
same; tests/test_backup_inode_reuse.py checks it).  :func:`identity` is (st_dev,
st_ino, generation, st_size, st_mtime_ns) of an open file: two copies with the same
identity are one inode whose content is unchanged (message files are never rewritten in
place), so the later one is a link without being read.  The ctime is left out: a new
link or a rename (a Maildir flag change) changes it.

Where a filesystem has no generation numbers (tmpfs and overlayfs answer ENOTTY on
Linux 6.18; NFS and FUSE as a rule ENOTTY, EOPNOTSUPP or EINVAL) :func:`identity` gives
None and the writer proves a later copy by its bytes instead; the answer is kept per
st_dev, so such a filesystem is asked once.  So is one that answers with the same
generation for two inode numbers (a constant, e.g. always 0), which proves nothing.
"""
from __future__ import annotations

import errno
import fcntl
import struct

# _IOR('v', 1, long): the kernel writes an int into a buffer the size of a long
FS_IOC_GETVERSION = (2 << 30) | (struct.calcsize("l") << 16) | (ord("v") << 8) | 1
_BUF = bytes(struct.calcsize("l"))
_UNSUPPORTED = frozenset(getattr(errno, n) for n in ("ENOTTY", "EOPNOTSUPP", "ENOTSUP", "EINVAL",
                                                     "ENOSYS") if hasattr(errno, n))

#: Internal switch (tests, and a site that distrusts its filesystem's generation
#: numbers): False makes :func:`identity` give None, so every later copy of an inode is
#: read and proven by its bytes, as on a filesystem without generations.
GENERATIONS = True

_none: set = set()        # st_dev of the filesystems without (useful) generation numbers
_first: dict = {}         # st_dev -> (st_ino, generation) of the first file asked about


def identity(fd: int, st):
    """(st_dev, st_ino, generation, st_size, st_mtime_ns) of the open file ``fd`` whose
    fstat is ``st``, or None when its filesystem gives no generation number (the caller
    then compares bytes)."""
    dev = st.st_dev
    if not GENERATIONS or dev in _none:
        return None
    try:
        gen = struct.unpack_from("I", fcntl.ioctl(fd, FS_IOC_GETVERSION, _BUF))[0]
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            _none.add(dev)
        return None              # anything else (EIO): this file is proven by its bytes
    first = _first.setdefault(dev, (st.st_ino, gen))
    if first[1] == gen and first[0] != st.st_ino:
        _none.add(dev)           # two inodes, one generation: the numbers prove nothing
        return None
    return dev, st.st_ino, gen, st.st_size, st.st_mtime_ns


def proves(dev: int) -> bool:
    """Whether files on st_dev ``dev`` may be told apart by :func:`identity` (True until
    the filesystem was found without generation numbers): a later copy there need not
    be read ahead, as the writer links it on its identity alone."""
    return GENERATIONS and dev not in _none
