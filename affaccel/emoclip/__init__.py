"""EmoCLIP: zero-shot video expression recognition from text descriptions.

Foteinopoulou & Patras, FG 2024 (arXiv 2310.16640), on affaccel's decode/face/window machinery:
a CLIP video-text model (``model``), symmetric InfoNCE (``loss``), class descriptions and label
files (``descriptions``), synthetic sample-level captions (``captions``), clip sampling
(``clips``), EmoCLIP-code checkpoints (``convert``), training (``fit``), zero-shot evaluation and
embeddings (``evaluate``), per-frame scores (``frames``). Commands: ``python -m
affaccel.emoclip.train`` / ``.zeroshot`` / ``.embed``. docs/emoclip.md has the details.

Importing this package imports nothing heavy.
"""
