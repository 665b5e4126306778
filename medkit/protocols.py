"""Few-shot protocols of the prompt-learning literature (CoOp, CoCoOp, BiomedCoOp, CILMP).

- **K-shot**: K training images per class drawn with a seeded generator (K ∈ {1, 2, 4, 8,
  16}, seeds 1, 2, 3), validation min(K, 4) per class, the test split untouched. The drawn
  indices are returned so a run can save them. A class with fewer than K images is an
  error naming the class, not a silently smaller training set, unless repeats are allowed.
- **Base-to-novel**: labels sorted, the first ceil(n/2) are base, the rest novel; each half
  is relabelled 0..m-1 (as the references do). Methods train on base and are evaluated on
  base and novel test images; the harmonic mean summarises both.
- **Hierarchy**: the same images labelled by their group (stage 1 of group → class prompts).
- **Evaluation caps**: the first n images of every class, or n images spread evenly over a
  split (for methods whose evaluation costs a text pass per image on a CPU).
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from medkit.atomic import atomic_write_text
from medkit.data import DataError, LabelSpace, Split

SHOTS = (1, 2, 4, 8, 16)
SEEDS = (1, 2, 3)
MAX_VAL_SHOTS = 4


def k_shot_indices(split: Split, k: int, seed: int, allow_repeats: bool = False) -> list[int]:
    """Indices of `k` samples per class of `split` (in label order, then draw order)."""
    if k < 1:
        raise ValueError(f"K must be ≥ 1, got {k}")
    by_class: dict[int, list[int]] = {label: [] for label in range(split.labels.n_classes)}
    for i, s in enumerate(split.samples):
        by_class[s.label].append(i)
    short = {split.labels.classnames[c]: len(ix) for c, ix in by_class.items() if len(ix) < k}
    if short and not allow_repeats:
        shown = ", ".join(f"{name!r} ({n})" for name, n in list(short.items())[:5])
        raise DataError(f"{split.name}: {len(short)} class(es) have fewer than K={k} images: {shown}"
                        f"{' …' if len(short) > 5 else ''}; pass allow_repeats=True to draw with repetition")
    empty = [name for name, n in short.items() if n == 0]
    if empty:
        raise DataError(f"{split.name}: no images at all for classes {empty[:5]}")
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for c in range(split.labels.n_classes):
        pool = by_class[c]
        out += [pool[j] for j in rng.choice(len(pool), size=k, replace=len(pool) < k)]
    return out


def take(split: Split, indices: Sequence[int], name: str | None = None) -> Split:
    return Split(name or split.name, [split.samples[i] for i in indices], split.labels, dict(split.meta))


def few_shot(splits: dict[str, Split], k: int, seed: int, allow_repeats: bool = False
             ) -> tuple[dict[str, Split], dict[str, list[int]]]:
    """(splits with K-shot train and min(K, 4)-shot val, the drawn indices per split)."""
    idx = {"train": k_shot_indices(splits["train"], k, seed, allow_repeats),
           "val": k_shot_indices(splits["val"], min(k, MAX_VAL_SHOTS), seed, allow_repeats)}
    out = {name: take(s, idx[name]) if name in idx else s for name, s in splits.items()}
    return out, idx


def save_indices(path: str | Path, indices: dict[str, list[int]], meta: dict | None = None) -> Path:
    """The drawn indices (and what they were drawn for) as JSON next to a run."""
    return atomic_write_text(path, json.dumps({**(meta or {}), "indices": indices}))


def base_novel_classes(labels: LabelSpace) -> tuple[list[int], list[int]]:
    """Label indices of the base (first ceil(n/2) in sorted label order) and novel classes."""
    ordered = sorted(range(labels.n_classes))
    m = math.ceil(len(ordered) / 2)
    return ordered[:m], ordered[m:]


def restrict(split: Split, classes: Sequence[int], name: str | None = None) -> Split:
    """The samples of `classes`, relabelled 0..len(classes)-1 in that order."""
    new_index = {c: i for i, c in enumerate(classes)}
    names = [split.labels.classnames[c] for c in classes]
    group_of = {n: split.labels.group_of[n] for n in names} if split.labels.has_groups else None
    space = LabelSpace(names, group_of)
    samples = [replace(s, label=new_index[s.label]) for s in split.samples if s.label in new_index]
    return Split(name or split.name, samples, space, dict(split.meta))


def harmonic_mean(base_acc: float, novel_acc: float) -> float:
    """HM of base and novel accuracy (0 when either is 0)."""
    if base_acc <= 0 or novel_acc <= 0:
        return 0.0
    return 2 * base_acc * novel_acc / (base_acc + novel_acc)


def subsample_per_class(split: Split, per_class: int | None) -> Split:
    """The first `per_class` samples of every class (deterministic); None keeps all."""
    if per_class is None:
        return split
    seen: dict[int, int] = {}
    keep = []
    for s in split.samples:
        if seen.get(s.label, 0) < per_class:
            keep.append(s)
            seen[s.label] = seen.get(s.label, 0) + 1
    return Split(split.name, keep, split.labels, dict(split.meta))


def spread(n: int, limit: int | None) -> np.ndarray:
    """`limit` evenly spaced row indices of `n` (keeps every class in class-ordered splits)."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.linspace(0, n - 1, limit).round().astype(int)


def group_label_space(labels: LabelSpace) -> LabelSpace:
    return LabelSpace(labels.groups)


def relabel_to_groups(split: Split) -> Split:
    """The same images labelled by their group (stage 1 of hierarchical prompts)."""
    c2g = split.labels.class_to_group_index()
    space = group_label_space(split.labels)
    samples = [replace(s, label=c2g[s.label], classname=space.classnames[c2g[s.label]]) for s in split.samples]
    return Split(split.name, samples, space, dict(split.meta))
