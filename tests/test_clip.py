"""CLIP encoder wrapper: preprocessing from open_clip, checkpoints bit-exact, clear errors."""
from __future__ import annotations

import pytest
import torch

from affaccel.config import TINY_MODEL, ClipConfig
from affaccel.nn.clip import (
    ExpressionHead,
    FinetuneModel,
    build_encoder,
    checkpoint_dict,
    load_encoder_checkpoint,
    load_finetune_checkpoint,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def tiny():
    return build_encoder(ClipConfig(model_name=TINY_MODEL)).eval()


def _images(enc, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, enc.image_size, enc.image_size, generator=g)


def test_tiny_config_registered_and_preprocess_from_open_clip(tiny):
    import open_clip

    assert TINY_MODEL in open_clip.list_models()
    # Values come from the open_clip model's preprocess config, not from constants of ours.
    assert tiny.image_size == 112
    assert tiny.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    assert tiny.std == tuple(open_clip.OPENAI_DATASET_STD)
    assert tiny.feature_dim == 128
    out = tiny(_images(tiny))
    assert out.shape == (3, 128) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_forward_rejects_wrong_size(tiny):
    with pytest.raises(ValueError, match="112"):
        tiny(torch.zeros(1, 3, 224, 224))


def test_identity_depends_on_weights_and_is_stable(tiny):
    again = build_encoder(ClipConfig(model_name=TINY_MODEL))  # same init seed -> same weights
    assert again.identity() == tiny.identity()
    other = build_encoder(ClipConfig(model_name=TINY_MODEL, init_seed=1))
    assert other.identity() != tiny.identity()
    with torch.no_grad():
        again.visual.proj.add_(1e-3)
    assert again.identity() != tiny.identity()
    assert again.preprocessing_identity() == tiny.preprocessing_identity()


@pytest.mark.parametrize("model_name", [TINY_MODEL, "ViT-B-16"])
def test_checkpoint_round_trip_bit_identical(tmp_path, model_name):
    enc = build_encoder(ClipConfig(model_name=model_name)).eval()
    path = save_checkpoint(tmp_path / "enc.pt", enc)
    loaded = load_encoder_checkpoint(path)
    assert not loaded.training
    assert loaded.identity() == enc.identity()
    assert loaded.image_size == enc.image_size and loaded.mean == enc.mean
    x = _images(enc, n=2)
    with torch.no_grad():
        assert torch.equal(loaded(x), enc(x))
    # The same file through the config path a user's checkpoint takes.
    via_cfg = build_encoder(ClipConfig(model_name=model_name, checkpoint=str(path))).eval()
    with torch.no_grad():
        assert torch.equal(via_cfg(x), enc(x))


def test_finetune_checkpoint_keeps_head(tmp_path, tiny):
    model = FinetuneModel(tiny, ExpressionHead(tiny.feature_dim, 8, hidden=32)).eval()
    cfg_hidden = ClipConfig(model_name=TINY_MODEL, head_hidden=32)
    model.encoder.config = cfg_hidden
    path = save_checkpoint(tmp_path / "ft.pt", model.encoder, model.head, epoch=3)
    loaded, ck = load_finetune_checkpoint(path)
    assert ck["epoch"] == 3 and ck["identity"] == tiny.identity()
    x = _images(tiny, n=2)
    with torch.no_grad():
        logits = loaded(x)
        assert logits.shape == (2, 8)
        assert torch.equal(logits, model(x))
    model.encoder.config = ClipConfig(model_name=TINY_MODEL)


def test_all_parameters_trainable(tiny):
    model = FinetuneModel(build_encoder(ClipConfig(model_name=TINY_MODEL)))
    params = list(model.parameters())
    assert params and all(p.requires_grad for p in params)
    loss = model(_images(tiny, n=2)).logsumexp(1).sum()
    loss.backward()
    assert all(p.grad is not None for p in params)


def test_bad_checkpoint_paths_give_clear_errors(tmp_path, tiny):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_encoder_checkpoint(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_encoder_checkpoint(garbage)
    wrong = tmp_path / "wrong.pt"
    torch.save({"weights": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match="wrong.pt.*not an affaccel CLIP checkpoint"):
        load_encoder_checkpoint(wrong)
    # Right format, wrong architecture in the state dict.
    ck = checkpoint_dict(tiny)
    ck["encoder_state"] = {k: v for k, v in list(ck["encoder_state"].items())[:-1]}
    mismatch = tmp_path / "mismatch.pt"
    torch.save(ck, mismatch)
    with pytest.raises(ValueError, match="mismatch.pt.*encoder_state"):
        load_encoder_checkpoint(mismatch)
    # Truncated file (an interrupted copy).
    good = save_checkpoint(tmp_path / "good.pt", tiny)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="trunc.pt"):
        load_encoder_checkpoint(trunc)
    with pytest.raises(ValueError, match="head_state"):
        load_finetune_checkpoint(good)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_encoder(ClipConfig(model_name=TINY_MODEL, checkpoint=str(missing)))


def test_config_errors():
    with pytest.raises(ValueError, match="unknown open_clip model"):
        build_encoder(ClipConfig(model_name="no-such-model"))
    with pytest.raises(ValueError, match="precision"):
        build_encoder(ClipConfig(model_name=TINY_MODEL, precision="fp8"))
    with pytest.raises(ValueError, match="either pretrained"):
        build_encoder(ClipConfig(model_name=TINY_MODEL, pretrained="openai", checkpoint="x.pt"))


def test_import_affaccel_does_not_import_open_clip():
    import subprocess
    import sys

    code = ("import sys, affaccel, affaccel.stages.features, affaccel.nn; "
            "assert 'open_clip' not in sys.modules and 'torch' not in sys.modules, "
            "[m for m in ('open_clip', 'torch') if m in sys.modules]")
    subprocess.run([sys.executable, "-c", code], check=True)
