"""Modules imported on first use, so that a command's start pays only for what it runs.

``layout_mod = lazy.module("asm.store.layout")`` binds a name that imports the module
the first time one of its attributes is read (``layout_mod.LayoutError`` in an except
clause included) and is that module from then on.
"""
from __future__ import annotations

import importlib


class module:
    """A stand-in for the module ``name``, imported at its first attribute access."""

    __slots__ = ("_name",)

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)

    def __setattr__(self, attr: str, value) -> None:    # monkeypatching in tests reaches the module
        setattr(importlib.import_module(self._name), attr, value)

    def __delattr__(self, attr: str) -> None:
        delattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"
