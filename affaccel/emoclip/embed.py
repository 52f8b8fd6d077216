"""``python -m affaccel.emoclip.embed``: clip embeddings of an Aff-Wild2-format set (default: the
built-in synthetic set) for downstream regression (EmoCLIP's symptom-severity use).

    python -m affaccel.emoclip.embed --checkpoint runs/emoclip/last.pt --out clips.npz [--split all]

The NPZ holds ``video_id``, ``start``, ``end`` (frames), ``expression`` and ``embedding`` [N, D]
(L2-normalised clip embeddings of the centred clip of each labelled segment).
"""
from __future__ import annotations

import argparse
import sys

from affaccel.emoclip.datasets import add_dataset_arguments, clips_from_args


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m affaccel.emoclip.embed", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--data-root", help="Aff-Wild2-layout dataset (default: built-in synthetic set), or the "
                   "--dataset's root")
    add_dataset_arguments(p)
    p.add_argument("--split", default="all", choices=("val", "train", "all"))
    p.add_argument("--model", help="open_clip architecture of an EmoCLIP-code checkpoint")
    p.add_argument("--heads", type=int, help="attention heads of an EmoCLIP-code checkpoint")
    p.add_argument("--cache", help="feature cache root")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    from affaccel.emoclip.evaluate import embed_checkpoint

    try:
        path, n = embed_checkpoint(a.checkpoint, a.out, a.data_root, a.split, a.cache, a.model, a.heads,
                                   progress=not a.no_progress, clips=clips_from_args(a))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{n} clip embeddings -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
