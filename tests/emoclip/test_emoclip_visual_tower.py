"""Training with the image tower unfrozen (frames read from disk, tower at lr * tower_lr_scale)
and frozen (tower bit-identical), on a fake DFEW tree through its reader."""
import numpy as np
import pytest
import torch
from PIL import Image

from affaccel.emoclip.config import emoclip_config
from affaccel.emoclip.datasets import load_clip_dataset
from affaccel.emoclip.descriptions import builtin_label_set
from affaccel.emoclip.fit import _optimizer, train_epochs
from affaccel.emoclip.model import build_emoclip


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("dfew")
    split = root / "EmoLabel_DataSplit"
    rows = [(1, 1), (2, 2), (3, 4), (4, 7), (5, 5)]
    for sub, body in (("train(single-labeled)", rows[:4]), ("test(single-labeled)", rows[4:])):
        (split / sub).mkdir(parents=True)
        (split / sub / "set_1.csv").write_text("video_name,label\n" + "".join(f"{v},{lab}\n" for v, lab in body))
    rng = np.random.default_rng(0)
    for v, _ in rows:
        d = root / "Clip" / "clip_224x224" / f"{v:05d}"
        d.mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(d / f"{i + 1:05d}.jpg")
    return load_clip_dataset("dfew", root, fold=1)


def _run(clips, freeze_visual: bool):
    cfg = emoclip_config("tiny", supervision="class", labels="dfew", freeze_visual=freeze_visual, freeze_text=True,
                         tower_lr_scale=1e-3, epochs=1, batch_size=4, device="cpu")
    model = build_emoclip(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    records = {r.video_id: r for r in clips.records}
    train_epochs(model, cfg, clips.items["train"], builtin_label_set("dfew"), None, records, progress=False)
    return cfg, model, before


def _max_change(model, before, prefix):
    return max(float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters() if n.startswith(prefix))


def test_trainable_image_tower_moves_at_a_thousandth_of_the_lr(clips):
    cfg, model, before = _run(clips, freeze_visual=False)
    groups = _optimizer(model, cfg).param_groups
    assert [g["lr"] for g in groups] == [cfg.lr, pytest.approx(cfg.lr * 1e-3)]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.visual_parameters()}
    visual = _max_change(model, before, "clip.visual.")
    temporal = _max_change(model, before, "temporal.")
    assert visual > 0
    # one AdamW step (no weight decay) moves each weight by ~lr * sign(grad): the largest moves
    # of the two groups stand in the ratio of their learning rates
    assert visual / temporal == pytest.approx(1e-3, rel=0.05)
    assert all(float((p.detach() - before[n]).abs().max()) == 0 for n, p in model.named_parameters()
               if n.startswith("clip.") and not n.startswith("clip.visual."))    # the frozen text tower


def test_frozen_image_tower_is_bit_identical(clips):
    _, model, before = _run(clips, freeze_visual=True)
    after = model.state_dict()
    visual = [k for k in after if k.startswith("clip.visual.")]
    assert visual and all(torch.equal(after[k], before[k]) for k in visual)   # weights and BN statistics
    assert _max_change(model, before, "temporal.") > 0                          # while the head trained
