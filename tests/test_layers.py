"""Stream layers (zstd, age): round trips on both drivers through files and pipes,
interop both ways with Debian's age and zstd commands (and gzip, xz, bzip2 by hand),
the C2SP age test vectors, seekable partial restores, damage and truncation at many
points, and the key handling a mail administrator relies on."""
from __future__ import annotations

import glob
import hashlib
import io
import os
import random
import subprocess
import zlib

import pytest

from asm.layers import age, open_read, sniff
from asm.layers.base import Source
from asm.layers.errors import IdentityNeeded, LayerDamaged, LayerUnsupported
from asm.layers.zstd import ZstdWriter
from asm.store import open_store
from asm.config import Config
from tests.helpers import build, make_home, require, run, state, verify_inprocess

TESTKIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "thirdparty", "age_testkit")


@pytest.fixture
def keys(tmp_path):
    """An identity file made by Debian's age-keygen (0600) and its recipient."""
    keygen = require("age-keygen", "the age command checks interop")
    path = tmp_path / "key.txt"
    subprocess.run([keygen, "-o", str(path)], check=True, capture_output=True)
    os.chmod(path, 0o600)
    rcpt = subprocess.run([keygen, "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    return str(path), rcpt


@pytest.fixture
def source(tmp_path, driver):
    home = tmp_path / "src"
    store = build(home, driver, users=8, messages=120)
    return home, store


def fresh(tmp_path, driver, name="dst"):
    home = tmp_path / name
    make_home(home, driver)
    return home, open_store(Config(str(home)))


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("layers", [["-z"], ["--compress", "zstd:1"], ["--encrypt"], ["-z", "--encrypt"]])
def test_round_trip_file_and_pipe(tmp_path, source, driver, keys, layers):
    """Every message back byte for byte with its UID, flags and folder, from a layered
    file (seekable) and from a pipe (one pass)."""
    home, store = source
    key, rcpt = keys
    args = [a for a in layers if a != "--encrypt"] + (["--recipient", rcpt] if "--encrypt" in layers else [])
    arch = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", arch, *args, "/", check=0)
    raw = arch.read_bytes()
    assert raw[:4] == b"\x28\xb5\x2f\xfd" if "--encrypt" not in layers else raw.startswith(b"age-encryption.org/v1\n")
    want = state(store)
    d1, s1 = fresh(tmp_path, driver, "d1")
    run(d1, "imsrestore", "--identity", key, "-f", arch, check=0)
    assert state(s1) == want
    d2, s2 = fresh(tmp_path, driver, "d2")
    with open(arch, "rb") as f:
        run(d2, "imsrestore", "--identity", key, "-f", "-", stdin=f, check=0)
    assert state(s2) == want


def test_standard_tools_read_what_imsbackup_writes(tmp_path, source, keys):
    """age -d -i key archive | zstd -d | tar -t: the members tar lists are the
    archive's, and the bytes are those of the same backup without layers."""
    age_cmd, zstd_cmd, tar = require("age"), require("zstd"), require("tar")
    home, _ = source
    key, rcpt = keys
    arch = tmp_path / "a.ims.zst.age"
    run(home, "imsbackup", "-z", "--recipient", rcpt, "-f", arch, "/", check=0)
    p = subprocess.run(f"{age_cmd} -d -i {key} {arch} | {zstd_cmd} -d | {tar} -tf -", shell=True,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    listed = p.stdout.splitlines()
    plain = subprocess.run(f"{age_cmd} -d -i {key} {arch} | {zstd_cmd} -d", shell=True, capture_output=True).stdout
    with open(arch, "rb") as f:
        ours, names = open_read(f, age.read_identities(key))
        assert names == ["age", "zstd"] and ours.read() == plain
    from asm.archive.reader import ArchiveReader
    reader = ArchiveReader(io.BytesIO(plain))
    members = list(reader.members())
    assert reader.verified and listed[0] == "ims-asm.header" and listed[-1] == "ims-asm.trailer"
    assert len(listed) == len(members) + 2


@pytest.mark.parametrize("pipeline", ["zstd -T0 -19", "zstd", "age", "zstd|age", "gzip", "xz", "bzip2"])
def test_archives_layered_by_hand_restore(tmp_path, source, driver, keys, pipeline):
    """The other way round: a plain archive compressed/encrypted by the standard tools
    restores, from a file and from a pipe, the layers found by their magic bytes."""
    home, store = source
    key, rcpt = keys
    plain = tmp_path / "plain.ims"
    run(home, "imsbackup", "-f", plain, "/", check=0)
    cmds = []
    for step in pipeline.split("|"):
        tool, *opts = step.split()
        if tool == "age":
            cmds.append(f"{require('age')} -r {rcpt}")
        else:
            cmds.append(" ".join([require(tool), *opts, "-c"]))
    arch = tmp_path / "byhand"
    subprocess.run(f"cat {plain} | {' | '.join(cmds)} > {arch}", shell=True, check=True)
    want = state(store)
    d1, s1 = fresh(tmp_path, driver, "d1")
    run(d1, "imsrestore", "--identity", key, "-f", arch, check=0)
    assert state(s1) == want
    with open(arch, "rb") as f:
        got, names = open_read(f, age.read_identities(key))
        assert names == [s.split()[0].replace("bzip2", "bzip2") for s in reversed(pipeline.split("|"))]


@pytest.mark.parametrize("tool,trailer", [("gzip", 8), ("xz", 4), ("bzip2", 4)])
def test_archive_compressed_by_hand_missing_its_trailer_restores_every_message(tmp_path, source, driver,
                                                                               tool, trailer):
    """gzip, xz, bzip2 by hand, the copy missing only the compressor's own trailer (gzip's
    CRC and length, the end of xz's footer, bzip2's CRC): every byte of the archive is
    still in the stream (``gzip -dc | imsrestore -f -`` restores it all), so imsrestore
    of the file restores every message too, byte for byte at its UID (before: the last
    decoded 64 KiB were thrown away with the error, and the last messages were neither
    restored nor named: exit 4).  Its exit is 0, as for a zstd file whose seek table was
    cut (docs/offsite.md): the archive was read whole, to its verified trailer; the
    damage past it is imsverify's to report (exit 4, "after the archive's end")."""
    home, store = source
    plain = tmp_path / "plain.ims"
    run(home, "imsbackup", "-f", plain, "/", check=0)
    packed = subprocess.run([require(tool), "-c", str(plain)], check=True, capture_output=True).stdout
    arch = tmp_path / f"cut.{tool}"
    arch.write_bytes(packed[:-trailer])
    want = state(store)
    for dev in ("file", "pipe"):
        d, s = fresh(tmp_path, driver, f"d{dev}")
        p = run(d, "imsrestore", "-f", arch if dev == "file" else "-", text=True,
                stdin=open(arch, "rb") if dev == "pipe" else None)
        assert p.returncode == 0, p.stderr
        assert state(s) == want, dev
    p = run(home, "imsverify", "-v", "-f", arch, text=True)
    assert p.returncode == 4 and f"after the archive's end: {tool}: the stream is cut short" in p.stderr, \
        p.stderr


def test_partial_restore_from_layered_file_seeks(tmp_path, keys):
    """A partial restore from a compressed and encrypted file works through the index
    (age chunks, zstd seek table): one user's folder comes back, links to first
    copies held by other users are resolved by seeking (nothing left pending)."""
    home = tmp_path / "src"
    store = build(home, "classic", users=10, messages=200)
    key, rcpt = keys
    arch = tmp_path / "a.ims"
    run(home, "imsbackup", "-z", "--recipient", rcpt, "-f", arch, "/", check=0)
    with open(arch, "rb") as f:
        r, names = open_read(f, age.read_identities(key))
        assert names == ["age", "zstd"] and r.seekable()
    users = store.users("primary")
    want = {k: v for k, v in state(store).items() if k[0] == users[-1]}
    d, s = fresh(tmp_path, "classic")
    p = run(d, "imsrestore", "--identity", key, "-f", arch, f"/primary/user/{users[-1]}", check=0, text=True)
    assert "linked messages need" not in p.stderr
    assert state(s) == want
    # the same from a pipe: the single pass, links served from the spool
    d2, s2 = fresh(tmp_path, "classic", "d2")
    with open(arch, "rb") as f:
        p = run(d2, "imsrestore", "--identity", key, "-f", "-", f"/primary/user/{users[-1]}", stdin=f, check=0,
                text=True)
    assert "linked messages need" not in p.stderr
    assert state(s2) == want


# --------------------------------------------------------------------------- the layers alone

@pytest.mark.parametrize("seed", range(6))
def test_seekable_reads_equal_the_plaintext(tmp_path, keys, seed):
    """Random seeks and reads in zstd (our frames), age, and age over zstd return the
    plaintext, for sizes around chunk and frame boundaries."""
    key, rcpt = keys
    rnd = random.Random(seed)
    size = rnd.choice([0, 1, 65535, 65536, 65537, (1 << 20), (1 << 20) + 1, 3 * (1 << 20) + 12345])
    pt = bytes(rnd.getrandbits(8) for _ in range(min(size, 4096))) * (size // 4096 + 1)
    pt = pt[:size]
    for layers in (["zstd"], ["age"], ["age", "zstd"]):
        buf = io.BytesIO()
        from asm.layers.stack import LayeredWriter
        w = LayeredWriter(buf, 3 if "zstd" in layers else None,
                          [age.Recipient.parse(rcpt)] if "age" in layers else [], threads=rnd.choice([1, 2]),
                          record_size=512 * rnd.choice([1, 20, 64]))
        for i in range(0, len(pt), 70001):
            w.write(pt[i:i + 70001])
        w.close()
        buf.seek(0)
        r, names = open_read(buf, age.read_identities(key))
        assert names == layers and r.seekable()
        assert r.seek(0, 2) == size
        for _ in range(20):
            off = rnd.randrange(0, size + 1)
            n = rnd.randrange(0, 300000)
            r.seek(off)
            assert r.read(n) == pt[off:off + n]


def test_age_test_vectors():
    """The C2SP/CCTV age vectors: success, no match, header, HMAC and payload failures
    as the reference says, and exactly the plaintext it says may be released."""
    files = sorted(glob.glob(os.path.join(TESTKIT, "*")))
    files = [f for f in files if not f.endswith(".md")]
    assert len(files) >= 60
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        head, _, body = data.partition(b"\n\n")
        meta: dict = {}
        for ln in head.decode().splitlines():
            k, _, v = ln.partition(": ")
            meta.setdefault(k, []).append(v)
        if meta.get("compressed") == ["zlib"]:
            body = zlib.decompress(body)
        expect = meta["expect"][0]
        ids = [age.Identity.parse(t) for t in meta.get("identity", [])]
        for mode in ("stream", "seek"):
            out = bytearray()
            try:
                r = age.AgeStream(Source(io.BytesIO(body), 512), ids) if mode == "stream" else \
                    age.AgeSeekable(io.BytesIO(body), len(body), ids, 512)
                while True:
                    d = r.read(10000)
                    if not d:
                        break
                    out += d
                got = "success"
            except IdentityNeeded:
                got = "no match"
            except LayerUnsupported:
                got = "unsupported"
            except LayerDamaged as exc:
                msg = str(exc)
                got = "HMAC failure" if "MAC does not match" in msg else \
                    "header failure" if ("header" in msg or "stanza" in msg) else "payload failure"
            name = os.path.basename(path)
            if name.startswith("scrypt") and expect == "success":
                assert got == "unsupported", name          # passphrases: said, not read
                continue
            if name == "version_unsupported":
                assert got == "unsupported", name
                continue
            assert got == expect, (name, mode, meta.get("comment"))
            if expect == "success" or (expect == "payload failure" and mode == "stream"):
                assert hashlib.sha256(out).hexdigest() == meta["payload"][0], (name, mode)


def test_sniff_names_each_layer():
    assert sniff(b"age-encryption.org/v1\n-> X") == "age"
    assert sniff(b"-----BEGIN AGE ENCRYPTED FILE-----\n") == "age-armor"
    assert sniff(b"\x28\xb5\x2f\xfd\x00\x00") == "zstd"
    assert sniff(b"\x5e\x2a\x4d\x18\x00\x00") == "zstd"          # a skippable frame first (pzstd)
    assert sniff(b"\x1f\x8b\x08\x00\x00\x00") == "gzip"
    assert sniff(b"\xfd7zXZ\x00\x00") == "xz"
    assert sniff(b"BZh91AY&SY") == "bzip2"
    assert sniff(b"ims-asm.header\x00\x00\x00") is None


# --------------------------------------------------------------------------- damage

@pytest.mark.parametrize("what", ["-z", "--encrypt", "-z --encrypt"])
def test_cut_or_damaged_layered_archives_exit_4(tmp_path, keys, what):
    """A layered archive cut at many points, or with one byte changed, never restores
    silently: exit 4 with one line and no traceback, and what was restored before is
    byte for byte right.  One exception, checked with Debian's zstd: a few bits of a
    zstd frame do not change what it decompresses to (the frame checksum is of the
    content, and it still matches); such a changed byte changes nothing the archive
    holds, so the restore must be exact, with exit 0."""
    key, rcpt = keys
    home = tmp_path / "src"
    store = build(home, "classic", users=4, messages=60)
    want = state(store)
    arch = tmp_path / "a.ims"
    args = what.replace("--encrypt", f"--recipient {rcpt}").split()
    run(home, "imsbackup", *args, "-f", arch, "/", check=0)
    data = arch.read_bytes()
    rnd = random.Random(len(data))
    end = len(data) - 1
    if what == "-z":
        # the seek table after the last frame only speeds up seeking, and the last
        # frame's 4-byte checksum follows the archive's verified trailer: damage there is
        # read around (the frames hold everything), see the end of this test
        from asm.layers.zstd import read_seek_table
        coff, _ = read_seek_table(io.BytesIO(data), len(data))
        end = coff[-1] - 5
    cuts = sorted({rnd.randrange(200, end) for _ in range(3)} | {end, len(data) // 2})
    for i, cut in enumerate(cuts):
        for damage in ("cut", "flip"):
            bad = bytearray(data[:cut]) if damage == "cut" else bytearray(data)
            if damage == "flip":
                bad[cut] ^= 0x40
            f = tmp_path / f"bad{i}{damage}"
            f.write_bytes(bytes(bad))
            d, s = fresh(tmp_path, "classic", f"d{i}{damage}")
            same = damage == "flip" and what == "-z" and zstd_content(f) == zstd_content(arch)
            for dev in ("file", "pipe"):
                p = run(d, "imsrestore", "--identity", key, "-f", f if dev == "file" else "-", text=True,
                        stdin=open(f, "rb") if dev == "pipe" else None)
                assert "Traceback" not in p.stderr
                if same:
                    assert p.returncode == 0 and state(s) == want, (damage, cut, dev, p.stderr)
                    continue
                assert p.returncode == 4, (damage, cut, dev, p.stderr)
                assert p.stderr.strip()
                if "cannot read" in p.stderr and state(s):
                    # the layer failed mid-restore: the line says what was kept and what to do
                    assert "restored, message by message" in p.stderr and "intact copy" in p.stderr, p.stderr
            got = state(s)
            assert all(want[k] == v for k, v in got.items() if len(k) == 3), (damage, cut)
    if what == "-z":
        for cut in (len(data) - 1, end + 6, end + 3):
            f = tmp_path / f"table{cut}"
            f.write_bytes(data[:cut])
            d, s = fresh(tmp_path, "classic", f"t{cut}")
            run(d, "imsrestore", "-f", f, check=0)
            assert state(s) == want
            # ... but the file is damaged, and imsverify, which reads the layers to their
            # end, says so (before: exit 0, where `zstd -t` says "premature end")
            p = run(d, "imsverify", "-v", "-f", f, text=True)
            assert p.returncode == 4 and "after the archive's end" in p.stderr, (cut, p.stderr)
        run(home, "imsverify", "-f", arch, check=0)


def zstd_content(path):
    """SHA-256 of what Debian's zstd decompresses ``path`` to, or None when it finds the
    file damaged (a frame's checksum fails, a frame is cut or not zstd)."""
    zstd = require("zstd", "the damage test reads archives with it too")
    p = subprocess.run([zstd, "-dc", "-q", str(path)], capture_output=True)
    return hashlib.sha256(p.stdout).hexdigest() if p.returncode == 0 else None


# --------------------------------------------------------------------------- keys

def test_key_mistakes_are_one_line_and_write_nothing(tmp_path, source, keys):
    home, _ = source
    key, rcpt = keys
    arch = tmp_path / "a.ims"
    p = run(home, "imsbackup", "--encrypt", "-f", arch, "/", text=True)
    assert p.returncode == 2 and "--encrypt needs age recipients" in p.stderr and not arch.exists()
    secret = [ln for ln in open(key) if ln.startswith("AGE-SECRET-KEY-")][0].strip()
    p = run(home, "imsbackup", "--recipient", secret, "-f", arch, "/", text=True)
    assert p.returncode == 2 and "secret key" in p.stderr and secret not in p.stderr and not arch.exists()
    p = run(home, "msconfig", "set", "store.encrypt.recipients", secret, text=True)
    assert p.returncode == 2 and secret not in p.stderr
    p = run(home, "imsbackup", "--recipient", "age1notakey", "-f", arch, "/", text=True)
    assert p.returncode == 2 and "not an age recipient" in p.stderr and not arch.exists()
    run(home, "imsbackup", "--recipient", rcpt, "-f", arch, "/", check=0)
    d, _ = fresh(tmp_path, "classic")
    p = run(d, "imsrestore", "-f", arch, "-t", text=True)
    assert p.returncode == 2 and "--identity" in p.stderr
    other = tmp_path / "other.txt"
    subprocess.run([require("age-keygen"), "-o", str(other)], check=True, capture_output=True)
    os.chmod(other, 0o600)
    p = run(d, "imsrestore", "--identity", other, "-f", arch, "-t", text=True)
    assert p.returncode == 2 and "none of the 1 identities" in p.stderr
    os.chmod(other, 0o644)
    p = run(d, "imsrestore", "--identity", other, "-f", arch, "-t", text=True)
    assert p.returncode == 2 and "chmod 600" in p.stderr
    # armored age is recognised and named, not read
    armored = tmp_path / "armored"
    subprocess.run(f"{require('age')} -a -r {rcpt} < {arch} > {armored}", shell=True, check=True)
    p = run(d, "imsrestore", "--identity", key, "-f", armored, "-t", text=True)
    assert p.returncode == 8 and "armor" in p.stderr


# X25519 points of small order: every shared secret with them is all zeros (age refuses it)
LOW_ORDER = [bytes(32), (1).to_bytes(32, "little"),
             bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")]


@pytest.mark.parametrize("point", range(len(LOW_ORDER)))
def test_low_order_recipient_is_refused_in_one_line(tmp_path, source, point):
    """A recipient that decodes (age1qqqq...5cu47z, the all-zero key) but whose key is of
    small order: refused with exit 2 by msconfig, --recipient and a recipients file, never
    an internal error (exit 70) from every backup."""
    from asm.layers import bech32
    home, _ = source
    bad = bech32.encode("age", LOW_ORDER[point])
    arch = tmp_path / "a.ims"
    p = run(home, "imsbackup", "--recipient", bad, "-f", arch, "/", text=True)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "cannot be used" in p.stderr and not arch.exists()
    listed = tmp_path / "recipients.txt"
    listed.write_text(f"# backups\n{bad}\n")
    p = run(home, "imsbackup", "--recipients-file", listed, "-f", arch, "/", text=True)
    assert p.returncode == 2 and "cannot be used" in p.stderr and not arch.exists(), p.stderr
    p = run(home, "msconfig", "set", "store.encrypt.recipients", bad, text=True)
    assert p.returncode == 2 and "cannot be used" in p.stderr, p.stderr
    p = run(home, "imsbackup", "-f", arch, "/", text=True)      # the setting was not written
    assert p.returncode == 0 and arch.exists(), p.stderr


def test_backups_never_read_identities_nor_carry_them(tmp_path, source, driver, keys):
    """A backup needs only the public recipients: configured identities that are
    missing change nothing, and the secret key is nowhere in the (decrypted) archive;
    store.encrypt.recipients encrypts every run, --no-encrypt one run in the clear."""
    home, store = source
    key, rcpt = keys
    run(home, "msconfig", "set", "store.encrypt.recipients", rcpt, check=0)
    run(home, "msconfig", "set", "store.encrypt.identities", str(tmp_path / "nowhere.txt"), check=0)
    run(home, "msconfig", "set", "store.compress", "zstd:5", check=0)
    arch = tmp_path / "a.ims"
    run(home, "imsbackup", "-f", arch, "/", check=0)
    assert arch.read_bytes().startswith(b"age-encryption.org/v1\n")
    secret = [ln for ln in open(key) if ln.startswith("AGE-SECRET-KEY-")][0].strip().encode()
    with open(arch, "rb") as f:
        plain, names = open_read(f, age.read_identities(key))
        assert names == ["age", "zstd"]
        body = plain.read()
    assert secret not in body and secret.lower() not in body
    clear = tmp_path / "clear.ims"
    run(home, "imsbackup", "--no-encrypt", "--compress", "none", "-f", clear, "/", check=0)
    assert sniff(clear.read_bytes()[:64]) is None
    d, s = fresh(tmp_path, driver)
    run(d, "imsrestore", "--identity", key, "-f", arch, check=0)
    assert state(s) == state(store)


def test_zstd_writer_bounds_its_frames():
    """Frames are independent and at most FRAME bytes: memory is a few frames per thread."""
    out = io.BytesIO()
    w = ZstdWriter(out, 3, threads=2, frame=4096)
    for _ in range(100):
        w.write(os.urandom(1000))
    assert len(w._pending) <= w.threads
    w.close()
    from asm.layers.zstd import read_seek_table
    out.seek(0)
    coff, doff = read_seek_table(out, len(out.getvalue()))
    assert all(doff[i + 1] - doff[i] <= 4096 for i in range(len(doff) - 1)) and doff[-1] == 100000


class _Pipe(io.RawIOBase):
    """A stream that cannot seek, as a pipe or a tape."""

    def __init__(self, data):
        self._b = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, buf):
        return self._b.readinto(buf)


def test_no_changed_byte_of_a_zstd_layer_changes_what_is_read_silently():
    """Every byte of a zstd layer of several frames changed in turn, read by seeking and
    in one pass: either the read fails with LayerDamaged or it gives back exactly what
    was written (a few bits of a frame change nothing it decompresses to).  A changed
    byte in the seek table may only cost the seeking (the frames are read in one pass)."""
    rnd = random.Random(17)
    words = [bytes(rnd.choice(b"abcdefghij \n") for _ in range(rnd.randrange(2, 9))) for _ in range(300)]
    plain = b"".join(rnd.choice(words) for _ in range(6000)) + rnd.randbytes(3000)
    out = io.BytesIO()
    w = ZstdWriter(out, 3, threads=1, frame=8192)
    w.write(plain)
    w.close()
    data = out.getvalue()
    harmless = damaged = 0
    for pos in range(len(data)):
        for flip in ((0x01, 0x40), (0x80, 0x04))[pos % 2]:
            bad = bytearray(data)
            bad[pos] ^= flip
            for raw in (io.BytesIO(bytes(bad)), _Pipe(bytes(bad))):
                try:
                    got, names = open_read(raw)
                    back = b"".join(iter(lambda: got.read(5000), b""))   # to the end, or the error
                except LayerDamaged:
                    damaged += 1
                    continue
                if names == [] and pos < 4:     # the zstd magic changed: not read as zstd, the
                    assert back == bytes(bad)     # bytes as they are (not an archive: exit 8)
                    continue
                assert names == ["zstd"] and back == plain, (pos, flip)
                harmless += 1
    assert damaged > harmless > 0, (damaged, harmless)


def test_a_damaged_seek_table_entry_only_costs_the_seeking():
    """Every bit of the seek table's entries and footer flipped in turn: random seeks and
    a read to the end give back exactly what was written (the table's sizes are checked
    against the frames before a frame is placed by them; a wrong one is replaced by the
    frames' own, found in one pass).  Only the 8-byte header of the table's skippable
    frame, whose damage leaves the stream unparseable, may be damage."""
    from asm.layers.zstd import read_seek_table
    rnd = random.Random(23)
    plain = rnd.randbytes(5000) + b"".join(rnd.choice([b"mail ", b"body\r\n", b"x" * 40]) for _ in range(9000))
    out = io.BytesIO()
    w = ZstdWriter(out, 3, threads=1, frame=8192)
    w.write(plain)
    w.close()
    data = out.getvalue()
    coff, _ = read_seek_table(io.BytesIO(data), len(data))
    start = coff[-1]
    exact = damaged_header = 0
    for pos in range(start, len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            try:
                got, names = open_read(io.BytesIO(bytes(bad)))
                assert names == ["zstd"]
                seeks = random.Random(pos * 8 + bit)
                if got.seekable():
                    for _ in range(6):
                        off = seeks.randrange(len(plain))
                        got.seek(off)
                        want = plain[off:off + seeks.randrange(1, 30000)]
                        part = b"".join(iter(lambda: got.read(len(want)) if got.tell() < off + len(want)
                                             else b"", b""))[:len(want)]
                        assert part == want, (pos - start, bit, off, len(part), len(want))
                    got.seek(0)
                back = b"".join(iter(lambda: got.read(7000), b""))
            except LayerDamaged:
                assert pos - start < 8, (pos - start, bit)
                damaged_header += 1
                continue
            assert back == plain, (pos - start, bit)
            exact += 1
    assert exact >= 8 * (len(data) - start - 8) and damaged_header > 0, (exact, damaged_header)


def test_an_archive_with_a_wrong_seek_table_size_restores_exactly(tmp_path):
    """The case a mail administrator meets: one decompressed size in the seek table of
    an imsbackup -z file changed (the frames intact): imsrestore, whole and partial
    (which seeks past frames), gives back the store exactly; imsverify says the file is
    damaged (exit 4, the seek table named: the medium altered it, and a partial restore
    now reads the file in one pass), where it said "every check passed"."""
    import struct

    from asm.layers.zstd import read_seek_table
    home = tmp_path / "src"
    store = build(home, "classic", users=6, messages=150)
    users = sorted(store.users("primary"))
    for i in range(12):                     # a few MiB of archive: several 1 MiB frames
        body = b"".join(b"line %d of a long attachment\r\n" % k for k in range(16000 + i))
        store.append(users[i % len(users)], "INBOX", io.BytesIO(b"Subject: big %d\r\n\r\n" % i + body),
                     internaldate=1_700_000_000 + i)
    want = state(store)
    arch = tmp_path / "a.ims"
    run(home, "imsbackup", "-z", "-f", arch, "/", check=0)
    good = arch.read_bytes()
    data = bytearray(good)
    coff, doff = read_seek_table(io.BytesIO(bytes(data)), len(data))
    assert len(coff) > 4, "want several frames"
    entry = coff[-1] + 8 + 2 * 8 + 4        # frame 2's decompressed size
    assert struct.unpack_from("<I", data, entry)[0] == doff[3] - doff[2]
    data[entry] ^= 0x01
    arch.write_bytes(bytes(data))
    p = run(home, "imsverify", "-v", "-f", arch, text=True)
    assert p.returncode == 4 and "seek table" in p.stderr, p.stderr
    d, s = fresh(tmp_path, "classic")
    run(d, "imsrestore", "-f", arch, "/", check=0)
    assert state(s) == want
    user = users[-1]
    d2, s2 = fresh(tmp_path, "classic", "partial")
    run(d2, "imsrestore", "-f", arch, f"/primary/{user}", check=0)
    assert state(s2) == {k: v for k, v in want.items() if k[0] == user}
    # every byte of the table's content (sizes, frame count, descriptor, footer magic)
    # changed in turn: imsverify finds it, from the file (seeking) and from a pipe (one
    # pass); in this process (about 300 runs), and as a command at a seeded sample
    positions = range(coff[-1] + 8, len(good))
    rnd = random.Random(len(good))
    sample = set(rnd.sample(positions, 6)) | {positions[0], positions[-1]}
    for pos in positions:
        bad = bytearray(good)
        bad[pos] ^= 0x01 if pos % 2 else 0x80
        arch.write_bytes(bytes(bad))
        for dev in ("file", "pipe"):
            if pos in sample:
                p = run(home, "imsverify", "-v", "-f", arch if dev == "file" else "-", text=True,
                        stdin=open(arch, "rb") if dev == "pipe" else None)
                status, err = p.returncode, p.stderr
            else:
                status, err = verify_inprocess(["-v", "-f", str(arch) if dev == "file" else "-"], str(home),
                                               stdin=bytes(bad) if dev == "pipe" else None)
            assert status == 4 and "seek table" in err, (pos - len(good), dev, err)
    # the table's frame magic (0x184D2A5E) with one of its low four bits flipped is
    # another skippable frame's, which zstd skips unread: it passed (exit 0); the frame
    # of a table's size ending with the table's footer is named as the damaged table
    for bit in range(4):
        bad = bytearray(good)
        bad[coff[-1]] ^= 1 << bit
        arch.write_bytes(bytes(bad))
        for dev in ("file", "pipe"):
            status, err = verify_inprocess(["-v", "-f", str(arch) if dev == "file" else "-"], str(home),
                                           stdin=bytes(bad) if dev == "pipe" else None)
            assert status == 4 and "seek table" in err and "frame magic" in err, (bit, dev, err)
    d4, s4 = fresh(tmp_path, "classic", "magic")
    run(d4, "imsrestore", "-f", arch, "/", check=0)           # (the mail is whole: only the table)
    assert state(s4) == want
    arch.write_bytes(bytes(data))
    d3, s3 = fresh(tmp_path, "classic", "last")
    run(d3, "imsrestore", "-f", "-", stdin=open(arch, "rb"), check=0)
    assert state(s3) == want
    p = run(home, "imsrestore", "-t", "-f", arch, text=True)     # the listing checks it too
    assert p.returncode == 4 and "seek table" in p.stderr, p.stderr
    arch.write_bytes(good)
    run(home, "imsverify", "-f", "-", stdin=open(arch, "rb"), check=0)
    run(home, "imsrestore", "-t", "-f", arch, check=0)


def test_layers_on_ssh_and_fifo_devices(tmp_path, sshd, keys):
    """The layers work on every device: a remote file over SSH (restored partially by
    seeking through SFTP and the layers) and a FIFO (a stream, as a tape)."""
    key, rcpt = keys
    home = tmp_path / "src"
    store = build(home, "classic", users=6, messages=80)
    ssh_opts = {"ssh.identity": sshd.client_key, "ssh.knownhosts": sshd.known_hosts, "ssh.timeout": "10"}
    for k, v in ssh_opts.items():
        Config(str(home)).set(k, v)
    d = sshd.remote_dir("layers")
    run(home, "imsbackup", "-z", "--recipient", rcpt, "-f", sshd.spec(f"{d}/a.ims"), "/", check=0)
    with open(os.path.join(d, "a.ims"), "rb") as f:
        assert f.read(22) == b"age-encryption.org/v1\n"
    user = store.users("primary")[2]
    dst = tmp_path / "dst"
    make_home(dst, "classic", **ssh_opts)
    run(dst, "imsrestore", "--identity", key, "-f", sshd.spec(f"{d}/a.ims"), f"/primary/user/{user}", check=0)
    want = state(store)
    assert state(open_store(Config(str(dst)))) == {k: v for k, v in want.items() if k[0] == user}
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    caught = tmp_path / "caught"
    reader = subprocess.Popen(["sh", "-c", 'cat "$1" > "$2"', "sh", str(fifo), str(caught)])
    run(home, "imsbackup", "-z", "-f", fifo, "/", check=0)
    reader.wait(60)
    assert caught.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    d2, s2 = fresh(tmp_path, "classic", "d2")
    feeder = subprocess.Popen(["sh", "-c", 'cat "$1" > "$2"', "sh", str(caught), str(fifo)])
    run(d2, "imsrestore", "-f", fifo, check=0)
    feeder.wait(60)
    assert state(s2) == want


@pytest.mark.parametrize("driver", ["classic"])
def test_a_wrong_identity_is_named_even_for_a_plain_archive(tmp_path, source, keys):
    """`imsrestore --identity FILE` of a plain archive exited 0 without a look at FILE:
    a typo in the path, or a key anyone can read, went unnoticed until the day an
    encrypted archive had to be restored.  Such a file is named now, whatever the
    archive, before anything is written (exit 2); a good one changes nothing."""
    home, _store = source
    key, _rcpt = keys
    arch = tmp_path / "plain.ims"
    run(home, "imsbackup", "-f", arch, "/", check=0)
    d, dst = fresh(tmp_path, "classic")
    missing = tmp_path / "no-such-key.txt"
    p = run(d, "imsrestore", "--identity", missing, "-f", arch, text=True)
    assert p.returncode == 2 and f"cannot read identity file {missing}: No such file or directory" in p.stderr, p.stderr
    assert dst.users("primary") == []
    loose = tmp_path / "loose.txt"
    loose.write_text(open(key).read())
    os.chmod(loose, 0o644)
    p = run(d, "imsrestore", "--identity", loose, "-f", arch, text=True)
    assert p.returncode == 2 and "chmod 600" in p.stderr and dst.users("primary") == []
    p = run(d, "imsverify", "-v", "--identity", missing, "-f", arch, text=True)
    assert p.returncode == 2 and str(missing) in p.stderr, p.stderr
    run(d, "imsrestore", "--identity", key, "-f", arch, check=0)
    assert dst.users("primary")


def test_a_damaged_recipient_stanza_is_never_said_to_be_only_a_wrong_identity(keys):
    """Each byte of an archive's age header changed in turn (the right identity given):
    it is read exactly, or refused as damaged (exit 4's LayerDamaged), or refused as
    opened by no identity given with advice that names a damaged header and another
    copy beside the identity -- never only "give the identity" (adv9 F16: a flip in the
    stanza gave "give the identity whose recipient it was encrypted to", and its type
    X35519 was named as if it were a recipient of some other key)."""
    key, rcpt = keys
    ident = age.read_identities(key)
    out = io.BytesIO()
    w = age.AgeWriter(out, [age.Recipient.parse(rcpt)])
    plain = os.urandom(70000)
    w.write(plain)
    w.close()
    data = out.getvalue()
    head_end = data.index(b"\n---") + 1
    said = {"exact": 0, "damaged": 0, "no identity": 0}
    for off in range(len(age.MAGIC), head_end):
        for bit in (0, 5):
            bad = bytearray(data)
            bad[off] ^= 1 << bit
            try:
                r = age.AgeStream(Source(io.BytesIO(bytes(bad)), 512), ident)
                got = b""
                while True:
                    d = r.read(1 << 16)
                    if not d:
                        break
                    got += d
                assert got == plain, off
                said["exact"] += 1
            except LayerDamaged:
                said["damaged"] += 1
            except IdentityNeeded as exc:
                msg = str(exc)
                assert "damaged" in msg and "another copy" in msg, (off, bit, msg)
                said["no identity"] += 1
    assert said["damaged"] and said["no identity"], said
    bad = data.replace(b"-> X25519 ", b"-> X35519 ", 1)
    with pytest.raises(IdentityNeeded) as e:
        age.AgeStream(Source(io.BytesIO(bad), 512), ident).read(10)
    assert "X35519" in str(e.value) and "header is damaged" in str(e.value) \
        and "another copy" in str(e.value) and "identities given" not in str(e.value)
