"""Command line of stage 1: fine-tune the CLIP image encoder on expression-labelled frames
(what is trained, how, and what is written: ``affaccel.stages.finetune``).

    python -m affaccel.finetune [--data-root DIR] [--model NAME] [--epochs N] [--out DIR]
                                [--resume] [--max-steps N] [--preset auto|paper|cpu]
                                [--aux-tasks va,au|none]
    torchrun --nproc_per_node N -m affaccel.finetune ...       # data parallel (gloo/nccl)
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path

from affaccel import cli_checks
from affaccel.config import FinetuneConfig, finetune_preset
from affaccel.data.layout import add_data_arguments, data_arguments
from affaccel.stages.finetune import check_aux


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m affaccel.finetune", description=__doc__.split("\n")[0])
    add_data_arguments(p)
    p.add_argument("--preset", choices=["auto", "paper", "cpu"], default="auto",
                   help="auto: paper on a GPU, cpu otherwise")
    p.add_argument("--model", help="open_clip model name (paper: ViT-B-16; CPU: affaccel-rn-tiny)")
    p.add_argument("--pretrained", help="open_clip pretrained tag (needs the model hub); paper preset default: "
                   "openai; 'none' = random initialisation (with a warning)")
    p.add_argument("--checkpoint", help="start from this local weights file")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="effective batch size (all ranks)")
    p.add_argument("--micro-batch-size", type=int, help="frames per forward per rank")
    p.add_argument("--lr", type=float)
    p.add_argument("--frame-stride", type=int, help="train on every k-th frame of each video")
    p.add_argument("--class-weights", action="store_true", help="inverse-frequency class weights")
    p.add_argument("--aux-tasks", help="comma list of auxiliary heads: va, au; 'none' for EXPR only "
                   "(paper preset: none; CPU preset: va,au)")
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    p.add_argument("--out", default=None, help="output folder (default: AFFACCEL_HOME/runs/finetune)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--frames-backend", choices=("auto", "dali", "pil"), default=None,
                   help="frame image decoder (default auto: DALI when installed); a corrupt or "
                        "truncated image is reported and its frame left out of the loss")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_from_args(args, cuda: bool) -> FinetuneConfig:
    """The preset's config with the arguments applied. The paper preset starts from open_clip's
    "openai" weights unless --pretrained names others or --checkpoint gives a file; random
    initialisation only with ``--pretrained none``, and then with a warning."""
    preset = args.preset if args.preset != "auto" else ("paper" if cuda else "cpu")
    cfg = finetune_preset(preset, pretrained="auto")
    clip = cfg.clip
    if args.model:
        clip = replace(clip, model_name=args.model)
    if args.pretrained:
        tag = None if args.pretrained.lower() == "none" else args.pretrained
        clip = replace(clip, pretrained=tag)
    if args.checkpoint:
        clip = replace(clip, checkpoint=args.checkpoint, pretrained=None)
    if clip.pretrained is None and clip.checkpoint is None and preset == "paper":
        logging.getLogger("affaccel.finetune").warning(
            "fine-tuning %s from random initialisation (--pretrained none): the paper starts from "
            "CLIP's openai weights", clip.model_name)
    over = {"clip": clip}
    for name in ("epochs", "batch_size", "micro_batch_size", "lr", "frame_stride", "max_steps"):
        value = getattr(args, name)
        if value is not None:
            over[name] = value
    if args.class_weights:
        over["class_weights"] = True
    if getattr(args, "frames_backend", None):
        over["backend"] = args.frames_backend
    if args.aux_tasks is not None:
        names = [] if args.aux_tasks.strip() in ("", "none") else args.aux_tasks.split(",")
        over["aux_tasks"] = check_aux([n.strip() for n in names])
    return replace(cfg, **over)


def check_args(args) -> None:
    """Every argument problem found before any work (raises cli_checks.ArgError)."""
    c = cli_checks
    for flag in ("--epochs", "--batch-size", "--micro-batch-size", "--frame-stride", "--max-steps"):
        c.at_least(flag, getattr(args, flag[2:].replace("-", "_")), 1)
    c.positive_number("--lr", args.lr)
    c.device("--device", args.device)
    c.frames_backend("--frames-backend", args.frames_backend)
    c.file("--checkpoint", args.checkpoint, "weights file")
    for flag in ("--data-root", "--annotations", "--frames"):
        c.folder(flag, getattr(args, flag[2:].replace("-", "_"), None))
    c.output_folder("--out", args.out)
    if args.resume and args.out and not (Path(args.out) / "last.pt").is_file():
        raise c.ArgError(f"--resume: no checkpoint {Path(args.out) / 'last.pt'} to continue from")


def main(argv: list[str] | None = None) -> int:
    from affaccel import env
    from affaccel.device import resolve_device
    from affaccel.stages.finetune import finetune

    args = build_parser().parse_args(argv)
    status = cli_checks.report(lambda: check_args(args))
    if status is not None:
        return status
    # affaccel's own messages at INFO; open_clip logs its model building on the root logger
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("affaccel").setLevel(logging.INFO)
    device = str(resolve_device(args.device or "auto"))
    cfg = config_from_args(args, device.startswith("cuda"))
    out = Path(args.out) if args.out else env.home() / "runs" / "finetune"
    where = data_arguments(args)
    data = where["root"]
    if where["annotations"] is not None or where["frames"] is not None:
        from affaccel.data.affwild2 import load_affwild2

        data = load_affwild2(where["root"], tasks=("expr", *cfg.aux_tasks), annotations=where["annotations"],
                             frames=where["frames"])
    best = finetune(data, cfg, out, device=device, resume=args.resume, progress=not args.quiet)
    print(best)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
