"""Face boxes for inference: a built-in detector, a tracker and user-supplied box files.

Light at import: the detector (OpenCV) and NumPy-heavy modules load on first use.
Boxes are ``(x, y, w, h)`` in pixels of the decoded frame; a NaN row means "no face".
"""
from affaccel._lazy import lazy_module

_LAZY = {
    "HaarFaceDetector": "affaccel.faces.detector",
    "detect_faces": "affaccel.faces.detector",
    "FaceTracker": "affaccel.faces.tracker",
    "TrackerConfig": "affaccel.faces.tracker",
    "read_boxes_csv": "affaccel.faces.boxes",
    "box_iou": "affaccel.faces.boxes",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_module(__name__, _LAZY)
