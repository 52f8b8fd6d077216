"""Training EmoCLIP: symmetric InfoNCE between clips and their texts (sample-level captions or
class descriptions), frozen or trainable CLIP towers; plus the run that prepares the data.

A run folder holds ``config.json`` (the resolved EmoClipTrainConfig), ``history.json`` (per
epoch: loss, validation caption retrieval and zero-shot WAR/UAR), ``last.pt`` (written atomically
each epoch) and ``metrics.json``. Validation never picks the checkpoint: the held-out class of a
leave-one-out run is in the validation clips, so the last epoch is the result.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from affaccel.config import to_dict
from affaccel.emoclip.config import EmoClipTrainConfig
from affaccel.emoclip.data import ClipItem, captions_for, clip_frames, load_cached_features, load_frames, segment_clips
from affaccel.emoclip.descriptions import LabelSet, load_label_set
from affaccel.emoclip.evaluate import caption_retrieval, zero_shot
from affaccel.io_utils import atomic_write_json

log = logging.getLogger(__name__)


def _optimizer(model, cfg: EmoClipTrainConfig):
    import torch

    groups = [{"params": model.head_parameters(), "lr": cfg.lr}]
    tower = []
    if not cfg.freeze_visual:
        tower += model.visual_parameters()
    if not cfg.freeze_text:
        tower += model.text_parameters()
    if tower:
        groups.append({"params": tower, "lr": cfg.lr * cfg.tower_lr_scale})
    for g in groups:
        g["initial_lr"] = g["lr"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


class _TextCache:
    """Embeddings of texts through a frozen text tower, computed once per text."""

    def __init__(self, model):
        self.model, self.store = model, {}

    def __call__(self, texts: Sequence[str]):
        import torch

        new = [t for t in dict.fromkeys(texts) if t not in self.store]
        if new:
            with torch.no_grad():
                emb = self.model.encode_text(self.model.tokenize(new).to(self.model.logit_scale.device))
            self.store.update(zip(new, emb.float()))
        return torch.stack([self.store[t] for t in texts])


def train_epochs(model, cfg: EmoClipTrainConfig, items: Sequence[ClipItem], labels: LabelSet,
                 features: dict | None, records: dict | None = None, val: dict | None = None,
                 out_dir: Path | None = None, progress: bool = True) -> list[dict]:
    """Train ``model`` in place for ``cfg.epochs``; returns the per-epoch history.

    items: training clips (their expressions must be classes of ``labels`` for class-level
    supervision); features: {video_id: [T, D]} cached embeddings (frozen image tower) or None
    with ``records`` ({video_id: record}) to read frames; val: {"items", "captions", "labels"}.
    """
    import torch
    from tqdm.auto import tqdm

    from affaccel.emoclip.loss import clip_loss

    if len(items) < 2:
        raise ValueError(f"EmoCLIP training needs >= 2 clips, got {len(items)}")
    dev = model.logit_scale.device
    model.set_frozen(cfg.freeze_visual, cfg.freeze_text)
    opt = _optimizer(model, cfg)
    text_cache = _TextCache(model) if cfg.freeze_text else None
    rng = np.random.default_rng([cfg.seed, 0xE40])
    order = np.repeat(np.arange(len(items)), cfg.clips_per_segment)
    bs = min(cfg.batch_size, len(order))
    steps_per_epoch = max(1, len(order) // bs)
    total = steps_per_epoch * cfg.epochs
    history, step = [], 0
    bar = tqdm(total=total, desc="emoclip", unit="step", disable=not progress)
    for epoch in range(cfg.epochs):
        model.train()
        if cfg.freeze_visual:
            model.clip.visual.eval()
        t0, losses = time.perf_counter(), []
        perm = rng.permutation(order)
        for b in range(steps_per_epoch):
            batch = [items[i] for i in perm[b * bs:(b + 1) * bs]]
            idx = [clip_frames(it, cfg.clip_len, cfg.frame_step, rng) for it in batch]
            if features is not None and cfg.freeze_visual:
                x = torch.from_numpy(np.stack([features[it.video_id][j] for it, j in zip(batch, idx)])).to(dev)
            else:
                pp = model.preprocess
                paths = [records[it.video_id].frame_paths[k] for it, j in zip(batch, idx) for k in j]
                img = load_frames(paths, pp["size"], pp["mean"], pp["std"]).to(dev)
                x = model.encode_frames(img).reshape(len(batch), cfg.clip_len, -1)
            if cfg.supervision == "sample":
                texts = [_caption(it, rng) for it in batch]
            else:
                texts = [_pick(labels.descriptions[labels.index(it.expression)], rng) for it in batch]
            t = text_cache(texts) if text_cache else model.encode_text(model.tokenize(texts).to(dev))
            loss = clip_loss(model.logits(model.encode_video(x.float()), t))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100.0))   # CLIP's cap on the scale
            step += 1
            if cfg.schedule == "cosine":
                for g in opt.param_groups:
                    g["lr"] = g["initial_lr"] * 0.5 * (1 + math.cos(math.pi * step / total))
            losses.append(float(loss.detach()))
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        row = {"epoch": epoch, "step": step, "loss": float(np.mean(losses)),
               "logit_scale": float(model.logit_scale.detach().exp()), "seconds": round(time.perf_counter() - t0, 2)}
        if val is not None and (epoch == cfg.epochs - 1 or (epoch + 1) % max(1, cfg.epochs // 5) == 0):
            row.update(validate(model, cfg, val, features, records))
        history.append(row)
        log.info("epoch %d: %s", epoch, json.dumps(row))
        if out_dir is not None:
            from affaccel.emoclip.model import save_emoclip

            save_emoclip(out_dir / "last.pt", model, labels=labels.to_dict(), epoch=epoch,
                         train_config=to_dict(cfg))
            atomic_write_json(out_dir / "history.json", history)
    bar.close()
    return history


def _caption(item: ClipItem, rng) -> str:
    from affaccel.emoclip.captions import make_caption

    return item.caption if item.caption else make_caption(item.facts, rng)


def _pick(options: Sequence[str], rng) -> str:
    return options[int(rng.integers(len(options)))]


def validate(model, cfg: EmoClipTrainConfig, val: dict, features, records=None) -> dict:
    """Validation caption retrieval and zero-shot scores (model left in eval mode)."""
    model.eval()
    zs = zero_shot(model, val["items"], features, val["labels"], cfg.clip_len, cfg.frame_step, records)
    out = {"val_war": zs["war"], "val_uar": zs["uar"]}
    if val["captions"] is not None:
        ret = caption_retrieval(model, val["items"], features, val["captions"], cfg.clip_len, cfg.frame_step, records)
        out.update(val_r1=ret["r1"], val_r1_chance=ret["chance_r1"])
    return out


# -- the whole run -------------------------------------------------------------------------------
def prepare(cfg: EmoClipTrainConfig, data_root=None, cache_root=None, progress: bool = True, clips=None):
    """(model, labels, {split: items}, features or None, {video_id: record}) for a training run.
    ``clips``: a ``datasets.ClipSet`` (MAFW / DFEW / FERV39k / AFEW) instead of an Aff-Wild2-format set."""
    import torch

    from affaccel.device import resolve_device
    from affaccel.emoclip.model import build_emoclip

    if clips is not None:
        records = {r.video_id: r for r in clips.records}
        items = {s: list(clips.items.get(s, [])) for s in ("train", "val")}
        labels = clips.labels if cfg.labels == clips.name else load_label_set(cfg.labels)
    else:
        records, items = _affwild2_clips(cfg, data_root, progress)
        labels = load_label_set(cfg.labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_emoclip(replace(cfg.model, init_seed=cfg.seed))
    dev = resolve_device(cfg.device)
    model = model.to(dev)
    features = None
    if cfg.freeze_visual:
        enc = model.image_encoder()
        features = load_cached_features(list(records.values()), enc, cache_root, progress, str(dev))
    return model, labels, items, features, records


def _affwild2_clips(cfg: EmoClipTrainConfig, data_root, progress: bool):
    from affaccel.data.affwild2 import load_affwild2
    from affaccel.emoclip.captions import synthetic_extras

    if data_root is None:
        from affaccel.data.synthetic import ensure_synthetic

        data_root = ensure_synthetic("default", progress=progress)
    ds = load_affwild2(data_root, splits=("train", "val"))
    extras = synthetic_extras(data_root)
    items = {s: segment_clips([r for r in ds.videos if r.split == s], cfg.min_segment, extras)
             for s in ("train", "val")}
    return {r.video_id: r for r in ds.videos}, items


def check_supervision(cfg: EmoClipTrainConfig, train_items: Sequence[ClipItem], labels: LabelSet, clips=None):
    """Fail before any training when the clips cannot give the texts ``cfg.supervision`` needs."""
    if clips is not None and cfg.supervision == "sample":
        bare = [it for it in train_items if not it.caption]
        if bare:
            raise ValueError(f"{clips.lists.get('train')}: {len(bare)} of {len(train_items)} training clips have "
                             f"no caption (e.g. {bare[0].video_id}); sample-level training needs captions "
                             "(MAFW's with_caption lists); use --supervision class")
    if cfg.supervision == "class":
        bare = sorted({it.expression for it in train_items if not labels.descriptions[labels.index(it.expression)]})
        if bare:
            raise ValueError(f"{labels.source}: classes {bare} have no description of their own (compounds); "
                             "class-level training needs one per class; use --supervision sample")


def run_training(cfg: EmoClipTrainConfig, out_dir: str | Path, data_root=None, cache_root=None,
                 progress: bool = True, clips=None) -> dict:
    """Prepare data, train, evaluate on the validation clips; writes the run folder. Returns
    the final metrics (also in ``metrics.json``). ``clips``: a ``datasets.ClipSet`` to train on."""
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", to_dict(cfg))
    model, labels, items, features, records = prepare(cfg, data_root, cache_root, progress, clips)
    unknown = sorted(set(cfg.exclude_classes) - set(labels.names))
    if unknown:
        raise ValueError(f"exclude_classes {unknown} are not classes of the label set {labels.source} "
                         f"({labels.names})")
    train_items = [it for it in items["train"] if it.expression not in cfg.exclude_classes
                   and it.expression in labels.names]
    check_supervision(cfg, train_items, labels, clips)
    own = clips is None or all(it.caption for it in items["val"])   # no generated captions for a real set
    val = {"items": items["val"], "captions": captions_for(items["val"], cfg.caption_seed) if own else None,
           "labels": labels}
    t0 = time.perf_counter()
    history = train_epochs(model, cfg, train_items, labels, features, records, val, out, progress)
    metrics = final_metrics(model, cfg, items["val"], val["captions"], labels, features, records)
    if cfg.exclude_classes:   # the held-out classes' training-split clips were never trained on either
        unseen = [it for it in items["train"] + items["val"] if it.expression in cfg.exclude_classes]
        zs = zero_shot(model, unseen, features, labels, cfg.clip_len, cfg.frame_step, records)
        for name in cfg.exclude_classes:
            metrics["held_out"][name].update(
                recall_train_and_val=zs["per_class_recall"][name],
                n_clips_train_and_val=sum(it.expression == name for it in unseen))
    metrics.update(train_clips=len(train_items), val_clips=len(items["val"]),
                   train_seconds=round(time.perf_counter() - t0, 1), epochs=len(history))
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def final_metrics(model, cfg, val_items, captions, labels: LabelSet, features, records=None) -> dict:
    model.eval()
    zs = zero_shot(model, val_items, features, labels, cfg.clip_len, cfg.frame_step, records)
    zs.pop("probs")
    out = {"zero_shot": zs}
    if captions is not None:
        out["retrieval"] = caption_retrieval(model, val_items, features, captions, cfg.clip_len, cfg.frame_step,
                                             records)
    for name in cfg.exclude_classes:
        out.setdefault("held_out", {})[name] = {
            "recall": zs["per_class_recall"][name], "chance": 1.0 / len(labels),
            "n_clips": sum(it.expression == name for it in val_items)}
    return out


__all__ = ["train_epochs", "validate", "prepare", "check_supervision", "run_training", "final_metrics"]
