"""Reader of Aff-Wild2-format datasets (the real ABAW data and the built-in synthetic set).

Layouts (``affaccel.data.layout``): one root with everything, the layout as shipped (an
``*ABAW*Annotations*`` folder beside nested ``cropped_aligned/cropped_aligned`` frames), or
separate annotation and frame roots::

    <annotations>/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video>.txt
    <annotations>/EXPR_Recognition_Challenge/...   (older editions: EXPR_Classification_Challenge)
    <annotations>/AU_Detection_Challenge/...
    <frames>/cropped_aligned/<video>/00001.jpg ...      frames numbered from 1
    <frames>/cropped_aligned_new_50_vids/<video>/...    merged when present

``load_affwild2(root)`` returns an :class:`AffWild2` with one :class:`VideoRecord` per video:
frame count (the longest annotation file of the video, or the last frame a test sample file
names), frame paths aligned to annotation lines (a missing frame points at the previous
available frame, or the next one at the start), labels and masks per task, and each task's own
split (``splits[task]``: a video can be in Train_Set for one challenge and Validation_Set for
another). ``AffWild2.folds(k, task)`` gives the paper's k-fold protocol.

Label conventions: ``labels[task]`` holds the values exactly as written in the file (including
the invalid markers -5 / -1); frames past the end of a task's file hold the marker. The mask is
the authority: ``label_mask[task][t]`` is False where the line has an invalid marker (VA: either
value -5; AU: any of the 12 values -1) and past the end of the task's file. A frame whose image
is missing keeps its label (the challenge scores every annotated frame; its feature is the
neighbouring frame's): ``frame_present`` says which frames have an image, and training uses only
those (``valid & present``) while validation scores all valid frames.
"""
from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from affaccel.data.layout import FRAME_DIR_NAMES, Layout, resolve_layout
from affaccel.tasks import SPLIT_DIRS, TASKS

FRAME_ROOTS = FRAME_DIR_NAMES
SPLITS = ("train", "val", "test")
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
    split: str                                  # stage-1 role: "val" if any task validates on it, else "train" / "test"
    n_frames: int                               # T = longest annotation file of the video
    frame_paths: list                           # [T] Path; missing frames -> a neighbour
    frame_present: np.ndarray                   # bool [T]
    labels: dict = field(default_factory=dict)  # task -> va float32 [T,2] | expr int64 [T] | au float32 [T,12]
    label_mask: dict = field(default_factory=dict)  # task -> bool [T]
    source_video: str = ""                      # raw video name (no _left/_right)
    annotation_files: dict = field(default_factory=dict)  # task -> Path
    splits: dict = field(default_factory=dict)  # task -> "train" | "val" | "test" (each challenge its own)

    @property
    def tasks(self) -> tuple[str, ...]:
        """Tasks this video has annotations for, in TASKS order."""
        return tuple(t for t in TASKS if t in self.labels)

    @property
    def n_missing(self) -> int:
        return int((~self.frame_present).sum())


def _frame_index(frame_dirs: list[Path]) -> dict[str, dict[int, Path]]:
    """video -> {frame number (1-based) -> path}, merged over the frame folders (later wins:
    ``cropped_aligned_new_50_vids`` is the newer crop of its videos)."""
    videos: dict[str, dict[int, Path]] = {}
    for base in frame_dirs:
        for vdir in base.iterdir():
            if not vdir.is_dir():
                continue
            frames = videos.setdefault(vdir.name, {})
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
    """A loaded dataset: records sorted by id, per-task split access, k folds, skip report."""

    def __init__(self, root: Path, videos: list[VideoRecord], skipped: list[tuple[str, str]],
                 tasks: tuple[str, ...], layout: Layout | None = None):
        self.root = root
        self.videos = sorted(videos, key=lambda r: r.video_id)
        self.skipped = skipped
        self.tasks = tasks
        self.layout = layout
        self._by_id = {r.video_id: r for r in self.videos}

    def __len__(self) -> int:
        return len(self.videos)

    def __iter__(self):
        return iter(self.videos)

    def by_split(self, split: str, task: str | None = None) -> list[VideoRecord]:
        """Videos of ``split`` for ``task`` (its challenge's own split); without a task, by the
        stage-1 role (``VideoRecord.split``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        if task is None:
            return [r for r in self.videos if r.split == split]
        return [r for r in self.videos if r.splits.get(task) == split]

    def get(self, video_id: str) -> VideoRecord:
        try:
            return self._by_id[video_id]
        except KeyError:
            raise KeyError(f"no video {video_id!r} in {self.root}") from None

    def folds(self, k: int, task: str, seed: int = 0) -> list[tuple[list[VideoRecord], list[VideoRecord]]]:
        """The k-fold protocol of ``task`` (the paper's Table 1, sucv ABAW lineage):
        ``[(train_records, val_records)] * k``.

        Fold 0 is the official split. Folds 1..k-1 rotate chunks of the training videos with the
        official validation set: the training videos, grouped by source video (a _left/_right
        pair stays together), are dealt into k - 1 chunks balanced in frames (groups in an order
        shuffled by ``seed``, each to the chunk with the fewest frames so far); fold i validates
        on chunk i and trains on the other chunks plus the official validation videos.
        Deterministic for a given seed and data.
        """
        train, val = self.by_split("train", task), self.by_split("val", task)
        groups: dict[str, list[VideoRecord]] = {}
        for r in train:
            groups.setdefault(r.source_video, []).append(r)
        if k < 2 or k - 1 > len(groups):
            raise ValueError(f"folds: k must be in [2, {len(groups) + 1}] for task {task} (fold 0 is "
                             f"the official split, then one chunk per training source video at most), got {k}")
        names = sorted(groups)
        order = np.random.default_rng(seed).permutation(len(names))
        load = [0] * (k - 1)
        chunks: list[list[VideoRecord]] = [[] for _ in range(k - 1)]
        for i in order:
            g = groups[names[i]]
            c = min(range(k - 1), key=lambda j: (load[j], j))
            chunks[c].extend(g)
            load[c] += sum(r.n_frames for r in g)
        out = [(train, val)]
        for chunk in chunks:
            held = {r.video_id for r in chunk}
            rest = [r for r in train if r.video_id not in held]
            out.append((sorted(rest + val, key=lambda r: r.video_id), sorted(chunk, key=lambda r: r.video_id)))
        return out

    def summary(self) -> str:
        """Human-readable counts per split and task, and what was skipped and why."""
        lines = [f"Aff-Wild2 at {self.root}: {len(self.videos)} videos"]
        for t in self.tasks:
            parts = []
            for split in SPLITS:
                recs = self.by_split(split, t)
                if recs:
                    labelled = sum(int(r.label_mask[t].sum()) for r in recs if t in r.label_mask)
                    missing = sum(r.n_missing for r in recs)
                    parts.append(f"{split} {len(recs)} videos / {sum(r.n_frames for r in recs)} frames "
                                 f"({labelled} labelled, {missing} without image)")
            lines.append(f"  {t}: " + ("; ".join(parts) or "no videos"))
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)}:")
            lines += [f"    {f}: {why}" for f, why in self.skipped]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"AffWild2(root={str(self.root)!r}, videos={len(self.videos)}, "
                f"skipped={len(self.skipped)})")


def _annotation_files(root: Path, tasks, splits) -> dict[str, dict[str, tuple[str, Path]]]:
    """video -> task -> (split, annotation file) of the requested tasks and splits."""
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


# ----------------------------------------------------------------------------------------------
# test set

SAMPLE_HEADER_FIRST = "image_location"
_SAMPLE_ROW_RE = re.compile(r"^(?P<video>[^/,]+)/(?P<frame>\d+)\.jpg$", re.IGNORECASE)


def read_test_list(path: str | Path) -> list[str]:
    """Video names of a ``*_test_set_release.txt`` file (one per line; blank lines ignored)."""
    names = [line.strip() for line in Path(path).read_text(encoding="utf-8-sig").splitlines()]
    return [n for n in names if n]


def read_test_sample(path: str | Path, task: str) -> list[tuple[str, int]]:
    """``(video, frame number)`` of every row of a ``*_test_set_sample.txt`` file, in order.

    The header must be ``image_location,<task columns>``; each row starts with
    ``<video>/<NNNNN>.jpg``. Raises AnnotationError naming the file and line otherwise.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    want = [SAMPLE_HEADER_FIRST, *TASKS[task].columns]
    if not lines or [h.strip() for h in lines[0].split(",")] != want:
        got = lines[0].strip() if lines else "an empty file"
        raise AnnotationError(path, 1, f"wrong header {got!r}; expected {','.join(want)!r}")
    rows = []
    for k, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        m = _SAMPLE_ROW_RE.match(line.split(",")[0].strip())
        if m is None:
            raise AnnotationError(path, k, f"row {line.strip()!r}: expected <video>/<NNNNN>.jpg, first")
        rows.append((m.group("video"), int(m.group("frame"))))
    if not rows:
        raise AnnotationError(path, 2, "no rows after the header")
    return rows


def _test_frames(layout: Layout, tasks) -> dict[str, dict[str, int]]:
    """video -> task -> last frame number its sample file names, for the requested tasks."""
    found = [t for t in tasks if t in layout.test_samples]
    if not found:
        raise FileNotFoundError(f"no test sample files (CVPR_*_test_set_sample.txt) for tasks {list(tasks)} "
                                f"in {layout.annotations} or {layout.annotations.parent}")
    out: dict[str, dict[str, int]] = {}
    for t in found:
        path = layout.test_samples[t]
        rows = read_test_sample(path, t)
        for video, frame in rows:
            out.setdefault(video, {})[t] = max(frame, out.get(video, {}).get(t, 0))
        if t in layout.test_lists:
            named = set(v for v, _ in rows)
            absent = [v for v in read_test_list(layout.test_lists[t]) if v not in named]
            if absent:
                raise ValueError(f"{layout.test_lists[t]}: video {absent[0]!r} ({len(absent)} in all) is not in "
                                 f"the sample file {path}; expected every listed test video to have rows there")
    return out


# ----------------------------------------------------------------------------------------------
# loading


def _padded(values: np.ndarray, valid: np.ndarray, n: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """A shorter file padded to n frames with the task's invalid marker (masked)."""
    m = len(values)
    if m >= n:
        return values, valid
    pad = np.full((n - m,) + values.shape[1:], TASKS[task].invalid, values.dtype)
    return np.concatenate([values, pad]), np.concatenate([valid, np.zeros(n - m, bool)])


def _record(vid: str, per_task: dict, test: dict, frames: dict, layout: Layout, fail) -> VideoRecord | None:
    """The record of one video, or None when nothing of it can be used (reported by ``fail``)."""
    parsed = {}
    for t, (split, f) in per_task.items():
        try:
            parsed[t] = (split, f, read_annotation(f, t))
        except AnnotationError as err:
            fail(err.path, err, t)   # drops this task of this video only
    if not parsed and not test:
        return None
    n = max([len(v) for _, _, (v, _) in parsed.values()] + list(test.values()))
    paths, present = _align_frames(frames.get(vid, {}), n)
    if not present.any():
        where = f"{{{','.join(str(d) for d in layout.frame_dirs)}}}/{vid}/"
        if test:
            raise FileNotFoundError(f"{', '.join(str(layout.test_samples[t]) for t in test)}: test video {vid} "
                                    f"has no frame images in {where}")
        fail(vid, FileNotFoundError(f"video {vid}: no frame images in {where}"), None)
        return None
    labels, masks, splits = {}, {}, {}
    for t, (split, _, (values, valid)) in parsed.items():
        labels[t], masks[t] = _padded(values, valid, n, t)
        splits[t] = split
    splits.update({t: "test" for t in test})
    role = "val" if "val" in splits.values() else "train" if "train" in splits.values() else "test"
    return VideoRecord(video_id=vid, split=role, n_frames=n, frame_paths=paths, frame_present=present,
                       labels=labels, label_mask=masks, source_video=source_video(vid),
                       annotation_files={t: f for t, (_, f, _) in parsed.items()}, splits=splits)


def load_affwild2(root: str | Path | None = None, tasks=("va", "expr", "au"), splits=("train", "val"),
                  lenient: bool = False, *, annotations: str | Path | None = None,
                  frames: str | Path | None = None) -> AffWild2:
    """Read an Aff-Wild2-format dataset (see the module docstring for layouts and conventions).

    root: the dataset folder (any layout of ``affaccel.data.layout``), or None with both
    ``annotations`` and ``frames`` (separate roots). tasks: subset of ("va", "expr", "au");
    every requested task needs its annotation folder. splits: subset of ("train", "val",
    "test"); "test" reads the test sample files. lenient: a bad annotation file drops only that
    task of that video, and a video without any frame image is skipped; each is warned about and
    listed in ``.skipped`` (file, reason) instead of raising.
    """
    tasks = tuple(tasks)
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; expected a subset of {tuple(TASKS)}")
    for sp in splits:
        if sp not in SPLITS:
            raise ValueError(f"unknown split {sp!r}; expected a subset of {SPLITS}")
    layout = resolve_layout(root, annotations, frames)
    files = _annotation_files(layout.annotations, tasks, [sp for sp in splits if sp != "test"])
    test = _test_frames(layout, tasks) if "test" in splits else {}
    skipped: list[tuple[str, str]] = []

    def fail(file, err: Exception, task: str | None):
        if not lenient:
            raise err
        what = f"task {task}: " if task else ""
        warnings.warn(f"skipping {what}{file}: {err}", stacklevel=3)
        skipped.append((str(file), f"{what}{err}"))

    index = _frame_index(layout.frame_dirs)
    records = [r for vid in sorted(set(files) | set(test))
               if (r := _record(vid, files.get(vid, {}), test.get(vid, {}), index, layout, fail)) is not None]
    if not records:
        raise FileNotFoundError(f"no video of tasks {list(tasks)} and splits {list(splits)} found: "
                                f"{layout.describe()}")
    return AffWild2(Path(root) if root is not None else layout.annotations, records, skipped, tasks, layout)
