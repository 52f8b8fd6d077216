"""Stage 2: per-frame CLIP features of every video into the feature cache.

    python -m affaccel.extract [--data-root DIR] [--checkpoint PATH] [--cache DIR]

Every frame of every train/val video runs through the encoder (the fine-tuned checkpoint given,
else the open_clip model named by --model/--pretrained) in frame order, batched, bf16 on GPU.
Features go to ``<cache>/<encoder key>/<video>.npy`` (float16 [T, D]); videos already there are
skipped, so an interrupted run resumes and a run with nothing to do returns in seconds.
Prints the cache folder last.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def default_cache_root() -> Path:
    from affaccel import env

    return env.home() / "features"


def load_encoder(checkpoint: str | None = None, model: str | None = None,
                 pretrained: str | None = None):
    """The encoder to extract with: an affaccel checkpoint, or an open_clip model (tag or random)."""
    from affaccel.nn.clip import CPU_MODEL, ClipConfig, build_encoder, load_encoder_checkpoint

    if checkpoint:
        if model or pretrained:
            raise ValueError("--checkpoint already fixes the model; drop --model/--pretrained")
        return load_encoder_checkpoint(checkpoint)
    return build_encoder(ClipConfig(model_name=model or CPU_MODEL, pretrained=pretrained)).eval()


def run(data_root=None, checkpoint=None, cache_root=None, model=None, pretrained=None,
        batch_size: int = 256, device: str = "cpu", splits=("train", "val"), progress=True,
        verify: bool = False) -> tuple[Path, dict]:
    """Extract features for every video of ``data_root`` (default: built-in synthetic set).

    Returns (cache folder of this encoder, summary from ``extract_features``).
    """
    from affaccel.data.affwild2 import load_affwild2
    from affaccel.features import FeatureCache, extract_features

    if data_root is None:
        from affaccel.data.synthetic import ensure_synthetic

        data_root = ensure_synthetic("default")
    records = list(load_affwild2(data_root, splits=tuple(splits)).videos)
    encoder = load_encoder(checkpoint, model, pretrained)
    cache = FeatureCache.for_encoder(cache_root or default_cache_root(), encoder)
    summary = extract_features(records, encoder, cache, batch_size=batch_size, device=device,
                               progress=progress, verify=verify)
    return cache.dir, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m affaccel.extract", description=__doc__.split("\n")[0])
    p.add_argument("--data-root", help="Aff-Wild2-layout dataset (default: built-in synthetic set)")
    p.add_argument("--checkpoint", help="affaccel CLIP checkpoint (e.g. the fine-tuned best.pt)")
    p.add_argument("--model", help="open_clip model name when no checkpoint (default: affaccel-rn-tiny, the CPU preset)")
    p.add_argument("--pretrained", help="open_clip pretrained tag (needs the model hub)")
    p.add_argument("--cache", help="feature cache root (default: AFFACCEL_HOME/features)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--splits", default="train,val", help="comma-separated: train,val")
    p.add_argument("--verify", action="store_true", help="CRC-check cached entries before skipping")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    # affaccel's own messages at INFO; open_clip logs its model building on the root logger
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("affaccel").setLevel(logging.INFO)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.time()
    cache_dir, summary = run(args.data_root, args.checkpoint, args.cache, args.model,
                             args.pretrained, args.batch_size, device,
                             tuple(s for s in args.splits.split(",") if s), not args.quiet,
                             args.verify)
    dt = time.time() - t0
    print(f"extracted {len(summary['extracted'])} videos ({summary['frames']} frames), "
          f"skipped {len(summary['skipped'])} already cached, failed {len(summary['failed'])}, "
          f"{dt:.1f} s", file=sys.stderr)
    for vid, err in summary["failed"].items():
        print(f"FAILED {vid}: {err}", file=sys.stderr)
    print(cache_dir)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
