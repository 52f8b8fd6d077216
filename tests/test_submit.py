"""``python -m affaccel.submit``: ABAW files from bundles and a hand-made test set, and --check.

The test set is written in the layout as shipped: ``8th_ABAW_Annotations/`` (task folders and
the test lists), the sample files beside it, frames in ``cropped_aligned/cropped_aligned/`` and
``cropped_aligned/cropped_aligned_new_50_vids/``, with frames that have no image (leading,
inside, a run of three with a tie in the middle, trailing)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from affaccel.inference import abaw
from affaccel.tasks import TASKS

from predict_support import make_bundle

# video -> (frame count, frames without an image, frames folder)
VIDEOS = {"a1": (40, {1, 7, 8, 9, 40}, "cropped_aligned"),
          "b2_left": (24, {12}, "cropped_aligned_new_50_vids"),
          "b2_right": (24, set(), "cropped_aligned")}
SAMPLE_VIDEOS = {"va": ["a1", "b2_left"], "expr": ["b2_right", "a1"], "au": ["b2_left", "b2_right", "a1"]}
SAMPLE_NAMES = {"va": "CVPR_8th_ABAW_VA_test_set_sample.txt", "expr": "CVPR_8th_ABAW_Expr_test_set_sample.txt",
                "au": "CVPR_8th_ABAW_AU_test_set_sample.txt"}
LIST_NAMES = {"va": "Valence_Arousal_Estimation_Challenge_test_set_release.txt",
              "expr": "Expression_Recognition_Challenge_test_set_release.txt",
              "au": "Action_Unit_Detection_Challenge_test_set_release.txt"}


def write_test_set(root: Path, videos=VIDEOS, sample_videos=SAMPLE_VIDEOS) -> Path:
    """The layout as shipped, test set only (empty Train_Set / Validation_Set folders)."""
    from PIL import Image

    ann = root / "8th_ABAW_Annotations"
    for t in TASKS.values():
        for split in ("Train_Set", "Validation_Set"):
            (ann / t.annotation_dirs[0] / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for vid, (n, missing, folder) in videos.items():
        if len(missing) == n:   # no frames folder at all
            continue
        d = root / "cropped_aligned" / folder / vid
        d.mkdir(parents=True, exist_ok=True)
        for f in range(1, n + 1):
            if f not in missing:
                img = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"{f:05d}.jpg", quality=90)
    lists = ann / "names_of_videos_in_each_test_set"
    lists.mkdir()
    for task, vids in sample_videos.items():
        (lists / LIST_NAMES[task]).write_text("".join(f"{v}\n" for v in vids))
        rows = [f"{v}/{f:05d}.jpg," for v in vids for f in range(1, videos[v][0] + 1)]
        (root / SAMPLE_NAMES[task]).write_text(abaw.header(task) + "\n" + "\n".join(rows) + "\n")
    return root


def data_args(root: Path) -> list[str]:
    return ["--data-root", str(root)]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    from affaccel.submit import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A test set, two bundles of different encoders, and one submission of bundle 0 (with zip)."""
    from affaccel.submit import main

    base = tmp_path_factory.mktemp("submit")
    root = write_test_set(base / "data")
    b0, b1 = make_bundle(base / "b0.pt", seed=0), make_bundle(base / "b1.pt", seed=1)
    cache = base / "cache"
    out = base / "out"
    code = main(["--bundle", str(b0), *data_args(root), "--out", str(out), "--zip", "--cache-root", str(cache),
                 "--device", "cpu", "--frames-backend", "pil", "--quiet"])
    assert code == 0
    return {"root": root, "bundles": (b0, b1), "cache": cache, "out": out, "base": base}


def direct_predictions(bundle: Path, cache_root: Path) -> dict:
    """task -> video -> [T, K] prediction space, straight from predict_frames on the cached features."""
    from affaccel.bundle import load_bundle
    from affaccel.inference.temporal import predict_frames
    from affaccel.stages.features import FeatureCache

    b = load_bundle(bundle)
    cache = FeatureCache.for_encoder(cache_root, b.encoder)
    vids = sorted(VIDEOS)
    feats = [cache.load_features(v) for v in vids]
    preds = predict_frames(b.models, feats, b.window.window, b.window.stride, "cpu",
                           b.configs["va"].batch_size, b.configs["va"].averaging)
    return {t: {v: p[t].astype(np.float64) for v, p in zip(vids, preds)} for t in b.models}


def nearest_brute(present: set[int], f: int) -> int:
    """The nearest frame number with an image (a tie: the earlier), by search."""
    return min(present, key=lambda g: (abs(g - f), g))


def read_rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()]


def expected_values(task: str, preds: dict) -> list[list[str]]:
    """The rows the sample of ``task`` should get from per-frame predictions ``video -> [T, K]``."""
    rows = []
    for v in SAMPLE_VIDEOS[task]:
        n, missing, _ = VIDEOS[v]
        present = set(range(1, n + 1)) - missing
        for f in range(1, n + 1):
            p = preds[v][nearest_brute(present, f) - 1]
            if task == "va":
                rows.append(np.clip(p, -1, 1))
            elif task == "expr":
                rows.append([int(np.argmax(p))])
            else:
                rows.append([int(x >= 0.5) for x in p])
    return rows


def assert_rows_match(task: str, path: Path, preds: dict):
    got = read_rows(path)[1:]
    want = expected_values(task, preds)
    assert len(got) == len(want)
    if task == "va":
        np.testing.assert_allclose(np.array([r[1:] for r in got], float), np.array(want), atol=2e-6)
    else:
        assert [[int(x) for x in r[1:]] for r in got] == want


# ---------------------------------------------------------------------------------------------


def test_files_pass_check_and_follow_the_sample_rows(world, capsys):
    out, root = world["out"], world["root"]
    names = {t: SAMPLE_NAMES[t].replace("sample", "predictions") for t in TASKS}
    for t, name in names.items():
        lines = (out / name).read_text().splitlines()
        sample = (root / SAMPLE_NAMES[t]).read_text().splitlines()
        assert lines[0] == abaw.header(t) == sample[0]
        assert [line.split(",")[0] for line in lines[1:]] == [s.split(",")[0] for s in sample[1:]]
        assert all(len(line.split(",")) == abaw.n_fields(t) for line in lines[1:])
        assert abaw.n_fields(t) == {"va": 3, "expr": 2, "au": 13}[t]
    with zipfile.ZipFile(out / abaw.ZIP_NAME) as z:
        assert sorted(z.namelist()) == sorted(names.values())
        assert z.read(names["au"]).decode() == (out / names["au"]).read_text()
    for target in (out, out / abaw.ZIP_NAME):
        code, text, _ = run_cli(["--check", target, *data_args(root)], capsys)
        assert code == 0, text
        assert text.count("ok    ") == 3 and "passes" in text
    assert not any(p.name.startswith(".") for p in out.iterdir())   # no temp file left


def test_rows_without_image_take_the_nearest_imaged_frames_prediction(world):
    preds = direct_predictions(world["bundles"][0], world["cache"])
    for t in TASKS:
        assert_rows_match(t, world["out"] / SAMPLE_NAMES[t].replace("sample", "predictions"), preds[t])
    # the rule is visible: a1 frame 8 (a tie between 6 and 10) and frame 1 (before the first image)
    va = read_rows(world["out"] / SAMPLE_NAMES["va"].replace("sample", "predictions"))
    assert va[8][1:] == va[6][1:] and va[1][1:] == va[2][1:] and va[9][1:] == va[10][1:]
    own = np.clip(preds["va"]["a1"][7], -1, 1)   # frame 8's own prediction differs from frame 6's
    assert not np.allclose(np.array(va[8][1:], float), own, atol=1e-5)


def test_two_bundles_are_averaged_in_prediction_space(world, capsys):
    b0, b1 = world["bundles"]
    out = world["base"] / "out2"
    code, text, err = run_cli(["--bundle", b0, "--bundle", b1, *data_args(world["root"]), "--out", out,
                               "--cache-root", world["cache"], "--device", "cpu", "--frames-backend", "pil",
                               "--quiet"], capsys)
    assert code == 0, err
    assert "mean of 2 bundle(s)" in text
    p0, p1 = direct_predictions(b0, world["cache"]), direct_predictions(b1, world["cache"])
    mean = {t: {v: (p0[t][v] + p1[t][v]) / 2 for v in VIDEOS} for t in TASKS}
    for t in TASKS:
        assert_rows_match(t, out / SAMPLE_NAMES[t].replace("sample", "predictions"), mean[t])
    # and not either bundle alone
    va = np.array([r[1:] for r in read_rows(out / SAMPLE_NAMES["va"].replace("sample", "predictions"))[1:]], float)
    for single in (p0, p1):
        assert not np.allclose(va, np.array(expected_values("va", single["va"])), atol=1e-4)


def _mutations():
    va, ex, au = (SAMPLE_NAMES[t].replace("sample", "predictions") for t in ("va", "expr", "au"))

    def set_line(line, fn):   # line: 1-based file line
        k = line - 1
        return lambda lines: lines[:k] + [fn(lines[k])] + lines[k + 1:]

    def field(line, j, value):
        return set_line(line, lambda s: ",".join(value if i == j else x for i, x in enumerate(s.split(","))))

    return [
        ("header", va, lambda ls: ["image_location,arousal,valence"] + ls[1:], 1, "header"),
        ("missing row", ex, lambda ls: ls[:5] + ls[6:], 6, "expected 'b2_right/00005.jpg'"),
        ("swapped rows", au, lambda ls: ls[:3] + [ls[4], ls[3]] + ls[5:], 4, "expected 'b2_left/00003.jpg'"),
        ("extra row", ex, lambda ls: ls + [ls[-1]], 66, "extra row"),
        ("last row gone", au, lambda ls: ls[:-1], 89, "file ends; expected the row of a1/00040.jpg"),
        ("VA -5", va, field(3, 1, "-5"), 3, "expected a float in [-1, 1]"),
        ("VA NaN", va, field(7, 2, "nan"), 7, "expected a float in [-1, 1]"),
        ("VA empty", va, field(2, 2, ""), 2, "empty value in column arousal"),
        ("EXPR -1", ex, field(9, 1, "-1"), 9, "expected one integer class 0..7"),
        ("EXPR 8", ex, field(4, 1, "8"), 4, "expected one integer class 0..7"),
        ("EXPR float", ex, field(4, 1, "2.0"), 4, "integer class"),
        ("AU -1", au, field(10, 5, "-1"), 10, "AU7 '-1': expected 0 or 1"),
        ("AU 0.5", au, field(11, 12, "0.5"), 11, "AU26 '0.5': expected 0 or 1"),
        ("AU 11 values", au, set_line(6, lambda s: s.rsplit(",", 1)[0]), 6, "12 fields, expected 13"),
    ]


@pytest.mark.parametrize("what,name,mutate,line,message", _mutations(), ids=[m[0] for m in _mutations()])
def test_check_names_the_first_offending_file_and_line(world, tmp_path, capsys, what, name, mutate, line, message):
    import shutil

    for p in world["out"].glob("*.txt"):
        shutil.copy(p, tmp_path / p.name)
    lines = (tmp_path / name).read_text().splitlines()
    (tmp_path / name).write_text("\n".join(mutate(lines)) + "\n")
    code, text, _ = run_cli(["--check", tmp_path, *data_args(world["root"])], capsys)
    assert code == 1, text
    fail = [ln for ln in text.splitlines() if ln.startswith("FAIL")]
    assert len(fail) == 1 and f"{tmp_path / name}:{line}: " in fail[0] and message in fail[0], text
    assert text.count("ok    ") == 2


def test_check_of_a_folder_without_submission_files_fails(world, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello\n")
    code, text, _ = run_cli(["--check", tmp_path, *data_args(world["root"])], capsys)
    assert code == 1 and "no submission file" in text and "notes.txt: not a submission file" in text


def test_writer_never_writes_a_file_that_would_fail_the_check(world, tmp_path, monkeypatch, capsys):
    sample = abaw.read_sample(world["root"] / SAMPLE_NAMES["au"], "au")
    good = abaw.submission_lines("au", sample.locations, np.zeros((len(sample), 12), np.int64))
    bad = good[:-1] + [good[-1].rsplit(",", 1)[0] + ",-1"]
    name = abaw.prediction_name("au", sample.path)
    abaw.write_submission_files(tmp_path, {name: (good, sample)})
    before = (tmp_path / name).read_text()
    with pytest.raises(abaw.SubmissionCheckError, match=rf"{name}:{len(good)}: .*not written"):
        abaw.write_submission_files(tmp_path, {name: (bad, sample)}, zip_name=abaw.ZIP_NAME)
    assert (tmp_path / name).read_text() == before and not (tmp_path / abaw.ZIP_NAME).exists()
    # the command: one bad task file means no file of any task is written
    real = abaw.submission_lines

    def broken(task, locations, values):
        lines = real(task, locations, values)
        return lines[:-1] + [lines[-1].split(",")[0] + ",-1"] if task == "expr" else lines

    monkeypatch.setattr(abaw, "submission_lines", broken)
    out = tmp_path / "out"
    code, _, err = run_cli(["--bundle", world["bundles"][0], *data_args(world["root"]), "--out", out, "--zip",
                            "--cache-root", world["cache"], "--device", "cpu", "--quiet"], capsys)
    assert code == 1 and "not written" in err and "integer class" in err
    assert not out.exists() or not any(out.iterdir())


def test_nearest_present_and_decisions():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        present = rng.random(n) < 0.5
        present[rng.integers(n)] = True
        have = set(np.flatnonzero(present))
        want = [min(have, key=lambda g: (abs(g - t), g)) for t in range(n)]
        assert abaw.nearest_present(present).tolist() == want
    np.testing.assert_array_equal(abaw.decide("va", np.array([[1.5, -0.25], [-3, 1.0]])), [[1, -0.25], [-1, 1]])
    assert abaw.decide("expr", np.eye(8)[[3, 7]] * 0.9).tolist() == [3, 7]
    assert abaw.decide("au", np.array([[0.5] * 6 + [0.4999] * 6])).tolist() == [[1] * 6 + [0] * 6]
    with pytest.raises(ValueError, match="not finite"):
        abaw.decide("au", np.full((2, 12), np.nan))


def _resave_window(src: Path, dst: Path, window: int) -> Path:
    import torch

    from affaccel.bundle import read_bundle_dict

    raw = read_bundle_dict(src)
    raw["window"]["window"] = window
    torch.save(raw, dst)
    return dst


@pytest.mark.parametrize("case", ["no frames folder", "list names a video absent from the sample",
                                  "windows differ", "task no bundle has", "task without sample file"])
def test_bad_inputs_fail_clearly_before_any_work(world, tmp_path, capsys, case):
    root = tmp_path / "data"
    bundles = [world["bundles"][0]]
    extra = []
    if case == "no frames folder":
        write_test_set(root, sample_videos={**SAMPLE_VIDEOS, "expr": ["a1", "zz9"]},
                       videos={**VIDEOS, "zz9": (5, set(range(1, 6)), "cropped_aligned")})
        match = r"CVPR_8th_ABAW_Expr_test_set_sample.txt: test video zz9 has no frame images"
    else:
        write_test_set(root)
    if case == "list names a video absent from the sample":
        lst = root / "8th_ABAW_Annotations" / "names_of_videos_in_each_test_set" / LIST_NAMES["au"]
        lst.write_text(lst.read_text() + "c3\n")
        match = r"Action_Unit_Detection_Challenge_test_set_release.txt: video 'c3' .* not in the sample file"
    elif case == "windows differ":
        bundles.append(_resave_window(world["bundles"][1], tmp_path / "w16.pt", 16))
        match = r"different windows"
    elif case == "task no bundle has":
        bundles = [make_bundle(tmp_path / "va.pt", tasks=("va",))]
        extra = ["--tasks", "va,au"]
        match = r"task\(s\) \['au'\] asked for, but no bundle has a model"
    elif case == "task without sample file":
        (root / SAMPLE_NAMES["expr"]).unlink()
        match = r"no test sample file for task\(s\) \['expr'\]"
    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = [x for b in bundles for x in ("--bundle", b)] + [*data_args(root), "--out", out, "--cache-root", cache,
                                                             "--device", "cpu", *extra]
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    import re

    assert re.search(match, err), err
    assert not cache.exists() and not out.exists()   # nothing extracted, nothing written


def test_arguments(world, capsys):
    code, _, err = run_cli(["--check", world["out"], "--data-root", world["root"], "--zip"], capsys)
    assert code == 2 and "--check takes no --zip" in err
    code, _, err = run_cli(["--bundle", world["base"] / "nope.pt", "--data-root", world["root"],
                            "--out", world["base"] / "x"], capsys)
    assert code == 2 and "no such file" in err
    code, _, err = run_cli(["--bundle", world["bundles"][0], "--out", world["base"] / "x"], capsys)
    assert code == 2 and "--data-root" in err
    code, _, err = run_cli(["--bundle", world["bundles"][0], "--data-root", world["root"],
                            "--out", world["base"] / "x", "--tasks", "va,xx"], capsys)
    assert code == 2 and "--tasks" in err
