"""Every tracked person of a video, one table each (``predict --subjects all``).

The default mode follows one subject per frame (``AffectPredictor.predict_video``). Here the
tracker reports every live track on every frame (``TrackOutput.tracks``); each track's face is
cropped and encoded on every frame it lives, and each track becomes a temporal sequence of its
own: windows are cut over the track's frames only, so they never mix two people. A track ends
at a scene cut, when its face is lost for more than ``max_missed`` detections, or at the end of
the video; a person seen again later gets a new track (and a new table).

Each track's table has one row per decoded frame of the whole video (the frozen schema of
``affaccel.inference.table``), like Aff-Wild2's ``_left`` / ``_right`` annotation files: rows
outside the track's lifetime have ``face_found`` false and NaN predictions; ``face_id`` is the
track id and ``segment`` is 0 on the track's frames. Frames inside the track whose crop failed
take the previous crop's feature (``FeatureFiller``), as in the default mode.

Tracks shorter than ``min_frames`` are not predicted (they are reported by id and length). A
video without any track gives one face-less table (``track_id`` None), so every input still has
an output.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from affaccel.inference.predictor import _name_of, _progress_bar
from affaccel.inference.streaming import FeatureFiller, NoFramesError
from affaccel.inference.table import PredictionResult, build_table
from affaccel.tasks import TASKS


@dataclass
class _TrackRows:
    """What one track collected while the video was decoded (one entry per frame it lived)."""
    frames: list = field(default_factory=list)     # absolute frame indices (consecutive)
    boxes: list = field(default_factory=list)      # [4] each
    scores: list = field(default_factory=list)
    found: list = field(default_factory=list)      # the crop was valid and encoded
    feats: list = field(default_factory=list)      # [n, D] tensors, one per batch


@dataclass
class SubjectResult:
    """One tracked person: ``track_id`` (None for the face-less table of a video without any
    track), ``first`` / ``last`` frame of the track, and the per-frame ``result``."""
    track_id: int | None
    first: int
    last: int
    result: PredictionResult


def _encode_rows(pred, frames, rows: np.ndarray, start: int):
    """Crop and encode every (frame, box) row of one batch: (features [N, D], valid [N])."""
    import torch

    n = len(rows)
    feats = torch.zeros((n, pred.encoder.feature_dim))
    local = torch.as_tensor(rows[:, 0].astype(np.int64) - start)
    sel = frames[local.to(frames.device)] if torch.is_tensor(frames) else np.asarray(frames)[local.numpy()]
    crops, valid = pred._crop(sel, torch.as_tensor(rows[:, 2:6], dtype=torch.float32))
    valid = np.asarray(torch.as_tensor(valid).cpu(), bool)
    if valid.any():
        vi = torch.as_tensor(np.nonzero(valid)[0])
        feats[vi] = pred.encode(crops[vi.to(crops.device)])
    return feats, valid


def collect_tracks(pred, video, batch_size: int = 64, fps: float | None = None, progress=None):
    """Decode ``video`` once, track every face, encode every track's crops.
    Returns (timestamps [T], {track id: _TrackRows})."""
    import torch

    from affaccel.faces.tracker import FaceTracker

    if pred.encoder is None:
        raise ValueError("subjects='all' needs an encoder (a bundle with one): it crops and encodes "
                         "every tracked face")
    tracker = FaceTracker(pred.detector, **pred.tracker_options)
    stamps, tracks = [], {}
    for frames, ts, start in pred._frames(video, batch_size, fps):   # CPU decoding runs ahead
        rows = tracker.update(frames).tracks
        stamps.append(np.asarray(ts, np.float64))
        if len(rows):
            feats, valid = _encode_rows(pred, frames, rows, start)
            for tid in np.unique(rows[:, 1]).astype(np.int64):
                sel = rows[:, 1] == tid
                t = tracks.setdefault(int(tid), _TrackRows())
                t.frames += rows[sel, 0].astype(np.int64).tolist()
                t.boxes.append(rows[sel, 2:6])
                t.scores.append(rows[sel, 6])
                t.found.append(valid[sel])
                t.feats.append(feats[torch.as_tensor(np.nonzero(sel)[0])])
        if progress is not None:
            progress.update(len(ts))
    if not stamps:
        raise NoFramesError(f"{_name_of(video)}: no frames decoded")
    return np.concatenate(stamps), tracks


def _filled(pred, rows: _TrackRows):
    """The track's features [n, D], frames without a valid crop filled from their neighbour."""
    import torch

    filler = FeatureFiller()
    blocks = filler(torch.cat(rows.feats), np.concatenate(rows.found))
    if filler.pending:          # no valid crop at all: zeros (every prediction is NaN)
        blocks.append(torch.zeros((filler.pending, pred.feature_dim or pred.encoder.feature_dim)))
    return torch.cat(blocks)


def _table(pred, n: int, stamps, rows: _TrackRows | None, tid: int, preds: dict | None):
    """The full-length table of one track (or of no face at all when ``rows`` is None)."""
    boxes, scores = np.full((n, 4), np.nan), np.full(n, np.nan)
    found, full = np.zeros(n, bool), {}
    span = slice(0, 0)
    if rows is not None:
        span = slice(rows.frames[0], rows.frames[-1] + 1)
        boxes[span], scores[span] = np.concatenate(rows.boxes), np.concatenate(rows.scores)
        found[span] = np.concatenate(rows.found)
    for task in pred.tasks:
        full[task] = np.full((n, len(TASKS[task].columns)), np.nan, np.float32)
        if preds is not None:
            full[task][span] = preds[task]
    return build_table(0, stamps, boxes, scores, np.full(n, tid, np.int64), found, full,
                       segments=np.zeros(n, np.int64))


def predict_subjects(pred, video, batch_size: int = 64, weighting: str | None = None,
                     fps: float | None = None, min_frames: int = 1, progress=False):
    """Every tracked person of one input -> (list of SubjectResult in track-id order,
    {track id: frames} of the tracks shorter than ``min_frames``, which were not predicted).
    ``video``: a file path, frames [T, H, W, 3] uint8 or an iterable of frame batches;
    ``progress``: True for a bar, or a caller's tqdm."""
    import time

    if min_frames < 1:
        raise ValueError(f"min_frames must be >= 1, got {min_frames}")
    if pred.emoclip is not None:
        raise ValueError("subjects='all' does not add the EmoCLIP zs_ columns; predict them per "
                         "video (the default single-subject mode)")
    t0 = time.perf_counter()
    bar = _progress_bar(progress, video, None)
    try:
        stamps, tracks = collect_tracks(pred, video, batch_size, fps, bar)
    finally:
        if bar is not None and progress is True:
            bar.close()
    for t in tracks.values():
        if t.frames != list(range(t.frames[0], t.frames[-1] + 1)):
            raise AssertionError(f"track frames not consecutive: {t.frames[:5]}...")
    kept = {tid: t for tid, t in sorted(tracks.items()) if len(t.frames) >= min_frames}
    short = {tid: len(t.frames) for tid, t in sorted(tracks.items()) if tid not in kept}
    preds = (pred._temporal([[_filled(pred, t)] for t in kept.values()], weighting or pred.weighting)
             if pred.models and kept else [None] * len(kept))
    name, n, out = _name_of(video), len(stamps), []
    dec = pred.decoder(video)
    decoder = f"{dec[0]} ({dec[1]})" if dec[0] else ""
    for (tid, rows), p in zip(kept.items(), preds):
        res = PredictionResult(_table(pred, n, stamps, rows, tid, p), name, pred.tasks, decoder=decoder)
        out.append(SubjectResult(tid, rows.frames[0], rows.frames[-1], res))
    if not out:
        out.append(SubjectResult(None, -1, -1, PredictionResult(
            _table(pred, n, stamps, None, -1, None), name, pred.tasks, decoder=decoder)))
    seconds = time.perf_counter() - t0
    for s in out:
        s.result.seconds = seconds
    return out, short
