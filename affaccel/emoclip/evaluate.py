"""Zero-shot evaluation, caption retrieval and clip embeddings of a trained EmoCLIP model."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from affaccel.emoclip.data import ClipItem, clip_frames, load_frames
from affaccel.emoclip.descriptions import LabelSet
from affaccel.emoclip.text import class_embeddings, text_embeddings
from affaccel.metrics import uar, war


def clip_embeddings(model, items: Sequence[ClipItem], features: dict | None, length: int, step: int,
                    records: dict | None = None, batch: int = 64):
    """L2-normalised clip embeddings [N, D] (torch, CPU) of the centred clip of each item, from
    cached per-frame ``features`` or, with ``records`` ({video_id: record}), from the frames."""
    import torch
    from torch.nn import functional as F

    out = []
    dev = model.logit_scale.device
    with torch.no_grad():
        for i in range(0, len(items), batch):
            chunk = items[i:i + batch]
            idx = [clip_frames(it, length, step) for it in chunk]
            if features is not None:
                x = torch.from_numpy(np.stack([features[it.video_id][j] for it, j in zip(chunk, idx)]))
            else:
                pp = model.preprocess
                frames = [records[it.video_id].frame_paths[k] for it, j in zip(chunk, idx) for k in j]
                img = load_frames(frames, pp["size"], pp["mean"], pp["std"]).to(dev)
                x = model.encode_frames(img).reshape(len(chunk), length, -1).cpu()
            out.append(F.normalize(model.encode_video(x.to(dev).float()).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros((0, model.embed_dim))


def zero_shot_scores(clip_emb, class_emb, logit_scale: float) -> np.ndarray:
    """Class probabilities [N, C]: softmax of exp(logit_scale) * cosine similarity."""
    import torch

    logits = float(np.exp(logit_scale)) * (clip_emb.float() @ class_emb.float().t())
    return torch.softmax(logits, dim=-1).numpy()


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> dict:
    """WAR, UAR, per-class recall and the confusion matrix (rows: true class) over ``names``."""
    k = len(names)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    present = cm.sum(1) > 0
    recall = {n: (float(cm[i, i] / cm[i].sum()) if present[i] else None) for i, n in enumerate(names)}
    return {"war": war(y_true, y_pred), "uar": uar(y_true, y_pred, labels=range(k)),
            "n_clips": int(len(y_true)), "per_class_recall": recall, "classes": list(names),
            "confusion": cm.tolist(), "chance_war_uniform": 1.0 / k,
            "chance_uar": 1.0 / k}


def zero_shot(model, items: Sequence[ClipItem], features, labels: LabelSet, length: int, step: int,
              records: dict | None = None) -> dict:
    """Zero-shot classification of ``items`` against ``labels``; clips whose expression is not a
    class of ``labels`` are skipped. Returns ``classification_report`` plus ``probs`` [N, C]."""
    keep = [it for it in items if it.expression in labels.names]
    if not keep:
        raise ValueError(f"no clip has a class of the label set {labels.source} ({labels.names})")
    emb = clip_embeddings(model, keep, features, length, step, records)
    probs = zero_shot_scores(emb, class_embeddings(model, labels), float(model.logit_scale.detach()))
    y = np.array([labels.index(it.expression) for it in keep])
    rep = classification_report(y, probs.argmax(1), labels.names)
    rep["probs"] = probs
    return rep


def caption_retrieval(model, items: Sequence[ClipItem], features, captions: Sequence[str], length: int,
                      step: int, records: dict | None = None) -> dict:
    """Caption -> clip retrieval: for each caption, is its own clip the most similar of all N?
    Returns r1, r5 and chance (1/N, 5/N)."""
    v = clip_embeddings(model, items, features, length, step, records)
    t = text_embeddings(model, captions)
    sim = (t @ v.t()).numpy()
    own = sim[np.arange(len(sim)), np.arange(len(sim))]
    rank = (sim > own[:, None]).sum(1)           # 0 = own clip first
    n = len(items)
    return {"r1": float((rank == 0).mean()), "r5": float((rank < 5).mean()), "n_clips": n,
            "chance_r1": 1.0 / n, "chance_r5": min(1.0, 5.0 / n)}


def write_embeddings(path: str | Path, items: Sequence[ClipItem], emb) -> Path:
    """NPZ with ``video_id``, ``start``, ``end``, ``expression`` and ``embedding`` [N, D] (atomic)."""
    from affaccel.io_utils import atomic_write_with

    path = Path(path)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, video_id=np.array([it.video_id for it in items]),
                     start=np.array([it.start for it in items], np.int64),
                     end=np.array([it.end for it in items], np.int64),
                     expression=np.array([it.expression for it in items]),
                     embedding=np.asarray(emb, np.float32))

    atomic_write_with(path, save)
    return path


def plot_confusion(report: dict, path: str | Path, title: str = "") -> Path:
    """PNG of the row-normalised confusion matrix (Agg canvas, atomic)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from affaccel.io_utils import atomic_write_with

    cm = np.asarray(report["confusion"], np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    names = report["classes"]
    fig = Figure(figsize=(1.0 + 0.6 * len(names), 0.8 + 0.55 * len(names)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"WAR {report['war']:.3f}  UAR {report['uar']:.3f}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path


__all__ = ["clip_embeddings", "text_embeddings", "class_embeddings", "zero_shot_scores", "zero_shot",
           "classification_report", "caption_retrieval", "write_embeddings", "plot_confusion"]


def _checkpoint_data(checkpoint, data_root, split, cache_root, model_name=None, heads=None, progress=True,
                     clips=None):
    """(model, extra, items, features, records) of a checkpoint over a data set's clips (an
    Aff-Wild2-format set, or ``clips``: a ``datasets.ClipSet``; its "val" split is the test list)."""
    from affaccel.emoclip.data import load_cached_features, segment_clips
    from affaccel.emoclip.model import load_emoclip

    model, extra = load_emoclip(checkpoint, model_name=model_name, heads=heads, return_extra=True)
    splits = ("train", "val") if split == "all" else (split,)
    if clips is not None:
        items = [it for s in splits for it in clips.items.get(s, [])]
        keep = {it.video_id for it in items}
        videos = [r for r in clips.records if r.video_id in keep]
    else:
        from affaccel.data.affwild2 import load_affwild2
        from affaccel.emoclip.captions import synthetic_extras

        if data_root is None:
            from affaccel.data.synthetic import ensure_synthetic

            data_root = ensure_synthetic("default", progress=progress)
        videos = load_affwild2(data_root, splits=splits).videos
        tc = extra.get("train_config", {})
        items = segment_clips(videos, tc.get("min_segment", 16), synthetic_extras(data_root))
    features = load_cached_features(videos, model.image_encoder(), cache_root, progress)
    return model, extra, items, features, {r.video_id: r for r in videos}


def evaluate_checkpoint(checkpoint, labels=None, data_root=None, split="val", cache_root=None,
                        classes=None, model_name=None, heads=None, progress=True, clips=None) -> dict:
    """Zero-shot report of a checkpoint on a data set's clips (``classes``: only those clips;
    ``clips``: a ``datasets.ClipSet``, whose own label set is the default)."""
    from affaccel.emoclip.descriptions import load_label_set

    model, extra, items, features, _ = _checkpoint_data(checkpoint, data_root, split, cache_root,
                                                        model_name, heads, progress, clips)
    if labels is None and clips is not None:
        labels = clips.labels
    if labels is None:
        labels = LabelSet.from_dict(extra["labels"]) if "labels" in extra else "affaccel"
    labels = load_label_set(labels)
    if classes:
        for c in classes:
            labels.index(c)
        items = [it for it in items if it.expression in classes]
    tc = extra.get("train_config", {})
    rep = zero_shot(model, items, features, labels, tc.get("clip_len", 32), tc.get("frame_step", 2))
    rep.update(checkpoint=str(checkpoint), labels=labels.source, split=split)
    return rep


def embed_checkpoint(checkpoint, out, data_root=None, split="all", cache_root=None, model_name=None,
                     heads=None, progress=True, clips=None):
    """Write the clip embeddings of a data set's clips; returns (path, number of clips)."""
    model, extra, items, features, _ = _checkpoint_data(checkpoint, data_root, split, cache_root,
                                                        model_name, heads, progress, clips)
    tc = extra.get("train_config", {})
    emb = clip_embeddings(model, items, features, tc.get("clip_len", 32), tc.get("frame_step", 2))
    return write_embeddings(out, items, emb.numpy()), len(items)
