"""Build and parse POSIX.1-2001 (pax) ustar headers by hand.

tarfile is general and slow; ims-asm writes a handful of member shapes, so the
constant parts of a 512-byte header are built once and each member is one join.
"""
import hashlib
import re

from .spec import BLOCK, DIGEST, LOGICAL_PREFIX, WIRE_PREFIX, ZERO_BLOCK, wire

REGTYPE = b"0"
AREGTYPE = b"\x00"
LNKTYPE = b"1"
SYMTYPE = b"2"
CHRTYPE = b"3"
BLKTYPE = b"4"
DIRTYPE = b"5"
FIFOTYPE = b"6"
CONTTYPE = b"7"
XHDTYPE = b"x"
XGLTYPE = b"g"
GNU_LONGNAME = b"L"
GNU_LONGLINK = b"K"

MAX_OCTAL = 8 ** 11          # 11 octal digits in size and mtime fields
PAX_HEADER_NAME = b"././@PaxHeader"

_UIDGID = b"0000000\x00" * 2                      # uid, gid = 0
_TAIL = (b"ustar\x0000" + bytes(64)              # magic, version, uname, gname (empty)
         + b"0000000\x00" * 2 + bytes(155 + 12))  # devmajor, devminor, prefix, pad
_TAIL_SUM = sum(_TAIL)
_SPACES_SUM = 8 * 32
assert 100 + 8 + 16 + 12 + 12 + 8 + 1 + 100 + len(_TAIL) == BLOCK


def _pad(n):
    """Zero bytes that bring n up to a multiple of 512."""
    return bytes(-n % BLOCK)


_XHDR_CACHE = {}


def xheader(n):
    """The 'x' header block announcing n bytes of pax records (cached: few distinct n)."""
    b = _XHDR_CACHE.get(n)
    if b is None:
        b = ustar(PAX_HEADER_NAME, MODE_0644, n, 0, XHDTYPE)
        if len(_XHDR_CACHE) < 4096:
            _XHDR_CACHE[n] = b
    return b


def ustar(name_b, mode_b, size, mtime, typeflag, linkname_b=b""):
    """One 512-byte ustar header. name_b/linkname_b: <= 100 bytes; mode_b: 8 bytes."""
    head = b"".join((name_b, bytes(100 - len(name_b)), mode_b, _UIDGID,
                     b"%011o\x00" % size, b"%011o\x00" % mtime))
    link = linkname_b + bytes(100 - len(linkname_b))
    chk = sum(head) + _SPACES_SUM + typeflag[0] + sum(link) + _TAIL_SUM
    return b"".join((head, b"%06o\x00 " % chk, typeflag, link, _TAIL))


def mode_field(mode):
    return b"%07o\x00" % mode


MODE_0600 = mode_field(0o600)
MODE_0644 = mode_field(0o644)
MODE_0700 = mode_field(0o700)


def record(key_b, value_b):
    """One pax record 'LEN key=value\\n'; key_b is b' key=' (leading space, '=')."""
    n = len(key_b) + len(value_b) + 1
    if 8 <= n < 98:                     # the common case: a two-digit length
        return b"%d%s%s\n" % (n + 2, key_b, value_b)
    ln = n + len(str(n))
    if len(str(ln)) != len(str(n)):
        ln = n + len(str(ln))
    return b"%d%s%s\n" % (ln, key_b, value_b)


def key(name):
    """Precomputed key bytes for record()."""
    return b" " + name.encode("ascii") + b"="


K_PATH = key("path")
K_LINKPATH = key("linkpath")
K_SIZE = key("size")
K_MTIME = key("mtime")


def fmt_time(t):
    """Decimal text of an epoch time, exact for ints, shortest round-trip for floats."""
    if isinstance(t, int):
        return str(t)
    t = float(t)
    if t != t or t in (float("inf"), float("-inf")):
        raise ValueError(f"bad time {t!r}")
    if t.is_integer():
        return str(int(t))
    r = repr(t)
    if "e" in r:
        r = ("%.9f" % t).rstrip("0").rstrip(".")
    return r


def _name_field(name_b, is_ascii):
    """(ustar name field, needs pax record)."""
    if is_ascii and len(name_b) <= 100:
        return name_b, False
    # Fallback for tools that ignore pax: ASCII, at most 100 bytes.
    fb = name_b.decode("utf-8", "replace").encode("ascii", "replace")[:100]
    return fb, True


K_DIGEST = key(wire(DIGEST))
_DIGEST_PREFIX = record(K_DIGEST, b"0" * 64)[:-65]     # b'101 SCHILY.xattr.user.imsasm.digest='


def member(name, typeflag, mode_b, size, mtime, records, linkname=""):
    """x header + pax records + ustar header for one member, as one bytes object, and
    the member's record digest (hex; docs/format.md, "Record digests").

    records: bytes of already-built vendor records (record(...) joined).
    mtime: int or float epoch; a fraction, negative or huge value goes to pax.
    The digest record is appended last: SHA-256 over the records before it and the
    512-byte ustar header block.
    """
    name_b = name.encode("utf-8", "surrogateescape")
    name_f, long_name = _name_field(name_b, name.isascii())
    extra = []
    if long_name:
        extra.append(record(K_PATH, name_b))
    link_f = b""
    if linkname:
        link_b = linkname.encode("utf-8", "surrogateescape")
        link_f, long_link = _name_field(link_b, linkname.isascii())
        if long_link:
            extra.append(record(K_LINKPATH, link_b))
    if size >= MAX_OCTAL:
        extra.append(record(K_SIZE, b"%d" % size))
        size_f = 0
    else:
        size_f = size
    if isinstance(mtime, int) and 0 <= mtime < MAX_OCTAL:
        mtime_f = mtime
    else:
        mtime_i = int(mtime)
        if mtime_i != mtime or not 0 <= mtime_i < MAX_OCTAL:
            extra.append(record(K_MTIME, fmt_time(mtime).encode("ascii")))
        mtime_f = mtime_i if 0 <= mtime_i < MAX_OCTAL else 0
    if extra:
        extra.append(records)
        pax = b"".join(extra)
    else:
        pax = records
    block = ustar(name_f, mode_b, size_f, mtime_f, typeflag, link_f)
    h = hashlib.sha256(pax)
    h.update(block)
    digest = h.hexdigest()
    n = len(pax) + 101
    return b"".join((xheader(n), pax, _DIGEST_PREFIX, digest.encode("ascii"), b"\n", _pad(n), block)), digest


def member_plain(name_f, typeflag, mode_b, size, mtime, records, link_f=b""):
    """member() for a name and link name known to fit the ustar fields (ASCII, at most
    100 bytes, already encoded): the same bytes, without the checks member() makes on
    them.  A time with a fraction of a second (the usual file time of a message Dovecot
    delivered) is built here too: its whole seconds in the ustar field, the exact time
    in a pax mtime record ahead of the others, as member() puts it; repr() is
    fmt_time()'s text in this range (no exponent).  Anything else unusual (a huge size,
    a time out of range) goes to member()."""
    if type(mtime) is float and 1e-4 <= mtime < MAX_OCTAL and size < MAX_OCTAL:
        whole = int(mtime)
        if whole != mtime:
            records = b"".join((record(K_MTIME, repr(mtime).encode("ascii")), records))
        mtime = whole
    if size >= MAX_OCTAL or type(mtime) is not int or not 0 <= mtime < MAX_OCTAL:
        return member(name_f.decode("ascii"), typeflag, mode_b, size, mtime, records,
                      link_f.decode("ascii"))
    nums = b"%011o\x00%011o\x00" % (size, mtime)
    # the checksum counts only the bytes that are not zero: name, mode, numbers, link
    ms = _MODE_SUMS.get(mode_b)
    chk = sum(name_f) + (sum(mode_b) if ms is None else ms) + sum(nums) + typeflag[0] + _CONST_SUM
    if link_f:
        chk += sum(link_f)
        link = link_f + bytes(100 - len(link_f))
    else:
        link = _NO_LINK
    block = b"".join((name_f, bytes(100 - len(name_f)), mode_b, _UIDGID, nums,
                      b"%06o\x00 " % chk, typeflag, link, _TAIL))
    h = hashlib.sha256(records)
    h.update(block)
    digest = h.hexdigest()
    n = len(records) + 101
    return b"".join((xheader(n), records, _DIGEST_PREFIX, digest.encode("ascii"), b"\n",
                     bytes(-n % BLOCK), block)), digest


_NO_LINK = bytes(100)
_CONST_SUM = sum(_UIDGID) + _SPACES_SUM + _TAIL_SUM
_MODE_SUMS = {m: sum(m) for m in (MODE_0600, MODE_0644, MODE_0700)}


# ----------------------------------------------------------------- parsing

_OCTAL = re.compile(rb"[ \x00]*([0-7]*)[ \x00]*\Z")


class HeaderError(ValueError):
    """A header block that is not a valid ustar header (reason in args[0])."""


def parse_octal(field, what):
    if field and field[0] & 0x80:       # GNU base-256
        if field[0] == 0xFF:
            raise HeaderError(f"negative {what} field")
        n = field[0] & 0x7F
        for b in field[1:]:
            n = (n << 8) | b
        return n
    f = field.strip(b" \x00")
    if f.isdigit():                     # fast path; int() refuses 8 and 9 in base 8
        try:
            return int(f, 8)
        except ValueError:
            raise HeaderError(f"{what} field is not an octal number: {field!r}") from None
    m = _OCTAL.match(field)
    if not m:
        raise HeaderError(f"{what} field is not a number: {field!r}")
    return int(m.group(1) or b"0", 8)


def is_zero(block):
    return block == ZERO_BLOCK


def checksum_ok(block):
    try:
        stored = parse_octal(block[148:156], "checksum")
    except HeaderError:
        return False
    unsigned = sum(block) - sum(block[148:156]) + _SPACES_SUM
    if stored == unsigned:
        return True
    signed = unsigned - 2 * sum(b for b in block if b >= 128) \
        + 2 * sum(b for b in block[148:156] if b >= 128)
    return stored == signed


def parse_block(block):
    """512 bytes -> dict(name, mode, size, mtime, typeflag, linkname). HeaderError if bad.

    The checksum field must be exactly as tar writers write it ('%06o\\0 ', the sum
    with the field as spaces): a byte changed anywhere in the block is then always seen."""
    if block[148:156] != b"%06o\x00 " % (sum(block) - sum(block[148:156]) + _SPACES_SUM):
        raise HeaderError("header checksum does not match")
    magic = block[257:263]
    if magic not in (b"ustar\x00", b"ustar "):
        raise HeaderError("no ustar magic")
    name = block[0:100].split(b"\x00", 1)[0]
    prefix = block[345:500].split(b"\x00", 1)[0] if magic == b"ustar\x00" else b""
    if prefix:
        name = prefix + b"/" + name
    return {
        "name": name,
        "size": parse_octal(block[124:136], "size"),
        "mtime": parse_octal(block[136:148], "mtime"),
        "typeflag": block[156:157],
        "linkname": block[157:257].split(b"\x00", 1)[0],
    }


# records one extended header may hold: ims-asm writes a few dozen (a record's value may
# be long, e.g. a folder's UID list, but there are few of them); a header of millions of
# tiny records would cost a dict entry each
MAX_RECORDS = 4096


def parse_records(data):
    """pax extended header data -> (dict(str -> str), offset of the last record).
    Keys on the wire as SCHILY.xattr.user.imsasm.<name> are returned as IMSASM.<name>.
    HeaderError if malformed."""
    # The quick way: split at newlines and check that every piece is exactly one
    # record (its length field equals its length).  A record whose value holds a
    # newline, or anything malformed, fails that check, and the careful parser below
    # reads the whole data instead (same result, or its HeaderError).
    if data.count(b"\n") > MAX_RECORDS:
        raise HeaderError(f"more than {MAX_RECORDS} pax records in one extended header")
    out = {}
    pos = 0
    wire, logical, wl = WIRE_PREFIX, LOGICAL_PREFIX, len(WIRE_PREFIX)
    lines = data.split(b"\n")
    if not lines.pop():                 # the data ends with a newline
        for line in lines:
            sp = line.find(b" ", 0, 21)
            n = len(line) + 1
            eq = line.find(b"=", sp + 1)
            if sp <= 0 or eq < 0 or line[:sp] != b"%d" % n:
                break
            try:
                k = line[sp + 1:eq].decode("utf-8")
            except UnicodeDecodeError:
                break
            if k.startswith(wire):
                k = logical + k[wl:]
            out[k] = line[eq + 1:].decode("utf-8", "surrogateescape")
            pos += n
        else:
            return out, pos - n if lines else 0
    return _parse_records(data)


def _parse_records(data):
    out = {}
    pos = 0
    last = 0
    end = len(data)
    while pos < end:
        if data[pos] == 0:       # trailing NULs are tolerated
            if data[pos:].strip(b"\x00"):
                raise HeaderError("garbage after pax records")
            break
        sp = data.find(b" ", pos, pos + 21)
        if sp < 0 or not data[pos:sp].isdigit() or data[pos] == 0x30:
            raise HeaderError(f"bad pax record length at byte {pos} of the records")
        ln = int(data[pos:sp])
        rec_end = pos + ln
        if ln <= sp - pos + 1 or rec_end > end or data[rec_end - 1] != 0x0A:
            raise HeaderError(f"bad pax record at byte {pos} of the records")
        eq = data.find(b"=", sp + 1, rec_end)
        if eq < 0:
            raise HeaderError(f"pax record without '=' at byte {pos} of the records")
        try:
            k = data[sp + 1:eq].decode("utf-8")
            v = data[eq + 1:rec_end - 1].decode("utf-8", "surrogateescape")
        except UnicodeDecodeError:
            raise HeaderError(f"pax record key is not UTF-8 at byte {pos}") from None
        if k.startswith(WIRE_PREFIX):
            k = LOGICAL_PREFIX + k[len(WIRE_PREFIX):]
        out[k] = v
        last = pos
        pos = rec_end
    return out, last
