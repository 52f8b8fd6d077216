"""Keep one stable face box per subject across frames.

Detection runs every ``redetect_every`` frames; in between, each track holds its last box.
Detections are matched to tracks by IoU (greedy, best pair first); a matched track's box moves
towards the detection by an exponential moving average (``smoothing`` = weight of the new
detection), which removes the frame-to-frame jitter of the cascade. A track that misses more
than ``max_missed`` detections in a row is dropped. Every track has an integer id, stable while
it lives. The *subject* followed is, by default, the largest (or most central) face when the
current subject is lost; it is kept while its track lives, so a second person entering the
frame does not steal the box. ``face_id`` follows a given track id instead.

Scene cuts end every track: a frame whose coarse colour histograms (16 soft bins per channel,
every 4th pixel) differ from the previous frame's by more than ``cut_threshold`` (total variation
distance averaged over the channels, 0..1) is a cut; tracks and subject are dropped there,
the detector runs on that frame whatever ``redetect_every`` says, and faces after the cut get new
ids. ``cut_threshold=None`` turns cut detection off.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from affaccel.faces.boxes import pairwise_iou


@dataclass
class TrackerConfig:
    redetect_every: int = 1     # run the detector on every N-th frame (1 = every frame)
    smoothing: float = 0.6      # EMA weight of a new detection (1.0 = no smoothing)
    select: str = "largest"     # subject when none is followed: "largest" | "central"
    iou_match: float = 0.3      # min IoU between a detection and a track to be the same face
    max_missed: int = 2         # consecutive missed detections before a track is dropped
    face_id: int | None = None  # follow this track id only (None: automatic subject)
    cut_threshold: float | None = 0.4  # histogram distance that makes a scene cut (None: off)

    def __post_init__(self):
        if self.redetect_every < 1:
            raise ValueError(f"redetect_every must be >= 1, got {self.redetect_every}")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")
        if self.select not in ("largest", "central"):
            raise ValueError(f"select must be 'largest' or 'central', got {self.select!r}")
        if self.max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {self.max_missed}")
        if self.cut_threshold is not None and not 0.0 < self.cut_threshold <= 1.0:
            raise ValueError(f"cut_threshold must be in (0, 1] or None, got {self.cut_threshold}")


@dataclass
class Track:
    id: int
    box: np.ndarray            # [4] x, y, w, h (smoothed)
    score: float
    missed: int = 0
    hits: int = 1


@dataclass
class TrackOutput:
    """Per-frame boxes of the followed subject: ``boxes [B, 4]`` (NaN rows = no face),
    ``scores [B]`` (NaN without a face), ``ids [B]`` int64 track id (-1 without a face).
    ``tracks [N, 7]`` float64: every live track on every frame, one row each, columns
    ``TRACK_COLUMNS`` (absolute frame index, track id, x, y, w, h, score), in frame order."""
    boxes: np.ndarray
    scores: np.ndarray
    ids: np.ndarray
    detected: np.ndarray = field(default=None)  # [B] bool: the detector ran on this frame
    cuts: np.ndarray = field(default=None)      # [B] bool: a scene cut starts at this frame
    tracks: np.ndarray = field(default=None)    # [N, 7] every live track (TRACK_COLUMNS)


TRACK_COLUMNS = ("frame", "id", "x", "y", "w", "h", "score")


HIST_BINS = 16      # per channel, soft (linear) binning: a small change of every pixel value
HIST_STEP = 4       # moves little mass (a fade does not look like a cut); every 4th pixel


def _soft_bin_matrix() -> np.ndarray:
    """[256, HIST_BINS] float64: the share of pixel value v in each bin (linear interpolation
    between neighbouring bin centres, which sit at the integers of v * BINS / 256 - 0.5)."""
    pos = np.clip(np.arange(256, dtype=np.float64) * (HIST_BINS / 256.0) - 0.5, 0.0, HIST_BINS - 1.0)
    lo = np.floor(pos).astype(np.int64)
    w = pos - lo
    m = np.zeros((256, HIST_BINS))
    np.add.at(m, (np.arange(256), lo), 1.0 - w)
    np.add.at(m, (np.arange(256), np.minimum(lo + 1, HIST_BINS - 1)), w)
    return m


_SOFT_BINS = _soft_bin_matrix()


def colour_histograms(frames: np.ndarray) -> np.ndarray:
    """frames [B, H, W, 3] uint8 -> [B, 3 * HIST_BINS]: per channel, a normalised histogram
    with linear interpolation between neighbouring bins. Computed as an exact 256-value count
    per frame and channel (one integer bincount) times the [256, BINS] soft-bin matrix."""
    b = len(frames)
    x = np.asarray(frames[:, ::HIST_STEP, ::HIST_STEP]).reshape(b, -1, 3).astype(np.int32)
    x += ((np.arange(b, dtype=np.int32)[:, None, None] * 3 + np.arange(3, dtype=np.int32)[None, None, :])
          * 256)                                                      # (frame, channel, value) index
    counts = np.bincount(x.ravel(), minlength=b * 3 * 256).reshape(b * 3, 256)
    # einsum's own loops, not `@`: an int64 @ float64 product goes to OpenBLAS, whose worker
    # threads then spin beside torch's and slowed the CPU encoder about 3x in the pipeline
    h = np.einsum("ij,jk->ik", counts.astype(np.float64), _SOFT_BINS)   # [B * 3, BINS]
    return h.reshape(b, 3 * HIST_BINS) / max(x.shape[1], 1)


def histogram_changes(hists: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """[B] change of each frame's histograms from the frame before, in 0..1: the total variation
    distance averaged over the channels (0 for the first frame of a video; ``previous`` is the
    last histogram of the batch before)."""
    prev = np.concatenate([hists[:1] if previous is None else previous[None], hists[:-1]])
    return np.abs(hists - prev).sum(1) / 6.0


class CutDetector:
    """Scene cuts of consecutive frame batches of one video: a frame whose colour histograms
    differ from the previous frame's by more than ``threshold`` (``None``: never a cut).
    ``__call__(frames [B, H, W, 3] uint8) -> [B] bool`` (never the video's first frame)."""

    def __init__(self, threshold: float | None = 0.4):
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise ValueError(f"cut_threshold must be in (0, 1] or None, got {threshold}")
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self._last_hist: np.ndarray | None = None

    def __call__(self, frames) -> np.ndarray:
        if hasattr(frames, "detach"):
            frames = frames.detach().cpu().numpy()
        if self.threshold is None or not len(frames):
            return np.zeros(len(frames), bool)
        hists = colour_histograms(np.asarray(frames))
        cuts = histogram_changes(hists, self._last_hist) > self.threshold
        self._last_hist = hists[-1]
        return cuts


class FaceTracker:
    """Stateful tracker: call ``update`` on consecutive frame batches of one video.

    ``update(frames: [B, H, W, 3] uint8) -> TrackOutput``. ``reset()`` before a new video.
    """

    def __init__(self, detector=None, config: TrackerConfig | None = None, **overrides):
        cfg = config or TrackerConfig()
        if overrides:
            cfg = TrackerConfig(**{**cfg.__dict__, **overrides})
        self.config = cfg
        if detector is None:
            from affaccel.faces.detector import HaarFaceDetector

            detector = HaarFaceDetector()
        self.detector = detector
        self.reset()

    def reset(self) -> None:
        self.tracks: list[Track] = []
        self.subject: int | None = None
        self.frame_index = 0
        self._next_id = 0
        self._frame_hw: tuple[int, int] | None = None
        self._cuts = CutDetector(self.config.cut_threshold)

    # -- association --------------------------------------------------------------------
    def _associate(self, dets: np.ndarray) -> None:
        """Update tracks with one frame's detections ``dets: [n, 5]``."""
        cfg = self.config
        iou = pairwise_iou(np.stack([t.box for t in self.tracks]) if self.tracks
                           else np.zeros((0, 4)), dets[:, :4])
        matched_t, matched_d = set(), set()
        if iou.size:
            order = np.dstack(np.unravel_index(np.argsort(-iou, axis=None), iou.shape))[0]
            for ti, di in order:
                if iou[ti, di] < cfg.iou_match:
                    break
                if ti in matched_t or di in matched_d:
                    continue
                t = self.tracks[ti]
                t.box = cfg.smoothing * dets[di, :4] + (1.0 - cfg.smoothing) * t.box
                t.score, t.missed, t.hits = float(dets[di, 4]), 0, t.hits + 1
                matched_t.add(ti)
                matched_d.add(di)
        kept = []
        for ti, t in enumerate(self.tracks):
            if ti not in matched_t:
                t.missed += 1
            if t.missed <= cfg.max_missed:
                kept.append(t)
        self.tracks = kept
        for di in range(len(dets)):
            if di not in matched_d:
                self.tracks.append(Track(self._next_id, dets[di, :4].copy(), float(dets[di, 4])))
                self._next_id += 1

    def _choose_subject(self) -> None:
        cfg = self.config
        alive = {t.id: t for t in self.tracks}
        if cfg.face_id is not None:
            self.subject = cfg.face_id if cfg.face_id in alive else None
            return
        if self.subject in alive:
            return
        # only tracks seen in the latest detection may become the subject
        fresh = [t for t in self.tracks if t.missed == 0]
        if not fresh:
            self.subject = None
            return
        if cfg.select == "largest":
            best = max(fresh, key=lambda t: t.box[2] * t.box[3])
        else:
            h, w = self._frame_hw
            centre = np.array([w / 2.0, h / 2.0])
            best = min(fresh, key=lambda t: float(np.sum(
                (t.box[:2] + t.box[2:] / 2.0 - centre) ** 2)))
        self.subject = best.id

    # -- public -------------------------------------------------------------------------
    def update(self, frames) -> TrackOutput:
        if hasattr(frames, "detach"):
            frames = frames.detach().cpu().numpy()
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames [B, H, W, 3], got shape {tuple(frames.shape)}")
        b = len(frames)
        self._frame_hw = tuple(frames.shape[1:3])
        idx = np.arange(self.frame_index, self.frame_index + b)
        cuts = self._cuts(frames)
        det_rows = np.nonzero((idx % self.config.redetect_every == 0) | cuts)[0]
        dets = self.detector.detect(frames[det_rows]) if len(det_rows) else []
        det_of = dict(zip(det_rows.tolist(), dets))
        out = TrackOutput(np.full((b, 4), np.nan), np.full(b, np.nan),
                          np.full(b, -1, np.int64), np.zeros(b, bool), cuts)
        live: list[list[float]] = []
        for i in range(b):
            if cuts[i]:                 # a new scene: nobody from before is in it
                self.tracks, self.subject = [], None
            if i in det_of:
                self._associate(np.asarray(det_of[i], np.float64).reshape(-1, 5))
                self._choose_subject()
                out.detected[i] = True
            track = next((t for t in self.tracks if t.id == self.subject), None)
            if track is not None:
                out.boxes[i], out.scores[i], out.ids[i] = track.box, track.score, track.id
            live += [[self.frame_index + i, t.id, *t.box, t.score] for t in self.tracks]
        out.tracks = np.asarray(live, np.float64).reshape(-1, len(TRACK_COLUMNS))
        self.frame_index += b
        return out

    def track(self, batches) -> TrackOutput:
        """Run ``update`` over an iterable of frame batches; concatenate the outputs."""
        outs = [self.update(f) for f in batches]
        if not outs:
            return TrackOutput(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64),
                               np.zeros(0, bool), np.zeros(0, bool), np.zeros((0, len(TRACK_COLUMNS))))
        return TrackOutput(*(np.concatenate([getattr(o, k) for o in outs])
                             for k in ("boxes", "scores", "ids", "detected", "cuts", "tracks")))
