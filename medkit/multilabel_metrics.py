"""Multi-label metrics for [N, C] score matrices with unknown labels, and per-finding bootstrap CIs.

Conventions: `scores` [N, C] are log-odds (probabilities work too: every ranking metric is
invariant to the monotone sigmoid; thresholds are in the units of the scores given);
`targets` [N, C] are 1 present, 0 absent, -1 unknown, and an unknown entry is left out of
every computation for its class (and of the pooled micro AUC). Torch tensors or numpy arrays.

AUROC, AP, F1 and MCC come from scikit-learn. The bootstrap uses the Mann-Whitney rank form of
the AUROC (`scipy.stats.rankdata`, vectorised over resamples) because calling sklearn 25,000
times is too slow; the tests check it equals `roc_auc_score`.

Differences from PsPG's released evaluation (`utils/metrics.py`, `utils/indepent_metrics/`):
its "mAP" is the trapezoid `auc(recall, precision)` over `precision_recall_curve` (here
`map_pr_trapezoid`; `map` is sklearn's average precision); its F1 threshold is chosen per
class on the test set (here `choose_thresholds` on validation); its confusion counts swap FP
and FN (`per_class_confusion` counts them correctly); its bootstrap reports the mean of the
resamples as the point estimate (here the full-sample value, with a percentile CI).
"""
from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import (
    auc,
    average_precision_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from medkit.metrics import to_numpy

Criterion = Literal["f1", "mcc"]


# --------------------------------------------------------------------------- inputs


def _inputs(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    s = to_numpy(scores).astype(np.float64)
    t = to_numpy(targets).astype(np.int64)
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"scores and targets must both be [N, C]; got {s.shape} and {t.shape}")
    if t.size and not np.isin(t, (-1, 0, 1)).all():
        raise ValueError("targets must be 1 (present), 0 (absent) or -1 (unknown)")
    return s, t


def _columns(columns: Sequence[int] | np.ndarray | None, n_classes: int) -> np.ndarray:
    """Column indices from None (all), indices or a boolean mask."""
    if columns is None:
        return np.arange(n_classes)
    cols = np.asarray(columns)
    return np.flatnonzero(cols) if cols.dtype == bool else cols.astype(np.int64)


def _known_column(s: np.ndarray, t: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of class j on its known rows."""
    keep = t[:, j] >= 0
    return s[keep, j], t[keep, j]


def _both_labels(y: np.ndarray) -> bool:
    return bool(y.any() and not y.all())


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


# --------------------------------------------------------------------------- summary metrics


def multilabel_metrics(
    scores: Any,
    targets: Any,
    columns: Sequence[int] | np.ndarray | None = None,
    thresholds: Sequence[float] | np.ndarray | None = None,
) -> dict[str, float | int]:
    """Macro / micro AUROC, mAP (two ways) and, with thresholds, macro F1 and MCC over `columns`.

    Per class, only its known rows count. Keys:

    * `macro_auc`: mean `roc_auc_score` over classes with both positives and negatives;
      `n_auc_classes` says how many (the rest of `n_classes` were skipped);
    * `micro_auc`: `roc_auc_score` of all known entries of the columns pooled;
    * `map`: mean `average_precision_score` over classes with a positive (`n_ap_classes`);
    * `map_pr_trapezoid`: the PsPG reference's "mAP", `auc(recall, precision)` from
      `precision_recall_curve`, averaged over the same classes;
    * with `thresholds` (in score units; one per class of the full matrix or one per selected
      column; prediction = score >= threshold): `f1_macro`, the mean `f1_score` over classes
      with a positive, and `mcc_macro`, the mean `matthews_corrcoef` over classes with both
      labels (MCC is 0/0 otherwise);
    * `n_classes`: the number of selected columns.

    Anything with no class to average over is NaN, not an error: an evaluation subset may lack
    positives altogether.
    """
    s, t = _inputs(scores, targets)
    cols = _columns(columns, s.shape[1])
    thr = _thresholds_for(thresholds, cols, s.shape[1])
    aucs, aps, trapezoids, f1s, mccs = [], [], [], [], []
    for k, j in enumerate(cols):
        sj, yj = _known_column(s, t, j)
        if not yj.any():
            continue
        aps.append(float(average_precision_score(yj, sj)))
        trapezoids.append(_pr_trapezoid(yj, sj))
        if thr is not None:
            f1s.append(float(f1_score(yj, sj >= thr[k], zero_division=0)))
        if _both_labels(yj):
            aucs.append(float(roc_auc_score(yj, sj)))
            if thr is not None:
                mccs.append(float(matthews_corrcoef(yj, sj >= thr[k])))
    out: dict[str, float | int] = {
        "macro_auc": _mean(aucs),
        "micro_auc": _micro_auc(s[:, cols], t[:, cols]),
        "map": _mean(aps),
        "map_pr_trapezoid": _mean(trapezoids),
        "n_auc_classes": len(aucs),
        "n_ap_classes": len(aps),
        "n_classes": int(len(cols)),
    }
    if thr is not None:
        out["f1_macro"] = _mean(f1s)
        out["mcc_macro"] = _mean(mccs)
    return out


def _thresholds_for(thresholds: Any, cols: np.ndarray, n_classes: int) -> np.ndarray | None:
    if thresholds is None:
        return None
    thr = np.asarray(to_numpy(thresholds), dtype=np.float64).ravel()
    if thr.size == n_classes:
        return thr[cols]
    if thr.size == cols.size:
        return thr
    raise ValueError(f"thresholds: need {n_classes} (all classes) or {cols.size} (selected columns), got {thr.size}")


def _pr_trapezoid(y: np.ndarray, s: np.ndarray) -> float:
    """The reference's PR-curve area: trapezoids between PR points (not step-wise AP)."""
    precision, recall, _ = precision_recall_curve(y, s)
    return float(auc(recall, precision))


def _micro_auc(s: np.ndarray, t: np.ndarray) -> float:
    known = t >= 0
    y = t[known]
    return float(roc_auc_score(y, s[known])) if _both_labels(y) else math.nan


# --------------------------------------------------------------------------- thresholds


def choose_thresholds(
    val_scores: Any,
    val_targets: Any,
    criterion: Criterion = "f1",
    default: float = 0.0,
) -> np.ndarray:
    """Per-class threshold maximising F1 (or MCC) on the VALIDATION set; [C] in score units.

    Chosen on validation only (then applied to test with `multilabel_metrics(...,
    thresholds=...)`); the PsPG code tunes it on the test set itself, which inflates F1.
    Candidates are the distinct validation scores, prediction = score >= threshold (sklearn's
    curve convention); ties go to the lowest threshold. A class where the criterion is
    undefined (no known positive; for MCC also no negative) gets `default`: 0.0 on log-odds
    is probability 0.5, the reference's fallback.
    """
    s, t = _inputs(val_scores, val_targets)
    out = np.full(s.shape[1], float(default))
    for j in range(s.shape[1]):
        sj, yj = _known_column(s, t, j)
        if criterion == "f1" and yj.any():
            out[j] = _best_f1_threshold(yj, sj)
        elif criterion == "mcc" and _both_labels(yj):
            out[j] = _best_mcc_threshold(yj, sj)
        elif criterion not in ("f1", "mcc"):
            raise ValueError(f"criterion must be 'f1' or 'mcc', got {criterion!r}")
    return out


def _best_f1_threshold(y: np.ndarray, s: np.ndarray) -> float:
    precision, recall, thr = precision_recall_curve(y, s)
    # The last PR point (precision 1, recall 0) has no threshold; sklearn's thresholds ascend.
    p, r = precision[:-1], recall[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return float(thr[int(np.argmax(f1))])


def _best_mcc_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """MCC at every distinct score from sklearn's ROC counts (one call, not one per candidate)."""
    fps, tps, thr = _roc_counts(y, s)
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    fns, tns = n_pos - tps, n_neg - fps
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.sqrt((tps + fps) * (tps + fns) * (tns + fps) * (tns + fns))
        mcc = np.where(denom > 0, (tps * tns - fps * fns) / denom, 0.0)
    # thresholds descend in roc_curve; pick the lowest of the tied maxima like the F1 branch.
    best = np.flatnonzero(mcc == mcc.max())[-1]
    return float(thr[best])


def _roc_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False/true positive counts at each distinct score (prediction = score >= threshold)."""
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    # roc_curve prepends an +inf threshold (nothing predicted positive); drop it.
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    return fpr[1:] * n_neg, tpr[1:] * n_pos, thr[1:]


# --------------------------------------------------------------------------- per-finding bootstrap


def per_finding_auroc(
    scores: Any,
    targets: Any,
    names: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """AUROC per finding with a percentile bootstrap CI (CheXzero-style, 1000 resamples).

    Columns: finding, auc (sklearn, on all known rows), ci_low, ci_high (the alpha/2 and
    1 - alpha/2 percentiles of the resampled AUCs), n_pos, n_neg, n_skipped (resamples of
    that finding lacking a positive or a negative among its known rows, left out of the CI).
    Images (rows) are resampled with replacement, the same resamples for every finding, so
    the CIs come from one bootstrap of the test set; a finding without both labels gets NaN.
    """
    s, t = _inputs(scores, targets)
    if len(names) != s.shape[1]:
        raise ValueError(f"{len(names)} names for {s.shape[1]} classes")
    if not np.isfinite(s[t >= 0]).all():
        raise ValueError("scores of known entries must be finite")
    idx = np.random.default_rng(seed).integers(0, s.shape[0], size=(n_resamples, s.shape[0]))
    rows = [_finding_row(name, s[:, j], t[:, j], idx, alpha) for j, name in enumerate(names)]
    return pd.DataFrame(rows, columns=["finding", "auc", "ci_low", "ci_high", "n_pos", "n_neg", "n_skipped"])


def _finding_row(name: str, s: np.ndarray, t: np.ndarray, idx: np.ndarray, alpha: float) -> dict[str, Any]:
    known = t >= 0
    y = t[known]
    row: dict[str, Any] = {"finding": name, "auc": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                           "n_pos": int(y.sum()), "n_neg": int(len(y) - y.sum()), "n_skipped": 0}
    if not _both_labels(y):
        row["n_skipped"] = len(idx)
        return row
    row["auc"] = float(roc_auc_score(y, s[known]))
    boot = rank_auc(s[idx], t[idx] == 1, known[idx])
    valid = boot[~np.isnan(boot)]
    row["n_skipped"] = int(len(boot) - len(valid))
    if valid.size:
        row["ci_low"], row["ci_high"] = (float(v) for v in np.percentile(valid, [50 * alpha, 100 - 50 * alpha]))
    return row


def rank_auc(scores: np.ndarray, positive: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Row-wise AUROC of [R, N] scores by the Mann-Whitney U statistic; NaN for rows lacking a class.

    AUC = (sum of the positives' ranks - n_pos(n_pos + 1)/2) / (n_pos · n_neg), ranks among the
    known entries with ties averaged (= sklearn's roc_auc_score, ties counting one half).
    Unknown entries are moved to -inf: they take the u lowest ranks, every known entry's rank
    rises by exactly u, and subtracting n_pos · u restores the ranks among the known.
    """
    positive = positive & known
    n_unknown = (~known).sum(axis=1)
    n_pos = positive.sum(axis=1)
    n_neg = known.sum(axis=1) - n_pos
    ranks = rankdata(np.where(known, scores, -np.inf), axis=1)
    rank_sum = np.where(positive, ranks, 0.0).sum(axis=1) - n_pos * n_unknown
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), out, np.nan)


# --------------------------------------------------------------------------- co-occurrence, counts


def binarize(scores: Any, thresholds: Sequence[float] | np.ndarray, targets: Any = None) -> np.ndarray:
    """0/1 predictions (score >= threshold per class), -1 where `targets` is unknown if given.

    Feeding `cooccurrence` the predictions masked like the targets compares the predicted and
    the true co-occurrence on the same entries.
    """
    s = to_numpy(scores).astype(np.float64)
    pred = (s >= np.asarray(thresholds, dtype=np.float64)[None, :]).astype(np.int64)
    if targets is not None:
        pred = np.where(to_numpy(targets) < 0, -1, pred)
    return pred


def cooccurrence(targets: Any) -> np.ndarray:
    """[C, C] matrix M[i, j] = P(j present | i present), over rows where both i and j are known.

    M[i, i] = 1 for a class with a positive; NaN where no row has i present and j known.
    """
    t = to_numpy(targets).astype(np.int64)
    present = (t == 1).astype(np.float64)
    known = (t >= 0).astype(np.float64)
    both = present.T @ present  # rows with i and j present
    given = present.T @ known  # rows with i present and j known
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(given > 0, both / given, np.nan)


def per_class_confusion(
    scores: Any, targets: Any, thresholds: Sequence[float] | np.ndarray, names: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per class on its known rows: tp, fp, tn, fn (sklearn's confusion_matrix), precision, recall.

    FP = predicted present but absent, FN = present but missed (the reference swaps the two).
    precision / recall are NaN when their denominator is 0.
    """
    s, t = _inputs(scores, targets)
    thr = _thresholds_for(thresholds, np.arange(s.shape[1]), s.shape[1])
    rows = []
    for j in range(s.shape[1]):
        sj, yj = _known_column(s, t, j)
        tn, fp, fn, tp = (int(v) for v in confusion_matrix(yj, sj >= thr[j], labels=[0, 1]).ravel())
        rows.append({"finding": names[j] if names is not None else j, "tp": tp, "fp": fp, "tn": tn, "fn": fn,
                     "precision": tp / (tp + fp) if tp + fp else math.nan,
                     "recall": tp / (tp + fn) if tp + fn else math.nan})
    return pd.DataFrame(rows)
