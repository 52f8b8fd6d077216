"""Readers of the public video expression data sets EmoCLIP is trained and scored on, in their
layouts as shipped (paths relative to ``--data-root``):

MAFW (11 single classes, 43 compound classes, 5 folds, sample-level captions)::

    Train & Test Set/ (or Train_Test_Set/)  <single|compound>/<variant>/set_<k>/{train,test}.txt
        variant: with_caption_new, with_caption (clip<TAB>labels<TAB>caption...; GBK/GB18030 or
        UTF-8) or no_caption_new, no_caption (clip labels); labels of a compound joined by "_"
    data/faces/<clip>/*.jpg  (or data/frames/<clip>/)

DFEW (7 classes, 5 folds)::

    EmoLabel_DataSplit/{train,test}(single-labeled)/set_<k>.csv   header video_name,label; label 1..7
        = happy, sad, neutral, angry, surprise, disgust, fear
    Annotation/annotation.csv (or .xlsx, needs openpyxl)  optional: order + the 7 vote columns
        1happy ... 7fear; each clip's single label must be its most voted class
    Clip/clip_224x224/<05d>/*.jpg  (or clip_224x224_16f, jpg_256; or DFEW_Frame_Face/)

FERV39k (7 classes, one train/test split, 22 scenes)::

    4_setups/All_scenes/{train,test}_All.csv   <Scene>/<Class>/<clip> <Class>  (space separated)
    2_ClipsforFaceCrop/<Scene>/<Class>/<clip>/*.jpg

AFEW (7 classes, Train / Val)::

    {Train,Train_AFEW,train}/<Class>/<clip>/*.jpg   and   {Val,Val_AFEW,val,validation}/...
    (also under AFEW_Face/); class folders Angry/Anger, Disgust, Fear, Happy/Happiness, Neutral,
    Sad/Sadness, Surprise; clips must be unpacked into frame folders

``load_clip_dataset(name, root, fold=...)`` returns a :class:`ClipSet`: one ``VideoRecord`` per
clip (its frame folder's images in natural order; no frame-level labels) and one ``ClipItem`` per
clip spanning all its frames, expression = the class name of the built-in label set of the same
name (``--labels mafw|dfew|ferv39k|afew``), split "train" / "val" (the fold's test list). Video ids
are prefixed with the data set's name, so one feature cache serves several sets.

Bad input fails with ``<file>:<line>: entry '<clip>': ...`` (or the folder): a caption file in
neither UTF-8 nor GBK/GB18030, an unknown class, a label outside 1..7, a missing or empty frame
folder, a fold outside 1..5.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from affaccel.data.affwild2 import VideoRecord
from affaccel.emoclip.captions import ClipFacts
from affaccel.emoclip.data import ClipItem
from affaccel.emoclip.descriptions import LabelSet, builtin_label_set, label_set_from_mapping

DATASETS = ("mafw", "dfew", "ferv39k", "afew")
MAFW_CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
                "contempt", "anxiety", "helplessness", "disappointment")
DFEW_CLASSES = ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear")  # labels 1..7
DFEW_VOTE_COLUMNS = ("1happy", "2sad", "3neutral", "4angry", "5surprise", "6disgust", "7fear")
# folder / list spellings of the 7 basic classes -> the built-in label sets' names
CLASS_ALIASES = {"angry": "anger", "anger": "anger", "disgust": "disgust", "fear": "fear",
                 "happy": "happiness", "happiness": "happiness", "neutral": "neutral", "sad": "sadness",
                 "sadness": "sadness", "surprise": "surprise"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]")


@dataclass
class ClipSet:
    """The clips of one data set (and fold)."""
    name: str
    labels: LabelSet                               # default class descriptions of the set
    records: list                                  # VideoRecord per clip
    items: dict                                    # "train" / "val" -> [ClipItem]
    lists: dict = field(default_factory=dict)      # "train" / "val" -> the list file read (or folder)
    votes: dict = field(default_factory=dict)      # video_id -> int [7] annotator votes (DFEW)
    encodings: dict = field(default_factory=dict)  # list file -> text encoding it was read in
    _seen: set = field(default_factory=set, repr=False)

    @property
    def has_captions(self) -> bool:
        return any(it.caption for its in self.items.values() for it in its)


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def clip_record(video_id: str, folder: Path, split: str, where: str) -> VideoRecord:
    """A VideoRecord of the images in ``folder`` (natural order); ``where`` names the list entry."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: frame folder {folder} does not exist")
    frames = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                    key=lambda p: _natural_key(p.name))
    if not frames:
        videos = [p.name for p in folder.iterdir() if p.suffix.lower() in (".avi", ".mp4", ".mkv")]
        hint = f" (found videos {videos[:3]}: unpack them into frame images)" if videos else ""
        raise ValueError(f"{where}: no frame images ({'/'.join(IMAGE_SUFFIXES)}) in {folder}{hint}")
    return VideoRecord(video_id=video_id, split=split, n_frames=len(frames), frame_paths=frames,
                       frame_present=np.ones(len(frames), bool), source_video=video_id)


def _item(record: VideoRecord, expression: str, caption: str | None = None) -> ClipItem:
    return ClipItem(record.video_id, 0, record.n_frames, expression, ClipFacts(), caption)


def _entry(path: Path, line: int, clip: str) -> str:
    return f"{path}:{line}: entry {clip!r}"


def _add(cs: "ClipSet", split: str, rec: VideoRecord, item: ClipItem, where: str) -> None:
    if rec.video_id in cs._seen:
        raise ValueError(f"{where}: clip listed twice (train and test lists of a fold are disjoint)")
    cs._seen.add(rec.video_id)
    cs.records.append(rec)
    cs.items[split].append(item)


def read_text_lines(path: Path) -> tuple[list[tuple[int, bytes, str]], str]:
    """Non-empty lines of a list file as (1-based line, raw bytes, text) and the encoding used:
    UTF-8 (with or without BOM) when the whole file is UTF-8, else GB18030 (a superset of GBK,
    MAFW's encoding). Lines are split on bytes: newline and tab never occur inside a GBK
    character. A line in neither encoding raises naming the file, the line and the entry."""
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path}")
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError(f"{path}: UTF-16 text; expected UTF-8 or GBK/GB18030 (re-save the file)")
    try:
        raw.decode("utf-8")
        encoding = "utf-8-sig"
    except UnicodeDecodeError:
        encoding = "gb18030"
    out = []
    for n, line in enumerate(raw.split(b"\n"), 1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        try:
            text = line.decode(encoding if n == 1 else encoding.replace("-sig", ""))
        except UnicodeDecodeError as e:
            clip = line.split(b"\t")[0].split(b" ")[0].decode("ascii", "replace")
            raise ValueError(f"{_entry(path, n, clip)}: text is neither UTF-8 nor GBK/GB18030 "
                             f"(byte 0x{line[e.start]:02x} at column {e.start + 1}); re-save the file "
                             "in one of them") from None
        out.append((n, line, text))
    return out, encoding


def _first_dir(root: Path, names, what: str) -> Path:
    for n in names:
        if (root / n).is_dir():
            return root / n
    raise FileNotFoundError(f"{root}: no {what} folder (looked for {', '.join(names)})")


def _check_fold(name: str, fold, folds: int | None):
    if folds is None:
        if fold is not None:
            raise ValueError(f"{name} has one train/test split, no folds; drop --fold (got {fold})")
        return None
    if fold is None:
        raise ValueError(f"{name} needs --fold 1..{folds}")
    if int(fold) not in range(1, folds + 1):
        raise ValueError(f"{name}: --fold must be in 1..{folds}, got {fold}")
    return int(fold)


# -- MAFW ----------------------------------------------------------------------------------------
def _mafw_caption(fields: list[str]) -> str | None:
    """The English caption of a row's caption columns (the one without CJK text), else the last."""
    texts = [f.strip() for f in fields if f.strip() and f.strip() != "-"]
    english = [t for t in texts if not _CJK.search(t)]
    return (english or texts or [None])[-1]


def _mafw_row(path: Path, n: int, text: str, label_type: str) -> tuple[str, list[str], str | None]:
    fields = text.split("\t") if "\t" in text else text.split(None, 1)
    clip = fields[0].strip()
    if len(fields) < 2 or not fields[1].strip():
        raise ValueError(f"{_entry(path, n, clip)}: expected '<clip> <labels>' or "
                         "'<clip><TAB><labels><TAB><caption>...'")
    parts = [p.strip().lower() for p in fields[1].strip().split("_")]
    bad = [p for p in parts if p not in MAFW_CLASSES]
    if bad:
        raise ValueError(f"{_entry(path, n, clip)}: unknown class {bad[0]!r}; MAFW classes are {list(MAFW_CLASSES)}")
    if label_type == "single" and len(parts) != 1:
        raise ValueError(f"{_entry(path, n, clip)}: {len(parts)} labels {parts} in a single-label list")
    if label_type == "compound" and len(parts) < 2:
        raise ValueError(f"{_entry(path, n, clip)}: one label {parts} in a compound list")
    return clip, parts, _mafw_caption(fields[2:])


def mafw_compound_labels(compounds) -> LabelSet:
    """MAFW's 11 classes plus ``compounds`` (part lists), each the mean of its parts' embeddings."""
    single = builtin_label_set("mafw")
    mapping = {n: d for n, d in zip(single.names, single.descriptions)}
    for parts in compounds:
        mapping["_".join(parts)] = {"compound": list(parts)}
    return label_set_from_mapping(mapping, "mafw-compound")


def read_caption_file(path) -> dict[str, str]:
    """{clip stem: caption} of a ``<clip><TAB><caption>`` file (UTF-8 or GBK/GB18030), e.g.
    English captions kept apart from the lists."""
    path = Path(path)
    lines, _ = read_text_lines(path)
    out = {}
    for n, _, text in lines:
        clip, _, caption = text.partition("\t")
        if not caption.strip() or caption.strip() == "-":
            raise ValueError(f"{_entry(path, n, clip.strip())}: expected '<clip><TAB><caption>'")
        out[clip.strip().split(".")[0]] = caption.strip()
    return out


def read_mafw(root, fold, label_type: str = "single", captions: bool = True, frames: str | None = None,
              caption_file=None) -> ClipSet:
    """MAFW fold ``fold`` (1..5): single (11 classes) or compound labels, with the captions of
    the ``with_caption`` lists (``captions=False``: the ``no_caption`` lists); ``caption_file``
    (``read_caption_file``) replaces the lists' captions of the clips it names."""
    root = Path(root)
    extra = read_caption_file(caption_file) if caption_file else {}
    fold = _check_fold("mafw", fold, 5)
    if label_type not in ("single", "compound"):
        raise ValueError(f"mafw label type must be 'single' or 'compound', got {label_type!r}")
    split_root = _first_dir(root, ("Train & Test Set", "Train_Test_Set", "split"), "MAFW split") / label_type
    variants = ("with_caption_new", "with_caption") if captions else ("no_caption_new", "no_caption")
    lists = _first_dir(split_root, variants, f"MAFW {label_type} list") / f"set_{fold}"
    face_dir = root / "data" / frames if frames else _first_dir(root / "data", ("faces", "frames"), "MAFW frame")
    cs = ClipSet("mafw", builtin_label_set("mafw"), [], {})
    compounds: dict[str, list[str]] = {}
    for split, fname in (("train", "train.txt"), ("val", "test.txt")):
        path = lists / fname
        lines, cs.encodings[str(path)] = read_text_lines(path)
        cs.lists[split], cs.items[split] = path, []
        for n, _, text in lines:
            clip, parts, caption = _mafw_row(path, n, text, label_type)
            stem = clip.split(".")[0]
            rec = clip_record(f"mafw_{stem}", face_dir / stem, split, _entry(path, n, clip))
            expression = "_".join(parts)
            if len(parts) > 1:
                compounds.setdefault(expression, parts)
            caption = extra.get(stem, caption if captions else None)
            _add(cs, split, rec, _item(rec, expression, caption), _entry(path, n, clip))
    if label_type == "compound":
        cs.labels = mafw_compound_labels(compounds.values())
    return cs


# -- DFEW ----------------------------------------------------------------------------------------
def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    lines, _ = read_text_lines(path)
    rows = [(n, next(csv.reader(io.StringIO(t)))) for n, _, t in lines]
    if not rows:
        raise ValueError(f"{path}: empty file")
    return [h.strip().lower() for h in rows[0][1]], rows[1:]


def _dfew_votes(root: Path) -> dict[str, np.ndarray]:
    """{'00001': int [7]} from Annotation/annotation.csv (or .xlsx); {} when neither exists."""
    ann = root / "Annotation"
    if (ann / "annotation.csv").is_file():
        path = ann / "annotation.csv"
        header, rows = _read_csv(path)
    elif (ann / "annotation.xlsx").is_file():
        path = ann / "annotation.xlsx"
        try:
            import openpyxl
        except ImportError:
            raise ValueError(f"{path}: reading .xlsx needs openpyxl (pip install openpyxl), or save the sheet "
                             "as annotation.csv beside it") from None
        sheet = openpyxl.load_workbook(path, read_only=True).active
        table = [["" if v is None else str(v) for v in r] for r in sheet.iter_rows(values_only=True)]
        header, rows = [h.strip().lower() for h in table[0]], list(enumerate(table[1:], 2))
    else:
        return {}
    missing = [c for c in ("order", *DFEW_VOTE_COLUMNS) if c not in header]
    if missing:
        raise ValueError(f"{path}:1: missing columns {missing} (have {header})")
    cols = [header.index(c) for c in DFEW_VOTE_COLUMNS]
    out = {}
    for n, row in rows:
        try:
            clip = f"{int(float(row[header.index('order')])):05d}"
            out[clip] = np.array([int(float(row[c])) for c in cols], np.int64)
        except (ValueError, IndexError):
            raise ValueError(f"{path}:{n}: expected an integer order and 7 integer votes, got {row}") from None
    return out


def read_dfew(root, fold, frames: str | None = None) -> ClipSet:
    """DFEW fold ``fold`` (1..5) from its single-labeled split files (+ votes where present)."""
    root = Path(root)
    fold = _check_fold("dfew", fold, 5)
    splits = root / "EmoLabel_DataSplit"
    if frames:
        clip_dir = root / frames
    elif (root / "Clip").is_dir():
        clip_dir = _first_dir(root / "Clip", ("clip_224x224", "clip_224x224_16f", "jpg_256"), "DFEW frame")
    else:
        clip_dir = _first_dir(root, ("DFEW_Frame_Face",), "DFEW frame (Clip/clip_224x224)")
    votes = _dfew_votes(root)
    cs = ClipSet("dfew", builtin_label_set("dfew"), [], {})
    for split, sub in (("train", "train(single-labeled)"), ("val", "test(single-labeled)")):
        path = splits / sub / f"set_{fold}.csv"
        header, rows = _read_csv(path)
        if "video_name" not in header or "label" not in header:
            raise ValueError(f"{path}:1: expected columns video_name,label, got {header}")
        iv, il = header.index("video_name"), header.index("label")
        cs.lists[split], cs.items[split] = path, []
        for n, row in rows:
            name = row[iv].strip() if iv < len(row) else ""
            where = _entry(path, n, name)
            try:
                clip, label = f"{int(name):05d}", int(row[il])
            except (ValueError, IndexError):
                raise ValueError(f"{where}: expected an integer video_name and label") from None
            if not 1 <= label <= 7:
                raise ValueError(f"{where}: label {label} is not a single label 1..7 ({list(DFEW_CLASSES)})")
            if clip in votes and votes[clip][label - 1] < votes[clip].max():
                raise ValueError(f"{where}: label {label} ({DFEW_CLASSES[label - 1]}) is not the most voted "
                                 f"class of Annotation votes {votes[clip].tolist()}")
            rec = clip_record(f"dfew_{clip}", clip_dir / clip, split, where)
            if clip in votes:
                cs.votes[rec.video_id] = votes[clip]
            _add(cs, split, rec, _item(rec, DFEW_CLASSES[label - 1]), where)
    return cs


# -- FERV39k -------------------------------------------------------------------------------------
def _class_name(raw: str) -> str | None:
    return CLASS_ALIASES.get(raw.strip().lower())


def read_ferv39k(root, fold=None, frames: str | None = None) -> ClipSet:
    """FERV39k's train / test lists (All_scenes)."""
    root = Path(root)
    _check_fold("ferv39k", fold, None)
    lists = root / "4_setups" / "All_scenes"
    clip_dir = root / (frames or "2_ClipsforFaceCrop")
    cs = ClipSet("ferv39k", builtin_label_set("ferv39k"), [], {})
    for split, fname in (("train", "train_All.csv"), ("val", "test_All.csv")):
        path = lists / fname
        lines, cs.encodings[str(path)] = read_text_lines(path)
        cs.lists[split], cs.items[split] = path, []
        for n, _, text in lines:
            fields = text.split()
            rel = fields[0] if fields else ""
            parts = rel.strip("/").split("/")
            where = _entry(path, n, rel)
            if len(fields) != 2 or len(parts) < 3:
                raise ValueError(f"{where}: expected '<Scene>/<Class>/<clip> <Class>'")
            name = _class_name(fields[1])
            if name is None:
                raise ValueError(f"{where}: unknown class {fields[1]!r}; expected one of "
                                 "Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise")
            if _class_name(parts[-2]) not in (None, name):
                raise ValueError(f"{where}: label {fields[1]!r} disagrees with the path's class folder {parts[-2]!r}")
            rec = clip_record("ferv39k_" + "_".join(parts[-3:]), clip_dir.joinpath(*parts), split, where)
            _add(cs, split, rec, _item(rec, name), where)
    return cs


# -- AFEW ----------------------------------------------------------------------------------------
def read_afew(root, fold=None, frames: str | None = None) -> ClipSet:
    """AFEW's Train and Val class folders (Val is the "val" split)."""
    root = Path(root)
    _check_fold("afew", fold, None)
    base = root / frames if frames else (root / "AFEW_Face" if (root / "AFEW_Face").is_dir() else root)
    cs = ClipSet("afew", builtin_label_set("afew"), [], {})
    for split, names in (("train", ("Train", "Train_AFEW", "train")),
                         ("val", ("Val", "Val_AFEW", "val", "validation"))):
        sdir = _first_dir(base, names, f"AFEW {split}")
        cs.lists[split], cs.items[split] = sdir, []
        for cdir in sorted((d for d in sdir.iterdir() if d.is_dir()), key=lambda d: d.name):
            name = _class_name(cdir.name)
            if name is None:
                raise ValueError(f"{cdir}: unknown AFEW class folder {cdir.name!r}; expected one of "
                                 "Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise")
            clips = sorted((d for d in cdir.iterdir() if d.is_dir()), key=lambda d: _natural_key(d.name))
            if not clips:
                videos = [p.name for p in cdir.iterdir() if p.is_file()][:3]
                raise ValueError(f"{cdir}: no clip folders (one folder of frame images per clip)"
                                 + (f"; found files {videos}: unpack videos into frame folders" if videos else ""))
            for d in clips:
                rec = clip_record(f"afew_{split}_{cdir.name}_{d.name}", d, split, f"{cdir}: clip {d.name!r}")
                _add(cs, split, rec, _item(rec, name), f"{cdir}: clip {d.name!r}")
    return cs


def load_clip_dataset(name: str, root, fold=None, frames: str | None = None, label_type: str = "single",
                      captions: bool = True, caption_file=None) -> ClipSet:
    """The clips of data set ``name`` (one of DATASETS) under ``root``; see the module docstring."""
    if root is None:
        raise ValueError(f"--dataset {name} needs --data-root (the folder the data set unpacks to)")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"data root {root} is not a folder")
    if name == "mafw":
        return read_mafw(root, fold, label_type, captions, frames, caption_file)
    if caption_file:
        raise ValueError(f"--captions: only MAFW has sample-level captions, not {name}")
    if label_type != "single":
        raise ValueError(f"{name} has single labels only (compound labels are MAFW's)")
    readers = {"dfew": read_dfew, "ferv39k": read_ferv39k, "afew": read_afew}
    if name not in readers:
        raise ValueError(f"unknown data set {name!r}; expected one of {list(DATASETS)}")
    return readers[name](root, fold, frames)


def add_dataset_arguments(p) -> None:
    """``--dataset/--fold/--frames/--mafw-labels`` of the train / zeroshot / embed commands."""
    p.add_argument("--dataset", choices=DATASETS, help="read --data-root in this data set's own layout "
                   "(default: Aff-Wild2 layout)")
    p.add_argument("--fold", type=int, help="MAFW / DFEW fold 1..5 (its train list trains, its test list is 'val')")
    p.add_argument("--frames", help="frame folder under --data-root (default: the data set's usual one)")
    p.add_argument("--mafw-labels", default="single", choices=("single", "compound"),
                   help="MAFW: 11 single classes or the compound lists")
    p.add_argument("--captions", help="MAFW: <clip><TAB><caption> file replacing the lists' captions")


def clips_from_args(a) -> ClipSet | None:
    """The ClipSet the parsed ``--dataset`` arguments name, or None (Aff-Wild2 layout)."""
    if a.dataset is None:
        for flag, value in (("--fold", a.fold), ("--frames", a.frames), ("--captions", a.captions)):
            if value is not None:
                raise ValueError(f"{flag} needs --dataset")
        return None
    return load_clip_dataset(a.dataset, a.data_root, a.fold, a.frames, a.mafw_labels, caption_file=a.captions)


__all__ = ["DATASETS", "MAFW_CLASSES", "DFEW_CLASSES", "ClipSet", "load_clip_dataset", "read_mafw", "read_dfew",
           "read_ferv39k", "read_afew", "read_text_lines", "read_caption_file", "clip_record", "mafw_compound_labels",
           "add_dataset_arguments", "clips_from_args"]
