"""Sample-level captions generated from a clip's labels (the synthetic set's stand-in for MAFW's
human-written clip descriptions).

What a caption can say is what the data records: the active action units (in FACS words, see
``affaccel.emoclip.facs``), valence/arousal qualifiers and, for the built-in synthetic set, the
head motion and occluders its generator drew (recomputed from the set's manifest by
``synthetic_extras``). Several templates phrase them; a share of the captions (``name_share``)
names the clip's expression, the rest never does, so the text tower has to learn the cue words.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affaccel.emoclip import facs
from affaccel.tasks import ACTION_UNITS, EXPRESSIONS

log = logging.getLogger(__name__)

ADJECTIVES = {"Neutral": "calm", "Anger": "angry", "Disgust": "disgusted", "Fear": "fearful",
              "Happiness": "happy", "Sadness": "sad", "Surprise": "surprised"}
AU_ACTIVE_SHARE = 0.3      # an AU counts as active when on in >= 30% of the clip's frames


@dataclass
class ClipFacts:
    """What is known about one clip."""
    aus: tuple = ()                 # active action units, e.g. ("AU6", "AU12")
    valence: float | None = None    # mean over the clip, [-1, 1]
    arousal: float | None = None
    expression: str | None = None   # majority expression name (None: unknown)
    head: str | None = None         # "fast" | "slow" head motion (synthetic set only)
    occluder: str | None = None     # "hand" | "bar" when something covers the face (synthetic)


def clip_facts(labels: dict, masks: dict, frames: np.ndarray, extras: dict | None = None) -> ClipFacts:
    """Facts of the clip made of ``frames`` (indices into the video) from a VideoRecord's
    ``labels`` / ``label_mask`` and optional per-frame ``extras`` (``synthetic_extras``)."""
    frames = np.asarray(frames, np.int64)
    out = ClipFacts()
    if "au" in labels:
        m = masks["au"][frames]
        if m.any():
            on = (labels["au"][frames][m] == 1).mean(0)
            out.aus = tuple(a for a, s in zip(ACTION_UNITS, on) if s >= AU_ACTIVE_SHARE)
    if "va" in labels:
        m = masks["va"][frames]
        if m.any():
            v, a = labels["va"][frames][m].mean(0)
            out.valence, out.arousal = float(v), float(a)
    if "expr" in labels:
        m = masks["expr"][frames]
        if m.any():
            out.expression = EXPRESSIONS[int(np.bincount(labels["expr"][frames][m], minlength=8).argmax())]
    if extras:
        speed = extras["head_speed"][frames].mean()
        out.head = "fast" if speed > HEAD_FAST else "slow" if speed < HEAD_SLOW else None
        occ = [o for o in extras["occluder"][frames] if o]
        if len(occ) >= max(2, len(frames) // 4):
            out.occluder = max(set(occ), key=occ.count)
    return out


HEAD_FAST = 2.2   # mean px/frame of the head-shake in the synthetic set (its arousal channel)
HEAD_SLOW = 1.3


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def make_caption(facts: ClipFacts, rng: np.random.Generator, name_share: float = 0.4) -> str:
    """One caption of ``facts``; phrasing and template drawn with ``rng``."""
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    aus = list(facts.aus)
    rng.shuffle(aus)
    cues = _join([pick(facs.AU_PHRASES[a]) for a in aus]) if aus else pick(facs.NO_ACTION)
    extra = []
    if facts.valence is not None and rng.random() < 0.7:
        extra.append(pick(facs.VALENCE_WORDS[facs.valence_word(facts.valence)]))
    if facts.arousal is not None and rng.random() < 0.7:
        extra.append(pick(facs.AROUSAL_WORDS[facs.arousal_word(facts.arousal)]))
    tail = []
    if facts.head is not None and rng.random() < 0.6:
        tail.append(pick(facs.HEAD_WORDS[facts.head]))
    if facts.occluder is not None:
        tail.append(pick(facs.OCCLUDER_WORDS[facts.occluder]))
    adj = ADJECTIVES.get(facts.expression or "")
    feeling = f", showing {_join(extra)}" if extra else ""
    after = (" " + ". ".join(_cap(t) for t in tail) + ".") if tail else ""
    if adj is not None and rng.random() < name_share:
        template = int(rng.integers(2))
        if template == 0:
            return f"A {adj} face with {cues}{feeling}.{after}"
        return f"{_cap(cues)}: the person looks {adj}{feeling}.{after}"
    template = int(rng.integers(3))
    if template == 0:
        return f"A face with {cues}{feeling}.{after}"
    if template == 1:
        return f"{_cap(cues)}{feeling}.{after}"
    return f"The person shows {cues}{feeling}.{after}"


def synthetic_extras(root: str | Path) -> dict:
    """Per-frame head speed (px/frame) and occluder kind of every video of a built-in synthetic
    set: ``{video_id: {"head_speed": float [T], "occluder": object [T] ("hand"/"bar"/None)}}``.

    Recomputed from the set's manifest through the generator (``affaccel.data.synthetic``), like
    its ``reference_labels``; {} for a data set that is not a built-in synthetic set.
    """
    from affaccel.data import synthetic as S

    root = Path(root)
    if not (root / S.MANIFEST).is_file():
        return {}
    import json

    m = json.loads((root / S.MANIFEST).read_text())
    prm = m["params"]
    plan = S._plan(prm["n_train"], prm["n_val"], tuple(prm["n_frames"]), m["seed"],
                   S._parse_raw_spec(prm["raw_videos"]))
    out = {}
    for job in S._jobs(root, m["seed"], plan, m["image_size"], m["video_size"]):
        for f in S._faces(job):
            tr = f["track"]
            n = len(tr.expr)
            step = np.diff(tr.pose[:, :2], axis=0, prepend=tr.pose[:1, :2])
            occ = np.full(n, None, dtype=object)
            for s, e, kind, *_ in tr.occluders:
                occ[s:e] = kind
            out[f["id"]] = {"head_speed": np.linalg.norm(step, axis=1), "occluder": occ}
    return out


__all__ = ["ClipFacts", "clip_facts", "make_caption", "synthetic_extras", "ADJECTIVES"]
