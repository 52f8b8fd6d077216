"""The layout as shipped (annotation folder beside nested frames, test lists and sample files,
per-task splits) is read as the flat layout is, and the test set comes from the sample files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from affaccel.data.affwild2 import AnnotationError, load_affwild2, read_test_sample
from affaccel.data.layout import find_frame_dirs, resolve_layout
from affaccel.data.shipped import ANNOTATION_DIR, SAMPLE_NAMES, TEST_LIST_DIR, TEST_LIST_NAMES, write_shipped


@pytest.fixture(scope="module")
def shipped(tiny_set, tmp_path_factory):
    out = write_shipped(tiny_set[0], tmp_path_factory.mktemp("abaw") / "Aff-Wild2")
    return tiny_set[0], out, json.loads((out / "shipped.json").read_text())


def test_layout_is_found(shipped):
    _, out, plan = shipped
    layout = resolve_layout(out)
    assert layout.annotations == out / ANNOTATION_DIR
    assert layout.frame_dirs == [out / "cropped_aligned" / "cropped_aligned",
                                 out / "cropped_aligned" / "cropped_aligned_new_50_vids"]
    assert set(layout.test_samples) == set(layout.test_lists) == {"va", "expr", "au"}
    # the flat layout of the source set is found by the same code, with no test files
    flat = resolve_layout(shipped[0])
    assert flat.annotations == shipped[0] and flat.frame_dirs == [shipped[0] / "cropped_aligned"]


def test_shipped_reads_like_the_source_with_per_task_splits(shipped):
    src, out, plan = shipped
    a, b = load_affwild2(src), load_affwild2(out)
    assert {r.video_id for r in b.videos} == {r.video_id for r in a.videos} - set(plan["test"])
    for rb in b.videos:
        ra = a.get(rb.video_id)
        assert rb.n_frames == ra.n_frames and rb.tasks == ra.tasks
        np.testing.assert_array_equal(rb.frame_present, ra.frame_present)
        assert [p.name for p in rb.frame_paths] == [p.name for p in ra.frame_paths]
        for t in rb.tasks:
            np.testing.assert_array_equal(rb.labels[t], ra.labels[t])
            np.testing.assert_array_equal(rb.label_mask[t], ra.label_mask[t])
    # the new_50_vids part is merged; per-task splits differ where the plan moved a video
    assert all(p.parent.parent.name == "cropped_aligned_new_50_vids" for p in b.get(plan["new_50"][0]).frame_paths)
    moved = b.get(plan["expr_val"])
    assert moved.splits["expr"] == "val" and moved.splits["va"] == "train" and moved.split == "val"
    other = b.get(plan["au_train"])
    assert other.splits["au"] == "train" and other.splits["va"] == "val"
    assert moved in b.by_split("val", "expr") and moved in b.by_split("train", "va")


def test_test_set_from_the_sample_files(shipped):
    src, out, plan = shipped
    test = load_affwild2(out, splits=("test",))
    ref = load_affwild2(src).get(plan["test"][0])
    rec = test.get(plan["test"][0])
    assert rec.split == "test" and rec.splits == {"va": "test", "expr": "test", "au": "test"}
    assert rec.n_frames == ref.n_frames and not rec.labels
    np.testing.assert_array_equal(rec.frame_present, ref.frame_present)
    rows = read_test_sample(out / SAMPLE_NAMES["va"], "va")
    assert rows[0] == (plan["test"][0], 1) and len(rows) == ref.n_frames
    assert (~rec.frame_present).any(), "the sample lists frames without an image too"


def test_separate_roots_read_the_same(shipped, tmp_path):
    _, out, _ = shipped
    ann, frames = tmp_path / "annotations", tmp_path / "frames"
    shutil.copytree(out / ANNOTATION_DIR, ann)
    shutil.copytree(out / "cropped_aligned" / "cropped_aligned", frames / "cropped_aligned")
    shutil.copytree(out / "cropped_aligned" / "cropped_aligned_new_50_vids", frames / "cropped_aligned_new_50_vids")
    a = load_affwild2(out)
    b = load_affwild2(annotations=ann, frames=frames)
    assert [r.video_id for r in a.videos] == [r.video_id for r in b.videos]
    assert [r.splits for r in a.videos] == [r.splits for r in b.videos]
    assert find_frame_dirs(frames / "cropped_aligned") == [frames / "cropped_aligned"]   # a bare frame folder


def test_a_root_without_videos_says_what_was_looked_for(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(FileNotFoundError, match="8th_ABAW_Annotations"):
        load_affwild2(tmp_path)
    (tmp_path / ANNOTATION_DIR / "VA_Estimation_Challenge" / "Train_Set").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no frame folders .*cropped_aligned"):
        load_affwild2(tmp_path, tasks=("va",))


def test_two_annotation_folders_that_disagree(shipped, tmp_path):
    _, out, _ = shipped
    root = tmp_path / "copy"
    shutil.copytree(out, root, symlinks=True)
    older = root / "6th ABAW Annotations"
    shutil.copytree(root / ANNOTATION_DIR, older)
    assert load_affwild2(root, tasks=("va",)).videos            # identical copies: fine
    victim = next(older.rglob("*.txt"))
    victim.write_text(victim.read_text() + "0.1,0.1\n")
    with pytest.raises(ValueError, match="disagree.*--annotations"):
        load_affwild2(root, tasks=("va",))


def test_bad_test_files_name_the_file(shipped, tmp_path):
    _, out, plan = shipped
    root = tmp_path / "copy"
    shutil.copytree(out, root, symlinks=True)
    sample = root / SAMPLE_NAMES["va"]
    text = sample.read_text()
    sample.write_text(text + "ghost_video/00001.jpg,\n")          # a video with no frames folder
    with pytest.raises(FileNotFoundError, match=f"{sample.name}.*ghost_video.*no frame images"):
        load_affwild2(root, tasks=("va",), splits=("test",))
    sample.write_text(text)
    lst = root / TEST_LIST_DIR / TEST_LIST_NAMES["va"]
    lst.write_text(lst.read_text() + "listed_only\n")             # listed, but absent from the sample
    with pytest.raises(ValueError, match=f"{lst.name}.*listed_only.*not in the sample file"):
        load_affwild2(root, tasks=("va",), splits=("test",))
    sample.write_text("image_location,arousal,valence\n" + text.split("\n", 1)[1])
    with pytest.raises(AnnotationError, match=f"{sample.name}:1: wrong header"):
        read_test_sample(sample, "va")
