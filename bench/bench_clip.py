"""CLIP stage throughput: frames/s of feature extraction, encoder alone and end to end.

    python bench/bench_clip.py [--models affaccel-rn-tiny,affaccel-vit-tiny,ViT-B-16] [--frames 64] [--repeats 3]
                               [--device cpu|cuda] [--batch 64]

Rows, per model, measured side by side in one run (median of --repeats after one warm-up):
  encoder      ClipEncoder forward on ready, normalised tensors (bf16 autocast on GPU)
  extract      extract_features end to end: JPEG read + decode + resize + normalise (DALI) +
               encoder + float16 cache write, on frames of the built-in synthetic set (each run
               also hashes the weights twice for the cache key/check: see identity_hash_s)
  extract-ref  the same with the PIL/NumPy reference preprocessing (the naive baseline)
On GPU the encoder row also gives the fraction of the bf16 roofline, scaling ViT-B/16's 35.2
GFLOP per 224 px frame by the model's FLOPs (DESIGN.md: 790 TFLOP/s dense bf16 on H100).
Prints a table last and appends rows to bench/results/clip_throughput.jsonl.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _flops import bf16_matmul_peak_tflops, encoder_gflop, roofline_fraction  # noqa: E402
from _machine import wall_clock  # noqa: E402


def bench_model(name: str, records, n_frames: int, batch: int, device: str, repeats: int) -> list[dict]:
    import torch

    from affaccel.config import ClipConfig
    from affaccel.device import autocast
    from affaccel.nn.clip import build_encoder
    from affaccel.stages.features import FeatureCache, extract_features

    enc = build_encoder(ClipConfig(model_name=name)).eval()
    gflop = encoder_gflop(enc)
    enc = enc.to(device)
    rows = []
    x = torch.randn(batch, 3, enc.image_size, enc.image_size, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def encoder_only():
        with torch.inference_mode(), autocast(device, enc.config.precision):
            for _ in range(max(1, n_frames // batch)):
                enc(x)
        sync()

    t = wall_clock(encoder_only, repeats).median
    frames = max(1, n_frames // batch) * batch
    fps = frames / t
    row = {"model": name, "row": "encoder", "size": enc.image_size, "frames_per_s": fps,
           "gflop_per_frame": gflop}
    if device.startswith("cuda"):
        peak = bf16_matmul_peak_tflops(device)
        row["bf16_matmul_peak_tflops"] = peak
        row["roofline_fraction"] = roofline_fraction(fps, gflop, peak)
    rows.append(row)

    # End to end on the first n_frames frames of the synthetic set (cut into short "videos"),
    # into a fresh cache each time; includes hashing the weights for the cache check.
    t_id = wall_clock(enc.identity, repeats).median
    for backend, label in (("auto", "extract"), ("reference", "extract-ref")):
        def run():
            with tempfile.TemporaryDirectory() as tmp:
                cache = FeatureCache.for_encoder(tmp, enc)
                out = extract_features(records, enc, cache, batch_size=batch, device=device,
                                       progress=False, backend=backend)
                assert out["frames"] == sum(r.n_frames for r in records), out
        t = wall_clock(run, repeats).median
        rows.append({"model": name, "row": label, "size": enc.image_size,
                     "frames_per_s": sum(r.n_frames for r in records) / t,
                     "identity_hash_s": t_id})
    return rows


def _records(n_frames: int):
    from dataclasses import replace

    from affaccel.data.affwild2 import load_affwild2
    from affaccel.data.synthetic import ensure_synthetic

    # the tiny set has about 750 frames; larger runs (GPU) read the default set
    data = load_affwild2(ensure_synthetic("tiny" if n_frames <= 700 else "default"),
                         tasks=("expr",))
    out, left = [], n_frames
    for r in data.videos:
        take = min(left, r.n_frames)
        out.append(replace(r, n_frames=take, frame_paths=r.frame_paths[:take],
                           frame_present=r.frame_present[:take]))
        left -= take
        if left == 0:
            break
    return out


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="affaccel-rn-tiny,affaccel-vit-tiny,ViT-B-16")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    records = _records(args.frames)
    rows = []
    for name in args.models.split(","):
        rows += bench_model(name, records, args.frames, args.batch, args.device, args.repeats)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    machine = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
               else f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads")
    meta = {"machine": machine, "torch": torch.__version__, "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "batch": args.batch, "frames": args.frames, "repeats": args.repeats,
            # other work on the machine skews CPU figures: record how busy it was
            "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    out = Path(__file__).parent / "results" / "clip_throughput.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        for r in rows:
            f.write(json.dumps({**meta, **r}) + "\n")
    print(f"\n{machine}, torch {torch.__version__}, batch {args.batch}, "
          f"median of {args.repeats}, commit {commit}")
    print(f"{'model':<20} {'row':<12} {'px':>4} {'frames/s':>10} {'GFLOP/f':>8} {'roofline':>9} "
          f"{'hash s':>7}")
    for r in rows:
        gf = f"{r['gflop_per_frame']:.2f}" if "gflop_per_frame" in r else ""
        rf = f"{100 * r['roofline_fraction']:.1f}%" if "roofline_fraction" in r else ""
        hs = f"{r['identity_hash_s']:.2f}" if "identity_hash_s" in r else ""
        print(f"{r['model']:<20} {r['row']:<12} {r['size']:>4} {r['frames_per_s']:>10.1f} "
              f"{gf:>8} {rf:>9} {hs:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
