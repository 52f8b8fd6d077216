"""``python -m affaccel.emoclip.train``: train EmoCLIP on an Aff-Wild2-format set (default: the
built-in synthetic set with generated sample-level captions).

    python -m affaccel.emoclip.train --out runs/emoclip [--preset cpu|paper] [--supervision sample|class]
        [--visual-checkpoint stage1/best.pt] [--exclude Surprise] [--epochs N] [--seed S]
        [--dataset mafw|dfew|ferv39k|afew --data-root R [--fold K] [--mafw-labels single|compound]]

Writes ``<out>/last.pt`` (loads with ``affaccel.emoclip.model.load_emoclip``), ``config.json``,
``history.json`` and ``metrics.json`` (validation caption -> clip R@1, zero-shot WAR/UAR, and the
held-out classes' recall with ``--exclude``); prints the metrics as JSON.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from affaccel.emoclip.datasets import add_dataset_arguments, clips_from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m affaccel.emoclip.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--data-root", help="Aff-Wild2-layout dataset (default: built-in synthetic set), or the "
                   "--dataset's root")
    add_dataset_arguments(p)
    p.add_argument("--preset", default="auto", choices=("auto", "paper", "cpu", "tiny"),
                   help="auto: paper with a GPU, cpu otherwise")
    p.add_argument("--supervision", choices=("sample", "class"), help="captions or class descriptions")
    p.add_argument("--labels", help="class descriptions: built-in set name or YAML/JSON file")
    p.add_argument("--model", help="open_clip architecture")
    p.add_argument("--pretrained", help="open_clip tag for both towers (needs the model hub)")
    p.add_argument("--clip-checkpoint", help="local CLIP state dict for both towers")
    p.add_argument("--visual-checkpoint", help="affaccel-clip checkpoint (stage 1) for the image tower")
    p.add_argument("--train-visual", action="store_true", help="fine-tune the image tower")
    p.add_argument("--train-text", action="store_true", help="fine-tune the text tower")
    p.add_argument("--exclude", action="append", default=[], help="class left out of training (repeatable)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto / cpu / cuda")
    p.add_argument("--cache", help="feature cache root (default: AFFACCEL_HOME/features)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from affaccel.device import resolve_device
    from affaccel.emoclip.config import emoclip_config
    from affaccel.emoclip.fit import run_training

    preset = args.preset
    if preset == "auto":
        preset = "paper" if resolve_device("auto").type == "cuda" else "cpu"
    model = {k: v for k, v in (("model_name", args.model), ("pretrained", args.pretrained),
                               ("clip_checkpoint", args.clip_checkpoint),
                               ("visual_checkpoint", args.visual_checkpoint)) if v is not None}
    try:
        clips = clips_from_args(args)
        labels = args.labels or (clips.name if clips is not None else None)   # the set's own classes
        cfg = emoclip_config(preset, model=model or None, supervision=args.supervision, labels=labels,
                             epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             device=args.device, exclude_classes=tuple(args.exclude) or None,
                             freeze_visual=False if args.train_visual else None,
                             freeze_text=False if args.train_text else None)
        metrics = run_training(cfg, args.out, args.data_root, args.cache, progress=not args.no_progress, clips=clips)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
