"""Benchmark of the window engine (affaccel.segments) on CPU.

Window assembly: the C++ engine vs the NumPy reference vs torch (``unfold`` + ``cat``), in GB/s
of window bytes written, against a plain memcpy (``np.copyto``) of the same number of bytes
measured in the same run. Overlap averaging: C++ vs the NumPy reference vs torch
(``index_add_``), as speed-up over the reference.

Default size: 64 videos of 3,000-8,000 frames, D = 768 float16 features, w = 300, s = 200,
K = 12 outputs per frame. ``--quick`` runs a small size in seconds. Every measurement is the
median of ``--repeats`` timed runs after one warm-up; a table is printed last and one row per
measurement is appended to bench/results/segments_cpu.csv (CPU, torch version, commit, date).

    python bench/bench_segments.py            # full size (about 2.5 GB of memory)
    python bench/bench_segments.py --quick
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_model, git_commit  # noqa: E402

from affaccel import _ext, env, segments as S  # noqa: E402
from affaccel.io_utils import atomic_write_text  # noqa: E402

CSV_PATH = ROOT / "bench" / "results" / "segments_cpu.csv"
FIELDS = ["date", "commit", "cpu", "cores", "torch", "numpy", "op", "impl", "threads", "videos",
          "frames", "dim", "dtype", "window", "stride", "k", "bytes", "median_s", "min_s",
          "repeats", "cpu_s", "gb_per_s", "vs_baseline", "vs_baseline_cpu", "baseline"]


def time_interleaved(cases: list[dict], repeats: int, warmup: int = 1) -> None:
    """Time every case's fn() `repeats` times, round-robin, after `warmup` rounds.

    Round-robin order spreads load from other processes over all cases alike (the development
    machines are shared); rotating the order each round keeps one case from always following
    another (a case that frees a large buffer makes the next fresh allocation pay for
    transparent-huge-page compaction; "new output" rows include such page-fault costs,
    "reused output" rows measure copy bandwidth alone). Stores median/min wall seconds and
    the median CPU seconds of the whole process (all threads) in each case.
    """
    wall = {id(c): [] for c in cases}
    cpu = {id(c): [] for c in cases}
    for r in range(warmup + repeats):
        for c in cases[r % len(cases):] + cases[:r % len(cases)]:  # rotate: no fixed neighbour
            t0, c0 = time.perf_counter(), time.process_time()
            c["fn"]()
            t1, c1 = time.perf_counter(), time.process_time()
            if r >= warmup:
                wall[id(c)].append(t1 - t0)
                cpu[id(c)].append(c1 - c0)
    for c in cases:
        c["median"], c["min"] = statistics.median(wall[id(c)]), min(wall[id(c)])
        c["cpu"] = statistics.median(cpu[id(c)])


def torch_assemble_batch(torch, feats, w: int, s: int):
    """torch baseline: per-video unfold views (+ the tail window), one torch.cat copy."""
    parts, masks = [], []
    for x in feats:
        t = x.shape[0]
        starts = S.plan_windows(t, w, s)
        if t < w:
            win, m = S.assemble_windows_torch(x, w, s)
            parts.append(win)
            masks.append(m)
            continue
        parts.append(x.unfold(0, w, s).transpose(1, 2))
        if len(starts) > parts[-1].shape[0]:
            parts.append(x[t - w:][None])
        masks.append(torch.ones((len(starts), w), dtype=torch.bool))
    return torch.cat(parts), torch.cat(masks)


def torch_average_batch(preds, index: np.ndarray, lengths, weighting: str):
    """torch baseline: overlap_average_torch (index_add_) per video."""
    import torch

    out = []
    for v, n in enumerate(lengths):
        rows = np.flatnonzero(index[:, 0] == v)
        out.append(S.overlap_average_torch(preds[torch.from_numpy(rows)], index[rows, 1], n,
                                           weighting))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=64)
    ap.add_argument("--min-frames", type=int, default=3000)
    ap.add_argument("--max-frames", type=int, default=8000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--window", type=int, default=300)
    ap.add_argument("--stride", type=int, default=200)
    ap.add_argument("--k", type=int, default=12, help="outputs per frame for averaging")
    ap.add_argument("--weighting", default="uniform", choices=S.WEIGHTINGS)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="small size, for a smoke run")
    ap.add_argument("--csv", type=Path, default=CSV_PATH)
    ap.add_argument("--no-csv", action="store_true", help="do not append to the CSV")
    args = ap.parse_args(argv)
    if args.quick:
        args.videos, args.min_frames, args.max_frames, args.dim = 8, 500, 1500, 128
        args.repeats = min(args.repeats, 5)

    import torch

    if not _ext.available():
        print(f"WARNING: affaccel._C not available ({_ext.load_error()}); the 'C++' rows run "
              f"the NumPy reference", file=sys.stderr)
    C = _ext.load() if _ext.available() else None
    threads = env.num_threads() or (dict(C.build_info)["hardware_threads"] if C else 1)

    rng = np.random.default_rng(0)
    lengths = rng.integers(args.min_frames, args.max_frames + 1, size=args.videos).tolist()
    feats = [rng.standard_normal((n, args.dim), dtype=np.float32).astype(np.float16)
             for n in lengths]
    w, s = args.window, args.stride
    index = S._plan_index(lengths, w, s)
    n_win = len(index)
    out_bytes = n_win * w * args.dim * 2
    print(f"{args.videos} videos, {sum(lengths)} frames, D={args.dim} float16 -> {n_win} "
          f"windows of {w} (stride {s}): {out_bytes / 1e9:.2f} GB of windows; engine threads "
          f"{threads}, torch threads {torch.get_num_threads()}", flush=True)

    cases: list[dict] = []

    def case(op, impl, nthreads, nbytes, fn, baseline):
        cases.append(dict(op=op, impl=impl, threads=nthreads, bytes=nbytes, fn=fn,
                          baseline=baseline))

    # ---------------------------------------------------------------- window assembly
    windows, mask, _ = S.assemble_windows_batch(feats, w, s)  # also the memcpy source
    tfeats = [torch.from_numpy(f) for f in feats]
    tw, tm = torch_assemble_batch(torch, tfeats, w, s)
    assert np.array_equal(tw.numpy(), windows) and np.array_equal(tm.numpy(), mask)
    ref_w, ref_m, _ = S.assemble_windows_batch_ref(feats, w, s)
    assert np.array_equal(ref_w, windows) and np.array_equal(ref_m, mask)
    del tw, tm, ref_w, ref_m
    reused = np.empty_like(windows)
    reused_mask = np.empty_like(mask)
    new, old = "memcpy np.copyto into new output", "memcpy np.copyto into reused output"
    case("assemble", new, 1, out_bytes,
         lambda: np.copyto(np.empty_like(windows), windows), new)
    case("assemble", old, 1, out_bytes,
         lambda: np.copyto(reused, windows), old)
    case("assemble", "C++ assemble_windows_batch (API)", threads, out_bytes,
         lambda: S.assemble_windows_batch(feats, w, s), new)
    if C is not None:
        for nt in sorted({1, threads}):
            case("assemble", "C++ kernel into reused output", nt, out_bytes,
                 lambda nt=nt: C.gather_windows(feats, index, w, reused, reused_mask, nt), old)
    case("assemble", "NumPy reference", 1, out_bytes,
         lambda: S.assemble_windows_batch_ref(feats, w, s), new)
    case("assemble", "torch unfold + cat", torch.get_num_threads(), out_bytes,
         lambda: torch_assemble_batch(torch, tfeats, w, s), new)
    time_interleaved(cases, args.repeats)
    del windows, mask, reused, reused_mask
    n_assemble = len(cases)

    # ------------------------------------------------------------- overlap averaging
    preds = rng.standard_normal((n_win, w, args.k), dtype=np.float32)
    pred_bytes = preds.nbytes
    ref_out = S.overlap_average_batch_ref(preds, index, lengths, args.weighting)
    got = S.overlap_average_batch(preds, index, lengths, args.weighting)
    assert all(np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(got, ref_out))
    tpreds = torch.from_numpy(preds)
    got = torch_average_batch(tpreds, index, lengths, args.weighting)
    assert all(np.allclose(a.numpy(), b, rtol=1e-4, atol=1e-5) for a, b in zip(got, ref_out))
    ref = "NumPy reference"
    case("average", ref, 1, pred_bytes,
         lambda: S.overlap_average_batch_ref(preds, index, lengths, args.weighting), ref)
    case("average", "C++ overlap_average_batch (API)", threads, pred_bytes,
         lambda: S.overlap_average_batch(preds, index, lengths, args.weighting), ref)
    if C is not None:
        wts = S.window_weights(w, args.weighting)
        vid, st = np.ascontiguousarray(index[:, 0]), np.ascontiguousarray(index[:, 1])
        nf = np.asarray(lengths, np.int64)
        out = np.empty((int(nf.sum()), args.k), np.float32)
        for nt in sorted({1, threads}):
            case("average", "C++ kernel into reused output", nt, pred_bytes,
                 lambda nt=nt: C.overlap_average(preds, "float32", vid, st, nf, wts, out, nt), ref)
    case("average", "torch index_add_", torch.get_num_threads(), pred_bytes,
         lambda: torch_average_batch(tpreds, index, lengths, args.weighting), ref)
    time_interleaved(cases[n_assemble:], args.repeats)

    # ratio to the baseline: time / memcpy time for assembly, reference time / time for averaging
    by_name = {c["impl"]: c for c in cases if c["impl"] == c["baseline"]}
    for c in cases:
        b_ = by_name[c["baseline"]]
        if c["op"] == "assemble":
            c["vs"], c["vs_cpu"] = c["median"] / b_["median"], c["cpu"] / b_["cpu"]
        else:
            c["vs"], c["vs_cpu"] = b_["median"] / c["median"], b_["cpu"] / c["cpu"]

    # ------------------------------------------------------------------ CSV and table
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit("csrc", "affaccel/segments.py"), "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "numpy": np.__version__, "videos": args.videos,
            "frames": sum(lengths), "dim": args.dim, "dtype": "float16", "window": w,
            "stride": s, "k": args.k, "repeats": args.repeats}
    if not args.no_csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=FIELDS)
        old_text = args.csv.read_text() if args.csv.exists() else ""
        if not old_text:
            writer.writeheader()
        for c in cases:
            writer.writerow({**meta, "op": c["op"], "impl": c["impl"], "threads": c["threads"],
                             "bytes": c["bytes"], "median_s": f"{c['median']:.6f}",
                             "min_s": f"{c['min']:.6f}", "cpu_s": f"{c['cpu']:.6f}",
                             "gb_per_s": f"{c['bytes'] / c['median'] / 1e9:.3f}",
                             "vs_baseline": f"{c['vs']:.3f}",
                             "vs_baseline_cpu": f"{c['vs_cpu']:.3f}",
                             "baseline": c["baseline"]})
        atomic_write_text(args.csv, old_text + buf.getvalue())

    print(f"\n{meta['cpu']} ({meta['cores']} cores, load average {os.getloadavg()[0]:.1f}), "
          f"torch {meta['torch']}, commit {meta['commit']}, {meta['date']}")
    print(f"{args.videos} videos / {sum(lengths)} frames, D={args.dim} float16, w={w} s={s}, "
          f"K={args.k}, weighting={args.weighting}; median of {args.repeats} interleaved runs")
    print("wall: median wall-clock time (min: fastest run); cpu: median CPU time of the "
          "process (all threads). "
          "assemble ratio = time / memcpy time (lower is better); average ratio = speed-up over "
          "the NumPy reference.")
    print(f"{'op':<9}{'implementation':<35}{'thr':>4}{'wall ms':>10}{'min ms':>9}{'cpu ms':>9}"
          f"{'GB/s':>7}"
          f"{'ratio':>8}{'ratio cpu':>10}  baseline")
    for c in cases:
        print(f"{c['op']:<9}{c['impl']:<35}{c['threads']:>4}{c['median'] * 1e3:>10.1f}"
              f"{c['min'] * 1e3:>9.1f}{c['cpu'] * 1e3:>9.1f}"
              f"{c['bytes'] / c['median'] / 1e9:>7.2f}{c['vs']:>8.2f}"
              f"{c['vs_cpu']:>10.2f}  {c['baseline']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
