"""TemporalModel: shapes per task, padding never leaks into real frames, ablation flags."""
from __future__ import annotations

import pytest
import torch

from affaccel.config import TemporalConfig, from_dict, to_dict
from affaccel.nn.temporal import TemporalModel, sinusoidal_encoding


def small(task="va", **kw) -> TemporalConfig:
    base = dict(task=task, in_dim=24, tcn_channels=[16, 16], transformer_layers=1, transformer_heads=2,
                transformer_ff=32, head_hidden=8, max_len=40)
    return TemporalConfig(**{**base, **kw})


@pytest.mark.parametrize("task,k", [("va", 2), ("expr", 8), ("au", 12)])
def test_shapes_per_task(task, k):
    torch.manual_seed(0)
    model = TemporalModel(small(task))
    x = torch.randn(3, 40, 24)
    y = model(x, torch.ones(3, 40, dtype=torch.bool))
    assert y.shape == (3, 40, k)
    assert torch.isfinite(y).all()
    p = model.to_prediction(y)
    if task == "va":
        assert (y.abs() <= 1).all()  # tanh-bounded
    elif task == "expr":
        torch.testing.assert_close(p.sum(-1), torch.ones(3, 40))
    else:
        assert ((p >= 0) & (p <= 1)).all()


@pytest.mark.parametrize("flags", [dict(), dict(use_tcn=False), dict(use_transformer=False),
                                   dict(positional="learned")])
def test_padding_never_reaches_real_frames(flags):
    """A window padded at its end: whatever the padded features hold, real frames' outputs
    are the same (causal TCN + key-padding mask)."""
    torch.manual_seed(1)
    model = TemporalModel(small(**flags)).eval()
    x = torch.randn(2, 40, 24)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, 25:] = False
    y1 = model(x, mask)
    x2 = x.clone()
    x2[0, 25:] = torch.randn(15, 24) * 100
    y2 = model(x2, mask)
    torch.testing.assert_close(y1[0, :25], y2[0, :25])
    torch.testing.assert_close(y1[1], y2[1])


def test_attention_sees_the_whole_window():
    """Not causal overall: with the Transformer, a late frame changes an early frame's output."""
    torch.manual_seed(2)
    model = TemporalModel(small()).eval()
    x = torch.randn(1, 40, 24)
    x2 = x.clone()
    x2[0, 35] += 5.0
    assert not torch.allclose(model(x)[0, 0], model(x2)[0, 0])
    model = TemporalModel(small(use_transformer=False)).eval()  # causal TCN only
    torch.testing.assert_close(model(x)[0, :35], model(x2)[0, :35])


def test_ablation_flags_change_the_architecture():
    full = TemporalModel(small())
    no_tcn = TemporalModel(small(use_tcn=False))
    no_tr = TemporalModel(small(use_transformer=False))
    assert full.encoder is not None and no_tr.encoder is None
    assert type(full.front).__name__ == "TCN" and type(no_tcn.front).__name__ != "TCN"
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(no_tr) < n(full) and n(no_tcn) != n(full)
    both = TemporalModel(small(use_tcn=False, use_transformer=False))
    assert both(torch.randn(2, 10, 24)).shape == (2, 10, 2)


def test_backward_reaches_every_parameter():
    torch.manual_seed(3)
    model = TemporalModel(small("au")).train()
    model(torch.randn(2, 40, 24)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_config_round_trip_and_validation():
    cfg = small("expr", positional="learned")
    assert from_dict(TemporalConfig, to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="transformer_heads"):
        TemporalModel(small(transformer_heads=3))
    with pytest.raises(ValueError, match="unknown task"):
        TemporalModel(small(task="valence"))
    with pytest.raises(ValueError, match="positional"):
        TemporalModel(small(positional="rotary"))
    model = TemporalModel(small())
    with pytest.raises(ValueError, match=r"features \[B, w, 24\]"):
        model(torch.randn(2, 10, 23))
    with pytest.raises(ValueError, match="mask"):
        model(torch.randn(2, 10, 24), torch.ones(2, 9, dtype=torch.bool))


def test_windows_longer_than_max_len():
    model = TemporalModel(small()).eval()  # sinusoidal: computed for any length
    assert model(torch.randn(1, 64, 24)).shape == (1, 64, 2)
    learned = TemporalModel(small(positional="learned"))
    with pytest.raises(ValueError, match="max_len"):
        learned(torch.randn(1, 64, 24))


def test_sinusoidal_encoding_values():
    pe = sinusoidal_encoding(10, 6)
    torch.testing.assert_close(pe[:, 0], torch.sin(torch.arange(10.0)))
    torch.testing.assert_close(pe[:, 1], torch.cos(torch.arange(10.0)))
    torch.testing.assert_close(pe[3, 2], torch.sin(torch.tensor(3.0) / 10000 ** (2 / 6)))
