"""The ABAW test-set submission format: file names, rows, decisions and the checker.

A submission is one text file per task (DESIGN.md, "Aff-Wild2 conventions"): the header
``image_location,valence,arousal`` / ``image_location,Neutral,...,Other`` /
``image_location,AU1,...,AU26``, then exactly the rows of the task's sample file
(``CVPR_8th_ABAW_{VA,Expr,AU}_test_set_sample.txt``) in its order, each with a valid value:
VA two floats in [-1, 1], EXPR one integer class 0..7, AU twelve 0/1 values. Never the
annotation files' invalid markers (-5 / -1), never NaN, never an empty field.

File names: the sample file's name with ``sample`` replaced by ``predictions``
(``CVPR_8th_ABAW_VA_test_set_sample.txt`` -> ``CVPR_8th_ABAW_VA_test_set_predictions.txt``);
``<VA|EXPR|AU>_test_set_predictions.txt`` when the sample file is named otherwise.

The writer runs the checker on the rows in memory before the atomic write, so a file that
would fail ``python -m affaccel.submit --check`` is never written. This module needs no torch.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from affaccel import io_utils
from affaccel.tasks import TASKS

SHORT_NAMES = {"va": "VA", "expr": "EXPR", "au": "AU"}
ZIP_NAME = "abaw_submission.zip"
_INT_RE = re.compile(r"^\d+$")


def header(task: str) -> str:
    """``image_location,<the task's columns>``."""
    return ",".join(("image_location", *TASKS[task].columns))


def n_fields(task: str) -> int:
    """Fields of a row: the location, then 2 VA floats / 1 EXPR class (the header still names all
    8 classes, as the annotation files' does) / 12 AU values."""
    return 1 + (1 if task == "expr" else TASKS[task].dim)


def prediction_name(task: str, sample_path: str | Path | None = None) -> str:
    """File name of the task's submission (module docstring)."""
    name = Path(sample_path).name if sample_path is not None else ""
    if name.lower().endswith("_test_set_sample.txt"):
        return name[: -len("sample.txt")] + "predictions.txt"
    return f"{SHORT_NAMES[task]}_test_set_predictions.txt"


@dataclass
class Sample:
    """The rows of one sample file: ``locations[i]`` (the literal ``<video>/<NNNNN>.jpg``) and
    ``frames[i]`` (video, frame number from 1), in file order; ``lines[i]`` its 1-based line."""
    task: str
    path: Path
    locations: list[str]
    frames: list[tuple[str, int]]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.locations)


def read_sample(path: str | Path, task: str) -> Sample:
    """Read a sample file (header and rows checked by ``affaccel.data.affwild2.read_test_sample``;
    a frame number below 1 is refused, naming the line)."""
    from affaccel.data.affwild2 import AnnotationError, read_test_sample

    path = Path(path)
    frames = read_test_sample(path, task)
    locations, lines = [], []
    for k, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines()[1:], start=2):
        if line.strip():
            locations.append(line.split(",")[0].strip())
            lines.append(k)
    for (video, frame), k in zip(frames, lines):
        if frame < 1:
            raise AnnotationError(path, k, f"frame number {frame} of video {video}: expected frames numbered from 1")
    return Sample(task, path, locations, frames, lines)


# ---------------------------------------------------------------------------------------------
# from prediction space to the written values


def nearest_present(present: np.ndarray) -> np.ndarray:
    """present: bool [T] (frame has an image) -> int64 [T]: each frame's own index where present,
    else the nearest present frame's (a tie goes to the earlier). Needs one present frame."""
    present = np.asarray(present, bool)
    n = len(present)
    if not present.any():
        raise ValueError("nearest_present: no frame has an image")
    idx = np.arange(n)
    prev = np.maximum.accumulate(np.where(present, idx, -1))
    nxt = np.minimum.accumulate(np.where(present, idx, 2 * n + 1)[::-1])[::-1]
    take_prev = (prev >= 0) & ((nxt > n) | (idx - prev <= nxt - idx))
    return np.where(take_prev, prev, nxt).astype(np.int64)


def decide(task: str, pred: np.ndarray) -> np.ndarray:
    """Prediction space [N, K] (VA values, EXPR / AU probabilities) -> the written values:
    VA clipped to [-1, 1] (float64 [N, 2]); EXPR the argmax class (int64 [N]); AU probability
    >= 0.5 -> 1 (int64 [N, 12]). Raises on a non-finite prediction."""
    pred = np.asarray(pred, np.float64)
    if pred.ndim != 2 or pred.shape[1] != TASKS[task].dim:
        raise ValueError(f"{task} predictions must be [N, {TASKS[task].dim}], got {list(pred.shape)}")
    bad = ~np.isfinite(pred).all(axis=1)
    if bad.any():
        raise ValueError(f"{task} prediction of row {int(np.argmax(bad))} is not finite ({pred[bad][0].tolist()})")
    if task == "va":
        return np.clip(pred, -1.0, 1.0)
    if task == "expr":
        return pred.argmax(axis=1).astype(np.int64)
    return (pred >= 0.5).astype(np.int64)


def submission_lines(task: str, locations: Sequence[str], values: np.ndarray) -> list[str]:
    """Header, then one ``<location>,<values>`` line per row (``values`` from :func:`decide`)."""
    if len(locations) != len(values):
        raise ValueError(f"{len(locations)} rows but {len(values)} values")
    out = [header(task)]
    if task == "va":
        out += [f"{loc},{v:.6f},{a:.6f}" for loc, (v, a) in zip(locations, values)]
    elif task == "expr":
        out += [f"{loc},{int(c)}" for loc, c in zip(locations, values)]
    else:
        out += [f"{loc}," + ",".join(str(int(x)) for x in row) for loc, row in zip(locations, values)]
    return out


# ---------------------------------------------------------------------------------------------
# the checker


class SubmissionCheckError(ValueError):
    """The first problem of a submission file: file, 1-based line, what was expected."""

    def __init__(self, name: str, line: int | None, reason: str):
        self.name, self.line, self.reason = name, line, reason
        super().__init__(f"{name}:{line}: {reason}" if line is not None else f"{name}: {reason}")


def _value_problem(task: str, fields: list[str]) -> str | None:
    """Why the value fields of one row are not valid for ``task`` (None when they are)."""
    for j, f in enumerate(fields):
        if f == "":
            return f"empty value in column {TASKS[task].columns[j]}"
    if task == "va":
        for j, f in enumerate(fields):
            try:
                x = float(f)
            except ValueError:
                x = None
            if x is None or not np.isfinite(x) or not -1.0 <= x <= 1.0:
                return (f"{TASKS[task].columns[j]} {f!r}: expected a float in [-1, 1] "
                        "(never -5, NaN or inf)")
        return None
    if task == "expr":
        f = fields[0]
        if not _INT_RE.match(f) or int(f) > 7:
            return f"expression {f!r}: expected one integer class 0..7 (never -1)"
        return None
    for j, f in enumerate(fields):
        if f not in ("0", "1"):
            return f"{TASKS[task].columns[j]} {f!r}: expected 0 or 1 (never -1, never a probability)"
    return None


def check_lines(lines: Sequence[str], sample: Sample, name: str) -> SubmissionCheckError | None:
    """The first problem of a submission's lines against its sample file, or None.

    Checks the header, then row by row the image_location (equal to the sample's row, so a
    missing, extra or swapped row is caught where it starts), the field count and the values;
    then the row count."""
    task = sample.task
    want_header = header(task)
    ncols = n_fields(task)
    nrows = len(lines) - 1
    counts = "" if nrows == len(sample) else f" (the file has {nrows} rows, the sample file {len(sample)})"
    if not lines or [h.strip() for h in lines[0].split(",")] != want_header.split(","):
        got = lines[0] if lines else "an empty file"
        return SubmissionCheckError(name, 1, f"header {got!r}; expected {want_header!r}")
    for i, line in enumerate(lines[1:]):
        lineno = i + 2
        if i >= len(sample):
            return SubmissionCheckError(name, lineno, f"extra row {line!r}: the sample file "
                                        f"{sample.path.name} has {len(sample)} rows{counts}")
        expected = sample.locations[i]
        if not line.strip():
            return SubmissionCheckError(name, lineno, f"empty line; expected the row of {expected}{counts}")
        fields = [f.strip() for f in line.split(",")]
        if fields[0] != expected:
            return SubmissionCheckError(
                name, lineno, f"image_location {fields[0]!r}, expected {expected!r} (line "
                f"{sample.lines[i]} of {sample.path.name}: rows as in the sample file, in its order){counts}")
        if len(fields) != ncols:
            what = "location,class" if task == "expr" else want_header
            return SubmissionCheckError(name, lineno, f"{len(fields)} fields, expected {ncols} ({what})")
        problem = _value_problem(task, fields[1:])
        if problem:
            return SubmissionCheckError(name, lineno, problem)
    if nrows < len(sample):
        return SubmissionCheckError(name, len(lines) + 1, f"file ends; expected the row of "
                                    f"{sample.locations[nrows]} next{counts}")
    return None


def check_text(text: str, sample: Sample, name: str) -> SubmissionCheckError | None:
    """:func:`check_lines` on a file's text (one row per line; a final newline is allowed)."""
    return check_lines(text.splitlines(), sample, name)


@dataclass
class CheckReport:
    """Result of checking a submission folder or zip."""
    results: list      # (file name, task, rows, SubmissionCheckError | None)
    notes: list        # lines about files that are not submission files, or tasks absent
    problem: str | None = None   # a failure that is no file's (nothing to check)

    @property
    def ok(self) -> bool:
        return self.problem is None and all(err is None for _, _, _, err in self.results)


def _entries(where: Path) -> dict[str, bytes | Path]:
    """name -> file of a folder (its .txt files), or name -> bytes of a zip's members."""
    if where.is_file() and zipfile.is_zipfile(where):
        with zipfile.ZipFile(where) as z:
            return {Path(i.filename).name: z.read(i) for i in z.infolist() if not i.is_dir()}
    if not where.is_dir():
        raise FileNotFoundError(f"{where} is neither a folder nor a zip file")
    return {p.name: p for p in sorted(where.glob("*.txt"))}


def check_submission(where: str | Path, samples: Mapping[str, Sample]) -> CheckReport:
    """Check every submission file present in folder or zip ``where`` against the sample files
    (task -> Sample). Files are found by the names :func:`prediction_name` gives."""
    where = Path(where)
    entries = _entries(where)
    expected = {prediction_name(t, s.path): t for t, s in samples.items()}
    results, notes = [], []
    for fname, task in expected.items():
        if fname not in entries:
            notes.append(f"{fname} ({task}): not present")
            continue
        data = entries[fname]
        label = f"{where / fname}" if where.is_dir() else f"{where}!{fname}"
        raw = data.read_bytes() if isinstance(data, Path) else data
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            results.append((label, task, 0, SubmissionCheckError(label, None, f"not UTF-8 text ({e})")))
            continue
        lines = text.splitlines()
        results.append((label, task, max(len(lines) - 1, 0), check_lines(lines, samples[task], label)))
    for fname in entries:
        if fname not in expected and fname.lower().endswith(".txt"):
            notes.append(f"{fname}: not a submission file of any task with a sample file (ignored)")
    problem = None
    if not results:
        problem = (f"no submission file in {where}: expected one of {sorted(expected)} "
                   f"(named after the sample files {[str(s.path) for s in samples.values()]})")
    return CheckReport(results, notes, problem)


# ---------------------------------------------------------------------------------------------
# writing


def write_submission_files(out_dir: str | Path, files: Mapping[str, tuple[list[str], Sample]],
                           zip_name: str | None = None) -> dict[str, Path]:
    """Write ``{file name: (lines, sample)}`` into ``out_dir``, each atomically, after every file
    has passed :func:`check_lines` in memory (one failure raises SubmissionCheckError and nothing
    is written). ``zip_name``: also ``<out_dir>/<zip_name>`` holding the files at its top level.
    Returns name -> path (the zip under its own name)."""
    out_dir = Path(out_dir)
    for fname, (lines, sample) in files.items():
        err = check_lines(lines, sample, fname)
        if err is not None:
            raise SubmissionCheckError(err.name, err.line, f"{err.reason} -- not written: the "
                                       "submission would fail --check")
    texts = {fname: "\n".join(lines) + "\n" for fname, (lines, _) in files.items()}
    written = {}
    for fname, text in texts.items():
        io_utils.atomic_write_text(out_dir / fname, text)
        written[fname] = out_dir / fname
    if zip_name:
        def pack(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
                for fname, text in texts.items():
                    z.writestr(fname, text)

        io_utils.atomic_write_with(out_dir / zip_name, pack)
        written[zip_name] = out_dir / zip_name
    return written


__all__ = ["CheckReport", "Sample", "SubmissionCheckError", "ZIP_NAME", "check_lines", "check_submission",
           "check_text", "decide", "header", "n_fields", "nearest_present", "prediction_name", "read_sample",
           "submission_lines", "write_submission_files"]
