"""Dilated causal 1-D convolution on channels-last activations, with a fused epilogue.

``causal_conv1d`` runs the Triton kernels of ``affaccel.kernels.tcn_conv`` on CUDA tensors (and
on CPU tensors under AFFACCEL_TRITON_INTERPRET=1 with TRITON_INTERPRET=1) and ``causal_conv1d_ref`` otherwise; the
reference is ``F.conv1d`` with left padding and is also what the kernels are tested against.

Semantics (both paths)::

    z = conv(x, weight, dilation) + bias     # output t sees x[t - j*dilation], j = 0..k-1 only
    y = act(z)
    y = act(y + residual)                    # only when a residual is given

Shapes: x [B, T, C_in], weight [C_out, C_in, k] (nn.Conv1d's layout), bias [C_out],
residual [B, T, C_out], y [B, T, C_out].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from affaccel import env
from affaccel.ops._dispatch import (  # noqa: F401
    load_kernels,
    triton_importable,
    triton_mode,
    use_triton,
)

# activation name -> code understood by the kernels (kernels/tcn_conv.py ACT_*)
ACTIVATIONS = {None: 0, "relu": 1, "gelu": 2, "leaky_relu": 3}
LEAKY_SLOPE = 0.01
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def activation_ref(v: torch.Tensor, activation: str | None) -> torch.Tensor:
    """The activations the kernels fuse, in plain PyTorch (exact-erf GELU, slope 0.01)."""
    if activation is None:
        return v
    if activation == "relu":
        return F.relu(v)
    if activation == "gelu":
        return F.gelu(v)
    if activation == "leaky_relu":
        return F.leaky_relu(v, LEAKY_SLOPE)
    raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dilation: int = 1,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference: F.conv1d on [B, C_in, T] with (k-1)*dilation zeros on the left.

    x: [B, T, C_in], weight: [C_out, C_in, k], bias: [C_out] | None,
    residual: [B, T, C_out] | None -> [B, T, C_out].
    """
    k = weight.shape[-1]
    xp = F.pad(x.transpose(1, 2), ((k - 1) * dilation, 0))
    # contiguous [B, T, C_out] like the fused output: a later dropout draws its mask in memory
    # order, so both paths must hand it the same layout to drop the same elements
    y = F.conv1d(xp, weight, bias, dilation=dilation).transpose(1, 2).contiguous()
    y = activation_ref(y, activation)
    if residual is not None:
        y = activation_ref(y + residual, activation)
    return y


def _check(x, weight, bias, dilation, activation, residual) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation!r}")
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, C_in], got shape {tuple(x.shape)}")
    if weight.dim() != 3:
        raise ValueError(f"weight must be [C_out, C_in, k] (nn.Conv1d layout), got {tuple(weight.shape)}")
    B, T, C_in = x.shape
    C_out, wc_in, k = weight.shape
    if wc_in != C_in:
        raise ValueError(f"weight has C_in={wc_in} but x has {C_in} channels (x: [B, T, C_in])")
    if k < 1 or C_out < 1 or C_in < 1:
        raise ValueError(f"weight must have k >= 1 and non-empty channels, got {tuple(weight.shape)}")
    if B < 1 or T < 1:
        raise ValueError(f"x must have B >= 1 and T >= 1, got shape {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (C_out,):
        raise ValueError(f"bias must be [C_out]=[{C_out}], got {tuple(bias.shape)}")
    if residual is not None and tuple(residual.shape) != (B, T, C_out):
        raise ValueError(f"residual must be [B, T, C_out]=[{B}, {T}, {C_out}], got {tuple(residual.shape)}")
    tensors = {"x": x, "weight": weight, "bias": bias, "residual": residual}
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
        if t.dtype != x.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but x has {x.dtype}; all must match")


# ---- kernel launches (also called directly by the tests, with NaN-filled out buffers) ---------

KERNELS = "affaccel.kernels.tcn_conv"


def _kernels():
    return load_kernels(KERNELS, "affaccel causal_conv1d")


def _precision(t: torch.Tensor) -> str:
    # fp32 follows PyTorch's own policy for convolutions (TF32 on tensor cores if allowed)
    if t.is_cuda and t.dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def _w_taps(weight: torch.Tensor, transpose: bool) -> torch.Tensor:
    """[C_out, C_in, k] -> [k, C_in, C_out] (forward) or [k, C_out, C_in] (grad input)."""
    return (weight.permute(2, 0, 1) if transpose else weight.permute(2, 1, 0)).contiguous()


def _tuning(kern, x: torch.Tensor) -> tuple[str, str, bool]:
    """(dot precision, precision class, pinned) of the compiled kernels for operand x."""
    precision = _precision(x)
    cls = kern.precision_class(str(x.dtype).replace("torch.", ""), precision)
    return precision, cls, env.autotune_pinned()


def _launch_conv(x, w_taps, bias, residual, z, y, dilation, act, shift):
    kern = _kernels()
    B, T, C_in = x.shape
    C_out = w_taps.shape[2]
    M = B * T
    r = residual if residual is not None else y
    precision, cls, pinned = _tuning(kern, x)
    args = (
        x, w_taps, bias if bias is not None else w_taps, r, z if z is not None else y, y,
        M, T, C_in, C_out, dilation,
        w_taps.shape[0], shift, act, bias is not None, residual is not None, z is not None,
        kern.m_bucket(M),
        *x.stride(), *r.stride(), *y.stride(),
    )
    flags = dict(SLOPE=LEAKY_SLOPE, DOT_F32=kern.INTERPRETED, PRECISION=precision)
    if kern.INTERPRETED:
        cfg = kern.INTERPRETER_CONV
        grid = (_cdiv(M, cfg["BLOCK_M"]), _cdiv(C_out, cfg["BLOCK_N"]))
        kern.conv_kernel[grid](*args, **flags, **cfg)
    else:
        def grid(meta):
            return (_cdiv(M, meta["BLOCK_M"]), _cdiv(C_out, meta["BLOCK_N"]))
        kern.autotuned("conv", cls, pinned)[grid](*args, **flags)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def conv_forward(x, weight, bias, dilation, activation, residual, *, save_z, out=None, z_out=None):
    """Fused forward. Returns (y [B, T, C_out], z [B*T, C_out] pre-activation or None).

    out / z_out: optional preallocated outputs (any strides for out; z_out contiguous).
    """
    B, T, _ = x.shape
    C_out = weight.shape[0]
    y = out if out is not None else x.new_empty(B, T, C_out)
    z = None
    if save_z:
        z = z_out if z_out is not None else x.new_empty(B * T, C_out)
    bias = bias.contiguous() if bias is not None else None  # the kernel reads it with stride 1
    _launch_conv(x, _w_taps(weight, False), bias, residual, z, y, dilation,
                 ACTIVATIONS[activation], shift=-1)
    return y, z


def act_backward(gy, y, z, residual, activation, *, has_res, write_gr, write_db,
                 gz_out=None, gr_out=None):
    """Gradient through bias/activation(/residual/activation).

    gy: [B, T, C_out] (any strides); y: [B, T, C_out] contiguous forward output; z: [B*T, C_out]
    pre-activation or None; residual: [B, T, C_out], read only for GELU with has_res.
    Returns gz [B*T, C_out] (y's dtype), gr [B*T, C_out] | None, and the bias gradient [C_out]
    fp32 | None (per-row-block partial sums added in a fixed order: deterministic).
    """
    kern = _kernels()
    B, T, C = gy.shape
    M = B * T
    blocks = kern.INTERPRETER_ACT_BWD_BLOCKS if kern.INTERPRETED else kern.ACT_BWD_BLOCKS
    n_mb = _cdiv(M, blocks["BLOCK_M"])
    gz = gz_out if gz_out is not None else y.new_empty(M, C)
    gr = None
    if write_gr:
        gr = gr_out if gr_out is not None else y.new_empty(M, C)
    db = y.new_empty(n_mb, C, dtype=torch.float32) if write_db else None
    r = residual if residual is not None else gy
    grid = (n_mb, _cdiv(C, blocks["BLOCK_N"]))
    kern.act_bwd_kernel[grid](
        gy, y, z if z is not None else y, r, gz, gr if gr is not None else gz,
        db if db is not None else gz,
        M, T, C, *gy.stride(), *r.stride(),
        ACTIVATIONS[activation], bool(has_res), bool(write_gr), bool(write_db),
        SLOPE=LEAKY_SLOPE, **blocks,
    )
    return gz, gr, (db.sum(0) if db is not None else None)


def grad_input(gz, weight, dilation, B, T, *, out=None):
    """dL/dx [B, T, C_in] from gz [B*T, C_out]: the anti-causal (transposed) convolution."""
    C_out, C_in, _ = weight.shape
    gx = out if out is not None else gz.new_empty(B, T, C_in)
    _launch_conv(gz.view(B, T, C_out), _w_taps(weight, True), None, None, None, gx, dilation,
                 ACTIVATIONS[None], shift=1)
    return gx


def _n_splits(x: torch.Tensor, M: int, tiles: int) -> int:
    # enough programs to fill the GPU once; each split keeps >= 512 rows of reduction
    if not x.is_cuda:
        return 1
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    return max(1, min(_cdiv(sms, tiles), M // 512))


def grad_weight(x, gz, k, dilation, *, n_splits=None, partial_out=None):
    """dL/dweight [C_out, C_in, k] fp32 from x [B, T, C_in] and gz [B*T, C_out].

    One fp32 partial per split of the B*T rows (partial_out: [n_splits, k, C_in, C_out]),
    summed in a fixed order afterwards, so the result is bitwise reproducible.
    """
    kern = _kernels()
    B, T, C_in = x.shape
    M = B * T
    C_out = gz.shape[1]
    if n_splits is None:
        n_splits = _n_splits(x, M, k * _cdiv(C_in, 128) * _cdiv(C_out, 128))
    rows = _cdiv(M, max(1, min(n_splits, M)))
    n_splits = _cdiv(M, rows)
    if partial_out is not None:
        if partial_out.shape[0] < n_splits:
            raise ValueError(f"partial_out needs {n_splits} splits, has {partial_out.shape[0]}")
        part = partial_out[:n_splits]
    else:
        part = x.new_empty(n_splits, k, C_in, C_out, dtype=torch.float32)
    precision, cls, pinned = _tuning(kern, x)
    args = (x, gz, part, M, T, C_in, C_out, dilation, rows, k, kern.m_bucket(M), *x.stride())
    flags = dict(DOT_F32=kern.INTERPRETED, PRECISION=precision)
    if kern.INTERPRETED:
        cfg = kern.INTERPRETER_GRAD_W
        grid = (k * _cdiv(C_in, cfg["BLOCK_CI"]) * _cdiv(C_out, cfg["BLOCK_CO"]), n_splits)
        kern.grad_weight_kernel[grid](*args, **flags, **cfg)
    else:
        def grid(meta):
            return (k * _cdiv(C_in, meta["BLOCK_CI"]) * _cdiv(C_out, meta["BLOCK_CO"]),
                    n_splits)
        kern.autotuned("grad_weight", cls, pinned)[grid](*args, **flags)
    total = part[0] if n_splits == 1 else part.sum(0)
    return total.permute(2, 1, 0)  # [k, C_in, C_out] -> [C_out, C_in, k] (a view)


# ---- autograd ---------------------------------------------------------------------------------

class CausalConv1dFn(torch.autograd.Function):
    """Fused causal convolution; forward and backward both run Triton kernels."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, dilation, activation, grad_enabled=True):
        # needs_input_grad is also True under torch.no_grad(); the caller passes the grad mode
        needs_grad = grad_enabled and any(ctx.needs_input_grad[:4])
        # the pre-activation is needed where the output's sign cannot stand in for it
        save_z = needs_grad and (
            activation == "gelu" or (residual is not None and activation is not None)
        )
        y, z = conv_forward(x, weight, bias, dilation, activation, residual, save_z=save_z)
        res_saved = residual if activation == "gelu" else None
        ctx.save_for_backward(x, weight, y, z, res_saved)
        ctx.dilation, ctx.activation = dilation, activation
        ctx.has_bias, ctx.has_res = bias is not None, residual is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, weight, y, z, res_saved = ctx.saved_tensors
        need_x, need_w, need_b, need_r = ctx.needs_input_grad[:4]
        B, T, _ = x.shape
        gz, gr, db = act_backward(gy, y, z, res_saved, ctx.activation, has_res=ctx.has_res,
                                  write_gr=bool(need_r), write_db=bool(need_b))
        gx = grad_input(gz, weight, ctx.dilation, B, T) if need_x else None
        gw = None
        if need_w:
            gw = grad_weight(x, gz, weight.shape[2], ctx.dilation).to(
                dtype=weight.dtype, memory_format=torch.contiguous_format)
        gb = db.to(weight.dtype) if need_b else None
        gres = gr.view(B, T, -1) if need_r else None
        return gx, gw, gb, gres, None, None, None


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dilation: int = 1,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
    *,
    fused: bool | None = None,
) -> torch.Tensor:
    """Dilated causal convolution with fused bias, activation and residual epilogue.

    x: [B, T, C_in] (any strides), weight: [C_out, C_in, k] (nn.Conv1d layout), bias: [C_out],
    residual: [B, T, C_out] -> y: [B, T, C_out], y = act(conv(x) + bias), then with a residual
    y = act(y + residual). Output t depends on x[t - j*dilation] for j = 0..k-1 only.
    activation: None, "relu", "gelu" (exact erf) or "leaky_relu" (slope 0.01).
    fused: None picks by device (CUDA -> Triton, CPU -> reference, see affaccel.ops._dispatch);
    True forces the Triton kernels (error where they cannot run); False forces the reference.
    Under torch.autocast the inputs are cast to the autocast dtype, as F.conv1d would be.
    """
    if torch.is_autocast_enabled(x.device.type):
        dt = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
        residual = residual.to(dt) if residual is not None else None
    _check(x, weight, bias, dilation, activation, residual)
    if fused is None:
        fused = use_triton(x, weight, bias, residual) and x.dtype in _FLOAT_DTYPES
    if not fused:
        return causal_conv1d_ref(x, weight, bias, dilation, activation, residual)
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"the fused kernel takes float32/float16/bfloat16, got {x.dtype}")
    if not (x.is_cuda or (x.device.type == "cpu" and env.triton_interpret())):
        raise RuntimeError(
            "fused=True needs CUDA tensors, or CPU tensors with AFFACCEL_TRITON_INTERPRET=1 and "
            "TRITON_INTERPRET=1 (Triton's interpreter; both set before Triton is first "
            f"imported); got {x.device}"
        )
    return CausalConv1dFn.apply(x, weight, bias, residual, dilation, activation,
                                torch.is_grad_enabled())


__all__ = ["causal_conv1d", "causal_conv1d_ref", "activation_ref", "ACTIVATIONS", "LEAKY_SLOPE"]
