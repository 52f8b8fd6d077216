"""Module-level lazy attribute resolution (PEP 562), shared by the package __init__ files."""
from __future__ import annotations

import importlib


def lazy_module(module_name: str, mapping: dict[str, str]):
    """Return (__getattr__, __dir__) resolving ``mapping[name]`` (a submodule) on first use."""
    mod_globals = importlib.import_module(module_name).__dict__

    def __getattr__(name: str):
        target = mapping.get(name)
        if target is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(target), name)
        mod_globals[name] = value
        return value

    def __dir__():
        return sorted(set(mod_globals) | set(mapping))

    return __getattr__, __dir__
