"""ABAW scores on per-frame predictions: CCC for valence/arousal, macro F1 for EXPR and AU.

All functions take NumPy arrays or CPU torch tensors and compute in float64 over the valid
frames only (``mask``), as the challenge does over all valid frames of a split:

- VA: CCC with population moments (Lin 1989), ``ccc_mean = (ccc_valence + ccc_arousal) / 2``;
- EXPR: macro F1 over the 8 classes (scikit-learn, ``labels=range(8)``, ``zero_division=0``);
- AU: mean over the 12 AUs of the binary F1 at a probability threshold (0.5).

Only NumPy is imported at module import; scikit-learn on first use.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from affaccel.tasks import ACTION_UNITS, EXPRESSIONS, get_task

# The score that picks the best checkpoint and heads every table, per task.
HEADLINE = {"va": "ccc_mean", "expr": "f1_macro", "au": "f1_macro"}


def _np(x: Any, name: str) -> np.ndarray:
    if x is None:
        raise ValueError(f"{name} must be an array, got None")
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _mask(mask: Any, n: int) -> np.ndarray:
    """Boolean [n] (or [n, K]) valid-frame mask; None means every frame is valid."""
    if mask is None:
        return np.ones(n, dtype=bool)
    m = _np(mask, "mask").astype(bool)
    if m.shape[0] != n:
        raise ValueError(f"mask has {m.shape[0]} frames, predictions have {n}")
    return m


def ccc(pred: Any, target: Any) -> float:
    """Concordance correlation coefficient of two 1-D sequences (float64, population moments).

    CCC = 2 cov(x, y) / (var x + var y + (mean x - mean y)^2). Returns NaN for empty input
    and 0.0 when the denominator is 0 (both sequences the same constant: no variation to
    agree on), so that a model predicting a constant is never rewarded.
    """
    x = _np(pred, "pred").astype(np.float64).ravel()
    y = _np(target, "target").astype(np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"ccc: pred has {x.size} values, target has {y.size}")
    if x.size == 0:
        return float("nan")
    mx, my = x.mean(), y.mean()
    vx, vy = ((x - mx) ** 2).mean(), ((y - my) ** 2).mean()
    cov = ((x - mx) * (y - my)).mean()
    den = vx + vy + (mx - my) ** 2
    return float(2.0 * cov / den) if den > 0 else 0.0


def va_metrics(pred: Any, target: Any, mask: Any = None) -> dict[str, float]:
    """pred, target: [T, 2] (valence, arousal); mask: [T] bool. -> ccc_valence/arousal/mean."""
    p, t = _np(pred, "pred"), _np(target, "target")
    if p.ndim != 2 or p.shape[1] != 2 or p.shape != t.shape:
        raise ValueError(f"va_metrics expects pred and target [T, 2], got {p.shape} and {t.shape}")
    m = _mask(mask, p.shape[0])
    cv = ccc(p[m, 0], t[m, 0])
    ca = ccc(p[m, 1], t[m, 1])
    return {"ccc_valence": cv, "ccc_arousal": ca, "ccc_mean": (cv + ca) / 2.0}


def expr_metrics(pred: Any, target: Any, mask: Any = None) -> dict[str, float]:
    """pred: [T, 8] scores (logits or probabilities; argmax taken) or [T] labels; target: [T]
    int labels 0..7; mask: [T] bool. -> f1_macro and f1_<Expression> per class."""
    from sklearn.metrics import f1_score

    p, t = _np(pred, "pred"), _np(target, "target")
    if p.ndim == 2:
        if p.shape[1] != len(EXPRESSIONS):
            raise ValueError(f"expr_metrics expects [T, {len(EXPRESSIONS)}] scores, got {p.shape}")
        p = p.argmax(axis=1)
    if p.ndim != 1 or t.shape != p.shape:
        raise ValueError(f"expr_metrics: pred {p.shape} and target {t.shape} do not match")
    m = _mask(mask, p.shape[0])
    labels = list(range(len(EXPRESSIONS)))
    per = f1_score(t[m], p[m], labels=labels, average=None, zero_division=0)
    out = {"f1_macro": float(np.mean(per))}
    out.update({f"f1_{name}": float(v) for name, v in zip(EXPRESSIONS, per)})
    return out


def au_metrics(probs: Any, target: Any, mask: Any = None, threshold: float = 0.5) -> dict[str, float]:
    """probs: [T, 12] probabilities; target: [T, 12] in {0, 1}; mask: [T] or [T, 12] bool.
    -> f1_macro (mean binary F1 over AUs) and f1_<AU> per AU."""
    from sklearn.metrics import f1_score

    p, t = _np(probs, "probs"), _np(target, "target")
    if p.ndim != 2 or p.shape[1] != len(ACTION_UNITS) or p.shape != t.shape:
        raise ValueError(f"au_metrics expects probs and target [T, {len(ACTION_UNITS)}], "
                         f"got {p.shape} and {t.shape}")
    m = _mask(mask, p.shape[0])
    if m.ndim == 1:
        m = np.repeat(m[:, None], p.shape[1], axis=1)
    out: dict[str, float] = {}
    for j, name in enumerate(ACTION_UNITS):
        yt = t[m[:, j], j].astype(np.int64)
        yp = (p[m[:, j], j] >= threshold).astype(np.int64)
        out[f"f1_{name}"] = float(f1_score(yt, yp, labels=[0, 1], pos_label=1,
                                           average="binary", zero_division=0))
    out = {"f1_macro": float(np.mean([out[f"f1_{a}"] for a in ACTION_UNITS])), **out}
    return out


def task_metrics(task: str, pred: Any, target: Any, mask: Any = None) -> dict[str, float]:
    """Scores of one task on per-frame predictions in prediction space: VA values, EXPR class
    probabilities (or logits), AU probabilities."""
    kind = get_task(task).name
    if kind == "va":
        return va_metrics(pred, target, mask)
    if kind == "expr":
        return expr_metrics(pred, target, mask)
    return au_metrics(pred, target, mask)


def headline(task: str, metrics: dict[str, float]) -> float:
    """The task's headline score (the one the paper reports) from a metrics dict."""
    return float(metrics[HEADLINE[get_task(task).name]])


def format_table(rows: list[tuple[str, dict[str, float]]], keys: list[str]) -> str:
    """A plain-text table: one row per (label, metrics), one column per key (4 decimals)."""
    head = ["", *keys]
    body = [[label, *(f"{m.get(k, float('nan')):.4f}" for k in keys)] for label, m in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    rule = "-" * len(fmt(head))
    return "\n".join([fmt(head), rule, *map(fmt, body)])


def table_keys(task: str) -> list[str]:
    """Columns of every results table (final, folds, ablation): VA valence/arousal/mean; EXPR
    and AU macro F1 first, then per class. The one rule for which metrics a table shows."""
    name = get_task(task).name
    if name == "va":
        return ["ccc_valence", "ccc_arousal", "ccc_mean"]
    if name == "expr":
        return ["f1_macro", *(f"f1_{e}" for e in EXPRESSIONS)]
    return ["f1_macro", *(f"f1_{a}" for a in ACTION_UNITS)]


task_metric = task_metrics  # the name in the interface notes


def war(y_true: Any, y_pred: Any) -> float:
    """Weighted average recall (the video FER literature's WAR): plain accuracy over all clips.
    y_true, y_pred: [N] int class ids."""
    t, p = _np(y_true, "y_true").ravel(), _np(y_pred, "y_pred").ravel()
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"war: y_true {t.shape} and y_pred {p.shape} must be equal, non-empty")
    return float((t == p).mean())


def uar(y_true: Any, y_pred: Any, labels: Any = None) -> float:
    """Unweighted average recall: the mean over classes of per-class recall, over the classes
    that occur in ``y_true`` (``labels`` restricts / orders them; classes of ``labels`` with no
    true sample are left out, as scikit-learn's macro recall would count them as 0)."""
    t, p = _np(y_true, "y_true").ravel(), _np(y_pred, "y_pred").ravel()
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"uar: y_true {t.shape} and y_pred {p.shape} must be equal, non-empty")
    classes = np.unique(t) if labels is None else [c for c in labels if np.any(t == c)]
    return float(np.mean([np.mean(p[t == c] == c) for c in classes]))
