"""Helpers of the video tests: synthetic frames and clips encoded with PyAV."""
from __future__ import annotations

import fractions

import numpy as np


def pattern_frame(i: int, h: int, w: int) -> np.ndarray:
    """A smooth moving RGB pattern (lossy codecs keep it well): [h, w, 3] uint8."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin(2 * np.pi * (xx / w + i / 25))
    g = 128 + 100 * np.cos(2 * np.pi * (yy / h - i / 30))
    b = 128 + 90 * np.sin(2 * np.pi * ((xx + yy) / (w + h) + i / 20))
    return np.stack([r, g, b], -1).round().astype(np.uint8)


def encode_video(path, codec: str, n: int, w: int = 160, h: int = 120, fps: int = 25,
                 pts_ms=None) -> None:
    """Write ``n`` pattern frames with PyAV. ``pts_ms``: explicit (variable) timestamps in ms."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if codec == "libvpx-vp9":
            s.options = {"deadline": "realtime", "cpu-used": "8"}
        if pts_ms is not None:
            s.codec_context.time_base = fractions.Fraction(1, 1000)
        for i in range(n):
            f = av.VideoFrame.from_ndarray(pattern_frame(i, h, w), format="rgb24")
            if pts_ms is not None:
                f.pts, f.time_base = int(pts_ms[i]), fractions.Fraction(1, 1000)
            else:
                f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
