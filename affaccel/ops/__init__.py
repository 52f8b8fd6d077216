"""Autograd-aware ops with a fused Triton path and a pure PyTorch reference beside each.

CUDA tensors take the Triton kernels, CPU tensors the reference; AFFACCEL_TRITON_INTERPRET=1
runs the kernels on CPU through Triton's interpreter (Triton's own TRITON_INTERPRET=1 must be
set too, before Triton is imported: affaccel does not set it); AFFACCEL_FORCE_REFERENCE=1 forces
the reference everywhere. Submodules are imported on first use (Triton is never imported by
``import affaccel``).
"""
from affaccel._lazy import lazy_module

_LAZY = {
    "causal_conv1d": "affaccel.ops.causal_conv",
    "causal_conv1d_ref": "affaccel.ops.causal_conv",
    "ccc_loss": "affaccel.ops.concordance",
    "ccc_loss_ref": "affaccel.ops.concordance",
    "ccc": "affaccel.ops.concordance",
    "ccc_ref": "affaccel.ops.concordance",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_module(__name__, _LAZY)
