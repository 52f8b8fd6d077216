"""Shared handling of Triton's process-wide mode (interpreted or compiled) for kernel tests.

Triton fixes the mode at its first import, so tests needing the other mode skip here and are
re-run by a `test_*_in_fresh_process` test in a new process that starts in the wanted mode.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

TRITON_VARS = ("AFFACCEL_TRITON_INTERPRET", "TRITON_INTERPRET", "AFFACCEL_FORCE_REFERENCE")
FRESH = "Triton is {} in this process; run in a fresh process by test_{}_tests_in_fresh_process"


def run_in_fresh_process(path: str, marker_expr: str, interpret: bool) -> None:
    """Run the tests of `path` selected by marker_expr in a new Python process whose first
    `import triton` happens in the wanted mode."""
    env = {k: v for k, v in os.environ.items() if k not in TRITON_VARS}
    if interpret:
        env["AFFACCEL_TRITON_INTERPRET"] = env["TRITON_INTERPRET"] = "1"
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path,
         "-m", marker_expr, "-k", "not fresh_process"],
        env=env, capture_output=True, text=True, timeout=600,
        # outside the repo root: a source checkout must not shadow the installed package
        cwd=os.path.dirname(os.path.abspath(path)))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout


def use_interpreter(monkeypatch, ops_module) -> None:
    """Kernels of `ops_module` (an affaccel.ops module) on CPU tensors through the interpreter."""
    if ops_module.triton_mode() == "compiled":
        pytest.skip(FRESH.format("compiled", "interpreter"))
    monkeypatch.setenv("AFFACCEL_TRITON_INTERPRET", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("AFFACCEL_FORCE_REFERENCE", raising=False)
    assert ops_module._kernels().INTERPRETED


def use_compiled_cuda(monkeypatch, ops_module, tf32: bool = False) -> None:
    """Compiled kernels of `ops_module` on CUDA; fp32 with TF32 off (exact parity) or on
    (PyTorch's default for convolutions); one pinned kernel config per dtype/precision
    (AFFACCEL_AUTOTUNE=pinned: the test run compiles each variant once, see gpu_cases)."""
    if ops_module.triton_mode() == "interpreted":
        pytest.skip(FRESH.format("interpreted", "gpu"))
    for name in TRITON_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AFFACCEL_AUTOTUNE", "pinned")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    assert not ops_module._kernels().INTERPRETED
