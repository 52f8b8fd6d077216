"""Stage 1: fine-tune the CLIP image encoder on expression-labelled frames (paper sec. 3.1).

    python -m affaccel.finetune [--data-root DIR] [--model NAME] [--epochs N] [--out DIR]
                                [--resume] [--max-steps N] [--preset auto|paper|cpu]
    torchrun --nproc_per_node N -m affaccel.finetune ...       # data parallel (gloo/nccl)

New fully connected layer(s) on the image embedding predict the 8 expressions; every parameter is
trained with AdamW (lr 1e-4, batch 256 by default, gradient accumulation where memory is short),
cross-entropy on valid EXPR frames (optionally class-weighted), frames through the DALI pipeline
with augmentation, bf16 autocast on GPU. Each epoch ends with the validation macro F1 over the
valid EXPR frames; ``best.pt`` (highest F1) and ``last.pt`` (with optimizer state, for
``--resume``) are written atomically to the output folder, with ``config.json`` and
``history.json``. The checkpoints carry their config and the encoder's identity.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from affaccel.config import PAPER_FINETUNE_BATCH, PAPER_FINETUNE_LR, register_config, to_dict
from affaccel.io_utils import atomic_write_json
from affaccel.nn.clip import TINY_MODEL, ClipConfig

log = logging.getLogger(__name__)
EXPR_CLASSES = 8


@register_config
@dataclass
class FinetuneConfig:
    clip: ClipConfig = field(default_factory=ClipConfig)  # encoder + head (paper: ViT-B-16)
    lr: float = PAPER_FINETUNE_LR          # paper sec. 3.1: AdamW learning rate
    batch_size: int = PAPER_FINETUNE_BATCH  # paper sec. 3.1: effective batch (all ranks, accumulated)
    micro_batch_size: int = 0              # frames per forward per rank; 0 = batch_size / ranks
    weight_decay: float = 0.05             # ours (not given by the paper)
    epochs: int = 5                        # ours
    max_steps: int = 0                     # stop after this many optimizer steps (0 = no limit)
    frame_stride: int = 1                  # ours: train on every k-th usable frame of each video
    val_frame_stride: int = 1              # ours: validate on every k-th valid frame (1 = all)
    class_weights: bool = False            # inverse-frequency class weights in the cross-entropy
    label_smoothing: float = 0.0           # ours
    grad_clip: float = 1.0                 # ours: max gradient norm (0 = off)
    augment: bool = True                   # DALI training augmentation (the loader's train mode)
    seed: int = 0                          # shuffling / augmentation seed
    num_threads: int = 2                   # DALI CPU threads per process
    backend: str = "auto"                  # frame loader backend (see affaccel.video.frames)


def paper_preset() -> FinetuneConfig:
    """The paper's settings (ViT-B-16, AdamW lr 1e-4, batch 256) - meant for a GPU."""
    return FinetuneConfig()


def cpu_preset() -> FinetuneConfig:
    """Small CPU run (about 2-3 minutes on 2 cores on the built-in synthetic set): the tiny
    encoder from random init, every 4th frame, 3 epochs. lr is higher than the paper's because
    the tiny model starts from random weights, not from CLIP's (ours)."""
    return FinetuneConfig(clip=ClipConfig(model_name=TINY_MODEL), lr=5e-4, batch_size=64,
                          epochs=3, frame_stride=4, val_frame_stride=2, weight_decay=0.05)


PRESETS = {"paper": paper_preset, "cpu": cpu_preset}


# -- frames ------------------------------------------------------------------------------------

def expr_frames(records: Sequence[Any], stride: int = 1, present_only: bool = True
                ) -> tuple[list[str], np.ndarray]:
    """(frame paths, labels [N] int64) of the valid EXPR frames of ``records``, every ``stride``-th.

    present_only: skip frames whose face was missing (their path points at a neighbour's image,
    which must not be taught this frame's label).
    """
    if stride < 1:
        raise ValueError(f"frame stride must be >= 1, got {stride}")
    paths: list[str] = []
    labels: list[np.ndarray] = []
    for r in records:
        if "expr" not in r.labels:
            continue
        y = np.asarray(r.labels["expr"], dtype=np.int64)
        ok = np.asarray(r.label_mask["expr"], dtype=bool)
        if present_only:
            ok = ok & np.asarray(r.frame_present, dtype=bool)
        idx = np.flatnonzero(ok)[::stride]
        if idx.size and (y[idx].min() < 0 or y[idx].max() >= EXPR_CLASSES):
            raise ValueError(f"video {r.video_id}: EXPR labels outside 0..{EXPR_CLASSES - 1} "
                             "on frames the mask marks valid")
        paths.extend(str(r.frame_paths[i]) for i in idx)
        labels.append(y[idx])
    return paths, (np.concatenate(labels) if labels else np.zeros(0, np.int64))


def class_weights(labels: np.ndarray, n_classes: int = EXPR_CLASSES) -> np.ndarray:
    """Inverse-frequency weights [C], mean 1 over present classes; absent classes get 1."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.ones(n_classes)
    present = counts > 0
    w[present] = counts[present].sum() / (present.sum() * counts[present])
    return w.astype(np.float32)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """ABAW EXPR score: mean F1 over the 8 classes (absent classes count as 0)."""
    from affaccel.metrics import expr_metrics

    return expr_metrics(np.asarray(y_pred), np.asarray(y_true))["f1_macro"]


def _loader(paths, labels, batch_size, encoder, device, train, cfg, seed, shard_id=0, num_shards=1):
    from affaccel.video.frames import FrameLoader

    return FrameLoader(paths, labels=labels, batch_size=batch_size, image_size=encoder.image_size,
                       mean=encoder.mean, std=encoder.std, device=str(device),
                       train=train, augment=train and cfg.augment, seed=seed, shard_id=shard_id,
                       num_shards=num_shards, num_threads=cfg.num_threads, backend=cfg.backend)


def evaluate(model, paths: list[str], labels: np.ndarray, cfg: FinetuneConfig, device,
             batch_size: int) -> dict:
    """Validation on the given frames: {"macro_f1", "accuracy", "loss", "n"}; model in eval mode."""
    import torch

    from affaccel.nn.clip import autocast

    if len(paths) == 0:
        return {"macro_f1": float("nan"), "accuracy": float("nan"), "loss": float("nan"), "n": 0}
    enc = model.encoder
    preds = np.full(len(paths), -1, dtype=np.int64)
    loss_sum = 0.0
    was_training = model.training
    model.eval()
    with torch.inference_mode(), autocast(device, enc.config.precision):
        for batch in _loader(paths, labels, batch_size, enc, device, False, cfg, cfg.seed):
            logits = model(batch["images"].to(device)).float()
            y = batch["labels"].to(device).long()
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            preds[batch["index"].cpu().numpy()] = logits.argmax(1).cpu().numpy()
    model.train(was_training)
    if (preds < 0).any():
        raise RuntimeError(f"validation loader skipped {(preds < 0).sum()} of {len(paths)} frames")
    return {"macro_f1": macro_f1(labels, preds), "accuracy": float((preds == labels).mean()),
            "loss": loss_sum / len(paths), "n": len(paths)}


# -- data --------------------------------------------------------------------------------------

def _records(data) -> list:
    """Records from a dataset root (Aff-Wild2 layout), a loaded dataset, or a record list."""
    if isinstance(data, (str, Path)):
        from affaccel.data.affwild2 import load_affwild2

        return list(load_affwild2(data, tasks=("expr",), splits=("train", "val")).videos)
    if hasattr(data, "videos"):
        return list(data.videos)
    return list(data)


def _default_data_root() -> Path:
    from affaccel.data.synthetic import ensure_synthetic

    return Path(ensure_synthetic("default"))


# -- training ----------------------------------------------------------------------------------

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
             "epoch_complete": state["epoch_complete"], "best_f1": state["best_f1"],
             "val_macro_f1": state["val_f1"], "history": state["history"]}
    if optimizer is not None:
        extra["optimizer_state"] = optimizer.state_dict()
    save_checkpoint(path, model.encoder, model.head, **extra)


def finetune(data=None, cfg: FinetuneConfig | None = None, out_dir: str | Path = "runs/finetune",
             device: str = "cpu", resume: bool = False, progress: bool = True) -> Path:
    """Fine-tune and return the path of the best checkpoint (``out_dir/best.pt``).

    Args:
        data: dataset root (Aff-Wild2 layout), a loaded dataset, a list of VideoRecords, or None
            for the built-in synthetic set. Videos with split "train" train, "val" validate.
        cfg: FinetuneConfig (default: the paper's settings).
        device: "cpu" or "cuda"; under torchrun each rank takes its LOCAL_RANK GPU.
        resume: continue from ``out_dir/last.pt`` when it exists.
    """
    import torch

    from affaccel import distributed as dist
    from affaccel.nn.clip import FinetuneModel, build_encoder, load_finetune_checkpoint

    import torch.distributed as tdist

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
        records = _records(data)
        train_paths, train_y = expr_frames([r for r in records if r.split == "train"],
                                           cfg.frame_stride)
        val_paths, val_y = expr_frames([r for r in records if r.split == "val"],
                                       cfg.val_frame_stride, present_only=False)
        if len(train_paths) == 0:
            raise ValueError("no training frames with a valid EXPR label (split 'train')")
        micro, accum = _batch_plan(cfg, info.world_size)

        torch.manual_seed(cfg.seed)
        last_path, best_path = out / "last.pt", out / "best.pt"
        state = {"epoch": 0, "step": 0, "epoch_complete": True, "best_f1": -1.0, "val_f1": None,
                 "history": []}
        opt_state = None
        if resume and last_path.exists():
            model, ck = load_finetune_checkpoint(last_path)
            if ck["config"]["model_name"] != cfg.clip.model_name:
                raise ValueError(f"--resume: {last_path} holds {ck['config']['model_name']}, "
                                 f"the config asks for {cfg.clip.model_name}")
            for k in ("epoch", "step", "epoch_complete", "best_f1", "history"):
                state[k] = ck[k]
            opt_state = ck.get("optimizer_state")
            if info.is_main:
                log.info("resuming from %s (epoch %d, step %d)", last_path, state["epoch"],
                         state["step"])
        else:
            model = FinetuneModel(build_encoder(cfg.clip))
        model.to(dev).train()
        ddp = dist.wrap_ddp(model, str(dev))
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        weight = (torch.as_tensor(class_weights(train_y), device=dev) if cfg.class_weights
                  else None)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "config.json", {"finetune": to_dict(cfg), "device": str(dev),
                                                    "world_size": info.world_size,
                                                    "micro_batch": micro, "accum": accum,
                                                    "train_frames": len(train_paths),
                                                    "val_frames": len(val_paths)})
        # Every rank runs the same number of micro-batches, so DDP's collectives line up.
        per_rank = len(train_paths) // info.world_size
        micro_per_epoch = max(1, per_rank // micro)
        first = state["epoch"] + (1 if state["epoch_complete"] and state["step"] > 0 else 0)
        for epoch in range(first, cfg.epochs):
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                break
            t0 = time.time()
            train_loss = _train_epoch(ddp, model, opt, train_paths, train_y, cfg, dev, epoch,
                                      micro, accum, micro_per_epoch, weight, info, state, progress)
            state["epoch"] = epoch
            state["epoch_complete"] = not (cfg.max_steps and state["step"] >= cfg.max_steps)
            if info.is_main:
                val = evaluate(model, val_paths, val_y, cfg, dev, micro * 2)
                state["val_f1"] = val["macro_f1"]
                row = {"epoch": epoch, "step": state["step"], "train_loss": train_loss,
                       "val_macro_f1": val["macro_f1"], "val_accuracy": val["accuracy"],
                       "val_loss": val["loss"], "val_frames": val["n"],
                       "seconds": round(time.time() - t0, 2)}
                state["history"].append(row)
                log.info("epoch %d: %s", epoch, json.dumps(row))
                if progress:
                    print(f"epoch {epoch}: train loss {train_loss:.4f}  "
                          f"val macro F1 {val['macro_f1']:.4f}  acc {val['accuracy']:.4f}",
                          flush=True)
                improved = not math.isnan(val["macro_f1"]) and val["macro_f1"] > state["best_f1"]
                if improved or not best_path.exists():
                    state["best_f1"] = max(state["best_f1"], val["macro_f1"])
                    _save(best_path, model, cfg, state)
                _save(last_path, model, cfg, state, opt)
                atomic_write_json(out / "history.json", state["history"])
            dist.barrier()
        return best_path
    finally:
        if owns_group:
            dist.cleanup()


def _train_epoch(ddp, model, opt, paths, labels, cfg, dev, epoch, micro, accum, micro_per_epoch,
                 weight, info, state, progress) -> float:
    """One pass over this rank's shard; returns the mean training loss of its micro-batches."""
    import contextlib

    import torch
    from tqdm.auto import tqdm

    from affaccel.nn.clip import autocast

    loader = _loader(paths, labels, micro, model.encoder, dev, True, cfg, seed=cfg.seed,
                     shard_id=info.rank, num_shards=info.world_size)
    loader.set_epoch(epoch)  # the epoch picks the shuffle and augmentation streams (resumable)
    bar = tqdm(total=micro_per_epoch, desc=f"finetune epoch {epoch}", unit="batch",
               disable=not (progress and info.is_main))
    losses, i = [], 0
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
            y = batch["labels"].to(dev).long()
            loss = torch.nn.functional.cross_entropy(logits.float(), y, weight=weight,
                                                     label_smoothing=cfg.label_smoothing)
            (loss / group_len).backward()
        losses.append(float(loss.detach()))
        if group_end:
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            state["step"] += 1
        i += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    if i < micro_per_epoch and not (cfg.max_steps and state["step"] >= cfg.max_steps):
        raise RuntimeError(f"rank {info.rank}: the frame loader gave {i} batches, expected "
                           f"{micro_per_epoch}")
    return float(np.mean(losses)) if losses else float("nan")


# -- command line ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m affaccel.finetune", description=__doc__.split("\n")[0])
    p.add_argument("--data-root", help="Aff-Wild2-layout dataset (default: built-in synthetic set)")
    p.add_argument("--preset", choices=["auto", "paper", "cpu"], default="auto",
                   help="auto: paper on a GPU, cpu otherwise")
    p.add_argument("--model", help="open_clip model name (paper: ViT-B-16; CPU: affaccel-vit-tiny)")
    p.add_argument("--pretrained", help="open_clip pretrained tag, e.g. openai (needs the model hub)")
    p.add_argument("--checkpoint", help="start from this local weights file")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="effective batch size (all ranks)")
    p.add_argument("--micro-batch-size", type=int, help="frames per forward per rank")
    p.add_argument("--lr", type=float)
    p.add_argument("--frame-stride", type=int, help="train on every k-th frame of each video")
    p.add_argument("--class-weights", action="store_true", help="inverse-frequency class weights")
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    p.add_argument("--out", default=None, help="output folder (default: AFFACCEL_HOME/runs/finetune)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_from_args(args, cuda: bool) -> FinetuneConfig:
    preset = args.preset if args.preset != "auto" else ("paper" if cuda else "cpu")
    cfg = PRESETS[preset]()
    clip = cfg.clip
    if args.model:
        clip = replace(clip, model_name=args.model)
    if args.pretrained:
        clip = replace(clip, pretrained=args.pretrained)
    if args.checkpoint:
        clip = replace(clip, checkpoint=args.checkpoint)
    over = {"clip": clip}
    for name in ("epochs", "batch_size", "micro_batch_size", "lr", "frame_stride", "max_steps"):
        value = getattr(args, name)
        if value is not None:
            over[name] = value
    if args.class_weights:
        over["class_weights"] = True
    return replace(cfg, **over)


def main(argv: list[str] | None = None) -> int:
    import torch

    from affaccel import env

    args = build_parser().parse_args(argv)
    # affaccel's own messages at INFO; open_clip logs its model building on the root logger
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("affaccel").setLevel(logging.INFO)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = config_from_args(args, device.startswith("cuda"))
    out = Path(args.out) if args.out else env.home() / "runs" / "finetune"
    best = finetune(args.data_root, cfg, out, device=device, resume=args.resume,
                    progress=not args.quiet)
    print(best)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
