"""Split names, the fallback for datasets that lack splits, and a dataset's identity.

- **Names**: `train`/`training`, `val`/`validation`/`valid`/`dev`, `test`/`testing` (any
  case) are recognised; any other name is an error listing the names found and expected.
- **Fallback** (Dassl's `read_and_split_data` / `split_trainval`): a dataset with one
  unnamed pool (an ImageFolder, a CSV without a `split` column, or only `train`) is split
  per class, seeded, into train/val/test by `ratios` (50/20/30 by default; a class gets
  round(n·p) train and val images and the rest test, each at least one); a dataset with
  train and test but no val gets val as `val_fraction` (0.2) of every class's train images.
  The split made is returned as a Dassl split JSON so a run can save it, and reload it.
- **Identity**: a content fingerprint over every split's (path relative to the root, label,
  class, file size): two folders with the same name and other contents get other ids.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from medkit.data.checks import DataError
from medkit.data.labels import Sample, Split

CANONICAL = ("train", "val", "test")
ALIASES = {"train": "train", "training": "train", "val": "val", "validation": "val", "valid": "val",
           "dev": "val", "test": "test", "testing": "test"}
POOL = "all"  # the split name readers give a dataset without splits
DEFAULT_RATIOS = (0.5, 0.2, 0.3)
DEFAULT_VAL_FRACTION = 0.2


def canonical_names(source: Path | str, splits: dict[str, Split]) -> dict[str, Split]:
    """Rename recognised split names to train/val/test; anything else is an error."""
    if list(splits) == [POOL]:
        return splits
    out: dict[str, Split] = {}
    unknown = [name for name in splits if name.strip().lower() not in ALIASES]
    if unknown:
        raise DataError(f"{source}: unknown split name(s) {unknown}; found {sorted(splits)}; expected train, val, test "
                        f"(or {', '.join(k for k in ALIASES if k not in CANONICAL)})")
    for name, split in splits.items():
        canon = ALIASES[name.strip().lower()]
        if canon in out:
            raise DataError(f"{source}: splits {out[canon].meta.get('raw_name', canon)!r} and {name!r} both name "
                            f"the {canon!r} split")
        out[canon] = Split(canon, split.samples, split.labels, {**split.meta, "raw_name": name})
    return out


def _per_class(split: Split) -> dict[int, list[int]]:
    by_class: dict[int, list[int]] = {c: [] for c in range(split.labels.n_classes)}
    for i, s in enumerate(split.samples):
        by_class[s.label].append(i)
    return by_class


def _take(split: Split, name: str, indices: Sequence[int]) -> Split:
    return Split(name, [split.samples[i] for i in sorted(indices)], split.labels, {**split.meta, "derived": True})


def stratified_split(pool: Split, ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 1) -> dict[str, Split]:
    """train/val/test from one pool, per class: round(n·p_train), round(n·p_val), the rest."""
    if len(ratios) != 3 or any(r <= 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise ValueError(f"ratios={tuple(ratios)}: three positive fractions (train, val, test) summing to 1")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {n: [] for n in CANONICAL}
    short = []
    for c, idx in _per_class(pool).items():
        n = len(idx)
        n_train, n_val = round(n * ratios[0]), round(n * ratios[1])
        if min(n_train, n_val, n - n_train - n_val) < 1:
            short.append(f"{pool.labels.classnames[c]!r} ({n})")
            continue
        order = [idx[j] for j in rng.permutation(n)]
        parts["train"] += order[:n_train]
        parts["val"] += order[n_train:n_train + n_val]
        parts["test"] += order[n_train + n_val:]
    if short:
        raise DataError(f"{pool.meta.get('source', pool.name)}: {len(short)} class(es) have too few images to split "
                        f"{'/'.join(f'{r:.0%}' for r in ratios)} (every split needs one per class): "
                        f"{', '.join(short[:10])}{' …' if len(short) > 10 else ''}")
    return {name: _take(pool, name, ix) for name, ix in parts.items()}


def carve_val(train: Split, fraction: float = DEFAULT_VAL_FRACTION, seed: int = 1) -> tuple[Split, Split]:
    """(train, val): round(n·fraction) of every class's train images (at least one) become val."""
    rng = np.random.default_rng(seed)
    keep, val, short = [], [], []
    for c, idx in _per_class(train).items():
        n = len(idx)
        n_val = max(1, round(n * fraction))
        if n - n_val < 1:
            short.append(f"{train.labels.classnames[c]!r} ({n})")
            continue
        order = [idx[j] for j in rng.permutation(n)]
        val += order[:n_val]
        keep += order[n_val:]
    if short:
        raise DataError(f"{train.meta.get('source', 'train')}: class(es) with too few train images to carve a "
                        f"validation split from: {', '.join(short[:10])}")
    return _take(train, "train", keep), _take(train, "val", val)


def complete_splits(source: Path | str, splits: dict[str, Split], ratios: Sequence[float] = DEFAULT_RATIOS,
                    val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 1) -> tuple[dict[str, Split], dict | None]:
    """train/val/test, derived where missing; with the recipe when anything was derived."""
    splits = canonical_names(source, splits)
    have = set(splits)
    if have >= set(CANONICAL):
        return {n: splits[n] for n in CANONICAL}, None
    if len(splits) == 1:  # one pool, whatever its name
        pool = next(iter(splits.values()))
        return stratified_split(pool, ratios, seed), {"rule": "stratified", "ratios": list(ratios), "seed": seed,
                                                      "from": sorted(have)}
    if have == {"train", "test"}:
        train, val = carve_val(splits["train"], val_fraction, seed)
        return {"train": train, "val": val, "test": splits["test"]}, {"rule": "val from train",
                                                                      "val_fraction": val_fraction, "seed": seed,
                                                                      "from": sorted(have)}
    raise DataError(f"{source}: splits {sorted(have)} found; expected train, val and test, or train and test (val is "
                    f"then carved from train), or one pool (split {int(ratios[0] * 100)}/{int(ratios[1] * 100)}/"
                    f"{int(ratios[2] * 100)})")


def _rel(sample: Sample, root: Path) -> str:
    try:
        return os.path.relpath(sample.path, root)
    except ValueError:  # another drive on Windows
        return str(sample.path)


def as_split_json(splits: dict[str, Split], root: Path) -> dict[str, list[list]]:
    """The splits as a Dassl split file ({split: [[relpath, label, classname], …]})."""
    return {name: [[_rel(s, root), s.label, s.classname] for s in split.samples] for name, split in splits.items()}


def fingerprint(splits: dict[str, Split], root: Path) -> str:
    """Content fingerprint of a dataset: every split's (relative path, label, class, size)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(splits):
        h.update(f"[{name}]\n".encode())
        for s in splits[name].samples:
            size = s.path.stat().st_size
            h.update(f"{_rel(s, root)}|{s.array_index}|{s.label}|{s.classname}|{size}\n".encode())
    return h.hexdigest()
