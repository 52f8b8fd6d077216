"""Compile budget of a GPU test run, checked on CPU.

Every kernel variant Triton compiles costs seconds on the lent GPU machine (whose calls last at
most 10 minutes). `gpu_cases.count_variants` replays the fused calls of the `gpu`-marked tests
on CPU tensors with recording kernels that apply Triton's own specialisation rules (its binder,
through affaccel.kernels.offline), and counts the distinct variants (specialisation x config).

Measured when the bound was set (Triton 3.8 binder): 19 variants with pinned configs (the
test setting, AFFACCEL_AUTOTUNE=pinned), 38 with full autotuning; before the compile-budget
change the suite requested about 57 specialisations (~225 compiles with autotuning; counted in
issue 15 with the same rules).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gpu_cases import MAX_VARIANTS

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _count(*flags):
    # a fresh process: the recorders need Triton in compiled mode (this one may be interpreted)
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "AFFACCEL_TRITON_INTERPRET", "AFFACCEL_FORCE_REFERENCE")}
    r = subprocess.run([sys.executable, os.path.join(TESTS, "gpu_cases.py"), *flags], env=env,
                       capture_output=True, text=True, timeout=300, cwd=TESTS)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_gpu_tests_compile_at_most_the_budgeted_variants():
    pinned = _count()
    full = _count("--full")
    print("pinned:", pinned, "full autotune:", full)
    assert pinned["total"] <= MAX_VARIANTS, pinned
    # every kernel the GPU tests exercise is there (a replay that silently launched nothing
    # would pass the bound)
    assert set(pinned["per_kernel"]) == {"conv_kernel", "act_bwd_kernel", "grad_weight_kernel",
                                         "ccc_partials_kernel", "ccc_finalize_kernel",
                                         "ccc_backward_kernel"}, pinned
    # pinning is what the tests rely on: autotuning compiles every config of every variant
    assert full["total"] > pinned["total"]


def test_varying_lengths_do_not_compile_new_variants():
    """B*T, T, dilation and the CCC lengths are not specialised: a new batch or sequence length
    reuses the variant (the old kernels specialised them: ==1, divisible by 16, other)."""
    script = r"""
import json, os, torch
import gpu_cases as G
import affaccel.ops.concordance as C
from affaccel.kernels import ccc as ck, tcn_conv
from affaccel.ops import causal_conv as cc
os.environ["AFFACCEL_TRITON_INTERPRET"] = "1"
os.environ["AFFACCEL_AUTOTUNE"] = "pinned"
seen = set()
cc._kernels = lambda: G.Recorder(tcn_conv, seen)
C._kernels = lambda: G.Recorder(ck, seen)
out = []
for B, T, d in [(4, 300, 1), (3, 17, 2), (1, 1, 4), (32, 299, 8), (5, 64, 16)]:
    G.run_conv(G.fused_conv, *G.conv_inputs(B, T, 32, 48, 3, True), d, "gelu")
    out.append(len(seen))
for L in [1, 16, 300, 4099]:
    x = torch.randn(2, L, 2, requires_grad=True)
    C.ccc_loss(x, torch.randn(2, L, 2), torch.rand(2, L) > 0.2, "per_window").backward()
    out.append(len(seen))
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "AFFACCEL_TRITON_INTERPRET", "AFFACCEL_FORCE_REFERENCE")}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=300, cwd=TESTS)
    assert r.returncode == 0, r.stderr[-4000:]
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    # conv forward, act backward, grad input (the same conv kernel), grad weight: 3 variants,
    # then no more for other lengths; the CCC loss adds its 3 kernels once
    assert counts[:5] == [3] * 5, counts
    assert counts[5:] == [6] * 4, counts


@pytest.mark.parametrize("value", ["full", "pinned", "bogus"])
def test_autotune_knob(monkeypatch, value):
    from affaccel import env

    monkeypatch.setenv("AFFACCEL_AUTOTUNE", value)
    if value == "bogus":
        with pytest.raises(ValueError, match="AFFACCEL_AUTOTUNE"):
            env.autotune_pinned()
    else:
        assert env.autotune_pinned() == (value == "pinned")
