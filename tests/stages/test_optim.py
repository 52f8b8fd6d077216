"""The learning-rate schedule and the class-weight rule that stage 1 and stage 3 share."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from affaccel.config import FinetuneConfig, make_config
from affaccel.stages.optim import class_weights, lr_factor


def test_warmup_then_cosine_by_hand():
    total, warm = 20, 4
    # linear warm-up: (step + 1) / warm, reaching 1 on the last warm-up step
    assert [lr_factor(s, total, warm) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, total, warm) == pytest.approx(1.0)          # cosine starts at its top
    assert lr_factor(12, total, warm) == pytest.approx(0.5)         # halfway through the decay
    assert lr_factor(8, total, warm) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_factor(20, total, warm) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(25, total, warm) == pytest.approx(0.0, abs=1e-12)   # stays at 0 past the end
    decay = [lr_factor(s, total, warm) for s in range(4, 21)]
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_no_warmup_and_constant_schedule():
    assert lr_factor(0, 10, 0) == pytest.approx(1.0)
    assert lr_factor(5, 10, 0) == pytest.approx(0.5)
    assert [lr_factor(s, 10, 2, "constant") for s in (0, 1, 2, 9, 50)] == [0.5, 1.0, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, 10, 0, "step")


def test_stage1_schedule_is_the_shared_one():
    from affaccel.stages.finetune import lr_at

    cfg = FinetuneConfig(lr=0.1, schedule="cosine")
    assert [lr_at(cfg, s, 10) for s in range(12)] == pytest.approx(
        [0.1 * lr_factor(s, 10, 0, "cosine") for s in range(12)])
    assert lr_at(FinetuneConfig(lr=0.1), 7, 10) == pytest.approx(0.1)   # default: constant


def test_stage3_learning_rate_follows_warmup_and_cosine(tmp_path):
    """The lr stage 3 records after each epoch is lr * lr_factor(steps so far) with one warm-up
    epoch, as the paper's schedule says."""
    from test_train import toy_videos

    from affaccel.stages.temporal import train
    from affaccel.stages.windows import WindowSet

    tr, va = toy_videos(4, "va", 0), toy_videos(1, "va", 1)
    cfg = make_config("va", "tiny", device="cpu", epochs=4, warmup_epochs=1)
    res = train(cfg, tr, va, tmp_path, progress=False)
    steps = WindowSet(tr, cfg.window.window, cfg.window.stride, "va").n_batches(cfg.batch_size)
    want = [cfg.lr * lr_factor((e + 1) * steps, 4 * steps, steps) for e in range(4)]
    assert steps > 1
    assert [h["lr"] for h in res.history] == pytest.approx(want)
    # after the warm-up epoch the rate is at its top, then it decays to 0 at the last step
    assert res.history[0]["lr"] == pytest.approx(cfg.lr) and res.history[-1]["lr"] == pytest.approx(0.0)


def test_class_weights_single_label_by_hand():
    w = class_weights(np.array([30, 10, 0, 60]))
    inv = np.array([100 / 30, 100 / 10, 100 / 60])
    expect = inv / inv.mean()
    np.testing.assert_allclose(w[[0, 1, 3]], expect, rtol=1e-6)
    assert w[2] == 1.0                     # a class with no training frame is neutral
    assert w.dtype == np.float32 and w[[0, 1, 3]].mean() == pytest.approx(1.0)
    assert w[1] > w[0] > w[3]              # rarer classes weigh more
    np.testing.assert_array_equal(class_weights(np.zeros(4)), np.ones(4, np.float32))
    with pytest.raises(ValueError):
        class_weights(np.array([1, -1]))


def test_class_weights_binary_by_hand():
    counts = np.array([[90, 10], [50, 50], [10, 90], [100, 0], [1000, 1]])  # (negatives, positives)
    np.testing.assert_allclose(class_weights(counts), [9.0, 1.0, 1.0, 10.0, 10.0])
    with pytest.raises(ValueError):
        class_weights(np.zeros((3, 3)))


def test_both_stages_weight_classes_by_the_same_rule():
    from test_train import toy_videos

    from affaccel.stages.finetune import _EXPR_COL, LABEL_COLUMNS, _expr_weight
    from affaccel.stages.temporal import class_weights as stage3_weights
    from affaccel.stages.windows import label_frequencies

    seqs = toy_videos(3, "expr", 0)
    for q in seqs:
        q.labels[q.labels == 2] = 3      # class 2 absent: covers the absent-class rule
    counts = label_frequencies(seqs, "expr")
    assert counts[2] == 0 and (counts[[0, 1, 3]] > 0).all()
    np.testing.assert_array_equal(stage3_weights("expr", seqs).numpy(), class_weights(counts))
    labels = np.full((int(counts.sum()), LABEL_COLUMNS), -1.0, np.float32)
    labels[:, _EXPR_COL] = np.concatenate([q.labels[q.mask] for q in seqs])
    stage1 = _expr_weight(FinetuneConfig(class_weights=True), labels, torch.device("cpu"))
    np.testing.assert_array_equal(stage1.numpy(), class_weights(counts))
    au = toy_videos(2, "au", 0)
    np.testing.assert_array_equal(stage3_weights("au", au).numpy(),
                                  class_weights(label_frequencies(au, "au")))
    assert stage3_weights("va", toy_videos(1, "va", 0)) is None
