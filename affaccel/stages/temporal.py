"""Stage 3: train the temporal model of one task on per-frame features.

:func:`train` is the training loop proper and can be called from other programs with any list
of :class:`~affaccel.stages.windows.VideoSeq`. Paper settings (sec. 4.2) by default: AdamW lr
3e-5, weight decay 1e-5, cosine schedule after one warm-up epoch, batch 32, windows w = 300 /
s = 200, dropout 0.3; validation every epoch on per-frame predictions after overlap averaging,
through the same function inference uses (``affaccel.inference.temporal.predict_frames``);
best checkpoint by the task's headline metric.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from affaccel import io_utils
from affaccel.config import TrainConfig, from_dict, to_dict
from affaccel.metrics import format_table, headline, table_keys, task_metrics
from affaccel.tasks import get_task

CHECKPOINT_FORMAT = "affaccel-temporal-checkpoint"


# ----------------------------------------------------------------------------- losses
def task_loss(task: str, out, target, valid, class_weight=None):
    """Masked loss of one batch. out: [B, w, K] model outputs; target: [B, w, K] (VA, AU) or
    [B, w] int64 (EXPR); valid: [B, w] bool. VA: 1 - mean CCC over the batch's valid frames
    (fused kernel on GPU); EXPR: cross-entropy; AU: BCE with logits (class_weight = pos_weight)."""
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
    """Loss weights of ``task`` from its training labels (``affaccel.stages.optim.class_weights``:
    EXPR inverse class frequency, AU pos_weight); None for VA."""
    import torch

    from affaccel.stages.optim import class_weights as weights_from_counts
    from affaccel.stages.windows import label_frequencies

    if get_task(task).kind == "regression":
        return None
    return torch.from_numpy(weights_from_counts(label_frequencies(seqs, task)))


# ----------------------------------------------------------------------------- evaluation
def predict_frames(model, windows, batch_size: int, device, averaging: str = "uniform") -> list[np.ndarray]:
    """Per-frame predictions [T_i, K] of every video of a WindowSet, through the inference path."""
    from affaccel.inference.temporal import predict_frames as predict

    task = windows.task.name
    preds = predict({task: model}, [q.features for q in windows.seqs], windows.window,
                    windows.stride, device, batch_size, averaging)
    return [p[task] for p in preds]


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

    from affaccel.io_utils import read_torch_file

    path = Path(path)
    ckpt = read_torch_file(path, f"no checkpoint at {path}",
                           "unreadable checkpoint (the file is truncated or damaged, e.g. by a full disk): "
                           "delete it, or the run folder, and train again")
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


@dataclass
class _Run:
    """Everything one training run holds while it runs."""
    cfg: TrainConfig
    device: Any
    rank: int
    world: int
    run_dir: Path
    train_set: Any
    val_set: Any
    model: Any
    ddp_model: Any
    optimizer: Any
    scheduler: Any
    weight: Any
    steps: int
    flops_per_window: float = 0.0   # model FLOPs of one training window, forward + backward
    peak: float = 0.0               # measured peak FLOP/s of the device (rank 0; 0 elsewhere)
    prefetch: bool = True           # next batch pinned + non_blocking copy on a side stream (CUDA)

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup(cfg: TrainConfig, train_seqs, val_seqs, run_dir: Path) -> _Run:
    """Device, process group, window sets, model (seeded), optimizer and schedule."""
    import torch

    from affaccel import distributed
    from affaccel.device import resolve_device
    from affaccel.nn.temporal import TemporalModel
    from affaccel.stages.optim import lr_factor
    from affaccel.stages.windows import WindowSet

    device = resolve_device(cfg.device)
    info = distributed.init_from_env(device.type)  # no-op without torchrun
    if device.type == "cuda" and info.world_size > 1:
        device = torch.device("cuda", info.local_rank)
    train_set = WindowSet(train_seqs, cfg.window.window, cfg.train_stride or cfg.window.stride, cfg.task)
    val_set = WindowSet(val_seqs, cfg.window.window, cfg.window.stride, cfg.task)
    # the features decide the input size; the run's own copy of the config records it
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, in_dim=train_set.feature_dim))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank, whatever ran before
        model = TemporalModel(cfg.model).to(device)
    ddp_model = distributed.wrap_ddp(model, device) if info.world_size > 1 else model
    weight = class_weights(cfg.task, train_seqs) if cfg.class_weights else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = train_set.n_batches(cfg.batch_size, info.world_size)
    total, warm = cfg.epochs * steps, cfg.warmup_epochs * steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warm, "cosine"))
    return _Run(cfg, device, info.rank, info.world_size, run_dir, train_set, val_set, model, ddp_model,
                optimizer, scheduler, weight.to(device) if weight is not None else None, steps)


def _measure(run: _Run) -> None:
    """FLOPs of a training window (counted once on fake tensors) and, on rank 0, the device's
    measured peak (affaccel.stages.mfu); neither touches the weights or the random streams."""
    import torch

    from affaccel.stages import mfu

    w = run.cfg.window.window
    run.flops_per_window = mfu.train_flops(run.model, [((1, w, run.train_set.feature_dim), torch.float32),
                                                       ((1, w), torch.bool)])
    if run.main:  # the model trains in fp32 (no autocast)
        run.peak = mfu.peak_flops(run.device, mfu.peak_kind(run.device, "fp32"))


def _train_epoch(run: _Run, epoch: int, progress: bool):
    """One pass over this rank's windows; returns (mean training loss, its Throughput)."""
    import torch
    from tqdm.auto import tqdm

    from affaccel.data.prefetch import prefetch
    from affaccel.stages.mfu import Throughput

    cfg, device = run.cfg, run.device
    run.ddp_model.train()
    losses, windows = [], 0
    t0 = time.perf_counter()
    batches = run.train_set.batches(cfg.batch_size, epoch, cfg.seed, True, run.rank, run.world)
    bar = tqdm(prefetch(batches, device, run.prefetch),
               total=run.steps, desc=f"{cfg.task} epoch {epoch + 1}/{cfg.epochs}",
               disable=not (progress and run.main), leave=False, mininterval=1.0)
    # dropout draws from the global generator: seeded per (seed, epoch, rank) inside a fork, so
    # a resumed run repeats an uninterrupted one and the caller's RNG state is left as it was
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed * 100003 + epoch * 1009 + run.rank)
        for i, (_, b) in enumerate(bar):   # b: on the device already
            out = run.ddp_model(b.x, b.frames)
            loss = task_loss(cfg.task, out, b.target, b.valid, run.weight)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
            run.optimizer.step()
            run.scheduler.step()
            losses.append(loss.detach())
            windows += b.x.shape[0]
            if progress and i % 10 == 0:   # reading the loss back syncs with the device
                bar.set_postfix(loss=f"{float(losses[-1]):.4f}")
    mean = float(torch.stack(losses).float().mean()) if losses else float("nan")  # waits for the device
    w = cfg.window.window
    speed = Throughput(windows * w * run.world, time.perf_counter() - t0, run.flops_per_window / w, run.peak,
                       run.world)
    return mean, speed


def _end_epoch(run: _Run, epoch: int, train_loss: float, seconds: float, state: dict,
               speed=None) -> tuple[dict, float]:
    """Validate, keep best.pt / last.pt; returns (the epoch's history row, its validation
    score). ``speed``: the training pass's Throughput (frames_per_s, mfu). Rank 0 only."""
    cfg = run.cfg
    metrics = evaluate(run.model, run.val_set, cfg.batch_size, run.device, cfg.averaging)
    score = headline(cfg.task, metrics)
    row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": run.scheduler.get_last_lr()[0],
           "epoch_seconds": seconds, **(speed.row() if speed is not None else {}),
           **{f"val_{k}": v for k, v in metrics.items()}}
    state["history"].append(row)
    if score > state["best"]["score"]:
        state["best"] = {"score": score, "epoch": epoch + 1, "metrics": metrics}
        io_utils.atomic_torch_save(_checkpoint(cfg, run.model, epoch=epoch, metrics=metrics),
                                   run.run_dir / "best.pt")
    io_utils.atomic_torch_save(_checkpoint(cfg, run.model, run.optimizer, run.scheduler, epoch=epoch,
                                           history=state["history"], best=state["best"]),
                               run.run_dir / "last.pt")
    return row, score


# what a resumed run must share with the run that wrote last.pt (the rest may change, e.g. epochs)
_RESUME_FIELDS = ("task", "preset", "window", "model")


def _check_resumable(ckpt: dict, cfg: TrainConfig, path: Path) -> None:
    missing = [k for k in ("config", "model", "optimizer", "scheduler", "epoch", "history", "best")
               if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing}: it cannot be resumed (a best.pt copied "
                         "over last.pt?); drop --resume or use another --run-dir")
    now = to_dict(cfg)
    for key in _RESUME_FIELDS:
        if ckpt["config"].get(key) != now.get(key):
            raise ValueError(f"{path}: written with {key}={ckpt['config'].get(key)!r}, this run has "
                             f"{key}={now.get(key)!r}; resume with the same --task/--preset, or use "
                             "another --run-dir")


def _resume_state(run: _Run, resume: bool) -> tuple[int, dict]:
    """(first epoch, {"history", "best"}): from ``run_dir/last.pt`` when resuming."""
    state = {"history": [], "best": {"score": -math.inf, "epoch": -1, "metrics": {}}}
    last = run.run_dir / "last.pt"
    if not (resume and last.is_file()):
        return 0, state
    ckpt = load_checkpoint(last)
    _check_resumable(ckpt, run.cfg, last)
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    return int(ckpt["epoch"]) + 1, {"history": list(ckpt["history"]), "best": dict(ckpt["best"])}


def train(cfg: TrainConfig, train_seqs: Sequence, val_seqs: Sequence, run_dir: str | Path,
          resume: bool = False, on_epoch_end: Callable[[int, dict], None] | None = None,
          progress: bool = True, prefetch: bool = True) -> TrainResult:
    """Train one task's temporal model; validate every epoch; keep best.pt and last.pt.

    ``resume=True`` continues from ``run_dir/last.pt`` (model, optimizer, scheduler, epoch,
    history); window order and dropout are seeded from (seed, epoch, rank), so a resumed run
    reaches the same result as an uninterrupted one. ``on_epoch_end(epoch, row)`` is called on
    rank 0 after each epoch's checkpoint is written. Under torchrun each rank trains on its
    shard of the windows (DDP); rank 0 validates and writes. ``cfg`` is not modified; the
    result's config is the one the run used (with the features' ``in_dim``). Each history row
    also has the training pass's ``frames_per_s`` (window frames through forward + backward, all
    ranks) and ``mfu`` (their model FLOP/s over the device's measured peak, affaccel.stages.mfu).
    ``prefetch``: on CUDA, the next batch goes to the device through pinned memory on a side
    stream while the current step runs (affaccel.data.prefetch); the numbers are the same
    either way.
    """
    from tqdm.auto import tqdm

    from affaccel import distributed

    run = _setup(cfg, train_seqs, val_seqs, Path(run_dir))
    run.prefetch = prefetch
    _measure(run)
    if run.main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        io_utils.atomic_write_json(run.run_dir / "config.json", to_dict(run.cfg))
    start, state = _resume_state(run, resume)
    log = RunLog(run.run_dir, run.main)
    for epoch in range(start, run.cfg.epochs):
        t0 = time.perf_counter()
        loss, speed = _train_epoch(run, epoch, progress)
        if run.main:
            row, score = _end_epoch(run, epoch, loss, time.perf_counter() - t0, state, speed)
            log.epoch(state["history"])
            if progress:
                tqdm.write(f"[{run.cfg.task}] epoch {epoch + 1}/{run.cfg.epochs} loss {loss:.4f} "
                           f"val {run.cfg.task} {score:.4f} ({row['epoch_seconds']:.1f}s, "
                           f"{row['frames_per_s']:.0f} frames/s, MFU {100 * row['mfu']:.2f}%)")
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
        distributed.barrier()
    log.close()
    best_model = run.model.cpu()
    if run.main:
        best_model, _ = model_from_checkpoint(load_checkpoint(run.run_dir / "best.pt"))
    best = state["best"]
    return TrainResult(run.run_dir, best["metrics"], best["epoch"], state["history"], best_model, run.cfg)


# ----------------------------------------------------------------------------- reporting
def final_table(task: str, metrics: dict, label: str = "validation") -> str:
    return format_table([(label, metrics)], table_keys(task))


def write_final_metrics(run_dir: Path, task: str, metrics: dict, best_epoch: int, bundle: Path | None,
                        extra: dict | None = None) -> Path:
    out = {"task": task, "best_epoch": best_epoch, **metrics, "bundle": str(bundle) if bundle else None,
           **(extra or {})}
    path = Path(run_dir) / "final_metrics.json"
    io_utils.atomic_write_json(path, out)
    return path
