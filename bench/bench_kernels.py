"""Benchmark of the fused Triton kernels: CCC loss (and the TCN block, from bench_tcn.py).

GPU: the CCC loss at B x T x K = 32 x 300 x 2, bf16 predictions and targets, a mask with ~10 %
invalid frames, reductions "global" and "per_window"; forward, backward and forward+backward of

* ``fused``                 affaccel.ops.ccc_loss (Triton: 2 forward launches, 1 backward)
* ``fused + CUDA graph``    the same captured in a CUDA graph (forward and forward+backward)
* ``eager reference``       affaccel.ops.ccc_loss_ref (the pure PyTorch reference)
* ``eager textbook``        the textbook masked CCC loss in eager PyTorch (fewest ops)
* ``eager reference + CUDA graph``, ``eager textbook + CUDA graph``: the eager losses captured
  exactly as the fused one is (``_capture``), so a graph replay is compared with a graph replay
* ``torch.compile textbook`` and ``torch.compile reference``

timed with ``triton.testing.do_bench`` (median). Speed-ups are against the faster eager variant
and the faster torch.compile variant of the same pass; rows captured in a CUDA graph are
compared with the captured eager variants only (a graph removes the launch cost that
dominates this loss, whichever kernels it replays), the others with the uncaptured ones. The TCN rows come from
``bench/bench_tcn.py``'s ``run_tcn_bench(quick)`` when that file exists. A table is printed last;
rows are appended to bench/results/kernels.csv (GPU name, torch/Triton versions, commit, date).

Without a GPU the speed targets cannot be measured: the script says so, times the CPU
reference as a sanity number (bench/results/kernels_cpu.csv; no GPU claim is derived from it),
optionally (``--check``) runs the Triton kernels through the CPU interpreter against the
reference, and exits 0.

    python bench/bench_kernels.py            # GPU: full run
    python bench/bench_kernels.py --quick    # shorter timing windows
    python bench/bench_kernels.py --check    # also a correctness smoke (interpreter on CPU)
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib.util
import io
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from affaccel.io_utils import atomic_write_text  # noqa: E402

from _machine import cpu_model, git_commit, gpu_median_ms, wall_clock  # noqa: E402

GPU_CSV = ROOT / "bench" / "results" / "kernels.csv"
CPU_CSV = ROOT / "bench" / "results" / "kernels_cpu.csv"
FIELDS = ["date", "commit", "device", "torch", "triton", "kernel", "case", "dtype", "impl",
          "pass", "median_ms", "vs_eager", "vs_compile", "note"]
B, T, K = 32, 300, 2
TARGETS = "CCC fwd+bwd >= 5x eager; TCN block fwd+bwd >= 1.5x eager and >= torch.compile"


# --------------------------------------------------------------------------- metadata
def triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except Exception:
        return "none"


# --------------------------------------------------------------------------- baselines
def ccc_loss_textbook(pred, target, mask, reduction="global"):
    """Masked CCC loss as usually written in eager PyTorch. pred, target: [B, T, K]; mask [B, T].

    No degenerate-case handling (this is the baseline, not the reference).
    """
    x, y = pred.float(), target.float()
    m = mask.unsqueeze(-1).to(x.dtype)
    dims = (0, 1) if reduction == "global" else (1,)
    n = m.sum(dims)
    mx, my = (x * m).sum(dims) / n, (y * m).sum(dims) / n
    ex = (x - mx.unsqueeze(-2) if reduction == "per_window" else x - mx) * m
    ey = (y - my.unsqueeze(-2) if reduction == "per_window" else y - my) * m
    vx, vy, cov = (ex * ex).sum(dims) / n, (ey * ey).sum(dims) / n, (ex * ey).sum(dims) / n
    ccc = 2 * cov / (vx + vy + (mx - my) ** 2)
    return 1 - ccc.mean()


# --------------------------------------------------------------------------- table / CSV
def row(case, dtype, impl, pass_, median_ms, note=""):
    """One CCC measurement (median_ms None when the implementation failed to run)."""
    return {"kernel": "ccc", "case": case, "dtype": dtype, "impl": impl, "pass": pass_,
            "median_ms": median_ms, "note": " ".join(note.split())}


GRAPH = " + CUDA graph"   # suffix of the implementations timed as CUDA-graph replays


def add_speedups(rows):
    """vs_eager / vs_compile per (kernel, case, dtype, pass) against the faster variant; graph
    replays (impl ending in GRAPH) against graph replays, the others against the others."""
    groups = {}
    for r in rows:
        graphed = r["impl"].endswith(GRAPH)
        groups.setdefault((r["kernel"], r["case"], r["dtype"], r["pass"], graphed), []).append(r)
    for grp in groups.values():
        ok = [r for r in grp if isinstance(r.get("median_ms"), float)]
        eager = [r["median_ms"] for r in ok if r["impl"].startswith("eager")]
        comp = [r["median_ms"] for r in ok if r["impl"].startswith("torch.compile")]
        for r in ok:
            if eager and "vs_eager" not in r:
                r["vs_eager"] = min(eager) / r["median_ms"]
            if comp and "vs_compile" not in r:
                r["vs_compile"] = min(comp) / r["median_ms"]


def normalize_tcn_row(r: dict) -> dict:
    """Rows from run_tcn_bench: keep the common columns, fold any other keys into `case`."""
    known = {"kernel", "case", "dtype", "impl", "pass", "median_ms", "ms", "vs_eager",
             "vs_compile", "note", "mode"}
    extra = ", ".join(f"{k}={v}" for k, v in r.items() if k not in known)
    case = str(r.get("case", "")) + ((" " if r.get("case") else "") + extra if extra else "")
    ms = r.get("median_ms", r.get("ms"))
    out = {"kernel": str(r.get("kernel", "tcn")), "case": case, "dtype": str(r.get("dtype", "")),
           "impl": str(r.get("impl", "?")), "pass": str(r.get("pass", r.get("mode", "?"))),
           "median_ms": float(ms) if ms is not None else None, "note": str(r.get("note", ""))}
    for key in ("vs_eager", "vs_compile"):
        if r.get(key) is not None:
            out[key] = float(r[key])
    return out


def write_csv(path: Path, rows, meta):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    old = path.read_text() if path.exists() else ""
    if not old:
        writer.writeheader()
    for r in rows:
        writer.writerow({**meta, **{k: r.get(k, "") for k in FIELDS if k not in meta},
                         "median_ms": "" if r.get("median_ms") is None else f"{r['median_ms']:.5f}",
                         "vs_eager": f"{r['vs_eager']:.2f}" if "vs_eager" in r else "",
                         "vs_compile": f"{r['vs_compile']:.2f}" if "vs_compile" in r else ""})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, old + buf.getvalue())
    print(f"appended {len(rows)} rows to {path}")


def print_table(rows, meta, how):
    print(f"\n{meta['device']}, torch {meta['torch']}, Triton {meta['triton']}, commit "
          f"{meta['commit']}, {meta['date']}; {how}")
    print(f"{'kernel':<7}{'case':<64}{'dtype':<10}{'pass':<9}{'implementation':<32}"
          f"{'median ms':>10}{'x eager':>9}{'x compile':>10}  note")
    for r in rows:
        ms = "-" if r.get("median_ms") is None else f"{r['median_ms']:.4f}"
        ve = f"{r['vs_eager']:.2f}" if "vs_eager" in r else "-"
        vc = f"{r['vs_compile']:.2f}" if "vs_compile" in r else "-"
        print(f"{r['kernel']:<7}{r['case'][:63]:<64}{r['dtype']:<10}{r['pass']:<9}"
              f"{r['impl'][:31]:<32}{ms:>10}{ve:>9}{vc:>10}  {r.get('note', '')}")


# --------------------------------------------------------------------------- GPU: CCC
def _capture(fn):
    """CUDA graph of fn() after warm-up on a side stream (PyTorch's capture recipe)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def bench_ccc_gpu(quick: bool):
    import affaccel.ops.concordance as C

    rep = 30 if quick else 200
    dtype = torch.bfloat16
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, T, K, device="cuda", dtype=dtype, generator=gen).requires_grad_(True)
    y = (0.6 * x.detach().float() + 0.5 * torch.randn(B, T, K, device="cuda", generator=gen)
         ).to(dtype)
    m = torch.rand(B, T, device="cuda", generator=gen) > 0.1
    rows = []

    def med(fn, **kw):
        return gpu_median_ms(fn, rep=rep, **kw)

    for red in ("global", "per_window"):
        case = f"{B}x{T}x{K} {red} masked"
        impls = {
            "fused": lambda: C.ccc_loss(x, y, m, red),
            "eager reference": lambda: C.ccc_loss_ref(x, y, m, red),
            "eager textbook": lambda: ccc_loss_textbook(x, y, m, red),
            "torch.compile textbook": torch.compile(
                lambda: ccc_loss_textbook(x, y, m, red), dynamic=False),
            "torch.compile reference": torch.compile(
                lambda: C.ccc_loss_ref(x, y, m, red), dynamic=False),
        }
        # correctness on the benchmark inputs, and proof that the fused path is the one timed
        loss = impls["fused"]()
        assert type(loss.grad_fn).__name__.startswith("_FusedCCC"), (
            "the fused CCC path did not run (AFFACCEL_FORCE_REFERENCE set?)")
        gx = torch.autograd.grad(loss, x)[0]
        ref = impls["eager reference"]()
        rgx = torch.autograd.grad(ref, x)[0]
        err = (loss - ref).abs().item()
        gerr = ((gx.float() - rgx.float()).abs().max() / rgx.float().abs().max()).item()
        print(f"[ccc {red}] fused vs reference: |loss diff| {err:.2e}, max grad diff "
              f"{gerr:.2e} of max |grad|", flush=True)
        if err > 1e-3 or gerr > 2e-2:
            raise RuntimeError(f"fused CCC disagrees with the reference ({err}, {gerr})")

        for impl, f in impls.items():
            times, notes, warm = {}, [], True
            try:
                for _ in range(3):  # compile / Triton JIT / allocator warm-up
                    f().backward()
                x.grad = None
            except Exception as e:  # a baseline that cannot run is reported, not fatal
                notes.append(f"warm-up failed: {e!r}"[:120])
                warm = False

            def fwd_bwd():
                f().backward()

            def bwd_only():
                loss = f()
                return med(lambda: loss.backward(retain_graph=True), grad_to_none=[x])

            for p, run in (("fwd", lambda: med(f)), ("bwd", bwd_only),
                           ("fwd+bwd", lambda: med(fwd_bwd, grad_to_none=[x]))):
                if not warm:
                    times[p] = None
                    continue
                try:
                    times[p] = run()
                except Exception as e:
                    times[p] = None
                    notes.append(f"{p} failed: {e!r}"[:120])
            for p, t in times.items():
                rows.append(row(case, "bf16", impl, p, t, "; ".join(notes)))
            print(f"  {impl:<26} " + "  ".join(
                f"{p} {t:.4f} ms" if t is not None else f"{p} -" for p, t in times.items()),
                *notes, flush=True)
            x.grad = None

        # under CUDA graphs, captured the same way: forward, and forward+backward in one graph
        for impl, loss_fn in (("fused", C.ccc_loss), ("eager reference", C.ccc_loss_ref),
                              ("eager textbook", ccc_loss_textbook)):
            rows += _graph_rows(case, impl + GRAPH, lambda f=loss_fn: f(x, y, m, red), x, med)
    return rows


def _graph_rows(case, impl, loss, x, med):
    """Rows (fwd, fwd+bwd) of ``loss()`` replayed from CUDA graphs (``_capture``); the replay
    must give the eager gradient bit for bit. A capture that fails is a row with a note."""
    def step():
        loss().backward()

    x.grad = None
    try:
        g_fwd = _capture(loss)
        x.grad = None
        g_both = _capture(lambda: (setattr(x, "grad", None), step()))
        fwd, both, note = med(g_fwd.replay), med(g_both.replay), "graph replay"
        g_both.replay()
        torch.cuda.synchronize()
        x_grad_graph = x.grad.clone()
        x.grad = None
        step()
        if not torch.equal(x_grad_graph, x.grad):
            raise RuntimeError("CUDA-graph replay gave a different gradient than eager")
        del g_fwd, g_both
    except Exception as e:
        fwd = both = None
        note = f"capture failed: {e!r}"[:120]
    print(f"  {impl:<30} fwd {fwd} ms  fwd+bwd {both} ms  {note}", flush=True)
    x.grad = None
    return [row(case, "bf16", impl, p, t, note) for p, t in (("fwd", fwd), ("fwd+bwd", both))]


def run_tcn_rows(quick: bool):
    path = ROOT / "bench" / "bench_tcn.py"
    if not path.exists():
        print("note: bench/bench_tcn.py not found; TCN rows skipped", flush=True)
        return []
    spec = importlib.util.spec_from_file_location("bench_tcn", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return [normalize_tcn_row(r) for r in mod.run_tcn_bench(quick)]


# --------------------------------------------------------------------------- CPU
def bench_ccc_cpu(repeats: int):
    """Sanity numbers only: the reference and the textbook eager loss on CPU, float32."""
    import affaccel.ops.concordance as C

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, K, generator=gen).requires_grad_(True)
    y = 0.6 * x.detach() + 0.5 * torch.randn(B, T, K, generator=gen)
    m = torch.rand(B, T, generator=gen) > 0.1
    rows = []
    for red in ("global", "per_window"):
        case = f"{B}x{T}x{K} {red} masked"
        for impl, f in (("eager reference", lambda: C.ccc_loss_ref(x, y, m, red)),
                        ("eager textbook", lambda: ccc_loss_textbook(x, y, m, red))):
            def both():
                x.grad = None
                f().backward()

            for pass_, fn in (("fwd", f), ("fwd+bwd", both)):
                ms = wall_clock(fn, repeats, warmup=5).median * 1e3
                rows.append(row(case, "fp32", impl, pass_, ms, "CPU wall clock"))
    return rows


def interpreter_check() -> bool:
    """Fused kernels through Triton's CPU interpreter vs the reference, on small shapes."""
    import affaccel.ops.concordance as C

    if C.triton_mode() == "compiled":
        print("[check] Triton is already compiled in this process; the interpreter check needs "
              "a fresh process")
        return False
    os.environ["AFFACCEL_TRITON_INTERPRET"] = "1"
    os.environ["TRITON_INTERPRET"] = "1"

    gen = torch.Generator().manual_seed(1)
    ok = True
    for shape, red in (((4, 37, 2), "global"), ((3, 29, 3), "per_window")):
        x = torch.randn(shape, generator=gen)
        y = 0.5 * x + torch.randn(shape, generator=gen)
        m = torch.rand(shape[:-1], generator=gen) > 0.2
        res = []
        for fn in (C.ccc_loss, C.ccc_loss_ref):
            xr = x.clone().requires_grad_(True)
            loss = fn(xr, y, m, red)
            loss.backward()
            res.append((loss.detach(), xr.grad))
        fused_ran = C._fused_ok(*C._as_groups(x, y, m, red))
        err = (res[0][0] - res[1][0]).abs().item()
        gerr = (res[0][1] - res[1][1]).abs().max().item()
        good = fused_ran and err < 1e-5 and gerr < 1e-5
        ok &= good
        print(f"[check] ccc_loss {shape} {red}: interpreter fused={fused_ran} |loss diff| "
              f"{err:.2e} max |grad diff| {gerr:.2e} -> {'ok' if good else 'MISMATCH'}")
    return ok


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter timing windows")
    ap.add_argument("--check", action="store_true",
                    help="without a GPU: run the kernels through the CPU interpreter vs reference")
    ap.add_argument("--no-tcn", action="store_true", help="skip the TCN rows")
    ap.add_argument("--no-csv", action="store_true", help="do not append to bench/results")
    ap.add_argument("--repeats", type=int, default=50, help="CPU timing repeats")
    args = ap.parse_args(argv)
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    meta = {"date": date, "commit": git_commit("kernels", "affaccel/ops", "affaccel/nn", "bench"),
            "torch": torch.__version__}

    if not torch.cuda.is_available():
        print("No CUDA GPU found: the speed targets (" + TARGETS + ") need an H100/H200 GPU and "
              "are NOT measured by this run.", flush=True)
        status = 0
        # before anything imports Triton: the interpreter mode is fixed at the first import
        if args.check and not interpreter_check():
            status = 1
        meta["triton"] = triton_version()
        meta["device"] = f"CPU {cpu_model()} ({len(os.sched_getaffinity(0))} cores)"
        rows = bench_ccc_cpu(args.repeats)
        add_speedups(rows)
        if not args.no_csv:
            write_csv(CPU_CSV, rows, meta)
        print_table(rows, meta, f"CPU sanity numbers (median of {args.repeats}), no GPU claims")
        return status

    meta["device"] = torch.cuda.get_device_name()
    meta["triton"] = triton_version()
    rows, failed = [], False
    try:
        rows += bench_ccc_gpu(args.quick)
    except Exception:
        traceback.print_exc()
        failed = True
    if not args.no_tcn:
        try:
            rows += run_tcn_rows(args.quick)
        except Exception:
            traceback.print_exc()
            failed = True
    add_speedups(rows)
    if rows and not args.no_csv:
        write_csv(GPU_CSV, rows, meta)
    for r in rows:
        if r["kernel"] == "ccc" and r["pass"] == "fwd+bwd" and r["impl"].startswith("fused") \
                and "vs_eager" in r:
            verdict = "met" if r["vs_eager"] >= 5 else "NOT met"
            print(f"target CCC fwd+bwd >= 5x eager [{r['case']}, {r['impl']}]: "
                  f"{r['vs_eager']:.2f}x -> {verdict}")
    print_table(rows, meta, "triton.testing.do_bench medians")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
