"""Member names <-> logical names (partition, user, folder, UID).

Each level is percent-encoded just enough that any name round-trips and no member
name can be absolute, contain `.`/`..`, be hidden, or be mistaken for a message
file or a reserved member. Everything else (spaces, quotes, `;`, Unicode) stays as
UTF-8 so `tar tvf` shows readable names.
"""
import functools
import json
import re

from .spec import HEADER_NAME, RESERVED_NAMES as RESERVED, TRAILER_NAME  # noqa: F401 (re-exported)

# Characters always encoded: %, /, C0 controls, DEL, and lone surrogates from
# os.fsdecode (bytes that were not UTF-8; U+DC80..U+DCFF round-trip as %XX).
_UNSAFE = re.compile("[%/\x00-\x1f\x7f\udc80-\udcff]")
_MESSAGE = re.compile(r"[0-9]+\.eml\Z")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")


def _pct(m):
    ch = m.group()
    o = ord(ch)
    if 0xDC80 <= o <= 0xDCFF:           # surrogateescape'd raw byte
        return "%%%02X" % (o - 0xDC00)
    return "%%%02X" % o


@functools.lru_cache(maxsize=4096)
def encode_level(level):
    """Encode one path level (partition, user, or one folder level)."""
    if not isinstance(level, str):
        raise TypeError(f"name level must be str, not {type(level).__name__}")
    if level == "":
        raise ValueError("empty name level (a name like 'a//b' or '') cannot be archived")
    out = _UNSAFE.sub(_pct, level)
    if out[0] == ".":
        out = "%2E" + out[1:]
    elif out in RESERVED or _MESSAGE.match(out):
        # encode the dot so the level never looks like <uid>.eml or a reserved member
        i = out.rindex(".")
        out = out[:i] + "%2E" + out[i + 1:]
    return out


@functools.lru_cache(maxsize=4096)
def decode_level(level):
    """Decode one level; ValueError for anything encode_level never produces
    that could be dangerous ('', '.', '..', hidden names, bad escapes)."""
    if level == "" or level[0] == "." or "/" in level or "\x00" in level:
        raise ValueError(f"bad name level {level!r}")
    if "%" not in level:
        return level
    pieces = level.split("%")
    out = bytearray(pieces[0].encode("utf-8", "surrogateescape"))
    for p in pieces[1:]:
        if len(p) < 2:
            raise ValueError(f"bad percent escape in name level {level!r}")
        if not _HEX2.match(p):
            raise ValueError(f"bad percent escape in name level {level!r}")
        out.append(int(p[:2], 16))
        out += p[2:].encode("utf-8", "surrogateescape")
    if 0 in out:                        # %00: no store name holds a NUL (format.md §3)
        raise ValueError(f"bad name level {level!r}: it decodes to a NUL")
    return out.decode("utf-8", "surrogateescape")


def folder_levels(folder):
    """'Work/2023' -> ['Work', '2023']; the logical separator is always '/'."""
    if not folder:
        raise ValueError("empty folder name")
    return folder.split("/")


def user_dir(partition, user):
    """Directory member name of a user: '<partition>/<user>/'."""
    return f"{encode_level(partition)}/{encode_level(user)}/"


@functools.lru_cache(maxsize=1024)
def folder_dir(partition, user, folder):
    """Directory member name of a folder: '<partition>/<user>/<level>/.../'."""
    return user_dir(partition, user) + "".join(
        encode_level(lv) + "/" for lv in folder_levels(folder))


def message_name(partition, user, folder, uid):
    """Member name of a message: '<folder dir><uid>.eml'."""
    if not isinstance(uid, int) or isinstance(uid, bool) or uid < 0:
        raise ValueError(f"bad UID {uid!r}")
    return f"{folder_dir(partition, user, folder)}{uid}.eml"


def parse(name):
    """Member name -> (partition, user, folder, uid); missing parts are None.

    'p/' -> (p, None, None, None); 'p/u/' -> (p, u, None, None);
    'p/u/A/B/' -> (p, u, 'A/B', None); 'p/u/A/7.eml' -> (p, u, 'A', 7).
    ValueError for a name that ims-asm never writes.
    """
    if not name or name[0] == "/":
        raise ValueError(f"bad member name {name!r}")
    is_dir = name.endswith("/")
    parts = (name[:-1] if is_dir else name).split("/")
    uid = None
    if not is_dir and _MESSAGE.match(parts[-1]):
        if len(parts) < 3:
            raise ValueError(f"message member {name!r} is not inside a folder")
        digits = parts.pop()[:-4]
        if len(digits) > 10 or digits[0] == "0":
            raise ValueError(f"message member {name[:60]!r} does not name a UID (1..4294967295)")
        uid = int(digits)
    elif not is_dir and len(parts) > 2:
        raise ValueError(f"member {name!r} is neither a folder nor a message")
    levels = [decode_level(p) for p in parts]
    partition = levels[0]
    user = levels[1] if len(levels) > 1 else None
    folder = "/".join(levels[2:]) if len(levels) > 2 else None
    return partition, user, folder, uid


# -- the same names outside the archive --------------------------------------------
#
# A name the filesystem allows may hold bytes that are not UTF-8 (os.fsdecode turns
# each into a lone surrogate U+DC80..U+DCFF).  Wherever a name leaves the program it
# keeps those bytes: in SQLite (journals, catalogs) as the exact bytes, in JSON as a
# \udcXX escape that json.loads turns back into the same string, on stdout as the raw
# bytes (as ls and find print them), in messages for people as \xNN.

def to_db(name):
    """A name as SQLite keeps it without loss: the text itself when it is UTF-8 (as
    every name was stored before), else the bytes it stands for, as a BLOB."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape")


def from_db(value):
    """The inverse of :func:`to_db`."""
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).decode("utf-8", "surrogateescape")
    return value


def dump_json(obj, **kwargs):
    """``obj`` as UTF-8 JSON bytes; a name holding bytes that are not UTF-8 is written
    as a \\udcXX escape (valid JSON, read back by json.loads as the same name)."""
    return json.dumps(obj, ensure_ascii=False, **kwargs).encode("utf-8", "backslashreplace")


def shown(name):
    """A name for a message to a person: bytes that are not UTF-8 as \\xNN."""
    if not isinstance(name, str):
        return str(name)
    return _SURROGATE.sub(lambda m: "\\x%02x" % (ord(m.group()) - 0xDC00), name)


_SURROGATE = re.compile("[\udc80-\udcff]")
