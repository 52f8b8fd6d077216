"""Gradient checks of the fused Triton autograd Functions (run through Triton's interpreter).

The kernels load, accumulate and store in float32 (float64 inputs take the reference instead),
so a float64 `torch.autograd.gradcheck` of the fused path is impossible. Two checks replace it:

* :func:`gradcheck_fp32`: `torch.autograd.gradcheck` of the fused Function itself, its backward
  against finite differences of its own forward, with a step and tolerances for float32: with
  eps = 1e-3 the rounding of a float32 forward (~6e-8 relative) puts ~1e-4 of noise into each
  finite difference, so atol = rtol = 1e-3 keeps a 10x margin while a wrong backward (errors
  the size of the gradient, 1e-2 and up on these shapes) still fails.
* :func:`assert_jacobian_matches_float64`: the fused path's analytic Jacobian (float32, one
  backward per output element) against central differences of the reference's forward in
  float64 on the same values, to the float32 parity tolerance.
"""
from __future__ import annotations

import warnings

import torch

from tolerances import tol

EPS, ATOL, RTOL = 1e-3, 1e-3, 1e-3


def gradcheck_fp32(fn, inputs) -> bool:
    with warnings.catch_warnings():
        # gradcheck warns that the inputs are not float64: they cannot be (see module docstring)
        warnings.filterwarnings("ignore", message=".*double precision.*")
        return torch.autograd.gradcheck(fn, inputs, eps=EPS, atol=ATOL, rtol=RTOL)


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def analytic_jacobian(fn, inputs) -> list[torch.Tensor]:
    """d fn / d inputs[i] as [n_out, inputs[i].numel()] float64, one backward per output."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    flat = out.reshape(-1)
    rows = [[] for _ in leaves]
    for j in range(flat.numel()):
        grads = torch.autograd.grad(flat[j], leaves, retain_graph=True, allow_unused=True)
        for rows_i, g, t in zip(rows, grads, leaves):
            rows_i.append(torch.zeros(t.numel(), dtype=torch.float64) if g is None
                          else g.reshape(-1).double())
    return [torch.stack(r) for r in rows]


def numerical_jacobian_f64(fn, inputs, eps: float = 1e-6) -> list[torch.Tensor]:
    """Central differences of fn on float64 copies of inputs: [n_out, inputs[i].numel()]."""
    xs = [t.detach().double().clone() for t in inputs]
    jac = []
    with torch.no_grad():
        for x in xs:
            cols = []
            flat = x.view(-1)
            for e in range(flat.numel()):
                v = flat[e].item()
                flat[e] = v + eps
                hi = fn(*xs).reshape(-1).clone()
                flat[e] = v - eps
                lo = fn(*xs).reshape(-1).clone()
                flat[e] = v
                cols.append((hi - lo) / (2 * eps))
            jac.append(torch.stack(cols, 1))
    return jac


def assert_jacobian_matches_float64(fused_fn, ref_fn, inputs) -> None:
    """Fused analytic Jacobian (float32 inputs) == float64 numerical Jacobian of the reference,
    relative to the largest entry (entries scale like 1/N; a fixed atol would be vacuous)."""
    got = analytic_jacobian(fused_fn, inputs)
    want = numerical_jacobian_f64(ref_fn, inputs)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape
        assert w.abs().max() > 0, f"input {i}: zero Jacobian, nothing is checked"
        scale = w.abs().max()
        torch.testing.assert_close(g / scale, w / scale, **tol("float32"),
                                   msg=lambda m: f"Jacobian w.r.t. input {i}: {m}")
