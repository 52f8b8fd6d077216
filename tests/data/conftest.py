"""Shared fixture of the data tests: the "tiny" synthetic preset, generated once per session."""
from __future__ import annotations

import time

import pytest


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory):
    """(path, generation seconds) of a fresh "tiny" synthetic set (seed 0)."""
    from affaccel.data.synthetic import PRESETS, generate

    out = tmp_path_factory.mktemp("synthetic") / "tiny"
    t0 = time.perf_counter()
    generate(out, seed=0, preset="tiny", workers=2, progress=False, **PRESETS["tiny"])
    return out, time.perf_counter() - t0
