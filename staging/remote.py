"""Remote copies of staged dumps on a media server over SSH, or in S3 object storage
(``s3://bucket/prefix/``, the s3 plugin): push each completed file (``staging.remote``
or ``--push``), record where it went, fetch it back for a restore, remove it when the
remote retention (staging.retention) no longer keeps it.

The SSH plugin (``plugins.ssh``) is imported only here, and only when a remote is
actually used, so the staging area works without paramiko; when the plugin is not
installed or not allowed (``IMS_ASM_PLUGINS``) the command says so in one line.
The transfer itself is the plugin's: a temporary name on the far side, renamed when
complete, its SHA-256 checked there where a shell is available.

Pushes run after a batch's dumps, not alongside them: the dumps are forked with a
pre-exec hook (die with the parent), which is not safe while paramiko's transport
threads run in this process.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from asm.errors import EXIT_DEVICE, EXIT_LINKLOST, EXIT_OK, EXIT_USAGE, device_status
from staging.catalog import Catalog, Dump
from staging.errors import StagingError

SSH_PLUGIN = "ssh"          # the entry point names in the ims_asm group
S3_PLUGIN = "s3"


def _check_plugin(name: str, what: str, needs: str) -> None:
    from asm import plugins as registry
    if registry.get_manager().get_plugin(name) is None:
        allowed = os.environ.get("IMS_ASM_PLUGINS", "").strip()
        why = (f"IMS_ASM_PLUGINS={allowed} leaves it out: add {name} to that list" if allowed else
               f"it is not installed: install ims-asm with its {name} plugin (it needs {needs})")
        raise StagingError(f"{what} needs the {name} plugin, but {why}", EXIT_USAGE)


def ssh_module(what: str):
    """``plugins.ssh``, checked to be installed and allowed; else a StagingError."""
    _check_plugin(SSH_PLUGIN, what, "paramiko")
    import plugins.ssh as ssh
    return ssh


def is_s3(spec: str | None) -> bool:
    return bool(spec) and spec.startswith("s3://")


class _S3:
    """The s3 plugin with the SSH plugin's transfer surface."""

    def __init__(self):
        from plugins.s3 import errors, transfer
        self.RemoteError = errors.S3Error
        self.VerifyFailed = errors.S3VerifyFailed
        self.Locked = errors.S3Locked
        self._t = transfer

    def push(self, local, spec, config, sha256=None):
        return self._t.push(local, spec, config, sha256=sha256)

    def fetch(self, remote, dest, config, sha256=None):
        return self._t.fetch(remote, dest, config, sha256=sha256)

    def remove(self, remote, config):
        return self._t.remove(remote, config)


class _SSH:
    def __init__(self, what):
        ssh = ssh_module(what)
        self.RemoteError = ssh.RemoteError
        self.VerifyFailed = ssh.VerifyFailed
        self.Locked = ()
        self._m = ssh

    def push(self, local, spec, config, sha256=None):
        return self._m.push(local, spec, config)

    def fetch(self, remote, dest, config, sha256=None):
        return self._m.fetch(remote, dest, config, sha256=sha256)

    def remove(self, remote, config):
        return self._m.remove(remote, config)


def backend(spec: str, what: str):
    """The transfer functions for ``spec``: the s3 plugin's for ``s3://``, else ssh's."""
    if is_s3(spec):
        _check_plugin(S3_PLUGIN, what, "boto3")
        return _S3()
    return _SSH(what)


def push_target(spec: str, what: str = "staging.remote") -> str:
    """The remote directory spec, checked, ending in '/' (so every dump keeps its name
    and a missing directory is an error rather than a file named like it)."""
    spec = (spec or "").strip()
    be = backend(spec, f"pushing to {spec!r}")
    try:
        if is_s3(spec):
            from plugins.s3.spec import parse as s3_parse
            s3_parse(spec, directory=True)
        else:
            _parse(spec)
    except be.RemoteError as exc:
        raise StagingError(f"bad {what}: {exc}", EXIT_USAGE) from None
    return spec if spec.endswith("/") or (is_s3(spec) and spec.count("/") == 2) else spec + "/"


def _parse(spec: str):
    from plugins.ssh.spec import parse
    return parse(spec)


def file_spec(dir_spec: str, remote_path: str) -> str:
    """The device string of one pushed file: ``[user@]host[:port]:path`` (the user and
    port as given in ``dir_spec``; a relative path stays relative to the remote home).
    For S3 the pushed file's URL is already its device string."""
    if is_s3(dir_spec):
        return remote_path
    rs = _parse(dir_spec)
    host = f"[{rs.host}]" if ":" in rs.host else rs.host
    return f"{rs.user + '@' if rs.user else ''}{host}{':' + str(rs.port) if rs.port else ''}:{remote_path}"


@dataclass
class PushReport:
    """What a push to the off-site copy did: dumps pushed, failed and skipped."""

    pushed: list = field(default_factory=list)      # Dump rows after a good push
    failed: list = field(default_factory=list)      # (Dump, error, exit status)
    skipped: list = field(default_factory=list)     # (Dump, why): local file gone, deadline
    status: int = EXIT_OK
    message: str = ""


def push_dumps(catalog: Catalog, directory: str, dumps: list[Dump], spec: str, config,
               say=lambda s: None, progress=None, deadline: float | None = None) -> PushReport:
    """Push the files of ``dumps`` to the directory ``spec`` (one SSH session each),
    recording each outcome in ``catalog``.  After an error that every further push
    would meet too (connection, host key, authentication, far disk full, a missing
    directory) the rest are marked failed with the same error without trying; after a
    dropped link or a digest mismatch the next one is tried.  ``deadline`` is a
    time.monotonic() value after which no new push starts."""
    ssh = backend(spec, f"pushing to {spec!r}")
    rep = PushReport()
    stop: tuple[str, int] | None = None
    for i, d in enumerate(dumps, 1):
        local = os.path.join(directory, d.file)
        if stop is not None:
            catalog.push_failed(d.id, stop[0])
            rep.failed.append((catalog.get(d.id), stop[0], stop[1]))
            continue
        if deadline is not None and time.monotonic() > deadline:
            rep.skipped.append((d, "the deadline passed before its push"))
            continue
        try:
            if os.path.getsize(local) != d.size:
                raise OSError(f"{local} is {os.path.getsize(local)} bytes, the catalog says {d.size}")
        except OSError as exc:
            rep.skipped.append((d, f"local file not there ({exc.strerror or exc})"))
            say(f"{d.file}: not pushed: local file not there")
            continue
        if progress:
            progress(i, len(dumps), d)
        t0 = time.monotonic()
        try:
            r = ssh.push(local, spec, config, sha256=d.sha256)
            if r.sha256 != d.sha256:
                # the file changed since it was dumped: do not leave it looking good over there
                try:
                    ssh.remove(file_spec(spec, r.remote_path), config)
                except ssh.RemoteError:
                    pass
                raise StagingError(f"{local} changed since it was dumped (sha256 {r.sha256[:12]}... instead of "
                                   f"{d.sha256[:12]}...): its remote copy was removed; dump the group again",
                                   EXIT_DEVICE)
        except (ssh.RemoteError, StagingError) as exc:
            status = device_status(exc)
            error = str(exc)
            catalog.push_failed(d.id, error)
            rep.failed.append((catalog.get(d.id), error, status))
            say(f"{d.file}: push FAILED: {error}")
            if status != EXIT_LINKLOST and not isinstance(exc, (ssh.VerifyFailed, StagingError)):
                stop = (error, status)
            continue
        remote = file_spec(spec, r.remote_path)
        catalog.push_ok(d.id, remote, r.verified, getattr(r, "lock_until", None))
        rep.pushed.append(catalog.get(d.id))
        how = {"sha256": "sha256 on the far side", "etag": "the server's MD5s of every part"}.get(
            r.verified, "size (no shell there)")
        say(f"{d.file}: pushed to {remote} ({r.size} bytes in {time.monotonic() - t0:.1f}s, verified by {how})")
    if rep.failed:
        d, error, status = rep.failed[0]
        rep.status = status
        n = len(rep.failed)
        rep.message = (f"{n} of {len(dumps)} dump(s) not pushed to {spec} (the files stay in {directory}; "
                       f"'imsstage push' retries): {error}")
    return rep


@dataclass
class Fetched:
    """A dump fetched back from the off-site copy and its verified digest."""

    dump: Dump
    path: str
    verified: str


def fetch_links(links, into: str, config, say=lambda s: None) -> list[Fetched]:
    """Fetch every link of a restore chain that is not present but was pushed, into
    ``into``, checked against the catalog's SHA-256.  Sets ``found`` and ``verified``
    on those links.  Raises StagingError (with the ssh error's exit status)."""
    want = [lk for lk in links if not lk.found and lk.dump.push == "ok" and lk.dump.remote]
    if not want:
        return []
    try:
        os.makedirs(into, exist_ok=True)
    except OSError as exc:
        raise StagingError(f"cannot create {into!r} for fetched files: {exc.strerror}") from None
    out = []
    for lk in want:
        d = lk.dump
        dest = os.path.join(into, d.file)
        t0 = time.monotonic()
        ssh = backend(d.remote, f"fetching {d.file} from {d.remote}")
        try:
            r = ssh.fetch(d.remote, dest, config, sha256=d.sha256)
        except ssh.RemoteError as exc:
            raise StagingError(f"cannot fetch {d.file} from {d.remote}: {exc}", device_status(exc)) from None
        except OSError as exc:
            raise StagingError(f"cannot fetch {d.file} into {into}: {exc.strerror or exc}", device_status(exc)) from None
        lk.found, lk.verified = r.local_path, True
        say(f"imsstage: fetched {d.file} from {d.remote} ({r.size} bytes in {time.monotonic() - t0:.1f}s, "
            f"sha256 checked)")
        out.append(Fetched(d, r.local_path, r.verified))
    return out
