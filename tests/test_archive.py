"""The ims-asm archive format (docs/format.md): writer, reader, names, records."""
import base64
import hashlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
import tarfile
import threading
import tracemalloc

import pytest

from asm.archive import (ArchiveReader, ArchiveWriter, CorruptHeader, CorruptMember, CorruptSource,
                         DigestMismatch, HostileMember, IncompleteArchive,
                         LinkTargetUnavailable, MessageChanged, NotAnArchive,
                         RecordReader, RecordWriter, names)
from asm.archive.values import FolderState, UidSet
from asm.archive.writer import uid_ranges
from tests.helpers import unavailable

AWKWARD_FOLDERS = [
    "INBOX", "INBOX/Sub folder", "Work/2023", "100% done", "a;b 'c' \"d\"",
    "caf\u00e9/\u65e5\u672c\u8a9e/\U0001F4E7", ".hidden", "..", "5.eml", "ims-asm.trailer",
    "tab\there", "x" * 120,
]
AWKWARD_USERS = ["joe", "j.o'e smith", "user/with/slashes", ".dot", "\u00fcser%40host", "7.eml"]
# what a store can hold: no level '.' or '..', no '/' in a user name (a reader refuses those
# as hostile, though the level encoding round-trips them)
STORE_USERS = [u for u in AWKWARD_USERS if "/" not in u]
STORE_FOLDERS = [f for f in AWKWARD_FOLDERS if f not in (".", "..")]


class Recorder:
    """A raw device that remembers the size of every write()."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.sizes = []

    def write(self, b):
        self.sizes.append(len(b))
        return self.buf.write(b)


class Stream(io.RawIOBase):
    """A non-seekable raw stream with short reads, like a pipe or a tape."""

    def __init__(self, data, seed=0, maxread=3000):
        self._f = io.BytesIO(data)
        self._rnd = random.Random(seed)
        self._max = maxread

    def readable(self):
        return True

    def seekable(self):
        return False

    def readinto(self, b):
        n = min(len(b), self._rnd.randint(1, self._max))
        data = self._f.read(n)
        b[:len(data)] = data
        return len(data)


def msg_bytes(i, size=None):
    body = f"From: a{i}@example.com\r\nSubject: message {i}\r\n\r\n".encode()
    size = size if size is not None else 200 + 997 * i
    rnd = random.Random(i)
    return body + bytes(rnd.getrandbits(8) for _ in range(max(0, size - len(body))))


def build(tmp_path, users=("joe",), folders=("INBOX",), per_folder=3, bf=20, raw=None,
          links=True, sizes=None):
    """Write an archive; returns (bytes, expected {name: (member fields, bytes)}, trailer)."""
    raw = raw if raw is not None else io.BytesIO()
    w = ArchiveWriter(raw, bf)
    w.write_header({"driver": "classic", "scope": ["/primary"], "since": None,
                    "options": {"i": False}, "job": "test"})
    expect = {}
    n = 0
    first = None
    for user in users:
        w.add_user("primary", user, "user")
        for folder in folders:
            w.add_folder("primary", user, folder, uidvalidity=1234, uidnext=per_folder + 1,
                         subscribed=True, uids=range(1, per_folder + 1))
            for uid in range(1, per_folder + 1):
                n += 1
                data = msg_bytes(n, sizes[n % len(sizes)] if sizes else None)
                key = None
                if links and uid == 1:
                    key = ("dev", "shared")
                    if first is None:
                        first = data
                    else:
                        data = first        # a copy: written as a hard link to the first
                path = tmp_path / f"src{n}"
                path.write_bytes(data)
                name = w.add_message("primary", user, folder, uid=uid, flags={"\\Seen", "\\Flagged"},
                                     keywords=("$Label1", "Junk"), internaldate=1700000000.5 + n,
                                     stored=1700000100 + n, nlink=2, src_path=str(path),
                                     link_key=key)
                expect[name] = (user, folder, uid, data)
    trailer = w.close(errors=[{"mailbox": "primary/bob", "error": "locked"}])
    data = raw.getvalue() if isinstance(raw, io.BytesIO) else None
    return data, expect, trailer


def read_all(reader, on_error=None):
    """{name: bytes or exception} for every message/link member the reader yields."""
    got = {}
    for m in reader.members(on_error):
        if m.kind in ("message", "link"):
            try:
                with m.open() as f:
                    got[m.name] = b"".join(iter(lambda: f.read(4096), b""))
            except (DigestMismatch, IncompleteArchive, LinkTargetUnavailable) as e:
                got[m.name] = e
    return got


def need_gnu_tar():
    tar = shutil.which("tar") or ("/usr/bin/tar" if os.path.exists("/usr/bin/tar") else None)
    ok = False
    if tar:
        out = subprocess.run([tar, "--version"], capture_output=True, text=True).stdout
        ok = "GNU tar" in out
    if not ok:
        unavailable("GNU tar is not installed (apt-get install tar)")
    return tar


# ------------------------------------------------------------------ names

@pytest.mark.parametrize("level", AWKWARD_FOLDERS[2:] + AWKWARD_USERS + [
    "%", "%2F", "\x7f", "\udcff\udc80raw", " leading space", "trailing.", "ims-asm.header",
    "007.eml", "5.EML", "5.emlx"])
def test_level_round_trips_and_is_safe(level):
    for lv in level.split("/") if "/" not in level or level in AWKWARD_USERS else [level]:
        enc = names.encode_level(lv)
        assert names.decode_level(enc) == lv
        assert "/" not in enc and not enc.startswith(".")
        assert enc not in ("ims-asm.header", "ims-asm.trailer")
        assert not (enc.endswith(".eml") and enc[:-4].isdigit())
        assert not any(ord(c) < 0x20 or ord(c) == 0x7f for c in enc)


def test_encoding_keeps_readable_names():
    assert names.encode_level("Sent Items") == "Sent Items"
    assert names.encode_level("caf\u00e9;'\"") == "caf\u00e9;'\""
    assert names.encode_level("a/b") == "a%2Fb"
    assert names.encode_level("50%") == "50%25"
    assert names.encode_level(".x") == "%2Ex"
    assert names.encode_level("5.eml") == "5%2Eeml"
    assert names.folder_dir("primary", "joe", "INBOX") == "primary/joe/INBOX/"
    assert names.message_name("primary", "joe", "Work/2023", 9) == "primary/joe/Work/2023/9.eml"


@pytest.mark.parametrize("user", AWKWARD_USERS)
@pytest.mark.parametrize("folder", AWKWARD_FOLDERS)
def test_parse_inverts_message_name(user, folder):
    name = names.message_name("part 1", user, folder, 42)
    assert names.parse(name) == ("part 1", user, folder, 42)
    assert names.parse(names.folder_dir("part 1", user, folder)) == ("part 1", user, folder, None)
    assert names.parse(names.user_dir("part 1", user)) == ("part 1", user, None, None)
    assert ".." not in name.split("/") and not name.startswith("/")


def test_a_level_that_decodes_to_nul_is_refused():
    """No store name holds a NUL (format.md §3): %00 in an archive is damage, named by
    -t and imsverify as imsrestore names it (before: -t and imsverify exit 0, the restore
    17, "bad user ID", sending the administrator to the store)."""
    enc = names.encode_level("a\x00b")
    assert enc == "a%00b"
    with pytest.raises(ValueError, match="NUL"):
        names.decode_level(enc)


@pytest.mark.parametrize("bad", ["/abs/x/1.eml", "p/../x/", "p/.hidden/", "p/u/%zz/", "p//x/", "p/%00x/", "p/u/a%00/",
                                 "p/u/x.txt", "p/1.eml"])
def test_parse_refuses_names_never_written(bad):
    with pytest.raises(ValueError):
        names.parse(bad)


def test_empty_level_is_refused():
    with pytest.raises(ValueError):
        names.folder_dir("p", "u", "a//b")


def test_uid_ranges():
    assert uid_ranges([1, 2, 3, 5, 7, 8, 9, 12]) == "1:3,5,7:9,12"
    assert uid_ranges([]) == ""
    assert list(UidSet.parse("1:3,5,7:9,12")) == [1, 2, 3, 5, 7, 8, 9, 12]
    big = list(range(1, 100000, 2))
    assert list(UidSet.parse(uid_ranges(big))) == big
    for bad in ("3:1", "1,,2", "0", "5,3", "1:5,5", "4294967296", "01", "1:", "-1", "1 ", "9" * 5000):
        with pytest.raises(ValueError):
            UidSet.parse(bad)


def _reference_uid_set(text):
    """UidSet.parse as docs/format.md defines a UID set, range by range: (ranges merged
    as UidSet keeps them, or the ValueError's message)."""
    import re
    ranges, prev = [], 0
    for part in text.split(","):
        m = re.fullmatch(r"([1-9][0-9]{0,9})(?::([1-9][0-9]{0,9}))?", part)
        if not m:
            return "bad range"
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) else a
        if b < a:
            return "descending"
        if b > 2 ** 32 - 1:
            return "above"
        if a <= prev:
            return "ascending"
        if ranges and a == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], b)
        else:
            ranges.append((a, b))
        prev = b
    return ranges


def test_uid_set_parse_agrees_with_the_range_by_range_reading():
    # UidSet.parse checks a whole text at once (a state file or archive holds
    # thousands): the same sets and the same errors as reading it range by range
    rnd = random.Random(17)
    words = {"bad range": "bad range", "descending": "descending range", "above": "above",
             "ascending": "ascending order"}
    for _ in range(20000):
        k = rnd.random()
        if k < 0.3:
            text = "".join(rnd.choice("0123456789:,") for _ in range(rnd.randint(1, 12)))
        elif k < 0.9:
            parts, u = [], rnd.randint(0, 3)
            for _ in range(rnd.randint(1, 6)):
                a = u + rnd.randint(-1, 3)
                b = a + rnd.randint(-1, 3)
                parts.append(f"{a}" if rnd.random() < 0.5 else f"{a}:{b}")
                u = b + rnd.randint(0, 2)
            text = ",".join(parts)
        else:
            text = rnd.choice(["4294967295", "4294967296", "1:4294967295", "9999999999", "12345678901",
                               "1\n", "1, 2", "01", "1:2:3", "\u0661", "1:1", "1,2,3", "2:3,1", "5:5,6"])
        want = _reference_uid_set(text)
        if isinstance(want, str):
            with pytest.raises(ValueError, match=words[want]):
                UidSet.parse(text)
            continue
        got = UidSet.parse(text)
        assert got.ranges() == want, text
        assert len(got) == sum(b - a + 1 for a, b in want)
        assert str(got) == ",".join(str(a) if a == b else f"{a}:{b}" for a, b in want)
        assert UidSet.parse(str(got)) == got


def test_folder_state_gives_each_uid_one_state():
    # FolderState.from_obj refuses a UID in two states (checked on sorted starts and
    # ends): the same answer as comparing every pair of ranges
    rnd = random.Random(18)
    for _ in range(5000):
        folder = UidSet.of(rnd.sample(range(1, 40), rnd.randint(1, 30)))
        obj = {k: str(UidSet.of(u for u in folder if rnd.random() < 0.4) or UidSet.of([folder.max()]))
               for k in ["", "\\Seen", "\\Seen \\Flagged", "$Label1"][:rnd.randint(1, 4)]}
        sets = [set(UidSet.parse(v)) for v in obj.values()]
        twice = any(a & b for i, a in enumerate(sets) for b in sets[i + 1:])
        if twice:
            with pytest.raises(ValueError, match="two states"):
                FolderState.from_obj(obj, folder)
        else:
            state = FolderState.from_obj(obj, folder)
            assert len(state) == sum(len(s) for s in sets)


# ------------------------------------------------------------------ round trip

def test_round_trip_awkward_names_bytes_exact(tmp_path):
    data, expect, trailer = build(tmp_path, users=STORE_USERS, folders=STORE_FOLDERS,
                                  per_folder=2)
    r = ArchiveReader(io.BytesIO(data))
    assert r.header["format"] == "ims-asm" and r.header["version"] == 2
    assert r.header["driver"] == "classic" and r.header["job"] == "test"
    assert r.header["scope"] == ["/primary"] and "archive_id" in r.header
    seen_users, seen_folders, got = [], [], {}
    for m in r:
        if m.kind == "user":
            seen_users.append(m.user)
            assert m.partition == "primary" and m.group == "user"
        elif m.kind == "folder":
            seen_folders.append((m.user, m.folder))
            assert (m.uidvalidity, m.uidnext, m.subscribed, list(m.uids)) == (1234, 3, True, [1, 2])
        else:
            user, folder, uid, body = expect[m.name]
            assert (m.user, m.folder, m.uid) == (user, folder, uid)
            assert m.flags == frozenset({"\\Seen", "\\Flagged"})
            assert m.keywords == ("$Label1", "Junk")
            assert m.nlink == 2 and isinstance(m.internaldate, float)
            assert m.internaldate % 1 == 0.5 and m.stored == int(m.stored)
            assert m.sha256 == hashlib.sha256(body).hexdigest() and m.size == len(body)
            got[m.name] = m.open().read()
            assert m.kind == ("link" if got and uid == 1 and len(got) > 1 else "message")
    assert seen_users == STORE_USERS
    assert seen_folders == [(u, f) for u in STORE_USERS for f in STORE_FOLDERS]
    assert got == {k: v[3] for k, v in expect.items()}
    assert r.trailer == trailer and r.complete and r.verified
    assert trailer["counts"] == {"users": len(STORE_USERS),
                                 "folders": len(STORE_USERS) * len(STORE_FOLDERS),
                                 "messages": len(expect) - (len(STORE_USERS) * len(STORE_FOLDERS) - 1),
                                 "links": len(STORE_USERS) * len(STORE_FOLDERS) - 1,
                                 "bytes": trailer["counts"]["bytes"]}
    assert trailer["errors"] == [{"mailbox": "primary/bob", "error": "locked"}]


def _raw_members(data):
    """[(name, pax records as bytes, ustar block, records dict)] read with tarfile's
    offsets, independently of our reader."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for ti in t.getmembers():
            x = data[ti.offset:ti.offset + 512]
            assert x[156:157] == b"x"
            n = int(x[124:136].strip(b" \0"), 8)
            out.append((ti.name, data[ti.offset + 512:ti.offset + 512 + n],
                        data[ti.offset_data - 512:ti.offset_data], ti.pax_headers))
    return out


def test_record_digests_and_trailer_digest_are_as_specified(tmp_path):
    """docs/format.md, version 2: each member's last record is SHA-256(records before it +
    ustar block); the trailer's digest is SHA-256 of every member digest, a line each, from
    the header on."""
    data, expect, trailer = build(tmp_path, folders=("INBOX", "Work/2023"))
    members = _raw_members(data)
    key = b" SCHILY.xattr.user.imsasm.digest="
    lines = b""
    for name, recs, block, pax_headers in members:
        at = recs.rindex(key)
        at = recs.rindex(b"\n", 0, at) + 1 if b"\n" in recs[:at] else 0
        d = pax_headers["SCHILY.xattr.user.imsasm.digest"]
        assert recs.endswith(b"=" + d.encode() + b"\n")
        assert hashlib.sha256(recs[:at] + block).hexdigest() == d, name
        if name != "ims-asm.trailer":
            lines += d.encode() + b"\n"
    assert [m[0] for m in members][0] == "ims-asm.header" and members[-1][0] == "ims-asm.trailer"
    assert trailer["digest"] == hashlib.sha256(lines).hexdigest()
    for name, recs, block, pax_headers in (members[0], members[-1]):
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            body = t.extractfile(name).read()
        assert pax_headers["SCHILY.xattr.user.imsasm.sha256"] == hashlib.sha256(body).hexdigest()
    assert members[0][3]["SCHILY.xattr.user.imsasm.version"] == "2"
    assert trailer["counts"]["bytes"] == sum(
        len(b) for n, (_, _, uid, b) in expect.items() if not (uid == 1 and n != next(iter(expect))))


def test_seekable_index_and_link_target(tmp_path):
    data, expect, _ = build(tmp_path, folders=("INBOX", "Work"))
    r = ArchiveReader(io.BytesIO(data))
    assert r.seekable
    idx = r.index()
    links = [m for m in idx if m.kind == "link"]
    assert len(links) == 1 and links[0].linkname == next(iter(expect))
    for m in idx:
        if m.kind in ("message", "link"):
            assert r.read_member_at(m).read() == expect[m.name][3]
            assert m.open().read() == expect[m.name][3]
    assert r.trailer is not None
    # a link read during iteration re-reads its target and then iteration goes on
    assert read_all(r) == {k: v[3] for k, v in expect.items()}


def test_unread_members_are_skipped(tmp_path):
    data, expect, _ = build(tmp_path, per_folder=5)
    for raw in (io.BytesIO(data), Stream(data, seed=3)):
        r = ArchiveReader(raw)
        names_seen = [m.name for m in r if m.kind in ("message", "link")]
        assert names_seen == list(expect) and r.verified


def test_pipe_reading_with_writer_thread(tmp_path):
    _, expect, _ = build(tmp_path, per_folder=4, folders=("INBOX", "Other"))
    rfd, wfd = os.pipe()

    def produce():
        with os.fdopen(wfd, "wb", buffering=0) as f:
            build(tmp_path, per_folder=4, folders=("INBOX", "Other"), raw=f)

    t = threading.Thread(target=produce)
    t.start()
    with os.fdopen(rfd, "rb", buffering=0) as f:
        r = ArchiveReader(f)
        assert not r.seekable
        got = read_all(r)
    t.join()
    link = [n for n, v in got.items() if isinstance(v, LinkTargetUnavailable)]
    assert len(link) == 1
    assert {n: v for n, v in got.items() if n not in link} == \
        {n: v[3] for n, v in expect.items() if n not in link}
    assert r.complete and r.verified


def test_stream_member_is_only_valid_while_current(tmp_path):
    data, expect, _ = build(tmp_path)
    r = ArchiveReader(Stream(data))
    it = iter(r)
    m = next(m for m in it if m.kind == "message")
    f = m.open()
    next(it)
    with pytest.raises(Exception, match="no longer current"):
        f.read()


# ------------------------------------------------------------------ compatibility

def test_gnu_tar_lists_and_extracts(tmp_path):
    tar = need_gnu_tar()
    src = tmp_path / "src"
    src.mkdir()
    folders = ("INBOX", "INBOX/Sub folder", "caf\u00e9/\u65e5\u672c", "100% done", "5.eml", "x" * 120)
    _, expect, _ = build(src, users=("joe", "\u00fcser one"), folders=folders, per_folder=2)
    arc = tmp_path / "a.tar"
    with open(arc, "wb") as f:
        build(src, users=("joe", "\u00fcser one"), folders=folders, per_folder=2, raw=f)
    out = subprocess.run([tar, "-tvf", str(arc)], capture_output=True, check=True)
    assert out.stderr == b"", out.stderr[:300]   # no warning per record: plain `tar tvf` is clean
    listed = out.stdout.decode("utf-8").splitlines()
    assert any(line.startswith("h") and " link to " in line for line in listed)
    plain = subprocess.run([tar, "-tf", str(arc)],
                           capture_output=True, check=True).stdout.decode("utf-8").splitlines()
    assert plain[0] == "ims-asm.header" and plain[-1] == "ims-asm.trailer"
    assert [n for n in plain if n.endswith(".eml")] == list(expect)
    dest = tmp_path / "x"
    dest.mkdir()
    x = subprocess.run([tar, "-xf", str(arc), "-C", str(dest)], check=True, capture_output=True)
    assert x.stderr == b""
    for name, (_, _, _, body) in expect.items():
        assert (dest / name).read_bytes() == body
        assert os.stat(dest / name).st_mode & 0o777 == 0o600
    inodes = {}
    for name in expect:
        inodes.setdefault(os.stat(dest / name).st_ino, []).append(name)
    assert sorted(len(v) for v in inodes.values())[-1] == 2 * len(folders)
    hdr = json.loads((dest / "ims-asm.header").read_text())
    assert hdr["format"] == "ims-asm"
    assert json.loads((dest / "ims-asm.trailer").read_text())["complete"] is True


def test_gnu_tar_archive_reads_the_same_with_our_reader(tmp_path):
    """Blocking factors on both sides need not match: the reader reads bytes."""
    data, expect, _ = build(tmp_path, bf=126)
    assert read_all(ArchiveReader(io.BytesIO(data), blocking_factor=1)) == \
        {n: v[3] for n, v in expect.items()}


def test_python_tarfile_reads_it(tmp_path):
    data, expect, _ = build(tmp_path, folders=("INBOX", "caf\u00e9 %", "x" * 150))
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        members = t.getmembers()
        assert members[0].name == "ims-asm.header" and members[-1].name == "ims-asm.trailer"
        files = {m.name: m for m in members if m.name.endswith(".eml")}
        assert list(files) == list(expect)
        for name, m in files.items():
            body = expect[name][3]
            assert m.pax_headers["SCHILY.xattr.user.imsasm.sha256"] == hashlib.sha256(body).hexdigest()
            assert m.mtime == pytest.approx(m.mtime) and m.uid == 0 and m.uname == ""
            if m.islnk():
                assert t.extractfile(m).read() == body
            else:
                assert m.isreg() and m.mode == 0o600 and t.extractfile(m).read() == body
        folder = next(m for m in members if m.name == "primary/joe/INBOX")
        assert folder.isdir() and folder.pax_headers["SCHILY.xattr.user.imsasm.uids"] == "1:3"


# ------------------------------------------------------------------ records

@pytest.mark.parametrize("bf", [1, 20, 126])
def test_every_device_write_is_one_whole_record(tmp_path, bf):
    rec = Recorder()
    build(tmp_path, bf=bf, raw=rec, per_folder=9, sizes=[0, 100, 511, 512, 513, 10240, 300000])
    assert rec.sizes and set(rec.sizes) == {512 * bf}
    data = rec.buf.getvalue()
    assert len(data) % (512 * bf) == 0 and data.rstrip(b"\0").endswith(b"}\n")
    got = read_all(ArchiveReader(io.BytesIO(data), bf))
    assert len(got) == 9 and not any(isinstance(v, Exception) for v in got.values())


def test_record_writer_pads_last_record_and_tracks_offset():
    rec = Recorder()
    w = RecordWriter(rec, 2)
    w.write(b"a" * 700)
    assert rec.sizes == [] and w.offset == 700
    w.write(b"b" * 1000)
    assert rec.sizes == [1024] and w.offset == 1700
    w.close()
    assert rec.sizes == [1024, 1024]
    assert rec.buf.getvalue() == b"a" * 700 + b"b" * 1000 + bytes(348)


def test_record_reader_short_reads_and_seek():
    data = bytes(range(256)) * 400
    rr = RecordReader(Stream(data, maxread=97), 3)
    out = []
    rnd = random.Random(1)
    while True:
        chunk = rr.read(rnd.choice([1, 100, 512, 1536, 5000]))
        if not chunk:
            break
        out.append(chunk)
    assert b"".join(out) == data and rr.tell() == len(data)
    rr = RecordReader(io.BytesIO(data), 3)
    rr.seek(70000)
    assert rr.read(10) == data[70000:70010] and rr.tell() == 70010
    rr.seek(5)
    assert rr.read(3) == data[5:8]
    rr.seek(len(data) + 5000)
    assert rr.read(1) == b"" and rr.tell() == len(data)


# ------------------------------------------------------------------ damage

def message_ends(data):
    """{name: offset where its data ends} from our own reader on intact data."""
    r = ArchiveReader(io.BytesIO(data))
    return {m.name: m.offset + m.size for m in r.index() if m.kind == "message"}


@pytest.mark.parametrize("seekable", [True, False])
def test_truncated_archive_is_incomplete_and_keeps_what_came_before(tmp_path, seekable):
    data, expect, _ = build(tmp_path, folders=("INBOX", "Work"), per_folder=3, links=False,
                            sizes=[10, 600, 12000, 700])
    ends = message_ends(data)
    header_end = ArchiveReader(io.BytesIO(data))._first_offset
    cuts = sorted(set(range(0, len(data), 331)) | {e for e in ends.values()}
                  | {e + 1 for e in ends.values()} | {header_end, header_end - 1})
    trailer_end = data.rindex(b"}") + 2
    for cut in cuts:
        part = data[:cut]
        raw = io.BytesIO(part) if seekable else Stream(part, seed=cut)
        if cut < header_end:      # the header member itself is cut
            with pytest.raises((NotAnArchive, IncompleteArchive)):
                list(ArchiveReader(raw))
            continue
        r = ArchiveReader(raw)
        got = {}
        if cut >= trailer_end:
            got = read_all(r)
            assert r.complete
        else:
            with pytest.raises(IncompleteArchive, match="archive is incomplete: ended after"):
                for m in r:
                    if m.kind != "message":
                        continue
                    try:
                        got[m.name] = m.open().read()
                    except IncompleteArchive:
                        pass
            assert not r.complete
        for name, end in ends.items():
            if end <= cut:
                assert got[name] == expect[name][3], (cut, name)
            else:
                assert name not in got, (cut, name)


def test_flipped_data_byte_is_a_digest_mismatch(tmp_path):
    data, expect, _ = build(tmp_path, links=False)
    ends = message_ends(data)
    victim = list(expect)[1]
    bad = bytearray(data)
    bad[ends[victim] - 7] ^= 0x20
    for raw in (io.BytesIO(bytes(bad)), Stream(bytes(bad))):
        got = read_all(ArchiveReader(raw))
        assert isinstance(got[victim], DigestMismatch)
        assert victim in str(got[victim]) and "damaged" in str(got[victim])
        assert {n: v for n, v in got.items() if n != victim} == \
            {n: v[3] for n, v in expect.items() if n != victim}


def _header_offsets(data):
    r = ArchiveReader(io.BytesIO(data))
    return {m.name: m for m in r.index()}


@pytest.mark.parametrize("where", ["ustar name", "ustar size", "pax header", "pax record"])
@pytest.mark.parametrize("seekable", [True, False])
def test_flipped_header_byte_is_corrupt_member_and_iteration_goes_on(tmp_path, where, seekable):
    data, expect, _ = build(tmp_path, links=False, per_folder=4)
    members = _header_offsets(data)
    victim = list(expect)[1]
    m = members[victim]
    bad = bytearray(data)
    ustar_at = m.offset - 512
    if where == "ustar name":
        bad[ustar_at + 20] ^= 0x01
    elif where == "ustar size":
        bad[ustar_at + 130] = ord("9")
    elif where == "pax header":
        bad[m.header_offset + 3] ^= 0x40
    else:       # a pax record length digit: the records no longer parse
        bad[m.header_offset + 512] = ord("9")
    raw = io.BytesIO(bytes(bad)) if seekable else Stream(bytes(bad))
    r = ArchiveReader(raw)
    errors = []
    got = read_all(r, on_error=errors.append)
    assert len(errors) == 1 and isinstance(errors[0], CorruptMember)
    assert "byte" in str(errors[0])
    assert victim not in got
    assert got == {n: v[3] for n, v in expect.items() if n != victim}
    assert r.complete and r.verified is False
    # without on_error the error is raised and next() goes on
    raw = io.BytesIO(bytes(bad)) if seekable else Stream(bytes(bad))
    it = iter(ArchiveReader(raw))
    seen, raised = [], 0
    while True:
        try:
            seen.append(next(it).name)
        except StopIteration:
            break
        except CorruptMember:
            raised += 1
    assert raised == 1 and set(expect) - set(seen) == {victim}


V1_HEADER = {"format": "ims-asm", "version": 1, "archive_id": "0b0c5f6e-8d3a-4d69-9f53-2f1a4c8e7b10",
             "created": 1700000000.5}


def _tar_with_header(*members, fmt=tarfile.PAX_FORMAT, header=V1_HEADER):
    """A version 1 archive as another tar writer might make it (tarfile, no trailer): user
    p/u, folder INBOX (UIDs 1:9), message 1, ``members``, message 9."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        hdr = json.dumps(header).encode()
        ti = tarfile.TarInfo("ims-asm.header")
        ti.size = len(hdr)
        t.addfile(ti, io.BytesIO(hdr))
        for name, recs in (("p/u/", {"IMSASM.kind": "user"}),
                           ("p/u/INBOX/", {"IMSASM.kind": "folder", "IMSASM.uidvalidity": "7",
                                           "IMSASM.uidnext": "10", "IMSASM.uids": "1:9"})):
            ti = tarfile.TarInfo(name)
            ti.type = tarfile.DIRTYPE
            ti.pax_headers = recs
            t.addfile(ti)
        good = b"hello"
        ti = tarfile.TarInfo("p/u/INBOX/1.eml")
        ti.size = len(good)
        ti.pax_headers = {"IMSASM.kind": "message", "IMSASM.uid": "1",
                          "IMSASM.sha256": hashlib.sha256(good).hexdigest()}
        t.addfile(ti, io.BytesIO(good))
        for ti, body in members:
            t.addfile(ti, io.BytesIO(body) if body is not None else None)
        ti = tarfile.TarInfo("p/u/INBOX/9.eml")
        ti.size = len(good)
        ti.pax_headers = {"IMSASM.kind": "message", "IMSASM.uid": "9",
                          "IMSASM.sha256": hashlib.sha256(good).hexdigest()}
        t.addfile(ti, io.BytesIO(good))
    return buf.getvalue()


def _ti(name, type=tarfile.REGTYPE, size=0, linkname="", **recs):
    ti = tarfile.TarInfo(name)
    ti.type = type
    ti.size = size
    ti.linkname = linkname
    ti.pax_headers = {"IMSASM.kind": "message", "IMSASM.uid": "2",
                      "IMSASM.sha256": "0" * 64, **recs}
    return ti


def _refused(data):
    """(errors, names of the message members read) of every reading of data."""
    out = []
    for raw in (io.BytesIO(data), Stream(data)):
        r = ArchiveReader(raw)
        errors, seen = [], []
        with pytest.raises(IncompleteArchive, match="without a trailer"):
            for m in r.members(on_error=errors.append):
                if m.kind in ("message", "link"):
                    seen.append(m.name)
        assert not r.complete
        out.append((errors, seen))
    assert out[0][1] == out[1][1] and list(map(str, out[0][0])) == list(map(str, out[1][0]))
    return out[0]


@pytest.mark.parametrize("member,why", [
    ((_ti("../x/2.eml", size=3), b"abc"), "'..'"),
    ((_ti("p/u/../../etc/2.eml", size=3), b"abc"), "'..'"),
    ((_ti("/abs/u/INBOX/2.eml", size=3), b"abc"), "absolute"),
    ((_ti("p/u/INBOX/2.eml", type=tarfile.SYMTYPE, linkname="/etc/passwd"), None), "symbolic"),
    ((_ti("p/u/INBOX/2.eml", type=tarfile.LNKTYPE, linkname="/etc/shadow"), None), "absolute"),
    ((_ti("p/u/INBOX/2.eml", type=tarfile.LNKTYPE, linkname="etc/shadow"), None), "not a message of"),
    ((_ti("p/u/INBOX/2.eml", type=tarfile.CHRTYPE), None), "device"),
    ((_ti("p/u/INBOX/2.eml", type=tarfile.BLKTYPE), None), "device"),
    ((_ti("p/u/INBOX/2.eml", type=tarfile.FIFOTYPE), None), "FIFO"),
    ((_ti("p/%2E%2E/INBOX/2.eml", size=3), b"abc"), "'..'"),
    ((_ti("%2E/u/INBOX/2.eml", size=3), b"abc"), "'.'"),
    ((_ti("p/u%2F..%2Fx/INBOX/2.eml", size=3), b"abc"), "'/'"),
])
def test_hostile_members_are_refused(member, why):
    errors, seen = _refused(_tar_with_header(member))
    assert len(errors) == 1 and isinstance(errors[0], HostileMember), errors
    assert why in str(errors[0])
    assert seen == ["p/u/INBOX/1.eml", "p/u/INBOX/9.eml"]    # the others still pass


@pytest.mark.parametrize("member,why", [
    ((_ti("p/u/INBOX/notes.txt", size=3), b"abc"), "layout"),
    ((_ti("p/u/INBOX/2.eml", size=3, **{"IMSASM.kind": "folder"}), b"abc"), "kind"),
    ((_ti("p/u/INBOX/2.eml", size=3, **{"IMSASM.uid": "3"}), b"abc"), "does not match"),
    ((_ti("p/u/INBOX/2.eml", size=3, **{"IMSASM.flags": "\\Seen \\Bogus"}), b"abc"), "system flag"),
    ((_ti("p/u/INBOX/2.eml", size=3, **{"IMSASM.keywords": "a\x01b"}), b"abc"), "keyword"),
    ((_ti("p/u/INBOX/2.eml", size=3, **{"IMSASM.internaldate": "9" * 5000}), b"abc"), "time"),
    ((_ti("p/u/INBOX/2.eml", size=3, **{"IMSASM.stored": "999999999999"}), b"abc"), "range"),
    ((_ti("p/u/INBOX/2.eml", size=3, **{"IMSASM.nlink": "0"}), b"abc"), "range"),
    ((_ti("p/u/INBOX/2.eml", size=3, **{"IMSASM.sha256": "x"}), b"abc"), "64"),
    ((_ti("p/u/INBOX/12.eml", size=3, **{"IMSASM.uid": "12"}), b"abc"), "not in its folder's UID list"),
    ((_ti("p/u/INBOX/1.eml", size=5, **{"IMSASM.uid": "1"}), b"hello"), "appears twice"),
    ((_ti("p/u/INBOX/0001.eml", size=5, **{"IMSASM.uid": "1"}), b"hello"), "layout"),
    ((_ti("p/u/Other/2.eml", size=3), b"abc"), "do not follow their folder"),
    ((_ti("p/u/INBOX/4294967296.eml", size=3, **{"IMSASM.uid": "4294967296"}), b"abc"), "out of range"),
    ((_ti("p/u/INBOX/2.eml", type=tarfile.LNKTYPE, linkname="p/u/INBOX/1.eml"), None), "SHA-256"),
    ((_ti("p/u/INBOX/2.eml", type=tarfile.LNKTYPE, linkname="p/u/INBOX/7.eml"), None), "not an earlier"),
    ((_ti("p/u/INBOX/ims-asm.trailer", size=3), b"abc"), "layout"),
])
def test_damaged_members_are_corrupt_not_hostile(member, why):
    """Anything wrong with a member that does not reach outside the store is damage:
    CorruptMember (exit 4), never HostileMember (exit 5)."""
    errors, seen = _refused(_tar_with_header(member))
    assert len(errors) == 1 and type(errors[0]) is CorruptMember, errors
    assert why in str(errors[0])
    assert seen == ["p/u/INBOX/1.eml", "p/u/INBOX/9.eml"]


def test_link_is_accepted_only_with_its_targets_digest():
    good = hashlib.sha256(b"hello").hexdigest()
    ti = _ti("p/u/INBOX/2.eml", type=tarfile.LNKTYPE, linkname="p/u/INBOX/1.eml", **{"IMSASM.sha256": good})
    errors, seen = _refused(_tar_with_header((ti, None)))
    assert errors == [] and seen == ["p/u/INBOX/1.eml", "p/u/INBOX/2.eml", "p/u/INBOX/9.eml"]


def test_hostile_link_with_data_is_refused():
    ti = _ti("p/u/INBOX/2.eml", type=tarfile.LNKTYPE, linkname="p/u/INBOX/1.eml", size=3)
    errors, _ = _refused(_tar_with_header((ti, b"abc")))
    assert len(errors) == 1 and "hard link claims 3 bytes" in str(errors[0])


@pytest.mark.parametrize("change,why", [
    ({"archive_id": "../../../../tmp/x"}, "archive_id"),
    ({"archive_id": 5}, "archive_id"),
    ({"created": 1e300}, "created"),
    ({"created": "yesterday"}, "created"),
    ({"created": True}, "created"),
    ({"since": -1e20}, "since"),
    ({"scope": "/"}, "scope"),
    ({"scope": [1]}, "scope"),
    ({"options": []}, "options"),
    ({"blocking_factor": 0}, "blocking_factor"),
    ({"blocking_factor": 2 ** 70}, "blocking_factor"),
    ({"host": ["x"]}, "host"),
    ({"version": "1"}, "version"),
    ({"version": 0}, "version"),
])
def test_every_header_field_is_checked_before_use(change, why):
    data = _tar_with_header(header={**V1_HEADER, **change})
    with pytest.raises(CorruptHeader, match="header is damaged: .*" + why) as ei:
        ArchiveReader(io.BytesIO(data))
    assert ei.value.status == 4


@pytest.mark.parametrize("data,why", [
    (b"", "empty"),
    (os.urandom(30000), "tar header"),
    (bytes(10240), "empty tar"),
    (b"x" * 100, "shorter"),
])
def test_not_an_archive(data, why):
    with pytest.raises(NotAnArchive, match="not an ims-asm archive: .*" + why):
        ArchiveReader(io.BytesIO(data))


def test_plain_tar_is_not_an_archive(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        ti = tarfile.TarInfo("hello.txt")
        ti.size = 2
        t.addfile(ti, io.BytesIO(b"hi"))
    with pytest.raises(NotAnArchive, match="first member is 'hello.txt'"):
        ArchiveReader(io.BytesIO(buf.getvalue()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        ti = tarfile.TarInfo("ims-asm.header")
        ti.size = 2
        t.addfile(ti, io.BytesIO(b"{}"))
    with pytest.raises(NotAnArchive, match="format ims-asm"):
        ArchiveReader(io.BytesIO(buf.getvalue()))


def test_newer_version_is_refused():
    data = _tar_with_header().replace(b'"version": 1', b'"version": 7')
    with pytest.raises(NotAnArchive, match="version 7"):
        ArchiveReader(io.BytesIO(data))


# ------------------------------------------------------------------ writer behaviour

@pytest.mark.parametrize("seed", range(8))
def test_a_link_key_written_before_links_only_the_same_bytes(tmp_path, seed):
    """Property: a link key names one inode, and an inode number is reused once its file
    is gone (expunged during the backup), so the key alone proves nothing.  Messages under
    a few keys whose bytes change now and then, given as a path, a file (compressed
    messages; bigger than one buffer too) or bytes read ahead (-j): each member reads back
    as its own bytes, and a member is a link exactly when the key's last full member holds
    the same bytes."""
    from asm.archive.writer import SMALL, read_small
    rnd = random.Random(seed)
    out = io.BytesIO()
    w = ArchiveWriter(out)
    w.write_header({"driver": "classic"})
    w.add_user("primary", "joe", "user")
    n = rnd.randint(10, 30)
    w.add_folder("primary", "joe", "INBOX", uidvalidity=1, uidnext=n + 1, subscribed=True,
                 uids=range(1, n + 1))
    pool = [msg_bytes(seed * 100 + i, rnd.choice([0, 1, 700, 5000])) for i in range(4)]
    if seed % 4 == 0:
        pool.append(msg_bytes(seed, SMALL + 3))        # hashed in passes, never in one buffer
    holds, last, want = {}, {}, {}
    for uid in range(1, n + 1):
        key = rnd.choice([None, "a", "b", "c"])
        if key is None or key not in holds or rnd.random() < 0.4:
            holds[key] = rnd.choice(pool)              # another file under that number
        data = holds[key]
        path = tmp_path / f"m{uid}"
        path.write_bytes(data)
        how = rnd.choice(["path", "file", "ahead"])
        kw = {"src_path": str(path)} if how == "path" else {"src_file": io.BytesIO(data)} \
            if how == "file" else {"src_path": str(path), "src_data": read_small(str(path))}
        name = w.add_message("primary", "joe", "INBOX", uid=uid, flags=(), keywords=(),
                             internaldate=1.7e9, stored=1.7e9, link_key=key, **kw)
        link = key is not None and last.get(key) == data
        if not link and key is not None:
            last[key] = data
        want[name] = ("link" if link else "message", data)
    w.close()
    r = ArchiveReader(io.BytesIO(out.getvalue()))
    got = {}
    for m in r:
        if m.kind in ("message", "link"):
            with m.open() as f:
                got[m.name] = (m.kind, f.read())
    assert got == want
    assert r.complete


def test_large_message_streams_with_bounded_memory(tmp_path):
    size = 50 * 1024 * 1024 + 123
    src = tmp_path / "big.eml"
    with open(src, "wb") as f:
        f.write(b"Subject: big\r\n\r\n")
        for off in range(0, size, 7 * 1024 * 1024):
            f.seek(off)
            f.write(os.urandom(4096))
        f.truncate(size)
    h = hashlib.sha256()
    with open(src, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    arc = tmp_path / "big.tar"
    tracemalloc.start()
    try:
        with open(arc, "wb") as f:
            w = ArchiveWriter(f)
            w.write_header({})
            w.add_folder("p", "u", "INBOX", uidvalidity=1, uidnext=2, subscribed=False, uids=[1])
            w.add_message("p", "u", "INBOX", uid=1, flags=(), keywords=(), internaldate=1,
                          stored=2, nlink=1, src_path=str(src))
            w.close()
        _, peak_write = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with open(arc, "rb") as f:
            r = ArchiveReader(f)
            for m in r:
                if m.kind == "message":
                    h2 = hashlib.sha256()
                    n = 0
                    with m.open() as s:
                        for chunk in iter(lambda: s.read(1 << 20), b""):
                            h2.update(chunk)
                            n += len(chunk)
        _, peak_read = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == size and h2.hexdigest() == h.hexdigest() == m.sha256
    assert r.verified
    assert peak_write < 8 * 1024 * 1024, peak_write
    assert peak_read < 8 * 1024 * 1024, peak_read


class ChangingFile(io.RawIOBase):
    """A seekable source whose bytes change after the first pass."""

    def __init__(self, size):
        self.size = size
        self.pos = 0
        self.passes = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, pos, whence=0):
        self.pos = pos
        self.passes += 1
        return pos

    def readinto(self, b):
        n = min(len(b), self.size - self.pos)
        b[:n] = (b"B" if self.passes else b"A") * n
        self.pos += n
        return n


def test_big_message_changing_between_passes(tmp_path):
    buf = io.BytesIO()
    w = ArchiveWriter(buf)
    w.write_header({})
    src = tmp_path / "m"
    src.write_bytes(b"ok")
    w.add_folder("p", "u", "INBOX", uidvalidity=1, uidnext=4, subscribed=True, uids=[1, 2, 3])
    w.add_message("p", "u", "INBOX", uid=1, flags=(), keywords=(), internaldate=1, stored=1,
                  nlink=1, src_path=str(src))
    with pytest.raises(CorruptSource) as ei:
        w.add_message("p", "u", "INBOX", uid=2, flags=(), keywords=(), internaldate=1,
                      stored=1, nlink=1, src_file=ChangingFile(3 << 20))
    assert isinstance(ei.value, MessageChanged) and "fail its digest" in str(ei.value)
    w.add_message("p", "u", "INBOX", uid=3, flags=(), keywords=(), internaldate=1, stored=1,
                  nlink=1, src_path=str(src))
    w.close(errors=[("p/u/INBOX", str(ei.value))])
    got = read_all(ArchiveReader(io.BytesIO(buf.getvalue())))
    assert got["p/u/INBOX/1.eml"] == b"ok" and got["p/u/INBOX/3.eml"] == b"ok"
    assert isinstance(got["p/u/INBOX/2.eml"], DigestMismatch)


def test_vanished_message_writes_nothing(tmp_path):
    buf = io.BytesIO()
    w = ArchiveWriter(buf)
    w.write_header({})
    w.add_folder("p", "u", "INBOX", uidvalidity=1, uidnext=4, subscribed=True, uids=[1, 2, 3])
    with pytest.raises(FileNotFoundError):
        w.add_message("p", "u", "INBOX", uid=1, flags=(), keywords=(), internaldate=1,
                      stored=1, nlink=1, src_path=str(tmp_path / "gone"))
    trailer = w.close()
    assert trailer["counts"]["messages"] == 0
    r = ArchiveReader(io.BytesIO(buf.getvalue()))
    assert [m.kind for m in r] == ["folder"] and r.verified


def test_fractional_and_negative_times(tmp_path):
    buf = io.BytesIO()
    w = ArchiveWriter(buf)
    w.write_header({})
    src = tmp_path / "m"
    src.write_bytes(b"x")
    w.add_folder("p", "u", "INBOX", uidvalidity=1, uidnext=4, subscribed=True, uids=[1, 2, 3])
    for uid, t in ((1, 1700000000.123456), (2, -86400), (3, 0)):
        w.add_message("p", "u", "INBOX", uid=uid, flags=(), keywords=(), internaldate=t,
                      stored=t, nlink=1, src_path=str(src))
    w.close()
    got = {m.uid: m.internaldate for m in ArchiveReader(io.BytesIO(buf.getvalue())) if m.kind == "message"}
    assert got == {1: 1700000000.123456, 2: -86400, 3: 0}
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as t:
        assert t.getmember("p/u/INBOX/1.eml").mtime == pytest.approx(1700000000.123456)


def test_writer_refuses_misuse(tmp_path):
    w = ArchiveWriter(io.BytesIO())
    with pytest.raises(Exception, match="write_header"):
        w.add_user("p", "u", "g")
    w.write_header({})
    with pytest.raises(Exception, match="add_folder"):
        w.add_message("p", "u", "INBOX", uid=1, flags=(), keywords=(),
                      internaldate=1, stored=1, nlink=1, src_file=io.BytesIO(b"x"))
    w.add_folder("p", "u", "INBOX", uidvalidity=1, uidnext=4, subscribed=True, uids=[1, 2, 3])
    with pytest.raises(ValueError):
        w.add_message("p", "u", "INBOX", uid=1, flags=("two words",), keywords=(),
                      internaldate=1, stored=1, nlink=1, src_file=io.BytesIO(b"x"))
    with pytest.raises(Exception, match="UID list"):
        w.add_message("p", "u", "INBOX", uid=9, flags=(), keywords=(),
                      internaldate=1, stored=1, nlink=1, src_file=io.BytesIO(b"x"))
    w.add_user("p", "v", "g")
    with pytest.raises(Exception, match="add_folder"):
        w.add_message("p", "u", "INBOX", uid=1, flags=(), keywords=(),
                      internaldate=1, stored=1, nlink=1, src_file=io.BytesIO(b"x"))
    w.close()
    with pytest.raises(Exception, match="closed"):
        w.add_user("p", "u", "g")


@pytest.mark.parametrize("seekable", [True, False])
def test_any_byte_of_the_first_blocks_changed_is_damage_not_another_file(tmp_path, seekable):
    """The header member is ims-asm's even when its first block is damaged: exit 4, not 8."""
    data, _, _ = build(tmp_path, per_folder=1, links=False)
    rnd = random.Random(5)
    for at in sorted(rnd.sample(range(3 * 512), 60)) + [0, 40, 148, 155, 509, 511]:
        bad = bytearray(data)
        bad[at] ^= 1 << rnd.randrange(8)
        raw = io.BytesIO(bytes(bad)) if seekable else Stream(bytes(bad), seed=at)
        with pytest.raises((CorruptHeader, IncompleteArchive)) as ei:
            ArchiveReader(raw)
        assert ei.value.status == 4, (at, ei.value)


def test_quick_member_headers_are_the_general_ones_byte_for_byte():
    """pax.member_plain (the writer's quick path for plain names) builds exactly the bytes
    and digest pax.member does, for random names, sizes, times, types and link names,
    including the values it hands back to member() (huge sizes, odd times)."""
    from asm.archive import pax
    rnd = random.Random(1717)
    alphabet = "abcXYZ019._-=+/"
    for _ in range(6000):
        name = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 100)))
        link = rnd.choice(["", "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 100)))])
        size = rnd.choice([0, 1, rnd.randint(0, 1 << 20), rnd.randint(0, 1 << 40), pax.MAX_OCTAL - 1,
                           pax.MAX_OCTAL, 1 << 40 << 10])
        mtime = rnd.choice([0, rnd.randint(0, 1 << 33), pax.MAX_OCTAL - 1, pax.MAX_OCTAL, -5,
                            1700000000.25, 1.5e-3,
                            # file times with nanoseconds (Dovecot's deliveries), odd floats
                            rnd.randint(0, 1 << 33) + rnd.randint(1, 10 ** 9 - 1) / 1e9,
                            rnd.uniform(0, pax.MAX_OCTAL), float(rnd.randint(0, 1 << 33)),
                            pax.MAX_OCTAL - 0.5, float(pax.MAX_OCTAL), 1e-4, 9.99e-5, 1e-7, -0.5,
                            0.0, 5e15 + 0.5])
        typeflag = rnd.choice([pax.REGTYPE, pax.LNKTYPE, pax.DIRTYPE])
        mode = rnd.choice([pax.MODE_0600, pax.MODE_0644, pax.MODE_0700, pax.mode_field(0o640)])
        records = pax.record(pax.key("IMSASM.uid"), b"%d" % rnd.randint(1, 1 << 32))
        want = pax.member(name, typeflag, mode, size, mtime, records, link)
        got = pax.member_plain(name.encode("ascii"), typeflag, mode, size, mtime, records,
                               link.encode("ascii"))
        assert got == want, (name, link, size, mtime, typeflag)


def test_archive_ids_are_version_4_uuids():
    """The writer's archive ids (made from os.urandom, without the uuid module) are
    random version-4 UUIDs in their usual text form."""
    import uuid
    from asm.archive.writer import uuid4
    seen = set()
    for _ in range(2000):
        s = uuid4()
        u = uuid.UUID(s)
        assert str(u) == s and u.version == 4 and u.variant == uuid.RFC_4122
        seen.add(s)
    assert len(seen) == 2000


def test_quick_pax_record_parser_reads_what_the_careful_one_reads():
    """pax.parse_records (split at newlines, each piece checked to be one whole record)
    gives exactly what the careful record-by-record parser gives, result or HeaderError
    with its message, for well-formed records (values holding newlines, '=', NULs,
    UTF-8 and invalid UTF-8, the IMSASM wire prefix) and for every kind of damage."""
    from asm.archive import pax

    def rec(k, v):
        body = b" " + k + b"=" + v + b"\n"
        n = len(body) + len(str(len(body)))
        n = len(body) + len(str(n))
        return b"%d" % n + body

    def outcome(parse, data):
        try:
            return parse(data)
        except pax.HeaderError as exc:
            return ("error", str(exc))

    rnd = random.Random(4242)
    pieces = [b"a", b"=", b"\n", b" ", b"0", b"9", b"\x00", b"\xff", b"\xc3\xa9",
              b"SCHILY.xattr.user.imsasm.", b"IMSASM."]
    kinds = {"quick": 0, "careful": 0, "error": 0}
    for _ in range(20000):
        data = b"".join(rec(b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 4))) or b"k",
                            b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 6))))
                        for _ in range(rnd.randint(0, 6)))
        for _ in range(rnd.choice([0, 0, 1, 2, 3])):
            if data:
                at = rnd.randrange(len(data))
                op = rnd.random()
                if op < 0.4:
                    data = data[:at] + bytes([rnd.randrange(256)]) + data[at + 1:]
                elif op < 0.7:
                    data = data[:at] + data[at + 1:]
                else:
                    data = data[:at] + rnd.choice(pieces) + data[at:]
        want = outcome(pax._parse_records, data)
        assert outcome(pax.parse_records, data) == want, data
        if want[0] == "error":
            kinds["error"] += 1
        elif any("\n" in v for v in want[0].values()):
            kinds["careful"] += 1
        else:
            kinds["quick"] += 1
    # every road was taken many times
    assert min(kinds.values()) > 1000, kinds


@pytest.mark.parametrize("shape", ["many records", "many bytes"])
def test_a_members_extended_headers_are_bounded_before_they_are_parsed(tmp_path, monkeypatch, shape):
    """A forged member whose extended headers hold millions of tiny records (each a dict
    entry once parsed), or more bytes together than one header may: damage (exit 4),
    found before the records are kept.  (A helper's 80 MiB archive of two such headers
    took `imsrestore -t` to 1,164 MiB and 39 s; now 151 MiB and 3 s.)"""
    from asm.archive import pax, spec
    from tests.archive_fuzz import layout
    data, _expect, _trailer = build(tmp_path)
    parts, _end = layout(data)
    if shape == "many records":
        blobs = [b"".join(pax.record(b" k%x=" % i, b"") for i in range(pax.MAX_RECORDS + 1))]
    else:
        monkeypatch.setattr(spec, "MAX_PAX", 6000)
        blobs = [pax.record(b" comment=", b"x" * 3500)] * 2
    forged = b"".join(pax.xheader(len(b)) + b + bytes(-len(b) % 512) for b in blobs)
    bad = data[:parts[1].start] + forged + data[parts[1].start:]
    errors = []
    got = read_all(ArchiveReader(io.BytesIO(bad)), on_error=errors.append)
    assert errors and all(isinstance(e, CorruptMember) and e.status == 4 for e in errors), errors
    assert "pax records" in str(errors[0]) or "too large" in str(errors[0]), errors[0]
    assert len(got) >= 1                 # the members after it are read on


def _pop3_archive(tmp_path, **kw):
    w_raw = io.BytesIO()
    w = ArchiveWriter(w_raw)
    w.write_header({"driver": "maildir", "scope": ["/primary"]})
    w.add_user("primary", "joe", "user")
    w.add_folder("primary", "joe", "INBOX", uidvalidity=7, uidnext=3, subscribed=True, uids=[1, 2])
    path = tmp_path / "m1"
    path.write_bytes(msg_bytes(1))
    w.add_message("primary", "joe", "INBOX", uid=1, flags=(), keywords=(), internaldate=1700000000,
                  stored=1700000000, src_path=str(path), **kw)
    w.add_message("primary", "joe", "INBOX", uid=2, flags=(), keywords=(), internaldate=1700000000,
                  stored=1700000000, src_path=str(path))
    w.close()
    return w_raw.getvalue()


def test_what_pop3_clients_know_a_message_by_is_carried_and_checked(tmp_path):
    """IMSASM.basename, IMSASM.pop3_uidl, IMSASM.pop3_order: written when given, read back,
    absent otherwise; a value out of its range (with every digest forged right) is
    damage of that member alone; what a writer is given out of range it leaves out."""
    from asm.archive import spec
    from tests.archive_fuzz import emit, models
    base = "1700000000.M5P77.mx.example,S=411,W=425"
    data = _pop3_archive(tmp_path, basename=base, pop3_uidl="migr:1-a", pop3_order=2)
    got = {m.uid: (m.basename, m.pop3_uidl, m.pop3_order)
           for m in ArchiveReader(io.BytesIO(data)).members() if m.kind == "message"}
    assert got == {1: (base, "migr:1-a", 2), 2: (None, None, None)}
    for key, bad in ((spec.BASENAME, b"../escape"), (spec.BASENAME, b".hidden"), (spec.BASENAME, b"a/b"),
                     (spec.BASENAME, b"a:2,S"), (spec.BASENAME, b"x" * 256), (spec.POP3_UIDL, b"a b"),
                     (spec.POP3_UIDL, b""), (spec.POP3_ORDER, b"0"), (spec.POP3_ORDER, b"4294967296"),
                     (spec.POP3_ORDER, b"01")):
        ms = models(data)
        victim = next(m for m in ms if m.name.endswith(b"/1.eml"))
        victim.set(key, bad)
        errors = []
        uids = [m.uid for m in ArchiveReader(io.BytesIO(emit(ms))).members(on_error=errors.append)
                if m.kind == "message"]
        assert uids == [2] and len(errors) == 1 and type(errors[0]) is CorruptMember, (key, bad, errors)
        assert key in str(errors[0])
    data = _pop3_archive(tmp_path, basename="../x", pop3_uidl="a b", pop3_order=0)
    m = next(m for m in ArchiveReader(io.BytesIO(data)).members() if m.kind == "message")
    assert (m.basename, m.pop3_uidl, m.pop3_order) == (None, None, None)


# -- the writer applies the reader's checks ----------------------------------------------

_REFUSED_MESSAGES = [
    # (what the store gave, the reader's reason the writer names)
    (dict(internaldate=253402343999.0), "IMSASM.internaldate"),      # 10000-01-01 UTC
    (dict(internaldate=253402300799.5), "IMSASM.internaldate"),
    (dict(internaldate=-62135596800.5), "IMSASM.internaldate"),
    (dict(internaldate=float("nan")), "IMSASM.internaldate"),
    (dict(stored=1700000000123), "IMSASM.stored"),                   # a name's milliseconds
    (dict(keywords=("Junk", "Junk")), "lists a keyword twice"),
    (dict(keywords=("k" * 1001,)), "which is not a keyword"),
    (dict(keywords=("\\Seen",)), "which is not a keyword"),
    (dict(keywords=("a\x01b",)), "which is not a keyword"),
    (dict(flags={"\\Recent"}), "not an IMAP system flag"),
    (dict(nlink=0), "IMSASM.nlink"),
]


@pytest.mark.parametrize("bad, why", _REFUSED_MESSAGES)
def test_the_writer_never_writes_a_message_member_the_reader_refuses(tmp_path, bad, why):
    """imsbackup exited 0 with members its own reader refused (IMSASM.stored
    1700000000123, a keyword listed twice, an INTERNALDATE of 10000-01-01): those messages
    could be restored from no backup.  The writer checks every value with the reader's
    functions: the member is not written, UnarchivableValue names it, and the archive
    stays whole and restores every other message."""
    from asm.archive.errors import UnarchivableValue
    src = tmp_path / "m"
    src.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    raw = io.BytesIO()
    w = ArchiveWriter(raw)
    w.write_header({"created": 1700000000})
    w.add_user("primary", "joe", "")
    w.add_folder("primary", "joe", "INBOX", uidvalidity=7, uidnext=3, subscribed=True, uids=[1, 2])
    kw = dict(uid=1, flags={"\\Seen"}, keywords=("$Label1",), internaldate=1700000000.25,
              stored=1700000000, nlink=1, src_path=str(src))
    kw.update(bad)
    with pytest.raises(UnarchivableValue) as ei:
        w.add_message("primary", "joe", "INBOX", **kw)
    assert why in ei.value.why and "primary/joe/INBOX/1.eml" in str(ei.value)
    assert ei.value.status == 1
    w.add_message("primary", "joe", "INBOX", uid=2, flags=(), keywords=(), internaldate=1e9,
                  stored=1e9, src_path=str(src))
    w.close()
    raw.seek(0)
    errors = []
    r = ArchiveReader(raw)
    got = read_all(r, errors.append)
    assert errors == [] and r.complete
    assert got == {"primary/joe/INBOX/2.eml": src.read_bytes()}


@pytest.mark.parametrize("bad, why", [
    (dict(uidvalidity=0), "IMSASM.uidvalidity 0 is out of range"),
    (dict(uidvalidity=2 ** 32), "IMSASM.uidvalidity 4294967296 is out of range"),
    (dict(uidnext=2 ** 32 + 1), "IMSASM.uidnext"),
    (dict(uids=[0, 1, 2]), "IMSASM.uids has a bad range '0:2'"),
    (dict(uids=[1, 2 ** 32]), "IMSASM.uids holds a UID above"),
    (dict(state={"\\Seen \\Seen": [1]}), "lists a flag twice"),
    (dict(state={"\\Seen": [5]}), "names UIDs that IMSASM.uids does not list"),
])
def test_the_writer_never_writes_a_folder_member_the_reader_refuses(bad, why):
    """A folder member the reader refuses takes every message of the folder with it
    (a dovecot-uidlist of V0: 0 of 3 restored): the writer refuses it before a byte."""
    from asm.archive.errors import UnarchivableValue
    raw = io.BytesIO()
    w = ArchiveWriter(raw)
    w.write_header({"created": 1700000000})
    w.add_user("primary", "joe", "")
    before = w.offset
    kw = dict(uidvalidity=7, uidnext=3, subscribed=True, uids=[1, 2])
    kw.update(bad)
    with pytest.raises(UnarchivableValue) as ei:
        w.add_folder("primary", "joe", "INBOX", **kw)
    assert why in ei.value.why and "primary/joe/INBOX/" in str(ei.value)
    assert w.offset == before and w.counts["folders"] == 0
    w.close()
    raw.seek(0)
    errors = []
    r = ArchiveReader(raw)
    assert [m.kind for m in r.members(errors.append)] == ["user"]
    assert errors == [] and r.complete


def test_a_keyword_that_is_not_utf8_is_archived_as_its_bytes(tmp_path):
    """A keyword holding a Latin-1 byte (dovecot-keywords "0 bad\\xffkw") crashed the
    whole backup (UnicodeEncodeError, exit 70, no archive for any user).  It is written
    as its bytes, as names are, in the message's record and in an incremental's state,
    and read back as the same bytes."""
    kw = "bad\udcffkw"
    src = tmp_path / "m"
    src.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    raw = io.BytesIO()
    w = ArchiveWriter(raw)
    w.write_header({"created": 1700000000})
    w.add_user("primary", "joe", "")
    w.add_folder("primary", "joe", "INBOX", uidvalidity=7, uidnext=3, subscribed=True, uids=[1, 2],
                 state={f"\\Seen {kw}": [2]})
    w.add_message("primary", "joe", "INBOX", uid=1, flags={"\\Seen"}, keywords=(kw, "$Label1"),
                  internaldate=1e9, stored=1e9, src_path=str(src))
    w.close()
    assert b"imsasm.keywords=bad\xffkw $Label1\n" in raw.getvalue()
    raw.seek(0)
    errors = []
    members = list(ArchiveReader(raw).members(errors.append))
    assert errors == []
    folder, message = members[1], members[2]
    assert message.keywords == (kw, "$Label1")
    assert folder.state.get(2) == (frozenset({"\\Seen"}), (kw,))

def _mailbox_guid_archive(guids):
    """An archive of joe's folders {name: mailbox GUID or None}, one message each."""
    w_raw = io.BytesIO()
    w = ArchiveWriter(w_raw)
    w.write_header({"driver": "maildir", "scope": ["/primary"]})
    w.add_user("primary", "joe", "user")
    for folder, guid in guids.items():
        w.add_folder("primary", "joe", folder, uidvalidity=7, uidnext=2, subscribed=True, uids=[1],
                     mailbox_guid=guid)
        w.add_message("primary", "joe", folder, uid=1, flags=(), keywords=(), internaldate=1700000000,
                      stored=1700000000, src_file=io.BytesIO(msg_bytes(1)))
    w.close()
    return w_raw.getvalue()


def test_a_folders_mailbox_guid_is_carried_and_checked():
    """IMSASM.mailbox_guid (a Dovecot folder's mailbox GUID, which dsync replication knows
    it by): written when the store has one, read back; an archive without it (older
    ones, the classic store) reads as before; a value that is not 32 lowercase hex
    digits (every digest forged right) is damage of that folder member, whose messages
    are then not read; a writer refuses to write one."""
    from asm.archive import spec
    from tests.archive_fuzz import emit, models
    g = "0123456789abcdef0123456789abcdef"
    data = _mailbox_guid_archive({"INBOX": g, "Work": None})
    assert f"{spec.wire(spec.MAILBOX_GUID)}={g}\n".encode() in data
    got = {m.folder: m.mailbox_guid for m in ArchiveReader(io.BytesIO(data)).members() if m.kind == "folder"}
    assert got == {"INBOX": g, "Work": None}
    for bad in (g.upper().encode(), g[:-1].encode(), (g + "0").encode(), b"", b"G" + g[1:].encode(),
                b"0123456789abcdef-0123456789abcde"):
        ms = models(data)
        victim = next(m for m in ms if m.name.endswith(b"/INBOX/"))
        victim.set(spec.MAILBOX_GUID, bad)
        errors = []
        read = [(m.kind, m.folder) for m in ArchiveReader(io.BytesIO(emit(ms))).members(on_error=errors.append)
                if m.kind != "user"]
        assert read == [("folder", "Work"), ("message", "Work")], (bad, read)
        assert errors and all(type(e) is CorruptMember for e in errors), (bad, errors)
        assert spec.MAILBOX_GUID in str(errors[0]) and "INBOX" in str(errors[0]), errors[0]
    for bad in (g.upper(), g[:-1], "x" * 32, "G" + g):
        w = ArchiveWriter(io.BytesIO())
        w.write_header({})
        w.add_user("primary", "joe", "user")
        with pytest.raises(ValueError, match="mailbox_guid"):
            w.add_folder("primary", "joe", "INBOX", uidvalidity=7, uidnext=1, subscribed=True, uids=[],
                         mailbox_guid=bad)


def _acl_archive(acls):
    """An archive of joe's folders {name: ACL text or None}, one message each."""
    w_raw = io.BytesIO()
    w = ArchiveWriter(w_raw)
    w.write_header({"driver": "maildir", "scope": ["/primary"]})
    w.add_user("primary", "joe", "user")
    for folder, acl in acls.items():
        w.add_folder("primary", "joe", folder, uidvalidity=7, uidnext=2, subscribed=True, uids=[1], acl=acl)
        w.add_message("primary", "joe", folder, uid=1, flags=(), keywords=(), internaldate=1700000000,
                      stored=1700000000, src_file=io.BytesIO(msg_bytes(1)))
    w.close()
    return w_raw.getvalue()


# what Dovecot's acl plugin writes (and an administrator may add) in a dovecot-acl file
GOOD_ACLS = ["", "anyone l\nuser=bob lr\n", "-user=carol w\n", "owner lrwstipekxa\n",
             "authenticated lr\ngroup=staff lrs :seen-only\ngroup-override=ops a\n",
             "# shared with the team\n\nuser=renée@example.com lrwi\n", "user=bob lr"]
BAD_ACLS = [b"anyone\n", b"user=bob lz\n", b"nobody lr\n", b"user= lr\n", b"user=bob  lr\n",
            b"user=bob lr\r\n", b"user=b\x00b lr\n", b"user=bob\tlr\n", b"user=b\xffb lr\n",
            b"user=\"bob\" lr\n", b" anyone l\n", b"anyone l\n\x1b[2J\n", b"user=bob lr :\n",
            b"anyone l\n" * 1001, b"user=" + b"b" * 256 + b" l\n",
            b"# " + b"x" * 65536 + b"\n"]


def test_a_folders_acl_is_carried_and_checked():
    """IMSASM.acl (a Dovecot folder's dovecot-acl text, "" for a folder without one):
    written when the store tells it, read back byte for byte; absent (older archives,
    the classic and dbox stores) it reads as None; a value that is not an ACL file --
    garbage, control characters, bytes that are not UTF-8, a line that is no
    "identifier rights", too long -- with every digest forged right, is damage of that
    folder member (exit 4), whose messages are then not read; the writer refuses one;
    random mutations of a good ACL are either still ACLs or refused so."""
    from asm.archive import spec, values
    from tests.archive_fuzz import emit, models
    data = _acl_archive({"INBOX": GOOD_ACLS[1], "Work": None, "Empty": ""})
    assert f"{spec.wire(spec.ACL)}=anyone l\nuser=bob lr\n\n".encode() in data
    got = {m.folder: m.acl for m in ArchiveReader(io.BytesIO(data)).members() if m.kind == "folder"}
    assert got == {"INBOX": GOOD_ACLS[1], "Work": None, "Empty": ""}
    # GNU tar-compatible still: tarfile reads the value back too
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        inbox = next(m for m in t.getmembers() if m.name.endswith("/INBOX"))
        assert inbox.pax_headers[spec.wire(spec.ACL)] == GOOD_ACLS[1]

    def forged(value: bytes):
        ms = models(data)
        victim = next(m for m in ms if m.name.endswith(b"/INBOX/"))
        victim.set(spec.ACL, value)
        errors = []
        read = [(m.kind, m.folder, m.acl) for m in
                ArchiveReader(io.BytesIO(emit(ms))).members(on_error=errors.append) if m.kind != "user"]
        return read, errors

    for good in GOOD_ACLS:
        read, errors = forged(good.encode())
        assert errors == [] and read[0] == ("folder", "INBOX", good), (good, read, errors)
        assert values.acl(good) == good
    for bad in BAD_ACLS:
        read, errors = forged(bad)
        assert [(k, f) for k, f, _a in read] == [("folder", "Work"), ("message", "Work"),
                                                 ("folder", "Empty"), ("message", "Empty")], (bad[:40], read)
        assert errors and all(type(e) is CorruptMember for e in errors), (bad[:40], errors)
        assert spec.ACL in str(errors[0]) and "INBOX" in str(errors[0]), errors[0]
        assert "\n" not in str(errors[0]) and "\x1b" not in str(errors[0]), errors[0]
        w = ArchiveWriter(io.BytesIO())
        w.write_header({})
        w.add_user("primary", "joe", "user")
        with pytest.raises(ValueError, match="acl"):
            w.add_folder("primary", "joe", "INBOX", uidvalidity=7, uidnext=1, subscribed=True, uids=[],
                         acl=bad.decode("utf-8", "surrogateescape"))
    # a little fuzz: bytes of a good ACL changed, inserted or deleted at random; the
    # reader takes exactly the values the reader's own function takes, the rest is damage
    rnd = random.Random(4314)
    base = b"anyone l\nuser=bob lrs\n-user=carol w\ngroup=staff lr :named\n"
    for _ in range(150):
        v = bytearray(base)
        for _k in range(rnd.randint(1, 3)):
            at = rnd.randrange(len(v) + 1)
            op = rnd.random()
            b = rnd.choice([rnd.randrange(256), ord(" "), ord("\n"), ord("="), ord(":"), ord("-")])
            if op < 0.4 and at < len(v):
                v[at] = b
            elif op < 0.7:
                v.insert(at, b)
            elif at < len(v):
                del v[at]
        text = bytes(v).decode("utf-8", "surrogateescape")
        try:
            ok = values.acl(text) == text
        except ValueError:
            ok = False
        read, errors = forged(bytes(v))
        if ok:
            assert errors == [] and read[0] == ("folder", "INBOX", text), (bytes(v), errors)
        else:
            assert errors and all(type(e) is CorruptMember for e in errors) and read[0][1] == "Work", \
                (bytes(v), read)
            assert spec.ACL in str(errors[0]), errors[0]


@pytest.mark.parametrize("seed", range(3))
def test_an_incrementals_state_ids_read_back_uid_by_uid(seed):
    """IMSASM.state_ids: what is under each UID an incremental lists without carrying it
    (imsbackup --base ARCHIVE reads it), in ascending UID order whatever the order of
    the state's flag groups; none written when no identity is known; a text that is
    not base64 of 4 bytes per listed UID is refused as a value out of form."""
    from asm.archive import values
    rnd = random.Random(seed)
    uids = sorted(rnd.sample(range(1, 200), 40))
    listed = rnd.sample(uids, 25)
    state: dict = {}
    for u in listed:
        state.setdefault(rnd.choice(["", "\\Seen", "\\Flagged $Work"]), []).append(u)
    ids = {u: rnd.choice([0, 1, 2 ** 32 - 1, rnd.getrandbits(32)]) for u in listed}
    for given in (ids, {u: 0 for u in listed}):
        raw = io.BytesIO()
        w = ArchiveWriter(raw)
        w.write_header({"created": 1700000000})
        w.add_user("primary", "joe", "")
        w.add_folder("primary", "joe", "INBOX", uidvalidity=7, uidnext=201, subscribed=True, uids=uids,
                     state=state, state_ids=given)
        w.close()
        raw.seek(0)
        errors = []
        folder = list(ArchiveReader(raw).members(errors.append))[1]
        assert errors == []
        if not any(given.values()):
            assert folder.state_ids is None
            continue
        got = struct.unpack(f">{len(listed)}I", folder.state_ids)
        assert dict(zip(folder.state.uids(), got)) == ids
        text = base64.b64encode(folder.state_ids).decode()
        assert values.state_ids(text, folder.state) == folder.state_ids
        for bad in (text[:-4], text + "AAAA", "*" + text[1:]):
            with pytest.raises(ValueError, match="IMSASM.state_ids"):
                values.state_ids(bad, folder.state)


def test_a_folder_state_is_checked_as_the_reader_checks_it_without_a_round_trip(monkeypatch):
    """An incremental's folder member (IMSASM.state, IMSASM.state_ids), written from UID
    sets or lists, whole or packed identities: refused (UnarchivableValue, the reader's
    words) exactly when the reader would refuse the record, else read back as given;
    and the writer never writes a UID set out to parse it back (issue 17: that round
    trip was a quarter of an incremental's folder members)."""
    from asm.archive import values
    from asm.archive.errors import UnarchivableValue
    rnd = random.Random(17)
    words = ["", "\\Seen", "\\Seen \\Flagged", "$Work", "\\Answered $Later", "\\Seen \\Seen", "\\Bogus"]
    real_parse = UidSet.parse
    refused = written = 0
    for n in range(600):
        folder = UidSet.of(rnd.sample(range(1, 60), rnd.randint(1, 40)))
        state: dict = {}
        for u in folder:
            if rnd.random() < 0.7:
                state.setdefault(rnd.choice(words[:5] if rnd.random() < 0.9 else words), []).append(u)
        if rnd.random() < 0.1 and state:                       # a UID the folder does not list
            next(iter(state.values())).append(rnd.choice([0, 60, 61, 2 ** 32]))
        if rnd.random() < 0.1 and len(state) > 1:              # one UID in two states
            a, b = list(state)[:2]
            state[b].append(state[a][0])
        state = {k: (UidSet.of(v) if rnd.random() < 0.5 else v) for k, v in state.items()}
        obj = {k: uid_ranges(v) for k, v in sorted(state.items())}
        try:
            want = FolderState.from_obj(obj, folder)
            why = None
        except ValueError as exc:
            want, why = None, str(exc)
        ids = {u: rnd.choice([0, rnd.getrandbits(32)]) for s in state.values() for u in s}
        packed = None
        if want is not None:
            packed = struct.pack(f">{len(want)}I", *[ids[u] for u in want.uids()])
        raw = io.BytesIO()
        w = ArchiveWriter(raw)
        w.write_header({"created": 1700000000})
        w.add_user("primary", "joe", "")
        if why is None:              # (a refusal may parse, for the reader's own words)
            monkeypatch.setattr(UidSet, "parse", classmethod(lambda cls, *a, **k: pytest.fail("parsed back")))
        try:
            given = packed if packed is not None and n % 2 else ids
            if why is not None:
                with pytest.raises(UnarchivableValue) as got:
                    w.add_folder("primary", "joe", "INBOX", uidvalidity=7, uidnext=100, subscribed=False,
                                 uids=folder, state=state, state_ids=given)
                assert got.value.why == why
                refused += 1
                continue
            w.add_folder("primary", "joe", "INBOX", uidvalidity=7, uidnext=100, subscribed=False,
                         uids=folder, state=state, state_ids=given)
        finally:
            monkeypatch.setattr(UidSet, "parse", real_parse)
        w.close()
        raw.seek(0)
        errors = []
        member = list(ArchiveReader(raw).members(errors.append))[1]
        assert errors == []
        assert [(f, k, list(u)) for f, k, u in member.state.entries] == \
            [(f, k, list(u)) for f, k, u in want.entries]
        if not any(ids.values()):
            assert member.state_ids is None
        else:
            assert dict(zip(member.state.uids(), struct.unpack(f">{len(want)}I", member.state_ids))) == \
                {u: ids[u] for u in want.uids()}
            assert values.state_ids(base64.b64encode(member.state_ids).decode(), member.state) == member.state_ids
        written += 1
    assert refused > 50 and written > 300


def test_a_state_the_reader_checked_against_the_folder_is_written_without_a_second_check(monkeypatch):
    """A folder an incremental writes from its base's record (values.CheckedState: the
    state file's flags, taken by FolderState.from_obj as naming every UID of the folder
    once) is written without checking that state again, the same member byte for byte
    as the same state checked in full; against another UidSet object it is checked as
    any state is (refused when the reader would refuse it).  And the state record's
    JSON is json.dumps' own for any flags and keywords."""
    from asm.archive import values, writer as writer_mod
    from asm.archive.errors import UnarchivableValue
    rnd = random.Random(21)
    keys = ["", "\\Seen", "\\Seen \\Flagged", "$Work", "caf\u00e9", "a\"b", "back\\\\slash", "\udce9x", "\x7f"]
    for _ in range(300):
        obj = {rnd.choice(keys): rnd.choice(keys) for _ in range(rnd.randint(1, 5))}
        assert writer_mod._state_json(obj) == json.dumps(obj, ensure_ascii=False, separators=(",", ":"))

    def member(uids, state):
        raw = io.BytesIO()
        w = ArchiveWriter(raw)
        w.write_header({"created": 1700000000})
        w.add_user("primary", "joe", "")
        w.add_folder("primary", "joe", "INBOX", uidvalidity=7, uidnext=100, subscribed=True, uids=uids,
                     state=state, state_ids=b"\0\0\0\1" * len(uids))
        return raw.getvalue()

    for _ in range(100):
        folder = UidSet.of(rnd.sample(range(1, 90), rnd.randint(1, 60)))
        flags: dict = {}
        for u in folder:
            flags.setdefault(rnd.choice(["\\Seen", "", "\\Answered $Later"]), []).append(u)
        text = {k: str(UidSet.of(v)) for k, v in sorted(flags.items(), key=lambda kv: rnd.random())}
        checked = FolderState.from_obj(text, folder)
        given = values.CheckedState(((k, e[2]) for k, e in zip(text, checked.entries)), folder)
        want = member(folder, dict(given))
        no = lambda *a, **k: pytest.fail("checked again")  # noqa: E731
        monkeypatch.setattr(values, "state_words", no)
        monkeypatch.setattr(UidSet, "issubset", no)
        monkeypatch.setattr(values, "ranges_disjoint", no)
        monkeypatch.setattr(values, "check_uid_set", lambda u, *a: u if u is folder else no())
        try:
            assert member(folder, given) == want
        finally:
            monkeypatch.undo()
        # another UidSet, equal or not: checked in full
        other = UidSet.parse(str(folder))
        assert member(other, given) == want
        smaller = UidSet.of(list(folder)[1:])
        if len(folder) > 1:
            with pytest.raises(UnarchivableValue, match="does not list"):
                member(smaller, given)


def test_a_users_subscriptions_to_names_that_are_no_folder_are_carried_and_checked():
    """IMSASM.subscriptions (a user member's subscribed names that are no folder: what
    Dovecot keeps after an IMAP DELETE or RENAME): written when given, read back name for
    name (Unicode and bytes that are not UTF-8 too); [] for none; absent (older archives,
    a backup of some folders) it reads as None; a value that is no JSON array of folder names -- an empty name, '..', a control
    character, a leading '/', a name twice, too many -- with every digest forged right,
    is damage of that user member (exit 4); the writer refuses one.  A JSON array on one
    record line: 1,000 names fit (a pax header holds at most 4,096 lines)."""
    from asm.archive import spec
    from tests.archive_fuzz import emit, models
    names = ["Gone", "Old/Sub", "Ürün 2024", "bad\udcffname", "with space & 'quote' %s;"]
    w_raw = io.BytesIO()
    w = ArchiveWriter(w_raw)
    w.write_header({"driver": "maildir", "scope": ["/primary"]})
    w.add_user("primary", "joe", "user", names)
    w.add_folder("primary", "joe", "INBOX", uidvalidity=7, uidnext=1, subscribed=True, uids=[])
    w.add_user("primary", "ann", "user")
    w.add_folder("primary", "ann", "INBOX", uidvalidity=7, uidnext=1, subscribed=True, uids=[])
    w.add_user("primary", "bea", "user", [])
    w.close()
    data = w_raw.getvalue()
    got = {m.user: m.subscriptions for m in ArchiveReader(io.BytesIO(data)).members() if m.kind == "user"}
    assert got == {"joe": names, "ann": None, "bea": []}      # None: not recorded; []: none
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        joe = next(m for m in t.getmembers() if m.name == "primary/joe")
        assert json.loads(joe.pax_headers[spec.wire(spec.SUBSCRIPTIONS)]) == names
    # many names are one record line (a pax header holds at most 4,096 lines)
    many = [f"Old/{i}" for i in range(spec.SUBSCRIPTIONS_MAX)]
    w = ArchiveWriter(io.BytesIO())
    w.write_header({})
    w.add_user("primary", "joe", "user", many)

    def enc(names):
        return json.dumps(names).encode()
    bad_values = [b"", b"Gone", b"{}", b'["Gone", 7]', enc([""]), enc(["Old/../x"]), enc(["/Gone"]),
                  enc(["Gone/"]), enc(["a//b"]), enc(["Go\x1bne"]), enc(["x\nY"]), enc(["Gone", "Gone"]),
                  enc([f"n{i}" for i in range(spec.SUBSCRIPTIONS_MAX + 1)])]
    for bad in bad_values:
        ms = models(data)
        victim = next(m for m in ms if m.name == b"primary/joe/")
        victim.set(spec.SUBSCRIPTIONS, bad)
        errors = []
        read = [(m.kind, m.user, m.subscriptions) for m in
                ArchiveReader(io.BytesIO(emit(ms))).members(on_error=errors.append) if m.kind == "user"]
        assert errors and all(type(e) is CorruptMember for e in errors), (bad[:40], errors)
        assert spec.SUBSCRIPTIONS in str(errors[0]) and "\n" not in str(errors[0]) \
            and "\x1b" not in str(errors[0]), errors[0]
        assert ("user", "ann", None) in read, read
        try:
            listed = json.loads(bad)
        except ValueError:
            continue
        if isinstance(listed, list) and listed and all(isinstance(n, str) for n in listed):
            w = ArchiveWriter(io.BytesIO())
            w.write_header({})
            with pytest.raises(ValueError, match="subscriptions"):
                w.add_user("primary", "joe", "user", listed)
