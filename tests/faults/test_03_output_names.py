"""Case 3: outputs of one predict call never overwrite each other (a/x.avi, b/x.mp4, x_1.mp4),
and the input -> output mapping is in the summary and in <out>/manifest.json."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from predict_support import face_frames, make_bundle, write_video


def test_colliding_names_give_three_tables(tmp_path, capsys):
    from affaccel.predict import main

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    vids = [write_video(tmp_path / "a" / "x.avi", face_frames(5)),
            write_video(tmp_path / "b" / "x.mp4", face_frames(7)),
            write_video(tmp_path / "x_1.mp4", face_frames(9))]
    out = tmp_path / "out"
    rc = main([*map(str, vids), "--bundle", str(make_bundle(tmp_path / "b.pt")), "--out", str(out),
               "--no-progress", "--device", "cpu"])
    text = capsys.readouterr().out
    assert rc == 0
    tables = sorted(out.glob("*.csv"))
    assert len(tables) == 3
    manifest = json.loads((out / "manifest.json").read_text())["inputs"]
    assert [m["input"] for m in manifest] == [str(v) for v in vids]
    lengths = {}
    for m in manifest:
        (table,) = m["outputs"]
        lengths[m["input"]] = len(pd.read_csv(table))
        assert Path(table).name in text          # the summary shows where each input went
    # (AVI timing drops the first B-frames of the H.264 stream: fewer rows, still its own table)
    assert lengths[str(vids[1])] == 7 and lengths[str(vids[2])] == 9 and 0 < lengths[str(vids[0])] <= 5
    assert "3 of 3 videos done" in text
