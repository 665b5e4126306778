"""Few-shot protocols of the prompt-learning literature (CoOp, CoCoOp, BiomedCoOp, CILMP).

- **K-shot**: K training images per class drawn with a seeded generator (K ∈ {1, 2, 4, 8,
  16}, seeds 1, 2, 3), validation min(K, 4) per class, the test split untouched. The drawn
  indices are returned so a run can save them. A class with fewer than K images is an
  error naming the class, not a silently smaller training set, unless repeats are allowed.
- **Base-to-novel**: labels sorted, the first ceil(n/2) are base, the rest novel; each half
  is relabelled 0..m-1 (as the references do). Methods train on base and are evaluated on
  base and novel test images; the harmonic mean summarises both.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**(meta or {}), "indices": indices}))
    return path


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


def base_to_novel(splits: dict[str, Split]) -> dict[str, dict[str, Split]]:
    """{"base": {train, val, test}, "novel": {test}} in their own label spaces."""
    base, novel = base_novel_classes(splits["train"].labels)
    return {"base": {k: restrict(s, base) for k, s in splits.items()},
            "novel": {"test": restrict(splits["test"], novel)}}


def harmonic_mean(base_acc: float, novel_acc: float) -> float:
    """HM of base and novel accuracy (0 when either is 0)."""
    if base_acc <= 0 or novel_acc <= 0:
        return 0.0
    return 2 * base_acc * novel_acc / (base_acc + novel_acc)
