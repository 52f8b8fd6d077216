"""Aff-Wild2 reader: exact round trip of the synthetic set, malformed files, lenient mode, folds,
folder-name variants, frame-root merging, alignment of missing frames."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from affaccel.data.affwild2 import (
    AnnotationError,
    _parse_body_fast,
    _parse_body_ref,
    load_affwild2,
    read_annotation,
    source_video,
)
from affaccel.data.synthetic import reference_labels
from affaccel.tasks import TASKS

VA_HEAD = "valence,arousal"
EXPR_HEAD = ",".join(TASKS["expr"].columns)
AU_HEAD = ",".join(TASKS["au"].columns)


# ---------------------------------------------------------------------------------------------
# hand-made datasets


def _write(root: Path, task: str, split: str, video: str, text: str, folder: str | None = None):
    folder = folder or TASKS[task].annotation_dirs[0]
    d = root / folder / {"train": "Train_Set", "val": "Validation_Set"}[split]
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{video}.txt"
    p.write_text(text)
    return p


def _frames(root: Path, video: str, numbers, frame_root: str = "cropped_aligned"):
    d = root / frame_root / video
    d.mkdir(parents=True, exist_ok=True)
    for i in numbers:   # the reader never decodes images: any bytes do
        (d / f"{i:05d}.jpg").write_bytes(b"\xff\xd8" + f"{frame_root}:{i}".encode())


def _va(rows) -> str:
    return VA_HEAD + "\n" + "".join(f"{r}\n" for r in rows)


# ---------------------------------------------------------------------------------------------
# round trip of the synthetic set


def test_round_trip_synthetic_exact(tiny_set):
    root, _ = tiny_set
    ds = load_affwild2(root)
    ref = reference_labels(root)
    manifest = json.loads((root / "synthetic.json").read_text())
    assert [r.video_id for r in ds.videos] == sorted(ref)
    assert ds.skipped == []
    for rec in ds.videos:
        e = ref[rec.video_id]
        T = e["n_frames"]
        assert rec.split == e["split"] and rec.source_video == e["source_video"]
        assert rec.n_frames == T == manifest["videos"][rec.video_id]["n_frames"]
        assert rec.tasks == tuple(e["tasks"])
        np.testing.assert_array_equal(rec.frame_present, ~e["missing"])
        assert list(np.flatnonzero(~rec.frame_present)) == \
            manifest["videos"][rec.video_id]["missing_frames"]
        # frame paths aligned: present frames point at their own image, missing ones carry
        # the previous image (the next one at the start)
        assert len(rec.frame_paths) == T
        present = np.flatnonzero(rec.frame_present)
        for t in range(T):
            src = t if rec.frame_present[t] else (
                present[present < t].max() if (present < t).any() else present.min())
            assert rec.frame_paths[t].name == f"{src + 1:05d}.jpg"
            assert rec.frame_paths[t].is_file()
        for task in rec.tasks:
            bad = e["unannotated"][task]
            mask = rec.label_mask[task]
            # frames without an image keep their label (scored, never trained on)
            np.testing.assert_array_equal(mask, ~bad)
            lab = rec.labels[task]
            if task == "va":
                assert lab.dtype == np.float32 and lab.shape == (T, 2)
                np.testing.assert_array_equal(lab[~bad], e["va"][~bad].astype(np.float32))
                assert (lab[bad] == -5).all()
            elif task == "expr":
                assert lab.dtype == np.int64 and lab.shape == (T,)
                np.testing.assert_array_equal(lab[~bad], e["expr"][~bad])
                assert (lab[bad] == -1).all()
            else:
                assert lab.dtype == np.float32 and lab.shape == (T, 12)
                np.testing.assert_array_equal(lab[~bad], e["au"][~bad].astype(np.float32))
                assert (lab[bad] == -1).all()


def test_synthetic_set_exercises_the_reader_features(tiny_set):
    """The tiny set must contain what the reader has to handle, or the round trip proves little."""
    ds = load_affwild2(tiny_set[0])
    assert any(r.video_id.endswith("_left") for r in ds.by_split("train"))
    assert any(r.video_id.endswith("_right") for r in ds.by_split("val"))
    assert any(not r.frame_present[0] for r in ds.videos)          # leading missing frames
    assert any((~r.frame_present[1:]).any() for r in ds.videos)    # missing frames later on
    for task in TASKS:                                             # unannotated stretches
        assert any(task in r.labels and (r.label_mask[task] != r.frame_present).any()
                   for r in ds.videos)
    assert {r.split for r in ds.videos} == {"train", "val"}


def test_splits_and_get(tiny_set):
    ds = load_affwild2(tiny_set[0])
    manifest = json.loads((tiny_set[0] / "synthetic.json").read_text())
    assert [r.video_id for r in ds.by_split("train")] == sorted(manifest["splits"]["train"])
    assert [r.video_id for r in ds.by_split("val")] == sorted(manifest["splits"]["val"])
    assert ds.get("synth000_left").source_video == "synth000"
    with pytest.raises(KeyError, match="nope"):
        ds.get("nope")
    for task in ds.tasks:   # the synthetic set files every task of a video in one split
        assert ds.by_split("train", task) == [r for r in ds.by_split("train") if task in r.labels]
        assert all(r.splits[task] == r.split for r in ds.videos if task in r.labels)
    with pytest.raises(ValueError, match="split"):
        ds.by_split("holdout")
    only_val = load_affwild2(tiny_set[0], tasks=("va",), splits=("val",))
    assert {r.split for r in only_val.videos} == {"val"}
    assert all(r.tasks == ("va",) for r in only_val.videos)
    s = ds.summary()
    assert "va: train 5 videos" in s and "val 3 videos" in s


def test_fast_parser_matches_reference(tiny_set):
    for f in sorted(tiny_set[0].glob("*/*/*.txt")):
        task = {"VA": "va", "EX": "expr", "AU": "au"}[f.parent.parent.name[:2]]
        lines = f.read_text().splitlines()[1:]
        ncols = TASKS[task].dim if task != "expr" else 1
        fast = _parse_body_fast("\n".join(lines), ncols, len(lines))
        ref = _parse_body_ref(f, task, lines, 2)
        assert fast is not None
        np.testing.assert_array_equal(fast, ref)


# ---------------------------------------------------------------------------------------------
# folds


def test_folds_official_first_then_training_chunks_rotated_with_validation(tiny_set):
    ds = load_affwild2(tiny_set[0])
    train_ids = {r.video_id for r in ds.by_split("train", "va")}
    val_ids = {r.video_id for r in ds.by_split("val", "va")}
    folds = ds.folds(3, "va", seed=0)
    assert len(folds) == 3
    # fold 0 is the official split, as in the paper's Table 1
    assert {r.video_id for r in folds[0][0]} == train_ids and {r.video_id for r in folds[0][1]} == val_ids
    held = []
    for train, val in folds[1:]:
        tr, va = {r.video_id for r in train}, {r.video_id for r in val}
        assert va and va <= train_ids and not tr & va        # a chunk of the training videos...
        assert tr == (train_ids - va) | val_ids              # ...swapped with the official validation
        # a _left/_right pair never straddles train and validation
        assert not {r.source_video for r in train} & {r.source_video for r in val}
        held += sorted(va)
    assert sorted(held) == sorted(train_ids)                 # every training video held out once
    again = ds.folds(3, "va", seed=0)
    assert [[r.video_id for r in v] for _, v in again] == [[r.video_id for r in v] for _, v in folds]
    others = [[sorted(r.video_id for r in v) for _, v in ds.folds(3, "va", seed=s)] for s in range(1, 6)]
    assert any(o != [sorted(r.video_id for r in v) for _, v in folds] for o in others)


def test_folds_balanced_and_k_checked(tiny_set):
    ds = load_affwild2(tiny_set[0])
    train = ds.by_split("train", "va")
    sizes = [sum(r.n_frames for r in v) for _, v in ds.folds(3, "va", seed=3)[1:]]
    biggest_group = max(sum(r.n_frames for r in train if r.source_video == s)
                        for s in {r.source_video for r in train})
    assert abs(sizes[0] - sizes[1]) <= biggest_group
    n_sources = len({r.source_video for r in train})
    with pytest.raises(ValueError, match="k must be"):
        ds.folds(n_sources + 2, "va")
    with pytest.raises(ValueError, match="k must be"):
        ds.folds(1, "va")


def test_source_video_names():
    assert source_video("10-60-1280x720_left") == "10-60-1280x720"
    assert source_video("video59_right") == "video59"
    assert source_video("video_leftover") == "video_leftover"
    assert source_video("120-30-1280x720") == "120-30-1280x720"


# ---------------------------------------------------------------------------------------------
# malformed annotation files


@pytest.mark.parametrize("task,text,line,match", [
    ("va", "", 1, "empty file"),
    ("va", "\n\n", 1, "empty file"),
    ("va", "valence,arousal\n", 2, "no annotation lines"),
    ("va", "arousal,valence\n0.1,0.2\n", 1, "wrong header"),
    ("expr", "Neutral,Anger\n1\n", 1, "wrong header"),
    ("au", VA_HEAD + "\n0,1\n", 1, "wrong header"),
    ("va", _va(["0.1,0.2", "0.3", "0.1,0.1"]), 3, "1 values, expected 2"),
    ("va", _va(["0.1,0.2", "0.1,0.2,0.3"]), 3, "3 values, expected 2"),
    ("au", AU_HEAD + "\n" + ",".join("0" * 12) + "\n" + ",".join("0" * 11) + "\n", 3,
     "11 values, expected 12"),
    ("va", _va(["0.1,0.2", "0.1,abc"]), 3, "non-numeric value 'abc'"),
    ("va", _va(["nan,0.2"]), 2, "non-numeric value 'nan'"),
    ("expr", EXPR_HEAD + "\n1\nhappy\n", 3, "non-numeric value 'happy'"),
    ("va", _va(["0.1,0.2", "0.2,0.3", "1.5,0.2"]), 4, "out of range"),
    ("va", _va(["-4,0.2"]), 2, "out of range"),
    ("expr", EXPR_HEAD + "\n1\n8\n", 3, "out of range"),
    ("expr", EXPR_HEAD + "\n1\n2.5\n", 3, "out of range"),
    ("expr", EXPR_HEAD + "\n-2\n", 2, "out of range"),
    ("au", AU_HEAD + "\n" + ",".join(["0"] * 11 + ["2"]) + "\n", 2, "AU26"),
    ("va", _va(["0.1,0.2", "", "0.1,0.2"]), 3, "empty line"),
])
def test_malformed_files_name_file_and_line(tmp_path, task, text, line, match):
    p = _write(tmp_path, task, "train", "vid", text)
    with pytest.raises(AnnotationError, match=match) as info:
        read_annotation(p, task)
    assert info.value.line == line
    assert str(info.value).startswith(f"{p}:{line}: ")
    assert isinstance(info.value, ValueError)


def test_valid_file_details(tmp_path):
    # markers, CRLF line ends, a BOM, spaces after commas and a trailing blank line are fine
    p = _write(tmp_path, "va", "train", "v", "\ufeffvalence, arousal\r\n0.5, -0.25\r\n-5,-5\r\n"
               "0.1,-5\r\n\r\n")
    vals, valid = read_annotation(p, "va")
    np.testing.assert_array_equal(vals, np.array([[0.5, -0.25], [-5, -5], [0.1, -5]], np.float32))
    np.testing.assert_array_equal(valid, [True, False, False])
    p = _write(tmp_path, "au", "train", "v", AU_HEAD + "\n" + ",".join("1" * 12) + "\n" +
               ",".join(["-1"] * 12) + "\n" + ",".join(["0"] * 11 + ["-1"]) + "\n")
    vals, valid = read_annotation(p, "au")
    np.testing.assert_array_equal(valid, [True, False, False])
    p = _write(tmp_path, "expr", "train", "v", EXPR_HEAD + "\n0\n7\n-1\n")
    vals, valid = read_annotation(p, "expr")
    assert vals.dtype == np.int64 and list(vals) == [0, 7, -1] and list(valid) == [True, True, False]


def test_load_strict_raises_with_file_and_line(tmp_path):
    _write(tmp_path, "va", "train", "good", _va(["0.1,0.2"] * 3))
    bad = _write(tmp_path, "va", "train", "bad", _va(["0.1,0.2", "0.1,x"]))
    _frames(tmp_path, "good", [1, 2, 3])
    _frames(tmp_path, "bad", [1, 2])
    with pytest.raises(AnnotationError, match=rf"{bad}:3: non-numeric"):
        load_affwild2(tmp_path, tasks=("va",))


def test_lenient_skips_and_summarises(tmp_path):
    _write(tmp_path, "va", "train", "good", _va(["0.1,0.2"] * 3))
    bad = _write(tmp_path, "va", "train", "bad", _va(["0.1,0.2", "7,0"]))
    _write(tmp_path, "va", "val", "noframes", _va(["0.1,0.2"]))
    _frames(tmp_path, "good", [1, 2, 3])
    _frames(tmp_path, "bad", [1, 2])
    with pytest.warns(UserWarning, match="skipping"):
        ds = load_affwild2(tmp_path, tasks=("va",), lenient=True)
    assert [r.video_id for r in ds.videos] == ["good"]
    assert [Path(f).name for f, _ in ds.skipped] == ["bad.txt", "noframes"]
    assert f"{bad}:3" in ds.skipped[0][1] and "out of range" in ds.skipped[0][1]
    assert "no frame images" in ds.skipped[1][1]
    s = ds.summary()
    assert "skipped 2" in s and "bad.txt" in s and "noframes" in s
    with pytest.raises(FileNotFoundError, match="no frame images"):
        load_affwild2(tmp_path, tasks=("va",), splits=("val",))


def test_each_task_keeps_its_own_split(tmp_path):
    """Each challenge assigns its own splits: a video in Train_Set for VA and Validation_Set for
    EXPR is read, trained on for VA and validated on for EXPR; its stage-1 role is validation."""
    _write(tmp_path, "va", "train", "v", _va(["0.1,0.2"]))
    _write(tmp_path, "expr", "val", "v", EXPR_HEAD + "\n1\n")
    _frames(tmp_path, "v", [1])
    ds = load_affwild2(tmp_path, tasks=("va", "expr"))
    rec = ds.get("v")
    assert rec.splits == {"va": "train", "expr": "val"} and rec.split == "val"
    assert ds.by_split("train", "va") == [rec] and ds.by_split("val", "va") == []
    assert ds.by_split("val", "expr") == [rec] and ds.skipped == []


def test_a_bad_file_drops_only_its_task(tmp_path):
    _write(tmp_path, "va", "train", "v", _va(["0.1,0.2", "7,0"]))          # out of range
    _write(tmp_path, "expr", "train", "v", EXPR_HEAD + "\n1\n2\n")
    _frames(tmp_path, "v", [1, 2])
    with pytest.raises(AnnotationError, match="out of range"):
        load_affwild2(tmp_path, tasks=("va", "expr"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_affwild2(tmp_path, tasks=("va", "expr"), lenient=True)
    assert ds.get("v").tasks == ("expr",)
    assert len(ds.skipped) == 1 and "task va" in ds.skipped[0][1] and ":3:" in ds.skipped[0][1]


def test_missing_task_folder_and_bad_arguments(tmp_path):
    _write(tmp_path, "va", "train", "v", _va(["0.1,0.2"]))
    _frames(tmp_path, "v", [1])
    with pytest.raises(FileNotFoundError, match="EXPR_Recognition_Challenge"):
        load_affwild2(tmp_path)
    with pytest.raises(ValueError, match="unknown task"):
        load_affwild2(tmp_path, tasks=("valence",))
    with pytest.raises(ValueError, match="unknown split"):
        load_affwild2(tmp_path, tasks=("va",), splits=("holdout",))
    with pytest.raises(FileNotFoundError, match="test sample files"):
        load_affwild2(tmp_path, tasks=("va",), splits=("test",))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_affwild2(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------
# layout variants


@pytest.mark.parametrize("folder", TASKS["expr"].annotation_dirs)
def test_both_expr_folder_names(tmp_path, folder):
    _write(tmp_path, "expr", "train", "v", EXPR_HEAD + "\n3\n-1\n5\n", folder=folder)
    _frames(tmp_path, "v", [1, 2, 3])
    rec = load_affwild2(tmp_path, tasks=("expr",)).get("v")
    assert list(rec.labels["expr"]) == [3, -1, 5]
    assert list(rec.label_mask["expr"]) == [True, False, True]


def test_synthetic_with_old_expr_folder_name(tiny_set, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_set[0], root, ignore=shutil.ignore_patterns("videos"))
    (root / "EXPR_Recognition_Challenge").rename(root / "EXPR_Classification_Challenge")
    a, b = load_affwild2(tiny_set[0]), load_affwild2(root)
    for ra, rb in zip(a.videos, b.videos):
        if "expr" in ra.labels:
            np.testing.assert_array_equal(ra.labels["expr"], rb.labels["expr"])
            np.testing.assert_array_equal(ra.label_mask["expr"], rb.label_mask["expr"])


def test_new_50_vids_folder_is_merged(tmp_path):
    _write(tmp_path, "va", "train", "a", _va(["0.1,0.2"] * 5))
    _write(tmp_path, "va", "train", "b", _va(["0.1,0.2"] * 2))
    _frames(tmp_path, "a", [1, 2])
    _frames(tmp_path, "a", [2, 4], frame_root="cropped_aligned_new_50_vids")
    _frames(tmp_path, "b", [1, 2], frame_root="cropped_aligned_new_50_vids")  # only in the new root
    ds = load_affwild2(tmp_path, tasks=("va",))
    a = ds.get("a")
    assert list(a.frame_present) == [True, True, False, True, False]
    roots = [p.parent.parent.name for p in a.frame_paths]
    names = [p.name for p in a.frame_paths]
    # frame 2 exists in both roots: the newer crop wins; 3 carries 2; 5 carries 4
    assert names == ["00001.jpg", "00002.jpg", "00002.jpg", "00004.jpg", "00004.jpg"]
    assert roots == ["cropped_aligned", "cropped_aligned_new_50_vids",
                     "cropped_aligned_new_50_vids", "cropped_aligned_new_50_vids",
                     "cropped_aligned_new_50_vids"]
    assert list(a.label_mask["va"]) == [True] * 5       # frames without an image keep their label
    assert ds.get("b").frame_present.all()


def test_shorter_task_file_and_extra_frames(tmp_path):
    _write(tmp_path, "va", "train", "v", _va(["0.1,0.2"] * 4))
    _write(tmp_path, "expr", "train", "v", EXPR_HEAD + "\n1\n2\n")
    _frames(tmp_path, "v", [1, 2, 3, 4, 5, 6])     # frames past the annotations are ignored
    rec = load_affwild2(tmp_path, tasks=("va", "expr")).get("v")
    assert rec.n_frames == 4 and len(rec.frame_paths) == 4
    assert list(rec.labels["expr"]) == [1, 2, -1, -1]
    assert list(rec.label_mask["expr"]) == [True, True, False, False]
    assert rec.label_mask["va"].all()
    assert rec.tasks == ("va", "expr")
