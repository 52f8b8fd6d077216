"""Case 9: a video in which no face is ever found gets its table (one row per frame,
face_found false, predictions NaN) and a warning in the summary and the manifest; exit 0."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from predict_support import face_frames, make_bundle, write_video


def test_no_face_video_gets_a_table(tmp_path, capsys):
    from affaccel.predict import main

    video = write_video(tmp_path / "wall.mp4", face_frames(12, face=False))
    out = tmp_path / "out"
    rc = main([str(video), "--bundle", str(make_bundle(tmp_path / "b.pt")), "--out", str(out),
               "--no-progress", "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0
    df = pd.read_csv(out / "wall.csv")
    assert len(df) == 12 and not df["face_found"].any()
    np.testing.assert_array_equal(df["frame"], np.arange(12))
    assert df[["valence", "arousal", "AU1"]].isna().all().all()
    (entry,) = json.loads((out / "manifest.json").read_text())["inputs"]
    assert entry["status"] == "no_face" and any("no face" in w for w in entry["warnings"])
    assert "warning:" in text and "no face found" in text and "1 of 1 videos done" in text
