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

# Entry points affaccel.segments calls; an extension built from older sources lacks some.
REQUIRED = ("gather_windows", "assemble_windows", "assemble_windows_batch", "average",
            "overlap_average", "env_flag", "set_parallel_min_bytes", "pool_stats")


class ExtensionUnavailable(ImportError):
    pass


@lru_cache(maxsize=1)
def _load():
    try:
        mod = importlib.import_module("affaccel._C")
    except ImportError as e:  # missing or built for another Python
        return None, str(e)
    missing = [name for name in REQUIRED if not hasattr(mod, name)]
    if missing:
        return None, f"{mod.__file__} was built from older sources (no {', '.join(missing)})"
    return mod, None


def available() -> bool:
    # Called on every segments call: AFFACCEL_DISABLE_EXT is read with getenv in the extension
    # (by env.flag's rules; ~0.1 us against ~2 us through os.environ).
    mod = _load()[0]
    return mod is not None and not mod.env_flag("AFFACCEL_DISABLE_EXT")


def load():
    """The extension module, or ExtensionUnavailable with instructions to rebuild it."""
    mod, err = _load()
    if mod is not None and not mod.env_flag("AFFACCEL_DISABLE_EXT"):
        return mod
    if mod is not None or env.extension_disabled():
        raise ExtensionUnavailable(REBUILD_HINT.format(reason="disabled by AFFACCEL_DISABLE_EXT=1"))
    raise ExtensionUnavailable(REBUILD_HINT.format(reason=err))


def load_error() -> str | None:
    return _load()[1]
