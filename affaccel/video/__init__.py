"""affaccel.video: decoding (DALI / PyAV), image-frame batches and face crops for CLIP.

Submodules: ``decode`` (iter_video, probe_video), ``frames`` (FrameLoader,
clip_preprocess_ref), ``crop`` (crop_faces, crop_faces_ref). Names below resolve lazily, so
importing this package imports neither torch nor DALI nor PyAV.
"""
from __future__ import annotations

from .._lazy import lazy_module

_LAZY = {
    "iter_video": "affaccel.video.decode",
    "read_video": "affaccel.video.decode",
    "probe_video": "affaccel.video.decode",
    "choose_backend": "affaccel.video.decode",
    "FrameBatch": "affaccel.video.decode",
    "VideoInfo": "affaccel.video.decode",
    "VideoDecodeError": "affaccel.video.decode",
    "FrameLoader": "affaccel.video.frames",
    "clip_preprocess_ref": "affaccel.video.frames",
    "CLIP_MEAN": "affaccel.video.frames",
    "CLIP_STD": "affaccel.video.frames",
    "crop_faces": "affaccel.video.crop",
    "crop_faces_ref": "affaccel.video.crop",
    "square_boxes": "affaccel.video.crop",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_module(__name__, _LAZY)
