"""Restore lookup: which staged files of which dates hold a user, the full + incremental
chain to apply, and the restore itself from files the engine has put back (or that
were fetched back from the media server they were pushed to, see staging.remote)."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from asm.errors import EXIT_INCOMPLETE, EXIT_OK
from staging.catalog import Catalog, Dump
from staging.dump import sha256_of
from staging.errors import Missing, StagingError


@dataclass
class Link:
    """A dump that holds a user, and where its file is now."""

    dump: Dump
    found: str | None        # where the file is now (checked by size), or None
    users: list
    verified: bool = False   # found's SHA-256 was already checked (a fetched file)

    @property
    def remote(self) -> str | None:
        """Where a pushed copy is (device string), or None."""
        return self.dump.remote if self.dump.push == "ok" else None


def _chain_from(catalog: Catalog, newest: Dump) -> list[Dump] | None:
    chain = [newest]
    seen = {newest.id}
    while chain[-1].kind != "full":
        base = catalog.get(chain[-1].base) if chain[-1].base is not None else None
        if base is None or base.status != "complete" or base.id in seen:
            return None
        chain.append(base)
        seen.add(base.id)
    return list(reversed(chain))


def find_file(d: Dump, places: list[str]) -> str | None:
    for p in places:
        path = os.path.join(p, d.file)
        try:
            if os.path.getsize(path) == d.size:
                return path
        except OSError:
            continue
    return None


def chain_for(catalog: Catalog, user: str, places: list[str], at: float | None = None) -> list[Link]:
    """The chain for ``user``, oldest (the full) first.  The newest dump (at or before
    ``at``) whose whole chain is still on disk, saved by the engine or pushed to the
    media server is chosen; when none is, the newest whole chain is returned and its
    missing files are reported."""
    held = [d for d in catalog.holding(user) if at is None or d.started <= at]
    if not held:
        raise Missing(f"no complete staging dump holds user {user!r}"
                      + (" at or before that date" if at is not None else "")
                      + f" (catalog {catalog.path}); check the name with 'imsstage list'")
    first_whole = None
    for d in held:
        chain = _chain_from(catalog, d)
        if chain is None:
            continue
        links = [Link(x, find_file(x, places), catalog.users(x.id)) for x in chain]
        if first_whole is None:
            first_whole = links
        if all(lk.found or lk.dump.engine == "ok" or lk.remote for lk in links):
            return links
    if first_whole is None:
        raise Missing(f"the dumps holding {user!r} have no complete chain back to a full dump")
    return first_whole


def restore_chain(links: list[Link], target: str, home: str, verbose: bool = False,
                  check_digest: bool = True, say=print, report: str | None = None) -> int:
    """imsrestore each file in order; -H on all but the last so deliveries stay held."""
    missing = [lk.dump.file for lk in links if not lk.found]
    if missing:
        raise Missing(f"{len(missing)} of the {len(links)} files are not back yet: {', '.join(missing)}; "
                      f"have the engine restore them (see 'locate'), then run this again")
    for lk in links:
        if check_digest and not lk.verified:
            size, digest = sha256_of(lk.found)
            if digest != lk.dump.sha256:
                raise StagingError(f"{lk.found} is not the file the catalog recorded (sha256 {digest[:12]}... "
                                   f"instead of {lk.dump.sha256[:12]}...): the engine returned another version; "
                                   f"restore the one from {lk.dump.when()}", status=EXIT_INCOMPLETE)
    env = dict(os.environ, IMS_HOME=home)
    if report:          # imsstage reports the chain restore: the child writes the JSON only
        env["IMS_REPORT_PARENT"] = "imsstage"
    # one imsrestore for the whole chain: it checks the chain before anything changes and
    # restores the state of the last dump (nothing deleted or moved away by then comes back)
    argv = [sys.executable, "-m", "asm.cli.imsrestore"]
    for lk in links:
        argv += ["-f", lk.found]
        say(f"imsstage: restoring {target} from {lk.dump.file} ({lk.dump.kind}, {lk.dump.when()})")
    if verbose:
        argv.append("-v")
    if report:
        argv += ["--report", report]
    argv.append(target)
    rc = subprocess.run(argv, env=env).returncode
    if rc != EXIT_OK:
        say(f"imsstage: imsrestore exit {rc}; the chain was stopped there "
            f"(run the same command again after fixing the cause)")
    return rc
