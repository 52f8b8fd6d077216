"""Multi-task fine-tuning (EXPR + auxiliary VA / AU heads) and the colour jitter of the frame
loader: frame selection, the loss against an independent float64 computation, unlabelled frames
ignored, checkpoints with the aux head, resume guards, CLI."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from affaccel.config import (
    CPU_MODEL,
    TINY_MODEL,
    ClipConfig,
    FinetuneConfig,
    finetune_preset,
)
from affaccel.finetune import build_parser, config_from_args
from affaccel.nn.clip import load_finetune_checkpoint
from affaccel.stages.finetune import (
    evaluate,
    expr_frames,
    finetune,
    finetune_frames,
    multitask_loss,
)
from affaccel.video.frames import AUG_GRAY_P, CLIP_MEAN, CLIP_STD, colour_jitter

from clip_fixtures import make_dataset

CFG = FinetuneConfig(clip=ClipConfig(model_name=TINY_MODEL), lr=1e-3, batch_size=32, epochs=1,
                     num_threads=1, aux_tasks=("va", "au"))


def _add_aux_labels(rec, seed):
    """VA and AU labels derived from the colour class, with their own unlabelled stretches."""
    rng = np.random.default_rng(seed)
    n = rec.n_frames
    y = np.maximum(rec.labels["expr"], 0)
    va = np.stack([(y % 4) / 1.5 - 1.0, (y // 4) * 1.2 - 0.6], 1) + rng.normal(0, 0.05, (n, 2))
    au = np.zeros((n, 12), np.int64)
    au[:, :3] = (y[:, None] >> np.arange(3)) & 1
    au[:, 3:] = rng.integers(0, 2, (n, 9))
    va_mask = np.ones(n, bool)
    va_mask[n // 2:n // 2 + 5] = False          # frames with EXPR but no VA
    au_mask = np.ones(n, bool)
    au_mask[:4] = False
    va[~va_mask] = -5.0
    au[~au_mask] = -1
    rec.labels.update(va=np.clip(va, -1, 1) * va_mask[:, None] - 5 * ~va_mask[:, None], au=au)
    rec.label_mask.update(va=va_mask, au=au_mask)
    return rec


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    recs = make_dataset(tmp_path_factory.mktemp("mt"), n_train=4, n_val=3, frames=40)
    return [_add_aux_labels(r, i) for i, r in enumerate(recs)]


def test_finetune_frames_without_aux_are_the_valid_expr_frames(records):
    train = [r for r in records if r.split == "train"]
    for stride in (1, 3):
        paths, mat = finetune_frames(train, stride)
        want_paths, want_y = [], []
        for r in train:   # independent selection: labelled EXPR, face present, every stride-th
            idx = np.flatnonzero(r.label_mask["expr"] & r.frame_present)[::stride]
            want_paths += [str(r.frame_paths[i]) for i in idx]
            want_y += [int(r.labels["expr"][i]) for i in idx]
        assert paths == want_paths and mat.shape == (len(paths), 15)
        assert mat[:, 0].astype(np.int64).tolist() == want_y
        assert np.isnan(mat[:, 1:3]).all() and (mat[:, 3:] == -1).all()
        assert expr_frames(train, stride)[1].tolist() == want_y


def test_finetune_frames_with_aux_columns(records):
    train = [r for r in records if r.split == "train"]
    paths, mat = finetune_frames(train, 1, ("au", "va"))   # any order: canonical inside
    # a frame enters when any of its labels is valid (and its face is present)
    want = sum(int(((r.label_mask["expr"] | r.label_mask["va"] | r.label_mask["au"])
                    & r.frame_present).sum()) for r in train)
    assert len(paths) == len(mat) == want > len(expr_frames(train)[0])
    row = 0
    for r in train:
        ok = (r.label_mask["expr"] | r.label_mask["va"] | r.label_mask["au"]) & r.frame_present
        for t in np.flatnonzero(ok):
            got = mat[row]
            assert paths[row] == str(r.frame_paths[t])
            assert got[0] == (r.labels["expr"][t] if r.label_mask["expr"][t] else -1)
            if r.label_mask["va"][t]:
                assert np.allclose(got[1:3], r.labels["va"][t])
            else:
                assert np.isnan(got[1:3]).all()
            assert np.array_equal(got[3:], r.labels["au"][t] if r.label_mask["au"][t]
                                  else np.full(12, -1))
            row += 1
    with pytest.raises(ValueError, match="aux_tasks"):
        finetune_frames(train, 1, ("expr",))
    with pytest.raises(ValueError, match="aux_tasks"):
        finetune_frames(train, 1, ("va", "va"))


def _loss_ref(out, lab):
    """Float64 NumPy/torch computation written from the definitions, not from the module."""
    out = out.double()
    lab = lab.double()
    e = lab[:, 0].long()
    ok = e >= 0
    ce = torch.nn.functional.cross_entropy(out[ok, :8], e[ok])
    m = ~torch.isnan(lab[:, 1])
    p = torch.tanh(out[m, 8:10]).numpy()
    t = lab[m, 1:3].numpy()
    cccs = []
    for k in range(2):
        pm, tm = p[:, k].mean(), t[:, k].mean()
        cov = ((p[:, k] - pm) * (t[:, k] - tm)).mean()
        cccs.append(2 * cov / (p[:, k].var() + t[:, k].var() + (pm - tm) ** 2))
    va = 1 - np.mean(cccs)
    a = lab[:, 3] >= 0
    x, y = out[a, 10:22], lab[a, 3:15]
    bce = torch.mean(torch.clamp(x, min=0) - x * y + torch.log1p(torch.exp(-x.abs())))
    return float(ce), float(va), float(bce)


def test_multitask_loss_matches_definition_and_ignores_unlabelled():
    g = torch.Generator().manual_seed(0)
    n = 64
    out = torch.randn(n, 22, generator=g)
    lab = torch.full((n, 15), -1.0)
    lab[:, 0] = torch.randint(0, 8, (n,), generator=g).float()
    lab[:, 1:3] = torch.rand(n, 2, generator=g) * 2 - 1
    lab[:, 3:] = torch.randint(0, 2, (n, 12), generator=g).float()
    lab[:5, 0] = -1            # no EXPR
    lab[5:12, 1:3] = float("nan")   # no VA
    lab[12:20, 3:] = -1        # no AU
    total, terms = multitask_loss(out, lab, ("va", "au"))
    ce, va, bce = _loss_ref(out, lab)
    assert terms["expr"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["va"].item() == pytest.approx(va, rel=1e-4, abs=1e-5)
    assert terms["au"].item() == pytest.approx(bce, rel=1e-5)
    assert total.item() == pytest.approx(ce + va + bce, rel=1e-4)
    # outputs of unlabelled frames do not move any term, and get no gradient
    x = out.clone().requires_grad_(True)
    multitask_loss(x, lab, ("va", "au"))[0].backward()
    assert torch.all(x.grad[:5, :8] == 0) and torch.all(x.grad[5:12, 8:10] == 0)
    assert torch.all(x.grad[12:20, 10:] == 0) and torch.any(x.grad[20:, 10:] != 0)
    changed = out.clone()
    changed[:5, :8] += 5.0
    changed[5:12, 8:10] -= 3.0
    changed[12:20, 10:] *= 4.0
    again = multitask_loss(changed, lab, ("va", "au"))[1]
    for k in terms:
        assert again[k].item() == pytest.approx(terms[k].item(), rel=1e-6)
    # EXPR only: the aux columns are not read
    only, t1 = multitask_loss(out[:, :8], lab)
    assert set(t1) == {"expr"} and only.item() == pytest.approx(ce, rel=1e-5)
    # a batch with no label of any kind gives a zero loss that still backpropagates
    empty = lab.clone()
    empty[:, 0] = -1
    empty[:, 1:3] = float("nan")
    empty[:, 3:] = -1
    z, tz = multitask_loss(out.clone().requires_grad_(True), empty, ("va", "au"))
    assert tz == {} and z.item() == 0.0


def test_multitask_finetune_saves_aux_head_and_reproduces_scores(tmp_path, records):
    best = finetune(records, CFG, tmp_path, progress=False)
    hist = json.loads((tmp_path / "history.json").read_text())
    row = hist[-1]
    for k in ("val_macro_f1", "val_va_ccc_mean", "val_au_f1_macro", "val_score"):
        assert np.isfinite(row[k]), k
    assert row["val_score"] == pytest.approx(
        np.mean([row["val_macro_f1"], row["val_va_ccc_mean"], row["val_au_f1_macro"]]))
    model, ck = load_finetune_checkpoint(best)
    assert ck["aux_tasks"] == ["va", "au"] and model.aux.out_features == 14
    val = [r for r in records if r.split == "val"]
    vp, vy = finetune_frames(val, 1, ("va", "au"), present_only=False)
    again = evaluate(model, vp, vy, CFG, torch.device("cpu"), 64)
    assert again["score"] == pytest.approx(ck["val_score"], abs=1e-6)
    assert again["va_ccc_mean"] == pytest.approx(row["val_va_ccc_mean"], abs=1e-6)
    # resuming with other aux tasks is refused
    with pytest.raises(ValueError, match="aux tasks"):
        finetune(records, replace(CFG, aux_tasks=(), epochs=2), tmp_path, resume=True,
                 progress=False)


def test_cpu_preset_and_cli_aux_tasks():
    cfg = finetune_preset("cpu")
    assert cfg.clip.model_name == CPU_MODEL and cfg.aux_tasks == ("va", "au")
    none = config_from_args(build_parser().parse_args(["--aux-tasks", "none"]), cuda=False)
    assert none.aux_tasks == ()
    one = config_from_args(build_parser().parse_args(["--preset", "paper", "--aux-tasks", "va"]),
                           cuda=False)
    assert one.aux_tasks == ("va",) and one.clip.model_name == "ViT-B-16"
    assert config_from_args(build_parser().parse_args([]), cuda=True).aux_tasks == ()
    with pytest.raises(ValueError, match="aux_tasks"):
        config_from_args(build_parser().parse_args(["--aux-tasks", "va,pose"]), cuda=False)


def test_colour_jitter_ranges_greyscale_and_determinism():
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    n = 4000
    raw = torch.full((n, 3, 4, 4), 0.5)
    x = (raw - mean) / std
    a = colour_jitter(x, CLIP_MEAN, CLIP_STD, torch.Generator().manual_seed(3))
    b = colour_jitter(x, CLIP_MEAN, CLIP_STD, torch.Generator().manual_seed(3))
    c = colour_jitter(x, CLIP_MEAN, CLIP_STD, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    px = a * std + mean                           # back to the 0..1 pixel scale
    assert torch.all(px.amin((2, 3)) == px.amax((2, 3)))       # no spatial change
    v = px[:, :, 0, 0]
    assert v.min() >= 0.5 * 0.85 - 0.1 - 1e-5 and v.max() <= 0.5 * 1.15 + 0.1 + 1e-5
    grey = (v.amax(1) - v.amin(1)) < 1e-5
    assert abs(grey.float().mean().item() - AUG_GRAY_P) < 0.04
    spread = v[~grey].amax(1) - v[~grey].amin(1)
    assert spread.mean() > 0.02                   # colour casts differ per channel
    # clamped to the valid pixel range
    bright = colour_jitter((torch.ones(64, 3, 2, 2) - mean) / std, CLIP_MEAN, CLIP_STD,
                           torch.Generator().manual_seed(0)) * std + mean
    assert bright.max() <= 1.0 + 1e-5 and bright.min() >= 0.0
    assert colour_jitter(x.half(), CLIP_MEAN, CLIP_STD, torch.Generator()).dtype == torch.float16


def test_frame_loader_jitter_only_when_augmenting(records):
    from affaccel.video.frames import FrameLoader

    paths = [str(p) for p in records[0].frame_paths[:8]]

    def first(augment, seed=0):
        fl = FrameLoader(paths, batch_size=8, image_size=32, train=True, augment=augment,
                         seed=seed, backend="reference")
        return next(iter(fl))["images"]

    assert torch.equal(first(True), first(True))          # seeded: reproducible
    assert not torch.equal(first(True), first(True, seed=1))
    plain = FrameLoader(paths, batch_size=8, image_size=32, train=True, augment=False,
                        backend="reference")
    batch = next(iter(plain))
    from affaccel.video.frames import clip_preprocess_ref

    ref = clip_preprocess_ref([paths[i] for i in batch["index"].numpy()], 32)
    assert torch.equal(batch["images"], ref.to(batch["images"].dtype))
