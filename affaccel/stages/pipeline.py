"""The main job: every stage ``python -m affaccel.train`` needs, each cached.

    data (built-in synthetic set unless --data-root)  ->  stage 1: fine-tune CLIP (cached by
    config + training videos)  ->  stage 2: features of every frame (feature cache, keyed by the
    encoder's weights)  ->  stage 3: temporal model  ->  bundle + final_metrics.json + table

A rerun finds the synthetic set, the fine-tuned checkpoint and the features in
``AFFACCEL_HOME`` and goes straight to stage 3. With no GPU and no ``--data-root`` the CPU
presets are used (tiny CLIP, small temporal model); ``--data-root`` selects the paper's
configuration (ViT-B-16 from open_clip's "openai" weights, paper settings everywhere).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from affaccel import io_utils
from affaccel.config import JobSpec
from affaccel.device import resolve_device

log = logging.getLogger(__name__)


def resolve_preset(job: JobSpec) -> str:
    """The job's preset; unset: the paper's with a GPU or a data root, the CPU one otherwise."""
    if job.preset:
        return job.preset
    user_data = job.data_root is not None or job.annotations is not None
    return "paper" if (resolve_device().type == "cuda" or user_data) else "cpu"


# ----------------------------------------------------------------------------- stage 0: data
def job_tasks(job: JobSpec) -> tuple[str, ...]:
    """The tasks a job reads: its own, plus what stage 1 trains on (EXPR and its aux tasks)."""
    from affaccel.config import finetune_preset

    need = {job.task}
    if job.finetune:
        need |= {"expr", *finetune_preset(resolve_preset(job), job.pretrained).aux_tasks}
    return tuple(t for t in ("va", "expr", "au") if t in need)


def load_dataset(job: JobSpec):
    """(root, AffWild2) for the job: the given root (or annotation + frame roots), or the
    synthetic set (generated once). Real data is read leniently: a bad file drops its task of
    its video, reported in ``AffWild2.skipped``."""
    from affaccel.data.affwild2 import load_affwild2

    user_data = job.data_root is not None or job.annotations is not None
    if user_data:
        root = Path(job.data_root) if job.data_root is not None else Path(job.annotations)
        data = load_affwild2(job.data_root, tasks=job_tasks(job), splits=("train", "val"), lenient=True,
                             annotations=job.annotations, frames=job.frames)
        return root, data
    from affaccel.data.synthetic import ensure_synthetic

    t0 = time.perf_counter()
    root = Path(ensure_synthetic(job.synthetic, progress=job.progress))
    log.info("synthetic set %s ready in %.1fs", root, time.perf_counter() - t0)
    return root, load_affwild2(root, tasks=job_tasks(job), splits=("train", "val"))


def stage1_records(dataset, val_records, task: str | None) -> list:
    """The records stage 1 sees, with their roles. It never trains on a video of this run's
    validation set (``val_records``) and, on the official split (``task`` given), nor on a video
    in another task's validation split; it validates on those videos. Every other video may
    train it. Holding out every task's validation videos lets one fine-tuned encoder serve the
    runs of all three tasks (the same cache key) without any of them having trained on its own
    validation videos. A fold (``task=None``) re-splits the videos, and its own validation
    videos are the ones held out."""
    val_ids = {r.video_id for r in val_records}
    if task is not None:
        val_ids |= {r.video_id for r in dataset.videos if any(s == "val" for t, s in r.splits.items() if t != task)}
    return [dataclasses.replace(r, split="val" if r.video_id in val_ids else "train")
            for r in dataset.videos if r.split != "test"]


# ----------------------------------------------------------------------------- stage 1: CLIP
def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encoder_stage(records: Sequence, preset: str, finetune: bool, pretrained: str | None,
                  progress: bool, tag: str = "", backend: str = "auto"):
    """The encoder whose features the temporal model reads.

    finetune=True: fine-tune on the records' "train" split (validated on "val"), cached under
    AFFACCEL_HOME/finetune/<hash of config + videos>, so a rerun only loads the checkpoint.
    finetune=False: the encoder as fine-tuning would start it (pretrained or random init).
    """
    from affaccel import env
    from affaccel.config import finetune_preset, to_dict
    from affaccel.nn.clip import build_encoder, load_encoder_checkpoint
    from affaccel.stages.finetune import finetune as run_finetune

    cfg = finetune_preset(preset, pretrained)
    if backend != "auto":          # a named decoder is part of the cache key (nvJPEG and PIL may differ)
        cfg = dataclasses.replace(cfg, backend=backend)
    if not finetune:
        return build_encoder(cfg.clip).eval()
    from affaccel.stages.features import data_fingerprint

    # the frames on disk (path, size, mtime of each) and the labels, not only the video ids
    key = _digest({"cfg": to_dict(cfg), "videos": sorted((r.video_id, r.split, r.n_frames) for r in records),
                   "data": data_fingerprint(records),
                   "tag": tag})
    out = env.home() / "finetune" / f"{cfg.clip.model_name}-{key}"
    done = out / "done.json"
    if done.is_file():
        log.info("fine-tuned encoder cached at %s", out)
    else:
        t0 = time.perf_counter()
        best = run_finetune(list(records), cfg, out, device=resolve_device().type, resume=True, progress=progress)
        io_utils.atomic_write_json(done, {"best": str(best), "seconds": time.perf_counter() - t0,
                                          "config": to_dict(cfg)})
    return load_encoder_checkpoint(out / "best.pt")


# ----------------------------------------------------------------------------- stage 2: features
def feature_stage(records: Sequence, encoder, progress: bool, backend: str = "auto"):
    """Features of every frame of every record in the feature cache; returns (cache, failed ids)."""
    from affaccel.stages.features import (
        FeatureCache,
        default_cache_root,
        extract_features,
    )

    cache = FeatureCache.for_encoder(default_cache_root(), encoder)
    batch = 256 if resolve_device().type == "cuda" else 64
    summary = extract_features(list(records), encoder, cache, batch_size=batch, device=resolve_device().type,
                               progress=progress, backend=backend)
    for vid, why in summary["failed"].items():
        log.warning("video %s has no features and is left out: %s", vid, why)
    return cache, set(summary["failed"])


@dataclass
class Prepared:
    """Everything stage 3 needs for one split of one dataset."""
    root: Path
    preset: str
    encoder: Any
    cache: Any
    train_records: list
    val_records: list
    seconds: dict
    skipped: list = dataclasses.field(default_factory=list)   # what the data left out, and why


def prepare(job: JobSpec, train_records=None, val_records=None, dataset=None, root=None,
            tag: str = "") -> Prepared:
    """Stages 0-2 for ``job`` (records default to the official train / validation split)."""
    timings = {}
    t0 = time.perf_counter()
    if dataset is None:
        root, dataset = load_dataset(job)
    timings["data_s"] = time.perf_counter() - t0
    preset = resolve_preset(job)
    official = train_records is None
    if official:   # the evaluated task's own split
        train_records, val_records = dataset.by_split("train", job.task), dataset.by_split("val", job.task)
    records = stage1_records(dataset, val_records, job.task if official else None)
    t0 = time.perf_counter()
    encoder = encoder_stage(records, preset, job.finetune, job.pretrained, job.progress, tag, job.frames_backend)
    timings["finetune_s"] = time.perf_counter() - t0
    from affaccel import distributed

    distributed.init_from_env(resolve_device().type)  # fine-tuning leaves the process group under torchrun
    t0 = time.perf_counter()
    with distributed.main_process_first():  # rank 0 extracts; the other ranks then find the cache
        cache, failed = feature_stage(list(dataset.videos), encoder, job.progress, job.frames_backend)
    timings["extract_s"] = time.perf_counter() - t0
    # frames whose image would not decode are masked like missing ones
    keep = lambda rs: cache.mask_bad_frames([r for r in rs if r.video_id not in failed])  # noqa: E731
    return Prepared(root, preset, encoder, cache, keep(train_records), keep(val_records), timings,
                    skipped_items(dataset, failed))


def skipped_items(dataset, failed_features) -> list[dict]:
    """What the lenient reader skipped (file, reason: entries of ``AffWild2.skipped``) and the
    videos whose features failed, as rows for final_metrics.json and the final table."""
    rows = [{"file": str(f), "reason": str(why)} for f, why in getattr(dataset, "skipped", [])]
    return rows + [{"video": v, "reason": "no features (see the extraction log)"} for v in sorted(failed_features)]


def skipped_lines(skipped: list[dict]) -> str:
    if not skipped:
        return ""
    lines = [f"skipped {len(skipped)} (lenient data mode; also in final_metrics.json):"]
    lines += [f"  {s.get('file') or s.get('video')}: {s['reason']}" for s in skipped]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- stage 3
def train_stage(job: JobSpec, prep: Prepared, run_dir: Path):
    """Temporal model on prepared features; writes bundle.pt and final_metrics.json."""
    from affaccel.bundle import save_bundle
    from affaccel.config import make_config
    from affaccel.stages.temporal import train, write_final_metrics
    from affaccel.stages.windows import sequences_from_records

    cfg = make_config(job.task, prep.preset, **job.overrides)
    train_seqs = sequences_from_records(prep.train_records, job.task, prep.cache.load_features)
    val_seqs = sequences_from_records(prep.val_records, job.task, prep.cache.load_features)
    t0 = time.perf_counter()
    result = train(cfg, train_seqs, val_seqs, run_dir, resume=job.resume, progress=job.progress)
    prep.seconds["train_s"] = time.perf_counter() - t0
    from affaccel import distributed

    if not distributed.is_main():
        return result, None
    bundle = save_bundle(run_dir / "bundle.pt", window=cfg.window, encoder=prep.encoder,
                         tasks={job.task: (result.model, result.config, result.metrics)},
                         meta={"data_root": str(prep.root), "preset": prep.preset, "finetuned": job.finetune})
    per_video = write_per_video(run_dir, job.task, result.model, val_seqs, cfg, resolve_device())
    write_final_metrics(run_dir, job.task, result.metrics, result.best_epoch, bundle,
                        extra={"seconds": prep.seconds, "preset": prep.preset, "data_root": str(prep.root),
                               "per_video": per_video, "skipped": prep.skipped})
    return result, bundle


def write_per_video(run_dir: Path, task: str, model, val_seqs, cfg, device) -> dict:
    """Metrics of the best model on each validation video (``per_video.csv``), beside the pooled
    score; the same predictions validation scored (``affaccel.inference.temporal``)."""
    import csv
    import io

    import numpy as np

    from affaccel.inference.temporal import predict_frames
    from affaccel.metrics import task_metrics

    preds = predict_frames({task: model.to(device)}, [q.features for q in val_seqs], cfg.window.window,
                           cfg.window.stride, device, cfg.batch_size, cfg.averaging)
    out = {}
    for q, p in zip(val_seqs, preds):
        m = np.asarray(q.score_mask, bool)
        out[q.video_id] = {"frames": int(q.n_frames), "scored_frames": int(m.sum()),
                           **(task_metrics(task, p[task], q.labels, m) if m.any() else {})}
    keys = list(dict.fromkeys(k for row in out.values() for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["video", *keys])
    writer.writeheader()
    writer.writerows({"video": v, **row} for v, row in out.items())
    io_utils.atomic_write_text(Path(run_dir) / "per_video.csv", buf.getvalue())
    model.cpu()
    return out


def run_job(job: JobSpec) -> dict:
    """The main job: prepare (cached), train, bundle, print the final table; returns final metrics."""
    from affaccel import distributed
    from affaccel.stages.temporal import default_run_dir, final_table

    t0 = time.perf_counter()
    run_dir = Path(job.run_dir) if job.run_dir else default_run_dir(job.task)
    prep = prepare(job)
    result, bundle = train_stage(job, prep, run_dir)
    if distributed.is_main():
        final = json.loads((run_dir / "final_metrics.json").read_text())
        if not job.quiet_table:
            print(f"\n{job.task.upper()} on {prep.root} ({len(prep.val_records)} validation videos, "
                  f"best epoch {result.best_epoch}, {time.perf_counter() - t0:.0f} s)")
            print(final_table(job.task, result.metrics))
            if prep.skipped:
                print(skipped_lines(prep.skipped))
            print(f"run: {run_dir}\nbundle: {bundle}")
        return final
    return {}


def run_folds(job: JobSpec, k: int, seed: int = 0) -> list[dict]:
    """The paper's k-fold protocol (Table 1; ``AffWild2.folds``): fold 0 is the official split,
    folds 1..k-1 rotate chunks of the training videos with the official validation set. Each
    fold fine-tunes on its own training videos, extracts, trains; per-fold table + mean."""
    import numpy as np

    from affaccel.metrics import format_table, table_keys
    from affaccel.stages.temporal import default_run_dir

    root, dataset = load_dataset(job)
    base = Path(job.run_dir) if job.run_dir else default_run_dir(job.task, f"{k}fold")
    rows = []
    for f, (tr, va) in enumerate(dataset.folds(k, job.task, seed)):
        fold_job = dataclasses.replace(job, run_dir=base / f"fold{f}", quiet_table=True)
        prep = prepare(fold_job, tr, va, dataset=dataset, root=root, tag=f"fold{f}of{k}-seed{seed}")
        result, _ = train_stage(fold_job, prep, base / f"fold{f}")
        rows.append((f"fold {f}", result.metrics))
    keys = table_keys(job.task)
    mean = {key: float(np.mean([m[key] for _, m in rows])) for key in keys}
    table = format_table([*rows, ("mean", mean)], keys)
    io_utils.atomic_write_json(base / "folds.json", {"task": job.task, "k": k, "seed": seed,
                                                     "folds": [m for _, m in rows], "mean": mean})
    print(f"\n{job.task.upper()}: {k}-fold protocol on {root} (fold 0 = the official split)\n{table}\nruns: {base}")
    return [m for _, m in rows]
