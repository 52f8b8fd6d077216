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
    python bench/bench_segments.py --sweep    # one video, 1 to 200k frames (issue 17)
    python bench/bench_segments.py --threshold  # 1 vs 2 threads by work size

``--sweep`` times the public calls (Python wrapper included) on one video of 1 to 200,000
frames against the NumPy slice references below (``numpy_slice_average``,
``numpy_slice_assemble``: one slice add or copy per window, the plain NumPy a user would
write) and against a memcpy (``np.copyto`` into a new buffer) of the bytes assembly writes:
averaging for K = 2, 8, 12 float32 outputs, assembly for D = 512 and 768 float16 features.
Rows go to bench/results/segments_sweep_cpu.csv. ``--threshold`` times both calls with the
thread pool forced off and on, to place the engine's parallel_min_bytes.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from affaccel import _ext, env  # noqa: E402
from affaccel import segments as S  # noqa: E402
from affaccel.io_utils import atomic_write_text  # noqa: E402

from _machine import cpu_model, git_commit, interleaved  # noqa: E402

CSV_PATH = ROOT / "bench" / "results" / "segments_cpu.csv"
SWEEP_CSV = ROOT / "bench" / "results" / "segments_sweep_cpu.csv"
SWEEP_FRAMES = (1, 100, 299, 300, 301, 1000, 3000, 10000, 50000, 200000)
SWEEP_FIELDS = ["date", "commit", "cpu", "cores", "loadavg", "numpy", "op", "frames", "param",
                "windows", "bytes", "repeats", "cxx_us", "numpy_us", "memcpy_us", "speedup",
                "vs_memcpy", "cxx_cpu_us", "numpy_cpu_us", "memcpy_cpu_us", "speedup_cpu"]
FIELDS = ["date", "commit", "cpu", "cores", "torch", "numpy", "op", "impl", "threads", "videos",
          "frames", "dim", "dtype", "window", "stride", "k", "bytes", "median_s", "min_s",
          "repeats", "cpu_s", "gb_per_s", "vs_baseline", "vs_baseline_cpu", "baseline"]


def case(op: str, impl: str, threads: int, nbytes: int, fn, baseline: str) -> dict:
    """One candidate: ``fn()`` is timed; ``baseline`` names the case its ratio is against."""
    return dict(op=op, impl=impl, threads=threads, bytes=nbytes, fn=fn, baseline=baseline)


def time_cases(cases: list[dict], repeats: int) -> list[dict]:
    """Times the cases interleaved (``_machine.interleaved``: round-robin in rotating order, one
    warm-up round; "new output" rows include page-fault costs, "reused output" rows measure copy
    bandwidth alone). Stores median/min wall seconds and the median CPU seconds of the whole
    process (all threads) in each case, and drops ``fn`` so the inputs it holds can be freed."""
    for c, t in zip(cases, interleaved([c["fn"] for c in cases], repeats, warmup=1)):
        c["median"], c["min"], c["cpu"] = t.median, t.min, t.cpu_median
        del c["fn"]
    return cases


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


def assemble_cases(torch, C, feats, index, w: int, s: int, threads: int, repeats: int) -> list[dict]:
    """Window assembly: checked against the reference and torch, then timed against memcpy."""
    windows, mask, _ = S.assemble_windows_batch(feats, w, s)  # also the memcpy source
    out_bytes = windows.nbytes
    tfeats = [torch.from_numpy(f) for f in feats]
    tw, tm = torch_assemble_batch(torch, tfeats, w, s)
    assert np.array_equal(tw.numpy(), windows) and np.array_equal(tm.numpy(), mask)
    ref_w, ref_m, _ = S.assemble_windows_batch_ref(feats, w, s)
    assert np.array_equal(ref_w, windows) and np.array_equal(ref_m, mask)
    del tw, tm, ref_w, ref_m
    reused = np.empty_like(windows)
    reused_mask = np.empty_like(mask)
    new, old = "memcpy np.copyto into new output", "memcpy np.copyto into reused output"
    cases = [
        case("assemble", new, 1, out_bytes, lambda: np.copyto(np.empty_like(windows), windows), new),
        case("assemble", old, 1, out_bytes, lambda: np.copyto(reused, windows), old),
        case("assemble", "C++ assemble_windows_batch (API)", threads, out_bytes,
             lambda: S.assemble_windows_batch(feats, w, s), new),
    ]
    if C is not None:
        for nt in sorted({1, threads}):
            cases.append(case("assemble", "C++ kernel into reused output", nt, out_bytes,
                              lambda nt=nt: C.gather_windows(feats, index, w, reused, reused_mask, nt),
                              old))
    cases += [
        case("assemble", "NumPy reference", 1, out_bytes,
             lambda: S.assemble_windows_batch_ref(feats, w, s), new),
        case("assemble", "torch unfold + cat", torch.get_num_threads(), out_bytes,
             lambda: torch_assemble_batch(torch, tfeats, w, s), new),
    ]
    return time_cases(cases, repeats)  # the windows die with this frame


def average_cases(torch, C, preds, index, lengths, w: int, weighting: str, threads: int,
                  repeats: int) -> list[dict]:
    """Overlap averaging: checked against the reference, then timed against it."""
    k, pred_bytes = preds.shape[-1], preds.nbytes
    ref_out = S.overlap_average_batch_ref(preds, index, lengths, weighting)
    got = S.overlap_average_batch(preds, index, lengths, weighting)
    assert all(np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(got, ref_out))
    tpreds = torch.from_numpy(preds)
    got = torch_average_batch(tpreds, index, lengths, weighting)
    assert all(np.allclose(a.numpy(), b, rtol=1e-4, atol=1e-5) for a, b in zip(got, ref_out))
    ref = "NumPy reference"
    cases = [
        case("average", ref, 1, pred_bytes,
             lambda: S.overlap_average_batch_ref(preds, index, lengths, weighting), ref),
        case("average", "C++ overlap_average_batch (API)", threads, pred_bytes,
             lambda: S.overlap_average_batch(preds, index, lengths, weighting), ref),
    ]
    if C is not None:
        wts = S.window_weights(w, weighting)
        vid, st = np.ascontiguousarray(index[:, 0]), np.ascontiguousarray(index[:, 1])
        nf = np.asarray(lengths, np.int64)
        out = np.empty((int(nf.sum()), k), np.float32)
        for nt in sorted({1, threads}):
            cases.append(case("average", "C++ kernel into reused output", nt, pred_bytes,
                              lambda nt=nt: C.overlap_average(preds, "float32", vid, st, nf, wts, out, nt),
                              ref))
    cases.append(case("average", "torch index_add_", torch.get_num_threads(), pred_bytes,
                      lambda: torch_average_batch(tpreds, index, lengths, weighting), ref))
    return time_cases(cases, repeats)


def add_ratios(cases: list[dict]) -> None:
    """Ratio to the baseline: time / memcpy time for assembly, reference time / time for
    averaging (wall and CPU time)."""
    by_name = {c["impl"]: c for c in cases if c["impl"] == c["baseline"]}
    for c in cases:
        b_ = by_name[c["baseline"]]
        if c["op"] == "assemble":
            c["vs"], c["vs_cpu"] = c["median"] / b_["median"], c["cpu"] / b_["cpu"]
        else:
            c["vs"], c["vs_cpu"] = b_["median"] / c["median"], b_["cpu"] / c["cpu"]


def write_csv(path: Path, cases: list[dict], meta: dict) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    old_text = path.read_text() if path.exists() else ""
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
    atomic_write_text(path, old_text + buf.getvalue())


def print_table(cases: list[dict], meta: dict, weighting: str) -> None:
    print(f"\n{meta['cpu']} ({meta['cores']} cores, load average {os.getloadavg()[0]:.1f}), "
          f"torch {meta['torch']}, commit {meta['commit']}, {meta['date']}")
    print(f"{meta['videos']} videos / {meta['frames']} frames, D={meta['dim']} float16, "
          f"w={meta['window']} s={meta['stride']}, K={meta['k']}, weighting={weighting}; "
          f"median of {meta['repeats']} interleaved runs")
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


# ------------------------------------------------------------------ sweep (one video)


def numpy_slice_average(preds: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """Plain NumPy overlap average (uniform weights): one slice add per window into a float32
    sum and a count, then one division. The baseline of the sweep: float32 sums make it faster
    than the library's float64 reference (S.overlap_average_ref), so speed-ups over it are the
    conservative ones. Agrees with the engine to float32 rounding."""
    w, k = preds.shape[1], preds.shape[2]
    acc = np.zeros((n, k), np.float32)
    cnt = np.zeros((n, 1), np.float32)
    for i, s in enumerate(starts.tolist()):
        e = min(s + w, n)
        acc[s:e] += preds[i, :e - s]
        cnt[s:e] += 1
    acc /= cnt
    return acc


def numpy_slice_assemble(x: np.ndarray, starts: np.ndarray, w: int):
    """Plain NumPy window assembly: zeroed outputs, one slice copy per window."""
    n = x.shape[0]
    out = np.zeros((len(starts), w, x.shape[1]), x.dtype)
    mask = np.zeros((len(starts), w), bool)
    for i, s in enumerate(starts.tolist()):
        e = min(s + w, n)
        out[i, :e - s] = x[s:e]
        mask[i, :e - s] = True
    return out, mask


def _repeats(nbytes: int, budget: int) -> int:
    """Timed runs for a case touching nbytes: many for tiny calls (medians of microseconds),
    fewer for large ones; ``budget`` scales the whole sweep (--repeats)."""
    return int(max(budget, min(400 * budget // 7, 3e9 // max(nbytes, 1) // 7 * budget)))


def sweep_average(n: int, k: int, budget: int) -> dict:
    starts = S.plan_windows(n)
    preds = np.random.default_rng(n + k).standard_normal((len(starts), 300, k), dtype=np.float32)
    got = S.overlap_average(preds, starts, n)
    np.testing.assert_array_equal(got, S.overlap_average_ref(preds, starts, n))  # same bits
    np.testing.assert_allclose(got, numpy_slice_average(preds, starts, n), rtol=1e-5, atol=1e-6)
    reps = _repeats(preds.nbytes, budget)
    c, r = interleaved([lambda: S.overlap_average(preds, starts, n),
                        lambda: numpy_slice_average(preds, starts, n)], reps, warmup=3)
    return dict(op="average", frames=n, param=f"K={k}", windows=len(starts), bytes=preds.nbytes,
                repeats=reps, cxx=c.median, numpy=r.median, memcpy=float("nan"),
                cxx_cpu=c.cpu_median, numpy_cpu=r.cpu_median, memcpy_cpu=float("nan"))


def sweep_assemble(n: int, d: int, budget: int) -> dict:
    x = np.random.default_rng(n + d).standard_normal((n, d), dtype=np.float32).astype(np.float16)
    starts = S.plan_windows(n)
    windows, mask = S.assemble_windows(x)
    ref_w, ref_m = numpy_slice_assemble(x, starts, 300)
    assert np.array_equal(windows, ref_w) and np.array_equal(mask, ref_m)
    written = np.empty(windows.nbytes + mask.nbytes, np.uint8)  # the bytes assembly writes
    del windows, mask, ref_w, ref_m
    reps = _repeats(written.nbytes, budget)
    c, r, m = interleaved([lambda: S.assemble_windows(x), lambda: numpy_slice_assemble(x, starts, 300),
                           lambda: np.copyto(np.empty_like(written), written)], reps, warmup=3)
    return dict(op="assemble", frames=n, param=f"D={d}", windows=len(starts), bytes=written.nbytes,
                repeats=reps, cxx=c.median, numpy=r.median, memcpy=m.median,
                cxx_cpu=c.cpu_median, numpy_cpu=r.cpu_median, memcpy_cpu=m.cpu_median)


def run_sweep(args) -> int:
    load0 = open("/proc/loadavg").read().split()[:3]
    rows = []
    for n in args.frames:
        for k in (2, 8, 12):
            rows.append(sweep_average(n, k, args.repeats))
        for d in (512, 768):
            rows.append(sweep_assemble(n, d, args.repeats))
        r = rows[-1]
        print(f"  {n} frames done (assemble D=768: C++ {r['cxx'] * 1e6:.1f} us)", flush=True)
    load1 = open("/proc/loadavg").read().split()[:3]
    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit("csrc", "affaccel/segments.py"), "cpu": cpu_model(),
            "cores": len(os.sched_getaffinity(0)), "numpy": np.__version__,
            "loadavg": f"{load0[0]}->{load1[0]}"}
    for r in rows:
        r["speedup"] = r["numpy"] / r["cxx"]
        r["speedup_cpu"] = r["numpy_cpu"] / r["cxx_cpu"]
        r["vs_memcpy"] = r["cxx"] / r["memcpy"] if r["op"] == "assemble" else float("nan")
    if not args.no_csv:
        write_sweep_csv(args.csv or SWEEP_CSV, rows, meta)
    print(f"\n{meta['cpu']} ({meta['cores']} cores), numpy {meta['numpy']}, commit {meta['commit']}, "
          f"{meta['date']}; load average {' '.join(load0)} before, {' '.join(load1)} after")
    print("One video, w=300 s=200; median us of interleaved runs, public call (wrapper included). "
          "speed-up = NumPy slice time / C++ time (wall; cpu: process CPU time, less sensitive to "
          "load); vs memcpy = C++ time / memcpy of the bytes written.")
    print(f"{'op':<9}{'frames':>7}{'param':>7}{'windows':>8}{'C++ us':>10}{'NumPy us':>10}"
          f"{'memcpy us':>10}{'speed-up':>9}{'cpu':>6}{'vs memcpy':>10}")
    for r in rows:
        mc = f"{r['memcpy'] * 1e6:>10.1f}" if r["op"] == "assemble" else f"{'':>10}"
        vm = f"{r['vs_memcpy']:>10.2f}" if r["op"] == "assemble" else f"{'':>10}"
        print(f"{r['op']:<9}{r['frames']:>7}{r['param']:>7}{r['windows']:>8}{r['cxx'] * 1e6:>10.1f}"
              f"{r['numpy'] * 1e6:>10.1f}{mc}{r['speedup']:>9.2f}{r['speedup_cpu']:>6.2f}{vm}")
    return 0


def write_sweep_csv(path: Path, rows: list[dict], meta: dict) -> None:
    """Appends rows; a file with other columns (an older version of this script) is rewritten
    under the current header first, its rows kept (new columns empty)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SWEEP_FIELDS, lineterminator="\n")
    old_text = path.read_text() if path.exists() else ""
    if old_text and old_text.splitlines()[0].split(",") != SWEEP_FIELDS:
        old_rows = list(csv.DictReader(io.StringIO(old_text)))
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in SWEEP_FIELDS} for row in old_rows)
        old_text = ""
    if not old_text and not buf.getvalue():
        writer.writeheader()
    for r in rows:
        writer.writerow({**meta, **{k: r[k] for k in ("op", "frames", "param", "windows", "bytes",
                                                       "repeats")},
                         "cxx_us": f"{r['cxx'] * 1e6:.2f}", "numpy_us": f"{r['numpy'] * 1e6:.2f}",
                         "memcpy_us": f"{r['memcpy'] * 1e6:.2f}", "speedup": f"{r['speedup']:.3f}",
                         "vs_memcpy": f"{r['vs_memcpy']:.3f}", "cxx_cpu_us": f"{r['cxx_cpu'] * 1e6:.2f}",
                         "numpy_cpu_us": f"{r['numpy_cpu'] * 1e6:.2f}",
                         "memcpy_cpu_us": f"{r['memcpy_cpu'] * 1e6:.2f}",
                         "speedup_cpu": f"{r['speedup_cpu']:.3f}"})
    atomic_write_text(path, old_text + buf.getvalue())


def run_threshold(args) -> int:
    """1 thread vs the pool (threshold 0) on one video, by work size: where 2 threads start to
    pay is where parallel_min_bytes belongs (per thread: half the work at the crossover)."""
    C = _ext.load()
    keep = C.parallel_min_bytes()
    print(f"load average {open('/proc/loadavg').read().split()[:3]}; engine default "
          f"parallel_min_bytes = {keep}")
    print(f"{'op':<9}{'frames':>7}{'work MB':>9}{'1 thr us':>10}{'pool us':>10}{'pool gain':>10}")
    try:
        for n in (3000, 10000, 30000, 50000, 100000, 200000):
            starts = S.plan_windows(n)
            preds = np.random.default_rng(n).standard_normal((len(starts), 300, 12), dtype=np.float32)
            x = np.random.default_rng(n).standard_normal((n, 768), dtype=np.float32).astype(np.float16)
            cases = {"average": (lambda: S.overlap_average(preds, starts, n),
                                 preds.nbytes + n * 48),
                     "assemble": (lambda: S.assemble_windows(x), len(starts) * 300 * 768 * 2)}
            for op, (fn, work) in cases.items():
                def one():
                    C.set_parallel_min_bytes(1 << 62)
                    fn()

                def pool():
                    C.set_parallel_min_bytes(0)
                    fn()
                reps = _repeats(work, args.repeats)
                a, b = interleaved([one, pool], reps, warmup=2)
                print(f"{op:<9}{n:>7}{work / 1e6:>9.1f}{a.median * 1e6:>10.1f}{b.median * 1e6:>10.1f}"
                      f"{a.median / b.median:>10.2f}", flush=True)
    finally:
        C.set_parallel_min_bytes(keep)
    print(f"load average after: {open('/proc/loadavg').read().split()[:3]}")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
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
    ap.add_argument("--sweep", action="store_true", help="one video, 1 to 200k frames, vs NumPy")
    ap.add_argument("--frames", type=int, nargs="+", default=list(SWEEP_FRAMES),
                    help="frame counts of --sweep")
    ap.add_argument("--threshold", action="store_true", help="1 thread vs the pool by size")
    ap.add_argument("--csv", type=Path, default=None,
                    help=f"rows go here (default {CSV_PATH.name}, with --sweep {SWEEP_CSV.name})")
    ap.add_argument("--no-csv", action="store_true", help="do not append to the CSV")
    args = ap.parse_args(argv)
    if args.quick:
        args.videos, args.min_frames, args.max_frames, args.dim = 8, 500, 1500, 128
        args.repeats = min(args.repeats, 5)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.sweep:
        return run_sweep(args)
    if args.threshold:
        return run_threshold(args)

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

    cases = assemble_cases(torch, C, feats, index, w, s, threads, args.repeats)
    preds = rng.standard_normal((n_win, w, args.k), dtype=np.float32)
    cases += average_cases(torch, C, preds, index, lengths, w, args.weighting, threads, args.repeats)
    add_ratios(cases)

    meta = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit("csrc", "affaccel/segments.py"), "cpu": cpu_model(),
            "cores": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "numpy": np.__version__, "videos": args.videos,
            "frames": sum(lengths), "dim": args.dim, "dtype": "float16", "window": w,
            "stride": s, "k": args.k, "repeats": args.repeats}
    if not args.no_csv:
        write_csv(args.csv or CSV_PATH, cases, meta)
    print_table(cases, meta, args.weighting)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
