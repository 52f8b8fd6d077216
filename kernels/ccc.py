"""Triton kernels of the fused CCC (Concordance Correlation Coefficient) loss.

Imported only by affaccel.ops.concordance, after it decided that the Triton path runs; Triton
decorates the kernels compiled or interpreted by its own TRITON_INTERPRET setting at that moment
(affaccel.ops._dispatch checks that it matches AFFACCEL_TRITON_INTERPRET).

Data layout (see affaccel/ops/concordance.py for the host side): the inputs are viewed as
``x, y: [G, L, K]`` (G groups of L frames, K targets; G = 1 for the "global" reduction, the
number of windows for "per_window") and an optional frame mask ``m: [G, L]`` (uint8, 1 = valid).

Three kernels, no float atomics, so every run gives the same bits:

1. ``ccc_partials_kernel``  grid (G, n_chunks, n_kblocks): each program loads one
   [BLOCK_L, BLOCK_K] tile once and writes its moments (count, pilot, mean offset, centred
   second moments). Stability far from zero: values are shifted by the tile's first valid sample
   (the pilot) and the second moments are centred in registers (two passes over registers, one
   over memory), so nothing of size ``offset**2`` is ever formed.
2. ``ccc_finalize_kernel``  grid (1,): merges the chunks of each group in a fixed order (Chan et
   al. pairwise update), keeping each mean as ``hi + lo`` (hi = a data sample, lo = a small
   offset) so that ``x_i - mean`` stays exact in the backward; computes per-(group, target) CCC,
   the per-target CCC averaged over non-empty groups, and the loss ``1 - mean_k``.
3. ``ccc_backward_kernel``  grid (G, n_chunks, n_kblocks): the analytic gradient
   ``dCCC/dx_i = 2/(N D) [(y_i - my) - CCC (x_i - my)]`` (and the symmetric one for y) scaled by
   grad_output, written for every frame (0 on masked frames).
"""
from __future__ import annotations

import triton
import triton.language as tl

# One fp32 workspace per call holds, in order: partials [N_PARTIALS, G, n_chunks, K], stats
# [N_STATS, G, K], inv_w [K] (one allocation instead of three).
# Rows of the partials [N_PARTIALS, G, n_chunks, K]. Globals read inside kernels must be
# tl.constexpr (compiled Triton rejects plain Python globals; the interpreter does not check).
P_N, P_PX, P_PY, P_MX, P_MY, P_M2X, P_M2Y, P_CXY = (tl.constexpr(i) for i in range(8))
N_PARTIALS = 8
# Rows of the per-(group, target) statistics buffer [N_STATS, G, K] (fp32) kept for backward.
S_HX, S_LX, S_HY, S_LY, S_CCC, S_COEF = (tl.constexpr(i) for i in range(6))
N_STATS = 6

# Compile budget: sizes, offsets and the strides other than the unit ones vary from call to call
# and are not specialised (one compile per dtype and block shape, not per input length); the
# unit strides (contiguous last dims) keep their ==1 specialisation.
PARTIALS_DNS = ["G", "L", "K", "n_chunks", "sxg", "sxl", "syg", "syl", "smg"]
FINALIZE_DNS = ["off_stats", "off_invw", "G", "K", "n_chunks"]
BACKWARD_DNS = ["off_stats", "off_invw", "G", "L", "K", "sxg", "sxl", "syg", "syl", "smg", "s_gout"]


@triton.jit(do_not_specialize=PARTIALS_DNS)
def ccc_partials_kernel(
    x_ptr, y_ptr, m_ptr, part_ptr,  # part_ptr: the workspace, partials first
    G, L, K, n_chunks,
    sxg, sxl, sxk, syg, syl, syk, smg, sml,
    HAS_MASK: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr,
):
    g = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    kb = tl.program_id(2)
    offs_l = c * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    in_l = offs_l < L
    in_k = offs_k < K
    if HAS_MASK:
        valid = tl.load(m_ptr + g * smg + offs_l.to(tl.int64) * sml, mask=in_l, other=0) != 0
        valid = valid & in_l
    else:
        valid = in_l
    tile = valid[:, None] & in_k[None, :]
    rows = offs_l.to(tl.int64)  # 64-bit addressing: strided views of large inputs
    # Masked frames are never loaded: whatever they hold (NaN, -5 sentinels) cannot leak in.
    x = tl.load(x_ptr + g * sxg + rows[:, None] * sxl + offs_k[None, :] * sxk,
                mask=tile, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + g * syg + rows[:, None] * syl + offs_k[None, :] * syk,
                mask=tile, other=0.0).to(tl.float32)

    n = tl.sum(valid.to(tl.float32), axis=0)
    first = tl.min(tl.where(valid, offs_l, L + BLOCK_L), axis=0)
    is_first = (offs_l == first)[:, None] & in_k[None, :]
    px = tl.sum(tl.where(is_first, x, 0.0), axis=0)
    py = tl.sum(tl.where(is_first, y, 0.0), axis=0)
    # Shift by the pilot (exact for values within a factor 2 of it), then centre in registers.
    dx = tl.where(tile, x - px[None, :], 0.0)
    dy = tl.where(tile, y - py[None, :], 0.0)
    inv_n = 1.0 / tl.maximum(n, 1.0)
    mdx = tl.sum(dx, axis=0) * inv_n
    mdy = tl.sum(dy, axis=0) * inv_n
    ex = tl.where(tile, dx - mdx[None, :], 0.0)
    ey = tl.where(tile, dy - mdy[None, :], 0.0)
    m2x = tl.sum(ex * ex, axis=0)
    m2y = tl.sum(ey * ey, axis=0)
    cxy = tl.sum(ex * ey, axis=0)

    stride_q = G * n_chunks * K
    base = part_ptr + (g * n_chunks + c) * K + offs_k
    tl.store(base + P_N * stride_q, n + tl.zeros([BLOCK_K], tl.float32), mask=in_k)
    tl.store(base + P_PX * stride_q, px, mask=in_k)
    tl.store(base + P_PY * stride_q, py, mask=in_k)
    tl.store(base + P_MX * stride_q, mdx, mask=in_k)
    tl.store(base + P_MY * stride_q, mdy, mask=in_k)
    tl.store(base + P_M2X * stride_q, m2x, mask=in_k)
    tl.store(base + P_M2Y * stride_q, m2y, mask=in_k)
    tl.store(base + P_CXY * stride_q, cxy, mask=in_k)


@triton.jit(do_not_specialize=FINALIZE_DNS)
def ccc_finalize_kernel(
    ws_ptr, out_ptr, loss_ptr, off_stats, off_invw,
    G, K, n_chunks,
    BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One program: merge chunks per group, CCC per (group, target), means, loss.

    ws: the fp32 workspace (layout in affaccel.ops.concordance.workspace_layout): partials at 0, then
    stats [N_STATS, G, K] and inv_w [K] at the given offsets. out: [K], loss: [] (fp32).
    """
    part_ptr = ws_ptr
    stats_ptr = ws_ptr + off_stats
    invw_ptr = ws_ptr + off_invw
    stride_q = G * n_chunks * K
    total = tl.sum(tl.zeros([BLOCK_K], tl.float32), axis=0)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        in_k = offs_k < K
        ccc_sum = tl.zeros([BLOCK_K], tl.float32)
        n_groups = tl.zeros([BLOCK_K], tl.float32)
        for g0 in range(0, G, BLOCK_G):
            offs_g = g0 + tl.arange(0, BLOCK_G)
            tile = (offs_g < G)[:, None] & in_k[None, :]
            zero = tl.zeros([BLOCK_G, BLOCK_K], tl.float32)
            n = zero
            hx = zero
            hy = zero
            lx = zero
            ly = zero
            m2x = zero
            m2y = zero
            cxy = zero
            for c in range(0, n_chunks):
                idx = (offs_g.to(tl.int64)[:, None] * n_chunks + c) * K + offs_k[None, :]
                nb = tl.load(part_ptr + idx + P_N * stride_q, mask=tile, other=0.0)
                pxb = tl.load(part_ptr + idx + P_PX * stride_q, mask=tile, other=0.0)
                pyb = tl.load(part_ptr + idx + P_PY * stride_q, mask=tile, other=0.0)
                mxb = tl.load(part_ptr + idx + P_MX * stride_q, mask=tile, other=0.0)
                myb = tl.load(part_ptr + idx + P_MY * stride_q, mask=tile, other=0.0)
                m2xb = tl.load(part_ptr + idx + P_M2X * stride_q, mask=tile, other=0.0)
                m2yb = tl.load(part_ptr + idx + P_M2Y * stride_q, mask=tile, other=0.0)
                cxyb = tl.load(part_ptr + idx + P_CXY * stride_q, mask=tile, other=0.0)
                # The first non-empty chunk's pilot becomes the group's "hi" part of the mean.
                take = (n == 0.0) & (nb > 0.0)
                hx = tl.where(take, pxb, hx)
                hy = tl.where(take, pyb, hy)
                # Chunk mean relative to hi (pilots are data samples: the difference is exact
                # when they lie within a factor 2 of each other, i.e. far from zero).
                mxb = tl.where(nb > 0.0, (pxb - hx) + mxb, 0.0)
                myb = tl.where(nb > 0.0, (pyb - hy) + myb, 0.0)
                n_ab = n + nb
                frac = nb / tl.maximum(n_ab, 1.0)
                ddx = mxb - lx
                ddy = myb - ly
                lx = lx + ddx * frac
                ly = ly + ddy * frac
                w = n * frac
                m2x = m2x + m2xb + ddx * ddx * w
                m2y = m2y + m2yb + ddy * ddy * w
                cxy = cxy + cxyb + ddx * ddy * w
                n = n_ab
            inv_n = 1.0 / tl.maximum(n, 1.0)
            mdiff = (hx - hy) + (lx - ly)
            den = (m2x + m2y) * inv_n + mdiff * mdiff
            ok = (n > 0.0) & (den > 0.0)
            safe_den = tl.where(ok, den, 1.0)
            ccc = tl.where(ok, 2.0 * cxy * inv_n / safe_den, 0.0)
            coef = tl.where(ok, 2.0 * inv_n / safe_den, 0.0)
            sidx = offs_g.to(tl.int64)[:, None] * K + offs_k[None, :]
            stride_s = G * K
            tl.store(stats_ptr + sidx + S_HX * stride_s, hx, mask=tile)
            tl.store(stats_ptr + sidx + S_LX * stride_s, lx, mask=tile)
            tl.store(stats_ptr + sidx + S_HY * stride_s, hy, mask=tile)
            tl.store(stats_ptr + sidx + S_LY * stride_s, ly, mask=tile)
            tl.store(stats_ptr + sidx + S_CCC * stride_s, ccc, mask=tile)
            tl.store(stats_ptr + sidx + S_COEF * stride_s, coef, mask=tile)
            nonempty = tile & (n > 0.0)
            ccc_sum += tl.sum(tl.where(nonempty, ccc, 0.0), axis=0)
            n_groups += tl.sum(tl.where(nonempty, 1.0, 0.0), axis=0)
        inv_w = 1.0 / tl.maximum(n_groups, 1.0)
        mean_ccc = ccc_sum * inv_w
        tl.store(out_ptr + offs_k, mean_ccc, mask=in_k)
        tl.store(invw_ptr + offs_k, inv_w, mask=in_k)
        total += tl.sum(tl.where(in_k, mean_ccc, 0.0), axis=0)
    tl.store(loss_ptr, 1.0 - total / K)


@triton.jit(do_not_specialize=BACKWARD_DNS)
def ccc_backward_kernel(
    x_ptr, y_ptr, m_ptr, ws_ptr, off_stats, off_invw, gout_ptr, gx_ptr, gy_ptr,
    G, L, K, scale,
    sxg, sxl, sxk, syg, syl, syk, smg, sml, s_gout,
    HAS_MASK: tl.constexpr, NEED_GX: tl.constexpr, NEED_GY: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gx, gy: contiguous [G, L, K] in the inputs' dtypes; every element is written."""
    stats_ptr = ws_ptr + off_stats
    invw_ptr = ws_ptr + off_invw
    g = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    kb = tl.program_id(2)
    offs_l = c * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    in_l = offs_l < L
    in_k = offs_k < K
    if HAS_MASK:
        valid = tl.load(m_ptr + g * smg + offs_l.to(tl.int64) * sml, mask=in_l, other=0) != 0
        valid = valid & in_l
    else:
        valid = in_l
    tile = valid[:, None] & in_k[None, :]
    bounds = in_l[:, None] & in_k[None, :]
    rows = offs_l.to(tl.int64)
    x = tl.load(x_ptr + g * sxg + rows[:, None] * sxl + offs_k[None, :] * sxk,
                mask=tile, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + g * syg + rows[:, None] * syl + offs_k[None, :] * syk,
                mask=tile, other=0.0).to(tl.float32)

    stride_s = G * K
    sidx = g * K + offs_k
    hx = tl.load(stats_ptr + sidx + S_HX * stride_s, mask=in_k, other=0.0)
    lx = tl.load(stats_ptr + sidx + S_LX * stride_s, mask=in_k, other=0.0)
    hy = tl.load(stats_ptr + sidx + S_HY * stride_s, mask=in_k, other=0.0)
    ly = tl.load(stats_ptr + sidx + S_LY * stride_s, mask=in_k, other=0.0)
    ccc = tl.load(stats_ptr + sidx + S_CCC * stride_s, mask=in_k, other=0.0)
    coef = tl.load(stats_ptr + sidx + S_COEF * stride_s, mask=in_k, other=0.0)
    inv_w = tl.load(invw_ptr + offs_k, mask=in_k, other=0.0)
    gout = tl.load(gout_ptr + offs_k * s_gout, mask=in_k, other=0.0).to(tl.float32)
    a = (coef * inv_w * gout * scale)[None, :]
    out_idx = (g * L + rows[:, None]) * K + offs_k[None, :]
    if NEED_GX:
        # (x_i - my) and (y_i - my) with my = hy + ly: x_i - hy is exact near hy.
        gx = a * (((y - hy[None, :]) - ly[None, :])
                  - ccc[None, :] * ((x - hy[None, :]) - ly[None, :]))
        gx = tl.where(tile, gx, 0.0)
        tl.store(gx_ptr + out_idx, gx.to(gx_ptr.dtype.element_ty), mask=bounds)
    if NEED_GY:
        gy = a * (((x - hx[None, :]) - lx[None, :])
                  - ccc[None, :] * ((y - hx[None, :]) - lx[None, :]))
        gy = tl.where(tile, gy, 0.0)
        tl.store(gy_ptr + out_idx, gy.to(gy_ptr.dtype.element_ty), mask=bounds)


# Whether these kernels were decorated under Triton's interpreter; the host code re-imports the
# module when the interpreter setting changed (tests switch it on for CPU tensors).
INTERPRETED = type(ccc_partials_kernel).__name__ == "InterpretedFunction"
