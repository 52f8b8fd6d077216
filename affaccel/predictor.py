"""Inference on any video: ``AffectPredictor`` -> per-frame valence/arousal, expressions, AUs.

Pipeline per video (each stage can be skipped by handing in its output):

    decode (affaccel.video.decode) -> face boxes (tracker over the built-in detector, or the
    user's boxes) -> crop/resize/normalise (affaccel.video.crop) -> ClipEncoder -> features
    [T, D] -> windows (w, s) -> TemporalModel per task -> overlap averaging -> table [T, ...]

Frames without a face keep their row: their feature is the previous face frame's (the first
face frame's for leading ones), as the training feature cache does, so window alignment is
the one the model was trained with; their predictions are then written as NaN.

Two temporal paths give the same numbers: ``_temporal_batch`` cuts all windows of a whole
feature array at once (affaccel.segments, as the training-time validation does), and
``StreamingTemporal`` consumes features as frames arrive, holding at most about ``w + s``
frames of features plus the running overlap sums, so memory does not grow with video length.

Table schema (frozen; see docs/inference.md): ``frame`` (int64, 0-based decoded frame index),
``timestamp_s`` (float64, decoder's presentation time), ``face_found`` (bool), ``face_id``
(int64 track id, -1 without a face), ``face_x, face_y, face_w, face_h, face_score``
(float32, NaN without a face), then per task in the bundle: ``valence, arousal``;
``Neutral ... Other`` (probabilities) and ``expr_label`` (str); ``AU1 ... AU26``
(probabilities) and ``AU1_active ... AU26_active`` (float32 1.0/0.0 at probability >=
AU_THRESHOLD). Every prediction column is NaN on frames without a face.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from affaccel.tasks import ACTION_UNITS, EXPRESSIONS, TASKS

AU_THRESHOLD = 0.5          # binary AU columns: probability >= 0.5 (the challenge's threshold)
TASK_ORDER = ("va", "expr", "au")
BOX_COLUMNS = ("face_x", "face_y", "face_w", "face_h")


class NoFramesError(ValueError):
    """The input decoded to zero frames."""


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for, but CUDA is not available")
    return dev


# ----------------------------------------------------------------------------------------
# Result table
# ----------------------------------------------------------------------------------------

def prediction_columns(tasks: Sequence[str]) -> list[str]:
    """Prediction column names for the given tasks, in schema order."""
    cols: list[str] = []
    for t in TASK_ORDER:
        if t not in tasks:
            continue
        if t == "va":
            cols += ["valence", "arousal"]
        elif t == "expr":
            cols += [*EXPRESSIONS, "expr_label"]
        else:
            cols += [*ACTION_UNITS, *(f"{a}_active" for a in ACTION_UNITS)]
    return cols


def schema_columns(tasks: Sequence[str]) -> list[str]:
    return ["frame", "timestamp_s", "face_found", "face_id", *BOX_COLUMNS, "face_score",
            *prediction_columns(tasks)]


def build_table(first_frame: int, timestamps, boxes, scores, ids, found, preds: dict):
    """One DataFrame chunk in the frozen schema.

    timestamps: [n] float64; boxes: [n, 4]; scores: [n]; ids: [n] int; found: [n] bool;
    preds: task -> [n, K] float (VA values, EXPR / AU probabilities; rows of frames without a
    face are overwritten with NaN here).
    """
    import pandas as pd

    n = len(found)
    found = np.asarray(found, bool)
    cols: dict[str, Any] = {
        "frame": np.arange(first_frame, first_frame + n, dtype=np.int64),
        "timestamp_s": np.asarray(timestamps, np.float64),
        "face_found": found,
        "face_id": np.where(found, np.asarray(ids, np.int64), -1),
    }
    boxes = np.asarray(boxes, np.float32).reshape(n, 4).copy()
    boxes[~found] = np.nan
    for j, c in enumerate(BOX_COLUMNS):
        cols[c] = boxes[:, j]
    cols["face_score"] = np.where(found, np.asarray(scores, np.float32), np.float32(np.nan))
    for t in TASK_ORDER:
        if t not in preds:
            continue
        p = np.asarray(preds[t], np.float32).reshape(n, -1).copy()
        p[~found] = np.nan
        names = TASKS[t].columns
        for j, c in enumerate(names):
            cols[c] = p[:, j]
        if t == "expr":
            labels = np.asarray(EXPRESSIONS, dtype=object)[np.nan_to_num(p).argmax(1)]
            labels[~found] = np.nan
            cols["expr_label"] = labels
        elif t == "au":
            for j, c in enumerate(names):
                cols[f"{c}_active"] = np.where(found, (p[:, j] >= AU_THRESHOLD).astype(np.float32),
                                               np.float32(np.nan))
    return pd.DataFrame(cols, columns=schema_columns(list(preds)))


@dataclass
class PredictionResult:
    """Per-frame predictions of one video.

    frame: the table (schema in the module docstring); video: the input's name;
    seconds: wall time of the prediction; tasks: tasks predicted.
    """
    frame: Any
    video: str
    tasks: tuple[str, ...]
    seconds: float = float("nan")

    @property
    def n_frames(self) -> int:
        return int(len(self.frame))

    @property
    def n_faces(self) -> int:
        return int(self.frame["face_found"].sum())

    @property
    def fps(self) -> float:
        """Frames processed per second of wall time."""
        return self.n_frames / self.seconds if self.seconds > 0 else float("nan")

    def save(self, out_dir, fmt: str = "csv", name: str | None = None) -> list[Path]:
        """Write the table (csv / parquet) or the ABAW text files; see affaccel.predict."""
        from affaccel.predict import write_result

        return write_result(self, out_dir, fmt, name=name)

    def plot(self, path) -> Path:
        from affaccel.plots import plot_result

        return plot_result(self, path)


# ----------------------------------------------------------------------------------------
# Temporal stage: batch and streaming
# ----------------------------------------------------------------------------------------

def _window_weights(window: int, weighting: str) -> np.ndarray:
    from affaccel.segments import window_weights

    return np.asarray(window_weights(window, weighting), np.float64)


class _FeatureFiller:
    """Gives frames without a face the previous face frame's feature (leading ones: the first
    face frame's). Streaming: leading frames are held as a count until a face appears."""

    def __init__(self):
        self.last = None        # [D] feature of the latest face frame
        self.pending = 0        # leading frames seen before any face

    def __call__(self, feats, found) -> list:
        """feats: [B, D] torch (rows of no-face frames ignored), found: [B] bool -> list of
        ready feature blocks (torch [b, D]) in frame order; may be empty while no face seen."""
        import torch

        found = torch.as_tensor(np.asarray(found, bool))
        out = []
        if self.last is None:
            if not bool(found.any()):
                self.pending += len(found)
                return out
            first = int(torch.nonzero(found)[0])
            self.last = feats[first]
            lead = self.pending + first
            self.pending = 0
            for i in range(0, lead, 4096):  # bounded blocks, also for a long face-less start
                out.append(self.last.expand(min(4096, lead - i), -1).clone())
            feats, found = feats[first:], found[first:]
        # forward fill: index of the latest face frame at or before each row
        idx = torch.where(found, torch.arange(len(found)), torch.full((len(found),), -1))
        idx = torch.cummax(idx, 0).values
        block = torch.where((idx >= 0)[:, None], feats[idx.clamp(min=0)], self.last[None])
        if bool(found.any()):
            self.last = feats[int(torch.nonzero(found)[-1])]
        out.append(block)
        return out


class StreamingTemporal:
    """Windows and overlap averaging as features arrive, with bounded memory.

    ``push(feats [B, D])`` returns finalized predictions ``(first_frame, {task: [n, K]})``
    (possibly n = 0); ``finish()`` returns the rest. A frame is final once no future window can
    cover it: windows start at 0, s, 2s, ... and the one extra tail window (when the video
    does not end on a window boundary) starts at T - w >= (frames seen) - w. Features older
    than min(next start, seen - w) are dropped, so at most about w + s frames are held.
    """

    def __init__(self, run_windows, window: int, stride: int, tasks: Sequence[str],
                 weighting: str = "uniform", max_batch: int = 32):
        self.run_windows, self.w, self.s = run_windows, int(window), int(stride)
        self.tasks, self.max_batch = list(tasks), int(max_batch)
        self.weights = _window_weights(self.w, weighting)
        self.buf = None          # torch [L, D] features of frames [buf_start, n)
        self.buf_start = 0
        self.n = 0               # frames pushed
        self.next_start = 0      # start of the next regular window
        self.fin = 0             # frames [0, fin) are finalized
        self.acc: dict[str, np.ndarray] = {}   # task -> [n - fin, K] weighted sums
        self.wsum = np.zeros(0)                # [n - fin] weight sums
        self.n_windows = 0
        self.peak_rows = 0       # most feature rows / accumulator rows held at once (memory check)

    def _grow(self, feats) -> None:
        import torch

        self.buf = feats if self.buf is None else torch.cat([self.buf, feats])
        self.n += len(feats)
        self.wsum = np.concatenate([self.wsum, np.zeros(len(feats))])
        for t in self.tasks:
            if t in self.acc:
                self.acc[t] = np.concatenate([self.acc[t], np.zeros((len(feats), self.acc[t].shape[1]))])

    def _run(self, starts: list[int], lengths: list[int]) -> None:
        import torch

        if not starts:
            return
        x = torch.zeros((len(starts), self.w, self.buf.shape[1]), dtype=self.buf.dtype)
        mask = torch.zeros((len(starts), self.w), dtype=torch.bool)
        for i, (st, ln) in enumerate(zip(starts, lengths)):
            x[i, :ln] = self.buf[st - self.buf_start: st - self.buf_start + ln]
            mask[i, :ln] = True
        preds = self.run_windows(x, mask)                    # task -> [N, w, K] numpy
        for i, (st, ln) in enumerate(zip(starts, lengths)):
            lo = st - self.fin
            wts = self.weights[:ln]
            self.wsum[lo: lo + ln] += wts
            for t in self.tasks:
                p = np.asarray(preds[t][i, :ln], np.float64)
                if t not in self.acc:
                    self.acc[t] = np.zeros((len(self.wsum), p.shape[1]))
                self.acc[t][lo: lo + ln] += wts[:, None] * p
        self.n_windows += len(starts)

    def _pop(self, upto: int):
        k = upto - self.fin
        out = {t: a[:k] / self.wsum[:k, None] for t, a in self.acc.items()}
        if k > 0 and not out:
            out = {t: np.zeros((k, 0)) for t in self.tasks}
        first = self.fin
        self.acc = {t: a[k:] for t, a in self.acc.items()}
        self.wsum = self.wsum[k:]
        self.fin = upto
        return first, out

    def _trim(self) -> None:
        keep = max(0, min(self.next_start, self.n - self.w))
        if keep > self.buf_start:
            self.buf = self.buf[keep - self.buf_start:].clone()
            self.buf_start = keep

    def push(self, feats):
        if len(feats):
            self._grow(feats)
        ready = []
        while self.next_start + self.w <= self.n:
            ready.append(self.next_start)
            self.next_start += self.s
            if len(ready) == self.max_batch:
                self._run(ready, [self.w] * len(ready))
                ready = []
        self._run(ready, [self.w] * len(ready))
        self.peak_rows = max(self.peak_rows, len(self.buf), len(self.wsum))
        upto = max(self.fin, min(self.next_start, self.n - self.w))
        out = self._pop(upto)
        self._trim()
        return out

    def finish(self):
        if self.n == 0:
            raise NoFramesError("no frames to predict")
        if self.next_start == 0:                      # shorter than a window: one padded window
            self._run([0], [self.n])
        elif self.next_start - self.s + self.w < self.n:   # tail window ending at the last frame
            self._run([self.n - self.w], [self.w])
        out = self._pop(self.n)
        self.buf = None
        return out


# ----------------------------------------------------------------------------------------
# The predictor
# ----------------------------------------------------------------------------------------

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


class AffectPredictor:
    """Per-frame affect from videos, frames, face crops or features.

    models: task -> TemporalModel (any subset of va / expr / au; all with the same feature
    size D). encoder: ClipEncoder, needed unless features are given. window / stride: the
    bundle's window config. tracker_options / detector: face finding (see affaccel.faces).
    precision: encoder compute precision ("auto": bf16 on CUDA, fp32 on CPU).
    """

    def __init__(self, models: dict, encoder=None, window: int = 300, stride: int = 200,
                 device: str = "auto", detector=None, tracker_options: dict | None = None,
                 crop_expand: float = 1.0, precision: str = "auto", decode_backend: str = "auto",
                 window_batch: int = 32, weighting: str = "uniform"):
        if not models:
            raise ValueError("AffectPredictor needs at least one temporal model (va/expr/au)")
        unknown = set(models) - set(TASK_ORDER)
        if unknown:
            raise ValueError(f"unknown task(s) {sorted(unknown)}; expected among {TASK_ORDER}")
        if not 0 < stride <= window:
            raise ValueError(f"need 0 < stride <= window, got window={window}, stride={stride}")
        self.device = resolve_device(device)
        self.models = {t: m.to(self.device).eval() for t, m in models.items()}
        self.tasks = tuple(t for t in TASK_ORDER if t in self.models)
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

        from affaccel.nn.clip import autocast

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

        out = {}
        with torch.inference_mode():
            x = x.to(self.device, torch.float32)
            mask = mask.to(self.device)
            for t, m in self.models.items():
                out[t] = m.to_prediction(m(x, mask)).float().cpu().numpy()
        return out

    def _temporal_batch(self, feats, weighting: str) -> dict:
        """Whole-array path: feats [T, D] -> task -> [T, K] (float64)."""
        import torch

        from affaccel.segments import assemble_windows, overlap_average, plan_windows

        n = int(feats.shape[0])
        starts = np.asarray(plan_windows(n, self.window, self.stride))
        wins, mask = assemble_windows(feats, self.window, self.stride)
        wins, mask = torch.as_tensor(wins), torch.as_tensor(mask)
        parts: dict[str, list] = {t: [] for t in self.tasks}
        for i in range(0, len(starts), self.window_batch):
            p = self.run_windows(wins[i:i + self.window_batch], mask[i:i + self.window_batch])
            for t in self.tasks:
                parts[t].append(p[t])
        return {t: np.asarray(overlap_average(np.concatenate(parts[t]), starts, n,
                                              weighting=weighting), np.float64)
                for t in self.tasks}

    def _crop(self, frames, boxes):
        from affaccel.video.crop import crop_faces

        enc = self.encoder
        return crop_faces(frames, boxes, enc.image_size, enc.mean, enc.std,
                          expand=self.crop_expand, device=self.device)

    def _iter_chunks(self, video, boxes=None, crops=None, features=None, batch_size: int = 64,
                     fps: float | None = None, face_found=None, progress=None) -> Iterator[_Chunk]:
        """Frames -> per-frame boxes and features, one batch at a time."""
        import torch

        if features is not None or crops is not None:
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
                             np.full(b, -1, np.int64), found[sl], f)
            return
        user_boxes = None
        if boxes is not None:
            from affaccel.faces.boxes import check_boxes, read_boxes_csv

            user_boxes = (read_boxes_csv(boxes) if isinstance(boxes, (str, Path))
                          else check_boxes(boxes, len(boxes)))
        if self.encoder is None:
            raise ValueError("this predictor has no encoder: pass features= (or load a bundle "
                             "with an encoder) to predict from frames or videos")
        tracker = None
        if user_boxes is None:
            from affaccel.faces.tracker import FaceTracker

            tracker = FaceTracker(self.detector, **self.tracker_options)
        for batch in _iter_frames(video, batch_size, fps, self.decode_backend):
            frames, ts, start = batch
            b = len(frames)
            if tracker is not None:
                tr = tracker.update(frames)
                bx, sc, ids = tr.boxes, tr.scores, tr.ids
            else:
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
            if progress is not None:
                progress.update(b)
            yield _Chunk(np.asarray(ts, np.float64), bx, sc, ids, found, f)

    # -- public ------------------------------------------------------------------------
    def predict_stream(self, video, boxes=None, crops=None, features=None, batch_size: int = 64,
                       weighting: str | None = None, fps: float | None = None,
                       face_found=None, progress=None) -> Iterator[Any]:
        """Yield DataFrame chunks (frozen schema) as frames are finalized; bounded memory.

        Memory: one decoded batch, about ``window + stride`` feature rows, the overlap sums of
        the frames not yet final, and the side data (boxes, timestamps) of those frames.
        Raises NoFramesError when the input has no frames.
        """
        import pandas as pd

        stream = StreamingTemporal(self.run_windows, self.window, self.stride, self.tasks,
                                   weighting=weighting or self.weighting, max_batch=self.window_batch)
        filler = _FeatureFiller()
        side: list[np.ndarray] = []       # per-frame side columns of not-yet-emitted frames
        emitted = 0

        def emit(first, preds):
            nonlocal side, emitted
            k = len(next(iter(preds.values()))) if preds else 0
            if k == 0:
                return None
            cols = [np.concatenate(c) for c in zip(*side)] if side else None
            ts, bx, sc, ids, found = (c[:k] for c in cols)
            side = [tuple(c[k:] for c in cols)]
            df = build_table(first, ts, bx, sc, ids, found, preds)
            emitted += k
            return df

        for ch in self._iter_chunks(video, boxes, crops, features, batch_size, fps, face_found,
                                    progress):
            side.append((ch.timestamps, ch.boxes, ch.scores, ch.ids, ch.found))
            for block in filler(ch.feats, ch.found):
                df = emit(*stream.push(block))
                if df is not None:
                    yield df
        if stream.n + filler.pending == 0:
            raise NoFramesError(f"{_name_of(video)}: no frames decoded")
        if filler.pending:      # no face anywhere: frames keep zero features (outputs are NaN)
            import torch

            dim = self.feature_dim or 1
            for i in range(0, filler.pending, 4096):
                stream.push(torch.zeros((min(4096, filler.pending - i), dim)))
        df = emit(*stream.finish())
        if df is not None:
            yield df

    def predict_video(self, video, boxes=None, crops=None, features=None, batch_size: int = 64,
                      weighting: str | None = None, stream: bool = False,
                      fps: float | None = None,
                      face_found=None, progress: bool | Any = False) -> PredictionResult:
        """Predict every frame of one input.

        video: a file path, or frames ``[T, H, W, 3]`` uint8 (NumPy / torch), or an iterable of
        such batches; ignored when ``crops`` or ``features`` is given.
        boxes: ``[T, 4]`` array or a CSV path (frame,x,y,w,h) instead of the detector.
        crops: ``[T, 3, S, S]`` normalised face crops (skips decoding and detection).
        features: ``[T, D]`` encoder features (skips the encoder too).
        face_found: ``[T]`` bool for crops / features (default: all True).
        fps: timestamps for frame arrays, crops and features (``frame / fps``; NaN without).
        stream: use the bounded-memory streaming path (same numbers).
        """
        import pandas as pd

        t0 = time.perf_counter()
        bar = _progress_bar(progress, video, features if features is not None else crops)
        try:
            if stream:
                table = pd.concat(list(self.predict_stream(
                    video, boxes, crops, features, batch_size, weighting, fps, face_found, bar)),
                    ignore_index=True)
            else:
                table = self._predict_batch(video, boxes, crops, features, batch_size, weighting,
                                            fps, face_found, bar)
        finally:
            if bar is not None and progress is True:
                bar.close()
        return PredictionResult(table, _name_of(video), self.tasks, time.perf_counter() - t0)

    def _collect(self, video, boxes, crops, features, batch_size, fps, face_found, bar):
        """All chunks of one input -> (side columns, filled features [T, D])."""
        import torch

        filler = _FeatureFiller()
        side, blocks = [], []
        for ch in self._iter_chunks(video, boxes, crops, features, batch_size, fps, face_found, bar):
            side.append((ch.timestamps, ch.boxes, ch.scores, ch.ids, ch.found))
            blocks += filler(ch.feats, ch.found)
        if not side:
            raise NoFramesError(f"{_name_of(video)}: no frames decoded")
        cols = [np.concatenate(c) for c in zip(*side)]
        if filler.pending:
            blocks.append(torch.zeros((filler.pending, self.feature_dim or 1)))
        return cols, torch.cat(blocks)

    def _predict_batch(self, video, boxes, crops, features, batch_size, weighting, fps,
                       face_found, bar):
        cols, feats = self._collect(video, boxes, crops, features, batch_size, fps, face_found, bar)
        preds = self._temporal_batch(feats, weighting or self.weighting)
        return build_table(0, *cols, preds)

    def predict_videos(self, videos: Sequence, boxes: Sequence | None = None,
                       batch_size: int = 64, weighting: str | None = None,
                       errors: str = "raise", progress: bool = False) -> list:
        """Predict several inputs; the temporal stage batches windows across videos.

        Features of every video are computed first (features are small: D floats a frame),
        then all windows go through the temporal models in shared batches.
        errors: "raise" stops at the first bad input; "return" puts a ``VideoFailure``
        (video, reason) in its place and goes on.
        """
        import torch

        from affaccel.segments import assemble_windows_batch, overlap_average, plan_windows

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
                done.append((v, cols, feats, time.perf_counter() - t0))
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
            feats = [d[2] for d in ok]
            wins, mask, index = assemble_windows_batch(feats, self.window, self.stride)
            wins, mask = torch.as_tensor(wins), torch.as_tensor(mask)
            parts: dict[str, list] = {t: [] for t in self.tasks}
            for i in range(0, len(wins), self.window_batch):
                p = self.run_windows(wins[i:i + self.window_batch], mask[i:i + self.window_batch])
                for t in self.tasks:
                    parts[t].append(p[t])
            allp = {t: np.concatenate(parts[t]) for t in self.tasks}
            index = np.asarray(index)
            share = (time.perf_counter() - t0) / len(ok)
            for k, (v, cols, f, secs) in enumerate(ok):
                sel = np.nonzero(index[:, 0] == k)[0]
                starts = index[sel, 1]
                preds = {t: np.asarray(overlap_average(allp[t][sel], starts, len(f),
                                                       weighting=weighting), np.float64)
                         for t in self.tasks}
                results[id(ok[k])] = PredictionResult(build_table(0, *cols, preds), _name_of(v),
                                                      self.tasks, secs + share)
        return [d if isinstance(d, VideoFailure) else results[id(d)] for d in done]


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


def _iter_frames(video, batch_size: int, fps: float | None, backend: str):
    """Yield (frames [B, H, W, 3] uint8, timestamps [B], start index) from a path, an array
    [T, H, W, 3] or an iterable of arrays."""
    if isinstance(video, (str, Path)):
        from affaccel.video.decode import iter_video

        for b in iter_video(video, backend=backend, device="cpu", batch_size=batch_size):
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
