"""Store drivers behind one logical view; see :mod:`asm.store.base`."""
from __future__ import annotations

import inspect

from asm.config import Config, ConfigError
from asm.store.base import Store


def open_store(config: Config, create: bool = True) -> Store:
    """The store named by ``store.driver``, built by whichever plugin offers it.

    ``create`` False is for commands that only read: the driver then makes nothing on
    disk (a mistyped IMS_HOME must not become a new, empty store).  A factory that
    takes no ``create`` argument is called with the configuration alone.
    """
    from asm import plugins
    factories = plugins.store_factories()
    name = config.driver
    if name not in factories:
        known = ", ".join(sorted(factories)) or "none"
        where = f": {config.path} names it" if "store.driver" in config.values else ""
        raise ConfigError(f"store.driver is {name!r} but no loaded plugin offers it{where}; "
                          f"loaded drivers: {known} (check IMS_ASM_PLUGINS)")
    factory = factories[name]
    try:
        takes_create = "create" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_create = False
    return factory(config, create=create) if takes_create else factory(config)
