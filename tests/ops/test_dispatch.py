"""Triton's interpreter is Triton's own setting (TRITON_INTERPRET, read when Triton is first
imported and when kernels are decorated): affaccel reads it and never writes it, and
AFFACCEL_TRITON_INTERPRET=1 without it is a clear error naming both variables."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import affaccel.ops.causal_conv as cc
import affaccel.ops.concordance as C

from triton_mode import TRITON_VARS, run_in_fresh_process, use_interpreter

BOTH = r"AFFACCEL_TRITON_INTERPRET=1.*TRITON_INTERPRET=1"


def _calls():
    x = torch.randn(2, 5, 3)
    return [lambda: C.ccc_loss(x, x.flip(1)),
            lambda: cc.causal_conv1d(x, torch.randn(4, 3, 2), fused=True)]


def test_our_variable_alone_is_an_error_and_the_environment_is_left_alone(monkeypatch):
    use_interpreter(monkeypatch, C)  # Triton imported interpreted (or skip: compiled here)
    monkeypatch.delenv("TRITON_INTERPRET")
    before = dict(os.environ)
    for call in _calls():
        with pytest.raises(RuntimeError, match=BOTH):
            call()
    assert dict(os.environ) == before


_FRESH = r"""
import os
import torch
import affaccel.ops.concordance as C
from affaccel.ops._dispatch import triton_mode
x = torch.randn(2, 5, 3)
try:
    C.ccc_loss(x, x.flip(1))
except RuntimeError as e:
    print("ERROR", e)
print("TRITON_INTERPRET" in os.environ, triton_mode())
"""


def test_our_variable_alone_in_a_fresh_process():
    """Where Triton's first import happens under AFFACCEL_TRITON_INTERPRET=1 alone."""
    env = {k: v for k, v in os.environ.items() if k not in TRITON_VARS}
    env["AFFACCEL_TRITON_INTERPRET"] = "1"
    r = subprocess.run([sys.executable, "-c", _FRESH], env=env, capture_output=True, text=True,
                       timeout=300, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("ERROR") and "AFFACCEL_TRITON_INTERPRET=1" in lines[0]
    assert "TRITON_INTERPRET=1 is not set" in lines[0], lines[0]
    assert lines[-1] == "False compiled"  # nobody set Triton's variable behind the user's back


def test_interpreter_tests_in_fresh_process():
    """Where something compiled Triton earlier in this process, the in-process test above
    skipped; run it in a process of its own."""
    if C.triton_mode() != "compiled":
        pytest.skip("the interpreter tests ran in this process")
    run_in_fresh_process(__file__, "not gpu", interpret=True)
