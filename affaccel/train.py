"""Stage 3: train the temporal model for one task, and the main job's command line.

``python -m affaccel.train --task va`` runs every stage the main job needs (see
``affaccel.pipeline``): the built-in synthetic set, CLIP fine-tuning and feature extraction
(each cached), then :func:`train` below, and prints the final table. ``--data-root`` trains on
Aff-Wild2 with the paper's configuration; ``--folds 5`` runs the 5-fold protocol.

:func:`train` is the training loop proper and can be called from other programs with any
list of :class:`~affaccel.training_data.VideoSeq`. Paper settings (sec. 4.2) by default:
AdamW lr 3e-5, weight decay 1e-5, cosine schedule after one warm-up epoch, batch 32, windows
w = 300 / s = 200, dropout 0.3; validation every epoch on per-frame predictions after overlap
averaging; best checkpoint by the task's headline metric.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from affaccel import io_utils
from affaccel.config import (PAPER_BATCH, PAPER_TEMPORAL_LR, PAPER_TEMPORAL_WD, PAPER_WARMUP_EPOCHS,
                             WindowConfig, from_dict, register_config, to_dict)
from affaccel.metrics import format_table, headline, table_keys, task_metrics
from affaccel.tasks import get_task

CHECKPOINT_FORMAT = "affaccel-temporal-checkpoint"


@register_config
@dataclass
class TrainConfig:
    task: str = "va"                       # va / expr / au
    window: WindowConfig = field(default_factory=WindowConfig)  # paper: w = 300, s = 200
    model: Any = None                      # TemporalConfig; None = defaults for the task
    epochs: int = 30                       # ours (the paper does not give it)
    batch_size: int = PAPER_BATCH          # paper sec. 4.2
    lr: float = PAPER_TEMPORAL_LR          # paper sec. 4.2 (AdamW)
    weight_decay: float = PAPER_TEMPORAL_WD  # paper sec. 4.2
    warmup_epochs: int = PAPER_WARMUP_EPOCHS  # paper: cosine schedule after one warm-up epoch
    grad_clip: float = 1.0                 # ours: max gradient norm (0 = off)
    train_stride: int = 0                  # ours: stride of training windows (0 = window.stride)
    class_weights: bool = False            # EXPR / AU: weights from training label frequencies
    averaging: str = "uniform"             # overlap averaging weights: uniform / triangular / hann
    seed: int = 0
    device: str = "auto"                   # auto / cpu / cuda
    preset: str = "paper"                  # which preset produced this config (see PRESETS)
    preset_changes: dict = field(default_factory=dict)  # fields a preset changed from the paper's

    def __post_init__(self):
        from affaccel.nn.temporal import TemporalConfig

        if self.model is None:
            self.model = TemporalConfig(task=self.task)
        elif isinstance(self.model, dict):
            self.model = from_dict(TemporalConfig, self.model)
        if self.model.task != self.task:
            raise ValueError(f"model config is for task {self.model.task!r}, training task is {self.task!r}")
        get_task(self.task)
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")


# Presets: paper values, and ours for machines without a GPU. Each change from the paper is
# recorded in TrainConfig.preset_changes of the saved config.
PRESETS: dict[str, dict] = {
    "paper": {},
    # 2 CPU cores, minutes: a narrower model, more (denser) windows per epoch and a larger
    # learning rate, because lr 3e-5 needs far more steps than a CPU budget allows; class
    # weights for EXPR/AU, because with few, weak features rare classes never reach threshold.
    "cpu": {"epochs": 20, "lr": 1e-3, "train_stride": 100, "class_weights": True,
            "model": {"tcn_channels": [128, 128], "transformer_layers": 1, "transformer_heads": 4,
                      "transformer_ff": 256, "head_hidden": 64}},
    # tests and CI: seconds
    "tiny": {"epochs": 3, "lr": 2e-3, "batch_size": 8, "window": {"window": 32, "stride": 16},
             "model": {"tcn_channels": [16, 16], "transformer_layers": 1, "transformer_heads": 2,
                       "transformer_ff": 32, "head_hidden": 16, "max_len": 32}},
}


def make_config(task: str, preset: str = "paper", **overrides) -> TrainConfig:
    """A TrainConfig for ``task`` from a preset, then explicit overrides (None values ignored);
    model overrides go in ``model={...}``. Changes from the paper's values are recorded."""
    from affaccel.nn.temporal import TemporalConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    base = TrainConfig(task=task)
    flat = to_dict(base)
    changes: dict = {}
    for source in (PRESETS[preset], {k: v for k, v in overrides.items() if v is not None}):
        for key, value in source.items():
            if key not in flat:
                raise ValueError(f"unknown training option {key!r}")
            if isinstance(value, dict) and isinstance(flat[key], dict):
                flat[key] = {**flat[key], **value}
                changes.setdefault(key, {}).update(value)
            else:
                flat[key] = value
                changes[key] = value
    flat.update(preset=preset, preset_changes=changes, task=task)
    flat["model"] = from_dict(TemporalConfig, {**flat["model"], "task": task})
    flat["window"] = from_dict(WindowConfig, flat["window"])
    return TrainConfig(**flat)


# ----------------------------------------------------------------------------- losses
def task_loss(task: str, out, target, valid, class_weight=None):
    """Masked loss of one batch. out: [B, w, K] model outputs; target: [B, w, K] (VA, AU) or
    [B, w] int64 (EXPR); valid: [B, w] bool. VA: 1 - mean CCC over the batch's valid frames
    (fused kernel on GPU); EXPR: cross-entropy; AU: BCE with logits (class_weight = pos_weight)."""
    import torch
    import torch.nn.functional as F

    kind = get_task(task).kind
    if kind == "regression":
        from affaccel.ops import ccc_loss

        return ccc_loss(out.float(), target.float(), valid, reduction="global")
    if not bool(valid.any()):
        return out.sum() * 0.0  # keeps the graph (DDP needs every parameter to get a gradient)
    if kind == "multiclass":
        return F.cross_entropy(out[valid].float(), target[valid], weight=class_weight)
    return F.binary_cross_entropy_with_logits(out[valid].float(), target[valid].float(),
                                              pos_weight=class_weight)


def class_weights(task: str, seqs) -> Any:
    """EXPR: inverse class frequency, mean 1 over present classes; AU: pos_weight = neg / pos,
    clipped to [1, 10]. None for VA."""
    import torch

    from affaccel.training_data import label_frequencies

    kind = get_task(task).kind
    if kind == "regression":
        return None
    counts = label_frequencies(seqs, task).astype(np.float64)
    if kind == "multiclass":
        present = counts > 0
        w = np.where(present, counts.sum() / np.maximum(counts, 1) / max(present.sum(), 1), 0.0)
        return torch.tensor(w / w[present].mean(), dtype=torch.float32)
    return torch.tensor(np.clip(counts[:, 0] / np.maximum(counts[:, 1], 1), 1.0, 10.0), dtype=torch.float32)


# ----------------------------------------------------------------------------- schedule
def lr_lambda(steps_per_epoch: int, epochs: int, warmup_epochs: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_epochs`` then cosine decay to 0 at the last step."""
    warm = max(1, warmup_epochs * steps_per_epoch) if warmup_epochs > 0 else 0
    total = max(1, epochs * steps_per_epoch)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


# ----------------------------------------------------------------------------- evaluation
def predict_frames(model, windows, batch_size: int, device, averaging: str = "uniform") -> list[np.ndarray]:
    """Per-frame predictions [T_i, K] of every video of a WindowSet: windows in order, model in
    eval mode, outputs mapped to prediction space, then averaged where windows overlap."""
    import torch

    from affaccel.segments import overlap_average_batch

    model.eval()
    preds = []
    with torch.no_grad():
        for _, b in windows.batches(batch_size, epoch=0, seed=0, shuffle=False):
            out = model(b.x.to(device), b.frames.to(device))
            preds.append(model.to_prediction(out).float().cpu().numpy())
    preds = np.concatenate(preds, axis=0)[:len(windows)]
    n_frames = np.array([q.n_frames for q in windows.seqs], dtype=np.int64)
    return overlap_average_batch(preds, windows.index, n_frames, weighting=averaging)


def evaluate(model, windows, batch_size: int, device, averaging: str = "uniform") -> dict[str, float]:
    """Task metrics over all scored frames of all videos of a WindowSet (one pooled score)."""
    per_video = predict_frames(model, windows, batch_size, device, averaging)
    pred = np.concatenate(per_video, axis=0)
    target = np.concatenate([np.asarray(q.labels) for q in windows.seqs], axis=0)
    mask = np.concatenate([np.asarray(q.score_mask, dtype=bool) for q in windows.seqs], axis=0)
    return task_metrics(windows.task.name, pred, target, mask)


# ----------------------------------------------------------------------------- checkpoints
def _checkpoint(cfg: TrainConfig, model, optimizer=None, scheduler=None, **extra) -> dict:
    ckpt = {"format": CHECKPOINT_FORMAT, "config": to_dict(cfg), "model": _unwrap(model).state_dict()}
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
        ckpt["scheduler"] = scheduler.state_dict()
    ckpt.update(extra)
    return ckpt


def load_checkpoint(path: str | Path) -> dict:
    """A temporal checkpoint (best.pt / last.pt), loaded with weights_only=True."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an affaccel temporal checkpoint")
    return ckpt


def model_from_checkpoint(ckpt: dict):
    """(TemporalModel, TrainConfig) from a checkpoint dict."""
    from affaccel.nn.temporal import TemporalModel

    cfg = from_dict(TrainConfig, ckpt["config"])
    model = TemporalModel(cfg.model)
    model.load_state_dict(ckpt["model"])
    return model, cfg


def _unwrap(model):
    return getattr(model, "module", model)


# ----------------------------------------------------------------------------- run directory
class RunLog:
    """metrics.csv (rewritten atomically each epoch) and TensorBoard scalars of a run."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.run_dir, self.enabled, self._tb = run_dir, enabled, None

    def epoch(self, history: list[dict]) -> None:
        if not self.enabled:
            return
        keys = list(dict.fromkeys(k for row in history for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
        io_utils.atomic_write_text(self.run_dir / "metrics.csv", buf.getvalue())
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        row = history[-1]
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self._tb.add_scalar(key.replace("val_", "val/").replace("train_", "train/"), value, row["epoch"])
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def default_run_dir(task: str, tag: str = "") -> Path:
    from affaccel import env

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return env.home() / "runs" / f"{task}{'-' + tag if tag else ''}-{stamp}"


# ----------------------------------------------------------------------------- training loop
@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict            # validation metrics of the best epoch
    best_epoch: int
    history: list
    model: Any               # TemporalModel with the best weights (CPU)
    config: TrainConfig


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(cfg: TrainConfig, train_seqs: Sequence, val_seqs: Sequence, run_dir: str | Path,
          resume: bool = False, on_epoch_end: Callable[[int, dict], None] | None = None,
          progress: bool = True) -> TrainResult:
    """Train one task's temporal model; validate every epoch; keep best.pt and last.pt.

    ``resume=True`` continues from ``run_dir/last.pt`` (model, optimizer, scheduler, epoch,
    history); window order and dropout are seeded from (seed, epoch, rank), so a resumed run
    reaches the same result as an uninterrupted one. ``on_epoch_end(epoch, row)`` is called on
    rank 0 after each epoch's checkpoint is written. Under torchrun each rank trains on its
    shard of the windows (DDP); rank 0 validates and writes.
    """
    import torch
    from tqdm.auto import tqdm

    from affaccel import distributed
    from affaccel.nn.temporal import TemporalModel
    from affaccel.training_data import WindowSet

    device = _resolve_device(cfg.device)
    info = distributed.init_from_env(device.type)  # no-op without torchrun
    rank, world = info.rank, info.world_size
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", info.local_rank)
    run_dir = Path(run_dir)
    main_proc = rank == 0
    if main_proc:
        run_dir.mkdir(parents=True, exist_ok=True)
    train_set = WindowSet(train_seqs, cfg.window.window, cfg.train_stride or cfg.window.stride, cfg.task)
    val_set = WindowSet(val_seqs, cfg.window.window, cfg.window.stride, cfg.task)
    if cfg.model.in_dim != train_set.feature_dim:
        cfg.model.in_dim = train_set.feature_dim  # the features decide; recorded in the config
    if main_proc:
        io_utils.atomic_write_json(run_dir / "config.json", to_dict(cfg))

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = TemporalModel(cfg.model).to(device)
    ddp_model = distributed.wrap_ddp(model, device) if world > 1 else model
    weight = class_weights(cfg.task, train_seqs) if cfg.class_weights else None
    weight = weight.to(device) if weight is not None else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = train_set.n_batches(cfg.batch_size, world)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps, cfg.epochs, cfg.warmup_epochs))

    start, history, best = 0, [], {"score": -math.inf, "epoch": -1, "metrics": {}}
    if resume and (run_dir / "last.pt").is_file():
        ckpt = load_checkpoint(run_dir / "last.pt")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start, history, best = int(ckpt["epoch"]) + 1, list(ckpt["history"]), dict(ckpt["best"])

    log = RunLog(run_dir, main_proc)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        ddp_model.train()
        torch.manual_seed(cfg.seed * 100003 + epoch * 1009 + rank)  # dropout, per epoch and rank
        losses = []
        bar = tqdm(train_set.batches(cfg.batch_size, epoch, cfg.seed, True, rank, world), total=steps,
                   desc=f"{cfg.task} epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and main_proc),
                   leave=False, mininterval=1.0)
        for _, b in bar:
            out = ddp_model(b.x.to(device), b.frames.to(device))
            loss = task_loss(cfg.task, out, b.target.to(device), b.valid.to(device), weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if main_proc:
            metrics = evaluate(model, val_set, cfg.batch_size, device, cfg.averaging)
            score = headline(cfg.task, metrics)
            row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": scheduler.get_last_lr()[0],
                   "epoch_seconds": time.perf_counter() - t0, **{f"val_{k}": v for k, v in metrics.items()}}
            history.append(row)
            if score > best["score"]:
                best = {"score": score, "epoch": epoch + 1, "metrics": metrics}
                io_utils.atomic_torch_save(_checkpoint(cfg, model, epoch=epoch, metrics=metrics), run_dir / "best.pt")
            io_utils.atomic_torch_save(_checkpoint(cfg, model, optimizer, scheduler, epoch=epoch, history=history,
                                                   best=best), run_dir / "last.pt")
            log.epoch(history)
            if progress:
                tqdm.write(f"[{cfg.task}] epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} "
                           f"val {get_task(cfg.task).name} {score:.4f} ({row['epoch_seconds']:.1f}s)")
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
        distributed.barrier()
    log.close()
    best_model = model.cpu()
    if main_proc:
        best_model, _ = model_from_checkpoint(load_checkpoint(run_dir / "best.pt"))
    return TrainResult(run_dir, best["metrics"], best["epoch"], history, best_model, cfg)


# ----------------------------------------------------------------------------- reporting
def final_table(task: str, metrics: dict, label: str = "validation") -> str:
    keys = table_keys(task)[:3] if get_task(task).name == "va" else table_keys(task)
    return format_table([(label, metrics)], keys)


def write_final_metrics(run_dir: Path, task: str, metrics: dict, best_epoch: int, bundle: Path | None,
                        extra: dict | None = None) -> Path:
    out = {"task": task, "best_epoch": best_epoch, **metrics, "bundle": str(bundle) if bundle else None,
           **(extra or {})}
    path = Path(run_dir) / "final_metrics.json"
    io_utils.atomic_write_json(path, out)
    return path


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m affaccel.train", description=(
        "Train the temporal model of one task. With no --data-root: the built-in synthetic set, "
        "with every stage it needs (fine-tune, extract; cached)."))
    p.add_argument("--task", choices=["va", "expr", "au"], default="va")
    p.add_argument("--data-root", type=Path, default=None,
                   help="Aff-Wild2 root (annotation folders + cropped_aligned); default: synthetic set")
    p.add_argument("--folds", type=int, default=0, help="k > 1: k-fold protocol over train+val pooled")
    p.add_argument("--run-dir", type=Path, default=None, help="default: $AFFACCEL_HOME/runs/<task>-<time>")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from last.pt")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="default: paper with a GPU or --data-root, cpu otherwise")
    p.add_argument("--synthetic", choices=["default", "tiny"], default="default",
                   help="size of the built-in synthetic set")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto / cpu / cuda")
    p.add_argument("--class-weights", action="store_true", default=None,
                   help="EXPR/AU: weight losses by training label frequencies")
    p.add_argument("--no-tcn", action="store_true", help="ablation: drop the TCN")
    p.add_argument("--no-transformer", action="store_true", help="ablation: drop the Transformer")
    p.add_argument("--no-finetune", action="store_true", help="ablation: features of the non-fine-tuned encoder")
    p.add_argument("--pretrained", default="auto",
                   help="open_clip weights tag for the encoder ('none' = random init); auto: 'openai' "
                        "with the paper preset, random init with the cpu/tiny presets")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from affaccel import pipeline

    args = build_parser().parse_args(argv)
    if args.resume and args.run_dir is None:
        print("error: --resume needs --run-dir (the run to continue)", file=sys.stderr)
        return 2
    model = {}
    if args.no_tcn:
        model["use_tcn"] = False
    if args.no_transformer:
        model["use_transformer"] = False
    overrides = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                     device=args.device, class_weights=args.class_weights, model=model or None)
    job = pipeline.JobSpec(task=args.task, data_root=args.data_root, run_dir=args.run_dir, resume=args.resume,
                           preset=args.preset, synthetic=args.synthetic, finetune=not args.no_finetune,
                           pretrained=None if args.pretrained == "none" else args.pretrained,
                           overrides=overrides, progress=not args.quiet)
    if args.folds and args.folds > 1:
        pipeline.run_folds(job, args.folds)
    else:
        pipeline.run_job(job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
