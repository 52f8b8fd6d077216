"""Fixtures of the video tests: small VP9 / H.264 / variable-frame-rate clips (made once)."""
from __future__ import annotations

import numpy as np
import pytest

from _video_media import encode_video

NO_DALI = ("nvidia-dali is not installed (the lent GPU image has none and a device call cannot "
           "carry its ~0.5 GB; docs/gpu.md says how to add it where a machine has it)")


@pytest.fixture
def dali():
    """Skip (with the reason) where DALI is absent: GPU tests of the DALI backends."""
    from affaccel.video.decode import dali_available

    if not dali_available():
        pytest.skip(NO_DALI)


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    """Paths of the test clips (made once per session)."""
    d = tmp_path_factory.mktemp("media")
    out = {}
    out["vp9"] = d / "clip.webm"
    encode_video(out["vp9"], "libvpx-vp9", 40)
    out["h264"] = d / "clip.mp4"
    encode_video(out["h264"], "libx264", 30)
    vfr_ms = np.cumsum([0, 40, 40, 100, 20, 20, 60, 40, 200, 40, 33, 34, 33, 80, 40, 40, 20, 40])
    out["vfr_ms"] = vfr_ms
    out["vfr"] = d / "vfr.webm"
    encode_video(out["vfr"], "libvpx-vp9", len(vfr_ms), pts_ms=vfr_ms)
    out["vfr_mp4"] = d / "vfr.mp4"
    encode_video(out["vfr_mp4"], "libx264", len(vfr_ms), pts_ms=vfr_ms)
    return out
