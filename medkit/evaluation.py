"""Evaluation glue: logits → metrics rows, zero-shot prompt sets, results tables."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from medkit.data import Dataset, LabelSpace
from medkit.metrics import bootstrap_ci, classification_metrics
from medkit.prompts import TEMPLATE_ENSEMBLE, ensemble_from_templates, study_template_for

TABLE_COLUMNS = ("acc", "top3", "f1_macro", "auc", "kappa", "group_acc")


def evaluate_logits(logits: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, labels: LabelSpace,
                    ci_resamples: int = 0, seed: int = 0) -> dict:
    """Study metrics (+ 95% bootstrap CI of accuracy when `ci_resamples` > 0)."""
    c2g = labels.class_to_group_index() if labels.has_groups else None
    y = np.asarray(y)
    scores = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    out = classification_metrics(y, scores, class_to_group=c2g)
    if ci_resamples:
        out["acc_ci"] = bootstrap_ci(y, scores, "acc", n_resamples=ci_resamples, seed=seed)
    return out


def zero_shot_prompt_sets(dataset: Dataset, n_outliers: int = 0) -> dict[str, dict[str, list[str]]]:
    """The prompt kinds of the zero-shot notebook, keyed by their `variant` name.

    - `name_study_template`: the implant study's best hand-crafted template with the class name;
    - `name_template_ensemble`: several name templates averaged;
    - `descriptions`: the class's description ensemble (if the dataset has one), with its
      last `n_outliers` sentences dropped when asked (the synthetic world appends outliers).
    """
    names = dataset.labels.classnames
    sets = {
        "name_study_template": ensemble_from_templates([study_template_for(dataset.labels.has_groups)], names),
        "name_template_ensemble": ensemble_from_templates(TEMPLATE_ENSEMBLE, names),
    }
    if dataset.descriptions:
        sets["descriptions"] = {c: s[: len(s) - n_outliers] for c, s in dataset.descriptions.items()}
    return sets


def study_table(rows: Sequence[Mapping], index: Sequence[str], columns: Sequence[str] = TABLE_COLUMNS) -> pd.DataFrame:
    """The study's table format: one row per setting, metrics rounded to 3 decimals."""
    df = pd.DataFrame(list(rows))
    cols = [c for c in columns if c in df.columns and df[c].notna().any()]
    return df.set_index(list(index))[cols].astype(float).round(3)
