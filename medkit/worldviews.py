"""Views of datasets for notebooks: sample grids, description tables, zero-shot sweeps.

Thin wrappers that put medkit's pieces together so the notebooks stay a few lines each.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
from matplotlib.figure import Figure

from medkit.backbones import BackboneAdapter
from medkit.data import Dataset, ImageDataset
from medkit.evaluation import evaluate_logits
from medkit.features import FeatureCache
from medkit.methods import ZeroShotClassifier
from medkit.plots import plot_sample_grid


def sample_grid(dataset: Dataset, split: str = "train", per_class: int = 1, max_classes: int = 45,
                ncols: int = 9, title: str = "") -> Figure:
    """One (or `per_class`) image per class, classes in label order (so grouped by group)."""
    ds = ImageDataset(dataset[split])
    first: dict[int, list[int]] = {}
    for i, s in enumerate(dataset[split].samples):
        if s.label < max_classes and len(first.setdefault(s.label, [])) < per_class:
            first[s.label].append(i)
    idx = [i for label in sorted(first) for i in first[label]]
    names = dataset.labels.classnames
    group_of = dataset.labels.group_of or {}
    titles = [f"{names[dataset[split].samples[i].label]}" + (f"\n{group_of[names[dataset[split].samples[i].label]]}" if group_of else "")
              for i in idx]
    return plot_sample_grid([ds.image(i) for i in idx], titles, ncols=ncols, title=title or f"{dataset.name} ({dataset.domain or 'real'})")


def descriptions_table(dataset: Dataset, classes: Sequence[str] | None = None, n: int = 3, n_outliers: int = 3) -> pd.DataFrame:
    """A few true sentences and the deliberate outliers of some classes."""
    if not dataset.descriptions:
        return pd.DataFrame()
    classes = list(classes or dataset.labels.classnames[:3])
    rows = []
    for c in classes:
        sentences = dataset.descriptions[c]
        rows += [{"class": c, "kind": "description", "sentence": s} for s in sentences[:n]]
        rows += [{"class": c, "kind": "outlier", "sentence": s} for s in sentences[len(sentences) - n_outliers:]]
    return pd.DataFrame(rows)


def zero_shot_rows(adapter: BackboneAdapter, dataset: Dataset, prompt_sets: dict[str, dict[str, list[str]]],
                   splits: Sequence[str], progress: bool = True, ci_resamples: int = 0,
                   cache: FeatureCache | None = None) -> tuple[list[dict], dict]:
    """Zero-shot metrics for every prompt kind × split; also returns logits for plots.

    Class prompts are encoded once per prompt kind; image features come from the feature
    cache (the same entries the prompt methods read).
    """
    cache = cache or FeatureCache.default()
    rows, logits = [], {}
    domain = dataset.domain or "real"
    classifiers = {variant: ZeroShotClassifier.from_ensembles(adapter, ensembles, dataset.labels.classnames)
                   for variant, ensembles in prompt_sets.items()}  # prompts encoded once, not per split
    for split in splits:
        entry = cache.get(adapter, dataset[split])
        feats, y = entry.features, entry.labels
        for variant, clf in classifiers.items():
            out = clf.logits_from_features(feats)
            m = evaluate_logits(out, y, dataset.labels, ci_resamples=ci_resamples)
            rows.append({"dataset": dataset.name, "split": f"{domain}_{split}", "method": "zeroshot",
                         "variant": variant, "backbone": adapter.name, **m})
            logits[(split, variant)] = (out, y, feats)
    return rows, logits
