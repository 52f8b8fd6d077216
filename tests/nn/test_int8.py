"""The opt-in int8 CPU encoder (affaccel.nn.quantize): what is quantized, its own tolerance
against fp32, its own cache identity, never on by default.

Tolerance (int8 has its own): per-frame feature cosine >= 0.999 against the fp32 encoder on
random-init towers (measured: >= 0.9999 for affaccel-vit-tiny and affaccel-rn-tiny).
"""
from __future__ import annotations

import pytest
import torch

from affaccel.config import CPU_MODEL, TINY_MODEL, ClipConfig
from affaccel.nn.clip import build_encoder
from affaccel.nn.quantize import (
    ModuleCallAttentionPool2d,
    module_call_pools,
    quantizable_linears,
    quantize_encoder,
)

from tolerances import tol

INT8_MIN_COSINE = 0.999


def _enc(model):
    return build_encoder(ClipConfig(model_name=model, init_seed=0)).eval()


def test_module_call_attention_pool_matches_open_clip():
    import copy

    enc = _enc(CPU_MODEL)
    ref = copy.deepcopy(enc)
    assert not quantizable_linears(enc.visual)          # open_clip's pool reads its weights itself
    assert module_call_pools(enc.visual) == 1
    assert isinstance(enc.visual.attnpool, ModuleCallAttentionPool2d)
    assert len(quantizable_linears(enc.visual)) == 4    # q, k, v, c projections
    x = torch.randn(3, 3, enc.image_size, enc.image_size)
    with torch.inference_mode():
        torch.testing.assert_close(enc(x), ref(x), **tol("float32"))


@pytest.mark.parametrize("model", [TINY_MODEL, CPU_MODEL])
def test_int8_features_close_to_fp32(model):
    enc = _enc(model)
    q = quantize_encoder(enc)
    assert q.quantized_layers > 0
    assert any("Quantized" in type(m).__module__ or "quantized" in type(m).__module__
               for m in q.modules())
    assert not any("quantized" in type(m).__module__ for m in enc.modules())   # original untouched
    torch.manual_seed(1)
    x = torch.randn(16, 3, enc.image_size, enc.image_size)
    with torch.inference_mode():
        a, b = enc(x), q(x)
    assert a.shape == b.shape
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert float(cos.min()) >= INT8_MIN_COSINE, float(cos.min())
    assert not torch.equal(a, b)                        # it is a different computation
    # its own cache identity, stable, never the fp32 one
    assert q.identity() != enc.identity() and q.identity() == quantize_encoder(enc).identity()
    assert q.preprocessing_identity() == enc.preprocessing_identity()


def test_int8_is_cpu_only_and_opt_in():
    from affaccel.nn.quantize import add_int8

    enc = _enc(TINY_MODEL)
    assert add_int8(enc, False) is enc
    q = add_int8(enc, True)
    assert q.to("cpu") is q
    with pytest.raises(ValueError, match="CPU only"):
        q.to("cuda")
