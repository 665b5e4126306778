"""Multi-label metrics on hand-made cases: skipping, masking, thresholds, bootstrap."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, matthews_corrcoef, roc_auc_score

from medkit.multilabel_metrics import (
    binarize,
    choose_thresholds,
    cooccurrence,
    multilabel_metrics,
    per_class_confusion,
    per_finding_auroc,
    rank_auc,
)


def random_case(seed: int = 0, n: int = 60, c: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.35).astype(np.int64)
    scores = targets * 1.0 + rng.normal(size=(n, c))  # informative but imperfect
    return scores, targets


# --------------------------------------------------------------------------- summary metrics


def test_macro_auc_skips_all_negative_class() -> None:
    scores, targets = random_case()
    targets[:, 2] = 0
    m = multilabel_metrics(scores, targets)
    expected = np.mean([roc_auc_score(targets[:, j], scores[:, j]) for j in (0, 1, 3)])
    assert m["macro_auc"] == pytest.approx(expected)
    assert m["n_auc_classes"] == 3 and m["n_ap_classes"] == 3 and m["n_classes"] == 4


def test_all_positive_class_has_ap_but_no_auc() -> None:
    scores, targets = random_case(11)
    targets[:, 3] = 1
    m = multilabel_metrics(scores, targets, thresholds=np.zeros(4))
    assert m["n_auc_classes"] == 3 and m["n_ap_classes"] == 4
    assert m["macro_auc"] == pytest.approx(np.mean([roc_auc_score(targets[:, j], scores[:, j]) for j in range(3)]))
    expected_map = np.mean([average_precision_score(targets[:, j], scores[:, j]) for j in range(3)] + [1.0])
    assert m["map"] == pytest.approx(expected_map)


def test_micro_and_macro_differ() -> None:
    # Each class is perfectly ranked on its own (macro 1), but class 1's positives score
    # below class 0's negatives, so pooling the entries (micro) mis-ranks them.
    scores = np.array([[5.0, -3.0], [4.0, -4.0], [3.0, -5.0], [2.0, -6.0]])
    targets = np.array([[1, 1], [1, 1], [0, 0], [0, 0]])
    m = multilabel_metrics(scores, targets)
    assert m["macro_auc"] == 1.0
    # Pooled: positives 5, 4, -3, -4; negatives 3, 2, -5, -6 → 12 of 16 pairs right.
    assert m["micro_auc"] == pytest.approx(12 / 16)


def test_map_on_one_class_is_sklearn_average_precision() -> None:
    scores, targets = random_case(1)
    m = multilabel_metrics(scores, targets, columns=[2])
    assert m["map"] == pytest.approx(average_precision_score(targets[:, 2], scores[:, 2]))
    assert m["n_classes"] == 1


def test_map_differs_from_reference_trapezoid() -> None:
    scores = np.array([[0.9], [0.8], [0.7], [0.1]])
    targets = np.array([[1], [0], [1], [0]])
    m = multilabel_metrics(scores, targets)
    # AP = mean precision at each positive = (1 + 2/3) / 2.
    assert m["map"] == pytest.approx(5 / 6)
    # PR points (recall, precision): (0, 1), (.5, 1), (.5, .5), (1, 2/3), (1, .5); trapezoids
    # 0.5 · (1 + 1)/2 + 0.5 · (1/2 + 2/3)/2 = 1/2 + 7/24.
    assert m["map_pr_trapezoid"] == pytest.approx(19 / 24)


def test_nan_not_error_without_positives() -> None:
    scores, _ = random_case(2)
    m = multilabel_metrics(scores, np.zeros_like(scores, dtype=np.int64), thresholds=np.zeros(4))
    for key in ("macro_auc", "micro_auc", "map", "map_pr_trapezoid", "f1_macro", "mcc_macro"):
        assert math.isnan(m[key]), key
    assert m["n_auc_classes"] == 0


def test_unknowns_are_masked_in_metrics() -> None:
    scores, targets = random_case(3)
    masked = targets.copy()
    masked[:10, 0] = -1
    masked[5:15, 1] = -1
    thresholds = np.zeros(4)
    m = multilabel_metrics(scores, masked, thresholds=thresholds)
    # Extreme scores on the unknown entries change nothing.
    moved = scores.copy()
    moved[masked < 0] = 1e6
    assert multilabel_metrics(moved, masked, thresholds=thresholds) == pytest.approx(m)
    keep = masked[:, 0] >= 0
    assert multilabel_metrics(scores[keep][:, [0]], targets[keep][:, [0]])["map"] == pytest.approx(
        multilabel_metrics(scores, masked, columns=[0])["map"])
    known = masked >= 0
    assert m["micro_auc"] == pytest.approx(roc_auc_score(masked[known], scores[known]))


def test_columns_and_thresholds_alignment() -> None:
    scores, targets = random_case(4)
    thresholds = np.array([0.1, 0.2, 0.3, 0.4])
    full = multilabel_metrics(scores, targets, columns=[1, 3], thresholds=thresholds)
    short = multilabel_metrics(scores, targets, columns=[1, 3], thresholds=thresholds[[1, 3]])
    sub = multilabel_metrics(scores[:, [1, 3]], targets[:, [1, 3]], thresholds=thresholds[[1, 3]])
    assert full == pytest.approx(short) and full == pytest.approx(sub)
    mask = multilabel_metrics(scores, targets, columns=np.array([False, True, False, True]), thresholds=thresholds)
    assert mask == pytest.approx(full)
    with pytest.raises(ValueError):
        multilabel_metrics(scores, targets, columns=[1, 3], thresholds=[0.0, 0.0, 0.0])


def test_torch_inputs() -> None:
    scores, targets = random_case(5)
    assert multilabel_metrics(torch.tensor(scores), torch.tensor(targets)) == pytest.approx(
        multilabel_metrics(scores, targets))


# --------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("criterion", ["f1", "mcc"])
def test_thresholds_maximise_criterion_on_validation(criterion: str) -> None:
    scores, targets = random_case(6, n=80)
    targets[:7, 1] = -1
    metric = f1_score if criterion == "f1" else matthews_corrcoef
    chosen = choose_thresholds(scores, targets, criterion=criterion)
    per_class = []
    for j in range(scores.shape[1]):
        keep = targets[:, j] >= 0
        y, s = targets[keep, j], scores[keep, j]
        best = max(metric(y, s >= t) for t in np.unique(s))  # brute force over every candidate
        assert metric(y, s >= chosen[j]) == pytest.approx(best)
        per_class.append(best)
    if criterion == "f1":
        m = multilabel_metrics(scores, targets, thresholds=chosen)
        assert m["f1_macro"] == pytest.approx(np.mean(per_class))


def test_thresholds_default_without_positives() -> None:
    scores, targets = random_case(7)
    targets[:, 0] = 0
    assert choose_thresholds(scores, targets)[0] == 0.0
    assert choose_thresholds(scores, targets, criterion="mcc", default=-1.0)[0] == -1.0


# --------------------------------------------------------------------------- bootstrap


def test_rank_auc_equals_sklearn_with_ties_and_unknowns() -> None:
    rng = np.random.default_rng(8)
    scores = rng.integers(0, 5, size=(30, 40)).astype(float)  # many ties
    positive = rng.random((30, 40)) < 0.4
    known = rng.random((30, 40)) < 0.8
    got = rank_auc(scores, positive, known)
    for r in range(30):
        y = positive[r, known[r]]
        assert got[r] == pytest.approx(roc_auc_score(y, scores[r, known[r]]))
    known[0] = False
    assert math.isnan(rank_auc(scores, positive, known)[0])


def test_per_finding_auroc_ci_and_determinism() -> None:
    scores, targets = random_case(9, n=120, c=3)
    targets[:20, 1] = -1
    targets[:, 2] = 0
    df = per_finding_auroc(scores, targets, ["a", "b", "c"], n_resamples=300, seed=3)
    assert list(df.columns) == ["finding", "auc", "ci_low", "ci_high", "n_pos", "n_neg", "n_skipped"]
    for j in (0, 1):
        row = df.iloc[j]
        keep = targets[:, j] >= 0
        assert row.auc == pytest.approx(roc_auc_score(targets[keep, j], scores[keep, j]))
        assert row.ci_low < row.auc < row.ci_high
        assert row.n_pos + row.n_neg == keep.sum()
    assert df.iloc[2][["auc", "ci_low", "ci_high"]].isna().all()
    again = per_finding_auroc(scores, targets, ["a", "b", "c"], n_resamples=300, seed=3)
    assert df.equals(again)
    other = per_finding_auroc(scores, targets, ["a", "b", "c"], n_resamples=300, seed=4)
    assert not np.allclose(df.ci_low[:2], other.ci_low[:2])


def test_bootstrap_skips_resamples_without_positive() -> None:
    scores, targets = random_case(10, n=20, c=1)
    targets[:, 0] = 0
    targets[0, 0] = 1  # a single positive: many resamples miss it
    df = per_finding_auroc(scores, targets, ["x"], n_resamples=200, seed=0)
    idx = np.random.default_rng(0).integers(0, 20, size=(200, 20))  # the same resamples
    assert df.n_skipped[0] == int((~(idx == 0).any(axis=1)).sum())
    assert 0 < df.n_skipped[0] < 200


# --------------------------------------------------------------------------- co-occurrence, confusion


def test_cooccurrence_by_hand() -> None:
    targets = np.array([[1, 1, 0], [1, 0, -1], [1, -1, 1], [0, 1, 1]])
    m = cooccurrence(targets)
    # Given class 0 present (rows 0-2): class 1 known in rows 0, 1 → 1/2; class 2 in rows 0, 2 → 1/2.
    assert m[0, 1] == pytest.approx(1 / 2) and m[0, 2] == pytest.approx(1 / 2)
    # Given class 1 present (rows 0, 3): class 0 → 1/2; class 2 → 1/2.
    assert m[1, 0] == pytest.approx(1 / 2) and m[1, 2] == pytest.approx(1 / 2)
    assert np.allclose(np.diag(m), 1.0)
    assert math.isnan(cooccurrence(np.array([[0, 1], [0, 0]]))[0, 1])


def test_binarize_and_predicted_cooccurrence() -> None:
    scores = np.array([[1.0, -1.0], [2.0, 3.0]])
    targets = np.array([[1, -1], [0, 1]])
    assert binarize(scores, [0.0, 0.0]).tolist() == [[1, 0], [1, 1]]
    assert binarize(scores, [0.0, 0.0], targets).tolist() == [[1, -1], [1, 1]]


def test_per_class_confusion_counts() -> None:
    scores = np.array([[0.9], [0.8], [0.2], [0.1], [0.7]])
    targets = np.array([[1], [0], [1], [0], [-1]])
    row = per_class_confusion(scores, targets, [0.5], names=["x"]).iloc[0]
    # Predicted: 1, 1, 0, 0 on the known rows → TP 1, FP 1 (row 1), FN 1 (row 2), TN 1.
    assert (row.tp, row.fp, row.tn, row.fn) == (1, 1, 1, 1)
    assert row.precision == 0.5 and row.recall == 0.5
