"""Configuration dataclasses. The paper's values live here, once, with their source.

Paper: Zhou, Ling, Cai, "Emotion Recognition with CLIP and Sequential Learning", 8th ABAW
(arXiv 2503.09929). Values the paper does not give are ours; they are marked "ours".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# --- Paper values (one place) -------------------------------------------------------------
PAPER_WINDOW = 300            # sec. 3.2: window length w in frames
PAPER_STRIDE = 200            # sec. 3.2: stride s in frames
PAPER_FINETUNE_LR = 1e-4      # sec. 3.1: AdamW learning rate for fine-tuning CLIP
PAPER_FINETUNE_BATCH = 256    # sec. 3.1: fine-tuning batch size
PAPER_TEMPORAL_LR = 3e-5      # sec. 4.2: AdamW learning rate of the temporal model
PAPER_TEMPORAL_WD = 1e-5      # sec. 4.2: weight decay
PAPER_DROPOUT = 0.3           # sec. 4.2: dropout
PAPER_BATCH = 32              # sec. 4.2: batch size of the temporal model
PAPER_WARMUP_EPOCHS = 1       # sec. 4.2: cosine schedule with one warm-up epoch
PAPER_BACKBONE = "ViT-B-16"   # sec. 3.1: CLIP ViT-B/16 image encoder


@dataclass
class WindowConfig:
    window: int = PAPER_WINDOW   # frames per window (paper)
    stride: int = PAPER_STRIDE   # frames between window starts (paper); must be <= window


def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def from_dict(cls, data: dict):
    """Rebuild a (nested) config dataclass from ``to_dict`` output; unknown keys are an error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    kwargs = {}
    for key, value in data.items():
        ftype = names[key].type
        sub = _DATACLASSES.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        kwargs[key] = from_dict(sub, value) if sub is not None and isinstance(value, dict) else value
    return cls(**kwargs)


# Nested config classes by name, for from_dict (annotations are strings under
# `from __future__ import annotations`). Modules defining configs register them here.
_DATACLASSES: dict[str, type] = {"WindowConfig": WindowConfig}


def register_config(cls):
    """Class decorator: make a config dataclass rebuildable by from_dict when nested."""
    _DATACLASSES[cls.__name__] = cls
    return cls


__all__ = [n for n in dir() if n.startswith("PAPER_")] + [
    "WindowConfig", "to_dict", "from_dict", "register_config", "field",
]
