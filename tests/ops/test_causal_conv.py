"""Parity of the fused causal convolution (Triton, run on CPU through the interpreter) with the
F.conv1d reference: forward, every gradient, odd lengths, dilations, ragged channels,
non-contiguous inputs, NaN-prefilled outputs, determinism; and the same on CUDA (`gpu`)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from affaccel.ops import causal_conv as cc

from fused_gradcheck import assert_jacobian_matches_float64, gradcheck_fp32
from gpu_cases import CONV_PARAMS, conv_inputs, mode_dtype, run_conv
from tolerances import tol
from triton_mode import run_in_fresh_process, use_compiled_cuda, use_interpreter


@pytest.fixture
def interp(monkeypatch):
    use_interpreter(monkeypatch, cc)


@pytest.fixture
def cuda_kernels(monkeypatch):
    use_compiled_cuda(monkeypatch, cc)


@pytest.fixture
def cuda_mode(monkeypatch, request):
    """Compiled CUDA kernels in the precision mode of the test's `mode` parameter."""
    use_compiled_cuda(monkeypatch, cc, tf32=request.node.callspec.params["mode"] == "tf32")


_inputs = conv_inputs  # x, w, b, r, gy (gy: a grad_output != 1)
_run = run_conv


def _assert_close_scaled(g, g_ref, dtype):
    """Low-precision gradients are sums over B*T rounded terms: compare relative to their scale."""
    scale = max(1.0, g_ref.abs().max().item())
    torch.testing.assert_close(g.double() / scale, g_ref.double() / scale, **tol(dtype))


def _fused(x, w, b, d, act, r):
    return cc.causal_conv1d(x, w, b, d, act, r, fused=True)


# (B, T, C_in, C_out, k, dilation, activation, residual). T covers 1, 2, k*d, primes; multi-tile M
# (interpreter tiles of 64 rows cross batch boundaries) and channels above one 32-wide block.
CASES = [
    (2, 1, 3, 5, 3, 1, "relu", False),
    (2, 2, 4, 3, 2, 2, None, True),          # reach (k-1)*d >= T: a tap reads only padding
    (1, 6, 5, 7, 3, 2, "gelu", True),        # T = k*d
    (3, 13, 5, 7, 3, 4, "relu", True),       # prime T, reach 8 of 13 frames
    (2, 8, 6, 6, 2, 4, "leaky_relu", False),  # T = k*d
    (3, 37, 40, 36, 3, 2, "gelu", False),    # ragged C_in/C_out over 32-wide blocks
    (3, 17, 7, 4, 1, 1, "leaky_relu", True),  # k = 1
    (2, 29, 18, 20, 2, 1, "relu", True),
    (1, 5, 3, 9, 3, 1, None, False),
    (2, 11, 9, 9, 3, 4, "gelu", False),
]


@pytest.mark.parametrize("B,T,C_in,C_out,k,d,act,res", CASES)
def test_forward_and_grads_match_reference(interp, B, T, C_in, C_out, k, d, act, res):
    x, w, b, r, gy = _inputs(B, T, C_in, C_out, k, res)
    y, grads = _run(_fused, x, w, b, r, gy, d, act)
    y_ref, grads_ref = _run(cc.causal_conv1d_ref, x, w, b, r, gy, d, act)
    assert y.shape == (B, T, C_out) and y.is_contiguous()
    torch.testing.assert_close(y, y_ref, **tol(torch.float32))
    for name, g, g_ref in zip(["x", "weight", "bias", "residual"], grads, grads_ref):
        torch.testing.assert_close(g, g_ref, **tol(torch.float32), msg=lambda m: f"grad {name}: {m}")


def test_no_bias_and_partial_requires_grad(interp):
    x, w, _, r, gy = _inputs(2, 9, 5, 6, 3, True, bias=False)
    x.requires_grad_(False)
    r.requires_grad_(False)
    y = _fused(x, w, None, 2, "relu", r)
    (gw,) = torch.autograd.grad(y, [w], gy)
    (gw_ref,) = torch.autograd.grad(cc.causal_conv1d_ref(x, w, None, 2, "relu", r), [w], gy)
    torch.testing.assert_close(gw, gw_ref, **tol(torch.float32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(interp, dtype):
    x, w, b, r, gy = _inputs(2, 19, 24, 20, 3, True, dtype=dtype)
    y, grads = _run(_fused, x, w, b, r, gy, 2, "gelu")
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    # reference in float64 on the same (already rounded) values; fp32 accumulation in the kernel
    up = [t.detach().double().requires_grad_(True) for t in (x, w, b, r)]
    y_ref, grads_ref = _run(cc.causal_conv1d_ref, *up, gy.double(), 2, "gelu")
    torch.testing.assert_close(y.double(), y_ref, **tol(dtype))
    for g, g_ref in zip(grads, grads_ref):
        _assert_close_scaled(g, g_ref, dtype)


def test_non_contiguous_inputs(interp):
    B, T, C_in, C_out, k, d = 2, 15, 6, 5, 3, 2
    g = torch.Generator().manual_seed(1)
    x_big = torch.randn(B, C_in * 2, T + 3, generator=g)
    x = x_big[:, ::2, 3:].transpose(1, 2)                     # [B, T, C_in], strides (.., 1, 2T+..)
    w = torch.randn(C_out, k, C_in, generator=g).transpose(1, 2)  # nn.Conv1d layout, not contiguous
    b = torch.randn(2 * C_out, generator=g)[::2]
    r = torch.randn(T, B, C_out, generator=g).transpose(0, 1)
    gy = torch.randn(B, C_out, T, generator=g).transpose(1, 2)
    assert not any(t.is_contiguous() for t in (x, w, b, r, gy))
    leaves = [t.requires_grad_(True) for t in (x, w, b, r)]
    y, grads = _run(_fused, *leaves, gy, d, "leaky_relu")
    y_ref, grads_ref = _run(cc.causal_conv1d_ref, *leaves, gy, d, "leaky_relu")
    torch.testing.assert_close(y, y_ref, **tol(torch.float32))
    for g_, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g_, g_ref, **tol(torch.float32))


def test_every_output_element_is_written(interp):
    """Outputs prefilled with NaN: a tile that skips an element leaves a NaN behind; strided
    outputs (a slice of a wider buffer) must not be written outside their view."""
    B, T, C_in, C_out, k, d = 3, 29, 34, 40, 3, 2  # 2 row tiles x 2 column tiles, ragged
    x, w, b, r, gy = (t.detach() if t is not None else None for t in _inputs(B, T, C_in, C_out, k, True))
    nan = float("nan")
    wide = torch.full((B, T, C_out + 7), nan)
    y_out = wide[:, :, 3:3 + C_out]
    z_out = torch.full((B * T, C_out), nan)
    y, z = cc.conv_forward(x, w, b, d, "gelu", r, save_z=True, out=y_out, z_out=z_out)
    assert y.data_ptr() == y_out.data_ptr() and torch.isfinite(y).all() and torch.isfinite(z).all()
    assert torch.isnan(wide[:, :, :3]).all() and torch.isnan(wide[:, :, 3 + C_out:]).all()
    torch.testing.assert_close(y, cc.causal_conv1d_ref(x, w, b, d, "gelu", r), **tol(torch.float32))
    z_ref = cc.causal_conv1d_ref(x, w, b, d, None).reshape(B * T, C_out)
    torch.testing.assert_close(z, z_ref, **tol(torch.float32))

    gz, gr, db = cc.act_backward(gy, y.contiguous(), z, r, "gelu", has_res=True, write_gr=True,
                                 write_db=True, gz_out=torch.full((B * T, C_out), nan),
                                 gr_out=torch.full((B * T, C_out), nan))
    assert torch.isfinite(gz).all() and torch.isfinite(gr).all() and torch.isfinite(db).all()
    # gz and gr against autograd of the reference epilogue
    zr = z_ref.clone().requires_grad_(True)
    rr = r.clone().requires_grad_(True)
    h = F.gelu(F.gelu(zr) + rr.reshape(B * T, C_out))
    gz_ref, gr_ref = torch.autograd.grad(h, [zr, rr], gy.reshape(B * T, C_out))
    torch.testing.assert_close(gz, gz_ref, **tol(torch.float32))
    torch.testing.assert_close(gr, gr_ref.reshape(B * T, C_out), **tol(torch.float32))
    torch.testing.assert_close(db, gz_ref.sum(0), **tol(torch.float32))

    gx = cc.grad_input(gz, w, d, B, T, out=torch.full((B, T, C_in), nan))
    part = torch.full((3, k, C_in, C_out), nan)
    gw = cc.grad_weight(x, gz, k, d, n_splits=3, partial_out=part)
    assert torch.isfinite(gx).all() and torch.isfinite(part).all() and torch.isfinite(gw).all()
    xr = x.clone().requires_grad_(True)
    wr = w.clone().requires_grad_(True)
    gx_ref, gw_ref = torch.autograd.grad(cc.causal_conv1d_ref(xr, wr, None, d), [xr, wr],
                                         gz.reshape(B, T, C_out))
    torch.testing.assert_close(gx, gx_ref, **tol(torch.float32))
    torch.testing.assert_close(gw, gw_ref, **tol(torch.float32))


def test_grad_weight_is_deterministic_across_splits(interp):
    B, T, C_in, C_out, k, d = 4, 23, 5, 6, 3, 1
    x, _, _, _, gy = (t.detach() if t is not None else None for t in _inputs(B, T, C_in, C_out, k, False))
    gz = gy.reshape(B * T, C_out).contiguous()
    one = cc.grad_weight(x, gz, k, d, n_splits=1)
    four_a = cc.grad_weight(x, gz, k, d, n_splits=4)
    four_b = cc.grad_weight(x, gz, k, d, n_splits=4)
    assert torch.equal(four_a, four_b)  # same split -> bitwise identical (no atomics)
    torch.testing.assert_close(one, four_a, **tol(torch.float32))


def test_output_is_causal(interp):
    B, T, C, k, d, t0 = 2, 20, 4, 3, 2, 9
    x, w, b, _, _ = (t.detach() if t is not None else None for t in _inputs(B, T, C, C, k, False))
    y = _fused(x, w, b, d, "relu", None)
    x2 = x.clone()
    x2[:, t0:] = torch.randn(B, T - t0, C)
    y2 = _fused(x2, w, b, d, "relu", None)
    assert torch.equal(y[:, :t0], y2[:, :t0])
    assert not torch.equal(y[:, t0:], y2[:, t0:])


def test_dispatch(interp, monkeypatch):
    x, w, b, _, _ = (t.detach() if t is not None else None for t in _inputs(1, 5, 3, 3, 2, False))
    calls = []
    orig = cc.CausalConv1dFn.apply
    monkeypatch.setattr(cc.CausalConv1dFn, "apply", lambda *a: calls.append(1) or orig(*a))
    cc.causal_conv1d(x, w, b)  # CPU + interpreter -> Triton
    assert calls == [1]
    cc.causal_conv1d(x, w, b, fused=False)
    monkeypatch.setenv("AFFACCEL_FORCE_REFERENCE", "1")
    cc.causal_conv1d(x, w, b)
    assert calls == [1]
    x64 = x.double()
    monkeypatch.delenv("AFFACCEL_FORCE_REFERENCE")
    cc.causal_conv1d(x64, w.double(), b.double())  # float64: the kernels do not take it
    assert calls == [1]


def test_pre_activation_saved_only_when_training(interp, monkeypatch):
    x, w, b, r, _ = _inputs(1, 6, 3, 3, 2, True)
    seen = []
    orig = cc.conv_forward
    monkeypatch.setattr(cc, "conv_forward", lambda *a, **kw: seen.append(kw["save_z"]) or orig(*a, **kw))
    with torch.no_grad():
        y0 = _fused(x, w, b, 1, "gelu", r)
    y1 = _fused(x, w, b, 1, "gelu", r)
    assert seen == [False, True] and torch.equal(y0, y1.detach())


def test_autocast_casts_like_conv1d(interp):
    x, w, b, _, _ = (t.detach() if t is not None else None for t in _inputs(2, 7, 16, 16, 3, False))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = cc.causal_conv1d(x, w, b, 2, "relu", fused=True)
        y_ref = cc.causal_conv1d_ref(x, w, b, 2, "relu")
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref, **tol(torch.bfloat16))


@pytest.fixture
def fused_backward_calls(monkeypatch):
    """Counts runs of the fused backward, so a gradient check cannot pass on the reference."""
    calls = []
    real = cc.act_backward
    monkeypatch.setattr(cc, "act_backward", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


# (activation, residual, bias): the plain convolution; GELU through the residual epilogue (the
# saved pre-activation and the residual re-read); LeakyReLU decided by signs, without a bias.
GRADCHECK_CASES = [(None, False, True), ("gelu", True, True), ("leaky_relu", True, False)]


def _gradcheck_inputs(res, bias, seed):
    # B = 2 so that a shifted tap that crossed into the other sequence would show; reach
    # (k-1)*d = 2 of T = 4 frames
    x, w, b, r, _ = _inputs(2, 4, 2, 3, 2, res, bias=bias, seed=seed)
    return tuple(t for t in (x, w, b, r) if t is not None)


def _with_optional(act, res, bias, conv):
    """conv(x, w, b, d, act, r) as a function of the tensors that exist (x, w[, b][, r])."""
    def f(x, w, *rest):
        rest = list(rest)
        b = rest.pop(0) if bias else None
        r = rest.pop(0) if res else None
        return conv(x, w, b, 2, act, r)
    return f


@pytest.mark.parametrize("act,res,bias", GRADCHECK_CASES)
def test_fused_gradcheck(interp, fused_backward_calls, act, res, bias):
    """torch.autograd.gradcheck through CausalConv1dFn (float32: see fused_gradcheck) for
    every input: x, weight, bias, residual."""
    inputs = _gradcheck_inputs(res, bias, seed=4)
    assert gradcheck_fp32(_with_optional(act, res, bias, _fused), inputs)
    assert fused_backward_calls


@pytest.mark.parametrize("act", [None, "relu", "gelu", "leaky_relu"])
def test_fused_jacobian_matches_float64_finite_differences(interp, fused_backward_calls, act):
    inputs = _gradcheck_inputs(True, True, seed=6)
    assert_jacobian_matches_float64(_with_optional(act, True, True, _fused),
                                    _with_optional(act, True, True, cc.causal_conv1d_ref),
                                    inputs)
    assert fused_backward_calls


@pytest.mark.parametrize("act", [None, "gelu", "leaky_relu"])
def test_reference_gradcheck_float64(act):
    x, w, b, r, _ = _inputs(2, 7, 3, 4, 3, True, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: cc.causal_conv1d_ref(*a[:3], 2, act, a[3]), (x, w, b, r))


def test_reference_matches_explicit_sum():
    """The reference itself, against the definition y[t] = sum_j w[:, :, j] x[t - (k-1-j) d]."""
    B, T, C_in, C_out, k, d = 2, 9, 3, 4, 3, 2
    x, w, b = (t.detach().double() for t in _inputs(B, T, C_in, C_out, k, False)[:3])
    y = cc.causal_conv1d_ref(x, w, b, d)
    expect = b.expand(B, T, C_out).clone()
    for t in range(T):
        for j in range(k):
            s = t - (k - 1 - j) * d
            if s >= 0:
                expect[:, t] += x[:, s] @ w[:, :, j].T
    torch.testing.assert_close(y, expect, **tol(torch.float64))


@pytest.mark.parametrize("bad, match", [
    (dict(x=torch.zeros(2, 3)), "x must be"),
    (dict(weight=torch.zeros(4, 5, 3)), "C_in"),
    (dict(bias=torch.zeros(5)), "bias must be"),
    (dict(residual=torch.zeros(2, 7, 5)), "residual must be"),
    (dict(dilation=0), "dilation"),
    (dict(activation="tanh"), "activation"),
    (dict(x=torch.zeros(2, 7, 3, dtype=torch.float64)), "dtype"),
    (dict(x=torch.zeros(2, 0, 3)), "T >= 1"),
])
def test_bad_arguments(bad, match):
    args = dict(x=torch.zeros(2, 7, 3), weight=torch.zeros(4, 3, 3), bias=torch.zeros(4),
                dilation=1, activation="relu", residual=torch.zeros(2, 7, 4))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        cc.causal_conv1d(**args)


def test_fused_true_without_kernels_is_a_clear_error(monkeypatch):
    for name in ("AFFACCEL_TRITON_INTERPRET", "TRITON_INTERPRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="AFFACCEL_TRITON_INTERPRET"):
        cc.causal_conv1d(torch.zeros(1, 4, 2), torch.zeros(3, 2, 2), fused=True)


def test_interpreter_tests_in_fresh_process():
    """Where something compiled Triton earlier in this process (a GPU session), the interpreter
    tests above skipped; run them in a process of their own."""
    if cc.triton_mode() != "compiled":
        pytest.skip("the interpreter tests ran in this process")
    run_in_fresh_process(__file__, "not gpu", interpret=True)


# ---- CUDA -------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("mode,case", CONV_PARAMS, ids=lambda p: p if isinstance(p, str) else "-".join(map(str, p)))
def test_cuda_matches_reference(cuda_mode, mode, case):
    """The shapes and modes are gpu_cases.CONV_PARAMS (a CPU test bounds their compiles); tf32:
    fp32 through TF32 tensor cores, against float64, with the TF32 tolerance."""
    B, T, C_in, C_out, k, d, act, res = case
    dtype = mode_dtype(mode)
    x, w, b, r, gy = _inputs(B, T, C_in, C_out, k, res, dtype=dtype, device="cuda")
    y, grads = _run(_fused, x, w, b, r, gy, d, act)
    up = [t.detach().double().requires_grad_(True) if t is not None else None for t in (x, w, b, r)]
    y_ref, grads_ref = _run(cc.causal_conv1d_ref, *up, gy.double(), d, act)
    torch.testing.assert_close(y.double(), y_ref, **tol(mode))
    for g, g_ref in zip(grads, grads_ref):
        _assert_close_scaled(g, g_ref, mode)


@pytest.mark.gpu
def test_cuda_grad_weight_deterministic(cuda_kernels):
    x, w, b, r, gy = _inputs(8, 300, 128, 128, 3, True, dtype=torch.bfloat16, device="cuda")
    runs = [_run(_fused, x, w, b, r, gy, 4, "relu")[1] for _ in range(3)]
    for other in runs[1:]:
        assert all(torch.equal(a, c) for a, c in zip(runs[0], other))


@pytest.mark.gpu
def test_gpu_tests_in_fresh_process():
    """The interpreter tests made Triton interpreted for this whole process, so the CUDA tests
    skipped; run them in a process of their own."""
    if cc.triton_mode() != "interpreted":
        pytest.skip("the CUDA tests ran in this process")
    run_in_fresh_process(__file__, "gpu", interpret=False)
