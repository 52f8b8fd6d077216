"""``python -m affaccel.predict VIDEO... --bundle B --out DIR``: per-frame affect of videos.

One table per video (``<out>/<video>.csv`` or ``.parquet``), or with ``--format abaw`` the
challenge's per-video text files ``<out>/{VA,EXPR,AU}/<video>.txt``. ``--plot`` adds
``<out>/<video>.png``. Output names are unique within a run (``a/x.mp4`` and ``b/x.mp4`` give
``x`` and ``x_1``); ``<out>/manifest.json`` maps every input to its files, status and warnings.
``--subjects all`` writes one table per tracked person instead, ``<video>_face<track id>``
(``affaccel.predict_jobs``). A video in which no face is found still gets its table
(``face_found`` false, predictions NaN) and a warning. A video that cannot be read or has no
frames is reported (file and reason) and the others still run; the exit code is 0 only if every
video succeeded (1 otherwise, 2 for bad arguments, checked before any video is read).

File formats: ``affaccel.inference.writers``; the table's columns: ``affaccel.inference.table``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from affaccel.cli_encoder import add_encoder_arguments, apply_encoder_arguments
from affaccel.inference.writers import FORMATS, output_names
from affaccel.predict_jobs import predict_one, print_summary


def resolve_boxes(videos: Sequence[str], boxes: Sequence[str] | None) -> list:
    """--boxes: one CSV per video (in order), or one folder with <stem>.csv / <stem>.boxes.csv."""
    if not boxes:
        return [None] * len(videos)
    if len(boxes) == 1 and Path(boxes[0]).is_dir():
        folder, out = Path(boxes[0]), []
        for v in videos:
            cands = [folder / f"{Path(v).stem}.boxes.csv", folder / f"{Path(v).stem}.csv"]
            hit = next((c for c in cands if c.is_file()), None)
            if hit is None:
                raise ValueError(f"--boxes {folder}: no {cands[0].name} or {cands[1].name} "
                                 f"for video {v}")
            out.append(hit)
        return out
    if len(boxes) != len(videos):
        raise ValueError(f"--boxes: {len(boxes)} files for {len(videos)} videos; give one CSV "
                         "per video (repeat --boxes) or one folder")
    return [Path(b) for b in boxes]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m affaccel.predict",
        description="Per-frame valence/arousal, expressions and action units of face videos.")
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (any FFmpeg format)")
    p.add_argument("--bundle", help="model bundle written by affaccel.train (VA / EXPR / AU columns)")
    p.add_argument("--emoclip", help="EmoCLIP checkpoint (python -m affaccel.emoclip.train): adds per-frame "
                   "zero-shot zs_<label> probability columns, with or without --bundle")
    p.add_argument("--labels", help="with --emoclip: label set, a built-in name (affaccel, dfew, ferv39k, afew, "
                   "mafw) or a YAML/JSON file label -> description(s); default: the checkpoint's")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", default="csv", choices=FORMATS,
                   help="csv / parquet table per video, or abaw challenge text files")
    p.add_argument("--plot", action="store_true", help="also write <video>.png")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=int, default=64, help="frames per encoder batch")
    p.add_argument("--boxes", action="append",
                   help="face boxes CSV (frame,x,y,w,h) instead of the detector: once per "
                        "video, in order, or one folder holding <video>.boxes.csv files")
    p.add_argument("--stream", action="store_true",
                   help="bounded-memory streaming (same numbers; for very long videos)")
    p.add_argument("--weighting", default=None, choices=("uniform", "triangular", "hann"),
                   help="how overlapping windows are averaged (default: as in training)")
    p.add_argument("--redetect-every", type=int, default=1,
                   help="run the face detector every N frames (the tracker holds boxes between)")
    p.add_argument("--select", default="largest", choices=("largest", "central"),
                   help="which face to follow when several are visible")
    p.add_argument("--subjects", default="main", choices=("main", "all"),
                   help="main: one table per video, following one person; all: one table per tracked "
                        "person, <video>_face<id> (a track ends at a scene cut or when the face is lost)")
    p.add_argument("--min-track-frames", type=int, default=1,
                   help="with --subjects all: tracks shorter than this are not predicted (listed in the manifest)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true",
                   help="print per video how it was decoded (DALI/NVDEC on GPU or PyAV on CPU)")
    return add_encoder_arguments(p)


def check_args(args) -> str | None:
    """The first problem with the arguments (a one-line message naming the argument), or None.
    Cheap checks only, all before the bundle is loaded or any video is read."""
    from affaccel import cli_checks as c

    try:
        c.at_least("--batch-size", args.batch_size, 1)
        c.at_least("--redetect-every", args.redetect_every, 1)
        c.at_least("--min-track-frames", args.min_track_frames, 1)
        if args.subjects == "all" and (args.boxes or args.stream or args.emoclip):
            raise c.ArgError("--subjects all tracks the detector's faces in the whole-video path: it takes "
                             "neither --boxes, --stream nor --emoclip")
        c.output_folder("--out", args.out)
        if args.bundle is None and args.emoclip is None:
            raise c.ArgError("give --bundle (VA / EXPR / AU) and/or --emoclip (zero-shot classes)")
        if args.bundle is not None:
            c.file("--bundle", args.bundle, "bundle (written by python -m affaccel.train)")
        if args.emoclip is not None:
            c.file("--emoclip", args.emoclip, "EmoCLIP checkpoint (written by python -m affaccel.emoclip.train)")
        elif args.labels is not None:
            raise c.ArgError("--labels applies to --emoclip only")
        c.device("--device", args.device)
    except c.ArgError as e:
        return str(e)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from affaccel import distributed
    from affaccel.device import resolve_device
    # under torchrun each rank predicts its share of the videos (affaccel.inference.sharding)
    info = distributed.init_from_env(resolve_device(args.device).type)
    try:
        return _run(args, info)
    finally:
        distributed.cleanup()


def _run(args, info) -> int:
    try:
        boxes = resolve_boxes(args.videos, args.boxes)
        from affaccel.inference.predictor import AffectPredictor

        options = {"tracker_options": {"redetect_every": args.redetect_every, "select": args.select}}
        if args.emoclip is not None:
            from affaccel.emoclip.frames import ZeroShotScorer

            options["emoclip"] = ZeroShotScorer.from_checkpoint(args.emoclip, labels=args.labels)
        predictor = (AffectPredictor.from_bundle(args.bundle, device=args.device, **options) if args.bundle
                     else AffectPredictor({}, device=args.device, **options))
        predictor = apply_encoder_arguments(args, predictor)   # --int8
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from affaccel.inference.sharding import run_inputs

    out, names, t_all = Path(args.out), output_names(args.videos), time.perf_counter()  # names: before sharding
    entries = run_inputs(args.videos, lambda i: predict_one(predictor, args, args.videos[i], names[i], boxes[i],
                                                            out, set(names)), out, info, progress=not args.no_progress)
    if info.is_main:
        print_summary(entries, time.perf_counter() - t_all, out)
    return 0 if all(e["status"] != "failed" for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
