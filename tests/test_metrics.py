"""ABAW metrics against independent computations; masked frames never count."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from affaccel import metrics
from affaccel.tasks import ACTION_UNITS, EXPRESSIONS


def ccc_formula(x, y):
    """Lin (1989) with population moments, written out in float64 via np.cov(bias=True)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    c = np.cov(x, y, bias=True)
    return 2 * c[0, 1] / (c[0, 0] + c[1, 1] + (x.mean() - y.mean()) ** 2)


@pytest.mark.parametrize("n", [2, 7, 1000])
def test_ccc_matches_float64_formula(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    y = (0.5 * x + rng.standard_normal(n) + 3.0).astype(np.float32)  # offset far from zero
    assert metrics.ccc(x, y) == pytest.approx(ccc_formula(x, y), rel=1e-12, abs=1e-12)


def test_ccc_known_values():
    x = np.linspace(-1, 1, 50)
    assert metrics.ccc(x, x) == pytest.approx(1.0)
    assert metrics.ccc(x, -x) == pytest.approx(-1.0)
    # a shift lowers CCC below Pearson's 1: 2 var / (2 var + shift^2)
    v = x.var()
    assert metrics.ccc(x, x + 0.5) == pytest.approx(2 * v / (2 * v + 0.25))
    assert metrics.ccc(np.zeros(5), np.zeros(5)) == 0.0
    assert np.isnan(metrics.ccc([], []))


def test_ccc_accepts_torch():
    x = torch.randn(64, dtype=torch.float64)
    y = x * 0.3 + torch.randn(64, dtype=torch.float64)
    assert metrics.ccc(x, y) == pytest.approx(ccc_formula(x.numpy(), y.numpy()), rel=1e-12)


def test_va_metrics_and_mask():
    rng = np.random.default_rng(0)
    t = rng.uniform(-1, 1, (300, 2))
    p = t + rng.normal(0, 0.3, t.shape)
    mask = rng.random(300) > 0.3
    out = metrics.va_metrics(p, t, mask)
    assert out["ccc_valence"] == pytest.approx(ccc_formula(p[mask, 0], t[mask, 0]), rel=1e-12)
    assert out["ccc_arousal"] == pytest.approx(ccc_formula(p[mask, 1], t[mask, 1]), rel=1e-12)
    assert out["ccc_mean"] == pytest.approx((out["ccc_valence"] + out["ccc_arousal"]) / 2)
    # masked frames change nothing, whatever they hold (Aff-Wild2 marks them -5)
    p2, t2 = p.copy(), t.copy()
    p2[~mask] = 1e6
    t2[~mask] = -5.0
    assert metrics.va_metrics(p2, t2, mask) == out


def test_expr_f1_matches_sklearn_on_random_labels():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 8, 500)
    logits = rng.standard_normal((500, 8))
    logits[np.arange(500), t] += rng.random(500) * 2  # better than chance, not perfect
    mask = rng.random(500) > 0.2
    out = metrics.expr_metrics(logits, t, mask)
    pred = logits.argmax(1)
    ref = f1_score(t[mask], pred[mask], average="macro", labels=list(range(8)), zero_division=0)
    assert out["f1_macro"] == pytest.approx(ref, abs=1e-12)
    per = f1_score(t[mask], pred[mask], average=None, labels=list(range(8)), zero_division=0)
    for name, v in zip(EXPRESSIONS, per):
        assert out[f"f1_{name}"] == pytest.approx(v, abs=1e-12)
    # labels as input give the same; masked frames change nothing
    assert metrics.expr_metrics(pred, t, mask) == out
    t2 = t.copy()
    t2[~mask] = -1
    assert metrics.expr_metrics(logits, t2, mask) == out


def test_expr_absent_class_counts_zero():
    t = np.array([0, 0, 1, 1])
    out = metrics.expr_metrics(np.array([0, 0, 1, 1]), t)
    assert out["f1_Neutral"] == 1.0 and out["f1_Other"] == 0.0
    assert out["f1_macro"] == pytest.approx(2 / 8)


def test_au_f1_matches_sklearn_on_random_labels():
    rng = np.random.default_rng(2)
    t = (rng.random((400, 12)) > 0.7).astype(np.float32)
    probs = np.clip(t * 0.4 + rng.random((400, 12)) * 0.6, 0, 1)
    mask = rng.random(400) > 0.25
    out = metrics.au_metrics(probs, t, mask)
    per = [f1_score(t[mask, j], probs[mask, j] >= 0.5, zero_division=0) for j in range(12)]
    for name, v in zip(ACTION_UNITS, per):
        assert out[f"f1_{name}"] == pytest.approx(v, abs=1e-12)
    assert out["f1_macro"] == pytest.approx(np.mean(per), abs=1e-12)
    t2, p2 = t.copy(), probs.copy()
    t2[~mask], p2[~mask] = -1, 0.9
    assert metrics.au_metrics(p2, t2, mask) == out


def test_au_per_unit_mask():
    rng = np.random.default_rng(3)
    t = (rng.random((100, 12)) > 0.5).astype(np.float32)
    probs = rng.random((100, 12))
    m = rng.random((100, 12)) > 0.5
    out = metrics.au_metrics(probs, t, m)
    assert out["f1_AU4"] == pytest.approx(f1_score(t[m[:, 2], 2], probs[m[:, 2], 2] >= 0.5, zero_division=0))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="va_metrics"):
        metrics.va_metrics(np.zeros((5, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="mask"):
        metrics.va_metrics(np.zeros((5, 2)), np.zeros((5, 2)), np.ones(4, bool))
    with pytest.raises(ValueError, match="expr_metrics"):
        metrics.expr_metrics(np.zeros((5, 7)), np.zeros(5))
    with pytest.raises(ValueError, match="au_metrics"):
        metrics.au_metrics(np.zeros((5, 11)), np.zeros((5, 11)))
    with pytest.raises(ValueError, match="unknown task"):
        metrics.task_metrics("valence", np.zeros((5, 2)), np.zeros((5, 2)))


def test_headline_and_table():
    m = {"ccc_valence": 0.5, "ccc_arousal": 0.7, "ccc_mean": 0.6}
    assert metrics.headline("va", m) == 0.6
    table = metrics.format_table([("validation", m)], metrics.table_keys("va"))
    assert "ccc_mean" in table and "0.6000" in table and "0.7000" in table
