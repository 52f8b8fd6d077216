"""Inference on any video: ``AffectPredictor`` -> per-frame valence/arousal, expressions, AUs.

Pipeline per video (each stage can be skipped by handing in its output):

    decode (affaccel.video.decode) -> face boxes (tracker over the built-in detector, or the
    user's boxes) -> crop/resize/normalise (affaccel.video.crop) -> ClipEncoder -> features
    [T, D] -> windows (w, s) -> TemporalModel per task -> overlap averaging -> table [T, ...]

Frames without a face keep their row: their feature is the previous face frame's (the first
face frame's for leading ones), as the training feature cache does, so window alignment is
the one the model was trained with; their predictions are then written as NaN.

Two temporal paths give the same numbers: ``affaccel.inference.temporal.predict_frames`` cuts
the windows of whole feature arrays (the path stage-3 validation takes), and
``affaccel.inference.streaming.StreamingTemporal`` consumes features as frames arrive with
bounded memory. The table's schema is ``affaccel.inference.table``; files are written by
``affaccel.inference.writers``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from affaccel.device import resolve_device
from affaccel.inference.overlap import prefetch
from affaccel.inference.stream_rows import RowBuffer
from affaccel.inference.streaming import (
    FeatureFiller,
    NoFramesError,
    Segmenter,
    StreamingTemporal,
    segment_runs,
)
from affaccel.inference.table import TASK_ORDER, PredictionResult, build_table

__all__ = ["AffectPredictor", "VideoFailure", "NoFramesError", "PredictionResult"]


@dataclass
class _Chunk:
    """Per-frame side data of one batch of frames; feats: torch [B, D] (rows where found is
    False are arbitrary)."""
    timestamps: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    ids: np.ndarray
    found: np.ndarray
    feats: Any
    zs: Any = None      # EmoCLIP image embeddings [B, Dz] (only with an emoclip scorer)
    cuts: Any = None    # [B] bool scene cuts found by the tracker (None: none looked for)


class AffectPredictor:
    """Per-frame affect from videos, frames, face crops or features.

    models: task -> TemporalModel (any subset of va / expr / au; all with the same feature
    size D). encoder: ClipEncoder, needed unless features are given. window / stride: the
    bundle's window config. tracker_options / detector: face finding (see affaccel.faces).
    precision: encoder compute precision ("auto": bf16 on CUDA, fp32 on CPU).
    emoclip: optional ``affaccel.emoclip.frames.ZeroShotScorer``: adds per-frame ``zs_<label>``
    probability columns (with or without temporal models; alone, its image tower is the encoder).
    """

    prefetch_depth = 3    # decoded batches a decode thread runs ahead (0: decode in the caller's thread)
    prefetch_stats = None  # an overlap.PrefetchStats to add each video's decode/consumer idle times to

    def __init__(self, models: dict, encoder=None, window: int = 300, stride: int = 200,
                 device: str = "auto", detector=None, tracker_options: dict | None = None,
                 crop_expand: float = 1.0, precision: str = "auto", decode_backend: str = "auto",
                 window_batch: int = 32, weighting: str = "uniform", emoclip=None):
        if not models and emoclip is None:
            raise ValueError("AffectPredictor needs at least one temporal model (va/expr/au) or emoclip")
        unknown = set(models) - set(TASK_ORDER)
        if unknown:
            raise ValueError(f"unknown task(s) {sorted(unknown)}; expected among {TASK_ORDER}")
        if not 0 < stride <= window:
            raise ValueError(f"need 0 < stride <= window, got window={window}, stride={stride}")
        self.device = resolve_device(device)
        self.models = {t: m.to(self.device).eval() for t, m in models.items()}
        self.tasks = tuple(t for t in TASK_ORDER if t in self.models)
        self.emoclip = emoclip.to(self.device) if emoclip is not None else None
        self._zs_feats = None     # EmoCLIP embeddings of the last _collect (zs_ columns)
        if encoder is None and emoclip is not None and not models:
            encoder = emoclip.encoder
        self.encoder = encoder.to(self.device).eval() if encoder is not None else None
        self.window, self.stride = int(window), int(stride)
        self._detector = detector
        self.tracker_options = dict(tracker_options or {})
        self.crop_expand = float(crop_expand)
        self.precision = precision
        self.decode_backend = decode_backend
        self.window_batch = int(window_batch)
        self.weighting = weighting
        dims = {t: getattr(getattr(m, "cfg", None), "in_dim", None) for t, m in self.models.items()}
        if self.encoder is not None:
            for t, d in dims.items():
                if d is not None and d != self.encoder.feature_dim:
                    raise ValueError(f"{t} model expects features of size {d}, the encoder "
                                     f"gives {self.encoder.feature_dim}")
        self.feature_dim = next((d for d in dims.values() if d is not None), None)

    @classmethod
    def from_bundle(cls, path, device: str = "auto", **options) -> "AffectPredictor":
        """Load a bundle written by ``affaccel.bundle.save_bundle`` (encoder + temporal models +
        window config); ``options`` go to the constructor."""
        from affaccel.bundle import load_bundle

        b = load_bundle(path)
        # overlap averaging as at training time (TrainConfig.averaging), unless overridden
        averaging = {getattr(c, "averaging", "uniform") for c in b.configs.values()}
        if len(averaging) == 1:
            options.setdefault("weighting", averaging.pop())
        return cls(dict(b.models), encoder=b.encoder, window=b.window.window,
                   stride=b.window.stride, device=device, **options)

    # -- stages ------------------------------------------------------------------------
    @property
    def detector(self):
        if self._detector is None:
            from affaccel.faces.detector import HaarFaceDetector

            self._detector = HaarFaceDetector()
        return self._detector

    def encode(self, crops):
        """crops: [B, 3, S, S] normalised float -> features [B, D] float32 on CPU."""
        import torch

        from affaccel.device import autocast

        if self.encoder is None:
            raise ValueError("this predictor has no encoder: pass features= (or load a bundle "
                             "with an encoder)")
        with torch.inference_mode(), autocast(self.device, self.precision):
            f = self.encoder(crops.to(self.device, non_blocking=True))
        return f.float().cpu()

    def run_windows(self, x, mask) -> dict:
        """x: [N, w, D], mask: [N, w] bool -> task -> [N, w, K] numpy float32 (prediction
        space of TemporalModel.to_prediction)."""
        import torch

        from affaccel.inference.temporal import run_windows

        return run_windows(self.models, x.to(self.device, torch.float32), mask.to(self.device))

    def _temporal(self, feats: Sequence[Sequence[Any]], weighting: str) -> list[dict]:
        """Whole-array path: per video, its segments' features [T_ij, D] -> per video, task ->
        [sum_j T_ij, K]. Each segment is windowed as a video of its own (no window spans two
        segments); the segments' predictions are joined back in frame order."""
        from affaccel.inference.temporal import predict_frames

        flat = [f for segs in feats for f in segs]
        preds = predict_frames(self.models, flat, self.window, self.stride, self.device,
                               self.window_batch, weighting)
        out, i = [], 0
        for segs in feats:
            part = preds[i:i + len(segs)]
            i += len(segs)
            out.append({t: np.concatenate([p[t] for p in part]) for t in self.models})
        return out

    def decoder(self, video) -> tuple[str, str]:
        """(backend, device) that decodes `video`: DALI (NVDEC) on the predictor's GPU when DALI
        imports and NVDEC handles the codec, else PyAV on the CPU (affaccel.video.decode
        .choose_backend); ("", "") for frames, crops or features given directly."""
        return choose_decoder(video, self.decode_backend, self.device)

    def _frames(self, video, batch_size: int, fps):
        """Decoded batches of ``video``; CPU decoding runs ahead in a thread (inference/overlap.py),
        DALI (GPU) decoding and frames handed in run in the caller's thread."""
        dec = self.decoder(video)
        depth = self.prefetch_depth if dec[1] == "cpu" else 0
        return prefetch(_iter_frames(video, batch_size, fps, *dec), depth, self.prefetch_stats)

    def _crop(self, frames, boxes):
        from affaccel.video.crop import crop_faces

        enc = self.encoder
        return crop_faces(frames, boxes, enc.image_size, enc.mean, enc.std,
                          expand=self.crop_expand, device=self.device)

    def _iter_chunks(self, video, boxes=None, crops=None, features=None, batch_size: int = 64,
                     fps: float | None = None, face_found=None, progress=None,
                     cuts=None) -> Iterator[_Chunk]:
        """Frames -> per-frame boxes and features, one batch at a time. ``cuts``: the caller's
        scene-cut frame indices (None: detected on decoded frames, none for crops / features)."""
        import torch

        given = _cut_mask(cuts)

        if features is not None or crops is not None:
            yield from self._iter_given(crops, features, batch_size, fps, face_found, progress, given)
            return
        user_boxes = None
        if boxes is not None:
            from affaccel.faces.boxes import check_boxes, read_boxes_csv

            user_boxes = (read_boxes_csv(boxes) if isinstance(boxes, (str, Path))
                          else check_boxes(boxes, len(boxes)))
        if self.encoder is None:
            raise ValueError("this predictor has no encoder: pass features= (or load a bundle "
                             "with an encoder) to predict from frames or videos")
        from affaccel.faces.tracker import CutDetector, FaceTracker

        tracker = FaceTracker(self.detector, **self.tracker_options) if user_boxes is None else None
        # with the user's boxes the cuts are still looked for (windows never span a cut)
        detect_cuts = CutDetector(self.tracker_options.get("cut_threshold", 0.4))
        for batch in self._frames(video, batch_size, fps):
            frames, ts, start = batch
            b = len(frames)
            if tracker is not None:
                tr = tracker.update(frames)
                bx, sc, ids, cut = tr.boxes, tr.scores, tr.ids, tr.cuts
            else:
                cut = detect_cuts(frames) if given is None else None
                bx = np.full((b, 4), np.nan)
                have = max(0, min(b, len(user_boxes) - start))
                bx[:have] = user_boxes[start:start + have]
                sc, ids = np.where(np.isnan(bx[:, 0]), np.nan, 1.0), np.zeros(b, np.int64)
            f = torch.zeros((b, self.encoder.feature_dim if self.encoder else 0))
            has = ~np.isnan(bx[:, 0])
            found = np.zeros(b, bool)
            if has.any():
                crops, valid = self._crop(frames, torch.as_tensor(bx, dtype=torch.float32))
                valid = np.asarray(torch.as_tensor(valid).cpu(), bool) & has
                if valid.any():
                    vi = torch.as_tensor(np.nonzero(valid)[0])
                    f[vi] = self.encode(crops[vi.to(crops.device)])
                found = valid
            zs = None
            if self.emoclip is not None:
                from affaccel.emoclip.frames import chunk_features

                zs = chunk_features(self.emoclip, frames, bx, found, f, self.encoder, self.device, self.crop_expand)
            if progress is not None:
                progress.update(b)
            cut = cut if given is None else _cuts_of(given, start, b)
            yield _Chunk(np.asarray(ts, np.float64), bx, sc, ids, found, f, zs, cut)

    def _iter_given(self, crops, features, batch_size, fps, face_found, progress, given) -> Iterator[_Chunk]:
        """Crops or features handed in -> chunks (no decoding, no face finding)."""
        import torch

        arr = features if features is not None else crops
        n = len(arr)
        found = (np.ones(n, bool) if face_found is None
                 else np.asarray(face_found, bool).reshape(-1))
        if len(found) != n:
            raise ValueError(f"face_found has {len(found)} entries for {n} frames")
        ts = np.arange(n) / fps if fps else np.full(n, np.nan)
        for i in range(0, n, batch_size):
            sl = slice(i, min(n, i + batch_size))
            if features is not None:
                f = torch.as_tensor(np.asarray(arr[sl]) if not torch.is_tensor(arr) else arr[sl])
                f = f.float().cpu()
                if f.ndim != 2 or (self.feature_dim and f.shape[1] != self.feature_dim):
                    raise ValueError(f"features: expected [T, {self.feature_dim}], got "
                                     f"[..., {tuple(f.shape[1:])}]")
            else:
                c = torch.as_tensor(arr[sl])
                if c.ndim != 4 or c.shape[1] != 3:
                    raise ValueError(f"crops: expected [T, 3, S, S], got {tuple(c.shape)}")
                f = torch.zeros((len(c), self.encoder.feature_dim))
                ok = torch.as_tensor(found[sl])
                if bool(ok.any()):
                    f[ok] = self.encode(c[ok].float())
            b = sl.stop - sl.start
            if progress is not None:
                progress.update(b)
            yield _Chunk(ts[sl], np.full((b, 4), np.nan), np.full(b, np.nan),
                         np.full(b, -1, np.int64), found[sl], f, cuts=_cuts_of(given, sl.start, b))

    # -- public ------------------------------------------------------------------------
    def predict_stream(self, video, boxes=None, crops=None, features=None, batch_size: int = 64,
                       weighting: str | None = None, fps: float | None = None,
                       face_found=None, progress=None, cuts=None) -> Iterator[Any]:
        """Yield DataFrame chunks (frozen schema) as frames are finalized; bounded memory.

        Memory: one decoded batch, about ``window + stride`` feature rows, the overlap sums of
        the frames not yet final, and the side data (boxes, timestamps) of those frames. With
        an EmoCLIP scorer its zero-shot windows stream beside the temporal models' (RowBuffer
        releases a frame once both have finalized it). Raises NoFramesError without frames.
        """
        weighting = weighting or self.weighting
        rows = RowBuffer(self.tasks, self.emoclip.columns if self.emoclip is not None else None)
        segs = _SegmentStreams(self, weighting, rows)
        zs = _ZeroShotStream(self.emoclip, rows) if self.emoclip is not None else None
        seen = 0
        for ch in self._iter_chunks(video, boxes, crops, features, batch_size, fps, face_found,
                                    progress, cuts):
            seg = segs.segmenter(ch.ids, ch.found, ch.cuts)
            rows.add_side((ch.timestamps, ch.boxes, ch.scores, ch.ids, ch.found, seg))
            segs.push(ch, seg, seen)
            if zs is not None:
                zs.push(ch)
            seen += len(seg)
            df = rows.release()
            if df is not None:
                yield df
        if seen == 0:
            raise NoFramesError(f"{_name_of(video)}: no frames decoded")
        segs.flush()
        if zs is not None:
            zs.finish()
        df = rows.release()
        if df is not None:
            yield df

    def predict_video(self, video, boxes=None, crops=None, features=None, batch_size: int = 64,
                      weighting: str | None = None, stream: bool = False,
                      fps: float | None = None,
                      face_found=None, progress: bool | Any = False, cuts=None) -> PredictionResult:
        """Predict every frame of one input.

        video: a file path, or frames ``[T, H, W, 3]`` uint8 (NumPy / torch), or an iterable of
        such batches; ignored when ``crops`` or ``features`` is given.
        boxes: ``[T, 4]`` array or a CSV path (frame,x,y,w,h) instead of the detector.
        crops: ``[T, 3, S, S]`` normalised face crops (skips decoding and detection).
        features: ``[T, D]`` encoder features (skips the encoder too).
        face_found: ``[T]`` bool for crops / features (default: all True).
        fps: timestamps for frame arrays, crops and features (``frame / fps``; NaN without).
        stream: use the bounded-memory streaming path (same numbers).
        cuts: frame indices where a new scene starts (or a [T] bool mask); a cut starts a new
        temporal segment. Default: detected from the decoded frames (also with ``boxes``); none
        for crops and features, which carry no frames to look at.
        """
        import pandas as pd

        t0 = time.perf_counter()
        bar = _progress_bar(progress, video, features if features is not None else crops)
        try:
            if stream:
                table = pd.concat(list(self.predict_stream(
                    video, boxes, crops, features, batch_size, weighting, fps, face_found, bar, cuts)),
                    ignore_index=True)
            else:
                table = self._predict_batch(video, boxes, crops, features, batch_size, weighting,
                                            fps, face_found, bar, cuts)
        finally:
            if bar is not None and progress is True:
                bar.close()
        dec = self.decoder(video) if crops is None and features is None else ("", "")
        return PredictionResult(table, _name_of(video), self.tasks, time.perf_counter() - t0,
                                decoder=f"{dec[0]} ({dec[1]})" if dec[0] else "")

    def _collect(self, video, boxes, crops, features, batch_size, fps, face_found, bar, cuts=None):
        """All chunks of one input -> (side columns incl. segment numbers, filled features
        [T_j, D] of each temporal segment, in frame order)."""
        import torch

        zs_filler, segmenter = FeatureFiller(), Segmenter()
        side, raw, zs_blocks = [], [], []
        for ch in self._iter_chunks(video, boxes, crops, features, batch_size, fps, face_found, bar, cuts):
            side.append((ch.timestamps, ch.boxes, ch.scores, ch.ids, ch.found,
                         segmenter(ch.ids, ch.found, ch.cuts)))
            raw.append(ch.feats)
            if ch.zs is not None:
                zs_blocks += zs_filler(ch.zs, ch.found)
        if not side:
            raise NoFramesError(f"{_name_of(video)}: no frames decoded")
        cols = [np.concatenate(c) for c in zip(*side)]
        feats, found, segs = torch.cat(raw), cols[4], []
        for lo, hi in segment_runs(cols[5]):
            filler = FeatureFiller()          # fill within the segment only
            blocks = filler(feats[lo:hi], found[lo:hi])
            if filler.pending:
                blocks.append(torch.zeros((filler.pending, self.feature_dim or 1)))
            segs.append(torch.cat(blocks))
        if zs_filler.pending:
            zs_blocks.append(torch.zeros((zs_filler.pending, self.emoclip.model.embed_dim)))
        self._zs_feats = torch.cat(zs_blocks) if zs_blocks else None
        return cols, segs

    def _with_zs(self, table, zs_feats, video):
        """The table with the EmoCLIP ``zs_<label>`` columns appended (when configured)."""
        if self.emoclip is None:
            return table
        from affaccel.emoclip.frames import add_zs_columns

        return add_zs_columns(table, self.emoclip, zs_feats, _name_of(video))

    def _predict_batch(self, video, boxes, crops, features, batch_size, weighting, fps,
                       face_found, bar, cuts=None):
        cols, feats = self._collect(video, boxes, crops, features, batch_size, fps, face_found, bar, cuts)
        preds = self._temporal([feats], weighting or self.weighting)[0] if self.models else {}
        return self._with_zs(build_table(0, *cols[:5], preds, segments=cols[5]), self._zs_feats, video)

    def predict_videos(self, videos: Sequence, boxes: Sequence | None = None,
                       batch_size: int = 64, weighting: str | None = None,
                       errors: str = "raise", progress: bool = False) -> list:
        """Predict several inputs; the temporal stage batches windows across videos.

        Features of every video are computed first (features are small: D floats a frame),
        then all windows go through the temporal models in shared batches.
        errors: "raise" stops at the first bad input; "return" puts a ``VideoFailure``
        (video, reason) in its place and goes on.
        """
        weighting = weighting or self.weighting
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        boxes = list(boxes) if boxes is not None else [None] * len(videos)
        if len(boxes) != len(videos):
            raise ValueError(f"{len(boxes)} box entries for {len(videos)} videos")
        done: list = []
        for v, bx in zip(videos, boxes):
            t0 = time.perf_counter()
            bar = _progress_bar(progress, v, None)
            try:
                cols, feats = self._collect(v, bx, None, None, batch_size, None, None, bar)
                done.append((v, cols, feats, time.perf_counter() - t0, self._zs_feats))
            except Exception as e:  # noqa: BLE001 - reported per video when errors="return"
                if errors == "raise":
                    raise
                done.append(VideoFailure(_name_of(v), _reason(e)))
            finally:
                if bar is not None:
                    bar.close()
        ok = [d for d in done if not isinstance(d, VideoFailure)]
        results: dict[int, PredictionResult] = {}
        if ok:
            t0 = time.perf_counter()
            preds = self._temporal([d[2] for d in ok], weighting) if self.models else [{} for _ in ok]
            share = (time.perf_counter() - t0) / len(ok)
            for d, p in zip(ok, preds):
                v, cols, _, secs, zs = d
                table = build_table(0, *cols[:5], p, segments=cols[5])
                results[id(d)] = PredictionResult(self._with_zs(table, zs, v),
                                                  _name_of(v), self.tasks, secs + share)
        return [d if isinstance(d, VideoFailure) else results[id(d)] for d in done]


class _SegmentStreams:
    """The temporal models over a stream: one StreamingTemporal per temporal segment (windows
    never span two), face-less frames filled from their neighbours within the segment."""

    def __init__(self, pred: "AffectPredictor", weighting: str, rows: RowBuffer):
        self.pred, self.weighting, self.rows = pred, weighting, rows
        self.segmenter, self.cur = Segmenter(), 0
        self._new()

    def _new(self) -> None:
        p = self.pred
        self.stream = (StreamingTemporal(p.run_windows, p.window, p.stride, p.tasks, weighting=self.weighting,
                                         max_batch=p.window_batch) if p.models else None)
        self.filler = FeatureFiller()

    def _push(self, block) -> None:
        if self.stream is not None:
            self.rows.add_preds(self.stream.push(block)[1])

    def push(self, ch: _Chunk, seg: np.ndarray, seen: int) -> None:
        for lo, hi in segment_runs(seg):
            if seg[lo] != self.cur:
                self.flush()
                self._new()
                self.cur = int(seg[lo])
            for block in self.filler(ch.feats[lo:hi], ch.found[lo:hi]):
                self._push(block)

    def flush(self) -> None:
        """The rest of the current segment."""
        if self.stream is None:
            return
        if self.filler.pending:   # no face in the segment: zero features (outputs are NaN)
            import torch

            dim = self.pred.feature_dim or 1
            for i in range(0, self.filler.pending, 4096):   # what push() finalizes is kept too
                self._push(torch.zeros((min(4096, self.filler.pending - i), dim)))
        self.rows.add_preds(self.stream.finish()[1])


class _ZeroShotStream:
    """EmoCLIP's zs_ probabilities over a stream: its own windows over the whole video."""

    def __init__(self, scorer, rows: RowBuffer):
        self.scorer, self.rows, self.filler = scorer, rows, FeatureFiller()
        self.stream = StreamingTemporal(scorer.window_probs, scorer.window, scorer.stride, ("zs",),
                                        weighting="uniform", max_batch=scorer.batch)

    def push(self, ch: _Chunk) -> None:
        if ch.zs is None:
            raise ValueError("zero-shot (zs_) columns need video frames through EmoCLIP's image tower; "
                             "crops or features handed in cannot be used")
        for block in self.filler(ch.zs, ch.found):
            self.rows.add_zs(self.stream.push(block)[1].get("zs", np.zeros((0, len(self.scorer.columns)))))

    def finish(self) -> None:
        import torch

        if self.filler.pending:
            self.rows.add_zs(self.stream.push(torch.zeros((self.filler.pending, self.scorer.model.embed_dim)))[1]
                             .get("zs", np.zeros((0, len(self.scorer.columns)))))
        self.rows.add_zs(self.stream.finish()[1]["zs"])


@dataclass
class VideoFailure:
    """An input that could not be predicted: which one and why."""
    video: str
    reason: str


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _name_of(video) -> str:
    if isinstance(video, (str, Path)):
        return str(video)
    shape = getattr(video, "shape", None)
    return f"<frames {tuple(shape)}>" if shape is not None else "<frames>"


def _progress_bar(progress, video, arr):
    if progress is False or progress is None:
        return None
    if progress is not True:
        return progress          # a caller's tqdm
    from tqdm.auto import tqdm

    total = None
    if arr is not None:
        total = len(arr)
    elif isinstance(video, (str, Path)):
        try:
            from affaccel.video.decode import probe_video

            total = probe_video(video).n_frames_reported or None
        except Exception:  # noqa: BLE001 - the count is only a hint for the bar
            total = None
    elif hasattr(video, "shape"):
        total = int(video.shape[0])
    return tqdm(total=total, desc=Path(str(video)).name if total is not None else "frames",
                unit="frame", leave=False)


def choose_decoder(video, backend: str, device) -> tuple[str, str]:
    """(backend, device) for decoding `video` on a predictor running on `device`."""
    if not isinstance(video, (str, Path)):
        return "", ""
    from affaccel.video.decode import choose_backend

    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    chosen = choose_backend(video, backend, dev)
    return chosen, (str(device) if chosen == "dali" and dev == "cuda" else "cpu")


def _cut_mask(cuts) -> np.ndarray | None:
    """The caller's scene cuts (frame indices where a new scene starts) as a sorted index array."""
    if cuts is None:
        return None
    idx = np.asarray(cuts).reshape(-1)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0):
        raise ValueError(f"cuts: expected frame indices >= 0 (or a [T] bool mask), got {cuts!r:.80}")
    return np.unique(idx.astype(np.int64))


def _cuts_of(given: np.ndarray | None, start: int, n: int) -> np.ndarray | None:
    """[n] bool: which of frames start .. start+n-1 start a scene (None: no cuts given)."""
    if given is None:
        return None
    out = np.zeros(n, bool)
    sel = given[(given >= start) & (given < start + n)] - start
    out[sel] = True
    return out


def _iter_frames(video, batch_size: int, fps: float | None, backend: str, device: str = "cpu"):
    """Yield (frames [B, H, W, 3] uint8, timestamps [B], start index) from a path, an array
    [T, H, W, 3] or an iterable of arrays. Decoded on `device` (CUDA: DALI's frames stay on it)."""
    if isinstance(video, (str, Path)):
        from affaccel.video.decode import iter_video

        for b in iter_video(video, backend=backend, device=device or "cpu", batch_size=batch_size):
            yield b.frames, np.asarray(b.timestamps_s, np.float64), int(b.start_index)
        return
    if hasattr(video, "shape"):
        if len(video.shape) != 4 or video.shape[-1] != 3:
            raise ValueError(f"frames: expected [T, H, W, 3] uint8, got {tuple(video.shape)}")
        batches: Iterable = (video[i:i + batch_size] for i in range(0, video.shape[0], batch_size))
    else:
        batches = video
    start = 0
    for fr in batches:
        n = int(fr.shape[0])
        ts = np.arange(start, start + n) / fps if fps else np.full(n, np.nan)
        yield fr, ts, start
        start += n
