"""CCC / CCC loss: fused Triton kernels (CPU interpreter, CUDA when present) vs the reference vs
an independent float64 NumPy computation."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import affaccel.ops.concordance as C

from fused_gradcheck import assert_jacobian_matches_float64, gradcheck_fp32
from gpu_cases import CCC_CASES, CCC_DTYPES
from tolerances import tol
from triton_mode import run_in_fresh_process, use_compiled_cuda, use_interpreter


# --------------------------------------------------------------------------- helpers
@pytest.fixture
def interp(monkeypatch):
    """Run the Triton kernels on CPU tensors through the interpreter (module re-imported)."""
    use_interpreter(monkeypatch, C)


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 32 values so that short inputs are split over several chunks and K-blocks."""
    monkeypatch.setattr(C, "_MAX_TILE", 32)


def ccc_np(x, y, m, reduction):
    """Independent float64 CCC per target, straight from Lin (1989). Returns [K]."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    K = x.shape[-1]
    m = np.ones(x.shape[:-1], bool) if m is None else np.asarray(m, bool)
    if reduction == "global":
        groups = [(x.reshape(-1, K), y.reshape(-1, K), m.reshape(-1))]
    else:
        T = x.shape[-2]
        groups = list(zip(x.reshape(-1, T, K), y.reshape(-1, T, K), m.reshape(-1, T)))
    values = []
    for xg, yg, mg in groups:
        if not mg.any():
            continue
        xv, yv = xg[mg], yg[mg]
        mx, my = xv.mean(0), yv.mean(0)
        cov = ((xv - mx) * (yv - my)).mean(0)
        den = xv.var(0) + yv.var(0) + (mx - my) ** 2
        values.append(np.where(den > 0, 2 * cov / np.where(den > 0, den, 1), 0.0))
    return np.mean(values, axis=0) if values else np.zeros(K)


def grad_np(x, y, m, reduction):
    """d(sum_k CCC_k)/dx from the analytic formula 2/(N D) [(y_i - my) - CCC (x_i - my)]."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    K = x.shape[-1]
    m = np.ones(x.shape[:-1], bool) if m is None else np.asarray(m, bool)
    shape = (1, -1, K) if reduction == "global" else (-1, x.shape[-2], K)
    xg, yg = x.reshape(shape), y.reshape(shape)
    mg = m.reshape(shape[:2])
    g = np.zeros_like(xg)
    nonempty = [i for i in range(len(xg)) if mg[i].any()]
    for i in nonempty:
        xv, yv, sel = xg[i][mg[i]], yg[i][mg[i]], mg[i]
        n, mx, my = len(xv), xv.mean(0), yv.mean(0)
        den = xv.var(0) + yv.var(0) + (mx - my) ** 2
        c = 2 * ((xv - mx) * (yv - my)).mean(0) / den
        g[i][sel] = 2 / (n * den) * ((yv - my) - c * (xv - my)) / len(nonempty)
    return g.reshape(x.shape)


def assert_grad_close(got, want, dtype):
    """Gradients compared relative to their largest magnitude: they scale like 1/N, so a fixed
    atol would make the check vacuous for large N (and too strict for tiny N)."""
    scale = want.abs().max().clamp(min=1e-30)
    torch.testing.assert_close(got.to(want.dtype) / scale, want / scale, **tol(dtype))


def make(shape, mask_kind="random", seed=0, offset=0.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    # target correlated with pred so that CCC is far from 0 and mistakes show
    y = 0.6 * x + 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64) + 0.3
    x, y = (x + offset).to(dtype), (y + offset).to(dtype)
    lead = shape[:-1]
    if mask_kind is None:
        m = None
    elif mask_kind == "random":
        m = torch.rand(lead, generator=gen) > 0.3
    elif mask_kind == "none_valid":
        m = torch.zeros(lead, dtype=torch.bool)
    elif mask_kind == "single":
        m = torch.zeros(lead, dtype=torch.bool)
        m.view(-1)[m.numel() // 2] = True
    elif mask_kind == "empty_window":  # per_window: window 0 has no valid frame
        m = torch.rand(lead, generator=gen) > 0.3
        m[0] = False
    return x, y, m


def fused_and_ref(fn_name, x, y, m, reduction, grad_out, target_grad=True):
    """Value and grads (pred, target) of fused vs reference for the same upstream gradient."""
    results = []
    for fn in (getattr(C, fn_name), getattr(C, fn_name + "_ref")):
        xr = x.clone().requires_grad_(True)
        yr = y.clone().requires_grad_(target_grad)
        out = fn(xr, yr, m, reduction)
        (out * grad_out).sum().backward()
        results.append((out.detach(), xr.grad, yr.grad))
    return results


# --------------------------------------------------------------------------- reference
@pytest.mark.parametrize("reduction", ["global", "per_window"])
@pytest.mark.parametrize("shape,mask_kind", [
    ((13, 1), None), ((2, 17, 2), "random"), ((3, 11, 3), "empty_window"), ((2, 3, 7, 2), "random"),
])
def test_reference_matches_numpy(shape, mask_kind, reduction):
    x, y, m = make(shape, mask_kind, dtype=torch.float64)
    got = C.ccc_ref(x, y, m, reduction)
    np.testing.assert_allclose(got.numpy(), ccc_np(x, y, m, reduction), **tol("float64"))
    loss = C.ccc_loss_ref(x, y, m, reduction)
    assert loss.item() == pytest.approx(1 - ccc_np(x, y, m, reduction).mean(), abs=1e-12)


@pytest.mark.parametrize("reduction", ["global", "per_window"])
def test_reference_gradcheck(reduction):
    x, y, m = make((2, 6, 2), "random", dtype=torch.float64)
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: C.ccc_ref(a, b, m, reduction), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: C.ccc_loss_ref(a, b, None, reduction), (x, y))


def test_reference_grad_matches_analytic_formula():
    x, y, m = make((3, 9, 2), "empty_window", dtype=torch.float64)
    for red in ("global", "per_window"):
        xr = x.clone().requires_grad_(True)
        C.ccc_ref(xr, y, m, red).sum().backward()
        np.testing.assert_allclose(xr.grad.numpy(), grad_np(x, y, m, red), **tol("float64"))


@pytest.mark.parametrize("path", ["fused", "reference"])
def test_ccc_properties(request, path):
    """Lin's CCC: symmetric; invariant to one shift/positive scale of both sides; CCC(x, x) = 1;
    in [-1, 1]; CCC(x, a x + b) < 1 when (a, b) != (1, 0)."""
    if path == "fused":
        request.getfixturevalue("interp")
    fn = C.ccc if path == "fused" else C.ccc_ref
    x, y, m = make((40, 3), "random", seed=17)
    base = fn(x, y, m)
    torch.testing.assert_close(fn(y, x, m), base, **tol("float32"))
    torch.testing.assert_close(fn(3.0 * x - 2.0, 3.0 * y - 2.0, m), base, **tol("float32"))
    torch.testing.assert_close(fn(x, x, m), torch.ones(3), **tol("float32"))
    assert (base.abs() <= 1).all() and (base > 0.3).all()  # y = 0.6 x + noise + 0.3
    assert (fn(x, 2.0 * x, m) < 1).all() and (fn(x, x + 0.5, m) < 1).all()
    # CCC(x, -x) = -var x / (var x + 2 mean(x)^2)
    xv = x[m].double()
    want = -xv.var(0, unbiased=False) / (xv.var(0, unbiased=False) + 2 * xv.mean(0) ** 2)
    torch.testing.assert_close(fn(x, -x, m).double(), want, **tol("float32"))


# --------------------------------------------------------------------------- fused vs reference
CASES = [
    # shape, mask, reduction
    ((1, 1), None, "global"),            # N = 1: degenerate, CCC := 0
    ((13, 1), None, "global"),           # prime N, K = 1
    ((2, 17, 2), "random", "global"),
    ((37, 3), "single", "global"),       # one valid frame
    ((2, 5, 2), "none_valid", "global"),
    ((3, 11, 3), "empty_window", "per_window"),
    ((2, 5, 2), "none_valid", "per_window"),
    ((2, 2, 7, 2), "random", "per_window"),  # windows over two leading dims
]


@pytest.mark.parametrize("shape,mask_kind,reduction", CASES)
def test_fused_loss_matches_reference(interp, shape, mask_kind, reduction):
    x, y, m = make(shape, mask_kind)
    (v, gx, gy), (rv, rgx, rgy) = fused_and_ref("ccc_loss", x, y, m, reduction, grad_out=2.5)
    assert v.dtype == torch.float32 and v.shape == ()
    torch.testing.assert_close(v, rv, **tol("float32"))
    assert_grad_close(gx, rgx, "float32")
    assert_grad_close(gy, rgy, "float32")
    assert torch.isfinite(gx).all() and torch.isfinite(gy).all()


@pytest.mark.parametrize("shape,mask_kind,reduction", [
    ((2, 17, 2), "random", "global"), ((3, 11, 3), "empty_window", "per_window"),
])
def test_fused_ccc_matches_reference_and_numpy(interp, shape, mask_kind, reduction):
    x, y, m = make(shape, mask_kind, seed=3)
    grad_out = torch.tensor([0.5, -1.5, 3.0][: shape[-1]])
    (v, gx, gy), (rv, rgx, rgy) = fused_and_ref("ccc", x, y, m, reduction, grad_out)
    assert v.shape == (shape[-1],)
    torch.testing.assert_close(v, rv, **tol("float32"))
    assert_grad_close(gx, rgx, "float32")
    assert_grad_close(gy, rgy, "float32")
    np.testing.assert_allclose(v.numpy(), ccc_np(x, y, m, reduction), **tol("float32"))
    # analytic gradient with a single target weighted: grad_out = e_0
    xr = x.clone().requires_grad_(True)
    C.ccc(xr, y, m, reduction).sum().backward()
    np.testing.assert_allclose(xr.grad.numpy(), grad_np(x, y, m, reduction), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape,reduction", [((101, 2), "global"), ((3, 45, 17), "per_window")])
def test_fused_several_chunks_and_target_blocks(interp, small_tiles, shape, reduction):
    """Chunks merged in the finalize kernel (L > BLOCK_L) and K > BLOCK_K (several K-blocks)."""
    x, y, m = make(shape, "random", seed=5)
    L = shape[-2] if reduction == "per_window" else math.prod(shape[:-1])
    _, _, n_chunks, n_kblocks = C._grid(1, L, shape[-1])
    assert n_chunks > 1 and (n_kblocks > 1 or shape[-1] <= 16)
    (v, gx, gy), (rv, rgx, rgy) = fused_and_ref("ccc_loss", x, y, m, reduction, grad_out=-0.7)
    torch.testing.assert_close(v, rv, **tol("float32"))
    assert_grad_close(gx, rgx, "float32")
    assert_grad_close(gy, rgy, "float32")


def test_output_modifiable_in_place(interp):
    """The loss is a tensor of its own (not a view of the saved workspace): `loss += reg`
    then backward works and gives the same gradient."""
    x, y, m = make((2, 9, 2))
    xr = x.clone().requires_grad_(True)
    loss = C.ccc_loss(xr, y, m)
    loss += 0.5
    loss.backward()
    _, (_, rgx, _) = fused_and_ref("ccc_loss", x, y, m, "global", 1.0)
    assert_grad_close(xr.grad, rgx, "float32")


def test_target_without_grad(interp):
    x, y, m = make((2, 9, 2))
    (v, gx, gy), (rv, rgx, _) = fused_and_ref("ccc_loss", x, y, m, "per_window", 1.0, False)
    assert gy is None
    assert_grad_close(gx, rgx, "float32")


# --------------------------------------------------------------------------- gradcheck, fused
@pytest.fixture
def fused_backward_calls(monkeypatch):
    """Counts runs of the fused backward: a gradient check that silently took the reference
    (autograd of ccc_ref) would check nothing of the kernels."""
    calls = []
    real = C.ccc_backward_fused
    monkeypatch.setattr(C, "ccc_backward_fused",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("fn_name,shape,mask_kind,reduction", [
    ("ccc", (2, 6, 2), "random", "global"),              # [K] output: one row per target
    ("ccc_loss", (2, 5, 2), "empty_window", "per_window"),  # scalar; one window left out
])
def test_fused_gradcheck(interp, fused_backward_calls, fn_name, shape, mask_kind, reduction):
    """torch.autograd.gradcheck through the fused autograd Function (float32: see
    fused_gradcheck), gradients for pred and target."""
    x, y, m = make(shape, mask_kind, seed=3)
    fn = getattr(C, fn_name)
    inputs = (x.requires_grad_(True), y.requires_grad_(True))
    assert gradcheck_fp32(lambda a, b: fn(a, b, m, reduction), inputs)
    assert fused_backward_calls


@pytest.mark.parametrize("fn_name,shape,mask_kind,reduction,n_chunks", [
    ("ccc", (2, 7, 3), "random", "global", 1),
    ("ccc", (3, 5, 2), "empty_window", "per_window", 1),
    ("ccc_loss", (40, 2), "random", "global", 3),   # chunks merged: the backward's hi/lo means
])
def test_fused_jacobian_matches_float64_finite_differences(
        interp, small_tiles, fused_backward_calls, fn_name, shape, mask_kind, reduction,
        n_chunks):
    x, y, m = make(shape, mask_kind, seed=8, offset=0.5)
    G, L, K = C._as_groups(x, y, m, reduction)[0].shape
    assert C._grid(G, L, K)[2] == n_chunks
    fused, ref = getattr(C, fn_name), getattr(C, fn_name + "_ref")
    assert_jacobian_matches_float64(lambda a, b: fused(a, b, m, reduction),
                                    lambda a, b: ref(a, b, m, reduction), (x, y))
    assert fused_backward_calls


# --------------------------------------------------------------------------- properties
@pytest.mark.parametrize("reduction", ["global", "per_window"])
@pytest.mark.parametrize("path", ["fused", "reference"])
def test_masked_frames_truly_ignored(request, path, reduction):
    if path == "fused":
        request.getfixturevalue("interp")
    fn = C.ccc_loss if path == "fused" else C.ccc_loss_ref
    x, y, m = make((3, 13, 2), "empty_window", seed=7)  # window 0: no valid frame
    x2, y2 = x.clone(), y.clone()
    x2[~m] = torch.tensor([float("nan"), 1e6])
    y2[~m] = -5.0  # Aff-Wild2's invalid-VA sentinel
    y2[0, 0] = float("inf")
    grads = []
    for a, b in ((x, y), (x2, y2)):
        a = a.clone().requires_grad_(True)
        b = b.clone().requires_grad_(True)
        loss = fn(a, b, m, reduction)
        loss.backward()
        grads.append((loss.detach(), a.grad, b.grad))
    (l1, gx1, gy1), (l2, gx2, gy2) = grads
    assert torch.equal(l1, l2)
    assert torch.equal(gx1, gx2) and torch.equal(gy1, gy2)
    assert (gx2[~m] == 0).all() and (gy2[~m] == 0).all()
    assert (gx2[m] != 0).any()


def test_far_from_zero_float32(interp):
    """Offset 1e3 in float32: fused and reference agree with float64 NumPy on the same values."""
    x, y, m = make((2, 150, 2), "random", seed=11, offset=1e3)
    want = ccc_np(x, y, m, "global")
    # The test is sensitive: a one-pass float32 E[xy] - E[x]E[y] formula is far off here.
    xv, yv = x.reshape(-1, 2)[m.reshape(-1)], y.reshape(-1, 2)[m.reshape(-1)]
    naive_cov = (xv * yv).mean(0) - xv.mean(0) * yv.mean(0)
    naive_var = (xv * xv).mean(0) - xv.mean(0) ** 2 + (yv * yv).mean(0) - yv.mean(0) ** 2
    naive = 2 * naive_cov / (naive_var + (xv.mean(0) - yv.mean(0)) ** 2)
    assert np.abs(naive.numpy() - want).max() > 1e-2
    for fn in (C.ccc, C.ccc_ref):
        xr = x.clone().requires_grad_(True)
        got = fn(xr, y, m, "global")
        np.testing.assert_allclose(got.detach().numpy(), want, **tol("float32"))
        got.sum().backward()
        g = grad_np(x, y, m, "global")
        np.testing.assert_allclose(xr.grad.numpy(), g, rtol=1e-3, atol=1e-3 * np.abs(g).max())


def test_degenerate_inputs_defined_and_finite(interp):
    # both sides constant and equal: D == 0 -> CCC := 0, zero gradient
    x = torch.full((2, 8, 2), 0.3)
    for fn in (C.ccc, C.ccc_ref):
        xr, yr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        v = fn(xr, yr, None, "global")
        v.sum().backward()
        assert torch.equal(v.detach(), torch.zeros(2))
        assert torch.equal(xr.grad, torch.zeros_like(x)) and torch.equal(yr.grad, torch.zeros_like(x))
    # constant target with a different mean: CCC = 0 (cov = 0); the formula gives zero
    # gradient for pred (y_i - my = 0, CCC = 0) and an ordinary one for the target
    xv, _, _ = make((2, 8, 2), None)
    y = torch.full_like(xv, -0.4)
    (v, gx, gy), (rv, rgx, rgy) = fused_and_ref("ccc", xv, y, None, "global", torch.ones(2))
    assert torch.equal(v, torch.zeros(2)) and torch.equal(gx, torch.zeros_like(gx))
    assert (gy != 0).all()
    assert_grad_close(gy, rgy, "float32")
    # nothing valid: loss 1, zero gradient
    x, y, m = make((2, 6, 2), "none_valid")
    (v, gx, _), _ = fused_and_ref("ccc_loss", x, y, m, "per_window", 1.0)
    assert v.item() == 1.0 and torch.equal(gx, torch.zeros_like(x))


@pytest.mark.parametrize("shape,reduction", [((0, 2), "global"), ((2, 0, 2), "per_window"),
                                             ((0, 5, 2), "per_window")])
def test_empty_inputs(interp, shape, reduction):
    x, y = torch.randn(shape, requires_grad=True), torch.randn(shape, requires_grad=True)
    loss = C.ccc_loss(x, y, None, reduction)
    loss.backward()
    assert loss.item() == 1.0 and x.grad.shape == shape and y.grad.shape == shape
    assert torch.equal(C.ccc(x, y, None, reduction), torch.zeros(2))


def test_non_contiguous_inputs(interp):
    gen = torch.Generator().manual_seed(2)
    big = torch.randn(3, 2 * 19, 5, generator=gen)
    x = big[:, ::2, :2]                                  # strided frames, sliced targets
    y = torch.randn(2, 19, 3, generator=gen).transpose(0, 2)  # [3, 19, 2] transposed storage
    m = (torch.rand(19, 3, generator=gen) > 0.2).t()     # [3, 19] non-contiguous mask
    assert not (x.is_contiguous() or y.is_contiguous() or m.is_contiguous())
    for red in ("global", "per_window"):
        (v, gx, gy), (rv, rgx, rgy) = fused_and_ref("ccc_loss", x, y, m, red, 1.3)
        torch.testing.assert_close(v, rv, **tol("float32"))
        assert_grad_close(gx, rgx, "float32")
        assert_grad_close(gy, rgy, "float32")


def test_nan_prefilled_buffers_fully_written(interp, small_tiles):
    x, y, m = make((3, 40, 3), "empty_window", seed=4)
    G, L, K = x.shape
    _, _, n_chunks, n_kblocks = C._grid(G, L, K)
    assert n_chunks > 1
    lay = C.workspace_layout(G, n_chunks, K)
    nan = float("nan")
    ws, out_buf, loss_buf = torch.full((lay["size"],), nan), torch.full((K,), nan), torch.full((), nan)
    out, loss, ws_out = C.ccc_forward_fused(x, y, m, workspace=ws, out=out_buf, loss=loss_buf)
    assert ws_out is ws and out is out_buf and loss is loss_buf
    for b in (ws, out, loss):
        assert not torch.isnan(b).any(), torch.isnan(b).nonzero()[:5]
    torch.testing.assert_close(out, C.ccc_ref(x, y, m, "per_window"), **tol("float32"))
    torch.testing.assert_close(loss, C.ccc_loss_ref(x, y, m, "per_window"), **tol("float32"))
    gx, gy = torch.full_like(x, nan), torch.full_like(y, nan)
    C.ccc_backward_fused(x, y, m, ws, torch.tensor(1.0), -1.0 / K, True, True, gx=gx, gy=gy)
    assert not torch.isnan(gx).any() and not torch.isnan(gy).any()
    assert (gx[~m] == 0).all()
    _, (_, rgx, rgy) = fused_and_ref("ccc_loss", x, y, m, "per_window", 1.0)
    assert_grad_close(gx, rgx, "float32")
    assert_grad_close(gy, rgy, "float32")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_fp32_math(interp, dtype):
    x, y, m = make((2, 23, 2), "random", seed=9, dtype=dtype)
    (v, gx, gy), _ = fused_and_ref("ccc_loss", x, y, m, "global", 1.0)
    assert v.dtype == torch.float32 and gx.dtype == dtype and gy.dtype == dtype
    # the reference on the same (rounded) values, upcast: only the output rounding differs
    _, (rv, rgx, rgy) = fused_and_ref("ccc_loss", x.float(), y.float(), m, "global", 1.0)
    torch.testing.assert_close(v, rv, **tol("float32"))
    assert_grad_close(gx, rgx, dtype)
    assert_grad_close(gy, rgy, dtype)
    # mixed dtypes, as under autocast: half predictions, float32 targets
    (v, gx, gy), _ = fused_and_ref("ccc_loss", x, y.float(), m, "global", 1.0)
    assert gx.dtype == dtype and gy.dtype == torch.float32
    torch.testing.assert_close(v, rv, **tol("float32"))
    assert_grad_close(gy, rgy, dtype)


def test_deterministic(interp, small_tiles):
    x, y, m = make((2, 40, 2), "random", seed=13)
    runs = []
    for _ in range(2):
        xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        loss = C.ccc_loss(xr, yr, m)
        loss.backward()
        runs.append((loss.detach(), xr.grad, yr.grad))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- dispatch, errors
def test_cpu_takes_reference_without_interpreter(monkeypatch):
    monkeypatch.delenv("AFFACCEL_TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)

    def boom(*a, **k):
        raise AssertionError("fused path taken on CPU without the interpreter")

    monkeypatch.setattr(C, "ccc_forward_fused", boom)
    calls = []
    real = C._group_ccc_ref
    monkeypatch.setattr(C, "_group_ccc_ref", lambda *a: calls.append(1) or real(*a))
    x, y, m = make((2, 9, 2))
    loss = C.ccc_loss(x, y, m)
    assert calls == [1]
    # the value against the independent NumPy CCC (not against ccc_loss_ref: that is what ran)
    want = 1 - ccc_np(x, y, m, "global").mean()
    np.testing.assert_allclose(loss.item(), want, **tol("float32"))


def test_force_reference_and_float64_fallback(interp, monkeypatch):
    x, y, m = make((2, 9, 2), dtype=torch.float64)
    calls = []
    real = C.ccc_forward_fused
    monkeypatch.setattr(C, "ccc_forward_fused", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert C.ccc_loss(x, y, m).dtype == torch.float64  # float64 -> reference
    monkeypatch.setenv("AFFACCEL_FORCE_REFERENCE", "1")
    C.ccc_loss(x.float(), y.float(), m)
    assert calls == []
    monkeypatch.delenv("AFFACCEL_FORCE_REFERENCE")
    C.ccc_loss(x.float(), y.float(), m)
    assert calls == [1]


def test_public_names_and_callable_module():
    import affaccel.ops as ops

    for name in ("ccc", "ccc_loss", "ccc_ref", "ccc_loss_ref"):
        assert getattr(ops, name) is getattr(C, name), name


@pytest.mark.parametrize("kwargs,match", [
    (dict(pred=torch.zeros(4, 2), target=torch.zeros(4, 3)), "same shape"),
    (dict(pred=torch.zeros(4), target=torch.zeros(4)), "at least 2 dims"),
    (dict(pred=torch.zeros(4, 2, dtype=torch.long), target=torch.zeros(4, 2)), "floating"),
    (dict(pred=torch.zeros(4, 2), target=torch.zeros(4, 2), mask=torch.ones(4)), "bool"),
    (dict(pred=torch.zeros(4, 2), target=torch.zeros(4, 2), mask=torch.ones(3, dtype=torch.bool)),
     r"shape pred.shape\[:-1\]"),
    (dict(pred=torch.zeros(4, 2), target=torch.zeros(4, 2), reduction="mean"), "reduction"),
    (dict(pred=torch.zeros(4, 0), target=torch.zeros(4, 0)), "at least one target"),
])
def test_bad_input_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        C.ccc_loss(**kwargs)


# --------------------------------------------------------------------------- compiled code
# Compiled Triton checks things the interpreter does not (e.g. that kernels read only constexpr
# globals). Without a GPU the kernels can still be compiled for one: sm_90 cubin through the
# ptxas that ships with Triton, in a fresh process (this one may run Triton interpreted).
_COMPILE_FOR_SM90 = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import affaccel.kernels.ccc as K

assert not K.INTERPRETED
strides = {n: "i32" for n in ("sxg", "sxl", "sxk", "syg", "syl", "syk", "smg", "sml")}
common = {"x_ptr": "*bf16", "y_ptr": "*fp32", "m_ptr": "*u8"}
jobs = [
    (K.ccc_partials_kernel, {**common, "part_ptr": "*fp32", "G": "i32", "L": "i32", "K": "i32",
                             "n_chunks": "i32", **strides},
     {"HAS_MASK": True, "BLOCK_L": 2048, "BLOCK_K": 2}, 8),
    (K.ccc_finalize_kernel, {"ws_ptr": "*fp32", "out_ptr": "*fp32", "loss_ptr": "*fp32",
                             "off_stats": "i32", "off_invw": "i32", "G": "i32", "K": "i32",
                             "n_chunks": "i32"},
     {"BLOCK_G": 32, "BLOCK_K": 2}, 4),
    (K.ccc_backward_kernel, {**common, "ws_ptr": "*fp32", "off_stats": "i32", "off_invw": "i32",
                             "gout_ptr": "*fp32", "gx_ptr": "*bf16", "gy_ptr": "*fp32", "G": "i32",
                             "L": "i32", "K": "i32", "scale": "fp32", **strides, "s_gout": "i32"},
     {"HAS_MASK": True, "NEED_GX": True, "NEED_GY": True, "BLOCK_L": 2048, "BLOCK_K": 2}, 8),
]
for fn, sig, consts, warps in jobs:
    src = ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in consts}},
                    constexprs=consts)
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    assert len(c.asm["cubin"]) > 0
print("compiled", len(jobs))
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_gpu():
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "AFFACCEL_TRITON_INTERPRET")}
    r = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], env=env, capture_output=True,
                       text=True, timeout=600, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert r.returncode == 0 and "compiled 3" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]


# --------------------------------------------------------------------------- CUDA
def test_interpreter_tests_in_fresh_process():
    """When something compiled Triton earlier in this process (a GPU session), the interpreter
    tests above skipped; run them here in a process of their own."""
    if C.triton_mode() != "compiled":
        pytest.skip("the interpreter tests ran in this process")
    run_in_fresh_process(__file__, "not gpu", interpret=True)


@pytest.fixture
def compiled(monkeypatch):
    use_compiled_cuda(monkeypatch, C)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [getattr(torch, d) for d in CCC_DTYPES])
@pytest.mark.parametrize("shape,mask_kind,reduction", CCC_CASES)
def test_cuda_parity(compiled, dtype, shape, mask_kind, reduction):
    x, y, m = make(shape, mask_kind, seed=21, dtype=dtype)
    x, y, m = x.cuda(), y.cuda(), m.cuda()
    (v, gx, gy), _ = fused_and_ref("ccc_loss", x, y, m, reduction, 1.7)
    # reference in float32 on the same (rounded) values
    _, (rv, rgx, rgy) = fused_and_ref("ccc_loss", x.float(), y.float(), m, reduction, 1.7)
    torch.testing.assert_close(v, rv, **tol("float32"))
    assert_grad_close(gx, rgx, dtype)
    assert_grad_close(gy, rgy, dtype)
    np.testing.assert_allclose(
        C.ccc(x, y, m, reduction).cpu().numpy(),
        ccc_np(x.float().cpu(), y.float().cpu(), m.cpu(), reduction), **tol("float32"))


@pytest.mark.gpu
def test_cuda_deterministic_and_graph_capturable(compiled):
    x, y, m = make((32, 300, 2), "random", seed=22)
    x, y, m = x.cuda().requires_grad_(True), y.cuda(), m.cuda()

    def step():
        x.grad = None
        loss = C.ccc_loss(x, y, m)
        loss.backward()
        return loss.detach().clone(), x.grad.clone()

    a, b = step(), step()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    x.grad = None
    with torch.cuda.graph(graph):
        loss = C.ccc_loss(x, y, m)
        loss.backward()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(loss.detach(), a[0]) and torch.equal(x.grad, a[1])


@pytest.mark.gpu
def test_gpu_tests_in_fresh_process():
    """The interpreter tests above made Triton interpreted for this whole process; the CUDA
    tests then skipped, and run here in a process of their own."""
    if C.triton_mode() != "interpreted":
        pytest.skip("the CUDA tests ran in this process")
    run_in_fresh_process(__file__, "gpu", interpret=False)


def test_public_ccc_is_the_function_even_after_module_import():
    # A submodule named like an exported function would shadow it once imported.
    import importlib

    import affaccel.ops as ops

    importlib.import_module("affaccel.ops.concordance")
    assert callable(ops.ccc) and not isinstance(ops.ccc, type(importlib))
