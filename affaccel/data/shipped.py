"""A synthetic set laid out as the ABAW archives ship, so the whole participant flow
(``train --data-root``, ``--folds``, ``submit``, ``submit --check``) runs end to end on CPU.

``write_shipped(src, out)`` re-lays a set written by ``affaccel.data.synthetic.generate``:

    out/8th_ABAW_Annotations/{VA_Estimation_Challenge,EXPR_Recognition_Challenge,
                              AU_Detection_Challenge}/{Train_Set,Validation_Set}/<video>.txt
    out/cropped_aligned/cropped_aligned/<video>/00001.jpg ...          (nested, as unpacked)
    out/cropped_aligned/cropped_aligned_new_50_vids/<video>/...        (a few videos)
    out/names_of_videos_in_each_test_set/<Challenge>_test_set_release.txt
    out/CVPR_8th_ABAW_{VA,Expr,AU}_test_set_sample.txt

and makes the cases a real copy has: test videos (annotations removed; every frame listed in the
sample files, also frames without an image), videos whose split differs per task (one training
video is in EXPR's Validation_Set, one validation video in AU's Train_Set), the _left/_right
pair and the missing frames of the source set. Images are hard links where the file system
allows (copies otherwise). ``shipped.json`` records what was changed.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from affaccel.tasks import SPLIT_DIRS, TASKS

ANNOTATION_DIR = "8th_ABAW_Annotations"
TEST_LIST_DIR = "names_of_videos_in_each_test_set"
TEST_LIST_NAMES = {"va": "Valence_Arousal_Estimation_Challenge_test_set_release.txt",
                   "expr": "Expression_Recognition_Challenge_test_set_release.txt",
                   "au": "Action_Unit_Detection_Challenge_test_set_release.txt"}
SAMPLE_NAMES = {"va": "CVPR_8th_ABAW_VA_test_set_sample.txt",
                "expr": "CVPR_8th_ABAW_Expr_test_set_sample.txt",
                "au": "CVPR_8th_ABAW_AU_test_set_sample.txt"}
MANIFEST = "shipped.json"


def _link_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copy2(f, dst / f.name)


def _plan(manifest: dict) -> dict:
    """Which videos become test videos, change split for one task, or sit in new_50_vids."""
    videos = manifest["videos"]
    single = lambda split, need: [v for v in sorted(manifest["splits"][split])  # noqa: E731
                                  if not v.endswith(("_left", "_right")) and set(need) <= set(videos[v]["tasks"])]
    train, val = single("train", TASKS), single("val", ("au",))
    if len(train) < 3 or not val:
        raise ValueError("write_shipped needs a source set with >= 3 single training videos annotated for "
                         "every task and one single validation video with AU labels (e.g. the 'tiny' preset)")
    return {"test": [train[-1]], "expr_val": train[0], "au_train": val[0], "new_50": [train[1]],
            "tasks": {v: list(videos[v]["tasks"]) for v in videos}}


def _split_of(video: str, task: str, split: str, plan: dict) -> str:
    if task == "expr" and video == plan["expr_val"]:
        return "val"
    if task == "au" and video == plan["au_train"]:
        return "train"
    return split


def _write_annotations(src: Path, out: Path, manifest: dict, plan: dict) -> None:
    for split, vids in manifest["splits"].items():
        for vid in vids:
            if vid in plan["test"]:
                continue
            for task in plan["tasks"][vid]:
                name = TASKS[task].annotation_dirs[0]
                f = src / name / SPLIT_DIRS[split] / f"{vid}.txt"
                d = out / ANNOTATION_DIR / name / SPLIT_DIRS[_split_of(vid, task, split, plan)]
                d.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, d / f.name)


def _write_test_files(out: Path, manifest: dict, plan: dict) -> None:
    (out / TEST_LIST_DIR).mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        vids = [v for v in plan["test"] if task in plan["tasks"][v]]
        (out / TEST_LIST_DIR / TEST_LIST_NAMES[task]).write_text("".join(f"{v}\n" for v in vids))
        rows = [f"{v}/{t:05d}.jpg,\n" for v in vids for t in range(1, manifest["videos"][v]["n_frames"] + 1)]
        header = ",".join(["image_location", *TASKS[task].columns])
        (out / SAMPLE_NAMES[task]).write_text(header + "\n" + "".join(rows))


def write_shipped(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write ``src`` (a synthetic set) in the shipped layout to ``out`` (atomic: built in a
    temporary sibling, then renamed). Returns ``out``."""
    src, out = Path(src), Path(out)
    manifest = json.loads((src / "synthetic.json").read_text())
    plan = _plan(manifest)
    if out.exists():
        raise FileExistsError(f"{out} exists; write the shipped layout into a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_annotations(src, tmp, manifest, plan)
        frames = tmp / "cropped_aligned"
        for vdir in sorted((src / "cropped_aligned").iterdir()):
            part = "cropped_aligned_new_50_vids" if vdir.name in plan["new_50"] else "cropped_aligned"
            _link_tree(vdir, frames / part / vdir.name)
        _write_test_files(tmp, manifest, plan)
        shutil.copy2(src / "synthetic.json", tmp / "synthetic.json")
        record = {k: plan[k] for k in ("test", "expr_val", "au_train", "new_50")}
        (tmp / MANIFEST).write_text(json.dumps({"source": str(src), **record}, indent=1) + "\n")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
