"""Metrics on hand-computed small cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from medkit.metrics import (
    as_probabilities,
    bootstrap_ci,
    classification_metrics,
    confusion,
    is_probability_matrix,
    per_class_accuracy,
)

# 4 samples, 3 classes. Predictions (argmax) = [0, 0, 2, 2]; true = [0, 1, 2, 1].
Y = np.array([0, 1, 2, 1])
P = np.array([
    [0.6, 0.3, 0.1],  # true 0, pred 0: hit
    [0.5, 0.4, 0.1],  # true 1, pred 0: miss, top-2 hit, wrong group
    [0.2, 0.3, 0.5],  # true 2, pred 2: hit
    [0.3, 0.1, 0.6],  # true 1, pred 2: miss, top-2 miss (0 and 2), same group
])
GROUPS = [0, 1, 1]  # class 0 alone, classes 1 and 2 share a group


def test_hand_computed_metrics():
    m = classification_metrics(Y, P, class_to_group=GROUPS, k=2)
    assert m["acc"] == 0.5
    assert m["top3"] == 0.75  # key stays "top3"; value is top-k with k=2
    # po = 1/2; pe = 1/4*2/4 + 2/4*0 + 1/4*2/4 = 1/4 → kappa = (1/2 - 1/4) / (3/4)
    assert m["kappa"] == pytest.approx(1 / 3)
    # F1: class 0 → 2/3, class 1 → 0, class 2 → 2/3
    assert m["f1_macro"] == pytest.approx(4 / 9)
    assert m["group_acc"] == 0.75
    assert all(isinstance(v, float) for v in m.values())


def test_defaults_top3_with_three_classes_and_no_groups():
    m = classification_metrics(Y, P)
    assert m["top3"] == 1.0  # k >= C: every true label is in the top 3
    assert m["group_acc"] is None
    assert set(m) == {"acc", "top3", "f1_macro", "auc", "kappa", "group_acc"}


def test_top3_with_more_classes():
    y = np.array([0, 1, 2, 3])
    scores = np.array([
        [4, 3, 2, 1],  # rank 1
        [4, 3, 2, 1],  # rank 2
        [4, 3, 2, 1],  # rank 3
        [4, 3, 2, 1],  # rank 4: miss
    ], dtype=float)
    assert classification_metrics(y, scores)["top3"] == 0.75


def test_f1_ignores_classes_absent_from_labels_and_predictions():
    scores = np.zeros((2, 5))
    scores[0, 0] = scores[1, 1] = 1
    assert classification_metrics([0, 1], scores)["f1_macro"] == 1.0


def test_auc_separable_reversed_and_absent_class():
    y = np.array([0, 1, 2, 0, 1, 2])
    logits = 5 * np.eye(3)[y]
    assert classification_metrics(y, logits)["auc"] == 1.0
    assert classification_metrics(y, -logits)["auc"] == 0.0
    # A 4th class never in y_true: its AUC is undefined and must be skipped, not averaged in.
    with_absent = np.hstack([logits, np.random.default_rng(0).normal(size=(6, 1))])
    assert classification_metrics(y, with_absent)["auc"] == 1.0
    # A single class present: no class has both positives and negatives.
    assert math.isnan(classification_metrics([0, 0, 0], np.eye(3))["auc"])


def test_probability_detection():
    assert is_probability_matrix(P)
    assert not is_probability_matrix(5 * np.eye(3))
    np.testing.assert_allclose(as_probabilities(P), P)
    np.testing.assert_allclose(as_probabilities(np.zeros((2, 4))), np.full((2, 4), 0.25))


def test_torch_inputs_match_numpy():
    torch = pytest.importorskip("torch")
    a = classification_metrics(torch.tensor(Y), torch.tensor(P, dtype=torch.float32), GROUPS, k=2)
    b = classification_metrics(Y, P, GROUPS, k=2)
    assert a == pytest.approx(b)


def test_per_class_accuracy_and_confusion():
    pred = P.argmax(axis=1)
    acc = per_class_accuracy(Y, pred, n_classes=4)
    np.testing.assert_array_equal(acc[:3], [1.0, 0.0, 1.0])
    assert math.isnan(acc[3])
    cm = confusion(Y, pred, n_classes=4)
    assert cm.shape == (4, 4)
    np.testing.assert_array_equal(cm[1], [1, 0, 1, 0])
    np.testing.assert_allclose(confusion(Y, pred, 4, normalize="true")[1], [0.5, 0, 0.5, 0])


def _noisy_predictions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """About 70 % accurate logits over 4 classes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), y] += 1.5
    return y, logits


def test_bootstrap_contains_estimate_and_narrows():
    y_small, s_small = _noisy_predictions(60, seed=1)
    y_big, s_big = _noisy_predictions(1200, seed=1)
    for metric in ("acc", "f1_macro"):
        point = classification_metrics(y_small, s_small)[metric]
        lo, hi = bootstrap_ci(y_small, s_small, metric=metric, n_resamples=200)
        assert lo <= point <= hi
        lo_big, hi_big = bootstrap_ci(y_big, s_big, metric=metric, n_resamples=200)
        assert hi_big - lo_big < hi - lo
    lo, hi = bootstrap_ci(Y, P, metric="group_acc", class_to_group=GROUPS, n_resamples=100)
    assert 0 <= lo <= 0.75 <= hi <= 1
    lo, hi = bootstrap_ci(y_small, s_small, metric="auc", n_resamples=30)
    assert 0.5 < lo <= hi <= 1


def test_bootstrap_is_reproducible_and_rejects_unknown_metric():
    assert bootstrap_ci(Y, P, seed=3, n_resamples=50) == bootstrap_ci(Y, P, seed=3, n_resamples=50)
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(Y, P, metric="nope")
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(Y, P, metric="group_acc")  # needs class_to_group
