"""The video front end on the built-in synthetic set's own files (raw VP9/H.264 videos with
ground-truth boxes, cropped_aligned JPEGs): decoders agree, loaders and crops agree."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from affaccel.video.crop import crop_faces_dali, crop_faces_ref
from affaccel.video.decode import probe_video, read_video
from affaccel.video.frames import FrameLoader, clip_preprocess_ref


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from affaccel.data import synthetic
    root = synthetic.generate(tmp_path_factory.mktemp("synth") / "set", n_train=1, n_val=1,
                              n_frames=(24, 24), raw_videos=1, workers=1, progress=False)
    manifest = json.loads((root / "synthetic.json").read_text())
    (source, raw), = manifest["raw_videos"].items()
    return root, raw


def test_dali_and_pyav_agree_on_synthetic_vp9(synth):
    root, raw = synth
    path = root / raw["webm"]
    assert probe_video(path).codec == "vp9"
    fa, ta = read_video(path, backend="pyav")
    fd, td = read_video(path, backend="dali")
    assert fa.shape == fd.shape == (raw["n_frames"], raw["size"][1], raw["size"][0], 3)
    np.testing.assert_array_equal(ta, td)
    # WebM keeps times in milliseconds: i / 30 s rounded to 1 ms
    np.testing.assert_allclose(ta, np.arange(raw["n_frames"]) / raw["fps"], atol=5e-4)
    d = np.abs(fa.astype(np.int16) - fd.astype(np.int16))
    assert d.mean() < 2.0 and np.percentile(d, 99) <= 12, (d.mean(), d.max())  # measured 1.33, 7


def test_h264_twin_decodes_to_the_same_frames(synth):
    root, raw = synth
    f264, t264 = read_video(root / raw["mp4"])
    f9, t9 = read_video(root / raw["webm"])
    assert f264.shape == f9.shape
    np.testing.assert_allclose(t264, t9, atol=5e-4)  # MP4 exact, WebM in ms
    # two lossy encodings of the same render: close, not equal
    assert np.abs(f264.astype(np.int16) - f9.astype(np.int16)).mean() < 6


def test_crops_of_ground_truth_boxes(synth):
    root, raw = synth
    frames, _ = read_video(root / raw["webm"])
    (box_file,) = raw["boxes"].values()
    with open(root / box_file) as f:
        rows = list(csv.DictReader(f))
    # the box file lists the frames that show a face; the others are NaN rows (no face)
    boxes = np.full((len(frames), 4), np.nan)
    for r in rows:
        boxes[int(r["frame"])] = [float(r[k]) for k in "xywh"]
    has_face = np.isfinite(boxes).all(1)
    assert 0 < has_face.sum() <= len(frames)
    ref, v_ref = crop_faces_ref(frames, boxes, 112, expand=1.1)
    got, v = crop_faces_dali(frames, boxes, 112, expand=1.1)
    assert v_ref.tolist() == v.tolist() == has_face.tolist()
    assert (got[~v] == 0).all()
    assert (got - ref).abs().max() < 0.05 and (got - ref).abs().mean() < 1e-3


def test_frame_loader_on_cropped_aligned(synth):
    root, _ = synth
    paths = sorted(str(p) for p in (root / "cropped_aligned").rglob("*.jpg"))
    assert len(paths) > 10
    ref = clip_preprocess_ref(paths, 224)
    batches = list(FrameLoader(paths, batch_size=16, image_size=224, backend="dali"))
    got = torch.cat([b["images"] for b in batches])
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(len(paths)))
    diff = (got - ref).abs()
    assert diff.max() < 0.03 and diff.mean() < 0.005, (diff.max(), diff.mean())
