"""Concordance Correlation Coefficient (CCC) and the CCC loss, fused (Triton) and reference.

CCC with population moments (Lin 1989), per target k over the valid frames:

    CCC = 2 cov(x, y) / D,    D = var x + var y + (mean x - mean y)^2,    loss = 1 - mean_k CCC

Reductions (pred, target: [..., K]; mask: [...] bool, True = valid frame):

* ``"global"`` (default, matches the VA metric): every valid frame of the whole input, per
  target; the leading dims are flattened into one set of N frames.
* ``"per_window"``: the input is read as windows ``[..., T, K]`` (every dim before T is a window
  index, e.g. [B, T, K] = B windows of T frames); CCC is computed over T inside each window and
  averaged over the windows that have at least one valid frame (windows with none are left out
  of the mean, not counted as 0).

Degenerate cases (never NaN, finite gradients): a group with no valid frame, or with D == 0
(both sides constant and equal, e.g. a single valid frame with pred == target), has CCC := 0
and zero gradient. If no window has a valid frame the per-target value is 0 and the loss 1.
A group with D > 0 but a constant side (e.g. constant target) has cov = 0, so CCC = 0 as well,
with the ordinary (non-zero) gradient.

Dispatch: CUDA tensors (float32/float16/bfloat16) take the fused Triton kernels; CPU tensors,
float64 and empty inputs take the reference; AFFACCEL_TRITON_INTERPRET=1 runs the kernels on CPU
through Triton's interpreter (with Triton's TRITON_INTERPRET=1, see affaccel.ops._dispatch);
AFFACCEL_FORCE_REFERENCE=1 forces the reference. Both paths return float32 for float32/16/bf16
inputs (float64 for float64) and give gradients for pred and, if it requires them, for target.
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from affaccel.ops._dispatch import load_kernels, triton_mode, use_triton  # noqa: F401

REDUCTIONS = ("global", "per_window")
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------- input handling
def _as_groups(pred, target, mask, reduction):
    """Validate and view the inputs as x, y: [G, L, K] and mask: [G, L] bool | None."""
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"ccc: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"ccc: {name} must be a floating-point tensor, got {t.dtype}")
    if pred.shape != target.shape:
        raise ValueError(
            f"ccc: pred and target must have the same shape [..., K], got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}")
    if pred.dim() < 2:
        raise ValueError(
            f"ccc: pred must be [N, K] or [..., T, K] (at least 2 dims), got shape "
            f"{tuple(pred.shape)}")
    if pred.shape[-1] == 0:
        raise ValueError(f"ccc: pred must have at least one target (last dim K >= 1), got shape "
                         f"{tuple(pred.shape)}")
    if pred.device != target.device:
        raise ValueError(f"ccc: pred is on {pred.device} but target on {target.device}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"ccc: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"ccc: mask must be a bool tensor (True = valid frame), got {got}")
        if mask.shape != pred.shape[:-1]:
            raise ValueError(
                f"ccc: mask must have shape pred.shape[:-1] = {tuple(pred.shape[:-1])}, got "
                f"{tuple(mask.shape)}")
        if mask.device != pred.device:
            raise ValueError(f"ccc: mask is on {mask.device} but pred on {pred.device}")
    K = pred.shape[-1]
    if reduction == "global":
        G, L = 1, math.prod(pred.shape[:-1])
    else:
        G, L = math.prod(pred.shape[:-2]), pred.shape[-2]
    x = pred.reshape(G, L, K)
    y = target.reshape(G, L, K)
    m = None if mask is None else mask.reshape(G, L)
    return x, y, m


def _result_dtype(x, y):
    return torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)


# --------------------------------------------------------------------------- reference
def _group_ccc_ref(x, y, m):
    """Per-(group, target) CCC, straight from the definition. x, y: [G, L, K]; m: [G, L] | None.

    Returns (ccc [G, K], nonempty [G]). Values are shifted by the group's first valid sample
    before the moments (CCC does not change; float32 stays accurate far from zero, and constant
    data gives exactly zero spread, so the degenerate rule below is exact).
    """
    dt = _result_dtype(x, y)
    x, y = x.to(dt), y.to(dt)
    G, L, K = x.shape
    if m is None:
        m = torch.ones(G, L, dtype=torch.bool, device=x.device)
    if L == 0:  # no frame at all: every group is empty (kept in the graph for autograd)
        return x.sum(1) * 0 + y.sum(1) * 0, torch.zeros(G, dtype=torch.bool, device=x.device)
    valid = m.unsqueeze(-1)  # [G, L, 1]
    n = m.sum(1, keepdim=True).to(dt)  # [G, 1]
    n1 = n.clamp(min=1)
    first = m.to(torch.uint8).argmax(1).view(G, 1, 1).expand(G, 1, K)  # 0 if none valid
    has = n.view(G, 1, 1) > 0  # an empty group's "pilot" is a masked value: never use it
    px = torch.where(has, x.gather(1, first), 0.0)  # [G, 1, K]
    py = torch.where(has, y.gather(1, first), 0.0)
    dx = torch.where(valid, x - px, 0.0)
    dy = torch.where(valid, y - py, 0.0)
    mdx, mdy = dx.sum(1) / n1, dy.sum(1) / n1  # [G, K]: mean - pilot
    ex = torch.where(valid, dx - mdx.unsqueeze(1), 0.0)
    ey = torch.where(valid, dy - mdy.unsqueeze(1), 0.0)
    var_x, var_y = (ex * ex).sum(1) / n1, (ey * ey).sum(1) / n1
    cov = (ex * ey).sum(1) / n1
    mean_diff = (px - py).squeeze(1) + (mdx - mdy)
    den = var_x + var_y + mean_diff * mean_diff
    ok = (n > 0) & (den > 0)
    ccc = torch.where(ok, 2.0 * cov / torch.where(ok, den, 1.0), 0.0)  # inner where: no NaN grad
    return ccc, (n.squeeze(1) > 0)


def _reduce_ref(ccc_gk, nonempty):
    """Mean over non-empty groups: [G, K], [G] -> [K] (0 where no group is non-empty)."""
    w = nonempty.to(ccc_gk.dtype).unsqueeze(1)
    return (ccc_gk * w).sum(0) / w.sum().clamp(min=1)


def ccc_ref(pred, target, mask=None, reduction="global"):
    """Per-target CCC, pure PyTorch (autograd). pred, target: [..., K]; mask: [...] -> [K]."""
    x, y, m = _as_groups(pred, target, mask, reduction)
    return _reduce_ref(*_group_ccc_ref(x, y, m))


def ccc_loss_ref(pred, target, mask=None, reduction="global"):
    """1 - mean over targets of CCC, pure PyTorch (autograd). -> scalar."""
    return 1.0 - ccc_ref(pred, target, mask, reduction).mean()


# --------------------------------------------------------------------------- fused path
def _kernels():
    return load_kernels("affaccel.kernels.ccc", "affaccel CCC kernels")


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# Most values one program loads (BLOCK_L * BLOCK_K); tests lower it to exercise chunk merging.
_MAX_TILE = 4096


def _blocks(L: int, K: int, compiled: bool = False):
    """Tile sizes. Interpreter: BLOCK_K covers up to 16 targets and BLOCK_L shrinks to the input
    (numpy cost per element). Compiled: one fixed tile whatever L and K are (more targets take
    more K-blocks), so that new shapes never compile a new variant; the loss is launch-bound
    at training sizes (32 x 300 x 2), and masked lanes issue no memory traffic."""
    if compiled:
        return _MAX_TILE // 16, 16
    block_k = min(_next_pow2(K), 16)
    block_l = max(16, min(_next_pow2(L), _MAX_TILE // block_k))
    return block_l, block_k


def _num_warps(tile: int) -> int:
    # ~6 live fp32 values per tile element: 8 warps keep a 4096-element tile in registers
    return 8 if tile > 1024 else 4


def workspace_layout(G: int, n_chunks: int, K: int) -> dict:
    """Offsets (in fp32 elements) of the parts of the fused CCC workspace, and its size."""
    from affaccel.kernels.ccc import N_PARTIALS, N_STATS

    off_stats = N_PARTIALS * G * n_chunks * K
    off_invw = off_stats + N_STATS * G * K
    return dict(off_stats=off_stats, off_invw=off_invw, size=off_invw + K)


def _grid(G: int, L: int, K: int, compiled: bool = False):
    block_l, block_k = _blocks(L, K, compiled)
    return block_l, block_k, max(1, -(-L // block_l)), -(-K // block_k)


def ccc_forward_fused(x, y, m, *, workspace=None, out=None, loss=None):
    """Fused forward on x, y: [G, L, K] (any strides, fp32/fp16/bf16), m: [G, L] bool | None.

    Returns (out [K], loss [], workspace), all float32: the per-target CCC (mean over non-empty
    groups), 1 - mean_k, and the workspace kept for the backward (layout:
    :func:`workspace_layout`). Provided buffers are written into (tests prefill them with NaN:
    every element must be written). out and loss are tensors of their own, not views, so that
    callers may modify them in place.
    """
    kern = _kernels()
    G, L, K = x.shape
    compiled = not kern.INTERPRETED
    block_l, block_k, n_chunks, n_kblocks = _grid(G, L, K, compiled)
    lay = workspace_layout(G, n_chunks, K)
    f32 = dict(device=x.device, dtype=torch.float32)
    workspace = torch.empty(lay["size"], **f32) if workspace is None else workspace
    out = torch.empty(K, **f32) if out is None else out
    loss = torch.empty((), **f32) if loss is None else loss
    mp, smg, sml = _mask_arg(x, m)
    kern.ccc_partials_kernel[(G, n_chunks, n_kblocks)](
        x, y, mp, workspace, G, L, K, n_chunks,
        *x.stride(), *y.stride(), smg, sml,
        HAS_MASK=m is not None, BLOCK_L=block_l, BLOCK_K=block_k,
        num_warps=_num_warps(block_l * block_k))
    block_g = max(1, 1024 // block_k)
    if not compiled:
        block_g = min(_next_pow2(G), block_g)
    kern.ccc_finalize_kernel[(1,)](
        workspace, out, loss, lay["off_stats"], lay["off_invw"], G, K, n_chunks,
        BLOCK_G=block_g, BLOCK_K=block_k)
    return out, loss, workspace


def _mask_arg(x, m):
    """(pointer tensor, stride_g, stride_l) of the mask as uint8; x stands in when m is None."""
    if m is None:
        return x, 0, 0
    mu8 = m.view(torch.uint8)
    return mu8, mu8.stride(0), mu8.stride(1)


def ccc_backward_fused(x, y, m, workspace, grad_out, scale, need_gx=True, need_gy=False,
                       *, gx=None, gy=None):
    """Fused backward: gradients of ``scale * sum_k grad_out[k] * CCC_k`` w.r.t. x and y.

    workspace: from :func:`ccc_forward_fused`; grad_out: [] (broadcast over K) or [K].
    Returns (gx | None, gy | None), contiguous [G, L, K] in the dtypes of x and y; provided
    buffers are written into (every element, 0 on masked frames).
    """
    kern = _kernels()
    G, L, K = x.shape
    block_l, block_k, n_chunks, n_kblocks = _grid(G, L, K, not kern.INTERPRETED)
    lay = workspace_layout(G, n_chunks, K)
    if need_gx and gx is None:
        gx = torch.empty(G, L, K, device=x.device, dtype=x.dtype)
    if need_gy and gy is None:
        gy = torch.empty(G, L, K, device=y.device, dtype=y.dtype)
    s_gout = 0 if grad_out.dim() == 0 else grad_out.stride(0)
    mp, smg, sml = _mask_arg(x, m)
    kern.ccc_backward_kernel[(G, n_chunks, n_kblocks)](
        x, y, mp, workspace, lay["off_stats"], lay["off_invw"], grad_out,
        gx if need_gx else x, gy if need_gy else y,
        G, L, K, float(scale),
        *x.stride(), *y.stride(), smg, sml, s_gout,
        HAS_MASK=m is not None, NEED_GX=need_gx, NEED_GY=need_gy,
        BLOCK_L=block_l, BLOCK_K=block_k, num_warps=_num_warps(block_l * block_k))
    return (gx if need_gx else None), (gy if need_gy else None)


class _FusedCCC(torch.autograd.Function):
    """x, y: [G, L, K]; m: [G, L] | None; as_loss: return 1 - mean_k CCC ([]) instead of [K]."""

    @staticmethod
    def forward(ctx, x, y, m, as_loss: bool):
        out, loss, workspace = ccc_forward_fused(x, y, m)
        ctx.save_for_backward(x, y, m, workspace)
        ctx.scale = -1.0 / x.shape[-1] if as_loss else 1.0
        return loss if as_loss else out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, y, m, workspace = ctx.saved_tensors
        need_gx, need_gy = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_gx or need_gy):
            return None, None, None, None
        gx, gy = ccc_backward_fused(x, y, m, workspace, grad_out, ctx.scale, need_gx, need_gy)
        return gx, gy, None, None


def _fused_ok(x, y, m) -> bool:
    return (x.dtype in _KERNEL_DTYPES and y.dtype in _KERNEL_DTYPES and x.numel() > 0
            and use_triton(x, y, m))


# --------------------------------------------------------------------------- public API
def ccc(pred, target, mask=None, reduction="global"):
    """Per-target Concordance Correlation Coefficient (differentiable).

    pred, target: [..., K] (for "per_window": [..., T, K]); mask: [...] bool, True = valid.
    Returns [K] float32 (float64 for float64 inputs). See the module docstring for reductions
    and degenerate cases.
    """
    x, y, m = _as_groups(pred, target, mask, reduction)
    if _fused_ok(x, y, m):
        return _FusedCCC.apply(x, y, m, False)
    return _reduce_ref(*_group_ccc_ref(x, y, m))


def ccc_loss(pred, target, mask=None, reduction="global"):
    """CCC loss ``1 - mean_k CCC_k`` (scalar, differentiable); arguments as :func:`ccc`."""
    x, y, m = _as_groups(pred, target, mask, reduction)
    if _fused_ok(x, y, m):
        return _FusedCCC.apply(x, y, m, True)
    return 1.0 - _reduce_ref(*_group_ccc_ref(x, y, m)).mean()
