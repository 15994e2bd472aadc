"""What a backup held, as the base of the next incremental (``imsbackup --base``).

Every backup writes a small **state file** (``<archive>.state`` beside a plain-file
archive, or where ``--state-out`` says): its archive id, its chain of ancestors and,
per folder, the name, UIDVALIDITY, complete UID set and a short identity of the message
under each UID.  An incremental names its base (that state file, or the base archive
itself) and carries every message whose (folder, UIDVALIDITY, UID) the base did not
hold, or held as another message (a store rolled back from outside hands its UIDs out
again), whole folders the base did not have, and the flags of the rest: what changed is
judged by what the base held, never by a date in a file name (docs/operations.md,
"Incremental chains").
"""
from __future__ import annotations

import base64
import json
import os
import struct
import zlib

from asm.archive import names, values
from asm.archive.errors import ArchiveError
from asm.archive.values import CheckedState, FolderState, UidSet
from asm.errors import EXIT_USAGE, ImsError

STATE_FORMAT = "ims-asm-state"
STATE_VERSION = 1


class BaseError(ImsError):
    """The base named for an incremental cannot be used (missing, not a state file or
    an archive, damaged): nothing was written."""

    status = EXIT_USAGE


class BaseState:
    """What the base of an incremental held.  (A plain class, not a dataclass: a
    dataclass execs its generated methods when its module is imported, at every
    incremental's start.)"""

    def __init__(self, archive_id: str, created: float | None, chain: list | None = None,
                 driver: str | None = None, device: str | None = None, scope: list | None = None,
                 named: str | None = None, installation: str | None = None):
        self.archive_id = archive_id
        self.installation = installation    # the installation identity its header named (None: none)
        self.created = created
        self.chain = [] if chain is None else chain     # ancestors of the archive, full first
        self.driver = driver
        # what a user can look for when the base is lost: the device (or engine label) its
        # archive was written to, its scope, and the --base the incremental was given
        self.device = device
        self.scope = scope
        self.named = named
        self.folders: dict = {}         # (user, folder) -> (uidvalidity, UidSet)
        # (user, folder) -> the identities of its UIDs (encode_ids(): 4 bytes each, in
        # UID order, 0 unknown), as the state file has them; decoded per folder read
        self.ids: dict = {}
        # (user, folder) -> (fingerprint, {flags-and-keywords: UidSet}) for the folders
        # the backup read whole and clean with a fingerprint: an incremental skips those
        # while the store says they are unchanged (Store.folder_unchanged)
        self.unchanged: dict = {}

    def recorded(self) -> dict:
        """What an incremental's header records of its base besides its id, so that a
        chain missing it can name it (asm.dr.chain.describe_base): when it was taken, to
        which device, of what scope, and the --base named."""
        out = {"created": self.created, "device": self.device, "scope": self.scope, "named": self.named}
        return {k: v for k, v in out.items() if v is not None}

    @property
    def lineage(self) -> list:
        """The chain an incremental of this base records: its ancestors and the base."""
        return [*self.chain, self.archive_id]

    def identities(self, user: str, folder: str) -> dict | None:
        """{UID: identity} of what the base held in this folder (0: not known), or None
        when it recorded none."""
        text = self.ids.get((user, folder))
        got = self.folders.get((user, folder))
        if not text or got is None:
            return None
        ids = decode_ids(text, len(got[1]))
        return None if ids is None else dict(zip(got[1], ids))

    def packed_identities(self, user: str, folder: str) -> bytes | None:
        """identities() as IMSASM.state_ids packs them (4 bytes a UID, big-endian, in
        ascending UID order), or None when it would be None: for a folder written from
        the base's record, whose state names every UID (ArchiveWriter.add_folder)."""
        text = self.ids.get((user, folder))
        got = self.folders.get((user, folder))
        if not text or got is None:
            return None
        try:
            raw = base64.b64decode(text, validate=True)
        except (ValueError, TypeError):
            return None
        return raw if len(raw) == 4 * len(got[1]) else None

    def holds(self, user: str, folder: str, uidvalidity: int) -> UidSet | None:
        """The UIDs the base held in this folder under this UIDVALIDITY, or None when the
        base did not have the folder (by name and UIDVALIDITY): it is carried whole."""
        got = self.folders.get((user, folder))
        if got is None or got[0] != uidvalidity:
            return None
        return got[1]


NO_ID = 0                               # a UID's identity that is not known


def identity(guid, basename) -> int:
    """A message's identity in a state file: the CRC-32 of its store GUID (IMSASM.guid:
    Dovecot's X-GUID, the uidlist's G field or the file's base name; the classic store's
    own), else of its Maildir base name; 0 when it has neither.  Two messages under one
    UID with other identities are two messages (a store put back from a file-level
    backup gives its old UIDs to new mail); a rare equal CRC of two different ones
    leaves that UID judged by its number alone, as before identities."""
    text = guid if guid and values.GUID_RE.match(guid) else basename
    if not text:
        return NO_ID
    return zlib.crc32(text.encode("utf-8", "surrogateescape")) or 1


def encode_ids(ids: list) -> str:
    """The identities of a folder's UIDs, in UID order, as a state file keeps them:
    base64 of 4 bytes (big-endian) each."""
    return base64.b64encode(struct.pack(f">{len(ids)}I", *ids)).decode("ascii")


def decode_ids(text: str, n: int) -> tuple | None:
    """encode_ids() read back: ``n`` identities, or None when ``text`` does not hold
    exactly that many (a state file edited by hand, a bench's made-up one)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        return None
    if len(raw) != 4 * n:
        return None
    return struct.unpack(f">{n}I", raw)


def header_chain(header: dict) -> list:
    """An archive's ancestors (full first) as its header records them; [] for a full
    backup or an archive written before incrementals named their base."""
    chain = header.get("chain")
    if isinstance(chain, list) and all(isinstance(x, str) for x in chain):
        return list(chain)
    return []


def by_date(header: dict) -> bool:
    """An incremental by date alone (-d): it names no base, and follows whatever was
    taken before it."""
    return header.get("since") is not None and header.get("base") is None


def state_path_for(device: str) -> str:
    return f"{device}.state"


LAYER_SUFFIXES = (".zst", ".zstd", ".age")     # what the layers ims-asm writes add to a name


def named_as_archive(path: str) -> bool:
    """Whether a file of a backup directory is one of ours by its name or place, so that
    it failing to read as an archive (0 bytes, zeros: what a crash can leave) is damage,
    not "some other file": its name ends in ``.ims``, or ``.ims`` followed only by layer
    suffixes (``x.ims.zst``, ``x.ims.zst.age``), or a state file ``NAME.state`` is beside
    it: a regular file (not the cron lines' ``last.state`` symlink) that is a state file
    naming an archive id (imsbackup writes one beside every plain-file archive).  A
    README, a catalog, a log, a checksum (``x.ims.sha256``), a date file are none of
    these."""
    name = os.path.basename(path)
    if name.endswith(".state"):
        return False
    stem = name
    while stem.endswith(LAYER_SUFFIXES):
        stem = stem[:stem.rindex(".")]
    if stem.endswith(".ims") and len(stem) > len(".ims"):
        return True
    return _is_state_file(state_path_for(path))


def directory_archives(d: str) -> tuple[list[str], list[str]]:
    """The files of a backup directory ``d`` (regular files, or symbolic links to them;
    not its dot files), sorted; and why each entry that is one of the backups by its name
    (``named_as_archive``) cannot be one: a symbolic link whose archive is gone (an
    incremental kept on other storage, deleted there), a directory, a FIFO, a device.
    Passing over those would pass over the mail only they held."""
    files, lost = [], []
    for n in sorted(os.listdir(d)):
        if n.startswith("."):
            continue
        p = os.path.join(d, n)
        if os.path.isfile(p):
            files.append(p)
            continue
        if not named_as_archive(p):
            continue
        if os.path.islink(p):
            why = f"a symbolic link to {os.readlink(p)}, which " + \
                  ("is no file" if os.path.exists(p) else "does not exist")
        elif os.path.isdir(p):
            why = "a directory"
        else:
            why = "not a regular file (a FIFO, a socket or a device)"
        lost.append(f"{p}: its name or the state file beside it says it is a backup, but it is {why}")
    lost += _newest_archive_gone(files)
    return files, lost


def _newest_archive_gone(files: list[str]) -> list[str]:
    """A state file imsbackup wrote beside its archive (``NAME.state``, naming NAME as
    its device) whose archive is gone, when that backup is newer than every archive
    still there: the newest backup was lost, and the mail only it held with it (a check
    of the directory passed on the ones left).  An older one's (archives pruned, their
    state files left) is no loss to the chain the directory holds."""
    have, gone = [], []
    for p in files:
        doc = _state_doc(p) if p.endswith(".state") else None
        if doc is None:
            continue
        created = doc.get("created")
        if not isinstance(created, (int, float)):
            continue
        archive = p[:-len(".state")]
        if os.path.lexists(archive):
            have.append(created)
        elif doc.get("device") in (archive, os.path.abspath(archive)):
            gone.append((created, p, archive, doc.get("archive_id")))
    newest = max(have, default=None)
    return [f"{p}: the state file of archive {archive} ({aid}), which is gone: that backup is newer than every "
            f"archive here, so the mail only it held is in none of them; find it, or take a full backup"
            for created, p, archive, aid in sorted(gone) if newest is not None and created > newest]


def _is_state_file(path: str) -> bool:
    """A regular file (a symlink is a pointer some cron line keeps, not the state
    written beside an archive) holding a state document with its archive id."""
    if not os.path.isfile(path) or os.path.islink(path):
        return False
    doc = _state_doc(path)
    return doc is not None and isinstance(doc.get("archive_id"), str) and bool(doc["archive_id"])


def _state_doc(path: str) -> dict | None:
    """The state document in the file ``path``, or None when it holds none."""
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == STATE_FORMAT else None


def _folder_doc(p, u, f, uv, uids, fingerprint=None, flags=None, ids=None) -> dict:
    doc = {"partition": p, "user": u, "folder": f, "uidvalidity": uv, "uids": str(uids)}
    if fingerprint is not None and flags is not None:
        doc["fingerprint"] = fingerprint
        doc["flags"] = {k: str(v) for k, v in sorted(flags.items())}
    if ids:
        doc["ids"] = ids
    return doc


def write_state(path: str, header: dict, folders: list, device: str | None = None) -> None:
    """Write the state file of the backup with ``header``; ``folders``: [(partition,
    user, folder, uidvalidity, uids[, fingerprint, flags[, ids]])]: a folder read whole
    and clean may carry its store fingerprint and the flags of every UID
    ({flags-and-keywords: UidSet}), which let the next incremental skip it while the
    store says it is unchanged; ``ids``: encode_ids() of its UIDs' identities, or None.  ``device``: where the archive went (its -f, or an
    engine's name for it), which the next incremental records of its base."""
    from asm.config import atomic_write
    doc = {"format": STATE_FORMAT, "version": STATE_VERSION, "archive_id": header.get("archive_id"),
           "created": header.get("created"), "driver": header.get("driver"),
           **({"installation": header["installation"]} if isinstance(header.get("installation"), str) else {}),
           "chain": header_chain(header), "scope": header.get("scope", []),
           **({"device": device} if device else {}),
           "folders": [_folder_doc(*row) for row in folders]}
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        os.mkdir(d)                     # one level, as mkdir (imsbackup refuses a missing --state-out directory)
    atomic_write(path, names.dump_json(doc, indent=None), mode=0o600)


def _from_state_doc(doc: dict, path: str) -> BaseState:
    bad = BaseError(f"{path} is a damaged backup state file: take a full backup, or name the "
                    f"base archive itself with --base")
    try:
        st = BaseState(archive_id=str(doc["archive_id"]), created=doc.get("created"),
                       chain=header_chain(doc), driver=doc.get("driver"),
                       device=doc["device"] if isinstance(doc.get("device"), str) else None,
                       scope=doc["scope"] if isinstance(doc.get("scope"), list) else None,
                       named=os.path.abspath(path),
                       installation=doc["installation"] if isinstance(doc.get("installation"), str) else None)
        for f in doc["folders"]:
            key = (f["user"], f["folder"])
            uids = UidSet.parse(f["uids"])
            st.folders[key] = (int(f["uidvalidity"]), uids)
            if isinstance(f.get("ids"), str):
                st.ids[key] = f["ids"]          # checked when the folder is read (identities())
            fp, flags = f.get("fingerprint"), f.get("flags")
            if isinstance(fp, list) and isinstance(flags, dict):
                # the flags must name exactly the folder's UIDs, each once (else the
                # folder is read again: a state file edited by hand, a bench's made-up one)
                # (the archive's own check of IMSASM.state: real flags and keywords, each
                # UID once, all in the folder; and here: every UID of the folder)
                try:
                    checked = FolderState.from_obj(flags, uids)
                    if len(checked) == len(uids):
                        st.unchanged[key] = (fp, CheckedState(((k, e[2]) for k, e in zip(flags, checked.entries)),
                                                              uids))
                except (ValueError, TypeError):
                    pass
    except (KeyError, TypeError, ValueError):
        raise bad from None
    return st


def recover_replaced(state_path: str) -> None:
    """What an imsbackup killed outright while it replaced an archive of the same name
    left: its predecessor's state file moved aside to ``STATE.replaced-PID`` (PID gone).
    When the archive it describes is a local file that can be read: put back if no state
    file is at ``state_path`` and that archive is still there (the kill came before the
    new archive was put in place: the next --base would have been refused for want of
    it), removed if another archive is there now (its own state beside it).  Left as it
    is when that cannot be told (a remote or encrypted archive, one not there)."""
    import glob
    import re
    from asm.locks import pid_alive
    for aside in sorted(glob.glob(glob.escape(state_path) + ".replaced-*")):
        m = re.fullmatch(r"\.replaced-(\d+)", aside[len(state_path):])
        if m is None or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        try:
            with open(aside, "rb") as f:
                doc = json.loads(f.read(64 << 20) or b"null")
            archive = doc.get("device") if isinstance(doc, dict) else None
            archive = archive if isinstance(archive, str) else state_path[:-len(".state")]
            if not os.path.isfile(archive):
                continue
            from asm.dr.chain import Unreadable, read_header
            try:
                info = read_header(archive)
            except Unreadable:
                continue
            if info is None:
                continue
            if info.archive_id == doc.get("archive_id"):
                if not os.path.lexists(state_path):
                    os.replace(aside, state_path)
            else:
                os.unlink(aside)
        except (OSError, ValueError, AttributeError):
            continue


def load_base(path: str) -> BaseState:
    """The state of the backup ``path`` names: a state file, or an archive (read to its
    end: every folder member's UID list; message data is skipped)."""
    if path.endswith(".state"):
        recover_replaced(path)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise BaseError(f"cannot read the base {path}: {exc.strerror or exc}; name the state file "
                        f"or archive of the previous backup with --base") from None
    with f:
        head = f.read(64).lstrip()
        if head.startswith(b"{"):
            f.seek(0)
            try:
                doc = json.load(f)
            except ValueError:
                raise BaseError(f"{path} is not a backup state file (not JSON)") from None
            if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
                raise BaseError(f"{path} is not a backup state file")
            version = doc.get("version")
            if version != STATE_VERSION:
                # (a newer ims-asm's may say what this one cannot read: its folders taken
                # as this one reads them would leave mail out of the incremental)
                newer = isinstance(version, int) and not isinstance(version, bool) and version > STATE_VERSION
                raise BaseError(f"{path} is a backup state file of version {version!r}, which this ims-asm "
                                f"does not read (it reads version {STATE_VERSION})"
                                + ("; it was written by a newer ims-asm: run this backup with that one, "
                                   "or name the previous backup's archive with --base" if newer else
                                   ": it is damaged; name the previous backup's archive with --base"))
            return _from_state_doc(doc, path)
        f.seek(0)
        return _from_archive(f, path)


def _from_archive(f, path: str) -> BaseState:
    from asm.archive.reader import ArchiveReader
    from asm.layers.stack import open_read
    try:
        f, _layers = open_read(f)      # a compressed base archive (an encrypted one: use its state file)
    except OSError as exc:
        raise BaseError(f"cannot read the base archive {path}: {getattr(exc, 'strerror', None) or exc}; "
                        f"name its state file ({path}.state) instead") from None
    try:
        reader = ArchiveReader(f)
        h = reader.header
        st = BaseState(archive_id=h["archive_id"], created=h.get("created"), chain=header_chain(h),
                       driver=h.get("driver"), device=os.path.abspath(path),
                       scope=h["scope"] if isinstance(h.get("scope"), list) else None,
                       named=os.path.abspath(path),
                       installation=h["installation"] if isinstance(h.get("installation"), str) else None)
        listed: dict = {}               # (user, folder) -> folder member
        present: dict = {}              # (user, folder) -> [UID of a message or link member]
        ids: dict = {}                  # (user, folder) -> {UID: identity} of those
        for m in reader.members():
            if m.kind == "folder":
                listed[(m.user, m.folder)] = m
                present[(m.user, m.folder)] = []
                # what is under the UIDs it lists without carrying them (IMSASM.state_ids;
                # archives before that record: not known)
                ids[(m.user, m.folder)] = {} if not m.state_ids else dict(zip(
                    m.state.uids(), struct.unpack(f">{len(m.state)}I", m.state_ids)))
            elif m.kind in ("message", "link"):
                present[(m.user, m.folder)].append(m.uid)
                ids[(m.user, m.folder)][m.uid] = identity(m.guid, m.basename)
        if not reader.complete:
            raise BaseError(f"the base archive {path} is incomplete (no trailer): it cannot be "
                            f"the base of an incremental")
        for key, m in listed.items():
            held = _held(m, present[key])
            st.folders[key] = (m.uidvalidity, held)
            known = ids[key]            # what it carries and lists (0: not known)
            if any(known.values()):
                st.ids[key] = encode_ids([known.get(u, 0) for u in held])
        _drop_failed(st, reader.trailer or {})
    except ArchiveError as exc:
        raise BaseError(f"the base archive {path} cannot be read: {exc}") from None
    except OSError as exc:
        raise BaseError(f"cannot read the base {path}: {exc.strerror or exc}") from None
    return st


def _held(folder, present: list) -> UidSet:
    """The UIDs an archive's folder member holds for the chain: those its state record
    names (not carried: an earlier link holds them) and those it carries, a member of
    its own.  A UID it lists but neither names nor carries vanished while its backup ran
    (expunged, or its folder renamed or deleted and brought back later): the state file
    leaves it out, so the next incremental carries it; so must the archive itself."""
    uids, state = folder.uids, folder.state
    if len(uids) - len(state) == len(present):
        return uids                      # every UID carried was written: nothing vanished
    if not state:
        return UidSet.of(present)        # a full backup: it holds what it wrote
    have = set(present)
    return UidSet.of(u for u in uids if u in have or state.get(u) is not None)


def _drop_failed(st: BaseState, trailer: dict) -> None:
    """Messages the base's trailer names as not saved ("message UID: ...") are not held
    by it: the next incremental carries them (as a state file leaves them out)."""
    failed: dict = {}
    for e in trailer.get("errors") or []:
        mailbox, error = e.get("mailbox", ""), e.get("error", "")
        head, _, _ = error.partition(":")
        parts = mailbox.split("/", 3)
        if head.startswith("message ") and head[8:].isdigit() and len(parts) == 4:
            failed.setdefault((parts[2], parts[3]), set()).add(int(head[8:]))
    for key, uids in failed.items():
        got = st.folders.get(key)
        if got is not None:
            ids = st.identities(*key)
            st.folders[key] = (got[0], UidSet.of(u for u in got[1] if u not in uids))
            if ids is not None:
                st.ids[key] = encode_ids([ids[u] for u in st.folders[key][1]])


def refuse_base_overwrite(base_path: str, base: BaseState, device: str) -> None:
    """Raise BaseError when the archive file ``device`` would replace is the base itself:
    ``--base`` names it (by whatever path: a symlink, ``./``), or its state file (the
    same archive id in its header, else beside it by name).  A cron line run twice the
    same day (docs/operations.md) would otherwise overwrite its base with an
    incremental of itself: the first run's new mail would be in no archive and the
    chain broken."""
    if not os.path.isfile(device):
        return                           # a new file, a tape, a pipe, a remote device
    real = os.path.realpath(device)
    same = os.path.realpath(base_path) in (real, real + ".state")
    if not same:
        from asm.dr.chain import Unreadable, read_header
        try:
            info = read_header(device)
        except Unreadable:
            info = None
        same = info is not None and info.archive_id == base.archive_id
    if same:
        raise BaseError(f"the base {base_path} is the backup in {device}, which this run would "
                        f"overwrite: write this run to a file of its own (e.g. with the time in its name) "
                        f"and keep --base {base_path}")

