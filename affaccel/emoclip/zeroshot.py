"""``python -m affaccel.emoclip.zeroshot``: zero-shot expression recognition of the clips of an
Aff-Wild2-format set (default: the built-in synthetic set) with an EmoCLIP checkpoint.

    python -m affaccel.emoclip.zeroshot --checkpoint runs/emoclip/last.pt --out eval/ \
        [--labels affaccel|affaccel-paraphrase|labels.yaml] [--split val|train|all] \
        [--dataset mafw|dfew|ferv39k|afew --data-root R [--fold K]]

With ``--dataset`` the default labels are the data set's own classes and ``--split val`` is its
test list (the fold's, for MAFW / DFEW).

Writes ``<out>/zeroshot.json`` (WAR, UAR, per-class recall, confusion matrix; rows = true class)
and ``<out>/confusion.png``; prints the JSON. Checkpoints of the EmoCLIP code load too
(``--model`` / ``--heads`` describe them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from affaccel.emoclip.datasets import add_dataset_arguments, clips_from_args


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m affaccel.emoclip.zeroshot", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="affaccel EmoCLIP checkpoint or EmoCLIP-code .pth")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--labels", help="built-in set or YAML/JSON file (default: the checkpoint's)")
    p.add_argument("--data-root", help="Aff-Wild2-layout dataset (default: built-in synthetic set), or the "
                   "--dataset's root")
    add_dataset_arguments(p)
    p.add_argument("--split", default="val", choices=("val", "train", "all"))
    p.add_argument("--classes", help="comma list: score only clips of these classes (e.g. the held-out one)")
    p.add_argument("--model", help="open_clip architecture of an EmoCLIP-code checkpoint")
    p.add_argument("--heads", type=int, help="attention heads of an EmoCLIP-code checkpoint (default 8)")
    p.add_argument("--cache", help="feature cache root")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    from affaccel.emoclip.evaluate import evaluate_checkpoint, plot_confusion
    from affaccel.io_utils import atomic_write_json

    try:
        report = evaluate_checkpoint(a.checkpoint, a.labels, a.data_root, a.split, a.cache,
                                     classes=a.classes.split(",") if a.classes else None,
                                     model_name=a.model, heads=a.heads, progress=not a.no_progress,
                                     clips=clips_from_args(a))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report.pop("probs", None)
    atomic_write_json(out / "zeroshot.json", report)
    plot_confusion(report, out / "confusion.png")
    print(json.dumps({k: report[k] for k in ("war", "uar", "n_clips", "per_class_recall")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
