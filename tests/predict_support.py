"""Shared helpers of the inference tests: a tiny real bundle and small face videos."""
from __future__ import annotations

from pathlib import Path

import numpy as np

WINDOW, STRIDE = 32, 16


def make_bundle(path: Path, tasks=("va", "expr", "au"), seed: int = 0) -> Path:
    """A bundle of a random-init tiny CLIP encoder and tiny temporal models, written through
    bundle.save_bundle (the same file a training run writes)."""
    import torch

    from affaccel.bundle import save_bundle
    from affaccel.config import TINY_MODEL, ClipConfig, WindowConfig, make_config
    from affaccel.nn.clip import build_encoder
    from affaccel.nn.temporal import TemporalModel

    torch.manual_seed(seed)
    enc = build_encoder(ClipConfig(model_name=TINY_MODEL, init_seed=seed))
    entries = {}
    for t in tasks:
        cfg = make_config(t, "tiny", window={"window": WINDOW, "stride": STRIDE},
                          model={"in_dim": enc.feature_dim})
        entries[t] = (TemporalModel(cfg.model).eval(), cfg, {})
    return save_bundle(path, window=WindowConfig(WINDOW, STRIDE), tasks=entries, encoder=enc)


def portrait(size=(100, 117)) -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.array(Image.open(f).convert("RGB").resize(size))


def face_frames(n: int, width: int = 320, height: int = 240, face: bool = True,
                hidden=()) -> np.ndarray:
    """[n, H, W, 3] uint8: a portrait sliding right on a grey-green scene (no face in frames
    listed in ``hidden``, nor anywhere when face=False)."""
    rng = np.random.default_rng(0)
    scene = np.empty((height, width, 3), np.uint8)
    scene[:] = (110, 130, 120)
    scene[:, : width // 3] = (150, 120, 100)
    frames = np.repeat(scene[None], n, 0)
    frames = np.clip(frames + rng.integers(-4, 5, frames.shape), 0, 255).astype(np.uint8)
    if face:
        p = portrait()
        for i in range(n):
            if i in hidden:
                continue
            x = 40 + (2 * i) % (width - 150)
            frames[i, 60:60 + p.shape[0], x:x + p.shape[1]] = p
    return frames


def write_video(path: Path, frames: np.ndarray, codec: str = "libx264", fps: int = 25,
                pts=None) -> Path:
    """Encode frames with PyAV. pts: presentation times in milliseconds (variable frame rate)."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if pts is not None:
            s.codec_context.time_base = Fraction(1, 1000)
            s.time_base = Fraction(1, 1000)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            if pts is not None:
                vf.pts, vf.time_base = int(pts[i]), Fraction(1, 1000)
            for pkt in s.encode(vf):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def two_people_cut_frames(n1: int = 40, n2: int = 40, width: int = 320,
                          height: int = 240) -> np.ndarray:
    """[n1 + n2, H, W, 3] uint8 with a scene cut at frame n1. Scene 1: the speaker (large
    portrait, left) and a smaller background face (right) on a grey-green room. Scene 2 (another
    room, warmer colours): the background person in close-up where the speaker was, so that a
    tracker that ignores the cut carries the speaker's track on to them."""
    rng = np.random.default_rng(1)
    big, small = portrait(), portrait((80, 94))[:, ::-1]
    scenes = []
    for k, (colour, left) in enumerate((((110, 130, 120), (150, 120, 100)),
                                        ((200, 170, 60), (90, 40, 40)))):
        n = n1 if k == 0 else n2
        scene = np.empty((height, width, 3), np.uint8)
        scene[:] = colour
        scene[:, 2 * width // 3:] = left
        f = np.repeat(scene[None], n, 0)
        f = np.clip(f + rng.integers(-4, 5, f.shape), 0, 255).astype(np.uint8)
        for i in range(n):
            x = 40 + i % 8
            if k == 0:
                f[i, 60:60 + big.shape[0], x:x + big.shape[1]] = big
                f[i, 30:30 + small.shape[0], 225:225 + small.shape[1]] = small
            else:
                close = big[:, ::-1]
                f[i, 60:60 + close.shape[0], x:x + close.shape[1]] = close
        scenes.append(f)
    return np.concatenate(scenes)
