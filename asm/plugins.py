"""The plugin manager: loads the ``ims_asm`` entry points once, lazily.

``IMS_ASM_PLUGINS=classic,maildir,localdevices`` restricts loading to the named
entry points (the rest are ignored); unset or empty loads every one.

The entry points are found as :func:`importlib.metadata.entry_points` finds them (the
first ``*.dist-info`` or ``*.egg-info`` directory of each distribution along
``sys.path``), by reading their ``entry_points.txt`` directly: importing
importlib.metadata (email, zipfile, pathlib, inspect, typing) was a third of a no-op
backup's start.  Where something only importlib.metadata understands is on the path
(a zip file or an egg on ``sys.path``, a meta-path finder that finds distributions of
its own), it is used instead.  ``imsplugins list`` reads the distributions' names and
versions with importlib.metadata, when asked.
"""
from __future__ import annotations

import os
import re
import sys
import types

import pluggy

from asm import hookspecs
from asm.config import ConfigError
from asm.errors import EXIT_USAGE

GROUP = "ims_asm"
_pm: pluggy.PluginManager | None = None


class PluginError(ConfigError):
    """A plugin that fails to load, or two plugins claiming the same name.  A kind of
    configuration error, so every command reports it in one line with EXIT_USAGE."""

    status = EXIT_USAGE


def _allowed() -> set[str] | None:
    raw = os.environ.get("IMS_ASM_PLUGINS", "").strip()
    if not raw:
        return None
    return {x.strip() for x in raw.split(",") if x.strip()}


# -- finding the entry points ----------------------------------------------------------

class EntryPoint:
    """One ``name = module[:attr]`` line of a distribution's ``[ims_asm]`` section."""

    # importlib.metadata.EntryPoint.pattern (Python 3.11), compiled when a value is more
    # than a module name
    PATTERN = r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$"

    def __init__(self, name: str, value: str, where, dist=None):
        self.name, self.value = name, value
        self._where = where          # the metadata directory (str), or None with dist
        self._dist = dist            # an importlib.metadata.Distribution, when it found this

    def load(self):
        import importlib
        if self.value.replace(".", "a").replace("_", "a").isalnum():     # [\w.]+ alone: a module
            return importlib.import_module(self.value)
        match = re.match(self.PATTERN, self.value)
        if match is None:
            raise ValueError(f"{self.value!r} is not 'module' or 'module:attribute'")
        obj = importlib.import_module(match.group("module"))
        for attr in filter(None, (match.group("attr") or "").split(".")):
            obj = getattr(obj, attr)
        return obj

    def distribution(self) -> tuple[str, str]:
        """(name, version) of the distribution that declares it."""
        dist = self._dist
        if dist is None and self._where is not None:
            import pathlib
            from importlib.metadata import PathDistribution
            dist = PathDistribution(pathlib.Path(self._where))
        if dist is None:
            return "?", "?"
        return dist.name or "?", dist.version or "?"


def _normalize(name: str) -> str:
    """importlib.metadata's Prepared.normalize: PEP 503 with dashes as underscores
    (``re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")``)."""
    name = name.lower().replace("-", "_").replace(".", "_")
    while "__" in name:
        name = name.replace("__", "_")
    return name


def _section(text: str, group: str) -> list[tuple[str, str]]:
    """The ``name = value`` pairs of ``[group]`` in an entry_points.txt, read as
    importlib.metadata reads it (stripped lines, '#' comments)."""
    out, name = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line.strip("[]")
            continue
        if name == group:
            key, sep, value = line.partition("=")
            if not sep:
                raise ValueError(f"{line!r} is not 'name = value'")
            out.append((key.strip(), value.strip()))
    return out


class _Unusual(Exception):
    """Something on the path only importlib.metadata knows how to read."""


def _scan(group: str, paths: list[str]) -> list[EntryPoint]:
    finder = getattr(sys.modules.get("_frozen_importlib_external"), "PathFinder", None)
    for f in sys.meta_path:
        if f is not finder and getattr(f, "find_distributions", None) is not None:
            raise _Unusual(f)
    seen: set[str] = set()
    out: list[EntryPoint] = []
    for entry in paths:
        if not isinstance(entry, str):
            raise _Unusual(entry)
        root = entry or "."
        try:
            children = os.listdir(root)
        except OSError:
            if os.path.exists(root):
                raise _Unusual(root) from None     # a zip file on sys.path
            continue
        if root.lower().endswith(".egg"):
            raise _Unusual(root)                    # an egg directory: its EGG-INFO
        for child in children:
            stem, dot, ext = child.rpartition(".")
            if not dot or ext.lower() not in ("dist-info", "egg-info"):
                continue
            if ext not in ("dist-info", "egg-info"):
                raise _Unusual(child)               # FOO.DIST-INFO: named by its metadata
            key = _normalize(stem.partition("-")[0])
            if key in seen:
                continue                            # the first one on the path wins
            seen.add(key)
            where = os.path.join(root, child)
            try:
                with open(os.path.join(where, "entry_points.txt"), "rb") as fh:
                    data = fh.read()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
                continue
            if group.encode() not in data:
                continue
            try:
                pairs = _section(data.decode("utf-8"), group)
            except ValueError as exc:               # UnicodeDecodeError included
                raise PluginError(f"{os.path.join(where, 'entry_points.txt')}: {exc}: reinstall "
                                  f"that distribution or remove it") from None
            out += [EntryPoint(name, value, where) for name, value in pairs]
    return out


def entry_points(group: str = GROUP) -> list[EntryPoint]:
    """Every entry point of ``group``, in the order importlib.metadata gives them."""
    try:
        return _scan(group, sys.path)
    except _Unusual:
        from importlib.metadata import entry_points as found
        return [EntryPoint(ep.name, ep.value, None, ep.dist) for ep in found(group=group)]


# -- the manager -------------------------------------------------------------------------

class _Manager(pluggy.PluginManager):
    """pluggy's manager, quicker to register a module: ``register`` asks
    :meth:`parse_hookimpl_opts` about every name in ``dir(plugin)`` (about 185 over the
    built-in plugins), and pluggy answers each with ``inspect.getattr_static``, which
    was most of the registering at every command's start.  A module's attribute that is
    plainly not a hook implementation (not a function, or a function without pluggy's
    ``ims_asm_impl`` marker) is answered here from the module's namespace, as pluggy
    would answer it; anything else (a marked function, other kinds of plugin) is left
    to pluggy."""

    def parse_hookimpl_opts(self, plugin, name: str):
        if type(plugin) is types.ModuleType:
            value = plugin.__dict__.get(name)
            if not isinstance(value, _HOOKABLE):
                return None                 # pluggy hooks only functions and methods
            if isinstance(value, types.FunctionType) and getattr(value, self.project_name + "_impl", None) is None:
                return None                 # a function without the marker
        return super().parse_hookimpl_opts(plugin, name)


_HOOKABLE = (types.FunctionType, types.MethodType, staticmethod, classmethod)


def get_manager() -> pluggy.PluginManager:
    global _pm
    if _pm is None:
        pm = _Manager(GROUP)
        pm.add_hookspecs(hookspecs)
        allowed = _allowed()
        pm._ims_eps = {}
        eps = entry_points(GROUP)
        unknown = sorted(allowed - {ep.name for ep in eps}) if allowed is not None else []
        if unknown:      # a misspelt name must not read later as "no plugin can open FILE"
            raise PluginError(f"IMS_ASM_PLUGINS names no installed plugin {', '.join(map(repr, unknown))}: "
                              f"use names from {', '.join(sorted({ep.name for ep in eps}))} "
                              f"(or unset it to load every one)")
        for ep in sorted(eps, key=lambda e: e.name):
            if allowed is not None and ep.name not in allowed:
                continue
            if pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin must not hide the rest
                raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
            pm.register(plugin, name=ep.name)
            pm._ims_eps[ep.name] = ep
        _pm = pm
    return _pm


def installed() -> set[str]:
    """The names of every installed plugin (its entry point), loaded or not: a plugin's
    options in msg.conf are named ``<name>.<option>``."""
    return {ep.name for ep in entry_points(GROUP)}


def is_loaded(name: str) -> bool:
    return get_manager().get_plugin(name) is not None


def reset() -> None:
    """Forget the loaded plugins (tests use this after changing IMS_ASM_PLUGINS)."""
    global _pm
    _pm = None


def hook():
    return get_manager().hook


def loaded() -> list[tuple[str, str, str, str]]:
    """(entry point, distribution, version, module) for every loaded plugin."""
    pm = get_manager()
    eps = getattr(pm, "_ims_eps", {})
    out = []
    for name, _ in pm.list_name_plugin():
        ep = eps.get(name)
        out.append((name, *ep.distribution(), ep.value) if ep is not None else (name, "?", "?", "?"))
    return out
# -- thin typed wrappers so the core reads as plain calls -----------------------

def store_factories() -> dict:
    out: dict = {}
    for answer in hook().ims_store_drivers():
        for name, factory in (answer or {}).items():
            if name in out:
                raise PluginError(f"two plugins offer the store driver {name!r}")
            out[name] = factory
    return out


def commands() -> dict:
    out: dict = {}
    for answer in hook().ims_commands():
        out.update(answer or {})
    return out


def run_start(run) -> None:
    hook().ims_run_start(run=run)


def mailbox_done(run, mailbox: str, result: dict) -> None:
    hook().ims_mailbox_done(run=run, mailbox=mailbox, result=result)


def run_end(run, status: int) -> None:
    hook().ims_run_end(run=run, status=status)
