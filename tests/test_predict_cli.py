"""python -m affaccel.predict: outputs per format, plots, bad videos reported, exit codes."""
from __future__ import annotations

import subprocess
import sys

import pytest

from predict_support import face_frames, make_bundle, write_video


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    good = write_video(d / "good.mp4", face_frames(20))
    short = write_video(d / "short.webm", face_frames(6), "libvpx-vp9")
    noface = write_video(d / "noface.mp4", face_frames(8, face=False))
    bad = d / "bad.mp4"
    bad.write_text("this is not a video\n")
    return {"bundle": make_bundle(d / "b.pt"), "good": good, "short": short, "noface": noface,
            "bad": bad, "dir": d}


def _run(args):
    from affaccel.predict import main

    return main([str(a) for a in args] + ["--no-progress", "--device", "cpu"])


def test_csv_and_plot_for_good_videos(setup, tmp_path, capsys):
    import pandas as pd

    from affaccel.inference.table import schema_columns

    rc = _run([setup["good"], setup["short"], "--bundle", setup["bundle"], "--out", tmp_path,
               "--plot"])
    out = capsys.readouterr().out
    assert rc == 0
    df = pd.read_csv(tmp_path / "good.csv")
    assert list(df.columns) == schema_columns(("va", "expr", "au")) and len(df) == 20
    assert len(pd.read_csv(tmp_path / "short.csv")) == 6          # shorter than a window
    for name in ("good.png", "short.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2 of 2 videos done, 26 frames" in out and "frames/s" in out


def test_bad_videos_are_reported_and_the_others_finish(setup, tmp_path, capsys):
    rc = _run([setup["bad"], setup["good"], setup["noface"], "--bundle", setup["bundle"],
               "--out", tmp_path, "--format", "parquet"])
    cap = capsys.readouterr()
    assert rc == 1
    import pandas as pd

    assert len(pd.read_parquet(tmp_path / "good.parquet")) == 20
    assert not (tmp_path / "bad.parquet").exists()
    assert f"failed: {setup['bad']}: VideoDecodeError: not a readable video container" in cap.out
    # no face: a table with the face marked absent and a warning, not a failure (tests/faults)
    assert not pd.read_parquet(tmp_path / "noface.parquet")["face_found"].any()
    assert f"warning: {setup['noface']}: no face found in any of its 8 frames" in cap.out
    assert "2 of 3 videos done" in cap.out


def test_abaw_files_with_boxes(setup, tmp_path):
    from affaccel.tasks import ACTION_UNITS, EXPRESSIONS

    boxes = setup["dir"] / "good.boxes.csv"
    rows = ["frame,x,y,w,h"] + [f"{t},50,40,150,150" for t in range(20) if t not in (3, 4)]
    boxes.write_text("\n".join(rows) + "\n")
    rc = _run([setup["good"], "--bundle", setup["bundle"], "--out", tmp_path, "--format", "abaw",
               "--boxes", boxes])
    assert rc == 0
    va = (tmp_path / "VA" / "good.txt").read_text().splitlines()
    ex = (tmp_path / "EXPR" / "good.txt").read_text().splitlines()
    au = (tmp_path / "AU" / "good.txt").read_text().splitlines()
    assert va[0] == "valence,arousal" and ex[0] == ",".join(EXPRESSIONS)
    assert au[0] == ",".join(ACTION_UNITS)
    assert len(va) == len(ex) == len(au) == 21
    assert va[4] == va[5] == "-5,-5" and ex[4] == "-1" and au[5] == ",".join(["-1"] * 12)
    v, a = map(float, va[1].split(","))
    assert -1 <= v <= 1 and -1 <= a <= 1
    assert 0 <= int(ex[1]) < 8 and set(au[1].split(",")) <= {"0", "1"}


def test_argument_errors_exit_2(setup, tmp_path, capsys):
    assert _run([setup["good"], "--bundle", tmp_path / "missing.pt", "--out", tmp_path]) == 2
    assert "missing.pt: no such file" in capsys.readouterr().err
    assert _run([setup["good"], setup["short"], "--bundle", setup["bundle"], "--out", tmp_path,
                 "--boxes", setup["dir"] / "x.csv"]) == 2
    assert "1 files for 2 videos" in capsys.readouterr().err


def test_module_entry_point_exit_code(setup, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "affaccel.predict", str(setup["bad"]),
                           "--bundle", str(setup["bundle"]), "--out", str(tmp_path),
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "not a readable video container" in proc.stdout


def test_output_names_and_box_folder(tmp_path):
    from affaccel.inference.writers import output_names
    from affaccel.predict import resolve_boxes

    assert output_names(["a/x.mp4", "b/x.mp4", "y.webm", "c/x.mkv"]) == ["x", "x_1", "y", "x_2"]
    (tmp_path / "x.boxes.csv").write_text("frame,x,y,w,h\n")
    (tmp_path / "y.csv").write_text("frame,x,y,w,h\n")
    assert resolve_boxes(["v/x.mp4", "y.webm"], [str(tmp_path)]) == [tmp_path / "x.boxes.csv",
                                                                      tmp_path / "y.csv"]
    with pytest.raises(ValueError, match="no z.boxes.csv or z.csv for video z.mp4"):
        resolve_boxes(["z.mp4"], [str(tmp_path)])
    assert resolve_boxes(["a.mp4"], None) == [None]


def test_stream_flag_gives_the_same_table(setup, tmp_path):
    import pandas as pd

    assert _run([setup["good"], "--bundle", setup["bundle"], "--out", tmp_path / "a"]) == 0
    assert _run([setup["good"], "--bundle", setup["bundle"], "--out", tmp_path / "b",
                 "--stream", "--batch-size", "7"]) == 0
    a, b = pd.read_csv(tmp_path / "a" / "good.csv"), pd.read_csv(tmp_path / "b" / "good.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4, atol=1e-5)
