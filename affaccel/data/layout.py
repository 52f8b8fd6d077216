"""Where the parts of an Aff-Wild2 / ABAW dataset are on disk.

Three layouts are read (DESIGN.md, "Aff-Wild2 conventions"):

- one root holding everything: ``<root>/VA_Estimation_Challenge/...``, ``<root>/cropped_aligned/``
  (the built-in synthetic set, and many users' own copies);
- the layout as shipped: annotations in their own folder beside the frames
  (``<root>/8th_ABAW_Annotations/``, ``<root>/6th ABAW Annotations/``: any folder whose name
  contains "ABAW" and "Annotation"), frames unpacked as ``<root>/cropped_aligned/cropped_aligned/``
  next to ``<root>/cropped_aligned/cropped_aligned_new_50_vids/``;
- separate roots: ``annotations=DIR`` and ``frames=DIR`` (``--annotations`` / ``--frames``).

The test set's files (``names_of_videos_in_each_test_set/*_test_set_release.txt`` and
``CVPR_8th_ABAW_{VA,Expr,AU}_test_set_sample.txt``) are looked up in the annotation folder and
beside it. A layout that yields nothing is an error that says what was looked for where.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from affaccel.tasks import TASKS

FRAME_DIR_NAMES = ("cropped_aligned", "cropped_aligned_new_50_vids")
_ANNOTATION_DIR_RE = re.compile(r"abaw.*annotation", re.IGNORECASE)
_JPG_RE = re.compile(r"^\d+\.jpg$", re.IGNORECASE)
# which test list / sample file belongs to which task: by words in the file name
_TEST_NAME_WORDS = {"va": ("valence", "arousal", "_va_"), "expr": ("expr", "expression"),
                    "au": ("action_unit", "_au_")}


@dataclass
class Layout:
    """Resolved locations: one annotation root, the frame folders (merged, later wins), and the
    test set's files per task (absent when the dataset has no test set)."""
    annotations: Path
    frame_dirs: list[Path]
    test_lists: dict[str, Path] = field(default_factory=dict)     # task -> *_test_set_release.txt
    test_samples: dict[str, Path] = field(default_factory=dict)   # task -> *_test_set_sample.txt

    def describe(self) -> str:
        dirs = ", ".join(str(d) for d in self.frame_dirs) or "none"
        return f"annotations {self.annotations}; frames {dirs}"


def _has_task_folders(d: Path) -> bool:
    return d.is_dir() and any((d / name).is_dir() for t in TASKS.values() for name in t.annotation_dirs)


def _looks_like_frames(d: Path, probe: int = 5) -> bool:
    """A folder of video folders holding numbered JPEGs (checks the first few only)."""
    if not d.is_dir():
        return False
    for k, sub in enumerate(sorted(p for p in d.iterdir() if p.is_dir())):
        if k >= probe:
            break
        if any(_JPG_RE.match(e.name) for e in sub.iterdir()):
            return True
    return False


def _tree_signature(d: Path) -> list[tuple[str, int]]:
    """(relative path, size) of every annotation file under d: equal for identical copies."""
    return sorted((str(p.relative_to(d)), p.stat().st_size) for p in d.rglob("*.txt"))


def find_annotations(root: Path) -> Path:
    """The annotation root under ``root``: root itself, or its one ``*ABAW*Annotation*`` folder."""
    if _has_task_folders(root):
        return root
    cands = [d for d in sorted(root.iterdir()) if d.is_dir() and _ANNOTATION_DIR_RE.search(d.name)
             and _has_task_folders(d)] if root.is_dir() else []
    if not cands:
        wanted = sorted({n for t in TASKS.values() for n in t.annotation_dirs})
        raise FileNotFoundError(
            f"no annotations under {root}: looked for the task folders {wanted} in {root} and in any "
            f"folder of it named like '8th_ABAW_Annotations' (pass --annotations DIR to point at them)")
    if len(cands) > 1 and len({tuple(_tree_signature(c)) for c in cands}) > 1:
        raise ValueError(f"{root} holds {len(cands)} annotation folders that disagree "
                         f"({', '.join(c.name for c in cands)}); pass --annotations DIR to choose one")
    return cands[-1]   # identical copies: any; names sort by edition, the newest last


def find_frame_dirs(base: Path) -> list[Path]:
    """Frame folders under ``base``, in merge order (later wins on a frame both hold):
    ``cropped_aligned`` and ``cropped_aligned_new_50_vids`` at ``base`` or nested one level down
    (``cropped_aligned/cropped_aligned``, as the archive unpacks), else ``base`` itself when it
    holds the video folders. The wrapping ``cropped_aligned`` of the nested form holds folders of
    video folders, not images, so it is never taken for a frame folder."""
    found = [parent / name for parent in (base, base / FRAME_DIR_NAMES[0]) for name in FRAME_DIR_NAMES
             if _looks_like_frames(parent / name)]
    if not found and _looks_like_frames(base):
        found = [base]
    return found


def _task_of(name: str) -> str | None:
    low = name.lower()
    for task, words in _TEST_NAME_WORDS.items():
        if any(w in low for w in words):
            return task
    return None


def find_test_files(*places: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """(test lists, sample files) per task, from the given folders and one level below them."""
    lists: dict[str, Path] = {}
    samples: dict[str, Path] = {}
    for place in places:
        if not place.is_dir():
            continue
        for p in sorted([*place.glob("*.txt"), *place.glob("*/*.txt")]):
            task = _task_of(p.name)
            if task is None:
                continue
            if p.name.endswith("_test_set_release.txt"):
                lists.setdefault(task, p)
            elif p.name.endswith("_test_set_sample.txt"):
                samples.setdefault(task, p)
    return lists, samples


def add_data_arguments(p, default_help: str = "default: built-in synthetic set") -> None:
    """--data-root / --annotations / --frames, the same on every command that reads a dataset."""
    from pathlib import Path as _Path

    p.add_argument("--data-root", type=_Path, default=None,
                   help="Aff-Wild2 / ABAW dataset folder, in any layout: annotation folders + cropped_aligned, or "
                        "as shipped (8th_ABAW_Annotations/ beside cropped_aligned/cropped_aligned) "
                        f"({default_help})")
    p.add_argument("--annotations", type=_Path, default=None,
                   help="annotation folder kept apart from the frames (with --frames, instead of --data-root)")
    p.add_argument("--frames", type=_Path, default=None,
                   help="frame folder kept apart from the annotations (cropped_aligned folders)")


def data_arguments(args) -> dict:
    """``root`` / ``annotations`` / ``frames`` from parsed arguments, checked: either a root or
    both separate folders. Raises ValueError naming the argument."""
    if (args.annotations is None) != (args.frames is None) and args.data_root is None:
        missing = "--frames" if args.frames is None else "--annotations"
        raise ValueError(f"{missing} is needed too: separate roots take both --annotations and --frames")
    return {"root": args.data_root, "annotations": args.annotations, "frames": args.frames}


def resolve_layout(root: str | Path | None = None, annotations: str | Path | None = None,
                   frames: str | Path | None = None) -> Layout:
    """The dataset's layout from a root, or from separate annotation and frame roots."""
    if root is None and (annotations is None or frames is None):
        raise ValueError("give a dataset root, or both an annotations folder and a frames folder")
    for name, p in (("dataset root", root), ("annotations folder", annotations), ("frames folder", frames)):
        if p is not None and not Path(p).is_dir():
            raise FileNotFoundError(f"{name} {p} is not a folder")
    ann = find_annotations(Path(annotations) if annotations is not None else Path(root))
    frame_base = Path(frames) if frames is not None else Path(root)
    frame_dirs = find_frame_dirs(frame_base)
    if not frame_dirs:
        raise FileNotFoundError(
            f"no frame folders under {frame_base}: looked for <video>/00001.jpg in {frame_base}, "
            f"{frame_base}/{{{','.join(FRAME_DIR_NAMES)}}} and "
            f"{frame_base}/{FRAME_DIR_NAMES[0]}/{{{','.join(FRAME_DIR_NAMES)}}} (pass --frames DIR)")
    places = [ann, ann.parent] + ([Path(root)] if root is not None else [])
    lists, samples = find_test_files(*dict.fromkeys(places))
    return Layout(ann, frame_dirs, lists, samples)
