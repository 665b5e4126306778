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
                ci_resamples: int = 0, seed: int = 0) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SingleLabel:
    """One class per image: accuracy, top-3, macro F1, macro one-vs-rest AUC, Cohen's κ and,
    where classes have groups, group accuracy (+ a 95% bootstrap CI of accuracy on request)."""

    name: str = "single_label"
    columns: tuple[str, ...] = ("acc", "top3", "f1_macro", "auc", "kappa", "group_acc")
    primary: str = "acc"

    def metrics(self, logits: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, labels: LabelSpace,
                ci_resamples: int = 0, seed: int = 0) -> dict[str, Any]:
        c2g = labels.class_to_group_index() if labels.has_groups else None
        y = np.asarray(targets)
        scores = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
        out = classification_metrics(y, scores, class_to_group=c2g)
        if ci_resamples:
            out["acc_ci"] = bootstrap_ci(y, scores, "acc", n_resamples=ci_resamples, seed=seed)
        return out


SINGLE_LABEL = SingleLabel()
TASKS: dict[str, Task] = {SINGLE_LABEL.name: SINGLE_LABEL}


def metric_columns() -> list[str]:
    """Every registered task's metric columns, in order, once (the results table's)."""
    return list(dict.fromkeys(c for t in TASKS.values() for c in t.columns))
