"""One-file bundle: round trip of encoder + temporal models, merging tasks, clear errors."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from affaccel.bundle import add_task, load_bundle, read_bundle_dict, save_bundle
from affaccel.config import WindowConfig, make_config


@pytest.fixture(scope="module")
def encoders():
    from affaccel.config import TINY_MODEL, ClipConfig
    from affaccel.nn.clip import build_encoder

    return (build_encoder(ClipConfig(model_name=TINY_MODEL, init_seed=0)).eval(),
            build_encoder(ClipConfig(model_name=TINY_MODEL, init_seed=1)).eval())


def temporal(task, seed=0):
    from affaccel.nn.temporal import TemporalModel

    cfg = make_config(task, "tiny")
    cfg.model.in_dim = 128
    torch.manual_seed(seed)
    return TemporalModel(cfg.model).eval(), cfg


def test_round_trip_gives_identical_outputs(encoders, tmp_path):
    enc = encoders[0]
    va, cfg = temporal("va")
    path = save_bundle(tmp_path / "b.pt", window=WindowConfig(32, 16), encoder=enc,
                       tasks={"va": (va, cfg, {"ccc_mean": 0.5})})
    b = load_bundle(path)
    assert b.tasks == ["va"] and b.window == WindowConfig(32, 16) and b.metrics["va"]["ccc_mean"] == 0.5
    assert b.encoder.identity() == enc.identity()
    img = torch.randn(2, 3, enc.image_size, enc.image_size)
    torch.testing.assert_close(b.encoder(img), enc(img), rtol=0, atol=0)
    x = torch.randn(2, 32, 128)
    torch.testing.assert_close(b.models["va"](x), va(x), rtol=0, atol=0)
    assert b.configs["va"].model == cfg.model
    # plain containers and tensors only: loads with weights_only=True
    torch.load(path, weights_only=True)


def test_config_that_does_not_describe_the_model_is_refused(encoders, tmp_path):
    """A TrainConfig whose model config differs from the model's (the caller's config before
    the run set in_dim from the features) would rebuild a model the weights do not fit."""
    va, cfg = temporal("va")
    stale = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, in_dim=cfg.model.in_dim + 1))
    with pytest.raises(ValueError, match="model config"):
        save_bundle(tmp_path / "b.pt", window=WindowConfig(32, 16), encoder=encoders[0],
                    tasks={"va": (va, stale, {})})
    assert not (tmp_path / "b.pt").exists()


def test_add_task_merges_models_of_the_same_encoder(encoders, tmp_path):
    enc = encoders[0]
    (va, cva), (au, cau) = temporal("va"), temporal("au", 1)
    a = save_bundle(tmp_path / "va.pt", window=WindowConfig(32, 16), encoder=enc, tasks={"va": (va, cva, {})})
    b = save_bundle(tmp_path / "au.pt", window=WindowConfig(32, 16), encoder=enc, tasks={"au": (au, cau, {})})
    add_task(tmp_path / "all.pt", a)
    add_task(tmp_path / "all.pt", b)
    both = load_bundle(tmp_path / "all.pt")
    assert both.tasks == ["au", "va"]
    x = torch.randn(1, 32, 128)
    torch.testing.assert_close(both.models["au"](x), au(x), rtol=0, atol=0)
    other = save_bundle(tmp_path / "other.pt", window=WindowConfig(32, 16), encoder=encoders[1],
                        tasks={"au": (au, cau, {})})
    with pytest.raises(ValueError, match="different encoders"):
        add_task(tmp_path / "all.pt", other)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no bundle"):
        read_bundle_dict(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable affaccel bundle"):
        read_bundle_dict(tmp_path / "junk.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an affaccel bundle"):
        read_bundle_dict(tmp_path / "other.pt")
    va, cfg = temporal("va")
    save_bundle(tmp_path / "noenc.pt", window=WindowConfig(32, 16), tasks={"va": (va, cfg, {})})
    with pytest.raises(ValueError, match="no model for task 'expr'"):
        load_bundle(tmp_path / "noenc.pt", tasks=["expr"])
    assert load_bundle(tmp_path / "noenc.pt").encoder is None
