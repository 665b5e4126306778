"""Classification metrics for (N, C) score matrices and bootstrap intervals.

Every metric is computed by scikit-learn; this module only adapts inputs (torch or numpy,
logits or probabilities, classes missing from a small test split) and returns plain floats
so results can go straight into JSON and CSV files.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from scipy.special import softmax
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
    top_k_accuracy_score,
)



# --------------------------------------------------------------------------- inputs


def to_numpy(x: Any) -> np.ndarray:
    """Array view of numpy data, lists or torch tensors (without importing torch)."""
    if hasattr(x, "detach"):  # torch.Tensor: leave the graph and the device first
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def is_probability_matrix(scores: np.ndarray, atol: float = 1e-4) -> bool:
    """True if every row lies in [0, 1] and sums to 1 (already softmaxed)."""
    if scores.size == 0:
        return False
    in_range = bool(np.all(scores >= -atol) and np.all(scores <= 1 + atol))
    return in_range and bool(np.allclose(scores.sum(axis=1), 1.0, atol=atol))


def as_probabilities(scores: np.ndarray) -> np.ndarray:
    """Softmax over classes unless the rows are already probabilities."""
    scores = scores.astype(np.float64)
    return scores if is_probability_matrix(scores) else softmax(scores, axis=1)


def _check_inputs(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = to_numpy(y_true).astype(np.int64).ravel()
    s = to_numpy(scores).astype(np.float64)
    if s.ndim != 2 or s.shape[0] != y.shape[0]:
        raise ValueError(f"scores must be (N, C) with N={y.shape[0]}, got {s.shape}")
    if y.size and (y.min() < 0 or y.max() >= s.shape[1]):
        raise ValueError(f"labels must lie in [0, {s.shape[1]}), got range [{y.min()}, {y.max()}]")
    return y, s


# --------------------------------------------------------------------------- single metrics


def top_k_accuracy(y_true: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Top-k accuracy; passing all labels keeps it defined when classes are missing from y_true."""
    n_classes = scores.shape[1]
    if k >= n_classes:
        return 1.0  # what sklearn returns, minus its "meaningless" warning
    if k == 1:
        # sklearn treats two labels as a binary problem and rejects 2-D scores there.
        return float(accuracy_score(y_true, scores.argmax(axis=1)))
    return float(top_k_accuracy_score(y_true, scores, k=k, labels=np.arange(n_classes)))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro F1 over the classes that occur in the labels or the predictions only.

    Classes absent from both would each add an F1 of 0 and punish small test splits.
    """
    labels = np.union1d(y_true, y_pred)
    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def macro_ovr_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """One-vs-rest macro AUC-ROC over the classes that have positives and negatives in y_true.

    sklearn's multi_class="ovr" mode needs every class present; the one-hot multilabel form
    lets us drop the classes whose AUC is undefined and still use sklearn's averaging.
    """
    probs = as_probabilities(scores)
    onehot = np.eye(scores.shape[1], dtype=np.int64)[y_true]
    positives = onehot.sum(axis=0)
    valid = np.flatnonzero((positives > 0) & (positives < len(y_true)))
    if valid.size == 0:
        return math.nan
    return float(roc_auc_score(onehot[:, valid], probs[:, valid], average="macro"))


def kappa(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Cohen's kappa; NaN when it is 0/0 (a single class in both labels and predictions)."""
    if np.union1d(y_true, y_pred).size < 2:
        return math.nan
    return float(cohen_kappa_score(y_true, y_pred))


def group_correct(y_true: np.ndarray, y_pred: np.ndarray, class_to_group: Sequence[int]) -> np.ndarray:
    """Per-sample flags: the predicted class belongs to the true class's group."""
    groups = np.asarray(class_to_group, dtype=np.int64)
    return groups[y_pred] == groups[y_true]


# --------------------------------------------------------------------------- public API


def classification_metrics(
    y_true: Any,
    scores: Any,
    class_to_group: Sequence[int] | None = None,
    k: int = 3,
) -> dict[str, float | None]:
    """acc, top-k (key "top3"), f1_macro, auc, kappa and group_acc for (N, C) logits or probabilities.

    `group_acc` is None without `class_to_group` (e.g. `LabelSpace.class_to_group_index()`).
    """
    y, s = _check_inputs(y_true, scores)
    pred = s.argmax(axis=1)
    return {
        "acc": float(accuracy_score(y, pred)),
        "top3": top_k_accuracy(y, s, k),
        "f1_macro": macro_f1(y, pred),
        "auc": macro_ovr_auc(y, s),
        "kappa": kappa(y, pred),
        "group_acc": None if class_to_group is None else float(group_correct(y, pred, class_to_group).mean()),
    }


def per_class_accuracy(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """Recall of each class (diagonal of the row-normalised confusion); NaN for absent classes."""
    cm = confusion(y_true, y_pred, n_classes).astype(np.float64)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def confusion(y_true: Any, y_pred: Any, n_classes: int, normalize: str | None = None) -> np.ndarray:
    """(n_classes, n_classes) confusion matrix, rows = true class; normalize as in sklearn."""
    return confusion_matrix(
        to_numpy(y_true).ravel(), to_numpy(y_pred).ravel(), labels=np.arange(n_classes), normalize=normalize
    )


def _metric_fn(metric: str, k: int, class_to_group: Sequence[int] | None) -> Callable[[np.ndarray, np.ndarray], float]:
    """The single metric `metric` as f(y_true, scores), so bootstrap skips the others."""
    fns: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
        "acc": lambda y, s: float(accuracy_score(y, s.argmax(axis=1))),
        "top3": lambda y, s: top_k_accuracy(y, s, k),
        "f1_macro": lambda y, s: macro_f1(y, s.argmax(axis=1)),
        "auc": macro_ovr_auc,
        "kappa": lambda y, s: kappa(y, s.argmax(axis=1)),
    }
    if class_to_group is not None:
        fns["group_acc"] = lambda y, s: float(group_correct(y, s.argmax(axis=1), class_to_group).mean())
    if metric not in fns:
        raise ValueError(f"unknown metric {metric!r}; choose from {sorted(fns)}")
    return fns[metric]


def bootstrap_ci(
    y_true: Any,
    scores: Any,
    metric: str = "acc",
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    class_to_group: Sequence[int] | None = None,
    k: int = 3,
) -> tuple[float, float]:
    """Percentile (1 - alpha) confidence interval of one metric, resampling test rows."""
    y, s = _check_inputs(y_true, scores)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_resamples, len(y)))
    pred = s.argmax(axis=1)
    if metric == "acc":  # mean of per-sample hits: one vectorised gather instead of a loop
        values = (pred == y)[idx].mean(axis=1)
    elif metric == "group_acc" and class_to_group is not None:
        values = group_correct(y, pred, class_to_group)[idx].mean(axis=1)
    else:
        fn = _metric_fn(metric, k, class_to_group)
        values = np.array([fn(y[i], s[i]) for i in idx])
    if np.all(np.isnan(values)):
        return math.nan, math.nan
    lo, hi = np.nanpercentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)
