"""Inference: videos, frames, crops or features in, the per-frame table out.

    predictor   AffectPredictor (decode -> faces -> crops -> encoder -> temporal -> table)
    temporal    THE windows -> temporal models -> overlap averaging path (validation uses it)
    streaming   the same with bounded memory, for very long videos
    table       the frozen per-frame table schema
    writers     csv / parquet tables and the ABAW text files

Names resolve lazily: importing this package imports neither torch nor pandas.
"""
from affaccel._lazy import lazy_module

_LAZY = {
    "AffectPredictor": "affaccel.inference.predictor",
    "VideoFailure": "affaccel.inference.predictor",
    "PredictionResult": "affaccel.inference.table",
    "NoFramesError": "affaccel.inference.streaming",
    "StreamingTemporal": "affaccel.inference.streaming",
    "predict_frames": "affaccel.inference.temporal",
    "schema_columns": "affaccel.inference.table",
    "write_result": "affaccel.inference.writers",
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_module(__name__, _LAZY)
