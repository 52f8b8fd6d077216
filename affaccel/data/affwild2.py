"""Reader of Aff-Wild2-format datasets (the real ABAW data and the built-in synthetic set).

Layout (see DESIGN.md "Aff-Wild2 conventions")::

    <root>/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video>.txt
    <root>/EXPR_Recognition_Challenge/...   (older editions: EXPR_Classification_Challenge)
    <root>/AU_Detection_Challenge/...
    <root>/cropped_aligned/<video>/00001.jpg ...      frames numbered from 1
    <root>/cropped_aligned_new_50_vids/<video>/...    merged when present

``load_affwild2(root)`` returns an :class:`AffWild2` with one :class:`VideoRecord` per video:
frame count (the longest annotation file of the video), frame paths aligned to annotation lines
(a missing frame points at the previous available frame, or the next one at the start),
labels and masks per task, and the official split. ``AffWild2.folds(k)`` re-splits train +
validation by video for the paper's k-fold table.

Label conventions: ``labels[task]`` holds the values exactly as written in the file (including
the invalid markers -5 / -1); frames past the end of a task's file hold the marker. The mask is
the authority: ``label_mask[task][t]`` is False where the line has an invalid marker (VA: either
value -5; AU: any of the 12 values -1), where the frame image is missing (its feature would be a
copy of the previous frame's), and past the end of the task's file.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from affaccel.tasks import SPLIT_DIRS, TASKS

FRAME_ROOTS = ("cropped_aligned", "cropped_aligned_new_50_vids")
_FRAME_RE = re.compile(r"^(\d+)\.jpg$", re.IGNORECASE)
_PAIR_RE = re.compile(r"_(left|right)$")


class AnnotationError(ValueError):
    """A malformed annotation file: names the file and the 1-based line number."""

    def __init__(self, path, line: int | None, message: str):
        self.path, self.line, self.reason = Path(path), line, message
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


def source_video(video_id: str) -> str:
    """Raw video name of an annotated video: ``"10-60-1280x720_left"`` -> ``"10-60-1280x720"``."""
    return _PAIR_RE.sub("", video_id)


# ----------------------------------------------------------------------------------------------
# annotation files


def _expected(task: str) -> tuple[int, str]:
    """(values per line, human description of the allowed values)."""
    if task == "va":
        return 2, "two floats in [-1, 1] (or -5 = unannotated)"
    if task == "expr":
        return 1, "one integer class id in 0..7 (or -1 = unannotated)"
    return 12, "12 values 0 or 1 (or -1 = unannotated)"


def _check_values(path, task: str, arr: np.ndarray, first_line: int) -> np.ndarray:
    """Range checks of parsed values ``arr: [N, C]``; returns the valid-frame mask [N]."""
    _, allowed = _expected(task)
    spec = TASKS[task]
    marker = arr == spec.invalid
    if task == "va":
        ok = ((arr >= -1.0) & (arr <= 1.0)) | marker
    elif task == "expr":
        ok = ((arr >= 0) & (arr <= 7) & (arr == np.round(arr))) | marker
    else:
        ok = (arr == 0) | (arr == 1) | marker
    bad = ~ok.all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        j = int(np.argmax(~ok[i]))
        column = spec.columns[j] if arr.shape[1] > 1 else spec.name
        raise AnnotationError(path, first_line + i, f"value {float(arr[i, j]):g} of column "
                              f"{column} out of range; expected {allowed}")
    return ~marker.any(axis=1)


def _parse_body_ref(path, task: str, lines: list[str], first_line: int) -> np.ndarray:
    """Line-by-line parser: the reference, and the locator of the first bad line."""
    ncols, allowed = _expected(task)
    rows = []
    for k, line in enumerate(lines):
        lineno = first_line + k
        fields = [f.strip() for f in line.split(",")]
        if line.strip() == "":
            raise AnnotationError(path, lineno, f"empty line; expected {allowed}")
        if len(fields) != ncols:
            raise AnnotationError(path, lineno, f"{len(fields)} values, expected {ncols} "
                                  f"({allowed})")
        row = []
        for f in fields:
            try:
                x = float(f)
            except ValueError:
                raise AnnotationError(path, lineno, f"non-numeric value {f!r}; expected {allowed}")
            if not np.isfinite(x):
                raise AnnotationError(path, lineno, f"non-numeric value {f!r}; expected {allowed}")
            row.append(x)
        rows.append(row)
    arr = np.asarray(rows, np.float64).reshape(len(rows), ncols)
    return arr


def _parse_body_fast(text: str, ncols: int, nrows: int) -> np.ndarray | None:
    """Parse the body with pandas' C reader into ``[nrows, ncols]`` float64; None when anything is
    off (wrong field count, a non-number, NaN), and the reference parser then finds and reports
    the bad line. Several times faster than Python or np.loadtxt on the 12-column AU files."""
    if nrows == 0:
        return np.zeros((0, ncols))
    import pandas as pd

    try:
        arr = pd.read_csv(io.StringIO(text), header=None, dtype=np.float64, engine="c",
                          skipinitialspace=True, skip_blank_lines=False).to_numpy()
    except (ValueError, pd.errors.ParserError):
        return None
    if arr.shape != (nrows, ncols) or not np.isfinite(arr).all():
        return None
    return arr


def read_annotation(path: str | Path, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one annotation file.

    Returns ``(values, valid)``: values as written (VA float32 [N, 2], EXPR int64 [N],
    AU float32 [N, 12]) and ``valid: bool [N]`` (False on lines with invalid markers).
    Raises :class:`AnnotationError` naming file and line for an empty file, a wrong header,
    a wrong number of values, a non-numeric value or a value out of range. A final newline is
    fine; blank lines elsewhere are errors.
    """
    path = Path(path)
    spec = TASKS[task]
    ncols, _ = _expected(task)
    text = path.read_text(encoding="utf-8-sig", errors="replace")   # -sig: tolerate a BOM
    lines = text.splitlines()
    while lines and lines[-1].strip() == "":
        lines.pop()
    if not lines:
        raise AnnotationError(path, 1, f"empty file; expected the header {','.join(spec.columns)}")
    header = [h.strip().lower() for h in lines[0].split(",")]
    if header != [c.lower() for c in spec.columns]:
        raise AnnotationError(path, 1, f"wrong header {lines[0].strip()!r} for task {task}; "
                              f"expected {','.join(spec.columns)!r}")
    body = lines[1:]
    if not body:
        raise AnnotationError(path, 2, "no annotation lines after the header")
    arr = None
    if all(body_line.strip() for body_line in body):
        arr = _parse_body_fast("\n".join(body), ncols, len(body))
    if arr is None:
        arr = _parse_body_ref(path, task, body, first_line=2)
    valid = _check_values(path, task, arr, first_line=2)
    if task == "expr":
        return arr[:, 0].astype(np.int64), valid
    return arr.astype(np.float32), valid


# ----------------------------------------------------------------------------------------------
# records


@dataclass
class VideoRecord:
    """One annotated video (one face). Arrays are indexed by frame t = line - 2 = image - 1."""
    video_id: str
    split: str                                  # "train" | "val"
    n_frames: int                               # T = longest annotation file of the video
    frame_paths: list                           # [T] Path; missing frames -> a neighbour
    frame_present: np.ndarray                   # bool [T]
    labels: dict = field(default_factory=dict)  # task -> va float32 [T,2] | expr int64 [T] | au float32 [T,12]
    label_mask: dict = field(default_factory=dict)  # task -> bool [T]
    source_video: str = ""                      # raw video name (no _left/_right)
    annotation_files: dict = field(default_factory=dict)  # task -> Path

    @property
    def tasks(self) -> tuple[str, ...]:
        """Tasks this video has annotations for, in TASKS order."""
        return tuple(t for t in TASKS if t in self.labels)

    @property
    def n_missing(self) -> int:
        return int((~self.frame_present).sum())


def _frame_index(root: Path) -> dict[str, dict[int, Path]]:
    """video -> {frame number (1-based) -> path}, merged over the frame roots (later wins)."""
    videos: dict[str, dict[int, Path]] = {}
    for name in FRAME_ROOTS:
        base = root / name
        if not base.is_dir():
            continue
        for vdir in base.iterdir():
            if not vdir.is_dir():
                continue
            frames = videos.setdefault(vdir.name, {})
            # cropped_aligned_new_50_vids is the newer crop of its videos: it wins on overlap
            for entry in vdir.iterdir():
                m = _FRAME_RE.match(entry.name)
                if m:
                    frames[int(m.group(1))] = entry
    return videos


def _align_frames(frames: dict[int, Path], n: int) -> tuple[list, np.ndarray]:
    """Frame paths [n] and presence [n]: a gap takes the previous frame, a leading gap the first."""
    present = np.array([(t + 1) in frames for t in range(n)], bool)
    if not present.any():
        return [], present
    first = frames[int(np.argmax(present)) + 1]
    paths, last = [], first
    for t in range(n):
        last = frames.get(t + 1, last)
        paths.append(last)
    return paths, present


def _annotation_dirs(root: Path, task: str) -> Path | None:
    for name in TASKS[task].annotation_dirs:
        if (root / name).is_dir():
            return root / name
    return None


class AffWild2:
    """A loaded dataset: records sorted by id, split access, k-fold re-splits, skip report."""

    def __init__(self, root: Path, videos: list[VideoRecord], skipped: list[tuple[str, str]],
                 tasks: tuple[str, ...]):
        self.root = root
        self.videos = sorted(videos, key=lambda r: r.video_id)
        self.skipped = skipped
        self.tasks = tasks
        self._by_id = {r.video_id: r for r in self.videos}

    def __len__(self) -> int:
        return len(self.videos)

    def __iter__(self):
        return iter(self.videos)

    def by_split(self, split: str) -> list[VideoRecord]:
        if split not in SPLIT_DIRS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_DIRS)}")
        return [r for r in self.videos if r.split == split]

    def get(self, video_id: str) -> VideoRecord:
        try:
            return self._by_id[video_id]
        except KeyError:
            raise KeyError(f"no video {video_id!r} in {self.root}") from None

    def folds(self, k: int = 5, seed: int = 0) -> list[tuple[list[VideoRecord], list[VideoRecord]]]:
        """k re-splits of train + validation pooled: ``[(train_records, val_records)] * k``.

        Grouped by source video (a _left/_right pair shares a fold), groups shuffled by ``seed``
        and dealt greedily to the fold with the fewest frames so far, so folds are balanced in
        frames. Every video is in exactly one validation fold; deterministic for a given seed.
        """
        groups: dict[str, list[VideoRecord]] = {}
        for r in self.videos:
            groups.setdefault(r.source_video, []).append(r)
        if not 2 <= k <= len(groups):
            raise ValueError(f"k must be in [2, {len(groups)}] (the number of source videos), "
                             f"got {k}")
        names = sorted(groups)
        order = np.random.default_rng(seed).permutation(len(names))
        load = [0] * k
        members: list[list[VideoRecord]] = [[] for _ in range(k)]
        for i in order:
            g = groups[names[i]]
            f = min(range(k), key=lambda j: (load[j], j))
            members[f].extend(g)
            load[f] += sum(r.n_frames for r in g)
        out = []
        for f in range(k):
            val_ids = {r.video_id for r in members[f]}
            out.append(([r for r in self.videos if r.video_id not in val_ids],
                        sorted(members[f], key=lambda r: r.video_id)))
        return out

    def summary(self) -> str:
        """Human-readable counts per split and task, and what was skipped and why."""
        lines = [f"Aff-Wild2 at {self.root}: {len(self.videos)} videos"]
        for split in SPLIT_DIRS:
            recs = self.by_split(split)
            if not recs:
                continue
            frames = sum(r.n_frames for r in recs)
            missing = sum(r.n_missing for r in recs)
            parts = [f"  {split}: {len(recs)} videos, {frames} frames ({missing} without image)"]
            for t in self.tasks:
                has = [r for r in recs if t in r.labels]
                valid = sum(int(r.label_mask[t].sum()) for r in has)
                parts.append(f"{t} {len(has)} videos / {valid} labelled frames")
            lines.append("; ".join(parts))
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)}:")
            lines += [f"    {f}: {why}" for f, why in self.skipped]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"AffWild2(root={str(self.root)!r}, videos={len(self.videos)}, "
                f"skipped={len(self.skipped)})")


def _annotation_files(root: Path, tasks, splits) -> dict[str, dict[str, tuple[str, Path]]]:
    """video -> task -> (split, annotation file) of the requested tasks and splits."""
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; expected a subset of {tuple(TASKS)}")
    for s in splits:
        if s not in SPLIT_DIRS:
            raise ValueError(f"unknown split {s!r}; expected a subset of {tuple(SPLIT_DIRS)}")
    files: dict[str, dict[str, tuple[str, Path]]] = {}
    for t in tasks:
        base = _annotation_dirs(root, t)
        if base is None:
            raise FileNotFoundError(f"no annotation folder for task {t!r} under {root}: expected "
                                    f"one of {list(TASKS[t].annotation_dirs)} (or pass tasks=...)")
        for s in splits:
            d = base / SPLIT_DIRS[s]
            if not d.is_dir():
                continue
            for f in sorted(d.glob("*.txt")):
                files.setdefault(f.stem, {})[t] = (s, f)
    return files


def load_affwild2(root: str | Path, tasks=("va", "expr", "au"), splits=("train", "val"),
                  lenient: bool = False) -> AffWild2:
    """Read an Aff-Wild2-format dataset (see the module docstring for layout and conventions).

    tasks: subset of ("va", "expr", "au"); every requested task needs its annotation folder.
    splits: subset of ("train", "val"). lenient: a bad annotation file, a video without any
    frame image, or a video filed under different splits by different tasks is skipped with a
    warning and listed in ``.skipped`` instead of raising.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a folder")
    tasks = tuple(tasks)
    files = _annotation_files(root, tasks, splits)
    skipped: list[tuple[str, str]] = []

    def fail(file, err: Exception | str):
        if not lenient:
            raise err if isinstance(err, Exception) else ValueError(f"{file}: {err}")
        warnings.warn(f"skipping {file}: {err}", stacklevel=3)
        skipped.append((str(file), str(err)))

    frames = _frame_index(root)
    if not frames and files:
        raise FileNotFoundError(f"no frame folders under {root}: expected "
                                f"{FRAME_ROOTS[0]}/<video>/00001.jpg")
    records = []
    for vid in sorted(files):
        per_task = files[vid]
        split_set = {s for s, _ in per_task.values()}
        if len(split_set) > 1:
            where = ", ".join(f"{t}: {s} ({f})" for t, (s, f) in per_task.items())
            fail(vid, ValueError(f"video {vid} is in different splits across tasks: {where}"))
            continue
        try:
            parsed = {t: read_annotation(f, t) for t, (_, f) in per_task.items()}
        except AnnotationError as err:
            fail(err.path, err)
            continue
        n = max(len(v) for v, _ in parsed.values())
        paths, present = _align_frames(frames.get(vid, {}), n)
        if not present.any():
            fail(vid, FileNotFoundError(f"video {vid}: no frame images in {root}/"
                                        f"{{{','.join(FRAME_ROOTS)}}}/{vid}/"))
            continue
        labels, masks = {}, {}
        for t, (values, valid) in parsed.items():
            m = len(values)
            if m < n:   # shorter file: pad with the task's invalid marker (masked)
                pad_shape = (n - m,) + values.shape[1:]
                values = np.concatenate([values, np.full(pad_shape, TASKS[t].invalid,
                                                         values.dtype)])
                valid = np.concatenate([valid, np.zeros(n - m, bool)])
            labels[t] = values
            masks[t] = valid & present
        records.append(VideoRecord(
            video_id=vid, split=split_set.pop(), n_frames=n, frame_paths=paths,
            frame_present=present, labels=labels, label_mask=masks,
            source_video=source_video(vid),
            annotation_files={t: f for t, (_, f) in per_task.items()}))
    return AffWild2(root, records, skipped, tasks)
