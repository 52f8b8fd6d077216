"""Shared fixture of the data tests: the "tiny" synthetic preset, generated once per session."""
from __future__ import annotations

import json

import pytest


def generation_work(root) -> dict:
    """What building a synthetic set cost, counted from what it wrote: face crops (JPEG),
    raw-video frames (each encoded once per container) and raw-video files."""
    m = json.loads((root / "synthetic.json").read_text())
    raw = m["raw_videos"].values()
    return dict(
        face_crops=sum(1 for _ in (root / "cropped_aligned").glob("*/*.jpg")),
        crop_size=m["image_size"],
        raw_frames=sum(r["n_frames"] for r in raw),
        raw_files=sum(1 for r in raw for c in ("mp4", "webm") if c in r),
        video_size=tuple(m["video_size"]),
    )


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory):
    """(path, work) of a fresh "tiny" synthetic set (seed 0); work: :func:`generation_work`."""
    from affaccel.data.synthetic import PRESETS, generate

    out = tmp_path_factory.mktemp("synthetic") / "tiny"
    generate(out, seed=0, preset="tiny", workers=2, progress=False, **PRESETS["tiny"])
    return out, generation_work(out)
