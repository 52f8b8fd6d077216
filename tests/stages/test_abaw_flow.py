"""The participant's flow on the synthetic set in the layout as shipped: per-task splits, the
stage-1 rule, scoring of frames without an image, per-video metrics and the k-fold protocol."""
from __future__ import annotations

import json

import numpy as np
import pytest

from affaccel.data.affwild2 import load_affwild2
from affaccel.data.shipped import write_shipped


@pytest.fixture(scope="module")
def abaw(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("affaccel_home")
    mp.setenv("AFFACCEL_HOME", str(home))
    from affaccel.data.synthetic import ensure_synthetic

    root = write_shipped(ensure_synthetic("tiny", progress=False), home / "Aff-Wild2")
    yield home, root, json.loads((root / "shipped.json").read_text())
    mp.undo()


def test_stage1_never_trains_on_a_validation_video(abaw):
    from affaccel.stages.pipeline import stage1_records

    _, root, plan = abaw
    data = load_affwild2(root)
    any_val = {r.video_id for r in data.videos if "val" in r.splits.values()}
    roles = {}
    for task in ("va", "expr", "au"):
        roles[task] = {r.video_id: r.split for r in stage1_records(data, data.by_split("val", task), task)}
        # the evaluated task's validation videos and every other task's are held out of training
        assert {v for v, role in roles[task].items() if role == "val"} == any_val
    # a video in EXPR's validation split only is held out of stage 1 for a VA run too, so the VA,
    # EXPR and AU runs share one fine-tuned encoder (same roles, same cache key)
    assert roles["va"][plan["expr_val"]] == "val" and roles["va"] == roles["expr"] == roles["au"]
    assert plan["test"][0] not in roles["va"]                   # test videos never reach stage 1
    # a fold re-splits the videos: its own validation videos are the ones held out
    train, val = data.folds(3, "va", seed=0)[1]
    fold = {r.video_id: r.split for r in stage1_records(data, val, None)}
    assert {v for v, role in fold.items() if role == "val"} == {r.video_id for r in val}
    assert all(fold[r.video_id] == "train" for r in train)


def test_train_on_the_shipped_layout_scores_frames_without_an_image(abaw):
    from affaccel import train

    home, root, plan = abaw
    run = home / "run_au"   # AU: its validation videos of the tiny set have annotated frames without an image
    assert train.main(["--task", "au", "--data-root", str(root), "--preset", "tiny", "--epochs", "1",
                       "--run-dir", str(run), "--quiet"]) == 0
    final = json.loads((run / "final_metrics.json").read_text())
    data = load_affwild2(root)
    val = {r.video_id: r for r in data.by_split("val", "au")}
    assert set(final["per_video"]) == set(val) and plan["au_train"] not in val
    assert (run / "per_video.csv").read_text().splitlines()[0].startswith("video,")
    for vid, row in final["per_video"].items():
        # every frame with a valid label counts, also those whose image is missing
        assert row["scored_frames"] == int(val[vid].label_mask["au"].sum())
    assert sum(int((~r.frame_present & r.label_mask["au"]).sum()) for r in val.values()) > 0
    assert np.isfinite(final["f1_macro"])


def test_k_fold_table_on_the_shipped_layout(abaw, capsys):
    from affaccel import train

    home, root, _ = abaw
    base = home / "folds"
    assert train.main(["--task", "va", "--data-root", str(root), "--preset", "tiny", "--epochs", "1",
                       "--folds", "3", "--run-dir", str(base), "--quiet"]) == 0
    out = capsys.readouterr().out
    for label in ("fold 0", "fold 1", "fold 2", "mean"):
        assert label in out
    report = json.loads((base / "folds.json").read_text())
    assert len(report["folds"]) == 3
    data = load_affwild2(root)
    fold0 = json.loads((base / "fold0" / "final_metrics.json").read_text())
    assert set(fold0["per_video"]) == {r.video_id for r in data.by_split("val", "va")}


def test_train_then_submit_then_check(abaw):
    """The whole participant flow on the shipped layout: train, submit from the bundle, and the
    files pass --check against the sample files (rows in order, a valid value on every row)."""
    from affaccel import submit, train
    from affaccel.data.affwild2 import read_test_sample

    home, root, plan = abaw
    run = home / "run_va_submit"
    assert train.main(["--task", "va", "--data-root", str(root), "--preset", "tiny", "--epochs", "1",
                       "--run-dir", str(run), "--quiet"]) == 0
    out = home / "submission"
    assert submit.main(["--bundle", str(run / "bundle.pt"), "--data-root", str(root), "--out", str(out),
                        "--zip", "--quiet"]) == 0
    files = sorted(out.glob("*_predictions.txt"))
    assert [f.name for f in files] == ["CVPR_8th_ABAW_VA_test_set_predictions.txt"]
    rows = files[0].read_text().splitlines()
    sample = read_test_sample(root / "CVPR_8th_ABAW_VA_test_set_sample.txt", "va")
    assert rows[0] == "image_location,valence,arousal" and len(rows) == 1 + len(sample)
    assert [r.split(",")[0] for r in rows[1:]] == [f"{v}/{t:05d}.jpg" for v, t in sample]
    assert submit.main(["--check", str(out), "--data-root", str(root)]) == 0
    assert submit.main(["--check", str(out / "abaw_submission.zip"), "--data-root", str(root)]) == 0
    # a corrupted copy fails the check
    files[0].write_text("\n".join(rows[:-1]) + "\n")
    assert submit.main(["--check", str(out), "--data-root", str(root)]) == 1
