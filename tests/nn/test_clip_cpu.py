"""ClipEncoder's CPU inference layout: channels-last for convolutional towers gives the
features of the contiguous layout (the reference), and is not taken where it must not be."""
from __future__ import annotations

import pytest
import torch

from affaccel.config import CPU_MODEL, TINY_MODEL, ClipConfig
from affaccel.nn.clip import build_encoder

from tolerances import tol


@pytest.mark.parametrize("model", [CPU_MODEL, TINY_MODEL])
def test_channels_last_cpu_matches_contiguous(model):
    enc = build_encoder(ClipConfig(model_name=model, init_seed=0)).eval()
    S = enc.image_size
    x = torch.randn(5, 3, S, S)
    ref_enc = build_encoder(ClipConfig(model_name=model, init_seed=0)).eval()
    ref_enc.cpu_channels_last = False
    with torch.inference_mode():
        got = enc(x)
        want = ref_enc(x)
    torch.testing.assert_close(got, want, **tol("float32"))
    conv_tower = sum(isinstance(m, torch.nn.Conv2d) for m in enc.visual.modules()) > 1
    with torch.no_grad():
        assert enc._cpu_layout(x).is_contiguous(memory_format=torch.channels_last) == conv_tower
    # the weights are untouched: no inference tensors, training still works afterwards
    assert all(p.is_contiguous() and not p.is_inference() for p in enc.parameters())
    # the same weights (identity hashes values, not strides), and autograd keeps the input layout
    assert enc.identity() == ref_enc.identity()
    assert enc._cpu_layout(x) is x
    enc.train()
    enc(x).sum().backward()


def test_channels_last_not_used_with_grad():
    enc = build_encoder(ClipConfig(model_name=CPU_MODEL, init_seed=0)).eval()
    x = torch.randn(2, 3, enc.image_size, enc.image_size)
    assert enc._cpu_layout(x) is x                    # grad enabled: training keeps its layout
    with torch.no_grad():
        assert enc._cpu_layout(x).is_contiguous(memory_format=torch.channels_last)
