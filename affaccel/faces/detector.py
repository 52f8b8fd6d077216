"""Built-in face detector: OpenCV's Haar cascades, which ship inside opencv-python-headless 4.x.

Why Haar: it is the only face detector among our dependencies whose weights are inside the
installed package (``cv2.data.haarcascades``), so nothing is downloaded at run time. Checked
alternatives: the mediapipe 1.2.2 wheel ships no .tflite model (its FaceDetector task needs a
downloaded file); OpenCV's YuNet (``cv2.FaceDetectorYN``) needs an ONNX file that is not shipped.

Frames are converted to grey, downscaled so the longer side is at most ``max_side`` pixels
(detection cost grows with area; faces in affect videos are large) and histogram-equalised.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CASCADES = {
    "frontal": "haarcascade_frontalface_default.xml",
    "frontal_alt": "haarcascade_frontalface_alt.xml",
    "frontal_alt2": "haarcascade_frontalface_alt2.xml",
    "profile": "haarcascade_profileface.xml",
}


@dataclass
class DetectorConfig:
    cascade: str = "frontal_alt2"   # key of CASCADES (or a path to a cascade XML file)
    max_side: int = 320             # frames are downscaled so max(H, W) <= this before detection
    scale_factor: float = 1.1       # image-pyramid step of the cascade
    min_neighbors: int = 4          # raw detections a box needs to be kept (higher: fewer FPs)
    min_face_frac: float = 0.15     # smallest face side, as a fraction of min(H, W) (speed: faces
    #                                 smaller than this carry little affect detail anyway)
    # The cascade's box is tight around eyes, nose and mouth. Face crops for the model (Aff-Wild2
    # cropped_aligned, the synthetic set's box files) show the whole head with a margin, so the
    # box is scaled about its centre and moved up by box_shift_y * (its width). Calibrated on
    # the synthetic set's ground-truth boxes (median ground-truth side / cascade side, median
    # centre offset / side): 1.46 and -0.047 (66 matches) with the current renderer, 1.56 and
    # -0.079 (112 matches) with its first version; we take values between the two.
    box_scale: float = 1.5          # 1.0 keeps the cascade's tight box
    box_shift_y: float = -0.06      # 0.0 keeps the cascade's centre


def to_crop_boxes(boxes: np.ndarray, scale: float, shift_y: float) -> np.ndarray:
    """Tight face boxes ``[n, 4]`` -> crop-convention boxes: side * scale about the centre,
    centre moved by ``shift_y * w`` (negative = up)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    cx = b[:, 0] + b[:, 2] / 2
    cy = b[:, 1] + b[:, 3] / 2 + shift_y * b[:, 2]
    w, h = b[:, 2] * scale, b[:, 3] * scale
    return np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)


class HaarFaceDetector:
    """Batched face detection with an OpenCV Haar cascade.

    ``detect(frames: [B, H, W, 3] uint8 RGB)`` -> list of B arrays ``[n_i, 5]`` float64 rows
    ``(x, y, w, h, score)`` in pixels of the input frame, sorted by decreasing area; boxes are in
    the crop convention (see ``DetectorConfig.box_scale``) and may reach past the frame's edge
    (the crop pads with zeros there). ``score``
    is the number of raw cascade hits merged into the box (OpenCV's ``numDetections``): an
    evidence count, higher is surer, not a probability.
    """

    def __init__(self, config: DetectorConfig | None = None, **overrides):
        import cv2

        cfg = config or DetectorConfig()
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise ValueError(f"HaarFaceDetector: unknown option {k!r}")
            setattr(cfg, k, v)
        self.config = cfg
        path = Path(cfg.cascade)
        if cfg.cascade in CASCADES:
            path = Path(cv2.data.haarcascades) / CASCADES[cfg.cascade]
        elif not path.is_file():
            raise ValueError(f"cascade {cfg.cascade!r}: expected one of {sorted(CASCADES)} "
                             "or the path of a cascade XML file")
        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV could not load the cascade {path}")

    def detect_one(self, frame: np.ndarray) -> np.ndarray:
        """``frame: [H, W, 3]`` uint8 RGB -> ``[n, 5]`` (x, y, w, h, score)."""
        cv2, cfg = self._cv2, self.config
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected a frame [H, W, 3], got shape {tuple(frame.shape)}")
        h, w = frame.shape[:2]
        scale = min(1.0, cfg.max_side / max(h, w))
        grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))),
                              interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)
        min_side = max(12, int(cfg.min_face_frac * min(grey.shape)))
        rects, counts = self._cascade.detectMultiScale2(
            grey, scaleFactor=cfg.scale_factor, minNeighbors=cfg.min_neighbors,
            minSize=(min_side, min_side))
        if len(rects) == 0:
            return np.zeros((0, 5))
        out = np.concatenate([to_crop_boxes(np.asarray(rects, np.float64) / scale,
                                            cfg.box_scale, cfg.box_shift_y),
                              np.asarray(counts, np.float64).reshape(-1, 1)], axis=1)
        return out[np.argsort(-out[:, 2] * out[:, 3], kind="stable")]

    def detect(self, frames) -> list[np.ndarray]:
        """``frames: [B, H, W, 3]`` uint8 (NumPy or a CPU/GPU torch tensor) -> B arrays [n_i, 5]."""
        if hasattr(frames, "detach"):  # torch tensor: the cascade runs on CPU NumPy
            frames = frames.detach().cpu().numpy()
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected frames [B, H, W, 3] uint8, got shape "
                             f"{tuple(frames.shape)} {frames.dtype}")
        return [self.detect_one(f) for f in frames]

    __call__ = detect


def detect_faces(frames, **options) -> list[np.ndarray]:
    """One-shot convenience: ``HaarFaceDetector(**options).detect(frames)``."""
    return HaarFaceDetector(**options).detect(frames)
