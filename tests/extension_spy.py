"""A stand-in for ``affaccel._C`` that counts every call by name (segments tests use it to check
that the C++ engine, not the NumPy reference, ran)."""
from __future__ import annotations

import collections


class CountingExtension:
    """Wraps the extension module; ``calls``: function name -> number of calls."""

    def __init__(self, mod):
        self._mod = mod
        self.calls = collections.Counter()

    def __getattr__(self, name):
        fn = getattr(self._mod, name)
        if not callable(fn):
            return fn

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return fn(*args, **kwargs)
        return counted
