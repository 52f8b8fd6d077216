"""The three Aff-Wild2 tasks: names, columns, invalid markers and annotation folders."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str                      # short name used on the command line: va / expr / au
    columns: tuple[str, ...]       # header of the annotation files, in order
    invalid: float                 # marker of an unannotated frame in the annotation files
    annotation_dirs: tuple[str, ...]  # accepted root folder names, newest first
    kind: str                      # "regression" | "multiclass" | "multilabel"

    @property
    def dim(self) -> int:
        """Model output size K: 2 for VA, 8 expression logits, 12 AU logits."""
        return len(self.columns)


EXPRESSIONS = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
ACTION_UNITS = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24",
                "AU25", "AU26")

TASKS: dict[str, TaskSpec] = {
    "va": TaskSpec("va", ("valence", "arousal"), -5.0, ("VA_Estimation_Challenge",), "regression"),
    "expr": TaskSpec("expr", EXPRESSIONS, -1.0,
                     ("EXPR_Recognition_Challenge", "EXPR_Classification_Challenge"), "multiclass"),
    "au": TaskSpec("au", ACTION_UNITS, -1.0, ("AU_Detection_Challenge",), "multilabel"),
}

SPLIT_DIRS = {"train": "Train_Set", "val": "Validation_Set"}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}") from None
