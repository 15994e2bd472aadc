"""The ``classic`` entry point: the classic store driver's plugin hook.

Every command loads every plugin, so registering the driver imports nothing of it:
:mod:`asm.store.classic` (and sqlite3) is imported when a classic store is opened.
"""
from asm.hookspecs import hookimpl


def open_classic_store(config, create: bool = True):
    """The classic driver (:class:`asm.store.classic.ClassicStore`)."""
    from asm.store.classic import ClassicStore
    return ClassicStore(config, create)


@hookimpl
def ims_store_drivers():
    return {"classic": open_classic_store}
