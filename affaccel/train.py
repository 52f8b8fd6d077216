"""The main job's command line: ``python -m affaccel.train --task va``.

It runs every stage the main job needs (``affaccel.stages.pipeline``): the built-in synthetic
set, CLIP fine-tuning and feature extraction (each cached), then the temporal model (stage 3,
``affaccel.stages.temporal.train``), and prints the final table. ``--data-root`` trains on
Aff-Wild2 with the paper's configuration; ``--folds 5`` runs the 5-fold protocol.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from affaccel import cli_checks
from affaccel.config import PRESET_NAMES, JobSpec
from affaccel.data.layout import add_data_arguments, data_arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m affaccel.train", description=(
        "Train the temporal model of one task. With no --data-root: the built-in synthetic set, "
        "with every stage it needs (fine-tune, extract; cached). With --data-root the reader is lenient: a bad "
        "annotation file drops that task for that video, a video without frame images is left out, a corrupt "
        "frame image is masked like a missing frame; each is warned about and listed (file, reason) under the "
        "final table and in final_metrics.json ('skipped')."))
    p.add_argument("--task", choices=["va", "expr", "au"], default="va")
    add_data_arguments(p)
    p.add_argument("--folds", type=int, default=0,
                   help="k > 1: the paper's k-fold protocol (fold 0 = the official split, folds 1..k-1 "
                        "rotate chunks of the training videos with the validation set)")
    p.add_argument("--run-dir", type=Path, default=None, help="default: $AFFACCEL_HOME/runs/<task>-<time>")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from last.pt")
    p.add_argument("--preset", choices=sorted(PRESET_NAMES), default=None,
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
    p.add_argument("--frames-backend", choices=("auto", "dali", "pil"), default="auto",
                   help="frame image decoder of fine-tuning and extraction: DALI (nvJPEG on GPU) or PIL; auto: "
                        "DALI when installed. Either way a corrupt or truncated image is reported and masked")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def check_args(args) -> None:
    """Every argument problem found before any work (raises cli_checks.ArgError)."""
    from affaccel import cli_checks as c

    c.at_least("--epochs", args.epochs, 1)
    c.positive_number("--lr", args.lr)
    c.at_least("--batch-size", args.batch_size, 1)
    c.at_least("--seed", args.seed, 0)
    if args.folds not in (0, None) and args.folds < 2:
        raise c.ArgError(f"--folds must be 0 (official split) or >= 2, got {args.folds}")
    c.device("--device", args.device)
    c.frames_backend("--frames-backend", args.frames_backend)
    for flag in ("--data-root", "--annotations", "--frames"):
        c.folder(flag, getattr(args, flag[2:].replace("-", "_"), None))
    c.output_folder("--run-dir", args.run_dir)
    if args.resume:
        if args.run_dir is None:
            raise c.ArgError("--resume needs --run-dir (the run to continue)")
        if not args.folds and not (Path(args.run_dir) / "last.pt").is_file():
            raise c.ArgError(f"--resume: no checkpoint {Path(args.run_dir) / 'last.pt'} to continue from; "
                             "drop --resume to start a new run")
        if args.folds and not Path(args.run_dir).is_dir():
            raise c.ArgError(f"--resume: run folder {args.run_dir} does not exist")


def main(argv: Sequence[str] | None = None) -> int:
    from affaccel.stages import pipeline

    args = build_parser().parse_args(argv)
    status = cli_checks.report(lambda: check_args(args))
    if status is not None:
        return status
    model = {}
    if args.no_tcn:
        model["use_tcn"] = False
    if args.no_transformer:
        model["use_transformer"] = False
    overrides = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                     device=args.device, class_weights=args.class_weights, model=model or None)
    try:
        data = data_arguments(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    job = JobSpec(task=args.task, data_root=data["root"], annotations=data["annotations"], frames=data["frames"],
                  run_dir=args.run_dir, resume=args.resume,
                  preset=args.preset, synthetic=args.synthetic, finetune=not args.no_finetune,
                  pretrained=None if args.pretrained == "none" else args.pretrained,
                  overrides=overrides, progress=not args.quiet, frames_backend=args.frames_backend)
    if args.folds and args.folds > 1:
        pipeline.run_folds(job, args.folds)
    else:
        pipeline.run_job(job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
