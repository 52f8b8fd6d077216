"""What the GPU (`gpu`-marked) kernel tests launch, in one place: the cases, the precision modes,
and the fused calls they make. The CUDA tests run these on the GPU against the references;
:func:`count_variants` replays the same calls on CPU tensors with the kernels replaced by
recorders that apply Triton's own specialisation rules (affaccel.kernels.offline), so a CPU test
bounds how many kernel variants a GPU test run compiles.

Shapes are chosen so that each one tests something (boundary lengths, ragged channels, reach
beyond T, masks) while sharing variants: integers that vary are not specialised, so a new
length costs no compile; a new alignment class (C % 16 != 0), dtype, precision or block bucket
does.
"""
from __future__ import annotations

import torch

# (B, T, C_in, C_out, k, dilation, activation, residual)
CONV_CASES = [(4, 300, 64, 96, 3, 1, "relu", True), (2, 257, 48, 48, 3, 16, "gelu", False),
              (3, 131, 33, 70, 2, 4, "leaky_relu", True), (2, 1, 16, 16, 3, 2, "relu", False)]
# fp32 with TF32 off (exact parity), fp32 with TF32 on (PyTorch's default for convolutions:
# cudnn.allow_tf32), bf16
MODES = ["float32", "tf32", "bfloat16"]


def aligned(case) -> bool:
    """Channel counts divisible by 16: the layout class Triton specialises strides on."""
    return case[2] % 16 == 0 and case[3] % 16 == 0


# every case in fp32 and bf16; TF32 (a different dot, same loads) on the aligned cases: the
# ragged layout class would compile two more variants to test the same loads again
CONV_PARAMS = [(mode, case) for mode in MODES for case in CONV_CASES if mode != "tf32" or aligned(case)]
TCN_KW = dict(in_channels=64, channels=[32, 32], kernel_size=3)
TCN_BT = (8, 300)
# (shape, mask kind, reduction) of the CCC tests; dtypes float32 and bfloat16
CCC_CASES = [
    ((32, 300, 2), "random", "global"), ((32, 300, 2), "empty_window", "per_window"),
    ((5, 4099, 3), "random", "global"), ((3, 11, 17), "single", "per_window"),
    ((2, 5, 2), "none_valid", "global"),
]
CCC_DTYPES = ["float32", "bfloat16"]
# The bound the CPU test holds the GPU test run's compiles to (pinned configs). The count it
# measured when this was set: see tests/ops/test_compile_budget.py.
MAX_VARIANTS = 19


def mode_dtype(mode: str) -> torch.dtype:
    return torch.float32 if mode == "tf32" else getattr(torch, mode)


def conv_inputs(B, T, C_in, C_out, k, residual, dtype=torch.float32, device="cpu", bias=True, seed=0):
    """x, w, b, r, gy (the leaves require grad); gy is a grad_output != 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C_in, generator=g)
    w = torch.randn(C_out, C_in, k, generator=g) / (C_in * k) ** 0.5
    b = torch.randn(C_out, generator=g) if bias else None
    r = torch.randn(B, T, C_out, generator=g) if residual else None
    gy = torch.randn(B, T, C_out, generator=g)
    out = [t.to(device=device, dtype=dtype) if t is not None else None for t in (x, w, b, r, gy)]
    for t in out[:4]:
        if t is not None:
            t.requires_grad_(True)
    return out


def run_conv(fn, x, w, b, r, gy, d, act):
    """(y, grads of the leaves) of fn(x, w, b, d, act, r) for upstream gradient gy."""
    y = fn(x, w, b, d, act, r)
    leaves = [t for t in (x, w, b, r) if t is not None]
    return y, torch.autograd.grad(y, leaves, gy)


def fused_conv(x, w, b, d, act, r):
    from affaccel.ops import causal_conv as cc

    return cc.causal_conv1d(x, w, b, d, act, r, fused=True)


def tcn_pair(seed=0):
    from affaccel.nn.tcn import TCN

    torch.manual_seed(seed)
    fused = TCN(**TCN_KW, fused=True)
    torch.manual_seed(seed)
    ref = TCN(**TCN_KW, fused=False)
    return fused, ref


# ---- replay on CPU with recording kernels --------------------------------------------------

class _Launch:
    def __init__(self, rec, kernel, configs):
        self.rec, self.kernel, self.configs = rec, kernel, configs

    def __getitem__(self, grid):
        return self._record

    def _record(self, *args, **kwargs):
        from affaccel.kernels import offline

        for cfg in self.configs or [None]:
            kw = dict(kwargs)
            if cfg is not None:
                kw.update(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            self.rec.variants.add(offline.variant_key(self.kernel, args, kw))


class Recorder:
    """Stands in for a compiled kernel module: launches record their variant, compute nothing."""

    INTERPRETED = False

    def __init__(self, real, variants: set):
        self.real, self.variants = real, variants

    def __getattr__(self, name):
        from triton.runtime.jit import JITFunction

        attr = getattr(self.real, name)
        return _Launch(self, attr, None) if isinstance(attr, JITFunction) else attr

    def autotuned(self, name, cls, pinned):
        kernel = self.real.conv_kernel if name == "conv" else self.real.grad_weight_kernel
        configs = (self.real.conv_configs if name == "conv" else self.real.grad_w_configs)(cls, pinned)
        return _Launch(self, kernel, configs)


def replay_gpu_tests() -> None:
    """The fused calls of the CUDA tests (tests/ops, tests/nn), on CPU tensors."""
    import affaccel.ops.concordance as C

    for mode, (B, T, C_in, C_out, k, d, act, res) in CONV_PARAMS:
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        run_conv(fused_conv, *conv_inputs(B, T, C_in, C_out, k, res, dtype=mode_dtype(mode)), d, act)
    for mode in MODES:
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        dtype = mode_dtype(mode)
        # test_cuda_grad_weight_deterministic
        if mode == "bfloat16":
            run_conv(fused_conv, *conv_inputs(8, 300, 128, 128, 3, True, dtype=dtype), 4, "relu")
        fused, _ = tcn_pair()
        fused = fused.to(dtype)
        B, T = TCN_BT
        x = torch.randn(B, T, TCN_KW["in_channels"], dtype=dtype)
        with torch.no_grad():
            fused.eval()(x)
        torch.nn.functional.mse_loss(fused.train()(x).float(), torch.zeros(B, T, TCN_KW["channels"][-1])).backward()
    for dtype in CCC_DTYPES:
        for shape, _, reduction in CCC_CASES:
            x = torch.randn(shape, dtype=getattr(torch, dtype), requires_grad=True)
            y = torch.randn(shape, dtype=getattr(torch, dtype), requires_grad=True)
            m = torch.rand(shape[:-1]) > 0.3
            C.ccc_loss(x, y, m, reduction).backward()
            C.ccc(x.detach(), y.detach(), m, reduction)


def count_variants(pinned: bool = True) -> dict:
    """Distinct kernel variants (specialisation x config) the CUDA tests would compile."""
    import os

    import affaccel.ops.concordance as C
    from affaccel.kernels import ccc as ccc_kernels
    from affaccel.kernels import tcn_conv
    from affaccel.ops import causal_conv as cc

    assert not tcn_conv.INTERPRETED, "run with TRITON_INTERPRET unset (compiled Triton)"
    variants: set = set()
    os.environ["AFFACCEL_TRITON_INTERPRET"] = "1"  # CPU tensors take the fused path (recorded)
    os.environ["AFFACCEL_AUTOTUNE"] = "pinned" if pinned else "full"
    cc._kernels = lambda: Recorder(tcn_conv, variants)
    C._kernels = lambda: Recorder(ccc_kernels, variants)
    # as on CUDA: fp32 follows cudnn.allow_tf32 (the real rule also asks t.is_cuda)
    cc._precision = lambda t: "tf32" if t.dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"
    replay_gpu_tests()
    per_kernel: dict = {}
    for name, _, _ in variants:
        per_kernel[name] = per_kernel.get(name, 0) + 1
    return dict(total=len(variants), per_kernel=per_kernel)


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(count_variants(pinned="--full" not in sys.argv)))
