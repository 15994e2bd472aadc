"""A seeded, bounded fuzzer of ims-asm archives (issue 12), shared by the test suite
(tests/test_archive_fuzz.py: a few hundred mutations per run) and the longer run
(bench/fuzz_archive.py --count N --seed S).

* Corpus: per driver, a source store with single-copy links, flags and keywords,
  non-ASCII names, names that are not UTF-8 (maildir), a message bigger than 1 MiB, a
  folder whose UIDNEXT is above its last UID and an unsubscribed one; a full archive and
  an incremental one, made by imsbackup itself, and the client view (UIDVALIDITY,
  UIDNEXT, UIDs, bytes, flags, keywords, dates) of the source at each backup.
* Mutations, in the classes of CLASSES: raw damage (bit flips in headers, records and
  data, bytes anywhere, truncations, members reordered, swapped, duplicated or dropped,
  link targets retargeted) and forgeries whose digests, checksums and trailer are
  recomputed so they reach the reader's checks (out-of-range and mistyped records and
  header fields, names that are not UTF-8, hostile names, header fields pointing
  outside), each with the exit statuses it may end in.
* Each mutated archive is restored into a fresh installation inside a sandbox (the
  incremental onto a copy of the full restore) and listed with -t, in-process through
  the command's main() (run_command: the status and stderr users get), from a file or a
  pipe, or as a real subprocess for a sample.
* The properties checked (Outcome.problems): no traceback (status 70, "Traceback"), no
  hang (a timeout), memory bounded, nothing written outside the target installation
  (sandbox and its siblings, the temporary directory), no wrong bytes under any UID, no
  exit 0 with a store that differs from the source, every damage detected (restore and
  -t non-zero) and ending in the status of its kind.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from asm.archive import names, pax, spec
from asm.store import open_store
from tests.helpers import change_mail, command_env, make_home, msg, put, state

BIG = (1 << 20) + 4321              # a message the writer hashes and writes in two passes
TIMEOUT = 60.0                      # seconds before one command counts as hung
MAX_RSS_GROWTH = 300 << 20          # bytes the process may grow by in one command

DAMAGE, HOSTILE, INVALID = "damage", "hostile", "invalid"

# class -> (kind, what it does); kinds: damage ends in 4, hostile in 5, invalid in 4
CLASSES = {
    "flip-header": (DAMAGE, "one bit of a ustar or extended header block"),
    "flip-records": (DAMAGE, "one bit of a member's pax records"),
    "flip-data": (DAMAGE, "one bit of a message's (or the header's or trailer's) data"),
    "byte-anywhere": (DAMAGE, "one byte anywhere in the archive set to another value"),
    "truncate": (DAMAGE, "the archive cut short at any byte"),
    "reorder": (DAMAGE, "a member moved elsewhere"),
    "swap": (DAMAGE, "two members exchanged"),
    "duplicate": (DAMAGE, "a member present twice"),
    "drop": (DAMAGE, "a member left out"),
    "retarget-link": (DAMAGE, "a link's target name changed to another message (raw or forged)"),
    "range": (INVALID, "a record out of range (UID 0 or 2^32, UIDVALIDITY 0, 2^63, huge dates, "
                       "5,000-digit sizes, UID lists past 2^32)"),
    "mistyped": (INVALID, "a record or header field of the wrong type or form"),
    "non-utf8": (INVALID, "a member name or record that is not UTF-8"),
    "hostile-name": (HOSTILE, "absolute names, '..', symlinks, devices, FIFOs, links out of the archive"),
    "hostile-header": (INVALID, "header fields naming paths outside (archive_id), wrong versions, "
                                "times and blocking factors"),
    "big-range": (None, "a valid folder listing UIDs 1:4294967295 (memory and time must stay bounded)"),
    "extreme": (None, "valid values at their limits (UID and UIDVALIDITY 2^32-1, years 1 and 9999, "
                      "40 keywords, a 1000-character keyword, deeply nested JSON): whatever the store "
                      "makes of them, no traceback"),
}
STATUS = {DAMAGE: {4}, HOSTILE: {5}, INVALID: {4}}


# ------------------------------------------------------------------------------ corpus

@dataclass
class Corpus:
    driver: str
    root: str
    archives: dict                  # "full" / "incr" -> bytes
    expected: dict                  # "full" / "incr" -> client view of the source
    template: str                   # an installation holding the full restore (for "incr")
    empty: str                      # an installation with an empty store (for "full")
    allowed: dict = field(default_factory=dict)   # (user, folder, uid) -> {sha256 seen in a backup}


def _foreign_names(store, cfg) -> None:
    """Maildir only: a folder and a user whose names are not UTF-8, as another tool left them."""
    part = os.fsencode(cfg.partitions()["primary"])
    root = os.path.join(part, b"joe", b"Maildir", b".Caf\xe9")
    for sub in (b"cur", b"new", b"tmp"):
        os.makedirs(os.path.join(root, sub))
    body = msg(900)
    with open(os.path.join(root, b"cur", b"1700000000.M1P1.other,S=%d:2,S" % len(body)), "wb") as f:
        f.write(body)
    md = os.path.join(part, b"j\xf6rg", b"Maildir")
    for sub in (b"cur", b"new", b"tmp"):
        os.makedirs(os.path.join(md, sub))
    body = msg(901)
    with open(os.path.join(md, b"cur", b"1700000000.M1P1.other,S=%d:2," % len(body)), "wb") as f:
        f.write(body)


def build_corpus(root: str, driver: str) -> Corpus:
    """Source store, full and incremental archive (imsbackup), and a restore of the full."""
    from tests.helpers import run
    os.makedirs(root, exist_ok=True)
    src = os.path.join(root, "src")
    cfg = make_home(src, driver)
    store = open_store(cfg)
    n = 0
    for user, folders in (("joe", ["INBOX", "Work/2023", "Réunions; \"Q3\" 50%", "Trash"]),
                          ("ann", ["INBOX", "Sent"]), ("zoë", ["INBOX"])):
        for folder in folders:
            for j in range(3):
                n += 1
                put(store, user, folder, n, size=40 * j, flags=["\\Seen"] if j else ["\\Flagged", "\\Answered"],
                    keywords=["$Label1", "Junk"] if j == 2 else [],
                    internaldate=1_600_000_000 + n * 1000 + (0.25 if j == 1 else 0))
    store.deliver(["joe", "ann", "zoë"], io.BytesIO(msg(500, 3000)))          # one inode, three users
    store.deliver(["joe", "ann"], io.BytesIO(b"Subject: big\r\n\r\n" + b"B" * BIG))   # a big shared one
    store.set_folder("joe", "Work/2023", uidnext=500)
    store.set_folder("joe", "Trash", subscribed=False)
    if driver == "maildir":
        _foreign_names(store, cfg)
    state(store)                    # the first look gives foreign folders their UIDs
    expected = {"full": state(store)}
    full = os.path.join(root, "full.ims")
    run(src, "imsbackup", "-f", full, "/", check=0)
    time.sleep(1.1)
    since = time.strftime("%Y%m%d:%H%M%S")
    change_mail(store, ["joe", "ann"])
    expected["incr"] = state(store)
    incr = os.path.join(root, "incr.ims")
    run(src, "imsbackup", "-f", incr, "-d", since, "/", check=0)
    empty = os.path.join(root, "empty")
    make_home(empty, driver)
    template = os.path.join(root, "template")
    make_home(template, driver)
    run(template, "imsrestore", "-f", full, check=0)
    got = state(open_store(make_home(template, driver)))
    if got != expected["full"]:
        raise AssertionError("the pristine full archive does not restore to the source")
    allowed: dict = {}
    for view in expected.values():
        for k, v in view.items():
            if len(k) == 3:
                allowed.setdefault(k, set()).add(v[0])
    with open(full, "rb") as f1, open(incr, "rb") as f2:
        archives = {"full": f1.read(), "incr": f2.read()}
    return Corpus(driver, root, archives, expected, template, empty, allowed)


# ------------------------------------------------------------------------ the layout

@dataclass
class Part:
    """One member of an archive, as its bytes say (parsed without asm.archive.reader)."""
    start: int
    end: int
    x_block: bytes
    records: list                   # [(key bytes, value bytes)] in order, the digest record included
    rec_at: int                     # offset of the first record byte
    rec_len: int
    ustar_at: int
    ustar: bytes
    data_at: int
    data: bytes

    @property
    def typeflag(self) -> bytes:
        return self.ustar[156:157]

    def rec(self, key: str):
        want = spec.wire(key).encode()
        for k, v in self.records:
            if k == want:
                return v
        return None

    @property
    def name(self) -> str:
        p = dict(self.records).get(b"path")
        if p is not None:
            return p.decode("utf-8", "surrogateescape")
        return self.ustar[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")

    @property
    def kind(self) -> str:
        k = self.rec(spec.KIND)
        return k.decode() if k else "?"


def _octal(field: bytes) -> int:
    return int(field.strip(b" \0") or b"0", 8)


def _records(data: bytes) -> list:
    out, pos = [], 0
    while pos < len(data) and data[pos] != 0:
        sp = data.index(b" ", pos)
        ln = int(data[pos:sp])
        body = data[sp + 1:pos + ln - 1]
        k, _, v = body.partition(b"=")
        out.append((k, v))
        pos += ln
    return out


def layout(data: bytes) -> tuple[list, int]:
    """The members of a pristine archive, and the offset of its end-of-archive blocks."""
    parts, off = [], 0
    while data[off:off + 512] != spec.ZERO_BLOCK:
        xb = data[off:off + 512]
        n = _octal(xb[124:136])
        rec_at = off + 512
        ustar_at = rec_at + n + (-n % 512)
        ub = data[ustar_at:ustar_at + 512]
        size = _octal(ub[124:136]) if ub[156:157] in (b"0", b"\0") else 0
        data_at = ustar_at + 512
        end = data_at + size + (-size % 512)
        parts.append(Part(off, end, xb, _records(data[rec_at:rec_at + n]), rec_at, n, ustar_at, ub,
                          data_at, data[data_at:data_at + size]))
        off = end
    return parts, off


# ------------------------------------------------------------------- forged archives

@dataclass
class Model:
    """A member as fields a forger may change; emit() writes it back with every digest,
    checksum and the trailer recomputed, as a writer would."""
    name_f: bytes
    mode_b: bytes
    size_f: int
    mtime_f: int
    typeflag: bytes
    link_f: bytes
    records: list               # [[key bytes, value bytes]] without the digest record
    data: bytes
    json: object = None         # header / trailer: the decoded JSON (re-encoded by emit)

    def get(self, key):
        want = spec.wire(key).encode() if isinstance(key, str) else key
        for k, v in self.records:
            if k == want:
                return v
        return None

    def set(self, key, value: bytes) -> None:
        """Set a record (key: 'IMSASM.x' or raw bytes such as b'path'), appending it if new."""
        want = spec.wire(key).encode() if isinstance(key, str) else key
        for r in self.records:
            if r[0] == want:
                r[1] = value
                return
        self.records.insert(len(self.records), [want, value])

    def drop(self, key) -> None:
        want = spec.wire(key).encode() if isinstance(key, str) else key
        self.records = [r for r in self.records if r[0] != want]

    def set_name(self, name_b: bytes) -> None:
        """The member's name: in the ustar field when ASCII and short, else a pax path."""
        self.drop(b"path")
        if name_b.isascii() and len(name_b) <= 100:
            self.name_f = name_b
        else:
            self.name_f = name_b.decode("utf-8", "replace").encode("ascii", "replace")[:100]
            self.records.insert(0, [b"path", name_b])

    def set_link(self, name_b: bytes) -> None:
        self.drop(b"linkpath")
        if name_b.isascii() and len(name_b) <= 100:
            self.link_f = name_b
        else:
            self.link_f = name_b.decode("utf-8", "replace").encode("ascii", "replace")[:100]
            self.records.insert(0, [b"linkpath", name_b])

    @property
    def name(self) -> bytes:
        for k, v in self.records:
            if k == b"path":
                return v
        return self.name_f


def models(data: bytes) -> list:
    parts, _ = layout(data)
    out = []
    dkey = spec.wire(spec.DIGEST).encode()
    for p in parts:
        u = p.ustar
        m = Model(u[:100].split(b"\0", 1)[0], u[100:108], _octal(u[124:136]), _octal(u[136:148]),
                  u[156:157], u[157:257].split(b"\0", 1)[0],
                  [[k, v] for k, v in p.records if k != dkey], p.data)
        if p.name in spec.RESERVED_NAMES:
            m.json = json.loads(p.data)
        out.append(m)
    return out


def _emit_one(m: Model) -> tuple[bytes, str]:
    block = pax.ustar(m.name_f[:100], m.mode_b, m.size_f, m.mtime_f, m.typeflag, m.link_f[:100])
    recs = b"".join(pax.record(b" " + k + b"=", v) for k, v in m.records)
    digest = hashlib.sha256(recs + block).hexdigest()
    recs += pax.record(pax.K_DIGEST, digest.encode())
    n = len(recs)
    return b"".join((pax.xheader(n), recs, bytes(-n % 512), block, m.data, bytes(-len(m.data) % 512))), digest


def emit(ms: list, bf: int = 20, fix_trailer: bool = True) -> bytes:
    """The archive of ``ms`` (header first, trailer last) with every digest recomputed."""
    out, seq = [], hashlib.sha256()
    for i, m in enumerate(ms):
        last = i == len(ms) - 1
        if m.json is not None:
            if last and fix_trailer and isinstance(m.json, dict):
                m.json["digest"] = seq.hexdigest()
            m.data = names.dump_json(m.json, sort_keys=True, indent=1) + b"\n" \
                if not isinstance(m.json, bytes) else m.json
            m.size_f = len(m.data)
            m.set(spec.SHA256, hashlib.sha256(m.data).hexdigest().encode())
        b, d = _emit_one(m)
        out.append(b)
        if not last:
            seq.update(d.encode() + b"\n")
    body = b"".join(out) + spec.ZERO_BLOCK * 2
    return body + bytes(-len(body) % (512 * bf))


# ----------------------------------------------------------------------------- mutations

@dataclass
class Mutation:
    cls: str
    what: str
    source: str                 # "full" or "incr"
    data: bytes
    statuses: set | None        # what restore and -t may exit with (None: any but 70)
    must_fail: bool = True      # the archive differs from a writer's: never exit 0
    listing: set | None = None  # what -t may exit with, when not ``statuses``
    forged_valid: bool = False  # a valid archive of another store: compared with no source


def _flip(data: bytes, at: int, rng) -> bytes:
    b = bytearray(data)
    b[at] ^= 1 << rng.randrange(8)
    return bytes(b)


def _mutate_raw(cls: str, rng, data: bytes, parts: list, end: int) -> tuple[bytes, str, bool]:
    """(mutated bytes, what, must_fail) for the raw damage classes."""
    if cls == "flip-header":
        p = rng.choice(parts)
        if rng.random() < 0.5:
            at = p.start + rng.randrange(512)
            return _flip(data, at, rng), f"bit of {p.name}'s x header block, byte {at - p.start}", True
        at = p.ustar_at + rng.randrange(512)
        return _flip(data, at, rng), f"bit of {p.name}'s ustar block, byte {at - p.ustar_at}", True
    if cls == "flip-records":
        p = rng.choice(parts)
        at = p.rec_at + rng.randrange(p.rec_len)
        return _flip(data, at, rng), f"bit of {p.name}'s records, byte {at - p.rec_at}", True
    if cls == "flip-data":
        withdata = [p for p in parts if p.data]
        p = rng.choice(withdata)
        at = p.data_at + rng.randrange(len(p.data))
        return _flip(data, at, rng), f"bit of {p.name}'s data, byte {at - p.data_at}", True
    if cls == "byte-anywhere":
        at = rng.randrange(len(data))
        v = rng.randrange(1, 256)
        b = bytearray(data)
        b[at] = (b[at] + v) % 256
        return bytes(b), f"byte {at} of {len(data)} changed by {v}", True
    if cls == "truncate":
        # cuts are spread over the whole archive, with more near member boundaries
        if rng.random() < 0.4:
            p = rng.choice(parts)
            at = rng.choice([p.start, p.ustar_at, p.data_at, p.end, p.data_at + len(p.data)]) + rng.randrange(-2, 3)
            at = max(0, min(len(data) - 1, at))
        else:
            at = rng.randrange(len(data))
        trailer = parts[-1]
        must = at < trailer.data_at + len(trailer.data)
        return data[:at], f"cut at byte {at} of {len(data)}", must
    spans = [(p.start, p.end) for p in parts]
    if cls == "reorder":
        i = rng.randrange(len(parts))
        j = rng.choice([k for k in range(len(parts) + 1) if k not in (i, i + 1)])
        seg = data[spans[i][0]:spans[i][1]]
        rest = data[:spans[i][0]] + data[spans[i][1]:end]
        ins = spans[j][0] if j < len(parts) else end
        if ins > spans[i][0]:
            ins -= spans[i][1] - spans[i][0]
        out = rest[:ins] + seg + rest[ins:]
        return out + data[end:], f"{parts[i].name} moved before member {j}", True
    if cls == "swap":
        i, j = sorted(rng.sample(range(len(parts)), 2))
        a, b = spans[i], spans[j]
        out = data[:a[0]] + data[b[0]:b[1]] + data[a[1]:b[0]] + data[a[0]:a[1]] + data[b[1]:]
        return out, f"{parts[i].name} and {parts[j].name} swapped", data[a[0]:a[1]] != data[b[0]:b[1]]
    if cls == "duplicate":
        i = rng.randrange(len(parts))
        j = rng.randrange(len(parts) + 1)
        ins = spans[j][0] if j < len(parts) else end
        out = data[:ins] + data[spans[i][0]:spans[i][1]] + data[ins:]
        return out, f"{parts[i].name} again before member {j}", True
    if cls == "drop":
        i = rng.randrange(len(parts))
        return data[:spans[i][0]] + data[spans[i][1]:], f"{parts[i].name} left out", True
    raise ValueError(cls)


_RANGE_CASES = [
    ("folder", spec.UIDVALIDITY, b"0"), ("folder", spec.UIDVALIDITY, b"4294967296"),
    ("folder", spec.UIDVALIDITY, b"9223372036854775808"), ("folder", spec.UIDNEXT, b"0"),
    ("folder", spec.UIDNEXT, b"4294967297"), ("folder", spec.UIDS, b"1:4294967296"),
    ("folder", spec.UIDS, b"0:3"), ("folder", spec.COUNT, b"4294967296"), ("folder", spec.COUNT, b"7" * 5000),
    ("message", spec.UID, b"0"), ("message", spec.UID, b"4294967296"),
    ("message", spec.UID, b"9223372036854775808"), ("message", spec.INTERNALDATE, b"1" + b"0" * 30),
    ("message", spec.INTERNALDATE, b"-99999999999"), ("message", spec.STORED, b"253402300800"),
    ("message", spec.NLINK, b"0"), ("message", spec.NLINK, b"18446744073709551616"),
    ("message", spec.POP3_ORDER, b"0"), ("message", spec.POP3_ORDER, b"4294967296"),
    ("message", spec.BASENAME, b"x" * 256), ("folder", spec.MAILBOX_GUID, b"0" * 33),
    ("message", b"size", b"9" * 5000), ("message", b"size", b"9223372036854775808"),
    ("message", b"mtime", b"1" * 400), ("link", spec.UID, b"4294967296"),
    ("state", spec.STATE, b'{"\\\\Seen":"1:4294967295"}'),
]
_MISTYPED_CASES = [
    ("folder", spec.UIDVALIDITY, b"abc"), ("folder", spec.UIDVALIDITY, b"1.5"), ("folder", spec.UIDNEXT, b"-5"),
    ("folder", spec.UIDS, b"1,,2"), ("folder", spec.UIDS, b"5,3"), ("folder", spec.SUBSCRIBED, b"yes"),
    ("folder", spec.COUNT, b"x"), ("message", spec.UID, b"1e3"), ("message", spec.FLAGS, b"\\Seen \\Bogus"),
    ("message", spec.FLAGS, b"\\Seen \\Seen"), ("message", spec.KEYWORDS, b"a\x01b"),
    ("message", spec.INTERNALDATE, b"yesterday"), ("message", spec.INTERNALDATE, b"nan"),
    ("message", spec.STORED, b"1e400"), ("message", spec.SHA256, b"xyz"), ("message", spec.SHA256, b""),
    ("message", spec.BASENAME, b"../../escape"), ("message", spec.BASENAME, b".hidden"),
    ("message", spec.POP3_UIDL, b"two words"), ("message", spec.POP3_ORDER, b"first"),
    ("folder", spec.MAILBOX_GUID, b"0123456789ABCDEF0123456789ABCDEF"), ("folder", spec.MAILBOX_GUID, b""),
    ("message", spec.KIND, b"folder"), ("message", spec.KIND, None), ("user", spec.KIND, b"message"),
    ("message", b"mtime", b"soon"), ("state", spec.STATE, b"[1,2]"), ("state", spec.STATE, b'{"\\\\Seen":5}'),
    ("state", spec.STATE, b"{nope"),
    ("header-json", "created", "yesterday"), ("header-json", "scope", 5), ("header-json", "scope", [None]),
    ("header-json", "archive_id", 7), ("header-json", "options", "all"), ("header-json", "since", "x"),
    ("header-json", "version", "2"), ("header-json", "blocking_factor", 2.5),
    ("trailer-json", "counts", "many"), ("trailer-json", "errors", "none"), ("trailer-json", "complete", False),
    ("trailer-json", "digest", 5),
]
_HOSTILE_HEADER_CASES = [
    ("archive_id", "../../../escape-refs"), ("archive_id", "{base}/abs-escape"), ("archive_id", "a\x00b"),
    ("archive_id", ""), ("version", 0), ("version", True), ("version", 3), ("created", 1e308),
    ("created", -1e308), ("created", float("nan")), ("since", float("inf")), ("blocking_factor", 0),
    ("blocking_factor", 10 ** 6), ("format", "tar"),
]


def _pick(ms: list, rng, kind: str):
    want = {"state": "folder", "header-json": "header", "trailer-json": "trailer"}.get(kind, kind)
    cands = [i for i, m in enumerate(ms) if (m.get(spec.KIND) or b"").decode() == want]
    if kind == "state":
        cands = [i for i in cands if ms[i].get(spec.STATE)] or cands
    return rng.choice(cands) if cands else None


def _mutate_forged(cls: str, rng, data: bytes, base: str) -> tuple[bytes, str, set | None, bool]:
    """Forgeries: every digest and the trailer recomputed, so only the reader's value,
    name and order checks stand between the archive and the store."""
    ms = models(data)
    if cls in ("range", "mistyped"):
        kind, key, value = rng.choice(_RANGE_CASES if cls == "range" else _MISTYPED_CASES)
        i = _pick(ms, rng, kind)
        if i is None:
            return data, f"no {kind} member to change", None, False
        m = ms[i]
        if kind.endswith("-json"):
            m.json[key] = value
            what = f"{m.name.decode()}: {key} = {str(value)[:40]}"
        else:
            if value is None:
                m.drop(key)
            elif key == spec.UID and kind in ("message", "link"):
                m.set(key, value)       # the name keeps the old UID unless it can carry this one
                if value.isdigit() and len(value) <= 10:
                    n = m.name.decode("utf-8", "surrogateescape")
                    m.set_name((n[:n.rindex("/") + 1] + value.decode() + ".eml").encode("utf-8", "surrogateescape"))
            else:
                m.set(key, value)
            k = key if isinstance(key, str) else key.decode()
            what = f"{m.name.decode('utf-8', 'replace')}: {k} = {(value or b'(none)')[:40]!r}"
        return emit(ms, fix_trailer=kind != "trailer-json"), what, STATUS[INVALID], True
    if cls == "retarget-link":
        links = [i for i, m in enumerate(ms) if m.typeflag == pax.LNKTYPE]
        msgs = [m.name for m in ms if m.typeflag in (pax.REGTYPE,) and m.name.endswith(b".eml")]
        i = rng.choice(links)
        cur = ms[i].get(b"linkpath") or ms[i].link_f
        other = rng.choice([n for n in msgs if n != cur])
        if rng.random() < 0.5:          # the member alone rewritten: the trailer no longer matches
            parts, _ = layout(data)
            p = parts[i]
            m2 = copy.deepcopy(ms[i])
            m2.set_link(other)
            b, _ = _emit_one(m2)
            return data[:p.start] + b + data[p.end:], \
                f"{ms[i].name.decode()} -> {other.decode()} (member rewritten)", STATUS[DAMAGE], True
        ms[i].set_link(other)
        return emit(ms), f"{ms[i].name.decode()} -> {other.decode()} (forged)", STATUS[DAMAGE], True
    if cls == "non-utf8":
        cands = [i for i, m in enumerate(ms) if m.name.endswith((b"/", b".eml")) and b"/" in m.name]
        i = rng.choice(cands)
        m = ms[i]
        how = rng.randrange(3)
        if how == 0:                # raw bytes that are not UTF-8 in the path record
            n = m.name
            cut = n.index(b"/") + 1
            m.set_name(n[:cut] + b"\xff\xfe" + n[cut:])
            what = "name with raw bytes \\xff\\xfe"
        elif how == 1:              # a record value that is not UTF-8
            m.set(spec.USER, b"j\xf6rg-\xff")
            what = "IMSASM.user not UTF-8"
        else:                       # a record key that is not UTF-8
            m.records.append([b"SCHILY.xattr.user.imsasm.k\xff", b"1"])
            what = "record key not UTF-8"
        return emit(ms), f"{m.name.decode('utf-8', 'replace')}: {what}", STATUS[INVALID], True
    if cls == "hostile-name":
        msgs = [i for i, m in enumerate(ms) if m.typeflag == pax.REGTYPE and m.name.endswith(b".eml")]
        i = rng.choice(msgs)
        m = ms[i]
        n = m.name
        case = rng.randrange(9)
        if case == 0:
            m.set_name(b"/" + n)
            what = "absolute name"
        elif case == 1:
            m.set_name(b"primary/../../../escape/" + n.rsplit(b"/", 1)[1])
            what = "'..' in the name"
        elif case == 2:
            m.typeflag, m.link_f, m.data, m.size_f = pax.SYMTYPE, b"/etc/passwd", b"", 0
            what = "symbolic link to /etc/passwd"
        elif case == 3:
            m.typeflag, m.data, m.size_f = pax.CHRTYPE, b"", 0
            what = "character device"
        elif case == 4:
            m.typeflag, m.data, m.size_f = pax.FIFOTYPE, b"", 0
            what = "FIFO"
        elif case == 5:
            m.typeflag, m.data, m.size_f = pax.LNKTYPE, b"", 0
            m.set_link(rng.choice([b"/etc/shadow", b"etc/shadow", b"../../etc/shadow"]))
            what = "hard link out of the archive"
        elif case == 6:
            parts = n.split(b"/")
            parts[1] = b"%2E%2E"
            m.set_name(b"/".join(parts))
            what = "user '..' (escaped)"
        elif case == 7:
            parts = n.split(b"/")
            parts[0] = b"%2E%2E"
            m.set_name(b"/".join(parts))
            what = "partition '..' (escaped)"
        else:
            parts = n.split(b"/")
            parts[1] = b"x%2F..%2F..%2Fescape"
            m.set_name(b"/".join(parts))
            what = "user with '/' (escaped)"
        return emit(ms), f"{n.decode('utf-8', 'replace')}: {what}", STATUS[HOSTILE], True
    if cls == "hostile-header":
        key, value = rng.choice(_HOSTILE_HEADER_CASES)
        if isinstance(value, str):
            value = value.replace("{base}", base)
        ms[0].json[key] = value
        status = {8} if (key == "version" and value == 3) else {4}     # 3: newer than this reader
        return emit(ms), f"header {key} = {str(value)[:60]!r}", status, True
    if cls == "extreme":
        case = rng.randrange(8)
        msgs = [i for i, m in enumerate(ms) if m.typeflag == pax.REGTYPE and m.name.endswith(b".eml")]
        m = ms[rng.choice(msgs)]
        f = ms[_pick(ms, rng, "folder")]
        if case == 0:
            f.set(spec.UIDVALIDITY, b"4294967295")
            what = "UIDVALIDITY 4294967295"
        elif case == 1:
            f.set(spec.UIDNEXT, b"4294967296")
            what = "UIDNEXT 4294967296"
        elif case == 2:
            m.set(spec.INTERNALDATE, b"253402300799")
            m.set(spec.STORED, b"-62135596800")
            what = "INTERNALDATE 9999-12-31, stored 0001-01-01"
        elif case == 3:
            m.set(spec.KEYWORDS, b" ".join(b"k%d" % i for i in range(40)))
            what = "40 keywords"
        elif case == 4:
            m.set(spec.KEYWORDS, b"K" * 1000)
            what = "a 1000-character keyword"
        elif case == 5:                 # the folder's last message takes UID 2^32-1
            i = ms.index(f)
            j = i + 1
            while j + 1 < len(ms) and ms[j + 1].name.startswith(f.name) and ms[j + 1].name.endswith(b".eml"):
                j += 1
            last = ms[j]
            if last.name.endswith(b".eml") and last.name.startswith(f.name):
                n = last.name.decode("utf-8", "surrogateescape")
                last.set_name((n[:n.rindex("/") + 1] + "4294967295.eml").encode("utf-8", "surrogateescape"))
                last.set(spec.UID, b"4294967295")
                f.set(spec.UIDS, (f.get(spec.UIDS) or b"") + b",4294967295")
                f.set(spec.COUNT, str(int(f.get(spec.COUNT) or b"0") + 1).encode())
                f.set(spec.UIDNEXT, b"4294967296")
            what = "a message with UID 4294967295"
        elif case == 6:
            ms[0].json = b'{"deep": ' + b"[" * 100000 + b"]" * 100000 + b"}\n"
            what = "header JSON nested 100,000 deep"
        else:
            ms[-1].json = b'{"complete": true, "counts": ' + b"[" * 100000 + b"]" * 100000 + b"}\n"
            what = "trailer JSON nested 100,000 deep"
        return emit(ms), f"{m.name.decode('utf-8', 'replace')}: {what}", "valid", False
    if cls == "big-range":
        # a full archive's folder listing 1:4294967295 restores as the source did; an
        # incremental's, whose state record spans them too, makes the chain miss them all
        # (exit 7: the folder is left as it was); both in bounded time and memory
        i = _pick(ms, rng, "state")
        m = ms[i]
        m.set(spec.UIDS, b"1:4294967295")
        m.set(spec.COUNT, b"4294967295")
        if m.get(spec.STATE):
            m.set(spec.STATE, b'{"\\\\Seen":"1:4294967295"}')
            # an incremental's IMSASM.state_ids holds 4 bytes per UID of its state: for
            # 2^32-1 UIDs it cannot be valid, so the folder is forged as an incremental of
            # a writer before that record (which readers still take) is
            m.drop(spec.STATE_IDS)
            return emit(ms), f"{m.name.decode('utf-8', 'replace')}: UIDs and state 1:4294967295", "chain", False
        return emit(ms), f"{m.name.decode('utf-8', 'replace')}: UIDs 1:4294967295", None, False
    raise ValueError(cls)


def _names_ims_asm(data: bytes) -> bool:
    """Whether ``data`` holds bytes only an ims-asm archive writes (its records' prefix or
    its header member's name), as the reader's own test for "damaged, not foreign"."""
    return spec.WIRE_PREFIX.encode() in data or spec.HEADER_NAME.encode() in data


def mutations(corpus: Corpus, count: int, seed: int, classes=None, base: str = "/nonexistent"):
    """``count`` mutations, the classes in turn, reproducible from ``seed``."""
    rng = random.Random(seed)
    classes = list(classes or CLASSES)
    cache = {}
    for k in range(count):
        cls = classes[k % len(classes)]
        source = "incr" if rng.random() < (0.5 if cls == "big-range" else 0.3) else "full"
        data = corpus.archives[source]
        if source not in cache:
            cache[source] = layout(data)
        parts, end = cache[source]
        kind = CLASSES[cls][0]
        if cls in ("flip-header", "flip-records", "flip-data", "byte-anywhere", "truncate", "reorder",
                   "swap", "duplicate", "drop"):
            out, what, must = _mutate_raw(cls, rng, data, parts, end)
            statuses = STATUS[kind] if must else None
            if cls == "truncate" and not out:
                statuses = {8}          # nothing at all: not an archive
            elif cls == "truncate" and not _names_ims_asm(out):
                # what is left holds nothing that names ims-asm (a cut inside the first
                # tar header: "././@PaxHeader" is any pax archive's): damaged or foreign
                statuses = {4, 8}
            yield Mutation(cls, what, source, out, statuses, must)
        else:
            if cls == "retarget-link" and not any(p.typeflag == pax.LNKTYPE for p in parts):
                source, data = "full", corpus.archives["full"]
            out, what, statuses, must = _mutate_forged(cls, rng, data, base)
            if statuses == "chain":         # refused by the chain (restore), intact for -t
                yield Mutation(cls, what, source, out, {7}, must, listing={0})
            elif statuses == "valid":
                yield Mutation(cls, what, source, out, None, False, forged_valid=True)
            else:
                yield Mutation(cls, what, source, out, statuses, must)


# ------------------------------------------------------------------------ running

class _Hung(BaseException):
    """Raised by the alarm in an in-process command that ran past its timeout."""


@dataclass
class Result:
    status: int
    stdout: bytes
    stderr: bytes
    hung: bool = False
    rss_growth: int = 0


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_inprocess(argv: list, home: str, archive: bytes | None = None, timeout: float = TIMEOUT,
                  tmpdir: str | None = None) -> Result:
    """imsrestore's main(argv) in this process, as run_command ends it: the exit status
    and the bytes of stdout and stderr a user gets.  With ``archive``, stdin is a pipe
    fed with it (for ``-f -``).  The final syncfs is skipped (on a shared disk it costs
    seconds; durability is not what this checks, and the subprocess samples keep it)."""
    from asm import plugins
    from asm.cli import imsrestore
    from asm.store.base import Store
    out, err = io.BytesIO(), io.BytesIO()
    so = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    se = io.TextIOWrapper(err, encoding="utf-8", write_through=True)
    saved_std = sys.stdout, sys.stderr, sys.stdin
    saved_env = os.environ.get("IMS_HOME")
    saved_sig = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    saved_tmp = tempfile.tempdir
    feeder = None
    rfd = wfd = None
    if archive is not None:
        rfd, wfd = os.pipe()

        def feed():
            try:
                with os.fdopen(wfd, "wb") as f:
                    f.write(archive)
            except (BrokenPipeError, OSError):
                pass
        feeder = threading.Thread(target=feed, daemon=True)
        stdin = io.TextIOWrapper(os.fdopen(rfd, "rb"), encoding="utf-8")
    else:
        stdin = open(os.devnull)
    hung = []

    def on_alarm(signum, frame):
        hung.append(1)
        raise _Hung()

    rss0 = _rss()
    status = None
    saved_sync = Store.sync
    try:
        Store.sync = lambda self: None
        os.environ["IMS_HOME"] = home
        if tmpdir:
            tempfile.tempdir = tmpdir
        sys.stdout, sys.stderr, sys.stdin = so, se, stdin
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        if feeder:
            feeder.start()
        plugins.reset()
        status = imsrestore.main(argv)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        Store.sync = saved_sync
        sys.stdout, sys.stderr, sys.stdin = saved_std
        for s, h in saved_sig.items():
            signal.signal(s, h)
        tempfile.tempdir = saved_tmp
        if saved_env is None:
            os.environ.pop("IMS_HOME", None)
        else:
            os.environ["IMS_HOME"] = saved_env
        stdin.close()
        if feeder:
            feeder.join(10)
        plugins.reset()
    return Result(status, out.getvalue(), err.getvalue(), bool(hung), _rss() - rss0)


def run_subprocess(argv: list, home: str, archive: bytes | None = None, timeout: float = TIMEOUT,
                   tmpdir: str | None = None) -> Result:
    from tests.helpers import argv_of
    env = command_env(home, {"TMPDIR": tmpdir} if tmpdir else None)
    try:
        p = subprocess.run(argv_of(["imsrestore", *argv]), env=env, capture_output=True, timeout=timeout,
                           input=archive, stdin=None if archive is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        return Result(-1, exc.stdout or b"", exc.stderr or b"", hung=True)
    return Result(p.returncode, p.stdout, p.stderr)


# --------------------------------------------------------------------------- oracle

@dataclass
class Outcome:
    mutation: Mutation
    mode: str
    restore: Result
    listing: Result
    problems: list


def _tree(path: str) -> set:
    out = set()
    for d, dirs, files in os.walk(path):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(d, n), path))
    return out


def check(corpus: Corpus, m: Mutation, workdir: str, n: int, mode: str = "file") -> Outcome:
    """Restore and list one mutated archive in a fresh sandbox; the properties that fail."""
    sandbox = os.path.join(workdir, f"sandbox-{n}")
    tmp = os.path.join(workdir, "tmp")
    arch_dir = os.path.join(workdir, "archives")
    for d in (tmp, arch_dir):
        os.makedirs(d, exist_ok=True)
    os.makedirs(sandbox)
    home = os.path.join(sandbox, "home")
    shutil.copytree(corpus.template if m.source == "incr" else corpus.empty, home, symlinks=True)
    archive = os.path.join(arch_dir, f"m{n}.ims")
    with open(archive, "wb") as f:
        f.write(m.data)
    before_base = set(os.listdir(workdir))
    runner = run_subprocess if mode == "subprocess" else run_inprocess
    piped = mode in ("pipe", "subprocess")
    dev = ["-f", "-"] if piped else ["-f", archive]
    feed = m.data if piped else None
    restore = runner([*dev], home, feed, tmpdir=tmp)
    listing = runner(["-t", *dev], home, feed, tmpdir=tmp)
    problems = []
    for what, r in (("restore", restore), ("-t", listing)):
        if r.hung:
            problems.append(f"{what}: hung (no exit within {TIMEOUT:.0f}s)")
        if r.status == 70 or b"Traceback" in r.stderr or b"internal error" in r.stderr:
            problems.append(f"{what}: traceback / internal error (status {r.status}): {r.stderr[-300:]!r}")
        if r.rss_growth > MAX_RSS_GROWTH:
            problems.append(f"{what}: memory grew by {r.rss_growth >> 20} MiB")
        want = m.listing if what == "-t" and m.listing is not None else m.statuses
        if want is not None and r.status not in want:
            problems.append(f"{what}: exit {r.status}, expected {sorted(want)}: {r.stderr[-400:]!r}")
        if m.must_fail and r.status == 0:
            problems.append(f"{what}: exit 0 for a damaged or forged archive")
    # nothing outside the installation: the sandbox holds only it, its siblings are the
    # work directory's own, the temporary directory stays empty
    extra = set(os.listdir(sandbox)) - {"home"}
    if extra:
        problems.append(f"wrote outside the installation, in the sandbox: {sorted(extra)}")
    new = set(os.listdir(workdir)) - before_base
    if new:
        problems.append(f"wrote outside the installation, beside the sandbox: {sorted(new)}")
    if os.listdir(tmp):
        problems.append(f"left files in the temporary directory: {os.listdir(tmp)}")
    if os.path.exists(os.path.join(workdir, "abs-escape.ref")):
        problems.append("wrote the reference file where the archive's header said")
    # the store: no wrong bytes under any UID; exit 0 only with the source's view
    try:
        got = state(open_store(make_home(home, corpus.driver)))
    except Exception as exc:        # noqa: BLE001 - a store the run left unreadable is a finding
        got = None
        problems.append(f"the store cannot be read after the run: {type(exc).__name__}: {exc}")
    if got is not None:
        for k, v in ([] if m.forged_valid else got.items()):
            if len(k) == 3 and v[0] not in corpus.allowed.get(k, ()):
                problems.append(f"wrong bytes under {k}")
                break
        if restore.status == 0 and got != corpus.expected[m.source] and not m.forged_valid:
            diff = sorted(set(got.items()) ^ set(corpus.expected[m.source].items()), key=repr)[:3]
            problems.append(f"exit 0 but the store differs from the source: {diff!r}"[:600])
    if listing.status == 0 and restore.status not in (0, 7) and not m.forged_valid:
        # (7: the chain refused it, not the archive; a valid forgery may hold what the store refuses)
        problems.append(f"-t exits 0 but the restore exits {restore.status}")
    shutil.rmtree(sandbox, ignore_errors=True)
    os.unlink(archive)
    return Outcome(m, mode, restore, listing, problems)


def summary(outcomes: list) -> dict:
    """{class: {"tried", "restore" {status: n}, "-t" {status: n}, "problems"}}."""
    out: dict = {}
    for o in outcomes:
        c = out.setdefault(o.mutation.cls, {"tried": 0, "restore": {}, "-t": {}, "problems": 0})
        c["tried"] += 1
        c["restore"][o.restore.status] = c["restore"].get(o.restore.status, 0) + 1
        c["-t"][o.listing.status] = c["-t"].get(o.listing.status, 0) + 1
        c["problems"] += bool(o.problems)
    return out


def self_test(corpus: Corpus) -> None:
    """The forger reproduces each pristine archive byte for byte (else its forgeries
    would test the forger)."""
    for k, data in corpus.archives.items():
        again = emit(models(data))
        if again != data:
            at = next(i for i, (a, b) in enumerate(zip(again, data)) if a != b) if len(again) == len(data) else -1
            raise AssertionError(f"the forger does not reproduce the {k} archive (first difference at {at})")
