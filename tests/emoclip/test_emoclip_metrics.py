"""WAR / UAR against scikit-learn."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score

from affaccel.metrics import uar, war


@pytest.mark.parametrize("seed", range(5))
def test_war_uar_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, 200)
    p = np.where(rng.random(200) < 0.4, y, rng.integers(0, 7, 200))
    assert war(y, p) == pytest.approx(accuracy_score(y, p))
    assert uar(y, p) == pytest.approx(balanced_accuracy_score(y, p))
    present = np.unique(y)
    assert uar(y, p, labels=range(11)) == pytest.approx(recall_score(y, p, labels=present, average="macro"))


def test_uar_weighs_classes_equally():
    y = np.array([0] * 90 + [1] * 10)
    p = np.zeros(100, int)
    assert war(y, p) == pytest.approx(0.9)
    assert uar(y, p) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        war([], [])
