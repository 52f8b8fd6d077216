"""Opt-in int8 CPU encoder: dynamic quantization of the image tower's Linear layers.

``quantize_encoder(encoder)`` returns a copy of a ``ClipEncoder`` whose ``nn.Linear`` layers are
``torch.ao`` dynamic int8 layers: weights int8 per tensor, activations quantized per batch at
run time, int32 accumulation, fp32 out. Never the default: ``predict --int8``, ``extract --int8``
and ``bench/throughput.py --int8`` ask for it; features and predictions differ slightly from
fp32 (tolerance: tests/nn/test_int8.py; measured effect: docs/benchmarks.md).

What is quantized: every ``nn.Linear`` the tower calls as a module (a ViT's MLPs, projections),
and the q/k/v/output projections of open_clip's ``AttentionPool2d`` (a ResNet's head), whose
forward passes their weights to ``F.multi_head_attention_forward`` and is therefore replaced by
``ModuleCallAttentionPool2d``, the same computation calling them as modules (parity in
tests/nn/test_int8.py). Not quantized: ``nn.MultiheadAttention``'s projections (the
in-projection is a bare parameter, ``out_proj`` a NonDynamicallyQuantizableLinear), and
convolutions: dynamic int8 ``Conv2d`` (BatchNorm folded first) ran at 0.5x fp32 on
``affaccel-rn-tiny`` on 2 EPYC cores, so it does not pay. For a ResNet tower the int8 encoder
is therefore about the fp32 one; the gain is on ViTs (ViT-B/16: 1.38x in issue 17).

The cache identity of an int8 encoder is its fp32 identity plus the scheme, so int8 features
never share a feature-cache entry with fp32 ones. CPU only (torch's dynamic quantized kernels
are CPU kernels).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from affaccel.nn.clip import ClipEncoder

SCHEME = "int8-dynamic-linear/1"
# parents that read their Linear children's weights directly instead of calling them
_DIRECT_WEIGHT_PARENTS = ("AttentionPool2d", "MultiheadAttention")


class ModuleCallAttentionPool2d(nn.Module):
    """open_clip's ``AttentionPool2d`` (same parameters, same output) calling its projections
    as modules, so dynamic quantization can replace them. Only the pooled (first) token's query
    is computed: the output is that token's row. x: [N, C, H, W] -> [N, output_dim]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        x = x.reshape(n, c, -1).permute(2, 0, 1)                       # (HW) N C
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[:, None, :].to(x.dtype)     # L N C
        h = self.num_heads
        d = c // h

        def heads(t):                                                  # L N C -> (N h) L d
            return t.reshape(t.shape[0], n * h, d).transpose(0, 1)

        o = F.scaled_dot_product_attention(heads(self.q_proj(x[:1])), heads(self.k_proj(x)),
                                           heads(self.v_proj(x)))     # (N h) 1 d
        return self.c_proj(o.transpose(0, 1).reshape(n, c))


@functools.lru_cache(maxsize=None)
def _module_call_class(base: type) -> type:
    return type("ModuleCallAttentionPool2d", (ModuleCallAttentionPool2d, base), {})


def module_call_pools(module: nn.Module) -> int:
    """Turn every open_clip ``AttentionPool2d`` in ``module`` into a ModuleCallAttentionPool2d
    (in place; parameters kept). Returns how many."""
    k = 0
    for m in module.modules():
        if type(m).__name__ == "AttentionPool2d" and hasattr(m, "q_proj"):
            m.__class__ = _module_call_class(type(m))
            k += 1
    return k


def quantizable_linears(module: nn.Module) -> set[str]:
    """Names of the ``nn.Linear`` layers (exact type) that dynamic quantization may replace."""
    skip = {name for name, m in module.named_modules()
            if type(m).__name__ in _DIRECT_WEIGHT_PARENTS}
    return {name for name, m in module.named_modules()
            if type(m) is nn.Linear and not any(name.startswith(p + ".") for p in skip)}


class Int8ClipEncoder(ClipEncoder):
    """A ClipEncoder whose tower holds dynamic int8 Linear layers (CPU inference only)."""

    int8 = True
    cpu_channels_last = True

    def identity(self) -> str:
        return self._int8_identity

    def to(self, *args, **kwargs):
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None and device.type != "cpu":
            raise ValueError(f"the int8 encoder runs on the CPU only (torch's dynamic int8 "
                             f"kernels), not on {device}; drop --int8 to use the GPU")
        return super().to(*args, **kwargs)


def quantize_encoder(encoder: ClipEncoder) -> Int8ClipEncoder:
    """A copy of ``encoder`` (left as it is) with its quantizable Linear layers in dynamic int8,
    in eval mode on the CPU. Raises ValueError when the tower has none."""
    base_identity = encoder.identity()
    enc = copy.deepcopy(encoder).to("cpu").eval()
    module_call_pools(enc.visual)
    names = {f"visual.{n}" if n else "visual" for n in quantizable_linears(enc.visual)}
    if not names:
        raise ValueError(f"--int8: the {encoder.config.model_name} image tower has no Linear "
                         "layer that dynamic int8 quantization can replace")
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which is not a dependency;
        # its eager dynamic quantization is still shipped and tested here
        warnings.simplefilter("ignore")
        enc = torch.ao.quantization.quantize_dynamic(enc, names, dtype=torch.qint8)
    enc.__class__ = Int8ClipEncoder
    enc._int8_identity = hashlib.sha256(f"{base_identity}|{SCHEME}".encode()).hexdigest()[:24]
    enc.quantized_layers = len(names)
    return enc


def add_int8(encoder: ClipEncoder | None, int8: bool):
    """``encoder`` quantized when ``int8`` (the command lines' --int8), else unchanged."""
    if not int8 or encoder is None:
        return encoder
    return quantize_encoder(encoder)


__all__ = ["SCHEME", "Int8ClipEncoder", "quantizable_linears", "quantize_encoder", "add_int8"]
