"""Command line of stage 2: per-frame CLIP features of every video into the feature cache.

    python -m affaccel.extract [--data-root DIR] [--checkpoint PATH] [--cache DIR]

Every frame of every train/val video runs through the encoder (the fine-tuned checkpoint given,
else the open_clip model named by --model/--pretrained) in frame order, batched, bf16 on GPU.
Features go to ``<cache>/<encoder key>/<video>.npy`` (float16 [T, D]); videos already there are
skipped, so an interrupted run resumes and a run with nothing to do returns in seconds.
Prints the cache folder last.

``torchrun --nproc_per_node N -m affaccel.extract ...`` shards the videos still to extract over N
processes (one GPU each; gloo on CPU) by frame count; rank 0 merges their manifest entries and
reports.
"""
from __future__ import annotations

import argparse
import sys
import time

from affaccel import cli_checks
from affaccel.cli_encoder import add_encoder_arguments, check_int8
from affaccel.data.layout import add_data_arguments


def _check(args) -> None:
    c = cli_checks
    c.at_least("--batch-size", args.batch_size, 1)
    c.device("--device", args.device)
    c.frames_backend("--frames-backend", args.frames_backend)
    if args.int8 and args.device not in (None, "cpu"):
        raise c.ArgError(f"--int8 runs the encoder on the CPU only; got --device {args.device}")
    c.file("--checkpoint", args.checkpoint, "checkpoint file")
    for flag in ("--data-root", "--annotations", "--frames"):
        c.folder(flag, getattr(args, flag[2:].replace("-", "_"), None))
    c.output_folder("--cache", args.cache)
    bad = [s for s in args.splits.split(",") if s and s not in ("train", "val", "test")]
    if bad or not [s for s in args.splits.split(",") if s]:
        raise c.ArgError(f"--splits {args.splits!r}: expected a comma list of train, val, test")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m affaccel.extract", description=__doc__.split("\n")[0])
    add_data_arguments(p)
    p.add_argument("--checkpoint", help="affaccel CLIP checkpoint (e.g. the fine-tuned best.pt)")
    p.add_argument("--model", help="open_clip model name when no checkpoint "
                   "(default: affaccel-rn-tiny, the CPU preset)")
    p.add_argument("--pretrained", help="open_clip pretrained tag (needs the model hub)")
    p.add_argument("--cache", help="feature cache root (default: AFFACCEL_HOME/features)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--splits", default="train,val", help="comma-separated: train,val,test (test: the videos of "
                   "the test sample files)")
    p.add_argument("--verify", action="store_true", help="CRC-check cached entries before skipping")
    p.add_argument("--frames-backend", choices=("auto", "dali", "pil"), default="auto",
                   help="frame image decoder: DALI (nvJPEG on GPU) or PIL; auto: DALI when installed. "
                        "Either way a corrupt or truncated image is reported and masked like a missing frame")
    p.add_argument("--quiet", action="store_true")
    args = add_encoder_arguments(p).parse_args(argv)
    status = cli_checks.report(lambda: _check(args))
    if status is not None:
        return status
    # affaccel's own messages at INFO; open_clip logs its model building on the root logger
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("affaccel").setLevel(logging.INFO)
    from affaccel import distributed
    from affaccel.data.layout import data_arguments
    from affaccel.device import resolve_device
    from affaccel.stages.features import extract_dataset

    device = str(resolve_device(args.device or ("cpu" if args.int8 else "auto")))
    check_int8(args.int8, device)
    info = distributed.init_from_env(device)   # torchrun: each rank extracts its share of the videos
    if info.distributed and device.startswith("cuda"):
        device = f"cuda:{info.local_rank}"
    t0 = time.time()
    try:
        cache_dir, summary = extract_dataset(data_arguments(args), args.checkpoint, args.cache, args.model,
                                             args.pretrained, args.batch_size, device,
                                             tuple(s for s in args.splits.split(",") if s), not args.quiet,
                                             args.verify, args.frames_backend, args.int8)
    finally:
        distributed.cleanup()
    dt = time.time() - t0
    if not info.is_main:   # rank 0 reports for all ranks; every rank exits with the same status
        return 1 if summary["failed"] else 0
    print(f"extracted {len(summary['extracted'])} videos ({summary['frames']} frames), "
          f"skipped {len(summary['skipped'])} already cached, failed {len(summary['failed'])}, "
          f"{dt:.1f} s", file=sys.stderr)
    if info.distributed:
        print("shares: " + ", ".join(f"rank {r}: {len(ids)} videos" for r, ids in enumerate(summary["shards"])),
              file=sys.stderr)
    for vid, err in summary["failed"].items():
        print(f"FAILED {vid}: {err}", file=sys.stderr)
    print(cache_dir)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
