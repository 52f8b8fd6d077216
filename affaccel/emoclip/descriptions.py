"""Class descriptions for zero-shot classification: built-in sets and user label files.

A label set maps each class to one or more descriptions (sentences about facial cues; several
are averaged, CLIP's prompt ensembling) or to a compound of other classes (the mean of their
text embeddings, as EmoCLIP does for MAFW's compound labels). Built-in sets, all our wording:

- ``affaccel``: affaccel's 8 expressions, in the cue words of the synthetic captions;
- ``affaccel-paraphrase``: the same 8 classes in other sentences and partly other words
  (never used in training: the paraphrase test);
- ``dfew`` / ``ferv39k`` / ``afew`` (7 classes, each in its data set's label order) and
  ``mafw`` (11 classes, MAFW's order).

Label file (YAML or JSON, UTF-8)::

    happiness: "A smile with raised cheeks and crinkled eye corners."
    sadness:                                # several descriptions: their embeddings averaged
      - "Inner brows raised and the lip corners pulled down."
      - "A downturned mouth and drooping eyelids."
    happily_surprised: {compound: [happiness, surprise]}   # needs both labels in this file

Errors name the file and the entry: an empty description, an unknown compound part, a
compound of compounds, a value of another type, a file that is not UTF-8 or not YAML/JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from affaccel.emoclip.facs import AU_PHRASES
from affaccel.tasks import EXPRESSIONS


def _au(name: str) -> str:
    return AU_PHRASES[name][0]


# Our wording. affaccel's set names the cues with the captions' first phrasing of each AU.
AFFACCEL_DESCRIPTIONS = {
    "Neutral": "A relaxed face with no facial movement, a neutral mood and a calm state.",
    "Anger": f"An angry face with {_au('AU4')}, {_au('AU7')}, {_au('AU23')} and {_au('AU24')}.",
    "Disgust": f"A disgusted face with {_au('AU10')}, {_au('AU4')} and {_au('AU15')}.",
    "Fear": f"A fearful face with {_au('AU1')}, {_au('AU2')}, {_au('AU4')} and {_au('AU25')}.",
    "Happiness": f"A happy face with {_au('AU6')}, {_au('AU12')} and {_au('AU25')}.",
    "Sadness": f"A sad face with {_au('AU1')}, {_au('AU4')} and {_au('AU15')}.",
    "Surprise": f"A surprised face with {_au('AU1')}, {_au('AU2')}, {_au('AU25')} and {_au('AU26')}.",
    "Other": "An unusual mix of facial movements that fits none of the basic emotions.",
}
# Other sentences, other cue words where English has them; never seen in training.
AFFACCEL_PARAPHRASES = {
    "Neutral": "Someone whose face shows nothing in particular: still muscles, an even mood.",
    "Anger": "Brows pulled down and together, eyes narrowed and the mouth pressed hard shut.",
    "Disgust": "The nose wrinkles as the upper lip curls up and the corners of the mouth sink.",
    "Fear": "Eyebrows lifted and knitted together while the lips fall apart in alarm.",
    "Happiness": "Cheeks lift and the mouth corners turn up into a grin.",
    "Sadness": "The inner ends of the eyebrows go up, the brow creases and the mouth droops.",
    "Surprise": "Eyebrows shoot up high and the mouth falls wide open.",
    "Other": "A face making some movement that is not one of the usual emotions.",
}

_BASIC = {  # generic wording for the 7 basic classes of the public data sets
    "happiness": "A happy face: a smile with raised cheeks and crinkled eye corners.",
    "sadness": "A sad face: raised inner brows, a furrowed brow and lip corners pulled down.",
    "neutral": "A neutral face: relaxed muscles, a closed mouth and no visible emotion.",
    "anger": "An angry face: lowered brows drawn together, glaring narrowed eyes and pressed lips.",
    "surprise": "A surprised face: raised brows, wide open eyes and a dropped jaw.",
    "disgust": "A disgusted face: a wrinkled nose, a raised upper lip and a downturned mouth.",
    "fear": "A fearful face: raised and drawn together brows, wide eyes and stretched parted lips.",
}
_MAFW_EXTRA = {
    "contempt": "A contemptuous face: one lip corner tightened and raised in a one-sided smirk.",
    "anxiety": "An anxious face: worried brows, tense lips and eyes that look around restlessly.",
    "helplessness": "A helpless face: raised inner brows, eyes cast down and a slack drooping mouth.",
    "disappointment": "A disappointed face: lowered eyes, a slight frown and mouth corners sinking.",
}
_ORDER = {
    # DFEW's labels 1..7 (the EmoCLIP code's order); FERV39k and AFEW: their folders' order
    "dfew": ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear"),
    "ferv39k": ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"),
    "afew": ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"),
    "mafw": ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
             "contempt", "anxiety", "helplessness", "disappointment"),
}
BUILTIN_SETS = ("affaccel", "affaccel-paraphrase", *_ORDER)


@dataclass
class LabelSet:
    """Classes for zero-shot scoring, in order.

    names: class names; descriptions: per class, its descriptions (empty for a compound);
    compounds: per class, the indices of its parts (empty for a plain class); source: where it
    came from (a built-in name or the file path).
    """
    names: list
    descriptions: list
    compounds: list = field(default_factory=list)
    source: str = "<memory>"

    def __post_init__(self):
        if not self.compounds:
            self.compounds = [[] for _ in self.names]
        if not (len(self.names) == len(self.descriptions) == len(self.compounds)) or not self.names:
            raise ValueError(f"{self.source}: a label set needs >= 1 class and one entry per class")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"{self.source}: duplicate class names in {self.names}")

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"{self.source}: no class {name!r}; classes are {self.names}") from None

    def all_texts(self) -> list[str]:
        """Every description, each once (what the text tower has to encode)."""
        seen: dict[str, None] = {}
        for d in self.descriptions:
            for s in d:
                seen.setdefault(s, None)
        return list(seen)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "descriptions": [list(d) for d in self.descriptions],
                "compounds": [list(c) for c in self.compounds], "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSet":
        return cls(list(d["names"]), [list(x) for x in d["descriptions"]],
                   [list(c) for c in d["compounds"]], str(d.get("source", "<checkpoint>")))

    def class_embeddings(self, encode_texts) -> Any:
        """[C, D] L2-normalised class embeddings.

        ``encode_texts(list[str]) -> torch [N, D]``. A plain class: the mean of its normalised
        description embeddings, normalised; a compound: the mean of its parts' class
        embeddings, normalised.
        """
        import torch
        from torch.nn import functional as F

        texts = self.all_texts()
        emb = F.normalize(encode_texts(texts).float(), dim=-1) if texts else None
        pos = {t: i for i, t in enumerate(texts)}
        rows: list = [None] * len(self)
        for i, descr in enumerate(self.descriptions):
            if descr:
                rows[i] = F.normalize(emb[[pos[t] for t in descr]].mean(0), dim=-1)
        for i, parts in enumerate(self.compounds):
            if parts:
                rows[i] = F.normalize(torch.stack([rows[p] for p in parts]).mean(0), dim=-1)
        return torch.stack(rows)


def _entry_error(source, name, message) -> ValueError:
    return ValueError(f"{source}: entry {name!r}: {message}")


def label_set_from_mapping(mapping: Any, source: str = "<mapping>") -> LabelSet:
    """A LabelSet from ``{label: str | [str, ...] | {"compound": [labels]} | {"descriptions": [...]}}``."""
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"{source}: expected a non-empty mapping of label -> description(s), "
                         f"got {type(mapping).__name__}")
    names, descr, parts_by_name = [], [], {}
    for name, value in mapping.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{source}: label {name!r} must be a non-empty string")
        names.append(name)
        if isinstance(value, dict):
            unknown = set(value) - {"compound", "descriptions"}
            if unknown or len(value) != 1:
                raise _entry_error(source, name, "a mapping value must have exactly one key, "
                                   f"'compound' or 'descriptions'; got {sorted(value)}")
            if "compound" in value:
                parts = value["compound"]
                if not isinstance(parts, list) or len(parts) < 2 or not all(isinstance(p, str) for p in parts):
                    raise _entry_error(source, name, "'compound' must list >= 2 label names")
                parts_by_name[name] = parts
                descr.append([])
                continue
            value = value["descriptions"]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            raise _entry_error(source, name, "expected a description, a list of descriptions or "
                               f"{{compound: [...]}}; got {type(value).__name__} {value!r}")
        for k, s in enumerate(value, 1):
            if not isinstance(s, str):
                raise _entry_error(source, name, f"description {k} is {type(s).__name__}, not text")
            if not s.strip():
                raise _entry_error(source, name, f"description {k} is empty")
        descr.append([s.strip() for s in value])
    compounds = []
    for name in names:
        parts = parts_by_name.get(name, [])
        idx = []
        for p in parts:
            if p not in names:
                raise _entry_error(source, name, f"compound part {p!r} is not a label of this file "
                                   f"(labels: {names})")
            if p in parts_by_name:
                raise _entry_error(source, name, f"compound part {p!r} is itself a compound")
            idx.append(names.index(p))
        compounds.append(idx)
    return LabelSet(names, descr, compounds, source)


def _decode_utf8(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                         "save the file as UTF-8") from None


def read_label_file(path: str | Path) -> LabelSet:
    """A LabelSet from a YAML (.yaml/.yml) or JSON (.json) file; see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    text = _decode_utf8(path.read_bytes(), path)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ValueError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    return label_set_from_mapping(data, str(path))


def builtin_label_set(name: str) -> LabelSet:
    if name == "affaccel":
        return LabelSet(list(EXPRESSIONS), [[AFFACCEL_DESCRIPTIONS[e]] for e in EXPRESSIONS], source=name)
    if name == "affaccel-paraphrase":
        return LabelSet(list(EXPRESSIONS), [[AFFACCEL_PARAPHRASES[e]] for e in EXPRESSIONS], source=name)
    if name in _ORDER:
        table = {**_BASIC, **_MAFW_EXTRA}
        return LabelSet(list(_ORDER[name]), [[table[c]] for c in _ORDER[name]], source=name)
    raise ValueError(f"unknown built-in label set {name!r}; expected one of {list(BUILTIN_SETS)} "
                     "or a YAML/JSON file")


def load_label_set(spec: str | Path | LabelSet) -> LabelSet:
    """A built-in set name, a label file path, or a LabelSet (returned as is)."""
    if isinstance(spec, LabelSet):
        return spec
    if str(spec) in BUILTIN_SETS:
        return builtin_label_set(str(spec))
    p = Path(spec)
    if p.suffix.lower() in (".yaml", ".yml", ".json") or p.exists():
        return read_label_file(p)
    return builtin_label_set(str(spec))


def subset(labels: LabelSet, names: Sequence[str]) -> LabelSet:
    """The plain classes ``names`` of ``labels`` (compounds are not carried over)."""
    idx = [labels.index(n) for n in names]
    return LabelSet([labels.names[i] for i in idx], [labels.descriptions[i] for i in idx],
                    source=labels.source)


__all__ = ["LabelSet", "BUILTIN_SETS", "AFFACCEL_DESCRIPTIONS", "AFFACCEL_PARAPHRASES",
           "label_set_from_mapping", "read_label_file", "builtin_label_set", "load_label_set", "subset"]
