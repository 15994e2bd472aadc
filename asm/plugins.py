"""The plugin manager: loads the ``ims_asm`` entry points once, lazily.

``IMS_ASM_PLUGINS=classic,maildir,localdevices`` restricts loading to the named
entry points (the rest are ignored); unset or empty loads every one.
"""
from __future__ import annotations

import os
from importlib.metadata import entry_points

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


def get_manager() -> pluggy.PluginManager:
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(GROUP)
        pm.add_hookspecs(hookspecs)
        allowed = _allowed()
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            if allowed is not None and ep.name not in allowed:
                continue
            if pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin must not hide the rest
                raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
            pm.register(plugin, name=ep.name)
            pm._ims_dists = getattr(pm, "_ims_dists", {})
            pm._ims_dists[ep.name] = (ep.dist.name if ep.dist else "?",
                                      ep.dist.version if ep.dist else "?", ep.value)
        _pm = pm
    return _pm


def reset() -> None:
    """Forget the loaded plugins (tests use this after changing IMS_ASM_PLUGINS)."""
    global _pm
    _pm = None


def hook():
    return get_manager().hook


def loaded() -> list[tuple[str, str, str, str]]:
    """(entry point, distribution, version, module) for every loaded plugin."""
    pm = get_manager()
    info = getattr(pm, "_ims_dists", {})
    return [(name, *info.get(name, ("?", "?", "?"))) for name, _ in pm.list_name_plugin()]


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
