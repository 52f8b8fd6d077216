"""--int8 on the command lines (affaccel.cli_encoder): off by default, CPU only, predict and
extract run with the int8 encoder, int8 features get their own cache folder."""
from __future__ import annotations

import types

import numpy as np
import pytest

from predict_support import face_frames, make_bundle, write_video


def test_int8_is_off_by_default_in_both_parsers():
    from affaccel.predict import build_parser

    assert build_parser().parse_args(["v.mp4", "--out", "o"]).int8 is False
    assert build_parser().parse_args(["v.mp4", "--out", "o", "--int8"]).int8 is True


def test_int8_refused_off_the_cpu():
    from affaccel.cli_encoder import apply_encoder_arguments, check_int8

    fake = types.SimpleNamespace(encoder=object(), device=types.SimpleNamespace(type="cuda"))
    with pytest.raises(ValueError, match="CPU only"):
        apply_encoder_arguments(types.SimpleNamespace(int8=True), fake)
    assert apply_encoder_arguments(types.SimpleNamespace(int8=False), fake) is fake
    check_int8(True, "cpu")
    with pytest.raises(ValueError, match="--device cpu"):
        check_int8(True, "cuda:0")


def test_predict_int8_close_to_fp32(tmp_path):
    import pandas as pd

    from affaccel.predict import main

    video = write_video(tmp_path / "v.mp4", face_frames(40))
    bundle = make_bundle(tmp_path / "b.pt")
    tables = {}
    for name, extra in (("fp32", []), ("int8", ["--int8"])):
        rc = main([str(video), "--bundle", str(bundle), "--out", str(tmp_path / name),
                   "--no-progress", "--device", "cpu", *extra])
        assert rc == 0
        tables[name] = pd.read_csv(tmp_path / name / "v.csv")
    a, b = tables["fp32"], tables["int8"]
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == 40
    cols = [c for c in a.columns if c.startswith(("valence", "arousal", "p_", "au"))
            and a[c].dtype.kind == "f"]
    assert cols
    diff = np.nanmax(np.abs(a[cols].to_numpy() - b[cols].to_numpy()))
    assert 0 < diff < 5e-2, diff        # int8's own tolerance on predictions (tiny random model)


def test_extract_int8_own_cache_folder(tmp_path):
    from affaccel.data.synthetic import ensure_synthetic
    from affaccel.extract import main

    root = ensure_synthetic("tiny")
    dirs = []
    for extra in ([], ["--int8"]):
        rc = main(["--data-root", str(root), "--cache", str(tmp_path / "cache"), "--splits", "val",
                   "--device", "cpu", "--quiet", *extra])
        assert rc == 0
        dirs = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert len(dirs) == 2                                   # fp32 and int8 entries apart
    assert main(["--data-root", str(root), "--cache", str(tmp_path / "c2"), "--int8",
                 "--device", "cuda"]) == 2
