"""Case 1: a corrupt or truncated frame image is reported by path and treated like a missing
frame (neighbour's feature, masked), in stage 1 (loader + loss mask), stage 2 (extraction) and
through the extract command line, where it used to kill the process (SIGSEGV, exit 139)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from affaccel.config import TINY_MODEL, ClipConfig
from affaccel.nn.clip import build_encoder
from affaccel.stages.features import FeatureCache, extract_features
from affaccel.video.frames import FrameLoader

from clip_fixtures import make_video

N = 12
BAD = {0: "garbage", 5: "truncated", N - 1: "truncated"}   # start, middle, end


def _break(paths):
    for i, kind in BAD.items():
        p = Path(paths[i])
        raw = p.read_bytes()
        p.write_bytes(b"\xff\xd8\xff\xe0 garbage" + bytes(64) if kind == "garbage" else raw[:len(raw) // 2])


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    good = make_video(root, "good", "train", 7, seed=1)
    bad = make_video(root, "bad", "train", N, seed=2)
    _break(bad.frame_paths)
    return good, bad


def test_structural_check_sees_truncation_and_garbage(broken):
    from affaccel.video.frames import image_problem

    _, bad = broken
    for i, p in enumerate(bad.frame_paths):
        assert (image_problem(np.fromfile(p, np.uint8)) is not None) == (i in BAD), p


@pytest.mark.parametrize("backend", ["dali", "pil"])
@pytest.mark.parametrize("train", [False, True])
def test_loader_flags_bad_frames(broken, backend, train):
    _, bad = broken
    labels = np.arange(N)
    loader = FrameLoader([str(p) for p in bad.frame_paths], labels=labels, batch_size=5,
                         image_size=32, train=train, backend=backend)
    batches = list(loader)
    index = torch.cat([b["index"] for b in batches]).numpy()
    ok = torch.cat([b["ok"] for b in batches]).numpy()
    assert sorted(index.tolist()) == list(range(N))
    assert {int(i) for i in index[~ok]} == set(BAD)
    assert sorted(loader.bad) == sorted(str(bad.frame_paths[i]) for i in BAD)


def test_stage1_loss_ignores_bad_frames(broken):
    from affaccel.stages.finetune import _mask_undecoded, _no_labels

    lab = torch.zeros((3, _no_labels(1).shape[1]))
    out = _mask_undecoded({"labels": lab, "ok": torch.tensor([True, False, True])})
    assert out[1, 0] == -1 and torch.isnan(out[1]).any() and (out[[0, 2]] == 0).all()


@pytest.mark.parametrize("backend", ["dali", "pil"])
def test_extraction_masks_bad_frames(broken, tmp_path, backend):
    good, bad = broken
    enc = build_encoder(ClipConfig(model_name=TINY_MODEL)).eval()
    cache = FeatureCache.for_encoder(tmp_path, enc)
    out = extract_features([good, bad], enc, cache, batch_size=4, progress=False,
                           backend="reference" if backend == "pil" else backend)
    assert sorted(out["extracted"]) == ["bad", "good"] and not out["failed"]
    f = np.asarray(cache.load_features("bad"), np.float32)
    assert cache.bad_frames("bad").tolist() == sorted(BAD)
    np.testing.assert_array_equal(f[0], f[1])        # leading bad frame: the first good one
    np.testing.assert_array_equal(f[5], f[4])        # middle: the previous one
    np.testing.assert_array_equal(f[N - 1], f[N - 2])
    (rec,) = cache.mask_bad_frames([bad])
    assert np.nonzero(~rec.frame_present)[0].tolist() == sorted(BAD)


def test_extract_cli_survives_corrupt_jpegs(tmp_path):
    """The command line over an Aff-Wild2-layout set (DALI when installed): exit 0, every video
    extracted, bad files named on stderr."""
    from affaccel.data.synthetic import ensure_synthetic

    root = Path(ensure_synthetic("tiny", root=tmp_path / "data", progress=False))
    data = tmp_path / "copy"
    shutil.copytree(root, data)
    vdir = sorted((data / "cropped_aligned").iterdir())[0]
    files = sorted(str(p) for p in vdir.glob("*.jpg"))[:N]
    _break(files)
    env = dict(os.environ, AFFACCEL_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-m", "affaccel.extract", "--data-root", str(data), "--quiet",
                           "--cache", str(tmp_path / "cache"), "--batch-size", "64"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "failed 0" in proc.stderr
    for i in BAD:
        assert f"{vdir.name}/{Path(files[i]).name}: cannot decode image" in proc.stderr


class _Stop(Exception):
    pass


@pytest.mark.parametrize("backend", ["pil", "dali"])
def test_train_frames_backend_reaches_both_stages(tmp_path, monkeypatch, backend):
    """``train --frames-backend`` is the decoder of stage 1 (fine-tuning) and of stage 2
    (extraction); each stage is stopped at its entry once the choice is seen."""
    import affaccel.stages.features as features
    import affaccel.stages.finetune as finetune
    from affaccel.train import main

    seen = {}

    def fake_finetune(records, cfg, *a, **k):
        seen["stage1"] = cfg.backend
        raise _Stop

    def fake_extract(records, encoder, cache, **k):
        seen["stage2"] = k.get("backend")
        raise _Stop

    monkeypatch.setenv("AFFACCEL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(finetune, "finetune", fake_finetune)
    monkeypatch.setattr(features, "extract_features", fake_extract)
    base = ["--synthetic", "tiny", "--preset", "tiny", "--quiet", "--frames-backend", backend]
    with pytest.raises(_Stop):
        main(base)
    with pytest.raises(_Stop):
        main([*base, "--no-finetune"])
    assert seen == {"stage1": backend, "stage2": backend}


def test_frames_backend_dali_without_dali_is_an_argument_error(monkeypatch, capsys):
    import affaccel.video.decode as decode
    from affaccel.extract import main as extract
    from affaccel.finetune import main as finetune
    from affaccel.train import main as train

    monkeypatch.setattr(decode, "dali_available", lambda: False)
    for cmd in (train, extract, finetune):
        assert cmd(["--frames-backend", "dali"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --frames-backend dali: NVIDIA DALI is not installed") and err.count("\n") == 1
