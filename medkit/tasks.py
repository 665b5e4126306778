"""Tasks: what a run predicts and how it is scored. The runner takes a task; a new task
(multi-label, segmentation) brings its metrics and its result columns, not a new runner.

A task turns (logits, targets, label space) into a metrics dict whose keys are its
`columns` (plus extras such as a confidence interval that stay out of results.csv), and
names its `primary` metric (what curves, "best setting" and findings compare).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from medkit.data import LabelSpace
from medkit.metrics import bootstrap_ci, classification_metrics


class Task(Protocol):
    name: str
    columns: tuple[str, ...]
    primary: str

    def metrics(self, logits: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, labels: LabelSpace,
                ci_resamples: int = 0, seed: int = 0, calibration: tuple | None = None,
                columns: list[int] | None = None) -> dict[str, Any]: ...

    def subsets(self, labels: LabelSpace) -> list[tuple[str | None, list[int] | None]]:
        """The rows one evaluation gives: (classes field or None to keep the part's, columns)."""
        ...


@dataclass(frozen=True)
class SingleLabel:
    """One class per image: accuracy, top-3, macro F1, macro one-vs-rest AUC, Cohen's κ and,
    where classes have groups, group accuracy (+ a 95% bootstrap CI of accuracy on request)."""

    name: str = "single_label"
    columns: tuple[str, ...] = ("acc", "top3", "f1_macro", "auc", "kappa", "group_acc")
    primary: str = "acc"

    def subsets(self, labels: LabelSpace) -> list[tuple[str | None, list[int] | None]]:
        return [(None, None)]

    def metrics(self, logits: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, labels: LabelSpace,
                ci_resamples: int = 0, seed: int = 0, calibration: tuple | None = None,
                columns: list[int] | None = None) -> dict[str, Any]:
        c2g = labels.class_to_group_index() if labels.has_groups else None
        y = np.asarray(targets)
        scores = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
        out = classification_metrics(y, scores, class_to_group=c2g)
        if ci_resamples:
            out["acc_ci"] = bootstrap_ci(y, scores, "acc", n_resamples=ci_resamples, seed=seed)
        return out


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@dataclass(frozen=True)
class MultiLabel:
    """Any number of findings per image; scores are log-odds (sigmoid = probability) and
    targets 1 / 0 / -1 (unknown, masked). One evaluation gives a row per label subset: `all`,
    and for a label space matched to the training one (`MultiLabelSpace.seen`) `seen` and
    `unseen` (generalised zero-shot). A subset whose scores are not all finite (a probe on
    seen findings has no score for unseen ones) gives no row.

    Columns: macro AUROC over findings with positives and negatives, micro AUROC, mean
    average precision (sklearn's AP, named `map`), the reference's PR-curve trapezoid as its
    own column (`map_pr_trapezoid`: PsPG's "mAP" is `auc(recall, precision)`), and macro F1 /
    MCC at per-finding thresholds chosen on the part's validation data (`calibration`; the
    PsPG code tunes them on the test set). Blank when the part has no calibration data."""

    name: str = "multi_label"
    columns: tuple[str, ...] = ("macro_auc", "micro_auc", "map", "map_pr_trapezoid", "f1_macro", "mcc_macro",
                                "n_labels")
    primary: str = "macro_auc"

    def subsets(self, labels: LabelSpace) -> list[tuple[str | None, list[int] | None]]:
        if getattr(labels, "seen", None) is None:
            return [("all", None)]
        out = [(name, labels.subset_index(name)) for name in ("all", "seen", "unseen")]
        return [(name, cols) for name, cols in out if cols]

    def metrics(self, logits: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, labels: LabelSpace,
                ci_resamples: int = 0, seed: int = 0, calibration: tuple | None = None,
                columns: list[int] | None = None) -> dict[str, Any]:
        from medkit.multilabel_metrics import choose_thresholds, multilabel_metrics

        scores, y = _numpy(logits), _numpy(targets).astype(int)
        cols = list(range(scores.shape[1])) if columns is None else list(columns)
        if not np.isfinite(scores[:, cols]).all():
            return {}
        thresholds = None
        if calibration is not None:
            cal_scores, cal_y = _numpy(calibration[0]), _numpy(calibration[1]).astype(int)
            thresholds = np.full(scores.shape[1], np.nan)
            thresholds[cols] = choose_thresholds(cal_scores[:, cols], cal_y[:, cols])
        out = multilabel_metrics(scores, y, columns=cols, thresholds=None if thresholds is None else thresholds[cols])
        out["n_labels"] = len(cols)
        return out


@dataclass(frozen=True)
class Segmentation:
    """Binary masks: logits `[N, H, W]` against 0/1 masks. Per-sample Dice and IoU at 0.5 and
    HD95 (pixels) averaged over images (`medkit.seg.metrics`, MONAI), their spread over images
    (`*_std`, kept out of results.csv), and `iou_dataset`: intersection over union pooled over
    the split, which is what TuneVLSeg's torchmetrics `JaccardIndex(task="binary")` reports."""

    name: str = "segmentation"
    columns: tuple[str, ...] = ("dice", "iou", "iou_dataset", "hd95")
    primary: str = "dice"

    def subsets(self, labels: LabelSpace | None) -> list[tuple[str | None, list[int] | None]]:
        return [(None, None)]

    def metrics(self, logits: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray,
                labels: LabelSpace | None = None, ci_resamples: int = 0, seed: int = 0,
                calibration: tuple | None = None, columns: list[int] | None = None) -> dict[str, Any]:
        from medkit.seg.metrics import dataset_iou, seg_scores, summarise

        logits, masks = torch.as_tensor(logits), torch.as_tensor(targets)
        scores = seg_scores(logits, masks)
        return {**summarise(scores), "iou_dataset": dataset_iou(logits, masks), "per_sample": scores}


SINGLE_LABEL = SingleLabel()
MULTI_LABEL = MultiLabel()
SEGMENTATION = Segmentation()
TASKS: dict[str, Task] = {SINGLE_LABEL.name: SINGLE_LABEL, MULTI_LABEL.name: MULTI_LABEL,
                          SEGMENTATION.name: SEGMENTATION}


def metric_columns() -> list[str]:
    """Every registered task's metric columns, in order, once (the results table's)."""
    return list(dict.fromkeys(c for t in TASKS.values() for c in t.columns))
