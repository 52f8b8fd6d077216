"""Triton kernels of the dilated causal convolution on channels-last activations.

The convolution is an implicit matrix product: rows are the B*T frames, columns the output
channels, and the reduction runs over k taps x C_in channels, each tap reading the input
shifted by s_j = (k-1-j)*dilation frames (masked where the shift leaves the sequence); tap
k-1 is the current frame, as in F.conv1d with (k-1)*dilation zeros of left padding:

    y[b, t, o] = act( sum_j sum_c x[b, t - s_j, c] * w[j, c, o] + bias[o] )      (forward)
    gx[b, t, c] = sum_j sum_o gz[b, t + s_j, o] * w[j, o, c]                      (grad input)
    gw[j, c, o] = sum_{b,t} x[b, t - s_j, c] * gz[b, t, o]                         (grad weight)

Forward and grad-input are the same kernel (`conv_kernel`) with the shift sign flipped
(causal -> anti-causal). The grad-weight kernel writes one fp32 partial per split of the B*T
rows; the host sums the partials (no atomics, so the result is deterministic). The activation
backward (`act_bwd_kernel`) is elementwise and also writes per-row-block partial sums of the
bias gradient.

Compile budget: every kernel variant Triton compiles costs seconds (tens of seconds for fp32
"ieee" tiles), so only what shapes the main loop is a constexpr (tile sizes, dot precision). The
epilogue (activation, bias, residual, stored pre-activation), the tap count and the shift sign
are runtime arguments: uniform branches taken once per tile, after the reduction. Integers that
vary from call to call (B*T, T, C_in, dilation, ...) are `do_not_specialize`, so a new batch or
sequence length never compiles a new variant; strides and C_out keep Triton's divisible-by-16
specialisation, which the vectorised (cp.async) loads need.

Imported only by affaccel.ops.causal_conv (through affaccel.ops._dispatch.load_kernels, which
checks Triton's TRITON_INTERPRET setting first), because Triton decides at decoration time
whether a kernel is compiled or interpreted.
"""
from __future__ import annotations

import triton
import triton.language as tl

# Activation codes shared with the host (affaccel.ops.causal_conv.ACTIVATIONS).
ACT_NONE, ACT_RELU, ACT_GELU, ACT_LEAKY = 0, 1, 2, 3
LEAKY_SLOPE = 0.01  # F.leaky_relu's default negative_slope



@triton.jit
def _act(v, act, SLOPE: tl.constexpr):
    # act: runtime activation code (uniform over the program)
    if act == 1:
        v = tl.maximum(v, 0.0)
    elif act == 2:
        # exact (erf) GELU, as F.gelu's default
        v = 0.5 * v * (1.0 + tl.erf(v * 0.7071067811865476))
    elif act == 3:
        v = tl.where(v > 0, v, v * SLOPE)
    return v


@triton.jit
def _through_sign(v, g, act, SLOPE: tl.constexpr):
    # ReLU/LeakyReLU backward given the sign of the activation's input (or output)
    if act == 1:
        g = tl.where(v > 0, g, 0.0)
    else:
        g = tl.where(v > 0, g, g * SLOPE)
    return g


@triton.jit
def _gelu_grad(v):
    cdf = 0.5 * (1.0 + tl.erf(v * 0.7071067811865476))
    pdf = 0.3989422804014327 * tl.exp(-0.5 * v * v)
    return cdf + v * pdf


# Integers that vary between calls: not specialised (see the module docstring).
CONV_DNS = ["M", "T", "C_in", "dilation", "K_TAPS", "SHIFT", "ACT", "M_BUCKET"]


@triton.jit(do_not_specialize=CONV_DNS)
def conv_kernel(
    X, W, BIAS, RES, Z, Y,
    M, T, C_in, C_out, dilation,
    K_TAPS, SHIFT, ACT, HAS_BIAS, HAS_RES, STORE_Z, M_BUCKET,
    sxb, sxt, sxc,
    srb, srt, src,
    syb, syt, syc,
    SLOPE: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One [BLOCK_M frames, BLOCK_N out-channels] tile of a shifted convolution.

    X: [B, T, C_in] (any strides); W: [K_TAPS, C_in, C_out] contiguous; BIAS: [C_out];
    RES: [B, T, C_out] (any strides); Z: [M, C_out] contiguous (pre-activation, optional);
    Y: [B, T, C_out] (any strides). Tap j reads x[t + SHIFT*(K_TAPS-1-j)*d]: SHIFT = -1 is the
    causal forward, +1 the transposed (anti-causal) convolution of the input gradient.
    ACT (activation code), HAS_BIAS/HAS_RES/STORE_Z (bools): the epilogue, at run time.
    M_BUCKET: next power of two of M, read only by the autotuner's key (not by the kernel).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < C_out
    b = rm // T
    t = rm - b * T
    x_row = b.to(tl.int64) * sxb

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n_ck = tl.cdiv(C_in, BLOCK_K)
    # one flat loop over (tap, channel chunk) so that Triton can software-pipeline it
    for kk in range(0, K_TAPS * n_ck):
        j = kk // n_ck
        ck = (kk - j * n_ck) * BLOCK_K + rk
        ts = t + SHIFT * (K_TAPS - 1 - j) * dilation
        row_ok = m_ok & (ts >= 0) & (ts < T)
        k_ok = ck < C_in
        a = tl.load(
            X + x_row[:, None] + ts.to(tl.int64)[:, None] * sxt + ck[None, :] * sxc,
            mask=row_ok[:, None] & k_ok[None, :], other=0.0,
        )
        w = tl.load(
            W + (j * C_in + ck)[:, None] * C_out + rn[None, :],
            mask=k_ok[:, None] & n_ok[None, :], other=0.0,
        )
        if DOT_F32:
            # Triton's CPU interpreter mis-multiplies bf16 blocks; products of bf16/fp16
            # values are exact in fp32, so upcasting changes nothing but the speed.
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)

    # epilogue: runtime flags; a masked-off load issues no memory traffic
    acc += tl.load(BIAS + rn, mask=n_ok & HAS_BIAS, other=0.0).to(tl.float32)[None, :]
    out_ok = m_ok[:, None] & n_ok[None, :]
    if STORE_Z:
        tl.store(Z + rm.to(tl.int64)[:, None] * C_out + rn[None, :],
                 acc.to(Z.dtype.element_ty), mask=out_ok)
    acc = _act(acc, ACT, SLOPE)
    if HAS_RES:
        r = tl.load(RES + b.to(tl.int64)[:, None] * srb + t.to(tl.int64)[:, None] * srt
                    + rn[None, :] * src, mask=out_ok, other=0.0)
        acc = _act(acc + r.to(tl.float32), ACT, SLOPE)
    tl.store(Y + b.to(tl.int64)[:, None] * syb + t.to(tl.int64)[:, None] * syt + rn[None, :] * syc,
             acc.to(Y.dtype.element_ty), mask=out_ok)


ACT_BWD_DNS = ["M", "T", "ACT"]


@triton.jit(do_not_specialize=ACT_BWD_DNS)
def act_bwd_kernel(
    GY, Y, Z, RES, GZ, GR, DB,
    M, T, C,
    sgb, sgt, sgc,
    srb, srt, src,
    ACT, HAS_RES, WRITE_GR, WRITE_DB,
    SLOPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Gradient through the epilogue: gz = dL/d(conv + bias), gr = dL/d(residual).

    GY: [B, T, C] (any strides); Y, Z: [M, C] contiguous (the forward's output and
    pre-activation; each only read where the activation needs it); RES: [B, T, C] (any
    strides, read only for GELU with a residual); GZ, GR: [M, C] contiguous;
    DB: [cdiv(M, BLOCK_M), C] fp32 partial column sums of gz (bias gradient).
    Without a residual, y = act(z); with one, y = act(h), h = act(z) + r.
    ReLU/LeakyReLU derivatives are read off the sign of y (= sign of h, or of z without a
    residual), so the decision matches the forward exactly.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < C
    ok = m_ok[:, None] & n_ok[None, :]
    b = rm // T
    t = rm - b * T
    flat = rm.to(tl.int64)[:, None] * C + rn[None, :]

    is_sign = (ACT == 1) | (ACT == 3)
    is_gelu = ACT == 2
    # each operand is read only where the activation needs it (masked-off loads cost nothing)
    y = tl.load(Y + flat, mask=ok & is_sign, other=0.0)
    z = tl.load(Z + flat, mask=ok & (is_gelu | (HAS_RES & is_sign)), other=0.0).to(tl.float32)
    r = tl.load(RES + b.to(tl.int64)[:, None] * srb + t.to(tl.int64)[:, None] * srt
                + rn[None, :] * src, mask=ok & is_gelu & HAS_RES, other=0.0).to(tl.float32)
    g = tl.load(GY + b.to(tl.int64)[:, None] * sgb + t.to(tl.int64)[:, None] * sgt
                + rn[None, :] * sgc, mask=ok, other=0.0).to(tl.float32)
    if is_sign:
        g = _through_sign(y, g, ACT, SLOPE)  # outer activation (the only one without residual)
    if HAS_RES:
        if is_gelu:
            g = g * _gelu_grad(_act(z, 2, SLOPE) + r)
        if WRITE_GR:
            tl.store(GR + flat, g.to(GR.dtype.element_ty), mask=ok)
        if is_sign:
            g = _through_sign(z, g, ACT, SLOPE)
    if is_gelu:
        g = g * _gelu_grad(z)
    tl.store(GZ + flat, g.to(GZ.dtype.element_ty), mask=ok)
    if WRITE_DB:
        tl.store(DB + pid_m * C + rn, tl.sum(tl.where(ok, g, 0.0), axis=0), mask=n_ok)


GRAD_W_DNS = ["M", "T", "C_in", "dilation", "rows_per_split", "K_TAPS", "M_BUCKET"]


@triton.jit(do_not_specialize=GRAD_W_DNS)
def grad_weight_kernel(
    X, GZ, P,
    M, T, C_in, C_out, dilation, rows_per_split, K_TAPS, M_BUCKET,
    sxb, sxt, sxc,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Partial weight gradient of one (tap, C_in tile, C_out tile) over one split of rows.

    X: [B, T, C_in] (any strides); GZ: [M, C_out] contiguous;
    P: [n_splits, K_TAPS, C_in, C_out] fp32, P[s] = sum over rows of split s.
    M_BUCKET: next power of two of M, for the autotuner's key only.
    """
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_ci = tl.cdiv(C_in, BLOCK_CI)
    n_co = tl.cdiv(C_out, BLOCK_CO)
    j = pid // (n_ci * n_co)
    rem = pid - j * (n_ci * n_co)
    pid_ci = rem // n_co
    pid_co = rem - pid_ci * n_co
    rci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    rco = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    ci_ok = rci < C_in
    co_ok = rco < C_out

    acc = tl.zeros((BLOCK_CI, BLOCK_CO), dtype=tl.float32)
    m_start = pid_s * rows_per_split
    m_end = tl.minimum(m_start + rows_per_split, M)
    for m0 in range(m_start, m_end, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        m_ok = rm < m_end
        b = rm // T
        ts = rm - b * T - (K_TAPS - 1 - j) * dilation
        x_ok = m_ok & (ts >= 0)
        a = tl.load(
            X + b.to(tl.int64)[:, None] * sxb + ts.to(tl.int64)[:, None] * sxt + rci[None, :] * sxc,
            mask=x_ok[:, None] & ci_ok[None, :], other=0.0,
        )
        g = tl.load(GZ + rm.to(tl.int64)[:, None] * C_out + rco[None, :],
                    mask=m_ok[:, None] & co_ok[None, :], other=0.0)
        if DOT_F32:
            a = a.to(tl.float32)
            g = g.to(tl.float32)
        acc = tl.dot(tl.trans(a), g, acc, input_precision=PRECISION)

    p = P + ((pid_s * K_TAPS + j) * C_in + rci.to(tl.int64))[:, None] * C_out + rco[None, :]
    tl.store(p, acc, mask=ci_ok[:, None] & co_ok[None, :])


# Triton chose compiled or interpreted when it decorated the kernels above; the host code reads
# this to pick launch configurations (and the tests to check the mode they asked for).
INTERPRETED = type(conv_kernel).__name__ == "InterpretedFunction"


# ---- launch configurations -------------------------------------------------------------------
# The interpreter runs numpy per block op, so fewer, larger programs are faster there. On GPU the
# tile shape is autotuned among a few tensor-core friendly shapes per precision class: "16bit"
# (bf16/fp16 operands), "tf32" (fp32 operands on tensor cores) and "ieee" (exact fp32: FMA, not
# tensor cores, so small tiles; they are also the slowest to compile). Every shape is compiled
# offline for sm_90 by the tests and fits the 227 KB of shared memory an H100/H200 block may use,
# so no config fails at launch (a failing one would still have cost its compile). The first
# shape of each class is the one pinned when autotuning is off (AFFACCEL_AUTOTUNE=pinned).

INTERPRETER_CONV = dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=32)
INTERPRETER_GRAD_W = dict(BLOCK_CI=32, BLOCK_CO=32, BLOCK_M=64)
ACT_BWD_BLOCKS = dict(BLOCK_M=32, BLOCK_N=128)
INTERPRETER_ACT_BWD_BLOCKS = dict(BLOCK_M=64, BLOCK_N=32)

PRECISION_CLASSES = ("16bit", "tf32", "ieee")
SMEM_LIMIT = 227 * 1024  # bytes of shared memory one block may use on sm_90

CONV_SHAPES = {  # BLOCK_M, BLOCK_N, BLOCK_K, warps, stages
    "16bit": [(128, 128, 64, 8, 3), (128, 128, 32, 4, 4), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
              (128, 256, 64, 8, 3)],
    "tf32": [(128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4)],
    "ieee": [(64, 64, 32, 4, 2), (128, 64, 16, 8, 2)],
}
GRAD_W_SHAPES = {  # BLOCK_CI, BLOCK_CO, BLOCK_M, warps, stages
    "16bit": [(128, 128, 64, 8, 3), (128, 128, 32, 4, 4), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4)],
    "tf32": [(128, 128, 32, 8, 3), (64, 128, 32, 4, 4)],
    "ieee": [(64, 64, 32, 4, 2)],
}
# Autotune keys: M enters as its power-of-two bucket (a new last-batch size does not retune);
# the precision and the epilogue flags are in (a config tuned for one is not reused for the
# other); Triton's autotuner adds the dtypes of the tensor arguments itself.
CONV_KEY = ["M_BUCKET", "C_in", "C_out", "K_TAPS", "SHIFT", "ACT", "HAS_BIAS", "HAS_RES", "STORE_Z",
            "PRECISION"]
GRAD_W_KEY = ["M_BUCKET", "C_in", "C_out", "K_TAPS", "PRECISION"]


def precision_class(dtype_name: str, precision: str) -> str:
    """"16bit" | "tf32" | "ieee" for an operand dtype name ("float32", "bfloat16", ...)."""
    if dtype_name in ("bfloat16", "float16"):
        return "16bit"
    return "tf32" if precision == "tf32" else "ieee"


def m_bucket(m: int) -> int:
    """The autotune key's bucket of M = B*T: the next power of two."""
    return 1 << max(0, int(m) - 1).bit_length()


def conv_configs(cls: str, pinned: bool = False):
    shapes = CONV_SHAPES[cls][:1] if pinned else CONV_SHAPES[cls]
    return [triton.Config(dict(BLOCK_M=m, BLOCK_N=n, BLOCK_K=k), num_warps=w, num_stages=s)
            for m, n, k, w, s in shapes]


def grad_w_configs(cls: str, pinned: bool = False):
    shapes = GRAD_W_SHAPES[cls][:1] if pinned else GRAD_W_SHAPES[cls]
    return [triton.Config(dict(BLOCK_CI=ci, BLOCK_CO=co, BLOCK_M=m), num_warps=w, num_stages=s)
            for ci, co, m, w, s in shapes]


_AUTOTUNED: dict = {}


def autotuned(name: str, cls: str = "16bit", pinned: bool = False):
    """The GPU (compiled) kernel `name` ("conv" | "grad_weight") wrapped in triton.autotune over
    the shapes of precision class `cls`; `pinned`: the class's first shape only (no tuning, one
    compile per specialisation). Built on first use."""
    key = (name, cls, pinned)
    if key not in _AUTOTUNED:
        if name == "conv":
            _AUTOTUNED[key] = triton.autotune(configs=conv_configs(cls, pinned), key=CONV_KEY)(conv_kernel)
        elif name == "grad_weight":
            _AUTOTUNED[key] = triton.autotune(configs=grad_w_configs(cls, pinned), key=GRAD_W_KEY)(
                grad_weight_kernel)
        else:
            raise KeyError(name)
    return _AUTOTUNED[key]
