"""Neural network modules: TCN (fused causal convolutions), temporal model, CLIP encoder."""
from affaccel._lazy import lazy_module

_LAZY = {
    "TCN": "affaccel.nn.tcn",
    "TemporalBlock": "affaccel.nn.tcn",
    "TemporalModel": "affaccel.nn.temporal",
    "ClipEncoder": "affaccel.nn.clip",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_module(__name__, _LAZY)
