"""One input of ``python -m affaccel.predict``: predict it, write its files, its manifest entry;
and the run's summary table.

Default (``--subjects main``): one table per input, ``<out>/<name>.<fmt>``, following one subject.
``--subjects all``: one table per tracked person (``affaccel.inference.subjects``), named
``<name>_face<track id>`` (a further ``_<k>`` when that stem is another input's output name);
the manifest entry lists each subject's track id, first and last frame and files. A video without
any tracked face still gets ``<name>.<fmt>`` (every row face-less), with a warning.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

from affaccel.inference.writers import MANIFEST_NAME


def subject_name(name: str, track_id: int, reserved: set[str]) -> str:
    """Output stem of one tracked person of the input whose stem is ``name``; never one of the
    run's other output stems (``reserved``, compared case-insensitively)."""
    stem, k = f"{name}_face{track_id}", 0
    taken = {r.lower() for r in reserved}
    cand = stem
    while cand.lower() in taken:
        k += 1
        cand = f"{stem}_{k}"
    return cand


def _write(res, args, out: Path, name: str) -> list[Path]:
    files = res.save(out, args.format, name=name)
    if args.plot:
        files.append(res.plot(out / f"{name}.png"))
    return files


def _predict_all_subjects(predictor, args, video, name: str, bx, out: Path, reserved: set[str]) -> dict:
    """--subjects all: the manifest fields of one input (its tables written)."""
    import numpy as np

    from affaccel.inference.subjects import predict_subjects

    if bx is not None:
        raise ValueError("--subjects all tracks the detector's faces; it does not take --boxes")
    subs, short = predict_subjects(predictor, video, batch_size=args.batch_size, weighting=args.weighting,
                                   min_frames=args.min_track_frames, progress=not args.no_progress)
    fields: dict = {"outputs": [], "subjects": [], "warnings": []}
    any_face = np.zeros(subs[0].result.n_frames, bool)
    for s in subs:
        stem = name if s.track_id is None else subject_name(name, s.track_id, reserved)
        files = [str(f) for f in _write(s.result, args, out, stem)]
        fields["outputs"] += files
        any_face |= s.result.frame["face_found"].to_numpy(bool)
        if s.track_id is not None:
            fields["subjects"].append({"track": s.track_id, "first_frame": s.first, "last_frame": s.last,
                                       "faces": s.result.n_faces, "outputs": files})
    if short:
        fields["short_tracks"] = {str(k): v for k, v in short.items()}
        fields["warnings"].append(f"{len(short)} track(s) shorter than --min-track-frames {args.min_track_frames} "
                                  "not predicted: " + ", ".join(f"{k} ({v} frames)" for k, v in short.items()))
    res = subs[0].result
    fields.update(frames=res.n_frames, faces=int(any_face.sum()), seconds=round(res.seconds, 3),
                  decoder=res.decoder)
    return fields


def predict_one(predictor, args, video: str, name: str, bx, out: Path, reserved: set[str] = frozenset()) -> dict:
    """Predict one input and write its files; the manifest entry (failures included).
    ``reserved``: every output stem of the run (per-subject names avoid them)."""
    from tqdm.auto import tqdm

    entry: dict = {"input": str(video), "status": "failed", "outputs": [], "warnings": []}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if getattr(args, "subjects", "main") == "all":
                fields = _predict_all_subjects(predictor, args, video, name, bx, out, reserved)
            else:
                res = predictor.predict_video(video, boxes=bx, batch_size=args.batch_size,
                                              weighting=args.weighting, stream=args.stream,
                                              progress=not args.no_progress)
                fields = {"outputs": [str(f) for f in _write(res, args, out, name)], "warnings": [],
                          "frames": res.n_frames, "faces": res.n_faces, "seconds": round(res.seconds, 3),
                          "decoder": res.decoder}
        # e.g. "decoding stopped after N frames (corrupt file)"
        own = fields.pop("warnings")
        entry["warnings"] = [str(w.message).removeprefix(f"{video}: ") for w in caught] + own
        if fields["faces"] == 0:  # still a table: one row per frame, face_found false, NaN predictions
            entry["warnings"].append(f"no face found in any of its {fields['frames']} frames: every row "
                                     "has face_found false and NaN predictions")
        entry.update(status="ok" if fields["faces"] else "no_face", **fields)
        if args.verbose:
            tqdm.write(f"{video}: decoded with {entry['decoder']}, {entry['frames']} frames")
    except Exception as e:  # noqa: BLE001 - one bad video must not stop the others
        reason = getattr(e, "reason", None) or str(e)
        # the decoder's errors already start with the path; do not repeat it
        entry["reason"] = f"{type(e).__name__}: {reason.removeprefix(f'{video}: ')}"
        tqdm.write(f"FAILED {video}: {entry['reason']}", file=sys.stderr)
    for w in entry["warnings"]:
        tqdm.write(f"warning: {video}: {w}", file=sys.stderr)
    return entry


def print_summary(entries: list[dict], seconds: float, out: Path) -> None:
    done = [e for e in entries if e["status"] != "failed"]
    print(f"{'video':40s} {'frames':>8s} {'faces':>8s} {'seconds':>9s} {'frames/s':>9s}  output")
    for e in done:
        n, secs = e["frames"], e["seconds"]
        fps = n / secs if secs > 0 else float("nan")
        print(f"{Path(e['input']).name[:40]:40s} {n:8d} {e['faces']:8d} {secs:9.2f} {fps:9.1f}  "
              f"{', '.join(Path(o).name for o in e['outputs'])}")
    total = sum(e["frames"] for e in done)
    print(f"{len(done)} of {len(entries)} videos done, {total} frames in "
          f"{seconds:.1f} s ({total / seconds if seconds > 0 else float('nan'):.1f} frames/s) "
          f"-> {out} (manifest: {out / MANIFEST_NAME})")
    for e in entries:
        for w in e["warnings"]:
            print(f"warning: {e['input']}: {w}")
        if e["status"] == "failed":
            print(f"failed: {e['input']}: {e['reason']}")
