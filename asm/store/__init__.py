"""Store drivers behind one logical view; see :mod:`asm.store.base`."""
from __future__ import annotations

from asm.config import Config, ConfigError
from asm.store.base import Store


def open_store(config: Config) -> Store:
    """The store named by ``store.driver``, built by whichever plugin offers it."""
    from asm import plugins
    factories = plugins.store_factories()
    name = config.driver
    if name not in factories:
        known = ", ".join(sorted(factories)) or "none"
        raise ConfigError(f"store.driver is {name!r} but no loaded plugin offers it "
                          f"(loaded drivers: {known}; check IMS_ASM_PLUGINS)")
    return factories[name](config)
