"""CLIP fine-tuning: F1 rises on a small set, checkpoints load alone, resume, 2-process DDP."""
from __future__ import annotations

import json
import socket
from dataclasses import replace

import numpy as np
import pytest
import torch

from affaccel.config import CPU_MODEL, TINY_MODEL, ClipConfig, FinetuneConfig
from affaccel.finetune import build_parser, config_from_args
from affaccel.nn.clip import load_encoder_checkpoint, load_finetune_checkpoint
from affaccel.stages.finetune import (
    _batch_plan,
    evaluate,
    expr_frames,
    finetune,
    macro_f1,
)
from affaccel.stages.optim import class_weights

from clip_fixtures import make_dataset

CFG = FinetuneConfig(clip=ClipConfig(model_name=TINY_MODEL), lr=1e-3, batch_size=32, epochs=2,
                     num_threads=1)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ft"), n_train=4, n_val=3, frames=40)


def test_expr_frames_masks_and_strides(records):
    train = [r for r in records if r.split == "train"]
    paths, y = expr_frames(train)
    valid = sum(int((r.label_mask["expr"] & r.frame_present).sum()) for r in train)
    assert len(paths) == len(y) == valid
    assert y.min() >= 0 and y.max() < 8
    missing = str(train[0].frame_paths[5])  # frame 5 is missing: its path is frame 4's file
    assert paths.count(missing) == 1
    p2, y2 = expr_frames(train, stride=3)
    assert len(p2) == sum(len(np.flatnonzero(r.label_mask["expr"] & r.frame_present)[::3])
                          for r in train)
    with pytest.raises(ValueError, match="stride"):
        expr_frames(train, stride=0)


def test_class_weights_and_batch_plan():
    w = class_weights(np.bincount([0, 0, 0, 1], minlength=8))
    # inverse frequency 4/3 and 4, scaled to mean 1 over the present classes; absent ones: 1
    assert w[0] == pytest.approx(0.5) and w[1] == pytest.approx(1.5) and w[5] == 1.0
    assert _batch_plan(FinetuneConfig(), 1) == (256, 1)
    assert _batch_plan(FinetuneConfig(micro_batch_size=64), 2) == (64, 2)
    assert macro_f1(np.arange(8), np.arange(8)) == 1.0


def test_finetune_raises_f1_and_checkpoints_load_alone(tmp_path, records):
    val = [r for r in records if r.split == "val"]
    vp, vy = expr_frames(val, present_only=False)
    assert len(set(vy.tolist())) == 8  # every class present: F1 can reach 1
    majority_f1 = macro_f1(vy, np.full_like(vy, np.bincount(vy).argmax()))
    best = finetune(records, CFG, tmp_path, progress=False)
    hist = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1]
    f1 = max(h["val_macro_f1"] for h in hist)
    assert f1 > 0.5 and f1 > 3 * max(1 / 8, majority_f1)  # chance 1/8, majority class ~0.05
    # best.pt alone rebuilds the fine-tuned model and reproduces the recorded validation score
    model, ck = load_finetune_checkpoint(best)
    assert ck["val_macro_f1"] == pytest.approx(f1)
    assert ck["identity"] == model.encoder.identity()
    again = evaluate(model, vp, vy, CFG, torch.device("cpu"), 64)
    assert again["macro_f1"] == pytest.approx(f1, abs=1e-6)
    enc = load_encoder_checkpoint(best)
    assert enc.identity() == ck["identity"]
    cfg_saved = json.loads((tmp_path / "config.json").read_text())
    assert cfg_saved["finetune"]["lr"] == CFG.lr and cfg_saved["world_size"] == 1


def test_resume_continues_where_it_stopped(tmp_path, records):
    cfg = replace(CFG, epochs=1)
    finetune(records, cfg, tmp_path, progress=False)
    first = torch.load(tmp_path / "last.pt", weights_only=True)
    steps = first["step"]
    assert steps == len(expr_frames([r for r in records if r.split == "train"])[0]) // 32
    finetune(records, replace(cfg, epochs=2), tmp_path, resume=True, progress=False)
    second = torch.load(tmp_path / "last.pt", weights_only=True)
    assert [h["epoch"] for h in second["history"]] == [0, 1]
    assert second["step"] == 2 * steps
    assert second["history"][0] == first["history"][0]
    # the optimizer state came back too (AdamW's step counter continues)
    st = next(iter(second["optimizer_state"]["state"].values()))
    assert int(st["step"]) == 2 * steps
    # nothing left to do: returns without training
    finetune(records, replace(cfg, epochs=2), tmp_path, resume=True, progress=False)
    third = torch.load(tmp_path / "last.pt", weights_only=True)
    assert third["step"] == 2 * steps and len(third["history"]) == 2


def test_max_steps_stops_early(tmp_path, records):
    finetune(records, replace(CFG, max_steps=2), tmp_path, progress=False)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["step"] == 2 and not last["epoch_complete"]
    assert len(last["history"]) == 1


def test_no_training_frames_is_an_error(tmp_path, records):
    val_only = [r for r in records if r.split == "val"]
    with pytest.raises(ValueError, match="no training frames"):
        finetune(val_only, CFG, tmp_path, progress=False)


def test_cli_presets():
    args = build_parser().parse_args(["--epochs", "7", "--max-steps", "3", "--class-weights"])
    cfg = config_from_args(args, cuda=False)
    assert cfg.clip.model_name == CPU_MODEL and cfg.epochs == 7 and cfg.max_steps == 3
    assert cfg.class_weights
    paper = config_from_args(build_parser().parse_args([]), cuda=True)
    assert paper.clip.model_name == "ViT-B-16" and paper.lr == 1e-4 and paper.batch_size == 256
    custom = config_from_args(build_parser().parse_args(["--preset", "paper", "--model",
                                                         TINY_MODEL]), cuda=False)
    assert custom.clip.model_name == TINY_MODEL and custom.batch_size == 256


def test_paper_preset_starts_from_openai_weights_unless_told(caplog, tmp_path):
    parse = build_parser().parse_args
    assert config_from_args(parse(["--preset", "paper"]), cuda=False).clip.pretrained == "openai"
    assert config_from_args(parse([]), cuda=True).clip.pretrained == "openai"
    assert config_from_args(parse(["--preset", "paper", "--pretrained", "laion2b_s34b_b88k"]),
                            cuda=False).clip.pretrained == "laion2b_s34b_b88k"
    ckpt = config_from_args(parse(["--preset", "paper", "--checkpoint", str(tmp_path / "w.pt")]), cuda=False)
    assert ckpt.clip.pretrained is None and ckpt.clip.checkpoint == str(tmp_path / "w.pt")
    with caplog.at_level("WARNING"):
        rnd = config_from_args(parse(["--preset", "paper", "--pretrained", "none"]), cuda=False)
    assert rnd.clip.pretrained is None and "random initialisation" in caplog.text
    # the CPU preset's small model has no hub weights: it stays at random init, without a warning
    caplog.clear()
    with caplog.at_level("WARNING"):
        cpu = config_from_args(parse(["--preset", "cpu"]), cuda=False)
    assert cpu.clip.pretrained is None and "random initialisation" not in caplog.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, records, out, cfg):
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    finetune(records, cfg, out, device="cpu", progress=False)


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path, records):
    import torch.multiprocessing as mp

    cfg = replace(CFG, epochs=1)
    mp.spawn(_ddp_worker, args=(2, _free_port(), records, str(tmp_path), cfg), nprocs=2,
             join=True)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["world_size"] == 2 and saved["micro_batch"] == 16 and saved["accum"] == 1
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    n_train = len(expr_frames([r for r in records if r.split == "train"])[0])
    assert last["step"] == (n_train // 2) // 16  # each step saw 16 frames on each of 2 ranks
    assert np.isfinite(last["history"][0]["train_loss"])
    load_encoder_checkpoint(tmp_path / "best.pt")


def test_lr_schedule_is_a_function_of_the_step():
    from affaccel.stages.finetune import lr_at

    const = FinetuneConfig(lr=0.1)
    assert [lr_at(const, s, 10) for s in (0, 5, 10)] == [0.1, 0.1, 0.1]
    cos = FinetuneConfig(lr=0.1, schedule="cosine")
    assert lr_at(cos, 0, 10) == pytest.approx(0.1)
    assert lr_at(cos, 5, 10) == pytest.approx(0.05)
    assert lr_at(cos, 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(cos, 12, 10) == pytest.approx(0.0, abs=1e-12)   # past the end: stays at 0
    lrs = [lr_at(cos, s, 10) for s in range(11)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    with pytest.raises(ValueError, match="schedule"):
        lr_at(FinetuneConfig(schedule="step"), 0, 10)
