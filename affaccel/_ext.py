"""Lazy loading of the compiled extension affaccel._C."""
from __future__ import annotations

import importlib
from functools import lru_cache

from . import env

REBUILD_HINT = (
    "the compiled extension affaccel._C is not available ({reason}). Rebuild it from the "
    "repository root with `pip install .` (or `pip install -e .` for development); this needs "
    "a C++17 compiler (e.g. `apt-get install g++`)."
)


class ExtensionUnavailable(ImportError):
    pass


@lru_cache(maxsize=1)
def _load():
    try:
        return importlib.import_module("affaccel._C"), None
    except ImportError as e:  # missing or built for another Python
        return None, str(e)


def available() -> bool:
    return not env.extension_disabled() and _load()[0] is not None


def load():
    """The extension module, or ExtensionUnavailable with instructions to rebuild it."""
    if env.extension_disabled():
        raise ExtensionUnavailable(REBUILD_HINT.format(reason="disabled by AFFACCEL_DISABLE_EXT=1"))
    mod, err = _load()
    if mod is None:
        raise ExtensionUnavailable(REBUILD_HINT.format(reason=err))
    return mod


def load_error() -> str | None:
    return _load()[1]
