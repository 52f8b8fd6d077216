"""CPU inference forms side by side: `python bench/bench_cpu_inference.py [--threads N]`.

  tcn      the TCN of a temporal preset on [B, 300, D] windows: affaccel's channels-first CPU
           path, the channels-last reference (``fused=False``) and the naive ``nn.Conv1d`` +
           chomp TCN (bench/_naive_pipeline.py) with the same weights;
  encoder  ClipEncoder on a batch of crops: contiguous fp32 (``cpu_channels_last=False``),
           channels-last fp32 (the default for ResNet towers) and the opt-in int8 encoder
           (affaccel/nn/quantize.py), with the int8 features' cosine to fp32.

Interleaved rounds (bench/_machine.interleaved), medians; the load average before and after is
printed with the table, since the development machines are shared.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
for p in (str(BENCH.parent), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

from _machine import interleaved  # noqa: E402


def bench_tcn(preset: str, in_dim: int, batch: int, repeats: int) -> dict:
    import torch

    from affaccel.config import make_config
    from affaccel.nn.temporal import TemporalModel

    import _naive_pipeline as naive

    cfg = make_config("va", preset, model={"in_dim": in_dim})
    tcn = TemporalModel(cfg.model).eval().front
    nv = naive.NaiveTCN(in_dim, [int(c) for c in cfg.model.tcn_channels], cfg.model.tcn_kernel, 0.0).eval()
    nv.load_state_dict(tcn.state_dict())
    x = torch.randn(batch, 300, in_dim)

    def ref():
        tcn.fused = False
        tcn(x)
        tcn.fused = None

    with torch.inference_mode():
        assert tcn.channels_first_path(x)
        err = float((tcn(x) - nv(x)).abs().max())
        s = interleaved([lambda: tcn(x), ref, lambda: nv(x)], repeats)
    names = ("channels_first", "channels_last_reference", "naive_conv1d_chomp")
    out = {n: smp.median * 1e3 for n, smp in zip(names, s)}
    return {"ms": out, "vs_naive": {n: out["naive_conv1d_chomp"] / v for n, v in out.items()},
            "max_abs_vs_naive": err, "shape": [batch, 300, in_dim]}


def bench_encoder(model: str, batch: int, repeats: int) -> dict:
    import torch

    from affaccel.config import ClipConfig
    from affaccel.nn.clip import build_encoder
    from affaccel.nn.quantize import quantize_encoder

    enc = build_encoder(ClipConfig(model_name=model, init_seed=0)).eval()
    ref = build_encoder(ClipConfig(model_name=model, init_seed=0)).eval()
    ref.cpu_channels_last = False
    q = quantize_encoder(enc)
    x = torch.randn(batch, 3, enc.image_size, enc.image_size)
    with torch.inference_mode():
        a, b = enc(x), q(x)
        s = interleaved([lambda: ref(x), lambda: enc(x), lambda: q(x)], repeats)
    names = ("fp32_contiguous", "fp32_default", "int8")
    fps = {n: batch / smp.median for n, smp in zip(names, s)}
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {"fps": fps, "vs_contiguous": {n: v / fps["fp32_contiguous"] for n, v in fps.items()},
            "int8_cosine_min": float(cos.min()), "int8_layers": q.quantized_layers, "batch": batch}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--models", nargs="+", default=["affaccel-rn-tiny", "affaccel-vit-tiny"])
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    load0 = os.getloadavg()
    rep = {"threads": torch.get_num_threads(), "tcn": {}, "encoder": {}}
    for batch in (8, 32):
        rep["tcn"][f"cpu preset, B={batch}"] = bench_tcn("cpu", 128, batch, a.repeats)
    for m in a.models:
        rep["encoder"][m] = bench_encoder(m, 64, a.repeats)
    rep["loadavg"] = {"start": load0, "end": os.getloadavg()}
    print(json.dumps(rep, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(rep, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
