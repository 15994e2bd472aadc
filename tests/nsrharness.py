"""A stand-in for NetWorker's client side, doing only what its documentation says.

* savepnpc (savepnpc(1m), preclntsave/pstclntsave): read ``/nsr/res/<group>.res``
  (``type: savepnpc; precmd: ...; pstcmd: ...; timeout: ...;``), run the precmds in
  order; a failing precmd means no save and no pstcmd; then the save sets; then the
  pstcmds.
* save (save(8), nsr(5)): walk each save set; in every directory read ``.nsr``
  (``[+]asm [args] : pattern ...``, ``#`` comments, sh-style patterns that do not match
  dot files); entries a directive matches go to that ASM (a matched directory is the
  ASM's whole, it is not descended); ``skip`` leaves entries out; the rest is walked.
  External ASMs must end in ``asm`` and live in the ASM directory; they are run as
  ``ASM -s [-t time] path...`` with the directory's matched entries and their stdout
  is kept as the save set.
* recover (recover(8) ``-a``): every saved entry at, above or below the path that the
  last save still had (the index's browse time), from the full and then each
  incremental in the order they were taken, is piped to ``ASM -r [-iY] path``.
* incremental levels: ``-t`` is the save time of the entry's last save (``incr``) or
  of its last full (a level 1-9), as save passes it (:meth:`Harness.since`).
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field


class HarnessError(Exception):
    pass


# ----------------------------------------------------------------------------- res files

def parse_res(text: str) -> dict:
    """``attr: value, "quoted value", ...;`` -> {attr: [values]} (nsr_resource(5) syntax)."""
    out: dict[str, list[str]] = {}
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for m in re.finditer(r"([A-Za-z][A-Za-z ]*?)\s*:\s*((?:\"[^\"]*\"|[^;\"])*);", text):
        name = m.group(1).strip().lower()
        values = []
        for item in re.findall(r'"[^"]*"|[^,]+', m.group(2)):
            item = item.strip()
            if item.startswith('"') and item.endswith('"'):
                item = item[1:-1]
            if item:
                values.append(item)
        out[name] = values
    if out.get("type") != ["savepnpc"]:
        raise HarnessError("not a savepnpc resource file (type: savepnpc; missing)")
    return out


# ----------------------------------------------------------------------------- directives

@dataclass
class Directive:
    asm: str
    args: list
    patterns: list
    inherit: bool


def parse_nsr(text: str) -> list[Directive]:
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#") or s.startswith("<<"):
            continue
        head, colon, pats = s.partition(":")
        if not colon:
            continue                    # a save environment directive (allow, ignore, ...)
        words = shlex.split(head)
        inherit = words[0].startswith("+")
        words[0] = words[0].lstrip("+")
        out.append(Directive(words[0], words[1:], shlex.split(pats), inherit))
    return out


def _matches(pattern: str, name: str) -> bool:
    if name.startswith(".") and not pattern.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, pattern)


@dataclass
class SavedEntry:
    path: str
    saveset: str          # file holding the ASM's stdout
    asm: str
    level: str
    taken: int
    savetime: int = 0


@dataclass
class Catalog:
    """What the harness 'server' keeps: save sets in the order they were taken."""
    dir: str
    entries: list = field(default_factory=list)
    runs: int = 0


class Harness:
    def __init__(self, asm_dir: str, catalog_dir: str, env: dict | None = None):
        self.asm_dir = asm_dir
        self.env = dict(os.environ if env is None else env)
        os.makedirs(catalog_dir, exist_ok=True)
        self.catalog = Catalog(catalog_dir)
        self.log: list[str] = []

    # -- save ---------------------------------------------------------------------
    def _asm_path(self, name: str) -> str:
        if not name.endswith("asm") or "/" in name:
            raise HarnessError(f"external ASM {name!r}: names must end in 'asm'")
        path = os.path.join(self.asm_dir, name)
        if not os.access(path, os.X_OK):
            raise HarnessError(f"external ASM {name} is not in {self.asm_dir}")
        return path

    def plan(self, saveset: str) -> list[tuple[str, list[str]]]:
        """[(asm, [paths])] as save would run them for this save set."""
        jobs: list[tuple[str, list[str]]] = []
        self._walk(os.path.abspath(saveset), [], jobs)
        return jobs

    def _walk(self, d: str, inherited: list[Directive], jobs) -> None:
        directives = list(inherited)
        nsr = os.path.join(d, ".nsr")
        if os.path.isfile(nsr):
            with open(nsr, encoding="utf-8") as f:
                directives = parse_nsr(f.read()) + directives
        by_asm: dict[str, list[str]] = {}
        for name in sorted(os.listdir(d)):
            if name == ".nsr":
                continue
            full = os.path.join(d, name)
            hit = next((dv for dv in directives if any(_matches(p, name) for p in dv.patterns)), None)
            if hit is None:
                if os.path.isdir(full) and not os.path.islink(full):
                    self._walk(full, [dv for dv in directives if dv.inherit], jobs)
                continue                      # a plain file: uasm's, not ours
            if hit.asm in ("skip", "null", "nullasm"):
                continue
            by_asm.setdefault(hit.asm, []).append(full)
        for asm, paths in by_asm.items():
            jobs.append((asm, paths))

    def since(self, path: str, level: str) -> str | None:
        """The -t NetWorker passes for ``path`` at ``level``: the save time of its last
        save at a lower level (incr: any level; "1".."9": the last full here; full: none)."""
        if level == "full":
            return None
        times = [e.savetime for e in self.catalog.entries
                 if e.path == path and (level == "incr" or e.level == "full")]
        return str(max(times)) if times else None

    def save(self, savesets: list[str], level: str = "full", since: str | None = "auto") -> list[int]:
        """Run every ASM job of the save sets; returns their exit statuses.  ``since``
        "auto" passes -t as NetWorker does (:meth:`since`); a string passes it as is."""
        self.catalog.runs += 1
        statuses = []
        for ss in savesets:
            for asm, paths in self.plan(ss):
                savetime = int(time.time())
                t = self.since(paths[0], level) if since == "auto" else since
                argv = [self._asm_path(asm), "-s"] + (["-t", t] if t else []) + paths
                out = os.path.join(self.catalog.dir, f"ss{self.catalog.runs}-{len(self.catalog.entries)}.ss")
                with open(out, "wb") as f:
                    p = subprocess.run(argv, stdout=f, stderr=subprocess.PIPE, env=self.env)
                self.log.append(p.stderr.decode("utf-8", "replace"))
                statuses.append(p.returncode)
                if p.returncode not in (0, 1):
                    os.unlink(out)            # a failed save set is not in the catalog
                    continue
                for path in paths:
                    self.catalog.entries.append(SavedEntry(path, out, asm, level, self.catalog.runs, savetime))
        return statuses

    def savepnpc(self, resfile: str, savesets: list[str], **kw) -> dict:
        """precmd(s); if they all succeed the save sets, then pstcmd(s)."""
        with open(resfile, encoding="utf-8") as f:
            res = parse_res(f.read())
        done = {"precmd": [], "saves": [], "pstcmd": []}
        for cmd in res.get("precmd", []):
            p = subprocess.run(cmd, shell=True, env=self.env, capture_output=True)
            done["precmd"].append((cmd, p.returncode, p.stdout.decode(), p.stderr.decode()))
            if p.returncode != 0:
                return done                   # savepnpc exits; no save, no pstcmd
        done["saves"] = self.save(savesets, **kw)
        for cmd in res.get("pstcmd", []):
            p = subprocess.run(cmd, shell=True, env=self.env, capture_output=True)
            done["pstcmd"].append((cmd, p.returncode, p.stdout.decode(), p.stderr.decode()))
        return done

    # -- recover --------------------------------------------------------------------
    def recover(self, path: str, env: dict | None = None, answer: str = "Y") -> list[tuple[int, str]]:
        """recover -a -f path: every save set with an entry at, above or below ``path``,
        in the order taken, piped to its ASM in recover mode."""
        path = os.path.normpath(path)
        chosen: list[tuple[str, str]] = []
        hits = [e for e in self.catalog.entries
                if e.path == path or e.path.startswith(path + "/") or path.startswith(e.path + "/")]
        # the index's browse view is the last save: an entry that save no longer had (a
        # placeholder mkbackupdir removed: folder deleted or renamed) is not recovered
        last = max((e.taken for e in hits), default=0)
        present = {e.path for e in hits if e.taken == last}
        for e in hits:
            if e.path in present and (e.saveset, e.asm) not in chosen:
                chosen.append((e.saveset, e.asm))
        if not chosen:
            raise HarnessError(f"{path}: not in the index")
        out = []
        for saveset, asm in chosen:
            # recover hands the ASM the names it selected in the index: the path itself
            # when it lies inside an entry, else the entries of this save set below it
            # that the browse view shows
            names = [path] if any(e.saveset == saveset and path != e.path and path.startswith(e.path + "/")
                                  for e in hits) else \
                sorted({e.path for e in hits if e.saveset == saveset and e.path in present})
            if not names:
                continue
            with open(saveset, "rb") as f:
                p = subprocess.run([self._asm_path(asm), "-r", f"-i{answer}", *names], stdin=f,
                                   capture_output=True, env=dict(env or self.env))
            out.append((p.returncode, p.stderr.decode("utf-8", "replace")))
        return out

    def dump(self) -> str:
        return json.dumps([e.__dict__ for e in self.catalog.entries], indent=1)
