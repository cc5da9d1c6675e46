"""Modules imported at first use: commands that read no memory rows and load no model
(`clara info`, `search --retriever bm25`, `verify`, `gc`, `--help`) start without torch."""

from __future__ import annotations

import importlib
from types import ModuleType


class LazyModule:
    """Stands for a module until an attribute is first read, then imports it."""

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


torch = LazyModule("torch")
