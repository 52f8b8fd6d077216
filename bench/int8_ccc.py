"""What the opt-in int8 encoder costs the main job: `python bench/int8_ccc.py [--task va]`.

The least expensive honest comparison: the main job's own stages 1-2 (``prepare``: the cached
fine-tuned encoder and its fp32 feature cache; computed once when absent), then the same
fine-tuned encoder quantized (``affaccel.nn.quantize``) extracts an int8 feature cache of every
video; stage 3 is trained on each cache with the same config and seed, and the validation
metric of each is reported, with the per-frame cosine between the two feature sets and the
extraction throughput of each encoder. Writes bench/results/int8_ccc.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _train(job, prep, cache, run_dir):
    from affaccel.config import make_config
    from affaccel.stages.temporal import train
    from affaccel.stages.windows import sequences_from_records

    cfg = make_config(job.task, prep.preset, **job.overrides)
    tr = sequences_from_records(prep.train_records, job.task, cache.load_features)
    va = sequences_from_records(prep.val_records, job.task, cache.load_features)
    t0 = time.perf_counter()
    res = train(cfg, tr, va, run_dir, progress=False)
    return {"metrics": res.metrics, "best_epoch": res.best_epoch, "train_s": time.perf_counter() - t0}


def _cosines(prep, fp32, int8) -> dict:
    cos = []
    for r in [*prep.train_records, *prep.val_records]:
        a = np.asarray(fp32.load_features(r.video_id), np.float32)
        b = np.asarray(int8.load_features(r.video_id), np.float32)
        num = (a * b).sum(1)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        ok = den > 0
        cos.append(num[ok] / den[ok])
    c = np.concatenate(cos)
    return {"frames": int(c.size), "min": float(c.min()), "p01": float(np.percentile(c, 1)),
            "median": float(np.median(c)), "mean": float(c.mean())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="va", choices=("va", "expr", "au"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8_ccc.json"))
    a = p.parse_args(argv)
    import torch

    from affaccel.config import JobSpec
    from affaccel.nn.quantize import quantize_encoder
    from affaccel.stages.pipeline import feature_stage, prepare

    load0 = os.getloadavg()
    job = JobSpec(task=a.task, progress=False, quiet_table=True)
    t0 = time.perf_counter()
    prep = prepare(job)                               # stages 1-2 as the main job runs them
    prep_s = time.perf_counter() - t0
    videos = list({r.video_id: r for r in [*prep.train_records, *prep.val_records]}.values())
    q = quantize_encoder(prep.encoder)
    t0 = time.perf_counter()
    int8_cache, failed = feature_stage(videos, q, False)
    int8_extract_s = time.perf_counter() - t0
    out = {"task": a.task, "preset": prep.preset, "model": prep.encoder.config.model_name,
           "quantized_layers": q.quantized_layers, "prepare_s": prep_s, "stage_seconds": prep.seconds,
           "int8_extract_s": int8_extract_s, "int8_failed": sorted(failed),
           "cosine": _cosines(prep, prep.cache, int8_cache), "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="int8-ccc-") as tmp:
        for name, cache in (("fp32", prep.cache), ("int8", int8_cache)):
            out[name] = _train(job, prep, cache, Path(tmp) / name)
            print(f"{name}: {out[name]['metrics']}", file=sys.stderr)
    out["loadavg_start"], out["loadavg_end"] = load0, os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
