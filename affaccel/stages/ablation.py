"""The paper's ablation (Table 2): full model vs without fine-tuning / TCN / Transformer.

Command line: ``python -m affaccel.ablate --task va [--data-root DIR] [--seeds 0 1 2] [--out DIR]``.

Every variant trains on the same videos with the same seeds and the same training config; only
one thing changes per row:

- full:             fine-tuned CLIP features -> TCN -> Transformer -> MLP
- w/o fine-tuning:  features of the encoder fine-tuning starts from (pretrained or random init)
- w/o TCN:          a linear projection instead of the TCN
- w/o Transformer:  the TCN straight into the MLP head

Prints the table and writes it (with every run's metrics) to ``<out>/ablation.json``.

``--probe`` adds a diagnosis of the features themselves (VA only): a per-frame ridge regression
from each feature source (fine-tuned encoder, non-fine-tuned encoder, and raw 24x24 grey pixels
as a floor that needs no learning) to valence/arousal, fitted on the training videos and scored
on the validation videos. When the temporal variants cannot beat each other, this shows whether
the features carry the signal at all.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from affaccel import io_utils

VARIANTS = {  # name -> (fine-tuned features?, model overrides)
    "full": (True, {}),
    "w/o fine-tuning": (False, {}),
    "w/o TCN": (True, {"use_tcn": False}),
    "w/o Transformer": (True, {"use_transformer": False}),
}


def run_ablation(job, seeds: Sequence[int] = (0,), out: Path | None = None, probe: bool = False) -> dict:
    """Train every variant for every seed; returns {"rows": {variant: mean metrics}, "runs": ...}."""
    from affaccel.metrics import format_table, table_keys
    from affaccel.stages.pipeline import prepare, train_stage
    from affaccel.stages.temporal import default_run_dir

    out = Path(out) if out else default_run_dir(job.task, "ablation")
    preps = {True: prepare(dataclasses.replace(job, finetune=True)),
             False: prepare(dataclasses.replace(job, finetune=False))}
    runs: dict[str, list] = {}
    for name, (finetuned, model) in VARIANTS.items():
        for seed in seeds:
            over = {**job.overrides, "seed": seed, "model": {**(job.overrides.get("model") or {}), **model}}
            vjob = dataclasses.replace(job, finetune=finetuned, overrides=over, quiet_table=True, resume=False)
            slug = name.replace("/", "").replace(" ", "_").replace("-", "")
            result, _ = train_stage(vjob, preps[finetuned], out / f"{slug}-seed{seed}")
            runs.setdefault(name, []).append(result.metrics)
    keys = table_keys(job.task)
    rows = {name: {k: float(np.mean([m[k] for m in ms])) for k in ms[0]} for name, ms in runs.items()}
    spread = {name: {k: float(np.std([m[k] for m in ms])) for k in keys} for name, ms in runs.items()}
    table = format_table(list(rows.items()), keys)
    report = {"task": job.task, "seeds": list(seeds), "preset": preps[True].preset, "data_root": str(preps[True].root),
              "rows": rows, "std_over_seeds": spread, "runs": runs, "table": table}
    if probe and job.task == "va":
        report["probe"] = feature_probe(preps)
        report["probe_table"] = format_table(list(report["probe"].items()), keys)
    io_utils.atomic_write_json(out / "ablation.json", report)
    if "probe_table" in report:
        print(f"\nPer-frame ridge probe of the features (validation CCC; no temporal model)\n{report['probe_table']}")
    print(f"\nAblation, {job.task.upper()} ({len(seeds)} seed(s), mean over seeds) on {preps[True].root}")
    print(table)
    print(f"written: {out / 'ablation.json'}")
    return report


def _ridge_ccc(train_x, train_y, val_x, val_y, val_mask, lam: float) -> dict:
    from affaccel.metrics import va_metrics

    mu, sd = train_x.mean(0), train_x.std(0) + 1e-3
    a, b = (train_x - mu) / sd, (val_x - mu) / sd
    y0 = train_y.mean(0)
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (train_y - y0))
    return va_metrics(np.clip(b @ w + y0, -1, 1), val_y, val_mask)


def _pixels(record, size: int = 24) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("L").resize((size, size)), np.float32).ravel() / 255
                     for p in record.frame_paths])


def feature_probe(preps: dict, lams=(1.0, 100.0, 1000.0)) -> dict:
    """Validation CCC of per-frame ridge regressions to VA, best over ``lams``, per feature source."""
    sources = {"fine-tuned features": lambda r: np.asarray(preps[True].cache.load_features(r.video_id), np.float32),
               "non-fine-tuned features": lambda r: np.asarray(preps[False].cache.load_features(r.video_id),
                                                               np.float32),
               "raw 24x24 grey pixels": _pixels}
    prep = preps[True]
    out = {}
    for name, get in sources.items():
        def stack(records, train):
            rs = [r for r in records if "va" in r.labels]
            x = np.concatenate([get(r) for r in rs])
            y = np.concatenate([r.labels["va"] for r in rs])
            m = np.concatenate([r.label_mask["va"] & (r.frame_present if train else True) for r in rs])
            return x, y, m
        tx, ty, tm = stack(prep.train_records, True)
        vx, vy, vm = stack(prep.val_records, False)
        scores = [_ridge_ccc(tx[tm], ty[tm], vx, vy, vm, lam) for lam in lams]
        out[name] = max(scores, key=lambda m: m["ccc_mean"])
    return out
