"""An ABAW submission from model bundles and a dataset's test set (``python -m affaccel.submit``).

Two steps, so that every input problem is found before any heavy work:

1. :func:`plan_submission` reads the bundles' headers (windows, tasks, encoder present), the
   dataset's layout, the test lists and the sample files, and loads the test videos
   (``load_affwild2(..., splits=("test",))``). Errors: bundles whose windows differ, a task
   asked for that no bundle has, a task without a sample file, a bundle without an encoder, a
   sample file naming a video with no frames folder, a test list naming a video absent from its
   sample file.
2. :func:`run_submission` goes bundle by bundle (one encoder in memory at a time): features of
   the test videos with the bundle's encoder (the feature cache of stage 2; extracted from the
   frames when absent), per-frame predictions through ``affaccel.inference.temporal.predict_frames``
   (the path validation scores), summed per task in prediction space (VA values, EXPR and AU
   probabilities). Then per task: the mean over the bundles that have the task, a frame without
   an image takes the nearest imaged frame's prediction (a tie: the earlier), the decision
   (``affaccel.inference.abaw.decide``), the sample file's rows in its order, the in-memory check,
   and the atomic writes (plus the zip).

The format and the checker are ``affaccel.inference.abaw``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from affaccel import io_utils
from affaccel.inference import abaw
from affaccel.tasks import TASKS

log = logging.getLogger(__name__)

MANIFEST_NAME = "submission.json"


class SubmissionInputError(ValueError):
    """An input that cannot make a submission, found before any heavy work."""


@dataclass
class SubmissionPlan:
    bundles: list[Path]
    bundle_tasks: list[list[str]]      # per bundle: its tasks among those submitted
    window: dict                       # the bundles' common WindowConfig dict
    tasks: tuple[str, ...]             # submitted tasks, in TASKS order
    samples: dict[str, Any]            # task -> abaw.Sample
    records: list                      # test VideoRecords (every video of any submitted task)
    layout: Any = None
    where: dict = field(default_factory=dict)


def _bundle_header(path: Path) -> tuple[dict, list[str], bool]:
    """(window dict, tasks, has encoder) of a bundle; the weights are dropped right away."""
    from affaccel.bundle import read_bundle_dict

    raw = read_bundle_dict(path)
    return dict(raw["window"]), sorted(raw["tasks"]), raw["encoder"] is not None


def parse_tasks(text: str | None) -> tuple[str, ...] | None:
    """``"va,au"`` -> ("va", "au") in TASKS order; None stays None (every task of the bundles)."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise SubmissionInputError(f"--tasks {text!r}: expected a comma-separated subset of {list(TASKS)}")
    return tuple(t for t in TASKS if t in names)


def plan_submission(bundles: Sequence[str | Path], data: dict, tasks: Sequence[str] | None = None) -> SubmissionPlan:
    """Check the inputs and load the test set (module docstring, step 1).

    data: ``{"root", "annotations", "frames"}`` as ``affaccel.data.layout.data_arguments`` gives.
    tasks: the tasks to submit (default: every task of any bundle)."""
    from affaccel.data.affwild2 import load_affwild2
    from affaccel.data.layout import resolve_layout

    if not bundles:
        raise SubmissionInputError("no bundle given (--bundle B, once per bundle)")
    paths = [Path(b) for b in bundles]
    headers = [_bundle_header(p) for p in paths]
    windows = {str(sorted(w.items())) for w, _, _ in headers}
    if len(windows) > 1:
        listing = "; ".join(f"{p}: {w}" for p, (w, _, _) in zip(paths, headers))
        raise SubmissionInputError(f"the bundles use different windows ({listing}); averaging needs one "
                                   "window config: give bundles trained with the same window and stride")
    have = {t for _, ts, _ in headers for t in ts}
    wanted = tuple(t for t in TASKS if t in have) if tasks is None else tuple(tasks)
    absent = [t for t in wanted if t not in have]
    if absent:
        raise SubmissionInputError(f"task(s) {absent} asked for, but no bundle has a model for them "
                                   f"(the bundles have {sorted(have)})")
    for p, (_, ts, enc) in zip(paths, headers):
        if not enc and set(ts) & set(wanted):
            raise SubmissionInputError(f"{p}: bundle has no encoder, so the test frames cannot be turned "
                                       "into features (write it with python -m affaccel.train)")
    layout = resolve_layout(data.get("root"), data.get("annotations"), data.get("frames"))
    no_sample = [t for t in wanted if t not in layout.test_samples]
    if no_sample:
        places = sorted({str(layout.annotations), str(layout.annotations.parent)}
                        | ({str(data["root"])} if data.get("root") is not None else set()))
        raise SubmissionInputError(
            f"no test sample file for task(s) {no_sample}: looked for *_test_set_sample.txt naming the task "
            f"(CVPR_8th_ABAW_{{VA,Expr,AU}}_test_set_sample.txt) in {places} and one folder below")
    samples = {t: abaw.read_sample(layout.test_samples[t], t) for t in wanted}
    dataset = load_affwild2(data.get("root"), tasks=wanted, splits=("test",),
                            annotations=data.get("annotations"), frames=data.get("frames"))
    return SubmissionPlan(paths, [[t for t in ts if t in wanted] for _, ts, _ in headers], headers[0][0],
                          wanted, samples, list(dataset.videos), layout, dict(data))


# ---------------------------------------------------------------------------------------------


def features_of(records: Sequence, encoder, cache_root: Path, device, batch_size: int, backend: str,
                  progress: bool) -> tuple[list, list]:
    """(features [T_i, D] per record, records with undecodable frames marked absent).

    A cached entry of the same encoder with at least T_i frames is reused (its first T_i rows:
    the frames 1..T_i, the same images whatever the entry's length), so a video that is also in
    a training split is not re-extracted; the rest is extracted into the cache."""
    from affaccel.stages.features import FeatureCache, extract_features

    cache = FeatureCache.for_encoder(cache_root, encoder)

    def cached(r):
        if cache.check(r.video_id) is not None:
            return None
        arr = cache.load_features(r.video_id)
        return arr[: r.n_frames] if arr.shape[0] >= r.n_frames else None

    feats = {r.video_id: f for r in records if (f := cached(r)) is not None}
    todo = [r for r in records if r.video_id not in feats]
    if todo:
        summary = extract_features(todo, encoder, cache, batch_size=batch_size, device=str(device),
                                   progress=progress, backend=backend)
        if summary["failed"]:
            vid, why = next(iter(summary["failed"].items()))
            raise RuntimeError(f"test video {vid}: features not extracted ({why}); every row of the sample "
                               f"file needs a prediction ({len(summary['failed'])} video(s) failed)")
        feats.update({r.video_id: cache.load_features(r.video_id) for r in todo})
    return [feats[r.video_id] for r in records], cache.mask_bad_frames(list(records))


def bundle_predictions(path: Path, tasks: Sequence[str], records: Sequence, device, cache_root: Path,
                       batch_size: int, backend: str, progress: bool) -> tuple[dict, dict]:
    """One bundle on the test videos: ({task: {video: [T, K] prediction space}},
    {video: frame_present bool [T]})."""
    from affaccel.bundle import load_bundle
    from affaccel.inference.temporal import predict_frames

    b = load_bundle(path, device=str(device), tasks=list(tasks))
    feats, masked = features_of(records, b.encoder, cache_root, device, batch_size, backend, progress)
    present = {r.video_id: np.asarray(r.frame_present, bool) for r in masked}
    out: dict[str, dict[str, np.ndarray]] = {t: {} for t in tasks}
    by_weighting: dict[str, list[str]] = {}
    for t in tasks:
        by_weighting.setdefault(getattr(b.configs[t], "averaging", "uniform"), []).append(t)
    for weighting, ts in by_weighting.items():
        batch = min(b.configs[t].batch_size for t in ts)
        preds = predict_frames({t: b.models[t] for t in ts}, feats, b.window.window, b.window.stride,
                               device, batch, weighting)
        for r, p in zip(records, preds):
            for t in ts:
                out[t][r.video_id] = p[t].astype(np.float64)
    return out, present


def task_rows(task: str, sample, mean: dict, present: dict) -> tuple[np.ndarray, int]:
    """(decided values of the sample's rows in order, rows whose frame has no image)."""
    fill = {v: abaw.nearest_present(m) for v, m in present.items()}
    rows = np.empty((len(sample), TASKS[task].dim))
    filled = 0
    for i, (video, frame) in enumerate(sample.frames):
        t = frame - 1
        src = fill[video][t]
        filled += int(src != t)
        rows[i] = mean[video][src]
    try:
        return abaw.decide(task, rows), filled
    except ValueError as e:
        raise RuntimeError(f"{sample.path}: {e}") from None


def run_submission(plan: SubmissionPlan, out: str | Path, device="auto", cache_root=None, batch_size=None,
                   backend: str = "auto", make_zip: bool = False, progress: bool = True) -> dict:
    """Predict, decide, check and write the submission (module docstring, step 2). Returns the
    summary also written to ``<out>/submission.json``."""
    from affaccel.device import resolve_device
    from affaccel.stages.features import default_cache_root

    device = resolve_device(device)
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()
    batch_size = batch_size or (256 if device.type == "cuda" else 64)
    videos = {t: {v for v, _ in plan.samples[t].frames} for t in plan.tasks}
    sums: dict[str, dict[str, np.ndarray]] = {t: {} for t in plan.tasks}
    counts = {t: 0 for t in plan.tasks}
    present: dict[str, np.ndarray] = {}
    for path, tasks in zip(plan.bundles, plan.bundle_tasks):
        if not tasks:
            log.info("bundle %s has none of the tasks %s: not used", path, list(plan.tasks))
            continue
        records = [r for r in plan.records if any(r.video_id in videos[t] for t in tasks)]
        preds, pres = bundle_predictions(path, tasks, records, device, cache_root, batch_size, backend, progress)
        for v, m in pres.items():   # a frame counts as imaged only if every encoder decoded it
            present[v] = m & present[v] if v in present else m
        for t, per_video in preds.items():
            counts[t] += 1
            for v, p in per_video.items():
                if v in videos[t]:
                    sums[t][v] = sums[t][v] + p if v in sums[t] else p
    files, summary = {}, {"tasks": {}, "bundles": [str(p) for p in plan.bundles]}
    for t in plan.tasks:
        sample = plan.samples[t]
        mean = {v: s / counts[t] for v, s in sums[t].items()}
        values, filled = task_rows(t, sample, mean, present)
        name = abaw.prediction_name(t, sample.path)
        files[name] = (abaw.submission_lines(t, sample.locations, values), sample)
        summary["tasks"][t] = {"file": name, "rows": len(sample), "rows_without_image": filled,
                               "videos": len(videos[t]), "sample": str(sample.path),
                               "bundles": [str(p) for p, ts in zip(plan.bundles, plan.bundle_tasks) if t in ts]}
    written = abaw.write_submission_files(out, files, abaw.ZIP_NAME if make_zip else None)
    summary["zip"] = str(written[abaw.ZIP_NAME]) if make_zip else None
    io_utils.atomic_write_json(Path(out) / MANIFEST_NAME, summary)
    return summary


def load_samples(data: dict, tasks: Sequence[str] | None = None) -> dict:
    """task -> abaw.Sample of every sample file of the dataset (``tasks``: only those)."""
    from affaccel.data.layout import resolve_layout

    layout = resolve_layout(data.get("root"), data.get("annotations"), data.get("frames"))
    found = {t: p for t, p in layout.test_samples.items() if tasks is None or t in tasks}
    if not found:
        raise SubmissionInputError(f"no test sample file (CVPR_8th_ABAW_*_test_set_sample.txt) found beside "
                                   f"{layout.annotations}: the check compares with them")
    return {t: abaw.read_sample(p, t) for t, p in sorted(found.items(), key=lambda kv: list(TASKS).index(kv[0]))}


__all__ = ["SubmissionInputError", "SubmissionPlan", "bundle_predictions", "load_samples", "parse_tasks",
           "plan_submission", "run_submission", "task_rows", "features_of"]
