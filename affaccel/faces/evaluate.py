"""Detection recall and box IoU against ground-truth boxes (the synthetic set's box files).

    python -m affaccel.faces.evaluate [DATASET_DIR] [--preset tiny] [--max-frames N]

For every raw video of a synthetic set (``videos/<source>.mp4`` / ``.webm`` and one
``<face>.boxes.csv`` per face), decodes the frames, runs the detector on every frame and reports,
per file and in total:

- recall: fraction of ground-truth faces matched by a detection at IoU >= 0.5;
- mean IoU of those matches (how tight the boxes are);
- false positives per frame: detections matching no ground-truth face;
- tracker recall / IoU: the tracker's followed box against the ground truth of single-face
  videos (with its default smoothing and re-detection).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from affaccel.faces.boxes import pairwise_iou, read_boxes_csv

IOU_MATCH = 0.5


def match_stats(dets: list[np.ndarray], truth: list[np.ndarray]) -> dict:
    """dets: per frame [n_i, >=4]; truth: per face [T, 4] (NaN rows = face hidden).

    Greedy one-to-one matching per frame at IoU >= 0.5 (best pairs first)."""
    n_gt = matched = fp = 0
    ious = []
    for t, d in enumerate(dets):
        gt = np.stack([tr[t] for tr in truth if t < len(tr) and not np.isnan(tr[t, 0])]) \
            if any(t < len(tr) and not np.isnan(tr[t, 0]) for tr in truth) else np.zeros((0, 4))
        n_gt += len(gt)
        iou = pairwise_iou(d[:, :4], gt)
        used_d, used_g = set(), set()
        if iou.size:
            for k in np.argsort(-iou, axis=None):
                i, j = np.unravel_index(k, iou.shape)
                if iou[i, j] < IOU_MATCH:
                    break
                if i in used_d or j in used_g:
                    continue
                used_d.add(i)
                used_g.add(j)
                ious.append(iou[i, j])
        matched += len(used_g)
        fp += len(d) - len(used_d)
    return {"gt_faces": n_gt, "recall": matched / n_gt if n_gt else float("nan"),
            "mean_iou": float(np.mean(ious)) if ious else float("nan"),
            "fp_per_frame": fp / max(1, len(dets)), "frames": len(dets)}


def evaluate_video(video: Path, box_files: list[Path], detector=None, max_frames: int | None = None,
                   tracker_options: dict | None = None) -> dict:
    from affaccel.faces.detector import HaarFaceDetector
    from affaccel.faces.tracker import FaceTracker
    from affaccel.video.decode import iter_video

    detector = detector or HaarFaceDetector()
    dets, track_boxes = [], []
    tracker = FaceTracker(detector, **(tracker_options or {}))
    t0 = time.perf_counter()
    seen = 0
    for batch in iter_video(video, batch_size=32):
        frames = np.asarray(batch.frames)
        if max_frames is not None:
            frames = frames[:max(0, max_frames - seen)]
        if len(frames) == 0:
            break
        dets += detector.detect(frames)
        if len(box_files) == 1:
            track_boxes.append(tracker.update(frames).boxes)
        seen += len(frames)
    secs = time.perf_counter() - t0
    truth = [read_boxes_csv(p, n_frames=None) for p in box_files]
    truth = [np.concatenate([t, np.full((max(0, seen - len(t)), 4), np.nan)])[:seen] for t in truth]
    out = {"video": video.name, **match_stats(dets, truth), "seconds": secs}
    if track_boxes:
        tb = np.concatenate(track_boxes)
        st = match_stats([b[None] if not np.isnan(b[0]) else np.zeros((0, 4)) for b in tb], truth)
        out.update(tracker_recall=st["recall"], tracker_iou=st["mean_iou"])
    return out


def evaluate_synthetic(root: Path, max_frames: int | None = None) -> list[dict]:
    manifest = json.loads((root / "synthetic.json").read_text())
    rows = []
    for source, info in sorted(manifest["raw_videos"].items()):
        boxes = [root / p for p in info["boxes"].values()]
        for ext in ("mp4", "webm"):
            rows.append(evaluate_video(root / info[ext], boxes, max_frames=max_frames))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m affaccel.faces.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?", help="synthetic set folder (default: ensure_synthetic)")
    p.add_argument("--preset", default="tiny", help="synthetic preset when no folder is given")
    p.add_argument("--max-frames", type=int, default=None, help="frames per video (default all)")
    a = p.parse_args(argv)
    if a.dataset:
        root = Path(a.dataset)
    else:
        from affaccel.data.synthetic import ensure_synthetic

        root = ensure_synthetic(a.preset)
    rows = evaluate_synthetic(root, a.max_frames)
    keys = ["video", "frames", "gt_faces", "recall", "mean_iou", "fp_per_frame",
            "tracker_recall", "tracker_iou", "seconds"]
    print(" ".join(f"{k:>14s}" for k in keys))
    for r in rows:
        print(" ".join(f"{r.get(k, float('nan')):>14.3f}" if not isinstance(r.get(k), str)
                       else f"{r[k]:>14s}" for k in keys))
    gt = sum(r["gt_faces"] for r in rows)
    rec = sum(r["recall"] * r["gt_faces"] for r in rows if r["gt_faces"]) / max(1, gt)
    ious = [r["mean_iou"] for r in rows if np.isfinite(r["mean_iou"])]
    print(f"total: {gt} ground-truth faces, recall {rec:.3f}, mean IoU of matches "
          f"{np.mean(ious) if ious else float('nan'):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
