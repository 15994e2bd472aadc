"""Reference files: the links a stream restore could not resolve (written with -R, by
default ``$IMS_HOME/data/refs/<archive id>.ref``), and ``imsrestore -r`` completing
them from the archive."""
from __future__ import annotations

import errno
import json
import os

from asm.archive import names, spec, values
from asm.archive.errors import ArchiveError, CorruptMember, DigestMismatch, HostileMember, IncompleteArchive
from asm.errors import EXIT_NOSPACE, EXIT_PARTIAL, EXIT_USAGE
from asm.restore.apply import date_not_kept
from asm.restore.errors import RestoreError
from asm.restore.options import RestoreResult, error_status
from asm.store.base import Store, StoreError


def default_reffile(home: str, header: dict) -> str:
    """Where a restore of the archive with ``header`` writes its reference file unless
    told otherwise."""
    # the archive id is a UUID (the reader checks every header field before anything
    # uses it), so this path stays in data/refs
    return os.path.join(home, "data", "refs", f"{header['archive_id']}.ref")


def write_reffile(path: str, header: dict, pending: list) -> None:
    """Write the reference file (its directory is made when missing, one level as mkdir
    does: $IMS_HOME/data/refs; imsrestore refuses a -R in a missing directory)."""
    from asm.config import atomic_write
    doc = {"format": "ims-asm-references", "version": 1, "archive_id": header.get("archive_id"),
           "created": header.get("created"), "references": pending}
    try:
        d = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(d):
            os.mkdir(d)
        atomic_write(path, names.dump_json(doc, indent=1), mode=0o600)
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise RestoreError(f"cannot write the reference file {path}: {exc.strerror or exc}; {len(pending)} "
                           f"linked messages were not restored: "
                           + ("free space there and run the same command again (it puts them at their "
                              "archived UIDs), or run it again with -R naming another place" if full else
                              "run the same command again with -R naming another place"),
                           status=EXIT_NOSPACE if full else EXIT_USAGE) from None


def read_reffile(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            # (a reference file is a JSON object: anything else is refused before it is
            # read whole, /dev/zero or a binary given by mistake)
            head = f.read(1 << 10)
            if not head.lstrip().startswith("{"):
                raise ValueError("not a JSON object")
            doc = json.loads(head + f.read())
    except OSError as exc:
        raise RestoreError(f"cannot read reference file {path!r}: {exc.strerror}") from None
    except ValueError:
        raise RestoreError(f"{path!r} is not an imsrestore reference file (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != "ims-asm-references":
        raise RestoreError(f"{path!r} is not an imsrestore reference file")
    refs = doc.get("references")
    problem = "its references are not a list" if not isinstance(refs, list) else None
    for i, r in enumerate(refs if problem is None else ()):
        try:
            _check_reference(r)
        except ValueError as exc:
            problem = f"reference {i + 1}: {exc}"
            break
    if problem:
        raise RestoreError(f"{path!r} is a damaged reference file ({problem}; its references are not as "
                           "imsrestore writes them): run the restore that wrote it again")
    return doc


def _int(r: dict, key: str, lo: int, hi: int, optional: bool = False) -> None:
    v = r.get(key)
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{key} {values._short(v)} is not a number in {lo}..{hi}")


def _name(r: dict, key: str) -> None:
    v = r.get(key)
    if not isinstance(v, str) or not v or "\x00" in v:
        raise ValueError(f"{key} {values._short(v)} is not a name")


def _check_reference(r) -> None:
    """Every field of one reference as :meth:`Restorer._pending` writes it, with the
    ranges the archive's own records have (asm.archive.values); ValueError names the
    first that is not (missing, of another type, out of range)."""
    if not isinstance(r, dict):
        raise ValueError("not an object")
    for key in ("member", "target"):
        _name(r, key)
        try:
            names.parse(r[key])
        except ValueError:
            raise ValueError(f"{key} {values._short(r[key])} is not a message of an archive") from None
    for key in ("partition", "user"):
        _name(r, key)
        if "/" in r[key] or r[key] in (".", ".."):
            raise ValueError(f"{key} {values._short(r[key])} is not a name")
    _name(r, "folder")
    if any(level in ("", ".", "..") for level in r["folder"].split("/")):
        raise ValueError(f"folder {values._short(r['folder'])} is not a folder name")
    _int(r, "uid", spec.UID_MIN, spec.UID_MAX)
    _int(r, "uidvalidity", spec.UIDVALIDITY_MIN, spec.UIDVALIDITY_MAX, optional=True)
    _int(r, "size", 0, spec.SIZE_MAX, optional=True)
    _int(r, "pop3_order", spec.POP3_ORDER_MIN, spec.POP3_ORDER_MAX, optional=True)
    for key, check, what in (("flags", values.flags, "IMAP system flags"),
                             ("keywords", values.keywords, "IMAP keywords")):
        v = r.get(key)
        try:
            if not isinstance(v, list) or not all(isinstance(w, str) and w and " " not in w for w in v):
                raise ValueError
            check(" ".join(v))
        except ValueError:
            raise ValueError(f"{key} {values._short(v)} is not a list of {what}, each once") from None
    values.json_time(r.get("internaldate"), "internaldate")
    values.json_time(r.get("stored"), "stored", optional=True)
    if r.get("sha256") is not None:
        values.sha256(r["sha256"], "sha256")
    for key, check in (("guid", values.guid), ("basename", values.basename), ("pop3_uidl", values.pop3_uidl)):
        v = r.get(key)
        if v is not None and not isinstance(v, str):
            raise ValueError(f"{key} {values._short(v)} is not text")
        try:
            check(v)
        except ValueError:
            raise ValueError(f"{key} {values._short(v)} is not as an archive records it") from None


def complete_references(store: Store, reader, doc: dict, report=None, journal=None) -> RestoreResult:
    """Second pass: restore the link members a stream could not resolve, from the archive
    (one store batch: durable when it returns, however it ends).  A message keeps its
    archived UID where that restore kept it free for it (``journal``: the restore made or
    continued the folder exactly, and the folder has not moved on since) or where the UID
    is still free at or above UIDNEXT; anywhere else (a restore merged into a live folder,
    whose lower UIDs its clients saw expunged) it takes a new UID, counted as renumbered,
    as the same restore from a file in one pass gives it.  One already there (its UID, or
    the same bytes) is not added again."""
    with store.batch():
        return _complete(store, reader, doc, report, journal)


def _from_this_archive(journal, user: str, folder: str, info, archive_id) -> bool:
    """The restore of this archive made (or continued) the folder exactly and left the
    archived UIDs of the messages it could not write free for them (the journal's
    ``gaps``), and nothing moved the folder on since.  A restore that merged into a live
    folder records no gaps: the archived UIDs below its UIDNEXT are UIDs its clients were
    told are gone (RFC 3501: never given out again)."""
    if journal is None:
        return False
    j = journal.get(user, folder)
    return (j is not None and j.archive_id == archive_id and j.running is None and j.gaps > 0
            and (j.uidvalidity, j.uidnext) == (info.uidvalidity, info.uidnext))


def _already_there(store: Store, user: str, folder: str, ref: dict):
    """The message the reference names, when the folder has it already (a second -r)."""
    from asm.store.base import MessageGone, stored_sha256
    try:
        m = store.message(user, folder, ref["uid"])
    except MessageGone:
        m = None
    if m is not None and (ref.get("sha256") is None or stored_sha256(m) == ref.get("sha256")):
        return m
    if ref.get("sha256"):
        for c in store.messages(user, folder):
            if c.size == ref.get("size") and stored_sha256(c) == ref["sha256"]:
                return c
    return None


def _held(store: Store, user: str, folder: str, uid: int) -> bool:
    """Another message holds ``uid`` in the folder."""
    from asm.store.base import MessageGone
    try:
        return store.message(user, folder, uid) is not None
    except MessageGone:
        return False


def _complete(store: Store, reader, doc: dict, report, journal=None) -> RestoreResult:
    report = report or (lambda line: None)
    res = RestoreResult()
    if doc.get("archive_id") != reader.header.get("archive_id"):
        raise RestoreError("the reference file was written for another archive "
                           f"(archive {doc.get('archive_id')}, this is {reader.header.get('archive_id')})")
    wanted: dict[str, list] = {}
    for ref in doc["references"]:
        wanted.setdefault(ref["target"], []).append(ref)

    def on_error(e: Exception) -> None:
        if isinstance(e, HostileMember):
            res.hostile += 1
        elif isinstance(e, CorruptMember):
            res.corrupt += 1
        res.errors.append({"mailbox": "archive", "error": str(e)})

    try:
        for m in reader.members(on_error=on_error):
            refs = wanted.pop(m.name, None) if m.kind == "message" else None
            if not refs:
                continue
            first_path = None
            for ref in refs:
                user, folder = ref["user"], ref["folder"]
                try:
                    if not store.exists(user, folder):
                        store.create_folder(user, folder, uidvalidity=ref.get("uidvalidity"))
                    with store.lock(user, folder):
                        info = store.folder(user, folder)
                        there = _already_there(store, user, folder, ref)
                        if there is not None:
                            res.duplicates += 1
                            first_path = first_path or there.path
                            report(f"/{ref['partition']}/{user}/{folder}/{there.uid}: already there")
                            continue
                        same = info.uidvalidity == ref.get("uidvalidity")
                        fill = same and _from_this_archive(journal, user, folder, info, doc.get("archive_id"))
                        if fill and ref["uid"] < info.uidnext:
                            fill = not _held(store, user, folder, ref["uid"])
                        uid = ref["uid"] if same and (ref["uid"] >= info.uidnext or fill) else None
                        kw = dict(uid=uid, flags=ref["flags"], keywords=ref["keywords"],
                                  internaldate=ref["internaldate"],
                                  stored=ref.get("stored") if store.restore_keeps_stored else None,
                                  guid=ref.get("guid"), fill=fill, basename=ref.get("basename"),
                                  pop3_uidl=ref.get("pop3_uidl"), pop3_order=ref.get("pop3_order"))
                        if first_path:
                            got = store.append(user, folder, None, link_from=first_path, **kw)
                            res.links += 1
                        else:
                            with m.open() as src:
                                got = store.append(user, folder, src, **kw)
                            res.messages += 1
                            res.bytes += got.size
                            first_path = got.path
                        if uid is None:
                            res.renumbered += 1
                        why = date_not_kept(got.uid, ref["internaldate"], got.internaldate)
                        if why is not None:      # restored, but named: exit 1
                            res.errors.append({"mailbox": f"/{ref['partition']}/{user}/{folder}",
                                               "error": why, "status": EXIT_PARTIAL})
                    report(f"/{ref['partition']}/{user}/{folder}/{got.uid}: restored from {m.name}")
                except (StoreError, ArchiveError) as exc:
                    if isinstance(exc, DigestMismatch):
                        res.corrupt += 1
                    res.errors.append({"mailbox": f"/{ref['partition']}/{user}/{folder}", "error": str(exc),
                                       "status": error_status(exc)})
            if not wanted:
                break
    except IncompleteArchive as exc:
        res.incomplete = str(exc)
    for target, refs in wanted.items():
        for ref in refs:
            res.errors.append({"mailbox": f"/{ref['partition']}/{ref['user']}/{ref['folder']}",
                               "error": f"first copy {target} is not in this archive"})
    return res
