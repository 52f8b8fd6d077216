"""Benchmark of the TCN: fused Triton vs eager PyTorch vs torch.compile.

Two kinds of case, bf16 activations and parameters, training mode:

* one temporal block, the best case for the kernels: C -> C channels, kernel 3, dilation d in
  {1, 2, 4, 8, 16}, ReLU, dropout 0 (so conv2 fuses the residual add and the final
  activation), x: [B, T, C] = [32, 300, C], C in {512, 768}; passes forward, backward (of a
  retained graph) and forward+backward;
* the real model's TCN, from ``TemporalConfig()`` (the paper preset): in_dim 512 ->
  tcn_channels 256, 256, 256, 256, kernel 5, dilations 1, 2, 4, 8, dropout 0.3 (so conv2 fuses
  bias + activation only, and dropout, the residual add and the activation run separately; the
  first block's residual is a 1x1 projection), x: [32, 300, 512] features that need no gradient;
  forward+backward (all three passes without ``--quick``).

Each pass is timed with ``triton.testing.do_bench`` (median, ms). Implementations (same weights):

* ``fused``                       TemporalBlock / TCN with fused=True: Triton kernels of affaccel.ops
* ``eager reference``             fused=False: F.conv1d on transposed [B, T, C]
* ``eager channels-first``        the canonical block on [B, C, T] (pad + conv1d, no transposes
                                  inside the block: the fastest eager form we know)
* ``torch.compile reference``     torch.compile of the reference
* ``torch.compile channels-first`` torch.compile of the channels-first form
(``--quick``: the model case runs fused, eager reference and torch.compile reference.)

``run_tcn_bench(quick)`` returns rows for bench/bench_kernels.py (which prints the table and
writes bench/results/); run this file directly for the TCN rows alone. Without a CUDA GPU it
says so and returns no rows (exit status 0).

    python bench/bench_tcn.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _machine import gpu_median_ms  # noqa: E402

B, T, K = 32, 300, 3
CHANNELS = (512, 768)
DILATIONS = (1, 2, 4, 8, 16)


class ChannelsFirstBlock(torch.nn.Module):
    """The canonical temporal block on [B, C, T], sharing a TemporalBlock's parameters."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x_ct: torch.Tensor) -> torch.Tensor:
        blk, pad = self.block, (self.block.conv1.kernel_size[0] - 1) * self.block.dilation
        h = F.relu(F.conv1d(F.pad(x_ct, (pad, 0)), blk.conv1.weight, blk.conv1.bias, dilation=blk.dilation))
        h = blk.dropout(h)
        o = F.relu(F.conv1d(F.pad(h, (pad, 0)), blk.conv2.weight, blk.conv2.bias, dilation=blk.dilation))
        res = x_ct if blk.downsample is None else F.conv1d(x_ct, blk.downsample.weight, blk.downsample.bias)
        return F.relu(blk.dropout(o) + res)


class ChannelsFirstTCN(torch.nn.Sequential):
    """A TCN's blocks in the channels-first form, on [B, C, T]."""

    def __init__(self, tcn):
        super().__init__(*(ChannelsFirstBlock(b) for b in tcn.blocks))


def _time(fn, quick: bool) -> float:
    # two untimed calls: autotuning and compilation happen there, outside the timed window
    return gpu_median_ms(fn, warmup=10 if quick else 25, rep=30 if quick else 100, untimed_calls=2)


PASSES = ("fwd", "bwd", "fwd+bwd")


def _passes(model, x, gy, quick: bool, passes=PASSES) -> dict[str, float]:
    params = [p for p in model.parameters()]
    leaves = params + [x]

    def zero():
        for p in leaves:
            p.grad = None

    def fwd():
        with torch.no_grad():
            model(x)

    state = {}

    def bwd():
        state["y"].backward(gy, retain_graph=True)

    def both():
        zero()
        model(x).backward(gy)

    out = {}
    if "fwd" in passes:
        out["fwd"] = _time(fwd, quick)
    if "bwd" in passes:
        state["y"] = model(x)
        out["bwd"] = _time(bwd, quick)
        del state["y"]
    if "fwd+bwd" in passes:
        out["fwd+bwd"] = _time(both, quick)
    zero()
    return out


def _time_impls(case: str, impls, quick: bool, passes=PASSES) -> list[dict]:
    """Rows of every (name, model, input, grad_output) in ``impls``; a variant that fails is a
    row with a note, not an abort."""
    rows = []
    for name, model, inp, g in impls:
        try:
            times = _passes(model, inp, g, quick, passes)
        except Exception as e:  # a failing variant is reported, not fatal
            print(f"  {case} {name}: FAILED {type(e).__name__}: {e}", flush=True)
            times, note = dict.fromkeys(passes), f"failed: {type(e).__name__}"
        else:
            note = ""
        for p, ms in times.items():
            rows.append({"kernel": "tcn", "case": case, "dtype": "bf16", "impl": name,
                         "pass": p, "median_ms": ms, "note": note})
        print(f"  {case} {name:<30} " + "  ".join(
            f"{p} {ms:.4f} ms" if ms is not None else f"{p} -" for p, ms in times.items()),
            flush=True)
    return rows


def _block_rows(quick: bool, device: str = "cuda") -> list[dict]:
    """The best case: one C -> C block, dropout 0, per channel count and dilation."""
    from affaccel.nn.tcn import TemporalBlock

    dev, dtype = torch.device(device), torch.bfloat16
    rows = []
    for C in (768,) if quick else CHANNELS:
        for d in (1, 16) if quick else DILATIONS:
            torch.manual_seed(0)
            block = TemporalBlock(C, C, K, d, dropout=0.0, fused=True).to(dev, dtype).train()
            ref = TemporalBlock(C, C, K, d, dropout=0.0, fused=False).to(dev, dtype).train()
            ref.load_state_dict(block.state_dict())
            cf = ChannelsFirstBlock(ref)
            x = torch.randn(B, T, C, device=dev, dtype=dtype, requires_grad=True)
            gy = torch.randn(B, T, C, device=dev, dtype=dtype)
            x_ct = x.detach().transpose(1, 2).contiguous().requires_grad_(True)
            gy_ct = gy.transpose(1, 2).contiguous()
            impls = [
                ("fused", block, x, gy),
                ("eager reference", ref, x, gy),
                ("eager channels-first", cf, x_ct, gy_ct),
                ("torch.compile reference", torch.compile(ref), x, gy),
                ("torch.compile channels-first", torch.compile(cf), x_ct, gy_ct),
            ]
            rows += _time_impls(f"block B={B} T={T} C={C} k={K} d={d}", impls, quick)
            torch._dynamo.reset()  # each dilation compiles afresh; keep the cache small
    return rows


def model_tcn_case():
    """(TemporalConfig of the paper preset, case name) of the real model's TCN."""
    from affaccel.config import TemporalConfig

    cfg = TemporalConfig()
    chans = [int(c) for c in cfg.tcn_channels]
    dil = ",".join(str(2 ** i) for i in range(len(chans)))
    name = (f"model TCN B={B} T={T} {cfg.in_dim}->{'->'.join(map(str, chans))} k={cfg.tcn_kernel} "
            f"d={dil} p={cfg.dropout}")
    return cfg, name


def _model_rows(quick: bool, device: str = "cuda") -> list[dict]:
    """The real model's TCN (paper preset), training mode with its dropout."""
    from affaccel.nn.tcn import TCN

    cfg, case = model_tcn_case()
    dev, dtype = torch.device(device), torch.bfloat16
    chans = [int(c) for c in cfg.tcn_channels]
    torch.manual_seed(0)
    fused = TCN(cfg.in_dim, chans, cfg.tcn_kernel, dropout=cfg.dropout, fused=True).to(dev, dtype).train()
    ref = TCN(cfg.in_dim, chans, cfg.tcn_kernel, dropout=cfg.dropout, fused=False).to(dev, dtype).train()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(B, T, cfg.in_dim, device=dev, dtype=dtype)    # features: no gradient
    gy = torch.randn(B, T, chans[-1], device=dev, dtype=dtype)
    impls = [("fused", fused, x, gy), ("eager reference", ref, x, gy),
             ("torch.compile reference", torch.compile(ref), x, gy)]
    if not quick:
        cf = ChannelsFirstTCN(ref)
        x_ct, gy_ct = x.transpose(1, 2).contiguous(), gy.transpose(1, 2).contiguous()
        impls[2:2] = [("eager channels-first", cf, x_ct, gy_ct)]
        impls.append(("torch.compile channels-first", torch.compile(cf), x_ct, gy_ct))
    rows = _time_impls(case, impls, quick, ("fwd+bwd",) if quick else PASSES)
    torch._dynamo.reset()
    return rows


def run_tcn_bench(quick: bool) -> list[dict]:
    """Rows {kernel, case, dtype, impl, pass, median_ms, note}; [] without a CUDA GPU."""
    if not torch.cuda.is_available():
        print("note: no CUDA GPU; TCN timings (fused vs eager vs torch.compile) not measured",
              flush=True)
        return []
    from affaccel.ops.causal_conv import triton_mode

    if triton_mode() == "interpreted":
        print("note: Triton runs interpreted in this process; TCN timings skipped", flush=True)
        return []
    return _block_rows(quick) + _model_rows(quick)


def _table(rows: list[dict]) -> str:
    lines = [f"{'case':<62} {'impl':<30} {'pass':<8} {'ms':>9} {'vs eager':>9} {'vs compile':>10}"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["case"], r["pass"]), []).append(r)
    for (case, p), grp in groups.items():
        ok = [r for r in grp if r["median_ms"] is not None]
        eager = min((r["median_ms"] for r in ok if r["impl"].startswith("eager")), default=None)
        comp = min((r["median_ms"] for r in ok if r["impl"].startswith("torch.compile")), default=None)
        for r in grp:
            ms = r["median_ms"]
            ve = f"{eager / ms:.2f}x" if ms and eager else "-"
            vc = f"{comp / ms:.2f}x" if ms and comp else "-"
            lines.append(f"{case:<62} {r['impl']:<30} {p:<8} {ms if ms is not None else float('nan'):>9.4f} "
                         f"{ve:>9} {vc:>10}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="TCN: fused vs eager vs torch.compile (GPU)")
    ap.add_argument("--quick", action="store_true",
                    help="blocks: C=768 and d in {1, 16} only; model TCN: fwd+bwd of 3 variants; shorter windows")
    args = ap.parse_args(argv)
    rows = run_tcn_bench(args.quick)
    if rows:
        print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
