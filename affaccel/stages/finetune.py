"""Stage 1: fine-tune the CLIP image encoder on expression-labelled frames (paper sec. 3.1).

Command line: ``python -m affaccel.finetune`` (``affaccel/finetune.py``); under torchrun every
rank trains its shard (data parallel, gloo/nccl).

New fully connected layer(s) on the image embedding predict the 8 expressions; every parameter is
trained with AdamW (lr 1e-4, batch 256 by default, gradient accumulation where memory is short),
cross-entropy on valid EXPR frames (optionally class-weighted), frames through the DALI pipeline
with augmentation, bf16 autocast on GPU. Each epoch ends with the validation macro F1 over the
valid EXPR frames; ``best.pt`` (highest F1) and ``last.pt`` (with optimizer state, for
``--resume``) are written atomically to the output folder, with ``config.json`` and
``history.json``. The checkpoints carry their config and the encoder's identity.

Multi-task option (ours, ``aux_tasks``; the CPU preset uses it): a second linear layer on the
embedding also predicts valence/arousal (loss 1 - CCC, through the fused CCC kernel) and the 12
action units (BCE), on the frames that carry those labels; the losses are summed, and the best
checkpoint is the one with the highest mean of the validation scores (EXPR macro F1, VA mean
CCC, AU macro F1). The feature extractor downstream uses the encoder only.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from affaccel.config import FinetuneConfig, to_dict
from affaccel.io_utils import atomic_write_json
from affaccel.stages.optim import class_weights, lr_factor

log = logging.getLogger(__name__)
EXPR_CLASSES = 8
AUX_TASKS = ("va", "au")          # auxiliary fine-tuning targets, in head-output order
AUX_OUTPUTS = {"va": 2, "au": 12}
# Columns of the label matrix of fine-tuning frames: EXPR class (-1 = none), valence, arousal
# (NaN = none), 12 AUs (-1 = none).
_EXPR_COL, _VA_COLS, _AU_COLS = 0, slice(1, 3), slice(3, 15)
LABEL_COLUMNS = 15


# -- frames ------------------------------------------------------------------------------------

def expr_frames(records: Sequence[Any], stride: int = 1, present_only: bool = True
                ) -> tuple[list[str], np.ndarray]:
    """(frame paths, labels [N] int64) of the valid EXPR frames of ``records``, every ``stride``-th.

    present_only: skip frames whose face was missing (their path points at a neighbour's image,
    which must not be taught this frame's label).
    """
    paths, labels = finetune_frames(records, stride, (), present_only)
    return paths, labels[:, _EXPR_COL].astype(np.int64)


def _no_labels(n: int) -> np.ndarray:
    """A label matrix [n, 15] with nothing labelled (EXPR/AU -1, VA NaN)."""
    lab = np.full((n, LABEL_COLUMNS), -1.0, np.float32)
    lab[:, _VA_COLS] = np.nan
    return lab


def check_aux(aux_tasks) -> tuple:
    aux = tuple(aux_tasks)
    bad = [t for t in aux if t not in AUX_TASKS]
    if bad or len(set(aux)) != len(aux):
        raise ValueError(f"aux_tasks must be distinct names among {AUX_TASKS}, got {list(aux)}")
    return tuple(t for t in AUX_TASKS if t in aux)   # canonical order = head-output order


def finetune_frames(records: Sequence[Any], stride: int = 1, aux_tasks: Sequence[str] = (),
                    present_only: bool = True) -> tuple[list[str], np.ndarray]:
    """(frame paths, label matrix [N, 15] float32) of the frames that carry a valid EXPR label or
    a valid label of one of ``aux_tasks``, every ``stride``-th per video. Columns: EXPR class
    (-1 = not labelled), valence, arousal (NaN), 12 AUs (-1). With no aux tasks: the frames with a
    valid EXPR label (:func:`expr_frames` returns them with the class ids).
    """
    if stride < 1:
        raise ValueError(f"frame stride must be >= 1, got {stride}")
    aux = check_aux(aux_tasks)
    paths: list[str] = []
    blocks: list[np.ndarray] = []
    for r in records:
        n = r.n_frames
        lab = _no_labels(n)
        ok = np.zeros(n, bool)
        for task in ("expr", *aux):
            if task not in r.labels:
                continue
            m = np.asarray(r.label_mask[task], dtype=bool)
            y = np.asarray(r.labels[task])
            if task == "expr":
                if m.any() and (y[m].min() < 0 or y[m].max() >= EXPR_CLASSES):
                    raise ValueError(f"video {r.video_id}: EXPR labels outside 0..{EXPR_CLASSES - 1}"
                                     " on frames the mask marks valid")
                lab[m, _EXPR_COL] = y[m]
            else:
                lab[m, _VA_COLS if task == "va" else _AU_COLS] = y[m]
            ok |= m
        if present_only:
            ok &= np.asarray(r.frame_present, dtype=bool)
        idx = np.flatnonzero(ok)[::stride]
        paths.extend(str(r.frame_paths[i]) for i in idx)
        blocks.append(lab[idx])
    return paths, (np.concatenate(blocks) if blocks else np.zeros((0, LABEL_COLUMNS), np.float32))


def multitask_loss(out, labels, aux_tasks: Sequence[str] = (), weight=None,
                   label_smoothing: float = 0.0):
    """(total loss, {task: loss}) of fine-tuning outputs [B, 8 + aux] against a label matrix
    [B, 15]: cross-entropy on labelled EXPR frames, 1 - CCC of tanh(VA outputs) on labelled VA
    frames (fused CCC loss), BCE-with-logits on labelled AU frames; the total is their sum.
    A task with no labelled frame in the batch adds nothing."""
    import torch
    import torch.nn.functional as F

    from affaccel.ops import ccc_loss

    out = out.float()
    terms = {}
    expr = labels[:, _EXPR_COL].long()
    ok = expr >= 0
    if bool(ok.any()):
        terms["expr"] = F.cross_entropy(out[ok, :EXPR_CLASSES], expr[ok], weight=weight,
                                        label_smoothing=label_smoothing)
    col = EXPR_CLASSES
    for task in check_aux(aux_tasks):
        k = AUX_OUTPUTS[task]
        pred = out[:, col:col + k]
        col += k
        if task == "va":
            target = labels[:, _VA_COLS]
            m = ~torch.isnan(target[:, 0])
            if int(m.sum()) >= 2:
                terms["va"] = ccc_loss(torch.tanh(pred), torch.nan_to_num(target), m)
        else:
            target = labels[:, _AU_COLS]
            m = target[:, 0] >= 0
            if bool(m.any()):
                terms["au"] = F.binary_cross_entropy_with_logits(pred[m], target[m])
    total = sum(terms.values()) if terms else out.sum() * 0.0
    return total, terms


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """ABAW EXPR score: mean F1 over the 8 classes (absent classes count as 0)."""
    from affaccel.metrics import expr_metrics

    return expr_metrics(np.asarray(y_pred), np.asarray(y_true))["f1_macro"]


def _loader(paths, labels, batch_size, encoder, device, train, cfg, seed, shard_id=0, num_shards=1,
            prefetch=True):
    from affaccel.video.frames import FrameLoader

    return FrameLoader(paths, labels=labels, batch_size=batch_size, image_size=encoder.image_size,
                       mean=encoder.mean, std=encoder.std, device=str(device),
                       train=train, augment=train and cfg.augment, seed=seed, shard_id=shard_id,
                       num_shards=num_shards, num_threads=cfg.num_threads, backend=cfg.backend,
                       prefetch=prefetch)


def evaluate(model, paths: list[str], labels: np.ndarray, cfg: FinetuneConfig, device,
             batch_size: int) -> dict:
    """Validation on the given frames; model in eval mode. ``labels``: EXPR ids [N] or the label
    matrix [N, 15] of :func:`finetune_frames`. Returns {"macro_f1", "accuracy", "loss", "n"} over
    the labelled EXPR frames, plus "va_ccc_mean" / "au_f1_macro" for ``cfg.aux_tasks``, and
    "score": the mean of the trained tasks' scores (= macro F1 without aux tasks), which picks
    the best checkpoint."""
    import torch

    from affaccel.device import autocast
    from affaccel.metrics import au_metrics, va_metrics

    aux = check_aux(cfg.aux_tasks)
    labels = np.asarray(labels)
    if labels.ndim == 1:
        mat = _no_labels(len(labels))
        mat[:, _EXPR_COL] = labels
        labels = mat
    nan = float("nan")
    if len(paths) == 0:
        return {"macro_f1": nan, "accuracy": nan, "loss": nan, "n": 0, "score": nan}
    enc = model.encoder
    width = EXPR_CLASSES + sum(AUX_OUTPUTS[t] for t in aux)
    outs = np.full((len(paths), width), np.nan, dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode(), autocast(device, enc.config.precision):
        for batch in _loader(paths, labels, batch_size, enc, device, False, cfg, cfg.seed):
            out = model(batch["images"].to(device)).float()
            outs[batch["index"].cpu().numpy()] = out[:, :width].cpu().numpy()
            undecoded = batch["index"][~batch["ok"]].numpy()
            if len(undecoded):   # corrupt / truncated images are not scored
                labels = labels.copy()
                labels[undecoded] = _no_labels(len(undecoded))
    model.train(was_training)
    if np.isnan(outs).any():
        raise RuntimeError(f"validation loader skipped {np.isnan(outs).any(1).sum()} of "
                           f"{len(paths)} frames")
    expr = labels[:, _EXPR_COL].astype(np.int64)
    ok = expr >= 0
    res = {"macro_f1": nan, "accuracy": nan, "loss": nan, "n": int(ok.sum())}
    if ok.any():
        logits = torch.from_numpy(outs[ok, :EXPR_CLASSES])
        pred = logits.argmax(1).numpy()
        res.update(macro_f1=macro_f1(expr[ok], pred), accuracy=float((pred == expr[ok]).mean()),
                   loss=float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(expr[ok]))))
    scores = [res["macro_f1"]]
    col = EXPR_CLASSES
    for task in aux:
        k = AUX_OUTPUTS[task]
        pred = outs[:, col:col + k]
        col += k
        if task == "va":
            m = ~np.isnan(labels[:, _VA_COLS.start])
            res["va_ccc_mean"] = (va_metrics(np.tanh(pred[m]), labels[m, _VA_COLS])["ccc_mean"]
                                  if m.sum() >= 2 else nan)
            scores.append(res["va_ccc_mean"])
        else:
            m = labels[:, _AU_COLS.start] >= 0
            res["au_f1_macro"] = (au_metrics(1 / (1 + np.exp(-pred[m])), labels[m, _AU_COLS])["f1_macro"]
                                  if m.any() else nan)
            scores.append(res["au_f1_macro"])
    res["score"] = float(np.nanmean(scores)) if not np.isnan(scores).all() else nan
    return res


# -- data --------------------------------------------------------------------------------------

def _records(data, aux_tasks: Sequence[str] = ()) -> list:
    """Records from a dataset root (Aff-Wild2 layout), a loaded dataset, or a record list."""
    if isinstance(data, (str, Path)):
        from affaccel.data.affwild2 import load_affwild2

        tasks = ("expr", *check_aux(aux_tasks))
        return list(load_affwild2(data, tasks=tasks, splits=("train", "val")).videos)
    if hasattr(data, "videos"):
        return list(data.videos)
    return list(data)


def _default_data_root() -> Path:
    from affaccel.data.synthetic import ensure_synthetic

    return Path(ensure_synthetic("default"))


# -- training ----------------------------------------------------------------------------------

def lr_at(cfg: FinetuneConfig, step: int, total_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``total_steps``
    (``affaccel.stages.optim.lr_factor`` with no warm-up)."""
    return cfg.lr * lr_factor(step, total_steps, 0, cfg.schedule)


def _batch_plan(cfg: FinetuneConfig, world: int) -> tuple[int, int]:
    """(micro batch per rank, accumulation steps) giving cfg.batch_size frames per step."""
    if cfg.batch_size < world:
        raise ValueError(f"batch_size {cfg.batch_size} is smaller than the number of ranks {world}")
    micro = cfg.micro_batch_size or cfg.batch_size // world
    accum = max(1, round(cfg.batch_size / (micro * world)))
    if micro * accum * world != cfg.batch_size:
        log.warning("effective batch is %d (micro %d x accum %d x ranks %d), not batch_size %d",
                    micro * accum * world, micro, accum, world, cfg.batch_size)
    return micro, accum


def _save(path: Path, model, cfg: FinetuneConfig, state: dict, optimizer=None) -> None:
    from affaccel.nn.clip import save_checkpoint

    extra = {"finetune_config": to_dict(cfg), "epoch": state["epoch"], "step": state["step"],
             "epoch_complete": state["epoch_complete"], "best_score": state["best_score"],
             "val_macro_f1": state["val_f1"], "val_score": state["val_score"],
             "history": state["history"], "aux_tasks": list(check_aux(cfg.aux_tasks))}
    if model.aux is not None:
        extra["aux_head_state"] = model.aux
    if optimizer is not None:
        extra["optimizer_state"] = optimizer.state_dict()
    save_checkpoint(path, model.encoder, model.head, **extra)


@dataclass
class _Frames:
    """The frames of one fine-tuning run: paths and label matrices [N, 15]."""
    train_paths: list
    train_y: np.ndarray
    val_paths: list
    val_y: np.ndarray


def _frames(data, cfg: FinetuneConfig) -> _Frames:
    aux = check_aux(cfg.aux_tasks)
    records = _records(data, aux)
    train_paths, train_y = finetune_frames([r for r in records if r.split == "train"],
                                           cfg.frame_stride, aux)
    val_paths, val_y = finetune_frames([r for r in records if r.split == "val"],
                                       cfg.val_frame_stride, aux, present_only=False)
    if len(train_paths) == 0:
        raise ValueError("no training frames with a valid EXPR label (split 'train')"
                         + (f" or {'/'.join(aux)} label" if aux else ""))
    return _Frames(train_paths, train_y, val_paths, val_y)


def _initial_state() -> dict:
    return {"epoch": 0, "step": 0, "epoch_complete": True, "best_score": -math.inf,
            "val_f1": None, "val_score": None, "history": []}


def _model_and_state(cfg: FinetuneConfig, last_path: Path, resume: bool, is_main: bool):
    """(FinetuneModel, run state, optimizer state or None): from ``last_path`` when resuming,
    else a new model (random init seeded by ``cfg.seed`` inside a fork of the global RNG)."""
    import torch

    from affaccel.nn.clip import FinetuneModel, build_encoder, load_finetune_checkpoint

    aux = check_aux(cfg.aux_tasks)
    state = _initial_state()
    if not (resume and last_path.exists()):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = FinetuneModel(build_encoder(cfg.clip), aux_outputs=sum(AUX_OUTPUTS[t] for t in aux))
        return model, state, None
    model, ck = load_finetune_checkpoint(last_path)
    if ck["config"]["model_name"] != cfg.clip.model_name:
        raise ValueError(f"--resume: {last_path} holds {ck['config']['model_name']}, "
                         f"the config asks for {cfg.clip.model_name}")
    if tuple(ck.get("aux_tasks", ())) != aux:
        raise ValueError(f"--resume: {last_path} was trained with aux tasks "
                         f"{list(ck.get('aux_tasks', ()))}, the config asks for {list(aux)}")
    for k in ("epoch", "step", "epoch_complete", "best_score", "history"):
        state[k] = ck[k]
    if is_main:
        log.info("resuming from %s (epoch %d, step %d)", last_path, state["epoch"], state["step"])
    return model, state, ck.get("optimizer_state")


def _expr_weight(cfg: FinetuneConfig, train_y: np.ndarray, dev):
    """Class weights of the EXPR cross-entropy (``affaccel.stages.optim.class_weights``)."""
    import torch

    if not cfg.class_weights:
        return None
    expr_y = train_y[:, _EXPR_COL].astype(np.int64)
    counts = np.bincount(expr_y[expr_y >= 0], minlength=EXPR_CLASSES)[:EXPR_CLASSES]
    return torch.as_tensor(class_weights(counts), device=dev)


def _validate_epoch(model, frames: _Frames, cfg, dev, micro, epoch, train_loss, t0, state, out: Path,
                    opt, progress, speed=None) -> None:
    """Rank 0: validation scores, the history row (with the training pass's Throughput
    ``speed``: frames_per_s, mfu), best.pt (best score) and last.pt."""
    val = evaluate(model, frames.val_paths, frames.val_y, cfg, dev, micro * 2)
    state["val_f1"], state["val_score"] = val["macro_f1"], val["score"]
    row = {"epoch": epoch, "step": state["step"], "train_loss": train_loss,
           "val_macro_f1": val["macro_f1"], "val_accuracy": val["accuracy"],
           "val_loss": val["loss"], "val_frames": val["n"],
           **{f"val_{k}": val[k] for k in ("va_ccc_mean", "au_f1_macro") if k in val},
           "val_score": val["score"], "seconds": round(time.time() - t0, 2),
           **(speed.row() if speed is not None else {})}
    state["history"].append(row)
    log.info("epoch %d: %s", epoch, json.dumps(row))
    if progress:
        extra = "".join(f"  {name} {val[k]:.4f}" for k, name in
                        (("va_ccc_mean", "val VA CCC"), ("au_f1_macro", "val AU F1")) if k in val)
        if speed is not None:
            extra += f"  {row['frames_per_s']:.1f} frames/s  MFU {100 * row['mfu']:.2f}%"
        print(f"epoch {epoch}: train loss {train_loss:.4f}  val macro F1 {val['macro_f1']:.4f}  "
              f"acc {val['accuracy']:.4f}{extra}", flush=True)
    best_path = out / "best.pt"
    improved = not math.isnan(val["score"]) and val["score"] > state["best_score"]
    if improved or not best_path.exists():
        state["best_score"] = max(state["best_score"], val["score"])
        _save(best_path, model, cfg, state)
    _save(out / "last.pt", model, cfg, state, opt)
    atomic_write_json(out / "history.json", state["history"])


def finetune(data=None, cfg: FinetuneConfig | None = None, out_dir: str | Path = "runs/finetune",
             device: str = "cpu", resume: bool = False, progress: bool = True, prefetch: bool = True) -> Path:
    """Fine-tune and return the path of the best checkpoint (``out_dir/best.pt``).

    Args:
        data: dataset root (Aff-Wild2 layout), a loaded dataset, a list of VideoRecords, or None
            for the built-in synthetic set. Videos with split "train" train, "val" validate.
        cfg: FinetuneConfig (default: the paper's settings).
        device: "cpu" or "cuda"; under torchrun each rank takes its LOCAL_RANK GPU.
        resume: continue from ``out_dir/last.pt`` when it exists.
        prefetch: on CUDA with the reference frame backend, decode the next batch while the
            current one trains and copy it through pinned memory (FrameLoader's ``prefetch``).
    Each history row has the training pass's ``frames_per_s`` and ``mfu`` (affaccel.stages.mfu).
    """
    import torch
    import torch.distributed as tdist

    from affaccel import distributed as dist

    cfg = cfg or FinetuneConfig()
    out = Path(out_dir)
    # A caller already inside a process group (e.g. the main job under torchrun) keeps it.
    owns_group = not (tdist.is_available() and tdist.is_initialized())
    info = dist.init_from_env(device)
    if info.distributed and str(device).startswith("cuda"):
        device = f"cuda:{info.local_rank}"
    dev = torch.device(device)
    try:
        if data is None:
            with dist.main_process_first():
                data = _default_data_root()
        frames = _frames(data, cfg)
        micro, accum = _batch_plan(cfg, info.world_size)
        model, state, opt_state = _model_and_state(cfg, out / "last.pt", resume, info.is_main)
        model.to(dev).train()
        ddp = dist.wrap_ddp(model, str(dev))
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        weight = _expr_weight(cfg, frames.train_y, dev)
        state.update(prefetch=prefetch, **_measure(model, dev, info.is_main))
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "config.json", {"finetune": to_dict(cfg), "device": str(dev),
                                                    "world_size": info.world_size,
                                                    "micro_batch": micro, "accum": accum,
                                                    "train_frames": len(frames.train_paths),
                                                    "val_frames": len(frames.val_paths)})
        # Every rank runs the same number of micro-batches, so DDP's collectives line up.
        micro_per_epoch = max(1, len(frames.train_paths) // info.world_size // micro)
        state["total_steps"] = cfg.max_steps or cfg.epochs * math.ceil(micro_per_epoch / accum)
        lr_at(cfg, 0, 1)  # validates the schedule name before any work
        first = state["epoch"] + (1 if state["epoch_complete"] and state["step"] > 0 else 0)
        for epoch in range(first, cfg.epochs):
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                break
            t0 = time.time()
            train_loss, speed = _train_epoch(ddp, model, opt, frames.train_paths, frames.train_y, cfg, dev,
                                             epoch, micro, accum, micro_per_epoch, weight, info, state, progress)
            state["epoch"] = epoch
            state["epoch_complete"] = not (cfg.max_steps and state["step"] >= cfg.max_steps)
            if info.is_main:
                _validate_epoch(model, frames, cfg, dev, micro, epoch, train_loss, t0, state, out, opt,
                                progress, speed)
            dist.barrier()
        return out / "best.pt"
    finally:
        if owns_group:
            dist.cleanup()


def _measure(model, dev, is_main: bool) -> dict:
    """Run-time state of the MFU figures: the model FLOPs of one training frame (forward +
    backward, counted on fake tensors) and, on rank 0, the device's measured peak FLOP/s in the
    encoder's precision (affaccel.stages.mfu). Touches no weight and no random stream."""
    import torch

    from affaccel.device import resolve_precision
    from affaccel.stages import mfu

    size = model.encoder.image_size
    flops = mfu.train_flops(model, [((1, 3, size, size), torch.float32)])
    kind = mfu.peak_kind(dev, resolve_precision(model.encoder.config.precision, dev))
    return {"flops_per_frame": float(flops), "peak": mfu.peak_flops(dev, kind) if is_main else 0.0}


def _train_epoch(ddp, model, opt, paths, labels, cfg, dev, epoch, micro, accum, micro_per_epoch,
                 weight, info, state, progress):
    """One pass over this rank's shard; returns (the mean training loss of its micro-batches,
    the pass's Throughput)."""
    import torch
    from tqdm.auto import tqdm

    from affaccel.stages.mfu import Throughput

    t0 = time.perf_counter()
    loader = _loader(paths, labels, micro, model.encoder, dev, True, cfg, seed=cfg.seed,
                     shard_id=info.rank, num_shards=info.world_size, prefetch=state.get("prefetch", True))
    loader.set_epoch(epoch)  # the epoch picks the shuffle and augmentation streams (resumable)
    bar = tqdm(total=micro_per_epoch, desc=f"finetune epoch {epoch}", unit="batch",
               disable=not (progress and info.is_main))
    # the head's dropout draws from the global generator: seeded per (seed, epoch, rank) in a
    # fork, so a resumed run repeats an uninterrupted one and the caller's RNG is left alone
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(cfg.seed * 100003 + epoch * 1009 + info.rank)
        losses, n_frames = _run_micro_batches(ddp, model, opt, loader, cfg, weight, dev, accum,
                                              micro_per_epoch, state, bar)
    i = len(losses)
    bar.close()
    if i < micro_per_epoch and not (cfg.max_steps and state["step"] >= cfg.max_steps):
        raise RuntimeError(f"rank {info.rank}: the frame loader gave {i} batches, expected "
                           f"{micro_per_epoch}")
    mean = float(torch.stack(losses).float().mean()) if losses else float("nan")  # waits for the device
    speed = Throughput(n_frames * info.world_size, time.perf_counter() - t0, state.get("flops_per_frame", 0.0),
                       state.get("peak", 0.0), info.world_size)
    return mean, speed


def _mask_undecoded(batch):
    """The batch's labels with frames whose image did not decode (``ok`` False: corrupt or
    truncated file, a grey placeholder was fed) marked unlabelled, so they train nothing."""
    import torch

    labels, ok = batch["labels"], batch.get("ok")
    if ok is None or bool(ok.all()):
        return labels
    labels = labels.clone()
    labels[~ok.to(labels.device)] = torch.from_numpy(_no_labels(1)).to(labels.device, labels.dtype)
    return labels


def _run_micro_batches(ddp, model, opt, loader, cfg, weight, dev, accum, micro_per_epoch, state,
                       bar) -> tuple[list, int]:
    """Forward/backward over the loader's micro-batches, an optimizer step per ``accum`` of
    them; returns (the detached losses, the number of frames trained on)."""
    import contextlib

    import torch

    from affaccel.device import autocast

    losses, i, n_frames = [], 0, 0
    opt.zero_grad(set_to_none=True)
    for batch in loader:
        if i >= micro_per_epoch or (cfg.max_steps and state["step"] >= cfg.max_steps):
            break
        group_end = (i + 1) % accum == 0 or i + 1 == micro_per_epoch
        # The last group of an epoch may be shorter than accum micro-batches.
        group_len = accum if (i // accum + 1) * accum <= micro_per_epoch else micro_per_epoch % accum
        sync = contextlib.nullcontext() if group_end or not hasattr(ddp, "no_sync") else ddp.no_sync()
        with sync:
            with autocast(dev, model.encoder.config.precision):
                logits = ddp(batch["images"].to(dev, non_blocking=True))
            loss, _ = multitask_loss(logits, _mask_undecoded(batch).to(dev), cfg.aux_tasks, weight,
                                     cfg.label_smoothing)
            (loss / group_len).backward()
        losses.append(loss.detach())
        n_frames += int(batch["images"].shape[0])
        if group_end:
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, state["step"], state["total_steps"])
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            state["step"] += 1
        i += 1
        bar.update(1)
        if i % 10 == 1 and not bar.disable:   # reading the loss back syncs with the device
            bar.set_postfix(loss=f"{float(losses[-1]):.3f}")
    return losses, n_frames
