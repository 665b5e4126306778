"""Split names, the fallback for datasets that lack splits, and a dataset's identity.

- **Names**: `train`/`training`, `val`/`validation`/`valid`/`dev`, `test`/`testing` (any
  case) are recognised; any other name is an error listing the names found and expected.
- **Fallback** (Dassl's `read_and_split_data` / `split_trainval`): a dataset with one
  unnamed pool (an ImageFolder, a CSV without a `split` column, or only `train`) is split
  per class, seeded, into train/val/test by `ratios` (50/20/30 by default; a class gets
  round(n·p) train and val images and the rest test, each at least one); a dataset with
  train and test but no val gets val as `val_fraction` (0.2) of every class's train images.
  The split made is returned as a Dassl split JSON so a run can save it, and reload it.
- **Multi-label data** (samples with `targets`) is split by patient instead (`grouped_split`):
  a patient's images never straddle two splits (CheXpert's `patientNNNNN` path segment, NIH's
  `Patient ID`, `split.meta["patient"]`; else each image is its own group). Patients are
  shuffled (seeded) and dealt in order until each split holds its share of the images; not
  stratified by finding (findings co-occur; leakage across patients matters more). Train and
  val without test (CheXpert-v1.0-small ships train.csv and valid.csv): the given val is the
  test set (as in the literature and PsPG) and val is carved from train, by patient.
- **Identity**: a content fingerprint over every split's (path relative to the root, label,
  class, file size, and for multi-label data the targets and the uncertainty policy): two
  folders with the same name and other contents get other ids.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from medkit.data.checks import DataError, DataWarning
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


def patient_folder(path: str | Path) -> str | None:
    """The last `patient<digits>` folder of a path (CheXpert's layout), or None."""
    return next((p for p in reversed(Path(path).parts[:-1]) if p.startswith("patient") and p[7:].isdigit()), None)


def patient_of(split: Split) -> list[str]:
    """Each sample's patient: `split.meta["patient"]` (path -> id, as the multi-label readers
    record it), else its `patient<digits>` folder, else its path (one group per image)."""
    known = split.meta.get("patient") or {}
    return [known.get(str(s.path)) or patient_folder(s.path) or str(s.path) for s in split.samples]


def _deal(split: Split, fractions: Sequence[float], names: Sequence[str], seed: int) -> dict[str, Split]:
    """Shuffle the patients (seeded), then deal them in that order: a patient goes to the split
    whose share of the images its middle image falls in."""
    patients = patient_of(split)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        groups.setdefault(p, []).append(i)
    keys = list(groups)  # first-appearance order: the shuffle depends on the seed and the data only
    order = [keys[j] for j in np.random.default_rng(seed).permutation(len(keys))]
    bounds = np.cumsum(fractions)[:-1] * len(split.samples)
    parts: dict[str, list[int]] = {n: [] for n in names}
    done = 0
    for p in order:
        k = int(np.searchsorted(bounds, done + len(groups[p]) / 2, side="right"))
        parts[names[k]] += groups[p]
        done += len(groups[p])
    empty = [n for n, ix in parts.items() if not ix]
    if empty:
        raise DataError(f"{split.meta.get('source', split.name)}: {len(groups)} patient(s) ({len(split)} images) are "
                        f"too few to split {'/'.join(f'{f:.0%}' for f in fractions)} by patient: {empty} would be empty")
    return {n: _take(split, n, ix) for n, ix in parts.items()}


def grouped_split(pool: Split, ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 1) -> dict[str, Split]:
    """train/val/test from one multi-label pool, by patient (see the module docstring)."""
    if len(ratios) != 3 or any(r <= 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise ValueError(f"ratios={tuple(ratios)}: three positive fractions (train, val, test) summing to 1")
    return _deal(pool, ratios, CANONICAL, seed)


def carve_val_grouped(train: Split, fraction: float = DEFAULT_VAL_FRACTION, seed: int = 1) -> tuple[Split, Split]:
    """(train, val): about `fraction` of the train images, whole patients, become val."""
    parts = _deal(train, (1 - fraction, fraction), ("train", "val"), seed)
    return parts["train"], parts["val"]


def _warn_shared_patients(source: Path | str, splits: dict[str, Split]) -> None:
    owner: dict[str, str] = {}
    shared: list[str] = []
    for name, split in splits.items():
        for p in dict.fromkeys(patient_of(split)):
            if owner.setdefault(p, name) != name:
                shared.append(f"{p} ({owner[p]}, {name})")
    if shared:
        warnings.warn(f"{source}: {len(shared)} patient(s) have images in two splits (test results may be "
                      f"optimistic): {'; '.join(shared[:10])}{' …' if len(shared) > 10 else ''}", DataWarning, stacklevel=4)


def _complete_grouped(source: Path | str, splits: dict[str, Split], ratios: Sequence[float], val_fraction: float,
                      seed: int) -> tuple[dict[str, Split], dict | None]:
    have = set(splits)
    grouped = "patient" if any(splits[n].meta.get("patient") for n in splits) else "patient, else image"
    if have >= set(CANONICAL):
        out, recipe = {n: splits[n] for n in CANONICAL}, None
    elif len(splits) == 1:
        out = grouped_split(next(iter(splits.values())), ratios, seed)
        recipe = {"rule": "grouped by patient", "ratios": list(ratios), "seed": seed, "from": sorted(have)}
    elif have in ({"train", "test"}, {"train", "val"}):
        test = splits["test" if "test" in have else "val"]
        train, val = carve_val_grouped(splits["train"], val_fraction, seed)
        out = {"train": train, "val": val, "test": Split("test", test.samples, test.labels, dict(test.meta))}
        recipe = {"rule": "val from train, grouped by patient", "val_fraction": val_fraction, "seed": seed,
                  "from": sorted(have), **({"test_from": "val"} if "val" in have else {})}
    else:
        raise DataError(f"{source}: splits {sorted(have)} found; expected train, val and test, train and one of "
                        f"val/test, or one pool")
    _warn_shared_patients(source, out)
    return out, recipe if recipe is None else {**recipe, "groups": grouped}


def complete_splits(source: Path | str, splits: dict[str, Split], ratios: Sequence[float] = DEFAULT_RATIOS,
                    val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 1) -> tuple[dict[str, Split], dict | None]:
    """train/val/test, derived where missing; with the recipe when anything was derived.
    Multi-label splits are derived by patient (`grouped_split`)."""
    splits = canonical_names(source, splits)
    have = set(splits)
    if any(split.multilabel for split in splits.values()):
        return _complete_grouped(source, splits, ratios, val_fraction, seed)
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
    """Content fingerprint of a dataset: every split's (relative path, label, class, size), and
    for multi-label data the targets and the uncertainty policy (single-label ids unchanged)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(splits):
        h.update(f"[{name}]\n".encode())
        policy = splits[name].meta.get("uncertainty")
        if policy is not None:  # -1 read as 1 or 0 is another dataset, even where no row has a -1
            h.update(f"uncertainty={policy}\n".encode())
        for s in splits[name].samples:
            size = s.path.stat().st_size
            targets = "" if s.targets is None else "|" + ",".join(map(str, s.targets))
            h.update(f"{_rel(s, root)}|{s.array_index}|{s.label}|{s.classname}|{size}{targets}\n".encode())
    return h.hexdigest()
